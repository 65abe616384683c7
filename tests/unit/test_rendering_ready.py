"""``Renderer.ready``: true once a contact's template variations are held and fresh (then the handler
renders without a thread hand-off), false before the first read and with ``ttl_s = 0``; a template read
whose connection died is read once more. A fake pool stands in for the views."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg

from billing.domain.contact import Contact
from billing.worker.rendering import Renderer, RenderError
from tests.factories import added_contact

TEMPLATE = UUID(int=7)
NOW = datetime(2025, 1, 20, 13, 0, tzinfo=UTC)


class FakeCursor:
    def __init__(self, pool: FakePool) -> None:
        self.pool = pool

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, query: str, params: Any) -> FakeCursor:
        self.pool.reads += 1
        if self.pool.drop_next:
            self.pool.drop_next = False
            raise psycopg.OperationalError("terminating connection due to administrator command")
        return self

    def fetchone(self) -> dict[str, Any]:
        return {"template_id": TEMPLATE, "version": 3, "variations": ["Aviso."]}


class FakePool:
    def __init__(self) -> None:
        self.reads = 0
        self.drop_next = False

    @contextmanager
    def connection(self) -> Iterator[Any]:
        pool = self

        class Conn:
            def cursor(self, **kw: Any) -> FakeCursor:
                return FakeCursor(pool)

        yield Conn()


def contact() -> Contact:
    return added_contact(
        at=NOW,
        template_type="notification",
        telefone="+5511987654300",
        phone="+5511987654300",
        gateway_number="5511987654300",
        amount=Decimal("10.00"),
        due_date=date(2025, 1, 10),
    )


def test_ready_once_the_template_is_held() -> None:
    pool = FakePool()
    renderer = Renderer(pool, ttl_s=60)  # type: ignore[arg-type]
    one = contact()
    assert renderer.ready(one) is False
    first = renderer.render(one, now=NOW, tz=ZoneInfo("America/Sao_Paulo"))
    assert renderer.ready(one) is True
    second = renderer.render(one, now=NOW, tz=ZoneInfo("America/Sao_Paulo"))
    assert (first.text, first.template_id, first.template_version) == ("Aviso.", TEMPLATE, 3)
    assert second == first and pool.reads == 1


def test_never_ready_without_a_cache() -> None:
    pool = FakePool()
    renderer = Renderer(pool, ttl_s=0)  # type: ignore[arg-type]
    one = contact()
    renderer.render(one, now=NOW, tz=ZoneInfo("America/Sao_Paulo"))
    assert renderer.ready(one) is False and pool.reads == 1


def test_a_template_read_whose_connection_died_is_read_once_more() -> None:
    pool = FakePool()
    pool.drop_next = True
    renderer = Renderer(pool, ttl_s=60)  # type: ignore[arg-type]
    rendered = renderer.render(contact(), now=NOW, tz=ZoneInfo("America/Sao_Paulo"))
    assert (rendered.text, pool.reads) == ("Aviso.", 2)


class EditedPool(FakePool):
    """The views hold version 4 of the template, which needs ``numero_fatura``."""

    def __init__(self, variations: list[str]) -> None:
        super().__init__()
        self.variations = variations


class EditedCursor(FakeCursor):
    def fetchone(self) -> dict[str, Any]:
        assert isinstance(self.pool, EditedPool)
        return {"template_id": TEMPLATE, "version": 4, "variations": self.pool.variations}


def edited_renderer(versions: dict[int, list[str]], reads: list[tuple[UUID, int]]) -> Renderer:
    pool = EditedPool(["Fatura {{numero_fatura}} de {{nome}}.", "Olá {{nome}}, fatura {{numero_fatura}}."])

    @contextmanager
    def connection() -> Iterator[Any]:
        class Conn:
            def cursor(self, **kw: Any) -> FakeCursor:
                return EditedCursor(pool)

        yield Conn()

    pool.connection = connection  # type: ignore[method-assign]

    def variations_at(template_id: UUID, version: int) -> list[str] | None:
        reads.append((template_id, version))
        return versions.get(version)

    return Renderer(pool, ttl_s=60, variations_at=variations_at)  # type: ignore[arg-type]


def accepted(version: int | None, **fields: str) -> Contact:
    return added_contact(
        at=NOW, template_id=TEMPLATE, template_version=version, fields={"nome": "Ana", **fields}, ordinal=1
    )


def test_a_contact_accepted_before_an_edit_that_needs_a_new_variable_gets_its_accepted_version() -> None:
    reads: list[tuple[UUID, int]] = []
    renderer = edited_renderer({2: ["Oi {{nome}}.", "Olá {{nome}}, tudo bem?"]}, reads)
    one = accepted(2)  # checked against version 2, no numero_fatura
    assert renderer.ready(one) is False  # the views are not read yet
    first = renderer.render(one, now=NOW, tz=ZoneInfo("America/Sao_Paulo"))
    assert (first.text, first.template_version, first.variation) == ("Olá Ana, tudo bem?", 2, 1)
    assert reads == [(TEMPLATE, 2)]
    assert renderer.ready(one) is True  # version 2 is held now: the next render reads nothing
    assert renderer.render(one, now=NOW, tz=ZoneInfo("America/Sao_Paulo")) == first
    assert reads == [(TEMPLATE, 2)]


def test_the_current_version_is_used_when_the_contact_has_its_variables() -> None:
    reads: list[tuple[UUID, int]] = []
    renderer = edited_renderer({2: ["Oi {{nome}}."]}, reads)
    rendered = renderer.render(accepted(2, numero_fatura="NF-9"), now=NOW, tz=ZoneInfo("America/Sao_Paulo"))
    assert (rendered.text, rendered.template_version, rendered.variation) == ("Olá Ana, fatura NF-9.", 4, 1)
    assert reads == []  # an edit that fixes a typo reaches the waiting messages


def test_without_an_accepted_version_the_missing_variable_fails_as_before() -> None:
    reads: list[tuple[UUID, int]] = []
    renderer = edited_renderer({}, reads)
    for one in (accepted(None), accepted(3)):  # stored before the field; a version the store lacks
        try:
            renderer.render(one, now=NOW, tz=ZoneInfo("America/Sao_Paulo"))
        except RenderError as exc:
            assert (exc.code, exc.message, exc.retryable) == (
                "missing_variable",
                "the template needs numero_fatura",
                False,
            )
        else:
            raise AssertionError("rendered")
    assert reads == [(TEMPLATE, 3)]

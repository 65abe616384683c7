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
from billing.worker.rendering import Renderer
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

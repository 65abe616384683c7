"""``billing projections rebuild`` replays into copies of the views and swaps them in: the live views keep
answering until the swap, what arrives meanwhile is in the result, and the swapped-in tables have the
live tables' indexes, constraints and grants under the same names (real PostgreSQL; fails when it is
down)."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import billing.projections.rebuild as rebuild_module
from billing.bootstrap import Container
from billing.projections.rebuild import RebuildRefused, rebuild_projections
from billing.projections.scratch import drop_schema
from billing.projections.verify import verify_projections
from billing.projections.views import VIEW_TABLES, project_pending
from tests.integration.test_projections import (
    INSERT_EVENT,
    at,
    dump,
    full_scenario,
    open_container,
    position,
    post,
    rows,
    send,
)

pytestmark = pytest.mark.integration

READER = "billing_test_view_reader"
OWNER = "billing_test_view_owner"


@pytest.fixture
def container(database_url: str) -> Iterator[Container]:
    made = open_container(database_url)
    try:
        yield made
    finally:
        made.pool.close()
        made.store.close()


def catalog(database_url: str) -> dict[str, Any]:
    """The view tables' indexes (name → definition), constraints (name → definition) and grants."""
    tables = list(VIEW_TABLES)
    indexes = rows(
        database_url,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY(%s)",
        tables,
    )
    constraints = rows(
        database_url,
        """SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint
           WHERE conrelid = ANY(SELECT ('public.' || t)::regclass FROM unnest(%s::text[]) t)""",
        tables,
    )
    grants = rows(
        database_url,
        """SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants
           WHERE table_schema = 'public' AND table_name = ANY(%s) AND grantee = %s""",
        tables,
        READER,
    )
    settings = rows(
        database_url,
        """SELECT c.relname, c.relacl::text AS acl, c.reloptions,
                  obj_description(c.oid, 'pg_class') AS comment, pg_get_userbyid(c.relowner) AS owner
           FROM pg_class c WHERE c.oid = ANY(SELECT ('public.' || t)::regclass FROM unnest(%s::text[]) t)""",
        tables,
    )
    columns = rows(
        database_url,
        """SELECT attrelid::regclass::text AS table_name, attname, attnum, attstattarget, attacl::text AS acl,
                  (SELECT array_agg(o) FROM unnest(attoptions) o WHERE o LIKE 'n\\_distinct%%') AS options,
                  atttypid::regtype::text AS type, attnotnull
           FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped
             AND attrelid = ANY(SELECT ('public.' || t)::regclass FROM unnest(%s::text[]) t)""",
        tables,
    )
    return {
        "indexes": {r["indexname"]: r["indexdef"] for r in indexes},
        "constraints": {r["conname"]: r["definition"] for r in constraints},
        "grants": sorted((r["table_name"], r["privilege_type"]) for r in grants),
        "tables": {r["relname"]: r for r in settings},
        "columns": sorted(tuple(map(str, r.values())) for r in columns),
    }


def scratch_schemas(database_url: str) -> list[str]:
    found = rows(database_url, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'billing_rebuild_%%'")
    return [r["nspname"] for r in found]


def test_the_swapped_in_views_keep_names_indexes_constraints_and_grants(
    container: Container, database_url: str
) -> None:
    full_scenario(container)
    project_pending(container.store, container.pool)
    with psycopg.connect(database_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER,)).fetchone():
            with contextlib.suppress(psycopg.errors.UniqueViolation):  # another test made it meanwhile
                conn.execute(f"CREATE ROLE {READER} NOLOGIN")
        conn.execute(f"GRANT SELECT ON campaign_contacts, queue_status TO {READER}")
        conn.execute(f"GRANT SELECT ON tenants TO {READER} WITH GRANT OPTION")
        conn.execute(f"GRANT UPDATE (name) ON api_keys TO {READER}")
        conn.execute(
            "ALTER TABLE campaign_contacts SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01)"
        )
        conn.execute("ALTER TABLE campaign_contacts ALTER COLUMN status SET STATISTICS 1000")
        conn.execute("ALTER TABLE campaign_contacts ALTER COLUMN tenant_id SET (n_distinct = 500)")
        conn.execute("COMMENT ON TABLE queue_status IS 'one row per queue'")
        with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            conn.execute(f"CREATE ROLE {OWNER} NOLOGIN")
        conn.execute(f"ALTER TABLE admin_actions OWNER TO {OWNER}")  # a table another role owns
    before = catalog(database_url)
    assert before["tables"]["campaign_contacts"]["reloptions"] == [
        "fillfactor=80",
        "autovacuum_vacuum_scale_factor=0.01",
    ]
    assert before["tables"]["queue_status"]["comment"] == "one row per queue"
    assert before["tables"]["admin_actions"]["owner"] == OWNER
    assert before["grants"] == [
        ("campaign_contacts", "SELECT"),
        ("queue_status", "SELECT"),
        ("tenants", "SELECT"),
    ]
    assert "campaign_contacts_queue_status" in before["indexes"]
    views = dump(database_url)
    rebuild_projections(container.store, container.pool)
    assert catalog(database_url) == before
    assert dump(database_url) == views
    assert scratch_schemas(database_url) == []


def test_the_live_views_answer_during_the_replay_and_later_events_are_swapped_in(
    container: Container, database_url: str
) -> None:
    tenant_id, main, _ = full_scenario(container)
    project_pending(container.store, container.pool)
    before = dump(database_url)
    late = post(tenant_id, accepted=3, when=at(40))
    seen: list[int] = []

    def progress(handled: int, reached: int, head: int) -> None:
        if seen:
            return
        # mid-rebuild: the live views are whole and current, and the live projection goes on
        seen.append(rows(database_url, "SELECT count(*) AS n FROM campaign_contacts")[0]["n"])
        assert dump(database_url) == before
        container.store.save(*late.aggregates())
        project_pending(container.store, container.pool)  # what `billing projections` does meanwhile
        send(late.contacts[0], at(41))
        container.store.save(late.contacts[0])  # not projected live: the swap's catch-up takes it

    rebuild_projections(container.store, container.pool, batch_size=10, progress=progress)
    assert seen == [len(before["campaign_contacts"])]
    head = container.store.recorder.max_notification_id()
    assert position(database_url) == head
    assert project_pending(container.store, container.pool) == 0
    assert verify_projections(container.store, container.pool, database_url).ok
    sent = rows(
        database_url, "SELECT status FROM campaign_contacts WHERE contact_id = %s", late.contacts[0].id
    )
    assert sent == [{"status": "sent"}]
    assert len(dump(database_url)["campaign_contacts"]) == len(before["campaign_contacts"]) + 3
    assert main.contacts  # the scenario's own contacts are still there
    assert scratch_schemas(database_url) == []


def test_prepared_statements_of_other_connections_read_the_swapped_in_tables(
    container: Container, database_url: str
) -> None:
    _, main, _ = full_scenario(container)
    project_pending(container.store, container.pool)
    query = "SELECT count(*) FROM campaign_contacts WHERE queue_id = %s"
    with psycopg.connect(database_url, autocommit=True) as reader:
        for _ in range(3):
            assert reader.execute(query, (main.queue.id,), prepare=True).fetchone() == (5,)
        rebuild_projections(container.store, container.pool)
        assert reader.execute(query, (main.queue.id,), prepare=True).fetchone() == (5,)


def test_errors_of_the_replay_replace_the_projections_errors_and_keep_the_others(
    container: Container, database_url: str
) -> None:
    full_scenario(container)
    with psycopg.connect(database_url, autocommit=True) as conn:  # a bug's leftover: an unknown topic
        conn.execute(INSERT_EVENT, (uuid.uuid4(), "billing.Nope.Happened", b"{}"))
    project_pending(container.store, container.pool)
    bogus = container.store.recorder.max_notification_id()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projection_errors (projection, notification_id, topic, error) VALUES "
            "('projections', 1, 'billing.Gone', 'old'), ('relay', 2, 'billing.Other', 'kept')"
        )
    rebuild_projections(container.store, container.pool)
    left = rows(database_url, "SELECT projection, notification_id, topic FROM projection_errors ORDER BY id")
    assert left == [  # the live projection's errors are gone, the relay's kept, the replay's added
        {"projection": "relay", "notification_id": 2, "topic": "billing.Other"},
        {"projection": "projections", "notification_id": bogus, "topic": "billing.Nope.Happened"},
    ]


@pytest.mark.parametrize(
    ("migration", "table"),
    [
        ("ALTER TABLE campaign_contacts ADD COLUMN IF NOT EXISTS note text", "campaign_contacts"),
        ("ALTER TABLE contact_history ALTER COLUMN data SET STATISTICS 100", "contact_history"),
    ],
    ids=["a new column", "a statistics target"],
)
def test_a_migrate_during_the_rebuild_is_not_undone_the_rebuild_refuses_at_the_swap(
    container: Container, database_url: str, migration: str, table: str
) -> None:
    full_scenario(container)
    project_pending(container.store, container.pool)
    views = dump(database_url)

    def migrate_meanwhile(handled: int, reached: int, head: int) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(migration)

    with pytest.raises(RebuildRefused) as refused:
        rebuild_projections(container.store, container.pool, progress=migrate_meanwhile)
    assert str(refused.value) == (
        f"not rebuilt, nothing changed: the live views changed shape during the rebuild ({table}; a "
        "`billing migrate`?); run the rebuild again"
    )
    assert rows(
        database_url,
        "SELECT attstattarget FROM pg_attribute "
        "WHERE attrelid = 'contact_history'::regclass AND attname = 'data'",
    ) == [{"attstattarget": 100 if table == "contact_history" else 0}]
    after = dump(database_url)
    assert [{k: v for k, v in r.items() if k != "note"} for r in after.pop("campaign_contacts")] == views.pop(
        "campaign_contacts"
    )
    assert after == views
    assert scratch_schemas(database_url) == []


class ReleaseOnRetry(logging.Handler):
    """Ends ``holder``'s transaction (and its table lock) when the rebuild logs a retry of its swap."""

    def __init__(self, holder: psycopg.Connection[Any]) -> None:
        super().__init__(logging.WARNING)
        self.holder, self.messages = holder, list[str]()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.holder.rollback()


def test_a_view_locked_too_long_is_retried_then_swapped(
    container: Container, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_scenario(container)
    project_pending(container.store, container.pool)
    views = dump(database_url)
    monkeypatch.setattr(rebuild_module, "SWAP_LOCK_TIMEOUT_MS", 100)
    logger = logging.getLogger("billing.projections.rebuild")
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT count(*) FROM queue_status")  # a long read: its lock lasts to its commit
        handler = ReleaseOnRetry(holder)
        logger.addHandler(handler)
        try:
            rebuild_projections(container.store, container.pool)
        finally:
            logger.removeHandler(handler)
    assert len(handler.messages) == 1
    assert re.fullmatch(
        r"swap 1 of 10 could not lock the views \(LockNotAvailable\); retrying in 0\.\d s",
        handler.messages[0],
    )
    assert dump(database_url) == views
    assert scratch_schemas(database_url) == []


def test_a_swap_that_never_gets_its_locks_leaves_the_live_views_untouched(
    container: Container, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_scenario(container)
    project_pending(container.store, container.pool)
    views, before = dump(database_url), position(database_url)
    monkeypatch.setattr(rebuild_module, "SWAP_LOCK_TIMEOUT_MS", 50)
    monkeypatch.setattr(rebuild_module, "SWAP_ATTEMPTS", 2)
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT count(*) FROM campaign_contacts")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            rebuild_projections(container.store, container.pool)
        holder.rollback()
    assert dump(database_url) == views
    assert position(database_url) == before
    assert scratch_schemas(database_url) == []


class UnreachablePool:
    """A views pool whose database is gone."""

    def connection(self) -> Any:
        raise psycopg.OperationalError("connection refused")


def test_a_scratch_schema_that_cannot_be_dropped_is_logged_with_the_statement_to_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="billing.projections.scratch"):
        drop_schema(UnreachablePool(), "billing_rebuild_0123456789")  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "scratch schema billing_rebuild_0123456789 was not dropped (connection refused); drop it by hand: "
        "DROP SCHEMA billing_rebuild_0123456789 CASCADE"
    ]


def test_a_scratch_pool_that_cannot_open_leaves_no_schema_behind(
    container: Container, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError("too many connections")

    monkeypatch.setattr(rebuild_module, "scratch_pool", refuse)
    with pytest.raises(psycopg.OperationalError, match="too many connections"):
        rebuild_projections(container.store, container.pool)
    assert scratch_schemas(database_url) == []


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (
            "CREATE VIEW open_contacts AS SELECT contact_id FROM campaign_contacts WHERE status = 'pending'",
            "campaign_contacts is read by view open_contacts",
        ),
        (
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';"
            " CREATE TRIGGER audit_queue AFTER UPDATE ON queue_status FOR EACH ROW EXECUTE FUNCTION touch()",
            "queue_status has trigger audit_queue",
        ),
        ("CREATE PUBLICATION views_out FOR TABLE tenants", "tenants is published by views_out"),
        (
            "ALTER TABLE admin_actions ADD COLUMN n bigserial",
            "admin_actions has column n drawn from a sequence",
        ),
        (
            "CREATE TABLE notes (tenant_id uuid REFERENCES tenants (tenant_id))",
            "tenants is referenced by foreign key notes_tenant_id_fkey of notes",
        ),
    ],
)
def test_a_rebuild_refuses_what_a_swap_would_lose_and_changes_nothing(
    container: Container, database_url: str, setup: str, problem: str
) -> None:
    full_scenario(container)
    project_pending(container.store, container.pool)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(setup)
    views, before = dump(database_url), catalog(database_url)
    with pytest.raises(RebuildRefused) as refused:
        rebuild_projections(container.store, container.pool)
    assert str(refused.value) == (
        f"not rebuilt, nothing changed: a swap would lose or trip over this: {problem}. Remove it, "
        "rebuild, then add it back"
    )
    assert (dump(database_url), catalog(database_url)) == (views, before)
    assert scratch_schemas(database_url) == []


@pytest.mark.parametrize("replay", ["rebuild", "project_pending"])
def test_each_batch_is_read_and_applied_with_the_cyclic_collector_paused(
    container: Container, monkeypatch: pytest.MonkeyPatch, replay: str
) -> None:
    """A replay reads a batch (one Notification per event) and applies it with Python's cyclic collector
    off, and turns it back on after (``paused_cyclic_gc``); the rebuild into copies once left the read
    outside, which cost it 0.15-0.3 s of CPU in 60,000 events (``bench/rebuild.py``)."""
    import gc

    import billing.projections.views as module  # both replays read and apply through apply_next_batch

    full_scenario(container)
    if replay == "rebuild":
        project_pending(container.store, container.pool)
    collector_on: dict[str, list[bool]] = {"read": [], "apply": []}
    real_read, real_apply = module.read_after, module.apply_batch

    def read_after(*args: Any, **kwargs: Any) -> Any:
        collector_on["read"].append(gc.isenabled())
        return real_read(*args, **kwargs)

    def apply_batch(*args: Any, **kwargs: Any) -> Any:
        collector_on["apply"].append(gc.isenabled())
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(module, "read_after", read_after)
    monkeypatch.setattr(module, "apply_batch", apply_batch)
    assert gc.isenabled()
    if replay == "rebuild":
        rebuild_projections(container.store, container.pool, batch_size=10)
    else:
        assert project_pending(container.store, container.pool, batch_size=10) > 10
    assert len(collector_on["read"]) > 2 and len(collector_on["apply"]) > 1
    assert set(collector_on["read"]) == set(collector_on["apply"]) == {False}
    assert gc.isenabled()

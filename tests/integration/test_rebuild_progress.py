"""``rebuild_projections`` in large batches gives the same views as the live projection, and reports its
progress after each batch (the CLI's progress bar)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg

from billing.bootstrap import build_container
from billing.projections.rebuild import rebuild_projections
from billing.projections.views import VIEW_TABLES, project_pending
from billing.settings import Settings
from tests.integration.test_cancel_batch import T0, posted


def dump(database_url: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {
            t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=lambda r: [str(v) for v in r])
            for t in VIEW_TABLES
        }


def test_rebuild_in_batches_reports_progress_and_gives_the_same_views(database_url: str) -> None:
    container = build_container(Settings(database_url=database_url))
    try:
        store, tenant_id = container.store, uuid.uuid4()
        for accepted in (450, 300):
            campaign, queue, contacts = posted(tenant_id, accepted=accepted, rejected=1)
            store.save(campaign, queue, *contacts)
            for contact in contacts[:accepted:2]:
                contact.dispatch(at=T0, lease=timedelta(minutes=2))
            store.save(*contacts[:accepted:2])
        project_pending(
            container.store, container.pool, batch_size=100
        )  # the live follower's way, in small batches
        live = dump(database_url)
        head = store.recorder.max_notification_id()
        assert head == 2 * 2 + 451 + 301 + 225 + 150

        calls: list[tuple[int, int, int]] = []
        replayed = rebuild_projections(
            container.store, container.pool, batch_size=400, progress=lambda *a: calls.append(a)
        )
        assert replayed == head
        assert calls == [(400, 400, head), (800, 800, head), (1_131, head, head)]
        assert dump(database_url) == live
    finally:
        container.pool.close()
        container.store.close()


def test_the_rebuild_command_logs_for_a_person_unless_a_format_is_chosen(database_url: str) -> None:
    billing = Path(sys.executable).with_name("billing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env["BILLING_DATABASE_URL"] = database_url

    def run(**extra: str) -> list[str]:
        done = subprocess.run(
            [str(billing), "projections", "rebuild"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return (done.stderr + done.stdout).splitlines()

    console = run()
    first = console[0].split(" [info     ] ", 1)[1]
    assert re.fullmatch(
        r"replaying the notification log into billing_rebuild_[0-9a-f]{10}; the live views keep answering "
        r"until the swap \[billing\.projections\.rebuild\]",
        first,
    ), first
    assert re.fullmatch(r"projections rebuilt in \d+\.\d s \(0 notifications replayed\)", console[-1]), (
        console
    )
    chosen = run(BILLING_LOG_FORMAT="json")
    assert json.loads(chosen[0])["event"].startswith("replaying the notification log into billing_rebuild_")

"""Operator and auditor commands of the CLI: ``billing projections rebuild --verify``, ``billing projections
status`` and ``billing history export``. Progress bars are rich's (on stderr, so stdout stays a result)."""

from __future__ import annotations

import argparse
import csv
import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from billing.cli_errors import CliError
from billing.runtime import _admin_container, _close_sync, load_cli_settings

__all__ = ["add_history_parser", "cmd_history_export", "cmd_projections_status", "cmd_projections_verify"]


def _progress(description: str) -> Any:
    """A rich progress bar on stderr: events done, rate, time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


class _Bar:
    """Feeds ``(done, total)`` callbacks into a rich task, with a rate in items per second."""

    def __init__(self, progress: Any, unit: str) -> None:
        self.progress = progress
        self.unit = unit
        self.task = progress.add_task("", total=None, rate="")

    def __call__(self, done: int, total: int) -> None:
        elapsed = self.progress.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:,.0f} {self.unit}/s" if elapsed > 0 else ""
        self.progress.update(self.task, completed=done, total=total, rate=rate)


def cmd_projections_verify(args: argparse.Namespace) -> int:
    """``billing projections rebuild --verify``: rebuild into a scratch schema, compare with the live
    views row by row; exit 1 printing the first differences, 0 when they are equal."""
    from billing.progress import replay_progress
    from billing.projections.verify import REBUILD_BATCH_SIZE, verify_projections

    settings = load_cli_settings()
    started = monotonic()
    container = _admin_container()
    try:
        with replay_progress("replaying into a scratch schema") as progress:
            result = verify_projections(
                container.store,
                container.pool,
                settings.database_url,
                limit=args.max_differences,
                batch_size=REBUILD_BATCH_SIZE,
                progress=progress,
            )
    finally:
        _close_sync(container)
    rows = ", ".join(f"{table} {n}" for table, n in result.rows.items())
    if result.ok:
        print(
            f"projections verified at position {result.position} in {monotonic() - started:.1f} s: "
            f"rebuilt views equal the live ones ({rows})"
        )
        return 0
    print(
        f"projections differ at position {result.position} in {monotonic() - started:.1f} s "
        f"(first {len(result.differences)} differences):"
    )
    for difference in result.differences:
        print("  " + difference.describe())
    return 1


def cmd_projections_status(args: argparse.Namespace) -> int:
    """``billing projections status``: each follower's position, lag and recorded errors (``--json`` for a
    machine-readable list)."""
    import dataclasses

    from billing.projections.verify import follower_status

    container = _admin_container()
    try:
        followers = follower_status(container.store, container.pool)
    finally:
        _close_sync(container)
    if args.json:
        print(json.dumps([dataclasses.asdict(f) for f in followers], indent=2))
        return 0
    print(f"{'follower':<14}{'position':>10}{'head':>10}{'lag':>8}{'errors':>8}  updated_at")
    for f in followers:
        print(f"{f.name:<14}{f.position:>10}{f.head:>10}{f.lag:>8}{f.errors:>8}  {f.updated_at or '-'}")
        if f.last_error:
            e = f.last_error
            print(f"{'':<14}last error: notification {e['notification_id']} ({e['topic']}): {e['error']}")
    return 0


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def add_history_parser(sub: Any) -> None:
    """Register ``billing history export`` on the top-level sub-parsers ``sub``."""
    group = sub.add_parser("history", description="the auditor's history")
    actions = group.add_subparsers(metavar="ACTION")
    group.set_defaults(handler=lambda args: (group.print_help(), 2)[1])
    p = actions.add_parser(
        "export", help="write a tenant's history (evidence) to a CSV or JSON file, with a progress bar"
    )
    p.add_argument("--tenant", required=True, type=_uuid, help="tenant id")
    p.add_argument("--from", dest="since", required=True, type=_day, help="first day (YYYY-MM-DD)")
    p.add_argument("--to", dest="until", required=True, type=_day, help="last day, included (YYYY-MM-DD)")
    p.add_argument("--invoice", default=None, help="only this invoice reference")
    p.add_argument("--phone", default=None, help="only this phone (E.164 or as the ERP writes it)")
    p.add_argument("--format", choices=("csv", "json"), default=None, help="default: from the file name")
    p.add_argument("--output", "-o", default=None, help="file to write (default history-<tenant>.csv)")
    p.set_defaults(handler=cmd_history_export)


def cmd_history_export(args: argparse.Namespace) -> int:
    """``billing history export``: every history entry of the tenant between ``--from`` and ``--to``
    (local days of the tenant's zone, both included), optionally of one invoice or phone, written to a
    file (CSV or JSON), with a progress bar. Prints the file name and the entry count."""
    from billing.domain.errors import InvalidValue
    from billing.domain.phone import normalize_phone
    from billing.domain.tenant import Tenant
    from billing.eventstore import get_owned
    from billing.services.history import HistoryFilter, HistoryQueries, to_csv_rows

    if args.until < args.since:
        raise CliError("--to is before --from", code=2)
    phone = None
    if args.phone:
        try:
            phone = normalize_phone(args.phone, field="phone").e164
        except InvalidValue as exc:
            raise CliError(f"--phone: {exc.message}", code=2) from None
    output = Path(args.output or f"history-{args.tenant}.{args.format or 'csv'}")
    kind = args.format or ("json" if output.suffix.lower() == ".json" else "csv")
    container = _admin_container()
    try:
        tenant = get_owned(container.store, args.tenant, Tenant)
        if tenant is None:
            raise CliError(f"tenant {args.tenant} not found")
        zone: ZoneInfo = tenant.sending_policy.calendar.tz
        since = datetime.combine(args.since, time(0), zone).astimezone(UTC)
        until = datetime.combine(args.until + timedelta(days=1), time(0), zone).astimezone(UTC)
        what = HistoryFilter(args.tenant, invoice=args.invoice, phone=phone, since=since, until=until)
        history = HistoryQueries(container.pool)
        total = history.count(what)
        written = 0
        with _progress(f"exporting to {output}") as progress, output.open("w", newline="") as out:
            bar = _Bar(progress, "entries")
            bar(0, total)
            entries = history.iter_entries(what)
            if kind == "csv":
                writer = csv.writer(out)
                for row in to_csv_rows(_counted(entries, bar, total)):
                    writer.writerow(row)
            else:
                out.write("[")
                for entry in _counted(entries, bar, total):
                    out.write(("," if written else "") + "\n" + json.dumps(entry, ensure_ascii=False))
                    written += 1
                out.write("\n]\n")
            bar(total, total)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc}") from None
    finally:
        _close_sync(container)
    print(f"{output}\t{total} entries ({kind})")
    return 0


def _counted(entries: Any, bar: _Bar, total: int, every: int = 500) -> Any:
    for n, entry in enumerate(entries, 1):
        if n % every == 0:
            bar(n, total)
        yield entry

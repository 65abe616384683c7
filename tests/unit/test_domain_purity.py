"""billing.domain depends on nothing of the infrastructure (STYLE.md 1)."""

from __future__ import annotations

import ast
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "src" / "billing" / "domain"
FORBIDDEN = (
    "psycopg",
    "psycopg_pool",
    "aio_pika",
    "aiormq",
    "litestar",
    "httpx",
    "structlog",
    "uvicorn",
    "logging",
    "billing.api",
    "billing.services",
    "billing.outbox",
    "billing.projections",
    "billing.worker",
    "billing.gateway",
    "billing.eventstore",
    "eventsourcing.application",
    "eventsourcing.postgres",
    "eventsourcing.persistence",
    "socket",
    "requests",
    "os",
    "time",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_domain_imports_no_infrastructure() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in DOMAIN.glob("*.py")
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert offenders == set()


def test_domain_reads_no_clock() -> None:
    offenders = [
        path.name
        for path in DOMAIN.glob("*.py")
        if any(
            token in path.read_text(encoding="utf-8")
            for token in ("datetime.now(", "date.today(", "time.time(", "random.random(", "utcnow(")
        )
    ]
    assert offenders == []

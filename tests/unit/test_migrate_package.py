"""The DDL ships inside the package and ``migrate`` refuses to succeed without it (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

import billing.db
from billing.cli import main
from billing.db import MigrationError, migrate, sql_files

ROOT = Path(__file__).resolve().parents[2]


def test_the_ddl_is_package_data_read_through_importlib_resources() -> None:
    assert [f.name for f in sql_files()] == [
        "001_views.sql",
        "002_worker.sql",
        "003_contact_deferral.sql",
        "004_after_send.sql",
        "005_dashboard.sql",
        "006_history.sql",
    ]
    assert all("IF NOT EXISTS" in f.read_text(encoding="utf-8") for f in sql_files())  # idempotent DDL


def test_no_ddl_folder_outside_the_package() -> None:
    """A ``sql/`` beside ``src/`` would not be in the wheel and would silently not be applied."""
    assert not (ROOT / "sql").exists()
    ddl = sorted(p.name for p in (ROOT / "src/billing/sql").glob("*.sql"))
    assert ddl == [f.name for f in sql_files()]
    assert '"sql/*.sql"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_migrate_raises_when_it_finds_nothing_to_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(billing.db, "sql_files", list)
    with pytest.raises(MigrationError, match="installed without its sql/"):
        migrate("postgresql://nobody@127.0.0.1:1/never")  # raises before connecting


def test_billing_migrate_exits_1_naming_the_missing_ddl(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(billing.db, "sql_files", list)
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/never")
    with pytest.raises(SystemExit) as exit_info:
        main(["migrate"])
    assert exit_info.value.code == 1
    assert "installed without its sql/*.sql package data" in capsys.readouterr().err

"""``scripts/setup-venv`` (run by ``scripts/dev`` and ``scripts/test``) installs only when pyproject.toml
changed: run against a copy whose ``.venv/bin/python`` records its calls instead of installing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_install_runs_only_when_pyproject_changes(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup-venv", tmp_path / "scripts" / "setup-venv")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../../calls.log"\n')
    python.chmod(0o755)

    def run() -> list[str]:
        subprocess.run([str(tmp_path / "scripts" / "setup-venv")], check=True, cwd=tmp_path)
        log = tmp_path / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    install = "-m pip install -q --disable-pip-version-check -e .[dev]"
    assert run() == [install]
    assert run() == [install]  # unchanged: nothing installed
    with (tmp_path / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency\n")
    assert run() == [install, install]
    assert run() == [install, install]
    for script in ("dev", "test"):
        assert "./scripts/setup-venv" in (ROOT / "scripts" / script).read_text()
        assert "pip install" not in (ROOT / "scripts" / script).read_text()

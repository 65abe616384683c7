"""The wheel carries what the dashboard pages need: every template and static file, the vendor CSS/JS
copied from the npm packages by ``scripts/assets`` included (they are gitignored, never in the repo)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "src" / "billing" / "dashboard"

pytestmark = pytest.mark.slow


def test_the_wheel_contains_every_dashboard_template_and_asset(tmp_path: Path) -> None:
    vendor = {
        "static/vendor/htmx.min.js",
        "static/vendor/pico.min.css",
        "static/vendor/swagger/swagger-ui-bundle.js",
    }
    wanted = {
        str(p.relative_to(DASHBOARD))
        for folder in ("templates", "static")
        for p in (DASHBOARD / folder).rglob("*")
        if p.is_file()
    }
    assert vendor <= wanted, "run ./scripts/assets"
    assert {"templates/base.html", "templates/overview.html", "static/app.css"} <= wanted
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("billing-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = {name for name in wanted if f"billing/dashboard/{name}" not in names}
    assert missing == set()
    assert not any("node_modules" in n for n in names)

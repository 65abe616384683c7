"""Load the real-world cases kept in ``tests/cases/<name>`` (see ``tests/cases/README.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).resolve().parent / "cases"


def load_cases(name: str) -> list[dict[str, Any]]:
    """Return the list of cases in ``tests/cases/<name>`` (e.g. ``"money.json"``); fail loudly if missing."""
    path = CASES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"case file not found: {path}")
    cases = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(cases, list):
        raise TypeError(f"{path}: expected a JSON list of cases")
    return cases

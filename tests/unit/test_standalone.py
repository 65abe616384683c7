"""The repository stands alone: a plain clone collects and runs its tests and its docs cite only itself."""

from __future__ import annotations

from pathlib import Path

from tests.cases import CASES_DIR, load_cases

ROOT = Path(__file__).resolve().parents[2]


def test_cases_are_read_from_inside_the_repository() -> None:
    assert CASES_DIR == ROOT / "tests" / "cases"
    assert [c["id"] for c in load_cases("money.json")][:1] == ["M01"]


def test_no_file_cites_a_path_outside_the_repository() -> None:
    offenders = []
    for folder in ("src", "tests", "docs", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or path.suffix not in {".py", ".md", ".sql", ""} or path == Path(__file__):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for needle in ("../shared", "/work/", "shared/cases", "shared/evolution-api"):
                if needle in text:
                    offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    offenders += [f"README.md: {n}" for n in ("../shared", "/work/") if n in readme]
    assert offenders == []


def test_the_gateway_contract_the_code_cites_is_in_docs() -> None:
    contract = ROOT / "docs" / "evolution-api.md"
    assert contract.is_file()
    for module in ("gateway/client.py", "gateway/simulator.py"):
        assert "docs/evolution-api.md" in (ROOT / "src" / "billing" / module).read_text(encoding="utf-8")
    assert "docs/evolution-api.md" in (ROOT / "src/billing/domain/delivery.py").read_text(encoding="utf-8")

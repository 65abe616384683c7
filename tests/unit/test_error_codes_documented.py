"""The README's error table names every error code the API can answer (read from the source)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["src/billing/api", "src/billing/services", "src/billing/domain", "src/billing/netguard.py"]
NOT_API_ANSWERS = {
    # refusals of the dashboard's forms and the CLI (users), never an API answer
    "invalid_email", "invalid_role", "weak_password", "user_exists", "user_not_found", "cannot_remove_self",
    # the contact aggregate's own guards, met by the worker, answered by no endpoint
    "already_final", "in_flight", "not_sent", "not_dispatched",
    # the gateway outcome classification (contact errors, metrics), not an HTTP answer
    "gateway_timeout", "transport_error",
}  # fmt: skip
CODE = re.compile(r"""\bcode\s*=\s*f?["']([a-z_{}]+)["']""")


def test_the_readme_names_every_error_code_of_the_api() -> None:
    readme = (ROOT / "README.md").read_text()
    codes: set[str] = set()
    for source in SOURCES:
        path = ROOT / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            codes |= set(CODE.findall(file.read_text()))
    codes = {c for c in codes if "{" not in c} - NOT_API_ANSWERS  # f-strings: their values are listed
    assert {c for c in codes if f"`{c}`" not in readme} == set()
    for code in ("contact_not_found", "invoice_not_found", "phone_not_found", "method_not_allowed"):
        assert f"`{code}`" in readme

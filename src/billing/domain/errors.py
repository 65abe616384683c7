"""Domain errors.

Domain errors carry a machine-readable ``code``, a human ``message`` and, where one input field is to
blame, its ``field`` name. They carry no HTTP status: the API layer maps them to answers in one place
(``billing.api.errors``).
"""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    """Base class of every error raised by :mod:`billing.domain`.

    Attributes:
        code: stable machine-readable code, e.g. ``"invalid_phone"``.
        message: human message (English), naming the field where there is one.
        field: the input field at fault (dotted path such as ``"contacts[2].telefone"``), or None.
        details: extra machine-readable facts (e.g. ``{"names": ["valor"]}``).
    """

    code: str = "domain_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        self.details: dict[str, object] = dict(details or {})


class InvalidValue(DomainError):
    """A single input value cannot be used (bad phone, date, amount...). Rejects one contact."""

    code = "invalid_value"


class NotFound(DomainError):
    """An aggregate does not exist, or belongs to another tenant (the two are indistinguishable)."""

    code = "not_found"


class Conflict(DomainError):
    """The command does not apply to the aggregate's current state."""

    code = "conflict"

"""Errors and constants shared by the CLI modules."""

from __future__ import annotations

SHUTDOWN_GRACE_S = 15.0


class CliError(Exception):
    """A command failed in a way the user can act on; ``main`` prints the message and exits ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code

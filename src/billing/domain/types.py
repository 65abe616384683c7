"""Small shared value types of the domain."""

from __future__ import annotations

from enum import StrEnum


class TemplateType(StrEnum):
    """The three kinds of message, one per public send endpoint and per broker queue.

    ``overdue`` and ``upcoming`` are dunning reminders and go out only inside business hours;
    ``notification`` is a general notice and goes out 24/7 (DESIGN.md, "Public API").
    """

    OVERDUE = "overdue"
    UPCOMING = "upcoming"
    NOTIFICATION = "notification"

    @property
    def respects_business_hours(self) -> bool:
        """True for dunning reminders (overdue, upcoming); notices are sent at any hour."""
        return self is not TemplateType.NOTIFICATION


class ContactStatus(StrEnum):
    """Lifecycle of one message to one person (DESIGN.md, "The model").

    pending → dispatched → sent | failed | skipped; rejected at ingestion; cancelled before sending.
    A retryable failure returns the contact to ``pending`` until its retry is due.
    """

    PENDING = "pending"
    DISPATCHED = "dispatched"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True when nothing more will ever happen to the contact."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        ContactStatus.SENT,
        ContactStatus.FAILED,
        ContactStatus.SKIPPED,
        ContactStatus.REJECTED,
        ContactStatus.CANCELLED,
    }
)


class QueueStatus(StrEnum):
    """Lifecycle of a queue: queued → running ⇄ paused → completed / cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class PauseReason(StrEnum):
    """Why a queue is paused (the status endpoint's ``paused_reason``; DESIGN.md and issue 4)."""

    OUTSIDE_BUSINESS_HOURS = "outside_business_hours"
    DAILY_LIMIT_REACHED = "daily_limit_reached"
    GATEWAY_DISCONNECTED = "gateway_disconnected"
    GATEWAY_MISCONFIGURED = "gateway_misconfigured"

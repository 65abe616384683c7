"""The Queue aggregate: the sending run of a campaign.

queued → running ⇄ paused → completed / cancelled (DESIGN.md, "The model"). ``running`` and
``completed`` follow from the contacts' own events (the first dispatch, the last terminal outcome), so
they are derived by the queue-status projection rather than written here; pausing, resuming and
cancelling are decisions and are recorded as this aggregate's events.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.domain import Aggregate

from billing.domain.errors import Conflict


class Queue(Aggregate):
    """A campaign's sending run."""

    TOPIC = "billing.Queue"

    if TYPE_CHECKING:  # the library builds __init__ from class annotations; keep these for mypy only
        tenant_id: UUID
        campaign_id: UUID
        template_type: str
        total: int
        paused_reason: str | None
        resume_at: datetime | None
        cancelled: bool

    class Created(Aggregate.Created):
        """The queue exists with ``total`` contacts (accepted and rejected)."""

        TOPIC = "billing.Queue.Created"
        tenant_id: UUID
        campaign_id: UUID
        template_type: str
        total: int

        def apply(self, aggregate: Queue) -> None:
            aggregate.tenant_id = self.tenant_id
            aggregate.campaign_id = self.campaign_id
            aggregate.template_type = self.template_type
            aggregate.total = self.total
            aggregate.paused_reason = None
            aggregate.resume_at = None
            aggregate.cancelled = False

    class Paused(Aggregate.Event):
        """Sending stopped for ``reason`` until ``resume_at`` (aware, UTC) or, if None, until told."""

        TOPIC = "billing.Queue.Paused"
        reason: str
        resume_at: datetime | None

        def apply(self, aggregate: Queue) -> None:
            aggregate.paused_reason = self.reason
            aggregate.resume_at = self.resume_at

    class Resumed(Aggregate.Event):
        """Sending may go on."""

        TOPIC = "billing.Queue.Resumed"

        def apply(self, aggregate: Queue) -> None:
            aggregate.paused_reason = None
            aggregate.resume_at = None

    class Cancelled(Aggregate.Event):
        """The ERP cancelled the queue: its unsent contacts will never be sent."""

        TOPIC = "billing.Queue.Cancelled"
        reason: str

        def apply(self, aggregate: Queue) -> None:
            aggregate.cancelled = True

    @classmethod
    def open(
        cls,
        *,
        queue_id: UUID,
        tenant_id: UUID,
        campaign_id: UUID,
        template_type: str,
        total: int,
        at: datetime,
    ) -> Queue:
        """Create the queue of a new campaign; ``at`` is the aware ingestion instant."""
        return cls._create(
            cls.Created,
            id=queue_id,
            tenant_id=tenant_id,
            campaign_id=campaign_id,
            template_type=template_type,
            total=total,
            timestamp=at,
        )

    @property
    def paused(self) -> bool:
        """True while a pause is in force."""
        return self.paused_reason is not None

    def pause(self, *, reason: str, resume_at: datetime | None, at: datetime) -> None:
        """Pause sending. A repeated pause with the same reason and resume time records nothing.

        Raises:
            Conflict: the queue was cancelled.
        """
        if self.cancelled:
            raise Conflict("queue is cancelled", code="queue_cancelled")
        if self.paused_reason == reason and self.resume_at == resume_at:
            return
        self.trigger_event(self.Paused, reason=reason, resume_at=resume_at, timestamp=at)

    def resume(self, *, at: datetime) -> None:
        """Lift the pause in force, if any."""
        if self.paused and not self.cancelled:
            self.trigger_event(self.Resumed, timestamp=at)

    def cancel(self, *, reason: str, at: datetime) -> None:
        """Cancel the queue; cancelling twice records nothing."""
        if not self.cancelled:
            self.trigger_event(self.Cancelled, reason=reason, timestamp=at)


PAUSED_BY_ADMIN = "paused_by_admin"
"""``paused_reason`` of a queue an admin paused by hand (lifted only by an explicit resume)."""


def review_pause(
    reason: str,
    resume_at: datetime | None,
    *,
    open_now: bool,
    next_opening: datetime | None,
    policy_changed: bool,
    gateway_changed: bool,
) -> tuple[str, datetime | None]:
    """What a changed policy or gateway means for a paused queue (pure).

    Returns ``("resume", None)``, ``("keep", None)`` or ``("move", new_resume_at)``:

    - ``outside_business_hours``: open now under the new hours → resume; else the pause moves to the new
      ``next_opening`` when that differs from ``resume_at``;
    - ``daily_limit_reached`` after a policy change, ``gateway_misconfigured`` / ``gateway_disconnected``
      after a gateway change → resume (the worker checks again before the next send and pauses anew
      if the cause persists);
    - a pause by an admin (``paused_by_admin``) and everything else → keep.
    """
    if reason == "outside_business_hours" and policy_changed:
        if open_now:
            return "resume", None
        if next_opening is not None and next_opening != resume_at:
            return "move", next_opening
        return "keep", None
    if reason == "daily_limit_reached" and policy_changed:
        return "resume", None
    if reason in ("gateway_misconfigured", "gateway_disconnected") and gateway_changed:
        return "resume", None
    return "keep", None

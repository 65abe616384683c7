"""Handle one SendJob delivery: decide, claim, render, send, record, then settle (issues 2 and 4).

Order of the checks, each with its source:

1. Body → :func:`~billing.outbox.jobs.decode_job`; malformed, unknown contact/queue/tenant, or a job
   naming another tenant → ``reject`` (dead-letter at once, never requeued: case Q02).
2. Contact terminal (sent, failed, skipped, rejected, cancelled) → ``ack``, nothing else (promise 3,
   case Q04). Queue cancelled → cancel the contact (issue 4 §6). Contact pending with ``not_before`` in
   the future (a retry backoff, a deferral) → ``ack``: the scheduler republishes it when due. Contact
   dispatched under a lease still in force → ``ack``: another attempt is in flight.
3. Queue paused → unless its pause is over (``resume_at`` passed; for ``gateway_misconfigured`` the
   tenant's gateway generation moved past the block), defer the contact to ``resume_at`` and ``ack``.
4. Business hours (overdue and upcoming only, DESIGN.md promise 4): outside → pause the queue with
   ``outside_business_hours`` until the next opening, defer the contact to it, ``ack`` — never hold a
   delivery (case Q01, the broker's ``consumer_timeout``).
5. Gateway: blocked after a 401/403/404 → pause ``gateway_misconfigured`` (no ``resume_at``);
   ``connectionState`` not open (or tripped by repeated connection problems) → pause
   ``gateway_disconnected`` with backoff (:mod:`billing.worker.health`).
6. Throttle (promise 5): :meth:`~billing.worker.ledger.SendLedger.acquire`; refused → defer to the
   throttle's ``retry_at``; the daily cap also pauses the queue with ``daily_limit_reached``.
7. Claim: :meth:`Contact.dispatch` with the settings' lease, **saved before the gateway call**; a version
   conflict means another worker got it first → ``ack``.
8. Render (:mod:`billing.worker.rendering`), send, record the outcome (:mod:`billing.worker.outcomes`),
   save, **then** ``ack``.

An unexpected exception → ``requeue``: transient by assumption; the quorum queue's delivery limit bounds
the retries, then dead-letters. Logs: ``tenant_id``, ``queue_id``, ``contact_id`` and ``message_id`` are
bound to structlog's context; one line per delivery; phone numbers masked; message text never logged.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog
from structlog.contextvars import bound_contextvars

from billing import metrics
from billing.bootstrap import Container
from billing.domain.audit import allowed_by
from billing.domain.contact import Contact
from billing.domain.errors import Conflict
from billing.domain.queue import Queue
from billing.domain.template import MessageTemplate  # noqa: F401  (registers the template topics)
from billing.domain.tenant import Tenant
from billing.domain.throttle import DAILY_LIMIT_REACHED
from billing.domain.types import ContactStatus, PauseReason, TemplateType
from billing.outbox.broker import Delivery
from billing.outbox.jobs import SendJob, decode_job
from billing.worker.health import GatewayHealth, Verdict
from billing.worker.ledger import SendLedger, margin_for
from billing.worker.outcomes import Handled, OutcomeRecorder, Result
from billing.worker.persistence import IntegrityError, load, pause_queue, resume_queue, save
from billing.worker.rendering import Renderer

__all__ = [
    "GATEWAY_DISCONNECTED",
    "GATEWAY_MISCONFIGURED",
    "OUTSIDE_BUSINESS_HOURS",
    "Handled",
    "JobHandler",
    "Result",
]

log = structlog.get_logger(__name__)

OUTSIDE_BUSINESS_HOURS = PauseReason.OUTSIDE_BUSINESS_HOURS.value
GATEWAY_DISCONNECTED = PauseReason.GATEWAY_DISCONNECTED.value
GATEWAY_MISCONFIGURED = PauseReason.GATEWAY_MISCONFIGURED.value


@dataclass
class _Context:
    """What the checks after the contact's own state need."""

    contact: Contact
    queue: Queue
    tenant: Tenant
    now: datetime


class JobHandler:
    """The broker handler of the three job queues (``await handler(delivery)``; one instance per process).

    Args:
        container: settings, event store, views pool, clock and gateway factory.
        health: per-process gateway health (shared by every delivery of the process).
        rng: randomness of retry jitter and of the typing pause (seed it in tests).
        ledger / renderer: adapters, built from ``container.pool`` when not given.
    """

    def __init__(
        self,
        container: Container,
        *,
        health: GatewayHealth | None = None,
        rng: random.Random | None = None,
        ledger: SendLedger | None = None,
        renderer: Renderer | None = None,
    ) -> None:
        self.container = container
        self.store = container.store
        self.clock = container.clock
        self.health = health or GatewayHealth()
        self.rng = rng or random.Random()  # jitter, not security
        self.ledger = ledger or SendLedger(container.pool, margin=margin_for(container.clock))
        self.renderer = renderer or Renderer(container.pool)
        self.lease = timedelta(seconds=container.settings.dispatch_lease_s)
        self.recorder = OutcomeRecorder(self)

    async def __call__(self, delivery: Delivery) -> None:
        """Handle and settle one delivery: ``reject`` for poison, ``requeue`` on an unexpected error,
        ``ack`` otherwise (after every state change is saved). Never raises for the job's own problems."""
        try:
            job = decode_job(delivery.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning(
                "job_rejected",
                outcome=Handled.POISON.value,
                reason="malformed",
                error=type(exc).__name__,
                message_id=delivery.message_id,
                queue=delivery.queue,
            )
            metrics.DEAD_LETTERED.labels("malformed").inc()
            await delivery.reject()
            return
        with bound_contextvars(
            tenant_id=str(job.tenant_id),
            queue_id=str(job.queue_id),
            contact_id=str(job.contact_id),
            message_id=delivery.message_id,
        ):
            try:
                result = await self.handle(job)
            except Exception:
                log.exception("job_failed_requeued", delivery_count=delivery.delivery_count)
                try:
                    await delivery.requeue()
                except Exception:  # the channel is gone: the broker redelivers it anyway
                    log.warning("requeue_failed", exc_info=True)
                return
            _log_result(result, job)
            metrics.record_job(result)
            if result.outcome is Handled.POISON:
                await delivery.reject()
            else:
                await delivery.ack()

    async def handle(self, job: SendJob) -> Result:
        """Do everything one job asks and return what happened (the delivery is not settled here).

        Raises:
            Exception: an unexpected (transient) failure, e.g. the database is unreachable.
        """
        now = self.clock.now()
        contact = await load(self.store, job.contact_id, Contact)
        if contact is None or contact.tenant_id != job.tenant_id:
            return Result(Handled.POISON, reason="unknown_contact")
        if contact.status.is_terminal:
            return Result(Handled.ALREADY_FINAL, status=contact.status.value)
        queue = await load(self.store, contact.queue_id, Queue)
        if queue is None:
            return Result(Handled.POISON, reason="unknown_queue")
        if queue.cancelled:
            return await self._cancel(contact, now)
        if (
            contact.status is ContactStatus.PENDING
            and contact.not_before is not None
            and contact.not_before > now
        ):
            return Result(Handled.NOT_DUE, not_before=contact.not_before.isoformat())
        if contact.status is ContactStatus.DISPATCHED and contact.lease_until and now < contact.lease_until:
            return Result(Handled.IN_FLIGHT, lease_until=contact.lease_until.isoformat())
        tenant = await load(self.store, contact.tenant_id, Tenant)
        if tenant is None:
            return Result(Handled.POISON, reason="unknown_tenant")
        return await self._check_and_send(_Context(contact, queue, tenant, now))

    async def _check_and_send(self, ctx: _Context) -> Result:
        contact, queue, tenant, now = ctx.contact, ctx.queue, ctx.tenant, ctx.now
        if queue.paused and not await self._pause_over(queue, tenant, now):
            reason = queue.paused_reason or "paused"
            until = queue.resume_at or now
            return await self._defer(contact, Handled.QUEUE_PAUSED, reason, until, now, paused_reason=reason)
        policy = tenant.sending_policy
        calendar = policy.calendar
        if TemplateType(contact.template_type).respects_business_hours and not calendar.is_open(now):
            opening = calendar.next_opening(now).astimezone(UTC)
            await pause_queue(
                self.store, queue.id, loaded=queue, reason=OUTSIDE_BUSINESS_HOURS, resume_at=opening, at=now
            )
            return await self._defer(
                contact, Handled.OUTSIDE_BUSINESS_HOURS, OUTSIDE_BUSINESS_HOURS, opening, now
            )
        generation = tenant.gateway_generation
        blocked = await asyncio.to_thread(self.ledger.blocked_generation, tenant.id)
        if blocked is not None and blocked >= generation:
            await pause_queue(
                self.store, queue.id, loaded=queue, reason=GATEWAY_MISCONFIGURED, resume_at=None, at=now
            )
            return await self._defer(contact, Handled.GATEWAY_MISCONFIGURED, GATEWAY_MISCONFIGURED, now, now)
        client = self.container.gateway(tenant.gateway)
        assert self.container.http is not None  # created by container.gateway()
        verdict, code = await self.health.check(
            tenant.id,
            generation,
            http=self.container.http,
            gateway=tenant.gateway,
            timeout_s=self.container.settings.gateway_timeout_s,
            now=now,
        )
        if verdict is Verdict.MISCONFIGURED:
            await asyncio.to_thread(
                self.ledger.block_gateway, tenant_id=tenant.id, generation=generation, code=code or "", at=now
            )
            await pause_queue(
                self.store, queue.id, loaded=queue, reason=GATEWAY_MISCONFIGURED, resume_at=None, at=now
            )
            return await self._defer(
                contact, Handled.GATEWAY_MISCONFIGURED, GATEWAY_MISCONFIGURED, now, now, code=code
            )
        if verdict is Verdict.DOWN:
            resume_at = self.health.trip(tenant.id, generation, now=now)
            await pause_queue(
                self.store, queue.id, loaded=queue, reason=GATEWAY_DISCONNECTED, resume_at=resume_at, at=now
            )
            return await self._defer(
                contact, Handled.GATEWAY_DISCONNECTED, GATEWAY_DISCONNECTED, resume_at, now
            )
        grant = await asyncio.to_thread(
            self.ledger.acquire,
            tenant_id=tenant.id,
            contact_id=contact.id,
            limits=policy.limits,
            calendar=calendar,
            now=now,
        )
        if not grant.allowed:
            retry_at = grant.decision.retry_at
            assert retry_at is not None
            retry_at = retry_at.astimezone(UTC)
            if grant.decision.reason == DAILY_LIMIT_REACHED:
                await pause_queue(
                    self.store, queue.id, loaded=queue, reason=DAILY_LIMIT_REACHED, resume_at=retry_at, at=now
                )
                return await self._defer(
                    contact, Handled.DAILY_LIMIT_REACHED, DAILY_LIMIT_REACHED, retry_at, now
                )
            reason = grant.decision.reason or "throttled"
            return await self._defer(contact, Handled.THROTTLED, reason, retry_at, now)
        assert grant.ledger_id is not None
        try:
            attempt = contact.dispatch(
                at=now, lease=self.lease, allowed_by=_allowed_by(tenant, contact, grant, now)
            )
            await save(self.store, contact)
        except (Conflict, IntegrityError):
            await asyncio.to_thread(self.ledger.release, grant.ledger_id)
            return Result(Handled.CLAIMED_ELSEWHERE)
        except Exception:  # transient: nothing reached the gateway, so the grant must not count
            await asyncio.to_thread(self.ledger.release, grant.ledger_id)
            raise
        return await self.recorder.send(
            contact, tenant, policy, client, attempt=attempt, ledger_id=grant.ledger_id
        )

    async def _pause_over(self, queue: Queue, tenant: Tenant, now: datetime) -> bool:
        """True (and the queue resumed) when the pause in force no longer applies at ``now``."""
        if queue.resume_at is not None:
            if queue.resume_at > now:
                return False
            await resume_queue(self.store, queue.id, loaded=queue, at=now)
            return True
        if queue.paused_reason != GATEWAY_MISCONFIGURED:
            return False  # paused until told (no resume_at): only an explicit resume lifts it
        generation = tenant.gateway_generation
        blocked = await asyncio.to_thread(self.ledger.blocked_generation, tenant.id)
        if blocked is not None and blocked >= generation:
            return False
        await asyncio.to_thread(self.ledger.unblock, tenant.id, below_generation=generation)
        await resume_queue(
            self.store,
            queue.id,
            loaded=queue,
            at=now,
            when=lambda q: q.paused_reason == GATEWAY_MISCONFIGURED,
        )
        return True

    async def _defer(
        self,
        contact: Contact,
        outcome: Handled,
        reason: str,
        not_before: datetime,
        now: datetime,
        **extra: Any,
    ) -> Result:
        """Put the contact back to wait until ``not_before`` (UTC) and save. A version conflict means
        another writer (a claim, a cancellation, a twin job) changed it meanwhile: that writer owns it."""
        not_before = not_before.astimezone(UTC)
        try:
            contact.defer(reason=reason, not_before=not_before, at=now)
            await save(self.store, contact)
        except (Conflict, IntegrityError):
            return Result(Handled.CONTENDED, wanted=outcome.value)
        return Result(outcome, not_before=not_before.isoformat(), **extra)

    async def _cancel(self, contact: Contact, now: datetime) -> Result:
        try:
            contact.cancel(reason="queue_cancelled", at=now)
            await save(self.store, contact)
        except IntegrityError:
            return Result(Handled.CONTENDED, wanted=Handled.CANCELLED.value)
        return Result(Handled.CANCELLED)


def _allowed_by(tenant: Tenant, contact: Contact, grant: Any, now: datetime) -> dict[str, Any]:
    """The rule that allowed this claim, for the auditor (:func:`billing.domain.audit.allowed_by`)."""
    policy = tenant.sending_policy
    return allowed_by(
        at=now,
        respects_business_hours=TemplateType(contact.template_type).respects_business_hours,
        calendar=policy.calendar,
        calendar_version=tenant.calendar_version,
        policy_version=tenant.policy_version,
        limits=policy.limits,
        sent_in_window=grant.sent_in_window,
        sent_today=grant.sent_today,
    )


_WARN = frozenset({Handled.POISON, Handled.FAILED, Handled.GATEWAY_MISCONFIGURED})


def _log_result(result: Result, job: SendJob) -> None:
    """The one log line of a delivery (no text, phone already masked by the producer of ``result``)."""
    fields = {
        "outcome": result.outcome.value,
        "template_type": job.template_type.value,
        "job_reason": job.reason,
    }
    fields.update(result.fields)
    if result.outcome is Handled.UNRECORDED:
        log.error("job_handled", **fields)
    elif result.outcome in _WARN:
        log.warning("job_handled", **fields)
    else:
        log.info("job_handled", **fields)

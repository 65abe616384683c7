"""After the claim: render, call the gateway, and record the classified outcome on the Contact.

Outcome → event (``shared/evolution-api.md``, "Failures to classify"; :mod:`billing.domain.delivery`):

| outcome          | event                                                                              |
| ---------------- | ---------------------------------------------------------------------------------- |
| SENT             | ``Sent`` (``key.id``, ``key.remoteJid``, exact text, template id/version/variation) |
| NOT_ON_WHATSAPP  | ``Skipped`` (``not_on_whatsapp``)                                                  |
| RETRYABLE        | ``Failed`` with ``retry_at = now + RetryPolicy.next_delay`` while ``should_retry``,  |
|                  | else final; ``connection_problem`` outcomes feed gateway health                    |
| PERMANENT        | ``Failed``, final                                                                  |
| MISCONFIGURED    | ``Failed`` with ``retry_at = now`` (not the contact's fault), the tenant's gateway   |
|                  | blocked at its generation, the queue paused ``gateway_misconfigured``               |

The claim (``Dispatched``) was saved before the call, so even an outcome that is unknown (timeout, 503)
leaves a record of the attempt before any retry. The outcome's save is retried a few times on transient
errors; a version conflict means the contact changed meanwhile (a cancellation): it is logged as
``outcome_not_recorded`` with the gateway's message id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from billing import metrics
from billing.domain.contact import Contact
from billing.domain.delivery import OutcomeKind, SendOutcome
from billing.domain.errors import Conflict
from billing.domain.phone import mask_phone
from billing.domain.policy import SendingPolicy
from billing.domain.tenant import Tenant
from billing.domain.types import PauseReason
from billing.gateway.client import EvolutionClient
from billing.worker.persistence import IntegrityError, load, pause_queue
from billing.worker.rendering import RenderError

if TYPE_CHECKING:
    from billing.worker.handler import JobHandler

__all__ = ["SAVE_ATTEMPTS", "Handled", "OutcomeRecorder", "Result"]

log = structlog.get_logger(__name__)

SAVE_ATTEMPTS = 3
"""Version conflicts tolerated while storing one outcome (each reloads the contact and re-applies it)."""
SAVE_SAFETY_S = 5.0
"""Transient save failures are retried until this many real seconds before the claim's lease ends: past
the lease the scheduler republishes the contact and another worker would send the message again."""


class Handled(StrEnum):
    """What handling one job did (the ``outcome`` of its log line)."""

    POISON = "poison"
    """Malformed, or names an unknown contact/queue/tenant: dead-lettered."""
    ALREADY_FINAL = "already_final"
    CANCELLED = "cancelled"
    NOT_DUE = "not_due"
    IN_FLIGHT = "in_flight"
    CONTENDED = "contended"
    """Another writer changed the contact meanwhile; it owns the next step."""
    QUEUE_PAUSED = "queue_paused"
    OUTSIDE_BUSINESS_HOURS = "outside_business_hours"
    GATEWAY_MISCONFIGURED = "gateway_misconfigured"
    GATEWAY_DISCONNECTED = "gateway_disconnected"
    THROTTLED = "throttled"
    DAILY_LIMIT_REACHED = "daily_limit_reached"
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    LEASE_TOO_SHORT = "lease_too_short"
    """The claim would expire before the gateway call could end: released without calling."""
    SENT = "sent"
    SKIPPED = "skipped"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"
    UNRECORDED = "outcome_not_recorded"


class Result:
    """The outcome of one job and the facts worth logging (ids, codes, instants; never text or a clear
    phone number): ``Result(Handled.SENT, attempt=1, ...)``."""

    __slots__ = ("fields", "outcome")

    def __init__(self, outcome: Handled, **fields: Any) -> None:
        self.outcome = outcome
        self.fields: dict[str, Any] = fields

    def __repr__(self) -> str:
        return f"Result({self.outcome.value}, {self.fields})"


class OutcomeRecorder:
    """The second half of :class:`~billing.worker.handler.JobHandler`: from a saved claim to a saved
    outcome. Shares the handler's clock, store, ledger, renderer, health and randomness."""

    def __init__(self, handler: JobHandler) -> None:
        self.h = handler

    async def send(
        self,
        contact: Contact,
        tenant: Tenant,
        policy: SendingPolicy,
        client: EvolutionClient,
        *,
        attempt: int,
        ledger_id: int,
    ) -> Result:
        """Render, send and record attempt ``attempt`` of the claimed ``contact``.

        Raises:
            Exception: the outcome could not be saved before the claim's lease (less a safety margin) ran
                out.
        """
        h = self.h
        now = h.clock.now()
        base = {"attempt": attempt, "phone": mask_phone(contact.phone or "")}
        try:
            rendered = await asyncio.to_thread(h.renderer.render, contact, now=now, tz=policy.calendar.tz)
        except RenderError as exc:
            await asyncio.to_thread(h.ledger.release, ledger_id)  # nothing reached the gateway
            retry_at = self._retry_at(policy, attempt, now) if exc.retryable else None
            outcome = Handled.RETRY_SCHEDULED if retry_at else Handled.FAILED
            return await self._store(
                contact,
                partial(
                    Contact.record_failure,
                    code=exc.code,
                    message=exc.message,
                    retryable=exc.retryable,
                    retry_at=retry_at,
                    at=now,
                ),
                Result(outcome, code=exc.code, retry_at=_iso(retry_at), **base),
            )
        assert contact.gateway_number is not None
        typing_ms = self._typing_ms(policy)
        if not self._call_fits_lease(contact, typing_ms):
            await asyncio.to_thread(h.ledger.release, ledger_id)  # nothing reached the gateway
            return await self._give_back(contact, base)
        with metrics.GATEWAY_LATENCY.time():
            sent = await client.send_text(contact.gateway_number, rendered.text, delay_ms=typing_ms)
        done = h.clock.now()
        base.update(code=sent.code, http_status=sent.http_status)
        if sent.kind is OutcomeKind.SENT:
            h.health.record_success(tenant.id, tenant.gateway_generation)
            assert sent.message_id is not None
            record: Callable[[Contact], None] = partial(
                Contact.record_sent,
                gateway_message_id=sent.message_id,
                remote_jid=sent.remote_jid,
                text=rendered.text,
                at=done,
                template_id=rendered.template_id,
                template_version=rendered.template_version,
                variation=rendered.variation,
            )
            result = Result(Handled.SENT, gateway_message_id=sent.message_id, **base)
        elif sent.kind is OutcomeKind.NOT_ON_WHATSAPP:
            record = partial(Contact.record_skipped, code=sent.code, message=sent.message, at=done)
            result = Result(Handled.SKIPPED, **base)
        elif sent.kind is OutcomeKind.RETRYABLE:
            record, result = await self._retryable(contact, tenant, policy, sent, attempt, done, base)
        elif sent.kind is OutcomeKind.MISCONFIGURED:
            await asyncio.to_thread(
                h.ledger.block_gateway,
                tenant_id=tenant.id,
                generation=tenant.gateway_generation,
                code=sent.code,
                at=done,
            )
            await pause_queue(
                h.store,
                contact.queue_id,
                reason=PauseReason.GATEWAY_MISCONFIGURED.value,
                resume_at=None,
                at=done,
            )
            record = partial(
                Contact.record_failure,
                code=sent.code,
                message=sent.message,
                retryable=True,
                retry_at=done,
                at=done,
            )
            result = Result(Handled.GATEWAY_MISCONFIGURED, **base)
        else:
            record = partial(
                Contact.record_failure,
                code=sent.code,
                message=sent.message,
                retryable=False,
                retry_at=None,
                at=done,
            )
            result = Result(Handled.FAILED, outcome_unknown=sent.outcome_unknown, **base)
        return await self._store(contact, record, result)

    async def _retryable(
        self,
        contact: Contact,
        tenant: Tenant,
        policy: SendingPolicy,
        sent: SendOutcome,
        attempt: int,
        done: datetime,
        base: dict[str, Any],
    ) -> tuple[Callable[[Contact], None], Result]:
        h = self.h
        resume_at = None
        if sent.connection_problem and h.health.record_problem(tenant.id, tenant.gateway_generation):
            resume_at = h.health.trip(tenant.id, tenant.gateway_generation, now=done)
            await pause_queue(
                h.store,
                contact.queue_id,
                reason=PauseReason.GATEWAY_DISCONNECTED.value,
                resume_at=resume_at,
                at=done,
            )
        retry_at = self._retry_at(policy, attempt, done)
        if retry_at is not None and resume_at is not None:
            retry_at = max(retry_at, resume_at.astimezone(UTC))
        record = partial(
            Contact.record_failure,
            code=sent.code,
            message=sent.message,
            retryable=True,
            retry_at=retry_at,
            at=done,
        )
        outcome = Handled.RETRY_SCHEDULED if retry_at else Handled.FAILED
        return record, Result(outcome, retry_at=_iso(retry_at), outcome_unknown=sent.outcome_unknown, **base)

    def _call_fits_lease(self, contact: Contact, typing_ms: int | None) -> bool:
        """True when the whole gateway call (typing delay + timeout, which the client enforces) ends
        before this worker's claim expires. Past ``lease_until`` the scheduler lets another worker claim
        the contact; a call still running then could make WhatsApp receive the message twice."""
        if contact.lease_until is None:
            return True
        budget = timedelta(seconds=self.h.container.settings.gateway_timeout_s + (typing_ms or 0) / 1000)
        return self.h.clock.now() + budget < contact.lease_until

    async def _give_back(self, contact: Contact, base: dict[str, Any]) -> Result:
        """Release a claim that is too late to use (``Deferred`` until now, not an attempt). If another
        worker claimed the contact meanwhile, that worker owns it and nothing is written."""
        now = self.h.clock.now()
        try:
            contact.defer(reason=Handled.LEASE_TOO_SHORT.value, not_before=now, at=now)
            await asyncio.to_thread(self.h.store.save, *contact.collect_events())
        except (Conflict, IntegrityError):
            return Result(Handled.CLAIMED_ELSEWHERE, **base)
        return Result(Handled.LEASE_TOO_SHORT, **base)

    def _retry_at(self, policy: SendingPolicy, attempt: int, now: datetime) -> datetime | None:
        """When to try again after failed attempt ``attempt`` (tenant's RetryPolicy), or None: final."""
        if not policy.retry.should_retry(attempt, True):
            return None
        return (now + timedelta(seconds=policy.retry.next_delay(attempt, self.h.rng))).astimezone(UTC)

    def _typing_ms(self, policy: SendingPolicy) -> int | None:
        """The random pause between messages (policy ``pause_min_s..pause_max_s``), spent by the gateway
        as "typing…" before it sends (evolution-api.md ``delay``); None when the range is zero."""
        if policy.pause_max_s <= 0:
            return None
        return round(self.h.rng.uniform(policy.pause_min_s, policy.pause_max_s) * 1000)

    async def _store(self, contact: Contact, record: Callable[[Contact], None], result: Result) -> Result:
        """Apply the outcome command ``record`` to the contact and save it. Transient errors are retried;
        a version conflict (someone else wrote the contact meanwhile, e.g. a cancellation during the
        call) reloads the contact and applies the outcome again, so what reached WhatsApp is recorded;
        only when the domain then refuses it is the result reported as not recorded."""
        deadline = time.monotonic() + self._real_seconds_left(contact)
        conflicts = 0
        pause = 0.2
        while True:
            try:
                record(contact)
                events = contact.collect_events()
                await asyncio.to_thread(self.h.store.save, *events)
            except Conflict:
                return self._unrecorded(result)
            except IntegrityError:
                conflicts += 1
                fresh = await load(self.h.store, contact.id, Contact)
                if fresh is None or conflicts >= SAVE_ATTEMPTS:
                    return self._unrecorded(result)
                contact = fresh
            except Exception:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("outcome_save_retry", exc_info=True, retry_in_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                fresh = await load(self.h.store, contact.id, Contact)
                if fresh is None:
                    raise
                contact = fresh
            else:
                return result

    def _real_seconds_left(self, contact: Contact) -> float:
        """Real seconds until the claim's lease ends, less :data:`SAVE_SAFETY_S` (at least 1 s). A clock
        running faster than real time (``BILLING_CLOCK``, tests only) is scaled back."""
        if contact.lease_until is None:
            return 1.0
        rate = float(getattr(self.h.clock, "scale", 1.0)) or 1.0
        left = (contact.lease_until - self.h.clock.now()).total_seconds() / rate
        return max(1.0, left - SAVE_SAFETY_S)

    @staticmethod
    def _unrecorded(result: Result) -> Result:
        result.fields["wanted"] = result.outcome.value
        result.outcome = Handled.UNRECORDED
        return result


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()

"""Handle one SendJob delivery: gather facts, let :func:`billing.domain.sending.decide` decide, carry the
decision out, send, record the outcome (:func:`billing.domain.sending.settle`), then settle the delivery.

- Body → :func:`~billing.outbox.jobs.decode_job`; malformed → ``reject`` (dead-letter, case Q02).
- The decision's REJECT → ``reject``; everything else → ``ack`` once every state change is saved.
- An unexpected exception → ``requeue``: transient by assumption; the quorum queue's delivery limit bounds
  the retries, then dead-letters.
- **The handling runs shielded from the consumer.** When the broker connection drops, aio-pika cancels the
  consumer's callbacks; a call that already reached the gateway must still get its outcome saved, or the
  claim's lease expires and the contact is sent again. So each delivery's work runs in its own task that
  the consumer's cancellation does not reach; the delivery is settled afterwards if its channel still
  lives (else the broker redelivers it and the redelivery finds the contact final: a no-op).
  :meth:`JobHandler.drain` waits for that work on shutdown.
- **Contact saves are grouped.** Claims, outcomes, deferrals, skips and cancellations go through
  :class:`~billing.worker.groupcommit.GroupCommitter`: the saves that concurrent handlings ask for at the
  same time share one event-store transaction; each handling resumes once its own transaction committed,
  and a version conflict reaches only the handling whose contact moved (as with a single save).

Logs: ``tenant_id``, ``queue_id``, ``contact_id`` and ``message_id`` are bound to structlog's context;
one line per delivery; phone numbers masked; message text never logged.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import structlog
from structlog.contextvars import bound_contextvars

from billing import metrics
from billing.domain.calendar import BusinessCalendar
from billing.domain.contact import Contact
from billing.domain.delivery import OutcomeKind, SendOutcome
from billing.domain.errors import Conflict
from billing.domain.phone import mask_phone
from billing.domain.policy import SendingPolicy
from billing.domain.queue import Queue
from billing.domain.sending import (
    Action,
    Decision,
    GatewayBlock,
    GatewayState,
    GatewayVerdict,
    Handled,
    JobFacts,
    Need,
    RecipientFacts,
    Record,
    Settlement,
    ThrottleState,
    call_fits_lease,
    decide,
    settle,
    settle_render_error,
)
from billing.domain.template import MessageTemplate  # noqa: F401  (registers the template topics)
from billing.domain.tenant import Tenant
from billing.domain.types import ContactStatus, PauseReason
from billing.eventstore import EventStore
from billing.gateway.client import GatewayFactory
from billing.outbox.broker import Delivery
from billing.outbox.jobs import SendJob, decode_job
from billing.services.clock import Clock
from billing.worker.batching import Batcher
from billing.worker.groupcommit import GroupCommitter
from billing.worker.ledger import LedgerSession
from billing.worker.persistence import IntegrityError, load, pause_queue, read_each, resume_queue
from billing.worker.rendering import Rendered, RenderError

__all__ = ["Handled", "JobHandler", "Result", "TenantCache"]

log = structlog.get_logger(__name__)

CLAIM_CHECK_PAUSES_S = (0.1, 0.5, 1.0, 2.0, 4.0)
"""Pauses (seconds) before each read that settles whether a claim whose save got no answer committed:
7.6 s in all, well inside the claim's lease, so a database that drops every connection (and does it
again while they reconnect) has come back before the job would be requeued onto its own claim."""

SAVE_ATTEMPTS = 3
"""Version conflicts tolerated while storing one outcome (each reloads the contact and re-applies it)."""
CLAIM_GIVEN_BACK = "claim_given_back"
"""The ``Deferred`` reason of a claim given back after a failure before its gateway call."""
SAVE_SAFETY_S = 5.0
"""Transient save failures are retried until this many real seconds before the claim's lease ends: past
the lease the scheduler republishes the contact and another worker would send the message again."""


class Result:
    """The outcome of one job and the facts worth logging (ids, codes, instants; never text or a clear
    phone number): ``Result(Handled.SENT, attempt=1, ...)``."""

    __slots__ = ("fields", "outcome")

    def __init__(self, outcome: Handled, **fields: Any) -> None:
        self.outcome = outcome
        self.fields: dict[str, Any] = fields

    def __repr__(self) -> str:
        return f"Result({self.outcome.value}, {self.fields})"


class LedgerPort(Protocol):
    """What the handler uses of :class:`~billing.worker.ledger.SendLedger`."""

    def locked_many(
        self, tenant_ids: Iterable[UUID]
    ) -> AbstractContextManager[Mapping[UUID, LedgerSession]]: ...
    def release(self, ledger_id: int) -> None: ...
    def blocked_generation(self, tenant_id: UUID) -> int | None: ...
    def block_gateway(self, *, tenant_id: UUID, generation: int, code: str, at: datetime) -> None: ...
    def unblock(self, tenant_id: UUID, *, below_generation: int) -> None: ...


class RendererPort(Protocol):
    """What the handler uses of :class:`~billing.worker.rendering.Renderer`."""

    def render(self, contact: Contact, *, now: datetime, tz: ZoneInfo) -> Rendered: ...
    def ready(self, contact: Contact) -> bool: ...


class HealthPort(Protocol):
    """What the handler uses of :class:`~billing.worker.health.GatewayHealth`."""

    async def check(
        self,
        tenant_id: UUID,
        generation: int,
        *,
        transport: Any,
        gateway: Mapping[str, str],
        timeout_s: float,
        now: datetime,
    ) -> tuple[GatewayVerdict, str | None]: ...
    def trip(self, tenant_id: UUID, generation: int, *, now: datetime) -> datetime: ...
    def record_problem(self, tenant_id: UUID, generation: int) -> bool: ...
    def record_success(self, tenant_id: UUID, generation: int, *, at: datetime) -> None: ...


class RecipientPort(Protocol):
    """Gathers the facts about the person (:class:`billing.worker.recipient.Recipient`):
    ``gather_known_many`` blocking, in a thread, for several contacts at once (None for a contact when only
    a lookup call can tell), then ``gather_looked_up`` on the event loop for those (it calls the gateway's
    lookup)."""

    async def gather_looked_up(
        self, contact: Contact, client: Any, calendar: BusinessCalendar, now: datetime
    ) -> RecipientFacts: ...
    def gather_known_many(
        self, asked: Sequence[tuple[Contact, BusinessCalendar, datetime]]
    ) -> list[RecipientFacts | Exception | None]: ...


_Step = tuple[JobFacts, Decision, bool, int | None]
"""A gather step done in a thread: the facts, the decision on them, whether the throttle step ran (its
decision is then final for this job), and the ledger grant of a CLAIM."""
_PreClaim = tuple[JobFacts, Tenant, bool]
"""A request for the grouped pre-claim step: the facts so far, the tenant, and whether the recipient's
facts are still to gather (else only the throttle)."""
_Read = tuple[Contact | None, Queue | None, Tenant | None]
"""A job's contact, queue and tenant as read by the grouped read (the tenant only when not cached)."""


class TenantCache:
    """Tenants by id, each kept at most ``ttl_s`` real seconds (policy and gateway settings are read by
    every job; they change rarely). No I/O: the handler reads a tenant not held fresh together with the
    job's contact and queue, then keeps it. **Invalidation rule:** an entry older than ``ttl_s`` is read
    again, so a policy or gateway change takes effect in every worker within ``ttl_s`` (default 5 s);
    ``ttl_s = 0`` disables the cache."""

    def __init__(self, *, ttl_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[UUID, tuple[float, Tenant | None]] = {}

    def fresh(self, tenant_id: UUID) -> tuple[bool, Tenant | None]:
        """``(True, tenant or None)`` when an entry younger than ``ttl_s`` is held, else ``(False, None)``
        (read it, then :meth:`keep` it). No I/O."""
        entry = self._entries.get(tenant_id)
        if entry is not None and time.monotonic() - entry[0] < self.ttl_s:
            return True, entry[1]
        return False, None

    def keep(self, tenant_id: UUID, tenant: Tenant | None) -> None:
        """Hold what was just read of ``tenant_id`` (None: unknown) for ``ttl_s``."""
        if self.ttl_s > 0:
            self._entries[tenant_id] = (time.monotonic(), tenant)


class JobHandler:
    """The broker handler of the job queues (``await handler(delivery)``; one instance per process).

    Args:
        store: the event store (contacts, queues).
        tenants: tenant reads (cached).
        ledger: send ledger and gateway blocks (:class:`~billing.worker.ledger.SendLedger`).
        renderer: renders a contact's message (:class:`~billing.worker.rendering.Renderer`).
        health: per-process gateway health (:class:`~billing.worker.health.GatewayHealth`).
        gateways: builds a tenant's gateway client (its ``transport`` is the shared HTTP transport).
        clock: the time source.
        lease_s: a claim's lease (``BILLING_DISPATCH_LEASE_S``).
        gateway_timeout_s: one gateway call's timeout, on top of its typing delay.
        recipient: the facts about the person (opt-out, WhatsApp account, per-debtor cap).
        rng: draws for the typing pause and the retry jitter (seed it in tests).
        block_ttl_s: real seconds the tenant's gateway block row is reused (a block recorded by this
            process is seen at once; one recorded by another process within ``block_ttl_s``, which only
            lets that process's 401/404 repeat here a few times).
        saves: writes the contacts' claims and outcomes, grouping the saves of concurrent handlings into
            one transaction (:class:`~billing.worker.groupcommit.GroupCommitter`; default: one over
            ``store``).
    """

    def __init__(
        self,
        *,
        store: EventStore,
        tenants: TenantCache,
        ledger: LedgerPort,
        renderer: RendererPort,
        health: HealthPort,
        gateways: GatewayFactory,
        clock: Clock,
        lease_s: float,
        gateway_timeout_s: float,
        recipient: RecipientPort,
        rng: random.Random | None = None,
        block_ttl_s: float = 5.0,
        saves: GroupCommitter | None = None,
    ) -> None:
        self.store = store
        self.saves = saves or GroupCommitter.for_store(store)
        self.recipient = recipient
        self.tenants = tenants
        self.ledger = ledger
        self.renderer = renderer
        self.health = health
        self.gateways = gateways
        self.clock = clock
        self.lease = timedelta(seconds=lease_s)
        self.gateway_timeout_s = gateway_timeout_s
        self.rng = rng or random.Random()  # jitter, not security
        self.rate = float(getattr(clock, "scale", 1.0)) or 1.0
        """Clock seconds per real second (a ``BILLING_CLOCK`` runs faster; tests and demos only)."""
        self._running: set[asyncio.Task[Any]] = set()
        self._reads: Batcher[tuple[SendJob, bool], _Read] = Batcher(self._read_many)
        self._pre_claims: Batcher[_PreClaim, _Step | None] = Batcher(self._pre_claim_many)
        self.block_ttl_s = block_ttl_s
        self._blocks: dict[UUID, tuple[float, int | None]] = {}

    # --- the delivery ---------------------------------------------------------------------------------

    async def __call__(self, delivery: Delivery) -> None:
        """Handle and settle one delivery: ``reject`` for poison, ``requeue`` on an unexpected error,
        ``ack`` otherwise (after every state change is saved). Never raises for the job's own problems;
        a cancellation of this call does not stop the handling (module docstring)."""
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
            work = asyncio.ensure_future(self._handle_logged(job))
            self._running.add(work)
            work.add_done_callback(self._running.discard)
            try:
                result = await asyncio.shield(work)
            except asyncio.CancelledError:
                log.warning("delivery_cancelled_handling_continues")
                raise
            except Exception:
                log.exception("job_failed_requeued", delivery_count=delivery.delivery_count)
                try:
                    await delivery.requeue()
                except Exception:  # the channel is gone: the broker redelivers it anyway
                    log.warning("requeue_failed", exc_info=True)
                return
            if result.outcome is Handled.POISON:
                await delivery.reject()
            else:
                await delivery.ack()

    async def _handle_logged(self, job: SendJob) -> Result:
        result = await self.handle(job)
        _log_result(result, job)
        metrics.record_job(result)
        return result

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` real seconds for handlings whose delivery was cancelled; returns how
        many were still running then."""
        if not self._running:
            return 0
        _, pending = await asyncio.wait(set(self._running), timeout=timeout_s)
        return len(pending)

    # --- facts → decision → execution -----------------------------------------------------------------

    async def handle(self, job: SendJob) -> Result:
        """Do everything one job asks and return what happened (the delivery is not settled here).

        Raises:
            Exception: an unexpected (transient) failure, e.g. the database is unreachable.
        """
        # the job names the contact's queue and tenant: the three are read together, in one query with
        # the reads of the other handlings that reached this step (the tenant only when not cached)
        held, tenant = self.tenants.fresh(job.tenant_id)
        contact, queue, read_tenant = await self._reads((job, not held))
        if not held:
            self.tenants.keep(job.tenant_id, read_tenant)
            tenant = read_tenant
        if contact is not None and contact.tenant_id == job.tenant_id and not contact.status.is_terminal:
            if queue is None or queue.id != contact.queue_id:
                queue = await load(self.store, contact.queue_id, Queue)
        else:
            queue = tenant = None
        facts = JobFacts(
            job_tenant_id=job.tenant_id,
            contact=contact,
            queue=queue,
            policy=tenant.sending_policy if tenant is not None else None,
            policy_versions=(tenant.policy_version, tenant.calendar_version) if tenant is not None else None,
            now=self.clock.now(),
            lease=self.lease,
            pause_draw=self.rng.random(),
        )
        decision = decide(facts)
        while decision.action is Action.GATHER:
            assert tenant is not None and decision.need is not None
            step: _Step | None = None
            if decision.need is Need.RECIPIENT:  # and, when it comes next, the throttle: one hand-off
                step = await self._pre_claims((facts, tenant, True))
            elif decision.need is Need.THROTTLE:
                step = await self._pre_claims((facts, tenant, False))
            if step is None:
                facts = await self._gather(decision.need, facts, tenant)
                decision = decide(facts)
                continue
            facts, decision, throttled, ledger_id = step
            if not throttled:
                continue
            if decision.action is Action.CLAIM:
                assert contact is not None and queue is not None and ledger_id is not None
                await self._side_effects(decision, queue, tenant, facts.now)
                return await self._claim_and_send(decision, contact, tenant, ledger_id)
            break
        return await self._execute(decision, facts, tenant)

    def _read_many(self, asked: list[tuple[SendJob, bool]]) -> list[_Read]:
        """In a thread, for the handlings that reached the read together: each job's contact, queue and
        (when asked) tenant, all in one query; each None when missing or of another kind. Each handling
        gets aggregate objects of its own (:func:`~billing.worker.persistence.read_each`), so two
        deliveries of one contact in a group still race on its version, as with separate reads."""
        wanted = [
            (job.contact_id, job.queue_id, job.tenant_id) if with_tenant else (job.contact_id, job.queue_id)
            for job, with_tenant in asked
        ]
        answers: list[_Read] = []
        for (job, with_tenant), found in zip(asked, read_each(self.store, wanted), strict=True):
            contact, queue = found.get(job.contact_id), found.get(job.queue_id)
            tenant = found.get(job.tenant_id) if with_tenant else None
            answers.append(
                (
                    contact if isinstance(contact, Contact) else None,
                    queue if isinstance(queue, Queue) else None,
                    tenant if isinstance(tenant, Tenant) else None,
                )
            )
        return answers

    def _pre_claim_many(self, asked: list[_PreClaim]) -> list[_Step | Exception | None]:
        """In a thread, for the handlings that reached the step together (one hand-off for all): the
        recipients' facts when no gateway lookup is needed
        (:meth:`~billing.worker.recipient.Recipient.gather_known_many`), the decision on them and, for
        those that ask for the throttle next, the throttle step — all tenants' in one ledger transaction
        (:meth:`_decide_many_under_lock`). Per request: the step, None (the recipient needs a lookup
        call: the caller gathers on the event loop), or the exception its reads raised."""
        answers: list[_Step | Exception | None] = [None] * len(asked)
        throttle: list[int] = []
        gathering = [i for i, (_, _, with_recipient) in enumerate(asked) if with_recipient]
        facts_of = [facts for facts, _, _ in asked]
        if gathering:
            known = self.recipient.gather_known_many(
                [
                    (_contact_of(asked[i][0]), asked[i][1].sending_policy.calendar, asked[i][0].now)
                    for i in gathering
                ]
            )
            for i, recipient in zip(gathering, known, strict=True):
                if recipient is None or isinstance(recipient, Exception):
                    answers[i] = recipient
                    continue
                facts = replace(asked[i][0], recipient=recipient)
                decision = decide(facts)
                if decision.action is Action.GATHER and decision.need is Need.THROTTLE:
                    facts_of[i] = facts
                    throttle.append(i)
                else:
                    answers[i] = (facts, decision, False, None)
        throttle += [i for i, (_, _, with_recipient) in enumerate(asked) if not with_recipient]
        if throttle:
            try:
                steps = self._decide_many_under_lock([(facts_of[i], asked[i][1]) for i in throttle])
            except Exception as exc:  # rolled back: nothing recorded for any of them
                for i in throttle:
                    answers[i] = exc
            else:
                for i, step in zip(throttle, steps, strict=True):
                    answers[i] = step
        return answers

    async def _gather(self, need: Need, facts: JobFacts, tenant: Tenant) -> JobFacts:
        if need is Need.RECIPIENT:
            assert facts.contact is not None
            client = self.gateways(tenant.gateway)
            # only reached once the grouped step found no known account (the Conversation was read there)
            recipient: RecipientFacts = await self.recipient.gather_looked_up(
                facts.contact, client, tenant.sending_policy.calendar, facts.now
            )
            return replace(facts, recipient=recipient)
        if need is Need.BLOCK:
            cached = self._blocks.get(tenant.id)
            if cached is not None and time.monotonic() - cached[0] < self.block_ttl_s:
                blocked = cached[1]
            else:
                blocked = await asyncio.to_thread(self.ledger.blocked_generation, tenant.id)
                if self.block_ttl_s > 0:
                    self._blocks[tenant.id] = (time.monotonic(), blocked)
            return replace(facts, block=GatewayBlock(tenant.gateway_generation, blocked))
        verdict, code = await self.health.check(
            tenant.id,
            tenant.gateway_generation,
            transport=self.gateways.transport,
            gateway=tenant.gateway,
            timeout_s=self.gateway_timeout_s,
            now=facts.now,
        )
        down_until = None
        if verdict is GatewayVerdict.DOWN:
            down_until = self.health.trip(tenant.id, tenant.gateway_generation, now=facts.now)
        return replace(facts, health=GatewayState(verdict, code, down_until))

    def _decide_many_under_lock(self, asked: list[tuple[JobFacts, Tenant]]) -> list[_Step]:
        """The throttle step of several handlings, in ONE ledger transaction holding each of their
        tenants' locks: the clock is read again there (the wait for the locks must not make the planned
        arrivals stale), each tenant's state read once, and the decisions taken in order — each sees the
        grants recorded before it (:meth:`~billing.domain.sending.ThrottleState.granted`), exactly as if
        they had come one by one — with a CLAIM's grant recorded at its planned arrival."""
        with self.ledger.locked_many({tenant.id for _, tenant in asked}) as sessions:
            now = self.clock.now()
            states: dict[UUID, tuple[ThrottleState, date]] = {}
            steps: list[_Step] = []
            for facts, tenant in asked:
                policy = tenant.sending_policy
                session = sessions[tenant.id]
                if tenant.id not in states:
                    near = now + timedelta(seconds=policy.pause_max_s)
                    state = session.state(near=near, calendar=policy.calendar)
                    states[tenant.id] = (state, policy.calendar.local_date(near))
                state, day = states[tenant.id]
                facts = replace(facts, now=now, throttle=state)
                decision = decide(facts)
                if decision.action is not Action.CLAIM:
                    steps.append((facts, decision, True, None))
                    continue
                assert decision.arrival is not None and facts.contact is not None
                ledger_id = session.record(arrival=decision.arrival, contact_id=facts.contact.id)
                that_day = policy.calendar.local_date(decision.arrival) == day
                states[tenant.id] = (state.granted(decision.arrival, that_day=that_day), day)
                steps.append((facts, decision, True, ledger_id))
            return steps

    async def _side_effects(self, decision: Decision, queue: Queue, tenant: Tenant, now: datetime) -> None:
        """The decision's effects on the tenant's gateway block and the queue (class :class:`Decision`)."""
        if decision.unblock_below is not None:
            self._blocks.pop(tenant.id, None)
            await asyncio.to_thread(self.ledger.unblock, tenant.id, below_generation=decision.unblock_below)
        if decision.resume:
            misconfigured = PauseReason.GATEWAY_MISCONFIGURED.value

            def still_due(q: Queue) -> bool:
                if q.resume_at is not None:
                    return q.resume_at <= now
                return q.paused_reason == misconfigured and decision.unblock_below is not None

            await resume_queue(self.store, queue.id, loaded=queue, at=now, when=still_due)
        if decision.block_gateway is not None:
            generation, code = decision.block_gateway
            self._blocks.pop(tenant.id, None)
            await asyncio.to_thread(
                self.ledger.block_gateway, tenant_id=tenant.id, generation=generation, code=code, at=now
            )
        if decision.pause is not None:
            await pause_queue(
                self.store,
                queue.id,
                reason=decision.pause.reason,
                resume_at=decision.pause.resume_at,
                at=now,
            )

    async def _execute(self, decision: Decision, facts: JobFacts, tenant: Tenant | None) -> Result:
        contact, now = facts.contact, facts.now
        if decision.action is Action.REJECT:
            return Result(Handled.POISON, reason=decision.reason)
        if decision.action is Action.ACK:
            return Result(decision.handled, **decision.fields)
        assert contact is not None and facts.queue is not None
        if decision.action is Action.CANCEL:
            try:
                contact.cancel(reason=decision.reason or "queue_cancelled", at=now)
                await self.saves.save(contact)
            except IntegrityError:
                return Result(Handled.CONTENDED, wanted=Handled.CANCELLED.value)
            return Result(Handled.CANCELLED)
        if decision.action is Action.SKIP:
            assert tenant is not None
            await self._side_effects(decision, facts.queue, tenant, now)
            try:
                contact.skip(
                    code=decision.reason or "skipped",
                    message=_SKIP_MESSAGES.get(decision.reason or "", "skipped"),
                    at=now,
                )
                await self.saves.save(contact)
            except (Conflict, IntegrityError):
                return Result(Handled.CONTENDED, wanted=Handled.SKIPPED.value)
            return Result(Handled.SKIPPED, code=decision.reason)
        assert decision.action is Action.DEFER and tenant is not None
        await self._side_effects(decision, facts.queue, tenant, now)
        assert decision.not_before is not None and decision.reason is not None
        try:
            contact.defer(reason=decision.reason, not_before=decision.not_before, at=now)
            await self.saves.save(contact)
        except (Conflict, IntegrityError):
            return Result(Handled.CONTENDED, wanted=decision.handled.value)
        return Result(decision.handled, not_before=decision.not_before.isoformat(), **decision.fields)

    # --- after the claim ------------------------------------------------------------------------------

    async def _claim_and_send(
        self, decision: Decision, contact: Contact, tenant: Tenant, ledger_id: int
    ) -> Result:
        """Save the claim, render, call the gateway, record the outcome. The grant is given back when
        nothing reached the gateway."""
        now = self.clock.now()
        try:
            attempt = contact.dispatch(at=now, lease=self.lease, allowed_by=decision.allowed_by)
        except Conflict:  # the contact as read is no longer claimable: nothing was saved
            await asyncio.to_thread(self.ledger.release, ledger_id)
            return Result(Handled.CLAIMED_ELSEWHERE)
        try:
            await self.saves.save(contact)
        except IntegrityError:
            # another worker's claim — or this one's own: a grouped save whose COMMIT answer was lost is
            # saved again alone, and then conflicts with itself (same attempt, same lease end)
            claimed = await self._own_claim(contact.id, attempt=contact.attempts, at=now)
            if claimed is None:
                await asyncio.to_thread(self.ledger.release, ledger_id)
                return Result(Handled.CLAIMED_ELSEWHERE)
            log.warning("claim_conflicted_with_its_own_commit")
            contact, attempt = claimed, claimed.attempts
        except Exception:  # transient; the claim may still have committed (the connection died after)
            claimed = await self._own_claim(contact.id, attempt=contact.attempts, at=now)
            if claimed is None:  # nothing reached the gateway, so the grant must not count
                await asyncio.to_thread(self.ledger.release, ledger_id)
                raise
            log.warning("claim_save_uncertain_but_committed", exc_info=True)
            contact, attempt = claimed, claimed.attempts
        policy = tenant.sending_policy
        base: dict[str, Any] = {"attempt": attempt, "phone": mask_phone(contact.phone or "")}
        try:
            if self.renderer.ready(contact):  # the template is held: no I/O, no thread hand-off
                rendered = self.renderer.render(contact, now=now, tz=policy.calendar.tz)
            else:
                rendered = await asyncio.to_thread(
                    self.renderer.render, contact, now=now, tz=policy.calendar.tz
                )
        except RenderError as exc:
            await asyncio.to_thread(self.ledger.release, ledger_id)  # nothing reached the gateway
            settlement = settle_render_error(
                exc.code,
                exc.message,
                retryable=exc.retryable,
                attempt=attempt,
                policy=policy,
                retry_draw=self.rng.random(),
                now=now,
            )
            return await self._record(contact, settlement, None, now, base)
        except Exception:
            # the template read failed (database gone): nothing reached the gateway, so the claim and its
            # grant are given back at once — else the contact would wait for its lease to end
            await self._release_claim(contact, ledger_id, base)
            raise
        assert contact.gateway_number is not None
        typing = decision.typing_ms
        if not call_fits_lease(
            contact.lease_until, now=self.clock.now(), typing=typing, timeout_s=self.gateway_timeout_s
        ):
            await asyncio.to_thread(self.ledger.release, ledger_id)  # nothing reached the gateway
            return await self._give_back(contact, base)
        real_delay = None if typing is None else round(typing / self.rate)
        client = self.gateways(tenant.gateway)
        number = decision.jid or contact.gateway_number  # the account the lookup found, when it did
        with metrics.GATEWAY_LATENCY.time():
            sent = await client.send_text(number, rendered.text, delay_ms=real_delay)
        done = self.clock.now()
        base.update(code=sent.code, http_status=sent.http_status)
        settlement = self._settle(sent, attempt, tenant, policy, done)
        if settlement.healthy:
            self.health.record_success(tenant.id, tenant.gateway_generation, at=done)
        if settlement.block_gateway is not None:
            self._blocks.pop(tenant.id, None)
            await asyncio.to_thread(
                self.ledger.block_gateway,
                tenant_id=tenant.id,
                generation=tenant.gateway_generation,
                code=settlement.block_gateway,
                at=done,
            )
        if settlement.pause is not None:
            await pause_queue(
                self.store,
                contact.queue_id,
                reason=settlement.pause.reason,
                resume_at=settlement.pause.resume_at,
                at=done,
            )
        if sent.kind is OutcomeKind.SENT:
            base["gateway_message_id"] = sent.message_id
        elif sent.kind in (OutcomeKind.RETRYABLE, OutcomeKind.PERMANENT):
            base["outcome_unknown"] = sent.outcome_unknown
        if decision.jid is not None and sent.remote_jid not in (None, decision.jid):
            base["jid_mismatch"] = True  # the Sent event records both (history shows it)
        return await self._record(contact, settlement, (sent, rendered, decision.jid), done, base)

    async def _own_claim(self, contact_id: UUID, *, attempt: int, at: datetime) -> Contact | None:
        """After a claim save that failed without an answer: the contact as stored when the claim did
        commit (attempt ``attempt`` dispatched at ``at`` with this worker's lease), else None. Tries a few
        reads over :data:`CLAIM_CHECK_PAUSES_S` (the database may still be coming back); a read that keeps
        failing counts as not claimed (the job is requeued, and a claim that did commit then waits for its
        lease to end)."""
        for pause in CLAIM_CHECK_PAUSES_S:
            await asyncio.sleep(pause)
            try:
                fresh = await load(self.store, contact_id, Contact)
            except Exception:
                log.debug("claim_check_read_failed", exc_info=True)
                continue
            if (
                fresh is not None
                and fresh.status is ContactStatus.DISPATCHED
                and fresh.attempts == attempt
                and fresh.lease_until == at + self.lease
            ):
                return fresh
            return None
        return None

    def _settle(
        self, sent: SendOutcome, attempt: int, tenant: Tenant, policy: SendingPolicy, done: datetime
    ) -> Settlement:
        tripped_until = None
        if sent.connection_problem and self.health.record_problem(tenant.id, tenant.gateway_generation):
            tripped_until = self.health.trip(tenant.id, tenant.gateway_generation, now=done)
        return settle(
            sent,
            attempt=attempt,
            policy=policy,
            retry_draw=self.rng.random(),
            now=done,
            tripped_until=tripped_until,
        )

    async def _give_back(
        self, contact: Contact, base: dict[str, Any], *, reason: str = Handled.LEASE_TOO_SHORT.value
    ) -> Result:
        """Release a claim that is too late to use (``Deferred`` until now, not an attempt). If another
        worker claimed the contact meanwhile, that worker owns it and nothing is written."""
        now = self.clock.now()
        try:
            contact.defer(reason=reason, not_before=now, at=now)
            await self.saves.save(contact)
        except (Conflict, IntegrityError):
            return Result(Handled.CLAIMED_ELSEWHERE, **base)
        return Result(Handled.LEASE_TOO_SHORT, **base)

    async def _release_claim(self, contact: Contact, ledger_id: int, base: dict[str, Any]) -> None:
        """After a failure between the claim and the gateway call: give the grant and the claim back
        (``Deferred`` ``claim_given_back`` until now), best effort — what cannot be written now is freed
        by the lease's end, as before."""
        try:
            await asyncio.to_thread(self.ledger.release, ledger_id)
        except Exception:
            log.warning("grant_release_failed", exc_info=True)
        try:
            await self._give_back(contact, base, reason=CLAIM_GIVEN_BACK)
        except Exception:
            log.warning("claim_give_back_failed", exc_info=True)

    async def _record(
        self,
        contact: Contact,
        settlement: Settlement,
        sent: tuple[SendOutcome, Any, str | None] | None,
        at: datetime,
        base: dict[str, Any],
    ) -> Result:
        """Apply the settlement's record to the contact and save it. Transient errors are retried until
        shortly before the lease ends; a version conflict (someone else wrote the contact meanwhile, e.g.
        a cancellation during the call) reloads the contact and applies the record again, so what reached
        WhatsApp is recorded; only when the domain then refuses it is the result reported as not recorded."""
        record = _command(settlement.record, sent, at)
        result = Result(settlement.handled, retry_at=_iso(settlement.record.retry_at), **base)
        if settlement.record.kind != "failed":
            result.fields.pop("retry_at")
        deadline = time.monotonic() + self._real_seconds_left(contact)
        conflicts = 0
        pause = 0.2
        while True:
            try:
                record(contact)
                await self.saves.save(contact)
            except Conflict:
                return _unrecorded(result)
            except IntegrityError:
                conflicts += 1
                fresh = await load(self.store, contact.id, Contact)
                if fresh is None or conflicts >= SAVE_ATTEMPTS:
                    return _unrecorded(result)
                contact = fresh
            except Exception:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("outcome_save_retry", exc_info=True, retry_in_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                fresh = await load(self.store, contact.id, Contact)
                if fresh is None:
                    raise
                contact = fresh
            else:
                return result

    def _real_seconds_left(self, contact: Contact) -> float:
        """Real seconds until the claim's lease ends, less :data:`SAVE_SAFETY_S` (at least 1 s)."""
        if contact.lease_until is None:
            return 1.0
        left = (contact.lease_until - self.clock.now()).total_seconds() / self.rate
        return max(1.0, left - SAVE_SAFETY_S)


def _contact_of(facts: JobFacts) -> Contact:
    assert facts.contact is not None
    return facts.contact


def _command(
    record: Record, sent: tuple[SendOutcome, Any, str | None] | None, at: datetime
) -> Callable[[Contact], None]:
    """The Contact command of a :class:`~billing.domain.sending.Record`."""
    if record.kind == "sent":
        assert sent is not None
        outcome, rendered, jid_asked = sent
        assert outcome.message_id is not None

        def sent_command(c: Contact) -> None:
            c.record_sent(
                gateway_message_id=outcome.message_id or "",
                remote_jid=outcome.remote_jid,
                text=rendered.text,
                at=at,
                template_id=rendered.template_id,
                template_version=rendered.template_version,
                variation=rendered.variation,
                jid_asked=jid_asked,
            )

        return sent_command
    if record.kind == "skipped":
        return lambda c: c.record_skipped(code=record.code, message=record.message, at=at)
    return lambda c: c.record_failure(
        code=record.code, message=record.message, retryable=record.retryable, retry_at=record.retry_at, at=at
    )


_SKIP_MESSAGES = {
    "opted_out": "the phone opted out of reminders (a reply asked to stop)",
    "not_on_whatsapp": "the gateway's lookup found no WhatsApp account for this phone",
}


def _unrecorded(result: Result) -> Result:
    result.fields["wanted"] = result.outcome.value
    result.outcome = Handled.UNRECORDED
    return result


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


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

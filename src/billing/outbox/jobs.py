"""Integration messages on the broker: their own versioned schema, separate from stored domain events.

A job carries ids, never personal data (STYLE.md 4): the worker reads the contact from the event store.
Schema evolution: new fields get defaults; nothing is removed or retyped; ``v`` names the version.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from billing.domain.types import TemplateType
from billing.outbox.broker import OutgoingMessage, Topology


class SendJob(msgspec.Struct, frozen=True, kw_only=True):
    """ "Try to send this contact now." Routing key: the tenant's shard of the job queues of
    ``template_type`` (``Topology.queue_for``).

    Attributes:
        v: schema version (1).
        contact_id / tenant_id / queue_id: aggregate ids.
        template_type: overdue | upcoming | notification.
        reason: why it was published: ``added`` (relay), ``due`` (scheduler: retry or resume), ``lease``
            (scheduler: a claim expired).
    """

    contact_id: UUID
    tenant_id: UUID
    queue_id: UUID
    template_type: TemplateType
    reason: str = "added"
    v: int = 1


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SendJob)


def encode_job(job: SendJob) -> bytes:
    """JSON bytes of ``job``."""
    return _encoder.encode(job)


def decode_job(body: bytes) -> SendJob:
    """Parse a job. Raises ``msgspec.ValidationError`` / ``msgspec.DecodeError`` on a malformed body."""
    return _decoder.decode(body)


def job_message_id(job: SendJob, nonce: str) -> str:
    """The AMQP message id: contact id plus a nonce (the relay uses the notification id)."""
    return f"{job.contact_id}:{nonce}"


def job_message(job: SendJob, nonce: str, topology: Topology) -> OutgoingMessage:
    """The broker message of ``job``, message id ``<contact_id>:<nonce>``, headers ``tenant_id`` and
    ``reason`` (the relay and the scheduler both publish through this). A fresh job (reason ``added``)
    goes to its batch's shard of its type's job queues (``Topology.queue_for(kind, queue_id)``); a
    republished one (``due``, ``lease``) to the type's retry queue, ahead of any backlog."""
    kind = job.template_type.value
    fresh = job.reason == "added"
    return OutgoingMessage(
        routing_key=topology.queue_for(kind, job.queue_id) if fresh else topology.retry_queue(kind),
        body=encode_job(job),
        message_id=job_message_id(job, nonce),
        headers={"tenant_id": str(job.tenant_id), "reason": job.reason},
    )

"""Integration messages on the broker: their own versioned schema, separate from stored domain events.

A job carries ids, never personal data (STYLE.md 4): the worker reads the contact from the event store.
Schema evolution: new fields get defaults; nothing is removed or retyped; ``v`` names the version.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from billing.domain.types import TemplateType


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

"""The read side: queries on the projections' views (sql/001_views.sql). Every query is tenant-scoped, so
another tenant's id reads as absent (promise 7). Synchronous (psycopg pool with dict rows), but for the
status an ERP polls (:class:`StatusReads`, async)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from uuid import UUID

from billing.db import AsyncReadPool, ViewsPool, read_retrying, read_retrying_async
from billing.domain.types import ContactStatus, QueueStatus

MAX_PAGE = 500
QUEUE_STATUS_SQL = "SELECT * FROM queue_status WHERE queue_id = %s AND tenant_id = %s"


def queue_status_of(row: dict[str, Any]) -> QueueStatus:
    """Derive the public status of a queue row: cancelled > completed > paused > running > queued."""
    if row["cancelled_at"] is not None:
        return QueueStatus.CANCELLED
    if row["completed_at"] is not None:
        return QueueStatus.COMPLETED
    if row["paused_reason"] is not None:
        return QueueStatus.PAUSED
    if row["started_at"] is not None:
        return QueueStatus.RUNNING
    return QueueStatus.QUEUED


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def encode_cursor(value: int) -> str:
    """Opaque page cursor of a position."""
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Position of an opaque cursor. Raises ValueError when it is not one of ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    return int(base64.urlsafe_b64decode(padded.encode()).decode())


class Queries:
    """Tenant-scoped reads of the views."""

    def __init__(self, pool: ViewsPool) -> None:
        self.pool = pool

    @read_retrying
    def active_templates(self, tenant_id: UUID, template_type: str) -> list[dict[str, Any]]:
        """Active templates of a type, oldest first: ``[{template_id, version, variations}]``."""
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT template_id, version, variations FROM templates "
                "WHERE tenant_id = %s AND template_type = %s AND active ORDER BY created_at, template_id",
                (tenant_id, template_type),
            ).fetchall()

    @read_retrying
    def sending_template(
        self, tenant_id: UUID, template_type: str, template_id: UUID | None = None
    ) -> dict[str, Any] | None:
        """The template a send uses: the named one (any state, the caller checks ``active`` and type), or
        the type's default. ``{template_id, version, variations, active, template_type}`` or None."""
        with self.pool.connection() as conn:
            if template_id is not None:
                return conn.execute(
                    "SELECT template_id, version, variations, active, template_type FROM templates "
                    "WHERE tenant_id = %s AND template_id = %s",
                    (tenant_id, template_id),
                ).fetchone()
            return conn.execute(
                "SELECT t.template_id, t.version, t.variations, t.active, t.template_type "
                "FROM default_templates d JOIN templates t ON t.template_id = d.template_id "
                "WHERE d.tenant_id = %s AND d.template_type = %s",
                (tenant_id, template_type),
            ).fetchone()

    @read_retrying
    def default_template_ids(self, tenant_id: UUID) -> dict[str, str]:
        """``{template_type: template_id}`` of the tenant's default templates."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT template_type, template_id FROM default_templates WHERE tenant_id = %s", (tenant_id,)
            ).fetchall()
        return {r["template_type"]: str(r["template_id"]) for r in rows}

    @staticmethod
    def status_document(row: dict[str, Any]) -> dict[str, Any]:
        """Shape a queue_status row as the public document."""
        total = row["total"]
        done = row["sent"] + row["failed"] + row["skipped"] + row["rejected"] + row["cancelled"]
        status = queue_status_of(row)
        ended = status in (QueueStatus.CANCELLED, QueueStatus.COMPLETED)  # a pause then never resumes
        return {
            "queue_id": str(row["queue_id"]),
            "campaign_id": str(row["campaign_id"]),
            "template_type": row["template_type"],
            "status": status.value,
            "contacts": {
                "total": total,
                "pending": row["pending"],
                "sent": row["sent"],
                "failed": row["failed"],
                "skipped": row["skipped"],
                "rejected": row["rejected"],
                "cancelled": row["cancelled"],
                "delivered": row["delivered"],
                "read": row["read"],
                "replied": row["replied"],
            },
            "progress": round(100.0 * done / total, 2) if total else 100.0,
            "paused_reason": None if ended else row["paused_reason"],
            "resume_at": None if ended else _iso(row["resume_at"]),
            "created_at": _iso(row["created_at"]),
            "started_at": _iso(row["started_at"]),
            "completed_at": _iso(row["completed_at"]),
            "cancelled_at": _iso(row["cancelled_at"]),
            "updated_at": _iso(row["updated_at"]),
        }

    @read_retrying
    def campaign_exists(self, tenant_id: UUID, campaign_id: UUID) -> bool:
        """True when the campaign is the tenant's and projected."""
        with self.pool.connection() as conn:
            return (
                conn.execute(
                    "SELECT 1 FROM campaigns WHERE campaign_id = %s AND tenant_id = %s",
                    (campaign_id, tenant_id),
                ).fetchone()
                is not None
            )

    @read_retrying
    def campaign_contacts(
        self,
        tenant_id: UUID,
        campaign_id: UUID,
        *,
        status: ContactStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any] | None:
        """A page of a campaign's contacts in request order: ``{items, next_cursor}``, or None when the
        campaign is unknown to this tenant. Raises ValueError for a bad cursor."""
        if not self.campaign_exists(tenant_id, campaign_id):
            return None
        after = decode_cursor(cursor) if cursor else -1
        limit = max(1, min(limit, MAX_PAGE))
        params: list[Any] = [campaign_id, tenant_id, after]
        sql = "SELECT * FROM campaign_contacts WHERE campaign_id = %s AND tenant_id = %s AND idx > %s"
        if status is not None:
            sql += " AND status = %s"
            params.append(status.value)
        sql += " ORDER BY idx LIMIT %s"
        params.append(limit + 1)
        with self.pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [self.contact_document(r) for r in rows],
            "next_cursor": encode_cursor(rows[-1]["idx"]) if more and rows else None,
        }

    @staticmethod
    def contact_document(row: dict[str, Any]) -> dict[str, Any]:
        """Shape a campaign_contacts row as the public item."""
        error = None
        pending = row["status"] == ContactStatus.PENDING.value
        if row["error_code"] is not None and row["status"] != ContactStatus.SENT.value:
            error = {"code": row["error_code"], "message": row["error_message"]}
        return {
            "contact_id": str(row["contact_id"]),
            "index": row["idx"],
            "nome": row["nome"],
            "telefone": row["telefone"],
            "phone": row["phone"],
            "status": row["status"],
            "attempts": row["attempts"],
            "message_text": row["message_text"],
            "gateway_message_id": row["gateway_message_id"],
            "sent_at": _iso(row["sent_at"]),
            "delivered_at": _iso(row["delivered_at"]),
            "read_at": _iso(row["read_at"]),
            "replied_at": _iso(row["replied_at"]),
            "error": error,
            # a pending contact's next attempt (retry backoff or deferral) and why it waits; else null
            "next_attempt_at": _iso(row["not_before"]) if pending else None,
            "deferred_reason": row.get("deferred_reason") if pending else None,
        }

    @read_retrying
    def list_campaigns(self, tenant_id: UUID, *, limit: int = 50) -> list[dict[str, Any]]:
        """The tenant's latest campaigns with their queue status."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT c.campaign_id, c.external_id, q.* FROM campaigns c "
                "JOIN queue_status q ON q.queue_id = c.queue_id WHERE c.tenant_id = %s "
                "ORDER BY c.created_at DESC LIMIT %s",
                (tenant_id, max(1, min(limit, MAX_PAGE))),
            ).fetchall()
        return [
            {"campaign_id": str(r["campaign_id"]), "external_id": r["external_id"], **self.status_document(r)}
            for r in rows
        ]

    @read_retrying
    def list_api_keys(self, tenant_id: UUID) -> list[dict[str, Any]]:
        """The tenant's keys (never their text): ``[{key_id, name, prefix, created_at, revoked_at}]``."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT key_id, name, prefix, created_at, revoked_at FROM api_keys WHERE tenant_id = %s "
                "ORDER BY created_at",
                (tenant_id,),
            ).fetchall()
        return [
            {
                "key_id": str(r["key_id"]),
                "name": r["name"],
                "prefix": r["prefix"],
                "created_at": _iso(r["created_at"]),
                "revoked_at": _iso(r["revoked_at"]),
            }
            for r in rows
        ]

    @read_retrying
    def list_templates(self, tenant_id: UUID) -> list[dict[str, Any]]:
        """The tenant's templates, active and inactive; ``default`` marks each type's default."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT t.*, (d.template_id IS NOT NULL) AS is_default FROM templates t "
                "LEFT JOIN default_templates d "
                "ON d.template_id = t.template_id AND d.tenant_id = t.tenant_id "
                "WHERE t.tenant_id = %s ORDER BY t.template_type, t.created_at",
                (tenant_id,),
            ).fetchall()
        return [self.template_document(r) for r in rows]

    @staticmethod
    def template_document(row: dict[str, Any]) -> dict[str, Any]:
        """Shape a templates row."""
        return {
            "template_id": str(row["template_id"]),
            "name": row["name"],
            "template_type": row["template_type"],
            "description": row["description"],
            "variations": list(row["variations"]),
            "active": row["active"],
            "default": bool(row.get("is_default", False)),
            "version": row["version"],
            "updated_at": _iso(row["updated_at"]),
        }

    @read_retrying
    def stats(self, tenant_id: UUID) -> dict[str, Any]:
        """Per-status contact counts of the tenant, all queues together."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT status, count(*) AS n FROM campaign_contacts WHERE tenant_id = %s GROUP BY status",
                (tenant_id,),
            ).fetchall()
            queues = conn.execute(
                "SELECT count(*) AS n FROM queue_status WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()
        counts = {s.value: 0 for s in ContactStatus}
        counts.update({r["status"]: r["n"] for r in rows})
        return {"queues": queues["n"] if queues else 0, "contacts": counts}


class StatusReads:
    """The queue status ERPs poll, read on the event loop (an async pool in autocommit: one round trip,
    no thread hand-off per poll; ``bench/status.py``).

    Args:
        pool: :func:`billing.db.async_read_pool`, opened in the loop that calls :meth:`queue_status`.
    """

    def __init__(self, pool: AsyncReadPool) -> None:
        self.pool = pool

    @read_retrying_async
    async def queue_status(self, tenant_id: UUID, queue_id: UUID) -> dict[str, Any] | None:
        """The public status document of a queue (DESIGN.md "Queue status"), or None when the queue is not
        the tenant's or not projected yet. Raises psycopg.OperationalError when every retry failed."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(QUEUE_STATUS_SQL, (queue_id, tenant_id))
            row = await cursor.fetchone()
        return None if row is None else Queries.status_document(row)

"""Reads of the tenant dashboard over the projections' views (``sql/001_views.sql``,
``sql/005_dashboard.sql``): the overview (from ``outcome_counts``, never counting contacts), campaign
lists with filters, a campaign's contacts with search, history by phone, API key last use. Every query is
scoped to the tenant, so another tenant's id reads as absent. Synchronous (psycopg pool, dict rows)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from billing.db import ViewsPool
from billing.services.queries import MAX_PAGE, Queries

OUTCOMES = ("sent", "failed", "skipped", "rejected", "cancelled")
"""What happened to a contact, once: the overview's bars."""
ENGAGEMENT = ("delivered", "read", "replied")
"""What the debtor's phone reported after a send (delivery and read receipts, replies), once per
contact, counted at the receipt's instant."""
PERIODS = (1, 7, 30)
"""Overview periods in days (today, 7 days, 30 days), each ending today in the tenant's zone."""
_LIKE_ESCAPE = str.maketrans({"%": r"\%", "_": r"\_", "\\": "\\\\"})

_STATUS_SQL = {
    "cancelled": "q.cancelled_at IS NOT NULL",
    "completed": "q.cancelled_at IS NULL AND q.completed_at IS NOT NULL",
    "paused": "q.cancelled_at IS NULL AND q.completed_at IS NULL AND q.paused_reason IS NOT NULL",
    "running": "q.cancelled_at IS NULL AND q.completed_at IS NULL AND q.paused_reason IS NULL "
    "AND q.started_at IS NOT NULL",
    "queued": "q.cancelled_at IS NULL AND q.completed_at IS NULL AND q.paused_reason IS NULL "
    "AND q.started_at IS NULL",
}


class DashboardQueries:
    """Tenant-scoped reads for the dashboard pages."""

    def __init__(self, pool: ViewsPool) -> None:
        self.pool = pool

    def overview(self, tenant_id: UUID, *, days: int, now: datetime, tz: ZoneInfo) -> dict[str, Any]:
        """Counts of the last ``days`` local days (today included) per outcome and per day, the send rate
        (sent / (sent + failed): the gateway accepted it), the delivery rate (delivered / sent: the phone
        confirmed it), each None when its denominator is 0, and the open (not ended) queues.

        Returns ``{"totals": {outcome: n}, "handled": int (contacts with a final outcome), "per_day":
        [(date, {outcome: n})], "send_rate": float|None, "delivery_rate": float|None, "open_queues":
        [status documents], "gateway_block": {code, blocked_at}|None}``; outcomes are :data:`OUTCOMES`
        and :data:`ENGAGEMENT`.
        """
        today = now.astimezone(tz).date()
        first = today - timedelta(days=days - 1)
        start = datetime.combine(first, datetime.min.time(), tzinfo=tz)
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT (hour AT TIME ZONE %s)::date AS day, outcome, sum(n)::bigint AS n "
                "FROM outcome_counts WHERE tenant_id = %s AND hour >= %s GROUP BY 1, 2",
                (tz.key, tenant_id, start),
            ).fetchall()
            queues = conn.execute(
                "SELECT * FROM queue_status WHERE tenant_id = %s AND cancelled_at IS NULL "
                "AND completed_at IS NULL ORDER BY created_at DESC LIMIT 20",
                (tenant_id,),
            ).fetchall()
            block = conn.execute(
                "SELECT code, blocked_at FROM gateway_blocks WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()
        per_day: dict[date, dict[str, int]] = {
            first + timedelta(days=i): dict.fromkeys(OUTCOMES + ENGAGEMENT, 0) for i in range(days)
        }
        totals = dict.fromkeys(OUTCOMES + ENGAGEMENT, 0)
        for row in rows:
            if row["day"] in per_day and row["outcome"] in totals:
                per_day[row["day"]][row["outcome"]] += int(row["n"])
                totals[row["outcome"]] += int(row["n"])
        attempted = totals["sent"] + totals["failed"]
        return {
            "totals": totals,
            "handled": sum(totals[o] for o in OUTCOMES),
            "per_day": sorted(per_day.items()),
            "send_rate": totals["sent"] / attempted if attempted else None,
            "delivery_rate": totals["delivered"] / totals["sent"] if totals["sent"] else None,
            "open_queues": [Queries.status_document(q) for q in queues],
            "gateway_block": block,
        }

    def campaigns(
        self,
        tenant_id: UUID,
        *,
        template_type: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 25,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """A page of the tenant's campaigns, newest first, filtered by type, status (``queued``,
        ``running``, ``paused``, ``completed``, ``cancelled``) and creation instant."""
        sql = (
            "SELECT c.campaign_id, c.external_id, q.* FROM campaigns c "
            "JOIN queue_status q ON q.queue_id = c.queue_id WHERE c.tenant_id = %s"
        )
        params: list[Any] = [tenant_id]
        if template_type:
            sql += " AND c.template_type = %s"
            params.append(template_type)
        if status in _STATUS_SQL:
            sql += f" AND {_STATUS_SQL[status]}"
        if since is not None:
            sql += " AND c.created_at >= %s"
            params.append(since)
        sql += " ORDER BY c.created_at DESC LIMIT %s OFFSET %s"
        params += [max(1, min(limit, MAX_PAGE)), max(0, offset)]
        with self.pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [
            {
                "campaign_id": str(r["campaign_id"]),
                "external_id": r["external_id"],
                **Queries.status_document(r),
            }
            for r in rows
        ]

    def campaign(self, tenant_id: UUID, campaign_id: UUID) -> dict[str, Any] | None:
        """One campaign with its queue status document, or None (unknown or another tenant's)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT c.campaign_id, c.external_id, q.* FROM campaigns c "
                "JOIN queue_status q ON q.queue_id = c.queue_id "
                "WHERE c.campaign_id = %s AND c.tenant_id = %s",
                (campaign_id, tenant_id),
            ).fetchone()
        if row is None:
            return None
        return {
            "campaign_id": str(row["campaign_id"]),
            "external_id": row["external_id"],
            **Queries.status_document(row),
        }

    def contacts(
        self,
        tenant_id: UUID,
        campaign_id: UUID,
        *,
        status: str | None = None,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """A page of one campaign's contacts in request order, filtered by status and by a search text
        found in the name, the phone as sent or its E.164 form (a search with 4 or more digits also
        matches those digits in the E.164 form, whatever punctuation it was typed with)."""
        sql = "SELECT * FROM campaign_contacts WHERE campaign_id = %s AND tenant_id = %s"
        params: list[Any] = [campaign_id, tenant_id]
        if status:
            if status == "pending":
                sql += " AND status IN ('pending', 'dispatched')"
            else:
                sql += " AND status = %s"
                params.append(status)
        if search and search.strip():
            pattern = f"%{search.strip().translate(_LIKE_ESCAPE)}%"
            # a phone typed as people write it, "(41) 98765-1122", is found by its digits in the E.164 form
            digits = "".join(ch for ch in search if ch.isdigit())
            by_digits = f"%{digits}%" if len(digits) >= 4 else pattern
            sql += " AND (nome ILIKE %s OR telefone ILIKE %s OR phone ILIKE %s OR phone LIKE %s)"
            params += [pattern, pattern, pattern, by_digits]
        sql += " ORDER BY idx LIMIT %s OFFSET %s"
        params += [max(1, min(limit, 10_000)), max(0, offset)]
        with self.pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [Queries.contact_document(r) for r in rows]

    def history_by_phone(self, tenant_id: UUID, phone: str, limit: int = 200) -> list[dict[str, Any]]:
        """Every contact of the tenant to one E.164 phone, oldest first, with its campaign and type."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM campaign_contacts WHERE tenant_id = %s AND phone = %s "
                "ORDER BY created_at, idx LIMIT %s",
                (tenant_id, phone, limit),
            ).fetchall()
        return [self._history_item(r) for r in rows]

    def history_by_invoice(self, tenant_id: UUID, reference: str, limit: int = 200) -> list[dict[str, Any]]:
        """Every contact of the tenant about invoice ``reference`` (its ``invoice_ref``: its own
        ``external_id`` field, else its batch's, as the admin API's ``/history/invoice/{ref}``) or whose
        batch carried ``external_id`` = ``reference``; oldest first, at most ``limit``."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM campaign_contacts "
                "WHERE tenant_id = %s AND (invoice_ref = %s OR external_id = %s) "
                "ORDER BY created_at, idx LIMIT %s",
                (tenant_id, reference, reference, limit),
            ).fetchall()
        return [self._history_item(r) for r in rows]

    @staticmethod
    def _history_item(r: dict[str, Any]) -> dict[str, Any]:
        return {
            **Queries.contact_document(r),
            "campaign_id": str(r["campaign_id"]),
            "template_type": r["template_type"],
            "external_id": r["external_id"],
            "invoice": r["invoice_ref"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
        }

    def api_keys(self, tenant_id: UUID) -> list[dict[str, Any]]:
        """The tenant's keys with their last use (``api_key_usage``), oldest first."""
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT k.key_id, k.name, k.prefix, k.created_at, k.revoked_at, u.last_used FROM api_keys k "
                "LEFT JOIN api_key_usage u ON u.key_id = k.key_id WHERE k.tenant_id = %s "
                "ORDER BY k.created_at",
                (tenant_id,),
            ).fetchall()

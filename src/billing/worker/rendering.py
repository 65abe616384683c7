"""Render a contact's message at send time from the tenant's active templates (the ``templates`` view).

The contact's template is the one its batch was accepted with (``Contact.template_id``: the template the
send named, else the type's default at ingestion; contacts stored before that field fall back to the
type's current default). Its variations form the rotation — no other template is ever used; the contact
at position ``ordinal`` among its batch's accepted contacts gets variation ``choose_variation(ordinal, n)``
(:mod:`billing.domain.variables`), so consecutive messages differ and a redelivery renders the same text
(anti-ban rotation, ``docs/evolution-api.md``, "Sending politely"). Variables come from
``message_variables`` at ``now`` in the tenant's zone (DESIGN.md: days are counted at the moment of
sending).

The text is the template's current version (an edit that fixes a typo reaches the waiting messages), but
when that version needs a variable the contact lacks — the template was edited after the batch was
accepted — the version the contact was checked against at ingestion (``Contact.template_version``) is
rendered instead, read from the event store: an accepted reminder is never failed by a later edit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from billing.db import read_retrying
from billing.domain.contact import Contact
from billing.domain.template import MessageTemplate
from billing.domain.templating import Template, TemplateSyntaxError, parse_template
from billing.domain.variables import choose_variation, message_variables
from billing.eventstore import EventStore, get_at_version

__all__ = ["RenderError", "Rendered", "Renderer", "template_variations_at"]


def template_variations_at(store: EventStore, template_id: UUID, version: int) -> list[str] | None:
    """The variations' texts of template ``template_id`` at ``version`` (its aggregate version), from the
    event store; None when there is no such template or version (:class:`Renderer`'s ``variations_at``).

    Raises:
        Exception: the database is unreachable.
    """
    template = get_at_version(store, template_id, MessageTemplate, version)
    if template is None or template.version != version:
        return None
    return list(template.variations)


@dataclass(frozen=True)
class Rendered:
    """A message ready to send: its exact ``text`` and what produced it (template id, version, and the
    variation's index within that template)."""

    text: str
    template_id: UUID
    template_version: int
    variation: int


class RenderError(Exception):
    """No message can be rendered. ``code``: ``no_active_template`` (retryable: the admin may add one, or
    the view may lag a fresh tenant), ``template_error``, ``missing_variable`` or ``empty_text``
    (permanent). The message names variables, never their values."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class Renderer:
    """Reads the ``templates`` view and renders; parsed templates are cached by ``(template_id, version)``.

    **Invalidation rule:** the list of a tenant's active templates of a type is kept ``ttl_s`` real seconds
    (default 5): a template created, changed or deactivated is used by every worker within ``ttl_s`` plus
    the projection's lag; ``ttl_s = 0`` reads the view for every message.

    Args:
        pool: sync psycopg pool with dict rows.
        ttl_s: seconds a tenant's active template list is reused.
        variations_at: ``(template_id, version) -> the variations' texts at that version`` (None when the
            template has no such version); blocking (the event store). Without it a contact is always
            rendered with the current version.
    """

    def __init__(
        self,
        pool: ConnectionPool[Any],
        *,
        ttl_s: float = 5.0,
        variations_at: Callable[[UUID, int], list[str] | None] | None = None,
    ) -> None:
        self._pool = pool
        self.ttl_s = ttl_s
        self._variations_at = variations_at
        self._parsed: dict[tuple[UUID, int], list[Template]] = {}
        self._active: dict[
            tuple[UUID, str, UUID | None], tuple[float, list[tuple[UUID, int, int, Template]]]
        ] = {}

    def variations_of(
        self, tenant_id: UUID, template_type: str, template_id: UUID | None
    ) -> list[tuple[UUID, int, int, Template]]:
        """``[(template_id, version, index within the template, parsed)]`` of the template ``template_id``
        (when active) or, for None, of the type's default template; empty when there is none.

        Raises:
            RenderError: ``template_error`` when a stored variation does not parse (it was valid when saved,
                so this means a bug).
        """
        key = (tenant_id, template_type, template_id)
        cached = self._active.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        result = self._read_active(tenant_id, template_type, template_id)
        if self.ttl_s > 0 and result:  # an empty list (a fresh tenant, a lagging view) is read again
            self._active[key] = (now, result)
        return result

    def ready(self, contact: Contact) -> bool:
        """True when rendering ``contact`` reads nothing: its template's active variations are held and
        fresh (the handler then renders on the event loop instead of handing the call to a thread)."""
        key = (contact.tenant_id, contact.template_type, getattr(contact, "template_id", None))
        cached = self._active.get(key)
        if cached is None or time.monotonic() - cached[0] >= self.ttl_s:
            return False
        pinned, entries = getattr(contact, "template_version", None), cached[1]
        if pinned is None or not entries or self._variations_at is None:
            return True
        template_id, version = entries[0][0], entries[0][1]
        # accepted against another version, which the render may need to read: ready once it is held
        return pinned == version or (template_id, pinned) in self._parsed

    @read_retrying
    def _read_active(
        self, tenant_id: UUID, template_type: str, template_id: UUID | None
    ) -> list[tuple[UUID, int, int, Template]]:
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            if template_id is not None:
                row = cur.execute(
                    "SELECT template_id, version, variations FROM templates "
                    "WHERE tenant_id = %s AND template_id = %s AND active",
                    (tenant_id, template_id),
                ).fetchone()
            else:
                row = cur.execute(
                    "SELECT t.template_id, t.version, t.variations FROM default_templates d "
                    "JOIN templates t ON t.template_id = d.template_id "
                    "WHERE d.tenant_id = %s AND d.template_type = %s AND t.active",
                    (tenant_id, template_type),
                ).fetchone()
        if row is None:
            return []
        key = (row["template_id"], int(row["version"]))
        parsed = self._parsed.get(key) or self._parse(key, row["variations"])
        return [(key[0], key[1], i, template) for i, template in enumerate(parsed)]

    def _parse(self, key: tuple[UUID, int], texts: list[str]) -> list[Template]:
        """The variations ``texts`` of template version ``key`` parsed, and kept under ``key``.

        Raises:
            RenderError: ``template_error`` when one does not parse (it did when saved: a bug).
        """
        try:
            parsed = [parse_template(text) for text in texts]
        except TemplateSyntaxError as exc:
            raise RenderError("template_error", f"template {key[0]} does not parse: {exc}") from None
        self._parsed[key] = parsed
        return parsed

    def _accepted_version(self, contact: Contact, template_id: UUID, current: int) -> list[Template] | None:
        """The parsed variations of the version ``contact`` was accepted against, when it is not
        ``current`` and can be read (cached by ``(template_id, version)``); else None.

        Raises:
            RenderError: ``template_error`` when that version does not parse.
        """
        pinned = getattr(contact, "template_version", None)
        if pinned is None or pinned == current or self._variations_at is None:
            return None
        key = (template_id, pinned)
        parsed = self._parsed.get(key)
        if parsed is None:
            texts = self._variations_at(template_id, pinned)
            parsed = self._parse(key, texts) if texts else None
        return parsed

    def render(self, contact: Contact, *, now: datetime, tz: ZoneInfo) -> Rendered:
        """The message for ``contact`` at ``now`` (aware) in the tenant zone ``tz``.

        Raises:
            RenderError: see its ``code``s.
        """
        variations = self.variations_of(
            contact.tenant_id, contact.template_type, getattr(contact, "template_id", None)
        )
        if not variations:
            raise RenderError(
                "no_active_template",
                f"the contact's {contact.template_type} template is inactive or there is no default",
                retryable=True,
            )
        template_id, version, variation, template = variations[
            choose_variation(contact.ordinal, len(variations))
        ]
        variables = message_variables(
            contact.fields,
            amount=contact.amount,
            amount_total=contact.amount_total,
            due_date=contact.due_date,
            now=now,
            tz=tz,
        )
        missing = template.missing_variables(variables)
        accepted = self._accepted_version(contact, template_id, version) if missing else None
        if accepted is not None:  # edited after acceptance to need what the contact lacks
            index = choose_variation(contact.ordinal, len(accepted))
            if not accepted[index].missing_variables(variables):
                version, variation, template, missing = (
                    contact.template_version or version,
                    index,
                    accepted[index],
                    [],
                )
        if missing:
            raise RenderError("missing_variable", f"the template needs {', '.join(missing)}")
        text = template.render(variables)
        if not text.strip():
            raise RenderError("empty_text", "the rendered message is empty")
        return Rendered(text=text, template_id=template_id, template_version=version, variation=variation)

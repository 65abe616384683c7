"""The Template aggregate: a tenant's message template for one type, with ordered variations.

Every change is an event, so what a template said on any date can be answered from its history, and each
sent message records the template version and variation that produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.domain import Aggregate

from billing.domain.errors import InvalidValue
from billing.domain.templating import Template as ParsedTemplate
from billing.domain.templating import TemplateSyntaxError, parse_template
from billing.domain.types import TemplateType

MAX_VARIATIONS = 20
MAX_TEMPLATE_LENGTH = 4096  # WhatsApp text messages allow 4096 characters
MAX_NAME_LENGTH = 100
MAX_DESCRIPTION_LENGTH = 500


def check_texts(name: str, description: str) -> str:
    """Check a template's name (1 to 100 characters once stripped) and description (at most 500); neither
    may hold U+0000 (PostgreSQL text cannot). Returns the stripped name.

    Raises:
        InvalidValue: ``invalid_name`` / ``value_too_long`` / ``nul_character`` naming the field.
    """
    for field, value, limit in (
        ("name", name, MAX_NAME_LENGTH),
        ("description", description, MAX_DESCRIPTION_LENGTH),
    ):
        if "\x00" in value:
            raise InvalidValue(
                f"{field} must not contain NUL characters (U+0000)", code="nul_character", field=field
            )
        if len(value) > limit:
            raise InvalidValue(
                f"{field} is longer than {limit} characters",
                code="value_too_long",
                field=field,
                details={"max_length": limit},
            )
    if not name.strip():
        raise InvalidValue("name is required", code="invalid_name", field="name")
    return name.strip()


def parse_variations(variations: Sequence[str]) -> list[ParsedTemplate]:
    """Parse every variation, refusing the whole set at the first bad one.

    Raises:
        InvalidValue: ``invalid_variations`` (none, too many, too long, not text) naming ``variations[i]``.
        TemplateSyntaxError: ``template_error`` with line and column, ``field`` = ``variations[i]``.
    """
    if not variations:
        raise InvalidValue(
            "variations must hold at least one text", code="invalid_variations", field="variations"
        )
    if len(variations) > MAX_VARIATIONS:
        raise InvalidValue(
            f"at most {MAX_VARIATIONS} variations", code="invalid_variations", field="variations"
        )
    parsed = []
    for i, text in enumerate(variations):
        field = f"variations[{i}]"
        if not isinstance(text, str) or not text.strip():
            raise InvalidValue(f"{field} must be a non-empty text", code="invalid_variations", field=field)
        if len(text) > MAX_TEMPLATE_LENGTH:
            raise InvalidValue(
                f"{field} is longer than {MAX_TEMPLATE_LENGTH}", code="invalid_variations", field=field
            )
        if "\x00" in text:
            raise InvalidValue(
                f"{field} must not contain NUL characters (U+0000)", code="nul_character", field=field
            )
        try:
            parsed.append(parse_template(text))
        except TemplateSyntaxError as exc:
            exc.field = field
            raise
    return parsed


def _check_type(template_type: str) -> str:
    try:
        return TemplateType(template_type).value
    except ValueError:
        raise InvalidValue(
            "template_type must be overdue, upcoming or notification",
            code="invalid_template_type",
            field="template_type",
        ) from None


class MessageTemplate(Aggregate):
    """A tenant's template. ``version`` (the aggregate version) identifies the text in force."""

    TOPIC = "billing.Template"

    if TYPE_CHECKING:  # the library builds __init__ from class annotations; keep these for mypy only
        tenant_id: UUID
        name: str
        template_type: str
        description: str
        variations: list[str]
        active: bool

    class Created(Aggregate.Created):
        """A template was created."""

        TOPIC = "billing.Template.Created"
        tenant_id: UUID
        name: str
        template_type: str
        description: str
        variations: list[str]
        active: bool

        def apply(self, aggregate: MessageTemplate) -> None:
            aggregate.tenant_id = self.tenant_id
            aggregate.name = self.name
            aggregate.template_type = self.template_type
            aggregate.description = self.description
            aggregate.variations = list(self.variations)
            aggregate.active = self.active

    class Changed(Aggregate.Event):
        """The template's name, description, variations or active flag changed (whole new values)."""

        TOPIC = "billing.Template.Changed"
        name: str
        description: str
        variations: list[str]
        active: bool

        def apply(self, aggregate: MessageTemplate) -> None:
            aggregate.name = self.name
            aggregate.description = self.description
            aggregate.variations = list(self.variations)
            aggregate.active = self.active

    @classmethod
    def create(
        cls,
        *,
        template_id: UUID,
        tenant_id: UUID,
        name: str,
        template_type: str,
        description: str,
        variations: Sequence[str],
        active: bool,
        at: datetime,
    ) -> MessageTemplate:
        """Create a template. Raises InvalidValue / TemplateSyntaxError naming the field."""
        stripped = check_texts(name, description)
        parse_variations(variations)
        return cls._create(
            cls.Created,
            id=template_id,
            tenant_id=tenant_id,
            name=stripped,
            template_type=_check_type(template_type),
            description=description,
            variations=list(variations),
            active=active,
            timestamp=at,
        )

    def change(
        self,
        *,
        at: datetime,
        name: str | None = None,
        description: str | None = None,
        variations: Sequence[str] | None = None,
        active: bool | None = None,
    ) -> None:
        """Change some attributes (None keeps one). Records nothing when nothing changes.

        Raises:
            InvalidValue / TemplateSyntaxError naming the field.
        """
        new_description = self.description if description is None else description
        new_name = check_texts(self.name if name is None else name, new_description)
        new_variations = self.variations if variations is None else list(variations)
        parse_variations(new_variations)
        new = {
            "name": new_name,
            "description": new_description,
            "variations": new_variations,
            "active": self.active if active is None else active,
        }
        current = {
            "name": self.name,
            "description": self.description,
            "variations": self.variations,
            "active": self.active,
        }
        if new != current:
            self.trigger_event(self.Changed, timestamp=at, **new)

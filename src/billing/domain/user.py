"""Dashboard users and the record of what admins did.

A :class:`User` is a person of one tenant who logs in to the dashboard with an email and a password
(only its argon2 hash is stored, computed by the caller). Its id is derived from the email, so one email
is one user across the whole service (login needs no tenant) and a second registration conflicts in the
event store. Roles: ``admin`` (may change things) and ``viewer`` (read-only).

An :class:`AdminAction` is one change an admin made (who, what, on which target, when), one aggregate
per action so the audit trail is plain events.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from billing.domain.errors import InvalidValue

MAX_EMAIL = 254  # RFC 5321 path limit
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Role(StrEnum):
    """What a user may do: ``admin`` changes, ``viewer`` only reads."""

    ADMIN = "admin"
    VIEWER = "viewer"


def normalize_email(email: str) -> str:
    """Trimmed, lower-cased email. Raises InvalidValue ``invalid_email`` naming ``email``."""
    clean = email.strip().lower()
    if not clean or len(clean) > MAX_EMAIL or not _EMAIL.match(clean):
        raise InvalidValue("email is not a valid address", code="invalid_email", field="email")
    return clean


def user_id_for(email: str) -> UUID:
    """The user id of an (already normalised) email: UUID v5, so an email names one user."""
    return uuid5(NAMESPACE_URL, f"billing:user:{email}")


def parse_role(role: str) -> Role:
    """The role named ``role``. Raises InvalidValue ``invalid_role`` naming ``role``."""
    try:
        return Role(role)
    except ValueError:
        raise InvalidValue("role must be admin or viewer", code="invalid_role", field="role") from None


class User(Aggregate):
    """A dashboard user. ``removed`` users cannot log in; inviting the email again restores them."""

    TOPIC = "billing.User"

    if TYPE_CHECKING:
        tenant_id: UUID
        email: str
        password_hash: str
        role: str
        removed: bool

    class Created(Aggregate.Created):
        """A user was created (by the CLI, ``billing dev`` or an admin: ``by`` is that admin's id)."""

        TOPIC = "billing.User.Created"
        tenant_id: UUID
        email: str
        password_hash: str
        role: str
        by: UUID | None

        def apply(self, aggregate: User) -> None:
            aggregate.tenant_id = self.tenant_id
            aggregate.email = self.email
            aggregate.password_hash = self.password_hash
            aggregate.role = self.role
            aggregate.removed = False

    class Removed(Aggregate.Event):
        """An admin removed the user (``by``)."""

        TOPIC = "billing.User.Removed"
        by: UUID | None

        def apply(self, aggregate: User) -> None:
            aggregate.removed = True

    class Restored(Aggregate.Event):
        """A removed user was invited again, with a new password and role."""

        TOPIC = "billing.User.Restored"
        password_hash: str
        role: str
        by: UUID | None

        def apply(self, aggregate: User) -> None:
            aggregate.password_hash = self.password_hash
            aggregate.role = self.role
            aggregate.removed = False

    class PasswordRehashed(Aggregate.Event):
        """The stored hash was upgraded to current argon2 parameters at a successful login."""

        TOPIC = "billing.User.PasswordRehashed"
        password_hash: str

        def apply(self, aggregate: User) -> None:
            aggregate.password_hash = self.password_hash

    @classmethod
    def create(
        cls, *, tenant_id: UUID, email: str, password_hash: str, role: str, by: UUID | None, at: datetime
    ) -> User:
        """A new user. Raises InvalidValue (``invalid_email``, ``invalid_role``)."""
        clean = normalize_email(email)
        return cls._create(
            cls.Created,
            id=user_id_for(clean),
            tenant_id=tenant_id,
            email=clean,
            password_hash=password_hash,
            role=parse_role(role).value,
            by=by,
            timestamp=at,
        )

    @property
    def is_admin(self) -> bool:
        """True for an active admin."""
        return not self.removed and self.role == Role.ADMIN.value

    def remove(self, *, by: UUID | None, at: datetime) -> None:
        """Remove the user (no-op when already removed)."""
        if not self.removed:
            self.trigger_event(self.Removed, by=by, timestamp=at)

    def restore(self, *, password_hash: str, role: str, by: UUID | None, at: datetime) -> None:
        """Invite a removed user again. Raises InvalidValue ``user_exists`` when the user is active."""
        if not self.removed:
            raise InvalidValue("a user with this email already exists", code="user_exists", field="email")
        self.trigger_event(
            self.Restored, password_hash=password_hash, role=parse_role(role).value, by=by, timestamp=at
        )


class AdminAction(Aggregate):
    """One change an admin made in the dashboard: ``action`` (e.g. ``api_key.create``) on ``target``."""

    TOPIC = "billing.AdminAction"

    if TYPE_CHECKING:
        tenant_id: UUID
        user_id: UUID
        email: str
        action: str
        target: str

    class Created(Aggregate.Created):
        """Base of the creation event; never recorded itself."""

        TOPIC = "billing.AdminAction.Created"

    class Recorded(Created):
        """The action happened at the event's timestamp."""

        TOPIC = "billing.AdminAction.Recorded"
        tenant_id: UUID
        user_id: UUID
        email: str
        action: str
        target: str

        def apply(self, aggregate: AdminAction) -> None:
            aggregate.tenant_id = self.tenant_id
            aggregate.user_id = self.user_id
            aggregate.email = self.email
            aggregate.action = self.action
            aggregate.target = self.target

    @classmethod
    def record(
        cls,
        *,
        action_id: UUID,
        tenant_id: UUID,
        user_id: UUID,
        email: str,
        action: str,
        target: str,
        at: datetime,
    ) -> AdminAction:
        """Record one action (``target``: the id or name acted on, never a secret)."""
        return cls._create(
            cls.Recorded,
            id=action_id,
            tenant_id=tenant_id,
            user_id=user_id,
            email=email,
            action=action,
            target=target,
            timestamp=at,
        )

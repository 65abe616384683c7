"""Dashboard users: create / invite / remove, password check (argon2id through ``argon2-cffi``), and the
record of admin actions (who did what, when) as ``AdminAction`` events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from eventsourcing.persistence import IntegrityError

from billing.db import ViewsPool
from billing.domain.errors import InvalidValue, NotFound
from billing.domain.tenant import Tenant
from billing.domain.user import AdminAction, User, normalize_email, parse_role, user_id_for
from billing.eventstore import EventStore, get_owned
from billing.services.clock import Clock

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_hasher = PasswordHasher()  # argon2id with the library's current RFC 9106 "low memory" parameters
_DUMMY_HASH = _hasher.hash("not a password of anyone")


@dataclass(frozen=True)
class SessionUser:
    """Who is logged in: enough to scope every page to the tenant and to check the role."""

    user_id: UUID
    tenant_id: UUID
    email: str
    role: str

    @property
    def is_admin(self) -> bool:
        """True for the ``admin`` role."""
        return self.role == "admin"


def check_password(password: str) -> str:
    """Raises InvalidValue ``weak_password`` (naming ``password``) for fewer than 10 or more than 1024
    characters; returns it unchanged."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidValue(
            f"password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters",
            code="weak_password",
            field="password",
        )
    return password


class UserService:
    """Use cases on User and AdminAction aggregates. Synchronous (call through a worker thread)."""

    def __init__(self, store: EventStore, pool: ViewsPool, clock: Clock) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock

    def create(
        self,
        tenant_id: UUID,
        *,
        email: str,
        password: str,
        role: str = "admin",
        by: SessionUser | None = None,
    ) -> User:
        """Create (or re-invite a removed) user of ``tenant_id``.

        Raises:
            NotFound: unknown tenant. InvalidValue: ``invalid_email``, ``invalid_role``, ``weak_password``,
            ``user_exists`` (the email is an active user, of this or another tenant).
        """
        if get_owned(self.store, tenant_id, Tenant) is None:
            raise NotFound("tenant not found", code="tenant_not_found")
        clean = normalize_email(email)
        parse_role(role)
        digest = _hasher.hash(check_password(password))
        by_id = by.user_id if by else None
        existing = get_owned(self.store, user_id_for(clean), User)
        now = self.clock.now()
        if existing is not None:
            if existing.tenant_id != tenant_id:
                raise InvalidValue("a user with this email already exists", code="user_exists", field="email")
            existing.restore(password_hash=digest, role=role, by=by_id, at=now)
            user = existing
        else:
            user = User.create(
                tenant_id=tenant_id, email=clean, password_hash=digest, role=role, by=by_id, at=now
            )
        try:
            self._save(user, by, "user.invite", clean)
        except IntegrityError:
            raise InvalidValue(
                "a user with this email already exists", code="user_exists", field="email"
            ) from None
        return user

    def remove(self, by: SessionUser, user_id: UUID) -> None:
        """Remove one of the admin's tenant's users (not oneself). Raises NotFound; InvalidValue
        ``cannot_remove_self``."""
        user = get_owned(self.store, user_id, User, by.tenant_id)
        if user is None or user.removed:
            raise NotFound("user not found", code="user_not_found")
        if user.id == by.user_id:
            raise InvalidValue("you cannot remove yourself", code="cannot_remove_self", field="user_id")
        user.remove(by=by.user_id, at=self.clock.now())
        self._save(user, by, "user.remove", user.email)

    def authenticate(self, email: str, password: str) -> SessionUser | None:
        """The user of ``email`` when ``password`` matches and the user is not removed, else None. Takes
        an argon2 verification's time whether or not the email exists (no user enumeration by timing)."""
        try:
            clean = normalize_email(email)
        except InvalidValue:
            clean = ""
        user = get_owned(self.store, user_id_for(clean), User) if clean else None
        digest = user.password_hash if user is not None else _DUMMY_HASH
        try:
            _hasher.verify(digest, password[:MAX_PASSWORD])
        except (VerificationError, InvalidHashError):
            return None
        if user is None or user.removed:
            return None
        if _hasher.check_needs_rehash(digest):
            user.trigger_event(
                User.PasswordRehashed, password_hash=_hasher.hash(password), timestamp=self.clock.now()
            )
            self.store.save(user)
        return SessionUser(user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role)

    def current(self, user_id: UUID) -> SessionUser | None:
        """The session's user as it is now (None when removed or unknown): a removed user's or demoted
        admin's open session loses its rights at the next request."""
        user = get_owned(self.store, user_id, User)
        if user is None or user.removed:
            return None
        return SessionUser(user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role)

    def record(self, by: SessionUser, action: str, target: str) -> None:
        """Record an admin action (``action`` like ``template.change``, ``target`` an id or name)."""
        self.store.save(self._action(by, action, target))

    def list_users(self, tenant_id: UUID) -> list[dict[str, Any]]:
        """The tenant's active users ``[{user_id, email, role, created_at}]`` (from the ``users`` view)."""
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT user_id, email, role, created_at FROM users "
                "WHERE tenant_id = %s AND removed_at IS NULL ORDER BY email",
                (tenant_id,),
            ).fetchall()

    def actions(self, tenant_id: UUID, limit: int = 50) -> list[dict[str, Any]]:
        """The tenant's latest admin actions ``[{email, action, target, at}]``, newest first."""
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT email, action, target, at FROM admin_actions WHERE tenant_id = %s "
                "ORDER BY at DESC LIMIT %s",
                (tenant_id, limit),
            ).fetchall()

    def _action(self, by: SessionUser, action: str, target: str) -> AdminAction:
        return AdminAction.record(
            action_id=uuid4(),
            tenant_id=by.tenant_id,
            user_id=by.user_id,
            email=by.email,
            action=action,
            target=target,
            at=self.clock.now(),
        )

    def _save(self, user: User, by: SessionUser | None, action: str, target: str) -> None:
        """Save the user with, when an admin acted, the record of it (one transaction)."""
        if by is None:
            self.store.save(user)
        else:
            self.store.save(user, self._action(by, action, target))

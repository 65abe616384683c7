"""Authentication: ``X-Billing-API-Key`` for the public API, JWT bearer (HS256) for the admin API.

Admin tokens use litestar's security module (``litestar.security.jwt``, PyJWT underneath): the algorithm
is pinned to HS256 (so ``alg: none`` and other algorithms are refused), ``exp`` is required, the tenant is
the ``sub`` claim. Only the ``Bearer`` scheme is accepted (RFC 6750; the library alone takes whatever word
precedes the token, e.g. ``Basic <JWT>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

API_KEY_HEADER = "X-Billing-API-Key"
ALGORITHM = "HS256"


@dataclass(frozen=True)
class Admin:
    """The authenticated admin: the tenant the token is scoped to."""

    tenant_id: UUID


def mint_token(secret: str, tenant_id: UUID | str, ttl_s: int = 3600, *, now: datetime | None = None) -> str:
    """An HS256 admin token for ``tenant_id`` valid for ``ttl_s`` seconds."""
    issued = now or datetime.now(UTC)
    token = Token(exp=issued + timedelta(seconds=ttl_s), sub=str(tenant_id), iat=issued)
    return token.encode(secret=secret, algorithm=ALGORITHM)


async def _retrieve_admin(token: Token, _: ASGIConnection[Any, Any, Any, Any]) -> Admin | None:
    try:
        return Admin(tenant_id=UUID(token.sub))
    except ValueError:
        return None


PUBLIC_PATHS = [
    "^/health/",
    "^/metrics",
    "^/schema",
    "^/api/billing/v1/billing/send/",
    "^/api/billing/v1/billing/queue/",
    "^/api/billing/v1/billing/campaign/",
    "^/api/billing/v1/billing/contacts(/|$)",
    "^/api/billing/v1/billing/gateway/events/",
    "^/dashboard",
]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (scheme case-insensitive, RFC 7235),
    or None for a missing header, another scheme or an empty token."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class BearerJWTMiddleware(JWTAuthenticationMiddleware):
    """litestar's JWT middleware, refusing every scheme but ``Bearer`` with 401."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Authenticate ``Authorization: Bearer <JWT>``. Raises NotAuthorizedException otherwise."""
        header = connection.headers.get(self.auth_header)
        if not header:
            raise NotAuthorizedException("No JWT token found in request header")
        token = bearer_token(header)
        if token is None:
            raise NotAuthorizedException("the Authorization header must use the Bearer scheme")
        return await self.authenticate_token(encoded_token=token, connection=connection)


def jwt_auth(secret: str) -> JWTAuth[Admin, Token]:
    """The admin JWT configuration; public paths are excluded (they use the API key)."""
    return JWTAuth[Admin, Token](
        retrieve_user_handler=_retrieve_admin,
        token_secret=secret,
        algorithm=ALGORITHM,
        exclude=PUBLIC_PATHS,
        require_claims=["exp", "sub"],
        authentication_middleware_class=BearerJWTMiddleware,
    )

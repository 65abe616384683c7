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

import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from billing.api.errors import Unauthorized

API_KEY_HEADER = "X-Billing-API-Key"
API_KEY_DIGEST_STATE = "api_key_digest"
"""Key of ``scope["state"]`` under which the rate limit leaves the request's API key digest (SHA-256 hex)
for the key check, so one request hashes its key once."""
AUTH_HEADER = "Authorization"
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
    "^/favicon\\.ico$",
]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (scheme case-insensitive, RFC 7235),
    or None for a missing header, another scheme or an empty token."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def token_refusal(cause: BaseException | None) -> str:
    """What is wrong with a refused admin token, from the PyJWT error litestar's ``Token.decode`` chained
    (None: the token decoded but its ``sub`` is no tenant id)."""
    if cause is None:
        return "the admin token's sub claim is not a tenant id"
    if isinstance(cause, jwt.ExpiredSignatureError):
        return "the admin token has expired; mint a new one (billing admin token --tenant ID)"
    if isinstance(cause, jwt.InvalidSignatureError):
        return "the admin token's signature does not match this server's BILLING_JWT_SECRET"
    if isinstance(cause, jwt.InvalidAlgorithmError):
        return f"the admin token must be signed with {ALGORITHM}"
    if isinstance(cause, jwt.MissingRequiredClaimError):
        return f"the admin token has no {cause.claim!r} claim"
    if isinstance(cause, jwt.DecodeError):
        return f"the Authorization header's Bearer value is not a JWT ({cause})"
    return f"the admin token is not valid ({cause})"


class BearerJWTMiddleware(JWTAuthenticationMiddleware):
    """litestar's JWT middleware, refusing every scheme but ``Bearer`` with 401, each refusal saying what
    is wrong (``field``: ``Authorization``)."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Authenticate ``Authorization: Bearer <JWT>``.

        Raises:
            Unauthorized: no ``Authorization`` header (an API key where an admin token belongs, too),
                another scheme, or a token that does not verify.
        """
        header = connection.headers.get(self.auth_header)
        if not header:
            hint = f" (this endpoint takes an admin token, not {API_KEY_HEADER})"
            raise Unauthorized(
                f"missing {AUTH_HEADER}: Bearer <admin JWT> header"
                + (hint if connection.headers.get(API_KEY_HEADER) else ""),
                field=AUTH_HEADER,
            )
        token = bearer_token(header)
        if token is None:
            raise Unauthorized(
                f"the {AUTH_HEADER} header must be 'Bearer <admin JWT>' (no other scheme)", field=AUTH_HEADER
            )
        try:
            return await self.authenticate_token(encoded_token=token, connection=connection)
        except NotAuthorizedException as exc:
            raise Unauthorized(token_refusal(exc.__cause__), field=AUTH_HEADER) from None


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

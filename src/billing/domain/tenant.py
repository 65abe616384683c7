"""The Tenant aggregate: a company using the service, with its gateway settings and sending policy."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from billing.domain.errors import InvalidValue
from billing.domain.policy import POLICY_KEYS, SendingPolicy, parse_policy

GATEWAY_KEYS = ("base_url", "instance", "api_key", "api_version")


def validate_gateway(gateway: dict[str, Any]) -> dict[str, str]:
    """Check an Evolution API configuration ``{base_url, instance, api_key, api_version: v1|v2}``.

    Raises:
        InvalidValue: code ``invalid_gateway`` naming the field (``gateway.base_url`` ...).
    """
    out: dict[str, str] = {}
    for key in GATEWAY_KEYS:
        value = gateway.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InvalidValue(f"gateway.{key} is required", code="invalid_gateway", field=f"gateway.{key}")
        out[key] = value.strip()
    if out["api_version"] not in ("v1", "v2"):
        raise InvalidValue(
            "gateway.api_version must be v1 or v2", code="invalid_gateway", field="gateway.api_version"
        )
    if not out["base_url"].startswith(("http://", "https://")):
        raise InvalidValue(
            "gateway.base_url must be an http(s) URL", code="invalid_gateway", field="gateway.base_url"
        )
    return out


def calendar_part(policy: dict[str, Any]) -> dict[str, Any]:
    """The business-hours calendar's share of a policy spec (zone, windows, holidays): every key that is
    not a throttle, pause or retry setting (:func:`billing.domain.policy.parse_policy` splits it so)."""
    return {k: v for k, v in policy.items() if k not in POLICY_KEYS}


class Tenant(Aggregate):
    """A company. ``policy`` is the JSON-like spec (see :mod:`billing.domain.policy`), always valid.

    ``policy_version`` is the aggregate version of the event that last set the policy (Registered or
    PolicyChanged); ``calendar_version`` the version of the last one that changed its business-hours part.
    A send records both (``Contact.Dispatched.allowed_by``), so an audit names the rules in force then.
    """

    TOPIC = "billing.Tenant"

    if TYPE_CHECKING:  # the library builds __init__ from class annotations; keep these for mypy only
        name: str
        gateway: dict[str, str]
        policy: dict[str, Any]
        gateway_generation: int
        default_templates: dict[str, UUID]
        policy_version: int
        calendar_version: int

    class Created(Aggregate.Created):
        """Base of the creation event; never recorded itself."""

        TOPIC = "billing.Tenant.Created"

    class Registered(Created):
        """A tenant was registered with its gateway and policy."""

        TOPIC = "billing.Tenant.Registered"
        name: str
        gateway: dict[str, str]
        policy: dict[str, Any]

        def apply(self, aggregate: Tenant) -> None:
            aggregate.name = self.name
            aggregate.gateway = dict(self.gateway)
            aggregate.policy = dict(self.policy)
            aggregate.gateway_generation = 1
            aggregate.default_templates = {}
            aggregate.policy_version = aggregate.calendar_version = self.originator_version

    class GatewayConfigured(Aggregate.Event):
        """The admin changed the gateway settings (lifts a ``gateway_misconfigured`` pause)."""

        TOPIC = "billing.Tenant.GatewayConfigured"
        gateway: dict[str, str]

        def apply(self, aggregate: Tenant) -> None:
            aggregate.gateway = dict(self.gateway)
            aggregate.gateway_generation += 1

    class PolicyChanged(Aggregate.Event):
        """The admin changed the sending policy; ``policy`` is the whole new spec."""

        TOPIC = "billing.Tenant.PolicyChanged"
        policy: dict[str, Any]

        def apply(self, aggregate: Tenant) -> None:
            if calendar_part(self.policy) != calendar_part(aggregate.policy):
                aggregate.calendar_version = self.originator_version
            aggregate.policy = dict(self.policy)
            aggregate.policy_version = self.originator_version

    class DefaultTemplateChosen(Aggregate.Event):
        """The admin made ``template_id`` the default of ``template_type``: its variations rotate for
        every send of that type that names no template."""

        TOPIC = "billing.Tenant.DefaultTemplateChosen"
        template_type: str
        template_id: UUID

        def apply(self, aggregate: Tenant) -> None:
            aggregate.default_templates = {
                **aggregate.default_templates,
                self.template_type: self.template_id,
            }

    @classmethod
    def register(
        cls, *, tenant_id: UUID, name: str, gateway: dict[str, Any], policy: dict[str, Any], at: datetime
    ) -> Tenant:
        """Register a tenant.

        Raises:
            InvalidValue: empty name or bad gateway; PolicyError: bad policy (both name the field).
        """
        if not name.strip():
            raise InvalidValue("name is required", code="invalid_name", field="name")
        parse_policy(policy)
        return cls._create(
            cls.Registered,
            id=tenant_id,
            name=name.strip(),
            gateway=validate_gateway(gateway),
            policy=dict(policy),
            timestamp=at,
        )

    @property
    def sending_policy(self) -> SendingPolicy:
        """The typed policy (parsed once per distinct spec and process: parsing loads holiday tables).

        Kept on the instance while ``policy`` is the same dict (every event replaces it, never edits it),
        so the worker's several reads per job cost no JSON encoding of the spec."""
        held: tuple[dict[str, Any], SendingPolicy] | None = self.__dict__.get("_policy_held")
        if held is not None and held[0] is self.policy:
            return held[1]
        parsed = _parsed_policy(json.dumps(self.policy, sort_keys=True))
        self.__dict__["_policy_held"] = (self.policy, parsed)
        return parsed

    def configure_gateway(self, gateway: dict[str, Any], *, at: datetime) -> None:
        """Replace the gateway settings. Raises InvalidValue naming the field."""
        self.trigger_event(self.GatewayConfigured, gateway=validate_gateway(gateway), timestamp=at)

    def change_policy(self, changes: dict[str, Any], *, at: datetime) -> None:
        """Merge ``changes`` into the policy (top-level keys replace). Raises PolicyError naming the field."""
        merged = {**self.policy, **changes}
        parse_policy(merged)
        if merged != self.policy:
            self.trigger_event(self.PolicyChanged, policy=merged, timestamp=at)

    def default_template(self, template_type: str) -> UUID | None:
        """The id of the type's default template, or None when none was chosen."""
        return self.default_templates.get(template_type)

    def choose_default_template(
        self, *, template_id: UUID, template_tenant: UUID, template_type: str, active: bool, at: datetime
    ) -> None:
        """Make a template the default of its type (one default per type: the previous one stops being
        used by sends that name no template). Records nothing when it already is.

        Raises:
            InvalidValue: ``template_inactive`` (an inactive template cannot be the default) or
                ``template_not_found`` (another tenant's template), naming ``template_id``.
        """
        if template_tenant != self.id:
            raise InvalidValue("template not found", code="template_not_found", field="template_id")
        if not active:
            raise InvalidValue(
                "an inactive template cannot be the default: activate it first",
                code="template_inactive",
                field="template_id",
            )
        if self.default_templates.get(template_type) != template_id:
            self.trigger_event(
                self.DefaultTemplateChosen, template_type=template_type, template_id=template_id, timestamp=at
            )


@lru_cache(maxsize=1024)
def _parsed_policy(spec_json: str) -> SendingPolicy:
    """:func:`parse_policy` of a canonical JSON spec (the policy is immutable: the cache never goes stale)."""
    return parse_policy(json.loads(spec_json))

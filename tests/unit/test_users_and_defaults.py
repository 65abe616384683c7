"""Domain: dashboard users (email identity, roles, removal) and the one-default-template-per-type rule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from billing.domain.errors import InvalidValue
from billing.domain.policy import default_policy_spec
from billing.domain.tenant import Tenant
from billing.domain.user import Role, User, normalize_email, user_id_for

AT = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
GATEWAY = {"base_url": "http://gw", "instance": "i", "api_key": "k", "api_version": "v2"}


def tenant() -> Tenant:
    return Tenant.register(
        tenant_id=uuid.uuid4(), name="Loja", gateway=GATEWAY, policy=default_policy_spec(), at=AT
    )


def test_an_email_is_one_user_whatever_its_case_and_spaces() -> None:
    user = User.create(
        tenant_id=uuid.uuid4(), email="  Ana@Loja.Example ", password_hash="h", role="admin", by=None, at=AT
    )
    assert user.email == "ana@loja.example"
    assert (
        user.id
        == user_id_for("ana@loja.example")
        == uuid.uuid5(uuid.NAMESPACE_URL, "billing:user:ana@loja.example")
    )
    assert user.is_admin


@pytest.mark.parametrize(
    "email", ["", "ana", "ana@", "@loja.example", "a b@loja.example", "a@" + "x" * 260 + ".br"]
)
def test_invalid_emails_are_refused_naming_the_field(email: str) -> None:
    with pytest.raises(InvalidValue) as error:
        normalize_email(email)
    assert (error.value.code, error.value.field) == ("invalid_email", "email")


def test_roles_are_admin_or_viewer_and_a_viewer_is_not_admin() -> None:
    viewer = User.create(
        tenant_id=uuid.uuid4(), email="v@l.example", password_hash="h", role="viewer", by=None, at=AT
    )
    assert not viewer.is_admin and viewer.role == Role.VIEWER.value
    with pytest.raises(InvalidValue) as error:
        User.create(
            tenant_id=uuid.uuid4(), email="x@l.example", password_hash="h", role="owner", by=None, at=AT
        )
    assert error.value.code == "invalid_role"


def test_a_removed_user_can_be_invited_again_but_an_active_one_cannot() -> None:
    by = uuid.uuid4()
    user = User.create(
        tenant_id=uuid.uuid4(), email="a@l.example", password_hash="h1", role="admin", by=None, at=AT
    )
    with pytest.raises(InvalidValue) as error:
        user.restore(password_hash="h2", role="viewer", by=by, at=AT)
    assert error.value.code == "user_exists"
    user.remove(by=by, at=AT)
    assert user.removed and not user.is_admin
    user.remove(by=by, at=AT)  # no second event
    user.restore(password_hash="h2", role="viewer", by=by, at=AT)
    assert (user.removed, user.role, user.password_hash, user.version) == (False, "viewer", "h2", 3)


def test_one_default_per_type_and_choosing_it_again_records_nothing() -> None:
    t = tenant()
    first, second = uuid.uuid4(), uuid.uuid4()
    t.choose_default_template(
        template_id=first, template_tenant=t.id, template_type="overdue", active=True, at=AT
    )
    t.choose_default_template(
        template_id=second, template_tenant=t.id, template_type="overdue", active=True, at=AT
    )
    t.choose_default_template(
        template_id=second, template_tenant=t.id, template_type="overdue", active=True, at=AT
    )
    assert t.default_template("overdue") == second
    assert t.default_template("upcoming") is None
    assert t.version == 3  # registered + two choices


def test_an_inactive_or_foreign_template_cannot_be_the_default() -> None:
    t = tenant()
    with pytest.raises(InvalidValue) as error:
        t.choose_default_template(
            template_id=uuid.uuid4(), template_tenant=t.id, template_type="overdue", active=False, at=AT
        )
    assert (error.value.code, error.value.field) == ("template_inactive", "template_id")
    with pytest.raises(InvalidValue) as error:
        t.choose_default_template(
            template_id=uuid.uuid4(),
            template_tenant=uuid.uuid4(),
            template_type="overdue",
            active=True,
            at=AT,
        )
    assert error.value.code == "template_not_found"
    assert t.default_templates == {}

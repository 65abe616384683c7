# ruff: noqa: F811  (the api fixture is imported from test_admin_api and named as a parameter)
"""Hostile or broken input on every JSON endpoint, against the real PostgreSQL: a clear 4xx naming the
field, and nothing stored (NUL characters, deep nesting, content type, unknown fields, lengths, body size,
values that make no sense, duplicate phones, allowed countries, variables inside branches)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.integration.test_admin_api import BASE, Api, api, contact  # noqa: F401  (fixture)

DEEP = "[" * 10_000 + "]" * 10_000
DEEPER_THAN_PYTHON = "[" * 1_500 + "]" * 1_500  # beyond Python's recursion limit, within every body limit
SMALL_BODIES = ("/contacts/cancel", "/api-keys/")  # 20 KB of brackets exceed their limit: 413


def events(api: Api) -> int:
    with psycopg.connect(api.container.settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM billing_events").fetchone()
        assert row is not None
        return int(row[0])


async def template_id(api: Api) -> str:
    listed = (await api.client.get(f"{BASE}/templates/", headers=api.admin)).json()
    return str(listed[0]["template_id"])


# Each JSON endpoint: (method, path or None for "a template's", credential, a body with {} where a value
# goes, the field path of that value).
SEND = '{"contacts": [{"nome": "Ana", "telefone": "11987654321", "x": %s}]}'
ENDPOINTS = [
    ("post", "/send/overdue", "public", SEND, "contacts[0].x"),
    ("post", "/send/upcoming", "public", SEND, "contacts[0].x"),
    ("post", "/send/notification", "public", SEND, "contacts[0].x"),
    ("post", "/contacts/cancel", "public", '{"external_id": %s}', "external_id"),
    ("post", "/api-keys/", "admin", '{"name": %s}', "name"),
    (
        "post",
        "/templates/",
        "admin",
        '{"name": %s, "template_type": "overdue", "variations": ["Oi"]}',
        "name",
    ),
    ("patch", "/templates/{id}/", "admin", '{"name": %s}', "name"),
    ("post", "/templates/{id}/preview", "admin", '{"variables": {"nome": %s}}', "variables.nome"),
    ("patch", "/config/", "admin", '{"policy": {"timezone": %s}}', "policy.timezone"),
    ("patch", "/config/", "admin", '{"policy": {"windows": {"mon": [[%s]]}}}', "policy.windows.mon[0][0]"),
]


async def call(api: Api, method: str, path: str, who: str, content: bytes, **headers: str) -> Any:
    if "{id}" in path:
        path = path.replace("{id}", await template_id(api))
    base = api.public if who == "public" else api.admin
    return await api.client.request(
        method.upper(), f"{BASE}{path}", content=content, headers={**base, **headers}
    )


@pytest.mark.parametrize(("method", "path", "who", "body", "field"), ENDPOINTS)
async def test_deep_nesting_is_422_naming_the_field_on_every_json_endpoint(
    api: Api, method: str, path: str, who: str, body: str, field: str
) -> None:
    before = events(api)
    json = {"Content-Type": "application/json"}
    response = await call(api, method, path, who, (body % DEEP).encode(), **json)
    if path in SMALL_BODIES:
        assert (response.status_code, response.json()["code"]) == (413, "body_too_large")
    else:
        assert response.status_code == 422, response.text
        assert (response.json()["code"], response.json()["field"]) == ("invalid_request", field)
    response = await call(api, method, path, who, (body % DEEPER_THAN_PYTHON).encode(), **json)
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid_request", field)
    assert events(api) == before


@pytest.mark.parametrize(("method", "path", "who", "body", "field"), ENDPOINTS)
async def test_a_nul_character_is_422_naming_the_field_on_every_json_endpoint(
    api: Api, method: str, path: str, who: str, body: str, field: str
) -> None:
    before = events(api)
    value = '"k\\u0000ey"'
    response = await call(
        api, method, path, who, (body % value).encode(), **{"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("nul_character", field)
    assert events(api) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            '{"external_id": "fat\\u0000ura", "contacts": [{"nome": "Ana", "telefone": "11987654321"}]}',
            "external_id",
        ),
        ('{"contacts": [{"no\\u0000me": "Ana", "telefone": "11987654321"}]}', "contacts[0]"),
    ],
)
async def test_nul_in_external_id_or_a_field_name_is_refused(api: Api, body: str, field: str) -> None:
    before = events(api)
    response = await call(
        api, "post", "/send/overdue", "public", body.encode(), **{"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert events(api) == before


async def test_nul_in_a_template_variation_is_refused(api: Api) -> None:
    body = b'{"name": "X", "template_type": "overdue", "variations": ["Oi", "O\\u0000i"]}'
    response = await call(api, "post", "/templates/", "admin", body, **{"Content-Type": "application/json"})
    assert (response.status_code, response.json()["code"], response.json()["field"]) == (
        422,
        "nul_character",
        "variations[1]",
    )


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
@pytest.mark.parametrize(("method", "path", "who", "body", "field"), ENDPOINTS[:-1])
async def test_a_json_endpoint_refuses_another_content_type_with_415(
    api: Api, method: str, path: str, who: str, body: str, field: str, content_type: str | None
) -> None:
    before = events(api)
    headers = {"Content-Type": content_type} if content_type else {}
    response = await call(api, method, path, who, (body % '"ok"').encode(), **headers)
    assert response.status_code == 415, response.text
    assert (response.json()["code"], response.json()["field"]) == ("unsupported_media_type", "Content-Type")
    assert events(api) == before


async def test_missing_credentials_are_401_before_the_body_is_read(api: Api) -> None:
    response = await api.client.post(
        f"{BASE}/send/overdue", content=b"[[[", headers={"Content-Type": "text/plain"}
    )
    assert (response.status_code, response.json()["code"]) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "path", "who", "body", "field"),
    [
        ("post", "/send/overdue", "public", {"contatos": [contact(1)]}, "contatos"),
        ("post", "/send/overdue", "public", {"contacts": [contact(1)], "extra": 1}, "extra"),
        ("post", "/contacts/cancel", "public", {"external_id": "f", "externalid": "f"}, "externalid"),
        ("post", "/api-keys/", "admin", {"nome": "erp"}, "nome"),
        ("patch", "/config/", "admin", {"policy": {"retry": {"attempts": 3}}}, "policy.retry.attempts"),
        ("patch", "/config/", "admin", {"gateway": {"url": "http://x"}}, "gateway.url"),
    ],
)
async def test_an_unknown_field_is_refused_naming_it_exactly(
    api: Api, method: str, path: str, who: str, body: dict[str, Any], field: str
) -> None:
    before = events(api)
    base = api.public if who == "public" else api.admin
    response = await api.client.request(method.upper(), f"{BASE}{path}", json=body, headers=base)
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("unknown_field", field)
    assert events(api) == before


@pytest.mark.parametrize(
    ("path", "who", "body", "field", "limit"),
    [
        ("/send/notification", "public", {"contacts": [contact(1, nome="a" * 501)]}, "contacts[3].nome", 500),
        (
            "/send/notification",
            "public",
            {"external_id": "e" * 201, "contacts": [contact(1)]},
            "external_id",
            200,
        ),
        ("/contacts/cancel", "public", {"external_id": "e" * 201}, "external_id", 200),
        ("/api-keys/", "admin", {"name": "n" * 101}, "name", 100),
        (
            "/templates/",
            "admin",
            {"name": "n" * 101, "template_type": "overdue", "variations": ["Oi"]},
            "name",
            100,
        ),
        (
            "/templates/",
            "admin",
            {"name": "n", "description": "d" * 501, "template_type": "overdue", "variations": ["Oi"]},
            "description",
            500,
        ),
    ],
)
async def test_an_over_long_value_is_refused_naming_field_and_limit(
    api: Api, path: str, who: str, body: dict[str, Any], field: str, limit: int
) -> None:
    if field.startswith("contacts["):
        body = {"contacts": [contact(0), contact(1), contact(2), *body["contacts"]]}
    before = events(api)
    response = await api.client.post(
        f"{BASE}{path}", json=body, headers=api.public if who == "public" else api.admin
    )
    assert response.status_code == 422, response.text
    error = response.json()
    assert (error["code"], error["field"], error["details"]) == (
        "value_too_long",
        field,
        {"max_length": limit},
    )
    assert str(limit) in error["message"]
    assert events(api) == before


async def test_a_9_mb_batch_of_over_long_names_is_refused_fast_and_a_17_mb_one_before_reading(
    api: Api,
) -> None:
    name = "n" * 1000
    contacts = ",".join(f'{{"nome": "{name}", "telefone": "11987654321"}}' for _ in range(8_500))
    body = f'{{"contacts": [{contacts}]}}'.encode()
    assert 8_500_000 < len(body) < 9_500_000
    start = time.perf_counter()
    response = await call(
        api, "post", "/send/notification", "public", body, **{"Content-Type": "application/json"}
    )
    refused_9mb = time.perf_counter() - start
    assert (response.status_code, response.json()["code"], response.json()["field"]) == (
        422,
        "value_too_long",
        "contacts[0].nome",
    )
    big = body + b" " * (17 * 1024 * 1024 - len(body))
    start = time.perf_counter()
    response = await call(
        api, "post", "/send/notification", "public", big, **{"Content-Type": "application/json"}
    )
    refused_17mb = time.perf_counter() - start
    assert (response.status_code, response.json()["code"]) == (413, "body_too_large")
    assert response.json()["details"] == {"max_bytes": 16 * 1024 * 1024}
    print(
        f"\n9 MB body refused in {refused_9mb * 1000:.0f} ms; "
        f"17 MB body refused in {refused_17mb * 1000:.0f} ms"
    )


@pytest.mark.parametrize(
    ("path", "who", "size"),
    [("/contacts/cancel", "public", 4000), ("/api-keys/", "admin", 5000), ("/config/", "admin", 70_000)],
)
async def test_every_endpoint_bounds_its_body(api: Api, path: str, who: str, size: int) -> None:
    method = "patch" if path == "/config/" else "post"
    body = b'{"name": "' + b"x" * size + b'"}'
    response = await call(api, method, path, who, body, **{"Content-Type": "application/json"})
    assert (response.status_code, response.json()["code"]) == (413, "body_too_large")


async def send(api: Api, kind: str, contacts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    response = await api.client.post(
        f"{BASE}/send/{kind}", json={"contacts": contacts, **extra}, headers=api.public
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("kind", ["overdue", "notification"])
@pytest.mark.parametrize("valor", ["1e-400", "0.001", "150.005"])
async def test_an_amount_of_a_fraction_of_a_centavo_is_rejected(api: Api, kind: str, valor: str) -> None:
    body = (
        '{"contacts": [{"nome": "Ana", "telefone": "11987654321", "data_vencimento": "2025-01-15", '
        f'"valor": {valor}}}]}}'
    ).encode()
    response = await call(
        api, "post", f"/send/{kind}", "public", body, **{"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    assert [(r["code"], r["field"]) for r in response.json()["rejections"]] == [
        ("invalid_amount", "contacts[0].valor")
    ]


async def test_a_due_date_outside_the_window_is_rejected(api: Api) -> None:
    result = await send(
        api,
        "overdue",
        [contact(1, data_vencimento="1900-01-01"), contact(2, data_vencimento="2020-01-21"), contact(3)],
    )
    assert [(r["index"], r["code"], r["earliest"]) for r in result["rejections"]] == [
        (0, "due_date_out_of_range", "2020-01-21"),
    ]
    assert result["contacts"]["accepted"] == 2  # 2020-01-21: exactly five years before 2025-01-21 (São Paulo)


@pytest.mark.parametrize(
    ("path", "who"), [("/campaigns/?limit=-1", "admin"), ("/campaigns/?limit=100000", "admin")]
)
async def test_a_limit_out_of_bounds_is_refused(api: Api, path: str, who: str) -> None:
    response = await api.client.get(f"{BASE}{path}", headers=api.admin)
    assert (response.status_code, response.json()["code"], response.json()["field"]) == (
        422,
        "out_of_range",
        "limit",
    )


async def test_a_foreign_number_is_rejected_unless_its_country_is_allowed(api: Api) -> None:
    foreign = {"nome": "Bob", "telefone": "+1 202 555 0123"}
    result = await send(api, "notification", [foreign, contact(1)])
    assert [(r["index"], r["code"], r["field"], r["country"]) for r in result["rejections"]] == [
        (0, "country_not_allowed", "contacts[0].telefone", "US")
    ]
    changed = await api.client.patch(
        f"{BASE}/config/", json={"policy": {"allowed_countries": ["BR", "us"]}}, headers=api.admin
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["policy"]["allowed_countries"] == ["BR", "us"]
    result = await send(api, "notification", [foreign, contact(1)])
    assert result["rejections"] == []


async def test_the_same_phone_spelled_three_ways_is_sent_once_unless_the_request_allows_it(api: Api) -> None:
    spellings = ["(11) 98765-4321", "11987654321", "0055 11 9 8765 4321"]
    contacts = [{"nome": f"Ana {i}", "telefone": t} for i, t in enumerate(spellings)]
    result = await send(api, "notification", [contact(7), *contacts])
    assert [(r["index"], r["code"], r["field"], r["first_index"]) for r in result["rejections"]] == [
        (2, "duplicate_phone", "contacts[2].telefone", 1),
        (3, "duplicate_phone", "contacts[3].telefone", 1),
    ]
    assert result["contacts"] == {"total": 4, "accepted": 2, "rejected": 2}
    allowed = await send(api, "notification", contacts, allow_duplicate_phones=True)
    assert allowed["contacts"] == {"total": 3, "accepted": 3, "rejected": 0}


async def test_a_variable_only_inside_a_branch_is_still_required(api: Api) -> None:
    # the default upcoming template writes data_vencimento only inside {{#if vence_hoje}}…{{else}}…{{/if}}
    result = await send(api, "upcoming", [{"nome": "Ana", "telefone": "11987654321", "valor": "10"}])
    assert [(r["code"], r["field"], r["names"]) for r in result["rejections"]] == [
        ("missing_variable", "contacts[0].data_vencimento", ["data_vencimento"])
    ]

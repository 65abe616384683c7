"""Classification of Evolution API answers (evolution-api.md, gateway 2.3.6 / 1.8.2)."""

from __future__ import annotations

import dataclasses

import pytest

from billing.domain.delivery import (
    TRANSPORT_CONNECT_ERROR,
    TRANSPORT_CONNECT_TIMEOUT,
    TRANSPORT_DEADLINE,
    TRANSPORT_POOL_TIMEOUT,
    TRANSPORT_PROTOCOL_ERROR,
    TRANSPORT_READ_ERROR,
    TRANSPORT_READ_TIMEOUT,
    OutcomeKind,
    SendOutcome,
    classify_send_response,
    classify_transport_error,
)

K = OutcomeKind


def err(status: int, error: str, message: object) -> dict[str, object]:
    return {"status": status, "error": error, "response": {"message": message}}


V2_SUCCESS = {
    "key": {"remoteJid": "5511987654321@s.whatsapp.net", "fromMe": True, "id": "3EB0C0BD05DCA97A7C09CB"},
    "pushName": "",
    "status": "PENDING",
    "message": {"conversation": "Olá"},
    "messageType": "conversation",
    "messageTimestamp": 1735689600,
    "instanceId": "0b4ae2f3-6c25-4a51-9b64-3c1e7f3b2b10",
    "source": "web",
}
V1_SUCCESS = {
    "key": {"remoteJid": "553198296801@s.whatsapp.net", "fromMe": True, "id": "3EB0AAAABBBBCCCCDDDDEE"},
    "message": {"extendedTextMessage": {"text": "Olá"}},
    "messageTimestamp": "1735689600",
    "status": "PENDING",
}


def test_v2_success() -> None:
    outcome = classify_send_response(201, V2_SUCCESS)
    assert outcome == SendOutcome(
        kind=K.SENT,
        code="sent",
        message="accepted by the gateway",
        retryable=False,
        message_id="3EB0C0BD05DCA97A7C09CB",
        remote_jid="5511987654321@s.whatsapp.net",
        http_status=201,
        connection_problem=False,
        outcome_unknown=False,
        message_timestamp=1735689600,
    )
    assert outcome.sent


def test_v1_success_with_string_timestamp_and_rewritten_jid() -> None:
    outcome = classify_send_response(201, V1_SUCCESS)
    assert outcome.kind is K.SENT
    assert outcome.code == "sent"
    assert outcome.message_id == "3EB0AAAABBBBCCCCDDDDEE"
    assert outcome.remote_jid == "553198296801@s.whatsapp.net"
    assert outcome.message_timestamp == 1735689600
    assert not outcome.retryable


def test_success_with_long_timestamp_and_200() -> None:
    body = {
        "key": {"id": "3EB0X", "remoteJid": "x@s.whatsapp.net"},
        "messageTimestamp": {"low": 5, "high": 0},
    }
    outcome = classify_send_response(200, body)
    assert (outcome.kind, outcome.message_timestamp, outcome.http_status) == (K.SENT, 5, 200)


def test_success_without_remote_jid_keeps_id() -> None:
    outcome = classify_send_response(201, {"key": {"id": "3EB0X"}})
    assert (outcome.kind, outcome.message_id, outcome.remote_jid) == (K.SENT, "3EB0X", None)


@pytest.mark.parametrize(
    "body",
    [None, {}, {"key": {}}, {"key": {"id": ""}}, {"key": {"id": 12}}, {"key": "3EB0"}, [], "ok"],
)
def test_2xx_without_key_id_is_unexpected_not_retried(body: object) -> None:
    outcome = classify_send_response(201, body)
    assert outcome.kind is K.PERMANENT
    assert outcome.code == "unexpected_response"
    assert not outcome.retryable
    assert outcome.outcome_unknown  # the gateway accepted *something*: may have been sent
    assert outcome.message_id is None


# (status, body, kind, code, connection_problem, outcome_unknown)
TABLE = [
    pytest.param(
        400,
        err(
            400,
            "Bad Request",
            [{"jid": "5511900000000@s.whatsapp.net", "exists": False, "number": "5511900000000"}],
        ),
        K.NOT_ON_WHATSAPP,
        "not_on_whatsapp",
        False,
        False,
        id="not-on-whatsapp",
    ),
    pytest.param(
        400,
        err(400, "Bad Request", [['instance requires property "text"']]),
        K.PERMANENT,
        "schema_error",
        False,
        False,
        id="schema-error-v1-body-to-v2",
    ),
    pytest.param(
        400,
        err(400, "Bad Request", [['instance requires property "textMessage"']]),
        K.PERMANENT,
        "schema_error",
        False,
        False,
        id="schema-error-v2-body-to-v1",
    ),
    pytest.param(
        400,
        err(400, "Bad Request", ["Text is required"]),
        K.PERMANENT,
        "empty_text",
        False,
        False,
        id="empty-text",
    ),
    pytest.param(
        500,
        err(500, "Internal Server Error", "Connection Closed"),
        K.RETRYABLE,
        "connection_closed",
        True,
        False,
        id="connection-closed-500",
    ),
    pytest.param(
        400,
        err(400, "Bad Request", ["Error: Connection Closed"]),
        K.RETRYABLE,
        "connection_closed",
        True,
        False,
        id="connection-closed-400",
    ),
    pytest.param(
        400,
        err(400, "Bad Request", ["Error: Timed Out"]),
        K.RETRYABLE,
        "timed_out",
        False,
        True,
        id="timed-out",
    ),
    pytest.param(
        500,
        err(500, "Internal Server Error", "Cannot read properties of undefined (reading 'textMessage')"),
        K.RETRYABLE,
        "instance_not_loaded",
        True,
        False,
        id="instance-not-loaded",
    ),
    pytest.param(
        401,
        err(401, "Unauthorized", "Unauthorized"),
        K.MISCONFIGURED,
        "unauthorized",
        False,
        False,
        id="bad-key",
    ),
    pytest.param(
        404,
        err(404, "Not Found", ['The "acme" instance does not exist']),
        K.MISCONFIGURED,
        "instance_not_found",
        False,
        False,
        id="unknown-instance",
    ),
    pytest.param(
        404, None, K.MISCONFIGURED, "endpoint_not_found", False, False, id="404-without-evolution-body"
    ),
    pytest.param(502, None, K.RETRYABLE, "gateway_unavailable", False, True, id="502"),
    pytest.param(503, None, K.RETRYABLE, "gateway_unavailable", False, True, id="503"),
    pytest.param(504, None, K.RETRYABLE, "gateway_unavailable", False, True, id="504"),
    pytest.param(
        500,
        err(500, "Internal Server Error", "something else broke"),
        K.RETRYABLE,
        "gateway_error",
        False,
        True,
        id="other-500",
    ),
    pytest.param(500, None, K.RETRYABLE, "gateway_error", False, True, id="500-no-body"),
    pytest.param(
        403,
        err(403, "Forbidden", ["Missing global api key"]),
        K.MISCONFIGURED,
        "forbidden",
        False,
        False,
        id="403",
    ),
    pytest.param(408, None, K.RETRYABLE, "request_timeout", False, False, id="408"),
    pytest.param(429, None, K.RETRYABLE, "rate_limited", False, False, id="429"),
    pytest.param(
        400,
        err(400, "Bad Request", ["Something the gateway dislikes"]),
        K.PERMANENT,
        "bad_request",
        False,
        False,
        id="other-400",
    ),
    pytest.param(400, None, K.PERMANENT, "bad_request", False, False, id="400-no-body"),
    pytest.param(413, None, K.PERMANENT, "client_error", False, False, id="413"),
    pytest.param(422, err(422, "Unprocessable", ["x"]), K.PERMANENT, "client_error", False, False, id="422"),
    pytest.param(301, None, K.MISCONFIGURED, "redirected", False, False, id="redirect"),
    pytest.param(100, None, K.PERMANENT, "unexpected_response", False, False, id="1xx"),
]


@pytest.mark.parametrize(("status", "body", "kind", "code", "connection_problem", "outcome_unknown"), TABLE)
def test_failures_table(
    status: int, body: object, kind: OutcomeKind, code: str, connection_problem: bool, outcome_unknown: bool
) -> None:
    outcome = classify_send_response(status, body)
    assert outcome.kind is kind
    assert outcome.code == code
    assert outcome.retryable is (kind is K.RETRYABLE)
    assert outcome.connection_problem is connection_problem
    assert outcome.outcome_unknown is outcome_unknown
    assert outcome.http_status == status
    assert outcome.message
    assert outcome.message_id is None


def test_not_on_whatsapp_keeps_jid_and_hides_number() -> None:
    body = err(
        400, "Bad Request", [{"jid": "5511900000000@s.whatsapp.net", "exists": False, "number": "+55 11"}]
    )
    outcome = classify_send_response(400, body)
    assert outcome.remote_jid == "5511900000000@s.whatsapp.net"
    assert "5511900000000" not in outcome.message
    assert not outcome.retryable


def test_schema_error_message_names_the_property() -> None:
    outcome = classify_send_response(400, err(400, "Bad Request", [['instance requires property "text"']]))
    assert 'instance requires property "text"' in outcome.message


def test_messages_redact_phone_numbers_and_are_bounded() -> None:
    outcome = classify_send_response(400, err(400, "Bad Request", ["bad number 5511987654321 " + "x" * 1000]))
    assert "5511987654321" not in outcome.message
    assert len(outcome.message) <= 300


def test_top_level_message_is_understood() -> None:
    outcome = classify_send_response(500, {"message": "Connection Closed"})
    assert outcome.code == "connection_closed"


@pytest.mark.parametrize(
    ("kind", "code", "outcome_unknown"),
    [
        (TRANSPORT_READ_TIMEOUT, "gateway_timeout", True),
        (TRANSPORT_DEADLINE, "gateway_timeout", True),
        (TRANSPORT_CONNECT_TIMEOUT, "gateway_timeout", False),
        (TRANSPORT_POOL_TIMEOUT, "gateway_timeout", False),
        (TRANSPORT_CONNECT_ERROR, "transport_error", False),
        (TRANSPORT_READ_ERROR, "transport_error", True),
        (TRANSPORT_PROTOCOL_ERROR, "transport_error", True),
        ("something_new", "transport_error", True),
    ],
)
def test_transport_errors_are_retryable(kind: str, code: str, outcome_unknown: bool) -> None:
    outcome = classify_transport_error(kind, "boom")
    assert outcome.kind is K.RETRYABLE
    assert outcome.retryable
    assert outcome.code == code
    assert outcome.outcome_unknown is outcome_unknown
    assert outcome.http_status is None
    assert not outcome.connection_problem
    assert kind in outcome.message


def test_outcome_is_frozen() -> None:
    outcome = classify_send_response(201, V2_SUCCESS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.code = "x"  # type: ignore[misc]


def test_kinds_are_strings() -> None:
    assert str(K.SENT) == "sent"
    assert {k.value for k in K} == {"sent", "not_on_whatsapp", "retryable", "permanent", "misconfigured"}

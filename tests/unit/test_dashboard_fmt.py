"""The dashboard's pt-BR words that depend on a count or on what an admin action was about."""

from __future__ import annotations

from billing.dashboard import fmt

QUEUE = "5f0c1e2a-0000-4000-8000-000000000001"
TEMPLATE = "9a1b2c3d-0000-4000-8000-000000000002"


def test_counters_agree_with_their_number() -> None:
    assert [fmt.counted(n, "failed") for n in (0, 1, 2)] == ["falharam", "falhou", "falharam"]
    assert [fmt.counted(n, "pending") for n in (1, 3)] == ["pendente", "pendentes"]
    assert fmt.counted(1, "unknown") == "unknown"
    assert [fmt.plural(n, "linha", "linhas") for n in (0, 1, 1000)] == ["linhas", "linha", "linhas"]


def test_an_admin_actions_target_reads_in_portuguese() -> None:
    names = {TEMPLATE: "Lembrete"}
    assert [
        fmt.action_target("settings.hours", "hours", names),
        fmt.action_target("template.change", TEMPLATE, names),
        fmt.action_target("template.default", QUEUE, names),
        fmt.action_target("api_key.revoke", QUEUE, names),
        fmt.action_target("api_key.create", "ERP (bk_12345)", names),
        fmt.action_target("campaign.send", QUEUE, names),
        fmt.action_target("queue.cancel", f"{QUEUE} (1)", names),
        fmt.action_target("queue.cancel", f"{QUEUE} (1200)", names),
        fmt.action_target("user.invite", "bia@loja.example", names),
    ] == [
        "horário comercial",
        "template «Lembrete»",
        "template 5f0c1e2a",
        "chave 5f0c1e2a",
        "chave «ERP» (bk_12345…)",
        "campanha 5f0c1e2a",
        "fila 5f0c1e2a (1 envio cancelado)",
        "fila 5f0c1e2a (1.200 envios cancelados)",
        "bia@loja.example",
    ]

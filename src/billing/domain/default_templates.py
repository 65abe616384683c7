"""Default pt-BR templates of a new tenant, one per type, each with two variations (anti-ban rotation).

They use only variables every well-formed contact has (``nome``, ``valor``, ``data_vencimento``) outside
conditionals, and the explicit booleans ``vence_hoje`` / ``vencida`` for the due-today wording.
"""

from __future__ import annotations

from billing.domain.types import TemplateType

DEFAULT_TEMPLATES: dict[TemplateType, tuple[str, str, list[str]]] = {
    TemplateType.OVERDUE: (
        "Cobrança em atraso",
        "Lembrete de fatura vencida",
        [
            "Olá, {{nome_cliente}}! Identificamos que a fatura de {{valor}}, com vencimento em "
            "{{data_vencimento}}, está em aberto{{#if dias_atraso}} há {{dias_atraso}} dia(s){{/if}}. "
            "Se já pagou, por favor desconsidere esta mensagem.",
            "{{nome_cliente}}, tudo bem? Consta em aberto a fatura de {{valor}} que "
            "{{#if vence_hoje}}vence hoje ({{data_vencimento}}){{else}}venceu em {{data_vencimento}}{{/if}}. "
            "Precisa de ajuda para regularizar? É só responder esta mensagem.",
        ],
    ),
    TemplateType.UPCOMING: (
        "Fatura a vencer",
        "Lembrete antes do vencimento",
        [
            "Olá, {{nome_cliente}}! {{#if vence_hoje}}Sua fatura de {{valor}} vence hoje "
            "({{data_vencimento}}).{{else}}Sua fatura de {{valor}} vence em {{data_vencimento}}"
            "{{#if dias_para_vencer}}, daqui a {{dias_para_vencer}} dia(s){{/if}}.{{/if}} "
            "Se já pagou, desconsidere.",
            "{{nome_cliente}}, passando para lembrar: a fatura de {{valor}} "
            "{{#if vence_hoje}}vence hoje{{else}}vence em {{data_vencimento}}{{/if}}. Qualquer dúvida, "
            "estamos à disposição.",
        ],
    ),
    TemplateType.NOTIFICATION: (
        "Aviso",
        "Aviso geral",
        [
            "Olá, {{nome_cliente}}! {{#if mensagem}}{{mensagem}}{{else}}Temos um aviso importante sobre "
            "sua conta. Em caso de dúvida, responda esta mensagem.{{/if}}",
            "{{nome_cliente}}, temos um aviso para você. {{#if mensagem}}{{mensagem}}{{else}}Há uma "
            "novidade importante sobre sua conta; responda esta mensagem se precisar de ajuda.{{/if}}",
        ],
    ),
}
"""type → (name, description, variations)."""

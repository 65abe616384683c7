"""Evolution API gateway: the HTTP client (:mod:`.client`) and an in-process simulator (:mod:`.simulator`).

The classification of answers is pure domain logic: :mod:`billing.domain.delivery`.
"""

from billing.gateway.client import WHATSAPP_NUMBERS_BATCH, EvolutionClient, GatewayError, GatewayFactory

__all__ = ["WHATSAPP_NUMBERS_BATCH", "EvolutionClient", "GatewayError", "GatewayFactory"]

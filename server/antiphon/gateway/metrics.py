"""Prometheus counters of the gateway, labelled by tenant, on the server's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass
class GatewayMetrics:
    requests: Counter
    rejected: Counter
    usage: Counter
    cost: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        return cls(
            requests=Counter(
                "antiphon_gateway_requests", "Calls admitted by the gateway, by tenant", ["tenant"], registry=registry
            ),
            rejected=Counter(
                "antiphon_gateway_rejected",
                "Calls refused by the gateway, by tenant ('' before authentication) and reason "
                "(unauthenticated|permission_denied|rate_limited|budget|unavailable)",
                ["tenant", "reason"],
                registry=registry,
            ),
            usage=Counter(
                "antiphon_usage",
                "Metered usage by tenant and kind (input_tokens, output_tokens, stt_seconds, tts_seconds, "
                "tool_calls, tool_fuel, embeddings, stored_bytes)",
                ["tenant", "kind"],
                registry=registry,
            ),
            cost=Counter(
                "antiphon_usage_cost", "Cost of metered usage by tenant", ["tenant", "currency"], registry=registry
            ),
        )

"""Prometheus metrics, served on their own port (``telemetry.metrics_port``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    registry: CollectorRegistry
    turns: Counter
    tokens: Counter
    time_to_first_token: Histogram
    turn_duration: Histogram
    active_streams: Gauge
    rpc_errors: Counter
    voice_to_voice: Histogram
    barge_ins: Counter
    early_starts: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            turns=Counter(
                "antiphon_turns", "Agent turns by profile and end reason", ["agent", "reason"], registry=registry
            ),
            tokens=Counter(
                "antiphon_llm_tokens", "LLM tokens by direction (input|output)", ["direction"], registry=registry
            ),
            time_to_first_token=Histogram(
                "antiphon_time_to_first_token_seconds",
                "Turn start to the first agent_text sent",
                buckets=_LATENCY_BUCKETS_S,
                registry=registry,
            ),
            turn_duration=Histogram(
                "antiphon_turn_duration_seconds",
                "Turn start to turn_end",
                buckets=_LATENCY_BUCKETS_S,
                registry=registry,
            ),
            active_streams=Gauge("antiphon_active_streams", "Open Converse and Send streams", registry=registry),
            rpc_errors=Counter(
                "antiphon_rpc_errors", "RPCs ended with an error status", ["method", "code"], registry=registry
            ),
            voice_to_voice=Histogram(
                "antiphon_voice_to_voice_seconds",
                "End of the user's speech to the first audio of the answer sent",
                buckets=_LATENCY_BUCKETS_S,
                registry=registry,
            ),
            barge_ins=Counter("antiphon_barge_ins", "Answers the user talked over (cancelled)", registry=registry),
            early_starts=Counter(
                "antiphon_early_starts",
                "Answers started at the user's pause, by outcome (committed: the turn had ended; dropped)",
                ["outcome"],
                registry=registry,
            ),
        )

    def serve(self, host: str, port: int) -> Any:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the server (for shutdown)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

"""OpenTelemetry tracing with GenAI semantic-convention names.

Every turn is a trace: ``invoke_agent {profile}`` with a ``chat {model}``
child carrying ``gen_ai.usage.*``. Later layers (retrieval, tools, speech)
add their spans under the same turn span.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from antiphon.config import TelemetrySettings

log = logging.getLogger(__name__)
TRACER_NAME = "antiphon"

# GenAI semantic-convention attribute names (opentelemetry semconv, gen_ai.*).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION_ID = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_SEED = "gen_ai.request.seed"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"


def setup_tracing(settings: TelemetrySettings, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Install a tracer provider; returns it so shutdown can flush it. None: tracing off."""
    if exporter is None:
        if settings.traces == "none":
            return None
        if settings.traces == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
    provider = TracerProvider(resource=Resource.create({"service.name": "antiphon"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)

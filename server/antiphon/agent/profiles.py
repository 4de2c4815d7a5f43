"""Agent profiles: who the agent is (system prompt) and its generation defaults."""

from __future__ import annotations

from dataclasses import dataclass

from antiphon.config import GenerationSettings, Settings
from antiphon.errors import InvalidArgument, NotFound, quote
from antiphon.inference.llm import SamplingOptions

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64


@dataclass(frozen=True, slots=True)
class AgentProfile:
    name: str
    system_prompt: str
    defaults: SamplingOptions
    tools: tuple[str, ...] = ()
    subagents: tuple[str, ...] = ()
    mode: str = "react"
    max_steps: int = 4

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools or self.subagents)


@dataclass(frozen=True, slots=True)
class RequestedOptions:
    """Generation options as a client sent them; zero/None means "use the default"."""

    temperature: float = 0.0
    top_p: float = 0.0
    max_tokens: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    greedy: bool = False


class ProfileRegistry:
    def __init__(self, settings: Settings) -> None:
        gen = settings.generation
        self._limits = gen
        self._default = settings.default_agent
        self._profiles = {
            name: AgentProfile(
                name=name,
                system_prompt=p.system_prompt,
                defaults=SamplingOptions(
                    temperature=p.temperature or gen.temperature,
                    top_p=gen.top_p,
                    max_tokens=p.max_tokens or gen.max_tokens,
                ),
                tools=p.tool_names,
                subagents=p.subagent_names,
                mode=p.mode,
                max_steps=p.max_steps,
            )
            for name, p in settings.agents.items()
        }

    @property
    def names(self) -> list[str]:
        return sorted(self._profiles)

    def get(self, name: str) -> AgentProfile:
        profile = self._profiles.get(name or self._default)
        if profile is None:
            raise NotFound(f"agent_profile: no profile named {quote(name)} (known: {', '.join(self.names)})")
        return profile

    def resolve(self, profile: AgentProfile, req: RequestedOptions) -> SamplingOptions:
        """Validate a client's options and apply the profile's defaults."""
        return resolve_options(profile.defaults, req, self._limits)


def resolve_options(defaults: SamplingOptions, req: RequestedOptions, limits: GenerationSettings) -> SamplingOptions:
    if req.temperature != req.temperature or not 0 <= req.temperature <= 2:  # NaN fails the first test
        raise InvalidArgument(f"generation.temperature: must be in [0, 2], got {req.temperature}")
    if req.top_p != req.top_p or not 0 <= req.top_p <= 1:
        raise InvalidArgument(f"generation.top_p: must be in [0, 1], got {req.top_p}")
    if req.max_tokens > limits.max_tokens_limit:
        raise InvalidArgument(
            f"generation.max_tokens: {req.max_tokens} exceeds this server's limit of {limits.max_tokens_limit}"
        )
    if len(req.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"generation.stop: at most {MAX_STOP_STRINGS} stop strings, got {len(req.stop)}")
    for i, s in enumerate(req.stop):
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidArgument(f"generation.stop[{i}]: must be 1..{MAX_STOP_CHARS} characters")
    return SamplingOptions(
        temperature=req.temperature or defaults.temperature,
        top_p=req.top_p or defaults.top_p,
        max_tokens=req.max_tokens or defaults.max_tokens,
        seed=req.seed,
        stop=req.stop,
        greedy=req.greedy,
    )

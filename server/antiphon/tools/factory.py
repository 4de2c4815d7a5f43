"""Builds the tool sandbox and registry from the settings."""

from __future__ import annotations

from pathlib import Path

from antiphon.config import ConfigError, Settings
from antiphon.tools.capabilities import HttpPolicy
from antiphon.tools.registry import ToolRegistry
from antiphon.tools.sandbox import Sandbox


def build_tools(settings: Settings) -> tuple[Sandbox, ToolRegistry]:
    t = settings.tools
    try:
        policy = HttpPolicy(allow=t.http_allow_list, timeout_s=t.http_timeout_s)
    except ValueError as exc:
        raise ConfigError(f"tools.http_allow: {exc}") from None
    sandbox = Sandbox(cache_dir=Path(t.cache_dir), max_workers=t.workers)
    registry = ToolRegistry(
        sandbox,
        storage_dir=Path(t.storage_dir),
        tools_dir=Path(t.dir) if t.dir else None,
        default_http_policy=policy,
    )
    return sandbox, registry

from __future__ import annotations

from pathlib import Path

import pytest

from antiphon.config import ConfigError, load_settings


def test_defaults() -> None:
    s = load_settings(None, {})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 50051)
    assert s.default_agent in s.agents


def test_toml_then_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "antiphon.toml"
    path.write_text(
        '[server]\nport = 6000\nmax_streams = 9\n[agents.pirate]\nsystem_prompt = "Arr."\nmax_tokens = 32\n'
    )
    s = load_settings(path, {"ANTIPHON_SERVER_PORT": "7000", "ANTIPHON_LOG_FORMAT": "text"})
    assert s.server.port == 7000  # environment beats the file
    assert s.server.max_streams == 9  # the file beats the defaults
    assert s.log.format == "text"
    assert s.agents["pirate"].system_prompt == "Arr."


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("[generation]\nmax_tokens = 11\n")
    assert load_settings(None, {"ANTIPHON_CONFIG": str(path)}).generation.max_tokens == 11


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"ANTIPHON_SERVER_PORT": "70000"}, "server.port"),
        ({"ANTIPHON_SERVER_PORT": "abc"}, "server.port"),
        ({"ANTIPHON_SERVER_MAX_STREAMS": "1.5"}, "server.max_streams"),
        ({"ANTIPHON_GENERATION_TEMPERATURE": "0"}, "generation.temperature"),
        ({"ANTIPHON_GENERATION_MAX_TOKENS": "5000"}, "generation.max_tokens"),
        ({"ANTIPHON_TELEMETRY_TRACES": "jaeger"}, "telemetry.traces"),
        ({"ANTIPHON_LOG_LEVEL": "loud"}, "log.level"),
        ({"ANTIPHON_DEFAULT_AGENT": "ghost"}, "default_agent"),
        ({"ANTIPHON_SERVER_COLOUR": "red"}, "server.colour"),
    ],
)
def test_errors_name_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(None, env)


def test_bad_toml_and_unknown_section(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, {})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[serverz]\nport = 1\n")
    with pytest.raises(ConfigError, match="serverz"):
        load_settings(unknown, {})
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "missing.toml", {})

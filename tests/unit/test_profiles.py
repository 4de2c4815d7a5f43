from __future__ import annotations

import pytest

from antiphon.agent.profiles import ProfileRegistry, RequestedOptions
from antiphon.config import load_settings
from antiphon.errors import InvalidArgument, NotFound


def test_defaults_and_overrides() -> None:
    reg = ProfileRegistry(load_settings(None, {}))
    concise = reg.get("concise")
    assert concise.defaults.max_tokens == 64
    resolved = reg.resolve(concise, RequestedOptions(max_tokens=10, seed=3, stop=("\n",)))
    assert (resolved.max_tokens, resolved.seed, resolved.stop) == (10, 3, ("\n",))
    assert resolved.temperature == pytest.approx(0.3)
    assert reg.get("").name == "assistant"


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(NotFound, match="assistant"):
        ProfileRegistry(load_settings(None, {})).get("nope")


def test_nan_temperature_is_rejected() -> None:
    reg = ProfileRegistry(load_settings(None, {}))
    with pytest.raises(InvalidArgument, match="temperature"):
        reg.resolve(reg.get(""), RequestedOptions(temperature=float("nan")))

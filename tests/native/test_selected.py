"""The process runs the implementation its environment asks for: twins under ANTIPHON_NO_EXTENSIONS=1."""

from __future__ import annotations

import os

import pytest

from antiphon.native import framing, g711, upsample, vad

MODULES = {"g711": g711, "framing": framing, "vad": vad, "upsample": upsample}


def test_every_native_module_uses_the_implementation_asked_for() -> None:
    if os.environ.get("ANTIPHON_NO_EXTENSIONS") == "1":
        expected = "python"
    elif os.environ.get("ANTIPHON_REQUIRE_EXTENSIONS") == "1":
        expected = "cython"
    else:
        pytest.skip("neither ANTIPHON_NO_EXTENSIONS=1 nor ANTIPHON_REQUIRE_EXTENSIONS=1 is set")
    assert {name: m.IMPLEMENTATION for name, m in MODULES.items()} == dict.fromkeys(MODULES, expected)

"""Load a native extension or its pure-Python twin for the parametrised ingest tests."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

BUILD_HINT = "build it: make build, or python setup.py build_ext --inplace"


def load_extension(name: str) -> ModuleType:
    """The built Cython module; skip if absent, unless ANTIPHON_REQUIRE_EXTENSIONS=1 (CI)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        if os.environ.get("ANTIPHON_REQUIRE_EXTENSIONS") == "1":
            pytest.fail(f"{name} is not built but ANTIPHON_REQUIRE_EXTENSIONS=1 ({BUILD_HINT})")
        pytest.skip(f"{name} is not built ({BUILD_HINT})")


def pick(request: pytest.FixtureRequest, extension: str, twin: str) -> ModuleType:
    return load_extension(extension) if request.param == "cython" else importlib.import_module(twin)

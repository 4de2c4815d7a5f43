"""Fixtures for the native-module tests: every test runs on both implementations."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from antiphon.native import _g711_py

EXTENSION = "antiphon.native._g711"
BUILD_HINT = "build it: make build, or python setup.py build_ext --inplace"


def load_extension() -> ModuleType:
    """The built Cython module; skip if absent, unless ANTIPHON_REQUIRE_EXTENSIONS=1 (CI)."""
    try:
        return importlib.import_module(EXTENSION)
    except ModuleNotFoundError as exc:
        if exc.name != EXTENSION:
            raise
        if os.environ.get("ANTIPHON_REQUIRE_EXTENSIONS") == "1":
            pytest.fail(f"{EXTENSION} is not built but ANTIPHON_REQUIRE_EXTENSIONS=1 ({BUILD_HINT})")
        pytest.skip(f"{EXTENSION} is not built ({BUILD_HINT})")


@pytest.fixture(params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The Cython extension and the pure-Python twin, in turn."""
    return load_extension() if request.param == "cython" else _g711_py


@pytest.fixture
def cython_impl() -> ModuleType:
    return load_extension()


@pytest.fixture
def python_impl() -> ModuleType:
    return _g711_py

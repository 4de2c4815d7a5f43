"""Fixtures for tests against the real model and real server processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from antiphon.app import App, open_llm
from antiphon.inference.llm import LLM
from antiphon.inference.prepare_llm import is_llm_prepared
from tests.conftest import test_settings

REPO = Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    path = Path(os.environ.get("ANTIPHON_MODELS_DIR", "var/models"))
    return path if path.is_absolute() else REPO / path


def require_model() -> Path:
    path = models_dir()
    if not is_llm_prepared(path):
        message = f"the LLM is not prepared in {path}: run `make models`"
        if os.environ.get("ANTIPHON_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
async def real_llm() -> AsyncIterator[LLM]:
    path = require_model()
    llm = await open_llm(test_settings(models={"dir": str(path)}))
    try:
        yield llm
    finally:
        await llm.aclose()


@pytest.fixture
async def real_app(real_llm: LLM) -> AsyncIterator[App]:
    app = App(test_settings(models={"dir": str(models_dir())}), llm=_Unclosable(real_llm))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=2)


class _Unclosable(LLM):
    """Shares one loaded model across tests: App.stop() must not close it."""

    def __init__(self, inner: LLM) -> None:
        self._inner = inner

    @property
    def description(self):  # type: ignore[no-untyped-def]
        return self._inner.description

    def count_tokens(self, messages):  # type: ignore[no-untyped-def]
        return self._inner.count_tokens(messages)

    def chat(self, messages, options):  # type: ignore[no-untyped-def]
        return self._inner.chat(messages, options)

    async def aclose(self) -> None:
        return None

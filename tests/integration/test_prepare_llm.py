"""`antiphon models prepare` for the LLM: the prepared model's layout, and that preparing again is a no-op."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from antiphon.inference.prepare_llm import (
    LLM_MODEL_NAME,
    MARKER_NAME,
    is_llm_prepared,
    llm_model_dir,
    prepare_llm,
)
from tests.integration.conftest import REPO, require_model


def test_model_dir_layout(tmp_path: Path) -> None:
    assert llm_model_dir(tmp_path) == tmp_path / "llm" / LLM_MODEL_NAME
    assert not is_llm_prepared(tmp_path)


def test_importing_does_not_pull_torch() -> None:
    # The server imports this module; torch/transformers belong to `models prepare` only.
    heavy = "{'torch', 'transformers', 'gguf', 'onnxruntime_genai'}"
    code = f"import sys, antiphon.inference.prepare_llm; print(sorted({heavy} & set(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(REPO / "server"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    assert out.stdout.strip() == "[]"


@pytest.mark.model
def test_prepared_model_has_marker_and_files() -> None:
    model_dir = llm_model_dir(require_model())
    marker = json.loads((model_dir / MARKER_NAME).read_text())
    assert marker["model"] == LLM_MODEL_NAME
    assert marker["precision"] == "int8"
    assert len(marker["source"]["sha256"]) == 64
    assert "Paris" in marker["verify"]["check"]
    for name in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (model_dir / name).is_file(), name


@pytest.mark.model
def test_genai_config_sets_intra_op_threads() -> None:
    model_dir = llm_model_dir(require_model())
    config = json.loads((model_dir / "genai_config.json").read_text())
    threads = config["model"]["decoder"]["session_options"]["intra_op_num_threads"]
    assert threads == json.loads((model_dir / MARKER_NAME).read_text())["threads"]


@pytest.mark.model
def test_chat_template_renders_chatml() -> None:
    import onnxruntime_genai as og

    model_dir = llm_model_dir(require_model())
    tokenizer = og.Tokenizer(og.Model(str(model_dir)))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.model
def test_second_prepare_is_a_no_op() -> None:
    models = require_model()
    model_dir = llm_model_dir(models)
    marker_path = model_dir / MARKER_NAME
    threads = json.loads(marker_path.read_text())["threads"]
    before = (model_dir.stat().st_mtime_ns, marker_path.stat().st_mtime_ns, marker_path.read_bytes())
    assert prepare_llm(models, threads=threads, progress=False) == model_dir
    assert (model_dir.stat().st_mtime_ns, marker_path.stat().st_mtime_ns, marker_path.read_bytes()) == before

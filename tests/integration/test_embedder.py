"""The real embedder (int8 all-MiniLM-L6-v2 on ONNX Runtime), and memory search over its vectors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from antiphon.context.memory import Document, MemoryStore
from antiphon.context.search_plan import SearchPlan
from antiphon.errors import ModelMissing, Unavailable
from antiphon.gateway.principal import Principal
from antiphon.inference.embedder import OnnxEmbedder
from antiphon.inference.prepare_embedder import (
    EMBEDDER_MODEL_NAME,
    embedder_model_dir,
    is_embedder_prepared,
    prepare_embedder,
)
from antiphon.inference.prepare_llm import MARKER_NAME
from tests.integration.conftest import REPO, models_dir


def require_embedder() -> Path:
    path = models_dir()
    if not is_embedder_prepared(path):
        message = f"the embedder is not prepared in {path}: run `antiphon models prepare`"
        if os.environ.get("ANTIPHON_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    return OnnxEmbedder.from_models_dir(require_embedder())


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    memory = MemoryStore()
    yield memory
    await memory.aclose()


# (anchor, paraphrase, unrelated): measured 0.61-0.83 for pairs, -0.04-0.07 for unrelated.
TRIPLES = [
    (
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar in front of an audience.",
        "The stock market closed lower on Friday.",
    ),
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
    (
        "The patient was prescribed antibiotics for a bacterial infection.",
        "The doctor gave her medicine to treat the infection caused by bacteria.",
        "We are repainting the living room a pale shade of blue.",
    ),
]


def test_model_dir_layout(tmp_path: Path) -> None:
    assert embedder_model_dir(tmp_path) == tmp_path / "embedder" / EMBEDDER_MODEL_NAME
    assert not is_embedder_prepared(tmp_path)
    with pytest.raises(ModelMissing, match="models prepare"):
        OnnxEmbedder.from_models_dir(tmp_path)


def test_server_modules_do_not_import_torch() -> None:
    # The server uses onnxruntime, tokenizers and numpy; torch/transformers belong to `models prepare`.
    modules = "antiphon.inference.prepare_embedder, antiphon.inference.embedder, antiphon.context.memory"
    code = f"import sys, {modules}; print(sorted({{'torch', 'transformers'}} & set(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(REPO / "server"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    assert out.stdout.strip() == "[]"


def test_prepared_model_has_marker_and_files() -> None:
    model_dir = embedder_model_dir(require_embedder())
    marker = json.loads((model_dir / MARKER_NAME).read_text())
    assert (marker["model"], marker["precision"], marker["dimensions"]) == (EMBEDDER_MODEL_NAME, "int8", 384)
    assert marker["verify"]["int8_vs_fp32_cosine_min"] >= 0.98
    assert marker["verify"]["fp32_vs_torch_cosine_min"] >= 0.999
    assert len(marker["source"]["sha256"]) == 64
    for name in ("model.onnx", "tokenizer.json", "embedder.json"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "model.onnx").stat().st_size < 30_000_000  # int8, not the 90 MB fp32


def test_preparing_again_is_a_no_op() -> None:
    path = require_embedder()
    marker = embedder_model_dir(path) / MARKER_NAME
    before = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert prepare_embedder(path, progress=False) == embedder_model_dir(path.resolve())
    assert time.perf_counter() - start < 5  # hashes the source, rebuilds nothing
    assert marker.stat().st_mtime_ns == before


def test_vectors_are_unit_length_float32(embedder: OnnxEmbedder) -> None:
    texts = ["short", "a somewhat longer sentence about nothing in particular", "word " * 2000]  # last one truncates
    vectors = embedder.embed_sync(texts)
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert embedder.embed_sync([]).shape == (0, 384)
    assert (embedder.name, embedder.dimensions) == (EMBEDDER_MODEL_NAME, 384)


def test_related_sentences_score_above_unrelated(embedder: OnnxEmbedder) -> None:
    vectors = embedder.embed_sync([text for triple in TRIPLES for text in triple])
    related = [float(vectors[i] @ vectors[i + 1]) for i in range(0, len(vectors), 3)]
    unrelated = [float(vectors[i] @ vectors[i + 2]) for i in range(0, len(vectors), 3)]
    assert all(0.5 <= s <= 0.95 for s in related), related
    assert all(-0.15 <= s <= 0.2 for s in unrelated), unrelated
    assert min(related) > max(unrelated) + 0.3


def test_batching_does_not_change_the_vectors(embedder: OnnxEmbedder) -> None:
    texts = [text for triple in TRIPLES for text in triple]
    together = embedder.embed_sync(texts)
    alone = np.stack([embedder.embed_sync([t])[0] for t in texts])
    # int8 activations are quantized per batch, so a text's neighbours move it a little.
    assert np.min(np.sum(together * alone, axis=1)) > 0.98


async def test_async_embed_matches_sync_and_closes(tmp_path: Path) -> None:
    own = OnnxEmbedder.from_models_dir(require_embedder())
    texts = [t for triple in TRIPLES for t in triple] * 3
    assert np.allclose(await own.embed(texts), own.embed_sync(texts), atol=1e-6)
    both = await asyncio.gather(own.embed(texts[:5]), own.embed(texts[5:]))  # callers take turns per batch
    assert np.allclose(np.concatenate(both), own.embed_sync(texts[:5] + texts[5:]), atol=0.05)
    await own.aclose()
    with pytest.raises(Unavailable):
        await own.embed(["late"])


# (id, labels, text): a small knowledge base with three audiences.
KNOWLEDGE = [
    ("kb-wifi", "public", "The office wifi password is printed on the card at the reception desk."),
    ("kb-parking", "public", "Visitors can park in the underground garage on levels minus one and minus two."),
    ("kb-lunch", "public", "The canteen serves lunch from half past eleven until two in the afternoon."),
    ("kb-printer", "public", "To print, send the document to the queue named office-printer and badge in."),
    ("kb-holidays", "public", "The office is closed between Christmas and New Year."),
    ("kb-vpn", "eng", "Engineers connect to the staging cluster through the VPN with their hardware key."),
    ("kb-deploy", "eng", "Production deploys happen on Tuesdays and Thursdays after the test suite passes."),
    ("kb-oncall", "eng", "The on-call engineer must acknowledge a page within fifteen minutes."),
    ("kb-review", "eng", "Every pull request needs one approving code review before merging."),
    ("kb-db", "eng", "Database migrations run in a maintenance window on Sunday night."),
    ("hr-salary", "hr", "Salary reviews take place every April and raises apply from May."),
    ("hr-leave", "hr", "Employees have twenty-eight days of paid annual leave per year."),
    ("hr-sick", "hr", "Report a sick day to your manager before ten in the morning."),
    ("hr-parental", "hr", "Parents receive sixteen weeks of paid parental leave."),
    ("hr-pension", "hr", "The company pays five percent of salary into the pension plan."),
    ("fin-budget", "finance", "The marketing budget for next year was cut by twenty percent."),
    ("fin-acquire", "finance", "The board approved the acquisition of a small robotics startup."),
    ("fin-runway", "finance", "At the current burn rate the company has eighteen months of runway."),
    ("fin-audit", "finance", "The external audit of last year's accounts starts in March."),
    ("fin-layoffs", "finance", "A reduction of the sales team by ten people is planned for the autumn."),
]


async def test_end_to_end_memory_search_with_real_embeddings(embedder: OnnxEmbedder, store: MemoryStore) -> None:
    writer = Principal("acme", "admin", frozenset(), frozenset({"public", "eng", "hr", "finance"}))
    documents = [Document(doc_id, text, frozenset({label})) for doc_id, label, text in KNOWLEDGE]
    await store.put(writer, documents, await embedder.embed([d.text for d in documents]))
    employee = Principal("acme", "ann", frozenset(), frozenset({"public", "hr"}))
    secret = {doc_id for doc_id, label, _ in KNOWLEDGE if label not in employee.labels}
    questions = [
        ("How many vacation days do I get?", "hr-leave"),
        ("Where do guests leave their car?", "kb-parking"),
        ("When is the cafeteria open for lunch?", "kb-lunch"),
        ("When will my pay be reviewed?", "hr-salary"),
    ]
    for question, expected in questions:
        query = (await embedder.embed([question]))[0]
        for force in (SearchPlan.EXACT, SearchPlan.HNSW_FILTERED, None):
            result = await store.search(employee, query, top_k=10, force_plan=force)
            found = [hit.document.id for hit in result.hits]
            assert found[0] == expected, (question, force, found[:3])
            assert not secret & set(found)
            assert result.visible == 10
    # Finance sees its own document for a finance question; the employee never does.
    query = (await embedder.embed(["How long can the company last with its current spending?"]))[0]
    finance = Principal("acme", "cfo", frozenset(), frozenset({"finance"}))
    assert (await store.search(finance, query, top_k=1)).hits[0].document.id == "fin-runway"
    assert "fin-runway" not in [h.document.id for h in (await store.search(employee, query, top_k=20)).hits]
    # Another tenant with the same labels sees nothing of acme.
    stranger = Principal("globex", "eve", frozenset(), frozenset({"public", "hr", "finance", "eng"}))
    assert (await store.search(stranger, query, top_k=20)).hits == ()

"""Memory search: the planner vs hnswlib's `filter=` alone vs an exact scan, and embedder speed.

    python bench/bench_memory.py [--models-dir var/models] [--docs 10000] [--queries 200] [--json out.json]

Documents are real sentences (docstrings of the standard library and the
installed packages), embedded with the prepared int8 embedder; sentences and
vectors are cached under /tmp/antiphon-bench-memory, so reruns skip the
embedding (100k sentences took ~5 min on 2 busy cores). Each document gets
nested ACL labels so that one principal sees 100%, 50%, ... 0.1% of the
tenant, plus a two-label principal (two independent 10% labels).

Columns: the plan the planner chose, the first query's ms (it builds the
label's vector block), p50/p99 ms of the whole `search_sync` call for the
planner ("plan"), a forced filtered graph search with our filter ("filt"),
hnswlib with a Python set lookup as `filter=` at ef=64 ("naive", 40 queries)
and a forced exact scan ("exact"); recall@10 against the exact answer.

At 100k on this 2-core VM the crossover between an exact scan over a
contiguous label block and a filtered walk was ~20k vectors (both ~2 ms), so
PlannerConfig.exact_max_rows = 20_000; below 5% visible a walk is always the
slower one (exact_max_fraction = 0.05 for tenants past 400k).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, pct, print_table, write_json
from antiphon.context.memory import Document, MemoryConfig, MemoryStore
from antiphon.context.search_plan import PlannerConfig, SearchPlan
from antiphon.gateway.principal import Principal
from antiphon.inference.embedder import EmbedderOptions, OnnxEmbedder

T = TypeVar("T")
CACHE = Path("/tmp/antiphon-bench-memory")
MAX_SENTENCES = 120_000
TENANT = "bench"
# Nested labels: a document whose random rank is below fraction * n carries the label.
FRACTIONS = {"all": 1.0, "p50": 0.5, "p20": 0.2, "p10": 0.1, "p5": 0.05, "p1": 0.01, "p01": 0.001}
TWO_LABELS = ("h10a", "h10b")  # two independent 10% labels: ~19% visible, through the mask path
K = 10
NAIVE_QUERIES = 40  # hnswlib with a Python lambda costs up to ~100 ms a query at 0.1%


def sentences() -> list[str]:
    """Up to MAX_SENTENCES distinct English sentences from docstrings (deterministic order, cached)."""
    path = CACHE / "sentences.json"
    if path.is_file():
        cached: list[str] = json.loads(path.read_text())
        return cached
    split = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
    word = re.compile(r"[A-Za-z][a-z]+")
    skip = re.compile(r">>>|::|^\s*[-=*]{3,}")
    seen: set[str] = set()
    out: list[str] = []
    for text in _docstrings():
        for paragraph in re.split(r"\n\s*\n", text):
            if skip.search(paragraph):
                continue
            for sentence in split.split(" ".join(paragraph.split())):
                words = sentence.split()
                if not 6 <= len(words) <= 40 or not sentence[0].isupper() or sentence[-1] not in ".!?":
                    continue
                if len(word.findall(sentence)) < 0.7 * len(words) or sentence.lower() in seen:
                    continue
                seen.add(sentence.lower())
                out.append(sentence)
                if len(out) >= MAX_SENTENCES:
                    return _cache_sentences(path, out)
    return _cache_sentences(path, out)


def _docstrings() -> Iterator[str]:
    paths = sysconfig.get_paths()
    for root in (Path(paths["stdlib"]), Path(paths["purelib"])):
        for file in sorted(root.rglob("*.py")):
            if {"test", "tests"} & set(file.parts):
                continue
            try:
                tree = ast.parse(file.read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield doc


def _cache_sentences(path: Path, out: list[str]) -> list[str]:
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def embeddings(embedder: OnnxEmbedder, texts: list[str]) -> npt.NDArray[np.float32]:
    key = hashlib.sha256(("\n".join(texts) + embedder.name).encode()).hexdigest()[:16]
    path = CACHE / f"vectors-{len(texts)}-{key}.npy"
    if path.is_file():
        cached: npt.NDArray[np.float32] = np.load(path)
        return cached
    start = time.perf_counter()
    out = np.empty((len(texts), embedder.dimensions), dtype=np.float32)
    for i in range(0, len(texts), 1024):
        out[i : i + 1024] = embedder.embed_sync(texts[i : i + 1024])
        print(f"\rembedding {min(i + 1024, len(texts))}/{len(texts)}", end="", file=sys.stderr)
    print(f"\rembedded {len(texts)} in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    np.save(path, out)
    return out


def labels_for(n: int, seed: int) -> list[frozenset[str]]:
    rng = np.random.default_rng(seed)
    rank, rank_a, rank_b = rng.permutation(n), rng.permutation(n), rng.permutation(n)
    out = []
    for i in range(n):
        labels = {name for name, fraction in FRACTIONS.items() if rank[i] < max(1, round(fraction * n))}
        labels |= {name for name, r in zip(TWO_LABELS, (rank_a[i], rank_b[i]), strict=True) if r < n // 10}
        out.append(frozenset(labels))
    return out


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """(milliseconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("var/models"))
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-max-rows", type=int, default=PlannerConfig().exact_max_rows)
    parser.add_argument("--ef-per-result", type=float, default=PlannerConfig().ef_per_result)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.docs + args.queries > MAX_SENTENCES:
        parser.error(f"--docs + --queries must be <= {MAX_SENTENCES}")
    results: dict[str, Any] = {"docs": args.docs, "queries": args.queries}

    embedder = OnnxEmbedder.from_models_dir(args.models_dir, EmbedderOptions(threads=2))
    texts = sentences()
    order = np.random.default_rng(0).permutation(len(texts))[: args.docs + args.queries]
    picked = [texts[i] for i in order]
    vectors = embeddings(embedder, picked)
    docs_v, queries_v = vectors[: args.docs], vectors[args.docs :]
    throughput(args.models_dir, picked[:1024], results)

    labels = labels_for(args.docs, seed=1)
    planner = PlannerConfig(exact_max_rows=args.exact_max_rows, ef_per_result=args.ef_per_result)
    store = MemoryStore(MemoryConfig(planner=planner, index_threads=2, max_documents_per_put=4096))
    owner = Principal(TENANT, "bench", frozenset(), frozenset().union(*labels))
    documents = [Document(f"d{i}", picked[i], labels[i]) for i in range(args.docs)]
    build_ms = 0.0
    for i in range(0, args.docs, 4096):
        ms, _ = timed(store.put_sync, owner, documents[i : i + 4096], docs_v[i : i + 4096])
        build_ms += ms
    print(f"index build: {args.docs} documents in {build_ms / 1000:.1f}s", file=sys.stderr)
    results["build_s"] = round(build_ms / 1000, 1)
    index = store._tenants[TENANT].state.index  # the raw hnswlib index, for the naive baseline

    rows, table = [], []
    cases = [(name, frozenset({name})) for name in FRACTIONS] + [("h10a+h10b", frozenset(TWO_LABELS))]
    for name, held in cases:
        principal = Principal(TENANT, "bench", frozenset(), held)
        visible = np.array([i for i in range(args.docs) if labels[i] & held], dtype=np.int64)
        scores = docs_v[visible] @ queries_v.T
        top = np.argsort(-scores, axis=0)[:K].T
        truth = [set(visible[t].tolist()) for t in top]
        row: dict[str, Any] = {"case": name, "visible": len(visible), "fraction": len(visible) / args.docs}
        plan_used, first_ms = "", 0.0
        for method, force in (
            ("planner", None),
            ("hnsw_filter", SearchPlan.HNSW_FILTERED),
            ("exact", SearchPlan.EXACT),
        ):
            lat, recall = [], []
            for q, want in zip(queries_v, truth, strict=True):
                ms, result = timed(store.search_sync, principal, q, top_k=K, force_plan=force)
                lat.append(ms)
                got = {int(h.document.id[1:]) for h in result.hits}
                recall.append(len(got & want) / max(1, len(want)))
                if force is None and not plan_used:
                    first_ms = ms  # includes building the label's block, if it gets one
                if force is None:
                    plan_used = f"{result.plan}" + (f" ef={result.ef}" if result.ef else "")
            row[method] = {"p50_ms": median(lat), "p99_ms": pct(lat, 99), "recall": float(np.mean(recall))}
        row["plan"], row["first_query_ms"] = plan_used, first_ms
        allowed = set(visible.tolist()).__contains__  # what a user of hnswlib would write
        index.set_ef(64)
        lat, recall = [], []
        for q, want in list(zip(queries_v, truth, strict=True))[:NAIVE_QUERIES]:
            k = min(K, len(visible))
            ms, (found, _) = timed(index.knn_query, q, k=k, num_threads=1, filter=allowed)
            lat.append(ms)
            recall.append(len(set(found[0].tolist()) & want) / max(1, len(want)))
        row["naive_filter"] = {"p50_ms": median(lat), "p99_ms": pct(lat, 99), "recall": float(np.mean(recall))}
        rows.append(row)
        table.append(
            [name, len(visible), row["plan"], first_ms]
            + [row[m][f] for m in ("planner", "hnsw_filter", "naive_filter", "exact") for f in ("p50_ms", "p99_ms")]
            + [row["planner"]["recall"], row["hnsw_filter"]["recall"], row["naive_filter"]["recall"]]
        )
    header = ["label", "visible", "plan (ours)", "1st", "plan p50", "plan p99", "filt p50", "filt p99"]
    header += ["naive p50", "naive p99", "exact p50", "exact p99", "plan R@10", "filt R@10", "naive R@10"]
    print_table(
        f"memory search, {args.docs} documents, top {K}, ms (exact_max_rows={planner.exact_max_rows})",
        header,
        table,
    )
    results["search"] = rows
    write_json(args.json, results)
    return 0


def throughput(models_dir: Path, texts: list[str], results: dict[str, Any]) -> None:
    """Sentences per second for calls of 1 and 64 texts, with 1 (the default) and 2 intra-op threads."""
    table = []
    words = round(float(np.mean([len(t.split()) for t in texts])), 1)
    for threads in (1, 2):
        embedder = OnnxEmbedder.from_models_dir(models_dir, EmbedderOptions(threads=threads))
        embedder.embed_sync(texts[:64])  # warm-up
        for batch, count in ((1, 200), (64, len(texts))):
            subset = texts[:count]
            start = time.perf_counter()
            for i in range(0, len(subset), batch):
                embedder.embed_sync(subset[i : i + batch])
            elapsed = time.perf_counter() - start
            table.append([threads, batch, count, words, len(subset) / elapsed, elapsed / len(subset) * 1000 * batch])
            results[f"embed_threads{threads}_batch{batch}_per_s"] = len(subset) / elapsed
    header = ["threads", "texts/call", "sentences", "words/sentence", "per s", "ms/call"]
    print_table("embedder (int8; a call's texts run in length-sorted batches of 16)", header, table)


if __name__ == "__main__":
    sys.exit(main())

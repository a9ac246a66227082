"""Vector search at scale: a million catalogue vectors, exact vs approximate.

Data: the real raw descriptors of ~1,270 shared photos (efficientnet_lite0 +
GeM, 1280-d; ``benchmarks/scale_features.py`` makes and caches them) are the
cluster seeds. For a dimension below 1280 they are first projected on their
top principal components (what a whitening/projection head does). Each
synthetic vector is a seed plus anisotropic Gaussian noise drawn with the
seeds' own covariance (so a cluster varies the way photos of that kind of
product vary), L2-normalised. Queries are fresh draws of the same process.

For each index kind it measures add throughput, build (training) time,
single-query search latency p50/p99 (one thread), recall@10 against exact
search, and memory per vector, side by side in one run on the same data.
Indexes are built with shoplens's own ``FaissIndex`` (the store's code path);
HNSW, which the store does not offer (it cannot delete in place), with FAISS
directly, for comparison.

    PYTHONPATH=src python benchmarks/scale.py --n 1000000 --dim 256 --kinds ivfsq8,ivfflat,hnsw
    PYTHONPATH=src python benchmarks/scale.py --n 1000000 --dim 1280 --kinds ivfsq8

Results are appended as JSON lines to ``$SHOPLENS_CACHE/bench/scale/results.jsonl``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import bench_cache
from harness import add_json_argument, rss_mib, write_result

from shoplens.store.vectors import FaissIndex

CACHE = bench_cache("scale")
SEEDS = CACHE / "real_lite0_gem.npz"
log = logging.getLogger("scale")


def _pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variances, components as rows), largest first."""
    w, v = np.linalg.eigh(x.T @ x / len(x))
    order = np.argsort(w)[::-1]
    return np.maximum(w[order], 1e-12), v[:, order].T


class Generator:
    """Clustered vectors around real descriptors, in a ``dim``-d space."""

    def __init__(self, dim: int, noise: float = 0.6, rank: int = 64) -> None:
        seeds = np.load(SEEDS)["vecs"].astype(np.float64)
        seeds /= np.linalg.norm(seeds, axis=1, keepdims=True)
        mean = seeds.mean(0)
        s, vt = _pca(seeds - mean)
        if dim < seeds.shape[1]:
            seeds = (seeds - mean) @ vt[:dim].T / np.sqrt(s[:dim] / s[0])  # whitening projection, like a head
            seeds /= np.linalg.norm(seeds, axis=1, keepdims=True)
            s, vt = _pca(seeds - seeds.mean(0))
        self.seeds = seeds.astype(np.float32)
        self.dim = seeds.shape[1]
        # noise with the seeds' covariance, top ``rank`` components, plus a small isotropic floor
        self.basis = (vt[:rank].T * np.sqrt(s[:rank])).astype(np.float32)
        self.noise = noise
        self.iso = 0.02 / np.sqrt(self.dim)

    def chunk(self, start: int, n: int, stream: int = 0, noise: float | None = None) -> np.ndarray:
        rng = np.random.default_rng([stream, start])
        idx = rng.integers(0, len(self.seeds), n)
        x = self.seeds[idx] + (self.noise if noise is None else noise) * rng.standard_normal((n, self.basis.shape[1]), dtype=np.float32) @ self.basis.T
        x += self.iso * rng.standard_normal((n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float16)  # stored as the store stores raw descriptors


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    best_d = np.full((len(queries), 0), np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(base), 100_000):
        chunk = base[start : start + 100_000].astype(np.float32)
        d = (queries**2).sum(1)[:, None] - 2 * queries @ chunk.T + (chunk**2).sum(1)[None, :]
        part = np.argpartition(d, k, axis=1)[:, :k]
        best_d = np.concatenate([best_d, np.take_along_axis(d, part, 1)], 1)
        best_i = np.concatenate([best_i, part + start], 1)
        keep = np.argsort(best_d, 1)[:, :k]
        best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_d, best_i


CPU_MS: list[float] = []


def latency(search, queries: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Wall-clock p50/p99 of single queries (one thread); CPU time per query goes to CPU_MS.

    On a shared machine wall time includes time the process waited for a
    core; the thread's CPU time does not, so both are reported.
    """
    faiss.omp_set_num_threads(1)
    search(queries[:5])  # warm
    times, found = [], []
    CPU_MS.clear()
    for q in queries:
        c0, t0 = time.thread_time(), time.perf_counter()
        found.append(search(q[None, :]))
        times.append((time.perf_counter() - t0) * 1000)
        CPU_MS.append((time.thread_time() - c0) * 1000)
    faiss.omp_set_num_threads(2)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), np.concatenate(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth)]))


def report(path: Path) -> None:
    """The results file as one markdown table."""
    cols = ["n", "dim", "noise", "query_noise", "kind", "nlist", "param", "value", "recall@10", "p50_ms", "p99_ms", "cpu_p50_ms", "cpu_p99_ms",
            "train_s", "add_per_s", "bytes_per_vector"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for line in path.read_text().splitlines():
        r = json.loads(line)
        r.setdefault("noise", 0.6)  # the first runs predate the option
        r.setdefault("query_noise", r["noise"])
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.2f}" if isinstance(v, float) and c.endswith("_ms") else ("" if v is None else str(v)))
        print("| " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--kinds", default="ivfsq8,ivfflat,hnsw")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.6, help="spread of each cluster (1.0: the seeds' own covariance)")
    ap.add_argument("--query-noise", type=float, default=None, help="spread of the queries around their seeds (default: --noise)")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobes", default="4,8,16,32,64")
    ap.add_argument("--efs", default="16,32,64,128")
    ap.add_argument("--flat-sample", type=int, default=100_000, help="exact-search latency is measured on this many vectors and scaled")
    ap.add_argument("--out", default=str(CACHE / "results.jsonl"))
    ap.add_argument("--report", action="store_true", help="print the results in --out as a markdown table and stop")
    add_json_argument(ap, "scale")
    args = ap.parse_args()
    if args.report:
        report(Path(args.out))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    faiss.omp_set_num_threads(2)

    t0 = time.perf_counter()
    gen = Generator(args.dim, noise=args.noise)
    base = np.empty((args.n, gen.dim), dtype=np.float16)
    for start in range(0, args.n, 50_000):
        base[start : start + 50_000] = gen.chunk(start, min(50_000, args.n - start))
    queries = gen.chunk(0, args.queries, stream=1, noise=args.query_noise).astype(np.float32)
    log.info("generated %d x %d in %.0f s", args.n, gen.dim, time.perf_counter() - t0)
    t0 = time.perf_counter()
    truth_d, truth = exact_knn(base, queries, 10)
    log.info("exact ground truth in %.0f s; mean 10-NN distance %.3f", time.perf_counter() - t0, float(np.sqrt(np.maximum(truth_d, 0)).mean()))
    ids = np.arange(args.n, dtype=np.int64)
    rows: list[dict[str, object]] = []
    common = {"n": args.n, "dim": gen.dim, "noise": args.noise, "query_noise": args.query_noise or args.noise, "queries": args.queries, "machine": f"{os.cpu_count()} cores, shared"}

    # exact search: measured on a sample, scaled linearly in n
    flat = FaissIndex(gen.dim)
    m = min(args.flat_sample, args.n)
    flat.add(ids[:m], base[:m].astype(np.float32))
    p50, p99, _ = latency(lambda q, ix=flat: ix.search(q, 10)[1], queries[:50])
    rows.append({**common, "kind": "flat", "measured_on": m, "p50_ms": p50 * args.n / m, "p99_ms": p99 * args.n / m,
                 "cpu_p50_ms": float(np.percentile(CPU_MS, 50)) * args.n / m,
                 "bytes_per_vector": 4 * gen.dim + 8, "recall@10": 1.0})
    log.info("flat: p50 %.1f ms (scaled from %d)", rows[-1]["p50_ms"], m)
    del flat
    gc.collect()

    for kind in args.kinds.split(","):
        gc.collect()
        before = rss_mib()
        t0 = time.perf_counter()
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(gen.dim, 32)
            index.hnsw.efConstruction = 80
            train_s = 0.0
        else:
            sample = base[np.random.default_rng(1).choice(args.n, min(args.n, 64 * args.nlist), replace=False)].astype(np.float32)
            index = FaissIndex.trained(kind, sample, {"nlist": args.nlist})
            train_s = time.perf_counter() - t0
            del sample
        t1 = time.perf_counter()
        for start in range(0, args.n, 100_000):
            chunk = base[start : start + 100_000].astype(np.float32)
            if kind == "hnsw":
                index.add(chunk)
            else:
                index.add(ids[start : start + 100_000], chunk)
        add_s = time.perf_counter() - t1
        mem = (rss_mib() - before) * 2**20 / args.n
        if kind != "hnsw":  # what the index file holds: codes, ids, direct map, centroids
            mem = faiss.serialize_index(index.index).nbytes / args.n
        log.info("%s: trained in %.0f s, added %d in %.0f s (%.0f/s), %.0f bytes/vector", kind, train_s, args.n, add_s, args.n / add_s, mem)
        sweep = [int(x) for x in (args.efs if kind == "hnsw" else args.nprobes).split(",")]
        for p in sweep:
            if kind == "hnsw":
                index.hnsw.efSearch = p
            else:
                index.nprobe = p

            def search(q: np.ndarray, ix=index) -> np.ndarray:  # type: ignore[no-untyped-def]
                return ix.search(q, 10)[1]

            p50, p99, found = latency(search, queries)
            rows.append({**common, "kind": kind, "param": ("efSearch" if kind == "hnsw" else "nprobe"), "value": p,
                         "nlist": None if kind == "hnsw" else index.params["nlist"], "train_s": round(train_s, 1),
                         "add_s": round(add_s, 1), "add_per_s": round(args.n / add_s), "p50_ms": round(p50, 3),
                         "p99_ms": round(p99, 3), "cpu_p50_ms": round(float(np.percentile(CPU_MS, 50)), 3), "cpu_p99_ms": round(float(np.percentile(CPU_MS, 99)), 3), "recall@10": round(recall(found, truth), 4), "bytes_per_vector": round(mem), "bytes_measured_as": "rss" if kind == "hnsw" else "index file"})
            log.info("%s %s=%d: recall@10 %.3f, p50 %.2f ms, p99 %.2f ms (cpu p50 %.2f ms)", kind, rows[-1]["param"], p, rows[-1]["recall@10"], p50, p99, rows[-1]["cpu_p50_ms"])
        del index
    with open(args.out, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    write_result("scale", rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

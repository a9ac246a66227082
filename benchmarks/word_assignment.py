"""Visual-word assignment of a query's SIFT descriptors: HNSW against exact matrix products.

The local-feature step assigns each RootSIFT descriptor of the query to its
nearest word of the 4,096-word generic vocabulary. This times, per photo
(grocery val photos, descriptors as the search extracts them), the HNSW
graph searched before (M 32, efSearch 32, one FAISS thread) and the exact
assignment (a BLAS product) three ways: one product on one BLAS thread (as
a search ran it before), the product split by rows over the assignment
threads, each on one BLAS thread (what :meth:`Vocabulary.assign` does now),
and, for reference, one product on OpenBLAS's own threads (which a search
avoids: they keep spinning and slow the next backbone pass); how often
HNSW's word is the exact one, and whether the split gives the same words.

    python benchmarks/word_assignment.py --photos 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows

from shoplens.imaging import load_image
from shoplens.local import vocabulary
from shoplens.local.features import FeatureExtractor, rootsift
from shoplens.local.vocabulary import Vocabulary
from shoplens.threads import blas_threads


def median_ms(fn: Callable[[np.ndarray], np.ndarray], descs: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    times, outs = [], []
    for d in descs:
        t = time.perf_counter()
        outs.append(fn(d))
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2), outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median of each method's rounds is reported")
    args = ap.parse_args()
    root = data_root() / "grocery"
    photos = [root / r["image"] for r in rows(root / "photos.csv") if r["split"] == "val"][: args.photos]
    extractor = FeatureExtractor()
    descs = [rootsift(extractor.extract(load_image(p, target_size=320)).sift) for p in photos]
    vocab = Vocabulary.generic()
    hnsw = faiss.IndexHNSWFlat(vocab.centroids.shape[1], 32)
    hnsw.hnsw.efSearch = 32
    hnsw.add(vocab.centroids)
    faiss.omp_set_num_threads(1)
    split_min_rows = vocabulary.PARALLEL_ASSIGN_MIN_ROWS

    def one_product(d: np.ndarray) -> np.ndarray:
        vocabulary.PARALLEL_ASSIGN_MIN_ROWS = 1 << 30
        try:
            return vocab.assign(d)[0][:, 0]
        finally:
            vocabulary.PARALLEL_ASSIGN_MIN_ROWS = split_min_rows

    rounds: dict[str, list[float]] = {"hnsw": [], "exact_one_product": [], "exact_split": [], "exact_openblas_threads": []}
    for _ in range(args.rounds):
        ms, approx = median_ms(lambda d: hnsw.search(d, 1)[1][:, 0], descs)
        rounds["hnsw"].append(ms)
        with blas_threads(1):  # as in a search
            ms, exact = median_ms(one_product, descs)
            rounds["exact_one_product"].append(ms)
            ms, split = median_ms(lambda d: vocab.assign(d)[0][:, 0], descs)
            rounds["exact_split"].append(ms)
        ms, _ = median_ms(one_product, descs)
        rounds["exact_openblas_threads"].append(ms)
    agree = float(np.mean(np.concatenate([a == b for a, b in zip(approx, exact)])))
    print(json.dumps({
        "photos": len(descs),
        "descriptors_per_photo_median": int(statistics.median(len(d) for d in descs)),
        "assignment_threads": vocabulary.ASSIGN_THREADS,
        "ms_per_photo_median": {k: statistics.median(v) for k, v in rounds.items()},
        "hnsw_agrees_with_exact": round(agree, 4),
        "split_gives_the_same_words": all(np.array_equal(a, b) for a, b in zip(split, exact)),
    }, indent=2))


if __name__ == "__main__":
    main()

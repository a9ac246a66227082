"""Local features on the grocery photos: global alone, local index alone, fused, fused + verification.

Queries are the ``val`` store photos (``--queries packages``: only those of
the Packages products; ``all``: fruit and vegetables too). The catalogue is
the 81 catalogue images, or those and the ``train`` store photos
(``--catalogue catalog+train``). Results are per product (an image's
product; a product counts once in a list).

    python benchmarks/local_features.py --queries packages --catalogue catalog
    python benchmarks/local_features.py --queries all --catalogue catalog+train

Global vectors and catalogue local features are cached under ``--cache``
(default ``~/.cache/shoplens/bench-local``); query features are extracted in
the run, so their time is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows

from shoplens.embed import Embedder, l2_normalize
from shoplens.imaging import load_image
from shoplens.local import LocalConfig, LocalFeatures, LocalIndex, Vocabulary, fuse
from shoplens.local.features import FeatureExtractor
from shoplens.models import create_model

LENGTHS = (1, 2, 3, 5, 10, 20, 30, 50)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def global_vectors(root: Path, paths: list[str], cache: Path, backbone: str) -> np.ndarray:
    """GeM of the backbone's s32 features, L2-normalised (the pipeline's default other_product embedding)."""
    file = cache / f"global-{backbone}-{_key(paths, Embedder.pooling)}.npy"
    if file.exists():
        return np.load(file)
    import torch

    model = create_model(backbone)
    embedder = Embedder("other_product", backbone, None)
    out = []
    for i in range(0, len(paths), 32):
        photos = [load_image(root / p, target_size=448) for p in paths[i:i + 32]]
        with torch.no_grad():
            out.append(l2_normalize(embedder.describe(model.encode(photos))))
    vecs = np.concatenate(out)
    np.save(file, vecs)
    return vecs


def local_features(root: Path, paths: list[str], cache: Path, config: LocalConfig) -> list[LocalFeatures]:
    ex = FeatureExtractor(config.max_side, config.max_keypoints, config.contrast_threshold)
    file = cache / f"local-{_key(paths, config.max_side, config.max_keypoints, config.contrast_threshold)}.npz"
    if file.exists():
        with np.load(file) as z:  # each z[key] reads the whole array: read each once
            ptr, xy, sift = z["ptr"], z["xy"], z["sift"]
        return [LocalFeatures(xy[a:b], sift[a:b]) for a, b in zip(ptr[:-1], ptr[1:])]
    feats = [ex.extract(load_image(root / p)) for p in paths]
    ptr = np.cumsum([0] + [len(f) for f in feats])
    np.savez(file, ptr=ptr, xy=np.concatenate([f.xy for f in feats]), sift=np.concatenate([f.sift for f in feats]))
    return feats


def product_ranking(image_ids: np.ndarray, product_of: np.ndarray) -> list[int]:
    seen: dict[int, None] = {}
    for i in image_ids:
        seen.setdefault(int(product_of[int(i)]), None)
    return list(seen)


def hit(ranking: list[int], truth: int, k: int) -> float:
    return float(truth in ranking[:k])


T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        t = time.perf_counter()
        out = fn(*args)
        self.ms.setdefault(name, []).append((time.perf_counter() - t) * 1000)
        return out

    def mean(self, name: str) -> float:
        return float(np.mean(self.ms[name])) if name in self.ms else float("nan")


def scale_test(index: LocalIndex, db_feats: list[LocalFeatures], queries: list[tuple[str, int]], root: Path,
               extractor: FeatureExtractor, sizes: list[int]) -> dict[int, float]:
    """Inverted-file scoring time per query at larger catalogue sizes (the images repeated).

    Uses the index's internals (encoding, postings) to avoid holding N images' keypoints.
    """
    if not sizes:
        return {}
    from shoplens.local.invfile import Postings

    encoded = [index._encode(f, 1) for f in db_feats]
    q_enc = [index._encode(extractor.extract(load_image(root / p)), index.config.query_assignments)
             for p, _ in queries[:20]]
    out: dict[int, float] = {}
    print("\nASMK scoring alone at larger sizes (ms per query, 20 queries):\n\n| images | ms | µs per image |\n|---|---|---|")
    for n in sizes:
        block = [encoded[i % len(encoded)] for i in range(n)]
        postings = Postings.build(block, index.vocabulary.size)
        df = np.bincount(np.concatenate([w for w, _ in block]), minlength=index.vocabulary.size)
        idf = np.log((n + 1.0) / (df + 1.0)).astype(np.float32)
        t = time.perf_counter()
        for w, sig in q_enc:
            postings.score(w, sig, idf[w], index._table)
        ms = (time.perf_counter() - t) * 1000 / len(q_enc)
        out[n] = ms
        print(f"| {n} | {ms:.1f} | {ms * 1000 / n:.1f} |")
        del postings, block
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", choices=("packages", "all"), default="packages")
    ap.add_argument("--catalogue", choices=("catalog", "catalog+train"), default="catalog")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--vocabulary", choices=("generic", "catalogue"), default="generic",
                    help="the vocabulary shipped with shoplens, or one trained on the catalogue images")
    ap.add_argument("--vocabulary-size", type=int, default=LocalConfig.vocabulary_size,
                    help="words of a vocabulary trained on the catalogue")
    ap.add_argument("--query-assignments", type=int, default=LocalConfig.query_assignments)
    ap.add_argument("--model", default=LocalConfig.model)
    ap.add_argument("--estimator", default=LocalConfig.estimator)
    ap.add_argument("--exhaustive", action="store_true",
                    help="also verify every catalogue image (the slow reference the index replaces)")
    ap.add_argument("--shortlist", type=int, default=LocalConfig.shortlist, help="fused shortlist length that is verified")
    ap.add_argument("--candidates", type=int, default=LocalConfig.candidates,
                    help="ids taken from each of the global and local lists")
    ap.add_argument("--fusion", default=LocalConfig.fusion, choices=("rrf", "score"))
    ap.add_argument("--weight", type=float, default=LocalConfig.fusion_weight, help="local list's share in the fusion")
    ap.add_argument("--min-inliers", type=int, default=LocalConfig.min_inliers)
    ap.add_argument("--gates", default="15,25,40", help="gates (top inlier count) to report for gated re-ranking")
    ap.add_argument("--sweep", action="store_true", help="also sweep fusion weights and methods (no verification)")
    ap.add_argument("--scale", default="", help="also time the ASMK scoring alone at these catalogue sizes "
                    "(comma-separated; the catalogue's images repeated), e.g. 2721,10000,30000")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "shoplens" / "bench-local")
    ap.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = ap.parse_args()

    root = data_root() / "grocery"
    args.cache.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(LocalConfig(), vocabulary_size=args.vocabulary_size,
                                 query_assignments=args.query_assignments, model=args.model,
                                 estimator=args.estimator, fusion=args.fusion, fusion_weight=args.weight,
                                 candidates=args.candidates, shortlist=args.shortlist, min_inliers=args.min_inliers)
    catalog = rows(root / "catalog.csv")
    photos = rows(root / "photos.csv")
    top_level = {r["product_id"]: r["top_level"] for r in catalog}
    db = [(r["image"], int(r["product_id"])) for r in catalog]
    if args.catalogue == "catalog+train":
        db += [(r["image"], int(r["product_id"])) for r in photos if r["split"] == "train"]
    queries = [(r["image"], int(r["product_id"])) for r in photos if r["split"] == "val"
               and (args.queries == "all" or top_level[r["product_id"]] == "Packages")]
    group = ["Packages" if top_level[str(pid)] == "Packages" else "Fruit+Veg" for _, pid in queries]
    db_paths = [p for p, _ in db]
    product_of = np.array([pid for _, pid in db], np.int64)

    # Global: the pipeline's default other_product embedding, exact cosine search.
    g_db = global_vectors(root, db_paths, args.cache, args.backbone)
    g_q = global_vectors(root, [p for p, _ in queries], args.cache, args.backbone)

    # Local: the generic vocabulary, or one trained on the catalogue's own images; then indexed.
    db_feats = local_features(root, db_paths, args.cache, config)
    vocab_file = args.cache / f"vocab-{_key(db_paths, dataclasses.asdict(config))}.npy"
    train_s = 0.0
    if args.vocabulary == "generic":
        index = LocalIndex(None, config)
    elif vocab_file.exists():
        index = LocalIndex(Vocabulary(np.load(vocab_file)), config)
        train_s = float("nan")
    else:
        t = time.perf_counter()
        index = LocalIndex.train_vocabulary(db_feats, config)
        train_s = time.perf_counter() - t
        np.save(vocab_file, index.vocabulary.centroids)
    t = time.perf_counter()
    index.add(np.arange(len(db), dtype=np.int64), db_feats)
    add_ms = (time.perf_counter() - t) * 1000 / len(db)
    memory = index.memory()

    extractor = FeatureExtractor(config.max_side, config.max_keypoints, config.contrast_threshold)
    clock = Clock()
    gates = [int(g) for g in args.gates.split(",") if g]
    names = ["global", "local", "fused", "fused+verify"] + [f"gated@{g}" for g in gates]
    if args.exhaustive:
        names.append("exhaustive verify")
    rec: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    shortlist_recall: dict[str, list[list[float]]] = {"global": [], "local": [], "fused": []}
    sweep: dict[str, list[tuple[float, float]]] = {}
    inlier_stats: list[tuple[int, int, bool]] = []  # (top inliers, truth's inliers, top is right)
    for qi, (path, truth) in enumerate(queries):
        photo = load_image(root / path)
        feats: LocalFeatures = clock("extract", extractor.extract, photo)
        sims = clock("global search", np.matmul, g_db, g_q[qi])
        g_ids = np.argsort(-sims, kind="stable")[: args.candidates]
        g_dist = np.sqrt(np.maximum(2 - 2 * sims[g_ids], 0))
        res = index.search(feats, g_ids, g_dist)
        for part, ms in res.timings_ms.items():
            if part != "extract":
                clock.ms.setdefault(part, []).append(ms)
        l_ids, l_scores, f_ids, v_ids = res.local_ids, res.local_scores, res.fused_ids, res.ids
        v_inl = res.inliers
        rankings = {
            "global": product_ranking(g_ids, product_of),
            "local": product_ranking(l_ids, product_of),
            "fused": product_ranking(f_ids, product_of),
            "fused+verify": product_ranking(v_ids, product_of),
        }
        top_inl = int(v_inl[0]) if len(v_inl) else 0
        inlier_stats.append((top_inl, 0, bool(rankings["fused+verify"][:1] == [truth])))
        if args.exhaustive:
            every = np.arange(len(db), dtype=np.int64)
            all_inl = clock("exhaustive verify", index.verify, feats, every)
            rankings["exhaustive verify"] = product_ranking(every[np.argsort(-all_inl, kind="stable")], product_of)
        for g in gates:
            rankings[f"gated@{g}"] = rankings["fused+verify"] if top_inl >= g else rankings["global"]
        for n in names:
            rec[n].append((hit(rankings[n], truth, 1), hit(rankings[n], truth, 5)))
        for n in shortlist_recall:
            # Recall of an image shortlist of length L: is one of the truth's images among the first L images?
            ids = {"global": g_ids, "local": l_ids, "fused": f_ids}[n]
            first = next((j for j, i in enumerate(ids) if product_of[i] == truth), None)
            shortlist_recall[n].append([float(first is not None and first < L) for L in LENGTHS])
        if args.sweep:
            for method in ("rrf", "score"):
                for w in (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0):
                    ids, _ = fuse(g_ids, g_dist, l_ids, l_scores, length=10, weight=w, method=method)
                    r = product_ranking(ids, product_of)
                    sweep.setdefault(f"{method} w={w}", []).append((hit(r, truth, 1), hit(r, truth, 5)))

    n_q = len(queries)
    print(f"\n## queries: val {args.queries} ({n_q} photos); catalogue: {args.catalogue} ({len(db)} images)\n")
    print(f"local config: {dataclasses.asdict(config)}; vocabulary: {args.vocabulary}, {index.vocabulary.size} words "
          f"(trained in {train_s:.1f} s); fusion {args.fusion} weight {args.weight}, "
          f"{args.candidates} candidates from each list, shortlist {args.shortlist}, min_inliers {args.min_inliers}\n")
    groups = sorted(set(group), reverse=True) + (["all"] if len(set(group)) > 1 else [])
    print("| method | " + " | ".join(f"{g} R@1 | {g} R@5" for g in groups) + " |\n|---|" + "---|---|" * len(groups))
    for n in names:
        cells = []
        for g in groups:
            r = np.mean([x for x, gq in zip(rec[n], group) if g in ("all", gq)], axis=0)
            cells.append(f"{r[0]:.3f} | {r[1]:.3f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\nRecall of an image shortlist of length L (the right product's image among the first L):\n")
    print("| list | " + " | ".join(f"L={L}" for L in LENGTHS) + " |\n|---|" + "---|" * len(LENGTHS))
    for n, v in shortlist_recall.items():
        print(f"| {n} | " + " | ".join(f"{x:.2f}" for x in np.mean(v, axis=0)) + " |")
    print("\nTime per query (ms, mean; busy shared machine):\n")
    print("| step | ms |\n|---|---|")
    for name in ("extract", "query", "global search", "fuse", "verify", "exhaustive verify"):
        if name not in clock.ms:
            continue
        print(f"| {name} | {clock.mean(name):.1f} |")
    print(f"\nIndexing: {add_ms:.1f} ms per image (quantise + aggregate + insert; extraction excluded).")
    print(f"Memory per catalogue image: {memory['ram_per_image'] / 1024:.1f} KiB in RAM (words and signatures), "
          f"{memory['disk_per_image'] / 1024:.1f} KiB on disk, memory-mapped (keypoints for verification); "
          f"vocabulary {memory['vocabulary'] / 1024:.0f} KiB once; global vector {g_db.shape[1] * 4 / 1024:.1f} KiB.")
    top = np.array(inlier_stats)
    right = top[:, 2].astype(bool)
    print("\nTop inlier count after verification: right product first vs wrong (percentiles 10/50/90):")
    for label, m in (("right", right), ("wrong", ~right)):
        if m.any():
            print(f"- {label} ({int(m.sum())}): {np.percentile(top[m, 0], [10, 50, 90]).round(1).tolist()}")
    if sweep:
        print("\nFusion sweep (no verification):\n\n| fusion | " + " | ".join(f"{g} R@1 | {g} R@5" for g in groups)
              + " |\n|---|" + "---|---|" * len(groups))
        for k, v in sweep.items():
            cells = []
            for g in groups:
                r = np.mean([x for x, gq in zip(v, group) if g in ("all", gq)], axis=0)
                cells.append(f"{r[0]:.3f} | {r[1]:.3f}")
            print(f"| {k} | " + " | ".join(cells) + " |")
    scale = scale_test(index, db_feats, queries, root, extractor, [int(n) for n in args.scale.split(",") if n])
    if args.json:
        args.json.write_text(json.dumps({
            "scale": scale,
            "queries": args.queries, "catalogue": args.catalogue, "n_queries": n_q, "n_images": len(db),
            "recall": {n: np.mean(v, axis=0).tolist() for n, v in rec.items()},
            "recall_by_group": {n: {g: np.mean([x for x, gq in zip(v, group) if g in ("all", gq)], axis=0).tolist()
                                    for g in groups} for n, v in rec.items()},
            "shortlist_recall": {n: dict(zip(LENGTHS, np.mean(v, axis=0).tolist())) for n, v in shortlist_recall.items()},
            "ms": {k: clock.mean(k) for k in clock.ms}, "memory": memory, "add_ms": add_ms,
            "sweep": {k: np.mean(v, axis=0).tolist() for k, v in sweep.items()},
        }, indent=1))


if __name__ == "__main__":
    main()

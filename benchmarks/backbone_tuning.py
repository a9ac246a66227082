"""``train-embedder`` with and without tuning the backbone's stride-32 stage, on the clothing photos.

    PYTHONPATH=src python benchmarks/backbone_tuning.py [--store DIR] [--seed 0] [--json OUT]

Catalogue: the photos of the even senders of SHOPLENS_DATA/clothing (labels Not
sure / Skip / Other left out), indexed as apparel products with their category;
queries: the odd senders' photos, described by the store's own pipeline (whole
photos, as in docs/benchmarks.md section 4). Precision@10 of the same category,
for the untrained store, after ``train_embedder(tune_backbone=False)`` (head
only) and after ``train_embedder()`` (stage tuned, images re-encoded, head),
with each training's wall time. Grocery is measured with ``shoplens eval``
(docs/benchmarks.md section 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _embed_features import items

from shoplens import Shoplens
from shoplens.imaging import load_image
from shoplens.pipeline import EncodingCache

log = logging.getLogger("backbone_tuning")


def precision_at_10(lens: Shoplens, queries: list[Path], q_lab: np.ndarray) -> float:
    """P@10 of the same category: query photos described and projected as the store's apparel model does."""
    pipeline = lens.pipeline
    vecs = []
    for start in range(0, len(queries), 64):
        photos = [load_image(p, target_size=pipeline.decode_size) for p in queries[start : start + 64]]
        vecs.append(pipeline.project("apparel", pipeline.describe("apparel", EncodingCache(pipeline, photos))))
    q = np.concatenate(vecs)
    _, ids = lens.store.search("apparel", q, 10)
    found = lens.store.image_categories([int(i) for i in np.unique(ids) if i >= 0])
    cat = np.array([[found[int(i)][1] if i >= 0 else "" for i in row] for row in ids])
    return float(np.mean(cat == q_lab[:, None]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="store folder (default: a temporary one, removed after)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    its = items("clothing")
    cat_rows = np.flatnonzero(its.split == "a")
    q_rows = np.flatnonzero(its.split == "b")
    tmp = Path(tempfile.mkdtemp(prefix="shoplens-tuning-"))
    store = Path(args.store) if args.store else tmp / "store"
    catalogue = tmp / "catalogue.csv"
    with open(catalogue, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "title", "category", "domain", "image"])
        for i in cat_rows:
            w.writerow([f"c{i}", its.paths[i].stem, its.label[i], "apparel", str(its.paths[i])])
    queries, q_lab = [its.paths[i] for i in q_rows], its.label[q_rows]
    out: dict = {"catalogue": len(cat_rows), "queries": len(q_rows), "seed": args.seed}
    try:
        with Shoplens(store, **{"local.enabled": False}) as lens:
            t0 = time.perf_counter()
            lens.index(catalogue)
            out["index_s"] = round(time.perf_counter() - t0, 1)
            out["untrained"] = precision_at_10(lens, queries, q_lab)
            log.info("untrained P@10 %.3f", out["untrained"])
            for name, tune in (("head_only", False), ("tuned", True)):
                t0 = time.perf_counter()
                report = lens.train_embedder(seed=args.seed, tune_backbone=tune)["apparel"]
                out[f"{name}_train_s"] = round(time.perf_counter() - t0, 1)
                out[name] = precision_at_10(lens, queries, q_lab)
                out[f"{name}_tail"] = report.tail
                log.info("%s P@10 %.3f (train-embedder %.0f s)", name, out[name], out[f"{name}_train_s"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

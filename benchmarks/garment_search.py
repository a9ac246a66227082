"""Per-garment search vs whole-image search on held-out outfit photos (issue 3).

Builds an apparel catalogue from ``clothing/labels.csv`` (its categories
mapped onto the garment labels, see ``CATEGORY``), indexes it with the
shoplens Python API (the store is cached: ``--store``), then searches every
held-out ``outfits`` photo (the part ``train_detector`` never trains on) once
with the default garment detector and once with detector ``none`` (the whole
photo is the only region). An annotated garment is *served* when a region
overlapping it (IoU >= 0.5; the whole photo counts as a region) returns a
top-10 list whose majority (more than half of the list) has the garment's
category. Bags have no category in that catalogue and are left out.

    PYTHONPATH=src python benchmarks/garment_search.py [--store DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import REPO, data_root
from harness import add_json_argument, write_result

from shoplens import Shoplens
from shoplens.catalog import CatalogueRow
from shoplens.detect.metrics import iou_matrix
from shoplens.detect.train import read_outfits, split_outfits
from shoplens.results import SearchResult

#: clothing/ categories -> garment labels (issue 3); the rest are not indexed.
CATEGORY = {
    **dict.fromkeys(("T-Shirt", "Longsleeve", "Shirt", "Polo", "Top", "Undershirt", "Body"), "top"),
    **dict.fromkeys(("Blazer", "Outwear", "Hoodie"), "outerwear"),
    "Dress": "dress",
    **dict.fromkeys(("Pants", "Shorts", "Skirt"), "bottom"),
    "Shoes": "shoes",
    "Hat": "hat",
}
LABELS = ("top", "outerwear", "dress", "bottom", "shoes", "hat")


def catalogue(clothing: Path) -> list[CatalogueRow]:
    with open(clothing / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        label = CATEGORY.get(r["label"])
        if label is None:
            continue
        path = clothing / r["image"]
        out.append(CatalogueRow(product_id=Path(r["image"]).stem, image=str(path), title=r["label"], category=label, domain="apparel"))
    return out


def served(result: SearchResult, size: tuple[int, int], box: tuple[float, ...], label: str, k: int) -> tuple[bool, bool]:
    """(served at IoU >= 0.5, some region's list has the majority category anywhere in the photo)."""
    w, h = size
    located = anywhere = False
    for region in result.regions:
        hits = region.results[:k]
        if not hits or sum(hit.category == label for hit in hits) * 2 <= len(hits):
            continue
        anywhere = True
        rbox = region.box if region.box is not None else [0.0, 0.0, float(w), float(h)]
        if iou_matrix(np.array(rbox), np.array(box))[0, 0] >= 0.5:
            located = True
    return located, anywhere


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=REPO / ".cache" / "garment-store", help="store folder (built once, then reused)")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--min-score", type=float, default=None, help="also run per-garment search with this detect.min_score")
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--limit", type=int, default=None, help="first N held-out photos only (quick runs)")
    ap.add_argument("--skip-config-run", action="store_true", help="no per-garment run at the config's detect.min_score")
    add_json_argument(ap, "garment_search")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    root = data_root()
    rows = catalogue(root / "clothing")
    with Shoplens(args.store) as sl:
        if sl.count_products() != len({r.product_id for r in rows}):
            t0 = time.perf_counter()
            sl.index(rows)
            print(f"indexed {len(rows)} catalogue photos in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    outfits = root / "outfits"
    _, val = split_outfits(read_outfits(outfits / "garments.jsonl", outfits), args.val_fraction)
    val = val[: args.limit] if args.limit else val
    modes: dict[str, dict[str, Any]] = {"whole_image": {"detect.detector": "none"}}
    if args.min_score is not None:
        modes[f"per_garment_min_score_{args.min_score}"] = {"detect.detector": "default", "detect.min_score": args.min_score}
    if not args.skip_config_run:
        modes["per_garment"] = {"detect.detector": "default"}
    report: dict[str, Any] = {"catalogue": len(rows), "val_photos": len(val), "top_k": args.top_k, "modes": {}}
    for mode, flags in modes.items():
        per_label = {lab: [0, 0, 0] for lab in LABELS}  # garments, served, served anywhere
        apparel = regions = 0
        t0 = time.perf_counter()
        with Shoplens(args.store, create=False, **flags) as sl:
            results = sl.search([str(p.image) for p in val], top_k=args.top_k)
        seconds = time.perf_counter() - t0
        for photo, result in zip(val, results):
            if not isinstance(result, SearchResult):
                continue
            apparel += result.intent == "apparel"
            regions += len(result.regions)
            from PIL import Image

            with Image.open(photo.image) as im:
                size = im.size
            for box, label in zip(photo.boxes, photo.labels):
                if label not in per_label:
                    continue
                located, anywhere = served(result, size, box, label, args.top_k)
                c = per_label[label]
                c[0] += 1
                c[1] += located
                c[2] += anywhere
        total = [sum(c[i] for c in per_label.values()) for i in range(3)]
        report["modes"][mode] = {
            "flags": flags,
            "served": round(total[1] / max(total[0], 1), 4),
            "served_anywhere": round(total[2] / max(total[0], 1), 4),
            "garments": total[0],
            "served_per_label": {lab: round(c[1] / c[0], 4) if c[0] else None for lab, c in per_label.items()},
            "apparel_intent": round(apparel / max(len(val), 1), 4),
            "regions_per_photo": round(regions / max(len(val), 1), 2),
            "ms_per_photo": round(1000 * seconds / max(len(val), 1), 1),
        }
        print(mode, json.dumps(report["modes"][mode]), file=sys.stderr, flush=True)
        write_result("garment_search", report, args.json, argv)  # after each mode: a long run keeps what it measured
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

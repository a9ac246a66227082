"""Regions an apparel search embeds: outfits (garments covered, regions per photo) and single garments (regions per photo).

Runs the default detector once per photo (``detect.min_score`` 0.05, what
``shoplens detect`` reports), then :func:`shoplens.detect.regions.search_regions`
over a grid of its thresholds. Outfits: the held-out ``outfits`` photos (never
trained on), split by a seeded hash of the file name into a *tune* half (the
thresholds are chosen there) and a *report* half; ``clothing`` photos (a seeded
sample of single garments, split the same way: the whole-photo rule is chosen
on its tune half). A garment is *covered* when a searched region overlaps it
with IoU >= 0.5, whatever the region's label (the list does not depend on the
label); *labelled recall* also needs the label (the detector's criterion).

    PYTHONPATH=src python benchmarks/regions.py [--clothing 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows  # noqa: E402

from shoplens.config import Config  # noqa: E402
from shoplens.detect.metrics import DetectionScores, iou_matrix  # noqa: E402
from shoplens.detect.regions import search_regions  # noqa: E402
from shoplens.detect.train import MAIN_LABELS, read_outfits, split_outfits  # noqa: E402
from shoplens.imaging import load_image  # noqa: E402
from shoplens.pipeline import EncodingCache, Pipeline  # noqa: E402

BEFORE = {"min_score": 0.0, "iou": 2.0, "whole_photo_area": 2.0}  # every detected box, as before


def tune_half(name: str, seed: str = "regions") -> bool:
    return int.from_bytes(hashlib.sha1(f"{seed}:{Path(name).name}".encode()).digest()[:8], "big") / 2**64 < 0.5


def outfit_figures(photos: list[dict], **rule: float) -> dict[str, float]:
    labelled = DetectionScores(labels=MAIN_LABELS)
    covered = total = boxes = 0
    for p in photos:
        regions = search_regions(p["found"], p["size"], **rule)
        boxes += len(regions)
        labelled.add([(g.box, g.label, g.score) for g in regions], p["truth"])
        main = [b for b, lab in p["truth"] if lab in MAIN_LABELS]
        if main and regions:
            covered += int((iou_matrix(np.array([g.box for g in regions]), np.array(main)) >= 0.5).any(0).sum())
        total += len(main)
    return {"covered": round(covered / max(total, 1), 4), "labelled_recall": round(labelled.recall(), 4),
            "regions_per_photo": round(boxes / max(len(photos), 1), 2)}


def clothing_figures(photos: list[dict], **rule: float) -> dict[str, float]:
    n = np.array([len(search_regions(p["found"], p["size"], **rule)) for p in photos])
    return {"regions_per_photo": round(float(n.mean()), 2), "one_region": round(float((n == 1).mean()), 3), "max": int(n.max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clothing", type=int, default=600, help="clothing photos sampled (seed 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    root = data_root()
    pipeline = Pipeline()

    def detect(path: Path) -> tuple[list, tuple[int, int]]:
        photo = load_image(path)
        return pipeline.detect(EncodingCache(pipeline, [photo]))[0], photo.size

    _, val = split_outfits(read_outfits(root / "outfits" / "garments.jsonl", root / "outfits"), 0.25)
    outfits = []
    for o in val:
        found, size = detect(o.image)
        outfits.append({"name": str(o.image), "found": found, "size": size, "truth": list(zip(o.boxes, o.labels))})
    import random

    sample = [r for r in rows(root / "clothing" / "labels.csv") if r["label"] not in ("Not sure", "Skip", "Other")]
    random.Random(1).shuffle(sample)
    clothing = []
    for r in sample[: args.clothing]:
        found, size = detect(root / "clothing" / r["image"])
        clothing.append({"name": r["image"], "found": found, "size": size})
    o_tune = [p for p in outfits if tune_half(p["name"])]
    o_report = [p for p in outfits if not tune_half(p["name"])]
    c_tune = [p for p in clothing if tune_half(p["name"])]
    c_report = [p for p in clothing if not tune_half(p["name"])]

    # 1. Search threshold and cross-label IoU: fewest regions per outfit photo (tune half) with >= 0.80 covered.
    grid = []
    for score, iou in itertools.product([0.05, 0.1, 0.15, 0.2, 0.25], [2.0, 0.9, 0.8, 0.7, 0.6, 0.5]):
        f = outfit_figures(o_tune, min_score=score, iou=iou, whole_photo_area=2.0)
        grid.append({"search_min_score": score, "region_iou": iou, **f})
    ok = [g for g in grid if g["covered"] >= 0.80]
    best = min(ok, key=lambda g: (g["regions_per_photo"], -g["covered"]))
    # 2. Whole photo: the smallest area share that leaves the outfits' tune half as covered, fewest clothing regions (tune half).
    areas = []
    for area in [0.2, 0.25, 0.3, 0.4, 0.5, 0.6]:
        rule = {"min_score": best["search_min_score"], "iou": best["region_iou"], "whole_photo_area": area}
        areas.append({"whole_photo_area": area, "outfits_tune": outfit_figures(o_tune, **rule), "clothing_tune": clothing_figures(c_tune, **rule)})
    base_cover = outfit_figures(o_tune, min_score=best["search_min_score"], iou=best["region_iou"], whole_photo_area=2.0)["covered"]
    area = min(a["whole_photo_area"] for a in areas if a["outfits_tune"]["covered"] >= base_cover)
    chosen = {"min_score": best["search_min_score"], "iou": best["region_iou"], "whole_photo_area": area}
    d = Config().detect
    default = {"min_score": d.search_min_score, "iou": d.region_iou, "whole_photo_area": d.whole_photo_area}
    report = {
        name: {
            "outfits_tune": outfit_figures(o_tune, **rule), "outfits_report": outfit_figures(o_report, **rule),
            "outfits_all": outfit_figures(outfits, **rule),
            "clothing_tune": clothing_figures(c_tune, **rule), "clothing_report": clothing_figures(c_report, **rule),
        }
        for name, rule in (("before", BEFORE), ("chosen", chosen), ("default", default))
    }
    result = {"photos": {"outfits_tune": len(o_tune), "outfits_report": len(o_report), "clothing_tune": len(c_tune),
                         "clothing_report": len(c_report)},
              "chosen": chosen, "default": default, "grid": grid, "areas": areas, "figures": report}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Garment detection on the held-out outfits photos: recall at IoU >= 0.5, precision, speed.

Scores only the validation part of ``outfits/garments.jsonl`` (the photos
``train_detector`` never trains on: a hash of the file name picks them), so
the shipped head is never scored on its own training photos.

    PYTHONPATH=src .venv/bin/python benchmarks/detect.py [--detector default] [--json out.json]

Photos are read from $SHOPLENS_DATA (default: ../shared/data from the
repository root).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_json_argument, write_result

from shoplens.detect import create_detector
from shoplens.detect.metrics import DetectionScores, iou_matrix
from shoplens.detect.train import MAIN_LABELS, read_outfits, split_outfits
from shoplens.imaging import load_image
from shoplens.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("SHOPLENS_DATA", ROOT.parent / "shared" / "data"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detector", default="default")
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--scores", default="0.05,0.1,0.2,0.3", help="min_score values to sweep")
    ap.add_argument("--compare-size", type=int, default=224, help="backbone size to time side by side (intent's)")
    add_json_argument(ap, "detect")
    args = ap.parse_args(argv)

    outfits = data_root() / "outfits"
    if not (outfits / "garments.jsonl").exists():
        print(f"no outfits data under {outfits} (set SHOPLENS_DATA)", file=sys.stderr)
        return 2
    _, val = split_outfits(read_outfits(outfits / "garments.jsonl", outfits), args.val_fraction)
    detector = create_detector(args.detector)
    backbone = create_model(detector.backbone or "efficientnet_lite0")
    photos = [load_image(p.image) for p in val]

    # Speed: per photo, batch of one, backbone at the detector's size, the
    # detector's own work, and the backbone at the intent size side by side
    # (the machine is shared: compare within this run only).
    for p in photos[:3]:
        detector.detect(backbone.encode([p], input_size=detector.input_size))
        backbone.encode([p], input_size=args.compare_size)
    t_bb, t_det, t_cmp, encodings = [], [], [], []
    for p in photos:
        t0 = time.perf_counter()
        enc = backbone.encode([p], input_size=detector.input_size)
        t1 = time.perf_counter()
        detector.detect(enc)
        t2 = time.perf_counter()
        backbone.encode([p], input_size=args.compare_size)
        t3 = time.perf_counter()
        t_bb.append(t1 - t0)
        t_det.append(t2 - t1)
        t_cmp.append(t3 - t2)
        encodings.extend(enc)

    def med(xs: list[float]) -> float:
        return 1000 * statistics.median(xs)

    speed = {
        "torch_threads": torch.get_num_threads(),
        "input_size": detector.input_size,
        "backbone_ms_median": round(med(t_bb), 1),
        "detector_ms_median": round(med(t_det), 2),
        "backbone_share": round(sum(t_bb) / (sum(t_bb) + sum(t_det)), 3),
        f"backbone_at_{args.compare_size}_ms_median": round(med(t_cmp), 1),
    }

    sweep = {}
    min_scores = [float(s) for s in args.scores.split(",")]
    for ms in min_scores:
        scores = DetectionScores(labels=MAIN_LABELS)
        swept = create_detector(args.detector, min_score=ms)
        for photo, found in zip(val, swept.detect(encodings)):
            scores.add([(g.box, g.label, g.score) for g in found], list(zip(photo.boxes, photo.labels)))
        sweep[ms] = scores.summary()

    # Whole-image baseline: one region, the whole photo, any label.
    whole_found = whole_total = 0
    for photo, img in zip(val, photos):
        w, h = img.size
        main = [b for b, lab in zip(photo.boxes, photo.labels) if lab in MAIN_LABELS]
        if main:
            whole_found += int((iou_matrix(np.array([[0, 0, w, h]]), np.array(main)) >= 0.5).sum())
            whole_total += len(main)

    default = getattr(detector, "min_score", None)
    result = {
        "detector": args.detector,
        "val_photos": len(val),
        "min_score": default,
        "figures": sweep.get(default) if default in sweep else None,
        "sweep": sweep,
        "whole_image_recall": round(whole_found / max(whole_total, 1), 4),
        "speed": speed,
    }
    print(json.dumps(result, indent=1))
    print()
    print(_markdown(sweep, MAIN_LABELS))
    write_result("detect", result, args.json, argv)
    return 0


def _markdown(sweep: dict[float, dict[str, object]], labels: tuple[str, ...]) -> str:
    cols = [*labels, "hat"]
    lines = [
        "| min_score | recall | " + " | ".join(cols) + " | precision | boxes/photo |",
        "|---" * (len(cols) + 4) + "|",
    ]
    for ms, s in sweep.items():
        per = s["recall_per_label"]
        assert isinstance(per, dict)
        lines.append(
            f"| {ms} | {s['recall']:.3f} | "
            + " | ".join(f"{per.get(c, float('nan')):.3f}" for c in cols)
            + f" | {s['precision']:.3f} | {s['boxes_per_photo']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

"""What ``runtime.precision = "bf16"`` (OpenVINO) costs against f32, and gains, on real photos.

For each precision, through the public API (``Shoplens.classify`` /
``Shoplens.detect`` on an empty store, OpenVINO engine):

- intent gate: accuracy on labelled photos (grocery val -> other_product,
  clothing and street outfits -> apparel, non-product photos -> non_product)
  and how many decisions bf16 changes;
- garment detection on the boxed street photos: recall and precision of
  boxes (same label, IoU >= 0.5) and how many photos get other boxes;
- the forward pass alone (224 and 320 px, one photo and batch 32), the
  precisions (and ONNX Runtime f32, for scale) interleaved over ``--rounds``.

Retrieval is measured with ``shoplens eval`` (docs/benchmarks.md gives the
commands: a store indexed in f32 searched in f32 and in bf16, and a store
indexed in bf16).

    python benchmarks/precision_accuracy.py --outfits 200 --clothing 300 --rounds 3
    python benchmarks/precision_accuracy.py --forward-only --rounds 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows

from shoplens import Shoplens
from shoplens.models import create_model
from shoplens.results import DetectResult, IntentResult

PRECISIONS = ("f32", "bf16")


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched(pred: list[tuple[str, list[float]]], truth: list[tuple[str, list[float]]]) -> int:
    """Greedy one-to-one matches of the same label at IoU >= 0.5."""
    used: set[int] = set()
    hits = 0
    for label, box in pred:
        best, best_j = 0.5, -1
        for j, (t_label, t_box) in enumerate(truth):
            if j not in used and t_label == label and iou(box, t_box) >= best:
                best, best_j = iou(box, t_box), j
        if best_j >= 0:
            used.add(best_j)
            hits += 1
    return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outfits", type=int, default=200, help="boxed street photos (detection and gate)")
    ap.add_argument("--clothing", type=int, default=300, help="clothing photos (gate)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the forward-pass timing")
    ap.add_argument("--forward-only", action="store_true", help="only time the forward passes")
    args = ap.parse_args()
    out: dict[str, object] = {}
    if not args.forward_only:
        out.update(accuracy(args))
    out["forward"] = forward(args.rounds)
    print(json.dumps(out, indent=2))


def accuracy(args: argparse.Namespace) -> dict[str, object]:
    root = data_root()
    rng = random.Random(0)
    outfit_rows = [json.loads(line) for line in (root / "outfits" / "garments.jsonl").read_text().splitlines()]
    outfit_rows = rng.sample(outfit_rows, min(args.outfits, len(outfit_rows)))
    clothing = [root / "clothing" / r["image"] for r in rows(root / "clothing" / "labels.csv") if r["label"] not in ("Not sure", "Skip", "Other")]
    kinds = {
        "other_product": [root / "grocery" / r["image"] for r in rows(root / "grocery" / "photos.csv") if r["split"] == "val"],
        "apparel (clothing)": rng.sample(clothing, min(args.clothing, len(clothing))),
        "apparel (outfits)": [root / "outfits" / r["image"] for r in outfit_rows],
        "non_product": [root / "nonproduct" / r["image"] for r in rows(root / "nonproduct" / "images.csv")],
    }
    intents: dict[str, dict[str, list[str]]] = {}
    boxes: dict[str, list[list[tuple[str, list[float]]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in PRECISIONS:
            flags: dict[str, Any] = {"runtime.engine": "openvino", "runtime.precision": p}
            with Shoplens(Path(tmp) / p, **flags) as lens:
                intents[p] = {}
                for kind, photos in kinds.items():
                    res = lens.classify(photos)
                    intents[p][kind] = [r.intent if isinstance(r, IntentResult) else "error" for r in res]
                det = lens.detect(kinds["apparel (outfits)"])
                boxes[p] = [[(g.label, g.box) for g in r.garments] if isinstance(r, DetectResult) else [] for r in det]
    out: dict[str, object] = {"photos": {k: len(v) for k, v in kinds.items()}}
    gate: dict[str, object] = {}
    for kind in kinds:
        want = kind.split(" ")[0]
        gate[kind] = {p: round(float(np.mean([i == want for i in intents[p][kind]])), 4) for p in PRECISIONS}
        gate[kind]["changed_by_bf16"] = sum(a != b for a, b in zip(intents["f32"][kind], intents["bf16"][kind]))  # type: ignore[index]
    out["gate_accuracy"] = gate
    truth = [[(g["label"], g["box"]) for g in r["garments"]] for r in outfit_rows]
    n_truth = sum(len(t) for t in truth)
    det_out: dict[str, object] = {}
    for p in PRECISIONS:
        hits = sum(matched(pred, t) for pred, t in zip(boxes[p], truth))
        n_pred = sum(len(b) for b in boxes[p])
        det_out[p] = {"recall@0.5": round(hits / max(n_truth, 1), 4), "precision@0.5": round(hits / max(n_pred, 1), 4), "boxes": n_pred}
    same = sum(
        len(a) == len(b) and matched(a, b) == len(a) for a, b in zip(boxes["f32"], boxes["bf16"])
    )
    det_out["photos_with_the_same_boxes"] = f"{same}/{len(truth)}"
    out["detection_outfits"] = det_out
    return out


def forward(rounds: int) -> dict[str, str]:
    """The forward pass alone, the runtimes interleaved: ms for one photo, img/s at batch 32."""
    nets = {f"openvino {p}": create_model("efficientnet_lite0", runtime="openvino", precision=p) for p in PRECISIONS}
    nets["onnx f32"] = create_model("efficientnet_lite0", runtime="onnx")
    gen = np.random.default_rng(0)
    inputs = {(s, b): torch.from_numpy(gen.standard_normal((b, 3, s, s), dtype=np.float32)) for s in (224, 320) for b in (1, 32)}
    times: dict[str, list[float]] = {}
    for net in nets.values():
        for x in inputs.values():
            net.forward(x)  # type: ignore[attr-defined]
    for _ in range(rounds):
        for p, net in nets.items():
            for (s, b), x in inputs.items():
                reps = 20 if b == 1 else 2
                t0 = time.perf_counter()
                for _ in range(reps):
                    net.forward(x)  # type: ignore[attr-defined]
                dt = (time.perf_counter() - t0) / reps
                key = f"{p} {s}px batch {b}"
                times.setdefault(key, []).append(dt * 1000 if b == 1 else b / dt)
    return {k: (f"{statistics.median(v):.2f} ms" if "batch 1" in k else f"{statistics.median(v):.1f} img/s") for k, v in times.items()}


if __name__ == "__main__":
    main()

"""What int8 quantisation of the Lite0 backbone costs in accuracy, and gains in speed.

Calibrates a static int8 copy of the exported ONNX graph on ``--calibration``
grocery *train* photos, then compares fp32 ONNX Runtime with int8 on:

- retrieval: the 296 grocery *val* store photos searched against the 81
  catalogue images (GeM descriptors of the s32 map, L2-normalised: the
  default other_product embedding, no trained head) -> Recall@1 / @5 by product;
- intent-classifier input: top-1 ImageNet class agreement between fp32 and int8;
- forward-pass throughput at batch 32 on 224x224 inputs, interleaved over rounds.

    python benchmarks/int8_accuracy.py --calibration 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows

from shoplens.embed import Embedder, IdentityHead
from shoplens.imaging import load_image
from shoplens.models import create_model
from shoplens.models.onnx_runtime import OnnxConvBackbone, quantize_int8


def recall(q: np.ndarray, q_ids: list[str], c: np.ndarray, c_ids: list[str], k: int) -> float:
    order = np.argsort(-(q @ c.T), axis=1)[:, :k]
    return float(np.mean([q_ids[i] in {c_ids[j] for j in row} for i, row in enumerate(order)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", type=int, default=64, help="grocery train photos used to calibrate")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = data_root() / "grocery"
    photos = rows(root / "photos.csv")
    train = [r for r in photos if r["split"] == "train"]
    calib = [load_image(root / r["image"], target_size=224) for r in train[:: max(1, len(train) // args.calibration)][: args.calibration]]
    val = [r for r in photos if r["split"] == "val"]
    catalogue = rows(root / "catalog.csv")
    queries = [load_image(root / r["image"], target_size=224) for r in val]
    items = [load_image(root / r["image"], target_size=224) for r in catalogue]

    fp32 = create_model("efficientnet_lite0", runtime="onnx")
    assert isinstance(fp32, OnnxConvBackbone)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = quantize_int8(fp32, calib, Path(tmp) / "lite0-int8.onnx")
        quantize_s = time.perf_counter() - t0
        int8 = OnnxConvBackbone(fp32, model_path=path)
        emb = Embedder("other_product", "efficientnet_lite0", 224, IdentityHead())
        result: dict[str, object] = {"calibration_photos": len(calib), "quantize_s": round(quantize_s, 1), "queries": len(queries), "catalogue": len(items)}
        top1 = {}
        for name, bb in (("fp32", fp32), ("int8", int8)):
            q_enc, c_enc = bb.encode(queries), bb.encode(items)
            q, c = emb.project(emb.describe(q_enc)), emb.project(emb.describe(c_enc))
            q_ids, c_ids = [r["product_id"] for r in val], [r["product_id"] for r in catalogue]
            result[f"{name}_recall@1"] = round(recall(q, q_ids, c, c_ids, 1), 4)
            result[f"{name}_recall@5"] = round(recall(q, q_ids, c, c_ids, 5), 4)
            top1[name] = np.array([int(e.logits.argmax()) for e in q_enc])  # type: ignore[union-attr]
        result["imagenet_top1_agreement"] = round(float(np.mean(top1["fp32"] == top1["int8"])), 4)

        x = torch.from_numpy(np.random.default_rng(0).standard_normal((32, 3, 224, 224), dtype=np.float32))
        speed: dict[str, list[float]] = {"fp32": [], "int8": []}
        fp32.forward(x), int8.forward(x)
        for _ in range(args.rounds):
            for name, bb in (("fp32", fp32), ("int8", int8)):
                t0 = time.perf_counter()
                for _ in range(3):
                    bb.forward(x)
                speed[name].append(96 / (time.perf_counter() - t0))
        result["forward_img_per_s_median"] = {k: round(statistics.median(v), 1) for k, v in speed.items()}
        result["int8_over_fp32_forward"] = round(statistics.median(speed["int8"]) / statistics.median(speed["fp32"]), 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The gate's preview decode: what it saves and whether it changes any answer.

A search first decodes a large JPEG only as small as the intent gate reads
it (draft mode) and decodes it in full only when the gate passes it
(shoplens.imaging.load_image's ``preview``). This compares, photo by photo,
the preview path with decoding in full first:

- the gate's decision and scores on every photo the preview applies to (the
  shared wallpapers, generated negatives, scikit-image photos, and product
  photos enlarged 2x so that they are large enough: the shared product
  photos are 320-384 px, too small for a preview);
- grocery retrieval (Recall@1 of the 296 val store photos, enlarged 2x,
  against the 81 catalogue products: the 224-px descriptor now comes from
  the preview);
- the time of decode + gate for the non-product photos, both ways,
  interleaved, as given (640 px) and enlarged 2x, 4x, 6x; and what a
  product photo pays: decode + gate + the full decode, against decode +
  gate, for grocery photos enlarged to about the same sizes.

    python benchmarks/preview_decode.py [--rounds 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, enlarged, rows
from _intent_data import negative_samples, shared_samples, skimage_other_samples

from shoplens import Shoplens
from shoplens.config import INTENTS
from shoplens.imaging import load_image
from shoplens.pipeline import EncodingCache, Pipeline


def gate(pipeline: Pipeline, data: bytes, preview: bool, full: bool = False) -> tuple[np.ndarray, bool]:
    """The gate's scores for ``data`` (decoded as a preview where it can be), then the full decode if ``full``."""
    photo = load_image(data, target_size=pipeline.decode_size, preview=pipeline.gate_size if preview else None)
    scores = pipeline.classify(EncodingCache(pipeline, [photo]))[0]
    if full:
        photo.full()
    return scores, photo.is_preview


def timed(pipeline: Pipeline, photos: list[bytes], rounds: int, full: bool) -> dict[str, float]:
    """p50 ms of :func:`gate` both ways, interleaved, after a warm-up over every photo."""
    for data in photos:
        gate(pipeline, data, False), gate(pipeline, data, True)
    times: dict[str, list[float]] = {"full": [], "preview": []}
    for _ in range(rounds):
        for data in photos:
            for way in ("full", "preview"):
                t0 = time.perf_counter()
                gate(pipeline, data, way == "preview", full)
                times[way].append((time.perf_counter() - t0) * 1000.0)
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds over the non-product photos")
    args = ap.parse_args()
    root = data_root()
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, Shoplens(Path(tmp) / "store") as lens:
        pipeline = lens.pipeline
        samples = [s for s in shared_samples(root) if s.intent == "non_product"]
        samples += negative_samples(20, seed=1) + skimage_other_samples()
        photos = [(s.source, s.intent, s.path.read_bytes()) for s in samples]
        products = [s for s in shared_samples(root) if s.source in ("grocery", "outfits")][::10]
        photos += [(f"{s.source} x2", s.intent, enlarged(s.path)) for s in products]
        per_source: dict[str, dict[str, int]] = {}
        max_diff = 0.0
        for source, intent, data in photos:
            full, _ = gate(pipeline, data, preview=False)
            small, used = gate(pipeline, data, preview=True)
            row = per_source.setdefault(source.split(":")[0], {"photos": 0, "preview": 0, "same_intent": 0,
                                                               "right_full": 0, "right_preview": 0})
            row["photos"] += 1
            if not used:
                continue
            row["preview"] += 1
            a, b = INTENTS[int(np.argmax(full))], INTENTS[int(np.argmax(small))]
            row["same_intent"] += a == b
            row["right_full"] += a == intent
            row["right_preview"] += b == intent
            max_diff = max(max_diff, float(np.abs(full - small).max()))
        out["gate"] = per_source
        out["gate_max_score_difference"] = round(max_diff, 4)

        # Grocery retrieval with the 224-px descriptor from the preview.
        lines = ["product_id,image,title,category"]
        lines += [f"{r['product_id']},{root / 'grocery' / r['image']},{r['title']},{r['category']}"
                  for r in rows(root / "grocery" / "catalog.csv")]
        (Path(tmp) / "catalog.csv").write_text("\n".join(lines) + "\n")
        lens.index(Path(tmp) / "catalog.csv")
        val = [r for r in rows(root / "grocery" / "photos.csv") if r["split"] == "val"]
        hits = {"full": 0, "preview": 0}
        same_top1 = used = 0
        for r in val:
            data = enlarged(root / "grocery" / r["image"])
            top: dict[str, str | None] = {}
            for way in ("full", "preview"):
                photo = load_image(data, target_size=pipeline.decode_size, preview=pipeline.gate_size if way == "preview" else None)
                used += photo.is_preview
                res = lens.search_photo(photo)
                top[way] = res.regions[0].results[0].product_id if res.regions and res.regions[0].results else None
                hits[way] += top[way] == r["product_id"]
            same_top1 += top["full"] == top["preview"]
        out["grocery_val_x2"] = {"photos": len(val), "preview": used, "recall_at_1": {k: round(v / len(val), 4) for k, v in hits.items()},
                                 "same_top1": same_top1}

        # Decode + gate of the non-product photos, both ways; a product photo's full decode on top.
        wallpapers = [s.path for s in shared_samples(root) if s.intent == "non_product"]
        for factor in (1, 2, 4, 6):  # 640, 1,280, 2,560, 3,840 px wide
            walls = [enlarged(p, factor) if factor > 1 else p.read_bytes() for p in wallpapers[:: 1 if factor == 1 else 2]]
            out[f"wallpaper_x{factor}_decode_and_gate_ms_p50"] = timed(pipeline, walls, args.rounds, full=False)
            big = [enlarged(root / "grocery" / r["image"], 2 * factor) for r in val[::30]]  # 348 px x 2, 4, 8, 12
            out[f"grocery_x{2 * factor}_decode_gate_and_full_decode_ms_p50"] = timed(pipeline, big, args.rounds, full=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

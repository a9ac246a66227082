"""Build the generic visual vocabulary shipped in ``shoplens/local/data``.

It is trained on photos that are not groceries and belong to no shop's
catalogue — the first 600 clothing photos, the first 300 street-outfit photos
and the 24 wallpapers of ``../shared/data`` — so that an index needs no
training and benchmarks on the grocery photos are not tuned to them.

    python benchmarks/local_vocabulary.py            # writes src/shoplens/local/data/vocabulary-generic-4096.npy
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from shoplens.imaging import load_image
from shoplens.local import LocalConfig
from shoplens.local.features import FeatureExtractor, rootsift
from shoplens.local.vocabulary import GENERIC, GENERIC_SCALE, Vocabulary

REPO = Path(__file__).resolve().parents[1]


def photo_paths(root: Path) -> list[Path]:
    with open(root / "clothing" / "labels.csv", newline="") as f:
        paths = [root / "clothing" / r["image"] for r in list(csv.DictReader(f))[:600]]
    with open(root / "outfits" / "garments.jsonl") as f:
        paths += [root / "outfits" / json.loads(line)["image"] for line in list(f)[:300]]
    with open(root / "nonproduct" / "images.csv", newline="") as f:
        paths += [root / "nonproduct" / r["image"] for r in csv.DictReader(f)]
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=REPO / "src" / "shoplens" / "local" / "data" / GENERIC)
    args = ap.parse_args()
    root = Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data")
    if not (root / "clothing" / "labels.csv").exists():
        sys.exit(f"real photos not found at {root}: set SHOPLENS_DATA to the shared data folder")
    config = LocalConfig()
    ex = FeatureExtractor(config.max_side, config.max_keypoints, config.contrast_threshold)
    t = time.perf_counter()
    descs = [rootsift(ex.extract(load_image(p, target_size=config.max_side)).sift) for p in photo_paths(root)]
    x = np.concatenate(descs)
    print(f"{len(descs)} photos, {len(x)} descriptors, extracted in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    vocab = Vocabulary.train(x, args.size, niter=15, seed=0)
    print(f"{vocab.size} words trained in {time.perf_counter() - t:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if vocab.centroids.max() * GENERIC_SCALE > 255:
        sys.exit("centroid components too large for the uint8 encoding")
    np.save(args.out, np.rint(vocab.centroids * GENERIC_SCALE).astype(np.uint8), allow_pickle=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

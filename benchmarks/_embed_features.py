"""Cached raw descriptors of the shared grocery and clothing photos (embedding benchmarks).

Each (dataset, backbone, input size, resize mode) is encoded once with the
engine's own backbone code and pooled with every registered pooling; the
result is cached as ``{dataset}_{backbone}_{resize}{size}.npz`` under
SHOPLENS_EMBED_CACHE (default ``$SHOPLENS_CACHE/bench/embed``, that is
``~/.cache/shoplens/bench/embed``), so a rerun of a benchmark only computes
what is missing.

    PYTHONPATH=src python benchmarks/_embed_features.py grocery efficientnet_lite0 224 letterbox
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import bench_cache, data_root, rows

from shoplens.embed.pooling import get_pooling, list_poolings
from shoplens.imaging import load_image
from shoplens.models import create_model

log = logging.getLogger("embed_features")

CACHE = Path(os.environ.get("SHOPLENS_EMBED_CACHE") or bench_cache("embed"))
#: Clothing labels that are not a garment category.
CLOTHING_SKIP = ("Not sure", "Skip", "Other")


@dataclasses.dataclass
class Items:
    """The photos of a dataset: path, split/role, label, and a category."""

    paths: list[Path]
    split: np.ndarray  # grocery: catalog/train/val; clothing: "a"/"b" half of the senders
    label: np.ndarray  # grocery: product id; clothing: category
    category: np.ndarray  # grocery: coarse category; clothing: category


def items(dataset: str) -> Items:
    root = data_root() / dataset
    if dataset == "grocery":
        cat = rows(root / "catalog.csv")
        coarse = {r["product_id"]: r["category"] for r in cat}
        ph = rows(root / "photos.csv")
        paths = [root / r["image"] for r in cat] + [root / r["image"] for r in ph]
        split = ["catalog"] * len(cat) + [r["split"] for r in ph]
        label = [r["product_id"] for r in cat] + [r["product_id"] for r in ph]
        category = [coarse[x] for x in label]
    elif dataset == "clothing":
        lab = [r for r in rows(root / "labels.csv") if r["label"] not in CLOTHING_SKIP]
        paths = [root / r["image"] for r in lab]
        split = ["a" if int(r["sender_id"]) % 2 == 0 else "b" for r in lab]
        label = category = [r["label"] for r in lab]
    else:
        raise ValueError(dataset)
    return Items(paths, np.array(split), np.array(label), np.array(category))


def cache_path(dataset: str, backbone: str, size: int, resize: str) -> Path:
    return CACHE / f"{dataset}_{backbone}_{resize}{size}.npz"


def descriptors(dataset: str, backbone: str, size: int, resize: str = "letterbox") -> dict[str, np.ndarray]:
    """{pooling name: (N, D) raw descriptors} for every photo of ``dataset``, cached."""
    path = cache_path(dataset, backbone, size, resize)
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    its = items(dataset)
    model = create_model(backbone)
    model.preprocess = dataclasses.replace(model.preprocess, resize=resize)  # type: ignore[attr-defined]
    pools = {name: get_pooling(name) for name in list_poolings()}
    out: dict[str, list[np.ndarray]] = {name: [] for name in pools}
    t0 = time.perf_counter()
    batch = 32
    for start in range(0, len(its.paths), batch):
        photos = [load_image(p) for p in its.paths[start : start + batch]]
        for enc in model.encode(photos, input_size=size):
            fmap = enc.features["s32"].float().numpy()
            for name, pool in pools.items():
                out[name].append(pool(fmap))
        if start % (batch * 10) == 0:
            log.info("%s %s %s%d: %d/%d (%.1f photos/s)", dataset, backbone, resize, size, start + len(photos),
                     len(its.paths), (start + len(photos)) / (time.perf_counter() - t0))
    arrays = {k: np.stack(v).astype(np.float32) for k, v in out.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    log.info("cached %s (%.0fs)", path, time.perf_counter() - t0)
    return arrays


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(int(os.environ.get("SHOPLENS_THREADS", "2")))
    ds, bb = sys.argv[1], sys.argv[2]
    for spec in sys.argv[3:]:
        size, _, resize = spec.partition(":")
        descriptors(ds, bb, int(size), resize or "letterbox")

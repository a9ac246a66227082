"""Photos and cached backbone outputs for the intent benchmark.

Products: grocery store photos and catalogue images (``other_product``),
clothing photos and street outfits (``apparel``). Non-products: the shared
wallpapers and the negatives :func:`shoplens.eval.negatives.generate_negatives`
makes. Backbone outputs (ImageNet logits and pooled s32 features) are computed
once per photo and cached as ``.npz`` under the cache folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _data import bench_cache

from shoplens.errors import BadImageError
from shoplens.eval.negatives import KINDS, SKIMAGE_PHOTOS, generate_negatives, skimage_photo
from shoplens.imaging import load_image
from shoplens.intent.trained import encode_paths
from shoplens.models import create_model

logger = logging.getLogger(__name__)

#: The kinds the first benchmark generated (their cached folders keep their names).
OLD_KINDS = ("document", "chart", "screenshot", "noise", "meme", "photo")
#: The kinds added for the shipped gate (cartoons, fractals, abstract art, captioned pictures).
NEW_KINDS = tuple(k for k in KINDS if k not in OLD_KINDS)

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("SHOPLENS_DATA", ROOT.parent / "shared" / "data")).resolve()


def cache_dir() -> Path:
    """SHOPLENS_INTENT_CACHE, default ``$SHOPLENS_CACHE/bench/intent`` (``~/.cache/shoplens/bench/intent``)."""
    return Path(os.environ.get("SHOPLENS_INTENT_CACHE") or bench_cache("intent"))


@dataclass
class Sample:
    path: Path
    intent: str  # apparel / other_product / non_product, or "ambiguous"
    source: str  # grocery, grocery-catalog, clothing, outfits, wallpaper, or a negative kind
    #: Where a train/test split must not cut: the grocery split and top level,
    #: the clothing sender, the outfit index.
    group: str = ""


def shared_samples(root: Path) -> list[Sample]:
    out: list[Sample] = []
    with open(root / "grocery" / "photos.csv", newline="") as f:
        out += [Sample(root / "grocery" / r["image"], "other_product", "grocery",
                       f"{r['split']}/{Path(r['image']).parts[2]}") for r in csv.DictReader(f)]
    with open(root / "grocery" / "catalog.csv", newline="") as f:
        out += [Sample(root / "grocery" / r["image"], "other_product", "grocery-catalog") for r in csv.DictReader(f)]
    with open(root / "clothing" / "labels.csv", newline="") as f:
        out += [Sample(root / "clothing" / r["image"], "apparel", "clothing", r["sender_id"]) for r in csv.DictReader(f)]
    with open(root / "outfits" / "garments.jsonl") as f:
        lines = [json.loads(line)["image"] for line in f if line.strip()]
        out += [Sample(root / "outfits" / image, "apparel", "outfits", str(i)) for i, image in enumerate(lines)]
    with open(root / "nonproduct" / "images.csv", newline="") as f:
        out += [Sample(root / "nonproduct" / r["image"], "non_product", "wallpaper") for r in csv.DictReader(f)]
    return out


def negative_samples(n_per_kind: int, seed: int, kinds: tuple[str, ...] = OLD_KINDS, photos: list[Path] | None = None,
                     tag: str = "") -> list[Sample]:
    """Generated negatives, cached per (seed, count, kinds, tag); ``photos`` are pictures the captioned kind uses."""
    suffix = "" if kinds == OLD_KINDS else "-" + "+".join(kinds)
    folder = cache_dir() / f"negatives-s{seed}-n{n_per_kind}{suffix}{tag}"
    manifest = folder / "negatives.csv"
    if not manifest.exists():
        generate_negatives(folder, n_per_kind, seed, kinds=kinds, photos=photos or ())
    with open(manifest, newline="") as f:
        return [Sample(folder / r["image"], r["intent"], r["kind"]) for r in csv.DictReader(f)]


def skimage_other_samples() -> list[Sample]:
    """scikit-image pictures that are not negatives: a product (clock) and ambiguous ones."""
    folder = cache_dir() / "skimage-other"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, (intent, _) in SKIMAGE_PHOTOS.items():
        if intent == "non_product":
            continue
        path = folder / f"{name}.jpg"
        if not path.exists():
            skimage_photo(name).save(path, quality=90)
        out.append(Sample(path, intent or "ambiguous", f"skimage:{name}"))
    return out


def encoded(samples: list[Sample], backbone: str = "efficientnet_lite0", progress: bool = True) -> dict[str, np.ndarray]:
    """``logits`` (N, 1000), ``pooled`` (N, 1280) and ``ok`` (N,) for ``samples``, cached."""
    cache = cache_dir() / f"features-{backbone}.npz"
    known: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        for key, lg, pl in zip(z["keys"], z["logits"], z["pooled"]):
            known[str(key)] = (lg, pl)
    keys = [f"{s.path}|{s.path.stat().st_mtime_ns}" if s.path.exists() else str(s.path) for s in samples]
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        logger.info("encoding %d photos with %s", len(todo), backbone)
        model = create_model(backbone)
        logits, pooled, ok = encode_paths([samples[i].path for i in todo], model, progress=progress)
        for j, i in enumerate(todo):
            if ok[j]:
                known[keys[i]] = (logits[j], pooled[j])
        all_keys = sorted(known)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(all_keys), logits=np.stack([known[k][0] for k in all_keys]),
                 pooled=np.stack([known[k][1] for k in all_keys]))
        os.replace(tmp, cache)
    ok = np.array([k in known for k in keys])
    lg = np.stack([known[k][0] if k in known else np.zeros(1000, np.float32) for k in keys])
    pl = np.stack([known[k][1] if k in known else np.zeros(1280, np.float32) for k in keys])
    return {"logits": lg.astype(np.float32), "pooled": pl.astype(np.float32), "ok": ok}


__all__ = ["KINDS", "NEW_KINDS", "OLD_KINDS", "Sample", "cache_dir", "data_dir", "encoded", "encoded_maps", "negative_samples", "shared_samples",
           "skimage_other_samples"]


def _map_stats(s32: torch.Tensor) -> np.ndarray:
    """(5, C): mean, max, top-third mean, bottom-third mean, centre mean of one photo's (C, h, w) s32 map."""
    m = s32.float()
    h = m.shape[1]
    k = max(1, h // 3)
    centre = m[:, k : max(k + 1, h - k)]
    return torch.stack([m.mean((1, 2)), m.amax((1, 2)), m[:, :k].mean((1, 2)), m[:, h - k :].mean((1, 2)),
                        centre.mean((1, 2))]).numpy()


def encoded_maps(samples: list[Sample], backbone: str = "efficientnet_lite0", progress: bool = True,
                 batch_size: int = 64) -> dict[str, np.ndarray]:
    """``logits`` (N, 1000), ``stats`` (N, 5, C) (see :func:`_map_stats`) and ``ok`` (N,), cached as float16."""
    cache = cache_dir() / f"maps-{backbone}.npz"
    known: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        for key, lg, st in zip(z["keys"], z["logits"], z["stats"]):
            known[str(key)] = (lg, st)
    keys = [f"{s.path}|{s.path.stat().st_mtime_ns}" if s.path.exists() else str(s.path) for s in samples]
    todo = [keys.index(k) for k in dict.fromkeys(keys) if k not in known]
    if todo:
        logger.info("encoding %d photos with %s", len(todo), backbone)
        model = create_model(backbone)
        size = model.preprocess.input_size

        def save() -> None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            all_keys = sorted(known)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.array(all_keys), logits=np.stack([known[k][0] for k in all_keys]),
                     stats=np.stack([known[k][1] for k in all_keys]))
            os.replace(tmp, cache)

        for n, start in enumerate(range(0, len(todo), batch_size)):
            chunk = todo[start : start + batch_size]
            photos, idx = [], []
            for i in chunk:
                try:
                    photos.append(load_image(samples[i].path, target_size=size))
                    idx.append(i)
                except BadImageError as err:
                    logger.warning("skipping unreadable photo: %s", err)
            for i, e in zip(idx, model.encode(photos)):
                known[keys[i]] = (e.logits.float().numpy().astype(np.float16),  # type: ignore[union-attr]
                                  _map_stats(e.features["s32"]).astype(np.float16))
            if progress:
                logger.info("encoded %d / %d", min(len(todo), start + batch_size), len(todo))
            if n % 20 == 19:
                save()
        save()
    ok = np.array([k in known for k in keys])
    lg = np.stack([known[k][0] if k in known else np.zeros(1000, np.float16) for k in keys])
    st = np.stack([known[k][1] if k in known else np.zeros((5, 1280), np.float16) for k in keys])
    return {"logits": lg.astype(np.float32), "stats": st.astype(np.float32), "ok": ok}

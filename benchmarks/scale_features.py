"""Real raw descriptors of the shared photos, the seeds of the scale benchmark.

Embeds every grocery photo (store photos + catalogue images) and every
clothing photo with ``efficientnet_lite0`` + GeM (the default recognition
model, 1280-d raw descriptors) and caches them, with a cluster label per
photo, in ``$SHOPLENS_CACHE/bench/scale/real_lite0_gem.npz``. ``benchmarks/scale.py``
perturbs them into a million vectors.

    PYTHONPATH=src python benchmarks/scale_features.py [EVERY]

EVERY (default 5): embed every EVERY-th photo, ~1,270 of the 6,331, to keep
the run short on a shared 2-core machine.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from _data import bench_cache, rows

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data")
CACHE = bench_cache("scale")
OUT = CACHE / "real_lite0_gem.npz"

log = logging.getLogger("scale_features")


def photo_list() -> list[tuple[Path, str]]:
    """(path, cluster label) of every photo used: grocery products and clothing labels."""
    out: list[tuple[Path, str]] = []
    g = DATA / "grocery"
    for row in rows(g / "photos.csv"):
        out.append((g / row["image"], f"grocery:{row['product_id']}"))
    for row in rows(g / "catalog.csv"):
        out.append((g / row["image"], f"grocery:{row['product_id']}"))
    c = DATA / "clothing"
    for row in rows(c / "labels.csv"):
        out.append((c / row["image"], f"clothing:{row['label']}"))
    return out


def main(every: int = 5) -> int:
    """Embed every ``every``-th photo (all clusters stay represented)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (DATA / "grocery" / "photos.csv").exists():
        log.error("real photos not found at %s (set SHOPLENS_DATA)", DATA)
        return 2
    from shoplens.embed import Embedder
    from shoplens.imaging import load_image
    from shoplens.models import create_model

    photos = photo_list()[::every]
    backbone = create_model("efficientnet_lite0")
    emb = Embedder("other_product", "efficientnet_lite0", 224)
    vecs: list[np.ndarray] = []
    t0 = time.perf_counter()
    for start in range(0, len(photos), 64):
        chunk = [load_image(p, target_size=224) for p, _ in photos[start : start + 64]]
        vecs.append(emb.describe(backbone.encode(chunk, input_size=224)))
        log.info("%d/%d photos, %.0f s", start + len(chunk), len(photos), time.perf_counter() - t0)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_name(OUT.stem + ".tmp.npz")
    np.savez(tmp, vecs=np.concatenate(vecs).astype(np.float32), labels=np.array([label for _, label in photos]),
             paths=np.array([str(p.relative_to(DATA)) for p, _ in photos]), signature=emb.signature)
    tmp.replace(OUT)
    log.info("wrote %s: %d descriptors in %.0f s", OUT, len(photos), time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))

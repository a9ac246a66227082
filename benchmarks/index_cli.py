"""`shoplens index` as a user runs it, against a naive loop, side by side in one run.

(a) naive loop: PIL open, squash to 224 px, one eager EfficientNet-Lite0
    forward pass per batch of 32 (no pooling, no writes), in this process
    after the model is built;
(b) `python -m shoplens.cli index CATALOGUE --store FRESH --json`, the
    default configuration, each round into a fresh store: the command's wall
    time (start-up included) and its own ``timings_s.total`` (the indexing
    call alone), with the stage times it reports (read, decode, embed, write,
    local_features, persist, local_sync, calibrate);
(c) with ``--set KEY=VALUE`` (repeatable): the same command with those
    settings as well, e.g. the latency-first setup of docs/configuration.md
    (``embed.other_product.extra_sizes=`` and ``local.enabled=false``).

The catalogue: ``--photos`` grocery store photos (train and val, shuffled
with ``--seed``), one product each with its catalogue title and category;
``--scale 2`` indexes copies enlarged 2x (phone-sized JPEGs, made once under
the benchmark cache). Measures alternate over ``--rounds``; medians are
reported, and each ratio is taken from the same rounds.

    python benchmarks/index_cli.py --photos 600 --rounds 3
    python benchmarks/index_cli.py --photos 600 --rounds 3 --set embed.other_product.extra_sizes= --set local.enabled=false
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import bench_cache, data_root, enlarged, rows
from harness import add_json_argument, write_result

from shoplens.models.efficientnet_lite import build_efficientnet_lite

REPO = Path(__file__).resolve().parents[1]


def naive(paths: list[Path], model: torch.nn.Module, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        arrays = [np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32) for p in paths[i : i + batch]]
        x = torch.from_numpy((np.stack(arrays) - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            model(x)
    return time.perf_counter() - start


def catalogue(n: int, seed: int, scale: float, path: Path) -> list[Path]:
    """A CSV of ``n`` grocery photos, one product each; returns the photo paths."""
    root = data_root() / "grocery"
    listed = {r["product_id"]: r for r in rows(root / "catalog.csv")}
    photos = rows(root / "photos.csv")
    random.Random(seed).shuffle(photos)
    photos = photos[:n]
    paths = [root / r["image"] for r in photos]
    if scale != 1:
        cache = bench_cache("index_cli") / f"x{scale:g}"
        cache.mkdir(parents=True, exist_ok=True)
        big = []
        for p in paths:
            out = cache / (p.relative_to(root).as_posix().replace("/", "__"))
            if not out.exists():
                out.write_bytes(enlarged(p, scale))
            big.append(out)
        paths = big
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "category"])
        for i, (r, p) in enumerate(zip(photos, paths)):
            product = listed.get(r["product_id"], {})
            w.writerow([f"p{i:05d}", str(p), product.get("title", ""), product.get("category", "")])
    return paths


def index_command(csv_path: Path, store: Path, settings: list[str]) -> dict[str, object]:
    argv = [sys.executable, "-m", "shoplens.cli", "index", str(csv_path), "--store", str(store), "--json"]
    for s in settings:
        argv += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    report = json.loads(done.stdout)
    return {"wall_s": wall, "timings_s": report["timings_s"], "images_added": report["images_added"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="index copies of the photos enlarged this many times")
    ap.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE",
                    help="also time the command with these settings (repeatable; all go to one extra measure)")
    add_json_argument(ap, "index_cli")
    args = ap.parse_args()

    model = build_efficientnet_lite("efficientnet_lite0").eval()
    runs: dict[str, list[dict[str, object]]] = {"default": []}
    if args.settings:
        runs["with_settings"] = []
    naive_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "catalogue.csv"
        paths = catalogue(args.photos, args.seed, args.scale, csv_path)
        naive(paths[: args.batch], model, args.batch)  # untimed: first-batch allocations
        for r in range(args.rounds):
            naive_s.append(naive(paths, model, args.batch))
            for name in runs:
                store = Path(tmp) / f"store-{name}-{r}"
                runs[name].append(index_command(csv_path, store, args.settings if name == "with_settings" else []))
            print(f"round {r + 1}: naive {naive_s[-1]:.1f} s, "
                  + ", ".join(f"{k} {v[-1]['wall_s']:.1f} s" for k, v in runs.items()), file=sys.stderr)

    n = len(paths)
    med_naive = statistics.median(naive_s)
    out: dict[str, object] = {
        "photos": n, "scale": args.scale, "rounds": args.rounds, "cpus": os.cpu_count(),
        "naive": {"seconds": round(med_naive, 2), "img_per_s": round(n / med_naive, 1)},
    }
    for name, measures in runs.items():
        wall = statistics.median(float(m["wall_s"]) for m in measures)  # type: ignore[arg-type]
        inner = statistics.median(float(m["timings_s"]["total"]) for m in measures)  # type: ignore[index]
        stages = sorted({k for m in measures for k in m["timings_s"]})  # type: ignore[attr-defined]
        out[name] = {
            "settings": args.settings if name == "with_settings" else [],
            "command_s": round(wall, 2),
            "indexing_s": round(inner, 2),
            "img_per_s": round(n / wall, 1),
            "vs_naive_with_startup": round(med_naive / wall, 3),
            "vs_naive_indexing_only": round(med_naive / inner, 3),
            "stages_s": {s: round(statistics.median(float(m["timings_s"].get(s, 0.0)) for m in measures), 2)  # type: ignore[attr-defined]
                         for s in stages},
        }
    print(json.dumps(out, indent=2))
    write_result("index_cli", out, args.json)


if __name__ == "__main__":
    main()

"""Printed labels at catalogue scale: photos of bottles against a catalogue of their labels (issue: the right
bottle among look-alikes).

Generated labels (shoplens.eval.labels: brands in families of look-alike
variants) make the catalogue; two phone-like photos of each (curved, tilted,
glare, real grocery photos behind, blur, JPEG) are the queries. Optionally the
catalogue is padded with other generated labels (``--distractors``: look-alike
designs of other brands, never queried). Everything a user runs goes through
the CLI: ``shoplens index`` then ``shoplens eval --json``, default settings
first, then each variant named in ``--variants`` (``--set`` flags), so that
where the right label is lost shows: the global embedding's candidates
(retrieval only), the local step's scope and shortlist, verification.

The reference is exhaustive: every query's RootSIFT features matched against
every catalogue label and verified by RANSAC (shoplens.local.verify, the
store's own settings), best inlier count first.

    python benchmarks/labels.py --labels 130 --views 2
    python benchmarks/labels.py --labels 130 --views 2 --distractors 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import bench_cache, data_root, rows
from harness import add_json_argument, write_result

from shoplens.eval.labels import label, photo

OFF = ["--no-intent", "--no-rank-filter", "--no-entropy-filter", "--no-category-order"]
VARIANTS = {
    "default": [],
    "retrieval (gate, steps 4-6 off)": OFF,
    "global only (no local features)": [*OFF, "--no-local-features"],
    "local over every image (scope all)": [*OFF, "--set", "local.scope=all", "--set", "local.skip_margin=0"],
    "no skip, shortlist 50": [*OFF, "--set", "local.skip_margin=0", "--set", "local.shortlist=50"],
}


def _backgrounds(n: int = 40) -> list[np.ndarray]:
    """Real photos to stand the bottles in front of: store shelves of packages, street scenes, landscapes.

    No fruit or vegetable shelves: the intent gate's ImageNet classes would
    call such a photo loose produce, and the local step skips those
    (``local.skip_produce``), whatever stands in front.
    """
    try:
        root = data_root()
    except SystemExit:
        return []
    packages = {r["product_id"] for r in rows(root / "grocery" / "catalog.csv") if r["top_level"] == "Packages"}
    shelves = [root / "grocery" / r["image"] for r in rows(root / "grocery" / "photos.csv")
               if r["split"] == "val" and r["product_id"] in packages][::5]
    outfits = sorted((root / "outfits").glob("**/*.jpg"))[::40]
    scenes = [root / "nonproduct" / r["image"] for r in rows(root / "nonproduct" / "images.csv")]
    picks = (shelves[: n // 2] + outfits[: n // 4] + scenes[: n // 4])[:n]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in picks]


def build(out: Path, n_labels: int, views: int, distractors: int, seed: int) -> tuple[Path, Path]:
    """The catalogue CSV (labels, then distractor labels) and the queries CSV; images written once."""
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "photos").mkdir(exist_ok=True)
    backgrounds = _backgrounds()
    catalogue, queries = out / f"catalogue-{n_labels}-{distractors}.csv", out / f"queries-{n_labels}-{views}.csv"
    with open(catalogue, "w", newline="", encoding="utf-8") as fc, open(queries, "w", newline="", encoding="utf-8") as fq:
        wc, wq = csv.writer(fc), csv.writer(fq)
        wc.writerow(["product_id", "title", "category", "domain", "image"])
        wq.writerow(["image", "product_id"])
        for i in range(n_labels + distractors):
            # Distractors come from another seed: other brands, never photographed.
            s, j = (seed, i) if i < n_labels else (seed + 1, i - n_labels)
            pid = f"label-{i:06d}"
            path = out / "labels" / f"{s}-{j:06d}.png"
            img, title, style = label(s, j)
            if not path.exists():
                img.save(path)
            wc.writerow([pid, title, style, "other_product", str(path)])
            for v in range(views if i < n_labels else 0):
                q = out / "photos" / f"{s}-{j:06d}-{v}.jpg"
                if not q.exists():
                    photo(img, s, j, v, backgrounds).save(q, quality=95)
                wq.writerow([str(q), pid])
    return catalogue, queries


def exhaustive(catalogue: Path, queries: Path, n_labels: int) -> dict[str, float]:
    """R@1 and R@5 of RANSAC inlier counts against every one of the first ``n_labels`` labels."""
    from shoplens.config import Config
    from shoplens.imaging import load_image
    from shoplens.local.features import FeatureExtractor
    from shoplens.local.index import LocalConfig
    from shoplens.local.verify import verify_pair

    cfg = Config().local
    params = LocalConfig().verify_params()
    extract = FeatureExtractor(max_side=cfg.max_side, max_keypoints=cfg.max_keypoints)
    query_extract = FeatureExtractor(max_side=cfg.query_max_side or cfg.max_side, max_keypoints=cfg.max_keypoints)
    labs = rows(catalogue)[:n_labels]
    feats = [extract.extract(load_image(r["image"])) for r in labs]
    descs = [f.rootsift() for f in feats]
    pids = [r["product_id"] for r in labs]
    r1 = r5 = 0
    qs = rows(queries)
    start = time.perf_counter()
    for q in qs:
        f = query_extract.extract(load_image(q["image"]))
        d = f.rootsift()
        inliers = np.array([verify_pair(f.xy, d, c.xy, cd, params) for c, cd in zip(feats, descs)])
        order = np.argsort(-inliers, kind="stable")
        rank = [pids[i] for i in order].index(q["product_id"])
        r1 += rank == 0
        r5 += rank < 5
    return {"r1": round(r1 / len(qs), 3), "r5": round(r5 / len(qs), 3),
            "ms_per_query": round((time.perf_counter() - start) * 1000 / len(qs), 1)}


def shoplens(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoplens.cli", *args], capture_output=True, text=True, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=int, default=130)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--distractors", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"which of {list(VARIANTS)}")
    ap.add_argument("--no-exhaustive", action="store_true")
    ap.add_argument("--out", type=Path, default=bench_cache("labels"))
    add_json_argument(ap, "labels")
    args = ap.parse_args()
    catalogue, queries = build(args.out, args.labels, args.views, args.distractors, args.seed)
    store = args.out / f"store-{args.labels}-{args.distractors}"
    shutil.rmtree(store, ignore_errors=True)  # a store keeps the settings it was made with: always today's defaults
    start = time.perf_counter()
    shoplens("index", str(catalogue), "--store", str(store))
    result: dict[str, object] = {"labels": args.labels, "views": args.views, "distractors": args.distractors,
                                 "index_s": round(time.perf_counter() - start, 1)}
    for name in args.variants:
        report = json.loads(shoplens("eval", str(queries), "--store", str(store), "--json", *VARIANTS[name]).stdout)
        recall, times = report["recall_at"], report["timings_ms"]
        result[name] = {"r1": recall["1"], "r5": recall["5"], "local_ms_p50": times.get("local", {}).get("p50"),
                        "total_ms_p50": times["total"]["p50"]}
        print(name, result[name], flush=True)
    if not args.no_exhaustive:
        result["exhaustive SIFT + RANSAC"] = exhaustive(catalogue, queries, args.labels)
        print("exhaustive SIFT + RANSAC", result["exhaustive SIFT + RANSAC"], flush=True)
    print(json.dumps(result))
    write_result("labels", result, args.json)


if __name__ == "__main__":
    main()

"""Peak memory of a searching process, per catalogue size.

Builds one store (real grocery + clothing photos, then padded with perturbed
copies of their descriptors through the store API, as search_latency.py
does) and grows it to each size in turn. At each size a fresh process opens
the store with :class:`shoplens.Shoplens` (what ``shoplens serve`` holds),
searches one photo of each kind (non-product, grocery, outfit) and reports
its peak RSS (VmHWM) and its RSS after the searches (VmRSS). Local
features are off (the padded products have no photos to extract them from).

    python benchmarks/memory.py --products 100000,1000000 --store /tmp/mem-store
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows  # noqa: E402
from search_latency import build_catalogue, pad  # noqa: E402

from shoplens import Shoplens  # noqa: E402

#: The padded products have no photo files, so the local-feature index (SIFT of
#: other_product photos, on by default) is off here; it lives on disk, in its own index.
FLAGS = {"local.enabled": False}

_CHILD = r"""
import json, sys, time
from shoplens import Shoplens
store, photos = sys.argv[1], sys.argv[2:]
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) * 1024
    return out
t0 = time.perf_counter()
with Shoplens(store, create=False, **{"local.enabled": False}) as lens:
    n = lens.count_products()
    intents = [r.intent for r in lens.search(photos)]
    open_and_search_s = time.perf_counter() - t0
    print(json.dumps({"products": n, "intents": intents, "open_and_search_s": round(open_and_search_s, 1), **status()}))
"""


def measure(store: Path, photos: list[Path]) -> dict[str, object]:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(store), *map(str, photos)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", default="100000", help="comma-separated catalogue sizes, increasing")
    ap.add_argument("--clothing", type=int, default=300)
    ap.add_argument("--store", help="store folder to build and grow (default: a temporary one)")
    args = ap.parse_args()
    root = data_root()
    sizes = [int(s) for s in args.products.split(",")]
    photos = [
        root / "nonproduct" / rows(root / "nonproduct" / "images.csv")[0]["image"],
        root / "grocery" / next(r for r in rows(root / "grocery" / "photos.csv") if r["split"] == "val")["image"],
        root / "outfits" / json.loads((root / "outfits" / "garments.jsonl").read_text().splitlines()[0])["image"],
    ]
    with tempfile.TemporaryDirectory() as tmpdir:
        store = Path(args.store) if args.store else Path(tmpdir) / "store"
        with Shoplens(store, **FLAGS) as lens:
            lens.index(build_catalogue(root, Path(tmpdir), args.clothing))
        results = [measure(store, photos)]
        for n in sizes:
            with Shoplens(store, **FLAGS) as lens:
                pad(lens, n)
            results.append(measure(store, photos))
    base = results[0]
    for r in results:
        r["peak_rss_mib"] = round(r["VmHWM"] / 2**20, 1)  # type: ignore[operator]
        r["rss_mib"] = round(r["VmRSS"] / 2**20, 1)  # type: ignore[operator]
        extra = r["products"] - base["products"]  # type: ignore[operator]
        if extra:
            r["peak_bytes_per_added_product"] = round((r["VmHWM"] - base["VmHWM"]) / extra)  # type: ignore[operator]
            r["rss_bytes_per_added_product"] = round((r["VmRSS"] - base["VmRSS"]) / extra)  # type: ignore[operator]
    if len(results) >= 3:
        a, b = results[-2], results[-1]
        slope = (b["VmHWM"] - a["VmHWM"]) / (b["products"] - a["products"])  # type: ignore[operator]
        print(json.dumps({"peak_bytes_per_product_between_last_two": round(slope)}), file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Peak memory of a searching process, per catalogue size.

For each size N, a store is built once under ``--root`` (real grocery +
clothing photos, then padded to N products with perturbed copies of their
descriptors through the store API, as search_latency.py does; N = 0: the
real photos only) and reused afterwards. A fresh process then opens it with
:class:`shoplens.Shoplens` (what ``shoplens serve`` holds), searches one
photo of each kind (non-product, grocery, outfit) and reports its peak RSS
(VmHWM) and its RSS after the searches (VmRSS), per runtime. Local features
are off (the padded products have no photos to extract them from).

    python benchmarks/memory.py --products 0,100000 --root DIR
    # a store built by search_latency.py can be reused: --store-for 100000=/path/to/store
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows
from harness import add_json_argument, write_result
from search_latency import build_catalogue, pad

from shoplens import Shoplens

FLAGS = {"local.enabled": False}

_CHILD = r"""
import json, sys, time
from shoplens import Shoplens
store, engine, photos = sys.argv[1], sys.argv[2], sys.argv[3:]
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) * 1024
    return out
t0 = time.perf_counter()
with Shoplens(store, create=False, **{"local.enabled": False, "runtime.engine": engine}) as lens:
    n = lens.count_products()
    intents = [r.intent for r in lens.search(photos)]
    print(json.dumps({"products": n, "runtime": engine, "intents": intents, "open_and_search_s": round(time.perf_counter() - t0, 1), **status()}))
"""


def measure(store: Path, engine: str, photos: list[Path]) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(store), engine, *map(str, photos)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", default="0,100000", help="comma-separated catalogue sizes (0: real photos only)")
    ap.add_argument("--clothing", type=int, default=300)
    ap.add_argument("--root", required=True, help="folder holding one store per size (built when missing)")
    ap.add_argument("--store-for", action="append", default=[], metavar="N=DIR", help="use this existing store for size N")
    ap.add_argument("--runtimes", default="torch,onnx,openvino")
    add_json_argument(ap, "memory")
    args = ap.parse_args()
    root = data_root()
    given = {int(k): Path(v) for k, v in (s.split("=", 1) for s in args.store_for)}
    photos = [
        root / "nonproduct" / rows(root / "nonproduct" / "images.csv")[0]["image"],
        root / "grocery" / next(r for r in rows(root / "grocery" / "photos.csv") if r["split"] == "val")["image"],
        root / "outfits" / json.loads((root / "outfits" / "garments.jsonl").read_text().splitlines()[0])["image"],
    ]
    results = []
    for n in (int(s) for s in args.products.split(",")):
        store = given.get(n) or Path(args.root) / f"store-{n}"
        if not store.exists():
            with tempfile.TemporaryDirectory() as tmp, Shoplens(store, **FLAGS, **{"runtime.engine": "onnx"}) as lens:
                lens.index(build_catalogue(root, Path(tmp), args.clothing))
                if n:
                    pad(lens, n)
        for engine in args.runtimes.split(","):
            r = measure(store, engine, photos)
            r["peak_rss_mib"] = round(r["VmHWM"] / 2**20, 1)  # type: ignore[operator]
            r["rss_mib"] = round(r["VmRSS"] / 2**20, 1)  # type: ignore[operator]
            r["index_files_mib"] = round(sum(f.stat().st_size for f in (store / "index").glob("*")) / 2**20, 1)
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
    by_engine: dict[str, list[dict[str, object]]] = {}
    for r in results:
        by_engine.setdefault(str(r["runtime"]), []).append(r)
    summary = {}
    for engine, rs in by_engine.items():
        rs.sort(key=lambda r: r["products"])  # type: ignore[arg-type,return-value]
        a, b = rs[0], rs[-1]
        if b["products"] != a["products"]:
            per = (b["VmHWM"] - a["VmHWM"]) / (b["products"] - a["products"])  # type: ignore[operator]
            summary[engine] = {
                "peak_bytes_per_added_product": round(per),
                "fixed_peak_mib": round((a["VmHWM"] - per * a["products"]) / 2**20, 1),  # type: ignore[operator]
                "projected_peak_mib_at_1M": round((a["VmHWM"] + per * (1_000_000 - a["products"])) / 2**20),  # type: ignore[operator]
            }
    out = {"measures": results, "linear_fit": summary}
    print(json.dumps(out, indent=2))
    write_result("memory", out, args.json)


if __name__ == "__main__":
    main()

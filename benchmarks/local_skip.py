"""The local stage's confidence gate (``local.skip_margin``) on the grocery val photos.

Searches the 296 ``val`` store photos against a store (made by ``shoplens
eval --catalogue``, optionally adapted by ``train-embedder``) once per
configuration, with the gate and steps 4–6 off as in ``shoplens eval``, and
prints product R@1 (all photos and the Packages ones), R@5 and the share of
searches that skipped the local stage:

    python benchmarks/local_skip.py STORE off=local.skip_margin=0 m0.03=local.skip_margin=0.03 global=local.enabled=false
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows

from shoplens import Shoplens

OFF = {"intent.enabled": "false", "search.rank_filter": "false", "search.entropy_filter": "false", "search.category_order": "false"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("configs", nargs="+", metavar="NAME=KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    root = data_root() / "grocery"
    val = [r for r in rows(root / "photos.csv") if r["split"] == "val"]
    paths = [root / r["image"] for r in val]
    packages = np.array(["/Packages/" in r["image"] for r in val])
    out = {}
    for spec in args.configs:
        name, _, kv = spec.partition("=")
        flags = dict(x.split("=", 1) for x in kv.split(",") if x)
        with Shoplens(Path(args.store), **OFF, **flags) as lens:
            lens.search(paths[:2])  # warm-up
            found = lens.search(paths)
        ranked = [[h.product_id for h in r.regions[0].results] if r.regions else [] for r in found]  # type: ignore[union-attr]
        r1 = np.array([v["product_id"] in rk[:1] for v, rk in zip(val, ranked)])
        r5 = np.array([v["product_id"] in rk[:5] for v, rk in zip(val, ranked)])
        skipped = np.array([bool(r.steps.get("local", {}).get("skipped")) for r in found])  # type: ignore[union-attr]
        out[name] = {
            "flags": flags,
            "r1": round(float(r1.mean()), 4),
            "r1_packages": round(float(r1[packages].mean()), 4),
            "r5": round(float(r5.mean()), 4),
            "skipped": round(float(skipped.mean()), 3),
            "total_ms_p50": round(statistics.median(r.timings_ms["total"] for r in found), 1),  # type: ignore[union-attr]
        }
        print(name, json.dumps(out[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""RSS of a process that searches and also indexes (the server taking writes), before and after it goes idle.

A store of the grocery catalogue (81 products) is built first. Then, in a
fresh process each time: 60 searches of grocery val photos, indexing N
grocery train photos into the same open store, 60 more searches, a pause
of ``--idle`` seconds, 30 more searches. RSS (VmRSS) after each step and
the peak (VmHWM) are reported.

Indexing's batches (32 photos at 224 and 320 px) run on an OpenVINO
compilation of their own that is given up after
``shoplens.models.openvino_runtime.LARGE_IDLE_S`` seconds without one;
``--modes`` also runs the process with that off (every pass on the general
compilation), alternating, for the side-by-side figure:

    python benchmarks/write_memory.py --photos 200 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows


def _rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) // 1024
    return out


def _catalogue(path: Path, items: list[tuple[str, Path, str]]) -> Path:
    path.write_text("product_id,image,title,category\n" + "".join(f"{pid},{img},{pid},{cat}\n" for pid, img, cat in items))
    return path


def child(store: Path, extra: Path, mode: str, idle: float) -> None:
    from shoplens import Shoplens
    from shoplens.models import openvino_runtime

    if mode == "general":
        openvino_runtime.LARGE_PASS_VALUES = 10**15  # every pass on the general compilation
    root = data_root()
    queries = [root / "grocery" / r["image"] for r in rows(root / "grocery" / "photos.csv") if r["split"] == "val"][:30]
    out: dict[str, object] = {"mode": mode}
    with Shoplens(store) as lens:
        for q in queries * 2:
            lens.search([q])
        out["after_searches"] = _rss()["VmRSS"]
        t = time.perf_counter()
        lens.index(extra)
        out["index_s"] = round(time.perf_counter() - t, 1)
        out["after_indexing"] = _rss()["VmRSS"]
        for q in queries * 2:
            lens.search([q])
        out["after_more_searches"] = _rss()["VmRSS"]
        time.sleep(idle)
        for q in queries:
            lens.search([q])
        out["after_idle"] = _rss()["VmRSS"]
        out["peak"] = _rss()["VmHWM"]
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=200, help="grocery train photos indexed by the searching process")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", type=float, default=12.0, help="seconds of pause before the last searches")
    ap.add_argument("--modes", default="large,general", help="large (the default), general (every pass on one compilation)")
    ap.add_argument("--child", nargs=3, metavar=("STORE", "EXTRA_CSV", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.child[2], args.idle)
        return
    from shoplens import Shoplens

    root = data_root()
    grocery = root / "grocery"
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        catalogue = _catalogue(tmp / "catalogue.csv", [(f"g{r['product_id']}", grocery / r["image"], r["category"])
                                                        for r in rows(grocery / "catalog.csv")])
        train = [r for r in rows(grocery / "photos.csv") if r["split"] == "train"][: args.photos]
        extra = _catalogue(tmp / "extra.csv", [(f"x{i}", grocery / r["image"], "extra") for i, r in enumerate(train)])
        results = []
        for rnd in range(args.rounds):
            for mode in args.modes.split(","):
                store = tmp / f"store-{rnd}-{mode}"
                with Shoplens(store, **{"local.enabled": "false"}) as lens:  # the global step's memory only
                    lens.index(catalogue)
                proc = subprocess.run([sys.executable, __file__, "--child", str(store), str(extra), mode, "--idle", str(args.idle)],
                                      capture_output=True, text=True, check=True)
                line = json.loads(proc.stdout.strip().splitlines()[-1])
                print(json.dumps(line), flush=True)
                results.append(line)
    print(json.dumps({"photos": args.photos, "idle_s": args.idle, "runs": results}, indent=2))


if __name__ == "__main__":
    main()

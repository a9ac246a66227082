"""Start-up: what a one-shot command costs end to end, as a shell runs it.

Times, hyperfine-like (a warm-up run, then N runs; min / median / max of the
wall clock of the whole process):

- ``shoplens --help`` (no engine is imported: no torch);
- ``shoplens classify one.jpg`` with the model cache warm;
- ``shoplens classify one.jpg`` with an empty cache (``SHOPLENS_CACHE`` a new
  folder each run): the first run on a machine, which exports the backbone
  and says "preparing the model (once)" on stderr;
- ``shoplens search one.jpg --store S`` on a store of 8 generated products;

and, from ``python -X importtime``, the time ``import shoplens.cli`` takes
and whether it imports torch.

    python benchmarks/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_json_argument, write_result

EXE = [sys.executable, "-m", "shoplens.cli"]


def photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((480, 640, 3)) * 255).astype("uint8")).save(path)
    return path


def timed(argv: list[str], runs: int, env: dict[str, str], fresh_cache: Path | None = None) -> dict[str, object]:
    """Wall-clock seconds of ``runs`` runs of ``argv`` after one warm-up run; ``fresh_cache``: an empty cache each run."""
    times: list[float] = []
    stderr = ""
    for i in range(runs + 1):
        run_env = dict(env)
        if fresh_cache is not None:
            shutil.rmtree(fresh_cache, ignore_errors=True)
            run_env["SHOPLENS_CACHE"] = str(fresh_cache)
        start = time.perf_counter()
        out = subprocess.run(argv, env=run_env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr[-2000:]}")
        if i:  # the first run warms the page cache
            times.append(elapsed)
            stderr = out.stderr
    return {"min_s": round(min(times), 3), "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
            "runs": runs, "stderr": stderr.strip().splitlines()}


def import_time(env: dict[str, str]) -> dict[str, object]:
    """``import shoplens.cli`` plus the parser, under ``-X importtime``: its cumulative ms and whether torch came in."""
    code = "import shoplens.cli, sys; shoplens.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True, check=True)
    cumulative = [int(m.group(1)) for m in re.finditer(r"\|\s+(\d+) \| shoplens\.cli$", out.stderr, re.M)]
    return {"import_shoplens_cli_ms": round(cumulative[-1] / 1000, 1) if cumulative else None,
            "torch_imported": out.stdout.strip() == "True"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command (default 10)")
    add_json_argument(parser, "startup")
    args = parser.parse_args()
    env = {**os.environ}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        query = photo(root / "one.jpg", 0)
        (root / "img").mkdir()
        rows = ["product_id,image,category,domain"]
        rows += [f"p{i},img/p{i}.png,c{i % 2},other_product" for i in range(8)]
        for i in range(8):
            photo(root / "img" / f"p{i}.png", i + 1)
        (root / "catalog.csv").write_text("\n".join(rows) + "\n")
        store = root / "store"
        subprocess.run([*EXE, "index", str(root / "catalog.csv"), "--store", str(store), "--json"], env=env, check=True,
                       capture_output=True)
        report = {
            **import_time(env),
            "help": timed([*EXE, "--help"], args.runs, env),
            "classify_warm_cache": timed([*EXE, "classify", str(query)], args.runs, env),
            "classify_empty_cache": timed([*EXE, "classify", str(query)], max(2, args.runs // 3), env, fresh_cache=root / "cache"),
            "search": timed([*EXE, "search", str(query), "--store", str(store)], args.runs, env),
        }
    print(json.dumps(report, indent=2))
    write_result("startup", report, args.json)


if __name__ == "__main__":
    main()

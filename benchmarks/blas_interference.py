"""A backbone pass right after a numpy matrix product, with numpy's BLAS on its default threads or on one.

OpenBLAS's worker threads keep spinning for a while after a product. On a
2-core machine the ONNX Runtime pass that follows (the next search's
intent gate, a garment crop...) then shares its cores with them. This times,
a 224-px pass of the shipped backbone right after assigning 1,000
descriptors to visual words (:meth:`Vocabulary.assign`) and after a 50 ms
pause, with numpy's BLAS threads as configured or inside
:func:`shoplens.threads.blas_threads` (one thread). Each mode runs in its
own process (spinning workers of one mode would disturb the other), the
processes alternating ``--processes`` times; medians per process.

    python benchmarks/blas_interference.py --rounds 60 --processes 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from shoplens.local.vocabulary import Vocabulary
from shoplens.models import create_model
from shoplens.threads import blas_threads


def measure(one_thread: bool, rounds: int) -> dict[str, float]:
    backbone = create_model("efficientnet_lite0", runtime="onnx")
    vocab = Vocabulary.generic()
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((1000, 128))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    batch = backbone.make_batch([rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)], backbone.preprocess)  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {"assign": [], "pass right after": [], "pass after 50 ms": []}
    with blas_threads(1) if one_thread else contextlib.nullcontext():
        for _ in range(rounds):
            t = time.perf_counter()
            vocab.assign(x)
            times["assign"].append(time.perf_counter() - t)
            t = time.perf_counter()
            backbone.forward(batch)  # type: ignore[attr-defined]
            times["pass right after"].append(time.perf_counter() - t)
            time.sleep(0.05)
            t = time.perf_counter()
            backbone.forward(batch)  # type: ignore[attr-defined]
            times["pass after 50 ms"].append(time.perf_counter() - t)
    skip = min(5, rounds // 2)  # first calls: warm-up
    return {k: round(statistics.median(v[skip:]) * 1000, 2) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--processes", type=int, default=2, help="processes per mode, alternating")
    ap.add_argument("--mode", choices=["default", "one"], help=argparse.SUPPRESS)  # one measuring process
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode == "one", args.rounds)))
        return
    out: dict[str, list[dict[str, float]]] = {"default BLAS threads": [], "one BLAS thread": []}
    for _ in range(args.processes):
        for label, mode in (("default BLAS threads", "default"), ("one BLAS thread", "one")):
            run = subprocess.run([sys.executable, __file__, "--mode", mode, "--rounds", str(args.rounds)],
                                 capture_output=True, text=True, check=True)
            out[label].append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

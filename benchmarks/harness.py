"""What every benchmark shares: the machine record, timing summaries, process memory, and its JSON result.

A benchmark writes one JSON file, ``{benchmark, machine, command, results}``,
to ``--json PATH`` or by default to ``benchmarks/results/NAME.json`` (not
committed); ``benchmarks/run.py`` reads those files to rewrite the tables of
docs/benchmarks.md. Figures measured on different machines are not
comparable: the machine record says which one measured them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: Distributions whose versions change figures: the runtimes, the vector index, the image decoder.
PACKAGES = ("torch", "onnxruntime", "openvino", "faiss-cpu", "numpy", "pillow", "opencv-python-headless")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), or what :mod:`platform` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(repo: Path = REPO) -> str:
    """The checkout's commit, ``+changes`` when its tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions, read from the package metadata (nothing is imported); None where absent."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    """What measured a figure: CPU model and cores, OS, Python and the versions that change figures, git commit."""
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions(),
        "commit": git_commit(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


# --- timing -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile of ``values`` (numpy's linear interpolation); NaN for none."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summary(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    """``{"n", "p50", "p95"}`` of timings (``{"n": 0}`` for none), rounded to ``digits``."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(statistics.median(values), digits), "p95": round(percentile(values, 95), digits)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- memory -----------------------------------------------------------------------------------------


def rss_mib() -> float:
    """This process's resident memory now, in MiB (Linux /proc/self/statm)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of a process, in MiB to 0.1."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for a server a benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- JSON results -----------------------------------------------------------------------------------


def default_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def add_json_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """``--json PATH``: where the result goes (default ``benchmarks/results/NAME.json``)."""
    parser.add_argument("--json", type=Path, default=default_path(name), metavar="PATH",
                        help=f"write {{benchmark, machine, command, results}} here (default: benchmarks/results/{name}.json)")


def command(name: str, argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces a result, from the repository root."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", f"benchmarks/{name}.py", *args])


def write_result(name: str, results: Any, path: Path | None = None, argv: Sequence[str] | None = None) -> Path:
    """Write ``{benchmark, machine, command, results}`` as JSON to ``path`` (default: benchmarks/results/NAME.json)."""
    path = Path(path) if path is not None else default_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "machine": machine(), "command": command(name, argv), "results": results}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"{name}: result written to {path}", file=sys.stderr)
    return path


def read_result(path: Path) -> dict[str, Any]:
    """A result file as written by :func:`write_result` (its four keys checked)."""
    record = json.loads(Path(path).read_text())
    missing = {"benchmark", "machine", "command", "results"} - set(record)
    if missing:
        raise ValueError(f"{path}: not a benchmark result (no {', '.join(sorted(missing))})")
    return record

"""Run benchmarks and rewrite their tables in docs/benchmarks.md from the JSON they write.

    python benchmarks/run.py                         # every benchmark that has a table, then the tables
    python benchmarks/run.py local_scale memory      # those only
    python benchmarks/run.py --tables-only           # rewrite the tables from benchmarks/results/*.json
    python benchmarks/run.py --quick [NAMES...]      # tiny inputs: the plumbing, not figures
    python benchmarks/run.py --list

Each benchmark runs as ``python benchmarks/NAME.py ARGS --json benchmarks/results/NAME.json``
with the arguments its docs give, one after the other (never two at once: they
measure the same cores). A table of docs/benchmarks.md that a benchmark's JSON
produces stands between ``<!-- bench:NAME -->`` and ``<!-- /bench -->``; only that
text is rewritten, the prose around it is left as it is. ``--quick`` runs the
benchmarks that have a tiny form, writes under benchmarks/results/quick/ and
prints the tables instead of writing them (``--doc`` names a file to rewrite anyway).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, RESULTS, read_result

DOC = REPO / "docs" / "benchmarks.md"
MARKER = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench -->)", re.S)


# --- tables: one function per benchmark, from its "results" to the table docs/benchmarks.md shows ---


def _signed(v: float) -> str:
    v = round(v)
    return "0" if v == 0 else (f"+{v:,}" if v > 0 else f"−{-v:,}")


def _mib(v: float) -> str:
    return f"{v:.1f}" if v < 10 else f"{round(v):,}"


def local_scale_table(r: dict[str, Any]) -> str:
    lines = ['| images | `local.scope = "candidates"` (default) p50 / p95 ms | `all` p50 / p95 ms | KiB per image in memory | RSS growth, MiB |',
             "|---|---|---|---|---|"]
    for n, s in sorted(r["sizes"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {int(n):,} | **{s['query_200_candidates_ms_p50']}** / {s['query_200_candidates_ms_p95']} | "
                     f"{s['query_ms_p50']} / {s['query_ms_p95']} | {s['inverted_file_kib_per_image']:.2f} | {round(s['rss_growth_mib']):,} |")
    return "\n".join(lines)


def memory_table(r: dict[str, Any]) -> str:
    by_size: dict[int, dict[str, Any]] = {}
    for m in r["measures"]:
        row = by_size.setdefault(int(m["products"]), {"files": m["index_files_mib"], "onnx": [], "openvino": []})
        row.setdefault(m["runtime"], []).append(m["peak_rss_mib"])
    lines = ["| products | peak RSS, ONNX Runtime (MiB) | peak RSS, OpenVINO (MiB) | vector index files (MiB) |", "|---|---|---|---|"]
    for n, row in sorted(by_size.items()):
        label = f"{n:,}" + (" (real photos)" if n % 1000 else "")
        cells = [", ".join(f"{v:,.1f}" for v in row[k]) for k in ("onnx", "openvino")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {_mib(row['files'])} |")
    return "\n".join(lines)


UPLOAD_LABELS = {
    "png-small": "control: 394 × 394 1-bit PNG",
    "png-1bit": "1-bit PNG",
    "png-palette": "palette PNG",
    "png-grey": "greyscale PNG",
    "png-rgb": "RGB PNG (159 MB decoded: over `--max-decoded-mb` 128)",
    "gif": "GIF",
    "jpeg-grey": "greyscale JPEG (draft mode)",
}


def upload_memory_table(r: dict[str, Any]) -> str:
    waves = ", ".join(str(i + 1) for i in range(r["rounds"]))
    lines = [f"| photo | bytes | peak (MiB) | after wave {waves} (MiB) | answers |", "|---|---:|---:|---:|---|"]
    for run in r["runs"]:
        answers = ", ".join(f"{n} × {status}" for status, n in sorted(run["statuses"].items()))
        after = ", ".join(_signed(a) for a in run["after_over_before_mib"])
        lines.append(f"| {UPLOAD_LABELS.get(run['kind'], run['kind'])} | {run['upload_bytes']:,} | {_signed(run['peak_over_before_mib'])} | "
                     f"{after} | {answers} |")
    return "\n".join(lines)


def detect_table(r: dict[str, Any]) -> str:
    f = r["figures"]
    cols = [*f["recall_labels"], "hat"]
    per = f["recall_per_label"]
    return "\n".join([
        "| recall | " + " | ".join(cols) + " | precision | boxes/photo |",
        "|---" * (len(cols) + 3) + "|",
        f"| **{f['recall']:.3f}** | " + " | ".join(f"{per.get(c, float('nan')):.3f}" for c in cols)
        + f" | {f['precision']:.3f} | {f['boxes_per_photo']:.2f} |",
    ])


@dataclass(frozen=True)
class Benchmark:
    """A kept benchmark: the arguments its docs give, its tiny form (None: none) and its table (None: none)."""

    args: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = None
    table: Callable[[dict[str, Any]], str] | None = None


def _cache(name: str) -> str:
    return str(Path(os.environ.get("SHOPLENS_CACHE") or Path.home() / ".cache" / "shoplens") / "bench" / name)


BENCHMARKS: dict[str, Benchmark] = {
    "detect": Benchmark(table=detect_table),
    "garment_search": Benchmark(("--store", _cache("garment-store"), "--min-score", "0.05")),
    "index_cli": Benchmark(("--photos", "600", "--rounds", "2", "--set", "embed.other_product.extra_sizes=", "--set", "local.enabled=false")),
    "intent_gate": Benchmark(("--out", "docs/benchmarks/intent_gate.md")),
    "labels": Benchmark(("--labels", "130", "--views", "2")),
    "load": Benchmark(("--duration", "40", "--searchers", "8", "--writers", "0", "--catalogue", "81")),
    "local_scale": Benchmark(("--images", "2000,10000,30000,100000", "--queries", "20", "--rounds", "3"),
                             ("--images", "300", "--base", "4", "--queries", "2", "--rounds", "1"), local_scale_table),
    "memory": Benchmark(("--products", "0,100000,1000000", "--root", _cache("memory"), "--runtimes", "onnx,openvino,onnx,openvino"),
                        table=memory_table),
    "scale": Benchmark(("--n", "1000000", "--dim", "256", "--kinds", "ivfsq8,ivfflat")),
    "search_latency": Benchmark(("--products", "100000", "--queries", "30", "--warmup", "30", "--store", _cache("latency-100k"))),
    "startup": Benchmark(quick=("--runs", "1")),
    "upload_memory": Benchmark(("--rounds", "2"), table=upload_memory_table),
    "fuzz_server": Benchmark(("--examples", "200", "--decoder", "20000"), ("--examples", "1", "--decoder", "10")),
}


# --- the plumbing -----------------------------------------------------------------------------------


def run(name: str, args: Sequence[str], out: Path) -> int:
    """Run one benchmark as its docs do, its result to ``out``; its exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args, "--json", str(out)]
    print("+", " ".join(argv[1:]), file=sys.stderr, flush=True)
    return subprocess.run(argv, cwd=REPO, env=env, check=False).returncode


def tables(results: Path, names: Sequence[str], benchmarks: dict[str, Benchmark] = BENCHMARKS) -> dict[str, str]:
    """The tables of ``names`` that have one, from their JSON under ``results`` (those with no result left out)."""
    out = {}
    for name in names:
        bench, path = benchmarks[name], results / f"{name}.json"
        if bench.table is not None and path.exists():
            out[name] = bench.table(read_result(path)["results"])
    return out


def regenerate(text: str, new: dict[str, str]) -> str:
    """``text`` with the body between each ``<!-- bench:NAME -->`` and ``<!-- /bench -->`` in ``new`` replaced."""
    opened = text.count("<!-- bench:")
    if opened != text.count("<!-- /bench -->") or opened != len(MARKER.findall(text)):
        raise ValueError("a <!-- bench:NAME --> marker is not closed by <!-- /bench -->")

    def swap(m: re.Match[str]) -> str:
        body = new.get(m["name"])
        return m.group(0) if body is None else f"{m.group(1)}{body.rstrip()}\n{m.group(4)}"

    return MARKER.sub(swap, text)


def marked(text: str) -> list[str]:
    """The benchmark names whose tables ``text`` marks."""
    return [m["name"] for m in MARKER.finditer(text)]


def main(argv: Sequence[str] | None = None, benchmarks: dict[str, Benchmark] = BENCHMARKS) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: those with a table; --quick: those with a tiny form)")
    ap.add_argument("--quick", action="store_true", help="tiny inputs: check the plumbing; results under benchmarks/results/quick/")
    ap.add_argument("--tables-only", action="store_true", help="run nothing: rewrite the tables from the results already there")
    ap.add_argument("--results", type=Path, help="the results folder (default benchmarks/results, with --quick benchmarks/results/quick)")
    ap.add_argument("--doc", type=Path, help="the page whose tables are rewritten (default docs/benchmarks.md; with --quick: none, tables printed)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    args = ap.parse_args(argv)
    if args.list:
        for name, b in sorted(benchmarks.items()):
            print(f"{name:16s} table: {'yes' if b.table else 'no ':3s}  quick: {'yes' if b.quick is not None else 'no'}")
        return 0
    unknown = sorted(set(args.names) - set(benchmarks))
    if unknown:
        ap.error(f"unknown benchmarks: {', '.join(unknown)} (known: {', '.join(sorted(benchmarks))})")
    if args.quick:
        names = args.names or [n for n, b in benchmarks.items() if b.quick is not None]
        no_quick = [n for n in names if benchmarks[n].quick is None]
        if no_quick:
            ap.error(f"no tiny form: {', '.join(no_quick)}")
    else:
        names = args.names or [n for n, b in benchmarks.items() if b.table is not None]
    results = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    failed = []
    if not args.tables_only:
        for name in names:
            bench = benchmarks[name]
            quick = bench.quick if args.quick else None
            if run(name, quick if quick is not None else bench.args, results / f"{name}.json"):
                failed.append(name)
    new = tables(results, [n for n in names if n not in failed], benchmarks)
    doc = args.doc or (None if args.quick else DOC)
    if doc is None:
        for name, table in new.items():
            print(f"<!-- bench:{name} -->\n{table}\n<!-- /bench -->\n")
    else:
        text = doc.read_text("utf-8")
        unmarked = sorted(set(new) - set(marked(text)))
        if unmarked:
            print(f"{doc}: no table marked for {', '.join(unmarked)}", file=sys.stderr)
        doc.write_text(regenerate(text, new), "utf-8")
        print(f"{doc}: rewrote {', '.join(sorted(set(new) & set(marked(text)))) or 'no table'}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

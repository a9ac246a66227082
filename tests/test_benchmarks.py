"""The benchmark harness and the table regeneration, without running a real benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import harness  # noqa: E402
import run  # noqa: E402

#: A benchmark as small as one can be: it writes its result through the harness.
FAKE = '''
import argparse, sys
sys.path.insert(0, {benchmarks!r})
from harness import add_json_argument, write_result
ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=3)
add_json_argument(ap, "fake")
args = ap.parse_args()
write_result("fake", {{"rows": list(range(args.rows))}}, args.json)
'''


def fake_table(results: dict[str, object]) -> str:
    return "| row |\n|---|\n" + "\n".join(f"| {r} |" for r in results["rows"])  # type: ignore[attr-defined]


def test_machine_record_names_what_measured() -> None:
    record = harness.machine()
    assert {"cpu_model", "cpu_cores", "platform", "python", "packages", "commit"} <= set(record)
    assert record["cpu_cores"] >= 1 and record["cpu_model"]
    assert {"torch", "onnxruntime", "openvino", "faiss-cpu"} <= set(record["packages"])
    assert record["commit"] != ""


def test_timing_and_memory_helpers() -> None:
    assert harness.summary([3.0, 1.0, 2.0]) == {"n": 3, "p50": 2.0, "p95": 2.9}
    assert harness.summary([]) == {"n": 0}
    assert harness.percentile([], 50) != harness.percentile([], 50)  # NaN
    assert harness.rss_mib() > 1
    status = harness.proc_status()
    assert status["VmHWM"] >= status["VmRSS"] > 1
    assert 0 < harness.free_port() < 65536


def test_result_written_with_machine_and_command(tmp_path: Path) -> None:
    path = harness.write_result("local_scale", {"sizes": {}}, tmp_path / "out" / "r.json", argv=["--images", "300"])
    record = json.loads(path.read_text())
    assert record["benchmark"] == "local_scale" and record["results"] == {"sizes": {}}
    assert record["command"] == "python benchmarks/local_scale.py --images 300"
    assert record["machine"]["cpu_cores"] >= 1
    assert harness.read_result(path) == record
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a benchmark result"):
        harness.read_result(tmp_path / "bad.json")


def test_every_kept_benchmark_is_a_script_taking_json() -> None:
    for name in run.BENCHMARKS:
        source = (REPO / "benchmarks" / f"{name}.py").read_text()
        assert 'add_json_argument(' in source and f'write_result("{name}"' in source, name


DOC = """# Benchmarks

Prose before, kept.

<!-- bench:fake -->
| row |
|---|
| old |
<!-- /bench -->

Prose between, kept.

<!-- bench:other -->
| other |
<!-- /bench -->
"""


def test_tables_regenerated_between_markers_only(tmp_path: Path) -> None:
    new = run.regenerate(DOC, {"fake": "| row |\n|---|\n| 1 |\n"})
    assert "| old |" not in new and "| 1 |\n<!-- /bench -->" in new
    assert "Prose before, kept." in new and "Prose between, kept." in new and "| other |" in new
    assert run.regenerate(new, {"fake": "| row |\n|---|\n| 1 |"}) == new  # idempotent
    assert run.regenerate(DOC, {}) == DOC
    with pytest.raises(ValueError, match="not closed"):
        run.regenerate(DOC + "<!-- bench:open -->\n| x |\n", {})


def test_real_doc_markers_are_known_benchmarks_with_tables() -> None:
    text = (REPO / "docs" / "benchmarks.md").read_text("utf-8")
    names = run.marked(text)
    assert names, "docs/benchmarks.md marks no table"
    for name in names:
        assert name in run.BENCHMARKS and run.BENCHMARKS[name].table is not None, name
    assert run.regenerate(text, {}) == text


def test_tables_render_the_documented_shapes() -> None:
    local = {"sizes": {"2000": {"query_200_candidates_ms_p50": 11.3, "query_200_candidates_ms_p95": 13.5, "query_ms_p50": 20.2,
                                "query_ms_p95": 24.8, "inverted_file_kib_per_image": 13.08, "rss_growth_mib": 74.2}}}
    assert run.local_scale_table(local).splitlines()[-1] == "| 2,000 | **11.3** / 13.5 | 20.2 / 24.8 | 13.08 | 74 |"
    upload = {"rounds": 2, "runs": [{"kind": "png-rgb", "upload_bytes": 115814, "peak_over_before_mib": 0.0,
                                     "after_over_before_mib": [-8.2, -7.0], "statuses": {"422": 16}}]}
    assert run.upload_memory_table(upload).splitlines()[-1].endswith("| 115,814 | 0 | −8, −7 | 16 × 422 |")
    memory = {"measures": [{"products": 381, "runtime": r, "peak_rss_mib": v, "index_files_mib": 2.3}
                           for r, v in (("onnx", 439.7), ("openvino", 512.7))]}
    assert run.memory_table(memory).splitlines()[-1] == "| 381 (real photos) | 439.7 | 512.7 | 2.3 |"


def test_run_command_runs_a_benchmark_and_rewrites_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = REPO / "benchmarks" / "fake.py"
    monkeypatch.setattr(run, "REPO", tmp_path)  # run() finds benchmarks/NAME.py under REPO
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "fake.py").write_text(FAKE.format(benchmarks=str(REPO / "benchmarks")))
    assert not script.exists()
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    fakes = {"fake": run.Benchmark(("--rows", "5"), ("--rows", "2"), fake_table)}
    assert run.main(["--quick", "--results", str(tmp_path / "res"), "--doc", str(doc)], benchmarks=fakes) == 0
    record = harness.read_result(tmp_path / "res" / "fake.json")
    assert record["results"] == {"rows": [0, 1]} and record["command"].endswith("--rows 2 --json " + str(tmp_path / "res" / "fake.json"))
    text = doc.read_text()
    assert "| 1 |\n<!-- /bench -->" in text and "| old |" not in text and "Prose between, kept." in text
    # --tables-only: nothing runs, the table comes from the results already there.
    doc.write_text(DOC)
    assert run.main(["--tables-only", "--results", str(tmp_path / "res"), "--doc", str(doc)], benchmarks=fakes) == 0
    assert "| 1 |\n<!-- /bench -->" in doc.read_text()

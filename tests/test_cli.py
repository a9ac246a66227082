"""The command line as other tools drive it: exact JSON lines and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoplens.cli import main

from . import test_engine  # noqa: F401  (registers the test-* intent classifiers)
from .conftest import make_image


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict], str]:
    code = main(list(argv))
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    return code, lines, out.err


def test_index_search_classify_detect_json(tmp_path: Path, synthetic_catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    code, lines, _ = run(capsys, "index", str(synthetic_catalogue), "--store", store, "--json", "--intent-classifier", "test-other_product")
    assert code == 0 and lines[0]["images_added"] == 7 and lines[0]["products_in_store"] == 6

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 10)
    good = synthetic_catalogue.parent / "img" / "p2.png"
    code, lines, _ = run(capsys, "search", str(good), str(bad), "--store", store, "--json", "--top-k", "3", "--no-rank-filter", "--no-entropy-filter")
    assert code == 1  # one image failed
    assert set(lines[0]) == {"image", "intent", "intent_scores", "regions", "timings_ms", "steps",
                             "predicted_intent", "domain", "reason"}  # SPEC's keys, then shoplens's optional ones
    assert lines[0]["image"] == str(good) and lines[0]["intent"] == "other_product"
    assert set(lines[0]["intent_scores"]) == {"apparel", "other_product", "non_product"}
    region = lines[0]["regions"][0]
    assert region["box"] is None and region["label"] is None and len(region["results"]) == 3
    hit = region["results"][0]
    assert {"product_id", "rank", "distance", "category", "title"} <= set(hit) and hit["product_id"] == "p2"
    assert hit["rank"] == pytest.approx(2 - hit["distance"], abs=1e-3)
    assert lines[1] == {"image": str(bad), "error": lines[1]["error"]} and "not an image" in lines[1]["error"]

    code, lines, _ = run(capsys, "classify", str(good), "--json", "--intent-classifier", "test-apparel")
    assert code == 0 and lines == [{"image": str(good), "intent": "apparel", "intent_scores": lines[0]["intent_scores"]}]

    code, lines, _ = run(capsys, "detect", str(good), "--json", "--detector", "test-two-boxes", "--set", "detect.min_score=0.3")
    assert code == 0 and set(lines[0]) == {"image", "garments"}
    assert [g["label"] for g in lines[0]["garments"]] == ["top", "shoes"]  # the 0.1 hat is under min_score
    assert set(lines[0]["garments"][0]) == {"box", "label", "score"}


def test_duplicate_rows_are_merged_and_said(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    import logging

    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        make_image(tmp_path / f"{name}.png", seed)
    (tmp_path / "c.csv").write_text(
        "product_id,image,title,price\n"
        "p0,a.png,Red,1\n"
        "p0,a.png,Red,1\n"  # the same row again
        "p0,b.png,Red,1\n"  # a second photo of p0: normal
        "p1,c.png,Blue,2\n"
        "p1,c.png,Blue,3\n"  # the same image again, other cells
        "p2,a.png,Other,4\n"  # another product with p0's photo: not a duplicate row
    )
    store = str(tmp_path / "store")
    caplog.set_level(logging.INFO, logger="shoplens.pipeline.indexing")
    code, lines, _ = run(capsys, "index", str(tmp_path / "c.csv"), "--store", store, "--json", "--intent-classifier", "test-other_product")
    assert code == 0 and lines[0]["rows"] == 6 and lines[0]["products"] == 3 and lines[0]["images_added"] == 4
    a, c = str(tmp_path.resolve() / "a.png"), str(tmp_path.resolve() / "c.png")
    assert lines[0]["duplicates"] == [
        {"origin": "c.csv:3", "product_id": "p0", "image": a, "duplicate_of": "c.csv:2", "cells": "identical"},
        {"origin": "c.csv:6", "product_id": "p1", "image": c, "duplicate_of": "c.csv:5", "cells": "different (ignored)"},
    ]
    logged = [r.getMessage() for r in caplog.records if r.name == "shoplens.pipeline.indexing"]
    assert any(m.startswith("c.csv:3: product 'p0' lists image") for m in logged) and any(m.startswith("c.csv:6:") for m in logged)
    code = main(["index", str(tmp_path / "c.csv"), "--store", store, "--intent-classifier", "test-other_product"])
    out = capsys.readouterr().out
    assert code == 0 and "6 row(s), 3 product(s)" in out
    assert "note: 2 duplicate row(s) merged (the same product and image as an earlier row): c.csv:3 (as c.csv:2), c.csv:6 (as c.csv:5, other cells ignored)\n" in out


def test_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "search", "x.jpg", "--store", str(tmp_path / "none"))
    assert code == 2 and "no such store" in err
    (tmp_path / "c.csv").write_text("id,file\n")
    code, _, err = run(capsys, "index", str(tmp_path / "c.csv"), "--store", str(tmp_path / "s"))
    assert code == 2 and "missing required column" in err
    code, _, err = run(capsys, "classify", "x.jpg", "--set", "search.bogus=1")
    assert code == 2 and "unknown configuration option" in err
    code, _, err = run(capsys, "detect", "x.jpg", "--detector", "nope")
    assert code == 2 and "unknown garment detector 'nope'" in err


@pytest.mark.slow
def test_human_output_and_entry_point(tmp_path: Path, synthetic_catalogue: Path) -> None:
    store = str(tmp_path / "store")
    exe = [sys.executable, "-m", "shoplens.cli"]
    out = subprocess.run(exe + ["index", str(synthetic_catalogue), "--store", store], capture_output=True, text=True, check=True)
    assert "6 product(s)" in out.stdout and "7 image(s) added" in out.stdout
    out = subprocess.run(exe + ["--help"], capture_output=True, text=True, check=True)
    for command in ("index", "search", "classify", "detect", "demo"):
        assert command in out.stdout
    make_image(tmp_path / "q.png", 3)
    out = subprocess.run(exe + ["search", str(tmp_path / "q.png"), "--store", store, "--no-rank-filter"], capture_output=True, text=True)
    assert out.returncode == 0 and str(tmp_path / "q.png") in out.stdout


@pytest.mark.slow
def test_train_intent_then_the_store_uses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for k, intent in enumerate(("apparel", "other_product", "non_product")):
        for i in range(4):
            make_image(tmp_path / "labelled" / intent / f"{i}.png", seed=100 * k + i, size=(96, 96))
    store = str(tmp_path / "store")
    code, lines, _ = run(capsys, "train-intent", str(tmp_path / "labelled"), "--store", store, "--holdout", "0.25", "--json")
    assert code == 0 and lines[0]["n_train"] == 9 and lines[0]["n_test"] == 3
    assert (tmp_path / "store" / "models" / "intent.pt").exists()
    image = str(tmp_path / "labelled" / "apparel" / "0.png")
    code, lines, _ = run(capsys, "classify", image, "--store", store, "--json")
    assert code == 0 and lines[0]["image"] == image
    from shoplens import open_store

    with open_store(store) as lens:
        assert lens.pipeline.intent_classifier.name != "imagenet-map"  # "auto" picked the trained one


def test_search_anyway_and_empty_lists_explained(tmp_path: Path, synthetic_catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert run(capsys, "index", str(synthetic_catalogue), "--store", store, "--intent-classifier", "test-other_product")[0] == 0
    image = str(synthetic_catalogue.parent / "img" / "p2.png")
    gate = ["--intent-classifier", "test-non_product", "--set", "intent.stop_score=0.8"]
    code = main(["search", image, "--store", store, *gate])
    out = capsys.readouterr().out
    assert code == 0 and "nothing searched: stopped as non_product (score 0.90 ≥ stop_score 0.8)" in out
    assert "--domain apparel or --domain other_product" in out

    code, lines, _ = run(capsys, "search", image, "--store", store, "--json", "--domain", "other_product", *gate)
    assert code == 0 and (lines[0]["intent"], lines[0]["domain"], lines[0]["predicted_intent"]) == ("other_product", "other_product", "non_product")
    assert lines[0]["regions"][0]["results"][0]["product_id"] == "p2"
    code = main(["search", image, "--store", store, "--domain", "other_product", *gate])
    out = capsys.readouterr().out
    assert "looked like non_product (0.90); searched as other_product: as asked (--domain)" in out

    code = main(["search", image, "--store", store, "--intent-classifier", "test-other_product", "--set", "search.calibration=off",
                 "--min-rank", "2.5"])
    out = capsys.readouterr().out
    assert code == 0 and "whole photo: 0 result(s): 6 candidates, 0 at or above min_rank 2.5 (best rank 2.00)" in out
    assert "try: lower search.min_rank (--min-rank)" in out
    with pytest.raises(SystemExit):
        main(["search", image, "--store", store, "--domain", "non_product"])
    assert "invalid choice: 'non_product'" in capsys.readouterr().err


def test_set_is_kept_for_keys_that_also_have_an_option() -> None:
    """`--set search.rank_filter=true` turns a filter back on for a store saved with it off; the option, when given, wins."""
    from shoplens.cli import _flags, build_parser

    args = build_parser().parse_args(["eval", "q.csv", "--store", "s", "--set", "search.rank_filter=true", "--set", "intent.enabled=true"])
    assert _flags(args) == {"search.rank_filter": "true", "intent.enabled": "true"}
    args = build_parser().parse_args(["eval", "q.csv", "--store", "s", "--set", "search.rank_filter=true", "--no-rank-filter"])
    assert _flags(args) == {"search.rank_filter": False}


def test_models_lists_every_registry_with_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    """`shoplens models` reads the registries through their public describe_*() functions."""
    from shoplens.detect import describe_detectors, list_detectors
    from shoplens.intent import describe_intent_classifiers, list_intent_classifiers

    assert main(["models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["detectors"] == describe_detectors() and sorted(out["detectors"]) == list_detectors()
    assert out["intent_classifiers"] == describe_intent_classifiers()
    assert sorted(out["intent_classifiers"]) == list_intent_classifiers()
    assert "efficientnet_lite0" in out["backbones"] and out["detectors"]["default"]


def test_the_parser_imports_no_engine() -> None:
    """`shoplens --help` answers at once: importing the CLI and building its parser loads no torch, store or model."""
    code = ("import sys, shoplens.cli; shoplens.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'faiss', 'openvino', 'shoplens.api', 'shoplens.pipeline') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    out = subprocess.run([sys.executable, "-m", "shoplens.cli", "--help"], capture_output=True, text=True, check=True)
    assert "search" in out.stdout and "classify" in out.stdout


@pytest.mark.slow
def test_the_first_export_of_a_model_is_announced_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))  # an empty cache: the backbone is exported now
    image = str(make_image(tmp_path / "q.png", 1))
    code, lines, err = run(capsys, "classify", image, "--json")
    assert code == 0 and lines[0]["image"] == image
    assert "preparing the model (once): efficientnet_lite0" in err and "ready" in err
    assert list((tmp_path / "cache" / "onnx").glob("efficientnet_lite0-*.onnx"))
    code, lines, err = run(capsys, "classify", image, "--json")
    assert code == 0 and "preparing the model" not in err


def test_index_domain_option_and_the_note_on_inferred_domains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = test_engine._split_folder(tmp_path / "catalogue")
    store = str(tmp_path / "store")
    code, lines, _ = run(capsys, "index", str(folder), "--store", store, "--json", "--intent-classifier", "test-colour", "--domain", "apparel")
    assert code == 0 and lines[0]["domains_inferred"] == 0 and lines[0]["domains_by_category"] == {}
    code = main(["index", str(folder), "--store", str(tmp_path / "inferred"), "--intent-classifier", "test-colour"])
    out = capsys.readouterr().out
    assert code == 0
    assert ("note: 9 product(s) had no domain: inferred from the intent classifier, by category (majority of its photos): "
            "cups other_product (3 of 4), hats apparel (3 of 5); 3 moved to their category's domain (--domain to say it)\n") in out

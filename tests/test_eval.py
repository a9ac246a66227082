"""shoplens eval: metrics on hand-made outcomes, and the command on generated images."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from shoplens.cli import main
from shoplens.errors import CatalogueError
from shoplens.eval.metrics import LabelledQuery, QueryOutcome, lost_by, read_queries, summarise

from . import test_engine  # noqa: F401  (registers the test-* intent classifiers)


def outcome(pid: str, products: list[str], intent: str = "other_product", true_intent: str | None = None, cat: str | None = None) -> QueryOutcome:
    return QueryOutcome(LabelledQuery("x.jpg", pid, cat, true_intent), intent, products, [cat] * len(products), {"total": 10.0})


def test_metrics_hand_computed() -> None:
    outs = [
        outcome("a", ["a", "b"], true_intent="other_product", cat="x"),  # rank 1
        outcome("b", ["c", "d", "b"], true_intent="other_product"),  # rank 3
        outcome("c", ["d"], intent="apparel", true_intent="other_product"),  # missed
        outcome("d", [], intent="non_product", true_intent="non_product"),  # gated
    ]
    r = summarise(outs, ks=(1, 3))
    assert r.recall_at == {1: 0.25, 3: 0.5}
    assert r.map == pytest.approx((1 + 1 / 3 + 0 + 0) / 4)
    assert r.returned["mean_size"] == pytest.approx(2.0)  # non_product lists are not counted
    assert r.returned["precision_product"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert r.intent_confusion == [[0, 0, 0], [1, 2, 0], [0, 0, 1]]
    assert r.intent_accuracy == pytest.approx(0.75)
    assert r.timings_ms["total"]["p50"] == 10.0


def test_read_queries_validation(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text("image,product_id,split\na.jpg,1,val\nb.jpg,2,train\n")
    qs = read_queries(tmp_path / "q.csv", {"split": "val"})
    assert [q.product_id for q in qs] == ["1"] and qs[0].image == str(tmp_path / "a.jpg")
    (tmp_path / "bad.csv").write_text("image\na.jpg\n")
    with pytest.raises(CatalogueError, match="label column"):
        read_queries(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("image,intent\na.jpg,furniture\n")
    with pytest.raises(CatalogueError, match="not one of"):
        read_queries(tmp_path / "bad2.csv")


def test_eval_command_writes_report(tmp_path: Path, synthetic_catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = synthetic_catalogue.parent / "img"
    (tmp_path / "q.csv").write_text("image,product_id\n" + "".join(f"{img}/p{i}.png,p{i}\n" for i in range(6)))
    code = main(["eval", str(tmp_path / "q.csv"), "--store", str(tmp_path / "s"), "--catalogue", str(synthetic_catalogue),
                 "--intent-classifier", "test-other_product", "--no-rank-filter", "--no-entropy-filter", "--json", "--report", str(tmp_path / "r.html")])
    assert code == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["recall_at"]["1"] == 1.0 and report["queries"] == 6  # each catalogue photo finds itself
    page = (tmp_path / "r.html").read_text()
    assert "Recall@K curve" in page and "data:image/png;base64," in page


def region(results: list[tuple[str, float]], removed: dict[str, list[str]]) -> SimpleNamespace:
    return SimpleNamespace(results=[SimpleNamespace(product_id=p, rank=r) for p, r in results],
                           steps={step: {"removed": ids} for step, ids in removed.items()})


def test_eval_blames_the_step_that_lost_the_expected_product() -> None:
    assert lost_by("non_product", [], "p") == ["intent"]
    assert lost_by("other_product", [region([("a", 1.5)], {"rank_filter": ["p"], "entropy_filter": []})], "p") == ["rank_filter"]
    assert lost_by("other_product", [region([("a", 1.5)], {"rank_filter": [], "entropy_filter": ["p"]})], "p") == ["entropy_filter"]
    # Ranked first by rank, returned second: the ordering moved it.
    assert lost_by("other_product", [region([("a", 1.4), ("p", 1.5)], {})], "p") == ["category_order"]
    # Fourth by rank, returned sixth: moved out of the first five.
    moved = region([("a", 1.9), ("b", 1.5), ("c", 1.45), ("d", 1.4), ("e", 1.3), ("p", 1.6)], {})
    assert lost_by("other_product", [moved], "p") == ["category_order_top5"]
    # Removed from one garment's list but returned by another's: not lost.
    assert lost_by("apparel", [region([], {"rank_filter": ["p"]}), region([("p", 1.5)], {})], "p") == []

"""Golden tests of SPEC steps 3-6, including SPEC.md's worked example."""

from __future__ import annotations

import math

import pytest

from shoplens.config import SearchConfig
from shoplens.rerank import (
    Hit,
    category_order,
    category_scores,
    category_surprisal,
    entropy_filter,
    postprocess,
    rank_filter,
    similar_set,
)


def hits_from(spec: list[tuple[str, float, str]]) -> list[Hit]:
    return [Hit(i, pid, d, cat) for i, (pid, d, cat) in enumerate(spec)]


def test_rank_is_two_minus_distance_and_filter_boundary() -> None:
    hits = hits_from([("a", 0.38, "x"), ("b", 0.92, "x"), ("c", 0.9201, "x")])
    assert hits[0].rank == pytest.approx(1.62)
    kept = rank_filter(hits, min_rank=1.08)
    assert [h.product_id for h in kept] == ["a", "b"]  # distance 0.92 is exactly rank 1.08: kept


def test_spec_worked_example_cola_20_8_2() -> None:
    spec = [(f"bev{i}", 0.1 + i * 0.01, "beverage") for i in range(20)]
    spec += [(f"cup{i}", 0.2 + i * 0.01, "cup") for i in range(8)]
    spec += [(f"toy{i}", 0.15 + i * 0.01, "toy") for i in range(2)]
    hits = hits_from(spec)
    bits = category_surprisal(hits)
    assert bits["beverage"] == pytest.approx(-math.log2(20 / 30))
    assert round(bits["beverage"], 2) == 0.58
    assert round(bits["cup"], 2) == 1.91
    assert round(bits["toy"], 2) == 3.91
    kept = entropy_filter(hits, max_bits=3.0)
    assert len(kept) == 28
    assert {h.category for h in kept} == {"beverage", "cup"}


def test_entropy_filter_single_category_keeps_all() -> None:
    hits = hits_from([("a", 0.1, "x")])
    assert entropy_filter(hits, max_bits=0.0) == hits


def test_similar_set_dedupes_products_and_caps() -> None:
    hits = hits_from([("a", 0.5, "x"), ("a", 0.2, "x"), ("b", 0.3, "y"), ("c", 1.5, "y"), ("d", 0.4, "y")])
    out = similar_set(hits, max_distance=1.0, k=2)
    assert [(h.product_id, h.distance) for h in out] == [("a", 0.2), ("b", 0.3)]


def test_category_order_hand_computed() -> None:
    # Rank order: a(x) b(y) c(y) d(x) e(y) -> positions 1..5
    # S_x = 1/1 + 1/4 = 1.25 ; S_y = 1/2 + 1/3 + 1/5 = 1.0333
    hits = hits_from([("a", 0.1, "x"), ("b", 0.2, "y"), ("c", 0.3, "y"), ("d", 0.4, "x"), ("e", 0.5, "y")])
    scores = category_scores(hits)
    assert scores["x"] == pytest.approx(1.25)
    assert scores["y"] == pytest.approx(1 / 2 + 1 / 3 + 1 / 5)
    assert [h.product_id for h in category_order(hits)] == ["a", "d", "b", "c", "e"]


def test_category_order_many_small_beats_one_first() -> None:
    # a(x) at 1; b,c,d (y) at 2,3,4: S_x = 1, S_y = 0.5+0.333+0.25 = 1.083 -> y first
    hits = hits_from([("a", 0.1, "x"), ("b", 0.2, "y"), ("c", 0.3, "y"), ("d", 0.4, "y")])
    assert [h.product_id for h in category_order(hits)] == ["b", "c", "d", "a"]


def test_single_category_is_rank_order() -> None:
    hits = hits_from([("b", 0.3, "x"), ("a", 0.1, "x"), ("c", 0.2, "x")])
    assert [h.product_id for h in category_order(hits)] == ["a", "c", "b"]


def test_missing_category_counts_as_its_own() -> None:
    hits = hits_from([("a", 0.1, None), ("b", 0.2, "")] + [(f"x{i}", 0.3, "x") for i in range(14)])
    bits = category_surprisal(hits)
    assert bits[""] == pytest.approx(3.0)  # 2 of 16


def test_postprocess_reports_each_step_and_switches() -> None:
    spec = [(f"bev{i}", 0.1 + i * 0.01, "beverage") for i in range(20)]
    spec += [(f"cup{i}", 0.2 + i * 0.01, "cup") for i in range(8)]
    spec += [(f"toy{i}", 0.05 + i * 0.01, "toy") for i in range(2)]
    spec += [("far", 1.5, "beverage")]
    cfg = SearchConfig(similar_k=50, top_k=100)
    out, steps = postprocess(hits_from(spec), cfg)
    assert steps["similar_set"]["after"] == 31
    assert steps["rank_filter"] == {"enabled": True, "before": 31, "after": 30, "min_rank": 1.08}
    assert steps["entropy_filter"]["after"] == 28 and steps["entropy_filter"]["dropped_categories"] == ["toy"]
    assert [h.category for h in out[:20]] == ["beverage"] * 20
    # Every step off: rank order, toys first (they are nearest), far one kept.
    off = SearchConfig(similar_k=50, top_k=100, rank_filter=False, entropy_filter=False, category_order=False)
    out, steps = postprocess(hits_from(spec), off)
    assert len(out) == 31 and out[0].product_id == "toy0" and out[-1].product_id == "far"
    assert steps["rank_filter"]["enabled"] is False
    out, _ = postprocess(hits_from(spec), cfg, top_k=3)
    assert len(out) == 3

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
    spec += [(f"toy{i}", 0.15 + i * 0.01, "toy") for i in range(2)]  # SPEC's worked example
    spec += [("far", 1.5, "beverage")]
    cfg = SearchConfig(similar_k=50, top_k=100, order_tolerance=2.0)  # SPEC's plain ordering
    out, steps = postprocess(hits_from(spec), cfg)
    assert steps["similar_set"]["after"] == 31
    assert steps["rank_filter"] == {"enabled": True, "before": 31, "after": 30, "min_rank": 1.08, "calibration": None, "removed": ["far"],
                                     "best_rank": 1.9}
    assert steps["entropy_filter"]["removed"] == ["toy0", "toy1"]
    assert steps["entropy_filter"]["after"] == 28 and steps["entropy_filter"]["dropped_categories"] == ["toy"]
    assert [h.category for h in out[:20]] == ["beverage"] * 20
    # The default tolerance (0.02) breaks near-ties only: each cup lets the beverage that trails it
    # by 0.01 go first (beverage scores higher), not the one 0.02 behind.
    near, _ = postprocess(hits_from(spec), SearchConfig(similar_k=50, top_k=100))
    assert [h.product_id for h in near[:15]] == [f"bev{i}" for i in range(12)] + ["cup0", "bev12", "cup1"]
    # Every step off: rank order (toys among the beverages), far one kept.
    off = SearchConfig(similar_k=50, top_k=100, rank_filter=False, entropy_filter=False, category_order=False)
    out, steps = postprocess(hits_from(spec), off)
    assert len(out) == 31 and [h.product_id for h in out[5:8]] == ["bev5", "toy0", "bev6"] and out[-1].product_id == "far"
    assert steps["rank_filter"]["enabled"] is False
    out, _ = postprocess(hits_from(spec), cfg, top_k=3)
    assert len(out) == 3


def test_entropy_filter_weighs_a_category_against_its_size() -> None:
    # 40 hits: 30 of category x (30 products), one hit each of y and z, which have one product each
    # in the catalogue, and 8 of w (of 80 products). SPEC's surprisal drops y, z (5.3 bits) and w
    # (2.3 bits is kept); against what each category could hold, y and z are complete (0 bits).
    spec = [(f"x{i}", 0.3 + i * 0.001, "x") for i in range(30)] + [("y0", 0.1, "y"), ("z0", 0.2, "z")]
    spec += [(f"w{i}", 0.4 + i * 0.001, "w") for i in range(8)]
    hits = hits_from(spec)
    sizes = {"x": 30, "y": 1, "z": 1, "w": 80}
    bits = category_surprisal(hits, sizes)
    assert bits["y"] == 0.0 and bits["z"] == 0.0
    assert bits["x"] == pytest.approx(-math.log2(30 / 30))
    assert bits["w"] == pytest.approx(-math.log2(8 / 40))
    assert {h.category for h in entropy_filter(hits, max_bits=2.0, sizes=sizes)} == {"x", "y", "z"}
    # SPEC's formula alone drops z; y holds the best hit and stays.
    assert {h.category for h in entropy_filter(hits, max_bits=2.0)} == {"x", "y"}


def test_entropy_filter_drops_nothing_when_no_category_is_certain() -> None:
    # 20 categories of 2 hits each: every one is 3.32 bits, over the 3-bit limit.
    hits = hits_from([(f"p{c}-{i}", 0.1 + c * 0.01 + i * 0.001, f"c{c}") for c in range(20) for i in range(2)])
    assert len(entropy_filter(hits, max_bits=3.0)) == 40
    # One certain category: the uncertain ones go, but for the best hit's (p0-0, category c0).
    hits += hits_from([(f"big{i}", 0.5, "big") for i in range(40)])
    assert {h.category for h in entropy_filter(hits, max_bits=3.0)} == {"big", "c0"}


def test_entropy_filter_keeps_the_best_hits_category() -> None:
    # A verified label of a rare style at the top of neighbours of one common style.
    hits = hits_from([("label", 0.2, "stout")] + [(f"lager{i}", 0.5 + i * 0.001, "lager") for i in range(30)])
    assert category_surprisal(hits)["stout"] > 3.0
    kept = entropy_filter(hits, max_bits=3.0)
    assert [h.product_id for h in kept][:1] == ["label"] and len(kept) == 31
    # The same rare style below the top goes.
    hits = hits_from([("label", 0.6, "stout")] + [(f"lager{i}", 0.5 + i * 0.001, "lager") for i in range(30)])
    assert "label" not in {h.product_id for h in entropy_filter(hits, max_bits=3.0)}


def test_category_order_breaks_only_near_ties_in_rank() -> None:
    # a(x) 1.90, b(y) 1.80, c(y) 1.79, d(y) 1.78: S_y = 1/2 + 1/3 + 1/4 = 1.083 > S_x = 1.
    hits = hits_from([("a", 0.10, "x"), ("b", 0.20, "y"), ("c", 0.21, "y"), ("d", 0.22, "y")])
    assert [h.product_id for h in category_order(hits)] == ["b", "c", "d", "a"]  # SPEC's plain ordering
    assert [h.product_id for h in category_order(hits, tolerance=2.0)] == ["b", "c", "d", "a"]
    # a is 0.1 better than b: a clear difference, kept.
    assert [h.product_id for h in category_order(hits, tolerance=0.02)] == ["a", "b", "c", "d"]
    assert [h.product_id for h in category_order(hits, tolerance=0.0)] == ["a", "b", "c", "d"]
    # Near-ties: e(z) 1.795 sits between b and c; z (1/3) scores below y (1/2 + 1/4 + 1/5): c and d pass it.
    near = hits_from([("a", 0.10, "x"), ("b", 0.20, "y"), ("e", 0.205, "z"), ("c", 0.21, "y"), ("d", 0.22, "y")])
    assert [h.product_id for h in category_order(near, tolerance=0.02)] == ["a", "b", "c", "d", "e"]
    # S_x = 1 beats S_y = 0.95: a stays first whatever the tolerance.
    assert [h.product_id for h in category_order(near, tolerance=0.1)][0] == "a"


def test_postprocess_calibrates_against_the_background_and_reports_precision() -> None:
    from shoplens.embed.calibration import Calibration

    # One product stands 0.2 nearer than the 30 others (background 1.0): a margin calibration
    # that needs 0.1 keeps it alone; its precision comes from the curve.
    spec = [("hit", 0.8, "x")] + [(f"o{i}", 1.0 + i * 0.001, "x") for i in range(30)]
    cal = Calibration(0.5, "product", -0.1, kind="margin", curve=[(0.7, 0.9), (0.92, 0.5), (1.0, 0.0)])
    out, steps = postprocess(hits_from(spec), SearchConfig(top_k=10), calibration=cal)
    assert [h.product_id for h in out] == ["hit"]
    background = 1.0 + 0.001 * 19  # median of the 11th to 31st products (o9 … o29)
    assert out[0].distance == pytest.approx(0.92 + 0.8 - background + 0.1, abs=1e-6)
    assert out[0].rank == pytest.approx(2 - out[0].distance)
    assert out[0].precision == pytest.approx(float(__import__("numpy").interp(out[0].distance, [0.7, 0.92, 1.0], [0.9, 0.5, 0.0])), abs=1e-4)
    assert steps["rank_filter"]["calibration"] == "margin" and steps["rank_filter"]["after"] == 1


def test_hits_whose_calibrated_distance_clamps_to_zero_keep_their_raw_order() -> None:
    from shoplens.embed.calibration import Calibration

    # Three look-alikes far nearer than the background: each margin-calibrated distance is below 0 and
    # clamps to 0, so ranks tie. The exact match (raw 0.0) must still come first, though its id sorts last.
    spec = [("z-exact", 0.0, "w"), ("a-alike", 0.05, "w"), ("b-alike", 0.1, "w")] + [(f"o{i}", 1.6 + i * 0.001, "x") for i in range(30)]
    cal = Calibration(0.5, "product", 0.2, kind="margin")
    for order in (True, False):
        out, _ = postprocess(hits_from(spec), SearchConfig(top_k=3, category_order=order, entropy_filter=False), calibration=cal)
        assert [h.distance for h in out] == [0.0, 0.0, 0.0]
        assert [h.product_id for h in out] == ["z-exact", "a-alike", "b-alike"]

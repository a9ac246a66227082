"""The default pipeline returns what retrieval finds: index-time calibration, the gate's margin, per-step losses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from shoplens import Shoplens
from shoplens.config import Config
from shoplens.embed.calibration import (
    REFERENCE_DISTANCE,
    Calibration,
    Pairs,
    background,
    default_calibration,
    fit_calibration,
)
from shoplens.embed.synthetic import shopper_view
from shoplens.pipeline import Pipeline
from shoplens.pipeline.calibrate import REFIT_MIN, SOURCE, needs_fit

from .conftest import make_image, write_grocery_catalogue

OFF = {"intent.enabled": False, "search.rank_filter": False, "search.entropy_filter": False, "search.category_order": False}


def test_background_is_the_median_of_the_far_neighbours() -> None:
    assert background([0.5]) is None
    assert background([0.2, 0.9, 1.0]) == pytest.approx(0.95)  # short set: from half-way (position 1) on
    d = [0.1 * i for i in range(30)]
    assert background(d) == pytest.approx(float(np.median(d[10:])))


def margin_pairs(rng: np.random.Generator, n_queries: int = 200, k: int = 30) -> Pairs:
    """Each query: its product 0-0.3 nearer than a background near 1.0, and k - 1 others around it."""
    d, r, c, q, b = [], [], [], [], []
    for i in range(n_queries):
        level = rng.uniform(0.8, 1.2)  # queries land at different distances from everything
        hits = [level - rng.uniform(0.0, 0.3)] + list(level + rng.normal(0, 0.04, k - 1))
        rel = [True] + [False] * (k - 1)
        order = np.argsort(hits)
        hits, rel = [hits[j] for j in order], [rel[j] for j in order]
        bg = background(hits)
        d += hits
        r += rel
        c += ["a" if i % 2 else "b"] * k
        q += [i] * k
        b += [bg] * k
    return Pairs(np.array(d), np.array(r), np.array(c), np.array(q), np.ones(n_queries, np.int64), np.array(b))


def test_margin_calibration_thresholds_the_margin_over_the_background() -> None:
    pairs = margin_pairs(np.random.default_rng(0))
    cal = fit_calibration(pairs, target_precision=0.5, relevance="product", kind="margin")
    assert cal.kind == "margin" and -0.3 < cal.threshold < 0.0
    # A hit exactly at the threshold over its background sits at the default min_rank.
    assert cal.distance("a", 1.0 + cal.threshold_of("a"), 1.0) == pytest.approx(REFERENCE_DISTANCE)
    # The same margin at another background level is the same calibrated distance.
    assert cal.distance("a", 0.7, 0.9) == pytest.approx(cal.distance("a", 1.1, 1.3))
    precision = [p for _, p in cal.curve]
    assert precision == sorted(precision, reverse=True) and precision[0] > 0.5 and precision[-1] == 0.0
    # Per-category thresholds shrunk to the domain's keep the fitted precision near the target, not on it.
    assert cal.info["fitted_precision"] == pytest.approx(0.5, abs=0.02)
    # An absolute threshold cannot do that here: queries land 0.8-1.2 from everything.
    absolute = fit_calibration(pairs, target_precision=0.5, relevance="product", kind="distance")
    assert absolute.info["fitted_recall"] < cal.info["fitted_recall"]


def test_calibration_files_round_trip_and_older_ones_load(tmp_path: Path) -> None:
    cal = Calibration(0.08, "product", -0.07, {"Juice": -0.05}, {"source": SOURCE, "images": 81}, kind="margin", curve=[(0.8, 0.3), (1.0, 0.0)])
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == cal
    # A calibration train-embedder saved before the kinds existed: distance, no curve.
    old = {"target_precision": 0.9, "relevance": "category", "threshold": 0.7, "thresholds": {"x": 0.6}, "info": {}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Calibration.load(tmp_path / "old.json")
    assert loaded.kind == "distance" and loaded.precision(0.5) is None
    assert loaded.distance("x", 0.6) == pytest.approx(REFERENCE_DISTANCE)


def test_when_a_store_fits_its_calibration_again() -> None:
    synthetic = Calibration(0.08, "product", -0.07, info={"source": SOURCE, "images": 100}, kind="margin")
    labelled = Calibration(0.9, "category", 0.7, info={"queries": 300})
    assert needs_fit(None, 10) and not needs_fit(None, 1)
    assert not needs_fit(synthetic, 105) and needs_fit(synthetic, 110) and needs_fit(synthetic, 90)
    assert not needs_fit(Calibration(0.08, "product", 0, info={"source": SOURCE, "images": 3}, kind="margin"), 3 + REFIT_MIN - 1)
    assert not needs_fit(labelled, 10_000)  # train-embedder's, from labelled photos: kept


def test_shopper_view_is_a_changed_photo_of_the_product() -> None:
    rng = np.random.default_rng(0)
    product = np.zeros((120, 80, 3), np.uint8)
    product[:, :, 0] = 220
    view = shopper_view(product, [np.full((50, 50, 3), 30, np.uint8)], rng)
    assert view.dtype == np.uint8 and view.shape == (320, 320, 3)
    red = (view[..., 0] > 120) & (view[..., 1] < 100)
    assert 0.15 < red.mean() < 0.95  # the product, on the background
    assert not np.array_equal(view, shopper_view(product, [np.full((50, 50, 3), 30, np.uint8)], rng))


def test_the_gate_searches_a_photo_it_is_unsure_of() -> None:
    pipeline = Pipeline(Config())
    assert pipeline.config.intent.stop_score == 0.9
    assert pipeline.intent_of(np.array([0.05, 0.05, 0.9])) == "non_product"
    assert pipeline.intent_of(np.array([0.05, 0.1, 0.85])) == "other_product"
    unsure = np.array([0.1, 0.3, 0.6])
    assert pipeline.intent_of(unsure) == "other_product" and pipeline.is_uncertain(unsure)
    assert pipeline.intent_of(np.array([0.7, 0.2, 0.1])) == "apparel"
    argmax = Pipeline(Config().with_flags(**{"intent.stop_score": 0.0}))
    assert argmax.intent_of(unsure) == "non_product"


def test_bad_calibration_settings_are_errors() -> None:
    from shoplens.errors import ConfigError

    with pytest.raises(ConfigError, match="search.calibration"):
        Pipeline(Config().with_flags(**{"search.calibration": "sometimes"}))
    with pytest.raises(ConfigError, match="target_precision"):
        Pipeline(Config().with_flags(**{"search.target_precision": 1.5}))


@pytest.mark.data
@pytest.mark.slow
def test_default_search_returns_what_retrieval_finds_on_real_photos(data_dir: Path, tmp_path: Path) -> None:
    """A fresh store of 30 grocery products calibrates itself at index time; the default search then
    returns the products retrieval finds for store photos of them, each with its precision."""
    g = data_dir / "grocery"
    with open(g / "catalog.csv", encoding="utf-8") as f:
        products = list(csv.DictReader(f))[::3][:30]
    ids = {r["product_id"] for r in products}
    with open(g / "photos.csv", encoding="utf-8") as f:
        photos = [r for r in csv.DictReader(f) if r["split"] == "val" and r["product_id"] in ids][::2]
    catalogue = write_grocery_catalogue(tmp_path / "catalog.csv", g, products)
    with Shoplens(tmp_path / "store") as lens:
        report = lens.index(catalogue)
        assert report.calibrated == ["other_product"]
        cal = lens.pipeline.calibrations["other_product"]
        assert cal.kind == "margin" and cal.info["source"] == SOURCE and cal.curve
        assert lens.index(catalogue).calibrated == []  # the same rows again: nothing to refit
        default = lens.search([str(g / r["image"]) for r in photos])
    with Shoplens(tmp_path / "store", **OFF) as lens:
        found = lens.search([str(g / r["image"]) for r in photos], top_k=10)

    def recall(results: list, k: int) -> float:
        return float(np.mean([any(r["product_id"] in [h.product_id for h in reg.results[:k]] for reg in res.regions)
                              for r, res in zip(photos, results)]))

    empty = np.mean([not any(reg.results for reg in res.regions) for res in default])
    assert len(photos) >= 40 and empty <= 0.05
    assert recall(default, 1) >= recall(found, 1) - 0.03
    assert recall(default, 5) >= recall(found, 5) - 0.04
    # The calibrated partition's hits (an unsure gate also searches the other one: few products, no curve).
    hits = [h for res in default for reg in res.regions if reg.domain in (None, "other_product") for h in reg.results]
    assert len(hits) >= len(photos)
    assert all(0.0 <= h.precision <= 1.0 and h.rank == pytest.approx(2 - h.distance, abs=1e-3) and h.rank >= 1.08 for h in hits)
    assert default_calibration().kind == "margin"


def test_a_deferred_refit_is_due_after_the_write_and_dropped_if_overtaken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``defer_calibration`` a write only marks the refit due; a refit whose domain got another
    calibration while it ran (train-embedder's) leaves that one in place."""
    from shoplens.pipeline import calibrate

    for i in range(12):
        make_image(tmp_path / f"p{i}.png", seed=i)
    (tmp_path / "catalog.csv").write_text("product_id,image,domain\n" + "".join(f"p{i},p{i}.png,other_product\n" for i in range(12)))
    with Shoplens(tmp_path / "store", defer_calibration=True) as lens:
        report = lens.index(tmp_path / "catalog.csv")
        assert report.calibrated == [] and "other_product" not in lens.pipeline.calibrations
        assert lens.calibration_due.is_set()
        labelled = Calibration(0.9, "product", 0.7, info={"queries": 300})
        real = calibrate.synthetic_calibration

        def overtaken(*args: object, **kwargs: object) -> Calibration | None:
            lens.pipeline.set_calibration("other_product", labelled)  # as train-embedder would, meanwhile
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(calibrate, "synthetic_calibration", overtaken)
        assert lens.refresh_calibrations() == [] and lens.pipeline.calibrations["other_product"] is labelled
        monkeypatch.setattr(calibrate, "synthetic_calibration", real)
        lens.pipeline.calibrations.clear()
        assert lens.refresh_calibrations() == ["other_product"]
        assert lens.pipeline.calibrations["other_product"].info["source"] == SOURCE
        lens.calibration_due.clear()
        lens.delete_products([f"p{i}" for i in range(8)])  # shrunk by 8 of 12: due again, not fitted in the delete
        assert lens.calibration_due.is_set() and lens.pipeline.calibrations["other_product"].info["images"] == 12

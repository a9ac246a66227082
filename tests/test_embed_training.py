"""Embedding quality pieces: poolings, multi-scale describe, heads, whitening, train-embedder, calibration."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from shoplens.embed import (
    Calibration,
    Embedder,
    IdentityHead,
    LinearHead,
    MLPHead,
    ProjectionCfg,
    fit_whitening,
    get_pooling,
    l2_normalize,
    load_head,
    returned_set_quality,
    similar_sets,
    train_embedder,
    train_projection,
)
from shoplens.embed.calibration import REFERENCE_DISTANCE, fit_calibration
from shoplens.embed.pooling import rmac_regions
from shoplens.embed.training import TARGET_PRECISION
from shoplens.models import Encoding

from .conftest import write_grocery_catalogue


def _clusters(n_labels: int = 12, per: int = 8, dim: int = 64, noise: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled descriptors: a shared nuisance direction per photo plus a weak label signal."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels, dim))
    nuisance = rng.normal(size=(4, dim)) * 3.0
    labels = np.repeat(np.arange(n_labels), per)
    x = 0.6 * centres[labels] + noise * rng.normal(size=(len(labels), dim)) + rng.normal(size=(len(labels), 4)) @ nuisance
    cats = labels // 3
    return x.astype(np.float32), labels.astype(str), cats.astype(str)


def _r1(vec: np.ndarray, labels: np.ndarray) -> float:
    s = vec @ vec.T
    np.fill_diagonal(s, -np.inf)
    return float(np.mean(labels[np.argmax(s, 1)] == labels))


def test_rmac_regions_cover_the_map_and_respect_bounds() -> None:
    for h, w in [(7, 7), (7, 10), (10, 7), (1, 1), (3, 12)]:
        regions = rmac_regions(h, w)
        assert regions[0] == (0, 0, h, w)
        assert all(0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w for y0, x0, y1, x1 in regions)
        assert len(set(regions)) == len(regions)
    assert len(rmac_regions(7, 7)) == 1 + 1 + 4 + 9 - 1  # level 1 of a square map is the whole map again


def test_rmac_is_the_sum_of_normalised_region_maxima() -> None:
    fmap = torch.ones(4, 7, 7)
    fmap[2, 0, 0] = 3.0  # only the regions holding the top-left cell see it
    r = torch.from_numpy(get_pooling("rmac-s32")(fmap.numpy()))
    regions = rmac_regions(7, 7)
    expect = torch.zeros(4)
    for y0, x0, _y1, _x1 in regions:
        v = torch.tensor([1.0, 1.0, 3.0 if (y0, x0) == (0, 0) else 1.0, 1.0])
        expect += v / v.norm()
    torch.testing.assert_close(r, expect)


@pytest.mark.parametrize("shape", [(1280, 10, 7), (1280, 7, 7), (64, 3, 9)])
def test_rmac_matches_region_maxima_of_the_channels_first_map(shape: tuple[int, int, int]) -> None:
    """Same numbers, bit for bit, as maxima taken on the (C, h, w) map: stored descriptors stay valid."""
    fmap = np.maximum(np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32), 0)
    expect = np.zeros(shape[0], np.float32)
    for y0, x0, y1, x1 in rmac_regions(*shape[1:]):
        v = fmap[:, y0:y1, x0:x1].max(axis=(-2, -1))
        expect += v / max(float(np.linalg.norm(v)), 1e-12)
    assert np.array_equal(get_pooling("rmac-s32")(fmap), expect)


def test_multiscale_describe_concatenates_normalised_parts() -> None:
    emb = Embedder("other_product", "efficientnet_lite0", 224, pooling="gem3-s32", extra_sizes=[320])
    assert emb.input_sizes == (224, 320) and emb.pooling == "gem3-s32+ms320"
    rng = np.random.default_rng(0)

    def enc(h: int) -> Encoding:
        return Encoding(photo=None, input_hw=(h * 32, h * 32), features={"s32": torch.from_numpy(rng.random((16, h, h), dtype=np.float32))})  # type: ignore[arg-type]

    raw = emb.describe([enc(7), enc(7)], [enc(10), enc(10)])
    assert raw.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(raw[:, :16], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(raw[:, 16:], axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        emb.describe([enc(7)])


def test_heads_round_trip(tmp_path: Path) -> None:
    x, labels, _ = _clusters()
    for head in (fit_whitening(x, 16), train_projection(x, labels, dim=16, epochs=3, cfg=ProjectionCfg(hidden=8))):
        path = tmp_path / f"{head.kind}.pt"
        head.save(path)
        back = load_head(path)
        assert type(back) is type(head)
        np.testing.assert_allclose(back.apply(x), head.apply(x), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(back.apply(x), axis=1), 1.0, rtol=1e-5)
    assert isinstance(load_head(tmp_path / "mlp.pt"), MLPHead)
    with pytest.raises(ValueError):
        LinearHead(np.zeros(3), np.zeros((2, 4)))


def test_whitening_decorrelates_the_catalogue() -> None:
    x, _, _ = _clusters(n_labels=30, per=10)
    head = fit_whitening(x, 8, shrinkage=0.0)
    z = (l2_normalize(x) - head.mean) @ head.weight.T
    cov = np.cov(z.T, bias=True)
    np.testing.assert_allclose(cov, np.eye(8), atol=1e-3)


def test_trained_projection_beats_the_raw_descriptor_and_is_deterministic() -> None:
    x, labels, _ = _clusters(per=20, noise=0.5)
    train = np.arange(len(x)) % 20 < 15
    head = train_projection(x[train], labels[train], dim=32, epochs=40, seed=1)
    again = train_projection(x[train], labels[train], dim=32, epochs=40, seed=1)
    np.testing.assert_array_equal(head.apply(x), again.apply(x))
    test = ~train
    q_raw, q_head = l2_normalize(x), head.apply(x)

    def r1(v: np.ndarray) -> float:
        return float(np.mean(labels[train][np.argmax(v[test] @ v[train].T, 1)] == labels[test]))

    assert r1(q_head) > r1(q_raw) + 0.15, (r1(q_raw), r1(q_head))


def test_train_embedder_reports_a_heldout_check_and_a_calibration() -> None:
    x, labels, cats = _clusters(n_labels=12, per=20, noise=0.5)
    catalogue = np.arange(len(x)) % 20 == 0  # one catalogue image per product, the rest labelled extras
    head, report = train_embedder(x, labels, domain="other_product", categories=cats, catalogue=catalogue, dim=32, epochs=40)
    assert report.labels == "product_id" and report.classes == 12 and report.extra_images == int((~catalogue).sum())
    assert report.heldout is not None and report.heldout["queries"] > 0
    assert report.heldout["r1_trained"] > report.heldout["r1_untrained"]
    cal = report.calibration
    # Fitted on the held-out photos, as the index-time calibration is on synthetic ones: the margin of the
    # same product over the query's background, at the store's default target precision.
    assert cal is not None and cal.kind == "margin" and cal.relevance == "product" and set(cal.thresholds) == set(cats)
    assert cal.target_precision == TARGET_PRECISION and cal.info["fitted_on"] == "held-out labelled photos"
    assert -2 < cal.threshold < 2 and cal.curve
    assert head.apply(x).shape == (len(x), 32)


def test_train_embedder_falls_back_to_categories_then_to_the_default() -> None:
    x, labels, cats = _clusters(n_labels=12, per=1)
    _, report = train_embedder(x, labels, domain="apparel", categories=cats, dim=8, epochs=5)
    assert report.labels == "category"
    head, report = train_embedder(x[::3], labels[::3], domain="apparel", dim=8)
    assert report.labels is None and report.reason and isinstance(head, IdentityHead)


def test_calibration_maps_the_default_min_rank_to_the_target_precision() -> None:
    rng = np.random.default_rng(0)
    # Category "near": relevant hits at distance ~0.5, irrelevant ones ~1.1; category "far": ~1.0 vs ~1.5.
    n = 400
    cat = np.array(["near"] * n + ["far"] * n)
    rel = rng.random(2 * n) < 0.5
    d = np.where(cat == "near", np.where(rel, 0.5, 1.1), np.where(rel, 1.0, 1.5)) + rng.normal(0, 0.05, 2 * n)
    from shoplens.embed.calibration import Pairs

    pairs = Pairs(d, rel, cat, np.arange(2 * n), rel.astype(np.int64))
    cal = fit_calibration(pairs, target_precision=0.95, prior=0)
    assert 0.6 < cal.thresholds["near"] < 1.15 and 1.05 < cal.thresholds["far"] < 1.5
    assert cal.thresholds["near"] < cal.thresholds["far"]
    p_raw, r_raw = returned_set_quality(pairs)
    p_cal, r_cal = returned_set_quality(pairs, cal)
    assert p_cal >= 0.95 and r_cal > 0.95
    assert r_raw < 0.75  # the raw 0.92 cut drops most of the "far" category's relevant hits
    assert cal.distance("near", cal.thresholds["near"]) == pytest.approx(REFERENCE_DISTANCE)
    assert cal.threshold_of("unknown") == cal.threshold


def test_calibration_save_load(tmp_path: Path) -> None:
    cal = Calibration(0.9, "category", 0.8, {"a": 0.7}, {"queries": 3})
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == cal


def test_similar_sets_keep_the_nearest_image_per_product() -> None:
    db = l2_normalize(np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32))
    q = l2_normalize(np.array([[1, 0.05]], np.float32))
    pairs = similar_sets(q, ["p"], ["c1"], db, ["p", "p", "r"], ["c1", "c1", "c2"], relevance="product")
    assert len(pairs.distance) == 2 and pairs.relevant.tolist() == [True, False]
    assert pairs.n_relevant_total.tolist() == [1]


def _data_root() -> Path:
    return Path(os.environ.get("SHOPLENS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.mark.data
@pytest.mark.slow
def test_train_embedder_on_a_store_with_labelled_photos(tmp_path: Path) -> None:
    """A small grocery store: 6 products, labelled store photos, the CLI path end to end."""
    root = _data_root() / "grocery"
    if not (root / "catalog.csv").exists():
        pytest.skip(f"grocery photos not found at {root} (set SHOPLENS_DATA)")
    from shoplens import Shoplens

    with open(root / "catalog.csv", newline="", encoding="utf-8") as f:
        cat = [r for r in csv.DictReader(f)][::10][:6]
    with open(root / "photos.csv", newline="", encoding="utf-8") as f:
        photos = [r for r in csv.DictReader(f) if r["split"] == "train"]
    ids = {r["product_id"] for r in cat}
    extra = [r for r in photos if r["product_id"] in ids]
    extra = [r for pid in sorted(ids) for r in [x for x in extra if x["product_id"] == pid][:3]]
    catalogue = write_grocery_catalogue(tmp_path / "catalogue.csv", root, cat)
    labelled = tmp_path / "labelled.csv"
    with open(labelled, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "product_id"])
        for r in extra:
            w.writerow([str(root / r["image"]), r["product_id"]])
        w.writerow([str(root / photos[0]["image"]), "not-in-the-store"])
    with Shoplens(tmp_path / "store", **{"intent.enabled": False}) as lens:
        lens.index(catalogue)
        before = lens.store.count_vectors("other_product")
        reports = lens.train_embedder(labelled)
        r = reports["other_product"]
        assert r.labels == "product_id" and r.extra_images == len(extra) and r.extra["unknown_product"] == 1
        assert (lens.store.models_dir / "head_other_product.pt").exists()
        assert lens.store.count_vectors("other_product") == before
        assert lens.pipeline.embedders["other_product"].head.kind == "linear"
        if r.calibration is not None:
            assert "other_product" in lens.pipeline.calibrations
        hit = lens.search([root / extra[-1]["image"]])[0]
        assert hit.regions[0].results, "a labelled photo of a catalogue product finds something with the default min_rank"


def test_fit_stop_score_keeps_the_shops_own_photos_searched() -> None:
    from shoplens.pipeline.training import MAX_STOP_SCORE, fit_stop_score

    assert fit_stop_score([], 0.9) is None
    low = [0.01 * i for i in range(80)]  # every photo below the stop score: nothing to change
    assert fit_stop_score(low, 0.9) == {"photos": 80, "stop_score_before": 0.9, "stop_score": 0.9,
                                        "searched_before": 1.0, "searched": 1.0}
    some = [0.1] * 190 + [0.93, 0.95, 0.96, 0.97, 0.975, 0.978, 0.98, 0.981, 0.982, 0.983]
    gate = fit_stop_score(some, 0.9)
    assert gate is not None and gate["stop_score"] == 0.983  # their 99.5th percentile, rounded up
    assert gate["searched_before"] == 0.95 and gate["searched"] >= 0.995 - 1e-9
    assert fit_stop_score([0.5] * 10 + [0.999] * 10, 0.9)["stop_score"] == MAX_STOP_SCORE  # type: ignore[index]
    assert fit_stop_score(some, 0.99)["stop_score"] == 0.99  # type: ignore[index]  # never lowered


@pytest.mark.data
@pytest.mark.slow
def test_train_embedder_raises_the_stop_score_its_labelled_photos_need(tmp_path: Path) -> None:
    """Store photos of produce the imagenet-map gate stops (non_product >= 0.9), given as labelled photos,
    are searched after train-embedder, and the store keeps the fitted stop score."""
    root = _data_root() / "grocery"
    if not (root / "catalog.csv").exists():
        pytest.skip(f"grocery photos not found at {root} (set SHOPLENS_DATA)")
    from shoplens import Shoplens

    stopped = ["Vegetables/Carrots/Carrots_001.jpg", "Vegetables/Carrots/Carrots_002.jpg", "Vegetables/Cucumber/Cucumber_001.jpg"]
    with open(root / "catalog.csv", newline="", encoding="utf-8") as f:
        cat = [r for r in csv.DictReader(f) if r["title"] in ("Carrots", "Cucumber", "Zucchini", "Golden Delicious")]
    with open(root / "photos.csv", newline="", encoding="utf-8") as f:
        photos = list(csv.DictReader(f))
    ids = {r["product_id"] for r in cat}
    extra = [r for pid in sorted(ids) for r in [x for x in photos if x["product_id"] == pid and x["split"] == "train"][:4]]
    extra += [r for r in photos if r["image"].removeprefix("photos/val/") in stopped]
    assert len(extra) == 4 * len(ids) + len(stopped) and len(cat) == 4
    labelled = tmp_path / "labelled.csv"
    with open(labelled, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "product_id"])
        w.writerows([str(root / r["image"]), r["product_id"]] for r in extra)
    probe = root / "photos" / "val" / stopped[0]
    # The gate these photos' scores come from: the ImageNet mapping stops them; the shipped default
    # head keeps every grocery photo, so it leaves nothing to fit.
    with Shoplens(tmp_path / "store", **{"intent.classifier": "imagenet-map"}) as lens:
        lens.index(write_grocery_catalogue(tmp_path / "catalogue.csv", root, cat))
        assert lens.search([probe])[0].intent == "non_product", "the photo this test is about is no longer stopped"
        gate = lens.train_embedder(labelled, tune_backbone=False)["other_product"].extra["gate"]
        assert gate["photos"] == len(extra) and gate["searched_before"] < 1.0
        assert gate["stop_score"] > gate["stop_score_before"] == 0.9
        assert lens.config.intent.stop_score == gate["stop_score"]
        assert lens.search([probe])[0].intent == "other_product"
    with Shoplens(tmp_path / "store", read_only=True) as lens:  # saved with the store
        assert lens.config.intent.stop_score == gate["stop_score"]
        assert lens.search([probe])[0].intent == "other_product"


@pytest.mark.slow
def test_cli_train_embedder_with_labelled_photos(tmp_path: Path, synthetic_catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from shoplens.cli import main

    from .conftest import make_image

    rows = ["image,product_id"]
    for i in range(6):
        for j in range(3):
            make_image(tmp_path / "extra" / f"p{i}_{j}.png", seed=i, size=(150 + 5 * j, 120))  # rescaled views of p{i}
            rows.append(f"extra/p{i}_{j}.png,p{i}")
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    store = str(tmp_path / "store")
    small = ["--set", "embed.other_product.input_size=64", "--set", "embed.other_product.extra_sizes=96", "--set", "local.enabled=false"]
    assert main(["index", str(synthetic_catalogue), "--store", store, "--intent-classifier", "test-other_product", *small]) == 0
    capsys.readouterr()
    assert main(["train-embedder", "--store", store, "--labelled", str(tmp_path / "labelled.csv"), "--json", *small]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["other_product"]
    assert report["labels"] == "product_id" and report["extra_images"] == 18 and report["classes"] == 6
    assert report["path"].endswith("head_other_product.pt") and Path(report["path"]).exists()
    assert main(["train-embedder", "--store", str(tmp_path / "nothing"), *small]) != 0  # no such store

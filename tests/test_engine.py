"""The engine end to end on generated images: index, re-index, update, search, gate."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shoplens.api
from shoplens import Shoplens, open_store
from shoplens.config import INTENTS
from shoplens.detect import Detector, Garment, register_detector
from shoplens.intent import register_intent_classifier
from shoplens.models import Encoding
from shoplens.results import ErrorResult, SearchResult

from .conftest import FixedIntent, make_image

#: Pixel shapes the intent classifier and the detector were given, in order.
SEEN: list[tuple[str, tuple[int, ...]]] = []


class SeenIntent(FixedIntent):
    """FixedIntent that notes the pixel shape of each photo it classifies."""

    def predict(self, encodings: Sequence[Encoding]) -> np.ndarray:
        SEEN.extend(("intent", e.photo.pixels.shape) for e in encodings)
        return super().predict(encodings)


for _intent in INTENTS:
    register_intent_classifier(f"test-seen-{_intent}", f"always {_intent}, counting photos (tests)")(lambda _i=_intent, **_: SeenIntent(_i))


class TwoBoxes(Detector):
    """A top in the upper half, shoes in the lower left quarter."""

    name = "test-two-boxes"
    backbone = "efficientnet_lite0"

    def detect(self, encodings: Sequence[Encoding]) -> list[list[Garment]]:
        out = []
        for e in encodings:
            SEEN.append(("detect", e.photo.pixels.shape))
            w, h = e.photo.size
            out.append([Garment((0, 0, w, h / 2), "top", 0.9), Garment((0, h / 2, w / 2, h), "shoes", 0.8), Garment((0, 0, 5, 5), "hat", 0.1)])
        return out


register_detector("test-two-boxes", "two fixed boxes (tests)")(lambda **_: TwoBoxes())

LOOSE = {"search.rank_filter": False, "search.entropy_filter": False}


def test_index_is_idempotent_and_products_never_repeat(tmp_path: Path, synthetic_catalogue: Path) -> None:
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        first = lens.index(synthetic_catalogue)
        assert (first.products, first.images_added, first.failed) == (6, 7, [])
        assert first.domains_inferred == 0 and first.categories_predicted == 0
        again = lens.index(synthetic_catalogue)
        assert (again.images_added, again.images_unchanged, again.products_written) == (0, 7, 0)
        result = lens.search_one(synthetic_catalogue.parent / "img" / "p3.png", top_k=10)
    hits = result.regions[0].results
    assert hits[0].product_id == "p3" and hits[0].distance < 1e-3 and hits[0].rank == pytest.approx(2.0, abs=1e-3)
    ids = [h.product_id for h in hits]
    assert len(ids) == len(set(ids)) == 6  # p0 has two photos but appears once
    assert hits[0].price == 13.5 and hits[0].sku == "003" and hits[0].title == "Product 3"  # metadata rides along


def test_a_photo_of_a_domain_the_shop_does_not_sell_is_searched_in_the_other(tmp_path: Path, synthetic_catalogue: Path) -> None:
    """A grocery-only catalogue: a photo the gate takes for apparel still finds its product."""
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        lens.index(synthetic_catalogue)
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-apparel", "detect.enabled": False}, **LOOSE) as lens:
        result = lens.search_one(synthetic_catalogue.parent / "img" / "p3.png")
        assert result.intent == "other_product"
        assert result.steps["intent"]["predicted"] == "apparel"
        assert result.regions[0].results[0].product_id == "p3"


def test_update_replaces_vectors_and_listing_defines_images(tmp_path: Path, synthetic_catalogue: Path) -> None:
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        lens.index(synthetic_catalogue)
        # p1's photo changes content; p0 is now listed with one photo only.
        make_image(synthetic_catalogue.parent / "img" / "p1.png", seed=999)
        text = synthetic_catalogue.read_text().splitlines()
        synthetic_catalogue.write_text("\n".join(line for line in text if "p0b.png" not in line) + "\n")
        report = lens.index(synthetic_catalogue)
        assert (report.images_replaced, report.images_removed, report.images_unchanged) == (1, 1, 5)
        assert lens.store.db.count_images() == 6
        hit = lens.search_one(synthetic_catalogue.parent / "img" / "p1.png").regions[0].results[0]
        assert hit.product_id == "p1" and hit.distance < 1e-3
        assert lens.delete_products(["p1", "nope"]) == 1
        ids = [h.product_id for h in lens.search_one(synthetic_catalogue.parent / "img" / "p1.png").regions[0].results]
        assert "p1" not in ids


def test_bad_rows_are_reported_and_the_rest_indexed(tmp_path: Path) -> None:
    make_image(tmp_path / "ok.png", 1)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "c.csv").write_text("product_id,image\nok,ok.png\nmissing,nothere.jpg\nbroken,broken.jpg\n,ok.png\n")
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}) as lens:
        report = lens.index(tmp_path / "c.csv")
        assert lens.count_products() == 1
    errors = {f["product_id"]: f["error"] for f in report.failed}
    assert "cannot read image" in errors["missing"] and "corrupt" in errors["broken"] and errors[""] == "empty product_id"


def test_a_huge_number_in_a_cell_fails_its_row_and_the_run_goes_on(tmp_path: Path) -> None:
    for i in range(3):
        make_image(tmp_path / f"p{i}.png", i)
    (tmp_path / "c.csv").write_text(f"product_id,image,price\np0,p0.png,1\np1,p1.png,{'9' * 5000}\np2,p2.png,99999999999999999999\n")
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}) as lens:
        report = lens.index(tmp_path / "c.csv")
        assert lens.count_products() == 1 and lens.get_product("p0").metadata == {"price": 1}
    assert [(f["origin"], f["product_id"]) for f in report.failed] == [("c.csv:3", "p1"), ("c.csv:4", "p2")]
    assert all("column 'price'" in f["error"] for f in report.failed)


def _index_or_fail(lens: Shoplens, catalogue: Path, fifo: Path | None = None, timeout: float = 60) -> Any:
    """``lens.index(catalogue)``; a run that blocks on ``fifo`` is released (a writer opens and closes it) and fails."""
    import os
    import threading

    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.update(report=lens.index(catalogue)), daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() and fifo is not None:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets EOF
        worker.join(timeout)
        pytest.fail(f"indexing blocked on the FIFO {fifo}")
    assert "report" in out, "indexing did not finish"
    return out["report"]


def test_rows_naming_special_or_huge_files_fail_at_once(tmp_path: Path) -> None:
    import os

    make_image(tmp_path / "ok.png", 1)
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "folder.jpg").mkdir()
    with open(tmp_path / "big.jpg", "wb") as f:
        f.truncate(60 * 1024 * 1024)  # sparse, over the 50 MB limit
    (tmp_path / "c.csv").write_text("product_id,image\nok,ok.png\nfifo,fifo.jpg\nfolder,folder.jpg\nbig,big.jpg\n")
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}) as lens:
        report = _index_or_fail(lens, tmp_path / "c.csv", tmp_path / "fifo.jpg")
        assert lens.count_products() == 1
    errors = {f["product_id"]: f["error"] for f in report.failed}
    assert set(errors) == {"fifo", "folder", "big"}
    assert all(e.startswith("cannot read image: ") for e in errors.values())
    assert "not a regular file (a FIFO)" in errors["fifo"] and "not a regular file (a folder)" in errors["folder"]
    assert f"file is {60 * 1024 * 1024} bytes, over the limit" in errors["big"]  # refused by its size, not read


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_row_naming_dev_zero_fails_without_reading_it(tmp_path: Path) -> None:
    make_image(tmp_path / "ok.png", 1)
    (tmp_path / "c.csv").write_text("product_id,image\nok,ok.png\nzero,/dev/zero\n")
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}) as lens:
        report = _index_or_fail(lens, tmp_path / "c.csv")
        assert lens.count_products() == 1
    assert [(f["product_id"], f["error"]) for f in report.failed] == [("zero", "cannot read image: /dev/zero: not a regular file (a character device)")]


def test_missing_category_is_predicted_and_said(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", 1)
    (tmp_path / "c.csv").write_text("product_id,image\na,a.png\n")
    with Shoplens(tmp_path / "store") as lens:
        report = lens.index(tmp_path / "c.csv")
        record = lens.get_product("a")
    assert report.categories_predicted == 1 and report.domains_inferred == 1
    assert record.category_source == "predicted" and record.category and record.domain in ("apparel", "other_product")


def test_non_product_costs_only_the_classifier(tmp_path: Path, synthetic_catalogue: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}) as lens:
        lens.index(synthetic_catalogue)
    lens = open_store(tmp_path / "store", **{"intent.classifier": "test-non_product", "detect.detector": "test-two-boxes"})
    steps: list[str] = []
    lens.pipeline.on_step = steps.append
    searched: list[Any] = []
    monkeypatch.setattr(lens.store, "search", lambda *a, **k: searched.append(a))
    result = lens.search_one(synthetic_catalogue.parent / "img" / "p1.png")
    assert result.intent == "non_product" and result.regions == []
    assert steps == ["intent"] and searched == []  # no detector, no embedding, no index search
    assert set(result.timings_ms) <= {"decode", "intent", "total"}
    assert result.intent_scores["non_product"] == pytest.approx(0.9)
    lens.close()


def _count_full_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Note each preview's full decode (searches decode with shoplens.api.load_image)."""
    calls: list[str] = []
    real = shoplens.api.load_image

    def spy(*args: Any, **kwargs: Any) -> Any:
        photo = real(*args, **kwargs)
        if photo.redecode is not None:
            inner: Callable[[], Any] = photo.redecode
            photo = dataclasses.replace(photo, redecode=lambda: calls.append(photo.name) or inner())
        return photo

    monkeypatch.setattr(shoplens.api, "load_image", spy)
    return calls


def _search_a_large_photo(
    tmp_path: Path, catalogue: Path, monkeypatch: pytest.MonkeyPatch, flags: dict[str, Any]
) -> tuple[SearchResult, list[str], tuple[int, ...]]:
    """Search a 1600 x 1000 JPEG with ``flags``: its result, the previews decoded in full, and the full decode's shape."""
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}) as lens:
        lens.index(catalogue)
    big = make_image(tmp_path / "big.jpg", 7, size=(1600, 1000))
    full_decodes = _count_full_decodes(monkeypatch)
    SEEN.clear()
    with open_store(tmp_path / "store", **flags) as lens:
        result = lens.search_one(big)
        full_shape = shoplens.api.load_image(big, target_size=lens.pipeline.decode_size).pixels.shape
    return result, full_decodes, full_shape


def test_a_large_non_product_photo_is_decoded_only_as_small_as_the_gate_reads_it(
    tmp_path: Path, synthetic_catalogue: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, full_decodes, _ = _search_a_large_photo(tmp_path, synthetic_catalogue, monkeypatch, {"intent.classifier": "test-seen-non_product"})
    assert result.intent == "non_product"
    assert SEEN == [("intent", (250, 400, 3))]  # a quarter of each side: the gate reads 224 x 140
    assert full_decodes == []


def test_a_large_product_photo_is_decoded_in_full_once_the_gate_passes_it(
    tmp_path: Path, synthetic_catalogue: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = synthetic_catalogue.read_text().replace("other_product", "apparel")
    synthetic_catalogue.write_text(text)
    flags = {"intent.classifier": "test-seen-apparel", "detect.detector": "test-two-boxes", "detect.min_score": 0.3, **LOOSE}
    with Shoplens(tmp_path / "store", **flags) as lens:
        lens.index(synthetic_catalogue)
        big = make_image(tmp_path / "street.jpg", 5, size=(1600, 1000))
        full_decodes = _count_full_decodes(monkeypatch)
        SEEN.clear()
        result = lens.search_one(big, top_k=3)
        assert full_decodes == [str(big)]
        full = shoplens.api.load_image(big, target_size=lens.pipeline.decode_size)  # (500, 800): half scale
        assert SEEN == [("intent", (250, 400, 3)), ("detect", full.pixels.shape)]  # the detector reads the full decode
        assert result.regions[0].box == [0, 0, 1600, 500]
        # The same answer as a search of the photo decoded in full from the start.
        assert not full.is_preview
        again = lens.search_photo(full, top_k=3)
    assert [(r.box, [h.product_id for h in r.results]) for r in result.regions] == [
        (r.box, [h.product_id for h in r.results]) for r in again.regions]
    assert [[h.distance for h in r.results] for r in result.regions] == [[h.distance for h in r.results] for r in again.regions]


def test_apparel_searches_each_garment(tmp_path: Path, synthetic_catalogue: Path) -> None:
    store = tmp_path / "store"
    text = synthetic_catalogue.read_text().replace("other_product", "apparel")
    synthetic_catalogue.write_text(text)
    flags = {"intent.classifier": "test-apparel", "detect.detector": "test-two-boxes", "detect.min_score": 0.3}
    with Shoplens(store, **flags, **LOOSE) as lens:
        lens.index(synthetic_catalogue)
        photo = make_image(tmp_path / "street.png", 5, size=(200, 300))
        steps: list[str] = []
        lens.pipeline.on_step = steps.append
        result = lens.search_one(photo, top_k=3)
    assert result.intent == "apparel"
    assert [r.label for r in result.regions] == ["top", "shoes"]  # the 0.1 hat is under min_score
    assert result.regions[0].box == [0, 0, 200, 150] and result.regions[1].box == [0, 150, 100, 300]
    assert all(len(r.results) == 3 for r in result.regions)
    assert steps == ["intent", "detect", "embed:apparel", "search"]
    assert result.steps["detect"]["garments"] == 2


class Flood(Detector):
    """What the detector gives for a skirt laid flat: boxes of five labels over the one garment, and a weak shoe."""

    name = "test-flood"
    backbone = "efficientnet_lite0"

    def detect(self, encodings: Sequence[Encoding]) -> list[list[Garment]]:
        out = []
        for e in encodings:
            w, h = e.photo.size
            box = (0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h)
            out.append([Garment(box, lab, s) for lab, s in (("bottom", 0.35), ("bag", 0.25), ("top", 0.2), ("dress", 0.12), ("outerwear", 0.07))]
                       + [Garment((0.7 * w, 0.8 * h, 0.9 * w, h), "shoes", 0.05)])
        return out


register_detector("test-flood", "more boxes than a search keeps (tests)")(lambda **_: Flood())


def test_a_single_garment_photo_is_searched_as_one_region(tmp_path: Path, synthetic_catalogue: Path) -> None:
    synthetic_catalogue.write_text(synthetic_catalogue.read_text().replace("other_product", "apparel"))
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-apparel", "detect.detector": "test-flood"}, **LOOSE) as lens:
        lens.index(synthetic_catalogue)
        result = lens.search_one(make_image(tmp_path / "skirt.png", 7, size=(200, 300)))
        detected = lens.detect([tmp_path / "skirt.png"])[0]
    assert [(r.box, r.label) for r in result.regions] == [([0, 0, 200, 300], "bottom")]
    assert result.steps["detect"]["garments"] == 6 and result.steps["detect"]["regions"] == 1
    assert len(detected.garments) == 6  # type: ignore[union-attr]  # shoplens detect still reports every box


def test_search_reports_errors_per_image_and_goes_on(tmp_path: Path, synthetic_catalogue: Path) -> None:
    (tmp_path / "text.jpg").write_text("not an image")
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}) as lens:
        lens.index(synthetic_catalogue)
        results = lens.search([tmp_path / "text.jpg", synthetic_catalogue.parent / "img" / "p2.png", tmp_path / "gone.jpg"])
    assert isinstance(results[0], ErrorResult) and "not an image" in results[0].error
    assert isinstance(results[1], SearchResult)
    assert isinstance(results[2], ErrorResult) and "no such file" in results[2].error


def test_store_survives_a_lost_index_file(tmp_path: Path, synthetic_catalogue: Path) -> None:
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        lens.index(synthetic_catalogue)
    shutil.rmtree(tmp_path / "store" / "index")
    (tmp_path / "store" / "index").mkdir()
    with open_store(tmp_path / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        assert lens.search_one(synthetic_catalogue.parent / "img" / "p4.png").regions[0].results[0].product_id == "p4"


@pytest.mark.parametrize("flags, sides", [
    ({}, ["local", "detector", 320]),
    ({"local.query_max_side": 0}, ["max_side", "detector", 320]),  # 0: the catalogue's side
    ({"local.query_max_side": 224}, ["detector", 320]),
    ({"local.enabled": False, "detect.enabled": False, "embed.other_product.extra_sizes": ""}, [224]),
])
def test_search_photos_are_decoded_for_the_largest_side_a_step_reads(tmp_path: Path, flags: dict[str, Any], sides: list[Any]) -> None:
    with Shoplens(tmp_path / "store", **flags) as lens:
        config = lens.config
        known = {"local": config.local.query_max_side, "max_side": config.local.max_side, "detector": lens.pipeline.detector.input_size}
        assert lens.pipeline.decode_size == max(known.get(s, s) for s in sides)


@pytest.mark.parametrize("flags, intent", [
    ({"intent.preview_decode": False}, "non_product"),
    ({"intent.enabled": False}, "other_product"),  # the gate stops nothing: a preview would only cost
])
def test_no_preview_decode_when_switched_off_or_without_the_gate(
    tmp_path: Path, synthetic_catalogue: Path, monkeypatch: pytest.MonkeyPatch, flags: dict[str, Any], intent: str
) -> None:
    result, full_decodes, full_shape = _search_a_large_photo(
        tmp_path, synthetic_catalogue, monkeypatch, {"intent.classifier": "test-seen-non_product", **flags})
    assert result.intent == intent
    assert SEEN == [("intent", full_shape)] and full_decodes == []  # decoded once, in full


# ----------------------------------------------------------------------------- domains of a catalogue


class ColourIntent(FixedIntent):
    """other_product for reddish photos, apparel for the rest; ``FLIP`` swaps them (a new classifier)."""

    FLIP = False

    def __init__(self, product_share: float = 0.8) -> None:
        super().__init__("apparel")
        self.name = "test-colour"
        self.product_share = product_share

    def predict(self, encodings: Sequence[Encoding]) -> np.ndarray:
        probs = np.zeros((len(encodings), 3), dtype=np.float32)
        for row, e in zip(probs, encodings):
            px = e.photo.pixels.reshape(-1, 3).mean(0)
            red = (px[0] > px[2]) != ColourIntent.FLIP
            row[:] = (1 - self.product_share, self.product_share, 0.0) if red else (self.product_share, 1 - self.product_share, 0.0)
        return probs


register_intent_classifier("test-colour", "test: decides by the photo's colour")(lambda **_: ColourIntent())
register_intent_classifier("test-colour-unsure", "test: test-colour, 0.7 sure")(lambda **_: ColourIntent(product_share=0.7))
register_intent_classifier("test-colour-sure", "test: test-colour, 0.95 sure")(lambda **_: ColourIntent(product_share=0.95))


def _solid(path: Path, rgb: tuple[int, int, int], seed: int) -> Path:
    """A photo of one colour with a little noise (distinct products, same vote)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    px = np.clip(np.array(rgb)[None, None] + rng.integers(-20, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px).save(path)
    return path


RED, BLUE = (200, 40, 40), (40, 40, 200)


def _split_folder(root: Path) -> Path:
    """hats/: 3 blue (apparel) photos and 2 red; cups/: 3 red (other_product) and 1 blue."""
    for i, rgb in enumerate([BLUE, BLUE, BLUE, RED, RED]):
        _solid(root / "hats" / f"hat{i}.png", rgb, i)
    for i, rgb in enumerate([RED, RED, RED, BLUE]):
        _solid(root / "cups" / f"cup{i}.png", rgb, 10 + i)
    return root


def _domains(lens: Shoplens) -> dict[str, str]:
    return {r.product_id: r.domain for r in lens.store.iter_products()}


def test_a_folder_category_goes_where_most_of_its_photos_point(tmp_path: Path) -> None:
    folder = _split_folder(tmp_path / "catalogue")
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-colour"}) as lens:
        report = lens.index(folder)
        domains = _domains(lens)
        assert {p: d for p, d in domains.items() if p.startswith("hat")} == {f"hat{i}": "apparel" for i in range(5)}
        assert {p: d for p, d in domains.items() if p.startswith("cup")} == {f"cup{i}": "other_product" for i in range(4)}
        assert report.domains_inferred == 9 and report.domains_reassigned == 3
        assert report.domains_by_category == {"hats": {"domain": "apparel", "apparel": 3, "other_product": 2},
                                              "cups": {"domain": "other_product", "apparel": 1, "other_product": 3}}
        # Every image is in its product's partition, and only there.
        assert lens.store.count_vectors("apparel") == 5 and lens.store.count_vectors("other_product") == 4
        assert all(d == domains[pid] for pid in domains for _, d, _ in lens.product_images(pid))
        assert lens.get_product("hat3").domain_source == "inferred"
        again = lens.index(folder)
    assert again.images_unchanged == 9 and again.images_added == again.images_replaced == again.domains_reassigned == 0


def test_a_csv_without_domains_is_decided_per_category_and_domain_sets_them(tmp_path: Path) -> None:
    folder = _split_folder(tmp_path / "catalogue")
    lines = ["product_id,image,category"] + [f"{p.stem},{p},{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-colour"}) as lens:
        lens.index(tmp_path / "c.csv")
        assert set(_domains(lens)[f"hat{i}"] for i in range(5)) == {"apparel"}
        assert set(_domains(lens)[f"cup{i}"] for i in range(4)) == {"other_product"}
    with Shoplens(tmp_path / "given", **{"intent.classifier": "test-colour"}) as lens:
        report = lens.index(folder, domain="apparel")
        assert set(_domains(lens).values()) == {"apparel"} and report.domains_inferred == 0
        assert lens.get_product("cup0").domain_source == "catalogue"
        with pytest.raises(shoplens.api.CatalogueError, match="not one of"):
            lens.index(folder, domain="shoes")


def test_a_category_too_small_to_tell_follows_the_catalogue() -> None:
    from shoplens.pipeline.indexing import PRIOR_VOTES, majority

    apparel, other = np.array([[0.9, 0.1]]), np.array([[0.2, 0.8]])
    mostly_other = PRIOR_VOTES * np.array([0.025, 0.975])
    assert majority(apparel) == "apparel"  # alone, its own vote decides
    assert majority(apparel, mostly_other) == "other_product"  # one product among a catalogue of others
    assert majority(np.concatenate([apparel] * 3 + [other]), mostly_other) == "apparel"  # a few clear votes keep theirs
    assert majority(apparel, PRIOR_VOTES * np.array([0.4, 0.6])) == "apparel"  # a mixed shop: the one vote outweighs


@pytest.mark.data
@pytest.mark.slow
def test_every_grocery_product_is_filed_where_groceries_are(tmp_path: Path, data_dir: Path) -> None:
    """The grocery catalogue names no domain: asparagus and leek, whose one photo each looks like "apparel" to
    the gate, are filed with the other 79 products (an apparel partition no grocery search reads would lose them)."""
    flags = {"local.enabled": False, "search.rank_filter": False}
    with Shoplens(tmp_path / "store", **flags) as lens:
        report = lens.index(data_dir / "grocery" / "catalog.csv")
        assert report.domains_inferred == 81
        assert report.domains_by_category["Asparagus"]["domain"] == report.domains_by_category["Leek"]["domain"] == "other_product"
        assert {rec.domain for rec in lens.store.iter_products()} == {"other_product"}
        assert lens.store.count_vectors("apparel") == 0


def test_train_intent_moves_products_where_the_new_classifier_puts_their_category(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoplens.intent import trained

    folder = _split_folder(tmp_path / "catalogue")

    def flip(*_: Any, **__: Any) -> trained.IntentTrainReport:
        ColourIntent.FLIP = True
        return trained.IntentTrainReport(accuracy=None, confusion=[], n_train=0, n_test=0, recall={})

    monkeypatch.setattr(trained, "train_intent", flip)
    monkeypatch.setattr(ColourIntent, "FLIP", False)
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-colour"}) as lens:
        lens.index(folder)
        lens.index([shoplens.api.CatalogueRow("mug", str(_solid(tmp_path / "mug.png", RED, 99)), domain="other_product")])
        report = lens.train_intent(tmp_path / "labelled")
        domains = _domains(lens)
        vectors = {d: lens.store.count_vectors(d) for d in ("apparel", "other_product")}
    assert report.domains is not None and report.domains["domains_reassigned"] == 9
    assert {domains[f"hat{i}"] for i in range(5)} == {"other_product"} and {domains[f"cup{i}"] for i in range(4)} == {"apparel"}
    assert domains["mug"] == "other_product"  # the catalogue said so: not the classifier's to change
    assert vectors == {"apparel": 4, "other_product": 6}


def test_an_unsure_gate_searches_the_other_partition_too(tmp_path: Path) -> None:
    rows = [shoplens.api.CatalogueRow(f"a{i}", str(_solid(tmp_path / f"a{i}.png", BLUE, i)), domain="apparel") for i in range(3)]
    rows += [shoplens.api.CatalogueRow(f"o{i}", str(_solid(tmp_path / f"o{i}.png", RED, 10 + i)), domain="other_product")
             for i in range(3)]
    query = _solid(tmp_path / "q.png", BLUE, 50)
    flags = {"detect.detector": "none", **LOOSE}
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-colour-unsure"}, **flags) as lens:
        lens.index(rows)
        unsure = lens.search_one(query)
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-colour-sure"}, **flags) as lens:
        sure = lens.search_one(query)
    # apparel 0.7 / other_product 0.3: the other domain's 0.3 share is over intent.second_domain_share (0.1)
    assert unsure.intent == "apparel"
    assert [r.domain for r in unsure.regions] == ["apparel", "other_product"]
    assert {h.product_id for h in unsure.regions[1].results} == {"o0", "o1", "o2"}
    assert unsure.steps["second_domain"]["domain"] == "other_product"
    assert [r.domain for r in sure.regions] == ["apparel"] and "second_domain" not in sure.steps  # 0.95 / 0.05: sure


@pytest.mark.data
@pytest.mark.slow
def test_a_folder_of_real_garment_photos_lands_in_the_apparel_partition(tmp_path: Path) -> None:
    """160 clothing photos in 8 category folders: per photo, 15 point to other_product; all are indexed as apparel."""
    import csv
    from collections import Counter

    from .conftest import data_root

    clothing = data_root() / "clothing"
    if not (clothing / "labels.csv").exists():
        pytest.skip(f"clothing photos not found under {clothing} (set SHOPLENS_DATA)")
    taken: Counter[str] = Counter()
    with open(clothing / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["label"] in ("T-Shirt", "Longsleeve", "Pants", "Shoes", "Outwear", "Dress", "Hat", "Skirt") and taken[r["label"]] < 20:
                (tmp_path / "clothes" / r["label"]).mkdir(parents=True, exist_ok=True)
                (tmp_path / "clothes" / r["label"] / Path(r["image"]).name).symlink_to(clothing / r["image"])
                taken[r["label"]] += 1
    with Shoplens(tmp_path / "store") as lens:
        report = lens.index(tmp_path / "clothes")
        domains = Counter(r.domain for r in lens.store.iter_products())
    assert report.domains_inferred == 160 and report.domains_reassigned > 0
    assert domains == {"apparel": 160}, report.domains_by_category

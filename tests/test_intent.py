"""The intent gate: the reviewed ImageNet mapping, the default rule, generated negatives, train-intent."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shoplens.api import classify_photos
from shoplens.config import INTENTS
from shoplens.errors import CatalogueError, StoreError
from shoplens.eval.negatives import SKIMAGE_PHOTOS, find_chromium, generate_negatives
from shoplens.imaging import load_image
from shoplens.intent import (
    ImageNetIntent,
    TrainedIntent,
    create_intent_classifier,
    list_intent_classifiers,
    predict_category,
    read_labelled,
    train_intent,
)
from shoplens.models import create_model
from shoplens.pipeline import EncodingCache, Pipeline

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="module")
def backbone():
    return create_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos_root() -> Path:
    root = _data_root()
    if not (root / "grocery" / "photos.csv").exists():
        pytest.skip(f"real photos not found at {root} (set SHOPLENS_DATA to ../shared/data)")
    return root


@pytest.fixture(scope="module")
def negatives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    pytest.importorskip("skimage", reason="scikit-image (dev extra) makes the photo and meme negatives")
    kinds = ("document", "chart", "noise", "meme", "photo")  # the kinds the imagenet-map rule was chosen on
    return generate_negatives(tmp_path_factory.mktemp("neg"), 8, seed=3, kinds=kinds)


def _classify(backbone, classifier, paths: list[Path]) -> list[str]:
    encodings = backbone.encode([load_image(p, target_size=224) for p in paths])
    return classifier.labels(classifier.predict(encodings))


# ---------------------------------------------------------------- the mapping

def _mapping_rows() -> list[list[str]]:
    text = resources.files("shoplens.intent").joinpath("data/imagenet_intent.tsv").read_text("utf-8")
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]


def test_mapping_covers_every_imagenet_class_once_with_a_valid_intent() -> None:
    rows = _mapping_rows()
    assert [int(r[0]) for r in rows] == list(range(1000))
    assert all(len(r) == 4 and r[2] in INTENTS and r[3] for r in rows)
    classes = resources.files("shoplens.models").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    wnids = [line.split("\t")[1] for line in classes.splitlines() if line]
    assert [r[1] for r in rows] == wnids  # the same class order as the backbone's logits
    counts = {i: sum(r[2] == i for r in rows) for i in INTENTS}
    assert all(n > 50 for n in counts.values()), counts


@pytest.mark.parametrize(
    ("index", "intent"),
    [
        (610, "apparel"),  # jersey
        (770, "apparel"),  # running shoe
        (414, "apparel"),  # backpack
        (478, "other_product"),  # carton
        (559, "other_product"),  # folding chair
        (620, "other_product"),  # laptop
        (948, "other_product"),  # Granny Smith
        (850, "other_product"),  # teddy
        (916, "non_product"),  # web site
        (963, "non_product"),  # pizza (a served dish)
        (817, "non_product"),  # sports car
        (281, "non_product"),  # tabby cat
        (970, "non_product"),  # alp
        (923, "non_product"),  # plate: ImageNet's "a dish of food"
    ],
)
def test_mapping_edge_cases(index: int, intent: str) -> None:
    assert _mapping_rows()[index][2] == intent


# ---------------------------------------------------------------- the default rule

def test_default_rule_on_synthetic_logits() -> None:
    clf = ImageNetIntent()
    logits = np.zeros((4, 1000), dtype=np.float32)
    logits[0, 610] = 12.0  # jersey, confident
    logits[1, 478] = 12.0  # carton
    logits[2, 281] = 12.0  # tabby
    # row 3: all zeros, the network recognises nothing
    probs = clf.predict_logits(logits)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert [INTENTS[i] for i in probs.argmax(1)] == ["apparel", "other_product", "non_product", "non_product"]
    assert clf.predict([]).shape == (0, 3)



def test_predict_category_is_the_most_likely_class_of_the_domain() -> None:
    from shoplens.models import imagenet_class_names

    names = imagenet_class_names()
    logits = np.zeros(1000, dtype=np.float32)
    logits[281] = 20.0  # tabby: the most likely class overall, but no product
    logits[610] = 5.0  # jersey
    logits[478] = 3.0  # carton
    assert predict_category(logits, "apparel") == names[610]
    assert predict_category(torch.from_numpy(logits), "other_product") == names[478]
    assert predict_category(logits, "non_product") == names[281]

def test_uncertainty_rule_only_acts_on_flat_predictions() -> None:
    base = ImageNetIntent(uncertain_slope=0.0)
    rule = ImageNetIntent()
    rng = np.random.default_rng(0)
    confident = rng.normal(0, 1, (1, 1000)).astype(np.float32)
    confident[0, 478] = 15.0
    np.testing.assert_allclose(base.predict_logits(confident), rule.predict_logits(confident), atol=1e-6)
    flat = rng.normal(0, 0.1, (1, 1000)).astype(np.float32)
    assert rule.predict_logits(flat)[0, 2] > base.predict_logits(flat)[0, 2]
    with pytest.raises(ValueError):
        ImageNetIntent(temperature=0)


@pytest.mark.data
@pytest.mark.slow
def test_default_classifier_on_real_photos(backbone, photos_root: Path) -> None:
    with open(photos_root / "grocery" / "photos.csv", newline="") as f:
        grocery = [photos_root / "grocery" / r["image"] for r in csv.DictReader(f)][::245]
    with open(photos_root / "clothing" / "labels.csv", newline="") as f:
        clothing = [photos_root / "clothing" / r["image"] for r in csv.DictReader(f)][::276]
    with open(photos_root / "outfits" / "garments.jsonl") as f:
        outfits = [photos_root / "outfits" / json.loads(line)["image"] for line in f if line.strip()][::100]
    with open(photos_root / "nonproduct" / "images.csv", newline="") as f:
        wallpapers = [photos_root / "nonproduct" / r["image"] for r in csv.DictReader(f)]
    clf = create_intent_classifier("imagenet-map")
    g = _classify(backbone, clf, grocery)
    a = _classify(backbone, clf, clothing + outfits)
    w = _classify(backbone, clf, wallpapers)
    kept = sum(label != "non_product" for label in g + a) / len(g + a)
    assert kept >= 0.9, (g, a)
    assert sum(label == "other_product" for label in g) / len(g) >= 0.9, g
    assert sum(label == "apparel" for label in a) / len(a) >= 0.8, a
    assert sum(label == "non_product" for label in w) / len(w) >= 0.75, w


# ---------------------------------------------------------------- generated negatives

def test_generate_negatives_is_deterministic(tmp_path: Path) -> None:
    kinds = ("document", "chart", "noise")
    first = generate_negatives(tmp_path / "a", 3, seed=7, kinds=kinds)
    again = generate_negatives(tmp_path / "b", 3, seed=7, kinds=kinds)
    other = generate_negatives(tmp_path / "c", 3, seed=8, kinds=kinds)

    def digest(paths: list[Path]) -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]

    assert len(first) == 9 and [p.name for p in first] == [p.name for p in again]
    assert digest(first) == digest(again)
    assert digest(first) != digest(other)
    # a smaller run is a prefix of a larger one
    assert digest(generate_negatives(tmp_path / "d", 1, seed=7, kinds=("chart",))) == digest(first[3:4])
    with open(tmp_path / "a" / "negatives.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [p.name for p in first]
    assert {r["intent"] for r in rows} == {"non_product"}
    with pytest.raises(ValueError):
        generate_negatives(tmp_path / "e", 1, kinds=("selfie",))


def test_new_negative_kinds_are_deterministic_and_varied(tmp_path: Path) -> None:
    kinds = ("cartoon", "fractal", "abstract", "captioned")
    photo = tmp_path / "person.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(photo)
    first = generate_negatives(tmp_path / "a", 3, seed=5, kinds=kinds, photos=[photo])
    again = generate_negatives(tmp_path / "b", 3, seed=5, kinds=kinds, photos=[photo])
    assert [hashlib.sha256(p.read_bytes()).digest() for p in first] == [hashlib.sha256(p.read_bytes()).digest() for p in again]
    assert len(first) == 12 and len({hashlib.sha256(p.read_bytes()).digest() for p in first}) == 12
    for path in first:
        photo_ = load_image(path)
        assert min(photo_.size) >= 200 and photo_.pixels.std() > 5, path.name


def test_skimage_product_pictures_are_not_negatives() -> None:
    assert SKIMAGE_PHOTOS["clock"][0] == "other_product"
    assert all(intent in (None, *INTENTS) for intent, _ in SKIMAGE_PHOTOS.values())


def test_screenshots_skipped_cleanly_without_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoplens.eval.negatives.find_chromium", lambda: None)
    assert generate_negatives(tmp_path, 2, kinds=("screenshot",)) == []


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_screenshots_rendered_by_chromium(tmp_path: Path) -> None:
    (path,) = generate_negatives(tmp_path, 1, seed=0, kinds=("screenshot",))
    photo = load_image(path)
    assert min(photo.size) >= 400 and photo.pixels.std() > 5  # a page was drawn, not a blank window


@pytest.mark.slow
def test_generated_negatives_classify_as_non_product(backbone, negatives: list[Path]) -> None:
    labels = _classify(backbone, ImageNetIntent(), negatives)
    assert sum(label == "non_product" for label in labels) / len(labels) >= 0.75, labels


# ---------------------------------------------------------------- read_labelled

def _folder(root: Path, counts: dict[str, int], negatives: list[Path]) -> Path:
    """Labelled folders filled with generated pictures (the labels are arbitrary but learnable)."""
    source = {"apparel": "noise", "other_product": "chart", "non_product": "document"}
    for intent, n in counts.items():
        picks = [p for p in negatives if p.name.startswith(source[intent])][:n]
        (root / intent).mkdir(parents=True, exist_ok=True)
        for p in picks:
            (root / intent / p.name).write_bytes(p.read_bytes())
    return root


def test_read_labelled_folders_and_csv(tmp_path: Path, negatives: list[Path]) -> None:
    root = _folder(tmp_path / "lab", {"apparel": 2, "other_product": 2, "non_product": 2}, negatives)
    (root / "apparel" / "notes.txt").write_text("not an image")
    pairs = read_labelled(root)
    assert len(pairs) == 6 and {i for _, i in pairs} == set(INTENTS)
    csv_path = tmp_path / "labels.csv"
    rows = [f"lab/{p.relative_to(root).as_posix()},{i}" for p, i in pairs]
    csv_path.write_text("image,intent,note\n" + "\n".join(r + ",x" for r in rows) + "\n")
    assert read_labelled(csv_path) == [(tmp_path / r.split(",")[0], r.split(",")[1]) for r in rows]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("picture,intent\na.png,apparel\n", "missing column"),
        ("image,intent\na.png,shoes\n", "unknown intent"),
        ("image,intent\nmissing.png,apparel\n", "no such image"),
        ("image,intent\na.png,apparel\nb.png,other_product\n", "no photo labelled non_product"),
        ("image,intent\n", "no rows"),
    ],
)
def test_read_labelled_csv_errors(tmp_path: Path, negatives: list[Path], content: str, message: str) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(negatives[0].read_bytes())
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(CatalogueError, match=message):
        read_labelled(path)


def test_read_labelled_folder_errors(tmp_path: Path, negatives: list[Path]) -> None:
    with pytest.raises(CatalogueError, match="no such folder"):
        read_labelled(tmp_path / "absent")
    root = _folder(tmp_path / "two", {"apparel": 1, "other_product": 1}, negatives)
    with pytest.raises(CatalogueError, match="no photo labelled non_product"):
        read_labelled(root)
    (root / "cats").mkdir()
    with pytest.raises(CatalogueError, match="'cats' are not intents"):
        read_labelled(root)
    (tmp_path / "labels.txt").write_text("image,intent\n")
    with pytest.raises(CatalogueError, match="expected a folder"):
        read_labelled(tmp_path / "labels.txt")


# ---------------------------------------------------------------- train_intent and TrainedIntent

@pytest.mark.slow
def test_train_intent_trains_reports_saves_and_reloads(tmp_path: Path, backbone, negatives: list[Path]) -> None:
    # Eight pictures a class, six held out: with three, one picture decided a third of the accuracy.
    root = _folder(tmp_path / "lab", {"apparel": 8, "other_product": 8, "non_product": 8}, negatives)
    (root / "non_product" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "models" / "intent.pt"
    report = train_intent(root, out, holdout=0.25, seed=1)
    assert report.n_skipped == 1
    assert report.n_train + report.n_test == 24 and report.n_test == 6
    assert np.asarray(report.confusion).shape == (3, 3) and np.asarray(report.confusion).sum() == report.n_test
    assert report.accuracy == np.trace(np.asarray(report.confusion)) / report.n_test
    assert set(report.recall) == set(INTENTS)
    assert report.to_dict()["counts"] == {"apparel": 8, "other_product": 8, "non_product": 8}
    assert report.accuracy >= 2 / 3  # noise vs charts vs documents is easy
    assert out.exists() and not list(out.parent.glob("*.tmp"))
    assert torch.load(out, weights_only=True)["format"] == "shoplens-intent-head"

    loaded = create_intent_classifier("trained", path=out)
    assert isinstance(loaded, TrainedIntent) and "trained" in list_intent_classifiers()
    assert loaded.backbone == "efficientnet_lite0"
    paths = sorted(p for p in root.rglob("*.png"))
    encodings = backbone.encode([load_image(p, target_size=224) for p in paths])
    probs = loaded.predict(encodings)
    assert probs.shape == (len(paths), 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(TrainedIntent(out).predict(encodings), probs, atol=1e-6)
    truth = [p.parent.name for p in paths]
    assert sum(a == b for a, b in zip(loaded.labels(probs), truth)) >= 20  # fits its training pictures


def test_trained_intent_bad_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no trained intent classifier"):
        TrainedIntent(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(StoreError, match="cannot load"):
        TrainedIntent(garbage)
    other = tmp_path / "other.pt"
    torch.save({"kind": "identity", "state": {}}, other)
    with pytest.raises(StoreError, match="not a shoplens intent classifier"):
        TrainedIntent(other)
    broken = tmp_path / "broken.pt"
    torch.save({"format": "shoplens-intent-head", "version": 1, "intents": list(INTENTS), "backbone": "x"}, broken)
    with pytest.raises(StoreError, match="corrupt"):
        TrainedIntent(broken)


@pytest.mark.data
def test_the_gate_decides_the_same_from_a_preview(photos_root: Path) -> None:
    """A search reads a large JPEG's preview first (shoplens.imaging.load_image): the gate must not care."""
    with open(photos_root / "nonproduct" / "images.csv", newline="") as f:
        wallpapers = [photos_root / "nonproduct" / r["image"] for r in csv.DictReader(f)]  # 640-px JPEGs
    with open(photos_root / "grocery" / "photos.csv", newline="") as f:
        grocery = [photos_root / "grocery" / r["image"] for r in csv.DictReader(f)][::245]
    pipeline = Pipeline()
    previews = [load_image(p, target_size=pipeline.decode_size, preview=pipeline.gate_size) for p in wallpapers + grocery]
    assert [p.is_preview for p in previews] == [True] * len(wallpapers) + [False] * len(grocery)  # 348 px: too small
    fulls = [load_image(p, target_size=pipeline.decode_size) for p in wallpapers]
    small = pipeline.classify(EncodingCache(pipeline, previews[: len(wallpapers)]))
    full = pipeline.classify(EncodingCache(pipeline, fulls))
    assert (small.argmax(1) == full.argmax(1)).all()
    diff = np.abs(small - full).max(1)  # per photo; 0.014 on average, 0.094 at most here
    assert diff.max() < 0.15 and diff.mean() < 0.03, diff
    said = classify_photos(pipeline, wallpapers)  # `shoplens classify` reads previews only
    assert [r.intent for r in said] == [pipeline.intent_of(row) for row in small]  # type: ignore[union-attr]


# ---------------------------------------------------------------- the shipped default head

def test_shipped_head_loads_is_deterministic_and_is_the_default() -> None:
    from shoplens.intent import GateHead

    head = create_intent_classifier("default-head")
    assert isinstance(head, GateHead) and "default-head" in list_intent_classifiers()
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6, 1000)).astype(np.float32)
    stats = np.abs(rng.normal(0, 1, (6, 2, 1280))).astype(np.float32)
    a, b = head.predict_features(logits, stats), GateHead().predict_features(logits, stats)
    assert a.shape == (6, 3) and np.array_equal(a, b) and np.allclose(a.sum(1), 1, atol=1e-5)
    assert Pipeline().intent_classifier.name == "default-head"  # "auto" without a trained store head


def test_shipped_head_keeps_what_the_mapping_claims_as_a_product() -> None:
    head = create_intent_classifier("default-head")
    mapping = ImageNetIntent()
    logits = np.full((2, 1000), -5.0, dtype=np.float32)
    logits[0, 831] = 15.0  # studio couch: furniture, a kind the head never saw
    logits[1, 610] = 15.0  # jersey
    stats = np.full((2, 2, 1280), 3.0, dtype=np.float32)  # whatever the picture looks like
    assert np.allclose(head.predict_features(logits, stats), mapping.predict_logits(logits), atol=1e-6)


def test_shipped_head_rejects_a_foreign_file(tmp_path: Path) -> None:
    from shoplens.intent import GateHead

    bad = tmp_path / "x.npz"
    np.savez(bad, format=np.array("something else"))
    with pytest.raises(StoreError):
        GateHead(str(bad))


@pytest.mark.slow
def test_shipped_head_stops_drawn_and_captioned_pictures(backbone, tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="scikit-image (dev extra) makes the captioned pictures")
    paths = generate_negatives(tmp_path, 8, seed=11, kinds=("chart", "cartoon", "fractal", "captioned"))
    encodings = backbone.encode([load_image(p, target_size=224) for p in paths])
    stopped = {n: float((create_intent_classifier(n).predict(encodings)[:, 2] >= 0.9).mean())
               for n in ("imagenet-map", "default-head")}
    assert stopped["default-head"] >= 0.9 and stopped["default-head"] > stopped["imagenet-map"], stopped


@pytest.mark.data
@pytest.mark.slow
def test_shipped_head_keeps_real_product_photos(backbone, photos_root: Path) -> None:
    with open(photos_root / "grocery" / "photos.csv", newline="") as f:
        grocery = [photos_root / "grocery" / r["image"] for r in csv.DictReader(f) if r["split"] == "val"][::12]
    with open(photos_root / "clothing" / "labels.csv", newline="") as f:
        clothing = [photos_root / "clothing" / r["image"] for r in csv.DictReader(f)][::110]
    with open(photos_root / "outfits" / "garments.jsonl") as f:
        outfits = [photos_root / "outfits" / json.loads(line)["image"] for line in f if line.strip()][::25]
    encodings = backbone.encode([load_image(p, target_size=224) for p in grocery + clothing + outfits])
    probs = create_intent_classifier("default-head").predict(encodings)
    assert float((probs[:, 2] < 0.9).mean()) >= 0.98

"""The colour descriptor appended to other_product descriptors (shoplens.embed.colour)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from shoplens.embed import Embedder, LinearHead, colour_histogram
from shoplens.imaging import Photo, load_image
from shoplens.models import Encoding


def _flat(rgb: tuple[int, int, int], size: tuple[int, int] = (90, 120)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (*size, 3)).copy()


def test_histogram_is_a_unit_vector_that_tells_colours_apart() -> None:
    orange, yellow = colour_histogram(_flat((240, 130, 20))), colour_histogram(_flat((240, 220, 30)))
    assert orange.shape == (256,) and orange.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(orange), 1.0, rtol=1e-5)
    assert float(orange @ yellow) < 0.1  # one bin each, different hues
    # The same colours at another resolution and layout give the same histogram.
    rng = np.random.default_rng(0)
    mixed = np.where(rng.random((120, 160, 1)) < 0.5, _flat((240, 130, 20), (120, 160)), _flat((240, 220, 30), (120, 160)))
    small = np.where(rng.random((60, 60, 1)) < 0.5, _flat((240, 130, 20), (60, 60)), _flat((240, 220, 30), (60, 60)))
    assert float(colour_histogram(mixed) @ colour_histogram(small)) > 0.98


def test_histogram_rejects_what_is_not_an_rgb_photo() -> None:
    with pytest.raises(ValueError):
        colour_histogram(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        colour_histogram(np.zeros((10, 10, 3), np.float32))


def test_describe_appends_the_weighted_histogram_and_says_so_in_its_signature() -> None:
    emb = Embedder("other_product", "efficientnet_lite0", 224, pooling="gem3-s32", colour=0.5)
    plain = Embedder("other_product", "efficientnet_lite0", 224, pooling="gem3-s32")
    assert emb.signature != plain.signature and "hsv0.5" in emb.pooling
    photo = Photo(_flat((200, 40, 40)), (120, 90))
    fmap = torch.rand(16, 7, 7, generator=torch.Generator().manual_seed(0))
    enc = Encoding(photo=photo, input_hw=(224, 224), features={"s32": fmap})
    raw, base = emb.describe([enc]), plain.describe([enc])
    assert raw.shape == (1, 16 + 256)
    np.testing.assert_allclose(raw[0, :16], base[0])
    np.testing.assert_allclose(raw[0, 16:], 0.5 * colour_histogram(photo.pixels))
    # Untrained, the index holds the backbone part alone; a trained head sees all of it.
    np.testing.assert_allclose(emb.project(raw), plain.project(base), rtol=1e-6)
    colour_only = np.hstack([np.zeros((256, 16), np.float32), np.eye(256, dtype=np.float32)])
    emb.head = LinearHead(np.zeros(16 + 256, np.float32), colour_only)
    np.testing.assert_allclose(emb.project(raw)[0], colour_histogram(photo.pixels), atol=1e-6)
    with pytest.raises(ValueError):
        Embedder("other_product", "efficientnet_lite0", 224, colour=-1.0)


@pytest.mark.data
def test_the_histogram_alone_tells_the_bell_peppers_apart(data_dir: Path) -> None:
    """Val store photos of the four bell peppers (green, orange, red, yellow) against their catalogue images."""
    root = data_dir / "grocery"
    peppers = {r["product_id"]: r for r in csv.DictReader((root / "catalog.csv").open()) if r["category"] == "Pepper"}
    assert len(peppers) == 4
    ref = {pid: colour_histogram(load_image(root / r["image"]).pixels) for pid, r in peppers.items()}
    photos = [r for r in csv.DictReader((root / "photos.csv").open()) if r["product_id"] in peppers and r["split"] == "val"]
    right = 0
    for r in photos:
        h = colour_histogram(load_image(root / r["image"]).pixels)
        right += max(ref, key=lambda pid: float(h @ ref[pid])) == r["product_id"]
    assert len(photos) >= 10 and right / len(photos) >= 0.8  # measured 13 of 15


def test_a_store_saved_before_the_colour_option_keeps_its_descriptors(tmp_path: Path) -> None:
    import json

    from shoplens.config import Config, load_store_config

    saved = Config().to_dict()
    del saved["embed"]["other_product"]["colour"]
    del saved["embed"]["apparel"]["colour"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    old = load_store_config(path)
    assert old.embed.other_product.colour == 0.0 and old.embed.other_product.extra_sizes == "320"
    path.write_text(json.dumps(Config().to_dict()))
    assert load_store_config(path).embed.other_product.colour == 0.7

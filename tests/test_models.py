"""Backbone registry and the EfficientNet-Lite port."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shoplens.errors import UnknownModelError
from shoplens.imaging import load_image, photo_from_array
from shoplens.models import create_model, imagenet_class_names, list_models, parse_model_name
from shoplens.models.efficientnet_lite import Conv2dSame
from shoplens.models.preprocess import PreprocessCfg, prepare_batch, resize_photo, source_size, target_shape


def test_registry_lists_and_rejects() -> None:
    assert {"efficientnet_lite0", "efficientnet_lite2"} <= set(list_models())
    assert list_models("*lite0") == ["efficientnet_lite0"]
    with pytest.raises(UnknownModelError, match="unknown model 'resnet9000'.*efficientnet_lite0"):
        parse_model_name("resnet9000")
    with pytest.raises(UnknownModelError, match="non-empty"):
        parse_model_name("  ")


def test_same_padding_matches_tensorflow_rule() -> None:
    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 224, 224)
    y = conv(x)
    assert y.shape[-2:] == (112, 112)
    # TF pads (0 before, 1 after) for an even input with stride 2: the first
    # output sees no padding (9 ones), the last column sees one padded column.
    assert y[0, 0, 0, 0] == 9 and y[0, 0, 0, -1] == 6


@pytest.mark.parametrize("name", ["efficientnet_lite0", pytest.param("efficientnet_lite2", marks=pytest.mark.slow)])
def test_every_bundled_backbone_encodes(name: str) -> None:
    backbone = create_model(name)
    rng = np.random.default_rng(0)
    photos = [photo_from_array(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((100, 300), (240, 120), (50, 50))]
    encs = backbone.encode(photos)
    assert len(encs) == 3
    for enc, photo in zip(encs, photos):
        assert enc.photo is photo and enc.logits is not None and enc.logits.shape == (1000,)
        h, w = enc.input_hw
        ph, pw = photo.pixels.shape[:2]
        assert max(h, w) == backbone.preprocess.input_size and h % 32 == 0 and w % 32 == 0
        assert abs(h / w - ph / pw) < 0.5 * (ph / pw)  # aspect ratio kept, on a 32-pixel grid
        s32 = enc.features["s32"]
        assert s32.shape == (backbone.feature_dim, h // 32, w // 32)
    # An encoding does not depend on its batch.
    alone = backbone.encode(photos[:1])[0]
    assert torch.allclose(alone.logits, encs[0].logits, atol=1e-4)


def test_preprocess_keeps_aspect_on_a_grid_and_normalises() -> None:
    cfg = PreprocessCfg(input_size=64)
    assert target_shape(30, 64, cfg) == (32, 64)
    assert target_shape(640, 100, cfg) == (64, 32)  # never below one stride
    assert target_shape(100, 100, cfg.with_resize("squash")) == (64, 64)
    batch = prepare_batch([np.full((30, 60, 3), 127, dtype=np.uint8)], cfg)
    assert batch.shape == (1, 3, 32, 64)
    assert torch.count_nonzero(batch) == 0  # (127 - 127) / 128


@pytest.mark.data
@pytest.mark.parametrize("mode", ["letterbox", "squash", "center_crop"])
def test_source_size_is_the_smallest_a_photo_only_shrinks_from(mode: str) -> None:
    cfg = PreprocessCfg(224).with_resize(mode)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(240, 2000, size=2))
        sw, sh = source_size(w, h, cfg)
        assert sw <= w and sh <= h
        assert abs(sw / sh - w / h) < 0.02 * w / h + 2 / sh  # the same photo, smaller
        wanted = resize_photo(np.zeros((h, w, 3), np.uint8), cfg).shape[:2]
        assert resize_photo(np.zeros((sh, sw, 3), np.uint8), cfg, (w, h)).shape[:2] == wanted  # the same model input
        if mode != "center_crop":
            out_h, out_w = target_shape(h, w, cfg)
            assert sw >= out_w and sh >= out_h  # nothing enlarged
        else:
            assert min(sw, sh) >= 224
        # and it is the smallest: a tenth smaller would enlarge some side
        smaller = (int(sw * 0.9), int(sh * 0.9))
        if mode == "center_crop":
            assert min(smaller) < 224
        else:
            out_h, out_w = target_shape(smaller[1], smaller[0], cfg)
            assert smaller[0] < out_w or smaller[1] < out_h or (out_h, out_w) != target_shape(h, w, cfg)


def test_lite0_recognises_real_photos(data_dir: Path) -> None:
    names = imagenet_class_names()
    backbone = create_model("efficientnet_lite0")
    photos = sorted((data_dir / "grocery" / "photos" / "val" / "Fruit" / "Apple" / "Granny-Smith").glob("*.jpg"))[:4]
    encs = backbone.encode([load_image(p) for p in photos])
    top = [names[int(e.logits.argmax())] for e in encs]
    assert top.count("Granny Smith") >= 3, top

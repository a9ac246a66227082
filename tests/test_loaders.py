"""Loaders for models users download themselves: DINOv2, CLIP/SigLIP (transformers and
open_clip), FashionCLIP-style entries, and the OWLv2 detector.

Every model here is a tiny randomly initialised one written to tmp_path: the
tests never touch the network. Tests of a family skip when its extra is not
installed ([hf]: transformers; [clip]: open_clip_torch).
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from shoplens.detect import GARMENT_LABELS, create_detector, list_detectors
from shoplens.detect.owlv2 import GARMENT_QUERIES, OWLV2_PREPROCESS, boxes_to_photo, nms
from shoplens.errors import ConfigError, MissingDependencyError, UnknownModelError
from shoplens.imaging import Photo, photo_from_array
from shoplens.models import (
    Backbone,
    PreprocessCfg,
    create_model,
    get_entry,
    list_models,
    parse_model_name,
)
from shoplens.models._hf import hf_preprocess
from shoplens.models.hf_clip import CLIP_PREPROCESS, SIGLIP_PREPROCESS

SRC = Path(__file__).resolve().parents[1] / "src"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install (e.g. torchvision built for another torch) counts as absent
        return False
    return True


HAS_HF = _importable("transformers")
HAS_OPEN_CLIP = _importable("open_clip")
needs_hf = pytest.mark.skipif(not HAS_HF, reason="extra [hf] (transformers) is not installed")
needs_open_clip = pytest.mark.skipif(
    not HAS_OPEN_CLIP, reason="extra [clip] (open_clip_torch) is not installed or broken"
)


# ----------------------------------------------------------------------------------------------
# Photos: something like a product shot (gradient background, a few shapes, sensor noise).


def make_photo(width: int, height: int, seed: int) -> Photo:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 200, size=3).astype(np.float32)
    img = base + 40 * np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1)
    for _ in range(3):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(width // 8, width // 3 + 1)), int(rng.integers(height // 8, height // 3 + 1)))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    cv2.rectangle(img, (x0, y0), (x0 + width // 4, y0 + height // 3), (250, 250, 240), -1)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return photo_from_array(np.clip(img, 0, 255).astype(np.uint8), name=f"photo{seed}")


@pytest.fixture(scope="module")
def photos() -> list[Photo]:
    return [make_photo(120, 90, 1), make_photo(70, 140, 2), make_photo(64, 64, 3)]


def normalised(pixels: np.ndarray, cfg: PreprocessCfg) -> torch.Tensor:
    """A reference (1, 3, H, W) input: pixels already at model size, normalised with cfg's mean/std."""
    x = (pixels.astype(np.float32) - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


# ----------------------------------------------------------------------------------------------
# Tiny models, written like the real ones.

_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 16,
}
_VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}


def _processor_json(path: Path, **values: Any) -> None:
    (path / "preprocessor_config.json").write_text(json.dumps(values))


def make_tiny_dinov2(path: Path, *, registers: bool = False, processor: bool = True) -> Path:
    import transformers

    torch.manual_seed(0)
    common = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 8,
        "image_size": 32,
    }
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=2, **common)
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    model.save_pretrained(path)
    if processor:  # as facebook/dinov2-* ship it, with other numbers
        _processor_json(
            path,
            crop_size={"height": 48, "width": 48},
            do_center_crop=True,
            do_normalize=True,
            do_rescale=True,
            image_mean=[0.3, 0.4, 0.5],
            image_std=[0.2, 0.25, 0.3],
            resample=2,
            rescale_factor=1 / 255,
            size={"shortest_edge": 56},
            image_processor_type="BitImageProcessor",
        )
    return path


def make_tiny_clip(path: Path) -> Path:
    import transformers

    torch.manual_seed(1)
    config = transformers.CLIPConfig(
        text_config=dict(_TEXT, vocab_size=99),
        vision_config=dict(_VISION, image_size=32, patch_size=8),
        projection_dim=24,
    )
    transformers.CLIPModel(config).save_pretrained(path)
    _processor_json(
        path,
        crop_size={"height": 32, "width": 32},
        do_center_crop=True,
        do_normalize=True,
        do_rescale=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        rescale_factor=1 / 255,
        size={"shortest_edge": 32},
        image_processor_type="CLIPImageProcessor",
    )
    return path


def make_tiny_siglip(path: Path) -> Path:
    import transformers

    torch.manual_seed(2)
    config = transformers.SiglipConfig(
        text_config=dict(_TEXT, vocab_size=99), vision_config=dict(_VISION, image_size=32, patch_size=8)
    )
    transformers.SiglipModel(config).save_pretrained(path)
    _processor_json(
        path,
        do_normalize=True,
        do_rescale=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=3,
        rescale_factor=1 / 255,
        size={"height": 32, "width": 32},
        image_processor_type="SiglipImageProcessor",
    )
    return path


def _write_clip_tokenizer(path: Path) -> int:
    """A byte-level CLIP BPE vocabulary with no merges (every character is a token)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "pad_token": "!", "model_max_length": 16})
    )
    return len(vocab)


def make_tiny_owlv2(path: Path) -> Path:
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_clip_tokenizer(path)
    torch.manual_seed(3)
    config = transformers.Owlv2Config(
        text_config=dict(_TEXT, vocab_size=vocab_size),
        vision_config=dict(_VISION, image_size=64, patch_size=16),
        projection_dim=32,  # OWL's class head needs projection_dim == text hidden size
    )
    transformers.Owlv2ForObjectDetection(config).save_pretrained(path)
    _processor_json(
        path,
        do_normalize=True,
        do_pad=True,
        do_rescale=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=2,
        rescale_factor=1 / 255,
        size={"height": 64, "width": 64},
        image_processor_type="Owlv2ImageProcessor",
    )
    return path


def make_tiny_open_clip(path: Path) -> Path:
    import open_clip
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    preprocess_cfg = {
        "size": 32,
        "mean": [0.5, 0.45, 0.4],
        "std": [0.3, 0.28, 0.26],
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    torch.manual_seed(4)
    model = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    return path


def make_tiny_open_clip_timm(path: Path) -> Path:
    """A SigLIP-style open_clip model: timm image tower (timm's own tiny test_vit) with attention pooling."""
    import open_clip
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": 64,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": "none",
            "image_size": 160,
        },
        "text_cfg": {
            "context_length": 8,
            "vocab_size": 100,
            "width": 64,
            "heads": 2,
            "layers": 1,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
        },
    }
    preprocess_cfg = {
        "size": 160,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    torch.manual_seed(5)
    model = open_clip.CustomTextCLIP(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny model folders, made once per module for the families whose packages are installed."""
    root = tmp_path_factory.mktemp("tiny-models")
    dirs: dict[str, Path] = {}
    if HAS_HF:
        dirs["dinov2"] = make_tiny_dinov2(root / "dinov2")
        dirs["dinov2_reg"] = make_tiny_dinov2(root / "dinov2_reg", registers=True, processor=False)
        dirs["clip"] = make_tiny_clip(root / "clip")
        dirs["siglip"] = make_tiny_siglip(root / "siglip")
        dirs["owlv2"] = make_tiny_owlv2(root / "owlv2")
    if HAS_OPEN_CLIP:
        dirs["open_clip"] = make_tiny_open_clip(root / "open_clip")
        dirs["open_clip_timm"] = make_tiny_open_clip_timm(root / "open_clip_timm")
    return dirs


# ----------------------------------------------------------------------------------------------
# The same checks over every backbone that can be built offline.

_OFFLINE_TINY = {
    "local-dir:{dinov2}": "dinov2",
    "local-dir:{dinov2_reg}": "dinov2_reg",
    "local-dir:{clip}": "clip",
    "local-dir:{siglip}": "siglip",
    "open_clip:local-dir:{open_clip}": "open_clip",
    "local-dir:{open_clip}": "open_clip",
    "open_clip:local-dir:{open_clip_timm}": "open_clip",
}


#: Bundled backbones with real weights other than the default: seconds each, so in the slow lane only.
_SLOW_OFFLINE = {"efficientnet_lite1", "efficientnet_lite2"}


def _offline_names() -> list[Any]:
    names: list[Any] = []
    for name in list_models():
        entry = get_entry(name)
        marks = []
        if "hub" in entry.tags:
            marks.append(pytest.mark.skip(reason=f"{name} downloads its weights from the hub"))
        elif name in _SLOW_OFFLINE:
            marks.append(pytest.mark.slow)
        names.append(pytest.param(name, id=name, marks=marks))
    for template, family in _OFFLINE_TINY.items():
        mark = needs_open_clip if family == "open_clip" else needs_hf
        folder = template.split("{")[1].rstrip("}")
        names.append(pytest.param(template, id=f"tiny-{template.split('{')[0]}{folder}", marks=[mark]))
    return names


@pytest.mark.parametrize("template", _offline_names())
def test_every_offline_backbone(template: str, tiny: dict[str, Path], photos: list[Photo]) -> None:
    name = template.format(**{k: str(v) for k, v in tiny.items()})
    try:
        backbone = create_model(name)
    except MissingDependencyError as err:
        pytest.skip(str(err))
    assert isinstance(backbone, Backbone)
    assert isinstance(backbone.preprocess, PreprocessCfg)
    assert backbone.feature_dim > 0
    encodings = backbone.encode(photos[:2])
    assert len(encodings) == 2
    for photo, enc in zip(photos[:2], encodings):
        assert enc.photo is photo
        h, w = enc.input_hw
        assert 0 < h <= backbone.preprocess.input_size and 0 < w <= backbone.preprocess.input_size
        if enc.embedding is not None:
            assert enc.embedding.shape == (backbone.feature_dim,)
            descriptor = enc.embedding
        else:
            assert enc.features["s32"].shape[0] == backbone.feature_dim
            descriptor = enc.features["s32"]
        assert torch.isfinite(descriptor).all()
        for fmap in enc.features.values():
            assert fmap.ndim == 3 and torch.isfinite(fmap).all()
    # Deterministic: the same photos give the same numbers.
    again = backbone.encode(photos[:2])
    for a, b in zip(encodings, again):
        if a.embedding is not None:
            assert torch.equal(a.embedding, b.embedding)
        for key in a.features:
            assert torch.equal(a.features[key], b.features[key])
    # Two different photos give different descriptors.
    first = encodings[0].embedding if encodings[0].embedding is not None else encodings[0].features["s32"].mean((1, 2))
    second = encodings[1].embedding if encodings[1].embedding is not None else encodings[1].features["s32"].mean((1, 2))
    assert not torch.allclose(first, second)


# ----------------------------------------------------------------------------------------------
# Names and errors.


def test_registered_entries_parse_and_state_extras() -> None:
    expected = {
        "dinov2-small": ("hf", "hf-hub:facebook/dinov2-small"),
        "dinov2-base": ("hf", "hf-hub:facebook/dinov2-base"),
        "clip-vit-b32": ("hf", "hf-hub:openai/clip-vit-base-patch32"),
        "fashion-clip": ("hf", "hf-hub:patrickjohncyh/fashion-clip"),
        "siglip-base": ("hf", "hf-hub:google/siglip-base-patch16-224"),
        "clip-vit-b32-laion2b": ("clip", "open_clip:ViT-B-32/laion2b_s34b_b79k"),
        "marqo-fashionsiglip": ("clip", "open_clip:hf-hub:Marqo/marqo-fashionSigLIP"),
    }
    for name, (extra, target) in expected.items():
        entry = get_entry(name)
        assert entry.extra == extra
        assert target in entry.description
        assert "hub" in entry.tags
    assert get_entry("fashion-clip").preprocess == CLIP_PREPROCESS
    assert get_entry("siglip-base").preprocess == SIGLIP_PREPROCESS


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "non-empty"),
        ("no-such-model", "unknown model 'no-such-model'"),
        ("nosuchscheme:x", "unknown model"),
        ("hf-hub:", "no location"),
        ("hf-hub:just-a-name", "not a Hugging Face Hub repository id"),
        ("hf-hub:org/name/extra", "not a Hugging Face Hub repository id"),
        ("open_clip:ViT-B-32", "open_clip:ARCH/PRETRAINED"),
        ("open_clip:hf-hub:bad", "not a Hugging Face Hub repository id"),
        ("local-dir:", "no location"),
    ],
)
def test_bad_names_are_refused_when_parsed(name: str, message: str) -> None:
    with pytest.raises(UnknownModelError, match=message):
        parse_model_name(name)


def test_parsed_locations() -> None:
    parsed = parse_model_name("hf-hub:facebook/dinov2-small@abc123")
    assert (parsed.scheme, parsed.target.kind, parsed.target.ref, parsed.target.revision) == (
        "hf-hub",
        "hf-hub",
        "facebook/dinov2-small",
        "abc123",
    )
    parsed = parse_model_name("local-dir:relative/dir")
    assert parsed.target.kind == "local-dir" and Path(parsed.target.ref).is_absolute()
    parsed = parse_model_name("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert (parsed.target.arch, parsed.target.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="does not exist"):
        create_model(f"local-dir:{tmp_path / 'nothing-here'}")


def test_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="has no config.json"):
        create_model(f"local-dir:{tmp_path}")


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnknownModelError, match="model type 'bert'.*dinov2"):
        create_model(f"local-dir:{tmp_path}")


def test_missing_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'shoplens\[hf\]'"):
        create_model(f"local-dir:{tmp_path}")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'shoplens\[clip\]'"):
        create_model("open_clip:ViT-B-32/laion2b_s34b_b79k")


def test_broken_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import shoplens._deps as deps

    def broken(name: str) -> Any:
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(deps.importlib, "import_module", broken)
    with pytest.raises(MissingDependencyError, match=r"failed to import.*torchvision::nms.*shoplens\[clip\]"):
        create_model("open_clip:ViT-B-32/laion2b_s34b_b79k")


def test_importing_shoplens_imports_no_optional_package() -> None:
    code = (
        "import sys, shoplens, shoplens.models, shoplens.detect\n"
        "heavy = [m for m in ('transformers', 'open_clip', 'huggingface_hub', 'torchvision') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------
# DINOv2.


@needs_hf
def test_dinov2_preprocessing_comes_from_its_config(tiny: dict[str, Path]) -> None:
    backbone = create_model(f"local-dir:{tiny['dinov2']}")
    assert backbone.preprocess == PreprocessCfg(
        input_size=48,
        resize="center_crop",
        mean=pytest.approx((0.3 * 255, 0.4 * 255, 0.5 * 255)),  # type: ignore[arg-type]
        std=pytest.approx((0.2 * 255, 0.25 * 255, 0.3 * 255)),  # type: ignore[arg-type]
        interpolation="bilinear",
        stride=8,
    )
    assert backbone.feature_dim == 64  # CLS + mean patch token, 2 x 32
    # Without a preprocessor_config.json: what facebook/dinov2-* ship (224 px, ImageNet mean/std, bicubic).
    plain = create_model(f"local-dir:{tiny['dinov2_reg']}")
    assert (plain.preprocess.input_size, plain.preprocess.resize, plain.preprocess.interpolation) == (
        224,
        "center_crop",
        "bicubic",
    )
    assert plain.preprocess.mean == pytest.approx((123.675, 116.28, 103.53))


@needs_hf
def test_dinov2_matches_the_model_run_by_hand(tiny: dict[str, Path]) -> None:
    import transformers

    backbone = create_model(f"local-dir:{tiny['dinov2']}")
    model = transformers.Dinov2Model.from_pretrained(tiny["dinov2"]).eval()
    # A 48 x 60 photo: no resize, the centre crop drops 6 rows at the top and bottom.
    photo = make_photo(48, 60, 7)
    enc = backbone.encode([photo])[0]
    with torch.inference_mode():
        hidden = model(pixel_values=normalised(photo.pixels[6:54], backbone.preprocess)).last_hidden_state[0]
    expected = torch.cat([hidden[0], hidden[1:].mean(0)])
    torch.testing.assert_close(enc.embedding, expected, atol=1e-5, rtol=1e-4)
    assert enc.features["s8"].shape == (32, 6, 6)
    torch.testing.assert_close(enc.features["s8"], hidden[1:].reshape(6, 6, 32).permute(2, 0, 1), atol=1e-5, rtol=1e-4)


@needs_hf
def test_dinov2_batches_and_sizes(tiny: dict[str, Path], photos: list[Photo]) -> None:
    backbone = create_model(f"local-dir:{tiny['dinov2_reg']}")
    alone = backbone.encode(photos[1:2], input_size=64)[0]
    batched = backbone.encode(photos, input_size=64)[1]
    torch.testing.assert_close(alone.embedding, batched.embedding, atol=1e-5, rtol=1e-4)
    assert alone.features["s8"].shape == (32, 8, 8)  # register tokens are not part of the grid
    assert alone.input_hw == (64, 64)


# ----------------------------------------------------------------------------------------------
# CLIP and SigLIP in transformers format, and the hub path through a local cache.


@needs_hf
def test_clip_embedding_is_the_projected_image_feature(tiny: dict[str, Path]) -> None:
    import transformers

    backbone = create_model(f"local-dir:{tiny['clip']}")
    assert backbone.feature_dim == 24
    assert (backbone.preprocess.input_size, backbone.preprocess.resize, backbone.preprocess.interpolation) == (
        32,
        "center_crop",
        "bicubic",
    )
    assert backbone.preprocess.mean == pytest.approx(CLIP_PREPROCESS.mean)
    photo = make_photo(32, 32, 8)
    enc = backbone.encode([photo])[0]
    model = transformers.CLIPModel.from_pretrained(tiny["clip"]).eval()
    with torch.inference_mode():
        pooled = model.vision_model(pixel_values=normalised(photo.pixels, backbone.preprocess)).pooler_output
        expected = model.visual_projection(pooled)[0]
    torch.testing.assert_close(enc.embedding, expected, atol=1e-5, rtol=1e-4)
    assert enc.features["s8"].shape == (32, 4, 4)


@needs_hf
def test_siglip_embedding_is_the_pooling_head(tiny: dict[str, Path]) -> None:
    import transformers

    backbone = create_model(f"local-dir:{tiny['siglip']}")
    assert backbone.feature_dim == 32
    assert (backbone.preprocess.resize, backbone.preprocess.input_size) == ("squash", 32)
    assert backbone.preprocess.mean == pytest.approx((127.5,) * 3)
    photo = make_photo(32, 32, 9)
    enc = backbone.encode([photo])[0]
    model = transformers.SiglipModel.from_pretrained(tiny["siglip"]).eval()
    with torch.inference_mode():
        expected = model.vision_model(pixel_values=normalised(photo.pixels, backbone.preprocess)).pooler_output[0]
    torch.testing.assert_close(enc.embedding, expected, atol=1e-5, rtol=1e-4)
    # A larger input size interpolates the position embeddings.
    assert backbone.encode([photo], input_size=48)[0].features["s8"].shape == (32, 6, 6)


@needs_hf
@pytest.mark.parametrize(
    ("family", "cls", "expected"),
    [
        ("clip", "CLIPImageProcessor", CLIP_PREPROCESS),
        ("siglip", "SiglipImageProcessor", SIGLIP_PREPROCESS),
        ("owlv2", "Owlv2ImageProcessor", OWLV2_PREPROCESS),
    ],
)
def test_registered_preprocessing_is_what_transformers_processors_do(
    family: str, cls: str, expected: PreprocessCfg
) -> None:
    """The defaults we state per family equal the reading of transformers' own processor settings."""
    try:  # transformers 5: the PIL processors; 4: the slow ones
        module = importlib.import_module(f"transformers.models.{family}.image_processing_pil_{family}")
        processor = getattr(module, f"{cls}Pil")()
    except (ImportError, AttributeError):
        processor = getattr(importlib.import_module("transformers"), cls)()
    read = hf_preprocess(processor.to_dict(), PreprocessCfg(input_size=1, stride=expected.stride))
    if family == "owlv2":
        read = read.with_resize("letterbox")  # the OWLv2 processor pads to a square first
    assert (read.input_size, read.resize, read.interpolation) == (
        expected.input_size,
        expected.resize,
        expected.interpolation,
    )
    assert read.mean == pytest.approx(expected.mean) and read.std == pytest.approx(expected.std)


def _fake_hub_cache(cache: Path, repo: str, files: Path) -> None:
    """Lay ``files`` out as huggingface_hub's cache holds a downloaded repository."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in files.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache, with the hub switched off (nothing is downloaded)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@needs_hf
def test_fashion_clip_entry_loads_from_the_hub_cache(
    tiny: dict[str, Path], offline_hub: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_hub_cache(offline_hub, "patrickjohncyh/fashion-clip", tiny["clip"])
    with caplog.at_level(logging.WARNING, logger="shoplens.models._registry"):
        backbone = create_model("fashion-clip")
    # The tiny stand-in takes 32 px inputs, not the registered 224: the model's own files win, and we are told.
    assert backbone.preprocess.input_size == 32
    assert "not the registered" in caplog.text
    assert backbone.name == "fashion-clip"
    assert backbone.feature_dim == 24
    direct = create_model(f"local-dir:{tiny['clip']}")
    photo = make_photo(50, 40, 10)
    torch.testing.assert_close(backbone.encode([photo])[0].embedding, direct.encode([photo])[0].embedding)


@needs_hf
def test_hub_model_not_in_cache_offline(offline_hub: Path) -> None:
    with pytest.raises(UnknownModelError, match="not in the local Hugging Face cache"):
        create_model("hf-hub:facebook/dinov2-small")


@needs_hf
def test_checkpoint_lacking_weights_is_refused(tmp_path: Path) -> None:
    import transformers

    small = transformers.Dinov2Model(
        transformers.Dinov2Config(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=8, image_size=32
        )
    )
    small.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 2  # the weights hold one layer only
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownModelError, match="lacks .* weights"):
        create_model(f"local-dir:{tmp_path}")


@needs_hf
def test_directory_without_weights(tmp_path: Path, tiny: dict[str, Path]) -> None:
    (tmp_path / "config.json").write_bytes((tiny["dinov2"] / "config.json").read_bytes())
    with pytest.raises(UnknownModelError, match="cannot load Dinov2Model"):
        create_model(f"local-dir:{tmp_path}")


# ----------------------------------------------------------------------------------------------
# open_clip.


@needs_open_clip
def test_open_clip_local_dir(tiny: dict[str, Path]) -> None:
    import open_clip

    backbone = create_model(f"open_clip:local-dir:{tiny['open_clip']}")
    assert backbone.preprocess == PreprocessCfg(
        input_size=32,
        resize="squash",
        mean=pytest.approx((0.5 * 255, 0.45 * 255, 0.4 * 255)),  # type: ignore[arg-type]
        std=pytest.approx((0.3 * 255, 0.28 * 255, 0.26 * 255)),  # type: ignore[arg-type]
        interpolation="bilinear",
        stride=1,
    )
    assert backbone.feature_dim == 16
    photo = make_photo(32, 32, 11)
    enc = backbone.encode([photo])[0]
    model = open_clip.create_model(f"local-dir:{tiny['open_clip']}").eval()
    with torch.inference_mode():
        expected = model.encode_image(normalised(photo.pixels, backbone.preprocess))[0]
    torch.testing.assert_close(enc.embedding, expected, atol=1e-5, rtol=1e-4)
    assert enc.features["s8"].shape == (32, 4, 4)
    # The plain local-dir: scheme recognises an open_clip folder by its open_clip_config.json.
    same = create_model(f"local-dir:{tiny['open_clip']}").encode([photo])[0]
    torch.testing.assert_close(same.embedding, enc.embedding)
    with pytest.raises(ConfigError, match="32 px inputs only"):
        backbone.encode([photo], input_size=64)
    # open_clip's "longest" mode: a letterbox, padded to the tower's square; features cover the photo only.
    backbone.preprocess = backbone.preprocess.with_resize("letterbox")
    wide = make_photo(32, 16, 12)
    enc = backbone.encode([wide, photo])[0]
    assert enc.input_hw == (16, 32) and enc.features["s8"].shape == (32, 2, 4)
    padded = np.empty((32, 32, 3), np.uint8)
    padded[:] = np.round(backbone.preprocess.mean).astype(np.uint8)
    padded[:16] = wide.pixels
    with torch.inference_mode():
        expected = model.encode_image(normalised(padded, backbone.preprocess))[0]
    torch.testing.assert_close(enc.embedding, expected, atol=1e-5, rtol=1e-4)


@needs_open_clip
def test_open_clip_timm_tower(tiny: dict[str, Path]) -> None:
    import open_clip

    backbone = create_model(f"open_clip:local-dir:{tiny['open_clip_timm']}")
    assert (backbone.preprocess.input_size, backbone.preprocess.resize) == (160, "center_crop")  # "shortest"
    photo = make_photo(160, 200, 14)  # shortest side 160: no resize, crop 20 rows top and bottom
    enc = backbone.encode([photo])[0]
    model = open_clip.create_model(f"local-dir:{tiny['open_clip_timm']}").eval()
    with torch.inference_mode():
        expected = model.encode_image(normalised(photo.pixels[20:180], backbone.preprocess))[0]
    torch.testing.assert_close(enc.embedding, expected, atol=1e-5, rtol=1e-4)
    assert enc.features["s16"].shape == (64, 10, 10)


@needs_open_clip
def test_open_clip_unknown_tag_and_missing_weights(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(UnknownModelError, match="cannot load open_clip:ViT-B-32/no-such-tag.*pretrained tags"):
        create_model("open_clip:ViT-B-32/no-such-tag")
    (tmp_path / "open_clip_config.json").write_bytes((tiny["open_clip"] / "open_clip_config.json").read_bytes())
    with pytest.raises(UnknownModelError, match="cannot load"):
        create_model(f"open_clip:local-dir:{tmp_path}")  # a config without weights is not a random model


# ----------------------------------------------------------------------------------------------
# OWLv2.


def test_owlv2_names_are_registered() -> None:
    assert {"owlv2:", "owlv2-base"} <= set(list_detectors())
    with pytest.raises(UnknownModelError, match="not a Hugging Face Hub repository id"):
        create_detector("owlv2:not-a-repo")


def test_boxes_to_photo_by_hand() -> None:
    # A 200 x 100 photo decoded at half scale (100 x 50 pixels), resized to 64 x 32 in a 64 px square.
    photo = Photo(pixels=np.zeros((50, 100, 3), np.uint8), size=(200, 100))
    box = np.array([[0.5, 0.25, 0.5, 0.5]])  # centre (32, 16), 32 x 32 in input pixels
    out = boxes_to_photo(box, photo, (32, 64), 64)
    np.testing.assert_allclose(out, [[50.0, 0.0, 150.0, 100.0]])  # x: *200/64, y: *100/32, clipped at 0
    out = boxes_to_photo(np.array([[0.25, 0.125, 0.1, 0.05]]), photo, (32, 64), 64)
    np.testing.assert_allclose(out, [[40.0, 20.0, 60.0, 30.0]])


def test_nms_by_hand() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5) == [0, 2, 3]  # box 1 overlaps box 0 by 0.81; box 3 by 0.5 exactly
    assert nms(boxes, scores, 0.4) == [0, 2]


@needs_hf
def test_owlv2_matches_the_model_forward(tiny: dict[str, Path]) -> None:
    import transformers

    detector = create_detector(f"owlv2:{tiny['owlv2']}")
    assert detector.preprocess.input_size == 64 and detector.preprocess.resize == "letterbox"
    photo = make_photo(128, 80, 12)
    batch, sizes = detector._pack([photo])
    assert sizes == [(40, 64)]
    # Below the photo: the processor's grey padding (0.5 before normalising).
    pad = (127.5 - np.asarray(detector.preprocess.mean)) / np.asarray(detector.preprocess.std)
    torch.testing.assert_close(batch[0, :, 50, 10], torch.tensor(pad, dtype=torch.float32))
    logits, boxes = detector.predict(batch)

    model = transformers.Owlv2ForObjectDetection.from_pretrained(tiny["owlv2"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny["owlv2"])
    phrases = [p for ps in GARMENT_QUERIES.values() for p in ps]
    tokens = tokenizer(phrases, padding="max_length", max_length=16, return_tensors="pt")
    with torch.inference_mode():
        ref = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=batch)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(boxes, ref.pred_boxes, atol=1e-5, rtol=1e-4)

    # Boxes in photo pixels agree with transformers' own post-processing (scaled by the longest side).
    pil = importlib.import_module("transformers.models.owlv2.image_processing_pil_owlv2")
    processor = pil.Owlv2ImageProcessorPil()
    post = processor.post_process_object_detection(ref, threshold=0.0, target_sizes=[(80, 128)])[0]
    scores, _ = torch.sigmoid(ref.logits[0]).max(-1)
    order = torch.argsort(scores, descending=True)[:5]
    ours = boxes_to_photo(boxes[0, order].numpy().astype(np.float64), photo, sizes[0], 64)
    theirs = post["boxes"][torch.argsort(post["scores"], descending=True)[:5]].numpy()
    np.testing.assert_allclose(ours, np.clip(theirs, 0, [128, 80, 128, 80]), atol=1e-3)


@needs_hf
def test_owlv2_detect(tiny: dict[str, Path], photos: list[Photo]) -> None:
    from shoplens.models import Encoding

    detector = create_detector(f"owlv2:local-dir:{tiny['owlv2']}", threshold=0.0, max_boxes=5)
    assert detector.backbone is None
    found = detector.detect([Encoding(p, (0, 0)) for p in photos])
    assert len(found) == len(photos)
    for photo, garments in zip(photos, found):
        assert 0 < len(garments) <= 5
        assert [g.score for g in garments] == sorted((g.score for g in garments), reverse=True)
        for g in garments:
            assert g.label in GARMENT_LABELS
            x0, y0, x1, y1 = g.box
            assert 0 <= x0 < x1 <= photo.size[0] and 0 <= y0 < y1 <= photo.size[1]
    # Deterministic, and batch size does not matter.
    assert detector.detect([Encoding(photos[1], (0, 0))])[0] == found[1]


@needs_hf
def test_owlv2_boxes_are_in_photo_size_coordinates(tiny: dict[str, Path]) -> None:
    from shoplens.models import Encoding

    detector = create_detector(f"owlv2:{tiny['owlv2']}", threshold=0.0)
    full = make_photo(128, 80, 13)
    # The same photo decoded at half scale (as JPEG draft mode does): same size, half the pixels.
    half = Photo(pixels=cv2.resize(full.pixels, (64, 40), interpolation=cv2.INTER_AREA), size=full.size, name="half")
    a, b = detector.detect([Encoding(full, (0, 0)), Encoding(half, (0, 0))])
    assert a and a == b


@needs_hf
def test_owlv2_custom_queries(tiny: dict[str, Path], photos: list[Photo]) -> None:
    from shoplens.models import Encoding

    detector = create_detector(f"owlv2:{tiny['owlv2']}", threshold=0.0, queries={"hat": ["a hat", "a cap"]})
    assert {g.label for g in detector.detect([Encoding(photos[0], (0, 0))])[0]} == {"hat"}
    with pytest.raises(ConfigError, match="labels among"):
        create_detector(f"owlv2:{tiny['owlv2']}", queries={"sock": ["a sock"]})
    with pytest.raises(ConfigError, match="threshold"):
        create_detector(f"owlv2:{tiny['owlv2']}", threshold=1.5)


@needs_hf
def test_owlv2_base_entry_needs_the_hub(offline_hub: Path) -> None:
    with pytest.raises(UnknownModelError, match="google/owlv2-base-patch16-ensemble"):
        create_detector("owlv2-base")

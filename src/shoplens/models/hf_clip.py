"""CLIP and SigLIP image towers in transformers format (OpenAI CLIP, FashionCLIP, SigLIP).

Names: ``hf-hub:openai/clip-vit-base-patch32``, ``hf-hub:patrickjohncyh/fashion-clip``,
``hf-hub:google/siglip-base-patch16-224``, ``local-dir:/path`` for a folder whose
config.json has model type ``clip`` / ``clip_vision_model`` / ``siglip`` /
``siglip_vision_model``, and the registered entries ``clip-vit-b32``,
``fashion-clip`` and ``siglip-base``. Extra: ``[hf]`` (no torchvision needed).

Only the image tower is loaded. The embedding is the model's image embedding
(CLIP: the projected pooled CLS token; SigLIP: the attention-pooling head),
not L2-normalised; the final-layer-normed patch tokens are the feature map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from ._hf import from_pretrained, hf_preprocess, pretrained_ref, read_json, register_hf_loader, transformers_module
from ._registry import WeightsSource, register_alias
from ._tokens import TokenBackbone, tokens_to_grid
from .preprocess import PreprocessCfg

#: OpenAI CLIP: resize the shortest side to 224 (bicubic), centre crop, OpenAI mean/std.
OPENAI_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
OPENAI_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
CLIP_PREPROCESS = PreprocessCfg(
    input_size=224,
    resize="center_crop",
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
    interpolation="bicubic",
    stride=32,
)
#: SigLIP: squash to a square (bicubic), mean = std = 0.5.
SIGLIP_PREPROCESS = PreprocessCfg(
    input_size=224, resize="squash", mean=(127.5,) * 3, std=(127.5,) * 3, interpolation="bicubic", stride=16
)


def _vision_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    vision = config.get("vision_config")
    return vision if isinstance(vision, Mapping) else config


class ClipVisionBackbone(TokenBackbone):
    """``CLIPVisionModelWithProjection``: embedding = projected pooled CLS token."""

    def __init__(self, name: str, model: Any, preprocess: PreprocessCfg) -> None:
        config: Any = model.config
        self.patch = int(config.patch_size)
        # Where the tower's final layer norm sits differs between transformers versions.
        self.post_layernorm = next(m for n, m in model.named_modules() if n.endswith("post_layernorm"))
        super().__init__(
            name,
            model,
            preprocess,
            feature_dim=int(config.projection_dim),
            native_size=int(config.image_size),
            resizable=True,
        )

    def _forward(self, batch: torch.Tensor, interpolate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.module(pixel_values=batch, interpolate_pos_encoding=interpolate)
        tokens = self.post_layernorm(out.last_hidden_state[:, 1:])
        return out.image_embeds, tokens_to_grid(tokens, batch.shape[-2], batch.shape[-1], self.patch)


class SiglipVisionBackbone(TokenBackbone):
    """``SiglipVisionModel``: embedding = the attention-pooling head's output."""

    def __init__(self, name: str, model: Any, preprocess: PreprocessCfg) -> None:
        config: Any = model.config
        self.patch = int(config.patch_size)
        super().__init__(
            name,
            model,
            preprocess,
            feature_dim=int(config.hidden_size),
            native_size=int(config.image_size),
            resizable=True,
        )

    def _forward(self, batch: torch.Tensor, interpolate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.module(pixel_values=batch, interpolate_pos_encoding=interpolate)
        tokens = out.last_hidden_state  # post-layernormed, no class token
        pooled = out.pooler_output if out.pooler_output is not None else tokens.mean(dim=1)
        return pooled, tokens_to_grid(tokens, batch.shape[-2], batch.shape[-1], self.patch)


@register_hf_loader("clip", "clip_vision_model")
def build_clip(source: WeightsSource, config: Mapping[str, Any]) -> ClipVisionBackbone:
    """The image tower of a CLIP model (OpenAI CLIP, LAION CLIP, FashionCLIP...)."""
    transformers = transformers_module("CLIP backbones")
    vision = _vision_config(config)
    vision_config = transformers.CLIPVisionConfig.from_pretrained(pretrained_ref(source), revision=source.revision)
    if "projection_dim" in config and config.get("model_type") == "clip":
        # A full CLIP checkpoint keeps projection_dim at the top level, not in vision_config.
        vision_config.projection_dim = int(config["projection_dim"])
    model = from_pretrained(transformers.CLIPVisionModelWithProjection, source, config=vision_config)
    default = replace(
        CLIP_PREPROCESS, input_size=int(vision.get("image_size", 224)), stride=int(vision.get("patch_size", 32))
    )
    preprocess = hf_preprocess(read_json(source, "preprocessor_config.json", required=False), default)
    return ClipVisionBackbone(str(source), model, preprocess)


@register_hf_loader("siglip", "siglip_vision_model")
def build_siglip(source: WeightsSource, config: Mapping[str, Any]) -> SiglipVisionBackbone:
    """The image tower of a SigLIP model."""
    transformers = transformers_module("SigLIP backbones")
    model = from_pretrained(transformers.SiglipVisionModel, source)
    vision = _vision_config(config)
    default = replace(
        SIGLIP_PREPROCESS, input_size=int(vision.get("image_size", 224)), stride=int(vision.get("patch_size", 16))
    )
    preprocess = hf_preprocess(read_json(source, "preprocessor_config.json", required=False), default)
    return SiglipVisionBackbone(str(source), model, preprocess)


register_alias(
    "clip-vit-b32",
    "hf-hub:openai/clip-vit-base-patch32",
    preprocess=CLIP_PREPROCESS,
    description="OpenAI CLIP ViT-B/32 image tower (MIT); downloads from the hub",
    extra="hf",
    tags=("hub", "vit", "clip"),
)
register_alias(
    "fashion-clip",
    "hf-hub:patrickjohncyh/fashion-clip",
    preprocess=CLIP_PREPROCESS,
    description="FashionCLIP: CLIP ViT-B/32 fine-tuned on fashion products (MIT); downloads from the hub",
    extra="hf",
    tags=("hub", "vit", "clip", "fashion"),
)
register_alias(
    "siglip-base",
    "hf-hub:google/siglip-base-patch16-224",
    preprocess=SIGLIP_PREPROCESS,
    description="SigLIP ViT-B/16 224 px image tower (Apache-2.0); downloads from the hub",
    extra="hf",
    tags=("hub", "vit", "siglip"),
)

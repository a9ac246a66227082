"""Backbones of the transformer kind: square inputs, a global vector and a grid of patch tokens.

DINOv2, CLIP, SigLIP and open_clip models share the batching here; each family
says how to run its model (:meth:`TokenBackbone._forward`) and how to make the
global embedding (:meth:`TokenBackbone._embedding`).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..imaging import Photo
from .backbone import Backbone, Encoding, _crop_map
from .preprocess import PreprocessCfg, pack_resized, resize_photo


class TokenBackbone(Backbone):
    """A model that maps a square batch to (global vector, patch-token grid).

    :attr:`Encoding.embedding` holds the model's global embedding and
    :attr:`Encoding.features` its last patch-token grid as a (C, h, w) map,
    keyed by its stride in input pixels (``"s14"`` for DINOv2, ``"s16"`` or
    ``"s32"`` for ViT-B/16 and /32), cropped to the photo's valid area.
    ``resizable`` models (interpolated position embeddings) accept any
    ``input_size``; the others only their native one.
    """

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        preprocess: PreprocessCfg,
        *,
        feature_dim: int,
        native_size: int,
        resizable: bool,
        batch_size: int = 16,
    ) -> None:
        self.name = name
        self.module = module.eval()
        self.preprocess = preprocess
        self.feature_dim = feature_dim
        self.native_size = native_size
        self.resizable = resizable
        self.batch_size = batch_size
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads

    def torch_module(self) -> torch.nn.Module:
        return self.module

    @abc.abstractmethod
    def _forward(self, batch: torch.Tensor, interpolate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, D) pooled vectors and an (N, C, gh, gw) token grid (or ``None``)."""

    def _embedding(self, pooled: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
        """One photo's global embedding from its pooled vector and valid token grid."""
        return pooled

    def encode(self, photos: Sequence[Photo], *, input_size: int | None = None) -> list[Encoding]:
        size = input_size or self.preprocess.input_size
        if size != self.native_size and not self.resizable:
            raise ConfigError(f"{self.name} takes {self.native_size} px inputs only, not {size}")
        cfg = self.preprocess.with_size(size)
        out: list[Encoding] = []
        for start in range(0, len(photos), self.batch_size):
            chunk = photos[start : start + self.batch_size]
            batch, valid = pack_resized([resize_photo(p.pixels, cfg) for p in chunk], cfg, square=True)
            with self._lock, torch.inference_mode():
                pooled, grid = self._forward(batch.contiguous(), batch.shape[-1] != self.native_size)
            for i, photo in enumerate(chunk):
                h, w = int(valid[i, 0]), int(valid[i, 1])
                features: dict[str, torch.Tensor] = {}
                cell_grid = None
                if grid is not None:
                    cell_grid = _crop_map(grid[i], h, w, batch.shape[-2:])
                    features[f"s{batch.shape[-1] // grid.shape[-1]}"] = cell_grid
                out.append(
                    Encoding(
                        photo=photo,
                        input_hw=(h, w),
                        features=features,
                        embedding=self._embedding(pooled[i], cell_grid).float(),
                    )
                )
        return out


def tokens_to_grid(tokens: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """(N, L, C) patch tokens in row-major order -> (N, C, height // patch, width // patch)."""
    gh, gw = height // patch, width // patch
    n, length, c = tokens.shape
    if length != gh * gw:
        raise ValueError(f"{length} tokens do not make a {gh}x{gw} grid")
    return tokens.reshape(n, gh, gw, c).permute(0, 3, 1, 2)

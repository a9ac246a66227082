"""Backbones of the transformer kind: square inputs, a global vector and a grid of patch tokens.

DINOv2, CLIP, SigLIP and open_clip models share the batching here; each family
says how to run its model (:meth:`TokenBackbone._forward`) and how to make the
global embedding (:meth:`TokenBackbone._embedding`).
"""

from __future__ import annotations

import abc
import threading
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..imaging import Photo
from .backbone import Backbone, Encoding
from .preprocess import PreprocessCfg, resize_photo


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
        resized = [resize_photo(p.pixels, cfg, p.size) for p in photos]
        # A fixed-size tower gets letterboxed photos padded to its square (with the
        # mean colour, which normalises to zero); otherwise photos of one shape are
        # batched together and never padded, so an encoding does not depend on its batch.
        inputs = resized if self.resizable else [_pad_square(r, size, cfg) for r in resized]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, x in enumerate(inputs):
            groups[(x.shape[0], x.shape[1])].append(i)
        out: list[Encoding | None] = [None] * len(photos)
        for shape, members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                batch = _normalise([inputs[i] for i in chunk], cfg)
                with self._lock, torch.inference_mode():
                    pooled, grid = self._forward(batch, shape != (self.native_size, self.native_size))
                for j, i in enumerate(chunk):
                    h, w = resized[i].shape[:2]
                    features: dict[str, torch.Tensor] = {}
                    cells = None
                    if grid is not None:
                        gh, gw = grid.shape[-2:]
                        # Cells that overlap the photo (all of them unless it was padded).
                        cells = grid[j, :, : -(-h * gh // shape[0]), : -(-w * gw // shape[1])]
                        features[f"s{shape[1] // gw}"] = cells
                    out[i] = Encoding(
                        photo=photos[i],
                        input_hw=(h, w),
                        features=features,
                        embedding=self._embedding(pooled[j], cells).float(),
                    )
        return [e for e in out if e is not None]


def _pad_square(pixels: np.ndarray, size: int, cfg: PreprocessCfg) -> np.ndarray:
    h, w = pixels.shape[:2]
    if (h, w) == (size, size):
        return pixels
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = np.clip(np.round(cfg.mean), 0, 255).astype(np.uint8)
    canvas[:h, :w] = pixels
    return canvas


def _normalise(images: Sequence[np.ndarray], cfg: PreprocessCfg) -> torch.Tensor:
    """Same-shaped uint8 (H, W, 3) images -> one normalised NCHW float batch."""
    stacked = np.stack(images).astype(np.float32)
    stacked -= np.asarray(cfg.mean, dtype=np.float32)
    stacked *= 1.0 / np.asarray(cfg.std, dtype=np.float32)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def tokens_to_grid(tokens: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """(N, L, C) patch tokens in row-major order -> (N, C, height // patch, width // patch)."""
    gh, gw = height // patch, width // patch
    n, length, c = tokens.shape
    if length != gh * gw:
        raise ValueError(f"{length} tokens do not make a {gh}x{gw} grid")
    return tokens.reshape(n, gh, gw, c).permute(0, 3, 1, 2)

"""Preprocessing that travels with each model entry.

A model entry's :class:`PreprocessCfg` says how pixels must be prepared for
it (size, resize mode, normalisation, interpolation), so a model is never fed
wrongly prepared pixels. :func:`prepare_batch` turns photos into one batch
tensor plus a mask of the valid (non-padding) area of each image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np
import torch

ResizeMode = Literal["letterbox", "squash", "center_crop"]

_INTERPOLATION = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}


@dataclass(frozen=True)
class PreprocessCfg:
    """How to turn an RGB uint8 photo into a model input.

    ``mean`` and ``std`` are in 0..255 pixel units: input = (pixel - mean) / std.
    ``letterbox`` keeps the aspect ratio (longest side = ``input_size``) and
    pads to a multiple of ``stride``; ``squash`` resizes to a square;
    ``center_crop`` resizes the shortest side and crops the centre.
    """

    input_size: int = 224
    resize: ResizeMode = "letterbox"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: str = "bilinear"
    stride: int = 32

    def with_size(self, input_size: int) -> "PreprocessCfg":
        return PreprocessCfg(input_size, self.resize, self.mean, self.std, self.interpolation, self.stride)

    def with_resize(self, resize: ResizeMode) -> "PreprocessCfg":
        return PreprocessCfg(self.input_size, resize, self.mean, self.std, self.interpolation, self.stride)


def _interp(cfg: PreprocessCfg, shrinking: bool) -> int:
    # Area averaging is the right filter when shrinking a lot (no aliasing).
    if shrinking and cfg.interpolation in ("bilinear", "bicubic"):
        return cv2.INTER_AREA
    return _INTERPOLATION[cfg.interpolation]


def resize_photo(pixels: np.ndarray, cfg: PreprocessCfg) -> np.ndarray:
    """Resize (H, W, 3) uint8 pixels as ``cfg`` says; returns uint8 pixels."""
    h, w = pixels.shape[:2]
    s = cfg.input_size
    if cfg.resize == "squash":
        return cv2.resize(pixels, (s, s), interpolation=_interp(cfg, max(h, w) > s))
    if cfg.resize == "center_crop":
        scale = s / min(h, w)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        out = cv2.resize(pixels, (nw, nh), interpolation=_interp(cfg, scale < 1))
        y0, x0 = (nh - s) // 2, (nw - s) // 2
        return out[y0 : y0 + s, x0 : x0 + s]
    scale = s / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) == (w, h):
        return pixels
    return cv2.resize(pixels, (nw, nh), interpolation=_interp(cfg, scale < 1))


def prepare_batch(
    images: Sequence[np.ndarray], cfg: PreprocessCfg, *, square: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize, normalise and pad ``images`` into one NCHW float batch.

    Returns ``(batch, valid)``: ``valid`` is (N, 2) int64 with the height and
    width of each image inside the padded batch. Padding holds the value that
    normalises to zero. ``square`` pads every image to input_size x input_size
    (fixed shapes, e.g. for exported models); otherwise to the batch's largest
    height/width rounded up to ``stride``.
    """
    resized = [resize_photo(p, cfg) for p in images]
    return pack_resized(resized, cfg, square=square)


def pack_resized(
    resized: Sequence[np.ndarray], cfg: PreprocessCfg, *, square: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise and pad already resized uint8 images (see :func:`prepare_batch`)."""
    if not resized:
        raise ValueError("empty batch")
    st = cfg.stride
    if square:
        H = W = -(-cfg.input_size // st) * st
    else:
        H = -(-max(r.shape[0] for r in resized) // st) * st
        W = -(-max(r.shape[1] for r in resized) // st) * st
    mean = np.asarray(cfg.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(cfg.std, dtype=np.float32)
    batch = np.zeros((len(resized), H, W, 3), dtype=np.float32)
    valid = np.zeros((len(resized), 2), dtype=np.int64)
    for i, r in enumerate(resized):
        h, w = r.shape[:2]
        batch[i, :h, :w] = (r.astype(np.float32) - mean) * inv_std
        valid[i] = (h, w)
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2)
    return tensor.contiguous(memory_format=torch.channels_last), torch.from_numpy(valid)

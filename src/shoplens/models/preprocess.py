"""Preprocessing that travels with each model entry.

A model entry's :class:`PreprocessCfg` says how pixels must be prepared for
it (size, resize mode, normalisation, interpolation), so a model is never fed
wrongly prepared pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
    ``letterbox`` keeps the aspect ratio (longest side = ``input_size``, the
    other side on a ``stride`` grid, see :func:`target_shape`); ``squash``
    resizes to a square; ``center_crop`` resizes the shortest side and crops
    the centre.
    """

    input_size: int = 224
    resize: ResizeMode = "letterbox"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: str = "bilinear"
    stride: int = 32

    def with_size(self, input_size: int) -> PreprocessCfg:
        return PreprocessCfg(input_size, self.resize, self.mean, self.std, self.interpolation, self.stride)

    def with_resize(self, resize: ResizeMode) -> PreprocessCfg:
        return PreprocessCfg(self.input_size, resize, self.mean, self.std, self.interpolation, self.stride)


def _interp(cfg: PreprocessCfg, shrinking: bool) -> int:
    # Area averaging is the right filter when shrinking a lot (no aliasing).
    if shrinking and cfg.interpolation in ("bilinear", "bicubic"):
        return cv2.INTER_AREA
    return _INTERPOLATION[cfg.interpolation]


def target_shape(h: int, w: int, cfg: PreprocessCfg) -> tuple[int, int]:
    """Model-input (height, width) of an h x w photo.

    ``letterbox`` keeps the aspect ratio on a grid of ``stride`` pixels: the
    longest side becomes ``input_size`` and the other the nearest multiple of
    ``stride``. No padding is ever needed, so a photo's encoding does not
    depend on the other photos of its batch.
    """
    if cfg.resize != "letterbox":
        return cfg.input_size, cfg.input_size
    st = cfg.stride
    s = max(st, round(cfg.input_size / st) * st)
    scale = s / max(h, w)

    def snap(n: int) -> int:
        return int(min(s, max(st, round(n * scale / st) * st)))

    return snap(h), snap(w)


def source_size(width: int, height: int, cfg: PreprocessCfg) -> tuple[int, int]:
    """The smallest (width, height), same aspect ratio, a width x height photo can be given at for ``cfg``.

    Below it :func:`resize_photo` would enlarge the photo on some side;
    at or above it, it only shrinks it.
    """
    s = cfg.input_size
    if cfg.resize == "letterbox":
        nh, nw = target_shape(height, width, cfg)
        scale = max(nw / width, nh / height)
    elif cfg.resize == "center_crop":
        scale = s / min(width, height)
    else:  # squash: each side to input_size
        scale = max(s / width, s / height)
    return min(width, math.ceil(width * scale)), min(height, math.ceil(height * scale))


def resize_photo(pixels: np.ndarray, cfg: PreprocessCfg, size: tuple[int, int] | None = None) -> np.ndarray:
    """Resize (H, W, 3) uint8 pixels as ``cfg`` says; returns uint8 pixels.

    ``size``: (width, height) of the photo as given (``Photo.size``) when
    ``pixels`` were decoded smaller (JPEG draft mode): the model input then
    has the shape the photo as given would have, whatever the decoder's
    reduction rounded.
    """
    h, w = pixels.shape[:2]
    s = cfg.input_size
    if cfg.resize == "center_crop":
        scale = s / min(h, w)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        out = cv2.resize(pixels, (nw, nh), interpolation=_interp(cfg, scale < 1))
        y0, x0 = (nh - s) // 2, (nw - s) // 2
        return out[y0 : y0 + s, x0 : x0 + s]
    nh, nw = target_shape(h, w, cfg) if size is None else target_shape(size[1], size[0], cfg)
    if (nh, nw) == (h, w):
        return pixels
    return cv2.resize(pixels, (nw, nh), interpolation=_interp(cfg, nh * nw < h * w))


def to_tensor(resized: Sequence[np.ndarray], cfg: PreprocessCfg) -> torch.Tensor:
    """Normalise same-shaped uint8 images into one NCHW float batch (channels-last)."""
    if not resized:
        raise ValueError("empty batch")
    stacked = np.stack(resized).astype(np.float32)
    stacked -= np.asarray(cfg.mean, dtype=np.float32)
    stacked *= 1.0 / np.asarray(cfg.std, dtype=np.float32)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2)


def to_nchw(resized: Sequence[np.ndarray], cfg: PreprocessCfg) -> np.ndarray:
    """Like :func:`to_tensor`, as one contiguous NCHW float32 array (what ONNX Runtime reads)."""
    if not resized:
        raise ValueError("empty batch")
    out = np.ascontiguousarray(np.stack(resized).transpose(0, 3, 1, 2), dtype=np.float32)
    out -= np.asarray(cfg.mean, dtype=np.float32)[:, None, None]
    out *= (1.0 / np.asarray(cfg.std, dtype=np.float32))[:, None, None]
    return out


def prepare_batch(images: Sequence[np.ndarray], cfg: PreprocessCfg) -> torch.Tensor:
    """Resize and normalise images that resize to the same shape into one batch."""
    return to_tensor([resize_photo(p, cfg) for p in images], cfg)

"""Synthetic query photos made from a catalogue's own images (label-free rank calibration).

A shopper's photo of a product differs from the shop's picture of it: another
framing, a slant, blur, JPEG artefacts, other light, and other products
around it. :func:`shopper_view` makes such a view of one catalogue photo, on
a background of other catalogue photos, so that a store can measure how far
a photo of the *same* product lands from its catalogue image, and how close
*other* products come, without a single labelled photo
(:mod:`shoplens.pipeline.calibrate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Side of the square canvas a view is drawn on (the embedders read 224-320 px).
CANVAS = 320


def shopper_view(image: np.ndarray, backgrounds: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One synthetic shopper's photo (H, W, 3 uint8 RGB) of the product in ``image``.

    A random crop of the product, seen at a slant, pasted at 50-100 % of the
    canvas side onto a blurred 2 x 2 mosaic of ``backgrounds`` (other
    catalogue photos), then jittered in brightness, contrast and saturation,
    blurred and re-encoded as a JPEG of quality 40-90.
    """
    obj = _perspective(_crop(image, rng), rng)
    canvas = _mosaic(backgrounds, rng) if len(backgrounds) else np.full((CANVAS, CANVAS, 3), 200, np.uint8)
    h, w = obj.shape[:2]
    scale = rng.uniform(0.5, 1.0) * CANVAS / max(h, w)
    obj = cv2.resize(obj, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    h, w = obj.shape[:2]
    y, x = int(rng.integers(0, CANVAS - h + 1)), int(rng.integers(0, CANVAS - w + 1))
    canvas[y : y + h, x : x + w] = obj
    out = _tone(canvas, rng)
    sigma = rng.uniform(0.0, 1.5)
    if sigma > 0.2:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(40, 90))])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 RGB array
        return out
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:  # pragma: no cover - it decodes the JPEG it has just written
        return out
    return np.ascontiguousarray(decoded[..., ::-1])


def _crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """60-100 % of the area, aspect ratio within ±20 %."""
    h, w = image.shape[:2]
    area, aspect = rng.uniform(0.6, 1.0), float(np.exp(rng.uniform(-0.2, 0.2)))
    ch = min(h, max(1, round(h * np.sqrt(area / aspect))))
    cw = min(w, max(1, round(w * np.sqrt(area * aspect))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return image[y : y + ch, x : x + cw]


def _perspective(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each corner moved by up to 12 % of the side: the product seen at a slant."""
    h, w = image.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = src + rng.uniform(-0.12, 0.12, (4, 2)).astype(np.float32) * np.array([w, h], np.float32)
    dst -= dst.min(axis=0)
    size = (int(dst[:, 0].max()) + 1, int(dst[:, 1].max()) + 1)
    return cv2.warpPerspective(image, cv2.getPerspectiveTransform(src, dst), size, borderMode=cv2.BORDER_REPLICATE)


def _mosaic(backgrounds: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Four background photos in a blurred 2 x 2 grid: other products around the one photographed."""
    half = CANVAS // 2
    canvas = np.empty((CANVAS, CANVAS, 3), np.uint8)
    for cell in range(4):
        tile = backgrounds[int(rng.integers(len(backgrounds)))]
        y, x = divmod(cell, 2)
        canvas[y * half : (y + 1) * half, x * half : (x + 1) * half] = cv2.resize(tile, (half, half), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(canvas, (0, 0), 2.0)


def _tone(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness and contrast ±25 %, saturation ±30 %."""
    x = image.astype(np.float32)
    mean = float(x.mean())
    x = (x - mean) * rng.uniform(0.75, 1.25) + mean * rng.uniform(0.75, 1.25)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)
    return np.clip(x, 0, 255).astype(np.uint8)

"""A colour descriptor: what ImageNet features are built to ignore.

ImageNet-trained backbones learn to recognise a pepper whatever its colour,
but a shop sells orange and yellow peppers, Pink Lady and Royal Gala apples,
as different products. :func:`colour_histogram` is a joint hue × saturation
× value histogram of the whole photo (Hellinger-mapped, unit length) that an
:class:`~shoplens.embed.Embedder` can append, weighted, to its pooled
backbone descriptor. On the grocery val photos it raised R@1 after
``train-embedder`` by 0.03-0.05 (docs/benchmarks.md, section 4); it lowers
clothing category precision, so the apparel domain does not use it.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Hue × saturation × value bins (OpenCV hue runs 0-180).
BINS = (16, 4, 4)
#: Length of the histogram.
DIM = BINS[0] * BINS[1] * BINS[2]
#: Photos are resized to this square before counting (cheap, and every photo counts the same).
#: Bilinearly: 0.1 ms for a 348-px photo against 0.5 ms averaging areas, which was 5 % of
#: indexing's time; the histograms of the two have a cosine of 0.997 or more (1st percentile
#: over grocery photos), and a store indexed with the other searches as well (docs/decisions.md).
SIZE = 128


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """(DIM,) = (256,) float32 unit vector: the square root of the normalised HSV histogram of an RGB uint8 photo."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"colour_histogram needs (H, W, 3) uint8 RGB pixels, got {pixels.shape} {pixels.dtype}")
    small = cv2.resize(pixels, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(BINS), [0, 180, 0, 256, 0, 256]).ravel()
    root = np.sqrt(hist / max(float(hist.sum()), 1.0))
    return (root / max(float(np.linalg.norm(root)), 1e-12)).astype(np.float32)

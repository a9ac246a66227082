"""Local features: SIFT keypoints with RootSIFT descriptors, via OpenCV.

A photo is turned to grey, shrunk so that its longest side is at most
``max_side`` (never enlarged: SIFT already works on a doubled image
internally), and its ``max_keypoints`` strongest SIFT keypoints are kept.

Descriptors are kept as OpenCV's SIFT gives them (128 integers in 0 … 255,
stored as uint8: lossless, 128 bytes a keypoint) and turned into RootSIFT
(Arandjelović & Zisserman 2012: L1-normalise, square root) when used, which
makes Euclidean distance behave like the Hellinger kernel and helps both
matching and quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..imaging import Photo

#: Dimension of a SIFT descriptor.
DESCRIPTOR_DIM = 128


@dataclass(frozen=True)
class LocalFeatures:
    """The keypoints of one photo.

    ``xy`` are keypoint positions in pixels of the shrunk grey image (only
    their geometry relative to each other matters for verification);
    ``sift`` are raw SIFT descriptors, uint8.
    """

    xy: np.ndarray  # (n, 2) float32
    sift: np.ndarray  # (n, 128) uint8

    @classmethod
    def empty(cls) -> LocalFeatures:
        """No keypoints (a blank photo)."""
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_DIM), np.uint8))

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.xy.nbytes + self.sift.nbytes)

    def rootsift(self) -> np.ndarray:
        return rootsift(self.sift)


def rootsift(sift: np.ndarray) -> np.ndarray:
    """(n, 128) SIFT descriptors -> (n, 128) float32 RootSIFT, unit L2 norm."""
    d = np.asarray(sift, dtype=np.float32)
    d = d / np.maximum(d.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(d)


def _grey(photo: Photo, max_side: int) -> np.ndarray:
    pixels = photo.pixels
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    longest = max(h, w)
    if longest > max_side:
        f = max_side / longest
        grey = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return grey


class FeatureExtractor:
    """SIFT keypoints + descriptors of a photo, capped and size-normalised. Thread-safe."""

    def __init__(self, max_side: int = 512, max_keypoints: int = 1000, contrast_threshold: float = 0.02) -> None:
        if max_side < 32:
            raise ValueError(f"max_side must be at least 32, got {max_side}")
        if max_keypoints < 8:
            raise ValueError(f"max_keypoints must be at least 8, got {max_keypoints}")
        self.max_side = int(max_side)
        self.max_keypoints = int(max_keypoints)
        self.contrast_threshold = float(contrast_threshold)

    def extract(self, photo: Photo) -> LocalFeatures:
        grey = _grey(photo, self.max_side)
        # A SIFT object per call (microseconds to make): OpenCV's are not thread-safe.
        sift = cv2.SIFT_create(nfeatures=self.max_keypoints, contrastThreshold=self.contrast_threshold)  # type: ignore[attr-defined]
        keypoints, desc = sift.detectAndCompute(grey, None)
        if desc is None or not keypoints:
            return LocalFeatures.empty()
        # SIFT_create(nfeatures=n) may return a few more than n when responses tie.
        keep = min(len(keypoints), self.max_keypoints)
        if len(keypoints) > keep:
            order = np.argsort([-k.response for k in keypoints], kind="stable")[:keep]
        else:
            order = np.arange(keep)
        xy = np.array([keypoints[i].pt for i in order], dtype=np.float32).reshape(-1, 2)
        sift = np.clip(np.rint(desc[order]), 0, 255).astype(np.uint8)
        return LocalFeatures(xy, sift)

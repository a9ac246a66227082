"""Geometric verification: how many keypoint matches agree on one transform.

Two photos of the same printed label share many keypoints whose positions
are related by a homography (a flat label seen from another viewpoint) or,
approximately, by an affine map (a curved pot or a bottle seen from a
distance). Look-alike packages of another brand or flavour share colours and
layout but few such consistent matches. Matches are mutual nearest
neighbours in RootSIFT space that also pass Lowe's ratio test; the model is
fitted by RANSAC (OpenCV) and its inliers are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..threads import torch_threads

#: Models :func:`count_inliers` can fit.
MODELS = ("homography", "affine")
#: Robust estimators: OpenCV's USAC (with local optimisation; about 100 times faster than
#: classic RANSAC on these match sets, for the same inlier counts) or classic RANSAC.
ESTIMATORS = {"usac": cv2.USAC_DEFAULT, "usac_fast": cv2.USAC_FAST, "ransac": cv2.RANSAC}


@dataclass(frozen=True)
class VerifyParams:
    """Matching and RANSAC settings."""

    #: Lowe's ratio: nearest / second-nearest distance must be below this.
    ratio: float = 0.9
    #: Keep only matches that are each other's nearest neighbour.
    mutual: bool = True
    #: "homography" (flat labels, any viewpoint) or "affine" (6 degrees of freedom).
    model: str = "homography"
    #: Robust estimator, one of :data:`ESTIMATORS`.
    estimator: str = "usac"
    #: RANSAC reprojection threshold, pixels of the shrunk images.
    threshold: float = 5.0
    max_iters: int = 2000
    confidence: float = 0.995

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown verification model {self.model!r}; known: {', '.join(MODELS)}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; known: {', '.join(ESTIMATORS)}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")


def mutual_matches(a: np.ndarray, b: np.ndarray, ratio: float, mutual: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of matches between RootSIFT sets ``a`` (n, 128) and ``b`` (m, 128)."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Unit vectors: squared distance = 2 - 2·sim. The product runs in torch on one
    # thread: numpy's BLAS spreads it over all cores, tens of times slower on a busy CPU.
    with torch_threads(), torch.inference_mode():
        sim = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) @ torch.from_numpy(np.ascontiguousarray(b, np.float32)).T).numpy()
    rows = np.arange(len(a))
    back = np.argmax(sim, axis=0) if mutual else None
    best = np.argmax(sim, axis=1)
    s0 = sim[rows, best]
    sim[rows, best] = -2.0  # then the row maximum is the second best
    s1 = sim.max(axis=1)
    d_best = np.sqrt(np.maximum(2.0 - 2.0 * s0, 0.0))
    d_second = np.sqrt(np.maximum(2.0 - 2.0 * s1, 0.0))
    keep = d_best < ratio * d_second
    if back is not None:
        keep &= back[best] == rows
    ia = np.flatnonzero(keep)
    return ia, best[ia]


def count_inliers(src: np.ndarray, dst: np.ndarray, params: VerifyParams) -> int:
    """RANSAC inliers of the model mapping ``src`` (n, 2) onto ``dst`` (n, 2)."""
    need = 4 if params.model == "homography" else 3
    if len(src) < need:
        return 0
    src = np.ascontiguousarray(src, np.float32)
    dst = np.ascontiguousarray(dst, np.float32)
    method = ESTIMATORS[params.estimator]
    try:
        if params.model == "homography":
            _, mask = cv2.findHomography(src, dst, method, params.threshold,
                                         maxIters=params.max_iters, confidence=params.confidence)
        else:
            _, mask = cv2.estimateAffine2D(src, dst, method=method, ransacReprojThreshold=params.threshold,
                                           maxIters=params.max_iters, confidence=params.confidence)
    except cv2.error:  # degenerate point sets (all collinear, repeated points)
        return 0
    return 0 if mask is None else int(mask.sum())


def verify_pair(q_xy: np.ndarray, q_desc: np.ndarray, c_xy: np.ndarray, c_desc: np.ndarray,
                params: VerifyParams) -> int:
    """Inliers between a query and a candidate (positions and RootSIFT descriptors of each)."""
    # Catalogue images are usually clean shots with fewer keypoints than a store photo:
    # matching from the candidate into the query makes the ratio test meaningful.
    ic, iq = mutual_matches(c_desc, q_desc, params.ratio, params.mutual)
    return count_inliers(c_xy[ic], q_xy[iq], params)

"""Fusing the global embedding's candidates with the local index's, then
re-ranking the fused shortlist by geometric verification.

The two lists fail differently: the global embedding finds the right kind of
product but confuses look-alike packages; the local index finds the same
printed label but has nothing to say about a banana. Fusion keeps both in
one shortlist; verification (RANSAC inliers) then puts the candidates that
really share a label with the query first.
"""

from __future__ import annotations

import numpy as np

#: Fusion methods :func:`fuse` knows.
FUSION_METHODS = ("rrf", "score")


def fuse(
    global_ids: np.ndarray,
    global_distances: np.ndarray,
    local_ids: np.ndarray,
    local_scores: np.ndarray,
    *,
    length: int = 20,
    weight: float = 0.2,
    method: str = "score",
    rrf_k: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One shortlist of ``length`` image ids from both lists, best first: (ids int64, fused scores float32).

    ``global_distances`` are Euclidean distances between L2-normalised vectors
    (0 … 2, smaller is closer), ``local_scores`` the local index's scores
    (larger is closer), each list sorted best first. ``weight`` is the local
    list's share (0: global only, 1: local only).

    - ``"rrf"`` (reciprocal rank fusion): ``(1 - weight) / (rrf_k + rank_global)
      + weight / (rrf_k + rank_local)``, ranks from 1; an id missing from a
      list gets nothing from it. Needs no calibration of either score.
    - ``"score"``: each list's scores min-max normalised to 0 … 1 over the
      list (global as cosine similarity ``1 - d²/2``), missing ids get 0, then
      the weighted sum.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}; known: {', '.join(FUSION_METHODS)}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    gids = np.asarray(global_ids, np.int64).reshape(-1)
    lids = np.asarray(local_ids, np.int64).reshape(-1)
    if len(gids) != len(np.asarray(global_distances).reshape(-1)) or len(lids) != len(np.asarray(local_scores).reshape(-1)):
        raise ValueError("each id list needs one score per id")
    if method == "rrf":
        g = (1.0 - weight) / (rrf_k + 1.0 + np.arange(len(gids)))
        loc = weight / (rrf_k + 1.0 + np.arange(len(lids)))
    else:
        g = (1.0 - weight) * _minmax(1.0 - np.asarray(global_distances, np.float64) ** 2 / 2.0)
        loc = weight * _minmax(np.asarray(local_scores, np.float64))
    ids = np.concatenate([gids, lids])
    contrib = np.concatenate([g, loc])
    uniq, inverse = np.unique(ids, return_inverse=True)
    total = np.bincount(inverse, weights=contrib, minlength=len(uniq))
    # Ties (e.g. the same rank in both lists) go to the global list's order.
    first_seen = np.full(len(uniq), len(ids), np.int64)
    np.minimum.at(first_seen, inverse, np.arange(len(ids)))
    order = np.lexsort((first_seen, -total))[:length]
    return uniq[order], total[order].astype(np.float32)


def _minmax(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.ones_like(x)


def rerank_verified(
    ids: np.ndarray, scores: np.ndarray, inliers: np.ndarray, *, min_inliers: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified candidates (``inliers >= min_inliers``) first, by inlier count; then the rest in their order.

    Returns (ids, scores, inliers) in the new order; ``scores`` are the
    incoming (fused) scores, carried along.
    """
    ids = np.asarray(ids, np.int64)
    inliers = np.asarray(inliers, np.int64)
    if not (len(ids) == len(scores) == len(inliers)):
        raise ValueError("ids, scores and inliers must have the same length")
    verified = inliers >= min_inliers
    position = np.arange(len(ids))
    key = np.where(verified, -inliers, 0)
    order = np.lexsort((position, key, ~verified))
    return ids[order], np.asarray(scores)[order], inliers[order]

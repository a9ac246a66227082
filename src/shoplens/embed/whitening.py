"""Heads learned from the catalogue's raw descriptors alone (no labels).

:func:`fit_whitening` fits a PCA (optionally whitening) projection with
covariance shrinkage, so it stays well defined for a catalogue of a few dozen
images. :func:`default_head` is what a store uses before ``train-embedder``
has run.
"""

from __future__ import annotations

import logging

import numpy as np

from .heads import Head, IdentityHead, LinearHead, l2_normalize

logger = logging.getLogger(__name__)

#: Below this many catalogue images per output dimension, the default head is
#: the identity: a PCA fitted on a small catalogue throws away directions that
#: products added later need, and measured no better on the benchmarks.
MIN_IMAGES_PER_DIM = 4


def fit_whitening(
    raw: np.ndarray, dim: int, *, power: float = 0.5, shrinkage: float | None = None
) -> LinearHead:
    """PCA-whitening of L2-normalised ``raw`` descriptors to ``dim`` dimensions.

    Each principal direction is scaled by ``eigenvalue ** -power``: 0.5 is
    full whitening, 0 a plain PCA rotation, values between a partial
    whitening. The covariance is shrunk towards a multiple of the identity by
    ``shrinkage`` (default ``raw_dim / (n + raw_dim)``: strong for tiny
    catalogues, negligible for large ones), which bounds the gain given to
    directions the catalogue barely spans.
    """
    x = l2_normalize(np.asarray(raw, dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"fit_whitening needs at least 2 raw descriptors, got shape {x.shape}")
    n, d = x.shape
    if not 1 <= dim <= d:
        raise ValueError(f"whitening dimension {dim} must be between 1 and the raw dimension {d}")
    if shrinkage is None:
        shrinkage = d / (n + d)
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    mean = x.mean(0)
    xc = (x - mean).astype(np.float64)
    cov = xc.T @ xc / n
    scale = np.trace(cov) / d
    cov = (1.0 - shrinkage) * cov + shrinkage * scale * np.eye(d)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(-eigval)[:dim]
    gains = np.maximum(eigval[order], 1e-12) ** -power
    weight = (eigvec[:, order] * gains).T
    info = {"method": "pca-whitening", "images": n, "power": float(power), "shrinkage": float(shrinkage)}
    return LinearHead(mean, weight.astype(np.float32), info=info)


def default_head(raw: np.ndarray, *, dim: int = 256) -> Head:
    """The head of a store that has not been trained.

    A catalogue with at least ``MIN_IMAGES_PER_DIM * dim`` images gets a PCA
    with mild whitening (power 0.15) to ``dim`` dimensions, learned from its own
    raw descriptors; smaller catalogues keep the raw descriptor (identity),
    which is cheap at that size and does not depend on which products were
    indexed first.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] <= dim or len(raw) < MIN_IMAGES_PER_DIM * dim:
        return IdentityHead()
    logger.info("default head: PCA of %d catalogue descriptors to %d dimensions", len(raw), dim)
    return fit_whitening(raw, dim, power=0.15)

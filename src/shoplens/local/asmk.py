"""ASMK*: aggregated, binarised residuals per visual word.

Tolias, Avrithis & Jégou, "To aggregate or not to aggregate: selective match
kernels for image search" (ICCV 2013). All descriptors of an image that fall
on one word are summed as residuals to the word's centroid and the sum is
binarised (one bit per dimension, 16 bytes a word). Two images match on a
shared word with ``σ(u) = u**alpha`` if ``u > tau`` else 0, where ``u`` is the
normalised Hamming similarity of their two signatures (1 identical … −1
opposite). Aggregation keeps bursts (repeated patterns, a logo printed many
times) from dominating, and the selectivity ``σ`` keeps only close matches:
much more discriminative than counting shared words (tf-idf), at the cost of
16 bytes per stored word.
"""

from __future__ import annotations

import numpy as np

from .features import DESCRIPTOR_DIM

#: uint64 words per binary signature.
SIGNATURE_WORDS = DESCRIPTOR_DIM // 64


def aggregate(descriptors: np.ndarray, words: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate RootSIFT ``descriptors`` (n, 128) on their ``words`` (n, k).

    Returns the distinct words (m,) int64, sorted, and their binary
    signatures (m, 2) uint64. With ``k > 1`` (multiple assignment) a
    descriptor contributes to each of its ``k`` words.
    """
    n, k = words.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, SIGNATURE_WORDS), np.uint64)
    flat = words.reshape(-1)
    order = np.argsort(flat, kind="stable")
    flat = flat[order]
    residuals = np.asarray(descriptors, np.float32)[order // k] - centroids[flat]
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    sums = np.add.reduceat(residuals, starts, axis=0)
    return flat[starts].astype(np.int64), pack_signs(sums)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """(m, 128) float -> (m, 2) uint64: bit set where the component is positive."""
    bits = np.packbits(x > 0, axis=1)  # (m, 16) uint8
    return np.ascontiguousarray(bits).view(np.uint64).reshape(len(x), SIGNATURE_WORDS)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between signature rows of ``a`` and ``b`` (each (E, 2) uint64): (E,) uint8."""
    x = np.bitwise_xor(a, b)
    return (np.bitwise_count(x[:, 0]) + np.bitwise_count(x[:, 1])).astype(np.uint8)


def selectivity_table(alpha: float, tau: float) -> np.ndarray:
    """σ of the similarity ``u = 1 - 2·h/128`` for every Hamming distance ``h``: (129,) float32.

    ASMK's σ is ``u**alpha`` above ``tau`` and 0 below; a table lookup by
    Hamming distance is much cheaper than evaluating it per match.
    """
    u = 1.0 - np.arange(DESCRIPTOR_DIM + 1, dtype=np.float64) * (2.0 / DESCRIPTOR_DIM)
    return np.where(u > tau, np.power(np.maximum(u, 0.0), alpha), 0.0).astype(np.float32)

"""Global descriptors pooled from backbone feature maps.

A pooling turns one photo's (C, h, w) stride-32 map into its raw descriptor.
Poolings are registered by name; the name is part of an embedder's signature,
so a store knows its stored raw descriptors are stale when the pooling changes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from ..registry import Registry

#: A pooling maps one photo's float32 (C, h, w) map to its (C,) descriptor.
#: Poolings run in numpy: per photo, small torch ops cost far more than their
#: arithmetic on a busy CPU (intra-op thread hand-offs; docs/decisions.md).
Pooling = Callable[[np.ndarray], np.ndarray]

_POOLINGS: Registry[Pooling] = Registry("pooling")


def register_pooling(name: str, description: str = "") -> Callable[[Pooling], Pooling]:
    return _POOLINGS.register(name, description)


def list_poolings(pattern: str = "*") -> list[str]:
    return _POOLINGS.names(pattern)


def describe_poolings() -> dict[str, str]:
    """Every registered pooling name with its one-line description."""
    return _POOLINGS.describe()


def get_pooling(name: str) -> Pooling:
    """The pooling registered as ``name``; :class:`UnknownModelError` listing the known ones if none."""
    return _POOLINGS.get(name)


def gem(fmap: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling of a (C, h, w) map into a (C,) vector."""
    return fmap.clamp(min=eps).pow(p).mean((-2, -1)).pow(1.0 / p)


def gem_numpy(fmap: np.ndarray, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """:func:`gem` in numpy, for inference: (..., C, h, w) -> (..., C).

    Per photo it is many times faster than torch on a busy CPU (no intra-op
    thread hand-offs for a small map), with the same result to float rounding.
    """
    x = np.maximum(fmap, np.float32(eps))
    if p == 3.0:
        return np.cbrt(np.mean(x * x * x, axis=(-2, -1)))
    return np.power(np.mean(np.power(x, p), axis=(-2, -1)), 1.0 / p)


@lru_cache(maxsize=256)
def rmac_regions(h: int, w: int, levels: int = 3) -> tuple[tuple[int, int, int, int], ...]:
    """Square regions (y0, x0, y1, x1) of R-MAC (Tolias et al., 2016) on an h x w grid.

    The whole map, then at level l a grid of squares of side 2·min(h, w)/(l+1)
    overlapping by about 40 %, with one more square along the longer side
    where it fits better.
    """
    regions = [(0, 0, h, w)]
    short, long_ = min(h, w), max(h, w)
    extra = 0
    if long_ > short:
        # Number of extra squares along the long side that gives ~40 % overlap.
        best = min(range(1, 7), key=lambda n: abs((short**2 - short * (long_ - short) / n) / short**2 - 0.4))
        extra = best
    for level in range(1, levels + 1):
        side = int(2 * short // (level + 1))
        if side < 1:
            continue
        n_h = level + (extra if h > w else 0)
        n_w = level + (extra if w > h else 0)
        ys = _starts(h, side, n_h)
        xs = _starts(w, side, n_w)
        regions.extend((y, x, y + side, x + side) for y in ys for x in xs)
    return tuple(dict.fromkeys(regions))  # drop duplicates, keep order


def _starts(total: int, side: int, n: int) -> list[int]:
    if n <= 1 or total <= side:
        return [max(0, (total - side) // 2)]
    step = (total - side) / (n - 1)
    return sorted({round(i * step) for i in range(n)})


def rmac(fmap: np.ndarray, levels: int = 3) -> np.ndarray:
    """R-MAC: the sum of L2-normalised max-pooled regions, (C, h, w) -> (C,)."""
    c, h, w = fmap.shape
    out = np.zeros(c, dtype=np.float32)
    # Channels last: each region's max then reads whole rows of C values (10x faster than
    # a max over the last two axes of a (C, h, w) map, and the same numbers).
    hwc = np.ascontiguousarray(np.moveaxis(fmap, 0, -1))
    for y0, x0, y1, x1 in rmac_regions(h, w, levels):
        v = hwc[y0:y1, x0:x1].max(axis=(0, 1))
        out += v / max(float(np.linalg.norm(v)), 1e-12)
    return out


@register_pooling("gem3-s32", "GeM (p=3) of the stride-32 map")
def _gem3(fmap: np.ndarray) -> np.ndarray:
    return gem_numpy(fmap, 3.0)


@register_pooling("avg-s32", "average of the stride-32 map")
def _avg(fmap: np.ndarray) -> np.ndarray:
    return fmap.mean(axis=(-2, -1))


@register_pooling("rmac-s32", "R-MAC (3 levels) of the stride-32 map")
def _rmac(fmap: np.ndarray) -> np.ndarray:
    return rmac(fmap, 3)

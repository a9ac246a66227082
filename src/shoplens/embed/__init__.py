"""Step 2: the recognition models, one per domain.

An :class:`Embedder` pools a backbone's encodings into raw descriptors and
passes them through its domain's :class:`~shoplens.embed.heads.Head` into the
L2-normalised vectors the index holds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..models import Encoding
from .heads import Head, IdentityHead, l2_normalize, load_head, register_head
from .pooling import gem, gem_numpy


class Embedder:
    """A domain's recognition model: backbone + pooling + head."""

    #: Changes whenever :meth:`describe` would give different raw descriptors,
    #: so a store knows when its stored descriptors are stale.
    pooling = "gem3-s32"

    def __init__(self, domain: str, backbone: str, input_size: int | None, head: Head | None = None) -> None:
        self.domain = domain
        self.backbone = backbone
        self.input_size = input_size
        self.head: Head = head or IdentityHead()

    @property
    def signature(self) -> str:
        return f"{self.backbone}@{self.input_size}/{self.pooling}"

    def describe(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """(N, raw_dim) float32 raw descriptors."""
        if not encodings:
            return np.zeros((0, 0), dtype=np.float32)
        rows = []
        for e in encodings:
            if e.embedding is not None:
                rows.append(e.embedding.float().numpy())
            else:
                # Pooled in numpy, photo by photo: small torch ops cost far more
                # than their arithmetic on a busy CPU (thread hand-offs).
                rows.append(gem_numpy(e.features["s32"].float().numpy()))
        return np.stack(rows).astype(np.float32, copy=False)

    def project(self, raw: np.ndarray) -> np.ndarray:
        return self.head.apply(raw)


__all__ = ["Embedder", "Head", "IdentityHead", "gem", "gem_numpy", "l2_normalize", "load_head", "register_head"]

"""Global descriptors pooled from backbone feature maps."""

from __future__ import annotations

import torch


def gem(fmap: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling of a (C, h, w) map into a (C,) vector."""
    return fmap.clamp(min=eps).pow(p).mean((-2, -1)).pow(1.0 / p)

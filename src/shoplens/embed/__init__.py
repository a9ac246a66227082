"""Step 2: the recognition models, one per domain.

An :class:`Embedder` pools a backbone's encodings into raw descriptors and
passes them through its domain's :class:`~shoplens.embed.heads.Head` into the
L2-normalised vectors the index holds. Heads are cheap functions of the raw
descriptors: :func:`default_head` (untrained store), :func:`fit_whitening`,
:func:`train_projection` and :func:`train_embedder` (``train-embedder``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models import Encoding
from .calibration import Calibration, fit_calibration, returned_set_quality, similar_sets
from .colour import DIM as COLOUR_DIM
from .colour import colour_histogram
from .heads import (
    Head,
    IdentityHead,
    LinearHead,
    MLPHead,
    describe_heads,
    l2_normalize,
    list_heads,
    load_head,
    register_head,
)
from .pooling import describe_poolings, gem, gem_numpy, get_pooling, list_poolings, register_pooling, rmac
from .tail import Tail, TailCfg, tune_tail
from .training import EmbedderReport, ProjectionCfg, calibrate_head, train_embedder, train_projection
from .whitening import default_head, fit_whitening

#: Pooling of an :class:`Embedder` built without one; the configured
#: per-domain poolings and input sizes are in ``config.EmbedConfig``.
DEFAULT_POOLING = "rmac-s32"


class Embedder:
    """A domain's recognition model: backbone + pooling (at one or more input sizes) + head.

    The raw descriptor is the concatenation, over ``input_size`` and then each
    of ``extra_sizes``, of the L2-normalised pooled stride-32 map of the photo
    at that size (multi-scale), followed, when ``colour`` > 0, by the photo's
    :func:`~shoplens.embed.colour.colour_histogram` times ``colour``.
    :meth:`describe` takes the encodings of each size in that order.
    """

    def __init__(
        self,
        domain: str,
        backbone: str,
        input_size: int | None,
        head: Head | None = None,
        *,
        pooling: str = DEFAULT_POOLING,
        extra_sizes: Sequence[int] = (),
        colour: float = 0.0,
    ) -> None:
        self.domain = domain
        self.backbone = backbone
        self.input_size = input_size
        self.head: Head = head or IdentityHead()
        self._pool = get_pooling(pooling)
        self._pooling_name = pooling
        self.extra_sizes = tuple(int(s) for s in extra_sizes)
        if colour < 0:
            raise ValueError(f"colour weight must be >= 0, got {colour}")
        self.colour = float(colour)

    @property
    def input_sizes(self) -> tuple[int | None, ...]:
        """Every input size :meth:`describe` needs encodings at, in order."""
        return (self.input_size, *self.extra_sizes)

    @property
    def pooling(self) -> str:
        """Changes whenever :meth:`describe` would give different raw descriptors
        for the same encodings, so a store knows its stored descriptors are stale."""
        name = self._pooling_name
        if self.extra_sizes:
            name += f"+ms{'-'.join(str(s) for s in self.extra_sizes)}"
        if self.colour:
            name += f"+hsv{self.colour:g}"
        return name

    @property
    def signature(self) -> str:
        return f"{self.backbone}@{self.input_size}/{self.pooling}"

    def describe(self, encodings: Sequence[Encoding], *more: Sequence[Encoding]) -> np.ndarray:
        """(N, raw_dim) float32 raw descriptors.

        ``encodings`` are at ``input_size``; ``more`` holds one sequence of
        encodings of the same photos per entry of ``extra_sizes``.
        """
        if len(more) != len(self.extra_sizes):
            raise ValueError(f"{self.signature} needs encodings at {len(self.input_sizes)} input sizes, got {1 + len(more)}")
        per_size = [encodings, *more]
        if any(len(e) != len(encodings) for e in per_size):
            raise ValueError("encodings at each input size must cover the same photos")
        if not encodings:
            return np.zeros((0, 0), dtype=np.float32)
        parts = []
        for encs in per_size:
            rows = [
                e.embedding.float().numpy() if e.embedding is not None else self._pool(e.features["s32"].float().numpy())
                for e in encs
            ]
            parts.append(l2_normalize(np.stack(rows).astype(np.float32, copy=False)))
        if self.colour:
            parts.append(self.colour * np.stack([colour_histogram(e.photo.pixels) for e in encodings]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def project(self, raw: np.ndarray) -> np.ndarray:
        """The index vectors of raw descriptors.

        Untrained (identity head), the colour part is left out: raw distances
        are those of the backbone descriptor, which the default ``min_rank``
        was set for (with it, 63 % of untrained grocery searches returned
        nothing instead of 45 %, at the same R@1); a trained head weighs it.
        """
        if self.colour and isinstance(self.head, IdentityHead):
            raw = np.asarray(raw)[:, :-COLOUR_DIM]
        return self.head.apply(raw)


__all__ = [
    "DEFAULT_POOLING",
    "Calibration",
    "Embedder",
    "EmbedderReport",
    "Head",
    "IdentityHead",
    "LinearHead",
    "MLPHead",
    "ProjectionCfg",
    "Tail",
    "TailCfg",
    "calibrate_head",
    "colour_histogram",
    "default_head",
    "describe_heads",
    "describe_poolings",
    "fit_calibration",
    "fit_whitening",
    "gem",
    "gem_numpy",
    "get_pooling",
    "l2_normalize",
    "list_heads",
    "list_poolings",
    "load_head",
    "register_head",
    "register_pooling",
    "returned_set_quality",
    "rmac",
    "similar_sets",
    "train_embedder",
    "train_projection",
    "tune_tail",
]

"""Local-feature indexes of catalogue size without extracting every photo: copies of real photos' words."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shoplens.local.features import LocalFeatures
from shoplens.local.index import LocalIndex
from shoplens.local.segment import Segment


def attach_copies(index: LocalIndex, ids: np.ndarray, encoded: Sequence[tuple[np.ndarray, np.ndarray]],
                  features: Sequence[LocalFeatures] = ()) -> Segment:
    """Index ``ids`` as copies, in turn, of ``encoded`` (per real photo: its words and ASMK signatures).

    The first ``len(features)`` ids get those keypoints, the others none
    (verification reads a shortlist whatever the catalogue). Uses the index's
    internals, what :meth:`LocalIndex.add` does after encoding: re-encoding
    each copy from its keypoints would take hours and gigabytes for the same
    postings.
    """
    empty = LocalFeatures.empty()
    segment = Segment.build(np.asarray(ids, np.int64), [encoded[i % len(encoded)] for i in range(len(ids))],
                            [features[i] if i < len(features) else empty for i in range(len(ids))], index.vocabulary.size)
    index._attach(segment)
    return segment

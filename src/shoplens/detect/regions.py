"""Which detected garments a search embeds and searches: the regions of an apparel photo.

The detector's threshold (``detect.min_score``) is set for recall: on a photo
of one garment laid flat it also gives weak boxes of other labels over the same
garment, each searched into a near-identical list. A search reads fewer:

1. boxes under ``detect.search_min_score`` go (the best box stays when none passes);
2. boxes overlapping a better box of any label with IoU >= ``detect.region_iou`` go
   (the crop, and so the list, would be nearly the same);
3. when the best garment covers at least ``detect.whole_photo_area`` of the photo and
   every other region left lies mostly (half its area or more) inside it, the photo
   shows that one garment: the whole photo is the one region (labelled as that garment).

``shoplens detect`` reports the detector's boxes unchanged; the thresholds and
their figures are in docs/decisions.md ("Detection").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Garment
from .metrics import iou_matrix


def suppress_across_labels(garments: Sequence[Garment], iou: float) -> list[Garment]:
    """``garments`` best first, without any that overlaps a better one (any label) with IoU >= ``iou``."""
    kept: list[Garment] = []
    for g in sorted(garments, key=lambda g: -g.score):
        if not kept or iou_matrix(np.array([g.box]), np.array([k.box for k in kept])).max() < iou:
            kept.append(g)
    return kept


def search_regions(
    garments: Sequence[Garment], size: tuple[int, int], *, min_score: float, iou: float, whole_photo_area: float
) -> list[Garment]:
    """The garments an apparel search embeds, best first (see the module doc); ``size`` is the photo's (width, height)."""
    ranked = sorted(garments, key=lambda g: -g.score)
    if not ranked:
        return []
    kept = suppress_across_labels([g for g in ranked if g.score >= min_score] or ranked[:1], iou)
    best = kept[0]
    w, h = size
    x0, y0, x1, y1 = best.box
    if w > 0 and h > 0 and (x1 - x0) * (y1 - y0) >= whole_photo_area * w * h and all(_inside(g.box, best.box) >= 0.5 for g in kept[1:]):
        return [Garment((0.0, 0.0, float(w), float(h)), best.label, best.score)]
    return kept


def _inside(box: tuple[float, float, float, float], outer: tuple[float, float, float, float]) -> float:
    """The share of ``box``'s area inside ``outer``."""
    iw = max(0.0, min(box[2], outer[2]) - max(box[0], outer[0]))
    ih = max(0.0, min(box[3], outer[3]) - max(box[1], outer[1]))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return iw * ih / area if area > 0 else 1.0

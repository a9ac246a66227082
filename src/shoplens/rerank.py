"""Steps 3–6 of docs/method.md: similar set, rank filter, category entropy filter, ordering.

Pure functions over lists of :class:`Hit`, so every step can be tested on
hand-computed cases. :func:`postprocess` chains them as configured and
reports each step's counts before and after, and the products each step
removed.

Two guards keep steps 5 and 6 from dropping the right product where a
catalogue's categories are small (docs/decisions.md):

- the entropy filter weighs a category against what it *could* hold: a
  category of 3 products with all 3 in a set of 40 is not uncertain
  (``H_c = −log2(n_c / min(N, size_c))``, the plain formula when the category
  has at least N products), and when no category is certain it drops none;
- the ordering lets a category's score move a hit only past near-tied
  hits (``search.order_tolerance`` in rank), so a clearly better match is
  never pushed down by a large category.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .config import SearchConfig
from .embed.calibration import Calibration, background

#: The category that products without one are counted under.
NO_CATEGORY = ""


@dataclass
class Hit:
    """One catalogue image close to a query vector."""

    image_id: int
    product_id: str
    distance: float
    category: str | None = None
    #: Extra fields (title, metadata) carried to the result unchanged.
    payload: dict[str, Any] = field(default_factory=dict)
    #: The calibrated share of relevant hits at this hit's rank (None: no calibration curve).
    precision: float | None = None
    #: The distance before calibration (None: not calibrated); it orders hits whose calibrated ranks tie.
    raw_distance: float | None = None

    @property
    def rank(self) -> float:
        """Step 4: rank = 2 − distance (distance between L2-normalised vectors)."""
        return 2.0 - self.distance

    @property
    def category_key(self) -> str:
        return self.category if self.category else NO_CATEGORY

    def order_key(self) -> tuple[float, float, str]:
        """Best first: by rank, then (calibrated hits) by the distance before calibration, then by product id.

        A calibrated distance clamped to 0 ties an exact match with its look-alikes; the raw distance
        tells them apart.
        """
        return (-self.rank, 0.0 if self.raw_distance is None else self.raw_distance, self.product_id)


def similar_set(hits: Iterable[Hit], *, max_distance: float, k: int) -> list[Hit]:
    """Step 3: the closest image of each product, nearer than ``max_distance``, at most ``k``.

    Several photos of one product never make it appear twice.
    """
    best: dict[str, Hit] = {}
    for hit in hits:
        if hit.distance > max_distance:
            continue
        kept = best.get(hit.product_id)
        if kept is None or hit.distance < kept.distance:
            best[hit.product_id] = hit
    return sorted(best.values(), key=lambda h: (h.distance, h.product_id))[:k]


def calibrate(hits: list[Hit], calibration: Calibration) -> list[Hit]:
    """Step 4's distances calibrated (per category, against the similar set's background)."""
    level = background(sorted(h.distance for h in hits))
    out = []
    for h in hits:
        d = calibration.distance(h.category, h.distance, level)
        p = calibration.precision(d)
        out.append(replace(h, distance=d, precision=None if p is None else round(p, 4), raw_distance=h.distance))
    return out


def rank_filter(hits: list[Hit], *, min_rank: float) -> list[Hit]:
    """Step 4: drop hits whose rank is below ``min_rank``."""
    return [h for h in hits if h.rank >= min_rank]


def category_surprisal(hits: list[Hit], sizes: Mapping[str, int] | None = None) -> dict[str, float]:
    """H_c = −log2(n_c / N) in bits for every category in ``hits``.

    With ``sizes`` (products per category in the catalogue), N is capped at
    the category's size: a category cannot hold more of the set than it has
    products.
    """
    counts = Counter(h.category_key for h in hits)
    total = sum(counts.values())
    cap = sizes or {}
    return {c: -math.log2(n / max(n, min(total, cap.get(c, total)))) for c, n in counts.items()}


def entropy_filter(hits: list[Hit], *, max_bits: float, sizes: Mapping[str, int] | None = None) -> list[Hit]:
    """Step 5: drop categories whose surprisal exceeds ``max_bits``.

    With a single category nothing is uncertain and nothing is dropped; when
    every category exceeds ``max_bits`` there is no certain one to prefer,
    and nothing is dropped either. The best-ranked hit's category is always
    kept: a rare category is noise among the neighbours, not when it holds
    the closest match (a label verified by its printed text, among
    neighbours of other styles that only look alike).
    """
    bits = category_surprisal(hits, sizes)
    if len(bits) <= 1 or min(bits.values()) > max_bits:
        return list(hits)
    best = min(hits, key=Hit.order_key).category_key
    return [h for h in hits if bits[h.category_key] <= max_bits or h.category_key == best]


def category_scores(hits: list[Hit]) -> dict[str, float]:
    """S_c = Σ 1/X_i over each category's positions X_i in the rank order."""
    ordered = sorted(hits, key=Hit.order_key)
    scores: dict[str, float] = {}
    for position, hit in enumerate(ordered, start=1):
        scores[hit.category_key] = scores.get(hit.category_key, 0.0) + 1.0 / position
    return scores


def category_order(hits: list[Hit], *, tolerance: float | None = None) -> list[Hit]:
    """Step 6: categories by S_c (descending), images inside a category by rank.

    ``tolerance``: a hit goes before a better-ranked hit of another category
    only when its category scores higher and their ranks differ by less than
    this, so category evidence breaks near-ties in rank but never overrides
    a clear difference (0: by rank alone; 2 or ``None``: the plain
    ordering, every rank difference being under 2).
    """
    ordered = sorted(hits, key=Hit.order_key)
    scores = category_scores(ordered)
    if tolerance is not None and tolerance < 2.0:
        out: list[Hit] = []
        for hit in ordered:  # insertion: each hit moves up past near-tied hits of lower-scoring categories
            j = len(out)
            while j > 0 and scores[hit.category_key] > scores[out[j - 1].category_key] and out[j - 1].rank - hit.rank < tolerance:
                j -= 1
            out.insert(j, hit)
        return out
    # Ties keep the category that reached its first hit earlier first.
    first_seen = {c: i for i, c in reversed(list(enumerate(h.category_key for h in ordered)))}
    return sorted(ordered, key=lambda h: (-scores[h.category_key], first_seen[h.category_key], *h.order_key()))


def _removed(before: list[Hit], after: list[Hit]) -> list[str]:
    """The products of ``before`` that ``after`` lacks, best-ranked first."""
    kept = {h.product_id for h in after}
    return [h.product_id for h in sorted(before, key=lambda h: -h.rank) if h.product_id not in kept]


def postprocess(
    hits: Iterable[Hit],
    config: SearchConfig,
    *,
    top_k: int | None = None,
    calibration: Calibration | None = None,
    category_sizes: Mapping[str, int] | None = None,
) -> tuple[list[Hit], dict[str, Any]]:
    """Steps 3–6 as configured; returns the final list and a report per step.

    ``calibration`` rescales step 4's distances (:func:`calibrate`);
    ``category_sizes`` (products per category) guard step 5. Each filter's
    report lists the products it ``removed``.
    """
    raw = list(hits)
    steps: dict[str, Any] = {}
    current = similar_set(raw, max_distance=config.max_distance, k=config.similar_k)
    steps["similar_set"] = {"before": len(raw), "after": len(current), "max_distance": config.max_distance, "k": config.similar_k}
    if calibration is not None:
        current = calibrate(current, calibration)

    before = current
    if config.rank_filter:
        current = rank_filter(current, min_rank=config.min_rank)
    steps["rank_filter"] = {"enabled": config.rank_filter, "before": len(before), "after": len(current), "min_rank": config.min_rank,
                            "calibration": None if calibration is None else calibration.kind, "removed": _removed(before, current),
                            "best_rank": round(max(h.rank for h in before), 4) if before else None}

    before = current
    dropped: list[str] = []
    if config.entropy_filter:
        bits = category_surprisal(current, category_sizes)
        current = entropy_filter(current, max_bits=config.max_entropy_bits, sizes=category_sizes)
        kept = {h.category_key for h in current}
        dropped = sorted(c for c in bits if c not in kept)
    steps["entropy_filter"] = {
        "enabled": config.entropy_filter,
        "before": len(before),
        "after": len(current),
        "max_entropy_bits": config.max_entropy_bits,
        "dropped_categories": dropped,
        "removed": _removed(before, current),
    }

    cap = config.top_k if top_k is None else top_k
    if config.category_order:
        current = category_order(current, tolerance=config.order_tolerance)
    else:
        current = sorted(current, key=Hit.order_key)
    steps["category_order"] = {"enabled": config.category_order, "before": len(current), "after": min(cap, len(current))}
    return current[:cap], steps

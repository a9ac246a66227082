"""SPEC steps 3–6: similar set, rank filter, category entropy filter, ordering.

Pure functions over lists of :class:`Hit`, so every step can be tested on
hand-computed cases. :func:`postprocess` chains them as configured and
reports each step's counts before and after.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .config import SearchConfig

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

    @property
    def rank(self) -> float:
        """SPEC step 4: rank = 2 − distance (distance between L2-normalised vectors)."""
        return 2.0 - self.distance

    @property
    def category_key(self) -> str:
        return self.category if self.category else NO_CATEGORY


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


def rank_filter(hits: list[Hit], *, min_rank: float) -> list[Hit]:
    """Step 4: drop hits whose rank is below ``min_rank``."""
    return [h for h in hits if h.rank >= min_rank]


def category_surprisal(hits: list[Hit]) -> dict[str, float]:
    """H_c = −log2(n_c / N) in bits for every category in ``hits``."""
    counts = Counter(h.category_key for h in hits)
    total = sum(counts.values())
    return {c: -math.log2(n / total) for c, n in counts.items()}


def entropy_filter(hits: list[Hit], *, max_bits: float) -> list[Hit]:
    """Step 5: drop categories whose surprisal exceeds ``max_bits``.

    With a single category nothing is uncertain and nothing is dropped.
    """
    bits = category_surprisal(hits)
    if len(bits) <= 1:
        return list(hits)
    return [h for h in hits if bits[h.category_key] <= max_bits]


def category_scores(hits: list[Hit]) -> dict[str, float]:
    """S_c = Σ 1/X_i over each category's positions X_i in the rank order."""
    ordered = sorted(hits, key=lambda h: (-h.rank, h.product_id))
    scores: dict[str, float] = {}
    for position, hit in enumerate(ordered, start=1):
        scores[hit.category_key] = scores.get(hit.category_key, 0.0) + 1.0 / position
    return scores


def category_order(hits: list[Hit]) -> list[Hit]:
    """Step 6: categories by S_c (descending), images inside a category by rank."""
    ordered = sorted(hits, key=lambda h: (-h.rank, h.product_id))
    scores = category_scores(ordered)
    # Ties keep the category that reached its first hit earlier first.
    first_seen = {c: i for i, c in reversed(list(enumerate(h.category_key for h in ordered)))}
    return sorted(ordered, key=lambda h: (-scores[h.category_key], first_seen[h.category_key], -h.rank, h.product_id))


def postprocess(hits: Iterable[Hit], config: SearchConfig, *, top_k: int | None = None) -> tuple[list[Hit], dict[str, Any]]:
    """Steps 3–6 as configured; returns the final list and a report per step."""
    raw = list(hits)
    steps: dict[str, Any] = {}
    current = similar_set(raw, max_distance=config.max_distance, k=config.similar_k)
    steps["similar_set"] = {"before": len(raw), "after": len(current), "max_distance": config.max_distance, "k": config.similar_k}

    before = len(current)
    if config.rank_filter:
        current = rank_filter(current, min_rank=config.min_rank)
    steps["rank_filter"] = {"enabled": config.rank_filter, "before": before, "after": len(current), "min_rank": config.min_rank}

    before = len(current)
    dropped: list[str] = []
    if config.entropy_filter:
        bits = category_surprisal(current)
        current = entropy_filter(current, max_bits=config.max_entropy_bits)
        kept = {h.category_key for h in current}
        dropped = sorted(c for c in bits if c not in kept)
    steps["entropy_filter"] = {
        "enabled": config.entropy_filter,
        "before": before,
        "after": len(current),
        "max_entropy_bits": config.max_entropy_bits,
        "dropped_categories": dropped,
    }

    if config.category_order:
        current = category_order(current)
    else:
        current = sorted(current, key=lambda h: (-h.rank, h.product_id))
    cap = config.top_k if top_k is None else top_k
    steps["category_order"] = {"enabled": config.category_order, "before": len(current), "after": min(cap, len(current))}
    return current[:cap], steps

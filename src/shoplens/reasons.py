"""Why a search returned nothing, and what to change: read from the steps' own counts.

A list can be empty because the gate stopped the photo, because the index
partition has no product (or none that passes the filters), or because a
step removed every candidate. :func:`stopped` and :func:`empty_region` say
which, in a sentence built from the figures each step reports (``steps``),
with the option that would change it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import DOMAINS
from .results import Reason


def stopped(scores: Mapping[str, float], stop_score: float) -> Reason:
    """The gate stopped the photo as non_product: its score against ``intent.stop_score``."""
    return Reason(
        step="intent",
        message=f"stopped as non_product (score {scores['non_product']:.2f} ≥ stop_score {stop_score:g})",
        hint="search it anyway with domain=apparel or domain=other_product",
    )


def empty_region(steps: Mapping[str, Any], *, domain: str, indexed: int, filtered: bool, kept: int) -> Reason | None:
    """Why a region's list is empty (``None`` when it is not).

    ``steps``: the region's per-step report (:func:`shoplens.rerank.postprocess`);
    ``indexed``: the domain's vector count; ``filtered``: a metadata filter
    was given; ``kept``: the products the steps kept.
    """
    if kept:
        return Reason(step="store", message=f"the {kept} product(s) found were deleted while the search ran", hint="search again")
    similar = steps.get("similar_set", {})
    found = similar.get("before", 0)
    if not found:
        other = next(d for d in DOMAINS if d != domain)
        if not indexed:
            return Reason(step="store", message=f"the store has no {domain} products",
                          hint=f"index some (catalogue column domain={domain}), or search with domain={other}")
        if filtered:
            return Reason(step="filters", message=f"no {domain} product passes the filters", hint="loosen or drop the filters")
        return Reason(step="similar_set", message=f"the {domain} index returned no candidates", hint=None)
    if not similar.get("after", 0):
        return Reason(step="similar_set", message=f"{found} candidates, none within max_distance {similar.get('max_distance'):g}",
                      hint="raise search.max_distance (--max-distance)")
    rank = steps.get("rank_filter", {})
    if rank.get("enabled") and not rank.get("after", 0):
        notes = [] if rank.get("best_rank") is None else [f"best rank {rank['best_rank']:.2f}"]
        if rank.get("calibration"):
            notes.append(f"ranks calibrated: {rank['calibration']}")
        detail = f" ({'; '.join(notes)})" if notes else ""
        return Reason(step="rank_filter",
                      message=f"{rank['before']} candidates, 0 at or above min_rank {rank['min_rank']:g}{detail}",
                      hint="lower search.min_rank (--min-rank), or switch the rank filter off (--no-rank-filter)")
    entropy = steps.get("entropy_filter", {})
    if entropy.get("enabled") and not entropy.get("after", 0):
        return Reason(step="entropy_filter",
                      message=f"{entropy['before']} candidates, all in categories above max_entropy_bits {entropy['max_entropy_bits']:g}",
                      hint="raise search.max_entropy_bits (--max-entropy-bits), or switch the filter off (--no-entropy-filter)")
    return None

"""Rank thresholds that mean a stated precision (step 4 of docs/method.md, calibrated).

A single ``min_rank`` keeps hits nearer than ``2 − min_rank`` whatever their
category, yet the distance at which a neighbour stops being relevant differs
from category to category and from head to head. A :class:`Calibration`
learns, from labelled pairs of the catalogue itself (or of labelled store
photos against it), the distance ``t_c`` below which hits of category ``c``
are relevant with the target precision, and rescales each hit's distance by
``REFERENCE_DISTANCE / t_c``. After that, the default ``min_rank`` (1.08, a
distance of 0.92) keeps exactly the hits at the target precision in every
category; a higher ``min_rank`` is stricter, a lower one looser.

"Relevant" is ``relevance``: the same category (default; what a shopper
browsing similar products sees) or the same product.

Two kinds. ``distance`` compares a hit's distance itself (fitted by
``train-embedder`` on labelled photos). ``margin`` compares how much nearer
the hit is than the query's *background*, the median distance of its far
neighbours (:func:`background`): a shopper's photo lands farther from every
catalogue image than the catalogue's own photos do (other light, framing,
clutter), and the margin over the background carries over from synthetic
queries to real photos where the distance does not (docs/decisions.md). A
store fits it at index time from synthetic views of its own catalogue
photos (:mod:`shoplens.pipeline.calibrate`), without any label.

Both record a precision curve: the share of relevant hits at each
calibrated distance, which every result reports as its ``precision``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError

logger = logging.getLogger(__name__)

#: Labels, one per row: a sequence of strings or an array.
Labels = Sequence[str] | np.ndarray

#: The distance the default ``min_rank`` (1.08) stands for: ``2 − 1.08``.
REFERENCE_DISTANCE = 0.92
#: Pseudo-count pulling a category's threshold towards the domain's.
PRIOR_PAIRS = 20
#: The background of a similar set: the median distance of its products from this position on
#: (or from half-way, in a shorter set); the first few are where the query's own product may be.
BACKGROUND_START = 10
#: Knots of a precision curve (equal-count bins of the fitted hits).
CURVE_KNOTS = 24
KINDS = ("distance", "margin")


#: The margin a hit must have over its query's background before a store's first fit (``default_calibration``).
DEFAULT_MARGIN = 0.05


def default_calibration() -> Calibration:
    """What step 4 applies before a store has a calibration: hits at least ``DEFAULT_MARGIN`` nearer than the background."""
    return Calibration(0.0, "product", -DEFAULT_MARGIN, kind="margin", info={"source": "default"})


def background(distances: Sequence[float] | np.ndarray) -> float | None:
    """The background level of a similar set (its products' distances, nearest first); ``None`` under 2."""
    d = np.asarray(distances, np.float64)
    if len(d) < 2:
        return None
    return float(np.median(d[min(BACKGROUND_START, len(d) // 2) :]))


@dataclass
class Calibration:
    """Per-category distance thresholds at ``target_precision``."""

    target_precision: float
    relevance: str
    #: The domain-wide threshold (categories without their own use it).
    threshold: float
    thresholds: dict[str, float] = field(default_factory=dict)
    #: How it was made: queries, pairs, head, and precision/recall measured at the thresholds.
    info: dict[str, Any] = field(default_factory=dict)
    #: "distance" or "margin" (see the module docstring); thresholds are distances or distance − background.
    kind: str = "distance"
    #: (calibrated distance, share of relevant hits) knots, precision non-increasing; empty: unknown.
    curve: list[tuple[float, float]] = field(default_factory=list)

    def threshold_of(self, category: str | None) -> float:
        return self.thresholds.get(category or "", self.threshold)

    def distance(self, category: str | None, distance: float, background: float | None = None) -> float:
        """The calibrated distance of a hit (what ``rank = 2 − distance`` is computed from), in 0 … 2.

        ``background``: the query's (:func:`background`), for a ``margin``
        calibration; without one (a similar set of one product) the hit sits
        exactly at the default threshold.
        """
        if self.kind == "margin":
            if background is None:
                return REFERENCE_DISTANCE
            value = REFERENCE_DISTANCE + float(distance) - background - self.threshold_of(category)
        else:
            value = float(distance) * REFERENCE_DISTANCE / max(self.threshold_of(category), 1e-6)
        return min(max(value, 0.0), 2.0)

    def precision(self, calibrated_distance: float) -> float | None:
        """The share of relevant hits at ``calibrated_distance`` when fitted (``None``: no curve)."""
        if not self.curve:
            return None
        x, p = zip(*self.curve)
        return float(np.interp(calibrated_distance, x, p))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True), "utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            d = json.loads(path.read_text("utf-8"))
            cal = cls(float(d["target_precision"]), str(d["relevance"]), float(d["threshold"]),
                      {str(k): float(v) for k, v in d.get("thresholds", {}).items()}, dict(d.get("info", {})),
                      str(d.get("kind", "distance")), [(float(x), float(p)) for x, p in d.get("curve", [])])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"{path}: unreadable calibration: {err}") from None
        if cal.kind not in KINDS:
            raise StoreError(f"{path}: unknown calibration kind {cal.kind!r}")
        return cal


@dataclass
class Pairs:
    """Each query's similar set: the nearest image of each product, nearest first."""

    distance: np.ndarray  # (n_hits,)
    relevant: np.ndarray  # (n_hits,) bool
    category: np.ndarray  # (n_hits,) the hit's category
    query: np.ndarray  # (n_hits,) the query's row
    n_relevant_total: np.ndarray  # (n_queries,) relevant products in the whole catalogue
    background: np.ndarray | None = None  # (n_hits,) the hit's query's background (see background())

    def excess(self, kind: str) -> np.ndarray:
        """What a ``kind`` calibration thresholds: the distance, or the distance over the background."""
        if kind == "distance":
            return self.distance
        if self.background is None:
            raise ValueError("a margin calibration needs the queries' backgrounds")
        return self.distance - self.background


def similar_sets(
    queries: np.ndarray,
    q_products: Labels,
    q_categories: Labels,
    db: np.ndarray,
    db_products: Labels,
    db_categories: Labels,
    *,
    relevance: str = "category",
    k: int = 50,
    exclude_self: bool = False,
) -> Pairs:
    """The hits step 3 gives each query (L2-normalised vectors), labelled relevant or not.

    ``exclude_self``: the queries are the db rows themselves (leave-one-out),
    so a query never finds its own image.
    """
    if relevance not in ("category", "product"):
        raise ValueError(f"relevance must be 'category' or 'product', got {relevance!r}")
    qp, qc = np.asarray(q_products).astype(str), np.asarray(q_categories).astype(str)
    dp, dc = np.asarray(db_products).astype(str), np.asarray(db_categories).astype(str)
    sims = np.asarray(queries, np.float32) @ np.asarray(db, np.float32).T
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sims, 0.0))
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    products, p_index = np.unique(dp, return_inverse=True)
    p_cat = {p: c for p, c in zip(dp, dc)}
    prod_cats = np.array([p_cat[p] for p in products])
    out_d, out_r, out_c, out_q, out_b = [], [], [], [], []
    n_rel = np.zeros(len(qp), np.int64)
    for i in range(len(qp)):
        best = np.full(len(products), np.inf)
        np.minimum.at(best, p_index, dist[i])
        order = np.argsort(best, kind="stable")
        order = order[np.isfinite(best[order])][:k]
        cats = prod_cats[order]
        rel = (products[order] == qp[i]) if relevance == "product" else (cats == qc[i])
        finite = np.isfinite(best)
        if relevance == "product":
            n_rel[i] = int(np.any((products == qp[i]) & finite))
        else:
            n_rel[i] = int(np.sum((prod_cats == qc[i]) & finite))
        out_d.append(best[order])
        out_r.append(rel)
        out_c.append(cats)
        out_q.append(np.full(len(order), i))
        b = background(best[order])
        out_b.append(np.full(len(order), np.nan if b is None else b))
    return Pairs(np.concatenate(out_d), np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_q), n_rel,
                 np.concatenate(out_b))


def _threshold_at(distance: np.ndarray, relevant: np.ndarray, target: float) -> float | None:
    """The largest distance whose cumulative precision (hits nearer than it) is >= ``target``."""
    if not len(distance):
        return None
    order = np.argsort(distance, kind="stable")
    d, r = distance[order], relevant[order].astype(np.float64)
    precision = np.cumsum(r) / np.arange(1, len(r) + 1)
    ok = np.flatnonzero(precision >= target)
    if not len(ok):
        return None
    j = ok[-1]
    # Half-way to the next hit, so the cut does not sit on a sample.
    return float(d[j] if j + 1 == len(d) else (d[j] + d[j + 1]) / 2.0)


def fit_calibration(pairs: Pairs, *, target_precision: float = 0.9, relevance: str = "category",
                    prior: float = PRIOR_PAIRS, kind: str = "distance") -> Calibration:
    """Per-category thresholds at ``target_precision`` from labelled similar sets.

    A category's threshold is shrunk towards the domain-wide one by
    ``prior`` pseudo-hits, so a category with few labelled hits keeps the
    domain's threshold. ``kind``: see the module docstring.
    """
    if not 0.0 < target_precision < 1.0:
        raise ValueError(f"target precision must be in (0, 1), got {target_precision}")
    if kind not in KINDS:
        raise ValueError(f"calibration kind must be one of {KINDS}, got {kind!r}")
    if kind == "margin" and pairs.background is not None:
        keep = np.isfinite(pairs.background)  # similar sets of one product have no background
        pairs = Pairs(pairs.distance[keep], pairs.relevant[keep], pairs.category[keep], pairs.query[keep],
                      pairs.n_relevant_total, pairs.background[keep])
    x = pairs.excess(kind)
    base = _threshold_at(x, pairs.relevant, target_precision)
    if base is None:
        # Not even the nearest hits reach the target: keep only the very nearest.
        base = float(np.min(x)) if len(x) else (REFERENCE_DISTANCE if kind == "distance" else 0.0)
        logger.warning("calibration: no distance reaches precision %.2f; the threshold is the nearest hit", target_precision)
    per_cat: dict[str, float] = {}
    for cat in np.unique(pairs.category):
        m = pairs.category == cat
        t = _threshold_at(x[m], pairs.relevant[m], target_precision)
        n = float(np.sum(pairs.relevant[m]))
        own = base if t is None else t
        per_cat[str(cat)] = round((n * own + prior * base) / (n + prior), 5)
    cal = Calibration(target_precision, relevance, round(base, 5), per_cat, kind=kind)
    cal.curve = _precision_curve(_calibrated(pairs, cal), pairs.relevant)
    p, r = returned_set_quality(pairs, cal)
    cal.info.update(queries=len(pairs.n_relevant_total), hits=len(pairs.distance),
                    fitted_precision=round(p, 4), fitted_recall=round(r, 4))
    return cal


def _calibrated(pairs: Pairs, calibration: Calibration) -> np.ndarray:
    """Every hit's calibrated distance."""
    if calibration.kind == "margin":
        assert pairs.background is not None
        return np.array([calibration.distance(c, d, None if not np.isfinite(b) else float(b))
                         for c, d, b in zip(pairs.category, pairs.distance, pairs.background)])
    scale = np.array([REFERENCE_DISTANCE / max(calibration.threshold_of(c), 1e-6) for c in pairs.category])
    return pairs.distance * scale if len(pairs.distance) else pairs.distance


def _precision_curve(calibrated: np.ndarray, relevant: np.ndarray) -> list[tuple[float, float]]:
    """The share of relevant hits per equal-count bin of calibrated distance, made non-increasing."""
    if len(calibrated) < CURVE_KNOTS:
        return []
    order = np.argsort(calibrated, kind="stable")
    bins = np.array_split(order, CURVE_KNOTS)
    x = np.array([float(np.median(calibrated[b])) for b in bins])
    p = np.minimum.accumulate(np.array([float(relevant[b].mean()) for b in bins]))
    return [(round(float(a), 4), round(float(b), 4)) for a, b in zip(x, p)]


def returned_set_quality(pairs: Pairs, calibration: Calibration | None = None, *, min_rank: float = 2.0 - REFERENCE_DISTANCE) -> tuple[float, float]:
    """(precision, recall) of the returned sets after the rank filter at ``min_rank``.

    Precision: relevant hits among all hits kept, over every query (micro
    average); recall: relevant hits kept over the relevant products of the
    catalogue. Without ``calibration`` the raw distances are compared.
    """
    d = pairs.distance if calibration is None else _calibrated(pairs, calibration)
    kept = (2.0 - d) >= min_rank
    n_kept = int(kept.sum())
    precision = float(pairs.relevant[kept].sum() / n_kept) if n_kept else 1.0
    total = int(pairs.n_relevant_total.sum())
    recall = float(pairs.relevant[kept].sum() / total) if total else 0.0
    return precision, recall

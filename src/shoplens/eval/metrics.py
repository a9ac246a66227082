"""Metrics of ``shoplens eval``: retrieval, returned-set quality, intent, time.

A labelled query says which product it shows (``product_id``), and/or its
category and intent. Retrieval is product-level (lists never hold a product
twice); with one relevant product per query, average precision is 1/rank of
that product, so mAP equals the mean reciprocal rank.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import INTENTS
from ..errors import CatalogueError


@dataclass(frozen=True)
class LabelledQuery:
    image: str
    product_id: str | None = None
    category: str | None = None
    intent: str | None = None


def read_queries(path: str | Path, only: dict[str, str] | None = None) -> list[LabelledQuery]:
    """Queries CSV: ``image`` (relative to the CSV or absolute) and any of
    ``product_id``, ``category``, ``intent``. ``only``: keep the rows whose
    columns have these values (e.g. ``{"split": "val"}``)."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "image" not in columns:
                raise CatalogueError(f"{p}: a queries CSV needs an 'image' column; found {', '.join(columns) or 'none'}")
            if not {"product_id", "category", "intent"} & set(columns):
                raise CatalogueError(f"{p}: a queries CSV needs a label column: product_id, category or intent")
            missing = [c for c in (only or {}) if c not in columns]
            if missing:
                raise CatalogueError(f"{p}: no column {', '.join(missing)} to select rows by")
            out = []
            for line, rec in enumerate(reader, start=2):
                if any((rec.get(c) or "").strip() != v for c, v in (only or {}).items()):
                    continue
                image = (rec.get("image") or "").strip()
                if not image:
                    raise CatalogueError(f"{p}:{line}: empty image")
                intent = (rec.get("intent") or "").strip() or None
                if intent and intent not in INTENTS:
                    raise CatalogueError(f"{p}:{line}: intent {intent!r} is not one of {', '.join(INTENTS)}")
                img = Path(image)
                out.append(
                    LabelledQuery(
                        image=str(img if img.is_absolute() else p.parent / img),
                        product_id=(rec.get("product_id") or "").strip() or None,
                        category=(rec.get("category") or "").strip() or None,
                        intent=intent,
                    )
                )
    except OSError as err:
        raise CatalogueError(f"{p}: cannot read: {err.strerror or err}") from None
    if not out:
        raise CatalogueError(f"{p}: no queries")
    return out


@dataclass
class QueryOutcome:
    """What the pipeline returned for one labelled query."""

    query: LabelledQuery
    intent: str | None  # None: the image could not be read
    products: list[str]  # the best list's product ids, in order
    categories: list[str | None]
    timings_ms: dict[str, float]
    error: str | None = None
    #: The steps that cost this query its expected product (see :func:`lost_by`).
    lost: list[str] = field(default_factory=list)


#: The steps :func:`lost_by` can blame, in pipeline order.
LOSING_STEPS = ("intent", "rank_filter", "entropy_filter", "category_order", "category_order_top5")


def lost_by(intent: str | None, regions: Sequence[Any], product_id: str | None) -> list[str]:
    """The steps that removed the expected product, or (the ordering) moved it from first place.

    ``intent``: the query was stopped as non_product; a filter: it was in the
    ``removed`` list of that step and is returned by no region; the ordering:
    the best list ranks it first by rank but does not return it first
    (``category_order``), or among the first 5 by rank but returns it later
    (``category_order_top5``).
    """
    if product_id is None:
        return []
    if intent == "non_product":
        return ["intent"]
    returned = any(h.product_id == product_id for r in regions for h in r.results)
    lost = []
    for step in ("rank_filter", "entropy_filter"):
        if not returned and any(product_id in (r.steps.get(step) or {}).get("removed", []) for r in regions):
            lost.append(step)
    for name, k in (("category_order", 1), ("category_order_top5", 5)):
        for r in regions:
            by_rank = [h.product_id for h in sorted(r.results, key=lambda h: (-h.rank, h.product_id != product_id))]
            if product_id in by_rank[:k] and product_id not in [h.product_id for h in r.results[:k]]:
                lost.append(name)
                break
    return lost


def best_list(regions: Sequence[Any], product_id: str | None) -> tuple[list[str], list[str | None]]:
    """The region list that ranks the expected product highest (else the first)."""
    lists = [([h.product_id for h in r.results], [h.category for h in r.results]) for r in regions]
    if not lists:
        return [], []
    if product_id is not None:
        ranked = [(ids.index(product_id) if product_id in ids else len(ids) + 10**6, i) for i, (ids, _) in enumerate(lists)]
        return lists[min(ranked)[1]]
    return lists[0]


@dataclass
class EvalReport:
    queries: int = 0
    failed: int = 0
    recall_at: dict[int, float] = field(default_factory=dict)
    map: float | None = None
    returned: dict[str, float | None] = field(default_factory=dict)
    intent_confusion: list[list[int]] | None = None
    intent_accuracy: float | None = None
    per_category_recall1: dict[str, float] = field(default_factory=dict)
    #: Share of the product-labelled queries whose expected product each step removed (LOSING_STEPS).
    lost_by_step: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "failed": self.failed,
            "recall_at": {str(k): round(v, 4) for k, v in self.recall_at.items()},
            "map": None if self.map is None else round(self.map, 4),
            "returned": {k: (None if v is None else round(v, 4)) for k, v in self.returned.items()},
            "intent_confusion": self.intent_confusion,
            "intent_accuracy": None if self.intent_accuracy is None else round(self.intent_accuracy, 4),
            "per_category_recall1": {k: round(v, 4) for k, v in sorted(self.per_category_recall1.items())},
            "lost_by_step": {k: round(v, 4) for k, v in self.lost_by_step.items()},
            "timings_ms": self.timings_ms,
            "config": self.config,
        }


def summarise(outcomes: Sequence[QueryOutcome], ks: Sequence[int] = (1, 5, 10)) -> EvalReport:
    report = EvalReport(queries=len(outcomes), failed=sum(o.error is not None for o in outcomes))
    ok = [o for o in outcomes if o.error is None]

    labelled = [o for o in ok if o.query.product_id is not None]
    if labelled:
        ranks = [o.products.index(o.query.product_id) + 1 if o.query.product_id in o.products else None for o in labelled]
        for k in sorted(set(ks)):
            report.recall_at[k] = float(np.mean([r is not None and r <= k for r in ranks]))
        report.map = float(np.mean([1.0 / r if r else 0.0 for r in ranks]))
        by_cat: dict[str, list[bool]] = defaultdict(list)
        for o, r in zip(labelled, ranks):
            by_cat[o.query.category or "(none)"].append(r == 1)
        report.per_category_recall1 = {c: float(np.mean(v)) for c, v in by_cat.items()}
        report.lost_by_step = {step: float(np.mean([step in o.lost for o in labelled])) for step in LOSING_STEPS}

    # The returned set: what a user sees after every filter.
    sizes = [len(o.products) for o in ok if o.intent != "non_product"]
    prec_product = [sum(p == o.query.product_id for p in o.products) / len(o.products) for o in labelled if o.products]
    with_cat = [o for o in ok if o.query.category is not None and o.products]
    prec_category = [sum(c == o.query.category for c in o.categories) / len(o.categories) for o in with_cat]
    report.returned = {
        "mean_size": float(np.mean(sizes)) if sizes else None,
        "empty_fraction": float(np.mean([s == 0 for s in sizes])) if sizes else None,
        # Product-labelled queries that got no list at all: stopped by the gate or emptied by the filters.
        "empty_or_stopped": float(np.mean([not o.products for o in labelled])) if labelled else None,
        "recall": float(np.mean([o.query.product_id in o.products for o in labelled])) if labelled else None,
        "precision_product": float(np.mean(prec_product)) if prec_product else None,
        "precision_category": float(np.mean(prec_category)) if prec_category else None,
    }

    with_intent = [o for o in ok if o.query.intent is not None and o.intent is not None]
    if with_intent:
        matrix = np.zeros((3, 3), dtype=int)
        for o in with_intent:
            matrix[INTENTS.index(o.query.intent), INTENTS.index(o.intent)] += 1  # type: ignore[arg-type]
        report.intent_confusion = matrix.tolist()
        report.intent_accuracy = float(np.trace(matrix) / matrix.sum())

    keys = sorted({k for o in ok for k in o.timings_ms})
    for key in keys:
        values = np.array([o.timings_ms[key] for o in ok if key in o.timings_ms])
        report.timings_ms[key] = {
            "mean": round(float(values.mean()), 2),
            "p50": round(float(np.percentile(values, 50)), 2),
            "p95": round(float(np.percentile(values, 95)), 2),
            "n": len(values),
        }
    return report

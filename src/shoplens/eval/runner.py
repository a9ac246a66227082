"""Run labelled queries through a store's pipeline and summarise them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tqdm import tqdm

from ..api import Shoplens
from ..results import ErrorResult
from .metrics import EvalReport, LabelledQuery, QueryOutcome, best_list, lost_by, summarise


def run_eval(lens: Shoplens, queries: Sequence[LabelledQuery], *, ks: Sequence[int] = (1, 5, 10), progress: bool = False) -> tuple[EvalReport, list[QueryOutcome]]:
    """Search every query as configured and measure the lists it returns."""
    top = max(ks)
    outcomes: list[QueryOutcome] = []
    # A query labelled with a product but no category gets its product's category.
    expected = lens.store.get_products([q.product_id for q in queries if q.product_id and not q.category])
    queries = [
        replace(q, category=expected[q.product_id].category) if q.product_id in expected and not q.category else q
        for q in queries
    ]
    for q in tqdm(queries, desc="evaluating", unit="query", disable=not progress, leave=False):
        result = lens.search([q.image], top_k=top)[0]
        if isinstance(result, ErrorResult):
            outcomes.append(QueryOutcome(q, None, [], [], {}, error=result.error))
            continue
        products, categories = best_list(result.regions, q.product_id)
        outcomes.append(QueryOutcome(q, result.intent, products, categories, dict(result.timings_ms),
                                     lost=lost_by(result.intent, result.regions, q.product_id)))
    report = summarise(outcomes, ks)
    report.config = lens.config.to_dict()
    return report, outcomes

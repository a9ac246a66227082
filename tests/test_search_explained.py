"""A search says what it did: the predicted intent beside the domain searched, "search anyway",
and why a list is empty (from the steps' own counts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoplens import Shoplens, open_store
from shoplens.errors import ConfigError

from . import test_engine  # noqa: F401  (registers the test-* intent classifiers and detectors)

LOOSE = {"search.rank_filter": False, "search.entropy_filter": False}


@pytest.fixture
def store(tmp_path: Path, synthetic_catalogue: Path) -> Path:
    """The 6 other_product products of the synthetic catalogue, indexed."""
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        lens.index(synthetic_catalogue)
    return tmp_path / "store"


def test_a_stopped_photo_says_why_and_can_be_searched_anyway(store: Path, synthetic_catalogue: Path) -> None:
    photo = synthetic_catalogue.parent / "img" / "p3.png"
    with open_store(store, **{"intent.classifier": "test-non_product", "intent.stop_score": 0.8}, **LOOSE) as lens:
        stopped = lens.search_one(photo)
        anyway = lens.search_one(photo, domain="other_product")
        with pytest.raises(ConfigError, match="domain must be one of apparel, other_product"):
            lens.search([photo], domain="non_product")
    assert stopped.intent == "non_product" and stopped.regions == [] and stopped.domain is None
    assert stopped.predicted_intent == "non_product"
    assert stopped.reason is not None and stopped.reason.step == "intent"
    assert stopped.reason.message == "stopped as non_product (score 0.90 ≥ stop_score 0.8)"
    assert stopped.reason.hint is not None and "domain=other_product" in stopped.reason.hint

    # Searched as asked; what the classifier said stays next to it.
    assert anyway.intent == "other_product" and anyway.domain == "other_product" and anyway.predicted_intent == "non_product"
    assert anyway.intent_scores["non_product"] == pytest.approx(0.9) and anyway.reason is None
    assert anyway.steps["intent"]["override"] == "other_product"
    assert anyway.regions[0].results[0].product_id == "p3" and anyway.regions[0].reason is None


def test_a_domain_the_store_lacks_keeps_the_predicted_intent(store: Path, synthetic_catalogue: Path) -> None:
    """A grocery-only store: the outfit is searched as other_product, and the result says it looked like apparel."""
    with open_store(store, **{"intent.classifier": "test-apparel", "detect.enabled": False}, **LOOSE) as lens:
        result = lens.search_one(synthetic_catalogue.parent / "img" / "p3.png")
        forced = lens.search_one(synthetic_catalogue.parent / "img" / "p3.png", domain="apparel")
    assert (result.intent, result.domain, result.predicted_intent) == ("other_product", "other_product", "apparel")
    assert result.regions[0].results[0].product_id == "p3"
    # Asked for apparel, it searches apparel, which this store has none of: the empty list says so.
    assert (forced.intent, forced.domain, forced.predicted_intent) == ("apparel", "apparel", "apparel")
    region = forced.regions[0]
    assert region.results == [] and region.reason is not None
    assert (region.reason.step, region.reason.message) == ("store", "the store has no apparel products")
    assert region.reason.hint is not None and "domain=other_product" in region.reason.hint


def test_an_empty_list_says_which_step_emptied_it(store: Path, synthetic_catalogue: Path) -> None:
    photo = synthetic_catalogue.parent / "img" / "p3.png"
    flags = {"intent.classifier": "test-other_product", "search.calibration": "off", "search.entropy_filter": False}
    with open_store(store, **flags, **{"search.rank_filter": True, "search.min_rank": 2.5}) as lens:  # rank = 2 - distance: never above 2
        ranked = lens.search_one(photo)
        filtered = lens.search_one(photo, filters=["category=green"])
    with open_store(store, **flags, **{"search.rank_filter": False, "search.max_distance": 0.0}) as lens:
        far = lens.search_one(photo.parent / "p0b.png")
    region = ranked.regions[0]
    assert region.results == [] and region.steps["rank_filter"]["before"] == 6
    assert region.reason is not None and region.reason.step == "rank_filter"
    assert region.reason.message == "6 candidates, 0 at or above min_rank 2.5 (best rank 2.00)"
    assert region.reason.hint is not None and "--min-rank" in region.reason.hint

    assert filtered.regions[0].reason is not None
    assert (filtered.regions[0].reason.step, filtered.regions[0].reason.message) == ("filters", "no other_product product passes the filters")

    reason = far.regions[0].reason
    assert reason is not None and reason.step == "similar_set"
    assert reason.message.endswith("candidates, none within max_distance 0") and "--max-distance" in (reason.hint or "")


def test_a_list_with_results_has_no_reason(store: Path, synthetic_catalogue: Path) -> None:
    with open_store(store, **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        result = lens.search_one(synthetic_catalogue.parent / "img" / "p3.png")
    assert result.regions[0].results and result.regions[0].reason is None and result.reason is None
    assert (result.intent, result.domain, result.predicted_intent) == ("other_product", "other_product", "other_product")

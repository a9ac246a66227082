"""Search with words: a text's embedding against the photo index of a CLIP or SigLIP backbone.

Such a backbone embeds a caption and a photo of the same thing close to each
other, so the text tower's embedding of "red rain jacket" queries the index
the photos were stored in, without a second index. The text embedding takes
the place of the image embedding at every input size of the domain's
descriptor (the colour histogram part, which words do not have, is zero) and
goes through the domain's head like a photo's descriptor. Under the identity
head (a catalogue too small for the default PCA, and no ``train-embedder``)
the distances are those of the model itself; under a fitted head they are
the head's, which was fitted on photos only.

Steps 4–6 do not apply: their thresholds are calibrated on photo-to-photo
distances, and a text lies farther from every photo than a photo of the
product does. A text search returns the ``top_k`` nearest products of each
domain, nearest first, with the same metadata filters as a photo search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from ..config import DOMAINS
from ..embed import l2_normalize
from ..embed.colour import DIM as COLOUR_DIM
from ..errors import NoTextModelError
from ..models.text import check_text
from ..reasons import empty_region
from ..rerank import Hit
from ..results import RegionResult, TextSearchResult
from ..store.base import CatalogueStore
from ..threads import blas_threads, small_op_threads
from .search import Pipeline, Timer, product_hit

#: Candidate images fetched per wanted product (a product's several photos share the list).
FETCH_PER_PRODUCT = 4


def text_domains(pipeline: Pipeline, store: CatalogueStore, domain: str | None) -> list[str]:
    """The domains a text search reads: ``domain``, else every domain holding vectors whose backbone has a text tower.

    :class:`NoTextModelError` when none can be searched with words.
    """
    wanted = [domain] if domain is not None else [d for d in DOMAINS if store.count_vectors(d) > 0]
    usable, refused = [], []
    for d in wanted:
        try:
            pipeline.text_model(d)
        except NoTextModelError as err:
            refused.append(f"{d}: {err}")
        else:
            usable.append(d)
    if not usable:
        if not wanted:
            raise NoTextModelError("the store holds no products to search")
        raise NoTextModelError("text search needs a domain indexed with a CLIP or SigLIP backbone (embed.DOMAIN.backbone); "
                               + "; ".join(refused))
    return usable


def text_query(pipeline: Pipeline, domain: str, embedding: np.ndarray) -> np.ndarray:
    """The index vector of a text: its unit embedding at every input size of the domain's descriptor, through the head."""
    embedder = pipeline.embedders[domain]
    unit = l2_normalize(np.asarray(embedding, np.float32)[None, :])
    parts = [unit] * len(embedder.input_sizes)
    if embedder.colour:
        parts.append(np.zeros((1, COLOUR_DIM), np.float32))
    return pipeline.project(domain, np.concatenate(parts, axis=1))


def search_text(
    pipeline: Pipeline,
    store: CatalogueStore,
    text: str,
    *,
    top_k: int | None = None,
    allowed: Callable[[str], np.ndarray | None] | None = None,
    domain: str | None = None,
) -> TextSearchResult:
    """The products nearest to ``text`` in each domain :func:`text_domains` allows, one list per domain."""
    text = check_text(text)
    start = time.perf_counter()
    timer = Timer()
    domains = text_domains(pipeline, store, domain)
    k = top_k or pipeline.config.search.top_k
    regions: list[RegionResult] = []
    with blas_threads(), small_op_threads():
        for d in domains:
            with timer.step("embed_text"):
                vector = text_query(pipeline, d, pipeline.text_model(d).encode_text([text])[0])
            with timer.step("search"):
                ids_allowed = allowed(d) if allowed is not None else None
                dists, ids = store.search(d, vector, k * FETCH_PER_PRODUCT, ids_allowed)
            regions.append(_region(store, d, dists[0], ids[0], k, filtered=ids_allowed is not None,
                                   backbone=pipeline.text_model(d).name))
    regions.sort(key=lambda r: -r.results[0].rank if r.results else 0.0)
    timer.ms["total"] = (time.perf_counter() - start) * 1000.0
    return TextSearchResult(text=text, domains=domains, regions=regions, timings_ms=timer.rounded(),
                            steps={"text": {d: pipeline.text_model(d).name for d in domains}})


def _region(store: CatalogueStore, domain: str, dists: Sequence[float], ids: Sequence[int], k: int, *, filtered: bool,
            backbone: str) -> RegionResult:
    """One domain's list: each product once, at its nearest photo, nearest first."""
    owners = store.image_categories([int(i) for i in ids if i >= 0])
    best: dict[str, Hit] = {}
    for d, i in zip(np.asarray(dists).tolist(), np.asarray(ids).tolist()):
        owner = owners.get(i) if i >= 0 else None
        if owner is not None and owner.product_id not in best:
            best[owner.product_id] = Hit(i, owner.product_id, d, owner.category)
    hits = list(best.values())[:k]
    records = store.get_products([h.product_id for h in hits])
    results = [product_hit(h, records[h.product_id]) for h in hits if h.product_id in records]
    steps = {"similar_set": {"before": int(np.sum(np.asarray(ids) >= 0)), "after": len(results)}, "backbone": backbone}
    reason = None if results else empty_region(steps, domain=domain, indexed=store.count_vectors(domain), filtered=filtered,
                                               kept=len(hits))
    return RegionResult(box=None, label=None, score=None, results=results, steps=steps, reason=reason, domain=domain)

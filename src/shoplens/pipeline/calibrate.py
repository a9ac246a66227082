"""The rank filter calibrated per store at index time, without labels.

Each product domain's catalogue photos become synthetic shopper's photos
(:func:`shoplens.embed.synthetic.shopper_view`: a crop at a slant on other
products, other light, blur, JPEG), searched in the store like real queries.
Their own product (its *other* photos where it has several) gives the
same-product hits, every other product the different-product ones; a
``margin`` :class:`~shoplens.embed.Calibration` is fitted on them per
category (falling back to the domain) so that the default ``min_rank`` keeps
hits at ``search.target_precision`` of the returned set, and each hit reports
its ``precision``. A calibration ``train-embedder`` fitted on labelled photos
is never replaced; a synthetic one is fitted again when its domain has grown
or shrunk by a tenth since. The fit only reads the store, so it may run beside
searches and writes (``shoplens serve`` runs it in the background); its
result is applied under the caller's write lock, and dropped if the domain's
calibration changed meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import cv2
import numpy as np

from ..config import DOMAINS
from ..embed.calibration import Calibration, Pairs, background, fit_calibration
from ..embed.synthetic import shopper_view
from ..errors import BadImageError
from ..imaging import Photo, decode_many
from ..store.base import CatalogueStore
from .search import EncodingCache, Pipeline

log = logging.getLogger(__name__)

#: Catalogue photos made into synthetic queries per domain (the cost does not grow with the catalogue).
SAMPLE_IMAGES = 160
#: Synthetic views of each sampled photo.
VIEWS = 2
#: Refit when the domain's image count has changed by this share since the fit (and by REFIT_MIN images).
REFIT_CHANGE = 0.1
REFIT_MIN = 8
#: Where a calibration fitted here says it came from (``info["source"]``).
SOURCE = "synthetic"
BATCH = 32


def needs_fit(calibration: Calibration | None, n_images: int) -> bool:
    """Whether a domain of ``n_images`` images should get a (new) synthetic calibration."""
    if n_images < 2:
        return False
    if calibration is None:
        return True
    if calibration.info.get("source") != SOURCE:
        return False  # fitted on labelled photos by train-embedder: better than anything synthetic
    fitted = int(calibration.info.get("images", 0))
    return abs(n_images - fitted) >= max(REFIT_MIN, REFIT_CHANGE * fitted)


def due(pipeline: Pipeline, store: CatalogueStore) -> dict[str, int]:
    """The domains that should get a (new) synthetic calibration (:func:`needs_fit`), with their image counts."""
    if not pipeline.config.search.rank_filter or pipeline.config.search.calibration == "off":
        return {}
    counts = {domain: store.count_images(domain) for domain in DOMAINS}
    return {domain: n for domain, n in counts.items() if needs_fit(pipeline.calibrations.get(domain), n)}


def refresh_calibrations(
    pipeline: Pipeline, store: CatalogueStore, *, seed: int = 0, lock: AbstractContextManager[Any] | None = None
) -> dict[str, Calibration]:
    """Fit a synthetic calibration for every domain that needs one (:func:`due`); returns those fitted.

    ``lock`` (the caller's write lock) is held only to apply a fit: one whose
    domain got another calibration while it ran (``train-embedder``'s, or
    none since a new head) is dropped.
    """
    fitted: dict[str, Calibration] = {}
    for domain, n in due(pipeline, store).items():
        before = pipeline.calibrations.get(domain)
        start = time.perf_counter()
        cal = synthetic_calibration(pipeline, store, domain, seed=seed)
        if cal is None:
            continue
        cal.info.update(images=n, seconds=round(time.perf_counter() - start, 2))
        with lock if lock is not None else nullcontext():
            if pipeline.calibrations.get(domain) is not before:
                log.info("%s: the calibration changed while a refit ran: the refit is dropped", domain)
                continue
            pipeline.set_calibration(domain, cal)
        fitted[domain] = cal
        log.info("%s: rank filter calibrated on %d synthetic queries (%.1f s): threshold %.3f, fitted precision %.3f",
                 domain, cal.info["queries"], cal.info["seconds"], cal.threshold, cal.info["fitted_precision"])
    return fitted


def synthetic_calibration(pipeline: Pipeline, store: CatalogueStore, domain: str, *, seed: int = 0) -> Calibration | None:
    """A ``margin`` calibration of ``domain`` from synthetic views of its catalogue photos (``None``: too few)."""
    rng = np.random.default_rng(seed)
    ids = store.image_ids(domain)
    if len(ids) > SAMPLE_IMAGES:
        ids = np.sort(rng.choice(ids, SAMPLE_IMAGES, replace=False))
    owners = store.image_categories(ids.tolist())
    listed = [(image_id, source) for image_id in ids.tolist()
              if image_id in owners and (source := store.image_source(image_id)) is not None]
    decoded = decode_many([source for _, source in listed], names=[source for _, source in listed], target_size=pipeline.decode_size)
    photos: list[tuple[int, Photo]] = []
    for (image_id, _), result in zip(listed, decoded):
        if isinstance(result, BadImageError):  # a catalogue photo moved or removed since it was indexed
            log.debug("calibration skips image %d: %s", image_id, result)
        else:
            photos.append((image_id, result))
    if len(photos) < 2:
        return None
    small = [cv2.resize(p.pixels, (160, 160), interpolation=cv2.INTER_AREA) for _, p in photos]
    queries: list[tuple[int, Photo]] = []
    for n, (image_id, photo) in enumerate(photos):
        others = small[:n] + small[n + 1 :]
        for v in range(VIEWS):
            view = shopper_view(photo.pixels, others, rng)
            queries.append((image_id, Photo(view, (view.shape[1], view.shape[0]), f"synthetic:{image_id}:{v}")))
    pairs = _pairs(pipeline, store, domain, queries, owners)
    if len(pairs.distance) < 20 or not pairs.relevant.any():
        return None
    cfg = pipeline.config.search
    cal = fit_calibration(pairs, target_precision=cfg.target_precision, relevance="product", kind="margin")
    cal.info.update(source=SOURCE, sampled_images=len(photos), views=VIEWS, seed=seed)
    return cal


def _pairs(pipeline: Pipeline, store: CatalogueStore, domain: str, queries: list[tuple[int, Photo]],
           owners: Mapping[int, tuple[str, str | None]]) -> Pairs:
    """Each synthetic query's similar set (step 3, as a search makes it), labelled by product."""
    cfg = pipeline.config.search
    fetch = max(cfg.similar_k * 4, cfg.similar_k + 16)
    several = {pid for pid, _ in owners.values() if len(store.product_images(pid)) > 1}
    cols: dict[str, list[Any]] = {"d": [], "r": [], "c": [], "q": [], "b": []}
    n_queries = 0
    for start in range(0, len(queries), BATCH):
        chunk = queries[start : start + BATCH]
        raw = pipeline.describe(domain, EncodingCache(pipeline, [p for _, p in chunk]))
        dists, ids = store.search(domain, pipeline.project(domain, raw), fetch)
        found = store.image_categories(ids[ids >= 0].tolist())
        for (source_id, _), drow, irow in zip(chunk, dists, ids):
            own = owners[source_id][0]
            best: dict[str, tuple[float, str | None]] = {}
            for d, i in zip(drow.tolist(), irow.tolist()):
                # The view's own photo is left out where its product has others: those are the real variation.
                if i < 0 or i not in found or (i == source_id and own in several) or d > cfg.max_distance:
                    continue
                pid, category = found[i]
                if pid not in best or d < best[pid][0]:
                    best[pid] = (d, category)
            hits = sorted(best.items(), key=lambda kv: kv[1][0])[: cfg.similar_k]
            level = background([d for _, (d, _) in hits])
            for pid, (d, category) in hits:
                cols["d"].append(d)
                cols["r"].append(pid == own)
                cols["c"].append(category or "")
                cols["q"].append(n_queries)
                cols["b"].append(np.nan if level is None else level)
            n_queries += 1
    return Pairs(np.array(cols["d"], np.float64), np.array(cols["r"], bool), np.array(cols["c"], dtype=object).astype(str),
                 np.array(cols["q"], np.int64), np.ones(n_queries, np.int64), np.array(cols["b"], np.float64))

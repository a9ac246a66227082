"""The search pipeline: intent → detect → embed → index search → rerank.

:class:`Pipeline` holds the models (backbones, intent classifier, detector,
one embedder per domain) and runs each backbone once per photo and input
size, whichever stages read it. :meth:`Pipeline.search` runs the steps of docs/method.md
on one photo against a store and reports counts and time for each step.
The pipeline knows no CLI and no HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..allocator import keep_freed_memory
from ..config import DOMAINS, INTENTS, Config
from ..detect import Detector, Garment, create_detector
from ..detect.regions import search_regions
from ..embed import Calibration, Embedder, Head, IdentityHead, Tail, load_head
from ..embed.calibration import default_calibration
from ..errors import ConfigError, StoreError
from ..imaging import Photo, crop
from ..intent import IntentClassifier, create_intent_classifier, list_intent_classifiers, produce_share
from ..local.stage import LocalStage
from ..models import Backbone, Encoding, create_model, create_tuned_model, runtime_streams
from ..models.preprocess import source_size
from ..models.text import TextModel, create_text_model
from ..reasons import empty_region, stopped
from ..rerank import Hit, postprocess
from ..results import ProductHit, RegionResult, SearchResult
from ..store.artifacts import StoreArtifacts
from ..store.base import CatalogueStore
from ..store.metadata import ProductRecord
from ..threads import blas_threads, index_search_threads, small_op_threads, torch_threads

log = logging.getLogger(__name__)

class Timer:
    """Accumulates milliseconds per named step."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.ms.items()}


class EncodingCache:
    """Encodings of a set of photos, computed once per (backbone, input size).

    ``subset(indices)`` views some of the photos: it reuses encodings the
    parent already computed and computes only what is missing, for the subset.
    A backbone that shares another's trunk (a stage tuned by ``train-embedder``)
    is computed from that one's encodings when they are cached: only its stage runs.
    """

    def __init__(self, pipeline: Pipeline, photos: Sequence[Photo], parent: EncodingCache | None = None, indices: Sequence[int] = ()) -> None:
        self.pipeline = pipeline
        self.photos = list(photos)
        self._cache: dict[tuple[str, int], list[Encoding]] = {}
        self._parent = parent
        self._indices = list(indices)

    def get(self, backbone: str, input_size: int | None) -> list[Encoding]:
        size = input_size or self.pipeline.backbone(backbone).preprocess.input_size
        key = (backbone, size)
        if key not in self._cache:
            if self._parent is not None and key in self._parent._cache:
                whole = self._parent._cache[key]
                self._cache[key] = [whole[i] for i in self._indices]
            elif self.photos:
                model = self.pipeline.backbone(backbone)
                if model.trunk is not None and (model.trunk, size) in self._cache:
                    self._cache[key] = model.encode_from_trunk(self._cache[(model.trunk, size)])  # the stage alone runs
                else:
                    self._cache[key] = model.encode(self.photos, input_size=size)
            else:
                self._cache[key] = []
        return self._cache[key]

    def subset(self, indices: Sequence[int]) -> EncodingCache:
        return EncodingCache(self.pipeline, [self.photos[i] for i in indices], self, indices)

    def replace_photos(self, photos: Sequence[Photo]) -> None:
        """Go on with ``photos``, the same images decoded anew (a preview's full decode).

        The encodings already computed stay, now of the new photos: each was
        computed at its own input size, which the preview held in full.
        """
        swap = {id(old): new for old, new in zip(self.photos, photos)}
        self.photos = list(photos)
        for key, encodings in self._cache.items():
            self._cache[key] = [replace(e, photo=swap.get(id(e.photo), e.photo)) for e in encodings]


@dataclass
class Query:
    """What one photo becomes before the index search: its intent and regions."""

    intent: str
    intent_scores: dict[str, float]
    photo: Photo  # the photo the later steps read (a preview's full decode)
    regions: list[tuple[Garment | None, np.ndarray]] = field(default_factory=list)  # (garment, vector)
    #: The probability the gate's ImageNet classes put on loose fresh produce (None: not known).
    produce: float | None = None
    #: The intent classifier's most likely class (what ``intent`` was before an override or a fallback).
    predicted: str | None = None
    #: The other product domain, searched too with the whole photo when the gate is unsure (:meth:`Pipeline.second_domain`).
    also: str | None = None
    #: The photo's encodings (the later steps reuse them).
    cache: EncodingCache | None = None


class Pipeline:
    """The models of steps 1–2 (docs/method.md) and the search over a store (steps 3–6)."""

    def __init__(self, config: Config | None = None, artifacts: StoreArtifacts | None = None, *, device: str = "cpu",
                 search_concurrency: int = 1) -> None:
        self.config = config or Config()
        #: The store's model files (heads, tails, calibrations, intent classifier); ``None``: the shipped models only.
        self.artifacts = artifacts
        #: Where the backbones' forward passes run: "cpu" (the configured runtime) or a CUDA device (eager
        #: PyTorch). A choice of this process, not a setting the store keeps: a store indexed on a GPU is
        #: searched on CPUs like any other.
        self.device = device
        #: Searches this process runs at once (a server's search slots): OpenVINO's streams with
        #: ``runtime.streams`` 0 (models.runtime_streams). A choice of this process, not a store setting.
        self.search_concurrency = search_concurrency
        keep_freed_memory(self.config.runtime.malloc_trim_mib)  # process-wide: searches reuse their big buffers
        self._backbones: dict[str, Backbone] = {}
        #: Stride-32 stages tuned by train-embedder, by the name of the backbone they make (shoplens.embed.tail).
        self._tails: dict[str, Tail] = {}
        self._intent: IntentClassifier | None = None
        self._detector: Detector | None = None
        self.embedders = {d: self._make_embedder(d) for d in DOMAINS}
        if self.config.search.calibration not in ("auto", "off"):
            raise ConfigError(f"search.calibration must be 'auto' or 'off', got {self.config.search.calibration!r}")
        if not 0.0 < self.config.search.target_precision < 1.0:
            raise ConfigError(f"search.target_precision must be between 0 and 1, got {self.config.search.target_precision}")
        #: Per-domain rank calibrations: fitted at index time (shoplens.pipeline.calibrate) or by ``train-embedder``.
        self.calibrations: dict[str, Calibration] = {}
        #: Products per category of each domain, with the vector count they were counted at.
        self._category_sizes: dict[str, tuple[int, dict[str, int]]] = {}
        for d in DOMAINS:
            if artifacts is not None and artifacts.calibration(d).exists():
                self.calibrations[d] = Calibration.load(artifacts.calibration(d))
        #: Called with the step name whenever a costly step runs (tests count work with it).
        self.on_step: Callable[[str], None] | None = None
        #: The store's local-feature index (set by :class:`~shoplens.api.Shoplens` when configured).
        self.local: LocalStage | None = None
        self._text_models: dict[str, TextModel] = {}

    # -- models -------------------------------------------------------------
    def backbone(self, name: str) -> Backbone:
        if name not in self._backbones:
            rt = self.config.runtime
            streams = runtime_streams(rt.streams, self.search_concurrency, rt.threads)
            tail = self._tails.get(name)
            if tail is not None:
                self._backbones[name] = create_tuned_model(self.backbone(tail.backbone), tail.module, name, runtime=rt.engine,
                                                           threads=rt.threads, precision=rt.precision,
                                                           static_shapes=rt.static_shapes, streams=streams, device=self.device)
            else:
                self._backbones[name] = create_model(name, runtime=rt.engine, threads=rt.threads, precision=rt.precision,
                                                     static_shapes=rt.static_shapes, streams=streams, device=self.device)
        return self._backbones[name]

    def text_model(self, domain: str) -> TextModel:
        """The text tower of ``domain``'s backbone (text search); :class:`NoTextModelError` if it has none."""
        name = getattr(self.config.embed, domain).backbone
        if name not in self._text_models:
            self._text_models[name] = create_text_model(name)
        return self._text_models[name]

    @property
    def intent_classifier(self) -> IntentClassifier:
        if self._intent is None:
            self._intent = self._make_intent()
        return self._intent

    def reset_intent(self) -> None:
        """Forget the loaded intent classifier (a new one was trained)."""
        self._intent = None

    def _make_intent(self) -> IntentClassifier:
        cfg = self.config.intent
        name = cfg.classifier
        trained = self.artifacts.intent() if self.artifacts else None
        if name == "auto":
            use_trained = trained is not None and trained.exists() and "trained" in list_intent_classifiers()
            name = "trained" if use_trained else "default-head"
        if name == "trained":
            if trained is None or not trained.exists():
                raise StoreError("no trained intent classifier in this store: run 'shoplens train-intent' first")
            return create_intent_classifier("trained", path=trained)
        return create_intent_classifier(name, backbone=cfg.backbone)

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            # In the backbones' runtime where the detector has a choice: one runtime loaded, not two.
            self._detector = create_detector(self.config.detect.detector, runtime=self.config.runtime.engine)
        return self._detector

    def _make_embedder(self, domain: str) -> Embedder:
        cfg = getattr(self.config.embed, domain)
        head: Head = IdentityHead()
        if self.artifacts is not None and self.artifacts.head(domain).exists():
            head = load_head(self.artifacts.head(domain))
        backbone = cfg.backbone
        if self.artifacts is not None and self.artifacts.tail(domain).exists():
            try:
                tail = Tail.load(self.artifacts.tail(domain), cfg.backbone, self.backbone(cfg.backbone).torch_module())
            except ConfigError as err:  # the backbone was changed since: its stored descriptors are stale anyway
                log.warning("%s: %s; using the shipped stage (re-run train-embedder)", domain, err)
            else:
                self._tails[tail.model_name] = tail
                backbone = tail.model_name
        extra = [int(x) for x in str(cfg.extra_sizes).replace(",", " ").split()]
        return Embedder(domain, backbone, cfg.input_size, head, pooling=cfg.pooling, extra_sizes=extra, colour=cfg.colour)

    def set_head(self, domain: str, head: Head) -> None:
        """Use ``head`` for ``domain`` from now on, saved in the store's models folder."""
        if self.artifacts is not None:
            head.save(self.artifacts.head(domain))
        self.embedders[domain].head = head
        # A calibration belongs to the head it was fitted for.
        self.calibrations.pop(domain, None)
        if self.artifacts is not None:
            self.artifacts.calibration(domain).unlink(missing_ok=True)

    def set_tail(self, domain: str, tail: Tail) -> None:
        """Encode ``domain``'s photos with ``tail`` as the backbone's stride-32 stage from now on,
        saved in the store's models folder.

        Descriptors stored before no longer match the embedder's signature: re-encode them.
        """
        if self.artifacts is not None:
            tail.save(self.artifacts.tail(domain))
        self._tails[tail.model_name] = tail
        self.embedders[domain].backbone = tail.model_name

    def set_calibration(self, domain: str, calibration: Calibration) -> None:
        """Rescale ``domain``'s hit distances with ``calibration`` from now on (saved with the head)."""
        if self.artifacts is not None:
            calibration.save(self.artifacts.calibration(domain))
        self.calibrations[domain] = calibration

    def calibration(self, domain: str) -> Calibration | None:
        """The calibration step 4 applies in ``domain``.

        ``None`` (raw distances, rank = 2 − the Euclidean distance) with
        ``search.calibration = off`` or with the rank filter off: the
        calibration is the filter's.
        """
        if self.config.search.calibration == "off" or not self.config.search.rank_filter:
            return None
        return self.calibrations.get(domain) or default_calibration()

    def category_sizes(self, store: CatalogueStore, domain: str) -> dict[str, int]:
        """Products per category in ``domain``, counted again when the domain's vector count changes.

        (A category edit that adds or removes no image is seen at the next one: the sizes
        only guard the entropy filter.)
        """
        n = store.count_vectors(domain)
        cached = self._category_sizes.get(domain)
        if cached is None or cached[0] != n:
            cached = self._category_sizes[domain] = (n, store.category_sizes(domain))
        return cached[1]

    @property
    def decode_size(self) -> int:
        """The longest side a search reads: search photos may be decoded down to it (JPEG draft mode).

        The embedders' input sizes, the detector's and the local features'
        query side, where those steps are on.
        """
        sides = [s or 224 for e in self.embedders.values() for s in e.input_sizes]
        if self.config.detect.enabled and self.detector.input_size:
            sides.append(self.detector.input_size)
        if self.config.local.enabled and self.local is not None:
            sides.append(self.local.query_side)
        return max(sides)

    @property
    def preview(self) -> Callable[[int, int], tuple[int, int]] | None:
        """How small a search photo may be decoded first (``load_image``'s ``preview``); ``None``: in full at once.

        ``None`` too when the gate is off: it then stops no photo, so every one is decoded in full anyway.
        """
        return self.gate_size if self.config.intent.preview_decode and self.config.intent.enabled else None

    def gate_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest (width, height) the intent gate reads a width x height photo at.

        A photo decoded that small first (a preview, see :func:`load_image`)
        is decoded in full only when the gate passes it: a non-product photo
        costs a smaller decode and resize.
        """
        clf = self.intent_classifier
        cfg = self.backbone(clf.backbone).preprocess
        return source_size(width, height, cfg if clf.input_size is None else cfg.with_size(clf.input_size))

    # -- Projector (for the store) ------------------------------------------
    def project(self, domain: str, raw: np.ndarray) -> np.ndarray:
        return self.embedders[domain].project(raw)

    def version(self, domain: str) -> str:
        path = self.artifacts.head(domain) if self.artifacts else None
        if path is not None and path.exists():
            st = path.stat()
            return f"{self.embedders[domain].head.kind}:{st.st_size}:{st.st_mtime_ns}"
        return self.embedders[domain].head.kind

    # -- steps 1 and 2 ------------------------------------------------------
    def _notify(self, step: str) -> None:
        if self.on_step is not None:
            self.on_step(step)

    def classify(self, cache: EncodingCache) -> np.ndarray:
        """(N, 3) intent probabilities for the cached photos."""
        clf = self.intent_classifier
        self._notify("intent")
        encodings = cache.get(clf.backbone, clf.input_size)
        with torch_threads():  # a few small ops on the pooled logits
            return clf.predict(encodings)

    def detect(self, cache: EncodingCache) -> list[list[Garment]]:
        det = self.detector
        cfg = self.config.detect
        self._notify("detect")
        if det.backbone is None:
            encodings = [Encoding(photo=p, input_hw=p.pixels.shape[:2]) for p in cache.photos]
        else:
            encodings = cache.get(det.backbone, det.input_size)
        found = det.detect(encodings)
        return [sorted((g for g in gs if g.score >= cfg.min_score), key=lambda g: -g.score)[: cfg.max_garments] for gs in found]

    def describe(self, domain: str, cache: EncodingCache) -> np.ndarray:
        """Raw descriptors of the cached photos for ``domain``."""
        emb = self.embedders[domain]
        self._notify(f"embed:{domain}")
        encodings = [cache.get(emb.backbone, size) for size in emb.input_sizes]
        return emb.describe(encodings[0], *encodings[1:])

    def intent_of(self, probs: np.ndarray) -> str:
        """The intent a probability row stands for, as configured.

        A photo is stopped only when its non_product score reaches
        ``intent.stop_score`` (:meth:`is_uncertain`); with the gate switched
        off, never. A photo that is not stopped goes to the likelier product
        domain.
        """
        if self.config.intent.enabled and INTENTS[int(np.argmax(probs))] == "non_product" and not self.is_uncertain(probs):
            return "non_product"
        return DOMAINS[int(np.argmax(probs[: len(DOMAINS)]))]

    def is_uncertain(self, probs: np.ndarray) -> bool:
        """Whether the classifier leans to non_product, but not enough to stop the photo."""
        return bool(INTENTS[int(np.argmax(probs))] == "non_product" and probs[INTENTS.index("non_product")] < self.config.intent.stop_score)

    def second_domain(self, probs: np.ndarray, domain: str) -> str | None:
        """The other product domain when the gate is unsure of ``domain`` (``intent.second_domain_share``), else None."""
        if domain not in DOMAINS:
            return None
        other = next(d for d in DOMAINS if d != domain)
        product = probs[: len(DOMAINS)]
        share = float(product[DOMAINS.index(other)] / max(float(product.sum()), 1e-12))
        unsure = self.config.intent.enabled and self.is_uncertain(probs)
        return other if unsure or share >= self.config.intent.second_domain_share else None

    def query(
        self, photo: Photo, timer: Timer, steps: dict[str, Any], holds: Callable[[str], bool] | None = None, domain: str | None = None
    ) -> Query:
        """Steps 1–2 for one photo: intent, then the vectors to search.

        ``holds(domain)`` says whether the catalogue has anything in a
        product domain: a product photo of a domain the shop does not sell
        is searched in the other product domain (a grocery-only shop, a
        photo the gate takes for apparel) rather than in an empty index.
        ``domain`` (``apparel`` / ``other_product``) searches the photo in
        that domain whatever the gate says ("search anyway"); the
        classifier still runs, for ``intent_scores`` and ``predicted``.
        """
        if domain is not None and domain not in DOMAINS:
            raise ConfigError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
        cache = EncodingCache(self, [photo])
        with timer.step("intent"):
            probs = self.classify(cache)[0]
        intent = predicted = self.intent_of(probs)
        if domain is not None:
            intent = domain
        elif holds is not None and intent in DOMAINS and not holds(intent):
            other = next(d for d in DOMAINS if d != intent)
            intent = other if holds(other) else intent
        scores = {k: round(float(v), 4) for k, v in zip(INTENTS, probs)}
        steps["intent"] = {"enabled": self.config.intent.enabled, "classifier": self.intent_classifier.name, "intent": intent}
        if domain is not None:
            steps["intent"]["override"] = domain
        if self.config.intent.enabled and self.is_uncertain(probs):
            # Searched although the classifier leans to non_product: a false stop would lose a sale.
            steps["intent"].update(uncertain=True, stop_score=self.config.intent.stop_score)
            predicted = "non_product"
        if intent != predicted:
            steps["intent"]["predicted"] = predicted
        also = self.second_domain(probs, intent) if domain is None else None  # an override is searched alone
        q = Query(intent, scores, photo=photo, also=also, cache=cache)
        q.predicted = INTENTS[int(np.argmax(probs))]
        if intent == "non_product":
            return q
        if photo.is_preview:  # the gate read a preview: the later steps read the photo in full
            with timer.step("decode"):
                photo = q.photo = photo.full()
            cache.replace_photos([photo])
        if intent == "apparel":
            garments: list[Garment] = []
            detected = 0
            if self.config.detect.enabled:
                with timer.step("detect"):
                    found = self.detect(cache)[0]
                    d = self.config.detect
                    garments = search_regions(found, photo.size, min_score=d.search_min_score, iou=d.region_iou, whole_photo_area=d.whole_photo_area)
                detected = len(found)
            steps["detect"] = {"enabled": self.config.detect.enabled, "detector": self.config.detect.detector, "garments": detected,
                               "regions": len(garments)}
            with timer.step("embed"):
                regions: list[Garment | None] = list(garments)
                crops = [crop(photo, g.box) for g in garments]
                if not garments or self.config.detect.whole_image:
                    regions.append(None)
                    crops.append(photo)
                raw = self.describe("apparel", EncodingCache(self, crops) if garments else cache)
                vectors = self.project("apparel", raw)
            q.regions = list(zip(regions, vectors))
            return q
        with timer.step("embed"):
            vectors = self.project("other_product", self.describe("other_product", cache))
        q.regions = [(None, vectors[0])]
        q.produce = self._produce(cache)
        return q

    def _produce(self, cache: EncodingCache) -> float | None:
        """What the intent gate's ImageNet logits (already computed) put on loose fresh produce (8 µs).

        The local stage decides what to make of it (``local.skip_produce``).
        """
        clf = self.intent_classifier
        logits = cache.get(clf.backbone, clf.input_size)[0].logits
        return None if logits is None else produce_share(logits)

    # -- steps 3–6 ----------------------------------------------------------
    def search(
        self,
        photo: Photo,
        store: CatalogueStore,
        *,
        top_k: int | None = None,
        allowed: Callable[[str], np.ndarray | None] | None = None,
        decode_ms: float = 0.0,
        domain: str | None = None,
    ) -> SearchResult:
        """Steps 1–6 for one decoded photo against ``store``.

        ``allowed(domain)`` returns the image ids a metadata filter admits
        (``None``: no filter); the filter runs inside the index search.
        ``domain`` searches the photo in that product domain whatever the
        intent gate says (:meth:`query`).
        """
        with blas_threads():  # numpy's products here are small; idle BLAS threads would slow the next pass
            return self._search(photo, store, top_k=top_k, allowed=allowed, decode_ms=decode_ms, domain=domain)

    def _search(
        self,
        photo: Photo,
        store: CatalogueStore,
        *,
        top_k: int | None,
        allowed: Callable[[str], np.ndarray | None] | None,
        decode_ms: float,
        domain: str | None = None,
    ) -> SearchResult:
        timer = Timer()
        if decode_ms:
            timer.ms["decode"] = decode_ms
        steps: dict[str, Any] = {}
        start = time.perf_counter()
        q = self.query(photo, timer, steps, holds=lambda d: store.count_vectors(d) > 0, domain=domain)
        region_results: list[RegionResult] = []
        if q.regions:
            domain = q.intent
            cfg = self.config.search
            fetch = max(cfg.similar_k * 4, cfg.similar_k + 16)
            # Index searches, keypoint work and reranking are small per-photo ops: one thread each.
            with small_op_threads():
                with timer.step("search"):
                    ids_allowed = allowed(domain) if allowed is not None else None
                    self._notify("search")
                    with index_search_threads(len(q.regions), lambda: store.count_vectors(domain)):
                        dists, ids = store.search(domain, np.stack([v for _, v in q.regions]), fetch, ids_allowed)
                if domain == "other_product" and self.local is not None and self.config.local.enabled and len(self.local):
                    with timer.step("local"):
                        self._notify("local")
                        refined = self.local.refine(q.photo, store, q.regions[0][1], dists[0], ids[0], ids_allowed, produce=q.produce)
                        dists, ids = refined.distances[None, :], refined.ids[None, :]
                    steps["local"] = refined.steps
                with timer.step("rerank"):
                    region_results = self._rerank(store, domain, q.regions, dists, ids, top_k, steps, filtered=ids_allowed is not None)
                if q.also is not None and store.count_vectors(q.also) > 0:
                    region_results += self._search_also(q, q.also, store, top_k, allowed, timer, steps)
        timer.ms["total"] = (time.perf_counter() - start) * 1000.0 + decode_ms
        return SearchResult(
            image=photo.name,
            intent=q.intent,
            intent_scores=q.intent_scores,
            predicted_intent=q.predicted,
            domain=None if q.intent == "non_product" else q.intent,
            regions=region_results,
            timings_ms=timer.rounded(),
            steps=steps,
            reason=stopped(q.intent_scores, self.config.intent.stop_score) if q.intent == "non_product" else None,
        )

    def _search_also(
        self,
        q: Query,
        domain: str,
        store: CatalogueStore,
        top_k: int | None,
        allowed: Callable[[str], np.ndarray | None] | None,
        timer: Timer,
        steps: dict[str, Any],
    ) -> list[RegionResult]:
        """The whole photo searched in ``domain`` too (global embedding): one more region, ``steps["second_domain"]``."""
        assert q.cache is not None
        cfg = self.config.search
        with timer.step("embed"):
            vectors = self.project(domain, self.describe(domain, q.cache))
        with timer.step("search"):
            self._notify("search")
            ids_allowed = allowed(domain) if allowed is not None else None
            dists, ids = store.search(domain, vectors, max(cfg.similar_k * 4, cfg.similar_k + 16), ids_allowed)
        sub: dict[str, Any] = {}
        with timer.step("rerank"):
            out = self._rerank(store, domain, [(None, vectors[0])], dists, ids, top_k, sub, filtered=ids_allowed is not None)
        steps["second_domain"] = {"domain": domain, "score": q.intent_scores[domain], **sub}
        return out

    def _rerank(
        self,
        store: CatalogueStore,
        domain: str,
        regions: list[tuple[Garment | None, np.ndarray]],
        dists: np.ndarray,
        ids: np.ndarray,
        top_k: int | None,
        steps: dict[str, Any],
        *,
        filtered: bool = False,
    ) -> list[RegionResult]:
        """Steps 3–6 for each region's candidates; ``steps`` gets the counts summed over regions.

        A region left with no result says why (``reason``; ``filtered``: a metadata filter was given).

        The store is asked twice per search, whatever the number of regions:
        product and category of every candidate image (what steps 3–6 read),
        then the result fields of the products that are returned.
        """
        cfg = self.config.search
        found = store.image_categories(ids[ids >= 0].tolist()) if ids.size else {}
        calibration = self.calibration(domain)
        sizes = self.category_sizes(store, domain) if cfg.entropy_filter else None
        finals: list[tuple[list[Hit], dict[str, Any]]] = []
        for r in range(len(regions)):
            hits = []
            for d, i in zip(dists[r].tolist(), ids[r].tolist()):
                hit = found.get(i) if i >= 0 else None
                if hit is None:
                    continue
                pid, category = hit
                hits.append(Hit(i, pid, d, category))
            finals.append(postprocess(hits, cfg, top_k=top_k, calibration=calibration, category_sizes=sizes))
        records = store.get_products(list({h.product_id for final, _ in finals for h in final}))
        totals: dict[str, dict[str, int]] = {}
        out: list[RegionResult] = []
        for (garment, _), (final, region_steps) in zip(regions, finals):
            for name, s in region_steps.items():
                t = totals.setdefault(name, {"before": 0, "after": 0})
                t["before"] += s["before"]
                t["after"] += s["after"]
            # A product deleted since the first question is left out.
            found_products = [product_hit(h, records[h.product_id]) for h in final if h.product_id in records]
            reason = None if found_products else empty_region(region_steps, domain=domain, indexed=store.count_vectors(domain),
                                                    filtered=filtered, kept=len(final))
            out.append(
                RegionResult(
                    box=None if garment is None else [round(v, 1) for v in garment.box],
                    label=None if garment is None else garment.label,
                    score=None if garment is None else round(garment.score, 4),
                    results=found_products,
                    steps=region_steps,
                    reason=reason,
                    domain=domain,
                )
            )
        for name, t in totals.items():
            steps[name] = {**t, "enabled": getattr(cfg, name, True) if name != "similar_set" else True}
        return out


def product_hit(hit: Hit, record: ProductRecord) -> ProductHit:
    fields = record.fields()
    fields.update(product_id=hit.product_id, rank=round(hit.rank, 4), distance=round(hit.distance, 4), category=hit.category,
                  precision=hit.precision)
    out = ProductHit(**fields)
    out._image_id = int(hit.image_id)
    return out

"""The local-feature stage of the pipeline: one :class:`LocalIndex` per store, kept in step with it.

The store is the source of truth. :meth:`LocalStage.sync` compares the
``other_product`` image ids the store holds with those the local index holds,
forgets the ones the store no longer has and extracts the new ones from their
stored source files, then saves the index atomically. The indexer hands its
new photos' features over itself (:meth:`LocalStage.extract`,
:meth:`LocalStage.add`, from the pixels it decoded for the backbone), so
``sync`` after a catalogue run only saves; it reads a photo again only where
that failed, or after a crash. Running it after every
catalogue write and when a store is opened means a crash between the store's
commit and the local index's save costs a re-extraction, never a wrong answer.
A stage opened ``read_only`` (a reader beside the store's writer) never
writes: it reads the index the writer last saved, forgets the images the
store no longer has, and leaves new ones to the writer (they are found by the
global embedding alone until then).

:meth:`LocalStage.refine` is the search step: the global candidates, the local
index's own candidates, one distance for each
(``global distance × exp(−weight × ASMK score)``, shrunk further when verified).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ..config import LocalFeaturesConfig
from ..errors import BadImageError, ConfigError, ShoplensError
from ..imaging import Photo, load_image
from .features import LocalFeatures
from .index import MANIFEST, LocalConfig, LocalIndex

log = logging.getLogger(__name__)

#: The domain local features serve.
DOMAIN = "other_product"
#: What ``local.scope`` may say: the images the local features score.
SCOPES = ("auto", "candidates", "all")


class StoredImages(Protocol):
    """What the stage reads of a catalogue store: ``store.base.CatalogueStore`` provides it."""

    def image_ids(self, domain: str) -> np.ndarray:
        """Ids of the domain's stored images, ascending (int64)."""
        ...

    def image_source(self, image_id: int) -> str | None:
        """Where the image's photo was read from, if the store knows."""
        ...

    def image_categories(self, image_ids: Sequence[int]) -> Mapping[int, tuple[str, str | None]]:
        """image id -> (product id, product category), for the ids whose image and product exist."""
        ...

    def search(self, domain: str, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, image ids), each (n, k'), k' <= k; −1 ids are empty slots."""
        ...


@dataclass
class Refined:
    """Candidates of one query after the local stage, closest first."""

    distances: np.ndarray
    ids: np.ndarray
    steps: dict[str, Any]


def product_margin(store: StoredImages, distances: np.ndarray, ids: np.ndarray, depth: int = 32) -> float:
    """How much farther the second-closest product is than the closest (global distances, closest first).

    Only the first ``depth`` candidates are looked at: when they all show one
    product, the margin is at least the distance of the last of them minus the first's.
    """
    valid = ids >= 0
    d, i = distances[valid][:depth], ids[valid][:depth]
    if len(i) == 0:
        return 0.0
    owners = store.image_categories(i.tolist())
    first = None
    for dist, image_id in zip(d.tolist(), i.tolist()):
        pid = owners.get(image_id, (None,))[0]
        if pid is None:
            continue
        if first is None:
            first = (pid, dist)
        elif pid != first[0]:
            return dist - first[1]
    return float(d[-1] - d[0]) if first is not None else 0.0


class LocalStage:
    """A store's local-feature index under ``directory``, with its settings."""

    def __init__(self, directory: Path, config: LocalFeaturesConfig, *, read_only: bool = False) -> None:
        if config.scope not in SCOPES:
            raise ConfigError(f"local.scope must be one of {', '.join(SCOPES)}, got {config.scope!r}")
        if config.local_shortlist < 0 or config.all_up_to < 0:
            raise ConfigError(f"local.local_shortlist and local.all_up_to must be 0 or more, got {config.local_shortlist}, {config.all_up_to}")
        self.directory = Path(directory)
        self.config = config
        self.read_only = read_only
        wanted = replace(LocalConfig(), max_side=config.max_side, max_keypoints=config.max_keypoints,
                         query_max_side=config.query_max_side, min_inliers=config.min_inliers)
        self.index: LocalIndex | None = None
        if read_only:
            self.index = self._load_for_reading(wanted)
        elif (self.directory / MANIFEST).exists():
            try:
                self.index = LocalIndex.load(self.directory)
            except (ShoplensError, OSError, ValueError, KeyError) as err:
                log.warning("local-feature index in %s is unreadable (%s): rebuilding it from the stored photos", self.directory, err)
                aside = self.directory.with_name(self.directory.name + ".broken")
                shutil.rmtree(aside, ignore_errors=True)
                self.directory.rename(aside)  # kept for a post-mortem until the next breakage
            else:
                built = {name: getattr(self.index.config, name) for name in LocalConfig.BUILD_FIELDS}
                if built != {name: getattr(wanted, name) for name in LocalConfig.BUILD_FIELDS}:
                    log.warning("local-feature index was built with %s: rebuilding it with the configured settings", built)
                    shutil.rmtree(self.directory)
                    self.index = None
                else:
                    self.index.reconfigure(wanted)
                    if self.index.converted:  # converted in memory at every load until saved anew
                        log.info("local-feature index: rewriting %d segment(s) in the current layout", self.index.converted)
                        try:
                            self.index.save(self.directory)
                        except OSError as err:  # a read-only store still searches; it converts again next time
                            log.warning("local-feature index in %s not rewritten (%s)", self.directory, err)
        if self.index is None:
            self.index = LocalIndex(None, wanted)
        #: Image ids whose photo could not be read: searched by the global embedding only.
        self.unreadable: set[int] = set()
        #: Images added by :meth:`add` since the index was last saved.
        self._unsaved = False
        # Searches read the index while writes change it; feature extraction runs outside the lock.
        self._lock = threading.RLock()

    def _load_for_reading(self, wanted: LocalConfig) -> LocalIndex:
        """The index the writer last saved, as it is on disk (an empty one when there is none to use)."""
        for attempt in range(3):
            if not (self.directory / MANIFEST).exists():
                break
            try:
                index = LocalIndex.load(self.directory)
            except (ShoplensError, OSError, ValueError, KeyError) as err:
                if attempt < 2:  # the writer may have replaced a segment between the manifest and its files
                    time.sleep(0.05)
                    continue
                log.warning("local-feature index in %s is unreadable (%s): searching without local features", self.directory, err)
                break
            built = {name: getattr(index.config, name) for name in LocalConfig.BUILD_FIELDS}
            if built != {name: getattr(wanted, name) for name in LocalConfig.BUILD_FIELDS}:
                log.warning("local-feature index was built with %s, not the configured settings: searching without local features", built)
                break
            index.reconfigure(wanted)
            return index
        return LocalIndex(None, wanted)

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else 0

    @property
    def query_side(self) -> int:
        """The longest side a query photo's local features are extracted at."""
        assert self.index is not None
        return self.index.config.query_side

    @property
    def catalogue_side(self) -> int:
        """The longest side a catalogue photo's local features are extracted at."""
        assert self.index is not None
        return self.index.config.max_side

    # -- keeping in step with the store ---------------------------------------
    def extract(self, photo: Photo) -> LocalFeatures:
        """A catalogue photo's local features, for :meth:`add`. Thread-safe, outside the lock.

        A writer extracts its new photos from the pixels it decoded for the
        backbone, instead of :meth:`sync` reading and decoding them again.
        """
        assert self.index is not None
        return self.index.extract(photo)

    def add(self, image_ids: Sequence[int], features: Sequence[LocalFeatures]) -> None:
        """Index the stored images ``image_ids`` (``other_product``) with their :meth:`extract` features; saved by :meth:`sync`."""
        if self.read_only:
            raise ShoplensError("a read-only local-feature stage adds nothing")
        if not image_ids:
            return
        assert self.index is not None
        with self._lock:
            self.index.add(np.asarray(image_ids, np.int64), list(features))
            self._unsaved = True

    def sync(self, store: StoredImages, *, progress: bool = False, workers: int = 2) -> tuple[int, int]:
        """Add the store's new ``other_product`` images, drop the gone ones, save. Returns (added, removed).

        Read-only: the gone ones are dropped in memory, nothing is added or saved.
        """
        assert self.index is not None
        stored = store.image_ids(DOMAIN)
        held = self.index.ids() if len(self.index) else np.zeros(0, np.int64)
        gone = np.setdiff1d(held, stored)
        new = [int(i) for i in np.setdiff1d(stored, held) if int(i) not in self.unreadable]
        with self._lock:
            removed = self.index.remove(gone) if len(gone) else 0
        if self.read_only:
            return 0, removed
        added = 0
        if new:
            t0 = time.perf_counter()
            bar = tqdm(total=len(new), unit="img", desc="local features", disable=not progress, leave=False)
            extractor = self.index.extract
            side = self.index.config.max_side

            sources = {i: store.image_source(i) for i in new}  # the store is read from this thread only

            def features(image_id: int) -> Any:
                source = sources[image_id]
                try:
                    if source is None:
                        raise BadImageError("no stored source")
                    return extractor(load_image(Path(source), target_size=side))
                except (BadImageError, OSError) as err:
                    log.warning("local features: image %d (%s) skipped: %s", image_id, source, err)
                    return None

            # SIFT runs in OpenCV without the GIL: a small pool keeps the cores busy.
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shoplens-sift") as pool:
                for start in range(0, len(new), 256):
                    chunk = new[start:start + 256]
                    feats = list(pool.map(features, chunk))
                    ok = [(i, f) for i, f in zip(chunk, feats) if f is not None]
                    self.unreadable.update(i for i, f in zip(chunk, feats) if f is None)
                    if ok:
                        with self._lock:
                            self.index.add(np.array([i for i, _ in ok], np.int64), [f for _, f in ok])
                            added += len(ok)
                    bar.update(len(chunk))
            bar.close()
            log.info("local features: %d image(s) added in %.1f s", added, time.perf_counter() - t0)
        if added or removed or self._unsaved or not (self.directory / MANIFEST).exists():
            with self._lock:
                self.index.save(self.directory)
                self._unsaved = False
        return added, removed

    # -- search -----------------------------------------------------------------
    def refine(
        self,
        photo: Photo,
        store: StoredImages,
        vector: np.ndarray,
        distances: np.ndarray,
        ids: np.ndarray,
        allowed: np.ndarray | None,
        *,
        produce: float | None = None,
    ) -> Refined:
        """The global candidates of one query (``distances``/``ids``, −1 = empty) fused with the local index's.

        ``produce``: the probability the intent gate put on loose fresh produce
        (``local.skip_produce``). Small per-photo work: the caller runs it
        under ``threads.small_op_threads()``.
        """
        assert self.index is not None
        why = self._skip_reason(store, distances, ids, produce)
        if why:
            valid = ids >= 0
            return Refined(distances[valid].astype(np.float32), ids[valid].astype(np.int64),
                           {"enabled": True, "skipped": True, **why})
        t = time.perf_counter()
        feats = self.index.extract_query(photo)
        valid = ids >= 0
        scope, l_ids, l_scores = self._local_candidates(feats, ids[valid], allowed)
        query_ms = (time.perf_counter() - t) * 1000
        g_ids, g_d = ids[valid].astype(np.int64), distances[valid].astype(np.float64)
        # Local candidates the global list missed: their exact global distance, from the store.
        missing = np.setdiff1d(l_ids, g_ids)
        if len(missing):
            md, mi = store.search(DOMAIN, vector[None, :], len(missing), missing)
            ok = mi[0] >= 0
            g_ids = np.concatenate([g_ids, mi[0][ok].astype(np.int64)])
            g_d = np.concatenate([g_d, md[0][ok].astype(np.float64)])
        g_ids, fused, score = self._fuse(g_ids, g_d, l_ids, l_scores)
        t = time.perf_counter()
        checks = self.config.verify and self.config.shortlist > 0 and len(g_ids) > 0
        g_ids, fused, verified = self._verify(feats, g_ids, fused, score) if checks else (g_ids, fused, 0)
        verify_ms = (time.perf_counter() - t) * 1000 if checks else 0.0
        steps = {
            "enabled": True,
            "scope": scope,
            "keypoints": len(feats),
            "local_candidates": len(l_ids),
            "added": len(missing),
            "verified": verified,
            "query_ms": round(query_ms, 2),
            "verify_ms": round(verify_ms, 2),
        }
        return Refined(fused.astype(np.float32), g_ids, steps)

    def _skip_reason(self, store: StoredImages, distances: np.ndarray, ids: np.ndarray, produce: float | None) -> dict[str, float]:
        """Why the local step is not worth running for this query (``local.skip_produce``, ``local.skip_margin``); ``{}``: run it."""
        cfg = self.config
        if cfg.skip_produce > 0 and produce is not None and produce >= cfg.skip_produce:
            return {"produce": round(produce, 4)}
        if cfg.skip_margin > 0:
            margin = product_margin(store, distances, ids)
            if margin >= cfg.skip_margin:
                return {"margin": round(margin, 4)}
        return {}

    def _local_candidates(self, feats: LocalFeatures, global_ids: np.ndarray,
                          allowed: np.ndarray | None) -> tuple[str, np.ndarray, np.ndarray]:
        """(scope, ids, ASMK scores): every indexed image's best (scope "all") or the global candidates' scores."""
        assert self.index is not None
        cfg = self.config
        with self._lock:
            scope = "all" if cfg.scope == "all" or (cfg.scope == "auto" and len(self.index) <= cfg.all_up_to) else "candidates"
            if scope == "all":
                l_ids, l_scores = self.index.query(feats, cfg.candidates)
            else:
                l_ids, l_scores = self.index.query(feats, len(global_ids), among=global_ids)
        if allowed is not None and len(l_ids):
            keep = np.isin(l_ids, allowed)
            l_ids, l_scores = l_ids[keep], l_scores[keep]
        return scope, l_ids, l_scores

    def _fuse(self, g_ids: np.ndarray, g_d: np.ndarray, l_ids: np.ndarray,
              l_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates by fused distance ``global × exp(−weight × local score)``: (ids, fused distances, local scores), closest first."""
        score = np.zeros(len(g_ids))
        pos = {int(i): j for j, i in enumerate(g_ids)}
        for i, s in zip(l_ids, l_scores):
            j = pos.get(int(i))
            if j is not None:
                score[j] = float(s)
        fused = g_d * np.exp(-self.config.weight * score)
        order = np.argsort(fused, kind="stable")
        return g_ids[order], fused[order], score[order]

    def _verify(self, feats: LocalFeatures, g_ids: np.ndarray, fused: np.ndarray,
                score: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """The shortlist checked by RANSAC, verified candidates first by inliers: (ids, distances, how many verified)."""
        assert self.index is not None
        cfg = self.config
        head = _shortlist(fused, score, cfg.shortlist, cfg.local_shortlist)
        with self._lock:
            head = [j for j in head if int(g_ids[j]) in self.index]
            inliers = self.index.verify(feats, g_ids[head]) if head else np.zeros(0, np.int64)
        verified = 0
        if head:
            fused, verified = _verified_first(fused, np.array(head, np.int64), inliers, cfg.min_inliers, cfg.verified_bonus)
            order = np.argsort(fused, kind="stable")
            g_ids, fused = g_ids[order], fused[order]
        return g_ids, fused, verified


def _shortlist(fused: np.ndarray, score: np.ndarray, length: int, by_local: int) -> list[int]:
    """Positions to verify: the ``length`` best fused candidates, then the ``by_local`` best by local score alone.

    The second list is for photos the global embedding cannot place (printed
    labels of one design in many variants look alike to it): their fused
    order follows the global distance, while the local index still ranks
    the right label high.
    """
    head = list(range(min(length, len(fused))))
    if by_local > 0:
        seen = set(head)
        for j in np.argsort(-score, kind="stable")[:by_local].tolist():
            if score[j] > 0 and j not in seen:
                head.append(j)
                seen.add(j)
    return head


def _verified_first(fused: np.ndarray, head: np.ndarray, inliers: np.ndarray, min_inliers: int, bonus: float) -> tuple[np.ndarray, int]:
    """Distances after verification, and how many candidates were verified.

    A verified candidate (``min_inliers`` or more) comes closer by ``bonus``;
    then the verified ones take their distances in order of inlier count, most
    first: a label that shares its brand's band and emblem with its variants
    gets tens of inliers from each of them, but the most from itself. The
    distances themselves are kept (only who holds which changes), so the
    rank filter keeps as many.
    """
    fused = fused.copy()
    ok = inliers >= min_inliers
    rows = head[ok]
    if not len(rows):
        return fused, 0
    fused[rows] *= 1.0 - bonus
    slots = np.sort(fused[rows])
    by_inliers = rows[np.lexsort((fused[rows], -inliers[ok]))]
    fused[by_inliers] = slots
    return fused, int(len(rows))

"""LocalIndex: an index of catalogue images by their local features.

Search: SIFT keypoints of the query -> visual words -> ASMK* scores of the
images' stored words and signatures (of given candidates only, or of every
image; :mod:`~shoplens.local.invfile`) -> a shortlist, which
:meth:`LocalIndex.verify` checks geometrically (RANSAC inliers).

Updates: :meth:`add` writes a new segment, :meth:`remove` clears bits of an
alive mask, small segments are merged. :meth:`save` persists atomically
under a directory: new segments go to new directories, then one manifest
file is replaced in one step; readers see the old state or the new one.

The index knows image ids (int64) only: which product an image belongs to,
and which images a store holds, is the store's business.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, NotFoundError, StoreError
from ..imaging import Photo
from ._io import fsync_dir
from .asmk import aggregate, selectivity_table
from .features import FeatureExtractor, LocalFeatures, rootsift
from .fusion import FUSION_METHODS, fuse, rerank_verified
from .segment import Segment
from .verify import VerifyParams, verify_pair
from .vocabulary import Vocabulary

log = logging.getLogger(__name__)

#: Written in the manifest; a different major format is refused on load.
FORMAT = "shoplens-local/1"
MANIFEST = "MANIFEST.json"

PhotoOrFeatures = Photo | LocalFeatures


@dataclass(frozen=True)
class LocalConfig:
    """Settings of the local-feature stage, with their defaults."""

    #: Longest side, in pixels, photos are shrunk to before SIFT (never enlarged).
    max_side: int = 512
    #: Longest side a query photo is shrunk to before SIFT (0: ``max_side``). A search-time setting (the
    #: catalogue keeps ``max_side``; the engine's ``local.query_max_side`` is 384 by default). 224 found as
    #: many grocery products as 348 px in 0.6 of the local step's time, but cost sharp, finely printed
    #: labels most of their inliers (docs/decisions.md).
    query_max_side: int = 0
    #: Strongest SIFT keypoints kept per image.
    max_keypoints: int = 1000
    #: SIFT contrast threshold (OpenCV's default is 0.04; lower finds more keypoints on labels).
    contrast_threshold: float = 0.02
    #: Visual words in a vocabulary trained by :meth:`LocalIndex.train_vocabulary`.
    vocabulary_size: int = 4096
    #: Words each query descriptor is assigned to (multiple assignment; catalogue images get 1).
    query_assignments: int = 1
    #: ASMK selectivity exponent and threshold.
    alpha: float = 3.0
    tau: float = 0.0
    #: Verification: ratio test, mutual matches, model, robust estimator, RANSAC threshold
    #: (pixels of shrunk images).
    ratio: float = 0.9
    mutual: bool = True
    model: str = "homography"
    estimator: str = "usac"
    ransac_threshold: float = 5.0
    #: Inliers from which a candidate counts as verified (see :func:`~shoplens.local.fusion.rerank_verified`).
    min_inliers: int = 15
    #: Fusion with the global embedding (:func:`~shoplens.local.fusion.fuse`): method, the local
    #: list's weight, ids taken from the local index, length of the fused shortlist that is verified.
    fusion: str = "score"
    fusion_weight: float = 0.2
    candidates: int = 100
    shortlist: int = 20
    #: Segments kept before the smallest are merged.
    max_segments: int = 8

    #: Fields that shape the stored index; the others only change how it is searched.
    BUILD_FIELDS: ClassVar[tuple[str, ...]] = ("max_side", "max_keypoints", "contrast_threshold")

    def __post_init__(self) -> None:
        if self.max_side < 32 or (self.query_max_side != 0 and self.query_max_side < 32):
            raise ConfigError(f"max_side must be at least 32 and query_max_side 0 or at least 32, "
                              f"got {self.max_side}, {self.query_max_side}")
        if self.query_assignments < 1:
            raise ConfigError(f"query_assignments must be at least 1, got {self.query_assignments}")
        if self.max_segments < 1:
            raise ConfigError(f"max_segments must be at least 1, got {self.max_segments}")
        if self.fusion not in FUSION_METHODS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; known: {', '.join(FUSION_METHODS)}")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ConfigError(f"fusion_weight must be in [0, 1], got {self.fusion_weight}")
        if self.candidates < 1 or self.shortlist < 0:
            raise ConfigError("candidates must be at least 1 and shortlist at least 0")
        try:
            self.verify_params()
        except ValueError as err:
            raise ConfigError(str(err)) from None

    @property
    def query_side(self) -> int:
        """The longest side query photos are shrunk to: ``query_max_side``, or ``max_side`` when 0."""
        return self.query_max_side or self.max_side

    def verify_params(self) -> VerifyParams:
        return VerifyParams(ratio=self.ratio, mutual=self.mutual, model=self.model, estimator=self.estimator,
                            threshold=self.ransac_threshold)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown local-feature option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass(frozen=True)
class LocalSearch:
    """What :meth:`LocalIndex.search` found, for the pipeline and its ``steps`` report."""

    #: Image ids, best first: the fused list, its verified shortlist re-ranked.
    ids: np.ndarray
    #: Fused score of each id (not re-ordered by verification).
    scores: np.ndarray
    #: RANSAC inliers of each id; -1 where not verified (beyond the shortlist, or not in the index).
    inliers: np.ndarray
    #: How many ids reached ``min_inliers``.
    verified: int
    #: Milliseconds per part: ``extract``, ``query``, ``fuse``, ``verify``.
    timings_ms: dict[str, float]
    #: The local index's own candidates (ids, scores), and the fused list before verification.
    local_ids: np.ndarray
    local_scores: np.ndarray
    fused_ids: np.ndarray


def _extractor(config: LocalConfig, max_side: int) -> FeatureExtractor:
    return FeatureExtractor(max_side, config.max_keypoints, config.contrast_threshold)


class LocalIndex:
    """Catalogue images indexed by visual words, with geometric verification.

    Build: ``LocalIndex()`` (the generic vocabulary shipped with shoplens) or
    ``LocalIndex.train_vocabulary(photos)`` (one trained on the catalogue), then
    :meth:`add`. Search: ``ids, scores = index.query(photo, k)``, then
    ``index.verify(photo, ids)``. Extract a query's features once with
    :meth:`extract` and pass the :class:`LocalFeatures` to both.
    """

    def __init__(self, vocabulary: Vocabulary | None = None, config: LocalConfig | None = None) -> None:
        self.config = config or LocalConfig()
        self.vocabulary = vocabulary if vocabulary is not None else Vocabulary.generic()
        self._extractor = _extractor(self.config, self.config.max_side)
        self._query_extractor = _extractor(self.config, self.config.query_side)
        self._verify = self.config.verify_params()
        self._table = selectivity_table(self.config.alpha, self.config.tau)
        self._segments: list[Segment] = []
        self._where: dict[int, tuple[Segment, int]] = {}
        self._df = np.zeros(self.vocabulary.size, np.int64)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def train_vocabulary(cls, photos: Iterable[PhotoOrFeatures], config: LocalConfig | None = None,
                         *, seed: int = 0) -> LocalIndex:
        """An empty index whose vocabulary is trained from ``photos`` (e.g. the catalogue's images).

        Uses ``config.vocabulary_size`` words, fewer when the photos hold too few
        descriptors (at least 4 descriptors per word, and never under 64 words).
        """
        config = config or LocalConfig()
        extractor = _extractor(config, config.max_side)
        descs = [rootsift(p.sift if isinstance(p, LocalFeatures) else extractor.extract(p).sift) for p in photos]
        x = np.concatenate(descs) if descs else np.zeros((0, 128), np.float32)
        size = min(config.vocabulary_size, len(x) // 4)
        if size < 64:
            raise ValueError(f"too few descriptors ({len(x)}) to train a vocabulary: give more or richer photos")
        if size < config.vocabulary_size:
            log.warning("only %d descriptors: training %d visual words instead of %d", len(x), size,
                        config.vocabulary_size)
        return cls(Vocabulary.train(x, size, seed=seed), config)

    # -- features --------------------------------------------------------------------------

    def extract(self, photo: PhotoOrFeatures) -> LocalFeatures:
        """A catalogue photo's local features (a :class:`LocalFeatures` is returned as is)."""
        return photo if isinstance(photo, LocalFeatures) else self._extractor.extract(photo)

    def extract_query(self, photo: PhotoOrFeatures) -> LocalFeatures:
        """A query photo's local features, shrunk to ``query_max_side`` (a :class:`LocalFeatures` as is)."""
        return photo if isinstance(photo, LocalFeatures) else self._query_extractor.extract(photo)

    def _encode(self, feats: LocalFeatures, assignments: int) -> tuple[np.ndarray, np.ndarray]:
        desc = feats.rootsift()
        words, _ = self.vocabulary.assign(desc, assignments)
        return aggregate(desc, words, self.vocabulary.centroids)

    # -- catalogue updates -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, (int, np.integer)) and int(image_id) in self._where

    def ids(self) -> np.ndarray:
        """Ids of the indexed images, sorted."""
        return np.array(sorted(self._where), np.int64)

    def add(self, image_ids: np.ndarray, photos: Sequence[PhotoOrFeatures]) -> None:
        """Index ``photos`` under ``image_ids``; an id already indexed is replaced."""
        ids = np.asarray(image_ids, np.int64).reshape(-1)
        if len(ids) != len(photos):
            raise ValueError(f"{len(ids)} ids for {len(photos)} photos")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("image ids passed to add() must be distinct")
        if len(ids) == 0:
            return
        feats = [self.extract(p) for p in photos]
        encoded = [self._encode(f, 1) for f in feats]
        self.remove(ids[np.isin(ids, self.ids())])
        segment = Segment.build(ids, encoded, feats, self.vocabulary.size)
        self._attach(segment)
        self._maybe_merge()

    def remove(self, image_ids: np.ndarray) -> int:
        """Forget these images; ids not indexed are ignored. Returns how many were removed."""
        by_segment: dict[int, tuple[Segment, list[int]]] = {}
        for image_id in np.asarray(image_ids, np.int64).reshape(-1):
            hit = self._where.pop(int(image_id), None)
            if hit is not None:
                by_segment.setdefault(id(hit[0]), (hit[0], []))[1].append(hit[1])
        removed = 0
        for segment, rows in by_segment.values():
            rows_arr = np.array(rows, np.int64)
            np.subtract.at(self._df, segment.words_of_rows(rows_arr), 1)
            segment.alive[rows_arr] = False
            segment.alive_dirty = True
            removed += len(rows)
        if removed:
            self._drop_empty_segments()
        return removed

    def _attach(self, segment: Segment) -> None:
        self._segments.append(segment)
        self._df += segment.alive_word_counts()
        for row, image_id in enumerate(segment.ids):
            if segment.alive[row]:
                self._where[int(image_id)] = (segment, row)

    def _drop_empty_segments(self) -> None:
        for seg in [s for s in self._segments if s.n_alive == 0]:
            self._segments.remove(seg)

    def _maybe_merge(self) -> None:
        while len(self._segments) > self.config.max_segments:
            small = sorted(self._segments, key=lambda s: s.n_alive)[:2]
            merged = Segment.merge(small)
            for seg in small:
                self._segments.remove(seg)
                self._df -= seg.alive_word_counts()
            self._attach(merged)
            log.debug("merged segments of %s images", [s.n_alive for s in small])

    # -- search ----------------------------------------------------------------------------

    def _idf(self) -> np.ndarray:
        n = max(1, len(self._where))
        return np.log((n + 1.0) / (self._df + 1.0)).astype(np.float32)

    def query(self, photo: PhotoOrFeatures, k: int = 50, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best images by ASMK* score: (ids int64, scores float32), best first; only scores > 0.

        ``among``: score only these image ids (ids not indexed are ignored):
        the cost then grows with ``len(among)``, not with the index (11 ms,
        visual words included, at 2,000 store photos and at 100,000; a search
        of every image grows linearly: 20 ms at 2,000, 529 ms at 100,000;
        benchmarks/local_scale.py).
        """
        feats = self.extract_query(photo)
        if len(self._where) == 0 or len(feats) == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q_words, q_sigs = self._encode(feats, self.config.query_assignments)
        idf = self._idf()
        weights = idf[q_words]
        q_norm = np.sqrt(max(1, len(q_words)))
        rows_of: dict[int, list[int]] = {}
        if among is not None:
            for image_id in np.unique(np.asarray(among, np.int64)):
                found = self._where.get(int(image_id))
                if found is not None:
                    rows_of.setdefault(id(found[0]), []).append(found[1])
        all_ids, all_scores = [], []
        for seg in self._segments:
            if among is None:
                rows = np.arange(len(seg))
                s = seg.postings.score(q_words, q_sigs, weights, self._table)
            else:
                rows = np.array(sorted(rows_of.get(id(seg), [])), np.int64)
                s = seg.postings.score_rows(q_words, q_sigs, weights, rows, self._table)
            s = s / (np.sqrt(np.maximum(seg.n_words[rows], 1)) * q_norm)
            keep = seg.alive[rows] & (s > 0)
            all_ids.append(seg.ids[rows[keep]])
            all_scores.append(s[keep])
        ids = np.concatenate(all_ids)
        scores = np.concatenate(all_scores).astype(np.float32)
        if len(ids) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            ids, scores = ids[top], scores[top]
        order = np.lexsort((ids, -scores))
        return ids[order], scores[order]

    def verify(self, photo: PhotoOrFeatures, candidate_ids: np.ndarray) -> np.ndarray:
        """RANSAC inlier count of each candidate against the photo: (n,) int64, in the candidates' order."""
        feats = self.extract_query(photo)
        q_desc = feats.rootsift()
        ids = np.asarray(candidate_ids, np.int64).reshape(-1)
        missing = [int(i) for i in ids if int(i) not in self._where]
        if missing:
            raise NotFoundError(f"image id(s) not in the local-feature index: {missing[:10]}")
        out = np.zeros(len(ids), np.int64)
        for j, image_id in enumerate(ids):
            seg, row = self._where[int(image_id)]
            cand = seg.features(row)
            out[j] = verify_pair(feats.xy, q_desc, cand.xy, cand.rootsift(), self._verify)
        return out

    def search(self, photo: PhotoOrFeatures, global_ids: np.ndarray, global_distances: np.ndarray) -> LocalSearch:
        """The whole stage: local query, fusion with the global candidates, verification of the shortlist.

        ``global_ids`` / ``global_distances``: the global embedding's candidates,
        best first (distances between L2-normalised vectors, 0 … 2). Ids
        that this index does not hold are fused but not verified.
        """
        cfg = self.config
        timings: dict[str, float] = {}
        t = time.perf_counter()
        feats = self.extract_query(photo)
        timings["extract"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        l_ids, l_scores = self.query(feats, cfg.candidates)
        timings["query"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        g_ids = np.asarray(global_ids, np.int64).reshape(-1)
        n_fused = len(np.union1d(g_ids, l_ids))
        ids, scores = fuse(g_ids, np.asarray(global_distances, np.float64).reshape(-1), l_ids, l_scores,
                           length=n_fused, weight=cfg.fusion_weight, method=cfg.fusion)
        timings["fuse"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        n = min(cfg.shortlist, len(ids))
        inliers = np.full(len(ids), -1, np.int64)
        known = np.array([int(i) in self._where for i in ids[:n]], bool)
        head = ids[:n]
        if known.any():
            inliers[:n][known] = self.verify(feats, head[known])
        head_ids, head_scores, head_inl = rerank_verified(head, scores[:n], np.maximum(inliers[:n], 0),
                                                          min_inliers=cfg.min_inliers)
        # Unverifiable ids keep -1 after the re-ordering.
        was_known = dict(zip(head.tolist(), known.tolist()))
        head_inl = np.where([was_known[int(i)] for i in head_ids], head_inl, -1).astype(np.int64)
        timings["verify"] = (time.perf_counter() - t) * 1000
        return LocalSearch(
            ids=np.concatenate([head_ids, ids[n:]]),
            scores=np.concatenate([head_scores, scores[n:]]).astype(np.float32),
            inliers=np.concatenate([head_inl, inliers[n:]]),
            verified=int((head_inl >= cfg.min_inliers).sum()),
            timings_ms=timings,
            local_ids=l_ids,
            local_scores=l_scores,
            fused_ids=ids,
        )

    def reconfigure(self, config: LocalConfig) -> None:
        """Use ``config`` for searching from now on; it must agree on :attr:`LocalConfig.BUILD_FIELDS`."""
        for name in LocalConfig.BUILD_FIELDS:
            if getattr(config, name) != getattr(self.config, name):
                raise ConfigError(f"local index was built with {name}={getattr(self.config, name)!r}: "
                                  f"changing it needs the catalogue re-indexed")
        self.config = config
        self._query_extractor = _extractor(config, config.query_side)
        self._verify = config.verify_params()
        self._table = selectivity_table(config.alpha, config.tau)

    # -- cost ------------------------------------------------------------------------------

    def memory(self) -> dict[str, float]:
        """Bytes: ``ram_per_image`` (words, signatures and per-image arrays, in memory),
        ``disk_per_image`` (keypoints and descriptors for verification, memory-mapped
        once saved), ``vocabulary`` (fixed)."""
        n = max(1, len(self._where))
        return {
            "images": float(len(self._where)),
            "ram_per_image": sum(s.nbytes_memory for s in self._segments) / n,
            "disk_per_image": sum(s.nbytes_features for s in self._segments) / n,
            "vocabulary": float(self.vocabulary.centroids.nbytes),
        }

    # -- persistence -----------------------------------------------------------------------

    @property
    def converted(self) -> int:
        """Segments read from the older layout by word, which the next :meth:`save` rewrites."""
        return sum(seg.converted for seg in self._segments)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Persist under ``directory`` atomically: a reader sees the previous save or this one."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        previous = _read_manifest(root) if (root / MANIFEST).exists() else None
        generation = int(previous["generation"]) + 1 if previous else 1
        vocab_name = f"vocabulary-{hashlib.sha256(self.vocabulary.centroids.tobytes()).hexdigest()[:16]}.npy"
        if not (root / vocab_name).exists():
            tmp = root / f".tmp-{vocab_name}"
            self.vocabulary.save(tmp)
            os.replace(tmp, root / vocab_name)
        entries = []
        for seg in self._segments:
            if seg.name is None or seg.converted or not (root / seg.name / "ids.npy").exists():
                seg.write(root, f"seg-{uuid.uuid4().hex[:16]}")
            assert seg.name is not None
            if seg.alive_dirty or seg.alive_file is None or not (root / seg.name / seg.alive_file).exists():
                seg.write_alive(root, f"alive-{generation}.npy")
            entries.append({"name": seg.name, "alive": seg.alive_file, "images": seg.n_alive})
        manifest = {
            "format": FORMAT,
            "generation": generation,
            "config": dataclasses.asdict(self.config),
            "vocabulary": vocab_name,
            "vocabulary_size": self.vocabulary.size,
            "segments": entries,
            "images": len(self._where),
        }
        tmp = root / f".tmp-{MANIFEST}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / MANIFEST)
        fsync_dir(root)
        _collect_garbage(root, manifest)
        log.info("saved %d images in %d segments to %s", len(self._where), len(entries), root)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LocalIndex:
        """The index last saved under ``directory``."""
        root = Path(directory)
        if not (root / MANIFEST).exists():
            raise StoreError(f"{root}: no local-feature index here (no {MANIFEST})")
        manifest = _read_manifest(root)
        config = LocalConfig.from_dict(dict(manifest["config"]))
        vocabulary = Vocabulary.load(root / manifest["vocabulary"])
        if vocabulary.size != int(manifest["vocabulary_size"]):
            raise StoreError(f"{root}: vocabulary has {vocabulary.size} words, manifest says {manifest['vocabulary_size']}")
        index = cls(vocabulary, config)
        for entry in manifest["segments"]:
            index._attach(Segment.read(root, entry["name"], entry["alive"], vocabulary.size))
        return index


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((root / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise StoreError(f"{root / MANIFEST}: cannot read the local-feature manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{root / MANIFEST}: not a {FORMAT} manifest")
    return manifest


def _collect_garbage(root: Path, manifest: dict[str, Any]) -> None:
    """Delete what the manifest no longer names (old segments, old alive masks, leftovers)."""
    keep = {MANIFEST, manifest["vocabulary"]} | {e["name"] for e in manifest["segments"]}
    alive = {e["name"]: e["alive"] for e in manifest["segments"]}
    for path in root.iterdir():
        if path.name not in keep:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        elif path.is_dir():
            for f in path.glob("alive-*.npy"):
                if f.name != alive[path.name]:
                    f.unlink(missing_ok=True)

"""The local-feature stage: extraction, the visual-word index, verification, fusion, persistence."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import faiss
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from shoplens.errors import ConfigError, NotFoundError, StoreError
from shoplens.imaging import Photo, load_image, photo_from_array
from shoplens.local import LocalConfig, LocalIndex, Vocabulary, asmk, fuse, invfile, rerank_verified, vocabulary
from shoplens.local.features import FeatureExtractor, LocalFeatures
from shoplens.local.vocabulary import EXACT_ASSIGN_MAX_WORDS
from shoplens.threads import blas_threads

from .conftest import to_word_sorted_layout

REPO = Path(__file__).resolve().parents[1]
CONFIG = LocalConfig(max_keypoints=600)
MIN_INLIERS = CONFIG.min_inliers


def label(seed: int, size: tuple[int, int] = (300, 400)) -> np.ndarray:
    """A synthetic printed label: text lines, stripes and shapes on a coloured card."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(120, 255, 3)))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=22)
    for _ in range(7):
        x0, y0 = int(rng.integers(0, size[0] - 60)), int(rng.integers(0, size[1] - 60))
        x1, y1 = x0 + int(rng.integers(20, 80)), y0 + int(rng.integers(20, 80))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour, outline=(0, 0, 0))
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
    for line in range(9):
        text = "".join(rng.choice(list(letters), int(rng.integers(6, 12))))
        draw.text((int(rng.integers(5, 60)), 10 + line * 42), text, fill=tuple(int(v) for v in rng.integers(0, 90, 3)),
                  font=font)
    return np.asarray(img)


def warp(pixels: np.ndarray, angle: float = 20.0, scale: float = 0.8, tilt: float = 0.12) -> np.ndarray:
    """Rotate, scale and tilt (perspective) a picture onto a larger grey background."""
    h, w = pixels.shape[:2]
    out_w, out_h = int(w * 1.5), int(h * 1.4)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    rot[:, 2] += ((out_w - w) / 2, (out_h - h) / 2)
    affine = np.vstack([rot, [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [tilt / w, 0, 1]], np.float64)
    m = persp @ affine
    return cv2.warpPerspective(pixels, m, (out_w, out_h), borderValue=(90, 90, 90))


def _extract(p: Photo) -> LocalFeatures:
    return FeatureExtractor(CONFIG.max_side, CONFIG.max_keypoints, CONFIG.contrast_threshold).extract(p)


def photo(pixels: np.ndarray, name: str = "") -> Photo:
    return photo_from_array(np.ascontiguousarray(pixels, np.uint8), name)


@pytest.fixture(scope="module")
def labels() -> list[Photo]:
    return [photo(label(seed), f"label{seed}") for seed in range(6)]


@pytest.fixture(scope="module")
def index(labels: list[Photo]) -> LocalIndex:
    idx = LocalIndex(config=CONFIG)  # the generic vocabulary shipped with shoplens
    idx.add(np.arange(10, 16, dtype=np.int64), labels)
    return idx


def test_extract_caps_keypoints_and_size() -> None:
    pixels = np.asarray(Image.fromarray(label(1)).resize((900, 1200)))
    ex = FeatureExtractor(max_side=400, max_keypoints=150)
    feats = ex.extract(photo(pixels))
    assert 0 < len(feats) <= 150
    assert feats.sift.dtype == np.uint8 and feats.sift.shape == (len(feats), 128)
    assert feats.xy.max() < 400  # positions are in the shrunk image
    root = feats.rootsift()
    np.testing.assert_allclose(np.linalg.norm(root, axis=1), 1.0, atol=1e-5)


def test_warped_label_is_found_and_verified(index: LocalIndex, labels: list[Photo]) -> None:
    query = photo(warp(np.asarray(labels[2].pixels)))
    feats = index.extract(query)
    ids, scores = index.query(feats, k=6)
    assert ids[0] == 12
    assert scores[0] > 2 * scores[1]
    inliers = index.verify(feats, np.arange(10, 16))
    assert inliers[2] >= 60
    assert np.delete(inliers, 2).max() < MIN_INLIERS


def test_trained_vocabulary_and_affine_model(labels: list[Photo]) -> None:
    idx = LocalIndex.train_vocabulary(labels, LocalConfig(vocabulary_size=512, model="affine"))
    assert idx.vocabulary.size == 512
    idx.add(np.arange(6, dtype=np.int64), labels)
    inliers = idx.verify(photo(warp(np.asarray(labels[4].pixels), angle=-15, scale=0.9, tilt=0.05)), np.arange(6))
    assert inliers[4] >= 40 and np.delete(inliers, 4).max() < MIN_INLIERS


def test_search_fuses_and_verifies(index: LocalIndex, labels: list[Photo]) -> None:
    query = photo(warp(np.asarray(labels[3].pixels), angle=-30, scale=0.7))
    # The global list is wrong: label 3 (id 13) comes last; 999 is unknown to the local index.
    res = index.search(query, np.array([10, 11, 999, 13]), np.array([0.2, 0.3, 0.4, 0.9]))
    assert res.ids[0] == 13 and res.inliers[0] >= 40
    assert res.verified == 1
    assert res.inliers[res.ids.tolist().index(999)] == -1
    assert set(res.ids.tolist()) == {10, 11, 12, 13, 14, 15, 999}
    assert len(res.ids) == len(res.scores) == len(res.inliers)
    assert set(res.timings_ms) == {"extract", "query", "fuse", "verify"}
    # Re-configured to verify nothing: the fused order stays.
    index.reconfigure(dataclasses.replace(CONFIG, shortlist=0))
    try:
        res0 = index.search(query, np.array([10, 11, 999, 13]), np.array([0.2, 0.3, 0.4, 0.9]))
        assert res0.verified == 0 and (res0.inliers == -1).all()
        np.testing.assert_array_equal(res0.ids, res0.fused_ids)
    finally:
        index.reconfigure(CONFIG)
    with pytest.raises(ConfigError):
        index.reconfigure(dataclasses.replace(CONFIG, max_keypoints=50))


def test_unrelated_image_is_not_verified(index: LocalIndex) -> None:
    query = photo(warp(label(99)))
    inliers = index.verify(query, index.ids())
    assert inliers.max() < MIN_INLIERS


def test_blank_photo_gives_nothing(index: LocalIndex) -> None:
    blank = photo(np.full((200, 200, 3), 128, np.uint8))
    ids, scores = index.query(blank, k=5)
    assert len(ids) == 0 and len(scores) == 0
    assert index.verify(blank, np.array([10, 11])).tolist() == [0, 0]


def test_verify_unknown_id_raises(index: LocalIndex, labels: list[Photo]) -> None:
    with pytest.raises(NotFoundError):
        index.verify(labels[0], np.array([10, 999]))


def test_add_remove_replace_save_load(tmp_path: Path, labels: list[Photo]) -> None:
    feats = [_extract(p) for p in labels]
    idx = LocalIndex(config=CONFIG)
    idx.add(np.array([1, 2, 3]), feats[:3])
    idx.add(np.array([4, 5]), feats[3:5])
    assert len(idx) == 5 and 4 in idx and 6 not in idx
    assert idx.remove(np.array([2, 42])) == 1
    assert 2 not in idx
    query = idx.extract(photo(warp(np.asarray(labels[1].pixels))))
    assert 2 not in idx.query(query, k=10)[0]
    # Replacing: id 3 now holds label 1's features, so the warped label 1 finds id 3.
    idx.add(np.array([3]), [feats[1]])
    assert idx.query(query, k=1)[0].tolist() == [3]

    store = tmp_path / "local"
    idx.save(store)
    loaded = LocalIndex.load(store)
    assert loaded.ids().tolist() == [1, 3, 4, 5]
    a, b = idx.query(query, k=10), loaded.query(query, k=10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    np.testing.assert_array_equal(idx.verify(query, np.array([1, 3])), loaded.verify(query, np.array([1, 3])))
    assert loaded.config == CONFIG

    # A second save after a removal keeps only what its manifest names.
    loaded.remove(np.array([1]))
    loaded.add(np.array([6]), [feats[5]])
    loaded.save(store)
    manifest = json.loads((store / "MANIFEST.json").read_text())
    names = {p.name for p in store.iterdir()}
    assert names == {"MANIFEST.json", manifest["vocabulary"]} | {s["name"] for s in manifest["segments"]}
    for s in manifest["segments"]:
        assert sorted(p.name for p in (store / s["name"]).glob("alive-*")) == [s["alive"]]
    again = LocalIndex.load(store)
    assert again.ids().tolist() == [3, 4, 5, 6]


def test_segments_saved_by_word_are_read(tmp_path: Path, labels: list[Photo]) -> None:
    feats = [_extract(p) for p in labels]
    idx = LocalIndex(config=LocalConfig(**{**CONFIG.__dict__, "max_segments": 3}))
    for i in range(4):
        idx.add(np.array([i + 1]), feats[i:i + 1])
    idx.remove(np.array([2]))
    store = tmp_path / "local"
    idx.save(store)
    manifest = json.loads((store / "MANIFEST.json").read_text())
    for seg in manifest["segments"]:
        to_word_sorted_layout(store / seg["name"])
    old = LocalIndex.load(store)
    assert old.ids().tolist() == [1, 3, 4]
    for q in (labels[0], labels[3]):
        query = idx.extract(photo(warp(np.asarray(q.pixels))))
        a, b = idx.query(query, k=10), old.query(query, k=10)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
        among = np.array([3, 4])
        np.testing.assert_allclose(idx.query(query, k=2, among=among)[1], old.query(query, k=2, among=among)[1], rtol=1e-6)
    np.testing.assert_array_equal(idx._df, old._df)
    # Saved again, every segment is rewritten in the new layout, its keypoint files hard links to the
    # old ones, and the old directories go.
    assert old.converted == len(manifest["segments"])
    inodes = {(store / seg["name"] / "sift.npy").stat().st_ino for seg in manifest["segments"]}
    old.save(store)
    assert old.converted == 0
    segments = json.loads((store / "MANIFEST.json").read_text())["segments"]
    assert all((store / seg["name"] / "row_ptr.npy").exists() and not (store / seg["name"] / "ptr.npy").exists()
               for seg in segments)
    assert inodes == {(store / seg["name"] / "sift.npy").stat().st_ino for seg in segments}
    assert not any((store / seg["name"]).exists() for seg in manifest["segments"])
    # and it goes on as any index (a new image, merges)
    old.add(np.array([9]), feats[5:6])
    idx.add(np.array([9]), feats[5:6])
    old.save(store)
    again = LocalIndex.load(store)
    assert again.converted == 0
    a, b = idx.query(query, k=10), again.query(query, k=10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    candidates = np.array([1, 3, 4, 9])
    np.testing.assert_array_equal(idx.verify(query, candidates), again.verify(query, candidates))


def test_interrupted_save_leaves_previous_state(tmp_path: Path, labels: list[Photo]) -> None:
    idx = LocalIndex(config=CONFIG)
    idx.add(np.array([1, 2]), labels[:2])
    store = tmp_path / "local"
    idx.save(store)
    # A writer that died half-way: a segment written, the manifest not replaced.
    (store / ".tmp-seg-dead").mkdir()
    (store / "seg-orphan").mkdir()
    (store / ".tmp-MANIFEST.json").write_text("{half")
    assert LocalIndex.load(store).ids().tolist() == [1, 2]
    idx.add(np.array([3]), labels[2:3])
    idx.save(store)
    assert not (store / ".tmp-seg-dead").exists() and not (store / "seg-orphan").exists()
    assert LocalIndex.load(store).ids().tolist() == [1, 2, 3]


def test_corrupt_store_raises(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        LocalIndex.load(tmp_path)
    (tmp_path / "MANIFEST.json").write_text('{"format": "something-else"}')
    with pytest.raises(StoreError):
        LocalIndex.load(tmp_path)


@pytest.mark.parametrize("layout", ["by-image", "by-word"])
def test_segment_whose_postings_do_not_fit_raises(tmp_path: Path, labels: list[Photo], layout: str) -> None:
    idx = LocalIndex(config=CONFIG)
    idx.add(np.array([1, 2]), labels[:2])
    store = tmp_path / "local"
    idx.save(store)
    seg = store / json.loads((store / "MANIFEST.json").read_text())["segments"][0]["name"]
    if layout == "by-word":
        to_word_sorted_layout(seg)
        rows = np.load(seg / "rows.npy")
        rows[-1] = 2  # an image row the segment does not have
        np.save(seg / "rows.npy", rows)
    else:
        np.save(seg / "words.npy", np.load(seg / "words.npy")[:-1])  # a truncated file
    with pytest.raises(StoreError, match="inconsistent"):
        LocalIndex.load(store)


def test_merged_segments_give_the_same_answers(labels: list[Photo]) -> None:
    feats = [_extract(p) for p in labels]
    vocab = Vocabulary.generic()
    one = LocalIndex(vocab, CONFIG)
    one.add(np.arange(6), feats)
    many = LocalIndex(vocab, LocalConfig(**{**CONFIG.__dict__, "max_segments": 2}))
    for i in range(6):
        many.add(np.array([i]), feats[i:i + 1])
    assert len(many._segments) <= 2
    query = one.extract(photo(warp(np.asarray(labels[5].pixels))))
    a, b = one.query(query, k=6), many.query(query, k=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)


@pytest.mark.parametrize("chunk", [50, 1 << 20], ids=["small-chunks", "one-chunk"])
def test_scoring_only_some_images_gives_their_scores_from_the_whole_index(
    labels: list[Photo], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entries scored a few at a time (many chunks, rows split between them) or all at once.
    monkeypatch.setattr(invfile, "CHUNK_ENTRIES", chunk)
    feats = [_extract(p) for p in labels]
    many = LocalIndex(Vocabulary.generic(), LocalConfig(**{**CONFIG.__dict__, "max_segments": 3}))
    for i in range(6):  # several segments, one image removed
        many.add(np.array([i + 10]), feats[i:i + 1])
    many.remove(np.array([13]))
    for q in (photo(warp(np.asarray(labels[2].pixels))), photo(warp(np.asarray(labels[5].pixels), angle=-10))):
        query = many.extract(q)
        all_ids, all_scores = many.query(query, k=10)
        whole = dict(zip(all_ids.tolist(), all_scores.tolist()))
        among = np.array([15, 12, 13, 99, 11])  # 13 removed, 99 never indexed
        ids, scores = many.query(query, k=10, among=among)
        assert set(ids.tolist()) <= {11, 12, 15} and set(ids.tolist()) == {i for i in (11, 12, 15) if i in whole}
        np.testing.assert_allclose(scores, [whole[int(i)] for i in ids], rtol=1e-5)
        assert list(scores) == sorted(scores, reverse=True)
        top, _ = many.query(query, k=1, among=among)
        assert len(top) == 1 and top[0] == ids[0]
    assert many.query(query, k=5, among=np.array([], np.int64))[0].size == 0


def _score_by_hand(images: list[tuple[np.ndarray, np.ndarray]], q_words: np.ndarray, q_sigs: np.ndarray,
                   q_weights: np.ndarray, table: np.ndarray) -> np.ndarray:
    """ASMK* of each image, word by shared word (the definition, no layout)."""
    out = []
    for words, sigs in images:
        total = 0.0
        for w, s in zip(words.tolist(), sigs):
            hit = np.flatnonzero(q_words == w)
            if len(hit):
                h = int(np.bitwise_count(np.bitwise_xor(s, q_sigs[hit[0]])).sum())
                total += float(table[h]) * float(q_weights[hit[0]])
        out.append(total)
    return np.array(out, np.float32)


@pytest.mark.parametrize("chunk", [13, 1 << 20], ids=["small-chunks", "one-chunk"])
def test_postings_score_is_asmk_by_hand(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invfile, "CHUNK_ENTRIES", chunk)
    rng = np.random.default_rng(0)
    k = 64
    images = []
    for n in (5, 0, 12, 30, 1, 17):  # an image without words among them
        words = np.sort(rng.choice(k, n, replace=False)).astype(np.int64)
        images.append((words, rng.integers(0, 2**63, (n, 2), dtype=np.uint64)))
    postings = invfile.Postings.build(images, k)
    q_words = np.unique(np.r_[rng.choice(k, 20, replace=False), images[2][0][0]])  # distinct, as aggregate() gives
    q_sigs = rng.integers(0, 2**63, (len(q_words), 2), dtype=np.uint64)
    q_sigs[np.searchsorted(q_words, images[2][0][0])] = images[2][1][0]  # an identical signature: table[0]
    q_weights = rng.uniform(0.5, 2.0, len(q_words)).astype(np.float32)
    table = asmk.selectivity_table(3.0, 0.0)
    want = _score_by_hand(images, q_words, q_sigs, q_weights, table)
    assert (want > 0).sum() >= 3
    np.testing.assert_allclose(postings.score(q_words, q_sigs, q_weights, table), want, rtol=1e-5)
    rows = np.array([4, 0, 2])  # any order
    np.testing.assert_allclose(postings.score_rows(q_words, q_sigs, q_weights, rows, table), want[rows], rtol=1e-5)
    assert postings.score_rows(q_words, q_sigs, q_weights, np.array([], np.int64), table).shape == (0,)
    # the words back, per image, and counted over the images kept
    for (w, s), (w2, s2) in zip(images, postings.image_words()):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(s, s2)
    alive = np.array([True, True, False, True, True, False])
    np.testing.assert_array_equal(postings.word_counts(alive),
                                  np.bincount(np.concatenate([images[i][0] for i in np.flatnonzero(alive)]), minlength=k))
    np.testing.assert_array_equal(postings.words_of_rows(np.array([3, 2])), np.concatenate([images[3][0], images[2][0]]))


def test_memory_report(index: LocalIndex) -> None:
    mem = index.memory()
    assert mem["images"] == 6
    # Postings: 2 + 16 bytes per distinct word of an image (a word id, a signature); verification: 136 bytes per keypoint.
    assert 0 < mem["ram_per_image"] < 18 * 700
    assert 136 * 50 < mem["disk_per_image"] <= 136 * CONFIG.max_keypoints


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        LocalConfig(model="similarity")
    with pytest.raises(ConfigError):
        LocalConfig.from_dict({"vocabulary_size": 10, "colour": "red"})
    with pytest.raises(ConfigError):
        LocalConfig(query_max_side=16)


def test_fuse_rrf_by_hand() -> None:
    ids, scores = fuse(np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3]), np.array([3, 4]), np.array([0.9, 0.5]),
                       length=3, weight=0.5, method="rrf", rrf_k=0.0)
    # 1: .5/1; 2: .5/2; 3: .5/3 + .5/1; 4: .5/2  -> 3 (0.667), 1 (0.5), then 2 and 4 tie at 0.25: global first.
    assert ids.tolist() == [3, 1, 2]
    np.testing.assert_allclose(scores, [0.5 / 3 + 0.5, 0.5, 0.25], rtol=1e-6)
    only_global = fuse(np.array([7, 8]), np.array([0.1, 0.2]), np.array([9]), np.array([1.0]), weight=0.0)
    assert only_global[0].tolist()[:2] == [7, 8]


def test_fuse_score_by_hand() -> None:
    ids, scores = fuse(np.array([1, 2]), np.array([0.0, 1.0]), np.array([2, 3]), np.array([1.0, 0.0]),
                       length=5, weight=0.25, method="score")
    # global cos 1, 0.5 -> 1, 0; local 1, 0 -> 1, 0.   1: .75; 2: 0 + .25; 3: 0.
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(scores, [0.75, 0.25, 0.0], atol=1e-6)
    with pytest.raises(ValueError):
        fuse(np.array([1]), np.array([0.1]), np.array([1]), np.array([1.0]), method="max")


def test_rerank_verified_by_hand() -> None:
    ids, scores, inl = rerank_verified(np.array([5, 6, 7, 8]), np.array([0.9, 0.8, 0.7, 0.6]),
                                       np.array([3, 40, 12, 80]), min_inliers=12)
    assert ids.tolist() == [8, 6, 7, 5]
    assert inl.tolist() == [80, 40, 12, 3]
    np.testing.assert_allclose(scores, [0.6, 0.8, 0.7, 0.9])


# -- real photos ---------------------------------------------------------------------------------


def _grocery() -> Path:
    root = Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data") / "grocery"
    if not (root / "catalog.csv").exists():
        pytest.skip(f"real photos not found at {root.parent} (set SHOPLENS_DATA to ../shared/data)")
    return root


@pytest.mark.data
@pytest.mark.parametrize("query_max_side", [0, 224])
@pytest.mark.slow
def test_grocery_packages_found_by_local_index(query_max_side: int) -> None:
    root = _grocery()
    with open(root / "catalog.csv", newline="") as f:
        catalog = [r for r in csv.DictReader(f) if r["top_level"] == "Packages"]
    with open(root / "photos.csv", newline="") as f:
        pids = {r["product_id"] for r in catalog}
        photos = [r for r in csv.DictReader(f) if r["split"] == "val" and r["product_id"] in pids]
    cat_photos = [load_image(root / r["image"]) for r in catalog]
    idx = LocalIndex(None, LocalConfig(query_max_side=query_max_side))
    ids = np.array([int(r["product_id"]) for r in catalog], np.int64)
    idx.add(ids, cat_photos)
    queries = photos[::10]  # 10 photos, every tenth
    hits = verified = 0
    for r in queries:
        feats = idx.extract_query(load_image(root / r["image"]))
        top, _ = idx.query(feats, k=5)
        hits += int(int(r["product_id"]) in top.tolist())
        inl = idx.verify(feats, top)
        verified += int(top[np.argmax(inl)] == int(r["product_id"]) and inl.max() >= MIN_INLIERS)
    assert hits >= 6, f"right product in the local top 5 for only {hits} of {len(queries)} photos"
    assert verified >= 4, f"verification puts the right product first for only {verified} of {len(queries)}"


@pytest.mark.data
def test_query_photos_are_shrunk_to_query_max_side() -> None:
    root = _grocery()
    with open(root / "photos.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "val")
    store_photo = load_image(root / row["image"])
    assert max(store_photo.pixels.shape[:2]) > 224
    idx = LocalIndex(None, LocalConfig(query_max_side=224))
    catalogue_side, query_side = idx.extract(store_photo), idx.extract_query(store_photo)
    assert catalogue_side.xy.max() >= 224 > query_side.xy.max()
    assert 0 < len(query_side) < len(catalogue_side)
    # Search-time only: a re-configured index searches at the catalogue's size again.
    idx.reconfigure(dataclasses.replace(idx.config, query_max_side=0))
    again = idx.extract_query(store_photo)
    np.testing.assert_array_equal(again.sift, catalogue_side.sift)
    np.testing.assert_array_equal(again.xy, catalogue_side.xy)


@pytest.mark.parametrize("size", [300, 4096])
@pytest.mark.parametrize("k", [1, 3])
def test_vocabulary_assignment_is_exact(size: int, k: int) -> None:
    """Words and squared distances match a brute-force search (FAISS flat), ties aside, nearest first."""
    rng = np.random.default_rng(size + k)
    centroids = np.abs(rng.standard_normal((size, 128))).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    x = centroids[rng.integers(size, size=2500)] + 0.05 * rng.standard_normal((2500, 128)).astype(np.float32)
    words, dist = Vocabulary(centroids).assign(x, k)  # 2,500 rows: more than one chunk
    brute = faiss.IndexFlatL2(128)
    brute.add(centroids)
    ref_dist, ref_words = brute.search(np.ascontiguousarray(x, dtype=np.float32), k)
    assert words.shape == (2500, k) and words.dtype == np.int64
    assert np.mean(words == ref_words) > 0.999
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-3, atol=1e-3)
    assert np.all(np.diff(dist, axis=1) >= 0)


@pytest.mark.data
def test_split_assignment_gives_the_words_of_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """With BLAS on one thread (as in a search), a store photo's descriptors are assigned in row blocks
    on the shared threads (also for several callers at once): exactly the words of one product, its distances."""
    root = _grocery()
    with open(root / "photos.csv", newline="") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"][:20]
    descs = (FeatureExtractor().extract(load_image(root / r["image"])).rootsift() for r in val)
    desc = next(d for d in descs if len(d) >= 2 * vocabulary.PARALLEL_ASSIGN_MIN_ROWS)  # most photos have ~900
    vocab = Vocabulary.generic()
    with monkeypatch.context() as m:
        m.setattr(vocabulary, "PARALLEL_ASSIGN_MIN_ROWS", len(desc) + 1)  # one product, whatever BLAS's threads
        whole = vocab.assign(desc, 2)
    monkeypatch.setattr(vocabulary, "ASSIGN_THREADS", 2)  # split even on a one-core machine
    blocks: list[tuple[int, int]] = []
    assign_rows = Vocabulary._assign_rows

    def recording(self: Vocabulary, x: np.ndarray, k: int, span: tuple[int, int], *out: np.ndarray) -> None:
        blocks.append(span)
        assign_rows(self, x, k, span, *out)

    monkeypatch.setattr(Vocabulary, "_assign_rows", recording)
    with blas_threads(2):  # BLAS shares out the product itself: not split
        np.testing.assert_array_equal(vocab.assign(desc, 2)[0], whole[0])
    assert blocks == [(0, len(desc))]
    blocks.clear()
    # The words are the same; the distances to float32 rounding only: BLAS promises no bit-identical product
    # across row counts or thread counts (OpenBLAS 0.3.31 differs in the 7th digit between them).
    with blas_threads(1):
        split = vocab.assign(desc, 2)
        assert blocks == [(0, len(desc) // 2), (len(desc) // 2, len(desc))]
        np.testing.assert_array_equal(split[0], whole[0])
        np.testing.assert_allclose(split[1], whole[1], rtol=1e-5, atol=1e-6)
        with ThreadPoolExecutor(4) as pool:
            for words, dist in pool.map(lambda _: vocab.assign(desc, 2), range(8)):
                np.testing.assert_array_equal(words, whole[0])
                np.testing.assert_allclose(dist, whole[1], rtol=1e-5, atol=1e-6)


def test_large_vocabulary_is_searched_approximately() -> None:
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((EXACT_ASSIGN_MAX_WORDS + 1, 128)).astype(np.float32)
    vocab = Vocabulary(centroids)
    words, _ = vocab.assign(centroids[:200] + 1e-3, 1)
    assert np.mean(words[:, 0] == np.arange(200)) > 0.95

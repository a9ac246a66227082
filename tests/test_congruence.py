"""Every store engine keeps the CatalogueStore contract, and they agree.

- A registry-wide contract test runs the same checks on every registered
  engine (a new engine is tested the moment it is registered).
- Congruence: the same catalogue and queries give the same neighbours and
  distances on the embedded engine and on Milvus (Lite, the same client API
  as a cluster), and approximate indexes agree with exact search within a
  stated recall.
- Migration between engines is verified by counts and gives the same results.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shoplens.errors import StoreError
from shoplens.store import (
    CatalogueStore,
    EmbeddedStore,
    ImageRecord,
    ProductRecord,
    WriteBatch,
    list_stores,
    open_catalogue_store,
)
from shoplens.store.migrate import copy_catalogue
from shoplens.store.vectors import ann_threshold

HAS_MILVUS = importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None
needs_milvus = pytest.mark.skipif(not HAS_MILVUS, reason="pymilvus/milvus-lite not installed (pip install 'shoplens[milvus]')")

#: Recall@10 of the approximate kinds against exact search on the clustered test data (nprobe 8 of 16 lists).
MIN_RECALL = 0.95


class Identity:
    def project(self, domain: str, raw: np.ndarray) -> np.ndarray:
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def version(self, domain: str) -> str:
        return "identity"


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Vectors around a few centres, like embeddings of a catalogue's categories."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def product(pid: str, domain: str = "other_product") -> ProductRecord:
    return ProductRecord(pid, f"title {pid}", f"cat{int(pid[1:]) % 3}", "catalogue", domain, "catalogue", {"price": int(pid[1:])})


def image(pid: str, i: int, vec: np.ndarray, domain: str = "other_product") -> ImageRecord:
    return ImageRecord(pid, f"{pid}-{i}.jpg", f"sha-{pid}-{i}", domain, "sig", vec)


def fill(store: CatalogueStore, vectors: np.ndarray, batch: int = 100) -> list[int]:
    """One product per vector (p0, p1, ...), written in batches; returns the image ids."""
    ids: list[int] = []
    for start in range(0, len(vectors), batch):
        rng = range(start, min(start + batch, len(vectors)))
        ids += store.write(WriteBatch(products=[product(f"p{i}") for i in rng], add_images=[image(f"p{i}", 0, vectors[i]) for i in rng]))
    return ids


def pids(store: CatalogueStore, ids: np.ndarray) -> list[list[str]]:
    """Search result ids as product ids (the engines allocate different image ids)."""
    owner = store.image_products([int(i) for i in ids.ravel() if i >= 0])
    return [[owner[int(i)] for i in row if i >= 0] for row in ids]


# -- one location per registered engine ----------------------------------------
def _milvus_location(tmp_path: Path) -> str:
    uri = os.environ.get("SHOPLENS_TEST_MILVUS")  # e.g. milvus://localhost:19530 for a real cluster
    if not uri:
        pytest.skip("no Milvus cluster to test against (set SHOPLENS_TEST_MILVUS=milvus://HOST:PORT)")
    return f"{uri.rstrip('/')}/t{os.getpid()}_{tmp_path.name[-12:].replace('-', '_')}"


def _lite_location(tmp_path: Path) -> str:
    if not HAS_MILVUS:
        pytest.skip("pymilvus/milvus-lite not installed (pip install 'shoplens[milvus]')")
    return f"milvus-lite:{tmp_path / 'milvus.db'}#cat"


LOCATIONS: dict[str, Callable[[Path], str]] = {
    "embedded": lambda tmp: str(tmp / "store"),
    "embedded:": lambda tmp: f"embedded:{tmp / 'store'}",
    "milvus:": _milvus_location,
    "milvus-lite:": _lite_location,
}
#: Engine options tested too: (registered engine, keyword arguments).
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {name: (name, {}) for name in LOCATIONS}
VARIANTS["embedded+ivfsq8"] = ("embedded", {"index": "ivfsq8", "ann": {"nlist": 4, "nprobe": 2}})
VARIANTS["embedded+ivfflat"] = ("embedded", {"index": "ivfflat", "ann": {"nlist": 4, "nprobe": 2}})


def test_every_registered_engine_has_a_test_location() -> None:
    assert set(list_stores()) == set(LOCATIONS), "register a test location for each store engine"


# Milvus Lite starts a server for each test (about 3 s): its variant runs in the slow lane.
@pytest.fixture(params=[pytest.param(v, marks=pytest.mark.slow) if v.startswith("milvus-lite") else v for v in sorted(VARIANTS)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, object]]:
    engine, kwargs = VARIANTS[request.param]
    return LOCATIONS[engine](tmp_path), kwargs


def test_store_contract(location: tuple[str, dict[str, object]]) -> None:
    """Atomic writes, reads, search with filters, deletes and updates visible at once, durable on reopen."""
    where, kwargs = location
    v = clustered(60, seed=1)
    store = open_catalogue_store(where, Identity(), **kwargs)
    try:
        ids = fill(store, v, batch=25)
        store.persist()  # an embedded approximate index is trained here, from the stored vectors
        if kwargs.get("index"):
            assert store.index("other_product").kind == kwargs["index"]  # type: ignore[attr-defined]
        assert store.count_products() == 60 and store.count_images("other_product") == 60
        assert store.count_vectors("other_product") == 60 and store.count_images("apparel") == 0
        assert store.get_product("p7") == product("p7")
        assert [p.product_id for p in store.list_products(0, 3)] == ["p0", "p1", "p10"]
        assert store.find_image("p7", "p7-0.jpg") == (ids[7], "sha-p7-0", "sig", "other_product")
        assert store.product_images("p7") == [(ids[7], "other_product", "p7-0.jpg")]
        assert store.image_source(ids[7]) == "p7-0.jpg"
        # The photos' content hashes in one question (a search's thumbnails); an unknown id is left out.
        wanted = {ids[7]: "sha-p7-0", ids[8]: "sha-p8-0"}
        assert store.image_sha1s([ids[7], ids[8], ids[8], 10**9]) == wanted
        assert CatalogueStore.image_sha1s(store, [ids[7], ids[8], 10**9]) == wanted  # the ABC's own answer agrees
        d, found = store.search("other_product", v[:3], 5)
        atol = 0.01 if kwargs.get("index") == "ivfsq8" else 1e-3  # 8-bit codes: distances within ~0.005
        assert pids(store, found[:, :1]) == [["p0"], ["p1"], ["p2"]] and np.allclose(d[:, 0], 0, atol=atol)
        assert np.all(np.diff(d, axis=1) >= -1e-6)  # nearest first
        assert store.search("apparel", v[:1], 5)[1].shape[1] == 0

        # the filter runs inside the search: only allowed ids come back, as many as asked
        allowed = np.array(ids[40:46], dtype=np.int64)
        _, found = store.search("other_product", v[:1], 4, allowed)
        assert len(found[0][found[0] >= 0]) == 4 and set(found[0][found[0] >= 0]) <= set(allowed.tolist())

        # delete and update, visible to the next search
        store.write(WriteBatch(delete_products=["p0"]))
        _, found = store.search("other_product", v[:1], 60)
        assert "p0" not in pids(store, found)[0] and store.get_product("p0") is None
        new = store.write(WriteBatch(remove_images=[(ids[1], "other_product")], add_images=[image("p1", 1, v[50])]))
        _, found = store.search("other_product", v[1:2], 60)
        assert ids[1] not in found[0].tolist() and new[0] in found[0].tolist()
        assert store.product_images("p1") == [(new[0], "other_product", "p1-1.jpg")]
        assert store.count_images("other_product") == store.count_vectors("other_product") == 59

        # a write that cannot apply leaves nothing behind
        with pytest.raises(Exception):  # noqa: B017 - each engine raises its own (sqlite3.IntegrityError, StoreError)
            store.write(WriteBatch(products=[product("p99")], add_images=[image("nobody", 0, v[0])]))
        assert store.get_product("p99") is None and store.count_images() == 59
        assert store.count_vectors("other_product") == 59
    finally:
        store.close()

    again = open_catalogue_store(where, Identity(), create=False, **kwargs)
    try:
        _, found = again.search("other_product", v[5:6], 3)
        assert pids(again, found)[0][0] == "p5" and again.count_products() == 59
        assert again.count_vectors("other_product") == 59
    finally:
        again.close()


def test_unknown_locations_are_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unknown store location"):
        open_catalogue_store("qdrant://localhost:6333/x")
    with pytest.raises(StoreError, match="expected milvus://HOST:PORT/NAME"):
        open_catalogue_store("milvus://localhost")
    with pytest.raises(StoreError, match=r"\.db"):
        open_catalogue_store(f"milvus-lite:{tmp_path / 'x'}")
    with pytest.raises(StoreError, match="no such store"):
        open_catalogue_store(tmp_path / "none", create=False)


# -- congruence ----------------------------------------------------------------
@needs_milvus
@pytest.mark.slow
def test_embedded_and_milvus_give_the_same_results(tmp_path: Path) -> None:
    v = clustered(400, seed=2)
    queries = clustered(25, seed=3)
    embedded = EmbeddedStore(tmp_path / "e", Identity(), index="flat")
    milvus = open_catalogue_store(f"milvus-lite:{tmp_path / 'm.db'}", Identity(), index="flat")
    try:
        fill(embedded, v)
        fill(milvus, v)
        for allowed_pids in (None, [f"p{i}" for i in range(0, 400, 7)]):
            results = []
            for store in (embedded, milvus):
                allowed = None
                if allowed_pids is not None:
                    allowed = np.array([store.find_image(p, f"{p}-0.jpg")[0] for p in allowed_pids], dtype=np.int64)  # type: ignore[index]
                d, ids = store.search("other_product", queries, 10, allowed)
                results.append((d, pids(store, ids)))
            (d_e, p_e), (d_m, p_m) = results
            assert p_e == p_m
            np.testing.assert_allclose(d_e, d_m, atol=1e-4)
    finally:
        embedded.close()
        milvus.close()


# ivfpq: on 3,000 32-d vectors it trains 4 sub-quantizers of 4 bits, a 16-bit code per vector: a
# memory-for-recall trade (measured 0.17); the bar only says the code still points the right way.
@pytest.mark.parametrize("kind, min_recall", [("ivfflat", MIN_RECALL), ("ivfsq8", MIN_RECALL), ("ivfpq", 0.1)])
def test_approximate_agrees_with_exact(tmp_path: Path, kind: str, min_recall: float) -> None:
    v = clustered(3000, seed=4)
    queries = clustered(50, seed=5)
    exact = EmbeddedStore(tmp_path / "exact", Identity(), index="flat")
    approx = EmbeddedStore(tmp_path / kind, Identity(), index=kind, ann={"nlist": 16, "nprobe": 8})
    fill(exact, v, batch=5000)
    fill(approx, v, batch=5000)
    approx.rebuild("other_product")  # trains on the stored vectors
    assert approx.index("other_product").kind == kind
    _, truth = exact.search("other_product", queries, 10)
    _, found = approx.search("other_product", queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recall >= min_recall, recall
    # deletes are visible at once in the approximate index too
    gone = int(found[0, 0])
    approx.write(WriteBatch(delete_products=[approx.image_products([gone])[gone]]))
    assert gone not in approx.search("other_product", queries[:1], 10)[1][0].tolist()
    exact.close()
    approx.close()


def test_auto_switches_to_approximate_above_the_threshold(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    v = clustered(1200, seed=6)
    store = EmbeddedStore(tmp_path / "s", Identity(), ann_threshold=1000, ann={"nlist": 16, "nprobe": 16})
    fill(store, v[:900], batch=900)
    store.persist()
    assert store.index("other_product").kind == "flat"  # exact while small
    fill_more = range(900, 1200)
    store.write(WriteBatch(products=[product(f"p{i}") for i in fill_more], add_images=[image(f"p{i}", 0, v[i]) for i in fill_more]))
    store.persist()  # end of an indexing run: retrained as IVF from the stored vectors
    index = store.index("other_product")
    assert index.kind == "ivfsq8" and len(index) == 1200
    store.close()
    # a damaged ANN file is rebuilt from the stored descriptors, with a log line
    path = tmp_path / "s" / "index" / "other_product.vidx"
    path.write_bytes(path.read_bytes()[:-100])
    again = EmbeddedStore(tmp_path / "s", Identity(), ann_threshold=1000, ann={"nlist": 16, "nprobe": 16})
    with caplog.at_level("WARNING"):
        _, ids = again.search("other_product", v[1100:1101], 1)
    assert "damaged vector index" in caplog.text and "rebuilding" in caplog.text
    assert again.index("other_product").kind == "ivfsq8" and again.image_products(ids[0].tolist()) == {int(ids[0, 0]): "p1100"}
    again.close()


# -- migration -----------------------------------------------------------------
@needs_milvus
def test_auto_threshold_scales_with_the_dimension(tmp_path: Path) -> None:
    # A single-query flat scan reads count x dim floats: the default threshold keeps that bounded.
    assert [ann_threshold(d) for d in (512, 1280, 2560, 100_000)] == [50_000, 20_000, 10_000, 5_000]
    store = EmbeddedStore(tmp_path / "s", Identity())
    assert store.wanted_kind(19_999, 1280) == "flat" and store.wanted_kind(20_000, 1280) == "ivfsq8"
    assert store.wanted_kind(19_999, 512) == "flat" and store.wanted_kind(10_000, 2560) == "ivfsq8"
    given = EmbeddedStore(tmp_path / "t", Identity(), ann_threshold=1000)  # an explicit count wins
    assert given.wanted_kind(999, 2560) == "flat" and given.wanted_kind(1000, 8) == "ivfsq8"
    store.close()
    given.close()


@pytest.mark.slow
def test_migrate_embedded_to_milvus_and_back(tmp_path: Path) -> None:
    v = clustered(150, seed=7)
    src = EmbeddedStore(tmp_path / "src", Identity())
    fill(src, v)
    (src.models_dir / "head_other_product.pt").write_bytes(b"model bytes")
    src.write(WriteBatch(products=[product("a1", "apparel")], add_images=[image("a1", 0, v[3], "apparel"), image("a1", 1, v[4], "apparel")]))
    from shoplens.store.migrate import copy_files

    mid = open_catalogue_store(f"milvus-lite:{tmp_path / 'm.db'}#moved", Identity())
    assert copy_files(src, mid) == ["models/head_other_product.pt"]
    assert [(a.name, a.sha256) for a in mid.artifacts.all()] == [(a.name, a.sha256) for a in src.artifacts.all()]
    report = copy_catalogue(src, mid)
    assert (report.products, report.images) == (151, {"apparel": 2, "other_product": 150})
    mid.close()
    mid = open_catalogue_store(f"milvus-lite:{tmp_path / 'm.db'}#moved", Identity(), create=False)
    back = EmbeddedStore(tmp_path / "back", Identity())
    copy_catalogue(mid, back)
    for store in (src, mid, back):
        assert store.get_product("p9") == product("p9")
    q = clustered(10, seed=8)
    _, a = src.search("other_product", q, 5)
    _, b = mid.search("other_product", q, 5)
    _, c = back.search("other_product", q, 5)
    assert pids(src, a) == pids(mid, b) == pids(back, c)
    with pytest.raises(StoreError, match="not empty"):
        copy_catalogue(src, back)
    src.close()
    mid.close()
    back.close()


@needs_milvus
@pytest.mark.slow
def test_shoplens_migrate_command_end_to_end(tmp_path: Path, synthetic_catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`shoplens migrate` moves an indexed catalogue to Milvus Lite; searches give the same products and ranks."""
    import json

    from shoplens import Shoplens, open_store
    from shoplens.cli import main

    from . import test_engine  # noqa: F401  (registers the test-* intent classifiers)

    flags = {"intent.classifier": "test-other_product", "search.rank_filter": False, "search.entropy_filter": False}
    with Shoplens(tmp_path / "store", **flags, **{"search.similar_k": 77}) as lens:
        lens.index(synthetic_catalogue)
        (lens.store.models_dir / "note.bin").write_bytes(b"trained model stand-in")
    target = f"milvus-lite:{tmp_path / 'moved.db'}#shop"
    assert main(["migrate", str(tmp_path / "store"), target, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["products"] == 6 and report["images"] == {"apparel": 0, "other_product": 7}
    assert set(report["files"]) == {"config.json", "models/note.bin"}
    query = synthetic_catalogue.parent / "img" / "p4.png"
    results = []
    for location in (str(tmp_path / "store"), target):
        with open_store(location, **flags) as lens:
            hits = lens.search_one(query).regions[0].results
            results.append([(h.product_id, round(h.rank, 3), h.price) for h in hits])
            if location == target:
                assert lens.config.search.similar_k == 77  # the saved configuration moved too
                assert (lens.store.models_dir / "note.bin").read_bytes() == b"trained model stand-in"
    assert results[0] == results[1] and results[0][0][0] == "p4"
    assert main(["migrate", str(tmp_path / "store"), target]) == 2  # the target is not empty


@needs_milvus
@pytest.mark.slow
def test_milvus_recovers_interrupted_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies before its commit point leaves nothing; one that dies after it is completed on open."""
    from shoplens.store.milvus import MilvusStore

    location = f"milvus-lite:{tmp_path / 'r.db'}"
    v = clustered(4, seed=9)
    store = open_catalogue_store(location, Identity())
    fill(store, v[:1])

    class Crash(BaseException):
        pass

    def crash(*_: object, **__: object) -> None:
        raise Crash

    # dies after its image rows went in, before the commit point (and before any rollback could run)
    monkeypatch.setattr(MilvusStore, "_plan", crash)
    monkeypatch.setattr(MilvusStore, "_rollback", lambda *_: None)
    with pytest.raises(Crash):
        store.write(WriteBatch(products=[product("p1")], add_images=[image("p1", 0, v[1])]))
    assert store.count_images() == 2  # the orphan row is there...
    monkeypatch.undo()
    again = open_catalogue_store(location, Identity())
    assert again.count_images() == 1 and again.get_product("p1") is None  # ...and gone after recovery

    # dies right after its commit point
    monkeypatch.setattr(MilvusStore, "_apply", crash)
    with pytest.raises(Crash):
        again.write(WriteBatch(products=[product("p2")], add_images=[image("p2", 0, v[2])]))
    assert again.get_product("p2") is None and again.count_vectors("other_product") == 1  # not applied yet
    monkeypatch.undo()
    third = open_catalogue_store(location, Identity())
    assert third.get_product("p2") == product("p2") and third.count_vectors("other_product") == 2
    _, found = third.search("other_product", v[2:3], 1)
    assert pids(third, found) == [["p2"]]

    # the same, then opened as the engine opens a store: without a projector, attached afterwards
    monkeypatch.setattr(MilvusStore, "_apply", crash)
    with pytest.raises(Crash):
        third.write(WriteBatch(products=[product("p3")], add_images=[image("p3", 0, v[3])]))
    monkeypatch.undo()
    fourth = open_catalogue_store(location)  # a committed write waits for the projector...
    fourth.attach(Identity())  # ...and is completed now
    assert fourth.get_product("p3") == product("p3") and fourth.count_vectors("other_product") == 3
    for s in (store, again, third, fourth):
        s.close()


@needs_milvus
@pytest.mark.slow
def test_milvus_clients_share_the_local_feature_index(tmp_path: Path, synthetic_catalogue: Path) -> None:
    """The writer keeps the local-feature index in Milvus: a client with an empty cache folder, on a machine
    without the photos, gets it from there instead of extracting SIFT; a reader never uploads its copy."""
    import shutil

    from shoplens import Shoplens, open_store
    from shoplens.store.artifacts import LOCAL_INDEX_DIR, LOCAL_MANIFEST

    from . import test_engine  # noqa: F401  (registers the test-* intent classifiers)

    flags = {"intent.classifier": "test-other_product"}
    target = f"milvus-lite:{tmp_path / 'm.db'}#shop"
    with Shoplens(target, **flags) as lens:
        lens.index(synthetic_catalogue)
        cache = lens.store.root
        manifest = (lens.store.artifacts.local_index() / LOCAL_MANIFEST).read_bytes()
    with open_store(target, read_only=True, **flags) as lens:  # uploaded when the writer closed
        stored = lens.store._stored_files()  # type: ignore[attr-defined]
        assert f"{LOCAL_INDEX_DIR}/{LOCAL_MANIFEST}" in stored and any(n.endswith("/sift.npy") for n in stored)
    query = tmp_path / "query.png"
    shutil.copyfile(synthetic_catalogue.parent / "img" / "p4.png", query)
    shutil.rmtree(cache)
    shutil.rmtree(synthetic_catalogue.parent / "img")  # nothing to extract SIFT from
    with open_store(target, read_only=True, **flags) as lens:
        assert (lens.store.artifacts.local_index() / LOCAL_MANIFEST).read_bytes() == manifest
        assert lens.pipeline.local is not None and len(lens.pipeline.local) == 7
        result = lens.search_one(query)
        assert result.regions[0].results[0].product_id == "p4" and "local" in result.steps
        (lens.store.models_dir / "reader-only.bin").write_bytes(b"a reader's stray file")
    with open_store(target, **flags) as lens:  # a writer on the fresh cache: nothing re-extracted, nothing lost
        assert len(lens.pipeline.local or ()) == 7
        assert "models/reader-only.bin" not in lens.store._stored_files()  # type: ignore[attr-defined]
        lens.delete_products(["p5"])  # a new alive mask replaces the old one in the saved index
        kept = {a.name for a in lens.store.artifacts.local_index_files()}
    with open_store(target, read_only=True, **flags) as lens:
        stored = {n for n in lens.store._stored_files() if n.startswith(LOCAL_INDEX_DIR + "/")}  # type: ignore[attr-defined]
        assert stored == kept  # the files the manifest no longer names are gone from Milvus too
        assert len(lens.pipeline.local or ()) == 6

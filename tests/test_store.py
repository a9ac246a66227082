"""The embedded store: durable writes, derived indexes rebuilt or caught up."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from shoplens.errors import StoreError
from shoplens.store import EmbeddedStore, ImageRecord, ProductRecord, WriteBatch
from shoplens.store.metadata import MetadataDB


class Identity:
    def project(self, domain: str, raw: np.ndarray) -> np.ndarray:
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def version(self, domain: str) -> str:
        return "identity"


def product(pid: str, category: str = "c") -> ProductRecord:
    return ProductRecord(pid, f"title {pid}", category, "catalogue", "other_product", "catalogue", {"n": 1})


def image(pid: str, i: int, vec: np.ndarray) -> ImageRecord:
    return ImageRecord(pid, f"{pid}-{i}.jpg", f"sha{pid}{i}", "other_product", "sig", vec)


def vecs(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def fill(store: EmbeddedStore, n: int = 5) -> np.ndarray:
    v = vecs(n)
    store.write(WriteBatch(products=[product(f"p{i}") for i in range(n)], add_images=[image(f"p{i}", 0, v[i]) for i in range(n)]))
    return v


def test_write_search_delete(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s", Identity())
    v = Identity().project("other_product", fill(store))
    d, ids = store.search("other_product", v[:1], 3)
    assert store.db.image_products([int(ids[0, 0])]) == {int(ids[0, 0]): "p0"}
    assert d[0, 0] == pytest.approx(0.0, abs=1e-3)
    store.write(WriteBatch(delete_products=["p0"]))
    d, ids = store.search("other_product", v[:1], 5)
    assert "p0" not in store.db.image_products(ids[0].tolist()).values()  # visible at once
    assert store.db.get_product("p0") is None and store.db.count_images() == 4
    assert store.search("apparel", v[:1], 3)[1].shape == (1, 0)  # empty partition


def test_filter_applies_inside_search(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s", Identity())
    v = fill(store, 20)
    allowed = np.array([5, 7], dtype=np.int64)
    _, ids = store.search("other_product", v[:1], 10, allowed)
    assert set(ids[0][ids[0] >= 0].tolist()) == {5, 7}


def test_reopen_catches_up_unpersisted_changes(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s", Identity())
    v = fill(store, 3)
    store.persist()
    more = vecs(2, seed=1)
    store.write(WriteBatch(products=[product("q0"), product("q1")], add_images=[image("q0", 0, more[0]), image("q1", 0, more[1])]))
    store.write(WriteBatch(delete_products=["p1"]))
    # Simulate a crash: the process dies without persisting the index (and the kernel drops its writer lock).
    store.db.close()
    assert store.writer_lock is not None
    store.writer_lock.release()
    again = EmbeddedStore(tmp_path / "s", Identity())
    index = again.index("other_product")
    found = set(again.db.image_products(index.ids().tolist()).values())  # type: ignore[attr-defined]
    assert found == {"p0", "p2", "q0", "q1"}
    _ = v


@pytest.mark.parametrize("kind", ["flat", "ivfsq8"])
@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_damaged_index_is_rebuilt_with_a_log_line(tmp_path: Path, damage: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    store = EmbeddedStore(tmp_path / "s", Identity(), index=kind)
    v = fill(store, 4)
    store.close()
    assert EmbeddedStore(tmp_path / "s", Identity(), index=kind).index("other_product").kind == kind  # saved as configured
    path = tmp_path / "s" / "index" / "other_product.vidx"
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"garbage")
    else:
        path.write_bytes(path.read_bytes()[:-10])
    caplog.set_level(logging.WARNING)
    again = EmbeddedStore(tmp_path / "s", Identity(), index=kind)
    _, ids = again.search("other_product", v, 1)
    assert again.db.image_products(ids[:, 0].tolist()) == {int(i): f"p{k}" for k, i in enumerate(ids[:, 0])}
    assert "rebuilding" in caplog.text and again.index("other_product").kind == kind


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s", Identity())
    fill(store, 2)
    bad = ImageRecord("nobody", "x.jpg", "sha", "other_product", "sig", vecs(1)[0])  # no such product: FK fails
    with pytest.raises(Exception):  # noqa: B017 - sqlite3's IntegrityError; what counts is what is left
        store.write(WriteBatch(products=[product("new")], add_images=[bad]))
    assert store.db.get_product("new") is None and store.db.count_images() == 2


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store"):
        EmbeddedStore(tmp_path / "missing", Identity(), create=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        EmbeddedStore(tmp_path / "file", Identity())
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "shoplens.sqlite").write_text("not sqlite at all, definitely")
    with pytest.raises(StoreError, match="cannot open"):
        MetadataDB(tmp_path / "db" / "shoplens.sqlite")


def test_image_categories_join_matches_the_generic_answer(tmp_path: Path) -> None:
    from shoplens.store.base import CatalogueStore

    store = EmbeddedStore(tmp_path / "s", Identity())
    v = vecs(4)
    store.write(
        WriteBatch(
            products=[product("a", "shoes"), product("b", "bags"), ProductRecord("n", "N", None, "catalogue", "other_product", "catalogue", {})],
            add_images=[image("a", 0, v[0]), image("a", 1, v[1]), image("b", 0, v[2]), image("n", 0, v[3])],
        )
    )
    ids = store.image_ids("other_product").tolist()
    asked = ids + [ids[0], 10_000]  # a repeat and an id that does not exist
    joined = store.image_categories(asked)
    assert joined == CatalogueStore.image_categories(store, asked)  # the base class's two-question answer
    assert sorted(joined.values(), key=str) == sorted([("a", "shoes"), ("a", "shoes"), ("b", "bags"), ("n", None)], key=str)
    store.write(WriteBatch(delete_products=["b"]))
    assert "b" not in [p for p, _ in store.image_categories(ids).values()]


def test_owner_lookups_read_the_owner_indexes_and_older_stores_still_answer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import sqlite3

    store = EmbeddedStore(tmp_path / "s", Identity())
    fill(store, 6)
    ids = store.image_ids("other_product").tolist()
    want = store.image_categories(ids)
    traced: list[str] = []
    store.db._conn.set_trace_callback(traced.append)
    store.db.image_categories(ids)
    store.db.image_products(ids)
    store.db._conn.set_trace_callback(None)
    plans = [store.db.query("EXPLAIN QUERY PLAN " + sql) for sql in traced if sql.startswith("SELECT")]
    assert len(plans) == 2 and all("COVERING INDEX" in str(p) for p in plans), plans
    store.close()
    # A store from before the owner indexes: read-only it answers from the rows, writable it gains them.
    db = tmp_path / "s" / "shoplens.sqlite"
    c = sqlite3.connect(db)
    c.execute("DROP INDEX images_owner")
    c.execute("DROP INDEX products_owner")
    c.commit()
    c.close()
    old = MetadataDB(db, readonly=True)
    assert old.image_categories(ids) == want and old.image_products(ids) == {i: p for i, (p, _) in want.items()}
    old.close()
    with caplog.at_level(logging.INFO, logger="shoplens.store.metadata"):
        reopened = MetadataDB(db)
    assert "adding the owner indexes" in caplog.text
    assert reopened.image_categories(ids) == want
    names = {r[0] for r in reopened.query("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"images_owner", "products_owner"} <= names
    reopened.close()

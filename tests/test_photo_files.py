"""Photos kept under ``<store>/photos/``: none written for a refused write, none left once no image refers to it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoplens import Shoplens
from shoplens.api import PHOTOS_DIR, ProductInput
from shoplens.errors import BadImageError, StoreError

from . import test_engine  # noqa: F401  (registers the test-* classifiers and detector)
from .serverutil import encode, picture

FLAGS = {"intent.classifier": "test-other_product", "local.enabled": False}


def photo(seed: int) -> bytes:
    return encode(picture(seed), "PNG")


def files(root: Path) -> set[str]:
    """The photo files under the store's photos folder, by name (temporary files included)."""
    folder = root / PHOTOS_DIR
    return {p.name for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def name_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest() + ".png"


@pytest.fixture
def lens(tmp_path: Path) -> Iterator[Shoplens]:
    with Shoplens(tmp_path / "store", **FLAGS) as lens:
        yield lens


def test_a_refused_product_writes_no_photo(lens: Shoplens) -> None:
    good, truncated = photo(1), photo(2)[:300]
    with pytest.raises(BadImageError, match="photo 2"):
        lens.put_products([ProductInput("p1", [good, truncated], domain="other_product")])
    with pytest.raises(BadImageError, match="'p3', photo 1"):  # the bad photo in a later product of the batch
        lens.put_products([ProductInput("p2", [good], domain="other_product"), ProductInput("p3", [b"not a photo"])])
    assert files(lens.store.root) == set()
    assert lens.count_products() == 0


def test_replaced_and_deleted_photos_are_removed_shared_ones_kept(lens: Shoplens) -> None:
    a, b, c = photo(10), photo(11), photo(12)
    lens.put_products([ProductInput("p1", [a, b], domain="other_product"), ProductInput("p2", [b], domain="other_product")])
    root = lens.store.root
    assert files(root) == {name_of(a), name_of(b)}
    lens.set_photos("p1", [c])  # a goes; b stays, p2 still has it
    assert files(root) == {name_of(b), name_of(c)}
    lens.put_products([ProductInput("p1", [c, a], domain="other_product")])  # replaced with a photo it had before
    assert files(root) == {name_of(a), name_of(b), name_of(c)}
    assert lens.delete_products(["p1"]) == 1
    assert files(root) == {name_of(b)}
    assert lens.image_file(lens.product_images("p2")[0][0]) is not None
    lens.delete_products(["p2"])
    assert files(root) == set()


def test_photos_stay_when_the_delete_does_not_commit(lens: Shoplens, monkeypatch: pytest.MonkeyPatch) -> None:
    a = photo(20)
    lens.put_products([ProductInput("p1", [a], domain="other_product")])

    def refuse(*_: object) -> None:
        raise StoreError("the disk is full")

    monkeypatch.setattr(lens.store, "write", refuse)
    with pytest.raises(StoreError):
        lens.delete_products(["p1"])
    assert files(lens.store.root) == {name_of(a)}  # the product is still there, and so is its photo


def test_a_crash_leaves_orphans_the_next_writer_removes(tmp_path: Path) -> None:
    kept, orphan = photo(30), photo(31)
    with Shoplens(tmp_path / "store", **FLAGS) as lens:
        lens.put_products([ProductInput("p1", [kept], domain="other_product")])
        # What a process killed at the wrong moment leaves: a photo whose write never committed
        # (or whose delete committed before the file went), and a file half-written.
        orphan_path = lens.save_photo(orphan)
        digest = orphan_path.name.split(".")[0]
        (orphan_path.parent / f".{digest}.4242.1.tmp").write_bytes(orphan[:100])
        stranger = lens.store.root / PHOTOS_DIR / "README.txt"
        stranger.write_text("not a photo of ours")
        assert name_of(orphan) in files(lens.store.root)
    with Shoplens(tmp_path / "store", read_only=True, **FLAGS) as reader:  # a reader judges nothing
        assert name_of(orphan) in files(reader.store.root)
    with Shoplens(tmp_path / "store", **FLAGS) as lens:
        assert files(lens.store.root) == {name_of(kept), "README.txt"}
        assert lens.image_file(lens.product_images("p1")[0][0]) is not None

"""The demo's download path, against a local HTTP server on loopback."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoplens.demo import (
    catalogue_from_upstream,
    download,
    extract,
    sample_answers,
    sample_catalogue,
    sample_labelled,
    sample_root,
)
from shoplens.errors import ShoplensError

from .conftest import make_image


def upstream_zip(tmp_path: Path) -> Path:
    """A tiny archive in the upstream GroceryStoreDataset layout."""
    src = tmp_path / "src" / "GroceryStoreDataset-abc"
    ds = src / "dataset"
    header = "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),Iconic Image Path (str),Product Description Path (str)\n"
    rows = []
    for i, (name, coarse, top) in enumerate([("Granny-Smith", "Apple", "Fruit"), ("Oatly-Oat-Milk", "Oat-Milk", "Packages")]):
        rel = f"/iconic-images-and-descriptions/{top}/{coarse}/{name}/{name}_Iconic.jpg"
        make_image(ds / rel.lstrip("/"), seed=i)
        make_image(ds / "test" / top / coarse / name / f"{name}_001.jpg", seed=10 + i)
        for j in range(2):  # labelled train photos: their folder names the product
            make_image(ds / "train" / top / coarse / name / f"{name}_{j:03d}.jpg", seed=20 + 2 * i + j)
        rows.append(f"{name},{i},{coarse},{i},{rel},/x.txt\n")
    (ds / "classes.csv").write_text(header + "".join(rows))
    (src / "README.md").write_text("not needed")
    archive = tmp_path / "upstream.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in src.rglob("*"):
            zf.write(p, p.relative_to(src.parent))
        zf.writestr("GroceryStoreDataset-abc/../evil.txt", "zip slip")
    return archive


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def test_download_verifies_and_caches(tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = server
    archive = upstream_zip(tmp_path)
    (root / "ds.zip").write_bytes(archive.read_bytes())
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "ds.zip"
    with pytest.raises(ShoplensError, match="checksum mismatch"):
        download(f"{url}/ds.zip", dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not dest.with_name("ds.zip.part").exists()
    assert download(f"{url}/ds.zip", dest, sha256=good, progress=False) == dest
    (root / "ds.zip").unlink()  # the cached copy is used, no second request
    assert download(f"{url}/ds.zip", dest, sha256=good, progress=False) == dest
    with pytest.raises(ShoplensError, match="cannot download"):
        download(f"{url}/missing.zip", tmp_path / "cache" / "other.zip", sha256=None, progress=False)


def test_first_download_pins_its_hash(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, root = server
    (root / "a.zip").write_bytes(b"first version")
    dest = tmp_path / "cache" / "a.zip"
    download(f"{url}/a.zip", dest, sha256=None, progress=False)
    assert dest.with_name("a.zip.sha256").read_text().strip() == hashlib.sha256(b"first version").hexdigest()
    dest.write_bytes(b"tampered")  # a damaged cache is fetched again and must match the pinned hash
    (root / "a.zip").write_bytes(b"changed upstream")
    with pytest.raises(ShoplensError, match="checksum mismatch"):
        download(f"{url}/a.zip", dest, sha256=None, progress=False)


def test_sample_catalogue_from_download(tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = server
    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    (root / "ds.zip").write_bytes(upstream_zip(tmp_path).read_bytes())
    csv_path, queries = sample_catalogue(url=f"{url}/ds.zip", progress=False)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "product_id,image,title,category,top_level" and len(lines) == 3
    assert "Granny Smith,Apple,Fruit" in lines[1]
    assert len(queries) == 2 and all(q.exists() for q in queries)
    assert not (tmp_path / "cache" / "evil.txt").exists()


def test_offline_copy_and_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(ShoplensError, match="neither a catalog.csv"):
        sample_catalogue(tmp_path)
    extracted = extract(upstream_zip(tmp_path), tmp_path / "x")
    out = catalogue_from_upstream(extracted, tmp_path / "cat.csv")
    assert out.exists()
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ShoplensError, match="not a valid zip"):
        extract(tmp_path / "bad.zip", tmp_path / "y")


def test_labelled_train_photos_of_the_sample(tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = server
    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    (root / "ds.zip").write_bytes(upstream_zip(tmp_path).read_bytes())
    upstream = sample_root(url=f"{url}/ds.zip", progress=False)
    rows = sample_labelled(upstream, tmp_path / "up.csv").read_text().splitlines()
    assert rows[0] == "image,product_id" and len(rows) == 5
    assert sorted(r.rsplit(",", 1)[1] for r in rows[1:]) == ["0", "0", "1", "1"]  # Granny-Smith 0, Oatly-Oat-Milk 1
    assert all("Granny-Smith_00" in r for r in rows[1:] if r.endswith(",0"))
    # The shared layout: photos.csv's train split.
    shared = tmp_path / "shared"
    make_image(shared / "photos" / "a.jpg", seed=1)
    make_image(shared / "photos" / "b.jpg", seed=2)
    (shared / "photos.csv").write_text("split,image,product_id\ntrain,photos/a.jpg,7\nval,photos/b.jpg,7\n")
    rows = sample_labelled(shared, tmp_path / "sh.csv").read_text().splitlines()
    assert rows == ["image,product_id", f"{(shared / 'photos' / 'a.jpg').resolve()},7"]
    with pytest.raises(ShoplensError, match="no labelled train photos"):
        sample_labelled(tmp_path / "cache", tmp_path / "none.csv")


def test_the_product_each_sample_photo_shows(tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = server
    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    (root / "ds.zip").write_bytes(upstream_zip(tmp_path).read_bytes())
    upstream = sample_root(url=f"{url}/ds.zip", progress=False)
    _, queries = sample_catalogue(upstream)
    answers = sample_answers(upstream, queries)  # the upstream layout: the photo's folder names the product
    assert sorted(answers.values()) == ["0", "1"]
    assert all(answers[str(q.resolve())] == ("0" if "Granny-Smith" in q.name else "1") for q in queries)
    shared = tmp_path / "shared"  # the shared layout: photos.csv's product_id
    make_image(shared / "photos" / "val" / "a.jpg", seed=1)
    make_image(shared / "photos" / "val" / "b.jpg", seed=2)
    (shared / "photos.csv").write_text("split,image,product_id\nval,photos/val/a.jpg,7\n")
    got = sample_answers(shared, [shared / "photos" / "val" / "a.jpg", shared / "photos" / "val" / "b.jpg"])
    assert got == {str((shared / "photos" / "val" / "a.jpg").resolve()): "7"}  # b.jpg: not listed, no answer


@pytest.mark.data
@pytest.mark.slow
def test_the_demo_on_the_shared_grocery_copy_shows_right_answers(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`shoplens demo --from ../shared/data/grocery`: indexed, searched untrained, adapted with the train photos, searched."""
    from shoplens.cli import main

    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "store"
    code = main(["demo", "--from", str(data_dir / "grocery"), "--store", str(store)])
    out = capsys.readouterr().out
    assert code == 0 and "indexed 81 sample product(s)" in out
    assert "adapted to 2640 labelled store photo(s)" in out
    assert (store / "models" / "head_other_product.pt").exists() and not (store / "models" / "tail_other_product.pt").exists()
    # Each photo says which product it shows, where it came, and where it came untrained; two summaries count them.
    assert out.count("  this photo shows ") == 4 and out.count(" (untrained: ") == 4
    untrained = re.search(r"untrained \(the catalogue photos alone\): the product shown came first for (\d) of 4", out)
    adapted = re.search(r"adapted: the product shown came first for (\d) of 4 photo\(s\), in the top 5 for (\d)", out)
    assert untrained and adapted, out
    # What a first-time user sees: the right product first for most of the photos, every one in the top 5.
    assert int(adapted[1]) >= 3 and int(adapted[2]) == 4 and int(adapted[1]) > int(untrained[1]), out
    # A second run finds the store adapted and does not train again.
    assert main(["demo", "--from", str(data_dir / "grocery"), "--store", str(store), "--adapt", "head"]) == 0
    again = capsys.readouterr().out
    assert "is already adapted" in again and "adapting the search" not in again
    assert re.search(r"\nthe product shown came first for (\d) of 4", again)[1] == adapted[1]  # type: ignore[index]


@pytest.mark.slow
def test_the_demo_adapts_on_the_upstream_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The downloaded archive's layout: its dataset/train folders are the labelled photos the demo adapts to."""
    from shoplens.cli import main

    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    root = extract(upstream_zip(tmp_path), tmp_path / "x")
    assert main(["demo", "--from", str(root), "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "untrained (the catalogue photos alone): the product shown came first for " in out
    assert "adapted to 4 labelled store photo(s)" in out and out.count(" (untrained: ") == 2
    assert "\nadapted: the product shown came first for " in out
    # --adapt none: the untrained search only, on a fresh store.
    assert main(["demo", "--from", str(root), "--store", str(tmp_path / "plain"), "--adapt", "none"]) == 0
    plain = capsys.readouterr().out
    assert "adapting" not in plain and "(untrained: " not in plain and "\nthe product shown came first for " in plain
    assert not (tmp_path / "plain" / "models" / "head_other_product.pt").exists()

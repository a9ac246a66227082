"""One writer per store: a second writer is refused at once, readers need no lock, vector indexes heal.

Two writers on one folder store used to lose products for good: each kept its
own vector index in memory, each persisted it and compacted the change log,
and the other's additions were left in SQLite with no vector (found by
``GET /products/{id}``, never by search). Now every writer holds an OS lock
on the store, and at open and at persist a vector index is checked against
the image rows it must hold.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shoplens import Shoplens
from shoplens.api import ProductInput
from shoplens.errors import StoreError
from shoplens.store import EmbeddedStore, FaissIndex, ImageRecord, ProductRecord, WriteBatch

from .conftest import make_image

REPO = Path(__file__).resolve().parents[1]
#: `shoplens` itself, with the test intent classifiers registered (every photo is a product).
BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import tests.conftest; "
    "from shoplens.cli import main; sys.exit(main(sys.argv[1:]))"
)
#: A writer that opens the store and waits to be killed.
HOLD = (
    "import sys, time; sys.path.insert(0, sys.argv.pop(1)); from shoplens.store import EmbeddedStore; "
    "store = EmbeddedStore(sys.argv[1], None); print('ready', flush=True); time.sleep(600)"
)
#: Several `shoplens` commands in one process (one start-up): [exit code, stderr] of each, as JSON.
EACH = """
import contextlib, io, json, sys
sys.path.insert(0, sys.argv.pop(1))
import tests.conftest
from shoplens.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""
LOOSE = {"intent.classifier": "test-other_product", "search.rank_filter": False, "search.entropy_filter": False}


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``shoplens ARGS`` in a process of its own."""
    return subprocess.run([sys.executable, "-c", BOOT, str(REPO), *args], check=False, capture_output=True, text=True, env=env(), timeout=timeout)


def more_products(tmp_path: Path, n: int = 3) -> Path:
    """A second catalogue: products q0 … q{n-1}."""
    rows = ["product_id,image,category,domain"]
    for i in range(n):
        make_image(tmp_path / "more" / f"q{i}.png", seed=500 + i)
        rows.append(f"q{i},more/q{i}.png,green,other_product")
    path = tmp_path / "more.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def top_product(lens: Shoplens, photo: Path) -> str:
    return lens.search_one(photo, top_k=1).regions[0].results[0].product_id


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file of a store but its SQLite files (a reader's connection may touch those)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("shoplens.sqlite")
    }


def change_log(root: Path) -> list[int]:
    with sqlite3.connect(f"file:{root / 'shoplens.sqlite'}?mode=ro", uri=True) as c:
        return [r[0] for r in c.execute("SELECT seq FROM changes ORDER BY seq")]


# -- one writer -------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_writer_is_refused_at_once_and_the_first_keeps_its_data(tmp_path: Path, synthetic_catalogue: Path) -> None:
    store = tmp_path / "store"
    more = more_products(tmp_path)
    photos = {f"p{i}": synthetic_catalogue.parent / "img" / f"p{i}.png" for i in range(6)}
    with Shoplens(store, **LOOSE) as lens:
        lens.index(synthetic_catalogue)
        run = cli("index", str(more), "--store", str(store), "--no-progress")
        assert run.returncode == 2, run.stdout + run.stderr
        assert "in use by another writer" in run.stderr and f"PID {os.getpid()}" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        # The holder goes on: its products are all there and found; nothing of the refused run is.
        assert lens.count_products() == 6 and lens.store.get_product("q0") is None
        assert all(top_product(lens, photo) == pid for pid, photo in photos.items())
        with pytest.raises(StoreError, match="in use by another writer"):
            Shoplens(store, **LOOSE)  # a second writer in the same process is refused too
    with Shoplens(store, **LOOSE) as lens:  # released at close
        lens.index(more)
        assert lens.count_products() == 9 and top_product(lens, tmp_path / "more" / "q1.png") == "q1"


def test_a_killed_writer_leaves_no_lock(tmp_path: Path) -> None:
    store = tmp_path / "store"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(REPO), str(store)], stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match=f"in use by another writer \\(PID {child.pid}"):
            EmbeddedStore(store, None)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    EmbeddedStore(store, None).close()  # the kernel dropped the dead writer's lock: no stale lock to clear


@pytest.mark.slow
def test_every_writing_command_takes_the_lock(tmp_path: Path) -> None:
    """serve, index, train-*, demo, eval --catalogue and migrate's target refuse a held store before any work."""
    store = tmp_path / "store"
    (tmp_path / "q.csv").write_text("image,product_id\nx.png,p\n")
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "catalog.csv").write_text("product_id,image\n")
    EmbeddedStore(tmp_path / "src", None).close()
    commands = [
        ["index", str(tmp_path / "q.csv"), "--store", str(store)],
        ["serve", "--store", str(store), "--port", "1"],
        ["train-intent", str(tmp_path), "--store", str(store)],
        ["train-embedder", "--store", str(store)],
        ["demo", "--from", str(tmp_path / "sample"), "--store", str(store)],
        ["eval", str(tmp_path / "q.csv"), "--store", str(store), "--catalogue", str(tmp_path / "q.csv")],
        ["migrate", str(tmp_path / "src"), str(store)],
    ]
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(REPO), str(store)], stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        run = subprocess.run([sys.executable, "-c", EACH, str(REPO), json.dumps(commands)], check=False, capture_output=True, text=True, env=env(), timeout=300)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    for argv, (code, err) in zip(commands, json.loads(run.stdout)):
        assert code == 2 and f"in use by another writer (PID {child.pid}" in err, (argv, err)


# -- readers ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_reader_searches_next_to_a_writer_and_writes_nothing(tmp_path: Path, synthetic_catalogue: Path) -> None:
    store = tmp_path / "store"
    late = make_image(tmp_path / "late.png", seed=900)
    with Shoplens(store, **LOOSE) as lens:
        lens.index(synthetic_catalogue)  # persisted
        lens.put_products([ProductInput("late", [late.read_bytes()], category="green", domain="other_product")])  # committed only
        before, log_before = files_of(store), change_log(store)
        assert log_before  # the saved index lags behind the change log
        run = cli("search", str(late), str(synthetic_catalogue.parent / "img" / "p3.png"), "--store", str(store), "--json")
        assert run.returncode == 0, run.stderr
        tops = [json.loads(line)["regions"][0]["results"][0]["product_id"] for line in run.stdout.splitlines()]
        assert tops == ["late", "p3"]  # sees every committed product, the unpersisted one too
        assert files_of(store) == before and change_log(store) == log_before  # saved nothing, compacted nothing
        with Shoplens(store, read_only=True, **LOOSE) as reader:  # the same from Python
            assert top_product(reader, late) == "late"
            with pytest.raises(StoreError, match="read-only"):
                reader.delete_products(["late"])
        assert files_of(store) == before and change_log(store) == log_before
        assert top_product(lens, late) == "late"


class Identity:
    def project(self, domain: str, raw: np.ndarray) -> np.ndarray:
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def version(self, domain: str) -> str:
        return "identity"


def batch(names: list[str], seed: int) -> tuple[WriteBatch, np.ndarray]:
    v = np.random.default_rng(seed).normal(size=(len(names), 8)).astype(np.float32)
    products = [ProductRecord(n, None, "c", "catalogue", "other_product", "catalogue", {}) for n in names]
    images = [ImageRecord(n, f"{n}.jpg", f"sha-{n}", "other_product", "sig", v[i]) for i, n in enumerate(names)]
    return WriteBatch(products=products, add_images=images), Identity().project("other_product", v)


def found(store: EmbeddedStore, vectors: np.ndarray) -> list[str]:
    _, ids = store.search("other_product", vectors, 1)
    owners = store.image_products(ids[:, 0].tolist())
    return [owners.get(int(i), "?") for i in ids[:, 0]]


def test_a_long_lived_reader_sees_what_the_writer_commits_after_the_log_was_compacted(tmp_path: Path) -> None:
    writer = EmbeddedStore(tmp_path / "s", Identity())
    first, v1 = batch([f"p{i}" for i in range(4)], seed=0)
    writer.write(first)
    writer.persist()
    reader = EmbeddedStore(tmp_path / "s", Identity(), read_only=True)
    assert found(reader, v1) == ["p0", "p1", "p2", "p3"]
    second, v2 = batch(["q0", "q1"], seed=1)
    writer.write(second)
    writer.persist()  # compacts the change log past what the reader's index applied
    assert found(reader, v2) == ["q0", "q1"] and found(reader, v1) == ["p0", "p1", "p2", "p3"]
    with pytest.raises(StoreError, match="read-only"):
        reader.write(second)
    reader.close()
    writer.close()


# -- vector indexes checked against the rows ------------------------------------------
def test_an_index_that_looks_up_to_date_but_misses_rows_is_healed_at_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "s"
    store = EmbeddedStore(root, Identity())
    names = [f"p{i}" for i in range(10)]
    b, v = batch(names, seed=0)
    ids = store.write(b)
    store.close()  # persisted, the change log compacted
    assert change_log(root) == []
    path = root / "index" / "other_product.vidx"
    saved = FaissIndex.load(path)
    saved.remove(np.array(ids[3:6], np.int64))  # vectors lost, as a second writer's persist lost them
    saved.add(np.array([10_000], np.int64), v[:1])  # and one no row holds
    saved.save(path)  # its applied_seq still says it is up to date
    caplog.set_level(logging.WARNING)
    again = EmbeddedStore(root, Identity())
    assert found(again, v) == names
    assert 10_000 not in again.search("other_product", v[:1], 10)[1][0]
    assert "3 stored image(s) had no vector" in caplog.text
    again.close()
    assert set(FaissIndex.load(path).ids().tolist()) == set(ids)  # saved healed


def test_persist_saves_every_row_even_when_the_loaded_index_lost_some(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "s"
    store = EmbeddedStore(root, Identity())
    names = [f"p{i}" for i in range(6)]
    b, v = batch(names, seed=2)
    ids = store.write(b)
    store.index("other_product").remove(np.array(ids[:2], np.int64))
    caplog.set_level(logging.WARNING)
    store.persist()
    assert "2 stored image(s) had no vector" in caplog.text
    assert set(FaissIndex.load(root / "index" / "other_product.vidx").ids().tolist()) == set(ids)
    assert found(store, v) == names
    store.close()


# -- the scenario: a running server and `shoplens index` --------------------------
@pytest.mark.slow
def test_index_next_to_a_running_server_is_refused_and_search_still_works(tmp_path: Path, synthetic_catalogue: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the [server] extra")
    import httpx

    from .test_server_durability import Server

    store = tmp_path / "store"
    run = cli("index", str(synthetic_catalogue), "--store", str(store), "--no-progress", "--intent-classifier", "test-other_product")
    assert run.returncode == 0, run.stderr
    server = Server(store, tmp_path / "server.log")
    try:
        server.wait_ready()
        more = more_products(tmp_path)
        refused = cli("index", str(more), "--store", str(store), "--no-progress")
        assert refused.returncode == 2 and f"PID {server.proc.pid}" in refused.stderr, refused.stderr
        assert "HTTP API" in refused.stderr and "Traceback" not in refused.stderr
        searched = cli("search", str(synthetic_catalogue.parent / "img" / "p4.png"), "--store", str(store), "--json")
        assert searched.returncode == 0, searched.stderr
        assert json.loads(searched.stdout)["regions"][0]["results"][0]["product_id"] == "p4"
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/readyz").json()["products"] == 6
            data = (tmp_path / "more" / "q0.png").read_bytes()
            hit = client.post("/search", files={"photo": ("q.png", data, "image/png")}, data={"top_k": "1"}).json()
            assert hit["regions"][0]["results"][0]["product_id"] != "q0"
    finally:
        server.stop()


def test_a_lock_left_with_a_dead_writers_child_is_waited_for(tmp_path: Path) -> None:
    """A writer forks a child (which shares its lock) and dies: the next writer waits for the child, then writes."""
    import os
    import signal
    import time

    from shoplens.store.lock import WriterLock

    (tmp_path / "store").mkdir()
    ready_r, ready_w = os.pipe()
    writer = os.fork()
    if writer == 0:  # the writer: takes the lock, forks a child that keeps it 1.5 s, then waits to be killed
        held = WriterLock(tmp_path / "store")
        held.acquire()
        if os.fork() == 0:
            time.sleep(1.5)
            os._exit(0)
        os.write(ready_w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(ready_r, 1)
    os.kill(writer, signal.SIGKILL)
    os.waitpid(writer, 0)
    start = time.monotonic()
    lock = WriterLock(tmp_path / "store")
    lock.acquire()  # neither refused nor hung: the child exits and lets go
    assert lock.held and 0.5 < time.monotonic() - start < 10
    lock.release()

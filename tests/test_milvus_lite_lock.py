"""Opening a Milvus Lite file another process still holds: wait for it with a message, then a clear error.

After ``kill -9`` of a writer, Milvus Lite 2.x's server (a child process)
holds the file for some 20 s more while it shuts down; a re-run used to fail
at once with "cannot reach Milvus … Open local milvus failed". These tests
stand a helper process in for that lingering holder: it takes the lock the
installed Milvus Lite takes (``NAME.db/LOCK`` with flock for 3.x,
``.NAME.db.lock`` with lockf for 2.x) and lets go after a while.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoplens.errors import StoreBusyError
from shoplens.store import open_catalogue_store

HAS_MILVUS = importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None
pytestmark = pytest.mark.skipif(not HAS_MILVUS, reason="pymilvus/milvus-lite not installed (pip install 'shoplens[milvus]')")

HOLDER = """
import fcntl, os, sys, time
lock, posix, seconds = sys.argv[1], sys.argv[2] == "posix", float(sys.argv[3])
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
(fcntl.lockf if posix else fcntl.flock)(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(seconds)
"""


def _hold(db: Path, seconds: float) -> subprocess.Popen[str]:
    """A process holding the installed Milvus Lite's lock on ``db`` for ``seconds``."""
    if db.is_dir():  # Milvus Lite 3.x: the .db is a folder, locked by whoever serves it
        lock, kind = db / "LOCK", "flock"
    else:  # 2.x: a lock file beside it, held by its server process
        lock, kind = db.parent / f".{db.name}.lock", "posix"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), kind, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "lite.db"
    open_catalogue_store(f"milvus-lite:{path}").close()  # the store exists; nobody holds it
    return path


@pytest.mark.slow
def test_opening_waits_while_another_process_still_holds_the_file(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    holder = _hold(db, 2.0)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="shoplens.store.milvus"):
            store = open_catalogue_store(f"milvus-lite:{db}")
        waited = time.monotonic() - start
        try:
            assert store.count_products() == 0
        finally:
            store.close()
    finally:
        holder.kill()
        holder.wait()
    assert waited >= 1.0  # it waited for the holder rather than failing
    message = next(r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage())
    assert f"PID {holder.pid}" in message and str(db) in message


@pytest.mark.slow
def test_opening_gives_up_naming_the_holder(db: Path) -> None:
    holder = _hold(db, 60.0)
    try:
        with pytest.raises(StoreBusyError, match=f"still held by PID {holder.pid}") as err:
            open_catalogue_store(f"milvus-lite:{db}", lite_wait_s=1.0)
        assert err.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    open_catalogue_store(f"milvus-lite:{db}").close()  # and once it is gone, the file opens at once

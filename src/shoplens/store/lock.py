"""One writer per store: an exclusive OS lock on ``<store>/writer.lock``.

A writer keeps its vector indexes in memory, saves them, compacts the change
log and garbage-collects the local-feature index's files; a second writer on
the same folder would undo the first one's work (products in SQLite that no
search finds). So every writer holds :class:`WriterLock` for as long as it
has the store open, and a second one fails at once with
:class:`~shoplens.errors.StoreBusyError`. Readers take no lock.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on an open file: the kernel drops
it when the holder's file is closed, however the process ends (``kill -9``
included), so a lock is never stale. The file also names its holder (PID and
command) for the refused writer's message; it is never deleted (deleting a
locked file would let two processes lock two different files).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path

from ..errors import StoreBusyError, StoreError

log = logging.getLogger(__name__)

#: How long a writer waits for the lock while the writer named in it is dead (a child it forked still holds it).
ORPHAN_WAIT_S = 15.0

LOCK_FILE = "writer.lock"


def _command() -> str:
    """What this process is, in a few words (``shoplens serve``)."""
    argv = sys.argv or [""]
    prog = Path(argv[0]).name
    if prog == "__main__.py":
        prog = Path(argv[0]).parent.name
    elif prog in ("", "-c", "-m"):
        prog = "python"
    first = next((a for a in argv[1:] if not a.startswith("-")), None)
    return " ".join([prog, *([first] if first else [])])[:200]


class WriterLock:
    """The exclusive writer lock of the store in ``root`` (held from :meth:`acquire` to :meth:`release`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now, or raise :class:`StoreBusyError` naming the holder."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StoreError(f"{self.root}: cannot open the writer lock {self.path} ({err.strerror or err})") from None
        try:
            self._lock_or_wait_for_orphans(fd)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            pid = holder.get("pid")
            raise StoreBusyError(self._busy_message(holder), pid if isinstance(pid, int) else None) from None
        except OSError as err:
            os.close(fd)
            raise StoreError(f"{self.root}: cannot lock the store for writing ({err.strerror or err})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": _command()}).encode() + b"\n", 0)
        self._fd = fd
        log.debug("%s: writer lock taken", self.root)

    def _lock_or_wait_for_orphans(self, fd: int) -> None:
        """flock ``fd``; while the writer named in the file is dead, wait up to ORPHAN_WAIT_S.

        A process a writer forked shares its lock; killed, the writer leaves
        the lock with such a child until the child exits too (moments later).
        A live holder is refused at once (BlockingIOError).
        """
        deadline = time.monotonic() + ORPHAN_WAIT_S
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pid = _read_holder(fd).get("pid")
                if not isinstance(pid, int) or _alive(pid) or time.monotonic() > deadline:
                    raise
                if not warned:
                    log.warning("%s: the writer lock is held after its writer (PID %d) died, by a process it "
                                "started; waiting up to %.0f s for it to exit", self.root, pid, ORPHAN_WAIT_S)
                    warned = True
                time.sleep(0.1)

    def release(self) -> None:
        """Let the next writer in (closing the file drops the lock)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no holder named any more
        except OSError:
            pass
        finally:
            os.close(fd)

    def _busy_message(self, holder: dict[str, object]) -> str:
        pid, command = holder.get("pid"), holder.get("command")
        who = f"PID {pid}" + (f": {command}" if command else "") if pid is not None else "a process that has not yet said which"
        if pid == os.getpid():
            return (f"store {self.root} is in use by another writer ({who}, this very process): "
                    "close the other Shoplens on it first, or open this one with read_only=True")
        return (f"store {self.root} is in use by another writer ({who}); stop it, or, if it is a "
                "'shoplens serve', add products through its HTTP API (searches need no lock)")

    def __del__(self) -> None:  # an unclosed store still lets the next writer in once collected
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter exit the kernel drops the lock anyway
            pass


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

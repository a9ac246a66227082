"""Search slots: at most N searches at once, the others served in the order they came.

``threading.Semaphore`` lets a request that has just arrived take a slot
that was freed for one already waiting (the waiter is woken, but the count
is free for whoever acquires first), so under load some requests wait
several turns while others pass: with 8 clients on 2 slots the 99th
percentile was 1.7 times the median (docs/benchmarks.md, section 7). Here a
freed slot is handed to the longest waiting request directly.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType


class SearchSlots:
    """A first-come, first-served counting semaphore (``with slots:`` or ``acquire`` / ``release``)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"search slots must be at least 1, got {n}")
        self.size = n
        self._free = n
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, blocking: bool = True) -> bool:
        """Take a slot, waiting behind earlier callers; without ``blocking``, only a free one nobody waits for."""
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            if not blocking:
                return False
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # set by release, which hands its slot over: the count never went up
        return True

    def release(self) -> None:
        """Give the slot to the longest waiting caller, or back to the free ones."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            elif self._free < self.size:
                self._free += 1
            else:
                raise ValueError("search slot released more often than acquired")

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        with self._lock:
            return len(self._waiters)

    def __enter__(self) -> SearchSlots:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

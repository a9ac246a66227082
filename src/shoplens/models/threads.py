"""Thread counts for the small torch work of a search.

A search runs a few dozen small torch ops per photo besides the backbone
pass (the garment head, decoding its maps, the intent rule). Each op with
more than one intra-op thread ends in a barrier that waits for every
thread; on a CPU shared with other work a descheduled thread holds the
barrier for a scheduler slice, so such ops cost many times their
arithmetic (the garment head: 1.9 s with 2 threads, 21 ms with one, on the
busy 2-core benchmark machine; docs/benchmarks/lat.md). They run on one
thread; large passes (backbones, training) keep the configured count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Intra-op threads for per-photo torch work that is too small to share out.
SMALL_OP_THREADS = 1


@contextmanager
def torch_threads(n: int = SMALL_OP_THREADS) -> Iterator[None]:
    """Run the block's torch ops on ``n`` intra-op threads (0: leave as is), then restore the count.

    The count is the calling thread's OpenMP setting: torch work on threads
    that are already running keeps its own count meanwhile.
    """
    old = torch.get_num_threads()
    if n <= 0 or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)

"""The C allocator's settings for a process that searches or indexes.

A search allocates and frees the same large, short-lived buffers again and
again: SIFT's scale space (about 24 MB for a 348-px photo, which OpenCV
doubles before the first octave), the word-assignment products, decoded
photos. glibc's malloc hands memory at the top of its heap back to the
kernel as soon as more than ``M_TRIM_THRESHOLD`` of it is free, and serves
blocks above ``M_MMAP_THRESHOLD`` with fresh mappings; both thresholds start
small (128 KiB) and move only with the history of the process. Whatever the
heap gave back, the next search takes again page by page, each page zeroed
by the kernel: 6,100 minor page faults per query photo's SIFT in a searching
process, which took SIFT from 21 to 32 ms and the whole other_product search
from 63 to 75 ms (docs/decisions.md).

:func:`keep_freed_memory` fixes both thresholds, so a process keeps up to
``trim`` bytes of freed heap for its next search (RSS about 30 MiB higher in
the search benchmark). ``runtime.malloc_trim_mib`` sets it; 0 leaves the
allocator alone. Other C libraries (musl, macOS) have no such thresholds:
nothing is done there. A malloc setting in the environment (``GLIBC_TUNABLES``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``) is the user's choice
and wins.

:func:`give_back` hands the freed heap back to the kernel at once (glibc's
``malloc_trim``): for after a decode far larger than any search's buffers (a
photo declaring tens of millions of pixels), whose freed blocks the kept heap
above, and the heaps of the server's other threads, would otherwise hold.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks above this are always fresh mappings (glibc's largest mmap threshold on 64-bit: larger
#: ones are refused). SIFT's buffers for an upload-sized photo are a few MiB each.
MMAP_THRESHOLD = 32 * 2**20
#: Environment variables by which a user sets the allocator themselves.
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
#: (trim, mmap) thresholds in bytes this process set, or None.
applied: tuple[int, int] | None = None


def _glibc(function: str) -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl has a mallopt that does nothing
            return None
        return getattr(libc, function)
    except (OSError, AttributeError):
        return None


def _mallopt() -> Any:
    return _glibc("mallopt")


def give_back() -> bool:
    """Return the freed memory of every heap of the process to the kernel (glibc only); whether it could."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def user_set() -> bool:
    """Whether the environment already sets glibc's malloc."""
    return any(k in os.environ for k in USER_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory(trim_mib: int) -> bool:
    """Keep up to ``trim_mib`` MiB of freed heap in the process (glibc only; 0: leave as is).

    Returns whether the allocator was set. Process-wide: the last call wins.
    """
    global applied
    if trim_mib < 0:
        raise ConfigError(f"runtime.malloc_trim_mib must be 0 or more, got {trim_mib}")
    if trim_mib == 0 or user_set():
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    trim = trim_mib * 2**20
    mmap = min(MMAP_THRESHOLD, trim)
    with _lock:
        if applied == (trim, mmap):
            return True
        if mallopt(M_MMAP_THRESHOLD, mmap) != 1 or mallopt(M_TRIM_THRESHOLD, trim) != 1:
            log.warning("mallopt refused the thresholds (trim %d, mmap %d bytes): allocator left as is", trim, mmap)
            return False
        applied = (trim, mmap)
    log.debug("malloc keeps up to %d MiB of freed heap; blocks above %d MiB are mapped", trim_mib, mmap >> 20)
    return True

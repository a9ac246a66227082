"""Durable writes: a file is complete on disk before it is renamed into place."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` and flush it to disk."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

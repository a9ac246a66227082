"""Where benchmarks find the real photos (SHOPLENS_DATA, default ../shared/data) and keep their caches; larger copies of the photos."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    root = Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data")
    if not (root / "grocery" / "catalog.csv").exists():
        sys.exit(f"real photos not found at {root}: set SHOPLENS_DATA to the shared data folder")
    return root


def bench_cache(name: str) -> Path:
    """Where a benchmark keeps what it computes once: ``$SHOPLENS_CACHE/bench/NAME`` (default ``~/.cache/shoplens/bench/NAME``)."""
    return Path(os.environ.get("SHOPLENS_CACHE") or Path.home() / ".cache" / "shoplens") / "bench" / name


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def enlarged(path: Path, factor: float = 2) -> bytes:
    """The photo ``factor`` times larger (Lanczos), as JPEG bytes (quality 90): the size of phone uploads."""
    with Image.open(path) as img:
        big = img.convert("RGB").resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    return buf.getvalue()

"""Where benchmarks find the real photos (SHOPLENS_DATA, default ../shared/data)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    root = Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data")
    if not (root / "grocery" / "catalog.csv").exists():
        sys.exit(f"real photos not found at {root}: set SHOPLENS_DATA to the shared data folder")
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))

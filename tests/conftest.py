"""Shared fixtures: real photos (skipped when absent) and generated images."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shoplens.config import INTENTS
from shoplens.intent import IntentClassifier, register_intent_classifier
from shoplens.models import Encoding

REPO = Path(__file__).resolve().parents[1]


class FixedIntent(IntentClassifier):
    """Says the same intent for every photo (to drive the pipeline's branches)."""

    def __init__(self, intent: str) -> None:
        self.name = f"fixed-{intent}"
        self.backbone = "efficientnet_lite0"
        self.intent = intent

    def predict(self, encodings: Sequence[Encoding]) -> np.ndarray:
        probs = np.full((len(encodings), 3), 0.05, dtype=np.float32)
        probs[:, INTENTS.index(self.intent)] = 0.9
        return probs


for _intent in INTENTS:
    register_intent_classifier(f"test-{_intent}", f"always {_intent} (tests)")(lambda _i=_intent, **_: FixedIntent(_i))


def data_root() -> Path:
    return Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "grocery" / "catalog.csv").exists():
        pytest.skip(f"real photos not found at {root} (set SHOPLENS_DATA to ../shared/data)")
    return root


def write_grocery_catalogue(path: Path, root: Path, products: Sequence[Mapping[str, str]], photos: Sequence[Mapping[str, str]] = ()) -> Path:
    """A catalogue CSV (product_id, title, category, image) of grocery ``products`` (rows of catalog.csv)
    and more ``photos`` of them (rows of photos.csv, titled as their product); images as paths under ``root``."""
    info = {r["product_id"]: (r["title"], r["category"]) for r in products}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "title", "category", "image"])
        for r in [*products, *photos]:
            w.writerow([r["product_id"], *info[r["product_id"]], str(root / r["image"])])
    return path


def make_image(path: Path, seed: int, size: tuple[int, int] = (160, 120), kind: str = "shapes") -> Path:
    """A deterministic synthetic picture: coloured shapes on a background."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        x1, y1 = x0 + int(rng.integers(10, size[0] // 2)), y0 + int(rng.integers(10, size[1] // 2))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def to_word_sorted_layout(segment_dir: Path) -> None:
    """Rewrite a saved local-index segment's postings as segments before stop 19 held them: CSR by word, a row per entry."""
    import json

    vocabulary_size = int(json.loads((segment_dir.parent / "MANIFEST.json").read_text())["vocabulary_size"])
    row_ptr, words, sigs = (np.load(segment_dir / f"{k}.npy") for k in ("row_ptr", "words", "sigs"))
    rows = np.repeat(np.arange(len(row_ptr) - 1, dtype=np.int32), np.diff(row_ptr))
    order = np.argsort(words, kind="stable")
    ptr = np.zeros(vocabulary_size + 1, np.int64)
    np.cumsum(np.bincount(words, minlength=vocabulary_size), out=ptr[1:])
    np.save(segment_dir / "ptr.npy", ptr)
    np.save(segment_dir / "rows.npy", rows[order])
    np.save(segment_dir / "sigs.npy", sigs[order])
    for k in ("row_ptr", "words"):
        (segment_dir / f"{k}.npy").unlink()


@pytest.fixture
def synthetic_catalogue(tmp_path: Path) -> Path:
    """A CSV catalogue of 6 products (one with two photos) of generated images."""
    rows = ["product_id,image,title,category,domain,price,sku"]
    for i in range(6):
        make_image(tmp_path / "img" / f"p{i}.png", seed=i)
        rows.append(f"p{i},img/p{i}.png,Product {i},{'red' if i < 3 else 'blue'},other_product,{10 + i}.5,00{i}")
    make_image(tmp_path / "img" / "p0b.png", seed=100)
    rows.append("p0,img/p0b.png,Product 0,red,other_product,10.5,000")
    csv_path = tmp_path / "catalog.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path

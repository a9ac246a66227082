"""The garment detector interface."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from ..models import Encoding

#: Labels a garment detector may give a box.
GARMENT_LABELS = ("top", "outerwear", "dress", "bottom", "shoes", "bag", "hat", "accessory")


@dataclass(frozen=True)
class Garment:
    """One detected garment; ``box`` is (x0, y0, x1, y1) in pixels of the photo as given."""

    box: tuple[float, float, float, float]
    label: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {"box": [round(v, 1) for v in self.box], "label": self.label, "score": round(self.score, 4)}


class Detector(abc.ABC):
    """Finds every garment in photos."""

    name: str
    #: The backbone whose encodings :meth:`detect` reads (``None``: it reads pixels only).
    backbone: str | None = None
    #: Input size the backbone must be run at (``None``: its default).
    input_size: int | None = None

    @abc.abstractmethod
    def detect(self, encodings: Sequence[Encoding]) -> list[list[Garment]]:
        """One list of garments per encoding (``encoding.photo`` holds the pixels)."""

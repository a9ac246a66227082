"""The pretrained default intent classifier: ImageNet classes mapped to intents.

ImageNet-1k's classes already separate garments (jersey, cardigan, jean,
running shoe …), other goods (bottles, cartons, furniture, electronics, fruit)
and things no shop sells (animals, landscapes, buildings, web sites). The
mapping lives in ``data/imagenet_intent.tsv``, reviewed by hand. An intent's
score is the total softmax probability of its classes.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Sequence

import numpy as np
import torch

from ..config import INTENTS
from ..models import Encoding
from .base import IntentClassifier


@lru_cache(maxsize=1)
def intent_of_class() -> np.ndarray:
    """(1000,) index into ``INTENTS`` for every ImageNet class."""
    text = resources.files(__package__).joinpath("data/imagenet_intent.tsv").read_text("utf-8")
    table = np.full(1000, -1, dtype=np.int64)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        index, _wnid, intent, _name = line.split("\t", 3)
        table[int(index)] = INTENTS.index(intent)
    if (table < 0).any():
        raise RuntimeError("imagenet_intent.tsv does not map every ImageNet class")
    return table


class ImageNetIntent(IntentClassifier):
    name = "imagenet-map"

    def __init__(self, backbone: str = "efficientnet_lite0") -> None:
        self.backbone = backbone
        onehot = np.zeros((1000, len(INTENTS)), dtype=np.float32)
        onehot[np.arange(1000), intent_of_class()] = 1.0
        self._group = torch.from_numpy(onehot)

    def predict(self, encodings: Sequence[Encoding]) -> np.ndarray:
        if not encodings:
            return np.zeros((0, len(INTENTS)), dtype=np.float32)
        if any(e.logits is None for e in encodings):
            raise ValueError(f"{self.name} needs a backbone with an ImageNet head")
        logits = torch.stack([e.logits for e in encodings])  # type: ignore[misc]
        return (logits.float().softmax(-1) @ self._group).numpy()

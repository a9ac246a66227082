"""The pretrained default intent classifier: ImageNet classes mapped to intents.

ImageNet-1k's classes already separate garments (jersey, cardigan, jean,
running shoe …), other goods (bottles, cartons, furniture, electronics, fruit)
and things no shop sells (animals, landscapes, buildings, vehicles, web sites,
served dishes). The mapping lives in ``data/imagenet_intent.tsv``, reviewed by
hand (docs/intent.md gives the rules and the edge cases).

The decision rule, with no training:

1. ``q = softmax(logits / temperature)``; each intent's evidence is the sum of
   ``q`` over its classes. A temperature below 1 lets the few classes the
   network believes in vote, rather than the long tail of unlikely classes
   (of which non-product has the most: 583 of 1000).
2. Priors multiply the evidence: ``apparel_prior`` makes up for apparel
   having few classes (70 against 330 other goods), ``non_product_prior`` for
   most uploads not being product photos (docs/method.md).
3. When the network recognises nothing — the entropy ``H`` of
   ``softmax(logits)`` is above ``uncertain_nats`` — the non-product prior
   grows by ``exp(uncertain_slope * (H - uncertain_nats))``: noise, textures
   and abstract pictures spread their probability over hundreds of unrelated
   classes, while a photo of a product points at a few.

The three scores are then normalised to sum to 1, so their argmax is the
intent.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from ..config import INTENTS
from ..models import Encoding, imagenet_class_names
from .base import IntentClassifier

#: ImageNet classes of loose fresh produce: fruit and vegetables (936-957: head cabbage ... pomegranate),
#: corn, rose hip and edible fungi (987, 989, 996-998). One item looks like the next and nothing on it
#: is printed, so local features barely tell products apart (docs/decisions.md, local.skip_produce).
PRODUCE_CLASSES = (*range(936, 958), 987, 989, 996, 997, 998)


def produce_share(logits: np.ndarray | torch.Tensor) -> float:
    """The probability ImageNet ``logits`` of one photo (1000,) put on :data:`PRODUCE_CLASSES`."""
    lg = np.asarray(logits, dtype=np.float64).reshape(-1)
    p = np.exp(lg - lg.max())
    return float(p[list(PRODUCE_CLASSES)].sum() / p.sum())


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


def predict_category(logits: np.ndarray | torch.Tensor, domain: str) -> str:
    """The name of the most likely ImageNet class, by one photo's ``logits`` (1000,), among the classes of ``domain``."""
    mask = intent_of_class() == INTENTS.index(domain)
    return imagenet_class_names()[int(np.argmax(np.where(mask, np.asarray(logits), -np.inf)))]


def group_matrix(class_intent: np.ndarray | torch.Tensor) -> np.ndarray:
    """(1000, 3) one-hot float64 matrix: class -> intent."""
    index = np.asarray(class_intent, dtype=np.int64).reshape(-1)
    onehot = np.zeros((index.size, len(INTENTS)))
    onehot[np.arange(index.size), index] = 1.0
    return onehot


class ImageNetIntent(IntentClassifier):
    """ImageNet-1k probabilities summed per intent, with priors and an uncertainty rule."""

    name = "imagenet-map"

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        temperature: float = 0.5,
        apparel_prior: float = 2.0,
        non_product_prior: float = 2.0,
        uncertain_nats: float = 4.0,
        uncertain_slope: float = 2.5,
        class_intent: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        if temperature <= 0 or apparel_prior <= 0 or non_product_prior <= 0 or uncertain_slope < 0:
            raise ValueError("temperature and priors must be positive, uncertain_slope non-negative")
        self.backbone = backbone
        self.temperature = temperature
        self.apparel_prior = apparel_prior
        self.non_product_prior = non_product_prior
        self.uncertain_nats = uncertain_nats
        self.uncertain_slope = uncertain_slope
        self.class_intent = np.asarray(intent_of_class() if class_intent is None else class_intent, dtype=np.int64)
        if self.class_intent.shape != (1000,) or self.class_intent.min() < 0 or self.class_intent.max() >= len(INTENTS):
            raise ValueError("class_intent must map each of the 1000 ImageNet classes to an intent index")
        self._group = group_matrix(self.class_intent)

    def params(self) -> dict[str, float]:
        """The decision rule's parameters (as the constructor takes them)."""
        return {
            "temperature": self.temperature,
            "apparel_prior": self.apparel_prior,
            "non_product_prior": self.non_product_prior,
            "uncertain_nats": self.uncertain_nats,
            "uncertain_slope": self.uncertain_slope,
        }

    def predict(self, encodings: Sequence[Encoding]) -> np.ndarray:
        if not encodings:
            return np.zeros((0, len(INTENTS)), dtype=np.float32)
        if any(e.logits is None for e in encodings):
            raise ValueError(f"{self.name} needs a backbone with an ImageNet head")
        return self.predict_logits(np.stack([np.asarray(e.logits) for e in encodings]))

    def predict_logits(self, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 3) intent probabilities from (N, 1000) ImageNet logits.

        In float64 numpy, as it was in float64 torch: 30 instead of 63 µs for
        one photo (torch's per-op dispatch), the same probabilities.
        """
        lg = np.asarray(logits, dtype=np.float32).astype(np.float64)
        shifted = lg - lg.max(-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        entropy = -(np.exp(log_p) * log_p).sum(-1)
        q = np.exp(shifted / self.temperature)  # softmax(lg / T): the same shift, scaled, keeps exp in range
        evidence = (q / q.sum(-1, keepdims=True)) @ self._group
        non = self.non_product_prior * np.exp(self.uncertain_slope * np.maximum(entropy - self.uncertain_nats, 0.0))
        scores = evidence * np.stack([np.full_like(non, self.apparel_prior), np.ones_like(non), non], axis=-1)
        return (scores / scores.sum(-1, keepdims=True)).astype(np.float32)

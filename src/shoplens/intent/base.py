"""The intent classifier interface."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from ..config import INTENTS
from ..models import Encoding


class IntentClassifier(abc.ABC):
    """Maps backbone encodings to probabilities over ``INTENTS``."""

    name: str
    #: The backbone whose encodings :meth:`predict` reads.
    backbone: str
    #: Input size the backbone must be run at (``None``: its default).
    input_size: int | None = None

    @abc.abstractmethod
    def predict(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """(N, 3) probabilities, columns in ``INTENTS`` order."""

    @staticmethod
    def labels(probs: np.ndarray) -> list[str]:
        return [INTENTS[i] for i in np.asarray(probs).argmax(axis=1)]

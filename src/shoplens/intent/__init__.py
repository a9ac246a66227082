"""Step 1: the intent gate — apparel, other_product or non_product.

An :class:`IntentClassifier` reads backbone encodings (the same forward pass
the other-goods embedding uses) and returns probabilities over
:data:`~shoplens.config.INTENTS`. ``create_intent_classifier(name)`` builds one
by name; ``list_intent_classifiers()`` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..registry import Factory, Registry
from .base import IntentClassifier
from .gate_head import GateHead
from .imagenet_map import PRODUCE_CLASSES, ImageNetIntent, predict_category, produce_share
from .trained import IntentTrainReport, TrainedIntent, read_labelled, train_intent

_REGISTRY: Registry[Factory[IntentClassifier]] = Registry("intent classifier")


@_REGISTRY.register("imagenet-map", "ImageNet-1k class probabilities mapped to intents (no training)")
def _imagenet_map(*, backbone: str = "efficientnet_lite0", **_: Any) -> IntentClassifier:
    return ImageNetIntent(backbone=backbone)


@_REGISTRY.register("default-head", "the shipped default: a small head over imagenet-map with a product guard")
def _default_head(*, path: Path | None = None, **_: Any) -> IntentClassifier:
    return GateHead(None if path is None else str(path))


@_REGISTRY.register("trained", "a head trained by `shoplens train-intent` (path: the saved model file)")
def _trained(*, path: Path, **_: Any) -> IntentClassifier:
    return TrainedIntent(path)


def create_intent_classifier(name: str, **kwargs: Any) -> IntentClassifier:
    return _REGISTRY.create(name, **kwargs)


def list_intent_classifiers(pattern: str = "*") -> list[str]:
    return _REGISTRY.names(pattern)


def describe_intent_classifiers() -> dict[str, str]:
    """Every registered intent classifier name with its one-line description."""
    return _REGISTRY.describe()


def register_intent_classifier(name: str, description: str = "") -> Any:
    return _REGISTRY.register(name, description)


__all__ = [
    "PRODUCE_CLASSES",
    "GateHead",
    "ImageNetIntent",
    "IntentClassifier",
    "IntentTrainReport",
    "TrainedIntent",
    "create_intent_classifier",
    "describe_intent_classifiers",
    "list_intent_classifiers",
    "predict_category",
    "produce_share",
    "read_labelled",
    "register_intent_classifier",
    "train_intent",
]

"""shoplens: search a shop's own product catalogue with a photo.

The few names most users need::

    from shoplens import Shoplens, open_store, classify, detect
    lens = Shoplens("store-dir")          # a catalogue store (created if absent)
    lens.index("catalog.csv")             # add or update products
    lens.search_one("photo.jpg")          # SPEC.md's search result

Stages are pluggable through registries: ``list_models``/``create_model``
(backbones), ``list_intent_classifiers``, ``list_detectors``.
"""

from __future__ import annotations

from .api import Shoplens, classify, detect, migrate, open_store
from .config import DOMAINS, INTENTS, Config, resolve_config
from .detect import list_detectors
from .errors import (
    BadImageError,
    CatalogueError,
    ConfigError,
    MissingDependencyError,
    NotFoundError,
    ShoplensError,
    StoreBusyError,
    StoreError,
    UnknownModelError,
)
from .intent import list_intent_classifiers
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "DOMAINS",
    "INTENTS",
    "BadImageError",
    "CatalogueError",
    "Config",
    "ConfigError",
    "MissingDependencyError",
    "NotFoundError",
    "Shoplens",
    "ShoplensError",
    "StoreBusyError",
    "StoreError",
    "UnknownModelError",
    "classify",
    "create_model",
    "detect",
    "list_detectors",
    "list_intent_classifiers",
    "list_models",
    "migrate",
    "open_store",
    "resolve_config",
]

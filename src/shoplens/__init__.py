"""shoplens: search a shop's own product catalogue with a photo.

The few names most users need::

    from shoplens import Shoplens, open_store, classify, detect
    lens = Shoplens("store-dir")          # a catalogue store (created if absent)
    lens.index("catalog.csv")             # add or update products
    lens.search_one("photo.jpg")          # the search result (docs/method.md)

Stages are pluggable through registries: ``list_models``/``create_model``
(backbones), ``list_intent_classifiers``, ``list_detectors``.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import (
    BadImageError,
    CatalogueError,
    ConfigError,
    MissingDependencyError,
    NoTextModelError,
    NotFoundError,
    ShoplensError,
    StoreBusyError,
    StoreError,
    UnknownModelError,
)

if TYPE_CHECKING:
    from .api import Shoplens, classify, detect, migrate, open_store
    from .config import DOMAINS, INTENTS, Config, resolve_config
    from .detect import list_detectors
    from .intent import list_intent_classifiers
    from .models import create_model, list_models

#: Where each public name lives. They are imported on first use: ``import shoplens`` (and the
#: command line's ``--help``) must not pay for torch, which the models need.
_LAZY = {
    "Shoplens": "api", "classify": "api", "detect": "api", "migrate": "api", "open_store": "api",
    "DOMAINS": "config", "INTENTS": "config", "Config": "config", "resolve_config": "config",
    "list_detectors": "detect", "list_intent_classifiers": "intent",
    "create_model": "models", "list_models": "models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoplens' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(ModuleType):
    """The package object: a subpackage loaded later never hides a public name.

    ``shoplens.detect`` is the function (``api.detect``), as it was when the
    package imported everything at once; importing the ``shoplens.detect``
    subpackage would otherwise bind the module over it.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, ModuleType) and _LAZY[name] != name:
            return  # the submodule stays in sys.modules, where ``from shoplens.detect import …`` finds it
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "DOMAINS",
    "INTENTS",
    "BadImageError",
    "CatalogueError",
    "Config",
    "ConfigError",
    "MissingDependencyError",
    "NoTextModelError",
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

"""Optional dependencies, imported only when a feature needs them.

``import shoplens`` never imports transformers or open_clip: loaders call
:func:`import_optional` when a model is built, which turns a missing (or
broken) package into a :class:`MissingDependencyError` naming the extra.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from .errors import MissingDependencyError

logger = logging.getLogger(__name__)


def import_optional(module: str, package: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'shoplens[extra]'``.

    A package that is installed but fails to import (e.g. a torchvision built
    for another torch) counts as missing: the error says why.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, extra, purpose) from None
    except Exception as err:
        logger.debug("importing %s failed", module, exc_info=True)
        raise MissingDependencyError(
            package, extra, f"{purpose} (installed '{package}' failed to import: {type(err).__name__}: {err})"
        ) from err

"""Typed errors raised by shoplens.

Every error a user can cause derives from :class:`ShoplensError`, so a caller
can catch one type and show ``str(err)``: the messages are written for people.
"""

from __future__ import annotations


class ShoplensError(Exception):
    """Base class of every error shoplens raises on purpose."""


class BadImageError(ShoplensError):
    """An image that cannot be used: unreadable, corrupt, too large, not an image."""


class CatalogueError(ShoplensError):
    """A catalogue (CSV or folder) or one of its rows is malformed."""


class UnknownModelError(ShoplensError):
    """A model, detector, classifier or store name that no registry knows."""


class ConfigError(ShoplensError):
    """A configuration file or option that is invalid."""


class StoreError(ShoplensError):
    """The store is missing, unavailable, locked or inconsistent."""


class StoreBusyError(StoreError):
    """Another writer holds the store (one writer per store: see :mod:`shoplens.store.lock`)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        #: The process holding the store, when it could be told.
        self.pid = pid


class MissingDependencyError(ShoplensError):
    """An optional dependency is needed; the message names the ``pip install``."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'shoplens[{extra}]'"
        )
        self.package = package
        self.extra = extra


class NoTextModelError(ShoplensError):
    """Text search asked of a store whose backbone has no text tower (only CLIP and SigLIP models have one)."""


class FilterError(ShoplensError):
    """A metadata filter that cannot be parsed (see :mod:`shoplens.filters`)."""


class NotFoundError(ShoplensError):
    """A product or other object that does not exist."""


class BadBoxError(ShoplensError):
    """A search's crop box that is malformed, empty or outside the photo (see :mod:`shoplens.imaging`)."""

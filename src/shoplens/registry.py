"""A small named registry, one per pluggable kind of thing.

Backbones (and their name schemes), poolings, head kinds, Hugging Face
loaders, intent classifiers, garment detectors and vector stores each keep a
:class:`Registry`; ``list_*()`` and ``create_*()`` in their packages are thin
wrappers around it. Unknown names raise :class:`UnknownModelError` listing
what is known.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import UnknownModelError

T = TypeVar("T")
R = TypeVar("R")

#: What a factory registry holds: callables building an ``R``.
Factory = Callable[..., R]


class Registry(Generic[T]):
    """Entries of type ``T`` (factories, poolings, model entries) by name, each with a one-line description."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def add(self, name: str, entry: T, description: str = "") -> T:
        """Register ``entry`` under ``name`` (a ``ValueError`` if taken); a function's description defaults to its docstring's first line.

        A name ending in ``:`` registers a scheme (see :meth:`create`).
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        if not description and (inspect.isroutine(entry) or inspect.isclass(entry)):
            description = (entry.__doc__ or "").strip().split("\n")[0]
        self._descriptions[name] = description
        return entry

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorator(entry: T) -> T:
            return self.add(name, entry, description)

        return decorator

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The entry registered as ``name`` exactly; :class:`UnknownModelError` listing the known names if none."""
        if not isinstance(name, str) or not name:
            raise UnknownModelError(f"a {self.kind} name must be a non-empty string")
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownModelError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def describe(self) -> dict[str, str]:
        return dict(sorted(self._descriptions.items()))

    def create(self: Registry[Factory[R]], name: str, **kwargs: Any) -> R:
        """Call the factory registered as ``name``.

        ``SCHEME:LOCATION`` calls the factory registered as ``SCHEME:`` with
        ``location="LOCATION"`` (``create("owlv2:path")``).
        """
        if not isinstance(name, str) or not name:
            raise UnknownModelError(f"a {self.kind} name must be a non-empty string")
        if name in self._entries and not name.endswith(":"):
            return self._entries[name](**kwargs)
        scheme, sep, location = name.partition(":")
        if sep and f"{scheme}:" in self._entries:
            if not location:
                raise UnknownModelError(f"{self.kind} name {name!r} has no location after '{scheme}:'")
            return self._entries[f"{scheme}:"](location=location, **kwargs)
        raise UnknownModelError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}")

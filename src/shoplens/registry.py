"""A small named-factory registry, one per pluggable stage.

Intent classifiers, garment detectors and vector stores each keep a
:class:`Registry`; ``list_*()`` and ``create_*()`` in their packages are thin
wrappers around it. Unknown names raise :class:`UnknownModelError` listing
what is known.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import UnknownModelError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under ``name``.

        A name ending in ``:`` registers a scheme: ``create("owlv2:path")``
        calls that factory with ``location="path"``.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            self._descriptions[name] = description or (factory.__doc__ or "").strip().split("\n")[0]
            return factory

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._factories if fnmatch.fnmatchcase(n, pattern))

    def describe(self) -> dict[str, str]:
        return dict(sorted(self._descriptions.items()))

    def create(self, name: str, **kwargs: Any) -> T:
        if not isinstance(name, str) or not name:
            raise UnknownModelError(f"a {self.kind} name must be a non-empty string")
        if name in self._factories and not name.endswith(":"):
            return self._factories[name](**kwargs)
        scheme, sep, location = name.partition(":")
        if sep and f"{scheme}:" in self._factories:
            if not location:
                raise UnknownModelError(f"{self.kind} name {name!r} has no location after '{scheme}:'")
            return self._factories[f"{scheme}:"](location=location, **kwargs)
        raise UnknownModelError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}")

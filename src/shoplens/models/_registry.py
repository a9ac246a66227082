"""The backbone registry: names -> entries -> models.

A name is either a registered entry (``efficientnet_lite0``) or a scheme with
a location (``open_clip:ViT-B-32/laion2b_s34b_b79k``, ``hf-hub:org/model``,
``local-dir:/path/to/model``). :func:`parse_model_name` is the one place that
splits names, and raises :class:`UnknownModelError` on anything it cannot use.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from ..errors import UnknownModelError
from .backbone import Backbone
from .preprocess import PreprocessCfg


@dataclass(frozen=True)
class ModelEntry:
    """A registered backbone: how to build it and how to feed it."""

    name: str
    build: Callable[["ModelEntry", str], Backbone]
    preprocess: PreprocessCfg
    description: str = ""
    #: The pip extra that provides its dependencies, if any.
    extra: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


class ParsedName(NamedTuple):
    scheme: str  # "" for a registered entry
    location: str


_ENTRIES: dict[str, ModelEntry] = {}
#: Scheme -> builder(location) for names that carry their own location.
_SCHEMES: dict[str, Callable[[str], Backbone]] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _ENTRIES:
        raise ValueError(f"model {entry.name!r} is already registered")
    _ENTRIES[entry.name] = entry
    return entry


def register_scheme(scheme: str, builder: Callable[[str], Backbone]) -> None:
    if scheme in _SCHEMES:
        raise ValueError(f"model scheme {scheme!r} is already registered")
    _SCHEMES[scheme] = builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``."""
    return sorted(n for n in _ENTRIES if fnmatch.fnmatchcase(n, pattern))


def list_schemes() -> list[str]:
    return sorted(_SCHEMES)


def parse_model_name(name: str) -> ParsedName:
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError("a model name must be a non-empty string")
    name = name.strip()
    scheme, sep, location = name.partition(":")
    if sep and scheme in _SCHEMES:
        if not location:
            raise UnknownModelError(f"model name {name!r} has no location after '{scheme}:'")
        return ParsedName(scheme, location)
    if name in _ENTRIES:
        return ParsedName("", name)
    known = ", ".join(list_models()) or "none"
    schemes = ", ".join(f"{s}:..." for s in list_schemes())
    raise UnknownModelError(f"unknown model {name!r}; registered models: {known}; or one of {schemes}")


def get_entry(name: str) -> ModelEntry:
    parsed = parse_model_name(name)
    if parsed.scheme:
        raise UnknownModelError(f"{name!r} is not a registered entry")
    return _ENTRIES[parsed.location]


def create_model(name: str) -> Backbone:
    """Build the backbone called ``name`` (see :func:`parse_model_name`)."""
    parsed = parse_model_name(name)
    if parsed.scheme:
        return _SCHEMES[parsed.scheme](parsed.location)
    entry = _ENTRIES[parsed.location]
    return entry.build(entry, entry.name)

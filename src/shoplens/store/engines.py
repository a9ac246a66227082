"""The store engines by name or location scheme, and :func:`open_catalogue_store`, which picks one."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..registry import Factory, Registry
from .base import CatalogueStore, Projector
from .embedded import EmbeddedStore

STORES: Registry[Factory[CatalogueStore]] = Registry("store")


@STORES.register("embedded", "SQLite + FAISS in a folder (the default): a path, or embedded:PATH")
def _embedded(location: str = "", projector: Projector | None = None, **kwargs: Any) -> CatalogueStore:
    return EmbeddedStore(location, projector, **kwargs)


@STORES.register("embedded:", "SQLite + FAISS in a folder: embedded:PATH")
def _embedded_scheme(location: str, projector: Projector | None = None, **kwargs: Any) -> CatalogueStore:
    return EmbeddedStore(location, projector, **kwargs)


@STORES.register("milvus:", "a Milvus cluster: milvus://HOST:PORT/NAME (token from $SHOPLENS_MILVUS_TOKEN)")
def _milvus(location: str, projector: Projector | None = None, **kwargs: Any) -> CatalogueStore:
    from .milvus import MilvusStore

    # No writer lock on Milvus (see open_catalogue_store); a reader only never uploads its files.
    m = re.fullmatch(r"//([^/]+)/([A-Za-z_][A-Za-z0-9_]*)/?", location)
    if not m:
        raise StoreError(f"milvus:{location}: expected milvus://HOST:PORT/NAME")
    scheme = "https" if kwargs.pop("tls", False) else "http"
    return MilvusStore(f"{scheme}://{m.group(1)}", m.group(2), projector, token=os.environ.get("SHOPLENS_MILVUS_TOKEN"), **kwargs)


@STORES.register("milvus-lite:", "Milvus Lite in a local file: milvus-lite:PATH.db[#NAME]")
def _milvus_lite(location: str, projector: Projector | None = None, **kwargs: Any) -> CatalogueStore:
    from .milvus import MilvusStore

    path, _, name = location.partition("#")
    if not path.endswith(".db"):
        raise StoreError(f"milvus-lite:{location}: the Milvus Lite file name must end in .db")
    return MilvusStore(str(Path(path).expanduser().absolute()), name or "shoplens", projector, **kwargs)


def list_stores() -> list[str]:
    """Names of the registered store engines (schemes end with ':')."""
    return STORES.names()


def describe_stores() -> dict[str, str]:
    """Every registered store engine name with its one-line description."""
    return STORES.describe()


def open_catalogue_store(
    location: str | Path, projector: Projector | None = None, *, create: bool = True, read_only: bool = False, **kwargs: Any
) -> CatalogueStore:
    """Open the catalogue store at ``location``; the location picks the engine.

    - a folder path (or ``embedded:PATH``): :class:`EmbeddedStore`;
    - ``milvus://HOST:PORT/NAME``: Milvus (collections ``NAME_*``);
    - ``milvus-lite:PATH.db[#NAME]``: Milvus Lite, the same client API in a local file.

    ``read_only``: open an existing store to search and read it. Otherwise an
    embedded store is opened as its one writer and holds its writer lock
    until closed (:class:`~shoplens.errors.StoreBusyError` if another writer
    has it). The Milvus engine takes no writer lock: there, one writer at a
    time is the operator's rule. ``kwargs`` go to the engine (``index=`` for both).
    """
    text = str(location)
    scheme, sep, rest = text.partition(":")
    if sep and len(scheme) > 1 and f"{scheme}:" in STORES:
        return STORES.create(text, projector=projector, create=create, read_only=read_only, **kwargs)
    if sep and len(scheme) > 1 and re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) and rest.startswith("//"):
        raise StoreError(f"unknown store location {text!r}; known schemes: {', '.join(n for n in STORES.names() if n.endswith(':'))}")
    return STORES.create("embedded", location=text, projector=projector, create=create, read_only=read_only, **kwargs)

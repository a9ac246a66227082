"""Heads: raw backbone descriptors -> the L2-normalised vectors that are indexed.

The store keeps every catalogue image's raw descriptor, so changing a head
(fitting a whitening, training a projection) re-embeds the catalogue without
running the backbone again. A head is saved as a plain dict of tensors with
its kind, and loaded back by :func:`load_head`.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import StoreError

_HEAD_KINDS: dict[str, Callable[[dict[str, Any]], "Head"]] = {}


def register_head(kind: str) -> Callable[[type["Head"]], type["Head"]]:
    def decorator(cls: type["Head"]) -> type["Head"]:
        _HEAD_KINDS[kind] = cls.from_state  # type: ignore[assignment]
        cls.kind = kind
        return cls

    return decorator


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Head(abc.ABC):
    kind: str

    @abc.abstractmethod
    def dim(self, raw_dim: int) -> int:
        """Output dimension for raw descriptors of ``raw_dim``."""

    @abc.abstractmethod
    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(N, raw_dim) raw descriptors -> (N, dim) L2-normalised vectors."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """Tensors and plain values that :meth:`from_state` rebuilds the head from."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, Any]) -> "Head":
        ...

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"kind": self.kind, "state": self.state()}, tmp)
        tmp.replace(path)


@register_head("identity")
class IdentityHead(Head):
    """The raw descriptor, L2-normalised."""

    def dim(self, raw_dim: int) -> int:
        return raw_dim

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return l2_normalize(raw)

    def state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Head":
        return cls()


def load_head(path: Path) -> Head:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return _HEAD_KINDS[blob["kind"]](blob["state"])
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any corruption becomes one clear error
        raise StoreError(f"{path}: cannot load the embedding head ({err})") from None

"""Heads: raw backbone descriptors -> the L2-normalised vectors that are indexed.

The store keeps every catalogue image's raw descriptor, so changing a head
(fitting a whitening, training a projection) re-embeds the catalogue without
running the backbone again. A head is saved as a plain dict of tensors with
its kind, and loaded back by :func:`load_head`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import StoreError
from ..registry import Registry

#: Each head kind's ``from_state``: what :func:`load_head` rebuilds a saved head with.
_HEAD_KINDS: Registry[Callable[[dict[str, Any]], Head]] = Registry("head kind")


def register_head(kind: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: saved heads of ``kind`` are rebuilt by the class's ``from_state``."""

    def decorator(cls: type[Head]) -> type[Head]:
        _HEAD_KINDS.add(kind, cls.from_state, (cls.__doc__ or "").strip().split("\n")[0])
        cls.kind = kind
        return cls

    return decorator


def list_heads(pattern: str = "*") -> list[str]:
    """The registered head kinds (what a saved head file may hold)."""
    return _HEAD_KINDS.names(pattern)


def describe_heads() -> dict[str, str]:
    """Every registered head kind with its one-line description."""
    return _HEAD_KINDS.describe()


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
    def from_state(cls, state: dict[str, Any]) -> Head:
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
    def from_state(cls, state: dict[str, Any]) -> Head:
        return cls()


def _f32(x: Any) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(x).detach().cpu().numpy(), dtype=np.float32)


def _check_raw(raw: np.ndarray, raw_dim: int, kind: str) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != raw_dim:
        raise ValueError(f"{kind} head expects (N, {raw_dim}) raw descriptors, got {raw.shape}")
    return raw


@register_head("linear")
class LinearHead(Head):
    """``l2(W · (l2(raw) − mean) + bias)``: PCA, PCA-whitening or a trained projection.

    ``info`` holds plain strings and numbers saying how the head was made
    (method, images, dimension…), kept with the head when it is saved.
    """

    def __init__(self, mean: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.mean = _f32(mean)
        self.weight = _f32(weight)
        self.bias = np.zeros(self.weight.shape[0], np.float32) if bias is None else _f32(bias)
        if self.mean.shape != (self.weight.shape[1],) or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"inconsistent linear head shapes {self.mean.shape}, {self.weight.shape}, {self.bias.shape}")
        self.info = dict(info or {})

    def dim(self, raw_dim: int) -> int:
        return int(self.weight.shape[0])

    def apply(self, raw: np.ndarray) -> np.ndarray:
        x = l2_normalize(_check_raw(raw, self.weight.shape[1], self.kind)) - self.mean
        return l2_normalize(x @ self.weight.T + self.bias)

    def state(self) -> dict[str, Any]:
        return {"mean": torch.from_numpy(self.mean), "weight": torch.from_numpy(self.weight),
                "bias": torch.from_numpy(self.bias), "info": dict(self.info)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Head:
        return cls(state["mean"], state["weight"], state["bias"], state.get("info"))


@register_head("mlp")
class MLPHead(LinearHead):
    """A linear head plus a one-hidden-layer residual: ``l2(W·x + b + W2·relu(W1·x + b1) + b2)``."""

    def __init__(self, mean: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                 w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__(mean, weight, bias, info)
        self.w1, self.b1, self.w2, self.b2 = _f32(w1), _f32(b1), _f32(w2), _f32(b2)
        if self.w1.shape[1] != self.weight.shape[1] or self.w2.shape != (self.weight.shape[0], self.w1.shape[0]):
            raise ValueError(f"inconsistent MLP head shapes {self.w1.shape}, {self.w2.shape}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        x = l2_normalize(_check_raw(raw, self.weight.shape[1], self.kind)) - self.mean
        hidden = np.maximum(x @ self.w1.T + self.b1, 0.0)
        return l2_normalize(x @ self.weight.T + self.bias + hidden @ self.w2.T + self.b2)

    def state(self) -> dict[str, Any]:
        out = super().state()
        out.update({k: torch.from_numpy(getattr(self, k)) for k in ("w1", "b1", "w2", "b2")})
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Head:
        return cls(state["mean"], state["weight"], state["bias"], state["w1"], state["b1"], state["w2"],
                   state["b2"], state.get("info"))


def load_head(path: Path) -> Head:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return _HEAD_KINDS.get(blob["kind"])(blob["state"])
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any corruption becomes one clear error
        raise StoreError(f"{path}: cannot load the embedding head ({err})") from None

"""The shipped default intent gate: a small head over the ImageNet-map rule, trained once.

Inputs of one photo (all from the gate's one backbone pass):

- ``tax`` (5): the log of the ImageNet probability summed per intent through
  the reviewed mapping, the entropy of the ImageNet distribution and its
  largest log-probability: what ImageNet's taxonomy says, in a form that
  carries over to product kinds the head never saw;
- ``mean`` and ``max`` (1,280 each): the s32 map averaged and max-pooled over
  the photo: what the picture looks like (drawn, captioned, flat, textured).

``logits = W · standardise(inputs) + a ⊙ log p_map + b``, with ``p_map`` the
``imagenet-map`` rule's output. The head was fitted by
``benchmarks/intent_gate.py`` on the shared grocery/clothing/outfits training
photos and generated negatives; its weights ship as ``data/gate_head.npz``.

**The product guard.** A head trained on a few product kinds learns "unlike my
products → non-product": trained without outfits it stopped half of them.
So where the mapping itself is confident the photo is a product (its apparel
or other_product score is at least :data:`GUARD`), the gate returns the
mapping's scores unchanged: furniture, electronics and the other product kinds
ImageNet knows keep the mapping's verdict, and the head decides the photos the
taxonomy does not claim (docs/intent.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from ..config import INTENTS
from ..errors import StoreError
from ..models import Encoding
from .base import IntentClassifier
from .imagenet_map import ImageNetIntent

#: The mapping's product score from which its verdict stands (the product guard).
GUARD = 0.5
#: The input blocks, in order.
INPUTS = ("tax", "mean", "max")
_FORMAT = "shoplens-gate-head-1"


def map_stats(s32: Any) -> np.ndarray:
    """(2, C): the mean and the max of one photo's (C, h, w) s32 map."""
    m = np.asarray(s32, dtype=np.float32)
    return np.stack([m.mean((1, 2)), m.max((1, 2))])


def taxonomy(logits: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(N, 5): log ImageNet probability per intent, entropy, largest log-probability."""
    lg = np.asarray(logits, dtype=np.float64)
    shifted = lg - lg.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    p = np.exp(log_p)
    return np.concatenate([np.log(p @ group + 1e-6), -(p * log_p).sum(-1, keepdims=True),
                           log_p.max(-1, keepdims=True)], 1)


def gate_inputs(logits: np.ndarray, stats: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(N, 5 + 2C) head inputs from (N, 1000) logits and (N, 2, C) :func:`map_stats`."""
    st = np.asarray(stats, dtype=np.float64)
    return np.concatenate([taxonomy(logits, group), st[:, 0], st[:, 1]], 1)


class GateHead(IntentClassifier):
    """The shipped default gate (``default-head``); ``path`` loads another head file of the same format."""

    name = "default-head"

    def __init__(self, path: str | None = None) -> None:
        self._set_state(_load(path))

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.backbone = str(state["backbone"])
        self._map = ImageNetIntent(self.backbone)
        self._mean, self._std = state["mean"], state["std"]
        self._weight, self._bias, self._prior_scale = state["weight"], state["bias"], state["prior_scale"]
        self.guard = float(state["guard"])
        self.report = str(state["report"])

    def predict_features(self, logits: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """(N, 3) probabilities from ImageNet logits and :func:`map_stats` rows."""
        prior = self._map.predict_logits(logits).astype(np.float64)
        z = (gate_inputs(logits, stats, self._map._group) - self._mean) / self._std
        out = z @ self._weight + self._bias + self._prior_scale * np.log(np.clip(prior, 1e-6, 1.0))
        out = np.exp(out - out.max(-1, keepdims=True))
        probs = out / out.sum(-1, keepdims=True)
        claimed = prior[:, :2].max(-1) >= self.guard
        probs[claimed] = prior[claimed]
        return probs.astype(np.float32)

    def predict(self, encodings: Sequence[Encoding]) -> np.ndarray:
        if not encodings:
            return np.zeros((0, len(INTENTS)), dtype=np.float32)
        if any(e.logits is None for e in encodings):
            raise ValueError(f"{self.name} needs a backbone with an ImageNet head")
        logits = np.stack([np.asarray(e.logits, dtype=np.float32) for e in encodings])
        stats = np.stack([map_stats(e.features["s32"]) for e in encodings])
        return self.predict_features(logits, stats)


@lru_cache(maxsize=4)
def _load_cached(path: str | None) -> dict[str, Any]:
    try:
        if path is None:
            with resources.files(__package__).joinpath("data/gate_head.npz").open("rb") as f:
                z = np.load(f, allow_pickle=False)
                state = {k: z[k] for k in z.files}
        else:
            with np.load(path, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise StoreError(f"{path or 'the shipped gate head'}: no such file") from None
    except Exception as err:  # noqa: BLE001 - any corruption becomes one clear error
        raise StoreError(f"{path or 'the shipped gate head'}: cannot load the gate head ({err})") from None
    if str(state.get("format")) != _FORMAT:
        raise StoreError(f"{path or 'the shipped gate head'}: not a shoplens gate head file")
    dim = state["mean"].shape[0]
    if state["weight"].shape != (dim, len(INTENTS)) or state["std"].shape != (dim,):
        raise StoreError(f"{path or 'the shipped gate head'}: corrupt gate head (tensor shapes)")
    return {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in state.items()}


def _load(path: str | None) -> dict[str, Any]:
    return _load_cached(None if path is None else str(path))


def fit_gate_head(
    logits: np.ndarray, stats: np.ndarray, labels: np.ndarray, weights: np.ndarray, *,
    backbone: str = "efficientnet_lite0", l2: float = 0.1, guard: float = GUARD, max_iter: int = 150,
) -> dict[str, np.ndarray]:
    """Fit the head (L-BFGS on weighted cross-entropy, L2 on ``W``); returns the state :func:`save_gate_head` writes."""
    import torch

    prior_rule = ImageNetIntent(backbone)
    x = gate_inputs(logits, stats, prior_rule._group)
    mean, std = x.mean(0), x.std(0) + 1e-3
    z = torch.from_numpy(((x - mean) / std).astype(np.float32))
    lp = torch.from_numpy(np.log(np.clip(prior_rule.predict_logits(logits), 1e-6, 1.0)).astype(np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    w = torch.from_numpy(np.asarray(weights, dtype=np.float32))
    torch.manual_seed(0)
    weight = torch.zeros(z.shape[1], len(INTENTS), requires_grad=True)
    bias = torch.zeros(len(INTENTS), requires_grad=True)
    scale = torch.ones(len(INTENTS), requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias, scale], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = z @ weight + bias + scale * lp
        loss = (torch.nn.functional.cross_entropy(out, y, reduction="none") * w).sum() / w.sum()
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return {
        "format": np.array(_FORMAT), "backbone": np.array(backbone), "inputs": np.array(INPUTS),
        "mean": mean.astype(np.float32), "std": std.astype(np.float32),
        "weight": weight.detach().numpy().astype(np.float32), "bias": bias.detach().numpy().astype(np.float32),
        "prior_scale": scale.detach().numpy().astype(np.float32), "guard": np.array(guard, dtype=np.float32),
        "report": np.array(""),
    }


def save_gate_head(state: dict[str, np.ndarray], path: str) -> None:
    """Write a head file (``np.savez_compressed``; loads with ``allow_pickle=False``)."""
    np.savez_compressed(path, **state)  # type: ignore[arg-type]
    _load_cached.cache_clear()


def head_from_state(state: dict[str, np.ndarray]) -> GateHead:
    """A :class:`GateHead` over a state in memory (benchmarks, tests)."""
    head = GateHead.__new__(GateHead)
    head._set_state({k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in state.items()})
    return head


__all__ = ["GUARD", "GateHead", "fit_gate_head", "gate_inputs", "head_from_state", "map_stats", "save_gate_head"]

"""Tuning the backbone's stride-32 stage on a catalogue (``train-embedder``, step 8 of docs/method.md).

A projection head (shoplens.embed.training) only re-weights the ImageNet
features; tuning the backbone's last stage lets the catalogue's own labels
shape the features themselves (docs/benchmarks.md section 4 has the gains).

Only the blocks after the last stride-16 tap and the head convolution are
tuned (:class:`~shoplens.models.efficientnet_lite.StrideTail`): the rest of
the backbone stays as shipped, shared with the intent gate and the
detector. The stride-16 maps of the training photos are computed once by the
shipped backbone and kept (float16); each epoch runs only the tail over them.
A :class:`Tail` is saved in the store's models folder; the domain's
embedder then encodes photos with the shipped backbone whose stage is
replaced by the tuned one (``shoplens.models.create_tuned_model``), under
the name :attr:`Tail.model_name`, so the stored descriptors' signature
says which stage made them.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .pooling import gem
from .training import ProjectionCfg, _encode_labels, _Projection, fit_proxies

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TailCfg:
    """How :func:`tune_tail` trains; the defaults are the measured ones (docs/benchmarks.md section 4)."""

    epochs: int = 8
    #: At least this many optimiser steps (a small catalogue gets more epochs), up to ``max_epochs``.
    min_steps: int = 200
    max_epochs: int = 40
    #: Learning rate of the tail's weights (the throwaway projection and proxies use ``ProjectionCfg.lr``).
    lr: float = 5e-4
    batch_size: int = 64
    #: Augmentation: each step crops the stride-16 maps of one shape to a random window of at
    #: least this share of each side (1: no cropping), and flips them left-right with probability ``flip``.
    min_crop: float = 0.7
    flip: float = 0.5


def supports_tail(module: nn.Module | None) -> bool:
    """Whether a backbone's torch module has a tunable stride-32 stage."""
    return module is not None and callable(getattr(module, "tail", None))


class Tail:
    """A backbone's stride-32 stage tuned for one domain of a catalogue."""

    def __init__(self, backbone: str, module: nn.Module, info: dict[str, Any] | None = None) -> None:
        self.backbone = backbone
        self.module = module.eval()
        self.info = dict(info or {})
        h = hashlib.sha1(backbone.encode())
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().contiguous().numpy().tobytes())
        #: Changes with the weights; part of the tuned backbone's name, so stored descriptors know their stage.
        self.digest = h.hexdigest()[:12]

    @property
    def model_name(self) -> str:
        """The name the tuned backbone goes by (in encodings caches and embedder signatures)."""
        return f"{self.backbone}+tail-{self.digest}"

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"format": 1, "backbone": self.backbone, "state": self.module.state_dict(), "info": self.info}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, backbone: str, base: nn.Module | None) -> Tail:
        """The tail saved at ``path``, on the stage of ``base`` (the torch module of the shipped ``backbone``)."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as err:
            raise ConfigError(f"cannot read the tuned stage {path}: {err}") from None
        if not isinstance(data, dict) or data.get("backbone") != backbone or not supports_tail(base):
            found = data.get("backbone") if isinstance(data, dict) else None
            raise ConfigError(f"{path} holds a stage tuned for {found!r}, not for the configured backbone {backbone!r}")
        module = base.tail()  # type: ignore[union-attr,operator]
        try:
            module.load_state_dict(data["state"])
        except (KeyError, RuntimeError) as err:
            raise ConfigError(f"the tuned stage {path} does not fit {backbone}: {err}") from None
        return cls(str(data["backbone"]), module, data.get("info", {}))


def tune_tail(
    backbone: str,
    base: nn.Module,
    maps: Sequence[torch.Tensor],
    labels: Sequence[str] | np.ndarray,
    *,
    proxy_cfg: ProjectionCfg,
    cfg: TailCfg | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Tail:
    """Tune ``base``'s stride-32 stage so that photos of one label pool close together.

    ``maps``: the stride-16 map of each training photo from the shipped
    backbone; ``labels``: one per map (product ids or categories). The loss is
    the one of :func:`~shoplens.embed.training.train_projection` on the GeM-pooled
    output, with ``proxy_cfg``'s projection, trained alongside and then
    dropped (the domain's head is trained afterwards on the new descriptors).
    Batch norms keep their shipped statistics. Deterministic for a given ``seed``.
    """
    cfg = cfg or TailCfg()
    if not supports_tail(base):
        raise ConfigError(f"backbone {backbone!r} has no stride-32 stage to tune")
    y_np, n_classes = _encode_labels(labels)
    if len(maps) != len(y_np) or n_classes < 2:
        raise ValueError(f"tune_tail needs one label per map and at least 2 labels, got {len(maps)} maps, {n_classes} labels")
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, m in enumerate(maps):
        by_shape[tuple(m.shape)].append(i)
    y = torch.from_numpy(y_np)
    n = len(maps)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    epochs = max(cfg.epochs, min(cfg.max_epochs, -(-cfg.min_steps // steps_per_epoch)))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tail = base.tail().train()  # type: ignore[operator]
        for m in tail.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()  # a few thousand photos would only blur the shipped statistics
        width = int(tail.conv_head.out_channels)
        proj = _Projection(width, 256, proxy_cfg)
        proxies = nn.Parameter(F.normalize(torch.randn(n_classes, 256), dim=-1))
        rates = [proxy_cfg.lr, cfg.lr]
        groups = [{"params": [*proj.parameters(), proxies], "lr": rates[0]}, {"params": list(tail.parameters()), "lr": rates[1]}]
        opt = torch.optim.AdamW(groups, weight_decay=proxy_cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, rates, total_steps=epochs * steps_per_epoch, pct_start=0.1)
        loss = fit_proxies(lambda idx: proj(_pooled(tail, maps, idx.tolist(), cfg, rng)), y, proxies, opt, sched, proxy_cfg,
                           batch=batch, epochs=epochs, rng=rng, progress=progress)
    info = {"images": n, "classes": n_classes, "seed": seed, "shapes": len(by_shape), **asdict(cfg), "epochs": epochs,
            "loss": round(loss, 4), "train_s": round(time.perf_counter() - t0, 2)}
    logger.info("tuned the %s stride-32 stage on %d photos, %d labels (%.1fs, loss %.3f)",
                backbone, n, n_classes, info["train_s"], info["loss"])
    return Tail(backbone, tail.eval(), info)


def _pooled(tail: nn.Module, maps: Sequence[torch.Tensor], idx: list[int], cfg: TailCfg, rng: np.random.Generator) -> torch.Tensor:
    """L2-normalised GeM vectors of the tail over ``maps[idx]`` (augmented as ``cfg`` says), in ``idx`` order.

    One pass per map shape; the maps of one shape share the step's crop window.
    """
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for j, i in enumerate(idx):
        by_shape[tuple(maps[i].shape)].append(j)
    rows: list[torch.Tensor | None] = [None] * len(idx)
    for (_, h, w), members in by_shape.items():
        x = torch.stack([maps[idx[j]].float() for j in members])
        if cfg.min_crop < 1.0:
            ch, cw = (int(rng.integers(max(1, int(np.ceil(cfg.min_crop * n))), n + 1)) for n in (h, w))
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            x = x[:, :, y0 : y0 + ch, x0 : x0 + cw]
        if cfg.flip > 0:
            flip = torch.from_numpy(rng.random(len(members)) < cfg.flip)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        out = gem(tail(x))
        for j, row in zip(members, out):
            rows[j] = row
    return F.normalize(torch.stack([r for r in rows if r is not None]), dim=-1)

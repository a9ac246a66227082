"""Adapting the recognition model to a catalogue (SPEC step 8, ``train-embedder``).

The backbone stays frozen: a projection head is trained on the catalogue's
raw descriptors (and those of extra labelled photos) with a normalised-softmax
metric-learning loss — every label has a learned proxy on the unit sphere,
and each descriptor is pulled to its own proxy and pushed from the others
(Zhai & Wu, "Classification is a strong baseline for deep metric learning",
2019). Photos of one product (or one category) end up close together, and a
store photo close to its product's catalogue image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .heads import Head, IdentityHead, LinearHead, MLPHead, l2_normalize
from .whitening import default_head

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectionCfg:
    """How :func:`train_projection` trains; the defaults are the measured ones."""

    #: Hidden width of the residual MLP branch; 0 trains a linear head only.
    hidden: int = 0
    #: Dropout on the input descriptor.
    dropout: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    #: Inverse temperature of the normalised softmax.
    scale: float = 16.0
    label_smoothing: float = 0.1
    batch_size: int = 128


class _Projection(nn.Module):
    def __init__(self, raw_dim: int, dim: int, cfg: ProjectionCfg) -> None:
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.linear = nn.Linear(raw_dim, dim)
        self.mlp = nn.Sequential(nn.Linear(raw_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, dim)) if cfg.hidden else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        y = self.linear(x)
        if self.mlp is not None:
            y = y + self.mlp(x)
        return F.normalize(y, dim=-1)

    def to_head(self, mean: np.ndarray, info: dict[str, Any]) -> Head:
        w, b = self.linear.weight.detach().numpy(), self.linear.bias.detach().numpy()
        if self.mlp is None:
            return LinearHead(mean, w, b, info=info)
        l1, l2 = self.mlp[0], self.mlp[2]
        return MLPHead(mean, w, b, l1.weight.detach().numpy(), l1.bias.detach().numpy(),
                       l2.weight.detach().numpy(), l2.bias.detach().numpy(), info=info)


def _encode_labels(labels: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, int]:
    _, inverse = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1 if len(inverse) else 0


def train_projection(
    raw: np.ndarray,
    labels: np.ndarray,
    *,
    dim: int = 256,
    epochs: int = 60,
    seed: int = 0,
    progress: bool = False,
    cfg: ProjectionCfg | None = None,
) -> Head:
    """Train a projection head on labelled raw descriptors.

    ``labels`` (one per row of ``raw``: product ids or category names, any
    hashable) say which descriptors belong together. Returns a
    :class:`~shoplens.embed.heads.LinearHead` (or an ``MLPHead`` when
    ``cfg.hidden``) with ``info`` describing the run (including its last
    ``loss``). Deterministic for a given ``seed``.
    """
    cfg = cfg or ProjectionCfg()
    raw = np.asarray(raw, dtype=np.float32)
    y_np, n_classes = _encode_labels(labels)
    if raw.ndim != 2 or len(raw) != len(y_np):
        raise ValueError(f"train_projection needs (N, D) descriptors and N labels, got {raw.shape} and {len(y_np)}")
    if n_classes < 2:
        raise ValueError("train_projection needs at least 2 distinct labels")
    x_np = l2_normalize(raw)
    mean = x_np.mean(0)
    x = torch.from_numpy(x_np - mean)
    y = torch.from_numpy(y_np)
    n = len(x)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _Projection(raw.shape[1], dim, cfg)
        with torch.no_grad():
            model.eval()
            start = model(x)
            proxies = torch.zeros(n_classes, dim).index_add_(0, y, start)
        proxies = nn.Parameter(F.normalize(proxies, dim=-1))
        opt = torch.optim.AdamW([*model.parameters(), proxies], lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
        loss_sum, loss_n = 0.0, 0
        bar = _progress(epochs, progress)
        model.train()
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(n))
            loss_sum, loss_n = 0.0, 0
            for s in range(steps_per_epoch):
                idx = order[s * batch : (s + 1) * batch]
                logits = cfg.scale * model(x[idx]) @ F.normalize(proxies, dim=-1).T
                loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach())
                loss_n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / loss_n:.3f}")
        if bar is not None:
            bar.close()
        model.eval()
    info = {"method": "proxy-softmax", "images": n, "classes": n_classes, "epochs": epochs, "seed": seed,
            "loss": round(loss_sum / max(loss_n, 1), 4), "train_s": round(time.perf_counter() - t0, 2),
            **{k: v for k, v in asdict(cfg).items()}}
    logger.info("trained a %d-d projection on %d descriptors, %d labels (%.1fs, loss %.3f)",
                dim, n, n_classes, info["train_s"], info["loss"])
    return model.to_head(mean, info)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train-embedder", unit="epoch")


def _recall_at_1(head: Head, queries: np.ndarray, q_ids: np.ndarray, db: np.ndarray, db_ids: np.ndarray) -> float:
    q, d = head.apply(queries), head.apply(db)
    return float(np.mean(db_ids[np.argmax(q @ d.T, axis=1)] == q_ids))


def _holdout(ids: np.ndarray, from_extra: np.ndarray, seed: int, frac: float = 0.15) -> np.ndarray:
    """Rows held out for the check: a share of the extra photos of each label
    that has several training rows, never a label's last remaining row."""
    rng = np.random.default_rng(seed + 1)
    held = np.zeros(len(ids), dtype=bool)
    for label in np.unique(ids):
        rows = np.flatnonzero((ids == label) & from_extra)
        if len(rows) < 2:
            continue
        k = int(round(frac * len(rows)))
        if k:
            held[rng.choice(rows, size=k, replace=False)] = True
    return held


def adapt_embedder(
    raw: np.ndarray,
    product_ids: np.ndarray,
    *,
    extra_raw: np.ndarray | None = None,
    extra_ids: np.ndarray | None = None,
    categories: np.ndarray | None = None,
    dim: int = 256,
    seed: int = 0,
    progress: bool = False,
    epochs: int = 60,
    check: bool = True,
) -> tuple[Head, dict[str, Any]]:
    """Adapt the recognition head to a catalogue (what ``train-embedder`` runs).

    ``raw``/``product_ids``: the catalogue images' raw descriptors and their
    product ids; ``extra_raw``/``extra_ids``: extra labelled photos (a shop's
    own customer photos) of catalogue products; ``categories``: the catalogue
    images' categories, used as labels when no product has two photos.

    With ``check`` and extra photos, 15 % of them are first held out to
    measure product-level R@1 against the rest before and after training (a
    second, shorter-lived training run); the head returned is then trained on
    everything. Returns ``(head, report)``; when nothing can be learned (one
    photo per product and no categories), the head is :func:`default_head`
    and the report says why.
    """
    raw = np.asarray(raw, dtype=np.float32)
    ids = np.asarray(product_ids).astype(str)
    if raw.ndim != 2 or len(raw) != len(ids):
        raise ValueError(f"adapt_embedder needs (N, D) descriptors and N product ids, got {raw.shape} and {len(ids)}")
    n_cat = len(raw)
    if extra_raw is not None and len(extra_raw):
        extra_raw = np.asarray(extra_raw, dtype=np.float32)
        e_ids = np.asarray(extra_ids).astype(str)
        if extra_raw.ndim != 2 or extra_raw.shape[1] != raw.shape[1] or len(e_ids) != len(extra_raw):
            raise ValueError(f"extra descriptors {extra_raw.shape} / ids {len(e_ids)} do not match the catalogue's {raw.shape}")
        all_raw = np.concatenate([raw, extra_raw])
        all_ids = np.concatenate([ids, e_ids])
    else:
        all_raw, all_ids = raw, ids
    from_extra = np.arange(len(all_ids)) >= n_cat
    report: dict[str, Any] = {"catalogue_images": n_cat, "extra_images": int(from_extra.sum()), "dim": dim}
    if from_extra.any():
        report["extra_ids_not_in_catalogue"] = int(np.sum(~np.isin(all_ids[from_extra], ids)))

    _, counts = np.unique(all_ids, return_counts=True)
    if np.sum(counts >= 2) >= 2:
        labels, report["labels"] = all_ids, "product_id"
    elif categories is not None and len(np.unique(np.asarray(categories).astype(str))) >= 2:
        cats = np.asarray(categories).astype(str)
        if len(cats) != n_cat:
            raise ValueError(f"{len(cats)} categories for {n_cat} catalogue images")
        # Extra photos take their product's category.
        by_id = dict(zip(ids, cats))
        labels = np.array([by_id.get(i, "") for i in all_ids])
        keep = labels != ""
        all_raw, labels, from_extra = all_raw[keep], labels[keep], from_extra[keep]
        report["labels"] = "category"
    else:
        report.update(labels=None, method="default",
                      reason="no product has two photos and no categories were given: nothing to learn from")
        logger.info("train-embedder: %s", report["reason"])
        return default_head(raw, dim=dim), report

    dim = min(dim, all_raw.shape[1])
    if check and from_extra.any() and report["labels"] == "product_id":
        held = _holdout(labels, from_extra, seed)
        if held.any():
            head = train_projection(all_raw[~held], labels[~held], dim=dim, epochs=epochs, seed=seed)
            db = ~held
            before = _recall_at_1(IdentityHead(), all_raw[held], labels[held], all_raw[db], labels[db])
            after = _recall_at_1(head, all_raw[held], labels[held], all_raw[db], labels[db])
            report["heldout"] = {"queries": int(held.sum()), "r1_identity": round(before, 4), "r1_trained": round(after, 4)}
            logger.info("train-embedder held-out R@1: %.3f -> %.3f on %d photos", before, after, int(held.sum()))
    head = train_projection(all_raw, labels, dim=dim, epochs=epochs, seed=seed, progress=progress)
    report.update(method=head.info["method"] if isinstance(head, LinearHead) else head.kind,
                  images=len(all_raw), classes=head.info.get("classes") if isinstance(head, LinearHead) else None,
                  loss=head.info.get("loss") if isinstance(head, LinearHead) else None,
                  train_s=head.info.get("train_s") if isinstance(head, LinearHead) else None)
    return head, report

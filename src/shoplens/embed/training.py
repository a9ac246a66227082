"""Adapting the recognition model to a catalogue (step 8 of docs/method.md, ``train-embedder``).

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
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import SearchConfig
from .calibration import Calibration, Labels, fit_calibration, similar_sets
from .heads import Head, IdentityHead, LinearHead, MLPHead, l2_normalize
from .whitening import default_head

logger = logging.getLogger(__name__)

#: The returned-set precision a calibration fitted here stands for, unless asked otherwise: the
#: one the index-time calibration uses (``search.target_precision``), so training changes which
#: products come first, not how many a search returns.
TARGET_PRECISION = SearchConfig().target_precision


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
    #: 0 for product labels: grocery R@1 against catalogue + train photos 0.830 -> 0.853 (mean of 5 seeds,
    #: docs/benchmarks.md section 4); category labels keep 0.1 (CATEGORY_CFG).
    label_smoothing: float = 0.0
    batch_size: int = 128


#: For category labels (a few classes with many photos each): a residual MLP
#: branch, strong dropout and a sharper softmax. Clothing P@10 0.65 -> 0.71
#: over the linear default (docs/benchmarks/embedq.md).
CATEGORY_CFG = ProjectionCfg(hidden=512, dropout=0.5, scale=32.0, label_smoothing=0.1)


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
        assert isinstance(l1, nn.Linear) and isinstance(l2, nn.Linear)
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
        model.train()
        loss = fit_proxies(lambda idx: model(x[idx]), y, proxies, opt, sched, cfg, batch=batch, epochs=epochs, rng=rng,
                           progress=progress)
        model.eval()
    info = {"method": "proxy-softmax", "images": n, "classes": n_classes, "epochs": epochs, "seed": seed,
            "loss": round(loss, 4), "train_s": round(time.perf_counter() - t0, 2),
            **{k: v for k, v in asdict(cfg).items()}}
    logger.info("trained a %d-d projection on %d descriptors, %d labels (%.1fs, loss %.3f)",
                dim, n, n_classes, info["train_s"], info["loss"])
    return model.to_head(mean, info)


def fit_proxies(
    forward: Callable[[np.ndarray], torch.Tensor],
    y: torch.Tensor,
    proxies: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    cfg: ProjectionCfg,
    *,
    batch: int,
    epochs: int,
    rng: np.random.Generator,
    progress: bool = False,
) -> float:
    """The proxy-softmax loop of :func:`train_projection` (and of the tail's tuning, shoplens.embed.tail).

    Each epoch visits the ``len(y)`` rows in a new order of ``rng``, in full
    batches; ``forward(rows)`` gives their L2-normalised embeddings. Returns the
    last epoch's mean loss.
    """
    n = len(y)
    steps_per_epoch = max(1, n // batch)
    bar = _progress(epochs, progress)
    loss_sum, loss_n = 0.0, 0
    for _ in range(epochs):
        order = rng.permutation(n)
        loss_sum, loss_n = 0.0, 0
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            logits = cfg.scale * forward(idx) @ F.normalize(proxies, dim=-1).T
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
    return loss_sum / max(loss_n, 1)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train-embedder", unit="epoch")


@dataclass
class EmbedderReport:
    """What :func:`train_embedder` did and measured."""

    domain: str
    #: "proxy-softmax" (trained), or the untrained default's kind when nothing could be learned.
    method: str
    #: What the head was trained to tell apart: "product_id", "category", or None (not trained).
    labels: str | None
    images: int = 0
    extra_images: int = 0
    classes: int = 0
    dim: int = 0
    epochs: int = 0
    train_s: float = 0.0
    loss: float | None = None
    #: Held-out check: queries, R@1 of the untrained and the trained head against the catalogue.
    heldout: dict[str, Any] | None = None
    #: The rank calibration fitted alongside the head (None: not enough labelled pairs).
    calibration: Calibration | None = None
    reason: str = ""
    #: The backbone stage tuned before the head (shoplens.embed.tail): ``tuned``, and what it did or why not.
    tail: dict[str, Any] | None = None
    #: Where the head was saved (set by the caller that saves it).
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["calibration"] = None if self.calibration is None else asdict(self.calibration)
        return d


def _recall_at_1(q: np.ndarray, q_ids: np.ndarray, db: np.ndarray, db_ids: np.ndarray) -> float:
    return float(np.mean(db_ids[np.argmax(q @ db.T, axis=1)] == q_ids)) if len(q) else 0.0


def holdout_mask(labels: np.ndarray, catalogue: np.ndarray, frac: float) -> np.ndarray:
    """The rows :func:`train_embedder` holds out: ``frac`` of the extra (non-catalogue) photos, of every row when there are none."""
    if frac <= 0:
        return np.zeros(len(labels), bool)
    pool = ~catalogue if (~catalogue).any() else np.ones(len(labels), bool)
    return _holdout(labels, pool, frac)


def _holdout(ids: np.ndarray, pool: np.ndarray, frac: float) -> np.ndarray:
    """Rows held out for the check: the last ``frac`` of each label's rows in
    ``pool`` (in the order given), only for labels with at least two rows in
    all, and never a label's last row.

    A contiguous block rather than a random sample: photos listed together
    were often taken together, and near-duplicates on both sides of the
    split would make the check (and the calibration fitted on it) optimistic.
    """
    held = np.zeros(len(ids), dtype=bool)
    for label in np.unique(ids):
        rows = np.flatnonzero((ids == label) & pool)
        total = int(np.sum(ids == label))
        k = min(round(frac * len(rows)), len(rows), total - 1)
        if k > 0:
            held[rows[-k:]] = True
    return held


def calibrate_head(
    head: Head,
    descriptors: np.ndarray,
    product_ids: Labels,
    categories: Labels,
    *,
    queries: np.ndarray | None = None,
    database: np.ndarray | None = None,
    target_precision: float = TARGET_PRECISION,
    relevance: str = "product",
    kind: str = "margin",
) -> Calibration | None:
    """Fit a :class:`~shoplens.embed.calibration.Calibration` for ``head``.

    ``queries``/``database``: boolean row masks. Without them, every row is
    a query against all the others (leave-one-out over the catalogue).
    Returns None when no query has a relevant hit to learn from.
    """
    raw = np.asarray(descriptors, np.float32)
    pid, cat = np.asarray(product_ids).astype(str), np.asarray(categories).astype(str)
    vec = head.apply(raw)
    if queries is None:
        pairs = similar_sets(vec, pid, cat, vec, pid, cat, relevance=relevance, exclude_self=True)
    else:
        db = ~queries if database is None else database
        pairs = similar_sets(vec[queries], pid[queries], cat[queries], vec[db], pid[db], cat[db], relevance=relevance)
    if not pairs.relevant.any():
        return None
    cal = fit_calibration(pairs, target_precision=target_precision, relevance=relevance, kind=kind)
    cal.info["head"] = head.kind
    cal.info["fitted_on"] = "leave-one-out over the catalogue" if queries is None else "held-out labelled photos"
    return cal


def training_labels(ids: np.ndarray, categories: np.ndarray | None) -> tuple[np.ndarray, str] | None:
    """What to learn from: product ids when at least two products have two photos each,
    else categories (at least two, one with two photos), else nothing (None)."""
    _, counts = np.unique(ids, return_counts=True)
    if np.sum(counts >= 2) >= 2:
        return ids, "product_id"
    if categories is not None and len(np.unique(categories)) >= 2 and np.unique(categories, return_counts=True)[1].max() >= 2:
        return categories, "category"
    return None


def _heldout_check(check: Head, raw: np.ndarray, labels: np.ndarray, held: np.ndarray, db: np.ndarray) -> dict[str, Any]:
    """R@1 of the ``held`` rows against the ``db`` rows, untrained and with the head ``check`` trained without them."""
    before = IdentityHead()
    return {
        "queries": int(held.sum()),
        "against": "catalogue images",
        "r1_untrained": round(_recall_at_1(before.apply(raw[held]), labels[held], before.apply(raw[db]), labels[db]), 4),
        "r1_trained": round(_recall_at_1(check.apply(raw[held]), labels[held], check.apply(raw[db]), labels[db]), 4),
    }


def train_embedder(
    descriptors: np.ndarray,
    labels: Labels,
    *,
    domain: str,
    seed: int = 0,
    categories: Labels | None = None,
    catalogue: np.ndarray | None = None,
    holdout: float = 0.15,
    dim: int = 256,
    epochs: int = 60,
    cfg: ProjectionCfg | None = None,
    target_precision: float = TARGET_PRECISION,
    relevance: str = "product",
    kind: str = "margin",
    progress: bool = False,
) -> tuple[Head, EmbedderReport]:
    """Adapt a domain's recognition head to a catalogue (step 8 of docs/method.md, ``train-embedder``).

    ``descriptors``: (N, D) raw descriptors of the catalogue images and of
    any extra labelled photos; ``labels``: each row's product id; ``catalogue``:
    a boolean mask of the rows that are catalogue images (default: all);
    ``categories``: each row's category (for calibration, and as labels
    when no product has two photos). ``cfg`` defaults to :class:`ProjectionCfg`
    for product labels and :data:`CATEGORY_CFG` for category labels.

    With ``holdout`` > 0, that share of the extra photos (of every row when
    there are none) is first held out: a head trained on the rest is
    measured on them (R@1 against the catalogue, before and after) and the
    rank :class:`Calibration` (``kind``, ``relevance``) is fitted on their
    distances to the catalogue. The head returned is then trained on every
    row. Without held-out photos the calibration comes from the catalogue
    alone (leave-one-out), and is None where no product has two photos: the
    store then fits one on synthetic views (shoplens.pipeline.calibrate).
    """
    raw = np.asarray(descriptors, dtype=np.float32)
    ids = np.asarray(labels).astype(str)
    if raw.ndim != 2 or len(raw) != len(ids):
        raise ValueError(f"train_embedder needs (N, D) descriptors and N labels, got {raw.shape} and {len(ids)}")
    is_cat = np.ones(len(ids), bool) if catalogue is None else np.asarray(catalogue, bool)
    cats = ids if categories is None else np.asarray(categories).astype(str)
    if len(is_cat) != len(ids) or len(cats) != len(ids):
        raise ValueError("catalogue mask and categories must have one entry per descriptor")
    if not is_cat.any():
        raise ValueError("train_embedder needs at least one catalogue image")
    relevance = relevance if categories is not None else "product"
    report = EmbedderReport(domain=domain, method="", labels=None, images=len(raw), extra_images=int((~is_cat).sum()))

    chosen = training_labels(ids, cats if categories is not None else None)
    if chosen is not None:
        train_labels, report.labels = chosen
    else:
        head = default_head(raw[is_cat], dim=dim)
        report.method, report.reason = head.kind, "no label has two photos: nothing to learn from"
        report.calibration = calibrate_head(head, raw[is_cat], ids[is_cat], cats[is_cat], target_precision=target_precision,
                                            relevance=relevance, kind=kind)
        logger.info("train-embedder %s: %s", domain, report.reason)
        return head, report

    dim = min(dim, raw.shape[1])
    if cfg is None:
        cfg = CATEGORY_CFG if report.labels == "category" else ProjectionCfg()
    held = holdout_mask(train_labels, is_cat, holdout)
    if held.any():
        check = train_projection(raw[~held], train_labels[~held], dim=dim, epochs=epochs, seed=seed, cfg=cfg)
        report.heldout = _heldout_check(check, raw, train_labels, held, is_cat & ~held)
        logger.info("train-embedder %s held-out R@1 %.3f -> %.3f on %d photos", domain,
                    report.heldout["r1_untrained"], report.heldout["r1_trained"], int(held.sum()))
        report.calibration = calibrate_head(check, raw, ids, cats, queries=held, database=is_cat & ~held,
                                            target_precision=target_precision, relevance=relevance, kind=kind)
    head = train_projection(raw, train_labels, dim=dim, epochs=epochs, seed=seed, cfg=cfg, progress=progress)
    if report.calibration is None:
        report.calibration = calibrate_head(head, raw[is_cat], ids[is_cat], cats[is_cat], target_precision=target_precision,
                                            relevance=relevance, kind=kind)
    info = head.info if isinstance(head, LinearHead) else {}
    report.method = str(info.get("method", head.kind))
    report.classes = int(info.get("classes", 0))
    report.dim, report.epochs = dim, epochs
    report.train_s, report.loss = float(info.get("train_s", 0.0)), info.get("loss")
    return head, report

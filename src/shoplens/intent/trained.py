"""Step 7: an intent classifier trained from labelled photos.

A small head on the frozen backbone: the photo's pooled ``s32`` features
(standardised) and the log of the ImageNet-map prior (the default classifier's
three probabilities) go into one linear layer, trained with class-balanced
cross-entropy and weight decay. The prior term carries ImageNet's taxonomy, so
the head starts from the default classifier's knowledge and learns how a
shop's photos differ from it.

Labelled photos come from folders (``apparel/``, ``other_product/``,
``non_product/``, searched recursively) or a CSV with ``image`` and ``intent``
columns (paths relative to the CSV's folder, or absolute).
:func:`train_intent` holds out a stratified part, reports accuracy on it and
saves the head as a ``weights_only``-loadable torch file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..catalog import read_labelled_csv
from ..config import INTENTS
from ..errors import BadImageError, CatalogueError, StoreError
from ..imaging import Photo, decode_batches
from ..models import Backbone, Encoding, create_model
from .base import IntentClassifier
from .imagenet_map import ImageNetIntent

logger = logging.getLogger(__name__)

#: File extensions read as images in labelled folders.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_FORMAT = "shoplens-intent-head"
_VERSION = 1
#: L2 penalty of the head's weights (on standardised features).
_WEIGHT_DECAY = 0.1
_MAX_ITER = 200


# ---------------------------------------------------------------- labelled photos

def read_labelled(source: str | Path) -> list[tuple[Path, str]]:
    """(photo, intent) pairs from labelled folders or a CSV (``image``, ``intent``).

    Raises :class:`CatalogueError` on a missing source, missing columns, an
    unknown intent, a missing file, or an intent with no photo.
    """
    src = Path(source)
    if src.is_dir():
        pairs = _read_folders(src)
    elif src.is_file():
        if src.suffix.lower() != ".csv":
            raise CatalogueError(f"{src}: expected a folder of labelled photos or a .csv file")
        pairs = _read_csv(src)
    else:
        raise CatalogueError(f"{src}: no such folder or CSV file")
    counts = {intent: sum(1 for _, i in pairs if i == intent) for intent in INTENTS}
    empty = [intent for intent, n in counts.items() if n == 0]
    if empty:
        raise CatalogueError(
            f"{src}: no photo labelled {', '.join(empty)}; the intent classifier needs photos of every intent "
            f"({', '.join(INTENTS)})"
        )
    return pairs


def _read_folders(root: Path) -> list[tuple[Path, str]]:
    pairs: list[tuple[Path, str]] = []
    unknown = []
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        if child.name not in INTENTS:
            unknown.append(child.name)
            continue
        for dirpath, dirnames, filenames in os.walk(child):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    pairs.append((Path(dirpath) / name, child.name))
    if unknown:
        raise CatalogueError(
            f"{root}: folders {', '.join(repr(u) for u in unknown)} are not intents; "
            f"expected sub-folders named {', '.join(INTENTS)}"
        )
    if not pairs:
        raise CatalogueError(f"{root}: no photos found in sub-folders {', '.join(INTENTS)}")
    return pairs


def _read_csv(path: Path) -> list[tuple[Path, str]]:
    rows = read_labelled_csv(path, ("image", "intent"))
    pairs: list[tuple[Path, str]] = []
    for line, row in enumerate(rows, start=2):
        image, intent = row.get("image", ""), row.get("intent", "").lower()
        if not image:
            raise CatalogueError(f"{path}, line {line}: empty 'image'")
        if intent not in INTENTS:
            raise CatalogueError(
                f"{path}, line {line}: unknown intent {row.get('intent')!r}; expected one of {', '.join(INTENTS)}"
            )
        file = Path(image) if Path(image).is_absolute() else path.parent / image
        if not file.is_file():
            raise CatalogueError(f"{path}, line {line}: no such image file {image!r}")
        pairs.append((file, intent))
    if not pairs:
        raise CatalogueError(f"{path}: no rows")
    return pairs


# ---------------------------------------------------------------- features

def pooled_features(encodings: Sequence[Encoding]) -> torch.Tensor:
    """(N, C) mean of each photo's s32 map over the photo (no padding)."""
    return torch.stack([e.features["s32"].float().mean(dim=(1, 2)) for e in encodings])


def encode_paths(
    paths: Sequence[Path], backbone: Backbone, *, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImageNet logits (N, 1000), pooled s32 features (N, C) and a mask of the photos that decoded.

    Unreadable photos are skipped with a warning; their rows are zeros (and
    logits are zeros for a backbone without an ImageNet head).
    """
    n = len(paths)
    logits = np.zeros((n, 1000), dtype=np.float32)
    pooled = np.zeros((n, backbone.feature_dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    size = backbone.preprocess.input_size
    with tqdm(total=n, desc="photos", unit="photo", disable=not progress) as bar:
        for start, (_, decoded) in zip(range(0, n, batch_size), decode_batches(paths, batch_size, lambda p: p, target_size=size)):
            photos: list[Photo] = []
            index: list[int] = []
            for i, result in enumerate(decoded, start):
                if isinstance(result, BadImageError):
                    logger.warning("skipping unreadable photo: %s", result)
                else:
                    photos.append(result)
                    index.append(i)
            if photos:
                encodings = backbone.encode(photos)
                feats = pooled_features(encodings).numpy()
                for j, i in enumerate(index):
                    pooled[i] = feats[j]
                    if encodings[j].logits is not None:
                        logits[i] = encodings[j].logits.float().numpy()  # type: ignore[union-attr]
                    ok[i] = True
            bar.update(min(n, start + batch_size) - start)
    return logits, pooled, ok


def _log_prior(prior: ImageNetIntent, logits: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 3) log of the default classifier's probabilities: the head's prior term."""
    return torch.from_numpy(prior.predict_logits(logits)).clamp_min(1e-6).log()


# ---------------------------------------------------------------- the head

class _Head(torch.nn.Module):
    """logits = W · standardise(pooled) + a ⊙ log prior + b."""

    def __init__(self, dim: int, use_prior: bool) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim, len(INTENTS))
        self.prior_scale = torch.nn.Parameter(torch.ones(len(INTENTS)) if use_prior else torch.zeros(len(INTENTS)),
                                              requires_grad=use_prior)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, z: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
        return self.linear(z) + self.prior_scale * log_prior


def _fit_head(z: torch.Tensor, log_prior: torch.Tensor, y: torch.Tensor, use_prior: bool, seed: int) -> _Head:
    torch.manual_seed(seed)
    head = _Head(z.shape[1], use_prior)
    counts = torch.bincount(y, minlength=len(INTENTS)).float()
    weight = counts.sum() / (len(INTENTS) * counts.clamp_min(1))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=_MAX_ITER, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(head(z, log_prior), y) + _WEIGHT_DECAY * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head.eval()


@dataclass
class IntentTrainReport:
    """What :func:`train_intent` did and how well the head does on the held-out photos."""

    #: Accuracy on the held-out photos (``None`` when nothing was held out).
    accuracy: float | None
    #: Rows: true intent, columns: predicted intent, both in ``INTENTS`` order.
    confusion: list[list[int]]
    n_train: int
    n_test: int
    #: Recall of each intent on the held-out photos (``None`` for an intent with none).
    recall: dict[str, float | None]
    #: Labelled photos that could not be read (skipped).
    n_skipped: int = 0
    backbone: str = ""
    #: Photos per intent that were used (train + test).
    counts: dict[str, int] = field(default_factory=dict)
    path: str = ""
    #: What became of the store's products whose domain was inferred (an indexing report's
    #: ``to_dict()``: ``domains_reassigned``, ``domains_by_category``); ``None``: not looked at.
    domains: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split; every intent keeps at least one training photo."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in range(len(INTENTS)):
        idx = np.flatnonzero(y == k)
        rng.shuffle(idx)
        n_test = min(len(idx) - 1, round(len(idx) * holdout)) if holdout > 0 else 0
        if holdout > 0 and len(idx) >= 2:
            n_test = max(1, n_test)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def train_intent(
    source: str | Path,
    out_path: Path,
    *,
    backbone: str = "efficientnet_lite0",
    holdout: float = 0.2,
    seed: int = 0,
    progress: bool = False,
) -> IntentTrainReport:
    """Train the intent head on labelled photos, report held-out accuracy, save it to ``out_path``.

    The saved head is the one evaluated (trained on the non-held-out part);
    ``holdout=0`` trains on every photo and reports no accuracy.
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError("holdout must be in [0, 1)")
    pairs = read_labelled(source)
    model = create_model(backbone)
    logits, pooled, ok = encode_paths([p for p, _ in pairs], model, progress=progress)
    labels = np.array([INTENTS.index(i) for _, i in pairs])
    n_skipped = int((~ok).sum())
    logits, pooled, labels = logits[ok], pooled[ok], labels[ok]
    missing = [INTENTS[k] for k in range(len(INTENTS)) if not (labels == k).any()]
    if missing:
        raise CatalogueError(f"{source}: no readable photo labelled {', '.join(missing)}")
    train, test = _split(labels, holdout, seed)
    state = fit_intent_head(pooled[train], logits[train] if model.has_imagenet_head else None, labels[train],
                            backbone=backbone, seed=seed)
    classifier = TrainedIntent.from_state(state)
    confusion = np.zeros((len(INTENTS), len(INTENTS)), dtype=np.int64)
    if len(test):
        probs = classifier.predict_features(pooled[test], logits[test] if model.has_imagenet_head else None)
        np.add.at(confusion, (labels[test], probs.argmax(1)), 1)
    totals = confusion.sum(1)
    report = IntentTrainReport(
        accuracy=float(np.trace(confusion) / len(test)) if len(test) else None,
        confusion=confusion.tolist(),
        n_train=len(train),
        n_test=len(test),
        recall={INTENTS[k]: (float(confusion[k, k] / totals[k]) if totals[k] else None) for k in range(len(INTENTS))},
        n_skipped=n_skipped,
        backbone=backbone,
        counts={INTENTS[k]: int((labels == k).sum()) for k in range(len(INTENTS))},
        path=str(out_path),
    )
    state["report"] = {k: v for k, v in report.to_dict().items() if k not in ("recall", "counts")}
    save_intent_head(state, Path(out_path))
    logger.info("intent head: accuracy %s on %d held-out photos, saved to %s", report.accuracy, report.n_test, out_path)
    return report


def fit_intent_head(
    pooled: np.ndarray, logits: np.ndarray | None, labels: np.ndarray, *, backbone: str, seed: int = 0
) -> dict[str, Any]:
    """Fit the head on features already computed; returns its saveable state."""
    x = torch.from_numpy(np.asarray(pooled, dtype=np.float32))
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-4) if len(x) > 1 else torch.ones_like(mean)
    prior = ImageNetIntent(backbone)
    use_prior = logits is not None
    log_prior = _log_prior(prior, logits) if logits is not None else torch.zeros(len(x), len(INTENTS))
    head = _fit_head((x - mean) / std, log_prior, torch.from_numpy(np.asarray(labels, dtype=np.int64)), use_prior, seed)
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "backbone": backbone,
        "intents": list(INTENTS),
        "use_prior": use_prior,
        "class_intent": torch.from_numpy(prior.class_intent.copy()),
        "prior_params": prior.params(),
        "mean": mean,
        "std": std,
        "weight": head.linear.weight.detach().clone(),
        "bias": head.linear.bias.detach().clone(),
        "prior_scale": head.prior_scale.detach().clone(),
    }


def save_intent_head(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class TrainedIntent(IntentClassifier):
    """The head :func:`train_intent` saved, on the backbone it was trained on."""

    name = "trained"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise StoreError(f"{self.path}: no trained intent classifier (run `shoplens train-intent`)") from None
        except Exception as err:  # noqa: BLE001 - any corruption becomes one clear error
            raise StoreError(f"{self.path}: cannot load the intent classifier ({err})") from None
        self._load(state)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrainedIntent:
        self = cls.__new__(cls)
        self.path = Path("<memory>")
        self._load(state)
        return self

    def _load(self, state: Any) -> None:
        where = str(self.path)
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise StoreError(f"{where}: not a shoplens intent classifier file")
        if state.get("version") != _VERSION:
            raise StoreError(f"{where}: intent classifier format version {state.get('version')!r} is not supported")
        try:
            if list(state["intents"]) != list(INTENTS):
                raise ValueError(f"intents {state['intents']} differ from {list(INTENTS)}")
            self.backbone = str(state["backbone"])
            self._use_prior = bool(state["use_prior"])
            self._mean = state["mean"].float()
            self._std = state["std"].float()
            self._weight = state["weight"].float()
            self._bias = state["bias"].float()
            self._prior_scale = state["prior_scale"].float()
            self._prior = ImageNetIntent(
                self.backbone, class_intent=state["class_intent"].long().numpy(),
                **{k: float(v) for k, v in dict(state["prior_params"]).items()},
            )
            dim = self._mean.numel()
            shapes_ok = (
                self._std.shape == (dim,)
                and self._weight.shape == (len(INTENTS), dim)
                and self._bias.shape == (len(INTENTS),)
                and self._prior_scale.shape == (len(INTENTS),)
            )
            if not shapes_ok:
                raise ValueError("tensor shapes do not match")
            if not all(torch.isfinite(t).all() for t in (self._mean, self._std, self._weight, self._bias)):
                raise ValueError("non-finite weights")
        except (KeyError, AttributeError, TypeError, ValueError, RuntimeError) as err:
            raise StoreError(f"{where}: corrupt intent classifier ({err})") from None
        self.report: dict[str, Any] = dict(state.get("report") or {})

    def predict_features(self, pooled: np.ndarray | torch.Tensor, logits: np.ndarray | torch.Tensor | None) -> np.ndarray:
        """(N, 3) probabilities from pooled features and ImageNet logits (see :func:`encode_paths`)."""
        x = torch.as_tensor(np.asarray(pooled, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self._mean.numel():
            raise ValueError(f"expected (N, {self._mean.numel()}) features, got {tuple(x.shape)}")
        out = ((x - self._mean) / self._std) @ self._weight.T + self._bias
        if self._use_prior:
            if logits is None:
                raise ValueError("this intent classifier needs ImageNet logits")
            out = out + self._prior_scale * _log_prior(self._prior, logits)
        return out.softmax(-1).numpy()

    def predict(self, encodings: Sequence[Encoding]) -> np.ndarray:
        if not encodings:
            return np.zeros((0, len(INTENTS)), dtype=np.float32)
        pooled = pooled_features(encodings)
        logits = None
        if self._use_prior:
            if any(e.logits is None for e in encodings):
                raise ValueError(f"{self.name} intent classifier needs a backbone with an ImageNet head")
            logits = torch.stack([e.logits for e in encodings])  # type: ignore[misc]
        return self.predict_features(pooled, logits)


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageNetIntent",
    "IntentTrainReport",
    "TrainedIntent",
    "encode_paths",
    "fit_intent_head",
    "pooled_features",
    "read_labelled",
    "save_intent_head",
    "train_intent",
]

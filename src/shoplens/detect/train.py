"""Training the default garment head on boxed outfit photos (``shoplens train-detector``).

The backbone is frozen: each training photo is encoded once per augmented
copy (mirror, input sizes, zoomed-in crops) and only the small head is
trained on those cached maps, so a run takes minutes on two CPU cores. The
photos are split into training and validation by a hash of their file name:
the split does not depend on the seed or on the order of the file, and the
report only ever scores validation photos.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShoplensError
from ..imaging import load_image, photo_from_array
from ..models import Backbone, create_model
from .head import HEAD_LABELS, GarmentHead, HeadConfig, HeadDetector, save_head
from .metrics import DetectionScores

log = logging.getLogger(__name__)

#: The labels recall targets are stated over (hats are rare: reported apart).
MAIN_LABELS = ("top", "outerwear", "dress", "bottom", "shoes", "bag")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class OutfitPhoto:
    """One annotated photo: ``boxes`` in pixels of the photo file as given."""

    image: Path
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[str, ...]


def read_outfits(jsonl: Path, images_root: Path) -> list[OutfitPhoto]:
    """Read a ``garments.jsonl`` (``{"image", "garments": [{"label", "box"}]}`` per line)."""
    out: list[OutfitPhoto] = []
    try:
        lines = Path(jsonl).read_text("utf-8").splitlines()
    except OSError as err:
        raise ShoplensError(f"cannot read {jsonl}: {err.strerror or err}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            garments = [g for g in row["garments"] if g["label"] in HEAD_LABELS]
            out.append(
                OutfitPhoto(
                    image=Path(images_root) / row["image"],
                    boxes=tuple(tuple(float(v) for v in g["box"]) for g in garments),  # type: ignore[misc]
                    labels=tuple(g["label"] for g in garments),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ShoplensError(f"{jsonl}:{n}: not a garment annotation line ({err})") from None
    return out


def is_validation(image: Path | str, val_fraction: float) -> bool:
    """Whether a photo belongs to the validation part (a stable hash of its file name)."""
    digest = hashlib.sha1(Path(image).name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split_outfits(photos: Sequence[OutfitPhoto], val_fraction: float) -> tuple[list[OutfitPhoto], list[OutfitPhoto]]:
    """(train, validation) by :func:`is_validation`."""
    train = [p for p in photos if not is_validation(p.image, val_fraction)]
    val = [p for p in photos if is_validation(p.image, val_fraction)]
    return train, val


@dataclass(frozen=True)
class _Copy:
    """One augmented copy of a photo: mirror, crop (fractions of the photo), input size."""

    flip: bool
    crop: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions
    size: int


def _plan_copies(n: int, rng: np.random.Generator, sizes: Sequence[int], crops: int) -> list[list[_Copy]]:
    full = (0.0, 0.0, 1.0, 1.0)
    plans: list[list[_Copy]] = []
    for _ in range(n):
        copies = [_Copy(flip, full, s) for flip in (False, True) for s in sizes]
        for _ in range(crops):
            # Zoomed-in views: upper body, legs and feet, a person off-centre.
            fh, fw = rng.uniform(0.45, 0.9), rng.uniform(0.7, 1.0)
            y0, x0 = rng.uniform(0, 1 - fh), rng.uniform(0, 1 - fw)
            copies.append(_Copy(bool(rng.integers(2)), (x0, y0, x0 + fw, y0 + fh), int(rng.choice(sizes))))
        plans.append(copies)
    return plans


@dataclass
class _Sample:
    feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # s8, s16, s32 (fp16)
    boxes: np.ndarray  # (n, 4) input pixels
    labels: np.ndarray  # (n,) label index
    ignore: np.ndarray  # (m, 5): x0, y0, x1, y1, label index of half-visible garments
    targets: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def _transform(photo: OutfitPhoto, pixels: np.ndarray, copy: _Copy, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Crop/flip pixels and boxes; ``scale`` maps annotation pixels to ``pixels``."""
    h, w = pixels.shape[:2]
    cx0, cy0 = int(round(copy.crop[0] * w)), int(round(copy.crop[1] * h))
    cx1, cy1 = int(round(copy.crop[2] * w)), int(round(copy.crop[3] * h))
    out = pixels[cy0:cy1, cx0:cx1]
    boxes = np.array(photo.boxes, dtype=np.float64).reshape(-1, 4) * scale - [cx0, cy0, cx0, cy0]
    cw, ch = cx1 - cx0, cy1 - cy0
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, cw)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, ch)
    area = lambda b: (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)  # noqa: E731
    visible = area(clipped) / np.maximum(area(boxes), 1e-9)
    labels = np.array([HEAD_LABELS.index(lab) for lab in photo.labels], dtype=np.int64)
    keep, half = visible >= 0.5, (visible > 0) & (visible < 0.5)
    if copy.flip:
        out = out[:, ::-1]
        clipped[:, [0, 2]] = cw - clipped[:, [2, 0]]
    return np.ascontiguousarray(out), clipped[keep], labels[keep], np.column_stack([clipped[half], labels[half]])


def _encode_copies(
    backbone: Backbone,
    photos: Sequence[OutfitPhoto],
    plans: Sequence[Sequence[_Copy]],
    *,
    progress: bool,
) -> list[_Sample]:
    from tqdm import tqdm

    samples: list[_Sample] = []
    bar = tqdm(total=sum(len(p) for p in plans), desc="encoding", unit="copy", disable=not progress)
    for photo, copies in zip(photos, plans):
        img = load_image(photo.image)
        scale = 1.0 / img.scale
        by_size: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, Any]]] = {}
        for c in copies:
            px, boxes, labels, ignore = _transform(photo, img.pixels, c, scale)
            by_size.setdefault(c.size, []).append((px, boxes, labels, ignore))
        for size, items in by_size.items():
            encs = backbone.encode([photo_from_array(px) for px, *_ in items], input_size=size)
            for enc, (px, boxes, labels, ignore) in zip(encs, items):
                f = (px.shape[1] / enc.input_hw[1], px.shape[0] / enc.input_hw[0])
                k = np.array([f[0], f[1], f[0], f[1]])
                feats = tuple(enc.features[n].to(torch.float16).clone() for n in ("s8", "s16", "s32"))
                ign = ignore.copy()
                ign[:, :4] /= k
                samples.append(_Sample(feats, (boxes / k).astype(np.float32), labels, ign.astype(np.float32)))  # type: ignore[arg-type]
        bar.update(len(copies))
    bar.close()
    return samples


def _cached(cache_dir: Path | None, key: dict[str, Any], build: Any) -> Any:
    if cache_dir is None:
        return build()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"features-{digest}.pt"
    if path.exists():
        log.info("reading cached features %s", path)
        raw = torch.load(path, weights_only=False)
        return [_Sample(*r) for r in raw]
    samples = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save([(s.feats, s.boxes, s.labels, s.ignore) for s in samples], tmp)
    tmp.replace(path)
    return samples


# ----------------------------------------------------------------------------- targets and loss


def _gaussian_targets(
    sample: _Sample, stride: int, n_labels: int, alpha: float = 0.54
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heat (L, h, w), box targets (4, h, w), box weights (h, w), negative mask (L, h, w).

    Heat is an elliptic Gaussian around each garment's centre (TTFNet), 1 at
    the centre cell; box targets and weights cover the Gaussian's core inside
    the box; the negative mask removes half-visible garments of a crop.
    """
    h, w = sample.feats[0].shape[-2:]
    heat = np.zeros((n_labels, h, w), dtype=np.float32)
    box_t = np.zeros((4, h, w), dtype=np.float32)
    box_w = np.zeros((h, w), dtype=np.float32)
    neg = np.ones((n_labels, h, w), dtype=np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) * stride
    xs = (np.arange(w, dtype=np.float32) + 0.5) * stride
    for x0, y0, x1, y1, li in sample.ignore:
        inside = (ys[:, None] >= y0) & (ys[:, None] <= y1) & (xs[None, :] >= x0) & (xs[None, :] <= x1)
        neg[int(li)][inside] = 0.0
    boxes, labels = sample.boxes, sample.labels
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in np.argsort(-areas):  # smaller boxes written last win the shared cells
        x0, y0, x1, y1 = boxes[i]
        bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        sx, sy = max(alpha * bw / 6, stride / 3), max(alpha * bh / 6, stride / 3)
        g = np.exp(-((xs[None, :] - cx) ** 2) / (2 * sx**2) - ((ys[:, None] - cy) ** 2) / (2 * sy**2))
        ci, cj = min(max(int(cy // stride), 0), h - 1), min(max(int(cx // stride), 0), w - 1)
        g[ci, cj] = 1.0
        li = int(labels[i])
        heat[li] = np.maximum(heat[li], g)
        area = (g > 0.1) & (ys[:, None] > y0) & (ys[:, None] < y1) & (xs[None, :] > x0) & (xs[None, :] < x1)
        area[ci, cj] = True
        wts = g * area
        wts *= math.log(bw * bh) / wts.sum()
        box_t[:, area] = np.array([x0, y0, x1, y1], dtype=np.float32)[:, None]
        box_w[area] = wts[area]
    return heat, box_t, box_w, neg


def _collate(samples: Sequence[_Sample], stride: int, n_labels: int) -> tuple[torch.Tensor, ...]:
    """Pad a batch's maps and targets to its largest map; padding is never a negative."""
    hs = [max(s.feats[i].shape[-2] for s in samples) for i in range(3)]
    ws = [max(s.feats[i].shape[-1] for s in samples) for i in range(3)]
    out = []
    for i in range(3):
        t = torch.zeros((len(samples), samples[0].feats[i].shape[0], hs[i], ws[i]))
        for j, s in enumerate(samples):
            f = s.feats[i]
            t[j, :, : f.shape[-2], : f.shape[-1]] = f.float()
        out.append(t)
    for k in range(4):
        first = _targets(samples[0], stride, n_labels)[k]
        t = torch.zeros((len(samples), *first.shape[:-2], hs[0], ws[0]))
        for j, s in enumerate(samples):
            a = _targets(s, stride, n_labels)[k]
            t[j, ..., : a.shape[-2], : a.shape[-1]] = torch.from_numpy(a)
        out.append(t)
    return tuple(out)


def _targets(sample: _Sample, stride: int, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if sample.targets is None:
        sample.targets = _gaussian_targets(sample, stride, n_labels)
    return sample.targets


def _focal_loss(logits: torch.Tensor, heat: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1.0).float()
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - heat) ** 4 * (1 - pos) * neg_mask).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def _giou_loss(sides: torch.Tensor, box_t: torch.Tensor, box_w: torch.Tensor, stride: int) -> torch.Tensor:
    n, _, h, w = sides.shape
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
    d = sides.exp() * stride
    px0, py0 = xs[None, None, :] - d[:, 0], ys[None, :, None] - d[:, 1]
    px1, py1 = xs[None, None, :] + d[:, 2], ys[None, :, None] + d[:, 3]
    tx0, ty0, tx1, ty1 = box_t.unbind(1)
    inter = (torch.min(px1, tx1) - torch.max(px0, tx0)).clamp(min=0) * (torch.min(py1, ty1) - torch.max(py0, ty0)).clamp(min=0)
    union = (px1 - px0) * (py1 - py0) + (tx1 - tx0) * (ty1 - ty0) - inter
    hull = (torch.max(px1, tx1) - torch.min(px0, tx0)) * (torch.max(py1, ty1) - torch.min(py0, ty0))
    giou = inter / union.clamp(min=1e-6) - (hull - union) / hull.clamp(min=1e-6)
    mask = box_w > 0
    if not mask.any():
        return sides.sum() * 0.0
    return ((1 - giou) * box_w)[mask].sum() / box_w[mask].sum()


# ----------------------------------------------------------------------------- training


@dataclass
class DetectorTrainReport:
    """What :func:`train_detector` did and how the head scores on the validation photos."""

    out_path: str
    train_photos: int
    val_photos: int
    train_copies: int
    epochs: int
    seed: int
    input_size: int
    min_score: float
    recall: float  # over MAIN_LABELS, IoU >= 0.5, validation photos only
    recall_per_label: dict[str, float]
    precision: float
    boxes_per_photo: float
    encode_seconds: float
    train_seconds: float
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_head(
    detector: HeadDetector,
    backbone: Backbone,
    photos: Sequence[OutfitPhoto],
    *,
    encodings: Sequence[Any] | None = None,
) -> DetectionScores:
    """Score ``detector`` on annotated photos (IoU >= 0.5, labels must agree)."""
    scores = DetectionScores(labels=MAIN_LABELS)
    if encodings is None:
        encodings = backbone.encode([load_image(p.image) for p in photos], input_size=detector.input_size)
    for photo, found in zip(photos, detector.detect(encodings)):
        scores.add([(g.box, g.label, g.score) for g in found], list(zip(photo.boxes, photo.labels)))
    return scores


def train_detector(
    jsonl: Path,
    images_root: Path,
    out_path: Path,
    *,
    epochs: int = 12,
    seed: int = 0,
    val_fraction: float = 0.25,
    progress: bool = False,
    input_size: int = 320,
    train_sizes: Sequence[int] = (256, 320, 384),
    crops: int = 2,
    limit: int | None = None,
    cache_dir: Path | None = None,
) -> DetectorTrainReport:
    """Train the garment head on ``jsonl`` boxes and save it to ``out_path``.

    The backbone (``efficientnet_lite0``) stays frozen. ``val_fraction`` of
    the photos (chosen by a hash of the file name) are held out and the report
    scores them only. ``limit`` keeps the first photos of each part (quick
    runs); ``cache_dir`` keeps the encoded copies between runs.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ShoplensError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = HeadConfig(input_size=input_size)
    photos = read_outfits(jsonl, images_root)
    train, val = split_outfits(photos, val_fraction)
    if limit is not None:
        train, val = train[:limit], val[: max(1, limit // 3)]
    if not train or not val:
        raise ShoplensError(f"{jsonl}: too few photos to train and validate ({len(train)} / {len(val)})")
    backbone = create_model(cfg.backbone)
    channels = backbone.torch_module().feature_channels  # type: ignore[union-attr]
    cfg = HeadConfig(input_size=input_size, in_channels=(channels["s8"], channels["s16"], channels["s32"]))

    t0 = time.perf_counter()
    plans = _plan_copies(len(train), rng, train_sizes, crops)
    key = {"backbone": cfg.backbone, "photos": [str(p.image) for p in train], "plans": [[asdict(c) for c in p] for p in plans], "v": 1}
    samples: list[_Sample] = _cached(cache_dir, key, lambda: _encode_copies(backbone, train, plans, progress=progress))
    val_key = {"backbone": cfg.backbone, "photos": [str(p.image) for p in val], "size": input_size, "val": 1}
    val_enc = _cached_val(cache_dir, val_key, backbone, val, input_size)
    encode_s = time.perf_counter() - t0
    log.info("encoded %d training copies of %d photos in %.0f s", len(samples), len(train), encode_s)

    head = GarmentHead(cfg)
    t1 = time.perf_counter()
    losses = _fit(head, samples, epochs=epochs, seed=seed, progress=progress)
    train_s = time.perf_counter() - t1

    detector = HeadDetector(head)
    scores = evaluate_head(detector, backbone, val, encodings=val_enc)
    summary = scores.summary()
    save_head(head, out_path, extra={"trained_on": Path(jsonl).name, "val_fraction": val_fraction, "seed": seed, "epochs": epochs})
    return DetectorTrainReport(
        out_path=str(out_path),
        train_photos=len(train),
        val_photos=len(val),
        train_copies=len(samples),
        epochs=epochs,
        seed=seed,
        input_size=input_size,
        min_score=detector.min_score,
        recall=float(summary["recall"]),  # type: ignore[arg-type]
        recall_per_label=dict(summary["recall_per_label"]),  # type: ignore[call-overload]
        precision=float(summary["precision"]),  # type: ignore[arg-type]
        boxes_per_photo=float(summary["boxes_per_photo"]),  # type: ignore[arg-type]
        encode_seconds=round(encode_s, 1),
        train_seconds=round(train_s, 1),
        losses=[round(x, 4) for x in losses],
    )


def _cached_val(cache_dir: Path | None, key: dict[str, Any], backbone: Backbone, val: Sequence[OutfitPhoto], size: int) -> list[Any]:
    def build() -> list[Any]:
        return backbone.encode([load_image(p.image) for p in val], input_size=size)

    if cache_dir is None:
        return build()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"val-{digest}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)  # type: ignore[no-any-return]
    encs = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(encs, path)
    return encs


def _batches(samples: Sequence[_Sample], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of samples with similar map shapes (little padding to skew batch norm)."""
    shape = np.array([s.feats[0].shape[-2] * 1000 + s.feats[0].shape[-1] for s in samples])
    order = np.lexsort((rng.random(len(samples)), shape))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _fit(
    head: GarmentHead,
    samples: Sequence[_Sample],
    *,
    epochs: int,
    seed: int,
    progress: bool,
    batch_size: int = 16,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
) -> list[float]:
    from tqdm import tqdm

    rng = np.random.default_rng(seed + 1)
    stride, n_labels = head.cfg.stride, len(head.cfg.labels)
    steps = epochs * math.ceil(len(samples) / batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    head.train()
    losses: list[float] = []
    bar = tqdm(total=steps, desc="training", unit="step", disable=not progress)
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in _batches(samples, batch_size, rng):
            s8, s16, s32, heat, box_t, box_w, neg = _collate([samples[i] for i in idx], stride, n_labels)
            logits, sides = head(s8, s16, s32)
            loss = _focal_loss(logits, heat, neg) + 5.0 * _giou_loss(sides, box_t, box_w, stride)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
            bar.update(1)
        losses.append(total / max(count, 1))
        log.info("epoch %d: loss %.4f", len(losses), losses[-1])
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    head.eval()
    return losses

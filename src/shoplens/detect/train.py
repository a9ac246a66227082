"""Training the default garment head on boxed outfit photos (``shoplens train-detector``).

The backbone (``efficientnet_lite0``) is frozen, so the head reads the same
maps the pipeline computes anyway. Every epoch sees a fresh augmented view of
each training photo (mirror, zoom in and out, shift, aspect, input size,
brightness and contrast), made on the fly by one ``grid_sample`` per batch:
the same code runs on a CPU or a GPU, and a seed fixes every random draw.
The photos are split into training and validation by a hash of their file
name: the split does not depend on the seed or on the file's order, and the
report scores validation photos only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShoplensError
from ..imaging import load_image
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


def outfits_paths(outfits_dir: Path) -> tuple[Path, Path]:
    """(``garments.jsonl``, images root) of an outfits folder."""
    jsonl = Path(outfits_dir) / "garments.jsonl"
    if not jsonl.is_file():
        raise ShoplensError(f"{outfits_dir}: no garments.jsonl (expected an outfits folder)")
    return jsonl, Path(outfits_dir)


# ----------------------------------------------------------------------------- augmentation


@dataclass
class _Canvas:
    """Training photos as one uint8 tensor (N, 3, S, S), padded with mid grey."""

    pixels: torch.Tensor
    hw: np.ndarray  # (N, 2) height, width of each photo inside its canvas
    boxes: list[np.ndarray]  # (n, 4) canvas pixels
    labels: list[np.ndarray]  # (n,) label index


def _load_canvas(photos: Sequence[OutfitPhoto], side: int) -> _Canvas:
    import cv2

    n = len(photos)
    pixels = torch.full((n, 3, side, side), 127, dtype=torch.uint8)
    hw = np.zeros((n, 2), dtype=np.int64)
    boxes, labels = [], []
    for i, photo in enumerate(photos):
        img = load_image(photo.image)
        px = img.pixels
        w0, h0 = img.size
        k = side / max(px.shape[:2])
        if k != 1.0:
            nh, nw = max(1, round(px.shape[0] * k)), max(1, round(px.shape[1] * k))
            px = cv2.resize(px, (nw, nh), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        h, w = px.shape[:2]
        pixels[i, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(px)).permute(2, 0, 1)
        hw[i] = (h, w)
        scale = np.array([w / w0, h / h0, w / w0, h / h0])
        boxes.append((np.array(photo.boxes, dtype=np.float64).reshape(-1, 4) * scale).astype(np.float32))
        labels.append(np.array([HEAD_LABELS.index(lab) for lab in photo.labels], dtype=np.int64))
    return _Canvas(pixels, hw, boxes, labels)


@dataclass(frozen=True)
class _View:
    """One augmented view: crop window in canvas pixels (may reach past the photo), mirror, tone."""

    x0: float
    y0: float
    x1: float
    y1: float
    flip: bool
    gain: float
    bias: float


def _draw_views(rng: np.random.Generator, hw: np.ndarray, out_hw: tuple[int, int], full: float = 0.3) -> list[_View]:
    """Random windows of aspect ``out_hw``: zoomed in (0.5x) to zoomed out (1.2x), shifted."""
    views = []
    aspect = out_hw[1] / out_hw[0]
    for h, w in hw:
        if rng.random() < full:
            zoom = 1.0
        else:
            zoom = float(rng.uniform(0.5, 1.2))
        ch = h * zoom
        cw = ch * aspect
        lo_x, hi_x = sorted((cw / 2, w - cw / 2))
        lo_y, hi_y = sorted((ch / 2, h - ch / 2))
        cx = (lo_x + hi_x) / 2 if zoom == 1.0 else float(rng.uniform(lo_x, hi_x))
        cy = (lo_y + hi_y) / 2 if zoom == 1.0 else float(rng.uniform(lo_y, hi_y))
        views.append(
            _View(
                cx - cw / 2,
                cy - ch / 2,
                cx + cw / 2,
                cy + ch / 2,
                bool(rng.random() < 0.5),
                float(rng.uniform(0.75, 1.25)),
                float(rng.uniform(-0.15, 0.15)),
            )
        )
    return views


def _render(canvas: _Canvas, idx: Sequence[int], views: Sequence[_View], out_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Normalised (B, 3, H, W) input batch of the views (grey beyond the photo)."""
    side = canvas.pixels.shape[-1]
    theta = torch.zeros((len(idx), 2, 3), dtype=torch.float32)
    for j, v in enumerate(views):
        sx, sy = (v.x1 - v.x0) / side, (v.y1 - v.y0) / side
        theta[j, 0, 0] = -sx if v.flip else sx
        theta[j, 0, 2] = (v.x0 + v.x1) / side - 1.0
        theta[j, 1, 1] = sy
        theta[j, 1, 2] = (v.y0 + v.y1) / side - 1.0
    src = (canvas.pixels[list(idx)].to(device).float() - 127.0) / 128.0  # lite0 normalisation; grey -> 0
    grid = F.affine_grid(theta.to(device), [len(idx), 3, *out_hw], align_corners=False)
    x = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = torch.tensor([v.gain for v in views], device=device)[:, None, None, None]
    bias = torch.tensor([v.bias for v in views], device=device)[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * gain + mean + bias).clamp(-1.0, 1.0)


def _view_boxes(boxes: np.ndarray, labels: np.ndarray, v: _View, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes in input pixels of a view: (kept boxes, their labels, ignore rows x0 y0 x1 y1 label)."""
    oh, ow = out_hw
    kx, ky = ow / (v.x1 - v.x0), oh / (v.y1 - v.y0)
    b = (boxes.astype(np.float64) - [v.x0, v.y0, v.x0, v.y0]) * [kx, ky, kx, ky]
    clipped = b.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, ow)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, oh)

    def area(a: np.ndarray) -> np.ndarray:
        return (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)

    visible = area(clipped) / np.maximum(area(b), 1e-9)
    if v.flip:
        clipped[:, [0, 2]] = ow - clipped[:, [2, 0]]
    keep, half = visible >= 0.5, (visible > 0) & (visible < 0.5)
    ignore = np.column_stack([clipped[half], labels[half]]).astype(np.float32)
    return clipped[keep].astype(np.float32), labels[keep], ignore


# ----------------------------------------------------------------------------- targets and loss


def _gaussian_targets(
    boxes: np.ndarray,
    labels: np.ndarray,
    ignore: np.ndarray,
    hw: tuple[int, int],
    stride: int,
    n_labels: int,
    alpha: float = 0.54,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heat (L, h, w), box targets (4, h, w), box weights (h, w), negative mask (L, h, w).

    Heat is an elliptic Gaussian around each garment's centre (TTFNet), 1 at
    the centre cell; box targets and weights cover the Gaussian's core inside
    the box; the negative mask removes half-visible garments of a view.
    """
    h, w = hw
    heat = np.zeros((n_labels, h, w), dtype=np.float32)
    box_t = np.zeros((4, h, w), dtype=np.float32)
    box_w = np.zeros((h, w), dtype=np.float32)
    neg = np.ones((n_labels, h, w), dtype=np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) * stride
    xs = (np.arange(w, dtype=np.float32) + 0.5) * stride
    for x0, y0, x1, y1, li in ignore:
        inside = (ys[:, None] >= y0) & (ys[:, None] <= y1) & (xs[None, :] >= x0) & (xs[None, :] <= x1)
        neg[int(li)][inside] = 0.0
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


def _focal_loss(logits: torch.Tensor, heat: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1.0).float()
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - heat) ** 4 * (1 - pos) * neg_mask).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def _giou_loss(sides: torch.Tensor, box_t: torch.Tensor, box_w: torch.Tensor, stride: int) -> torch.Tensor:
    n, _, h, w = sides.shape
    ys = (torch.arange(h, dtype=torch.float32, device=sides.device) + 0.5) * stride
    xs = (torch.arange(w, dtype=torch.float32, device=sides.device) + 0.5) * stride
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
class DetectorReport:
    """What :func:`train_detector` did and how the head scores on the held-out photos."""

    out_path: str
    train_photos: int
    val_photos: int
    epochs: int  # summed over the ensemble's members
    seed: int
    device: str
    input_size: int
    min_score: float
    recall: float  # over MAIN_LABELS, IoU >= 0.5, held-out photos only
    recall_per_label: dict[str, float]
    precision: float
    boxes_per_photo: float
    ms_per_photo: float  # backbone pass + head + decoding, on the training device's CPU path
    train_seconds: float
    losses: list[float] = field(default_factory=list)  # per epoch, last member

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Older name, kept for callers of the first version.
DetectorTrainReport = DetectorReport


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


def _timed_eval(detector: HeadDetector, backbone: Backbone, photos: Sequence[OutfitPhoto]) -> tuple[DetectionScores, float]:
    """Score ``photos`` one at a time (as a search does) and the mean ms per photo."""
    scores = DetectionScores(labels=MAIN_LABELS)
    images = [load_image(p.image) for p in photos]
    detector.detect(backbone.encode(images[:1], input_size=detector.input_size))  # warm-up
    t0 = time.perf_counter()
    for photo, img in zip(photos, images):
        found = detector.detect(backbone.encode([img], input_size=detector.input_size))[0]
        scores.add([(g.box, g.label, g.score) for g in found], list(zip(photo.boxes, photo.labels)))
    return scores, 1000.0 * (time.perf_counter() - t0) / max(len(photos), 1)


#: Ensemble members of the shipped detector: (epochs, channels) of each head.
DEFAULT_MEMBERS: tuple[tuple[int, int], ...] = ((140, 96), (200, 96), (220, 128))


def train_detector(
    outfits_dir: Path,
    out: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    progress: bool = False,
    device: str = "cpu",
    members: Sequence[tuple[int, int]] = DEFAULT_MEMBERS,
    input_size: int = 384,
    train_sizes: Sequence[int] = (320, 352, 384, 416, 448),
    batch_size: int = 32,
    lr: float = 3e-3,
    tower: int = 3,
    dropout: float = 0.1,
    val_fraction: float = 0.25,
    limit: int | None = None,
) -> DetectorReport:
    """Train the garment detector on ``outfits_dir/garments.jsonl`` and save it to ``out``.

    The detector is a small ensemble of heads on the frozen
    ``efficientnet_lite0`` maps, one per ``members`` entry (epochs,
    channels), each trained from ``seed``; ``epochs`` (when given) replaces
    every member's epoch count (quick runs). ``val_fraction`` of the photos
    (chosen by a hash of the file name) are held out and the report scores
    them only, one photo at a time on the CPU as a search runs. ``device``
    ("cpu", "cuda") only changes where training runs; on the CPU a fixed
    ``seed`` gives the same weights every time. ``limit`` keeps the first
    photos of each part (quick runs).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ShoplensError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    if not members:
        raise ShoplensError("train_detector needs at least one ensemble member")
    jsonl, root = outfits_paths(outfits_dir)
    photos = read_outfits(jsonl, root)
    train, val = split_outfits(photos, val_fraction)
    if limit is not None:
        train, val = train[:limit], val[: max(1, limit // 3)]
    if not train or not val:
        raise ShoplensError(f"{jsonl}: too few photos to train and validate ({len(train)} / {len(val)})")
    backbone = create_model("efficientnet_lite0")
    module = backbone.torch_module()
    ch: dict[str, int] = module.feature_channels  # type: ignore[union-attr, assignment]
    canvas = _load_canvas(train, max(train_sizes))
    t0 = time.perf_counter()
    heads, losses, n_epochs = [], [], []
    for member_epochs, channels in members:
        torch.manual_seed(seed)
        head = GarmentHead(HeadConfig(input_size=input_size, in_channels=(ch["s8"], ch["s16"], ch["s32"]), channels=channels,
                                      tower=tower, dropout=dropout))
        n_epochs.append(member_epochs if epochs is None else epochs)
        losses = _fit(head, module, canvas, sizes=train_sizes, epochs=n_epochs[-1], seed=seed, device=device,  # type: ignore[arg-type]
                      batch_size=batch_size, lr=lr, progress=progress)
        heads.append(head.cpu().eval())
    train_s = time.perf_counter() - t0
    module.cpu()  # type: ignore[union-attr]

    detector = HeadDetector(heads)
    scores, ms = _timed_eval(detector, backbone, val)
    summary = scores.summary()
    extra = {"trained_on": str(jsonl.name), "val_fraction": val_fraction, "seed": seed, "epochs": n_epochs}
    save_head(heads, out, extra=extra)
    return DetectorReport(
        out_path=str(out),
        train_photos=len(train),
        val_photos=len(val),
        epochs=sum(n_epochs),
        seed=seed,
        device=device,
        input_size=input_size,
        min_score=detector.min_score,
        recall=float(summary["recall"]),  # type: ignore[arg-type]
        recall_per_label=dict(summary["recall_per_label"]),  # type: ignore[call-overload]
        precision=float(summary["precision"]),  # type: ignore[arg-type]
        boxes_per_photo=float(summary["boxes_per_photo"]),  # type: ignore[arg-type]
        ms_per_photo=round(ms, 1),
        train_seconds=round(train_s, 1),
        losses=[round(x, 4) for x in losses],
    )


def _fit(
    head: GarmentHead,
    backbone: torch.nn.Module,
    canvas: _Canvas,
    *,
    sizes: Sequence[int],
    epochs: int,
    seed: int,
    device: str,
    batch_size: int,
    lr: float,
    progress: bool,
    weight_decay: float = 1e-2,
) -> list[float]:
    """Train ``head`` on fresh augmented views of ``canvas`` every epoch."""
    from tqdm import tqdm

    dev = torch.device(device)
    rng = np.random.default_rng(seed + 1)
    stride, n_labels = head.cfg.stride, len(head.cfg.labels)
    n = len(canvas.boxes)
    per_epoch = math.ceil(n / batch_size)
    steps = epochs * per_epoch
    head.to(dev).train()
    backbone.to(dev).eval()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    amp = dev.type == "cuda"
    losses: list[float] = []
    bar = tqdm(total=steps, desc="training", unit="step", disable=not progress)
    for _ in range(epochs):
        total, count = 0.0, 0
        order = rng.permutation(n)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            size = int(rng.choice(sizes))
            aspect = float(rng.uniform(0.55, 1.0))
            out_hw = (size, max(stride * 4, int(round(size * aspect / 32)) * 32))
            views = _draw_views(rng, canvas.hw[idx], out_hw)
            x = _render(canvas, idx.tolist(), views, out_hw, dev).contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                f = backbone.forward_features(x)  # type: ignore[operator]
            s8, s16, s32 = (f[k].float() for k in ("s8", "s16", "s32"))
            hw = (s8.shape[-2], s8.shape[-1])
            tg = [
                _gaussian_targets(*_view_boxes(canvas.boxes[i], canvas.labels[i], v, out_hw), hw, stride, n_labels)
                for i, v in zip(idx, views)
            ]
            heat, box_t, box_w, neg = (torch.from_numpy(np.stack([t[k] for t in tg])).to(dev) for k in range(4))
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

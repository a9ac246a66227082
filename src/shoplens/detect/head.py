"""The default garment detector: a small head on the frozen backbone's feature maps.

The head reads the ``s8``/``s16``/``s32`` maps of the same backbone pass the
intent gate uses, fuses them top-down (a small FPN) at stride 8 and predicts,
per cell, one heat value per garment label (the garment's centre) and the
distances from the cell to the box's four sides (TTFNet-style). Decoding takes
the local maxima of each label's heat map. It adds a few milliseconds to the
backbone pass and has no other dependency.

The registered detectors (``default``, ``head:PATH``) run the heads in
OpenVINO, or in ONNX Runtime on one thread where the backbones run there or
OpenVINO is missing (exported once into the ONNX cache; the same maps to
float rounding, about 1.7 times faster than torch on a busy CPU); a
:class:`HeadDetector` built from modules runs them in torch.

Weights (``data/garment_head.pt``, a ``weights_only`` torch file holding a
small ensemble of heads whose maps are averaged) are trained by
:func:`shoplens.detect.train.train_detector` on the boxed street photos of
``shared/data/outfits``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShoplensError
from ..models import Encoding
from ..threads import torch_threads
from .base import Detector, Garment

log = logging.getLogger(__name__)

#: The labels the shipped head predicts, in channel order.
HEAD_LABELS = ("top", "outerwear", "dress", "bottom", "shoes", "bag", "hat")
_FORMAT = "shoplens-garment-head"
_SHIPPED = "garment_head.pt"


@dataclass(frozen=True)
class HeadConfig:
    """Shape of a :class:`GarmentHead` and how it was trained to be fed."""

    labels: tuple[str, ...] = HEAD_LABELS
    backbone: str = "efficientnet_lite0"
    input_size: int = 320
    in_channels: tuple[int, int, int] = (40, 112, 1280)  # s8, s16, s32
    channels: int = 64
    tower: int = 2
    stride: int = 8
    #: Channel dropout on the s16/s32 maps while training (the head overfits without it).
    dropout: float = 0.0


def _sep_conv(c: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1: a 3x3 conv at a ninth of the cost."""
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
    )


def _lateral(cin: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))


class GarmentHead(nn.Module):
    """FPN over (s8, s16, s32) -> per-label centre heat maps and box sides at stride 8."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c8, c16, c32 = cfg.in_channels
        c = cfg.channels
        self.drop = nn.Dropout2d(cfg.dropout)
        self.lat32 = _lateral(c32, c)
        self.ctx32 = _sep_conv(c)
        self.lat16 = _lateral(c16, c)
        self.fuse16 = _sep_conv(c)
        self.lat8 = _lateral(c8, c)
        self.fuse8 = _sep_conv(c)
        self.tower = nn.Sequential(*(_sep_conv(c) for _ in range(cfg.tower)))
        self.heat = nn.Conv2d(c, len(cfg.labels), 3, padding=1)
        self.sides = nn.Conv2d(c, 4, 3, padding=1)
        assert self.heat.bias is not None and self.sides.bias is not None
        nn.init.constant_(self.heat.bias, -2.19)  # prior of 0.1: focal loss starts stable
        nn.init.normal_(self.sides.weight, std=0.01)
        nn.init.constant_(self.sides.bias, 0.0)

    def forward(self, s8: torch.Tensor, s16: torch.Tensor, s32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, h, w) maps -> heat logits (N, L, h8, w8), log box sides (N, 4, h8, w8).

        Box sides are log distances from the cell centre to (left, top, right,
        bottom), in units of the stride.
        """
        p = self.ctx32(self.lat32(self.drop(s32)))
        p = self.fuse16(self.lat16(self.drop(s16)) + F.interpolate(p, size=s16.shape[-2:], mode="bilinear", align_corners=False))
        p = self.fuse8(self.lat8(s8) + F.interpolate(p, size=s8.shape[-2:], mode="bilinear", align_corners=False))
        p = self.tower(p)
        return self.heat(p), self.sides(p).clamp(-4.0, 5.0)


def fold_batch_norm(head: GarmentHead) -> GarmentHead:
    """A copy of ``head`` for inference, each batch norm folded into the conv before it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(seq: nn.Sequential) -> nn.Sequential:
        out: list[nn.Module] = []
        for m in seq:
            if isinstance(m, nn.BatchNorm2d) and out and isinstance(out[-1], nn.Conv2d):
                conv = out.pop()
                assert isinstance(conv, nn.Conv2d)
                out.append(fuse_conv_bn_eval(conv, m))
            elif isinstance(m, nn.Sequential):
                out.append(fold(m))
            else:
                out.append(m)
        return nn.Sequential(*out)

    fused = copy.deepcopy(head).eval()
    for name in ("lat32", "ctx32", "lat16", "fuse16", "lat8", "fuse8", "tower"):
        setattr(fused, name, fold(getattr(fused, name)))
    return fused


def decode(
    heat: torch.Tensor,
    sides: torch.Tensor,
    stride: int,
    *,
    max_per_label: dict[int, int],
    min_score: float,
    average: bool = True,
) -> list[tuple[tuple[float, float, float, float], int, float]]:
    """One image's maps -> ``[(box in input pixels, label index, score)]``, best first.

    A box is a local maximum (3x3) of its label's heat map; at most
    ``max_per_label[label]`` boxes per label. With ``average``, the box is the
    mean of the boxes its 3x3 neighbours predict, weighted by their heat.
    """
    prob = heat.sigmoid()  # (L, h, w)
    peaks = prob * (F.max_pool2d(prob[None], 3, stride=1, padding=1)[0] == prob)
    out: list[tuple[tuple[float, float, float, float], int, float]] = []
    h, w = prob.shape[-2:]
    dist = sides.exp() * stride  # (4, h, w)
    cy = (torch.arange(h, dtype=dist.dtype)[:, None] + 0.5) * stride
    cx = (torch.arange(w, dtype=dist.dtype)[None, :] + 0.5) * stride
    boxes = torch.stack([cx - dist[0], cy - dist[1], cx + dist[2], cy + dist[3]])  # (4, h, w)
    for li in range(prob.shape[0]):
        k = max_per_label.get(li, 1)
        if k <= 0:
            continue
        scores, idx = peaks[li].flatten().topk(min(k, h * w))
        for s, i in zip(scores.tolist(), idx.tolist()):
            if s < min_score:
                break
            y, x = divmod(i, w)
            if average:
                ys, xs = slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2)
                wts = prob[li, ys, xs]
                box = ((boxes[:, ys, xs] * wts).sum((1, 2)) / wts.sum()).tolist()
            else:
                box = boxes[:, y, x].tolist()
            out.append(((box[0], box[1], box[2], box[3]), li, s))
    out.sort(key=lambda t: -t[2])
    return out


def _payload(head: GarmentHead) -> dict[str, Any]:
    return {
        "config": asdict(head.cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
    }


def save_head(head: GarmentHead | Sequence[GarmentHead], path: Path, *, extra: dict[str, Any] | None = None) -> None:
    """Write one head or an ensemble (heads on the same maps) as a ``weights_only`` torch file."""
    heads = [head] if isinstance(head, GarmentHead) else list(head)
    if not heads:
        raise ShoplensError("no garment head to save")
    payload = {"format": _FORMAT, "version": 2, "members": [_payload(h) for h in heads], "extra": extra or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _build(member: dict[str, Any]) -> GarmentHead:
    raw = dict(member["config"])
    cfg = HeadConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})  # type: ignore[arg-type]
    head = GarmentHead(cfg)
    head.load_state_dict(member["state_dict"])
    return head.eval()


def load_heads(path: Path | None = None) -> list[GarmentHead]:
    """Every head of a file saved by :func:`save_head` (the shipped ensemble when ``path`` is None)."""
    try:
        if path is None:
            with resources.as_file(resources.files(__package__).joinpath("data", _SHIPPED)) as p:
                payload = torch.load(p, map_location="cpu", weights_only=True)
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ShoplensError(f"garment detector weights not found: {path or _SHIPPED}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types on a corrupt file
        raise ShoplensError(f"cannot read garment detector weights {path or _SHIPPED}: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ShoplensError(f"{path or _SHIPPED} is not a shoplens garment head file")
    members = payload["members"] if payload.get("version", 1) >= 2 else [payload]
    heads = [_build(m) for m in members]
    first = heads[0].cfg
    for h in heads[1:]:
        if (h.cfg.labels, h.cfg.backbone, h.cfg.stride, h.cfg.in_channels) != (first.labels, first.backbone, first.stride, first.in_channels):
            raise ShoplensError(f"{path or _SHIPPED}: ensemble members read different maps or predict different labels")
    return heads


def load_head(path: Path | None = None) -> GarmentHead:
    """The first head of a file saved by :func:`save_head`."""
    return load_heads(path)[0]


#: Boxes per label the default detector may give: each shoe is its own
#: garment, a second bag is cheap insurance (bags and scarves are easily confused).
DEFAULT_MAX_PER_LABEL = {"shoes": 3, "bag": 2}


class HeadDetector(Detector):
    """Garments from one :class:`GarmentHead` or an ensemble over the shared backbone pass.

    An ensemble averages its members' heat (probabilities) and box sides.
    Per label at most ``max_per_label[label]`` boxes (1 when not named),
    ``min_score`` drops weak peaks (``hat_min_score`` for hats, which are
    rare), and at most ``max_boxes`` boxes per photo, best first.
    """

    name = "default"

    def __init__(
        self,
        head: GarmentHead | Sequence[GarmentHead] | None = None,
        *,
        weights: Path | None = None,
        min_score: float = 0.05,
        hat_min_score: float = 0.2,
        max_per_label: dict[str, int] | None = None,
        max_boxes: int = 8,
        input_size: int | None = None,
        average: bool = True,
        engine: str = "torch",
    ) -> None:
        if engine not in ("torch", "onnx", "auto"):
            raise ShoplensError(f"unknown garment head engine {engine!r}; expected torch, onnx or auto")
        if head is None:
            heads = load_heads(weights)
        else:
            heads = [head] if isinstance(head, GarmentHead) else list(head)
        self.heads = [fold_batch_norm(h) for h in heads]
        #: Where the heads run: torch, ONNX Runtime (``onnx``), or ``auto``: OpenVINO, else ONNX Runtime, else torch.
        self.engine = engine
        self._onnx: Any = None  # the session, made on first use
        cfg = self.heads[0].cfg
        self.backbone = cfg.backbone
        self.input_size = input_size or cfg.input_size
        self.labels = cfg.labels
        self.min_score = min_score
        self.hat_min_score = hat_min_score
        self.max_boxes = max_boxes
        self.average = average
        caps = DEFAULT_MAX_PER_LABEL if max_per_label is None else max_per_label
        self._max = {i: caps.get(lab, 1) for i, lab in enumerate(cfg.labels)}

    @torch.inference_mode()
    def maps(self, enc: Encoding) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoding -> (heat logits (L, h, w), log box sides (4, h, w)), averaged over members."""
        f = enc.features
        if not all(k in f for k in ("s8", "s16", "s32")):
            raise ShoplensError(f"the garment head needs s8/s16/s32 feature maps of {self.backbone}")
        x = (f["s8"][None].float(), f["s16"][None].float(), f["s32"][None].float())
        outs = self._run_onnx(x) if self.engine != "torch" else None
        if outs is None:
            outs = [h(*x) for h in self.heads]
        if len(outs) == 1:
            return outs[0][0][0], outs[0][1][0]
        prob = torch.stack([o[0][0].sigmoid() for o in outs]).mean(0)
        sides = torch.stack([o[1][0] for o in outs]).mean(0)
        return torch.logit(prob.clamp(1e-6, 1 - 1e-6)), sides

    def _run_onnx(self, x: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Every member's (heat, sides) from the exported graph (OpenVINO or ONNX Runtime), or ``None`` where neither runs (``auto``)."""
        if self._onnx is None:
            try:
                self._onnx = _onnx_session(self.heads, self.engine)
            except Exception as err:  # no runtime, or an export that failed
                if self.engine == "onnx":
                    raise ShoplensError(f"cannot run the garment head in ONNX Runtime: {err}") from err
                log.warning("garment head: neither OpenVINO nor ONNX Runtime can run it (%s); running it in torch", err)
                self.engine = "torch"
                return None
        feed = {name: np.ascontiguousarray(t.numpy()) for name, t in zip(("s8", "s16", "s32"), x)}
        outs = self._onnx.run(None, feed)
        return [(torch.from_numpy(outs[2 * m]), torch.from_numpy(outs[2 * m + 1])) for m in range(len(self.heads))]

    @torch.inference_mode()
    def detect(self, encodings: Sequence[Encoding]) -> list[list[Garment]]:
        out: list[list[Garment]] = []
        hat = self.labels.index("hat") if "hat" in self.labels else -1
        # Per-photo maps are small: one thread (shoplens.threads).
        with torch_threads():
            for enc in encodings:
                heat, sides = self.maps(enc)
                found = decode(heat, sides, self.heads[0].cfg.stride, max_per_label=self._max, min_score=self.min_score, average=self.average)
                kept = [t for t in found if t[1] != hat or t[2] >= self.hat_min_score][: self.max_boxes]
                out.append([_to_photo(box, self.labels[li], s, enc) for box, li, s in kept])
        return out


class _Members(nn.Module):
    """The members of an ensemble as one graph: (heat, sides) of each, in order."""

    def __init__(self, heads: Sequence[GarmentHead]) -> None:
        super().__init__()
        self.members = nn.ModuleList(heads)

    def forward(self, s8: torch.Tensor, s16: torch.Tensor, s32: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for head in self.members:
            out.extend(head(s8, s16, s32))
        return tuple(out)


def _onnx_session(heads: Sequence[GarmentHead], engine: str = "onnx") -> Any:
    """A session over ``heads``, exported once into the ONNX cache.

    ``engine``: ``onnx`` (ONNX Runtime, one thread) or ``auto`` (OpenVINO, which
    then runs the backbones too, so the process loads one runtime, not two;
    ONNX Runtime where OpenVINO is missing or fails). OpenVINO runs the heads
    on all the cores: for a 384 x 256 photo 5.6-7.4 ms instead of 8.7-14.4 on
    one thread, and in the search benchmark the detect step's p50 was 22.8-31.2
    ms against 28.0-36.8 (docs/decisions.md).
    """
    from ..models.onnx_runtime import cache_dir, cpu_session, export_graph, fingerprint

    members = _Members(heads).eval()
    path = cache_dir() / f"garment-heads-{fingerprint(members)}.onnx"
    if not path.exists():
        c8, c16, c32 = heads[0].cfg.in_channels
        export_graph(
            members,
            (torch.zeros(1, c8, 48, 32), torch.zeros(1, c16, 24, 16), torch.zeros(1, c32, 12, 8)),
            path,
            input_names=["s8", "s16", "s32"],
            output_names=[f"{k}{m}" for m in range(len(heads)) for k in ("heat", "sides")],
            dynamic_axes={n: {2: f"{n}_h", 3: f"{n}_w"} for n in ("s8", "s16", "s32")},
        )
    if engine == "auto":
        from ..models.openvino_runtime import OpenVinoSession

        try:
            return OpenVinoSession(path)
        except Exception as err:  # noqa: BLE001 - OpenVINO missing or unable to compile: ONNX Runtime runs the same graph
            log.info("garment head: OpenVINO unavailable (%s); trying ONNX Runtime", err)
    return cpu_session(path, threads=1)


def _to_photo(box: tuple[float, float, float, float], label: str, score: float, enc: Encoding) -> Garment:
    """Input-pixel box -> box in pixels of the photo as given, clipped to it."""
    w, h = enc.photo.size
    sy, sx = h / enc.input_hw[0], w / enc.input_hw[1]
    x0, y0, x1, y1 = box
    return Garment(
        box=(
            min(max(x0 * sx, 0.0), w),
            min(max(y0 * sy, 0.0), h),
            min(max(x1 * sx, 0.0), w),
            min(max(y1 * sy, 0.0), h),
        ),
        label=label,
        score=float(score),
    )

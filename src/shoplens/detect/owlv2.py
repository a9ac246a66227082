"""OWLv2: an open-vocabulary detector, asked for garments in words (extra ``[hf]``).

Names: ``owlv2-base`` (google/owlv2-base-patch16-ensemble, Apache-2.0,
downloaded from the hub on first use) and ``owlv2:LOCATION`` where LOCATION is
a hub repository id (``owlv2:google/owlv2-large-patch14-ensemble``), an
absolute path or ``local-dir:/path`` (a folder saved by ``save_pretrained``,
with its tokenizer files).

Each garment label is asked for with a few phrases (:data:`GARMENT_QUERIES`,
or ``queries=`` mapping labels to phrases); a box takes the label of its best
phrase. The text queries are embedded once, when the detector is built.
Photos are letterboxed into the model's square input as the OWLv2 processor
does (resize the longest side, pad bottom/right with grey), and boxes are
mapped back to ``photo.size`` pixels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..imaging import Photo
from ..models import Encoding, WeightsSource, parse_source
from ..models._hf import from_pretrained, hf_preprocess, pretrained_ref, read_json, transformers_module
from ..models.hf_clip import OPENAI_MEAN, OPENAI_STD
from ..models.preprocess import PreprocessCfg, resize_photo
from .base import GARMENT_LABELS, Detector, Garment

logger = logging.getLogger(__name__)

#: Phrases asked for each garment label (short noun phrases work best with OWL).
GARMENT_QUERIES: dict[str, tuple[str, ...]] = {
    "top": ("a shirt", "a t-shirt", "a blouse", "a sweater", "a top"),
    "outerwear": ("a jacket", "a coat", "a blazer", "a hoodie"),
    "dress": ("a dress",),
    "bottom": ("trousers", "jeans", "a skirt", "shorts"),
    "shoes": ("a shoe", "a sneaker", "a boot"),
    "bag": ("a handbag", "a backpack", "a bag"),
    "hat": ("a hat", "a cap"),
    "accessory": ("sunglasses", "a scarf", "a belt", "a watch"),
}

#: What google/owlv2-* ship: 960 px, OpenAI CLIP mean/std, bilinear; pad to square with grey.
OWLV2_PREPROCESS = PreprocessCfg(
    input_size=960,
    resize="letterbox",
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
    interpolation="bilinear",
    stride=1,  # the longest side is input_size exactly and the other keeps the aspect ratio
)
#: The OWLv2 processor pads with 0.5 (in 0..1 pixel units) before normalising.
_PAD_PIXEL = 127.5


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        union = areas[i] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[overlap <= iou]
    return keep


def boxes_to_photo(cxcywh: np.ndarray, photo: Photo, resized_hw: tuple[int, int], side: int) -> np.ndarray:
    """Map (K, 4) boxes (cx, cy, w, h in 0..1 of the padded ``side`` square) to ``photo.size`` pixels.

    The photo's pixels were resized to ``resized_hw`` and placed at the top
    left of the square; ``photo.size`` may be larger than its pixels (a JPEG
    decoded at reduced scale).
    """
    rh, rw = resized_hw
    sx = photo.size[0] / rw
    sy = photo.size[1] / rh
    cx, cy, w, h = (cxcywh[:, k] * side for k in range(4))
    out = np.stack([(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy], axis=1)
    out[:, 0::2] = out[:, 0::2].clip(0, photo.size[0])
    out[:, 1::2] = out[:, 1::2].clip(0, photo.size[1])
    return out


class Owlv2Detector(Detector):
    """Garments found by OWLv2 from text queries.

    ``threshold`` is the least sigmoid score a box needs; boxes of one label
    overlapping more than ``nms_iou`` are merged; at most ``max_boxes`` per
    photo are kept (best first).
    """

    backbone = None  # reads pixels: it runs its own image tower

    def __init__(
        self,
        name: str,
        model: Any,
        query_embeds: torch.Tensor,
        query_labels: Sequence[str],
        preprocess: PreprocessCfg,
        *,
        threshold: float = 0.15,
        nms_iou: float = 0.5,
        max_boxes: int = 8,
        batch_size: int = 2,
    ) -> None:
        if not 0.0 <= threshold <= 1.0 or not 0.0 < nms_iou <= 1.0 or max_boxes < 1:
            raise ConfigError("owlv2: threshold must be in [0, 1], nms_iou in (0, 1], max_boxes >= 1")
        self.name = name
        self.model = model.eval()
        self.query_embeds = query_embeds
        self.query_labels = tuple(query_labels)
        self.preprocess = preprocess
        self.threshold = threshold
        self.nms_iou = nms_iou
        self.max_boxes = max_boxes
        self.batch_size = batch_size
        self.native_size = int(model.config.vision_config.image_size)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        source: WeightsSource,
        *,
        queries: Mapping[str, Sequence[str]] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Owlv2Detector:
        """Load model, tokenizer and preprocessing from ``source`` and embed the queries."""
        transformers = transformers_module("the OWLv2 detector")
        queries = dict(GARMENT_QUERIES if queries is None else queries)
        unknown = sorted(set(queries) - set(GARMENT_LABELS))
        if unknown or not any(queries.values()):
            raise ConfigError(f"owlv2 queries need phrases for labels among {', '.join(GARMENT_LABELS)}; got {unknown}")
        phrases = [p for label in queries for p in queries[label]]
        labels = [label for label in queries for _ in queries[label]]
        model = from_pretrained(transformers.Owlv2ForObjectDetection, source)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained_ref(source), revision=source.revision)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{source}: cannot load the OWLv2 tokenizer: {err}") from None
        max_length = int(model.config.text_config.max_position_embeddings)
        tokens = tokenizer(phrases, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            text = model.owlv2.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            query_embeds = model.owlv2.text_projection(text.pooler_output)
        default = replace(OWLV2_PREPROCESS, input_size=int(model.config.vision_config.image_size))
        processor = read_json(source, "preprocessor_config.json", required=False)
        # The OWLv2 processor pads to a square before resizing: a letterbox, whatever its size says.
        preprocess = hf_preprocess(processor, default).with_resize("letterbox")
        return cls(name or f"owlv2:{source}", model, query_embeds, labels, preprocess, **options)

    def _pack(self, photos: Sequence[Photo]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        cfg = self.preprocess
        side = cfg.input_size
        mean = np.asarray(cfg.mean, dtype=np.float32)
        inv_std = 1.0 / np.asarray(cfg.std, dtype=np.float32)
        batch = np.empty((len(photos), side, side, 3), dtype=np.float32)
        batch[:] = (_PAD_PIXEL - mean) * inv_std
        sizes = []
        for i, photo in enumerate(photos):
            r = resize_photo(photo.pixels, cfg, photo.size)
            batch[i, : r.shape[0], : r.shape[1]] = (r.astype(np.float32) - mean) * inv_std
            sizes.append((r.shape[0], r.shape[1]))
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(), sizes

    def predict(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (N, patches, queries) logits and (N, patches, 4) cxcywh boxes for a normalised batch."""
        interpolate = batch.shape[-1] != self.native_size
        with self._lock, torch.inference_mode():
            feature_map, _ = self.model.image_embedder(pixel_values=batch, interpolate_pos_encoding=interpolate)
            n, gh, gw, c = feature_map.shape
            feats = feature_map.reshape(n, gh * gw, c)
            queries = self.query_embeds.unsqueeze(0).expand(n, -1, -1)
            logits, _ = self.model.class_predictor(feats, queries, None)
            boxes = self.model.box_predictor(feats, feature_map, interpolate)
        return logits, boxes

    def detect(self, encodings: Sequence[Encoding]) -> list[list[Garment]]:
        out: list[list[Garment]] = []
        for start in range(0, len(encodings), self.batch_size):
            photos = [e.photo for e in encodings[start : start + self.batch_size]]
            batch, sizes = self._pack(photos)
            logits, boxes = self.predict(batch)
            scores, best = torch.sigmoid(logits).max(dim=-1)
            for i, photo in enumerate(photos):
                out.append(self._select(scores[i].numpy(), best[i].numpy(), boxes[i].numpy(), photo, sizes[i]))
        return out

    def _select(
        self, scores: np.ndarray, best: np.ndarray, cxcywh: np.ndarray, photo: Photo, resized_hw: tuple[int, int]
    ) -> list[Garment]:
        keep = np.flatnonzero(scores >= self.threshold)
        if keep.size == 0:
            return []
        boxes = boxes_to_photo(cxcywh[keep].astype(np.float64), photo, resized_hw, self.preprocess.input_size)
        labels = np.asarray([self.query_labels[q] for q in best[keep]])
        found: list[Garment] = []
        for label in dict.fromkeys(labels.tolist()):
            idx = np.flatnonzero(labels == label)
            for j in nms(boxes[idx], scores[keep][idx], self.nms_iou):
                k = idx[j]
                if boxes[k, 2] > boxes[k, 0] and boxes[k, 3] > boxes[k, 1]:
                    box = (float(boxes[k, 0]), float(boxes[k, 1]), float(boxes[k, 2]), float(boxes[k, 3]))
                    found.append(Garment(box, str(label), float(scores[keep][k])))
        found.sort(key=lambda g: -g.score)
        return found[: self.max_boxes]


def create_owlv2(location: str, **options: Any) -> Owlv2Detector:
    """``owlv2:LOCATION``: a hub id, an absolute path or ``local-dir:/path``."""
    return Owlv2Detector.load(parse_source(location, bare="hf-hub"), **options)

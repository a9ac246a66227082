"""How well a detector finds the annotated garments: recall at IoU, precision, boxes per photo.

A ground-truth garment is found when a predicted box of the same label
overlaps it with IoU >= the threshold; each predicted box may find one garment
only (greedy matching, best score first, then best overlap).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

Box = Sequence[float]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) boxes (x0, y0, x1, y1) -> (n, m) intersection over union."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(
    pred: Sequence[tuple[Box, str, float]], truth: Sequence[tuple[Box, str]], iou: float = 0.5
) -> tuple[list[bool], list[bool]]:
    """Greedy one-to-one matching of one photo's boxes.

    ``pred``: (box, label, score); ``truth``: (box, label). Returns which
    truths were found and which predictions found one.
    """
    found = [False] * len(truth)
    used = [False] * len(pred)
    if not pred or not truth:
        return found, used
    ious = iou_matrix(np.array([p[0] for p in pred]), np.array([t[0] for t in truth]))
    for pi in sorted(range(len(pred)), key=lambda i: -pred[i][2]):
        best, best_iou = -1, iou
        for ti, t in enumerate(truth):
            if not found[ti] and t[1] == pred[pi][1] and ious[pi, ti] >= best_iou:
                best, best_iou = ti, ious[pi, ti]
        if best >= 0:
            found[best] = used[pi] = True
    return found, used


@dataclass
class DetectionScores:
    """Counts accumulated over photos; :meth:`summary` turns them into rates."""

    labels: tuple[str, ...]
    iou: float = 0.5
    photos: int = 0
    boxes: int = 0
    true_boxes: int = 0
    per_label_truth: dict[str, int] = field(default_factory=dict)
    per_label_found: dict[str, int] = field(default_factory=dict)
    per_label_pred: dict[str, int] = field(default_factory=dict)
    per_label_hit: dict[str, int] = field(default_factory=dict)

    def add(self, pred: Sequence[tuple[Box, str, float]], truth: Sequence[tuple[Box, str]]) -> None:
        found, used = match(pred, truth, self.iou)
        self.photos += 1
        self.boxes += len(pred)
        self.true_boxes += sum(used)
        for (_, lab), f in zip(truth, found):
            self.per_label_truth[lab] = self.per_label_truth.get(lab, 0) + 1
            self.per_label_found[lab] = self.per_label_found.get(lab, 0) + int(f)
        for (_, lab, _), u in zip(pred, used):
            self.per_label_pred[lab] = self.per_label_pred.get(lab, 0) + 1
            self.per_label_hit[lab] = self.per_label_hit.get(lab, 0) + int(u)

    def recall(self, labels: Iterable[str] | None = None) -> float:
        labs = list(self.labels if labels is None else labels)
        n = sum(self.per_label_truth.get(lab, 0) for lab in labs)
        return sum(self.per_label_found.get(lab, 0) for lab in labs) / n if n else float("nan")

    def precision(self, labels: Iterable[str] | None = None) -> float:
        labs = list(self.labels if labels is None else labels)
        n = sum(self.per_label_pred.get(lab, 0) for lab in labs)
        return sum(self.per_label_hit.get(lab, 0) for lab in labs) / n if n else float("nan")

    def summary(self) -> dict[str, object]:
        """Recall per label and over ``labels``; precision and boxes per photo over all boxes."""
        every = sorted(set(self.per_label_truth) | set(self.per_label_pred) | set(self.labels))
        return {
            "photos": self.photos,
            "iou": self.iou,
            "recall": round(self.recall(), 4),
            "recall_labels": list(self.labels),
            "recall_per_label": {lab: round(self.recall([lab]), 4) for lab in every},
            "garments_per_label": {lab: self.per_label_truth.get(lab, 0) for lab in every},
            "precision": round(self.boxes and self.true_boxes / self.boxes, 4),
            "precision_per_label": {lab: round(self.precision([lab]), 4) for lab in every},
            "boxes_per_photo": round(self.boxes / max(self.photos, 1), 3),
        }

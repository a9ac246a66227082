"""Backbones: one forward pass per photo, shared by every stage that needs it.

A :class:`Backbone` turns photos into :class:`Encoding` objects: feature maps
(cropped to the photo's valid area, without batch padding), ImageNet logits
when the model has that head, and a global embedding when the model computes
one itself (CLIP-like models). Intent, detection and embedding all read the
same encodings, so the backbone runs once per photo and input size.
"""

from __future__ import annotations

import abc
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..imaging import Photo
from .preprocess import PreprocessCfg, pack_resized, resize_photo


@dataclass
class Encoding:
    """The result of one backbone pass over one photo.

    ``features`` maps a stride name (``"s8"``, ``"s16"``, ``"s32"``) to a
    (C, h, w) tensor covering exactly the photo (no padding); ``input_hw`` is
    the photo's size in model-input pixels. ``logits`` are ImageNet logits
    (pooled over the photo) when the backbone has that head; ``embedding`` is
    the model's own global vector when it computes one.
    """

    photo: Photo
    input_hw: tuple[int, int]
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    embedding: torch.Tensor | None = None


class Backbone(abc.ABC):
    """A pretrained image model with its own preprocessing."""

    name: str
    preprocess: PreprocessCfg
    #: Dimension of the global descriptor the embed stage builds from it.
    feature_dim: int
    #: Whether :attr:`Encoding.logits` holds ImageNet-1k logits.
    has_imagenet_head: bool = False

    @abc.abstractmethod
    def encode(self, photos: Sequence[Photo], *, input_size: int | None = None) -> list[Encoding]:
        """Run the model over ``photos`` (batched) and return one encoding each."""

    def torch_module(self) -> torch.nn.Module | None:
        """The underlying torch module, for training heads or exporting."""
        return None


class TorchConvBackbone(Backbone):
    """A convolutional torch model with ``forward_features`` and ``classify``.

    Photos are resized on a small thread pool while the model runs (OpenCV
    releases the GIL), then packed into letterboxed batches of ``batch_size``.
    """

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        preprocess: PreprocessCfg,
        *,
        has_imagenet_head: bool,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        self.name = name
        self.module = module.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.preprocess = preprocess
        self.feature_dim = int(getattr(module, "num_features"))
        self.has_imagenet_head = has_imagenet_head
        self.batch_size = batch_size
        self._pool = ThreadPoolExecutor(max_workers=threads or 2, thread_name_prefix="shoplens-resize")
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads

    def torch_module(self) -> torch.nn.Module:
        return self.module

    def encode(self, photos: Sequence[Photo], *, input_size: int | None = None) -> list[Encoding]:
        """Run the model over ``photos`` (batched) and return one encoding each."""

    def torch_module(self) -> torch.nn.Module | None:
        """The underlying torch module, for training heads or exporting."""
        return None


class TorchConvBackbone(Backbone):
    """A convolutional torch model with ``forward_features`` and ``classify``.

    Photos are resized on a small thread pool while the model runs (OpenCV
    releases the GIL), then packed into letterboxed batches of ``batch_size``.
    """

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        preprocess: PreprocessCfg,
        *,
        has_imagenet_head: bool,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        self.name = name
        self.module = module.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.preprocess = preprocess
        self.feature_dim = int(getattr(module, "num_features"))
        self.has_imagenet_head = has_imagenet_head
        self.batch_size = batch_size
        self._pool = ThreadPoolExecutor(max_workers=threads or 2, thread_name_prefix="shoplens-resize")
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads

    def torch_module(self) -> torch.nn.Module:
        return self.module

    def _chunks(self, photos: Sequence[Photo], cfg: PreprocessCfg) -> Iterator[tuple[Sequence[Photo], list[np.ndarray]]]:
        # Resize the next chunk while the model runs on the current one.
        starts = range(0, len(photos), self.batch_size)
        futures = [self._pool.map(lambda p: resize_photo(p.pixels, cfg), photos[s : s + self.batch_size]) for s in starts[:1]]
        for i, s in enumerate(starts):
            chunk = photos[s : s + self.batch_size]
            resized = list(futures[i])
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                futures.append(self._pool.map(lambda p: resize_photo(p.pixels, cfg), photos[nxt : nxt + self.batch_size]))
            yield chunk, resized

    def encode(self, photos: Sequence[Photo], *, input_size: int | None = None) -> list[Encoding]:
        cfg = self.preprocess if input_size is None else self.preprocess.with_size(input_size)
        out: list[Encoding] = []
        # Executor.map submits every resize at once: later chunks are resized
        # while the model runs on earlier ones (OpenCV releases the GIL).
        resized_all = self._pool.map(lambda p: resize_photo(p.pixels, cfg), photos)
        for start in range(0, len(photos), self.batch_size):
            chunk = photos[start : start + self.batch_size]
            resized = [next(resized_all) for _ in chunk]
            batch, valid = pack_resized(resized, cfg)
            with self._lock, torch.inference_mode():
                feats = self.module.forward_features(batch)  # type: ignore[operator]
                pooled = _masked_mean(feats["s32"], valid, batch.shape[-2:])
                logits = self.module.classify(pooled) if self.has_imagenet_head else None  # type: ignore[operator]
            for i, photo in enumerate(chunk):
                h, w = int(valid[i, 0]), int(valid[i, 1])
                maps = {k: _crop_map(v[i], h, w, batch.shape[-2:]) for k, v in feats.items()}
                out.append(
                    Encoding(
                        photo=photo,
                        input_hw=(h, w),
                        features=maps,
                        logits=None if logits is None else logits[i],
                    )
                )
        return out


def _cells(n: int, total: int, cells: int) -> int:
    """Feature-map cells that overlap ``n`` valid input pixels of ``total``."""
    return max(1, min(cells, -(-n * cells // total)))


def _crop_map(fmap: torch.Tensor, h: int, w: int, hw: torch.Size) -> torch.Tensor:
    ch = _cells(h, int(hw[0]), fmap.shape[-2])
    cw = _cells(w, int(hw[1]), fmap.shape[-1])
    return fmap[:, :ch, :cw]


def _masked_mean(fmap: torch.Tensor, valid: torch.Tensor, hw: torch.Size) -> torch.Tensor:
    """Average each map over its image's valid cells only (not the padding)."""
    n, _, gh, gw = fmap.shape
    mask = torch.zeros((n, 1, gh, gw), dtype=fmap.dtype)
    for i in range(n):
        mask[i, :, : _cells(int(valid[i, 0]), int(hw[0]), gh), : _cells(int(valid[i, 1]), int(hw[1]), gw)] = 1
    return (fmap * mask).sum((2, 3)) / mask.sum((2, 3))

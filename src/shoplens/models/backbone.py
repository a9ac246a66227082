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
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..imaging import Photo
from .preprocess import PreprocessCfg, resize_photo, to_tensor


@dataclass
class Encoding:
    """The result of one backbone pass over one photo.

    ``features`` maps a stride name (``"s8"``, ``"s16"``, ``"s32"``) to a
    (C, h, w) tensor of the photo alone (never padded); ``input_hw`` is the
    photo's size in model-input pixels. ``logits`` are ImageNet logits
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
    #: Name of a backbone whose stride-16 maps this one shares (its stride-32 stage alone
    #: differs, e.g. tuned by ``train-embedder``), or None: see :meth:`encode_from_trunk`.
    trunk: str | None = None

    @abc.abstractmethod
    def encode(self, photos: Sequence[Photo], *, input_size: int | None = None) -> list[Encoding]:
        """Run the model over ``photos`` (batched) and return one encoding each."""

    def encode_from_trunk(self, encodings: Sequence[Encoding]) -> list[Encoding]:
        """This model's encodings of the photos the :attr:`trunk`'s ``encodings`` are of (its stage alone runs)."""
        raise NotImplementedError(f"backbone {self.name!r} shares no trunk")

    def torch_module(self) -> torch.nn.Module | None:
        """The underlying torch module, for training heads or exporting."""
        return None


class TorchConvBackbone(Backbone):
    """A convolutional torch model with ``forward_features`` and ``classify``.

    After :meth:`share_trunk`, :meth:`encode_from_trunk` runs only the
    stride-32 stage over the trunk's encodings (a quarter of a pass at 224 px).
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
        self._infer: torch.nn.Module | None = None  # built by the first torch forward pass
        self.preprocess = preprocess
        self.feature_dim = int(module.num_features)  # type: ignore[arg-type]
        self.has_imagenet_head = has_imagenet_head
        self.batch_size = batch_size
        self._pool = ThreadPoolExecutor(max_workers=threads or 2, thread_name_prefix="shoplens-resize")
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads
        self._stage: torch.nn.Module | None = None
        #: Where the forward passes run (:meth:`to_device`); encodings always come back on the CPU.
        self.device = torch.device("cpu")

    def to_device(self, device: str) -> TorchConvBackbone:
        """Run this backbone's forward passes on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"`` …); returns it.

        TF32 stays off, so a GPU computes in f32 as the CPU does: a store
        indexed on the GPU is searched on a CPU with the same encodings up to
        float noise.
        """
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        with self._lock:
            if self._infer is not None:
                self._infer = self._infer.to(self.device)
            if self._stage is not None:
                self._stage = self._stage.to(self.device)
        return self

    def torch_module(self) -> torch.nn.Module:
        return self.module

    def encode(self, photos: Sequence[Photo], *, input_size: int | None = None) -> list[Encoding]:
        cfg = self.preprocess if input_size is None else self.preprocess.with_size(input_size)
        # Resizing runs on the thread pool (OpenCV releases the GIL); photos
        # are batched with others of the same input shape, so no padding ever
        # touches a photo and its encoding does not depend on its batch.
        # One photo (a search) is resized here: a hand-off to the pool costs more.
        if len(photos) == 1:
            resized = [resize_photo(photos[0].pixels, cfg, photos[0].size)]
        else:
            resized = list(self._pool.map(lambda p: resize_photo(p.pixels, cfg, p.size), photos))
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, r in enumerate(resized):
            groups[(r.shape[0], r.shape[1])].append(i)
        out: list[Encoding | None] = [None] * len(photos)
        for shape, members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                batch = self.make_batch([resized[i] for i in chunk], cfg)
                feats, logits = self.forward(batch)
                for j, i in enumerate(chunk):
                    out[i] = Encoding(
                        photo=photos[i],
                        input_hw=shape,
                        features={k: v[j] for k, v in feats.items()},
                        logits=None if logits is None else logits[j],
                    )
        return [e for e in out if e is not None]

    def share_trunk(self, trunk: str, stage: torch.nn.Module) -> None:
        """Declare that this model is ``trunk``'s up to its stride-16 maps, then ``stage`` (s16 map in, s32 map out)."""
        self.trunk = trunk
        self._stage = stage.eval()

    def encode_from_trunk(self, encodings: Sequence[Encoding]) -> list[Encoding]:
        if self._stage is None:
            return super().encode_from_trunk(encodings)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, e in enumerate(encodings):
            groups[tuple(e.features["s16"].shape)].append(i)
        out: list[Encoding | None] = [None] * len(encodings)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                s32 = self.run_stage(torch.stack([encodings[i].features["s16"] for i in chunk]))
                for j, i in enumerate(chunk):
                    e = encodings[i]
                    features = {k: v for k, v in e.features.items() if k != "s32"}
                    out[i] = Encoding(photo=e.photo, input_hw=e.input_hw, features={**features, "s32": s32[j]})
        return [e for e in out if e is not None]

    def run_stage(self, s16: torch.Tensor) -> torch.Tensor:
        """The stride-32 stage over a batch of stride-16 maps (see :meth:`share_trunk`)."""
        assert self._stage is not None
        with self._lock, torch.inference_mode():
            x = s16.float().to(self.device).contiguous(memory_format=torch.channels_last)
            return self._stage.to(self.device)(x).cpu()

    def make_batch(self, resized: Sequence[np.ndarray], cfg: PreprocessCfg) -> torch.Tensor:
        """One normalised NCHW batch of same-shaped resized photos, in the layout :meth:`forward` wants."""
        return to_tensor(resized, cfg)  # NHWC in memory: channels-last for free

    def forward(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Feature maps and ImageNet logits (or ``None``) of one normalised NCHW batch."""
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        with self._lock, torch.inference_mode():
            model = self._inference_module()
            feats = model.forward_features(batch)  # type: ignore[operator]
            logits = model.classify(feats["s32"].mean((2, 3))) if self.has_imagenet_head else None  # type: ignore[operator]
        if self.device.type != "cpu":
            feats = {k: v.cpu() for k, v in feats.items()}
            logits = None if logits is None else logits.cpu()
        return feats, logits

    def _inference_module(self) -> torch.nn.Module:
        """The module forward passes run on (call under ``self._lock``).

        A copy with batch norms folded into the convolutions when the model
        offers one (``fused()``); ``module`` is left as built. Made on first
        use, so a backbone whose passes run elsewhere (ONNX Runtime, OpenVINO) never
        holds the copy.
        """
        if self._infer is None:
            fused = getattr(self.module, "fused", None)
            self._infer = fused().to(memory_format=torch.channels_last) if callable(fused) else self.module
            self._infer = self._infer.to(self.device)
        return self._infer

"""ONNX Runtime for the convolutional backbones: the same encodings, faster on CPU.

:func:`to_onnx` exports a :class:`TorchConvBackbone` once (batch, height and
width dynamic) into a cache folder (``$SHOPLENS_CACHE/onnx``, default
``~/.cache/shoplens/onnx``), keyed by a fingerprint of the weights, and runs
it with ONNX Runtime. Inputs whose sides are not multiples of the model's
total stride (32) go through the torch module instead: the exported graph
pads "SAME" convolutions for inputs on that grid only (letterboxed and
224-px inputs always are).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._deps import import_optional
from ..errors import ConfigError
from ..imaging import Photo
from .backbone import Backbone, TorchConvBackbone
from .efficientnet_lite import Conv2dSame
from .preprocess import PreprocessCfg, resize_photo, to_nchw, to_tensor

log = logging.getLogger(__name__)
#: Says when a model is prepared for its runtime, a few seconds that happen once per model and
#: cache folder: the command line shows this logger's records on stderr at every verbosity.
prepare_log = logging.getLogger("shoplens.prepare")

#: Bump when the exported graph changes, so cached exports are redone.
EXPORT_VERSION = 1
#: Input sides must be multiples of this for the exported graph (total stride).
GRID = 32
_FEATURES = ("s8", "s16", "s32")


class _Exported(nn.Module):
    """The graph that is exported: feature maps, then ImageNet logits when the model has that head."""

    def __init__(self, module: nn.Module, has_imagenet_head: bool) -> None:
        super().__init__()
        self.module = module
        self.has_imagenet_head = has_imagenet_head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.module.forward_features(x)  # type: ignore[operator]
        out = tuple(feats[k] for k in _FEATURES)
        if self.has_imagenet_head:
            out = out + (self.module.classify(feats["s32"].mean((2, 3))),)  # type: ignore[operator]
        return out


def cache_dir() -> Path:
    """Where exported models are kept: ``$SHOPLENS_CACHE/onnx`` or ``~/.cache/shoplens/onnx``."""
    root = os.environ.get("SHOPLENS_CACHE") or Path.home() / ".cache" / "shoplens"
    return Path(root) / "onnx"


def fingerprint(module: nn.Module) -> str:
    """A hash of the weights, the torch version and the export version."""
    h = hashlib.sha1(f"{EXPORT_VERSION}:{torch.__version__}".encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def export_onnx(module: nn.Module, path: str | Path, *, has_imagenet_head: bool) -> Path:
    """Export ``module`` (``forward_features`` / ``classify``) to ``path`` with dynamic batch and size."""
    model = copy.deepcopy(module).eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    for m in model.modules():
        if isinstance(m, Conv2dSame):
            m.static_pad = True
    names = list(_FEATURES) + (["logits"] if has_imagenet_head else [])
    axes: dict[str, dict[int, str]] = {"pixels": {0: "batch", 2: "height", 3: "width"}}
    for n in _FEATURES:
        axes[n] = {0: "batch", 2: f"{n}_h", 3: f"{n}_w"}
    if has_imagenet_head:
        axes["logits"] = {0: "batch"}
    return export_graph(_Exported(model, has_imagenet_head), (torch.zeros(1, 3, 224, 224),), path,
                        input_names=["pixels"], output_names=names, dynamic_axes=axes)


def export_stage(stage: nn.Module, path: str | Path) -> Path:
    """Export a stride-32 stage (``s16`` map in, ``s32`` map out; batch and size dynamic) to ``path``."""
    model = copy.deepcopy(stage).eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    for m in model.modules():
        if isinstance(m, Conv2dSame):
            m.static_pad = True
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    axes = {"s16": {0: "batch", 2: "s16_h", 3: "s16_w"}, "s32": {0: "batch", 2: "s32_h", 3: "s32_w"}}
    return export_graph(model, (torch.zeros(1, channels, 14, 14),), path, input_names=["s16"], output_names=["s32"],
                        dynamic_axes=axes)


def export_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> Path:
    """``torch.onnx.export`` of ``module`` written atomically to ``path`` (opset 17, the TorchScript exporter)."""
    path = Path(path)
    name = path.stem.rsplit("-", 1)[0]  # the file's name less the weights' fingerprint
    prepare_log.info("preparing the model (once): %s, cached in %s …", name, path.parent)
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, tmp, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    prepare_log.info("model %s ready (%.1f s; later runs reuse it)", name, time.perf_counter() - start)
    return path


def cpu_session(path: str | Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session over ``path``: all graph optimisations, ``threads`` intra-op threads (0: ORT's default)."""
    ort = import_optional("onnxruntime", "onnxruntime", "onnx", "the ONNX runtime (runtime.engine = 'onnx')")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # Idle threads sleep instead of spinning: decoding and the other
    # stages share the same few cores with inference.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxConvBackbone(TorchConvBackbone):
    """A :class:`TorchConvBackbone` whose forward pass runs in ONNX Runtime.

    Preprocessing, batching by shape and the encodings are those of the torch
    backbone; the torch module stays available (training heads, exports, and
    inputs off the 32-px grid).
    """

    #: The runtime, as ``runtime.engine`` names it.
    runtime_name = "onnx"

    def __init__(self, base: TorchConvBackbone, *, threads: int = 0, model_path: str | Path | None = None) -> None:
        super().__init__(
            base.name, base.module, base.preprocess, has_imagenet_head=base.has_imagenet_head, batch_size=base.batch_size
        )
        if model_path is None:
            model_path = cache_dir() / f"{base.name}-{fingerprint(base.module)}.onnx"
        self.model_path = Path(model_path)
        if not self.model_path.exists():
            log.info("exporting %s to ONNX: %s", base.name, self.model_path)
            export_onnx(base.module, self.model_path, has_imagenet_head=base.has_imagenet_head)
        self._threads = threads
        self._session: Any = self.open_session(self.model_path)
        self._stage_session: Any = None

    def open_session(self, path: Path) -> Any:
        """A session over the exported graph at ``path``: anything with ONNX Runtime's ``run(None, feed)``."""
        return cpu_session(path, self._threads)

    def share_trunk(self, trunk: str, stage: nn.Module) -> None:
        super().share_trunk(trunk, stage)
        path = cache_dir() / f"{self.name}-stage-{fingerprint(stage)}.onnx"
        try:
            if not path.exists():
                log.info("exporting the stride-32 stage of %s to ONNX: %s", self.name, path)
                export_stage(stage, path)
            self._stage_session = self.open_session(path)
        except Exception as err:  # noqa: BLE001 - export/runtime errors have no common type; torch runs the stage then
            log.warning("the stride-32 stage of %s runs in torch: ONNX export or %s session failed (%s)", self.name,
                        self.runtime_name, err)

    def run_stage(self, s16: torch.Tensor) -> torch.Tensor:
        h, w = s16.shape[-2:]
        if self._stage_session is None or h % 2 or w % 2:  # off the grid the exported "SAME" padding was fixed for
            return super().run_stage(s16)
        maps = np.ascontiguousarray(s16.numpy(), dtype=np.float32)
        return torch.from_numpy(self._stage_session.run(None, {"s16": maps})[0])

    def make_batch(self, resized: Sequence[np.ndarray], cfg: PreprocessCfg) -> torch.Tensor:
        return torch.from_numpy(to_nchw(resized, cfg))  # contiguous NCHW: no copy before the run

    def forward(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        h, w = batch.shape[-2:]
        if h % GRID or w % GRID:
            return super().forward(batch)
        pixels = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        outs = self._session.run(None, {"pixels": pixels})
        feats = {k: torch.from_numpy(v) for k, v in zip(_FEATURES, outs)}
        logits = torch.from_numpy(outs[3]) if self.has_imagenet_head else None
        return feats, logits


def quantize_int8(backbone: OnnxConvBackbone, calibration: Sequence[Photo], path: str | Path, *, input_size: int | None = None) -> Path:
    """Write an int8 (static, QDQ, per-channel weights) copy of ``backbone``'s graph to ``path``.

    Activation ranges are calibrated on ``calibration`` photos, preprocessed as
    the backbone does; use photos like those the model will see (a few dozen
    catalogue photos). Run it with ``OnnxConvBackbone(base, model_path=path)``.
    Not a configured runtime: it loses some accuracy (docs/benchmarks.md,
    "Indexing throughput", states how much on the grocery photos).
    """
    import_optional("onnxruntime", "onnxruntime", "onnx", "int8 quantisation")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cfg = backbone.preprocess if input_size is None else backbone.preprocess.with_size(input_size)
    inputs = [to_tensor([resize_photo(p.pixels, cfg, p.size)], cfg).contiguous().numpy() for p in calibration]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {"pixels": x}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(backbone.model_path), str(pre))
        quantize_static(
            str(pre),
            str(path),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return path


def to_onnx(backbone: Backbone, *, threads: int = 0) -> OnnxConvBackbone:
    """Run ``backbone`` in ONNX Runtime; only convolutional torch backbones can be."""
    if isinstance(backbone, OnnxConvBackbone):
        return backbone
    return OnnxConvBackbone(exportable(backbone, "onnx"), threads=threads)


def exportable(backbone: Backbone, runtime: str) -> TorchConvBackbone:
    """``backbone`` if ``runtime`` (an exported-graph runtime) can run it: only convolutional torch backbones export."""
    if not isinstance(backbone, TorchConvBackbone):
        raise ConfigError(
            f"runtime {runtime!r} supports the convolutional backbones (efficientnet_lite*), not {backbone.name!r}; "
            "use runtime.engine = 'torch' for it"
        )
    return backbone

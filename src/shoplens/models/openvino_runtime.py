"""OpenVINO for the convolutional backbones: the ONNX export, compiled for the CPU.

The graph is the one :mod:`shoplens.models.onnx_runtime` exports and caches;
only the runtime differs. OpenVINO's CPU plugin runs EfficientNet-Lite's
depthwise convolutions faster than ONNX Runtime (docs/benchmarks.md, "Speed":
1.3-1.5x at 224 px, about 1.8x at 320 px on the 2-core reference machine)
and, with the precision pinned to f32, gives the same feature maps (tested
against torch and ONNX Runtime on real photos), so a store indexed with one
runtime is searched with another without re-embedding.

OpenVINO's default on CPUs with AMX or AVX512-BF16 is bfloat16 inference,
which changes the descriptors: :func:`compile_cpu` asks for f32 explicitly.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import import_optional
from ..errors import ConfigError
from .backbone import Backbone, TorchConvBackbone
from .onnx_runtime import OnnxConvBackbone

log = logging.getLogger(__name__)

_core: Any = None


def _openvino() -> Any:
    return import_optional("openvino", "openvino", "openvino", "the OpenVINO runtime (runtime.engine = 'openvino')")


def core() -> Any:
    """The process's OpenVINO ``Core`` (one is enough; it holds the loaded device plugins)."""
    global _core
    if _core is None:
        _core = _openvino().Core()
    return _core


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU, run with ONNX Runtime's ``run(None, feed)`` call.

    A compiled model takes one inference at a time per *infer request*: each
    caller borrows an idle request (a new one when all are busy), so
    concurrent searches never share one. Outputs are copied out of the
    request before it is given back.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",  # not bf16: the descriptors must not depend on the runtime
            "PERFORMANCE_HINT": "LATENCY",  # one stream over all the threads: a search is one photo
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.path = Path(path)
        self._compiled = core().compile_model(str(self.path), "CPU", config)
        self._outputs = list(self._compiled.outputs)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self, output_names: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if output_names is not None:
            raise ValueError("OpenVinoSession.run returns every output; pass None")
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            # share_inputs: the arrays are read in place (the call blocks until done);
            # outputs are copies, the request's own buffers are reused by the next call.
            result = request.infer(dict(feed), share_inputs=True, share_outputs=False)
            return [result[o] for o in self._outputs]
        finally:
            self._idle.put(request)


class OpenVinoConvBackbone(OnnxConvBackbone):
    """A :class:`TorchConvBackbone` whose forward pass runs in OpenVINO (the same exported graph as ONNX Runtime's)."""

    runtime_name = "openvino"

    def open_session(self, path: Path) -> OpenVinoSession:
        return OpenVinoSession(path, self._threads)


def to_openvino(backbone: Backbone, *, threads: int = 0) -> OpenVinoConvBackbone:
    """Run ``backbone`` in OpenVINO; only convolutional torch backbones can be."""
    if isinstance(backbone, OpenVinoConvBackbone):
        return backbone
    if not isinstance(backbone, TorchConvBackbone):
        raise ConfigError(
            f"runtime 'openvino' supports the convolutional backbones (efficientnet_lite*), not {backbone.name!r}; "
            "use runtime.engine = 'torch' for it"
        )
    _openvino()  # a clear MissingDependencyError before any export
    if isinstance(backbone, OnnxConvBackbone):
        return OpenVinoConvBackbone(backbone, threads=threads, model_path=backbone.model_path)
    return OpenVinoConvBackbone(backbone, threads=threads)

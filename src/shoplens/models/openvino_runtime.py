"""OpenVINO for the convolutional backbones: the ONNX export, compiled for the CPU.

The graph is the one :mod:`shoplens.models.onnx_runtime` exports and caches;
only the runtime differs. OpenVINO's CPU plugin runs EfficientNet-Lite's
depthwise convolutions faster than ONNX Runtime (docs/benchmarks.md, "Speed":
1.3-1.5x at 224 px, about 1.8x at 320 px on the 2-core reference machine)
and, with the precision pinned to f32, gives the same feature maps (tested
against torch and ONNX Runtime on real photos), so a store indexed with one
runtime is searched with another without re-embedding.

OpenVINO's default on CPUs with AMX or AVX512-BF16 is bfloat16 inference,
which changes the descriptors: sessions ask for f32 unless ``runtime.precision
= "bf16"`` asks for bfloat16 (faster; what it costs in accuracy is measured in
docs/benchmarks.md). A CPU without bfloat16 arithmetic runs f32 whatever is
asked; the precision in use is logged.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import import_optional
from .backbone import Backbone, TorchConvBackbone
from .onnx_runtime import OnnxConvBackbone, cache_dir, exportable

log = logging.getLogger(__name__)

_core: Any = None
_core_lock = threading.Lock()


def _openvino() -> Any:
    return import_optional("openvino", "openvino", "openvino", "the OpenVINO runtime (runtime.engine = 'openvino')")


def core() -> Any:
    """The process's OpenVINO ``Core`` (one is enough; it holds the loaded device plugins)."""
    global _core
    with _core_lock:  # models are built lazily, possibly by two searches at once
        if _core is None:
            _core = _openvino().Core()
    return _core


def compiled_cache_dir() -> Path | None:
    """Where OpenVINO keeps compiled models (``$SHOPLENS_CACHE/openvino``), or ``None`` when it cannot be written.

    A cached blob compiles in about a third of the time (0.10-0.12 s instead of
    0.30-0.34 s for Lite0 here), which a one-shot CLI command pays per model.
    """
    path = cache_dir().parent / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU, run with ONNX Runtime's ``run(None, feed)`` call.

    A compiled model takes one inference at a time per *infer request*: each
    caller borrows an idle request (a new one when all are busy), so
    concurrent searches never share one. Outputs are copied out of the
    request before it is given back.
    """

    def __init__(self, path: str | Path, threads: int = 0, precision: str = "f32") -> None:
        config: dict[str, Any] = {
            # f32 unless asked: OpenVINO's own default on AMX CPUs, bf16, changes the descriptors.
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",  # one stream over all the threads: a search is one photo
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        blobs = compiled_cache_dir()
        if blobs is not None:
            config["CACHE_DIR"] = str(blobs)
        self.path = Path(path)
        self._compiled = core().compile_model(str(self.path), "CPU", config)
        #: The precision the CPU plugin computes in ("f32" where bf16 was asked of a CPU without it).
        self.precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # an ov.Type
        if self.precision != precision:
            log.warning("%s: OpenVINO computes in %s on this CPU, not %s", self.path.name, self.precision, precision)
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

    def __init__(self, base: TorchConvBackbone, *, threads: int = 0, model_path: str | Path | None = None,
                 precision: str = "f32") -> None:
        self.precision = precision  # read by open_session, which the base class calls
        super().__init__(base, threads=threads, model_path=model_path)

    def open_session(self, path: Path) -> OpenVinoSession:
        return OpenVinoSession(path, self._threads, self.precision)


def to_openvino(backbone: Backbone, *, threads: int = 0, precision: str = "f32") -> OpenVinoConvBackbone:
    """Run ``backbone`` in OpenVINO (``precision``: f32 or bf16); only convolutional torch backbones can be."""
    if isinstance(backbone, OpenVinoConvBackbone) and backbone.precision == precision:
        return backbone
    base = exportable(backbone, "openvino")
    _openvino()  # a clear MissingDependencyError before any export
    model_path = base.model_path if isinstance(base, OnnxConvBackbone) else None
    return OpenVinoConvBackbone(base, threads=threads, model_path=model_path, precision=precision)

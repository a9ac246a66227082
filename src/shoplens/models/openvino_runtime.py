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
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import import_optional
from ..errors import ConfigError
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


#: Single-photo passes of one input shape a session sees before it compiles that shape on its own.
PROMOTE_AFTER = 4
#: Single-photo passes after which a session halves its counts of the shapes seen.
DECAY_EVERY = 64

#: A pass whose inputs hold more values than this (more than 8 photos at 224 px: indexing's batches,
#: never a search's garment crops) runs on a compilation of its own, given up once idle.
LARGE_PASS_VALUES = 8 * 3 * 224 * 224
#: Seconds without a large pass after which its compilation, and the memory it holds, is given up.
LARGE_IDLE_S = 10.0

#: A feed's input shapes: ((name, shape), ...).
_Shapes = tuple[tuple[str, tuple[int, ...]], ...]


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU, run with ONNX Runtime's ``run(None, feed)`` call.

    A compiled model takes one inference at a time per *infer request*: each
    caller borrows an idle request (a new one when all are busy), so
    concurrent searches never share one. Outputs are copied out of the
    request before it is given back.

    ``static_shapes``: how many single-photo input shapes get a compilation
    of their own. The graph is compiled for any input size, and OpenVINO
    re-plans every layer when the size differs from the last pass's: a search
    alternates sizes (the gate at 224 px, the 320-px descriptor, garment
    crops), so nearly every pass paid for it, about 1.2 ms of a 224-px pass
    (docs/decisions.md). The most frequent recent shapes, up to
    ``static_shapes`` of them, are compiled for that shape alone, in the
    background (see :meth:`_count`); each costs 27-40 MiB for
    EfficientNet-Lite0 (its own packed weights and buffers; the graph's
    constants are shared). The outputs are the same as the general
    compilation's, bit for bit.

    Large passes (more values than :data:`LARGE_PASS_VALUES`: indexing's
    batches) run on a compilation of their own, made when the first comes
    (from OpenVINO's blob cache: ~0.03 s) and given up after
    :data:`LARGE_IDLE_S` seconds without one. A compilation keeps the
    memory its largest pass needed: 700 MiB after batches of 32 photos at
    320 px, which a process that indexes and then searches (the server
    taking writes) held for good when they ran on the general compilation
    (docs/benchmarks.md, "Memory"). Same outputs, bit for bit.

    ``streams``: passes that run at once, each on its share of ``threads``
    (all cores when 0). One stream runs a pass over every thread, the
    fastest for one search at a time; a server running N searches at once
    runs them side by side on N streams of fewer threads each, which costs
    less CPU per pass than two passes contending for all the threads
    (docs/benchmarks.md, "Server"). Large passes always run on one stream
    (docs/decisions.md). The outputs are the same whatever the streams,
    bit for bit.
    """

    def __init__(self, path: str | Path, threads: int = 0, precision: str = "f32", static_shapes: int = 0,
                 streams: int = 1) -> None:
        if streams < 1:
            raise ConfigError(f"OpenVINO streams must be 1 or more, got {streams}")
        one_stream: dict[str, Any] = {
            # f32 unless asked: OpenVINO's own default on AMX CPUs, bf16, changes the descriptors.
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",  # one stream over all the threads: a search is one photo
        }
        if threads:
            one_stream["INFERENCE_NUM_THREADS"] = threads  # of all the streams together
        #: Passes that run at once, each on its share of the threads (one per search slot of a server).
        self.streams = streams
        # Streams unpinned: a server's own threads (SIFT, decoding, HTTP) share the cores with them, and a
        # stream pinned to a core the other search's SIFT holds waits instead of moving (docs/benchmarks.md).
        config = one_stream | ({"NUM_STREAMS": streams, "ENABLE_CPU_PINNING": False} if streams > 1 else {})
        self._config = dict(config)  # fixed-shape compilations skip the blob cache: a cached blob holds its own weights
        blobs = compiled_cache_dir()
        cache = {} if blobs is None else {"CACHE_DIR": str(blobs)}
        self._cached_config = config | cache
        #: Indexing's batches run on one stream over all the threads (docs/decisions.md).
        self._large_config = one_stream | cache
        self.path = Path(path)
        self._general = self._compile_any_size()
        #: The precision the CPU plugin computes in ("f32" where bf16 was asked of a CPU without it).
        self.precision = self._general.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # an ov.Type
        if self.precision != precision:
            log.warning("%s: OpenVINO computes in %s on this CPU, not %s", self.path.name, self.precision, precision)
        self.static_shapes = static_shapes
        self._seen: Counter[_Shapes] = Counter()
        self._passes = 0
        #: Shapes compiled on their own: the compilation, once done (None where it failed).
        self._promoted: dict[_Shapes, Future[_Compiled | None]] = {}
        self._lock = threading.Lock()
        self._compiler: ThreadPoolExecutor | None = None
        self._model: Any = None  # the graph read once, cloned for each fixed shape (its constants are shared)
        #: The large passes' compilation while they come; passes running on it; when the last ended.
        self._large: _Compiled | None = None
        self._large_busy = 0
        self._large_last = 0.0
        self._large_lock = threading.Lock()
        self._release_timer: threading.Timer | None = None

    def run(self, output_names: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if output_names is not None:
            raise ValueError("OpenVinoSession.run returns every output; pass None")
        if sum(a.size for a in feed.values()) > LARGE_PASS_VALUES:
            return self._run_large(feed)
        fixed = self._fixed_for(feed) if self.static_shapes else None
        return (fixed or self._general).run(feed)

    def _compile_any_size(self, config: dict[str, Any] | None = None) -> _Compiled:
        """The graph compiled for any input size (through OpenVINO's blob cache where it can be written)."""
        return _Compiled(core().compile_model(str(self.path), "CPU", config or self._cached_config))

    def _run_large(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._large_lock:
            if self._large is None:
                self._large = self._compile_any_size(self._large_config)
            large = self._large
            self._large_busy += 1
        try:
            return large.run(feed)
        finally:
            with self._large_lock:
                self._large_busy -= 1
                self._large_last = time.monotonic()
                if self._release_timer is None:
                    self._release_after(LARGE_IDLE_S)

    def _release_after(self, seconds: float) -> None:
        """Check in ``seconds`` whether the large passes' compilation can be given up. Called under its lock."""
        timer = threading.Timer(seconds, self._release_large)
        timer.daemon = True
        self._release_timer = timer
        timer.start()

    def _release_large(self) -> None:
        with self._large_lock:
            self._release_timer = None
            if self._large is None:
                return
            idle = time.monotonic() - self._large_last
            if self._large_busy or idle < LARGE_IDLE_S:
                self._release_after(LARGE_IDLE_S if self._large_busy else LARGE_IDLE_S - idle)
                return
            self._large = None  # a pass that still holds it keeps it until done
        log.debug("%s: the large passes' compilation is given up after %.0f s idle", self.path.name, idle)

    @property
    def large_compiled(self) -> bool:
        """Whether the large passes' compilation is held now."""
        return self._large is not None

    def _fixed_for(self, feed: Mapping[str, np.ndarray]) -> _Compiled | None:
        """The compilation for ``feed``'s shapes when it has one; counts single-photo shapes towards one."""
        shapes = tuple((name, tuple(a.shape)) for name, a in feed.items())
        if any(shape[0] != 1 for _, shape in shapes):
            return None  # batches (indexing) vary too much in size to be worth a compilation each
        with self._lock:
            self._count(shapes)
            future = self._promoted.get(shapes)
        return future.result() if future is not None and future.done() else None

    def _count(self, shapes: _Shapes) -> None:
        """Count a single-photo pass of ``shapes``; promote the shape when it has become one of the most frequent.

        Counts halve every :data:`DECAY_EVERY` passes, so they follow the
        recent traffic. A shape seen :data:`PROMOTE_AFTER` times takes a free
        place, or the place of the least frequent promoted shape once it is
        seen more than twice as often (no back and forth between shapes
        about as frequent). Called under the lock.
        """
        self._passes += 1
        if self._passes % DECAY_EVERY == 0:
            self._seen = Counter({k: n // 2 for k, n in self._seen.items() if n > 1})
        self._seen[shapes] += 1
        seen = self._seen[shapes]
        if shapes in self._promoted or seen < PROMOTE_AFTER:
            return
        if len(self._promoted) >= self.static_shapes:
            weakest = min(self._promoted, key=lambda k: self._seen[k])
            if seen <= 2 * self._seen[weakest]:
                return
            del self._promoted[weakest]  # a search running its compilation keeps it until done
            log.debug("%s: input shape %s gives its compilation up to %s", self.path.name, weakest, shapes)
        if self._compiler is None:
            self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoplens-openvino-compile")
        self._promoted[shapes] = self._compiler.submit(self._compile_fixed, shapes)

    def _compile_fixed(self, shapes: _Shapes) -> _Compiled | None:
        try:
            if self._model is None:
                self._model = core().read_model(str(self.path))
            model = self._model.clone()
            model.reshape({name: list(shape) for name, shape in shapes})
            compiled = _Compiled(core().compile_model(model, "CPU", self._config))
        except Exception as err:  # noqa: BLE001 - the general compilation still runs this shape
            log.warning("%s: could not compile input shape %s on its own (%s)", self.path.name, shapes, err)
            return None
        log.debug("%s: input shape %s now has a compilation of its own", self.path.name, shapes)
        return compiled

    def wait_fixed(self) -> list[_Shapes]:
        """Wait for the shapes being compiled on their own; the shapes that have a compilation of their own."""
        with self._lock:
            promoted = dict(self._promoted)
        return sorted(shapes for shapes, future in promoted.items() if future.result() is not None)


class _Compiled:
    """A compiled model and its idle infer requests (lent one per caller, see :class:`OpenVinoSession`)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.outputs = list(compiled.outputs)
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            request = self.idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # share_inputs: the arrays are read in place (the call blocks until done);
            # outputs are copies, the request's own buffers are reused by the next call.
            result = request.infer(dict(feed), share_inputs=True, share_outputs=False)
            return [result[o] for o in self.outputs]
        finally:
            self.idle.put(request)


class OpenVinoConvBackbone(OnnxConvBackbone):
    """A :class:`TorchConvBackbone` whose forward pass runs in OpenVINO (the same exported graph as ONNX Runtime's)."""

    runtime_name = "openvino"

    def __init__(self, base: TorchConvBackbone, *, threads: int = 0, model_path: str | Path | None = None,
                 precision: str = "f32", static_shapes: int = 0, streams: int = 1) -> None:
        self.precision = precision  # read by open_session, which the base class calls
        self.static_shapes = static_shapes
        self.streams = streams
        super().__init__(base, threads=threads, model_path=model_path)

    def open_session(self, path: Path) -> OpenVinoSession:
        return OpenVinoSession(path, self._threads, self.precision, self.static_shapes, self.streams)


def to_openvino(backbone: Backbone, *, threads: int = 0, precision: str = "f32", static_shapes: int = 0,
                streams: int = 1) -> OpenVinoConvBackbone:
    """Run ``backbone`` in OpenVINO (``precision``: f32 or bf16); only convolutional torch backbones can be.

    ``static_shapes``: single-photo input shapes compiled on their own; ``streams``: passes run at once,
    sharing ``threads`` (see :class:`OpenVinoSession`).
    """
    if isinstance(backbone, OpenVinoConvBackbone) and \
            (backbone.precision, backbone.static_shapes, backbone.streams) == (precision, static_shapes, streams):
        return backbone
    base = exportable(backbone, "openvino")
    _openvino()  # a clear MissingDependencyError before any export
    model_path = base.model_path if isinstance(base, OnnxConvBackbone) else None
    return OpenVinoConvBackbone(base, threads=threads, model_path=model_path, precision=precision, static_shapes=static_shapes,
                                streams=streams)

"""The backbone registry: names -> entries -> models.

A name is either a registered entry (``efficientnet_lite0``) or a scheme with
a location (``open_clip:ViT-B-32/laion2b_s34b_b79k``, ``hf-hub:org/model``,
``local-dir:/path/to/model``). :func:`parse_model_name` is the one place that
splits names, and raises :class:`UnknownModelError` on anything it cannot use:
each scheme registers the parser of its location with :func:`register_scheme`,
and :func:`parse_source` reads the ``hf-hub:`` / ``local-dir:`` locations that
several schemes (and the detectors) share.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ..errors import ConfigError, UnknownModelError
from ..registry import Registry
from .backbone import Backbone
from .preprocess import PreprocessCfg

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """A registered backbone: how to build it and how to feed it."""

    name: str
    build: Callable[[ModelEntry, str], Backbone]
    preprocess: PreprocessCfg
    description: str = ""
    #: The pip extra that provides its dependencies, if any.
    extra: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    #: The scheme name an alias stands for (``hf-hub:openai/clip-vit-base-patch32``); None for a model of its own.
    target: str | None = None


class ParsedName(NamedTuple):
    scheme: str  # "" for a registered entry
    location: str
    #: The location as the scheme's parser read it (``location`` itself when it has none).
    target: Any = None


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's files are: a local directory or a Hugging Face Hub repository."""

    kind: Literal["local-dir", "hf-hub"]
    #: An absolute directory path, or a repository id (``org/name``).
    ref: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}" + (f"@{self.revision}" if self.revision else "")


# Hub repository ids: "org/name", letters, digits, "-", "_", "." (no "--" or ".." runs).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def parse_source(text: str, *, bare: Literal["hf-hub", "local-dir", None] = None) -> WeightsSource:
    """Read ``local-dir:/path`` or ``hf-hub:org/name[@revision]``.

    ``bare`` says how a location without either prefix is read: ``"hf-hub"``
    takes ``org/name`` as a repository and a path starting with ``/``, ``~`` or
    ``.`` as a directory; ``None`` refuses it. Directories are made absolute
    but not checked here (see :func:`resolve_local_dir`).
    """
    text = text.strip()
    kind, sep, rest = text.partition(":")
    if not (sep and kind in ("local-dir", "hf-hub")):
        if bare is None:
            raise UnknownModelError(f"expected 'local-dir:/path' or 'hf-hub:org/name', got {text!r}")
        kind, rest = ("local-dir" if bare == "local-dir" or text.startswith(("/", "~", ".")) else "hf-hub"), text
    if not rest:
        raise UnknownModelError(f"{text!r} has no location after '{kind}:'")
    if kind == "local-dir":
        return WeightsSource("local-dir", str(Path(rest).expanduser().absolute()))
    repo, _, revision = rest.partition("@")
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo:
        raise UnknownModelError(f"{repo!r} is not a Hugging Face Hub repository id (expected 'org/name')")
    return WeightsSource("hf-hub", repo, revision or None)


def resolve_local_dir(source: WeightsSource) -> Path:
    """The directory of a ``local-dir`` source; :class:`UnknownModelError` when it is not one."""
    path = Path(source.ref)
    if not path.is_dir():
        raise UnknownModelError(f"model directory {source.ref} does not exist or is not a directory")
    return path


_ENTRIES: Registry[ModelEntry] = Registry("model")
#: Scheme -> (location parser, builder(parsed location)) for names that carry their own location.
_SCHEMES: Registry[tuple[Callable[[str], Any], Callable[[Any], Backbone]]] = Registry("model scheme")


def register_model(entry: ModelEntry) -> ModelEntry:
    return _ENTRIES.add(entry.name, entry, entry.description)


def _same_preprocess(a: PreprocessCfg, b: PreprocessCfg) -> bool:
    """Equal up to float rounding (mean/std come from 0..1 values in JSON)."""
    close = all(math.isclose(x, y, rel_tol=1e-5) for x, y in zip(a.mean + a.std, b.mean + b.std))
    return close and (a.input_size, a.resize, a.interpolation, a.stride) == (
        b.input_size,
        b.resize,
        b.interpolation,
        b.stride,
    )


def register_alias(
    name: str,
    target: str,
    *,
    preprocess: PreprocessCfg,
    description: str,
    extra: str | None,
    tags: tuple[str, ...] = (),
) -> ModelEntry:
    """Register ``name`` for a scheme name, e.g. ``fashion-clip`` -> ``hf-hub:patrickjohncyh/fashion-clip``.

    ``preprocess`` states what the model's own files specify; the model built
    from them is authoritative, and a difference is logged as a warning.
    """
    parse_model_name(target)  # a bad target is a bug here, not at first use

    def build(entry: ModelEntry, _: str) -> Backbone:
        backbone = create_model(target)
        if not _same_preprocess(backbone.preprocess, entry.preprocess):
            logger.warning(
                "%s: %s specifies %s, not the registered %s", entry.name, target, backbone.preprocess, entry.preprocess
            )
        backbone.name = entry.name
        return backbone

    return register_model(
        ModelEntry(name, build, preprocess, f"{description} ({target})", extra, tuple(tags) + ("alias",), target)
    )


def register_scheme(
    scheme: str, builder: Callable[[Any], Backbone], *, parse: Callable[[str], Any] | None = None
) -> None:
    """Register ``scheme:LOCATION`` names.

    ``parse(location)`` validates the location when the name is parsed (raising
    :class:`UnknownModelError`) and returns what ``builder`` receives; without
    it the builder gets the location string.
    """
    _SCHEMES.add(scheme, (parse or (lambda location: location), builder))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``."""
    return _ENTRIES.names(pattern)


def list_schemes() -> list[str]:
    return _SCHEMES.names()


def parse_model_name(name: str) -> ParsedName:
    """Split ``name`` into (scheme, location, parsed location); the one place names are read.

    ``SCHEME:LOCATION`` for a registered scheme (its parser checks LOCATION),
    else a registered entry name; anything else is an :class:`UnknownModelError`.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError("a model name must be a non-empty string")
    name = name.strip()
    scheme, sep, location = name.partition(":")
    if sep and scheme in _SCHEMES:
        if not location:
            raise UnknownModelError(f"model name {name!r} has no location after '{scheme}:'")
        try:
            target = _SCHEMES.get(scheme)[0](location)
        except UnknownModelError as err:
            raise UnknownModelError(f"model name {name!r}: {err}") from None
        return ParsedName(scheme, location, target)
    if name in _ENTRIES:
        return ParsedName("", name, name)
    known = ", ".join(list_models()) or "none"
    schemes = ", ".join(f"{s}:..." for s in list_schemes())
    raise UnknownModelError(f"unknown model {name!r}; registered models: {known}; or one of {schemes}")


def get_entry(name: str) -> ModelEntry:
    parsed = parse_model_name(name)
    if parsed.scheme:
        raise UnknownModelError(f"{name!r} is not a registered entry")
    return _ENTRIES.get(parsed.location)


#: Engines a backbone can run on (``runtime.engine`` in the configuration).
RUNTIMES = ("auto", "torch", "onnx", "openvino")
#: Numeric precisions of the forward pass (``runtime.precision``); bf16 runs in OpenVINO only.
PRECISIONS = ("f32", "bf16")


def create_model(name: str, *, runtime: str = "torch", threads: int = 0, precision: str = "f32", static_shapes: int = 0,
                 streams: int = 1, device: str = "cpu") -> Backbone:
    """Build the backbone called ``name`` (see :func:`parse_model_name`).

    ``runtime``: ``"torch"`` (eager PyTorch), ``"onnx"`` (ONNX Runtime;
    convolutional backbones only), ``"openvino"`` (OpenVINO, the same exported
    graph) or ``"auto"`` (OpenVINO where it can run the backbone, else ONNX
    Runtime, else torch). ``threads``: CPU threads for inference, 0
    for the runtime's default; for torch it sets the process-wide
    ``torch.set_num_threads``. ``precision``: ``"f32"`` or ``"bf16"``
    (OpenVINO only: ``openvino`` or ``auto``). ``static_shapes``: how many
    single-photo input shapes OpenVINO compiles on their own once they recur
    (``runtime.static_shapes``; other runtimes ignore it). ``streams``: OpenVINO
    passes that run at once, sharing ``threads`` (one per search slot of a
    server; other runtimes ignore it). ``device``: where
    the forward passes run, ``"cpu"`` or a torch GPU device (``"cuda"``,
    ``"cuda:1"``): eager PyTorch there, whatever ``runtime`` says.
    """
    runtime, precision = _runtime_on(device, runtime, precision)
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "f32" and runtime not in ("openvino", "auto"):
        raise ConfigError(f"runtime.precision = {precision!r} runs in OpenVINO only: set runtime.engine to 'openvino' or 'auto', "
                          "or runtime.precision to 'f32'")
    if threads < 0:
        raise ConfigError(f"runtime threads must be 0 (default) or more, got {threads}")
    if static_shapes < 0:
        raise ConfigError(f"runtime.static_shapes must be 0 (off) or more, got {static_shapes}")
    if runtime in ("openvino", "auto"):
        _check_streams(streams, threads)
    parsed = parse_model_name(name)
    if parsed.scheme:
        backbone = _SCHEMES.get(parsed.scheme)[1](parsed.target)
    else:
        entry = _ENTRIES.get(parsed.location)
        backbone = entry.build(entry, entry.name)
    return _on_device(_in_runtime(backbone, runtime, threads, precision, static_shapes, streams), device)


def runtime_streams(streams: int, search_concurrency: int = 1, threads: int = 0) -> int:
    """The OpenVINO streams ``runtime.streams`` asks for in a process running ``search_concurrency`` searches at once.

    0 (auto): one stream per search run at once, at most one per thread
    (``threads``, or the cores this process may run on); one stream for a
    process running one search at a time, over all the threads.
    """
    if streams:
        return streams
    return max(1, min(search_concurrency, threads or _cores()))


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_streams(streams: int, threads: int) -> None:
    if streams < 1:
        raise ConfigError(f"OpenVINO streams must be 1 or more, got {streams}")
    if threads and streams > threads:
        raise ConfigError(f"{streams} OpenVINO streams cannot share runtime.threads = {threads}: give each stream a thread at least")


def pick_device(choice: str) -> str:
    """``choice`` as a device: ``"auto"`` is ``"cuda"`` where torch sees a GPU, else ``"cpu"``; others are checked."""
    if choice == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(choice)
    return choice


def _runtime_on(device: str, runtime: str, precision: str) -> tuple[str, str]:
    """The (runtime, precision) a backbone runs in on ``device`` (checked): a GPU runs eager PyTorch in f32."""
    check_device(device)
    return (runtime, precision) if device == "cpu" else ("torch", "f32")


def check_device(device: str) -> None:
    """``device`` is ``"cpu"`` or a GPU device torch sees; else a :class:`ConfigError` saying why."""
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise ConfigError(f"device must be 'cpu' or a CUDA device ('cuda', 'cuda:N'), got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__}): use --device cpu")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")


def _on_device(backbone: Backbone, device: str) -> Backbone:
    from .backbone import TorchConvBackbone

    if device == "cpu":
        return backbone
    if not isinstance(backbone, TorchConvBackbone):
        raise ConfigError(f"backbone {backbone.name!r} cannot run on {device!r}: only the convolutional backbones can")
    return backbone.to_device(device)


def create_tuned_model(
    shipped: Backbone, stage: nn.Module, name: str, *, runtime: str = "torch", threads: int = 0, precision: str = "f32",
    static_shapes: int = 0, streams: int = 1, device: str = "cpu",
) -> Backbone:
    """The backbone ``shipped`` with its stride-32 stage replaced by ``stage`` (tuned by
    ``train-embedder``, shoplens.embed.tail), called ``name``, in ``runtime``.

    It has no ImageNet head (the classifier was trained on the shipped stage);
    the ONNX export is cached by its weights like any other. ``shipped`` is
    left as it is (the tuned module is a copy).
    """
    from .backbone import TorchConvBackbone

    module = shipped.torch_module()
    if not isinstance(shipped, TorchConvBackbone) or not callable(getattr(module, "with_tail", None)):
        raise ConfigError(f"backbone {shipped.name!r} has no stride-32 stage to replace")
    built = TorchConvBackbone(name, module.with_tail(stage), shipped.preprocess, has_imagenet_head=False,  # type: ignore[union-attr,operator]
                              batch_size=shipped.batch_size)
    runtime, precision = _runtime_on(device, runtime, precision)
    if runtime in ("openvino", "auto"):
        _check_streams(streams, threads)
    tuned = _in_runtime(built, runtime, threads, precision, static_shapes, streams)
    if isinstance(tuned, TorchConvBackbone):
        # A photo the shipped backbone already encoded (the intent gate's pass) needs only the stage.
        tuned.share_trunk(shipped.name, copy.deepcopy(stage))
    return _on_device(tuned, device)


def _in_runtime(backbone: Backbone, runtime: str, threads: int, precision: str = "f32", static_shapes: int = 0,
                streams: int = 1) -> Backbone:
    if threads and runtime == "torch":
        import torch

        torch.set_num_threads(threads)
    if runtime == "onnx":
        from .onnx_runtime import to_onnx

        backbone = to_onnx(backbone, threads=threads)
    elif runtime == "openvino":
        from .openvino_runtime import to_openvino

        backbone = to_openvino(backbone, threads=threads, precision=precision, static_shapes=static_shapes, streams=streams)
    elif runtime == "auto":
        backbone = _fastest(backbone, threads, precision, static_shapes, streams)
    return backbone


def _fastest(backbone: Backbone, threads: int, precision: str = "f32", static_shapes: int = 0, streams: int = 1) -> Backbone:
    """``backbone`` in OpenVINO when it can run there, else in ONNX Runtime, else as it is.

    Both run the convolutional backbones several times faster than eager torch
    on a CPU with the same encodings, OpenVINO 1.3-1.8x faster than ONNX
    Runtime (docs/benchmarks.md, "Speed"). A failed export or session
    (the package missing, a read-only cache folder) is logged, not fatal;
    without OpenVINO, ``bf16`` falls back to f32 (with a warning).
    """
    from .backbone import TorchConvBackbone

    if not isinstance(backbone, TorchConvBackbone):
        return backbone
    from ..errors import MissingDependencyError
    from .onnx_runtime import to_onnx
    from .openvino_runtime import to_openvino

    try:
        return to_openvino(backbone, threads=threads, precision=precision, static_shapes=static_shapes, streams=streams)
    except MissingDependencyError as e:
        (logger.warning if precision != "f32" else logger.info)("%s: running %s in ONNX Runtime, f32", e, backbone.name)
    except Exception as e:  # noqa: BLE001 - an export or compile failure: ONNX Runtime may still run it
        logger.warning("OpenVINO cannot run %s (%s): trying ONNX Runtime, f32", backbone.name, e)
    try:
        return to_onnx(backbone, threads=threads)
    except Exception as e:  # noqa: BLE001 - any export or session failure leaves torch, which works
        logger.warning("ONNX Runtime unavailable for %s (%s): running it in torch", backbone.name, e)
        return backbone

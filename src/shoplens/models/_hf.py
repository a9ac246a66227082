"""Models stored as Hugging Face repositories or local directories.

``hf-hub:org/name[@revision]`` and ``local-dir:/path`` name a folder of model
files. Its ``config.json`` says the ``model_type``, and the loader registered
for that type with :func:`register_hf_loader` builds the backbone (DINOv2,
CLIP, SigLIP...). Folders of another format register a marker file with
:func:`register_dir_loader` (an open_clip folder has ``open_clip_config.json``).

Nothing here imports ``transformers`` or ``huggingface_hub`` until a model is
built. Hub files are fetched (and cached) by ``huggingface_hub``; with
``HF_HUB_OFFLINE=1`` only the local cache is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from .._deps import import_optional
from ..errors import UnknownModelError
from ..registry import Registry
from ._registry import WeightsSource, parse_source, register_scheme, resolve_local_dir
from .backbone import Backbone
from .preprocess import PreprocessCfg

logger = logging.getLogger(__name__)

HfLoader = Callable[[WeightsSource, Mapping[str, Any]], Backbone]
_HF_LOADERS: Registry[HfLoader] = Registry("loader for model type")
#: (marker file, loader): folders that are not in transformers format.
_DIR_LOADERS: list[tuple[str, Callable[[WeightsSource], Backbone]]] = []

# PIL resampling codes as saved in preprocessor_config.json. OpenCV has no
# box/hamming filter and we keep no Lanczos: the nearest available stands in.
_PIL_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}

F = TypeVar("F", bound=HfLoader)


def register_hf_loader(*model_types: str) -> Callable[[F], F]:
    """Decorator: ``loader(source, config)`` builds backbones whose config.json has one of ``model_types``."""

    def decorator(loader: F) -> F:
        for model_type in model_types:
            _HF_LOADERS.add(model_type, loader)
        return loader

    return decorator


def register_dir_loader(marker: str, loader: Callable[[WeightsSource], Backbone]) -> None:
    """Folders holding file ``marker`` (and no config.json of a known type) are built by ``loader``."""
    _DIR_LOADERS.append((marker, loader))


def hf_model_types() -> list[str]:
    return _HF_LOADERS.names()


def transformers_module(purpose: str) -> ModuleType:
    return import_optional("transformers", "transformers", "hf", purpose)


def pretrained_ref(source: WeightsSource) -> str:
    """What ``from_pretrained`` takes: a checked directory path or a repository id."""
    return str(resolve_local_dir(source)) if source.kind == "local-dir" else source.ref


def fetch_file(source: WeightsSource, filename: str, *, required: bool = True) -> Path | None:
    """The local path of ``filename`` in ``source`` (downloaded into the hub cache if needed).

    A missing optional file gives ``None``; a missing required one, an unknown
    repository or an unreachable hub raise :class:`UnknownModelError`.
    """
    if source.kind == "local-dir":
        path = resolve_local_dir(source) / filename
        if path.is_file():
            return path
        if required:
            raise UnknownModelError(f"{source}: no {filename} in the model directory")
        return None
    hub = import_optional("huggingface_hub", "huggingface_hub", "hf", f"loading {source}")
    try:
        return Path(hub.hf_hub_download(source.ref, filename, revision=source.revision))
    except hub.errors.EntryNotFoundError:
        # Also raised offline for a file that is not in the local cache.
        if required:
            raise UnknownModelError(
                f"{source}: {filename} is not in the repository, or not in the local Hugging Face cache "
                "while the hub is unreachable"
            ) from None
        return None
    except Exception as err:  # noqa: BLE001 - network, auth, bad id: all mean "cannot use this name"
        raise UnknownModelError(f"cannot fetch {source}: {type(err).__name__}: {err}") from None


def read_json(source: WeightsSource, filename: str, *, required: bool = True) -> dict[str, Any] | None:
    path = fetch_file(source, filename, required=required)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise UnknownModelError(f"{source}: cannot read {filename}: {err}") from None
    if not isinstance(data, dict):
        raise UnknownModelError(f"{source}: {filename} does not hold a JSON object")
    return data


def from_pretrained(cls: Any, source: WeightsSource, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` in eval mode; any weight it lacks is an error, not a random init.

    Weights the class does not use (e.g. the text tower of a CLIP checkpoint
    loaded as an image tower) are expected and not reported.
    """
    ref = pretrained_ref(source)
    transformers_logging = transformers_module(f"loading {source}").utils.logging
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its report lists every unused text-tower weight
    try:
        model, info = cls.from_pretrained(ref, revision=source.revision, output_loading_info=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UnknownModelError(f"cannot load {cls.__name__} from {source}: {err}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UnknownModelError(f"{source}: the checkpoint lacks {len(missing)} weights of {cls.__name__}: {shown}")
    return model.eval()


def _side(value: Any, key: str = "") -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        if key and key in value:
            return int(value[key])
        h, w = value.get("height"), value.get("width")
        if h is not None and w is not None:
            if h != w:
                logger.warning("non-square model input %sx%s: using %s (squashed square inputs)", h, w, max(h, w))
            return int(max(h, w))
    return None


def hf_preprocess(processor: Mapping[str, Any] | None, default: PreprocessCfg) -> PreprocessCfg:
    """The :class:`PreprocessCfg` a transformers ``preprocessor_config.json`` describes.

    ``image_mean``/``image_std`` and ``rescale_factor`` give mean/std in pixel
    units; ``resample`` the interpolation; ``do_center_crop`` + ``crop_size``
    a centre crop at the crop size (the whole shortest side is kept: a
    processor's crop margin, e.g. 256 -> 224, is not applied); ``size`` with
    height/width a squashed square. Keys that are absent keep ``default``.
    """
    if not processor:
        return default
    rescale = float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 1.0
    if processor.get("do_normalize", True):
        mean = tuple(float(m) / rescale for m in processor.get("image_mean", [v * rescale for v in default.mean]))
        std = tuple(float(s) / rescale for s in processor.get("image_std", [v * rescale for v in default.std]))
    else:
        mean, std = (0.0, 0.0, 0.0), (1 / rescale,) * 3
    if len(mean) != 3 or len(std) != 3:
        raise UnknownModelError(f"preprocessor config has {len(mean)} means / {len(std)} stds; expected RGB (3)")
    size = processor.get("size")
    crop = processor.get("crop_size")
    resize = default.resize
    input_size = default.input_size
    if processor.get("do_center_crop") and _side(crop) is not None:
        resize, input_size = "center_crop", _side(crop) or input_size
    elif _side(size, "shortest_edge") is not None:
        input_size = _side(size, "shortest_edge") or input_size
        resize = "center_crop" if isinstance(size, Mapping) and "shortest_edge" in size else "squash"
    interpolation = _PIL_RESAMPLE.get(processor.get("resample"), default.interpolation)  # type: ignore[arg-type]
    return PreprocessCfg(
        input_size=input_size,
        resize=resize,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        interpolation=interpolation,
        stride=default.stride,
    )


def build_from_source(source: WeightsSource) -> Backbone:
    """Build the backbone stored at ``source``, choosing the loader by its files."""
    config = read_json(source, "config.json", required=False)
    model_type = str(config.get("model_type", "")) if config else ""
    if config is not None and model_type in _HF_LOADERS:
        logger.info("loading %s (model type %s)", source, model_type)
        return _HF_LOADERS.get(model_type)(source, config)
    for marker, loader in _DIR_LOADERS:
        if fetch_file(source, marker, required=False) is not None:
            logger.info("loading %s (%s)", source, marker)
            return loader(source)
    if config is not None:
        found = f"its config.json has model type {model_type!r}"
    elif source.kind == "hf-hub":
        found = "it has no config.json, or it is not in the local Hugging Face cache while the hub is unreachable"
    else:
        found = "it has no config.json"
    markers = ", ".join(m for m, _ in _DIR_LOADERS)
    raise UnknownModelError(
        f"cannot load {source}: {found}; supported model types: {', '.join(hf_model_types())}"
        + (f" (or a folder with {markers})" if markers else "")
    )


register_scheme("hf-hub", build_from_source, parse=lambda loc: parse_source(f"hf-hub:{loc}"))
register_scheme("local-dir", build_from_source, parse=lambda loc: parse_source(f"local-dir:{loc}"))

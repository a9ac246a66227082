"""Step 2 for apparel photos: find every garment.

``create_detector(name)`` builds a registered detector; ``list_detectors()``
lists them. Boxes are in pixels of the photo as given (after EXIF).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..models import Encoding
from ..registry import Factory, Registry
from .base import GARMENT_LABELS, Detector, Garment
from .owlv2 import GARMENT_QUERIES, Owlv2Detector, create_owlv2

_REGISTRY: Registry[Factory[Detector]] = Registry("garment detector")


class NoDetector(Detector):
    """Finds nothing: every apparel photo is searched whole."""

    name = "none"

    def detect(self, encodings: Sequence[Encoding]) -> list[list[Garment]]:
        return [[] for _ in encodings]


@_REGISTRY.register("none", "no detection: search the whole photo")
def _none(**_: Any) -> Detector:
    return NoDetector()


def _head_options(min_score: float | None, runtime: str) -> dict[str, Any]:
    """HeadDetector options: the heads run in the backbones' runtime (ONNX Runtime beside it, else ``auto``: OpenVINO first)."""
    options: dict[str, Any] = {"engine": "onnx" if runtime == "onnx" else "auto"}
    if min_score is not None:
        options["min_score"] = min_score
    return options


@_REGISTRY.register("default", "garment head on efficientnet_lite0 features (shipped weights, offline)")
def _default(*, min_score: float | None = None, runtime: str = "auto", **_: Any) -> Detector:
    from .head import HeadDetector

    return HeadDetector(**_head_options(min_score, runtime))


@_REGISTRY.register("head:", "garment head from a weights file made by train_detector (head:PATH)")
def _head_file(*, location: str, min_score: float | None = None, runtime: str = "auto", **_: Any) -> Detector:
    from .head import HeadDetector

    return HeadDetector(weights=Path(location).expanduser(), **_head_options(min_score, runtime))


@_REGISTRY.register("owlv2:", "OWLv2 open-vocabulary detector: owlv2:<hub id | /path | local-dir:/path> [hf]")
def _owlv2(location: str, runtime: str = "", **kwargs: Any) -> Detector:  # runs in transformers whatever runtime.engine says
    return create_owlv2(location, **kwargs)


@_REGISTRY.register("owlv2-base", "OWLv2 base/16 ensemble (google/owlv2-base-patch16-ensemble, Apache-2.0) [hf]")
def _owlv2_base(runtime: str = "", **kwargs: Any) -> Detector:
    return create_owlv2("hf-hub:google/owlv2-base-patch16-ensemble", name="owlv2-base", **kwargs)


def create_detector(name: str, **kwargs: Any) -> Detector:
    """The detector called ``name``; the pipeline passes ``runtime`` (``runtime.engine``), which factories may ignore."""
    return _REGISTRY.create(name, **kwargs)


def list_detectors(pattern: str = "*") -> list[str]:
    return _REGISTRY.names(pattern)


def describe_detectors() -> dict[str, str]:
    """Every registered detector name (schemes end in ``:``) with its one-line description."""
    return _REGISTRY.describe()


def register_detector(name: str, description: str = "") -> Any:
    return _REGISTRY.register(name, description)


__all__ = [
    "GARMENT_LABELS",
    "GARMENT_QUERIES",
    "Detector",
    "Garment",
    "NoDetector",
    "Owlv2Detector",
    "create_detector",
    "describe_detectors",
    "list_detectors",
    "register_detector",
]

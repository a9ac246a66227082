"""OpenVINO streams (``runtime.streams``): a server's searches run side by side, with the same outputs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from shoplens.config import Config
from shoplens.errors import ConfigError
from shoplens.imaging import load_image
from shoplens.models import TorchConvBackbone, _registry, create_model, runtime_streams

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> TorchConvBackbone:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPLENS_CACHE", str(tmp_path_factory.mktemp("cache")))
        return create_model("efficientnet_lite0")  # type: ignore[return-value]


def test_auto_streams_are_one_per_search_at_once_at_most_one_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config().runtime.streams == 0
    monkeypatch.setattr(_registry, "_cores", lambda: 2)
    assert runtime_streams(0) == 1  # one search at a time (CLI commands, the Python API): one stream, every thread
    assert runtime_streams(0, search_concurrency=2) == 2
    assert runtime_streams(0, search_concurrency=8) == 2  # no more streams than cores
    assert runtime_streams(0, search_concurrency=8, threads=4) == 4
    assert runtime_streams(3, search_concurrency=1) == 3  # asked for: as asked
    with pytest.raises(ConfigError, match="streams"):
        create_model("efficientnet_lite0", runtime="openvino", threads=2, streams=3)
    with pytest.raises(ConfigError, match="runtime.streams"):
        Config().merged({"runtime": {"streams": -1}})


def test_pipeline_compiles_one_stream_per_search_slot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from shoplens.pipeline import Pipeline

    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(_registry, "_cores", lambda: 2)

    def streams(pipeline: Pipeline) -> int:
        session = pipeline.backbone("efficientnet_lite0")._session  # type: ignore[attr-defined]
        return int(session._general.compiled.get_property("NUM_STREAMS"))

    assert streams(Pipeline(Config())) == 1
    assert streams(Pipeline(Config(), search_concurrency=2)) == 2
    assert streams(Pipeline(Config().merged({"runtime": {"streams": 1}}), search_concurrency=2)) == 1


@pytest.mark.data
def test_two_streams_give_the_same_encodings_of_real_photos_bit_for_bit(
        data_dir: Path, lite0: TorchConvBackbone, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from shoplens.models import openvino_runtime
    from shoplens.models.openvino_runtime import PROMOTE_AFTER, to_openvino

    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path))
    one, two = to_openvino(lite0), to_openvino(lite0, streams=2, static_shapes=2)
    assert two is not one and two.model_path == one.model_path
    session = two._session  # type: ignore[attr-defined]
    assert int(session._general.compiled.get_property("NUM_STREAMS")) == 2
    assert not session._general.compiled.get_property("ENABLE_CPU_PINNING")
    files = sorted((data_dir / "grocery" / "photos" / "val").rglob("*.jpg"))[::90][:4] + sorted((data_dir / "clothing").rglob("*.jpg"))[:2]
    photos = [load_image(p, target_size=320) for p in files]
    for size in (224, 320):
        alone = [one.encode([p], input_size=size)[0] for p in photos]
        for _ in range(PROMOTE_AFTER):  # the recurring shapes get compilations of their own, on two streams too
            with ThreadPoolExecutor(max_workers=2) as pool:  # two searches at once, one per stream
                together = list(pool.map(lambda p, s=size: two.encode([p], input_size=s)[0], photos))
            for a, b in zip(alone, together):
                assert a.input_hw == b.input_hw and torch.equal(a.logits, b.logits)  # type: ignore[arg-type]
                for k in ("s8", "s16", "s32"):
                    assert torch.equal(a.features[k], b.features[k]), (size, k)
    assert session.wait_fixed()
    fixed = next(f.result() for f in session._promoted.values() if f.result() is not None)
    assert int(fixed.compiled.get_property("NUM_STREAMS")) == 2
    # Large passes (indexing's batches) stay on one stream over all the threads.
    monkeypatch.setattr(openvino_runtime, "LARGE_PASS_VALUES", 3 * 224 * 224)
    (big_a, *_), (big_b, *_) = one.encode(photos[:2], input_size=224), two.encode(photos[:2], input_size=224)
    assert session._large is not None and int(session._large.compiled.get_property("NUM_STREAMS")) == 1
    assert torch.equal(big_a.features["s32"], big_b.features["s32"])


def test_serve_runs_as_many_streams_as_search_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi", reason="the [server] extra is not installed")
    import shoplens.server
    from shoplens.cli import main

    seen: list[int] = []
    monkeypatch.setattr(shoplens.server, "serve", lambda lens, _settings, **_: seen.append(lens.pipeline.search_concurrency))
    assert main(["serve", "--store", str(tmp_path / "store"), "--create", "--search-concurrency", "3"]) == 0
    assert main(["serve", "--store", str(tmp_path / "store")]) == 0
    assert seen == [3, 2]  # the server's default: 2 search slots

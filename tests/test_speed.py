"""Speed work that must not change results: runtimes, fused inference, batched pooling, parallel decode."""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shoplens.config import Config
from shoplens.embed import Embedder, IdentityHead, gem, l2_normalize
from shoplens.errors import BadImageError, ConfigError, MissingDependencyError
from shoplens.imaging import Photo, load_image
from shoplens.models import Backbone, Encoding, TorchConvBackbone, create_model
from shoplens.models.efficientnet_lite import build_efficientnet_lite
from shoplens.pipeline import Pipeline
from shoplens.pipeline.indexing import decode_all

from .conftest import write_grocery_catalogue


def _jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def test_unknown_runtime_bad_threads_and_bad_static_shapes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown runtime 'tpu'"):
        create_model("efficientnet_lite0", runtime="tpu")
    with pytest.raises(ConfigError, match="threads"):
        create_model("efficientnet_lite0", threads=-1)
    with pytest.raises(ConfigError, match="static_shapes must be 0"):
        create_model("efficientnet_lite0", runtime="openvino", static_shapes=-1)


def test_onnx_runtime_without_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # importing it now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"shoplens\[onnx\]"):
        create_model("efficientnet_lite0", runtime="onnx")


def test_openvino_runtime_without_openvino_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"shoplens\[openvino\]"):
        create_model("efficientnet_lite0", runtime="openvino")


def test_exported_runtimes_refuse_a_non_convolutional_backbone() -> None:
    from shoplens.models.onnx_runtime import to_onnx
    from shoplens.models.openvino_runtime import to_openvino

    class Other(Backbone):
        name = "other"

        def encode(self, photos, *, input_size=None):  # type: ignore[no-untyped-def]
            return []

    with pytest.raises(ConfigError, match="runtime 'onnx' supports"):
        to_onnx(Other())
    with pytest.raises(ConfigError, match="runtime 'openvino' supports"):
        to_openvino(Other())


def test_fused_batch_norm_gives_the_same_features() -> None:
    model = build_efficientnet_lite("efficientnet_lite0")
    fused = model.fused()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 224, 160)
    with torch.inference_mode():
        a, b = model.forward_features(x), fused.forward_features(x)
        la, lb = model.classify(a["s32"].mean((2, 3))), fused.classify(b["s32"].mean((2, 3)))
    for k in ("s8", "s16", "s32"):
        assert a[k].shape == b[k].shape
        assert torch.allclose(a[k], b[k], atol=1e-3, rtol=1e-3), k
    assert torch.allclose(la, lb, atol=1e-3, rtol=1e-3)


def test_describe_pools_mixed_shapes_as_one_photo_at_a_time() -> None:
    torch.manual_seed(0)
    photo = Photo(np.zeros((4, 4, 3), np.uint8), (4, 4))
    maps = [torch.rand(16, 7, 7), torch.rand(16, 7, 5), torch.rand(16, 7, 7), torch.rand(16, 5, 7)]
    encodings = [Encoding(photo, (224, 224), {"s32": m}) for m in maps]
    encodings.insert(2, Encoding(photo, (224, 224), {"s32": torch.rand(16, 7, 7)}, embedding=torch.arange(16.0)))
    raw = Embedder("other_product", "efficientnet_lite0", 224, IdentityHead(), pooling="gem3-s32").describe(encodings)
    expected = torch.stack([gem(m) for m in maps[:2]] + [torch.arange(16.0)] + [gem(m) for m in maps[2:]]).numpy()
    assert raw.shape == (5, 16)
    np.testing.assert_allclose(raw, l2_normalize(expected), rtol=1e-5, atol=1e-6)


def test_decode_all_keeps_order_and_reports_each_bad_image_in_place() -> None:
    items = [
        (_jpeg((40, 30), (255, 0, 0)), "red.jpg"),
        (b"not an image at all", "junk.jpg"),
        (_jpeg((30, 50), (0, 255, 0)), "green.jpg"),
        (_jpeg((64, 64), (0, 0, 255))[:60], "truncated.jpg"),
        (_jpeg((20, 10), (255, 255, 255)), "white.jpg"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        out = decode_all(items, pool, target_size=224)
    assert [type(o).__name__ for o in out] == ["Photo", "BadImageError", "Photo", "BadImageError", "Photo"]
    assert [o.size for o in out if isinstance(o, Photo)] == [(40, 30), (30, 50), (20, 10)]
    assert [o.name for o in out if isinstance(o, Photo)] == ["red.jpg", "green.jpg", "white.jpg"]
    assert "junk.jpg" in str(out[1]) and "truncated.jpg" in str(out[3])
    assert isinstance(out[1], BadImageError)
    assert out[0].pixels[5, 5, 0] > 200 and out[2].pixels[5, 5, 1] > 200  # type: ignore[union-attr]


# -- ONNX Runtime ------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def backbones(onnx_cache: Path) -> tuple[TorchConvBackbone, TorchConvBackbone]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPLENS_CACHE", str(onnx_cache))
        return create_model("efficientnet_lite0"), create_model("efficientnet_lite0", runtime="onnx")  # type: ignore[return-value]


def test_pipeline_builds_the_configured_runtime(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch, backbones: object) -> None:
    from shoplens.models.onnx_runtime import OnnxConvBackbone
    from shoplens.models.openvino_runtime import OpenVinoConvBackbone

    monkeypatch.setenv("SHOPLENS_CACHE", str(onnx_cache))  # the export of the fixture is reused
    onnx = Pipeline(Config().merged({"runtime": {"engine": "onnx"}})).backbone("efficientnet_lite0")
    assert type(onnx) is OnnxConvBackbone and onnx.model_path.parent == onnx_cache / "onnx"
    ov = Pipeline(Config().merged({"runtime": {"engine": "openvino"}})).backbone("efficientnet_lite0")
    assert type(ov) is OpenVinoConvBackbone and ov.model_path == onnx.model_path  # one export, two runtimes
    torch_ = Pipeline(Config().merged({"runtime": {"engine": "torch"}})).backbone("efficientnet_lite0")
    assert type(torch_) is TorchConvBackbone
    auto = Pipeline(Config()).backbone("efficientnet_lite0")  # the default: OpenVINO where it can
    assert Config().runtime.engine == "auto" and type(auto) is OpenVinoConvBackbone
    # The garment head follows: ONNX Runtime beside ONNX Runtime backbones, OpenVINO (auto) otherwise.
    assert Pipeline(Config().merged({"runtime": {"engine": "onnx"}})).detector.engine == "onnx"  # type: ignore[attr-defined]
    assert Pipeline(Config()).detector.engine == "auto"  # type: ignore[attr-defined]


def test_auto_runtime_falls_back_to_onnx_runtime_then_torch(monkeypatch: pytest.MonkeyPatch, onnx_cache: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from shoplens.models.onnx_runtime import OnnxConvBackbone

    monkeypatch.setenv("SHOPLENS_CACHE", str(onnx_cache))
    monkeypatch.setitem(sys.modules, "openvino", None)  # importing it now raises ImportError
    with caplog.at_level("INFO", logger="shoplens"):
        backbone = create_model("efficientnet_lite0", runtime="auto")
    assert type(backbone) is OnnxConvBackbone and "in ONNX Runtime" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="shoplens"):  # bf16 cannot be had without OpenVINO: said loudly
        backbone = create_model("efficientnet_lite0", runtime="auto", precision="bf16")
    assert type(backbone) is OnnxConvBackbone and "in ONNX Runtime, f32" in caplog.text
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    backbone = create_model("efficientnet_lite0", runtime="auto")
    assert type(backbone) is TorchConvBackbone
    assert "running it in torch" in caplog.text


def test_onnx_falls_back_to_torch_off_the_32_px_grid(backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    tb, ob = backbones
    x = torch.randn(2, 3, 100, 75)  # "same" padding of this size is not what the exported graph does
    (ft, lt), (fo, lo) = tb.forward(x), ob.forward(x)
    assert fo["s32"].shape == ft["s32"].shape == (2, 1280, 4, 3)
    assert torch.allclose(fo["s32"], ft["s32"]) and lo is not None and lt is not None and torch.allclose(lo, lt)


@pytest.mark.data
def test_onnx_matches_torch_on_real_photos(data_dir: Path, backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    tb, ob = backbones
    grocery = sorted((data_dir / "grocery" / "photos" / "val").rglob("*.jpg"))[::60][:8]
    clothing = sorted((data_dir / "clothing").rglob("*.jpg"))[:4]
    photos = [load_image(p, target_size=256) for p in grocery + clothing]
    for size in (224, 256):
        a, b = tb.encode(photos, input_size=size), ob.encode(photos, input_size=size)
        assert len({e.input_hw for e in a}) >= 2  # several letterbox shapes, batched apart
        for x, y in zip(a, b):
            assert x.input_hw == y.input_hw and x.photo is y.photo
            for k in ("s8", "s16", "s32"):
                scale = float(x.features[k].abs().max())
                assert float((x.features[k] - y.features[k]).abs().max()) < 1e-3 * max(scale, 1.0), k
            assert torch.allclose(x.logits, y.logits, atol=1e-3)  # type: ignore[arg-type]
            assert int(x.logits.argmax()) == int(y.logits.argmax())  # type: ignore[union-attr]
        emb = Embedder("other_product", "efficientnet_lite0", size, IdentityHead())
        va, vb = emb.project(emb.describe(a)), emb.project(emb.describe(b))
        assert float(np.min(np.sum(va * vb, axis=1))) > 0.9999


@pytest.mark.data
@pytest.mark.slow
def test_openvino_matches_torch_and_onnx_runtime_on_real_photos(data_dir: Path, onnx_cache: Path,
                                                                backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    """OpenVINO runs in f32 (not its bf16 default on AMX CPUs): the same maps, so stores need no re-embedding."""
    from shoplens.models.openvino_runtime import OpenVinoConvBackbone, to_openvino

    tb, ob = backbones
    vb = to_openvino(ob)
    assert isinstance(vb, OpenVinoConvBackbone) and vb.model_path == ob.model_path
    grocery = sorted((data_dir / "grocery" / "photos" / "val").rglob("*.jpg"))[::60][:8]
    clothing = sorted((data_dir / "clothing").rglob("*.jpg"))[:4]
    photos = [load_image(p, target_size=320) for p in grocery + clothing]
    for size in (224, 320):
        a, b, c = tb.encode(photos, input_size=size), ob.encode(photos, input_size=size), vb.encode(photos, input_size=size)
        assert len({e.input_hw for e in a}) >= 2
        for x, y, z in zip(a, b, c):
            assert x.input_hw == z.input_hw and z.photo is x.photo
            for k in ("s8", "s16", "s32"):
                scale = max(float(x.features[k].abs().max()), 1.0)
                assert float((x.features[k] - z.features[k]).abs().max()) < 1e-3 * scale, k
                assert float((y.features[k] - z.features[k]).abs().max()) < 1e-3 * scale, k
            assert torch.allclose(x.logits, z.logits, atol=1e-3)  # type: ignore[arg-type]
        emb = Embedder("other_product", "efficientnet_lite0", size, IdentityHead())
        va, vc = emb.project(emb.describe(a)), emb.project(emb.describe(c))
        assert float(np.min(np.sum(va * vc, axis=1))) > 0.9999


def test_openvino_serves_concurrent_callers(onnx_cache: Path, backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    """Each caller borrows its own infer request: threads running at once get their own photos' maps."""
    from shoplens.models.openvino_runtime import to_openvino

    vb = to_openvino(backbones[1])
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.standard_normal((n, 3, 96, 64)).astype(np.float32)) for n in (1, 2, 3, 1, 2, 3)]
    alone = [vb.forward(x)[0]["s32"] for x in batches]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda x: vb.forward(x)[0]["s32"], batches * 3))
    for i, maps in enumerate(together):
        assert torch.equal(maps, alone[i % len(batches)]), i
    assert vb._session._general.idle.qsize() >= 2  # requests were made for the overlapping calls and kept


def test_openvino_compiles_recurring_single_photo_shapes_on_their_own(
        onnx_cache: Path, backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    """A single-photo shape seen PROMOTE_AFTER times gets a compilation of its own (up to static_shapes), same outputs."""
    from shoplens.models.openvino_runtime import PROMOTE_AFTER, OpenVinoSession

    plain = OpenVinoSession(backbones[1].model_path)  # type: ignore[attr-defined]
    session = OpenVinoSession(plain.path, static_shapes=2)
    rng = np.random.default_rng(0)
    shapes = [(1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 64, 64), (2, 3, 64, 96)]
    inputs = {s: rng.standard_normal(s).astype(np.float32) for s in shapes}
    expected = {s: plain.run(None, {"pixels": x}) for s, x in inputs.items()}
    for _ in range(PROMOTE_AFTER - 1):
        for x in inputs.values():
            session.run(None, {"pixels": x})
    assert session.wait_fixed() == []  # not yet: each shape seen PROMOTE_AFTER - 1 times
    for x in inputs.values():
        session.run(None, {"pixels": x})
    fixed = session.wait_fixed()
    # The first two single-photo shapes to recur, no more; batches never (indexing's sizes vary).
    assert fixed == sorted([(("pixels", shapes[0]),), (("pixels", shapes[1]),)])
    for s, x in inputs.items():
        for got, want in zip(session.run(None, {"pixels": x}), expected[s]):
            np.testing.assert_array_equal(got, want)
    assert session._promoted[(("pixels", shapes[0]),)].result().idle.qsize() == 1  # the fixed compilation ran it


def test_openvino_fixed_compilations_serve_concurrent_callers(
        onnx_cache: Path, backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    """Threads searching at once while shapes are promoted (and one gives its place up) get their own photos' maps."""
    from shoplens.models.openvino_runtime import OpenVinoSession

    plain = OpenVinoSession(backbones[1].model_path)  # type: ignore[attr-defined]
    session = OpenVinoSession(plain.path, static_shapes=1)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(s).astype(np.float32) for s in ((1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 64, 64))]
    expected = [plain.run(None, {"pixels": x})[2] for x in inputs]
    order = [0] * 6 + [1] * 20 + [2] * 4 + [0, 1, 2] * 10  # shape 1 takes shape 0's place part-way
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda i: session.run(None, {"pixels": inputs[i]})[2], order))
    for i, maps in zip(order, got):
        np.testing.assert_array_equal(maps, expected[i])
    assert session.wait_fixed() == [(("pixels", inputs[1].shape),)]


def test_openvino_gives_a_fixed_compilation_to_a_shape_that_became_more_frequent(
        onnx_cache: Path, backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    from shoplens.models.openvino_runtime import DECAY_EVERY, PROMOTE_AFTER, OpenVinoSession

    session = OpenVinoSession(backbones[1].model_path, static_shapes=1)  # type: ignore[attr-defined]
    a, b = np.zeros((1, 3, 64, 96), np.float32), np.zeros((1, 3, 96, 64), np.float32)
    for _ in range(PROMOTE_AFTER):
        session.run(None, {"pixels": a})
    assert session.wait_fixed() == [(("pixels", a.shape),)]
    for _ in range(2 * PROMOTE_AFTER):  # as often as twice the promoted shape: not enough to take its place
        session.run(None, {"pixels": b})
    assert session.wait_fixed() == [(("pixels", a.shape),)]
    session.run(None, {"pixels": b})  # now more than twice as often
    assert session.wait_fixed() == [(("pixels", b.shape),)]
    for _ in range(DECAY_EVERY):  # counts halve as passes go by: a's old ones fade
        session.run(None, {"pixels": b})
    assert session._seen[(("pixels", a.shape),)] < PROMOTE_AFTER


def test_openvino_large_passes_run_on_a_compilation_given_up_when_idle(
        monkeypatch: pytest.MonkeyPatch, onnx_cache: Path, backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    """Indexing-sized batches run on a compilation of their own, dropped when idle (its memory with it); same outputs."""
    import time

    from shoplens.models import openvino_runtime
    from shoplens.models.openvino_runtime import OpenVinoSession

    monkeypatch.setattr(openvino_runtime, "LARGE_PASS_VALUES", 2 * 3 * 64 * 64)  # the tiny test graph's "large"
    monkeypatch.setattr(openvino_runtime, "LARGE_IDLE_S", 0.3)
    session = OpenVinoSession(backbones[1].model_path)  # type: ignore[attr-defined]
    rng = np.random.default_rng(2)
    small, large = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 64, 64), (3, 3, 64, 64)))
    want = session._general.run({"pixels": large})
    session.run(None, {"pixels": small})
    assert not session.large_compiled  # a search-sized batch stays on the general compilation
    for got, w in zip(session.run(None, {"pixels": large}), want):
        np.testing.assert_array_equal(got, w)
    assert session.large_compiled
    deadline = time.monotonic() + 10
    while session.large_compiled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not session.large_compiled  # given up after LARGE_IDLE_S without a large pass
    for got, w in zip(session.run(None, {"pixels": large}), want):  # made again when one comes
        np.testing.assert_array_equal(got, w)
    assert session.large_compiled


def test_openvino_keeps_the_large_compilation_while_a_pass_runs_on_it(
        monkeypatch: pytest.MonkeyPatch, onnx_cache: Path, backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    from shoplens.models import openvino_runtime
    from shoplens.models.openvino_runtime import OpenVinoSession

    monkeypatch.setattr(openvino_runtime, "LARGE_PASS_VALUES", 0)
    monkeypatch.setattr(openvino_runtime, "LARGE_IDLE_S", 60.0)  # the timer stays out of the way: checks by hand
    session = OpenVinoSession(backbones[1].model_path)  # type: ignore[attr-defined]
    session.run(None, {"pixels": np.zeros((1, 3, 64, 64), np.float32)})
    with session._large_lock:
        session._large_last -= 120  # idle long enough
        session._large_busy += 1  # but a pass is in flight
    session._release_large()
    assert session.large_compiled
    with session._large_lock:
        session._large_busy -= 1
    session._release_large()
    assert not session.large_compiled


@pytest.mark.data
def test_openvino_fixed_shape_compilations_give_the_same_encodings_of_real_photos(
        data_dir: Path, onnx_cache: Path, backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    from shoplens.models.openvino_runtime import PROMOTE_AFTER, to_openvino

    plain, fixed = to_openvino(backbones[1]), to_openvino(backbones[1], static_shapes=4)
    assert fixed is not plain and fixed.model_path == plain.model_path
    files = sorted((data_dir / "grocery" / "photos" / "val").rglob("*.jpg"))[:1] + sorted((data_dir / "clothing").rglob("*.jpg"))[:2]
    photos = [load_image(p, target_size=320) for p in files]
    for _ in range(PROMOTE_AFTER):
        for p in photos:
            fixed.encode([p])  # one photo at a time, as a search does
    shapes = fixed._session.wait_fixed()  # type: ignore[attr-defined]
    assert len(shapes) >= 2  # the square grocery photo and the clothing photos' letterbox shapes
    for p in photos:
        (a,), (b,) = plain.encode([p]), fixed.encode([p])
        assert a.input_hw == b.input_hw and torch.equal(a.logits, b.logits)  # type: ignore[arg-type]
        for k in ("s8", "s16", "s32"):
            assert torch.equal(a.features[k], b.features[k]), k


def test_openvino_keeps_compiled_models_in_the_cache_when_it_can(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   backbones: tuple[TorchConvBackbone, TorchConvBackbone]) -> None:
    from shoplens.models.openvino_runtime import OpenVinoSession, compiled_cache_dir

    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    session = OpenVinoSession(backbones[1].model_path)  # type: ignore[attr-defined]
    assert compiled_cache_dir() == tmp_path / "cache" / "openvino"
    assert any(f.stat().st_size > 1_000_000 for f in (tmp_path / "cache" / "openvino").iterdir())  # the compiled blob
    x = np.zeros((1, 3, 64, 64), np.float32)
    np.testing.assert_array_equal(OpenVinoSession(session.path).run(None, {"pixels": x})[2], session.run(None, {"pixels": x})[2])
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "file"))
    assert compiled_cache_dir() is None  # compiled anew each time, no error
    assert OpenVinoSession(session.path).run(None, {"pixels": x})[2].shape == (1, 1280, 2, 2)


def test_precision_is_checked_and_bf16_needs_openvino() -> None:
    with pytest.raises(ConfigError, match="unknown precision 'f16'"):
        create_model("efficientnet_lite0", runtime="openvino", precision="f16")
    for runtime in ("torch", "onnx"):
        with pytest.raises(ConfigError, match="OpenVINO only"):
            create_model("efficientnet_lite0", runtime=runtime, precision="bf16")


@pytest.mark.data
def test_bf16_runs_close_to_f32_on_real_photos(data_dir: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """bf16 where the CPU has it (other maps, close to f32's); f32 and a warning where it has not."""
    from shoplens.models.openvino_runtime import OpenVinoConvBackbone

    monkeypatch.setenv("SHOPLENS_CACHE", str(onnx_cache))
    pipe = Pipeline(Config().merged({"runtime": {"engine": "auto", "precision": "bf16"}}))
    bf16 = pipe.backbone("efficientnet_lite0")
    f32 = create_model("efficientnet_lite0", runtime="openvino")
    assert isinstance(bf16, OpenVinoConvBackbone) and bf16.precision == "bf16" and bf16.model_path == f32.model_path  # type: ignore[attr-defined]
    photos = [load_image(p, target_size=224) for p in sorted((data_dir / "grocery" / "photos" / "val").rglob("*.jpg"))[::30][:10]]
    a, b = f32.encode(photos, input_size=224), bf16.encode(photos, input_size=224)
    if bf16._session.precision == "f32":  # no bfloat16 arithmetic on this CPU
        assert "computes in f32" in caplog.text
        assert all(torch.equal(x.features["s32"], y.features["s32"]) for x, y in zip(a, b))
        return
    assert not all(torch.allclose(x.features["s32"], y.features["s32"], atol=1e-4) for x, y in zip(a, b))
    emb = Embedder("other_product", "efficientnet_lite0", 224, IdentityHead())
    va, vb = emb.project(emb.describe(a)), emb.project(emb.describe(b))
    assert float(np.min(np.sum(va * vb, axis=1))) > 0.99
    agree = [int(x.logits.argmax()) == int(y.logits.argmax()) for x, y in zip(a, b)]  # type: ignore[union-attr]
    assert sum(agree) >= len(agree) - 1


def test_nchw_batch_for_onnx_equals_the_torch_batch() -> None:
    from shoplens.models.preprocess import PreprocessCfg, to_nchw, to_tensor

    rng = np.random.default_rng(0)
    resized = [rng.integers(0, 256, (64, 32, 3), dtype=np.uint8) for _ in range(3)]
    cfg = PreprocessCfg(mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 40.0))
    nchw = to_nchw(resized, cfg)
    assert nchw.flags.c_contiguous and nchw.dtype == np.float32 and nchw.shape == (3, 3, 64, 32)
    np.testing.assert_allclose(nchw, to_tensor(resized, cfg).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_latency_first_setup_runs_one_backbone_pass_per_other_product_search(tmp_path: Path, data_dir: Path) -> None:
    """docs/configuration.md's latency-first settings: saved with the store; a search's descriptor comes from the gate's pass."""
    import csv

    from shoplens import Shoplens

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    snippet = doc.split("## A latency-first setup", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "fast.toml").write_text(snippet, encoding="utf-8")
    root = data_dir / "grocery"
    with open(root / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[::8]
    catalogue = write_grocery_catalogue(tmp_path / "catalogue.csv", root, rows)
    with Shoplens(tmp_path / "store", config_file=tmp_path / "fast.toml") as lens:
        lens.index(catalogue)
    with Shoplens(tmp_path / "store") as lens:  # no file, no flags: the store's saved settings
        assert lens.config.embed.other_product.extra_sizes == "" and not lens.config.local.enabled
        backbone = lens.pipeline.backbone("efficientnet_lite0")
        sizes: list[int | None] = []
        real_encode = backbone.encode
        backbone.encode = lambda photos, **k: sizes.append(k.get("input_size")) or real_encode(photos, **k)  # type: ignore[method-assign]
        found = 0
        for r in rows:
            sizes.clear()
            result = lens.search([root / r["image"]])[0]
            if result.intent != "other_product":
                continue
            assert len(sizes) == 1, f"{r['image']}: {len(sizes)} backbone passes"
            assert "local" not in result.timings_ms
            found += result.regions[0].results[0].product_id == r["product_id"]
        assert found >= len(rows) // 2, "catalogue photos find their own product"

"""Tuning the backbone's stride-32 stage (shoplens.embed.tail) and its use by train-embedder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shoplens.embed import ProjectionCfg, Tail, TailCfg, l2_normalize, tune_tail
from shoplens.embed.pooling import gem
from shoplens.errors import ConfigError
from shoplens.imaging import load_image
from shoplens.models import TorchConvBackbone, create_model, create_tuned_model
from shoplens.models.efficientnet_lite import build_efficientnet_lite
from shoplens.pipeline import EncodingCache
from shoplens.pipeline.training import _reencode
from shoplens.store import ImageRecord, WriteBatch

from .conftest import make_image, write_grocery_catalogue


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return build_efficientnet_lite("efficientnet_lite0")


def test_the_untuned_tail_is_the_backbone_stage(lite0: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        feats = lite0.forward_features(x)
        tail = lite0.tail()
        assert torch.equal(tail(feats["s16"]), feats["s32"])
        assert torch.equal(lite0.with_tail(tail).forward_features(x)["s32"], feats["s32"])
    assert all(p.requires_grad for p in tail.parameters())
    assert tail.blocks[0] is not lite0._blocks[-len(tail.blocks)]  # a copy: tuning leaves the shipped backbone alone


def _maps(n_labels: int = 3, per: int = 8, seed: int = 0) -> tuple[list[torch.Tensor], np.ndarray]:
    """Stride-16 maps of ``per`` noisy views of ``n_labels`` textures (one channel profile everywhere), in two shapes."""
    rng = np.random.default_rng(seed)
    patterns = np.broadcast_to(rng.normal(size=(n_labels, 112, 1, 1)), (n_labels, 112, 4, 4)).astype(np.float32)
    maps, labels = [], []
    for label in range(n_labels):
        for j in range(per):
            m = patterns[label] + 5.0 * rng.normal(size=patterns[label].shape).astype(np.float32)
            if j % 2:
                m = np.concatenate([m, m[:, :, :1]], axis=2)  # a wider photo: (112, 4, 5)
            maps.append(torch.from_numpy(np.maximum(m, 0)).to(torch.float16))
            labels.append(f"label{label}")
    return maps, np.array(labels)


def _r1(tail: Tail, maps: list[torch.Tensor], labels: np.ndarray) -> float:
    with torch.no_grad():
        v = l2_normalize(np.stack([gem(tail.module(m[None].float()))[0].numpy() for m in maps]))
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    return float(np.mean(labels[np.argmax(s, 1)] == labels))


@pytest.mark.slow
def test_tune_tail_pulls_views_of_a_label_together_and_is_deterministic(lite0: torch.nn.Module) -> None:
    maps, labels = _maps()
    before = _r1(Tail("efficientnet_lite0", lite0.tail()), maps, labels)
    cfg = TailCfg(min_steps=40)
    tuned = tune_tail("efficientnet_lite0", lite0, maps, labels, proxy_cfg=ProjectionCfg(), cfg=cfg, seed=0)
    after = _r1(tuned, maps, labels)
    assert after > before + 0.2, (before, after)
    again = tune_tail("efficientnet_lite0", lite0, maps, labels, proxy_cfg=ProjectionCfg(), cfg=cfg, seed=0)
    assert again.digest == tuned.digest
    assert tuned.info["images"] == len(maps) and tuned.info["classes"] == 3 and tuned.info["shapes"] == 2
    with pytest.raises(ValueError):
        tune_tail("efficientnet_lite0", lite0, maps, np.array(["one"] * len(maps)), proxy_cfg=ProjectionCfg())


@pytest.mark.parametrize("runtime", ["torch", "onnx", "openvino"])
@pytest.mark.slow
def test_tuned_backbone_has_the_tuned_stage(tmp_path: Path, lite0: torch.nn.Module, runtime: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    maps, labels = _maps(per=4)
    tuned = tune_tail("efficientnet_lite0", lite0, maps, labels, proxy_cfg=ProjectionCfg(), cfg=TailCfg(epochs=2, min_steps=0), seed=1)
    tuned.save(tmp_path / "tail.pt")
    loaded = Tail.load(tmp_path / "tail.pt", "efficientnet_lite0", lite0)
    assert loaded.digest == tuned.digest and loaded.info == tuned.info
    assert loaded.model_name == f"efficientnet_lite0+tail-{tuned.digest}"
    with pytest.raises(ConfigError, match="efficientnet_lite1"):
        Tail.load(tmp_path / "tail.pt", "efficientnet_lite1", lite0)
    (tmp_path / "broken.pt").write_bytes((tmp_path / "tail.pt").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="cannot read"):
        Tail.load(tmp_path / "broken.pt", "efficientnet_lite0", lite0)

    photo = load_image(make_image(tmp_path / "p.png", seed=3, size=(200, 150)))
    shipped_backbone = create_model("efficientnet_lite0", runtime="torch")
    shipped = shipped_backbone.encode([photo], input_size=96)[0]
    backbone = create_tuned_model(shipped_backbone, loaded.module, loaded.model_name, runtime=runtime)
    assert backbone.name == loaded.model_name and not backbone.has_imagenet_head
    enc = backbone.encode([photo], input_size=96)[0]
    assert enc.logits is None
    torch.testing.assert_close(enc.features["s16"], shipped.features["s16"], atol=1e-3, rtol=1e-3)  # the front is the shipped one
    with torch.no_grad():
        expected = loaded.module(shipped.features["s16"][None])[0]
    torch.testing.assert_close(enc.features["s32"], expected, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(enc.features["s32"], shipped.features["s32"], atol=1e-2)

    # From the shipped backbone's encodings (the intent gate's pass) only the stage runs: same maps.
    assert backbone.trunk == "efficientnet_lite0"
    wide = load_image(make_image(tmp_path / "w.png", seed=4, size=(300, 120)))
    for size in (96, 128):  # 128: s16 maps of even sides, run by the exported stage in ONNX Runtime
        whole = backbone.encode([photo, wide], input_size=size)
        staged = backbone.encode_from_trunk(shipped_backbone.encode([photo, wide], input_size=size))
        for a, b in zip(whole, staged):
            assert a.photo is b.photo and a.input_hw == b.input_hw and b.logits is None
            torch.testing.assert_close(b.features["s32"], a.features["s32"], atol=1e-3, rtol=1e-3)


def test_stage_runs_in_torch_when_its_onnx_export_fails(tmp_path: Path, lite0: torch.nn.Module, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from shoplens.models import onnx_runtime

    def read_only(*_: object) -> None:
        raise OSError("read-only cache folder")

    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_runtime, "export_stage", read_only)
    shipped = create_model("efficientnet_lite0", runtime="torch")
    stage = lite0.tail()
    with torch.no_grad():
        stage.bn.bias.add_(0.5)  # not the shipped stage
    backbone = create_tuned_model(shipped, stage, "efficientnet_lite0+tail-test", runtime="onnx")
    assert isinstance(backbone, onnx_runtime.OnnxConvBackbone) and "runs in torch" in caplog.text
    photo = load_image(make_image(tmp_path / "p.png", seed=5, size=(160, 160)))
    staged = backbone.encode_from_trunk(shipped.encode([photo], input_size=128))[0]
    torch.testing.assert_close(staged.features["s32"], backbone.encode([photo], input_size=128)[0].features["s32"], atol=1e-3, rtol=1e-3)


def _labelled(tmp_path: Path, n: int = 6, views: int = 3) -> Path:
    rows = ["image,product_id"]
    for i in range(n):
        for j in range(views):
            make_image(tmp_path / "extra" / f"p{i}_{j}.png", seed=i, size=(150 + 5 * j, 120))  # rescaled views of p{i}
            rows.append(f"extra/p{i}_{j}.png,p{i}")
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "labelled.csv"


SMALL = ["--set", "embed.other_product.input_size=64", "--set", "embed.other_product.extra_sizes=96", "--set", "local.enabled=false"]


@pytest.mark.slow
def test_cli_train_embedder_tunes_the_stage_and_reencodes_the_store(tmp_path: Path, synthetic_catalogue: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from shoplens import Shoplens
    from shoplens.cli import main

    labelled = _labelled(tmp_path)
    store = tmp_path / "store"
    assert main(["index", str(synthetic_catalogue), "--store", str(store), "--intent-classifier", "test-other_product", *SMALL]) == 0
    with Shoplens(store, create=False) as lens:
        before = {(im.product_id, im.source): im.raw for im in lens.store.iter_images()}
    capsys.readouterr()
    assert main(["train-embedder", "--store", str(store), "--labelled", str(labelled), "--json", *SMALL]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["other_product"]
    tail = report["tail"]
    assert tail["tuned"] and tail["labels"] == "product_id" and tail["reencoded"] == len(before) and tail["reencode_failed"] == 0
    # 7 catalogue images + 18 labelled photos, less the held-out ones (15 % of each product's labelled photos, rounded)
    assert tail["images"] == 7 + 18 - 6 * round(0.15 * 3)
    assert (store / "models" / "tail_other_product.pt").exists()
    with Shoplens(store, create=False) as lens:
        emb = lens.pipeline.embedders["other_product"]
        tail = Tail.load(store / "models" / "tail_other_product.pt", "efficientnet_lite0", build_efficientnet_lite("efficientnet_lite0"))
        assert emb.backbone == tail.model_name and emb.signature.startswith(tail.model_name)
        after = {(im.product_id, im.source): im for im in lens.store.iter_images()}
        assert after.keys() == before.keys() and lens.store.count_vectors("other_product") == len(before)
        assert all(im.signature == emb.signature for im in after.values())
        assert not any(np.allclose(after[k].raw, before[k], atol=1e-3) for k in before), "every image re-encoded through the tuned stage"
        assert lens.search([tmp_path / "extra" / "p2_1.png"])[0].regions[0].results[0].product_id == "p2"

        # A run cut short resumes: only images still holding another signature are re-encoded.
        assert _reencode(lens.store, lens.pipeline, "other_product", False) == (0, 0)
        stale = [im for im in after.values()][:2]
        batch = WriteBatch()
        for im in stale:
            image_id, _, _, domain = lens.store.find_image(im.product_id, im.source)
            batch.remove_images.append((image_id, domain))
            batch.add_images.append(ImageRecord(im.product_id, im.source, im.sha1, domain, "efficientnet_lite0@64/old", im.raw))
        lens.store.write(batch)
        assert _reencode(lens.store, lens.pipeline, "other_product", False) == (2, 0)
        assert {im.signature for im in lens.store.iter_images()} == {emb.signature}

    # Head only: the stage stays as tuned, nothing is re-encoded.
    assert main(["train-embedder", "--store", str(store), "--labelled", str(labelled), "--no-tune-backbone", "--json", *SMALL]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["other_product"]
    assert report["tail"] == {"tuned": False, "reason": "not asked"} and report["labels"] == "product_id"
    with Shoplens(store, create=False) as lens:
        assert {im.signature for im in lens.store.iter_images()} == {lens.pipeline.embedders["other_product"].signature}


@pytest.mark.slow
def test_train_embedder_leaves_the_stage_alone_when_a_catalogue_photo_is_gone(tmp_path: Path, synthetic_catalogue: Path) -> None:
    from shoplens import Shoplens

    labelled = _labelled(tmp_path)
    config = {"embed.other_product.input_size": 64, "embed.other_product.extra_sizes": "96", "local.enabled": False,
              "intent.classifier": "test-other_product"}
    with Shoplens(tmp_path / "store", **config) as lens:
        lens.index(synthetic_catalogue)
        (synthetic_catalogue.parent / "img" / "p3.png").unlink()
        before = {im.source: (im.signature, im.raw) for im in lens.store.iter_images()}
        report = lens.train_embedder(labelled)["other_product"]
        assert report.tail is not None and not report.tail["tuned"]
        assert "1 stored photo(s) cannot be read" in report.tail["reason"] and "p3.png" in report.tail["reason"]
        assert report.labels == "product_id", "the head is still trained on the stored descriptors"
        assert not (lens.store.models_dir / "tail_other_product.pt").exists()
        after = {im.source: (im.signature, im.raw) for im in lens.store.iter_images()}
        assert after.keys() == before.keys()
        assert all(after[k][0] == before[k][0] and np.array_equal(after[k][1], before[k][1]) for k in before)


@pytest.mark.data
@pytest.mark.slow
def test_tuned_stage_on_grocery_products(tmp_path: Path, data_dir: Path) -> None:
    """Real photos: 8 grocery products, their catalogue image and 6 train photos each; val photos as queries."""
    from shoplens import Shoplens

    root = data_dir / "grocery"
    with open(root / "catalog.csv", newline="", encoding="utf-8") as f:
        cat = [r for r in csv.DictReader(f)][::10][:8]
    with open(root / "photos.csv", newline="", encoding="utf-8") as f:
        photos = list(csv.DictReader(f))
    ids = {r["product_id"] for r in cat}
    train = [r for pid in sorted(ids) for r in [x for x in photos if x["product_id"] == pid and x["split"] == "train"][:6]]
    val = [r for pid in sorted(ids) for r in [x for x in photos if x["product_id"] == pid and x["split"] == "val"][:3]]
    catalogue = write_grocery_catalogue(tmp_path / "catalogue.csv", root, cat, train)
    config = {"intent.enabled": False, "embed.other_product.extra_sizes": "",
              "search.rank_filter": False, "search.entropy_filter": False}
    with Shoplens(tmp_path / "store", **config) as lens:
        lens.index(catalogue)

        def r1() -> float:
            results = lens.search([root / r["image"] for r in val])
            return float(np.mean([res.regions[0].results[0].product_id == r["product_id"] for res, r in zip(results, val)]))

        report = lens.train_embedder()["other_product"]
        assert report.tail is not None and report.tail["tuned"] and report.tail["reencoded"] == len(cat) + len(train)
        assert report.tail["labels"] == "product_id" and report.tail["classes"] == len(cat)
        assert lens.pipeline.local is not None, "local features are on by default"
        ids = np.sort(lens.store.image_ids("other_product"))
        assert np.array_equal(np.sort(lens.pipeline.local.index.ids()), ids), "the local index follows the re-encoded ids"
        # Quality is measured on the whole dataset (docs/benchmarks.md section 4); here: new photos still find their product.
        assert r1() >= 0.8

        # A search computes the tuned encoding from the intent gate's pass (the stage alone runs);
        # the stored ones came from whole passes: the same descriptor.
        emb = lens.pipeline.embedders["other_product"]
        tuned = lens.pipeline.backbone(emb.backbone)
        assert isinstance(tuned, TorchConvBackbone) and tuned.trunk == lens.config.intent.backbone
        photo = load_image(root / cat[0]["image"], target_size=lens.pipeline.decode_size)
        whole = lens.pipeline.describe("other_product", EncodingCache(lens.pipeline, [photo]))
        cache = EncodingCache(lens.pipeline, [photo])
        lens.pipeline.classify(cache)
        full_passes = []
        real_encode = tuned.encode
        tuned.encode = lambda *a, **k: full_passes.append(1) or real_encode(*a, **k)  # type: ignore[method-assign]
        staged = lens.pipeline.describe("other_product", cache)
        assert not full_passes
        np.testing.assert_allclose(staged, whole, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tuning_reencodes_a_milvus_store(tmp_path: Path, synthetic_catalogue: Path) -> None:
    """Re-encoding goes through the store interface only: the same on Milvus (Lite) as on the embedded store."""
    pytest.importorskip("milvus_lite", reason="pymilvus/milvus-lite not installed (pip install 'shoplens[milvus]')")
    from shoplens import Shoplens

    labelled = _labelled(tmp_path)
    config = {"embed.other_product.input_size": 64, "embed.other_product.extra_sizes": "96", "local.enabled": False,
              "intent.classifier": "test-other_product"}
    with Shoplens(f"milvus-lite:{tmp_path / 'milvus.db'}#cat", **config) as lens:
        lens.index(synthetic_catalogue)
        n = lens.store.count_images("other_product")
        report = lens.train_embedder(labelled)["other_product"]
        assert report.tail is not None and report.tail["tuned"] and report.tail["reencoded"] == n
        emb = lens.pipeline.embedders["other_product"]
        assert {im.signature for im in lens.store.iter_images()} == {emb.signature}
        assert lens.store.count_vectors("other_product") == n
        assert lens.search([tmp_path / "extra" / "p4_2.png"])[0].regions[0].results[0].product_id == "p4"

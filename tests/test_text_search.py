"""Text search: the text towers of CLIP and SigLIP checkpoints, and the search of a store with words.

Every model is a tiny randomly initialised one written to tmp_path in the
checkpoint layout the hub uses (weights, config.json, tokenizer files); the
tests compare against the same model run by hand through transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shoplens.errors import ConfigError, NoTextModelError
from shoplens.models import get_entry
from shoplens.models.text import create_text_model, list_text_loaders

from .conftest import make_image
from .test_loaders import _TEXT, _VISION, _processor_json, _write_clip_tokenizer, make_tiny_dinov2, needs_hf

pytestmark = needs_hf


def _tokenizer_ids(path: Path) -> dict[str, int]:
    vocab = json.loads((path / "vocab.json").read_text())
    return {"vocab_size": len(vocab), "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["!"]}


def make_clip_with_tokenizer(path: Path) -> Path:
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    _write_clip_tokenizer(path)
    torch.manual_seed(21)
    config = transformers.CLIPConfig(
        text_config=dict(_TEXT, **_tokenizer_ids(path)),
        vision_config=dict(_VISION, image_size=32, patch_size=8),
        projection_dim=24,
    )
    transformers.CLIPModel(config).save_pretrained(path)
    _processor_json(path, crop_size={"height": 32, "width": 32}, do_center_crop=True, do_normalize=True, do_rescale=True,
                    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                    resample=3, rescale_factor=1 / 255, size={"shortest_edge": 32}, image_processor_type="CLIPImageProcessor")
    return path


def make_siglip_with_tokenizer(path: Path) -> Path:
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    _write_clip_tokenizer(path)
    torch.manual_seed(22)
    config = transformers.SiglipConfig(
        text_config=dict(_TEXT, **_tokenizer_ids(path)), vision_config=dict(_VISION, image_size=32, patch_size=8)
    )
    transformers.SiglipModel(config).save_pretrained(path)
    _processor_json(path, do_normalize=True, do_rescale=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3,
                    rescale_factor=1 / 255, size={"height": 32, "width": 32}, image_processor_type="SiglipImageProcessor")
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip_with_tokenizer(tmp_path_factory.mktemp("text") / "clip")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_siglip_with_tokenizer(tmp_path_factory.mktemp("text") / "siglip")


def _features(out: object) -> torch.Tensor:
    """``get_text_features``' embedding: a tensor (transformers 4) or the output's ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


TEXTS = ["red rain jacket", "a carton of orange juice", "x"]


# -- the text towers -----------------------------------------------------------------------------

def test_clip_text_tower_is_the_models_text_features(clip_dir: Path) -> None:
    import transformers

    tower = create_text_model(f"local-dir:{clip_dir}")
    got = tower.encode_text(TEXTS)
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    batch = transformers.AutoTokenizer.from_pretrained(clip_dir)(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        expected = _features(model.get_text_features(**batch))
    assert got.shape == (3, 24) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-4)
    assert np.abs(got[0] - got[1]).max() > 1e-3  # texts of 16 tokens and more are cut, not refused
    # Padding does not change a text's embedding: alone or beside longer texts, the same vector.
    np.testing.assert_allclose(tower.encode_text(["x"])[0], got[2], atol=1e-5, rtol=1e-4)


def test_siglip_text_tower_reads_texts_padded_to_its_length(siglip_dir: Path) -> None:
    import transformers

    tower = create_text_model(f"local-dir:{siglip_dir}")
    got = tower.encode_text(TEXTS)
    model = transformers.SiglipModel.from_pretrained(siglip_dir).eval()
    batch = transformers.AutoTokenizer.from_pretrained(siglip_dir)(TEXTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        expected = _features(model.get_text_features(input_ids=batch["input_ids"]))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(tower.encode_text(["x"])[0], got[2], atol=1e-5, rtol=1e-4)


def test_backbones_without_a_text_tower_say_so(tmp_path: Path) -> None:
    assert list_text_loaders() == ["clip", "siglip"]
    with pytest.raises(NoTextModelError, match="efficientnet_lite0 has no text tower.*CLIP or SigLIP"):
        create_text_model("efficientnet_lite0")
    dinov2 = make_tiny_dinov2(tmp_path / "dinov2", processor=False)
    with pytest.raises(NoTextModelError, match="model type 'dinov2'.*no text tower"):
        create_text_model(f"local-dir:{dinov2}")
    # An alias keeps the name it stands for: its text tower is that checkpoint's.
    assert get_entry("fashion-clip").target == "hf-hub:patrickjohncyh/fashion-clip"
    assert get_entry("efficientnet_lite0").target is None


# -- a store searched with words -------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_store(tmp_path_factory: pytest.TempPathFactory, clip_dir: Path) -> Path:
    """A store of 8 products, 4 per domain, whose backbones are the tiny CLIP (other_product at 224 and 320 px + colour)."""
    from shoplens import Shoplens

    root = tmp_path_factory.mktemp("clip-store")
    rows = ["product_id,image,title,category,domain,price"]
    for i in range(8):
        make_image(root / "img" / f"p{i}.png", seed=40 + i, size=(96, 80))
        domain = "apparel" if i < 4 else "other_product"
        rows.append(f"p{i},img/p{i}.png,Product {i},{'tops' if i % 2 else 'bottoms'},{domain},{10 + i}")
    make_image(root / "img" / "p5b.png", seed=90, size=(96, 80))
    rows.append("p5,img/p5b.png,Product 5,tops,other_product,15")
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")
    with Shoplens(root / "store", **_clip_flags(clip_dir)) as lens:
        report = lens.index(root / "catalog.csv")
    assert not report.failed
    return root / "store"


def _clip_flags(clip_dir: Path) -> dict[str, object]:
    return {"embed.apparel.backbone": f"local-dir:{clip_dir}", "embed.other_product.backbone": f"local-dir:{clip_dir}",
            "local.enabled": False}


def _by_hand(lens: object, clip_dir: Path, domain: str, text: str) -> dict[str, float]:
    """Each product's smallest distance to the text (L2 between unit vectors): the text's unit embedding against each stored
    image's unit embedding at every input size (the colour part left out, as the identity head does)."""
    import transformers

    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    batch = transformers.AutoTokenizer.from_pretrained(clip_dir)([text], truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        t = _features(model.get_text_features(**batch))[0].numpy()
    t = t / np.linalg.norm(t)
    store = lens.store  # type: ignore[attr-defined]
    sizes = len(lens.pipeline.embedders[domain].input_sizes)  # type: ignore[attr-defined]
    best: dict[str, float] = {}
    for ids, raw in store.iter_raw(domain):
        for i, r in zip(ids.tolist(), raw):
            blocks = r[: sizes * len(t)].reshape(sizes, len(t))
            dot = float(np.sum(blocks @ t)) / (np.sqrt(sizes) * np.linalg.norm(blocks))
            pid = store.image_products([i])[i]
            best[pid] = min(best.get(pid, 2.0), float(np.sqrt(max(2.0 - 2.0 * dot, 0.0))))
    return best


def test_text_search_ranks_products_by_their_distance_to_the_text(clip_store: Path, clip_dir: Path) -> None:
    from shoplens import open_store

    with open_store(clip_store, read_only=True) as lens:
        assert lens.pipeline.embedders["other_product"].input_sizes == (224, 320) and lens.config.embed.other_product.colour > 0
        [result] = lens.search_text("red rain jacket", top_k=3)
        assert result.text == "red rain jacket" and sorted(result.domains) == ["apparel", "other_product"]
        assert result.steps["text"] == {d: f"local-dir:{clip_dir}" for d in ("apparel", "other_product")}
        assert {r.domain for r in result.regions} == {"apparel", "other_product"}
        assert result.regions[0].results[0].rank >= result.regions[1].results[0].rank  # the list with the best hit first
        for region in result.regions:
            expected = _by_hand(lens, clip_dir, region.domain or "", "red rain jacket")
            ranked = sorted(expected, key=expected.__getitem__)[:3]
            assert [h.product_id for h in region.results] == ranked  # each product once (p5 has two photos), nearest first
            for hit in region.results:
                assert hit.distance == pytest.approx(expected[hit.product_id], abs=2e-4)
                assert hit.rank == pytest.approx(2.0 - hit.distance, abs=1e-4) and hit.precision is None
                assert hit.title == f"Product {hit.product_id[1:]}" and hit.matched_image_id is not None
            assert region.reason is None and region.box is None
        assert set(result.timings_ms) >= {"embed_text", "search", "total"}


def test_text_search_takes_filters_and_a_domain(clip_store: Path) -> None:
    from shoplens import open_store

    with open_store(clip_store, read_only=True) as lens:
        [tops] = lens.search_text("a shirt", filters=["category=tops"], domain="apparel")
        assert tops.domains == ["apparel"] and len(tops.regions) == 1
        assert {h.product_id for h in tops.regions[0].results} == {"p1", "p3"}
        [none] = lens.search_text("a shirt", filters=["price>100"], domain="other_product")
        assert none.regions[0].results == [] and none.regions[0].reason is not None
        assert none.regions[0].reason.step == "filters"
        two = lens.search_text(["a shirt", "juice"], top_k=1)
        assert [r.text for r in two] == ["a shirt", "juice"] and all(len(g.results) == 1 for r in two for g in r.regions)
        with pytest.raises(ConfigError, match="non-empty"):
            lens.search_text("   ")
        with pytest.raises(ConfigError, match="at most 1000 characters"):
            lens.search_text("a" * 1001)
        with pytest.raises(ConfigError, match="domain must be one of"):
            lens.search_text("a shirt", domain="shoes")


def test_a_store_without_a_text_tower_refuses_text_search(tmp_path: Path, synthetic_catalogue: Path) -> None:
    from shoplens import Shoplens

    with Shoplens(tmp_path / "store", **{"local.enabled": False}) as lens:
        lens.index(synthetic_catalogue)
        with pytest.raises(NoTextModelError, match="other_product: the backbone efficientnet_lite0 has no text tower"):
            lens.search_text("red")
    with Shoplens(tmp_path / "empty") as lens, pytest.raises(NoTextModelError, match="no products"):
        lens.search_text("red")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from shoplens.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_searches_with_text(clip_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "search", "--store", str(clip_store), "--text", "red rain jacket", "--text", "juice",
                          "--top-k", "2", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["text"] for d in lines] == ["red rain jacket", "juice"]
    assert all(len(region["results"]) == 2 for d in lines for region in d["regions"])
    code, out, _ = _cli(capsys, "search", "--store", str(clip_store), "--text", "juice", "--domain", "other_product")
    assert code == 0 and "'juice': searched other_product with local-dir:" in out
    assert "2 result(s)" not in out and " 1. p" in out
    code, _, err = _cli(capsys, "search", "--store", str(clip_store))
    assert code != 0 and "give photos to search with, or words with --text" in err
    code, _, err = _cli(capsys, "search", "--store", str(clip_store), "--text", "juice", "--box", "0,0,5,5")
    assert code != 0 and "does not go with --text" in err


def _post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    import httpx

    r = httpx.post(url, json=body, headers=headers or {}, timeout=60)
    return r.status_code, r.json()


def test_http_text_search(clip_store: Path, tmp_path: Path, synthetic_catalogue: Path) -> None:
    pytest.importorskip("fastapi", reason="the server tests need the [server] extra")
    import httpx

    from shoplens import Shoplens, open_store
    from shoplens.server import ServerSettings, create_app

    from .serverutil import LiveServer

    with open_store(clip_store, read_only=True) as lens:
        expected = lens.search_text("red rain jacket", top_k=2)[0]
        with LiveServer(create_app(lens, ServerSettings(read_key="text-read-key-0123456789"))) as server:
            server.wait_ready()
            ready = httpx.get(f"{server.url}/readyz", headers={"X-API-Key": "text-read-key-0123456789"}).json()
            assert sorted(ready["text_search"]) == ["apparel", "other_product"]
            status, _ = _post(f"{server.url}/search/text", {"text": "red rain jacket"})
            assert status == 401  # a read like any search
            auth = {"X-API-Key": "text-read-key-0123456789"}
            status, body = _post(f"{server.url}/search/text", {"text": "red rain jacket", "top_k": 2}, auth)
            assert status == 200, body
            assert body["text"] == "red rain jacket" and body["domains"] == expected.domains
            served = [[h["product_id"] for h in r["results"]] for r in body["regions"]]  # type: ignore[union-attr]
            assert served == [[h.product_id for h in r.results] for r in expected.regions]
            hit = body["regions"][0]["results"][0]  # type: ignore[index]
            image_id = int(hit["image_url"].split("/")[2])
            assert image_id in {im.image_id for im in lens.product_images(hit["product_id"])}  # the photo that matched
            assert hit["image_url"].startswith(f"/images/{image_id}/thumbnail?size=256&v=")
            assert httpx.get(server.url + hit["image_url"], headers=auth).status_code == 200
            status, body = _post(f"{server.url}/search/text", {"text": "shirt", "filters": ["category=tops"], "domain": "apparel"}, auth)
            assert status == 200 and {h["product_id"] for h in body["regions"][0]["results"]} == {"p1", "p3"}  # type: ignore[index]
            for bad in ({"text": ""}, {"text": "a" * 1001}, {"text": "a", "top_k": 10_000}, {"text": "a", "domain": "shoes"},
                        {"text": "a", "other": 1}, {"words": "a"}):
                status, body = _post(f"{server.url}/search/text", bad, auth)
                assert status == 422 and body["code"] == "invalid_request", (bad, body)
            status, body = _post(f"{server.url}/search/text", {"text": "a", "filters": ["price<<3"]}, auth)
            assert status == 400 and body["code"] == "bad_filter"
    with Shoplens(tmp_path / "store", **{"local.enabled": False}) as lens:
        lens.index(synthetic_catalogue)
        with LiveServer(create_app(lens, ServerSettings())) as server:
            server.wait_ready()
            assert httpx.get(f"{server.url}/readyz").json()["text_search"] == []
            status, body = _post(f"{server.url}/search/text", {"text": "red"})
            assert status == 400 and body["code"] == "no_text_model"
            assert "efficientnet_lite0 has no text tower" in str(body["error"])


"""Result cards over HTTP: each hit's `image_url`, the cached thumbnails it points at, the page's card fields.

A small store of real photos (../shared/data: grocery packages and landscape
wallpapers larger than the largest thumbnail), the real backbone, a test
intent classifier.
"""

# ruff: noqa: I001 - serverutil comes first: it skips the module without the [server] extra

from __future__ import annotations

import html
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .serverutil import AUTH, KEY  # first: skips this module without the [server] extra

from fastapi.testclient import TestClient
from PIL import Image

from shoplens import Shoplens
from shoplens.errors import ConfigError
from shoplens.server import ServerSettings, create_app
from shoplens.server.thumbnails import THUMBNAILS_DIR

from . import test_engine  # noqa: F401  (registers the test-* classifiers and detector)

LOOSE = {"search.rank_filter": False, "search.entropy_filter": False, "search.category_order": False}
READ_KEY = "read-key-0123456789abcdef"
JUICE = "grocery/photos/train/Packages/Juice/Bravo-Apple-Juice/Bravo-Apple-Juice_00{}.jpg"
MILK = "grocery/photos/train/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_00{}.jpg"
WIDE = "nonproduct/images/wallpaper_{}.jpg"


@pytest.fixture(scope="module")
def photos(data_dir: Path) -> dict[str, bytes]:
    names = {"juice1": JUICE.format(1), "juice2": JUICE.format(2), "milk1": MILK.format(1), "milk2": MILK.format(2),
             "bridge": WIDE.format("Bridge_by_Sander_Klootwijk"), "canopee": WIDE.format("Canopee"), "ripple": WIDE.format("ColdRipple")}
    out = {}
    for key, rel in names.items():
        path = data_dir / rel
        if not path.exists():
            pytest.skip(f"real photo {rel} not found under {data_dir}")
        out[key] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def lens(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, bytes]) -> Iterator[Shoplens]:
    root = tmp_path_factory.mktemp("cards")
    rows = ["product_id,image,title,category,price,url"]
    for key in ("juice1", "milk1", "bridge"):
        (root / f"{key}.jpg").write_bytes(photos[key])
    rows += ["juice,juice1.jpg,Bravo Apple Juice,Juice,2.5,https://shop.example/juice",
             "milk,milk1.jpg,Arla Milk,Milk,1.25,https://shop.example/milk",
             "milk,bridge.jpg,Arla Milk,Milk,1.25,https://shop.example/milk"]  # two photos of one product
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")
    with Shoplens(root / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        lens.index(root / "catalog.csv")
        yield lens


@pytest.fixture(scope="module")
def client(lens: Shoplens) -> Iterator[TestClient]:
    with TestClient(create_app(lens, ServerSettings(api_key=KEY))) as c:
        yield c


def search_hits(client: TestClient, data: bytes, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = client.post("/search", files={"photo": ("q.jpg", data, "image/jpeg")}, headers=headers or {})
    assert r.status_code == 200, r.text
    return list(r.json()["regions"][0]["results"])


def hit_of(hits: list[dict[str, Any]], product_id: str) -> dict[str, Any]:
    return next(h for h in hits if h["product_id"] == product_id)


def image_id_of(url: str) -> int:
    match = re.fullmatch(r"/images/(\d+)/thumbnail\?size=256&v=([0-9a-f]{16})", url)
    assert match, url
    return int(match.group(1))


def thumbnails(lens: Shoplens) -> set[str]:
    root = lens.store.root / THUMBNAILS_DIR
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def put(client: TestClient, product_id: str, *datas: bytes) -> Any:
    form = {"product": json.dumps({"product_id": product_id, "title": product_id, "metadata": {"price": 3}})}
    files = [("photos", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(datas)]
    r = client.post("/products", data=form, files=files, headers=AUTH)
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_each_hit_has_the_thumbnail_of_the_photo_that_matched(client: TestClient, lens: Shoplens, photos: dict[str, bytes]) -> None:
    hits = search_hits(client, photos["bridge"])
    milk = hit_of(hits, "milk")
    assert milk["title"] == "Arla Milk" and milk["price"] == 1.25 and milk["url"] == "https://shop.example/milk"
    # milk has two photos; the query is its second one, and the card shows that one, not the first
    ids = {source.rsplit("/", 1)[-1]: i for i, _, source in lens.product_images("milk")}
    assert image_id_of(milk["image_url"]) == ids["bridge.jpg"]
    assert image_id_of(hit_of(search_hits(client, photos["milk1"]), "milk")["image_url"]) == ids["milk1.jpg"]
    assert all(image_id_of(h["image_url"]) in {i for i, _, _ in lens.product_images(h["product_id"])} for h in hits)

    # the CLI's --json (the Python API's result) carries no image_url: there is no server to point at
    direct = lens.search([photos["bridge"]])[0].model_dump(mode="json")
    assert all("image_url" not in h for h in direct["regions"][0]["results"])
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "image_url" in schema["ProductHit"]["properties"] and "/thumbnail" in client.get("/openapi.json").text


def test_a_thumbnail_is_a_small_image_made_once_then_served_from_the_cache(client: TestClient, lens: Shoplens, photos: dict[str, bytes]) -> None:
    url = hit_of(search_hits(client, photos["bridge"]), "milk")["image_url"]  # a 640 x 360 photo
    first = client.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(first.content))
    assert img.format == "JPEG" and img.size == (256, 144)  # longest side 256, the photo's proportions
    assert len(first.content) < len(photos["bridge"]) / 2
    assert first.headers["x-thumbnail-cache"] == "miss" and first.headers["cache-control"] == "public, max-age=86400, immutable"
    etag = first.headers["etag"]
    assert etag and first.headers["vary"] == "Accept"

    kept = thumbnails(lens)
    second = client.get(url)
    assert second.headers["x-thumbnail-cache"] == "hit" and second.headers["etag"] == etag and second.content == first.content
    assert thumbnails(lens) == kept
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304

    image_id = image_id_of(url)
    small = client.get(f"/images/{image_id}/thumbnail?size=128")
    assert Image.open(io.BytesIO(small.content)).size == (128, 72) and small.headers["etag"] != etag
    large = client.get(f"/images/{image_id}/thumbnail?size=512", headers={"Accept": "image/avif,image/webp,*/*"})
    assert large.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(large.content)).format == "WEBP" and Image.open(io.BytesIO(large.content)).size == (512, 288)
    # a photo smaller than the size asked is not enlarged (the grocery photos are 348 x 348)
    juice = image_id_of(hit_of(search_hits(client, photos["juice1"]), "juice")["image_url"])
    assert Image.open(io.BytesIO(client.get(f"/images/{juice}/thumbnail?size=512").content)).size == (348, 348)
    # no version in the URL: the answer is revalidated, not kept
    assert client.get(f"/images/{image_id}/thumbnail").headers["cache-control"] == "public, no-cache"


def test_bad_sizes_and_unknown_images(client: TestClient, lens: Shoplens) -> None:
    image_id = lens.product_images("juice")[0][0]
    for size in ("100", "0", "-256", "1024"):
        r = client.get(f"/images/{image_id}/thumbnail?size={size}")
        assert r.status_code == 400 and r.json()["code"] == "bad_size" and "128, 256, 512" in r.json()["error"], size
    assert client.get(f"/images/{image_id}/thumbnail?size=big").json()["code"] == "invalid_request"
    r = client.get("/images/987654321/thumbnail")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_the_thumbnail_is_turned_as_exif_says(client: TestClient, photos: dict[str, bytes]) -> None:
    src = Image.open(io.BytesIO(photos["canopee"]))  # 640 x 360, stored turned: a person sees it 360 x 640
    exif = src.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    src.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    product = put(client, "turned", buf.getvalue())
    thumb = client.get(product["product"]["images"][0]["url"] + "/thumbnail")
    assert Image.open(io.BytesIO(thumb.content)).size == (144, 256)
    assert client.delete("/products/turned", headers=AUTH).status_code == 204


def test_a_replaced_photo_gets_a_new_url_and_its_old_thumbnails_go(client: TestClient, lens: Shoplens, photos: dict[str, bytes]) -> None:
    put(client, "swap", photos["ripple"])
    old = hit_of(search_hits(client, photos["ripple"]), "swap")["image_url"]
    old_etag = client.get(old).headers["etag"]
    client.get(f"/images/{image_id_of(old)}/thumbnail?size=128")
    assert sum(1 for n in thumbnails(lens) if n.startswith(old_etag.strip('"')[:40])) == 2

    put(client, "swap", photos["canopee"])  # re-added with another photo
    new = hit_of(search_hits(client, photos["canopee"]), "swap")["image_url"]
    assert new != old
    fresh = client.get(new)
    assert fresh.status_code == 200 and fresh.headers["etag"] != old_etag
    assert not any(n.startswith(old_etag.strip('"')[:40]) for n in thumbnails(lens))  # cleaned after the write
    assert client.get(old).status_code == 404  # that image is gone

    # PUT /products/{id}/photos, the same
    r = client.put("/products/swap/photos", files=[("photos", ("m.jpg", photos["milk2"], "image/jpeg"))], headers=AUTH)
    assert r.status_code == 200
    assert not any(n.startswith(fresh.headers["etag"].strip('"')[:40]) for n in thumbnails(lens))

    # deleting the product removes its thumbnails; a photo another product shares keeps them
    put(client, "twin", photos["milk2"])
    shared = client.get(hit_of(search_hits(client, photos["milk2"]), "twin")["image_url"]).headers["etag"].strip('"')[:40]
    assert any(n.startswith(shared) for n in thumbnails(lens))
    assert client.delete("/products/swap", headers=AUTH).status_code == 204
    assert any(n.startswith(shared) for n in thumbnails(lens))  # twin still has that photo
    r = client.post("/products/batch-delete", json={"product_ids": ["twin"]}, headers=AUTH)
    assert r.json()["deleted"] == ["twin"]
    assert not any(n.startswith(shared) for n in thumbnails(lens))


def test_thumbnails_of_photos_gone_while_stopped_are_swept_at_start(lens: Shoplens) -> None:
    stale = lens.store.root / THUMBNAILS_DIR / "ab" / ("ab" * 20 + "-256.jpg")
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an old thumbnail")
    with TestClient(create_app(lens, ServerSettings())):
        deadline = time.monotonic() + 30
        while stale.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not stale.exists()


def test_thumbnails_need_the_read_key(lens: Shoplens, photos: dict[str, bytes]) -> None:
    reader = {"X-API-Key": READ_KEY}
    with TestClient(create_app(lens, ServerSettings(api_key=KEY, read_key=READ_KEY))) as c:
        url = hit_of(search_hits(c, photos["juice1"], reader), "juice")["image_url"]
        r = c.get(url)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert c.get(url, headers={"X-API-Key": "wrong-key-wrong-key"}).status_code == 401
        assert c.get(url, headers={"If-None-Match": "*"}).status_code == 401  # no 304 without the key either
        ok = c.get(url, headers=reader)
        assert ok.status_code == 200 and ok.headers["cache-control"].startswith("private")
        assert c.get(url, headers=AUTH).status_code == 200  # the write key grants reads


def test_card_fields_reach_the_page_escaped(lens: Shoplens) -> None:
    evil = 'x"><script>alert(1)</script>'
    assert ServerSettings.from_env(card_fields=["price"]).card_fields == ("price",)
    for bad in ("a,b", "", "tab\there"):
        with pytest.raises(ConfigError, match="card field"):
            ServerSettings(card_fields=(bad,))
    with TestClient(create_app(lens, ServerSettings(card_fields=("price", "url", evil)))) as c:
        page = c.get("/").text
    assert "<script>alert" not in page and 'x">' not in page
    content = re.search(r'<meta name="shoplens-card-fields" content="([^"]*)">', page)
    assert content is not None and json.loads(html.unescape(content.group(1))) == ["price", "url", evil]
    with TestClient(create_app(lens, ServerSettings())) as c:
        default = re.search(r'<meta name="shoplens-card-fields" content="([^"]*)">', c.get("/").text)
    assert default is not None and json.loads(html.unescape(default.group(1))) == []


def test_serve_takes_card_fields_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shoplens.server
    from shoplens.cli import main

    seen: list[ServerSettings] = []
    monkeypatch.setattr(shoplens.server, "serve", lambda _lens, settings, **_: seen.append(settings))
    assert main(["serve", "--store", str(tmp_path / "store"), "--create", "--card-fields", "price, url,,brand"]) == 0
    assert seen[0].card_fields == ("price", "url", "brand")
    assert main(["serve", "--store", str(tmp_path / "store")]) == 0
    assert seen[1].card_fields == ()

"""The HTTP API over a real store (generated photos, the real backbone, test intent classifiers)."""

# ruff: noqa: I001 - serverutil comes first: it skips the module without the [server] extra

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest

from .serverutil import AUTH, KEY, LiveServer, bad_photos, encode, odd_but_good_photos, picture, spy_on_search_slots  # first: skips this module without the [server] extra

from fastapi.testclient import TestClient

from shoplens import Shoplens
from shoplens.errors import ConfigError
from shoplens.server import ServerSettings, create_app

from . import test_engine  # noqa: F401  (registers the test-* classifiers and detector)

SPEC_KEYS = {"image", "intent", "intent_scores", "regions", "timings_ms", "steps"}
#: SPEC's keys and the optional ones shoplens adds (docs/decisions.md: the predicted intent beside the domain searched).
SEARCH_KEYS = SPEC_KEYS | {"predicted_intent", "domain", "reason"}
LOOSE = {"search.rank_filter": False, "search.entropy_filter": False, "search.category_order": False}


def photo(seed: int) -> bytes:
    return encode(picture(seed), "PNG")


@pytest.fixture(scope="module")
def lens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shoplens]:
    root = tmp_path_factory.mktemp("server")
    rows = ["product_id,image,title,category,domain,price,sku"]
    for i in range(6):
        (root / f"p{i}.png").write_bytes(photo(i))
        rows.append(f"p{i},p{i}.png,Product {i},{'red' if i < 3 else 'blue'},other_product,{10 + i}.5,00{i}")
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")
    with Shoplens(root / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        lens.index(root / "catalog.csv")
        yield lens


@pytest.fixture(scope="module")
def client(lens: Shoplens) -> Iterator[TestClient]:
    with TestClient(create_app(lens, ServerSettings(api_key=KEY, max_upload_bytes=2_000_000, max_pixels=5_000_000))) as c:
        yield c


def search(client: TestClient, data: bytes, name: str = "q.png", **form: Any) -> Any:
    return client.post("/search", files={"photo": (name, data, "application/octet-stream")}, data=form)


def assert_error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    if code is not None:
        assert body["code"] == code, body
    return body


def test_search_answers_the_spec_object(client: TestClient, lens: Shoplens) -> None:
    r = search(client, photo(2), top_k="3")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == SEARCH_KEYS and body["image"] == "q.png" and body["intent"] == "other_product"
    hits = body["regions"][0]["results"]
    assert hits[0]["product_id"] == "p2" and len(hits) == 3
    assert hits[0]["price"] == 12.5 and hits[0]["sku"] == "002" and hits[0]["title"] == "Product 2"
    direct = lens.search([photo(2)], top_k=3)[0].model_dump(mode="json")
    assert [h["product_id"] for h in direct["regions"][0]["results"]] == [h["product_id"] for h in hits]
    assert [h["rank"] for h in direct["regions"][0]["results"]] == [h["rank"] for h in hits]


def test_a_large_photo_is_decoded_as_the_cli_decodes_it(client: TestClient, lens: Shoplens) -> None:
    big = encode(picture(2).resize((1600, 1200)), "JPEG", quality=90)  # the gate reads a preview, the rest the photo in full
    r = search(client, big, name="big.jpg", top_k="3")
    assert r.status_code == 200, r.text
    hits = r.json()["regions"][0]["results"]
    direct = lens.search([big], top_k=3)[0].model_dump(mode="json")
    assert [(h["product_id"], h["rank"]) for h in direct["regions"][0]["results"]] == [(h["product_id"], h["rank"]) for h in hits]
    assert hits[0]["product_id"] == "p2"


def test_filters_over_http(client: TestClient) -> None:
    r = search(client, photo(0), filter=["category=blue", "price<15"])
    assert r.status_code == 200
    assert sorted(h["product_id"] for h in r.json()["regions"][0]["results"]) == ["p3", "p4"]  # blue and under 15
    body = assert_error(search(client, photo(0), filter=["price<<3"]), 400, "bad_filter")
    assert "price<<3" in body["error"]
    assert_error(search(client, photo(0), filter=["nothing here"]), 400, "bad_filter")


def test_a_stopped_photo_is_searched_anyway_with_domain(lens: Shoplens) -> None:
    """`domain` on POST /search and /search/url: the gate's non_product stop is overridden, its verdict kept."""
    from shoplens import open_store

    gate = {"intent.classifier": "test-non_product", "intent.stop_score": 0.8}
    with open_store(lens.store.location, read_only=True, **gate) as stopping, TestClient(create_app(stopping, ServerSettings())) as c:
        body = search(c, photo(2)).json()
        assert body["intent"] == "non_product" and body["regions"] == [] and body["domain"] is None
        assert body["reason"]["step"] == "intent" and "stop_score 0.8" in body["reason"]["message"]
        r = search(c, photo(2), domain="other_product")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["intent"], body["domain"], body["predicted_intent"]) == ("other_product", "other_product", "non_product")
        assert body["regions"][0]["results"][0]["product_id"] == "p2" and body["reason"] is None
        assert_error(search(c, photo(2), domain="non_product"), 422, "invalid_request")
        assert_error(c.post("/search/url", json={"url": "http://example.invalid/a.png", "domain": "shoes"}), 422, "invalid_request")
        # A JSON body without its url is an invalid request, not a photo upload in the wrong content type.
        assert_error(c.post("/search/url", json={"domain": "apparel"}), 422, "invalid_request")


def test_an_empty_list_says_why_over_http(client: TestClient) -> None:
    region = search(client, photo(0), filter=["category=green"]).json()["regions"][0]
    assert region["results"] == [] and region["reason"]["step"] == "filters"
    assert region["reason"]["message"] == "no other_product product passes the filters" and region["reason"]["hint"]
    region = search(client, photo(0)).json()["regions"][0]
    assert region["results"] and region["reason"] is None


def test_numbers_beyond_the_store_are_a_bad_filter_and_the_connection_stays(lens: Shoplens) -> None:
    """Not a 500 (an OverflowError in SQLite, a ValueError from int()), and uvicorn keeps the connection open."""
    import http.client

    body = b"".join([
        b'--b\r\nContent-Disposition: form-data; name="photo"; filename="q.png"\r\n\r\n', photo(0), b"\r\n",
        b'--b\r\nContent-Disposition: form-data; name="filter"\r\n\r\nFILTER\r\n--b--\r\n',
    ])
    with LiveServer(create_app(lens, ServerSettings())) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            for huge in (b"price<=99999999999999999999", b"price<=" + b"9" * 5000, b"price=1|-" + b"9" * 25):
                conn.request("POST", "/search", body=body.replace(b"FILTER", huge), headers={"Content-Type": "multipart/form-data; boundary=b"})
                r = conn.getresponse()
                answer = json.loads(r.read())
                assert r.status == 400 and answer["code"] == "bad_filter", answer
                assert answer["error"].startswith("filter 'price") and "outside the range" in answer["error"] or "characters" in answer["error"]
                assert len(answer["error"]) < 400 and r.getheader("connection") != "close"
            sock = conn.sock
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200 and conn.sock is sock  # the same keep-alive connection
        finally:
            conn.close()


def test_product_lifecycle(client: TestClient) -> None:
    fields = {"product_id": "shoe/42", "title": "Red shoe", "category": "shoes", "metadata": {"price": 59.9, "brand": "Acme", "in_stock": True}}
    files = [("photos", ("a.png", photo(100), "image/png")), ("photos", ("b.png", photo(101), "image/png"))]
    r = client.post("/products", data={"product": json.dumps(fields)}, files=files, headers=AUTH)
    assert r.status_code == 201, r.text
    product = r.json()["product"]
    assert product["product_id"] == "shoe/42" and product["metadata"] == fields["metadata"] and len(product["images"]) == 2
    assert r.json()["report"]["images_added"] == 2
    # the same again: replaced (200), nothing re-embedded
    r = client.post("/products", data={"product": json.dumps(fields)}, files=files, headers=AUTH)
    assert r.status_code == 200 and r.json()["report"]["images_unchanged"] == 2

    assert client.get("/products/shoe/42").json()["title"] == "Red shoe"  # ids with '/' work
    assert client.get("/products/shoe%2F42").json()["product_id"] == "shoe/42"
    image = client.get(product["images"][0]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content == photo(100)
    assert client.get("/images/of-product/shoe/42").content == photo(100)
    hit = search(client, photo(101)).json()["regions"][0]["results"][0]
    assert hit["product_id"] == "shoe/42" and hit["brand"] == "Acme"
    assert search(client, photo(0), filter=["in_stock=true"]).json()["regions"][0]["results"][0]["product_id"] == "shoe/42"

    r = client.patch("/products/shoe/42", json={"title": "Crimson shoe", "metadata": {"brand": None, "size": 42}}, headers=AUTH)
    assert r.status_code == 200 and r.json()["title"] == "Crimson shoe"
    assert r.json()["metadata"] == {"price": 59.9, "in_stock": True, "size": 42} and r.json()["category"] == "shoes"

    r = client.put("/products/shoe/42/photos", files=[("photos", ("c.png", photo(102), "image/png"))], headers=AUTH)
    assert r.status_code == 200 and len(r.json()["product"]["images"]) == 1 and r.json()["report"]["images_removed"] == 2
    assert r.json()["product"]["title"] == "Crimson shoe"
    assert search(client, photo(102)).json()["regions"][0]["results"][0]["product_id"] == "shoe/42"
    old = search(client, photo(101), filter=["product_id=shoe/42"]).json()["regions"][0]["results"]
    assert len(old) == 1 and old[0]["distance"] > 1e-3  # the replaced photo's vector is gone

    listing = client.get("/products", params={"offset": 0, "limit": 3}).json()
    assert listing["total"] == 7 and len(listing["items"]) == 3
    rest = client.get("/products", params={"offset": 3, "limit": 100}).json()["items"]
    assert sorted(p["product_id"] for p in listing["items"] + rest) == sorted([f"p{i}" for i in range(6)] + ["shoe/42"])

    assert client.delete("/products/shoe/42", headers=AUTH).status_code == 204
    assert_error(client.get("/products/shoe/42"), 404, "not_found")
    assert_error(client.delete("/products/shoe/42", headers=AUTH), 404, "not_found")
    assert_error(client.get(product["images"][0]["url"]), 404, "not_found")
    assert all(h["product_id"] != "shoe/42" for h in search(client, photo(102)).json()["regions"][0]["results"])


def test_batch_add_and_delete(client: TestClient) -> None:
    products = [{"product_id": f"b{i}", "category": "batch", "photos": [f"b{i}.png"], "metadata": {"n": i}} for i in range(3)]
    files = [("photos", (f"b{i}.png", photo(200 + i), "image/png")) for i in range(3)]
    r = client.post("/products/batch", data={"products": json.dumps(products)}, files=files, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [p["product_id"] for p in r.json()["products"]] == ["b0", "b1", "b2"]
    # all or nothing: one bad photo refuses the whole batch
    products.append({"product_id": "b3", "photos": ["bad.png"]})
    bad = files + [("photos", ("bad.png", b"not a photo", "image/png"))]
    body = assert_error(client.post("/products/batch", data={"products": json.dumps([{**p, "product_id": "x" + p["product_id"]} for p in products])}, files=bad, headers=AUTH), 422, "bad_image")
    assert "xb3" in body["error"]
    assert client.get("/products/xb0").status_code == 404
    assert_error(client.post("/products/batch", data={"products": json.dumps([{"product_id": "m", "photos": ["nope.png"]}])}, files=files, headers=AUTH), 422, "bad_product")
    r = client.post("/products/batch-delete", json={"product_ids": ["b0", "b1", "b2", "ghost"]}, headers=AUTH)
    assert r.json() == {"deleted": ["b0", "b1", "b2"], "missing": ["ghost"]}
    assert client.get("/products/b1").status_code == 404


def test_refused_uploads_write_no_photo_and_deletes_remove_them(client: TestClient, lens: Shoplens) -> None:
    photos = lens.store.root / "photos"

    def kept() -> set[str]:
        return {p.name for p in photos.rglob("*") if p.is_file()} if photos.exists() else set()

    before = kept()
    good = photo(500)
    truncated = dict(bad_photos())["truncated.png"]
    form = {"product": json.dumps({"product_id": "files/1"})}
    files = [("photos", ("good.png", good, "image/png")), ("photos", ("truncated.png", truncated, "image/png"))]
    assert_error(client.post("/products", data=form, files=files, headers=AUTH), 422, "bad_image")
    batch = [{"product_id": "files/2", "photos": ["good.png"]}, {"product_id": "files/3", "photos": ["truncated.png"]}]
    assert_error(client.post("/products/batch", data={"products": json.dumps(batch)}, files=files, headers=AUTH), 422, "bad_image")
    assert kept() == before  # the good photo was checked, never written

    r = client.post("/products", data=form, files=files[:1], headers=AUTH)
    assert r.status_code == 201 and len(kept()) == len(before) + 1
    r = client.put("/products/files/1/photos", files=[("photos", ("other.png", photo(501), "image/png"))], headers=AUTH)
    assert r.status_code == 200 and len(kept()) == len(before) + 1  # the replaced photo went
    assert client.delete("/products/files/1", headers=AUTH).status_code == 204
    assert kept() == before


def test_writes_need_the_key(lens: Shoplens, client: TestClient) -> None:
    form = {"product": json.dumps({"product_id": "k1"})}
    files = [("photos", ("a.png", photo(300), "image/png"))]
    assert_error(client.post("/products", data=form, files=files), 401, "unauthorized")
    assert_error(client.post("/products", data=form, files=files, headers={"X-API-Key": "wrong-key-wrong-key"}), 401, "unauthorized")
    assert_error(client.delete("/products/p1"), 401)
    assert_error(client.patch("/products/p1", json={"title": "x"}), 401)
    assert_error(client.post("/products/batch-delete", json={"product_ids": ["p1"]}), 401)
    assert client.get("/products/p1").status_code == 200  # untouched
    r = client.post("/products", data=form, files=files, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 201
    assert client.delete("/products/k1", headers={"Authorization": f"Bearer {KEY}"}).status_code == 204

    with TestClient(create_app(lens, ServerSettings())) as open_client:  # no key configured
        body = assert_error(open_client.post("/products", data=form, files=files, headers=AUTH), 403, "writes_disabled")
        assert "SHOPLENS_API_KEY" in body["error"]
        assert_error(open_client.delete("/products/p1", headers=AUTH), 403)
        assert search(open_client, photo(1)).status_code == 200 and open_client.get("/products/p1").status_code == 200
    with pytest.raises(ConfigError, match="too short"):
        ServerSettings(api_key="secret")


READ_KEY = "read-key-0123456789abcdef"


def test_a_read_key_protects_search_products_photos_and_metrics(lens: Shoplens) -> None:
    settings = ServerSettings(api_key=KEY, read_key=READ_KEY)
    reader, writer, wrong = {"X-API-Key": READ_KEY}, AUTH, {"X-API-Key": "wrong-key-wrong-key"}
    image = f"/images/{lens.product_images('p1')[0][0]}"
    reads = [("GET", "/products"), ("GET", "/products/p1"), ("GET", "/images/of-product/p1"), ("GET", image), ("GET", "/metrics")]
    with TestClient(create_app(lens, settings)) as c:
        for method, path in reads:
            body = assert_error(c.request(method, path), 401, "unauthorized")
            assert "read key" in body["error"], path
            assert_error(c.request(method, path, headers=wrong), 401, "unauthorized")
            assert c.request(method, path, headers=reader).status_code == 200, path
            assert c.request(method, path, headers=writer).status_code == 200, path  # the write key grants reads
        assert c.get(image, headers={"Authorization": f"Bearer {READ_KEY}"}).headers["cache-control"].startswith("private")
        assert_error(search(c, photo(1)), 401, "unauthorized")
        assert_error(c.post("/search/url", json={"url": "http://127.0.0.1:9/x.png"}), 401, "unauthorized")
        r = c.post("/search", files={"photo": ("q.png", photo(1), "image/png")}, headers=reader)
        assert r.status_code == 200 and r.json()["regions"][0]["results"][0]["product_id"] == "p1"
        # the read key writes nothing
        form, files = {"product": json.dumps({"product_id": "r1"})}, [("photos", ("a.png", photo(600), "image/png"))]
        assert_error(c.post("/products", data=form, files=files, headers=reader), 401, "unauthorized")
        assert_error(c.delete("/products/p1", headers=reader), 401, "unauthorized")
        assert c.get("/products/p1", headers=reader).status_code == 200
        # open: liveness, readiness (without the catalogue's size), the page, its files, the schema
        for path in ("/healthz", "/", "/static/app.js", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        deadline = time.monotonic() + 60
        while (ready := c.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.json()["reads_need_key"] is True and ready.json()["products"] is None
        assert c.get("/readyz", headers=reader).json()["products"] == lens.count_products()
    with TestClient(create_app(lens, ServerSettings(api_key=KEY))) as c:  # no read key: reads stay open
        assert all(c.request(m, p).status_code == 200 for m, p in reads)
        assert c.get("/readyz").json()["reads_need_key"] is False
    with pytest.raises(ConfigError, match="too short"):
        ServerSettings(read_key="secret")
    with pytest.raises(ConfigError, match="two different keys"):
        ServerSettings(api_key=KEY, read_key=KEY)


def test_a_search_without_the_read_key_is_refused_before_its_body_is_read(lens: Shoplens) -> None:
    with LiveServer(create_app(lens, ServerSettings(read_key=READ_KEY))) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000000\r\n\r\n")
        status, body = _read_response(s)
    assert status == 401 and json.loads(body)["code"] == "unauthorized"


def test_the_read_key_comes_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPLENS_READ_KEY", READ_KEY)
    monkeypatch.delenv("SHOPLENS_API_KEY", raising=False)
    assert ServerSettings.from_env().read_key == READ_KEY and ServerSettings.from_env().api_key is None
    key_file = tmp_path / "read.key"
    key_file.write_text("file-read-key-0123456789\n")
    assert ServerSettings.from_env(read_key_file=key_file).read_key == "file-read-key-0123456789"
    monkeypatch.delenv("SHOPLENS_READ_KEY")
    assert ServerSettings.from_env().read_key is None
    with pytest.raises(ConfigError, match="cannot read the read key file"):
        ServerSettings.from_env(read_key_file=tmp_path / "missing.key")


def test_bad_photos_are_clear_4xx_and_the_server_goes_on(client: TestClient) -> None:
    for name, data in bad_photos():
        body = assert_error(search(client, data, name=name), 422, "bad_image")
        assert name in body["error"], body
        assert search(client, photo(1)).status_code == 200
    assert "over the limit" in search(client, bad_photos_named("bomb.png")).json()["error"]
    for name, data in odd_but_good_photos():
        r = search(client, data, name=name)
        assert r.status_code == 200, (name, r.text)


def bad_photos_named(name: str) -> bytes:
    return dict(bad_photos())[name]


def test_photos_are_decoded_inside_the_search_slots(lens: Shoplens, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many uploads arrive at once, at most search_concurrency decodes are in flight."""
    app = create_app(lens, ServerSettings(search_concurrency=1))
    free_slot_seen = spy_on_search_slots(app, monkeypatch)
    with TestClient(app) as c:
        assert search(c, photo(1)).status_code == 200
    assert free_slot_seen == [False]


def test_decoded_bytes_are_bounded(lens: Shoplens) -> None:
    """--max-decoded-mb: a photo whose decode would hold more is refused before decoding; the tiny 1-bit bomb passes, reduced."""
    from .test_imaging import _png_of_one_colour

    rgb = encode(picture(1).resize((1000, 1000)), "PNG")  # 4 MB decoded + 0.75 MB RGB, halved for the 384-px models
    with TestClient(create_app(lens, ServerSettings(max_decoded_bytes=4_700_000))) as c:
        body = assert_error(search(c, rgb, name="big.png"), 422, "bad_image")
        assert "decodes to 4750000 bytes, over the limit of 4700000" in body["error"], body
        assert search(c, photo(1)).status_code == 200
    with TestClient(create_app(lens, ServerSettings())) as c:  # the defaults: 40 M pixels, 128 MiB
        assert search(c, _png_of_one_colour(6300, 1, 0), name="bomb.png").status_code == 200
    with pytest.raises(ConfigError, match="max_decoded_bytes must be positive"):
        ServerSettings(max_decoded_bytes=0)


def test_exif_rotated_boxes_are_in_the_photo_as_seen(tmp_path: Path) -> None:
    from .serverutil import exif_rotated_jpeg

    with Shoplens(tmp_path / "s", **{"intent.classifier": "test-apparel", "detect.detector": "test-two-boxes"}) as apparel:
        apparel.put_products([_product_input("t1", photo(400))])
        with TestClient(create_app(apparel, ServerSettings())) as c:
            body = search(c, exif_rotated_jpeg(300, 200), name="rotated.jpg").json()
    # stored 300x200, shown 200x300: the top is the upper half of the photo as a person sees it
    assert body["regions"][0]["box"] == [0, 0, 200, 150] and body["regions"][0]["label"] == "top"


def _product_input(pid: str, data: bytes) -> Any:
    from shoplens.api import ProductInput

    return ProductInput(pid, [data], domain="apparel")


def test_bad_requests(client: TestClient) -> None:
    assert_error(client.post("/search", json={"photo": "x"}), 415, "unsupported_media_type")
    assert_error(client.post("/search", content=b"\xff\xd8\xff", headers={"content-type": "image/jpeg"}), 415)
    assert_error(client.post("/search", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 400)
    assert_error(client.post("/search", data={"photo": "not a file"}), 422)
    assert_error(search(client, photo(1), top_k="0"), 422, "invalid_request")
    assert_error(search(client, photo(1), top_k="many"), 422)
    assert_error(search(client, photo(1), top_k="1000"), 422)
    assert_error(client.patch("/products/p1", content=b"{not json", headers={**AUTH, "content-type": "application/json"}), 422, "bad_json")
    assert_error(client.patch("/products/p1", json={"metadata": {"rank": 3}}, headers=AUTH), 422, "invalid_request")
    assert_error(client.patch("/products/p1", json={"colour": "red"}, headers=AUTH), 422)
    lone_surrogate = b'{"metadata": {"x": "\\ud800"}}'
    assert_error(client.patch("/products/p1", content=lone_surrogate, headers={**AUTH, "content-type": "application/json"}), 422)
    assert_error(client.patch("/products/nope", json={"title": "x"}, headers=AUTH), 404)
    assert_error(client.post("/products", data={"product": "{bad"}, files=[("photos", ("a.png", photo(1), "image/png"))], headers=AUTH), 422)
    assert_error(client.post("/products", data={"product": json.dumps({"product_id": "a\x01b"})}, files=[("photos", ("a.png", photo(1), "image/png"))], headers=AUTH), 422)
    assert_error(client.post("/products", data={"product": json.dumps({"product_id": "nophoto"})}, headers=AUTH), 415)
    assert_error(client.post("/products/batch", data={"products": "{}"}, files=[("photos", ("a.png", photo(1), "image/png"))], headers=AUTH), 422)
    assert_error(client.post("/products/batch-delete", json={"product_ids": []}, headers=AUTH), 422)
    assert_error(client.get("/products", params={"limit": 0}), 422)
    assert_error(client.get("/products", params={"limit": 10**6}), 422)
    assert_error(client.get("/nowhere"), 404)
    assert_error(client.put("/healthz"), 405)
    assert_error(client.get("/images/abc"), 422)
    assert_error(client.get("/images/99999999"), 404)
    assert_error(client.get("/images/-1"), 422)
    for path in ("/images/..%2F..%2Fetc%2Fpasswd", "/images/1/../../etc/passwd", "/static/..%2F..%2Fapi.py", "/static/../app.py"):
        r = client.get(path)
        assert r.status_code in (404, 422) and b"import" not in r.content and b"root:" not in r.content, path
    assert search(client, photo(1)).status_code == 200


def test_upload_over_the_limit_is_refused_without_reading_it(lens: Shoplens) -> None:
    """A multi-GB upload: refused at once when declared, cut off at the limit when streamed."""
    import resource

    limit = 1_000_000
    app = create_app(lens, ServerSettings(api_key=KEY, max_upload_bytes=limit))
    with LiveServer(app) as server:
        # declared: 5 GB in Content-Length, 413 before the body is read
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000000\r\n\r\n")
            s.sendall(b"--b\r\n" + b"x" * 65536)
            status, body = _read_response(s)
        assert status == 413 and "over the limit" in json.loads(body)["error"]
        # streamed (chunked, no length): the server stops reading at the limit
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sent = 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
            head = b'--b\r\nContent-Disposition: form-data; name="photo"; filename="huge.jpg"\r\n\r\n'
            s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            chunk = b"\xff" * 65536
            frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            try:
                while sent < 4_000_000_000:
                    s.sendall(frame)
                    sent += len(chunk)
            except OSError:
                pass  # the server closed the connection after its 413
            status, body = _read_response(s)
        grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert status == 413, body
        assert sent < 64 * limit  # stopped long before 4 GB (socket buffers hold some in flight)
        assert grew_kb < 200_000  # nothing like the upload was buffered
        # and it keeps serving
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_response(s)[0] == 200


def _read_response(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    deadline = time.monotonic() + 20
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete response: {data[:200]!r}")
        try:
            more = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_url_search_only_under_the_allow_list(lens: Shoplens) -> None:
    good = photo(3)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/img/moved.png":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.end_headers()
                return
            body = good if self.path == "/img/p3.png" else b"x" * 3_000_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with TestClient(create_app(lens, ServerSettings())) as c:
            assert_error(c.post("/search/url", json={"url": f"{base}/img/p3.png"}), 403, "url_not_allowed")
        with TestClient(create_app(lens, ServerSettings(url_allowlist=(f"{base}/img/",), max_upload_bytes=2_000_000))) as c:
            r = c.post("/search/url", json={"url": f"{base}/img/p3.png", "top_k": 1})
            assert r.status_code == 200 and r.json()["regions"][0]["results"][0]["product_id"] == "p3"
            assert_error(c.post("/search/url", json={"url": f"{base}/other/p3.png"}), 403)
            assert_error(c.post("/search/url", json={"url": f"{base}/imgx/p3.png"}), 403)
            assert_error(c.post("/search/url", json={"url": f"http://user:pw@127.0.0.1:{httpd.server_address[1]}/img/p3.png"}), 403)
            assert_error(c.post("/search/url", json={"url": "file:///etc/passwd"}), 403)
            assert_error(c.post("/search/url", json={"url": f"{base}/img/moved.png"}), 422, "url_fetch_failed")
            assert_error(c.post("/search/url", json={"url": f"{base}/img/big.png"}), 413, "too_large")
    finally:
        httpd.shutdown()


def test_url_allow_list_cannot_be_left_with_dot_segments(lens: Shoplens) -> None:
    """The origin resolves dot segments and decodes %2e/%2f, as many do: only /allowed/ may ever be asked for."""
    import posixpath
    from urllib.parse import unquote

    from shoplens.server.fetch import remove_dot_segments

    good, asked = photo(3), []

    class Normalising(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            path = posixpath.normpath(unquote(self.path).replace("\\", "/").split(";")[0])
            body = {"/allowed/photo.jpg": good, "/secret": b"the secret"}.get(path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g" and remove_dot_segments("mid/content=5/../6") == "mid/6"  # RFC 3986, 5.2.4
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Normalising)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with TestClient(create_app(lens, ServerSettings(url_allowlist=(f"{base}/allowed/",)))) as c:
            for escape in ("../secret", "%2e%2e/secret", "..%2fsecret", "%2E%2E/secret", ".%2e/secret", "..%5csecret", "..\\secret",
                           "..;/secret", "x/../../secret", "./../secret"):
                body = assert_error(c.post("/search/url", json={"url": f"{base}/allowed/{escape}"}), 403, "url_not_allowed")
                assert "secret" not in body["error"], escape
            assert asked == []  # none of them was fetched, as written or otherwise
            for inside in ("photo.jpg", "./photo.jpg", "x/../photo.jpg", "../allowed/photo.jpg"):
                r = c.post("/search/url", json={"url": f"{base}/allowed/{inside}", "top_k": 1})
                assert r.status_code == 200 and r.json()["regions"][0]["results"][0]["product_id"] == "p3", (inside, r.text)
            assert asked == ["/allowed/photo.jpg"] * 4  # the normalised URL is what is fetched
    finally:
        httpd.shutdown()


def test_metrics_health_readiness_schema(client: TestClient, lens: Shoplens) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    deadline = time.monotonic() + 60
    while (r := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.json()["status"] == "ready" and r.json()["products"] == lens.count_products() and r.json()["writes_enabled"]
    search(client, photo(1))
    with Shoplens(lens.store.root, read_only=True, **{"intent.classifier": "test-non_product"}) as other, TestClient(create_app(other, ServerSettings())) as gated:
        assert search(gated, photo(1)).json()["regions"] == []
        text = gated.get("/metrics").text
        assert 'shoplens_searches_total{intent="non_product"} 1.0' in text
        assert 'shoplens_search_step_seconds_count{step="intent"} 1.0' in text and 'step="embed"' not in text
    text = client.get("/metrics").text
    assert 'shoplens_search_step_seconds_count{step="embed"}' in text and 'shoplens_search_step_seconds_count{step="search"}' in text
    assert 'shoplens_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert f"shoplens_products {float(lens.count_products())}" in text
    assert 'shoplens_search_regions_total{domain="other_product"}' in text

    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/search", "/search/url", "/products", "/products/batch", "/products/batch-delete", "/products/{product_id}", "/products/{product_id}/photos", "/images/{image_id}", "/healthz", "/readyz", "/metrics"):
        assert path in paths, path
    assert set(schema["components"]["schemas"]["SearchResult"]["properties"]) == SEARCH_KEYS
    assert all(op.get("summary") for p in paths.values() for op in p.values())
    assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])

    page = client.get("/")
    assert page.status_code == 200 and "shoplens" in page.text and "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "").split("<body>")[0]  # no external resources
    assert client.get("/static/app.js").status_code == 200


def test_cors_is_configurable(lens: Shoplens) -> None:
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(lens, ServerSettings(cors_origins=("https://shop.example",)))) as c:
        assert c.options("/search", headers=preflight).headers["access-control-allow-origin"] == "https://shop.example"
        other = c.options("/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with TestClient(create_app(lens, ServerSettings())) as c:  # default: no cross-origin calls
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://shop.example"}).headers


def test_a_write_that_makes_a_refit_due_does_not_wait_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rank filter's refit runs in the server's background, not inside the add that made it due:
    while the refit is held, the add answers, searches keep the old calibration, and then the refit lands."""
    from shoplens.pipeline import calibrate

    rows = ["product_id,image,category,domain"]
    for i in range(4):
        (tmp_path / f"p{i}.png").write_bytes(photo(300 + i))
        rows.append(f"p{i},p{i}.png,{'red' if i < 2 else 'blue'},other_product")
    (tmp_path / "catalog.csv").write_text("\n".join(rows) + "\n")
    running, release = threading.Event(), threading.Event()
    real = calibrate.synthetic_calibration

    def held(*args: Any, **kwargs: Any) -> Any:
        running.set()
        assert release.wait(30), "the test never released the refit"
        return real(*args, **kwargs)

    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}) as lens:
        assert lens.index(tmp_path / "catalog.csv").calibrated == ["other_product"]
        before = lens.pipeline.calibrations["other_product"]
        monkeypatch.setattr(calibrate, "synthetic_calibration", held)
        with TestClient(create_app(lens, ServerSettings(api_key=KEY, calibrate_delay_s=0))) as c:
            products = [{"product_id": f"n{i}", "category": "new", "photos": [f"n{i}.png"]} for i in range(8)]
            files = [("photos", (f"n{i}.png", photo(310 + i), "image/png")) for i in range(8)]
            r = c.post("/products/batch", data={"products": json.dumps(products)}, files=files, headers=AUTH)
            assert r.status_code == 200, r.text  # 4 + 8 images: a refit is due, and the add did not run it
            assert running.wait(30), "no refit started in the background"
            r = search(c, photo(312))
            assert r.status_code == 200 and r.json()["regions"][0]["results"][0]["product_id"] == "n2"
            assert lens.pipeline.calibrations["other_product"] is before  # the old one, until the refit is applied
            release.set()
            deadline = time.monotonic() + 60
            while lens.pipeline.calibrations["other_product"] is before and time.monotonic() < deadline:
                time.sleep(0.1)
            assert lens.pipeline.calibrations["other_product"].info["images"] == 12
            assert not lens.calibration_due.is_set()

"""What peers' users expect: a crop box, batch search, Swagger UI from bundled files, CSV imports as jobs.

A small store of real grocery photos (../shared/data), the real backbone, a
test intent classifier. Query photos are other photos of the catalogue's
products, and a photo made at test time of two of them side by side.
"""

# ruff: noqa: I001 - serverutil comes first: it skips the module without the [server] extra

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .serverutil import AUTH, KEY, LiveServer, encode, spy_on_search_slots  # first: skips this module without the [server] extra

from fastapi.testclient import TestClient
from PIL import Image

from shoplens import Shoplens
from shoplens.cli import main as cli_main
from shoplens.errors import BadBoxError
from shoplens.imaging import parse_box
from shoplens.server import ServerSettings, create_app
from shoplens.server import docs_ui

from . import test_engine  # noqa: F401  (registers the test-* classifiers and detector)

LOOSE = {"search.rank_filter": False, "search.entropy_filter": False, "search.category_order": False}
PACKAGES = "grocery/photos/train/Packages"
PRODUCTS = {
    "juice": "Juice/Bravo-Apple-Juice/Bravo-Apple-Juice_00{}.jpg",
    "milk": "Milk/Arla-Standard-Milk/Arla-Standard-Milk_00{}.jpg",
    "oatghurt": "Oatghurt/Oatly-Natural-Oatghurt/Oatly-Natural-Oatghurt_00{}.jpg",
    "soy": "Soy-Milk/Alpro-Fresh-Soy-Milk/Alpro-Fresh-Soy-Milk_00{}.jpg",
    "yoghurt": "Yoghurt/Arla-Mild-Vanilla-Yoghurt/Arla-Mild-Vanilla-Yoghurt_00{}.jpg",
}


def _first_existing(data_dir: Path, pattern: str, n: int) -> Path:
    path = data_dir / PACKAGES / pattern.format(n)
    if not path.exists():
        pytest.skip(f"real photo {path} not found")
    return path


@pytest.fixture(scope="module")
def shelf(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The catalogue's photos (photo 1 of each product) in a folder of their own, and query photos (photo 2)."""
    root = tmp_path_factory.mktemp("peers")
    photos = root / "photos"
    photos.mkdir()
    for pid, pattern in PRODUCTS.items():
        (photos / f"{pid}.jpg").write_bytes(_first_existing(data_dir, pattern, 1).read_bytes())
    queries = {pid: _first_existing(data_dir, PRODUCTS[pid], 2).read_bytes() for pid in ("juice", "milk")}
    return {"root": root, "photos": photos, "queries": queries}


@pytest.fixture(scope="module")
def lens(shelf: dict[str, Any]) -> Iterator[Shoplens]:
    root: Path = shelf["root"]
    rows = ["product_id,image,title,category,domain"]
    rows += [f"{pid},photos/{pid}.jpg,{pid.title()},Dairy,other_product" for pid in PRODUCTS]
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")
    with Shoplens(root / "store", **{"intent.classifier": "test-other_product"}, **LOOSE) as lens:
        lens.index(root / "catalog.csv")
        yield lens


@pytest.fixture(scope="module")
def client(lens: Shoplens, shelf: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(lens, ServerSettings(api_key=KEY, import_root=shelf["photos"]))) as c:
        yield c


@pytest.fixture(scope="module")
def side_by_side(shelf: dict[str, Any]) -> bytes:
    """The juice photo left of the milk photo, one PNG (made here from the real photos; never kept)."""
    left = Image.open(io.BytesIO(shelf["queries"]["juice"])).convert("RGB")
    right = Image.open(io.BytesIO(shelf["queries"]["milk"])).convert("RGB")
    both = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), (255, 255, 255))
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    return encode(both, "PNG")


def search(client: TestClient, data: bytes, name: str = "q.png", **form: Any) -> Any:
    return client.post("/search", files={"photo": (name, data, "application/octet-stream")}, data=form)


def top(body: dict[str, Any]) -> str:
    return str(body["regions"][0]["results"][0]["product_id"])


def ranking(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["product_id"], round(h["rank"], 4)) for h in body["regions"][0]["results"]]


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["error"], body
    return dict(body)


# -- 1. a crop box ------------------------------------------------------------------
def test_parse_box() -> None:
    assert parse_box("10, 20,300,400") == (10, 20, 300, 400)
    assert parse_box([0, 0.5, 3, 4]) == (0, 0.5, 3, 4)
    assert parse_box(None) is None
    for bad in ("10,20,300", "1,2,3,4,5", "a,b,c,d", "0,0,0,10", "5,0,4,10", "-1,0,4,4", "0,0,nan,4", "0,0,inf,4", [True, 0, 3, 4], ""):
        with pytest.raises(BadBoxError):
            parse_box(bad)  # type: ignore[arg-type]


def test_a_box_searches_that_region_as_a_photo_of_its_own(client: TestClient, lens: Shoplens, side_by_side: bytes,
                                                          shelf: dict[str, Any]) -> None:
    width = Image.open(io.BytesIO(shelf["queries"]["juice"])).width
    both = Image.open(io.BytesIO(side_by_side))
    left, right = f"0,0,{width},{both.height}", f"{width},0,{both.width},{both.height}"
    r_left, r_right = search(client, side_by_side, box=left), search(client, side_by_side, box=right)
    assert r_left.status_code == 200 and r_right.status_code == 200, (r_left.text, r_right.text)
    assert top(r_left.json()) == "juice" and top(r_right.json()) == "milk"
    crop = r_right.json()["steps"]["crop"]
    assert crop == {"box": [width, 0, both.width, both.height], "photo_size": [both.width, both.height],
                    "searched_size": [both.width - width, both.height]}
    # The same pixels searched alone: the same answer (the crop is searched as a whole photo, gate included).
    alone = lens.search([shelf["queries"]["juice"]])[0].model_dump(mode="json")
    assert ranking(r_left.json()) == ranking(alone)
    assert r_left.json()["intent_scores"] == alone["intent_scores"]
    # Without a box nothing changes, and the answer says no crop.
    assert "crop" not in search(client, side_by_side).json()["steps"]
    # The Python API and the URL endpoint take the box too.
    assert top(lens.search_one(side_by_side, box=(width, 0, both.width, both.height)).model_dump()) == "milk"


def test_a_box_over_a_url_search(lens: Shoplens, side_by_side: bytes) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(side_by_side)))
            self.end_headers()
            self.wfile.write(side_by_side)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    width, height = Image.open(io.BytesIO(side_by_side)).size
    try:
        with TestClient(create_app(lens, ServerSettings(url_allowlist=(f"{base}/img/",)))) as c:
            r = c.post("/search/url", json={"url": f"{base}/img/both.png", "box": [width // 2, 0, width, height]})
            assert r.status_code == 200, r.text
            assert top(r.json()) == "milk" and r.json()["steps"]["crop"]["box"] == [width // 2, 0, width, height]
            r = c.post("/search/url", json={"url": f"{base}/img/both.png", "box": f"0,0,{width // 2},{height}"})
            assert top(r.json()) == "juice"
            assert_error(c.post("/search/url", json={"url": f"{base}/img/both.png", "box": [0, 0, 10]}), 400, "bad_box")
            assert_error(c.post("/search/url", json={"url": f"{base}/img/both.png", "box": ["a", 0, 10, 10]}), 400, "bad_box")
    finally:
        httpd.shutdown()


def test_bad_boxes_are_a_clear_400(client: TestClient, side_by_side: bytes) -> None:
    width, height = Image.open(io.BytesIO(side_by_side)).size
    outside = assert_error(search(client, side_by_side, box=f"0,0,{width + 1},{height}"), 400, "bad_box")
    assert f"{width}x{height}" in outside["error"] and "outside the photo" in outside["error"]
    assert "empty" in assert_error(search(client, side_by_side, box="10,10,10,50"), 400, "bad_box")["error"]
    assert "four numbers" in assert_error(search(client, side_by_side, box="10,20,300"), 400, "bad_box")["error"]
    assert_error(search(client, side_by_side, box="x0,y0,x1,y1"), 400, "bad_box")
    assert_error(search(client, side_by_side, box="-5,0,10,10"), 400, "bad_box")
    # A malformed box is refused before the photo is read: a photo that is no photo still gets bad_box.
    assert_error(search(client, b"not a photo", box="1,2"), 400, "bad_box")
    assert search(client, side_by_side, box=f"0,0,{width},{height}").status_code == 200  # the whole photo is a box too


def test_cli_search_with_a_box(lens: Shoplens, side_by_side: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "both.png"
    photo.write_bytes(side_by_side)
    width, height = Image.open(photo).size
    flags = ["--set", "intent.classifier=test-other_product", "--no-rank-filter", "--no-entropy-filter"]
    store = str(lens.store.root)
    assert cli_main(["search", str(photo), "--store", store, "--json", "--box", f"{width // 2},0,{width},{height}", *flags]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert top(line) == "milk" and line["steps"]["crop"]["box"] == [width // 2, 0, width, height]
    assert cli_main(["search", str(photo), "--store", store, "--box", f"0,0,{width // 2},{height}", *flags]) == 0
    assert "searched the region" in capsys.readouterr().out
    assert cli_main(["search", str(photo), "--store", store, "--box", "1,2,3"]) != 0
    assert "four numbers" in capsys.readouterr().err
    assert cli_main(["search", str(photo), "--store", store, "--box", f"0,0,{width + 10},{height}", *flags]) != 0
    assert "outside the photo" in capsys.readouterr().err


# -- 2. batch search --------------------------------------------------------------
def test_batch_search_answers_each_photo_in_order(client: TestClient, shelf: dict[str, Any]) -> None:
    juice, milk = shelf["queries"]["juice"], shelf["queries"]["milk"]
    files = [("photo", ("juice.jpg", juice, "image/jpeg")), ("photo", ("broken.jpg", juice[: len(juice) // 3], "image/jpeg")),
             ("photo", ("notes.txt", b"not a photo at all", "text/plain")), ("photo", ("milk.jpg", milk, "image/jpeg"))]
    r = client.post("/search/batch", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["image"] for o in out] == ["juice.jpg", "broken.jpg", "notes.txt", "milk.jpg"]
    assert top(out[0]) == "juice" and top(out[3]) == "milk"
    assert out[1]["code"] == "bad_image" and out[2]["code"] == "bad_image" and "broken.jpg" in out[1]["error"]
    single = search(client, juice, name="juice.jpg", top_k="3").json()
    assert set(out[0]) == set(single)  # the object POST /search answers, image_url included
    assert out[0]["regions"] == single["regions"] and out[0]["intent_scores"] == single["intent_scores"]
    assert len(out[0]["regions"][0]["results"]) == 3 and out[0]["regions"][0]["results"][0]["image_url"].startswith("/images/")


def test_batch_search_limits(lens: Shoplens, shelf: dict[str, Any]) -> None:
    juice = shelf["queries"]["juice"]
    settings = ServerSettings(max_batch_photos=2, max_upload_bytes=len(juice) + 10, max_request_bytes=4 * len(juice))
    with TestClient(create_app(lens, settings)) as c:
        three = [("photo", (f"{i}.jpg", juice, "image/jpeg")) for i in range(3)]
        body = assert_error(c.post("/search/batch", files=three), 422, "invalid_request")
        assert "at most 2 photos" in body["error"]
        big = encode(Image.new("RGB", (900, 900)), "BMP")  # over the per-photo limit, under the total
        out = c.post("/search/batch", files=[("photo", ("big.bmp", big[: 2 * len(juice)], "image/bmp")),
                                             ("photo", ("j.jpg", juice, "image/jpeg"))]).json()
        assert out[0]["code"] == "too_large" and top(out[1]) == "juice"
        over = [("photo", (f"{i}.jpg", juice * 3, "image/jpeg")) for i in range(2)]
        assert_error(c.post("/search/batch", files=over), 413, "too_large")  # the total upload limit
        assert_error(c.post("/search/batch", files=three[:1], data={"filter": "price<<3"}), 400, "bad_filter")
        assert_error(c.post("/search/batch", data={"top_k": "3"}), 415, "unsupported_media_type")  # no photo part


def test_batch_searches_go_through_the_search_slots(lens: Shoplens, shelf: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each photo of a batch is decoded inside a search slot, one slot at a time."""
    app = create_app(lens, ServerSettings(search_concurrency=1))
    free_slot_seen = spy_on_search_slots(app, monkeypatch)
    files = [("photo", (f"{i}.jpg", shelf["queries"]["juice"], "image/jpeg")) for i in range(3)]
    with TestClient(app) as c:
        assert c.post("/search/batch", files=files).status_code == 200
    assert free_slot_seen == [False, False, False]


# -- 3. Swagger UI from the server's own files --------------------------------------
def test_swagger_ui_is_served_from_the_server_itself(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(links) == 4 and all(link.startswith("/docs/assets/") for link in links), links
    assert not re.search(r"https?://", page)
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "http" not in csp  # the browser may load nothing from elsewhere
    for link in links:
        asset = client.get(link)
        assert asset.status_code == 200, link
        if link.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css")
            assert not re.search(r"url\(\s*['\"]?(https?:)?//", asset.text), "the stylesheet loads nothing from elsewhere"
        elif link.endswith(".js"):
            assert asset.headers["content-type"].startswith("text/javascript") and len(asset.content) > 1000 or "init" in link
    init = client.get("/docs/assets/init.js").text
    assert "validatorUrl: null" in init and not re.search(r"https?://", init)
    assert 'content="/openapi.json"' in page and client.get("/openapi.json").status_code == 200
    assert "/search/batch" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs/assets/redoc.standalone.js").status_code == 404  # only the files the page uses
    assert client.get("/docs/assets/..%2Fcore.py").status_code == 404


def test_swagger_ui_renders_in_a_browser_with_nothing_from_elsewhere(lens: Shoplens) -> None:
    """Debian's Chromium loads /docs under the server's CSP: the operations show, every request stays on the server."""
    from .test_web_e2e import BROWSER_FLAGS, find_chromium

    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium; .ci/run does it)")
    with LiveServer(create_app(lens, ServerSettings())) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=BROWSER_FLAGS, headless=True)
        try:
            page = browser.new_page()
            requests: list[str] = []
            problems: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.goto(f"{server.url}/docs")
            page.wait_for_selector('[data-path="/search/batch"]', timeout=30_000)
            assert page.locator(".opblock").count() >= 10  # every endpoint, as Swagger UI lists them
            assert page.locator('[data-path="/imports"]').count() >= 1
            assert not problems, problems  # a CSP violation or a script error would show here
            assert requests and all(u.startswith(server.url) for u in requests), requests
        finally:
            browser.close()


def test_docs_without_the_package_say_what_to_install(lens: Shoplens, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docs_ui, "assets_dir", lambda: None)
    with TestClient(create_app(lens, ServerSettings())) as c:
        body = assert_error(c.get("/docs"), 404, "not_found")
        assert "pip install 'shoplens[server]'" in body["error"] and "fastapi-offline" in body["error"]


# -- 4. CSV imports as jobs ---------------------------------------------------------
def csv_bytes(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["product_id", "image", "title", "category", "domain", "price"])
    w.writerows(rows)
    return buf.getvalue().encode()


def wait(client: TestClient, job: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/imports/{job}", headers=AUTH)
        assert r.status_code == 200, r.text
        status = r.json()
        if status["state"] in ("done", "failed") or time.monotonic() > deadline:
            return dict(status)
        time.sleep(0.1)


def test_an_import_indexes_a_csv_of_server_paths_and_urls(client: TestClient, shelf: dict[str, Any], data_dir: Path,
                                                          tmp_path: Path) -> None:
    photos: Path = shelf["photos"]
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(shelf["queries"]["milk"])
    (photos / "link.jpg").unlink(missing_ok=True)
    os.symlink(outside, photos / "link.jpg")  # inside the root, pointing out of it
    served = shelf["queries"]["juice"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(served)))
            self.end_headers()
            self.wfile.write(served)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    rows = [
        ["imp-juice", "juice.jpg", "Imported juice", "Juice", "other_product", "2.5"],      # relative to the root
        ["imp-milk", str(photos / "milk.jpg"), "Imported milk", "Milk", "other_product", "1.25"],  # absolute, inside
        ["imp-url", f"{base}/img/juice.jpg", "Fetched juice", "Juice", "other_product", "3"],
        ["bad-dots", "../secret.jpg", "", "", "", ""],
        ["bad-abs", str(outside), "", "", "", ""],
        ["bad-link", "link.jpg", "", "", "", ""],
        ["bad-url", f"{base}/elsewhere/juice.jpg", "", "", "", ""],
    ]
    try:
        with TestClient(create_app(client.app.state.shoplens.lens, ServerSettings(
                api_key=KEY, import_root=photos, url_allowlist=(f"{base}/img/",)))) as c:
            r = c.post("/imports", files={"catalogue": ("shop.csv", csv_bytes(rows), "text/csv")}, headers=AUTH)
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["state"] in ("queued", "running") and job["rows_total"] == 7 and r.headers["location"] == f"/imports/{job['id']}"
            status = wait(c, job["id"])
            assert status["state"] == "done", status
            assert status["rows_done"] == 7 and status["images_done"] == status["images_total"] == 3
            report = status["report"]
            assert {"rows", "products", "images_added", "failed", "timings_s", "products_in_store"} <= set(report)
            assert report["rows"] == 7 and report["images_added"] == 3
            failed = {f["product_id"]: f["error"] for f in report["failed"]}
            assert set(failed) == {"bad-dots", "bad-abs", "bad-link", "bad-url"}
            assert all("outside the import folder" in failed[p] for p in ("bad-dots", "bad-abs", "bad-link"))
            assert "allow" in failed["bad-url"]
            product = c.get("/products/imp-url", headers=AUTH).json()
            assert product["title"] == "Fetched juice" and product["metadata"] == {"price": 3}
            assert c.get(product["images"][0]["url"]).content == served  # kept under the store's photos/
            hits = [h["product_id"] for h in search(c, shelf["queries"]["juice"]).json()["regions"][0]["results"]]
            assert {"imp-juice", "imp-url", "juice"} <= set(hits[:4])
            assert report["products_in_store"] == c.get("/products?limit=1", headers=AUTH).json()["total"]
    finally:
        httpd.shutdown()
        (photos / "link.jpg").unlink(missing_ok=True)
        client.app.state.shoplens.lens.delete_products(["imp-juice", "imp-milk", "imp-url"])


def test_imports_run_one_at_a_time_and_report_what_went_wrong(client: TestClient, shelf: dict[str, Any]) -> None:
    first = client.post("/imports", files={"catalogue": ("a.csv", csv_bytes([["a1", "juice.jpg", "", "Juice", "", ""]]), "text/csv")},
                        headers=AUTH).json()
    second = client.post("/imports", files={"catalogue": ("b.csv", csv_bytes([["b1", "milk.jpg", "", "Milk", "", ""]]), "text/csv")},
                         data={"domain": "other_product"}, headers=AUTH).json()
    done = [wait(client, first["id"]), wait(client, second["id"])]
    assert [d["state"] for d in done] == ["done", "done"]
    assert done[1]["started_at"] >= done[0]["finished_at"]  # one job at a time, in order
    assert client.get("/products/b1", headers=AUTH).json()["domain_source"] == "catalogue"
    # Refusals: no key, wrong key, not a catalogue, an unknown job.
    files = {"catalogue": ("c.csv", b"name,picture\nx,y\n", "text/csv")}
    assert_error(client.post("/imports", files=files), 401, "unauthorized")
    assert_error(client.post("/imports", files=files, headers={"X-API-Key": "wrong-key-0123456789"}), 401, "unauthorized")
    body = assert_error(client.post("/imports", files=files, headers=AUTH), 422, "bad_catalogue")
    assert "missing required column" in body["error"]
    assert_error(client.post("/imports", files={"catalogue": ("d.csv", b"\xff\xfe\x00", "text/csv")}, headers=AUTH), 422, "bad_catalogue")
    assert_error(client.get("/imports/0123456789abcdef", headers=AUTH), 404, "not_found")
    assert_error(client.get(f"/imports/{first['id']}"), 401, "unauthorized")
    client.app.state.shoplens.lens.delete_products(["a1", "b1"])


def test_imports_without_a_root_take_no_paths(lens: Shoplens) -> None:
    with TestClient(create_app(lens, ServerSettings(api_key=KEY))) as c:
        job = c.post("/imports", files={"catalogue": ("a.csv", csv_bytes([["x1", "/etc/hostname", "", "", "", ""]]), "text/csv")},
                     headers=AUTH).json()
        status = wait(c, job["id"])
        assert status["state"] == "done" and "--import-root" in status["report"]["failed"][0]["error"]
    with TestClient(create_app(lens, ServerSettings())) as c:  # no write key: writes disabled
        assert_error(c.post("/imports", files={"catalogue": ("a.csv", b"product_id,image\n", "text/csv")}), 403, "writes_disabled")


def test_a_stopping_server_fails_its_waiting_imports(lens: Shoplens, shelf: dict[str, Any]) -> None:
    app = create_app(lens, ServerSettings(api_key=KEY, import_root=shelf["photos"]))
    with TestClient(app) as c:
        ids = [c.post("/imports", files={"catalogue": (f"{i}.csv", csv_bytes([[f"s{i}", "soy.jpg", "", "", "", ""]]), "text/csv")},
                      headers=AUTH).json()["id"] for i in range(3)]
    imports = app.state.imports
    states = [imports.get(i).state for i in ids]
    assert all(s in ("done", "failed") for s in states), states
    assert any(imports.get(i).error == "the server stopped before this import ran" for i in ids) or states == ["done"] * 3
    lens.delete_products([f"s{i}" for i in range(3)])

"""The web page end to end in a real headless browser (Debian's chromium, driven by Playwright).

A live server on loopback over a real small store (bundled models; the real
photos of ../shared/data when present, generated ones otherwise): upload a
photo, see the results grid; a non-product photo; garment boxes; a phone
screen; a file that is not a photo. Skipped only when no browser is
installed (.ci/run installs Debian's chromium).
"""

# ruff: noqa: I001 - serverutil comes first: it skips the module without the [server] extra

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest

from .serverutil import LiveServer, encode, picture  # first: skips this module without the [server] extra

from shoplens import Shoplens
from shoplens.server import ServerSettings, create_app

from . import test_engine  # noqa: F401  (registers the test-* classifiers and detector)
from .conftest import data_root

BROWSER_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium() -> str | None:
    for name in (os.environ.get("SHOPLENS_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python (pip install playwright; its browser download is not used)")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium; .ci/run does it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=BROWSER_FLAGS, headless=True)
        yield b
        b.close()


def _real_catalogue(root: Path, folder: Path) -> tuple[Path, Path, Path] | None:
    """A CSV of 16 real packaged products, a store photo of one of them, and a landscape."""
    grocery = data_root() / "grocery"
    if not (grocery / "catalog.csv").exists():
        return None
    with open(grocery / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["top_level"] == "Packages"][:16]
    with open(folder / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["product_id", "image", "title", "category", "domain"])
        out.writerows([r["product_id"], grocery / r["image"], r["title"], r["category"], "other_product"] for r in rows)
    query = grocery / "photos" / "train" / "Packages" / "Juice" / "Bravo-Apple-Juice" / "Bravo-Apple-Juice_001.jpg"
    landscape = data_root() / "nonproduct" / "images" / "wallpaper_Bridge_by_Sander_Klootwijk.jpg"
    if not query.exists() or not landscape.exists():
        return None
    return folder / "catalog.csv", query, landscape


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path | None]]:
    """The default pipeline (bundled models) over a small store."""
    folder = tmp_path_factory.mktemp("web")
    real = _real_catalogue(folder, folder)
    # The page is under test, not the models: keep every neighbour (the default
    # min_rank drops raw-backbone matches between shop photos and store photos).
    flags: dict[str, Any] = {"search.rank_filter": False}
    if real is None:  # no shared photos: generated ones, with the gate off (they are no products)
        lines = ["product_id,image,title,category,domain"]
        for i in range(8):
            (folder / f"g{i}.png").write_bytes(encode(picture(i, (200, 160))))
            lines.append(f"g{i},g{i}.png,Generated {i},{'Red' if i < 4 else 'Blue'},other_product")
        (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
        catalogue, query, landscape = folder / "catalog.csv", folder / "g2.png", None
        flags["intent.enabled"] = False
    else:
        catalogue, query, landscape = real
    with Shoplens(folder / "store", **flags) as lens:
        lens.index(catalogue)
        with LiveServer(create_app(lens, ServerSettings())) as server:
            # The page polls /readyz while the server warms up, and the browser logs each 503 as a
            # console error; these tests are about what comes after start-up.
            yield server.wait_ready().url, query, landscape


@pytest.fixture(scope="module")
def apparel_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Test classifier and detector: every photo is apparel with a top and shoes (its 0.1 hat is under min_score)."""
    folder = tmp_path_factory.mktemp("web-apparel")
    lines = ["product_id,image,title,category,domain"]
    for i in range(4):
        (folder / f"a{i}.png").write_bytes(encode(picture(50 + i, (120, 160))))
        lines.append(f"a{i},a{i}.png,Garment {i},Tops,apparel")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    flags = {"intent.classifier": "test-apparel", "detect.detector": "test-two-boxes", "detect.min_score": 0.3, "search.rank_filter": False}
    with Shoplens(folder / "store", **flags) as lens:
        lens.index(folder / "catalog.csv")
        with LiveServer(create_app(lens, ServerSettings())) as server:
            yield server.wait_ready().url


@pytest.fixture(scope="module")
def nonproduct_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("web-np")
    with Shoplens(folder / "store", **{"intent.classifier": "test-non_product"}) as lens, LiveServer(create_app(lens, ServerSettings())) as server:
        yield server.wait_ready().url


def _wait_until(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a JavaScript expression until it is true.

    Not ``page.wait_for_function``: with Debian's Chromium 156 and Playwright
    1.65 its string predicate is refused by the page's own
    Content-Security-Policy (no 'unsafe-eval'); ``page.evaluate`` is not.
    """
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        time.sleep(0.05)


def _shot(page: Any, name: str, full_page: bool = True) -> None:
    """Screenshots for people, when SHOPLENS_SCREENSHOTS names a folder."""
    folder = os.environ.get("SHOPLENS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=full_page)


def _no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_upload_a_photo_and_see_results(browser: Any, real_server: tuple[str, Path, Path | None]) -> None:
    url, query, _ = real_server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    assert "shoplens" in page.title()
    _wait_until(page, "document.getElementById('store-info').textContent.includes('products')")
    assert page.evaluate("document.getElementById('text-form').hidden")  # EfficientNet-Lite has no text tower: no text box
    page.set_input_files("#pick", str(query))
    page.wait_for_selector(".card", timeout=60_000)
    assert page.inner_text("#intent") == "Product"
    assert "ms" in page.inner_text("#timing") or " s" in page.inner_text("#timing")
    cards = page.query_selector_all(".card")
    assert 1 <= len(cards) <= 10
    first = cards[0]
    assert first.inner_text().startswith("#1") or first.query_selector(".pos").inner_text() == "#1"
    assert first.query_selector(".title").inner_text().strip()
    assert first.query_selector(".cat").inner_text().strip()
    assert first.query_selector(".rank").inner_text().startswith("rank ")
    first.query_selector("img").scroll_into_view_if_needed()
    _wait_until(page, "(() => { const i = document.querySelector('.card img'); return i.complete && i.naturalWidth > 0; })()")
    assert page.evaluate("document.getElementById('query-img').naturalWidth") > 0
    _shot(page, "desktop-results")
    assert errors == []
    page.close()


def test_phone_screen_and_a_dropped_photo(browser: Any, real_server: tuple[str, Path, Path | None]) -> None:
    url, query, _ = real_server
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(url)
    camera = page.evaluate("[getComputedStyle(document.querySelector('.btn.camera')).display, matchMedia('(hover: hover)').matches, matchMedia('(pointer: fine)').matches]")
    assert camera[0] != "none", camera  # the camera button shows on touch screens
    assert page.get_attribute("#camera", "capture") == "environment"
    data = list(query.read_bytes())
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], 'dropped.jpg', {type: 'image/jpeg'});
            const dt = new DataTransfer();
            dt.items.add(file);
            document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    page.wait_for_selector(".card", timeout=60_000)
    assert _no_horizontal_scroll(page)
    columns = page.evaluate("getComputedStyle(document.querySelector('.grid')).gridTemplateColumns.split(' ').length")
    assert columns == 2
    _shot(page, "phone-results", full_page=False)  # a full-page shot re-lays the page out as a desktop
    context.close()


def test_non_product_photo_gets_a_clear_answer(browser: Any, real_server: tuple[str, Path, Path | None], nonproduct_server: str, tmp_path: Path) -> None:
    _, _, landscape = real_server
    url = nonproduct_server
    if landscape is not None:  # the real gate on a real landscape
        url = real_server[0]
    else:
        landscape = tmp_path / "landscape.png"
        landscape.write_bytes(encode(picture(9, (300, 200))))
    page = browser.new_page()
    page.goto(url)
    page.set_input_files("#pick", str(landscape))
    page.wait_for_selector("#nonproduct", timeout=60_000)
    assert "doesn't look like a product photo" in page.inner_text("#nonproduct")
    assert page.inner_text("#intent") == "Not a product"
    assert page.query_selector_all(".card") == [] and page.query_selector_all(".box") == []
    _shot(page, "non-product")
    page.close()


def test_garment_boxes_are_drawn_on_the_photo(browser: Any, apparel_server: str, tmp_path: Path) -> None:
    street = tmp_path / "street.png"
    street.write_bytes(encode(picture(77, (200, 300))))
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(apparel_server)
    page.set_input_files("#pick", str(street))
    page.wait_for_selector(".box", timeout=60_000)
    labels = [b.inner_text() for b in page.query_selector_all(".box")]
    assert labels == ["Top", "Shoes"]
    frame = page.query_selector("#frame").bounding_box()
    top = page.query_selector(".box").bounding_box()
    # [0, 0, 200, 150] on a 200x300 photo: the upper half, full width
    assert abs(top["width"] - frame["width"]) < 3 and abs(top["height"] - frame["height"] / 2) < 3
    assert len(page.query_selector_all(".region")) == 2 and len(page.query_selector_all(".chip")) == 2
    assert page.inner_text("#intent") == "Apparel"
    _shot(page, "apparel-boxes")
    page.close()


@pytest.fixture(scope="module")
def stopping_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gate that stops every photo as non_product, over 4 generated products: what "Search anyway" is for."""
    folder = tmp_path_factory.mktemp("web-stop")
    lines = ["product_id,image,title,category,domain"]
    for i in range(4):
        (folder / f"s{i}.png").write_bytes(encode(picture(30 + i, (200, 160))))
        lines.append(f"s{i},s{i}.png,Stopped {i},Blue,other_product")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    flags = {"intent.classifier": "test-non_product", "intent.stop_score": 0.8, "search.rank_filter": False}
    with Shoplens(folder / "store", **flags) as lens:
        lens.index(folder / "catalog.csv")
        with LiveServer(create_app(lens, ServerSettings())) as server:
            yield server.wait_ready().url, folder / "s1.png"


def test_a_stopped_photo_can_be_searched_anyway_and_an_empty_list_says_why(browser: Any, stopping_server: tuple[str, Path]) -> None:
    url, query = stopping_server
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.set_input_files("#pick", str(query))
    page.wait_for_selector("#nonproduct", timeout=60_000)
    assert "stopped as non_product (score 0.90 ≥ stop_score 0.8)" in page.inner_text("#nonproduct")
    page.click("#anyway-other_product")
    page.wait_for_selector(".card", timeout=60_000)
    assert page.inner_text("#intent") == "Product" and page.query_selector("#nonproduct") is None
    assert page.inner_text("#searched-as") == "Looked like Not a product; searched as Product (as asked)."
    assert page.query_selector(".card").get_attribute("data-product-id") == "s1"
    _shot(page, "searched-anyway")

    # A filter no product passes: the list is empty, and says why.
    page.click("summary")
    page.fill("#filters", "category=Green")
    page.set_input_files("#pick", str(query))
    page.wait_for_selector("#anyway-other_product", timeout=60_000)
    page.click("#anyway-other_product")
    page.wait_for_selector(".region .empty", timeout=60_000)
    assert page.inner_text(".region .empty .reason") == "No results: no other_product product passes the filters."
    assert page.inner_text(".region .empty .hint") == "To find more: loosen or drop the filters."
    assert page.query_selector_all(".card") == [] and errors == []
    _shot(page, "empty-list-reason")
    page.close()


def test_a_file_that_is_not_a_photo_shows_the_server_message(browser: Any, nonproduct_server: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not really a photo")
    page = browser.new_page()
    page.goto(nonproduct_server)
    page.set_input_files("#pick", str(notes))
    page.wait_for_selector(".status.error", timeout=30_000)
    assert "not an image" in page.inner_text("#status")
    page.close()


def test_a_private_catalogue_asks_for_its_key_and_sends_it(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """With a read key, the page asks for it, then searches and loads the thumbnails with it."""
    folder = tmp_path_factory.mktemp("web-private")
    lines = ["product_id,image,title,category,domain"]
    for i in range(3):
        (folder / f"k{i}.png").write_bytes(encode(picture(60 + i, (200, 160))))
        lines.append(f"k{i},k{i}.png,Private {i},Red,other_product")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    key = "page-read-key-0123456789"
    with Shoplens(folder / "store", **{"intent.classifier": "test-other_product", "search.rank_filter": False}) as lens:
        lens.index(folder / "catalog.csv")
        with LiveServer(create_app(lens, ServerSettings(read_key=key))) as server:
            server.wait_ready()
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            refused: list[str] = []
            page.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
            page.goto(server.url)
            page.wait_for_selector("#key-form:not([hidden])", timeout=30_000)
            assert "private" in page.inner_text("#key-message")
            page.fill("#key", key)
            page.click("#key-form button")
            _wait_until(page, "document.getElementById('store-info').textContent.includes('3 products')")
            page.set_input_files("#pick", str(folder / "k1.png"))
            page.wait_for_selector(".card", timeout=60_000)
            assert page.query_selector(".card").get_attribute("data-product-id") == "k1"
            _wait_until(page, "(() => { const i = document.querySelector('.card img'); return i.complete && i.naturalWidth > 0; })()")
            assert page.evaluate("document.querySelector('.card img').src").startswith("blob:")
            assert refused == []  # every search and photo request carried the key
            _shot(page, "private-catalogue")
            page.close()


def test_result_cards_show_the_thumbnail_title_and_chosen_fields_escaped(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """--card-fields: price as text, an http(s) URL as a link; catalogue values never become markup or script."""
    folder = tmp_path_factory.mktemp("web-cards")
    evil = '<img src=x onerror="window.pwned=1">'
    with open(folder / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["product_id", "image", "title", "category", "domain", "price", "link", "note", "bad_link"])
        for i in range(3):
            (folder / f"c{i}.png").write_bytes(encode(picture(70 + i, (400, 300))))
            out.writerow([f"card-{i}", f"c{i}.png", f"{evil} {i}", "Red", "other_product", f"1{i}.5",
                          f"https://shop.example/p/{i}?a=1&b=<b>", evil, "javascript:window.pwned=1"])
    fields = ("price", "link", "note", "bad_link", "absent")
    with Shoplens(folder / "store", **{"intent.classifier": "test-other_product", "search.rank_filter": False}) as lens:
        lens.index(folder / "catalog.csv")
        with LiveServer(create_app(lens, ServerSettings(card_fields=fields))) as server:
            server.wait_ready()
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url)
            page.set_input_files("#pick", str(folder / "c1.png"))
            page.wait_for_selector(".card", timeout=60_000)
            card = page.query_selector(".card")
            assert card.get_attribute("data-product-id") == "card-1"
            assert card.query_selector(".title").inner_text() == f"{evil} 1"  # as text
            assert card.query_selector(".id").inner_text() == "card-1"
            assert [r.get_attribute("data-field") for r in card.query_selector_all(".field")] == ["price", "link", "note", "bad_link"]
            assert card.query_selector('.field[data-field="price"] dd').inner_text() == "11.5"
            link = card.query_selector('.field[data-field="link"] a')
            assert link.get_attribute("href") == "https://shop.example/p/1?a=1&b=%3Cb%3E"
            assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")
            assert link.inner_text() == "shop.example/p/1"
            assert card.query_selector('.field[data-field="note"] dd').inner_text() == evil
            bad = card.query_selector('.field[data-field="bad_link"]')
            assert bad.query_selector("a") is None and bad.inner_text().endswith("javascript:window.pwned=1")
            # the only image in a card is its thumbnail, loaded from image_url
            assert page.evaluate("[...document.querySelectorAll('.card')].every(c => c.querySelectorAll('img').length === 1)")
            img = card.query_selector(".thumb img")
            assert "/thumbnail?size=256&v=" in img.get_attribute("src")
            _wait_until(page, "(() => { const i = document.querySelector('.card .thumb img'); return i.complete && i.naturalWidth > 0; })()")
            assert page.evaluate("document.querySelector('.card .thumb img').naturalWidth") == 256  # a 400 x 300 photo, shrunk
            assert page.evaluate("window.pwned") is None and errors == []
            _shot(page, "result-cards")
            page.close()


def test_search_with_words_where_the_backbone_has_a_text_tower(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A store indexed with a CLIP backbone shows the text box; words give the nearest products, then a photo search shows its photo again."""
    pytest.importorskip("transformers", reason="the tiny CLIP checkpoint needs the [hf] extra")
    from .test_text_search import make_clip_with_tokenizer

    folder = tmp_path_factory.mktemp("web-text")
    clip = make_clip_with_tokenizer(folder / "clip")
    lines = ["product_id,image,title,category,domain"]
    for i in range(4):
        (folder / f"t{i}.png").write_bytes(encode(picture(80 + i, (200, 160))))
        lines.append(f"t{i},t{i}.png,Words {i},Red,other_product")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    flags = {"embed.other_product.backbone": f"local-dir:{clip}", "local.enabled": False,
             "intent.classifier": "test-other_product", "search.rank_filter": False}
    with Shoplens(folder / "store", **flags) as lens:
        lens.index(folder / "catalog.csv")
        expected = [h.product_id for h in lens.search_text("a red box", top_k=3)[0].regions[0].results]
        with LiveServer(create_app(lens, ServerSettings())) as server:
            server.wait_ready()
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url)
            page.wait_for_selector("#text-form:not([hidden])", timeout=30_000)
            page.click(".options summary")
            page.fill("#topk", "3")
            page.fill("#text-query", "a red box")
            page.click("#text-form button")
            page.wait_for_selector(".card", timeout=60_000)
            assert [c.get_attribute("data-product-id") for c in page.query_selector_all(".card")] == expected
            assert "a red box" in page.inner_text("#searched-text")
            assert page.inner_text(".region-head h2") == "Product"
            assert page.evaluate("document.getElementById('query-photo').hidden")  # no photo to show for words
            _shot(page, "text-search")
            page.set_input_files("#pick", str(folder / "t1.png"))
            page.wait_for_selector("#intent", timeout=60_000)
            assert not page.evaluate("document.getElementById('query-photo').hidden")
            assert errors == []
            page.close()

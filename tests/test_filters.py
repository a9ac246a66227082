"""Metadata filters: the language, its SQL evaluation, and filtering inside the index search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoplens import Shoplens
from shoplens.cli import main
from shoplens.errors import FilterError
from shoplens.filters import Filter, parse_filter, parse_filters
from shoplens.store import EmbeddedStore, ImageRecord, ProductRecord, WriteBatch

from . import test_engine  # noqa: F401  (registers the test-* intent classifiers)
from .conftest import make_image


def test_parse_operators_and_values() -> None:
    assert parse_filter("category=Juice") == Filter("category", "=", ("Juice",))
    assert parse_filter(" category = Juice|Milk ") == Filter("category", "=", ("Juice", "Milk"))
    assert parse_filter("price<=20") == Filter("price", "<=", (20,))
    assert parse_filter("price>=12.50") == Filter("price", ">=", (12.5,))
    assert parse_filter("price<3") == Filter("price", "<", (3,))
    assert parse_filter("sku!=00123") == Filter("sku", "!=", ("00123",))  # a code stays text
    assert parse_filter("title~Apple juice") == Filter("title", "~", ("Apple juice",))
    assert parse_filter("product_id=42") == Filter("product_id", "=", ("42",))  # product columns are text
    assert str(parse_filter("price<=20")) == "price<=20"
    assert parse_filters(None) == [] and parse_filters("a=b") == [Filter("a", "=", ("b",))]


@pytest.mark.parametrize(
    "text, message",
    [
        ("category", "no operator"),
        ("=Juice", "no field name"),
        ("category=", "no value"),
        ("category=Juice||Milk", "empty alternative"),
        ('bad"name=1', "without quotes"),
        ("x=\x00", "control characters"),
        ("f" * 200 + "=1", "at most 128"),
        ("price<=99999999999999999999", "outside the range of integers"),  # SQLite binds integers as 64 bits
        ("price>-9223372036854775809", "outside the range of integers"),
        pytest.param("price<=" + "9" * 5000, "5000 characters, more than the 400", id="5000 digits"),  # int() refuses over 4,300
        pytest.param("price=1|" + "9" * 320 + ".5", "beyond the range of decimal numbers", id="1e320"),
    ],
)
def test_bad_filters_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(text)


def test_numbers_at_the_limits_of_the_store(store: EmbeddedStore) -> None:
    assert parse_filter("price<=9223372036854775807").values == (2**63 - 1,)
    assert parse_filter("price>=-9223372036854775808").values == (-(2**63),)
    assert _products(store, "price<=9223372036854775807") == {"a", "b", "c"}
    assert _products(store, "price>-9223372036854775808") == {"a", "b", "c"}
    with pytest.raises(FilterError, match="outside the range"):  # a Filter built in Python is checked as well
        store.filter_image_ids("other_product", [Filter("price", "<=", (10**20,))])
    with pytest.raises(FilterError, match="not finite"):
        Filter("price", "<=", (float("inf"),))


class Identity:
    def project(self, domain: str, raw: np.ndarray) -> np.ndarray:
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def version(self, domain: str) -> str:
        return "identity"


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    rows = [
        ("a", "Apple juice", "Juice", {"price": 12.5, "sku": "00123", "organic": True}),
        ("b", "Orange juice", "Juice", {"price": 30, "sku": "00124", "organic": False}),
        ("c", "Whole milk", "Milk", {"price": 9, "brand": "Acme"}),
        ("d", "Oat milk", "Milk", {"price": "cheap", "brand": "Oaty"}),  # a text price is never a number
        ("e", "Soap", None, {"tags": ["a", "b"]}),
    ]
    s = EmbeddedStore(tmp_path / "s", Identity())
    rng = np.random.default_rng(0)
    s.write(
        WriteBatch(
            products=[ProductRecord(p, t, c, "catalogue", "other_product", "catalogue", m) for p, t, c, m in rows],
            add_images=[ImageRecord(p, f"{p}.jpg", p, "other_product", "sig", rng.normal(size=8)) for p, *_ in rows],
        )
    )
    yield s
    s.close()


def _products(store: EmbeddedStore, *filters: str) -> set[str]:
    ids = store.filter_image_ids("other_product", parse_filters(filters))
    return set(store.image_products(ids.tolist()).values())


def test_filters_evaluated_in_sql(store: EmbeddedStore) -> None:
    assert _products(store, "category=Juice") == {"a", "b"}
    assert _products(store, "category=Juice|Milk") == {"a", "b", "c", "d"}
    assert _products(store, "category!=Juice") == {"c", "d", "e"}  # absent counts as different
    assert _products(store, "price<=12.5") == {"a", "c"}  # numbers as numbers: 9 < 12.5 < 30
    assert _products(store, "price>10", "price<100") == {"a", "b"}
    assert _products(store, "price=30") == {"b"} and _products(store, "price=30.0") == {"b"}
    assert _products(store, "sku=00123") == {"a"} and _products(store, "sku=123") == set()
    assert _products(store, "title~MILK") == {"c", "d"}
    assert _products(store, "organic=true") == {"a"} and _products(store, "organic=false") == {"b"}
    assert _products(store, "brand!=Acme") == {"a", "b", "d", "e"}
    assert _products(store, "nothing=1") == set()
    assert _products(store, "category=Juice", "price>20") == {"b"}
    assert store.filter_image_ids("apparel", parse_filters("category=Juice")).size == 0


def test_filter_reaches_products_far_from_the_query(tmp_path: Path) -> None:
    """The filter runs inside the index search: a post-filter on the top-K would find nothing."""
    rows = ["product_id,image,category,domain,price"]
    for i in range(24):
        make_image(tmp_path / "img" / f"p{i}.png", seed=i)
        rows.append(f"p{i},img/p{i}.png,c{i % 3},other_product,{i}")
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    flags = {"intent.classifier": "test-other_product", "search.rank_filter": False, "search.entropy_filter": False, "search.category_order": False,
             "local.enabled": False}  # global distances only: the local step reorders near-ties differently per shortlist
    query = tmp_path / "img" / "p0.png"
    with Shoplens(tmp_path / "store", **flags, **{"search.similar_k": 100}) as lens:
        lens.index(tmp_path / "c.csv")
        ranking = [h.product_id for h in lens.search_one(query, top_k=100).regions[0].results]
    assert ranking[0] == "p0" and len(ranking) == 24
    farthest, far = ranking[-1], ranking[-5:]
    with Shoplens(tmp_path / "store", **flags, **{"search.similar_k": 3}) as lens:
        # Unfiltered, the index is asked for similar_k + 16 = 19 neighbours (exact search):
        # the 5 farthest of 24 are not among them, so a post-filter could never return them.
        assert len(lens.search_one(query, top_k=100).regions[0].results) == 3
        price = int(farthest[1:])
        hits = lens.search_one(query, top_k=100, filters=[f"price>={price}", f"price<={price}"]).regions[0].results
        assert [h.product_id for h in hits] == [farthest]
        hits = lens.search_one(query, top_k=100, filters=f"product_id={'|'.join(far)}").regions[0].results
        assert [h.product_id for h in hits] == far[:3]  # the 3 nearest of the allowed, in order
        with pytest.raises(FilterError):
            lens.search([query], filters=["price<"])


def test_cli_filter(tmp_path: Path, synthetic_catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert main(["index", str(synthetic_catalogue), "--store", store, "--intent-classifier", "test-other_product"]) == 0
    capsys.readouterr()
    query = str(synthetic_catalogue.parent / "img" / "p0.png")
    args = ["search", query, "--store", store, "--json", "--no-rank-filter", "--no-entropy-filter"]
    assert main(args + ["--filter", "category=blue", "--filter", "price<=14"]) == 0
    hits = json.loads(capsys.readouterr().out)["regions"][0]["results"]
    assert sorted(h["product_id"] for h in hits) == ["p3"]  # blue: p3 (13.5), p4, p5; price <= 14: p3
    assert main(args + ["--filter", "price<<3"]) == 2
    assert "filter" in capsys.readouterr().err
    for huge in ("price<=99999999999999999999", "price<=" + "9" * 5000):
        assert main(args + ["--filter", huge]) == 2
        err = capsys.readouterr().err
        assert err.startswith("shoplens: error: filter 'price<=9") and err.count("\n") == 1 and len(err) < 300, err


FILTERS = [
    "category=Juice", "category=Juice|Milk", "category!=Juice", "price<=12.5", "price>10", "price=30", "price=30.0",
    "sku=00123", "sku=123", "title~MILK", "organic=true", "organic=false", "organic!=true", "brand!=Acme", "nothing=1",
    "price>cheap", "price<=cheap", "brand>=B", "title<Orange", "sku~12", "price~2.5", "organic~1", "tags~b", "tags=x",
    "product_id=c|e", "domain=other_product", "price!=9|30", "category~ui",
]


@pytest.mark.parametrize("text", FILTERS)
def test_python_matcher_agrees_with_sql(store: EmbeddedStore, text: str) -> None:
    """Engines without SQL (Milvus) evaluate filters in Python: same products for every operator and type."""
    from shoplens.filters import matches

    filters = parse_filters(text)
    expected = _products(store, text)
    got = {
        p.product_id
        for p in store.iter_products()
        if matches(filters, {"product_id": p.product_id, "title": p.title, "category": p.category, "domain": p.domain}, p.metadata)
    }
    assert got == expected, text


@pytest.mark.slow
def test_milvus_filters_match_the_embedded_store(tmp_path: Path, store: EmbeddedStore) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from shoplens.store import open_catalogue_store

    milvus = open_catalogue_store(f"milvus-lite:{tmp_path / 'm.db'}", Identity())
    try:
        products = list(store.iter_products())
        images = [r for r in store.iter_images()]
        milvus.write(WriteBatch(products=products, add_images=images))
        for text in FILTERS:
            ids = milvus.filter_image_ids("other_product", parse_filters(text))
            assert set(milvus.image_products(ids.tolist()).values()) == _products(store, text), text
    finally:
        milvus.close()

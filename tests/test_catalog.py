from __future__ import annotations

from pathlib import Path

import pytest

from shoplens.catalog import parse_value, read_catalogue
from shoplens.errors import CatalogueError


def test_csv_rows_paths_metadata(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text(
        "product_id,image,title,category,domain,price,sku,colour\n"
        "p1,a.jpg,Red shirt,Shirt,apparel,12.50,00123,red\n"
        "p2,/abs/b.jpg,,,,,,\n"
    )
    rows = list(read_catalogue(tmp_path / "c.csv"))
    assert rows[0].image == str(tmp_path.resolve() / "a.jpg")
    assert rows[0].metadata == {"price": 12.5, "sku": "00123", "colour": "red"}
    assert rows[0].domain == "apparel" and rows[0].title == "Red shirt"
    assert rows[1].image == "/abs/b.jpg" and rows[1].category is None and rows[1].domain is None
    assert all(r.error is None for r in rows)


def test_missing_required_columns(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("id,path\n1,a.jpg\n")
    with pytest.raises(CatalogueError, match="missing required column.*product_id, image.*found columns: id, path"):
        read_catalogue(tmp_path / "c.csv")


def test_row_errors_do_not_stop_the_rest(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("product_id,image,domain\n,a.jpg,\np2,,\np3,c.jpg,furniture\np4,d.jpg,,extra\np5,e.jpg,other_product\n")
    rows = list(read_catalogue(tmp_path / "c.csv"))
    errors = [r.error for r in rows]
    assert errors[0] == "empty product_id"
    assert errors[1] == "empty image path"
    assert "furniture" in errors[2]
    assert errors[3] == "more cells than header columns"
    assert errors[4] is None and rows[4].origin == "c.csv:6"


def test_not_a_csv(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    with pytest.raises(CatalogueError):
        read_catalogue(tmp_path / "c.csv")
    with pytest.raises(CatalogueError, match="no such catalogue"):
        read_catalogue(tmp_path / "missing.csv")


def test_folder_catalogue(tmp_path: Path) -> None:
    for rel in ("shoes/boot-1.jpg", "shoes/boot-2.png", "loose.jpg", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    rows = sorted(read_catalogue(tmp_path), key=lambda r: r.product_id)
    assert [(r.product_id, r.category) for r in rows] == [("boot-1", "shoes"), ("boot-2", "shoes"), ("loose", None)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CatalogueError, match="holds no images"):
        read_catalogue(empty)


def test_parse_value() -> None:
    assert parse_value("12") == 12 and parse_value("-3.25") == -3.25
    assert parse_value("007") == "007" and parse_value("1e3") == "1e3" and parse_value("nan") == "nan"


def test_parse_value_refuses_numbers_the_store_cannot_hold() -> None:
    assert parse_value("9223372036854775807") == 2**63 - 1 and parse_value("-9223372036854775808") == -(2**63)
    for text, message in [
        ("9223372036854775808", "outside the range of integers"),
        ("99999999999999999999", "outside the range of integers"),
        ("9" * 5000, "5000 characters"),
        ("9" * 320 + ".5", "beyond the range of decimal numbers"),
    ]:
        with pytest.raises(CatalogueError, match=message):
            parse_value(text)


def test_a_cell_that_cannot_be_converted_fails_its_row_only(tmp_path: Path) -> None:
    huge = "9" * 5000
    (tmp_path / "c.csv").write_text(
        "product_id,image,price,note\n"
        "p1,a.jpg,12,\n"
        f"p2,b.jpg,{huge},\n"
        "p3,c.jpg,99999999999999999999,\n"
        f"p4,d.jpg,1,{'x' * 200_000}\n"  # over the csv module's field limit
        "p5,e.jpg\n"  # a short row: its missing cells are empty
        "p6,f.jpg,3,ok\n"
    )
    rows = list(read_catalogue(tmp_path / "c.csv"))
    assert [r.origin for r in rows] == [f"c.csv:{n}" for n in range(2, 8)]
    assert [r.error is None for r in rows] == [True, False, False, False, True, True]
    assert rows[1].product_id == "p2" and "column 'price'" in (rows[1].error or "") and "5000 characters" in (rows[1].error or "")
    assert len(rows[1].error or "") < 200  # the cell is not echoed whole
    assert "outside the range of integers" in (rows[2].error or "")
    assert "malformed CSV row" in (rows[3].error or "") and "field limit" in (rows[3].error or "")
    assert rows[4].metadata == {"price": "", "note": ""} and rows[5].metadata == {"price": 3, "note": "ok"}


def test_a_default_domain_fills_rows_that_name_none(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("product_id,image,domain\na,a.jpg,\nb,b.jpg,other_product\n")
    rows = list(read_catalogue(tmp_path / "c.csv", domain="apparel"))
    assert [(r.product_id, r.domain) for r in rows] == [("a", "apparel"), ("b", "other_product")]  # a row's own cell wins
    (tmp_path / "hats").mkdir()
    (tmp_path / "hats" / "h.jpg").write_bytes(b"x")
    assert [r.domain for r in read_catalogue(tmp_path / "hats", domain="other_product")] == ["other_product"]
    assert [r.domain for r in read_catalogue(tmp_path / "hats")] == [None]
    with pytest.raises(CatalogueError, match="'shoes' is not one of apparel, other_product"):
        read_catalogue(tmp_path / "hats", domain="shoes")

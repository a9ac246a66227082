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

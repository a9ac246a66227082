"""Catalogue ingestion: a CSV or a folder of product photos -> validated rows.

CSV (docs/method.md, "Catalogue CSV"): required columns ``product_id`` and ``image`` (a
path relative to the CSV's folder, or absolute); optional ``title``,
``category``, ``domain`` (``apparel`` / ``other_product``); every other column
is kept as metadata. A folder: every image file below it, ``product_id`` = file
stem, ``category`` = parent folder name. ``read_catalogue(..., domain=...)``
gives every row without a domain of its own that domain (``shoplens index
--domain``); where neither says, the indexer infers one per category
(:mod:`shoplens.pipeline.indexing`).

Structural problems (missing file, missing columns) raise
:class:`CatalogueError` at once; problems of one row are reported on that row
(:attr:`CatalogueRow.error`) so the other rows still go in.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import DOMAINS
from .errors import CatalogueError

REQUIRED_COLUMNS = ("product_id", "image")
KNOWN_COLUMNS = ("product_id", "image", "title", "category", "domain")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
#: Longest product_id accepted; ids are keys, not descriptions.
MAX_ID_LENGTH = 512
#: Integers are stored as SQLite's 64-bit integers: none outside this range can be held.
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1
#: Longest number read, in characters: a double holds 17 significant digits, and
#: a bound keeps a huge cell from costing time to convert.
MAX_NUMBER_LENGTH = 400


@dataclass(frozen=True)
class CatalogueRow:
    """One product image of a catalogue."""

    product_id: str
    image: str  # absolute path, or another source the reader understands
    title: str | None = None
    category: str | None = None
    domain: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Where the row came from, for messages ("catalog.csv:12").
    origin: str = ""
    #: A problem with this row alone; such a row is reported, not indexed.
    error: str | None = None


_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


def parse_value(text: str) -> Any:
    """Metadata values: plain decimal numbers become numbers, the rest stays text.

    ``"12.50"`` becomes 12.5, but ``"00123"`` (a code) stays a string. A
    number the store cannot hold (an integer outside the signed 64-bit range,
    a decimal beyond a double's range, or one longer than
    :data:`MAX_NUMBER_LENGTH` characters) raises :class:`CatalogueError`.
    """
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        return text
    if len(stripped) > MAX_NUMBER_LENGTH:
        raise CatalogueError(f"the number {_shorten(stripped)} has {len(stripped)} characters, more than the {MAX_NUMBER_LENGTH} a number may have")
    if "." in stripped:
        number = float(stripped)
        if not math.isfinite(number):
            raise CatalogueError(f"the number {_shorten(stripped)} is beyond the range of decimal numbers (about 1.8e308)")
        return number
    digits = len(stripped.lstrip("-"))
    value = int(stripped) if digits <= 19 else None  # int() of thousands of digits is refused by Python itself
    if value is None or not MIN_INTEGER <= value <= MAX_INTEGER:
        raise CatalogueError(
            f"the integer {_shorten(stripped)} ({digits} digits) is outside the range of integers the store holds "
            f"({MIN_INTEGER} to {MAX_INTEGER})"
        )
    return value


def _shorten(text: str, keep: int = 24) -> str:
    return text if len(text) <= keep else f"{text[:keep]}…"


def validate_row(product_id: str, image: str, domain: str | None) -> str | None:
    """The problem with a row's key fields, or None."""
    if not product_id:
        return "empty product_id"
    if len(product_id) > MAX_ID_LENGTH:
        return f"product_id longer than {MAX_ID_LENGTH} characters"
    if any(ord(ch) < 32 for ch in product_id):
        return "product_id contains control characters"
    if not image:
        return "empty image path"
    if domain and domain not in DOMAINS:
        return f"domain {domain!r} is not one of {', '.join(DOMAINS)}"
    return None


def read_catalogue(source: str | Path, *, domain: str | None = None) -> Iterator[CatalogueRow]:
    """Rows of a catalogue CSV or folder (see module doc), lazily.

    ``domain``: the domain of every row that does not name one (a CSV's
    ``domain`` cell wins); ``None`` leaves those rows to the indexer's inference.
    """
    check_domain(domain)
    path = Path(source)
    if not path.exists():
        raise CatalogueError(f"{path}: no such catalogue file or folder")
    rows = _read_folder(path) if path.is_dir() else _read_csv(path)
    return rows if domain is None else with_default_domain(rows, domain)


def check_domain(domain: str | None) -> None:
    """Raise :class:`CatalogueError` unless ``domain`` is ``None`` or one of :data:`~shoplens.config.DOMAINS`."""
    if domain is not None and domain not in DOMAINS:
        raise CatalogueError(f"domain {domain!r} is not one of {', '.join(DOMAINS)}")


def with_default_domain(rows: Iterable[CatalogueRow], domain: str) -> Iterator[CatalogueRow]:
    """``rows``, each without a domain given ``domain``."""
    for row in rows:
        yield row if row.domain else replace(row, domain=domain)


def _read_csv(path: Path) -> Iterator[CatalogueRow]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CatalogueError(f"{path}: cannot read: {err.strerror or err}") from None
    base = path.parent.resolve()

    def beside(cell: str) -> str:
        p = Path(cell)
        return str(p if p.is_absolute() else (base / p))

    return _parse_csv(raw, path, path.name, beside)


def read_catalogue_bytes(raw: bytes, *, name: str, image: Callable[[str], str]) -> Iterator[CatalogueRow]:
    """Rows of a catalogue CSV given as bytes (an upload named ``name``), lazily.

    ``image(cell)`` turns each row's image cell into the source the indexer
    reads (a path), or raises :class:`CatalogueError`: that row's error (it is
    reported, the other rows are indexed). The header is checked at once.
    """
    return _parse_csv(raw, name, Path(name).name, image)


def _parse_csv(raw: bytes, path: str | Path, origin: str, image: Callable[[str], str]) -> Iterator[CatalogueRow]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CatalogueError(f"{path}: not a UTF-8 text file (is it a CSV?)") from None
    if "\x00" in text:
        raise CatalogueError(f"{path}: contains NUL bytes; not a CSV file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise CatalogueError(
            f"{path}: missing required column(s) {', '.join(missing)}; found columns: {', '.join(columns) or 'none'}"
        )
    if len(set(columns)) != len(columns):
        raise CatalogueError(f"{path}: duplicate column names in the header")
    reader.fieldnames = columns
    return _csv_rows(reader, origin, image)


def _csv_rows(reader: csv.DictReader[str], name: str, resolve: Callable[[str], str]) -> Iterator[CatalogueRow]:
    records = iter(reader)
    line = 1
    while True:
        line += 1
        origin = f"{name}:{line}"
        try:
            record = next(records)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a cell over the csv module's field limit: this row only
            yield CatalogueRow("", "", origin=origin, error=f"malformed CSV row ({err})")
            continue
        if None in record:  # more cells than header columns
            yield CatalogueRow("", "", origin=origin, error="more cells than header columns")
            continue
        values = {k: (v or "").strip() for k, v in record.items()}
        product_id = values.get("product_id", "")
        image = values.get("image", "")
        domain = values.get("domain") or None
        error = validate_row(product_id, image, domain)
        image_path = ""
        if image:
            try:
                image_path = resolve(image)
            except CatalogueError as err:
                error = error or str(err)
        metadata: dict[str, Any] = {}
        for k, v in record.items():
            if k in KNOWN_COLUMNS or not k:
                continue
            cell = v or ""  # a short row's missing cells read as empty ones
            try:
                metadata[k] = parse_value(cell)
            except CatalogueError as err:
                error = error or f"column {k!r}: {err}"
                metadata[k] = cell
        yield CatalogueRow(
            product_id=product_id,
            image=image_path,
            title=values.get("title") or None,
            category=values.get("category") or None,
            domain=domain,
            metadata=metadata,
            origin=origin,
            error=error,
        )


def _read_folder(root: Path) -> Iterator[CatalogueRow]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CatalogueError(f"{root}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return _folder_rows(root, files)


def _folder_rows(root: Path, files: list[Path]) -> Iterator[CatalogueRow]:
    root_resolved = root.resolve()
    for p in files:
        parent = p.parent.resolve()
        category = None if parent == root_resolved else p.parent.name
        error = validate_row(p.stem, str(p), None)
        yield CatalogueRow(product_id=p.stem, image=str(p.resolve()), category=category, origin=str(p.relative_to(root)), error=error)


def read_labelled_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a small labelled CSV (photos with their labels), keys and values stripped.

    ``required`` columns must be in the header; an unreadable, non-UTF-8 or
    malformed file raises :class:`CatalogueError` naming the problem.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in columns]
            if missing:
                raise CatalogueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'no header'}")
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except OSError as err:
        raise CatalogueError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise CatalogueError(f"{path}: not a UTF-8 text CSV") from None
    except csv.Error as err:
        raise CatalogueError(f"{path}: malformed CSV ({err})") from None

"""Metadata filters: one small language for the CLI, the Python API and the HTTP API.

A filter is ``FIELD OP VALUE``; several filters must all hold::

    category=Juice            equal
    category=Juice|Milk       any of these values
    category!=Juice           different, or the field is absent
    price<=20   price>5       ordering (<, <=, >, >=); a number compares as a number
    title~apple               contains, ignoring case

``FIELD`` is ``product_id``, ``title``, ``category``, ``domain`` or any
catalogue metadata column (``price``, ``brand`` …). Values are read the way
catalogue cells are: ``12.50`` is the number 12.5, ``00123`` stays text, so
``price<=20`` compares numbers and ``sku=00123`` compares text. A numeric
comparison never matches a text value. ``true``/``false`` also match JSON
booleans. A number the store cannot hold (see :func:`shoplens.catalog.parse_value`)
is a :class:`FilterError`, as is a :class:`Filter` built with one.

The store evaluates filters into the set of allowed image ids of a domain,
which the index search uses as a selector: filtering happens inside the
search, not by cutting a top-K afterwards.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .catalog import MAX_INTEGER, MIN_INTEGER, parse_value
from .errors import CatalogueError, FilterError

#: Product columns (the rest of the fields are metadata keys).
COLUMNS = ("product_id", "title", "category", "domain")
#: Operators, longest first so ``<=`` is not read as ``<``.
OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "~")
ORDERING = ("<", "<=", ">", ">=")
MAX_FIELD_LENGTH = 128
MAX_VALUES = 256

_OP_RE = re.compile(r"!=|<=|>=|=|<|>|~")


@dataclass(frozen=True)
class Filter:
    """One parsed condition; ``values`` holds several only for ``=`` and ``!=``."""

    field: str
    op: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        # SQLite binds integers as 64 bits (a larger one raises OverflowError) and has no infinities.
        for v in self.values:
            if isinstance(v, int) and not isinstance(v, bool) and not MIN_INTEGER <= v <= MAX_INTEGER:
                raise FilterError(f"filter on {self.field!r}: the integer {v} is outside the range {MIN_INTEGER} to {MAX_INTEGER}")
            if isinstance(v, float) and not math.isfinite(v):
                raise FilterError(f"filter on {self.field!r}: the number {v} is not finite")

    def __str__(self) -> str:
        return f"{self.field}{self.op}{'|'.join(str(v) for v in self.values)}"

    @property
    def is_column(self) -> bool:
        return self.field in COLUMNS


FilterLike = str | Filter


def parse_filter(text: str) -> Filter:
    """Parse ``FIELD OP VALUE`` (see the module doc); raises :class:`FilterError`."""
    if not isinstance(text, str):
        raise FilterError(f"a filter must be text like 'category=Juice', got {type(text).__name__}")
    match = _OP_RE.search(text)
    if match is None:
        raise FilterError(f"filter {text!r} has no operator; expected FIELD OP VALUE with OP one of {' '.join(OPERATORS)}, e.g. 'category=Juice' or 'price<=20'")
    field, op, raw = text[: match.start()].strip(), match.group(), text[match.end() :].strip()
    if not field:
        raise FilterError(f"filter {text!r} has no field name before {op!r}")
    if len(field) > MAX_FIELD_LENGTH or any(ord(c) < 32 or c == '"' for c in field):
        raise FilterError(f"filter {text!r}: field names are at most {MAX_FIELD_LENGTH} characters, without quotes or control characters")
    if not raw:
        raise FilterError(f"filter {text!r} has no value after {op!r}")
    if raw[0] in "=<>!~":
        raise FilterError(f"filter {text!r}: the value starts with {raw[0]!r}; write one operator, e.g. 'price<=20'")
    if any(ord(c) < 32 for c in raw):
        raise FilterError(f"filter {text!r}: the value contains control characters")
    parts = [p.strip() for p in raw.split("|")] if op in ("=", "!=") else [raw]
    if any(not p for p in parts):
        raise FilterError(f"filter {text!r} has an empty alternative in {raw!r}")
    if len(parts) > MAX_VALUES:
        raise FilterError(f"filter {text!r} lists more than {MAX_VALUES} values")
    if field in COLUMNS or op == "~":
        values: tuple[Any, ...] = tuple(parts)
    else:
        try:
            values = tuple(parse_value(p) for p in parts)
        except CatalogueError as err:
            raise FilterError(f"filter {_quoted(text)}: {err}") from None
    return Filter(field, op, values)


def _quoted(text: str, keep: int = 64) -> str:
    """``text`` as quoted in a message: a 5,000-digit value is not echoed whole."""
    return repr(text) if len(text) <= keep else f"{text[:keep]!r}… ({len(text)} characters)"


def parse_filters(filters: FilterLike | Iterable[FilterLike] | None) -> list[Filter]:
    """Parse one filter or several (strings or :class:`Filter`); None gives none."""
    if filters is None:
        return []
    if isinstance(filters, (str, Filter)):
        filters = [filters]
    return [f if isinstance(f, Filter) else parse_filter(f) for f in filters]


def to_sql(filters: Sequence[Filter], columns: dict[str, str], metadata_column: str) -> tuple[str, list[Any]]:
    """A SQL condition (``AND`` of all filters) and its parameters.

    ``columns`` maps the product columns to SQL expressions; other fields are
    read from the JSON text in ``metadata_column`` with ``json_extract``.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for f in filters:
        sql, p = _clause(f, columns, metadata_column)
        clauses.append(sql)
        params.extend(p)
    return (" AND ".join(f"({c})" for c in clauses) or "1"), params


def _clause(f: Filter, columns: dict[str, str], meta: str) -> tuple[str, list[Any]]:
    if f.field in columns:
        expr, xp, kind = columns[f.field], [], ""
    else:
        path = f'$."{f.field}"'
        expr, xp, kind = f"json_extract({meta}, ?)", [path], f"json_type({meta}, ?)"
    if f.op == "~":
        return f"instr(lower(CAST({expr} AS TEXT)), lower(?)) > 0", [*xp, f.values[0]]
    if f.op in ORDERING:
        value = f.values[0]
        if kind and isinstance(value, (int, float)):
            return f"{kind} IN ('integer', 'real') AND {expr} {f.op} ?", [*xp, *xp, value]
        if kind:
            return f"{kind} = 'text' AND {expr} {f.op} ?", [*xp, *xp, value]
        return f"{expr} {f.op} ?", [value]
    # = and != : any of the values; true/false also match JSON booleans
    alternatives: list[str] = []
    params: list[Any] = []
    plain = [v for v in f.values if not (kind and isinstance(v, str) and v.lower() in ("true", "false"))]
    if plain:
        alternatives.append(f"{expr} IN ({','.join('?' * len(plain))})")
        params.extend([*xp, *plain])
    for v in f.values:
        if kind and isinstance(v, str) and v.lower() in ("true", "false"):
            alternatives.append(f"({kind} = ? OR {expr} = ?)")
            params.extend([*xp, v.lower(), *xp, v])
    any_of = " OR ".join(alternatives)
    if f.op == "=":
        return any_of, params
    return f"{expr} IS NULL OR NOT ({any_of})", [*xp, *params]


def matches(filters: Sequence[Filter], columns: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    """Whether a product passes every filter, evaluated in Python with :func:`to_sql`'s meaning.

    For engines without SQL (Milvus): ``columns`` holds the product columns,
    ``metadata`` the catalogue metadata as JSON values.
    """
    return all(_match(f, columns, metadata) for f in filters)


def _match(f: Filter, columns: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    is_column = f.field in COLUMNS
    v = columns.get(f.field) if is_column else metadata.get(f.field)
    if f.op == "~":
        return v is not None and f.values[0].lower() in _sql_text(v).lower()
    if f.op in ORDERING:
        value = f.values[0]
        if v is None:
            return False
        if not is_column:
            if isinstance(value, (int, float)):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    return False
            elif not isinstance(v, str):
                return False
        elif isinstance(value, (int, float)) != isinstance(v, (int, float)):
            return False
        return bool({"<": v < value, "<=": v <= value, ">": v > value, ">=": v >= value}[f.op])
    any_of = False
    for value in f.values:
        if not is_column and isinstance(value, str) and value.lower() in ("true", "false"):
            hit = v is (value.lower() == "true") or (isinstance(v, str) and v == value)
        else:
            hit = v is not None and _sql_equal(v, value)
        any_of = any_of or hit
    if f.op == "=":
        return any_of
    return v is None or not any_of


def _sql_text(v: Any) -> str:
    """``CAST(json_extract(...) AS TEXT)`` in SQLite."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    return str(v)


def _sql_equal(v: Any, value: Any) -> bool:
    """SQLite's ``=`` between a JSON value and a parameter: numbers with numbers, text with text."""
    if isinstance(v, (list, dict)):
        v = _sql_text(v)
    if isinstance(v, str) != isinstance(value, str):
        return False
    return bool(v == value)


__all__ = ["COLUMNS", "OPERATORS", "Filter", "FilterLike", "matches", "parse_filter", "parse_filters", "to_sql"]

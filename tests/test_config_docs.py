"""The configuration fields are the one description of every option: docs, help and validation agree with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from shoplens.cli import main
from shoplens.config import Config, markdown_table, options, options_summary, with_markdown_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, dataclasses.Field[Any]]]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _leaves(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f))
    return out


def test_the_doc_table_is_the_generated_one() -> None:
    text = DOC.read_text("utf-8")
    assert markdown_table() in text
    assert with_markdown_table(text) == text, "run: python -m shoplens.config --markdown docs/configuration.md"


def test_every_option_has_help_and_a_default_it_allows() -> None:
    leaves = _leaves(Config())
    assert leaves
    for name, f in leaves:
        assert str(f.metadata.get("help", "")).strip(), f"{name} has no help text"
    documented = {o.name for o in options()}
    for name, _ in leaves:
        section, *rest = name.split(".")
        assert name in documented or ".".join([section, "*", *rest[1:]]) in documented, name
    # Every default passes its own validation: the defaults resolve unchanged through a file's worth of values.
    assert Config().merged(Config().to_dict()) == Config()
    for o in options():
        if o.choices is not None:
            defaults = o.default.values() if isinstance(o.default, dict) else [o.default]
            assert all(d in o.choices for d in defaults), o.name
        assert o.name in options_summary()


def test_config_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    out = capsys.readouterr().out
    assert "local.scope = auto  {auto,candidates,all}" in out and "search.top_k = 10  (at least 1)" in out

from __future__ import annotations

from pathlib import Path

import pytest

from shoplens.config import Config, resolve_config
from shoplens.errors import ConfigError


def test_layers_defaults_file_flags(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[search]\nmin_rank = 1.2\ntop_k = 7\n[detect]\nenabled = false\n')
    cfg = resolve_config(toml, **{"search.top_k": 3, "search.min_rank": None})
    assert cfg.search.min_rank == 1.2  # from the file; None flag does not override
    assert cfg.search.top_k == 3  # flag beats file
    assert cfg.detect.enabled is False
    assert cfg.search.max_entropy_bits == Config().search.max_entropy_bits  # default untouched


def test_json_file_and_string_coercion(tmp_path: Path) -> None:
    js = tmp_path / "c.json"
    js.write_text('{"search": {"similar_k": 20}}')
    cfg = resolve_config(js, **{"search.rank_filter": "false", "search.max_distance": "1.5"})
    assert cfg.search.similar_k == 20 and cfg.search.rank_filter is False and cfg.search.max_distance == 1.5


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"search.nope": 1}, "unknown configuration option 'search.nope'"),
        ({"search.top_k": "many"}, "expected an integer"),
        ({"search.rank_filter": "maybe"}, "expected true or false"),
        ({"search.min_rank": "high"}, "expected a number"),
    ],
)
def test_bad_options_are_errors(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config(**flags)


def test_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[search\n")
    with pytest.raises(ConfigError, match="invalid configuration file"):
        resolve_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_config(tmp_path / "missing.toml")

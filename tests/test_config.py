from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoplens.cli import main
from shoplens.config import Config, load_store_config, resolve_config
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


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("local.scope", "everything", r"local.scope: expected one of 'auto', 'candidates', 'all', got 'everything'"),
        ("runtime.engine", "tpu", r"runtime.engine: expected one of 'auto', 'torch', 'onnx', 'openvino'"),
        ("runtime.precision", "f16", r"runtime.precision: expected one of 'f32', 'bf16'"),
        ("search.calibration", "sometimes", r"search.calibration: expected one of 'auto', 'off'"),
        ("store.index", "hnswx", r"store.index: expected one of 'auto', 'flat'"),
        ("search.top_k", 0, r"search.top_k: expected an integer of at least 1, got 0"),
        ("search.top_k", "0", r"search.top_k: expected an integer of at least 1"),
        ("intent.stop_score", 1.5, r"intent.stop_score: expected a number from 0 to 1, got 1.5"),
        ("runtime.threads", -1, r"runtime.threads: expected an integer of at least 0"),
        ("search.min_rank", "nan", r"search.min_rank: expected a number"),
        ("embed.other_product.extra_sizes", "320,big", r"embed.other_product.extra_sizes: expected input sizes"),
        ("embed.apparel.extra_sizes", "-320", r"embed.apparel.extra_sizes: expected input sizes"),
        ("embed.apparel.extra_sizes", 320, r"embed.apparel.extra_sizes: expected a string"),
    ],
)
def test_a_bad_value_names_the_option_and_what_it_allows(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config(**{key: value})
    section, *rest = key.split(".")
    nested: dict[str, Any] = {}
    node = nested
    for part in [section, *rest[:-1]]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value
    file = tmp_path / "c.json"
    file.write_text(json.dumps(nested))
    with pytest.raises(ConfigError, match=message):
        resolve_config(file)


def test_a_bad_set_value_is_an_error_line_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "local.scope=everything"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shoplens: error: local.scope: expected one of 'auto', 'candidates', 'all'")
    assert "Traceback" not in err
    assert main(["config", "--set", "search=1", "--set", "search.top_k=3"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_good_values_resolve_as_before(tmp_path: Path) -> None:
    cfg = resolve_config(**{
        "embed.other_product.extra_sizes": "288,320", "embed.apparel.extra_sizes": "",
        "search.calibration": "off", "local.scope": "all", "store.index": "hnsw", "runtime.precision": "bf16",
        "search.top_k": "3", "intent.stop_score": 1, "local.query_max_side": 0, "search.min_rank": -0.5,
    })
    assert cfg.embed.other_product.extra_sizes == "288,320" and cfg.embed.apparel.extra_sizes == ""
    assert cfg.search.top_k == 3 and cfg.intent.stop_score == 1.0 and isinstance(cfg.intent.stop_score, float)
    assert (cfg.search.calibration, cfg.local.scope, cfg.store.index) == ("off", "all", "hnsw")


def test_a_saved_store_config_loads_unchanged(tmp_path: Path) -> None:
    saved = Config().with_flags(**{"embed.other_product.extra_sizes": "320", "embed.apparel.extra_sizes": "",
                                   "local.enabled": False})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved.to_dict(), indent=2))
    loaded = load_store_config(path)
    assert loaded == saved and loaded.to_dict() == saved.to_dict()
    assert loaded.embed.other_product.extra_sizes == "320"

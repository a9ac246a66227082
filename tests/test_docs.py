"""The documentation users are pointed to exists and says what the code does.

docs/method.md is the reference for the pipeline and the search object's
schema: nothing user-facing may send people to a SPEC.md the project does not
ship, every option it names must exist, and the JSON fields it lists must be
those a real ``shoplens search --json`` prints.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import pytest

from shoplens.cli import build_parser, main
from shoplens.config import Config, options
from shoplens.results import ProductHit, RegionResult, SearchResult

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"
#: Text files under src/ a user may read (help strings, docstrings, the web page).
SOURCE_SUFFIXES = {".py", ".html", ".js", ".css", ".md", ".txt", ".json"}
#: "SPEC", as in "SPEC.md", "SPEC step 4" or "SPEC's formula".
SPEC = re.compile(r"\bSPEC\b")


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _all_parsers(sub)
    return out


def test_nothing_user_facing_points_to_spec() -> None:
    assert not SPEC.search((REPO / "README.md").read_text("utf-8")), "README.md mentions SPEC: point to docs/method.md"
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in sorted((REPO / "src").rglob("*"))
        if path.suffix in SOURCE_SUFFIXES and path.is_file() and "egg-info" not in path.parts[-2]
        for n, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), start=1)
        if SPEC.search(line)
    ]
    assert not offenders, "point to docs/method.md instead:\n" + "\n".join(offenders)
    for parser in _all_parsers(build_parser()):
        assert not SPEC.search(parser.format_help()), f"'{parser.prog} --help' mentions SPEC"


def test_readme_and_help_point_to_method() -> None:
    assert "docs/method.md" in (REPO / "README.md").read_text("utf-8")
    helps = {p.prog: p.format_help() for p in _all_parsers(build_parser())}
    assert "docs/method.md" in helps["shoplens search"] and "docs/method.md" in helps["shoplens serve"]


def _option_names() -> set[str]:
    names = set()
    for option in options():
        names.add(option.name)
        if option.name.startswith("embed.*."):
            names.update(option.name.replace("*", domain) for domain in ("apparel", "other_product"))
    return names


def test_method_names_only_real_options() -> None:
    sections = "|".join(f.name for f in Config.__dataclass_fields__.values())
    text = METHOD.read_text("utf-8")
    named = set(re.findall(rf"(?<![\w./-])((?:{sections})\.[a-z_*]+(?:\.[a-z_]+)?)(?![\w(])", text))
    # Dotted names of files (intent.md) are links, not options.
    named = {n for n in named if (n.count(".") == 1 or n.startswith("embed.")) and n.rsplit(".", 1)[1] not in {"md", "py", "csv", "json"}}
    assert len(named) >= 40, sorted(named)  # the page names the options of every step
    unknown = sorted(n for n in named - _option_names() if n not in {"embed.apparel", "embed.other_product", "embed.*"})
    assert not unknown, f"docs/method.md names options shoplens.config does not have: {unknown}"


def test_method_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#:]+\.md)\)", METHOD.read_text("utf-8")):
        assert (METHOD.parent / target).is_file(), target


def documented_fields() -> dict[str, str]:
    """The search object's field table of docs/method.md: dotted path -> meaning."""
    text = METHOD.read_text("utf-8")
    begin, end = text.index("<!-- search-object fields"), text.index("<!-- end of search-object fields -->")
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \|$", text[begin:end], re.M)
    assert rows, "no field table in docs/method.md"
    return dict(rows)


def _level(fields: dict[str, str], prefix: str) -> set[str]:
    """Field names directly under ``prefix`` ("" for the top level, "regions[]." for a region)."""
    return {k[len(prefix):] for k in fields if k.startswith(prefix) and "." not in k[len(prefix):]}


def _listed(meaning: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", meaning))


def test_method_fields_match_the_result_models() -> None:
    fields = documented_fields()
    assert _level(fields, "") == set(SearchResult.model_fields)
    assert _level(fields, "regions[].") == set(RegionResult.model_fields)
    assert _level(fields, "regions[].results[].") == set(ProductHit.model_fields)


@pytest.mark.slow
def test_method_fields_match_a_real_search(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grocery = data_dir / "grocery"
    with open(grocery / "catalog.csv", newline="", encoding="utf-8") as f:
        products = list(csv.DictReader(f))[:8]
    catalogue = tmp_path / "catalog.csv"
    with open(catalogue, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "title", "category", "image", "price"])
        for i, r in enumerate(products):
            w.writerow([r["product_id"], r["title"], r["category"], str(grocery / r["image"]), f"{i + 1}.99"])
    with open(grocery / "photos.csv", newline="", encoding="utf-8") as f:
        photo = next(grocery / r["image"] for r in csv.DictReader(f) if r["product_id"] == products[0]["product_id"])

    store = str(tmp_path / "store")
    assert main(["index", str(catalogue), "--store", store, "--json"]) == 0
    capsys.readouterr()
    assert main(["search", str(photo), "--store", store, "--json", "--domain", "other_product"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])

    fields = documented_fields()
    assert set(result) == _level(fields, "")
    assert result["regions"], "the photo of a catalogue product found nothing"
    region = result["regions"][0]
    assert set(region) == _level(fields, "regions[].")
    assert region["results"]
    for hit in region["results"]:
        assert set(hit) == _level(fields, "regions[].results[].") | {"price"}  # documented fields + the catalogue's metadata
        assert hit["rank"] == pytest.approx(2 - hit["distance"], abs=1e-3)
    assert set(result["steps"]) <= _listed(fields["steps"])
    assert set(result["timings_ms"]) <= _listed(fields["timings_ms"])
    assert set(region["steps"]) <= _listed(fields["regions[].steps"])
    assert set(result["intent_scores"]) == {"apparel", "other_product", "non_product"}


#: A benchmark script named in the docs: ``benchmarks/X.py``, or a bare ``X.py`` on the benchmark pages.
BENCHMARK_SCRIPT = re.compile(r"\bbenchmarks/([\w/]+\.py)\b")
BARE_SCRIPT = re.compile(r"(?<![\w/.-])(\w+\.py)\b")


def test_docs_cite_only_benchmarks_that_exist() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    missing = [
        f"{page.relative_to(REPO)}: benchmarks/{name}"
        for page in pages
        for name in BENCHMARK_SCRIPT.findall(page.read_text("utf-8"))
        if not (REPO / "benchmarks" / name).is_file()
    ]
    # The benchmark pages also name scripts without the folder; a test module is a test, not a benchmark.
    for page in [REPO / "docs" / "benchmarks.md", *sorted((REPO / "docs" / "benchmarks").glob("*.md"))]:
        for name in BARE_SCRIPT.findall(page.read_text("utf-8")):
            known = (REPO / "benchmarks" / name).is_file() or (REPO / "tests" / name).is_file()
            if not known and not list((REPO / "src" / "shoplens").rglob(name)):
                missing.append(f"{page.relative_to(REPO)}: {name}")
    assert not missing, "the docs cite scripts that do not exist:\n" + "\n".join(missing)

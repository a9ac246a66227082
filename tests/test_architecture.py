"""The import graph runs one way: faces → orchestration → stages and stores → leaves (docs/architecture.md).

Every module is parsed with :mod:`ast`, so imports inside functions and under
``TYPE_CHECKING`` count as much as those at the top; relative imports are
resolved against the module's package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: The model stages: they see encodings, descriptors and image ids, never a store or who drives them.
STAGES = ("embed", "local", "intent", "detect", "models")
#: What a stage must not import: the stores, the orchestration (the pipeline package: search, indexing,
#: calibration, training) and the faces.
NOT_FROM_STAGES = ("store", "pipeline", "api", "cli", "server", "eval", "demo")
#: What the store package must not import: any model stage, the orchestration or a face. It may use
#: the leaves (config, errors, filters, registry); today it needs nothing else.
NOT_FROM_STORE = ("embed", "local", "intent", "detect", "models", "rerank", *NOT_FROM_STAGES[1:])
#: What the HTTP server must not import: the orchestration. It is a face over the public ``Shoplens`` API.
NOT_FROM_SERVER = ("pipeline",)


def _module_name(path: Path, src: Path) -> tuple[str, str]:
    """(dotted module name, the package its relative imports start from)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imported(path: Path, src: Path = SRC) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, each ``from X import a`` also as ``X.a``."""
    _, package = _module_name(path, src)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def violations(packages: tuple[str, ...], forbidden: tuple[str, ...], src: Path = SRC) -> list[str]:
    """``file:line imports module`` for each import of a ``shoplens.<forbidden>`` module by a ``shoplens.<packages>`` module."""
    banned = tuple(f"shoplens.{name}" for name in forbidden)
    found = []
    for package in packages:
        files = sorted((src / "shoplens" / package).rglob("*.py"))
        assert files, f"no modules under {src / 'shoplens' / package}"
        for file in files:
            for line, module in imported(file, src):
                if any(module == b or module.startswith(b + ".") for b in banned):
                    found.append(f"{file.relative_to(src)}:{line} imports {module}")
    return sorted(set(found))


def test_imports_are_resolved_like_python_does(tmp_path: Path) -> None:
    pkg = tmp_path / "shoplens" / "local"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .stage import x\nfrom .. import store\n")
    (pkg / "stage.py").write_text("import numpy\n\ndef f():\n    from ..store.base import CatalogueStore\n    from . import index\n")
    assert set(imported(pkg / "__init__.py", tmp_path)) == {
        (1, "shoplens.local.stage"), (1, "shoplens.local.stage.x"), (2, "shoplens"), (2, "shoplens.store")}
    assert set(imported(pkg / "stage.py", tmp_path)) == {
        (1, "numpy"), (4, "shoplens.store.base"), (4, "shoplens.store.base.CatalogueStore"),
        (5, "shoplens.local"), (5, "shoplens.local.index")}
    assert violations(("local",), ("store",), tmp_path) == [
        "shoplens/local/__init__.py:2 imports shoplens.store", "shoplens/local/stage.py:4 imports shoplens.store.base",
        "shoplens/local/stage.py:4 imports shoplens.store.base.CatalogueStore"]


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_no_store_orchestration_or_face(stage: str) -> None:
    assert violations((stage,), NOT_FROM_STAGES) == []


def test_the_store_imports_no_model_stage_orchestration_or_face() -> None:
    assert violations(("store",), NOT_FROM_STORE) == []


def test_the_server_calls_the_public_api_only() -> None:
    """No import of the orchestration, and no reach into a lens's pipeline (``lens.pipeline.…``)."""
    assert violations(("server",), NOT_FROM_SERVER) == []
    reached = []
    for file in sorted((SRC / "shoplens" / "server").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.Attribute) and node.attr == "pipeline":
                reached.append(f"{file.relative_to(SRC)}:{node.lineno} reads .pipeline")
    assert reached == []

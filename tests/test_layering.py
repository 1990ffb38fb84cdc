"""The dependency rules of DESIGN.md, enforced."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgetrim"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_lookup_tables_and_types_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; "
        "import edgetrim.types, edgetrim.errors, edgetrim.lookup_tables; "
        "import edgetrim.profiler.stats"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lookup_tables_never_mention_torch_imports() -> None:
    for path in (PKG / "lookup_tables").rglob("*.py"):
        bad = {n for n in _imports(path) if n == "torch" or n.startswith("torch.")}
        assert not bad, f"{path} imports {bad}"


def test_compress_does_not_import_profiler_or_deploy() -> None:
    for path in (PKG / "compress").rglob("*.py"):
        bad = {n for n in _imports(path) if n.startswith(("edgetrim.profiler", "edgetrim.deploy"))}
        assert not bad, f"{path} imports {bad}"


def test_nothing_imports_the_cli() -> None:
    for path in PKG.rglob("*.py"):
        if path.parent.name == "commands" or path.name == "cli.py":
            continue
        bad = {n for n in _imports(path) if n.startswith(("edgetrim.cli", "edgetrim.commands"))}
        assert not bad, f"{path} imports {bad}"

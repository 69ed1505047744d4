"""Imports go one way: data and engine at the bottom, training and evaluation beside each other on top of them, then
services, then interfaces. Every `import` in every module counts, including those inside functions.

Interfaces (the UI, the HTTP API, the CLI) reach the engine only through services; the built-in extensions and the
example extensions use only the public extension API, so they import neither the engine nor the trainers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "webui"

# layer -> the webui sub-packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "shapes": {"engine", "training", "evaluation", "services", "ui", "api", "commands", "builtin_extensions"},
    "engine": {"training", "evaluation", "services", "ui", "api", "commands", "builtin_extensions", "context"},
    "training": {"evaluation", "services", "ui", "api", "commands", "builtin_extensions", "context"},
    "evaluation": {"training", "services", "ui", "api", "commands", "builtin_extensions", "context"},
    "services": {"ui", "api", "commands", "builtin_extensions", "evaluation"},
    "ui": {"engine", "training", "evaluation"},
    "api": {"engine", "training", "evaluation"},
    "commands": {"engine"},  # the training and evaluation commands run the trainers and judges themselves
    "builtin_extensions": {"engine", "training", "evaluation"},
}
EXAMPLES = PACKAGE.parent / "extensions"
EXTENSIONS_MAY_NOT_IMPORT = {"engine", "training", "evaluation"}


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_packages(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            names = [f"webui.{_layer(path)}.{node.module}"]
        for name in names:
            parts = name.split(".")
            if parts[0] == "webui" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) in FORBIDDEN)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_only_go_down(path: Path) -> None:
    layer = _layer(path)
    wrong = sorted((package, line) for package, line in _imported_packages(path) if package in FORBIDDEN[layer])
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports " + ", ".join(
        f"webui.{package} (line {line})" for package, line in wrong)


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    probe = PACKAGE / "training" / "train_ae.py"
    assert ("engine", 0) not in _imported_packages(probe)  # line numbers are real
    assert any(package == "shapes" for package, _ in _imported_packages(probe))
    assert any(package == "engine" for package, _ in _imported_packages(PACKAGE / "training" / "train_ldm.py"))


EXAMPLE_MODULES = sorted(EXAMPLES.rglob("*.py"))


@pytest.mark.parametrize("path", EXAMPLE_MODULES, ids=[str(p.relative_to(EXAMPLES)) for p in EXAMPLE_MODULES])
def test_example_extensions_use_only_the_public_api(path: Path) -> None:
    wrong = sorted((package, line) for package, line in _imported_packages(path)
                   if package in EXTENSIONS_MAY_NOT_IMPORT)
    assert not wrong, f"extensions/{path.relative_to(EXAMPLES)} imports " + ", ".join(
        f"webui.{package} (line {line})" for package, line in wrong) + "; use webui.services (the extension API)"


def test_every_layer_is_checked() -> None:
    """A new sub-package must say what it may not import, or it would escape the rules unnoticed."""
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages == set(FORBIDDEN) - {"shapes"}
    assert EXAMPLE_MODULES, "the example extensions were not found"

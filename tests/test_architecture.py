"""The package's structure: which module may use which names of another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "sa_fieldcrypt"
MODULES = sorted(SRC.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """Private names of another module of the package that ``path`` imports or reads."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> a module of the package
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != PACKAGE or node.module == here:
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                else:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _private(node.attr)
        ):
            found.append(f"{node.lineno}: {modules[node.value.id]}.{node.attr}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_uses_another_modules_private_names(path: Path) -> None:
    """A private name another module needs is a missing public seam: none is imported or read."""
    assert [] == private_uses(path)


def test_the_check_sees_private_imports_and_module_attributes(tmp_path: Path) -> None:
    """The check itself finds both forms, so the test above cannot pass by seeing nothing."""
    module = tmp_path / PACKAGE / "example.py"
    module.parent.mkdir()
    module.write_text(
        "from sa_fieldcrypt.keys import _parse, Keyring\n"
        "from sa_fieldcrypt import config\n"
        "config._swap(None)\n"
        "Keyring.parse('')\n"
    )
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        assert [
            "1: from sa_fieldcrypt.keys import _parse",
            "3: sa_fieldcrypt.config._swap",
        ] == private_uses(module)
    finally:
        SRC = saved

"""The package's top level: what importing it costs and pulls in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sa_fieldcrypt


def _modules_after(code: str) -> set[str]:
    listing = "print(json.dumps(sorted(sys.modules)))"
    probe = f"import json, sys; {code}; {listing}"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def test_import_does_not_pull_in_click_google_or_pydantic() -> None:
    """`import sa_fieldcrypt` imports neither the CLI, the gcp extra, nor the settings' pydantic."""
    top_level = {m.split(".")[0] for m in _modules_after("import sa_fieldcrypt")}
    assert set() == top_level & {
        "click",
        "google",
        "pydantic",
        "pydantic_settings",
    }


def test_import_loads_nothing_until_a_name_is_used() -> None:
    """`import sa_fieldcrypt` imports no SQLAlchemy nor any module of ours; a name loads its own."""
    loaded = _modules_after("import sa_fieldcrypt")
    assert set() == {m for m in loaded if m.split(".")[0] == "sqlalchemy"}
    # The lazy-export helper (the standard library only) is the one module of ours it needs.
    assert {"sa_fieldcrypt", "sa_fieldcrypt.exports"} == {
        m for m in loaded if m.split(".")[0] == "sa_fieldcrypt"
    }
    assert "sa_fieldcrypt.types" in _modules_after("from sa_fieldcrypt import EncryptedText")


def test_every_exported_name_resolves() -> None:
    """Each name of __all__ loads from its module, and dir() lists it."""
    for name in sa_fieldcrypt.__all__:
        assert getattr(sa_fieldcrypt, name) is not None
    assert set(sa_fieldcrypt.__all__) <= set(dir(sa_fieldcrypt))


def _collect_with_importtime(directory: Path) -> tuple[str, set[str]]:
    """Run ``python -X importtime -m pytest --collect-only`` there; its output and the modules
    imported by import statements."""
    result = subprocess.run(
        # -s: pytest captures stderr, where -X importtime writes, from early on.
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "pytest",
            "--co",
            "-s",
            "-p",
            "no:cacheprovider",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    return result.stdout, imported


def _heavy(imported: set[str]) -> set[str]:
    # sa_fieldcrypt.exports, the packages' lazy-export helper, imports the standard library only.
    ours = {m for m in imported if m.split(".")[0] in ("sqlalchemy", "sa_fieldcrypt")}
    return ours - {"sa_fieldcrypt.exports"}


def test_the_pytest_plugin_imports_nothing_until_a_fixture_is_used(
    pytester: pytest.Pytester,
) -> None:
    """A suite that never uses our fixtures loads the plugin and, through it, no SQLAlchemy and
    no other module of ours (pytest loads the plugin itself with importlib, which -X importtime
    does not list; everything the plugin imports, it would)."""
    pytester.makepyfile("def test_nothing():\n    assert True\n")
    output, imported = _collect_with_importtime(pytester.path)
    assert "sa-fieldcrypt-" in output  # pytest's list of loaded plugins
    assert set() == _heavy(imported)
    # The measurement sees such imports: a conftest that imports a column type shows them.
    pytester.makeconftest("import sa_fieldcrypt.types\n")
    _, imported = _collect_with_importtime(pytester.path)
    assert {"sqlalchemy", "sa_fieldcrypt.types"} <= _heavy(imported)


def test_unknown_attributes_raise_attribute_error() -> None:
    """The lazy export does not turn typos into anything but AttributeError."""
    with pytest.raises(AttributeError, match="no attribute 'EncryptedTxt'"):
        sa_fieldcrypt.EncryptedTxt  # noqa: B018 -- the access is the test

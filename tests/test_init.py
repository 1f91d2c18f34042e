"""The package's top level: what importing it costs and pulls in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import sa_fieldcrypt


def _top_level_modules_after(code: str) -> set[str]:
    listing = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = f"import json, sys; {code}; {listing}"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def test_import_does_not_pull_in_click_google_or_pydantic() -> None:
    """`import sa_fieldcrypt` imports neither the CLI, the gcp extra, nor the settings' pydantic."""
    assert set() == _top_level_modules_after("import sa_fieldcrypt") & {
        "click",
        "google",
        "pydantic",
        "pydantic_settings",
    }


def test_settings_class_is_still_exported() -> None:
    """FieldCryptSettings imports from the package top level, loading pydantic only then."""
    loaded = _top_level_modules_after("from sa_fieldcrypt import FieldCryptSettings")
    assert "pydantic_settings" in loaded


def test_unknown_attributes_raise_attribute_error() -> None:
    """The lazy export does not turn typos into anything but AttributeError."""

    with pytest.raises(AttributeError, match="no attribute 'FieldCryptSetings'"):
        sa_fieldcrypt.FieldCryptSetings  # noqa: B018 -- the access is the test

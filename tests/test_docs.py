"""Every Python code block in the README and docs/ runs, in order, file by file."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from sa_fieldcrypt import Keyring, generate_key
from sa_fieldcrypt.testing import temporary_keys

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_blocks_run(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_keys: None
) -> None:
    """The file's python blocks execute without error in one namespace, as a reader runs them."""
    monkeypatch.chdir(tmp_path)
    # A registered module, as SQLAlchemy resolves a model's annotations through sys.modules.
    module = types.ModuleType(f"docs_{path.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    index_keyring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    with (
        temporary_keys(Keyring({"k1": generate_key()})),
        temporary_keys(index_keyring, purpose="blind-index"),
    ):
        for number, block in enumerate(BLOCK.findall(path.read_text()), start=1):
            # dont_inherit: snippets run as a reader's file would, without this module's
            # `from __future__ import annotations`.
            name = f"{path.name} (python block {number})"
            code = compile(block, name, "exec", dont_inherit=True)
            exec(code, module.__dict__)  # noqa: S102 -- running our own documentation is the point


def test_docs_build_strict() -> None:
    """The documentation site builds with warnings as errors (broken links, bad docstrings)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"), strict=True)
    config["site_dir"] = str(ROOT / "site")
    build(config)

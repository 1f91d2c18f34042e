"""docs/rotation.md: its Python blocks run, in order, as one program."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sa_fieldcrypt.config import _swap

DOC = Path(__file__).parent.parent / "docs" / "rotation.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in a fresh directory, with the process default keys restored afterwards."""
    monkeypatch.chdir(tmp_path)
    previous = _swap(None)
    yield tmp_path
    _swap(previous)


def test_rotation_doc_blocks_run(in_tmp_dir: Path) -> None:
    """Every ```python block of docs/rotation.md runs and its assertions hold."""
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 5
    namespace: dict[str, object] = {"__name__": "rotation_doc"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{DOC.name} block {number}", "exec", dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - the project's own documentation

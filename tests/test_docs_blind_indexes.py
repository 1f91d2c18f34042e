"""The Python snippets of docs/blind-indexes.md and of the README's Querying section run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sa_fieldcrypt import BlindIndexKeyring, Keyring

ROOT = Path(__file__).resolve().parents[1]
# dont_inherit: the snippets must not inherit this file's `from __future__ import annotations`.
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks(text: str) -> list[str]:
    return CODE_BLOCK.findall(text)


def _readme_querying() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Querying\n")
    return readme[start : readme.index("\n## ", start + 1)]


def test_blind_index_guide_runs_top_to_bottom(
    keyring: Keyring, index_keys: BlindIndexKeyring
) -> None:
    """Every Python block of docs/blind-indexes.md runs, in order, in one namespace."""
    blocks = _blocks((ROOT / "docs" / "blind-indexes.md").read_text())
    assert 5 == len(blocks)
    namespace: dict[str, object] = {"__name__": "docs_blind_indexes"}
    for block in blocks:
        exec(compile(block, "docs/blind-indexes.md", "exec", dont_inherit=True), namespace)  # noqa: S102


def test_readme_querying_example_runs(
    keyring: Keyring, index_keys: BlindIndexKeyring, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's Querying example runs and prints what its comment says."""
    (block,) = _blocks(_readme_querying())
    exec(compile(block, "README.md", "exec", dont_inherit=True), {"__name__": "readme_querying"})  # noqa: S102
    assert "Ada@Example.com\n" == capsys.readouterr().out

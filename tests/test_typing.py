"""The files of tests/typing/ are user code that mypy --strict accepts, with the right types.

Each file marks what it expects on the line before: ``# EXPECTED_TYPE: <type>`` before a
``reveal_type(...)``, and ``# EXPECTED_MYPY: <part of the message>`` before a line mypy must
reject. Every other line must pass; every expectation must be met.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

TYPING_DIR = Path(__file__).parent / "typing"
FILES = sorted(TYPING_DIR.glob("*.py"))
SOURCE = Path(__file__).parent.parent / "src"
EXPECTATION = re.compile(r"#\s*EXPECTED_(TYPE|MYPY):\s*(.+?)\s*$")
REPORT = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<kind>error|note): (?P<message>.*)$")
# mypy spells a module's classes with their module; the files expect the names a user writes.
QUALIFIED = re.compile(r"\b(?:[a-z_][a-z0-9_]*\.)+(?=[A-Z])")


def _expectations(path: Path) -> dict[int, tuple[str, str]]:
    expected = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        found = EXPECTATION.search(line)
        if found:
            expected[number + 1] = (found.group(1), found.group(2))
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_typing_file(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mypy --strict reveals the expected types and reports exactly the expected errors."""
    monkeypatch.setenv("MYPYPATH", str(SOURCE))
    stdout, stderr, _ = mypy_api.run(
        [
            "--strict",
            "--no-error-summary",
            "--show-absolute-path",
            "--hide-error-context",
            "--no-pretty",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            str(path),
        ]
    )
    assert "" == stderr
    expected = _expectations(path)
    assert expected, f"{path.name} states no expectations"
    unexpected: list[str] = []
    met: set[int] = set()
    for report in stdout.splitlines():
        parsed = REPORT.match(report)
        if parsed is None:
            unexpected.append(report)
            continue
        line = int(parsed["line"])
        kind, want = expected.get(line, ("", ""))
        message = parsed["message"]
        if parsed["kind"] == "note" and message.startswith("Revealed type is "):
            revealed = QUALIFIED.sub("", message.removeprefix("Revealed type is ").strip('"'))
            if kind == "TYPE" and revealed == want:
                met.add(line)
            else:
                unexpected.append(f"line {line}: revealed {revealed!r}, expected {want!r}")
        elif parsed["kind"] == "error" and kind == "MYPY" and want in message:
            met.add(line)
        else:
            unexpected.append(f"line {line}: {message}")
    missing = [f"line {line}: {want}" for line, (_, want) in expected.items() if line not in met]
    assert ([], []) == (unexpected, missing)

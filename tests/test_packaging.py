"""The dependency floors: pyproject.toml's lower bounds and the pins `make test-oldest` installs."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: The extras a user installs; the other (dev) holds tools, which stay current.
RUNTIME_EXTRAS = ("asyncio", "gcp")


def _requirements(groups: list[list[str]]) -> list[Requirement]:
    own = canonicalize_name(PROJECT["name"])
    found = [Requirement(text) for group in groups for text in group]
    return [r for r in found if canonicalize_name(r.name) != own]


def _runtime() -> list[Requirement]:
    extras = PROJECT["optional-dependencies"]
    return _requirements([PROJECT["dependencies"], *(extras[name] for name in RUNTIME_EXTRAS)])


def _floor(requirement: Requirement) -> Version | None:
    floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return max(floors, default=None)


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints-oldest.txt").read_text().splitlines():
        text = line.partition("#")[0].strip()
        if text:
            requirement = Requirement(text)
            (pin,) = requirement.specifier
            assert "==" == pin.operator, line
            pins[canonicalize_name(requirement.name)] = Version(pin.version)
    return pins


def test_every_runtime_dependency_has_a_floor() -> None:
    """Every dependency of the library and of its asyncio and gcp extras names a lowest version."""
    assert [] == [str(r) for r in _runtime() if _floor(r) is None]


def test_the_oldest_pins_are_the_floors() -> None:
    """constraints-oldest.txt pins each runtime dependency at its floor, and nothing else."""
    floors = {canonicalize_name(r.name): _floor(r) for r in _runtime()}
    assert floors == _pins()


def test_a_package_named_twice_has_one_floor() -> None:
    """A package pyproject.toml names in several places, extras included, has one floor there."""
    floors: dict[str, set[Version | None]] = {}
    for requirement in _requirements(
        [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values()]
    ):
        floors.setdefault(canonicalize_name(requirement.name), set()).add(_floor(requirement))
    assert {} == {name: found for name, found in floors.items() if len(found) > 1}


#: APIs newer than the SQLAlchemy floor (2.0.2), which `make test-oldest` would fail on.
NEWER_THAN_THE_FLOOR = {"Session.get_one (SQLAlchemy 2.0.22)": ".get_" + "one("}


def test_tests_and_docs_use_no_api_newer_than_the_floor() -> None:
    """No test, doc or example calls an API the lowest allowed SQLAlchemy lacks."""
    files = [
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "examples").rglob("*.py"),
        ROOT / "README.md",
    ]
    found = [
        f"{path.relative_to(ROOT)}: {api}"
        for path in files
        for api, text in NEWER_THAN_THE_FLOOR.items()
        if text in path.read_text()
    ]
    assert [] == found

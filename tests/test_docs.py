"""Every code block a reader runs, in the README and docs/, runs here: in order, file by file.

- ```python blocks execute in one namespace per file. A python block whose first line is a
  comment naming a file (``# myapp/models.py``) is that file: it is written into the working
  directory (a new temporary one, on ``sys.path``) for later blocks and commands to import,
  not executed itself.
- ```console blocks are terminal sessions. Each ``$ `` line is a command (a trailing ``\\``
  continues it); the lines under it are what it prints, compared as doctest compares them
  (``...`` matches anything, runs of whitespace are equal); a command shown without output
  may print anything. A command must succeed, unless its line ends with ``# exit status N``.
  ``export NAME=value`` sets a variable (for the rest of the file), and like a restart makes
  the keys and settings be read again; ``fieldcrypt ...`` runs in-process through click's
  test runner, reading the settings as a new process would; any other command runs in a
  subprocess. ``$NAME``, ``${NAME}`` and ``$(fieldcrypt ...)`` expand as a shell expands them.
- Other blocks (```sh, ```text) are shown, not run.

``DATABASE_URL`` names a database of the file's own: an SQLite file, or for the files listed
in ``DATABASES`` a new database on that server.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

import sa_fieldcrypt
from conftest import scratch_database_url
from sa_fieldcrypt import Keyring, generate_key
from sa_fieldcrypt.cli import cli
from sa_fieldcrypt.config import set_unbound_allowed, swap_default_keys
from sa_fieldcrypt.providers.base import KeyCache
from sa_fieldcrypt.testing import temporary_keys

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(python|console)\n(.*?)^```", re.S | re.M)
FILE_BLOCK = re.compile(r"# ([\w./-]+\.py)\n")
EXIT_STATUS = re.compile(r"#\s*exit status (\d+)\s*$")
SUBSTITUTION = re.compile(r"\$\((fieldcrypt [^)]*)\)")
#: Files whose story needs a real server (schemas, EXPLAIN); the others get SQLite.
DATABASES = {"adopting.md": "postgresql"}
_Defaults = tuple[KeyCache | None, KeyCache | None]
OUTPUT_CHECK = doctest.OutputChecker()
OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def blocks(path: Path) -> Iterator[tuple[str, str, str]]:
    """Each runnable block of ``path``: its kind, its text, and a name for messages."""
    text = path.read_text()
    for number, match in enumerate(BLOCK.finditer(text), start=1):
        line = text.count("\n", 0, match.start()) + 1
        yield match[1], match[2], f"{path.name}:{line} ({match[1]} block {number})"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_blocks_run(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_keys: None
) -> None:
    """The file's blocks run without error, in order, as a reader runs them."""
    server = DATABASES.get(path.name)
    url = scratch_database_url(server, path.stem) if server else f"sqlite:///{tmp_path}/app.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # Files are rewritten within the same second; no stale bytecode may stand in for them.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    # A registered module, as SQLAlchemy resolves a model's annotations through sys.modules.
    module = types.ModuleType(f"docs_{path.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    shell = _Shell(tmp_path)
    environment = dict(os.environ)  # what the file's `export` lines change, put back after
    index_keyring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    with (
        temporary_keys(Keyring({"k1": generate_key()})),
        temporary_keys(index_keyring, purpose="blind-index"),
    ):
        try:
            for kind, text, name in blocks(path):
                if kind == "console":
                    shell.run_session(text, name)
                elif written := FILE_BLOCK.match(text):
                    _write_module(tmp_path / written[1], text)
                else:
                    # dont_inherit: snippets run as a reader's file would, without this
                    # module's `from __future__ import annotations`.
                    code = compile(text, name, "exec", dont_inherit=True)
                    exec(code, module.__dict__)  # noqa: S102 -- running our docs is the point
        finally:
            os.environ.clear()
            os.environ.update(environment)
            _restart_settings()
            _forget_modules_under(tmp_path)
            for value in list(module.__dict__.values()):
                if isinstance(value, Engine):
                    value.dispose()  # a server database is dropped at the end of the run


def _write_module(target: Path, text: str) -> None:
    """Write a file block, and forget any earlier version of it that was imported."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    _forget_modules_under(target.parent)


def _forget_modules_under(directory: Path) -> None:
    for name, loaded in list(sys.modules.items()):
        origin = getattr(loaded, "__file__", None)
        paths = getattr(loaded, "__path__", None) or []
        if (origin and Path(origin).is_relative_to(directory)) or any(
            Path(p).is_relative_to(directory) for p in paths
        ):
            del sys.modules[name]


class _Shell:
    """Runs the commands of console blocks, as the blocks' prose says a reader runs them."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.aside = ""

    def run_session(self, text: str, name: str) -> None:
        """Run each command of a console block and compare what it prints with the block."""
        for command, expected in _commands(text):
            self.run(command, expected, name)

    def run(self, command: str, expected: str, name: str) -> None:
        """Run one command line and check its exit status and output."""
        wanted = EXIT_STATUS.search(command)
        self.aside = ""
        words = [self.expand(word) for word in shlex.split(command, comments=True)]
        if words[0] == "export":
            for assignment in words[1:]:
                variable, _, value = assignment.partition("=")
                os.environ[variable] = value
            # As a restarted application does, the next use of keys reads the settings again.
            _swap_all_default_keys()
            _restart_settings()
            status, output = 0, ""
        elif words[0] == "fieldcrypt":
            result = self.fieldcrypt(words[1:])
            status, output = result.exit_code, result.output
        else:
            status, output = self.subprocess(words)
        # What a command substitution printed on stderr shows on the terminal first.
        output = self.aside + output
        shown = f"{name}: $ {command}\n{output}"
        print(shown)  # pytest shows it with a failure
        assert (int(wanted[1]) if wanted else 0) == status, shown
        if expected.strip():
            assert OUTPUT_CHECK.check_output(expected, output, OUTPUT_FLAGS), (
                f"{shown}\n-- the block shows instead --\n{expected}"
            )

    def expand(self, word: str) -> str:
        """``word`` after command substitution and variable expansion."""

        def substitute(match: re.Match[str]) -> str:
            result = self.fieldcrypt(shlex.split(match[1])[1:])
            assert 0 == result.exit_code, f"$({match[1]}) failed:\n{result.output}"
            self.aside += result.stderr
            return result.stdout.strip()

        return os.path.expandvars(SUBSTITUTION.sub(substitute, word))

    def fieldcrypt(self, args: list[str]) -> Result:
        """Run the command line in-process with the settings a new process would read."""
        saved = _swap_all_default_keys()
        _restart_settings()
        try:
            return CliRunner().invoke(cli, args, catch_exceptions=False)
        finally:
            _swap_all_default_keys(saved)

    def subprocess(self, words: list[str]) -> tuple[int, str]:
        """Run another program, as `python -m` where it is one of the environment's."""
        environment = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        library = str(Path(sa_fieldcrypt.__file__).parents[1])
        environment["PYTHONPATH"] = os.pathsep.join([str(self.directory), library])
        if words[0] == "alembic":
            words = [sys.executable, "-m", "alembic", *words[1:]]
        # One stream, unbuffered: the output interleaves as it does on a terminal.
        environment["PYTHONUNBUFFERED"] = "1"
        result = subprocess.run(
            words,
            cwd=self.directory,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )
        return result.returncode, result.stdout


def _commands(text: str) -> Iterator[tuple[str, str]]:
    """The ``(command, expected output)`` pairs of a console block."""
    command: str | None = None
    output: list[str] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("$ "):
            if command is not None:
                yield command, "\n".join(output) + "\n"
            command, output = line[2:], []
            while command.endswith("\\"):
                command = f"{command[:-1].rstrip()} {next(lines).strip()}"
        else:
            assert command is not None, f"console output before any command: {line!r}"
            output.append(line)
    if command is not None:
        yield command, "\n".join(output) + "\n"


def _restart_settings() -> None:
    """Forget the settings read other than keys, as a new process would not have them."""
    set_unbound_allowed(None)


def _swap_all_default_keys(saved: _Defaults = (None, None)) -> _Defaults:
    """Install ``saved`` as the default keys of both purposes; return the ones it replaces."""
    encryption, index = saved
    return swap_default_keys(encryption), swap_default_keys(index, purpose="blind-index")


def test_console_commands_are_parsed_as_a_shell_does() -> None:
    """Continued lines join, and each command keeps the output lines under it."""
    text = "$ fieldcrypt status \\\n    --json\n{\n}\n$ export A=1\n"
    assert [("fieldcrypt status --json", "{\n}\n"), ("export A=1", "\n")] == list(_commands(text))


def test_docs_build_strict() -> None:
    """The documentation site builds with warnings as errors (broken links, bad docstrings)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"), strict=True)
    config["site_dir"] = str(ROOT / "site")
    build(config)


def test_threat_model_names_only_tests_that_exist() -> None:
    """Every test the threat model cites as proof is defined in the file it names."""
    text = (ROOT / "docs" / "threat-model.md").read_text()
    table = text.split("## How the tests back this", 1)[1]
    cited: list[tuple[str, str]] = []
    for row in table.splitlines():
        current = None
        for found in re.finditer(r"tests/(\w+\.py)|\b(test_\w+)\b", row):
            if found[1]:
                current = found[1]
            elif found[2] and current is not None:
                cited.append((current, found[2]))
    assert cited
    missing = [
        f"{file}::{name}"
        for file, name in cited
        if f"def {name}(" not in (ROOT / "tests" / file).read_text()
    ]
    assert [] == missing

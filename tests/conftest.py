"""Shared fixtures: keyrings, and engines for SQLite, PostgreSQL and MariaDB.

PostgreSQL and MariaDB tests skip with a visible reason when the server is unreachable, except
under CI (``CI=true``), where an unreachable server fails the run. Override the servers with
``FIELDCRYPT_TEST_POSTGRES_URL`` and ``FIELDCRYPT_TEST_MARIADB_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from sa_fieldcrypt import Keyring
from sa_fieldcrypt.config import swap_default_keys

pytest_plugins = ["pytester"]

SERVER_URLS = {
    "postgresql": os.environ.get(
        "FIELDCRYPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get(
        "FIELDCRYPT_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}
# Bounded, so an unreachable server is reported in seconds, not after a TCP timeout.
CONNECT_ARGS = {"connect_timeout": 5}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_reachability: dict[str, str | None] = {}


def server_url(name: str) -> str:
    """Return the URL of a reachable server, or skip (fail under CI) with the reason."""
    url = SERVER_URLS[name]
    if name not in _reachability:
        try:
            probe = create_engine(url, connect_args=CONNECT_ARGS)
            with probe.connect() as conn:
                conn.execute(text("SELECT 1"))
            probe.dispose()
            _reachability[name] = None
        except (SQLAlchemyError, OSError) as exc:
            _reachability[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    reason = _reachability[name]
    if reason is not None:
        message = f"{name} server not reachable at {url} ({reason})"
        if IN_CI:
            pytest.fail(f"{message}; CI requires it", pytrace=False)
        pytest.skip(f"{message}; start it or set FIELDCRYPT_TEST_{name.upper()}_URL")
    return url


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on each database; the test owns the tables it creates there."""
    if request.param == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path / 'test.sqlite3'}")
    else:
        eng = create_engine(server_url(request.param), connect_args=CONNECT_ARGS)
    yield eng
    eng.dispose()


@pytest.fixture
def no_default_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No configured keys and no key variables in the environment."""
    for name in list(os.environ):
        if name.startswith("FIELDCRYPT_") or name == "FIELD_ENCRYPTION_KEY":
            monkeypatch.delenv(name)
    previous = swap_default_keys(None)
    previous_index_keys = swap_default_keys(None, purpose="blind-index")
    yield
    swap_default_keys(previous)
    swap_default_keys(previous_index_keys, purpose="blind-index")


@pytest.fixture
def keyring(fieldcrypt_keyring: Keyring) -> Keyring:
    """The plugin's ephemeral default keyring, under a shorter name."""
    return fieldcrypt_keyring


@pytest.fixture
def index_keyring(fieldcrypt_blind_index_keyring: Keyring) -> Keyring:
    """The plugin's ephemeral blind-index keyring, under a shorter name."""
    return fieldcrypt_blind_index_keyring

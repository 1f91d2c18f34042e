"""Shared fixtures: keyrings, and engines for SQLite, PostgreSQL and MariaDB.

PostgreSQL and MariaDB tests skip with a visible reason when the server is unreachable, except
under CI (``CI=true``), where an unreachable server fails the run. Override the servers with
``FIELDCRYPT_TEST_POSTGRES_URL`` and ``FIELDCRYPT_TEST_MARIADB_URL``. Each run creates a
database of its own on each server (``fc_test_<pid>_<random>``), works only there, and drops
it at the end; the database the URL names is only connected to.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from sa_fieldcrypt import Keyring
from sa_fieldcrypt.config import set_unbound_allowed, swap_default_keys

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
#: The throwaway database this run creates on each server, and drops at the end: the tests
#: never touch a table of the database the URL names, which may hold a user's own data.
RUN_DATABASE = f"fc_test_{os.getpid()}_{secrets.token_hex(4)}"
_reachability: dict[str, str | None] = {}
_created: dict[str, URL] = {}
_scratch: list[tuple[str, URL]] = []


def server_url(name: str) -> str:
    """The URL of this run's own database on a reachable server, or skip (fail under CI)."""
    configured = SERVER_URLS[name]
    if name not in _reachability:
        try:
            _created[name] = _create_run_database(make_url(configured))
            _reachability[name] = None
        except (SQLAlchemyError, OSError) as exc:
            _reachability[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    reason = _reachability[name]
    if reason is not None:
        message = f"{name} server not reachable at {configured} ({reason})"
        if IN_CI:
            pytest.fail(f"{message}; CI requires it", pytrace=False)
        pytest.skip(f"{message}; start it or set FIELDCRYPT_TEST_{name.upper()}_URL")
    return _created[name].render_as_string(hide_password=False)


def backend_id(conn: Connection) -> int:
    """The server's id of the database session ``conn`` is (PostgreSQL or MariaDB)."""
    if conn.dialect.name == "postgresql":
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    return int(conn.exec_driver_sql("SELECT connection_id()").scalar_one())


def waits_for_a_lock(engine: Engine, backend: int) -> bool:
    """Whether the database session ``backend`` is waiting for a row lock now."""
    if engine.dialect.name == "postgresql":
        query = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :id"
    else:
        query = (
            "SELECT trx_state = 'LOCK WAIT' FROM information_schema.innodb_trx "
            "WHERE trx_mysql_thread_id = :id"
        )
    with engine.connect() as conn:
        return bool(conn.execute(text(query), {"id": backend}).scalar())


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail if it does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {timeout:g} s"
        threading.Event().wait(0.01)


def scratch_database_url(name: str, suffix: str) -> str:
    """A new, empty database of this run on server ``name``: ``<run database>_<suffix>``.

    For a test that shapes a whole database (schemas, migrations) as a reader would; it is
    dropped at the end of the run with the run's database. Skips (fails under CI) as
    :func:`server_url` does.
    """
    server_url(name)
    database = f"{RUN_DATABASE}_{re.sub(r'[^a-z0-9]', '_', suffix.lower())}"
    server = make_url(SERVER_URLS[name])
    admin = create_engine(server, connect_args=CONNECT_ARGS, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
            conn.execute(text(f"CREATE DATABASE {database}"))
    finally:
        admin.dispose()
    url = server.set(database=database)
    _scratch.append((name, url))
    return url.render_as_string(hide_password=False)


def _create_run_database(server: URL) -> URL:
    admin = create_engine(server, connect_args=CONNECT_ARGS, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {RUN_DATABASE}"))
    finally:
        admin.dispose()
    return server.set(database=RUN_DATABASE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the databases this run created, and only those."""
    for name, url in [*_scratch, *_created.items()]:
        admin = create_engine(
            make_url(SERVER_URLS[name]), connect_args=CONNECT_ARGS, isolation_level="AUTOCOMMIT"
        )
        force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
        try:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {url.database}{force}"))
        finally:
            admin.dispose()


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
def strict_unbound() -> Iterator[None]:
    """FIELDCRYPT_ALLOW_UNBOUND=false for the test: bound columns that do not say are strict."""
    set_unbound_allowed(False)
    yield
    set_unbound_allowed(None)


@pytest.fixture
def keyring(fieldcrypt_keyring: Keyring) -> Keyring:
    """The plugin's ephemeral default keyring, under a shorter name."""
    return fieldcrypt_keyring


@pytest.fixture
def index_keyring(fieldcrypt_blind_index_keyring: Keyring) -> Keyring:
    """The plugin's ephemeral blind-index keyring, under a shorter name."""
    return fieldcrypt_blind_index_keyring

"""The test suite owns its data: pointed at a database holding a user's tables, it leaves them.

The suite is run here as a user would run it, against a database holding a ``customers``
table of its own: afterwards that table and its row are still there, and the database the run
created for itself is gone.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import (
    URL,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    insert,
    make_url,
    select,
    text,
)
from sqlalchemy.schema import CreateSchema

from conftest import CONNECT_ARGS, SERVER_URLS, server_url

ROOT = Path(__file__).parent.parent
# Tables the booking tests create on each server, with the names a user's own tables may have.
USER_SCHEMAS = {"postgresql": "core", "mariadb": None}


def _user_table(backend: str) -> Table:
    return Table(
        "customers",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("email", Text),
        schema=USER_SCHEMAS[backend],
    )


@pytest.fixture(params=["postgresql", "mariadb"])
def user_database(request: pytest.FixtureRequest) -> Iterator[tuple[str, URL]]:
    """A database of a 'user', holding their own customers table with one row."""
    server_url(request.param)  # skip, or fail under CI, when the server is unreachable
    server = make_url(SERVER_URLS[request.param])
    name = f"fc_user_{secrets.token_hex(4)}"
    admin = create_engine(server, connect_args=CONNECT_ARGS, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = server.set(database=name)
    user = create_engine(url, connect_args=CONNECT_ARGS)
    table = _user_table(request.param)
    with user.begin() as conn:
        if table.schema is not None:
            conn.execute(CreateSchema(table.schema))
        table.create(conn)
        conn.execute(insert(table).values(id=1, email="mine@example.com"))
    user.dispose()
    try:
        yield request.param, url
    finally:
        force = " WITH (FORCE)" if request.param == "postgresql" else ""
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


def _databases(url: URL) -> set[str]:
    engine = create_engine(url, connect_args=CONNECT_ARGS)
    query = (
        "SELECT datname FROM pg_database"
        if url.get_backend_name() == "postgresql"
        else "SELECT schema_name FROM information_schema.schemata"
    )
    try:
        with engine.connect() as conn:
            return set(conn.scalars(text(query)))
    finally:
        engine.dispose()


@pytest.mark.slow
def test_the_suite_leaves_a_users_tables_alone(user_database: tuple[str, URL]) -> None:
    """The booking tests, pointed at a user's database, keep its customers and drop only theirs."""
    backend, url = user_database
    variable = f"FIELDCRYPT_TEST_{'POSTGRES' if backend == 'postgresql' else 'MARIADB'}_URL"
    env = {**os.environ, variable: url.render_as_string(hide_password=False), "CI": "true"}
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            backend,
            "tests/test_example_booking.py",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = run.communicate(timeout=300)
    assert 0 == run.returncode, output
    assert " passed" in output, output
    assert "skipped" not in output, output
    engine = create_engine(url, connect_args=CONNECT_ARGS)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(_user_table(backend))).all()
    finally:
        engine.dispose()
    assert [(1, "mine@example.com")] == [tuple(row) for row in rows]
    leftovers = {name for name in _databases(url) if name.startswith(f"fc_test_{run.pid}_")}
    assert set() == leftovers

"""The batch engine: compare-and-swap exactness and keyset paging, on every database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from sa_fieldcrypt import RotationError
from sa_fieldcrypt.jobs import BatchJob, run_job

TABLE = "fc_batch_values"


@pytest.fixture
def caseless(engine: Engine) -> Iterator[Table]:
    """A table whose text column compares case-insensitively under the database's own rules."""
    column_type = {
        "sqlite": "VARCHAR(40) COLLATE NOCASE",
        "postgresql": "citext",
        "mysql": "VARCHAR(40) COLLATE utf8mb4_general_ci",
    }["mysql" if engine.dialect.name == "mariadb" else engine.dialect.name]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS citext"))
        conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        conn.execute(text(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, v {column_type})"))
    table = Table(
        TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("v", String(40)),
    )
    yield table
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {TABLE}"))


def _in_another_transaction(engine: Engine, conn: Connection, statement: Any) -> None:
    if engine.dialect.name == "sqlite":
        # One writer at a time: the engine's own connection stands in for the application.
        conn.execute(statement)
        return
    with engine.begin() as other:
        other.execute(statement)


def test_compare_and_swap_is_exact_under_caseless_collations(
    engine: Engine, caseless: Table
) -> None:
    """A value the application changed only in case or by a trailing space is not overwritten."""
    table = caseless
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "v": "abc"}, {"id": 2, "v": "abc"}])
    changed = {1: "ABC", 2: "abc "}

    def meanwhile(conn: Connection, keys: list[tuple[Any, ...]]) -> None:
        for key, value in changed.items():
            if (key,) in keys:
                statement = update(table).where(table.c.id == key).values(v=value)
                _in_another_transaction(engine, conn, statement)

    job = BatchJob("values", table, (table.c.v,), (table.c.v,), lambda key, old: (old[0] + "!",))
    report = run_job(engine, job, before_write=meanwhile, reread_changed=False)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(table.c.id, table.c.v)).all())
    assert (0, 2) == (report.written, report.concurrent)
    assert changed == stored


def test_compare_and_swap_on_a_number_column(engine: Engine) -> None:
    """Columns that are not text are compared as they are, and written."""
    metadata = MetaData()
    table = Table(
        "fc_batch_numbers",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("n", Integer),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": i, "n": i} for i in range(5)])
        job = BatchJob(
            "numbers", table, (table.c.n,), (table.c.n,), lambda key, old: (old[0] * 10,)
        )
        assert 5 == run_job(engine, job, batch_size=2).written
        with engine.connect() as conn:
            stored = dict(conn.execute(select(table.c.id, table.c.n)).all())
        assert {i: i * 10 for i in range(5)} == stored
    finally:
        metadata.drop_all(engine)


def test_rows_inserted_ahead_of_the_cursor_are_visited(engine: Engine) -> None:
    """Keyset paging sees a row inserted during the run after the current batch."""
    metadata = MetaData()
    table = Table(
        "fc_batch_growing",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("v", String(40)),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": i, "v": "old"} for i in range(10)])

        def meanwhile(conn: Connection, keys: list[tuple[Any, ...]]) -> None:
            if (0,) in keys:
                _in_another_transaction(engine, conn, insert(table).values(id=100, v="old"))

        job = BatchJob(
            "growing",
            table,
            (table.c.v,),
            (table.c.v,),
            lambda key, old: ("new",),
            where=table.c.v == "old",
        )
        report = run_job(engine, job, batch_size=3, before_write=meanwhile)
        assert (11, 11) == (report.scanned, report.written)
        with engine.connect() as conn:
            assert ["new"] == list(conn.execute(select(table.c.v).distinct()).scalars())
    finally:
        metadata.drop_all(engine)


def _exploding_job(engine: Engine) -> BatchJob:
    """A job whose transform fails with an error that is not the library's (for workers)."""
    table = Table(
        "fc_batch_workers",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("v", String(40)),
    )

    def transform(key: tuple[Any, ...], old: tuple[Any, ...]) -> tuple[Any, ...]:
        raise RuntimeError("transform broke\nsecond line with details")

    return BatchJob("workers", table, (table.c.v,), (table.c.v,), transform)


def test_a_worker_error_stops_the_run_with_its_first_line(tmp_path: Path) -> None:
    """An unexpected error in a worker process becomes a RotationError naming its first line."""
    engine = create_engine(f"sqlite:///{tmp_path / 'workers.sqlite3'}")
    table = _exploding_job(engine).table
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": i, "v": "x"} for i in range(20)])
    with pytest.raises(RotationError) as raised:
        run_job(engine, _exploding_job, workers=2, batch_size=5)
    assert "worker failed: RuntimeError: transform broke" == str(raised.value)
    engine.dispose()

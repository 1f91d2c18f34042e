"""The batch engine: compare-and-swap exactness and keyset paging, on every database."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from conftest import backend_id, wait_until, waits_for_a_lock
from sa_fieldcrypt import ConfigurationError, DecryptionError, RotationError
from sa_fieldcrypt.jobs import BatchJob, Throttle, run_job
from sa_fieldcrypt.jobs.sql import DialectSql

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


def _new_values_table(engine: Engine, name: str) -> Table:
    """A new table ``name`` of integer keys and short text values; drop it with ``drop()``."""
    table = Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("v", String(40)),
    )
    table.drop(engine, checkfirst=True)
    table.create(engine)
    return table


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


@pytest.mark.parametrize("isolation", ["default", "AUTOCOMMIT"])
def test_a_row_written_and_changed_at_once_is_counted_written(
    engine: Engine, isolation: str
) -> None:
    """A batch in which one row changed before the write and another changes the moment
    after it: the first is counted concurrent, the second written (and its new value kept),
    on an engine in transactions or in AUTOCOMMIT."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: no row changes during a batch's write")
    if isolation != "default":
        engine = engine.execution_options(isolation_level=isolation)
    table = _new_values_table(engine, "fc_batch_racing")
    late: list[threading.Thread] = []
    changed_first: list[bool] = []
    backend: list[int] = []

    def meanwhile(conn: Connection, keys: list[tuple[Any, ...]]) -> None:
        _in_another_transaction(engine, conn, update(table).where(table.c.id == 1).values(v="a"))
        changed_first.append(True)

    def change_row_2() -> None:
        with engine.connect() as other:
            backend.append(backend_id(other))
            other.execute(update(table).where(table.c.id == 2).values(v="b"))
            other.commit()

    @event.listens_for(engine.engine, "after_cursor_execute")
    def right_after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if late or not changed_first or not statement.lstrip().upper().startswith("UPDATE"):
            return
        # The application changes a row the batch just wrote, as soon as it may: on a
        # server that holds the batch's row locks, once the batch is committed.
        late.append(threading.Thread(target=change_row_2))
        late[0].start()
        wait_until(
            lambda: (
                not late[0].is_alive() or (bool(backend) and waits_for_a_lock(engine, backend[0]))
            )
        )

    try:
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": i, "v": "old"} for i in range(1, 5)])
        job = BatchJob("racing", table, (table.c.v,), (table.c.v,), lambda key, old: ("new",))
        report = run_job(engine, job, before_write=meanwhile, reread_changed=False)
        late[0].join(timeout=30)
        with engine.connect() as conn:
            stored = dict(conn.execute(select(table.c.id, table.c.v)).all())
        assert (3, 1) == (report.written, report.concurrent)
        assert {1: "a", 2: "b", 3: "new", 4: "new"} == stored
    finally:
        event.remove(engine.engine, "after_cursor_execute", right_after)
        table.drop(engine)


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
    table = _new_values_table(engine, "fc_batch_growing")
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
        table.drop(engine)


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


# -- the transform process -------------------------------------------------------------------

PROCESS_TABLE = "fc_batch_transform_process"
#: The transform process serves the walks that pipeline their batches: database servers only.
SERVERS = ["postgresql", "mariadb"]


def _process_table() -> Table:
    return Table(
        PROCESS_TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("v", String(40)),
    )


def _pid_job(engine: Engine) -> BatchJob:
    """Appends the transforming process's id to each value; "bad" fails, "die" kills it."""
    table = _process_table()

    def transform(key: tuple[Any, ...], old: tuple[Any, ...]) -> tuple[Any, ...]:
        if old[0] == "bad":
            raise DecryptionError("cannot be opened")
        if old[0] == "die":
            os._exit(3)
        if old[0] == "broken":
            raise RuntimeError("transform broke\nsecond line with details")
        return (f"{old[0]}@{os.getpid()}",)

    return BatchJob(
        "transforms", table, (table.c.v,), (table.c.v,), transform, where=~table.c.v.contains("@")
    )


@pytest.fixture
def process_table(engine: Engine) -> Iterator[Table]:
    table = _process_table()
    table.metadata.drop_all(engine)
    table.metadata.create_all(engine)
    yield table
    table.metadata.drop_all(engine)


def _fill(engine: Engine, table: Table, values: dict[int, str]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": k, "v": v} for k, v in values.items()])


def _stored(engine: Engine, table: Table) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(table.c.id, table.c.v)).all())


def _by_whom(stored: dict[int, str]) -> set[str]:
    """The process ids the values were transformed in."""
    return {v.partition("@")[2] for v in stored.values() if "@" in v}


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_transform_process_transforms_every_batch_elsewhere(
    engine: Engine, process_table: Table
) -> None:
    """With transform_process, each row is transformed in another process, and written once."""
    _fill(engine, process_table, {i: "bad" if i == 17 else f"v{i}" for i in range(60)})
    report = run_job(engine, _pid_job, batch_size=7, transform_process=True)
    assert (60, 59, 1) == (report.scanned, report.written, report.failed)
    assert [(17,)] == [f.key for f in report.failures]
    stored = _stored(engine, process_table)
    assert {i: f"v{i}" for i in range(60) if i != 17} == {
        k: v.partition("@")[0] for k, v in stored.items() if k != 17
    }
    (pid,) = _by_whom(stored)
    assert str(os.getpid()) != pid


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
@pytest.mark.parametrize("option", [False, None])
def test_small_runs_and_runs_without_one_transform_here(
    engine: Engine, process_table: Table, option: bool | None
) -> None:
    """By default a run of a few rows starts no process; False starts none at all."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(30)})
    assert 30 == run_job(engine, _pid_job, batch_size=7, transform_process=option).written
    assert {str(os.getpid())} == _by_whom(_stored(engine, process_table))


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_transform_process_with_a_throttle(engine: Engine, process_table: Table) -> None:
    """A throttled run, which reads each page only when the batch before is counted."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(40)})
    report = run_job(
        engine, _pid_job, batch_size=5, transform_process=True, throttle=Throttle(max_rate=2000)
    )
    assert (40, 40) == (report.scanned, report.written)
    assert str(os.getpid()) not in _by_whom(_stored(engine, process_table))


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_transform_process_stops_at_the_first_failure(
    engine: Engine, process_table: Table
) -> None:
    """fail_fast: rows up to the failing one are written, none after it."""
    _fill(engine, process_table, {i: "bad" if i == 12 else f"v{i}" for i in range(40)})
    report = run_job(engine, _pid_job, batch_size=5, transform_process=True, fail_fast=True)
    assert not report.completed
    stored = _stored(engine, process_table)
    assert all("@" in stored[i] for i in range(12))
    assert all("@" not in stored[i] for i in range(12, 40))


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_transform_process_that_dies_stops_the_run_and_a_rerun_finishes(
    engine: Engine, process_table: Table
) -> None:
    """Its batches committed stay, no value is half-written, and a rerun does the rest."""
    _fill(engine, process_table, {i: "die" if i == 23 else f"v{i}" for i in range(40)})
    with pytest.raises(RotationError) as raised:
        run_job(engine, _pid_job, batch_size=5, transform_process=True)
    assert "transforms: the transform process exited with code 3; rerun to resume" == str(
        raised.value
    )
    stored = _stored(engine, process_table)
    assert {i for i, v in stored.items() if "@" in v} <= set(range(20))
    with engine.begin() as conn:
        conn.execute(update(process_table).where(process_table.c.id == 23).values(v="v23"))
    report = run_job(engine, _pid_job, batch_size=5, transform_process=True)
    stored = _stored(engine, process_table)
    assert (True, 0) == (report.completed, report.failed)
    assert {i: f"v{i}" for i in range(40)} == {k: v.partition("@")[0] for k, v in stored.items()}


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_an_error_in_the_transform_process_names_its_first_line(
    engine: Engine, process_table: Table
) -> None:
    _fill(engine, process_table, {1: "v1", 2: "broken"})
    with pytest.raises(RotationError) as raised:
        run_job(engine, _pid_job, transform_process=True)
    assert "the transform process failed: RuntimeError: transform broke" == str(raised.value)


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_transform_process_needs_a_factory(engine: Engine, process_table: Table) -> None:
    """Asked for with a built job, it is refused before anything is read."""
    _fill(engine, process_table, {1: "v1"})
    with pytest.raises(ConfigurationError, match="transform_process needs a picklable job"):
        run_job(engine, _pid_job(engine), transform_process=True)
    assert {1: "v1"} == _stored(engine, process_table)


def test_a_transform_process_does_not_apply_to_sqlite(tmp_path: Path) -> None:
    """SQLite goes one batch after the other: asking for the process changes nothing."""
    engine = create_engine(f"sqlite:///{tmp_path / 'job.sqlite3'}")
    table = _process_table()
    table.metadata.create_all(engine)
    _fill(engine, table, {i: f"v{i}" for i in range(10)})
    assert 10 == run_job(engine, _pid_job(engine), transform_process=True).written
    assert {str(os.getpid())} == _by_whom(_stored(engine, table))


def _built_here_only(engine: Engine) -> BatchJob:
    """The job of _pid_job, which a transform process (started with ``-c``) cannot build."""
    if sys.argv[0] == "-c":
        raise RuntimeError("cannot build the job in this process")
    return _pid_job(engine)


class _NoPickle(str):
    """A value that cannot be pickled."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("not picklable")


def _unsendable_job(engine: Engine) -> BatchJob:
    """_pid_job, whose values a transform process (started with ``-c``) cannot send back."""
    job = _pid_job(engine)
    if sys.argv[0] != "-c":
        return job
    transform = job.transform

    def unsendable(key: tuple[Any, ...], old: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(_NoPickle(v) for v in transform(key, old))

    return dataclasses.replace(job, transform=unsendable)


def _built_otherwise(engine: Engine) -> BatchJob:
    """_pid_job here; in a transform process, a job over other columns."""
    job = _pid_job(engine)
    if sys.argv[0] != "-c":
        return job
    return dataclasses.replace(job, read=(job.table.c.id,))


#: Enough rows for a run to start a transform process by default.
MANY = 50_000


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_large_run_transforms_elsewhere_by_default(engine: Engine, process_table: Table) -> None:
    """From 50,000 rows, a run given a factory transforms in a process of its own."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(MANY)})
    report = run_job(engine, _pid_job, batch_size=2000)
    assert (MANY, MANY) == (report.scanned, report.written)
    (pid,) = _by_whom(_stored(engine, process_table))
    assert str(os.getpid()) != pid


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_transform_process_that_cannot_build_the_job_leaves_it_here_by_default(
    engine: Engine, process_table: Table, caplog: pytest.LogCaptureFixture
) -> None:
    """By default the run transforms here, and logs why; asked for, the run stops instead."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(MANY)})
    with pytest.raises(RotationError) as raised:
        run_job(engine, _built_here_only, batch_size=2000, transform_process=True)
    assert "the transform process failed: RuntimeError: cannot build the job in this process" == (
        str(raised.value)
    )
    assert {""} == _by_whom(_stored(engine, process_table)) | {""}
    with caplog.at_level("INFO", logger="sa_fieldcrypt.jobs"):
        report = run_job(engine, _built_here_only, batch_size=2000)
    assert (MANY, MANY) == (report.scanned, report.written)
    assert {str(os.getpid())} == _by_whom(_stored(engine, process_table))
    assert any(
        "the transform process could not build the job" in r.getMessage()
        and "transforming in this process" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_factory_that_does_not_pickle_is_refused_or_run_here(
    engine: Engine, process_table: Table
) -> None:
    """A factory another interpreter cannot get: refused when asked for, else run here."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(MANY)})

    def factory(engine: Engine) -> BatchJob:
        return _pid_job(engine)

    with pytest.raises(ConfigurationError) as raised:
        run_job(engine, factory, transform_process=True)
    assert (
        "transforms: cannot use a transform process: the job factory cannot be pickled "
        "(AttributeError)"
    ) == str(raised.value)
    # A dry run goes one batch after the other, with no transform process to refuse.
    assert MANY == run_job(engine, factory, transform_process=True, dry_run=True).written
    report = run_job(engine, factory, batch_size=2000)
    assert (MANY, MANY) == (report.scanned, report.written)
    assert {str(os.getpid())} == _by_whom(_stored(engine, process_table))


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_factory_of_the_main_module_is_refused_or_run_here(
    engine: Engine, process_table: Table, tmp_path: Path
) -> None:
    """A script's own factory: another interpreter cannot import it, so the script runs it."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(MANY)})
    script = tmp_path / "rotate_here.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from sqlalchemy import create_engine\n"
        "from sa_fieldcrypt import ConfigurationError\n"
        "from sa_fieldcrypt.jobs import run_job\n"
        "import test_jobs_engine\n"
        "def factory(engine):\n"
        "    return test_jobs_engine._pid_job(engine)\n"
        f"engine = create_engine({engine.url.render_as_string(hide_password=False)!r})\n"
        "try:\n"
        "    run_job(engine, factory, transform_process=True)\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
        "print(run_job(engine, factory, batch_size=2000).written, os.getpid())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False
    )
    assert 0 == done.returncode, done.stderr
    refusal, outcome = done.stdout.splitlines()
    assert (
        "transforms: cannot use a transform process: the job refers to factory of the main "
        "module, which another interpreter cannot import; define it in a module"
    ) == refusal
    written, script_pid = outcome.split()
    assert (str(MANY), {script_pid}) == (written, _by_whom(_stored(engine, process_table)))


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        (_unsendable_job, "could not send a transform back (TypeError)"),
        (_built_otherwise, "built another job than this process"),
    ],
)
def test_a_transform_process_that_cannot_serve_the_run_leaves_it_here_by_default(
    engine: Engine, process_table: Table, factory: Any, reason: str
) -> None:
    """A transform it cannot send back, or another job than this one's: refused or done here."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(MANY)})
    with pytest.raises(RotationError) as raised:
        run_job(engine, factory, batch_size=2000, transform_process=True)
    assert str(raised.value).startswith(f"transforms: the transform process {reason}")
    assert "run with transform_process=False (--no-transform-process)" in str(raised.value)
    assert {""} == _by_whom(_stored(engine, process_table)) | {""}
    report = run_job(engine, factory, batch_size=2000)
    assert (MANY, MANY) == (report.scanned, report.written)
    assert {str(os.getpid())} == _by_whom(_stored(engine, process_table))


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_transform_process_that_cannot_start_leaves_the_run_here_by_default(
    engine: Engine, process_table: Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No interpreter to start: asked for, the run stops with why; by default it goes on here."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(MANY)})
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with pytest.raises(RotationError, match=r"could not start \(FileNotFoundError: "):
        run_job(engine, _pid_job, batch_size=2000, transform_process=True)
    assert MANY == run_job(engine, _pid_job, batch_size=2000).written


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_transform_process_that_ignores_sigterm_does_not_hold_the_run(
    engine: Engine, process_table: Table, tmp_path: Path
) -> None:
    """A run ends, at its end or at a failure, though the process inherits an ignored SIGTERM."""
    _fill(engine, process_table, {i: "bad" if i == 12 else f"v{i}" for i in range(40)})
    shadow = tmp_path / "cwd"
    shadow.mkdir()
    marker = tmp_path / "shadowed"
    # The process must not import this from the directory it starts in.
    (shadow / "tempfile.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    script = tmp_path / "ignores_sigterm.py"
    script.write_text(
        "import signal, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "from sqlalchemy import create_engine\n"
        "from sa_fieldcrypt.jobs import run_job\n"
        "from test_jobs_engine import _pid_job\n"
        f"engine = create_engine({engine.url.render_as_string(hide_password=False)!r})\n"
        "first = run_job(engine, _pid_job, batch_size=5, transform_process=True, fail_fast=True)\n"
        "rest = run_job(engine, _pid_job, batch_size=5, transform_process=True)\n"
        "print(first.written, rest.written)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=shadow,
    )
    assert (0, "12 27\n", False) == (done.returncode, done.stdout, marker.exists()), done.stderr


@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_a_script_without_a_main_guard_runs_its_top_level_once(
    engine: Engine, process_table: Table, tmp_path: Path
) -> None:
    """The transform process imports none of the caller's script, unlike a spawned one."""
    _fill(engine, process_table, {i: f"v{i}" for i in range(30)})
    ran = tmp_path / "ran.txt"
    script = tmp_path / "rotate_everything.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from sqlalchemy import create_engine\n"
        "from sa_fieldcrypt.jobs import run_job\n"
        "from test_jobs_engine import _pid_job\n"
        f"with open({str(ran)!r}, 'a') as out:\n"
        "    out.write('ran\\n')\n"
        f"engine = create_engine({engine.url.render_as_string(hide_password=False)!r})\n"
        "written = run_job(engine, _pid_job, transform_process=True).written\n"
        "print(written, os.getpid())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert (0, "ran\n") == (done.returncode, ran.read_text()), done.stderr
    written, script_pid = done.stdout.split()
    (pid,) = _by_whom(_stored(engine, process_table))
    assert ("30", True) == (written, pid not in (str(os.getpid()), script_pid))


# -- JSON documents of a batch ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.text(max_size=40)).map(list),
        max_size=60,
    ),
    limit=st.one_of(st.none(), st.integers(1, 400)),
)
def test_json_documents_carry_every_row_in_order_within_the_limit(
    rows: list[list[Any]], limit: int | None
) -> None:
    """A batch's rows are split into JSON documents no longer than the limit (a row longer
    on its own goes alone), which together hold every row once, in order."""
    docs = list(DialectSql("mysql", "utf8mb4_bin", limit).json_documents(rows))
    parsed = [json.loads(doc) for doc in docs]
    assert rows == [row for doc in parsed for row in doc]
    if limit is None:
        assert 1 == len(docs)
    else:
        assert all(len(d) <= limit or len(h) <= 1 for d, h in zip(docs, parsed, strict=True))

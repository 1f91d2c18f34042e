"""Throttling: the row rate, pausing on replica lag and on a pause file, and the lag queries."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Column, Engine, Integer, MetaData, Table, Text, create_engine, insert, select

import sa_fieldcrypt
from conftest import CONNECT_ARGS, server_url
from sa_fieldcrypt import ConfigurationError, Keyring, generate_key, jobs
from sa_fieldcrypt.cipher import encrypt, inspect_token
from sa_fieldcrypt.cli import cli
from sa_fieldcrypt.config import swap_default_keys
from sa_fieldcrypt.jobs import Throttle
from sa_fieldcrypt.jobs.throttle import (
    MySQLReplicaLag,
    PostgresPrimaryLag,
    PostgresReplicaLag,
    primary_lag,
    replica_lag,
)

TABLE = "fc_throttle_rows"


class FakeTime:
    """A clock that moves only when slept on (or by ``tick`` on every look), and its sleeps."""

    def __init__(self, tick: float = 0.0):
        self.now = 0.0
        self.tick = tick
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[int], None] = lambda count: None

    def clock(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))


@pytest.fixture
def ring() -> Iterator[Keyring]:
    """k2 primary and k1 decrypt-only, installed as the process default keys."""
    keyring = Keyring({"k2": generate_key(), "k1": generate_key()})
    previous = swap_default_keys(None)
    sa_fieldcrypt.configure(keyring=keyring)
    yield keyring
    swap_default_keys(previous)


def _old_rows(engine: Engine, ring: Keyring, count: int) -> Table:
    """A table of ``count`` values under k1, for rotation to k2."""
    metadata = MetaData()
    table = Table(
        TABLE,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", Text),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    old = ring.with_primary("k1")
    context = f"{TABLE}.email"
    rows = [
        {"id": i, "email": encrypt(old, b"u@example.com", context=context)} for i in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    return table


def _key_ids(engine: Engine, table: Table) -> set[str]:
    with engine.connect() as conn:
        return {inspect_token(v).key_id for v in conn.execute(select(table.c.email)).scalars()}


class Timeline(jobs.RunListener):
    """Records pauses and resumptions, in order, beside what else the test records."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def paused(self, label: str, reason: str) -> None:
        self.events.append(f"paused: {reason}")

    def resumed(self, label: str, seconds: float) -> None:
        self.events.append("resumed")


# -- the rate -----------------------------------------------------------------------------


def test_the_first_batch_starts_at_once_and_the_next_waits_for_its_rows() -> None:
    """After a batch of n rows the next waits n / max_rate seconds from the batch's start."""
    fake = FakeTime()
    throttle = Throttle(max_rate=100, clock=fake.clock, sleep=fake.sleep)
    assert 0.0 == throttle.wait()
    throttle.charge(10)
    assert 0.1 == pytest.approx(throttle.wait())
    throttle.charge(0)
    assert 0.0 == throttle.wait()


def test_a_batch_is_at_most_a_tenth_of_a_seconds_rows() -> None:
    """max_batch caps a batch at a tenth of max_rate, and never below one row."""
    assert (100, 1, None) == (
        Throttle(max_rate=1000).max_batch,
        Throttle(max_rate=3).max_batch,
        Throttle().max_batch,
    )


def test_workers_share_the_rate() -> None:
    """split gives each of n workers max_rate / n."""
    assert 250.0 == Throttle(max_rate=1000).split(4).max_rate


@given(
    rate=st.floats(min_value=1, max_value=10_000),
    fractions=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=200),
    window=st.floats(min_value=0.5, max_value=10),
)
def test_no_window_holds_more_than_its_share_and_one_batch(
    rate: float, fractions: list[float], window: float
) -> None:
    """Rows of batches started in any window stay within max_rate * window plus one batch."""
    fake = FakeTime()
    throttle = Throttle(max_rate=rate, clock=fake.clock, sleep=fake.sleep)
    cap = throttle.max_batch
    assert cap is not None
    starts = []
    for fraction in fractions:
        throttle.wait()
        rows = round(fraction * cap)
        starts.append((fake.now, rows))
        throttle.charge(rows)
        fake.now += 0.001  # the batch itself takes a moment
    for begin, _ in starts:
        inside = sum(rows for at, rows in starts if begin <= at <= begin + window)
        assert inside <= rate * window + cap + 1e-6


def test_limits_that_are_not_positive_are_refused() -> None:
    """A rate of 0, a negative lag or replicas without a lag limit are ConfigurationErrors."""
    with pytest.raises(ConfigurationError, match="max_rate"):
        Throttle(max_rate=0)
    with pytest.raises(ConfigurationError, match="max_replica_lag"):
        Throttle(max_replica_lag=-1)
    with pytest.raises(ConfigurationError, match="need a max_replica_lag"):
        Throttle(replicas=[lambda: 0.0])


# -- pausing ------------------------------------------------------------------------------


def test_lag_over_the_limit_pauses_until_it_is_back_under() -> None:
    """wait holds while a lag source is over the limit, looking again every check interval."""
    lags = iter([9.0, 9.0, None, 2.0])
    fake = FakeTime()
    reasons: list[str] = []
    resumed: list[float] = []
    throttle = Throttle(
        max_replica_lag=5,
        replicas=[lambda: next(lags)],
        clock=fake.clock,
        sleep=fake.sleep,
    )
    assert 3.0 == throttle.wait(on_pause=reasons.append, on_resume=resumed.append)
    assert (["replica: replica lag 9.0 s is over 5 s"], [3.0]) == (reasons, resumed)


def test_an_unknown_lag_pauses() -> None:
    """A lag source that cannot tell (None: replication stopped) pauses the run."""
    lags = iter([None, 0.0])
    fake = FakeTime()
    reasons: list[str] = []
    throttle = Throttle(
        max_replica_lag=5, replicas=[lambda: next(lags)], clock=fake.clock, sleep=fake.sleep
    )
    assert 1.0 == throttle.wait(on_pause=reasons.append)
    assert ["replica: lag unknown (replication stopped?)"] == reasons


def test_lag_is_queried_at_most_once_per_check_interval_while_running() -> None:
    """Batches in quick succession reuse the last lag reading instead of querying again."""
    calls: list[int] = []
    fake = FakeTime()
    throttle = Throttle(
        max_replica_lag=5,
        replicas=[lambda: calls.append(1) or 0.0],
        clock=fake.clock,
        sleep=fake.sleep,
    )
    for _ in range(5):
        throttle.wait()
    fake.now += 1.0
    throttle.wait()
    assert 2 == len(calls)


def test_a_stop_request_ends_a_pause(tmp_path: Path) -> None:
    """wait returns once should_stop is true, even while the pause file exists."""
    pause = tmp_path / "pause"
    pause.touch()
    fake = FakeTime()
    throttle = Throttle(pause_file=pause, clock=fake.clock, sleep=fake.sleep)
    assert 2.0 == throttle.wait(lambda: len(fake.sleeps) >= 2)


def test_a_rotation_pauses_while_a_replica_lags_and_resumes_after(
    engine: Engine, ring: Keyring
) -> None:
    """A real rotate stops writing while the injected lag is over the limit, then finishes."""
    table = _old_rows(engine, ring, 30)
    timeline = Timeline()
    lags = iter([0.0, 0.0, 30.0, 30.0, 30.0])

    def lag() -> float:
        value = next(lags, 0.0)
        timeline.events.append(f"lag {value:g}")
        return value

    def before_write(conn: Any, keys: list[tuple[Any, ...]]) -> None:
        timeline.events.append("write")

    # Each look at the clock takes a second, so the lag is read again before every batch.
    fake = FakeTime(tick=1.0)
    throttle = Throttle(max_replica_lag=5, replicas=[lag], clock=fake.clock, sleep=fake.sleep)
    column = jobs.reflect_column(engine, TABLE, "email")
    report = jobs.rotate(
        engine,
        [column],
        batch_size=5,
        throttle=throttle,
        listener=timeline,
        before_write=before_write,
    )
    events = timeline.events
    assert (30, {"k2"}) == (report.written, _key_ids(engine, table))
    paused = events.index("paused: replica: replica lag 30.0 s is over 5 s")
    resumed = events.index("resumed")
    during = events[paused:resumed].count("write")
    # One batch may be in flight on a database server, where a batch is written while the
    # next is read; SQLite writes each batch before the next is read.
    assert during <= (0 if engine.dialect.name == "sqlite" else 1)
    assert ["lag 30", "lag 30", "lag 30", "lag 0"] == [
        e for e in events[paused - 1 : resumed] if e.startswith("lag")
    ]
    # Batches 3 to 6 are read after the pause.
    assert 1 <= events[:paused].count("write")
    assert 4 <= events[resumed:].count("write")
    assert report.jobs[0].throttled_seconds >= 3.0


def test_a_pause_file_pauses_a_rotation_until_it_is_removed(
    tmp_path: Path, engine: Engine, ring: Keyring
) -> None:
    """While the pause file exists nothing is written; removing it lets the run finish."""
    table = _old_rows(engine, ring, 20)
    pause = tmp_path / "pause"
    written: list[int] = []
    fake = FakeTime()

    def before_write(conn: Any, keys: list[tuple[Any, ...]]) -> None:
        if keys:  # SQLite calls it for the last, empty, page too
            written.append(len(keys))
        if len(written) == 1:
            pause.touch()

    # On a database server the second batch may be in flight when the file appears.
    in_flight = 1 if engine.dialect.name == "sqlite" else 2

    def on_sleep(count: int) -> None:
        assert len(written) <= in_flight, "a batch was written while paused"
        if count == 4:
            pause.unlink()

    fake.on_sleep = on_sleep
    throttle = Throttle(pause_file=pause, clock=fake.clock, sleep=fake.sleep)
    timeline = Timeline()
    report = jobs.rotate(
        engine,
        [jobs.reflect_column(engine, TABLE, "email")],
        batch_size=10,
        throttle=throttle,
        listener=timeline,
        before_write=before_write,
    )
    assert (20, {"k2"}, [10, 10]) == (report.written, _key_ids(engine, table), written)
    assert [f"paused: the pause file {pause} exists; remove it to resume", "resumed"] == (
        timeline.events
    )
    assert (4.0, 4.0) == (report.jobs[0].throttled_seconds, report.jobs[0].paused_seconds)


def test_the_report_tells_pauses_from_the_row_rate(
    tmp_path: Path, engine: Engine, ring: Keyring
) -> None:
    """throttled_seconds counts both; paused_seconds only the pause, the rest is the rate."""
    _old_rows(engine, ring, 20)
    pause = tmp_path / "pause"
    fake = FakeTime()
    written: list[int] = []

    def before_write(conn: Any, keys: list[tuple[Any, ...]]) -> None:
        if keys:
            written.append(len(keys))
        if len(written) == 1 and not pause.exists():
            pause.touch()

    def on_sleep(count: int) -> None:
        if pause.exists() and fake.clock() >= 3.0:
            pause.unlink()

    fake.on_sleep = on_sleep
    throttle = Throttle(max_rate=10, pause_file=pause, clock=fake.clock, sleep=fake.sleep)
    report = jobs.rotate(
        engine,
        [jobs.reflect_column(engine, TABLE, "email")],
        batch_size=10,
        throttle=throttle,
        before_write=before_write,
    ).jobs[0]
    assert 20 == report.written
    assert 0 < report.paused_seconds < report.throttled_seconds
    assert report.to_dict()["paused_seconds"] == round(report.paused_seconds, 3)


def test_a_pause_file_present_at_the_start_holds_the_first_batch(
    tmp_path: Path, engine: Engine, ring: Keyring
) -> None:
    """A run started while the pause file exists writes nothing until it is removed."""
    _old_rows(engine, ring, 10)
    pause = tmp_path / "pause"
    pause.touch()
    written: list[int] = []
    fake = FakeTime()

    def on_sleep(count: int) -> None:
        assert [] == written
        if count == 2:
            pause.unlink()

    fake.on_sleep = on_sleep
    throttle = Throttle(pause_file=pause, clock=fake.clock, sleep=fake.sleep)
    report = jobs.rotate(
        engine,
        [jobs.reflect_column(engine, TABLE, "email")],
        throttle=throttle,
        before_write=lambda conn, keys: written.extend([len(keys)] if keys else []),
    )
    assert (10, [10], 2.0, 2.0) == (
        report.written,
        written,
        report.jobs[0].throttled_seconds,
        report.jobs[0].paused_seconds,
    )


def test_max_rate_holds_every_five_second_window_under_110_percent(
    tmp_path: Path, ring: Keyring
) -> None:
    """A run of over 10 s at --max-rate 200 never writes more than 1,100 rows in 5 s."""
    engine = create_engine(f"sqlite:///{tmp_path / 'rate.sqlite3'}")
    rate, rows = 200, 2_100
    _old_rows(engine, ring, rows)
    writes: list[tuple[float, int]] = []
    report = jobs.rotate(
        engine,
        [jobs.reflect_column(engine, TABLE, "email")],
        throttle=Throttle(max_rate=rate),
        before_write=lambda conn, keys: writes.append((time.monotonic(), len(keys))),
    )
    assert rows == report.written
    assert writes[-1][0] - writes[0][0] >= 10  # the rate makes the run this long
    # An upper bound only: a slow machine writes fewer rows per window, never more.
    worst = max(sum(n for at, n in writes if start <= at < start + 5) for start, _ in writes)
    assert worst <= 1.1 * rate * 5
    assert 20 >= max(n for _, n in writes)  # a batch is a tenth of a second's rows
    engine.dispose()


def test_workers_run_under_a_throttle(ring: Keyring) -> None:
    """Worker processes take their share of the rate and watch the primary's replicas."""
    engine = create_engine(server_url("postgresql"), connect_args=CONNECT_ARGS)
    table = _old_rows(engine, ring, 40)
    throttle = Throttle(max_rate=100_000, max_replica_lag=60)
    report = jobs.rotate(
        engine, [jobs.reflect_column(engine, TABLE, "email")], workers=2, throttle=throttle
    )
    assert (40, {"k2"}) == (report.written, _key_ids(engine, table))
    table.metadata.drop_all(engine)
    engine.dispose()


class _ResumeOnPause(Timeline):
    """Removes the pause file as soon as the run says it paused."""

    def __init__(self, pause: Path):
        super().__init__()
        self.pause = pause

    def paused(self, label: str, reason: str) -> None:
        super().paused(label, reason)
        self.pause.unlink(missing_ok=True)


def test_workers_pause_on_the_pause_file(tmp_path: Path, ring: Keyring) -> None:
    """Worker processes hold while the pause file exists, and the listener hears of it."""
    engine = create_engine(server_url("postgresql"), connect_args=CONNECT_ARGS)
    table = _old_rows(engine, ring, 40)
    pause = tmp_path / "pause"
    pause.touch()
    listener = _ResumeOnPause(pause)
    report = jobs.rotate(
        engine,
        [jobs.reflect_column(engine, TABLE, "email")],
        workers=2,
        throttle=Throttle(pause_file=pause, check_interval=0.1),
        listener=listener,
    )
    assert (40, {"k2"}) == (report.written, _key_ids(engine, table))
    # Workers pausing together are one pause; events of two processes may arrive out of
    # order, though, so a worker that paused late can be heard of as a pause of its own.
    paused = f"paused: the pause file {pause} exists; remove it to resume"
    assert paused == listener.events[0]
    assert listener.events.count(paused) == listener.events.count("resumed")
    assert report.jobs[0].throttled_seconds > 0
    table.metadata.drop_all(engine)
    engine.dispose()


# -- lag sources --------------------------------------------------------------------------


def test_a_postgresql_primary_without_replicas_has_no_lag() -> None:
    """pg_stat_replication with no replica connected reads as lag 0."""
    source = PostgresPrimaryLag(server_url("postgresql"))
    assert 0.0 == source()
    source.close()


def test_a_postgresql_primary_is_not_a_replica() -> None:
    """A replica URL naming a server not in recovery is a clear ConfigurationError."""
    source = replica_lag(server_url("postgresql"))
    assert isinstance(source, PostgresReplicaLag)
    with pytest.raises(ConfigurationError, match="is not a replica"):
        source()
    Throttle(max_replica_lag=1, replicas=[source]).close()


def test_a_mariadb_server_without_replication_is_not_a_replica() -> None:
    """No replication channel (SHOW ALL SLAVES STATUS has no row) is a ConfigurationError."""
    source = replica_lag(server_url("mariadb"))
    assert isinstance(source, MySQLReplicaLag)
    with pytest.raises(ConfigurationError, match="is not a replica"):
        source()
    Throttle(max_replica_lag=1, replicas=[source]).close()


def test_only_postgresql_primaries_are_watched_without_replicas() -> None:
    """A lag limit on MariaDB or SQLite must name its replicas; SQLite has none to name."""
    with pytest.raises(ConfigurationError, match="name the replicas"):
        primary_lag("mysql+pymysql://root@127.0.0.1/app")
    with pytest.raises(ConfigurationError, match="has no replicas"):
        replica_lag("sqlite://")


def test_a_lag_source_queries_through_an_engine_it_is_given() -> None:
    """Given an engine (with its connect_args), a source uses it and leaves it open."""
    engine = create_engine(server_url("postgresql"), connect_args=CONNECT_ARGS)
    source = primary_lag(engine)
    assert 0.0 == source()
    Throttle(max_replica_lag=1, replicas=[source]).close()
    with engine.connect() as conn:
        assert 1 == conn.exec_driver_sql("SELECT 1").scalar()
    engine.dispose()


def test_a_lag_source_names_its_server_without_the_password() -> None:
    """Pauses name a lag source by host, port and database: never its credentials."""
    source = replica_lag("postgresql://monitor:s3cret@replica-1:5433/app")
    assert "replica-1:5433/app" == getattr(source, "name", None)


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def sqlite_env(tmp_path: Path, ring: Keyring, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A SQLite database of old values, named by FIELDCRYPT_DATABASE_URL, keys in the settings."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    engine = create_engine(url)
    _old_rows(engine, ring, 12)
    monkeypatch.setenv("FIELDCRYPT_DATABASE_URL", url)
    monkeypatch.setenv("FIELDCRYPT_KEYS", ring.export())
    monkeypatch.delenv("FIELDCRYPT_PRIMARY_KEY_ID", raising=False)
    swap_default_keys(None)
    yield engine
    engine.dispose()


TARGET = ["--table", TABLE, "--column", "email"]


@pytest.mark.parametrize("command", ["rotate", "verify"])
def test_cli_throttle_flags_and_json_times(
    sqlite_env: Engine, tmp_path: Path, command: str
) -> None:
    """--max-rate and --pause-file are taken by every job command; --json has the times."""
    result = CliRunner().invoke(
        cli,
        [command, *TARGET, "--max-rate", "100000", "--pause-file", str(tmp_path / "p"), "--json"],
    )
    assert 0 == result.exit_code, result.output
    job = json.loads(result.stdout)["jobs"][0]
    assert 12 == job["scanned"]
    assert {"elapsed_seconds", "throttled_seconds", "rows_per_second"} <= set(job)


def test_cli_replica_needs_a_lag_limit(sqlite_env: Engine) -> None:
    """--replica without --max-replica-lag is a usage error."""
    result = CliRunner().invoke(cli, ["rotate", *TARGET, "--replica", "postgresql://r/app"])
    assert 2 == result.exit_code
    assert "--replica needs --max-replica-lag" in result.output


def test_cli_lag_limit_on_sqlite_says_to_name_replicas(sqlite_env: Engine) -> None:
    """--max-replica-lag on a database that cannot report its replicas says what to do."""
    result = CliRunner().invoke(cli, ["rotate", *TARGET, "--max-replica-lag", "5"])
    assert 1 == result.exit_code
    assert "name the replicas to watch (--replica URL)" in result.output

"""Throttling a data job: a row rate, replica lag, and a pause switch an operator flips.

A :class:`Throttle` is consulted by the engine before every batch (:func:`run_job`'s
``throttle``). It holds the batch back while

- the pause file exists (create it to pause a run, remove it to resume: the run keeps its
  connections and its place, nothing is killed);
- a watched replica lags more than ``max_replica_lag`` seconds, or its lag cannot be told
  (replication stopped, the replica unreachable): a run never adds load to a replica it
  cannot see;
- the run would otherwise write more than ``max_rate`` rows per second.

Typical usage::

    from sa_fieldcrypt.jobs import Throttle, replica_lag, rotate

    throttle = Throttle(
        max_rate=500,
        max_replica_lag=5,
        replicas=[replica_lag("postgresql://monitor@replica-1/app")],
        pause_file="/run/fieldcrypt/pause",
    )
    rotate(engine, columns, throttle=throttle)

The rate counts rows written (in a dry run, rows that would be; a job that writes no column,
as ``verify``, counts the rows it reads): after a batch that wrote ``n`` rows the next one
starts no sooner than ``n / max_rate`` seconds after it started, and a batch is at most a
tenth of a second's rows, so any window of ``W`` seconds holds at most ``max_rate * W`` rows
plus two batches' worth (the batch in flight on a database server included). With
``workers``, each worker process gets ``max_rate / workers`` and watches the lag and the
pause file itself.

Lag is measured per database:

- PostgreSQL primary (:func:`primary_lag`, used when no replica is named): the largest
  ``replay_lag`` of ``pg_stat_replication``. A NULL ``replay_lag`` is a replica that has
  caught up and gone idle (lag 0); no replica connected is lag 0 too, so a replica that
  disconnects is no longer watched: name it with :func:`replica_lag` to keep watching it.
  The user needs ``pg_monitor`` to see the lag columns.
- PostgreSQL replica (:func:`replica_lag`): ``now() - pg_last_xact_replay_timestamp()``, or 0
  when it has replayed all it received (an idle primary sends nothing, so the timestamp
  ages without any lag). A server not in recovery is not a replica: ConfigurationError.
- MariaDB and MySQL replica (:func:`replica_lag`): ``Seconds_Behind_Master`` (or
  ``_Source``) of ``SHOW ALL SLAVES STATUS`` on MariaDB, ``SHOW REPLICA STATUS`` on MySQL
  (``SHOW SLAVE STATUS`` before it existed), the largest of every replication channel. NULL
  means replication is stopped: the lag is unknown and the run pauses. No row means the
  server is not a replica: ConfigurationError.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Protocol

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from sa_fieldcrypt.errors import ConfigurationError
from sa_fieldcrypt.jobs.sql import driver_message

__all__ = [
    "LagSource",
    "MySQLReplicaLag",
    "PostgresPrimaryLag",
    "PostgresReplicaLag",
    "Throttle",
    "primary_lag",
    "replica_lag",
]

logger = logging.getLogger("sa_fieldcrypt.jobs")

#: The share of a second's rows one batch may hold under ``max_rate``: small batches keep
#: every window close to the limit (a window may hold up to two batches more than its share).
_BATCH_SHARE: Final = 0.1


class LagSource(Protocol):
    """A replica's lag: seconds behind, or None when it cannot be told (a stopped replica).

    A ``name`` attribute, where present, is how pauses name the source. A source raises
    :class:`~sa_fieldcrypt.ConfigurationError` when it watches something that is not a
    replica; a database error is read as an unknown lag.
    """

    def __call__(self) -> float | None:
        """The lag now, in seconds; None when unknown."""
        ...


class Throttle:
    """What holds a run's batches back: a row rate, replica lag and a pause file.

    Args:
        max_rate: rows written per second at most (per run; split among workers), side rows
            included (a substring index's, :class:`~sa_fieldcrypt.jobs.SideWrites`).
        max_replica_lag: seconds of replica lag above which the run pauses.
        replicas: the lag sources to watch; with ``max_replica_lag`` and none given, the
            run's own database is watched as a PostgreSQL primary (:func:`primary_lag`).
        pause_file: while a file exists at this path, the run pauses.
        check_interval: seconds between two looks at the lag and the pause file while paused
            (and, while running, the least seconds between two lag queries).
        clock: monotonic seconds (for tests).
        sleep: sleeps so many seconds (for tests).

    Raises:
        ConfigurationError: a limit that is not positive.
    """

    def __init__(
        self,
        *,
        max_rate: float | None = None,
        max_replica_lag: float | None = None,
        replicas: Sequence[LagSource] = (),
        pause_file: str | os.PathLike[str] | None = None,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if max_rate is not None and not (max_rate > 0 and math.isfinite(max_rate)):
            raise ConfigurationError("max_rate must be a positive number of rows per second")
        if max_replica_lag is not None and not max_replica_lag >= 0:
            raise ConfigurationError("max_replica_lag must be zero or more seconds")
        if not check_interval > 0:
            raise ConfigurationError("check_interval must be more than 0 seconds")
        if replicas and max_replica_lag is None:
            raise ConfigurationError("replicas to watch need a max_replica_lag")
        self.max_rate = max_rate
        self.max_replica_lag = max_replica_lag
        self.replicas = tuple(replicas)
        self.pause_file = None if pause_file is None else os.fspath(pause_file)
        self.check_interval = check_interval
        self.clock = clock
        self.sleep = sleep
        self._next = -math.inf  # when the next batch may start, by the rate
        self._mark = 0.0  # when the current batch started
        self._lag_checked = -math.inf
        self._lag_reason: str | None = None

    @property
    def max_batch(self) -> int | None:
        """The largest batch the rate allows (a tenth of a second's rows); None: any."""
        if self.max_rate is None:
            return None
        return max(1, int(self.max_rate * _BATCH_SHARE))

    def split(self, parts: int) -> Throttle:
        """A copy for one of ``parts`` worker processes: ``max_rate / parts`` each."""
        part = copy.copy(self)
        if self.max_rate is not None:
            part.max_rate = self.max_rate / parts
        return part

    def batch_size(self, wanted: int) -> int:
        """``wanted``, or fewer rows where the rate allows no more (:attr:`max_batch`)."""
        return min(wanted, self.max_batch or wanted)

    @contextlib.contextmanager
    def watching(self, url: str | URL | Engine) -> Iterator[Throttle]:
        """This throttle, watching the database at ``url`` as a primary if no replica is
        named, for the ``with`` block; the lag source made for it is closed after.

        Raises:
            ConfigurationError: a lag limit without replicas on a database that is not
                PostgreSQL (only PostgreSQL primaries know their replicas' lag).
        """
        if self.max_replica_lag is None or self.replicas:
            yield self
            return
        watched = copy.copy(self)
        watched.replicas = (primary_lag(url),)
        try:
            yield watched
        finally:
            watched.close()

    def wait(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        on_pause: Callable[[str], None] = lambda reason: None,
        on_resume: Callable[[float], None] = lambda seconds: None,
    ) -> float:
        """Wait until the next batch may start; return the seconds waited.

        Pauses (the pause file, replica lag) are told to ``on_pause`` with the reason when
        they begin and to ``on_resume`` with their length when they end. Returns early once
        ``should_stop()`` is true.
        """
        start = self.clock()
        paused_at: float | None = None
        while not should_stop():
            reason = self._pause_reason(paused=paused_at is not None)
            if reason is None:
                if paused_at is not None:
                    on_resume(self.clock() - paused_at)
                    paused_at = None
                delay = self._next - self.clock()
                if delay <= 0:
                    break
                # In steps, so a pause or a stop request is seen within a check interval.
                self.sleep(min(delay, self.check_interval))
                continue
            if paused_at is None:
                paused_at = self.clock()
                on_pause(reason)
            self.sleep(self.check_interval)
        if paused_at is not None:
            on_resume(self.clock() - paused_at)
        self._mark = self.clock()
        return self._mark - start

    def charge(self, rows: int) -> None:
        """Count ``rows`` written by the batch that started at the last :meth:`wait`."""
        if self.max_rate is not None and rows > 0:
            self._next = max(self._next, self._mark) + rows / self.max_rate

    def close(self) -> None:
        """Close the connections of the lag sources that hold any."""
        for source in self.replicas:
            close = getattr(source, "close", None)
            if callable(close):
                close()

    def _pause_reason(self, *, paused: bool) -> str | None:
        if self.pause_file is not None and os.path.exists(self.pause_file):
            return f"the pause file {self.pause_file} exists; remove it to resume"
        if self.max_replica_lag is None:
            return None
        now = self.clock()
        if paused or now - self._lag_checked >= self.check_interval:
            self._lag_checked = now
            self._lag_reason = self._lag_over(self.max_replica_lag)
        return self._lag_reason

    def _lag_over(self, limit: float) -> str | None:
        for source in self.replicas:
            name = getattr(source, "name", None) or "replica"
            try:
                lag = source()
            except SQLAlchemyError as exc:
                return f"{name}: lag unknown (database error: {driver_message(exc)})"
            if lag is None:
                return f"{name}: lag unknown (replication stopped?)"
            if lag > limit:
                return f"{name}: replica lag {lag:.1f} s is over {limit:g} s"
        return None


class _SqlLag:
    """A lag query on a database of its own, connected on first use (and in each worker).

    Given an engine, it queries through that engine, and leaves disposing of it to its
    owner; worker processes connect to its URL on their own (its ``connect_args`` and
    ``creator`` do not reach them). Given a URL, it makes its engine and closes it.
    """

    def __init__(self, database: str | URL | Engine):
        given = database if isinstance(database, Engine) else None
        self.url = database.url if isinstance(database, Engine) else make_url(database)
        host = self.url.host or "localhost"
        port = f":{self.url.port}" if self.url.port else ""
        self.name = f"{host}{port}/{self.url.database or ''}"
        self._engine = given
        self._owned = given is None

    def __getstate__(self) -> dict[str, Any]:
        # An engine does not pickle: a worker process connects on its own.
        return {**self.__dict__, "_engine": None, "_owned": True}

    def __call__(self) -> float | None:
        """The lag now, in seconds; None when unknown."""
        if self._engine is None:
            self._engine = create_engine(self.url, hide_parameters=True, pool_pre_ping=True)
        with self._engine.connect() as conn:
            return self._lag(conn)

    def _lag(self, conn: Any) -> float | None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the connections of the lag queries, if this source made their engine."""
        if self._engine is not None and self._owned:
            self._engine.dispose()
            self._engine = None


class PostgresPrimaryLag(_SqlLag):
    """The largest replay lag of the replicas of a PostgreSQL primary (``pg_stat_replication``).

    No replica connected, or every one caught up and idle (a NULL ``replay_lag``), is lag 0.

    Raises:
        ConfigurationError: the user cannot see the lag (it needs ``pg_monitor``).
    """

    def _lag(self, conn: Any) -> float | None:
        row = conn.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE state IS NULL), "
                "max(extract(epoch FROM replay_lag)) FROM pg_stat_replication"
            )
        ).one()
        if row[1]:
            raise ConfigurationError(
                f"{self.name}: this user cannot see the replicas' lag in pg_stat_replication; "
                "grant it pg_monitor"
            )
        return 0.0 if row[2] is None else float(row[2])


class PostgresReplicaLag(_SqlLag):
    """How far a PostgreSQL replica is behind: ``now() - pg_last_xact_replay_timestamp()``.

    A replica that has replayed all it received is 0 behind, however old its last replayed
    transaction; one that has replayed nothing yet is unknown.

    Raises:
        ConfigurationError: the server is not in recovery, so not a replica.
    """

    def _lag(self, conn: Any) -> float | None:
        in_recovery, lag = conn.execute(
            text(
                "SELECT pg_is_in_recovery(), CASE "
                "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
                "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
            )
        ).one()
        if not in_recovery:
            raise ConfigurationError(
                f"{self.name} is not a replica (not in recovery); name a replica's URL, or "
                "watch the primary by naming no replica"
            )
        return None if lag is None else max(0.0, float(lag))


class MySQLReplicaLag(_SqlLag):
    """How far a MariaDB or MySQL replica is behind: ``Seconds_Behind_Master``.

    The largest over every replication channel; NULL on any (replication stopped) is unknown.

    Raises:
        ConfigurationError: the server reports no replication, so it is not a replica.
    """

    def _lag(self, conn: Any) -> float | None:
        if getattr(conn.dialect, "is_mariadb", False):
            # Plain SHOW SLAVE STATUS shows only MariaDB's default connection; this shows the
            # named connections of multi-source replication too.
            rows = conn.execute(text("SHOW ALL SLAVES STATUS")).mappings().all()
        else:
            try:
                rows = conn.execute(text("SHOW REPLICA STATUS")).mappings().all()
            except DBAPIError:
                # MySQL before 8.0.22 only knows the old name.
                conn.rollback()
                rows = conn.execute(text("SHOW SLAVE STATUS")).mappings().all()
        if not rows:
            raise ConfigurationError(
                f"{self.name} is not a replica (it reports no replication channel); name a "
                "replica's URL"
            )
        lags = [row.get("Seconds_Behind_Master", row.get("Seconds_Behind_Source")) for row in rows]
        if any(lag is None for lag in lags):
            return None
        return float(max(lags))


def primary_lag(url: str | URL | Engine) -> LagSource:
    """The lag source of a primary at ``url`` (or an engine): the lag its replicas report to it.

    Raises:
        ConfigurationError: not PostgreSQL (MariaDB and MySQL primaries do not know their
            replicas' lag: name the replicas).
    """
    backend = url.dialect.name if isinstance(url, Engine) else make_url(url).get_backend_name()
    if backend != "postgresql":
        raise ConfigurationError(
            "only a PostgreSQL primary knows its replicas' lag; name the replicas to watch "
            "(--replica URL)"
        )
    return PostgresPrimaryLag(url)


def replica_lag(url: str | URL | Engine) -> LagSource:
    """The lag source of the replica at ``url``, or of an engine (PostgreSQL, MariaDB or MySQL).

    Raises:
        ConfigurationError: a database that has no replicas (SQLite), or a URL that is not
            a SQLAlchemy URL.
    """
    try:
        backend = url.dialect.name if isinstance(url, Engine) else make_url(url).get_backend_name()
    except (ArgumentError, ValueError):
        # Not chained: the driver's message may quote the URL, password included.
        raise ConfigurationError("a replica URL is not a SQLAlchemy URL") from None
    if backend == "postgresql":
        return PostgresReplicaLag(url)
    if backend in ("mysql", "mariadb"):
        return MySQLReplicaLag(url)
    raise ConfigurationError(f"a {backend} database has no replicas to watch")

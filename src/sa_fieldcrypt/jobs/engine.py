"""The data-job engine: rewrite columns of a table in keyset batches, safely on a live database.

:func:`run_job` runs a :class:`BatchJob`: which rows of a table to visit, which columns to
read, which to write, and a per-row function from the old values to the new ones. Rotation,
verification (:mod:`sa_fieldcrypt.jobs.rotation`) and reindexing
(:mod:`sa_fieldcrypt.jobs.reindex`) are jobs for it; user code can write its own.

Typical usage::

    from sa_fieldcrypt.jobs import BatchJob, run_job

    job = BatchJob(
        label="visits.email",
        table=visits,
        read=(visits.c.email,),
        write=(visits.c.email_hash,),
        transform=lambda key, old: (digest(old[0]),),
        where=visits.c.email_hash.is_(None),
    )
    report = run_job(engine, job, batch_size=1000)

How a run works, and why it is safe with the application running:

- Rows are read in batches in primary-key order (keyset pagination, composite keys too) and
  each batch is written in one transaction, so memory stays flat whatever the table size and
  a stopped run has lost at most the batches in flight (two, on a database server, where
  one batch is written while the next is transformed).
- The job's SQL filter selects only the rows that still need work, so a rerun skips what an
  earlier run finished without reading it; with a state file
  (:class:`~sa_fieldcrypt.jobs.state.ResumeState`) a rerun starts after the last committed
  batch even where the filter cannot tell.
- Each row is written by a Core ``UPDATE ... WHERE pk = :pk AND col = :old`` over every column
  read (compare and swap): a row the application changed between the read and the write is
  left alone, read again and, if it still needs it, written. ORM events and ``onupdate``
  columns do not fire. (Database triggers still do.)
- A job with ``side`` (:class:`SideWrites`) carries rows of another table along: they are
  read with each page, and those of every row written are rewritten in the same transaction,
  after the compare and swap that locks the row (a substring index's side rows). One that
  writes nothing (a check, a dry run) reads each page and its side rows in one REPEATABLE
  READ transaction on PostgreSQL and MariaDB/MySQL: one snapshot, so that a row the
  application changes between the two reads is not seen with the other version's side rows.
- A row the transform cannot handle (it raises a :class:`~sa_fieldcrypt.FieldCryptError`) is
  reported by label and primary key (never its content) and the run goes on, unless
  ``fail_fast``. Any other exception from the transform or the listener stops the run: its
  batch is rolled back, batches committed before it stay.
- A batch whose write a unique constraint refuses is explained by the job
  (``explain_conflict``): every row that collides is reported as failed, naming the rows it
  collides with, and the rest of the batch is written.
- ``workers`` processes split the rows into primary-key ranges; ``shard`` lets several
  machines split a table without talking to each other. With one worker on a database
  server, a *transform process* runs the transform (the crypto) while the run's own process
  reads and writes (``transform_process``; by default for runs of 50,000 rows or more).
- A :class:`~sa_fieldcrypt.jobs.throttle.Throttle` holds batches back, before each is read:
  to a row rate, while a replica lags, while a pause file exists.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickletools
import queue as queue_module
import re
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.reduction import ForkingPickler
from typing import Any, Final, Protocol, TypeVar

from sqlalchemy import (
    Column,
    Engine,
    Table,
    and_,
    bindparam,
    column,
    create_engine,
    func,
    literal_column,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from sa_fieldcrypt.config import configure, current_keyring, set_unbound_allowed, unbound_allowed
from sa_fieldcrypt.errors import ConfigurationError, DecryptionError, FieldCryptError, RotationError
from sa_fieldcrypt.jobs.report import Failure, JobReport, RunListener, RunReport, plural
from sa_fieldcrypt.jobs.sql import (
    DialectSql,
    driver_message,
    is_transient,
    keys_in,
    stored_text,
    stored_type,
)
from sa_fieldcrypt.jobs.state import KeyRange, ResumeState, check_resumable
from sa_fieldcrypt.jobs.throttle import Throttle
from sa_fieldcrypt.keys import PURPOSES, Keyring, Purpose

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "SHARD_INDEX_VARIABLE",
    "SKIP",
    "BatchJob",
    "BeforeWrite",
    "ExplainConflict",
    "Item",
    "JobFactory",
    "SideWrites",
    "Skip",
    "Transform",
    "in_transaction",
    "parse_shard",
    "run_job",
    "run_jobs",
    "shard_from_env",
]

logger = logging.getLogger("sa_fieldcrypt.jobs")

#: Rows per batch, and per transaction, unless a run says otherwise.
DEFAULT_BATCH_SIZE: Final = 1000
#: Times a row that changed under a run is read again within the run.
_CAS_RETRIES: Final = 3
#: Times a batch is retried after a deadlock or serialization failure.
_TRANSIENT_RETRIES: Final = 5
#: Isolation levels whose reads see a snapshot taken at the transaction's first read.
_SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE"})

#: Times a batch is written again after a unique-constraint conflict that no row explains.
_CONFLICT_RETRIES: Final = 3


class Skip:
    """Type of :data:`SKIP`."""

    def __repr__(self) -> str:
        return "SKIP"


#: What a transform returns for a row it leaves alone on purpose (counted as skipped).
SKIP: Final = Skip()

#: The per-row function of a job: a row's primary key and the old values of ``read`` to the
#: new values of ``write``.
Transform = Callable[[tuple[Any, ...], tuple[Any, ...]], "tuple[Any, ...] | Skip | None"]
#: ``(primary key, old values, new values)`` of a row about to be written.
Item = tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]
#: Called with the connection and the keys of a batch's rows between its read and its write.
BeforeWrite = Callable[[Connection, list[tuple[Any, ...]]], None]
#: Explains a unique-constraint conflict of a batch's write: a failure for each row that
#: collides, which the batch is then written without; none when no row collides any more (the
#: conflicting row changed meanwhile), and the batch is written again as it is.
ExplainConflict = Callable[[Engine, list[Item]], "list[Failure]"]
_T = TypeVar("_T")


class SideWrites(Protocol):
    """Rows of another table that a job's rows carry along, rewritten with them.

    A substring index's side rows are one: the job's transform compares what they hold with
    what they should hold, and the rows found stale are written (compare and swap on
    ``read``) and their side rows replaced, in the same transaction.
    """

    def read(self, conn: Connection, keys: list[tuple[Any, ...]]) -> Mapping[tuple[Any, ...], Any]:
        """What the side table holds for each of ``keys`` (primary keys of a page's rows).

        Each row's entry (None when absent) is given to the transform after the values of
        ``read``; it must pickle, for a transform process.
        """
        ...

    def write(self, conn: Connection, sql: DialectSql, items: list[Item]) -> int | None:
        """Rewrite the side rows of ``items``, rows just written, in the batch's transaction.

        Each item's new values end with what the transform computed for the side rows;
        ``sql`` is the connection's (:meth:`DialectSql.connected`), as the rows were written.

        Returns how many side rows it wrote, which a throttle's rate counts with the rows
        (None: none to count).
        """
        ...


#: The default keyrings a worker process is given, by purpose.
_DefaultKeys = dict[Purpose, Keyring]
#: What a child process needs to run a job as this one would: the engine's URL and execution
#: options, the default keys, whether unbound tokens are read.
_ChildSettings = tuple[str, dict[str, Any], _DefaultKeys, "bool | None"]
#: A batch transformed: ``(position in the batch, new values)`` of each row to write, the
#: counts, the failures, and how many rows of the batch were taken (fail_fast stops early).
_Transformed = tuple[list[tuple[int, tuple[Any, ...]]], dict[str, int], list[Failure], int]
#: Rows a run must visit for its transform to get a process of its own: starting one costs
#: about as much as transforming 20,000 to 50,000 Fernet values here.
_TRANSFORM_PROCESS_ROWS: Final = 50_000


@dataclass(frozen=True)
class BatchJob:
    """One pass over a table: which rows to visit and how each one changes.

    ``transform`` receives the row's primary-key values (in the table's primary-key order)
    and the stored values of ``read`` (raw tokens for encrypted columns), and returns the
    new values of ``write``, or None when the row needs no change, or
    :data:`SKIP` when it is left alone on purpose. It raises a
    :class:`~sa_fieldcrypt.FieldCryptError` (such as :class:`~sa_fieldcrypt.DecryptionError`)
    for a row it cannot handle: the row is reported as failed and the run goes on. A row is
    written only if the ``read`` columns still hold what was read (compare and swap).

    Attributes:
        label: how reports and messages name the job (usually ``schema.table.column``).
        table: the table; its primary key orders and identifies the rows.
        read: the columns given to ``transform``, and compared before each write.
        write: the columns ``transform``'s result is written to; empty for read-only jobs.
        transform: the per-row function.
        where: which rows to visit; built on ``table``'s columns, with encrypted columns
            wrapped in :func:`~sa_fieldcrypt.jobs.sql.stored_text` to compare their text.
        resume_key: what names the job in a state file: everything that must not change for
            a saved position to stay valid (by default the label).
        explain_conflict: how to find and name the rows of a unique-constraint conflict, all
            of a batch's at once (each becomes a failure, the rest of the batch is written);
            without it a conflict stops the run with the driver's message.
        batch_transform: called once per batch for the transform of that batch's rows, so
            that what stays fixed within a batch (keys, codecs) is looked up once; it must
            give each row what ``transform`` gives it. Without it, ``transform`` is used.
        side: rows of another table the job rewrites with its own (:class:`SideWrites`):
            ``transform`` is given each row's side state after the values of ``read``, and
            the side rows of every row written are rewritten in its batch's transaction.
            ``transform`` returns, after the new values of ``write``, one value more: what
            the side writes for the row (computed once, where the transform runs), which
            :meth:`SideWrites.write` finds as the last of each item's new values.
    """

    label: str
    table: Table
    read: tuple[Column[Any], ...]
    write: tuple[Column[Any], ...]
    transform: Transform
    where: ColumnElement[bool] | None = None
    resume_key: str = ""
    explain_conflict: ExplainConflict | None = field(default=None, compare=False)
    batch_transform: Callable[[], Transform] | None = field(default=None, compare=False)
    side: SideWrites | None = field(default=None, compare=False)


#: Builds a job from an engine; worker processes call it to build their own.
JobFactory = Callable[[Engine], BatchJob]


def parse_shard(text_: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (shard I of N, counted from 1) into ``(I, N)``.

    Raises:
        ConfigurationError: not of that form, or I outside 1..N.
    """
    match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text_)
    if match is None:
        raise ConfigurationError(f"shard {text_!r} is not of the form I/N, such as 1/4")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise ConfigurationError(f"shard {text_!r}: I must be between 1 and N")
    return index, count


#: Where :func:`shard_from_env` reads a shard's index: the variable a Kubernetes Indexed Job
#: sets in each pod (the pod's ``batch.kubernetes.io/job-completion-index``), from 0.
SHARD_INDEX_VARIABLE: Final = "JOB_COMPLETION_INDEX"


def shard_from_env(count: int, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The shard ``(I, N)`` of ``count`` that ``JOB_COMPLETION_INDEX`` (from 0) names.

    Index ``k`` is shard ``k + 1`` of ``count``, so the pods of a Kubernetes Indexed Job with
    ``completions: count`` run every shard once.

    Args:
        count: how many shards the table is split into (N).
        environ: where to read the variable; by default the process environment.

    Raises:
        ConfigurationError: the variable is not set, not a number, or not below ``count``.
    """
    if count < 1:
        raise ConfigurationError("the number of shards must be at least 1")
    name = SHARD_INDEX_VARIABLE
    text_ = (os.environ if environ is None else environ).get(name)
    wanted = f"a shard of {count} needs an index from 0 to {count - 1}"
    if text_ is None:
        raise ConfigurationError(
            f"{name} is not set: {wanted}, as a Kubernetes Indexed Job with completions: "
            f"{count} sets it; elsewhere, name the shard itself (--shard I/N)"
        )
    if not re.fullmatch(r"\s*\d{1,6}\s*", text_):
        raise ConfigurationError(f"{name} is {text_!r}: {wanted}")
    index = int(text_)
    if index >= count:
        raise ConfigurationError(
            f"{name} is {index}: {wanted}; the Job's completions must equal the number of shards"
        )
    return index + 1, count


def run_job(
    engine: Engine,
    job: BatchJob | JobFactory,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    fail_fast: bool = False,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    state: ResumeState | None = None,
    listener: RunListener | None = None,
    before_write: BeforeWrite | None = None,
    reread_changed: bool = True,
    throttle: Throttle | None = None,
    transform_process: bool | None = None,
) -> JobReport:
    """Run a :class:`BatchJob` over its table, batch by batch.

    Args:
        engine: the database.
        job: the job, or a function that builds it from an engine. With ``workers > 1`` it
            must be a picklable function (a module-level function, or a
            ``functools.partial`` of one), since each worker process builds its own.
        batch_size: rows per batch, and per transaction.
        dry_run: run the transform but write nothing; counts say what would be written.
        fail_fast: stop at the first row that fails (at a row a unique constraint refuses:
            after its batch, whose other rows are written).
        workers: processes, each over its own range of primary keys. Each makes its own
            engine from ``engine``'s URL and execution options: ``connect_args``, a
            ``creator`` and event listeners of ``engine`` do not reach them.
        shard: ``(I, N)``: visit only shard I (from 1) of N, so that N machines, each
            running one shard, split a table between them without coordination.
        state: where progress is saved after every committed batch; a job found there
            resumes after its last committed batch (with the split into ranges it had).
        listener: receives progress; by default it is logged.
        before_write: called with the connection and the primary keys of the rows about to
            be written, between reading and writing each batch (for tests and audits); one
            process only.
        reread_changed: read a row that changed between read and write again and handle it
            in this run; with False it is only counted (``concurrent``) and left as it is.
        throttle: holds batches back to a row rate, while a replica lags or while a pause
            file exists; with ``workers``, each worker gets an equal share of the rate. A
            rate also caps ``batch_size`` at a tenth of a second's rows.
        transform_process: run the transform in a process of its own, which ``job`` (a
            picklable factory) builds its job in, while this one reads and writes: on a
            database server, with one worker, the crypto then has a core to itself. One
            process serves the whole run. By default (None), it does when ``job`` is a
            factory and at least 50,000 rows need work, and the run transforms here instead
            (logging why, at INFO) when the process cannot be used: a factory or model of
            the ``__main__`` module, a batch or a transform that does not pickle, a job it
            cannot build or builds with another table or columns than this process (it
            connects to ``engine``'s URL with its execution options, without
            ``connect_args``, ``creator`` or event listeners), an interpreter that does not
            start, or no POSIX system. True raises instead, before the run reads anything
            where that can be known. It does not apply with ``workers > 1`` (each worker reads,
            transforms and writes its range), on SQLite, in a dry run, or to jobs that write
            nothing (verification): those go one batch after the other. The process's own
            log records and warnings go to its standard error, not to this process's
            logging; an error it raises that is not a ``FieldCryptError`` arrives as a
            ``RotationError`` naming its type and first line.

    Returns:
        The counts of the run; failures are also passed to ``listener`` as they happen.

    Raises:
        RotationError: a database error; what was committed stays, and a rerun resumes.
        ConfigurationError: invalid options.
    """
    if batch_size < 1:
        raise ConfigurationError("batch_size must be at least 1")
    if workers < 1:
        raise ConfigurationError("workers must be at least 1")
    if shard is not None:
        parse_shard(f"{shard[0]}/{shard[1]}")
    if workers > 1 and before_write is not None:
        raise ConfigurationError("before_write runs in one process only; use workers=1")
    if workers > 1 and isinstance(job, BatchJob):
        raise ConfigurationError(
            "workers > 1 need a picklable job factory (a module-level function of the "
            "engine), not a BatchJob"
        )
    with contextlib.ExitStack() as stack:
        if throttle is not None:
            # On the run's engine, with its connect_args (worker processes connect to its URL).
            throttle = stack.enter_context(throttle.watching(engine))
        listener = listener or RunListener()
        built = job if isinstance(job, BatchJob) else job(engine)
        pk = _primary_key(built)
        shard0 = None if shard is None else (shard[0] - 1, shard[1])
        options = _Options(batch_size, dry_run, fail_fast, shard0, reread_changed)
        name = _resume_name(built, shard, dry_run)
        ranges = None
        if state is not None:
            check_resumable(built.label, pk)
            ranges = state.ranges(name)
        report = JobReport(built.label, dry_run=dry_run, resumed=ranges is not None)
        # Only walks that pipeline their batches (one worker, a server) hand them on; asked
        # for, the process is checked before anything is counted or saved.
        pipelined = bool(built.write) and not dry_run and engine.dialect.name != "sqlite"
        transform = None
        if transform_process and pipelined and workers == 1:
            transform = _transform_process(engine, job, built, options, required=True)
        if ranges is None:
            total, ranges = _split(engine, built, options, workers)
            if state is not None:
                state.begin(name, ranges)
        else:
            total = _count_rows(engine, built, options, [r for r in ranges if not r.done])
        pending = [i for i, r in enumerate(ranges) if not r.done]
        parallel = workers > 1 and len(pending) > 1
        if throttle is not None:
            options = options.throttled(throttle.split(len(pending)) if parallel else throttle)
        progress = _JobProgress(state, name, listener, report, parallel)
        listener.started(built.label, total)
        if not parallel:
            wanted = transform_process or (
                transform_process is None and total >= _TRANSFORM_PROCESS_ROWS
            )
            if transform is None and pipelined and wanted:
                required = transform_process is True
                transform = _transform_process(engine, job, built, options, required=required)
            if transform is not None:
                stack.callback(transform.close)
            for index in pending:
                walk = _Walk(
                    engine, built, options, progress.at(index), before_write, transform=transform
                )
                if not walk.run(ranges[index]):
                    break
        elif not isinstance(job, BatchJob):  # a BatchJob with workers was refused above
            _run_workers(engine, job, built, options, [(i, ranges[i]) for i in pending], progress)
        progress.clocked()
        listener.finished(report)
        return report


def _transform_process(
    engine: Engine,
    job: BatchJob | JobFactory,
    built: BatchJob,
    options: _Options,
    *,
    required: bool,
) -> _TransformProcess | None:
    """The run's transform process, if ``job`` is a factory another process can call."""
    if isinstance(job, BatchJob):
        if required:
            raise ConfigurationError(
                "transform_process needs a picklable job factory (a module-level function of "
                "the engine), not a BatchJob; rotate() and reindex() make one for columns "
                "found by find_columns(), find_indexes() or reflect_column()"
            )
        return None
    return _TransformProcess(engine, job, built, options, required=required)


def run_jobs(
    engine: Engine,
    jobs: Iterable[BatchJob | JobFactory],
    *,
    fail_fast: bool = False,
    **options: Any,
) -> RunReport:
    """Run several jobs one after the other with the same options; see :func:`run_job`.

    With ``fail_fast``, the jobs after one that stopped at a failure do not run. With a
    ``state``, a run that is stopped resumes each job where it was, skipping the jobs it
    finished; once every job has finished with every row handled, the state file is removed,
    so the next run starts afresh.
    """
    run = RunReport()
    for job in jobs:
        report = run_job(engine, job, fail_fast=fail_fast, **options)
        run.jobs.append(report)
        if fail_fast and not report.completed:
            break
    state = options.get("state")
    if run.ok and isinstance(state, ResumeState):
        # The run is over: a state file is for resuming one, so the next run starts afresh.
        state.clear()
    return run


def _resume_name(job: BatchJob, shard: tuple[int, int] | None, dry_run: bool) -> str:
    # A dry run's position must never make a real run skip rows, nor one shard's another's.
    parts = [job.resume_key or job.label]
    if shard is not None:
        parts.append(f"shard {shard[0]}/{shard[1]}")
    if dry_run:
        parts.append("dry run")
    return " | ".join(parts)


class _JobProgress:
    """Adds each committed batch to the job's report, saves the state, tells the listener."""

    def __init__(
        self,
        state: ResumeState | None,
        name: str,
        listener: RunListener,
        report: JobReport,
        parallel: bool = False,
    ):
        self.state = state
        self.name = name
        self.listener = listener
        self.report = report
        self.started = time.monotonic()
        # Seconds each range was held back; parallel ranges overlap in time, so the job was
        # held back as long as the longest, and one after the other as long as all of them.
        self.parallel = parallel
        self.throttled: dict[int, float] = {}
        self.paused_for: dict[int, float] = {}  # of which paused (the rest: the row rate)
        # Ranges paused now, and since when the first of them was: workers watch the same
        # replicas and pause file, so the listener hears of one pause, not one per worker.
        self.pausing: set[int] = set()
        self.paused_at = 0.0
        # Ranges with a row not handled (failed, or still changing): their saved position
        # stays before that row, and they are never saved as done, so a rerun reads it again.
        self.unsettled: set[int] = set()

    def at(self, index: int) -> _RangeProgress:
        return _RangeProgress(self, index)

    def clocked(self, index: int | None = None, throttled: float = 0.0) -> None:
        """Bring the report's times up to date, adding ``throttled`` seconds of a range."""
        if index is not None:
            self.throttled[index] = self.throttled.get(index, 0.0) + throttled
        spent = list(self.throttled.values()) or [0.0]
        self.report.throttled_seconds = max(spent) if self.parallel else sum(spent)
        paused = list(self.paused_for.values()) or [0.0]
        self.report.paused_seconds = max(paused) if self.parallel else sum(paused)
        self.report.elapsed = time.monotonic() - self.started

    def committed(self, index: int, rows: int, counts: dict[str, int], done: _Done) -> None:
        self.report.count(counts)
        self.clocked(index, done.throttled)
        if done.last is not None:
            self.report.last_key = done.last
        if self.state is not None and index not in self.unsettled:
            if done.settled is not None:
                self.state.advance(self.name, index, done.settled)
            if not done.clean:
                self.unsettled.add(index)
        self.listener.batch(self.report.label, rows, self.report)

    def failed(self, failure: Failure) -> None:
        self.report.keep(failure)
        self.listener.failure(failure)

    def paused(self, index: int, reason: str) -> None:
        if not self.pausing:
            self.paused_at = time.monotonic()
            self.listener.paused(self.report.label, reason)
        self.pausing.add(index)

    def resumed(self, index: int, seconds: float) -> None:
        self.paused_for[index] = self.paused_for.get(index, 0.0) + seconds
        self.pausing.discard(index)
        if not self.pausing:
            # One process's own clock (an injected one, in tests) says how long it paused.
            spent = seconds if not self.parallel else time.monotonic() - self.paused_at
            self.listener.resumed(self.report.label, spent)

    def ended(self, index: int, completed: bool, throttled: float) -> None:
        self.clocked(index, throttled)
        self.report.completed = self.report.completed and completed
        if completed and self.state is not None and index not in self.unsettled:
            self.state.advance(self.name, index, None, done=True)


@dataclass(frozen=True)
class _Done:
    """Where a committed batch got to.

    Attributes:
        last: the batch's last row.
        settled: the last row before the first one the batch did not handle (None: none).
        clean: every row of the batch was handled.
        throttled: seconds the throttle held the range back since the batch before.
    """

    last: tuple[Any, ...] | None
    settled: tuple[Any, ...] | None
    clean: bool
    throttled: float = 0.0


@dataclass(frozen=True)
class _RangeProgress:
    """The progress of one range: what a walk reports to."""

    run: _JobProgress
    index: int

    def committed(self, rows: int, counts: dict[str, int], done: _Done) -> None:
        self.run.committed(self.index, rows, counts, done)

    def failed(self, failure: Failure) -> None:
        self.run.failed(failure)

    def paused(self, reason: str) -> None:
        self.run.paused(self.index, reason)

    def resumed(self, seconds: float) -> None:
        self.run.resumed(self.index, seconds)

    def ended(self, completed: bool, throttled: float) -> None:
        self.run.ended(self.index, completed, throttled)


# -- one process's walk --------------------------------------------------------------------


def _reason(exc: FieldCryptError) -> str:
    if isinstance(exc, DecryptionError):
        return f"key id {exc.key_id!r}: {exc.reason}" if exc.key_id else exc.reason
    return str(exc)


def _database_error(label: str, exc: SQLAlchemyError) -> RotationError:
    return RotationError(
        f"{label}: database error ({driver_message(exc)}); batches committed so far "
        "are kept, rerun to resume"
    )


@dataclass(frozen=True)
class _Options:
    batch_size: int
    dry_run: bool
    fail_fast: bool
    shard: tuple[int, int] | None  # (index from 0, count)
    reread_changed: bool = True
    throttle: Throttle | None = None

    def throttled(self, throttle: Throttle) -> _Options:
        """These options under ``throttle``, batches no larger than its rate allows."""
        size = throttle.batch_size(self.batch_size)
        return dataclasses.replace(self, throttle=throttle, batch_size=size)


def in_transaction(conn: Connection, work: Callable[..., _T], *args: Any) -> _T:
    """Run ``work(conn, *args)`` in one transaction of ``conn``, again after a deadlock or a
    lock wait timeout (a few times, waiting longer each time); other errors propagate."""
    attempt = 0
    while True:
        try:
            with conn.begin():
                return work(conn, *args)
        except DBAPIError as exc:
            if attempt >= _TRANSIENT_RETRIES or not is_transient(exc):
                raise
            # Lock conflicts clear once the other transaction ends; give it a moment.
            time.sleep(0.05 * 2**attempt)
            attempt += 1


class _Conflict(Exception):
    """A batch's write hit a unique constraint; carries the batch to explain it."""

    def __init__(self, items: list[Item]):
        super().__init__("unique-constraint conflict")
        self.items = items


@dataclass
class _Batch:
    """Rows read and transformed, and what became of them."""

    keys: list[tuple[Any, ...]]
    items: list[Item]
    counts: dict[str, int]
    failures: list[Failure]
    left: int = 0  # rows still changing after every retry
    unsettled: set[tuple[Any, ...]] = field(default_factory=set)  # their keys
    side_rows: int = 0  # rows of another table written with them (BatchJob.side)


class _Writer:
    """Writes a batch with compare-and-swap and says which rows it could not write."""

    def __init__(
        self, conn: Connection, sql: DialectSql, job: BatchJob, pk: tuple[Column[Any], ...]
    ):
        self.sql = sql
        self.pk_names = [c.name for c in pk]
        self.read_names = [c.name for c in job.read]
        self.write_names = [c.name for c in job.write]
        # A job with side rows gives, after the new values, what its side writes: not ours.
        self.side_values = job.side is not None
        types: dict[str, TypeEngine[Any]] = {c.name: c.type for c in pk}
        for col in (*job.read, *job.write):
            types.setdefault(col.name, stored_type(col))
        # The bare table clause below is not subject to the engine's schema_translate_map,
        # as the Table is: translate its schema here.
        translate = conn.get_execution_options().get("schema_translate_map") or {}
        schema = translate.get(job.table.schema, job.table.schema)
        keep = [n for n in sql.auto_update_columns(conn, schema, job.table.name) if n not in types]
        # A bare table clause has no Python-side defaults, so no `onupdate` fires.
        self.lite = table(
            job.table.name,
            *(column(name, type_) for name, type_ in types.items()),
            *(column(name) for name in keep),
            schema=schema,
        )
        self.keep = keep
        self.statement = self._statement()
        self.bulk = self._bulk_statement(conn.dialect)
        # Where the bulk statement returns the keys it wrote, it says on its own which rows
        # it wrote: it needs no transaction around it to read back the others.
        self.returning = self.bulk is not None and conn.dialect.update_returning_multifrom
        if self.returning:
            self.bulk = self.bulk.returning(*(self.lite.c[n] for n in self.pk_names))

    def _statement(self) -> Any:
        c = self.lite.c
        where = [c[n] == bindparam(f"k{i}", type_=c[n].type) for i, n in enumerate(self.pk_names)]
        where += [
            self.sql.same(c[n], bindparam(f"o{i}", type_=c[n].type))
            for i, n in enumerate(self.read_names)
        ]
        values: dict[Any, Any] = {
            c[n]: bindparam(f"n{i}", type_=c[n].type) for i, n in enumerate(self.write_names)
        }
        # MySQL leaves an ON UPDATE CURRENT_TIMESTAMP column alone when it is set to itself.
        values.update({c[n]: c[n] for n in self.keep})
        return update(self.lite).where(*where).values(values)

    def _bulk_statement(self, dialect: Dialect) -> Any:
        # The whole batch in one statement with one JSON parameter, much cheaper than a
        # statement per row (a round trip each, on drivers without pipelining).
        c = self.lite.c
        names = [*self.pk_names, *self.read_names, *self.write_names]
        rows = self.sql.json_rows(dialect, [c[n].type for n in names], keys=len(self.pk_names))
        if rows is None:
            return None
        keys, rest = rows[: len(self.pk_names)], rows[len(self.pk_names) :]
        old, new = rest[: len(self.read_names)], rest[len(self.read_names) :]
        where = [c[n] == k for n, k in zip(self.pk_names, keys, strict=True)]
        where += [self.sql.same(c[n], o) for n, o in zip(self.read_names, old, strict=True)]
        values: dict[Any, Any] = {c[n]: v for n, v in zip(self.write_names, new, strict=True)}
        values.update({c[n]: c[n] for n in self.keep})
        return update(self.lite).where(*where).values(values)

    def write(self, conn: Connection, items: list[Item]) -> set[tuple[Any, ...]]:
        """Write ``(pk, old, new)`` items; return the keys of rows that changed meanwhile."""
        if self.side_values:
            width = len(self.write_names)
            items = [(k, o, n[:width]) for k, o, n in items]
        if self.bulk is not None:
            # One statement where the database takes any length (PostgreSQL, whose batch
            # is then atomic without a transaction); several in the batch's transaction
            # where it limits a statement's length (MySQL/MariaDB).
            wrote: set[tuple[Any, ...]] = set()
            count = 0
            for doc in self.sql.json_documents([[*k, *o, *n] for k, o, n in items]):
                result = conn.execute(self.bulk, {"doc": doc})
                if self.returning:
                    wrote.update(tuple(row) for row in result)
                else:
                    count += result.rowcount
            if self.returning:
                return {k for k, _, _ in items if k not in wrote}
            if count == len(items):
                return set()
            return self._not_written(conn, items)
        params = [
            {
                **{f"k{i}": v for i, v in enumerate(k)},
                **{f"o{i}": v for i, v in enumerate(o)},
                **{f"n{i}": v for i, v in enumerate(n)},
            }
            for k, o, n in items
        ]
        result = conn.execute(self.statement, params)
        counted = conn.dialect.supports_sane_multi_rowcount or len(params) == 1
        if counted and result.rowcount == len(items):
            return set()
        return self._not_written(conn, items)

    def _not_written(self, conn: Connection, items: list[Item]) -> set[tuple[Any, ...]]:
        # Some rows were not written, or the driver cannot count them: read back what is there
        # now, in the same transaction. A row was written by this statement if it holds the
        # new values and still holds what was read in the other columns read (a deterministic
        # new value, such as a blind index, may also have been written by someone else).
        # Under InnoDB's REPEATABLE READ the read locks, to read what is committed now rather
        # than a snapshot an earlier read of the transaction took; the UPDATE holds locks on
        # the rows it scanned already, so it waits for no one. Elsewhere each statement reads
        # what is committed when it starts, and a plain read waits for no lock.
        pk = [self.lite.c[n] for n in self.pk_names]
        written = [self.lite.c[n] for n in self.write_names]
        only_read = [(i, n) for i, n in enumerate(self.read_names) if n not in self.write_names]
        checked = [self.lite.c[n] for _, n in only_read]
        keys = [k for k, _, _ in items]
        match = keys_in(pk, keys)
        query = select(*pk, *written, *checked).where(match)
        if self.sql.mysql and conn.get_isolation_level() in _SNAPSHOT_LEVELS:
            query = query.with_for_update(read=True)
        now = {tuple(row[: len(pk)]): tuple(row[len(pk) :]) for row in conn.execute(query)}
        return {k for k, old, new in items if now.get(k) != (*new, *(old[i] for i, _ in only_read))}


class _Walk:
    """One process's pass over a range of primary keys of a job.

    On a database server, a writer thread commits batch N while this thread transforms batch
    N+1 and a reader thread reads batch N+2 (unthrottled runs): the database's work overlaps
    with the crypto instead of adding to it. SQLite (one writer at a time) and dry runs go one
    batch after the other, reading and writing each batch in one transaction.
    """

    def __init__(
        self,
        engine: Engine,
        job: BatchJob,
        options: _Options,
        progress: _RangeProgress | _Relay,
        before_write: BeforeWrite | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        transform: _TransformProcess | None = None,
    ):
        self.engine = engine
        self.transform = transform  # where pipelined batches are transformed, if given
        self.job = job
        self.options = options
        self.progress = progress
        self.before_write = before_write
        self.should_stop = should_stop
        self.throttle = options.throttle
        self.waited = 0.0  # seconds the throttle held this walk back, not yet reported
        self.completed = True
        self.conflicts = 0
        # Rows of the batch being written that a unique constraint refuses, and why: the
        # batch is written without them.
        self.refused: dict[tuple[Any, ...], Failure] = {}
        self.pk = _primary_key(job)
        self.pk_names = [c.name for c in self.pk]
        self.limits = [getattr(c.type, "length", None) for c in job.write]
        self.has_limits = any(limit is not None for limit in self.limits)
        self.selected = [*self.pk, *(stored_text(c) for c in job.read)]
        self.base: list[ColumnElement[bool]] = []

    def run(self, keys: KeyRange) -> bool:
        """Visit every matching row of ``keys`` after its start; False if stopped early."""
        low, high = keys.start, keys.high
        try:
            with contextlib.ExitStack() as stack:
                conn = stack.enter_context(self.engine.connect())
                sql = DialectSql.connected(conn)
                writer = None
                if self.job.write and not self.options.dry_run:
                    writer = _Writer(conn, sql, self.job, self.pk)
                conn.commit()
                self.base = _filters(sql, self.job, self.pk, self.options)
                if high is not None:
                    self.base.append(sql.not_after(self.pk, high))
                if writer is None and self.job.side is not None and _snapshots(sql):
                    # Rows and their side rows compared in one snapshot: under READ COMMITTED
                    # a write committed between the two reads would look like a mismatch.
                    # It writes nothing, so no write of the application waits for it.
                    snapshot = conn.execution_options(isolation_level="REPEATABLE READ")
                    self._one_by_one(snapshot, sql, writer, low)
                elif writer is None or sql.name == "sqlite":
                    self._one_by_one(self._transactional(conn, writer), sql, writer, low)
                else:
                    write_conn = stack.enter_context(self.engine.connect())
                    write_conn = self._transactional(write_conn, writer)
                    self._pipelined(conn, write_conn, sql, writer, low, self.transform)
        except SQLAlchemyError as exc:
            raise _database_error(self.job.label, exc) from exc
        self.progress.ended(self.completed, self._take_waited())
        return self.completed

    def _transactional(self, conn: Connection, writer: _Writer | None) -> Connection:
        """``conn``, in real transactions where the job writes, even on an AUTOCOMMIT
        engine: a row and its side rows are committed together or not at all, and the rows
        a batch did not write are read back before its row locks are released."""
        if self.job.side is None and writer is None:
            return conn
        # Set whatever the engine says: its AUTOCOMMIT is not what get_isolation_level() reads.
        return conn.execution_options(isolation_level=conn.default_isolation_level)

    def _hold(self) -> None:
        """Wait as long as the throttle says before the next batch."""
        if self.throttle is not None:
            self.waited += self.throttle.wait(
                self.should_stop, self.progress.paused, self.progress.resumed
            )

    def _charge(self, batch: _Batch) -> None:
        # Rows written count (in a dry run: would be); a job that writes nothing is paced by
        # the rows it reads.
        if self.throttle is not None:
            self.throttle.charge(len(batch.items) if self.job.write else len(batch.keys))

    def _charge_side(self, batch: _Batch) -> None:
        # Side rows are known once written: a pipelined walk charges them after the next
        # batch has started, so they hold back the one after it. (A dry run writes none.)
        if self.throttle is not None and batch.side_rows:
            self.throttle.charge(batch.side_rows)

    def _take_waited(self) -> float:
        waited, self.waited = self.waited, 0.0
        return waited

    def _page(self, sql: DialectSql, last: tuple[Any, ...] | None) -> Any:
        where = [*self.base, sql.after(self.pk, last)] if last is not None else self.base
        stmt = select(*self.selected).where(*where).order_by(*self.pk)
        return stmt.limit(self.options.batch_size)

    def _one_by_one(
        self,
        conn: Connection,
        sql: DialectSql,
        writer: _Writer | None,
        last: tuple[Any, ...] | None,
    ) -> None:
        while not self.should_stop():
            self._hold()
            if self.should_stop():
                break
            stmt = self._page(sql, last)
            batch, missed = self._transaction(conn, self._read_and_write, writer, stmt, True)
            self._charge(batch)
            if not batch.keys:
                return
            last = batch.keys[-1]
            self._written(batch, missed)
            self._retry(conn, writer, batch, missed)
            self._charge_side(batch)
            self._apply(batch)
            if self.options.fail_fast and batch.failures:
                self.completed = False
                return
        self.completed = False

    def _pipelined(
        self,
        conn: Connection,
        write_conn: Connection,
        sql: DialectSql,
        writer: _Writer,
        last: tuple[Any, ...] | None,
        transform: _TransformProcess | None,
    ) -> None:
        # A page is one SELECT; it needs no transaction around it, since writes compare and
        # swap. Without BEGIN and COMMIT it is one round trip instead of three.
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if writer.returning and self.job.side is None:
            # A batch is one UPDATE statement, atomic on its own, that returns the keys it
            # wrote: without BEGIN and COMMIT it is one round trip, and each round trip costs
            # the writer a wait for the GIL, which the crypto holds. (Without RETURNING, rows
            # it did not write are read back in its transaction, before anyone else can
            # change the rows it did write: see _transactional.)
            write_conn = write_conn.execution_options(isolation_level="AUTOCOMMIT")

        def write(batch: _Batch) -> _Batch:
            missed = self._transaction(write_conn, self._write, writer, batch, True)
            self._written(batch, missed)
            self._retry(write_conn, writer, batch, missed)
            return batch

        def fetch(after: tuple[Any, ...] | None) -> Sequence[Sequence[Any]]:
            return self._transaction(conn, self._fetch, self._page(sql, after))

        with (
            ThreadPoolExecutor(1, thread_name_prefix="fieldcrypt-writer") as executor,
            ThreadPoolExecutor(1, thread_name_prefix="fieldcrypt-reader") as reader,
        ):
            pending: Future[_Batch] | None = None
            try:
                # Closed on every way out: a batch the transform process still has is forgotten.
                with contextlib.closing(
                    self._batches(self._pages(reader, fetch, last), transform)
                ) as batches:
                    for batch in batches:
                        self._charge(batch)
                        if pending is not None:
                            # Taken out first: a listener that raises must not see it twice.
                            done, pending = pending, None
                            written = done.result()
                            self._charge_side(written)
                            self._apply(written)
                            if self.options.fail_fast and written.failures:
                                # A row refused at the write; the batch just read is not written.
                                self.completed = False
                                return
                        if not batch.keys:
                            return
                        pending = executor.submit(write, batch)
                        if self.options.fail_fast and batch.failures:
                            self.completed = False
                            return
                    self.completed = False
            finally:
                if pending is not None:
                    # The batch in flight is committed (or fails) before the run reports.
                    written = pending.result()
                    self._charge_side(written)
                    self._apply(written)

    def _pages(
        self,
        reader: ThreadPoolExecutor,
        fetch: Callable[[tuple[Any, ...] | None], Sequence[Sequence[Any]]],
        last: tuple[Any, ...] | None,
    ) -> Iterator[Sequence[Sequence[Any]]]:
        """Each page of rows in turn, up to an empty one, while the walk is not stopped."""
        npk = len(self.pk)
        ahead: Future[Sequence[Sequence[Any]]] | None = None
        while not self.should_stop():
            if ahead is None:
                self._hold()
                if self.should_stop():
                    return
                rows = fetch(last)
            else:
                reading, ahead = ahead, None
                rows = reading.result()
            if not rows:
                yield rows
                return
            last = tuple(rows[-1][:npk])
            if self.throttle is None:
                # The next page is read while this one is transformed: the database and the
                # network overlap with the crypto too. (A throttle decides when each page is
                # read, after the batch before it is counted.)
                ahead = reader.submit(fetch, last)
            yield rows

    def _batches(
        self, pages: Iterator[Sequence[Sequence[Any]]], transform: _TransformProcess | None
    ) -> Generator[_Batch, None, None]:
        """The batch of each page, transformed here or in ``transform``'s process.

        The process is given the next page before this one's result is awaited, so that it
        always has a batch to work on (unthrottled runs): waiting for the interpreter lock
        here must not leave it idle.
        """
        if transform is None:
            for page in pages:
                yield self._batch(page, True)
            return
        try:
            rows = next(pages, None)
            if rows is None:
                return
            transform.send(rows)
            while True:
                following: Sequence[Sequence[Any]] | None = None
                if rows and self.throttle is None:
                    following = next(pages, None)
                    if following is not None:
                        transform.send(following)
                yield self._batch(rows, True, transform.receive(self._transform))
                if rows and self.throttle is not None:
                    # The next page is read once this batch is counted.
                    following = next(pages, None)
                    if following is not None:
                        transform.send(following)
                if following is None:
                    return
                rows = following
        finally:
            # A walk that stops early leaves a batch there, which the next walk must not get.
            transform.abandon()

    def _transaction(self, conn: Connection, work: Callable[..., _T], *args: Any) -> _T:
        """Run ``work(conn, *args)`` in one transaction; retried after a deadlock.

        After a unique-constraint conflict the job names the rows that collide, and the work
        is done again without them (or, when none collides any more, as it was).
        """
        while True:
            try:
                return in_transaction(conn, work, *args)
            except _Conflict as conflict:
                self._explain(conflict)

    def _explain(self, conflict: _Conflict) -> None:
        """Note the rows of a refused batch that collide; raise if the job cannot tell them."""
        explain = self.job.explain_conflict
        cause = conflict.__cause__
        if explain is None and isinstance(cause, SQLAlchemyError):
            raise _database_error(self.job.label, cause) from cause
        if explain is None:
            raise RotationError(f"{self.job.label}: a unique constraint refused a batch")
        batch = {key for key, _, _ in conflict.items}
        found = [f for f in explain(self.engine, conflict.items) if f.key in batch]
        if found:
            # Each explanation takes rows out of the batch, so this ends within a batch.
            self.refused.update((f.key, f) for f in found)
            return
        self.conflicts += 1
        if self.conflicts > _CONFLICT_RETRIES:
            raise RotationError(
                f"{self.job.label}: new values kept colliding under a unique constraint while "
                "the application wrote; run again (committed batches are kept)"
            ) from cause

    def _read(self, conn: Connection, stmt: Any, scanned: bool) -> _Batch:
        return self._batch(self._fetch(conn, stmt), scanned)

    def _fetch(self, conn: Connection, stmt: Any) -> Sequence[Sequence[Any]]:
        rows = conn.execute(stmt).all()
        side = self.job.side
        if side is None or not rows:
            return rows
        npk = len(self.pk)
        held = side.read(conn, [tuple(r[:npk]) for r in rows])
        return [(*r, held.get(tuple(r[:npk]))) for r in rows]

    def _batch(
        self, rows: Sequence[Sequence[Any]], scanned: bool, done: _Transformed | None = None
    ) -> _Batch:
        """Transform rows read into a batch to write (unless ``done`` is their transform)."""
        changes, counts, failures, taken = self._transform(rows) if done is None else done
        rows = rows[:taken]
        if scanned:
            counts["scanned"] = taken
        npk = len(self.pk)
        keys = [tuple(r[:npk]) for r in rows]
        end = npk + len(self.job.read)  # without a side state: the writer compares ``read``
        items = [(keys[p], tuple(rows[p][npk:end]), new) for p, new in changes]
        return _Batch(keys, items, counts, failures)

    def _write(
        self, conn: Connection, writer: _Writer | None, batch: _Batch, hook: bool
    ) -> set[tuple[Any, ...]]:
        batch.side_rows = 0  # of this attempt: one rolled back wrote none
        if hook and self.before_write is not None:
            self.before_write(conn, [k for k, _, _ in batch.items])
        if writer is None:
            return set()
        if self.refused:
            self._leave_out_refused(batch)
        if not batch.items:
            return set()
        try:
            missed = writer.write(conn, batch.items)
        except IntegrityError as exc:
            raise _Conflict(batch.items) from exc
        if self.job.side is not None:
            # The owner rows just written are locked until the commit, so an application
            # writing one of them waits, and replaces its side rows after these.
            written = [i for i in batch.items if i[0] not in missed]
            side = self.job.side.write(conn, writer.sql, written)
            batch.side_rows = side or 0
        return missed

    def _read_and_write(
        self, conn: Connection, writer: _Writer | None, stmt: Any, first: bool
    ) -> tuple[_Batch, set[tuple[Any, ...]]]:
        batch = self._read(conn, stmt, first)
        return batch, self._write(conn, writer, batch, first)

    def _leave_out_refused(self, batch: _Batch) -> None:
        """Take the rows a unique constraint refused out of ``batch``: they are failures."""
        kept = []
        for item in batch.items:
            failure = self.refused.get(item[0])
            if failure is None:
                kept.append(item)
            else:
                batch.failures.append(failure)
        batch.counts["failed"] = batch.counts.get("failed", 0) + len(batch.items) - len(kept)
        batch.items = kept

    @staticmethod
    def _written(batch: _Batch, missed: set[tuple[Any, ...]]) -> None:
        # Counted once committed, so a batch retried after a deadlock is not counted twice.
        batch.counts["written"] = batch.counts.get("written", 0) + len(batch.items) - len(missed)
        batch.counts["concurrent"] = batch.counts.get("concurrent", 0) + len(missed)

    def _retry(
        self,
        conn: Connection,
        writer: _Writer | None,
        batch: _Batch,
        missed: set[tuple[Any, ...]],
    ) -> None:
        """Read rows that changed under the write again; rotate those that still need it."""
        for _ in range(_CAS_RETRIES if self.options.reread_changed else 0):
            if not missed:
                return
            keys = sorted(missed)
            match = keys_in(self.pk, keys)
            stmt = select(*self.selected).where(*self.base, match)
            retried, missed = self._transaction(conn, self._read_and_write, writer, stmt, False)
            self._written(retried, missed)
            batch.side_rows += retried.side_rows
            for name, value in retried.counts.items():
                batch.counts[name] = batch.counts.get(name, 0) + value
            batch.failures.extend(retried.failures)
        batch.left = len(missed)
        batch.unsettled = missed

    def _apply(self, batch: _Batch) -> None:
        # The batch is committed: conflicts are counted, and refused rows kept, per batch.
        self.conflicts = 0
        self.refused = {}
        for failure in batch.failures:
            self.progress.failed(failure)
        if batch.left and self.options.reread_changed:
            logger.warning(
                "%s: %s kept changing during the run; rerun to pick them up",
                self.job.label,
                plural(batch.left, "row"),
            )
        not_handled = {f.key for f in batch.failures}
        if self.options.reread_changed:
            not_handled |= batch.unsettled
        settled = None
        for key in batch.keys:
            if key in not_handled:
                break
            settled = key
        last = batch.keys[-1] if batch.keys else None
        done = _Done(last, settled, not not_handled, self._take_waited())
        self.progress.committed(len(batch.keys), batch.counts, done)

    def _transform(self, rows: Sequence[Sequence[Any]]) -> _Transformed:
        """Transform rows; with fail_fast, only those up to the first failure."""
        npk = len(self.pk)
        fail_fast = self.options.fail_fast
        prepare = self.job.batch_transform
        transform = self.job.transform if prepare is None else prepare()
        has_limits = self.has_limits
        changes: list[tuple[int, tuple[Any, ...]]] = []
        failures: list[Failure] = []
        unchanged = skipped = 0
        taken = len(rows)
        for position, row in enumerate(rows):
            if fail_fast and failures:
                taken = position
                break
            key, old = tuple(row[:npk]), tuple(row[npk:])
            try:
                new = transform(key, old)
            except FieldCryptError as exc:
                failures.append(self._failure(key, _reason(exc)))
                continue
            # The common case first: a row to write.
            if isinstance(new, tuple):
                too_long = self._too_long(new) if has_limits else None
                if too_long is not None:
                    failures.append(self._failure(key, too_long))
                else:
                    changes.append((position, new))
            elif new is None:
                unchanged += 1
            elif isinstance(new, Skip):
                skipped += 1
        counts = {"unchanged": unchanged, "skipped": skipped, "failed": len(failures)}
        return changes, counts, failures, taken

    def _too_long(self, new: tuple[Any, ...]) -> str | None:
        written = new[: len(self.job.write)]  # a side's value after them is not a column's
        for col, limit, value in zip(self.job.write, self.limits, written, strict=True):
            if limit is not None and isinstance(value, str) and len(value) > limit:
                return (
                    f"the new value of {col.name} ({plural(len(value), 'character')}) does not "
                    f"fit the column's length {limit}; widen the column first"
                )
        return None

    def _failure(self, key: tuple[Any, ...], reason: str) -> Failure:
        return Failure(self.job.label, tuple(zip(self.pk_names, key, strict=True)), reason)


def _snapshots(sql: DialectSql) -> bool:
    """Whether a REPEATABLE READ transaction reads every statement from one snapshot there."""
    return sql.name == "postgresql" or sql.mysql


def _primary_key(job: BatchJob) -> tuple[Column[Any], ...]:
    pk = tuple(job.table.primary_key.columns)
    if not pk:
        raise RotationError(
            f"{job.label}: table {job.table.fullname} has no primary key; batches are paged "
            "by primary key, so add one (or declare it on the model) first"
        )
    return pk


def _filters(
    sql: DialectSql, job: BatchJob, pk: Sequence[Column[Any]], options: _Options
) -> list[ColumnElement[bool]]:
    where = [job.where] if job.where is not None else []
    if options.shard is not None:
        where.append(sql.shard(pk, *options.shard))
    return where


def _within(sql: DialectSql, pk: Sequence[Column[Any]], keys: KeyRange) -> ColumnElement[bool]:
    terms = []
    if keys.start is not None:
        terms.append(sql.after(pk, keys.start))
    if keys.high is not None:
        terms.append(sql.not_after(pk, keys.high))
    return and_(*terms) if terms else literal_column("1") == 1


def _count_rows(engine: Engine, job: BatchJob, options: _Options, ranges: list[KeyRange]) -> int:
    """Rows that match the job's filter within ``ranges``."""
    if not ranges:
        return 0
    pk = _primary_key(job)
    with engine.connect() as conn:
        sql = DialectSql(conn.dialect.name)
        where = [*_filters(sql, job, pk, options), or_(*(_within(sql, pk, r) for r in ranges))]
        stmt = select(func.count()).select_from(job.table).where(*where)
        return int(conn.execute(stmt).scalar_one())


def _split(
    engine: Engine, job: BatchJob, options: _Options, parts: int
) -> tuple[int, list[KeyRange]]:
    """The matching rows and ``parts`` primary-key ranges of about as many rows each."""
    pk = _primary_key(job)
    with engine.connect() as conn:
        where = _filters(DialectSql(conn.dialect.name), job, pk, options)
        total = int(
            conn.execute(select(func.count()).select_from(job.table).where(*where)).scalar_one()
        )
        bounds: list[tuple[Any, ...]] = []
        for i in range(1, parts):
            offset = total * i // parts
            if offset == 0:
                continue
            stmt = select(*pk).where(*where).order_by(*pk).offset(offset - 1).limit(1)
            row = conn.execute(stmt).first()
            if row is not None and (not bounds or tuple(row) != bounds[-1]):
                bounds.append(tuple(row))
    edges: list[tuple[Any, ...] | None] = [None, *bounds, None]
    return total, [KeyRange(low, high) for low, high in itertools.pairwise(edges)]


# -- worker processes ----------------------------------------------------------------------


def _run_workers(
    engine: Engine,
    factory: JobFactory,
    job: BatchJob,
    options: _Options,
    ranges: list[tuple[int, KeyRange]],
    progress: _JobProgress,
) -> None:
    # spawn, not fork: a forked child would share the parent's pooled connections and threads.
    context = multiprocessing.get_context("spawn")
    events: Any = context.Queue()
    stop = context.Event()
    settings = _child_settings(engine)
    processes = {
        index: context.Process(
            target=_worker,
            args=(index, settings, factory, keys, options, events, stop, os.getpid()),
            name=f"fieldcrypt-worker-{index}",
            daemon=True,
        )
        for index, keys in ranges
    }
    for process in processes.values():
        process.start()
    running = set(processes)
    error: BaseException | None = None
    try:
        while running:
            try:
                kind, index, payload = events.get(timeout=0.5)
            except queue_module.Empty:
                for index in list(running):
                    code = processes[index].exitcode
                    if code is not None:
                        running.discard(index)
                        error = error or RotationError(
                            f"{job.label}: worker {index} exited with code {code}; rerun to resume"
                        )
                        stop.set()
                continue
            if kind == "batch":
                progress.committed(index, *payload)
            elif kind == "failure":
                progress.failed(payload)
                if options.fail_fast:
                    stop.set()
            elif kind == "paused":
                progress.paused(index, payload)
            elif kind == "resumed":
                progress.resumed(index, payload)
            elif kind == "done":
                running.discard(index)
                progress.ended(index, *payload)
            else:
                running.discard(index)
                error = error or payload
                stop.set()
    except BaseException:
        stop.set()
        raise
    finally:
        for process in processes.values():
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    if error is not None:
        raise error


def _child_settings(engine: Engine) -> _ChildSettings:
    url = engine.url.render_as_string(hide_password=False)
    return (url, dict(engine.get_execution_options()), _default_keys(), _default_unbound())


def _child_job(settings: _ChildSettings, factory: JobFactory) -> tuple[Engine, BatchJob]:
    """In a child process: the engine and the job, with the parent's default keys."""
    url, execution_options, keyrings, allow_unbound = settings
    for purpose, keyring in keyrings.items():
        configure(keyring=keyring, purpose=purpose)
    set_unbound_allowed(allow_unbound)
    engine = create_engine(url, hide_parameters=True).execution_options(**execution_options)
    return engine, factory(engine)


def _default_keys() -> _DefaultKeys:
    """The process default keys that worker processes start with, as far as they load."""
    found: _DefaultKeys = {}
    for purpose in PURPOSES:
        try:
            found[purpose] = current_keyring(purpose)
        except FieldCryptError:
            continue  # the worker reports it where the keys are needed
    return found


def _default_unbound() -> bool | None:
    """Whether the process reads unbound tokens, for worker processes to decide alike."""
    try:
        return unbound_allowed()
    except FieldCryptError:
        return None  # the worker reads the settings itself, and reports what is wrong


class _Relay:
    """A worker's progress: sends each batch's counts and each failure to the parent."""

    def __init__(self, index: int, events: Any):
        self.index = index
        self.events = events

    def committed(self, rows: int, counts: dict[str, int], done: _Done) -> None:
        self.events.put(("batch", self.index, (rows, counts, done)))

    def failed(self, failure: Failure) -> None:
        self.events.put(("failure", self.index, failure))

    def paused(self, reason: str) -> None:
        self.events.put(("paused", self.index, reason))

    def resumed(self, seconds: float) -> None:
        self.events.put(("resumed", self.index, seconds))

    def ended(self, completed: bool, throttled: float) -> None:
        self.events.put(("done", self.index, (completed, throttled)))


def _worker(
    index: int,
    settings: _ChildSettings,
    factory: JobFactory,
    keys: KeyRange,
    options: _Options,
    events: Any,
    stop: Any,
    parent: int,
) -> None:
    engine = None
    try:
        engine, job = _child_job(settings, factory)

        def should_stop() -> bool:
            # An orphan (its parent was killed) stops at the next batch.
            return bool(stop.is_set()) or os.getppid() != parent

        _Walk(engine, job, options, _Relay(index, events), None, should_stop).run(keys)
    except BaseException as exc:
        events.put(("error", index, _portable(exc)))
    finally:
        if engine is not None:
            engine.dispose()


def _portable(exc: BaseException, who: str = "worker") -> BaseException:
    """An exception the parent can unpickle and show without leaking data."""
    if isinstance(exc, FieldCryptError):
        return exc
    return RotationError(f"{who} failed: {driver_message(exc)}")


# -- the transform process -------------------------------------------------------------------

#: Started with ``-P -c`` (no current directory on the path): the standard library only, and
#: pipes no further program inherits, until the module path has arrived; so this package is
#: imported from where the caller's process imports it.
_BOOTSTRAP: Final = (
    "import os, sys\n"
    "from multiprocessing.connection import Connection\n"
    "os.set_inheritable({read}, False)\n"
    "os.set_inheritable({write}, False)\n"
    "incoming = Connection({read}, writable=False)\n"
    "outgoing = Connection({write}, readable=False)\n"
    "try:\n"
    "    sys.path[:] = incoming.recv()\n"
    "    from sa_fieldcrypt.jobs.engine import serve_transform\n"
    "except BaseException as exc:\n"
    "    outgoing.send(('unusable', f'could not start ({{type(exc).__name__}})'))\n"
    "    raise SystemExit(1) from None\n"
    "serve_transform(incoming, outgoing)\n"
)
#: Seconds the process has to build its job (imports, reflection) before the run goes on
#: without it: a ``sys.executable`` that is no Python would otherwise never answer.
_READY_SECONDS: Final = 120.0
#: Seconds each way of stopping the process (end of input, SIGTERM, SIGKILL) is given.
_STOP_SECONDS: Final = 5.0
_MAIN_MODULES: Final = ("__main__", "__mp_main__")


def _main_module_reference(data: bytes) -> str | None:
    """What of the main module a pickle refers to (another interpreter has another one)."""
    strings = [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    for position, text_ in enumerate(strings):
        if text_ in _MAIN_MODULES:  # a class or function: its module, then its name
            return strings[position + 1] if position + 1 < len(strings) else text_
        module, sep, name = text_.partition(":")
        if sep and module in _MAIN_MODULES:  # models found by name: "__main__:Base"
            return name
    return None


def _transform_unavailable() -> str | None:
    """Why this interpreter cannot start a transform process, or None when it can."""
    if os.name != "posix":
        return "it needs a POSIX system (it inherits its pipes)"
    if getattr(sys, "frozen", False) or not sys.executable:
        return "it needs a Python interpreter to start (sys.executable), not a frozen program"
    return None


def _fingerprint(job: BatchJob) -> tuple[Any, ...]:
    """What two builds of one job agree on: its label, table and columns, with their types."""
    return (
        job.label,
        job.table.fullname,
        *((c.name, repr(c.type)) for c in (*job.read, *job.write)),
    )


class _Unusable(Exception):
    """The transform process cannot take this batch on: the run may transform it here."""

    def __init__(self, reason: str, error: BaseException | None = None):
        super().__init__(reason)
        self.reason = reason
        self.error = error  # what to raise when the process was asked for


class _TransformProcess:
    """The transform of a run's walks, in a process of its own.

    The crypto of a batch then has a core to itself while the walk's process reads the next
    batch and writes the one before: in one process they take turns, since the drivers' and
    SQLAlchemy's Python work holds the interpreter lock the crypto needs.

    The process is a fresh interpreter that imports this module and nothing of the caller's
    script (unlike a multiprocessing ``spawn``, which runs the main module again: a script
    without an ``if __name__ == "__main__":`` guard would run its own top level twice). The
    job factory and the keys reach it pickled, over a pipe. It starts with the first batch
    sent, and serves every walk of one run in turn.

    Unless ``required``, whatever keeps it from working (a factory or a model of the main
    module, a batch that does not pickle, a job it cannot build or builds otherwise, no
    POSIX) makes the run transform here instead, from the batch it could not take on, and
    logs why at INFO.

    Raises:
        ConfigurationError: ``required``, and the process cannot be used at all.
    """

    def __init__(
        self,
        engine: Engine,
        factory: JobFactory,
        job: BatchJob,
        options: _Options,
        *,
        required: bool,
    ):
        self.label = job.label
        self.fingerprint = _fingerprint(job)
        self.required = required
        self.local = False  # transforming in this process after all
        self.sent: collections.deque[Sequence[Sequence[Any]]] = collections.deque()
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.send_error: BaseException | None = None
        # The throttle stays here: it holds connections, and paces only the reads.
        self.setup = (_child_settings(engine), factory, dataclasses.replace(options, throttle=None))
        reason = _transform_unavailable()
        if reason is None:
            try:
                # Pickled once now to know it can be, and again at each start: the keys it
                # holds are not kept in memory as bytes.
                main = _main_module_reference(ForkingPickler.dumps(self.setup).tobytes())
            except Exception as exc:  # pickle raises many kinds
                reason = f"the job factory cannot be pickled ({type(exc).__name__})"
            else:
                if main is not None:
                    reason = (
                        f"the job refers to {main} of the main module, which another "
                        "interpreter cannot import; define it in a module"
                    )
        if reason is not None:
            if required:
                raise ConfigurationError(f"{self.label}: cannot use a transform process: {reason}")
            self._go_local(f"cannot be used: {reason}")

    def send(self, rows: Sequence[Sequence[Any]]) -> None:
        """Give the process a batch's rows, to transform after those it has."""
        self.sent.append(rows)
        if self.local:
            return
        if self.process is None:
            try:
                self._start()
            except OSError as exc:
                self._unusable(_Unusable(f"could not start ({type(exc).__name__}: {exc.strerror})"))
                return
        self.sender.submit(self._send, rows)

    def receive(self, here: Callable[[Sequence[Sequence[Any]]], _Transformed]) -> _Transformed:
        """The transform of the oldest batch sent (by ``here`` after a fallback).

        Raises:
            RotationError: the process died, or raised what is not ours.
            FieldCryptError: what the transform raised.
        """
        rows = self.sent.popleft()
        if not self.local:
            try:
                if not self.ready:
                    self._receive_ready()
                result: _Transformed = self._receive()
                return result
            except _Unusable as unusable:
                self._unusable(unusable)
        return here(rows)

    def abandon(self) -> None:
        """Forget batches sent and not received: a walk that stopped early leaves them."""
        if self.sent:
            self._stop()
            self.sent.clear()

    def close(self) -> None:
        """Stop the process, with any batch it still has: it writes nothing, keeps nothing."""
        self._stop()
        self.sent.clear()

    def _start(self) -> None:
        to_child, to_child_w = os.pipe()
        from_child_r, from_parent = os.pipe()
        try:
            command = _BOOTSTRAP.format(read=to_child, write=from_parent)
            # This interpreter running this module's own code: no input of anyone's.
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-P", "-c", command],
                pass_fds=(to_child, from_parent),
                close_fds=True,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            raise
        finally:
            os.close(to_child)
            os.close(from_parent)
        self.conn_out = multiprocessing.connection.Connection(to_child_w, readable=False)
        self.conn_in = multiprocessing.connection.Connection(from_child_r, writable=False)
        self.ready = False
        self.send_error = None
        # Batches are sent from a thread of their own: a send blocks while the pipe is full,
        # and the process cannot read while it sends a result that is waiting to be received.
        self.sender = ThreadPoolExecutor(1, thread_name_prefix="fieldcrypt-transform-send")
        self.sender.submit(self._send, sys.path)
        self.sender.submit(self._send, self.setup)

    def _send(self, message: Any) -> None:
        if isinstance(message, (list, tuple)) and message and isinstance(message[0], Row):
            # Plain tuples: a Row would pickle its result's metadata with it.
            message = [tuple(r) for r in message]
        try:
            data = ForkingPickler.dumps(message)
        except Exception as exc:  # pickle raises many kinds
            # Closing the pipe ends the process after the batches before this one.
            self.send_error = exc
            self.conn_out.close()
            return
        with contextlib.suppress(OSError):  # it ended: receive() says why
            self.conn_out.send_bytes(data)

    def _receive_ready(self) -> None:
        """Wait for the process to have built its job: the same job as this process's."""
        if not self.conn_in.poll(_READY_SECONDS):
            raise _Unusable(f"did not start within {_READY_SECONDS:.0f} s")
        fingerprint = self._receive()
        if fingerprint != self.fingerprint:
            raise _Unusable(
                "built another job than this process (its engine connects elsewhere, or the "
                "factory finds other columns there)"
            )
        self.ready = True

    def _receive(self) -> Any:
        try:
            kind, payload = self.conn_in.recv()
        except (EOFError, OSError):
            code = None if self.process is None else self.process.wait()
            if self.send_error is not None:
                raise _Unusable(
                    f"could not be sent a batch ({type(self.send_error).__name__})"
                ) from None
            error = RotationError(
                f"{self.label}: the transform process exited with code {code}; rerun to resume"
            )
            if self.ready:
                raise error from None
            raise _Unusable(f"exited with code {code} before it was ready", error) from None
        if kind == "unusable":
            raise _Unusable(payload)
        if kind == "error":
            if self.ready:
                raise payload
            raise _Unusable(f"could not build the job ({payload})", payload)
        return payload

    def _unusable(self, unusable: _Unusable) -> None:
        """Go on without the process, unless it was asked for."""
        if self.required:
            self._stop()
            raise unusable.error or RotationError(
                f"{self.label}: the transform process {unusable.reason}; run with "
                "transform_process=False (--no-transform-process) to transform in this process"
            )
        self._go_local(unusable.reason)

    def _go_local(self, reason: str) -> None:
        logger.info(
            "%s: the transform process %s; transforming in this process", self.label, reason
        )
        self.local = True
        self._stop()

    def _stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        # With nothing outstanding, the end of its input ends it, and it closes its own
        # connections; else (or if that does not do) a signal, then SIGKILL: one that ignores
        # SIGTERM must not keep the run from ending.
        stops = [process.terminate, process.kill]
        if not self.sent:
            self.sender.submit(self.conn_out.close)
            stops.insert(0, lambda: None)
        for stop in stops:
            stop()
            try:
                process.wait(timeout=_STOP_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
        process.wait()
        self.sender.shutdown()  # a send still waiting fails now
        self.conn_out.close()
        self.conn_in.close()


def serve_transform(
    incoming: multiprocessing.connection.Connection,
    outgoing: multiprocessing.connection.Connection,
) -> None:
    """The transform process: transform each batch the walk's process sends, in turn.

    Not for use of its own: ``run_job(..., transform_process=...)`` starts it.
    """
    engine = None
    try:
        try:
            settings, factory, options = incoming.recv()
            engine, job = _child_job(settings, factory)
            # It only transforms: the walk's own process reports the progress.
            walk = _Walk(engine, job, options, _Relay(0, None))
        except (EOFError, KeyboardInterrupt):
            return
        except BaseException as exc:
            outgoing.send(("error", _portable(exc, "the transform process")))
            return
        outgoing.send(("ready", _fingerprint(job)))
        while True:
            # The walk's process closing its end (it ended, or was killed) ends this one too.
            try:
                rows = incoming.recv()
            except (EOFError, OSError, KeyboardInterrupt):
                raise
            except Exception as exc:  # unpickling raises many kinds
                outgoing.send(("unusable", f"could not read a batch ({type(exc).__name__})"))
                return
            try:
                result = walk._transform(rows)
            except BaseException as exc:
                outgoing.send(("error", _portable(exc, "the transform process")))
                return
            try:
                data = ForkingPickler.dumps(("batch", result))
            except Exception as exc:  # pickle raises many kinds
                outgoing.send(
                    ("unusable", f"could not send a transform back ({type(exc).__name__})")
                )
                return
            outgoing.send_bytes(data)
    except (EOFError, OSError, KeyboardInterrupt):
        return
    finally:
        if engine is not None:
            engine.dispose()

"""Batch engine: rewrite columns of a table in keyset batches, safely on a live database.

:func:`run_job` runs a :class:`BatchJob`: which rows of a table to visit, which columns to
read, which to write, and a per-row function from the old values to the new ones. Key
rotation and verification (:mod:`sa_fieldcrypt.rotation`) and blind-index recomputation
(:mod:`sa_fieldcrypt.reindex`) are jobs for it; user code can write its own.

Typical usage::

    from sa_fieldcrypt.batch import BatchJob, run_job

    job = BatchJob(
        label="visits.email -> visits.email_encrypted",
        table=visits,
        read=(visits.c.email,),
        write=(visits.c.email_encrypted,),
        transform=lambda old: (codec.encrypt_plaintext(old[0]),),
        where=visits.c.email_encrypted.is_(None),
    )
    report = run_job(engine, job, batch_size=1000)

How a run works, and why it is safe with the application running:

- Rows are read in batches in primary-key order (keyset pagination, composite keys too) and
  each batch is written in one transaction, so memory stays flat whatever the table size and
  a stopped run has lost at most the batches in flight (two, on a database server, where
  one batch is written while the next is transformed).
- The job's SQL filter selects only the rows that still need work, so a rerun skips what an
  earlier run finished without reading it; ``start_after`` resumes after a known key.
- Each row is written by a Core ``UPDATE ... WHERE pk = :pk AND col = :old`` over every column
  read (compare and swap): a row the application changed between the read and the write is
  left alone, read again and, if it still needs it, written. ORM events and ``onupdate``
  columns do not fire. (Database triggers still do.)
- A row the transform cannot handle (it raises a :class:`~sa_fieldcrypt.FieldCryptError`) is
  reported by label and primary key (never its content) and the run goes on, unless
  ``fail_fast``. Any other exception from the transform, the listener or ``on_failure``
  stops the run: its batch is rolled back, batches committed before it stay.
- ``workers`` processes split the rows into primary-key ranges; ``shard`` lets several
  machines split a table without talking to each other.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import queue as queue_module
import re
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    String,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    collate,
    column,
    create_engine,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    text,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Integer, TypeEngine

from sa_fieldcrypt.config import configure, current_keyring
from sa_fieldcrypt.errors import (
    ConfigurationError,
    DecryptionError,
    FieldCryptError,
    RotationError,
)
from sa_fieldcrypt.keys import Keyring
from sa_fieldcrypt.types import EncryptedType

__all__ = [
    "MAX_KEPT_FAILURES",
    "SKIP",
    "BatchJob",
    "BeforeWrite",
    "Failure",
    "JobFactory",
    "JobReport",
    "OnFailure",
    "RunListener",
    "RunReport",
    "Transform",
    "parse_shard",
    "run_job",
]

# The engine grew inside the rotation module; its log lines keep that logger's name so that
# existing logging configuration keeps working.
logger = logging.getLogger("sa_fieldcrypt.rotation")

#: Failures kept in a :class:`JobReport`; every one is still passed to the listener.
MAX_KEPT_FAILURES: Final = 100
#: Times a row that changed under a run is read again within the run.
_CAS_RETRIES: Final = 3
#: Times a batch is retried after a deadlock or serialization failure.
_TRANSIENT_RETRIES: Final = 5


class _Skip:
    """Type of :data:`SKIP`."""

    def __repr__(self) -> str:
        return "SKIP"


#: What a transform returns for a row it leaves alone on purpose (counted as skipped).
SKIP: Final = _Skip()

Transform = Callable[[tuple[Any, ...]], "tuple[Any, ...] | _Skip | None"]


# -- SQL that differs between databases --------------------------------------------------


def _like_prefix(prefix: str) -> str:
    # '_' and '%' are wildcards and key ids may contain '_'; '/' escapes them.
    return prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


def _raw(col: ColumnElement[Any]) -> ColumnElement[Any]:
    """The stored text of a column, whatever its type would do with it."""
    if isinstance(col.type, EncryptedType):
        return type_coerce(col, Text())
    return col


def _raw_type(col: Column[Any]) -> TypeEngine[Any]:
    return Text() if isinstance(col.type, EncryptedType) else col.type


class _Sql:
    """The few SQL expressions that differ between PostgreSQL, MySQL/MariaDB and SQLite."""

    def __init__(self, dialect_name: str, binary_collation: str | None = None):
        self.name = dialect_name
        self.mysql = dialect_name in ("mysql", "mariadb")
        self.binary_collation = binary_collation

    @classmethod
    def connected(cls, conn: Connection) -> _Sql:
        """The expressions for ``conn``'s database, including its exact-match collation."""
        collation = None
        if conn.dialect.name in ("mysql", "mariadb"):
            charset = conn.execute(text("SELECT @@character_set_connection")).scalar_one()
            collation = f"{charset}_bin"
        return cls(conn.dialect.name, collation)

    def exact(self, expr: ColumnElement[Any]) -> ColumnElement[Any]:
        """``expr`` compared byte for byte, case and trailing spaces included."""
        # MySQL compares text case-insensitively under the usual collations; bytes compare
        # exactly (the prefixes compared here are ASCII, the same bytes in any charset).
        if self.mysql:
            return type_coerce(cast(expr, mysql.BINARY()), Text())
        if self.name == "postgresql":
            # A citext column, or one under a case-insensitive ICU collation, would not.
            return collate(cast(expr, Text()), "C")
        return expr

    def has_prefix(self, expr: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
        """``expr`` starts with ``prefix``, case-sensitively."""
        if self.name == "sqlite":
            # SQLite's LIKE ignores ASCII case; substr() compares exactly.
            return func.substr(expr, 1, len(prefix)) == prefix
        return self.exact(expr).like(_like_prefix(prefix), escape="/")

    def same(self, col: ColumnElement[Any], value: ColumnElement[Any]) -> ColumnElement[bool]:
        """NULL-safe, exact equality (case and trailing spaces count), for compare-and-swap.

        A comparison under the column's own collation would let a write replace a value the
        application changed only in case (``NOCASE``, ``citext``, MySQL's ``_ci``): a lost
        update.
        """
        if not isinstance(col.type, String):
            return col.is_not_distinct_from(value)
        if self.mysql:
            if self.binary_collation is None:
                raise RotationError("internal: compare-and-swap needs a connected _Sql")
            return and_(
                col.is_not_distinct_from(collate(value, self.binary_collation)),
                func.char_length(col).is_not_distinct_from(func.char_length(value)),
            )
        if self.name == "postgresql":
            return self.exact(col).is_not_distinct_from(cast(value, Text()))
        if self.name == "sqlite":
            return col.is_not_distinct_from(collate(value, "BINARY"))
        return col.is_not_distinct_from(value)

    def after(self, pk: Sequence[Column[Any]], values: Sequence[Any]) -> ColumnElement[bool]:
        """Rows whose primary key sorts after ``values``."""
        return self._compare(pk, values, strict=True, greater=True)

    def not_after(self, pk: Sequence[Column[Any]], values: Sequence[Any]) -> ColumnElement[bool]:
        """Rows whose primary key sorts at or before ``values``."""
        return self._compare(pk, values, strict=False, greater=False)

    def _compare(
        self, pk: Sequence[Column[Any]], values: Sequence[Any], *, strict: bool, greater: bool
    ) -> ColumnElement[bool]:
        bound = [literal(v, c.type) for c, v in zip(pk, values, strict=True)]
        if len(pk) == 1:
            if greater:
                return pk[0] > bound[0] if strict else pk[0] >= bound[0]
            return pk[0] < bound[0] if strict else pk[0] <= bound[0]
        if not self.mysql:
            lhs, rhs = tuple_(*pk), tuple_(*bound)
            if greater:
                return lhs > rhs if strict else lhs >= rhs
            return lhs < rhs if strict else lhs <= rhs
        # MySQL does not use an index range for row comparisons; the expanded form it does.
        terms = []
        for i, col in enumerate(pk):
            prefix = [c == b for c, b in zip(pk[:i], bound[:i], strict=True)]
            terms.append(and_(*prefix, col > bound[i] if greater else col < bound[i]))
        if not strict:
            terms.append(and_(*(c == b for c, b in zip(pk, bound, strict=True))))
        return or_(*terms)

    def shard(self, pk: Sequence[Column[Any]], index: int, count: int) -> ColumnElement[bool]:
        """Rows of shard ``index`` (0-based) of ``count``: a pure function of the key.

        Every machine computes the same split without talking to the others, however the
        table changes meanwhile.
        """
        if len(pk) == 1 and _is_integer(pk[0]):
            return ((pk[0] % count) + count) % count == index
        if self.name == "postgresql":
            parts = [cast(c, Text()) for c in pk]
            keyed = parts[0] if len(parts) == 1 else func.concat_ws("\x1f", *parts)
            hashed = func.hashtextextended(keyed, 0)
            return ((hashed % count) + count) % count == index
        if self.mysql:
            parts = [cast(c, mysql.CHAR()) for c in pk]
            keyed = parts[0] if len(parts) == 1 else func.concat_ws("\x1f", *parts)
            return func.crc32(keyed) % count == index
        raise ConfigurationError(
            f"shards need an integer primary key on {self.name}; use workers instead"
        )


def _is_integer(col: Column[Any]) -> bool:
    return isinstance(col.type, Integer)


# -- jobs and reports --------------------------------------------------------------------


@dataclass(frozen=True)
class BatchJob:
    """One pass over a table: which rows to visit and how each one changes.

    ``transform`` receives the stored values of ``read`` (raw tokens for encrypted columns)
    and returns the new values of ``write``, or None when the row needs no change, or
    :data:`SKIP` when it is left alone on purpose. It raises a
    :class:`~sa_fieldcrypt.FieldCryptError` (such as :class:`~sa_fieldcrypt.DecryptionError`)
    for a row it cannot handle: the row is reported as failed and the run goes on. A row is
    written only if the ``read`` columns still hold what was read (compare and swap).

    Attributes:
        label: how reports and messages name the pass (usually ``schema.table.column``).
        table: the table; its primary key orders and identifies the rows.
        read: the columns given to ``transform``, and compared before each write.
        write: the columns ``transform``'s result is written to; empty for read-only passes.
        transform: the per-row function.
        where: which rows to visit; built on ``table``'s columns, with encrypted columns
            wrapped in ``type_coerce(col, Text())`` to compare their stored text.
    """

    label: str
    table: Table
    read: tuple[Column[Any], ...]
    write: tuple[Column[Any], ...]
    transform: Transform
    where: ColumnElement[bool] | None = None


@dataclass(frozen=True)
class Failure:
    """A row that could not be handled: named by column and primary key, never by content."""

    column: str
    primary_key: tuple[tuple[str, Any], ...]
    reason: str

    def __str__(self) -> str:
        key = ", ".join(f"{name}={value!r}" for name, value in self.primary_key)
        return f"{self.column} at primary key ({key}): {self.reason}"


@dataclass
class JobReport:
    """Counts for one pass over one column.

    Attributes:
        label: the pass's label (``schema.table.column``).
        scanned: rows read.
        written: rows written (in a dry run: rows that would be).
        unchanged: rows that needed no change (a verified value, for ``verify``).
        skipped: rows left alone on purpose (plaintext, unless encrypting plaintext).
        concurrent: writes refused because someone else changed the row after it was read;
            such rows are read again, so they are not lost (see ``written``).
        failed: rows that could not be handled; the first few are in ``failures``.
        dry_run: nothing was written.
        completed: False when the pass stopped early (``fail_fast``).
        last_key: the primary key of the last row of the last committed batch, where a
            later run may resume (``start_after``); None before the first batch, and with
            ``workers > 1``.
    """

    label: str
    scanned: int = 0
    written: int = 0
    unchanged: int = 0
    skipped: int = 0
    concurrent: int = 0
    failed: int = 0
    failures: list[Failure] = field(default_factory=list)
    dry_run: bool = False
    completed: bool = True
    last_key: tuple[Any, ...] | None = None

    def add(self, other: JobReport) -> None:
        """Add another report's counts (of another worker or shard) to this one."""
        self.scanned += other.scanned
        self.written += other.written
        self.unchanged += other.unchanged
        self.skipped += other.skipped
        self.concurrent += other.concurrent
        self.failed += other.failed
        self.failures.extend(other.failures[: MAX_KEPT_FAILURES - len(self.failures)])
        self.completed = self.completed and other.completed

    def _count(self, counts: dict[str, int]) -> None:
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class RunReport:
    """The reports of every column of a run."""

    columns: list[JobReport] = field(default_factory=list)

    def _total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.columns)

    @property
    def scanned(self) -> int:
        """Rows read, all columns."""
        return self._total("scanned")

    @property
    def written(self) -> int:
        """Rows written (or, in a dry run, that would be), all columns."""
        return self._total("written")

    @property
    def skipped(self) -> int:
        """Rows left alone on purpose, all columns."""
        return self._total("skipped")

    @property
    def concurrent(self) -> int:
        """Writes refused because the row changed meanwhile, all columns."""
        return self._total("concurrent")

    @property
    def failed(self) -> int:
        """Rows that could not be handled, all columns."""
        return self._total("failed")

    @property
    def ok(self) -> bool:
        """True when every row was handled and no pass stopped early."""
        return self.failed == 0 and all(r.completed for r in self.columns)


class RunListener:
    """Receives a run's progress; subclass and override what you need.

    The default implementation logs to the ``sa_fieldcrypt.rotation`` logger.
    """

    def started(self, label: str, total: int) -> None:
        """A pass begins; ``total`` rows match its filter now."""
        logger.info("%s: %d rows to visit", label, total)

    def batch(self, label: str, rows: int, report: JobReport) -> None:
        """A batch of ``rows`` rows was committed; ``report`` holds the pass's counts so far."""
        logger.debug("%s: %d rows scanned, %d written", label, report.scanned, report.written)

    def failure(self, failure: Failure) -> None:
        """A row could not be handled."""
        logger.warning("%s", failure)

    def finished(self, report: JobReport) -> None:
        """A pass ended."""
        logger.info(
            "%s: scanned %d, written %d, failed %d",
            report.label,
            report.scanned,
            report.written,
            report.failed,
        )


BeforeWrite = Callable[[Connection, list[tuple[Any, ...]]], None]
OnFailure = Callable[[Failure], None]


Item = tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]
_T = TypeVar("_T")


# -- the engine ---------------------------------------------------------------------------


def _transient(exc: DBAPIError) -> bool:
    """A deadlock, serialization failure or lock wait timeout: the batch may be retried."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01", "55P03"):
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in (1205, 1213):
        return True
    return "database is locked" in str(orig)


def _driver_message(exc: BaseException) -> str:
    """``Type: first line`` of the driver's error under ``exc``, safe to show."""
    # Only the driver's first line: SQLAlchemy's own text would quote the statement's
    # parameters (ciphertext, or plaintext during a migration) unless hide_parameters is set.
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first}"


def _database_error(label: str, exc: SQLAlchemyError) -> RotationError:
    return RotationError(
        f"{label}: database error ({_driver_message(exc)}); batches committed so far "
        "are kept, rerun to resume"
    )


class _Writer:
    """Writes a batch with compare-and-swap and says which rows it could not write."""

    def __init__(self, conn: Connection, sql: _Sql, job: BatchJob, pk: tuple[Column[Any], ...]):
        self.sql = sql
        self.pk_names = [c.name for c in pk]
        self.read_names = [c.name for c in job.read]
        self.write_names = [c.name for c in job.write]
        types: dict[str, TypeEngine[Any]] = {c.name: c.type for c in pk}
        for col in (*job.read, *job.write):
            types.setdefault(col.name, _raw_type(col))
        # The bare table clause below is not subject to the engine's schema_translate_map,
        # as the Table is: translate its schema here.
        translate = conn.get_execution_options().get("schema_translate_map") or {}
        schema = translate.get(job.table.schema, job.table.schema)
        keep = (
            [n for n in _auto_update_columns(conn, schema, job.table.name) if n not in types]
            if sql.mysql
            else []
        )
        # A bare table clause has no Python-side defaults, so no `onupdate` fires.
        self.lite = table(
            job.table.name,
            *(column(name, type_) for name, type_ in types.items()),
            *(column(name) for name in keep),
            schema=schema,
        )
        self.keep = keep
        self.statement = self._statement()
        bulk = sql.name == "postgresql" and all(_python_type(c.type) in _JSON_KEYS for c in pk)
        bulk = bulk and all(_python_type(_raw_type(c)) is str for c in (*job.read, *job.write))
        self.bulk = self._bulk_statement() if bulk else None

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

    def _bulk_statement(self) -> Any:
        # PostgreSQL: the whole batch in one statement with one JSON parameter, much cheaper
        # than a statement per row.
        c = self.lite.c
        rows = (
            func.json_array_elements(cast(bindparam("doc", type_=Text()), JSON()))
            .table_valued("value")
            .alias("fc_batch")
        )

        def item(position: int) -> ColumnElement[Any]:
            return type_coerce(rows.c.value.op("->>")(literal_column(str(position))), Text())

        at = {("k", n): i for i, n in enumerate(self.pk_names)}
        at.update({("o", n): len(self.pk_names) + i for i, n in enumerate(self.read_names)})
        base = len(self.pk_names) + len(self.read_names)
        at.update({("n", n): base + i for i, n in enumerate(self.write_names)})
        where = [c[n] == cast(item(at["k", n]), c[n].type) for n in self.pk_names]
        where += [self.sql.same(c[n], item(at["o", n])) for n in self.read_names]
        values = {c[n]: item(at["n", n]) for n in self.write_names}
        return update(self.lite).where(*where).values(values)

    def write(self, conn: Connection, items: list[Item]) -> set[tuple[Any, ...]]:
        """Write ``(pk, old, new)`` items; return the keys of rows that changed meanwhile."""
        if self.bulk is not None:
            doc = json.dumps([[*k, *o, *n] for k, o, n in items], default=str)
            if conn.execute(self.bulk, {"doc": doc}).rowcount == len(items):
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
        pk = [self.lite.c[n] for n in self.pk_names]
        written = [self.lite.c[n] for n in self.write_names]
        only_read = [(i, n) for i, n in enumerate(self.read_names) if n not in self.write_names]
        checked = [self.lite.c[n] for _, n in only_read]
        keys = [k for k, _, _ in items]
        match = pk[0].in_([k[0] for k in keys]) if len(pk) == 1 else tuple_(*pk).in_(keys)
        now = {
            tuple(row[: len(pk)]): tuple(row[len(pk) :])
            for row in conn.execute(select(*pk, *written, *checked).where(match))
        }
        return {k for k, old, new in items if now.get(k) != (*new, *(old[i] for i, _ in only_read))}


#: Primary-key types the PostgreSQL one-statement write carries through JSON exactly.
_JSON_KEYS: Final = (int, str, uuid.UUID)


def _python_type(type_: TypeEngine[Any]) -> type | None:
    try:
        return type_.python_type
    except NotImplementedError:
        return None


def _auto_update_columns(conn: Connection, schema: str | None, name: str) -> list[str]:
    """Columns MySQL sets on every update (``ON UPDATE CURRENT_TIMESTAMP``)."""
    rows = conn.execute(
        text(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name "
            "AND LOWER(extra) LIKE '%on update%'"
        ),
        {"schema": schema, "name": name},
    )
    return [row[0] for row in rows]


def _reason(exc: FieldCryptError) -> str:
    if isinstance(exc, DecryptionError):
        return f"key id {exc.key_id!r}: {exc.reason}" if exc.key_id else exc.reason
    return str(exc)


@dataclass(frozen=True)
class _Options:
    batch_size: int
    dry_run: bool
    fail_fast: bool
    shard: tuple[int, int] | None  # (index from 0, count)
    start_after: tuple[Any, ...] | None = None
    reread_changed: bool = True


@dataclass
class _Batch:
    """Rows read and transformed, and what became of them."""

    keys: list[tuple[Any, ...]]
    items: list[Item]
    counts: dict[str, int]
    failures: list[Failure]
    left: int = 0  # rows still changing after every retry


class _Walk:
    """One process's pass over a range of primary keys of a job.

    On a database server, a writer thread commits batch N while this thread reads and
    transforms batch N+1: the database's work overlaps with the crypto instead of adding to
    it. SQLite (one writer at a time) and dry runs go one batch after the other, reading and
    writing each batch in one transaction.
    """

    def __init__(
        self,
        engine: Engine,
        job: BatchJob,
        options: _Options,
        listener: RunListener,
        before_write: BeforeWrite | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_failure: OnFailure | None = None,
    ):
        self.engine = engine
        self.job = job
        self.options = options
        self.listener = listener
        self.before_write = before_write
        self.should_stop = should_stop
        self.on_failure = on_failure
        self.pk = _primary_key(job)
        self.pk_names = [c.name for c in self.pk]
        self.limits = [getattr(c.type, "length", None) for c in job.write]
        self.has_limits = any(limit is not None for limit in self.limits)
        self.report = JobReport(job.label, dry_run=options.dry_run)
        self.selected = [*self.pk, *(_raw(c) for c in job.read)]
        self.base: list[ColumnElement[bool]] = []

    def run(self, low: tuple[Any, ...] | None, high: tuple[Any, ...] | None) -> JobReport:
        """Visit every matching row with ``low < key <= high`` (None: unbounded)."""
        try:
            with contextlib.ExitStack() as stack:
                conn = stack.enter_context(self.engine.connect())
                sql = _Sql.connected(conn)
                writer = None
                if self.job.write and not self.options.dry_run:
                    writer = _Writer(conn, sql, self.job, self.pk)
                conn.commit()
                self.base = _filters(sql, self.job, self.pk, self.options)
                if high is not None:
                    self.base.append(sql.not_after(self.pk, high))
                if writer is None or sql.name == "sqlite":
                    self._one_by_one(conn, sql, writer, low)
                else:
                    self._pipelined(
                        conn, stack.enter_context(self.engine.connect()), sql, writer, low
                    )
        except SQLAlchemyError as exc:
            raise _database_error(self.job.label, exc) from exc
        return self.report

    def _page(self, sql: _Sql, last: tuple[Any, ...] | None) -> Any:
        where = [*self.base, sql.after(self.pk, last)] if last is not None else self.base
        stmt = select(*self.selected).where(*where).order_by(*self.pk)
        return stmt.limit(self.options.batch_size)

    def _one_by_one(
        self, conn: Connection, sql: _Sql, writer: _Writer | None, last: tuple[Any, ...] | None
    ) -> None:
        while not self.should_stop():
            stmt = self._page(sql, last)
            batch, missed = self._transaction(conn, self._read_and_write, writer, stmt, True)
            if not batch.keys:
                return
            last = batch.keys[-1]
            self._written(batch, missed)
            self._retry(conn, writer, batch, missed)
            self._apply(batch)
            if self.options.fail_fast and batch.failures:
                self.report.completed = False
                return
        self.report.completed = False

    def _pipelined(
        self,
        conn: Connection,
        write_conn: Connection,
        sql: _Sql,
        writer: _Writer,
        last: tuple[Any, ...] | None,
    ) -> None:
        # A page is one SELECT; it needs no transaction around it, since writes compare and
        # swap. Without BEGIN and COMMIT it is one round trip instead of three.
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if writer.bulk is not None:
            # A batch is one UPDATE statement, atomic on its own: without BEGIN and COMMIT it
            # is one round trip, and each round trip costs the writer a wait for the GIL,
            # which the crypto holds.
            write_conn = write_conn.execution_options(isolation_level="AUTOCOMMIT")

        def write(batch: _Batch) -> _Batch:
            missed = self._transaction(write_conn, self._write, writer, batch, True)
            self._written(batch, missed)
            self._retry(write_conn, writer, batch, missed)
            return batch

        with ThreadPoolExecutor(1, thread_name_prefix="fieldcrypt-writer") as executor:
            pending: Future[_Batch] | None = None
            try:
                while not self.should_stop():
                    stmt = self._page(sql, last)
                    batch = self._transaction(conn, self._read, stmt, True)
                    if pending is not None:
                        # Taken out first: a listener that raises must not see it twice.
                        done, pending = pending, None
                        self._apply(done.result())
                    if not batch.keys:
                        return
                    last = batch.keys[-1]
                    pending = executor.submit(write, batch)
                    if self.options.fail_fast and batch.failures:
                        self.report.completed = False
                        return
                self.report.completed = False
            finally:
                if pending is not None:
                    # The batch in flight is committed (or fails) before the run reports.
                    self._apply(pending.result())

    def _transaction(self, conn: Connection, work: Callable[..., _T], *args: Any) -> _T:
        """Run ``work(conn, *args)`` in one transaction; retried after a deadlock."""
        for attempt in range(_TRANSIENT_RETRIES + 1):
            try:
                with conn.begin():
                    return work(conn, *args)
            except DBAPIError as exc:
                if attempt < _TRANSIENT_RETRIES and _transient(exc):
                    # Lock conflicts clear once the other transaction ends; give it a moment.
                    time.sleep(0.05 * 2**attempt)
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, conn: Connection, stmt: Any, scanned: bool) -> _Batch:
        items, counts, failures, rows = self._transform(conn.execute(stmt).all())
        if self.on_failure is not None:
            for failure in failures:
                # Before anything of the batch is written: raising here rolls it back.
                self.on_failure(failure)
        if scanned:
            counts["scanned"] = len(rows)
        return _Batch([tuple(r[: len(self.pk)]) for r in rows], items, counts, failures)

    def _write(
        self, conn: Connection, writer: _Writer | None, batch: _Batch, hook: bool
    ) -> set[tuple[Any, ...]]:
        if hook and self.before_write is not None:
            self.before_write(conn, [k for k, _, _ in batch.items])
        if writer is None or not batch.items:
            return set()
        return writer.write(conn, batch.items)

    def _read_and_write(
        self, conn: Connection, writer: _Writer | None, stmt: Any, first: bool
    ) -> tuple[_Batch, set[tuple[Any, ...]]]:
        batch = self._read(conn, stmt, first)
        return batch, self._write(conn, writer, batch, first)

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
            match = (
                self.pk[0].in_([k[0] for k in keys])
                if len(self.pk) == 1
                else tuple_(*self.pk).in_(keys)
            )
            stmt = select(*self.selected).where(*self.base, match)
            retried, missed = self._transaction(conn, self._read_and_write, writer, stmt, False)
            self._written(retried, missed)
            for name, value in retried.counts.items():
                batch.counts[name] = batch.counts.get(name, 0) + value
            batch.failures.extend(retried.failures)
        batch.left = len(missed)

    def _apply(self, batch: _Batch) -> None:
        self.report._count(batch.counts)
        if batch.keys:
            self.report.last_key = batch.keys[-1]
        for failure in batch.failures:
            if len(self.report.failures) < MAX_KEPT_FAILURES:
                self.report.failures.append(failure)
            self.listener.failure(failure)
        if batch.left and self.options.reread_changed:
            logger.warning(
                "%s: %d rows kept changing during the run; rerun to pick them up",
                self.job.label,
                batch.left,
            )
        self.listener.batch(self.job.label, len(batch.keys), self.report)

    def _transform(
        self, rows: Sequence[Sequence[Any]]
    ) -> tuple[list[Item], dict[str, int], list[Failure], Sequence[Sequence[Any]]]:
        """Transform rows; with fail_fast, only those up to the first failure."""
        npk = len(self.pk)
        fail_fast = self.options.fail_fast
        transform = self.job.transform
        items: list[Item] = []
        failures: list[Failure] = []
        unchanged = skipped = 0
        for position, row in enumerate(rows):
            if fail_fast and failures:
                rows = rows[:position]
                break
            key, old = tuple(row[:npk]), tuple(row[npk:])
            try:
                new = transform(old)
            except FieldCryptError as exc:
                failures.append(self._failure(key, _reason(exc)))
                continue
            if new is None:
                unchanged += 1
            elif isinstance(new, _Skip):
                skipped += 1
            elif isinstance(new, tuple):
                too_long = self._too_long(new) if self.has_limits else None
                if too_long is not None:
                    failures.append(self._failure(key, too_long))
                else:
                    items.append((key, old, new))
        counts = {"unchanged": unchanged, "skipped": skipped, "failed": len(failures)}
        return items, counts, failures, rows

    def _too_long(self, new: tuple[Any, ...]) -> str | None:
        for col, limit, value in zip(self.job.write, self.limits, new, strict=True):
            if limit is not None and isinstance(value, str) and len(value) > limit:
                return (
                    f"the new value of {col.name} ({len(value)} characters) does not fit the "
                    f"column's length {limit}; widen the column first"
                )
        return None

    def _failure(self, key: tuple[Any, ...], reason: str) -> Failure:
        return Failure(self.job.label, tuple(zip(self.pk_names, key, strict=True)), reason)


def _primary_key(job: BatchJob) -> tuple[Column[Any], ...]:
    pk = tuple(job.table.primary_key.columns)
    if not pk:
        raise RotationError(
            f"{job.label}: table {job.table.fullname} has no primary key; batches are paged "
            "by primary key, so add one (or declare it on the model) first"
        )
    return pk


def _filters(
    sql: _Sql, job: BatchJob, pk: Sequence[Column[Any]], options: _Options
) -> list[ColumnElement[bool]]:
    where = [job.where] if job.where is not None else []
    if options.shard is not None:
        where.append(sql.shard(pk, *options.shard))
    if options.start_after is not None:
        where.append(sql.after(pk, options.start_after))
    return where


def _count_rows(engine: Engine, job: BatchJob, options: _Options) -> int:
    pk = _primary_key(job)
    with engine.connect() as conn:
        where = _filters(_Sql(conn.dialect.name), job, pk, options)
        stmt = select(func.count()).select_from(job.table).where(*where)
        return int(conn.execute(stmt).scalar_one())


def _ranges(
    engine: Engine, job: BatchJob, options: _Options, parts: int
) -> tuple[int, list[tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]]]:
    """Split the matching rows into ``parts`` primary-key ranges of about equal size."""
    pk = _primary_key(job)
    with engine.connect() as conn:
        where = _filters(_Sql(conn.dialect.name), job, pk, options)
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
    return total, list(itertools.pairwise(edges))


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


JobFactory = Callable[[Engine], BatchJob]


def run_job(
    engine: Engine,
    job: BatchJob | JobFactory,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    fail_fast: bool = False,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    listener: RunListener | None = None,
    before_write: BeforeWrite | None = None,
    start_after: tuple[Any, ...] | None = None,
    on_failure: OnFailure | None = None,
    reread_changed: bool = True,
) -> JobReport:
    """Run a :class:`BatchJob` over its table, batch by batch; the engine under :func:`rotate`.

    Args:
        engine: the database.
        job: the job, or a function that builds it from an engine. With ``workers > 1`` it
            must be a picklable function (a module-level function, or a
            ``functools.partial`` of one), since each worker process builds its own.
        batch_size: rows per batch, and per transaction.
        dry_run: run the transform but write nothing; counts say what would be written.
        fail_fast: stop at the first row that fails.
        workers: processes, each over its own range of primary keys.
        shard: ``(I, N)``: visit only shard I (from 1) of N, so that N machines, each
            running one shard, split a table between them without coordination.
        listener: receives progress; by default it is logged.
        before_write: called with the connection and the primary keys of the rows about to
            be written, between reading and writing each batch (for tests and audits).
        start_after: visit only rows whose primary key sorts after this one (a
            :attr:`JobReport.last_key` of an earlier run), to resume it.
        on_failure: called with each failing row as soon as the transform fails, before its
            batch is written. An exception it raises stops the run and rolls that batch back
            (batches committed before stay), for jobs where one failure must stop them all.
        reread_changed: read a row that changed between read and write again and handle it
            in this run; with False it is only counted (``concurrent``) and left as it is.

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
    if workers > 1 and (before_write is not None or on_failure is not None):
        raise ConfigurationError(
            "before_write and on_failure run in one process only; use workers=1"
        )
    listener = listener or RunListener()
    built = job if isinstance(job, BatchJob) else job(engine)
    shard0 = None if shard is None else (shard[0] - 1, shard[1])
    options = _Options(batch_size, dry_run, fail_fast, shard0, start_after, reread_changed)
    if workers == 1:
        listener.started(built.label, _count_rows(engine, built, options))
        walk = _Walk(engine, built, options, listener, before_write, on_failure=on_failure)
        report = walk.run(None, None)
    else:
        if isinstance(job, BatchJob):
            raise ConfigurationError(
                "workers > 1 need a picklable job factory (a module-level function of the "
                "engine), not a BatchJob"
            )
        report = _run_workers(engine, job, built, options, workers, listener)
    listener.finished(report)
    return report


# -- worker processes ----------------------------------------------------------------------


def _run_workers(
    engine: Engine,
    factory: JobFactory,
    job: BatchJob,
    options: _Options,
    workers: int,
    listener: RunListener,
) -> JobReport:
    total, ranges = _ranges(engine, job, options, workers)
    listener.started(job.label, total)
    report = JobReport(job.label, dry_run=options.dry_run)
    # spawn, not fork: a forked child would share the parent's pooled connections and threads.
    context = multiprocessing.get_context("spawn")
    events: Any = context.Queue()
    stop = context.Event()
    url = engine.url.render_as_string(hide_password=False)
    settings = (url, dict(engine.get_execution_options()), _default_keyring())
    processes = [
        context.Process(
            target=_worker,
            args=(index, settings, factory, low, high, options, events, stop, os.getpid()),
            name=f"fieldcrypt-worker-{index}",
            daemon=True,
        )
        for index, (low, high) in enumerate(ranges)
    ]
    for process in processes:
        process.start()
    running = set(range(len(processes)))
    error: BaseException | None = None
    try:
        while running:
            try:
                event = events.get(timeout=0.5)
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
            kind, index, payload = event
            if kind == "batch":
                rows, counts = payload
                report._count(counts)
                listener.batch(job.label, rows, report)
            elif kind == "failure":
                if len(report.failures) < MAX_KEPT_FAILURES:
                    report.failures.append(payload)
                listener.failure(payload)
                if options.fail_fast:
                    stop.set()
            elif kind == "done":
                running.discard(index)
                report.completed = report.completed and payload
            else:
                running.discard(index)
                error = error or payload
                stop.set()
    except BaseException:
        stop.set()
        raise
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    if error is not None:
        raise error
    return report


def _default_keyring() -> Keyring | None:
    try:
        return current_keyring()
    except FieldCryptError:
        return None


class _Relay(RunListener):
    """A worker's listener: sends each batch's counts and each failure to the parent."""

    _COUNTS = ("scanned", "written", "unchanged", "skipped", "concurrent", "failed")

    def __init__(self, index: int, events: Any):
        self.index = index
        self.events = events
        self.sent = dict.fromkeys(self._COUNTS, 0)

    def started(self, label: str, total: int) -> None:
        """Not sent: the parent counts the whole job itself."""

    def batch(self, label: str, rows: int, report: JobReport) -> None:
        """Send the counts added since the last batch."""
        now = {name: getattr(report, name) for name in self._COUNTS}
        delta = {name: now[name] - self.sent[name] for name in self._COUNTS}
        self.sent = now
        self.events.put(("batch", self.index, (rows, delta)))

    def failure(self, failure: Failure) -> None:
        """Send the failure."""
        self.events.put(("failure", self.index, failure))

    def finished(self, report: JobReport) -> None:
        """Not sent: the worker reports completion itself."""


def _worker(
    index: int,
    settings: tuple[str, dict[str, Any], Keyring | None],
    factory: JobFactory,
    low: tuple[Any, ...] | None,
    high: tuple[Any, ...] | None,
    options: _Options,
    events: Any,
    stop: Any,
    parent: int,
) -> None:
    url, execution_options, keyring = settings
    engine = None
    try:
        if keyring is not None:
            configure(keyring=keyring)
        engine = create_engine(url, hide_parameters=True).execution_options(**execution_options)
        job = factory(engine)
        relay = _Relay(index, events)

        def should_stop() -> bool:
            # An orphan (its parent was killed) stops at the next batch.
            return bool(stop.is_set()) or os.getppid() != parent

        report = _Walk(engine, job, options, relay, None, should_stop).run(low, high)
        relay.batch(job.label, 0, report)
        events.put(("done", index, report.completed))
    except BaseException as exc:
        events.put(("error", index, _portable(exc)))
    finally:
        if engine is not None:
            engine.dispose()


def _portable(exc: BaseException) -> BaseException:
    """An exception the parent can unpickle and show without leaking data."""
    if isinstance(exc, FieldCryptError):
        return exc
    return RotationError(f"worker failed: {_driver_message(exc)}")

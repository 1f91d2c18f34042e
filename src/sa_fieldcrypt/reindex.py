"""Recompute blind-index columns in place: after an index key rotation or a normalizer change.

Typical usage::

    from sa_fieldcrypt.reindex import blind_index_status, reindex

    report = reindex(engine, Base.metadata, state="reindex-state.json")
    for column in blind_index_status(engine, Base.metadata):
        print(column.label, column.stale)       # 0 everywhere: the old index key can retire

How it runs, so it is safe on a live database: each table is one job of the batch engine
(:func:`sa_fieldcrypt.batch.run_job`), which reads its value and index columns and writes its
index columns.

- Rows are read in primary-key order, ``batch_size`` at a time (keyset pagination, no
  ``OFFSET``), each batch in one transaction of its own.
- Each row's value is decrypted and its index recomputed under the newest index key; only rows
  whose stored index differs are written. Every row is read, since an index computed by an
  older normalizer looks no different in SQL from a right one.
- Every write is a compare-and-swap on the values and indexes read: a row the application
  changed in the meantime is left alone (the application wrote its own index).
- A failure rolls back its batch only: earlier batches stay committed, and nothing is ever
  half-written. With ``state=`` the last committed primary key is saved after every batch, so a
  run that was stopped, killed or failed resumes where it left off. Without it, a rerun starts
  over and skips rows that are already right, so reruns are always safe.
- A row whose new index value collides with another row's under a unique constraint (the same
  value written twice while two index keys were active) stops the run with a
  :class:`~sa_fieldcrypt.RotationError` that names both rows' primary keys.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, MetaData, Table, and_, case, func, or_, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import IntegrityError

from sa_fieldcrypt.batch import (
    BatchJob,
    Failure,
    JobReport,
    RunListener,
    _raw,
    _Sql,
    run_job,
)
from sa_fieldcrypt.blind_index import BlindIndex
from sa_fieldcrypt.errors import ConfigurationError, FieldCryptError, RotationError
from sa_fieldcrypt.hybrid import INFO_BLIND_INDEX
from sa_fieldcrypt.types import EncryptedType, column_codec

__all__ = [
    "BatchReport",
    "ColumnStatus",
    "IndexedColumn",
    "ReindexReport",
    "blind_index_columns",
    "blind_index_status",
    "load_metadata",
    "reindex",
]

_STATE_VERSION = 1
#: Times a run goes on after a collision that was gone when looked for (the app fixed it).
_COLLISION_RETRIES = 3
# The types' processors ignore the dialect.
_DIALECT = DefaultDialect()


@dataclass(frozen=True)
class IndexedColumn:
    """A blind-index column and the encrypted column it indexes.

    Attributes:
        table: the table holding both.
        index: the blind-index column.
        source: the column holding the encrypted value.
        blind_index: how index values are computed.
        encrypted_type: the type that decrypts ``source``.
    """

    table: Table
    index: Column[Any]
    source: Column[Any]
    blind_index: BlindIndex
    encrypted_type: EncryptedType

    @property
    def label(self) -> str:
        """``schema.table.column`` of the index column."""
        return f"{self.table.fullname}.{self.index.name}"


@dataclass(frozen=True)
class BatchReport:
    """What one committed batch did.

    Attributes:
        table: ``schema.table``.
        scanned: rows read.
        updated: rows whose index columns were rewritten.
        skipped: rows changed by someone else between read and write, left as they were.
        last_key: primary key of the batch's last row; the next batch starts after it.
    """

    table: str
    scanned: int
    updated: int
    skipped: int
    last_key: tuple[Any, ...]


@dataclass
class ReindexReport:
    """Totals of a :func:`reindex` run.

    Attributes:
        columns: labels of the index columns recomputed.
        scanned: rows read.
        updated: rows rewritten.
        skipped: rows left alone because they changed during the run.
        batches: batches committed.
        resumed: tables whose run resumed from a saved state, with the key it resumed after.
    """

    columns: list[str] = field(default_factory=list)
    scanned: int = 0
    updated: int = 0
    skipped: int = 0
    batches: int = 0
    resumed: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ColumnStatus:
    """How a blind-index column's stored values divide among index keys.

    Attributes:
        label: ``schema.table.column`` of the index column.
        by_key: rows per active key id, the writing key first.
        other_keys: rows under a key id that is no longer active (not found by lookups).
        no_index: rows with a value but no index value (not indexed by the normalizer, or
            written without the hybrid).
    """

    label: str
    by_key: dict[str, int]
    other_keys: int
    no_index: int

    @property
    def stale(self) -> int:
        """Rows not under the writing key; 0 means the other keys can retire."""
        return sum(list(self.by_key.values())[1:]) + self.other_keys


def blind_index_columns(
    target: MetaData | Iterable[Table], *, tables: Iterable[str] | None = None
) -> list[IndexedColumn]:
    """Find every blind-index column of mapped :func:`~sa_fieldcrypt.encrypted_hybrid` models.

    Args:
        target: the models' ``MetaData`` (``Base.metadata``) or some of its tables.
        tables: only these tables (``schema.table`` or ``table``); by default all of them.

    Raises:
        ConfigurationError: a table named in ``tables`` has no blind index.
    """
    all_tables = list(target.sorted_tables if isinstance(target, MetaData) else target)
    wanted = None if tables is None else set(tables)
    found: list[IndexedColumn] = []
    for table in all_tables:
        if wanted is not None and table.fullname not in wanted and table.name not in wanted:
            continue
        for column in table.columns:
            bound = column.info.get(INFO_BLIND_INDEX)
            if not isinstance(bound, BlindIndex) or bound.source_column is None:
                continue
            source = table.c[bound.source_column]
            decryptor = column_codec(source)
            if decryptor is None:
                raise ConfigurationError(
                    f"{table.fullname}.{source.name}: no encrypted type is recorded for the "
                    "column that the blind index reads; declare it through encrypted_hybrid()"
                )
            found.append(IndexedColumn(table, column, source, bound, decryptor))
    if wanted is not None:
        missing = wanted - {c.table.fullname for c in found} - {c.table.name for c in found}
        if missing:
            raise ConfigurationError(
                f"no blind-index columns in table(s) {', '.join(sorted(missing))}"
            )
    return found


def reindex(
    engine: Engine,
    target: MetaData | Iterable[Table],
    *,
    tables: Iterable[str] | None = None,
    batch_size: int = 500,
    state: str | os.PathLike[str] | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> ReindexReport:
    """Recompute every blind-index column under the newest index key, in batches.

    Args:
        engine: where the tables live (with a ``schema_translate_map`` if the models need one).
        target: the models' ``MetaData`` or some of its tables.
        tables: only these tables (``schema.table`` or ``table``).
        batch_size: rows per batch, each batch one transaction.
        state: a file that records progress after every batch; a later run with the same
            file, the same index columns and the same newest key resumes from it.
        on_batch: called after every committed batch, for progress output.

    Returns:
        The run's totals.

    Raises:
        RotationError: a value does not decrypt, a table has no primary key, or a new index
            value collides with another row's; batches committed before it stay committed.
        ConfigurationError: no index key, or a table without blind index was named.
    """
    if batch_size < 1:
        raise ConfigurationError("batch_size must be at least 1")
    columns = blind_index_columns(target, tables=tables)
    report = ReindexReport(columns=[c.label for c in columns])
    by_table: dict[Table, list[IndexedColumn]] = {}
    for column in columns:
        by_table.setdefault(column.table, []).append(column)
    saved = _State.open(state, columns) if state is not None else None
    for table, table_columns in by_table.items():
        pk = list(table.primary_key.columns)
        if not pk:
            raise RotationError(
                f"{table.fullname} has no primary key; reindexing pages through rows by "
                "primary key, so add one"
            )
        if saved is not None and saved.is_done(table):
            continue
        after = saved.resume_point(table, pk) if saved is not None else None
        if after is not None:
            report.resumed[table.fullname] = after
        progress = _Progress(table, report, saved, on_batch, after)
        _reindex_table(engine, table_columns, batch_size, progress)
        if saved is not None:
            saved.record(table, progress.last_key, done=True)
    return report


def _reindex_job(table: Table, columns: Sequence[IndexedColumn]) -> BatchJob:
    """The engine's job for one table: read values and indexes, write the indexes."""
    count = len(columns)

    def transform(old: tuple[Any, ...]) -> tuple[Any, ...] | None:
        new = tuple(_index_value(c, stored) for c, stored in zip(columns, old[:count], strict=True))
        # Every index column of the row is written (unchanged ones with their own value), so
        # one statement serves every row of a batch.
        return None if new == old[count:] else new

    read = (*(c.source for c in columns), *(c.index for c in columns))
    return BatchJob(table.fullname, table, read, tuple(c.index for c in columns), transform)


def _reindex_table(
    engine: Engine, columns: Sequence[IndexedColumn], batch_size: int, progress: _Progress
) -> None:
    """Reindex one table's columns; on a unique-constraint collision, name the row."""
    job = _reindex_job(columns[0].table, columns)
    for _ in range(_COLLISION_RETRIES):
        try:
            run_job(
                engine,
                job,
                batch_size=batch_size,
                listener=progress,
                start_after=progress.last_key,
                on_failure=_stop,
                # A row the application changed has the index the application wrote.
                reread_changed=False,
            )
            return
        except RotationError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            # The engine rolled the batch back as a whole. Write it again one row per
            # savepoint, rolled back too, to name the row that collides; if the collision
            # went away meanwhile, carry on from the last committed batch.
            collision = _find_collision(engine, job, columns, progress.last_key, batch_size)
            if collision is not None:
                raise collision from exc.__cause__
    raise RotationError(
        f"{job.label}: new index values kept colliding under a unique constraint while the "
        "application wrote; run again (committed batches are kept)"
    )


def _stop(failure: Failure) -> None:
    """Reindexing stops at the first row it cannot handle; its batch is not written."""
    table, key = failure.column, _describe_key(failure.primary_key)
    raise RotationError(
        f"{table} row {key}: {failure.reason}; fix or remove the value, then run again "
        "(committed batches are kept)"
    )


class _Progress(RunListener):
    """Counts committed batches into a :class:`ReindexReport`, saves the state, reports them."""

    def __init__(
        self,
        table: Table,
        report: ReindexReport,
        saved: _State | None,
        on_batch: Callable[[BatchReport], None] | None,
        after: tuple[Any, ...] | None,
    ):
        self.table = table
        self.report = report
        self.saved = saved
        self.on_batch = on_batch
        self.last_key = after
        self.seen = (0, 0, 0)

    def started(self, label: str, total: int) -> None:
        """Quiet: progress is reported per batch."""

    def batch(self, label: str, rows: int, report: JobReport) -> None:
        """Add a committed batch to the totals, save the state, then report it."""
        if report.last_key is None:
            return
        now = (report.scanned, report.written, report.concurrent)
        scanned, updated, skipped = (n - before for n, before in zip(now, self.seen, strict=True))
        self.seen = now
        self.last_key = report.last_key
        self.report.batches += 1
        self.report.scanned += scanned
        self.report.updated += updated
        self.report.skipped += skipped
        if self.saved is not None:
            self.saved.record(self.table, self.last_key, done=False)
        if self.on_batch is not None:
            self.on_batch(BatchReport(label, scanned, updated, skipped, self.last_key))

    def failure(self, failure: Failure) -> None:
        """Not reached: the first failure stops the run (see :func:`_stop`)."""

    def finished(self, report: JobReport) -> None:
        """Quiet: the caller reports the totals."""


def blind_index_status(
    engine: Engine, target: MetaData | Iterable[Table], *, tables: Iterable[str] | None = None
) -> list[ColumnStatus]:
    """Count each blind-index column's rows per index key, with SQL only (nothing decrypted).

    A column whose :attr:`ColumnStatus.stale` is 0 has every value under the writing key.
    """
    statuses = []
    with engine.connect() as conn:
        sql = _Sql(conn.dialect.name)
        for column in blind_index_columns(target, tables=tables):
            keyring = column.blind_index.active_keyring()
            key_ids = (keyring.primary.id, *(i for i in keyring.ids if i != keyring.primary.id))
            # count(CASE ...) rather than FILTER, which MariaDB lacks.
            counts = [
                func.count(case((sql.has_prefix(column.index, f"{kid}:"), 1))) for kid in key_ids
            ]
            total = func.count(column.index)
            no_index = func.count(
                case((and_(column.index.is_(None), column.source.is_not(None)), 1))
            )
            row = conn.execute(select(total, no_index, *counts).select_from(column.table)).one()
            by_key = dict(zip(key_ids, row[2:], strict=True))
            statuses.append(
                ColumnStatus(
                    label=column.label,
                    by_key=by_key,
                    other_keys=row[0] - sum(by_key.values()),
                    no_index=row[1],
                )
            )
    return statuses


def load_metadata(spec: str) -> list[MetaData]:
    """Import the models named by ``spec`` and return their ``MetaData``.

    ``spec`` is ``package.module:attribute`` (a ``MetaData``, or a declarative base or model
    with ``.metadata``) or just ``package.module`` (every ``MetaData`` its globals reach).
    The current directory is importable, as for ``python -m``.

    Raises:
        ConfigurationError: the module or attribute is missing, or holds no ``MetaData``.
    """
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import models module {module_name!r}: {exc}") from exc
    if attribute:
        try:
            candidates = [getattr(module, attribute)]
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r}") from None
    else:
        candidates = list(vars(module).values())
    found: list[MetaData] = []
    for candidate in candidates:
        metadata = candidate if isinstance(candidate, MetaData) else None
        if metadata is None:
            metadata = getattr(candidate, "metadata", None) if isinstance(candidate, type) else None
        if isinstance(metadata, MetaData) and all(metadata is not m for m in found):
            found.append(metadata)
    if not found:
        raise ConfigurationError(
            f"no SQLAlchemy MetaData found in {spec!r}; name it as module:Base or module:metadata"
        )
    return found


# -- values and collisions --------------------------------------------------------------------


def _index_value(column: IndexedColumn, stored: str | None) -> str | None:
    """The index value of a stored token under the writing key (None for NULL)."""
    if stored is None:
        return None
    try:
        plaintext = column.encrypted_type.process_result_value(stored, _DIALECT)
    except FieldCryptError as exc:
        raise RotationError(f"cannot recompute {column.index.name}: {exc}") from exc
    return column.blind_index.compute(plaintext)


def _find_collision(
    engine: Engine,
    job: BatchJob,
    columns: Sequence[IndexedColumn],
    after: tuple[Any, ...] | None,
    batch_size: int,
) -> RotationError | None:
    """Write the batch after ``after`` one row per savepoint, roll it all back, name a collision."""
    pk = list(job.table.primary_key.columns)
    width = len(pk)
    query = select(*pk, *(_raw(c) for c in job.read)).order_by(*pk).limit(batch_size)
    if after is not None:
        query = query.where(_Sql(engine.dialect.name).after(pk, after))
    with engine.connect() as conn, conn.begin() as transaction:
        for row in conn.execute(query).all():
            key = tuple(row[:width])
            new = job.transform(tuple(row[width:]))
            if not isinstance(new, tuple):
                continue
            statement = (
                update(job.table)
                .where(*(c == v for c, v in zip(pk, key, strict=True)))
                .values({c.key: v for c, v in zip(job.write, new, strict=True)})
            )
            try:
                with conn.begin_nested():
                    conn.execute(statement)
            except IntegrityError:
                return _collision(conn, job.label, columns, pk, key, row)
        transaction.rollback()
    return None


def _collision(
    conn: Connection,
    label: str,
    columns: Sequence[IndexedColumn],
    pk: Sequence[Column[Any]],
    key: tuple[Any, ...],
    row: Row[Any],
) -> RotationError:
    width = len(pk)
    others: list[str] = []
    for i, column in enumerate(columns):
        stored = row[width + i]
        if stored is None:
            continue
        plaintext = column.encrypted_type.process_result_value(stored, _DIALECT)
        candidates = column.blind_index.candidates(plaintext)
        if not candidates:
            continue
        query = (
            select(*pk)
            .where(column.index.in_(candidates))
            .where(or_(*(c != v for c, v in zip(pk, key, strict=True))))
            .limit(5)
        )
        others += [_describe(pk, tuple(r)) for r in conn.execute(query)]
    holders = f" (rows with the same normalized value: {'; '.join(others)})" if others else ""
    return RotationError(
        f"{label} row {_describe(pk, key)}: its new index value collides with another "
        f"row's under a unique constraint{holders}. The same value was probably written twice "
        "while two index keys were active; merge or change one of the rows, then run again "
        "(committed batches are kept)"
    )


def _describe(pk: Sequence[Column[Any]], key: tuple[Any, ...]) -> str:
    return _describe_key(tuple((c.name, v) for c, v in zip(pk, key, strict=True)))


def _describe_key(named: Sequence[tuple[str, Any]]) -> str:
    return ", ".join(f"{name}={value}" for name, value in named)


# -- resumable state ---------------------------------------------------------------------------


class _State:
    """Progress saved after every batch: the last committed primary key of each table."""

    def __init__(self, path: Path, fingerprint: list[str], tables: dict[str, Any]):
        self.path = path
        self.fingerprint = fingerprint
        self.tables = tables

    @classmethod
    def open(cls, path: str | os.PathLike[str], columns: Sequence[IndexedColumn]) -> _State:
        # A state is only valid for the same columns, index names and writing key; another
        # rotation (a newer key) must start over.
        fingerprint = sorted(
            f"{c.label}|{c.blind_index.name}|{c.blind_index.active_keyring().primary.id}"
            for c in columns
        )
        target = Path(path)
        tables: dict[str, Any] = {}
        if target.exists():
            try:
                data = json.loads(target.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"reindex state file {target} is unreadable ({type(exc).__name__}); "
                    "delete it to start over"
                ) from None
            if data.get("version") == _STATE_VERSION and data.get("fingerprint") == fingerprint:
                tables = data.get("tables", {})
        return cls(target, fingerprint, tables)

    def is_done(self, table: Table) -> bool:
        return bool(self.tables.get(table.fullname, {}).get("done"))

    def resume_point(self, table: Table, pk: Sequence[Column[Any]]) -> tuple[Any, ...] | None:
        saved = self.tables.get(table.fullname, {}).get("after")
        if saved is None:
            return None
        return tuple(_decode_key_part(c, v) for c, v in zip(pk, saved, strict=True))

    def record(self, table: Table, after: tuple[Any, ...] | None, *, done: bool) -> None:
        encoded = None if after is None else [_encode_key_part(table, v) for v in after]
        self.tables[table.fullname] = {"after": encoded, "done": done}
        payload = json.dumps(
            {"version": _STATE_VERSION, "fingerprint": self.fingerprint, "tables": self.tables},
            indent=2,
        )
        # Write-then-rename: a kill mid-write leaves the previous state, never a torn file.
        directory = self.path.parent
        with tempfile.NamedTemporaryFile(
            "w", dir=directory, prefix=f".{self.path.name}.", delete=False
        ) as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, self.path)


def _encode_key_part(table: Table, value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    raise RotationError(
        f"{table.fullname}: a resumable state supports int, str and UUID primary keys, not "
        f"{type(value).__name__}; run without a state file"
    )


def _decode_key_part(column: Column[Any], value: Any) -> Any:
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    if python_type is uuid.UUID and isinstance(value, str):
        return uuid.UUID(value)
    return value

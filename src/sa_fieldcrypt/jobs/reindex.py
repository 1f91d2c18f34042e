"""Reindexing: recompute blind-index columns in place, after an index key rotation or a
normalizer change.

``fieldcrypt reindex`` is a thin wrapper over :func:`reindex`::

    from sa_fieldcrypt.jobs import find_indexes, reindex, status

    report = reindex(engine, find_indexes("app.models"), state="reindex-state.json")
    print(status(engine, indexes=find_indexes("app.models")))   # every row under the new key

Each table is one job of the engine (:mod:`sa_fieldcrypt.jobs.engine`), which reads the
table's values and indexes and writes its indexes, so everything a rotation has, a reindex has:
batches in their own transactions, compare-and-swap writes, workers, shards, state files, dry
runs and one report vocabulary.

- Every row is read, since an index computed by an older normalizer looks no different in SQL
  from a right one; each value is decrypted and its index recomputed under the writing index
  key, and only rows whose stored index differs are written.
- A row the application changed between read and write is left alone: the application wrote
  its own index.
- A value that cannot be decrypted is reported by primary key and the run goes on (unless
  ``fail_fast``), as for rotation.
- A row whose new index value collides with another row's under a unique constraint (the same
  value written twice while two index keys were active) stops the run with a
  :class:`~sa_fieldcrypt.RotationError` naming both rows' primary keys; committed batches stay.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Column, Engine, Table, and_, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from sa_fieldcrypt.errors import RotationError
from sa_fieldcrypt.jobs.engine import BatchJob, Item, JobFactory, run_jobs
from sa_fieldcrypt.jobs.report import RunReport
from sa_fieldcrypt.jobs.targets import IndexedColumn, Source, find_again, portable

__all__ = ["reindex", "reindex_job"]


def reindex_job(
    engine: Engine, columns: Sequence[IndexedColumn], *, only_unindexed: bool = False
) -> BatchJob:
    """The job that recomputes the index ``columns`` (all of one table) under the writing key.

    Args:
        engine: the database the job runs on.
        columns: the index columns; one table's.
        only_unindexed: visit only rows with a value but no index value (as
            ``fieldcrypt reindex --check`` does to tell unindexed values from missing indexes).
    """
    table = columns[0].table
    count = len(columns)
    dialect = engine.dialect

    def index_value(column: IndexedColumn, stored: str | None) -> str | None:
        if stored is None:
            return None
        return column.blind_index.compute(column.codec.process_result_value(stored, dialect))

    def transform(old: tuple[Any, ...]) -> tuple[Any, ...] | None:
        new = tuple(index_value(c, stored) for c, stored in zip(columns, old[:count], strict=True))
        # Every index column of the row is written (unchanged ones with their own value), so
        # one statement serves every row of a batch.
        return None if new == old[count:] else new

    names = ", ".join(c.index.name for c in columns)
    label = f"{table.fullname}.{names}" if count == 1 else f"{table.fullname}.({names})"
    where = None
    if only_unindexed:
        where = or_(*(and_(c.index.is_(None), c.value.is_not(None)) for c in columns))
    keys = ", ".join(
        f"{c.blind_index.name}={c.blind_index.active_keyring().primary.id}" for c in columns
    )
    return BatchJob(
        label,
        table,
        (*(c.value for c in columns), *(c.index for c in columns)),
        tuple(c.index for c in columns),
        transform,
        where,
        resume_key=f"reindex {label} under {keys}",
        explain_conflict=functools.partial(_explain_conflict, columns),
    )


def reindex(
    engine: Engine, indexes: Iterable[IndexedColumn], *, workers: int = 1, **options: Any
) -> RunReport:
    """Recompute every blind-index column of ``indexes`` under the writing index key.

    One job per table. The other arguments (``batch_size``, ``dry_run``, ``fail_fast``,
    ``shard``, ``state``, ``listener``, ``before_write``) are those of
    :func:`~sa_fieldcrypt.jobs.run_job`.

    Raises:
        RotationError: a new index value collides with another row's under a unique
            constraint (naming both rows), or a database error; committed batches stay.
        ConfigurationError: no index key, or invalid options.
    """
    by_table: dict[Table, list[IndexedColumn]] = {}
    for column in indexes:
        by_table.setdefault(column.table, []).append(column)
    jobs: list[BatchJob | JobFactory] = []
    for columns in by_table.values():
        if workers == 1:
            jobs.append(reindex_job(engine, columns))
            continue
        # Each worker process finds the columns again and builds its own job.
        jobs.append(functools.partial(_build_again, tuple(portable(c) for c in columns)))
    # A row the application changed meanwhile has the index the application wrote.
    options.setdefault("reread_changed", False)
    return run_jobs(engine, jobs, workers=workers, **options)


def _build_again(found: tuple[tuple[Source, str], ...], engine: Engine) -> BatchJob:
    return reindex_job(engine, [find_again(source, label, engine) for source, label in found])


# -- unique-constraint conflicts ------------------------------------------------------------


def _explain_conflict(
    columns: Sequence[IndexedColumn], engine: Engine, items: list[Item]
) -> RotationError | None:
    """Write ``items`` one row per savepoint, roll it all back, and name a colliding row."""
    table = columns[0].table
    pk = list(table.primary_key.columns)
    with engine.connect() as conn:
        transaction = conn.begin()
        # One savepoint around them all: pysqlite begins no transaction before a SAVEPOINT, so
        # without it SQLite would commit each row's savepoint as it is released.
        conn.begin_nested()
        try:
            for key, old, new in items:
                statement = (
                    update(table)
                    .where(*(c == v for c, v in zip(pk, key, strict=True)))
                    .values({c.index.key: v for c, v in zip(columns, new, strict=True)})
                )
                try:
                    with conn.begin_nested():
                        conn.execute(statement)
                except IntegrityError:
                    return _collision(conn, columns, pk, key, old)
            return None
        finally:
            # The writes were only to find the row: none of them stays, whatever the outcome.
            transaction.rollback()


def _collision(
    conn: Connection,
    columns: Sequence[IndexedColumn],
    pk: Sequence[Column[Any]],
    key: tuple[Any, ...],
    old: tuple[Any, ...],
) -> RotationError:
    others: list[str] = []
    for column, stored in zip(columns, old, strict=False):
        if stored is None:
            continue
        plaintext = column.codec.process_result_value(stored, conn.dialect)
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
        f"{columns[0].table.fullname} row {_describe(pk, key)}: its new index value collides "
        f"with another row's under a unique constraint{holders}. The same value was probably "
        "written twice while two index keys were active; merge or change one of the rows, "
        "then run again (committed batches are kept)"
    )


def _describe(pk: Sequence[Column[Any]], key: tuple[Any, ...]) -> str:
    return ", ".join(f"{c.name}={v}" for c, v in zip(pk, key, strict=True))

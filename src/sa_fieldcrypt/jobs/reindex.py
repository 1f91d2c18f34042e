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
- A row whose new index value collides with another row's under a unique constraint (two rows
  hold the same normalized value) is reported as failed, naming the rows it collides with and
  why the constraint did not see the duplicate before (the row had no index value, as legacy
  data; its index was under another index key; or the normalizer changed); the run goes on,
  so one run lists every collision. Of the rows that hold one value, the first to be written
  (in primary-key order, or one the application wrote) keeps it.

A substring index (:class:`~sa_fieldcrypt.SubstringIndex`) is a job of its own over the owner
table (:func:`substring_job`): each page's side rows are read with it, each value decrypted
and its trigram values computed under the writing index key, and for the owners whose side
rows differ, the owner row is written with its own ciphertext (compare and swap: it locks
the row, so an application writing it meanwhile waits, and replaces the side rows after the
run's) and its side rows are replaced, in the batch's transaction. Once the walk over the
owners is complete, in a run that is not a shard, the side rows whose owner row is gone
(deleted where foreign keys are not enforced) are deleted too, in batches of owners: they
are hashes of values that no longer exist (:attr:`~sa_fieldcrypt.jobs.JobReport.orphans`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Column,
    Engine,
    Table,
    UniqueConstraint,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from sa_fieldcrypt.blind_index import BlindIndex, IndexValue, SubstringIndex, parse_index_value
from sa_fieldcrypt.errors import DecryptionError, RotationError
from sa_fieldcrypt.jobs.engine import (
    DEFAULT_BATCH_SIZE,
    SKIP,
    BatchJob,
    Item,
    JobFactory,
    Skip,
    in_transaction,
    run_jobs,
)
from sa_fieldcrypt.jobs.report import (
    Failure,
    JobReport,
    PrimaryKey,
    RunListener,
    RunReport,
    format_key,
    word_for,
)
from sa_fieldcrypt.jobs.sql import DialectSql, driver_message, keys_in
from sa_fieldcrypt.jobs.targets import (
    IndexedColumn,
    Source,
    SubstringColumn,
    find_again,
    jobs_per_target,
    portable,
)
from sa_fieldcrypt.jobs.throttle import Throttle

__all__ = [
    "index_check_job",
    "reindex",
    "reindex_job",
    "substring_check_job",
    "substring_job",
]


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
    count = _value_count(columns)
    spans = []  # where each index's values are in a row
    start = 0
    for c in columns:
        spans.append(slice(start, start + len(c.values)))
        start += len(c.values)

    def transform(key: tuple[Any, ...], old: tuple[Any, ...]) -> tuple[Any, ...] | None:
        new = tuple(
            c.blind_index.compute(c.plaintext(old[span], key))
            for c, span in zip(columns, spans, strict=True)
        )
        # Every index column of the row is written (unchanged ones with their own value), so
        # one statement serves every row of a batch.
        return None if new == old[count:] else new

    names = ", ".join(c.index.name for c in columns)
    label = f"{table.fullname}.{names}" if count == 1 else f"{table.fullname}.({names})"
    where = None
    if only_unindexed:
        where = or_(
            *(and_(c.index.is_(None), *(v.is_not(None) for v in c.values)) for c in columns)
        )
    # The writing key, cost parameters, size and normalizer: a state file of a run under
    # others is not resumed (the rows it passed hold index values computed otherwise).
    keys = ", ".join(
        f"{c.blind_index.name}={c.blind_index.active_keyring().primary.id}{c.blind_index.cost}"
        f" {_computed_with(c.blind_index)}"
        for c in columns
    )
    return BatchJob(
        label,
        table,
        (*(v for c in columns for v in c.values), *(c.index for c in columns)),
        tuple(c.index for c in columns),
        transform,
        where,
        resume_key=f"reindex {label} under {keys}",
        explain_conflict=functools.partial(_explain_conflict, label, columns),
    )


def index_check_job(engine: Engine, column: IndexedColumn) -> BatchJob:
    """The job that checks each row's stored index against its decrypted value; writes nothing.

    A row fails when its index is of another value: the row was altered (a value copied in
    from another row, which reads as valid ciphertext) or its index is stale. Rows without an
    index value, or with one under an index key the keyring no longer holds, are not checked;
    nor are values that do not decrypt, which verifying their column reports.
    """
    blind_index = column.blind_index
    where = column.label if column.compound else f"{column.table.fullname}.{column.values[0].name}"

    def transform(key: tuple[Any, ...], old: tuple[Any, ...]) -> Skip | None:
        try:
            value = column.plaintext(old[:-1], key)
        except DecryptionError:
            return SKIP
        blind_index.check(value, old[-1], column=where)
        return None

    return BatchJob(
        column.label,
        column.table,
        (*column.values, column.index),
        (),
        transform,
        and_(*(v.is_not(None) for v in column.values), column.index.is_not(None)),
        resume_key=f"verify index {column.label}",
    )


def substring_job(engine: Engine, target: SubstringColumn) -> BatchJob:
    """The job that rewrites a substring index's side rows under the writing index key.

    Every owner row is read with its side rows; an owner whose side rows are not the trigram
    values of its decrypted value under the writing key (missing, stale, under an older key)
    is written: its ciphertext is written back as it is, compared and swapped, and its side
    rows are deleted and inserted anew in the same transaction. An owner the application
    changed meanwhile is left alone: the application wrote its side rows.
    """
    substring = target.substring

    def transform(key: tuple[Any, ...], old: tuple[Any, ...]) -> tuple[Any, ...] | None:
        wanted = tuple(sorted(substring.trigram_values(target.plaintext(old[0], key))))
        # The ciphertext as it is, then the side rows' values: written without decrypting
        # and hashing the value again.
        return None if wanted == (old[1] or ()) else (old[0], wanted)

    primary = substring.active_keyring().primary.id
    return BatchJob(
        target.label,
        target.table,
        (target.value,),
        (target.value,),
        transform,
        # What the side rows are computed with: a state file of a run under others is not
        # resumed (owners it passed hold trigram values of another size, key or text).
        resume_key=f"reindex {target.label} under {primary} {_computed_with(substring)}",
        side=_SideRows(target),
    )


def substring_check_job(engine: Engine, target: SubstringColumn) -> BatchJob:
    """The job that checks each owner's side rows against its decrypted value; writes nothing.

    An owner fails when its side rows are not the trigram values of its value under the
    index key they are under (rows altered, or stale after a normalizer change). Owners
    without side rows, or with side rows under an index key the keyring no longer holds,
    are not checked (``fieldcrypt status`` counts them); nor are values that do not
    decrypt, which verifying their column reports.
    """
    substring = target.substring
    where = f"{target.table.fullname}.{target.value.name}"

    def transform(key: tuple[Any, ...], old: tuple[Any, ...]) -> Skip | None:
        held: tuple[str, ...] = old[1] or ()
        if not held:
            return SKIP
        try:
            value = target.plaintext(old[0], key)
        except DecryptionError:
            return SKIP
        verdict = substring.matches(value, held)
        if verdict is None:
            return SKIP
        if verdict:
            return None
        raise DecryptionError(
            f"the value does not match its side rows in {target.label}: they were altered, "
            "or are stale; `fieldcrypt reindex` rewrites stale side rows",
            column=where,
        )

    return BatchJob(
        target.label,
        target.table,
        (target.value,),
        (),
        transform,
        resume_key=f"verify substring index {target.label} {_computed_with(substring)}",
        side=_SideRows(target),
    )


def _computed_with(index: BlindIndex | SubstringIndex) -> str:
    """The parameters that decide an index's values (a substring index's trigram values),
    besides its key and cost parameters.

    A normalizer is named by its ``name`` (a :class:`~sa_fieldcrypt.Transform`'s) or its
    qualified name: one changed in place under the same name is not told apart.
    """
    normalizer = index.normalizer
    named = getattr(normalizer, "name", None)
    if normalizer is None:
        named = "none"
    elif not isinstance(named, str):
        module = getattr(normalizer, "__module__", "")
        named = f"{module}.{getattr(normalizer, '__qualname__', type(normalizer).__qualname__)}"
    return f"(name={index.name}, bits={index.bits}, normalizer={named})"


@dataclass(frozen=True)
class _SideRows:
    """The side rows of a substring index's owners, read and rewritten by the engine."""

    target: SubstringColumn

    def read(self, conn: Connection, keys: list[tuple[Any, ...]]) -> Mapping[tuple[Any, ...], Any]:
        """Each owner's stored trigram values, sorted."""
        return self.target.side_rows(conn, keys)

    def write(self, conn: Connection, sql: DialectSql, items: list[Item]) -> int:
        """Replace the side rows of the owners written with their values' trigram values.

        Each item's new values are the ciphertext and the trigram values the transform
        computed. Returns the side rows inserted, which a throttle counts with the owners.
        """
        if not items:
            return 0
        target = self.target
        conn.execute(target.side.delete().where(target.owned_by([k for k, _, _ in items])))
        rows = [[*key, value] for key, _, (_, values) in items for value in values]
        if not rows:
            return 0
        # A batch's side rows (a hundred per owner for a short note) as JSON parameters: on
        # PostgreSQL three times the rows per second of a multi-row INSERT, whose parameters
        # the driver sends one by one.
        columns = [*target.owner, target.trigram]
        json_rows = sql.json_rows(conn.dialect, [c.type for c in columns], keys=len(columns) - 1)
        if json_rows is not None:
            bulk = insert(target.side).from_select(columns, select(*json_rows))
            for doc in sql.json_documents(rows):
                conn.execute(bulk, {"doc": doc})
        else:
            names = [c.name for c in columns]
            conn.execute(target.side.insert(), [dict(zip(names, r, strict=True)) for r in rows])
        return len(rows)


def reindex(
    engine: Engine,
    indexes: Iterable[IndexedColumn | SubstringColumn],
    *,
    workers: int = 1,
    **options: Any,
) -> RunReport:
    """Recompute every blind index and substring index of ``indexes`` under the writing key.

    One job per table, and one per substring index (:func:`substring_job`). After a substring
    index's walk over its owners is complete (not stopped early), in a run that is not a
    ``shard`` (which sees only its share of the owners), the side rows whose owner row is gone
    are deleted, ``batch_size`` owners per transaction; a dry run counts them. Their count is
    the job's :attr:`~sa_fieldcrypt.jobs.JobReport.orphans`. The other
    arguments (``batch_size``, ``dry_run``, ``fail_fast``, ``shard``, ``state``,
    ``listener``, ``before_write``, ``throttle``, ``transform_process``) are those of
    :func:`~sa_fieldcrypt.jobs.run_job`; ``workers`` and ``transform_process`` need indexes
    found by name (:func:`~sa_fieldcrypt.jobs.find_indexes`,
    :func:`~sa_fieldcrypt.jobs.find_substring_indexes`).

    Returns:
        One report per table. A row whose new index value collides with another row's under
        a unique constraint is one of its failures, and
        :attr:`~sa_fieldcrypt.jobs.Failure.collides_with` names the other rows; the other
        rows are written.

    Raises:
        RotationError: a database error; committed batches stay.
        ConfigurationError: no index key, or invalid options.
    """
    by_table: dict[Table, list[IndexedColumn]] = {}
    substrings: list[SubstringColumn] = []
    for column in indexes:
        if isinstance(column, SubstringColumn):
            substrings.append(column)
        else:
            by_table.setdefault(column.table, []).append(column)
    jobs: list[BatchJob | JobFactory] = []
    for columns in by_table.values():
        if workers == 1 and any(c.source is None for c in columns):
            jobs.append(reindex_job(engine, columns))
            continue
        # Each process that runs it (workers, a transform process) finds the columns again
        # and builds its own job.
        jobs.append(functools.partial(_build_again, tuple(portable(c) for c in columns)))
    jobs += jobs_per_target(engine, substrings, substring_job, workers)
    # A row the application changed meanwhile has the index the application wrote.
    options.setdefault("reread_changed", False)
    run = run_jobs(engine, jobs, workers=workers, **options)
    if options.get("shard") is None:
        # The substring jobs come after one job per table; with fail_fast the run may have
        # stopped before some of them, which have no report.
        for target, report in zip(substrings, run.jobs[len(by_table) :], strict=False):
            if report.completed:
                _sweep_orphans(
                    engine,
                    target,
                    report,
                    batch_size=options.get("batch_size", DEFAULT_BATCH_SIZE),
                    dry_run=bool(options.get("dry_run")),
                    throttle=options.get("throttle"),
                    listener=options.get("listener") or RunListener(),
                )
    return run


def _build_again(found: tuple[tuple[Source, str], ...], engine: Engine) -> BatchJob:
    again = [find_again(source, label, engine, kind=IndexedColumn) for source, label in found]
    return reindex_job(engine, again)


# -- side rows of owners that are gone ------------------------------------------------------


def _sweep_orphans(
    engine: Engine,
    target: SubstringColumn,
    report: JobReport,
    *,
    batch_size: int,
    dry_run: bool,
    throttle: Throttle | None,
    listener: RunListener,
) -> None:
    """Delete the side rows of ``target`` whose owner row is gone; count them in ``report``.

    Owners with a NULL value are not swept here: the walk deleted their side rows, under the
    owner row's lock. In a dry run the side rows are counted and nothing is deleted.
    """
    started = time.monotonic()
    gone = ~target.has_owner()
    try:
        if dry_run:
            with engine.connect() as conn:
                counted = select(func.count()).select_from(target.side).where(gone)
                report.orphans += int(conn.execute(counted).scalar_one())
            return
        with contextlib.ExitStack() as stack:
            watched = None if throttle is None else stack.enter_context(throttle.watching(engine))
            if watched is not None:
                batch_size = watched.batch_size(batch_size)
            conn = stack.enter_context(engine.connect())
            sql = DialectSql(conn.dialect.name)
            # InnoDB's locking reads hold gap locks, which keep an absent owner from being
            # inserted until the batch commits (see _sweep_batch), only under REPEATABLE
            # READ. Elsewhere the connection's own level: a real transaction all the same,
            # on an AUTOCOMMIT engine too.
            level = "REPEATABLE READ" if sql.mysql else conn.default_isolation_level
            conn = conn.execution_options(isolation_level=level)
            after: tuple[Any, ...] | None = None

            def resumed(seconds: float) -> None:
                report.paused_seconds += seconds
                listener.resumed(target.label, seconds)

            while True:
                if watched is not None:
                    report.throttled_seconds += watched.wait(
                        on_pause=functools.partial(listener.paused, target.label),
                        on_resume=resumed,
                    )
                keys, deleted = in_transaction(
                    conn, _sweep_batch, sql, target, gone, after, batch_size
                )
                report.orphans += deleted
                if watched is not None:
                    watched.charge(deleted)
                if len(keys) < batch_size:
                    return
                after = keys[-1]
    except SQLAlchemyError as exc:
        raise RotationError(
            f"{target.label}: database error while deleting the side rows of owners that are "
            f"gone ({driver_message(exc)}); the side rows of every owner were rewritten and "
            "what was deleted stays deleted: rerun to delete the rest (it reads every owner "
            "again)"
        ) from exc
    finally:
        report.elapsed += time.monotonic() - started


def _sweep_batch(
    conn: Connection,
    sql: DialectSql,
    target: SubstringColumn,
    gone: ColumnElement[bool],
    after: tuple[Any, ...] | None,
    size: int,
) -> tuple[list[tuple[Any, ...]], int]:
    """Delete the side rows of the next ``size`` owners after ``after`` that are gone.

    Returns the owner keys found gone (where the next batch starts after) and the side rows
    deleted.
    """
    owner = target.owner
    where = [gone] if after is None else [gone, sql.after(owner, after)]
    page = select(*owner).where(*where).distinct().order_by(*owner).limit(size)
    keys = [tuple(row) for row in conn.execute(page)]
    if not keys:
        return keys, 0
    doomed = keys
    # An application inserts an owner and its side rows in one transaction (the flush), the
    # owner first. Its side rows must not be deleted as orphans while that is uncommitted:
    # - PostgreSQL (any isolation level): the DELETE below checks that the owner is gone in
    #   the same statement, under one snapshot, which sees both of the transaction's rows or
    #   neither. Side rows it cannot see it does not delete; those it sees have their owner.
    # - SQLite: one writer at a time; the DELETE sees only what is committed.
    # - InnoDB: a DELETE reads the side rows as committed now (a locking read, which waits
    #   for the inserting transaction), not as of a snapshot; whether its NOT EXISTS reads
    #   the owners so too depends on the isolation level and binlog format, and a snapshot
    #   older than the insert's commit would miss the owner. So the owners are read first
    #   with a locking read under REPEATABLE READ: it waits for an owner being inserted and
    #   then sees it, and for an absent one holds a gap lock, so that none can be inserted
    #   until this batch commits; only the keys it does not find are deleted. Owner rows
    #   first, then side rows: the order every other writer locks them in.
    if sql.mysql:
        pk = list(target.table.primary_key.columns)
        match = keys_in(pk, keys)
        locked = select(*pk).where(match).with_for_update(read=True)
        present = {tuple(row) for row in conn.execute(locked)}
        doomed = [k for k in keys if k not in present]
    if not doomed:
        return keys, 0
    deleted = conn.execute(target.side.delete().where(target.owned_by(doomed), gone))
    return keys, max(deleted.rowcount, 0)


# -- unique-constraint conflicts ------------------------------------------------------------


def _explain_conflict(
    label: str, columns: Sequence[IndexedColumn], engine: Engine, items: list[Item]
) -> list[Failure]:
    """Write ``items`` one row per savepoint, roll it all back, and name every colliding row.

    Rows are written in primary-key order, so of two rows of the batch with the same value
    the first is written and the second collides with it, as they would one batch apart.
    """
    table = columns[0].table
    pk = list(table.primary_key.columns)
    failures: list[Failure] = []
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
                    failures.append(_collision(conn, label, columns, pk, key, old, new))
            return failures
        finally:
            # The writes were only to find the rows: none of them stays, whatever the outcome.
            transaction.rollback()


def _collision(
    conn: Connection,
    label: str,
    columns: Sequence[IndexedColumn],
    pk: Sequence[Column[Any]],
    key: tuple[Any, ...],
    old: tuple[Any, ...],
    new: tuple[Any, ...],
) -> Failure:
    """The failure of a row whose new index values a constraint refused: who holds them, why."""
    names = [c.name for c in pk]
    count = _value_count(columns)
    for column, value, before in zip(columns, new, old[count:], strict=True):
        if value is None or value == before:
            continue
        holders, constraint = _holders(conn, column, pk, key, value)
        if holders:
            keys = tuple(tuple(zip(names, h, strict=True)) for h in holders)
            reason = _collision_reason(column, constraint, keys, before, value)
            return Failure(label, tuple(zip(names, key, strict=True)), reason, keys)
    return Failure(
        label,
        tuple(zip(names, key, strict=True)),
        "a constraint refused its new index value, and no other row holds that value now "
        "(another constraint, or the other row changed meanwhile); run reindex again",
    )


def _collision_reason(
    column: IndexedColumn,
    constraint: str | None,
    holders: tuple[PrimaryKey, ...],
    before: str | None,
    value: str,
) -> str:
    others = " and ".join(format_key(h) for h in holders)
    under = f"unique constraint {constraint}" if constraint else "a unique constraint"
    theirs = word_for(len(holders), "that row's", "theirs")
    head = (
        f"the same normalized value as {word_for(len(holders), 'row')} {others} (its new "
        f"{column.index.name} collides with {theirs} under {under})"
    )
    was = None if before is None else parse_index_value(before)
    now = _parts(value)
    if before is None:
        why = (
            "this row had no index value, so the constraint never compared the two: a "
            "duplicate in data written before the index or without it (legacy data)"
        )
    elif was is not None and was.key_id != now.key_id:
        why = (
            f"this row's index value is under index key {was.key_id!r} and the other "
            f"row's under {now.key_id!r}, so the constraint, which compares stored index "
            "values, could not see the duplicate (written while both keys were active)"
        )
    elif was is not None and was.cost != now.cost:
        why = (
            "this row's index value was made with other cost parameters (slow=), so the "
            "constraint, which compares stored index values, could not see the duplicate"
        )
    else:
        why = (
            "this row's index value was computed from the value normalized differently (the "
            "normalizer changed, or the value changed without its index), so the constraint "
            "could not see the duplicate"
        )
    return f"{head}; {why}. Merge the rows or change one, then run reindex again"


def _value_count(columns: Sequence[IndexedColumn]) -> int:
    """How many value columns a row of the job holds before its index columns."""
    return sum(len(c.values) for c in columns)


def _parts(index_value: str) -> IndexValue:
    """The parts of an index value this run computed (always well formed)."""
    return cast("IndexValue", parse_index_value(index_value))


def _holders(
    conn: Connection,
    column: IndexedColumn,
    pk: Sequence[Column[Any]],
    key: tuple[Any, ...],
    value: str,
) -> tuple[list[tuple[Any, ...]], str | None]:
    """Other rows holding ``value`` where a unique constraint on the index compares them.

    A constraint over more columns (``(station_id, email_bidx)``) counts only rows that agree
    with this row on the others; with no constraint in the models, every row with the value.
    """
    table = column.table
    this_row = [c == v for c, v in zip(pk, key, strict=True)]
    not_this_row = or_(*(c != v for c, v in zip(pk, key, strict=True)))
    for name, others in _unique_groups(table, column.index) or [(None, [])]:
        where = [column.index == value, not_this_row]
        if others:
            row = conn.execute(select(*others).where(*this_row)).one_or_none()
            if row is None or any(v is None for v in row):
                continue  # a NULL in the constraint's columns never collides
            where += [c == v for c, v in zip(others, row, strict=True)]
        stmt = select(*pk).where(*where).order_by(*pk).limit(_MAX_HOLDERS)
        holders = [tuple(r) for r in conn.execute(stmt)]
        if holders:
            return holders, name
    return [], None


#: Rows named as holding the value a row collides with (a unique constraint allows one).
_MAX_HOLDERS = 5


def _unique_groups(table: Table, index: Column[Any]) -> list[tuple[str | None, list[Column[Any]]]]:
    """Each unique constraint or index of the models over ``index``: its name, other columns."""
    groups: list[tuple[str | None, list[Column[Any]]]] = []
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint) and constraint.columns.contains_column(index):
            others = [c for c in constraint.columns if c is not index]
            groups.append((_name(constraint.name), others))
    for unique in table.indexes:
        if unique.unique and unique.columns.contains_column(index):
            others = [c for c in unique.columns if c is not index]
            groups.append((_name(unique.name), others))
    return groups


def _name(name: object) -> str | None:
    return name if isinstance(name, str) else None

"""Rotation and verification: jobs that re-encrypt or decrypt every value of a column.

``fieldcrypt rotate`` and ``fieldcrypt verify`` are thin wrappers over :func:`rotate` and
:func:`verify`, which user code can call too::

    from sqlalchemy import create_engine
    from sa_fieldcrypt.jobs import find_columns, rotate, status

    engine = create_engine(url, hide_parameters=True)
    columns = find_columns("myapp.models")     # every encrypted column of the models
    print(status(engine, columns))             # rows per key id, legacy, plaintext, NULL
    report = rotate(engine, columns)           # re-encrypt under the primary key
    assert report.ok

Rotation selects, in SQL, only values *not* under the primary key, so a rerun never decrypts
what an earlier run finished: it is resumable and idempotent, whatever stopped it. Values are
re-encrypted through the column's own type: the decrypted bytes are encrypted again as they
are, never turned into Python values. Everything else (batches, compare-and-swap, workers,
shards, state files) is the engine's (:mod:`sa_fieldcrypt.jobs.engine`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine, and_

from sa_fieldcrypt.cipher import TOKEN_PREFIX, inspect_token
from sa_fieldcrypt.errors import DecryptionError
from sa_fieldcrypt.jobs.engine import SKIP, BatchJob, JobFactory, Skip, run_jobs
from sa_fieldcrypt.jobs.report import RunReport
from sa_fieldcrypt.jobs.sql import LEGACY_TOKEN_START, DialectSql, stored_text
from sa_fieldcrypt.jobs.targets import EncryptedColumn, Source, find_again

__all__ = ["rotate", "rotation_job", "verification_job", "verify"]

_TOKEN_STARTS = (TOKEN_PREFIX, LEGACY_TOKEN_START)


def rotation_job(
    engine: Engine, target: EncryptedColumn, *, encrypt_plaintext: bool = False
) -> BatchJob:
    """The job that moves ``target``'s values under its primary key.

    Values already under the primary key are not selected at all. Values under other keys
    and legacy tokens are re-encrypted; plaintext values are encrypted if
    ``encrypt_plaintext``, else skipped.
    """
    codec = target.codec
    prefix = codec.written_prefix()
    stored = stored_text(target.column)
    sql = DialectSql(engine.dialect.name)
    where = and_(stored.is_not(None), ~sql.has_prefix(stored, prefix))

    def transform(old: tuple[Any, ...]) -> tuple[Any, ...] | Skip:
        value = old[0]
        if value.startswith(_TOKEN_STARTS):
            try:
                return (codec.reencrypt(value),)
            except DecryptionError:
                # A value can start like a token and still be plaintext ("fc1:" alone).
                if inspect_token(value).kind != "plaintext":
                    raise
        if not encrypt_plaintext:
            return SKIP
        return (codec.encrypt_plaintext(value),)

    # The saved position of a rotation holds only while the same key writes.
    resume = f"rotate {target.label} to {prefix}" + (" with plaintext" if encrypt_plaintext else "")
    return BatchJob(
        target.label,
        target.table,
        (target.column,),
        (target.column,),
        transform,
        where,
        resume_key=resume,
    )


def verification_job(engine: Engine, target: EncryptedColumn) -> BatchJob:
    """The job that decrypts every value of ``target`` and writes nothing.

    Values are read as the application reads them (an :class:`EncryptedJSON` value must
    also parse). Plaintext values fail, unless the column has ``allow_plaintext``: then
    they are skipped.
    """
    codec = target.codec
    dialect = engine.dialect
    stored = stored_text(target.column)

    def transform(old: tuple[Any, ...]) -> Skip | None:
        value = old[0]
        if codec.allow_plaintext and inspect_token(value).kind == "plaintext":
            return SKIP
        codec.process_result_value(value, dialect)
        return None

    return BatchJob(
        target.label,
        target.table,
        (target.column,),
        (),
        transform,
        stored.is_not(None),
        resume_key=f"verify {target.label}",
    )


JobBuilder = Callable[[Engine, EncryptedColumn], BatchJob]


def _build_again(build: JobBuilder, source: Source | None, label: str, engine: Engine) -> BatchJob:
    return build(engine, find_again(source, label, engine))


def _column_jobs(
    engine: Engine, columns: Iterable[EncryptedColumn], build: JobBuilder, workers: int
) -> list[BatchJob | JobFactory]:
    if workers == 1:
        return [build(engine, target) for target in columns]
    jobs: list[BatchJob | JobFactory] = []
    for target in columns:
        find_again(target.source, target.label, engine)  # refuses, early, what cannot be found
        # Each worker process finds the column again and builds its own job.
        jobs.append(functools.partial(_build_again, build, target.source, target.label))
    return jobs


def rotate(
    engine: Engine,
    columns: Iterable[EncryptedColumn],
    *,
    encrypt_plaintext: bool = False,
    workers: int = 1,
    **options: Any,
) -> RunReport:
    """Re-encrypt every value of ``columns`` that is not under its primary key.

    Safe to run while the application writes, to stop at any moment and to run again.
    ``encrypt_plaintext`` also encrypts values stored as plaintext. The other arguments
    (``batch_size``, ``dry_run``, ``fail_fast``, ``shard``, ``state``, ``listener``,
    ``before_write``) are those of :func:`~sa_fieldcrypt.jobs.run_job`.

    Returns:
        One report per column; ``report.ok`` is False if any value could not be decrypted.
    """
    build = functools.partial(rotation_job, encrypt_plaintext=encrypt_plaintext)
    jobs = _column_jobs(engine, columns, build, workers)
    return run_jobs(engine, jobs, workers=workers, **options)


def verify(
    engine: Engine, columns: Iterable[EncryptedColumn], *, workers: int = 1, **options: Any
) -> RunReport:
    """Decrypt every value of ``columns`` and report those that fail; change nothing.

    The arguments are those of :func:`~sa_fieldcrypt.jobs.run_job`; a dry run is the same
    as a run, since nothing is written either way.
    """
    jobs = _column_jobs(engine, columns, verification_job, workers)
    return run_jobs(engine, jobs, workers=workers, **options)

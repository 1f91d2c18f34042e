"""Rotation and verification: jobs that re-encrypt or decrypt every value of a column.

``fieldcrypt rotate`` and ``fieldcrypt verify`` are thin wrappers over :func:`rotate` and
:func:`verify`, which user code can call too::

    from sqlalchemy import create_engine
    from sa_fieldcrypt.jobs import find_columns, rotate, status

    engine = create_engine(url, hide_parameters=True)
    columns = find_columns("myapp.models")     # every encrypted column of the models
    print(status(engine, columns))             # rows per key id, unbound, legacy, plaintext...
    report = rotate(engine, columns)           # re-encrypt under the primary key, bound
    assert report.ok

Rotation selects, in SQL, only values *not* as the column writes them now (under the primary
key, and bound to the column unless it says ``context=False``), so a rerun never decrypts
what an earlier run finished: it is resumable and idempotent, whatever stopped it. Values are
re-encrypted through the column's own type: the decrypted bytes are encrypted again as they
are, never turned into Python values. Everything else (batches, compare-and-swap, workers,
shards, state files) is the engine's (:mod:`sa_fieldcrypt.jobs.engine`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, or_

from sa_fieldcrypt.cipher import NOT_A_TOKEN, TOKEN_PREFIX, inspect_token
from sa_fieldcrypt.errors import ConfigurationError, DecryptionError, RotationError, ValueTypeError
from sa_fieldcrypt.jobs.engine import SKIP, BatchJob, Skip, Transform, run_job, run_jobs
from sa_fieldcrypt.jobs.reindex import index_check_job, substring_check_job
from sa_fieldcrypt.jobs.report import QuietListener, RunReport, plural
from sa_fieldcrypt.jobs.sql import DialectSql, stored_text
from sa_fieldcrypt.jobs.targets import (
    EncryptedColumn,
    IndexedColumn,
    SubstringColumn,
    jobs_per_target,
)
from sa_fieldcrypt.keys import BOUND_FLAG, PADDED_FLAG, ROW_FLAG
from sa_fieldcrypt.types import EncryptedType

__all__ = [
    "plaintext_to_token",
    "reencrypt",
    "rotate",
    "rotation_job",
    "verification_job",
    "verify",
    "written_prefix",
]


def written_prefix(codec: EncryptedType) -> str:
    """The header every token ``codec`` writes now starts with: its primary key's, bound or not.

    A stored value with this header needs no re-encryption, so rotation skips it in SQL; for a
    bound column that is the bound header, so unbound tokens are rewritten bound, and for a
    padded one the padded header (``...:cp:``), so a change of padding is rotated in too.

    Raises:
        ConfigurationError: a ``context=True`` type not attached to a column yet.
    """
    context = codec.context
    if context is True:
        raise ConfigurationError(
            f"{codec.column_label}: context=True takes its name from the column the type is "
            "attached to, and it is not attached yet; rotate columns found by find_columns() "
            "or reflect_column()"
        )
    prefix = codec.active_keyring().primary.token_prefix
    flag = "" if context is False else ROW_FLAG if codec.row_bound else BOUND_FLAG
    if codec.padding_block is not None:
        flag += PADDED_FLAG
    return f"{prefix}{flag}:" if flag else prefix


def reencrypt(codec: EncryptedType, token: str, row_key: Sequence[Any] | None = None) -> str:
    """``token``'s content encrypted under ``codec``'s primary key (and its context).

    The token is decrypted with whichever key it names (or, for a value in a legacy format
    the column declares, as that format reads it, into the column's own encoding) and the
    decrypted bytes are encrypted again as they are: they are never turned into a Python
    value, so what the column reads back is unchanged. A row-bound column
    (``codec.row_bound``) needs the primary-key values of the token's row.

    Raises:
        DecryptionError: the value is not a token, or does not decrypt.
    """
    # Only allow_plaintext makes decrypt_token() accept plaintext, as it decides; refuse it here.
    if codec.allow_plaintext and not codec.is_ciphertext(token):
        raise DecryptionError(NOT_A_TOKEN, column=codec.column_label)
    return codec.encrypt_bytes(codec.decrypt_token(token, row_key), row_key)


# The Python types of columns whose values are stored as UTF-8 text (``object``: JSON).
_TEXT_VALUES = (str, bytes, object)


def plaintext_to_token(
    codec: EncryptedType, stored: str, row_key: Sequence[Any] | None = None
) -> str:
    """A value stored as plaintext text, encrypted as ``codec``'s column stores it.

    The text is encoded as UTF-8, the encoding the column reads it back with, and the token
    is read back once, so text the column could not read (not JSON, for
    :class:`~sa_fieldcrypt.EncryptedJSON`) is refused rather than written.

    Only columns of text, bytes or JSON values (``EncryptedText``, ``EncryptedBytes``,
    ``EncryptedJSON``) store their plaintext as UTF-8 text; a typed column such as
    ``EncryptedInteger`` stores an encoding of its own, which stored text is not.

    Raises:
        ValueTypeError: the value is, or looks like, a token (``cipher.looks_like_token``: an
            edited token is not plaintext either), it is not what the column stores, or the
            column is a typed one.
    """
    if codec.python_type not in _TEXT_VALUES:
        raise ValueTypeError(
            f"{codec.column_label}: {type(codec).__name__} stores {codec.python_type_name} "
            "values in an encoding of their own, not as text, so stored text cannot be "
            "encrypted in place; copy the values into a new encrypted column instead"
        )
    if codec.is_ciphertext(stored):
        raise ValueTypeError(
            f"{codec.column_label}: the stored value is already an encrypted token, or looks like "
            "one (or a value in a legacy format the column declares); "
            "plaintext_to_token() encrypts plaintext values only"
        )
    token = codec.encrypt_bytes(stored.encode("utf-8", "surrogatepass"), row_key)
    try:
        codec.from_stored(token, row_key)
    except DecryptionError:
        raise ValueTypeError(
            f"{codec.column_label}: the plaintext value is not valid for "
            f"{type(codec).__name__} ({codec.python_type_name})"
        ) from None
    return token


def rotation_job(
    engine: Engine, target: EncryptedColumn, *, encrypt_plaintext: bool = False
) -> BatchJob:
    """The job that moves ``target``'s values under its primary key.

    Values already under the primary key are not selected at all. Values under other keys
    and legacy tokens are re-encrypted; plaintext values are encrypted if
    ``encrypt_plaintext``, else skipped. A value that looks like a token
    (``cipher.looks_like_token``) and does not decrypt is a failure, never encrypted as data.

    Values in a legacy format the column declares (:mod:`sa_fieldcrypt.legacy`) are rewritten
    as its own tokens, whatever ``encrypt_plaintext`` says; one in such a format's shape that
    does not open is a failure.
    In a column with a context, unbound tokens (under any key) and legacy values are rewritten
    bound (in a row-bound column, so are tokens bound to the column only), unless the
    column is strict (``allow_unbound=False``, or ``FIELDCRYPT_ALLOW_UNBOUND=false``): then
    each is a failure of the run, not rewritten.
    Rotation cannot tell a value the column wrote before it was bound from one copied in from
    elsewhere, so binding it must stay a choice made before the column is strict.
    """
    codec = target.codec
    prefix = written_prefix(codec)
    strict = codec.context is not False and not codec.allow_unbound
    row_bound = codec.row_bound
    stored = stored_text(target.column)
    sql = DialectSql(engine.dialect.name)
    stale = ~sql.has_prefix(stored, prefix)
    if prefix == codec.active_keyring().primary.token_prefix:
        # An unflagged header (``fc1:id:``) is a prefix of the padded one (``fc1:id:p:``) too.
        # Other flags there are bindings this column cannot open: status counts them apart.
        stale = or_(stale, sql.has_prefix(stored, f"{prefix}{PADDED_FLAG}:"))
    where = and_(stored.is_not(None), stale)

    def transform(key: tuple[Any, ...], old: tuple[Any, ...]) -> tuple[Any, ...] | Skip:
        value = old[0]
        row = key if row_bound else None
        if strict:
            _refuse_unbound(codec, value)
        # As the columns read them: what looks like a token (an edited or re-cased one too, or
        # a value in a declared legacy format's shape) decrypts or fails, and is never taken
        # for plaintext.
        if codec.is_ciphertext(value):
            return (reencrypt(codec, value, row),)
        if not encrypt_plaintext:
            return SKIP
        return (plaintext_to_token(codec, value, row),)

    def batch_transform() -> Transform:
        # Most values are tokens under an old key that the column's keys open: those are
        # rewritten with the keys and codecs looked up once per batch, and only the others
        # take the checks above, one value at a time.
        rewrite = codec.token_rewriter()

        def fast(key: tuple[Any, ...], old: tuple[Any, ...]) -> tuple[Any, ...] | Skip:
            new = rewrite(old[0])
            return transform(key, old) if new is None else (new,)

        return fast

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
        batch_transform=None if row_bound else batch_transform,
    )


def _refuse_unbound(codec: EncryptedType, value: str) -> None:
    """Raise if a strict column's stored ``value`` is an unbound or legacy token."""
    info = inspect_token(value)
    weaker = info.flag is None or (codec.row_bound and info.flag != ROW_FLAG)
    legacy = info.kind == "legacy" or codec.legacy_format(value) is not None
    if legacy or (info.kind == "fc1" and weaker):
        bound_to = "its row" if codec.row_bound else "the column's context"
        raise DecryptionError(
            f"the value is not bound to {bound_to}, and the column is strict "
            "(allow_unbound=False or FIELDCRYPT_ALLOW_UNBOUND=false), so rotation does not bind "
            "it: it may have been copied in from elsewhere. Find out how it got there; to bind "
            "values that are the column's own, allow unbound values for the run",
            column=codec.column_label,
            key_id=info.key_id,
        )


def verification_job(engine: Engine, target: EncryptedColumn) -> BatchJob:
    """The job that decrypts every value of ``target`` and writes nothing.

    Values are read as the application reads them (an :class:`EncryptedJSON` value must
    also parse). Plaintext values fail, unless the column has ``allow_plaintext``: then
    they are skipped. A value that looks like a token is never skipped as plaintext.
    """
    codec = target.codec
    row_bound = codec.row_bound
    stored = stored_text(target.column)

    def transform(key: tuple[Any, ...], old: tuple[Any, ...]) -> Skip | None:
        value = old[0]
        if codec.allow_plaintext and not codec.is_ciphertext(value):
            return SKIP
        codec.from_stored(value, key if row_bound else None)
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


def rotate(
    engine: Engine,
    columns: Iterable[EncryptedColumn],
    *,
    encrypt_plaintext: bool = False,
    workers: int = 1,
    **options: Any,
) -> RunReport:
    """Re-encrypt every value of ``columns`` that is not under its primary key, or not bound.

    A bound column's unbound and legacy tokens are rewritten bound, or, in a strict column,
    reported as failures and left (see :func:`rotation_job`). Safe to run while the
    application writes, to stop at any moment and to run again. ``encrypt_plaintext`` also
    encrypts values stored as plaintext. The other arguments
    (``batch_size``, ``dry_run``, ``fail_fast``, ``shard``, ``state``, ``listener``,
    ``before_write``, ``throttle``, ``transform_process``) are those of
    :func:`~sa_fieldcrypt.jobs.run_job`; ``workers`` and ``transform_process`` need columns
    found by name (:func:`~sa_fieldcrypt.jobs.find_columns`,
    :func:`~sa_fieldcrypt.jobs.reflect_column`), which another process can find again.

    A column declaring a legacy format that is not authenticated (sqlalchemy-utils'
    ``AesEngine``) has its values in that format read first: if any does not open, nothing
    is rotated, since under a wrong key a few values would still open, to garbage, and be
    written over for good.

    Returns:
        One report per column; ``report.ok`` is False if any value could not be decrypted.

    Raises:
        RotationError: a value in an unauthenticated legacy format does not open.
    """
    columns = list(columns)
    if not options.get("dry_run"):
        for target in columns:
            _check_unauthenticated(engine, target, options.get("batch_size"))
    build = functools.partial(rotation_job, encrypt_plaintext=encrypt_plaintext)
    jobs = jobs_per_target(engine, columns, build, workers)
    return run_jobs(engine, jobs, workers=workers, **options)


def _check_unauthenticated(engine: Engine, target: EncryptedColumn, batch_size: Any) -> None:
    """Raise unless every value of ``target`` in an unauthenticated legacy format opens."""
    codec = target.codec
    names = [f.name for f in codec.legacy if not f.authenticated]
    if not names or (codec.context is not False and not codec.allow_unbound):
        return  # a strict column rewrites no legacy value: rotation reports each
    row_bound = codec.row_bound

    def check(key: tuple[Any, ...], old: tuple[Any, ...]) -> None:
        legacy_format = codec.legacy_format(old[0])
        if legacy_format is not None and not legacy_format.authenticated:
            codec.from_stored(old[0], key if row_bound else None)

    stored = stored_text(target.column)
    sql = DialectSql(engine.dialect.name)
    where = and_(stored.is_not(None), ~sql.has_prefix(stored, TOKEN_PREFIX))
    job = BatchJob(f"check {target.label}", target.table, (target.column,), (), check, where)
    sizes = {} if batch_size is None else {"batch_size": batch_size}
    report = run_job(engine, job, listener=QuietListener(), **sizes)
    if report.failed:
        raise RotationError(
            f"{target.label}: {plural(report.failed, 'value')} in the shape of "
            f"{', '.join(names)} {'does' if report.failed == 1 else 'do'} not open, so "
            "nothing was rotated: that format is not authenticated, and under a wrong key a "
            "few values still open, to garbage, which rotate would write for good. "
            "`fieldcrypt verify` names the rows: correct the key, or those values, then rotate"
        )


def verify(
    engine: Engine,
    columns: Iterable[EncryptedColumn],
    *,
    indexes: Iterable[IndexedColumn | SubstringColumn] = (),
    workers: int = 1,
    **options: Any,
) -> RunReport:
    """Decrypt every value of ``columns`` and report those that fail; change nothing.

    With ``indexes``, each row's blind index is also checked against its decrypted value
    (:func:`~sa_fieldcrypt.jobs.reindex.index_check_job`): a value copied in from another
    row decrypts, but not to the value its row's index says; and each owner's substring-index
    side rows against its decrypted value (:func:`~sa_fieldcrypt.jobs.reindex.substring_check_job`).
    The other arguments are those
    of :func:`~sa_fieldcrypt.jobs.run_job`; a dry run is the same as a run, since nothing is
    written either way.
    """
    jobs = jobs_per_target(engine, columns, verification_job, workers)
    indexes = list(indexes)
    blind = [i for i in indexes if isinstance(i, IndexedColumn)]
    substrings = [i for i in indexes if isinstance(i, SubstringColumn)]
    jobs += jobs_per_target(engine, blind, index_check_job, workers)
    jobs += jobs_per_target(engine, substrings, substring_check_job, workers)
    return run_jobs(engine, jobs, workers=workers, **options)

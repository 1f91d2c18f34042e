"""Re-encryption engine: key rotation, verification, plaintext migration and key status.

The ``fieldcrypt status``, ``rotate``, ``verify`` and ``retire-key`` commands are thin wrappers
over the functions here, which user code can call too.

Typical usage::

    from sqlalchemy import create_engine
    from sa_fieldcrypt import rotation

    engine = create_engine(url, hide_parameters=True)
    columns = rotation.find_columns("myapp.models")   # every encrypted column of the models
    print(rotation.status(engine, columns))            # rows per key id, legacy, plaintext, NULL
    report = rotation.rotate(engine, columns)          # re-encrypt under the primary key
    assert report.ok

How a run works, and why it is safe with the application running:

- Rows are read in batches in primary-key order (keyset pagination, composite keys too) and
  each batch is written in one transaction, so memory stays flat whatever the table size and
  a stopped run has lost at most the batches in flight (two, on a database server, where
  one batch is written while the next is re-encrypted).
- The SQL filter selects only values *not* under the primary key, so a rerun never decrypts
  what an earlier run finished: rotation is resumable and idempotent, whatever stopped it.
- Each row is written by a Core ``UPDATE ... WHERE pk = :pk AND col = :old`` (compare and
  swap): a row the application changed between the read and the write is left alone, read
  again and, if it still needs it, rotated. ORM events and ``onupdate`` columns do not fire,
  since the plaintext does not change. (Database triggers still do.)
- Values are re-encrypted through the column's own type (:meth:`EncryptedType.reencrypt`):
  the decrypted bytes are encrypted again as they are, never turned into Python values.
- A value that cannot be decrypted is reported by table, column and primary key (never its
  content) and the run goes on, unless ``fail_fast``.

The engine under :func:`rotate` and :func:`verify` is generic and lives in
:mod:`sa_fieldcrypt.batch`: :func:`~sa_fieldcrypt.batch.run_job` runs any
:class:`~sa_fieldcrypt.batch.BatchJob`, a per-row function from the old values of some columns
to new values of some (maybe other) columns, with the same batching, compare-and-swap, workers
and shards. Its public names are importable from here too.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

from sqlalchemy import Column, Engine, MetaData, Table, and_, case, func, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.elements import ColumnElement

from sa_fieldcrypt.batch import (
    MAX_KEPT_FAILURES as MAX_KEPT_FAILURES,
)
from sa_fieldcrypt.batch import (
    SKIP,
    BatchJob,
    BeforeWrite,
    Failure,
    JobFactory,
    JobReport,
    RunListener,
    RunReport,
    _raw,
    _Skip,
    _Sql,
    parse_shard,
    run_job,
)
from sa_fieldcrypt.batch import (
    Transform as Transform,
)
from sa_fieldcrypt.cipher import TOKEN_PREFIX, inspect_token
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.errors import ConfigurationError, DecryptionError, RotationError
from sa_fieldcrypt.keys import KEY_ID_PATTERN, Keyring
from sa_fieldcrypt.providers.env import LEGACY_KEY_ID, keyring_from_settings
from sa_fieldcrypt.settings import FieldCryptSettings, load_settings
from sa_fieldcrypt.types import COLUMN_INFO_KEY, EncryptedText, EncryptedType, column_codec

__all__ = [
    "SKIP",
    "BatchJob",
    "ColumnStatus",
    "EncryptedColumn",
    "Failure",
    "JobReport",
    "KeyUsage",
    "RunListener",
    "RunReport",
    "StatusReport",
    "env_keys_without",
    "find_columns",
    "parse_shard",
    "reflect_column",
    "retire_key",
    "rotate",
    "rotation_job",
    "run_job",
    "status",
    "verification_job",
    "verify",
]

_LEGACY_START: Final = "gAAAAA"  # a Fernet token's version byte, as inspect_token tests it
_FC1: Final = TOKEN_PREFIX
_TOKEN_STARTS: Final = (_FC1, _LEGACY_START)


# -- columns -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EncryptedColumn:
    """A stored column of encrypted values and the type that encrypts and decrypts it.

    Attributes:
        column: the table column that holds the tokens.
        codec: the column's :class:`~sa_fieldcrypt.EncryptedType` (its own type, or the one
            named by ``column.info["sa_fieldcrypt.type"]``).
        source: how to find the column again in a worker process: ``("models", module)`` or
            ``("table", "[schema.]table")``; None for columns built by hand.
    """

    column: Column[Any]
    codec: EncryptedType
    source: tuple[str, str] | None = None

    @property
    def table(self) -> Table:
        """The table the column belongs to."""
        table_ = self.column.table
        if not isinstance(table_, Table):
            raise ConfigurationError(f"column {self.column.name!r} is not on a table")
        return table_

    @property
    def label(self) -> str:
        """``schema.table.column``, as messages name it."""
        return f"{self.table.fullname}.{self.column.name}"

    @classmethod
    def of(cls, column_: Column[Any]) -> EncryptedColumn:
        """Wrap a table column whose type, or ``info["sa_fieldcrypt.type"]``, encrypts it.

        Raises:
            ConfigurationError: the column is not encrypted.
        """
        codec = column_codec(column_)
        if codec is None:
            raise ConfigurationError(
                f"column {column_.name!r} is neither an EncryptedType column nor marked with "
                f"info[{COLUMN_INFO_KEY!r}]"
            )
        return cls(column_, codec)

    def __repr__(self) -> str:
        return f"EncryptedColumn({self.label!r}, {self.codec!r})"


def find_columns(*modules: str | ModuleType) -> list[EncryptedColumn]:
    """Return every encrypted column of the mapped classes (and tables) the modules define.

    A column counts when its type is an :class:`~sa_fieldcrypt.EncryptedType`, or when it is
    a plain column carrying ``info["sa_fieldcrypt.type"]`` (ciphertext behind a hybrid
    property). Classes imported into a module from elsewhere are left to their own module;
    a package counts its submodules' classes.

    Raises:
        ConfigurationError: a module cannot be imported, or defines no encrypted column.
    """
    found: list[EncryptedColumn] = []
    seen: set[tuple[int, str]] = set()
    for given in modules:
        module = _import(given) if isinstance(given, str) else given
        tables: dict[int, Table] = {}
        for obj in list(vars(module).values()):
            if isinstance(obj, Table):
                tables.setdefault(id(obj), obj)
            elif isinstance(obj, type) and _defined_in(obj, module):
                mapper: Any = sa_inspect(obj, raiseerr=False)
                if isinstance(mapper, Mapper):
                    for mapped in mapper.tables:
                        if isinstance(mapped, Table):
                            tables.setdefault(id(mapped), mapped)
        before = len(found)
        for table_ in sorted(tables.values(), key=lambda t: t.fullname):
            for column_ in table_.columns:
                codec = column_codec(column_)
                if codec is not None and (id(table_), column_.name) not in seen:
                    seen.add((id(table_), column_.name))
                    found.append(EncryptedColumn(column_, codec, ("models", module.__name__)))
        if len(found) == before:
            raise ConfigurationError(
                f"module {module.__name__!r} defines no encrypted column (no EncryptedType "
                f"column and no column with info[{COLUMN_INFO_KEY!r}])"
            )
    return found


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import the models module {name!r} ({type(exc).__name__}: {exc}); run "
            "from the directory that holds it, or install the package that provides it"
        ) from exc


def _defined_in(cls: type, module: ModuleType) -> bool:
    owner = getattr(cls, "__module__", "")
    return owner == module.__name__ or owner.startswith(module.__name__ + ".")


def reflect_column(
    engine: Engine, table_name: str, column_name: str, codec: EncryptedType | None = None
) -> EncryptedColumn:
    """Reflect ``[schema.]table`` from the database and return one of its columns.

    No models are needed: the column is read as tokens of :class:`~sa_fieldcrypt.EncryptedText`
    under the default keys, unless ``codec`` says otherwise.

    Raises:
        ConfigurationError: the table or the column does not exist.
    """
    schema, _, name = table_name.rpartition(".")
    try:
        reflected = Table(name, MetaData(), schema=schema or None, autoload_with=engine)
    except NoSuchTableError:
        raise ConfigurationError(f"table {table_name!r} does not exist in the database") from None
    if column_name not in reflected.c:
        raise ConfigurationError(
            f"table {table_name!r} has no column {column_name!r} "
            f"(columns: {', '.join(c.name for c in reflected.columns)})"
        )
    return EncryptedColumn(
        reflected.c[column_name], codec or EncryptedText(), ("table", table_name)
    )


@dataclass(frozen=True)
class _ColumnRef:
    """A picklable way to find an :class:`EncryptedColumn` again, in a worker process."""

    kind: str
    source: str
    table: str
    column: str

    @classmethod
    def of(cls, target: EncryptedColumn) -> _ColumnRef:
        if target.source is None:
            raise ConfigurationError(
                f"{target.label}: worker processes need columns from find_columns() or "
                "reflect_column(), which they can find again; use workers=1"
            )
        kind, source = target.source
        return cls(kind, source, target.table.fullname, target.column.name)

    def resolve(self, engine: Engine) -> EncryptedColumn:
        if self.kind == "table":
            return reflect_column(engine, self.source, self.column)
        for target in find_columns(self.source):
            if target.table.fullname == self.table and target.column.name == self.column:
                return target
        raise RotationError(f"{self.table}.{self.column} is no longer in module {self.source!r}")


# -- rotation and verification -----------------------------------------------------------


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
    stored = _raw(target.column)
    sql = _Sql(engine.dialect.name)
    where = and_(stored.is_not(None), ~sql.has_prefix(stored, prefix))

    def transform(old: tuple[Any, ...]) -> tuple[Any, ...] | _Skip:
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

    return BatchJob(
        target.label, target.table, (target.column,), (target.column,), transform, where
    )


def verification_job(engine: Engine, target: EncryptedColumn) -> BatchJob:
    """The job that decrypts every value of ``target`` and writes nothing.

    Values are read as the application reads them (an :class:`EncryptedJSON` value must
    also parse). Plaintext values fail, unless the column has ``allow_plaintext``: then
    they are skipped.
    """
    codec = target.codec
    dialect = engine.dialect
    stored = _raw(target.column)

    def transform(old: tuple[Any, ...]) -> _Skip | None:
        value = old[0]
        if codec.allow_plaintext and inspect_token(value).kind == "plaintext":
            return SKIP
        codec.process_result_value(value, dialect)
        return None

    return BatchJob(
        target.label, target.table, (target.column,), (), transform, stored.is_not(None)
    )


JobBuilder = Callable[[Engine, EncryptedColumn], BatchJob]


def _job_at(build: JobBuilder, ref: _ColumnRef, engine: Engine) -> BatchJob:
    return build(engine, ref.resolve(engine))


def _run_columns(
    engine: Engine,
    columns: Iterable[EncryptedColumn],
    build: JobBuilder,
    *,
    workers: int,
    fail_fast: bool,
    **options: Any,
) -> RunReport:
    """Run the job ``build`` makes for each column, one column after the other."""
    run = RunReport()
    for target in columns:
        job: BatchJob | JobFactory
        if workers > 1:
            # Each worker process finds the column again and builds its own job.
            job = functools.partial(_job_at, build, _ColumnRef.of(target))
        else:
            job = build(engine, target)
        report = run_job(engine, job, workers=workers, fail_fast=fail_fast, **options)
        run.columns.append(report)
        if fail_fast and not report.completed:
            break
    return run


def rotate(
    engine: Engine,
    columns: Iterable[EncryptedColumn],
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    encrypt_plaintext: bool = False,
    fail_fast: bool = False,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    listener: RunListener | None = None,
    before_write: BeforeWrite | None = None,
) -> RunReport:
    """Re-encrypt every value of ``columns`` that is not under its primary key.

    Safe to run while the application writes, to stop at any moment and to run again; see
    the module documentation. ``encrypt_plaintext`` also encrypts values stored as
    plaintext. The other arguments are those of :func:`run_job`.

    Returns:
        One report per column; ``report.ok`` is False if any value could not be decrypted.
    """
    return _run_columns(
        engine,
        columns,
        functools.partial(rotation_job, encrypt_plaintext=encrypt_plaintext),
        workers=workers,
        fail_fast=fail_fast,
        batch_size=batch_size,
        dry_run=dry_run,
        shard=shard,
        listener=listener,
        before_write=before_write,
    )


def verify(
    engine: Engine,
    columns: Iterable[EncryptedColumn],
    *,
    batch_size: int = 1000,
    fail_fast: bool = False,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    listener: RunListener | None = None,
) -> RunReport:
    """Decrypt every value of ``columns`` and report those that fail; change nothing.

    The arguments are those of :func:`run_job`.
    """
    return _run_columns(
        engine,
        columns,
        verification_job,
        workers=workers,
        fail_fast=fail_fast,
        batch_size=batch_size,
        shard=shard,
        listener=listener,
    )


# -- status and key retirement ------------------------------------------------------------


@dataclass(frozen=True)
class ColumnStatus:
    """What one column holds, counted by the header of each stored value (nothing decrypted).

    Attributes:
        column: ``schema.table.column``.
        primary: the id of the key that encrypts the column's new values.
        keyring_ids: every key id of the column's keyring.
        by_key: rows per key id of ``fc1`` tokens, including ids the keyring lacks.
        legacy: bare Fernet tokens (no key id).
        plaintext: values that are not tokens at all.
        null: SQL NULLs.
        malformed: values with an ``fc1`` header whose key id is not valid.
    """

    column: str
    primary: str
    keyring_ids: tuple[str, ...]
    by_key: dict[str, int]
    legacy: int = 0
    plaintext: int = 0
    null: int = 0
    malformed: int = 0

    @property
    def total(self) -> int:
        """Every row of the table."""
        return sum(self.by_key.values()) + self.legacy + self.plaintext + self.null + self.malformed

    @property
    def pending(self) -> int:
        """Tokens ``rotate`` would still re-encrypt (or report as undecryptable)."""
        old = sum(n for key_id, n in self.by_key.items() if key_id != self.primary)
        return old + self.legacy + self.malformed

    @property
    def unknown_keys(self) -> dict[str, int]:
        """Rows under key ids the keyring does not hold: they cannot be decrypted."""
        return {k: n for k, n in self.by_key.items() if k not in self.keyring_ids}


@dataclass(frozen=True)
class KeyUsage:
    """Whether a key id is still needed, over the columns of a status.

    Attributes:
        key_id: the key id.
        rows: values whose token names this key id.
        primary: it encrypts new values of some column.
        in_keyring: a keyring of the columns holds it.
        legacy_rows: legacy tokens (no key id) in columns whose keyring holds this key: one
            of those keys opens each of them, and only decrypting tells which.
    """

    key_id: str
    rows: int
    primary: bool
    in_keyring: bool
    legacy_rows: int

    @property
    def needed(self) -> bool:
        """The key cannot be removed yet."""
        return self.primary or self.rows > 0 or self.legacy_rows > 0


@dataclass(frozen=True)
class StatusReport:
    """The status of several columns, and what it says about each key."""

    columns: list[ColumnStatus]

    def key_usage(self) -> list[KeyUsage]:
        """Every key id in the columns' keyrings or their data, primary keys first."""
        usage: dict[str, KeyUsage] = {}
        ids: list[str] = []
        for col in self.columns:
            ids += [col.primary, *col.keyring_ids, *col.by_key]
        for key_id in dict.fromkeys(ids):
            holders = [c for c in self.columns if key_id in c.keyring_ids]
            usage[key_id] = KeyUsage(
                key_id=key_id,
                rows=sum(c.by_key.get(key_id, 0) for c in self.columns),
                primary=any(c.primary == key_id for c in self.columns),
                in_keyring=bool(holders),
                legacy_rows=sum(c.legacy for c in holders if c.primary != key_id),
            )
        return sorted(usage.values(), key=lambda u: (not u.primary, not u.in_keyring))

    def describe(self) -> str:
        """The report as text for people: per column, then per key."""
        lines: list[str] = []
        for col in self.columns:
            lines.append(f"{col.column}  ({col.total:,} rows; primary key id {col.primary!r})")
            order = {key_id: i for i, key_id in enumerate((col.primary, *col.keyring_ids))}
            for key_id, rows in sorted(
                col.by_key.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])
            ):
                if key_id == col.primary:
                    note = "primary"
                elif key_id in col.keyring_ids:
                    note = "decrypt-only: rotate moves these"
                else:
                    note = "NOT IN THE KEYRING: these cannot be decrypted"
                lines.append(f"  key {key_id:<24} {rows:>12,}  {note}")
            for name, rows, note in (
                ("legacy tokens", col.legacy, "bare Fernet tokens: rotate moves these"),
                ("plaintext", col.plaintext, "not encrypted: rotate --encrypt-plaintext"),
                ("malformed", col.malformed, "fc1 header with an invalid key id"),
                ("NULL", col.null, ""),
            ):
                if rows or name == "NULL":
                    lines.append(f"  {name:<28} {rows:>12,}  {note}".rstrip())
        lines.append("keys:")
        for key in self.key_usage():
            if key.primary:
                verdict = "primary: needed"
            elif not key.in_keyring:
                verdict = f"not in the keyring; {key.rows:,} rows need it: add it back"
            elif key.rows:
                verdict = f"decrypt-only; still needed by {key.rows:,} rows: run rotate"
            elif key.legacy_rows:
                verdict = (
                    f"decrypt-only; may be needed by {key.legacy_rows:,} legacy tokens: run rotate"
                )
            else:
                verdict = f"decrypt-only; no longer needed: retire-key {key.key_id} removes it"
            lines.append(f"  {key.key_id:<28} {verdict}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data, for JSON."""
        return {
            "columns": [
                {
                    "column": c.column,
                    "primary": c.primary,
                    "by_key": dict(c.by_key),
                    "legacy": c.legacy,
                    "plaintext": c.plaintext,
                    "null": c.null,
                    "malformed": c.malformed,
                    "pending": c.pending,
                }
                for c in self.columns
            ],
            "keys": [
                {
                    "key_id": k.key_id,
                    "rows": k.rows,
                    "primary": k.primary,
                    "in_keyring": k.in_keyring,
                    "legacy_rows": k.legacy_rows,
                    "needed": k.needed,
                }
                for k in self.key_usage()
            ],
        }

    def __str__(self) -> str:
        return self.describe()


def _classify(value: str | bytes | None) -> tuple[str, str | None]:
    """A stored value's kind and key id, exactly as the SQL of :meth:`_Sql.classify`."""
    if value is None:
        return "null", None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    info = inspect_token(value)
    if info.kind == "fc1":
        if info.key_id is not None and KEY_ID_PATTERN.match(info.key_id):
            return "fc1", info.key_id
        return "malformed", None
    return info.kind, None


def status(
    engine: Engine, columns: Iterable[EncryptedColumn], *, in_sql: bool | None = None
) -> StatusReport:
    """Count each column's values per key id, legacy tokens, plaintext and NULL.

    Args:
        engine: the database.
        columns: the columns to count.
        in_sql: count with one ``GROUP BY`` query per column (the default on PostgreSQL,
            MySQL/MariaDB and SQLite), or by reading every value's header in batches.
    """
    found: list[ColumnStatus] = []
    with engine.connect() as conn:
        sql = _Sql(conn.dialect.name)
        use_sql = (
            in_sql if in_sql is not None else sql.name in ("postgresql", "sqlite") or sql.mysql
        )
        for target in columns:
            counts = (
                _count_in_sql(conn, sql, target) if use_sql else _count_by_reading(conn, target)
            )
            keyring = target.codec.active_keyring()
            by_key: dict[str, int] = {}
            totals = dict.fromkeys(("legacy", "plaintext", "null", "malformed"), 0)
            for (kind, key_id), rows in counts.items():
                if kind == "fc1" and key_id is not None:
                    by_key[key_id] = by_key.get(key_id, 0) + rows
                else:
                    totals[kind] += rows
            found.append(
                ColumnStatus(
                    column=target.label,
                    primary=keyring.primary.id,
                    keyring_ids=keyring.ids,
                    by_key=by_key,
                    **totals,
                )
            )
    return StatusReport(found)


def _classify_in_sql(
    sql: _Sql, expr: ColumnElement[Any]
) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """Expressions for a value's kind and key id, as :func:`_classify` decides them."""
    exact = sql.exact(expr)
    tail = func.substr(exact, 5) if not sql.mysql else func.substring(exact, 5)
    if sql.name == "postgresql":
        colon = func.strpos(tail, ":")
    elif sql.mysql:
        colon = func.locate(":", tail)
    else:
        colon = func.instr(tail, ":")
    fc1 = sql.has_prefix(expr, _FC1)
    named = and_(fc1, colon.between(2, 33))
    kind = case(
        (expr.is_(None), "null"),
        (named, "fc1"),
        (and_(fc1, colon > 33), "malformed"),
        (sql.has_prefix(expr, _LEGACY_START), "legacy"),
        else_="plaintext",
    )
    key_id = case((named, func.substr(tail, 1, colon - 1)), else_=None)
    return kind, key_id


def _count_in_sql(
    conn: Connection, sql: _Sql, target: EncryptedColumn
) -> dict[tuple[str, str | None], int]:
    kind, key_id = _classify_in_sql(sql, _raw(target.column))
    inner = select(kind.label("kind"), key_id.label("key_id")).select_from(target.table).subquery()
    stmt = select(inner.c.kind, inner.c.key_id, func.count()).group_by(inner.c.kind, inner.c.key_id)
    counts: dict[tuple[str, str | None], int] = {}
    for found_kind, found_key, rows in conn.execute(stmt):
        if isinstance(found_kind, bytes):
            found_kind = found_kind.decode("ascii")
        if found_kind == "fc1":
            # The SQL finds where the key id ends; whether it is a valid id is checked here.
            found_kind, found_key = _classify(_FC1 + _text(found_key) + ":")
        counts[found_kind, found_key] = counts.get((found_kind, found_key), 0) + int(rows)
    return counts


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _count_by_reading(
    conn: Connection, target: EncryptedColumn, batch_size: int = 5000
) -> dict[tuple[str, str | None], int]:
    pk = tuple(target.table.primary_key.columns)
    sql = _Sql(conn.dialect.name)
    counts: dict[tuple[str, str | None], int] = {}
    last: tuple[Any, ...] | None = None
    if not pk:
        rows: Iterator[Any] = iter(conn.execute(select(_raw(target.column))).scalars())
        for value in rows:
            found = _classify(value)
            counts[found] = counts.get(found, 0) + 1
        return counts
    while True:
        stmt = select(*pk, _raw(target.column)).order_by(*pk).limit(batch_size)
        if last is not None:
            stmt = stmt.where(sql.after(pk, last))
        batch = conn.execute(stmt).all()
        if not batch:
            return counts
        for row in batch:
            found = _classify(row[-1])
            counts[found] = counts.get(found, 0) + 1
        last = tuple(batch[-1][: len(pk)])


def retire_key(
    engine: Engine,
    columns: Iterable[EncryptedColumn],
    key_id: str,
    keyring: Keyring | None = None,
) -> Keyring:
    """Check that no value of ``columns`` needs ``key_id``; return the keyring without it.

    The database is not changed: put the returned keyring in place of the current one
    (:func:`env_keys_without` gives the ``FIELDCRYPT_KEYS`` text for the env provider).

    Args:
        engine: the database.
        columns: every column that may hold values under the key.
        key_id: the key to retire.
        keyring: the keyring to remove it from; by default the process default keys.

    Raises:
        RotationError: values still use the key, or legacy tokens (which name no key) remain.
        ConfigurationError: the key is the primary key, or not in the keyring.
    """
    keyring = keyring or current_keyring()
    remaining = keyring.without(key_id)
    report = status(engine, columns)
    users = [
        f"{c.column} ({c.by_key[key_id]:,} rows)" for c in report.columns if c.by_key.get(key_id)
    ]
    if users:
        raise RotationError(
            f"key {key_id!r} is still used by {', '.join(users)}; run `fieldcrypt rotate` "
            "and check `fieldcrypt status` before retiring it"
        )
    legacy = [f"{c.column} ({c.legacy:,} rows)" for c in report.columns if c.legacy]
    if legacy:
        raise RotationError(
            f"legacy tokens, which do not say which key opens them, remain in "
            f"{', '.join(legacy)}; key {key_id!r} may be the one: run `fieldcrypt rotate` first"
        )
    return remaining


def env_keys_without(
    key_id: str, settings: FieldCryptSettings | None = None
) -> tuple[str, list[str]]:
    """The ``FIELDCRYPT_KEYS`` value once ``key_id`` is retired, and what else to change.

    The value holds key material: show it only to whoever manages the settings.

    Returns:
        ``(value, notes)``: the new ``FIELDCRYPT_KEYS`` text, primary key first, and notes
        (free of key material) on other variables to change.
    """
    settings = settings or load_settings()
    remaining = keyring_from_settings(settings).without(key_id)
    notes: list[str] = []
    keys = list(remaining)
    if settings.legacy_key is not None:
        # FIELD_ENCRYPTION_KEY supplies the `legacy` key itself; it must not also be listed.
        keys = [k for k in keys if k.id != LEGACY_KEY_ID]
        if key_id == LEGACY_KEY_ID:
            notes.append("unset FIELD_ENCRYPTION_KEY: the legacy key is no longer needed")
        else:
            notes.append("FIELD_ENCRYPTION_KEY stays as it is")
    if settings.primary_key_id is not None:
        notes.append("FIELDCRYPT_PRIMARY_KEY_ID may stay: the primary key is listed first")
    return Keyring(keys, primary=remaining.primary.id).export(), notes

"""The SQL that differs between PostgreSQL, MySQL/MariaDB and SQLite, for the data jobs.

Every job reads and writes stored tokens as text, compares them exactly (case and trailing
spaces count, whatever the column's collation), pages by primary key and splits tables into
shards; :class:`DialectSql` builds those expressions for one database. The engine
(:mod:`sa_fieldcrypt.jobs.engine`), status (:mod:`sa_fieldcrypt.jobs.status`) and reindexing
(:mod:`sa_fieldcrypt.jobs.reindex`) all build their SQL here.

Typical usage::

    sql = DialectSql.connected(conn)
    stmt = select(*pk, stored_text(column)).where(sql.after(pk, last)).order_by(*pk)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Text,
    and_,
    bindparam,
    case,
    cast,
    collate,
    column,
    func,
    literal,
    literal_column,
    or_,
    text,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Integer, String, TypeEngine

from sa_fieldcrypt.cipher import TOKEN_PREFIX
from sa_fieldcrypt.errors import ConfigurationError, RotationError
from sa_fieldcrypt.keys import BOUND_FLAG, PADDED_FLAG, ROW_FLAG
from sa_fieldcrypt.types import EncryptedType

__all__ = [
    "LEGACY_TOKEN_START",
    "DialectSql",
    "driver_message",
    "is_transient",
    "stored_text",
    "stored_type",
]

#: How every bare (legacy) Fernet token starts: its version byte 0x80 in url-safe base64.
LEGACY_TOKEN_START = "gAAAAA"
# Characters of the shortest Fernet token: 73 bytes (one AES block) in base64.
_SHORTEST_FERNET_TOKEN = 100
#: Longest key id plus one: where the key id of an ``fc1`` header must have ended.
_KEY_ID_END = 33
#: The name of the table :meth:`DialectSql.json_rows` makes of a JSON parameter.
_JSON_ROWS = "fc_batch"


def stored_text(col: ColumnElement[Any]) -> ColumnElement[Any]:
    """The stored text of a column, whatever its type would do with it (no decryption)."""
    if isinstance(col.type, EncryptedType):
        return type_coerce(col, Text())
    return col


def stored_type(col: Column[Any]) -> TypeEngine[Any]:
    """The type of a column's stored values: ``Text`` for an encrypted column."""
    return Text() if isinstance(col.type, EncryptedType) else col.type


def driver_message(exc: BaseException) -> str:
    """``Type: first line`` of the driver's error under ``exc``, safe to show."""
    # Only the driver's first line: SQLAlchemy's own text would quote the statement's
    # parameters (ciphertext, or plaintext during a migration) unless hide_parameters is set.
    orig = getattr(exc, "orig", None) or exc
    if isinstance(exc, IntegrityError):
        # A constraint's message quotes the refused value (MySQL: "Duplicate entry '...'").
        return f"{type(orig).__name__}: a constraint refused the write"
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first}"


def is_transient(exc: DBAPIError) -> bool:
    """A deadlock, serialization failure or lock wait timeout: the batch may be retried."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01", "55P03"):
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in (1205, 1213):
        return True
    return "database is locked" in str(orig)


def keys_in(
    columns: Sequence[ColumnElement[Any]], keys: Sequence[tuple[Any, ...]]
) -> ColumnElement[bool]:
    """The condition that ``columns`` hold one of ``keys`` (tuples, in the columns' order)."""
    if len(columns) > 1:
        return tuple_(*columns).in_(keys)
    (column,) = columns
    values = [k[0] for k in keys]
    match = column.in_(values)
    if values and all(type(v) is int for v in values):
        # Bounded by a range too, which the database orders as Python does for integers:
        # without statistics (a table just filled or rewritten) PostgreSQL takes a batch's
        # IN list on a column that is not unique on its own to match much of the table and
        # scans all of it, per batch (180 ms for 2,000,000 side rows, against 1.5 ms
        # through the primary key).
        return and_(column >= min(values), column <= max(values), match)
    return match


def _like_prefix(prefix: str) -> str:
    # '_' and '%' are wildcards and key ids may contain '_'; '/' escapes them.
    return prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


class DialectSql:
    """The few SQL expressions that differ between PostgreSQL, MySQL/MariaDB and SQLite.

    Args:
        dialect_name: the SQLAlchemy dialect's name.
        binary_collation: MySQL/MariaDB only, the connection's binary collation; exact
            comparisons (:meth:`same`) need it, so build with :meth:`connected` to write.
        max_document: the longest JSON document :meth:`json_documents` makes, in
            characters; None for no limit. MySQL/MariaDB refuse a statement longer than
            ``max_allowed_packet``, which :meth:`connected` reads.
    """

    def __init__(
        self,
        dialect_name: str,
        binary_collation: str | None = None,
        max_document: int | None = None,
    ):
        self.name = dialect_name
        self.mysql = dialect_name in ("mysql", "mariadb")
        self.binary_collation = binary_collation
        self.max_document = max_document

    @classmethod
    def connected(cls, conn: Connection) -> DialectSql:
        """The expressions for ``conn``'s database, including its exact-match collation and,
        on MySQL/MariaDB, the longest statement it takes."""
        collation = max_document = None
        if conn.dialect.name in ("mysql", "mariadb"):
            query = text("SELECT @@character_set_connection, @@max_allowed_packet")
            charset, packet = conn.execute(query).one()
            collation = f"{charset}_bin"
            # A quarter: the driver escapes the document's quotes and backslashes, which
            # can double it, and the statement around it needs room too.
            max_document = max(int(packet) // 4, _MIN_DOCUMENT)
        return cls(conn.dialect.name, collation, max_document)

    def json_documents(self, rows: Sequence[Sequence[Any]]) -> Iterator[str]:
        """The values of :meth:`json_rows`' parameter ``doc`` that carry ``rows``, in order.

        One document, unless it would be longer than ``max_document``: then as many as
        keep each within it (a row longer on its own goes alone), one statement each.
        """
        doc = json.dumps(rows, default=str)
        if self.max_document is None or len(doc) <= self.max_document or len(rows) < 2:
            yield doc
            return
        half = len(rows) // 2
        yield from self.json_documents(rows[:half])
        yield from self.json_documents(rows[half:])

    def json_rows(
        self, dialect: Dialect, types: Sequence[TypeEngine[Any]], *, keys: int
    ) -> list[ColumnElement[Any]] | None:
        """The columns of a table made of the JSON parameter ``doc``: an array of rows.

        Each row is an array of values, the ``i``-th of type ``types[i]``; the first ``keys``
        are primary-key values, the others text. A statement over this table handles a whole
        batch of rows in one round trip, with one parameter that the driver does not parse.
        None where the database has no such table, or cannot carry these types through JSON
        exactly: then each row needs a statement of its own.
        """
        carried = _JSON_KEYS if self.name == "postgresql" else (int,) if self.mysql else ()
        if self.mysql and not _has_json_table(dialect):
            return None
        for position, type_ in enumerate(types):
            if _python_type(type_) not in (carried if position < keys else (str,)):
                return None
        doc = bindparam("doc", type_=Text())
        if self.name == "postgresql":
            rows = func.json_array_elements(cast(doc, JSON())).table_valued("value")
            value = rows.alias(_JSON_ROWS).c.value

            def item(position: int, type_: TypeEngine[Any]) -> ColumnElement[Any]:
                found = type_coerce(value.op("->>")(literal_column(str(position))), Text())
                return found if position >= keys else cast(found, type_)

            return [item(i, t) for i, t in enumerate(types)]
        if self.binary_collation is None:
            raise RotationError("internal: json_rows() needs DialectSql.connected()")
        # Text in the connection's character set, which the exact comparisons (same()) use.
        charset = self.binary_collation.removesuffix("_bin")
        spelled = [
            t.compile(dialect) if i < keys else f"LONGTEXT CHARACTER SET {charset}"
            for i, t in enumerate(types)
        ]
        # ERROR ON ERROR: a value that does not convert must fail the write, not become NULL.
        columns = ", ".join(f"c{i} {s} PATH '$[{i}]' ERROR ON ERROR" for i, s in enumerate(spelled))
        table_ = func.json_table(doc, literal_column(f"'$[*]' COLUMNS ({columns})"))
        rows = table_.table_valued(*(column(f"c{i}", t) for i, t in enumerate(types)))
        return list(rows.alias(_JSON_ROWS).c)

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
                raise RotationError("internal: compare-and-swap needs DialectSql.connected()")
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
        if len(pk) == 1 and isinstance(pk[0].type, Integer):
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

    def token_kind(self, expr: ColumnElement[Any]) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        """Expressions for a stored value's kind and the key id its header names.

        The kind is ``"null"``, ``"fc1"`` (key id given), ``"malformed"`` (an ``fc1`` header
        whose key id is too long), ``"legacy"`` or ``"plaintext"``, as
        :func:`sa_fieldcrypt.cipher.inspect_token` decides from the text; whether the key id is
        valid is left to the caller. Values that may only look like tokens
        (:meth:`token_suspect`) are ``"suspect"``, for the caller to read and decide.
        """
        tail, colon, named = self._header(expr)
        fc1 = self.has_prefix(expr, TOKEN_PREFIX)
        kind = case(
            (expr.is_(None), "null"),
            (named, "fc1"),
            (and_(fc1, colon > _KEY_ID_END), "malformed"),
            (self.has_prefix(expr, LEGACY_TOKEN_START), "legacy"),
            (self.token_suspect(expr), "suspect"),
            else_="plaintext",
        )
        key_id = case((named, func.substr(tail, 1, colon - 1)), else_=None)
        return kind, key_id

    def token_flag(self, expr: ColumnElement[Any]) -> ColumnElement[Any]:
        """An expression for an ``fc1`` token's flag field: ``c``, ``r``, ``p``, ``cp``, ``rp``.

        NULL for an unbound, unpadded token. It agrees with
        :attr:`sa_fieldcrypt.cipher.TokenInfo.flag` and ``padded``.
        """
        tail, colon, named = self._header(expr)
        field = func.substr(tail, colon + 1, 3)
        padded = [f"{b}{PADDED_FLAG}" for b in (BOUND_FLAG, ROW_FLAG)]
        plain = [BOUND_FLAG, ROW_FLAG, PADDED_FLAG]
        return case(
            *((and_(named, field == f"{f}:"), f) for f in padded),
            *((and_(named, func.substr(field, 1, 2) == f"{f}:"), f) for f in plain),
            else_=None,
        )

    def token_suspect(self, expr: ColumnElement[Any]) -> ColumnElement[bool]:
        """Whether a value may look like a token, for the caller to read and decide.

        True for every value that :func:`~sa_fieldcrypt.cipher.looks_like_token` accepts (an
        edited, re-cased or space-padded header, a Fernet-shaped value: at least 100
        characters, starting with ``g``) and for some plaintexts (any holding ``fc1:`` or
        ``gaaaaa`` in any case, or long ones holding a ``g``), which reading tells apart.
        """
        # PostgreSQL refuses LIKE under a nondeterministic collation: compare in "C", where
        # lower() folds ASCII, all the headers need. MySQL's lower() of bytes folds nothing.
        text_ = expr if self.mysql else self.exact(expr)
        lowered = func.lower(text_)
        starts = (TOKEN_PREFIX, LEGACY_TOKEN_START.lower())
        return or_(
            *(lowered.like(f"%{start}%") for start in starts),
            and_(func.length(text_) >= _SHORTEST_FERNET_TOKEN, text_.like("%g%")),
        )

    def _header(
        self, expr: ColumnElement[Any]
    ) -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[bool]]:
        """The text after ``fc1:``, where in it the key id ends, and whether it names one."""
        exact = self.exact(expr)
        start = len(TOKEN_PREFIX) + 1
        tail = func.substr(exact, start) if not self.mysql else func.substring(exact, start)
        if self.name == "postgresql":
            colon = func.strpos(tail, ":")
        elif self.mysql:
            colon = func.locate(":", tail)
        else:
            colon = func.instr(tail, ":")
        named = and_(self.has_prefix(expr, TOKEN_PREFIX), colon.between(2, _KEY_ID_END))
        return tail, colon, named

    def auto_update_columns(self, conn: Connection, schema: str | None, name: str) -> list[str]:
        """Columns MySQL sets on every update (``ON UPDATE CURRENT_TIMESTAMP``); [] elsewhere."""
        if not self.mysql:
            return []
        rows = conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name "
                "AND LOWER(extra) LIKE '%on update%'"
            ),
            {"schema": schema, "name": name},
        )
        return [row[0] for row in rows]


#: Primary-key types that PostgreSQL's JSON rows (:meth:`DialectSql.json_rows`) carry exactly.
_JSON_KEYS = (int, str, uuid.UUID)
#: The shortest JSON document split off (max_allowed_packet is at least 1 KiB).
_MIN_DOCUMENT = 256


def _python_type(type_: TypeEngine[Any]) -> type | None:
    try:
        return type_.python_type
    except NotImplementedError:
        return None


def _has_json_table(dialect: Dialect) -> bool:
    """Whether the MariaDB (10.6 on) or MySQL (8.0.4 on) server has ``JSON_TABLE``."""
    version = tuple(getattr(dialect, "server_version_info", None) or ())
    if getattr(dialect, "is_mariadb", False):
        return version >= (10, 6)
    return version >= (8, 0, 4)

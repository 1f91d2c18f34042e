"""Hybrid-property helpers: a plaintext attribute over an encrypted column and its blind index.

Typical usage, with the model as ``sqlacodegen`` generates it (the column holds ciphertext in
a plain ``Text`` column)::

    from sa_fieldcrypt import BLIND_INDEX_LENGTH, BlindIndex, encrypted_hybrid, normalize_email

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email_encrypted: Mapped[str] = mapped_column(Text)
        email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        email = encrypted_hybrid(
            "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
        )

or over an :class:`~sa_fieldcrypt.EncryptedText` column, which already reads plaintext::

        _email: Mapped[str] = mapped_column("email_encrypted", EncryptedText())
        email = encrypted_hybrid("_email", blind_index=BlindIndex("email_bidx", ...))

Then ``Customer(email="ada@example.com")``, ``customer.email`` (plaintext),
``customer.email = ...`` (encrypts and sets ``email_bidx``), and in queries
``Customer.email == " Ada@Example.com"`` or ``Customer.email.in_([...])``, which compare
``email_bidx`` with the value's index under every active index key.

With several indexes (``blind_index=[...]``), ``Customer.phone.index("phone_last4") == "0000"``
compares one of them; :func:`compound_index` declares an index over several attributes. The
conditions of truncated indexes (``bits=``) and substring indexes find candidates, which
:mod:`sa_fieldcrypt.filtering` filters to the exact matches after decryption.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast, overload

from sqlalchemy import (
    Column,
    ForeignKeyConstraint,
    Index,
    String,
    Table,
    UniqueConstraint,
    event,
    func,
    inspect,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.ext.hybrid import ExprComparator, hybrid_property
from sqlalchemy.orm import ColumnProperty, Mapper, ORMExecuteState, Session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnElement, Null
from sqlalchemy.sql.operators import OperatorType
from typing_extensions import TypeVar

from sa_fieldcrypt.blind_index import (
    BLIND_INDEX_LENGTH,
    TRIGRAM,
    TRIGRAM_LENGTH,
    BlindIndex,
    Compound,
    SubstringIndex,
)
from sa_fieldcrypt.errors import (
    ConfigurationError,
    DecryptionError,
    UnsupportedComparisonError,
    ValueTypeError,
)
from sa_fieldcrypt.filtering import (
    Candidates,
    ContainsMatch,
    IndexTarget,
    index_condition,
    install_filtering,
    operator_name,
)
from sa_fieldcrypt.types import COLUMN_INFO_KEY, EncryptedText, EncryptedType, column_codec

if TYPE_CHECKING:
    from typing import Self

    from sqlalchemy.orm.base import SQLORMOperations
    from sqlalchemy.sql.elements import SQLCoreOperations

__all__ = [
    "INFO_BLIND_INDEX",
    "INFO_COMPOUND_PARTS",
    "TRIGRAM_COLUMN",
    "CompoundIndex",
    "EncryptedHybrid",
    "IndexComparator",
    "bind_hybrids",
    "compound_index",
    "encrypted_hybrid",
    "encrypted_values",
    "substring_index_of",
]

#: The Python type of a hybrid's values: what its column type stores, ``str`` by default.
_V = TypeVar("_V", default=str)

#: ``column.info`` key of a blind-index column: its bound :class:`~sa_fieldcrypt.BlindIndex`.
INFO_BLIND_INDEX = "sa_fieldcrypt.blind_index"
#: ``column.info`` key of a compound index's column: the keys of its parts' table columns.
INFO_COMPOUND_PARTS = "sa_fieldcrypt.compound_parts"
#: The side tables of substring indexes: each one's bound index and the encrypted column it
#: indexes (``"<table>.<column>"``). Not in ``Table.info``, which Alembic renders.
_SIDE_TABLES: weakref.WeakKeyDictionary[Table, tuple[SubstringIndex, str]] = (
    weakref.WeakKeyDictionary()
)

# The attribute has no connection at hand: its processors are built for the default dialect,
# whose text type, like that of SQLite, PostgreSQL and MariaDB, needs no conversion of its own.
_DIALECT = DefaultDialect()

# The values a hybrid may keep decrypted on its instance: those that cannot change in place.
_IMMUTABLE = (str, bytes, date, datetime, time, int, float, Decimal, bool, uuid.UUID)

_EQUALITY = (operators.eq, operators.ne, operators.in_op, operators.not_in_op)
# The operators that, against None, become a NULL test of the stored value.
_NULL_TESTS = {
    operators.eq: operators.is_,
    operators.is_: operators.is_,
    operators.ne: operators.is_not,
    operators.is_not: operators.is_not,
}


class _Plaintext:
    """A hybrid's decrypted value, kept on the instance; never pickled or copied.

    ORM objects are pickled into caches and task queues, and copied; the plaintext stays in
    the process that decrypted it: a copy starts empty and decrypts again.
    """

    __slots__ = ("index", "row", "stored", "value")

    def __init__(
        self,
        stored: Any,
        value: Any,
        index: tuple[str | None, ...] | None,
        row: tuple[Any, ...] | None = None,
    ):
        self.stored = stored
        self.value = value
        self.index = index  # the index values checked against the value, if any
        # Row binding: the row key ``stored`` is bound to; None with ``stored`` None while
        # the value waits for its row's primary key, to be encrypted at flush.
        self.row = row

    @property
    def pending(self) -> bool:
        """Whether the value waits for its row's primary key to be encrypted (row binding)."""
        return self.stored is None and self.value is not None and self.value is not _UNKEPT

    def __reduce__(self) -> tuple[Any, ...]:
        if self.pending:
            # Its only copy: dropped, the value would be lost; kept, the pickle holds plaintext.
            raise ConfigurationError(
                "an object holding a row-bound value that waits for its primary key cannot be "
                "pickled or copied: assign the primary key, or flush, first"
            )
        return (_Plaintext, (None, None, None))


#: A row-bound value that is not kept (a mutable one): only its token's row is recorded.
_UNKEPT: Any = object()


@dataclass(frozen=True, slots=True)
class _RowKey:
    """How a row-bound hybrid finds the primary key its values are bound to."""

    attrs: tuple[str, ...]  # the attribute of each primary-key column, in the table's order
    columns: tuple[Column[Any], ...]  # those columns
    identity: tuple[int, ...]  # where each is in the identity key (mapper.primary_key order)
    source: Column[Any]  # the column of the tokens

    def current(self, instance: Any) -> tuple[Any, ...] | None:
        """The primary key the instance's attributes hold now; None while a part is None.

        A part not loaded in a persistent instance (expired by a commit) was not changed
        since: it is the part of the row's identity.
        """
        values = tuple(self.current_part(instance, attr) for attr in self.attrs)
        return None if any(v is None for v in values) else values

    def current_part(self, instance: Any, attr: str) -> Any:
        """One primary-key attribute's value now (see :meth:`current`)."""
        loaded, key = instance.__dict__, instance_state(instance).key
        if attr in loaded or key is None:
            return loaded.get(attr)
        return key[1][self.identity[self.attrs.index(attr)]]

    def stored(self, instance: Any) -> tuple[Any, ...] | None:
        """The primary key of the row as the database holds it (its identity), or as set."""
        key = instance_state(instance).key
        if key is None:
            return self.current(instance)
        return tuple(key[1][position] for position in self.identity)

    def check(self, values: tuple[Any, ...]) -> None:
        """Refuse a primary key of another Python type than its column returns.

        A value is bound to the key's text: ``"7"`` for an Integer key would bind it to a
        row that, read back, has the key ``7``. (A UUID kept as a string must be lower-case
        and hyphenated, as the database returns it: that is not checked.)
        """
        for value, col in zip(values, self.columns, strict=True):
            try:
                expected = col.type.python_type
            except NotImplementedError:
                continue
            if expected in (int, str, uuid.UUID) and not isinstance(value, expected):
                raise ValueTypeError(
                    f"{col.table.fullname}.{col.name}: a row-bound value is bound to its row's "
                    f"primary key as the column returns it, a {expected.__name__}; got a "
                    f"{type(value).__name__}"
                )

    def load(self, connection: Any, row: tuple[Any, ...]) -> Any:
        """The token the database holds for the row whose primary key is ``row``."""
        match = [col == value for col, value in zip(self.columns, row, strict=True)]
        return connection.execute(select(self.source).where(*match)).scalar_one_or_none()

    def of_mapping(self, mapping: MutableMapping[str, Any] | dict[str, Any]) -> tuple[Any, ...]:
        """The primary key in a mapping of attribute values (ORM bulk statements)."""
        values = tuple(mapping.get(attr) for attr in self.attrs)
        if any(v is None for v in values):
            raise ConfigurationError(
                f"a value bound to its row (bind_row=True) needs the row's primary key "
                f"({', '.join(self.attrs)}) among the values given"
            )
        self.check(values)
        return values

    def fill_defaults(self, instance: Any) -> None:
        """Set a primary key that a Python-side column default would give at INSERT."""
        _fill_defaults(instance, zip(self.attrs, self.columns, strict=True), "row binding needs")


def _fill_defaults(
    instance: Any, columns: Iterable[tuple[str, Column[Any]]], needed_by: str
) -> None:
    """Give unset attributes of a new ``instance`` what their Python-side defaults would.

    For values needed before the INSERT that applies the defaults (a row-bound key, a part of
    a compound index); ``needed_by`` says which, in the error of a default that cannot run.
    """
    for attr, col in columns:
        default = col.default
        if instance.__dict__.get(attr) is not None or default is None:
            continue
        if getattr(default, "is_scalar", False):
            setattr(instance, attr, default.arg)  # type: ignore[attr-defined]
        elif getattr(default, "is_callable", False):
            try:
                # SQLAlchemy wraps a default of no arguments to take the execution context;
                # one that reads the context cannot run here.
                value = default.arg(None)  # type: ignore[attr-defined]
            except Exception as exc:
                raise ConfigurationError(
                    f"{col.table.fullname}.{col.name}: its default raised "
                    f"{type(exc).__name__} when called before INSERT, which {needed_by}; use "
                    "a default of no arguments, or assign the value"
                ) from None
            setattr(instance, attr, value)


@dataclass(frozen=True, slots=True)
class _BoundIndex:
    """One blind index of a hybrid on one mapped class."""

    key: str  # attribute of the index column
    label: str  # "core.customers.phone_last4", for messages
    blind_index: BlindIndex  # bound: named, its source column set


@dataclass(frozen=True, slots=True)
class _Binding:
    """What one mapped class's use of an :class:`EncryptedHybrid` resolved to."""

    label: str  # "Customer.email", for messages
    source_key: str
    source_label: str  # "core.customers.email_encrypted"
    encrypted_type: EncryptedType | None  # None: the source attribute already reads plaintext
    # The type's bind and result processors (None with encrypted_type): its per-value path.
    encrypt: Callable[[Any], Any] | None
    decrypt: Callable[[Any], Any] | None
    indexes: tuple[_BoundIndex, ...]
    equality: _BoundIndex | None  # the index of whole values that answers == and in_()
    check_index: bool
    cache_key: str
    row_key: _RowKey | None = None  # bind_row=True: values are bound to their rows too
    substring: _BoundSubstring | None = None
    # The compound indexes of the class that read the attribute, added as each one binds.
    compounds: list[_CompoundBinding] = field(default_factory=list, compare=False)

    def plaintext(self, instance: Any, *, check: bool = True) -> Any:
        """The attribute's plaintext, decrypted and checked once per stored value.

        With a blind index (and ``check``), the value's index must equal the row's stored
        one, under the key id it names: a token copied in from another row decrypts, but
        its index says which row it came from. So must every compound index that reads the
        attribute equal the index of the row's parts (see :meth:`_CompoundBinding.check`).
        An index column the query did not load (``load_only``, ``defer``) is not checked.

        Raises:
            DecryptionError: the value does not decrypt, or does not match the row's index
                or a compound index of the row.
        """
        value = self._decrypted(instance, check=check)
        if check:
            for compound in self.compounds:
                compound.check(instance)
        return value

    def _decrypted(self, instance: Any, *, check: bool) -> Any:
        stored = getattr(instance, self.source_key)
        cached = instance.__dict__.get(self.cache_key)
        if stored is None:
            # A row-bound value assigned before its row's primary key was known.
            pending = isinstance(cached, _Plaintext) and cached.pending
            return cached.value if pending else None
        index: tuple[str | None, ...] | None = None
        if check and self.check_index and self.indexes:
            # None: not indexed yet, nothing to check. An index column the query did not load
            # (load_only, defer) is not loaded for the check either: that would be a query
            # per row, or fail (a detached row, raiseload, AsyncSession).
            loaded = instance.__dict__
            index = tuple(loaded.get(bound.key) for bound in self.indexes)
            if all(v is None for v in index):
                index = None
        if (
            isinstance(cached, _Plaintext)
            and cached.stored == stored
            and (index is None or cached.index == index)
            and cached.value is not _UNKEPT
        ):
            return cached.value
        row = None
        if self.row_key is not None:
            if isinstance(cached, _Plaintext) and cached.stored == stored and cached.row:
                row = cached.row  # the row this process bound it to, before a key change
            else:
                row = self._stored_row(instance)
            value = cast("EncryptedType", self.encrypted_type).from_stored(stored, row)
        else:
            value = stored if self.decrypt is None else self.decrypt(stored)
        for bound, stored_index in zip(self.indexes, index or (), strict=False):
            if stored_index is not None:
                bound.blind_index.check(value, stored_index, column=self.source_label)
        self._remember(instance, stored, value, index, row)
        return value

    def _stored_row(self, instance: Any) -> tuple[Any, ...]:
        row = cast("_RowKey", self.row_key).stored(instance)
        if row is None:
            raise ConfigurationError(
                f"{self.label}: the value is bound to its row (bind_row=True), and this "
                f"{type(instance).__name__} has no primary key yet; set it first"
            )
        return row

    def _remember(
        self,
        instance: Any,
        stored: Any,
        value: Any,
        index: tuple[str | None, ...] | None,
        row: tuple[Any, ...] | None = None,
    ) -> None:
        # Only immutable values: a cached dict could be mutated without being re-encrypted.
        # A row-bound value waiting for its row is kept whatever it is: it is the only copy;
        # of another, the row its token is bound to is, to bind it again if the key changes.
        if isinstance(value, _IMMUTABLE) or (stored is None and value is not None):
            instance.__dict__[self.cache_key] = _Plaintext(stored, value, index, row)
        elif self.row_key is not None and stored is not None:
            instance.__dict__[self.cache_key] = _Plaintext(stored, _UNKEPT, index, row)
        else:
            # Nor keep an older one: a value waiting for its row would outlive its None.
            instance.__dict__.pop(self.cache_key, None)

    def assign(self, instance: Any, value: Any) -> None:
        """Store ``value``: encrypt it (if needed) and compute its index, then set both.

        A row-bound value is encrypted once its row has a primary key: at once when it has
        one, or can take one from a Python-side column default (``default=uuid.uuid4``, which
        is then set on the instance); else when the key is assigned, or at flush.
        """
        # Everything that can fail runs before the first attribute changes, so a failed
        # assignment never leaves a value without its matching index.
        row = None
        if self.row_key is not None:
            row = self.row_key.current(instance)
            if row is None and value is not None and instance_state(instance).key is None:
                self.row_key.fill_defaults(instance)
                row = self.row_key.current(instance)
            if row is not None:
                self.row_key.check(row)
        if self.row_key is not None and row is None:
            pairs = self._pairs(None, value)
        else:
            pairs = self.column_values(value, row)
        for key, stored in pairs:
            setattr(instance, key, stored)
        self._remember(instance, pairs[0][1], value, tuple(v for _, v in pairs[1:]) or None, row)

    def column_values(
        self, value: Any, row: tuple[Any, ...] | None = None
    ) -> list[tuple[str, Any]]:
        """``(attribute key, value)`` pairs that store ``value``, for UPDATE and bulk INSERT.

        A row-bound hybrid needs ``row``, the primary key of the row the value is for.
        """
        if self.row_key is None:
            stored = value if self.encrypt is None else self.encrypt(value)
        elif value is None:
            stored = None
        else:
            if row is None:
                raise ConfigurationError(
                    f"{self.label}: values are bound to their rows (bind_row=True), so an "
                    "UPDATE or INSERT statement cannot encrypt them, knowing no row's primary "
                    "key (setting NULL works); load or create the objects and assign the "
                    "value to each, or give the key to encrypted_values()"
                )
            stored = cast("EncryptedType", self.encrypted_type).to_stored(value, row)
        return self._pairs(stored, value)

    def _pairs(self, stored: Any, value: Any) -> list[tuple[str, Any]]:
        pairs = [(self.source_key, stored)]
        pairs.extend((bound.key, bound.blind_index.compute(value)) for bound in self.indexes)
        return pairs

    def key_assigned(self, target: Any, value: Any, old: Any, initiator: Any) -> None:
        """Bind the value to the row's new primary key as soon as the key is complete."""
        row_key = cast("_RowKey", self.row_key)
        attr = initiator.key
        row = tuple(
            value if name == attr else row_key.current_part(target, name) for name in row_key.attrs
        )
        if any(v is None for v in row):
            return
        self._rebind(target, row, None)

    def bind_row(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        """At flush, bind the value to the row's primary key as it will be stored.

        Encrypts a value assigned before the primary key was known (filling the key from a
        Python-side column default, such as ``default=uuid.uuid4``), and re-encrypts the
        value of a row whose primary key changed by a path the setter did not see.

        Raises:
            ConfigurationError: the primary key is still unknown (a database-generated key),
                or a new object holds a token bound to another row.
        """
        row_key = cast("_RowKey", self.row_key)
        state = instance_state(target)
        if state.key is None:
            row_key.fill_defaults(target)
        row = row_key.current(target)
        if row is None:
            cached = target.__dict__.get(self.cache_key)
            waiting = isinstance(cached, _Plaintext) and cached.pending
            if waiting or state.dict.get(self.source_key) is not None:
                raise ConfigurationError(
                    f"{self.label}: the value is bound to its row (bind_row=True), and this "
                    f"{type(target).__name__} has no primary key at flush; row binding needs a "
                    "key known before INSERT (assigned, or a Python-side default such as "
                    "default=uuid.uuid4), not one the database generates"
                )
            return
        self._rebind(target, row, connection)

    def _rebind(self, target: Any, row: tuple[Any, ...], connection: Any) -> None:
        """Make the instance's token the value's, bound to ``row``; nothing if it is already.

        The value is what is waiting, what this process bound (or read) under another key, or
        the token decrypted under the row's stored key. ``connection``: in a flush, where the
        token, if not loaded, is read with it; elsewhere the attribute loads as usual.
        """
        row_key = cast("_RowKey", self.row_key)
        codec = cast("EncryptedType", self.encrypted_type)
        state = instance_state(target)
        cached = target.__dict__.get(self.cache_key)
        if not isinstance(cached, _Plaintext):
            cached = None
        if cached is not None and cached.pending:
            value = cached.value
        else:
            if self.source_key in state.dict or state.key is None:
                stored = state.dict.get(self.source_key)
            elif connection is None:
                stored = getattr(target, self.source_key)  # deferred or expired: load it
            else:
                stored = row_key.load(connection, cast("tuple[Any, ...]", row_key.stored(target)))
            if stored is None:
                return
            if cached is not None and cached.stored == stored and cached.row is not None:
                if cached.row == row:
                    return
                kept = cached.value
                value = codec.from_stored(stored, cached.row) if kept is _UNKEPT else kept
            elif state.key is not None:
                old = cast("tuple[Any, ...]", row_key.stored(target))
                if old == row:
                    return
                value = codec.from_stored(stored, old)
            else:
                # A new object holding a token this process did not bind: a copied object
                # (make_transient) or one built from stored values. It must be this row's.
                try:
                    value = codec.from_stored(stored, row)
                except DecryptionError:
                    raise ConfigurationError(
                        f"{self.label}: this new {type(target).__name__} holds a token bound to "
                        "another row (a copied object?), which would not decrypt in this one; "
                        "assign the value itself"
                    ) from None
                self._remember(target, stored, value, cached.index if cached else None, row)
                return
        row_key.check(row)
        token = codec.to_stored(value, row)
        setattr(target, self.source_key, token)
        self._remember(target, token, value, cached.index if cached else None, row)

    def sync_index(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        """Recompute the index when the source attribute changed by any path.

        The setter already sets both; this catches direct writes to the source attribute
        (``customer._email = ...``, a copied token) so an index never disagrees with its value.
        """
        if not self.indexes:
            return
        state = instance_state(target)
        if state.key is not None and not state.attrs[self.source_key].history.has_changes():
            return
        # Unchecked: the indexes are what is being brought in step with the value.
        value = self.plaintext(target, check=False)
        for bound in self.indexes:
            index = bound.blind_index.compute(value)
            if state.dict.get(bound.key) != index:
                setattr(target, bound.key, index)


@dataclass(frozen=True, slots=True)
class _BoundSubstring:
    """A hybrid's substring index on one mapped class: its side table, kept at flush."""

    label: str  # the side table's full name, for messages
    index: SubstringIndex  # bound: named
    table: Table
    owner_keys: tuple[str, ...]  # attributes of the owner's primary key, in order
    read: Callable[[Any], Any]  # a flushed instance's plaintext, unchecked
    source_key: str

    def owner_columns(self) -> list[Column[Any]]:
        """The side table's columns that hold the owner's primary key."""
        return [c for c in self.table.columns if c.name != TRIGRAM_COLUMN]

    def _owner(self, target: Any) -> dict[str, Any]:
        # The table's primary key, which the side table refers to: a mapper may declare
        # another one (__mapper_args__ = {"primary_key": ...}).
        columns = self.owner_columns()
        return {c.name: getattr(target, k) for c, k in zip(columns, self.owner_keys, strict=True)}

    def _delete(self, connection: Any, owner: dict[str, Any]) -> None:
        columns = self.table.c
        connection.execute(
            self.table.delete().where(*(columns[name] == v for name, v in owner.items()))
        )

    def _insert(self, connection: Any, owner: dict[str, Any], target: Any) -> None:
        values = sorted(self.index.trigram_values(self.read(target)))
        if values:
            connection.execute(self.table.insert(), [{**owner, TRIGRAM_COLUMN: v} for v in values])

    def inserted(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        """After the owner's INSERT, in the same flush: write its trigram values."""
        owner = self._owner(target)
        if connection.dialect.name == "sqlite":
            # SQLite enforces no foreign key unless asked to: side rows of a deleted owner
            # whose key is used again may still be there.
            self._delete(connection, owner)
        self._insert(connection, owner, target)

    def updated(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        """After the owner's UPDATE: rewrite its trigram values if the value changed."""
        if not instance_state(target).attrs[self.source_key].history.has_changes():
            return
        owner = self._owner(target)
        self._delete(connection, owner)
        self._insert(connection, owner, target)

    def deleting(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        """Before the owner's DELETE: delete its trigram values (SQLite enforces no FK)."""
        owner = self._owner(target)
        if connection.dialect.name != "sqlite":
            # The owner row's lock first, then its side rows', as every other writer takes
            # them (a flush's UPDATE, a reindex batch): the other order can deadlock.
            (constraint,) = self.table.foreign_key_constraints
            keys = [(fk.column, owner[fk.parent.name]) for fk in constraint.elements]
            locked = select(*(c for c, _ in keys)).where(*(c == v for c, v in keys))
            connection.execute(locked.with_for_update())
        self._delete(connection, owner)


#: The side table's column of trigram values; the others are the owner's primary key.
TRIGRAM_COLUMN = "trigram"
#: The longest identifier PostgreSQL takes (MariaDB takes 64).
_MAX_IDENTIFIER = 63


def substring_index_of(table: Table) -> tuple[SubstringIndex, str] | None:
    """The substring index whose side table ``table`` is, and the column it indexes.

    The column is named ``"<table>.<column>"`` (the owner table's full name); None when
    ``table`` is no side table of an :func:`encrypted_hybrid`.
    """
    return _SIDE_TABLES.get(table)


def _side_table(
    mapper: Mapper[Any], source: Column[Any], declared: SubstringIndex, label: str
) -> tuple[SubstringIndex, Table, tuple[str, ...]]:
    """Declare (once per table) the side table of a substring index in the owner's MetaData."""
    owner = source.table
    if not isinstance(owner, Table):
        raise ConfigurationError(f"{label}: a substring index needs a mapped Table")
    pk = list(owner.primary_key.columns)
    if not pk:
        raise ConfigurationError(
            f"{label}: a substring index needs the table {owner.fullname} to have a primary key"
        )
    index_name = f"ix_{declared.table}_{TRIGRAM_COLUMN}"
    if len(index_name) > _MAX_IDENTIFIER:
        raise ConfigurationError(
            f"{label}: the side table's name {declared.table!r} is too long: its index "
            f"{index_name!r} would be over the {_MAX_IDENTIFIER} characters PostgreSQL allows; "
            f"use at most {_MAX_IDENTIFIER - len(index_name) + len(declared.table)} characters"
        )
    metadata = owner.metadata
    key = f"{owner.schema}.{declared.table}" if owner.schema else declared.table
    source_label = f"{owner.fullname}.{source.name}"
    table = metadata.tables.get(key)
    if table is not None:
        known = _SIDE_TABLES.get(table)
        if known is None or known[1] != source_label:
            raise ConfigurationError(
                f"{label}: the table {key} already exists in the MetaData; a substring index "
                "needs a side table of its own"
            )
        bound = known[0]
    else:
        bound = declared.bound_to(key)
        names = [f"owner_{c.name}" for c in pk]
        table = Table(
            declared.table,
            metadata,
            *(Column(name, c.type, primary_key=True) for name, c in zip(names, pk, strict=True)),
            Column(TRIGRAM_COLUMN, String(TRIGRAM_LENGTH), primary_key=True),
            # A changed primary key carries its side rows along where foreign keys are enforced.
            ForeignKeyConstraint(names, pk, ondelete="CASCADE", onupdate="CASCADE"),
            Index(index_name, TRIGRAM_COLUMN),
            schema=owner.schema,
        )
        _SIDE_TABLES[table] = (bound, source_label)
    owner_keys = tuple(mapper.get_property_by_column(c).key for c in pk)
    return bound, table, owner_keys


class _EncryptedComparator(ExprComparator[Any]):
    """Class-level behaviour: equality goes to the blind index, everything else refuses."""

    def __init__(self, cls: Any, hybrid: EncryptedHybrid[Any], binding: _Binding):
        source = getattr(cls, binding.source_key)
        if binding.encrypted_type is None:
            expression = source.__clause_element__()
        else:
            # Selecting the hybrid then decrypts, exactly as an EncryptedText column would.
            expression = type_coerce(source, binding.encrypted_type)
        super().__init__(cls, expression, hybrid)
        self._entity = cls
        self._hybrid = hybrid
        self._binding = binding
        self._source = source

    def index(self, column: str) -> IndexComparator:
        """Return the comparisons of one of the attribute's blind indexes, by its column.

        ``Customer.phone.index("phone_last4") == "0000"`` compares the index column
        ``phone_last4`` with the index of the term ``"0000"``: the term is of what the index
        holds (four digits here, a domain for :data:`~sa_fieldcrypt.email_domain`), not a
        whole value.

        Raises:
            ConfigurationError: the attribute has no blind index in that column.
        """
        binding = self._binding
        for bound in binding.indexes:
            if bound.key == column:
                return IndexComparator(self._target(bound))
        known = ", ".join(repr(b.key) for b in binding.indexes) or "none"
        raise ConfigurationError(
            f"{binding.label} has no blind index in the column attribute {column!r} "
            f"(its index columns: {known})"
        )

    def operate(self, op: OperatorType, *other: Any, **kwargs: Any) -> Any:
        if op in _NULL_TESTS and other and _is_null(other[0]):
            # The stored value is NULL exactly when the plaintext is None. Any other is_()
            # operand would be compared with the ciphertext, and bound as plaintext.
            return _NULL_TESTS[op](self._source, None)
        if op in _EQUALITY:
            return self._equality(op, other[0] if other else None)
        if op is operators.contains_op and self._binding.substring is not None:
            return self._contains(other[0] if other else None, kwargs)
        raise self._refusal(op)

    def _contains(self, term: Any, kwargs: dict[str, Any]) -> ColumnElement[bool]:
        binding = self._binding
        bound = cast("_BoundSubstring", binding.substring)
        if kwargs.get("autoescape") or kwargs.get("escape") is not None:
            raise UnsupportedComparisonError(
                f"{binding.label}: contains() on a substring index takes no escape options; "
                "the term is matched as text, with no wildcards"
            )
        if not isinstance(term, str):
            raise UnsupportedComparisonError(
                f"{binding.label}: contains() needs a plaintext str term; a substring index "
                "cannot be computed from an SQL expression, another column or None"
            )
        index = bound.index
        text = index.normalize(term)
        if text is None or len(text) < TRIGRAM:
            raise UnsupportedComparisonError(
                f"{binding.label}: a substring index finds terms of at least {TRIGRAM} "
                f"characters once normalized, and this one has {len(text or '')}; a shorter "
                "term would match by far too many rows to decrypt"
            )
        entity = self._entity
        owners = [getattr(entity, k) for k in bound.owner_keys]
        columns = bound.owner_columns()
        trigram = bound.table.c[TRIGRAM_COLUMN]
        per_key: list[ColumnElement[bool]] = []
        values = index.term_values(text)
        for hashes in values.values():
            # Stored values are unique per (owner, trigram value): counting rows counts
            # the distinct trigram values of the term each owner holds.
            held = (
                select(*columns)
                .where(trigram.in_(hashes))
                .group_by(*columns)
                .having(func.count() == len(hashes))
            )
            owner = owners[0] if len(owners) == 1 else tuple_(*owners)
            per_key.append(owner.in_(held))
        condition = per_key[0] if len(per_key) == 1 else or_(*per_key)
        primary = next(iter(values))
        install_filtering()
        hybrid = self._hybrid

        def read(instance: Any, check: bool) -> Any:
            return hybrid._binding_for(type(instance)).plaintext(instance, check=check)

        match = ContainsMatch(
            entity, binding.label, read, index, primary, index.digest(text, primary), len(text)
        )
        return Candidates(condition, match)

    def reverse_operate(self, op: OperatorType, other: Any, **kwargs: Any) -> Any:
        if op in (operators.eq, operators.ne):
            return self.operate(op, other, **kwargs)
        raise self._refusal(op)

    def _equality(self, op: OperatorType, other: Any) -> Any:
        binding = self._binding
        bound = binding.equality
        if bound is None:
            attr = _attr(binding.label)
            if binding.indexes:
                raise UnsupportedComparisonError(
                    f"{binding.label}: {operator_name(op)} compares whole values, and each of its "
                    "blind indexes is of part of the value; compare an index with "
                    f"{attr}.index({binding.indexes[0].key!r}) == ..., or add an index of "
                    "whole values"
                )
            raise UnsupportedComparisonError(
                f"{binding.label} has no blind index, so {operator_name(op)} cannot run in SQL: "
                f"{binding.source_label} is encrypted with randomized encryption. Add an index "
                f"column, e.g. {attr}_bidx = "
                "mapped_column(String(BLIND_INDEX_LENGTH)), and pass "
                f"blind_index=BlindIndex('{attr}_bidx', ...) to "
                "encrypted_hybrid()"
            )
        return index_condition(self._target(bound), op, other, term=False)

    def _target(self, bound: _BoundIndex) -> IndexTarget:
        hybrid = self._hybrid

        def read(instance: Any, check: bool) -> Any:
            return hybrid._binding_for(type(instance)).plaintext(instance, check=check)

        return IndexTarget(
            self._entity, self._binding.label, bound.key, bound.label, bound.blind_index, read
        )

    def _refusal(self, op: OperatorType) -> UnsupportedComparisonError:
        binding = self._binding
        if not binding.indexes:
            reason = (
                f"{binding.source_label} is encrypted with randomized encryption, so the "
                "database cannot compare, order or search its values; only is_(None) and "
                "is_not(None) work"
            )
        else:
            labels = ", ".join(b.label for b in binding.indexes)
            reason = (
                f"{binding.source_label} is encrypted, and its blind indexes ({labels}) hold "
                "keyed hashes of normalized values, which support only ==, !=, in_() and "
                "not_in() with Python values (and is_(None) on the value itself; no "
                "ordering, pattern matching or arithmetic)"
            )
        return UnsupportedComparisonError(
            f"{binding.label}: cannot apply {operator_name(op)} in SQL: {reason}"
        )


class IndexComparator:
    """The SQL comparisons of one blind index of an encrypted attribute (or a compound index).

    Returned by ``Customer.phone.index("phone_last4")``, and by a
    :func:`compound_index` attribute. Terms are of what the index holds:
    ``Customer.phone.index("phone_last4") == "0000"``,
    ``Customer.email.index("email_domain").in_(["example.com", "example.org"])``, a tuple
    for a compound index.

    A full-size index is exact on what it holds: ``==``, ``!=``, ``in_()`` and ``not_in()``
    run in SQL alone. A truncated one (``bits=`` below 256) finds candidates, which the ORM
    filters to the exact matches after decrypting them (``docs/blind-indexes.md``); ``!=``
    and ``not_in()`` are refused there, since rows that only share a truncated index value
    with the term would be left out.
    """

    __hash__ = object.__hash__

    def __init__(self, target: IndexTarget):
        self._target = target

    def __eq__(self, other: object) -> ColumnElement[bool]:  # type: ignore[override]
        return self._compare(operators.eq, other)

    def __ne__(self, other: object) -> ColumnElement[bool]:  # type: ignore[override]
        return self._compare(operators.ne, other)

    def in_(self, other: Any) -> ColumnElement[bool]:
        """Return the condition that the index is that of one of the terms ``other``."""
        return self._compare(operators.in_op, other)

    def not_in(self, other: Any) -> ColumnElement[bool]:
        """Return the condition that the index is of none of the terms (full size only)."""
        return self._compare(operators.not_in_op, other)

    def _compare(self, op: OperatorType, other: Any) -> ColumnElement[bool]:
        if other is None or isinstance(other, Null):
            raise UnsupportedComparisonError(
                f"{self._target.label}: an index compares with terms, not None; test the "
                "indexed value itself with is_(None)"
            )
        return index_condition(self._target, op, other, term=True)

    def adapt_to_entity(self, adapt_to_entity: Any) -> IndexComparator:
        """Return these comparisons for an aliased class (``aliased(Customer)``)."""
        return IndexComparator(replace(self._target, entity=adapt_to_entity.entity))

    def __repr__(self) -> str:
        return f"IndexComparator({self._target.label!r})"


#: The plain-column parts of compound indexes: class -> {attribute: compound index label}.
_PLAIN_PARTS: weakref.WeakKeyDictionary[type, dict[str, str]] = weakref.WeakKeyDictionary()


def _watch_plain_parts(cls: type, attributes: Sequence[str], label: str) -> None:
    """Refuse, from now on, ORM UPDATE statements that set these attributes of ``cls``."""
    parts = _PLAIN_PARTS.setdefault(cls, {})
    parts.update(dict.fromkeys(attributes, label))
    if not event.contains(Session, "do_orm_execute", _refuse_stale_compounds):
        event.listen(Session, "do_orm_execute", _refuse_stale_compounds)


def _refuse_stale_compounds(state: ORMExecuteState) -> None:
    """Refuse an ORM UPDATE that sets a plain part of a compound index: it would go stale."""
    mapper = state.bind_mapper
    if not state.is_update or mapper is None:
        return
    watched: dict[str, str] = {}
    for cls in mapper.class_.__mro__:
        watched.update(_PLAIN_PARTS.get(cls, {}))
    if not watched:
        return
    statement: Any = state.statement
    given: list[Any] = list(getattr(statement, "_values", None) or ())
    given += [k for k, _ in getattr(statement, "_ordered_values", None) or ()]
    rows = state.parameters
    for row in rows if isinstance(rows, list) else [rows] if rows else []:
        given += list(row)
    names = {k if isinstance(k, str) else getattr(k, "key", None) for k in given}
    stale = sorted({watched[n] for n in names if n in watched})
    if stale:
        raise ConfigurationError(
            f"this UPDATE sets a part of {', '.join(stale)}, which it cannot recompute (a "
            "compound index's other parts are in the rows, a substring index is in its side "
            "table); load the objects and assign the value to each, or run "
            "`fieldcrypt reindex` after the UPDATE"
        )


def _attr(label: str) -> str:
    return label.rpartition(".")[2]


def _is_null(value: Any) -> bool:
    return value is None or isinstance(value, Null)


if TYPE_CHECKING:
    # SQLORMOperations, not SQLAlchemy's hybrid class-level accessor: that one is private and
    # newer than the oldest SQLAlchemy this library allows.
    class _ClassAttribute(SQLORMOperations[_V]):
        """What ``Customer.phone`` is to a type checker: a hybrid with its indexes."""

        def index(self, column: str) -> IndexComparator: ...


class EncryptedHybrid(hybrid_property[_V]):
    """A hybrid property over an encrypted column and, optionally, its blind index.

    Create it with :func:`encrypted_hybrid`. The descriptor binds to each mapped class when
    the class is mapped: that is when the columns are checked and, for a ciphertext column of a
    plain type, its ``column.info[COLUMN_INFO_KEY]`` is set.

    To a type checker, ``customer.email`` is of the type the column type stores (``str`` for
    the default ``EncryptedText``); annotate the attribute to say otherwise, e.g.
    ``email: EncryptedHybrid[str | None] = encrypted_hybrid(...)`` for a nullable column.
    """

    def __init__(
        self,
        source: str,
        *,
        blind_index: BlindIndex | str | Sequence[BlindIndex | str] | None = None,
        column_type: EncryptedType[_V] | None = None,
        check_index: bool = True,
        bind_row: bool = False,
        substring: SubstringIndex | None = None,
    ):
        if not isinstance(source, str) or not source:
            raise ConfigurationError(
                "encrypted_hybrid(): source must name the mapped attribute of the encrypted column"
            )
        declared = (
            ()
            if blind_index is None
            else (blind_index,)
            if isinstance(blind_index, (str, BlindIndex))
            else tuple(blind_index)
        )
        indexes = tuple(BlindIndex(i) if isinstance(i, str) else i for i in declared)
        if not all(isinstance(i, BlindIndex) for i in indexes):
            raise ConfigurationError(
                "encrypted_hybrid(): blind_index must be a BlindIndex or str, or a list of them"
            )
        columns = [i.column for i in indexes]
        if len(set(columns)) != len(columns):
            raise ConfigurationError(
                "encrypted_hybrid(): each blind index needs a column of its own; "
                f"{', '.join(sorted(c for c in set(columns) if columns.count(c) > 1))} is "
                "given twice"
            )
        if column_type is not None and not isinstance(column_type, EncryptedType):
            raise ConfigurationError(
                "encrypted_hybrid(): column_type must be an EncryptedType such as EncryptedText()"
            )
        if substring is not None and not isinstance(substring, SubstringIndex):
            raise ConfigurationError("encrypted_hybrid(): substring must be a SubstringIndex")
        self._source = source
        self._substring = substring
        self._blind_indexes = indexes
        self._column_type = column_type
        self._check_index = check_index
        self._bind_row = bind_row
        self._bindings: weakref.WeakKeyDictionary[type, _Binding] = weakref.WeakKeyDictionary()
        self._named = False  # whether __set_name__ gave the attribute's own name
        # The compound indexes reading this attribute, by the class declaring them.
        self._compounds: weakref.WeakKeyDictionary[type, list[str]] = weakref.WeakKeyDictionary()

        def fget(instance: Any) -> Any:
            return self._binding_for(type(instance)).plaintext(instance)

        def fset(instance: Any, value: Any) -> None:
            self._binding_for(type(instance)).assign(instance, value)

        def comparator(cls: Any) -> _EncryptedComparator:
            return _EncryptedComparator(cls, self, self._binding_for(cls))

        def update_expr(cls: Any, value: Any) -> Sequence[tuple[Any, Any]]:
            compounds = [
                c for k, found in self._compounds.items() if issubclass(cls, k) for c in found
            ]
            if self._substring is not None:
                raise ConfigurationError(
                    f"{self._binding_for(cls).label} has a substring index, whose side table "
                    "an UPDATE statement cannot rewrite; load the objects and assign the value "
                    "to each, or run `fieldcrypt reindex` after the UPDATE"
                )
            if compounds:
                # Their other parts are in the rows, not here: the index would go stale.
                raise ConfigurationError(
                    f"{self._binding_for(cls).label} is a part of the compound index "
                    f"{', '.join(compounds)}, which an UPDATE statement cannot recompute; "
                    "load the objects and assign the value to each"
                )
            pairs = self._binding_for(cls).column_values(value)
            return [(getattr(cls, key), stored) for key, stored in pairs]

        def bulk_dml(cls: Any, mapping: MutableMapping[str, Any], value: Any) -> None:
            binding = self._binding_for(cls)
            row = None if binding.row_key is None else binding.row_key.of_mapping(mapping)
            mapping.update(binding.column_values(value, row))

        super().__init__(fget, fset, custom_comparator=comparator, update_expr=update_expr)  # type: ignore[arg-type]
        # SQLAlchemy 2.1 reads this for ORM bulk INSERT with the plaintext key; 2.0 ignores it.
        self.bulk_dml_setter = bulk_dml
        self.__name__ = source
        self.__doc__ = f"Plaintext of the encrypted column {source!r}."

    if TYPE_CHECKING:
        # Declared here for type checkers only: before 2.0.44 SQLAlchemy's hybrid_property
        # takes any value in __set__, and assigning 42 to a str attribute must be an error.
        def __set__(self, instance: object, value: SQLCoreOperations[_V] | _V) -> None: ...

        # And so that type checkers know Customer.phone.index(...). The class-level type
        # differs from hybrid_property's, which differs between SQLAlchemy releases.
        @overload  # type: ignore[override]
        def __get__(self, instance: Any, owner: None) -> Self: ...
        @overload
        def __get__(self, instance: None, owner: type[object]) -> _ClassAttribute[_V]: ...
        @overload
        def __get__(self, instance: object, owner: type[object]) -> _V: ...
        def __get__(self, instance: object, owner: type[object] | None) -> Any: ...

    def __set_name__(self, owner: type, name: str) -> None:
        self.__name__ = name
        self.__qualname__ = f"{owner.__qualname__}.{name}"
        self._named = True

    def _copy(self, **kw: Any) -> hybrid_property[Any]:
        raise ConfigurationError(
            f"{self.__name__}: an encrypted_hybrid cannot be extended with .setter(), "
            ".expression() or similar; declare a plain hybrid_property that uses it instead"
        )

    # -- binding to mapped classes -------------------------------------------------------

    def _binding_for(self, cls: Any) -> _Binding:
        return _binding_on(cls, self._bindings, self._bind, self.__name__, "encrypted_hybrid")

    def _bind(self, mapper: Mapper[Any]) -> _Binding:
        cls = mapper.class_
        known = self._bindings.get(cls)
        if known is not None:
            return known
        if not self._named:
            # Assigned after the class was declared: Python calls __set_name__ in class
            # bodies only, and messages and the plaintext cache need the attribute's name.
            for klass in cls.__mro__:
                name = next((k for k, v in vars(klass).items() if v is self), None)
                if name is not None:
                    self.__set_name__(klass, name)
                    break
        label = f"{cls.__name__}.{self.__name__}"
        source = _mapped_column(mapper, self._source, label, "encrypted column")
        source_label = f"{source.table.fullname}.{source.name}"
        encrypted_type: EncryptedType | None
        if isinstance(source.type, EncryptedType):
            if self._column_type is not None:
                raise ConfigurationError(
                    f"{label}: {source_label} is already an {type(source.type).__name__} column; "
                    "drop column_type=, which is for columns of a plain type holding ciphertext"
                )
            encrypted_type = None
            if self._bind_row:
                raise ConfigurationError(
                    f"{label}: bind_row=True needs the hybrid to encrypt, and {source_label} is "
                    f"an {type(source.type).__name__} column, which encrypts on its own; map it "
                    "as a plain Text column holding ciphertext, with column_type="
                    f"{type(source.type).__name__}()"
                )
        else:
            encrypted_type = self._ciphertext_type(source, label)

        indexes = tuple(
            _bind_index(mapper, declared, source.name, label) for declared in self._blind_indexes
        )
        # == compares whole values: the first index of them, a full-size one if any.
        whole = [bound for bound in indexes if not bound.blind_index.derived]
        full = [bound for bound in whole if not bound.blind_index.truncated]
        equality = next(iter(full or whole), None)

        row_key = _row_key(mapper, source, label) if self._bind_row else None
        substring = None
        if self._substring is not None:
            index, table, owner_keys = _side_table(mapper, source, self._substring, label)

            def read(instance: Any) -> Any:
                return self._binding_for(type(instance)).plaintext(instance, check=False)

            substring = _BoundSubstring(
                table.fullname, index, table, owner_keys, read, self._source
            )
        binding = _Binding(
            label=label,
            source_key=self._source,
            source_label=source_label,
            encrypted_type=encrypted_type,
            encrypt=None if encrypted_type is None else encrypted_type.bind_processor(_DIALECT),
            decrypt=(
                None if encrypted_type is None else encrypted_type.result_processor(_DIALECT, None)
            ),
            indexes=indexes,
            equality=equality,
            check_index=self._check_index,
            cache_key=f"_sa_fieldcrypt_{self.__name__}",
            row_key=row_key,
            substring=substring,
        )
        self._bindings[cls] = binding
        if row_key is not None:
            # Before the index is synchronized: it reads the value this binds.
            event.listen(mapper, "before_insert", binding.bind_row)
            event.listen(mapper, "before_update", binding.bind_row)
            for attr in row_key.attrs:
                event.listen(getattr(cls, attr), "set", binding.key_assigned)
        if indexes:
            event.listen(mapper, "before_insert", binding.sync_index)
            event.listen(mapper, "before_update", binding.sync_index)
        if substring is not None:
            event.listen(mapper, "after_insert", substring.inserted)
            event.listen(mapper, "after_update", substring.updated)
            event.listen(mapper, "before_delete", substring.deleting)
            # Either name: ORM bulk UPDATE by primary key sets the hybrid by its own name.
            _watch_plain_parts(
                cls, [self._source, self.__name__], f"the substring index {substring.label}"
            )
        return binding

    def _ciphertext_type(self, source: Column[Any], label: str) -> EncryptedType:
        existing = column_codec(source)
        if existing is not None:  # recorded already: another class on the table, or by hand
            if existing.row_bound != self._bind_row:
                raise ConfigurationError(
                    f"{label}: {source.table.fullname}.{source.name} is already read "
                    f"{'with' if existing.row_bound else 'without'} row binding; every hybrid "
                    "over one column must agree on bind_row"
                )
            return existing
        if not isinstance(source.type, String):
            raise ConfigurationError(
                f"{label}: {source.table.fullname}.{source.name} must be a string column "
                f"holding ciphertext (Text), or an EncryptedType column; it is {source.type!r}"
            )
        template = self._column_type or EncryptedText()
        in_use = any(b.encrypted_type is template for b in self._bindings.values())
        if self._bind_row:
            try:
                encrypted_type = template.bound_to_rows()  # a copy already
            except ConfigurationError as exc:
                raise ConfigurationError(f"{label}: {exc}") from None
        else:
            encrypted_type = template.copy() if in_use else template
        # SQLAlchemy's own way of telling a type which column it serves: errors then name it.
        encrypted_type._set_parent(source)
        source.info[COLUMN_INFO_KEY] = encrypted_type
        return encrypted_type


_Bound = TypeVar("_Bound")


def _binding_on(
    cls: Any,
    bindings: MutableMapping[type, _Bound],
    bind: Callable[[Mapper[Any]], _Bound],
    name: str,
    what: str,
) -> _Bound:
    """What a descriptor (``what``, named ``name``) resolved to on ``cls``, bound on first use.

    ``cls`` is a mapped class or an aliased one (its class's binding); ``bindings`` are the
    descriptor's, one per mapped class, which ``bind`` fills.
    """
    if not isinstance(cls, type):  # an AliasedClass
        cls = inspect(cls).class_
    binding = bindings.get(cls)
    if binding is not None:
        return binding
    mapper = inspect(cls, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise ConfigurationError(f"{cls.__name__}.{name}: {what} works on mapped classes only")
    return bind(mapper)


def _bind_index(
    mapper: Mapper[Any], declared: BlindIndex, source: str | None, label: str
) -> _BoundIndex:
    """Check one declared index's column, and record the bound index in its ``info``.

    ``source``: the name of the encrypted column the index is of; None for a compound index.
    """
    column = _mapped_column(mapper, declared.column, label, "blind-index column")
    index_label = f"{column.table.fullname}.{column.name}"
    length = getattr(column.type, "length", None)
    needed = declared.max_length
    if not isinstance(column.type, String) or (length is not None and length < needed):
        raise ConfigurationError(
            f"{label}: the blind-index column {index_label} must be a string column "
            f"of at least {needed} characters (BLIND_INDEX_LENGTH fits every index): "
            f"mapped_column(String({BLIND_INDEX_LENGTH}))"
        )
    existing = column.info.get(INFO_BLIND_INDEX)
    if existing is not None and existing.source_column != source:
        raise ConfigurationError(
            f"{label}: {index_label} is already the blind index of "
            f"{existing.source_column or 'a compound index'!r}; every index needs its own column"
        )
    if declared.truncated and _is_unique(column):
        raise ConfigurationError(
            f"{label}: {index_label} is in a unique constraint or index, and its blind index "
            f"is truncated to {declared.bits} bits, so two different values could collide; "
            "a unique index needs the full size (drop bits=), or drop the constraint"
        )
    bound = existing or declared.bound_to(index_label, source)
    column.info[INFO_BLIND_INDEX] = bound
    return _BoundIndex(declared.column, index_label, bound)


def _is_unique(column: Column[Any]) -> bool:
    """Whether the column is part of a unique constraint or unique index of its table."""
    table = column.table
    if column.unique or column.primary_key:
        return True
    constraints = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    return any(column in c.columns.values() for c in constraints) or any(
        index.unique and column in index.columns.values() for index in table.indexes
    )


def _row_key(mapper: Mapper[Any], source: Column[Any], label: str) -> _RowKey:
    columns = tuple(source.table.primary_key.columns)
    if not columns:
        raise ConfigurationError(
            f"{label}: bind_row=True binds values to the primary key, and "
            f"{source.table.fullname} has none"
        )
    for col in columns:
        if isinstance(col.type, (sqltypes.CHAR, sqltypes.NCHAR)):
            # The database pads (PostgreSQL) or trims (MySQL) such keys: the key read back
            # is not the one the value was bound to.
            raise ConfigurationError(
                f"{label}: bind_row=True cannot bind to the fixed-length CHAR key "
                f"{col.table.fullname}.{col.name}, which the database returns padded or trimmed; "
                "use a VARCHAR, integer or UUID key"
            )
    identity = tuple(_identity_position(mapper, col, label) for col in columns)
    # The attributes of the identity's columns: in joined inheritance a subclass table's key
    # (engineer_id) is filled from the base's (id) only during the flush.
    primary = list(mapper.primary_key)
    attrs = tuple(mapper.get_property_by_column(primary[i]).key for i in identity)
    return _RowKey(attrs, columns, identity, source)


def _identity_position(mapper: Mapper[Any], col: Column[Any], label: str) -> int:
    """Where a table's primary-key column is in the mapper's identity key."""
    for position, key_col in enumerate(mapper.primary_key):
        # The column itself, or (joined inheritance) a key that references the base's.
        if key_col is col or any(fk.column is key_col for fk in col.foreign_keys):
            return position
    raise ConfigurationError(
        f"{label}: bind_row=True cannot tell which part of the mapped identity is "
        f"{col.table.fullname}.{col.name}; map the table's primary key as the class's"
    )


def _mapped_column(mapper: Mapper[Any], key: str, label: str, what: str) -> Column[Any]:
    column = mapper.columns.get(key)
    if not isinstance(column, Column):
        raise ConfigurationError(
            f"{label}: {mapper.class_.__name__} has no mapped column attribute {key!r} "
            f"(the {what}); declare it, e.g. {key}: Mapped[str] = mapped_column(...)"
        )
    return column


def encrypted_hybrid(
    source: str,
    *,
    blind_index: BlindIndex | str | Sequence[BlindIndex | str] | None = None,
    column_type: EncryptedType[_V] | None = None,
    check_index: bool = True,
    bind_row: bool = False,
    substring: SubstringIndex | None = None,
) -> EncryptedHybrid[_V]:
    """Declare a plaintext attribute over an encrypted column, optionally with a blind index.

    Args:
        source: attribute name of the column that stores the value. Either an
            :class:`~sa_fieldcrypt.EncryptedType` column (it reads plaintext already), or a
            plain string column holding ciphertext, as ``sqlacodegen`` generates
            (``email_encrypted: Mapped[str] = mapped_column(Text)``).
        blind_index: a :class:`~sa_fieldcrypt.BlindIndex` (or just the index column's
            attribute name) that makes ``==`` and ``in_()`` work in queries and keeps a unique
            index meaningful; or a list of them, each in a column of its own, with its own
            name and so its own key. The first of whole values (no
            :class:`~sa_fieldcrypt.Transform`), a full-size one if any, answers
            ``Customer.phone == x``; every one answers
            ``Customer.phone.index("<index column attribute>") == term``.
        column_type: for a plain ciphertext column, the type that encrypts and decrypts it
            (default ``EncryptedText()``; ``EncryptedJSON()``, a typed column such as
            ``EncryptedDate()``, or any type with a keyring of its own, also work). Not
            allowed over an ``EncryptedType`` column.
        check_index: with a blind index, check on each read that the value's index equals
            the row's stored one (one HMAC, or one scrypt for a slow index, per stored
            value), so that a value copied in from another row raises
            :class:`~sa_fieldcrypt.DecryptionError` instead of passing for the row its index
            names. A row whose index is still NULL (not backfilled yet), under an index key
            the keyring no longer holds, or made with other cost parameters than a slow
            index's, is not checked. Turn it
            off only for the time a normalizer change waits for ``fieldcrypt reindex``.
            Every index of the attribute is checked (a truncated one at its size).
        bind_row: bind each value to its row's primary key as well as to its column, so
            that a value copied into another row of the same column does not decrypt there,
            index or not. Only over a plain ciphertext column, and only for a primary key
            known before INSERT (assigned, or a Python-side default such as
            ``default=uuid.uuid4``) of int, str or UUID values. Values are then read and
            written through loaded objects only: UPDATE statements that set the attribute,
            and ``select(Customer.email)``, are refused. See ``docs/context-binding.md``.
        substring: a :class:`~sa_fieldcrypt.SubstringIndex`, for
            ``Customer.notes.contains("term")``: the value's trigrams, hashed and truncated,
            in a side table the hybrid declares in the model's MetaData and rewrites at flush.
            ORM UPDATE statements that set the attribute are then refused. See
            ``docs/blind-indexes.md``.

    Returns:
        The descriptor; assign it to a class attribute of a mapped class. Type checkers see
        its values as what ``column_type`` stores, ``str`` without one; over an
        ``EncryptedType`` column of another type, annotate it:
        ``data: EncryptedHybrid[bytes] = encrypted_hybrid("_data")``.
    """
    return EncryptedHybrid(
        source,
        blind_index=blind_index,
        column_type=column_type,
        check_index=check_index,
        bind_row=bind_row,
        substring=substring,
    )


class _Checked:
    """The stored values a compound index was last checked against, kept on the instance.

    They include what an ``EncryptedType`` part's column reads, plaintext: like
    :class:`_Plaintext`, never pickled or copied (a copy checks again).
    """

    __slots__ = ("stored",)

    def __init__(self, stored: tuple[Any, ...] | None):
        self.stored = stored

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Checked, (None,))


@dataclass(frozen=True, slots=True)
class _CompoundBinding:
    """What one mapped class's use of a :class:`CompoundIndex` resolved to."""

    label: str  # "Customer.name_search"
    bound: _BoundIndex
    attributes: tuple[str, ...]
    # Each part's hybrid binding on the class; None for a plain column.
    parts: tuple[_Binding | None, ...]
    watched: tuple[str, ...]  # the stored attributes whose changes change the index
    check_index: bool
    cache_key: str

    def values(self, instance: Any, *, check: bool = True) -> tuple[Any, ...]:
        """The parts' values of a loaded or new instance: plaintexts of hybrids.

        ``check``: read each hybrid part as its attribute reads (checking the row's indexes);
        False reads them unchecked.
        """
        return tuple(
            getattr(instance, attr)
            if part is None or check
            else part.plaintext(instance, check=False)
            for attr, part in zip(self.attributes, self.parts, strict=True)
        )

    def check(self, instance: Any) -> None:
        """Raise unless the row's stored index value is the index of the row's parts.

        Runs when a hybrid part is read (and for a match of a truncated index's lookup), once
        per stored state of the row: the index value and the parts' stored values. An
        attacker with write access who copies an index value, or a part's token, in from
        another row makes the parts disagree with the index. Not checked: a new object or one
        with a part (or the index) assigned and not flushed yet, whose index the flush
        computes; a row loaded without the index column or one of the parts' columns
        (``load_only``, ``defer``): the check loads nothing; a row whose index is NULL (not
        computed yet); an index value under a key the keyring no longer holds, or of other
        cost parameters (see :meth:`~sa_fieldcrypt.BlindIndex.matches`). An index under an
        older key the keyring still holds is checked under that key.

        Raises:
            DecryptionError: the parts do not match the row's compound index.
        """
        if not self.check_index:
            return
        loaded = instance.__dict__
        try:
            stored = (loaded[self.bound.key], *[loaded[key] for key in self.watched])
        except KeyError:
            # A column the query did not load: loading it would be a query per row, or fail
            # (a detached row, raiseload, AsyncSession).
            return
        index = stored[0]
        if index is None:
            return
        # The cache first: it is the common case, and cheaper than the attributes' history.
        checked = loaded.get(self.cache_key)
        if isinstance(checked, _Checked) and checked.stored == stored:
            return
        state = instance_state(instance)
        if state.key is None or any(
            state.attrs[key].history.has_changes() for key in (self.bound.key, *self.watched)
        ):
            return
        if self.bound.blind_index.matches(self.values(instance, check=False), index) is False:
            raise DecryptionError(
                f"the row's parts ({', '.join(self.attributes)}) do not match its compound "
                f"index {self.label}: the row was altered (a part's value or the index value "
                "copied in from another row, or a part changed outside the ORM) or its index "
                "is stale; `fieldcrypt verify` lists such rows, `fieldcrypt reindex` rewrites "
                "stale indexes",
                column=self.bound.label,
            )
        instance.__dict__[self.cache_key] = _Checked(stored)

    def sync(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        """Recompute the index at flush when one of its parts changed."""
        state = instance_state(target)
        if state.key is not None and not any(
            state.attrs[key].history.has_changes() for key in self.watched
        ):
            return
        if state.key is None:
            # A plain part left to its column default has it only at the INSERT, after this.
            plain = [
                (attr, cast("Column[Any]", prop.columns[0]))
                for attr in self.attributes
                if isinstance(prop := mapper.attrs.get(attr), ColumnProperty)
            ]
            _fill_defaults(target, plain, "a compound index needs")
        # Unchecked, as the hybrid's own index is computed: a stale index of another compound
        # sharing a part must not stop this flush.
        index = self.bound.blind_index.compute(self.values(target, check=False))
        if state.dict.get(self.bound.key) != index:
            setattr(target, self.bound.key, index)


class CompoundIndex:
    """A blind index over several attributes of a row, declared on the model.

    Create it with :func:`compound_index`. On the class it compares, on an instance it is
    the stored index value::

        initial_surname = compound_index(
            BlindIndex("initial_surname_bidx",
                       normalizer=compound(first_name=first_chars(1), last_name=letters_lower))
        )
        select(Customer).where(Customer.initial_surname == ("A", "Lovelace"))

    Reading a part that is an encrypted hybrid checks the stored index value against the
    row's parts (``check_index``; see :func:`compound_index`).
    """

    def __init__(self, blind_index: BlindIndex, *, check_index: bool = True):
        if not isinstance(blind_index, BlindIndex) or not isinstance(
            blind_index.normalizer, Compound
        ):
            raise ConfigurationError(
                "compound_index() takes a BlindIndex whose normalizer is compound(...): "
                'BlindIndex("name_bidx", normalizer=compound(first_name=..., last_name=...))'
            )
        self._declared = blind_index
        self._parts = blind_index.normalizer
        self._check_index = check_index
        self._bindings: weakref.WeakKeyDictionary[type, _CompoundBinding] = (
            weakref.WeakKeyDictionary()
        )
        self.__name__ = blind_index.column

    def __set_name__(self, owner: type, name: str) -> None:
        self.__name__ = name

    @overload
    def __get__(self, instance: None, owner: Any) -> IndexComparator: ...
    @overload
    def __get__(self, instance: object, owner: Any) -> str | None: ...
    def __get__(self, instance: object | None, owner: Any) -> IndexComparator | str | None:
        if instance is None:
            binding = self._binding_for(owner)

            def read(loaded: Any, check: bool) -> tuple[Any, ...]:
                of_class = self._binding_for(type(loaded))
                values = of_class.values(loaded, check=check)
                if check:
                    # Reading a hybrid part checked it already; a compound of plain columns
                    # only is checked here, for a match of a truncated index.
                    of_class.check(loaded)
                return values

            bound = binding.bound
            target = IndexTarget(
                owner, binding.label, bound.key, bound.label, bound.blind_index, read
            )
            return IndexComparator(target)
        return cast("str | None", getattr(instance, self._declared.column))

    def _binding_for(self, cls: Any) -> _CompoundBinding:
        return _binding_on(cls, self._bindings, self._bind, self.__name__, "compound_index")

    def _bind(self, mapper: Mapper[Any]) -> _CompoundBinding:
        cls = mapper.class_
        known = self._bindings.get(cls)
        if known is not None:
            return known
        label = f"{cls.__name__}.{self.__name__}"
        watched = []
        columns = []
        plain = []
        parts: list[_Binding | None] = []
        for attr in self._parts.attributes:
            part = next((k.__dict__[attr] for k in cls.__mro__ if attr in k.__dict__), None)
            if isinstance(part, EncryptedHybrid):
                part_binding = part._bind(mapper)
                key = part_binding.source_key
                part._compounds.setdefault(cls, []).append(label)
                watched.append(key)
                columns.append(mapper.columns[key].key)
                parts.append(part_binding)
            elif isinstance(mapper.columns.get(attr), Column):
                watched.append(attr)
                plain.append(attr)
                columns.append(mapper.columns[attr].key)
                parts.append(None)
            else:
                raise ConfigurationError(
                    f"{label}: the compound part {attr!r} is neither an encrypted_hybrid nor a "
                    f"mapped column attribute of {cls.__name__}"
                )
        bound = _bind_index(mapper, self._declared, None, label)
        index_column = mapper.columns[bound.key]
        # Where the jobs (reindex, status) find the parts in the table.
        index_column.info[INFO_COMPOUND_PARTS] = tuple(columns)
        binding = _CompoundBinding(
            label,
            bound,
            self._parts.attributes,
            tuple(parts),
            tuple(watched),
            self._check_index,
            # No attribute name holds a colon: no hybrid's cache key can be this one.
            f"_sa_fieldcrypt_compound:{self.__name__}",
        )
        for reader in parts:
            if reader is not None and all(c is not binding for c in reader.compounds):
                reader.compounds.append(binding)
        if plain:
            _watch_plain_parts(cls, plain, f"the compound index {label}")
        self._bindings[cls] = binding
        event.listen(mapper, "before_insert", binding.sync)
        event.listen(mapper, "before_update", binding.sync)
        return binding


def compound_index(blind_index: BlindIndex, *, check_index: bool = True) -> CompoundIndex:
    """Declare a blind index over several attributes of a row: a model attribute that compares.

    ``blind_index`` names the index column and gives a :func:`~sa_fieldcrypt.compound`
    normalizer, whose parts are attributes of the model: encrypted hybrids (read as
    plaintext) or plain mapped columns. The column is recomputed at flush whenever a part
    changed. Compare it with a tuple of terms, in the parts' order, each read as its part
    reads terms: ``Customer.initial_surname == ("A", "Lovelace")``, ``.in_([...])``; a
    truncated one (``bits=``) is filtered exactly, as for any index.

    ``fieldcrypt reindex``, ``status`` and ``verify`` find the index column and read its
    parts from the table (recorded in the column's ``info[INFO_COMPOUND_PARTS]``).

    Args:
        blind_index: the index column and its ``compound(...)`` normalizer.
        check_index: check, when a part that is an encrypted hybrid is read, that the row's
            index value is the index of the row's parts (decrypting the other encrypted
            parts, once per stored state of the row), so that an index value or a part's
            token copied in from another row raises :class:`~sa_fieldcrypt.DecryptionError`
            instead of passing for the row the index names. Pending (unflushed) changes,
            a NULL index and an index under a key the keyring no longer holds are not
            checked; an index of plain columns only is checked by ``verify``, and for the
            matches of its truncated lookups. Turn it off only for the time a normalizer
            change waits for ``fieldcrypt reindex``.
    """
    return CompoundIndex(blind_index, check_index=check_index)


def encrypted_values(cls: type, **values: Any) -> dict[str, Any]:
    """Turn plaintext keyword values into what a mapped class's columns store.

    Every key that names an :func:`encrypted_hybrid` of ``cls`` becomes its ciphertext
    attribute (encrypted unless the column type encrypts it) and its blind-index attribute;
    other keys pass through. Use it for ORM bulk inserts on SQLAlchemy 2.0, which ignores
    hybrid keys there (2.1 handles ``insert(Customer)`` with ``email=...`` by itself)::

        session.execute(insert(Customer), [encrypted_values(Customer, id=1, email="a@b.c")])

    The keys returned are attribute names, as ORM statements take them. A Core
    ``insert(Customer.__table__)`` wants column names instead and silently drops keys it does
    not know, such as ``_phone`` for the column ``phone_encrypted``.

    Raises:
        ValueTypeError: a value is of the wrong type for its column or normalizer.
    """
    stored: dict[str, Any] = {}
    for key, value in values.items():
        attribute = next((k.__dict__[key] for k in cls.__mro__ if key in k.__dict__), None)
        if isinstance(attribute, EncryptedHybrid):
            binding = attribute._binding_for(cls)
            row = None if binding.row_key is None else binding.row_key.of_mapping(values)
            stored.update(binding.column_values(value, row))
        else:
            stored[key] = value
    return stored


def bind_hybrids(mapper: Mapper[Any]) -> None:
    """Bind every :func:`encrypted_hybrid` of a mapped class, declared in its body or not.

    A hybrid declared in the class body binds when the class is mapped. One assigned to the
    class afterwards (``Customer.phone = encrypted_hybrid(...)``) binds at first use, or when
    this runs: the jobs call it on the models they are given, so ``status``, ``rotate`` and
    ``reindex`` find such a column like any other, and so does the ORM when it configures
    mappers.
    """
    seen: set[str] = set()
    compounds = []
    for klass in mapper.class_.__mro__:
        for name, attr in list(vars(klass).items()):
            if name in seen:
                continue
            seen.add(name)
            if isinstance(attr, EncryptedHybrid):
                attr._bind(mapper)
            elif isinstance(attr, CompoundIndex):
                compounds.append(attr)
    for compound in compounds:  # after the hybrids they read
        compound._bind(mapper)


# Bind at mapping time, not at first use: column.info must be set before anything (rotation,
# reindexing) scans the metadata, and a misdeclared column should fail at import. Hybrids
# assigned after the class was mapped are bound when the mappers are configured.
event.listen(Mapper, "after_mapper_constructed", lambda mapper, _class: bind_hybrids(mapper))
event.listen(Mapper, "mapper_configured", lambda mapper, _class: bind_hybrids(mapper))

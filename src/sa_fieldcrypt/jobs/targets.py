"""What the data jobs run over: encrypted columns and blind-index columns, found once.

Every job and command takes its targets the same way: models named by an import path, or a
table reflected from the database.

- ``find_columns("app.models")`` and ``find_indexes("app.models")``: the mapped classes and
  tables a module defines (a package counts what it imports from its submodules);
  ``"app.models:Base"`` names a declarative base or ``MetaData`` (all its tables), a mapped
  class (its table) or a ``Table``. Objects work too: a module, a ``MetaData``, a class.
- ``reflect_column(engine, "core.customers", "email_encrypted")``: one column of a table the
  database describes, read as :class:`~sa_fieldcrypt.EncryptedText` tokens bound to
  ``core.customers.email_encrypted``, the name as given; no models needed. Blind indexes need
  models: their normalizers are code.

A column counts as encrypted when its type is an :class:`~sa_fieldcrypt.EncryptedType`, or
when it is a plain column carrying ``info["sa_fieldcrypt.type"]`` (ciphertext behind an
:func:`~sa_fieldcrypt.encrypted_hybrid`). A blind-index column is one that an
``encrypted_hybrid`` bound a :class:`~sa_fieldcrypt.BlindIndex` to.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    literal,
    select,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.orm import Mapper, Session

from sa_fieldcrypt.blind_index import BlindIndex, Compound, SubstringIndex
from sa_fieldcrypt.errors import ConfigurationError, RotationError
from sa_fieldcrypt.hybrid import (
    INFO_BLIND_INDEX,
    INFO_COMPOUND_PARTS,
    TRIGRAM_COLUMN,
    bind_hybrids,
    substring_index_of,
)
from sa_fieldcrypt.jobs.sql import keys_in
from sa_fieldcrypt.types import COLUMN_INFO_KEY, EncryptedText, EncryptedType, column_codec

if TYPE_CHECKING:
    from sa_fieldcrypt.jobs.engine import BatchJob, JobFactory

__all__ = [
    "EncryptedColumn",
    "IndexedColumn",
    "ModelSpec",
    "Source",
    "SubstringColumn",
    "find_again",
    "find_columns",
    "find_indexes",
    "find_substring_indexes",
    "jobs_per_target",
    "portable",
    "reflect_column",
]

#: What names models: ``"pkg.module"``, ``"pkg.module:Name"``, or the object itself.
ModelSpec = str | ModuleType | MetaData | Table | type
#: How a worker process finds a target again: ``("models", spec)`` or ``("table", name)``.
Source = tuple[str, str]


class _OnTable:
    """A target named by one column of its table, as ``schema.table.column``."""

    def _named(self) -> Column[Any]:
        raise NotImplementedError

    @property
    def table(self) -> Table:
        """The table the target is on."""
        return _table_of(self._named())

    @property
    def label(self) -> str:
        """``schema.table.column``, as messages name it."""
        return f"{self.table.fullname}.{self._named().name}"


@dataclass(frozen=True, eq=False)
class EncryptedColumn(_OnTable):
    """A stored column of encrypted values and the type that encrypts and decrypts it.

    A ``context=True`` codec (the default) that no column has taken yet is attached to
    ``column``, so it binds values to that column's ``schema.table.column``.

    Attributes:
        column: the table column that holds the tokens.
        codec: the column's :class:`~sa_fieldcrypt.EncryptedType` (its own type, or the one
            named by ``column.info["sa_fieldcrypt.type"]``).
        source: how to find the column again in a worker process; None for columns built
            by hand, which only a one-process run can use.
    """

    column: Column[Any]
    codec: EncryptedType
    source: Source | None = None

    def __post_init__(self) -> None:
        if self.codec.context is True:
            # A codec given by hand for a plain column: it binds to that column's name.
            self.codec._set_parent(self.column)

    def _named(self) -> Column[Any]:
        return self.column

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


@dataclass(frozen=True, eq=False)
class IndexedColumn(_OnTable):
    """A blind-index column and the column (or, compound, columns) whose values it indexes.

    Attributes:
        index: the blind-index column.
        values: the columns holding the indexed values: one encrypted column, or the parts
            of a compound index (encrypted or plain), in the order of its parts.
        blind_index: how index values are computed.
        codecs: for each of ``values``, the type that decrypts it; None for a plain column.
        source: how to find the column again in a worker process, as for
            :class:`EncryptedColumn`.
    """

    index: Column[Any]
    values: tuple[Column[Any], ...]
    blind_index: BlindIndex
    codecs: tuple[EncryptedType | None, ...]
    source: Source | None = None

    def _named(self) -> Column[Any]:
        return self.index  # the label is the index column's

    @property
    def compound(self) -> bool:
        """Whether the index is over several columns (:func:`~sa_fieldcrypt.compound_index`)."""
        return isinstance(self.blind_index.normalizer, Compound)

    def plaintext(self, stored: Sequence[Any], key: tuple[Any, ...]) -> Any:
        """The value the index is of, from a row's stored ``values`` and its primary ``key``.

        A tuple of the parts for a compound index. Raises what decrypting raises.
        """
        decoded = tuple(
            value
            if codec is None or value is None
            else codec.from_stored(value, key if codec.row_bound else None)
            for value, codec in zip(stored, self.codecs, strict=True)
        )
        return decoded if self.compound else decoded[0]

    def __repr__(self) -> str:
        return f"IndexedColumn({self.label!r}, {self.blind_index!r})"


@dataclass(frozen=True, eq=False)
class SubstringColumn:
    """A substring index: its side table and the encrypted column whose values it indexes.

    Attributes:
        side: the side table, one row per (owner row, trigram value).
        value: the encrypted column of the owner table.
        substring: how trigram values are computed.
        codec: the type that decrypts ``value``.
        source: how to find the index again in a worker process, as for
            :class:`EncryptedColumn`.
    """

    side: Table
    value: Column[Any]
    substring: SubstringIndex
    codec: EncryptedType
    source: Source | None = None

    @property
    def table(self) -> Table:
        """The owner table, whose rows the jobs visit."""
        return _table_of(self.value)

    @property
    def label(self) -> str:
        """The side table's full name, as messages name the index."""
        return self.side.fullname

    @property
    def trigram(self) -> Column[Any]:
        """The side table's column of trigram values."""
        return self.side.c[TRIGRAM_COLUMN]

    @property
    def owner(self) -> list[Column[Any]]:
        """The side table's columns holding the owner's primary key, in its order."""
        return [c for c in self.side.columns if c.name != TRIGRAM_COLUMN]

    def plaintext(self, stored: Any, key: tuple[Any, ...]) -> Any:
        """The value a row's stored ``value`` decrypts to. Raises what decrypting raises."""
        if stored is None:
            return None
        return self.codec.from_stored(stored, key if self.codec.row_bound else None)

    def owned_by(self, keys: Sequence[tuple[Any, ...]]) -> ColumnElement[bool]:
        """The condition on side rows that they belong to one of the owners ``keys``."""
        return keys_in(self.owner, keys)

    def has_owner(self, *, with_value: bool = False) -> ColumnElement[bool]:
        """The condition on side rows that their owner row exists (and, ``with_value``,
        holds a value: not NULL)."""
        pk = list(self.table.primary_key.columns)
        where = [o == p for o, p in zip(self.owner, pk, strict=True)]
        if with_value:
            where.append(self.value.is_not(None))
        return (
            select(literal(1)).select_from(self.table).where(*where).correlate(self.side).exists()
        )

    def side_rows(
        self, bind: Connection | Session, keys: Sequence[tuple[Any, ...]] | None = None
    ) -> dict[tuple[Any, ...], tuple[str, ...]]:
        """The stored trigram values of each owner of ``keys`` (of every owner: None), sorted.

        Owners without side rows are not in it; owners whose row is gone are, when asked for.
        """
        stmt = select(*self.owner, self.trigram)
        if keys is not None:
            stmt = stmt.where(self.owned_by(keys))
        held: dict[tuple[Any, ...], list[str]] = {}
        for row in bind.execute(stmt):
            held.setdefault(tuple(row[:-1]), []).append(row[-1])
        # Sorted here: the database's collation may order them otherwise.
        return {k: tuple(sorted(v)) for k, v in held.items()}

    def __repr__(self) -> str:
        return f"SubstringColumn({self.label!r}, {self.substring!r})"


def find_substring_indexes(*specs: ModelSpec) -> list[SubstringColumn]:
    """Every substring index of the models ``specs`` name (none is required).

    Raises:
        ConfigurationError: a module cannot be imported, or an indexed column has no
            encrypted type recorded.
    """
    found: list[SubstringColumn] = []
    seen: set[int] = set()
    for spec in specs:
        name, tables = _tables(spec)
        candidates = {id(t): t for t in tables}
        for table_ in tables:
            # A side table is in the owner's MetaData, whether or not the spec names it.
            for other in table_.metadata.tables.values():
                candidates.setdefault(id(other), other)
        owners = {id(t) for t in tables}
        for side in candidates.values():
            known = substring_index_of(side)
            if known is None or id(side) in seen:
                continue
            substring, indexed = known
            owner_name, _, column_name = indexed.rpartition(".")
            owner = side.metadata.tables.get(owner_name)
            if owner is None or (id(owner) not in owners and id(side) not in owners):
                continue
            value = owner.c[column_name]
            codec = column_codec(value)
            if codec is None:
                raise ConfigurationError(
                    f"{indexed}: no encrypted type is recorded for the column that the "
                    "substring index reads; declare it through encrypted_hybrid()"
                )
            seen.add(id(side))
            found.append(SubstringColumn(side, value, substring, codec, _source(spec, name)))
    return found


def find_columns(*specs: ModelSpec) -> list[EncryptedColumn]:
    """Every encrypted column of the models ``specs`` name (see the module documentation).

    Raises:
        ConfigurationError: a module cannot be imported, or a spec has no encrypted column.
    """

    def encrypted(column_: Column[Any], source: Source | None) -> EncryptedColumn | None:
        codec = column_codec(column_)
        return None if codec is None else EncryptedColumn(column_, codec, source)

    missing = (
        "defines no encrypted column (no EncryptedType column and no column with "
        f"info[{COLUMN_INFO_KEY!r}])"
    )
    return _collect(specs, encrypted, missing)


def find_indexes(*specs: ModelSpec, required: bool = True) -> list[IndexedColumn]:
    """Every blind-index column of the models ``specs`` name.

    Args:
        specs: the models (see the module documentation).
        required: raise when a spec has no blind index; with False, such a spec adds none.

    Raises:
        ConfigurationError: a module cannot be imported, a spec has no blind index (when
            ``required``), or an index's value column has no encrypted type recorded.
    """

    def indexed(column_: Column[Any], source: Source | None) -> IndexedColumn | None:
        bound = column_.info.get(INFO_BLIND_INDEX)
        if not isinstance(bound, BlindIndex):
            return None
        table_ = _table_of(column_)
        parts = column_.info.get(INFO_COMPOUND_PARTS)
        if parts is not None:
            values = tuple(table_.c[key] for key in parts)
            codecs = tuple(column_codec(value) for value in values)
            return IndexedColumn(column_, values, bound, codecs, source)
        if bound.source_column is None:
            return None
        value = table_.c[bound.source_column]
        codec = column_codec(value)
        if codec is None:
            raise ConfigurationError(
                f"{table_.fullname}.{value.name}: no encrypted type is recorded for the column "
                "that the blind index reads; declare it through encrypted_hybrid()"
            )
        return IndexedColumn(column_, (value,), bound, (codec,), source)

    missing = "defines no blind index (no encrypted_hybrid with blind_index=)"
    return _collect(specs, indexed, missing if required else None)


_T = TypeVar("_T", EncryptedColumn, IndexedColumn)
_Target = TypeVar("_Target", EncryptedColumn, IndexedColumn, SubstringColumn)


def _collect(
    specs: tuple[ModelSpec, ...],
    target_of: Callable[[Column[Any], Source | None], _T | None],
    missing: str | None,
) -> list[_T]:
    """The targets ``target_of`` makes of the columns ``specs`` name, each column once.

    With ``missing``, a spec that gives none is refused with that reason.
    """
    found: list[_T] = []
    seen: set[int] = set()
    for spec in specs:
        name, tables = _tables(spec)
        before = len(found)
        for table_ in tables:
            for column_ in table_.columns:
                if id(column_) in seen:
                    continue
                target = target_of(column_, _source(spec, name))
                if target is not None:
                    seen.add(id(column_))
                    found.append(target)
        if missing is not None and len(found) == before:
            raise ConfigurationError(f"{name!r} {missing}")
    return found


def reflect_column(
    engine: Engine, table_name: str, column_name: str, codec: EncryptedType | None = None
) -> EncryptedColumn:
    """Reflect ``[schema.]table`` from the database and return one of its columns.

    No models are needed: the column is read as tokens of :class:`~sa_fieldcrypt.EncryptedText`
    under the default keys, unless ``codec`` says otherwise. The codec is attached to the
    reflected column (which keeps its own type), so a ``context=True`` codec (the default)
    binds values to ``table_name.column_name`` *as given here*. For the jobs to read and write
    what the application does, that must be the name the models declare, schema included:
    ``"core.customers"`` for a table declared with ``schema="core"``, ``"customers"`` for one
    declared without, whatever the database's default schema is called. A column reflected
    with a ``codec`` of its own is for one-process runs (``workers=1``): worker processes
    reflect the table again, and would not know the codec.

    Raises:
        ConfigurationError: the table or the column does not exist, or ``codec`` is a
            ``context=True`` type already attached to another column.
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
    found = reflected.c[column_name]
    # Worker processes reflect the table again with the default codec: a codec given here
    # (strict, with another context, reading plaintext) would not reach them.
    source: Source | None = ("table", table_name) if codec is None else None
    codec = codec or EncryptedText()
    # As encrypted_hybrid does for a plain column: SQLAlchemy's own way of telling a type which
    # column it serves gives the codec the column's name as its context, and errors name it.
    # The column keeps its reflected type, so a VARCHAR's length still limits what is written.
    codec._set_parent(found)
    found.info[COLUMN_INFO_KEY] = codec
    return EncryptedColumn(found, codec, source)


def portable(target: EncryptedColumn | IndexedColumn | SubstringColumn) -> tuple[Source, str]:
    """What a worker process needs to find ``target`` again: its source and its label.

    Raises:
        ConfigurationError: the target has no source (it was built by hand).
    """
    if target.source is None:
        raise ConfigurationError(
            f"{target.label}: worker processes need targets found by name "
            "(find_columns('pkg.module'), find_indexes(...), reflect_column()), which they can "
            "find again; use workers=1"
        )
    return target.source, target.label


def jobs_per_target(
    engine: Engine,
    targets: Iterable[_Target],
    build: Callable[[Engine, _Target], BatchJob],
    workers: int,
) -> list[BatchJob | JobFactory]:
    """One job per target: a factory where the target can be found again, else the job.

    A factory finds its target again by name (:func:`portable`, :func:`find_again`) and
    builds its job with ``build``, in each process that runs it (worker processes, a
    transform process). A target built by hand is built here, for one worker only.
    """
    jobs: list[BatchJob | JobFactory] = []
    for target in targets:
        if workers == 1 and target.source is None:
            jobs.append(build(engine, target))
        else:
            found = functools.partial(_build_again, build, type(target), *portable(target))
            jobs.append(found)
    return jobs


def _build_again(
    build: Callable[[Engine, Any], BatchJob],
    kind: type[_Target],
    source: Source,
    label: str,
    engine: Engine,
) -> BatchJob:
    return build(engine, find_again(source, label, engine, kind=kind))


def find_again(
    source: Source,
    label: str,
    engine: Engine,
    *,
    kind: type[EncryptedColumn | IndexedColumn | SubstringColumn] | None = None,
) -> Any:
    """Find the target called ``label`` (a column or an index column) from its source again.

    Worker processes build their own jobs with it, from what :func:`portable` gave.

    Args:
        source: where the target was found.
        label: its label.
        engine: the database, for a reflected column.
        kind: the kind of target (:class:`EncryptedColumn`, :class:`IndexedColumn` or
            :class:`SubstringColumn`): a target of another kind with the same label (a side
            table ``core.notes_trigrams`` and a column ``notes_trigrams`` of a table
            ``core``) is not it. By default any kind.

    Raises:
        RotationError: the models no longer define it.
        ConfigurationError: the models define several of that kind with that label (tables
            of one name in several ``MetaData``): name one of them (``module:Base``).
    """
    source_kind, spec = source
    if source_kind == "table":
        table_name, _, column_name = label.rpartition(".")
        return reflect_column(engine, table_name, column_name)
    targets: list[Any] = [
        *(find_columns(spec) if kind in (None, EncryptedColumn) else ()),
        *(find_indexes(spec, required=False) if kind in (None, IndexedColumn) else ()),
        *(find_substring_indexes(spec) if kind in (None, SubstringColumn) else ()),
    ]
    found = [t for t in targets if t.label == label]
    if len(found) > 1:
        raise ConfigurationError(
            f"the models {spec!r} define {len(found)} targets named {label} (tables of one "
            "name in several MetaData): name the models of one database (module:Base)"
        )
    if found:
        return found[0]
    raise RotationError(f"{label} is no longer in the models {spec!r}")


def _source(spec: ModelSpec, name: str) -> Source | None:
    return ("models", name) if isinstance(spec, (str, ModuleType)) else _object_source(spec)


def _object_source(spec: ModelSpec) -> Source | None:
    if isinstance(spec, type) and "<" not in spec.__qualname__:
        return ("models", f"{spec.__module__}:{spec.__qualname__}")
    return None


def _tables(spec: ModelSpec) -> tuple[str, list[Table]]:
    """The name of ``spec``, and the tables it names, sorted by name."""
    if isinstance(spec, str):
        module_name, _, attribute = spec.partition(":")
        module = _import(module_name)
        if not attribute:
            return spec, _module_tables(module)
        # A MetaData alone does not know its mapped classes: collecting the module's tables
        # binds the hybrids of the classes it defines.
        _module_tables(module)
        try:
            obj = getattr(module, attribute)
        except AttributeError:
            raise ConfigurationError(
                f"models module {module_name!r} has no attribute {attribute!r}"
            ) from None
        return spec, _object_tables(spec, obj)
    if isinstance(spec, ModuleType):
        return spec.__name__, _module_tables(spec)
    return repr(spec), _object_tables(repr(spec), spec)


def _module_tables(module: ModuleType) -> list[Table]:
    tables: dict[int, Table] = {}
    for obj in list(vars(module).values()):
        if isinstance(obj, Table):
            tables.setdefault(id(obj), obj)
        elif isinstance(obj, type) and _defined_in(obj, module):
            for mapped in _mapped_tables(obj):
                tables.setdefault(id(mapped), mapped)
    return sorted(tables.values(), key=lambda t: t.fullname)


def _object_tables(name: str, obj: Any) -> list[Table]:
    if isinstance(obj, Table):
        return [obj]
    if isinstance(obj, MetaData):
        return list(obj.sorted_tables)
    if isinstance(obj, type):
        mapped = _mapped_tables(obj)
        if mapped:
            return mapped
        metadata = getattr(obj, "metadata", None)
        if isinstance(metadata, MetaData):  # a declarative base
            for mapper in getattr(getattr(obj, "registry", None), "mappers", ()):
                bind_hybrids(mapper)
            return list(metadata.sorted_tables)
    raise ConfigurationError(
        f"{name!r} is not models: name a module, a declarative base, a MetaData, a mapped "
        "class or a Table (module:Base)"
    )


def _mapped_tables(cls: type) -> list[Table]:
    mapper: Any = sa_inspect(cls, raiseerr=False)
    if not isinstance(mapper, Mapper):
        return []
    # Hybrids assigned after the class body bind only when asked; the targets must see them.
    bind_hybrids(mapper)
    return [t for t in mapper.tables if isinstance(t, Table)]


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


def _table_of(column_: Column[Any]) -> Table:
    table_ = column_.table
    if not isinstance(table_, Table):
        raise ConfigurationError(f"column {column_.name!r} is not on a table")
    return table_

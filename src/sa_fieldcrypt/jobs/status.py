"""Status and key retirement: what the stored values need, counted without decrypting.

``fieldcrypt status`` and ``fieldcrypt retire-key`` are thin wrappers over :func:`status` and
:func:`retire_keys`::

    from sa_fieldcrypt.jobs import find_columns, find_indexes, status

    report = status(engine, find_columns("app.models"), find_indexes("app.models"))
    print(report)                 # per column: rows per key id, unbound, legacy, plaintext, NULL
    report.ready                  # False while a value names a key the keyring lacks
    report.bound                  # False while a bound column holds values not bound yet

Encrypted columns are counted by the header of each stored value, blind-index columns by the
key id in front of each index value, both with one ``GROUP BY`` query per column: nothing is
decrypted, so a status of a large table is cheap and safe to run at any time. The header also
says whether a token is bound to its column: in a bound column (every column that does not
say ``context=False``) the tokens that are not are counted as unbound, which rotation binds,
whatever they are; a strict column refuses them.

Values in a legacy format the column declares (:mod:`sa_fieldcrypt.legacy`) are counted per
format, by their shape: the rows that hold no ``fc1`` token are read to tell. A bare Fernet
token opened by the column's own keys names none of them, so it is charged to no key: every
Fernet key of the keyring may be needed by it. ``status(..., resolve_legacy=True)``
(``fieldcrypt status --resolve-legacy``) finds out by trial: it reads each such token and
counts which key opens it, so the keys that open none can be retired. Bare Fernet tokens in a
column that declares no legacy format are counted apart (:attr:`ColumnStatus.undeclared`):
the column cannot read them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine, and_, case, func, literal, or_, select
from sqlalchemy.engine import Connection

from sa_fieldcrypt.cipher import TOKEN_PREFIX, inspect_token, looks_like_token
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.errors import (
    ConfigurationError,
    DecryptionError,
    FieldCryptError,
    RotationError,
)
from sa_fieldcrypt.jobs.engine import BatchJob, Transform, run_job
from sa_fieldcrypt.jobs.reindex import reindex_job, substring_job
from sa_fieldcrypt.jobs.report import QuietListener, plural, word_for
from sa_fieldcrypt.jobs.sql import DialectSql, stored_text
from sa_fieldcrypt.jobs.targets import EncryptedColumn, IndexedColumn, SubstringColumn
from sa_fieldcrypt.keys import (
    BOUND_FLAG,
    KEY_ID_PATTERN,
    PADDED_FLAG,
    PURPOSES,
    ROW_FLAG,
    Keyring,
    Purpose,
    is_fernet_token,
)
from sa_fieldcrypt.legacy import BareFernet, LegacyFormat
from sa_fieldcrypt.providers.env import LEGACY_KEY_ID, keyring_from_settings

if TYPE_CHECKING:
    # Imported when the settings are read: pydantic is a tenth of a second of start-up.
    from sa_fieldcrypt.settings import FieldCryptSettings
    from sa_fieldcrypt.types import EncryptedType

__all__ = [
    "ColumnStatus",
    "IndexStatus",
    "KeySettingsChange",
    "KeyUsage",
    "StatusReport",
    "SubstringStatus",
    "env_key_changes",
    "retire_keys",
    "status",
]


@dataclass(frozen=True)
class ColumnStatus:
    """What one encrypted column holds, counted by each stored value's header.

    Attributes:
        column: ``schema.table.column``.
        primary: the id of the key that encrypts the column's new values.
        keyring_ids: every key id of the column's keyring.
        by_key: rows per key id of ``fc1`` tokens, including ids the keyring lacks.
        legacy: values in a legacy format the column declares; they name no key of its,
            so they are counted under none.
        legacy_by_format: :attr:`legacy` per format name (``fernet``,
            ``sqlalchemy-utils:AesEngine:pkcs5``...).
        undeclared: bare Fernet tokens in a column that declares no legacy format they are
            in: it cannot read them (declare ``legacy=[BareFernet()]``).
        keyed_legacy: the values the column's own keys may open: those in the shape of a
            declared format that uses them (``BareFernet()``), and the undeclared ones, which
            it reads with them once declared. Until tried (``resolve_legacy``), every Fernet
            key of the keyring may be needed by them.
        plaintext: values that are not tokens at all.
        null: SQL NULLs.
        malformed: values that look like tokens but are not, which rotation and reading
            refuse: an ``fc1`` header whose key id is not valid, or a value that
            :func:`~sa_fieldcrypt.cipher.looks_like_token` (a header in another case or
            behind spaces, for one), which is never taken for plaintext.
        legacy_candidates: the keys that may open a legacy token: the keyring's Fernet
            keys, if a declared format opens values with the column's keys (``BareFernet()``).
        legacy_by_key: legacy tokens per id of the key that opens them, found by trial
            (``resolve_legacy``); None when not tried.
        legacy_unopened: legacy tokens that no key of the keyring opens; None when not tried.
        context: the context the column binds its values to; None for a column that writes
            unbound tokens (``context=False``).
        strict: the column refuses unbound values (its ``allow_unbound=False``, or
            ``FIELDCRYPT_ALLOW_UNBOUND=false``).
        row_bound: the column binds its values to their rows too
            (``encrypted_hybrid(..., bind_row=True)``).
        unbound_by_key: in a column with a context, ``fc1`` tokens per key id that are not
            bound to any (written before the column was bound, or copied in), or, in a
            row-bound column, not bound to their row; also in :attr:`by_key`. Empty for a
            column without a context.
        bound_elsewhere: ``fc1`` tokens bound in a way the column cannot read: to a context
            in a column without one, or to a row in a column that binds none. Also in
            :attr:`by_key`.
        padded: the column pads the values it writes (``padding=``).
        repad: tokens under the primary key, bound as the column binds, whose padding is not
            the column's (padded in a column that no longer pads, or the reverse): rotate
            re-encrypts them. Also in :attr:`by_key`.
    """

    column: str
    primary: str
    keyring_ids: tuple[str, ...]
    by_key: dict[str, int]
    legacy: int = 0
    plaintext: int = 0
    null: int = 0
    malformed: int = 0
    legacy_by_format: dict[str, int] = field(default_factory=dict)
    undeclared: int = 0
    keyed_legacy: int = 0
    legacy_candidates: tuple[str, ...] = ()
    legacy_by_key: dict[str, int] | None = None
    legacy_unopened: int | None = None
    context: str | None = None
    strict: bool = False
    row_bound: bool = False
    unbound_by_key: dict[str, int] = field(default_factory=dict)
    bound_elsewhere: int = 0
    padded: bool = False
    repad: int = 0

    @property
    def total(self) -> int:
        """Every row of the table."""
        counted = self.legacy + self.undeclared + self.plaintext + self.null + self.malformed
        return sum(self.by_key.values()) + counted

    @property
    def pending(self) -> int:
        """Tokens ``rotate`` would still re-encrypt (or report as undecryptable).

        In a column with a context, that includes the unbound tokens under the primary key:
        rotation binds them (or, in a strict column, reports them).
        """
        old = sum(n for key_id, n in self.by_key.items() if key_id != self.primary)
        pending = old + self.unbound_by_key.get(self.primary, 0) + self.repad
        return pending + self.legacy + self.undeclared + self.malformed

    @property
    def unbound(self) -> int:
        """In a column with a context, the ``fc1`` tokens not bound to it (see :attr:`legacy`)."""
        return sum(self.unbound_by_key.values())

    @property
    def refused(self) -> int:
        """Values a strict column refuses: its unbound and legacy tokens."""
        return self.unbound + self.legacy if self.strict else 0

    @property
    def unknown_keys(self) -> dict[str, int]:
        """Rows under key ids the keyring does not hold: they cannot be decrypted."""
        return {k: n for k, n in self.by_key.items() if k not in self.keyring_ids}

    @property
    def legacy_unresolved(self) -> int:
        """Legacy tokens whose key is unknown: any of :attr:`legacy_candidates` may open them."""
        return self.keyed_legacy if self.legacy_by_key is None else 0

    def to_dict(self) -> dict[str, Any]:
        """The status as plain data, for JSON."""
        return {
            **asdict(self),
            "unknown_keys": self.unknown_keys,
            "unbound": self.unbound,
            "pending": self.pending,
        }


@dataclass(frozen=True)
class IndexStatus:
    """How a blind-index column's stored values divide among index keys.

    Attributes:
        column: ``schema.table.column`` of the index column.
        primary: the id of the index key that computes new index values.
        keyring_ids: every active index key id; lookups match each of them.
        by_key: rows per active index key id, made with the index's cost parameters.
        other_keys: rows under a key id that is no longer active: lookups cannot find them.
        other_cost: rows per active index key id made with other cost parameters (of a slow
            index, :class:`~sa_fieldcrypt.Scrypt`; or fast values of a slow index, or the
            reverse): lookups cannot find them until reindexed.
        cost: the cost label new values carry (``$s14.8.1``); empty for a fast index.
        no_index: rows with a value but no index value: values the normalizer does not
            index, or rows written without the hybrid.
        missing: of ``no_index``, the rows whose value the normalizer does index (or that do
            not decrypt), so their index is missing; counted only when asked (it decrypts
            those rows), else None.
    """

    column: str
    primary: str
    keyring_ids: tuple[str, ...]
    by_key: dict[str, int]
    other_keys: int
    no_index: int
    missing: int | None = None
    other_cost: dict[str, int] = field(default_factory=dict)
    cost: str = ""

    @property
    def stale(self) -> int:
        """Rows not under the writing key and cost; 0 means the other keys can retire."""
        old = sum(n for k, n in self.by_key.items() if k != self.primary)
        return old + self.other_keys + sum(self.other_cost.values())

    @property
    def rows_by_key(self) -> dict[str, int]:
        """Rows per active index key id, whatever their cost parameters: who needs which key."""
        return {k: n + self.other_cost.get(k, 0) for k, n in self.by_key.items()}

    @property
    def done(self) -> bool:
        """Every row is indexed under the writing key (as far as ``missing`` was counted)."""
        return self.stale == 0 and not self.missing

    def to_dict(self) -> dict[str, Any]:
        """The status as plain data, for JSON."""
        return {**asdict(self), "stale": self.stale, "done": self.done}


@dataclass(frozen=True)
class KeyUsage:
    """Whether a key id is still needed, over the columns of a status.

    Attributes:
        key_id: the key id.
        purpose: ``"encryption"`` or ``"blind-index"``.
        rows: values (or index values) that name this key id.
        primary: it writes new values of some column.
        in_keyring: a keyring of the columns holds it.
        legacy_rows: legacy tokens this key opens, found by trial (``resolve_legacy``); None
            when they were not tried.
        legacy_possible: legacy tokens not tried, in columns where this key may be the one
            that opens them (a Fernet key of the column's keyring): any such key may be
            needed by each of them, and only trying tells which.
    """

    key_id: str
    purpose: Purpose
    rows: int
    primary: bool
    in_keyring: bool
    legacy_rows: int | None = None
    legacy_possible: int = 0

    @property
    def needed(self) -> bool:
        """The key cannot be removed yet, or may not be (legacy tokens not tried)."""
        return self.primary or self.rows > 0 or bool(self.legacy_rows) or self.legacy_possible > 0

    def to_dict(self) -> dict[str, Any]:
        """The usage as plain data, for JSON."""
        return {**asdict(self), "needed": self.needed}


@dataclass(frozen=True)
class SubstringStatus:
    """How the owners of a substring index's side rows divide among index keys.

    Attributes:
        index: the side table's full name.
        primary: the id of the index key that computes new trigram values.
        keyring_ids: every active index key id; lookups search under each of them.
        current: owners whose side rows are all under the writing key.
        older: owners with side rows under another key (an older active one, or one no
            longer active, which lookups miss): reindex rewrites them.
        by_key: owners with side rows per active index key id (who needs which key).
        no_side_rows: owners with a value but no side rows: values too short to have a
            trigram, values the normalizer does not index, or rows written without the ORM.
        retired: of ``older``, owners with side rows under a key id that is no longer
            active: lookups miss those rows.
        orphans: primary keys with side rows but no owner row with a value (the row was
            deleted where foreign keys are not enforced, or its value set to NULL without the
            ORM); counted in none of the above. Lookups never return them, but they are
            hashes of values that are gone: reindex deletes them (those of a NULL value as it
            visits the owner, those of a deleted row once its walk over the owners is
            complete, in a run that is not a shard).
        stale: owners whose side rows are not those of their decrypted value under the
            writing key (missing, stale, under an older key), or whose value does not
            decrypt; counted only when asked (it decrypts every value), else None.
    """

    index: str
    primary: str
    keyring_ids: tuple[str, ...]
    current: int
    older: int
    by_key: dict[str, int]
    no_side_rows: int
    stale: int | None = None
    retired: int = 0
    orphans: int = 0

    @property
    def done(self) -> bool:
        """Nothing is left for reindex: side rows are current and none are ``orphans``.

        Current: every owner's side rows are under the writing key (and are its value's,
        when ``stale`` was counted).
        """
        return self.older == 0 and not self.stale and self.orphans == 0

    def to_dict(self) -> dict[str, Any]:
        """The status as plain data, for JSON."""
        return {**asdict(self), "done": self.done}


@dataclass(frozen=True)
class StatusReport:
    """The status of encrypted and blind-index columns, and what it says about each key."""

    columns: list[ColumnStatus] = field(default_factory=list)
    indexes: list[IndexStatus] = field(default_factory=list)
    substrings: list[SubstringStatus] = field(default_factory=list)

    def key_usage(self) -> list[KeyUsage]:
        """Every key id in the columns' keyrings or their data, primary keys first."""
        usage: list[KeyUsage] = []
        ids: list[str] = []
        for col in self.columns:
            ids += [col.primary, *col.keyring_ids, *col.by_key, *(col.legacy_by_key or ())]
        tried = [c.legacy_by_key for c in self.columns if c.legacy_by_key is not None]
        for key_id in dict.fromkeys(ids):
            usage.append(
                KeyUsage(
                    key_id=key_id,
                    purpose="encryption",
                    rows=sum(c.by_key.get(key_id, 0) for c in self.columns),
                    primary=any(c.primary == key_id for c in self.columns),
                    in_keyring=any(key_id in c.keyring_ids for c in self.columns),
                    legacy_rows=sum(t.get(key_id, 0) for t in tried) if tried else None,
                    legacy_possible=sum(
                        c.legacy_unresolved for c in self.columns if key_id in c.legacy_candidates
                    ),
                )
            )
        index_ids: list[str] = []
        for index in self.indexes:
            index_ids += [index.primary, *index.keyring_ids]
        for substring in self.substrings:
            index_ids += [substring.primary, *substring.keyring_ids]
        for key_id in dict.fromkeys(index_ids):
            usage.append(
                KeyUsage(
                    key_id=key_id,
                    purpose="blind-index",
                    rows=sum(i.rows_by_key.get(key_id, 0) for i in self.indexes)
                    + sum(s.by_key.get(key_id, 0) for s in self.substrings),
                    primary=key_id
                    in {i.primary for i in self.indexes} | {s.primary for s in self.substrings},
                    in_keyring=True,
                )
            )
        return sorted(usage, key=lambda u: (u.purpose != "encryption", not u.primary))

    def problems(self) -> list[str]:
        """Why the data is not ready for the keys in use; empty when :attr:`ready`."""
        found: list[str] = []
        for col in self.columns:
            for key_id, rows in col.unknown_keys.items():
                found.append(
                    f"{col.column}: {plural(rows, 'value')} under key {key_id!r}, which the "
                    "keyring lacks: add that key back (they cannot be decrypted)"
                )
            if col.malformed:
                found.append(
                    f"{col.column}: {plural(col.malformed, 'value')} with an fc1 header whose "
                    "key id is invalid (`fieldcrypt verify` names them)"
                )
            if col.undeclared:
                found.append(
                    f"{col.column}: {plural(col.undeclared, 'bare Fernet token')}, which the "
                    "column does not declare, so it cannot read them: declare "
                    "legacy=[BareFernet()] on the column (sa_fieldcrypt.legacy)"
                )
            if col.legacy_unopened:
                found.append(
                    f"{col.column}: {plural(col.legacy_unopened, 'legacy token')} that no key "
                    "of the keyring opens: add the key back (`fieldcrypt verify` names them)"
                )
            if col.refused:
                found.append(
                    f"{col.column}: {plural(col.refused, 'value')} not bound to the column "
                    "(unbound or legacy tokens), which it refuses (strict: allow_unbound=False "
                    "or FIELDCRYPT_ALLOW_UNBOUND=false), and rotate does not bind: find out how "
                    "they got there (`fieldcrypt verify` names them)"
                )
            if col.bound_elsewhere:
                found.append(
                    f"{col.column}: {plural(col.bound_elsewhere, 'value')} bound to a context, "
                    "which this column (context=False) cannot read: declare the context they "
                    "were written under (`fieldcrypt verify` names them)"
                )
        for substring in self.substrings:
            if substring.retired:
                found.append(
                    f"{substring.index}: {plural(substring.retired, 'owner')} with side rows "
                    "under index keys that are no longer active, so substring lookups miss "
                    "them: add the key back or run `fieldcrypt reindex`"
                )
        for index in self.indexes:
            if index.other_keys:
                found.append(
                    f"{index.column}: {plural(index.other_keys, 'index value')} under index "
                    "keys that are no longer active, so lookups miss those rows: add the key "
                    "back or run `fieldcrypt reindex`"
                )
            if index.other_cost:
                found.append(
                    f"{index.column}: {plural(sum(index.other_cost.values()), 'index value')} "
                    "made with other cost parameters than the index's, so lookups miss those "
                    "rows: run `fieldcrypt reindex`"
                )
        return found

    @property
    def to_bind(self) -> int:
        """Values that rotate would bind: unbound and legacy tokens in non-strict bound columns."""
        return sum(
            c.unbound + c.legacy for c in self.columns if c.context is not None and not c.strict
        )

    @property
    def bound(self) -> bool:
        """Every value of a column with a context is bound to it (as counted)."""
        return not any(c.unbound or c.legacy for c in self.columns if c.context is not None)

    @property
    def reindexed(self) -> bool:
        """Every index value is under the writing key, and none is missing (as counted)."""
        return all(i.done for i in self.indexes) and all(s.done for s in self.substrings)

    @property
    def ready(self) -> bool:
        """Every stored value can be read, and every index value found, with the keys in use."""
        return not self.problems()

    def describe(self) -> str:
        """The report as text for people: per column, per index, then per key."""
        lines: list[str] = []
        for col in self.columns:
            lines += _describe_column(col)
        for index in self.indexes:
            lines += _describe_index(index)
        for substring in self.substrings:
            lines += _describe_substring(substring)
        lines.append("keys:")
        for key in self.key_usage():
            legacy_left = any(
                c.keyed_legacy and key.key_id in c.legacy_candidates for c in self.columns
            )
            lines.append(f"  {key.key_id:<28} {_verdict(key, legacy_left)}")
        problems = self.problems()
        unresolved = sum(c.legacy_unresolved for c in self.columns)
        if problems:
            lines.append("not ready:")
        elif unresolved:
            lines.append(
                f"ready: every value names a key of its keyring, but for "
                f"{plural(unresolved, 'legacy token')}, which name none "
                "(--resolve-legacy tries them)"
            )
        else:
            lines.append("ready: every value is readable")
        lines += [f"  {problem}" for problem in problems]
        if self.to_bind:
            lines.append(
                f"bind: {plural(self.to_bind, 'value')} not bound to their column yet; "
                "`fieldcrypt rotate` binds whatever value a column holds, so check first that "
                "they are the column's own"
            )
        if self.indexes or self.substrings:
            # Index values and owners are not one unit: an owner has many side rows.
            values = sum(i.stale + (i.missing or 0) for i in self.indexes)
            owners = sum(s.older if s.stale is None else s.stale for s in self.substrings)
            left = [plural(values, "index value")] if values else []
            if owners:
                left.append(f"the side rows of {plural(owners, 'owner')}")
            todo = [f"{' and '.join(left)} to rewrite"] if left else []
            orphans = sum(s.orphans for s in self.substrings)
            if orphans:
                todo.append(f"the orphan side rows of {plural(orphans, 'primary key')} to delete")
            lines.append(
                f"reindex: {'; '.join(todo)} (`fieldcrypt reindex`)"
                if todo
                else "reindex: every index value is under the writing key"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data, for JSON."""
        return {
            "ready": self.ready,
            "bound": self.bound,
            "reindexed": self.reindexed,
            "problems": self.problems(),
            "columns": [c.to_dict() for c in self.columns],
            "indexes": [i.to_dict() for i in self.indexes],
            "substrings": [s.to_dict() for s in self.substrings],
            "keys": [k.to_dict() for k in self.key_usage()],
        }

    def __str__(self) -> str:
        return self.describe()


def _describe_column(col: ColumnStatus) -> list[str]:
    lines = [f"{col.column}  ({plural(col.total, 'row')}; primary key id {col.primary!r})"]
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
    if col.unbound:
        note = (
            "refused: the column is strict, and rotate does not bind these"
            if col.strict
            else f"not bound to the {'row' if col.row_bound else 'column'}: rotate binds these"
        )
        lines.append(f"  {'unbound, of the keys above':<28} {col.unbound:>12,}  {note}")
    if col.repad:
        note = "unpadded, the column pads" if col.padded else "padded, the column does not"
        label = "padding, of the primary key"
        lines.append(f"  {label:<28} {col.repad:>12,}  {note}: rotate re-encrypts these")
    if col.bound_elsewhere:
        lines.append(
            f"  {'bound, of the keys above':<28} {col.bound_elsewhere:>12,}  "
            + (
                "bound to rows, and the column binds none: these cannot be decrypted"
                if col.context is not None
                else "the column has no context (context=False): these cannot be decrypted"
            )
        )
    for name, rows in col.legacy_by_format.items():
        if col.strict:
            note = "refused, as the column is strict"
        elif name == BareFernet.name and col.legacy_candidates and col.legacy_by_key is None:
            note = "they name no key: rotate moves these; --resolve-legacy tries the keys"
        else:
            note = "rotate moves these"
        lines.append(f"  {'legacy':<28} {rows:>12,}  {name}: {note}")
        if name == BareFernet.name and col.legacy_by_key is not None:
            lines += _describe_opened(col)
    for name, rows, note in (
        ("bare Fernet, undeclared", col.undeclared, "the column declares no legacy format"),
        ("plaintext", col.plaintext, "not encrypted: rotate --encrypt-plaintext"),
        ("malformed", col.malformed, "looks like a token but is not one: fails to read"),
        ("NULL", col.null, ""),
    ):
        if rows or name == "NULL":
            lines.append(f"  {name:<28} {rows:>12,}  {note}".rstrip())
    return lines


def _describe_opened(col: ColumnStatus) -> list[str]:
    """Which key opens how many of a column's bare Fernet tokens, and how many none opens."""
    opened = col.legacy_by_key or {}
    order = {key_id: i for i, key_id in enumerate((col.primary, *col.keyring_ids))}
    lines = [
        f"  {'  opened by ' + key_id:<28} {rows:>12,}"
        for key_id, rows in sorted(
            opened.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])
        )
    ]
    unopened = col.legacy_unopened or 0
    note = "  these cannot be decrypted" if unopened else ""
    lines.append(f"  {'  opened by no key':<28} {unopened:>12,}{note}")
    return lines


def _describe_index(index: IndexStatus) -> list[str]:
    slow = f", cost parameters {index.cost[1:]}" if index.cost else ""
    lines = [f"{index.column}  (blind index; writing index key id {index.primary!r}{slow})"]
    for key_id, rows in index.by_key.items():
        note = "writing" if key_id == index.primary else "matching: reindex moves these"
        lines.append(f"  key {key_id:<24} {rows:>12,}  {note}")
        if index.other_cost.get(key_id):
            lines.append(
                f"  {'  other cost parameters':<28} {index.other_cost[key_id]:>12,}  "
                "lookups miss these: reindex rewrites them"
            )
    if index.other_keys:
        lines.append(f"  {'retired keys':<28} {index.other_keys:>12,}  lookups miss these")
    lines.append(f"  {'no index value':<28} {index.no_index:>12,}")
    if index.missing is not None:
        lines.append(f"  {'  of which missing':<28} {index.missing:>12,}  reindex writes these")
    return lines


def _describe_substring(found: SubstringStatus) -> list[str]:
    lines = [f"{found.index}  (substring index; writing index key id {found.primary!r})"]
    lines.append(f"  {'owners under the writing key':<28} {found.current:>12,}")
    lines.append(f"  {'under older keys':<28} {found.older:>12,}  reindex rewrites these")
    if found.retired:
        lines.append(f"  {'  of which retired keys':<28} {found.retired:>12,}  lookups miss these")
    lines.append(f"  {'no side rows':<28} {found.no_side_rows:>12,}")
    if found.orphans:
        lines.append(
            f"  {'orphans':<28} {found.orphans:>12,}  side rows of no row with a value "
            "(deleted, or set to NULL): reindex deletes these"
        )
    if found.stale is not None:
        lines.append(f"  {'stale or missing':<28} {found.stale:>12,}  reindex writes these")
    return lines


def _verdict(key: KeyUsage, legacy_left: bool) -> str:
    """Whether a key is needed, in words; ``legacy_left``: legacy tokens it may open remain."""
    if key.purpose == "blind-index":
        if key.primary:
            return "blind-index, writing: needed"
        if key.rows:
            return f"blind-index, matching; still used by {plural(key.rows, 'row')}: run reindex"
        return f"blind-index, matching; no longer used: retire-key {key.key_id} removes it"
    if key.primary:
        return "primary: needed"
    if not key.in_keyring:
        return f"not in the keyring; needed by {plural(key.rows, 'row')}: add it back"
    maybe = plural(key.legacy_possible, "legacy token")
    uses = [plural(key.rows, "row")] if key.rows else []
    if key.legacy_rows:
        uses.append(plural(key.legacy_rows, "legacy token"))
    if uses:
        also = f", and maybe by {maybe} (key unknown)" if key.legacy_possible else ""
        return f"decrypt-only; still needed by {' and '.join(uses)}{also}: run rotate"
    if key.legacy_possible:
        return (
            f"decrypt-only; maybe needed by {maybe} (key unknown): run rotate, or "
            "status --resolve-legacy to find out"
        )
    # retire-key refuses while legacy tokens remain, unless it tries them too.
    flag = " --resolve-legacy" if legacy_left else ""
    return f"decrypt-only; no longer needed: retire-key {key.key_id}{flag} removes it"


def status(
    engine: Engine,
    columns: Iterable[EncryptedColumn] = (),
    indexes: Iterable[IndexedColumn | SubstringColumn] = (),
    *,
    in_sql: bool | None = None,
    count_missing: bool = False,
    resolve_legacy: bool = False,
) -> StatusReport:
    """Count each column's values per key id, legacy tokens, plaintext and NULL.

    Args:
        engine: the database.
        columns: the encrypted columns to count.
        indexes: the blind-index columns and substring indexes to count.
        in_sql: count encrypted columns with one ``GROUP BY`` query each (the default on
            PostgreSQL, MySQL/MariaDB and SQLite), or by reading every value's header.
        count_missing: also decrypt the rows with a value but no index value, to count
            those whose index is missing (:attr:`IndexStatus.missing`), and every value of
            a substring index's owners, to count those whose side rows are stale
            (:attr:`SubstringStatus.stale`).
        resolve_legacy: also try the keys on every legacy token (it decrypts them, in
            batches), to count which key opens how many (:attr:`ColumnStatus.legacy_by_key`)
            and how many none opens.
    """
    found: list[ColumnStatus] = []
    indexed: list[IndexStatus] = []
    substrings = [i for i in indexes if isinstance(i, SubstringColumn)]
    blind = [i for i in indexes if isinstance(i, IndexedColumn)]
    counted: list[SubstringStatus] = []
    with engine.connect() as conn:
        sql = DialectSql(conn.dialect.name)
        use_sql = (
            in_sql if in_sql is not None else sql.name in ("postgresql", "sqlite") or sql.mysql
        )
        for target in columns:
            counts = (
                _count_in_sql(conn, sql, target) if use_sql else _count_by_reading(engine, target)
            )
            found.append(_column_status(target, counts))
        for index in blind:
            indexed.append(_index_status(conn, sql, index))
        for substring in substrings:
            counted.append(_substring_status(conn, sql, substring))
    if resolve_legacy:
        found = [
            _with_legacy_resolved(engine, target, status)
            if status.keyed_legacy
            else _none_to_try(status)
            for target, status in zip(columns, found, strict=True)
        ]
    if count_missing:
        indexed = [
            _with_missing(engine, index, status)
            for index, status in zip(blind, indexed, strict=True)
        ]
        counted = [
            _with_stale(engine, substring, status)
            for substring, status in zip(substrings, counted, strict=True)
        ]
    return StatusReport(found, indexed, counted)


# What status counts a stored value by: its kind, the key id it names and its flag field
# (for a legacy value: its format's name, and whether the column's keys may open it).
_Header = tuple[str, str | None, str | None]
_KEYED = "keyed"


def _column_status(target: EncryptedColumn, counts: dict[_Header, int]) -> ColumnStatus:
    codec = target.codec
    keyring = codec.active_keyring()
    context = codec.context
    bound_column = isinstance(context, str)
    own_flag = ROW_FLAG if codec.row_bound else BOUND_FLAG
    pads = codec.padding_block is not None
    by_key: dict[str, int] = {}
    unbound_by_key: dict[str, int] = {}
    legacy_by_format: dict[str, int] = {}
    bound_elsewhere = repad = undeclared = keyed = 0
    totals = dict.fromkeys(("plaintext", "null", "malformed"), 0)
    # In one order whatever the database's, so that reports compare equal.
    for (kind, key_id, field_), rows in sorted(counts.items(), key=_header_order):
        if kind == "fc1" and key_id is not None:
            by_key[key_id] = by_key.get(key_id, 0) + rows
            flag = (field_ or "").rstrip(PADDED_FLAG) or None
            if flag is not None and (not bound_column or (flag == ROW_FLAG and flag != own_flag)):
                bound_elsewhere += rows  # bound to what the column cannot give: context, row
            elif bound_column and flag != own_flag:
                unbound_by_key[key_id] = unbound_by_key.get(key_id, 0) + rows
            elif key_id == keyring.primary.id and (field_ or "").endswith(PADDED_FLAG) != pads:
                repad += rows
        elif kind == "legacy" and key_id is not None:
            legacy_by_format[key_id] = legacy_by_format.get(key_id, 0) + rows
            keyed += rows if field_ == _KEYED else 0
        elif kind == "legacy":
            undeclared += rows
            keyed += rows
        else:
            totals[kind] += rows
    return ColumnStatus(
        column=target.label,
        primary=keyring.primary.id,
        keyring_ids=keyring.ids,
        by_key=by_key,
        legacy=sum(legacy_by_format.values()),
        legacy_by_format=legacy_by_format,
        undeclared=undeclared,
        keyed_legacy=keyed,
        plaintext=totals["plaintext"],
        null=totals["null"],
        malformed=totals["malformed"],
        legacy_candidates=(
            tuple(k.id for k in keyring if k.kind == "fernet")
            if keyed or any(f.uses_column_keys() for f in codec.legacy)
            else ()
        ),
        context=context if isinstance(context, str) else None,
        strict=bound_column and not codec.allow_unbound,
        row_bound=codec.row_bound,
        unbound_by_key=unbound_by_key,
        bound_elsewhere=bound_elsewhere,
        padded=pads,
        repad=repad,
    )


def _header_order(item: tuple[_Header, int]) -> tuple[str, str, str]:
    kind, key_id, flag = item[0]
    return kind, key_id or "", flag or ""


def _classify(value: str | bytes | None, codec: EncryptedType | None = None) -> _Header:
    """A stored value's header, exactly as :class:`DialectSql` decides it in SQL.

    With the ``codec`` of a column that declares legacy formats, a value in one's shape is
    ``("legacy", <format name>, flag)``, the first such format's name, and the flag
    :data:`_KEYED` when it is in the shape of one that opens values with the column's keys
    too; ``("legacy", None, None)`` is a bare Fernet token the column does not declare.
    """
    if value is None:
        return "null", None, None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    info = inspect_token(value)
    if info.kind == "fc1":
        if info.key_id is not None and KEY_ID_PATTERN.match(info.key_id):
            field_ = (info.flag or "") + (PADDED_FLAG if info.padded else "")
            return "fc1", info.key_id, field_ or None
        return "malformed", None, None
    if codec is not None and codec.legacy:
        found = codec.legacy_format(value)
        if found is not None:
            keyed = any(f.uses_column_keys() and f.shaped(value) for f in codec.legacy)
            return "legacy", found.name, _KEYED if keyed else None
        if info.kind == "legacy" and not is_fernet_token(value):
            return "malformed", None, None  # starts as a Fernet token, and is not one
    if info.kind == "plaintext" and looks_like_token(value):
        return "malformed", None, None
    return info.kind, None, None


def _count_in_sql(conn: Connection, sql: DialectSql, target: EncryptedColumn) -> dict[_Header, int]:
    stored = stored_text(target.column)
    kind, key_id = sql.token_kind(stored)
    # Only a value's text tells a legacy format from plaintext: a column declaring any reads
    # the values that are not fc1 tokens.
    read_kinds = ("suspect", "legacy", "plaintext") if target.codec.legacy else ("suspect",)
    suspect = kind.in_(read_kinds)
    inner = (
        select(kind.label("kind"), key_id.label("key_id"), sql.token_flag(stored).label("flag"))
        .select_from(target.table)
        .subquery()
    )
    stmt = select(inner.c.kind, inner.c.key_id, inner.c.flag, func.count()).group_by(
        inner.c.kind, inner.c.key_id, inner.c.flag
    )
    counts: Counter[_Header] = Counter()
    suspects = 0
    for found_kind, found_key, flag, rows in conn.execute(stmt):
        found_kind = _text(found_kind)
        header: _Header = (found_kind, found_key, None)
        if found_kind == "fc1":
            # The SQL finds where the key id ends; whether it is a valid id is checked here.
            found_kind, found_key, _ = _classify(TOKEN_PREFIX + _text(found_key) + ":")
            header = (found_kind, found_key, (_text(flag) or None) if found_kind == "fc1" else None)
        elif found_kind in read_kinds:
            suspects += int(rows)
            continue
        counts[header] += int(rows)
    if suspects:
        # Values that may only look like tokens (a header in another case, behind spaces):
        # few, if any, and read to be classified exactly as reading them would.
        for header, rows in _count_by_reading(conn.engine, target, suspect).items():
            counts[header] += rows
    return dict(counts)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _read_each(
    engine: Engine, target: EncryptedColumn, visit: Transform, where: Any = None
) -> None:
    """Pass every stored value of ``target`` (matching ``where``) to ``visit``, in batches."""
    job = BatchJob(target.label, target.table, (target.column,), (), visit, where)
    run_job(engine, job, listener=_QUIET)


def _count_by_reading(
    engine: Engine, target: EncryptedColumn, where: Any = None
) -> dict[_Header, int]:
    counts: Counter[_Header] = Counter()

    codec = target.codec

    def classify(key: tuple[Any, ...], old: tuple[Any, ...]) -> None:
        counts[_classify(old[0], codec)] += 1

    _read_each(engine, target, classify, where)
    return dict(counts)


def _with_legacy_resolved(
    engine: Engine, target: EncryptedColumn, found: ColumnStatus
) -> ColumnStatus:
    """``found`` with its bare Fernet tokens counted by the column key that opens each."""
    codec = target.codec
    opened: Counter[str | None] = Counter()

    def trial(key: tuple[Any, ...], old: tuple[Any, ...]) -> None:
        value = _text(old[0])
        shaped: list[LegacyFormat] = []
        if codec.legacy_format(value) is not None:
            shaped = [f for f in codec.legacy if f.shaped(value)]
        elif _classify(value)[0] == "legacy":
            shaped = [_UNDECLARED]  # as the column will read it, once it declares it
        keyed = [f for f in shaped if f.uses_column_keys()]
        if not keyed:
            return
        for legacy_format in keyed:
            found = legacy_format.keyring_key(value, codec)
            if found is not None:
                opened[found.id] += 1
                return
        # In the shape of a format with key material of its own too, which may be its own.
        if not any(_opens(f, value, codec) for f in shaped if not f.uses_column_keys()):
            opened[None] += 1

    # Every value that is not a token of ours is tried: a bare Fernet token starts with
    # "gAAAAA" only until 2106 (its timestamp), so no prefix selects them all.
    stored = stored_text(target.column)
    sql = DialectSql(engine.dialect.name)
    _read_each(
        engine, target, trial, and_(stored.is_not(None), ~sql.has_prefix(stored, TOKEN_PREFIX))
    )
    unopened = opened.pop(None, 0)
    by_key = {key_id: rows for key_id, rows in opened.items() if key_id is not None}
    return replace(found, legacy_by_key=by_key, legacy_unopened=unopened)


#: How a column that declares no legacy format would read its bare Fernet tokens.
_UNDECLARED = BareFernet()


def _opens(legacy_format: LegacyFormat, value: str, codec: EncryptedType) -> bool:
    """Whether ``legacy_format`` opens ``value`` (a value of another type opens, too)."""
    try:
        return legacy_format.read(value, codec) is not None
    except DecryptionError:
        return True


def _none_to_try(found: ColumnStatus) -> ColumnStatus:
    return replace(found, legacy_by_key={}, legacy_unopened=0)


def _index_status(conn: Connection, sql: DialectSql, column: IndexedColumn) -> IndexStatus:
    keyring = column.blind_index.active_keyring()
    # The writing key first, wherever the provider lists it.
    key_ids = (keyring.primary.id, *(i for i in keyring.ids if i != keyring.primary.id))
    blind_index = column.blind_index
    index = column.index
    # count(CASE ...) rather than FILTER, which MariaDB lacks. Per key: the rows made with
    # the index's cost parameters, then every row under it ("<id>:" or "<id>$<cost>:").
    current = [
        func.count(case((sql.has_prefix(index, blind_index.prefix(kid)), 1))) for kid in key_ids
    ]
    under = [
        func.count(
            case((or_(sql.has_prefix(index, f"{kid}:"), sql.has_prefix(index, f"{kid}$")), 1))
        )
        for kid in key_ids
    ]
    total = func.count(index)
    has_values = [value.is_not(None) for value in column.values]
    no_index = func.count(case((and_(index.is_(None), *has_values), 1)))
    row = conn.execute(select(total, no_index, *current, *under).select_from(column.table)).one()
    counts = [int(n) for n in row[2:]]
    by_key = dict(zip(key_ids, counts[: len(key_ids)], strict=True))
    all_by_key = dict(zip(key_ids, counts[len(key_ids) :], strict=True))
    other_cost = {k: all_by_key[k] - n for k, n in by_key.items() if all_by_key[k] != n}
    return IndexStatus(
        column=column.label,
        primary=keyring.primary.id,
        keyring_ids=key_ids,
        by_key=by_key,
        other_keys=int(row[0]) - sum(all_by_key.values()),
        no_index=int(row[1]),
        other_cost=other_cost,
        cost=blind_index.cost,
    )


def _with_missing(engine: Engine, column: IndexedColumn, found: IndexStatus) -> IndexStatus:
    if not found.no_index:
        return replace(found, missing=0)
    # A dry run of the reindex over the unindexed rows: what it would write is missing.
    job = reindex_job(engine, [column], only_unindexed=True)
    report = run_job(engine, job, dry_run=True, listener=_QUIET)
    # A value that does not decrypt cannot be indexed either: it counts as missing.
    return replace(found, missing=report.written + report.failed)


def _substring_status(
    conn: Connection, sql: DialectSql, target: SubstringColumn
) -> SubstringStatus:
    keyring = target.substring.active_keyring()
    primary = keyring.primary.id
    key_ids = (primary, *(i for i in keyring.ids if i != primary))
    owner, trigram = target.owner, target.trigram
    pk = list(target.table.primary_key.columns)
    owned = [o == p for o, p in zip(owner, pk, strict=True)]
    # Side rows count for an owner only when that owner exists and has a value: others
    # (left by a delete where foreign keys are not enforced, or by a value set to NULL by
    # Core) are orphans, which no lookup returns and no key needs.
    has_owner = target.has_owner(with_value=True)
    # One row per owner: whether it has side rows under each active key, and under others.
    under = [sql.has_prefix(trigram, f"{kid}:") for kid in key_ids]
    flags = [func.max(case((u, 1), else_=0)) for u in under]
    not_primary = func.max(case((under[0], 0), else_=1))
    retired = func.max(case((or_(*under), 0), else_=1))
    per_owner = (
        select(
            *(f.label(f"k{i}") for i, f in enumerate(flags)),
            not_primary.label("other"),
            retired.label("retired"),
        )
        .where(has_owner)
        .group_by(*owner)
        .subquery()
    )
    c = per_owner.c
    row = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(c.other), 0),
            func.coalesce(func.sum(c.retired), 0),
            *(func.coalesce(func.sum(c[f"k{i}"]), 0) for i in range(len(key_ids))),
        )
    ).one()
    orphaned = select(*owner).where(~has_owner).group_by(*owner).subquery()
    orphans = conn.execute(select(func.count()).select_from(orphaned)).scalar_one()
    has_side = select(literal(1)).where(*owned).correlate(target.table).exists()
    no_side = conn.execute(
        select(func.count()).select_from(target.table).where(target.value.is_not(None), ~has_side)
    ).scalar_one()
    owners, older = int(row[0]), int(row[1])
    return SubstringStatus(
        index=target.label,
        primary=primary,
        keyring_ids=key_ids,
        current=owners - older,
        older=older,
        by_key=dict(zip(key_ids, (int(n) for n in row[3:]), strict=True)),
        no_side_rows=int(no_side),
        retired=int(row[2]),
        orphans=int(orphans),
    )


def _with_stale(engine: Engine, target: SubstringColumn, found: SubstringStatus) -> SubstringStatus:
    # A dry run of the reindex: what it would write is stale; a value that does not decrypt
    # cannot be indexed either.
    report = run_job(engine, substring_job(engine, target), dry_run=True, listener=_QUIET)
    return replace(found, stale=report.written + report.failed)


_QUIET = QuietListener()


def retire_keys(
    engine: Engine,
    columns: Iterable[EncryptedColumn],
    key_ids: Sequence[str],
    keyring: Keyring | None = None,
    *,
    indexes: Iterable[IndexedColumn | SubstringColumn] = (),
    purpose: Purpose | None = None,
    resolve_legacy: bool = False,
) -> Keyring:
    """Check that no stored value needs any of ``key_ids``; return the keyring without them.

    The keys are encryption keys, checked against ``columns``, or blind-index keys, checked
    against ``indexes``: whichever keyring holds them (one purpose per call). The database is
    not changed: put the returned keyring in place of the current one (:func:`env_key_changes`
    says how, for the env provider, by key id).

    Args:
        engine: the database.
        columns: every encrypted column that may hold values under the keys.
        key_ids: the keys to retire.
        keyring: the keyring to remove them from; by default the process default keys of
            ``purpose``.
        indexes: every blind-index column that may hold index values under the keys.
        purpose: whose keys ``key_ids`` are; by default that of the default keyring that
            holds them (needed only for an id that both purposes use).
        resolve_legacy: try the keys on every legacy token (see :func:`status`), and refuse
            only if a key being retired opens one; without it, any legacy token refuses,
            since it may be under any key.

    Raises:
        RotationError: values still use a key, or legacy tokens (which name no key) remain
            (with ``resolve_legacy``: a key being retired opens one).
        ConfigurationError: a key is the primary key, not in the keyring, or the ids are of
            both purposes.
    """
    if keyring is None:
        keyring = current_keyring(purpose) if purpose else _keyring_holding(key_ids)
    remaining = _without(keyring, key_ids)
    columns, indexes = list(columns), list(indexes)
    checked = indexes if keyring.purpose == "blind-index" else columns
    if not checked:
        what = "blind-index" if keyring.purpose == "blind-index" else "encrypted"
        raise ConfigurationError(
            f"no {what} column was checked, so nothing says the keys are unused: name the "
            "models that define them (--models)"
        )
    if keyring.purpose == "blind-index":
        report = status(engine, indexes=indexes)
        counted = [(i.column, i.rows_by_key, _INDEX_VALUE) for i in report.indexes]
        counted += [(s.index, s.by_key, _OWNER_WITH_SIDE_ROWS) for s in report.substrings]
        _refuse_used(key_ids, counted, "`fieldcrypt reindex`, then --check")
        return remaining
    report = status(engine, columns, resolve_legacy=resolve_legacy)
    counted = [(c.column, c.by_key, _ROW) for c in report.columns]
    counted += [(c.column, c.legacy_by_key or {}, _LEGACY_TOKEN) for c in report.columns]
    _refuse_used(key_ids, counted, "`fieldcrypt rotate`, then `fieldcrypt status`")
    # Only a Fernet key can open a legacy token: retiring other keys needs no trial.
    legacy = [
        f"{c.column} ({plural(c.keyed_legacy, 'row')})"
        for c in report.columns
        if c.keyed_legacy and any(k in c.legacy_candidates for k in key_ids)
    ]
    if legacy and not resolve_legacy:
        raise RotationError(
            f"legacy tokens, which do not say which key opens them, remain in "
            f"{', '.join(legacy)}; a key being retired may be the one: run `fieldcrypt rotate` "
            "first, or retire with --resolve-legacy (resolve_legacy=True), which tries the "
            "keys on them"
        )
    return remaining


#: What a counted row is, for :func:`plural`: the noun, and its plural where ``+ "s"`` is wrong.
_Unit = tuple[str, str | None]
_ROW: Final[_Unit] = ("row", None)
_LEGACY_TOKEN: Final[_Unit] = ("legacy token", None)
_INDEX_VALUE: Final[_Unit] = ("index value", None)
_OWNER_WITH_SIDE_ROWS: Final[_Unit] = ("owner with side rows", "owners with side rows")


def _refuse_used(
    key_ids: Sequence[str], counted: list[tuple[str, dict[str, int], _Unit]], fix: str
) -> None:
    """Raise naming every column that still holds values under one of ``key_ids``.

    ``counted`` holds ``(column, rows per key id, what a row is)``, such as :data:`_ROW`.
    """
    users = []
    for key_id in dict.fromkeys(key_ids):
        holders = [
            f"{column} ({plural(by_key[key_id], *unit)})"
            for column, by_key, unit in counted
            if by_key.get(key_id)
        ]
        if holders:
            users.append(f"key {key_id!r} is still used by {', '.join(holders)}")
    if users:
        raise RotationError(f"{'; '.join(users)}; run {fix} before retiring")


def _keyring_holding(key_ids: Sequence[str]) -> Keyring:
    """The default keyring of the purpose whose keys ``key_ids`` are."""
    holders: dict[Purpose, Keyring] = {}
    for purpose in PURPOSES:
        try:
            found = current_keyring(purpose)
        except FieldCryptError:
            continue  # not configured: it holds none of them
        if any(key_id in found for key_id in key_ids):
            holders[purpose] = found
    if len(holders) > 1:
        raise ConfigurationError(
            "the key ids name both encryption and blind-index keys; retire each purpose's keys "
            "in a command of their own, and say which with --purpose"
        )
    if not holders:
        return current_keyring()  # its without() names what is missing
    return next(iter(holders.values()))


def _without(keyring: Keyring, key_ids: Sequence[str]) -> Keyring:
    if not key_ids:
        raise ConfigurationError("name at least one key id to retire")
    remaining = keyring
    for key_id in dict.fromkeys(key_ids):
        remaining = remaining.without(key_id)
    return remaining


@dataclass(frozen=True)
class KeySettingsChange:
    """How to change the key settings once keys are retired: ids and variables, never a key.

    Attributes:
        variable: the variable that lists the keys: ``FIELDCRYPT_KEYS`` or
            ``FIELDCRYPT_BLIND_INDEX_KEYS``.
        remove: ids of the entries to remove from it, in the order they were given.
        keep: ids of the entries that stay in it, in their order.
        primary: id of the key that writes; it stays, and so does ``FIELDCRYPT_PRIMARY_KEY_ID``.
        unset: other variables to unset: ``FIELD_ENCRYPTION_KEY`` once ``legacy`` is retired.
    """

    variable: str
    remove: tuple[str, ...]
    keep: tuple[str, ...]
    primary: str
    unset: tuple[str, ...] = ()

    def steps(self) -> list[str]:
        """What to do, one line each; it names ids and variables only."""
        found = []
        if self.remove:
            kept = ", ".join(
                f"{key_id!r}{' (primary)' if key_id == self.primary else ''}"
                for key_id in self.keep
            )
            entries = word_for(len(self.remove), "entry", "entries")
            removed = ", ".join(repr(key_id) for key_id in self.remove)
            found.append(f"remove the {entries} {removed} from {self.variable}; keep {kept}")
        else:
            found.append(f"{self.variable} stays as it is")
        found += [f"unset {variable}: the key it holds is retired" for variable in self.unset]
        return found

    def to_dict(self) -> dict[str, Any]:
        """The change as JSON-ready data: lists of ids and names of variables."""
        return {**asdict(self), "steps": self.steps()}


def env_key_changes(
    key_ids: Sequence[str],
    settings: FieldCryptSettings | None = None,
    *,
    purpose: Purpose = "encryption",
) -> KeySettingsChange:
    """How to change the env provider's settings so that ``key_ids`` are retired.

    The keys of ``purpose`` are read from ``settings`` (by default the environment), and the
    ids checked as :func:`retire_keys` checks them; the answer names ids only, so it is safe
    to print and to log. The entries that stay keep their order, so the primary key stays
    primary, whether it is the first entry or the one ``FIELDCRYPT_PRIMARY_KEY_ID`` names.

    Raises:
        ConfigurationError: the settings are malformed, or a key is the primary key or not
            among the keys.
    """
    if settings is None:
        from sa_fieldcrypt.settings import load_settings

        settings = load_settings()
    keyring = keyring_from_settings(settings, purpose=purpose)
    remaining = _without(keyring, key_ids)
    variable = "FIELDCRYPT_BLIND_INDEX_KEYS" if purpose == "blind-index" else "FIELDCRYPT_KEYS"
    listed = keyring.ids
    unset: tuple[str, ...] = ()
    if purpose == "encryption" and settings.legacy_key is not None:
        # FIELD_ENCRYPTION_KEY supplies the `legacy` key itself; FIELDCRYPT_KEYS never lists it.
        listed = tuple(key_id for key_id in listed if key_id != LEGACY_KEY_ID)
        if LEGACY_KEY_ID in key_ids:
            unset = ("FIELD_ENCRYPTION_KEY",)
    retired = set(key_ids)
    return KeySettingsChange(
        variable=variable,
        remove=tuple(key_id for key_id in dict.fromkeys(key_ids) if key_id in listed),
        keep=tuple(key_id for key_id in listed if key_id not in retired),
        primary=remaining.primary.id,
        unset=unset,
    )

"""Assertions for users' tests: what the database holds for a model's encrypted columns.

Typical usage::

    from sa_fieldcrypt.testing import assert_encrypted_at_rest, assert_indexes_current

    def test_signup(fieldcrypt_keyring, fieldcrypt_blind_index_keyring, session):
        session.add(Customer(email="ada@example.com"))
        session.flush()
        assert 1 == assert_encrypted_at_rest(session, Customer)
        assert_indexes_current(session, Customer)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Text, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sa_fieldcrypt.blind_index import TRIGRAM, BlindIndex, SubstringIndex
from sa_fieldcrypt.cipher import inspect_token
from sa_fieldcrypt.jobs.sql import stored_text
from sa_fieldcrypt.jobs.targets import SubstringColumn, find_indexes, find_substring_indexes
from sa_fieldcrypt.types import column_codec, encrypted_columns

__all__ = ["assert_encrypted_at_rest", "assert_indexes_current"]


def assert_encrypted_at_rest(
    bind: Session | Connection,
    model_or_table: Any,
    columns: Iterable[str] | None = None,
) -> int:
    """Assert that the database holds tokens, never plaintext, in a model's encrypted columns.

    Reads the stored values as raw text (bypassing decryption) and checks that each is NULL
    or a token that decrypts with the column's keys. Returns the number of values checked.

    Args:
        bind: a session or connection that sees the rows (flush first).
        model_or_table: a mapped class or a ``Table``.
        columns: names of the columns to check; by default every encrypted column.

    Raises:
        AssertionError: naming the column and the row's primary key, never the value.
    """
    found = encrypted_columns(model_or_table)
    if columns is not None:
        wanted = set(columns)
        found = [c for c in found if c.name in wanted or c.key in wanted]
        missing = wanted - {c.name for c in found} - {c.key for c in found}
        if missing:
            raise AssertionError(f"not encrypted columns: {sorted(missing)}")
    # Explicit raises rather than assert statements: these must hold under python -O too.
    if not found:
        raise AssertionError(f"{model_or_table!r} has no encrypted columns")
    table = found[0].table
    pk = list(table.primary_key)
    checked = 0
    for column in found:
        codec = column_codec(column)
        if codec is None:  # not so: encrypted_columns() keeps the columns that have one
            continue
        label = f"{table.fullname}.{column.name}"
        stmt = select(type_coerce(column, Text()), *pk)
        for raw, *key in bind.execute(stmt):
            if raw is None:
                continue
            where = f"{label} at primary key {tuple(key)!r}"
            if inspect_token(raw).kind == "plaintext":
                raise AssertionError(f"{where} holds plaintext, not a token")
            # Raises DecryptionError naming the column; a row-bound value opens in its row only.
            codec.decrypt_token(raw, tuple(key) if codec.row_bound else None)
            checked += 1
    return checked


def assert_indexes_current(
    bind: Session | Connection,
    model_or_table: Any,
    indexes: Iterable[str] | None = None,
) -> int:
    """Assert that every blind index of every row, side rows included, is of the row's values.

    Covers every index the model declares: each of a hybrid's indexes (whole values, parts
    such as ``last_digits(4)``, truncated ``bits=`` and ``slow=`` ones), every
    :func:`~sa_fieldcrypt.compound_index`, whose parts it reads from the row, and every
    :class:`~sa_fieldcrypt.SubstringIndex`, whose side rows it reads. The indexes are found
    and checked as ``fieldcrypt verify --indexes`` finds and checks them
    (:func:`~sa_fieldcrypt.jobs.find_indexes`, :meth:`~sa_fieldcrypt.BlindIndex.matches`,
    :func:`~sa_fieldcrypt.jobs.find_substring_indexes`,
    :meth:`~sa_fieldcrypt.SubstringIndex.matches`), but through ``bind``, so rows flushed in
    the test's own transaction count. A stored index under an older key that the keyring
    still holds is current: lookups find it.

    A row fails when its index is of other values (written by Core or a bulk method, which
    run no mapper events, or copied from another row), when it has values to index but no
    index, when it has an index but nothing to index, or when its index is under a key or
    cost parameters the index no longer has (lookups miss it until ``fieldcrypt reindex``).
    Likewise for side rows: an owner row fails when its side rows are missing, when some
    are missing, extra or altered, when they are under several index keys, and side rows
    whose owner row is gone fail too.

    Args:
        bind: a session or connection that sees the rows (flush first).
        model_or_table: a mapped class, a declarative base (all its tables) or a ``Table``.
        indexes: names of the index columns, or of substring indexes' side tables, to
            check; by default every one.

    Returns:
        The number of index values checked (rows times indexes, NULLs included), plus, per
        substring index, the number of owner rows whose side rows were checked.

    Raises:
        AssertionError: naming the index column (or side table) and the row's primary key,
            never a value; or the model has no blind index (none of ``indexes``).
        DecryptionError: a value does not decrypt (naming its column).
    """
    found = find_indexes(model_or_table, required=False)
    substrings = find_substring_indexes(model_or_table)
    if indexes is not None:
        wanted = set(indexes)
        found = [c for c in found if c.index.name in wanted or c.index.key in wanted]
        substrings = [s for s in substrings if s.side.name in wanted or s.label in wanted]
        missing = (
            wanted
            - {c.index.name for c in found}
            - {c.index.key for c in found}
            - {s.side.name for s in substrings}
            - {s.label for s in substrings}
        )
        if missing:
            raise AssertionError(
                f"not blind-index columns nor substring-index side tables: {sorted(missing)}"
            )
    if not found and not substrings:
        raise AssertionError(f"{model_or_table!r} has no blind index")
    checked = 0
    for column in found:
        pk = list(column.table.primary_key)
        size = len(column.values)
        stmt = select(*(stored_text(v) for v in column.values), column.index, *pk)
        for row in bind.execute(stmt):
            key = tuple(row[size + 1 :])
            stored = row[size]
            value = column.plaintext(tuple(row[:size]), key)
            problem = _index_problem(column.blind_index, value, stored)
            if problem is not None:
                raise AssertionError(f"{column.label} at primary key {key!r} {problem}")
            checked += 1
    for target in substrings:
        checked += _check_side_rows(bind, target)
    return checked


def _check_side_rows(bind: Session | Connection, target: SubstringColumn) -> int:
    """Check every owner row's side rows against its value; return the owners checked."""
    held = target.side_rows(bind)
    owners = target.table
    where = f"{target.label} (substring index of {owners.fullname}.{target.value.name})"
    checked = 0
    for stored, *owner in bind.execute(select(stored_text(target.value), *owners.primary_key)):
        key = tuple(owner)
        value = target.plaintext(stored, key)
        problem = _side_rows_problem(target.substring, value, held.pop(key, ()))
        if problem is not None:
            raise AssertionError(f"{where} at primary key {key!r} {problem}")
        checked += 1
    if held:
        # Sorted by repr: one message for one database, whatever order the rows came in.
        orphan = min(held, key=repr)
        raise AssertionError(
            f"{where} has side rows of primary key {orphan!r}, which no row of "
            f"{owners.fullname} has: the row was deleted by Core where foreign keys are not "
            "enforced (SQLite); delete the side rows with it"
        )
    return checked


def _side_rows_problem(substring: SubstringIndex, value: Any, held: Sequence[str]) -> str | None:
    """Why ``held`` are not the current side rows of ``value``; None when they are."""
    verdict = substring.matches(value, held)
    if verdict:
        return None
    if verdict is None:
        return (
            "has side rows under an index key the keyring no longer holds, which lookups "
            "miss; run `fieldcrypt reindex`"
        )
    text = substring.normalize(value)
    if not held:
        return (
            "has no side rows for the row's value: written by Core or a bulk method (no "
            "mapper events), or its side rows were deleted; run `fieldcrypt reindex`"
        )
    if text is None or len(text) < TRIGRAM:
        return (
            "has side rows, but the row's value has nothing to index (NULL, or under "
            f"{TRIGRAM} characters once normalized); run `fieldcrypt reindex`"
        )
    key_ids = {v.partition(":")[0] for v in held}
    if len(key_ids) > 1:
        return (
            f"has side rows under {len(key_ids)} index keys, where a flush or a reindex "
            "writes them under one; run `fieldcrypt reindex`"
        )
    expected = set(substring.term_values(text).get(key_ids.pop(), ()))
    missing, extra = len(expected - set(held)), len(set(held) - expected)
    return (
        f"has side rows that are not those of the row's value ({missing} missing, {extra} "
        "extra): written by Core or a bulk method (no mapper events), altered, or computed "
        "by another normalizer; run `fieldcrypt reindex`"
    )


def _index_problem(blind_index: BlindIndex, value: Any, stored: str | None) -> str | None:
    """Why ``stored`` is not a current index of ``value``; None when it is."""
    if stored is None:
        if blind_index.normalize(value) is None:
            return None
        return "has no index value for the row's values; run `fieldcrypt reindex`"
    verdict = blind_index.matches(value, stored)
    if verdict is None:
        return (
            "holds an index value under a key or cost parameters the index no longer has, "
            "which lookups miss; run `fieldcrypt reindex`"
        )
    if not verdict:
        if blind_index.normalize(value) is None:
            return "holds an index value, but the row's values have nothing to index"
        return (
            "holds the index of other values: written by Core or a bulk method (no mapper "
            "events), or copied from another row; run `fieldcrypt reindex`"
        )
    return None

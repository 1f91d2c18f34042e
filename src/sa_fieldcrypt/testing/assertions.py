"""Assertions for users' tests: what the database holds for a model's encrypted columns.

Typical usage::

    from sa_fieldcrypt.testing import assert_encrypted_at_rest

    def test_signup(fieldcrypt_keyring, session):
        session.add(Customer(email="ada@example.com"))
        session.flush()
        assert 1 == assert_encrypted_at_rest(session, Customer)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Text, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sa_fieldcrypt.cipher import inspect_token
from sa_fieldcrypt.types import column_codec, encrypted_columns

__all__ = ["assert_encrypted_at_rest"]


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

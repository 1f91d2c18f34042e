"""Helpers for testing code that uses sa-fieldcrypt: fixtures, strategies and assertions.

Installed as a pytest plugin, so the fixtures are available in every test suite once
sa-fieldcrypt is installed: ``fieldcrypt_keyring`` (fresh default encryption keys) and
``fieldcrypt_blind_index_keyring`` (fresh default blind-index keys), each undone after the
test::

    def test_signup(fieldcrypt_keyring, session):
        session.add(Customer(email="ada@example.com"))
        session.commit()
        assert_encrypted_at_rest(session, Customer)

With the ``gcp`` extra, the ``fake_secret_manager`` fixture serves an in-process Google Cloud
Secret Manager (:class:`sa_fieldcrypt.gcp_fake.FakeSecretManager`) for the test.

Hypothesis strategies (:func:`text_plaintexts`, :func:`bytes_plaintexts`,
:func:`json_plaintexts`, :func:`keyrings`) need ``hypothesis`` installed; it is imported only
when a strategy is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Text, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sa_fieldcrypt.cipher import inspect_token
from sa_fieldcrypt.config import as_key_cache, swap_default_keys
from sa_fieldcrypt.keys import PURPOSE_KINDS, KeyKind, Keyring, Purpose, generate_key
from sa_fieldcrypt.types import COLUMN_INFO_KEY, EncryptedType, encrypted_columns

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from sa_fieldcrypt.gcp_fake import FakeSecretManager
    from sa_fieldcrypt.providers.base import KeyProvider

__all__ = [
    "assert_encrypted_at_rest",
    "bytes_plaintexts",
    "encrypted_columns",
    "fake_secret_manager",
    "fieldcrypt_blind_index_keyring",
    "fieldcrypt_keyring",
    "json_plaintexts",
    "keyrings",
    "temporary_keys",
    "text_plaintexts",
]

# -- configuration ---------------------------------------------------------------------------


@contextmanager
def temporary_keys(
    source: Keyring | KeyProvider, *, purpose: Purpose = "encryption"
) -> Iterator[None]:
    """Make ``source`` the process default keys of ``purpose`` inside the block, then restore.

    Raises:
        ConfigurationError: ``source`` is a keyring of another purpose.
    """
    previous = swap_default_keys(as_key_cache(source, purpose=purpose), purpose=purpose)
    try:
        yield
    finally:
        swap_default_keys(previous, purpose=purpose)


@pytest.fixture
def fieldcrypt_blind_index_keyring() -> Iterator[Keyring]:
    """A fresh one-key blind-index keyring (``b1``) as the default blind-index keys."""
    keyring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    with temporary_keys(keyring, purpose="blind-index"):
        yield keyring


@pytest.fixture
def fieldcrypt_keyring() -> Iterator[Keyring]:
    """A fresh two-key keyring (``k2`` primary, ``k1`` decrypt-only) as the default keys."""
    keyring = Keyring({"k2": generate_key(), "k1": generate_key()})
    with temporary_keys(keyring):
        yield keyring


@pytest.fixture
def fake_secret_manager() -> Iterator[FakeSecretManager]:
    """A fake Google Cloud Secret Manager on a local port, for this test only (the gcp extra).

    Raises:
        ImportError: the gcp extra is not installed; the message says how to install it.
    """
    # Imported here: the plugin loads in every pytest run, with or without the Google packages.
    from sa_fieldcrypt.gcp_fake import FakeSecretManager

    with FakeSecretManager() as fake:
        yield fake


# -- assertions ------------------------------------------------------------------------------


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
        codec: EncryptedType = column.info.get(COLUMN_INFO_KEY, column.type)
        label = f"{table.fullname}.{column.name}"
        stmt = select(type_coerce(column, Text()), *pk)
        for raw, *key in bind.execute(stmt):
            if raw is None:
                continue
            where = f"{label} at primary key {tuple(key)!r}"
            if inspect_token(raw).kind == "plaintext":
                raise AssertionError(f"{where} holds plaintext, not a token")
            codec.decrypt_token(raw)  # raises DecryptionError naming the column
            checked += 1
    return checked


# -- hypothesis strategies -------------------------------------------------------------------


def text_plaintexts() -> SearchStrategy[str]:
    """Any Python string: all of Unicode, NUL, astral characters and lone surrogates."""
    from hypothesis import strategies as st

    return st.text(alphabet=st.characters(codec=None))


def bytes_plaintexts() -> SearchStrategy[bytes]:
    """Any bytes, empty included."""
    from hypothesis import strategies as st

    return st.binary()


def json_plaintexts() -> SearchStrategy[Any]:
    """Any JSON value that round-trips exactly (finite floats, str keys); never None."""
    from hypothesis import strategies as st

    scalars = (
        st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text_plaintexts()
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(text_plaintexts(), children, max_size=5)
        ),
        max_leaves=20,
    )


def keyrings(
    *,
    max_keys: int = 4,
    kinds: Iterable[KeyKind] | None = None,
    purpose: Purpose = "encryption",
) -> SearchStrategy[Keyring]:
    """Keyrings of ``purpose`` with 1 to ``max_keys`` fresh keys, any of them primary.

    Args:
        max_keys: the most keys a keyring holds.
        kinds: the kinds to draw keys from; by default every kind of ``purpose``.
        purpose: ``"encryption"`` or ``"blind-index"``.
    """
    from hypothesis import strategies as st

    ids = st.lists(
        st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
        min_size=1,
        max_size=max_keys,
        # A blind-index keyring refuses ids that differ only in case.
        unique_by=str.lower,
    )
    kind = st.sampled_from(tuple(PURPOSE_KINDS[purpose] if kinds is None else kinds))

    @st.composite
    def build(draw: st.DrawFn) -> Keyring:
        key_ids = draw(ids)
        primary = draw(st.sampled_from(key_ids))
        return Keyring(
            {kid: generate_key(draw(kind)) for kid in key_ids}, primary=primary, purpose=purpose
        )

    return build()

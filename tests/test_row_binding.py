"""Row binding: encrypted_hybrid(..., bind_row=True) binds each value to its column and its row.

A row-bound token (``fc1:<key id>:r:<payload>``) authenticates its column's context and the
row's primary key, so a token copied into another row of the same column does not decrypt
there, with a blind index or without one.
"""

from __future__ import annotations

import base64
import enum
import pickle
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    CHAR,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    Uuid,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    load_only,
    make_transient,
    mapped_column,
    relationship,
)

from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    ConfigurationError,
    DecryptionError,
    EncryptedJSON,
    EncryptedText,
    Keyring,
    UnknownKeyError,
    ValueTypeError,
    encrypted_hybrid,
    encrypted_values,
    generate_key,
    normalize_email,
)
from sa_fieldcrypt.cipher import (
    TokenInfo,
    decrypt,
    decrypt_row_value,
    encrypt,
    encrypt_row_value,
    inspect_token,
    row_key_bytes,
)
from sa_fieldcrypt.keys import ROW_FLAG
from sa_fieldcrypt.legacy import BareFernet
from sa_fieldcrypt.types import column_codec

RINGS = {
    kind: Keyring({"k2": generate_key(kind), "k1": generate_key(kind)})
    for kind in ("fernet", "aes-gcm-siv")
}
CONTEXT = "core.customers.email"
PLAINTEXT = b"ada.lovelace@example.com"
# Contexts as columns may have them: any non-empty UTF-8 text without a zero character.
CONTEXTS = st.text(min_size=1).filter(
    lambda s: "\x00" not in s and s.encode("utf-8", "ignore") == s.encode("utf-8", "surrogatepass")
)
ROW_PARTS = st.integers() | st.text() | st.uuids()
ROW_KEYS = st.lists(ROW_PARTS, min_size=1, max_size=4)
kinds = st.sampled_from(list(RINGS))
CASES = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def _edit(token: str, edit: str, index: int, char: str) -> str:
    """``token`` with one character inserted, deleted or substituted at ``index`` (wrapped)."""
    at = index % (len(token) + (edit == "insert"))
    if edit == "insert":
        return token[:at] + char + token[at:]
    if edit == "delete":
        return token[:at] + token[at + 1 :]
    return token[:at] + char + token[at + 1 :]


# -- the token format ------------------------------------------------------------------------


@given(data=st.binary(), context=CONTEXTS, row_key=ROW_KEYS, kind=kinds)
def test_round_trip_any_data_context_and_row_key(
    data: bytes, context: str, row_key: list[Any], kind: str
) -> None:
    """A row token of any data, context and primary key decrypts with them, strict or not."""
    ring = RINGS[kind]
    token = encrypt(ring, data, context=context, row_key=row_key)
    assert token.startswith("fc1:k2:r:")
    assert TokenInfo("fc1", "k2", ROW_FLAG) == inspect_token(token)
    assert inspect_token(token).bound
    for allow_unbound in (True, False):
        assert data == decrypt(
            ring, token, context=context, row_key=row_key, allow_unbound=allow_unbound
        )


@given(data=st.binary(max_size=64), context=CONTEXTS, row_key=ROW_KEYS, other=ROW_KEYS, kind=kinds)
def test_a_token_decrypts_under_no_other_row_key(
    data: bytes, context: str, row_key: list[Any], other: list[Any], kind: str
) -> None:
    """A row token is refused under any primary key of another encoding."""
    assume(row_key_bytes(row_key) != row_key_bytes(other))
    token = encrypt(RINGS[kind], data, context=context, row_key=row_key)
    with pytest.raises(DecryptionError) as info:
        decrypt(RINGS[kind], token, context=context, row_key=other)
    assert "k2" == info.value.key_id


@given(data=st.binary(max_size=64), context=CONTEXTS, other=CONTEXTS, row_key=ROW_KEYS, kind=kinds)
def test_a_token_decrypts_under_no_other_context(
    data: bytes, context: str, other: str, row_key: list[Any], kind: str
) -> None:
    """A row token is refused in any other column, for the same primary key."""
    assume(context != other)
    token = encrypt(RINGS[kind], data, context=context, row_key=row_key)
    with pytest.raises(DecryptionError):
        decrypt(RINGS[kind], token, context=other, row_key=row_key)


@given(context=CONTEXTS, row_key=ROW_KEYS, kind=kinds)
def test_context_and_row_cannot_trade_characters(
    context: str, row_key: list[Any], kind: str
) -> None:
    """Moving the row key's first byte into the context gives another binding, refused."""
    encoded = row_key_bytes(row_key)
    token = encrypt(RINGS[kind], PLAINTEXT, context=context, row_key=row_key)
    with pytest.raises(DecryptionError):
        decrypt_row_value(RINGS[kind], token, context + encoded[:1].decode(), encoded[1:], True)


@pytest.mark.parametrize("kind", list(RINGS))
def test_a_row_token_read_without_its_row_says_so(kind: str) -> None:
    """Without a row key, with or without a context, a row token raises naming row binding."""
    ring = RINGS[kind]
    token = encrypt(ring, PLAINTEXT, context=CONTEXT, row_key=[7])
    for context in (CONTEXT, None):
        with pytest.raises(DecryptionError, match="bound to its row") as info:
            decrypt(ring, token, context=context)
        assert "k2" == info.value.key_id


@pytest.mark.parametrize("kind", list(RINGS))
def test_flag_edits_of_a_row_token_are_refused(kind: str) -> None:
    """Relabelling a row token as column-bound or unbound, or the reverse, fails."""
    ring = RINGS[kind]
    row_token = encrypt(ring, PLAINTEXT, context=CONTEXT, row_key=[7])
    column_token = encrypt(ring, PLAINTEXT, context=CONTEXT)
    unbound_token = encrypt(ring, PLAINTEXT)
    relabelled = [
        (row_token.replace(":r:", ":c:", 1), [7]),
        (row_token.replace(":r:", ":", 1), [7]),
        (row_token.replace(":r:", ":c:", 1), None),
        (column_token.replace(":c:", ":r:", 1), [7]),
        (unbound_token.replace("fc1:k2:", "fc1:k2:r:", 1), [7]),
    ]
    for token, row_key in relabelled:
        with pytest.raises(DecryptionError):
            decrypt(ring, token, context=CONTEXT, row_key=row_key)


@pytest.mark.parametrize("kind", list(RINGS))
def test_key_id_swap_and_foreign_key_are_refused(kind: str) -> None:
    """A row token relabelled with another key's id fails; under an unknown id, it names it."""
    ring = RINGS[kind]
    token = encrypt(ring, PLAINTEXT, context=CONTEXT, row_key=["a", 1])
    with pytest.raises(DecryptionError) as info:
        decrypt(ring, token.replace("fc1:k2:", "fc1:k1:", 1), context=CONTEXT, row_key=["a", 1])
    assert "k1" == info.value.key_id
    stranger = Keyring({"k9": generate_key(kind)})  # type: ignore[arg-type]
    with pytest.raises(UnknownKeyError) as unknown:
        decrypt(stranger, token, context=CONTEXT, row_key=["a", 1])
    assert "k2" == unknown.value.key_id
    same_id = Keyring({"k2": generate_key(kind)})  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        decrypt(same_id, token, context=CONTEXT, row_key=["a", 1])


@pytest.mark.parametrize("kind", list(RINGS))
@CASES
@given(
    plaintext=st.binary(max_size=48),
    row_key=ROW_KEYS,
    edit=st.sampled_from(["insert", "delete", "substitute"]),
    index=st.integers(min_value=0),
    char=st.characters() | st.sampled_from(list(".*= \n\t+/-_A:rc")),
)
def test_any_single_character_edit_of_a_row_token_is_refused(
    kind: str, plaintext: bytes, row_key: list[Any], edit: str, index: int, char: str
) -> None:
    """Inserting, deleting or replacing one character anywhere in a row token is refused."""
    token = encrypt(RINGS[kind], plaintext, context=CONTEXT, row_key=row_key)
    mutated = _edit(token, edit, index, char)
    if mutated == token:
        return
    for allow_unbound in (True, False):
        with pytest.raises(DecryptionError):
            decrypt(
                RINGS[kind], mutated, context=CONTEXT, row_key=row_key, allow_unbound=allow_unbound
            )


@pytest.mark.parametrize("kind", list(RINGS))
@CASES
@given(plaintext=st.binary(max_size=64), row_key=ROW_KEYS, data=st.data())
def test_bit_flips_anywhere_in_a_row_payload(
    kind: str, plaintext: bytes, row_key: list[Any], data: st.DataObject
) -> None:
    """Flipping any bit of a row token's decoded payload is detected."""
    header, _, payload = encrypt(
        RINGS[kind], plaintext, context=CONTEXT, row_key=row_key
    ).rpartition(":")
    raw = bytearray(base64.urlsafe_b64decode(payload))
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    mutated = f"{header}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(DecryptionError):
        decrypt(RINGS[kind], mutated, context=CONTEXT, row_key=row_key)


@pytest.mark.parametrize(
    "make",
    [
        lambda ring: encrypt(ring, PLAINTEXT, context=CONTEXT),
        lambda ring: encrypt(ring, PLAINTEXT),
    ],
    ids=["column-bound", "unbound"],
)
def test_tokens_not_bound_to_a_row_read_only_while_unbound_values_are_allowed(make: Any) -> None:
    """Column-bound and unbound tokens read in a row-bound read unless it is strict (legacy
    values, which columns declare, are the column-level tests' "legacy" cases)."""
    ring = RINGS["fernet"]
    token = make(ring)
    assert PLAINTEXT == decrypt(ring, token, context=CONTEXT, row_key=[7])
    with pytest.raises(DecryptionError, match="not bound to its row") as info:
        decrypt(ring, token, context=CONTEXT, row_key=[7], allow_unbound=False)
    assert inspect_token(token).key_id == info.value.key_id


def test_a_column_token_of_another_column_is_refused_in_a_row_read() -> None:
    """A column-bound token of another context stays refused, lenient or not."""
    ring = RINGS["aes-gcm-siv"]
    token = encrypt(ring, PLAINTEXT, context="core.customers.phone")
    with pytest.raises(DecryptionError):
        decrypt(ring, token, context=CONTEXT, row_key=[7])


def test_the_low_level_functions_take_the_encoded_row() -> None:
    """encrypt_row_value/decrypt_row_value work on row_key_bytes' encoding, as encrypt does."""
    ring = RINGS["fernet"]
    row = row_key_bytes([3, "eu"])
    token = encrypt_row_value(ring, PLAINTEXT, CONTEXT, row)
    assert PLAINTEXT == decrypt(ring, token, context=CONTEXT, row_key=[3, "eu"])
    assert PLAINTEXT == decrypt_row_value(ring, token, CONTEXT, row, False)
    with pytest.raises(DecryptionError):
        decrypt_row_value(ring, token, CONTEXT, row_key_bytes(["eu", 3]), True)


def test_a_row_key_needs_a_context() -> None:
    """encrypt() and decrypt() refuse a row key given without a context."""
    ring = RINGS["fernet"]
    with pytest.raises(ConfigurationError, match="context"):
        encrypt(ring, PLAINTEXT, row_key=[1])
    token = encrypt(ring, PLAINTEXT, context=CONTEXT, row_key=[1])
    with pytest.raises(ConfigurationError, match="context"):
        decrypt(ring, token, row_key=[1])


def test_blind_index_keyrings_neither_write_nor_read_row_tokens() -> None:
    """A blind-index keyring has no row token heads and refuses to encrypt for a row."""
    index_ring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    assert {} == dict(index_ring.row_token_heads)
    with pytest.raises(ConfigurationError):
        encrypt(index_ring, PLAINTEXT, context=CONTEXT, row_key=[1])


def test_row_token_heads_name_every_encryption_key() -> None:
    """Keyring.row_token_heads maps "fc1:<id>:r" to each key, as bound_token_heads does "c"."""
    ring = RINGS["fernet"]
    assert {"fc1:k2:r": ring.get("k2"), "fc1:k1:r": ring.get("k1")} == dict(ring.row_token_heads)
    assert "r" == ROW_FLAG


def test_contexts_with_a_zero_character_are_refused() -> None:
    """A context holding "\\x00" is a ConfigurationError for columns, encrypt and Key.for_row."""
    ring = RINGS["aes-gcm-siv"]
    with pytest.raises(ConfigurationError, match="zero character"):
        EncryptedText(context="core.cus\x00tomers")
    with pytest.raises(ConfigurationError, match="zero character"):
        encrypt(ring, PLAINTEXT, context="core\x00")
    with pytest.raises(ConfigurationError, match="zero character"):
        encrypt(ring, PLAINTEXT, context="core\x00", row_key=[1])
    with pytest.raises(ConfigurationError, match="zero character"):
        ring.primary.for_row("\x00", b"1:1,")


def test_row_fernet_token_uses_the_documented_hkdf_key() -> None:
    """A row-bound Fernet token is Fernet under HKDF(key, info=prefix + context + NUL + row)."""
    secret = generate_key()
    token = encrypt(Keyring({"k1": secret}), PLAINTEXT, context=CONTEXT, row_key=[42, "eu"])
    info = b"sa-fieldcrypt/fc1/fernet-context:" + CONTEXT.encode() + b"\x00" + b"2:42,2:eu,"
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        base64.urlsafe_b64decode(secret)
    )
    assert token.startswith("fc1:k1:r:gAAAAA")
    assert PLAINTEXT == Fernet(base64.urlsafe_b64encode(derived)).decrypt(token[len("fc1:k1:r:") :])


def test_row_aead_token_authenticates_context_nul_and_row() -> None:
    """A row-bound AES-GCM-SIV payload is nonce || ciphertext || tag, AD = context NUL row."""
    secret = generate_key(kind="aes-gcm-siv")
    token = encrypt(Keyring({"k3": secret}), PLAINTEXT, context=CONTEXT, row_key=[42])
    raw = base64.urlsafe_b64decode(token.removeprefix("fc1:k3:r:"))
    aead = AESGCMSIV(base64.urlsafe_b64decode(secret.partition(":")[2]))
    associated = CONTEXT.encode() + b"\x00" + b"2:42,"
    assert PLAINTEXT == aead.decrypt(raw[:12], raw[12:], associated)


# -- row_key_bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row_key", "expected"),
    [
        ([1], b"1:1,"),
        ([0], b"1:0,"),
        ([-42], b"3:-42,"),
        ([10**20], b"21:100000000000000000000,"),
        ([""], b"0:,"),
        (["a,b:c"], b"5:a,b:c,"),
        (["é"], b"2:\xc3\xa9,"),
        (["\ud800"], b"3:\xed\xa0\x80,"),
        (
            [uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")],
            b"36:12345678-9abc-def0-1234-56789abcdef0,",
        ),
        (["eu", 7], b"2:eu,1:7,"),
        ((7, "eu"), b"1:7,2:eu,"),
    ],
)
def test_row_key_bytes_are_netstrings_of_each_values_text(
    row_key: list[Any], expected: bytes
) -> None:
    """Each value's UTF-8 text is written as <length>:<bytes>, in the order given."""
    assert expected == row_key_bytes(row_key)


def _parse_netstrings(encoded: bytes) -> list[str]:
    parts = []
    while encoded:
        length, _, rest = encoded.partition(b":")
        size = int(length)
        assert b"," == rest[size : size + 1]
        parts.append(rest[:size].decode("utf-8", "surrogatepass"))
        encoded = rest[size + 1 :]
    return parts


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_row_key_bytes_of_strings_parse_back(row_key: list[str]) -> None:
    """The encoding of any strings parses back to exactly those strings."""
    assert row_key == _parse_netstrings(row_key_bytes(row_key))


# An alphabet of the encoding's own separators and digits, where collisions would hide.
TRICKY = st.lists(st.text(alphabet="1:,0a\x00", max_size=6), min_size=1, max_size=4)


def _neighbours(parts: list[str]) -> list[list[str]]:
    """Lists a weaker encoding would confuse with ``parts``: boundaries moved, merges, splits."""
    found = []
    for i in range(len(parts) - 1):
        left, right, head, tail = parts[i], parts[i + 1], parts[:i], parts[i + 2 :]
        if left:
            found.append([*head, left[:-1], left[-1] + right, *tail])
        if right:
            found.append([*head, left + right[0], right[1:], *tail])
        for glue in ("", ",", ":", "1:", ",1:", "\x00"):
            found.append([*head, left + glue + right, *tail])
    for i, part in enumerate(parts):
        for cut in range(len(part) + 1):
            found.append([*parts[:i], part[:cut], part[cut:], *parts[i + 1 :]])
    return found


@given(TRICKY, TRICKY)
def test_different_tuples_of_strings_have_different_encodings(
    first: list[str], second: list[str]
) -> None:
    """Two tuples of strings share an encoding only if they are equal, neighbours included."""
    encoded = row_key_bytes(first)
    for other in [second, *_neighbours(first)]:
        if other != first:
            assert encoded != row_key_bytes(other), other


@given(st.lists(st.integers() | st.uuids(), min_size=1, max_size=4))
def test_ints_and_uuids_encode_as_their_text(row_key: list[Any]) -> None:
    """An int is its decimal text and a UUID str(uuid): the same bytes as those strings."""
    assert row_key_bytes([str(v) for v in row_key]) == row_key_bytes(row_key)


@pytest.mark.parametrize(
    "value",
    [True, False, 3.25, float("nan"), Decimal("31415.9"), b"row-bytes", None, (1, 2)],
    ids=["true", "false", "float", "nan", "decimal", "bytes", "none", "tuple"],
)
def test_other_types_are_refused_without_quoting_the_value(value: Any) -> None:
    """bool, float and other non-int/str/UUID values raise ValueTypeError naming only the type."""
    for row_key in ([value], [1, value]):
        with pytest.raises(ValueTypeError) as info:
            row_key_bytes(row_key)
        message = str(info.value)
        assert type(value).__name__ in message
        if value is not None:  # "None" is part of the type's own name, NoneType
            assert repr(value) not in message
            assert str(value) not in message
        with pytest.raises(ValueTypeError):
            encrypt(RINGS["fernet"], PLAINTEXT, context=CONTEXT, row_key=row_key)


def test_an_empty_row_key_is_refused() -> None:
    """A row key of no values binds nothing and raises ValueTypeError."""
    with pytest.raises(ValueTypeError):
        row_key_bytes([])
    with pytest.raises(ValueTypeError):
        encrypt(RINGS["fernet"], PLAINTEXT, context=CONTEXT, row_key=[])


# -- EncryptedType ---------------------------------------------------------------------------


def _row_type(keyring: Keyring = RINGS["fernet"]) -> EncryptedText:
    return EncryptedText(keyring=keyring, context="fc_row.contacts.email").bound_to_rows()


def test_bound_to_rows_is_a_row_bound_copy() -> None:
    """bound_to_rows() returns a new row-bound type and leaves the original as it was."""
    original = EncryptedText(keyring=RINGS["fernet"], context="fc_row.contacts.email")
    copied = original.bound_to_rows()
    assert copied is not original
    assert (False, True) == (original.row_bound, copied.row_bound)
    assert "fc_row.contacts.email" == copied.context
    token = original.to_stored("ada")
    assert "c" == inspect_token(token or "").flag
    assert "ada" == original.from_stored(token)


def test_a_row_bound_type_round_trips_with_its_row_key() -> None:
    """to_stored/from_stored and encrypt_bytes/decrypt_token bind to the row key given."""
    column = _row_type()
    token = column.to_stored("ada@example.com", row_key=[5])
    assert (token or "").startswith("fc1:k2:r:")
    assert "ada@example.com" == column.from_stored(token, row_key=[5])
    raw = column.encrypt_bytes(b"\x00\xff", row_key=["eu", 5])
    assert b"\x00\xff" == column.decrypt_token(raw, row_key=["eu", 5])
    assert b"\x00\xff" == decrypt(
        RINGS["fernet"], raw, context="fc_row.contacts.email", row_key=["eu", 5]
    )
    assert column.to_stored(None, row_key=[5]) is None
    assert column.from_stored(None, row_key=[5]) is None


def test_a_row_bound_type_refuses_another_rows_value_naming_no_plaintext() -> None:
    """A token of row 5 read as row 6's raises DecryptionError that quotes nothing of it."""
    column = _row_type()
    token = column.to_stored("ada@example.com", row_key=[5])
    with pytest.raises(DecryptionError) as info:
        column.from_stored(token, row_key=[6])
    assert "ada" not in str(info.value)
    with pytest.raises(DecryptionError):
        column.decrypt_token(column.encrypt_bytes(b"x", row_key=[5]), row_key=["5", 0])


def test_a_row_bound_json_type_round_trips() -> None:
    """EncryptedJSON().bound_to_rows() stores any JSON value bound to its row."""
    column = EncryptedJSON(keyring=RINGS["aes-gcm-siv"], context="fc_row.prefs").bound_to_rows()
    value = {"lang": "en", "sms": [True, None, 2.5]}
    token = column.to_stored(value, row_key=[uuid.UUID(int=1)])
    assert value == column.from_stored(token, row_key=[uuid.UUID(int=1)])
    with pytest.raises(DecryptionError):
        column.from_stored(token, row_key=[uuid.UUID(int=2)])


@pytest.mark.parametrize(
    "use",
    [
        lambda c, t: c.process_bind_param("ada", sqlite.dialect()),
        lambda c, t: c.process_result_value(t, sqlite.dialect()),
        lambda c, t: c.bind_processor(sqlite.dialect())("ada"),
        lambda c, t: c.result_processor(sqlite.dialect(), None)(t),
        lambda c, t: c.to_stored("ada"),
        lambda c, t: c.from_stored(t),
        lambda c, t: c.encrypt_bytes(b"ada"),
        lambda c, t: c.decrypt_token(t),
    ],
    ids=["bind-param", "result-value", "bind", "result", "to", "from", "encrypt", "decrypt"],
)
def test_a_row_bound_type_refuses_its_plain_paths(use: Any) -> None:
    """Every path without a row key (SQL bind and result processing) raises ConfigurationError."""
    column = _row_type()
    token = column.to_stored("ada", row_key=[1])
    with pytest.raises(ConfigurationError, match="bound to their rows"):
        use(column, token)


@pytest.mark.parametrize(
    "use",
    [
        lambda c, t: c.to_stored("ada", row_key=[1]),
        lambda c, t: c.from_stored(t, row_key=[1]),
        lambda c, t: c.encrypt_bytes(b"ada", row_key=[1]),
        lambda c, t: c.decrypt_token(t, row_key=[1]),
    ],
    ids=["to", "from", "encrypt", "decrypt"],
)
def test_a_type_not_bound_to_rows_refuses_a_row_key(use: Any) -> None:
    """A column without row binding given a row key raises ConfigurationError."""
    column = EncryptedText(keyring=RINGS["fernet"], context="fc_row.contacts.email")
    token = column.to_stored("ada")
    with pytest.raises(ConfigurationError, match="does not bind values to rows"):
        use(column, token)


def test_a_row_token_in_a_column_without_row_binding_says_so() -> None:
    """A row token copied into an ordinary column of the same context names row binding."""
    column = EncryptedText(keyring=RINGS["fernet"], context="fc_row.contacts.email")
    token = _row_type().to_stored("ada", row_key=[1])
    with pytest.raises(DecryptionError, match="bound to its row"):
        column.from_stored(token)


def test_context_false_cannot_bind_rows() -> None:
    """EncryptedText(context=False).bound_to_rows() raises ConfigurationError saying why."""
    with pytest.raises(ConfigurationError, match="context=False"):
        EncryptedText(context=False).bound_to_rows()


def test_a_bad_row_key_through_a_type_names_the_column_not_the_value() -> None:
    """A float primary key raises ValueTypeError naming the column and the type only."""
    column = _row_type()
    with pytest.raises(ValueTypeError) as info:
        column.to_stored("ada", row_key=[2.5])
    assert "float" in str(info.value)
    assert "2.5" not in str(info.value)


class _GrowingProvider:
    """A key provider whose second load adds a key."""

    def __init__(self) -> None:
        self.old = Keyring({"old": generate_key()})
        self.grown = Keyring([*self.old, *Keyring({"added": generate_key()})])
        self.loads = 0

    def load(self) -> Keyring:
        self.loads += 1
        return self.old if self.loads == 1 else self.grown


def test_a_row_token_under_a_key_added_elsewhere_reads_after_one_refresh() -> None:
    """An unknown key id is retried with refreshed keys, still bound to the row."""
    provider = _GrowingProvider()
    column = EncryptedText(keyring=provider, context="fc_row.contacts.email").bound_to_rows()
    assert column.from_stored(column.to_stored("old", row_key=[1]), row_key=[1]) == "old"
    token = encrypt(
        provider.grown.with_primary("added"), b"added", context="fc_row.contacts.email", row_key=[1]
    )
    with pytest.raises(DecryptionError) as info:
        column.from_stored(token, row_key=[2])
    assert not isinstance(info.value, UnknownKeyError)
    assert 2 == provider.loads
    assert "added" == column.from_stored(token, row_key=[1])


def test_a_columns_own_allow_unbound_decides_for_its_rows(strict_unbound: None) -> None:
    """allow_unbound=True reads column-bound tokens under the strict setting; False refuses."""
    ring = RINGS["fernet"]
    context = "fc_row.contacts.email"
    column_token = encrypt(ring, PLAINTEXT, context=context)
    lenient = EncryptedText(keyring=ring, context=context, allow_unbound=True).bound_to_rows()
    strict = EncryptedText(keyring=ring, context=context, allow_unbound=False).bound_to_rows()
    assert (True, False) == (lenient.allow_unbound, strict.allow_unbound)
    assert PLAINTEXT.decode() == lenient.from_stored(column_token, row_key=[1])
    with pytest.raises(DecryptionError, match="not bound to its row"):
        strict.from_stored(column_token, row_key=[1])
    row_token = strict.to_stored("own", row_key=[1])
    assert ("own", "own") == (
        strict.from_stored(row_token, row_key=[1]),
        lenient.from_stored(row_token, row_key=[1]),
    )


# -- the ORM ---------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Member(Base):
    """An assigned integer primary key."""

    __tablename__ = "fc_row_members"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted",
        blind_index=BlindIndex("email_bidx", normalizer=normalize_email),
        bind_row=True,
    )
    notes_encrypted: Mapped[str | None] = mapped_column(Text)
    # No blind index; bare Fernet tokens written before the library are declared.
    notes = encrypted_hybrid(
        "notes_encrypted", column_type=EncryptedText(legacy=[BareFernet()]), bind_row=True
    )


class Device(Base):
    """A UUID primary key from a Python-side default."""

    __tablename__ = "fc_row_devices"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted",
        blind_index=BlindIndex("email_bidx", normalizer=normalize_email),
        bind_row=True,
    )
    notes_encrypted: Mapped[str | None] = mapped_column(Text)
    notes = encrypted_hybrid("notes_encrypted", bind_row=True)


class Ticket(Base):
    """A primary key the database generates."""

    __tablename__ = "fc_row_tickets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid("body_encrypted", bind_row=True)


class Account(Base):
    """A composite primary key of a string and an integer."""

    __tablename__ = "fc_row_accounts"
    tenant: Mapped[str] = mapped_column(String(32), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    iban_encrypted: Mapped[str | None] = mapped_column(Text)
    iban = encrypted_hybrid("iban_encrypted", bind_row=True)


def _from_the_statement(context: Any) -> uuid.UUID:
    return uuid.UUID(context.get_current_parameters()["code"])


class Coupon(Base):
    """A primary-key default that reads the statement, which row binding cannot call early."""

    __tablename__ = "fc_row_coupons"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=_from_the_statement)
    code: Mapped[str] = mapped_column(String(36))
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    secret = encrypted_hybrid("secret_encrypted", bind_row=True)


class Order(Base):
    """A parent whose key the database generates."""

    __tablename__ = "fc_row_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lines: Mapped[list[Line]] = relationship(back_populates="order")


class Line(Base):
    """A key that includes a foreign key the flush fills from the relationship."""

    __tablename__ = "fc_row_lines"
    order_id: Mapped[int] = mapped_column(ForeignKey("fc_row_orders.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    note_encrypted: Mapped[str | None] = mapped_column(Text)
    note = encrypted_hybrid("note_encrypted", bind_row=True)
    order: Mapped[Order] = relationship(back_populates="lines")


class Doc(Base):
    """A JSON value (which the hybrid does not cache) beside a text one."""

    __tablename__ = "fc_row_docs"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    data_encrypted: Mapped[str | None] = mapped_column(Text)
    data = encrypted_hybrid("data_encrypted", column_type=EncryptedJSON(), bind_row=True)


class Person(Base):
    """The base of a joined inheritance whose subclass key has another attribute name."""

    __tablename__ = "fc_row_people"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "person",
    }


class Engineer(Person):
    __tablename__ = "fc_row_engineers"
    engineer_id: Mapped[int] = mapped_column(ForeignKey("fc_row_people.id"), primary_key=True)
    badge_encrypted: Mapped[str | None] = mapped_column(Text)
    badge = encrypted_hybrid("badge_encrypted", bind_row=True)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "engineer"}


MODELS = pytest.mark.parametrize("model", [Member, Device], ids=["int-pk", "uuid-pk"])


def _pk(model: Any, n: int) -> Any:
    """The n-th primary-key value of ``model``: n itself, or a UUID built from it."""
    return n if model is Member else uuid.UUID(int=n)


@pytest.fixture
def db(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


def _raw(db: Engine, model: Any, column: str, pk: Any) -> Any:
    table = model.__table__
    with db.connect() as conn:
        return conn.execute(select(table.c[column]).where(table.c.id == pk)).scalar_one()


def _copy(db: Engine, model: Any, columns: list[str], from_pk: Any, to_pk: Any) -> None:
    """As an attacker with write access and no keys: copy stored values between rows."""
    table = model.__table__
    with db.begin() as conn:
        row = conn.execute(
            select(*(table.c[c] for c in columns)).where(table.c.id == from_pk)
        ).one()
        conn.execute(
            update(table).where(table.c.id == to_pk).values(dict(zip(columns, row, strict=True)))
        )


def _plant(db: Engine, model: Any, pk: Any, **values: Any) -> None:
    table = model.__table__
    with db.begin() as conn:
        conn.execute(update(table).where(table.c.id == pk).values(values))


def _context(model: Any, attribute: str) -> str:
    return f"{model.__tablename__}.{attribute}_encrypted"


@MODELS
def test_values_round_trip_and_are_stored_bound_to_their_rows(
    db: Engine, keyring: Keyring, model: Any
) -> None:
    """Values read back, and each stored token is fc1:<primary>:r: bound to column and pk."""
    first, second = _pk(model, 1), _pk(model, 2)
    with Session(db) as session:
        session.add_all(
            [
                model(id=first, email="ada@example.com", notes="first"),
                model(id=second, email="bo@example.com", notes="second"),
            ]
        )
        session.commit()
    with Session(db) as session:
        one, two = session.get(model, first), session.get(model, second)
        assert ("ada@example.com", "first") == (one.email, one.notes)
        assert ("bo@example.com", "second") == (two.email, two.notes)
    for attribute, value in (("email", b"ada@example.com"), ("notes", b"first")):
        stored = _raw(db, model, f"{attribute}_encrypted", first)
        assert stored.startswith(f"fc1:{keyring.primary.id}:r:")
        context = _context(model, attribute)
        assert value == decrypt(keyring, stored, context=context, row_key=[first])
        with pytest.raises(DecryptionError):
            decrypt(keyring, stored, context=context, row_key=[second])


@MODELS
@pytest.mark.parametrize(
    ("attribute", "columns"),
    [
        ("email", ["email_encrypted"]),
        ("email", ["email_encrypted", "email_bidx"]),
        ("notes", ["notes_encrypted"]),
    ],
    ids=["value-only", "value-and-index", "no-index"],
)
def test_a_value_copied_from_another_row_does_not_decrypt(
    db: Engine, model: Any, attribute: str, columns: list[str]
) -> None:
    """Copying a row's ciphertext (and its index) into another row makes that row refuse it."""
    alice, mallory = _pk(model, 1), _pk(model, 2)
    with Session(db) as session:
        session.add_all(
            [
                model(id=alice, **{attribute: "alice@example.com"}),
                model(id=mallory, **{attribute: "mallory@evil.test"}),
            ]
        )
        session.commit()
    _copy(db, model, columns, from_pk=mallory, to_pk=alice)
    with Session(db) as session:
        row = session.get(model, alice)
        with pytest.raises(DecryptionError) as info:
            getattr(row, attribute)
        assert "mallory@evil.test" == getattr(session.get(model, mallory), attribute)
    message = str(info.value)
    assert f"{model.__tablename__}.{attribute}_encrypted" in message
    assert "mallory" not in message
    assert "alice" not in message


def test_a_value_copied_back_into_its_own_row_reads(db: Engine) -> None:
    """Binding is to the row, not to one write: a row's own token restored later still reads."""
    with Session(db) as session:
        session.add(Member(id=1, notes="original"))
        session.commit()
    token = _raw(db, Member, "notes_encrypted", 1)
    with Session(db) as session:
        session.get(Member, 1).notes = "changed"
        session.commit()
    _plant(db, Member, 1, notes_encrypted=token)
    with Session(db) as session:
        assert "original" == session.get(Member, 1).notes


def test_the_blind_index_is_still_checked(db: Engine) -> None:
    """A row's own value under another row's index raises, naming the blind index."""
    with Session(db) as session:
        session.add_all([Member(id=1, email="ada@example.com"), Member(id=2, email="bo@x.test")])
        session.commit()
    _copy(db, Member, ["email_bidx"], from_pk=2, to_pk=1)
    with Session(db) as session, pytest.raises(DecryptionError, match="blind index") as info:
        _ = session.get(Member, 1).email
    assert "ada@" not in str(info.value)


def test_a_composite_key_binds_every_part_in_table_order(db: Engine, keyring: Keyring) -> None:
    """With (tenant, number) as key, a value copied to another tenant's same number fails."""
    with Session(db) as session:
        session.add_all(
            [
                Account(tenant="eu", number=1, iban="DE89 3704 0044 0532 0130 00"),
                Account(tenant="us", number=1, iban="US00 0000"),
            ]
        )
        session.commit()
    table = Account.__table__
    with db.begin() as conn:
        eu = conn.execute(select(table.c.iban_encrypted).where(table.c.tenant == "eu")).scalar_one()
        conn.execute(update(table).where(table.c.tenant == "us").values(iban_encrypted=eu))
    codec = column_codec(table.c.iban_encrypted)
    assert codec is not None
    assert codec.row_bound
    assert "DE89 3704 0044 0532 0130 00" == codec.from_stored(eu, row_key=["eu", 1])
    with pytest.raises(DecryptionError):
        codec.from_stored(eu, row_key=[1, "eu"])
    with Session(db) as session:
        assert "DE89 3704 0044 0532 0130 00" == session.get(Account, ("eu", 1)).iban
        with pytest.raises(DecryptionError):
            _ = session.get(Account, ("us", 1)).iban


def test_a_key_default_is_taken_when_the_value_is_assigned(db: Engine, keyring: Keyring) -> None:
    """Device(email=...) takes its UUID from the key's default at once, and is bound to it."""
    with Session(db) as session:
        device = Device(email="ada@example.com", notes="no key yet")
        assert isinstance(device.id, uuid.UUID)
        assert device.email_encrypted.startswith("fc1:k2:r:")
        assert ("ada@example.com", "no key yet") == (device.email, device.notes)
        session.add(device)
        session.commit()
        pk = device.id
    assert isinstance(pk, uuid.UUID)
    stored = _raw(db, Device, "email_encrypted", pk)
    assert stored.startswith("fc1:k2:r:")
    assert b"ada@example.com" == decrypt(
        keyring, stored, context=_context(Device, "email"), row_key=[pk]
    )
    with Session(db) as session:
        found = session.scalars(select(Device).where(Device.email == "ADA@example.com")).one()
        assert (pk, "ada@example.com", "no key yet") == (found.id, found.email, found.notes)


def test_a_key_assigned_after_the_value_binds_the_value_to_it(db: Engine, keyring: Keyring) -> None:
    """Member(); m.email = ...; m.id = 7: the flush encrypts the value for row 7."""
    with Session(db) as session:
        member = Member()
        member.email = "late@example.com"
        member.id = 7
        session.add(member)
        session.commit()
    stored = _raw(db, Member, "email_encrypted", 7)
    assert b"late@example.com" == decrypt(
        keyring, stored, context=_context(Member, "email"), row_key=[7]
    )
    with Session(db) as session:
        assert [7] == list(
            session.scalars(select(Member.id).where(Member.email == "late@example.com"))
        )


def test_a_waiting_value_cleared_before_flush_stores_null(db: Engine) -> None:
    """A value assigned without a key, then set to None, reads None and is stored as NULL."""
    with Session(db) as session:
        device = Device(email="gone@example.com")
        device.email = None
        assert device.email is None
        session.add(device)
        session.commit()
        pk = device.id
    assert (None, None) == (
        _raw(db, Device, "email_encrypted", pk),
        _raw(db, Device, "email_bidx", pk),
    )


def test_autoflush_binds_a_waiting_value_before_a_lookup(db: Engine) -> None:
    """A lookup by the blind index autoflushes the new row, which is then found and read."""
    with Session(db) as session:
        session.add(Device(email="auto@example.com"))
        found = session.scalars(select(Device).where(Device.email == "AUTO@example.com")).one()
        assert "auto@example.com" == found.email
        assert found.email_encrypted is not None
        assert inspect_token(found.email_encrypted).flag == "r"


def test_a_database_generated_key_is_refused_at_flush_and_nothing_is_written(db: Engine) -> None:
    """Ticket(body=...) with an autoincrement key raises ConfigurationError; no row is written."""
    with Session(db) as session:
        session.add(Ticket(body="secret"))
        with pytest.raises(ConfigurationError, match="no primary key at flush"):
            session.commit()
        session.rollback()
    with db.connect() as conn:
        assert 0 == conn.execute(select(func.count()).select_from(Ticket.__table__)).scalar_one()
    with Session(db) as session:
        session.add_all([Ticket(), Ticket(id=5, body="assigned")])  # no value / a known key
        session.commit()
    with Session(db) as session:
        assert "assigned" == session.get(Ticket, 5).body


def test_a_default_that_reads_the_statement_is_refused(db: Engine) -> None:
    """A key default taking the execution context raises ConfigurationError naming the column."""
    with Session(db) as session:
        with pytest.raises(ConfigurationError, match=r"fc_row_coupons\.id: its default raised"):
            Coupon(code=str(uuid.UUID(int=1)), secret="s3cret")
        session.add(Coupon(id=uuid.UUID(int=2), code="given", secret="s3cret"))  # assigned
        session.commit()
    with Session(db) as session:
        assert "s3cret" == session.get(Coupon, uuid.UUID(int=2)).secret
        assert 1 == session.scalar(select(func.count()).select_from(Coupon))


def test_a_key_filled_from_a_relationship_at_flush_binds_the_value(
    db: Engine, keyring: Keyring
) -> None:
    """A line of a new order (its key generated by the database) is bound to (order_id, number)."""
    with Session(db) as session:
        order = Order()
        Line(order=order, number=1, note="first line")
        Line(order=order, number=2, note="second line")
        session.add(order)
        session.commit()
        order_id = order.id
    codec = column_codec(Line.__table__.c.note_encrypted)
    assert codec is not None
    with db.connect() as conn:
        stored = conn.execute(
            select(Line.__table__.c.note_encrypted).where(Line.__table__.c.number == 1)
        ).scalar_one()
    assert "first line" == codec.from_stored(stored, row_key=[order_id, 1])
    with Session(db) as session:
        assert ["first line", "second line"] == [
            line.note for line in session.scalars(select(Line).order_by(Line.number))
        ]


@MODELS
@pytest.mark.parametrize("read_first", [True, False], ids=["read", "unread"])
def test_changing_the_primary_key_keeps_the_value_readable(
    db: Engine, keyring: Keyring, model: Any, read_first: bool
) -> None:
    """A persistent row given a new key is re-encrypted for it at flush, read or not before."""
    old, new = _pk(model, 1), _pk(model, 99)
    with Session(db) as session:
        session.add(model(id=old, email="ada@example.com", notes="kept"))
        session.commit()
    with Session(db) as session:
        row = session.get(model, old)
        if read_first:
            assert "ada@example.com" == row.email
        row.id = new
        assert "ada@example.com" == row.email  # before the flush too
        session.commit()
    with Session(db) as session:
        row = session.get(model, new)
        assert ("ada@example.com", "kept") == (row.email, row.notes)
        assert [new] == list(
            session.scalars(select(model.id).where(model.email == "ada@example.com"))
        )
    stored = _raw(db, model, "notes_encrypted", new)
    assert b"kept" == decrypt(keyring, stored, context=_context(model, "notes"), row_key=[new])
    with pytest.raises(DecryptionError):
        decrypt(keyring, stored, context=_context(model, "notes"), row_key=[old])


def test_changing_the_key_of_a_new_row_before_its_first_flush(db: Engine) -> None:
    """A value encrypted for id 1 is re-encrypted when the id becomes 2 before INSERT."""
    with Session(db) as session:
        member = Member(id=1, email="ada@example.com")
        member.id = 2
        session.add(member)
        session.commit()
    with Session(db) as session:
        assert "ada@example.com" == session.get(Member, 2).email


@pytest.mark.parametrize("key_first", [True, False], ids=["key-then-value", "value-then-key"])
def test_changing_key_and_value_in_one_flush(db: Engine, key_first: bool) -> None:
    """A new key and a new value in one flush store the new value bound to the new key."""
    with Session(db) as session:
        session.add(Member(id=1, email="old@example.com", notes="old"))
        session.commit()
    with Session(db) as session:
        member = session.get(Member, 1)
        if key_first:
            member.id = 2
            member.email, member.notes = "new@example.com", "new"
        else:
            member.email, member.notes = "new@example.com", "new"
            member.id = 2
        session.commit()
    with Session(db) as session:
        member = session.get(Member, 2)
        assert ("new@example.com", "new") == (member.email, member.notes)
        assert session.get(Member, 1) is None
        assert [2] == list(
            session.scalars(select(Member.id).where(Member.email == "new@example.com"))
        )


def test_assigning_to_an_object_expired_by_commit(db: Engine, keyring: Keyring) -> None:
    """After commit() expired it, assigning to a loaded row encrypts for its key and flushes."""
    with Session(db) as session:
        member = Member(id=1, email="old@example.com")
        session.add(member)
        session.commit()  # expires every attribute, the key included
        member.email = "new@example.com"
        member.notes = "added"
        session.commit()
    with Session(db) as session:
        member = session.get(Member, 1)
        assert ("new@example.com", "added") == (member.email, member.notes)
    stored = _raw(db, Member, "email_encrypted", 1)
    assert b"new@example.com" == decrypt(
        keyring, stored, context=_context(Member, "email"), row_key=[1]
    )


def test_changing_the_key_of_an_object_expired_by_commit(db: Engine) -> None:
    """After commit() expired it, a new key still re-encrypts the row's values."""
    with Session(db) as session:
        member = Member(id=1, email="ada@example.com", notes="kept")
        session.add(member)
        session.commit()
        member.id = 3
        session.commit()
    with Session(db) as session:
        member = session.get(Member, 3)
        assert ("ada@example.com", "kept") == (member.email, member.notes)


@pytest.mark.parametrize(
    "statement",
    [
        lambda: update(Member).values(email="moved@example.com"),
        lambda: update(Member).where(Member.id == 1).values({Member.notes: "moved"}),
        lambda: insert(Member).values(id=2, email="new@example.com"),
    ],
    ids=["update", "update-where", "insert-values"],
)
def test_statements_that_set_the_attribute_are_refused(db: Engine, statement: Any) -> None:
    """ORM UPDATE (or INSERT .values()) of a row-bound attribute raises, changing nothing."""
    with Session(db) as session:
        session.add(Member(id=1, email="ada@example.com", notes="n"))
        session.commit()
        with pytest.raises(ConfigurationError, match="bind_row=True"):
            session.execute(statement())
        session.rollback()
    with Session(db) as session:
        member = session.get(Member, 1)
        assert ("ada@example.com", "n") == (member.email, member.notes)
        assert 1 == session.scalar(select(func.count()).select_from(Member))


def test_a_waiting_value_is_encrypted_when_its_key_is_assigned(
    keyring: Keyring, index_keyring: Keyring
) -> None:
    """Member(email=..., id=7): the key's assignment encrypts the waiting value for row 7."""
    member = Member(email="late@example.com", id=7)
    assert member.email_encrypted is not None
    assert "r" == inspect_token(member.email_encrypted).flag
    assert "late@example.com" == member.email


def test_a_waiting_value_refuses_to_be_pickled(keyring: Keyring, index_keyring: Keyring) -> None:
    """A value with no key yet is its only copy: pickling it raises instead of losing it."""
    member = Member()
    member.email = "waiting@example.com"
    with pytest.raises(ConfigurationError, match="waits for its primary key"):
        pickle.dumps(member)
    member.id = 3
    assert "waiting@example.com" == pickle.loads(pickle.dumps(member)).email


def test_a_key_of_another_type_than_its_column_returns_is_refused(
    keyring: Keyring, index_keyring: Keyring
) -> None:
    """ "7" for an Integer key would bind the value to a key no row reads back: refused."""
    member = Member(id="7")  # type: ignore[arg-type]
    with pytest.raises(ValueTypeError, match="a int; got a str"):
        member.email = "ada@example.com"
    assert member.email_encrypted is None


def test_an_update_statement_may_erase_row_bound_values(db: Engine) -> None:
    """update(Member).values(email=None) needs no row's key: it sets NULL, index included."""
    with Session(db) as session:
        session.add_all([Member(id=1, email="a@example.com"), Member(id=2, email="b@example.com")])
        session.commit()
        session.execute(update(Member).where(Member.id == 1).values(email=None))
        session.commit()
    with Session(db) as session:
        assert (None, "b@example.com") == (
            session.get(Member, 1).email,
            session.get(Member, 2).email,
        )
        assert session.get(Member, 1).email_bidx is None


@pytest.mark.parametrize(
    "query",
    [
        lambda: select(Member.email),
        lambda: select(Member.id, Member.notes),
        lambda: select(Device.email),
    ],
    ids=["email", "id-and-notes", "uuid-model"],
)
def test_selecting_the_attribute_is_refused_when_rows_are_read(db: Engine, query: Any) -> None:
    """select(Model.email) cannot know each row's key: reading its rows raises."""
    with Session(db) as session:
        session.add_all([Member(id=1, email="ada@example.com", notes="n"), Device(email="d@x.io")])
        session.commit()
        with pytest.raises(ConfigurationError, match="bound to their rows"):
            session.execute(query()).all()


@MODELS
def test_lookups_by_the_blind_index(db: Engine, model: Any) -> None:
    """==, in_() and != on the hybrid compare the blind index, as without row binding."""
    with Session(db) as session:
        session.add_all(
            [
                model(id=_pk(model, 1), email="ada@example.com"),
                model(id=_pk(model, 2), email="bo@example.com"),
            ]
        )
        session.commit()

        def found(condition: Any) -> list[Any]:
            return sorted(session.scalars(select(model.id).where(condition)))

        assert [_pk(model, 1)] == found(model.email == " ADA@example.com")
        assert [_pk(model, 2)] == found(model.email != "ada@example.com")
        assert [_pk(model, 1), _pk(model, 2)] == found(
            model.email.in_(["Ada@example.com", "BO@example.com"])
        )
        assert [] == found(model.email == "nobody@example.com")
        assert [] == found(model.email == None)  # noqa: E711
        assert [_pk(model, 1), _pk(model, 2)] == found(model.notes.is_(None))
        rows = session.scalars(select(model).where(model.email == "bo@example.com")).all()
        assert ["bo@example.com"] == [r.email for r in rows]


def test_encrypted_values_bulk_insert_binds_each_row(db: Engine, keyring: Keyring) -> None:
    """encrypted_values() with the key among the values makes rows bound to that key."""
    rows = [
        encrypted_values(Member, email=f"u{i}@example.com", notes=f"n{i}", id=i) for i in (1, 2)
    ]
    assert {"id", "email_encrypted", "email_bidx", "notes_encrypted"} == set(rows[0])
    assert b"u2@example.com" == decrypt(
        keyring, rows[1]["email_encrypted"], context=_context(Member, "email"), row_key=[2]
    )
    devices = [encrypted_values(Device, id=_pk(Device, 5), email="dev@example.com")]
    accounts = [encrypted_values(Account, tenant="eu", number=3, iban="DE00")]
    with Session(db) as session:
        session.execute(insert(Member), rows)
        session.execute(insert(Device), devices)
        session.execute(insert(Account), accounts)
        session.commit()
    with Session(db) as session:
        assert ("u1@example.com", "n1") == (
            session.get(Member, 1).email,
            session.get(Member, 1).notes,
        )
        assert [2] == list(
            session.scalars(select(Member.id).where(Member.email == "U2@example.com"))
        )
        assert "dev@example.com" == session.get(Device, _pk(Device, 5)).email
        assert "DE00" == session.get(Account, ("eu", 3)).iban


@pytest.mark.parametrize(
    ("model", "values", "names"),
    [
        (Member, {"email": "a@b.c"}, "id"),
        (Device, {"notes": "n"}, "id"),  # a column default is not applied here
        (Account, {"tenant": "eu", "iban": "DE00"}, "tenant, number"),
        (Member, {"id": None, "email": "a@b.c"}, "id"),
    ],
    ids=["int-pk", "uuid-pk", "composite-part", "none-pk"],
)
def test_encrypted_values_without_the_key_is_refused(
    keyring: Keyring, index_keyring: Keyring, model: Any, values: dict[str, Any], names: str
) -> None:
    """encrypted_values() of a row-bound attribute without the whole key raises, naming it."""
    with pytest.raises(ConfigurationError, match=f"primary key \\({names}\\)"):
        encrypted_values(model, **values)


BULK_PLAINTEXT_KEYS = pytest.mark.skipif(
    not hasattr(hybrid_property, "bulk_dml"),
    reason="SQLAlchemy 2.0 ignores hybrid keys in ORM bulk statements",
)


@BULK_PLAINTEXT_KEYS
def test_orm_bulk_statements_with_the_key_bind_each_row(db: Engine) -> None:
    """ORM bulk INSERT and UPDATE by primary key know each row's key: they work."""
    with Session(db) as session:
        session.execute(insert(Member), [{"id": 1, "email": "a@example.com", "notes": "a"}])
        session.execute(update(Member), [{"id": 1, "email": "b@example.com"}])
        session.commit()
    with Session(db) as session:
        member = session.get(Member, 1)
        assert ("b@example.com", "a") == (member.email, member.notes)
        assert [1] == list(
            session.scalars(select(Member.id).where(Member.email == "B@example.com"))
        )
        with pytest.raises(ConfigurationError, match=r"primary key \(id\)"):
            session.execute(insert(Member), [{"email": "c@example.com"}])


@MODELS
def test_a_pickled_loaded_object_decrypts_again(db: Engine, model: Any) -> None:
    """A pickled row holds no plaintext; unpickled, it decrypts with its own key."""
    pk = _pk(model, 1)
    with Session(db) as session:
        session.add(model(id=pk, email="secret-ada@example.com", notes="secret-note"))
        session.commit()
        row = session.get(model, pk)
        assert ("secret-ada@example.com", "secret-note") == (row.email, row.notes)
        session.expunge(row)
    pickled = pickle.dumps(row)
    assert b"secret-" not in pickled
    copy = pickle.loads(pickled)
    assert ("secret-ada@example.com", "secret-note") == (copy.email, copy.notes)


def _tokens_not_bound_to_rows(keyring: Keyring) -> dict[str, str]:
    context = _context(Member, "notes")
    return {
        "column-bound": encrypt(keyring, b"planted", context=context),
        "unbound": encrypt(keyring, b"planted"),
        "legacy": Fernet(keyring.primary.export()).encrypt(b"planted").decode(),
    }


@pytest.mark.parametrize("kind", ["column-bound", "unbound", "legacy"])
def test_values_not_bound_to_rows_read_while_unbound_values_are_allowed(
    db: Engine, keyring: Keyring, kind: str
) -> None:
    """A token written before the column bound its rows still reads (the default setting)."""
    with Session(db) as session:
        session.add(Member(id=1, notes="own"))
        session.commit()
    _plant(db, Member, 1, notes_encrypted=_tokens_not_bound_to_rows(keyring)[kind])
    with Session(db) as session:
        assert "planted" == session.get(Member, 1).notes


@pytest.mark.parametrize("kind", ["column-bound", "unbound", "legacy"])
def test_values_not_bound_to_rows_are_refused_under_strict_unbound(
    db: Engine, keyring: Keyring, strict_unbound: None, kind: str
) -> None:
    """FIELDCRYPT_ALLOW_UNBOUND=false: a planted token bound to no row raises, naming the column."""
    with Session(db) as session:
        session.add(Member(id=1, notes="own"))
        session.commit()
    with Session(db) as session:
        assert "own" == session.get(Member, 1).notes  # row-bound values still read
    _plant(db, Member, 1, notes_encrypted=_tokens_not_bound_to_rows(keyring)[kind])
    with Session(db) as session, pytest.raises(DecryptionError) as info:
        _ = session.get(Member, 1).notes
    message = str(info.value)
    assert "not bound to its row" in message
    assert "fc_row_members.notes_encrypted" in message
    assert "planted" not in message


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.text(), pk=st.integers(1, 2**31 - 1), other=st.integers(1, 2**31 - 1))
def test_any_text_round_trips_and_fails_in_any_other_row(
    db: Engine, value: str, pk: int, other: int
) -> None:
    """For any text and keys, the value reads in its row and not when copied into another."""
    assume(pk != other)
    with Session(db) as session:
        session.execute(Member.__table__.delete())
        session.add_all([Member(id=pk, notes=value), Member(id=other)])
        session.commit()
    _copy(db, Member, ["notes_encrypted"], from_pk=pk, to_pk=other)
    with Session(db) as session:
        assert value == session.get(Member, pk).notes
        with pytest.raises(DecryptionError):
            _ = session.get(Member, other).notes


def test_the_ciphertext_column_records_a_row_bound_type(
    keyring: Keyring, index_keyring: Keyring
) -> None:
    """The column's recorded type is row-bound, bound to its column, and reads its rows' tokens."""
    codec = column_codec(Member.__table__.c.email_encrypted)
    assert codec is not None
    assert (True, "fc_row_members.email_encrypted") == (codec.row_bound, codec.context)
    member = Member(id=4, email="ada@example.com")
    assert "ada@example.com" == codec.from_stored(member.email_encrypted, row_key=[4])
    with pytest.raises(ConfigurationError):
        codec.from_stored(member.email_encrypted)


def test_raw_sql_sees_only_ciphertext(db: Engine) -> None:
    """The stored row holds a row token and an index, never the plaintext."""
    with Session(db) as session:
        session.add(Member(id=1, email="ada@example.com"))
        session.commit()
    with db.connect() as conn:
        row = conn.execute(text("SELECT * FROM fc_row_members")).mappings().one()
    assert "ada" not in row["email_encrypted"]
    assert "r" == inspect_token(row["email_encrypted"]).flag
    assert row["email_bidx"].startswith("b1:")


# -- declaration errors ----------------------------------------------------------------------


def _declare(**attributes: Any) -> Any:
    class Local(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {
        "__tablename__": "things",
        "id": mapped_column(Integer, primary_key=True),
        "__annotations__": {},
        **attributes,
    }
    return type("Thing", (Local,), namespace)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        (
            {
                "_email": mapped_column("email_encrypted", EncryptedText()),
                "email": encrypted_hybrid("_email", bind_row=True),
            },
            "bind_row=True needs the hybrid to encrypt",
        ),
        (
            {
                "email_encrypted": mapped_column(Text),
                "email": encrypted_hybrid(
                    "email_encrypted", column_type=EncryptedText(context=False), bind_row=True
                ),
            },
            "context=False",
        ),
        (
            {
                "email_encrypted": mapped_column(Text),
                "email": encrypted_hybrid("email_encrypted", bind_row=True),
                "email_again": encrypted_hybrid("email_encrypted"),
            },
            "must agree on bind_row",
        ),
        (
            {
                "email_encrypted": mapped_column(Text),
                "email": encrypted_hybrid("email_encrypted"),
                "email_again": encrypted_hybrid("email_encrypted", bind_row=True),
            },
            "must agree on bind_row",
        ),
    ],
    ids=["over-encrypted-text", "context-false", "row-then-plain", "plain-then-row"],
)
def test_misdeclarations_fail_when_the_class_is_mapped(
    attributes: dict[str, Any], expected: str
) -> None:
    """bind_row over a typed column, without a context, or disputed on one column raises."""
    with pytest.raises(ConfigurationError, match=expected):
        _declare(**attributes)


def test_two_classes_on_one_table_must_agree_on_bind_row() -> None:
    """A second class mapping the same table without row binding is refused."""

    class Local(DeclarativeBase):
        pass

    class Bound(Local):
        __tablename__ = "fc_row_shared"
        id: Mapped[int] = mapped_column(primary_key=True)
        email_encrypted: Mapped[str | None] = mapped_column(Text)
        email = encrypted_hybrid("email_encrypted", bind_row=True)

    with pytest.raises(ConfigurationError, match="already read with row binding"):

        class Loose(Local):
            __table__ = Bound.__table__
            email = encrypted_hybrid("email_encrypted")


def test_a_row_bound_hybrid_over_a_plain_column_declares_fine(keyring: Keyring) -> None:
    """The misdeclaration checks above are specific: the same model with bind_row alone maps."""
    thing = _declare(
        email_encrypted=mapped_column(Text),
        email=encrypted_hybrid("email_encrypted", column_type=EncryptedText(), bind_row=True),
    )
    row = thing(id=3, email="ada@example.com")
    assert "ada@example.com" == row.email
    assert "r" == inspect_token(row.email_encrypted).flag


# -- changes of the key, and values the hybrid does not cache -------------------------------


@pytest.mark.parametrize("unload", ["load_only", "expire"])
def test_changing_the_key_of_a_row_whose_token_is_not_loaded(db: Engine, unload: str) -> None:
    """A key changed while the token is deferred or expired: the token is loaded and rebound."""
    with Session(db) as session:
        session.add(Member(id=10, notes="kept"))
        session.commit()
    with Session(db) as session:
        if unload == "load_only":
            member = session.scalars(
                select(Member).options(load_only(Member.id)).where(Member.id == 10)
            ).one()
        else:
            member = session.get(Member, 10)
            session.expire(member, ["notes_encrypted"])
        member.id = 11
        session.commit()
    with Session(db) as session:
        assert "kept" == session.get(Member, 11).notes


def test_a_json_value_follows_its_row_key(db: Engine) -> None:
    """Doc(data=..., id=given): the default key taken first, then the given one; both paths."""
    given_id = uuid.UUID(int=5)
    with Session(db) as session:
        session.add(Doc(data={"a": 1}, id=given_id))
        session.commit()
    with Session(db) as session:
        doc = session.get(Doc, given_id)
        assert {"a": 1} == doc.data
        doc.id, doc.data = uuid.UUID(int=6), {"b": 2}
        session.commit()
    with Session(db) as session:
        assert {"b": 2} == session.get(Doc, uuid.UUID(int=6)).data
        doc = session.get(Doc, uuid.UUID(int=6))
        doc.id = uuid.UUID(int=7)  # the key only: the value is decrypted and bound again
        session.commit()
    with Session(db) as session:
        assert {"b": 2} == session.get(Doc, uuid.UUID(int=7)).data


def test_a_copied_object_is_rebound_or_refused(db: Engine) -> None:
    """make_transient() and a new key: a value read before the copy is bound to the new row;
    one never read cannot be, and is refused rather than written undecryptable."""
    with Session(db) as session:
        session.add_all([Member(id=1, notes="one"), Member(id=2, notes="two")])
        session.commit()
    with Session(db) as session:
        read = session.get(Member, 1)
        assert "one" == read.notes
        unread = session.get(Member, 2)
        _ = unread.notes_encrypted  # loaded, not decrypted
        session.expunge_all()
    make_transient(read)
    make_transient(unread)
    read.id = 3
    with pytest.raises(ConfigurationError, match="bound to another row"):
        unread.id = 4
    with Session(db) as session:
        session.add(read)
        session.commit()
    with Session(db) as session:
        assert "one" == session.get(Member, 3).notes


def test_a_subclass_key_of_another_name_binds_its_rows(db: Engine) -> None:
    """Joined inheritance, the subclass key named engineer_id: bound through the base's id."""
    with Session(db) as session:
        session.add(Engineer(id=1, badge="b-1"))
        session.commit()
    with Session(db) as session:
        assert "b-1" == session.get(Engineer, 1).badge
    engineers = Engineer.__table__
    with db.connect() as conn:
        token = conn.execute(
            select(engineers.c.badge_encrypted).where(engineers.c.engineer_id == 1)
        ).scalar_one()
    assert "r" == inspect_token(token).flag


def test_a_char_key_is_refused() -> None:
    """The database pads or trims CHAR keys, so row binding refuses them at mapping time."""

    class Other(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match="fixed-length CHAR key"):

        class Code(Other):
            __tablename__ = "fc_row_codes"
            code: Mapped[str] = mapped_column(CHAR(8), primary_key=True)
            secret_encrypted: Mapped[str | None] = mapped_column(Text)
            secret = encrypted_hybrid("secret_encrypted", bind_row=True)


def test_enum_members_bind_as_the_values_the_database_stores() -> None:
    """An (int, Enum) or (str, Enum) member encodes as its number or string, not its name."""

    class Number(int, enum.Enum):
        SEVEN = 7

    class Word(str, enum.Enum):  # noqa: UP042 (the mixin, whose str() is its name)
        BEE = "bee"

    assert row_key_bytes([7, "bee"]) == row_key_bytes([Number.SEVEN, Word.BEE])

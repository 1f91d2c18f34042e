"""Adversarial inputs to decryption: every mutation of a token fails with our error.

A mutated token must raise DecryptionError (UnknownKeyError for a swapped-in unknown key id):
payloads are canonical base64, so no other spelling of a token's bytes decrypts either. It
must never yield plaintext nor raise a foreign exception.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from sa_fieldcrypt import DecryptionError, EncryptedBytes, EncryptedText, Keyring, generate_key
from sa_fieldcrypt.cipher import decrypt, encrypt
from sa_fieldcrypt.legacy import BareFernet

RINGS = {
    kind: Keyring({"k2": generate_key(kind), "k1": generate_key(kind)})
    for kind in ("fernet", "aes-gcm-siv")
}
RING = RINGS["fernet"]
PLAINTEXT = b"ada.lovelace@example.com"
CASES = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
# Every test below runs for each key kind, with and without a column context.
each_key = pytest.mark.parametrize(
    ("kind", "context"),
    [(k, c) for k in RINGS for c in (None, "core.customers.email")],
    ids=lambda v: str(v),
)


def _refused(token: str, kind: str, context: str | None) -> None:
    with pytest.raises(DecryptionError):
        decrypt(RINGS[kind], token, context=context)


def _decrypts_to_original_or_fails(
    token: str, kind: str, context: str | None, original: bytes = PLAINTEXT
) -> None:
    try:
        result = decrypt(RINGS[kind], token, context=context)
    except DecryptionError:
        return
    assert original == result


def _split(token: str) -> tuple[str, bytes]:
    header, _, payload = token.rpartition(":")
    return header + ":", base64.urlsafe_b64decode(payload)


@each_key
@CASES
@given(plaintext=st.binary(max_size=64), data=st.data())
def test_bit_flips_anywhere_in_the_payload(
    kind: str, context: str | None, plaintext: bytes, data: st.DataObject
) -> None:
    """Flipping any bit of the decoded token is detected."""
    header, raw = _split(encrypt(RINGS[kind], plaintext, context=context))
    position = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(raw)
    flipped[position] ^= 1 << bit
    mutated = header + base64.urlsafe_b64encode(bytes(flipped)).decode()
    with pytest.raises(DecryptionError):
        decrypt(RINGS[kind], mutated, context=context)


@each_key
@CASES
@given(data=st.data())
def test_truncation_and_extension(kind: str, context: str | None, data: st.DataObject) -> None:
    """Cutting a token short or appending anything to it is detected."""
    token = encrypt(RINGS[kind], PLAINTEXT, context=context)
    cut = data.draw(st.integers(0, len(token) - 1))
    _refused(token[:cut], kind, context)
    tail = data.draw(st.text(min_size=1, max_size=40))
    _refused(token + tail, kind, context)


@each_key
@CASES
@given(index=st.integers(0, 200), replacement=st.characters())
def test_single_character_edits(
    kind: str, context: str | None, index: int, replacement: str
) -> None:
    """Replacing any one character (header, key id, flag or payload) is detected."""
    token = encrypt(RINGS[kind], PLAINTEXT, context=context)
    index %= len(token)
    mutated = token[:index] + replacement + token[index + 1 :]
    if mutated == token:
        assert PLAINTEXT == decrypt(RINGS[kind], mutated, context=context)
    else:
        _refused(mutated, kind, context)


# Every kind of token: fc1 under either key kind, unbound and bound, and bare legacy Fernet
# (read by a column that declares them).
TOKEN_KINDS = [
    ("fernet", None),
    ("fernet", "core.customers.email"),
    ("aes-gcm-siv", None),
    ("aes-gcm-siv", "core.customers.email"),
    ("legacy", None),
]


#: A column that reads bare Fernet tokens of RING's keys, as a column holding them declares.
LEGACY_READER = EncryptedBytes(keyring=RING, context=False, legacy=[BareFernet()])


def _token(kind: str, context: str | None, plaintext: bytes) -> tuple[str, str]:
    """A token of ``kind`` and the key kind of the keyring that reads it."""
    if kind == "legacy":
        token = Fernet(RING.get("k1").export()).encrypt(plaintext).decode()
        assert plaintext == LEGACY_READER.decrypt_token(token)  # the unedited token reads
        return token, "legacy"
    return encrypt(RINGS[kind], plaintext, context=context), kind


def _read(ring_kind: str, token: str, context: str | None) -> bytes:
    """``token`` read as its kind is: legacy through a declaring column, others by the cipher."""
    if ring_kind == "legacy":
        return LEGACY_READER.decrypt_token(token)
    return decrypt(RINGS[ring_kind], token, context=context)


@pytest.mark.parametrize(("kind", "context"), TOKEN_KINDS, ids=lambda v: str(v))
@CASES
@given(
    plaintext=st.binary(max_size=48),
    edit=st.sampled_from(["insert", "delete", "substitute"]),
    index=st.integers(min_value=0),
    char=st.characters(),
)
def test_any_single_character_edit_is_refused(
    kind: str, context: str | None, plaintext: bytes, edit: str, index: int, char: str
) -> None:
    """Inserting, deleting or replacing one character anywhere in any token is refused."""
    token, ring_kind = _token(kind, context, plaintext)
    at = index % (len(token) + (edit == "insert"))
    if edit == "insert":
        mutated = token[:at] + char + token[at:]
    elif edit == "delete":
        mutated = token[:at] + token[at + 1 :]
    else:
        mutated = token[:at] + char + token[at + 1 :]
    if mutated == token:
        return
    with pytest.raises(DecryptionError):
        _read(ring_kind, mutated, context)


@pytest.mark.parametrize(("kind", "context"), TOKEN_KINDS, ids=lambda v: str(v))
@CASES
@given(plaintext=st.binary(max_size=48), index=st.integers(min_value=0), data=st.data())
def test_ascii_edits_near_the_alphabet_are_refused(
    kind: str, context: str | None, plaintext: bytes, index: int, data: st.DataObject
) -> None:
    """Edits with the characters lenient decoders skip or confuse (`.*= +/`, white space)."""
    token, ring_kind = _token(kind, context, plaintext)
    char = data.draw(st.sampled_from(list(".*= \n\t+/-_A")))
    at = index % (len(token) + 1)
    for mutated in (token[:at] + char + token[at:], token[:at] + char + token[at + 1 :]):
        if mutated != token:
            with pytest.raises(DecryptionError):
                _read(ring_kind, mutated, context)


@each_key
def test_key_id_swap_is_detected(kind: str, context: str | None) -> None:
    """A token relabelled with another key's id fails authentication under that key."""
    token = encrypt(RINGS[kind], PLAINTEXT, context=context)
    with pytest.raises(DecryptionError) as info:
        decrypt(RINGS[kind], token.replace("fc1:k2:", "fc1:k1:", 1), context=context)
    assert "k1" == info.value.key_id


@pytest.mark.parametrize("kind", list(RINGS))
def test_context_swap_and_flag_edits_are_detected(kind: str) -> None:
    """A bound token fails under another context, and adding or removing its flag fails."""
    ring = RINGS[kind]
    bound = encrypt(ring, PLAINTEXT, context="core.customers.email")
    unbound = encrypt(ring, PLAINTEXT)
    with pytest.raises(DecryptionError):
        decrypt(ring, bound, context="core.customers.phone")
    with pytest.raises(DecryptionError):
        decrypt(ring, bound.replace(":c:", ":", 1), context="core.customers.email")
    with pytest.raises(DecryptionError):
        decrypt(ring, unbound.replace("fc1:k2:", "fc1:k2:c:", 1), context="core.customers.email")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "fc1:",
        "fc1:k2:",
        "fc1:k2:" + "A" * 100,
        "fc1:k2:" + "!" * 100,
        "fc1:k2:gAAAAA" + "=" * 10,
        "fc1:" + "k" * 40 + ":gAAAAA",
        "gAAAAA",
        "fc1:k2:" + "gAAAAA" * 200_000,
        "\x00" * 64,
    ],
    ids=[
        "empty",
        "header",
        "no-payload",
        "junk",
        "bad-base64",
        "padding",
        "long-id",
        "legacy-stub",
        "very-long",
        "nul",
    ],
)
def test_malformed_tokens(value: str) -> None:
    """Empty, garbage, oversized and malformed values raise DecryptionError."""
    with pytest.raises(DecryptionError):
        decrypt(RING, value)


@CASES
@given(st.text())
def test_arbitrary_strings_never_raise_foreign_errors(value: str) -> None:
    """Whatever string is stored, decryption raises DecryptionError or nothing at all, in a
    column declaring bare Fernet tokens too."""
    for kind in RINGS:
        _decrypts_to_original_or_fails(value, kind, None, original=b"")
    with pytest.raises(DecryptionError):
        LEGACY_READER.decrypt_token(value)


@pytest.mark.parametrize("prefix", ["", "fc1:k2:", "fc1:k9:", "gAAAAA"])
@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_column_reports_only_our_error(prefix: str, value: str) -> None:
    """Through a column type, arbitrary stored text raises DecryptionError quoting none of it."""
    # The snowman never occurs in our messages, so finding it would mean the value was quoted.
    stored = prefix + "\u2603" + value
    for legacy in ((), [BareFernet()]):
        column = EncryptedText(keyring=RING, context="fc_tamper.notes", legacy=legacy)
        with pytest.raises(DecryptionError) as info:
            column.process_result_value(stored, sqlite.dialect())
        assert "\u2603" not in str(info.value)

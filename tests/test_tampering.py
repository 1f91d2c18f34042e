"""Adversarial inputs to decryption: every mutation of a token fails with our error.

A mutated token must raise DecryptionError (UnknownKeyError for a swapped-in unknown key id),
or decrypt to exactly the original plaintext (base64 has a few spellings of the same bytes);
it must never yield other plaintext nor raise a foreign exception.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from sa_fieldcrypt import DecryptionError, EncryptedText, Keyring, decrypt, encrypt, generate_key

RING = Keyring({"k2": generate_key(), "k1": generate_key()})
PLAINTEXT = b"ada.lovelace@example.com"
CASES = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def _decrypts_to_original_or_fails(token: str, original: bytes = PLAINTEXT) -> None:
    try:
        result = decrypt(RING, token)
    except DecryptionError:
        return
    assert original == result


def _split(token: str) -> tuple[str, bytes]:
    header, _, payload = token.rpartition(":")
    return header + ":", base64.urlsafe_b64decode(payload)


@CASES
@given(plaintext=st.binary(max_size=64), data=st.data())
def test_bit_flips_anywhere_in_the_payload(plaintext: bytes, data: st.DataObject) -> None:
    """Flipping any bit of the decoded token is detected."""
    header, raw = _split(encrypt(RING, plaintext))
    position = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(raw)
    flipped[position] ^= 1 << bit
    mutated = header + base64.urlsafe_b64encode(bytes(flipped)).decode()
    with pytest.raises(DecryptionError):
        decrypt(RING, mutated)


@CASES
@given(data=st.data())
def test_truncation_and_extension(data: st.DataObject) -> None:
    """Cutting a token short or appending anything to it is detected."""
    token = encrypt(RING, PLAINTEXT)
    cut = data.draw(st.integers(0, len(token) - 1))
    _decrypts_to_original_or_fails(token[:cut])
    tail = data.draw(st.text(min_size=1, max_size=40))
    _decrypts_to_original_or_fails(token + tail)


@CASES
@given(index=st.integers(0, 200), replacement=st.characters())
def test_single_character_edits(index: int, replacement: str) -> None:
    """Replacing any one character (header, key id or payload) is detected."""
    token = encrypt(RING, PLAINTEXT)
    index %= len(token)
    _decrypts_to_original_or_fails(token[:index] + replacement + token[index + 1 :])


def test_key_id_swap_is_detected() -> None:
    """A token relabelled with another key's id fails authentication under that key."""
    token = encrypt(RING, PLAINTEXT)
    with pytest.raises(DecryptionError) as info:
        decrypt(RING, token.replace("fc1:k2:", "fc1:k1:", 1))
    assert "k1" == info.value.key_id


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
    """Whatever string is stored, decryption raises DecryptionError or nothing at all."""
    _decrypts_to_original_or_fails(value, original=b"")


@pytest.mark.parametrize("prefix", ["", "fc1:k2:", "fc1:k9:", "gAAAAA"])
@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_column_reports_only_our_error(prefix: str, value: str) -> None:
    """Through a column type, arbitrary stored text raises DecryptionError quoting none of it."""
    # The snowman never occurs in our messages, so finding it would mean the value was quoted.
    stored = prefix + "\u2603" + value
    column = EncryptedText(keyring=RING)
    with pytest.raises(DecryptionError) as info:
        column.process_result_value(stored, sqlite.dialect())
    assert "\u2603" not in str(info.value)

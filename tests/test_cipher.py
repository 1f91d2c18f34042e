"""The token format: spec conformance, round trips, key-id lookup and legacy tokens."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from sa_fieldcrypt import (
    DecryptionError,
    Keyring,
    TokenInfo,
    UnknownKeyError,
    decrypt,
    encrypt,
    generate_key,
    inspect_token,
)
from sa_fieldcrypt.cipher import _encrypt_from_parts

VECTORS = Path(__file__).parent / "vectors" / "fernet"
# Cases of invalid.json that fail only because of a TTL and a clock; stored data has no TTL.
TIME_ONLY = {"far-future TS (unacceptable clock skew)", "expired TTL"}


def _vectors(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return cases


@pytest.mark.parametrize("case", _vectors("generate.json"), ids=lambda c: c["src"])
def test_spec_generate_vectors(case: dict[str, Any]) -> None:
    """With the spec's key, IV and time, the token's Fernet part is the spec's token."""
    ring = Keyring({"spec": case["secret"]})
    now = int(datetime.fromisoformat(case["now"]).timestamp())
    token = _encrypt_from_parts(ring, case["src"].encode(), now, bytes(case["iv"]))
    assert "fc1:spec:" + case["token"] == token


@pytest.mark.parametrize("case", _vectors("verify.json"), ids=lambda c: c["src"])
def test_spec_verify_vectors(case: dict[str, Any]) -> None:
    """Spec tokens decrypt to their source, as legacy tokens and under an fc1 header."""
    ring = Keyring({"spec": case["secret"]})
    assert case["src"].encode() == decrypt(ring, case["token"])
    assert case["src"].encode() == decrypt(ring, "fc1:spec:" + case["token"])


@pytest.mark.parametrize("case", _vectors("invalid.json"), ids=lambda c: c["desc"])
def test_spec_invalid_vectors(case: dict[str, Any]) -> None:
    """Invalid spec tokens raise DecryptionError; time-only cases decrypt, as there is no TTL."""
    ring = Keyring({"spec": case["secret"]})
    for token in (case["token"], "fc1:spec:" + case["token"]):
        if case["desc"] in TIME_ONLY:
            assert isinstance(decrypt(ring, token), bytes)
        else:
            with pytest.raises(DecryptionError):
                decrypt(ring, token)


@given(st.binary())
def test_round_trip_any_bytes(data: bytes) -> None:
    """decrypt(encrypt(x)) == x for any bytes."""
    ring = Keyring({"k1": generate_key()})
    assert data == decrypt(ring, encrypt(ring, data))


def test_token_names_the_primary_key_and_is_plain_fernet() -> None:
    """A token is fc1:<primary id>:<Fernet token> that plain Fernet decrypts."""
    ring = Keyring({"k2": generate_key(), "k1": generate_key()})
    token = encrypt(ring, b"ada@example.com")
    header, key_id, fernet_token = token.split(":", 2)
    assert ("fc1", "k2") == (header, key_id)
    assert b"ada@example.com" == Fernet(ring.get("k2").export()).decrypt(fernet_token)


def test_plain_fernet_tokens_are_read_as_legacy() -> None:
    """A bare Fernet token from plain cryptography decrypts with whichever key wrote it."""
    old = generate_key()
    ring = Keyring({"new": generate_key(), "legacy": old})
    bare = Fernet(old).encrypt(b"written before the library").decode()
    assert b"written before the library" == decrypt(ring, bare)
    assert TokenInfo("legacy") == inspect_token(bare)


def test_each_token_decrypts_with_its_own_key_among_many() -> None:
    """With 20 keys, a token under any of them decrypts: the id selects the key."""
    secrets = {f"k{i}": generate_key() for i in range(20)}
    tokens = {kid: encrypt(Keyring({kid: s}), kid.encode()) for kid, s in secrets.items()}
    ring = Keyring(secrets)
    for kid, token in tokens.items():
        assert kid.encode() == decrypt(ring, token)


def test_token_under_a_key_with_the_same_id_but_other_secret_fails() -> None:
    """A token is not accepted by a different key that happens to share its id."""
    token = encrypt(Keyring({"k1": generate_key()}), b"secret")
    with pytest.raises(DecryptionError) as info:
        decrypt(Keyring({"k1": generate_key()}), token)
    assert "k1" == info.value.key_id


def test_unknown_key_id() -> None:
    """A token naming an absent key id raises UnknownKeyError with that id."""
    token = encrypt(Keyring({"gone": generate_key()}), b"x")
    with pytest.raises(UnknownKeyError, match="'gone'"):
        decrypt(Keyring({"k1": generate_key()}), token)


@pytest.mark.parametrize(
    "value",
    ["", "ada@example.com", "fc1:", "fc1::gAAAAA", "fc1:k1", "gAAAAAgarbage", "fc1:k1:ünïcode"],
)
def test_non_tokens_raise_decryption_error(value: str) -> None:
    """Plaintext and malformed tokens raise DecryptionError, never another exception."""
    ring = Keyring({"k1": generate_key()})
    with pytest.raises(DecryptionError) as info:
        decrypt(ring, value)
    if len(value) > 4:
        assert value not in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("fc1:k9:gAAAAAB", TokenInfo("fc1", "k9")),
        ("gAAAAABxyz", TokenInfo("legacy")),
        ("ada@example.com", TokenInfo("plaintext")),
        ("fc1::x", TokenInfo("plaintext")),
    ],
)
def test_inspect_token(value: str, expected: TokenInfo) -> None:
    """inspect_token classifies values by header without decrypting."""
    assert expected == inspect_token(value)

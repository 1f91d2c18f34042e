"""The token format: spec vectors, round trips, key lookup, key kinds and context binding."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from sa_fieldcrypt import (
    ConfigurationError,
    DecryptionError,
    Keyring,
    UnknownKeyError,
    generate_key,
    metrics,
)
from sa_fieldcrypt.cipher import (
    TokenInfo,
    _encrypt_aead_from_parts,
    _encrypt_from_parts,
    decrypt,
    encrypt,
    inspect_token,
    legacy_key,
)

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


# -- aes-gcm-siv keys ------------------------------------------------------------------------

AEAD_VECTORS = Path(__file__).parent / "vectors" / "aes-gcm-siv" / "rfc8452-c2.json"
CONTEXTS = st.text(min_size=1).filter(
    lambda s: s.encode("utf-8", "ignore") == s.encode("utf-8", "surrogatepass")
)
kinds = st.sampled_from(["fernet", "aes-gcm-siv"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


class AesGcmSivRefusingEmptyMessages:
    """``AESGCMSIV`` as cryptography behaves over OpenSSL 3.2 to 3.4: no empty messages."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCMSIV(key)

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if not data:
            raise ValueError("data must not be zero length")
        return self._aead.encrypt(nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if len(data) == 16:
            raise InvalidTag
        return self._aead.decrypt(nonce, data, associated_data)


@pytest.mark.parametrize(
    "case", json.loads(AEAD_VECTORS.read_text()), ids=lambda c: f"{c['plaintext']}/{c['aad']}"
)
def test_rfc8452_vectors(case: dict[str, str]) -> None:
    """With the RFC's key and nonce, the payload is base64(nonce || RFC result), AAD = context."""
    ring = Keyring({"spec": "aes-gcm-siv:" + _b64(bytes.fromhex(case["key"]))})
    nonce, plaintext = bytes.fromhex(case["nonce"]), bytes.fromhex(case["plaintext"])
    context = bytes.fromhex(case["aad"]).decode() or None
    token = _encrypt_aead_from_parts(ring, plaintext, nonce, context=context)
    header = "fc1:spec:c:" if context else "fc1:spec:"
    assert header + _b64(nonce + bytes.fromhex(case["result"])) == token
    assert plaintext == decrypt(ring, token, context=context)


@pytest.mark.parametrize("context", [None, "core.customers.email"])
def test_empty_value_round_trips_under_aes_gcm_siv(context: str | None) -> None:
    """An empty value under an aes-gcm-siv key is the nonce and the tag alone, and decrypts."""
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv")})
    token = encrypt(ring, b"", context=context)
    assert 12 + 16 == len(base64.urlsafe_b64decode(token.rpartition(":")[2]))
    assert b"" == decrypt(ring, token, context=context)


def test_an_openssl_that_refuses_empty_values_gets_our_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under an OpenSSL older than 3.5, encrypting "" raises ConfigurationError saying why."""
    monkeypatch.setattr("sa_fieldcrypt.keys.AESGCMSIV", AesGcmSivRefusingEmptyMessages)
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv")})
    with pytest.raises(ConfigurationError, match=r"OpenSSL older than 3\.5.*45\.0\.1"):
        encrypt(ring, b"", context="core.customers.email")
    assert b"x" == decrypt(ring, encrypt(ring, b"x"))


@given(data=st.binary(), context=st.none() | CONTEXTS)
def test_aead_round_trip_any_bytes(data: bytes, context: str | None) -> None:
    """decrypt(encrypt(x)) == x under an aes-gcm-siv key, bound to a context or not."""
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv")})
    token = encrypt(ring, data, context=context)
    assert data == decrypt(ring, token, context=context)


@given(data=st.binary(), context=CONTEXTS, kind=kinds)
def test_bound_round_trip_any_context(data: bytes, context: str, kind: str) -> None:
    """A token bound to any context decrypts with that context, for either key kind."""
    ring = Keyring({"k1": generate_key(kind=kind)})  # type: ignore[arg-type]
    token = encrypt(ring, data, context=context)
    assert TokenInfo("fc1", "k1", bound=True) == inspect_token(token)
    assert data == decrypt(ring, token, context=context)


def test_aead_payload_layout_reads_without_the_library() -> None:
    """The payload is url-safe base64 of nonce(12) || ciphertext || tag(16), AD = context."""
    secret = generate_key(kind="aes-gcm-siv")
    ring = Keyring({"k3": secret})
    aead = AESGCMSIV(base64.urlsafe_b64decode(secret.partition(":")[2]))
    for context in (None, "core.customers.email"):
        token = encrypt(ring, b"ada@example.com", context=context)
        raw = base64.urlsafe_b64decode(token.rpartition(":")[2])
        assert 12 + len(b"ada@example.com") + 16 == len(raw)
        associated = context.encode() if context else None
        assert b"ada@example.com" == aead.decrypt(raw[:12], raw[12:], associated)


def test_bound_fernet_token_uses_the_documented_hkdf_key() -> None:
    """A bound Fernet token is a Fernet token under HKDF-SHA256(key, info=prefix + context)."""
    secret = generate_key()
    token = encrypt(Keyring({"k1": secret}), b"ada@example.com", context="core.customers.email")
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"sa-fieldcrypt/fc1/fernet-context:core.customers.email",
    ).derive(base64.urlsafe_b64decode(secret))
    assert token.startswith("fc1:k1:c:gAAAAA")
    payload = token.rpartition(":")[2]
    assert b"ada@example.com" == Fernet(base64.urlsafe_b64encode(derived)).decrypt(payload)
    with pytest.raises(InvalidToken):
        Fernet(secret).decrypt(payload)


@given(data=st.binary(max_size=64), position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_tampered_aead_tokens_raise_decryption_error(data: bytes, position: int, bit: int) -> None:
    """Flipping any bit of an AEAD payload makes decryption fail with DecryptionError."""
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv")})
    token = encrypt(ring, data)
    raw = bytearray(base64.urlsafe_b64decode(token[len("fc1:k3:") :]))
    raw[position % len(raw)] ^= 1 << bit
    with pytest.raises(DecryptionError) as info:
        decrypt(ring, "fc1:k3:" + _b64(bytes(raw)))
    assert "k3" == info.value.key_id


@given(data=st.binary(max_size=64), cut=st.integers(min_value=0))
def test_truncated_aead_tokens_raise_decryption_error(data: bytes, cut: int) -> None:
    """An AEAD token cut short anywhere in its payload raises DecryptionError."""
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv")})
    token = encrypt(ring, data)
    short = token[: len("fc1:k3:") + cut % (len(token) - len("fc1:k3:"))]
    with pytest.raises(DecryptionError):
        decrypt(ring, short)


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "AAAA",
        base64.urlsafe_b64encode(bytes(27)).decode(),
        base64.urlsafe_b64encode(bytes(40)).decode().rstrip("="),
        base64.b64encode(b"\xfb\xff" * 20).decode(),
        "ünïcode",
        "!!!!" * 10,
        "gAAAAABn" + "A" * 80,
    ],
    ids=[
        "empty",
        "short",
        "27-bytes",
        "no-padding",
        "standard-alphabet",
        "non-ascii",
        "punct",
        "a-fernet-token",
    ],
)
def test_malformed_aead_tokens_raise_decryption_error(payload: str) -> None:
    """Malformed AEAD payloads raise DecryptionError, never a foreign exception."""
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv")})
    for token in (f"fc1:k3:{payload}", f"fc1:k3:c:{payload}"):
        with pytest.raises(DecryptionError) as info:
            decrypt(ring, token, context="ctx" if ":c:" in token else None)
        if payload:
            assert payload not in str(info.value)


@given(st.data())
def test_mixed_keyring_reads_every_kind(data: st.DataObject) -> None:
    """In a keyring that mixes kinds, a token under any of its keys decrypts: AEAD is a rotation."""
    ring = Keyring(
        {"k3": generate_key(kind="aes-gcm-siv"), "k2": generate_key(), "k1": generate_key()}
    )
    key_id = data.draw(st.sampled_from(ring.ids))
    value = data.draw(st.binary())
    token = encrypt(ring.with_primary(key_id), value)
    assert key_id == inspect_token(token).key_id
    assert value == decrypt(ring, token)


def test_legacy_key_names_the_key_that_opens_a_bare_token_and_counts_no_read() -> None:
    """legacy_key finds the Fernet key that opens a bare token (None if none), uncounted."""
    old = generate_key()
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv"), "k2": generate_key(), "k1": old})
    before = metrics.snapshot()
    found = legacy_key(ring, Fernet(old).encrypt(b"old").decode())
    assert "k1" == (found.id if found is not None else None)
    assert legacy_key(ring, Fernet(generate_key()).encrypt(b"other").decode()) is None
    after = metrics.snapshot()
    assert (before.legacy_reads, before.decrypts) == (after.legacy_reads, after.decrypts)


def test_legacy_tokens_ignore_aead_keys() -> None:
    """A bare Fernet token still decrypts when the primary key is an AEAD key."""
    old = generate_key()
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv"), "legacy": old})
    assert b"old" == decrypt(ring, Fernet(old).encrypt(b"old").decode())


# -- context binding -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fernet", "aes-gcm-siv"])
def test_token_bound_to_one_context_fails_under_another(kind: str) -> None:
    """A token copied to another context does not decrypt, with the uniform failure message."""
    ring = Keyring({"k1": generate_key(kind=kind)})  # type: ignore[arg-type]
    token = encrypt(ring, b"ada@example.com", context="core.customers.email")
    with pytest.raises(DecryptionError) as info:
        decrypt(ring, token, context="core.customers.notes")
    assert "does not decrypt" in str(info.value)
    assert "ada@example.com" not in str(info.value)


@pytest.mark.parametrize("kind", ["fernet", "aes-gcm-siv"])
def test_moving_the_flag_does_not_help(kind: str) -> None:
    """Stripping the bound flag, or adding it to an unbound token, makes decryption fail."""
    ring = Keyring({"k1": generate_key(kind=kind)})  # type: ignore[arg-type]
    bound = encrypt(ring, b"x", context="a.b.c")
    unbound = encrypt(ring, b"x")
    stripped = bound.replace("fc1:k1:c:", "fc1:k1:", 1)
    flagged = unbound.replace("fc1:k1:", "fc1:k1:c:", 1)
    for token, context in ((stripped, None), (stripped, "a.b.c"), (flagged, "a.b.c")):
        with pytest.raises(DecryptionError):
            decrypt(ring, token, context=context)


@pytest.mark.parametrize("kind", ["fernet", "aes-gcm-siv"])
def test_unbound_tokens_read_in_a_bound_context_until_strict(kind: str) -> None:
    """With a context, unbound and legacy tokens decrypt unless allow_unbound=False."""
    secret = generate_key()
    ring = Keyring({"k1": generate_key(kind=kind), "old": secret})  # type: ignore[arg-type]
    unbound = encrypt(ring, b"before binding")
    legacy = Fernet(secret).encrypt(b"legacy").decode()
    assert b"before binding" == decrypt(ring, unbound, context="a.b.c")
    assert b"legacy" == decrypt(ring, legacy, context="a.b.c")
    for token in (unbound, legacy):
        with pytest.raises(DecryptionError, match="allow_unbound=False"):
            decrypt(ring, token, context="a.b.c", allow_unbound=False)


def test_bound_token_read_without_context_says_so() -> None:
    """A bound token read with no context fails with a message that says a context is needed."""
    ring = Keyring({"k1": generate_key()})
    token = encrypt(ring, b"x", context="a.b.c")
    with pytest.raises(DecryptionError, match="bound to a context") as info:
        decrypt(ring, token)
    assert "k1" == info.value.key_id


def test_bound_token_under_unknown_key_names_the_key() -> None:
    """A bound token naming an absent key id raises UnknownKeyError with that id."""
    token = encrypt(Keyring({"gone": generate_key()}), b"x", context="a.b.c")
    with pytest.raises(UnknownKeyError, match="'gone'"):
        decrypt(Keyring({"k1": generate_key()}), token, context="a.b.c")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("fc1:k9:c:AAAA", TokenInfo("fc1", "k9", bound=True)),
        ("fc1:k9:cAAAA", TokenInfo("fc1", "k9")),
        ("fc1:k9:AAAA", TokenInfo("fc1", "k9")),
    ],
)
def test_inspect_token_reports_binding(value: str, expected: TokenInfo) -> None:
    """inspect_token tells bound tokens by their flag field, without decrypting."""
    assert expected == inspect_token(value)

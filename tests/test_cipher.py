"""The token format: spec vectors, round trips, key lookup, key kinds and context binding."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
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
    ValueTypeError,
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
    looks_like_token,
    max_token_size,
    set_max_token_size,
)
from sa_fieldcrypt.keys import canonical_b64decode, is_fernet_token

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
    """Spec tokens decrypt to their source under an fc1 header (bare: tests/test_legacy.py)."""
    ring = Keyring({"spec": case["secret"]})
    assert case["src"].encode() == decrypt(ring, "fc1:spec:" + case["token"])


@pytest.mark.parametrize("case", _vectors("invalid.json"), ids=lambda c: c["desc"])
def test_spec_invalid_vectors(case: dict[str, Any]) -> None:
    """Invalid spec tokens raise DecryptionError; time-only cases decrypt, as there is no TTL."""
    ring = Keyring({"spec": case["secret"]})
    token = "fc1:spec:" + case["token"]
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


def test_bare_fernet_tokens_are_refused_naming_the_declaration() -> None:
    """A bare Fernet token, even of a keyring key, is refused: a column declares BareFernet()
    to read it (tests/test_legacy.py); the message quotes neither plaintext nor ciphertext."""
    old = generate_key()
    ring = Keyring({"new": generate_key(), "legacy": old})
    bare = Fernet(old).encrypt(b"written before the library").decode()
    assert TokenInfo("legacy") == inspect_token(bare)
    before = metrics.snapshot()
    with pytest.raises(DecryptionError) as info:
        decrypt(ring, bare)
    message = str(info.value)
    assert "a bare Fernet token" in message
    assert "declare legacy=[BareFernet()]" in message
    assert "written before" not in message
    assert bare[6:40] not in message
    assert before.legacy_reads == metrics.snapshot().legacy_reads


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
    lambda s: "\x00" not in s and s.encode("utf-8", "ignore") == s.encode("utf-8", "surrogatepass")
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
    assert TokenInfo("fc1", "k1", "c") == inspect_token(token)
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
    """With a context, unbound tokens decrypt unless allow_unbound=False (legacy values, which
    columns declare: tests/test_legacy.py)."""
    ring = Keyring({"k1": generate_key(kind=kind), "old": generate_key()})  # type: ignore[arg-type]
    unbound = encrypt(ring, b"before binding")
    assert b"before binding" == decrypt(ring, unbound, context="a.b.c")
    with pytest.raises(DecryptionError, match="allow_unbound=False"):
        decrypt(ring, unbound, context="a.b.c", allow_unbound=False)


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
        ("fc1:k9:c:AAAA", TokenInfo("fc1", "k9", "c")),
        ("fc1:k9:cAAAA", TokenInfo("fc1", "k9")),
        ("fc1:k9:AAAA", TokenInfo("fc1", "k9")),
    ],
)
def test_inspect_token_reports_binding(value: str, expected: TokenInfo) -> None:
    """inspect_token tells bound tokens by their flag field, without decrypting."""
    assert expected == inspect_token(value)


# -- canonical payloads ----------------------------------------------------------------------

URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# What lenient base64 decoders skip or tolerate: other characters, padding, white space.
STRAYS = [".", "*", " ", "\n", "=", "+", "/", "\t", "\u00e9"]


def _tokens(kind: str, data: bytes = b"ada@example.com") -> tuple[Keyring, dict[str, Any]]:
    """A keyring of ``kind`` and its tokens: unbound and bound (bare Fernet tokens, which only
    a declaring column reads, are respelled in tests/test_legacy.py)."""
    ring = Keyring({"k1": generate_key(kind=kind)})  # type: ignore[arg-type]
    tokens: dict[str, Any] = {
        "unbound": (encrypt(ring, data), None),
        "bound": (encrypt(ring, data, context="a.b.c"), "a.b.c"),
    }
    return ring, tokens


@pytest.mark.parametrize("kind", ["fernet", "aes-gcm-siv"])
@pytest.mark.parametrize("stray", STRAYS, ids=repr)
@given(position=st.integers(min_value=0))
def test_payloads_with_a_stray_character_are_refused(kind: str, stray: str, position: int) -> None:
    """A character that lenient base64 would skip, put anywhere in a payload, is refused."""
    ring, tokens = _tokens(kind)
    for token, context in tokens.values():
        start = token.rfind(":") + 1
        at = start + position % (len(token) - start + 1)
        with pytest.raises(DecryptionError):
            decrypt(ring, token[:at] + stray + token[at:], context=context)


def _with_unused_bits(payload: str) -> str:
    """The payload with its last character's unused low bits set: the same bytes, respelled."""
    pads = len(payload) - len(payload.rstrip("="))
    assert pads, "only a padded payload has unused bits"
    at = len(payload) - pads - 1
    value = URLSAFE.index(payload[at]) | (0b11 if pads == 1 else 0b1111)
    return payload[:at] + URLSAFE[value] + payload[at + 1 :]


@pytest.mark.parametrize("kind", ["fernet", "aes-gcm-siv"])
@given(data=st.binary(max_size=40))
def test_payloads_with_unused_bits_set_are_refused(kind: str, data: bytes) -> None:
    """A payload respelled with non-zero unused bits decodes to the same bytes and is refused."""
    ring, tokens = _tokens(kind, data)
    for token, context in tokens.values():
        head, _, payload = token.rpartition(":")
        if not payload.endswith("="):
            continue
        respelled = _with_unused_bits(payload)
        assert base64.urlsafe_b64decode(respelled) == base64.urlsafe_b64decode(payload)
        with pytest.raises(DecryptionError):
            decrypt(ring, f"{head}:{respelled}" if head else respelled, context=context)


def test_unpadded_and_standard_alphabet_payloads_are_refused() -> None:
    """Padding stripped, or '+' and '/' for '-' and '_': other spellings are refused."""
    for kind in ("fernet", "aes-gcm-siv"):
        ring, tokens = _tokens(kind, bytes(range(200)))
        for token, context in tokens.values():
            head, _, payload = token.rpartition(":")
            prefix = f"{head}:" if head else ""
            raw = base64.urlsafe_b64decode(payload)
            standard = base64.b64encode(raw).decode()
            spellings = [payload.rstrip("=") or payload + "=", payload + "==", standard]
            for other in spellings:
                if other != payload:
                    with pytest.raises(DecryptionError):
                        decrypt(ring, prefix + other, context=context)


# Near-canonical text: an encoding with padding or characters added, removed or changed.
near_base64 = st.one_of(
    st.text(alphabet=URLSAFE + "=+/ .\n", max_size=24),
    st.tuples(
        st.binary(max_size=18).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        st.text(alphabet="=A_ \n", max_size=3),
        st.integers(0, 3),
        st.sampled_from(["", "=", "==", "A", "B", "Q"]),
    ).map(lambda t: (t[0][: len(t[0]) - t[2]] + t[3] if t[2] else t[0]) + t[1]),
)


@given(near_base64)
def test_the_payload_decoder_accepts_exactly_the_canonical_spelling(text: str) -> None:
    """The payload decoder accepts text exactly when re-encoding what it decodes gives it back."""
    try:
        raw = canonical_b64decode(text)
    except ValueError:
        with contextlib.suppress(ValueError):
            assert base64.urlsafe_b64encode(base64.urlsafe_b64decode(text)).decode() != text
        return
    assert text == base64.urlsafe_b64encode(raw).decode()


@given(
    data=st.binary(max_size=100), when=st.integers(0, 2**40), iv=st.binary(min_size=16, max_size=16)
)
def test_every_fernet_token_is_fernet_shaped(data: bytes, when: int, iv: bytes) -> None:
    """Fernet's own tokens, of any plaintext, time and IV, pass the shape check."""
    token = Fernet(generate_key())._encrypt_from_parts(data, when, iv).decode()
    assert is_fernet_token(token)
    assert is_fernet_token(token.encode())


def _fernet_layout(text: str) -> bool:
    """The spec's definition, by lenient decoding and re-encoding: canonical, 0x80, 57 + 16n."""
    try:
        raw = base64.urlsafe_b64decode(text)
    except ValueError:
        return False
    canonical = base64.urlsafe_b64encode(raw).decode() == text
    return canonical and raw[:1] == b"\x80" and len(raw) >= 73 and (len(raw) - 57) % 16 == 0


@given(
    raw=st.binary(min_size=60, max_size=130),
    first=st.sampled_from([b"\x80", b"\x81", b"\x00", b""]),
    edit=st.none() | st.tuples(st.integers(min_value=0), st.sampled_from(list("A=_-. \n"))),
)
def test_the_fernet_shape_check_is_the_spec_layout(
    raw: bytes, first: bytes, edit: tuple[int, str] | None
) -> None:
    """is_fernet_token agrees with decoding, re-encoding and measuring, on near-tokens too."""
    text = base64.urlsafe_b64encode(first + raw).decode()
    if edit is not None:
        at = edit[0] % len(text)
        text = text[:at] + edit[1] + text[at + 1 :]
    assert _fernet_layout(text) == is_fernet_token(text)


@pytest.mark.parametrize(
    ("value", "shaped"),
    [
        (base64.urlsafe_b64encode(b"\x80" + bytes(72)).decode(), True),  # 73 bytes: the least
        (base64.urlsafe_b64encode(b"\x80" + bytes(88)).decode(), True),  # 89 = 57 + 2 x 16
        ("gAAAAA" + "A" * 94, False),  # 100 characters unpadded: 75 bytes, not 57 + 16n
        (base64.urlsafe_b64encode(b"\x80" + bytes(56)).decode(), False),  # no ciphertext
        (base64.urlsafe_b64encode(b"\x80" + bytes(80)).decode(), False),  # not whole blocks
        (base64.urlsafe_b64encode(b"\x81" + bytes(72)).decode(), False),  # another version
        ("gAAAAA" + "A" * 91 + "B==", False),  # unused bits set
        ("gAAAAA" + "A" * 91 + "A= ", False),  # white space
    ],
    ids=[
        "least",
        "two-blocks",
        "length",
        "no-ciphertext",
        "partial-block",
        "version",
        "unused-bits",
        "space",
    ],
)
def test_fernet_shape(value: str, shaped: bool) -> None:
    """The shape check follows the spec: version 0x80 and 57 + 16n bytes, n >= 1, canonical."""
    assert shaped == is_fernet_token(value)


# -- looks like a token ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "FC1:k1:gAAAAABpayload",
        "Fc1:k1:c:payload",
        " fc1:k1:gAAAAABpayload",
        "\tfc1:k1:payload\n",
        "fc1::payload",
        "fc1:",
        "\u3000FC1:x",
        "gAAAAAB" + "x" * 10,
        "  GAAAAAB" + "x" * 10,
        "gAAAAAC" + "A" * 93 + "A==",
    ],
)
def test_values_that_resemble_tokens(value: str) -> None:
    """fc1 headers in any case or behind white space, and Fernet-like values, look like tokens."""
    assert looks_like_token(value)


@pytest.mark.parametrize(
    "value", ["", "ada@example.com", "+1 555 0100", "fc1", "fc2:k1:x", "gAAAA", '{"a": 1}']
)
def test_values_that_do_not_resemble_tokens(value: str) -> None:
    """Ordinary plaintext does not look like a token."""
    assert not looks_like_token(value)


@given(
    kind=st.sampled_from(["fernet", "aes-gcm-siv", "legacy"]),
    before=st.text(" \t\n\r\u00a0\u3000"),
    after=st.text(" \t\n\r\u00a0\u3000"),
    swap=st.booleans(),
)
def test_tokens_look_like_tokens_whatever_their_case_and_spacing(
    kind: str, before: str, after: str, swap: bool
) -> None:
    """Any token, re-cased or padded with white space, still looks like a token."""
    ring, tokens = _tokens("fernet" if kind == "legacy" else kind)
    token = tokens["unbound"][0]
    if kind == "legacy":
        token = Fernet(ring.primary.export()).encrypt(b"ada@example.com").decode()
    shown = before + (token.swapcase() if swap else token) + after
    assert looks_like_token(shown)
    if shown != token:
        with pytest.raises(DecryptionError):
            decrypt(ring, shown)


def test_a_token_like_value_that_is_not_a_token_says_so() -> None:
    """A re-cased or padded token fails with a message that says it looks like one."""
    ring, tokens = _tokens("fernet")
    token = tokens["unbound"][0]
    for value in (token.upper(), " " + token):
        with pytest.raises(DecryptionError, match="looks like an encrypted token") as info:
            decrypt(ring, value)
        assert token.rpartition(":")[2] not in str(info.value)


# -- size limit ------------------------------------------------------------------------------


@pytest.fixture
def small_limit() -> Iterator[int]:
    """A limit of 2048 characters for the test, and the setting's again afterwards."""
    set_max_token_size(2048)
    yield 2048
    set_max_token_size(None)


def test_stored_values_over_the_limit_are_refused_before_decrypting(small_limit: int) -> None:
    """A stored value longer than the limit raises DecryptionError naming the limit only."""
    ring = Keyring({"k1": generate_key()})
    fits = encrypt(ring, b"x" * 1400)
    assert small_limit >= len(fits)
    assert b"x" * 1400 == decrypt(ring, fits)
    long_legacy = Fernet(ring.primary.export()).encrypt(b"y" * 1600).decode()
    for value in (encrypt(ring, b"x" * 1400, context="a.b.c") + "A" * 1000, long_legacy):
        assert small_limit < len(value)
        with pytest.raises(DecryptionError, match="over the limit of 2,048") as info:
            decrypt(ring, value, context="a.b.c")
        assert "FIELDCRYPT_MAX_TOKEN_SIZE" in str(info.value)
        assert value[-40:] not in str(info.value)


@pytest.mark.parametrize("kind", ["fernet", "aes-gcm-siv"])
def test_values_whose_token_would_exceed_the_limit_are_refused(kind: str, small_limit: int) -> None:
    """encrypt() refuses a value whose token reads would refuse, before or after encrypting."""
    ring = Keyring({"k1": generate_key(kind=kind)})  # type: ignore[arg-type]
    for size in (small_limit, 1600):
        with pytest.raises(ValueTypeError, match="too large to store") as info:
            encrypt(ring, b"z" * size)
        assert f"{size:,} bytes" in str(info.value)


def test_the_limit_comes_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """FIELDCRYPT_MAX_TOKEN_SIZE sets the limit, read at first use; 16 MiB by default."""
    monkeypatch.delenv("FIELDCRYPT_MAX_TOKEN_SIZE", raising=False)
    set_max_token_size(None)
    assert 16 * 1024 * 1024 == max_token_size()
    monkeypatch.setenv("FIELDCRYPT_MAX_TOKEN_SIZE", "4096")
    set_max_token_size(None)
    try:
        assert 4096 == max_token_size()
    finally:
        monkeypatch.delenv("FIELDCRYPT_MAX_TOKEN_SIZE")
        set_max_token_size(None)


@pytest.mark.parametrize("size", [0, 1023, -1, 2.5, "4096", True])
def test_the_limit_must_be_a_sensible_int(size: object) -> None:
    """A limit below 1024 characters, or not an int, is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="at least 1024"):
        set_max_token_size(size)  # type: ignore[arg-type]

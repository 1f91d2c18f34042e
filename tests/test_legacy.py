"""Legacy formats a column declares: bare Fernet tokens, read with the column's keys or its own.

The cipher reads ``fc1`` tokens only; a bare Fernet token (``gAAAAA...``, as hand-written
``encrypt_field()`` helpers store them) is read by a column that declares
``legacy=[BareFernet()]``, and refused by every other one.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Column, MetaData, Table

from sa_fieldcrypt import (
    ConfigurationError,
    DecryptionError,
    EncryptedBytes,
    EncryptedJSON,
    EncryptedText,
    Keyring,
    generate_key,
    metrics,
)
from sa_fieldcrypt.cipher import decrypt, encrypt, set_max_token_size
from sa_fieldcrypt.keys import Key
from sa_fieldcrypt.legacy import BareFernet, check_formats
from sa_fieldcrypt.types import PlaintextValueWarning

VECTORS = Path(__file__).parent / "vectors" / "fernet"
# Cases of invalid.json that fail only because of a TTL and a clock; stored data has no TTL.
TIME_ONLY = {"far-future TS (unacceptable clock skew)", "expired TTL"}
CONTEXT = "core.customers.email"
PLAINTEXT = b"written before the library"


def _vectors(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return cases


def _column(keyring: Keyring, **options: Any) -> EncryptedBytes:
    """A column of ``keyring``'s keys that declares bare Fernet tokens (unbound by default)."""
    options.setdefault("context", False)
    return EncryptedBytes(keyring=keyring, legacy=[BareFernet()], **options)


def _attached(column: Any, name: str = "notes") -> Any:
    """``column`` as the type of ``fc_legacy.<name>``, which its messages name."""
    Table("fc_legacy", MetaData(), Column(name, column))
    return column


def _bare(secret: str, data: bytes = PLAINTEXT) -> str:
    return Fernet(secret).encrypt(data).decode()


def _legacy_delta(before: metrics.FieldCryptMetrics) -> dict[str, int]:
    after = metrics.snapshot().legacy_reads
    changed = {name: n - before.legacy_reads.get(name, 0) for name, n in after.items()}
    return {name: n for name, n in changed.items() if n}


# -- the cipher reads fc1 tokens only --------------------------------------------------------


def test_the_cipher_refuses_a_bare_fernet_token_naming_the_declaration() -> None:
    """cipher.decrypt refuses a bare Fernet token, saying to declare BareFernet, quoting none."""
    secret = generate_key()
    token = _bare(secret)
    with pytest.raises(DecryptionError) as info:
        decrypt(Keyring({"k1": secret}), token)
    message = str(info.value)
    assert "bare Fernet token" in message
    assert "declare legacy=[BareFernet()]" in message
    assert PLAINTEXT.decode() not in message
    assert token[6:40] not in message


def test_a_column_that_declares_no_legacy_format_refuses_bare_fernet_tokens() -> None:
    """A column without legacy= refuses a bare token even of its own key, naming itself."""
    ring = Keyring({"k1": generate_key()})
    column = _attached(EncryptedText(keyring=ring))
    with pytest.raises(DecryptionError, match="declare legacy=") as info:
        column.decrypt_token(_bare(ring.primary.export()))
    assert "fc_legacy.notes" in str(info.value)
    assert PLAINTEXT.decode() not in str(info.value)


# -- reading bare Fernet tokens with the column's keys ---------------------------------------


@pytest.mark.parametrize("case", _vectors("verify.json"), ids=lambda c: c["src"])
def test_spec_verify_vectors_read_as_bare_tokens(case: dict[str, Any]) -> None:
    """The Fernet specification's tokens, bare, read to their source in a declaring column."""
    column = _column(Keyring({"spec": case["secret"]}))
    assert case["src"].encode() == column.decrypt_token(case["token"])


@pytest.mark.parametrize("case", _vectors("invalid.json"), ids=lambda c: c["desc"])
def test_spec_invalid_vectors_are_refused_as_bare_tokens(case: dict[str, Any]) -> None:
    """Invalid spec tokens, bare, raise DecryptionError; time-only cases read (there is no TTL)."""
    column = _column(Keyring({"spec": case["secret"]}))
    if case["desc"] in TIME_ONLY:
        assert isinstance(column.decrypt_token(case["token"]), bytes)
    else:
        with pytest.raises(DecryptionError):
            column.decrypt_token(case["token"])


def test_bare_tokens_read_with_whichever_key_wrote_them_the_primary_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bare token opens with the key that signed it; the primary is tried first, then the rest."""
    secrets = {f"k{i}": generate_key() for i in range(4)}
    ring = Keyring(secrets).with_primary("k2")
    column = _column(ring)
    codecs = {id(key.codec): key.id for key in ring}
    tried: list[str] = []
    original = type(ring.primary.codec).signed

    def signed(self: Any, raw: bytes) -> bool:
        tried.append(codecs[id(self)])
        return bool(original(self, raw))

    monkeypatch.setattr(type(ring.primary.codec), "signed", signed)
    assert PLAINTEXT == column.decrypt_token(_bare(secrets["k3"]))
    assert ["k2", "k0", "k1", "k3"] == tried
    tried.clear()
    assert PLAINTEXT == column.decrypt_token(_bare(secrets["k2"]))
    assert ["k2"] == tried


def test_bare_tokens_decode_once_and_decrypt_with_the_signing_key_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Among many Fernet keys, a bare token is decoded once for all the signature checks (not
    once per key tried) and decrypted by its signer alone."""
    secrets = [generate_key() for _ in range(8)]
    ring = Keyring({f"k{i}": s for i, s in enumerate(secrets)})
    column = _column(ring)
    decrypted: list[str] = []

    def spy(key: Key) -> Any:
        def decrypt(token: Any) -> bytes:
            decrypted.append(key.id)
            return original(token)

        original = key.decrypt
        return decrypt

    for key in ring:
        monkeypatch.setattr(key, "decrypt", spy(key))
    decodes: list[str] = []
    real_decode = base64.urlsafe_b64decode

    def counting_decode(text: Any) -> bytes:
        # Ours only: whether Fernet decodes in Python (and so here) depends on its version.
        if sys._getframe(1).f_globals.get("__name__", "").startswith("sa_fieldcrypt."):
            decodes.append(text)
        return real_decode(text)

    monkeypatch.setattr("sa_fieldcrypt.legacy.base64.urlsafe_b64decode", counting_decode)
    counts = set()
    for i, secret in enumerate(secrets):
        token = _bare(secret, b"old value")
        decrypted.clear()
        decodes.clear()
        assert b"old value" == column.decrypt_token(token)
        assert [f"k{i}"] == decrypted
        counts.add(sum(text in (token, token.encode()) for text in decodes))
    # Once for all the keys' signature checks, whichever key signed it, however many were
    # tried before.
    assert {1} == counts


def test_bare_tokens_ignore_aead_keys() -> None:
    """A bare token reads when the primary is an AEAD key; AEAD keys alone open none."""
    old = generate_key()
    token = _bare(old)
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv"), "legacy": old})
    assert PLAINTEXT == _column(ring).decrypt_token(token)
    only_aead = Keyring({"k3": generate_key(kind="aes-gcm-siv")})
    with pytest.raises(DecryptionError, match="shape of a legacy format"):
        _column(only_aead).decrypt_token(token)


def test_legacy_values_not_shaped_as_fernet_are_refused_without_trying_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A value that starts like a Fernet token but is not shaped as one tries no key."""
    ring = Keyring({f"k{i}": generate_key() for i in range(5)})
    column = _column(ring)
    tried: list[bytes] = []
    monkeypatch.setattr(type(ring.primary.codec), "signed", lambda self, raw: tried.append(raw))
    for value in ("gAAAAA" + "A" * 95, "gAAAAA" + "A" * 90 + " AAAA", "gAAAAA" + "*" * 100):
        assert column.legacy_format(value) is None
        with pytest.raises(DecryptionError):
            column.decrypt_token(value)
    assert [] == tried


def test_a_fernet_shaped_value_no_key_opens_says_so_quoting_none_of_it() -> None:
    """A bare token of no key of the keyring raises the one message, naming the column only."""
    column = _attached(
        EncryptedText(keyring=Keyring({"k1": generate_key()}), legacy=[BareFernet()])
    )
    token = _bare(generate_key())
    with pytest.raises(DecryptionError) as info:
        column.process_result_value(token, None)
    message = str(info.value)
    assert message.startswith("fc_legacy.notes")
    assert "has the shape of a legacy format the column declares (fernet)" in message
    assert token[6:40] not in message
    assert PLAINTEXT.decode() not in message


def test_a_column_reading_plaintext_never_returns_a_bare_token_as_data() -> None:
    """With allow_plaintext, a declared-shape value that does not open raises, not returned."""
    ring = Keyring({"k1": generate_key()})
    column = EncryptedText(keyring=ring, context=False, allow_plaintext=True, legacy=[BareFernet()])
    with pytest.warns(PlaintextValueWarning):
        assert "plain" == column.process_result_value("plain", None)
    assert PLAINTEXT.decode() == column.process_result_value(_bare(ring.primary.export()), None)
    with pytest.raises(DecryptionError, match="shape of a legacy format"):
        column.process_result_value(_bare(generate_key()), None)


@pytest.mark.parametrize("strict", ["column", "setting"])
def test_bare_tokens_read_in_a_bound_column_until_it_is_strict(
    strict: str, request: pytest.FixtureRequest
) -> None:
    """In a bound column a bare token (unbound) reads, and is refused once the column is strict."""
    ring = Keyring({"k1": generate_key()})
    token = _bare(ring.primary.export())
    assert PLAINTEXT == _column(ring, context=CONTEXT).decrypt_token(token)
    if strict == "column":
        column = _column(ring, context=CONTEXT, allow_unbound=False)
    else:
        request.getfixturevalue("strict_unbound")  # FIELDCRYPT_ALLOW_UNBOUND=false
        column = _column(ring, context=CONTEXT)
    with pytest.raises(DecryptionError) as info:
        column.decrypt_token(token)
    message = str(info.value)
    assert "the value is in a legacy format (fernet), which is not bound to its column" in message
    assert "allow_unbound=False" in message
    assert PLAINTEXT.decode() not in message


def test_a_strict_column_refuses_a_bare_token_before_trying_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A strict column refuses a bare token of its own key without opening it."""
    ring = Keyring({"k1": generate_key()})
    column = _column(ring, context=CONTEXT, allow_unbound=False)
    tried: list[bytes] = []
    monkeypatch.setattr(type(ring.primary.codec), "signed", lambda self, raw: tried.append(raw))
    with pytest.raises(DecryptionError, match="allow_unbound=False"):
        column.decrypt_token(_bare(ring.primary.export()))
    assert [] == tried


def test_keyring_key_names_the_key_that_opens_a_bare_token_and_counts_no_read() -> None:
    """keyring_key finds the Fernet key that opens a bare token (None if none), uncounted."""
    old = generate_key()
    ring = Keyring({"k3": generate_key(kind="aes-gcm-siv"), "k2": generate_key(), "k1": old})
    column = _column(ring)
    legacy = BareFernet()
    before = metrics.snapshot()
    found = legacy.keyring_key(_bare(old, b"old"), column)
    assert "k1" == (found.id if found is not None else None)
    assert legacy.keyring_key(_bare(generate_key(), b"other"), column) is None
    assert legacy.keyring_key(encrypt(ring, b"fc1"), column) is None  # not shaped: no key
    after = metrics.snapshot()
    assert (before.legacy_reads, before.decrypts) == (after.legacy_reads, after.decrypts)


def test_legacy_reads_are_counted_by_format_name() -> None:
    """Each bare token read counts once under "fernet", and as a decrypt of its key."""
    secret = generate_key()
    ring = Keyring({"legacy-count-new": generate_key(), "legacy-count-old": secret})
    column = _column(ring)
    before = metrics.snapshot()
    for _ in range(3):
        column.decrypt_token(_bare(secret))
    column.decrypt_token(encrypt(ring, b"fc1 tokens are not legacy reads"))
    assert {"fernet": 3} == _legacy_delta(before)
    after = metrics.snapshot().decrypts
    assert 3 == after.get("legacy-count-old", 0) - before.decrypts.get("legacy-count-old", 0)


@given(st.text())
def test_any_text_fernet_encrypted_reads_back_through_a_declaring_column(text: str) -> None:
    """Any text Fernet(key).encrypt wrote reads back through EncryptedText and EncryptedBytes."""
    data = text.encode("utf-8", "surrogatepass")
    token = Fernet(KEYRING.primary.export()).encrypt(data).decode()
    assert text == TEXT_COLUMN.process_result_value(token, None)
    assert data == BYTES_COLUMN.process_result_value(token, None)


KEYRING = Keyring({"k2": generate_key(), "k1": generate_key()})
TEXT_COLUMN = EncryptedText(keyring=KEYRING, context=False, legacy=[BareFernet()])
BYTES_COLUMN = EncryptedBytes(keyring=KEYRING, context=False, legacy=[BareFernet()])


def test_json_columns_read_bare_tokens_of_json_text() -> None:
    """EncryptedJSON takes a bare token's plaintext as JSON text, as it encrypts its values."""
    ring = Keyring({"k1": generate_key()})
    column = EncryptedJSON(keyring=ring, context=False, legacy=[BareFernet()])
    token = _bare(ring.primary.export(), b'{"tags": ["a", 1]}')
    assert {"tags": ["a", 1]} == column.process_result_value(token, None)


# -- the format's own keys ------------------------------------------------------------------


def test_a_keyring_of_its_own_reads_tokens_of_keys_the_column_lacks() -> None:
    """BareFernet(keyring=...) opens tokens of its keys only, and uses none of the column's."""
    helper_key = generate_key()
    ring = Keyring({"k1": generate_key()})
    own = BareFernet(keyring=Keyring({"helper": helper_key}))
    column = EncryptedBytes(keyring=ring, context=False, legacy=[own])
    assert (False, True) == (own.uses_column_keys(), BareFernet().uses_column_keys())
    assert PLAINTEXT == column.decrypt_token(_bare(helper_key))
    with pytest.raises(DecryptionError, match="shape of a legacy format"):
        column.decrypt_token(_bare(ring.primary.export()))  # the column's key is not its
    assert own.keyring_key(_bare(helper_key), column) is None  # its keys are no keyring's
    assert PLAINTEXT.startswith(column.decrypt_token(encrypt(ring, PLAINTEXT)))


def test_repr_shows_no_key() -> None:
    """repr() of a BareFernet with keys of its own, and of its column, shows no key or secret."""
    secret = generate_key()
    legacy = BareFernet(keyring=Keyring({"helper-key-id": secret}))
    column = EncryptedText(keyring=Keyring({"k1": generate_key()}), legacy=[legacy])
    for shown in (repr(legacy), repr(column)):
        assert secret not in shown
        assert secret[:12] not in shown
    assert "BareFernet(keyring=<keys>)" == repr(legacy)
    assert "BareFernet()" == repr(BareFernet())


@pytest.mark.parametrize(
    ("formats", "message"),
    [
        ("BareFernet()", "takes a list of legacy formats"),
        (b"fernet", "takes a list of legacy formats"),
        (BareFernet(), "takes a list of legacy formats"),
        (["fernet"], "legacy entry 1 is a str, not a legacy format"),
        ([BareFernet(), BareFernet], "legacy entry 2 is a type, not a legacy format"),
        ([object()], "legacy entry 1 is a object, not a legacy format"),
    ],
    ids=["text", "bytes", "one", "name", "class", "object"],
)
def test_check_formats_refuses_what_is_not_a_format(formats: Any, message: str) -> None:
    """legacy= takes legacy format instances only: text or another entry is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=message):
        check_formats(formats, "EncryptedText")
    with pytest.raises(ConfigurationError, match=f"EncryptedText: .*{message}"):
        EncryptedText(legacy=formats)


# -- the column's view of a stored value ----------------------------------------------------


def test_the_column_tells_legacy_values_from_tokens_and_plaintext() -> None:
    """legacy_format and is_ciphertext decide from the text alone, as reading does."""
    ring = Keyring({"k1": generate_key()})
    legacy = BareFernet()
    column = EncryptedText(keyring=ring, context=False, legacy=[legacy])
    undeclared = EncryptedText(keyring=ring, context=False)
    bare, token = _bare(ring.primary.export()), encrypt(ring, PLAINTEXT)
    assert (legacy, None, None) == tuple(column.legacy_format(v) for v in (bare, token, "plain"))
    assert (True, True, False) == tuple(column.is_ciphertext(v) for v in (bare, token, "plain"))
    assert PLAINTEXT.decode() == column.process_result_value(bare, None)
    assert undeclared.legacy_format(bare) is None
    assert b"x" == column.to_plaintext("x")


# -- canonical spellings and the size limit --------------------------------------------------

URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
STRAYS = [".", "*", " ", "\n", "=", "+", "/", "\t", "\u00e9"]


@pytest.mark.parametrize("stray", STRAYS, ids=repr)
@given(position=st.integers(min_value=0))
def test_bare_tokens_with_a_stray_character_are_refused(stray: str, position: int) -> None:
    """A character that lenient base64 would skip, put anywhere in a bare token, is refused."""
    token = Fernet(KEYRING.primary.export()).encrypt(b"ada@example.com").decode()
    at = position % (len(token) + 1)
    with pytest.raises(DecryptionError):
        BYTES_COLUMN.decrypt_token(token[:at] + stray + token[at:])


@given(data=st.binary(max_size=40))
def test_bare_tokens_respelled_are_refused(data: bytes) -> None:
    """A bare token with unused bits set, padding stripped or the standard alphabet is refused."""
    token = Fernet(KEYRING.primary.export()).encrypt(data).decode()
    raw = base64.urlsafe_b64decode(token)
    spellings = {token.rstrip("=") or token + "=", token + "==", base64.b64encode(raw).decode()}
    pads = len(token) - len(token.rstrip("="))
    if pads:
        at = len(token) - pads - 1
        value = URLSAFE.index(token[at]) | (0b11 if pads == 1 else 0b1111)
        spellings.add(token[:at] + URLSAFE[value] + token[at + 1 :])
    for other in spellings - {token}:
        with pytest.raises(DecryptionError):
            BYTES_COLUMN.decrypt_token(other)


@pytest.fixture
def small_limit() -> Iterator[int]:
    """A limit of 2048 characters for the test, and the setting's again afterwards."""
    set_max_token_size(2048)
    yield 2048
    set_max_token_size(None)


def test_bare_tokens_over_the_limit_are_refused_before_decoding(small_limit: int) -> None:
    """A bare token longer than FIELDCRYPT_MAX_TOKEN_SIZE is refused, as every stored value is."""
    ring = Keyring({"k1": generate_key()})
    long_legacy = _bare(ring.primary.export(), b"y" * 1600)
    assert small_limit < len(long_legacy)
    with pytest.raises(DecryptionError, match="over the limit of 2,048"):
        _column(ring).decrypt_token(long_legacy)


def test_spec_tokens_keep_their_time_when_read_bare() -> None:
    """A bare token is read whatever its creation time: stored data has no TTL."""
    secret = generate_key()
    old = Fernet(secret)._encrypt_from_parts(
        PLAINTEXT, int(datetime(2001, 1, 1).timestamp()), bytes(16)
    )
    assert PLAINTEXT == _column(Keyring({"k1": secret})).decrypt_token(old.decode())

"""Keys and keyrings: construction, validation, parsing and redaction."""

from __future__ import annotations

import base64
import contextlib
import pickle

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from sa_fieldcrypt import ConfigurationError, Key, Keyring, UnknownKeyError, generate_key

key_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)


def test_generate_key_is_a_fernet_key() -> None:
    """generate_key() returns text that plain Fernet accepts, different each call."""
    key = generate_key()
    Fernet(key)
    assert key != generate_key()


def test_first_key_is_primary_by_default() -> None:
    """Without primary=, the first key given encrypts."""
    ring = Keyring({"new": generate_key(), "old": generate_key()})
    assert "new" == ring.primary.id
    assert ("new", "old") == ring.ids


def test_primary_can_be_named() -> None:
    """primary= picks the encrypting key among the given ones."""
    ring = Keyring({"a": generate_key(), "b": generate_key()}, primary="b")
    assert "b" == ring.primary.id


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda k: Keyring({}), "no keys"),
        (lambda k: Keyring({"k1": k}, primary="k9"), "'k9'"),
        (lambda k: Keyring([Key("k1", k), Key("k1", generate_key())]), "'k1' appears more"),
        (lambda k: Keyring({"bad id": k}), "'bad id'"),
        (lambda k: Keyring({"x" * 33: k}), "is not valid"),
        (lambda k: Keyring({"k1": k[:-4]}), "'k1'"),
        (lambda k: Keyring({"k1": "not base64 at all!"}), "'k1'"),
        (lambda k: Keyring({"k1": base64.urlsafe_b64encode(b"short").decode()}), "'k1'"),
        (lambda k: Keyring({"k1": k + "x"}), "'k1'"),
    ],
    ids=[
        "empty",
        "primary-missing",
        "duplicate",
        "bad-id",
        "long-id",
        "truncated",
        "garbage",
        "wrong-length",
        "trailing-garbage",
    ],
)
def test_bad_keyrings_name_the_problem_not_the_key(build: object, expected: str) -> None:
    """Each malformed keyring raises ConfigurationError naming the id, never the key."""
    key = generate_key()
    with pytest.raises(ConfigurationError, match=expected) as info:
        build(key)  # type: ignore[operator]
    assert key not in str(info.value)
    assert key[:-4] not in str(info.value)


def test_repr_and_str_redact_secrets() -> None:
    """No repr or str of a key or keyring shows the secret."""
    secret = generate_key()
    key = Key("k1", secret)
    ring = Keyring([key])
    for shown in (repr(key), str(key), repr(ring), str(ring), repr([ring, key])):
        assert secret not in shown
        assert secret[:16] not in shown
    assert "redacted" in repr(key)


def test_unknown_key_id_names_the_id() -> None:
    """get() of an absent id raises UnknownKeyError that says which id is missing."""
    ring = Keyring({"k1": generate_key()})
    with pytest.raises(UnknownKeyError, match="'k0'") as info:
        ring.get("k0")
    assert "k0" == info.value.key_id


def test_parse_reads_the_settings_format() -> None:
    """'id:key,id:key' parses in order, tolerating spaces, first entry primary."""
    k1, k2 = generate_key(), generate_key()
    ring = Keyring.parse(f" k2:{k2} , k1:{k1}")
    assert ("k2", "k1") == ring.ids
    assert "k2" == ring.primary.id
    assert k1 == ring.get("k1").export()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("k1", "entry 1 is not of the form"),
        ("k1:AAAA", "entry 1 \\(id 'k1'\\)"),
        (":abc", "entry 1 is not of the form"),
        ("k 1:abc", "entry 1"),
    ],
)
def test_parse_errors_give_the_position(text: str, expected: str) -> None:
    """Malformed key text raises ConfigurationError pointing at the entry."""
    with pytest.raises(ConfigurationError, match=expected):
        Keyring.parse(text, source="FIELDCRYPT_KEYS")


def test_parse_duplicate_and_primary_errors_name_the_setting() -> None:
    """Keyring-level errors from parse() name the setting they came from."""
    k = generate_key()
    with pytest.raises(ConfigurationError, match="FIELDCRYPT_KEYS: key id 'a' appears more"):
        Keyring.parse(f"a:{k},a:{k}", source="FIELDCRYPT_KEYS")
    with pytest.raises(ConfigurationError, match="FIELDCRYPT_KEYS: primary key id 'z'"):
        Keyring.parse(f"a:{k}", primary="z", source="FIELDCRYPT_KEYS")


@given(ids=st.lists(key_ids, min_size=1, max_size=6, unique=True), data=st.data())
def test_export_then_parse_round_trips(ids: list[str], data: st.DataObject) -> None:
    """parse(export()) gives the same ids, secrets and primary, for any valid keyring."""
    primary = data.draw(st.sampled_from(ids))
    ring = Keyring({kid: generate_key() for kid in ids}, primary=primary)
    again = Keyring.parse(ring.export())
    assert ring.primary.id == again.primary.id
    assert sorted(ring.ids) == sorted(again.ids)
    for kid in ids:
        assert ring.get(kid).export() == again.get(kid).export()


@given(st.text())
def test_parse_of_any_text_raises_only_configuration_errors(text: str) -> None:
    """Arbitrary text either parses or raises ConfigurationError, never another error."""
    with contextlib.suppress(ConfigurationError):
        Keyring.parse(text)


def test_without_and_with_primary() -> None:
    """without() drops a decrypt-only key, refuses the primary; with_primary() switches."""
    ring = Keyring({"k2": generate_key(), "k1": generate_key()})
    assert ("k2",) == ring.without("k1").ids
    with pytest.raises(ConfigurationError, match="primary"):
        ring.without("k2")
    assert "k1" == ring.with_primary("k1").primary.id


def test_keys_survive_pickling() -> None:
    """A pickled keyring (sent to a worker process) still decrypts what the original wrote."""
    ring = Keyring({"k1": generate_key()})
    clone = pickle.loads(pickle.dumps(ring))
    token = ring.primary.encrypt(b"x")
    assert b"x" == clone.get("k1").decrypt(token)

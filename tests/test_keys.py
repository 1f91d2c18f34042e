"""Keys and keyrings: construction, validation, parsing and redaction."""

from __future__ import annotations

import base64
import contextlib
import pickle
import re

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from sa_fieldcrypt import (
    ConfigurationError,
    DecryptionError,
    Key,
    Keyring,
    UnknownKeyError,
    generate_key,
    parse_key,
)
from sa_fieldcrypt.cipher import decrypt, encrypt
from sa_fieldcrypt.keys import (
    KEY_KINDS,
    PURPOSE_KINDS,
    PURPOSES,
    KeyKind,
    Unwrap,
    WrappedKey,
    has_wrapped_entries,
    wrapped_associated_data,
)

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
        (lambda k: Keyring({"k1": k}, primary=k), r"primary key id <not a key id \(44 char"),
        (lambda k: Keyring([Key("k1", k), Key("k1", generate_key())]), "'k1' appears more"),
        (lambda k: Keyring({"bad id": k}), r"Keyring: key id <not a key id \(6 characters\)"),
        (lambda k: Keyring({"x" * 33: k}), "is not valid"),
        (lambda k: Keyring.parse(f"{k}:k1"), r"entry 1: key id <not a key id \(44 characters\)"),
        (lambda k: Keyring({"k1": k[:-4]}), "'k1'"),
        (lambda k: Keyring({"k1": "not base64 at all!"}), "'k1'"),
        (lambda k: Keyring({"k1": base64.urlsafe_b64encode(b"short").decode()}), "'k1'"),
        (lambda k: Keyring({"k1": k + "x"}), "'k1'"),
        (lambda k: Keyring({"k1": f"aes-gcm-siv:{k}x"}), "'k1'"),
    ],
    ids=[
        "empty",
        "primary-missing",
        "key-as-primary",
        "duplicate",
        "bad-id",
        "long-id",
        "key-as-id",
        "truncated",
        "garbage",
        "wrong-length",
        "trailing-garbage",
        "aead-trailing-garbage",
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


# -- key kinds -----------------------------------------------------------------------------

kinds = st.sampled_from(["fernet", "aes-gcm-siv"])


def test_generate_aead_key_says_its_kind() -> None:
    """generate_key(kind='aes-gcm-siv') gives 'aes-gcm-siv:<32 random bytes>', new each call."""
    text = generate_key(kind="aes-gcm-siv")
    kind, _, encoded = text.partition(":")
    assert "aes-gcm-siv" == kind
    assert 32 == len(base64.urlsafe_b64decode(encoded))
    assert text != generate_key(kind="aes-gcm-siv")
    assert "aes-gcm-siv" == Key("k3", text).kind


def test_generate_key_refuses_unknown_kinds() -> None:
    """An unknown kind is a ConfigurationError listing the known ones."""
    with pytest.raises(ConfigurationError, match="fernet, aes-gcm-siv"):
        generate_key(kind="rot13")  # type: ignore[arg-type]


def test_key_kind_comes_from_text_or_argument() -> None:
    """A bare key is Fernet unless kind= says otherwise; a prefix names the kind itself."""
    bare = base64.urlsafe_b64encode(bytes(range(32))).decode()
    assert "fernet" == Key("a", bare).kind
    assert "fernet" == Key("a", f"fernet:{bare}").kind
    assert "aes-gcm-siv" == Key("a", bare, kind="aes-gcm-siv").kind
    assert "aes-gcm-siv" == Key("a", f"aes-gcm-siv:{bare}".encode()).kind
    with pytest.raises(ConfigurationError, match="says 'fernet' but kind='aes-gcm-siv'"):
        Key("a", f"fernet:{bare}", kind="aes-gcm-siv")


def test_export_keeps_the_kind_and_fernet_keys_stay_bare() -> None:
    """An AEAD key exports with its kind prefix; a Fernet key exports as plain Fernet text."""
    aead = generate_key(kind="aes-gcm-siv")
    fernet = generate_key()
    assert aead == Key("a", aead).export()
    assert fernet == Key("f", fernet).export()


def test_parse_reads_mixed_kinds() -> None:
    """'id:key', 'id:fernet:key' and 'id:aes-gcm-siv:key' entries mix in one keyring."""
    aead = generate_key(kind="aes-gcm-siv")
    k2, k1 = generate_key(), generate_key()
    ring = Keyring.parse(f"k3:{aead}, k2:{k2} ,k1:fernet:{k1}")
    assert ("k3", "k2", "k1") == ring.ids
    assert ["aes-gcm-siv", "fernet", "fernet"] == [k.kind for k in ring]
    assert "k3" == ring.primary.id
    assert k1 == ring.get("k1").export()


@given(
    entries=st.lists(
        st.tuples(key_ids, kinds), min_size=1, max_size=6, unique_by=lambda e: e[0].lower()
    )
)
def test_export_then_parse_round_trips_mixed_kinds(entries: list[tuple[str, str]]) -> None:
    """parse(export()) keeps every id, kind and secret of a keyring that mixes kinds."""
    ring = Keyring([Key(kid, generate_key(kind=kind)) for kid, kind in entries])  # type: ignore[arg-type]
    again = Keyring.parse(ring.export())
    for kid, kind in entries:
        assert kind == again.get(kid).kind
        assert ring.get(kid).export() == again.get(kid).export()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("k3:aes-gcm-siv:" + base64.urlsafe_b64encode(b"x" * 16).decode(), "aes-gcm-siv key"),
        ("k3:aes-gcm-siv:not base64!", "--kind aes-gcm-siv"),
        ("k3:aes-gcm-siv:", "aes-gcm-siv key"),
        ("k3:chacha:" + base64.urlsafe_b64encode(b"x" * 32).decode(), "kind is not known"),
        (
            "k3:AES-GCM-SIV:" + base64.urlsafe_b64encode(b"x" * 32).decode(),
            "kind is not known",
        ),
        ("k3:fernet:" + base64.urlsafe_b64encode(b"x" * 31).decode(), "not a Fernet key"),
    ],
    ids=["aead-128-bit", "aead-garbage", "aead-empty", "unknown-kind", "kind-case", "fernet-short"],
)
def test_parse_errors_for_kinds_name_the_entry(entry: str, expected: str) -> None:
    """A bad kind or a key of the wrong size names the entry and id, and what to do."""
    with pytest.raises(ConfigurationError, match=expected) as info:
        Keyring.parse(f"k1:{generate_key()},{entry}", source="FIELDCRYPT_KEYS")
    assert "FIELDCRYPT_KEYS: entry 2 (id 'k3')" in str(info.value)


# Key-like text: with a digit, a capital and a small letter it cannot be a word of a message.
secret_text = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", min_size=8
).filter(lambda s: any(c.isdigit() for c in s) and not s.isupper() and not s.islower())


@given(kind=st.one_of(kinds, secret_text), secret=secret_text)
def test_parse_errors_never_show_key_material(kind: str, secret: str) -> None:
    """Whatever sits in the kind and key fields of an entry, an error never quotes it."""
    try:
        Keyring.parse(f"k1:{kind}:{secret}")
    except ConfigurationError as exc:
        message = str(exc)
        assert secret not in message
        assert kind in ("fernet", "aes-gcm-siv") or kind not in message


def test_aead_keys_are_redacted_and_pickle() -> None:
    """An AEAD key's secret is never in its repr, and it survives pickling with its kind."""
    text = generate_key(kind="aes-gcm-siv")
    key = Key("k3", text)
    secret = text.partition(":")[2]
    assert secret[:16] not in repr(key)
    assert secret[:16] not in repr(Keyring([key]))
    assert "kind='aes-gcm-siv'" in repr(key)
    clone = pickle.loads(pickle.dumps(key))
    assert "aes-gcm-siv" == clone.kind
    assert b"x" == clone.decrypt(key.encrypt(b"x"))


@pytest.mark.parametrize("kind", ["fernet", "aes-gcm-siv"])
def test_context_codecs_are_built_once(kind: str) -> None:
    """for_context() returns the same codec for the same context: derivation is not per value."""
    key = Key("k1", generate_key(kind=kind))  # type: ignore[arg-type]
    codec = key.for_context("core.customers.email")
    assert codec is key.for_context("core.customers.email")
    assert codec is not key.for_context("core.customers.phone")
    assert "fc1:k1:c:" == codec.token_prefix


def test_context_cache_stays_bounded() -> None:
    """Many distinct contexts do not grow a key's cache without end, and all still work."""
    key = Key("k1", generate_key())
    codecs = [key.for_context(f"ctx{i}") for i in range(3000)]
    assert len(key._contexts) <= 1024
    token = codecs[0].encrypt(b"x")
    assert b"x" == key.for_context("ctx0").decrypt(token)


@pytest.mark.parametrize("context", ["", 5, "\udc80"])
def test_bad_contexts_are_configuration_errors(context: object) -> None:
    """An empty, non-str or non-UTF-8 context is refused."""
    with pytest.raises(ConfigurationError, match="context"):
        Key("k1", generate_key()).for_context(context)  # type: ignore[arg-type]


# -- blind-index keys --------------------------------------------------------------------


def test_bare_keys_are_blind_index_keys_in_a_blind_index_keyring() -> None:
    """Bare key text (32 bytes, url-safe base64) reads as an hmac-sha256 key there."""
    assert ("b1",) == Keyring.parse(f"b1:{generate_key()}", purpose="blind-index").ids


@given(ids=st.lists(key_ids, min_size=1, max_size=5, unique_by=str.lower))
def test_blind_index_export_then_parse_round_trips(ids: list[str]) -> None:
    """parse(export()) keeps the ids, their order and the secrets, for any valid keyring."""
    ring = Keyring({kid: generate_key("hmac-sha256") for kid in ids}, purpose="blind-index")
    again = Keyring.parse(ring.export(), purpose="blind-index")
    assert ring.ids == again.ids
    assert [k.export() for k in ring] == [k.export() for k in again]


@given(st.text())
def test_blind_index_parse_of_any_text_raises_only_configuration_errors(text: str) -> None:
    """Arbitrary text either parses or raises ConfigurationError, never another error."""
    with contextlib.suppress(ConfigurationError):
        Keyring.parse(text, purpose="blind-index")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("b1", "entry 1 is not of the form"),
        ("b1:c2hvcnQ=", r"entry 1 \(id 'b1'\): the key is not an hmac-sha256 key"),
        ("b1:{k},b1:{k}", "'b1' appears more than once"),
        ("bad id:{k}", r"entry 1: key id <not a key id \(6 characters\), not shown"),
        ("{k}:b1", r"entry 1: key id <not a key id \(44 characters\), not shown"),
        ("b1:{k},B1:{k}", "'b1' and 'B1' differ only in case"),
        ("b1:{k}x", r"entry 1 \(id 'b1'\): the key is not an hmac-sha256 key"),
        ("b1:{k_unpadded}", r"entry 1 \(id 'b1'\): the key is not an hmac-sha256 key"),
    ],
)
def test_blind_index_parse_errors_name_the_entry_not_the_key(text: str, expected: str) -> None:
    """Malformed key text raises ConfigurationError pointing at the entry, never the key."""
    key = generate_key("hmac-sha256")
    with pytest.raises(ConfigurationError, match=expected) as info:
        Keyring.parse(
            text.format(k=key, k_unpadded=key.rstrip("=")),
            source="FIELDCRYPT_BLIND_INDEX_KEYS",
            purpose="blind-index",
        )
    assert key not in str(info.value)


def test_blind_index_keys_survive_pickling() -> None:
    """A pickled blind-index keyring (sent to a worker) keeps its purpose and derivations."""
    ring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    clone = pickle.loads(pickle.dumps(ring))
    assert "blind-index" == clone.purpose
    assert ring.primary.derive(b"info") == clone.primary.derive(b"info")


# -- purposes and the one parser ---------------------------------------------------------

every_kind = st.sampled_from(KEY_KINDS)


def test_each_kind_has_one_purpose() -> None:
    """fernet and aes-gcm-siv keys are for encryption, hmac-sha256 keys for blind indexes."""
    purposes = {kind: Key("a", generate_key(kind), kind).purpose for kind in KEY_KINDS}
    expected = {"fernet": "encryption", "aes-gcm-siv": "encryption", "hmac-sha256": "blind-index"}
    assert expected == purposes


def test_bare_text_is_the_purposes_default_kind() -> None:
    """The same bare key text is a Fernet key for encryption and an hmac-sha256 key otherwise."""
    bare = generate_key()
    assert "fernet" == parse_key(bare, purpose="encryption", key_id="k1").kind
    assert "hmac-sha256" == parse_key(bare, purpose="blind-index", key_id="b1").kind


def test_export_is_bare_for_default_kinds_only() -> None:
    """fernet and hmac-sha256 keys export bare; aes-gcm-siv keys export as 'kind:key'."""
    for kind in KEY_KINDS:
        text = generate_key(kind)
        exported = Key("a", text, kind).export()
        assert text == exported
        assert (kind == "aes-gcm-siv") == exported.startswith(f"{kind}:")


@given(kind=every_kind, key_id=key_ids, with_id=st.booleans())
def test_parse_key_round_trips_export_for_every_kind(kind: str, key_id: str, with_id: bool) -> None:
    """parse_key(export()) gives back the id, kind, purpose and secret, with or without id."""
    key = Key(key_id, generate_key(kind), kind)  # type: ignore[arg-type]
    if with_id:
        again = parse_key(f"{key.id}:{key.export()}", purpose=key.purpose)
    else:
        again = parse_key(key.export(), purpose=key.purpose, key_id=key.id)
    assert (key.id, key.kind, key.purpose) == (again.id, again.kind, again.purpose)
    assert key.export() == again.export()
    assert key.shares_secret_with(again)


@given(
    entries=st.lists(
        st.tuples(key_ids, every_kind), min_size=1, max_size=5, unique_by=lambda e: e[0].lower()
    ),
    data=st.data(),
)
def test_keyring_export_then_parse_round_trips_for_every_purpose(
    entries: list[tuple[str, str]], data: st.DataObject
) -> None:
    """Keyring.parse(export()) keeps ids, kinds, primary and purpose, for both purposes."""
    purpose = data.draw(st.sampled_from(PURPOSES))
    fitting = [(kid, kind) for kid, kind in entries if kind in PURPOSE_KINDS[purpose]]
    if not fitting:
        fitting = [(entries[0][0], PURPOSE_KINDS[purpose][0])]
    keys = [Key(kid, generate_key(kind), kind) for kid, kind in fitting]  # type: ignore[arg-type]
    primary = data.draw(st.sampled_from([k.id for k in keys]))
    ring = Keyring(keys, primary=primary, purpose=purpose)
    again = Keyring.parse(ring.export(), purpose=purpose)
    assert (ring.primary.id, ring.purpose) == (again.primary.id, again.purpose)
    assert {k.id: (k.kind, k.export()) for k in ring} == {k.id: (k.kind, k.export()) for k in again}


_REFERENCE_TEXTS = ["x", "unknown-kind:x", *(f"{kind}:x" for kind in KEY_KINDS)]


@given(
    text=st.text() | st.binary().map(lambda b: b.decode("latin-1")),
    purpose=st.sampled_from(PURPOSES),
)
def test_parse_key_errors_owe_nothing_to_the_text(text: str, purpose: str) -> None:
    """Any text that is not a key gives one of a fixed set of messages: none quotes it."""
    expected: set[str] = set()
    for reference in _REFERENCE_TEXTS:
        with pytest.raises(ConfigurationError) as known:
            parse_key(reference, purpose=purpose, key_id="v1")  # type: ignore[arg-type]
        expected.add(str(known.value))
    message = None
    try:
        parse_key(text, purpose=purpose, key_id="v1")  # type: ignore[arg-type]
    except ConfigurationError as exc:
        message = str(exc)
    assert message is None or message in expected


def test_keyring_entry_syntax_in_a_single_key_is_explained() -> None:
    """An 'id:key' entry where one key is expected says what a single key looks like."""
    with pytest.raises(ConfigurationError, match="write the key alone") as info:
        parse_key(f"k1:{generate_key()}", purpose="encryption", key_id="v1")
    assert "k1" not in str(info.value).replace("'v1'", "")


@pytest.mark.parametrize(
    ("purpose", "text", "expected"),
    [
        ("encryption", "b1:hmac-sha256:{k}", "an hmac-sha256 key, for blind indexes"),
        ("blind-index", "k1:aes-gcm-siv:{k}", "an aes-gcm-siv key, for encryption"),
        ("blind-index", "k1:fernet:{k}", "a fernet key, for encryption"),
    ],
)
def test_keys_of_another_purpose_are_refused(purpose: str, text: str, expected: str) -> None:
    """A key of the wrong purpose is refused by the parser, naming the entry and the fix."""
    key = generate_key()
    with pytest.raises(ConfigurationError, match=expected) as info:
        Keyring.parse(text.format(k=key), purpose=purpose, source="S")  # type: ignore[arg-type]
    assert "S: entry 1" in str(info.value)
    assert "fieldcrypt keygen --kind" in str(info.value)
    assert key not in str(info.value)


def test_keyring_refuses_key_objects_of_another_purpose() -> None:
    """Keyring([...], purpose=) refuses a Key of the other purpose, naming its id."""
    index_key = Key("b1", generate_key("hmac-sha256"), "hmac-sha256")
    with pytest.raises(ConfigurationError, match="key 'b1' cannot join") as info:
        Keyring([index_key])
    assert index_key.export() not in str(info.value)
    with pytest.raises(ConfigurationError, match="key 'k1' cannot join"):
        Keyring([Key("k1", generate_key())], purpose="blind-index")


def test_blind_index_keys_cannot_encrypt_or_decrypt() -> None:
    """An hmac-sha256 key, or a keyring of them, refuses to encrypt or decrypt, saying why."""
    ring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    key = ring.primary
    for attempt in (
        lambda: key.encrypt(b"x"),
        lambda: key.decrypt("payload"),
        lambda: key.for_context("a.b.c"),
        lambda: encrypt(ring, b"x"),
        lambda: decrypt(ring, "fc1:b1:payload"),
    ):
        with pytest.raises(ConfigurationError, match=r"blind-index|blind indexes"):
            attempt()


def test_blind_index_ids_differing_only_in_case_are_refused() -> None:
    """'b1' and 'B1' cannot share a blind-index keyring (MySQL compares index values
    case-insensitively); encryption tokens are matched exactly, so 'k1' and 'K1' may."""
    with pytest.raises(ConfigurationError, match="'b1' and 'B1' differ only in case"):
        Keyring(
            {"b1": generate_key("hmac-sha256"), "B1": generate_key("hmac-sha256")},
            purpose="blind-index",
        )
    assert ("k1", "K1") == Keyring({"k1": generate_key(), "K1": generate_key()}).ids


def test_derive_is_hkdf_sha256_of_the_key() -> None:
    """derive(info) is HKDF-SHA256(key, no salt, info) of 32 bytes, the same on every call."""
    raw = bytes(range(32))
    key = Key("b1", base64.urlsafe_b64encode(raw), "hmac-sha256")
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ctx").derive(raw)
    assert expected == key.derive(b"ctx")
    assert key.derive(b"ctx") is key.derive(b"ctx")
    assert key.derive(b"ctx") != key.derive(b"other")


@given(raw=st.binary(min_size=32, max_size=32), info=st.binary(max_size=200))
def test_derive_equals_cryptography_hkdf_for_any_key_and_info(raw: bytes, info: bytes) -> None:
    """The one-HMAC expansion gives exactly cryptography's HKDF-SHA256, for any key and info."""
    key = Key("b1", base64.urlsafe_b64encode(raw), "hmac-sha256")
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(raw)
    assert expected == key.derive(info)


def test_derive_cache_stays_bounded() -> None:
    """Many distinct infos do not grow a key's derivation cache without end."""
    key = Key("b1", generate_key("hmac-sha256"), "hmac-sha256")
    for i in range(3000):
        key.derive(b"%d" % i)
    assert len(key._derived) <= 1024


def test_keyring_repr_names_the_purpose_not_the_keys() -> None:
    """A keyring's repr shows its purpose, primary and ids, never a key."""
    text = generate_key("hmac-sha256")
    ring = Keyring({"b1": text}, purpose="blind-index")
    assert "Keyring(purpose='blind-index', primary='b1', ids=['b1'])" == repr(ring)
    assert text not in repr(ring.primary)


# -- one secret, one id ------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda s: Keyring({"k1": s, "legacy": s}),
        lambda s: Keyring([Key("k1", s), Key("legacy", s)], primary="legacy"),
        lambda s: Keyring.parse(f"k1:{s}, k2:{generate_key()}, legacy:{s}"),
        lambda s: Keyring({"k1": s, "legacy": f"aes-gcm-siv:{s}"}),
        lambda s: Keyring({"k1": s, "legacy": s}, purpose="blind-index"),
    ],
    ids=["mapping", "keys", "settings-text", "across-kinds", "blind-index"],
)
def test_one_secret_under_two_ids_is_refused(build: object) -> None:
    """A keyring refuses a secret held under two ids, naming both ids and never the secret."""
    secret = generate_key()
    with pytest.raises(ConfigurationError, match="'k1' and 'legacy' hold the same secret") as info:
        build(secret)  # type: ignore[operator]
    assert secret not in str(info.value)
    assert secret[:-4] not in str(info.value)


def test_a_relabelled_token_cannot_open_under_a_second_id() -> None:
    """With one secret per id, a token whose id is swapped for another key's id fails."""
    ring = Keyring({"k1": generate_key(), "legacy": generate_key()})
    token = encrypt(ring, b"x")
    with pytest.raises(DecryptionError):
        decrypt(ring, token.replace("fc1:k1:", "fc1:legacy:", 1))


@given(secrets=st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=6))
def test_keyrings_accept_exactly_distinct_secrets(secrets: list[bytes]) -> None:
    """A keyring of several keys builds exactly when no two of their secrets are equal."""
    texts = {f"k{i}": base64.urlsafe_b64encode(raw).decode() for i, raw in enumerate(secrets)}
    if len(set(secrets)) == len(secrets):
        assert len(secrets) == len(Keyring(texts))
    else:
        with pytest.raises(ConfigurationError, match="hold the same secret"):
            Keyring(texts)


# -- wrapped keys: the entry format -----------------------------------------------------------

KMS_KEY = "projects/p-1/locations/europe-west1/keyRings/app/cryptoKeys/fieldcrypt"
kms_ids = st.from_regex(r"[A-Za-z0-9_-]{1,63}", fullmatch=True)
kms_keys = st.builds(
    "projects/{}/locations/{}/keyRings/{}/cryptoKeys/{}".format,
    st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
    kms_ids,
    kms_ids,
)


def _capture(seen: list[WrappedKey]) -> Unwrap:
    """An unwrap that records what it is given and opens it as 32 fixed bytes."""

    def unwrap(wrapped: WrappedKey) -> Key:
        seen.append(wrapped)
        return wrapped.open(bytes(range(32)))

    return unwrap


@given(
    key_id=key_ids,
    kind=st.sampled_from(KEY_KINDS),
    kms_key=kms_keys,
    ciphertext=st.binary(min_size=1, max_size=200),
)
def test_wrapped_entries_round_trip_through_the_parser(
    key_id: str, kind: KeyKind, kms_key: str, ciphertext: bytes
) -> None:
    """Any wrapped key's entry parses back to the same id, kind, KMS key and ciphertext."""
    wrapped = WrappedKey(key_id, kind, kms_key, ciphertext)
    seen: list[WrappedKey] = []
    purpose = "blind-index" if kind == "hmac-sha256" else "encryption"
    key = parse_key(wrapped.entry, purpose=purpose, unwrap=_capture(seen))
    assert [wrapped] == seen
    assert (key_id, kind, wrapped) == (key.id, key.kind, key.wrapped)
    assert [wrapped] == [
        k.wrapped for k in Keyring.parse(wrapped.entry, purpose=purpose, unwrap=_capture([]))
    ]


def test_the_associated_data_binds_id_purpose_and_kind() -> None:
    """The associated data is the documented bytes: prefix, purpose, kind, id, NUL-separated."""
    assert b"sa-fieldcrypt/wrapped-key/v1\x00encryption\x00aes-gcm-siv\x00k3" == (
        wrapped_associated_data("k3", "aes-gcm-siv")
    )
    assert b"sa-fieldcrypt/wrapped-key/v1\x00blind-index\x00hmac-sha256\x00b1" == (
        WrappedKey("b1", "hmac-sha256", KMS_KEY, b"x").associated_data
    )


def test_a_wrapped_entry_without_an_unwrapper_is_refused() -> None:
    """No keyring holds a wrapped key unopened: the parser refuses it, naming id and KMS key."""
    entry = WrappedKey("k1", "fernet", KMS_KEY, b"\x00secret-ciphertext").entry
    with pytest.raises(ConfigurationError) as caught:
        Keyring.parse(entry)
    message = str(caught.value)
    assert f"key 'k1' is wrapped by Cloud KMS key '{KMS_KEY}'" in message
    assert entry.rsplit(":", 1)[-1] not in message


def test_a_wrapped_text_is_no_key_text() -> None:
    """Key() itself refuses wrapped text, pointing at the parser's unwrap=."""
    with pytest.raises(ConfigurationError, match=r"unwrap="):
        Key("k1", WrappedKey("k1", "fernet", KMS_KEY, b"x").text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"k1:wrapped:rot13:{KMS_KEY}:AAAA", "its kind is not known"),
        (f"k1:wrapped:hmac-sha256:{KMS_KEY}:AAAA", "for blind indexes, and this keyring is for"),
        ("k1:wrapped:fernet:projects/p/keyRings/r/cryptoKeys/k:AAAA", "names its Cloud KMS key"),
        (f"k1:wrapped:fernet:{KMS_KEY}/cryptoKeyVersions/1:AAAA", "names its Cloud KMS key"),
        (f"k1:wrapped:fernet:{KMS_KEY}:AAA", "not canonical url-safe base64"),
        (f"k1:wrapped:fernet:{KMS_KEY}:", "not canonical url-safe base64"),
        (f"k1:wrapped:fernet:{KMS_KEY}", "names its Cloud KMS key"),
    ],
    ids=["kind", "purpose", "kms-name", "kms-version", "base64", "empty", "no-ciphertext"],
)
def test_malformed_wrapped_entries_say_what_is_wrong(text: str, expected: str) -> None:
    """Each malformed part of a wrapped entry is named, with the entry's id."""
    with pytest.raises(ConfigurationError, match=re.escape(expected)) as caught:
        Keyring.parse(text, unwrap=_capture([]))
    assert "(id 'k1')" in str(caught.value)


def test_an_unwrapper_must_return_the_key_it_was_given() -> None:
    """An unwrap that returns some other key is refused: only WrappedKey.open decides."""
    entry = WrappedKey("k1", "fernet", KMS_KEY, b"x").entry
    with pytest.raises(ConfigurationError, match=r"not the Key that WrappedKey\.open built"):
        parse_key(entry, unwrap=lambda wrapped: parse_key(generate_key(), key_id="k1"))


def test_what_unwraps_must_be_a_key_of_the_kind() -> None:
    """Bytes of the wrong length from KMS are refused as not a key, without showing them."""
    with pytest.raises(ConfigurationError, match="is not a 32-byte key"):
        WrappedKey("k1", "fernet", KMS_KEY, b"x").open(b"short")


def test_wrapped_keys_are_redacted() -> None:
    """A wrapped key's repr shows id, kind and KMS key, never the ciphertext."""
    wrapped = WrappedKey("k1", "fernet", KMS_KEY, b"\xffciphertext")
    assert (
        f"WrappedKey(key_id='k1', kind='fernet', kms_key='{KMS_KEY}', ciphertext=<redacted>)"
        == repr(wrapped)
    )


def test_has_wrapped_entries_finds_exactly_wrapped_entries() -> None:
    """has_wrapped_entries is true for a keyring with a wrapped entry, false for plain keys."""
    wrapped = WrappedKey("k2", "fernet", KMS_KEY, b"x").entry
    plain = f"k1:{generate_key()},k0:{generate_key('aes-gcm-siv')}"
    assert (True, False) == (has_wrapped_entries(f"{plain},{wrapped}"), has_wrapped_entries(plain))


spaces = st.sampled_from(["", " ", "  ", "\t", "\n"])


@settings(max_examples=200)
@given(
    key_ids=st.lists(key_ids, min_size=1, max_size=4, unique=True),
    wrapped=st.lists(st.booleans(), min_size=4, max_size=4),
    pads=st.lists(spaces, min_size=24, max_size=24),
)
def test_has_wrapped_entries_agrees_with_the_parser(
    key_ids: list[str], wrapped: list[bool], pads: list[str]
) -> None:
    """Whatever whitespace surrounds ids, markers and KMS key names, has_wrapped_entries is
    true exactly when Keyring.parse needs unwrap=, and the parser reads the same KMS key."""
    entries = []
    for n, key_id in enumerate(key_ids):
        p = pads[6 * n : 6 * n + 6]
        if wrapped[n]:
            text = WrappedKey(key_id, "fernet", KMS_KEY, b"wrapped bytes").text
            _, kind, name, ciphertext = text.split(":")
            entries.append(
                f"{p[0]}{key_id}{p[1]}:{p[2]}wrapped{p[3]}:{kind}:{p[4]}{name}{p[5]}:{ciphertext}"
            )
        else:
            entries.append(f"{p[0]}{key_id}{p[1]}:{p[2]}{generate_key()}{p[3]}")
    text = ",".join(entries)
    seen: list[WrappedKey] = []

    def unwrap(found: WrappedKey) -> Key:
        seen.append(found)
        return found.open(base64.urlsafe_b64decode(generate_key()))

    expected = any(wrapped[: len(key_ids)])
    assert expected == has_wrapped_entries(text)
    if expected:
        with pytest.raises(ConfigurationError, match="nothing here unwraps keys"):
            Keyring.parse(text)
    else:
        Keyring.parse(text)
    Keyring.parse(text, unwrap=unwrap)
    assert all(KMS_KEY == found.kms_key for found in seen)
    assert sum(wrapped[: len(key_ids)]) == len(seen)

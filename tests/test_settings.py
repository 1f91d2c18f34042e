"""Settings: the keys, FIELDCRYPT_GCP_MAX_STALE and FIELDCRYPT_ALLOW_UNBOUND."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import Column, MetaData, Table

import sa_fieldcrypt
from sa_fieldcrypt import BlindIndex, ConfigurationError, EncryptedText, Keyring, generate_key
from sa_fieldcrypt.cipher import decrypt, encrypt
from sa_fieldcrypt.config import current_keyring, set_unbound_allowed, unbound_allowed
from sa_fieldcrypt.legacy import BareFernet
from sa_fieldcrypt.providers import EnvKeyProvider, StaticKeyProvider
from sa_fieldcrypt.settings import FieldCryptSettings, load_settings


def test_keys_variable_builds_the_keyring(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_KEYS gives the keys; the first is primary."""
    k2, k1 = generate_key(), generate_key()
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k2:{k2},k1:{k1}")
    ring = EnvKeyProvider().load()
    assert ("k2", "k1") == ring.ids
    assert "k2" == ring.primary.id


def test_primary_key_id_variable(no_default_keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """FIELDCRYPT_PRIMARY_KEY_ID picks the encrypting key."""
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k2:{generate_key()},k1:{generate_key()}")
    monkeypatch.setenv("FIELDCRYPT_PRIMARY_KEY_ID", "k1")
    assert "k1" == EnvKeyProvider().load().primary.id


def test_legacy_key_is_added_decrypt_only(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELD_ENCRYPTION_KEY joins as 'legacy', so old bare tokens read (in a column declaring
    them) while new ones use k1."""
    old = generate_key()
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k1:{generate_key()}")
    monkeypatch.setenv("FIELD_ENCRYPTION_KEY", old)
    ring = EnvKeyProvider().load()
    assert ("k1", "legacy") == ring.ids
    assert "k1" == ring.primary.id
    column = EncryptedText(keyring=ring, context=False, legacy=[BareFernet()])
    assert b"seed data" == column.decrypt_token(Fernet(old).encrypt(b"seed data").decode())


def test_two_old_keys_read_bare_tokens_of_both(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_KEYS with the current key first reads bare tokens of either in a column that
    declares them; cur encrypts."""
    current, older = generate_key(), generate_key()
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"cur:{current},old:{older}")
    ring = EnvKeyProvider().load()
    column = EncryptedText(keyring=ring, context=False, legacy=[BareFernet()])
    for key in (current, older):
        assert b"seed data" == column.decrypt_token(Fernet(key).encrypt(b"seed data").decode())
    assert encrypt(ring, b"x").startswith("fc1:cur:")


def test_legacy_key_never_encrypts_next_to_keys(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever FIELDCRYPT_KEYS holds, its first entry encrypts, not FIELD_ENCRYPTION_KEY."""
    monkeypatch.setenv("FIELD_ENCRYPTION_KEY", generate_key())
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"old:{generate_key()}")
    assert "old" == EnvKeyProvider().load().primary.id


def test_legacy_key_that_is_also_in_the_keys_is_refused(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELD_ENCRYPTION_KEY equal to a FIELDCRYPT_KEYS entry is refused, naming both ids."""
    key = generate_key()
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k1:{key}")
    monkeypatch.setenv("FIELD_ENCRYPTION_KEY", key)
    with pytest.raises(ConfigurationError, match="'k1' and 'legacy' hold the same secret") as info:
        EnvKeyProvider().load()
    assert key not in str(info.value)


def test_legacy_key_alone_is_primary(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only FIELD_ENCRYPTION_KEY set, it is the one key, and it encrypts."""
    monkeypatch.setenv("FIELD_ENCRYPTION_KEY", generate_key())
    ring = EnvKeyProvider().load()
    assert "legacy" == ring.primary.id
    assert encrypt(ring, b"x").startswith("fc1:legacy:")


def test_default_keys_come_from_settings_at_first_use(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without configure(), the first use reads the environment."""
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"env1:{generate_key()}")
    assert "env1" == current_keyring().primary.id


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "no encryption keys configured: set FIELDCRYPT_KEYS"),
        ({"FIELDCRYPT_KEYS": ""}, "FIELDCRYPT_KEYS is empty"),
        ({"FIELDCRYPT_KEYS": "k1:bm90IGEga2V5"}, "FIELDCRYPT_KEYS: entry 1 \\(id 'k1'\\)"),
        ({"FIELDCRYPT_KEYS": "k1:{k},k1:{k}"}, "'k1' appears more than once"),
        ({"FIELDCRYPT_KEYS": "k1:{k}", "FIELDCRYPT_PRIMARY_KEY_ID": "k7"}, "'k7' is not in"),
        ({"FIELD_ENCRYPTION_KEY": "short"}, "FIELD_ENCRYPTION_KEY is not a Fernet key"),
        ({"FIELD_ENCRYPTION_KEY": "{k}", "FIELDCRYPT_PRIMARY_KEY_ID": "k7"}, "FIELDCRYPT_KEYS"),
        ({"FIELDCRYPT_KEYS": "legacy:{k}", "FIELD_ENCRYPTION_KEY": "{k}"}, "'legacy'"),
        ({"FIELDCRYPT_PROVIDER": "vault", "FIELDCRYPT_KEYS": "k1:{k}"}, "FIELDCRYPT_PROVIDER"),
        (
            {"FIELDCRYPT_KEYS": "k1:{k}", "FIELDCRYPT_PRIMARY_KEY_ID": "{k}"},
            r"FIELDCRYPT_PRIMARY_KEY_ID: <not a key id \(44 characters\), not shown",
        ),
        (
            {"FIELD_ENCRYPTION_KEY": "{k}", "FIELDCRYPT_PRIMARY_KEY_ID": "k1:{k}"},
            r"FIELDCRYPT_PRIMARY_KEY_ID: <not a key id \(47 characters\)",
        ),
    ],
    ids=[
        "nothing",
        "empty",
        "bad-key",
        "duplicate",
        "primary-absent",
        "bad-legacy",
        "primary-without-keys",
        "legacy-id-clash",
        "bad-provider",
        "key-as-primary",
        "entry-as-primary-without-keys",
    ],
)
def test_bad_settings_fail_clearly_at_first_use(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """Each malformed setting gives one ConfigurationError line that never shows a key."""
    key = generate_key()
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(k=key))
    with pytest.raises(ConfigurationError, match=expected) as info:
        current_keyring()
    message = str(info.value)
    assert "\n" not in message
    assert key not in message
    assert "bm90IGEga2V5" not in message


def test_settings_repr_hides_keys(no_default_keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Printing the settings never shows a key."""
    key = generate_key()
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k1:{key}")
    monkeypatch.setenv("FIELD_ENCRYPTION_KEY", key)
    settings = load_settings()
    assert key not in repr(settings)
    assert key not in str(settings)
    assert isinstance(settings, FieldCryptSettings)


def test_keys_variable_mixes_key_kinds(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_KEYS takes 'id:aes-gcm-siv:key' beside Fernet entries; the first encrypts."""
    aead, fernet = generate_key(kind="aes-gcm-siv"), generate_key()
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k3:{aead},k2:{fernet}")
    ring = EnvKeyProvider().load()
    assert [("k3", "aes-gcm-siv"), ("k2", "fernet")] == [(k.id, k.kind) for k in ring]
    assert encrypt(ring, b"x").startswith("fc1:k3:")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FIELDCRYPT_KEYS": "k3:aes-gcm-siv:{short}"}, "entry 1 \\(id 'k3'\\).*aes-gcm-siv"),
        ({"FIELDCRYPT_KEYS": "k1:{k},k3:gcm:{k}"}, "entry 2 \\(id 'k3'\\).*kind is not known"),
        ({"FIELD_ENCRYPTION_KEY": "aes-gcm-siv:{k}"}, "FIELD_ENCRYPTION_KEY is not a Fernet key"),
    ],
    ids=["aead-short", "unknown-kind", "aead-legacy"],
)
def test_bad_kind_settings_fail_without_showing_keys(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """A bad key kind or AEAD key in the settings names the entry, never the key."""
    key = generate_key()
    short = key[:20]
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(k=key, short=short))
    with pytest.raises(ConfigurationError, match=expected) as info:
        current_keyring()
    assert key not in str(info.value)
    assert short not in str(info.value)


def test_database_url_is_read_and_hidden(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_DATABASE_URL is read, and printing the settings does not show it."""
    url = "postgresql+psycopg://app:hunter2-pw@db.internal:5432/bookings"
    monkeypatch.setenv("FIELDCRYPT_DATABASE_URL", url)
    settings = load_settings()
    assert settings.database_url is not None
    assert url == settings.database_url.get_secret_value()
    assert "hunter2-pw" not in repr(settings)
    assert "hunter2-pw" not in str(settings)


RING = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")


# -- blind-index keys --------------------------------------------------------------------


def test_keys_setting_first_entry_writes(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_BLIND_INDEX_KEYS gives the keys; the first computes, all match."""
    monkeypatch.setenv(
        "FIELDCRYPT_BLIND_INDEX_KEYS",
        f"b2:{generate_key('hmac-sha256')},b1:{generate_key('hmac-sha256')}",
    )
    index = BlindIndex("email_bidx", name="t.email_bidx")
    assert ("b2", "b1") == current_keyring("blind-index").ids
    assert (index.compute("x") or "").startswith("b2:")
    assert 2 == len(index.candidates("x"))


def test_single_key_setting_is_id_b0(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_BLIND_INDEX_KEY alone is the one key, with id b0."""
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_KEY", generate_key("hmac-sha256"))
    assert ("b0",) == current_keyring("blind-index").ids


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "no blind-index key configured: set FIELDCRYPT_BLIND_INDEX_KEYS"),
        ({"FIELDCRYPT_BLIND_INDEX_KEYS": ""}, "FIELDCRYPT_BLIND_INDEX_KEYS is empty"),
        (
            {"FIELDCRYPT_BLIND_INDEX_KEY": "short"},
            "FIELDCRYPT_BLIND_INDEX_KEY: the key is not an hmac-sha256",
        ),
        (
            {"FIELDCRYPT_BLIND_INDEX_KEY": "{k}", "FIELDCRYPT_BLIND_INDEX_KEYS": "b1:{k}"},
            "both FIELDCRYPT_BLIND_INDEX_KEYS and FIELDCRYPT_BLIND_INDEX_KEY",
        ),
    ],
    ids=["nothing", "empty", "malformed", "both"],
)
def test_bad_blind_index_settings_fail_clearly_at_first_use(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """Each bad setting is one ConfigurationError at the first index computation, keyless."""
    key = generate_key()
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(k=key))
    index = BlindIndex("email_bidx", name="t.email_bidx")  # constructing needs no key
    with pytest.raises(ConfigurationError, match=expected) as info:
        index.compute("x")
    assert key not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"FIELDCRYPT_BLIND_INDEX_KEYS": "b1:{k}", "FIELDCRYPT_KEYS": "k1:{k}"},
            "blind-index key 'b1' (from EnvKeyProvider) holds the same secret as encryption "
            "key 'k1' (from EnvKeyProvider)",
        ),
        (
            {"FIELDCRYPT_BLIND_INDEX_KEY": "{k}", "FIELD_ENCRYPTION_KEY": "{k}"},
            "blind-index key 'b0' (from EnvKeyProvider) holds the same secret as encryption "
            "key 'legacy' (from EnvKeyProvider)",
        ),
        (
            {"FIELDCRYPT_BLIND_INDEX_KEYS": "b1:{k}", "FIELDCRYPT_KEYS": "k1:aes-gcm-siv:{k}"},
            "blind-index key 'b1' (from EnvKeyProvider) holds the same secret as encryption "
            "key 'k1' (from EnvKeyProvider)",
        ),
    ],
    ids=["reused-key", "reused-legacy-key", "reused-aead-key"],
)
@pytest.mark.parametrize("index_first", [False, True], ids=["keys-first", "index-first"])
def test_an_encryption_key_reused_as_index_key_is_refused(
    no_default_keys: None,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    expected: str,
    index_first: bool,
) -> None:
    """A secret in both purposes' settings is refused by whichever keys load second, keyless."""
    key = generate_key()
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(k=key))
    index = BlindIndex("email_bidx", name="t.email_bidx")
    first, second = (
        (lambda: index.compute("x"), current_keyring)
        if index_first
        else (current_keyring, lambda: index.compute("x"))
    )
    first()
    with pytest.raises(ConfigurationError) as info:
        second()
    message = str(info.value)
    assert message.startswith(expected)
    assert "generate a separate key with `fieldcrypt keygen --kind hmac-sha256`" in message
    assert key.rpartition(":")[2] not in message
    assert "\n" not in message


def test_configure_refuses_one_secret_for_both_purposes(no_default_keys: None) -> None:
    """Keys given to configure() are compared too: an index key that encrypts is refused."""
    secret = generate_key()
    sa_fieldcrypt.configure(keyring=Keyring({"k1": secret}))
    sa_fieldcrypt.configure(
        keyring=Keyring({"b1": secret}, purpose="blind-index"), purpose="blind-index"
    )
    assert b"x" == decrypt(current_keyring(), encrypt(current_keyring(), b"x"))
    with pytest.raises(ConfigurationError) as info:
        BlindIndex("email_bidx", name="t.email_bidx").compute("x")
    assert str(info.value).startswith(
        "blind-index key 'b1' (from StaticKeyProvider) holds the same secret as encryption key "
        "'k1' (from StaticKeyProvider)"
    )
    assert secret not in str(info.value)


def test_settings_repr_hides_index_keys(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Printing the settings never shows a blind-index key."""
    key = generate_key("hmac-sha256")
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_KEYS", f"b1:{key}")
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_KEY", key)
    settings = FieldCryptSettings()
    assert key not in repr(settings)


def test_configure_for_blind_index_overrides_settings(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure(purpose="blind-index", keyring=...) wins over the settings until it is reset."""
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_KEY", generate_key("hmac-sha256"))
    sa_fieldcrypt.configure(purpose="blind-index", keyring=RING)
    assert ("b1",) == current_keyring("blind-index").ids
    sa_fieldcrypt.configure(purpose="blind-index")
    assert ("b0",) == current_keyring("blind-index").ids
    with pytest.raises(ConfigurationError, match="not both"):
        sa_fieldcrypt.configure(
            purpose="blind-index", keyring=RING, provider=StaticKeyProvider(RING)
        )


@given(
    seconds=st.floats(min_value=1e-3, max_value=1e12, allow_nan=False),
    none=st.sampled_from(["none", "None", "NONE", " none "]),
)
def test_gcp_max_stale_reads_seconds_or_the_word_none(seconds: float, none: str) -> None:
    """FIELDCRYPT_GCP_MAX_STALE is positive seconds, or `none` (any case) for no bound."""
    assert seconds == FieldCryptSettings(gcp_max_stale=repr(seconds)).gcp_max_stale
    assert FieldCryptSettings(gcp_max_stale=none).gcp_max_stale is None


@given(text=st.text(max_size=12).filter(lambda t: t.strip().lower() != "none"))
def test_gcp_max_stale_never_reads_other_text_as_no_bound(text: str) -> None:
    """Any other text is refused or is a positive number of seconds; it never means no bound."""
    try:
        value = FieldCryptSettings(gcp_max_stale=text).gcp_max_stale
    except ValidationError:
        return
    assert value is not None
    assert value > 0


def test_gcp_max_stale_defaults_to_a_day(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, FIELDCRYPT_GCP_MAX_STALE is 86400 s: keys serve through an outage for a day."""
    monkeypatch.delenv("FIELDCRYPT_GCP_MAX_STALE", raising=False)
    assert 86400.0 == load_settings().gcp_max_stale


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("false", False), ("true", True)])
def test_allow_unbound_setting_decides_for_columns_that_do_not_say(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    """FIELDCRYPT_ALLOW_UNBOUND (true unless set) says if bound columns read unbound tokens."""
    if value is not None:
        monkeypatch.setenv("FIELDCRYPT_ALLOW_UNBOUND", value)
    set_unbound_allowed(None)
    try:
        assert expected is unbound_allowed()
        columns = Table(
            "fc_settings_unbound",
            MetaData(),
            Column("default", EncryptedText()),
            Column("lenient", EncryptedText(allow_unbound=True)),
            Column("strict", EncryptedText(allow_unbound=False)),
            Column("unbound", EncryptedText(context=False)),
        ).c
        assert (expected, True, False, True) == tuple(c.type.allow_unbound for c in columns)
    finally:
        set_unbound_allowed(None)


def test_bad_allow_unbound_setting_fails_clearly(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIELDCRYPT_ALLOW_UNBOUND that is not a boolean is a ConfigurationError naming it."""
    monkeypatch.setenv("FIELDCRYPT_ALLOW_UNBOUND", "sometimes")
    set_unbound_allowed(None)
    try:
        with pytest.raises(ConfigurationError, match="FIELDCRYPT_ALLOW_UNBOUND"):
            unbound_allowed()
    finally:
        set_unbound_allowed(None)

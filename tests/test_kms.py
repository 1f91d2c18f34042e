"""Cloud KMS key wrapping (providers.kms), and wrapped keys in the environment's keyrings."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import (
    ConfigurationError,
    EncryptedText,
    KeyProviderError,
    Keyring,
    generate_key,
    parse_key,
)
from sa_fieldcrypt.keys import Key, WrappedKey
from sa_fieldcrypt.providers import EnvKeyProvider, KeyCache
from sa_fieldcrypt.settings import FieldCryptSettings

kms = pytest.importorskip("sa_fieldcrypt.providers.kms", reason="needs the gcp extra")
fake_module = pytest.importorskip("sa_fieldcrypt.testing.kms", reason="needs the gcp extra")

import grpc  # noqa: E402

KmsKeyWrapper = kms.KmsKeyWrapper
FakeKms = fake_module.FakeKms
KEK = "projects/test/locations/global/keyRings/app/cryptoKeys/fieldcrypt"
OTHER_KEK = "projects/test/locations/global/keyRings/app/cryptoKeys/other"


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(fake_kms: Any) -> Any:
    """A fresh fake KMS per test, with the key-encrypting key created (version 1 primary)."""
    fake_kms.create_key(KEK)
    return fake_kms


@pytest.fixture
def wrapper(fake: Any) -> Any:
    """A wrapper that talks to the fake through the real client, with a short timeout."""
    return KmsKeyWrapper(client=fake.client(), timeout=2.0)


def _wrapped(wrapper: Any, key_id: str = "k1", kind: str = "fernet") -> tuple[Key, WrappedKey]:
    purpose = "blind-index" if kind == "hmac-sha256" else "encryption"
    key = parse_key(generate_key(kind), purpose=purpose, key_id=key_id)  # type: ignore[arg-type]
    return key, wrapper.wrap(key, KEK)


def _secret_texts(key: Key, wrapped: WrappedKey) -> list[str]:
    """What no message may hold: the key, and the ciphertext in either spelling."""
    ciphertext = wrapped.ciphertext
    return [
        key.export().split(":")[-1],
        base64.urlsafe_b64encode(ciphertext).decode(),
        base64.b64encode(ciphertext).decode()[:20],
        ciphertext.hex()[:20],
    ]


def _assert_quotes_nothing(message: str, key: Key, wrapped: WrappedKey) -> None:
    for secret in _secret_texts(key, wrapped):
        assert secret not in message


# -- wrapping and unwrapping -------------------------------------------------------------


def test_a_wrapped_key_unwraps_to_the_same_key(wrapper: Any, fake: Any) -> None:
    """Wrap then unwrap gives the same key bytes, id and kind, one KMS call each."""
    key, wrapped = _wrapped(wrapper, "k7", "aes-gcm-siv")
    opened = parse_key(wrapped.entry, unwrap=wrapper)
    assert ("k7", "aes-gcm-siv") == (opened.id, opened.kind)
    assert opened.shares_secret_with(key)
    assert wrapped == opened.wrapped
    assert ["Encrypt", "Decrypt"] == fake.calls


def test_the_entry_holds_no_key_and_names_its_kms_key(wrapper: Any) -> None:
    """The entry is id, marker, kind, KMS key and ciphertext; the key is not in it."""
    key, wrapped = _wrapped(wrapper, "k1")
    head, ciphertext = wrapped.entry.rsplit(":", 1)
    assert f"k1:wrapped:fernet:{KEK}" == head
    assert wrapped.ciphertext == base64.urlsafe_b64decode(ciphertext)
    assert key.export() not in wrapped.entry


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda e: e.replace("k1:", "k2:", 1), "another key id"),
        (lambda e: e.replace(":fernet:", ":aes-gcm-siv:", 1), "another kind"),
    ],
    ids=["relabelled-id", "relabelled-kind"],
)
def test_a_relabelled_wrapped_key_does_not_unwrap(wrapper: Any, change: Any, where: str) -> None:
    """A wrapped key moved to another id or kind fails to unwrap, as relabelled or corrupted."""
    key, wrapped = _wrapped(wrapper, "k1")
    with pytest.raises(KeyProviderError, match="relabelled or corrupted") as caught:
        parse_key(change(wrapped.entry), unwrap=wrapper)
    _assert_quotes_nothing(str(caught.value), key, wrapped)


def test_a_wrapped_key_moved_to_another_purpose_does_not_unwrap(wrapper: Any) -> None:
    """A blind-index key's wrapping does not open as an encryption key's, nor the reverse."""
    _, wrapped = _wrapped(wrapper, "b1", "hmac-sha256")
    moved = WrappedKey("b1", "fernet", KEK, wrapped.ciphertext)
    with pytest.raises(KeyProviderError, match="does not open under its key id and purpose"):
        wrapper.unwrap(moved)


def test_a_corrupted_ciphertext_does_not_unwrap(wrapper: Any) -> None:
    """One flipped byte of the ciphertext is refused with the same message."""
    key, wrapped = _wrapped(wrapper)
    damaged = bytearray(wrapped.ciphertext)
    damaged[-1] ^= 1
    with pytest.raises(KeyProviderError, match="relabelled or corrupted") as caught:
        wrapper.unwrap(WrappedKey("k1", "fernet", KEK, bytes(damaged)))
    _assert_quotes_nothing(str(caught.value), key, wrapped)


def test_a_key_wrapped_by_another_kms_key_does_not_unwrap(wrapper: Any, fake: Any) -> None:
    """The ciphertext names its KMS key: under another key's name it does not open."""
    fake.create_key(OTHER_KEK)
    _, wrapped = _wrapped(wrapper)
    with pytest.raises(KeyProviderError, match="relabelled or corrupted"):
        wrapper.unwrap(WrappedKey("k1", "fernet", OTHER_KEK, wrapped.ciphertext))


@pytest.mark.parametrize(
    ("method", "role"),
    [
        ("Decrypt", "roles/cloudkms.cryptoKeyDecrypter"),
        ("Encrypt", "roles/cloudkms.cryptoKeyEncrypter"),
    ],
)
def test_a_missing_permission_names_the_role(
    wrapper: Any, fake: Any, method: str, role: str
) -> None:
    """PERMISSION_DENIED names the KMS role the caller lacks, and the KMS key."""
    key, wrapped = _wrapped(wrapper)
    fake.fail_next(method, grpc.StatusCode.PERMISSION_DENIED, details=wrapped.entry)
    call = (
        (lambda: wrapper.unwrap(wrapped))
        if method == "Decrypt"
        else (lambda: wrapper.wrap(key, KEK))
    )
    with pytest.raises(KeyProviderError) as caught:
        call()
    message = str(caught.value)
    assert role in message
    assert KEK in message
    assert "PERMISSION_DENIED" in message
    _assert_quotes_nothing(message, key, wrapped)


@pytest.mark.parametrize("state", ["DISABLED", "DESTROY_SCHEDULED", "DESTROYED"])
def test_an_unusable_key_version_says_which_and_how(wrapper: Any, fake: Any, state: str) -> None:
    """A wrapping version that is disabled or destroyed is named, with its state and the fix."""
    key, wrapped = _wrapped(wrapper)
    fake.rotate(KEK)
    fake.set_state(KEK, 1, state)
    with pytest.raises(KeyProviderError) as caught:
        wrapper.unwrap(wrapped)
    message = str(caught.value)
    assert f"{KEK}/cryptoKeyVersions/1" in message
    assert f"which wrapped this key, is {state}:" in message
    _assert_quotes_nothing(message, key, wrapped)


def test_a_precondition_that_names_no_version_is_not_taken_for_one(wrapper: Any, fake: Any) -> None:
    """FAILED_PRECONDITION without a version state (the API off, say) gets no version advice."""
    import grpc

    key, wrapped = _wrapped(wrapper)
    fake.fail_next(
        "Decrypt", grpc.StatusCode.FAILED_PRECONDITION, details="Cloud KMS API has not been used"
    )
    with pytest.raises(KeyProviderError, match="Cloud KMS API is enabled") as caught:
        wrapper.unwrap(wrapped)
    assert "enable it again" not in str(caught.value)
    _assert_quotes_nothing(str(caught.value), key, wrapped)


def test_wrapping_under_a_disabled_primary_says_so(wrapper: Any, fake: Any) -> None:
    """Encrypt with a disabled primary version fails, telling to make an enabled one primary."""
    fake.set_state(KEK, 1, "DISABLED")
    with pytest.raises(KeyProviderError, match="the primary, is DISABLED: make an enabled"):
        _wrapped(wrapper)


def test_an_unknown_kms_key_is_not_found(wrapper: Any) -> None:
    """A KMS key that does not exist is NOT_FOUND, with the name to check."""
    key = parse_key(generate_key(), key_id="k1")
    with pytest.raises(KeyProviderError, match=r"NOT_FOUND.*does not exist"):
        wrapper.wrap(key, OTHER_KEK)


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("Encrypt", "ciphertext_crc32c"),
        ("Encrypt", "verified_plaintext_crc32c"),
        ("Encrypt", "verified_additional_authenticated_data_crc32c"),
        ("Encrypt", "name"),
        ("Decrypt", "plaintext_crc32c"),
        ("Decrypt", "plaintext"),
    ],
)
def test_a_damaged_response_fails_its_checksum(
    wrapper: Any, fake: Any, method: str, field: str
) -> None:
    """A response that keeps failing its checksum (or was not verified) is refused.

    The call is made three times, as the KMS documentation advises for a damaged response;
    a response damaged twice and then whole is used, and is the right one.
    """
    key, wrapped = _wrapped(wrapper)
    call = (
        (lambda: wrapper.unwrap(wrapped))
        if method == "Decrypt"
        else (lambda: wrapper.unwrap(wrapper.wrap(key, KEK)))
    )
    before = fake.call_count(method)
    fake.corrupt_next(method, field, times=3)
    with pytest.raises(KeyProviderError, match=r"CRC32C check .*3 times") as caught:
        call()
    _assert_quotes_nothing(str(caught.value), key, wrapped)
    assert fake.call_count(method) - before == 3

    before = fake.call_count(method)
    fake.corrupt_next(method, field, times=2)
    assert call().shares_secret_with(key)
    assert fake.call_count(method) - before == 3


def test_a_request_damaged_on_the_way_is_sent_again(wrapper: Any, fake: Any) -> None:
    """KMS saying a request's checksum did not match (INVALID_ARGUMENT) is a damaged request,
    sent again up to three times, not a relabelled key."""
    key, wrapped = _wrapped(wrapper)
    damaged = "The checksum in field ciphertext_crc32c did not match the data in field ciphertext."
    fake.fail_next("Decrypt", grpc.StatusCode.INVALID_ARGUMENT, times=2, details=damaged)
    before = fake.call_count("Decrypt")
    assert wrapper.unwrap(wrapped).shares_secret_with(key)
    assert 3 == fake.call_count("Decrypt") - before
    fake.fail_next("Decrypt", grpc.StatusCode.INVALID_ARGUMENT, times=3, details=damaged)
    with pytest.raises(KeyProviderError, match="failed its CRC32C check 3 times") as caught:
        wrapper.unwrap(wrapped)
    assert "relabelled" not in str(caught.value)


def test_a_retried_call_stays_within_the_budget(wrapper: Any, fake: Any) -> None:
    """An attempt retried late in the budget gets what is left of it, not a whole timeout."""
    _, wrapped = _wrapped(wrapper)
    slow = KmsKeyWrapper(client=fake.client(), timeout=1.0)
    # The first attempt answers UNAVAILABLE after 0.8 s; the retry would answer after 0.8 s
    # more, past the budget.
    fake.delay_next("Decrypt", 0.8, times=2)
    fake.fail_next("Decrypt", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(KeyProviderError, match="DEADLINE_EXCEEDED") as caught:
        slow.unwrap(wrapped)
    assert kms.is_outage(caught.value)


def test_a_spent_budget_is_not_blamed_on_the_next_service() -> None:
    """When the budget runs out before a call, the hint says so instead of blaming the service."""
    from sa_fieldcrypt.providers.google import BudgetSpent, Deadline, common_hint

    spent = Deadline(0.0)
    with pytest.raises(BudgetSpent) as caught:
        spent.read()
    hint = common_hint("DEADLINE_EXCEEDED", "Secret Manager", 1.0, caught.value)
    assert hint is not None
    assert "ran out before Secret Manager was called" in hint
    assert "did not answer" not in hint


def test_an_unreachable_kms_is_an_outage(wrapper: Any, fake: Any) -> None:
    """With KMS down, unwrapping fails as an outage (is_outage), naming the KMS key."""
    _, wrapped = _wrapped(wrapper)
    fake.stop()
    with pytest.raises(KeyProviderError, match="could not unwrap") as caught:
        KmsKeyWrapper(client=fake.client(), timeout=0.5).unwrap(wrapped)
    assert kms.is_outage(caught.value)


def test_a_refusal_is_not_an_outage(wrapper: Any, fake: Any) -> None:
    """PERMISSION_DENIED says something of the key: it is not an outage."""
    _, wrapped = _wrapped(wrapper)
    fake.fail_next("Decrypt", grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(KeyProviderError) as caught:
        wrapper.unwrap(wrapped)
    assert not kms.is_outage(caught.value)


def test_a_transient_failure_is_retried(wrapper: Any, fake: Any) -> None:
    """One UNAVAILABLE answer is retried within the deadline, and the key unwraps."""
    key, wrapped = _wrapped(wrapper)
    fake.fail_next("Decrypt", grpc.StatusCode.UNAVAILABLE)
    assert wrapper.unwrap(wrapped).shares_secret_with(key)
    assert 2 == fake.call_count("Decrypt")


def test_a_malformed_kms_key_name_is_refused(wrapper: Any) -> None:
    """wrap() takes a crypto key name, not a version's or a key ring's."""
    key = parse_key(generate_key(), key_id="k1")
    with pytest.raises(ConfigurationError, match="not a Cloud KMS key name"):
        wrapper.wrap(key, f"{KEK}/cryptoKeyVersions/1")


def test_the_wrapper_names_no_secret_in_its_repr(wrapper: Any) -> None:
    """The wrapper's repr shows its timeout only."""
    assert "KmsKeyWrapper(timeout=2)" == repr(wrapper)


# -- re-wrapping ----------------------------------------------------------------------------


def test_rewrap_moves_only_what_is_not_under_the_primary(wrapper: Any, fake: Any) -> None:
    """rewrap() returns a new wrapping under the new primary, and None once it is there."""
    key, wrapped = _wrapped(wrapper)
    assert wrapper.rewrap(wrapped) is None
    fake.rotate(KEK)
    moved = wrapper.rewrap(wrapped)
    assert 2 == fake.version_of(moved.ciphertext)
    assert wrapper.unwrap(moved).shares_secret_with(key)
    assert wrapper.rewrap(moved) is None


def test_rewrap_keyring_keeps_ids_order_and_keys(wrapper: Any, fake: Any) -> None:
    """Keyring text re-wraps entry by entry: same ids, order and keys, plain entries kept."""
    plain = generate_key()
    k3, w3 = _wrapped(wrapper, "k3")
    k2, w2 = _wrapped(wrapper, "k2", "aes-gcm-siv")
    text = f"{w3.entry}, k1:{plain} ,{w2.entry}"
    fake.rotate(KEK)
    fake.calls.clear()
    done = kms.rewrap_keyring(text, wrapper)
    assert (("k3", "k2"), (), ("k1",)) == (done.rewrapped, done.unchanged, done.plain)
    assert ["Decrypt", "Decrypt", "Encrypt", "Encrypt"] == fake.calls
    fake.set_state(KEK, 1, "DISABLED")
    ring = Keyring.parse(done.text, unwrap=wrapper)
    assert ("k3", "k1", "k2") == ring.ids
    assert ring.get("k3").shares_secret_with(k3)
    assert ring.get("k2").shares_secret_with(k2)
    assert f"k1:{plain}" == done.text.split(",")[1]
    assert kms.rewrap_keyring(done.text, wrapper).rewrapped == ()


def test_rewrap_keyring_is_all_or_nothing(wrapper: Any, fake: Any) -> None:
    """An entry that does not unwrap fails the whole re-wrap, naming the entry."""
    _, w1 = _wrapped(wrapper, "k1")
    _, w2 = _wrapped(wrapper, "k2")
    relabelled = w2.entry.replace("k2:", "k3:", 1)
    with pytest.raises(KeyProviderError, match="key 'k3'"):
        kms.rewrap_keyring(f"{w1.entry},{relabelled}", wrapper)


# -- wrapped keys in the environment ---------------------------------------------------------


def _settings(**values: Any) -> FieldCryptSettings:
    return FieldCryptSettings(**values)


def test_env_keys_unwrap_once_per_load(wrapper: Any, fake: Any) -> None:
    """Each load of FIELDCRYPT_KEYS makes one Decrypt per wrapped entry, none for plain ones."""
    _, w2 = _wrapped(wrapper, "k2")
    _, w1 = _wrapped(wrapper, "k1", "aes-gcm-siv")
    settings = _settings(keys=f"{w2.entry},k0:{generate_key()},{w1.entry}")
    provider = EnvKeyProvider(settings, kms_client=fake.client())
    fake.calls.clear()
    ring = provider.load()
    assert ("k2", "k0", "k1") == ring.ids
    assert "k2" == ring.primary.id
    assert 2 == fake.call_count("Decrypt")
    provider.load()
    assert 4 == fake.call_count("Decrypt")


def test_one_env_load_unwraps_within_one_timeout(wrapper: Any, fake: Any) -> None:
    """The unwraps of one load share FIELDCRYPT_GCP_TIMEOUT: a slow KMS is named as the cause.

    Each Decrypt alone answers within the timeout; the two together do not.
    """
    _, w2 = _wrapped(wrapper, "k2")
    _, w1 = _wrapped(wrapper, "k1")
    settings = _settings(keys=f"{w2.entry},{w1.entry}", gcp_timeout=1.0)
    provider = EnvKeyProvider(settings, kms_client=fake.client())
    fake.delay_next("Decrypt", 0.7, times=2)
    with pytest.raises(KeyProviderError, match="could not unwrap") as caught:
        provider.load()
    assert "Cloud KMS did not answer within the 1 s the whole operation may take" in str(
        caught.value
    )
    assert kms.is_outage(caught.value)
    assert {"k2", "k1"} == set(provider.load().ids)  # each load has a budget of its own


def test_wrapped_env_keys_refresh_like_secret_manager_keys(wrapper: Any, fake: Any) -> None:
    """With a wrapped key, the env provider takes the GCP cache TTL and staleness bound."""
    _, wrapped = _wrapped(wrapper)
    wrapped_keys = EnvKeyProvider(
        _settings(keys=wrapped.entry, gcp_cache_ttl=60, gcp_max_stale=600),
        kms_client=fake.client(),
    )
    assert (60, 600) == (wrapped_keys.cache_ttl, wrapped_keys.max_stale)
    assert EnvKeyProvider(_settings(keys=f"k1:{generate_key()}")).cache_ttl is None


def test_a_kms_outage_serves_the_last_keys_until_max_stale(
    wrapper: Any, fake: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """KMS down: the cache serves the last keys while younger than max_stale, then refuses."""
    _, wrapped = _wrapped(wrapper)
    settings = _settings(keys=wrapped.entry, gcp_cache_ttl=60, gcp_max_stale=300, gcp_timeout=2)
    clock = FakeClock()
    cache = KeyCache(EnvKeyProvider(settings, kms_client=fake.client()), clock=clock)
    first = cache.get()
    fake.stop()
    clock.now += 120
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        assert first is cache.get()
    assert "still serving the previously loaded keys" in caplog.text
    assert "(max_stale 300 s, FIELDCRYPT_GCP_MAX_STALE)" in caplog.text
    clock.now += 200
    with pytest.raises(
        KeyProviderError,
        match=r"longer than max_stale \(300 s, FIELDCRYPT_GCP_MAX_STALE\) allows.*could not unwrap",
    ):
        cache.get()
    fake.start()
    clock.now += 10
    assert first.primary.shares_secret_with(cache.get().primary)


def test_a_revoked_permission_stops_the_keys_within_max_stale(wrapper: Any, fake: Any) -> None:
    """Once decrypting is refused, the keys stop at max_stale, the failure naming the role."""
    _, wrapped = _wrapped(wrapper)
    settings = _settings(keys=wrapped.entry, gcp_cache_ttl=60, gcp_max_stale=300)
    clock = FakeClock()
    cache = KeyCache(EnvKeyProvider(settings, kms_client=fake.client()), clock=clock)
    cache.get()
    fake.fail_next("Decrypt", grpc.StatusCode.PERMISSION_DENIED, times=10)
    clock.now += 301
    with pytest.raises(KeyProviderError, match=r"roles/cloudkms\.cryptoKeyDecrypter"):
        cache.get()


def test_a_wrapped_env_key_without_the_extra_client_is_refused_cleanly() -> None:
    """Parsing a wrapped keyring with no unwrapper is refused, naming the id and KMS key."""
    entry = WrappedKey("k1", "fernet", KEK, b"\x01" * 40).entry
    with pytest.raises(ConfigurationError, match=f"key 'k1' is wrapped by Cloud KMS key '{KEK}'"):
        Keyring.parse(entry)


def test_wrapped_blind_index_keys_load_from_the_environment(wrapper: Any, fake: Any) -> None:
    """FIELDCRYPT_BLIND_INDEX_KEYS and FIELDCRYPT_BLIND_INDEX_KEY take wrapped entries too."""
    key, wrapped = _wrapped(wrapper, "b2", "hmac-sha256")
    many = EnvKeyProvider(
        _settings(blind_index_keys=wrapped.entry), purpose="blind-index", kms_client=fake.client()
    )
    assert many.load().primary.shares_secret_with(key)
    single, wrapped_b0 = _wrapped(wrapper, "b0", "hmac-sha256")
    one = EnvKeyProvider(
        _settings(blind_index_key=wrapped_b0.text), purpose="blind-index", kms_client=fake.client()
    )
    assert one.cache_ttl is not None
    assert one.load().get("b0").shares_secret_with(single)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "kms_patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(EncryptedText())


@pytest.fixture
def patients(engine: Engine, no_default_keys: None) -> Iterator[Engine]:
    """The patients table, created for the test and dropped after it."""
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    sa_fieldcrypt.configure()


def test_a_model_reads_and_writes_through_wrapped_env_keys(
    patients: Engine, wrapper: Any, fake: Any
) -> None:
    """Rows written under a wrapped key read back, stored as fc1 tokens of that key id."""
    _, wrapped = _wrapped(wrapper, "k2", "aes-gcm-siv")
    settings = _settings(keys=wrapped.entry)
    sa_fieldcrypt.configure(provider=EnvKeyProvider(settings, kms_client=fake.client()))
    with Session(patients) as session:
        session.add(Patient(id=1, name="Ada Lovelace"))
        session.commit()
    with Session(patients) as session:
        assert "Ada Lovelace" == session.scalars(select(Patient.name)).one()
        stored = session.execute(text("SELECT name FROM kms_patients")).scalar_one()
    assert stored.startswith("fc1:k2:")


def test_rewrap_after_rotation_leaves_every_row_unchanged(
    patients: Engine, wrapper: Any, fake: Any
) -> None:
    """After a KMS rotation and re-wrap, the stored tokens are byte-identical and readable."""
    _, w2 = _wrapped(wrapper, "k2")
    _, w1 = _wrapped(wrapper, "k1", "aes-gcm-siv")
    keys = f"{w2.entry},{w1.entry}"
    sa_fieldcrypt.configure(
        provider=EnvKeyProvider(_settings(keys=f"{w1.entry},{w2.entry}"), kms_client=fake.client())
    )
    with Session(patients) as session:
        session.add(Patient(id=1, name="under k1"))
        session.commit()
    sa_fieldcrypt.configure(provider=EnvKeyProvider(_settings(keys=keys), kms_client=fake.client()))
    with Session(patients) as session:
        session.add(Patient(id=2, name="under k2"))
        session.commit()
    before = _stored(patients)
    fake.rotate(KEK)
    done = kms.rewrap_keyring(keys, wrapper)
    fake.set_state(KEK, 1, "DISABLED")  # only the new wrappings can open the keys now
    sa_fieldcrypt.configure(
        provider=EnvKeyProvider(_settings(keys=done.text), kms_client=fake.client())
    )
    assert before == _stored(patients)
    with Session(patients) as session:
        names = session.scalars(select(Patient.name).order_by(Patient.id)).all()
    assert ["under k1", "under k2"] == names


def _stored(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, name FROM kms_patients ORDER BY id"))
        return [(row[0], row[1]) for row in rows]


def test_rewrap_keyring_wraps_plain_entries_when_asked(wrapper: Any, fake: Any) -> None:
    """With wrap=, plaintext entries come back wrapped under that KMS key, same ids and keys."""
    plain = Keyring.parse(f"k2:{generate_key()},k1:{generate_key('aes-gcm-siv')}")
    done = kms.rewrap_keyring(plain.export(), wrapper, wrap=KEK)
    assert (("k2", "k1"), ()) == (done.rewrapped, done.plain)
    ring = Keyring.parse(done.text, unwrap=wrapper)
    assert [True, True] == [ring.get(k.id).shares_secret_with(k) for k in plain]
    assert [k.export() for k in plain] == [k.export() for k in ring]
    assert all(k.export().split(":")[-1] not in done.text for k in plain)


def test_the_legacy_key_cannot_be_wrapped(wrapper: Any) -> None:
    """A wrapped key in FIELD_ENCRYPTION_KEY is refused with where to put it instead."""
    _, wrapped = _wrapped(wrapper, "legacy")
    provider = EnvKeyProvider(_settings(FIELD_ENCRYPTION_KEY=wrapped.text))
    with pytest.raises(ConfigurationError, match="move it into FIELDCRYPT_KEYS as 'legacy:wrapped"):
        provider.load()

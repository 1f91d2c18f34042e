"""The Google Cloud Secret Manager key provider, against the fake through the real client."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, Integer, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import (
    ConfigurationError,
    DecryptionError,
    EncryptedText,
    Key,
    KeyProviderError,
    generate_key,
    metrics,
    parse_key,
)
from sa_fieldcrypt.cipher import decrypt, encrypt
from sa_fieldcrypt.config import current_keyring, provider_from_settings
from sa_fieldcrypt.providers import KeyCache
from sa_fieldcrypt.settings import load_settings

gcp = pytest.importorskip("sa_fieldcrypt.providers.gcp", reason="needs the gcp extra")
secret_manager = pytest.importorskip(
    "sa_fieldcrypt.testing.secret_manager", reason="needs the gcp extra"
)

import grpc  # noqa: E402
from google.cloud import secretmanager_v1  # noqa: E402
from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (  # noqa: E402
    SecretManagerServiceGrpcTransport,
)

from sa_fieldcrypt.keys import WrappedKey  # noqa: E402
from sa_fieldcrypt.providers.kms import KmsKeyWrapper  # noqa: E402

GoogleSecretManagerKeyProvider = gcp.GoogleSecretManagerKeyProvider
FakeSecretManager = secret_manager.FakeSecretManager
SECRET = "projects/test/secrets/fieldcrypt-keys"
#: A payload that is not a key; tests check that no message quotes it.
MALFORMED = b"password=hunter2hunter2"


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(fake_secret_manager: FakeSecretManager) -> FakeSecretManager:
    """A fresh fake per test, with the secret created and empty."""
    fake_secret_manager.create_secret(SECRET)
    return fake_secret_manager


def _provider(fake: FakeSecretManager, **kwargs: Any) -> Any:
    return GoogleSecretManagerKeyProvider(SECRET, client=fake.client(), **kwargs)


def _add_keys(fake: FakeSecretManager, count: int) -> list[str]:
    keys = [generate_key() for _ in range(count)]
    for key in keys:
        fake.add_version(SECRET, key.encode())
    return keys


# -- which versions are keys, and which one encrypts -------------------------------------


def test_every_enabled_version_is_a_key(fake: FakeSecretManager) -> None:
    """Each enabled version N is the key vN with its payload; the alias's version encrypts."""
    keys = _add_keys(fake, 3)
    fake.set_alias(SECRET, "fieldcrypt-primary", 3)
    ring = _provider(fake).load()
    assert ("v3", "v2", "v1") == ring.ids
    assert "v3" == ring.primary.id
    for number, key in enumerate(keys, start=1):
        assert key == ring.get(f"v{number}").export()


def test_disabled_and_destroyed_versions_are_ignored(fake: FakeSecretManager) -> None:
    """Disabled and destroyed versions give no key, even when they are the newest."""
    _add_keys(fake, 4)
    fake.set_alias(SECRET, "fieldcrypt-primary", 3)
    fake.set_state(SECRET, 2, "DISABLED")
    fake.set_state(SECRET, 4, "DESTROYED")
    ring = _provider(fake).load()
    assert ("v3", "v1") == ring.ids
    assert "v3" == ring.primary.id


def test_version_numbers_sort_as_integers(fake: FakeSecretManager) -> None:
    """Version 10 is newer than version 9 (no string ordering)."""
    _add_keys(fake, 10)
    fake.set_alias(SECRET, "fieldcrypt-primary", 10)
    ring = _provider(fake).load()
    assert tuple(f"v{n}" for n in range(10, 0, -1)) == ring.ids


def test_alias_names_the_primary(fake: FakeSecretManager) -> None:
    """When the alias points at an enabled version, that version encrypts."""
    _add_keys(fake, 3)
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    ring = _provider(fake).load()
    assert "v2" == ring.primary.id
    assert ("v3", "v2", "v1") == tuple(sorted(ring.ids, reverse=True))


def test_alias_name_is_configurable(fake: FakeSecretManager) -> None:
    """primary_alias selects which alias names the primary; others are ignored."""
    _add_keys(fake, 3)
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    fake.set_alias(SECRET, "billing-primary", 1)
    assert "v1" == _provider(fake, primary_alias="billing-primary").load().primary.id


# -- the rollout in two phases -----------------------------------------------------------


def test_two_phase_rollout(fake: FakeSecretManager) -> None:
    """An added key decrypts everywhere before it encrypts anywhere; promotion then switches."""
    operator = _provider(fake)
    operator.add_key()
    clock_a, clock_b = FakeClock(), FakeClock()
    app_a = KeyCache(_provider(fake, cache_ttl=300), clock=clock_a)
    app_b = KeyCache(_provider(fake, cache_ttl=300), clock=clock_b)
    assert "v1" == app_a.get().primary.id
    assert "v1" == app_b.get().primary.id

    # Phase 1: the new version decrypts after each instance's refresh, but does not encrypt.
    added = operator.add_key()
    assert (2, False) == (added.number, added.primary)
    clock_a.now += 301
    clock_b.now += 301
    for app in (app_a, app_b):
        assert "v1" == app.get().primary.id
        assert "v2" in app.get()

    # Phase 2: after the alias moves, each instance encrypts with v2 from its next refresh,
    # and the others read those values without any call to Secret Manager.
    operator.promote(2)
    clock_b.now += 301
    token = encrypt(app_b.get(), b"ada@example.com")
    assert token.startswith("fc1:v2:")
    calls = len(fake.calls)
    assert b"ada@example.com" == decrypt(app_a.get(), token)
    assert calls == len(fake.calls)
    clock_a.now += 301
    assert "v2" == app_a.get().primary.id


def test_add_key_pins_the_alias_first(fake: FakeSecretManager) -> None:
    """On a secret whose one version has no alias, adding a key leaves that version encrypting."""
    _add_keys(fake, 1)  # a version added by hand, e.g. with gcloud
    provider = _provider(fake)
    assert "v1" == provider.load().primary.id
    added = provider.add_key()
    assert (2, False) == (added.number, added.primary)
    assert {"fieldcrypt-primary": 1} == fake.aliases(SECRET)
    assert "v1" == provider.load().primary.id


@pytest.mark.parametrize("state", ["no-alias", "alias-on-disabled"])
def test_add_key_refuses_a_secret_without_primary(fake: FakeSecretManager, state: str) -> None:
    """Adding to a secret with no primary is refused, unwritten, until promote names one."""
    _add_keys(fake, 2)
    if state == "alias-on-disabled":
        fake.set_alias(SECRET, "fieldcrypt-primary", 1)
        fake.set_state(SECRET, 1, "DISABLED")
        _add_keys(fake, 1)
    aliases = fake.aliases(SECRET)
    with pytest.raises(KeyProviderError, match=r"keys promote VERSION`; then add the key\. No key"):
        _provider(fake).add_key()
    assert 0 == fake.call_count("AddSecretVersion")
    assert aliases == fake.aliases(SECRET)


def test_first_key_of_an_empty_secret_is_primary(fake: FakeSecretManager) -> None:
    """The first version added to an empty secret encrypts, and the alias names it."""
    added = _provider(fake).add_key()
    assert (1, True, "v1") == (added.number, added.primary, added.key_id)
    assert {"fieldcrypt-primary": 1} == fake.aliases(SECRET)


def test_add_key_stores_a_given_key(fake: FakeSecretManager) -> None:
    """add_key(key) stores that key, which then decrypts what it encrypted elsewhere."""
    key = generate_key()
    _provider(fake).add_key(key + "\n")
    token = Fernet(key).encrypt(b"x").decode()
    assert b"x" == _provider(fake).load().get("v1").decrypt(token)
    assert key.encode() == fake.payload(SECRET, 1)


def test_add_key_refuses_what_is_not_a_key(fake: FakeSecretManager) -> None:
    """A malformed key is refused before anything is written."""
    with pytest.raises(ConfigurationError, match="not a Fernet key") as info:
        _provider(fake).add_key("hunter2hunter2hunter2")
    assert "hunter2" not in str(info.value)
    assert 0 == fake.call_count("AddSecretVersion")


def test_add_key_is_never_retried(fake: FakeSecretManager) -> None:
    """A failed AddSecretVersion is reported, not retried (a retry could add the key twice)."""
    _provider(fake).add_key()
    fake.fail_next("AddSecretVersion", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(KeyProviderError, match="could not add a key \\(UNAVAILABLE\\)"):
        _provider(fake).add_key()
    assert 2 == fake.call_count("AddSecretVersion")


def test_promote_defaults_to_the_newest_enabled_version(fake: FakeSecretManager) -> None:
    """promote() without a number promotes the newest enabled version."""
    provider = _provider(fake)
    provider.add_key()
    provider.add_key()
    provider.add_key()
    fake.set_state(SECRET, 3, "DISABLED")
    assert 2 == provider.promote().number
    assert "v2" == provider.load().primary.id


def test_promote_rolls_back_to_an_older_version(fake: FakeSecretManager) -> None:
    """Promoting an older enabled version makes it encrypt again."""
    provider = _provider(fake)
    provider.add_key()
    provider.add_key()
    provider.promote(2)
    provider.promote(1)
    assert "v1" == provider.load().primary.id


@pytest.mark.parametrize(
    ("state", "number", "message"),
    [
        ("DISABLED", 2, "is DISABLED"),
        ("DESTROYED", 2, "is DESTROYED"),
        ("ENABLED", 9, "no version 9"),
    ],
)
def test_promote_refuses_versions_that_cannot_encrypt(
    fake: FakeSecretManager, state: str, number: int, message: str
) -> None:
    """Only an existing, enabled version can be promoted; the alias stays where it was."""
    provider = _provider(fake)
    provider.add_key()
    provider.add_key()
    if state != "ENABLED":
        fake.set_state(SECRET, 2, state)
    with pytest.raises(ConfigurationError, match=message):
        provider.promote(number)
    assert {"fieldcrypt-primary": 1} == fake.aliases(SECRET)


def test_promote_waits_for_instances_to_refresh(fake_secret_manager: FakeSecretManager) -> None:
    """A version younger than min_age is refused; an older one is promoted."""
    now = datetime.now(UTC)
    clock = [now - timedelta(seconds=1000)]
    fake_secret_manager.clock = lambda: clock[0]
    fake_secret_manager.create_secret(SECRET)
    provider = _provider(fake_secret_manager)
    provider.add_key()
    provider.add_key()  # v2, 1000 s old
    clock[0] = now
    provider.add_key()  # v3, just added
    with pytest.raises(ConfigurationError, match=r"version 3 was added 0 s ago.*wait 300 s more"):
        provider.promote(3, min_age=300)
    assert 2 == provider.promote(2, min_age=300).number
    assert 3 == provider.promote(3).number


def test_describe_states_and_primary(fake: FakeSecretManager) -> None:
    """describe() lists every version newest first, with its state and whether it encrypts."""
    provider = _provider(fake)
    for _ in range(3):
        provider.add_key()
    fake.set_state(SECRET, 2, "DISABLED")
    described = provider.describe()
    found = [(v.key_id, v.state, v.primary, v.skipped) for v in described.versions]
    expected = [
        ("v3", "ENABLED", False, None),
        ("v2", "DISABLED", False, None),
        ("v1", "ENABLED", True, None),
    ]
    assert expected == found
    assert (1, None, True, 1) == (
        described.alias,
        described.problem,
        described.checked,
        described.primary.number if described.primary else None,
    )
    provider.promote(3)
    assert [True, False, False] == [v.primary for v in provider.describe().versions]


def test_describe_reports_skipped_versions_and_why_loading_fails(fake: FakeSecretManager) -> None:
    """describe() says which versions instances skip and why, and the load's error, by number."""
    _add_keys(fake, 1)
    fake.add_version(SECRET, MALFORMED)
    _add_keys(fake, 1)
    fake.corrupt_checksum(SECRET, 3)
    described = _provider(fake).describe()
    skipped = {v.number: v.skipped for v in described.versions if v.skipped}
    assert [3, 2] == list(skipped)
    assert "CRC32C" in (skipped[3] or "")
    assert "not a usable key (key 'v2': the key is not a Fernet key" in (skipped[2] or "")
    assert described.primary is None
    assert "has 3 enabled versions and no version alias" in (described.problem or "")
    assert "hunter2" not in repr(described)
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    described = _provider(fake).describe()
    assert "names version 2, which cannot be read as a key" in (described.problem or "")


def test_describe_without_permission_to_read_versions(fake: FakeSecretManager) -> None:
    """An operator who may list but not read versions gets the listing, marked unchecked."""
    _add_keys(fake, 2)
    fake.set_alias(SECRET, "fieldcrypt-primary", 1)
    fake.fail_next("AccessSecretVersion", grpc.StatusCode.PERMISSION_DENIED)
    described = _provider(fake).describe()
    assert (False, None, [False, True]) == (
        described.checked,
        described.problem,
        [v.primary for v in described.versions],
    )


# -- cost and caching --------------------------------------------------------------------


def test_one_access_call_per_enabled_version_per_refresh(fake: FakeSecretManager) -> None:
    """A refresh costs one GetSecret, one list and one access per enabled version, no more."""
    _add_keys(fake, 4)
    fake.set_alias(SECRET, "fieldcrypt-primary", 4)
    fake.set_state(SECRET, 1, "DISABLED")
    clock = FakeClock()
    cache = KeyCache(_provider(fake, cache_ttl=300), clock=clock)
    for _ in range(50):
        cache.get()
    assert (1, 1, 3) == (
        fake.call_count("GetSecret"),
        fake.call_count("ListSecretVersions"),
        fake.call_count("AccessSecretVersion"),
    )
    clock.now += 301
    cache.get()
    assert 6 == fake.call_count("AccessSecretVersion")


def test_every_page_of_versions_is_read(fake: FakeSecretManager) -> None:
    """When the service pages the listing, every page is followed."""
    _add_keys(fake, 5)
    fake.set_alias(SECRET, "fieldcrypt-primary", 5)
    fake.max_page_size = 2
    assert 5 == len(_provider(fake).load())
    assert 3 == fake.call_count("ListSecretVersions")


def test_app_decrypts_a_new_versions_token_after_one_refresh(
    fake: FakeSecretManager, engine: Engine, no_default_keys: None
) -> None:
    """An app whose cache predates a new key reads a row written with it, after one refresh."""

    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "fc_gcp_customers"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        email: Mapped[str] = mapped_column("email_encrypted", EncryptedText())

    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        operator = _provider(fake)
        operator.add_key()
        sa_fieldcrypt.configure(provider=_provider(fake, cache_ttl=3600))
        with Session(engine) as session:
            session.add(Customer(id=1, email="old@example.com"))
            session.commit()
        assert ("v1",) == current_keyring().ids

        # Another instance, already on the new key, writes a row.
        operator.add_key()
        operator.promote(2)
        writer = KeyCache(_provider(fake))
        token = encrypt(writer.get(), b"new@example.com")
        assert token.startswith("fc1:v2:")
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO fc_gcp_customers (id, email_encrypted) VALUES (2, :t)"),
                {"t": token},
            )

        accesses = fake.call_count("AccessSecretVersion")
        with Session(engine) as session:
            assert "new@example.com" == session.get(Customer, 2).email
            assert "old@example.com" == session.get(Customer, 1).email
        assert accesses + 2 == fake.call_count("AccessSecretVersion")
        assert "v2" == current_keyring().primary.id
    finally:
        Base.metadata.drop_all(engine)


def test_async_app_loads_keys_off_the_event_loop(
    fake: FakeSecretManager, no_default_keys: None
) -> None:
    """Warmed in a worker thread, the keys then serve the event loop without blocking calls."""
    operator = _provider(fake)
    operator.add_key()
    sa_fieldcrypt.configure(provider=_provider(fake))

    async def app() -> bytes:
        await asyncio.to_thread(current_keyring)
        calls = len(fake.calls)
        ring = current_keyring()
        plaintext = decrypt(ring, encrypt(ring, b"in the loop"))
        assert calls == len(fake.calls)
        return plaintext

    assert b"in the loop" == asyncio.run(app())


# -- failures ----------------------------------------------------------------------------


def test_outage_after_first_load_keeps_serving(
    fake: FakeSecretManager, caplog: pytest.LogCaptureFixture
) -> None:
    """With the server down, a refresh keeps the loaded keys and warns; it recovers later."""
    _provider(fake).add_key()
    clock = FakeClock()
    cache = KeyCache(_provider(fake, cache_ttl=60, timeout=2), clock=clock)
    first = cache.get()
    fake.stop()
    fake.add_version(SECRET, generate_key().encode())  # lands while the server is down
    clock.now += 61
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        assert first is cache.get()
    assert time.monotonic() - started < 10
    assert "still serving the previously loaded keys" in caplog.text
    assert SECRET in caplog.text
    assert "UNAVAILABLE" in caplog.text

    fake.start()
    clock.now += 61
    assert ("v2", "v1") == cache.get().ids


def test_outage_at_first_load_is_a_clear_error(fake: FakeSecretManager) -> None:
    """With the server down at the first load, the error names the secret and the cause."""
    _add_keys(fake, 1)
    provider = _provider(fake, timeout=1)
    fake.stop()
    with pytest.raises(KeyProviderError) as info:
        KeyCache(provider).get()
    message = str(info.value)
    assert f"Secret Manager secret {SECRET!r}: could not read the keys (UNAVAILABLE)" in message
    assert "could not be reached" in message


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.fixture
def closed_port() -> str:
    """A local port nothing listens on."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize("endpoint", ["silent_server", "closed_port"])
def test_unreachable_endpoint_fails_within_the_timeout(
    request: pytest.FixtureRequest, endpoint: str
) -> None:
    """An endpoint that never answers, or refuses, fails in about `timeout`, not in 60 s."""
    channel = grpc.insecure_channel(request.getfixturevalue(endpoint))
    client = secretmanager_v1.SecretManagerServiceClient(
        transport=SecretManagerServiceGrpcTransport(channel=channel)
    )
    provider = GoogleSecretManagerKeyProvider(SECRET, client=client, timeout=1)
    started = time.monotonic()
    try:
        with pytest.raises(KeyProviderError, match=r"\((DEADLINE_EXCEEDED|UNAVAILABLE)\)"):
            provider.load()
    finally:
        channel.close()
    # Generous against a loaded machine; the client's own defaults would take 60 s.
    assert time.monotonic() - started < 8


def test_checksum_mismatch_is_refused(fake: FakeSecretManager) -> None:
    """A payload whose data_crc32c does not match is never used as a key."""
    _add_keys(fake, 2)
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    fake.corrupt_checksum(SECRET, 2)
    with pytest.raises(KeyProviderError, match=r"version 2, which cannot .*match its CRC32C"):
        _provider(fake).load()


def test_missing_checksum_is_refused(fake: FakeSecretManager) -> None:
    """A payload that arrives without data_crc32c is refused like a mismatch."""
    _add_keys(fake, 1)
    fake.corrupt_checksum(SECRET, 1, missing=True)
    with pytest.raises(KeyProviderError, match="CRC32C"):
        _provider(fake).load()


def test_checksum_mismatch_at_refresh_keeps_the_good_keys(fake: FakeSecretManager) -> None:
    """A corrupted payload at a refresh is skipped; the refresh succeeds with the good keys."""
    provider = _provider(fake, cache_ttl=60)
    provider.add_key()
    clock = FakeClock()
    cache = KeyCache(provider, clock=clock)
    first = cache.get()
    provider.add_key()
    fake.corrupt_checksum(SECRET, 2)
    clock.now += 61
    refreshed = cache.get()
    assert first is not refreshed
    assert (("v1",), 0) == (refreshed.ids, cache.age())


def test_version_disabled_while_loading_is_left_out(
    fake: FakeSecretManager, caplog: pytest.LogCaptureFixture
) -> None:
    """A listed version that fails access with FAILED_PRECONDITION is skipped with a warning."""
    _add_keys(fake, 2)
    fake.set_alias(SECRET, "fieldcrypt-primary", 1)
    fake.fail_next("AccessSecretVersion", grpc.StatusCode.FAILED_PRECONDITION)
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        ring = _provider(fake).load()
    assert ("v1",) == ring.ids
    assert "version 2" in caplog.text


def test_transient_unavailability_is_retried(fake: FakeSecretManager) -> None:
    """UNAVAILABLE answers are retried within the load's time budget."""
    _add_keys(fake, 1)
    fake.fail_next("AccessSecretVersion", grpc.StatusCode.UNAVAILABLE, times=2)
    assert ("v1",) == _provider(fake).load().ids
    assert 3 == fake.call_count("AccessSecretVersion")


@pytest.mark.parametrize(
    ("method", "code", "expected"),
    [
        ("GetSecret", grpc.StatusCode.PERMISSION_DENIED, "roles/secretmanager.secretAccessor"),
        ("AccessSecretVersion", grpc.StatusCode.PERMISSION_DENIED, "roles/secretmanager.viewer"),
        ("GetSecret", grpc.StatusCode.NOT_FOUND, "check FIELDCRYPT_GCP_SECRET"),
        ("ListSecretVersions", grpc.StatusCode.UNAUTHENTICATED, "application default credentials"),
    ],
)
def test_refusals_say_what_to_do(
    fake: FakeSecretManager, method: str, code: grpc.StatusCode, expected: str
) -> None:
    """Permission, existence and credential failures are reported once, with the fix."""
    _add_keys(fake, 1)
    fake.fail_next(method, code, details="some service text")
    with pytest.raises(KeyProviderError, match=f"\\({code.name}\\)") as info:
        _provider(fake).load()
    assert expected in str(info.value)
    assert "some service text" not in str(info.value)
    assert 1 == fake.call_count(method)


def test_no_enabled_version_is_a_clear_error(fake: FakeSecretManager) -> None:
    """A secret with no enabled version says so and how to add a key."""
    _add_keys(fake, 1)
    fake.set_state(SECRET, 1, "DISABLED")
    with pytest.raises(KeyProviderError, match=r"no enabled version.*fieldcrypt keys add"):
        _provider(fake).load()


def test_a_primary_that_is_not_a_key_fails_the_load(fake: FakeSecretManager) -> None:
    """A primary whose payload is not a key fails the load, naming the version, never quoting it."""
    _add_keys(fake, 1)
    fake.add_version(SECRET, MALFORMED)
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    with pytest.raises(KeyProviderError, match="key 'v2'") as info:
        _provider(fake).load()
    assert "hunter2" not in str(info.value)


def test_missing_credentials_are_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Without application default credentials, the load says how to provide them."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(KeyProviderError, match="no Google credentials were found"):
        GoogleSecretManagerKeyProvider(SECRET).load()


def test_missing_credentials_are_reported_for_kms_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Without application default credentials, unwrapping says how to provide them."""
    from sa_fieldcrypt.keys import WrappedKey
    from sa_fieldcrypt.providers.kms import KmsKeyWrapper

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    wrapped = WrappedKey("k1", "fernet", KEK, b"x" * 40)
    with pytest.raises(KeyProviderError, match=r"key 'k1'.*no Google credentials were found"):
        KmsKeyWrapper().unwrap(wrapped)


def test_regional_secrets_use_the_regional_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret under projects/P/locations/L is read from L's regional endpoint."""
    from google.auth import credentials as google_credentials

    monkeypatch.setattr(
        "google.auth.default",
        lambda *args, **kwargs: (google_credentials.AnonymousCredentials(), "p"),
    )
    provider = GoogleSecretManagerKeyProvider("projects/p/locations/europe-west1/secrets/k")
    assert "secretmanager.europe-west1.rep.googleapis.com" == provider._get_client().api_endpoint


# -- configuration -----------------------------------------------------------------------


def test_settings_select_and_configure_the_provider(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_PROVIDER=gcp builds the provider from the FIELDCRYPT_GCP_* settings."""
    monkeypatch.setenv("FIELDCRYPT_PROVIDER", "gcp")
    monkeypatch.setenv("FIELDCRYPT_GCP_SECRET", SECRET)
    monkeypatch.setenv("FIELDCRYPT_GCP_CACHE_TTL", "60")
    monkeypatch.setenv("FIELDCRYPT_GCP_PRIMARY_ALIAS", "billing-primary")
    monkeypatch.setenv("FIELDCRYPT_GCP_TIMEOUT", "2.5")
    monkeypatch.setenv("FIELDCRYPT_GCP_MAX_STALE", "3600")
    provider = provider_from_settings(load_settings())
    assert isinstance(provider, GoogleSecretManagerKeyProvider)
    assert (SECRET, 60.0, "billing-primary", 2.5, 3600.0) == (
        provider.secret,
        provider.cache_ttl,
        provider.primary_alias,
        provider.timeout,
        provider.max_stale,
    )


def test_settings_defaults(no_default_keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default: cached 300 s, stale after a day, alias fieldcrypt-primary, loads <= 5 s."""
    monkeypatch.setenv("FIELDCRYPT_GCP_SECRET", SECRET)
    provider = GoogleSecretManagerKeyProvider.from_settings()
    assert (300.0, 86400.0, "fieldcrypt-primary", 5.0) == (
        provider.cache_ttl,
        provider.max_stale,
        provider.primary_alias,
        provider.timeout,
    )
    assert provider.max_stale == GoogleSecretManagerKeyProvider(SECRET).max_stale


def test_max_stale_none_only_when_asked_for(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_GCP_MAX_STALE=none turns the staleness bound off; nothing else does."""
    monkeypatch.setenv("FIELDCRYPT_GCP_SECRET", SECRET)
    monkeypatch.setenv("FIELDCRYPT_GCP_MAX_STALE", "none")
    assert GoogleSecretManagerKeyProvider.from_settings().max_stale is None
    assert KeyCache(GoogleSecretManagerKeyProvider.from_settings()).max_stale is None
    monkeypatch.setenv("FIELDCRYPT_GCP_MAX_STALE", "")
    with pytest.raises(ConfigurationError, match="FIELDCRYPT_GCP_MAX_STALE"):
        GoogleSecretManagerKeyProvider.from_settings()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"max_stale": 0}, "max_stale must be > 0 seconds"),
        ({"cache_ttl": 600, "max_stale": 300}, r"max_stale \(300 s\) is shorter than cache_ttl"),
    ],
)
def test_an_unkeepable_max_stale_is_refused(kwargs: dict[str, Any], expected: str) -> None:
    """A max_stale that is not positive, or shorter than the TTL, is refused at construction."""
    with pytest.raises(ConfigurationError, match=expected):
        GoogleSecretManagerKeyProvider(SECRET, **kwargs)


def test_settings_feed_a_working_provider(
    fake: FakeSecretManager, no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider built from settings with an injected client loads the secret's keys."""
    _add_keys(fake, 2)
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    monkeypatch.setenv("FIELDCRYPT_GCP_SECRET", SECRET)
    provider = GoogleSecretManagerKeyProvider.from_settings(client=fake.client())
    sa_fieldcrypt.configure(provider=provider)
    assert "v2" == current_keyring().primary.id


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "set FIELDCRYPT_GCP_SECRET to projects/PROJECT/secrets/NAME"),
        ({"FIELDCRYPT_GCP_SECRET": "fieldcrypt-keys"}, "'fieldcrypt-keys' is not a secret name"),
        ({"FIELDCRYPT_GCP_SECRET": f"{SECRET}/versions/3"}, "not one of its versions"),
        ({"FIELDCRYPT_GCP_SECRET": SECRET, "FIELDCRYPT_GCP_TIMEOUT": "0"}, "GCP_TIMEOUT"),
        ({"FIELDCRYPT_GCP_SECRET": SECRET, "FIELDCRYPT_GCP_TIMEOUT": "600"}, "GCP_TIMEOUT"),
        ({"FIELDCRYPT_GCP_SECRET": SECRET, "FIELDCRYPT_GCP_CACHE_TTL": "0"}, "GCP_CACHE_TTL"),
        ({"FIELDCRYPT_GCP_SECRET": SECRET, "FIELDCRYPT_GCP_MAX_STALE": "0"}, "GCP_MAX_STALE"),
        (
            {"FIELDCRYPT_GCP_SECRET": SECRET, "FIELDCRYPT_GCP_MAX_STALE": "60"},
            r"FIELDCRYPT_GCP_MAX_STALE \(60 s\) is shorter than FIELDCRYPT_GCP_CACHE_TTL \(300 s\)",
        ),
        ({"FIELDCRYPT_GCP_SECRET": SECRET, "FIELDCRYPT_GCP_PRIMARY_ALIAS": "latest"}, "'latest'"),
        ({"FIELDCRYPT_GCP_SECRET": SECRET, "FIELDCRYPT_GCP_PRIMARY_ALIAS": "1st"}, "'1st'"),
    ],
    ids=[
        "no-secret",
        "bare-name",
        "version",
        "zero-timeout",
        "long-timeout",
        "zero-ttl",
        "zero-max-stale",
        "max-stale-below-ttl",
        "reserved-alias",
        "bad-alias",
    ],
)
def test_bad_settings_fail_at_first_use(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """Each malformed FIELDCRYPT_GCP_* setting is one ConfigurationError naming it."""
    monkeypatch.setenv("FIELDCRYPT_PROVIDER", "gcp")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=expected):
        current_keyring()


def test_repr_names_the_secret_only(fake: FakeSecretManager) -> None:
    """The provider's repr names the secret and alias; loaded keys never appear in it."""
    keys = _add_keys(fake, 1)
    provider = _provider(fake)
    provider.load()
    shown = repr(provider) + repr(provider.describe())
    assert SECRET in shown
    assert keys[0] not in shown


# -- payloads and purposes ----------------------------------------------------------------

BLIND_SECRET = "projects/test/secrets/fieldcrypt-index-keys"


@pytest.mark.parametrize(("prefix", "padding"), [("", "\n"), ("fernet:", " \t"), ("", "")])
def test_payload_is_a_key_or_kind_and_key(
    fake: FakeSecretManager, prefix: str, padding: str
) -> None:
    """A payload `<key>` or `fernet:<key>`, with surrounding whitespace, loads as that key."""
    key = generate_key()
    fake.add_version(SECRET, f"{padding}{prefix}{key}{padding}".encode())
    loaded = _provider(fake).load().get("v1")
    assert ("v1", "fernet", key) == (loaded.id, loaded.kind, loaded.export())
    assert b"secret" == loaded.decrypt(Fernet(key).encrypt(b"secret"))


def test_an_aes_gcm_siv_version_loads_and_decrypts(fake: FakeSecretManager) -> None:
    """A version holding an aes-gcm-siv key is a key of that kind, and it decrypts."""
    text = generate_key("aes-gcm-siv")
    fake.add_version(SECRET, text.encode() + b"\n")
    ring = _provider(fake).load()
    assert ("v1", "aes-gcm-siv") == (ring.primary.id, ring.primary.kind)
    elsewhere = sa_fieldcrypt.Keyring({"v1": text})
    token = encrypt(elsewhere, b"ada@example.com", context="crm.customers.email")
    assert b"ada@example.com" == decrypt(ring, token, context="crm.customers.email")


def test_add_key_makes_a_key_of_the_kind_asked(fake: FakeSecretManager) -> None:
    """add_key(kind='aes-gcm-siv') stores a new aes-gcm-siv key, written with its kind."""
    _provider(fake).add_key(kind="aes-gcm-siv")
    assert fake.payload(SECRET, 1).startswith(b"aes-gcm-siv:")
    assert "aes-gcm-siv" == _provider(fake).load().primary.kind


@pytest.mark.parametrize(
    ("purpose", "kind", "given", "expected"),
    [
        ("encryption", "hmac-sha256", None, "holds keys of kind fernet or aes-gcm-siv"),
        ("blind-index", "fernet", None, "holds keys of kind hmac-sha256"),
        ("encryption", "aes-gcm-siv", "fernet", "of kind 'fernet', not 'aes-gcm-siv'"),
        ("blind-index", None, "aes-gcm-siv", "for blind indexes: give it an hmac-sha256 key"),
    ],
    ids=["hmac-in-encryption", "fernet-in-blind-index", "kind-mismatch", "aead-in-blind-index"],
)
def test_add_key_refuses_keys_of_another_purpose(
    fake: FakeSecretManager, purpose: str, kind: str | None, given: str | None, expected: str
) -> None:
    """A key or kind that does not serve the secret's purpose is refused before any write."""
    key = None if given is None else generate_key(given)  # type: ignore[arg-type]
    provider = _provider(fake, purpose=purpose)
    with pytest.raises(ConfigurationError, match=expected) as info:
        provider.add_key(key, kind=kind)
    assert key is None or key.rpartition(":")[2] not in str(info.value)
    assert 0 == fake.call_count("AddSecretVersion")


def test_a_blind_index_keyring_is_served_from_secret_manager(
    fake_secret_manager: FakeSecretManager,
) -> None:
    """A blind-index secret serves a blind-index keyring: new keys are hmac-sha256, vN ids."""
    fake_secret_manager.create_secret(BLIND_SECRET)
    provider = GoogleSecretManagerKeyProvider(
        BLIND_SECRET, client=fake_secret_manager.client(), purpose="blind-index"
    )
    provider.add_key()
    provider.add_key()
    ring = provider.load()
    assert ("blind-index", "v1", ("v2", "v1")) == (ring.purpose, ring.primary.id, ring.ids)
    assert ["hmac-sha256", "hmac-sha256"] == [key.kind for key in ring]
    index = sa_fieldcrypt.BlindIndex("email_bidx", keyring=provider, name="crm.email_bidx")
    assert ["v1", "v2"] == [value.partition(":")[0] for value in index.candidates("ada")]
    provider.promote(2)
    index = sa_fieldcrypt.BlindIndex("email_bidx", keyring=provider, name="crm.email_bidx")
    assert "v2" == (index.compute("ada") or "").partition(":")[0]


def test_a_blind_index_secret_without_primary_names_its_own_command(
    fake_secret_manager: FakeSecretManager,
) -> None:
    """A blind-index secret with two versions and no alias points at promote --purpose."""
    fake_secret_manager.create_secret(BLIND_SECRET)
    for _ in range(2):
        fake_secret_manager.add_version(BLIND_SECRET, generate_key("hmac-sha256").encode())
    provider = GoogleSecretManagerKeyProvider(
        BLIND_SECRET, client=fake_secret_manager.client(), purpose="blind-index"
    )
    with pytest.raises(KeyProviderError) as info:
        provider.load()
    assert str(info.value).endswith(
        "naming the one that computes new index values, so no key is trusted to compute new "
        "index values: name the version that should with "
        "`fieldcrypt keys promote VERSION --purpose blind-index`"
    )


def test_a_blind_index_secret_holding_an_encryption_key_is_refused(
    fake: FakeSecretManager, no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index secret whose version holds an encryption key is refused, from Secret Manager."""
    key = _add_keys(fake, 1)[0]
    fake.create_secret(BLIND_SECRET)
    fake.add_version(BLIND_SECRET, key.encode())
    sa_fieldcrypt.configure(provider=_provider(fake))
    sa_fieldcrypt.configure(
        provider=GoogleSecretManagerKeyProvider(
            BLIND_SECRET, client=fake.client(), purpose="blind-index"
        ),
        purpose="blind-index",
    )
    assert ("v1",) == current_keyring().ids
    with pytest.raises(ConfigurationError) as info:
        sa_fieldcrypt.BlindIndex("email_bidx", name="crm.email_bidx").compute("ada")
    assert str(info.value).startswith(
        f"blind-index key 'v1' (from {BLIND_SECRET}) holds the same secret as encryption key "
        f"'v1' (from {SECRET}); "
    )
    assert key not in str(info.value)


def test_a_secret_manager_index_key_equal_to_an_env_encryption_key_is_refused(
    fake: FakeSecretManager, no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys of different providers are compared too: env encryption, Secret Manager index."""
    key = generate_key()
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k1:{key}")
    fake.create_secret(BLIND_SECRET)
    fake.add_version(BLIND_SECRET, key.encode())
    sa_fieldcrypt.configure(
        provider=GoogleSecretManagerKeyProvider(
            BLIND_SECRET, client=fake.client(), purpose="blind-index"
        ),
        purpose="blind-index",
    )
    assert ("v1",) == current_keyring("blind-index").ids
    with pytest.raises(ConfigurationError, match="encryption key 'k1' \\(from EnvKeyProvider\\)"):
        current_keyring()


@pytest.mark.parametrize(
    ("purpose", "payload", "expected"),
    [
        ("encryption", "hmac-sha256", "an hmac-sha256 key, for blind indexes"),
        ("blind-index", "aes-gcm-siv", "an aes-gcm-siv key, for encryption"),
    ],
)
def test_a_version_of_another_purpose_fails_the_load(
    fake: FakeSecretManager, purpose: str, payload: str, expected: str
) -> None:
    """A version whose key names a kind of another purpose fails the load, naming the version."""
    text = f"{payload}:{generate_key().rpartition(':')[2]}"
    fake.add_version(SECRET, text.encode())
    with pytest.raises(KeyProviderError, match=f"key 'v1': .*{expected}") as info:
        _provider(fake, purpose=purpose).load()
    assert text.rpartition(":")[2] not in str(info.value)


def test_blind_index_settings_select_their_own_secret(
    fake: FakeSecretManager, no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_BLIND_INDEX_PROVIDER=gcp reads FIELDCRYPT_BLIND_INDEX_GCP_SECRET, sharing TTL."""
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_PROVIDER", "gcp")
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_GCP_SECRET", BLIND_SECRET)
    monkeypatch.setenv("FIELDCRYPT_GCP_CACHE_TTL", "60")
    provider = provider_from_settings(load_settings(), purpose="blind-index")
    assert isinstance(provider, GoogleSecretManagerKeyProvider)
    assert (BLIND_SECRET, "blind-index", 60.0) == (
        provider.secret,
        provider.purpose,
        provider.cache_ttl,
    )
    assert "env" == load_settings().provider  # the encryption keys stay where they were


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "set FIELDCRYPT_BLIND_INDEX_GCP_SECRET to projects/PROJECT/secrets/NAME"),
        (
            {"FIELDCRYPT_BLIND_INDEX_GCP_SECRET": SECRET, "FIELDCRYPT_GCP_SECRET": SECRET},
            "names the encryption keys' secret",
        ),
        (
            {"FIELDCRYPT_BLIND_INDEX_GCP_SECRET": "keys"},
            "FIELDCRYPT_BLIND_INDEX_GCP_SECRET: 'keys'",
        ),
    ],
    ids=["no-secret", "shared-secret", "bare-name"],
)
def test_bad_blind_index_gcp_settings_fail_at_first_use(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """Each bad blind-index Secret Manager setting is one ConfigurationError naming it."""
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_PROVIDER", "gcp")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=expected):
        current_keyring("blind-index")


# -- optional dependency -----------------------------------------------------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # The interpreter running the tests, on code written here.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_the_library_does_not_import_google() -> None:
    """`import sa_fieldcrypt` (with columns and providers) loads no google or grpc module."""
    result = _run(
        """
        import sys
        import sa_fieldcrypt, sa_fieldcrypt.providers, sa_fieldcrypt.types, sa_fieldcrypt.config
        loaded = [m for m in sys.modules if m.split(".")[0] in ("google", "grpc")]
        print(loaded)
        """
    )
    assert "[]" == result.stdout.strip(), result.stderr


_BLOCK_GOOGLE = """
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("google", "google_crc32c", "grpc"):
                raise ImportError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, Blocker())
"""


@pytest.mark.parametrize(
    "statement",
    [
        "import sa_fieldcrypt.providers.gcp",
        "import sa_fieldcrypt.testing.secret_manager",
        "import os; os.environ.update(FIELDCRYPT_PROVIDER='gcp', FIELDCRYPT_GCP_SECRET="
        f"'{SECRET}'); from sa_fieldcrypt.config import current_keyring; current_keyring()",
        "import sa_fieldcrypt.providers.kms",
        "import sa_fieldcrypt.testing.kms",
    ],
    ids=["provider", "fake", "settings", "kms", "kms-fake"],
)
def test_missing_extra_says_how_to_install_it(statement: str) -> None:
    """Without the Google packages, using the gcp provider raises ImportError with the fix."""
    result = _run(
        _BLOCK_GOOGLE
        + f"""
    try:
        {statement}
    except ImportError as exc:
        print(exc)
    """
    )
    assert "pip install 'sa-fieldcrypt[gcp]'" in result.stdout, result.stderr


def test_a_wrapped_env_key_without_the_extra_says_how_to_install_it() -> None:
    """A wrapped key in FIELDCRYPT_KEYS without the Google packages is a ConfigurationError."""
    result = _run(
        _BLOCK_GOOGLE
        + """
    import os
    from sa_fieldcrypt import ConfigurationError
    from sa_fieldcrypt.providers import EnvKeyProvider
    kek = "projects/p/locations/l/keyRings/r/cryptoKeys/k"
    os.environ["FIELDCRYPT_KEYS"] = f"k1:wrapped:fernet:{kek}:AAAA"
    try:
        EnvKeyProvider().load()
    except ConfigurationError as exc:
        print(exc)
    """
    )
    assert "wrapped by Cloud KMS" in result.stdout, result.stderr
    assert "pip install 'sa-fieldcrypt[gcp]'" in result.stdout


# -- the guide ---------------------------------------------------------------------------

GUIDE = Path(__file__).parent.parent / "docs" / "secret-manager.md"


def test_the_guide_examples_run(fake: FakeSecretManager, no_default_keys: None) -> None:
    """Every Python example of docs/secret-manager.md runs: its async helpers and its test."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert 4 <= len(blocks)
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own guide

    _add_keys(fake, 1)
    sa_fieldcrypt.configure(provider=_provider(fake))

    async def run_app() -> None:
        await namespace["warm_keys"]()
        refresher = asyncio.create_task(namespace["keep_keys_fresh"](every=0.01))
        try:
            async with asyncio.timeout(10):
                while fake.call_count("GetSecret") < 3:
                    await asyncio.sleep(0.01)
        finally:
            refresher.cancel()

    asyncio.run(run_app())
    assert ("v1",) == current_keyring().ids
    namespace["test_new_keys_do_not_encrypt_yet"](fake)


# -- failing safe: versions load one by one, the alias alone names the primary, staleness --


def _skips(number: int, secret: str = SECRET) -> int:
    return metrics.snapshot().skipped_versions.get(f"{secret}/versions/{number}", 0)


def test_a_malformed_version_among_good_ones_is_skipped(
    fake: FakeSecretManager, caplog: pytest.LogCaptureFixture
) -> None:
    """A version that is not a key is left out, logged and counted; the good ones load."""
    keys = _add_keys(fake, 1)
    fake.add_version(SECRET, MALFORMED)
    fake.add_version(SECRET, generate_key("aes-gcm-siv").encode())
    fake.set_alias(SECRET, "fieldcrypt-primary", 1)
    before = _skips(2)
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        ring = _provider(fake).load()
    assert (("v3", "v1"), "v1") == (ring.ids, ring.primary.id)
    assert keys[0] == ring.primary.export()
    assert 1 == _skips(2) - before
    assert "version 2" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_checksum_mismatch_skips_only_that_version(fake: FakeSecretManager) -> None:
    """A version whose payload fails its CRC32C check is skipped; the others load."""
    _add_keys(fake, 3)
    fake.set_alias(SECRET, "fieldcrypt-primary", 3)
    fake.corrupt_checksum(SECRET, 2)
    before = _skips(2)
    assert ("v3", "v1") == _provider(fake).load().ids
    assert 1 == _skips(2) - before


def test_aes_gcm_siv_versions_load_beside_fernet_ones(fake: FakeSecretManager) -> None:
    """aes-gcm-siv versions are keys like fernet ones: a promoted one encrypts, both decrypt."""
    provider = _provider(fake)
    provider.add_key()
    provider.add_key(kind="aes-gcm-siv")
    old_token = encrypt(provider.load(), b"ada@example.com", context="crm.customers.email")
    provider.promote(2)
    ring = provider.load()
    assert (("aes-gcm-siv", "fernet"), "v2") == (tuple(k.kind for k in ring), ring.primary.id)
    new_token = encrypt(ring, b"bob@example.com", context="crm.customers.email")
    assert new_token.startswith("fc1:v2:")
    for token, plaintext in ((old_token, b"ada@example.com"), (new_token, b"bob@example.com")):
        assert plaintext == decrypt(ring, token, context="crm.customers.email")


@pytest.mark.parametrize("damage", ["malformed", "checksum"])
def test_a_primary_that_cannot_load_fails_the_load(fake: FakeSecretManager, damage: str) -> None:
    """When the alias names a version that cannot be read as a key, the load fails, saying so."""
    _add_keys(fake, 1)
    if damage == "malformed":
        fake.add_version(SECRET, MALFORMED)
    else:
        _add_keys(fake, 1)
        fake.corrupt_checksum(SECRET, 2)
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    with pytest.raises(
        KeyProviderError, match=r"names version 2, which cannot be read as a key: .*keys promote"
    ) as info:
        _provider(fake).load()
    assert "hunter2" not in str(info.value)


def test_no_alias_with_two_enabled_versions_fails_the_load(fake: FakeSecretManager) -> None:
    """Without the alias, two enabled versions are refused: nobody guesses the encrypting key."""
    _add_keys(fake, 2)
    with pytest.raises(KeyProviderError) as info:
        _provider(fake).load()
    assert (
        f"Secret Manager secret {SECRET!r} has 2 enabled versions and no version alias "
        "'fieldcrypt-primary' naming the one that encrypts, so no key is trusted to encrypt: "
        "name the version that should with `fieldcrypt keys promote VERSION`"
    ) == str(info.value)


def test_alias_on_a_disabled_version_fails_the_load(fake: FakeSecretManager) -> None:
    """An alias naming a disabled version fails the load instead of falling back to the newest."""
    _add_keys(fake, 3)
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    fake.set_state(SECRET, 2, "DISABLED")
    with pytest.raises(KeyProviderError) as info:
        _provider(fake).load()
    assert (
        f"Secret Manager secret {SECRET!r}: the version alias 'fieldcrypt-primary' names "
        "version 2, which is not enabled, so no key is trusted to encrypt: name the version "
        "that should with `fieldcrypt keys promote VERSION`"
    ) == str(info.value)


def test_a_single_enabled_version_without_alias_is_primary(fake: FakeSecretManager) -> None:
    """With one enabled version and no alias, that version encrypts: there is nothing to guess."""
    _add_keys(fake, 2)
    fake.set_state(SECRET, 1, "DISABLED")
    assert ("v2", ("v2",)) == (_provider(fake).load().primary.id, _provider(fake).load().ids)


def test_an_added_version_is_not_trusted_without_the_alias(fake: FakeSecretManager) -> None:
    """A version added by hand to a secret without alias never becomes the encrypting key."""
    _add_keys(fake, 1)
    clock = FakeClock()
    cache = KeyCache(_provider(fake, cache_ttl=60), clock=clock)
    assert "v1" == cache.get().primary.id
    fake.add_version(SECRET, generate_key().encode())  # by someone allowed to add versions
    clock.now += 61
    assert "v1" == cache.get().primary.id  # the refresh failed; v1 still encrypts
    assert "v2" not in cache.get()


def _revoked_token(
    fake: FakeSecretManager, clock: FakeClock, secret: str = SECRET, **kwargs: Any
) -> tuple[Any, str]:
    """A cache holding v1 (primary) and v2, and a token under v2, which is then disabled."""
    provider = GoogleSecretManagerKeyProvider(secret, client=fake.client(), cache_ttl=300, **kwargs)
    provider.add_key()
    provider.add_key()
    cache = KeyCache(provider, clock=clock)
    token = encrypt(cache.get().with_primary("v2"), b"ada@example.com")
    fake.set_state(secret, 2, "DISABLED")
    return cache, token


@pytest.mark.parametrize("hours", [1, 24, 720])
def test_a_disabled_version_stops_decrypting_despite_a_malformed_version(
    fake: FakeSecretManager, hours: int
) -> None:
    """A revoked version stops decrypting at the next refresh, even with a bad version present."""
    clock = FakeClock()
    cache, token = _revoked_token(fake, clock)
    fake.add_version(SECRET, MALFORMED)
    clock.now += hours * 3600
    with pytest.raises(DecryptionError):
        decrypt(cache.get(), token)
    assert ("v1",) == cache.get().ids


def test_an_outage_past_max_stale_stops_serving_keys(
    fake: FakeSecretManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Through an outage old keys serve for max_stale seconds, counted; then loading fails."""
    # A secret of its own: the age gauge is the oldest of all live caches of one secret.
    secret = fake.create_secret("projects/test/secrets/stale-keys")
    clock = FakeClock()
    # A timeout long enough for the client to reconnect once the fake is back.
    cache, token = _revoked_token(fake, clock, secret, max_stale=3600, timeout=2)
    fake.stop()
    failures = metrics.snapshot().key_load_failures.get(secret, 0)
    clock.now += 301
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        assert b"ada@example.com" == decrypt(cache.get(), token)  # stale, within max_stale
    assert "still serving" in caplog.text
    assert 1 == metrics.snapshot().key_load_failures.get(secret, 0) - failures
    assert 301 == metrics.snapshot().key_cache_age[secret]
    clock.now += 3600 - 301
    with pytest.raises(KeyProviderError) as info:
        cache.get()
    # A stopped fake refuses connections (UNAVAILABLE); on a loaded machine the 2 s may run
    # out first. Either way the message names the outage.
    last_failure = {
        "UNAVAILABLE": "Secret Manager could not be reached: check the network path to it",
        "DEADLINE_EXCEEDED": "Secret Manager did not answer within the 2 s the whole "
        "operation may take (FIELDCRYPT_GCP_TIMEOUT)",
    }
    assert str(info.value) in {
        f"key provider GoogleSecretManagerKeyProvider ({secret}): the keys were last loaded "
        "3600 s ago, longer than max_stale (3600 s) allows, and refreshing them failed, so "
        "they are no longer served; fix what the last failure names, and the next load that "
        f"succeeds serves keys again (last failure: Secret Manager secret {secret!r}: could "
        f"not read the keys ({code}); {hint})"
        for code, hint in last_failure.items()
    }
    calls = len(fake.calls)
    clock.now += 1  # within min_refresh_interval of the failure: no new attempt
    with pytest.raises(KeyProviderError, match="no longer served"):
        cache.get()
    assert calls == len(fake.calls)

    fake.start()
    clock.now += 10
    assert ("v1",) == cache.get().ids
    with pytest.raises(DecryptionError):
        decrypt(cache.get(), token)
    assert 0 == metrics.snapshot().key_cache_age[secret]


@pytest.mark.parametrize("hours", [1, 24, 720])
def test_a_disabled_version_stops_decrypting_once_the_outage_outlasts_max_stale(
    fake: FakeSecretManager, hours: int
) -> None:
    """By default (24 h) a revoked key decrypts through an outage for a day at most."""
    clock = FakeClock()
    cache, token = _revoked_token(fake, clock, timeout=0.5)
    fake.stop()
    clock.now += hours * 3600
    if hours < 24:
        assert b"ada@example.com" == decrypt(cache.get(), token)
    else:
        with pytest.raises(KeyProviderError, match="no longer served"):
            decrypt(cache.get(), token)


def test_max_stale_none_serves_old_keys_through_any_outage(fake: FakeSecretManager) -> None:
    """max_stale=None, asked for explicitly, keeps the last keys however long the outage."""
    clock = FakeClock()
    cache, token = _revoked_token(fake, clock, max_stale=None, timeout=0.5)
    fake.stop()
    clock.now += 720 * 3600
    assert b"ada@example.com" == decrypt(cache.get(), token)


# -- keys wrapped by Cloud KMS -----------------------------------------------------------------

KEK = "projects/test/locations/global/keyRings/app/cryptoKeys/fieldcrypt"


@pytest.fixture
def kms_fake(fake_kms: Any) -> Any:
    """A fake Cloud KMS with the key-encrypting key created (version 1 primary)."""
    fake_kms.create_key(KEK)
    return fake_kms


def _wrapping_provider(fake: FakeSecretManager, kms_fake: Any, **kwargs: Any) -> Any:
    return _provider(fake, kms_client=kms_fake.client(), **kwargs)


def test_unwrapping_shares_the_load_deadline(fake: FakeSecretManager, kms_fake: Any) -> None:
    """Secret Manager reads and KMS unwraps of one load share its timeout; KMS is named.

    Each Decrypt alone answers within the timeout; the two together do not, so the load fails
    as an outage (the cache would serve the previous keys), not after twice its timeout.
    """
    operator = _wrapping_provider(fake, kms_fake)
    operator.add_key(wrap=KEK)
    operator.add_key(wrap=KEK)
    provider = _wrapping_provider(fake, kms_fake, timeout=1.0)
    kms_fake.delay_next("Decrypt", 0.7, times=2)
    with pytest.raises(KeyProviderError, match=r"Cloud KMS key .*could not unwrap") as caught:
        provider.load()
    assert "DEADLINE_EXCEEDED" in str(caught.value)
    assert "Secret Manager did not answer" not in str(caught.value)
    assert {"v1", "v2"} == set(provider.load().ids)


def test_a_wrapped_version_is_a_key_that_carries_its_id(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """add_key(wrap=) stores 'v<N>:wrapped:...', no key in plaintext; it loads as key v<N>."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key()
    added = provider.add_key(wrap=KEK, kind="aes-gcm-siv")
    assert (2, KEK) == (added.number, added.wrapped_by)
    payload = fake.payload(SECRET, 2) or b""
    assert payload.startswith(f"v2:wrapped:aes-gcm-siv:{KEK}:".encode())
    ring = provider.load()
    assert ("v2", "v1") == ring.ids
    assert ring.get("v2").wrapped is not None
    assert ring.get("v1").wrapped is None
    assert 1 == kms_fake.call_count("Decrypt")


def test_a_wrapped_payload_moved_to_another_version_keeps_its_id(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """A wrapped entry copied into a new version loads under the id it carries, once."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key(wrap=KEK)
    fake.add_version(SECRET, fake.payload(SECRET, 1) or b"")
    fake.set_alias(SECRET, "fieldcrypt-primary", 2)
    ring = provider.load()
    assert ("v1",) == ring.ids
    assert "v1" == ring.primary.id


def test_a_relabelled_wrapped_version_is_skipped(
    fake: FakeSecretManager, kms_fake: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrapped payload edited to another key id does not unwrap: that version is skipped."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key()
    provider.add_key(wrap=KEK)
    relabelled = (fake.payload(SECRET, 2) or b"").replace(b"v2:", b"v9:", 1)
    fake.add_version(SECRET, relabelled)
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        ring = provider.load()
    assert ("v2", "v1") == ring.ids
    assert "relabelled or corrupted" in caplog.text
    assert relabelled.decode().rsplit(":", 1)[-1] not in caplog.text


def test_a_kms_outage_fails_the_whole_load(fake: FakeSecretManager, kms_fake: Any) -> None:
    """KMS unreachable: the load fails (the cache keeps the old keys), no key is left out."""
    provider = _wrapping_provider(fake, kms_fake, timeout=0.5)
    provider.add_key()
    provider.add_key(wrap=KEK)
    kms_fake.stop()
    with pytest.raises(KeyProviderError, match=r"key 'v2'.*could not unwrap"):
        provider.load()


def test_a_disabled_kms_version_under_the_primary_fails_the_load(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """The primary's wrapping version disabled: the load fails, naming the version's state."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key(wrap=KEK)
    kms_fake.rotate(KEK)
    kms_fake.set_state(KEK, 1, "DISABLED")
    with pytest.raises(
        KeyProviderError, match=r"cryptoKeyVersions/1', which wrapped this key, is DISABLED"
    ):
        provider.load()


def test_a_model_reads_and_writes_through_wrapped_secret_manager_keys(
    fake: FakeSecretManager, kms_fake: Any, engine: Engine, no_default_keys: None
) -> None:
    """Rows round-trip through a Secret Manager key wrapped by KMS, and survive a rewrap."""

    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "fc_gcp_wrapped_customers"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        email: Mapped[str] = mapped_column(EncryptedText())

    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        operator = _wrapping_provider(fake, kms_fake)
        operator.add_key(wrap=KEK)
        operator.add_key(wrap=KEK, kind="aes-gcm-siv")
        sa_fieldcrypt.configure(provider=_wrapping_provider(fake, kms_fake))
        with Session(engine) as session:
            session.add(Customer(id=1, email="v1@example.com"))
            session.commit()
        operator.promote(2)
        sa_fieldcrypt.configure(provider=_wrapping_provider(fake, kms_fake))
        with Session(engine) as session:
            session.add(Customer(id=2, email="v2@example.com"))
            session.commit()
        with engine.connect() as conn:
            before = conn.execute(text("SELECT id, email FROM fc_gcp_wrapped_customers")).all()
        assert {"fc1:v1", "fc1:v2"} == {token[:6] for _, token in before}

        kms_fake.rotate(KEK)
        done = operator.rewrap()
        assert [("v1", 1, 3), ("v2", 2, 4)] == [(m.key_id, m.old, m.new) for m in done.moved]
        kms_fake.set_state(KEK, 1, "DISABLED")  # only the new wrappings open now
        assert {"fieldcrypt-primary": 4} == fake.aliases(SECRET)

        sa_fieldcrypt.configure(provider=_wrapping_provider(fake, kms_fake))
        with engine.connect() as conn:
            after = conn.execute(text("SELECT id, email FROM fc_gcp_wrapped_customers")).all()
        assert sorted(before) == sorted(after)
        with Session(engine) as session:
            assert "v1@example.com" == session.get(Customer, 1).email
            assert "v2@example.com" == session.get(Customer, 2).email
        assert {"v2", "v1"} == set(current_keyring().ids)
        assert "v2" == current_keyring().primary.id
    finally:
        Base.metadata.drop_all(engine)


def test_rewrap_disables_old_versions_and_is_idempotent(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """rewrap moves wrapped keys only, disables their old versions, and then has nothing to do."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key()  # v1, plain: left as it is
    provider.add_key(wrap=KEK)  # v2
    kms_fake.rotate(KEK)
    done = provider.rewrap()
    assert [("v2", 2, 3)] == [(m.key_id, m.old, m.new) for m in done.moved]
    states = {v.number: (v.state, v.key_id) for v in provider.describe().versions}
    assert {3: ("ENABLED", "v2"), 2: ("DISABLED", "v2"), 1: ("ENABLED", "v1")} == states
    kms_fake.calls.clear()
    again = provider.rewrap()
    assert ((), ("v2",)) == (again.moved, again.unchanged)
    assert ["Decrypt"] == kms_fake.calls


def test_add_key_wrap_refuses_a_version_number_it_did_not_expect(
    fake: FakeSecretManager, kms_fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another version lands first, the wrapped one is disabled and the add fails."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key()
    real_wrap = provider._wrapper.wrap

    def racing_wrap(key: Any, kms_key: str, **options: Any) -> Any:
        fake.add_version(SECRET, generate_key().encode())  # someone else adds v2
        return real_wrap(key, kms_key, **options)

    monkeypatch.setattr(provider._wrapper, "wrap", racing_wrap)
    with pytest.raises(KeyProviderError, match="another version was added"):
        provider.add_key(wrap=KEK)
    assert "DISABLED" == {v.number: v.state for v in provider.describe().versions}[3]


def test_rewrap_with_wrap_turns_plaintext_versions_into_wrapped_ones(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """rewrap(wrap=) moves each plaintext key to a wrapped version with the same id."""
    provider = _wrapping_provider(fake, kms_fake)
    keys = [provider.add_key(), provider.add_key()]
    provider.promote(2)
    before = provider.load()
    done = provider.rewrap(wrap=KEK)
    assert [("v1", 1, 3), ("v2", 2, 4)] == [(m.key_id, m.old, m.new) for m in done.moved]
    after = provider.load()
    assert "v2" == after.primary.id
    assert [True, True] == [
        after.get(k.key_id).shares_secret_with(before.get(k.key_id)) for k in keys
    ]
    assert all(key.wrapped is not None for key in after)
    assert {"fieldcrypt-primary": 4} == fake.aliases(SECRET)


def test_a_refused_wrapped_copy_is_not_stood_in_for_by_a_newer_copy(
    fake: FakeSecretManager, kms_fake: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """While the oldest copy of a key does not unwrap, no newer copy is read: revoking works."""
    other = kms_fake.create_key(KEK.replace("fieldcrypt", "other"))
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key(wrap=KEK)  # v1, wrapped and primary
    key = provider.load().get("v1")
    # A copy of v1 under another KMS key, which still opens.
    copy = KmsKeyWrapper(client=kms_fake.client()).wrap(key, other).entry.encode("ascii")
    fake.add_version(SECRET, copy)
    assert ("v1",) == provider.load().ids  # both copies open: one key
    kms_fake.set_state(KEK, 1, "DISABLED")
    with caplog.at_level(logging.WARNING), pytest.raises(KeyProviderError, match="is DISABLED"):
        provider.load()
    assert "version 2 is skipped, so key v1 is not read from it" in caplog.text
    assert "whose wrapped copy in the older version 1 does not unwrap" in caplog.text


def test_a_newer_version_that_does_not_unwrap_takes_nothing(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """A version added under an existing key id that does not unwrap (garbage, another KMS
    key) is skipped alone: whoever may only add versions cannot remove a key."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key(wrap=KEK)
    provider.add_key(wrap=KEK)
    provider.promote(2)
    before = provider.load()
    bogus = WrappedKey("v2", "fernet", KEK, b"not a ciphertext of this key").entry
    fake.add_version(SECRET, bogus.encode("ascii"))
    after = provider.load()
    assert ("v2", "v1") == after.ids
    assert after.primary.shares_secret_with(before.primary)
    described = provider.describe()
    assert described.problem is None
    assert "its wrapped key does not unwrap" in (described.versions[0].skipped or "")
    kms_fake.rotate(KEK)
    done = provider.rewrap()  # v2 is contested: left alone, and said so
    assert [("v1", 1, 4)] == [(m.key_id, m.old, m.new) for m in done.moved]
    assert 3 in done.skipped
    assert provider.load().get("v2").shares_secret_with(before.get("v2"))


def test_a_newer_version_cannot_take_the_id_of_an_older_key(
    fake: FakeSecretManager, kms_fake: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A version added under an existing key id with another key is skipped; the older stays."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key()
    provider.add_key()
    provider.promote(2)
    before = provider.load()
    rogue = parse_key(generate_key(), key_id="v1")
    fake.add_version(SECRET, _wrapped_entry(kms_fake, rogue))
    with caplog.at_level(logging.WARNING):
        after = provider.load()
    assert after.get("v1").shares_secret_with(before.get("v1"))
    assert "which the older version 1 holds with another key" in caplog.text


def _wrapped_entry(kms_fake: Any, key: Key) -> bytes:
    """``key``'s wrapped entry, carrying its id, as `keys add --wrap` writes it."""
    from sa_fieldcrypt.providers.kms import KmsKeyWrapper

    return KmsKeyWrapper(client=kms_fake.client()).wrap(key, KEK).entry.encode("ascii")


def test_rewrap_keeps_the_key_the_oldest_version_holds(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """rewrap decides which version holds an id as loads do: while a newer version holds the
    id with another key, both are reported and left alone (moving the older one would hand
    the id to the newer), and the newer is never wrapped in its place."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key(wrap=KEK)
    before = provider.load()
    rogue = parse_key(generate_key(), key_id="v1")
    fake.add_version(SECRET, _wrapped_entry(kms_fake, rogue))
    kms_fake.rotate(KEK)
    done = provider.rewrap()
    assert ((), ()) == (done.moved, done.unchanged)
    assert "which the older version 1 holds with another key" in done.skipped[2]
    after = provider.load()
    assert after.get("v1").shares_secret_with(before.get("v1"))
    assert not after.get("v1").shares_secret_with(rogue)
    fake.set_state(SECRET, 2, "DISABLED")  # what the message says to do
    assert [("v1", 1, 3)] == [(m.key_id, m.old, m.new) for m in provider.rewrap().moved]
    assert provider.load().get("v1").shares_secret_with(before.get("v1"))


def test_rewrap_finishes_an_interrupted_wrap(fake: FakeSecretManager, kms_fake: Any) -> None:
    """A plaintext copy left enabled beside its wrapped copy (a rewrap --wrap cut short) is
    disabled by the next rewrap, which needs no --wrap for it."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key()
    key = provider.load().get("v1")
    fake.add_version(SECRET, _wrapped_entry(kms_fake, key))  # the copy, not yet switched to
    done = provider.rewrap()
    assert [("v1", 1, 2, True)] == [(m.key_id, m.old, m.new, m.plaintext) for m in done.moved]
    assert ("v1",) == done.unchanged
    assert {1: "DISABLED", 2: "ENABLED"} == {
        v.number: v.state for v in provider.describe().versions
    }
    assert {"fieldcrypt-primary": 2} == fake.aliases(SECRET)
    assert provider.load().get("v1").shares_secret_with(key)


def test_describe_does_not_vouch_for_a_version_it_cannot_compare(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """An operator who may open one KMS key but not another is told what is not checked,
    rather than shown as loading a version instances skip."""
    rogue_kek = kms_fake.create_key(KEK.replace("fieldcrypt", "rogue"))
    operator = _wrapping_provider(fake, kms_fake)
    operator.add_key(wrap=KEK)
    operator.add_key(wrap=KEK)
    operator.promote(2)
    rogue = parse_key(generate_key(), key_id="v1")
    entry = KmsKeyWrapper(client=kms_fake.client()).wrap(rogue, rogue_kek).entry
    fake.add_version(SECRET, entry.encode("ascii"))
    assert ("v2", "v1") == operator.load().ids  # instances skip version 3
    kms_fake.deny(KEK)
    described = operator.describe()
    assert described.problem is None
    assert {1, 2, 3} == set(described.unchecked)
    assert "as the older version 1 does, and whether with the same key" in described.unchecked[3]
    assert "needs roles/cloudkms.cryptoKeyDecrypter on " + KEK in described.unchecked[1]
    assert all(version.skipped is None for version in described.versions)


def test_rewrap_changes_nothing_while_a_version_cannot_be_read(
    fake: FakeSecretManager, kms_fake: Any
) -> None:
    """A version whose key id cannot be known (its payload is no key) stops rewrap before
    it changes anything: no copy is safe to disable without knowing what that version holds."""
    provider = _wrapping_provider(fake, kms_fake)
    provider.add_key(wrap=KEK)
    fake.add_version(SECRET, b"not a key")
    kms_fake.rotate(KEK)
    before = [(v.number, v.state) for v in provider.describe().versions]
    with pytest.raises(KeyProviderError, match=r"version 2 cannot be read .*Nothing was changed"):
        provider.rewrap()
    assert before == [(v.number, v.state) for v in provider.describe().versions]
    assert {"fieldcrypt-primary": 1} == fake.aliases(SECRET)

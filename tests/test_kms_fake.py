"""The Cloud KMS fake, driven through the real client over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

fake_module = pytest.importorskip("sa_fieldcrypt.testing.kms", reason="needs the gcp extra")

import google_crc32c  # noqa: E402
from google.api_core import exceptions as api_exceptions  # noqa: E402
from google.cloud import kms_v1  # noqa: E402

FakeKms = fake_module.FakeKms
State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
KEY = "projects/test/locations/global/keyRings/ring/cryptoKeys/key"
# Explicit and short: the client's own defaults retry for up to 60 s.
FAST = {"timeout": 5.0, "retry": None}


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[Any]:
    """One fake for the property test, with KEY created."""
    with FakeKms() as fake:
        fake.create_key(KEY)
        yield fake


@pytest.fixture
def fake(fake_kms: Any) -> Any:
    """A fresh fake with KEY created."""
    fake_kms.create_key(KEY)
    return fake_kms


@pytest.fixture
def client(fake: Any) -> kms_v1.KeyManagementServiceClient:
    """The real client, connected to the fake."""
    return fake.client()


def _encrypt(client: Any, plaintext: bytes, aad: bytes = b"", name: str = KEY) -> Any:
    return client.encrypt(
        request={"name": name, "plaintext": plaintext, "additional_authenticated_data": aad},
        **FAST,
    )


def _decrypt(client: Any, ciphertext: bytes, aad: bytes = b"") -> Any:
    return client.decrypt(
        request={"name": KEY, "ciphertext": ciphertext, "additional_authenticated_data": aad},
        **FAST,
    )


@settings(max_examples=20, deadline=None)
@given(plaintext=st.binary(max_size=300), aad=st.binary(max_size=50))
def test_encrypt_then_decrypt_gives_the_plaintext(
    shared_fake: Any, plaintext: bytes, aad: bytes
) -> None:
    """Any plaintext and associated data round-trip, with matching CRC32C fields."""
    client = shared_fake.client()
    encrypted = _encrypt(client, plaintext, aad)
    assert google_crc32c.value(encrypted.ciphertext) == encrypted.ciphertext_crc32c
    decrypted = _decrypt(client, encrypted.ciphertext, aad)
    assert plaintext == decrypted.plaintext
    assert google_crc32c.value(plaintext) == decrypted.plaintext_crc32c


def test_other_associated_data_does_not_decrypt(client: Any) -> None:
    """Decrypt with associated data other than Encrypt's is INVALID_ARGUMENT."""
    encrypted = _encrypt(client, b"key", b"k1")
    with pytest.raises(api_exceptions.InvalidArgument):
        _decrypt(client, encrypted.ciphertext, b"k2")


def test_checksums_sent_are_verified(client: Any) -> None:
    """A request checksum is verified: a right one is flagged verified, a wrong one refused."""
    request = {
        "name": KEY,
        "plaintext": b"key",
        "plaintext_crc32c": google_crc32c.value(b"key"),
        "additional_authenticated_data": b"aad",
        "additional_authenticated_data_crc32c": google_crc32c.value(b"aad"),
    }
    response = client.encrypt(request=request, **FAST)
    assert (True, True) == (
        response.verified_plaintext_crc32c,
        response.verified_additional_authenticated_data_crc32c,
    )
    assert (False, False) == (
        _encrypt(client, b"key").verified_plaintext_crc32c,
        _encrypt(client, b"key").verified_additional_authenticated_data_crc32c,
    )
    with pytest.raises(api_exceptions.InvalidArgument, match="plaintext_crc32c"):
        client.encrypt(request={**request, "plaintext_crc32c": 1}, **FAST)


def test_the_ciphertext_names_its_version_and_rotation_moves_the_primary(
    fake: Any, client: Any
) -> None:
    """After a rotation Encrypt uses the new primary, and old ciphertext still decrypts."""
    old = _encrypt(client, b"key").ciphertext
    assert 2 == fake.rotate(KEY)
    new = _encrypt(client, b"key")
    assert f"{KEY}/cryptoKeyVersions/2" == new.name
    assert (1, 2) == (fake.version_of(old), fake.version_of(new.ciphertext))
    assert (False, True) == (
        _decrypt(client, old).used_primary,
        _decrypt(client, new.ciphertext).used_primary,
    )


@pytest.mark.parametrize("state", ["DISABLED", "DESTROY_SCHEDULED", "DESTROYED"])
def test_an_unusable_version_fails_with_its_state(fake: Any, client: Any, state: str) -> None:
    """Decrypting under a version that is not ENABLED fails FAILED_PRECONDITION, naming it."""
    ciphertext = _encrypt(client, b"key").ciphertext
    fake.rotate(KEY)
    fake.set_state(KEY, 1, state)
    with pytest.raises(api_exceptions.FailedPrecondition, match=f"current state is: {state}"):
        _decrypt(client, ciphertext)


def test_destroyed_is_final(fake: Any) -> None:
    """A destroyed version cannot be enabled again, nor restored."""
    fake.rotate(KEY)
    fake.set_state(KEY, 1, "DESTROYED")
    for state in ("ENABLED", "DISABLED", "DESTROY_SCHEDULED", "DESTROYED"):
        with pytest.raises(ValueError, match="current state is: DESTROYED"):
            fake.set_state(KEY, 1, state)


def test_destruction_is_scheduled_and_restored_as_the_service_does(fake: Any, client: Any) -> None:
    """Destroy schedules; restore brings the version back DISABLED, never ENABLED at once."""
    ciphertext = _encrypt(client, b"key").ciphertext
    fake.rotate(KEY)
    name = f"{KEY}/cryptoKeyVersions/1"
    scheduled = client.destroy_crypto_key_version(request={"name": name}, **FAST)
    assert State.DESTROY_SCHEDULED == scheduled.state
    assert scheduled.destroy_time is not None
    with pytest.raises(api_exceptions.FailedPrecondition, match="DESTROY_SCHEDULED"):
        _decrypt(client, ciphertext)
    with pytest.raises(api_exceptions.FailedPrecondition, match="cannot become ENABLED"):
        client.update_crypto_key_version(
            request={
                "crypto_key_version": {"name": name, "state": State.ENABLED},
                "update_mask": {"paths": ["state"]},
            },
            **FAST,
        )
    with pytest.raises(api_exceptions.FailedPrecondition, match="cannot become DISABLED"):
        client.update_crypto_key_version(
            request={
                "crypto_key_version": {"name": name, "state": State.DISABLED},
                "update_mask": {"paths": ["state"]},
            },
            **FAST,
        )
    with pytest.raises(ValueError, match="cannot become ENABLED"):
        fake.set_state(KEY, 1, "ENABLED")
    with pytest.raises(api_exceptions.FailedPrecondition, match="cannot become"):
        client.destroy_crypto_key_version(request={"name": name}, **FAST)

    restored = client.restore_crypto_key_version(request={"name": name}, **FAST)
    assert State.DISABLED == restored.state
    with pytest.raises(api_exceptions.FailedPrecondition, match="not scheduled"):
        client.restore_crypto_key_version(request={"name": name}, **FAST)
    fake.set_state(KEY, 1, "ENABLED")
    assert b"key" == _decrypt(client, ciphertext).plaintext


def test_delay_next_makes_a_call_late(fake: Any, client: Any) -> None:
    """A delayed call ends with DEADLINE_EXCEEDED when the client's deadline is shorter."""
    ciphertext = _encrypt(client, b"key").ciphertext
    fake.delay_next("Decrypt", 1.0)
    with pytest.raises(api_exceptions.DeadlineExceeded):
        client.decrypt(request={"name": KEY, "ciphertext": ciphertext}, timeout=0.2, retry=None)
    assert b"key" == _decrypt(client, ciphertext).plaintext


def test_versions_are_managed_over_grpc(client: Any) -> None:
    """CreateCryptoKeyVersion, UpdateCryptoKeyPrimaryVersion and UpdateCryptoKeyVersion work."""
    created = client.create_crypto_key_version(request={"parent": KEY}, **FAST)
    assert f"{KEY}/cryptoKeyVersions/2" == created.name
    assert State.ENABLED == created.state
    key = client.update_crypto_key_primary_version(
        request={"name": KEY, "crypto_key_version_id": "2"}, **FAST
    )
    assert created.name == key.primary.name
    disabled = client.update_crypto_key_version(
        request={
            "crypto_key_version": {"name": f"{KEY}/cryptoKeyVersions/1", "state": State.DISABLED},
            "update_mask": {"paths": ["state"]},
        },
        **FAST,
    )
    assert State.DISABLED == disabled.state
    got = client.get_crypto_key_version(request={"name": f"{KEY}/cryptoKeyVersions/1"}, **FAST)
    assert State.DISABLED == got.state
    assert created.name == client.get_crypto_key(request={"name": KEY}, **FAST).primary.name


def test_unknown_keys_are_not_found(client: Any) -> None:
    """A key that does not exist is NOT_FOUND."""
    with pytest.raises(api_exceptions.NotFound):
        _encrypt(client, b"key", name=KEY + "-missing")


def test_unimplemented_methods_say_so(client: Any) -> None:
    """Methods the fake does not implement answer UNIMPLEMENTED, not a wrong success."""
    with pytest.raises(api_exceptions.MethodNotImplemented):
        client.list_key_rings(request={"parent": "projects/test/locations/global"}, **FAST)


def test_corrupt_next_damages_one_response(fake: Any, client: Any) -> None:
    """corrupt_next damages exactly the next response of the method."""
    fake.corrupt_next("Decrypt", "plaintext_crc32c")
    ciphertext = _encrypt(client, b"key").ciphertext
    damaged, fine = _decrypt(client, ciphertext), _decrypt(client, ciphertext)
    assert google_crc32c.value(b"key") != damaged.plaintext_crc32c
    assert google_crc32c.value(b"key") == fine.plaintext_crc32c
    with pytest.raises(ValueError, match="cannot have"):
        fake.corrupt_next("Encrypt", "plaintext")


def test_stop_and_start_keep_the_state(fake: Any) -> None:
    """An outage keeps the keys: after start(), old ciphertext decrypts on the same port."""
    client = fake.client()
    ciphertext = _encrypt(client, b"key").ciphertext
    target = fake.target
    fake.stop()
    with pytest.raises(api_exceptions.ServiceUnavailable):
        _decrypt(client, ciphertext)
    fake.start()
    assert target == fake.target
    assert b"key" == _decrypt(fake.client(), ciphertext).plaintext

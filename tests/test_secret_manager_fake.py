"""The Secret Manager fake, driven through the real client over gRPC."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

secret_manager = pytest.importorskip(
    "sa_fieldcrypt.testing.secret_manager", reason="needs the gcp extra"
)

import google_crc32c  # noqa: E402
import grpc  # noqa: E402
from google.api_core import exceptions as api_exceptions  # noqa: E402
from google.cloud import secretmanager_v1  # noqa: E402
from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (  # noqa: E402
    SecretManagerServiceGrpcAsyncIOTransport,
)

FakeSecretManager = secret_manager.FakeSecretManager
State = secretmanager_v1.SecretVersion.State
SECRET = "projects/test/secrets/keys"
# Explicit and short: the client's own defaults retry for up to 60 s.
FAST = {"timeout": 5.0, "retry": None}
_secret_ids = itertools.count()


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeSecretManager]:
    """One fake for the property tests, which create a secret per example."""
    with FakeSecretManager() as fake:
        yield fake


@pytest.fixture
def fake(fake_secret_manager: FakeSecretManager) -> FakeSecretManager:
    """A fresh fake per test."""
    return fake_secret_manager


@pytest.fixture
def client(fake: FakeSecretManager) -> secretmanager_v1.SecretManagerServiceClient:
    """The real client, connected to the fake."""
    return fake.client()


def _new_secret(client: secretmanager_v1.SecretManagerServiceClient, secret_id: str) -> str:
    created = client.create_secret(
        request={
            "parent": "projects/test",
            "secret_id": secret_id,
            "secret": {"replication": {"automatic": {}}},
        },
        **FAST,
    )
    return str(created.name)


def _add(client: secretmanager_v1.SecretManagerServiceClient, secret: str, data: bytes) -> int:
    version = client.add_secret_version(
        request={"parent": secret, "payload": {"data": data}}, **FAST
    )
    return int(version.name.rsplit("/", 1)[1])


def _listed(
    client: secretmanager_v1.SecretManagerServiceClient, secret: str, filter_text: str = ""
) -> list[tuple[int, str]]:
    pager = client.list_secret_versions(request={"parent": secret, "filter": filter_text}, **FAST)
    return [(int(v.name.rsplit("/", 1)[1]), v.state.name) for v in pager]


def test_version_numbers_start_at_one_and_grow(
    client: secretmanager_v1.SecretManagerServiceClient,
) -> None:
    """AddSecretVersion numbers versions 1, 2, 3 in order of creation."""
    secret = _new_secret(client, "keys")
    assert [1, 2, 3] == [_add(client, secret, f"data {i}".encode()) for i in range(3)]


def test_latest_is_the_newest_created_whatever_its_state(
    client: secretmanager_v1.SecretManagerServiceClient,
) -> None:
    """`latest` names the newest version even when disabled, so accessing it fails."""
    secret = _new_secret(client, "keys")
    _add(client, secret, b"one")
    _add(client, secret, b"two")
    client.disable_secret_version(request={"name": f"{secret}/versions/2"}, **FAST)
    latest = client.get_secret_version(request={"name": f"{secret}/versions/latest"}, **FAST)
    assert f"{secret}/versions/2" == latest.name
    assert State.DISABLED == latest.state
    with pytest.raises(api_exceptions.FailedPrecondition):
        client.access_secret_version(request={"name": f"{secret}/versions/latest"}, **FAST)


@pytest.mark.parametrize("method", ["enable", "disable", "destroy"])
@pytest.mark.parametrize("ref", ["latest", "primary"])
def test_state_changes_take_numbers_only(
    client: secretmanager_v1.SecretManagerServiceClient,
    fake: FakeSecretManager,
    method: str,
    ref: str,
) -> None:
    """Enable, disable and destroy refuse `latest` and aliases: they work on numbers."""
    secret = _new_secret(client, "keys")
    _add(client, secret, b"one")
    fake.set_alias(secret, "primary", 1)
    call = getattr(client, f"{method}_secret_version")
    with pytest.raises(api_exceptions.InvalidArgument):
        call(request={"name": f"{secret}/versions/{ref}"}, **FAST)


@pytest.mark.parametrize("state", ["DISABLED", "DESTROYED"])
def test_access_to_a_version_not_enabled_is_failed_precondition(
    client: secretmanager_v1.SecretManagerServiceClient, fake: FakeSecretManager, state: str
) -> None:
    """Accessing a disabled or destroyed version fails with FAILED_PRECONDITION."""
    secret = _new_secret(client, "keys")
    _add(client, secret, b"one")
    fake.set_state(secret, 1, state)
    with pytest.raises(api_exceptions.FailedPrecondition):
        client.access_secret_version(request={"name": f"{secret}/versions/1"}, **FAST)


def test_destroyed_is_final(
    client: secretmanager_v1.SecretManagerServiceClient, fake: FakeSecretManager
) -> None:
    """A destroyed version cannot be enabled, disabled or destroyed again; its data is gone."""
    secret = _new_secret(client, "keys")
    _add(client, secret, b"one")
    destroyed = client.destroy_secret_version(request={"name": f"{secret}/versions/1"}, **FAST)
    assert State.DESTROYED == destroyed.state
    assert destroyed.destroy_time is not None
    for method in (
        client.enable_secret_version,
        client.disable_secret_version,
        client.destroy_secret_version,
    ):
        with pytest.raises(api_exceptions.FailedPrecondition):
            method(request={"name": f"{secret}/versions/1"}, **FAST)
    assert fake.payload(secret, 1) is None


def test_list_is_newest_first_and_honours_state_filters(
    client: secretmanager_v1.SecretManagerServiceClient, fake: FakeSecretManager
) -> None:
    """Listing returns newest first; `state:X` terms filter, OR and AND combine them."""
    secret = _new_secret(client, "keys")
    for i in range(5):
        _add(client, secret, f"{i}".encode())
    fake.set_state(secret, 2, "DISABLED")
    fake.set_state(secret, 4, "DESTROYED")
    assert [5, 4, 3, 2, 1] == [n for n, _ in _listed(client, secret)]
    assert [(5, "ENABLED"), (3, "ENABLED"), (1, "ENABLED")] == _listed(
        client, secret, "state:ENABLED"
    )
    assert [4, 2] == [n for n, _ in _listed(client, secret, "state:DISABLED OR state:DESTROYED")]
    assert [] == _listed(client, secret, "state:ENABLED AND state:DISABLED")
    assert [] == _listed(client, secret, "state:ENABLED state:DISABLED")


@pytest.mark.parametrize(
    "filter_text", ["name:keys", "state:GONE", "state:ENABLED OR", "AND state:ENABLED"]
)
def test_unknown_filters_are_refused_not_ignored(
    client: secretmanager_v1.SecretManagerServiceClient, filter_text: str
) -> None:
    """A filter the fake does not understand is INVALID_ARGUMENT, never silently ignored."""
    secret = _new_secret(client, "keys")
    _add(client, secret, b"one")
    with pytest.raises(api_exceptions.InvalidArgument):
        _listed(client, secret, filter_text)


def test_list_pages(client: secretmanager_v1.SecretManagerServiceClient) -> None:
    """page_size splits the listing; the tokens walk it to the end; total_size counts all."""
    secret = _new_secret(client, "keys")
    for i in range(5):
        _add(client, secret, f"{i}".encode())
    pager = client.list_secret_versions(request={"parent": secret, "page_size": 2}, **FAST)
    pages = [[int(v.name.rsplit("/", 1)[1]) for v in page.versions] for page in pager.pages]
    assert [[5, 4], [3, 2], [1]] == pages
    first = client.list_secret_versions(request={"parent": secret, "page_size": 2}, **FAST)
    assert 5 == first.total_size
    filtered = client.list_secret_versions(
        request={"parent": secret, "filter": "state:ENABLED"}, **FAST
    )
    assert 0 == filtered.total_size


def test_foreign_page_tokens_are_refused(
    client: secretmanager_v1.SecretManagerServiceClient,
) -> None:
    """A page token from another listing (or made up) is INVALID_ARGUMENT."""
    secret = _new_secret(client, "keys")
    for i in range(3):
        _add(client, secret, f"{i}".encode())
    first = client.list_secret_versions(request={"parent": secret, "page_size": 1}, **FAST)
    token = first.next_page_token
    assert token
    for request in (
        {"parent": secret, "page_size": 1, "page_token": token, "filter": "state:ENABLED"},
        {"parent": secret, "page_size": 1, "page_token": "not-a-token"},
    ):
        with pytest.raises(api_exceptions.InvalidArgument):
            client.list_secret_versions(request=request, **FAST)


def test_payloads_carry_their_crc32c(
    client: secretmanager_v1.SecretManagerServiceClient,
) -> None:
    """Access returns data_crc32c; a wrong checksum sent with a new version is refused."""
    secret = _new_secret(client, "keys")
    _add(client, secret, b"payload")
    response = client.access_secret_version(request={"name": f"{secret}/versions/1"}, **FAST)
    assert google_crc32c.value(b"payload") == response.payload.data_crc32c
    with pytest.raises(api_exceptions.InvalidArgument):
        client.add_secret_version(
            request={"parent": secret, "payload": {"data": b"x", "data_crc32c": 12345}}, **FAST
        )
    assert [1] == [n for n, _ in _listed(client, secret)]


def test_version_aliases_through_get_and_update_secret(
    client: secretmanager_v1.SecretManagerServiceClient,
) -> None:
    """UpdateSecret with the version_aliases mask replaces the map; access by alias resolves."""
    secret = _new_secret(client, "keys")
    _add(client, secret, b"one")
    _add(client, secret, b"two")
    client.update_secret(
        request={
            "secret": {"name": secret, "version_aliases": {"primary": 1, "other": 2}},
            "update_mask": {"paths": ["version_aliases"]},
        },
        **FAST,
    )
    assert {"primary": 1, "other": 2} == dict(
        client.get_secret(request={"name": secret}, **FAST).version_aliases
    )
    response = client.access_secret_version(request={"name": f"{secret}/versions/primary"}, **FAST)
    assert f"{secret}/versions/1" == response.name
    assert b"one" == response.payload.data
    client.update_secret(
        request={
            "secret": {"name": secret, "version_aliases": {"primary": 2}},
            "update_mask": {"paths": ["version_aliases"]},
        },
        **FAST,
    )
    assert {"primary": 2} == dict(
        client.get_secret(request={"name": secret}, **FAST).version_aliases
    )


@pytest.mark.parametrize(
    ("aliases", "paths"),
    [
        ({"primary": 1}, []),
        ({"primary": 7}, ["version_aliases"]),
        ({"latest": 1}, ["version_aliases"]),
        ({"1st": 1}, ["version_aliases"]),
        ({"primary": 1}, ["replication"]),
    ],
    ids=["no-mask", "missing-version", "reserved-name", "bad-name", "immutable-field"],
)
def test_bad_updates_are_refused(
    client: secretmanager_v1.SecretManagerServiceClient,
    aliases: dict[str, int],
    paths: list[str],
) -> None:
    """UpdateSecret without a mask, with a bad alias or on another field is INVALID_ARGUMENT."""
    secret = _new_secret(client, "keys")
    _add(client, secret, b"one")
    with pytest.raises(api_exceptions.InvalidArgument):
        client.update_secret(
            request={
                "secret": {"name": secret, "version_aliases": aliases},
                "update_mask": {"paths": paths},
            },
            **FAST,
        )


def test_missing_and_duplicate_secrets(
    client: secretmanager_v1.SecretManagerServiceClient,
) -> None:
    """Unknown secrets are NOT_FOUND; creating one twice is ALREADY_EXISTS."""
    with pytest.raises(api_exceptions.NotFound):
        client.get_secret(request={"name": "projects/test/secrets/nope"}, **FAST)
    _new_secret(client, "keys")
    with pytest.raises(api_exceptions.AlreadyExists):
        _new_secret(client, "keys")


def test_stop_and_start_keep_the_state_and_the_port(fake: FakeSecretManager) -> None:
    """After an outage the fake serves the same secrets on the same address."""
    secret = fake.create_secret(SECRET)
    fake.add_version(secret, b"one")
    target = fake.target
    client = fake.client()
    fake.stop()
    with pytest.raises(api_exceptions.ServiceUnavailable):
        client.get_secret(request={"name": secret}, **FAST)
    fake.start()
    assert target == fake.target
    fresh = fake.client()
    assert b"one" == fresh.access_secret_version(name=f"{secret}/versions/1", **FAST).payload.data


def test_injected_failures_and_call_log(fake: FakeSecretManager) -> None:
    """fail_next fails exactly the next calls of one method; calls records every method."""
    secret = fake.create_secret(SECRET)
    fake.add_version(secret, b"one")
    client = fake.client()
    fake.fail_next("AccessSecretVersion", grpc.StatusCode.PERMISSION_DENIED, times=2)
    for _ in range(2):
        with pytest.raises(api_exceptions.PermissionDenied):
            client.access_secret_version(name=f"{secret}/versions/1", **FAST)
    assert b"one" == client.access_secret_version(name=f"{secret}/versions/1", **FAST).payload.data
    client.get_secret(name=secret, **FAST)
    assert ["AccessSecretVersion"] * 3 + ["GetSecret"] == fake.calls
    assert 3 == fake.call_count("AccessSecretVersion")


def test_create_time_comes_from_the_clock() -> None:
    """Versions are stamped by the injected clock, so tests can age them."""
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    with FakeSecretManager(clock=lambda: when) as fake:
        secret = fake.create_secret(SECRET)
        fake.add_version(secret, b"one")
        version = fake.client().get_secret_version(name=f"{secret}/versions/1", **FAST)
    assert when == version.create_time


def test_the_async_client_works_too(fake: FakeSecretManager) -> None:
    """The real asyncio client reads the fake over a grpc.aio channel."""
    secret = fake.create_secret(SECRET)
    fake.add_version(secret, b"one")

    async def read() -> bytes:
        channel = grpc.aio.insecure_channel(fake.target)
        transport = SecretManagerServiceGrpcAsyncIOTransport(channel=channel)
        client = secretmanager_v1.SecretManagerServiceAsyncClient(transport=transport)
        try:
            response = await client.access_secret_version(
                name=f"{secret}/versions/latest", timeout=5.0, retry=None
            )
            return bytes(response.payload.data)
        finally:
            await channel.close()

    assert b"one" == asyncio.run(read())


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=2048))
def test_payload_round_trip(shared_fake: FakeSecretManager, data: bytes) -> None:
    """Any payload up to the size limit comes back byte for byte with its checksum."""
    client = shared_fake.client()
    secret = shared_fake.create_secret(f"projects/test/secrets/s{next(_secret_ids)}")
    number = _add(client, secret, data)
    response = client.access_secret_version(name=f"{secret}/versions/{number}", **FAST)
    assert data == response.payload.data
    assert google_crc32c.value(data) == response.payload.data_crc32c


@settings(max_examples=25, deadline=None)
@given(
    states=st.lists(st.sampled_from(["ENABLED", "DISABLED", "DESTROYED"]), max_size=12),
    page_size=st.integers(min_value=1, max_value=5),
    wanted=st.sets(st.sampled_from(["ENABLED", "DISABLED", "DESTROYED"]), min_size=1),
)
def test_filtered_paging_matches_the_model(
    shared_fake: FakeSecretManager, states: list[str], page_size: int, wanted: set[str]
) -> None:
    """Pages of a filtered listing, joined, are the matching versions newest first."""
    secret = shared_fake.create_secret(f"projects/test/secrets/p{next(_secret_ids)}")
    for i, state in enumerate(states):
        shared_fake.add_version(secret, f"{i}".encode(), state=state)
    filter_text = " OR ".join(f"state:{state}" for state in sorted(wanted))
    pager = shared_fake.client().list_secret_versions(
        request={"parent": secret, "filter": filter_text, "page_size": page_size}, **FAST
    )
    listed = [int(v.name.rsplit("/", 1)[1]) for v in pager]
    expected = [n for n in range(len(states), 0, -1) if states[n - 1] in wanted]
    assert expected == listed

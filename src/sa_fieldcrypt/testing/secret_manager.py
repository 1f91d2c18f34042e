"""An in-process fake of Google Cloud Secret Manager, served over real gRPC on 127.0.0.1.

Tests talk to it with the real ``SecretManagerServiceClient``, so what they exercise is the
code that runs in production, down to the wire format. Needs the ``gcp`` extra.

Typical usage::

    from sa_fieldcrypt import generate_key
    from sa_fieldcrypt.testing.secret_manager import FakeSecretManager
    from sa_fieldcrypt.providers.gcp import GoogleSecretManagerKeyProvider

    with FakeSecretManager() as fake:
        secret = fake.create_secret("projects/test/secrets/fieldcrypt-keys")
        fake.add_version(secret, generate_key().encode())
        provider = GoogleSecretManagerKeyProvider(secret, client=fake.client())
        assert provider.load().primary.id == "v1"

What it imitates, as the v1 API documents it:

- version numbers start at 1 and grow by one per ``AddSecretVersion``;
- ``latest`` (the most recently created version, whatever its state) and version aliases
  resolve on ``GetSecretVersion`` and ``AccessSecretVersion`` only; other methods take numbers;
- ``AccessSecretVersion`` of a version that is not ENABLED fails with FAILED_PRECONDITION;
- DESTROYED is final (enable, disable and destroy then fail with FAILED_PRECONDITION), and
  drops the data;
- ``ListSecretVersions`` returns newest first, honours ``state:X`` filters (``OR`` and
  ``AND`` between them; any other filter is INVALID_ARGUMENT, never silently ignored) and
  pages with ``page_size`` and ``page_token``;
- payloads carry ``data_crc32c``; a checksum sent with ``AddSecretVersion`` is verified;
- ``version_aliases`` are read with ``GetSecret`` and replaced with ``UpdateSecret`` and the
  update mask ``version_aliases`` (also ``labels`` and ``annotations``).

What it does not: IAM (every caller may do everything), etag checks, replication, rotation,
topics, expiry, ``ListSecrets`` and the location methods (UNIMPLEMENTED).

For tests of failure handling: :meth:`FakeSecretManager.stop` takes the server down (the
state is kept, :meth:`~FakeSecretManager.start` brings it back on the same port),
:meth:`~FakeSecretManager.fail_next` makes the next calls of a method fail with a status,
and :meth:`~FakeSecretManager.corrupt_checksum` makes a version's payload arrive with a wrong
checksum. :attr:`~FakeSecretManager.calls` records every method called.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

try:
    import google_crc32c
    import grpc
    from google.cloud import secretmanager_v1
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )
    from google.protobuf import empty_pb2
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "the Secret Manager fake needs the gcp extra: pip install 'sa-fieldcrypt[gcp]'"
    ) from exc

from sa_fieldcrypt.testing.grpc_service import FakeStatusError, LocalGrpcService, Method

__all__ = ["FakeSecretManager", "FakeStatusError"]

# States are kept by name; messages take the enum's number.
_STATES = {"ENABLED": 1, "DISABLED": 2, "DESTROYED": 3}
_PARENT = re.compile(r"projects/[^/\s]+(?:/locations/[^/\s]+)?\Z")
_SECRET = re.compile(r"projects/[^/\s]+(?:/locations/[^/\s]+)?/secrets/[A-Za-z0-9_-]{1,255}\Z")
_SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}\Z")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}\Z")
_FILTER_TERM = re.compile(r"state[:=]([A-Za-z]+)\Z")
_MAX_PAYLOAD = 64 * 1024
_MAX_PAGE = 25000
_MAX_ALIASES = 50
_UPDATABLE = frozenset({"version_aliases", "labels", "annotations"})


@dataclass
class _Version:
    number: int
    data: bytes | None
    crc32c: int
    state: str
    create_time: datetime
    client_checksum: bool
    destroy_time: datetime | None = None
    corrupt: str = ""


@dataclass
class _Secret:
    name: str
    create_time: datetime
    replication: secretmanager_v1.Replication
    versions: list[_Version] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    generation: int = 1


class FakeSecretManager(LocalGrpcService):
    """Secret Manager's v1 gRPC service in memory, on a local port.

    Use it as a context manager, or call :meth:`start` and :meth:`close`. Thread-safe.

    Args:
        clock: returns the current time (timezone-aware) for ``create_time``; tests of
            version age inject their own.
        max_page_size: the most versions one ``ListSecretVersions`` page holds, whatever
            ``page_size`` asks for; lower it to exercise paging.
    """

    service = "google.cloud.secretmanager.v1.SecretManagerService"

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_page_size: int = _MAX_PAGE,
    ):
        super().__init__()
        self.clock = clock
        self.max_page_size = max_page_size
        self._secrets: dict[str, _Secret] = {}

    def client(self) -> secretmanager_v1.SecretManagerServiceClient:
        """Return a real ``SecretManagerServiceClient`` connected to the fake (no TLS)."""
        transport = SecretManagerServiceGrpcTransport(channel=self.channel())
        return secretmanager_v1.SecretManagerServiceClient(transport=transport)

    # -- direct state access, for test setup ----------------------------------------------

    def create_secret(self, name: str) -> str:
        """Create an empty secret named ``projects/P/secrets/S`` and return its name."""
        parent, _, secret_id = name.rpartition("/secrets/")
        with self.lock:
            return self._create_secret(parent, secret_id, secretmanager_v1.Secret()).name

    def add_version(self, secret: str, data: bytes, *, state: str = "ENABLED") -> int:
        """Add a version holding ``data`` in ``state``; return its number."""
        _check_state_name(state)
        with self.lock:
            version = self._add_version(secret, data, None)
            if state != "ENABLED":
                self._set_state(secret, str(version.number), state)
            return version.number

    def set_state(self, secret: str, number: int, state: str) -> None:
        """Move a version to ``ENABLED``, ``DISABLED`` or ``DESTROYED`` (under the API's rules)."""
        _check_state_name(state)
        with self.lock:
            self._set_state(secret, str(number), state)

    def set_alias(self, secret: str, alias: str, number: int) -> None:
        """Point the version alias ``alias`` at version ``number``."""
        with self.lock:
            aliases = dict(self._secret(secret).aliases)
            aliases[alias] = number
            self._replace_aliases(self._secret(secret), aliases)

    def aliases(self, secret: str) -> dict[str, int]:
        """Return the secret's version aliases."""
        with self.lock:
            return dict(self._secret(secret).aliases)

    def payload(self, secret: str, number: int) -> bytes | None:
        """Return the stored data of a version (None once destroyed)."""
        with self.lock:
            return self._version(self._secret(secret), str(number), symbolic=False).data

    def corrupt_checksum(self, secret: str, number: int, *, missing: bool = False) -> None:
        """Make every later access to the version return a wrong ``data_crc32c`` (or none)."""
        with self.lock:
            version = self._version(self._secret(secret), str(number), symbolic=False)
            version.corrupt = "missing" if missing else "wrong"

    # -- the service ----------------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        """The v1 methods the fake implements; the others answer UNIMPLEMENTED."""
        svc = secretmanager_v1.types.service
        res = secretmanager_v1.types.resources
        return {
            "CreateSecret": (
                self._rpc_create_secret,
                svc.CreateSecretRequest,
                res.Secret.serialize,
            ),
            "GetSecret": (self._rpc_get_secret, svc.GetSecretRequest, res.Secret.serialize),
            "UpdateSecret": (
                self._rpc_update_secret,
                svc.UpdateSecretRequest,
                res.Secret.serialize,
            ),
            "DeleteSecret": (
                self._rpc_delete_secret,
                svc.DeleteSecretRequest,
                empty_pb2.Empty.SerializeToString,
            ),
            "AddSecretVersion": (
                self._rpc_add_version,
                svc.AddSecretVersionRequest,
                res.SecretVersion.serialize,
            ),
            "GetSecretVersion": (
                self._rpc_get_version,
                svc.GetSecretVersionRequest,
                res.SecretVersion.serialize,
            ),
            "AccessSecretVersion": (
                self._rpc_access_version,
                svc.AccessSecretVersionRequest,
                svc.AccessSecretVersionResponse.serialize,
            ),
            "ListSecretVersions": (
                self._rpc_list_versions,
                svc.ListSecretVersionsRequest,
                svc.ListSecretVersionsResponse.serialize,
            ),
            "EnableSecretVersion": (
                self._state_rpc("ENABLED"),
                svc.EnableSecretVersionRequest,
                res.SecretVersion.serialize,
            ),
            "DisableSecretVersion": (
                self._state_rpc("DISABLED"),
                svc.DisableSecretVersionRequest,
                res.SecretVersion.serialize,
            ),
            "DestroySecretVersion": (
                self._state_rpc("DESTROYED"),
                svc.DestroySecretVersionRequest,
                res.SecretVersion.serialize,
            ),
        }

    def _rpc_create_secret(self, request: Any) -> secretmanager_v1.Secret:
        return self._secret_message(
            self._create_secret(request.parent, request.secret_id, request.secret)
        )

    def _rpc_get_secret(self, request: Any) -> secretmanager_v1.Secret:
        return self._secret_message(self._secret(request.name))

    def _rpc_update_secret(self, request: Any) -> secretmanager_v1.Secret:
        secret = self._secret(request.secret.name)
        paths = list(request.update_mask.paths)
        if not paths:
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "update_mask is required")
        unknown = [path for path in paths if path not in _UPDATABLE]
        if unknown:
            raise FakeStatusError(
                grpc.StatusCode.INVALID_ARGUMENT, f"cannot update {', '.join(unknown)}"
            )
        if "version_aliases" in paths:
            self._replace_aliases(secret, dict(request.secret.version_aliases))
        if "labels" in paths:
            secret.labels = dict(request.secret.labels)
        if "annotations" in paths:
            secret.annotations = dict(request.secret.annotations)
        secret.generation += 1
        return self._secret_message(secret)

    def _rpc_delete_secret(self, request: Any) -> empty_pb2.Empty:
        self._secret(request.name)
        del self._secrets[request.name]
        return empty_pb2.Empty()

    def _rpc_add_version(self, request: Any) -> secretmanager_v1.SecretVersion:
        payload = request.payload
        given = payload.data_crc32c if "data_crc32c" in payload else None
        version = self._add_version(request.parent, bytes(payload.data), given)
        return self._version_message(request.parent, version)

    def _rpc_get_version(self, request: Any) -> secretmanager_v1.SecretVersion:
        secret_name, ref = _split_version_name(request.name)
        version = self._version(self._secret(secret_name), ref, symbolic=True)
        return self._version_message(secret_name, version)

    def _rpc_access_version(self, request: Any) -> secretmanager_v1.AccessSecretVersionResponse:
        secret_name, ref = _split_version_name(request.name)
        version = self._version(self._secret(secret_name), ref, symbolic=True)
        if version.state != "ENABLED" or version.data is None:
            raise FakeStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{secret_name}/versions/{version.number} is in {version.state} state",
            )
        payload = secretmanager_v1.SecretPayload(data=version.data)
        if version.corrupt != "missing":
            flip = 0xFFFFFFFF if version.corrupt == "wrong" else 0
            payload.data_crc32c = version.crc32c ^ flip
        return secretmanager_v1.AccessSecretVersionResponse(
            # The resolved number, never `latest` or the alias, as the service answers.
            name=f"{secret_name}/versions/{version.number}",
            payload=payload,
        )

    def _rpc_list_versions(self, request: Any) -> secretmanager_v1.ListSecretVersionsResponse:
        secret = self._secret(request.parent)
        states = _parse_filter(request.filter)
        if request.page_size < 0:
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be >= 0")
        matching = [
            v for v in reversed(secret.versions) if states is None or _matches(v.state, states)
        ]
        offset = _read_page_token(request.page_token, request.parent, request.filter)
        size = min(request.page_size or _MAX_PAGE, _MAX_PAGE, self.max_page_size)
        page = matching[offset : offset + size]
        more = offset + size < len(matching)
        return secretmanager_v1.ListSecretVersionsResponse(
            versions=[self._version_message(secret.name, v) for v in page],
            next_page_token=(
                _page_token(request.parent, request.filter, offset + size) if more else ""
            ),
            # As documented: the total, but 0 when a filter is set.
            total_size=0 if request.filter else len(secret.versions),
        )

    def _state_rpc(self, state: str) -> Callable[[Any], secretmanager_v1.SecretVersion]:
        def change(request: Any) -> secretmanager_v1.SecretVersion:
            secret_name, ref = _split_version_name(request.name)
            return self._version_message(secret_name, self._set_state(secret_name, ref, state))

        return change

    # -- state ----------------------------------------------------------------------------

    def _create_secret(
        self, parent: str, secret_id: str, template: secretmanager_v1.Secret
    ) -> _Secret:
        if not _PARENT.match(parent) or not _SECRET_ID.match(secret_id):
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "invalid parent or secret_id")
        name = f"{parent}/secrets/{secret_id}"
        if name in self._secrets:
            raise FakeStatusError(grpc.StatusCode.ALREADY_EXISTS, f"Secret [{name}] already exists")
        if template.version_aliases:
            raise FakeStatusError(
                grpc.StatusCode.INVALID_ARGUMENT, "a new secret has no versions to alias"
            )
        replication = template.replication
        if "automatic" not in replication and "user_managed" not in replication:
            replication = secretmanager_v1.Replication(
                automatic=secretmanager_v1.Replication.Automatic()
            )
        secret = _Secret(
            name=name,
            create_time=self.clock(),
            replication=replication,
            labels=dict(template.labels),
            annotations=dict(template.annotations),
        )
        self._secrets[name] = secret
        return secret

    def _secret(self, name: str) -> _Secret:
        if not _SECRET.match(name):
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid secret name {name!r}")
        secret = self._secrets.get(name)
        if secret is None:
            raise FakeStatusError(grpc.StatusCode.NOT_FOUND, f"Secret [{name}] not found")
        return secret

    def _add_version(self, secret_name: str, data: bytes, given_crc: int | None) -> _Version:
        secret = self._secret(secret_name)
        if len(data) > _MAX_PAYLOAD:
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "payload larger than 64 KiB")
        crc = google_crc32c.value(data)
        if given_crc is not None and given_crc != crc:
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "checksum mismatch")
        version = _Version(
            number=len(secret.versions) + 1,
            data=data,
            crc32c=crc,
            state="ENABLED",
            create_time=self.clock(),
            client_checksum=given_crc is not None,
        )
        secret.versions.append(version)
        return version

    def _version(self, secret: _Secret, ref: str, *, symbolic: bool) -> _Version:
        if ref.isdigit():
            number = int(ref)
        elif symbolic and ref == "latest":
            if not secret.versions:
                raise FakeStatusError(grpc.StatusCode.NOT_FOUND, f"{secret.name} has no versions")
            number = len(secret.versions)
        elif symbolic and ref in secret.aliases:
            number = secret.aliases[ref]
        elif symbolic:
            raise FakeStatusError(
                grpc.StatusCode.NOT_FOUND, f"{secret.name}/versions/{ref} not found"
            )
        else:
            raise FakeStatusError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{ref!r} is not a version number"
            )
        if not 1 <= number <= len(secret.versions):
            raise FakeStatusError(
                grpc.StatusCode.NOT_FOUND, f"{secret.name}/versions/{number} not found"
            )
        return secret.versions[number - 1]

    def _set_state(self, secret_name: str, ref: str, state: str) -> _Version:
        version = self._version(self._secret(secret_name), ref, symbolic=False)
        if version.state == "DESTROYED":
            # The service refuses even a second destroy (HTTP 400 / FAILED_PRECONDITION).
            raise FakeStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{secret_name}/versions/{version.number} is DESTROYED, which is final",
            )
        version.state = state
        if state == "DESTROYED":
            version.data = None
            version.destroy_time = self.clock()
        return version

    def _replace_aliases(self, secret: _Secret, aliases: dict[str, int]) -> None:
        if len(aliases) > _MAX_ALIASES:
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "more than 50 aliases")
        for alias, number in aliases.items():
            if not _ALIAS.match(alias) or alias in ("latest", "NEW"):
                raise FakeStatusError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"invalid version alias {alias!r}"
                )
            if not 1 <= number <= len(secret.versions):
                raise FakeStatusError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"alias {alias!r} names version {number}, which does not exist",
                )
        secret.aliases = aliases

    def _secret_message(self, secret: _Secret) -> secretmanager_v1.Secret:
        return secretmanager_v1.Secret(
            name=secret.name,
            create_time=secret.create_time,
            replication=secret.replication,
            labels=secret.labels,
            annotations=secret.annotations,
            version_aliases=secret.aliases,
            etag=f'"{secret.generation}"',
        )

    def _version_message(
        self, secret_name: str, version: _Version
    ) -> secretmanager_v1.SecretVersion:
        fields: dict[str, Any] = {
            "name": f"{secret_name}/versions/{version.number}",
            "create_time": version.create_time,
            "state": _STATES[version.state],
            "etag": f'"{version.number}-{version.state}"',
            "client_specified_payload_checksum": version.client_checksum,
        }
        if version.destroy_time is not None:
            fields["destroy_time"] = version.destroy_time
        return secretmanager_v1.SecretVersion(**fields)


def _check_state_name(state: str) -> None:
    if state not in _STATES:
        raise ValueError(f"state must be one of {', '.join(_STATES)}, not {state!r}")


def _split_version_name(name: str) -> tuple[str, str]:
    secret_name, sep, ref = name.rpartition("/versions/")
    if not sep or not ref or "/" in ref:
        raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid version name {name!r}")
    return secret_name, ref


def _parse_filter(text: str) -> list[set[str]] | None:
    """Parse ``state:X`` terms joined by OR and AND into a conjunction of alternatives."""
    tokens = text.split()
    if not tokens:
        return None
    unsupported = FakeStatusError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"unsupported filter {text!r}: the fake knows state:ENABLED|DISABLED|DESTROYED "
        "terms joined by OR and AND",
    )
    # In the list-filter grammar OR binds tighter than AND, which a bare space also means.
    clauses: list[set[str]] = []
    expect_term, joined_by_or = True, False
    for token in tokens:
        if token in ("AND", "OR"):
            if expect_term:
                raise unsupported
            expect_term, joined_by_or = True, token == "OR"
            continue
        match = _FILTER_TERM.match(token)
        name = match.group(1).upper() if match else ""
        if name not in ("ENABLED", "DISABLED", "DESTROYED"):
            raise unsupported
        if joined_by_or:
            clauses[-1].add(name)
        else:
            clauses.append({name})
        expect_term, joined_by_or = False, False
    if expect_term:
        raise unsupported
    return clauses


def _matches(state: str, clauses: list[set[str]]) -> bool:
    return all(state in alternatives for alternatives in clauses)


def _page_token(parent: str, filter_text: str, offset: int) -> str:
    raw = json.dumps({"p": parent, "f": filter_text, "o": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _read_page_token(token: str, parent: str, filter_text: str) -> int:
    if not token:
        return 0
    try:
        state = json.loads(base64.urlsafe_b64decode(token.encode()))
        if state["p"] == parent and state["f"] == filter_text and isinstance(state["o"], int):
            return int(state["o"])
    except (ValueError, KeyError, TypeError):
        pass
    raise FakeStatusError(
        grpc.StatusCode.INVALID_ARGUMENT, "page_token does not belong to this request"
    )

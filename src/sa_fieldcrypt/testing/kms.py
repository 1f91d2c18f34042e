"""An in-process fake of Google Cloud KMS's KeyManagementService, over real gRPC on 127.0.0.1.

Tests talk to it with the real ``KeyManagementServiceClient``, so what they exercise is the
code that runs in production, down to the wire format. Needs the ``gcp`` extra.

Typical usage::

    from sa_fieldcrypt import generate_key, parse_key
    from sa_fieldcrypt.providers.kms import KmsKeyWrapper
    from sa_fieldcrypt.testing.kms import FakeKms

    with FakeKms() as fake:
        kek = fake.create_key("projects/test/locations/global/keyRings/app/cryptoKeys/kek")
        wrapper = KmsKeyWrapper(client=fake.client())
        wrapped = wrapper.wrap(parse_key(generate_key(), key_id="k1"), kek)
        assert wrapper.unwrap(wrapped).id == "k1"

What it imitates, as the v1 API documents it, for symmetric ``ENCRYPT_DECRYPT`` keys:

- ``Encrypt`` encrypts under the key's primary version (or the version named), with
  ``additional_authenticated_data``; ``Decrypt`` finds the version from the ciphertext, which
  names it, and opens it only with the same associated data (else INVALID_ARGUMENT);
  ``DecryptResponse.used_primary`` says whether that version is the primary;
- versions are ENABLED, DISABLED, DESTROY_SCHEDULED or DESTROYED; using one that is not
  ENABLED fails with FAILED_PRECONDITION, naming the version and its state; DESTROYED drops
  the version's key material for good;
- ``plaintext_crc32c``, ``ciphertext_crc32c`` and ``additional_authenticated_data_crc32c`` on
  requests are verified (a mismatch is INVALID_ARGUMENT), ``verified_*_crc32c`` say so on the
  ``Encrypt`` response, and responses carry ``ciphertext_crc32c`` / ``plaintext_crc32c``;
- ``GetCryptoKey`` (with its primary version), ``GetCryptoKeyVersion``,
  ``CreateCryptoKeyVersion`` (a new ENABLED version), ``UpdateCryptoKeyPrimaryVersion``,
  ``UpdateCryptoKeyVersion`` with the update mask ``state`` (between ENABLED and DISABLED
  only), ``DestroyCryptoKeyVersion`` (to DESTROY_SCHEDULED, with a ``destroy_time``) and
  ``RestoreCryptoKeyVersion`` (from DESTROY_SCHEDULED back to DISABLED, never straight to
  ENABLED); a version leaves DESTROY_SCHEDULED only so, or by being destroyed, and never
  leaves DESTROYED.

What it does not: IAM (every caller may do everything, but for the keys
:meth:`~FakeKms.deny` names, which answer PERMISSION_DENIED; :meth:`~FakeKms.fail_next` with
PERMISSION_DENIED also stands in), key rings and key creation over gRPC, asymmetric and MAC keys,
import, rotation schedules, and the other methods (UNIMPLEMENTED).

For tests of failure handling: :meth:`~FakeKms.stop` takes the server down (the state is
kept, :meth:`~FakeKms.start` brings it back on the same port), :meth:`~FakeKms.fail_next`
makes the next calls of a method fail with a status, :meth:`~FakeKms.delay_next` makes
them answer late, and :meth:`~FakeKms.corrupt_next`
makes the next responses of a method arrive damaged (a wrong checksum, or a checksum the
service says it did not verify). :attr:`~FakeKms.calls` records every method called.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

try:
    import google_crc32c
    import grpc
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from google.cloud import kms_v1
    from google.cloud.kms_v1.services.key_management_service.transports import (
        KeyManagementServiceGrpcTransport,
    )
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "the Cloud KMS fake needs the gcp extra: pip install 'sa-fieldcrypt[gcp]'"
    ) from exc

from sa_fieldcrypt.testing.grpc_service import FakeStatusError, LocalGrpcService, Method

__all__ = ["CORRUPTIONS", "FakeKms"]

_State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
_STATES = ("ENABLED", "DISABLED", "DESTROY_SCHEDULED", "DESTROYED")
# The moves the service allows between states (DESTROY_SCHEDULED -> DESTROYED is the end of
# the scheduled destruction period). ENABLED or DISABLED -> DESTROYED is the setup shortcut
# of set_state only: destroy, then let the period pass.
_MOVES = {
    "ENABLED": frozenset({"ENABLED", "DISABLED", "DESTROY_SCHEDULED"}),
    "DISABLED": frozenset({"ENABLED", "DISABLED", "DESTROY_SCHEDULED"}),
    "DESTROY_SCHEDULED": frozenset({"DISABLED", "DESTROYED"}),
    "DESTROYED": frozenset(),
}
# Cloud KMS's default scheduled destruction period.
_DESTROY_PERIOD = timedelta(days=30)
_KEY_NAME = re.compile(
    r"projects/[A-Za-z0-9._-]+/locations/[A-Za-z0-9._-]+/keyRings/[A-Za-z0-9_-]+"
    r"/cryptoKeys/[A-Za-z0-9_-]+\Z"
)
# Cloud KMS's documented limits on one Encrypt call.
_MAX_PLAINTEXT = 64 * 1024
_MAX_AAD = 64 * 1024
# The fake's ciphertext: a marker, the key name, the version number, a nonce, AES-GCM output.
_MAGIC = b"FAKEKMS1"
_NONCE = 12
#: What :meth:`FakeKms.corrupt_next` can damage, per method.
CORRUPTIONS: dict[str, tuple[str, ...]] = {
    "Encrypt": (
        "ciphertext_crc32c",
        "verified_plaintext_crc32c",
        "verified_additional_authenticated_data_crc32c",
        "name",
    ),
    "Decrypt": ("plaintext_crc32c", "plaintext"),
}


@dataclass
class _Version:
    number: int
    material: bytes | None
    state: str
    create_time: datetime
    destroy_time: datetime | None = None


@dataclass
class _CryptoKey:
    name: str
    create_time: datetime
    versions: list[_Version] = field(default_factory=list)
    primary: int = 0


class FakeKms(LocalGrpcService):
    """Cloud KMS's v1 KeyManagementService (symmetric keys) in memory, on a local port.

    Use it as a context manager, or call :meth:`start` and :meth:`close`. Thread-safe.

    Args:
        clock: returns the current time (timezone-aware) for ``create_time``.
    """

    service = "google.cloud.kms.v1.KeyManagementService"

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        super().__init__()
        self.clock = clock
        self._keys: dict[str, _CryptoKey] = {}
        self._corruptions: dict[str, list[str]] = {}
        self._denied: set[str] = set()

    def client(self) -> kms_v1.KeyManagementServiceClient:
        """Return a real ``KeyManagementServiceClient`` connected to the fake (no TLS)."""
        transport = KeyManagementServiceGrpcTransport(channel=self.channel())
        return kms_v1.KeyManagementServiceClient(transport=transport)

    # -- direct state access, for test setup ----------------------------------------------

    def create_key(self, name: str) -> str:
        """Create a symmetric key ``projects/P/locations/L/keyRings/R/cryptoKeys/K``.

        Its version 1 is ENABLED and primary. Returns the name.
        """
        if not _KEY_NAME.match(name):
            raise ValueError(f"not a crypto key name: {name!r}")
        with self.lock:
            if name in self._keys:
                raise ValueError(f"{name} already exists")
            key = self._keys[name] = _CryptoKey(name, self.clock())
            self._new_version(key)
            key.primary = 1
            return name

    def rotate(self, name: str) -> int:
        """Add a version and make it primary, as a scheduled rotation does; return its number."""
        with self.lock:
            key = self._key(name)
            version = self._new_version(key)
            key.primary = version.number
            return version.number

    def set_primary(self, name: str, number: int) -> None:
        """Make version ``number`` primary (it must be ENABLED)."""
        with self.lock:
            self._set_primary(self._key(name), number)

    def set_state(self, name: str, number: int, state: str) -> None:
        """Move a version to ENABLED, DISABLED, DESTROY_SCHEDULED or DESTROYED.

        Only as the service moves it: a version scheduled for destruction is restored to
        DISABLED (not ENABLED), and a DESTROYED one stays so. ENABLED or DISABLED may go
        straight to DESTROYED, standing for a destruction whose period has passed.

        Raises:
            ValueError: an unknown state, or a move the service does not make.
        """
        if state not in _STATES:
            raise ValueError(f"state must be one of {', '.join(_STATES)}, not {state!r}")
        with self.lock:
            key = self._key(name)
            current = self._version(key, number).state
            if state != "DESTROYED" or current == "DESTROYED":
                try:
                    self._check_move(key, number, current, state)
                except FakeStatusError as exc:
                    raise ValueError(exc.details) from None
            self._set_state(key, number, state)

    def deny(self, name: str, denied: bool = True) -> None:
        """Refuse (or, with ``denied=False``, allow again) every call on key ``name``.

        Calls answer PERMISSION_DENIED, as for a caller without a role on that key only.
        """
        with self.lock:
            self._key(name)
            if denied:
                self._denied.add(name)
            else:
                self._denied.discard(name)

    def primary(self, name: str) -> int:
        """The number of the key's primary version."""
        with self.lock:
            return self._key(name).primary

    def version_of(self, ciphertext: bytes) -> int:
        """The number of the version that made ``ciphertext``."""
        return _read_ciphertext(ciphertext)[1]

    def corrupt_next(self, method: str, what: str, *, times: int = 1) -> None:
        """Damage the next ``times`` successful responses of ``method`` in one way.

        Args:
            method: ``"Encrypt"`` or ``"Decrypt"``.
            what: which field (see :data:`CORRUPTIONS`): a ``*_crc32c`` field arrives wrong;
                a ``verified_*`` flag arrives false; ``plaintext`` arrives with a flipped
                bit (and the checksum of the original); ``name`` names another key's version.
        """
        if what not in CORRUPTIONS.get(method, ()):
            raise ValueError(f"{method} responses cannot have {what!r} corrupted")
        with self.lock:
            self._corruptions.setdefault(method, []).extend([what] * times)

    # -- the service ----------------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        """The v1 methods the fake implements; the others answer UNIMPLEMENTED."""
        return {
            "Encrypt": (self._rpc_encrypt, kms_v1.EncryptRequest, kms_v1.EncryptResponse.serialize),
            "Decrypt": (self._rpc_decrypt, kms_v1.DecryptRequest, kms_v1.DecryptResponse.serialize),
            "GetCryptoKey": (
                self._rpc_get_key,
                kms_v1.GetCryptoKeyRequest,
                kms_v1.CryptoKey.serialize,
            ),
            "GetCryptoKeyVersion": (
                self._rpc_get_version,
                kms_v1.GetCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion.serialize,
            ),
            "CreateCryptoKeyVersion": (
                self._rpc_create_version,
                kms_v1.CreateCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion.serialize,
            ),
            "UpdateCryptoKeyPrimaryVersion": (
                self._rpc_update_primary,
                kms_v1.UpdateCryptoKeyPrimaryVersionRequest,
                kms_v1.CryptoKey.serialize,
            ),
            "UpdateCryptoKeyVersion": (
                self._rpc_update_version,
                kms_v1.UpdateCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion.serialize,
            ),
            "DestroyCryptoKeyVersion": (
                self._rpc_destroy_version,
                kms_v1.DestroyCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion.serialize,
            ),
            "RestoreCryptoKeyVersion": (
                self._rpc_restore_version,
                kms_v1.RestoreCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion.serialize,
            ),
        }

    def _rpc_encrypt(self, request: Any) -> kms_v1.EncryptResponse:
        plaintext = bytes(request.plaintext)
        aad = bytes(request.additional_authenticated_data)
        if len(plaintext) > _MAX_PLAINTEXT or len(aad) > _MAX_AAD:
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "plaintext or AAD too large")
        _check_crc(request, "plaintext_crc32c", plaintext)
        _check_crc(request, "additional_authenticated_data_crc32c", aad)
        key_name, _, ref = request.name.partition("/cryptoKeyVersions/")
        key = self._rpc_key(key_name)
        version, material = self._usable(key, int(ref) if ref.isdigit() else key.primary)
        nonce = os.urandom(_NONCE)
        header = _MAGIC + struct.pack(">H", len(key.name)) + key.name.encode()
        header += struct.pack(">I", version.number) + nonce
        ciphertext = header + AESGCM(material).encrypt(nonce, plaintext, header + aad)
        fields: dict[str, Any] = {
            "name": _version_name(key.name, version.number),
            "ciphertext": ciphertext,
            "ciphertext_crc32c": google_crc32c.value(ciphertext),
            "verified_plaintext_crc32c": "plaintext_crc32c" in request,
            "verified_additional_authenticated_data_crc32c": (
                "additional_authenticated_data_crc32c" in request
            ),
            "protection_level": kms_v1.ProtectionLevel.SOFTWARE,
        }
        for what in self._take_corruptions("Encrypt"):
            if what == "name":
                fields["name"] = _version_name(f"{key.name}-other", version.number)
            elif what == "ciphertext_crc32c":
                fields[what] ^= 0xFFFFFFFF
            else:
                fields[what] = False
        return kms_v1.EncryptResponse(**fields)

    def _rpc_decrypt(self, request: Any) -> kms_v1.DecryptResponse:
        ciphertext = bytes(request.ciphertext)
        aad = bytes(request.additional_authenticated_data)
        _check_crc(request, "ciphertext_crc32c", ciphertext)
        _check_crc(request, "additional_authenticated_data_crc32c", aad)
        key = self._rpc_key(request.name)
        invalid = FakeStatusError(
            grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid."
        )
        try:
            key_name, number, header, sealed = _read_ciphertext(ciphertext)
        except ValueError:
            raise invalid from None
        if key_name != key.name or not 1 <= number <= len(key.versions):
            raise invalid
        _, material = self._usable(key, number)
        try:
            plaintext = AESGCM(material).decrypt(header[-_NONCE:], sealed, header + aad)
        except InvalidTag:
            raise invalid from None
        crc = google_crc32c.value(plaintext)
        for what in self._take_corruptions("Decrypt"):
            if what == "plaintext":
                plaintext = bytes([plaintext[0] ^ 1]) + plaintext[1:]
            else:
                crc ^= 0xFFFFFFFF
        return kms_v1.DecryptResponse(
            plaintext=plaintext,
            plaintext_crc32c=crc,
            used_primary=number == key.primary,
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
        )

    def _rpc_get_key(self, request: Any) -> kms_v1.CryptoKey:
        return self._key_message(self._rpc_key(request.name))

    def _rpc_get_version(self, request: Any) -> kms_v1.CryptoKeyVersion:
        key_name, number = _split_version_name(request.name)
        key = self._rpc_key(key_name)
        return _version_message(key.name, self._version(key, number))

    def _rpc_create_version(self, request: Any) -> kms_v1.CryptoKeyVersion:
        key = self._rpc_key(request.parent)
        return _version_message(key.name, self._new_version(key))

    def _rpc_update_primary(self, request: Any) -> kms_v1.CryptoKey:
        key = self._rpc_key(request.name)
        ref = request.crypto_key_version_id
        if not ref.isdigit():
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "invalid version id")
        self._set_primary(key, int(ref))
        return self._key_message(key)

    def _rpc_update_version(self, request: Any) -> kms_v1.CryptoKeyVersion:
        paths = list(request.update_mask.paths)
        if paths != ["state"]:
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, "only state can be updated")
        key_name, number = _split_version_name(request.crypto_key_version.name)
        key = self._rpc_key(key_name)
        state = _State(request.crypto_key_version.state).name
        if state not in ("ENABLED", "DISABLED"):
            raise FakeStatusError(
                grpc.StatusCode.INVALID_ARGUMENT, "state may only become ENABLED or DISABLED"
            )
        current = self._version(key, number).state
        if current not in ("ENABLED", "DISABLED"):
            # Only RestoreCryptoKeyVersion brings back a version scheduled for destruction.
            raise FakeStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{_version_name(key.name, number)} cannot become {state}, current state is: "
                f"{current}.",
            )
        return _version_message(key.name, self._set_state(key, number, state))

    def _rpc_destroy_version(self, request: Any) -> kms_v1.CryptoKeyVersion:
        key_name, number = _split_version_name(request.name)
        key = self._rpc_key(key_name)
        self._check_move(key, number, self._version(key, number).state, "DESTROY_SCHEDULED")
        return _version_message(key.name, self._set_state(key, number, "DESTROY_SCHEDULED"))

    def _rpc_restore_version(self, request: Any) -> kms_v1.CryptoKeyVersion:
        key_name, number = _split_version_name(request.name)
        key = self._rpc_key(key_name)
        current = self._version(key, number).state
        if current != "DESTROY_SCHEDULED":
            raise FakeStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{_version_name(key.name, number)} is not scheduled for destruction, current "
                f"state is: {current}.",
            )
        return _version_message(key.name, self._set_state(key, number, "DISABLED"))

    # -- state ----------------------------------------------------------------------------

    def _key(self, name: str) -> _CryptoKey:
        if not _KEY_NAME.match(name):
            raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid key name {name!r}")
        key = self._keys.get(name)
        if key is None:
            raise FakeStatusError(grpc.StatusCode.NOT_FOUND, f"{name} not found.")
        return key

    def _rpc_key(self, name: str) -> _CryptoKey:
        """The key a call names, if this caller may use it (see :meth:`deny`)."""
        key = self._key(name)
        if name in self._denied:
            raise FakeStatusError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission denied on resource '{name}' (or it may not exist).",
            )
        return key

    def _version(self, key: _CryptoKey, number: int) -> _Version:
        if not 1 <= number <= len(key.versions):
            raise FakeStatusError(
                grpc.StatusCode.NOT_FOUND, f"{_version_name(key.name, number)} not found."
            )
        return key.versions[number - 1]

    def _usable(self, key: _CryptoKey, number: int) -> tuple[_Version, bytes]:
        """The version, if it may be used now, and its key material."""
        version = self._version(key, number)
        if version.state != "ENABLED" or version.material is None:
            raise FakeStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{_version_name(key.name, number)} is not enabled, current state is: "
                f"{version.state}.",
            )
        return version, version.material

    def _new_version(self, key: _CryptoKey) -> _Version:
        version = _Version(len(key.versions) + 1, os.urandom(32), "ENABLED", self.clock())
        key.versions.append(version)
        return version

    def _set_primary(self, key: _CryptoKey, number: int) -> None:
        self._usable(key, number)
        key.primary = number

    def _check_move(self, key: _CryptoKey, number: int, current: str, state: str) -> None:
        if state not in _MOVES[current]:
            raise FakeStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{_version_name(key.name, number)} cannot become {state}, current state is: "
                f"{current}.",
            )

    def _set_state(self, key: _CryptoKey, number: int, state: str) -> _Version:
        version = self._version(key, number)
        if version.state == "DESTROYED":
            raise FakeStatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{_version_name(key.name, number)} is DESTROYED, which is final",
            )
        version.state = state
        version.destroy_time = (
            self.clock() + _DESTROY_PERIOD if state == "DESTROY_SCHEDULED" else None
        )
        if state == "DESTROYED":
            version.material = None
        return version

    def _take_corruptions(self, method: str) -> list[str]:
        pending = self._corruptions.get(method)
        return [pending.pop(0)] if pending else []

    def _key_message(self, key: _CryptoKey) -> kms_v1.CryptoKey:
        return kms_v1.CryptoKey(
            name=key.name,
            primary=_version_message(key.name, key.versions[key.primary - 1]),
            purpose=kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT,
            create_time=key.create_time,
        )


def _version_name(key_name: str, number: int) -> str:
    return f"{key_name}/cryptoKeyVersions/{number}"


def _split_version_name(name: str) -> tuple[str, int]:
    key_name, sep, ref = name.partition("/cryptoKeyVersions/")
    if not sep or not ref.isdigit():
        raise FakeStatusError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid version name {name!r}")
    return key_name, int(ref)


def _version_message(key_name: str, version: _Version) -> kms_v1.CryptoKeyVersion:
    return kms_v1.CryptoKeyVersion(
        name=_version_name(key_name, version.number),
        state=_State.__members__[version.state],
        protection_level=kms_v1.ProtectionLevel.SOFTWARE,
        algorithm=kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
        create_time=version.create_time,
        destroy_time=version.destroy_time,
    )


def _check_crc(request: Any, field_name: str, data: bytes) -> None:
    # Unset wrapper fields are absent; a checksum that is sent must match, as the API checks.
    if field_name in request and int(getattr(request, field_name)) != google_crc32c.value(data):
        raise FakeStatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"The checksum in field {field_name} did not match the data in field "
            f"{field_name.removesuffix('_crc32c')}.",
        )


def _read_ciphertext(ciphertext: bytes) -> tuple[str, int, bytes, bytes]:
    """The key name, version number, header and sealed part of a fake ciphertext."""
    if not ciphertext.startswith(_MAGIC) or len(ciphertext) < len(_MAGIC) + 2:
        raise ValueError("not a ciphertext of the fake")
    at = len(_MAGIC)
    (size,) = struct.unpack_from(">H", ciphertext, at)
    at += 2
    name = ciphertext[at : at + size].decode("ascii", "replace")
    at += size
    if len(ciphertext) < at + 4 + _NONCE + 16:
        raise ValueError("ciphertext too short")
    (number,) = struct.unpack_from(">I", ciphertext, at)
    at += 4 + _NONCE
    return name, number, ciphertext[:at], ciphertext[at:]

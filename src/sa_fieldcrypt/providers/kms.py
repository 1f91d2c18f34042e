"""Cloud KMS key wrapping: data keys encrypted by a key-encrypting key that never leaves KMS.

Needs the ``gcp`` extra: ``pip install 'sa-fieldcrypt[gcp]'``.

A *wrapped* key entry holds, in place of the key, what Cloud KMS ``Encrypt`` returned for
it under a symmetric KMS key, with associated data that binds it to its key id, purpose and
kind (:func:`~sa_fieldcrypt.keys.wrapped_associated_data`)::

    k2:wrapped:fernet:projects/P/locations/L/keyRings/R/cryptoKeys/K:<url-safe base64>

The one key parser reads it (:func:`~sa_fieldcrypt.keys.parse_key`) into a
:class:`~sa_fieldcrypt.keys.WrappedKey`, and :class:`KmsKeyWrapper` opens it with one
``Decrypt`` call; the key is then kept in memory only, by the key cache in front of the
provider, and unwrapped again at each refresh. The environment provider and the Secret
Manager provider both unwrap this way.

Every call sends CRC32C checksums of what it sends and checks those of what it gets, as the
KMS API recommends; every failure is a :class:`~sa_fieldcrypt.errors.KeyProviderError` that
names the key id, the KMS key and the fix, never key material or ciphertext.

Typical usage::

    from sa_fieldcrypt import parse_key
    from sa_fieldcrypt.providers.kms import KmsKeyWrapper

    kek = "projects/my-project/locations/global/keyRings/app/cryptoKeys/fieldcrypt"
    wrapper = KmsKeyWrapper()
    entry = wrapper.wrap(parse_key(new_key, key_id="k3"), kek).entry   # for FIELDCRYPT_KEYS
    key = parse_key(entry, unwrap=wrapper)                              # one Decrypt
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

try:
    import google_crc32c
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud import kms_v1
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "Cloud KMS key wrapping needs the gcp extra: pip install 'sa-fieldcrypt[gcp]'"
    ) from exc

from sa_fieldcrypt.errors import ConfigurationError, KeyProviderError
from sa_fieldcrypt.keys import (
    Key,
    Keyring,
    Purpose,
    Unwrap,
    WrappedKey,
    check_kms_key,
    wrapped_associated_data,
)
from sa_fieldcrypt.providers.google import (
    NO_CREDENTIALS_HELP,
    Deadline,
    common_hint,
    status_name,
)
from sa_fieldcrypt.settings import FieldCryptSettings, load_settings

__all__ = [
    "KmsKeyWrapper",
    "Rewrapped",
    "Unwrapped",
    "is_outage",
    "refusal_status",
    "rewrap_keyring",
]

# The statuses of a KMS that cannot be reached now (as opposed to one that refuses).
_OUTAGES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL"})
# How many times one call is made while its response fails its CRC32C check, as the KMS
# documentation advises ("retry a limited number of times"), within the call's deadline.
_CHECKSUM_ATTEMPTS = 3
# How Cloud KMS says a request's checksum did not match its data (INVALID_ARGUMENT).
_DAMAGED_REQUEST = re.compile(r"checksum in field \w+ did not match", re.IGNORECASE)
# What a FAILED_PRECONDITION names: the version and its state. Only these tokens are read from
# the service's message, never quoted whole.
_VERSION_NAME = re.compile(r"projects/[A-Za-z0-9._/-]+/cryptoKeyVersions/\d+")
_VERSION_STATES = ("DESTROY_SCHEDULED", "DESTROYED", "DISABLED", "PENDING_GENERATION")
_STATE_FIXES = {
    "DISABLED": "enable it again (gcloud kms keys versions enable), or re-wrap the key under "
    "an enabled version while one still opens it (`fieldcrypt keys rewrap`)",
    "DESTROY_SCHEDULED": "it is scheduled for destruction: restore and enable it (gcloud kms "
    "keys versions restore, then enable) before it is destroyed, then run `fieldcrypt keys "
    "rewrap`",
    "DESTROYED": "it is destroyed, for good: nothing can unwrap what it wrapped; serve the "
    "key from a backup wrapped under another version, or retire the key id",
    "PENDING_GENERATION": "it is still being generated: try again in a moment",
}


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """A key opened by Cloud KMS, and whether the KMS key's primary version opened it.

    Attributes:
        key: the key, with :attr:`~sa_fieldcrypt.keys.Key.wrapped` set.
        used_primary: whether the version that wrapped it is the KMS key's primary now;
            False means :meth:`KmsKeyWrapper.rewrap` would move it.
    """

    key: Key
    used_primary: bool


@dataclass(frozen=True, slots=True)
class Rewrapped:
    """What :func:`rewrap_keyring` made of keyring text.

    Attributes:
        text: the new keyring text, entries in the same order: each wrapped entry under its
            KMS key's primary version, every other entry as it was (key text included).
        rewrapped: the ids of the entries wrapped anew (plaintext ones included, when asked).
        unchanged: the ids of the wrapped entries already under the primary version.
        plain: the ids of the entries that are not wrapped.
    """

    text: str
    rewrapped: tuple[str, ...]
    unchanged: tuple[str, ...]
    plain: tuple[str, ...]


class KmsKeyWrapper:
    """Wrap keys with, and unwrap them from, Cloud KMS symmetric keys.

    An instance is an :data:`~sa_fieldcrypt.keys.Unwrap`: pass it as ``unwrap=`` to
    :func:`~sa_fieldcrypt.keys.parse_key` or :meth:`~sa_fieldcrypt.keys.Keyring.parse`.

    Args:
        client: a ``KeyManagementServiceClient`` to use; by default one is made at the first
            call, with the application default credentials.
        timeout: seconds one wrap or unwrap may take, retries included, before it fails.

    Raises:
        ConfigurationError: a timeout that is not a positive number of seconds.
    """

    def __init__(
        self, *, client: kms_v1.KeyManagementServiceClient | None = None, timeout: float = 5.0
    ):
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigurationError("KmsKeyWrapper: timeout must be > 0 seconds")
        self.timeout = float(timeout)
        self._client = client
        self._client_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: FieldCryptSettings | None = None,
        *,
        client: kms_v1.KeyManagementServiceClient | None = None,
    ) -> Self:
        """Build the wrapper the settings describe: ``FIELDCRYPT_GCP_TIMEOUT`` per call.

        Args:
            settings: the settings; read from the environment when omitted.
            client: a client to use instead of the default one.
        """
        settings = settings or load_settings()
        return cls(client=client, timeout=settings.gcp_timeout)

    def wrap(self, key: Key, kms_key: str, *, deadline: Deadline | None = None) -> WrappedKey:
        """Have Cloud KMS encrypt ``key`` under ``kms_key``'s primary version; one call.

        Args:
            key: the key to wrap.
            kms_key: the Cloud KMS key, ``projects/P/locations/L/keyRings/R/cryptoKeys/K``.
            deadline: the time budget of the operation this call is part of; by default
                ``timeout`` seconds of its own.

        Raises:
            ConfigurationError: ``kms_key`` is not a crypto key name.
            KeyProviderError: KMS refused (the message says which role is missing, or which
                version is unusable) or could not be reached, or a checksum failed.
        """
        check_kms_key(kms_key)
        raw = key.material()
        aad = wrapped_associated_data(key.id, key.kind)
        deadline = deadline or Deadline(self.timeout)
        request = {
            "name": kms_key,
            "plaintext": raw,
            "plaintext_crc32c": google_crc32c.value(raw),
            "additional_authenticated_data": aad,
            "additional_authenticated_data_crc32c": google_crc32c.value(aad),
        }
        for _ in range(_CHECKSUM_ATTEMPTS):
            response = self._send("encrypt", request, deadline, "wrap", key.id, kms_key)
            if response is None:
                continue
            ciphertext = bytes(response.ciphertext)
            if (
                response.verified_plaintext_crc32c
                and response.verified_additional_authenticated_data_crc32c
                and _checksum(response, "ciphertext_crc32c") == google_crc32c.value(ciphertext)
                and response.name.startswith(f"{kms_key}/cryptoKeyVersions/")
            ):
                return WrappedKey(key.id, key.kind, kms_key, ciphertext)
        raise KeyProviderError(
            f"key {key.id!r}: Cloud KMS key {kms_key!r}: the Encrypt request or response "
            f"failed its CRC32C check (or named another key) {_CHECKSUM_ATTEMPTS} times, so it "
            "was damaged on the way; nothing was wrapped: check the network path to Cloud KMS, "
            "and try again"
        )

    def open(self, wrapped: WrappedKey, *, deadline: Deadline | None = None) -> Unwrapped:
        """Have Cloud KMS decrypt ``wrapped``; one ``Decrypt`` call.

        Args:
            wrapped: the wrapped key.
            deadline: the time budget of the operation this call is part of (a key load);
                by default ``timeout`` seconds of its own.

        Raises:
            KeyProviderError: the wrapped key does not open under its key id, purpose and
                kind (relabelled or corrupted), the caller lacks
                ``roles/cloudkms.cryptoKeyDecrypter``, the version that wrapped it is
                disabled or destroyed, a checksum failed, or KMS could not be reached.
        """
        ciphertext, aad = wrapped.ciphertext, wrapped.associated_data
        deadline = deadline or Deadline(self.timeout)
        request = {
            "name": wrapped.kms_key,
            "ciphertext": ciphertext,
            "ciphertext_crc32c": google_crc32c.value(ciphertext),
            "additional_authenticated_data": aad,
            "additional_authenticated_data_crc32c": google_crc32c.value(aad),
        }
        for _ in range(_CHECKSUM_ATTEMPTS):
            response = self._send(
                "decrypt", request, deadline, "unwrap", wrapped.key_id, wrapped.kms_key
            )
            if response is None:
                continue
            plaintext = bytes(response.plaintext)
            if _checksum(response, "plaintext_crc32c") == google_crc32c.value(plaintext):
                break
        else:
            raise KeyProviderError(
                f"key {wrapped.key_id!r}: Cloud KMS key {wrapped.kms_key!r}: the Decrypt "
                f"request or response failed its CRC32C check {_CHECKSUM_ATTEMPTS} times, so "
                "it was damaged on the way; the key was not used: check the network path to "
                "Cloud KMS, and try again"
            )
        try:
            key = wrapped.open(plaintext)
        except ConfigurationError as exc:
            raise KeyProviderError(str(exc)) from None
        return Unwrapped(key, bool(response.used_primary))

    def unwrap(self, wrapped: WrappedKey, *, deadline: Deadline | None = None) -> Key:
        """Return the key ``wrapped`` holds, opened by Cloud KMS (see :meth:`open`)."""
        return self.open(wrapped, deadline=deadline).key

    __call__ = unwrap

    def within(self, deadline: Deadline | None = None) -> Unwrap:
        """An :data:`~sa_fieldcrypt.keys.Unwrap` whose calls all share one time budget.

        For one key load: however many wrapped keys it opens, the load ends within its
        budget, and a slow KMS is named as the cause.

        Args:
            deadline: the load's budget; by default ``timeout`` seconds from now.
        """
        deadline = deadline or Deadline(self.timeout)

        def unwrap(wrapped: WrappedKey) -> Key:
            return self.open(wrapped, deadline=deadline).key

        return unwrap

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey | None:
        """Wrap the key again under its KMS key's primary version; None if it is already.

        Two calls (``Decrypt``, then ``Encrypt`` when needed), within one ``timeout``. The
        key inside, its id and its kind do not change, so nothing encrypted under it changes
        either.
        """
        deadline = Deadline(self.timeout)
        opened = self.open(wrapped, deadline=deadline)
        if opened.used_primary:
            return None
        return self.wrap(opened.key, wrapped.kms_key, deadline=deadline)

    def primary_version(self, kms_key: str) -> str:
        """The name of ``kms_key``'s primary version: what :meth:`wrap` encrypts under now."""
        check_kms_key(kms_key)
        deadline = Deadline(self.timeout)
        with self._errors("read", None, kms_key):
            found = self._get_client().get_crypto_key(request={"name": kms_key}, **deadline.read())
        return str(found.primary.name)

    def _send(
        self,
        method: str,
        request: dict[str, Any],
        deadline: Deadline,
        action: str,
        key_id: str,
        kms_key: str,
    ) -> Any:
        """One ``Encrypt`` or ``Decrypt`` call; None when KMS says the request arrived damaged."""
        with self._errors(action, key_id, kms_key):
            try:
                return getattr(self._get_client(), method)(request=request, **deadline.read())
            except api_exceptions.InvalidArgument as exc:
                # A request checksum that did not match what arrived: worth sending again.
                if _DAMAGED_REQUEST.search(getattr(exc, "message", "") or ""):
                    return None
                raise

    def _get_client(self) -> kms_v1.KeyManagementServiceClient:
        with self._client_lock:
            if self._client is None:
                self._client = kms_v1.KeyManagementServiceClient()
            return self._client

    @contextmanager
    def _errors(self, action: str, key_id: str | None, kms_key: str) -> Iterator[None]:
        where = f"Cloud KMS key {kms_key!r}"
        if key_id is not None:
            where = f"key {key_id!r}: {where}"
        try:
            yield
        except auth_exceptions.GoogleAuthError as exc:
            raise KeyProviderError(f"{where}: could not {action}: {NO_CREDENTIALS_HELP}") from exc
        except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as exc:
            code = status_name(exc)
            # Only the status name, our hint and tokens matched in the service's message:
            # the message itself is not ours to vouch for.
            raise KeyProviderError(
                f"{where}: could not {action} ({code}); {self._hint(code, action, exc)}"
            ) from exc

    def _hint(self, code: str, action: str, exc: Exception) -> str:
        if code == "PERMISSION_DENIED":
            role = "cryptoKeyEncrypter" if action == "wrap" else "cryptoKeyDecrypter"
            if action == "read":
                role = "viewer"
            return (
                f"the caller may not use the KMS key: grant its service account "
                f"roles/cloudkms.{role} on that key"
                + (
                    " (reading the wrapped key from the settings or Secret Manager is a "
                    "separate permission, and not enough)"
                    if action != "wrap"
                    else ""
                )
            )
        if code == "FAILED_PRECONDITION":
            detail = getattr(exc, "message", "") or ""
            version = _VERSION_NAME.search(detail)
            state = next((s for s in _VERSION_STATES if s in detail), None)
            which = f"version {version.group(0)!r}" if version else "the key version"
            if version is None and state is None:
                # Not a version's state: the KMS API not enabled in the project, say.
                return (
                    "Cloud KMS refused the call in the state the project or key is in: check "
                    "that the Cloud KMS API is enabled in the key's project, and the key's "
                    "versions (gcloud kms keys versions list)"
                )
            if action == "wrap":
                return (
                    f"{which}, the primary, is {state or 'not enabled'}: make an enabled "
                    "version primary (gcloud kms keys set-primary-version)"
                )
            return (
                f"{which}, which wrapped this key, is {state or 'not enabled'}: "
                + _STATE_FIXES.get(state or "DISABLED", _STATE_FIXES["DISABLED"])
            )
        if code == "INVALID_ARGUMENT" and action == "unwrap":
            return (
                "the wrapped key does not open under its key id and purpose: it was relabelled "
                "or corrupted (or wrapped by another KMS key); copy the entry again from "
                "where it was made"
            )
        if code == "NOT_FOUND":
            return "the KMS key does not exist: check its name (or the caller may not see it)"
        common = common_hint(code, "Cloud KMS", self.timeout, exc)
        if common is not None:
            return common
        return "see the chained exception"

    def __repr__(self) -> str:
        return f"KmsKeyWrapper(timeout={self.timeout:g})"


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc``, raised by :class:`KmsKeyWrapper`, means KMS could not be reached now.

    Such a failure says nothing of the wrapped key, so a load that meets it fails as a whole
    (and the cache serves the previous keys) rather than leaving the key out.
    """
    cause = exc.__cause__
    return isinstance(cause, Exception) and (
        isinstance(cause, api_exceptions.RetryError) or status_name(cause) in _OUTAGES
    )


def refusal_status(exc: BaseException) -> str | None:
    """The status Cloud KMS refused a :class:`KmsKeyWrapper` call with, or None.

    ``"PERMISSION_DENIED"``, ``"FAILED_PRECONDITION"``…: what the service answered, read from
    the exception ``exc`` chains. None when it did not answer (:func:`is_outage`) or the
    failure was not the service's (a checksum, a key that is not one).
    """
    cause = exc.__cause__
    if not isinstance(cause, api_exceptions.GoogleAPICallError) or is_outage(exc):
        return None
    return status_name(cause)


def rewrap_keyring(
    text: str,
    wrapper: KmsKeyWrapper,
    *,
    purpose: Purpose = "encryption",
    source: str = "keys",
    wrap: str | None = None,
) -> Rewrapped:
    """Re-wrap every wrapped entry of keyring text under its KMS key's primary version.

    One ``Decrypt`` per wrapped entry, and one ``Encrypt`` per entry not yet under the
    primary. Key ids, kinds, order and the keys themselves stay as they are, so no stored
    value changes; put the new text where the old was (``FIELDCRYPT_KEYS``), and once every
    instance runs with it, the old KMS key versions may be disabled.

    Args:
        text: keyring text, as ``FIELDCRYPT_KEYS`` holds it.
        wrapper: the KMS client wrapper.
        purpose: the keyring's purpose.
        source: how messages name the text (a setting).
        wrap: a Cloud KMS key to wrap the plaintext entries with too (one ``Encrypt``
            each): how a plaintext keyring becomes a wrapped one. Without it they are
            copied as they are.

    Raises:
        ConfigurationError: the text is not a keyring of ``purpose``.
        KeyProviderError: an entry could not be unwrapped or wrapped; nothing is returned.
    """
    opened: dict[str, Unwrapped] = {}

    def unwrap(wrapped: WrappedKey) -> Key:
        found = opened[wrapped.key_id] = wrapper.open(wrapped)
        return found.key

    # Parsed as the application parses it, so the new text is known to load the same keys.
    keyring = Keyring.parse(text, purpose=purpose, source=source, unwrap=unwrap)
    entries: list[str] = []
    rewrapped: list[str] = []
    unchanged: list[str] = []
    plain: list[str] = []
    for key in keyring:
        wrapped = key.wrapped
        if wrapped is None and wrap is not None:
            rewrapped.append(key.id)
            entries.append(wrapper.wrap(key, wrap).entry)
        elif wrapped is None:
            plain.append(key.id)
            entries.append(f"{key.id}:{key.export()}")
        elif opened[key.id].used_primary:
            unchanged.append(key.id)
            entries.append(wrapped.entry)
        else:
            rewrapped.append(key.id)
            entries.append(wrapper.wrap(key, wrapped.kms_key).entry)
    return Rewrapped(",".join(entries), tuple(rewrapped), tuple(unchanged), tuple(plain))


def _checksum(message: Any, name: str) -> int | None:
    """A response's CRC32C field (an ``Int64Value``, read as an int), or None when absent."""
    return int(getattr(message, name)) if name in message else None

"""Keys from Google Cloud Secret Manager: one secret, one key per enabled version.

Needs the ``gcp`` extra: ``pip install 'sa-fieldcrypt[gcp]'``.

Every ENABLED version of the secret holds one key, whose id is ``v<N>`` (N the version
number); DISABLED and DESTROYED versions are ignored. The version that encrypts (writes) is
the one the secret's version alias ``fieldcrypt-primary`` (configurable) names, and nothing
else: with no alias, only a secret with a single enabled version has a primary (that version);
more than one enabled version and no alias, or an alias on a version that is not enabled,
fail the load, so whoever may add versions cannot thereby choose the encrypting key. A
rotation therefore has two phases: add a version (every instance can decrypt with it after
its next refresh), then move the alias (now it encrypts).
:meth:`GoogleSecretManagerKeyProvider.add_key` and
:meth:`~GoogleSecretManagerKeyProvider.promote` do the two steps, as do the commands
``fieldcrypt keys add`` and ``fieldcrypt keys promote``.

Versions load one by one: a version that cannot be read as a key (its payload is not a key,
is a key of another purpose, or fails its CRC32C checksum) is skipped, logged and counted in
:mod:`sa_fieldcrypt.metrics` (``skipped_versions``), and the others load. The load fails only
when the primary itself cannot load. The cache in front of the provider then serves the last
keys for at most ``max_stale`` seconds (a day by default) while loads keep failing.

A version's payload is one key as :func:`~sa_fieldcrypt.keys.parse_key` reads it: the key
text that ``fieldcrypt keygen`` prints, ``[kind:]key``, of any kind the provider's purpose
takes (``fernet`` or ``aes-gcm-siv`` for encryption, ``hmac-sha256`` for blind indexes).
A secret serves one purpose: blind-index keys live in a secret of their own
(``purpose="blind-index"``, or ``FIELDCRYPT_BLIND_INDEX_PROVIDER=gcp`` with
``FIELDCRYPT_BLIND_INDEX_GCP_SECRET``).

Typical usage::

    import sa_fieldcrypt
    from sa_fieldcrypt.providers.gcp import GoogleSecretManagerKeyProvider

    sa_fieldcrypt.configure(
        provider=GoogleSecretManagerKeyProvider("projects/my-project/secrets/fieldcrypt-keys")
    )

or, from settings, ``FIELDCRYPT_PROVIDER=gcp`` and
``FIELDCRYPT_GCP_SECRET=projects/my-project/secrets/fieldcrypt-keys``.

One load makes one ``GetSecret`` call (the aliases), one ``ListSecretVersions`` call per page
of enabled versions, and one ``AccessSecretVersion`` call per enabled version. It blocks; the
cache in front of every provider makes it once per ``cache_ttl``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

try:
    import google_crc32c
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud import kms_v1, secretmanager_v1
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "the Google Cloud Secret Manager key provider needs the gcp extra: "
        "pip install 'sa-fieldcrypt[gcp]'"
    ) from exc

from sa_fieldcrypt import metrics
from sa_fieldcrypt.errors import ConfigurationError, KeyProviderError
from sa_fieldcrypt.keys import (
    DEFAULT_KINDS,
    PURPOSE_KINDS,
    PURPOSES,
    Key,
    KeyKind,
    Keyring,
    Purpose,
    Unwrap,
    WrappedKey,
    check_kms_key,
    generate_key,
    has_wrapped_entries,
    parse_key,
)
from sa_fieldcrypt.providers.base import DEFAULT_MAX_STALE, check_max_stale
from sa_fieldcrypt.providers.google import NO_CREDENTIALS_HELP, Deadline, common_hint, status_name
from sa_fieldcrypt.providers.kms import KmsKeyWrapper, is_outage, refusal_status
from sa_fieldcrypt.settings import FieldCryptSettings, load_settings

__all__ = [
    "DEFAULT_PRIMARY_ALIAS",
    "GoogleSecretManagerKeyProvider",
    "KeyVersion",
    "RewrappedVersion",
    "SecretRewrap",
    "SecretVersions",
]

logger = logging.getLogger("sa_fieldcrypt")

#: The version alias that names the encrypting version unless another name is configured.
DEFAULT_PRIMARY_ALIAS = "fieldcrypt-primary"

_SECRET_NAME = re.compile(
    r"projects/(?P<project>[^/\s]+)(?:/locations/(?P<location>[^/\s]+))?"
    r"/secrets/(?P<secret>[A-Za-z0-9_-]{1,255})\Z"
)
# Secret Manager's own rule for alias names.
_ALIAS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}\Z")
_RESERVED_ALIASES = frozenset({"latest", "NEW"})
_ENABLED = secretmanager_v1.SecretVersion.State.ENABLED
_PAGE_SIZE = 250
_READ_HINTS = {
    "PERMISSION_DENIED": "the caller may not read it: grant the application's service account "
    "roles/secretmanager.secretAccessor and roles/secretmanager.viewer on the secret",
    "NOT_FOUND": "the secret does not exist: check FIELDCRYPT_GCP_SECRET "
    "(projects/PROJECT/secrets/NAME)",
}
_WRITE_HINTS = {
    "PERMISSION_DENIED": "the caller may not change it: adding versions needs "
    "roles/secretmanager.secretVersionManager, moving the alias needs "
    "secretmanager.secrets.update (in roles/secretmanager.admin)",
    "NOT_FOUND": "the secret does not exist: create it first "
    "(gcloud secrets create NAME --replication-policy=automatic)",
}
# Why a listed version gives no key. None quotes the payload.
_GONE = "it was disabled or destroyed while the keys were read (FAILED_PRECONDITION)"
_DAMAGED = (
    "its payload does not match its CRC32C checksum (data_crc32c), so it was damaged on the "
    "way or in storage; if that persists, add the key again and disable this version"
)


def _key_from_payload(data: bytes, number: int, purpose: Purpose, unwrap: Unwrap) -> Key:
    # A trailing newline (from `echo`) is whitespace around the key, which the parser ignores.
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if has_wrapped_entries(text):
        # A wrapped entry that carries its key id (as `keys add --wrap` and `keys rewrap`
        # write it): its id is bound into the wrapping, so it cannot be the version's.
        return parse_key(text, purpose=purpose, unwrap=unwrap)
    return parse_key(text, purpose=purpose, key_id=f"v{number}", unwrap=unwrap)


class _Skip(str):
    """Why a version is skipped, with the key id it holds (which a plain reason lacks)."""

    key_id: str

    def __new__(cls, reason: str, key_id: str) -> _Skip:
        made = super().__new__(cls, reason)
        made.key_id = key_id
        return made


@dataclass(frozen=True, slots=True)
class _Reads:
    """What reading a secret's enabled versions gave, by version number.

    ``keys``: the keys instances load. ``skipped``: why the others give none. ``denied``:
    wrapped keys Cloud KMS would not open for this caller (``describe`` only). ``unchecked``:
    why what a version gives could not be checked as instances check it (``describe`` only).
    """

    keys: dict[int, Key]
    skipped: dict[int, str]
    denied: dict[int, WrappedKey]
    unchecked: dict[int, str]


class _Found(Exception):
    def __init__(self, wrapped: WrappedKey):
        super().__init__(wrapped.key_id)
        self.wrapped = wrapped


def _wrapped_in(data: bytes, number: int, purpose: Purpose) -> WrappedKey | None:
    """The wrapped key a version's payload holds, read by the one parser, not unwrapped."""

    def capture(wrapped: WrappedKey) -> Key:
        raise _Found(wrapped)

    try:
        _key_from_payload(data, number, purpose, capture)
    except _Found as found:
        return found.wrapped
    except (ConfigurationError, KeyProviderError):
        pass
    return None


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of the secret, described without its key.

    Attributes:
        number: the version number, from 1.
        state: ``"ENABLED"``, ``"DISABLED"`` or ``"DESTROYED"``.
        created: when the version was added, if the service said.
        primary: whether this version encrypts new values (writes new index values).
        skipped: why instances leave this enabled version's key out of their keyring (its
            payload is not a key, or fails its checksum), or None. It names the version,
            never its content.
        carried_key_id: the key id a wrapped entry in the payload carries (see
            :attr:`key_id`), or None.
        wrapped_by: the Cloud KMS key that wraps this version's key, or None (not wrapped,
            or not read).
    """

    number: int
    state: str
    created: datetime | None
    primary: bool
    skipped: str | None = None
    carried_key_id: str | None = None
    wrapped_by: str | None = None

    @property
    def key_id(self) -> str:
        """The key id of this version's key in the keyring and in tokens.

        ``v<number>``, unless the payload is a wrapped entry that carries its own id (which
        ``keys rewrap`` keeps when it moves a key to a new version).
        """
        return self.carried_key_id or f"v{self.number}"


@dataclass(frozen=True, slots=True)
class SecretVersions:
    """Every version of a secret, and whether instances can load keys from it; no key in it.

    Attributes:
        versions: every version, newest first.
        alias: the version the primary alias names, or None when it is not set.
        problem: why instances cannot load keys from the secret now (the message their
            load fails with), or None when they can.
        checked: whether the enabled versions' payloads were read and checked, as
            instances read them; False when the caller may not read them
            (``secretmanager.versions.access``), so ``skipped`` is not known.
        unchecked: the enabled versions that could not be checked as instances check them,
            and why: their wrapped key, which the caller may not have Cloud KMS open
            (``roles/cloudkms.cryptoKeyDecrypter``, which instances have and an operator
            need not), or whether they hold the same key as another version of their key id.
            Their key id and KMS key are read from the payload.
    """

    versions: tuple[KeyVersion, ...]
    alias: int | None
    problem: str | None
    checked: bool
    unchecked: Mapping[int, str] = field(default_factory=dict)

    @property
    def primary(self) -> KeyVersion | None:
        """The version that encrypts (writes), or None when instances cannot load the keys."""
        return next((version for version in self.versions if version.primary), None)


@dataclass(frozen=True, slots=True)
class RewrappedVersion:
    """One key that ``rewrap`` moved to a version wrapped under the KMS key's primary.

    Attributes:
        key_id: the key's id, the same before and after.
        old: the version it was in, now disabled.
        new: the version that holds it now.
        plaintext: whether ``old`` held the key in plaintext: a disabled version keeps its
            payload, so destroy it once every instance has refreshed.
    """

    key_id: str
    old: int
    new: int
    plaintext: bool = False


@dataclass(frozen=True, slots=True)
class SecretRewrap:
    """What :meth:`GoogleSecretManagerKeyProvider.rewrap` did; no key in it.

    Attributes:
        moved: the keys moved to new versions, in the order they were moved.
        unchanged: the ids of the wrapped keys already under their KMS key's primary.
        skipped: the enabled versions that could not be read, and why.
    """

    moved: tuple[RewrappedVersion, ...]
    unchanged: tuple[str, ...]
    skipped: Mapping[int, str]


class GoogleSecretManagerKeyProvider:
    """Load a keyring from the enabled versions of one Secret Manager secret.

    Typical usage::

        provider = GoogleSecretManagerKeyProvider("projects/my-project/secrets/fieldcrypt-keys")
        sa_fieldcrypt.configure(provider=provider)

        index_keys = GoogleSecretManagerKeyProvider(
            "projects/my-project/secrets/fieldcrypt-index-keys", purpose="blind-index"
        )
        sa_fieldcrypt.configure(provider=index_keys, purpose="blind-index")

    Args:
        secret: the secret, ``projects/PROJECT/secrets/NAME`` or, for a regional secret,
            ``projects/PROJECT/locations/LOCATION/secrets/NAME``.
        purpose: what the secret's keys are for: ``"encryption"`` or ``"blind-index"``.
        client: a ``SecretManagerServiceClient`` to use; by default one is made at the first
            load, with the application default credentials (and the regional endpoint for a
            regional secret).
        primary_alias: the version alias that names the version that writes (encrypts, or
            computes new index values).
        cache_ttl: seconds a loaded keyring stays fresh; None loads once.
        max_stale: seconds since the last successful load after which the cache stops
            serving the keys while refreshes fail, and raises instead; at least
            ``cache_ttl``. None serves old keys for ever: only ask for it knowingly, as a
            key disabled in the secret then never stops working during an outage.
        timeout: seconds one load (or one ``add_key``/``promote``) may take, retries
            included, before it fails; also the time one Cloud KMS call may take.
        kms_client: a Cloud KMS ``KeyManagementServiceClient`` to unwrap (and wrap) keys
            with; by default one is made when a wrapped key is first met.

    Raises:
        ConfigurationError: a malformed secret name, alias name, purpose, timeout or
            ``max_stale``.
    """

    def __init__(
        self,
        secret: str,
        *,
        purpose: Purpose = "encryption",
        client: secretmanager_v1.SecretManagerServiceClient | None = None,
        primary_alias: str = DEFAULT_PRIMARY_ALIAS,
        cache_ttl: float | None = 300.0,
        max_stale: float | None = DEFAULT_MAX_STALE,
        timeout: float = 5.0,
        kms_client: kms_v1.KeyManagementServiceClient | None = None,
    ):
        self.secret = _check_secret_name(secret, "GoogleSecretManagerKeyProvider")
        self.primary_alias = _check_alias(primary_alias, "GoogleSecretManagerKeyProvider")
        if purpose not in PURPOSES:
            raise ConfigurationError(
                f"GoogleSecretManagerKeyProvider: purpose must be one of {', '.join(PURPOSES)}"
            )
        self.purpose: Purpose = purpose
        if not timeout > 0:
            raise ConfigurationError("GoogleSecretManagerKeyProvider: timeout must be > 0")
        self.cache_ttl = cache_ttl
        self.max_stale = check_max_stale(
            max_stale, cache_ttl, stale_name="GoogleSecretManagerKeyProvider: max_stale"
        )
        #: The setting :attr:`max_stale` came from, as the key cache's messages name it;
        #: None when it was passed in.
        self.max_stale_setting: str | None = None
        self.timeout = float(timeout)
        self._client = client
        self._client_lock = threading.Lock()
        self._wrapper = KmsKeyWrapper(client=kms_client, timeout=self.timeout)

    @property
    def source(self) -> str:
        """Where the keys come from, in messages and metrics: the secret's name."""
        return self.secret

    @classmethod
    def from_settings(
        cls,
        settings: FieldCryptSettings | None = None,
        *,
        secret: str | None = None,
        client: secretmanager_v1.SecretManagerServiceClient | None = None,
        purpose: Purpose = "encryption",
        kms_client: kms_v1.KeyManagementServiceClient | None = None,
    ) -> Self:
        """Build the provider that the ``FIELDCRYPT_GCP_*`` settings describe.

        The secret is ``FIELDCRYPT_GCP_SECRET`` for encryption keys and
        ``FIELDCRYPT_BLIND_INDEX_GCP_SECRET`` for blind-index keys; the cache TTL, staleness
        bound, timeout and primary alias settings serve both.

        Args:
            settings: the settings; read from the environment when omitted.
            secret: a secret name that overrides the setting.
            client: a client to use instead of the default one.
            purpose: ``"encryption"`` or ``"blind-index"``.
            kms_client: a Cloud KMS client to unwrap keys with instead of the default one.

        Raises:
            ConfigurationError: no secret is configured, a setting is malformed, or the
                blind-index secret is the encryption secret.
        """
        settings = settings or load_settings()
        setting = "FIELDCRYPT_GCP_SECRET"
        configured = settings.gcp_secret
        if purpose == "blind-index":
            setting, configured = (
                "FIELDCRYPT_BLIND_INDEX_GCP_SECRET",
                settings.blind_index_gcp_secret,
            )
        name = secret or configured
        if not name:
            raise ConfigurationError(
                f"no Secret Manager secret configured: set {setting} to "
                "projects/PROJECT/secrets/NAME"
            )
        if purpose == "blind-index" and name == settings.gcp_secret:
            # Whoever may compute index values must not thereby hold the encryption keys.
            raise ConfigurationError(
                f"{setting if not secret else 'secret'} names the encryption keys' secret "
                "(FIELDCRYPT_GCP_SECRET); keep blind-index keys in a secret of their own"
            )
        max_stale = check_max_stale(
            settings.gcp_max_stale,
            settings.gcp_cache_ttl,
            stale_name="FIELDCRYPT_GCP_MAX_STALE",
            ttl_name="FIELDCRYPT_GCP_CACHE_TTL",
        )
        provider = cls(
            _check_secret_name(name, "secret" if secret else setting),
            purpose=purpose,
            client=client,
            primary_alias=_check_alias(settings.gcp_primary_alias, "FIELDCRYPT_GCP_PRIMARY_ALIAS"),
            cache_ttl=settings.gcp_cache_ttl,
            max_stale=max_stale,
            timeout=settings.gcp_timeout,
            kms_client=kms_client,
        )
        provider.max_stale_setting = "FIELDCRYPT_GCP_MAX_STALE"
        return provider

    def load(self) -> Keyring:
        """Read every enabled version and return the keyring; blocks, at most ``timeout`` s.

        A version that cannot be read as a key is skipped: logged, counted in
        :mod:`sa_fieldcrypt.metrics` (``skipped_versions``) and left out.

        Raises:
            KeyProviderError: the secret could not be read; no version is enabled; no
                version is primary (more than one enabled and no alias, or the alias on a
                version that is not enabled); or the primary cannot be read as a key. The
                message names the secret and versions, never a payload.
        """
        deadline = Deadline(self.timeout)
        with self._errors("read the keys", _READ_HINTS):
            client = self._get_client()
            aliases = self._aliases(client, deadline)
            enabled = self._enabled(client, deadline)
            # Decided before any payload is read: which key encrypts never depends on
            # which payloads happen to parse.
            primary = self._primary_version(aliases, enabled)
            read = self._read_keys(client, enabled, deadline)
        keys, skipped = read.keys, read.skipped
        for number, reason in skipped.items():
            metrics.count_skipped_version(f"{self.secret}/versions/{number}")
            if number != primary:
                held = f"key {reason.key_id}" if isinstance(reason, _Skip) else "its key"
                logger.warning(
                    "sa_fieldcrypt: Secret Manager secret %s: version %d is skipped, so %s "
                    "is not read from it: %s",
                    self.secret,
                    number,
                    held,
                    reason,
                )
        if primary in skipped:
            raise self._unusable_primary(aliases, primary, skipped[primary])
        # Newest first, one key per id: a key moved to a new version by `keys rewrap` is
        # the same key under the same id in both until the old version is disabled.
        unique: dict[str, Key] = {}
        for key in keys.values():
            unique.setdefault(key.id, key)
        return Keyring(unique.values(), primary=keys[primary].id, purpose=self.purpose)

    def _read_keys(
        self,
        client: secretmanager_v1.SecretManagerServiceClient,
        numbers: Sequence[int],
        deadline: Deadline,
        *,
        unwrap: Unwrap | None = None,
        may_be_denied: bool = False,
    ) -> _Reads:
        """Each version's key, or why it gives none; ``numbers`` newest first.

        The one reading of a secret's keys (loads, ``describe`` and ``rewrap``), so that all
        three agree on which version holds which key: the oldest version holding a key id
        holds it. A newer version holding it with another key is skipped; while the oldest
        is a wrapped key that does not unwrap (its KMS permission revoked, say), no newer
        copy stands in for it. A newer version never takes a key from an older one, so
        whoever may only add versions cannot remove or replace a key. With
        ``may_be_denied``, a wrapped key that Cloud KMS refuses to open for this caller
        (PERMISSION_DENIED) is kept, not unwrapped, and what it makes uncheckable said.
        """
        reads = {
            number: self._read_key(
                client, number, deadline, unwrap=unwrap, may_be_denied=may_be_denied
            )
            for number in numbers
        }
        skipped: dict[int, str] = {n: r for n, r in reads.items() if isinstance(r, str)}
        denied = {n: r for n, r in reads.items() if isinstance(r, WrappedKey)}
        unchecked = {
            n: "its wrapped key was not unwrapped, so whether it opens is not checked: that "
            f"needs roles/cloudkms.cryptoKeyDecrypter on {r.kms_key}, as the application has"
            for n, r in denied.items()
        }
        held: dict[int, str] = {}  # the key id each version holds, where it is known
        for number, read in reads.items():
            if isinstance(read, Key):
                held[number] = read.id
            elif isinstance(read, WrappedKey | _Skip):
                held[number] = read.key_id
        oldest: dict[str, int] = {}
        for number in sorted(held):
            oldest.setdefault(held[number], number)
        for number in sorted(held):
            key_id, first = held[number], oldest[held[number]]
            older, read = reads[first], reads[number]
            if first == number or isinstance(read, str):
                continue  # the holder, or skipped for a reason of its own
            if isinstance(older, str):
                skipped[number] = _Skip(
                    f"it holds key id {key_id!r}, whose wrapped copy in the older version "
                    f"{first} does not unwrap; a key is not read from one copy while another "
                    "is refused",
                    key_id,
                )
            elif isinstance(older, WrappedKey) or isinstance(read, WrappedKey):
                unchecked[number] = (
                    f"it holds key id {key_id!r}, as the older version {first} does, and "
                    "whether with the same key (else instances skip it) is not checked: one "
                    "of them was not unwrapped"
                )
            elif not older.shares_secret_with(read):
                skipped[number] = _Skip(
                    f"it holds key id {key_id!r}, which the older version {first} holds with "
                    "another key; disable the version that is wrong",
                    key_id,
                )
        keys = {n: r for n, r in reads.items() if isinstance(r, Key) and n not in skipped}
        return _Reads(keys, skipped, denied, unchecked)

    def describe(self) -> SecretVersions:
        """Describe every version of the secret, which one writes, and which are skipped.

        Reads each enabled version as :meth:`load` does, so that what it reports is what
        instances get; when the caller may not read versions, it reports the rest.

        Raises:
            KeyProviderError: the secret could not be read.
        """
        deadline = Deadline(self.timeout)
        with self._errors("list its versions", _READ_HINTS):
            client = self._get_client()
            aliases = self._aliases(client, deadline)
            found = self._list(client, deadline, enabled_only=False)
            enabled = [number for number, state, _ in found if state == _ENABLED]
            problem: str | None = None
            primary: int | None = None
            try:
                primary = self._primary_version(aliases, enabled)
            except KeyProviderError as exc:
                problem = str(exc)
            read = _Reads({}, {}, {}, {})
            checked = True
            try:
                read = self._read_keys(client, enabled, deadline, may_be_denied=True)
            except api_exceptions.PermissionDenied:
                checked = False  # an operator's role need not read keys
        keys, skipped, denied = read.keys, read.skipped, read.denied
        if checked and primary in skipped:
            problem = str(self._unusable_primary(aliases, primary, skipped[primary]))
        versions = tuple(
            KeyVersion(
                number,
                state.name,
                created,
                primary=number == primary and problem is None,
                skipped=skipped.get(number),
                carried_key_id=_carried_id(keys.get(number) or denied.get(number), number),
                wrapped_by=_wrapped_by(keys.get(number) or denied.get(number)),
            )
            for number, state, created in found
        )
        return SecretVersions(
            versions, aliases.get(self.primary_alias), problem, checked, read.unchecked
        )

    def add_key(
        self, key: str | None = None, *, kind: KeyKind | None = None, wrap: str | None = None
    ) -> KeyVersion:
        """Add a version holding a new key; it is read everywhere, but does not write yet.

        The first phase of a rotation: after every instance's next refresh it decrypts (or,
        for blind-index keys, matches in lookups). Adding a version never changes which key
        writes: the very first version of an empty secret becomes primary (the alias is set
        to it); a secret whose one enabled version has no alias gets the alias on that
        version first; a secret with no primary (more than one enabled version and no
        alias, or the alias on a version that is not enabled) is refused until
        :meth:`promote` names one.

        Args:
            key: the key text to store, ``[kind:]key``; by default a new random key.
            kind: the kind of the new random key (or the kind ``key`` must be); by default
                the purpose's default kind (``fernet``, or ``hmac-sha256`` for blind indexes).
            wrap: a Cloud KMS key (``projects/P/locations/L/keyRings/R/cryptoKeys/K``) to
                store the key wrapped by, instead of in plaintext. The payload is then the
                entry ``v<N>:wrapped:...``, which carries its key id ``v<N>`` (N the new
                version's number) so that ``rewrap`` can move it to another version; one
                KMS ``Encrypt`` call.

        Returns:
            The new version.

        Raises:
            ConfigurationError: ``key`` is not a key of this purpose, or not of ``kind``.
            KeyProviderError: the secret has no primary, or Secret Manager refused or could
                not be reached. Nothing was added.
        """
        if kind is not None and kind not in PURPOSE_KINDS[self.purpose]:
            raise ConfigurationError(
                f"a {self.purpose} secret holds keys of kind "
                f"{' or '.join(PURPOSE_KINDS[self.purpose])}, not {kind!r}"
            )
        text = generate_key(kind or DEFAULT_KINDS[self.purpose]) if key is None else key
        parsed = parse_key(text, purpose=self.purpose, key_id="new")
        if kind is not None and parsed.kind != kind:
            raise ConfigurationError(f"the key given is of kind {parsed.kind!r}, not {kind!r}")
        data = text.strip().encode("ascii")
        deadline = Deadline(self.timeout)
        with self._errors("add a key", _WRITE_HINTS):
            client = self._get_client()
            aliases = self._aliases(client, deadline)
            enabled = self._enabled(client, deadline)
            expected: int | None = None
            if wrap is not None:
                # The key id is bound into the wrapping, so it is chosen before the version
                # exists: the number the service gives next, checked once it has.
                found = self._list(client, deadline, enabled_only=False)
                expected = max((number for number, _, _ in found), default=0) + 1
                wrapped = self._wrapper.wrap(
                    parse_key(text, purpose=self.purpose, key_id=f"v{expected}"),
                    wrap,
                    deadline=deadline,
                )
                data = wrapped.entry.encode("ascii")
            if enabled:
                try:
                    current = self._primary_version(aliases, enabled)
                except KeyProviderError as exc:
                    raise KeyProviderError(f"{exc}; then add the key. No key was added") from None
                if aliases.get(self.primary_alias) != current:
                    self._set_alias(client, aliases, current, deadline)
            added = client.add_secret_version(
                request={
                    "parent": self.secret,
                    "payload": {"data": data, "data_crc32c": google_crc32c.value(data)},
                },
                **deadline.write(),
            )
            number = _version_number(added.name)
            if expected is not None and number != expected:
                # Another version was added meanwhile; this one's key id would not be v<N>.
                client.disable_secret_version(request={"name": added.name}, **deadline.write())
                raise KeyProviderError(
                    f"Secret Manager secret {self.secret!r}: another version was added while "
                    f"this key was wrapped, so version {number} holds key id v{expected}; it "
                    "was disabled, and no key was added: run the command again"
                )
            if not enabled:
                self._set_alias(client, aliases, number, deadline)
        logger.info(
            "sa_fieldcrypt: added key v%d to %s (%s)",
            number,
            self.secret,
            "primary: the secret had no enabled version" if not enabled else "decrypt-only",
        )
        return KeyVersion(
            number, "ENABLED", _as_datetime(added.create_time), not enabled, wrapped_by=wrap
        )

    def rewrap(self, *, wrap: str | None = None) -> SecretRewrap:
        """Move every wrapped key to a new version, wrapped under its KMS key's primary.

        For after the Cloud KMS key rotates: each enabled version whose wrapped key Cloud KMS
        opens with a version that is not the primary is added again, wrapped under the
        primary, with the same key id (carried in the payload) and the same key; the alias
        follows the primary's key, and the old versions are disabled. No stored value
        changes: the keys are the same. Run it again safely: keys already under the primary
        are left alone. One ``Decrypt`` per wrapped version, one ``Encrypt`` per key moved.

        Args:
            wrap: a Cloud KMS key to wrap the plaintext keys with too: each plaintext version
                ``vN`` moves to a new version holding ``vN:wrapped:...``, and is disabled
                (destroy it once every instance has refreshed: a disabled version keeps its
                payload). How a plaintext secret becomes a wrapped one.

        Returns:
            What moved, what was already under the primary, and the enabled versions that
            could not be read (instances skip them too), each by version and key id.

        Raises:
            KeyProviderError: the secret has no primary, its primary cannot be read,
                Secret Manager or Cloud KMS refused or could not be reached. Keys moved
                before the failure stay moved (their old versions may still be enabled:
                run it again).
        """
        if wrap is not None:
            check_kms_key(wrap)
        deadline = Deadline(self.timeout)
        moved: list[RewrappedVersion] = []
        unchanged: list[str] = []
        with self._errors("re-wrap its keys", _WRITE_HINTS):
            client = self._get_client()
            aliases = self._aliases(client, deadline)
            enabled = self._enabled(client, deadline)
            primary = self._primary_version(aliases, enabled)
            current: set[WrappedKey] = set()  # those the KMS key's primary version opened

            def unwrap(wrapped: WrappedKey) -> Key:
                opened = self._wrapper.open(wrapped, deadline=deadline)
                if opened.used_primary:
                    current.add(wrapped)
                return opened.key

            # Read as instances read them: the same versions skipped, the same key per id.
            read = self._read_keys(client, enabled, deadline, unwrap=unwrap)
            keys, skipped = read.keys, read.skipped
            if primary in skipped:
                raise self._unusable_primary(aliases, primary, skipped[primary])
            unknown = [n for n, reason in skipped.items() if not isinstance(reason, _Skip)]
            if unknown:
                # Which key such a version holds is not known, so no copy is safe to disable.
                raise KeyProviderError(
                    f"Secret Manager secret {self.secret!r}: version {unknown[0]} cannot be "
                    f"read ({skipped[unknown[0]]}), so which key it holds is not known; "
                    "disable it (or add its key again), then re-wrap. Nothing was changed"
                )
            # An id two versions hold with different keys is left as it is: disabling its
            # older version would hand the id to the newer one.
            contested = {r.key_id for r in skipped.values() if isinstance(r, _Skip)}
            copies: dict[str, list[int]] = {}  # key id -> the versions holding it, oldest first
            for number in sorted(keys):
                if keys[number].id not in contested:
                    copies.setdefault(keys[number].id, []).append(number)
            for key_id, numbers in copies.items():
                fresh = [n for n in numbers if keys[n].wrapped in current]
                if fresh:
                    target = fresh[-1]
                    unchanged.append(key_id)
                else:
                    wrapped_by = [w.kms_key for n in numbers if (w := keys[n].wrapped)]
                    kms_key = wrapped_by[-1] if wrapped_by else wrap
                    if kms_key is None:
                        continue  # held in plaintext only, and not asked to wrap it
                    new = self._wrapper.wrap(keys[numbers[0]], kms_key, deadline=deadline)
                    data = new.entry.encode("ascii")
                    added = client.add_secret_version(
                        request={
                            "parent": self.secret,
                            "payload": {"data": data, "data_crc32c": google_crc32c.value(data)},
                        },
                        **deadline.write(),
                    )
                    target = _version_number(added.name)
                if primary in numbers and primary != target:
                    self._set_alias(client, aliases, target, deadline)
                for number in numbers:
                    if number != target:
                        client.disable_secret_version(
                            request={"name": f"{self.secret}/versions/{number}"},
                            **deadline.write(),
                        )
                        plain = keys[number].wrapped is None
                        moved.append(RewrappedVersion(key_id, number, target, plain))
        logger.info(
            "sa_fieldcrypt: re-wrapped %d key(s) of %s under their KMS keys' primary versions",
            len(moved),
            self.secret,
        )
        return SecretRewrap(tuple(moved), tuple(unchanged), skipped)

    def promote(self, version: int | None = None, *, min_age: float = 0.0) -> KeyVersion:
        """Point the alias at ``version``, so its key encrypts from each instance's next refresh.

        The second phase of a rotation; also how to roll back to an older enabled version.

        Args:
            version: the version number; the newest enabled version by default.
            min_age: refuse a version added less than this many seconds ago, so that every
                instance has refreshed (and can decrypt with it) before any encrypts with it.

        Returns:
            The promoted version.

        Raises:
            ConfigurationError: no such version, it is not enabled, or it is too young.
            KeyProviderError: Secret Manager refused or could not be reached.
        """
        deadline = Deadline(self.timeout)
        with self._errors("promote a key", _WRITE_HINTS):
            client = self._get_client()
            aliases = self._aliases(client, deadline)
            if version is None:
                enabled = self._enabled(client, deadline)
                if not enabled:
                    raise ConfigurationError(
                        f"Secret Manager secret {self.secret!r} has no enabled version to "
                        "promote: add one with `fieldcrypt keys add`"
                    )
                version = enabled[0]
            try:
                found = client.get_secret_version(
                    request={"name": f"{self.secret}/versions/{version}"}, **deadline.read()
                )
            except api_exceptions.NotFound:
                raise ConfigurationError(
                    f"Secret Manager secret {self.secret!r} has no version {version}"
                ) from None
            if found.state != _ENABLED:
                raise ConfigurationError(
                    f"version {version} of {self.secret!r} is {found.state.name}; only an "
                    "enabled version can encrypt"
                )
            created = _as_datetime(found.create_time)
            if min_age > 0 and created is not None:
                age = (datetime.now(UTC) - created).total_seconds()
                if age < min_age:
                    raise ConfigurationError(
                        f"version {version} was added {age:.0f} s ago; instances that have not "
                        f"refreshed since cannot decrypt what it would encrypt: wait "
                        f"{min_age - age:.0f} s more (FIELDCRYPT_GCP_CACHE_TTL is {min_age:g} s), "
                        "or force it (`fieldcrypt keys promote --force`, or min_age=0)"
                    )
            self._set_alias(client, aliases, version, deadline)
        logger.info("sa_fieldcrypt: key v%d of %s now encrypts", version, self.secret)
        return KeyVersion(version, "ENABLED", created, True)

    def _get_client(self) -> secretmanager_v1.SecretManagerServiceClient:
        with self._client_lock:
            if self._client is None:
                match = _SECRET_NAME.match(self.secret)
                location = match.group("location") if match else None
                # A regional secret is served only by its region's endpoint.
                options = (
                    {"api_endpoint": f"secretmanager.{location}.rep.googleapis.com"}
                    if location
                    else None
                )
                self._client = secretmanager_v1.SecretManagerServiceClient(client_options=options)
            return self._client

    def _aliases(
        self, client: secretmanager_v1.SecretManagerServiceClient, deadline: Deadline
    ) -> dict[str, int]:
        found = client.get_secret(request={"name": self.secret}, **deadline.read())
        return dict(found.version_aliases)

    def _list(
        self,
        client: secretmanager_v1.SecretManagerServiceClient,
        deadline: Deadline,
        *,
        enabled_only: bool = True,
    ) -> list[tuple[int, secretmanager_v1.SecretVersion.State, datetime | None]]:
        """Versions, newest first; pages are fetched here so each gets the remaining time."""
        found = []
        token = ""
        while True:
            page = client.list_secret_versions(
                request={
                    "parent": self.secret,
                    "filter": "state:ENABLED" if enabled_only else "",
                    "page_size": _PAGE_SIZE,
                    "page_token": token,
                },
                **deadline.read(),
            )
            for version in page.versions:
                # Checked again here: a server (or an emulator) that ignored the filter must
                # not turn a disabled version into a key.
                if enabled_only and version.state != _ENABLED:
                    continue
                found.append(
                    (
                        _version_number(version.name),
                        version.state,
                        _as_datetime(version.create_time),
                    )
                )
            token = page.next_page_token
            if not token:
                break
        found.sort(key=lambda item: item[0], reverse=True)
        return found

    def _enabled(
        self, client: secretmanager_v1.SecretManagerServiceClient, deadline: Deadline
    ) -> list[int]:
        return [number for number, _, _ in self._list(client, deadline)]

    def _read_key(
        self,
        client: secretmanager_v1.SecretManagerServiceClient,
        number: int,
        deadline: Deadline,
        *,
        unwrap: Unwrap | None = None,
        may_be_denied: bool = False,
    ) -> Key | WrappedKey | str:
        """The version's key, or why it gives none (the payload is never quoted).

        A wrapped key opens within ``deadline``, the load's. With ``may_be_denied``, one that
        Cloud KMS refuses to open for this caller is returned as it is (see ``_read_keys``).
        """
        # By number, never `latest` or an alias: `latest` is the newest version whatever its
        # state, and the versions to read are exactly the enabled ones just listed.
        try:
            response = client.access_secret_version(
                request={"name": f"{self.secret}/versions/{number}"}, **deadline.read()
            )
        except api_exceptions.FailedPrecondition:
            return _GONE
        payload = response.payload
        data = bytes(payload.data)
        if "data_crc32c" not in payload or google_crc32c.value(data) != payload.data_crc32c:
            return _DAMAGED
        try:
            return _key_from_payload(
                data, number, self.purpose, unwrap or self._wrapper.within(deadline)
            )
        except ConfigurationError as exc:
            return (
                f"its payload is not a usable key ({exc}); add the key again and disable "
                "this version"
            )
        except KeyProviderError as exc:
            if is_outage(exc):
                # Says nothing of this version: the whole load fails, and the cache serves
                # the previous keys, rather than a keyring that lacks this key.
                raise
            wrapped = _wrapped_in(data, number, self.purpose)
            if may_be_denied and wrapped and refusal_status(exc) == "PERMISSION_DENIED":
                return wrapped
            return _Skip(
                f"its wrapped key does not unwrap: {exc}",
                wrapped.key_id if wrapped else f"v{number}",
            )

    def _primary_version(self, aliases: Mapping[str, int], enabled: Sequence[int]) -> int:
        """The version that writes: the alias's, or the only enabled one; never a guess."""
        target = aliases.get(self.primary_alias)
        if not enabled:
            raise KeyProviderError(
                f"Secret Manager secret {self.secret!r} has no enabled version, so there is no "
                f"key: add one with `fieldcrypt keys add{self._purpose_flag()}`"
            )
        if target is None and len(enabled) == 1:
            return enabled[0]
        if target is None:
            raise KeyProviderError(
                f"Secret Manager secret {self.secret!r} has {len(enabled)} enabled versions and "
                f"no version alias {self.primary_alias!r} naming the one that "
                f"{self._writes()}, so no key is trusted to {self._write()}: "
                f"{self._promote_hint()}"
            )
        if target not in enabled:
            raise KeyProviderError(
                f"Secret Manager secret {self.secret!r}: the version alias "
                f"{self.primary_alias!r} names version {target}, which is not enabled, so no "
                f"key is trusted to {self._write()}: {self._promote_hint()}"
            )
        return target

    def _unusable_primary(
        self, aliases: Mapping[str, int], number: int, reason: str
    ) -> KeyProviderError:
        named = (
            f"the version alias {self.primary_alias!r} names version {number}, which"
            if aliases.get(self.primary_alias) == number
            else f"its only enabled version, {number},"
        )
        return KeyProviderError(
            f"Secret Manager secret {self.secret!r}: {named} cannot be read as a key: {reason}. "
            f"No key is trusted to {self._write()} meanwhile: {self._promote_hint()} (add "
            f"one first with `fieldcrypt keys add{self._purpose_flag()}` if none loads)"
        )

    def _writes(self) -> str:
        return "encrypts" if self.purpose == "encryption" else "computes new index values"

    def _write(self) -> str:
        return "encrypt" if self.purpose == "encryption" else "compute new index values"

    def _purpose_flag(self) -> str:
        return "" if self.purpose == "encryption" else f" --purpose {self.purpose}"

    def _promote_hint(self) -> str:
        return (
            f"name the version that should with `fieldcrypt keys promote VERSION"
            f"{self._purpose_flag()}`"
        )

    def _set_alias(
        self,
        client: secretmanager_v1.SecretManagerServiceClient,
        aliases: dict[str, int],
        number: int,
        deadline: Deadline,
    ) -> None:
        aliases[self.primary_alias] = number
        # The update mask names the whole map: Secret Manager replaces it, so the other
        # aliases of the secret are sent back unchanged.
        client.update_secret(
            request={
                "secret": {"name": self.secret, "version_aliases": aliases},
                "update_mask": {"paths": ["version_aliases"]},
            },
            **deadline.read(),
        )

    @contextmanager
    def _errors(self, action: str, hints: Mapping[str, str]) -> Iterator[None]:
        try:
            yield
        except auth_exceptions.GoogleAuthError as exc:
            raise KeyProviderError(
                f"Secret Manager secret {self.secret!r}: could not {action}: {NO_CREDENTIALS_HELP}"
            ) from exc
        except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as exc:
            code = status_name(exc)
            hint = (
                hints.get(code)
                or common_hint(code, "Secret Manager", self.timeout, exc)
                or "see the chained exception"
            )
            # Only the status name and our own hint: a service message is not ours to vouch for.
            raise KeyProviderError(
                f"Secret Manager secret {self.secret!r}: could not {action} ({code}); "
                + hint.format(timeout=self.timeout)
            ) from exc

    def __repr__(self) -> str:
        return (
            f"GoogleSecretManagerKeyProvider(secret={self.secret!r}, purpose={self.purpose!r}, "
            f"primary_alias={self.primary_alias!r}, cache_ttl={self.cache_ttl!r})"
        )


def _carried_id(read: Key | WrappedKey | None, number: int) -> str | None:
    key_id = read.id if isinstance(read, Key) else read.key_id if read is not None else None
    return None if key_id == f"v{number}" else key_id


def _wrapped_by(read: Key | WrappedKey | None) -> str | None:
    wrapped = read.wrapped if isinstance(read, Key) else read
    return None if wrapped is None else wrapped.kms_key


def _check_secret_name(name: str, source: str) -> str:
    if not isinstance(name, str) or not _SECRET_NAME.match(name):
        shown = repr(name) if isinstance(name, str) and len(name) <= 300 else "the value"
        extra = " (name the secret, not one of its versions)" if "/versions/" in str(name) else ""
        raise ConfigurationError(
            f"{source}: {shown} is not a secret name{extra}; expected "
            "projects/PROJECT/secrets/NAME or projects/PROJECT/locations/LOCATION/secrets/NAME"
        )
    return name


def _check_alias(alias: str, source: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_NAME.match(alias) or alias in _RESERVED_ALIASES:
        shown = repr(alias) if isinstance(alias, str) and len(alias) <= 100 else "the value"
        raise ConfigurationError(
            f"{source}: {shown} is not a usable version alias; an alias is 1 to 63 characters "
            "from A-Z, a-z, 0-9, '-' and '_', starts with a letter, and is not 'latest' or 'NEW'"
        )
    return alias


def _version_number(name: str) -> int:
    # Names come back with the project number where the request had its id, so only the
    # last segment is read.
    return int(name.rsplit("/", 1)[-1])


def _as_datetime(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None

"""Keys from settings: ``FIELDCRYPT_KEYS`` and ``FIELD_ENCRYPTION_KEY`` for encryption,
``FIELDCRYPT_BLIND_INDEX_KEYS`` and ``FIELDCRYPT_BLIND_INDEX_KEY`` for blind indexes.

Entries of ``FIELDCRYPT_KEYS``, ``FIELDCRYPT_BLIND_INDEX_KEYS`` and the single
``FIELDCRYPT_BLIND_INDEX_KEY`` may be wrapped by Cloud KMS (``id:wrapped:...``, see
:mod:`sa_fieldcrypt.providers.kms`; the ``gcp`` extra). The provider then unwraps them at each
load, one KMS ``Decrypt`` per wrapped entry, and is refreshed as the Secret Manager provider
is: every ``FIELDCRYPT_GCP_CACHE_TTL`` seconds, serving the last keys through a KMS outage for
at most ``FIELDCRYPT_GCP_MAX_STALE`` seconds, so that a revoked KMS permission or a disabled
KMS key version stops the keys within that time.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from sa_fieldcrypt.errors import ConfigurationError
from sa_fieldcrypt.keys import PURPOSES, Keyring, Purpose, Unwrap, has_wrapped_entries, parse_key

if TYPE_CHECKING:
    # Imported when keys are first loaded: pydantic is a tenth of a second of start-up.
    from pydantic import SecretStr

    from sa_fieldcrypt.providers.kms import KmsKeyWrapper
    from sa_fieldcrypt.settings import FieldCryptSettings

__all__ = [
    "BLIND_INDEX_KEY_ID",
    "LEGACY_KEY_ID",
    "EnvKeyProvider",
    "holds_wrapped_keys",
    "keyring_from_settings",
    "keys_setting",
]

#: The id given to ``FIELD_ENCRYPTION_KEY``, the single key of pre-library deployments.
LEGACY_KEY_ID = "legacy"
#: The id given to ``FIELDCRYPT_BLIND_INDEX_KEY``, the single blind-index key.
BLIND_INDEX_KEY_ID = "b0"

_NO_KEYS_HELP = (
    "no encryption keys configured: set FIELDCRYPT_KEYS='k1:<key>' (make one with "
    "`fieldcrypt keygen --id k1`), or FIELD_ENCRYPTION_KEY='<key>' for a single legacy key, "
    "or call sa_fieldcrypt.configure(keyring=...)"
)
_NO_BLIND_INDEX_KEYS_HELP = (
    "no blind-index key configured: set FIELDCRYPT_BLIND_INDEX_KEYS='b1:<key>' (make one "
    "with `fieldcrypt keygen --kind hmac-sha256 --id b1`), or FIELDCRYPT_BLIND_INDEX_KEY="
    "'<key>', or call sa_fieldcrypt.configure(keyring=..., purpose='blind-index'); use a key "
    "of its own, not an encryption key"
)


def keyring_from_settings(
    settings: FieldCryptSettings, *, purpose: Purpose = "encryption", unwrap: Unwrap | None = None
) -> Keyring:
    """Build the keyring of ``purpose`` that ``settings`` describe.

    Encryption: ``FIELDCRYPT_KEYS`` gives the keys, the first primary unless
    ``FIELDCRYPT_PRIMARY_KEY_ID`` names another; ``FIELD_ENCRYPTION_KEY`` adds the
    decrypt-only Fernet key ``legacy`` (or is the only, primary key when ``FIELDCRYPT_KEYS``
    is unset).

    Blind index: ``FIELDCRYPT_BLIND_INDEX_KEYS`` (the first entry writes) or the single
    ``FIELDCRYPT_BLIND_INDEX_KEY`` (id ``b0``).

    A blind-index key that is also an encryption key is refused where both are loaded, by
    the key caches (:mod:`sa_fieldcrypt.providers.base`), whichever providers serve them.

    Args:
        settings: the settings.
        purpose: which keys: ``"encryption"`` or ``"blind-index"``.
        unwrap: what opens wrapped entries (a :class:`~sa_fieldcrypt.providers.kms.
            KmsKeyWrapper`); without it a wrapped entry is refused.

    Raises:
        ConfigurationError: no keys, a malformed key, a wrapped key and no ``unwrap``, or
            conflicting settings. The message names the setting, never a key.
        KeyProviderError: a wrapped entry could not be unwrapped.
    """
    if purpose == "encryption":
        return _encryption_keyring(settings, unwrap)
    if purpose == "blind-index":
        return _blind_index_keyring(settings, unwrap)
    raise ConfigurationError(f"purpose must be one of {', '.join(PURPOSES)}")


def keys_setting(settings: FieldCryptSettings, purpose: Purpose) -> tuple[str, str | None]:
    """The setting that holds the keyring of ``purpose``, and its value as keyring text.

    ``FIELDCRYPT_KEYS``; for blind indexes ``FIELDCRYPT_BLIND_INDEX_KEYS``, or the single
    ``FIELDCRYPT_BLIND_INDEX_KEY`` read as the entry it stands for,
    ``b0:<its value>``. The value is None when the setting is not set
    (``FIELD_ENCRYPTION_KEY``, a key apart, is not part of it).

    Raises:
        ConfigurationError: both blind-index settings are set.
    """
    if purpose == "encryption":
        return "FIELDCRYPT_KEYS", _value(settings.keys)
    many, one = settings.blind_index_keys, settings.blind_index_key
    if many is not None and one is not None:
        raise ConfigurationError(
            "both FIELDCRYPT_BLIND_INDEX_KEYS and FIELDCRYPT_BLIND_INDEX_KEY are set; keep one "
            f"(the single key is the id {BLIND_INDEX_KEY_ID!r} in FIELDCRYPT_BLIND_INDEX_KEYS)"
        )
    if one is not None:
        return "FIELDCRYPT_BLIND_INDEX_KEY", f"{BLIND_INDEX_KEY_ID}:{one.get_secret_value()}"
    return "FIELDCRYPT_BLIND_INDEX_KEYS", _value(many)


def holds_wrapped_keys(settings: FieldCryptSettings, purpose: Purpose) -> bool:
    """Whether the settings' keys of ``purpose`` include one wrapped by Cloud KMS."""
    try:
        _, text = keys_setting(settings, purpose)
    except ConfigurationError:
        return False  # the load says so, where a caller expects it
    return text is not None and has_wrapped_entries(text)


def _value(setting: SecretStr | None) -> str | None:
    return None if setting is None else setting.get_secret_value()


def _encryption_keyring(settings: FieldCryptSettings, unwrap: Unwrap | None) -> Keyring:
    legacy = None
    if settings.legacy_key is not None:
        if has_wrapped_entries(f"{LEGACY_KEY_ID}:{settings.legacy_key.get_secret_value()}"):
            raise ConfigurationError(
                "FIELD_ENCRYPTION_KEY holds a wrapped key, which it cannot: move it into "
                f"FIELDCRYPT_KEYS as '{LEGACY_KEY_ID}:wrapped:...' (wrapped for the id "
                f"{LEGACY_KEY_ID!r})"
            )
        try:
            legacy = parse_key(settings.legacy_key.get_secret_value(), key_id=LEGACY_KEY_ID)
        except ConfigurationError:
            legacy = None
        if legacy is None or legacy.kind != "fernet":
            raise ConfigurationError(
                "FIELD_ENCRYPTION_KEY is not a Fernet key (32 bytes in url-safe base64); put "
                "keys of other kinds in FIELDCRYPT_KEYS"
            )
    if settings.keys is None:
        if legacy is None:
            raise ConfigurationError(_NO_KEYS_HELP)
        if settings.primary_key_id not in (None, LEGACY_KEY_ID):
            raise ConfigurationError(
                f"FIELDCRYPT_PRIMARY_KEY_ID is {settings.primary_key_id!r} but FIELDCRYPT_KEYS "
                "is unset; set FIELDCRYPT_KEYS to a keyring that holds that id"
            )
        return Keyring([legacy])
    keyring = Keyring.parse(
        settings.keys.get_secret_value(),
        primary=settings.primary_key_id,
        source="FIELDCRYPT_KEYS",
        unwrap=unwrap,
    )
    if legacy is None:
        return keyring
    if LEGACY_KEY_ID in keyring:
        raise ConfigurationError(
            f"FIELDCRYPT_KEYS holds the id {LEGACY_KEY_ID!r}, which FIELD_ENCRYPTION_KEY also "
            "uses; rename that entry or unset FIELD_ENCRYPTION_KEY"
        )
    return Keyring([*keyring, legacy], primary=keyring.primary.id)


def _blind_index_keyring(settings: FieldCryptSettings, unwrap: Unwrap | None) -> Keyring:
    keys_setting(settings, "blind-index")  # refuses both settings at once
    many, one = settings.blind_index_keys, settings.blind_index_key
    if many is not None:
        return Keyring.parse(
            many.get_secret_value(),
            purpose="blind-index",
            source="FIELDCRYPT_BLIND_INDEX_KEYS",
            unwrap=unwrap,
        )
    if one is None:
        raise ConfigurationError(_NO_BLIND_INDEX_KEYS_HELP)
    try:
        key = parse_key(
            one.get_secret_value(), purpose="blind-index", key_id=BLIND_INDEX_KEY_ID, unwrap=unwrap
        )
    except ConfigurationError as exc:
        reason = str(exc).removeprefix(f"key {BLIND_INDEX_KEY_ID!r}: ")
        raise ConfigurationError(f"FIELDCRYPT_BLIND_INDEX_KEY: {reason}") from None
    return Keyring([key], purpose="blind-index")


class EnvKeyProvider:
    """Load keys from the ``FIELDCRYPT_*`` settings each time :meth:`load` is called.

    Keys held in plaintext are loaded once (``cache_ttl`` None). When the keys include one
    wrapped by Cloud KMS, ``cache_ttl`` and ``max_stale`` are ``FIELDCRYPT_GCP_CACHE_TTL``
    and ``FIELDCRYPT_GCP_MAX_STALE``, as for Secret Manager: the keys are unwrapped again at
    each refresh, and served through a KMS outage for at most ``max_stale`` seconds.

    Args:
        settings: settings to use instead of reading the environment (tests, explicit setup).
        purpose: which keys to load: ``"encryption"`` or ``"blind-index"``.
        kms_client: a Cloud KMS ``KeyManagementServiceClient`` to unwrap keys with; by
            default one is made when a wrapped key is first met (the ``gcp`` extra).
    """

    def __init__(
        self,
        settings: FieldCryptSettings | None = None,
        *,
        purpose: Purpose = "encryption",
        kms_client: Any = None,
    ):
        if purpose not in PURPOSES:
            raise ConfigurationError(
                f"EnvKeyProvider: purpose must be one of {', '.join(PURPOSES)}"
            )
        self._settings = settings
        self.purpose: Purpose = purpose
        self._kms_client = kms_client
        self._wrapper: KmsKeyWrapper | None = None
        self._wrapper_lock = threading.Lock()

    @property
    def cache_ttl(self) -> float | None:
        """Seconds keys stay fresh: None (loaded once) unless some are wrapped by Cloud KMS."""
        settings = self._current_settings()
        if settings is None or not holds_wrapped_keys(settings, self.purpose):
            return None
        return settings.gcp_cache_ttl

    @property
    def max_stale(self) -> float | None:
        """How old wrapped keys may grow while refreshes fail: ``FIELDCRYPT_GCP_MAX_STALE``."""
        settings = self._current_settings()
        return None if settings is None else settings.gcp_max_stale

    #: The setting :attr:`max_stale` comes from, as the key cache's messages name it.
    max_stale_setting = "FIELDCRYPT_GCP_MAX_STALE"

    def load(self) -> Keyring:
        """Read the settings and build the keyring, unwrapping wrapped keys with Cloud KMS.

        Every unwrap of one load shares one ``FIELDCRYPT_GCP_TIMEOUT``.
        """
        from sa_fieldcrypt.settings import load_settings

        settings = self._settings or load_settings()
        unwrap = None
        if holds_wrapped_keys(settings, self.purpose):
            # One time budget for the load, however many keys it unwraps.
            unwrap = self._unwrapper(settings).within()
        return keyring_from_settings(settings, purpose=self.purpose, unwrap=unwrap)

    def _current_settings(self) -> FieldCryptSettings | None:
        from sa_fieldcrypt.settings import load_settings

        try:
            return self._settings or load_settings()
        except ConfigurationError:
            return None  # load() raises it, where a caller expects it

    def _unwrapper(self, settings: FieldCryptSettings) -> KmsKeyWrapper:
        with self._wrapper_lock:
            if self._wrapper is None:
                # Imported here: only wrapped keys need the optional Google packages.
                try:
                    from sa_fieldcrypt.providers.kms import KmsKeyWrapper
                except ImportError as exc:
                    raise ConfigurationError(
                        f"the {self.purpose} keys include one wrapped by Cloud KMS: {exc}"
                    ) from exc
                self._wrapper = KmsKeyWrapper.from_settings(settings, client=self._kms_client)
            return self._wrapper

    def __repr__(self) -> str:
        return f"EnvKeyProvider(purpose={self.purpose!r})"

"""Keys from settings: ``FIELDCRYPT_KEYS`` and ``FIELD_ENCRYPTION_KEY`` for encryption,
``FIELDCRYPT_BLIND_INDEX_KEYS`` and ``FIELDCRYPT_BLIND_INDEX_KEY`` for blind indexes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sa_fieldcrypt.errors import ConfigurationError
from sa_fieldcrypt.keys import PURPOSES, Keyring, Purpose, parse_key

if TYPE_CHECKING:
    # Imported when keys are first loaded: pydantic is a tenth of a second of start-up.
    from sa_fieldcrypt.settings import FieldCryptSettings

__all__ = ["BLIND_INDEX_KEY_ID", "LEGACY_KEY_ID", "EnvKeyProvider", "keyring_from_settings"]

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
    settings: FieldCryptSettings, *, purpose: Purpose = "encryption"
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

    Raises:
        ConfigurationError: no keys, a malformed key, or conflicting settings. The message
            names the setting, never a key.
    """
    if purpose == "encryption":
        return _encryption_keyring(settings)
    if purpose == "blind-index":
        return _blind_index_keyring(settings)
    raise ConfigurationError(f"purpose must be one of {', '.join(PURPOSES)}")


def _encryption_keyring(settings: FieldCryptSettings) -> Keyring:
    legacy = None
    if settings.legacy_key is not None:
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
    )
    if legacy is None:
        return keyring
    if LEGACY_KEY_ID in keyring:
        raise ConfigurationError(
            f"FIELDCRYPT_KEYS holds the id {LEGACY_KEY_ID!r}, which FIELD_ENCRYPTION_KEY also "
            "uses; rename that entry or unset FIELD_ENCRYPTION_KEY"
        )
    return Keyring([*keyring, legacy], primary=keyring.primary.id)


def _blind_index_keyring(settings: FieldCryptSettings) -> Keyring:
    many, one = settings.blind_index_keys, settings.blind_index_key
    if many is not None and one is not None:
        raise ConfigurationError(
            "both FIELDCRYPT_BLIND_INDEX_KEYS and FIELDCRYPT_BLIND_INDEX_KEY are set; keep one "
            f"(the single key is the id {BLIND_INDEX_KEY_ID!r} in FIELDCRYPT_BLIND_INDEX_KEYS)"
        )
    if many is not None:
        return Keyring.parse(
            many.get_secret_value(), purpose="blind-index", source="FIELDCRYPT_BLIND_INDEX_KEYS"
        )
    if one is None:
        raise ConfigurationError(_NO_BLIND_INDEX_KEYS_HELP)
    try:
        key = parse_key(one.get_secret_value(), purpose="blind-index", key_id=BLIND_INDEX_KEY_ID)
    except ConfigurationError as exc:
        reason = str(exc).removeprefix(f"key {BLIND_INDEX_KEY_ID!r}: ")
        raise ConfigurationError(f"FIELDCRYPT_BLIND_INDEX_KEY: {reason}") from None
    return Keyring([key], purpose="blind-index")


class EnvKeyProvider:
    """Load keys from the ``FIELDCRYPT_*`` settings each time :meth:`load` is called.

    Args:
        settings: settings to use instead of reading the environment (tests, explicit setup).
        purpose: which keys to load: ``"encryption"`` or ``"blind-index"``.
    """

    cache_ttl: float | None = None

    def __init__(
        self, settings: FieldCryptSettings | None = None, *, purpose: Purpose = "encryption"
    ):
        if purpose not in PURPOSES:
            raise ConfigurationError(
                f"EnvKeyProvider: purpose must be one of {', '.join(PURPOSES)}"
            )
        self._settings = settings
        self.purpose: Purpose = purpose

    def load(self) -> Keyring:
        """Read the settings and build the keyring."""
        from sa_fieldcrypt.settings import load_settings

        return keyring_from_settings(self._settings or load_settings(), purpose=self.purpose)

    def __repr__(self) -> str:
        return f"EnvKeyProvider(purpose={self.purpose!r})"

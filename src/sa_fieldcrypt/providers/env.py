"""Keys from environment variables (``FIELDCRYPT_KEYS``, ``FIELD_ENCRYPTION_KEY``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sa_fieldcrypt.errors import ConfigurationError
from sa_fieldcrypt.keys import Key, Keyring

if TYPE_CHECKING:
    # Imported when keys are first loaded: pydantic is a tenth of a second of start-up.
    from sa_fieldcrypt.settings import FieldCryptSettings

__all__ = ["LEGACY_KEY_ID", "EnvKeyProvider", "keyring_from_settings"]

#: The id given to ``FIELD_ENCRYPTION_KEY``, the single key of pre-library deployments.
LEGACY_KEY_ID = "legacy"

NO_KEYS_HELP = (
    "no encryption keys configured: set FIELDCRYPT_KEYS='k1:<key>' (make one with "
    "`fieldcrypt keygen --id k1`), or FIELD_ENCRYPTION_KEY='<key>' for a single legacy key, "
    "or call sa_fieldcrypt.configure(keyring=...)"
)


def keyring_from_settings(settings: FieldCryptSettings) -> Keyring:
    """Build the keyring that ``settings`` describe.

    ``FIELDCRYPT_KEYS`` gives the keys, the first primary unless ``FIELDCRYPT_PRIMARY_KEY_ID``
    names another; ``FIELD_ENCRYPTION_KEY`` adds the decrypt-only key ``legacy`` (or is the
    only, primary key when ``FIELDCRYPT_KEYS`` is unset).
    """
    legacy = None
    if settings.legacy_key is not None:
        try:
            legacy = Key(LEGACY_KEY_ID, settings.legacy_key.get_secret_value(), kind="fernet")
        except ConfigurationError:
            raise ConfigurationError(
                "FIELD_ENCRYPTION_KEY is not a Fernet key (32 bytes in url-safe base64)"
            ) from None
    if settings.keys is None:
        if legacy is None:
            raise ConfigurationError(NO_KEYS_HELP)
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


class EnvKeyProvider:
    """Load keys from environment variables each time :meth:`load` is called.

    Args:
        settings: settings to use instead of reading the environment (tests, explicit setup).
    """

    cache_ttl: float | None = None

    def __init__(self, settings: FieldCryptSettings | None = None):
        self._settings = settings

    def load(self) -> Keyring:
        """Read the settings and build the keyring."""
        from sa_fieldcrypt.settings import load_settings

        return keyring_from_settings(self._settings or load_settings())

    def __repr__(self) -> str:
        return "EnvKeyProvider()"

"""Settings read from the environment, with the ``FIELDCRYPT_`` prefix.

Every key-bearing field is a ``SecretStr``, so printing the settings shows ``'**********'``.
Settings are read when keys are first needed, never at import time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sa_fieldcrypt.errors import ConfigurationError
from sa_fieldcrypt.keys import KEY_ID_PATTERN, show_key_id

__all__ = ["FieldCryptSettings", "load_settings"]


class FieldCryptSettings(BaseSettings):
    """Configuration of sa-fieldcrypt, from ``FIELDCRYPT_*`` environment variables."""

    # hide_input_in_errors: pydantic's own error text would quote the value, maybe a key.
    model_config = SettingsConfigDict(
        env_prefix="FIELDCRYPT_", extra="ignore", hide_input_in_errors=True
    )

    provider: Literal["env", "gcp"] = Field(
        default="env",
        description="Where keys come from: `env` reads them from the variables below; "
        "`gcp` from the Google Cloud Secret Manager secret FIELDCRYPT_GCP_SECRET.",
    )
    keys: SecretStr | None = Field(
        default=None,
        description="The keyring as `id:key,id:key`; the first entry encrypts "
        "unless FIELDCRYPT_PRIMARY_KEY_ID names another. An entry may hold its key wrapped by "
        "Cloud KMS, `id:wrapped:<kind>:<KMS key>:<ciphertext>` (docs/kms.md).",
    )
    primary_key_id: str | None = Field(
        default=None, description="Id of the key in FIELDCRYPT_KEYS that encrypts new values."
    )
    legacy_key: SecretStr | None = Field(
        default=None,
        validation_alias="FIELD_ENCRYPTION_KEY",
        description="A single bare Fernet key (FIELD_ENCRYPTION_KEY, no prefix): the only, "
        "primary key (id `legacy`) when FIELDCRYPT_KEYS is unset; next to FIELDCRYPT_KEYS, the "
        "decrypt-only key `legacy`, which never encrypts.",
    )
    gcp_secret: str | None = Field(
        default=None,
        description="The Secret Manager secret that holds the keys, `projects/P/secrets/S` "
        "(or `projects/P/locations/L/secrets/S`); read when FIELDCRYPT_PROVIDER=gcp.",
    )
    gcp_cache_ttl: float = Field(
        default=300.0,
        ge=1,
        description="Seconds a keyring read from Secret Manager, or holding keys wrapped by Cloud "
        "KMS, is used before it is read (and unwrapped) again (encryption and blind-index keys "
        "alike).",
    )
    gcp_max_stale: float | None = Field(
        default=86400.0,
        gt=0,
        description="Seconds since keys were last read from Secret Manager (or unwrapped by Cloud "
        "KMS) after which, while refreshes fail, they are no longer used and loading keys fails "
        "instead, so a disabled version stops working within this time even through an outage; "
        "at least FIELDCRYPT_GCP_CACHE_TTL. `none` keeps old keys in use for ever.",
    )
    gcp_primary_alias: str = Field(
        default="fieldcrypt-primary",
        description="The version alias that names the version of a secret that writes (encrypts, "
        "or computes new index values); for both secrets.",
    )
    gcp_timeout: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Seconds one read of a secret, or one Cloud KMS call, may take, retries "
        "included, before it fails.",
    )
    blind_index_provider: Literal["env", "gcp"] = Field(
        default="env",
        description="Where blind-index keys come from: `env` reads FIELDCRYPT_BLIND_INDEX_KEYS "
        "or FIELDCRYPT_BLIND_INDEX_KEY; `gcp` the Secret Manager secret "
        "FIELDCRYPT_BLIND_INDEX_GCP_SECRET (with the FIELDCRYPT_GCP_CACHE_TTL, _TIMEOUT and "
        "_PRIMARY_ALIAS settings).",
    )
    blind_index_gcp_secret: str | None = Field(
        default=None,
        description="The Secret Manager secret that holds the blind-index keys, "
        "`projects/P/secrets/S`, not the encryption keys' secret; read when "
        "FIELDCRYPT_BLIND_INDEX_PROVIDER=gcp.",
    )
    blind_index_keys: SecretStr | None = Field(
        default=None,
        description="Blind-index keys (kind hmac-sha256) as `id:key,id:key`, separate from the "
        "encryption keys; the first entry computes new index values, every entry matches in "
        "lookups. Entries may be wrapped by Cloud KMS, as in FIELDCRYPT_KEYS.",
    )
    blind_index_key: SecretStr | None = Field(
        default=None,
        description="A single blind-index key (its id is `b0`), when no rotation is under way; "
        "set this or FIELDCRYPT_BLIND_INDEX_KEYS, not both.",
    )
    max_token_size: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Longest stored value, in characters, that is decrypted: a longer one is "
        "refused before any cryptography, and a value that would encrypt to a longer token is "
        "refused on write. The default, 16 MiB, holds values of up to about 12 MiB.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the database the `fieldcrypt` data commands (status, "
        "rotate, verify, retire-key, reindex) work on when --db is not given. A secret: it "
        "may hold a password.",
    )
    allow_unbound: bool = Field(
        default=True,
        description="Whether bound columns (every column, unless it says context=False) read "
        "unbound values: tokens written before the column was bound, and legacy values. "
        "Set it to false once `fieldcrypt rotate` has bound every value (`fieldcrypt status` "
        "counts none unbound): such values copied in from elsewhere are then refused, and "
        "rotate reports them instead of binding them. A column's own allow_unbound= wins.",
    )

    @field_validator("primary_key_id")
    @classmethod
    def _is_a_key_id(cls, value: str | None) -> str | None:
        # Checked here, so that every message that names this setting may quote it: a key
        # pasted into it is refused without being shown.
        if value is not None and not KEY_ID_PATTERN.match(value):
            raise ValueError(
                f"{show_key_id(value)}: set it to the id of a key of FIELDCRYPT_KEYS, such as "
                "'k2' (1 to 32 characters from A-Z, a-z, 0-9, '_' and '-'); keys themselves "
                "go in FIELDCRYPT_KEYS"
            )
        return value

    @field_validator("gcp_max_stale", mode="before")
    @classmethod
    def _none_means_no_bound(cls, value: object) -> object:
        # Only the word itself turns the bound off: an empty or unset variable keeps it.
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        return value


def load_settings() -> FieldCryptSettings:
    """Read the settings now; malformed values raise :class:`ConfigurationError`."""
    try:
        return FieldCryptSettings()
    except ValidationError as exc:
        # pydantic's own text quotes the offending input; ours names the setting only, and
        # the messages of our validators, which quote no value but a well-formed key id.
        problems = "; ".join(
            f"{_variable(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a field, as an error's ``loc`` names it."""
    name = "_".join(str(part) for part in loc)
    field = FieldCryptSettings.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    return alias if isinstance(alias, str) else f"FIELDCRYPT_{name.upper()}"

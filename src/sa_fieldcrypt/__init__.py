"""Encrypted columns for SQLAlchemy: Fernet tokens with key ids, rotation and blind indexes.

Typical usage::

    import sa_fieldcrypt
    from sa_fieldcrypt import EncryptedText, Keyring, generate_key

    sa_fieldcrypt.configure(keyring=Keyring({"k1": generate_key()}))

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column("email_encrypted", EncryptedText())
"""

from typing import TYPE_CHECKING, Any

from sa_fieldcrypt._version import __version__
from sa_fieldcrypt.blind_index import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    normalize_email,
    normalize_phone,
)
from sa_fieldcrypt.cipher import TOKEN_PREFIX, TokenInfo, decrypt, encrypt, inspect_token
from sa_fieldcrypt.config import configure, current_keyring
from sa_fieldcrypt.errors import (
    ConfigurationError,
    DecryptionError,
    FieldCryptError,
    KeyProviderError,
    RotationError,
    UnknownKeyError,
    UnsupportedComparisonError,
    ValueTypeError,
)
from sa_fieldcrypt.hybrid import EncryptedHybrid, encrypted_hybrid, encrypted_values
from sa_fieldcrypt.keys import Key, KeyKind, Keyring, Purpose, generate_key, parse_key
from sa_fieldcrypt.providers.base import KeyProvider
from sa_fieldcrypt.types import (
    EncryptedBytes,
    EncryptedJSON,
    EncryptedText,
    EncryptedType,
    PlaintextValueWarning,
)

if TYPE_CHECKING:
    from sa_fieldcrypt.settings import FieldCryptSettings

__all__ = [
    "BLIND_INDEX_LENGTH",
    "TOKEN_PREFIX",
    "BlindIndex",
    "ConfigurationError",
    "DecryptionError",
    "EncryptedBytes",
    "EncryptedHybrid",
    "EncryptedJSON",
    "EncryptedText",
    "EncryptedType",
    "FieldCryptError",
    "FieldCryptSettings",
    "Key",
    "KeyKind",
    "KeyProvider",
    "KeyProviderError",
    "Keyring",
    "PlaintextValueWarning",
    "Purpose",
    "RotationError",
    "TokenInfo",
    "UnknownKeyError",
    "UnsupportedComparisonError",
    "ValueTypeError",
    "__version__",
    "configure",
    "current_keyring",
    "decrypt",
    "encrypt",
    "encrypted_hybrid",
    "encrypted_values",
    "generate_key",
    "inspect_token",
    "normalize_email",
    "normalize_phone",
    "parse_key",
]


def __getattr__(name: str) -> Any:
    # FieldCryptSettings is imported on first access: it brings in pydantic, a tenth of a
    # second of start-up that applications configuring keys in code never need.
    if name == "FieldCryptSettings":
        from sa_fieldcrypt.settings import FieldCryptSettings

        return FieldCryptSettings
    raise AttributeError(f"module 'sa_fieldcrypt' has no attribute {name!r}")

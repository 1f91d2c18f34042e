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

from sa_fieldcrypt._version import __version__
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
from sa_fieldcrypt.keys import Key, Keyring, generate_key
from sa_fieldcrypt.settings import FieldCryptSettings
from sa_fieldcrypt.types import (
    EncryptedBytes,
    EncryptedJSON,
    EncryptedText,
    EncryptedType,
    PlaintextValueWarning,
    plaintext_read_counts,
)

__all__ = [
    "TOKEN_PREFIX",
    "ConfigurationError",
    "DecryptionError",
    "EncryptedBytes",
    "EncryptedJSON",
    "EncryptedText",
    "EncryptedType",
    "FieldCryptError",
    "FieldCryptSettings",
    "Key",
    "KeyProviderError",
    "Keyring",
    "PlaintextValueWarning",
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
    "generate_key",
    "inspect_token",
    "plaintext_read_counts",
]

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

# Every name loads on first use (PEP 562): the pytest plugin, which every test run of a project
# that installs the library loads, imports this package, and must not pay for SQLAlchemy.
from typing import TYPE_CHECKING

from sa_fieldcrypt.exports import lazy_exports

if TYPE_CHECKING:
    from sa_fieldcrypt._version import __version__
    from sa_fieldcrypt.blind_index import (
        BLIND_INDEX_LENGTH,
        BlindIndex,
        Compound,
        Scrypt,
        SubstringIndex,
        Transform,
        casefold,
        compound,
        email_domain,
        first_chars,
        last_digits,
        letters_lower,
        normalize_email,
        normalize_phone,
        typed_normalizer,
    )
    from sa_fieldcrypt.config import configure
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
    from sa_fieldcrypt.hybrid import (
        CompoundIndex,
        EncryptedHybrid,
        IndexComparator,
        compound_index,
        encrypted_hybrid,
        encrypted_values,
    )
    from sa_fieldcrypt.keys import Key, Keyring, generate_key, parse_key
    from sa_fieldcrypt.providers.base import KeyProvider
    from sa_fieldcrypt.types import (
        EncryptedBoolean,
        EncryptedBytes,
        EncryptedDate,
        EncryptedDateTime,
        EncryptedDecimal,
        EncryptedFloat,
        EncryptedInteger,
        EncryptedJSON,
        EncryptedText,
        EncryptedTime,
        EncryptedType,
        EncryptedUUID,
        PlaintextValueWarning,
    )

__all__ = [
    "BLIND_INDEX_LENGTH",
    "BlindIndex",
    "Compound",
    "CompoundIndex",
    "ConfigurationError",
    "DecryptionError",
    "EncryptedBoolean",
    "EncryptedBytes",
    "EncryptedDate",
    "EncryptedDateTime",
    "EncryptedDecimal",
    "EncryptedFloat",
    "EncryptedHybrid",
    "EncryptedInteger",
    "EncryptedJSON",
    "EncryptedText",
    "EncryptedTime",
    "EncryptedType",
    "EncryptedUUID",
    "FieldCryptError",
    "IndexComparator",
    "Key",
    "KeyProvider",
    "KeyProviderError",
    "Keyring",
    "PlaintextValueWarning",
    "RotationError",
    "Scrypt",
    "SubstringIndex",
    "Transform",
    "UnknownKeyError",
    "UnsupportedComparisonError",
    "ValueTypeError",
    "__version__",
    "casefold",
    "compound",
    "compound_index",
    "configure",
    "email_domain",
    "encrypted_hybrid",
    "encrypted_values",
    "first_chars",
    "generate_key",
    "last_digits",
    "letters_lower",
    "normalize_email",
    "normalize_phone",
    "parse_key",
    "typed_normalizer",
]

_HOMES = {
    "__version__": "sa_fieldcrypt._version",
    "BLIND_INDEX_LENGTH": "sa_fieldcrypt.blind_index",
    "BlindIndex": "sa_fieldcrypt.blind_index",
    "normalize_email": "sa_fieldcrypt.blind_index",
    "normalize_phone": "sa_fieldcrypt.blind_index",
    "typed_normalizer": "sa_fieldcrypt.blind_index",
    "Transform": "sa_fieldcrypt.blind_index",
    "Scrypt": "sa_fieldcrypt.blind_index",
    "SubstringIndex": "sa_fieldcrypt.blind_index",
    "casefold": "sa_fieldcrypt.blind_index",
    "Compound": "sa_fieldcrypt.blind_index",
    "compound": "sa_fieldcrypt.blind_index",
    "email_domain": "sa_fieldcrypt.blind_index",
    "first_chars": "sa_fieldcrypt.blind_index",
    "last_digits": "sa_fieldcrypt.blind_index",
    "letters_lower": "sa_fieldcrypt.blind_index",
    "configure": "sa_fieldcrypt.config",
    "ConfigurationError": "sa_fieldcrypt.errors",
    "DecryptionError": "sa_fieldcrypt.errors",
    "FieldCryptError": "sa_fieldcrypt.errors",
    "KeyProviderError": "sa_fieldcrypt.errors",
    "RotationError": "sa_fieldcrypt.errors",
    "UnknownKeyError": "sa_fieldcrypt.errors",
    "UnsupportedComparisonError": "sa_fieldcrypt.errors",
    "ValueTypeError": "sa_fieldcrypt.errors",
    "EncryptedHybrid": "sa_fieldcrypt.hybrid",
    "IndexComparator": "sa_fieldcrypt.hybrid",
    "CompoundIndex": "sa_fieldcrypt.hybrid",
    "compound_index": "sa_fieldcrypt.hybrid",
    "encrypted_hybrid": "sa_fieldcrypt.hybrid",
    "encrypted_values": "sa_fieldcrypt.hybrid",
    "Key": "sa_fieldcrypt.keys",
    "Keyring": "sa_fieldcrypt.keys",
    "generate_key": "sa_fieldcrypt.keys",
    "parse_key": "sa_fieldcrypt.keys",
    "KeyProvider": "sa_fieldcrypt.providers.base",
    "EncryptedBoolean": "sa_fieldcrypt.types",
    "EncryptedBytes": "sa_fieldcrypt.types",
    "EncryptedDate": "sa_fieldcrypt.types",
    "EncryptedDateTime": "sa_fieldcrypt.types",
    "EncryptedDecimal": "sa_fieldcrypt.types",
    "EncryptedFloat": "sa_fieldcrypt.types",
    "EncryptedInteger": "sa_fieldcrypt.types",
    "EncryptedJSON": "sa_fieldcrypt.types",
    "EncryptedText": "sa_fieldcrypt.types",
    "EncryptedTime": "sa_fieldcrypt.types",
    "EncryptedType": "sa_fieldcrypt.types",
    "EncryptedUUID": "sa_fieldcrypt.types",
    "PlaintextValueWarning": "sa_fieldcrypt.types",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

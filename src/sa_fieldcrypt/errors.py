"""Exceptions raised by sa-fieldcrypt.

Every exception the library raises on purpose derives from :class:`FieldCryptError`::

    FieldCryptError
    ├── ConfigurationError (also ValueError)   bad keys, settings or arguments
    ├── KeyProviderError                       a key provider could not load keys
    ├── DecryptionError                        a stored value could not be decrypted
    │   └── UnknownKeyError                    ...because its key id is not in the keyring
    ├── UnsupportedComparisonError (also TypeError)
    │                                          an SQL comparison on an encrypted column
    ├── ValueTypeError (also TypeError)        a value of the wrong Python type for a column
    └── RotationError                          a re-encryption run could not go on

SQLAlchemy does not wrap these errors in ``StatementError`` when a column raises them while
binding parameters: its wrapper would quote the parameters, which are plaintext at that point.

Messages may name a column, a key id or a row's primary key. They never contain plaintext,
ciphertext or key material, so every one of them is safe to log.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DontWrapMixin

__all__ = [
    "ConfigurationError",
    "DecryptionError",
    "FieldCryptError",
    "KeyProviderError",
    "RotationError",
    "UnknownKeyError",
    "UnsupportedComparisonError",
    "ValueTypeError",
]


class FieldCryptError(DontWrapMixin, Exception):
    """Base class of every error raised by sa-fieldcrypt."""


class ConfigurationError(FieldCryptError, ValueError):
    """Keys, settings or arguments are malformed or missing."""


class KeyProviderError(FieldCryptError):
    """A key provider failed to load the keyring."""


class UnsupportedComparisonError(FieldCryptError, TypeError):
    """An SQL operator was applied to an encrypted column, where it cannot work."""


class ValueTypeError(FieldCryptError, TypeError):
    """A column was given a value of a Python type it does not store."""


class RotationError(FieldCryptError):
    """A rotation, verification or migration run cannot go on."""


class DecryptionError(FieldCryptError):
    """A stored value could not be decrypted.

    Attributes:
        column: ``table.column`` of the value, when known.
        key_id: the key id named by the token, when it names one.
        reason: what went wrong, without the column prefix.
    """

    def __init__(self, reason: str, *, column: str | None = None, key_id: str | None = None):
        self.reason = reason
        self.column = column
        self.key_id = key_id
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.column or "encrypted value"
        if self.key_id is not None:
            where += f" (key id {self.key_id!r})"
        return f"{where}: {self.reason}"

    def with_column(self, column: str | None) -> DecryptionError:
        """Return a copy of this error that names ``column``."""
        if column is None or column == self.column:
            return self
        return type(self)(self.reason, column=column, key_id=self.key_id)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are not restored by the default pickling; rotation workers
        # send these errors between processes.
        return (_rebuild, (type(self), self.reason, self.column, self.key_id))


class UnknownKeyError(DecryptionError):
    """A token names a key id that the keyring does not hold."""


def _rebuild(
    cls: type[DecryptionError], reason: str, column: str | None, key_id: str | None
) -> DecryptionError:
    return cls(reason, column=column, key_id=key_id)

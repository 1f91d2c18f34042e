"""Column types that encrypt on the way into the database and decrypt on the way out.

Typical usage::

    from sqlalchemy.orm import Mapped, mapped_column
    from sa_fieldcrypt import EncryptedText

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column("email_encrypted", EncryptedText())

Every type stores an ``fc1:<key_id>:<fernet token>`` string in a ``TEXT`` column (``LONGTEXT``
on MySQL/MariaDB, whose ``TEXT`` stops at 64 KiB). ``None`` stays SQL ``NULL``; every other
value, ``""`` included, is encrypted.

Encryption is randomized, so SQL cannot compare encrypted values: ``==``, ``in_()``, ``like()``
and ordering raise :class:`~sa_fieldcrypt.UnsupportedComparisonError`; ``is_(None)`` and
``is_not(None)`` still work. Query by equality through a blind index instead.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Text
from sqlalchemy.dialects import mysql
from sqlalchemy.sql import operators
from sqlalchemy.sql.base import SchemaEventTarget
from sqlalchemy.types import TypeDecorator

from sa_fieldcrypt import cipher
from sa_fieldcrypt.config import as_key_cache, default_key_cache
from sa_fieldcrypt.errors import (
    DecryptionError,
    UnknownKeyError,
    UnsupportedComparisonError,
    ValueTypeError,
)
from sa_fieldcrypt.keys import Keyring
from sa_fieldcrypt.providers.base import KeyCache, KeyProvider

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.sql.operators import OperatorType
    from sqlalchemy.types import TypeEngine

__all__ = [
    "COLUMN_INFO_KEY",
    "EncryptedBytes",
    "EncryptedJSON",
    "EncryptedText",
    "EncryptedType",
    "PlaintextValueWarning",
    "plaintext_read_counts",
]

logger = logging.getLogger("sa_fieldcrypt")

#: Key of ``Column.info`` under which a plain ``Text`` column that holds tokens (the
#: hybrid-property style) records the :class:`EncryptedType` that reads and writes it.
COLUMN_INFO_KEY = "sa_fieldcrypt.type"

# Operators that do not look at the stored value's content.
_ALLOWED_OPERATORS = frozenset({operators.is_, operators.is_not})


class EncryptedType(TypeDecorator[Any], SchemaEventTarget):
    """Base of the encrypted column types; subclasses say how values become bytes.

    Args:
        keyring: a :class:`~sa_fieldcrypt.Keyring` or key provider for this column only;
            by default the keys set by :func:`~sa_fieldcrypt.configure` or the settings.
        allow_plaintext: read stored values that are not tokens as plaintext, for the time a
            plaintext column is being migrated (``fieldcrypt rotate --encrypt-plaintext``).
            Off by default. Each read is counted (:func:`plaintext_read_counts`) and the
            first one per column and process emits a :class:`PlaintextValueWarning` and a
            log warning. A token that fails to decrypt still raises: ciphertext is never
            returned as data.
    """

    impl = Text
    cache_ok = True

    #: Python name of the accepted type, for error messages.
    python_type_name: ClassVar[str] = "object"

    class Comparator(TypeDecorator.Comparator[Any]):
        """Refuses SQL operators that would compare ciphertexts."""

        def operate(self, op: OperatorType, *other: Any, **kwargs: Any) -> Any:
            if op in _ALLOWED_OPERATORS:
                return super().operate(op, *other, **kwargs)
            raise _comparison_error(self.expr, op)

        def reverse_operate(self, op: OperatorType, other: Any, **kwargs: Any) -> Any:
            if op in _ALLOWED_OPERATORS:
                return super().reverse_operate(op, other, **kwargs)
            raise _comparison_error(self.expr, op)

    comparator_factory = Comparator

    # allow_plaintext is not keyword-only on purpose: SQLAlchemy builds the statement-cache
    # key and type copies from the positional-or-keyword arguments only.
    def __init__(self, keyring: Keyring | KeyProvider | None = None, allow_plaintext: bool = False):
        super().__init__()
        # Part of the statement-cache key: compared by identity, and free of secrets in repr.
        self.keyring = keyring
        self.allow_plaintext = allow_plaintext
        self._keys: KeyCache | None = None if keyring is None else as_key_cache(keyring)
        self._column_label: str | None = None

    # -- conversions subclasses provide -------------------------------------------------

    def _to_bytes(self, value: Any) -> bytes:
        raise NotImplementedError

    def _from_bytes(self, data: bytes) -> Any:
        raise NotImplementedError

    # -- SQLAlchemy hooks ---------------------------------------------------------------

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.LONGTEXT())
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        keys = self._keys or default_key_cache()
        return cipher.encrypt(keys.get(), self._to_bytes(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return self._from_bytes(self.decrypt_token(value))

    @property
    def python_type(self) -> type[Any]:
        return object

    # -- helpers ------------------------------------------------------------------------

    @property
    def column_label(self) -> str:
        """``schema.table.column`` this type is attached to, or a generic description."""
        return self._column_label or f"{type(self).__name__} column"

    def decrypt_token(self, token: str) -> bytes:
        """Decrypt a stored token with this column's keys, naming the column on failure."""
        keys = self._keys or default_key_cache()
        try:
            return cipher.decrypt(keys.get(), token)
        except UnknownKeyError as exc:
            # A key added elsewhere (another instance, the secret store) may be missing here
            # only because the cache is older than the token; one refresh settles it.
            refreshed = keys.refresh_for_key(exc.key_id or "")
            if refreshed is None:
                raise exc.with_column(self._column_label) from None
            try:
                return cipher.decrypt(refreshed, token)
            except DecryptionError as again:
                raise again.with_column(self._column_label) from None
        except DecryptionError as exc:
            if self.allow_plaintext and cipher.inspect_token(token).kind == "plaintext":
                return self._read_plaintext(token)
            raise exc.with_column(self._column_label) from None

    def _read_plaintext(self, stored: str) -> bytes:
        label = self.column_label
        with _plaintext_lock:
            first = label not in _plaintext_reads
            _plaintext_reads[label] = _plaintext_reads.get(label, 0) + 1
        if first:
            message = (
                f"{label}: read a value stored as plaintext (allow_plaintext=True); encrypt "
                "such values with `fieldcrypt rotate --encrypt-plaintext`, then remove "
                "allow_plaintext. Reads are counted in sa_fieldcrypt.plaintext_read_counts()."
            )
            logger.warning("sa_fieldcrypt: %s", message)
            warnings.warn(message, PlaintextValueWarning, stacklevel=2)
        return stored.encode("utf-8", "surrogatepass")

    # -- re-encryption (the rotation engine calls these) --------------------------------

    def active_keyring(self) -> Keyring:
        """Return the keyring this column encrypts and decrypts with now."""
        return (self._keys or default_key_cache()).get()

    def written_prefix(self) -> str:
        """Return the header that every token this column writes now starts with.

        A stored value with this header needs no re-encryption: rotation skips it in SQL.
        """
        return self.active_keyring().primary.token_prefix

    def encrypt_bytes(self, data: bytes) -> str:
        """Encrypt ``data`` with this column's primary key; return the token."""
        return cipher.encrypt(self.active_keyring(), data)

    def reencrypt(self, token: str) -> str:
        """Return ``token``'s content encrypted under the primary key.

        The token is decrypted with whichever key it names (or, for a legacy token, the key
        that opens it) and the decrypted bytes are encrypted again as they are: they are never
        turned into a Python value, so what the column reads back is unchanged.

        Raises:
            DecryptionError: the value is not a token, or does not decrypt.
        """
        # Only allow_plaintext makes decrypt_token() accept plaintext; refuse it here.
        if self.allow_plaintext and cipher.inspect_token(token).kind == "plaintext":
            raise DecryptionError(cipher._NOT_A_TOKEN, column=self._column_label)
        return self.encrypt_bytes(self.decrypt_token(token))

    def encrypt_plaintext(self, stored: str) -> str:
        """Encrypt a value that was stored as plaintext text, as this column would store it.

        The text is encoded as UTF-8, the encoding the column reads it back with.

        Raises:
            ValueTypeError: the value is already a token, or it is not what the column
                stores (text that is not JSON, for :class:`EncryptedJSON`).
        """
        if cipher.inspect_token(stored).kind != "plaintext":
            raise ValueTypeError(
                f"{self.column_label}: the stored value is already an encrypted token; "
                "encrypt_plaintext() encrypts plaintext values only"
            )
        data = stored.encode("utf-8", "surrogatepass")
        try:
            self._from_bytes(data)
        except DecryptionError:
            raise ValueTypeError(
                f"{self.column_label}: the plaintext value is not valid for "
                f"{type(self).__name__} ({self.python_type_name})"
            ) from None
        return self.encrypt_bytes(data)

    def _type_error(self, value: object) -> ValueTypeError:
        return ValueTypeError(
            f"{self.column_label}: {type(self).__name__} stores {self.python_type_name} "
            f"values, got {type(value).__name__}"
        )

    def _set_parent(self, parent: SchemaEventTarget, outer: bool = False, **kw: Any) -> None:
        super()._set_parent(parent, outer=outer, **kw)
        # Being a SchemaEventTarget makes SQLAlchemy call this when a Column takes the type
        # (and copy the type when it copies the column), so errors can name the column.
        table = getattr(parent, "table", None)
        name = getattr(parent, "name", None)
        if table is not None and name is not None:
            self._column_label = f"{table.fullname}.{name}"
            return
        if hasattr(parent, "name") and hasattr(parent, "dispatch"):
            # Not on a table yet: wait for the column to be attached to one.
            from sqlalchemy import event

            def attached(column: Any, table: Any) -> None:
                self._column_label = f"{table.fullname}.{column.name}"

            event.listen(parent, "after_parent_attach", attached)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PlaintextValueWarning(UserWarning):
    """A column with ``allow_plaintext=True`` read a value that is not encrypted."""


_plaintext_lock = threading.Lock()
_plaintext_reads: dict[str, int] = {}


def plaintext_read_counts() -> dict[str, int]:
    """Return how many plaintext values each ``allow_plaintext`` column read in this process.

    Keys are ``schema.table.column`` labels. Watch these numbers fall to zero before turning
    ``allow_plaintext`` off.
    """
    with _plaintext_lock:
        return dict(_plaintext_reads)


def _comparison_error(expr: Any, op: OperatorType) -> UnsupportedComparisonError:
    label = getattr(getattr(expr, "type", None), "column_label", None) or "encrypted column"
    op_name = getattr(op, "__name__", str(op))
    return UnsupportedComparisonError(
        f"{label}: cannot apply {op_name!s} in SQL: encryption is randomized, so equal values "
        "have different ciphertexts and the database cannot compare them. Query by equality "
        "through a blind index (sa_fieldcrypt.blind_index) instead; is_(None) and "
        "is_not(None) still work."
    )


class EncryptedText(EncryptedType):
    """An encrypted ``str`` column (any Python string, including NUL and lone surrogates)."""

    cache_ok = True
    python_type_name = "str"

    def _to_bytes(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise self._type_error(value)
        # surrogatepass: every Python str round-trips, not only valid Unicode text.
        return value.encode("utf-8", "surrogatepass")

    def _from_bytes(self, data: bytes) -> str:
        return data.decode("utf-8", "surrogatepass")

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        # Inlined _from_bytes: this runs once per value loaded, and a call frame is ~5%.
        if value is None:
            return None
        return self.decrypt_token(value).decode("utf-8", "surrogatepass")

    @property
    def python_type(self) -> type[Any]:
        return str


class EncryptedBytes(EncryptedType):
    """An encrypted ``bytes`` column; ``bytearray`` and ``memoryview`` are accepted too."""

    cache_ok = True
    python_type_name = "bytes"

    def _to_bytes(self, value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        raise self._type_error(value)

    def _from_bytes(self, data: bytes) -> bytes:
        return data

    @property
    def python_type(self) -> type[Any]:
        return bytes


class EncryptedJSON(EncryptedType):
    """An encrypted JSON value: dict, list, str, int, float (finite), bool.

    Python ``None`` is stored as SQL ``NULL``, not as JSON ``null``. Tuples come back as
    lists, as with any JSON column.
    """

    cache_ok = True
    python_type_name = "JSON-serializable"

    def _to_bytes(self, value: Any) -> bytes:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError):
            # json's own message can quote the value; this one names only the type.
            raise ValueTypeError(
                f"{self.column_label}: EncryptedJSON cannot store this "
                f"{type(value).__name__}: it is not JSON-serializable (or holds NaN/Infinity)"
            ) from None
        return text.encode("utf-8", "surrogatepass")

    def _from_bytes(self, data: bytes) -> Any:
        try:
            return json.loads(data.decode("utf-8", "surrogatepass"))
        except ValueError:
            raise DecryptionError(
                "the value decrypted but is not JSON", column=self._column_label
            ) from None

"""Column types that encrypt on the way into the database and decrypt on the way out.

Typical usage::

    from sqlalchemy.orm import Mapped, mapped_column
    from sa_fieldcrypt import EncryptedText

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column("email_encrypted", EncryptedText())

Every type stores an ``fc1:<key_id>:<payload>`` string in a ``TEXT`` column (``LONGTEXT``
on MySQL/MariaDB, whose ``TEXT`` stops at 64 KiB). ``None`` stays SQL ``NULL``; every other
value, ``""`` included, is encrypted. The typed columns (:class:`EncryptedDate`,
:class:`EncryptedDateTime`, :class:`EncryptedTime`, :class:`EncryptedInteger`,
:class:`EncryptedFloat`, :class:`EncryptedDecimal`, :class:`EncryptedBoolean`,
:class:`EncryptedUUID`) encrypt one fixed encoding of their values, which
docs/token-format.md gives byte for byte.

Every column binds its values to a *context*, its name: by default (``context=True``) the
``schema.table.column`` it is declared as, or a fixed name (``context="core.customers.email"``);
``context=False`` opts out. A token copied from one column into another then fails to decrypt.
Values written before the column was bound (unbound tokens, bare legacy tokens) still decrypt
until ``allow_unbound=False`` (or ``FIELDCRYPT_ALLOW_UNBOUND=false``) makes it strict.

Encryption is randomized, so SQL cannot compare encrypted values: ``==``, ``in_()``, ``like()``
raise :class:`~sa_fieldcrypt.UnsupportedComparisonError` when the expression is built, and
``ORDER BY``, ``GROUP BY`` and a window's ``PARTITION BY``/``ORDER BY`` over an encrypted value
raise it when the statement is compiled, before any SQL is sent; ``is_(None)`` and
``is_not(None)`` still work. Query by equality through a blind index instead.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from cryptography.fernet import InvalidToken
from sqlalchemy import CompoundSelect, Over, Select, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators
from sqlalchemy.sql.base import SchemaEventTarget
from sqlalchemy.types import TypeDecorator
from typing_extensions import TypeVar

from sa_fieldcrypt import cipher, metrics
from sa_fieldcrypt.cipher import RowKeyPart
from sa_fieldcrypt.config import as_key_cache, default_key_cache, unbound_allowed
from sa_fieldcrypt.errors import (
    ConfigurationError,
    DecryptionError,
    FieldCryptError,
    UnknownKeyError,
    UnsupportedComparisonError,
    ValueTypeError,
)
from sa_fieldcrypt.keys import Keyring
from sa_fieldcrypt.legacy import LegacyFormat, check_formats, unopened
from sa_fieldcrypt.providers.base import KeyCache, KeyProvider

if TYPE_CHECKING:
    from sqlalchemy import Column
    from sqlalchemy.engine import Dialect
    from sqlalchemy.sql.operators import OperatorType
    from sqlalchemy.types import TypeEngine

__all__ = [
    "COLUMN_INFO_KEY",
    "EncryptedBoolean",
    "EncryptedBytes",
    "EncryptedDate",
    "EncryptedDateTime",
    "EncryptedDecimal",
    "EncryptedFloat",
    "EncryptedInteger",
    "EncryptedJSON",
    "EncryptedText",
    "EncryptedTime",
    "EncryptedType",
    "EncryptedUUID",
    "PlaintextValueWarning",
    "column_codec",
    "encrypted_columns",
]

logger = logging.getLogger("sa_fieldcrypt")

#: Key of ``Column.info`` under which a plain ``Text`` column that holds tokens (the
#: hybrid-property style) records the :class:`EncryptedType` that reads and writes it.
COLUMN_INFO_KEY = "sa_fieldcrypt.type"


class _EncryptPath(Protocol):
    """A value (and, in a row-bound column, its row's encoded key) to its token."""

    def __call__(self, value: Any, row: bytes | None = None, /) -> str | None: ...


class _DecryptPath(Protocol):
    """A stored token (and, in a row-bound column, its row's encoded key) to its value."""

    def __call__(self, stored: Any, row: bytes | None = None, /) -> Any: ...


#: The Python type of a column's values (``Any`` where a type does not say).
_T = TypeVar("_T", default=Any)

# Operators that do not look at the stored value's content.
_ALLOWED_OPERATORS = frozenset({operators.is_, operators.is_not})


@dataclass(frozen=True, slots=True)
class _ContextState:
    """What a column binds its values to; attaching the column replaces it as a whole.

    Attributes:
        name: the context values are bound to, or None: unbound tokens (or, with
            ``from_column``, a column not attached yet).
        from_column: ``context=True``: the name is the ``schema.table.column`` of the column
            the type is attached to. With ``name`` None, every value is refused until then.
        allow_unbound: whether unbound tokens are still read, with a context; None: as
            ``FIELDCRYPT_ALLOW_UNBOUND`` says (:func:`~sa_fieldcrypt.config.unbound_allowed`).
            In a row-bound column, tokens bound to the column only count as unbound.
        rows: values are bound to their rows too (``encrypted_hybrid(..., bind_row=True)``):
            only the row paths, which are given the row's primary key, read and write.
    """

    name: str | None
    from_column: bool
    allow_unbound: bool | None
    rows: bool = False

    @property
    def pending(self) -> bool:
        """Whether ``context=True`` still waits for its column (every value is refused)."""
        return self.name is None and self.from_column


class EncryptedType(TypeDecorator[_T], SchemaEventTarget):
    """Base of the encrypted column types; subclasses say how values become bytes.

    It is generic in the Python type of its values (``EncryptedText`` is an
    ``EncryptedType[str]``), which :func:`~sa_fieldcrypt.encrypted_hybrid` passes on to
    type checkers.

    Args:
        keyring: a :class:`~sa_fieldcrypt.Keyring` or key provider for this column only;
            by default the keys set by :func:`~sa_fieldcrypt.configure` or the settings.
        context: what every value written to this column is bound to, so that a token
            copied into another column does not decrypt there. ``True`` (the default) uses the
            ``schema.table.column`` name the type is attached to; a string names the context
            itself (keep it when renaming the column: a changed context cannot read old
            values). ``False`` writes unbound tokens, which decrypt in any unbound column.
        allow_unbound: with a context, whether unbound tokens (written before the column was
            bound, or copied from anywhere) are still read. ``None`` (the default) follows
            ``FIELDCRYPT_ALLOW_UNBOUND`` (true unless set). Set it to False once ``fieldcrypt
            rotate`` has re-encrypted every value under the context.
        allow_plaintext: read stored values that are not tokens as plaintext, for the time a
            plaintext column is being migrated (``fieldcrypt rotate --encrypt-plaintext``).
            Off by default. Each read is counted (``metrics.snapshot().plaintext_reads``)
            and the first one per column and process emits a :class:`PlaintextValueWarning`
            and a log warning. A token that fails to decrypt still raises, and so does a
            value that only looks like one (``cipher.looks_like_token``: an ``fc1:`` header
            in another case or behind spaces, a Fernet-like value): ciphertext is never
            returned as data.
        padding: hide the length of short values: ``True`` pads every plaintext to a
            multiple of 16 bytes before encrypting (ISO/IEC 7816-4: a 0x80 byte, then zeros),
            an int to a multiple of that many bytes, so that every value shorter than a block
            gives a token of one length. Reads accept padded and unpadded tokens alike, so it
            can be turned on or off at any time; ``fieldcrypt rotate`` then re-encrypts the
            column's values under its padding. Off by default.
        legacy: earlier formats the column's stored values may still be in, each with its
            key material (:mod:`sa_fieldcrypt.legacy`: ``BareFernet()``,
            ``SqlalchemyUtils(...)``). They are read, counted by ``fieldcrypt status`` and
            rewritten as the column's own tokens by ``fieldcrypt rotate``; nothing is written
            in them. Legacy values are unbound: a strict column (``allow_unbound=False``)
            refuses them. ``repr()`` leaves them out (migrations do not need them).
    """

    impl = Text
    cache_ok = True

    #: Python name of the accepted type, for error messages.
    python_type_name: ClassVar[str] = "object"

    class Comparator(TypeDecorator.Comparator[Any]):
        """Refuses SQL operators that would compare ciphertexts."""

        def operate(self, op: OperatorType, *other: Any, **kwargs: Any) -> Any:
            """Apply ``op`` if it does not look at the stored value (``is_(None)``); else refuse."""
            if op in _ALLOWED_OPERATORS or _is_identity_test(op, self.expr, other):
                return super().operate(op, *other, **kwargs)
            raise _comparison_error(self.expr, op)

        def reverse_operate(self, op: OperatorType, other: Any, **kwargs: Any) -> Any:
            """The reflected form of :meth:`operate`: the same operators work, the rest refuse."""
            if op in _ALLOWED_OPERATORS:
                return super().reverse_operate(op, other, **kwargs)
            raise _comparison_error(self.expr, op)

    comparator_factory = Comparator

    def __init__(
        self,
        keyring: Keyring | KeyProvider | None = None,
        context: str | bool = True,
        allow_unbound: bool | None = None,
        allow_plaintext: bool = False,
        padding: bool | int = False,
        legacy: Iterable[LegacyFormat] = (),
    ):
        super().__init__()
        # Part of the statement-cache key: compared by identity, and free of secrets in repr.
        self.keyring = keyring
        self._keys: KeyCache | None = None if keyring is None else as_key_cache(keyring)
        self._column_label: str | None = None
        self._attached_to: object | None = None
        if not isinstance(context, bool):
            _check_context(context)
        if allow_unbound is not None and not isinstance(allow_unbound, bool):
            raise ConfigurationError("allow_unbound must be True, False or None")
        if allow_unbound is False and context is False:
            raise ConfigurationError(
                "allow_unbound=False needs a context: give context=True or context='name'"
            )
        self._context = _ContextState(
            name=context if isinstance(context, str) else None,
            from_column=context is True,
            allow_unbound=allow_unbound,
        )
        self.allow_plaintext = allow_plaintext
        self.padding = padding
        self._block = cipher.padding_block(padding)
        formats = check_formats(legacy, type(self).__name__)
        for legacy_format in formats:
            legacy_format.check_column(self)
        # Authenticated formats first: a value one of them opens is certainly its own.
        self.legacy = tuple(sorted(formats, key=lambda f: not f.authenticated))
        self._build_paths()

    # -- conversions subclasses provide -------------------------------------------------

    def _to_bytes(self, value: Any) -> bytes:
        raise NotImplementedError

    def _from_bytes(self, data: bytes) -> Any:
        raise NotImplementedError

    # -- the per-value paths ------------------------------------------------------------

    def _build_paths(self) -> None:
        """Build the functions every value goes through, reading this instance's state."""
        self._encrypt_value = self._encryptor(self._to_bytes)
        self._decrypt_value = self._decryptor(self._from_bytes)
        self._encrypt_data = self._encryptor(_as_is)
        self._decrypt_data = self._decryptor(_as_is)

    def _encryptor(self, to_bytes: Callable[[Any], bytes]) -> _EncryptPath:
        """Return the encrypt path: a value (made bytes by ``to_bytes``) to a token.

        Everything fixed for the instance is captured; what may change is read per value:
        the context state (attaching replaces it) and the default keys (``configure()``).
        """
        column = self
        own_keys = self._keys
        encrypt = cipher.encrypt_value
        encrypt_row = cipher.encrypt_row_value
        block = self._block
        encrypt_padded = cipher.encrypt_padded_value

        def encrypt_value(value: Any, row: bytes | None = None) -> str | None:
            if value is None:
                return None
            try:
                data = to_bytes(value)
            except FieldCryptError:
                raise
            except Exception as exc:
                # SQLAlchemy would wrap it in StatementError, whose text quotes the plaintext
                # of every parameter, and its own message may quote the value.
                raise column._conversion_error(value, exc) from None
            context = column._context
            name = context.name
            if name is None and context.from_column:  # context.pending, without a call
                raise column._unattached_error()
            if context.rows is (row is None):
                raise column._row_error(row)
            keys = own_keys if own_keys is not None else default_key_cache()
            try:
                if block is not None:
                    return encrypt_padded(keys.get(), data, name, row, block)
                if row is None:
                    return encrypt(keys.get(), data, name)
                return encrypt_row(keys.get(), data, cast("str", name), row)
            except ValueTypeError as exc:  # too large to store
                raise ValueTypeError(f"{column.column_label}: {exc}") from None

        return encrypt_value

    def _decryptor(self, from_bytes: Callable[[bytes], Any]) -> _DecryptPath:
        """Return the decrypt path: a stored token to a value (made from bytes by ``from_bytes``).

        A token under a key id the keys do not hold is retried once with refreshed keys;
        errors name the column.
        """
        column = self
        own_keys = self._keys
        allow_plaintext = self.allow_plaintext
        legacy = bool(self.legacy)
        decrypt = cipher.decrypt_value
        decrypt_row = cipher.decrypt_row_value
        fc1 = cipher.TOKEN_PREFIX

        def decrypt_value(stored: Any, row: bytes | None = None) -> Any:
            if stored is None:
                return None
            context = column._context
            name = context.name
            if name is None and context.from_column:  # context.pending, without a call
                raise column._unattached_error()
            if context.rows is (row is None):
                raise column._row_error(row)
            if legacy and not stored.startswith(fc1):
                data = column._read_legacy(stored, context)
                if data is not None:
                    return from_bytes(data)
            if allow_plaintext and not cipher.looks_like_token(stored):
                return from_bytes(column._read_plaintext(stored))
            keys = own_keys if own_keys is not None else default_key_cache()
            try:
                if row is None:
                    data = decrypt(keys.get(), stored, name, _unbound_ok(context))
                else:
                    data = decrypt_row(
                        keys.get(), stored, cast("str", name), row, _unbound_ok(context)
                    )
            except DecryptionError as exc:
                data = column._after_failure(keys, stored, context, exc, row)
            return from_bytes(data)

        return decrypt_value

    # -- SQLAlchemy hooks ---------------------------------------------------------------

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """The column type on ``dialect``: ``LONGTEXT`` on MySQL/MariaDB, ``TEXT`` elsewhere."""
        # Not dialect.type_descriptor(): PostgreSQL adapts Text to its String, i.e. VARCHAR.
        if dialect.name in ("mysql", "mariadb"):
            return mysql.LONGTEXT()
        return self.impl_instance

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        """The function that encrypts each value bound for ``dialect``."""
        # In place of TypeDecorator's wrapper around process_bind_param: one call per value.
        # SQLAlchemy calls this on the copy of the type it makes per dialect; that copy shares
        # the paths of the type on the column, so an attachment made later still shows.
        encrypt_value = self._encrypt_value
        impl_processor = self.impl_instance.bind_processor(dialect)
        if impl_processor is None:
            return encrypt_value

        def process(value: Any) -> Any:
            return impl_processor(encrypt_value(value))

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any]:
        """The function that decrypts each value ``dialect`` returns."""
        decrypt_value = self._decrypt_value
        impl_processor = self.impl_instance.result_processor(dialect, coltype)
        if impl_processor is None:
            return decrypt_value

        def process(value: Any) -> Any:
            return decrypt_value(impl_processor(value))

        return process

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        """Encrypt a value for the database: a token, or None for None."""
        return self._encrypt_value(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """Decrypt a stored token (or read a legacy token); None stays None."""
        return self._decrypt_value(value)

    @property
    def python_type(self) -> type[Any]:
        """The Python type of the column's values."""
        return object

    @property
    def _static_cache_key(self) -> Any:
        # SQLAlchemy's default reads the __init__ arguments from __dict__ and memoizes the key;
        # here the context is one state value that attaching replaces, so it is read each time.
        if type(self).__dict__.get("cache_ok") is not True:
            return super()._static_cache_key  # SQLAlchemy's answer: a warning, no caching
        return (
            type(self),
            self.keyring,
            self._context,
            self.allow_plaintext,
            self._block,
            self.legacy,
        )

    # -- helpers ------------------------------------------------------------------------

    @property
    def context(self) -> str | bool:
        """The context values are bound to; True while ``context=True`` awaits its column.

        False for a column that opted out (``context=False``): its tokens are unbound.
        """
        state = self._context
        if state.pending:
            return True
        return False if state.name is None else state.name

    @property
    def allow_unbound(self) -> bool:
        """Whether unbound tokens are read now (always, without a context).

        A column's own ``allow_unbound=`` decides; else ``FIELDCRYPT_ALLOW_UNBOUND``.
        """
        return _unbound_ok(self._context)

    @property
    def column_label(self) -> str:
        """``schema.table.column`` this type is attached to, or a generic description."""
        return self._column_label or f"{type(self).__name__} column"

    def encrypt_bytes(self, data: bytes, row_key: Sequence[RowKeyPart] | None = None) -> str:
        """Encrypt ``data`` with this column's primary key and context; return the token.

        A row-bound column (:attr:`row_bound`) needs the row's primary-key values, in the
        table's primary-key order; any other refuses them.
        """
        return cast("str", self._encrypt_data(data, self._row(row_key)))  # None only for None

    def decrypt_token(self, token: str, row_key: Sequence[RowKeyPart] | None = None) -> bytes:
        """Decrypt a stored token with this column's keys, naming the column on failure.

        ``row_key`` as for :meth:`encrypt_bytes`.
        """
        return cast("bytes", self._decrypt_data(token, self._row(row_key)))

    def token_rewriter(self) -> Callable[[str], str | None]:
        """A function from a stored token to the token the column writes now for its content.

        The token's content is encrypted again as :meth:`encrypt_bytes` encrypts it, after
        :meth:`decrypt_token` would have decrypted it, with the keys and context of this
        moment, looked up once here: rotation takes one per batch. It answers None for
        anything but a token this keyring opens in this column (failures, legacy values,
        plaintext, unknown key ids, row-bound columns): :meth:`decrypt_token` then decides,
        and its errors name what went wrong.
        """
        state = self._context
        if state.rows or state.pending:
            return _no_rewrite  # every value needs its row, or is refused
        try:
            keyring = self.active_keyring()
            block = self._block
            write = cipher.writing_codec(keyring, state.name, block is not None)
        except FieldCryptError:
            return _no_rewrite  # each value goes the long way, and fails there
        name, allow_unbound = state.name, _unbound_ok(state)
        limit = cipher.max_token_size()
        prefix, encrypt = write.token_prefix, write.encrypt
        reading_codec, pad, unpad = cipher.reading_codec, cipher.pad, cipher.unpad
        # Only headers this keyring opens are kept: as many as its keys and flags, whatever
        # the stored values hold.
        readers: dict[str, tuple[Any, Any, bool]] = {}

        def rewrite(token: str) -> str | None:
            if len(token) > limit:
                return None
            head, _, payload = token.rpartition(":")
            found = readers.get(head)
            if found is None:
                found = reading_codec(keyring, head, name, allow_unbound)
                if found is None:
                    return None
                readers[head] = found
            key, codec, padded = found
            try:
                data = codec.decrypt(payload)
                if padded:
                    data = unpad(data)
            except (InvalidToken, ValueError, TypeError, DecryptionError):
                return None  # decrypted again the long way, which reports it
            next(key.decrypt_counter)
            if block is not None:
                data = pad(data, block)
            if len(data) >= limit:
                return None
            new = prefix + encrypt(data)
            return new if len(new) <= limit else None

        return rewrite

    def to_plaintext(self, value: Any) -> bytes:
        """The bytes the column encrypts for ``value``: its plaintext encoding.

        Raises:
            ValueTypeError: ``value`` is not of the column's type.
        """
        return self._to_bytes(value)

    def legacy_format(self, stored: str) -> LegacyFormat | None:
        """The first legacy format whose shape ``stored`` has, or None.

        Authenticated formats come first, then the others, each in declared order. From the
        text alone: nothing is decrypted. An ``fc1`` token, or a value longer than
        :func:`~sa_fieldcrypt.cipher.max_token_size`, is in no legacy format.
        """
        if stored.startswith(cipher.TOKEN_PREFIX) or len(stored) > cipher.max_token_size():
            return None  # an over-long value is refused as a token is, before any decoding
        return next((f for f in self.legacy if f.shaped(stored)), None)

    def is_ciphertext(self, stored: str) -> bool:
        """Whether the column takes ``stored`` for ciphertext, never for plaintext.

        True when it looks like a token (:func:`~sa_fieldcrypt.cipher.looks_like_token`) or
        has the shape of a legacy format the column declares.
        """
        return cipher.looks_like_token(stored) or self.legacy_format(stored) is not None

    def _read_legacy(self, stored: str, context: _ContextState) -> bytes | None:
        if len(stored) > cipher.max_token_size():
            return None  # refused where tokens are, before any decoding
        shaped = [f for f in self.legacy if f.shaped(stored)]
        if not shaped:
            return None
        if not _unbound_ok(context):
            metrics.count_failure(None, False)
            raise DecryptionError(
                f"the value is in a legacy format ({shaped[0].name}), which is not bound to "
                f"its {'row' if context.rows else 'column'}, and the column accepts only "
                "bound values (allow_unbound=False); re-encrypt it with `fieldcrypt rotate`, "
                "or set allow_unbound=True while the column's values are migrated",
                column=self._column_label,
            )
        for legacy_format in shaped:
            try:
                data = legacy_format.read(stored, self)
            except DecryptionError as exc:
                metrics.count_failure(None, False)
                raise exc.with_column(self._column_label) from None
            if data is not None:
                metrics.count_legacy_read(legacy_format.name)
                return data
        metrics.count_failure(None, False)
        raise unopened(shaped).with_column(self._column_label)

    def to_stored(self, value: Any, row_key: Sequence[RowKeyPart] | None = None) -> str | None:
        """A Python value as the column stores it: its token, or None for None.

        ``row_key`` as for :meth:`encrypt_bytes`: the values of the row the value is for.
        """
        return self._encrypt_value(value, self._row(row_key))

    def from_stored(self, stored: Any, row_key: Sequence[RowKeyPart] | None = None) -> Any:
        """A stored value as the application reads it (None for NULL).

        ``row_key`` as for :meth:`encrypt_bytes`: the values of the row it was read from.
        """
        return self._decrypt_value(stored, self._row(row_key))

    @property
    def padding_block(self) -> int | None:
        """The block the column pads values to (``padding=``), in bytes; None: no padding."""
        return self._block

    @property
    def row_bound(self) -> bool:
        """Whether values are bound to their rows (``encrypted_hybrid(..., bind_row=True)``)."""
        return self._context.rows

    def bound_to_rows(self) -> EncryptedType[_T]:
        """A copy of this type whose values are bound to their rows as well as their column.

        :func:`~sa_fieldcrypt.encrypted_hybrid` makes it for ``bind_row=True``: only a
        caller that knows each value's row can use such a type (SQL statements cannot).

        Raises:
            ConfigurationError: the type has no context (``context=False``).
        """
        if not self._context.from_column and self._context.name is None:
            raise ConfigurationError(
                f"{type(self).__name__}(context=False) cannot bind values to their rows: a row "
                "is bound within its column's context; drop context=False"
            )
        copied = cast("EncryptedType[_T]", self.copy())
        copied._context = replace(self._context, rows=True)
        copied._build_paths()  # a copy's paths still read the state of the type copied
        return copied

    def _row(self, row_key: Sequence[RowKeyPart] | None) -> bytes | None:
        if row_key is None:
            return None
        try:
            return cipher.row_key_bytes(row_key)
        except ValueTypeError as exc:
            raise ValueTypeError(f"{self.column_label}: {exc}") from None

    def _row_error(self, row: bytes | None) -> FieldCryptError:
        if row is None:
            return ConfigurationError(
                f"{self.column_label}: values are bound to their rows (bind_row=True), so they "
                "are read and written only through the encrypted_hybrid of loaded objects "
                "(select(Customer), then customer.email), not by SQL statements "
                "(select(Customer.email), update().values()), which do not know each row's "
                "primary key"
            )
        return ConfigurationError(
            f"{self.column_label}: a row key was given, but the column does not bind values "
            "to rows; give it to columns of encrypted_hybrid(..., bind_row=True) only"
        )

    def _after_failure(
        self,
        keys: KeyCache,
        token: str,
        context: _ContextState,
        exc: DecryptionError,
        row: bytes | None = None,
    ) -> bytes:
        """Retry a token under an unknown key id once with refreshed keys, else raise."""
        if isinstance(exc, UnknownKeyError):
            # A key added elsewhere (another instance, the secret store) may be missing here
            # only because the cache is older than the token; one refresh settles it.
            refreshed = keys.refresh_for_key(exc.key_id or "")
            if refreshed is not None:
                try:
                    if row is None:
                        return cipher.decrypt_value(
                            refreshed, token, context.name, _unbound_ok(context)
                        )
                    return cipher.decrypt_row_value(
                        refreshed, token, context.name or "", row, _unbound_ok(context)
                    )
                except DecryptionError as again:
                    exc = again
        raise exc.with_column(self._column_label) from None

    def _read_plaintext(self, stored: str) -> bytes:
        if metrics.count_plaintext_read(self.column_label):
            message = (
                f"{self.column_label}: read a value stored as plaintext (allow_plaintext=True); "
                "encrypt such values with `fieldcrypt rotate --encrypt-plaintext`, then remove "
                "allow_plaintext. Reads are counted in sa_fieldcrypt.metrics."
            )
            logger.warning("sa_fieldcrypt: %s", message)
            warnings.warn(message, PlaintextValueWarning, stacklevel=3)
        return stored.encode("utf-8", "surrogatepass")

    def active_keyring(self) -> Keyring:
        """Return the keyring this column encrypts and decrypts with now."""
        return (self._keys or default_key_cache()).get()

    def _unattached_error(self) -> ConfigurationError:
        return ConfigurationError(
            f"{type(self).__name__}() binds its values to the schema.table.column it is "
            "attached to (context=True, the default), and it is not attached to a table column; "
            "put it on a Column of a Table, give the context as a string (context='name'), or "
            "write unbound tokens with context=False"
        )

    def _type_error(self, value: object) -> ValueTypeError:
        return ValueTypeError(
            f"{self.column_label}: {type(self).__name__} stores {self.python_type_name} "
            f"values, got {type(value).__name__}"
        )

    def _conversion_error(self, value: object, exc: Exception) -> ValueTypeError:
        return ValueTypeError(
            f"{self.column_label}: {type(self).__name__} could not turn a "
            f"{type(value).__name__} value into bytes to encrypt: converting it raised "
            f"{type(exc).__name__} (its message is not shown: it may quote the value); give it "
            f"a {self.python_type_name} value that converts"
        )

    def _set_parent(self, parent: SchemaEventTarget, outer: bool = False, **kw: Any) -> None:
        super()._set_parent(parent, outer=outer, **kw)
        # Being a SchemaEventTarget makes SQLAlchemy call this when a Column takes the type
        # (and copy the type when it copies the column), so errors can name the column.
        if (
            self._context.from_column
            and self._attached_to is not None
            and self._attached_to is not parent
        ):
            # One instance on two columns would give both the context of the last one.
            raise ConfigurationError(
                f"{type(self).__name__}(context=True) is already attached to "
                f"{self._column_label or 'another column'}; give each column its own instance"
            )
        # A copy starts with the paths of the type it was copied from, which read that type's
        # state; the copy SQLAlchemy makes per dialect keeps them, a column's copy gets its own.
        self._build_paths()
        table = getattr(parent, "table", None)
        name = getattr(parent, "name", None)
        if table is not None and name is not None:
            self._attached_to = parent
            self._attach(f"{table.fullname}.{name}")
            return
        if hasattr(parent, "name") and hasattr(parent, "dispatch"):
            # Not on a table yet: wait for the column to be attached to one.
            from sqlalchemy import event

            self._attached_to = parent

            def attached(column: Any, table: Any) -> None:
                self._attach(f"{table.fullname}.{column.name}")

            event.listen(parent, "after_parent_attach", attached)

    def _attach(self, label: str) -> None:
        self._column_label = label
        if self._context.from_column:
            self._context = replace(self._context, name=label)

    def copy(self, **kw: Any) -> Any:
        """Return a copy for another column (SQLAlchemy copies types with their columns)."""
        copied = super().copy(**kw)
        copied._attached_to = None
        return copied

    def __getstate__(self) -> dict[str, Any]:
        # The paths are closures, which do not pickle (a pickled MetaData holds its types);
        # they are built again from the rest.
        state = self.__dict__.copy()
        for name in _PATHS:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_paths()

    def _type_arguments(self) -> list[str]:
        """The ``name=value`` arguments of a subclass's own that ``repr()`` shows first."""
        return []

    def __repr__(self) -> str:
        # The arguments that rebuild the type (Alembic renders migrations with it).
        state = self._context
        args = list(self._type_arguments())
        if not state.from_column:
            args.append(f"context={state.name or False!r}")
        if state.allow_unbound is not None:
            args.append(f"allow_unbound={state.allow_unbound!r}")
        if self.padding is not False:
            args.append(f"padding={self.padding!r}")
        return f"{type(self).__name__}({', '.join(args)})"


# The attributes _build_paths() sets.
_PATHS = ("_encrypt_value", "_decrypt_value", "_encrypt_data", "_decrypt_data")


def _unbound_ok(context: _ContextState) -> bool:
    """Whether a column of this context state reads unbound tokens now."""
    if context.name is None and not context.from_column:
        return True  # context=False: unbound tokens are the column's own
    allowed = context.allow_unbound
    return unbound_allowed() if allowed is None else allowed


def _no_rewrite(token: str) -> str | None:
    """The token rewriter of a column whose every value goes the long way."""
    return None


def _as_is(data: bytes) -> bytes:
    """The conversion of the rotation paths: the bytes are the value."""
    return data


def _check_context(context: object) -> None:
    if not isinstance(context, str) or not context:
        raise ConfigurationError(
            "context must be True (the column's schema.table.column name, the default), a "
            "non-empty str, or False (unbound tokens)"
        )
    try:
        context.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError("context must be encodable as UTF-8") from None
    if "\x00" in context:
        raise ConfigurationError("context cannot hold a zero character (row binding uses it)")


def _is_identity_test(op: OperatorType, expr: Any, other: tuple[Any, ...]) -> bool:
    """Whether ``op`` asks if the column *is* another column object, not a value comparison.

    SQLAlchemy looks columns up in mappings keyed by column (the ORM does so to apply an
    UPDATE's values to loaded objects), and such a lookup compares a column with itself by
    ``==``. Were it sent as SQL, a column equals itself whatever it holds: nothing is compared.
    """
    if op is not operators.eq or len(other) != 1:
        return False
    column = getattr(other[0], "_deannotate", None)
    return column is not None and column() is expr._deannotate()


def _comparison_error(expr: Any, op: OperatorType) -> UnsupportedComparisonError:
    label = getattr(getattr(expr, "type", None), "column_label", None) or "encrypted column"
    op_name = getattr(op, "__name__", str(op))
    return UnsupportedComparisonError(
        f"{label}: cannot apply {op_name!s} in SQL: encryption is randomized, so equal values "
        "have different ciphertexts and the database cannot compare them. Query by equality "
        "through a blind index (sa_fieldcrypt.blind_index) instead; is_(None) and "
        "is_not(None) still work."
    )


def _refuse_ciphertext_order(clauses: Any, clause: str, selected: Any = None) -> None:
    """Raise if any of ``clauses`` (an ``ORDER BY``, ``GROUP BY`` or ``PARTITION BY``) is encrypted.

    An element counts when it, or what it wraps (``desc()``, a label, parentheses, a scalar
    subquery, a name of one of the ``selected`` columns), has an :class:`EncryptedType`: the
    database would sort or group ciphertext.

    Raises:
        UnsupportedComparisonError: naming the column and what to do instead.
    """
    for element in clauses:
        inner = element
        while inner is not None:
            if isinstance(inner, str):  # order_by("name"): a selected column, by its label
                inner = None if selected is None else selected.get(inner)
                continue
            encrypted = getattr(inner, "type", None)
            if isinstance(encrypted, EncryptedType):
                raise _ordering_error(encrypted, clause)
            inner = getattr(inner, "element", None)


# What the database would do with ciphertext in each clause, and what works instead.
_ORDERING_ADVICE = {
    "ORDER BY": (
        "sort ciphertexts",
        "sort in Python after loading the rows, or order by a column that is not encrypted",
    ),
    "GROUP BY": (
        "put every row in a group of its own",
        "group by the column's blind index (equal values have equal index values), or in Python",
    ),
    "PARTITION BY": (
        "put every row in a partition of its own",
        "partition by the column's blind index (equal values have equal index values)",
    ),
}


def _ordering_error(column: EncryptedType, clause: str) -> UnsupportedComparisonError:
    outcome, instead = _ORDERING_ADVICE[clause]
    return UnsupportedComparisonError(
        f"{column.column_label}: cannot {clause} an encrypted value: encryption is randomized, "
        f"so the database would {outcome}, not compare values; {instead}"
    )


def _check_select(element: Any) -> None:  # a Select or CompoundSelect
    _refuse_ciphertext_order(element._order_by_clauses, "ORDER BY", element.selected_columns)
    _refuse_ciphertext_order(element._group_by_clauses, "GROUP BY", element.selected_columns)


def _check_over(element: Over[Any]) -> None:
    for clause, name in ((element.partition_by, "PARTITION BY"), (element.order_by, "ORDER BY")):
        if clause is not None:
            _refuse_ciphertext_order(clause.clauses, name)


def _check_before_compiling(construct: type[Any], check: Callable[[Any], None]) -> None:
    """Run ``check`` on every ``construct`` before it compiles as it did before."""
    # The compilation in place now: SQLAlchemy's own, or one a @compiles already registered
    # (calling the class's dispatch then would come back here).
    dispatcher = construct.__dict__.get("_compiler_dispatcher")
    previous = (
        dispatcher.specs["default"] if dispatcher is not None else construct._compiler_dispatch
    )

    @compiles(construct)
    def compile_checked(element: Any, compiler: Any, **kw: Any) -> Any:
        check(element)
        return previous(element, compiler, **kw)


# The database only ever sees ciphertext, so ordering or grouping by an encrypted value gives
# random order or one group per row, silently. ORDER BY and GROUP BY elements reach no operator
# of the type, so the check runs where every statement passes once: compilation (SQLAlchemy
# caches compiled statements, so it costs nothing per execution).
_check_before_compiling(Select, _check_select)
_check_before_compiling(CompoundSelect, _check_select)
_check_before_compiling(Over, _check_over)


class EncryptedText(EncryptedType[str]):
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

    @property
    def python_type(self) -> type[Any]:
        """The Python type of the column's values."""
        return str


class EncryptedBytes(EncryptedType[bytes]):
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
        """The Python type of the column's values."""
        return bytes


class EncryptedJSON(EncryptedType[Any]):
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
        except (ValueError, RecursionError):
            raise DecryptionError(
                "the value decrypted but is not JSON (or is nested too deeply to read)",
                column=self._column_label,
            ) from None


# -- typed columns ---------------------------------------------------------------------------


class _TypedColumn(EncryptedType[_T]):
    """A column of one exact Python type, stored as one canonical plaintext encoding.

    Subclasses give the type and its ``_encode``/``_decode`` pair; docs/token-format.md
    describes every encoding byte for byte. A decrypted plaintext is accepted only when
    encoding the value it decodes to gives the same bytes back, so each value has exactly one
    plaintext and a malformed one is a :class:`DecryptionError`, never a wrong value.
    """

    cache_ok = True
    #: The one Python type the column stores: exactly, not a subclass, which could carry
    #: state the encoding drops (a ``datetime`` is a ``date``) or would come back as the base.
    _value_type: ClassVar[type]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.allow_plaintext:
            # Stored plaintext is text; these columns' plaintexts are encodings of their own
            # (two bytes of "42" would read as the integer 13362).
            raise ConfigurationError(
                f"{type(self).__name__} cannot read plaintext values (allow_plaintext=True): "
                "its values are stored in an encoding of their own, not as text; copy a "
                "plaintext column into a new encrypted one instead (docs/rotation.md)"
            )

    def _encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def _decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def _to_bytes(self, value: Any) -> bytes:
        if type(value) is not self._value_type:
            raise self._type_error(value)
        return self._encode(value)

    def _from_bytes(self, data: bytes) -> _T:
        try:
            value = self._decode(data)
            canonical = self._encode(value) == data
        except (ValueError, ArithmeticError, struct.error):
            canonical = False
        if not canonical:
            raise DecryptionError(
                f"the value decrypted, but its plaintext is not one {type(self).__name__} "
                "writes (malformed, or written by another column type)",
                column=self._column_label,
            )
        return cast("_T", value)

    def compare_values(self, x: Any, y: Any) -> bool:
        """Whether two values are stored alike: the same type and the same plaintext bytes.

        The ORM writes a new value only when this says it differs, so ``Decimal("1.00")``
        replacing ``Decimal("1.0")``, ``-0.0`` replacing ``0.0`` and a datetime moved to
        another offset are written, though ``==`` calls them equal.
        """
        if x is None or y is None:
            return x is y
        try:
            return self._to_bytes(x) == self._to_bytes(y)
        except FieldCryptError:
            return False

    @property
    def python_type(self) -> type[Any]:
        """The Python type of the column's values."""
        return self._value_type


class EncryptedDate(_TypedColumn[date]):
    """An encrypted ``datetime.date`` column (years 1 to 9999); a ``datetime`` is refused.

    Stored as ISO 8601 ``YYYY-MM-DD`` in ASCII: ten bytes for every date.
    """

    cache_ok = True
    python_type_name = "date"
    _value_type = date

    def _encode(self, value: date) -> bytes:
        return value.isoformat().encode("ascii")

    def _decode(self, data: bytes) -> date:
        return date.fromisoformat(data.decode("ascii"))


# What EncryptedDateTime writes: the date and time, then an offset if aware (ASCII digits only).
_DATETIME = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})"
    rb"(?:([+-])([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{6}))?)?)?"
)


def _parse_datetime(data: bytes) -> datetime:
    """Read what EncryptedDateTime writes, field by field."""
    found = _DATETIME.fullmatch(data)
    if found is None:
        raise ValueError("not an ISO 8601 datetime")
    *fields, sign, hours, minutes, seconds, micros = found.groups()
    zone = None
    if sign is not None:
        offset = timedelta(
            hours=int(hours),
            minutes=int(minutes),
            seconds=int(seconds or 0),
            microseconds=int(micros or 0),
        )
        zone = dt_timezone(-offset if sign == b"-" else offset)
    year, month, day, hour, minute, second, microsecond = map(int, fields)
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone)


class EncryptedDateTime(_TypedColumn[datetime]):
    """An encrypted ``datetime.datetime`` column, timezone-aware by default.

    An aware value comes back as the same instant with the same UTC offset, its ``tzinfo`` a
    fixed-offset ``datetime.timezone``: a ``zoneinfo`` zone comes back as its offset at that
    instant (``ZoneInfo("Europe/Paris")`` in July as ``timezone(timedelta(hours=2))``), and a
    zone's name is not kept. Naive values are refused, unless ``timezone=False``, which
    stores naive values and refuses aware ones. ``fold`` is not kept: it only chooses an
    offset, and the offset is what is stored.

    Stored as ISO 8601 with microseconds, ``YYYY-MM-DDTHH:MM:SS.ffffff``, then for an aware
    value its offset, ``+HH:MM`` (``+HH:MM:SS`` or ``+HH:MM:SS.ffffff`` when it has seconds
    or microseconds), in ASCII.

    Args:
        timezone: True (the default): aware values only; False: naive values only.
        *args: the arguments of :class:`EncryptedType` (``keyring``, ``context``...).
        **kwargs: the arguments of :class:`EncryptedType`, by name.
    """

    cache_ok = True
    python_type_name = "datetime"
    _value_type = datetime

    def __init__(self, *args: Any, timezone: bool = True, **kwargs: Any):
        if not isinstance(timezone, bool):
            raise ConfigurationError("EncryptedDateTime: timezone must be True or False")
        self.timezone = timezone
        super().__init__(*args, **kwargs)

    def _to_bytes(self, value: Any) -> bytes:
        if type(value) is datetime and (value.utcoffset() is not None) is not self.timezone:
            raise self._awareness_error()
        return super()._to_bytes(value)

    def _encode(self, value: datetime) -> bytes:
        return value.isoformat(timespec="microseconds").encode("ascii")

    def _decode(self, data: bytes) -> datetime:
        try:
            value = datetime.fromisoformat(data.decode("ascii"))
        except ValueError:
            value = None
        if value is None or self._encode(value) != data:
            # Python 3.11's fromisoformat() drops the sign of an offset such as
            # "-00:00:00.000001"; the pattern of the encoding reads every one.
            value = _parse_datetime(data)
        if (value.utcoffset() is not None) is not self.timezone:
            kind = "timezone-aware" if value.utcoffset() is not None else "naive"
            raise DecryptionError(
                f"the value decrypted to a {kind} datetime, and the column stores "
                f"{'aware' if self.timezone else 'naive'} ones (timezone={self.timezone})",
                column=self._column_label,
            )
        return value

    def _awareness_error(self) -> ValueTypeError:
        if self.timezone:
            wanted, got = "timezone-aware", "naive"
            advice = "give it a tzinfo, or declare EncryptedDateTime(timezone=False)"
        else:
            wanted, got = "naive", "timezone-aware"
            advice = "drop its tzinfo, or declare EncryptedDateTime() for aware values"
        return ValueTypeError(
            f"{self.column_label}: EncryptedDateTime(timezone={self.timezone}) stores "
            f"{wanted} datetime values, got a {got} datetime; {advice}"
        )

    @property
    def _static_cache_key(self) -> Any:
        # Two columns that differ in timezone= must not share compiled statements.
        key = super()._static_cache_key
        return (*key, self.timezone) if isinstance(key, tuple) else key

    def _type_arguments(self) -> list[str]:
        return [] if self.timezone else ["timezone=False"]


class EncryptedTime(_TypedColumn[time]):
    """An encrypted ``datetime.time`` column, of naive times of day; a ``datetime`` is refused.

    A time with a ``tzinfo`` is refused too: without a date, a UTC offset is ambiguous
    across daylight saving time; store a ``datetime`` in :class:`EncryptedDateTime` instead.
    ``fold`` is not kept: a time comes back with ``fold=0``, and ``==`` ignores it.

    Stored as ISO 8601 with microseconds, ``HH:MM:SS.ffffff``, in ASCII: fifteen bytes for
    every time.
    """

    cache_ok = True
    python_type_name = "time"
    _value_type = time

    def _to_bytes(self, value: Any) -> bytes:
        if type(value) is time and value.tzinfo is not None:
            kind = "timezone-aware time" if value.utcoffset() is not None else "time with a tzinfo"
            raise ValueTypeError(
                f"{self.column_label}: EncryptedTime stores naive time values, got a {kind}; "
                "a UTC offset without a date is ambiguous across daylight saving time: drop "
                "its tzinfo, or store a datetime in EncryptedDateTime"
            )
        return super()._to_bytes(value)

    def _encode(self, value: time) -> bytes:
        return value.isoformat(timespec="microseconds").encode("ascii")

    def _decode(self, data: bytes) -> time:
        value = time.fromisoformat(data.decode("ascii"))
        if value.tzinfo is not None:
            raise ValueError("EncryptedTime writes naive times only")
        return value


class EncryptedInteger(_TypedColumn[int]):
    """An encrypted ``int`` column, of any size; ``bool`` is refused.

    Stored as minimal big-endian two's complement (what Java's ``BigInteger.toByteArray()``
    gives; ``0`` is one zero byte), so no 64-bit limit applies, nor Python's limit on the
    digits ``str()`` converts.
    """

    cache_ok = True
    python_type_name = "int"
    _value_type = int

    def _encode(self, value: int) -> bytes:
        # One sign bit more than the magnitude needs, in whole bytes.
        length = (value + (value < 0)).bit_length() // 8 + 1
        return value.to_bytes(length, "big", signed=True)

    def _decode(self, data: bytes) -> int:
        return int.from_bytes(data, "big", signed=True)


class EncryptedFloat(_TypedColumn[float]):
    """An encrypted ``float`` column: every float comes back bit for bit; ``int`` is refused.

    ``-0.0``, infinities and NaNs round-trip, a NaN with its sign and payload bits. An
    ``int`` would come back as a float, so it is refused: give ``float(n)``.
    Stored as IEEE 754 binary64, big-endian: eight bytes for every value.
    """

    cache_ok = True
    python_type_name = "float"
    _value_type = float

    def _encode(self, value: float) -> bytes:
        return struct.pack(">d", value)

    def _decode(self, data: bytes) -> float:
        return cast("float", struct.unpack(">d", data)[0])


class EncryptedDecimal(_TypedColumn[Decimal]):
    """An encrypted ``decimal.Decimal`` column, exact: sign, digits and exponent are kept.

    ``Decimal("1.50")`` comes back as ``Decimal("1.50")``, not ``Decimal("1.5")``; ``-0``,
    infinities, ``NaN`` and ``sNaN`` (with sign and payload, ``Decimal("-NaN7")``) come back
    as stored. No context applies, so no digit is rounded away. ``float`` (which would
    silently lose precision) and ``int`` are refused: give ``Decimal(...)``.
    Stored as the canonical scientific string, ``str(value)``, in ASCII.
    """

    cache_ok = True
    python_type_name = "Decimal"
    _value_type = Decimal

    def _encode(self, value: Decimal) -> bytes:
        # str() writes the exponent mark as the current context says (capitals=0: "e").
        return str(value).replace("e", "E").encode("ascii")

    def _decode(self, data: bytes) -> Decimal:
        return Decimal(data.decode("ascii"))


class EncryptedBoolean(_TypedColumn[bool]):
    """An encrypted ``bool`` column; ``0`` and ``1`` are refused.

    Stored as one byte, ``0x00`` or ``0x01``, so both values have tokens of one length. Never
    give it a blind index: two index values would show which rows share each value.
    """

    cache_ok = True
    python_type_name = "bool"
    _value_type = bool

    def _encode(self, value: bool) -> bytes:
        return b"\x01" if value else b"\x00"

    def _decode(self, data: bytes) -> bool:
        return data == b"\x01"


class EncryptedUUID(_TypedColumn[uuid.UUID]):
    """An encrypted ``uuid.UUID`` column.

    Stored as the UUID's 16 bytes in RFC 4122 order (``UUID.bytes``).
    """

    cache_ok = True
    python_type_name = "UUID"
    _value_type = uuid.UUID

    def _encode(self, value: uuid.UUID) -> bytes:
        return value.bytes

    def _decode(self, data: bytes) -> uuid.UUID:
        return uuid.UUID(bytes=data)


class PlaintextValueWarning(UserWarning):
    """A column with ``allow_plaintext=True`` read a value that is not encrypted."""


def column_codec(column: Column[Any]) -> EncryptedType | None:
    """The :class:`EncryptedType` that opens a column's tokens, or None if it holds none.

    That is the column's own type, or the type a hybrid helper recorded in
    ``column.info[COLUMN_INFO_KEY]`` on a plain text column. A recorded type that has not met
    its column yet (one put in ``info`` by hand) is attached to it here, so that
    ``context=True``, the default, binds it to the column's ``schema.table.column``.

    Raises:
        ConfigurationError: ``column.info[COLUMN_INFO_KEY]`` holds something else.
    """
    if isinstance(column.type, EncryptedType):
        return column.type
    codec = column.info.get(COLUMN_INFO_KEY)
    if codec is None:
        return None
    if not isinstance(codec, EncryptedType):
        raise ConfigurationError(
            f"column {column.name!r}: info[{COLUMN_INFO_KEY!r}] must be an EncryptedType instance "
            f"such as EncryptedText(), not {type(codec).__name__}"
        )
    if codec.context is True:
        codec._set_parent(column)
    return codec


def encrypted_columns(model_or_table: Any) -> list[Column[Any]]:
    """Every column of a mapped class or ``Table`` that holds sa-fieldcrypt tokens.

    That is, columns typed with an :class:`EncryptedType`, and plain text columns that a
    hybrid helper marked with :data:`COLUMN_INFO_KEY` (see :func:`column_codec`).
    """
    table = getattr(model_or_table, "__table__", model_or_table)
    return [column for column in table.columns if column_codec(column) is not None]

"""Earlier formats a column may hold: read, counted and rotated away, never written.

A column names the formats its stored values may still be in, each with its own key
material, and reads them beside its own ``fc1`` tokens::

    from sa_fieldcrypt import EncryptedDate, EncryptedText
    from sa_fieldcrypt.legacy import BareFernet, SqlalchemyUtils

    email = mapped_column(EncryptedText(legacy=[BareFernet()]))
    born = mapped_column(
        EncryptedDate(legacy=[SqlalchemyUtils("AesEngine", key=old_key, padding="pkcs5")])
    )

``fieldcrypt status`` counts each column's values per legacy format, and ``fieldcrypt
rotate`` rewrites them as the column's own tokens, under its primary key, context and
padding. Once ``status`` shows none left, remove the declaration.

Two families are known:

- :class:`BareFernet`: bare Fernet tokens, as hand-written ``encrypt_field()`` helpers store
  them, opened by the Fernet keys of the column's keyring (or a keyring of their own).
- :class:`SqlalchemyUtils`: what sqlalchemy-utils' ``StringEncryptedType`` stores, byte for
  byte, for each of its engines and paddings, read as the application read it through
  sqlalchemy-utils.

A stored value is tried against the declared formats whose shape it has (a format's shape is
checked from the text alone), in the order declared. A value in the shape of a declared
format that none of them opens is a :class:`~sa_fieldcrypt.DecryptionError`, even in a column
that reads plaintext: ciphertext is never handed to the application as data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sa_fieldcrypt.config import as_key_cache
from sa_fieldcrypt.errors import ConfigurationError, DecryptionError
from sa_fieldcrypt.keys import Key, Keyring, canonical_b64decode, is_fernet_token
from sa_fieldcrypt.providers.base import KeyCache, KeyProvider

__all__ = [
    "BareFernet",
    "LegacyColumn",
    "LegacyFormat",
    "SqlalchemyUtils",
    "check_formats",
    "unopened",
]

#: Why a value in a legacy format's shape does not open: one message, whatever the cause.
_UNOPENED = (
    "the value has the shape of a legacy format the column declares ({formats}), and none of "
    "them opens it: it was tampered with, or written under other key material; restore the "
    "value, or declare the key it was written with"
)


class LegacyColumn(Protocol):
    """What a legacy format needs of the column reading it (an ``EncryptedType``)."""

    @property
    def python_type(self) -> type[Any]:
        """The Python type of the column's values."""
        ...

    def to_plaintext(self, value: Any) -> bytes:
        """The bytes the column encrypts for ``value``."""
        ...

    def active_keyring(self) -> Keyring:
        """The keyring the column encrypts and decrypts with now."""
        ...


class LegacyFormat:
    """One earlier format of stored values, with the key material that opens them.

    Subclasses say which stored texts have the format's shape and how one opens. Instances
    compare and hash by identity: a column's statement-cache key holds them, and they hold
    keys.

    Attributes:
        name: how ``status`` and :mod:`sa_fieldcrypt.metrics` name the format.
        authenticated: whether a value that opens is known to be one the format wrote
            (False for sqlalchemy-utils' ``AesEngine``: under a wrong key, about one value
            in millions still opens, to garbage). Authenticated formats are tried first, and
            ``fieldcrypt rotate`` writes no value of an unauthenticated format while any of
            the column's values in it fails to open.
    """

    name: str = "legacy"
    authenticated: bool = True

    def check_column(self, column: LegacyColumn) -> None:
        """Raise :class:`~sa_fieldcrypt.ConfigurationError` if ``column``'s type cannot be read."""

    def shaped(self, stored: str) -> bool:
        """Whether ``stored`` has this format's shape, from its text alone (no key is used)."""
        raise NotImplementedError

    def read(self, stored: str, column: LegacyColumn) -> bytes | None:
        """``stored``'s value as ``column`` encrypts it (its plaintext encoding).

        None when the value does not open with the format's key material.

        Raises:
            DecryptionError: the value opens, and what it holds is not a value of the
                column's type. The message quotes neither.
        """
        raise NotImplementedError

    def keyring_key(self, stored: str, column: LegacyColumn) -> Key | None:
        """The key of the column's keyring that opens ``stored``, if the format uses them.

        None when the value does not open, or the format's key material is its own: only
        a value opened by a keyring key keeps that key from being retired.
        """
        return None

    def uses_column_keys(self) -> bool:
        """Whether the format opens values with the column's keyring (and so needs its keys)."""
        return False


def check_formats(formats: Iterable[object], where: str) -> tuple[LegacyFormat, ...]:
    """``formats`` as a tuple, each checked to be a :class:`LegacyFormat`.

    Raises:
        ConfigurationError: an entry is not a legacy format, or a string was given.
    """
    if isinstance(formats, (str, bytes, LegacyFormat)):
        raise ConfigurationError(
            f"{where}: legacy= takes a list of legacy formats, such as legacy=[BareFernet()]"
        )
    checked: list[LegacyFormat] = []
    for position, item in enumerate(formats, start=1):
        if not isinstance(item, LegacyFormat):
            raise ConfigurationError(
                f"{where}: legacy entry {position} is a {type(item).__name__}, not a legacy "
                "format; give BareFernet() or SqlalchemyUtils(...) from sa_fieldcrypt.legacy"
            )
        checked.append(item)
    return tuple(checked)


def unopened(formats: Iterable[LegacyFormat]) -> DecryptionError:
    """The one error for a value in the shape of ``formats`` that none of them opens."""
    return DecryptionError(_UNOPENED.format(formats=", ".join(f.name for f in formats)))


# -- bare Fernet tokens ---------------------------------------------------------------------


def _open_fernet(keys: Iterable[Key], token: str) -> tuple[Key, bytes] | None:
    # A bare token carries no key id, so every Fernet key is tried; each costs one HMAC over
    # the decoded token, and only the key that signed it decrypts. This is the one path that
    # is O(number of keys), and `fieldcrypt rotate` removes it from the data.
    decoded = base64.urlsafe_b64decode(token)  # shaped: canonical, so strict and lenient agree
    for key in keys:
        if key.kind != "fernet" or not key.codec.signed(decoded):
            continue
        try:
            return key, key.decrypt(token)
        except (InvalidToken, ValueError, TypeError):
            return None  # signed by this key, and still not a valid token
    return None


def _primary_first(keyring: Keyring) -> tuple[Key, ...]:
    primary = keyring.primary
    return (primary, *(k for k in keyring if k is not primary))


class BareFernet(LegacyFormat):
    """Bare Fernet tokens (``gAAAAA...``, no header), as ``Fernet(key).encrypt()`` stores them.

    Their plaintext is taken as the column's own encoding: UTF-8 text for
    ``EncryptedText``, the bytes for ``EncryptedBytes``, JSON text for ``EncryptedJSON``.
    Decrypts count under the id of the key that opened them.

    Args:
        keyring: the Fernet keys that may open them: a :class:`~sa_fieldcrypt.Keyring` or
            key provider; by default the column's own keyring, every Fernet key of it
            tried, the primary first (so listing the old helper's keys in
            ``FIELDCRYPT_KEYS`` is enough).
    """

    name = "fernet"

    def __init__(self, keyring: Keyring | KeyProvider | None = None):
        self.keyring = keyring
        self._keys: KeyCache | None = None if keyring is None else as_key_cache(keyring)

    def shaped(self, stored: str) -> bool:
        """Whether ``stored`` is shaped as a Fernet token (``keys.is_fernet_token``)."""
        return is_fernet_token(stored)

    def read(self, stored: str, column: LegacyColumn) -> bytes | None:
        """The token's plaintext, opened by the first key that signed it; None if none did."""
        opened = self._open(stored, column)
        if opened is None:
            return None
        key, data = opened
        next(key.decrypt_counter)
        return data

    def keyring_key(self, stored: str, column: LegacyColumn) -> Key | None:
        """The column's key that opens ``stored``; None with a keyring of the format's own."""
        if self._keys is not None:
            return None
        opened = self._open(stored, column)
        return None if opened is None else opened[0]

    def uses_column_keys(self) -> bool:
        """True unless the format was given a keyring of its own."""
        return self._keys is None

    def _open(self, stored: str, column: LegacyColumn) -> tuple[Key, bytes] | None:
        if not is_fernet_token(stored):
            return None
        keyring = column.active_keyring() if self._keys is None else self._keys.get()
        return _open_fernet(_primary_first(keyring), stored)

    def __repr__(self) -> str:
        return "BareFernet()" if self.keyring is None else "BareFernet(keyring=<keys>)"


# -- sqlalchemy-utils -----------------------------------------------------------------------

_ENGINES = ("AesEngine", "AesGcmEngine", "FernetEngine")
_PADDINGS = ("naive", "pkcs5", "oneandzeroes", "zeroes")
_BLOCK = 16
_GCM_IV = 12
_GCM_TAG = 16
# How sqlalchemy-utils writes a Decimal or UUID (repr(), which it cannot read back itself).
_REPR = re.compile(r"(Decimal|UUID)\('([^']*)'\)\Z")

#: The key as sqlalchemy-utils takes it: text, bytes, or a callable returning either.
SqlalchemyUtilsKey = str | bytes | Callable[[], str | bytes]


def _standard_b64(text: str) -> bytes | None:
    """The bytes of canonical standard base64 ``text`` (as ``base64.b64encode`` writes it)."""
    try:
        return canonical_b64decode(text, urlsafe=False)
    except ValueError:
        return None


def _unpad(padding: str, data: bytes) -> bytes:
    """sqlalchemy-utils' ``unpad()`` of each mechanism, of padding its ``pad()`` could write.

    What ``pad()`` never writes is refused (``ValueError``), though sqlalchemy-utils' own
    ``unpad()`` takes it: AES-CBC is not authenticated, so this check is most of what tells
    a value under a wrong key. What is kept is exactly what sqlalchemy-utils keeps, flaws
    included: ``naive`` strips every trailing ``*`` of the value too, ``oneandzeroes`` every
    trailing NUL and 0x80 byte.
    """
    count = data[-1]  # data is whole blocks, at least one
    if padding == "pkcs5":
        if not 0 < count <= _BLOCK or data[-count:] != bytes((count,)) * count:
            raise ValueError("bad padding")
        return data[:-count]
    if padding == "zeroes":
        if not 0 < count <= _BLOCK or data[-count:-1].strip(b"\x00"):
            raise ValueError("bad padding")
        return data[:-count]
    if padding == "oneandzeroes":
        zeros = len(data) - len(data.rstrip(b"\x00"))
        if zeros >= _BLOCK or data[-zeros - 1] != 0x80:
            raise ValueError("bad padding")
        return data.rstrip(b"\x00").rstrip(b"\x80")
    if count != ord("*"):  # naive: one to sixteen '*'
        raise ValueError("bad padding")
    return data.rstrip(b"*")


class SqlalchemyUtils(LegacyFormat):
    """Values stored by sqlalchemy-utils' ``StringEncryptedType``, read as it read them.

    Byte-compatible with sqlalchemy-utils 0.41 and later: its key is the SHA-256 of the key
    text (UTF-8) or bytes, or of what a callable returns, as there. ``AesEngine`` is
    AES-256-CBC with the IV taken from the key (deterministic, unauthenticated) and one of
    its four paddings; ``AesGcmEngine`` is AES-256-GCM, ``base64(iv || tag || ciphertext)``;
    ``FernetEngine`` is a Fernet token under ``urlsafe_b64encode(sha256(key))``.

    The decrypted text is read into the column's type as sqlalchemy-utils' underlying type
    read it: text as is, ``int()`` of an integer, ``true``/``false`` for a boolean, ISO 8601
    for dates, datetimes and times (a time's offset is dropped, as there), ``float()``, JSON
    text for ``EncryptedJSON``. Decimals and UUIDs, which sqlalchemy-utils stores as their
    ``repr()`` and cannot read back, are read from that ``repr()`` too.

    Args:
        engine: the sqlalchemy-utils engine class, or its name: ``"AesEngine"`` (its
            default), ``"AesGcmEngine"`` or ``"FernetEngine"``.
        key: the key the column was declared with: text, bytes, or a callable returning
            either (called for every value, as there).
        padding: ``AesEngine`` only: ``"naive"`` (its default), ``"pkcs5"``,
            ``"oneandzeroes"`` or ``"zeroes"``.

    Raises:
        ConfigurationError: an unknown engine or padding, a padding for another engine, or
            a key that is not text, bytes or a callable.
    """

    def __init__(
        self,
        engine: str | type = "AesEngine",
        *,
        key: SqlalchemyUtilsKey,
        padding: str | None = None,
    ):
        engine_name = engine if isinstance(engine, str) else getattr(engine, "__name__", "")
        if engine_name not in _ENGINES:
            # Not quoted: sqlalchemy-utils takes (type, key, engine), so a call ported in the
            # wrong order puts the key here.
            raise ConfigurationError(
                f"SqlalchemyUtils: engine must be one of {', '.join(_ENGINES)} (the class or "
                "its name); the key goes in key="
            )
        if padding is not None and engine_name != "AesEngine":
            raise ConfigurationError(
                f"SqlalchemyUtils: padding= is for AesEngine only; {engine_name} has none"
            )
        if engine_name == "AesEngine":
            padding = "naive" if padding is None else padding
            if padding not in _PADDINGS:
                raise ConfigurationError(
                    f"SqlalchemyUtils: padding must be one of {', '.join(_PADDINGS)}, "
                    f"not {padding!r}"
                )
        if not (isinstance(key, (str, bytes)) or callable(key)):
            raise ConfigurationError(
                f"SqlalchemyUtils: key must be text, bytes or a callable returning either, "
                f"not {type(key).__name__}"
            )
        self.engine = engine_name
        self.padding = padding
        self.authenticated = engine_name != "AesEngine"
        self._key = key
        self._derived: tuple[bytes, _Opener] | None = None
        self.name = f"sqlalchemy-utils:{engine_name}" + (f":{padding}" if padding else "")

    def shaped(self, stored: str) -> bool:
        """Whether ``stored`` is what the engine writes: its base64 text, of a possible length."""
        if self.engine == "FernetEngine":
            return is_fernet_token(stored)
        raw = _standard_b64(stored)
        if raw is None:
            return False
        if self.engine == "AesEngine":
            return len(raw) >= _BLOCK and len(raw) % _BLOCK == 0
        return len(raw) >= _GCM_IV + _GCM_TAG

    def check_column(self, column: LegacyColumn) -> None:
        """Refuse a column type it stores no readable values of (``EncryptedBytes``)."""
        if column.python_type not in _READABLE:
            raise ConfigurationError(
                f"SqlalchemyUtils: sqlalchemy-utils stores no {column.python_type.__name__} "
                "values it reads back; declare the column type of its underlying type "
                "(EncryptedText for String and Unicode, EncryptedInteger for Integer, ...)"
            )

    def read(self, stored: str, column: LegacyColumn) -> bytes | None:
        """The value sqlalchemy-utils stored, as ``column`` encrypts it; None if it does not open.

        A value that does not decrypt, unpad as sqlalchemy-utils pads, or decode as UTF-8
        does not open.

        Raises:
            ConfigurationError: the key callable failed, or returned neither text nor bytes.
            DecryptionError: the value opens, and is not a value of the column's type.
        """
        opener = self._opener()
        try:
            text: str | None = opener(stored).decode("utf-8")
        except (InvalidToken, ValueError, TypeError):
            text = None
        if text is None:
            return None
        data: bytes | None
        try:
            data = column.to_plaintext(_read_value(text, column.python_type))
        except (ValueError, ArithmeticError, TypeError):
            # TypeError: ValueTypeError too (a naive datetime for a timezone-aware column).
            data = None
        if data is None:
            # Raised outside the handler: the parser's own error, which may quote the value,
            # is not kept as this one's context.
            raise DecryptionError(
                f"the value opens ({self.name}), but what it holds does not read as a value "
                f"of the column's type ({column.python_type.__name__}); declare the column type "
                "that matches the sqlalchemy-utils underlying type (EncryptedDateTime("
                "timezone=False) for naive datetimes)"
            )
        return data

    def _opener(self) -> _Opener:
        if callable(self._key):
            try:
                key = self._key()
            except Exception as exc:
                raise ConfigurationError(
                    f"{self.name}: the key callable raised {type(exc).__name__} (its message "
                    "is not shown); the column cannot open legacy values without its key"
                ) from None
        else:
            key = self._key
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, bytes):
            raise ConfigurationError(
                f"{self.name}: the key callable returned a {type(key).__name__}, not text or bytes"
            )
        digest = hashlib.sha256(key).digest()
        derived = self._derived
        # One cipher per key, as a callable may return another key at any time.
        if derived is not None and hmac.compare_digest(derived[0], digest):
            return derived[1]
        opener = _opener_for(self.engine, self.padding, digest)
        self._derived = (digest, opener)
        return opener

    def __repr__(self) -> str:
        padding = f", padding={self.padding!r}" if self.engine == "AesEngine" else ""
        return f"SqlalchemyUtils({self.engine!r}, key=<redacted>{padding})"


#: A stored value to the bytes sqlalchemy-utils encrypted.
_Opener = Callable[[str], bytes]


def _opener_for(engine: str, padding: str | None, digest: bytes) -> _Opener:
    if engine == "FernetEngine":
        # Not a Key of ours: its decrypts are no key id's (metrics count them by format).
        return Fernet(base64.urlsafe_b64encode(digest)).decrypt
    if engine == "AesGcmEngine":
        aead = AESGCM(digest)

        def open_gcm(stored: str) -> bytes:
            raw = base64.b64decode(stored)
            iv, tag = raw[:_GCM_IV], raw[_GCM_IV : _GCM_IV + _GCM_TAG]
            body = raw[_GCM_IV + _GCM_TAG :]
            try:
                return aead.decrypt(iv, body + tag, None)
            except InvalidTag:
                raise ValueError("does not open") from None

        return open_gcm
    cipher = Cipher(algorithms.AES(digest), modes.CBC(digest[:_BLOCK]))
    mechanism = padding or "naive"

    def open_cbc(stored: str) -> bytes:
        raw = base64.b64decode(stored)
        decryptor = cipher.decryptor()
        return _unpad(mechanism, decryptor.update(raw) + decryptor.finalize())

    return open_cbc


#: The Python types of the columns whose values sqlalchemy-utils stores as text it reads back.
_READABLE = frozenset({str, bool, int, float, date, datetime, time, Decimal, uuid.UUID, object})


def _read_value(text: str, python_type: type[Any]) -> Any:
    """``text`` as sqlalchemy-utils' underlying type of ``python_type`` reads it."""
    if python_type is str:
        return text
    if python_type is bool:
        if text not in ("true", "false"):
            raise ValueError("not a boolean")
        return text == "true"
    if python_type is int:
        return int(text)
    if python_type is float:
        return float(text)
    if python_type is datetime:
        return datetime.fromisoformat(text)
    if python_type is date:
        try:
            return date.fromisoformat(text)
        except ValueError:
            return datetime.fromisoformat(text).date()  # a datetime given to a Date column
    if python_type is time:
        try:
            return time.fromisoformat(text).replace(tzinfo=None)
        except ValueError:
            return datetime.fromisoformat(text).time()  # a datetime given to a Time column
    if python_type in (Decimal, uuid.UUID):
        found = _REPR.match(text)
        inner = found.group(2) if found is not None else text
        if python_type is Decimal:
            try:
                return Decimal(inner)
            except InvalidOperation:
                raise ValueError("not a decimal") from None
        return uuid.UUID(inner)
    if python_type is object:
        return json.loads(text)
    raise TypeError(f"sqlalchemy-utils stores no {python_type.__name__} values it reads back")

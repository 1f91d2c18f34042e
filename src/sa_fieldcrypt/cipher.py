"""The token format: ``fc1:<key_id>:<payload>``; ``fc1:<key_id>:c:<payload>`` when bound.

``fc1`` is the format version. ``key_id`` names the keyring key that encrypted the value, so
decryption picks that key directly, whatever the number of old keys. The payload depends on the
key's kind: a plain Fernet token for a ``fernet`` key (``cryptography.fernet.Fernet(key)``
reads it without this library), or url-safe base64 of ``nonce || ciphertext || tag`` for an
``aes-gcm-siv`` key. ``docs/token-format.md`` gives every byte.

A token *bound to a context* (a column's name, see :class:`~sa_fieldcrypt.EncryptedText`) has
the flag field ``c``: it decrypts only with the same context, so a token copied into another
column fails to decrypt. A token *bound to a row* has the flag ``r``: its context is the
column's and the row's primary key (:func:`row_key_bytes`), so it decrypts in its own row
only. Flags are not secret and not trusted: removing, adding or changing one only makes
decryption fail.

A bare Fernet token (no header), as hand-written ``encrypt_field()`` helpers store them, is
not one of ours: a column that may hold such values declares them
(:class:`sa_fieldcrypt.legacy.BareFernet`), and reads them there.

Every payload must be canonical url-safe base64 (the one spelling of its bytes), and no
stored value longer than :func:`max_token_size` is decrypted: both are checked before any
cryptography.

Typical usage::

    token = encrypt(keyring, b"ada@example.com")   # 'fc1:k2:gAAAAA...'
    decrypt(keyring, token)                         # b'ada@example.com'
    token = encrypt(keyring, b"ada@example.com", context="core.customers.email")
    decrypt(keyring, token, context="core.customers.email")
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from cryptography.fernet import InvalidToken

from sa_fieldcrypt import metrics
from sa_fieldcrypt.errors import (
    ConfigurationError,
    DecryptionError,
    UnknownKeyError,
    ValueTypeError,
)
from sa_fieldcrypt.keys import (
    BOUND_FLAG,
    KEY_ID_PATTERN,
    PADDED_FLAG,
    ROW_FLAG,
    Key,
    KeyCodec,
    Keyring,
    is_fernet_token,
)

__all__ = [
    "NOT_A_TOKEN",
    "TOKEN_PREFIX",
    "RowKeyPart",
    "TokenInfo",
    "decrypt",
    "decrypt_row_value",
    "decrypt_value",
    "encrypt",
    "encrypt_padded_value",
    "encrypt_row_value",
    "encrypt_value",
    "inspect_token",
    "looks_like_token",
    "max_token_size",
    "pad",
    "padding_block",
    "reading_codec",
    "row_key_bytes",
    "set_max_token_size",
    "unpad",
    "writing_codec",
]

#: A primary-key value a token can be bound to (:func:`row_key_bytes`).
RowKeyPart = int | str | uuid.UUID
#: Every token this library writes starts with this header.
TOKEN_PREFIX = "fc1:"
#: Fernet version byte 0x80 in url-safe base64: how every Fernet token starts.
_FERNET_START = "gAAAAA"
# What a value that resembles a token starts with, once trimmed and case-folded.
_TOKEN_LIKE_STARTS = (TOKEN_PREFIX, _FERNET_START.casefold())
_LIMIT_SETTING = "FIELDCRYPT_MAX_TOKEN_SIZE"
_SMALLEST_LIMIT = 1024

# The longest stored value that is decrypted, in characters; -1 until it is first needed.
# Both per-value paths compare lengths with it, so -1 sends the first value the long way,
# which reads the setting: importing the library reads no settings.
_max_size = -1

_INVALID = (
    "the value does not decrypt: it was tampered with, truncated, copied from another column "
    "(or, in a row-bound column, another row), or written under another key"
)
#: Why a stored value that is not a token (plaintext, most likely) does not decrypt.
NOT_A_TOKEN = (
    "the stored value is not an encrypted token (it may be plaintext); "
    "`fieldcrypt rotate --encrypt-plaintext` encrypts plaintext values in place"
)
_UNBOUND_REFUSED = (
    "the value was written without a context, and this column accepts only values bound to "
    "its context (allow_unbound=False); re-encrypt the column's values under its context, or "
    "set allow_unbound=True while they are migrated"
)
_CONTEXT_MISSING = (
    "the value is bound to a context (a column's name) and was read without one; read it "
    "through the column that wrote it, or give that column's context"
)
_ROW_MISSING = (
    "the value is bound to its row (bind_row=True) and was read without the row's primary "
    "key; read it through the encrypted_hybrid of a loaded object, and point commands at the "
    "models (--models), which say the column binds rows, not at a reflected table (--column)"
)
_ROW_UNBOUND_REFUSED = (
    "the value is not bound to its row, and this column accepts only values bound to their "
    "rows (allow_unbound=False); re-encrypt the column's values with `fieldcrypt rotate`, or "
    "set allow_unbound=True while they are migrated"
)
_BARE_FERNET = (
    "the stored value is a bare Fernet token (no 'fc1:' header), which the column does not "
    "declare: if it holds values an earlier helper wrote, declare "
    "legacy=[BareFernet()] (sa_fieldcrypt.legacy), and `fieldcrypt rotate` rewrites them"
)
_TOKEN_LIKE = (
    "the stored value looks like an encrypted token but is not one as written (its header is "
    "not exactly 'fc1:<key id>:', or it has characters around it): it is neither decrypted "
    "nor read as plaintext; restore the value the application wrote"
)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a stored value's text says about it, without decrypting.

    Attributes:
        kind: ``"fc1"`` (our format), ``"legacy"`` (bare Fernet token) or ``"plaintext"``.
        key_id: the key id of an ``fc1`` token, else None.
        flag: the binding of an ``fc1`` token: ``"c"`` bound to a context, ``"r"`` bound
            to a row, None for an unbound token.
        padded: the token's plaintext is padded (its flag field ends with ``p``).
    """

    kind: str
    key_id: str | None = None
    flag: str | None = None
    padded: bool = False

    @property
    def bound(self) -> bool:
        """Whether an ``fc1`` token is bound, to a context or to a row."""
        return self.flag is not None


#: Every flag field, as its binding letter (or None) and whether it is padded.
_FLAGS: dict[str, tuple[str | None, bool]] = {
    BOUND_FLAG: (BOUND_FLAG, False),
    ROW_FLAG: (ROW_FLAG, False),
    PADDED_FLAG: (None, True),
    BOUND_FLAG + PADDED_FLAG: (BOUND_FLAG, True),
    ROW_FLAG + PADDED_FLAG: (ROW_FLAG, True),
}


def inspect_token(value: str) -> TokenInfo:
    """Classify a stored value by its header alone (it is not decrypted or verified)."""
    if value.startswith(TOKEN_PREFIX):
        end = value.find(":", 4)
        if end > 4:
            field_end = value.find(":", end + 1, end + 4)
            flags = _FLAGS.get(value[end + 1 : field_end]) if field_end > 0 else None
            if flags is None:
                return TokenInfo("fc1", value[4:end])
            return TokenInfo("fc1", value[4:end], *flags)
        return TokenInfo("plaintext")
    if value.startswith(_FERNET_START):
        return TokenInfo("legacy")
    return TokenInfo("plaintext")


def looks_like_token(value: str) -> bool:
    """Whether a stored value resembles a token, so that it is never read as plaintext.

    After trimming whitespace and case-folding, it starts with ``fc1:`` (with a key id or
    not, in any letter case) or with ``gAAAAA`` (how Fernet tokens start), or it is shaped
    as a Fernet token. A column with ``allow_plaintext=True`` refuses such values with
    :class:`~sa_fieldcrypt.DecryptionError` unless they decrypt: a token that was edited,
    re-cased or padded with spaces is never handed to the application as data.
    """
    trimmed = value.strip()
    return trimmed[:8].casefold().startswith(_TOKEN_LIKE_STARTS) or is_fernet_token(trimmed)


def max_token_size() -> int:
    """Return the longest stored value, in characters, that is decrypted or written.

    It is :func:`set_max_token_size`'s, else ``FIELDCRYPT_MAX_TOKEN_SIZE`` (16 MiB by
    default), read at the first encryption or decryption. A longer stored value is refused
    before any cryptography, so a planted value of gigabytes costs a length comparison.
    """
    global _max_size
    if _max_size < 0:
        from sa_fieldcrypt.settings import load_settings

        _max_size = load_settings().max_token_size
    return _max_size


def set_max_token_size(size: int | None) -> None:
    """Set the limit :func:`max_token_size` returns, in this process.

    None forgets it, so the next encryption or decryption reads ``FIELDCRYPT_MAX_TOKEN_SIZE``
    again. Worker processes of ``fieldcrypt rotate --workers`` read the setting: set the
    variable rather than call this when they should share a limit.

    Raises:
        ConfigurationError: ``size`` is not an int of at least 1024.
    """
    global _max_size
    if size is None:
        _max_size = -1
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < _SMALLEST_LIMIT:
        raise ConfigurationError(
            f"set_max_token_size: the limit is a number of characters, at least "
            f"{_SMALLEST_LIMIT}, or None to read {_LIMIT_SETTING}"
        )
    _max_size = size


def _check_stored_size(token: str) -> None:
    limit = max_token_size()
    if len(token) > limit:
        raise DecryptionError(
            f"the stored value is {len(token):,} characters long, over the limit of {limit:,} "
            f"({_LIMIT_SETTING}), and was not decrypted; if values this large are expected, "
            "raise the limit"
        )


def _check_written_size(data: bytes, token: str | None) -> None:
    limit = max_token_size()
    # A token is always longer than its plaintext.
    if len(data) >= limit or (token is not None and len(token) > limit):
        raise ValueTypeError(
            f"a value of {len(data):,} bytes is too large to store: its token would be longer "
            f"than the {limit:,} characters that {_LIMIT_SETTING} allows reads to decrypt; "
            "store smaller values, or raise the limit"
        )


#: The block that ``padding=True`` pads to, in bytes.
DEFAULT_PADDING_BLOCK = 16
_LARGEST_BLOCK = 65536


def padding_block(padding: bool | int) -> int | None:
    """The block size a ``padding=`` argument means: None (no padding), 16 for True, or the int.

    Raises:
        ConfigurationError: not a bool or an int from 2 to 65536.
    """
    if padding is False:
        return None
    if padding is True:
        return DEFAULT_PADDING_BLOCK
    if not isinstance(padding, int) or not 2 <= padding <= _LARGEST_BLOCK:
        raise ConfigurationError(
            "padding must be False, True (16-byte blocks) or a block size in bytes from 2 to "
            f"{_LARGEST_BLOCK}"
        )
    return padding


def pad(data: bytes, block: int) -> bytes:
    """``data`` padded as ISO/IEC 7816-4 does: one 0x80 byte, then zeros to a whole ``block``.

    Every value gets at least the 0x80 byte, so a value of a whole block grows by one block.
    """
    return b"%s\x80%s" % (data, bytes(-(len(data) + 1) % block))


def unpad(data: bytes) -> bytes:
    """Remove :func:`pad`'s padding (whatever the block size).

    Raises:
        DecryptionError: the data does not end with padding.
    """
    end = len(data.rstrip(b"\x00")) - 1
    if end < 0 or data[end] != 0x80:
        raise DecryptionError("the value decrypted, but its padding is malformed")
    return data[:end]


def encrypt(
    keyring: Keyring,
    data: bytes,
    *,
    context: str | None = None,
    row_key: Sequence[RowKeyPart] | None = None,
    padding: bool | int = False,
) -> str:
    """Encrypt ``data`` under the keyring's primary key and return an ``fc1`` token.

    Args:
        keyring: the keys; its primary key encrypts.
        data: the plaintext.
        context: bind the token to this non-empty string (a column's name), so that only
            :func:`decrypt` with the same context opens it.
        row_key: with a context, also bind the token to one row: its primary-key values,
            in the table's primary-key order (see :func:`row_key_bytes`).
        padding: pad the plaintext before encrypting (:func:`pad`) so that every value
            shorter than a block gives a token of one length: True for 16-byte blocks, or a
            block size. :func:`decrypt` removes it.

    Raises:
        ConfigurationError: the keyring holds blind-index keys, not encryption keys, a
            ``row_key`` is given without a context, or ``padding`` is not valid.
        ValueTypeError: the token would be longer than :func:`max_token_size`, or a
            primary-key value is not an int, str or UUID.
    """
    _check_purpose(keyring)
    block = padding_block(padding)
    if row_key is None:
        if block is not None:
            return encrypt_padded_value(keyring, data, context, None, block)
        return encrypt_value(keyring, data, context)
    row, bound_to = row_key_bytes(row_key), _row_context(context)
    if block is not None:
        return encrypt_padded_value(keyring, data, bound_to, row, block)
    return encrypt_row_value(keyring, data, bound_to, row)


def _row_context(context: str | None) -> str:
    if context is None:
        raise ConfigurationError("a row key binds a token within a context; give context= too")
    return context


def row_key_bytes(row_key: Sequence[RowKeyPart]) -> bytes:
    """Encode a row's primary-key values as row-bound tokens authenticate them.

    Each value becomes its text (an int in decimal, a UUID as ``str(uuid)``, a string as it
    is), encoded as UTF-8 and written as a netstring, ``<length>:<bytes>,``; the netstrings
    follow each other in the table's primary-key order. Unambiguous for any values, and the
    same from any language (``docs/token-format.md``).

    Raises:
        ValueTypeError: a value is not an int (bool is not), str or UUID; the message names
            its type, never the value.
    """
    parts = []
    for value in row_key:
        # The base types' own text: an enum member that is an int or a str stands for the
        # number or the string the database stores, whatever its str() says.
        if isinstance(value, str):
            text = str.__str__(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            text = int.__repr__(value)
        elif isinstance(value, uuid.UUID):
            text = str(value)
        else:
            raise ValueTypeError(
                f"a row can be bound by a primary key of int, str or UUID values; one of its "
                f"values is a {type(value).__name__}"
            )
        encoded = text.encode("utf-8", "surrogatepass")
        parts.append(b"%d:%s," % (len(encoded), encoded))
    if not parts:
        raise ValueTypeError("a row key needs at least one primary-key value")
    return b"".join(parts)


def _check_purpose(keyring: Keyring) -> None:
    if keyring.purpose != "encryption":
        raise ConfigurationError(
            f"a keyring of purpose {keyring.purpose!r} cannot encrypt or decrypt; "
            "give a keyring of encryption keys (purpose='encryption')"
        )


def encrypt_value(keyring: Keyring, data: bytes, context: str | None) -> str:
    """:func:`encrypt` with positional arguments and no purpose check, for the per-value path.

    The column types call it once per value written, with a keyring their cache checked.
    """
    if len(data) >= _max_size:  # -1 until the limit is read: the long way reads it
        _check_written_size(data, None)
    key = keyring.primary
    if context is None:
        token = key.token_prefix + key.encrypt(data)
    else:
        codec = key.for_context(context)
        token = codec.token_prefix + codec.encrypt(data)
    if len(token) > _max_size:
        _check_written_size(data, token)
    return token


def encrypt_row_value(keyring: Keyring, data: bytes, context: str, row: bytes) -> str:
    """:func:`encrypt_value` bound to one row too: ``row`` is :func:`row_key_bytes`' encoding."""
    if len(data) >= _max_size:
        _check_written_size(data, None)
    codec = keyring.primary.for_row(context, row)
    token = codec.token_prefix + codec.encrypt(data)
    if len(token) > _max_size:
        _check_written_size(data, token)
    return token


def encrypt_padded_value(
    keyring: Keyring, data: bytes, context: str | None, row: bytes | None, block: int
) -> str:
    """:func:`encrypt_value` (or :func:`encrypt_row_value`) of ``data`` padded to ``block``.

    A padded token's flag field ends with ``p`` and its binding information with
    :data:`~sa_fieldcrypt.keys.PADDED_INFO`, so it never opens as an unpadded token.
    """
    padded = pad(data, block)
    if len(padded) >= _max_size:
        _check_written_size(padded, None)
    key = keyring.primary
    if row is not None:
        codec = key.for_row(_row_context(context), row, True)
    else:
        codec = key.for_context(context, True)
    token = codec.token_prefix + codec.encrypt(padded)
    if len(token) > _max_size:
        _check_written_size(padded, token)
    return token


def decrypt(
    keyring: Keyring,
    token: str,
    *,
    context: str | None = None,
    allow_unbound: bool = True,
    row_key: Sequence[RowKeyPart] | None = None,
) -> bytes:
    """Decrypt an ``fc1`` or legacy token.

    Args:
        keyring: the keys; the token's key id selects one.
        token: the stored value.
        context: the context the token was bound to, if any. A bound token decrypts only with
            its own context; an unbound token ignores it.
        allow_unbound: with a ``context``, whether unbound tokens (written before the column
            was bound, or legacy ones) are still accepted. False makes the column strict.
            With a ``row_key``, tokens bound to the context only count as unbound too.
        row_key: the primary-key values of the row a row-bound token belongs to.

    Raises:
        ConfigurationError: the keyring holds blind-index keys, not encryption keys.
        UnknownKeyError: the token names a key id the keyring does not hold.
        DecryptionError: the token is malformed, tampered with, bound to another context or
            row, longer than :func:`max_token_size`, or not a token at all.
    """
    _check_purpose(keyring)
    if row_key is None:
        return decrypt_value(keyring, token, context, allow_unbound)
    return decrypt_row_value(
        keyring, token, _row_context(context), row_key_bytes(row_key), allow_unbound
    )


def decrypt_value(keyring: Keyring, token: str, context: str | None, allow_unbound: bool) -> bytes:
    """:func:`decrypt` with positional arguments and no purpose check, for the per-value path.

    The column types call it once per value read, with a keyring their cache checked.
    """
    try:
        # Before any cryptography; -1 until the limit is read, and the long way reads it.
        if len(token) > _max_size:
            _check_stored_size(token)
        # Payloads never hold ':', so the last ':' ends the header.
        head, _, payload = token.rpartition(":")
        found = reading_codec(keyring, head, context, allow_unbound)
        if found is None:
            return _decrypt_other(keyring, token, context, allow_unbound)
        key, codec, padded = found
        try:
            data = codec.decrypt(payload)
        except (InvalidToken, ValueError, TypeError):
            # ValueError/TypeError: non-ASCII text never reaches Fernet's own check.
            raise DecryptionError(_INVALID, key_id=key.id) from None
        next(key.decrypt_counter)
        return unpad(data) if padded else data
    except DecryptionError as exc:
        metrics.count_failure(exc.key_id, isinstance(exc, UnknownKeyError))
        raise


def reading_codec(
    keyring: Keyring, head: str, context: str | None, allow_unbound: bool
) -> tuple[Key, KeyCodec, bool] | None:
    """The key and codec that open tokens whose header up to its last ``:`` is ``head``.

    For a column of ``context`` (None: unbound) that reads unbound tokens if
    ``allow_unbound``; the bool says whether the plaintext is padded (:func:`unpad`). None
    for every other header (unknown key ids, refusals, row-bound, unbound padded, not a
    token): :func:`decrypt_value` decides those the long way. A few dict lookups, whatever
    the keyring's size; the same header always gives the same answer for one keyring.
    """
    if context is None:
        key = keyring.token_heads.get(head)
        return None if key is None else (key, key.codec, False)
    key = keyring.bound_token_heads.get(head)
    if key is not None:
        return key, key.for_context(context), False
    padded = keyring.padded_token_heads.get(head)
    if padded is not None and padded[1] == BOUND_FLAG:
        return padded[0], padded[0].for_context(context, True), True
    key = keyring.token_heads.get(head) if allow_unbound else None
    # An unbound token read by a bound column (written before it was bound): what a
    # rotation that binds a column reads a million times.
    return None if key is None else (key, key.codec, False)


def writing_codec(keyring: Keyring, context: str | None, padded: bool) -> KeyCodec:
    """The codec that writes a column's tokens: the primary key's, bound to ``context``.

    ``padded``: the codec of padded values; the caller pads (:func:`pad`).
    """
    key = keyring.primary
    if context is None and not padded:
        return key.codec
    return key.for_context(context, padded)


def decrypt_row_value(
    keyring: Keyring, token: str, context: str, row: bytes, allow_unbound: bool
) -> bytes:
    """:func:`decrypt_value` for a row-bound column: ``row`` is :func:`row_key_bytes`' encoding.

    A token bound to the row decrypts with it. One bound to the column only, unbound or
    legacy was written before the column bound its rows (or copied in): it is read as such
    while ``allow_unbound``, and refused otherwise.
    """
    try:
        if len(token) > _max_size:
            _check_stored_size(token)
        head, _, payload = token.rpartition(":")
        key = keyring.row_token_heads.get(head)
        padded = keyring.padded_token_heads.get(head)
        if key is not None or (padded is not None and padded[1] == ROW_FLAG):
            if key is None:
                key = padded[0]  # type: ignore[index]
            try:
                data = key.for_row(context, row, padded is not None).decrypt(payload)
            except (InvalidToken, ValueError, TypeError):
                raise DecryptionError(_INVALID, key_id=key.id) from None
            next(key.decrypt_counter)
            return data if padded is None else unpad(data)
        column_bound = keyring.bound_token_heads.get(head)
        if column_bound is None and padded is not None and padded[1] == BOUND_FLAG:
            column_bound = padded[0]
        if column_bound is not None and not allow_unbound:
            raise DecryptionError(_ROW_UNBOUND_REFUSED, key_id=column_bound.id)
    except DecryptionError as exc:
        metrics.count_failure(exc.key_id, isinstance(exc, UnknownKeyError))
        raise
    try:
        return decrypt_value(keyring, token, context, allow_unbound)
    except DecryptionError as exc:
        if exc.reason == _UNBOUND_REFUSED:  # counted already
            raise DecryptionError(_ROW_UNBOUND_REFUSED, key_id=exc.key_id) from None
        raise


def _decrypt_other(keyring: Keyring, token: str, context: str | None, allow_unbound: bool) -> bytes:
    parts = token.split(":", 3)
    if parts[0] == "fc1" and len(parts) > 1:
        key = keyring.find(parts[1]) or _missing_key(keyring, parts[1])
        if len(parts) == 3:
            # An unbound token read by a bound column: a value written before it was bound.
            if not allow_unbound:
                raise DecryptionError(_UNBOUND_REFUSED, key_id=key.id)
            try:
                data = key.decrypt(parts[2])
            except (InvalidToken, ValueError, TypeError):
                raise DecryptionError(_INVALID, key_id=key.id) from None
            next(key.decrypt_counter)
            return data
        binding, padded = _FLAGS.get(parts[2], (None, False)) if len(parts) == 4 else (None, False)
        if len(parts) == 4 and binding == BOUND_FLAG and context is None:
            raise DecryptionError(_CONTEXT_MISSING, key_id=key.id)
        if len(parts) == 4 and binding == ROW_FLAG:
            raise DecryptionError(_ROW_MISSING, key_id=key.id)
        if padded:
            return _decrypt_padded(key, parts[3], binding, context, allow_unbound)
        raise DecryptionError(_INVALID, key_id=key.id)
    if is_fernet_token(token):
        raise DecryptionError(_BARE_FERNET)
    raise DecryptionError(_TOKEN_LIKE if looks_like_token(token) else NOT_A_TOKEN)


def _decrypt_padded(
    key: Key, payload: str, binding: str | None, context: str | None, allow_unbound: bool
) -> bytes:
    """A padded token bound to ``context`` (``cp``), or unbound (``p``), without its padding."""
    if binding is None:
        if context is not None and not allow_unbound:
            raise DecryptionError(_UNBOUND_REFUSED, key_id=key.id)
        context = None
    try:
        data = key.for_context(context, True).decrypt(payload)
    except (InvalidToken, ValueError, TypeError):
        raise DecryptionError(_INVALID, key_id=key.id) from None
    next(key.decrypt_counter)
    return unpad(data)


def _missing_key(keyring: Keyring, key_id: str) -> NoReturn:
    if KEY_ID_PATTERN.match(key_id):
        keyring.get(key_id)  # raises UnknownKeyError naming the id
    raise DecryptionError(_INVALID)


def _encrypt_from_parts(keyring: Keyring, data: bytes, current_time: int, iv: bytes) -> str:
    """Encrypt with a fixed timestamp and IV: a seam for the spec-vector tests only.

    A fixed IV is unsafe; nothing in the library calls this.
    """
    key = keyring.primary
    return key.token_prefix + key.codec.encrypt_with_iv(data, current_time, iv)


def _encrypt_aead_from_parts(
    keyring: Keyring, data: bytes, nonce: bytes, *, context: str | None = None
) -> str:
    """Encrypt with a fixed nonce under an aes-gcm-siv primary key: for vector tests only.

    A fixed nonce is unsafe; nothing in the library calls this.
    """
    key = keyring.primary
    codec = key.for_context(context) if context is not None else key.codec
    return codec.token_prefix + codec.encrypt_with_nonce(data, nonce)

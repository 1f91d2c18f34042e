"""The token format: ``fc1:<key_id>:<fernet token>``.

``fc1`` is the format version. ``key_id`` names the keyring key that encrypted the value, so
decryption picks that key directly, whatever the number of old keys. The last part is a plain
Fernet token: ``cryptography.fernet.Fernet(key).decrypt()`` reads it without this library.

A bare Fernet token (no header) is a *legacy* token, as hand-written ``encrypt_field()``
helpers store them. It is still read, by trying each key of the keyring in turn.

Typical usage::

    token = encrypt(keyring, b"ada@example.com")   # 'fc1:k2:gAAAAA...'
    decrypt(keyring, token)                         # b'ada@example.com'
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.fernet import InvalidToken

from sa_fieldcrypt.errors import DecryptionError
from sa_fieldcrypt.keys import KEY_ID_PATTERN, Keyring

__all__ = ["TOKEN_PREFIX", "TokenInfo", "decrypt", "encrypt", "inspect_token"]

#: Every token this library writes starts with this header.
TOKEN_PREFIX = "fc1:"
#: Fernet version byte 0x80 in url-safe base64: how every Fernet token starts.
_FERNET_START = "gAAAAA"

_INVALID = (
    "the value does not decrypt: it was tampered with, truncated, or written under another key"
)
_NOT_A_TOKEN = (
    "the stored value is not an encrypted token (it may be plaintext); "
    "`fieldcrypt rotate --encrypt-plaintext` encrypts plaintext values in place"
)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a stored value's text says about it, without decrypting.

    Attributes:
        kind: ``"fc1"`` (our format), ``"legacy"`` (bare Fernet token) or ``"plaintext"``.
        key_id: the key id of an ``fc1`` token, else None.
    """

    kind: str
    key_id: str | None = None


def inspect_token(value: str) -> TokenInfo:
    """Classify a stored value by its header alone (it is not decrypted or verified)."""
    if value.startswith(TOKEN_PREFIX):
        end = value.find(":", 4)
        if end > 4:
            return TokenInfo("fc1", value[4:end])
        return TokenInfo("plaintext")
    if value.startswith(_FERNET_START):
        return TokenInfo("legacy")
    return TokenInfo("plaintext")


def encrypt(keyring: Keyring, data: bytes) -> str:
    """Encrypt ``data`` under the keyring's primary key and return an ``fc1`` token."""
    key = keyring.primary
    return key.token_prefix + key.encrypt(data)


def decrypt(keyring: Keyring, token: str) -> bytes:
    """Decrypt an ``fc1`` or legacy token.

    Raises:
        UnknownKeyError: the token names a key id the keyring does not hold.
        DecryptionError: the token is malformed, tampered with, or not a token at all.
    """
    # One split, one dict lookup: the key is found by id whatever the keyring's size.
    parts = token.split(":", 2)
    if parts[0] == "fc1" and len(parts) == 3:
        key = keyring._keys.get(parts[1])
        if key is None:
            if not KEY_ID_PATTERN.match(parts[1]):
                raise DecryptionError(_INVALID)
            keyring.get(parts[1])  # raises UnknownKeyError naming the id
        try:
            return key.decrypt(parts[2])  # type: ignore[union-attr]
        except (InvalidToken, ValueError, TypeError):
            # ValueError/TypeError: non-ASCII text never reaches Fernet's own check.
            raise DecryptionError(_INVALID, key_id=parts[1]) from None
    if token.startswith(_FERNET_START):
        return _decrypt_legacy(keyring, token)
    if token.startswith(TOKEN_PREFIX):
        raise DecryptionError(_INVALID)
    raise DecryptionError(_NOT_A_TOKEN)


def _decrypt_legacy(keyring: Keyring, token: str) -> bytes:
    # Legacy tokens carry no key id, so every key is tried, the primary first; this is the
    # one path that is O(number of keys), and `fieldcrypt rotate` removes it from the data.
    primary = keyring.primary
    for key in (primary, *(k for k in keyring if k is not primary)):
        try:
            return key.decrypt(token)
        except (InvalidToken, ValueError, TypeError):
            continue
    raise DecryptionError(_INVALID + " (a legacy Fernet token: no key of the keyring opens it)")


def _encrypt_from_parts(keyring: Keyring, data: bytes, current_time: int, iv: bytes) -> str:
    """Encrypt with a fixed timestamp and IV: a seam for the spec-vector tests only.

    A fixed IV is unsafe; nothing in the library calls this.
    """
    key = keyring.primary
    fernet_token = key._fernet._encrypt_from_parts(data, current_time, iv)
    return key.token_prefix + fernet_token.decode("ascii")

"""Keys and keyrings: which keys exist, and which one encrypts.

A :class:`Keyring` holds named keys. Exactly one is the *primary*: it encrypts every new value.
The others are decrypt-only, kept so that values written under them can still be read until
``fieldcrypt rotate`` has moved them to the primary key.

Typical usage::

    from sa_fieldcrypt import Keyring, generate_key

    keyring = Keyring({"k2": generate_key(), "k1": old_key})   # first entry is primary
    keyring = Keyring.parse("k2:<key>,k1:<key>")              # the FIELDCRYPT_KEYS format
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

from cryptography.fernet import Fernet

from sa_fieldcrypt.errors import ConfigurationError, UnknownKeyError

__all__ = ["KEY_ID_PATTERN", "Key", "Keyring", "generate_key"]

#: Key ids are short, printable and safe inside a token header and a settings string.
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")

_REDACTED = "<redacted>"


def generate_key() -> str:
    """Return a new random Fernet key as url-safe base64 text."""
    return Fernet.generate_key().decode("ascii")


def _check_key_id(key_id: object, where: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id):
        shown = repr(key_id) if isinstance(key_id, str) and len(key_id) <= 64 else "given"
        raise ConfigurationError(
            f"{where}: key id {shown} is not valid; a key id is 1 to 32 characters "
            "from A-Z, a-z, 0-9, '_' and '-'"
        )
    return key_id


def _decode_fernet_key(secret: str | bytes, where: str) -> bytes:
    if isinstance(secret, str):
        try:
            secret = secret.strip().encode("ascii")
        except UnicodeEncodeError:
            secret = b""
    if not isinstance(secret, bytes):
        raise ConfigurationError(f"{where}: a key must be str or bytes")
    try:
        raw = base64.urlsafe_b64decode(secret)
    except (binascii.Error, ValueError):
        raw = b""
    # Only the canonical spelling is accepted: lenient base64 would take a key with a stray
    # character appended (a copy-paste slip) for the key itself.
    if len(raw) != 32 or base64.urlsafe_b64encode(raw) != secret:
        raise ConfigurationError(
            f"{where}: the key is not a Fernet key (32 bytes in url-safe base64); "
            "generate one with `fieldcrypt keygen`"
        )
    return secret


class Key:
    """One named encryption key.

    The secret never appears in ``repr`` or ``str``. Use :meth:`export` to get it on purpose.

    Args:
        key_id: the id written into every token this key encrypts.
        secret: a Fernet key, url-safe base64 (as :func:`generate_key` returns).
    """

    __slots__ = ("_fernet", "_secret", "decrypt", "id", "kind", "token_prefix")

    id: str
    kind: str
    token_prefix: str
    decrypt: Callable[[str | bytes], bytes]

    def __init__(self, key_id: str, secret: str | bytes):
        self.id = _check_key_id(key_id, "Key")
        self.kind = "fernet"
        self._secret = _decode_fernet_key(secret, f"key {key_id!r}")
        # Built once: constructing Fernet parses the key, which must stay off the hot path.
        self._fernet = Fernet(self._secret)
        self.token_prefix = f"fc1:{self.id}:"
        #: Decrypt a bare Fernet token; raises ``cryptography.fernet.InvalidToken``.
        #: Fernet's own bound method, so decryption adds no call frame of ours.
        self.decrypt = self._fernet.decrypt

    def encrypt(self, data: bytes) -> str:
        """Encrypt ``data`` and return the bare Fernet token (no ``fc1:`` header)."""
        return self._fernet.encrypt(data).decode("ascii")

    def export(self) -> str:
        """Return the secret key text, for writing it into settings. Handle with care."""
        return self._secret.decode("ascii")

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, kind={self.kind!r}, secret={_REDACTED})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Rotation workers receive keyrings by pickling; the secret travels, the repr does not.
        return (Key, (self.id, self._secret))


class Keyring:
    """A set of named keys with exactly one primary key.

    Args:
        keys: either a mapping of key id to key text (insertion order kept), or
            :class:`Key` objects.
        primary: the id of the key that encrypts; by default the first key.

    Raises:
        ConfigurationError: no keys, a duplicate or invalid id, a malformed key, or a
            ``primary`` that is not among the keys. The message names the id, never the key.
    """

    __slots__ = ("_keys", "primary")

    primary: Key

    def __init__(
        self,
        keys: Mapping[str, str | bytes] | Iterable[Key],
        *,
        primary: str | None = None,
    ):
        if isinstance(keys, Mapping):
            built = [Key(_check_key_id(kid, "Keyring"), secret) for kid, secret in keys.items()]
        else:
            built = list(keys)
        by_id: dict[str, Key] = {}
        for position, key in enumerate(built, start=1):
            if not isinstance(key, Key):
                raise ConfigurationError(f"Keyring: entry {position} is not a Key")
            if key.id in by_id:
                raise ConfigurationError(f"Keyring: key id {key.id!r} appears more than once")
            by_id[key.id] = key
        if not by_id:
            raise ConfigurationError("Keyring: no keys given; a keyring needs at least one key")
        if primary is None:
            primary = built[0].id
        elif primary not in by_id:
            raise ConfigurationError(
                f"Keyring: primary key id {primary!r} is not in the keyring "
                f"(ids: {', '.join(by_id)})"
            )
        self._keys = by_id
        self.primary = by_id[primary]

    @classmethod
    def parse(cls, text: str, *, primary: str | None = None, source: str = "keys") -> Keyring:
        """Build a keyring from ``"id:key,id:key"`` text, the ``FIELDCRYPT_KEYS`` format.

        The first entry is primary unless ``primary`` names another. ``source`` names the
        setting in error messages. Whitespace around entries is ignored.
        """
        entries = [entry.strip() for entry in text.split(",")]
        if entries == [""]:
            raise ConfigurationError(f"{source} is empty; expected 'id:key,id:key'")
        keys: list[Key] = []
        for position, entry in enumerate(entries, start=1):
            kid, sep, secret = entry.partition(":")
            kid = kid.strip()
            if not sep or not kid:
                raise ConfigurationError(f"{source}: entry {position} is not of the form 'id:key'")
            where = f"{source}: entry {position}"
            _check_key_id(kid, where)
            try:
                keys.append(Key(kid, secret.strip()))
            except ConfigurationError:
                raise ConfigurationError(
                    f"{where} (id {kid!r}): the key is not a Fernet key (32 bytes in url-safe "
                    "base64); generate one with `fieldcrypt keygen`"
                ) from None
        try:
            return cls(keys, primary=primary)
        except ConfigurationError as exc:
            raise ConfigurationError(str(exc).replace("Keyring", source, 1)) from None

    def get(self, key_id: str) -> Key:
        """Return the key with id ``key_id``; raises :class:`UnknownKeyError` if absent."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyError(
                f"no key with id {key_id!r} in the keyring (ids: {', '.join(self._keys)}); "
                "add the key that wrote this value back to the keyring",
                key_id=key_id,
            ) from None

    def find(self, key_id: str) -> Key | None:
        """Return the key with id ``key_id``, or None."""
        return self._keys.get(key_id)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every key id, in the order the keys were given."""
        return tuple(self._keys)

    def with_primary(self, key_id: str) -> Keyring:
        """Return a keyring with the same keys and ``key_id`` as the primary."""
        return Keyring(self._keys.values(), primary=key_id)

    def without(self, key_id: str) -> Keyring:
        """Return a keyring without ``key_id``; the primary key cannot be removed."""
        if key_id == self.primary.id:
            raise ConfigurationError(
                f"key {key_id!r} is the primary key; make another key primary before removing it"
            )
        self.get(key_id)
        return Keyring([k for k in self._keys.values() if k.id != key_id], primary=self.primary.id)

    def export(self) -> str:
        """Return the keyring as ``FIELDCRYPT_KEYS`` text, primary first. Handle with care."""
        ordered = [self.primary, *(k for k in self._keys.values() if k is not self.primary)]
        return ",".join(f"{k.id}:{k.export()}" for k in ordered)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary.id!r}, ids={list(self._keys)!r})"

    __str__ = __repr__

"""Keys and keyrings: which keys exist, and which one encrypts.

A :class:`Keyring` holds named keys. Exactly one is the *primary*: it encrypts every new value.
The others are decrypt-only, kept so that values written under them can still be read until
``fieldcrypt rotate`` has moved them to the primary key.

A key is of one of two kinds, and the kind travels with the key text, so a keyring may mix
them and moving to AEAD is an ordinary rotation:

- ``fernet`` (the default): a Fernet key, written as the bare url-safe base64 key.
- ``aes-gcm-siv``: a 256-bit AES-GCM-SIV key (nonce-misuse resistant AEAD, about four times
  faster than Fernet), written as ``aes-gcm-siv:<url-safe base64 key>``.

Typical usage::

    from sa_fieldcrypt import Keyring, generate_key

    keyring = Keyring({"k2": generate_key(), "k1": old_key})   # first entry is primary
    keyring = Keyring({"k3": generate_key(kind="aes-gcm-siv"), "k2": fernet_key})
    keyring = Keyring.parse("k3:aes-gcm-siv:<key>,k2:<key>")   # the FIELDCRYPT_KEYS format
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal, get_args

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sa_fieldcrypt import metrics
from sa_fieldcrypt.errors import ConfigurationError, UnknownKeyError

__all__ = ["KEY_ID_PATTERN", "KEY_KINDS", "Key", "KeyCodec", "KeyKind", "Keyring", "generate_key"]

#: Key ids are short, printable and safe inside a token header and a settings string.
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")

#: The kinds of key a keyring can hold.
KeyKind = Literal["fernet", "aes-gcm-siv"]
#: Every :data:`KeyKind`, the default first.
KEY_KINDS: tuple[KeyKind, ...] = get_args(KeyKind)

#: Flag field of a context-bound token: ``fc1:<key_id>:c:<payload>``.
BOUND_FLAG = "c"
#: Bytes of the random nonce that starts every AES-GCM-SIV payload.
NONCE_SIZE = 12
#: Prefix of the HKDF ``info`` that derives a Fernet key for a context; the context follows.
FERNET_CONTEXT_INFO = b"sa-fieldcrypt/fc1/fernet-context:"

_REDACTED = "<redacted>"
_AEAD_KEY_SIZE = 32
# Contexts are column names, a handful per application; the bound keeps a program that
# makes up contexts per row from growing the cache without end.
_MAX_CONTEXTS = 1024
_context_lock = threading.Lock()

# url-safe alphabet in, standard alphabet out; '+' and '/' become invalid characters so that
# strict decoding accepts the url-safe alphabet only.
_FROM_URLSAFE = bytes.maketrans(b"-_+/", b"+/!!")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")

_KEY_HELP = {
    "fernet": "the key is not a Fernet key (32 bytes in url-safe base64); "
    "generate one with `fieldcrypt keygen`",
    "aes-gcm-siv": "the key is not an aes-gcm-siv key (32 bytes, 256 bits, in url-safe "
    "base64); generate one with `fieldcrypt keygen --kind aes-gcm-siv`",
}
_UNKNOWN_KIND = (
    "the key kind is not known; write 'id:key' for a Fernet key or "
    "'id:aes-gcm-siv:key' for an AES-GCM-SIV key"
)


def generate_key(kind: KeyKind = "fernet") -> str:
    """Return a new random key as text, as :class:`Key` and ``FIELDCRYPT_KEYS`` take it.

    Args:
        kind: ``"fernet"`` gives a bare Fernet key (url-safe base64); ``"aes-gcm-siv"`` gives
            ``"aes-gcm-siv:<url-safe base64 of 32 random bytes>"``.
    """
    if kind == "fernet":
        return Fernet.generate_key().decode("ascii")
    if kind == "aes-gcm-siv":
        return "aes-gcm-siv:" + base64.urlsafe_b64encode(os.urandom(_AEAD_KEY_SIZE)).decode()
    raise ConfigurationError(f"generate_key: kind must be one of {', '.join(KEY_KINDS)}")


def _check_key_id(key_id: object, where: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id):
        # Longer text is most likely a key typed into the id field ("<key>:k1"): never echo it.
        if not isinstance(key_id, str):
            shown = f"of type {type(key_id).__name__}"
        elif len(key_id) > 32:
            shown = f"of {len(key_id)} characters"
        else:
            shown = repr(key_id)
        raise ConfigurationError(
            f"{where}: key id {shown} is not valid; a key id is 1 to 32 characters "
            "from A-Z, a-z, 0-9, '_' and '-'"
        )
    return key_id


def _parse_secret(secret: object, kind: str | None) -> tuple[KeyKind, bytes]:
    """Split key text into its kind and raw key bytes.

    Raises ConfigurationError whose message is a reason only; callers say where. The message
    never quotes the text, which may be a key.
    """
    if isinstance(secret, bytes):
        try:
            secret = secret.decode("ascii")
        except UnicodeDecodeError:
            secret = ""
    if not isinstance(secret, str):
        raise ConfigurationError("a key must be str or bytes")
    named, sep, rest = secret.partition(":")
    if sep:
        named, secret = named.strip(), rest
        if named not in KEY_KINDS:
            raise ConfigurationError(_UNKNOWN_KIND)
        if kind is not None and kind != named:
            raise ConfigurationError(f"the key text says {named!r} but kind={kind!r} was given")
        kind = named
    elif kind is None:
        kind = "fernet"
    elif kind not in KEY_KINDS:
        raise ConfigurationError(f"kind must be one of {', '.join(KEY_KINDS)}")
    secret = secret.strip()
    try:
        raw = base64.urlsafe_b64decode(secret)
    except ValueError:  # binascii.Error and non-ASCII text are both ValueErrors
        raw = b""
    # Only the canonical spelling is accepted: lenient base64 would take a key with a stray
    # character appended (a copy-paste slip) for the key itself.
    if len(raw) != 32 or base64.urlsafe_b64encode(raw).decode("ascii") != secret:
        raise ConfigurationError(_KEY_HELP[kind])
    return kind, raw  # type: ignore[return-value]  # kind is one of KEY_KINDS, checked above


def _urlsafe_b64decode(text: str | bytes) -> bytes:
    """Decode url-safe base64 strictly; raises ValueError on any other character or padding."""
    if isinstance(text, str):
        text = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    return binascii.a2b_base64(text.translate(_FROM_URLSAFE), strict_mode=True)


def _urlsafe_b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).decode("ascii")


class KeyCodec:
    """Encrypts to and decrypts from the payload of a token, for one key and one context.

    The payload is what follows the header: the token is ``token_prefix + payload``.

    Attributes:
        token_prefix: the header of the tokens this codec writes.
        decrypt: decrypt a payload (``str`` or ``bytes``) to plaintext bytes; raises
            ``cryptography.fernet.InvalidToken`` (or ``ValueError``/``TypeError`` for values
            that are not even text) when the payload does not authenticate.
    """

    __slots__ = ("decrypt", "token_prefix")

    token_prefix: str
    decrypt: Callable[[str | bytes], bytes]

    def encrypt(self, data: bytes) -> str:
        """Encrypt ``data`` and return the payload (no header)."""
        raise NotImplementedError


class _FernetCodec(KeyCodec):
    __slots__ = ("_encrypt", "fernet")

    def __init__(self, fernet: Fernet, token_prefix: str):
        self.fernet = fernet
        self.token_prefix = token_prefix
        # Fernet's own bound methods: the codec adds no call frame of ours to decryption.
        self.decrypt = fernet.decrypt
        self._encrypt = fernet.encrypt

    def encrypt(self, data: bytes) -> str:
        return self._encrypt(data).decode("ascii")


class _AeadCodec(KeyCodec):
    """AES-GCM-SIV payload: url-safe base64 of ``nonce (12 bytes) || ciphertext || tag (16)``."""

    __slots__ = ("_associated_data", "_open", "_seal")

    def __init__(self, aead: AESGCMSIV, associated_data: bytes | None, token_prefix: str):
        self.token_prefix = token_prefix
        self._seal = aead.encrypt
        self._open = aead.decrypt
        self._associated_data = associated_data
        self.decrypt = self._decrypt

    def encrypt(self, data: bytes) -> str:
        # A fresh random nonce per value; SIV keeps a repeated nonce from being catastrophic
        # (it would reveal only that two plaintexts are equal), it does not invite reuse.
        nonce = os.urandom(NONCE_SIZE)
        return _urlsafe_b64encode(nonce + self._seal(nonce, data, self._associated_data))

    def _encrypt_with_nonce(self, data: bytes, nonce: bytes) -> str:
        """Encrypt with a given nonce: a seam for the RFC 8452 vector tests only."""
        return _urlsafe_b64encode(nonce + self._seal(nonce, data, self._associated_data))

    def _decrypt(self, payload: str | bytes) -> bytes:
        try:
            raw = _urlsafe_b64decode(payload)
            return self._open(raw[:NONCE_SIZE], raw[NONCE_SIZE:], self._associated_data)
        except (InvalidTag, ValueError, TypeError):
            # One failure for every malformed or forged payload, as Fernet has.
            raise InvalidToken from None


class Key:
    """One named encryption key, of kind ``fernet`` or ``aes-gcm-siv``.

    The secret never appears in ``repr`` or ``str``. Use :meth:`export` to get it on purpose.

    Args:
        key_id: the id written into every token this key encrypts.
        secret: the key text, as :func:`generate_key` returns it: a bare Fernet key, or
            ``"<kind>:<url-safe base64 key>"``.
        kind: the key's kind, when ``secret`` does not say it; a bare key is Fernet.

    Attributes:
        id: the key id.
        kind: ``"fernet"`` or ``"aes-gcm-siv"``.
        token_prefix: ``"fc1:<id>:"``, the header of the unbound tokens this key writes.
        encrypt: encrypt bytes without a context; returns the payload (no header).
        decrypt: decrypt an unbound payload; raises ``cryptography.fernet.InvalidToken``.
    """

    __slots__ = (
        "_aead",
        "_contexts",
        "_decrypts",
        "_fernet",
        "_raw",
        "_secret",
        "_unbound_codec",
        "decrypt",
        "encrypt",
        "id",
        "kind",
        "token_prefix",
    )

    id: str
    kind: KeyKind
    token_prefix: str
    encrypt: Callable[[bytes], str]
    decrypt: Callable[[str | bytes], bytes]

    def __init__(self, key_id: str, secret: str | bytes, kind: KeyKind | None = None):
        self.id = _check_key_id(key_id, "Key")
        try:
            self.kind, self._raw = _parse_secret(secret, kind)
        except ConfigurationError as exc:
            raise ConfigurationError(f"key {key_id!r}: {exc}") from None
        self._secret = base64.urlsafe_b64encode(self._raw)
        self.token_prefix = f"fc1:{self.id}:"
        # Everything per key is built once here: parsing a key or constructing a cipher
        # must stay off the per-value path.
        codec: KeyCodec
        if self.kind == "fernet":
            self._fernet: Fernet | None = Fernet(self._secret)
            self._aead: AESGCMSIV | None = None
            codec = _FernetCodec(self._fernet, self.token_prefix)
        else:
            self._fernet = None
            self._aead = _new_aead(self._raw, key_id)
            codec = _AeadCodec(self._aead, None, self.token_prefix)
        self._unbound_codec = codec
        self.encrypt = codec.encrypt
        self.decrypt = codec.decrypt
        self._contexts: dict[str, KeyCodec] = {}
        # Shared by every Key with this id, so counts survive a keyring reload.
        self._decrypts = metrics.key_counter(self.id)

    def for_context(self, context: str) -> KeyCodec:
        """Return the codec that binds values to ``context``, built once and then cached.

        An ``aes-gcm-siv`` key authenticates the UTF-8 context as associated data. A Fernet
        key encrypts under a per-context Fernet key derived with HKDF-SHA256 (see
        ``docs/token-format.md``). Either way its tokens start ``fc1:<id>:c:``.
        """
        codec = self._contexts.get(context)
        if codec is None:
            codec = self._new_context_codec(context)
        return codec

    def _new_context_codec(self, context: str) -> KeyCodec:
        if not isinstance(context, str) or not context:
            raise ConfigurationError("a context is a non-empty str, such as 'schema.table.column'")
        try:
            info = context.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigurationError("a context must be encodable as UTF-8") from None
        prefix = f"{self.token_prefix}{BOUND_FLAG}:"
        codec: KeyCodec
        if self._aead is not None:
            codec = _AeadCodec(self._aead, info, prefix)
        else:
            derived = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=FERNET_CONTEXT_INFO + info
            ).derive(self._raw)
            codec = _FernetCodec(Fernet(base64.urlsafe_b64encode(derived)), prefix)
        with _context_lock:
            if len(self._contexts) >= _MAX_CONTEXTS:
                self._contexts.pop(next(iter(self._contexts)))
            return self._contexts.setdefault(context, codec)

    def export(self) -> str:
        """Return the key text, for writing it into settings. Handle with care.

        A Fernet key exports as the bare key; other kinds as ``"<kind>:<key>"``.
        """
        bare = self._secret.decode("ascii")
        return bare if self.kind == "fernet" else f"{self.kind}:{bare}"

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, kind={self.kind!r}, secret={_REDACTED})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Rotation workers receive keyrings by pickling; the secret travels, the repr does not.
        return (Key, (self.id, self.export()))


def _new_aead(raw: bytes, key_id: str) -> AESGCMSIV:
    try:
        return AESGCMSIV(raw)
    except UnsupportedAlgorithm:
        raise ConfigurationError(
            f"key {key_id!r}: this build of cryptography has no AES-GCM-SIV (it needs OpenSSL "
            "3.2 or later); upgrade cryptography or use a Fernet key"
        ) from None


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

    __slots__ = ("_bound_heads", "_heads", "_keys", "primary")

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
        # Token header (up to its last ':') -> key: how decryption finds a key in one lookup.
        self._heads = {f"fc1:{kid}": key for kid, key in by_id.items()}
        self._bound_heads = {f"fc1:{kid}:{BOUND_FLAG}": key for kid, key in by_id.items()}

    @classmethod
    def parse(cls, text: str, *, primary: str | None = None, source: str = "keys") -> Keyring:
        """Build a keyring from ``"id:key,id:kind:key"`` text, the ``FIELDCRYPT_KEYS`` format.

        Each comma-separated entry is ``id:key`` (a Fernet key) or ``id:kind:key`` with a kind
        of :data:`KEY_KINDS`, e.g. ``k3:aes-gcm-siv:<key>``. The first entry is primary unless
        ``primary`` names another. ``source`` names the setting in error messages, which give
        the entry's position and id, never its key. Whitespace around entries is ignored.
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
                _parse_secret(secret, None)  # checked here so the error says where the entry is
            except ConfigurationError as reason:
                raise ConfigurationError(f"{where} (id {kid!r}): {reason}") from None
            keys.append(Key(kid, secret))
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

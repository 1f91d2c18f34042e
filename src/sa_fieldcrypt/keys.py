"""Keys and keyrings: which keys exist, what each is for, and which one is used now.

Every key has a *purpose*, given by its *kind*:

- ``encryption`` keys encrypt column values. Kind ``fernet`` (the default): a Fernet key,
  written as the bare url-safe base64 key. Kind ``aes-gcm-siv``: a 256-bit AES-GCM-SIV key
  (nonce-misuse resistant AEAD, about four times faster than Fernet), written as
  ``aes-gcm-siv:<url-safe base64 key>``. A keyring may mix the two, so moving to AEAD is an
  ordinary rotation.
- ``blind-index`` keys compute blind indexes (:class:`~sa_fieldcrypt.BlindIndex`). Kind
  ``hmac-sha256`` (the only one): 32 random bytes, written as the bare url-safe base64 key.

A :class:`Keyring` holds named keys of one purpose. Exactly one is the *primary*: it encrypts
every new value (or computes every new index value). The others are kept so that what was
written under them can still be read (or found) until ``fieldcrypt rotate`` (or
``fieldcrypt reindex``) has moved it to the primary key.

Key text is read by one parser, :func:`parse_key` (``Keyring.parse`` splits a settings string
on commas and calls it): ``[kind:]key``, where bare text is the purpose's default kind, or
``wrapped:<kind>:<Cloud KMS key name>:<ciphertext>``, a key wrapped by a Cloud KMS key
(:class:`WrappedKey`; see ``docs/kms.md``). A wrapped key becomes a :class:`Key` only through
an *unwrap* function (:data:`Unwrap`, e.g. :class:`sa_fieldcrypt.providers.kms.KmsKeyWrapper`)
given to the parser; without one it is refused, so no keyring ever holds a key it cannot use.

Typical usage::

    from sa_fieldcrypt import Keyring, generate_key

    keyring = Keyring({"k2": generate_key(), "k1": old_key})   # first entry is primary
    keyring = Keyring({"k3": generate_key("aes-gcm-siv"), "k2": fernet_key})
    keyring = Keyring.parse("k3:aes-gcm-siv:<key>,k2:<key>")   # the FIELDCRYPT_KEYS format
    index_keys = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeAlias, TypeVar, get_args

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from sa_fieldcrypt import metrics
from sa_fieldcrypt.errors import ConfigurationError, UnknownKeyError

__all__ = [
    "BOUND_FLAG",
    "DEFAULT_KINDS",
    "KEY_ID_PATTERN",
    "KEY_KINDS",
    "KMS_KEY_PATTERN",
    "PADDED_FLAG",
    "PADDED_INFO",
    "PURPOSES",
    "PURPOSE_KINDS",
    "ROW_FLAG",
    "WRAPPED_AAD_PREFIX",
    "WRAPPED_MARKER",
    "Key",
    "KeyCodec",
    "KeyKind",
    "Keyring",
    "Purpose",
    "Unwrap",
    "WrappedKey",
    "canonical_b64decode",
    "check_kms_key",
    "generate_key",
    "has_wrapped_entries",
    "is_fernet_token",
    "parse_key",
    "purpose_of",
    "show_key_id",
    "wrapped_associated_data",
]

#: Key ids are short, printable and safe inside a token header and a settings string.
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")

#: The kinds of key the library knows.
KeyKind = Literal["fernet", "aes-gcm-siv", "hmac-sha256"]
#: Every :data:`KeyKind`.
KEY_KINDS: tuple[KeyKind, ...] = get_args(KeyKind)
#: What a key is for: encrypting column values, or computing blind indexes.
Purpose = Literal["encryption", "blind-index"]
#: Every :data:`Purpose`.
PURPOSES: tuple[Purpose, ...] = get_args(Purpose)
#: The kinds that serve each purpose, its default first.
PURPOSE_KINDS: Mapping[Purpose, tuple[KeyKind, ...]] = {
    "encryption": ("fernet", "aes-gcm-siv"),
    "blind-index": ("hmac-sha256",),
}
#: The kind that bare key text (no ``kind:`` prefix) has, per purpose.
DEFAULT_KINDS: Mapping[Purpose, KeyKind] = {p: kinds[0] for p, kinds in PURPOSE_KINDS.items()}
_PURPOSE_OF: dict[str, Purpose] = {k: p for p, kinds in PURPOSE_KINDS.items() for k in kinds}


def purpose_of(kind: KeyKind) -> Purpose:
    """The purpose a key of ``kind`` serves: ``"encryption"`` or ``"blind-index"``."""
    return _PURPOSE_OF[kind]


#: Flag field of a context-bound token: ``fc1:<key_id>:c:<payload>``.
BOUND_FLAG = "c"
#: Flag field of a row-bound token (its context names the column and the row's primary key):
#: ``fc1:<key_id>:r:<payload>``.
ROW_FLAG = "r"
#: Flag letter of a padded token, after the binding's if any: ``fc1:<key_id>:cp:<payload>``
#: (``p`` alone for an unbound one).
PADDED_FLAG = "p"
#: What a padded token's binding information ends with (after the context, or alone).
PADDED_INFO = b"\x00p"
#: Bytes of the random nonce that starts every AES-GCM-SIV payload.
NONCE_SIZE = 12
#: Prefix of the HKDF ``info`` that derives a Fernet key for a context; the context follows.
FERNET_CONTEXT_INFO = b"sa-fieldcrypt/fc1/fernet-context:"

#: What starts the text of a key wrapped by Cloud KMS: ``wrapped:<kind>:<KMS key>:<ciphertext>``.
WRAPPED_MARKER = "wrapped"
#: What the associated data of a wrapped key starts with; see :func:`wrapped_associated_data`.
WRAPPED_AAD_PREFIX = b"sa-fieldcrypt/wrapped-key/v1"
#: A Cloud KMS symmetric key's name, as a wrapped key names the key that wraps it. Every part
#: is an id of letters, digits, ``_``, ``-`` (and ``.`` in project and location ids); none can
#: hold the ``:`` and ``,`` that separate entries and fields.
KMS_KEY_PATTERN = re.compile(
    r"projects/[A-Za-z0-9._-]{1,100}/locations/[A-Za-z0-9._-]{1,63}"
    r"/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}\Z"
)

_REDACTED = "<redacted>"
_V = TypeVar("_V")
_KEY_SIZE = 32
# Contexts and index names are column names, a handful per application; the bound keeps a
# program that makes up contexts per row from growing a cache without end.
_MAX_CACHED = 1024
_cache_lock = threading.Lock()

# url-safe alphabet in, standard alphabet out; '+' and '/' become invalid characters so that
# strict decoding accepts the url-safe alphabet only.
_FROM_URLSAFE = bytes.maketrans(b"-_+/", b"+/!!")
_FROM_STANDARD = bytes.maketrans(b"-_", b"!!")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
# The url-safe alphabet, then at most two '=' of padding: what a canonical payload may hold.
_URLSAFE_TEXT = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# The last character before "=" (or "=="): its low 2 (or 4) bits are unused and must be zero,
# or several texts would decode to the same bytes.
_LAST_BEFORE_ONE_PAD = frozenset("AEIMQUYcgkosw048")
_LAST_BEFORE_TWO_PADS = frozenset("AQgw")
_LAST_BYTES = {1: frozenset(b"AEIMQUYcgkosw048"), 2: frozenset(b"AQgw")}
# A Fernet token (its spec): version 0x80 || time (8) || IV (16) || AES-CBC ciphertext, one or
# more 16-byte blocks (PKCS7 always pads) || HMAC-SHA256 (32). So 57 + 16n bytes, n >= 1,
# which in padded base64 is at least 100 characters; 0x80 first makes the text start with "g"
# and then one of "A" to "P".
_FERNET_OVERHEAD = 1 + 8 + 16 + 32
_FERNET_MIN_TEXT = 100
_FERNET_SECOND = frozenset("ABCDEFGHIJKLMNOP")
_HMAC_SIZE = 32
# An AES-GCM-SIV payload: nonce || ciphertext (as long as the plaintext) || tag (16 bytes).
_AEAD_OVERHEAD = NONCE_SIZE + 16

_KEY_HELP = {
    "fernet": "the key is not a Fernet key (32 bytes in url-safe base64); "
    "generate one with `fieldcrypt keygen`",
    "aes-gcm-siv": "the key is not an aes-gcm-siv key (32 bytes, 256 bits, in url-safe "
    "base64); generate one with `fieldcrypt keygen --kind aes-gcm-siv`",
    "hmac-sha256": "the key is not an hmac-sha256 key (32 bytes in url-safe base64); "
    "generate one with `fieldcrypt keygen --kind hmac-sha256`",
}
_PURPOSE_NAMES: dict[Purpose, str] = {"encryption": "encryption", "blind-index": "blind indexes"}


def _a(kind: str) -> str:
    return f"{'a' if kind.startswith('f') else 'an'} {kind}"


def _unknown_kind(purpose: Purpose) -> str:
    default = DEFAULT_KINDS[purpose]
    return (
        f"the key kind is not known (known: {', '.join(KEY_KINDS)}); write the "
        f"key alone for {_a(default)} key, or '<kind>:<key>'"
    )


def _wrong_purpose(kind: KeyKind, purpose: Purpose) -> str:
    wanted = " or ".join(PURPOSE_KINDS[purpose])
    return (
        f"it is {_a(kind)} key, for {_PURPOSE_NAMES[_PURPOSE_OF[kind]]}, and this keyring is for "
        f"{_PURPOSE_NAMES[purpose]}: give it {_a(wanted)} key "
        f"(`fieldcrypt keygen --kind {DEFAULT_KINDS[purpose]}`)"
    )


def generate_key(kind: KeyKind = "fernet") -> str:
    """Return a new random key as text, as :func:`parse_key` and the settings take it.

    Args:
        kind: ``"fernet"`` gives a bare Fernet key (url-safe base64); ``"aes-gcm-siv"`` gives
            ``"aes-gcm-siv:<url-safe base64 of 32 random bytes>"``; ``"hmac-sha256"`` gives a
            bare blind-index key (url-safe base64 of 32 random bytes).
    """
    if kind == "fernet":
        return Fernet.generate_key().decode("ascii")
    if kind in KEY_KINDS:
        bare = base64.urlsafe_b64encode(os.urandom(_KEY_SIZE)).decode("ascii")
        return bare if kind == DEFAULT_KINDS[_PURPOSE_OF[kind]] else f"{kind}:{bare}"
    raise ConfigurationError(f"generate_key: kind must be one of {', '.join(KEY_KINDS)}")


def show_key_id(value: object) -> str:
    """Return how a message shows ``value``, given as a key id: quoted only if it is one.

    A well-formed key id (:data:`KEY_ID_PATTERN`, at most 32 characters) is quoted. Anything
    else may be a key pasted into an id's place, so it is described by its length (or type)
    and never quoted.
    """
    if isinstance(value, str) and KEY_ID_PATTERN.match(value):
        return repr(value)
    if isinstance(value, str):
        size = f"{len(value)} character{'' if len(value) == 1 else 's'}"
    else:
        size = f"a {type(value).__name__}"
    return f"<not a key id ({size}), not shown: it may be a key>"


def _check_key_id(key_id: object, where: str) -> str:
    """Return ``key_id`` if it matches :data:`KEY_ID_PATTERN`, else raise ConfigurationError.

    ``where`` starts the message, which never quotes the text: it is most likely a key typed
    into the id field (see :func:`show_key_id`).
    """
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id):
        raise ConfigurationError(
            f"{where}: key id {show_key_id(key_id)} is not valid; a key id is 1 to 32 "
            "characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return key_id


def _split_key_text(
    text: object, kind: str | None, purpose: Purpose | None
) -> tuple[KeyKind, bytes]:
    """Split ``[kind:]key`` text into its kind and raw key bytes; the one key-text reader.

    Raises ConfigurationError whose message is a reason only; callers say where. The message
    never quotes the text, which may be a key.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            text = ""
    if not isinstance(text, str):
        raise ConfigurationError("a key must be str or bytes")
    named, sep, rest = text.partition(":")
    if sep:
        named, text = named.strip(), rest
        if named == WRAPPED_MARKER:
            raise ConfigurationError(
                "the key is wrapped by Cloud KMS: read it with parse_key(..., unwrap=...) or "
                "from a provider that unwraps it (docs/kms.md)"
            )
        if named not in KEY_KINDS:
            # The text before the colon is part of the key text, so it is not quoted either.
            raise ConfigurationError(_unknown_kind(purpose or "encryption"))
        if kind is not None and kind != named:
            raise ConfigurationError(f"the key text says {named!r} but kind={kind!r} was given")
        kind = named
    elif kind is None:
        kind = DEFAULT_KINDS[purpose or "encryption"]
    elif kind not in KEY_KINDS:
        raise ConfigurationError(f"kind must be one of {', '.join(KEY_KINDS)}")
    if purpose is not None and _PURPOSE_OF[kind] != purpose:
        raise ConfigurationError(_wrong_purpose(kind, purpose))
    text = text.strip()
    try:
        # Only the canonical spelling is accepted: lenient base64 would take a key with a stray
        # character appended (a copy-paste slip) for the key itself.
        raw = canonical_b64decode(text)
    except ValueError:  # binascii.Error and non-ASCII text are both ValueErrors
        raw = b""
    if len(raw) != _KEY_SIZE:
        raise ConfigurationError(_KEY_HELP[kind])
    return kind, raw


def parse_key(
    text: str | bytes,
    *,
    purpose: Purpose = "encryption",
    key_id: str | None = None,
    unwrap: Unwrap | None = None,
) -> Key:
    """Read one key from its text: the parser behind every setting, payload and keyring.

    Args:
        text: with ``key_id`` given, ``[kind:]key`` (a Secret Manager payload, a single-key
            setting); without, ``id:[kind:]key`` (one entry of ``FIELDCRYPT_KEYS``). Bare key
            text is the purpose's default kind (:data:`DEFAULT_KINDS`). Whitespace around
            the key is ignored; the key itself must be canonical url-safe base64. Either form
            may hold, in place of ``[kind:]key``, a wrapped key:
            ``wrapped:<kind>:<Cloud KMS key name>:<url-safe base64 ciphertext>``.
        purpose: what the key must be for; a key of another purpose is refused.
        key_id: the key's id, when the text does not start with it.
        unwrap: what opens a wrapped key (:data:`Unwrap`), called once per wrapped key with
            its :class:`WrappedKey`; a wrapped key without it is refused.

    Raises:
        ConfigurationError: the id, kind or key is malformed, the kind serves another
            purpose, or the key is wrapped and no ``unwrap`` is given. The message names the
            id (and a wrapped key's KMS key), never the key text or the ciphertext.
        KeyProviderError: ``unwrap`` could not open a wrapped key (raised by ``unwrap``).
    """
    if key_id is None:
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        head, sep, text = text.partition(":")
        key_id = head.strip()
        if not sep or not key_id:
            raise ConfigurationError("the entry is not of the form 'id:key'")
    wrapped = _read_wrapped(text, key_id, purpose)
    if wrapped is None:
        return Key(key_id, text, purpose=purpose)
    if unwrap is None:
        raise ConfigurationError(
            f"key {key_id!r} is wrapped by Cloud KMS key {wrapped.kms_key!r}, and nothing here "
            "unwraps keys: load it through a provider with a KMS client (EnvKeyProvider, "
            "GoogleSecretManagerKeyProvider; the gcp extra), or pass unwrap= (docs/kms.md)"
        )
    key = unwrap(wrapped)
    if not isinstance(key, Key) or key.wrapped is not wrapped:
        # The unwrapper must build the key with WrappedKey.open, which carries id, kind and
        # purpose over: nothing else may decide what a wrapped key is.
        raise ConfigurationError(
            f"key {key_id!r}: unwrap= returned {type(key).__name__}, not the Key that "
            "WrappedKey.open built"
        )
    return key


def has_wrapped_entries(text: str) -> bool:
    """Whether keyring text (``FIELDCRYPT_KEYS``) holds an entry ``id:wrapped:...``.

    True exactly when :meth:`Keyring.parse` would need ``unwrap=``: entries and fields are
    split as the parser splits them, whitespace around each ignored alike.
    """
    for entry in text.split(","):
        _, sep, rest = entry.partition(":")
        if sep and _is_wrapped_text(rest):
            return True
    return False


def _is_wrapped_text(text: str) -> bool:
    """Whether key text (no id) is ``wrapped:...``: the one test of the parser and its callers."""
    marker, sep, _ = text.strip().partition(":")
    return bool(sep) and marker.strip() == WRAPPED_MARKER


def check_kms_key(name: object, where: str = "wrap") -> str:
    """Return ``name`` if it is a Cloud KMS symmetric key's name (:data:`KMS_KEY_PATTERN`).

    Args:
        name: what should be ``projects/P/locations/L/keyRings/R/cryptoKeys/K``.
        where: how the message names the value (a parameter, a setting, an option).

    Raises:
        ConfigurationError: it is not such a name (a key version's name, say).
    """
    if isinstance(name, str) and KMS_KEY_PATTERN.match(name):
        return name
    shown = repr(name) if isinstance(name, str) and len(name) <= 300 else "the value"
    version = ""
    if "/cryptoKeyVersions/" in str(name):
        version = " (name the key, not one of its versions)"
    raise ConfigurationError(
        f"{where}: {shown} is not a Cloud KMS key name{version}; expected "
        "projects/P/locations/L/keyRings/R/cryptoKeys/K"
    )


def wrapped_associated_data(key_id: str, kind: KeyKind) -> bytes:
    """The associated data that binds a wrapped key to its id, purpose and kind.

    ``b"sa-fieldcrypt/wrapped-key/v1" 0x00 purpose 0x00 kind 0x00 key_id``, all ASCII (none of
    the three holds a zero byte, so no two triples give the same bytes). Cloud KMS opens the
    ciphertext only with the same bytes, so a wrapped key moved to another id, purpose or
    kind fails to unwrap instead of becoming that key.

    Raises:
        ConfigurationError: a malformed key id or an unknown kind.
    """
    _check_key_id(key_id, "wrapped_associated_data")
    if kind not in KEY_KINDS:
        raise ConfigurationError(f"kind must be one of {', '.join(KEY_KINDS)}")
    return b"\x00".join(
        [WRAPPED_AAD_PREFIX, _PURPOSE_OF[kind].encode(), kind.encode(), key_id.encode()]
    )


def _read_wrapped(text: str | bytes, key_id: str, purpose: Purpose) -> WrappedKey | None:
    """The wrapped key that ``text`` holds, or None when it holds a plain key."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None  # not wrapped text; the key reader refuses it
    if not isinstance(text, str):
        return None
    if not _is_wrapped_text(text):
        return None
    _, _, rest = text.partition(":")
    _check_key_id(key_id, "Key")
    where = f"key {key_id!r}"
    kind, _, rest = rest.partition(":")
    kind = kind.strip()
    if kind not in KEY_KINDS:
        raise ConfigurationError(
            f"{where}: a wrapped key is 'wrapped:<kind>:<KMS key name>:<ciphertext>', and its "
            f"kind is not known (known: {', '.join(KEY_KINDS)})"
        )
    if _PURPOSE_OF[kind] != purpose:
        raise ConfigurationError(f"{where}: {_wrong_purpose(kind, purpose)}")
    kms_key, sep, ciphertext = rest.rpartition(":")
    kms_key = kms_key.strip()
    if not sep or not KMS_KEY_PATTERN.match(kms_key):
        # The name is not quoted: a malformed entry may be a key pasted in the wrong place.
        raise ConfigurationError(
            f"{where}: a wrapped key names its Cloud KMS key as "
            "projects/P/locations/L/keyRings/R/cryptoKeys/K, and this one does not"
        )
    try:
        raw = canonical_b64decode(ciphertext.strip())
    except ValueError:
        raw = b""
    if not raw:
        raise ConfigurationError(
            f"{where}: the wrapped key's ciphertext is not canonical url-safe base64; copy the "
            "entry again from `fieldcrypt keygen --wrap` or `fieldcrypt keys rewrap`"
        )
    return WrappedKey(key_id, kind, kms_key, raw)


def canonical_b64decode(text: str | bytes, *, urlsafe: bool = True) -> bytes:
    """Decode canonical base64 with padding; raises ValueError for any other text.

    Canonical: only the alphabet (url-safe by default, else the standard one of
    ``base64.b64encode``), the padding that the length needs, and zero unused bits in the
    last character, so that encoding the result again gives ``text`` back. Every byte string
    then has exactly one spelling, and an edited payload never decodes to the bytes of the
    original.
    """
    if isinstance(text, str):
        text = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    # Strict mode refuses other characters, missing or misplaced padding, and data after it.
    alphabet = _FROM_URLSAFE if urlsafe else _FROM_STANDARD
    raw = binascii.a2b_base64(text.translate(alphabet), strict_mode=True)
    # It still takes padding after a whole group ("AAAA==") and ignores unused bits ("QR=="
    # decodes as "QQ==" does): only the canonical length and zero unused bits are left.
    if len(text) != (len(raw) + 2) // 3 * 4:
        raise ValueError("base64 text with extra padding")
    pads = -len(raw) % 3  # what that length needs, and so what the text has
    if pads and text[-1 - pads] not in _LAST_BYTES[pads]:
        raise ValueError("base64 text with non-zero unused bits")
    return raw


def is_fernet_token(text: str | bytes) -> bool:
    """Whether ``text`` is shaped as a Fernet token, in canonical url-safe base64.

    Checked from the text alone, before any cryptography: the url-safe alphabet with the
    padding its length needs and zero unused bits in the last character (the one spelling of
    its bytes), the version byte 0x80, and a decoded length of ``57 + 16n`` bytes with
    ``n >= 1`` (version, time, IV, whole AES blocks, HMAC). Legacy tokens are tried against
    the keys only when it holds, and every Fernet payload is checked with it before Fernet
    reads it.
    """
    if not isinstance(text, str):
        if not isinstance(text, bytes):
            return False
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return False
    size = len(text)
    if (
        size < _FERNET_MIN_TEXT
        or size % 4
        or text[0] != "g"
        or text[1] not in _FERNET_SECOND
        or _URLSAFE_TEXT.fullmatch(text) is None
    ):
        return False
    if text[-1] != "=":
        pads = 0
    elif text[-2] != "=":
        pads = 1
        if text[-2] not in _LAST_BEFORE_ONE_PAD:
            return False
    else:
        pads = 2
        if text[-3] not in _LAST_BEFORE_TWO_PADS:
            return False
    return (size // 4 * 3 - pads - _FERNET_OVERHEAD) % 16 == 0


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

    def encrypt_with_nonce(self, data: bytes, nonce: bytes) -> str:
        """Encrypt with a given AES-GCM-SIV nonce: unsafe, a seam for the RFC 8452 vectors.

        Raises:
            TypeError: the codec is not an aes-gcm-siv one.
        """
        raise TypeError("encrypt_with_nonce needs an aes-gcm-siv key")

    def encrypt_with_iv(self, data: bytes, current_time: int, iv: bytes) -> str:
        """Encrypt with a given Fernet time and IV: unsafe, a seam for the Fernet spec vectors.

        Raises:
            TypeError: the codec is not a Fernet one.
        """
        raise TypeError("encrypt_with_iv needs a Fernet key")

    def signed(self, token: bytes) -> bool:
        """Whether this Fernet key signed a decoded Fernet token (its HMAC is checked).

        The seam of legacy trial decryption: the token is decoded once, and each key costs
        one HMAC over it instead of a base64 decoding and an HMAC. The comparison is constant
        time. It says nothing of the rest of the token; :attr:`decrypt` still checks all.

        Raises:
            TypeError: the codec is not a Fernet one.
        """
        raise TypeError("signed needs a Fernet key")


class _FernetCodec(KeyCodec):
    __slots__ = ("_encrypt", "_signing_key", "fernet")

    def __init__(self, raw: bytes, token_prefix: str):
        self.fernet = fernet = Fernet(base64.urlsafe_b64encode(raw))
        self.token_prefix = token_prefix
        # The spec's key layout: the signing key is the first half.
        self._signing_key = raw[:16]
        self._encrypt = fernet.encrypt
        fernet_decrypt = fernet.decrypt

        def decrypt(payload: str | bytes) -> bytes:
            # Fernet's own base64 decoding skips characters outside the alphabet and ignores
            # unused bits, so an edited payload could still decrypt: refuse any but the one
            # canonical spelling first.
            if not is_fernet_token(payload):
                raise InvalidToken
            return fernet_decrypt(payload)

        self.decrypt = decrypt

    def encrypt(self, data: bytes) -> str:
        return self._encrypt(data).decode("ascii")

    def encrypt_with_iv(self, data: bytes, current_time: int, iv: bytes) -> str:
        return self.fernet._encrypt_from_parts(data, current_time, iv).decode("ascii")

    def signed(self, token: bytes) -> bool:
        mac = hmac.digest(self._signing_key, memoryview(token)[:-_HMAC_SIZE], "sha256")
        return hmac.compare_digest(mac, token[-_HMAC_SIZE:])


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
        return self.encrypt_with_nonce(data, os.urandom(NONCE_SIZE))

    def encrypt_with_nonce(self, data: bytes, nonce: bytes) -> str:
        try:
            sealed = self._seal(nonce, data, self._associated_data)
        except ValueError:
            if data or len(nonce) != NONCE_SIZE or not self._refuses_empty_messages():
                raise
            raise _empty_messages_refused() from None
        return _urlsafe_b64encode(nonce + sealed)

    def _decrypt(self, payload: str | bytes) -> bytes:
        try:
            raw = canonical_b64decode(payload)
            if len(raw) < _AEAD_OVERHEAD:
                raise InvalidToken
            return self._open(raw[:NONCE_SIZE], raw[NONCE_SIZE:], self._associated_data)
        except (InvalidTag, ValueError, TypeError):
            # One failure for every malformed or forged payload, as Fernet has (and for an
            # empty value's token where OpenSSL is older than 3.5: see _empty_messages_refused).
            raise InvalidToken from None

    def _refuses_empty_messages(self) -> bool:
        try:
            self._seal(bytes(NONCE_SIZE), b"", None)
        except ValueError:
            return True
        return False


def _empty_messages_refused() -> ConfigurationError:
    # cryptography's wheels from 45.0.1 on bundle OpenSSL 3.5, which seals and opens empty
    # messages; a build linked against an older OpenSSL refuses them.
    return ConfigurationError(
        "this cryptography build links an OpenSSL older than 3.5, which cannot encrypt or "
        "decrypt an empty value with an aes-gcm-siv key: install cryptography 45.0.1 or newer "
        "from its wheels (or link it against OpenSSL 3.5 or newer), or encrypt with a fernet key"
    )


class _RefusingCodec(KeyCodec):
    """The codec of a key that does not encrypt (a blind-index key): every use is refused."""

    __slots__ = ("_message",)

    def __init__(self, key_id: str, kind: str, token_prefix: str):
        self.token_prefix = token_prefix
        self._message = (
            f"key {key_id!r} is {_a(kind)} key, for blind indexes: it cannot encrypt or "
            "decrypt; give encrypted columns a keyring of encryption keys (fernet or "
            "aes-gcm-siv)"
        )
        self.decrypt = self._refuse

    def encrypt(self, data: bytes) -> str:
        self._refuse(data)

    def _refuse(self, data: object) -> NoReturn:
        raise ConfigurationError(self._message)


@dataclass(frozen=True, slots=True, repr=False)
class WrappedKey:
    """A key encrypted ("wrapped") by a Cloud KMS symmetric key: what a wrapped entry holds.

    It is not a key: it encrypts nothing until an unwrapper (:data:`Unwrap`) has had Cloud
    KMS decrypt it and built the :class:`Key` with :meth:`open`. Its ``repr`` shows the id,
    kind and KMS key, never the ciphertext.

    Attributes:
        key_id: the id of the key inside.
        kind: the kind of the key inside.
        kms_key: the Cloud KMS key that wraps it, ``projects/P/locations/L/keyRings/R/
            cryptoKeys/K``.
        ciphertext: what Cloud KMS returned from ``Encrypt`` (it names the KMS key version).
    """

    key_id: str
    kind: KeyKind
    kms_key: str
    ciphertext: bytes

    @property
    def purpose(self) -> Purpose:
        """What the key inside is for, as its kind says."""
        return _PURPOSE_OF[self.kind]

    @property
    def associated_data(self) -> bytes:
        """The bytes KMS must be given to open it: :func:`wrapped_associated_data`."""
        return wrapped_associated_data(self.key_id, self.kind)

    @property
    def text(self) -> str:
        """Its key text, ``wrapped:<kind>:<kms_key>:<url-safe base64 ciphertext>``."""
        return f"{WRAPPED_MARKER}:{self.kind}:{self.kms_key}:{_urlsafe_b64encode(self.ciphertext)}"

    @property
    def entry(self) -> str:
        """Its entry in keyring text (``FIELDCRYPT_KEYS``): ``<key_id>:`` then :attr:`text`."""
        return f"{self.key_id}:{self.text}"

    def open(self, raw: bytes) -> Key:
        """Build the key from the bytes KMS decrypted; for unwrappers only.

        Raises:
            ConfigurationError: ``raw`` is not a key of this kind (32 bytes).
        """
        if len(raw) != _KEY_SIZE:
            raise ConfigurationError(
                f"key {self.key_id!r}: what Cloud KMS key {self.kms_key!r} unwrapped is not a "
                f"{_KEY_SIZE}-byte key; the entry was not made by `fieldcrypt keygen --wrap`"
            )
        key = Key(self.key_id, _urlsafe_b64encode(raw), self.kind)
        key.wrapped = self
        return key

    def __repr__(self) -> str:
        return (
            f"WrappedKey(key_id={self.key_id!r}, kind={self.kind!r}, kms_key={self.kms_key!r}, "
            f"ciphertext={_REDACTED})"
        )

    __str__ = __repr__


#: What opens a wrapped key: given the :class:`WrappedKey`, returns ``wrapped.open(...)`` of
#: the bytes Cloud KMS decrypted, or raises :class:`~sa_fieldcrypt.errors.KeyProviderError`.
Unwrap: TypeAlias = Callable[[WrappedKey], "Key"]


class Key:
    """One named key: an encryption key (``fernet``, ``aes-gcm-siv``) or a blind-index key.

    The secret never appears in ``repr`` or ``str``. Use :meth:`export` to get it on purpose.
    Most code reads keys with :func:`parse_key` or builds a :class:`Keyring` from text.

    Args:
        key_id: the id written into every token (or index value) this key writes.
        secret: the key text, as :func:`generate_key` returns it: ``[kind:]key``.
        kind: the key's kind, when ``secret`` does not say it.
        purpose: what the key must be for; bare text is this purpose's default kind
            (with neither ``kind`` nor ``purpose``, bare text is a Fernet key).

    Attributes:
        id: the key id.
        kind: ``"fernet"``, ``"aes-gcm-siv"`` or ``"hmac-sha256"``.
        purpose: ``"encryption"`` or ``"blind-index"``, as the kind says.
        token_prefix: ``"fc1:<id>:"``, the header of the unbound tokens this key writes.
        codec: the :class:`KeyCodec` of unbound tokens.
        encrypt: encrypt bytes without a context; returns the payload (no header).
        decrypt: decrypt an unbound payload; raises ``cryptography.fernet.InvalidToken``.
        decrypt_counter: advanced once per value this key decrypts (read by
            :mod:`sa_fieldcrypt.metrics`); shared by every key object with this id.
        wrapped: the :class:`WrappedKey` it was unwrapped from, or None for a key read in
            plaintext.

    Raises:
        ConfigurationError: a malformed id or key, or a kind of another purpose. The message
            names the id, never the key. A blind-index key's ``encrypt``, ``decrypt`` and
            :meth:`for_context` raise it too: it cannot encrypt.
    """

    __slots__ = (
        "_aead",
        "_contexts",
        "_derived",
        "_prk",
        "_raw",
        "codec",
        "decrypt",
        "decrypt_counter",
        "encrypt",
        "id",
        "kind",
        "purpose",
        "token_prefix",
        "wrapped",
    )

    id: str
    kind: KeyKind
    purpose: Purpose
    token_prefix: str
    wrapped: WrappedKey | None
    codec: KeyCodec
    encrypt: Callable[[bytes], str]
    decrypt: Callable[[str | bytes], bytes]

    def __init__(
        self,
        key_id: str,
        secret: str | bytes,
        kind: KeyKind | None = None,
        *,
        purpose: Purpose | None = None,
    ):
        self.id = _check_key_id(key_id, "Key")
        try:
            self.kind, self._raw = _split_key_text(secret, kind, purpose)
        except ConfigurationError as exc:
            raise ConfigurationError(f"key {key_id!r}: {exc}") from None
        self.purpose = _PURPOSE_OF[self.kind]
        self.wrapped = None
        self.token_prefix = f"fc1:{self.id}:"
        # Everything per key is built once here: parsing a key or constructing a cipher
        # must stay off the per-value path.
        self._aead: AESGCMSIV | None = None
        if self.kind == "fernet":
            self.codec = _FernetCodec(self._raw, self.token_prefix)
        elif self.kind == "aes-gcm-siv":
            self._aead = _new_aead(self._raw, key_id)
            self.codec = _AeadCodec(self._aead, None, self.token_prefix)
        else:
            self.codec = _RefusingCodec(self.id, self.kind, self.token_prefix)
        self.encrypt = self.codec.encrypt
        self.decrypt = self.codec.decrypt
        self._contexts: dict[tuple[str | None, bool], KeyCodec] = {}
        self._derived: dict[bytes, bytes] = {}
        # HKDF-Extract without a salt depends on the key alone: done once, so that a
        # derivation (per row, for row-bound values) costs one HMAC.
        self._prk = hmac.digest(bytes(_KEY_SIZE), self._raw, "sha256")
        # Shared by every Key with this id, so counts survive a keyring reload.
        self.decrypt_counter = metrics.key_counter(self.id)

    def derive(self, info: bytes) -> bytes:
        """Return 32 bytes derived from the key with HKDF-SHA256 and ``info``, cached.

        Derives the per-context Fernet keys (``FERNET_CONTEXT_INFO`` + context) and the
        per-column blind-index keys; a different ``info`` gives an unrelated key.
        """
        derived = self._derived.get(info)
        if derived is None:
            derived = self._expand(info)
            _bounded_put(self._derived, info, derived)
        return derived

    def _expand(self, info: bytes) -> bytes:
        # HKDF-Expand (RFC 5869) of 32 bytes, one block: HMAC(PRK, info || 0x01). With the
        # extract step above, exactly HKDF-SHA256(key, salt=None, info).
        return hmac.digest(self._prk, info + b"\x01", "sha256")

    def for_context(self, context: str | None, padded: bool = False) -> KeyCodec:
        """Return the codec that binds values to ``context``, built once and then cached.

        An ``aes-gcm-siv`` key authenticates the UTF-8 context as associated data. A Fernet
        key encrypts under a per-context Fernet key derived with HKDF-SHA256 (see
        ``docs/token-format.md``). Either way its tokens start ``fc1:<id>:c:``.

        ``padded``: the codec of padded values, whose binding information ends with
        :data:`PADDED_INFO`, so that a padded token cannot pass for an unpadded one (its
        tokens start ``fc1:<id>:cp:``). With ``context`` None, the unbound padded codec
        (``fc1:<id>:p:``); the unbound unpadded one is :attr:`codec`.
        """
        codec = self._contexts.get((context, padded))
        if codec is None:
            if context is None and not padded:
                return self.codec
            codec = _bounded_put(
                self._contexts, (context, padded), self._codec_for(context, None, padded)
            )
        return codec

    def for_row(self, context: str, row: bytes, padded: bool = False) -> KeyCodec:
        """Return the codec that binds values to ``context`` and one row, not cached.

        ``row`` is the row's primary key as :func:`sa_fieldcrypt.cipher.row_key_bytes`
        encodes it. The associated data (or, for a Fernet key, the HKDF ``info`` after
        ``FERNET_CONTEXT_INFO``) is the UTF-8 context, a zero byte and ``row`` (then
        :data:`PADDED_INFO` when ``padded``); its tokens start ``fc1:<id>:r:`` (``rp``).
        Nothing is cached: there is a codec per row.
        """
        if context is None:
            raise ConfigurationError("a row is bound within a context; give one")
        return self._codec_for(context, row, padded)

    def _codec_for(self, context: str | None, row: bytes | None, padded: bool) -> KeyCodec:
        if self.purpose != "encryption":
            self.encrypt(b"")  # raises the refusal
        if context is None:
            info, flag = b"", ""
        else:
            if not isinstance(context, str) or not context:
                raise ConfigurationError(
                    "a context is a non-empty str, such as 'schema.table.column'"
                )
            try:
                info = context.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigurationError("a context must be encodable as UTF-8") from None
            if b"\x00" in info:
                raise ConfigurationError("a context cannot hold a zero character")
            flag = BOUND_FLAG
        if row is not None:
            # A context never holds a zero byte, so the row's part cannot be mistaken for it;
            # netstrings start with a digit, so it cannot be mistaken for the padded marker.
            info = b"%s\x00%s" % (info, row)
            flag = ROW_FLAG
        if padded:
            info += PADDED_INFO
            flag += PADDED_FLAG
        prefix = f"{self.token_prefix}{flag}:"
        if self._aead is not None:
            return _AeadCodec(self._aead, info, prefix)
        info = FERNET_CONTEXT_INFO + info
        # Per-row keys are derived each time: caching them would evict the columns' own.
        raw = self.derive(info) if row is None else self._expand(info)
        return _FernetCodec(raw, prefix)

    def shares_secret_with(self, other: Key) -> bool:
        """Whether ``other`` holds the same key bytes (compared in constant time)."""
        return hmac.compare_digest(self._raw, other._raw)

    def material(self) -> bytes:
        """Return the raw key bytes, for wrapping them (Cloud KMS). Handle with care."""
        return self._raw

    def export(self) -> str:
        """Return the key text, for writing it into settings. Handle with care.

        A key of its purpose's default kind (``fernet``, ``hmac-sha256``) exports as the bare
        key; other kinds as ``"<kind>:<key>"``.
        """
        bare = base64.urlsafe_b64encode(self._raw).decode("ascii")
        return bare if self.kind == DEFAULT_KINDS[self.purpose] else f"{self.kind}:{bare}"

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, kind={self.kind!r}, secret={_REDACTED})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Rotation workers receive keyrings by pickling; the secret travels, the repr does not.
        return (Key, (self.id, self.export(), self.kind))


def _bounded_put(cache: dict[Any, _V], name: object, value: _V) -> _V:
    with _cache_lock:
        if len(cache) >= _MAX_CACHED:
            cache.pop(next(iter(cache)))
        return cache.setdefault(name, value)


def _new_aead(raw: bytes, key_id: str) -> AESGCMSIV:
    try:
        return AESGCMSIV(raw)
    except UnsupportedAlgorithm:
        raise ConfigurationError(
            f"key {key_id!r}: this build of cryptography has no AES-GCM-SIV (it needs OpenSSL "
            "3.2 or later); upgrade cryptography or use a Fernet key"
        ) from None


class Keyring:
    """A set of named keys of one purpose, with exactly one primary key.

    Args:
        keys: either a mapping of key id to key text (insertion order kept; bare text is
            the purpose's default kind), or :class:`Key` objects.
        primary: the id of the key that writes (encrypts, or computes index values); by
            default the first key.
        purpose: ``"encryption"`` (column keys) or ``"blind-index"``; every key must serve it.

    Attributes:
        primary: the key that writes.
        purpose: what the keys are for.
        token_heads: token header up to its last ``:`` (``"fc1:<id>"``) to key, for unbound
            tokens: how decryption finds a key in one lookup. Read it, never change it.
        bound_token_heads: the same for context-bound tokens (``"fc1:<id>:c"``).
        row_token_heads: the same for row-bound tokens (``"fc1:<id>:r"``).
        padded_token_heads: padded tokens' headers (``"fc1:<id>:p"``, ``"fc1:<id>:cp"``,
            ``"fc1:<id>:rp"``) to the key and the binding letter (``""``, ``"c"``, ``"r"``).

    Raises:
        ConfigurationError: no keys, a duplicate or invalid id, one secret under two ids, two
            blind-index key ids that differ only in case (MySQL and MariaDB compare index
            values case-insensitively), a malformed key, a key of another purpose, or a
            ``primary`` that is not among the keys. The message names the ids, never a key.
    """

    __slots__ = (
        "_keys",
        "bound_token_heads",
        "padded_token_heads",
        "primary",
        "purpose",
        "row_token_heads",
        "token_heads",
    )

    primary: Key
    purpose: Purpose
    token_heads: Mapping[str, Key]
    bound_token_heads: Mapping[str, Key]
    row_token_heads: Mapping[str, Key]
    padded_token_heads: Mapping[str, tuple[Key, str]]

    def __init__(
        self,
        keys: Mapping[str, str | bytes] | Iterable[Key],
        *,
        primary: str | None = None,
        purpose: Purpose = "encryption",
    ):
        if purpose not in PURPOSES:
            raise ConfigurationError(f"Keyring: purpose must be one of {', '.join(PURPOSES)}")
        if isinstance(keys, Mapping):
            built = [
                parse_key(secret, purpose=purpose, key_id=_check_key_id(kid, "Keyring"))
                for kid, secret in keys.items()
            ]
        else:
            built = list(keys)
        by_id: dict[str, Key] = {}
        folded: dict[str, str] = {}
        # By a digest of each secret: the secrets themselves are never keys of a dict.
        secrets: dict[bytes, str] = {}
        for position, key in enumerate(built, start=1):
            if not isinstance(key, Key):
                raise ConfigurationError(f"Keyring: entry {position} is not a Key")
            if key.purpose != purpose:
                raise ConfigurationError(
                    f"Keyring: key {key.id!r} cannot join: {_wrong_purpose(key.kind, purpose)}"
                )
            if key.id in by_id:
                raise ConfigurationError(f"Keyring: key id {key.id!r} appears more than once")
            # MySQL and MariaDB compare text case-insensitively by default, so a lookup could
            # not tell such index values apart. Tokens are matched case-sensitively (rotation
            # counts ids exactly), so encryption keyrings may hold them.
            twin = folded.setdefault(key.id.lower(), key.id)
            if twin != key.id and purpose == "blind-index":
                raise ConfigurationError(
                    f"Keyring: key ids {twin!r} and {key.id!r} differ only in case; rename one"
                )
            # One secret under two ids would open a token relabelled from one id to the other
            # (an index value, for blind-index keys), and count it under the wrong key.
            same = secrets.setdefault(hashlib.sha256(key._raw).digest(), key.id)
            if same != key.id:
                raise ConfigurationError(
                    f"Keyring: keys {same!r} and {key.id!r} hold the same secret; keep it under "
                    "one id only (legacy tokens, which name no key, are read by every Fernet "
                    "key), or generate a new key for the other"
                )
            by_id[key.id] = key
        if not by_id:
            raise ConfigurationError("Keyring: no keys given; a keyring needs at least one key")
        if primary is None:
            primary = built[0].id
        elif primary not in by_id:
            raise ConfigurationError(
                f"Keyring: primary key id {show_key_id(primary)} is not in the keyring "
                f"(ids: {', '.join(by_id)}); give the id of one of its keys"
            )
        self._keys = by_id
        self.primary = by_id[primary]
        self.purpose = purpose
        # Only encryption keys decrypt; a blind-index keyring's tokens go the long way, which
        # reports the refusal instead of a failed decryption.
        encrypting = {} if purpose != "encryption" else by_id
        self.token_heads = {f"fc1:{kid}": key for kid, key in encrypting.items()}
        self.bound_token_heads = {f"fc1:{kid}:{BOUND_FLAG}": key for kid, key in encrypting.items()}
        self.row_token_heads = {f"fc1:{kid}:{ROW_FLAG}": key for kid, key in encrypting.items()}
        self.padded_token_heads = {
            f"fc1:{kid}:{binding}{PADDED_FLAG}": (key, binding)
            for kid, key in encrypting.items()
            for binding in ("", BOUND_FLAG, ROW_FLAG)
        }

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        purpose: Purpose = "encryption",
        primary: str | None = None,
        source: str = "keys",
        unwrap: Unwrap | None = None,
    ) -> Keyring:
        """Build a keyring from ``"id:key,id:kind:key"`` text, as ``FIELDCRYPT_KEYS`` holds it.

        Each comma-separated entry is read by :func:`parse_key`: ``id:key`` (the purpose's
        default kind) or ``id:kind:key``, e.g. ``k3:aes-gcm-siv:<key>``, or a wrapped key
        ``id:wrapped:<kind>:<KMS key>:<ciphertext>``, opened by ``unwrap`` (one call per
        wrapped entry). The first entry is primary unless ``primary`` names another.
        ``source`` names the setting in error messages, which give the entry's position and
        id, never its key. Whitespace around entries is ignored.
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
                keys.append(parse_key(secret, purpose=purpose, key_id=kid, unwrap=unwrap))
            except ConfigurationError as exc:
                reason = str(exc).removeprefix(f"key {kid!r}: ")
                raise ConfigurationError(f"{where} (id {kid!r}): {reason}") from None
        try:
            return cls(keys, primary=primary, purpose=purpose)
        except ConfigurationError as exc:
            raise ConfigurationError(str(exc).replace("Keyring", source, 1)) from None

    def get(self, key_id: str) -> Key:
        """Return the key with id ``key_id``; raises :class:`UnknownKeyError` if absent."""
        try:
            return self._keys[key_id]
        except (KeyError, TypeError):
            # Only a well-formed id is named, here and in the error's key_id (see show_key_id).
            named = key_id if isinstance(key_id, str) and KEY_ID_PATTERN.match(key_id) else None
            raise UnknownKeyError(
                f"no key with id {show_key_id(key_id)} in the keyring "
                f"(ids: {', '.join(self._keys)}); add the key that wrote this value back to the "
                "keyring",
                key_id=named,
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
        return Keyring(self._keys.values(), primary=key_id, purpose=self.purpose)

    def without(self, key_id: str) -> Keyring:
        """Return a keyring without ``key_id``; the primary key cannot be removed."""
        if key_id == self.primary.id:
            raise ConfigurationError(
                f"key {key_id!r} is the primary key; make another key primary before removing it"
            )
        self.get(key_id)
        return Keyring(
            [k for k in self._keys.values() if k.id != key_id],
            primary=self.primary.id,
            purpose=self.purpose,
        )

    def export(self) -> str:
        """Return the keyring as settings text (``FIELDCRYPT_KEYS``), primary first.

        Handle with care: it holds the keys.
        """
        ordered = [self.primary, *(k for k in self._keys.values() if k is not self.primary)]
        return ",".join(f"{k.id}:{k.export()}" for k in ordered)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return (
            f"Keyring(purpose={self.purpose!r}, primary={self.primary.id!r}, "
            f"ids={list(self._keys)!r})"
        )

    __str__ = __repr__

"""Blind indexes: keyed hashes of normalized plaintext, so encrypted columns can be queried.

Encryption is randomized, so the database cannot compare two encrypted values. A blind index
stores, next to the encrypted column, ``HMAC-SHA256(column key, normalize(plaintext))``: equal
normalized values give equal index values, which SQL can compare and a unique index can
constrain, while the plaintext stays unreadable without the key.

Typical usage (through :func:`~sa_fieldcrypt.encrypted_hybrid`, which keeps the index in step
with the value)::

    from sa_fieldcrypt import BLIND_INDEX_LENGTH, BlindIndex, encrypted_hybrid, normalize_email

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email_encrypted: Mapped[str] = mapped_column(Text)
        email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        email = encrypted_hybrid(
            "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
        )

    session.scalars(select(Customer).where(Customer.email == " Ada@Example.com"))

Stored format: ``<key id>:<64 lowercase hex digits>``, for example ``b1:3f0c...``. Hex, not
base64, because MySQL and MariaDB compare strings case-insensitively by default. The key id
says which index key wrote the value, so a rotation's progress can be counted in SQL.

Keys: blind-index keys are separate from the encryption keys. Each column gets its own key,
derived with HKDF-SHA256 from the configured key and the column's *index name* (by default
``table.column`` of the index column), so two columns holding the same plaintext never share
index values. Several keys may be active at once: the first one writes, every one of them
matches (``IN (...)``), which is how the index key rotates without downtime.
"""

from __future__ import annotations

import base64
import copy
import hmac
import logging
import os
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sa_fieldcrypt.errors import (
    ConfigurationError,
    ValueTypeError,
)
from sa_fieldcrypt.keys import _check_key_id, _parse_secret, _urlsafe_b64decode
from sa_fieldcrypt.providers.base import KeyCache
from sa_fieldcrypt.providers.env import keyring_from_settings

if TYPE_CHECKING:
    from sa_fieldcrypt.settings import FieldCryptSettings

__all__ = [
    "BLIND_INDEX_LENGTH",
    "SINGLE_KEY_ID",
    "BlindIndex",
    "BlindIndexKey",
    "BlindIndexKeyProvider",
    "BlindIndexKeyring",
    "Normalizer",
    "configure_blind_index",
    "current_blind_index_keys",
    "generate_blind_index_key",
    "keys_from_settings",
    "normalize_email",
    "normalize_phone",
]

logger = logging.getLogger("sa_fieldcrypt")

#: Longest stored index value: a 32-character key id, ``:``, 64 hex digits. Size index
#: columns with it: ``mapped_column(String(BLIND_INDEX_LENGTH))``.
BLIND_INDEX_LENGTH = 32 + 1 + 64

#: The key id given to ``FIELDCRYPT_BLIND_INDEX_KEY``, the single-key setting.
SINGLE_KEY_ID = "b0"

#: Turns an attribute value into the text (or bytes) that is indexed; None: do not index.
Normalizer = Callable[[Any], "str | bytes | None"]

_REDACTED = "<redacted>"
# Versioned domain separation: a future format can derive different keys from the same secret.
_HKDF_INFO_PREFIX = b"sa-fieldcrypt blind index v1\x00"

_NO_KEYS_HELP = (
    "no blind-index key configured: set FIELDCRYPT_BLIND_INDEX_KEYS='b1:<key>' (make one with "
    "`fieldcrypt keygen --id b1`), or FIELDCRYPT_BLIND_INDEX_KEY='<key>', or call "
    "sa_fieldcrypt.configure_blind_index(keys=...); use a key of its own, not an encryption key"
)


# -- normalizers ---------------------------------------------------------------------------


def normalize_email(value: str) -> str | None:
    """Normalize an email address: trim whitespace, lowercase, Unicode NFC.

    ``" Ada@Example.COM\\n"`` and ``"ada@example.com"`` normalize alike. The local part is
    lowercased too (every mainstream provider treats it case-insensitively); dots and
    ``+tags`` are kept, since they are significant at some providers. An address that is empty
    after trimming returns None: it is not indexed and matches nothing.

    Raises:
        ValueTypeError: ``value`` is not a str.
    """
    if not isinstance(value, str):
        raise ValueTypeError(f"normalize_email expects str, got {type(value).__name__}")
    # NFC last: lowercasing can leave decomposed sequences that NFC then composes.
    text = unicodedata.normalize("NFC", value.strip().lower())
    return text or None


_PLUS_SIGNS = ("+", "\uff0b")  # ASCII and full-width plus, as phone keyboards type them


def normalize_phone(value: str) -> str | None:
    """Normalize a phone number to its digits, keeping a leading ``+``.

    ``"+1 (555) 010-0000"`` and ``"+15550100000"`` normalize alike. Any Unicode decimal digit
    counts (full-width ``\\uff15`` becomes ``5``); spaces, punctuation and letters are dropped, so
    an extension's digits join the number and vanity letters are not translated. A ``+``
    anywhere before the first digit is the leading one, so ``"(+1) 555 010 0000"``,
    ``"tel:+15550100000"`` and numbers wrapped in invisible direction marks (as phones copy
    them) keep it. No country is inferred: ``"555 010 0000"`` and ``"+1 555 010 0000"`` differ,
    so store numbers in E.164 form (with ``+`` and country code) for lookups to match. A value
    without digits returns None: it is not indexed and matches nothing.

    Raises:
        ValueTypeError: ``value`` is not a str.
    """
    if not isinstance(value, str):
        raise ValueTypeError(f"normalize_phone expects str, got {type(value).__name__}")
    digits: list[str] = []
    international = False
    for ch in value:
        if ch.isdecimal():
            digits.append(str(unicodedata.decimal(ch)))
        elif ch in _PLUS_SIGNS and not digits:
            international = True
    if not digits:
        return None
    return ("+" if international else "") + "".join(digits)


# -- keys ----------------------------------------------------------------------------------


def generate_blind_index_key() -> str:
    """Return a new random blind-index key: 32 bytes in url-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def _decode_secret(secret: str | bytes, where: str) -> bytes:
    try:
        raw = _urlsafe_b64decode(secret.strip())
    except (ValueError, AttributeError):
        raw = b""
    if len(raw) != 32:
        raise ConfigurationError(
            f"{where}: the key is not 32 bytes in url-safe base64; "
            "generate one with `fieldcrypt keygen`"
        )
    return raw


class BlindIndexKey:
    """One named blind-index key; the per-column keys are derived from it.

    The secret never appears in ``repr`` or ``str``.

    Args:
        key_id: the id written in front of every index value this key computes.
        secret: 32 random bytes in url-safe base64 (:func:`generate_blind_index_key` or
            ``fieldcrypt keygen`` make one).
    """

    __slots__ = ("_derived", "_secret", "id")

    id: str

    def __init__(self, key_id: str, secret: str | bytes):
        self.id = _check_key_id(key_id, "BlindIndexKey")
        self._secret = _decode_secret(secret, f"blind-index key {key_id!r}")
        self._derived: dict[str, bytes] = {}

    def derive(self, name: str) -> bytes:
        """Return the 32-byte HMAC key of the index called ``name`` (HKDF-SHA256, cached)."""
        derived = self._derived.get(name)
        if derived is None:
            hkdf = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=_HKDF_INFO_PREFIX + name.encode("utf-8", "surrogatepass"),
            )
            derived = self._derived[name] = hkdf.derive(self._secret)
        return derived

    def export(self) -> str:
        """Return the secret key text, for writing it into settings. Handle with care."""
        return base64.urlsafe_b64encode(self._secret).decode("ascii")

    def __repr__(self) -> str:
        return f"BlindIndexKey(id={self.id!r}, secret={_REDACTED})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        return (BlindIndexKey, (self.id, self.export()))


class BlindIndexKeyring:
    """The active blind-index keys: the first one writes, every one of them matches.

    Args:
        keys: a mapping of key id to key text (order kept), or :class:`BlindIndexKey` objects.

    Raises:
        ConfigurationError: no keys, a duplicate or invalid id, or a malformed key. The
            message names the id, never the key.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, str | bytes] | Iterable[BlindIndexKey]):
        if isinstance(keys, Mapping):
            built = [
                BlindIndexKey(_check_key_id(kid, "BlindIndexKeyring"), secret)
                for kid, secret in keys.items()
            ]
        else:
            built = list(keys)
        by_id: dict[str, BlindIndexKey] = {}
        folded: dict[str, str] = {}
        for position, key in enumerate(built, start=1):
            if not isinstance(key, BlindIndexKey):
                raise ConfigurationError(f"BlindIndexKeyring: entry {position} is not a key")
            if key.id in by_id:
                raise ConfigurationError(
                    f"BlindIndexKeyring: key id {key.id!r} appears more than once"
                )
            # MySQL and MariaDB compare text case-insensitively by default, so such ids
            # could not be told apart in stored index values.
            twin = folded.setdefault(key.id.lower(), key.id)
            if twin != key.id:
                raise ConfigurationError(
                    f"BlindIndexKeyring: key ids {twin!r} and {key.id!r} differ only in case"
                )
            by_id[key.id] = key
        if not by_id:
            raise ConfigurationError("BlindIndexKeyring: no keys given; at least one is needed")
        self._keys = by_id

    @classmethod
    def parse(cls, text: str, *, source: str = "blind-index keys") -> BlindIndexKeyring:
        """Build a keyring from ``"id:key,id:key"`` text, the first entry writing.

        ``source`` names the setting in error messages.
        """
        entries = [entry.strip() for entry in text.split(",")]
        if entries == [""]:
            raise ConfigurationError(f"{source} is empty; expected 'id:key,id:key'")
        keys: list[BlindIndexKey] = []
        for position, entry in enumerate(entries, start=1):
            kid, sep, secret = entry.partition(":")
            kid = kid.strip()
            if not sep or not kid:
                raise ConfigurationError(f"{source}: entry {position} is not of the form 'id:key'")
            where = f"{source}: entry {position}"
            _check_key_id(kid, where)
            try:
                keys.append(BlindIndexKey(kid, secret))
            except ConfigurationError:
                raise ConfigurationError(
                    f"{where} (id {kid!r}): the key is not 32 bytes in url-safe base64; "
                    "generate one with `fieldcrypt keygen`"
                ) from None
        try:
            return cls(keys)
        except ConfigurationError as exc:
            raise ConfigurationError(str(exc).replace("BlindIndexKeyring", source, 1)) from None

    @property
    def newest(self) -> BlindIndexKey:
        """The key that computes every value written now (the first one)."""
        return next(iter(self._keys.values()))

    @property
    def ids(self) -> tuple[str, ...]:
        """Every key id, the writing one first."""
        return tuple(self._keys)

    def export(self) -> str:
        """Return the keyring as ``FIELDCRYPT_BLIND_INDEX_KEYS`` text. Handle with care."""
        return ",".join(f"{k.id}:{k.export()}" for k in self._keys.values())

    def __iter__(self) -> Iterator[BlindIndexKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"BlindIndexKeyring(ids={list(self._keys)!r})"

    __str__ = __repr__


@runtime_checkable
class BlindIndexKeyProvider(Protocol):
    """Something that can load the current blind-index keys.

    Providers may also define ``cache_ttl: float | None``: seconds a loaded keyring stays
    fresh (None: loaded once). During a key rotation every process must see the new key
    before any process writes with it; a TTL bounds how long that takes without a restart.
    """

    def load(self) -> BlindIndexKeyring:
        """Load and return the current blind-index keyring; may block (network, files)."""
        ...


class _StaticProvider:
    cache_ttl: float | None = None

    def __init__(self, keys: BlindIndexKeyring):
        self.keys = keys

    def load(self) -> BlindIndexKeyring:
        return self.keys


class _SettingsProvider:
    """Keys from ``FIELDCRYPT_BLIND_INDEX_KEYS`` or ``FIELDCRYPT_BLIND_INDEX_KEY``."""

    cache_ttl: float | None = None

    def load(self) -> BlindIndexKeyring:
        from sa_fieldcrypt.settings import load_settings

        return keys_from_settings(load_settings())


def keys_from_settings(settings: FieldCryptSettings) -> BlindIndexKeyring:
    """Build the blind-index keyring that ``settings`` describe.

    Raises:
        ConfigurationError: neither or both variables are set, a key is malformed, or a
            blind-index key is also an encryption key.
    """
    many, one = settings.blind_index_keys, settings.blind_index_key
    if many is not None and one is not None:
        raise ConfigurationError(
            "both FIELDCRYPT_BLIND_INDEX_KEYS and FIELDCRYPT_BLIND_INDEX_KEY are set; keep "
            f"one (the single key is the id {SINGLE_KEY_ID!r} in FIELDCRYPT_BLIND_INDEX_KEYS)"
        )
    if many is not None:
        keyring = BlindIndexKeyring.parse(
            many.get_secret_value(), source="FIELDCRYPT_BLIND_INDEX_KEYS"
        )
    elif one is not None:
        try:
            keyring = BlindIndexKeyring([BlindIndexKey(SINGLE_KEY_ID, one.get_secret_value())])
        except ConfigurationError:
            raise ConfigurationError(
                "FIELDCRYPT_BLIND_INDEX_KEY is not 32 bytes in url-safe base64; "
                "generate one with `fieldcrypt keygen`"
            ) from None
    else:
        raise ConfigurationError(_NO_KEYS_HELP)
    _refuse_shared_secrets(keyring, settings)
    return keyring


def _refuse_shared_secrets(keyring: BlindIndexKeyring, settings: FieldCryptSettings) -> None:
    # Whoever holds an index key (a reporting job, a search service) must not be able to
    # decrypt; reusing an encryption key as an index key would hand it over.
    try:
        encryption = keyring_from_settings(settings)
    except ConfigurationError:
        return  # the encryption keys report their own problems where they are used
    secrets = {_parse_secret(key.export(), None)[1] for key in encryption}
    for key in keyring:
        if key._secret in secrets:
            raise ConfigurationError(
                f"blind-index key {key.id!r} is also an encryption key; generate a separate "
                "key with `fieldcrypt keygen`"
            )


_default_lock = threading.Lock()
_default: KeyCache[BlindIndexKeyring] | None = None


def _cache(provider: BlindIndexKeyProvider) -> KeyCache[BlindIndexKeyring]:
    return KeyCache(provider, kind=BlindIndexKeyring, label="blind-index key provider")


def _as_cache(source: BlindIndexKeyring | BlindIndexKeyProvider) -> KeyCache[BlindIndexKeyring]:
    if isinstance(source, BlindIndexKeyring):
        return _cache(_StaticProvider(source))
    if callable(getattr(source, "load", None)):
        return _cache(source)
    raise ConfigurationError(
        "expected a BlindIndexKeyring or a blind-index key provider (an object with load()), "
        f"got {type(source).__name__}"
    )


def configure_blind_index(
    *, keys: BlindIndexKeyring | None = None, provider: BlindIndexKeyProvider | None = None
) -> None:
    """Set the blind-index keys every index uses unless it names its own.

    Give ``keys`` (fixed) or ``provider`` (loaded, cached, refreshed after its
    ``cache_ttl``). With neither, the configuration is forgotten and the next use reads the
    ``FIELDCRYPT_BLIND_INDEX_KEY(S)`` settings again.
    """
    global _default
    if keys is not None and provider is not None:
        raise ConfigurationError("configure_blind_index() takes keys= or provider=, not both")
    source = keys if keys is not None else provider
    _default = None if source is None else _as_cache(source)


def _default_cache() -> KeyCache[BlindIndexKeyring]:
    global _default
    cache = _default
    if cache is not None:
        return cache
    with _default_lock:
        if _default is None:
            _default = _cache(_SettingsProvider())
        return _default


def current_blind_index_keys() -> BlindIndexKeyring:
    """Return the process-wide blind-index keys, loading them if needed."""
    return _default_cache().get()


def _swap(cache: KeyCache[BlindIndexKeyring] | None) -> KeyCache[BlindIndexKeyring] | None:
    """Install ``cache`` as the default and return the previous one (for test fixtures)."""
    global _default
    previous, _default = _default, cache
    return previous


# -- the index -----------------------------------------------------------------------------


class BlindIndex:
    """How one column's blind index is computed: which column, normalizer, keys and name.

    Pass it to :func:`~sa_fieldcrypt.encrypted_hybrid`, which fills in the default ``name``
    from the mapped index column and keeps the column in step with the value. Standalone
    (Core inserts, reports), give ``name`` yourself and call :meth:`compute`.

    Args:
        column: attribute name of the index column in the model (e.g. ``"email_bidx"``).
        normalizer: maps a value to the text that is indexed (:func:`normalize_email`,
            :func:`normalize_phone`, any callable); None indexes the value exactly.
            Returning None means "do not index": the index is NULL and lookups match nothing.
        keys: a :class:`BlindIndexKeyring` or provider for this index only; by default the
            keys of :func:`configure_blind_index` or the settings.
        name: what the column key is derived from (HKDF info). By default
            ``"<table>.<index column>"``; set it explicitly to keep index values stable
            across a table rename, or to give two columns deliberately joinable indexes.
    """

    def __init__(
        self,
        column: str,
        *,
        normalizer: Normalizer | None = None,
        keys: BlindIndexKeyring | BlindIndexKeyProvider | None = None,
        name: str | None = None,
    ):
        if not isinstance(column, str) or not column:
            raise ConfigurationError("BlindIndex: column must be the index column's attribute")
        if normalizer is not None and not callable(normalizer):
            raise ConfigurationError("BlindIndex: normalizer must be callable")
        self.column = column
        self.normalizer = normalizer
        self.name = name
        self._keys: KeyCache[BlindIndexKeyring] | None = None if keys is None else _as_cache(keys)
        #: Name of the table column holding the encrypted value; set when bound to a model.
        self.source_column: str | None = None

    def _bind(self, name: str, source_column: str) -> BlindIndex:
        """Return a copy bound to a table: ``name`` unless one was given, and its source."""
        bound = copy.copy(self)
        bound.name = self.name or name
        bound.source_column = source_column
        return bound

    def keyring(self) -> BlindIndexKeyring:
        """Return the active keys of this index (its own, else the process default)."""
        return (self._keys or _default_cache()).get()

    def normalize(self, value: Any) -> bytes | None:
        """Return the bytes that are hashed for ``value``, or None when it is not indexed."""
        if value is None:
            return None
        normalized = value if self.normalizer is None else self.normalizer(value)
        if isinstance(normalized, str):
            return normalized.encode("utf-8", "surrogatepass")
        if normalized is None or isinstance(normalized, bytes):
            return normalized
        if self.normalizer is None:
            raise ValueTypeError(
                f"{self._label}: a blind index hashes str or bytes, got "
                f"{type(value).__name__}; pass a normalizer that converts it"
            )
        raise ValueTypeError(
            f"{self._label}: the normalizer returned {type(normalized).__name__}; "
            "a normalizer returns str, bytes or None"
        )

    def compute(self, value: Any) -> str | None:
        """Return the index value to store for ``value``, under the newest key.

        Raises:
            ConfigurationError: no blind-index key is configured, or the index has no name.
            ValueTypeError: the value (or the normalizer's result) is of the wrong type.
        """
        data = self.normalize(value)
        if data is None:
            return None
        return self._hash(self.keyring().newest, data)

    def candidates(self, value: Any) -> tuple[str, ...]:
        """Return the index values ``value`` may be stored as, one per active key.

        Empty when the value is not indexed (None, or the normalizer returns None).
        """
        data = self.normalize(value)
        if data is None:
            return ()
        return tuple(self._hash(key, data) for key in self.keyring())

    def _hash(self, key: BlindIndexKey, data: bytes) -> str:
        if self.name is None:
            raise ConfigurationError(
                f"BlindIndex({self.column!r}) has no name: use it through encrypted_hybrid() "
                "on a mapped class, or pass name="
            )
        return f"{key.id}:{hmac.digest(key.derive(self.name), data, 'sha256').hex()}"

    @property
    def _label(self) -> str:
        return f"blind index {self.name or self.column}"

    def __repr__(self) -> str:
        return f"BlindIndex({self.column!r}, name={self.name!r})"

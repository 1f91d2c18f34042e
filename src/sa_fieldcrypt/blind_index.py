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

Stored format: ``<key id>:<64 lowercase hex digits>``, for example ``b1:3f0c...``; a
truncated index (``bits=16``) keeps the first ``bits / 4`` of those digits. Hex, not
base64, because MySQL and MariaDB compare strings case-insensitively by default. The key id
says which index key wrote the value, so a rotation's progress can be counted in SQL.

A slow index (``slow=Scrypt(...)``, for values of few possible values such as dates of
birth) hashes with scrypt instead of one HMAC, and records its cost parameters after the
key id, ``<key id>$s<log2 n>.<r>.<p>:<hex>`` (``b1$s14.8.1:3f0c...``), so that values
written with other parameters are told apart; :func:`parse_index_value` reads both forms.

Besides normalizers of whole values, a :class:`Transform` indexes part of one
(:func:`last_digits`, :func:`first_chars`, :data:`email_domain`, :data:`letters_lower`), and
:func:`compound` several attributes of a row, length-prefixed.

Keys: blind-index keys are keys of purpose ``"blind-index"`` (kind ``hmac-sha256``), held in a
:class:`~sa_fieldcrypt.Keyring` of that purpose and served by the same providers as the
encryption keys, but never the same keys (a key cache refuses a secret that serves both).
Each column gets its own key, derived with HKDF-SHA256 (:meth:`~sa_fieldcrypt.Key.derive`)
from the keyring's key and the column's *index name* (by default ``schema.table.column`` of
the index column, as declared; ``table.column`` for a table declared without a schema), so
two columns holding the same plaintext never share index values, nor do two tables of the
same name in different declared schemas. Several keys may be active at once: the primary one
writes, every one of them matches (``IN (...)``), which is how the index key rotates without
downtime.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
import re
import struct
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from sa_fieldcrypt.config import as_key_cache, default_key_cache
from sa_fieldcrypt.errors import ConfigurationError, DecryptionError, ValueTypeError

if TYPE_CHECKING:
    from sa_fieldcrypt.keys import Key, Keyring
    from sa_fieldcrypt.providers.base import KeyCache, KeyProvider

__all__ = [
    "BITS_STEP",
    "BLIND_INDEX_LENGTH",
    "FULL_BITS",
    "MAX_SCRYPT_MEMORY",
    "MIN_BITS",
    "TRIGRAM",
    "TRIGRAM_LENGTH",
    "BlindIndex",
    "Compound",
    "IndexValue",
    "Normalizer",
    "Scrypt",
    "SubstringIndex",
    "Transform",
    "casefold",
    "compound",
    "email_domain",
    "first_chars",
    "last_digits",
    "letters_lower",
    "normalize_email",
    "normalize_phone",
    "parse_index_value",
    "typed_normalizer",
]

# Below 2**12 an scrypt costs little more than the HMAC it replaces; above 2**20 it takes
# seconds per value. r and p are bounded so that the cost label stays short.
_SCRYPT_LOG_N = range(12, 21)
_SCRYPT_R = range(1, 33)
_SCRYPT_P = range(1, 17)
# The longest cost label of a slow index: "$s" and the largest log2 n, r and p allowed.
_COST_LENGTH = len(f"$s{_SCRYPT_LOG_N[-1]}.{_SCRYPT_R[-1]}.{_SCRYPT_P[-1]}")

#: Longest stored index value: a 32-character key id, a slow index's cost label
#: (``$s14.8.1``, at most 10 characters), ``:``, 64 hex digits. Size index columns with it:
#: ``mapped_column(String(BLIND_INDEX_LENGTH))``.
BLIND_INDEX_LENGTH = 32 + _COST_LENGTH + 1 + 64

#: Turns an attribute value into the text (or bytes) that is indexed; None: do not index.
Normalizer = Callable[[Any], "str | bytes | None"]

#: Size of a full (untruncated) index value in bits: the whole HMAC-SHA256.
FULL_BITS = 256
#: Fewest bits a truncated index keeps: one hex digit.
MIN_BITS = 4
#: Index sizes are multiples of this: a stored index value is a whole number of hex digits.
BITS_STEP = 4

# Versioned domain separation: a future format can derive different keys from the same secret.
_HKDF_INFO_PREFIX = b"sa-fieldcrypt blind index v1\x00"
# A slow index's key: never that of a fast index of the same name.
_HKDF_SLOW_INFO_PREFIX = b"sa-fieldcrypt slow blind index v1\x00"

#: Most memory one slow hash may take, in bytes (256 MiB): parameters that need more are
#: refused, since every lookup, insert and checked read in every process pays it.
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024


# -- normalizers ---------------------------------------------------------------------------

# Default_Ignorable_Code_Point, from DerivedCoreProperties.txt of Unicode 14.0.0 (the version
# of Python 3.11's unicodedata): characters that render as nothing, so text with them inserted
# looks like text without them. Reserved code points of the property are included, as the
# standard intends, so that characters assigned there later are ignored too.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER, HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ, AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, MONGOLIAN VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE, ZWNJ, ZWJ, LEFT-TO-RIGHT and RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # directional embeddings and overrides
    (0x2060, 0x206F),  # WORD JOINER, invisible operators, directional isolates, reserved
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1 to -16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT LETTER OVERLAP to UP STEP
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM to END PHRASE
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17 to -256, reserved
)
_IGNORABLE = re.compile(
    "[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _DEFAULT_IGNORABLE) + "]"
)
# In the domain of an email address: the label separators of IDNA (RFC 3490, section 3.1)
# other than "."; NFKC already makes "." of U+FF0E and U+3002 of U+FF61.
_DOMAIN_DOTS = str.maketrans({"\u3002": "."})
_DOMAIN_END = re.compile(r"[\s.]+\Z")
# Plus signs: "+", those NFKC folds to it (superscript, subscript, Hebrew alternative, small
# and full-width) and the look-alikes it leaves (modifier letter plus sign, Canadian
# syllabics final plus, and those Unicode's confusables.txt maps to "+": runic cross
# punctuation, heavy plus sign, Lycian letter H).
_PLUS_SIGNS = frozenset("+\u207a\u208a\ufb29\ufe62\uff0b\u02d6\u1429\u16ed\u2795\U0001029b")
# What starts a phone number's extension: "ext", "extn", "extension" or "x" standing apart
# from other letters ("555 0100 x7", "ext. 7", not the x of "BOX"), and "#", "," and ";"
# (the RFC 3966 tel: URI writes ";ext=7"). Only after the number's first digit.
_EXTENSION = re.compile(r"(?<![^\W\d_])(?:ext(?:ension|n)?|x)(?![^\W\d_])|[#,;]")
# The indexed form of an extension: the RFC 3966 parameter, which no number without one has.
_EXTENSION_SEPARATOR = ";ext="
_DIGITS = "0123456789"
_FIRST_DIGIT = re.compile("[0-9]")
_NOT_DIGITS = re.compile("[^0-9]+")
_FOLD_ROUNDS = 4


def _fold(text: str) -> str:
    """Fold look-alike spellings into one: NFKC, case-folded, default-ignorables removed.

    Case folding after NFKC takes the Kelvin sign (NFKC: "K") to "k" and "ß" to "ss", as it
    takes "SS"; NFKC runs again because removing an invisible character or folding case can
    leave text that composes further. Repeated until nothing changes, so that folding folded
    text changes nothing.
    """
    if text.isascii():
        return text.lower()  # the whole fold, for ASCII text
    folded = unicodedata.normalize("NFKC", text)
    for _ in range(_FOLD_ROUNDS):
        again = unicodedata.normalize("NFKC", _IGNORABLE.sub("", folded.casefold()))
        if again == folded:
            break
        folded = again
    return folded


def normalize_email(value: str) -> str | None:
    """Normalize an email address so that its look-alike spellings index alike.

    The address is folded (Unicode NFKC, case-folded, default-ignorable code points such as
    zero-width spaces, joiners, soft hyphens, variation selectors and a byte order mark
    removed) and trimmed of white space. In its domain (after the last ``@``) an ideographic
    full stop becomes ``.``, and trailing dots go (``example.com.`` is ``example.com``). So
    ``" Ada@Example.COM\\n"``, ``"ada@example.com."``, the address in full-width letters
    (``"\\uff41\\uff44\\uff41@..."``) and ``"ada\\u200b@example.com"`` normalize alike.

    The local part is case-folded too (every mainstream provider treats it
    case-insensitively); dots and ``+tags`` are kept, since they are significant at some
    providers. Letters of different scripts that only look alike (Cyrillic ``\\u0430``, Latin
    ``a``) stay different, and so do an IDNA ``xn--`` domain and its Unicode spelling. An
    address that is empty after trimming returns None: it is not indexed and matches nothing.

    Raises:
        ValueTypeError: ``value`` is not a str.
    """
    if not isinstance(value, str):
        raise ValueTypeError(f"normalize_email expects str, got {type(value).__name__}")
    text = _fold(value).strip()
    local, at, domain = text.rpartition("@")
    if at:
        # All trailing dots, not one: normalizing a normalized address must change nothing.
        text = local + at + _DOMAIN_END.sub("", domain.translate(_DOMAIN_DOTS))
    return text or None


def normalize_phone(value: str) -> str | None:
    """Normalize a phone number to its digits, a leading ``+`` and an extension.

    ``"+1 (555) 010-0000"`` and ``"+15550100000"`` normalize alike. Any Unicode decimal digit
    counts (full-width ``\\uff15`` and Arabic-Indic ``\\u0665`` are ``5``); spaces, punctuation,
    other letters and invisible characters are dropped, and vanity letters are not
    translated. Any plus sign (``+``, full-width ``\\uff0b``, small ``\\ufe62``, superscript
    ``\\u207a``, heavy ``\\u2795`` and the other look-alikes) before the first digit is the
    leading one, so ``"(+1) 555 010 0000"``, ``"tel:+15550100000"`` and numbers wrapped in
    invisible direction marks (as phones copy them) keep it.

    An extension starts at ``ext``, ``extn``, ``extension`` or an ``x`` standing apart from
    other letters, or at ``#``, ``,`` or ``;``, after the first digit. Its digits are indexed
    after ``;ext=`` (RFC 3966's form): ``"+1 555 0100 ext. 7"`` is ``+15550100;ext=7``, which
    differs from ``+155501007``, from ``+15550100`` and from the same number with another
    extension.

    No country is inferred: ``"555 010 0000"`` and ``"+1 555 010 0000"`` differ, so store
    numbers in E.164 form (with ``+`` and country code) for lookups to match. A value without
    digits returns None: it is not indexed and matches nothing.

    Raises:
        ValueTypeError: ``value`` is not a str.
    """
    if not isinstance(value, str):
        raise ValueTypeError(f"normalize_phone expects str, got {type(value).__name__}")
    # ASCII digits, "+", and every other character folded to its letters and extension marks,
    # anything else a space: circled and superscript digits are not decimal digits.
    kept: list[str] = []
    for ch in value:
        digit = unicodedata.decimal(ch, None)
        if digit is not None:
            kept.append(_DIGITS[digit])
        elif ch in _PLUS_SIGNS:
            kept.append("+")
        elif not _IGNORABLE.match(ch):
            kept.extend(c if c.isalpha() or c in "#,;" else " " for c in _fold(ch))
    text = "".join(kept)
    first = _FIRST_DIGIT.search(text)
    if first is None:
        return None
    start = first.start()
    mark = _EXTENSION.search(text, start)
    number = _NOT_DIGITS.sub("", text[start : mark.start()] if mark else text[start:])
    extension = _NOT_DIGITS.sub("", text[mark.end() :]) if mark else ""
    plus = "+" if "+" in text[:start] else ""
    return plus + number + (_EXTENSION_SEPARATOR + extension if extension else "")


# Equal values of one type index alike: the form of each value below is what equal means.
_V = TypeVar("_V")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _normalize_date(value: Any) -> str:
    return _typed(value, date).isoformat()


def _normalize_datetime(value: Any) -> str:
    moment = _typed(value, datetime)
    if moment.utcoffset() is None:
        return moment.isoformat(timespec="microseconds")
    # The instant alone: the same moment at two offsets is one value, as == says. Counted
    # from the epoch, as converting to UTC would overflow near datetime.min and max.
    return f"{(moment - _EPOCH) // _MICROSECOND}Z"


def _normalize_time(value: Any) -> str:
    moment = _typed(value, time)
    if moment.tzinfo is not None:
        # As EncryptedTime refuses it: not a lookup of the naive time it would otherwise be.
        raise ValueTypeError("typed_normalizer(time) expects a naive time, got one with a tzinfo")
    return moment.isoformat(timespec="microseconds")


def _normalize_integer(value: Any) -> bytes:
    number = _typed(value, int)
    # Big-endian two's complement, as EncryptedInteger stores it: str() stops at 4300 digits.
    length = (number + (number < 0)).bit_length() // 8 + 1
    return number.to_bytes(length, "big", signed=True)


def _normalize_float(value: Any) -> bytes | None:
    number = _typed(value, float)
    if math.isnan(number):
        return None  # a NaN equals nothing, itself included
    return struct.pack(">d", 0.0 if number == 0 else number)  # -0.0 == 0.0


def _normalize_decimal(value: Any) -> str | None:
    number = _typed(value, Decimal)
    if number.is_nan():
        return None  # NaN equals nothing; sNaN cannot even be compared
    if number.is_infinite():
        return "-Infinity" if number.is_signed() else "Infinity"
    sign, digits, exponent = number.as_tuple()
    coefficient = "".join(map(str, digits)).rstrip("0")
    if not coefficient:
        return "0"  # every zero, -0 and 0E-7 included
    exponent = cast("int", exponent) + len(digits) - len(coefficient)
    return f"{'-' if sign else ''}{coefficient}E{exponent}"


def _normalize_uuid(value: Any) -> bytes:
    return _typed(value, uuid.UUID).bytes


_TYPED_NORMALIZERS: dict[type, Normalizer] = {
    date: _normalize_date,
    datetime: _normalize_datetime,
    time: _normalize_time,
    int: _normalize_integer,
    float: _normalize_float,
    Decimal: _normalize_decimal,
    uuid.UUID: _normalize_uuid,
}


def _typed(value: Any, expected: type[_V]) -> _V:
    """``value``, if it is exactly of the ``expected`` type (a datetime is no date here)."""
    if type(value) is not expected:
        raise ValueTypeError(
            f"typed_normalizer({expected.__name__}) expects {expected.__name__}, "
            f"got {type(value).__name__}"
        )
    return value


def typed_normalizer(python_type: type) -> Normalizer:
    """Return the normalizer of a typed column's values: equal values index alike.

    For the values of :class:`~sa_fieldcrypt.EncryptedDate`, ``EncryptedDateTime``,
    ``EncryptedTime``, ``EncryptedInteger``, ``EncryptedFloat``, ``EncryptedDecimal`` and
    ``EncryptedUUID``: ``BlindIndex("born_bidx", normalizer=typed_normalizer(date))``. Two
    values find each other when they index alike, as below; that is Python's ``==`` except
    for aware datetimes, which compare as instants here even where ``==`` compares wall times
    (two values sharing one ``tzinfo``, PEP 495's repeated hour):

    - ``date``: by its ISO form, ``1815-12-10``;
    - ``datetime``: an aware one by its instant, so the same moment at two offsets is equal
      (microseconds since 1970-01-01T00:00:00Z, then ``Z``); a naive one by its ISO form
      with microseconds. An aware and a naive datetime never match;
    - ``time``: by its ISO form with microseconds, ``09:30:00.000000``;
    - ``int``: by value (its big-endian two's complement bytes), of any size;
    - ``float``: by value, ``-0.0`` as ``0.0``; a NaN is not indexed (None), so it matches
      nothing, as it equals nothing;
    - ``Decimal``: by numeric value: ``1.0``, ``1.00`` and ``1`` are equal, ``-0`` is
      ``0``; NaN and sNaN are not indexed, and match nothing.
    - ``uuid.UUID``: by its 16 bytes.

    The normalizer refuses a value of another type (``1`` for a float index, a
    ``datetime`` for a date index, a ``time`` with a ``tzinfo``) with
    :class:`~sa_fieldcrypt.ValueTypeError`, as the column does, rather than look up a
    different value.

    Raises:
        ConfigurationError: ``python_type`` is ``bool`` (a blind index of two values shows
            which rows hold each), or not one of the types above.
    """
    if python_type is bool:
        raise ConfigurationError(
            "typed_normalizer(bool): a boolean must not have a blind index: its two index "
            "values would show which rows share each value"
        )
    normalizer = _TYPED_NORMALIZERS.get(python_type)
    if normalizer is None:
        known = ", ".join(t.__name__ for t in _TYPED_NORMALIZERS)
        raise ConfigurationError(f"typed_normalizer() takes one of {known}, not {python_type!r}")
    return normalizer


# -- transforms: indexes of part of a value ------------------------------------------------


class Transform:
    """A normalizer of *part* of a value (its last digits, its domain): an index of a property.

    A :class:`BlindIndex` whose normalizer is a transform does not answer ``==`` on the
    attribute (``Customer.phone == x`` compares whole values); it answers
    ``Customer.phone.index("phone_last4") == "0000"``, where the term is already of the
    transformed kind (four digits, a domain). The built-ins are :func:`last_digits`,
    :func:`first_chars`, :data:`email_domain` and :data:`letters_lower`; wrap any callable to
    make your own::

        top_level_domain = Transform(lambda email: email.rpartition(".")[2].lower() or None)

    Args:
        function: maps a stored value to the text (or bytes) indexed; None: not indexed.
        term: maps a query term to the text it must equal; by default ``function`` itself,
            which suits a transform whose result it leaves unchanged (``last_digits(4)`` of
            ``"0000"`` is ``"0000"``). A term that maps to None matches nothing.
        name: how messages and ``repr`` name the transform.
    """

    __slots__ = ("function", "name", "term")

    def __init__(
        self,
        function: Normalizer,
        term: Normalizer | None = None,
        *,
        name: str | None = None,
    ):
        if not callable(function) or (term is not None and not callable(term)):
            raise ConfigurationError("Transform: function and term must be callable")
        self.function = function
        self.term = term or function
        self.name = name or getattr(function, "__name__", "transform")

    def __call__(self, value: Any) -> str | bytes | None:
        """Return the indexed text of a stored value, or None when it has nothing to index."""
        return self.function(value)

    def __repr__(self) -> str:
        return f"Transform({self.name})"


def _text(value: Any, transform: str) -> str:
    if not isinstance(value, str):
        raise ValueTypeError(f"{transform} expects str, got {type(value).__name__}")
    return value


def _positive(n: Any, transform: str) -> int:
    if type(n) is not int or n < 1:
        raise ConfigurationError(f"{transform}(n): n must be a positive int, got {n!r}")
    return n


def _decimal_digits(text: str) -> str:
    return "".join(
        _DIGITS[digit]
        for digit in (unicodedata.decimal(ch, None) for ch in text)
        if digit is not None
    )


def last_digits(n: int) -> Transform:
    """Return a transform indexing a value's last ``n`` decimal digits, e.g. a phone's last four.

    Digits are any Unicode decimal digits, as :func:`normalize_phone` reads them (full-width
    and Arabic-Indic ones count as their ASCII digit); everything else is skipped, so
    ``"+1 (555) 010-0000"`` indexes ``"0000"``. An extension's digits count too: index
    ``last_digits(4)`` of numbers stored without one. A value with fewer than ``n`` digits
    is not indexed (None), and a term of other than ``n`` digits matches nothing.

    Raises:
        ConfigurationError: ``n`` is not a positive int.
    """
    count = _positive(n, "last_digits")
    label = f"last_digits({count})"

    def digits(value: Any) -> str | None:
        found = _decimal_digits(_text(value, label))
        return found[-count:] if len(found) >= count else None

    def term(value: Any) -> str | None:
        found = _decimal_digits(_text(value, label))
        # "10000" is no spelling of four digits: it would look up "0000".
        return found if len(found) == count else None

    return Transform(digits, term, name=label)


def first_chars(n: int) -> Transform:
    """Return a transform indexing a text's first ``n`` characters, case-folded.

    The text is folded as :func:`normalize_email` folds it (NFKC, case-folded, invisible
    characters removed) and stripped of surrounding white space, so ``"  Ada Lovelace"``
    indexes ``"ada"`` for ``first_chars(3)``. A text shorter than ``n`` characters is not
    indexed (None), and a term of other than ``n`` characters matches nothing.

    Raises:
        ConfigurationError: ``n`` is not a positive int.
    """
    count = _positive(n, "first_chars")
    label = f"first_chars({count})"

    def prefix(value: Any) -> str | None:
        text = _fold(_text(value, label)).strip()
        return text[:count] if len(text) >= count else None

    def term(value: Any) -> str | None:
        text = _fold(_text(value, label)).strip()
        return text if len(text) == count else None

    return Transform(prefix, term, name=label)


def _email_domain(value: Any) -> str | None:
    email = normalize_email(_text(value, "email_domain"))
    if email is None:
        return None
    _, at, domain = email.rpartition("@")
    return domain if at and domain else None


def _domain_term(value: Any) -> str | None:
    # A domain, folded as the domain of an address is: "Example.COM." is "example.com".
    text = _text(value, "email_domain")
    return None if "@" in _fold(text) else _email_domain("@" + text)


#: Transform indexing an email address's domain, folded as :func:`normalize_email` folds
#: it: ``"Ada@Example.COM."`` indexes ``"example.com"``. A value without ``@`` (or with
#: nothing after the last one) is not indexed. Terms are domains: ``"example.com"``.
email_domain = Transform(_email_domain, _domain_term, name="email_domain")


def _letters_lower(value: Any) -> str | None:
    text = _fold(_text(value, "letters_lower"))
    return "".join(ch for ch in text if ch.isalpha()) or None


#: Transform indexing a text's letters only, folded to lower case: ``"O'Brien-Smith"``
#: indexes ``"obriensmith"``, so spellings that differ in punctuation, spaces, digits or case
#: find each other. A text without letters is not indexed. Terms are folded alike.
letters_lower = Transform(_letters_lower, name="letters_lower")


class Compound(Transform):
    """A normalizer of several attributes of a row at once, for a compound index.

    Made by :func:`compound`; declared on a model with
    :func:`~sa_fieldcrypt.compound_index`. It indexes a tuple of values, one per part, in
    the order given, each through its part's normalizer. The parts are encoded without
    ambiguity: each one's bytes after their length (4 bytes, big-endian), so
    ``("ab", "c")`` and ``("a", "bc")`` index differently. A part that is None, or that its
    normalizer does not index, leaves the whole row unindexed.

    Attributes:
        attributes: the attribute names of the parts, in order.
    """

    __slots__ = ("attributes", "parts")

    def __init__(self, parts: dict[str, Normalizer | None]):
        if not parts:
            raise ConfigurationError("compound() needs at least one part: attribute=normalizer")
        for attribute, normalizer in parts.items():
            if normalizer is not None and not callable(normalizer):
                raise ConfigurationError(
                    f"compound(): the normalizer of {attribute} is not callable"
                )
        self.parts = dict(parts)
        self.attributes = tuple(parts)
        label = ", ".join(self.attributes)
        super().__init__(self._encode_values, self._encode_terms, name=f"compound({label})")

    def _encode_values(self, values: Any) -> bytes | None:
        return self._encode(values, term=False)

    def _encode_terms(self, terms: Any) -> bytes | None:
        return self._encode(terms, term=True)

    def _encode(self, values: Any, *, term: bool) -> bytes | None:
        if not isinstance(values, tuple) or len(values) != len(self.attributes):
            raise ValueTypeError(
                f"{self.name} indexes a tuple of {len(self.attributes)} values "
                f"({', '.join(self.attributes)}), got {type(values).__name__}"
            )
        encoded = bytearray()
        for (attribute, normalizer), value in zip(self.parts.items(), values, strict=True):
            part = _part_bytes(attribute, normalizer, value, term=term)
            if part is None:
                return None
            encoded += len(part).to_bytes(4, "big") + part
        return bytes(encoded)


def _part_bytes(
    attribute: str, normalizer: Normalizer | None, value: Any, *, term: bool
) -> bytes | None:
    if value is None:
        return None
    if normalizer is None:
        if isinstance(value, bool):
            normalized: str | bytes | None = "true" if value else "false"
        elif isinstance(value, int):
            normalized = str(value)
        else:
            normalized = value
    elif term and isinstance(normalizer, Transform):
        normalized = normalizer.term(value)
    else:
        normalized = normalizer(value)
    if isinstance(normalized, str):
        return normalized.encode("utf-8", "surrogatepass")
    if normalized is None or isinstance(normalized, bytes):
        return normalized
    raise ValueTypeError(
        f"compound part {attribute}: expected str, bytes, int or bool (or a normalizer that "
        f"returns str or bytes), got {type(normalized).__name__}"
    )


def compound(**parts: Normalizer | None) -> Compound:
    """Return the normalizer of a compound index over several attributes, in the order given.

    ``compound(first_name=first_chars(1), last_name=letters_lower)`` indexes a first initial
    with a last name; ``compound(consent_sms=None, phone=last_digits(4))`` a plain consent
    flag with a phone's last four digits. A part's normalizer reads the attribute's value
    (an encrypted hybrid's plaintext, or a plain column's value); None takes it as it is
    (str, bytes, int or bool). Query terms are tuples in the same order, each read as its
    part's transform reads terms: ``Customer.name_search == ("a", "Lovelace")``.

    Raises:
        ConfigurationError: no part, or a normalizer that is not callable.
    """
    return Compound(parts)


# -- slow hashing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scrypt:
    """Cost parameters of a slow (memory-hard) blind index: scrypt, from ``hashlib``.

    Typical usage, for a value of few possible values (a date of birth, a short code)::

        BlindIndex("birth_date_bidx", normalizer=typed_normalizer(date), slow=Scrypt())

    Each index value is then ``HMAC-SHA256(k, scrypt(value, salt=k, n, r, p))``, where ``k``
    is the index's own key (derived from the index key and the index name). The salt is the
    secret key, so nothing can be computed ahead of a theft of the key: whoever holds the
    key and the table pays one scrypt per guessed value. The HMAC around it keeps the index
    a keyed PRF of the value, by HMAC's standard assumption, for whoever does not hold the
    key, whatever scrypt is worth with a secret salt.

    The parameters are recorded in every stored value (``$s14.8.1``): after changing them,
    lookups find only rows written with the new ones, ``fieldcrypt status`` counts the others
    as stale, and ``fieldcrypt reindex`` rewrites them.

    Args:
        n: CPU and memory cost, a power of two from ``2**12`` to ``2**20``.
        r: block size, 1 to 32.
        p: parallelization, 1 to 16 (``hashlib`` computes the lanes one after another, so
            time grows with it).

    Raises:
        ConfigurationError: a parameter is outside its range, or the hash needs more than
            :data:`MAX_SCRYPT_MEMORY` bytes (``128 * r * (n + p + 2)``).
    """

    n: int = 2**14
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        n, r, p = self.n, self.r, self.p
        if type(n) is not int or n <= 0 or n & (n - 1) or n.bit_length() - 1 not in _SCRYPT_LOG_N:
            raise ConfigurationError(
                f"Scrypt: n must be a power of two from 2**{_SCRYPT_LOG_N[0]} to "
                f"2**{_SCRYPT_LOG_N[-1]}, got {n!r} (below 2**{_SCRYPT_LOG_N[0]} it costs "
                "little more than the HMAC of a fast index)"
            )
        if type(r) is not int or r not in _SCRYPT_R:
            raise ConfigurationError(
                f"Scrypt: r must be an int from {_SCRYPT_R[0]} to {_SCRYPT_R[-1]}, got {r!r}"
            )
        if type(p) is not int or p not in _SCRYPT_P:
            raise ConfigurationError(
                f"Scrypt: p must be an int from {_SCRYPT_P[0]} to {_SCRYPT_P[-1]}, got {p!r}"
            )
        if self.memory > MAX_SCRYPT_MEMORY:
            raise ConfigurationError(
                f"Scrypt(n=2**{n.bit_length() - 1}, r={r}, p={p}) needs {self.memory:,} bytes "
                f"per hash, more than MAX_SCRYPT_MEMORY ({MAX_SCRYPT_MEMORY:,}); lower n or r"
            )

    @property
    def memory(self) -> int:
        """Bytes one hash takes, as OpenSSL counts them against ``maxmem``."""
        return 128 * self.r * (self.n + self.p + 2)

    @property
    def label(self) -> str:
        """The parameters as stored values record them: ``$s14.8.1`` for the defaults."""
        return f"$s{self.n.bit_length() - 1}.{self.r}.{self.p}"

    def hash(self, key: bytes, data: bytes) -> bytes:
        """Return the 32-byte slow hash of ``data`` under ``key`` (see the class docstring)."""
        stretched = hashlib.scrypt(
            data, salt=key, n=self.n, r=self.r, p=self.p, maxmem=self.memory, dklen=32
        )
        return hmac.digest(key, stretched, "sha256")


class IndexValue(NamedTuple):
    """A stored index value, in its parts (see :func:`parse_index_value`)."""

    key_id: str
    #: The cost label of a slow index (``$s14.8.1``); empty for a fast (HMAC) index.
    cost: str
    #: The hex digits.
    digest: str


def parse_index_value(stored: str) -> IndexValue | None:
    """Split a stored index value into key id, cost label and digest; None if malformed.

    ``"b1:3f0c"`` is ``IndexValue("b1", "", "3f0c")``; ``"b1$s14.8.1:3f0c"`` is
    ``IndexValue("b1", "$s14.8.1", "3f0c")``. Key ids hold neither ``$`` nor ``:``.
    """
    head, sep, digest = stored.partition(":")
    key_id, dollar, cost = head.partition("$")
    if not sep or not key_id:
        return None
    return IndexValue(key_id, dollar + cost, digest)


# -- the index -----------------------------------------------------------------------------


class _KeyedIndex:
    """What every keyed index shares: its size, its keys, and the key derived for its name.

    ``given`` is what the index was declared with (its column or side table), for messages.
    """

    _kind = "index"

    def __init__(self, given: str, keyring: Keyring | KeyProvider | None, bits: Any):
        if type(bits) is not int or not MIN_BITS <= bits <= FULL_BITS or bits % BITS_STEP:
            raise ConfigurationError(
                f"{type(self).__name__}({given!r}): bits must be a multiple of {BITS_STEP} "
                f"from {MIN_BITS} to {FULL_BITS}, got {bits!r}"
            )
        self.name: str | None = None
        self.bits: int = bits
        # What was given, as EncryptedType keeps it; the cache is what is read.
        self.keyring = keyring
        self._keys: KeyCache | None = (
            None if keyring is None else as_key_cache(keyring, purpose="blind-index")
        )
        self._given = given

    def active_keyring(self) -> Keyring:
        """Return the keyring this index uses now: its own, else the process default."""
        return (self._keys or default_key_cache("blind-index")).get()

    def _ordered_keys(self) -> list[Key]:
        keyring = self.active_keyring()
        primary = keyring.primary
        return [primary, *(key for key in keyring if key is not primary)]

    def _key(self, key_id: str | None) -> Key:
        keyring = self.active_keyring()
        key = keyring.primary if key_id is None else keyring.find(key_id)
        if key is None:
            raise ConfigurationError(
                f"{self._label}: the blind-index keyring no longer holds key {key_id!r}; "
                "run the query again"
            )
        return key

    def _derived(self, key: Key, prefix: bytes) -> bytes:
        if self.name is None:
            raise ConfigurationError(
                f"{type(self).__name__}({self._given!r}) has no name: use it through "
                "encrypted_hybrid() on a mapped class, or pass name="
            )
        return key.derive(prefix + self.name.encode("utf-8", "surrogatepass"))

    def _truncated(self, digest: bytes, bits: int | None = None) -> str:
        # Truncation keeps the first digits of the HMAC, as RFC 2104 section 5 recommends.
        return digest.hex()[: (self.bits if bits is None else bits) // 4]

    @property
    def _label(self) -> str:
        return f"{self._kind} {self.name or self._given}"


class BlindIndex(_KeyedIndex):
    """How one column's blind index is computed: which column, normalizer, keys and name.

    Pass it to :func:`~sa_fieldcrypt.encrypted_hybrid`, which fills in the default ``name``
    from the mapped index column and keeps the column in step with the value. Standalone
    (Core inserts, reports), give ``name`` yourself and call :meth:`compute`.

    Args:
        column: attribute name of the index column in the model (e.g. ``"email_bidx"``).
        normalizer: maps a value to the text that is indexed (:func:`normalize_email`,
            :func:`normalize_phone`, any callable); None indexes the value exactly.
            Returning None means "do not index": the index is NULL and lookups match nothing.
        keyring: a :class:`~sa_fieldcrypt.Keyring` of purpose ``"blind-index"``, or a key
            provider of that purpose, for this index only; by default the process default
            (``configure(..., purpose="blind-index")`` or the settings).
        name: what the column key is derived from (HKDF info). By default
            ``"<schema>.<table>.<index column>"`` as the table is declared (no schema part
            for a table declared without one); set it explicitly to keep index values stable
            across a table rename, or to give two columns deliberately joinable indexes.
            A ``schema_translate_map`` does not change it: it applies when statements run.
            Two indexes of one attribute have different names, so never share values.
        bits: size of the stored hash, a multiple of 4 from 4 to 256 (the default, the whole
            HMAC). A truncated index (say 16 to 64 bits) gives many values the same index
            value, so the database learns less about which rows are equal; a lookup then
            returns candidate rows, which :func:`~sa_fieldcrypt.encrypted_hybrid` decrypts
            and filters to the exact matches (see ``docs/blind-indexes.md``).
        unique: the index column carries a unique constraint. Only a full-size index can
            (two values may share a truncated one), so ``unique=True`` with ``bits`` below
            256 is refused; so is binding a truncated index to a column in a unique
            constraint or index of its table.
        slow: a :class:`Scrypt` of cost parameters, for values of few possible values
            (dates of birth, short codes): each index value is then a memory-hard hash
            instead of one HMAC, and every insert, lookup term (per active key) and checked
            read pays one (see ``docs/blind-indexes.md``). None (the default): HMAC-SHA256.

    Raises:
        ConfigurationError: an argument is malformed, or ``unique`` with a truncated size.
    """

    _kind = "blind index"

    def __init__(
        self,
        column: str,
        *,
        normalizer: Normalizer | None = None,
        keyring: Keyring | KeyProvider | None = None,
        name: str | None = None,
        bits: int = FULL_BITS,
        unique: bool = False,
        slow: Scrypt | None = None,
    ):
        if not isinstance(column, str) or not column:
            raise ConfigurationError("BlindIndex: column must be the index column's attribute")
        if normalizer is not None and not callable(normalizer):
            raise ConfigurationError("BlindIndex: normalizer must be callable")
        super().__init__(column, keyring, bits)
        if unique and bits < FULL_BITS:
            raise ConfigurationError(
                f"BlindIndex({column!r}): a unique index needs the full {FULL_BITS} bits "
                f"(two values may share a {bits}-bit index value); drop bits= or unique=True"
            )
        if slow is not None and not isinstance(slow, Scrypt):
            raise ConfigurationError(
                f"BlindIndex({column!r}): slow must be a Scrypt of cost parameters, "
                f"got {type(slow).__name__}"
            )
        self.column = column
        self.normalizer = normalizer
        self.name = name
        self.unique = unique
        self.slow = slow
        #: Name of the table column holding the encrypted value; set when bound to a model.
        self.source_column: str | None = None

    def bound_to(self, name: str, source_column: str | None) -> BlindIndex:
        """Return a copy bound to a table: ``name`` unless one was given, and its source.

        :func:`~sa_fieldcrypt.encrypted_hybrid` calls it when the model is mapped; a
        compound index has no one source column (None).
        """
        bound = copy.copy(self)
        bound.name = self.name or name
        bound.source_column = source_column
        return bound

    @property
    def truncated(self) -> bool:
        """Whether index values are shorter than the full HMAC: lookups return candidates."""
        return self.bits < FULL_BITS

    @property
    def cost(self) -> str:
        """The cost label stored values of this index carry: ``$s14.8.1``; empty if fast."""
        return "" if self.slow is None else self.slow.label

    @property
    def max_length(self) -> int:
        """Longest value this index stores at full size: what its column must hold."""
        return 32 + len(self.cost) + 1 + FULL_BITS // 4

    def prefix(self, key_id: str) -> str:
        """What every value this index stores under ``key_id`` starts with: ``b1:``."""
        return f"{key_id}{self.cost}:"

    @property
    def derived(self) -> bool:
        """Whether the index is of part of the value (a :class:`Transform`), not all of it."""
        return isinstance(self.normalizer, Transform)

    def normalize(self, value: Any) -> bytes | None:
        """Return the bytes that are hashed for ``value``, or None when it is not indexed."""
        return self._encoded(value, self.normalizer)

    def normalize_term(self, term: Any) -> bytes | None:
        """Return the bytes a query term is hashed as, or None when it matches nothing.

        A :class:`Transform`'s term normalizer reads the term (``"0000"`` of
        ``last_digits(4)``); any other normalizer reads it as a value, as :meth:`normalize`.
        """
        normalizer = self.normalizer
        if isinstance(normalizer, Transform):
            normalizer = normalizer.term
        return self._encoded(term, normalizer)

    def _encoded(self, value: Any, normalizer: Normalizer | None) -> bytes | None:
        if value is None:
            return None
        normalized = value if normalizer is None else normalizer(value)
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
        """Return the index value to store for ``value``, under the primary key.

        Raises:
            ConfigurationError: no blind-index key is configured, or the index has no name.
            ValueTypeError: the value (or the normalizer's result) is of the wrong type.
        """
        data = self.normalize(value)
        if data is None:
            return None
        return self._hash(self.active_keyring().primary, data)

    def candidates(self, value: Any) -> tuple[str, ...]:
        """Return the index values ``value`` may be stored as, one per key, primary first.

        Empty when the value is not indexed (None, or the normalizer returns None).
        """
        return self.hashes(self.normalize(value))

    def hashes(self, data: bytes | None) -> tuple[str, ...]:
        """Return the stored index values of normalized ``data``, one per key, primary first.

        Empty for None. :meth:`candidates` of a value, or of a term with
        ``hashes(normalize_term(term))``.
        """
        if data is None:
            return ()
        return tuple(self._hash(key, data) for key in self._ordered_keys())

    def digest(self, data: bytes, key_id: str | None = None) -> str:
        """Return the full-size (256-bit) index value of normalized ``data``, whatever ``bits``.

        What exact filtering compares: the full HMAC of a term against that of a row's
        value, so that no plaintext needs to be kept. Under the key ``key_id`` names, by
        default the primary one.

        Raises:
            ConfigurationError: the keyring holds no key ``key_id``.
        """
        return self._hash(self._key(key_id), data, bits=FULL_BITS)

    def matches(self, value: Any, stored: str) -> bool | None:
        """Whether ``stored`` is the index of ``value`` under the key id ``stored`` names.

        One HMAC (or slow hash), compared in constant time. None when the keyring holds no
        key of that id (a retired index key), or the value was made with other cost
        parameters (a fast value of a slow index, or the reverse): it cannot be checked,
        and no lookup matches it either, until ``fieldcrypt reindex`` rewrites it.
        """
        parsed = parse_index_value(stored)
        if parsed is None or parsed.cost != self.cost:
            return None
        key = self.active_keyring().find(parsed.key_id)
        if key is None:
            return None
        data = self.normalize(value)
        if data is None:
            return False  # a value that is not indexed has no index value
        expected = self._hash(key, data).encode("ascii")
        return hmac.compare_digest(expected, stored.encode("utf-8", "surrogatepass"))

    def check(self, value: Any, stored: str, *, column: str) -> None:
        """Raise unless ``stored`` is the index of ``value`` (see :meth:`matches`).

        Args:
            value: the decrypted value of the row.
            stored: the row's stored index value.
            column: the column holding the value, for the message.

        Raises:
            DecryptionError: the index is of another value: the row was altered (a value
                copied in from another row) or its index is stale.
        """
        if self.matches(value, stored) is False:
            raise DecryptionError(
                f"the value does not match the row's blind index ({self._label}): the row was "
                "altered (a value copied in from another row) or its index is stale; "
                "`fieldcrypt verify` lists such rows, `fieldcrypt reindex` rewrites stale indexes",
                column=column,
            )

    def _hash(self, key: Key, data: bytes, *, bits: int | None = None) -> str:
        if self.slow is None:
            digest = hmac.digest(self._derived(key, _HKDF_INFO_PREFIX), data, "sha256")
        else:
            digest = self.slow.hash(self._derived(key, _HKDF_SLOW_INFO_PREFIX), data)
        return f"{self.prefix(key.id)}{self._truncated(digest, bits)}"

    def __repr__(self) -> str:
        bits = "" if self.bits == FULL_BITS else f", bits={self.bits}"
        slow = "" if self.slow is None else f", slow={self.slow!r}"
        return f"BlindIndex({self.column!r}, name={self.name!r}{bits}{slow})"


# -- substring indexes -----------------------------------------------------------------------

#: Characters in a trigram: what a substring index hashes, and the shortest term it finds.
TRIGRAM = 3

#: Length of a substring index's stored trigram values at any size: a key id, ``:``, the
#: hex digits of the full HMAC.
TRIGRAM_LENGTH = 32 + 1 + FULL_BITS // 4

_HKDF_SUBSTRING_INFO_PREFIX = b"sa-fieldcrypt substring index v1\x00"


def _casefold(value: Any) -> str | None:
    return _fold(_text(value, "casefold")) or None


#: Normalizer folding look-alike spellings and case, as :func:`normalize_email` folds them,
#: and keeping every other character (spaces and punctuation included); the default of a
#: :class:`SubstringIndex`.
casefold = Transform(_casefold, name="casefold")


class SubstringIndex(_KeyedIndex):
    """A substring index: keyed, truncated hashes of a value's trigrams, in a side table.

    Typical usage::

        notes = encrypted_hybrid(
            "notes_encrypted", substring=SubstringIndex("customer_notes_trigrams", bits=16)
        )
        select(Customer).where(Customer.notes.contains("lovelace"))

    The value is normalized (by default :data:`casefold`), and each of its distinct trigrams
    (three consecutive characters) is hashed with HMAC-SHA256 under the index's own derived
    key and truncated to ``bits``. :func:`~sa_fieldcrypt.encrypted_hybrid` declares the side
    table, one row per (owner row, trigram value), and keeps it in step at flush. A query
    for a term finds the rows holding all of the term's trigram values (candidates), which
    the ORM decrypts and keeps when the normalized value contains the normalized term.

    Args:
        table: name of the side table, in the owner table's schema.
        normalizer: maps a value to the text whose trigrams are indexed; it must return
            ``str`` (or None: not indexed). Terms go through it too.
        keyring: a keyring or key provider of purpose ``"blind-index"`` for this index only;
            by default the process default.
        name: what the index key is derived from; by default ``"<schema>.<table>"`` of the
            side table.
        bits: size of each stored trigram hash, a multiple of 4 from 4 to 256 (default 16).
            Fewer bits blur which trigrams a row holds, and make more rows candidates.

    Raises:
        ConfigurationError: an argument is malformed.
    """

    _kind = "substring index"

    def __init__(
        self,
        table: str,
        *,
        normalizer: Normalizer | None = casefold,
        keyring: Keyring | KeyProvider | None = None,
        name: str | None = None,
        bits: int = 16,
    ):
        if not isinstance(table, str) or not table:
            raise ConfigurationError("SubstringIndex: table must name the side table")
        if normalizer is not None and not callable(normalizer):
            raise ConfigurationError("SubstringIndex: normalizer must be callable")
        super().__init__(table, keyring, bits)
        self.table = table
        self.normalizer = normalizer
        self.name = name

    def bound_to(self, name: str) -> SubstringIndex:
        """Return a copy named ``name`` unless it was given one; done when the model is mapped."""
        bound = copy.copy(self)
        bound.name = self.name or name
        return bound

    def normalize(self, value: Any) -> str | None:
        """Return the text whose trigrams are indexed, or None when the value is not indexed.

        Raises:
            ValueTypeError: the normalizer returned something other than ``str`` or None.
        """
        if value is None:
            return None
        normalized = value if self.normalizer is None else self.normalizer(value)
        if normalized is None or isinstance(normalized, str):
            return normalized or None
        raise ValueTypeError(
            f"{self._label}: a substring index reads text; the normalizer returned "
            f"{type(normalized).__name__} (a normalizer returns str or None)"
        )

    def trigram_values(self, value: Any) -> set[str]:
        """Return the stored trigram values of ``value`` under the primary key (a set)."""
        text = self.normalize(value)
        if text is None:
            return set()
        return self._values(self.active_keyring().primary, text)

    def term_values(self, text: str) -> dict[str, tuple[str, ...]]:
        """Return, per active key id (primary first), the distinct trigram values of ``text``.

        ``text`` is a normalized term of at least :data:`TRIGRAM` characters.
        """
        return {key.id: tuple(sorted(self._values(key, text))) for key in self._ordered_keys()}

    def matches(self, value: Any, held: Iterable[str]) -> bool | None:
        """Whether ``held``, an owner row's stored side rows, are exactly those of ``value``.

        They are when they are the trigram values of ``value`` under the one index key they
        are all under (an older active key counts: lookups find it), or when both are empty.
        None when they are all under a key id the keyring no longer holds: they cannot be
        checked, and no lookup finds them until ``fieldcrypt reindex`` rewrites them. False
        otherwise: rows missing, extra or altered, under several keys, or computed by
        another normalizer.
        """
        stored = tuple(sorted(set(held)))
        text = self.normalize(value)
        if not stored:
            return text is None or len(text) < TRIGRAM
        key_ids = {v.partition(":")[0] for v in stored}
        if len(key_ids) != 1:
            return False
        (key_id,) = key_ids
        if key_id not in self.active_keyring().ids:
            return None
        if text is None:
            return False
        return tuple(sorted(self._values(self._key(key_id), text))) == stored

    def digest(self, text: str, key_id: str) -> bytes:
        """Return the full-size HMAC of normalized ``text``: what exact filtering compares.

        Raises:
            ConfigurationError: the keyring holds no key ``key_id``.
        """
        (mac,) = self._macs(self._key(key_id), [text])
        return mac

    def contains(self, text: str, length: int, digest: bytes, key_id: str) -> bool:
        """Whether normalized ``text`` has a substring of ``length`` characters whose HMAC
        under ``key_id`` is ``digest`` (see :meth:`digest`); compared in constant time.

        Raises:
            ConfigurationError: the keyring holds no key ``key_id``.
        """
        windows = (text[i : i + length] for i in range(len(text) - length + 1))
        found = False
        for mac in self._macs(self._key(key_id), windows):
            found |= hmac.compare_digest(mac, digest)
        return found

    def _macs(self, key: Key, texts: Iterable[str]) -> Iterator[bytes]:
        # The full-size HMAC of each text under the index's substring key, derived once: the
        # hot path of every write, reindex and exact filter.
        derived = self._derived(key, _HKDF_SUBSTRING_INFO_PREFIX)
        for text in texts:
            yield hmac.digest(derived, text.encode("utf-8", "surrogatepass"), "sha256")

    def _values(self, key: Key, text: str) -> set[str]:
        # Each distinct trigram hashed once.
        prefix = f"{key.id}:"
        return {prefix + self._truncated(mac) for mac in self._macs(key, set(_trigrams(text)))}

    def __repr__(self) -> str:
        return f"SubstringIndex({self.table!r}, name={self.name!r}, bits={self.bits})"


def _trigrams(text: str) -> list[str]:
    return [text[i : i + TRIGRAM] for i in range(len(text) - TRIGRAM + 1)]

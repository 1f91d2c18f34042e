"""Hypothesis strategies of plaintexts and keyrings, for property tests of encrypted models.

Typical usage::

    from hypothesis import given
    from sa_fieldcrypt.testing import text_plaintexts

    @given(text_plaintexts())
    def test_round_trip(session, value):
        ...

``hypothesis`` is imported only when a strategy is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from sa_fieldcrypt.blind_index import TRIGRAM, Normalizer, SubstringIndex, casefold
from sa_fieldcrypt.keys import PURPOSE_KINDS, KeyKind, Keyring, Purpose, generate_key

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "boolean_plaintexts",
    "bytes_plaintexts",
    "contained_terms",
    "date_plaintexts",
    "datetime_plaintexts",
    "decimal_plaintexts",
    "email_addresses",
    "float_plaintexts",
    "integer_plaintexts",
    "json_plaintexts",
    "keyrings",
    "note_texts",
    "phone_numbers",
    "search_terms",
    "text_plaintexts",
    "time_plaintexts",
    "uuid_plaintexts",
]

_MICROSECOND = timedelta(microseconds=1)
_SPECIAL_DECIMALS = "0 -0 0E-7 1.00 -1E+3 Infinity -Infinity NaN -NaN NaN123 sNaN -sNaN9"


def text_plaintexts() -> SearchStrategy[str]:
    """Any Python string: all of Unicode, NUL, astral characters and lone surrogates."""
    from hypothesis import strategies as st

    return st.text(alphabet=st.characters(codec=None))


def bytes_plaintexts() -> SearchStrategy[bytes]:
    """Any bytes, empty included."""
    from hypothesis import strategies as st

    return st.binary()


def json_plaintexts() -> SearchStrategy[Any]:
    """Any JSON value that round-trips exactly (finite floats, str keys); never None."""
    from hypothesis import strategies as st

    scalars = (
        st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text_plaintexts()
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(text_plaintexts(), children, max_size=5)
        ),
        max_leaves=20,
    )


def date_plaintexts() -> SearchStrategy[date]:
    """Any ``datetime.date``, years 1 to 9999 (never a ``datetime``)."""
    from hypothesis import strategies as st

    return st.dates()


def datetime_plaintexts(*, timezone: bool = True) -> SearchStrategy[datetime]:
    """Any ``datetime``: aware ones at any fixed offset (``timezone=True``), or naive ones.

    Offsets are any whole number of microseconds strictly within a day either way, such as
    ``+05:45``, ``-00:00:01`` or ``+23:59:59.999999``, UTC among them; values reach
    ``datetime.min`` and ``datetime.max``.
    """
    import datetime as dt

    from hypothesis import strategies as st

    if not timezone:
        return st.datetimes()
    day = dt.timedelta(days=1)
    offsets = st.timedeltas(min_value=-day + _MICROSECOND, max_value=day - _MICROSECOND)
    zones = st.just(dt.UTC) | st.builds(dt.timezone, offsets)
    return st.datetimes(timezones=zones)


def time_plaintexts() -> SearchStrategy[time]:
    """Any naive ``datetime.time``, to the microsecond, ``00:00:00`` to ``23:59:59.999999``.

    Never a ``datetime``, nor a time with a ``tzinfo``; ``fold`` is 0 or 1.
    """
    from hypothesis import strategies as st

    return st.times() | st.sampled_from([time.min, time.max, time(0, 0, 0, 1)])


def integer_plaintexts() -> SearchStrategy[int]:
    """Any ``int``, never a ``bool``, of any size.

    Small ones, ones past 64 bits, and now and then one of more than 4300 decimal digits,
    past what ``str()`` converts. Hypothesis shows a failing example with ``repr()``, which
    refuses such an int: a test that fails on one reports that ``ValueError`` unless it
    raises the limit (``sys.set_int_max_str_digits(0)``) while it runs.
    """
    from hypothesis import strategies as st

    huge = st.builds(
        lambda bits, low, negative: (-1 if negative else 1) * ((1 << bits) + low),
        st.integers(min_value=14_300, max_value=20_000),
        st.integers(min_value=0, max_value=2**64),
        st.booleans(),
    )
    return (
        st.integers()
        | st.integers(min_value=-(2**200), max_value=2**200)
        | st.sampled_from([0, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64])
        | huge
    )


def float_plaintexts() -> SearchStrategy[float]:
    """Any ``float``, NaNs of every sign and payload included.

    ``-0.0``, subnormals such as ``5e-324``, infinities, and any IEEE 754 bit pattern.
    """
    import struct

    from hypothesis import strategies as st

    any_bits = st.integers(min_value=0, max_value=2**64 - 1).map(
        lambda bits: struct.unpack(">d", bits.to_bytes(8, "big"))[0]
    )
    special = st.sampled_from(
        [
            *(0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308),
            *(float("inf"), float("-inf"), float("nan")),
        ]
    )
    return st.floats() | special | any_bits


def decimal_plaintexts() -> SearchStrategy[Decimal]:
    """Any ``Decimal``, exactly as written: digits, exponent and specials.

    Trailing zeros, ``-0``, 30 to 60 digits at exponents far out of the default context's
    range, infinities, and NaN and sNaN with sign and payload.
    """
    from hypothesis import strategies as st

    long = st.builds(
        lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
        st.integers(min_value=0, max_value=1),
        st.lists(st.integers(min_value=0, max_value=9), min_size=30, max_size=60),
        st.integers(min_value=-(10**8), max_value=10**8),
    )
    special = st.sampled_from([Decimal(text) for text in _SPECIAL_DECIMALS.split()])
    return st.decimals(allow_nan=True, allow_infinity=True) | long | special


def boolean_plaintexts() -> SearchStrategy[bool]:
    """``True`` and ``False``."""
    from hypothesis import strategies as st

    return st.booleans()


def uuid_plaintexts() -> SearchStrategy[UUID]:
    """Any ``uuid.UUID``: every 128-bit value, of any version and variant, nil and max too."""
    from hypothesis import strategies as st

    return st.integers(min_value=0, max_value=2**128 - 1).map(lambda n: UUID(int=n)) | st.uuids()


def keyrings(
    *,
    max_keys: int = 4,
    kinds: Iterable[KeyKind] | None = None,
    purpose: Purpose = "encryption",
) -> SearchStrategy[Keyring]:
    """Keyrings of ``purpose`` with 1 to ``max_keys`` fresh keys, any of them primary.

    Args:
        max_keys: the most keys a keyring holds.
        kinds: the kinds to draw keys from; by default every kind of ``purpose``.
        purpose: ``"encryption"`` or ``"blind-index"``.
    """
    from hypothesis import strategies as st

    ids = st.lists(
        st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
        min_size=1,
        max_size=max_keys,
        # A blind-index keyring refuses ids that differ only in case.
        unique_by=str.lower,
    )
    kind = st.sampled_from(tuple(PURPOSE_KINDS[purpose] if kinds is None else kinds))

    @st.composite
    def build(draw: st.DrawFn) -> Keyring:
        key_ids = draw(ids)
        primary = draw(st.sampled_from(key_ids))
        return Keyring(
            {kid: generate_key(draw(kind)) for kid in key_ids}, primary=primary, purpose=purpose
        )

    return build()


# Spellings that the built-in normalizers and transforms fold into one value.
_PHONE_DIGIT_ZEROS = (0x30, 0xFF10, 0x0660, 0x0966)  # ASCII, full-width, Arabic-Indic, Devanagari
_PHONE_PLUS_SIGNS = ("+", "\uff0b", "\ufe62", "\u207a")
_PHONE_SEPARATORS = (" ", "-", ".", "\u00a0", " - ", "/")
_PHONE_WRAPS = (("", ""), ("tel:", ""), ("\u202a", "\u202c"), ("\u200e", ""))
_INVISIBLE = ("\u200b", "\u00ad", "\u2060", "\ufeff")
_SPACES = ("", " ", "  ", "\t", "\n", "\u3000")
# Domain labels beyond ASCII, as users type them (not their IDNA xn-- form).
_UNICODE_LABELS = ("bücher", "müller", "例え", "пример", "δοκιμή", "café", "straße", "日本")
_TLDS = ("com", "org", "example", "de", "co.uk", "рф", "中国")


def phone_numbers(number: str | None = None) -> SearchStrategy[str]:
    """Phone numbers as people type them, which :func:`~sa_fieldcrypt.normalize_phone` folds.

    Each is a spelling of an E.164 number (``number``, such as ``"+15550100000"``, or one
    drawn with 8 to 15 digits): digits grouped by spaces, dashes, dots, slashes or no-break
    spaces, the first group now and then in parentheses, in ASCII, full-width, Arabic-Indic
    or Devanagari digits, with any of the plus signs, a ``tel:`` prefix, invisible direction
    marks or surrounding white space. ``normalize_phone`` gives the E.164 number back for
    every one, and :func:`~sa_fieldcrypt.last_digits` its last digits, so a property test
    that stores one spelling and looks up with another exercises both.

    Args:
        number: the number to spell, ``+`` and digits only; by default any.

    Raises:
        ValueError: ``number`` is not ``+`` and 8 to 15 ASCII digits.
    """
    from hypothesis import strategies as st

    if number is not None and not (
        number.startswith("+") and number[1:].isascii() and number[1:].isdigit()
    ):
        raise ValueError("phone_numbers(number=) takes an E.164 number: '+' and ASCII digits")
    if number is not None and not 8 <= len(number) - 1 <= 15:
        raise ValueError("phone_numbers(number=) takes an E.164 number of 8 to 15 digits")
    numbers = (
        st.just(number)
        if number is not None
        else st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True)
    )

    @st.composite
    def spell(draw: st.DrawFn) -> str:
        digits = draw(numbers)[1:]
        zero = draw(st.sampled_from(_PHONE_DIGIT_ZEROS))
        written = "".join(chr(zero + int(d)) for d in digits)
        # Cut the digits into groups: the country code first, then groups of 1 to 4.
        cuts = sorted(draw(st.sets(st.integers(1, len(written) - 1), max_size=5)))
        groups = [written[a:b] for a, b in zip([0, *cuts], [*cuts, len(written)], strict=True)]
        if len(groups) > 2 and draw(st.booleans()):
            groups[1] = f"({groups[1]})"
        separator = draw(st.sampled_from(_PHONE_SEPARATORS))
        body = draw(st.sampled_from(_PHONE_PLUS_SIGNS)) + separator.join(groups)
        before, after = draw(st.sampled_from(_PHONE_WRAPS))
        pad = st.sampled_from(_SPACES)
        return f"{draw(pad)}{before}{body}{after}{draw(pad)}"

    return spell()


def email_addresses(address: str | None = None) -> SearchStrategy[str]:
    """Email addresses as people type them, which :func:`~sa_fieldcrypt.normalize_email` folds.

    Each is a spelling of one address (``address``, or one drawn with an ASCII local part and
    a domain of ASCII or Unicode labels such as ``bücher`` or ``пример``): letters in mixed
    case, now and then in full-width forms, zero-width spaces or soft hyphens inside,
    surrounding white space, a trailing dot after the domain or ideographic full stops
    between its labels. ``normalize_email`` folds every spelling of one address alike, and
    :data:`~sa_fieldcrypt.email_domain` gives their one domain, so a property test that
    stores one spelling and looks up with another exercises both.

    Args:
        address: the address to spell, one ``@``; by default any.

    Raises:
        ValueError: ``address`` does not hold exactly one ``@`` between a local part and a
            domain.
    """
    from hypothesis import strategies as st

    if address is not None and (address.count("@") != 1 or address.split("@")[1] == ""):
        raise ValueError("email_addresses(address=) takes an address: local part, '@', domain")
    label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
    domains = st.builds(
        lambda names, tld: ".".join([*names, tld]),
        st.lists(label | st.sampled_from(_UNICODE_LABELS), min_size=1, max_size=3),
        st.sampled_from(_TLDS),
    )
    addresses = (
        st.just(address)
        if address is not None
        else st.builds(
            "{}@{}".format,
            st.from_regex(r"[a-z0-9]([a-z0-9._+-]{0,15}[a-z0-9])?", fullmatch=True),
            domains,
        )
    )

    def letter(ch: str, upper: bool, wide: bool, hidden: str) -> str:
        if upper and ch.upper().casefold() == ch.casefold():
            ch = ch.upper()
        if wide and len(ch) == 1 and "!" <= ch <= "~" and ch != "@":
            ch = chr(ord(ch) + 0xFEE0)  # the full-width form, which NFKC folds back
        return hidden + ch

    @st.composite
    def spell(draw: st.DrawFn) -> str:
        text = draw(addresses)
        local, _, domain = text.rpartition("@")
        upper = draw(st.booleans())
        wide = draw(st.integers(0, 9)) == 0
        hidden = draw(st.sampled_from(("", "", *_INVISIBLE)))

        def each(part: str) -> str:
            return "".join(
                letter(ch, upper and draw(st.booleans()), wide, hidden if i == 1 else "")
                for i, ch in enumerate(part)
            )

        dot = draw(st.sampled_from((".", ".", "\u3002")))
        domain = each(domain).replace(".", dot)
        if draw(st.booleans()):
            domain += "."
        pad = st.sampled_from(_SPACES)
        return f"{draw(pad)}{each(local)}@{domain}{draw(pad)}"

    return spell()


# Free text for substring indexes. Words share trigrams with each other ("love", "lovelace",
# "lace"), so that rows share trigram values and lookups have candidates to filter out.
_NOTE_WORDS = (
    *("ada", "love", "lace", "lovelace", "Lovelace", "LOVE", "ace", "lace-up", "grace"),
    *("call", "called", "email", "e-mail", "10:00", "2024", "#42", "n/a"),
    # Case folding lengthens these: "ß" is "ss", "İ" is "i" and a combining dot, "ﬃ" is "ffi".
    *("straße", "STRASSE", "Strasse", "İstanbul", "istanbul", "ﬃ", "ﬁle", "ŉ", "ǰ"),
    # NFKC composes or replaces these: full-width letters, a decomposed é, a Roman numeral.
    *("\uff4c\uff4f\uff56\uff45", "cafe\u0301", "café", "Ⅻ", "ǆ"),
    *("пример", "δοκιμή", "例え", "日本語", "\U0001f600ok", "x\U00010400y"),
    # What a LIKE pattern would treat as wildcards or escapes, and quotes.
    *("100%", "a_b", "50%_off", "back\\slash", "it's", '"quoted"'),
)
_NOTE_SEPARATORS = (" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", ", ", ". ")
# Removed by case folding: a term spelled with one inside still matches.
_NOTE_INVISIBLE = ("\u200b", "\u00ad", "\u2060", "\ufeff")
_SHORT_NOTES = ("", "a", "ab", "AB", " ", "  a", "ß", "İ", "ﬃ", "ßß", "\u200b", "a\u00adb")
_FOLDS_BACK = (str.upper, str.swapcase, str.title)


def note_texts(*, max_size: int = 12) -> SearchStrategy[str]:
    """Free text as people write notes, for properties of substring-indexed attributes.

    Each is words (from a small vocabulary, so that values share trigrams and lookups
    have false positives to drop), runs of a repeated character or pattern (``"aaaaa"``,
    ``"abcabcabc"``: repeated trigrams), digits, and now and then any characters, joined by
    spaces, tabs, newlines, no-break or ideographic spaces and punctuation, with leading and
    trailing white space. They reach what a normalizer must get right: characters that case
    folding lengthens (``"ß"``, ``"İ"``, ``"ﬃ"``, which alone has a trigram), full-width
    letters and decomposed accents that NFKC changes, invisible characters that folding
    removes, astral characters, LIKE wildcards (``%``, ``_``, ``\\``) and quotes; and short
    texts with no trigram at all, the empty string among them. Never None.

    Args:
        max_size: the most words and runs a text is made of.
    """
    from hypothesis import strategies as st

    runs = st.builds(
        lambda unit, times: unit * times,
        st.sampled_from(("a", "ab", "abc", "ß", "Aa", " .")),
        st.integers(min_value=2, max_value=6),
    )
    any_chars = st.text(st.characters(codec="utf-8"), min_size=1, max_size=4)
    piece = (
        st.sampled_from(_NOTE_WORDS)
        | runs
        | st.from_regex(r"[0-9]{1,6}", fullmatch=True)
        | any_chars
    )

    @st.composite
    def write(draw: st.DrawFn) -> str:
        pieces = draw(st.lists(piece, min_size=1, max_size=max_size))
        text = pieces[0]
        for word in pieces[1:]:
            text += draw(st.sampled_from(_NOTE_SEPARATORS)) + word
        if draw(st.integers(0, 4)) == 0 and len(text) > 1:
            at = draw(st.integers(1, len(text) - 1))
            text = text[:at] + draw(st.sampled_from(_NOTE_INVISIBLE)) + text[at:]
        pad = st.sampled_from(("", "", " ", "\n", "\t "))
        return f"{draw(pad)}{text}{draw(pad)}"

    return st.sampled_from(_SHORT_NOTES) | write()


def contained_terms(value: str, *, normalizer: Normalizer | None = casefold) -> SearchStrategy[str]:
    """Search terms that ``value`` contains, as ``contains()`` compares them.

    Each term, once normalized (by ``normalizer``, the substring index's), has at least
    three characters (``contains()`` refuses shorter terms) and is part of the normalized
    ``value``, so ``Model.notes.contains(term)`` must find the row holding ``value``. Terms
    are pieces of ``value`` as stored, pieces of its normalized text, and those spelled
    otherwise (upper case, swapped case, an invisible character inside) where the
    normalizer folds the spelling back; short and long, the whole value too.

    Args:
        value: the stored text.
        normalizer: the substring index's normalizer (``SubstringIndex(normalizer=...)``);
            by default :data:`~sa_fieldcrypt.casefold`, the index's default.

    Raises:
        ValueError: ``value`` has fewer than three characters once normalized: it contains
            no term ``contains()`` takes.
    """
    from hypothesis import strategies as st

    normalize = _term_normalizer(normalizer)
    text = normalize(value)
    if text is None or len(text) < TRIGRAM:
        raise ValueError(
            f"contained_terms(value) needs a value of at least {TRIGRAM} characters once "
            "normalized; draw values with .filter() or use search_terms()"
        )

    def found(term: str) -> bool:
        folded = normalize(term)
        return folded is not None and len(folded) >= TRIGRAM and folded in text

    @st.composite
    def pick(draw: st.DrawFn) -> str:
        start = draw(st.integers(0, len(text) - TRIGRAM))
        longest = len(text) - start
        length = draw(st.integers(TRIGRAM, min(longest, 8)) | st.just(longest))
        piece = text[start : start + length]
        candidates = []
        if draw(st.booleans()):
            # A piece of the value as stored: folding may make it longer or shorter.
            begin = draw(st.integers(0, len(value) - 1))
            candidates.append(value[begin : begin + draw(st.integers(1, len(value) - begin))])
        respell = draw(st.sampled_from((None, *_FOLDS_BACK)))
        if respell is not None:
            candidates.append(respell(piece))
        if draw(st.integers(0, 3)) == 0:
            at = draw(st.integers(1, len(piece) - 1))
            candidates.append(piece[:at] + draw(st.sampled_from(_NOTE_INVISIBLE)) + piece[at:])
        # The piece itself last: it is the normalizer's own output, which it keeps.
        for term in [*candidates, piece]:
            if found(term):
                return term
        from hypothesis import reject

        return reject()  # a normalizer that changes its own output: no term of this value

    return pick()


def search_terms(value: str, *, normalizer: Normalizer | None = casefold) -> SearchStrategy[str]:
    """Search terms for ``contains()`` against ``value``: some it contains, many it nearly does.

    Every term has at least three characters once normalized, so ``contains()`` takes it;
    whether the row holding ``value`` matches is for the test to compute
    (``normalize(term) in normalize(value)``). The terms are those of
    :func:`contained_terms` (when ``value`` has any); near misses built from ``value``'s
    own text: a contained piece with one character changed, dropped or added, and two of
    the value's trigrams that overlap in two characters, joined into four characters the
    value does not hold (``"abcd"`` of ``"abcx bcd"``): a substring index finds every
    trigram value of such a term, so only its exact filter drops the row; and unrelated
    text from :func:`note_texts`.

    Args:
        value: the stored text (any: a short one gets near misses and unrelated terms).
        normalizer: the substring index's normalizer; by default
            :data:`~sa_fieldcrypt.casefold`.
    """
    from hypothesis import strategies as st

    normalize = _term_normalizer(normalizer)
    text = normalize(value) or ""

    def takes(term: str) -> bool:
        folded = normalize(term)
        return folded is not None and len(folded) >= TRIGRAM

    choices: list[SearchStrategy[str]] = [note_texts(max_size=3).filter(takes)]
    if len(text) >= TRIGRAM:
        choices.append(contained_terms(value, normalizer=normalizer))

        @st.composite
        def near(draw: st.DrawFn) -> str:
            start = draw(st.integers(0, len(text) - TRIGRAM))
            length = draw(st.integers(TRIGRAM, min(len(text) - start, 8)))
            piece = text[start : start + length]
            at = draw(st.integers(0, len(piece) - 1))
            other = draw(st.sampled_from(("a", "z", "ß", " ", "%", "0", "é")))
            edit = draw(st.sampled_from(("change", "drop", "add")))
            if edit == "change":
                return piece[:at] + other + piece[at + 1 :]
            if edit == "drop" and len(piece) > TRIGRAM:
                return piece[:at] + piece[at + 1 :]
            return piece[:at] + other + piece[at:]

        choices.append(near().filter(takes))
        joined = _trigram_joins(text)
        if joined:
            choices.append(st.sampled_from(joined).filter(takes))
    return st.one_of(choices)


def _trigram_joins(text: str) -> list[str]:
    """Four-character terms whose two trigrams ``text`` holds, but which it does not hold."""
    trigrams = {text[i : i + TRIGRAM] for i in range(len(text) - TRIGRAM + 1)}
    joins = {a + b[-1] for a in trigrams for b in trigrams if a[1:] == b[:-1]}
    return sorted(j for j in joins if j not in text)[:50]


def _term_normalizer(normalizer: Normalizer | None) -> Callable[[Any], str | None]:
    # The index's own normalization, None and "" alike: what contains() compares.
    if normalizer is not None and not callable(normalizer):
        raise TypeError("normalizer must be callable, or None for the text as it is")
    return SubstringIndex("terms", normalizer=normalizer).normalize

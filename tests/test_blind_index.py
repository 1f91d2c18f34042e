"""Blind indexes: normalizers, keys, settings and the index values themselves."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import struct
import unicodedata
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Index, String, Text, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conftest import CONNECT_ARGS, server_url
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    ConfigurationError,
    Key,
    KeyProviderError,
    Keyring,
    Scrypt,
    SubstringIndex,
    Transform,
    ValueTypeError,
    casefold,
    compound,
    email_domain,
    encrypted_hybrid,
    first_chars,
    generate_key,
    last_digits,
    letters_lower,
    normalize_email,
    normalize_phone,
    typed_normalizer,
)
from sa_fieldcrypt.blind_index import MAX_SCRYPT_MEMORY, IndexValue, parse_index_value
from sa_fieldcrypt.testing import (
    date_plaintexts,
    datetime_plaintexts,
    decimal_plaintexts,
    float_plaintexts,
    integer_plaintexts,
    time_plaintexts,
    uuid_plaintexts,
)

INDEX_VALUE = re.compile(r"(?P<id>[A-Za-z0-9_-]{1,32}):(?P<mac>[0-9a-f]{64})\Z")
RING = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
key_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)


def _index(name: str = "customers.email_bidx", **kwargs: Any) -> BlindIndex:
    kwargs.setdefault("keyring", RING)
    return BlindIndex("email_bidx", name=name, **kwargs)


# -- normalizers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["ada@example.com", " Ada@Example.COM", "ADA@EXAMPLE.COM\n", "\tada@example.com  "],
)
def test_normalize_email_trims_and_lowercases(value: str) -> None:
    """Surrounding whitespace and letter case do not change a normalized email."""
    assert "ada@example.com" == normalize_email(value)


def test_normalize_email_composes_unicode() -> None:
    """A decomposed accent and its precomposed form normalize alike (NFC)."""
    assert normalize_email("jose\u0301@example.com") == normalize_email("JOS\u00c9@example.com")


def test_normalize_email_keeps_dots_and_tags() -> None:
    """Dots and +tags are significant at some providers, so they are kept."""
    assert "a.b+news@example.com" == normalize_email("A.B+news@example.com")


# Every Default_Ignorable_Code_Point, as listed in Unicode 14.0.0 DerivedCoreProperties.txt.
DEFAULT_IGNORABLES = [
    chr(cp)
    for lo, hi in [
        (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
        (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
        (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
        (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
        (0xE0000, 0xE0FFF),
    ]
    for cp in range(lo, hi + 1)
]  # fmt: skip


def _full_width(text: str) -> str:
    """ASCII text in its full-width forms (U+FF01 to U+FF5E; U+3000 for the space)."""
    return "".join(
        "\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text
    )


def test_normalize_email_removes_every_default_ignorable() -> None:
    """Each default-ignorable code point, anywhere in an address, is dropped."""
    assert 4174 == len(DEFAULT_IGNORABLES)
    for ch in DEFAULT_IGNORABLES:
        assert "ada@example.com" == normalize_email(f"{ch}a{ch}da@exa{ch}mple.com{ch}"), hex(
            ord(ch)
        )


@given(value=st.text(), data=st.data())
def test_inserting_default_ignorables_changes_nothing(value: str, data: st.DataObject) -> None:
    """Inserting default-ignorable code points anywhere leaves the normalized email as it was."""
    positions = data.draw(st.lists(st.integers(0, len(value)), max_size=5))
    inserted = value
    for at in sorted(positions, reverse=True):
        inserted = inserted[:at] + data.draw(st.sampled_from(DEFAULT_IGNORABLES)) + inserted[at:]
    assert normalize_email(value) == normalize_email(inserted)


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_full_width_and_ascii_addresses_are_equal(value: str) -> None:
    """An address typed with full-width characters normalizes as its ASCII spelling."""
    assert normalize_email(value) == normalize_email(_full_width(value))


@given(st.text())
def test_case_variants_are_equal(value: str) -> None:
    """Upper-, lower- and case-folded spellings of any text normalize alike (case folding)."""
    expected = normalize_email(value.casefold())
    assert expected == normalize_email(value)
    ascii_swapped = "".join(c.swapcase() if c.isascii() else c for c in value)
    assert normalize_email(ascii_swapped) == normalize_email(value)


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        (["kelvin@x.io", "\u212aelvin@x.io", "KELVIN@X.IO"], "kelvin@x.io"),  # Kelvin sign
        (["strasse@x.de", "stra\u00dfe@x.de", "STRA\u1e9eE@x.de", "STRASSE@x.de"], "strasse@x.de"),
        (["\u03c3@x.io", "\u03c2@x.io", "\u03a3@x.io"], "\u03c3@x.io"),  # sigma, final sigma
        (["ada@example.com", "ada@example.com.", "ada@example.com..", "ada@example.com . "],
         "ada@example.com"),
        (["ada@example.com", "ada@example\u3002com", "ada@example\uff0ecom",
          "ada@example\uff61com"], "ada@example.com"),
        (["ada@example.com", "\ufeffada@example.com", "a\u00adda@example.com",
          "ada\u200d@example.com", "ada@example.com\ufe0f"], "ada@example.com"),
        (["ada@example.com", "\uff41\uff44\uff41\uff20\uff45\uff58\uff41\uff4d\uff50"
          "\uff4c\uff45\uff0e\uff43\uff4f\uff4d"], "ada@example.com"),
    ],
    ids=["kelvin", "sharp-s", "sigma", "trailing-dots", "ideographic-dots", "invisible",
         "full-width"],
)  # fmt: skip
def test_normalize_email_folds_look_alikes(variants: list[str], expected: str) -> None:
    """Look-alike spellings of one address normalize to one value."""
    assert [expected] * len(variants) == [normalize_email(v) for v in variants]


def test_normalize_email_keeps_other_scripts_and_local_dots() -> None:
    """Folding is not a confusables skeleton: Cyrillic a (U+0430) stays apart from Latin a."""
    assert normalize_email("\u0430da@example.com") != normalize_email("ada@example.com")
    assert normalize_email("a.da@example.com") != normalize_email("ada@example.com")
    assert "ada.@example.com" == normalize_email("ada.@example.com")  # local part kept


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_normalize_email_of_blank_is_none(value: str) -> None:
    """A blank email is not indexed."""
    assert normalize_email(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "+1 (555) 010-0000",
        "+15550100000",
        " +1.555.010.0000 ",
        "+1 555 010 0000",
        "\uff0b\uff11 555 010 0000",  # full-width plus and digit, as some keyboards type them
        "\u202a+1 (555) 010-0000\u202c",  # direction marks, as phones copy numbers
        "(+1) 555 010 0000",
        "tel:+1-555-010-0000",
    ],
)
def test_normalize_phone_keeps_digits_and_leading_plus(value: str) -> None:
    """Formatting characters go; the digits and a leading plus stay."""
    assert "+15550100000" == normalize_phone(value)


def test_normalize_phone_infers_no_country() -> None:
    """Without a leading plus the number stays national: no country code is guessed."""
    assert "5550100000" == normalize_phone("(555) 010-0000")
    assert normalize_phone("(555) 010-0000") != normalize_phone("+1 555 010 0000")


# Plus signs as the phone normalizer reads them: "+", what NFKC folds to it, and look-alikes.
PLUS_SIGNS = "+\uff0b\ufe62\u207a\u208a\ufb29\u02d6\u1429\u16ed\u2795\U0001029b"


def _is_noise(ch: str) -> bool:
    """Whether a character means nothing in a phone number: no digit, letter, plus or mark."""
    folded = unicodedata.normalize("NFKC", ch).casefold()
    return ch not in PLUS_SIGNS and not any(c.isalnum() or c in "#,;+" for c in folded)


phone_noise = st.text(
    st.characters(categories=["Zs", "Pd", "Ps", "Pe", "Po", "Sm", "Sc", "So", "Cf"]).filter(
        _is_noise
    )
)


@given(
    digits=st.text("0123456789", min_size=1, max_size=15),
    noise=st.lists(phone_noise, min_size=16, max_size=16),
)
def test_normalize_phone_ignores_everything_but_digits_and_the_plus(
    digits: str, noise: list[str]
) -> None:
    """Any formatting around and between the digits leaves '+' and the digits alone."""
    formatted = noise[0] + "+" + "".join(d + n for d, n in zip(digits, noise[1:], strict=False))
    assert "+" + digits == normalize_phone(formatted)
    assert digits == normalize_phone(formatted.replace("+", ""))


@given(
    plus=st.sampled_from(PLUS_SIGNS),
    digits=st.lists(st.characters(categories=["Nd"]), min_size=1, max_size=15),
    noise=phone_noise,
)
def test_normalize_phone_takes_any_plus_sign_and_any_decimal_digit(
    plus: str, digits: list[str], noise: str
) -> None:
    """Every plus sign look-alike leads, and every script's decimal digit is its ASCII digit."""
    ascii_digits = "".join(str(unicodedata.decimal(d)) for d in digits)
    assert "+" + ascii_digits == normalize_phone(noise + plus + noise.join(digits))


def test_every_character_nfkc_folds_to_plus_is_a_plus_sign() -> None:
    """The plus signs include every character that NFKC makes '+'."""
    folded = [chr(cp) for cp in range(0x30000) if unicodedata.normalize("NFKC", chr(cp)) == "+"]
    assert [c for c in folded if normalize_phone(c + "1") != "+1"] == []


@pytest.mark.parametrize(
    "value",
    [
        "+1 555 0100 ext. 7",
        "+1 555 0100 ext 7",
        "+1 555 0100 Ext.7",
        "+1 555 0100 extension 7",
        "+1 555 0100 extn 7",
        "+1 555 0100 x7",
        "+1 555 0100 X 7",
        "+1 555 0100 #7",
        "+1 555 0100, 7",
        "tel:+1-555-0100;ext=7",
        "+1 555 0100 \uff58\uff17",  # full-width x and 7
        "+1 555 0100 e\u200bxt 7",  # a zero-width space inside the marker
    ],
)
def test_normalize_phone_keeps_the_extension_apart(value: str) -> None:
    """Every way of writing an extension indexes it after ';ext=', apart from the number."""
    assert "+15550100;ext=7" == normalize_phone(value)


@given(
    number=st.text("0123456789", min_size=1, max_size=15),
    extension=st.text("0123456789", min_size=1, max_size=6),
    other=st.text("0123456789", min_size=1, max_size=6),
    mark=st.sampled_from([" ext. ", " x", "#", ";ext=", " extension ", ", "]),
)
def test_extensions_are_different_values(
    number: str, extension: str, other: str, mark: str
) -> None:
    """With an extension a number differs from itself without one, from the digits run
    together, and from the same number with another extension."""
    with_extension = normalize_phone(f"+{number}{mark}{extension}")
    assert f"+{number};ext={extension}" == with_extension
    assert with_extension != normalize_phone(f"+{number}")
    assert with_extension != normalize_phone(f"+{number}{extension}")
    assert (extension == other) == (with_extension == normalize_phone(f"+{number}{mark}{other}"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1-800-BOX-1234", "18001234"),  # the x of a word is a letter, not an extension
        ("555 0100 ext.", "5550100"),  # a mark without digits after it
        ("x7 555 0100", "75550100"),  # a mark before the first digit
        ("\u2460\u2461 555", "555"),  # circled digits are not decimal digits
    ],
)
def test_normalize_phone_extension_edges(value: str, expected: str) -> None:
    """Only a mark after the first digit with digits after it starts an extension."""
    assert expected == normalize_phone(value)


@pytest.mark.parametrize("value", ["", "n/a", "+", "call me"])
def test_normalize_phone_without_digits_is_none(value: str) -> None:
    """A phone value without digits is not indexed."""
    assert normalize_phone(value) is None


@pytest.mark.parametrize("normalizer", [normalize_email, normalize_phone])
def test_normalizers_refuse_non_text(normalizer: Any) -> None:
    """A non-str value is a ValueTypeError naming its type, not its content."""
    with pytest.raises(ValueTypeError, match="got int") as info:
        normalizer(5550100)
    assert "5550100" not in str(info.value)


@pytest.mark.parametrize("normalizer", [normalize_email, normalize_phone])
@settings(max_examples=500)
@given(value=st.text())
def test_normalizers_are_idempotent(normalizer: Any, value: str) -> None:
    """Normalizing a normalized value changes nothing, for any text."""
    once = normalizer(value)
    assert once == (None if once is None else normalizer(once))


# -- typed values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("python_type", "value", "indexed"),
    [
        (date, date(1815, 12, 10), "1815-12-10"),
        (datetime, datetime(2024, 7, 1, 12), "2024-07-01T12:00:00.000000"),
        (datetime, datetime(1970, 1, 1, tzinfo=UTC), "0Z"),
        (datetime, datetime(1970, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), "0Z"),
        (datetime, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "-1Z"),
        (time, time(9, 30), "09:30:00.000000"),
        (time, time(23, 59, 59, 999999, fold=1), "23:59:59.999999"),
        (int, 0, b"\x00"),
        (int, -129, b"\xff\x7f"),
        (float, -0.0, bytes(8)),
        (float, 1.0, bytes.fromhex("3ff0000000000000")),
        (float, -math.inf, bytes.fromhex("fff0000000000000")),
        (Decimal, Decimal("1.00"), "1E0"),
        (Decimal, Decimal("-12.340"), "-1234E-2"),
        (Decimal, Decimal("-0.00"), "0"),
        (Decimal, Decimal("1E+3"), "1E3"),
        (Decimal, Decimal("-Infinity"), "-Infinity"),
        (uuid.UUID, uuid.UUID(int=1), bytes(15) + b"\x01"),
    ],
)
def test_typed_normalizer_indexes_the_documented_form(
    python_type: type, value: Any, indexed: str | bytes
) -> None:
    """Each typed value is hashed in the form docs/blind-indexes.md gives."""
    assert indexed == typed_normalizer(python_type)(value)


@pytest.mark.parametrize(
    ("python_type", "values"),
    [
        (date, date_plaintexts()),
        (datetime, datetime_plaintexts()),
        (datetime, datetime_plaintexts(timezone=False)),
        (time, time_plaintexts()),
        (int, integer_plaintexts()),
        (float, float_plaintexts().filter(lambda f: not math.isnan(f))),
        (Decimal, decimal_plaintexts().filter(lambda d: not d.is_nan())),
        (uuid.UUID, uuid_plaintexts()),
    ],
    ids=["date", "aware", "naive", "time", "int", "float", "Decimal", "UUID"],
)
@given(data=st.data())
def test_typed_values_index_alike_exactly_when_equal(
    python_type: type, values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    """Two values of a type have one index form if and only if Python's == calls them equal."""
    normalize = typed_normalizer(python_type)
    x, y = data.draw(values), data.draw(values)
    assert (x == y) is (normalize(x) == normalize(y))
    assert normalize(x) == normalize(x)


@given(value=datetime_plaintexts(), offset=st.integers(min_value=-1439, max_value=1439))
def test_one_instant_at_any_offset_indexes_alike(value: datetime, offset: int) -> None:
    """An aware datetime moved to another offset is the same instant, with the same index."""
    try:
        moved = value.astimezone(timezone(timedelta(minutes=offset)))
    except OverflowError:
        return  # past datetime.min or max at that offset: no such value to compare
    normalize = typed_normalizer(datetime)
    assert normalize(value) == normalize(moved)
    assert normalize(value) != normalize(value.replace(tzinfo=None))


@given(value=decimal_plaintexts().filter(Decimal.is_finite), zeros=st.integers(1, 5))
def test_trailing_zeros_do_not_change_a_decimal_index(value: Decimal, zeros: int) -> None:
    """1.5, 1.50 and 1.500 are one number, with one index."""
    sign, digits, exponent = value.as_tuple()
    padded = Decimal((sign, (*digits, *(0,) * zeros), int(exponent) - zeros))
    assert value == padded
    normalize = typed_normalizer(Decimal)
    assert normalize(value) == normalize(padded)


@pytest.mark.parametrize(
    ("python_type", "nan"),
    [
        (float, math.nan),
        (float, struct.unpack(">d", bytes.fromhex("fff8deadbeef0001"))[0]),
        (Decimal, Decimal("NaN")),
        (Decimal, Decimal("-sNaN7")),
    ],
)
def test_a_nan_is_not_indexed(python_type: type, nan: Any) -> None:
    """A NaN equals nothing, itself included: it gets no index value and matches no lookup."""
    assert None is typed_normalizer(python_type)(nan)
    assert () == _index(normalizer=typed_normalizer(python_type)).candidates(nan)


@pytest.mark.parametrize(
    ("python_type", "value", "got"),
    [
        (float, 1, "int"),
        (int, True, "bool"),
        (int, 1.0, "float"),
        (date, datetime(1815, 12, 10), "datetime"),
        (datetime, date(1815, 12, 10), "date"),
        (time, datetime(1815, 12, 10, 9, 30), "datetime"),
        (time, "09:30:00", "str"),
        (Decimal, 1.5, "float"),
        (uuid.UUID, "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "str"),
    ],
)
def test_typed_normalizer_refuses_other_types(python_type: type, value: Any, got: str) -> None:
    """A lookup value of another type is a ValueTypeError, not a lookup of another value."""
    with pytest.raises(ValueTypeError, match=f"expects {python_type.__name__}, got {got}") as info:
        typed_normalizer(python_type)(value)
    assert str(value) not in str(info.value)


def test_typed_normalizer_refuses_a_time_with_a_tzinfo() -> None:
    """A time with a tzinfo, which EncryptedTime refuses, is refused as a lookup value too."""
    with pytest.raises(ValueTypeError, match="expects a naive time, got one with a tzinfo"):
        typed_normalizer(time)(time(9, 30, tzinfo=UTC))


@pytest.mark.parametrize(("python_type", "expected"), [(bool, "must not have"), (str, "one of")])
def test_typed_normalizer_refuses_booleans_and_unknown_types(
    python_type: type, expected: str
) -> None:
    """A boolean has no blind index (two values show everything); other types are unknown."""
    with pytest.raises(ConfigurationError, match=expected):
        typed_normalizer(python_type)


# -- index values --------------------------------------------------------------------------


def test_index_value_format_and_length() -> None:
    """A value is '<key id>:<64 lowercase hex>': max_length long, within BLIND_INDEX_LENGTH."""
    long_id = "k" * 32
    ring = Keyring({long_id: generate_key("hmac-sha256")}, purpose="blind-index")
    index = _index(keyring=ring)
    value = index.compute("ada@example.com")
    assert value is not None
    match = INDEX_VALUE.match(value)
    assert match is not None
    assert long_id == match["id"]
    assert (97, 97) == (index.max_length, len(value))
    assert BLIND_INDEX_LENGTH >= len(value)


def test_index_value_matches_the_documented_construction() -> None:
    """The value is HMAC-SHA256 keyed by HKDF-SHA256(key, info=prefix + name), as documented."""
    secret = bytes(range(32))
    ring = Keyring({"b1": base64.urlsafe_b64encode(secret)}, purpose="blind-index")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"sa-fieldcrypt blind index v1\x00customers.email_bidx",
    )
    mac = HMAC(hkdf.derive(secret), hashes.SHA256())
    mac.update(b"ada@example.com")
    expected = "b1:" + mac.finalize().hex()
    index = _index(keyring=ring, normalizer=normalize_email)
    assert expected == index.compute(" Ada@Example.com ")


@given(value=st.text(), data=st.data())
def test_equal_normalized_values_give_equal_index_values(value: str, data: st.DataObject) -> None:
    """For any text, a reformatting the normalizer accepts gives the same index value."""
    variant = data.draw(_email_variants(value))
    index = _index(normalizer=normalize_email)
    assert normalize_email(value) == normalize_email(variant)
    assert index.compute(value) == index.compute(variant)


@given(value=st.text(min_size=1))
def test_other_columns_never_share_index_values(value: str) -> None:
    """The same plaintext gets unrelated index values in different columns and tables."""
    names = ["customers.email_bidx", "customers.phone_bidx", "users.email_bidx"]
    values = {_index(name).compute(value) for name in names}
    assert len(names) == len(values)


@given(a=st.text(), b=st.text())
def test_different_values_give_different_index_values(a: str, b: str) -> None:
    """Index values differ whenever the exact (unnormalized) values differ."""
    index = _index()
    assert (a == b) == (index.compute(a) == index.compute(b))


def test_candidates_cover_every_key_primary_first() -> None:
    """compute() uses the primary key; candidates() gives one value per key, primary first."""
    old = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    both = Keyring(
        [Key("b2", generate_key("hmac-sha256"), purpose="blind-index"), *old], purpose="blind-index"
    )
    before = _index(keyring=old).compute("x")
    candidates = _index(keyring=both).candidates("x")
    assert ["b2", "b1"] == [c.partition(":")[0] for c in candidates]
    assert before == candidates[1]
    assert candidates[0] == _index(keyring=both).compute("x")


def test_a_named_primary_writes_even_when_not_first() -> None:
    """With primary= naming a later key (a promoted Secret Manager version), it writes."""
    ring = Keyring(
        {"v2": generate_key("hmac-sha256"), "v1": generate_key("hmac-sha256")},
        primary="v1",
        purpose="blind-index",
    )
    assert "v1" == (_index(keyring=ring).compute("x") or "").partition(":")[0]
    assert ["v1", "v2"] == [c.partition(":")[0] for c in _index(keyring=ring).candidates("x")]


def test_index_keeps_the_keyring_it_was_given() -> None:
    """BlindIndex.keyring is what was passed, as EncryptedType.keyring is; None by default."""
    assert RING is _index().keyring
    assert BlindIndex("e").keyring is None


def test_unindexed_values() -> None:
    """None, and values the normalizer maps to None, have no index value and no candidates."""
    index = _index(normalizer=normalize_phone)
    assert index.compute(None) is None
    assert index.compute("n/a") is None
    assert () == index.candidates("n/a")


def test_bytes_are_indexed_like_their_utf8_text() -> None:
    """Without a normalizer, bytes are hashed as they are, str as UTF-8."""
    assert _index().compute("é") == _index().compute("é".encode())


@pytest.mark.parametrize(
    ("kwargs", "value", "expected"),
    [
        ({}, 42, "hashes str or bytes, got int"),
        ({"normalizer": lambda v: 7}, "x", "the normalizer returned int"),
    ],
)
def test_wrong_types_are_value_type_errors(kwargs: Any, value: Any, expected: str) -> None:
    """A value or normalizer result of the wrong type raises ValueTypeError saying which."""
    with pytest.raises(ValueTypeError, match=expected):
        _index(**kwargs).compute(value)


def test_unnamed_index_cannot_compute() -> None:
    """A BlindIndex used outside encrypted_hybrid() needs an explicit name."""
    with pytest.raises(ConfigurationError, match="has no name"):
        BlindIndex("email_bidx", keyring=RING).compute("x")


def test_keys_are_redacted() -> None:
    """No repr or str of a key, keyring or index shows the secret."""
    secret = generate_key("hmac-sha256")
    key = Key("b1", secret, purpose="blind-index")
    ring = Keyring([key], purpose="blind-index")
    shown = [repr(key), str(key), repr(ring), str(ring), repr(_index(keyring=ring))]
    assert all(secret not in s and secret[:12] not in s for s in shown)


# -- providers ------------------------------------------------------------------------


class _Provider:
    """Serves the keyrings it holds in turn; an exception item is raised instead."""

    def __init__(self, *results: Keyring | Exception, cache_ttl: float | None = None):
        self.results = list(results)
        self.cache_ttl = cache_ttl

    def load(self) -> Keyring:
        result = self.results[0] if len(self.results) == 1 else self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def test_provider_keys_refresh_after_ttl() -> None:
    """A provider with cache_ttl is reloaded once it expires, so a new key is picked up."""
    newer = Keyring(
        [Key("b2", generate_key("hmac-sha256"), purpose="blind-index"), *RING],
        purpose="blind-index",
    )
    index = BlindIndex("e", name="t.e", keyring=_Provider(RING, newer, cache_ttl=0))
    assert ("b1",) == index.active_keyring().ids
    assert ("b2", "b1") == index.active_keyring().ids


def test_provider_outage_serves_previous_keys(caplog: pytest.LogCaptureFixture) -> None:
    """A failing refresh keeps the loaded keys and logs a warning without key material."""
    index = BlindIndex("e", name="t.e", keyring=_Provider(RING, OSError("down"), cache_ttl=0))
    first = index.compute("x")
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        assert first == index.compute("x")
    assert "failed to refresh" in caplog.text
    assert RING.primary.export() not in caplog.text


def test_provider_failure_without_keys_is_a_provider_error() -> None:
    """A provider failing on the first load raises KeyProviderError naming the provider."""
    index = BlindIndex("e", name="t.e", keyring=_Provider(OSError("secret detail")))
    with pytest.raises(KeyProviderError, match="_Provider failed to load keys") as info:
        index.compute("x")
    assert "secret detail" not in str(info.value)


def test_provider_returning_the_wrong_type_is_refused() -> None:
    """A blind-index provider serving encryption keys is refused, saying what to serve."""
    index = BlindIndex("e", name="t.e", keyring=_Provider(Keyring({"k": generate_key()})))
    with pytest.raises(KeyProviderError, match="returned a keyring of encryption keys") as info:
        index.compute("x")
    assert "purpose='blind-index'" in str(info.value)


def test_an_encryption_keyring_is_refused_at_construction() -> None:
    """BlindIndex(keyring=) with encryption keys fails at once, naming the purpose to use."""
    with pytest.raises(ConfigurationError, match="keyring of blind-index keys"):
        BlindIndex("e", keyring=Keyring({"k1": generate_key()}))


# -- which index serves which lookup (docs/blind-indexes.md) --------------------------------

_LOOKUP_INDEXES = {
    "own-index": [
        Index("uq_fc_explain_station_email", "station_id", "email_bidx", unique=True),
        Index("ix_fc_explain_email_bidx", "email_bidx"),
    ],
    "email-first": [Index("uq_fc_explain_email_station", "email_bidx", "station_id", unique=True)],
}


@pytest.mark.parametrize(
    ("layout", "used"),
    [("own-index", "ix_fc_explain_email_bidx"), ("email-first", "uq_fc_explain_email_station")],
)
def test_email_lookup_uses_the_documented_index(
    layout: str, used: str, index_keyring: Keyring
) -> None:
    """On PostgreSQL, an email-only lookup is served by either documented index layout."""
    engine = create_engine(server_url("postgresql"), connect_args=CONNECT_ARGS)

    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "fc_explain_customers"
        __table_args__ = tuple(_LOOKUP_INDEXES[layout])
        id: Mapped[int] = mapped_column(primary_key=True)
        station_id: Mapped[int]
        email_encrypted: Mapped[str] = mapped_column(Text)
        email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        email = encrypted_hybrid(
            "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
        )

    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            # Index values that look like real ones, ten stations, and fresh statistics.
            conn.exec_driver_sql(
                "INSERT INTO fc_explain_customers (id, station_id, email_encrypted, email_bidx) "
                "SELECT g, mod(g, 10), 'x', 'b1:' || md5(g::text) || md5(g::text) "
                "FROM generate_series(1, 5000) AS g"
            )
            conn.exec_driver_sql("ANALYZE fc_explain_customers")
        lookup = select(Customer.id).where(Customer.email == "ada@example.com")
        sql = lookup.compile(engine, compile_kwargs={"literal_binds": True})
        assert "WHERE fc_explain_customers.email_bidx = 'b1:" in str(sql)
        with engine.begin() as conn:
            # Off, a sequential scan is chosen only when no index can serve the lookup at all.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
    assert used in plan, plan
    assert "Seq Scan" not in plan, plan


# -- transforms ------------------------------------------------------------------------------

ascii_digits = st.text(st.sampled_from("0123456789"), min_size=4, max_size=15)
# Text with decimal digits of any script, and separators phones are written with.
phoneish = st.text(
    st.one_of(st.sampled_from("0123456789 +-().#x"), st.characters(categories=["Nd"])),
    max_size=25,
)


@given(number=ascii_digits, noise=st.lists(st.sampled_from(" -().+"), max_size=6))
def test_last_digits_indexes_the_last_n_digits(number: str, noise: list[str]) -> None:
    """last_digits(4) of a number however punctuated is its last four ASCII digits."""
    spelled = "".join(ch + (noise.pop() if noise else "") for ch in number)
    assert number[-4:] == last_digits(4)(spelled)


@given(value=phoneish)
def test_last_digits_agrees_with_plain_digit_arithmetic(value: str) -> None:
    """The index is the value's decimal digits (as ASCII), last n; None with fewer than n."""
    decimals = (unicodedata.decimal(ch, None) for ch in value)
    digits = "".join(str(d) for d in decimals if d is not None)
    assert (digits[-3:] if len(digits) >= 3 else None) == last_digits(3)(value)


@given(value=phoneish)
def test_a_stored_values_digits_are_a_term_that_finds_it(value: str) -> None:
    """The term of what a value indexes is what it indexes: a lookup finds the value."""
    transform = last_digits(4)
    indexed = transform(value)
    if indexed is not None:
        assert indexed == transform.term(indexed)


def test_last_digits_terms_are_exactly_n_digits() -> None:
    """A term of more or fewer digits than n matches nothing, not its last n digits."""
    transform = last_digits(4)
    assert "0000" == transform.term("00-00")
    assert transform.term("10000") is None
    assert transform.term("000") is None
    assert transform("123") is None


@given(value=st.text(), n=st.integers(1, 6))
def test_first_chars_is_a_prefix_of_the_folded_text(value: str, n: int) -> None:
    """first_chars(n) is the first n characters of the folded, stripped text, or None."""
    folded = normalize_email(value) or ""
    expected = folded[:n] if len(folded) >= n else None
    assert expected == first_chars(n)(value)


@given(value=st.text())
def test_first_chars_terms_find_their_values(value: str) -> None:
    """A value's indexed prefix, as a term, hashes as the value does: folding is idempotent."""
    transform = first_chars(2)
    indexed = transform(value)
    if indexed is not None and len(indexed.strip()) == 2:
        assert indexed == transform.term(indexed)


def test_first_chars_folds_case_and_width() -> None:
    """Case, full-width letters and surrounding space do not change the prefix."""
    assert "ada" == first_chars(3)("  Ada Lovelace")
    assert "ada" == first_chars(3)("\uff21\uff24\uff21 Lovelace")
    assert "ada" == first_chars(3).term("ADA")
    assert first_chars(3).term("Ad") is None


@given(
    local=st.text(st.characters(codec="ascii", exclude_characters="@"), min_size=1),
    domain=st.from_regex(r"[a-z]{1,10}\.(com|org|example)", fullmatch=True),
)
def test_email_domain_indexes_the_folded_domain(local: str, domain: str) -> None:
    """The domain of any address is its folded domain, and that domain as a term."""
    address = f"{local}@{domain.upper()}."
    assert domain == email_domain(address)
    assert domain == email_domain.term(domain.title())


def test_email_domain_of_an_address_without_a_domain_is_none() -> None:
    """No "@" or nothing after it: not indexed; a term holding "@" matches nothing."""
    assert email_domain("ada.example.com") is None
    assert email_domain("ada@") is None
    assert email_domain.term("ada@example.com") is None


@given(value=st.text())
def test_letters_lower_keeps_folded_letters_only(value: str) -> None:
    """letters_lower is idempotent, holds letters only, and is None without any."""
    indexed = letters_lower(value)
    if indexed is None:
        assert not any(ch.isalpha() for ch in normalize_email(value) or "")
    else:
        assert all(ch.isalpha() for ch in indexed)
        assert indexed == letters_lower(indexed)


def test_letters_lower_ignores_punctuation_and_case() -> None:
    """O'Brien-Smith and obrien smith index alike."""
    assert "obriensmith" == letters_lower("O'Brien-Smith")
    assert letters_lower("O'Brien-Smith") == letters_lower("obrien smith")


@pytest.mark.parametrize("make", [last_digits, first_chars])
@pytest.mark.parametrize("n", [0, -1, 2.0, True, "4"])
def test_transform_sizes_must_be_positive_ints(make: Any, n: Any) -> None:
    """A size that is not a positive int is refused when the transform is made."""
    with pytest.raises(ConfigurationError, match="positive int"):
        make(n)


@pytest.mark.parametrize("transform", [last_digits(4), first_chars(2), email_domain, letters_lower])
def test_transforms_refuse_non_text(transform: Transform) -> None:
    """A value that is not a str raises ValueTypeError, as the normalizers do."""
    with pytest.raises(ValueTypeError, match="expects str"):
        transform(1234)


def test_a_custom_transform_uses_its_function_for_terms_by_default() -> None:
    """Transform(f) indexes f(value), and looks terms up as f(term)."""
    top_level_domain = Transform(lambda email: email.rpartition(".")[2].lower() or None)
    index = _index(normalizer=top_level_domain)
    assert index.derived
    assert b"com" == index.normalize("Ada@Example.COM")
    assert b"com" == index.normalize_term("COM")
    assert not _index().derived


@given(value=st.text(min_size=1))
def test_two_indexes_of_one_transform_under_two_names_never_share_values(value: str) -> None:
    """Each index's key comes from its own name: same text, same transform, different values."""
    first = _index("contacts.phone_last4", normalizer=letters_lower).compute(value)
    second = _index("contacts.phone_letters", normalizer=letters_lower).compute(value)
    assert (first is None) == (second is None)
    if first is not None:
        assert first != second


# -- compound normalizers ----------------------------------------------------------------------

parts = st.tuples(st.text(max_size=6), st.text(max_size=6), st.text(max_size=6))


@given(a=parts, b=parts)
def test_compound_encoding_is_unambiguous(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    """Two tuples of parts encode alike exactly when their parts are equal, whatever they hold."""
    three = compound(x=None, y=None, z=None)
    assert (a == b) == (three(a) == three(b))


def test_compound_parts_are_length_prefixed() -> None:
    """Each part is its 4-byte big-endian length, then its bytes: ("ab", "c") is not ("a", "bc")."""
    two = compound(first=None, last=None)
    assert b"\x00\x00\x00\x02ab\x00\x00\x00\x01c" == two(("ab", "c"))
    assert two(("ab", "c")) != two(("a", "bc"))


def test_compound_parts_go_through_their_normalizers_and_terms() -> None:
    """Values go through each part's normalizer; terms through a transform's term reading."""
    name = compound(first=first_chars(1), last=letters_lower)
    index = _index(normalizer=name)
    assert index.normalize(("Ada", "Love-lace")) == index.normalize_term(("A", "LOVELACE"))
    assert name(("", "Lovelace")) is None  # a part with nothing to index
    assert name((None, "Lovelace")) is None
    flags = compound(consent=None, count=None)
    assert flags((True, 3)) == flags.term((True, 3))
    assert flags((True, 3)) != flags((False, 3))


def test_compound_refuses_other_shapes() -> None:
    """No part, a non-callable part, a non-tuple or a tuple of the wrong size are refused."""
    with pytest.raises(ConfigurationError, match="at least one part"):
        compound()
    with pytest.raises(ConfigurationError, match="not callable"):
        compound(first="lower")  # type: ignore[arg-type]
    with pytest.raises(ValueTypeError, match="tuple of 2 values"):
        compound(first=None, last=None)(("Ada",))
    with pytest.raises(ValueTypeError, match="tuple of 2 values"):
        compound(first=None, last=None)("Ada Lovelace")
    with pytest.raises(ValueTypeError, match="compound part first"):
        compound(first=None, last=None)((1.5, "x"))


# -- truncated index values ------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 16, 64, 128, 252])
def test_a_truncated_value_is_a_prefix_of_the_full_one(bits: int) -> None:
    """bits=n keeps the key id and the first n / 4 hex digits of the full HMAC."""
    full = _index().compute("ada@example.com")
    short = _index(bits=bits).compute("ada@example.com")
    assert full is not None
    assert short is not None
    assert full[: len("b1:") + bits // 4] == short
    assert _index(bits=bits).matches("ada@example.com", short)
    assert _index(bits=bits).truncated
    assert not _index().truncated


@pytest.mark.parametrize("bits", [0, 2, 6, 260, 16.0, "16"])
def test_sizes_must_be_multiples_of_four_up_to_256(bits: Any) -> None:
    """A size that is no multiple of 4 from 4 to 256 is refused, naming the range."""
    with pytest.raises(ConfigurationError, match="multiple of 4 from 4 to 256"):
        _index(bits=bits)


def test_a_unique_index_must_be_full_size() -> None:
    """unique=True with a truncated size is refused: collisions would be violations."""
    with pytest.raises(ConfigurationError, match="unique index needs the full 256 bits"):
        _index(bits=32, unique=True)
    assert _index(unique=True).unique


def test_digest_is_the_full_size_value_whatever_the_size() -> None:
    """digest() gives the 256-bit value, which exact filtering compares."""
    index = _index(bits=8)
    data = index.normalize("ada@example.com")
    assert data is not None
    assert _index().compute("ada@example.com") == index.digest(data)
    assert _index().compute("ada@example.com") == index.digest(data, "b1")
    with pytest.raises(ConfigurationError, match="no longer holds key 'gone'"):
        index.digest(data, "gone")


# -- strategies ------------------------------------------------------------------------------


def _email_variants(value: str) -> st.SearchStrategy[str]:
    """Reformattings normalize_email accepts: outer whitespace and a case change."""
    stripped = value.strip()
    cased = st.sampled_from([stripped, stripped.upper(), stripped.lower(), stripped.title()])
    space = st.sampled_from(["", " ", "\t", "\n ", "\u00a0"])
    # A case change is only an accepted reformatting when it lowercases back to the same text.
    return (
        st.tuples(space, cased, space)
        .map(lambda p: "".join(p))
        .filter(lambda v: normalize_email(v) == normalize_email(value))
    )


# -- slow indexes ----------------------------------------------------------------------------

# Small parameters: the tests check the construction, not the cost.
FAST_SCRYPT = Scrypt(n=2**12, r=1, p=1)


def test_scrypt_defaults_and_label() -> None:
    """The defaults are n=2**14, r=8, p=1 (16 MiB), recorded as '$s14.8.1'."""
    assert ((2**14, 8, 1), "$s14.8.1") == ((Scrypt().n, Scrypt().r, Scrypt().p), Scrypt().label)
    assert 128 * 8 * (2**14 + 3) == Scrypt().memory


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n": 2**11}, "power of two from 2\\*\\*12 to 2\\*\\*20"),
        ({"n": 3 * 2**12}, "power of two"),
        ({"n": 2**21}, "power of two"),
        ({"n": 2.0**14}, "power of two"),
        ({"r": 0}, "r must be an int from 1 to 32"),
        ({"r": 33}, "r must be an int from 1 to 32"),
        ({"p": 17}, "p must be an int from 1 to 16"),
        ({"p": True}, "p must be an int"),
        ({"n": 2**20, "r": 8}, "more than MAX_SCRYPT_MEMORY"),
    ],
)
def test_scrypt_refuses_parameters_outside_their_range(
    kwargs: dict[str, Any], expected: str
) -> None:
    """Too weak to be worth it, malformed, or above the memory cap: ConfigurationError."""
    with pytest.raises(ConfigurationError, match=expected):
        Scrypt(**kwargs)


def test_the_memory_cap_admits_what_it_states() -> None:
    """The largest parameters under the cap are accepted; the cap is 256 MiB."""
    assert 256 * 1024 * 1024 == MAX_SCRYPT_MEMORY
    assert MAX_SCRYPT_MEMORY >= Scrypt(n=2**20, r=1, p=16).memory


def test_slow_must_be_a_scrypt() -> None:
    """Anything else as slow= is refused when the index is declared."""
    with pytest.raises(ConfigurationError, match="slow must be a Scrypt"):
        BlindIndex("dob_bidx", slow=14)  # type: ignore[arg-type]


def test_slow_index_value_matches_the_documented_construction() -> None:
    """HMAC(k, scrypt(value, salt=k)), k = HKDF(key, info=slow prefix + name), labelled."""
    secret = bytes(range(32))
    ring = Keyring({"b1": base64.urlsafe_b64encode(secret)}, purpose="blind-index")
    column_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"sa-fieldcrypt slow blind index v1\x00customers.email_bidx",
    ).derive(secret)
    stretched = hashlib.scrypt(b"1990-01-01", salt=column_key, n=2**12, r=1, p=1, dklen=32)
    mac = HMAC(column_key, hashes.SHA256())
    mac.update(stretched)
    expected = "b1$s12.1.1:" + mac.finalize().hex()
    index = _index(keyring=ring, normalizer=typed_normalizer(date), slow=FAST_SCRYPT)
    assert expected == index.compute(date(1990, 1, 1))


def test_slow_index_values_differ_from_fast_ones_and_by_parameters() -> None:
    """The same value under one key and name gives unrelated digests fast, slow, and per cost."""
    indexes = [_index(), _index(slow=FAST_SCRYPT), _index(slow=Scrypt(n=2**12, r=2, p=1))]
    values = [i.compute("ada@example.com") for i in indexes]
    parsed = [parse_index_value(v or "") for v in values]
    assert ["", "$s12.1.1", "$s12.2.1"] == [p.cost for p in parsed if p]
    assert 3 == len({p.digest for p in parsed if p})


def test_the_longest_slow_index_value_fits_blind_index_length() -> None:
    """A 32-character key id with the longest cost label fills BLIND_INDEX_LENGTH exactly."""
    ring = Keyring({"k" * 32: generate_key("hmac-sha256")}, purpose="blind-index")
    index = _index(keyring=ring, slow=Scrypt(n=2**12, r=10, p=10))
    value = index.compute("x")
    assert value is not None
    assert (BLIND_INDEX_LENGTH, BLIND_INDEX_LENGTH) == (index.max_length, len(value))


@given(
    key_id=key_ids,
    cost=st.sampled_from(["", "$s12.1.1", "$s14.8.1", "$s20.32.16"]),
    digest=st.text("0123456789abcdef", max_size=64),
)
def test_parse_index_value_round_trips(key_id: str, cost: str, digest: str) -> None:
    """Any key id, cost label and digest joined as stored parse back to themselves."""
    assert IndexValue(key_id, cost, digest) == parse_index_value(f"{key_id}{cost}:{digest}")


@pytest.mark.parametrize("stored", ["", "b1", ":abc", "$s14.8.1:abc", "b1$s14.8.1"])
def test_parse_index_value_refuses_malformed_values(stored: str) -> None:
    """A value without its ':' or key id is not an index value."""
    assert parse_index_value(stored) is None


def test_slow_candidates_digest_and_truncation() -> None:
    """Candidates cover every key; a truncated value is its full digest's first digits."""
    both = Keyring(
        [Key("b2", generate_key("hmac-sha256"), purpose="blind-index"), *RING],
        purpose="blind-index",
    )
    index = _index(keyring=both, slow=FAST_SCRYPT, bits=16)
    old = _index(keyring=RING, slow=FAST_SCRYPT, bits=16)
    candidates = index.candidates("1234")
    assert 2 == len(candidates)
    assert candidates[0].startswith("b2$s12.1.1:")
    assert old.compute("1234") == candidates[1]
    full = index.digest(b"1234")
    assert (len("b2$s12.1.1:") + 64, full[: len(candidates[0])]) == (len(full), candidates[0])


def test_a_slow_index_checks_only_values_of_its_own_parameters() -> None:
    """matches() is True or False for its own cost; None for a value of other parameters."""
    index = _index(slow=FAST_SCRYPT)
    stored = index.compute("1234")
    assert stored is not None
    assert (True, False) == (index.matches("1234", stored), index.matches("4321", stored))
    other = _index(slow=Scrypt(n=2**12, r=2, p=1)).compute("1234")
    fast = _index().compute("1234")
    assert (None, None) == (index.matches("1234", other or ""), index.matches("1234", fast or ""))
    assert _index().matches("1234", stored) is None


@settings(max_examples=25, deadline=None)
@given(value=st.text(max_size=20))
def test_slow_index_values_check_and_find_their_value(value: str) -> None:
    """For any value, a slow index's stored value matches it, and its candidates hold it."""
    index = _index(slow=FAST_SCRYPT)
    stored = index.compute(value)
    assert stored is not None
    assert index.matches(value, stored) is True
    assert (stored,) == index.candidates(value)


# -- substring indexes -------------------------------------------------------------------------


def test_substring_index_values_are_truncated_hmacs_of_each_distinct_trigram() -> None:
    """Each trigram value is HMAC(HKDF(key, substring prefix + name), trigram), truncated."""
    secret = bytes(range(32))
    ring = Keyring({"b1": base64.urlsafe_b64encode(secret)}, purpose="blind-index")
    index = SubstringIndex("notes_trigrams", keyring=ring, name="notes_trigrams", bits=16)
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"sa-fieldcrypt substring index v1\x00notes_trigrams",
    ).derive(secret)

    def value(trigram: str) -> str:
        mac = HMAC(key, hashes.SHA256())
        mac.update(trigram.encode())
        return "b1:" + mac.finalize().hex()[:4]

    assert {value(t) for t in ("ada", "dad", "ad ", "d a")} == index.trigram_values("Adad A")
    assert set() == index.trigram_values("ab")
    assert set() == index.trigram_values(None)
    assert {"b1": tuple(sorted({value("ada"), value("dad")}))} == index.term_values("adad")


def test_substring_index_contains_compares_windows_of_the_terms_length() -> None:
    """contains() finds the term's full HMAC among the text's windows of its length only."""
    index = SubstringIndex("t", keyring=RING, name="t")
    digest = index.digest("love", "b1")
    assert index.contains("ada lovelace", 4, digest, "b1")
    assert not index.contains("ada loveless", 3, digest, "b1")
    assert not index.contains("lov", 4, digest, "b1")
    with pytest.raises(ConfigurationError, match="no longer holds key 'b9'"):
        index.contains("ada lovelace", 4, digest, "b9")


def test_substring_index_matches_the_side_rows_of_a_value_under_one_active_key() -> None:
    """matches() is True for a value's own side rows under any active key, None under a
    retired key, and False for rows missing, extra, mixed across keys or of no value."""
    first, second = generate_key("hmac-sha256"), generate_key("hmac-sha256")
    old = Keyring({"b1": first}, purpose="blind-index")
    ring = Keyring({"b1": first, "b2": second}, primary="b2", purpose="blind-index")
    gone = Keyring({"b3": second}, purpose="blind-index")
    # Full size, so that no two trigram values coincide, whatever the keys.
    before = SubstringIndex("t", keyring=old, name="t", bits=256).trigram_values("Ada Lovelace")
    index = SubstringIndex("t", keyring=ring, name="t", bits=256)
    held = index.trigram_values("Ada Lovelace")
    assert index.matches("ada lovelace", held)
    assert index.matches("Ada Lovelace", before)  # an older key, which lookups still find
    assert index.matches("ab", [])
    assert index.matches(None, [])
    assert SubstringIndex("t", keyring=gone, name="t").matches("Ada Lovelace", held) is None
    assert index.matches("Ada Lovelace", held - {min(held)}) is False
    assert index.matches("Ada Lovelace", held | {"b2:" + "0" * 64}) is False
    assert index.matches("Ada Lovelace", {*sorted(held)[1:], min(before)}) is False
    assert index.matches("Ada Lovelace", []) is False
    assert index.matches("ab", held) is False
    assert index.matches(None, held) is False
    assert index.matches("Ada Lovelace!", held) is False


@given(st.text(max_size=20))
def test_casefold_folds_case_and_look_alikes_and_keeps_the_rest(text: str) -> None:
    """casefold() is idempotent and keeps spaces and punctuation of ASCII text."""
    folded = casefold(text)
    assert folded is None or folded == casefold(folded)
    if text.isascii():
        assert (text.lower() or None) == folded


def test_substring_index_refuses_malformed_arguments() -> None:
    """A table name, a callable normalizer, bits in range; normalizers return str."""
    with pytest.raises(ConfigurationError, match="table"):
        SubstringIndex("")
    with pytest.raises(ConfigurationError, match="callable"):
        SubstringIndex("t", normalizer="lower")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="multiple of 4"):
        SubstringIndex("t", bits=10)
    with pytest.raises(ValueTypeError, match="returned bytes"):
        SubstringIndex("t", normalizer=lambda v: b"x", name="t").normalize("abc")
    with pytest.raises(ConfigurationError, match="has no name"):
        SubstringIndex("t", keyring=RING).trigram_values("abc")

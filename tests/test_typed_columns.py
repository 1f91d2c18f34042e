"""Typed encrypted columns: their plaintext encodings, round trips through every database and
through rotation, wrong Python types, and malformed plaintexts."""

from __future__ import annotations

import base64
import decimal
import json
import math
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Engine, Integer, MetaData, Table, Text, create_engine, select
from sqlalchemy import type_coerce as coerce
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import (
    ConfigurationError,
    DecryptionError,
    EncryptedBoolean,
    EncryptedDate,
    EncryptedDateTime,
    EncryptedDecimal,
    EncryptedFloat,
    EncryptedInteger,
    EncryptedText,
    EncryptedTime,
    EncryptedUUID,
    Keyring,
    ValueTypeError,
    generate_key,
    jobs,
)
from sa_fieldcrypt.cipher import _encrypt_aead_from_parts, inspect_token
from sa_fieldcrypt.jobs.rotation import plaintext_to_token
from sa_fieldcrypt.testing import (
    boolean_plaintexts,
    date_plaintexts,
    datetime_plaintexts,
    decimal_plaintexts,
    float_plaintexts,
    integer_plaintexts,
    temporary_keys,
    time_plaintexts,
    uuid_plaintexts,
)
from sa_fieldcrypt.types import EncryptedType

DIALECT = sqlite.dialect()
VECTORS = Path(__file__).parent / "vectors" / "typed"
TYPES: dict[str, type[EncryptedType]] = {
    "date": EncryptedDate,
    "datetime": EncryptedDateTime,
    "time": EncryptedTime,
    "integer": EncryptedInteger,
    "float": EncryptedFloat,
    "decimal": EncryptedDecimal,
    "boolean": EncryptedBoolean,
    "uuid": EncryptedUUID,
}
RING = Keyring({"k1": generate_key(kind="aes-gcm-siv")})


def same(expected: Any, actual: Any) -> bool:
    """Whether ``actual`` is ``expected`` exactly: type, value, offset, digits, bits."""
    if type(expected) is not type(actual):
        return False
    if isinstance(expected, float):
        return struct.pack(">d", expected) == struct.pack(">d", actual)
    if isinstance(expected, Decimal):
        return expected.as_tuple() == actual.as_tuple()
    if isinstance(expected, datetime):
        return (expected, expected.utcoffset()) == (actual, actual.utcoffset())
    return bool(expected == actual)


def _attached(type_: EncryptedType, context: str) -> EncryptedType:
    """``type_`` on a column of a table named as ``context`` says, so errors name it."""
    table, _, column = context.rpartition(".")
    Table(table, MetaData(), Column(column, type_))
    return type_


# -- the plaintext encodings: docs/token-format.md's vectors ---------------------------------


def _vector_files() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(VECTORS.glob("*.json"))}


FILES = _vector_files()
VALID = [(name, case) for name, doc in FILES.items() for case in doc["valid"]]
INVALID = [(name, case) for name, doc in FILES.items() for case in doc["invalid"]]


def _value(name: str, case: dict[str, Any]) -> Any:
    """The Python value a vector describes, built from its language-neutral fields."""
    value = case["value"]
    if name == "date":
        return date(value["year"], value["month"], value["day"])
    if name == "datetime":
        offset = value["utcoffset_microseconds"]
        zone = None if offset is None else timezone(timedelta(microseconds=offset))
        fields = ("year", "month", "day", "hour", "minute", "second", "microsecond")
        return datetime(*(value[field] for field in fields), tzinfo=zone)
    if name == "time":
        return time(value["hour"], value["minute"], value["second"], value["microsecond"])
    if name == "integer":
        return int(value["hex"], 16)
    if name == "float":
        number = float.fromhex(value["hex"])
        # A NaN's sign and payload are the bits the vector's plaintext gives.
        return (
            struct.unpack(">d", bytes.fromhex(case["plaintext"]))[0]
            if math.isnan(number)
            else number
        )
    if name == "decimal":
        digits = tuple(int(digit) for digit in value["digits"])
        return Decimal((value["sign"], digits, value["exponent"]))
    if name == "uuid":
        return uuid.UUID(value["value"])
    return value["value"]


def _vector_type(name: str, *, timezone: bool = True) -> EncryptedType:
    doc = FILES[name]
    keyring = Keyring({doc["key_id"]: doc["key"]})
    if name == "datetime":
        return _attached(
            EncryptedDateTime(keyring=keyring, timezone=timezone, context=doc["context"]),
            doc["context"],
        )
    return _attached(TYPES[name](keyring=keyring, context=doc["context"]), doc["context"])


def _aware(value: Any) -> bool:
    """Whether a vector's value needs the default (aware) EncryptedDateTime column."""
    return not (isinstance(value, datetime) and value.utcoffset() is None)


def test_every_type_has_vectors() -> None:
    """Each typed column has a vector file with valid and invalid cases."""
    assert sorted(TYPES) == sorted(FILES)
    assert all(doc["valid"] and doc["invalid"] for doc in FILES.values())


@pytest.mark.parametrize(("name", "case"), VALID, ids=[f"{n}-{c['description']}" for n, c in VALID])
def test_vector_plaintext_is_the_value(name: str, case: dict[str, Any]) -> None:
    """The value encodes to the vector's plaintext bytes, and those bytes decode to it."""
    value = _value(name, case)
    plaintext = bytes.fromhex(case["plaintext"])
    column = _vector_type(name, timezone=_aware(value))
    assert plaintext == column.decrypt_token(column.process_bind_param(value, DIALECT))
    decoded = column.process_result_value(column.encrypt_bytes(plaintext), DIALECT)
    assert same(value, decoded), (value, decoded)


@pytest.mark.parametrize(("name", "case"), VALID, ids=[f"{n}-{c['description']}" for n, c in VALID])
def test_vector_token_opens_to_the_value(name: str, case: dict[str, Any]) -> None:
    """With the vector's key and nonce the token is the vector's, and reads as its value."""
    doc = FILES[name]
    value = _value(name, case)
    plaintext = bytes.fromhex(case["plaintext"])
    keyring = Keyring({doc["key_id"]: doc["key"]})
    nonce = bytes.fromhex(doc["nonce"])
    assert case["token"] == _encrypt_aead_from_parts(
        keyring, plaintext, nonce, context=doc["context"]
    )
    # Opened without the library: AES-256-GCM-SIV, the context as associated data.
    raw = base64.urlsafe_b64decode(case["token"].split(":")[3])
    key = base64.urlsafe_b64decode(doc["key"].removeprefix("aes-gcm-siv:"))
    assert plaintext == AESGCMSIV(key).decrypt(raw[:12], raw[12:], doc["context"].encode())
    column = _vector_type(name, timezone=_aware(value))
    assert same(value, column.process_result_value(case["token"], DIALECT))


@pytest.mark.parametrize(
    ("name", "case"), INVALID, ids=[f"{n}-{c['description']}" for n, c in INVALID]
)
def test_malformed_plaintext_is_a_decryption_error(name: str, case: dict[str, Any]) -> None:
    """A plaintext that is not the type's one encoding of a value raises DecryptionError.

    It names the column and never the plaintext, whatever the decoder would have said.
    """
    column = _vector_type(name, timezone=case.get("timezone", True))
    plaintext = bytes.fromhex(case["plaintext"])
    with pytest.raises(DecryptionError) as info:
        column.process_result_value(column.encrypt_bytes(plaintext), DIALECT)
    assert FILES[name]["context"] in str(info.value)
    if len(plaintext) > 2:
        assert plaintext.decode("latin-1") not in str(info.value)


# -- wrong Python types ----------------------------------------------------------------------


WRONG_TYPES = [
    ("born", datetime(1815, 12, 10, 9, 30), "date", "datetime"),
    ("born", "1815-12-10", "date", "str"),
    ("seen_at", date(1815, 12, 10), "datetime", "date"),
    ("contact_time", datetime(2024, 7, 1, 9, 30), "time", "datetime"),
    ("contact_time", "09:30:00", "time", "str"),
    ("points", True, "int", "bool"),
    ("points", 7.0, "int", "float"),
    ("points", Decimal(7), "int", "Decimal"),
    ("score", 7, "float", "int"),
    ("score", False, "float", "bool"),
    ("balance", 1.5, "Decimal", "float"),
    ("balance", 15, "Decimal", "int"),
    ("balance", "1.50", "Decimal", "str"),
    ("verified", 1, "bool", "int"),
    ("external_id", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "UUID", "str"),
]


@pytest.mark.parametrize(
    ("name", "value", "stores", "got"), WRONG_TYPES, ids=[f"{n}-{g}" for n, _, _, g in WRONG_TYPES]
)
def test_a_wrong_python_type_is_refused_at_flush(
    tmp_path: Path, keyring: Keyring, name: str, value: Any, stores: str, got: str
) -> None:
    """The flush raises ValueTypeError naming the column and both types, never the value."""
    engine = create_engine(f"sqlite:///{tmp_path / 'members.sqlite3'}", hide_parameters=True)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add(Member(id=1, **{name: value}))
            with pytest.raises(ValueTypeError) as info:
                session.flush()
    finally:
        engine.dispose()
    message = str(info.value)
    assert message.startswith(f"fc_typed_members.{name}: ")
    assert f"stores {stores} values, got {got}" in message
    assert str(value) not in message


@pytest.mark.parametrize(
    ("column_type", "value", "expected"),
    [
        (EncryptedDateTime(), datetime(2024, 7, 1, 12), "got a naive datetime"),
        (
            EncryptedDateTime(timezone=False),
            datetime(2024, 7, 1, 12, tzinfo=UTC),
            "got a timezone-aware datetime",
        ),
    ],
    ids=["naive-in-aware", "aware-in-naive"],
)
def test_a_datetime_of_the_other_kind_is_refused(
    column_type: EncryptedType, value: datetime, expected: str
) -> None:
    """An aware column refuses naive values and a naive one aware values, saying which."""
    _attached(column_type, "fc_typed_kind.at")
    with temporary_keys(RING), pytest.raises(ValueTypeError, match=expected) as info:
        column_type.process_bind_param(value, DIALECT)
    assert str(info.value).startswith("fc_typed_kind.at: EncryptedDateTime(timezone=")
    assert "2024" not in str(info.value)


@pytest.mark.parametrize("column_type", TYPES.values(), ids=TYPES.keys())
def test_typed_columns_do_not_read_plaintext(column_type: type[EncryptedType]) -> None:
    """allow_plaintext=True is refused: a typed value's plaintext is not the text stored."""
    with pytest.raises(ConfigurationError, match="cannot read plaintext values"):
        column_type(allow_plaintext=True)


def test_stored_text_is_not_encrypted_as_a_typed_value() -> None:
    """plaintext_to_token() refuses a typed column: the text "42" is not the int 42's bytes."""
    column = _attached(EncryptedInteger(keyring=RING), "fc_typed_text.points")
    with pytest.raises(ValueTypeError, match="encoding of their own") as info:
        plaintext_to_token(column, "42")
    assert "42" not in str(info.value)
    text_column = _attached(EncryptedText(keyring=RING), "fc_typed_text.notes")
    token = plaintext_to_token(text_column, "42")
    assert "42" == text_column.process_result_value(token, DIALECT)


def test_rotation_fails_stored_text_in_a_typed_column_and_leaves_it(
    tmp_path: Path, keyring: Keyring
) -> None:
    """rotate(encrypt_plaintext=True) reports plaintext in a typed column as failed, unchanged."""
    engine = create_engine(f"sqlite:///{tmp_path / 'members.sqlite3'}", hide_parameters=True)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add(Member(id=1, points=7))
            session.commit()
        with engine.begin() as conn:
            conn.execute(Member.__table__.insert().values(id=2))
            conn.exec_driver_sql("UPDATE fc_typed_members SET points = '42' WHERE id = 2")
        columns = [c for c in jobs.find_columns(Member) if c.column.name == "points"]
        report = jobs.rotate(engine, columns, encrypt_plaintext=True)
        assert (1, 0) == (report.failed, report.written)
        assert [(("id", 2),)] == [f.primary_key for f in report.jobs[0].failures]
        assert "encoding of their own" in report.jobs[0].failures[0].reason
        assert "42" == _stored(engine, "points", 2)
    finally:
        engine.dispose()


def test_none_is_null_for_every_typed_column() -> None:
    """None binds as NULL and NULL reads as None, without encrypting anything."""
    for column_type in TYPES.values():
        column = column_type(keyring=RING, context="fc_typed.loose")
        assert None is column.process_bind_param(None, DIALECT)
        assert None is column.process_result_value(None, DIALECT)


def test_decimals_do_not_depend_on_the_current_context() -> None:
    """No decimal context changes what is stored or read: exponent mark, precision, traps."""
    column = _attached(EncryptedDecimal(keyring=RING), "fc_typed.balance")
    value = Decimal("-1.234567890123456789012345678901234567890E+999999999")
    with decimal.localcontext() as context:
        context.capitals, context.prec, context.Emax = 0, 3, 10
        context.traps[decimal.InvalidOperation] = False
        token = column.process_bind_param(value, DIALECT)
        back = column.process_result_value(token, DIALECT)
        with pytest.raises(DecryptionError, match=r"fc_typed\.balance"):
            column.process_result_value(column.encrypt_bytes(b"not a number"), DIALECT)
    assert str(value).encode() == column.decrypt_token(token)
    assert b"E+999999999" in column.decrypt_token(token)
    assert same(value, back)


# -- datetimes -------------------------------------------------------------------------------


def test_a_zoneinfo_value_comes_back_at_its_offset_of_that_instant() -> None:
    """An aware value in a zoneinfo zone comes back as the same instant at the same offset."""
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone data (install tzdata)")
    column = EncryptedDateTime(keyring=RING, context="fc_typed.seen_at")
    for value, hours in (
        (datetime(2024, 7, 1, 12, tzinfo=paris), 2),
        (datetime(2024, 1, 1, tzinfo=paris), 1),
    ):
        back = column.process_result_value(column.process_bind_param(value, DIALECT), DIALECT)
        assert (value, timedelta(hours=hours)) == (back, back.utcoffset())
        assert timezone(timedelta(hours=hours)) == back.tzinfo


def test_the_second_of_two_ambiguous_wall_times_keeps_its_offset() -> None:
    """fold=1 in a zone leaving summer time is stored as its own offset: the later instant."""
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone data (install tzdata)")
    column = EncryptedDateTime(keyring=RING, context="fc_typed.seen_at")
    first = datetime(2024, 10, 27, 2, 30, tzinfo=paris)
    second = first.replace(fold=1)
    back = [
        column.process_result_value(column.process_bind_param(v, DIALECT), DIALECT)
        for v in (first, second)
    ]
    assert [timedelta(hours=2), timedelta(hours=1)] == [b.utcoffset() for b in back]
    assert timedelta(hours=1) == back[1] - back[0]


def test_a_datetime_column_types_argument_is_in_its_repr_and_cache_key() -> None:
    """timezone=False shows in repr (Alembic renders it) and separates statement caches."""
    naive, aware = EncryptedDateTime(timezone=False), EncryptedDateTime()
    assert ("EncryptedDateTime(timezone=False)", "EncryptedDateTime()") == (
        repr(naive),
        repr(aware),
    )
    assert "EncryptedDateTime(timezone=False, context=False)" == repr(
        EncryptedDateTime(timezone=False, context=False)
    )
    assert naive._static_cache_key != aware._static_cache_key
    assert False is naive.copy().timezone
    with pytest.raises(ConfigurationError, match="timezone must be True or False"):
        EncryptedDateTime(timezone=None)  # type: ignore[arg-type]


def test_a_datetime_column_takes_the_base_arguments_by_position() -> None:
    """EncryptedDateTime(keyring, context) means what it means for every other type."""
    column = EncryptedDateTime(RING, "fc_typed.seen_at", timezone=False)
    assert ("fc_typed.seen_at", False) == (column.context, column.timezone)
    value = datetime(2024, 7, 1, 12)
    assert value == column.process_result_value(column.process_bind_param(value, DIALECT), DIALECT)


# -- times ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [time(0, 0), time(23, 59, 59, 999999), time(0, 0, 0, 1), time(9, 30, 15, 250000)],
    ids=["midnight", "last-microsecond", "one-microsecond", "microseconds"],
)
def test_a_time_is_stored_as_fifteen_ascii_bytes(value: time) -> None:
    """Every time, midnight to the last microsecond, is HH:MM:SS.ffffff and comes back equal."""
    column = _attached(EncryptedTime(keyring=RING), "fc_typed.contact_time")
    token = column.process_bind_param(value, DIALECT)
    assert value.isoformat(timespec="microseconds").encode("ascii") == column.decrypt_token(token)
    assert 15 == len(column.decrypt_token(token))
    assert same(value, column.process_result_value(token, DIALECT))


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (time(9, 30, tzinfo=UTC), "got a timezone-aware time"),
        (time(9, 30, tzinfo=timezone(timedelta(hours=2))), "got a timezone-aware time"),
    ],
    ids=["utc", "plus-two-hours"],
)
def test_an_aware_time_is_refused_saying_why(value: time, got: str) -> None:
    """A time with an offset raises ValueTypeError naming the column, both types and why."""
    column = _attached(EncryptedTime(keyring=RING), "fc_typed.contact_time")
    with pytest.raises(ValueTypeError) as info:
        column.process_bind_param(value, DIALECT)
    message = str(info.value)
    assert message.startswith(
        f"fc_typed.contact_time: EncryptedTime stores naive time values, {got}"
    )
    assert "ambiguous across daylight saving time" in message
    assert "EncryptedDateTime" in message
    assert "09" not in message


def test_a_time_in_a_zone_without_an_offset_is_refused() -> None:
    """A zoneinfo time has no offset (utcoffset() is None), yet its zone would be lost: refused."""
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone data (install tzdata)")
    column = _attached(EncryptedTime(keyring=RING), "fc_typed.contact_time")
    with pytest.raises(ValueTypeError, match="got a time with a tzinfo"):
        column.process_bind_param(time(9, 30, tzinfo=paris), DIALECT)


def test_a_times_fold_is_not_kept() -> None:
    """fold=1 is stored as fold=0 would be: the same bytes, back as an equal time of fold 0."""
    column = _attached(EncryptedTime(keyring=RING), "fc_typed.contact_time")
    first, second = time(2, 30), time(2, 30, fold=1)
    back = column.process_result_value(column.process_bind_param(second, DIALECT), DIALECT)
    assert (first, 0) == (back, back.fold)
    assert column.compare_values(first, second)


# -- through every database ------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "fc_typed_members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    born: Mapped[date | None] = mapped_column(EncryptedDate())
    seen_at: Mapped[datetime | None] = mapped_column(EncryptedDateTime())
    local_time: Mapped[datetime | None] = mapped_column(EncryptedDateTime(timezone=False))
    contact_time: Mapped[time | None] = mapped_column(EncryptedTime())
    # Padded: an integer's and a decimal's lengths show their magnitude, unpadded.
    points: Mapped[int | None] = mapped_column(EncryptedInteger(padding=True))
    score: Mapped[float | None] = mapped_column(EncryptedFloat())
    balance: Mapped[Decimal | None] = mapped_column(EncryptedDecimal(padding=32))
    verified: Mapped[bool | None] = mapped_column(EncryptedBoolean())
    external_id: Mapped[uuid.UUID | None] = mapped_column(EncryptedUUID())


STRATEGIES = {
    "born": date_plaintexts(),
    "seen_at": datetime_plaintexts(),
    "local_time": datetime_plaintexts(timezone=False),
    "contact_time": time_plaintexts(),
    "points": integer_plaintexts(),
    "score": float_plaintexts(),
    "balance": decimal_plaintexts(),
    "verified": boolean_plaintexts(),
    "external_id": uuid_plaintexts(),
}
ROWS = st.fixed_dictionaries({name: st.none() | values for name, values in STRATEGIES.items()})
#: One round trip per example on each database: enough to meet the extremes, and quick.
DATABASE_EXAMPLES = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture
def db(engine: Engine, keyring: Keyring) -> Iterator[Engine]:
    """The members table on each database, under the test's default keys."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


def _reset(db: Engine) -> None:
    with db.begin() as conn:
        conn.execute(Member.__table__.delete())


def _stored(db: Engine, name: str, row_id: int = 1) -> Any:
    with db.connect() as conn:
        table = Member.__table__
        query = select(coerce(table.c[name], Text())).where(table.c.id == row_id)
        return conn.execute(query).scalar_one()


def _assert_same_row(expected: dict[str, Any], member: Member) -> None:
    for name, value in expected.items():
        loaded = getattr(member, name)
        assert value is None or same(value, loaded), (name, value, loaded)
        assert (value is None) is (loaded is None), name


@DATABASE_EXAMPLES
@given(row=ROWS)
def test_every_value_round_trips_through_the_orm(db: Engine, row: dict[str, Any]) -> None:
    """Any value of every typed column comes back exactly: type, value, offset, bits, digits.

    None is stored as SQL NULL, and every other value as a token.
    """
    _reset(db)
    with Session(db) as session:
        session.add(Member(id=1, **row))
        session.commit()
    with Session(db) as session:
        member = session.get(Member, 1)
        assert member is not None
        _assert_same_row(row, member)
    for name, value in row.items():
        stored = _stored(db, name)
        assert (value is None) is (stored is None), name
        if stored is not None:
            info = inspect_token(stored)
            assert ("fc1", name in ("points", "balance")) == (info.kind, info.padded), name


OLD = Keyring({"old": generate_key()})
NEW_AND_OLD = Keyring({"new": generate_key(kind="aes-gcm-siv"), "old": OLD.get("old").export()})


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(ROWS, min_size=1, max_size=4))
def test_rotation_leaves_every_value_identical(db: Engine, rows: list[dict[str, Any]]) -> None:
    """jobs.rotate() under a new primary key rewrites every token and changes no value."""
    _reset(db)
    with temporary_keys(OLD), Session(db) as session:
        session.add_all(Member(id=i, **row) for i, row in enumerate(rows))
        session.commit()
    with temporary_keys(NEW_AND_OLD):
        report = jobs.rotate(db, jobs.find_columns(Member))
        assert report.ok
        with Session(db) as session:
            for i, row in enumerate(rows):
                member = session.get(Member, i)
                assert member is not None
                _assert_same_row(row, member)
        with db.connect() as conn:
            stored = conn.execute(
                select(*(coerce(c, Text()) for c in Member.__table__.c if c.name != "id"))
            ).all()
    written = sum(value is not None for row in rows for value in row.values())
    key_ids = [inspect_token(v).key_id for line in stored for v in line if v is not None]
    assert ["new"] * written == key_ids


# -- what the ORM writes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "before", "after"),
    [
        ("balance", Decimal("1.0"), Decimal("1.00")),
        ("score", 0.0, -0.0),
        (
            "seen_at",
            datetime(2024, 7, 1, 12, tzinfo=UTC),
            datetime(2024, 7, 1, 14, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
    ids=["decimal-exponent", "negative-zero", "datetime-offset"],
)
def test_a_value_equal_by_eq_but_stored_otherwise_is_written(
    tmp_path: Path, keyring: Keyring, name: str, before: Any, after: Any
) -> None:
    """Assigning a value == the old one but of other digits, sign or offset still writes it."""
    engine = create_engine(f"sqlite:///{tmp_path / 'members.sqlite3'}", hide_parameters=True)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add(Member(id=1, **{name: before}))
            session.commit()
            setattr(session.get(Member, 1), name, after)
            session.commit()
        with Session(engine) as session:
            assert same(after, getattr(session.get(Member, 1), name))
    finally:
        engine.dispose()


def test_an_identical_value_is_not_written_again(tmp_path: Path, keyring: Keyring) -> None:
    """Assigning a value stored alike (a NaN of the same bits, the same sNaN) writes nothing."""
    engine = create_engine(f"sqlite:///{tmp_path / 'members.sqlite3'}", hide_parameters=True)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add(Member(id=1, score=math.nan, balance=Decimal("sNaN")))
            session.commit()
            member = session.get(Member, 1)
            assert member is not None
            # == would call the NaNs different, and comparing sNaN raises InvalidOperation.
            member.score, member.balance = math.nan, Decimal("sNaN")
            assert not session.is_modified(member)
    finally:
        engine.dispose()


def test_every_typed_column_is_exported() -> None:
    """The typed columns are public names of sa_fieldcrypt, each an EncryptedType."""
    for column_type in TYPES.values():
        assert getattr(sa_fieldcrypt, column_type.__name__) is column_type
        assert issubclass(column_type, EncryptedType)
        assert column_type.__name__ in sa_fieldcrypt.__all__

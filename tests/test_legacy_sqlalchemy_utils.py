"""Adopting sqlalchemy-utils' encrypted columns: what it stored is read, then rotated into ours.

Every value here is written and read back by sqlalchemy-utils itself; the same rows are then
read through our columns declaring ``SqlalchemyUtils(...)``, rotated, and read again.
"""

from __future__ import annotations

import base64
import math
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Engine, Integer, MetaData, Table, select
from sqlalchemy.engine import Dialect

from sa_fieldcrypt import (
    ConfigurationError,
    DecryptionError,
    EncryptedBoolean,
    EncryptedDate,
    EncryptedDateTime,
    EncryptedDecimal,
    EncryptedFloat,
    EncryptedInteger,
    EncryptedJSON,
    EncryptedText,
    EncryptedTime,
    EncryptedUUID,
    Keyring,
    RotationError,
    jobs,
    metrics,
)
from sa_fieldcrypt.cipher import inspect_token
from sa_fieldcrypt.jobs.rotation import reencrypt
from sa_fieldcrypt.legacy import SqlalchemyUtils
from sa_fieldcrypt.types import EncryptedType

sqlalchemy_utils = pytest.importorskip("sqlalchemy_utils")
from sqlalchemy_utils import JSONType, StringEncryptedType  # noqa: E402
from sqlalchemy_utils.types.encrypted.encrypted_type import (  # noqa: E402
    AesEngine,
    AesGcmEngine,
    FernetEngine,
)

KEY = "the key sqlalchemy-utils was given"
#: Each engine, and for AesEngine each padding: (engine class, padding).
CONFIGS = [
    *((AesEngine, padding) for padding in ("naive", "pkcs5", "oneandzeroes", "zeroes")),
    (AesGcmEngine, None),
    (FernetEngine, None),
]
CONFIG_IDS = [
    f"{engine.__name__}-{padding}" if padding else engine.__name__ for engine, padding in CONFIGS
]
OFFSET = timezone(timedelta(hours=5, minutes=45))

#: Each underlying type: (sqlalchemy-utils underlying type, our column type, values).
#: The values reach the extremes each type has: dates before 1900, ints past 2**63, ...
TYPES: dict[str, tuple[Any, Callable[..., EncryptedType], list[Any]]] = {
    "text": (sa.Unicode, EncryptedText, ["ada@example.com", "", "héllo wörld ✓", "a" * 300]),
    "integer": (sa.Integer, EncryptedInteger, [0, -1, 2**63, -(2**70) - 3, 42]),
    "boolean": (sa.Boolean, EncryptedBoolean, [True, False]),
    "date": (sa.Date, EncryptedDate, [date(1815, 12, 10), date(1, 1, 1), date(9999, 12, 31)]),
    "naive_datetime": (
        sa.DateTime,
        lambda **kw: EncryptedDateTime(timezone=False, **kw),
        [datetime(1899, 12, 31, 23, 59, 59, 999999), datetime(2024, 2, 29, 12, 0)],
    ),
    "aware_datetime": (
        sa.DateTime(timezone=True),
        EncryptedDateTime,
        [datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=OFFSET), datetime(1970, 1, 1, tzinfo=UTC)],
    ),
    "time": (
        sa.Time,
        EncryptedTime,
        # sqlalchemy-utils drops a time's offset when it reads it back: so do we.
        [time(0, 0), time(23, 59, 59, 999999), time(9, 30, tzinfo=OFFSET)],
    ),
    "float": (sa.Float, EncryptedFloat, [5e-324, -0.0, 1.7976931348623157e308, 0.1, math.inf]),
    "decimal": (sa.Numeric, EncryptedDecimal, [Decimal("1.500"), Decimal("-0"), Decimal("1" * 35)]),
    "uuid": (sa.Uuid, EncryptedUUID, [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4()]),
    "json": (JSONType, EncryptedJSON, [{"a": [1, 2.5, None]}, [], "text", 3]),
}


def _theirs(underlying: Any, engine: type, padding: str | None, key: Any = KEY) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqlalchemy-utils' own deprecation warnings
        return StringEncryptedType(underlying, key, engine, padding, length=1000)


def _ours(
    name: str, engine: type, padding: str | None, dialect_name: str, key: Any = KEY
) -> EncryptedType:
    column_type = TYPES[name][1]
    if name == "json" and dialect_name == "postgresql":
        # There, sqlalchemy-utils' JSONType hands the value to the engine as it is: what is
        # stored is its repr(), and what it reads back that text.
        column_type = EncryptedText
    return column_type(legacy=[SqlalchemyUtils(engine, key=key, padding=padding)])


def _same(expected: Any, found: Any) -> bool:
    """Equal, of the same type; for datetimes at the same offset; NaN equal to NaN."""
    if type(expected) is not type(found):
        return False
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(found)
    if isinstance(expected, datetime) and expected.utcoffset() != found.utcoffset():
        return False
    if isinstance(expected, float):
        return math.copysign(1, expected) == math.copysign(1, found) and expected == found
    return bool(expected == found)


def _table(metadata: MetaData, types: dict[str, Any]) -> Table:
    return Table(
        "fc_su",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        *(Column(name, column_type) for name, column_type in types.items()),
    )


def _widen(engine: Engine, names: list[str]) -> None:
    """The guide's first migration: the columns become TEXT, so our longer tokens fit."""
    if engine.dialect.name == "sqlite":
        return  # SQLite does not hold a VARCHAR to its length
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        for name in names:
            op.alter_column("fc_su", name, type_=EncryptedText(), existing_type=sa.String(1000))


@pytest.fixture
def su_table(engine: Engine) -> Iterator[Engine]:
    """``engine``, with the test's ``fc_su`` table dropped afterwards (it is the test's own)."""
    yield engine
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS fc_su"))


@pytest.mark.parametrize(("su_engine", "padding"), CONFIGS, ids=CONFIG_IDS)
def test_what_sqlalchemy_utils_read_is_read_then_rotated_into_ours(
    su_table: Engine, keyring: Keyring, su_engine: type, padding: str | None
) -> None:
    """Each underlying type reads as sqlalchemy-utils read it, before and after rotation."""
    engine = su_table
    rows = max(len(values) for _, _, values in TYPES.values())
    theirs_table = _table(
        MetaData(), {name: _theirs(t[0], su_engine, padding) for name, t in TYPES.items()}
    )
    theirs_table.create(engine)
    with engine.begin() as conn:
        conn.execute(
            theirs_table.insert(),
            [
                {"id": i, **{name: t[2][i] if i < len(t[2]) else None for name, t in TYPES.items()}}
                for i in range(rows)
            ],
        )
    before = {name: _read_column(engine, theirs_table, name) for name in TYPES}
    # sqlalchemy-utils cannot read back what it stores for Decimals and UUIDs (their repr());
    # there, we read the values it was given.
    for name in ("decimal", "uuid"):
        assert before[name] is None
        before[name] = [*TYPES[name][2], *[None] * (rows - len(TYPES[name][2]))]

    _widen(engine, list(TYPES))
    dialect = engine.dialect.name
    ours = {name: _ours(name, su_engine, padding, dialect) for name in TYPES}
    ours_table = _table(MetaData(), ours)
    targets = [jobs.EncryptedColumn(ours_table.c[name], ours[name]) for name in TYPES]

    def check_reads() -> None:
        for name in TYPES:
            found = _read_column(engine, ours_table, name)
            assert found is not None, name
            for i, (expected, value) in enumerate(zip(before[name], found, strict=True)):
                assert (expected is None) is (value is None), (name, i)
                assert expected is None or _same(expected, value), (name, i, expected, value)

    check_reads()
    status = jobs.status(engine, targets)
    for name, column in zip(TYPES, status.columns, strict=True):
        written = len(TYPES[name][2])
        assert ({SqlalchemyUtils(su_engine, key=KEY, padding=padding).name: written}, {}) == (
            column.legacy_by_format,
            column.by_key,
        ), name
        assert written == column.pending
    report = jobs.rotate(engine, targets)
    assert report.ok
    assert sum(len(t[2]) for t in TYPES.values()) == report.written
    check_reads()
    after = jobs.status(engine, targets)
    assert all(c.legacy == 0 and c.pending == 0 for c in after.columns)
    stored = _stored(engine, list(TYPES))
    tokens = [v for row in stored for v in row[1:] if v is not None]
    assert {("fc1", keyring.primary.id, "c")} == {
        (i.kind, i.key_id, i.flag) for i in map(inspect_token, tokens)
    }
    assert 0 == jobs.rotate(engine, targets).written  # a second rotate changes nothing
    assert stored == _stored(engine, list(TYPES))


def _attached(name: str, column_type: EncryptedType) -> EncryptedType:
    """``column_type`` on a column of its own: the first plaintext read per column warns."""
    Table(name, MetaData(), Column("id", Integer, primary_key=True), Column("value", column_type))
    return column_type


def _read_column(engine: Engine, table: Table, name: str) -> list[Any] | None:
    """Column ``name`` of every row, in id order, as ``table`` reads it; None if it cannot."""
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(table.c[name]).order_by(table.c.id)).scalars())
    except Exception as exc:  # sqlalchemy-utils' own errors, of many kinds
        if isinstance(exc, (DecryptionError, ConfigurationError)):
            raise
        return None


def _stored(engine: Engine, names: list[str]) -> list[tuple[Any, ...]]:
    """The table's stored text, as it is, in id order."""
    query = (
        select(sa.column("id"), *(sa.column(name) for name in names))
        .select_from(sa.table("fc_su"))
        .order_by(sa.column("id"))
    )
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


# -- every value sqlalchemy-utils reads, read alike ------------------------------------------

SQLITE: Dialect = sa.create_engine("sqlite://").dialect
#: Values of each underlying type, as an application gives them to sqlalchemy-utils.
STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "text": st.text(alphabet=st.characters(codec="utf-8")),
    "integer": st.integers() | st.integers(min_value=-(2**200), max_value=2**200),
    "boolean": st.booleans(),
    "date": st.dates(),
    "naive_datetime": st.datetimes(),
    "aware_datetime": st.datetimes(
        timezones=st.just(UTC)
        | st.builds(timezone, st.integers(-23 * 60, 23 * 60).map(lambda m: timedelta(minutes=m)))
    ),
    "time": st.times(timezones=st.none() | st.just(UTC) | st.just(OFFSET)),
    "float": st.floats(),
    "decimal": st.decimals(allow_nan=False),
    "uuid": st.uuids(),
    "json": st.recursive(
        st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
        ),
        max_leaves=12,
    ),
}
CASES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize(("su_engine", "padding"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("name", list(TYPES))
@CASES
@given(data=st.data())
def test_each_value_reads_as_sqlalchemy_utils_reads_it(
    keyring: Keyring, su_engine: type, padding: str | None, name: str, data: st.DataObject
) -> None:
    """What sqlalchemy-utils reads back, ours reads alike; what it cannot, ours reads or refuses."""
    value = data.draw(STRATEGIES[name])
    theirs = _theirs(TYPES[name][0], su_engine, padding)
    stored = theirs.process_bind_param(value, SQLITE)
    ours = TYPES[name][1](
        context="fc_su.value", legacy=[SqlalchemyUtils(su_engine, key=KEY, padding=padding)]
    )
    try:
        expected = theirs.process_result_value(stored, SQLITE)
    except Exception:  # sqlalchemy-utils' own errors, of many kinds
        if name in ("decimal", "uuid"):
            expected = value  # stored as its repr(), which sqlalchemy-utils cannot read back
        else:
            with pytest.raises(DecryptionError):
                ours.from_stored(stored)
            return
    found = ours.from_stored(stored)
    assert _same(expected, found)
    # And it is rotated exactly: the column's own token of it reads the same.
    assert _same(expected, ours.from_stored(reencrypt(ours, stored)))


# -- what is refused, and said ----------------------------------------------------------------


@pytest.mark.parametrize(("su_engine", "padding"), CONFIGS, ids=CONFIG_IDS)
def test_a_tampered_legacy_value_is_reported_by_primary_key(
    su_table: Engine, keyring: Keyring, su_engine: type, padding: str | None
) -> None:
    """verify names the row of a legacy value that does not open; rotate keeps the value."""
    engine = su_table
    theirs = _table(MetaData(), {"email": _theirs(sa.Unicode, su_engine, padding)})
    theirs.create(engine)
    with engine.begin() as conn:
        conn.execute(
            theirs.insert(), [{"id": i, "email": f"user{i}@example.com"} for i in range(3)]
        )
    good = _stored(engine, ["email"])[1][1]
    if su_engine is AesEngine:
        # AES-CBC without authentication tells a changed value only when what it decrypts to
        # is not valid padding or text (the guide says so): here, bytes that are not UTF-8.
        su = AesEngine()
        su._update_key(KEY)
        su._set_padding_mechanism(padding)
        encryptor = su.cipher.encryptor()
        raw = encryptor.update(su.padding_engine.pad(b"\xff\xfe")) + encryptor.finalize()
        forged = base64.b64encode(raw).decode()
    else:
        forged = good[:-8] + ("A" if good[-8] != "A" else "B") + good[-7:]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE fc_su SET email = :v WHERE id = 1"), {"v": forged})
    _widen(engine, ["email"])
    codec = EncryptedText(legacy=[SqlalchemyUtils(su_engine, key=KEY, padding=padding)])
    target = jobs.EncryptedColumn(_table(MetaData(), {"email": codec}).c.email, codec)
    assert codec.legacy_format(forged) is not None
    before = _stored(engine, ["email"])
    verified = jobs.verify(engine, [target]).total()
    assert [(("id", 1),)] == [f.primary_key for f in verified.failures]
    assert "none of them opens it" in verified.failures[0].reason
    assert forged not in str(verified.to_dict())
    if su_engine is AesEngine:
        # Not authenticated: while one of its values does not open, none is written, since
        # under a wrong key a few would still open, to garbage.
        with pytest.raises(RotationError, match="1 value in the shape of") as refused:
            jobs.rotate(engine, [target])
        assert forged not in str(refused.value)
        assert before == _stored(engine, ["email"])
        return
    rotated = jobs.rotate(engine, [target]).total()
    assert [(("id", 1),)] == [f.primary_key for f in rotated.failures]
    assert forged not in str(rotated.to_dict())
    assert "user1" not in str(rotated.to_dict())
    after = _stored(engine, ["email"])
    assert forged == after[1][1]
    assert before[0] != after[0]  # the others were rotated
    assert before[2] != after[2]


def test_the_key_is_taken_as_sqlalchemy_utils_takes_it(keyring: Keyring) -> None:
    """Text, the same bytes, or a callable returning either, open the same values."""
    stored = _theirs(sa.Unicode, AesGcmEngine, None).process_bind_param("ada", SQLITE)
    for key in (KEY, KEY.encode(), lambda: KEY, lambda: KEY.encode()):
        column = EncryptedText(context="a.b", legacy=[SqlalchemyUtils("AesGcmEngine", key=key)])
        assert "ada" == column.from_stored(stored)
    other = EncryptedText(context="a.b", legacy=[SqlalchemyUtils(AesGcmEngine, key="another")])
    with pytest.raises(DecryptionError, match="none of them opens it") as caught:
        other.from_stored(stored)
    assert stored not in str(caught.value)


def test_a_value_in_no_declared_shape_is_not_taken_for_legacy(keyring: Keyring) -> None:
    """Plaintext and base64 of another length are no legacy value: plaintext rules apply."""
    formats = [SqlalchemyUtils("AesEngine", key=KEY, padding="pkcs5")]
    strict = EncryptedText(context="a.b", legacy=formats)
    lenient = _attached("fc_su_plain", EncryptedText(legacy=formats, allow_plaintext=True))
    for plaintext in ("ada@example.com", base64.b64encode(b"x" * 15).decode()):
        assert strict.legacy_format(plaintext) is None
        with pytest.raises(DecryptionError, match="not an encrypted token"):
            strict.from_stored(plaintext)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert plaintext == lenient.from_stored(plaintext)
    shaped = base64.b64encode(bytes(32)).decode()
    # A value of the format's shape is never read as plaintext, even where plaintext is.
    with pytest.raises(DecryptionError, match="none of them opens it"):
        lenient.from_stored(shaped)


def test_a_strict_column_refuses_legacy_values(keyring: Keyring) -> None:
    """Legacy values are bound to nothing: allow_unbound=False refuses them, saying so."""
    stored = _theirs(sa.Unicode, FernetEngine, None).process_bind_param("ada", SQLITE)
    column = EncryptedText(
        context="a.b", allow_unbound=False, legacy=[SqlalchemyUtils("FernetEngine", key=KEY)]
    )
    with pytest.raises(DecryptionError, match="legacy format") as caught:
        column.from_stored(stored)
    assert "allow_unbound=False" in str(caught.value)


def test_legacy_reads_are_counted_by_format(keyring: Keyring) -> None:
    """metrics counts each legacy value read under its format's name."""
    legacy = SqlalchemyUtils("AesEngine", key=KEY, padding="zeroes")
    stored = _theirs(sa.Integer, AesEngine, "zeroes").process_bind_param(7, SQLITE)
    before = metrics.snapshot().legacy_reads.get(legacy.name, 0)
    assert 7 == EncryptedInteger(context="a.b", legacy=[legacy]).from_stored(stored)
    assert before + 1 == metrics.snapshot().legacy_reads[legacy.name]
    assert "sqlalchemy-utils:AesEngine:zeroes" == legacy.name


def test_a_value_of_another_type_is_refused_without_quoting_it(keyring: Keyring) -> None:
    """A legacy value that opens but is not of the column's type is a DecryptionError."""
    stored = _theirs(sa.Unicode, AesGcmEngine, None).process_bind_param("not a date", SQLITE)
    column = EncryptedDate(context="a.b", legacy=[SqlalchemyUtils("AesGcmEngine", key=KEY)])
    with pytest.raises(DecryptionError, match="does not read as a value") as caught:
        column.from_stored(stored)
    assert "not a date" not in str(caught.value)
    aware = _theirs(sa.DateTime, AesGcmEngine, None).process_bind_param(
        datetime(2024, 1, 1), SQLITE
    )
    with pytest.raises(DecryptionError, match="timezone=False"):
        EncryptedDateTime(context="a.b", legacy=column.legacy).from_stored(aware)


def test_a_format_is_declared_clearly_or_refused() -> None:
    """Unknown engines and paddings, a padding for another engine, and bad keys are refused."""
    with pytest.raises(ConfigurationError, match="engine must be one of"):
        SqlalchemyUtils("DesEngine", key=KEY)
    with pytest.raises(ConfigurationError, match="padding must be one of"):
        SqlalchemyUtils("AesEngine", key=KEY, padding="pkcs7")
    with pytest.raises(ConfigurationError, match="for AesEngine only"):
        SqlalchemyUtils("FernetEngine", key=KEY, padding="pkcs5")
    with pytest.raises(ConfigurationError, match="key must be text, bytes or a callable"):
        SqlalchemyUtils("AesEngine", key=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a legacy format"):
        EncryptedText(legacy=["AesEngine"])  # type: ignore[list-item]
    assert "naive" == SqlalchemyUtils(key=KEY).padding  # sqlalchemy-utils' defaults
    assert "AesEngine" == SqlalchemyUtils(key=KEY).engine
    shown = repr(SqlalchemyUtils("AesEngine", key=KEY, padding="pkcs5"))
    assert KEY not in shown
    assert "<redacted>" in shown
    assert "legacy" not in repr(EncryptedText(legacy=[SqlalchemyUtils(key=KEY)]))


def test_an_encrypted_type_column_is_read_once_converted_to_text(
    su_table: Engine, keyring: Keyring
) -> None:
    """sqlalchemy-utils' EncryptedType (bytes) reads after the guide's conversion to text."""
    from sqlalchemy_utils import EncryptedType as SqlalchemyUtilsEncryptedType

    engine = su_table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _table(
            MetaData(), {"email": SqlalchemyUtilsEncryptedType(sa.Unicode, KEY, AesGcmEngine)}
        )
    theirs.create(engine)
    with engine.begin() as conn:
        conn.execute(theirs.insert(), {"id": 1, "email": "ada@example.com"})
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text("UPDATE fc_su SET email = CAST(email AS TEXT)"))
        else:
            Operations(MigrationContext.configure(conn)).alter_column(
                "fc_su",
                "email",
                type_=EncryptedText(),
                existing_type=sa.LargeBinary(),
                postgresql_using="convert_from(email, 'UTF8')",
            )
    ours = EncryptedText(legacy=[SqlalchemyUtils("AesGcmEngine", key=KEY)])
    table = _table(MetaData(), {"email": ours})
    with engine.connect() as conn:
        assert "ada@example.com" == conn.execute(select(table.c.email)).scalar_one()
    assert 1 == jobs.rotate(engine, [jobs.EncryptedColumn(table.c.email, ours)]).written
    with engine.connect() as conn:
        assert "ada@example.com" == conn.execute(select(table.c.email)).scalar_one()


@pytest.mark.parametrize("padding", ["naive", "pkcs5", "oneandzeroes", "zeroes"])
def test_aes_values_under_another_key_do_not_open(keyring: Keyring, padding: str) -> None:
    """AES-CBC is not authenticated: only padding sqlalchemy-utils writes is taken as its."""
    theirs = _theirs(sa.Unicode, AesEngine, padding, key="another key")
    ours = EncryptedText(context="a.b", legacy=[SqlalchemyUtils(key=KEY, padding=padding)])
    opened = 0
    for i in range(3000):
        stored = theirs.process_bind_param(f"{i}", SQLITE)
        try:
            ours.from_stored(stored)
            opened += 1
        except DecryptionError:
            pass
    # A wrong key opens a value only if it decrypts to padding pad() writes and to UTF-8:
    # under one in 10,000 for each padding, so none of these.
    assert 0 == opened


def test_a_failing_key_callable_is_a_configuration_error(keyring: Keyring) -> None:
    """A key callable that raises, or returns no key, says so: values are not called tampered."""
    stored = _theirs(sa.Unicode, AesGcmEngine, None).process_bind_param("ada", SQLITE)

    def unavailable() -> str:
        raise ValueError("the secret store is down: token abc123")

    for key, message in ((unavailable, "raised ValueError"), (lambda: None, "returned a None")):
        column = EncryptedText(context="a.b", legacy=[SqlalchemyUtils("AesGcmEngine", key=key)])
        with pytest.raises(ConfigurationError, match=message) as caught:
            column.from_stored(stored)
        assert "abc123" not in str(caught.value)


def test_columns_it_cannot_fill_are_refused_when_declared() -> None:
    """sqlalchemy-utils reads no bytes back: EncryptedBytes refuses the declaration at once."""
    from sa_fieldcrypt import EncryptedBytes

    with pytest.raises(ConfigurationError, match="stores no bytes values"):
        EncryptedBytes(legacy=[SqlalchemyUtils(key=KEY)])
    with pytest.raises(ConfigurationError, match="the key goes in key=") as caught:
        SqlalchemyUtils(KEY, key="x")
    assert KEY not in str(caught.value)


def test_authenticated_formats_are_tried_first(keyring: Keyring) -> None:
    """Whatever the declared order, a value an authenticated format opens is read as its own."""
    stored = _theirs(sa.Unicode, AesGcmEngine, None).process_bind_param("x" * 20, SQLITE)
    formats = [SqlalchemyUtils("AesEngine", key=KEY), SqlalchemyUtils("AesGcmEngine", key=KEY)]
    column = EncryptedText(context="a.b", legacy=formats)
    assert ["AesGcmEngine", "AesEngine"] == [f.engine for f in column.legacy]  # type: ignore[attr-defined]
    assert "x" * 20 == column.from_stored(stored)


def test_over_long_values_are_in_no_legacy_format(keyring: Keyring) -> None:
    """A value over FIELDCRYPT_MAX_TOKEN_SIZE is not decoded as legacy; plaintext rules apply."""
    from sa_fieldcrypt.cipher import set_max_token_size

    set_max_token_size(1024)
    try:
        long_text = base64.b64encode(bytes(32 * 40)).decode()  # AES-shaped, 1,708 characters
        formats = [SqlalchemyUtils("AesEngine", key=KEY)]
        lenient = _attached("fc_su_long", EncryptedText(legacy=formats, allow_plaintext=True))
        assert lenient.legacy_format(long_text) is None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert long_text == lenient.from_stored(long_text)
        with pytest.raises(DecryptionError, match="over the limit"):
            EncryptedText(context="a.b", legacy=formats).from_stored(long_text)
    finally:
        set_max_token_size(None)


def test_fernet_engine_reads_count_under_no_key_id(keyring: Keyring) -> None:
    """FernetEngine's key is not a key of ours: its reads are counted by format only."""
    stored = _theirs(sa.Unicode, FernetEngine, None).process_bind_param("ada", SQLITE)
    column = EncryptedText(context="a.b", legacy=[SqlalchemyUtils("FernetEngine", key=KEY)])
    assert "ada" == column.from_stored(stored)
    assert "sqlalchemy-utils" not in metrics.snapshot().decrypts


def test_bare_tokens_keep_their_key_whatever_else_the_column_declares(
    su_table: Engine, keyring: Keyring
) -> None:
    """A bare token shaped like another format too still needs the column key that opens it."""
    from cryptography.fernet import Fernet

    from sa_fieldcrypt.legacy import BareFernet

    engine = su_table
    old = keyring.get("k1")
    bare = Fernet(old.export()).encrypt(b"ada@example.com").decode()
    su_fernet = _theirs(sa.Unicode, FernetEngine, None).process_bind_param("bob", SQLITE)
    table = _table(MetaData(), {"email": sa.Text()})
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "email": bare}, {"id": 2, "email": su_fernet}])
    declarations = {
        "both": [SqlalchemyUtils("FernetEngine", key=KEY), BareFernet()],
        "reversed": [BareFernet(), SqlalchemyUtils("FernetEngine", key=KEY)],
        "other": [SqlalchemyUtils("AesEngine", key=KEY)],  # the bare token: undeclared
    }
    for name, formats in declarations.items():
        codec = EncryptedText(legacy=formats)
        target = jobs.EncryptedColumn(_table(MetaData(), {"email": codec}).c.email, codec)
        with pytest.raises(RotationError, match="legacy tokens, which do not say which key"):
            jobs.retire_keys(engine, [target], ["k1"])
        with pytest.raises(RotationError, match="'k1' is still used"):
            jobs.retire_keys(engine, [target], ["k1"], resolve_legacy=True)
        tried = jobs.status(engine, [target], resolve_legacy=True).columns[0]
        assert {"k1": 1} == tried.legacy_by_key, name
        if name == "other":
            # Both are bare Fernet tokens to it, and none of its keys opens the second.
            assert (2, 1) == (tried.undeclared, tried.legacy_unopened)
        else:
            assert (0, 0) == (tried.undeclared, tried.legacy_unopened), name


def test_legacy_values_are_rotated_under_the_columns_padding(
    su_table: Engine, keyring: Keyring
) -> None:
    """rotate writes legacy values as the column writes: bound to it and padded, if it pads."""
    engine = su_table
    theirs = _table(MetaData(), {"email": _theirs(sa.Unicode, AesGcmEngine, None)})
    theirs.create(engine)
    emails = ["a@example.com", "bartholomew@example.com"]
    with engine.begin() as conn:
        conn.execute(theirs.insert(), [{"id": i, "email": e} for i, e in enumerate(emails)])
    _widen(engine, ["email"])
    codec = EncryptedText(padding=32, legacy=[SqlalchemyUtils("AesGcmEngine", key=KEY)])
    table = _table(MetaData(), {"email": codec})
    assert 2 == jobs.rotate(engine, [jobs.EncryptedColumn(table.c.email, codec)]).written
    tokens = [row[1] for row in _stored(engine, ["email"])]
    assert [("c", True), ("c", True)] == [
        (inspect_token(t).flag, inspect_token(t).padded) for t in tokens
    ]
    assert 1 == len({len(t) for t in tokens})  # both under 32 bytes: one length
    with engine.connect() as conn:
        assert emails == list(conn.execute(select(table.c.email).order_by(table.c.id)).scalars())

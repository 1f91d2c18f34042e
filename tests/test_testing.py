"""The helpers users test with: fixtures, at-rest assertions and strategies."""

from __future__ import annotations

import math
import struct
import sys
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import DecryptionError, EncryptedText, Keyring, encrypted_hybrid, generate_key
from sa_fieldcrypt.cipher import decrypt, encrypt
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.testing import (
    assert_encrypted_at_rest,
    boolean_plaintexts,
    date_plaintexts,
    datetime_plaintexts,
    decimal_plaintexts,
    float_plaintexts,
    integer_plaintexts,
    keyrings,
    temporary_keys,
    time_plaintexts,
    uuid_plaintexts,
)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "fc_testing_patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(50))
    diagnosis: Mapped[str | None] = mapped_column(EncryptedText())


class Visit(Base):
    __tablename__ = "fc_testing_visits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    notes_encrypted: Mapped[str | None] = mapped_column(Text)
    notes = encrypted_hybrid("notes_encrypted", bind_row=True)


@pytest.fixture
def db(engine: Engine, fieldcrypt_keyring: Keyring) -> Engine:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    return engine


def test_at_rest_assertion_passes_for_tokens(db: Engine) -> None:
    """Rows written through the model pass, NULLs are skipped, and the count is returned."""
    with Session(db) as session:
        session.add_all([Patient(id=1, diagnosis="flu"), Patient(id=2, diagnosis=None)])
        session.commit()
        assert 1 == assert_encrypted_at_rest(session, Patient)


def test_at_rest_assertion_reads_row_bound_values_with_their_rows(db: Engine) -> None:
    """Row-bound values pass in their own rows; one copied into another row fails."""
    with Session(db) as session:
        session.add_all([Visit(id=1, notes="first"), Visit(id=2, notes="second")])
        session.commit()
        assert 2 == assert_encrypted_at_rest(session, Visit)
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE fc_testing_visits SET notes_encrypted = "
                "(SELECT notes_encrypted FROM (SELECT * FROM fc_testing_visits) v WHERE id = 1) "
                "WHERE id = 2"
            )
        )
    with db.connect() as conn, pytest.raises(DecryptionError):
        assert_encrypted_at_rest(conn, Visit)


def test_at_rest_assertion_catches_plaintext_without_quoting_it(db: Engine) -> None:
    """A plaintext value fails the assertion, naming column and primary key but not the value."""
    with db.begin() as conn:
        conn.execute(text("INSERT INTO fc_testing_patients (id, diagnosis) VALUES (7, 'measles')"))
    with db.connect() as conn, pytest.raises(AssertionError) as info:
        assert_encrypted_at_rest(conn, Patient)
    assert "fc_testing_patients.diagnosis at primary key (7,)" in str(info.value)
    assert "measles" not in str(info.value)


def test_at_rest_assertion_catches_foreign_tokens(db: Engine) -> None:
    """A token the configured keys cannot open fails with DecryptionError."""
    stray = encrypt(Keyring({"k2": generate_key()}), b"x")
    with db.begin() as conn:
        conn.execute(
            text("INSERT INTO fc_testing_patients (id, diagnosis) VALUES (1, :v)"), {"v": stray}
        )
    with db.connect() as conn, pytest.raises(DecryptionError):
        assert_encrypted_at_rest(conn, Patient)


def test_at_rest_assertion_rejects_unknown_columns(db: Engine) -> None:
    """Naming a column that is not encrypted is an error, not a silent pass."""
    with Session(db) as session, pytest.raises(AssertionError, match="name"):
        assert_encrypted_at_rest(session, Patient, columns=["name"])


def test_temporary_keys_restores_the_previous_configuration() -> None:
    """Inside the block the given keys are the default; afterwards the previous ones are back."""
    outer = Keyring({"outer": generate_key()})
    inner = Keyring({"inner": generate_key()})
    with temporary_keys(outer):
        with temporary_keys(inner):
            assert "inner" == current_keyring().primary.id
        assert "outer" == current_keyring().primary.id


def test_temporary_keys_for_blind_indexes_leave_encryption_keys_alone() -> None:
    """temporary_keys(purpose='blind-index') swaps only the blind-index default."""
    keyring = Keyring({"k1": generate_key()})
    index_keyring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    with temporary_keys(keyring), temporary_keys(index_keyring, purpose="blind-index"):
        assert current_keyring("blind-index") is index_keyring
        assert current_keyring() is keyring


def test_temporary_keys_refuse_a_keyring_of_another_purpose() -> None:
    """An encryption keyring cannot become the blind-index default, nor the reverse."""
    index_keyring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    with pytest.raises(sa_fieldcrypt.ConfigurationError, match="keyring of blind-index keys"):
        temporary_keys(Keyring({"k1": generate_key()}), purpose="blind-index").__enter__()
    with pytest.raises(sa_fieldcrypt.ConfigurationError, match="keyring of encryption keys"):
        temporary_keys(index_keyring).__enter__()


@given(keyrings(purpose="blind-index"))
def test_keyrings_strategy_builds_blind_index_keyrings(keyring: Keyring) -> None:
    """keyrings(purpose='blind-index') gives hmac-sha256 keyrings that compute index values."""
    assert {"hmac-sha256"} == {key.kind for key in keyring}
    index = sa_fieldcrypt.BlindIndex("e", keyring=keyring, name="t.e")
    assert (index.compute("x") or "").startswith(f"{keyring.primary.id}:")


@given(keyrings())
def test_keyrings_strategy_builds_working_keyrings(keyring: Keyring) -> None:
    """Every generated keyring encrypts under its primary and decrypts with itself."""
    token = encrypt(keyring, b"probe")
    assert token.startswith(f"fc1:{keyring.primary.id}:")
    assert b"probe" == decrypt(keyring, token)


def test_plugin_fixture_is_available_to_user_suites(pytester: pytest.Pytester) -> None:
    """A user's suite gets both key fixtures without importing anything."""
    pytester.makepyfile(
        """
        from sa_fieldcrypt.config import current_keyring

        def test_uses_fixture(fieldcrypt_keyring):
            assert current_keyring() is fieldcrypt_keyring

        def test_uses_index_fixture(fieldcrypt_blind_index_keyring):
            assert "blind-index" == fieldcrypt_blind_index_keyring.purpose
            assert ("b1",) == fieldcrypt_blind_index_keyring.ids
            assert current_keyring("blind-index") is fieldcrypt_blind_index_keyring
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_fake_secret_manager_fixture_serves_the_real_client(request: pytest.FixtureRequest) -> None:
    """The plugin's fake_secret_manager fixture answers the real Secret Manager client."""
    pytest.importorskip("sa_fieldcrypt.testing.secret_manager", reason="needs the gcp extra")
    fake = request.getfixturevalue("fake_secret_manager")
    secret = fake.create_secret("projects/test/secrets/app")
    fake.add_version(secret, b"payload")
    response = fake.client().access_secret_version(
        name=f"{secret}/versions/1", timeout=5.0, retry=None
    )
    assert b"payload" == response.payload.data


# -- strategies of typed values ------------------------------------------------------------

TYPED_STRATEGIES = {
    "date": (date_plaintexts(), date),
    "aware datetime": (datetime_plaintexts(), datetime),
    "naive datetime": (datetime_plaintexts(timezone=False), datetime),
    "time": (time_plaintexts(), time),
    "int": (integer_plaintexts(), int),
    "float": (float_plaintexts(), float),
    "Decimal": (decimal_plaintexts(), Decimal),
    "bool": (boolean_plaintexts(), bool),
    "UUID": (uuid_plaintexts(), uuid.UUID),
}


@pytest.mark.parametrize(
    ("strategy", "python_type"), TYPED_STRATEGIES.values(), ids=TYPED_STRATEGIES
)
@given(data=st.data())
def test_typed_strategies_give_values_of_exactly_their_type(
    strategy: st.SearchStrategy[Any], python_type: type, data: st.DataObject
) -> None:
    """Each strategy draws values of its column's type only: no bool for an int, for instance."""
    assert python_type is type(data.draw(strategy))


@given(aware=datetime_plaintexts(), naive=datetime_plaintexts(timezone=False))
def test_datetime_strategies_give_aware_or_naive_values(aware: datetime, naive: datetime) -> None:
    """datetime_plaintexts() gives aware values, timezone=False naive ones."""
    assert (True, None) == (aware.utcoffset() is not None, naive.utcoffset())


@given(value=time_plaintexts())
def test_the_time_strategy_gives_naive_times(value: time) -> None:
    """time_plaintexts() gives times without a tzinfo, the only ones EncryptedTime stores."""
    assert None is value.tzinfo


def _bits(value: float) -> bytes:
    return struct.pack(">d", value)


@pytest.mark.parametrize(
    ("strategy", "extreme"),
    [
        (date_plaintexts(), lambda d: d.year < 1900),
        (datetime_plaintexts(), lambda d: d.utcoffset() % timedelta(minutes=1)),
        (datetime_plaintexts(), lambda d: abs(d.utcoffset()) > timedelta(hours=14)),
        (time_plaintexts(), lambda t: t == time.max),
        (time_plaintexts(), lambda t: t.microsecond % 1000 != 0),
        (integer_plaintexts(), lambda n: 2**63 < abs(n) < 2**200),
        (integer_plaintexts(), lambda n: abs(n) > 10**4300),
        (float_plaintexts(), lambda f: _bits(f) == _bits(-0.0)),
        (float_plaintexts(), lambda f: f == 5e-324),
        (float_plaintexts(), lambda f: f == math.inf),
        (float_plaintexts(), lambda f: math.isnan(f) and _bits(f) != _bits(math.nan)),
        (
            decimal_plaintexts(),
            lambda d: (
                d.is_finite() and len(d.as_tuple().digits) >= 30 and abs(d.adjusted()) > 999_999
            ),
        ),
        (decimal_plaintexts(), lambda d: d.is_snan()),
        (
            decimal_plaintexts(),
            lambda d: d.is_finite() and d.as_tuple().digits[-1:] == (0,) and d != 0,
        ),
    ],
    ids=[
        "date-before-1900",
        "offset-with-seconds",
        "offset-past-14h",
        "last-microsecond",
        "time-microseconds",
        "int-past-64-bits",
        "int-past-4300-digits",
        "negative-zero",
        "smallest-subnormal",
        "infinity",
        "nan-payload",
        "decimal-30-digits-odd-exponent",
        "snan",
        "decimal-trailing-zero",
    ],
)
def test_typed_strategies_reach_the_extremes(
    strategy: st.SearchStrategy[Any], extreme: Any
) -> None:
    """Each extreme the strategies promise turns up among a thousand examples."""
    # Hypothesis shows what it shrinks with repr(), which refuses ints past 4300 digits.
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        found = find(strategy, extreme, settings=settings(max_examples=1000, database=None))
    finally:
        sys.set_int_max_str_digits(limit)
    assert extreme(found)

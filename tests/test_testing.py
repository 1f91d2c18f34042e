"""The helpers users test with: fixtures, at-rest assertions and strategies."""

from __future__ import annotations

import math
import re
import struct
import sys
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Engine,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    DecryptionError,
    EncryptedText,
    Keyring,
    Scrypt,
    SubstringIndex,
    casefold,
    compound,
    compound_index,
    email_domain,
    encrypted_hybrid,
    encrypted_values,
    first_chars,
    generate_key,
    last_digits,
    letters_lower,
    normalize_email,
    normalize_phone,
)
from sa_fieldcrypt.cipher import decrypt, encrypt
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.testing import (
    assert_encrypted_at_rest,
    assert_indexes_current,
    boolean_plaintexts,
    contained_terms,
    date_plaintexts,
    datetime_plaintexts,
    decimal_plaintexts,
    email_addresses,
    float_plaintexts,
    integer_plaintexts,
    keyrings,
    note_texts,
    phone_numbers,
    search_terms,
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


class Member(Base):
    """Every kind of index: several per hybrid, parts, truncated, slow and compound."""

    __tablename__ = "fc_testing_members"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    consent_sms: Mapped[bool] = mapped_column(default=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_last4: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_b16: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "phone_encrypted",
        bind_row=True,
        blind_index=[
            BlindIndex("phone_bidx", normalizer=normalize_phone),
            BlindIndex("phone_last4", normalizer=last_digits(4)),
            BlindIndex("phone_b16", normalizer=normalize_phone, bits=16),
        ],
    )
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email_domain_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted",
        blind_index=[
            BlindIndex("email_bidx", normalizer=normalize_email, slow=Scrypt(n=2**12, r=1, p=1)),
            BlindIndex("email_domain_bidx", normalizer=email_domain),
        ],
    )
    last_name_encrypted: Mapped[str | None] = mapped_column(Text)
    last_name = encrypted_hybrid("last_name_encrypted")
    initial_surname_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    initial_surname = compound_index(
        BlindIndex(
            "initial_surname_bidx",
            normalizer=compound(email=first_chars(1), last_name=letters_lower),
            bits=8,
        )
    )
    sms_last4_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    sms_last4 = compound_index(
        BlindIndex("sms_last4_bidx", normalizer=compound(consent_sms=None, phone=last_digits(4)))
    )


class Note(Base):
    """A substring index over row-bound values, in a side table."""

    __tablename__ = "fc_testing_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid(
        "body_encrypted", bind_row=True, substring=SubstringIndex("fc_testing_note_trigrams")
    )


NOTE_TRIGRAMS = Base.metadata.tables["fc_testing_note_trigrams"]

MEMBER_INDEXES = (
    *("phone_bidx", "phone_last4", "phone_b16", "email_bidx", "email_domain_bidx"),
    *("initial_surname_bidx", "sms_last4_bidx"),
)


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


def _members(session: Session) -> None:
    session.add_all(
        [
            Member(
                id=1,
                consent_sms=True,
                phone="+1 555 010 0000",
                email="Ada@Example.com",
                last_name="Lovelace",
            ),
            # consent_sms given: a column default applies in SQL, after the index is computed.
            Member(
                id=2,
                consent_sms=False,
                phone="+44 20 7946 1234",
                email="alan@example.org",
                last_name="Turing",
            ),
            Member(id=3, consent_sms=False),
        ]
    )
    session.flush()


def test_index_assertion_passes_for_rows_written_through_the_model(
    db: Engine, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """Every index of every row is checked, flushed rows included, NULL rows counted."""
    with Session(db) as session:
        _members(session)
        assert 3 * len(MEMBER_INDEXES) == assert_indexes_current(session, Member)
        assert 3 == assert_indexes_current(session, Member, indexes=["sms_last4_bidx"])


@pytest.mark.parametrize("index", MEMBER_INDEXES)
def test_index_assertion_catches_an_index_written_by_core(
    db: Engine, fieldcrypt_blind_index_keyring: Keyring, index: str
) -> None:
    """A Core UPDATE that alters one index value of a row fails, naming column and key."""
    with Session(db) as session:
        _members(session)
        session.commit()
    with db.begin() as conn:
        select_own = f"SELECT {index} FROM fc_testing_members WHERE id = 2"  # noqa: S608 - test's own names
        own = conn.execute(text(select_own)).scalar_one()
        # Its last hex digit changed: another value of the same shape, never this row's (a
        # value copied from another row may coincide with it under a truncated index).
        altered = own[:-1] + ("1" if own[-1] == "0" else "0")
        conn.execute(
            text(f"UPDATE fc_testing_members SET {index} = :v WHERE id = 2"),  # noqa: S608 - test's own names
            {"v": altered},
        )
    with db.connect() as conn, pytest.raises(AssertionError) as caught:
        assert_indexes_current(conn, Member)
    message = str(caught.value)
    assert f"fc_testing_members.{index} at primary key (2,)" in message
    for value in ("Turing", "turing", "alan", "7946", "1234", "example.org"):
        assert value not in message


def test_index_assertion_catches_a_core_update_of_a_part(
    db: Engine, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """A plain part set by Core leaves its compound index stale, which the assertion names."""
    with Session(db) as session:
        _members(session)
        session.commit()
    with db.begin() as conn:
        conn.execute(
            text("UPDATE fc_testing_members SET consent_sms = :f WHERE id = 1"), {"f": False}
        )
    with (
        Session(db) as session,
        pytest.raises(
            AssertionError,
            match=r"sms_last4_bidx at primary key \(1,\) holds the index of other values",
        ),
    ):
        assert_indexes_current(session, Member)


def test_index_assertion_catches_missing_and_orphan_indexes(
    db: Engine, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """A value without its index, and an index without a value, both fail."""
    with Session(db) as session:
        _members(session)
        session.commit()
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE fc_testing_members SET email_domain_bidx = "
                "(SELECT email_domain_bidx FROM fc_testing_members WHERE id = 2) WHERE id = 3"
            )
        )
    with db.connect() as conn, pytest.raises(AssertionError, match=r"\(3,\) .*nothing to index"):
        assert_indexes_current(conn, Member, indexes=["email_domain_bidx"])
    with db.begin() as conn:
        conn.execute(text("UPDATE fc_testing_members SET email_domain_bidx = NULL WHERE id <> 2"))
    with db.connect() as conn, pytest.raises(AssertionError, match=r"\(1,\) has no index value"):
        assert_indexes_current(conn, Member)


def test_index_assertion_fails_for_an_index_under_a_retired_key(db: Engine) -> None:
    """An index value under a key the keyring no longer holds is not current: lookups miss it."""
    with (
        temporary_keys(
            Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index"),
            purpose="blind-index",
        ),
        Session(db) as session,
    ):
        _members(session)
        session.commit()
    with (
        temporary_keys(
            Keyring({"b2": generate_key("hmac-sha256")}, purpose="blind-index"),
            purpose="blind-index",
        ),
        db.connect() as conn,
        pytest.raises(AssertionError, match="no longer has"),
    ):
        assert_indexes_current(conn, Member)


def test_index_assertion_refuses_models_without_indexes(db: Engine) -> None:
    """A model without blind indexes, or an unknown index name, is refused."""
    with Session(db) as session:
        with pytest.raises(AssertionError, match="has no blind index"):
            assert_indexes_current(session, Patient)
        with pytest.raises(AssertionError, match="not blind-index columns"):
            assert_indexes_current(session, Member, indexes=["phone_encrypted"])


NOTES: dict[int, str | None] = {
    1: "Straße 12, İstanbul",  # folds to more characters than it has
    2: "Lovelace prefers email",
    3: "abcabcabcabc",  # three distinct trigrams, each repeated
    4: "ab",  # too short to have a trigram: no side rows
    5: None,
}
NOTE_WHERE = "fc_testing_note_trigrams (substring index of fc_testing_notes.body_encrypted)"


def _notes(session: Session) -> None:
    session.add_all(Note(id=i, body=body) for i, body in NOTES.items())
    session.flush()


def _side_rows(conn: Any, owner: int) -> set[str]:
    found = select(NOTE_TRIGRAMS.c.trigram).where(NOTE_TRIGRAMS.c.owner_id == owner)
    return set(conn.execute(found).scalars())


def _not_held(conn: Any, owner: int) -> str:
    """A trigram value of the same shape as owner's, but none of them."""
    held = _side_rows(conn, owner)
    some = min(held)
    return next(v for v in (some[:-1] + c for c in "0123456789abcdef") if v not in held)


def test_index_assertion_passes_for_side_rows_written_through_the_model(
    db: Engine, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """Side rows of inserted and updated owners pass: each owner row counts once per index."""
    with Session(db) as session:
        _notes(session)
        _members(session)
        assert len(NOTES) == assert_indexes_current(session, Note)
        assert len(NOTES) == assert_indexes_current(session, NOTE_TRIGRAMS)
        assert len(NOTES) == assert_indexes_current(
            session, Note, indexes=["fc_testing_note_trigrams"]
        )
        assert 3 * len(MEMBER_INDEXES) + len(NOTES) == assert_indexes_current(session, Base)
        note = session.get(Note, 2)
        assert note is not None
        note.body = "Lovelace prefers the phone"
        session.delete(session.get(Note, 3))
        session.flush()
        assert len(NOTES) - 1 == assert_indexes_current(session, Note)


def _delete_one(conn: Any) -> None:
    conn.execute(
        delete(NOTE_TRIGRAMS).where(
            NOTE_TRIGRAMS.c.owner_id == 2, NOTE_TRIGRAMS.c.trigram == min(_side_rows(conn, 2))
        )
    )


def _alter_one(conn: Any) -> None:
    conn.execute(
        update(NOTE_TRIGRAMS)
        .where(NOTE_TRIGRAMS.c.owner_id == 2, NOTE_TRIGRAMS.c.trigram == min(_side_rows(conn, 2)))
        .values(trigram=_not_held(conn, 2))
    )


def _add_one(conn: Any) -> None:
    conn.execute(insert(NOTE_TRIGRAMS).values(owner_id=2, trigram=_not_held(conn, 2)))


def _add_under_another_key(conn: Any) -> None:
    conn.execute(insert(NOTE_TRIGRAMS).values(owner_id=2, trigram="other:0000"))


def _delete_all(conn: Any) -> None:
    conn.execute(delete(NOTE_TRIGRAMS).where(NOTE_TRIGRAMS.c.owner_id == 2))


def _index_a_short_value(conn: Any) -> None:
    conn.execute(insert(NOTE_TRIGRAMS).values(owner_id=4, trigram=_not_held(conn, 2)))


def _change_the_value_by_core(conn: Any) -> None:
    stored = encrypted_values(Note, id=2, body="Lovelace prefers letters")
    conn.execute(
        update(Note.__table__)
        .where(Note.__table__.c.id == 2)
        .values(body_encrypted=stored["body_encrypted"])
    )


@pytest.mark.parametrize(
    ("corrupt", "owner", "problem"),
    [
        (_delete_one, 2, r"not those of the row's value \(1 missing, 0 extra\)"),
        (_alter_one, 2, r"not those of the row's value \(1 missing, 1 extra\)"),
        (_add_one, 2, r"not those of the row's value \(0 missing, 1 extra\)"),
        (_add_under_another_key, 2, "has side rows under 2 index keys"),
        (_delete_all, 2, "has no side rows for the row's value"),
        (_index_a_short_value, 4, "nothing to index"),
        (_change_the_value_by_core, 2, r"not those of the row's value \(\d+ missing"),
    ],
    ids=[
        *("deleted", "altered", "added", "other-key", "all-deleted", "short-value"),
        "value-by-core",
    ],
)
def test_index_assertion_catches_side_rows_changed_by_core(
    db: Engine,
    fieldcrypt_blind_index_keyring: Keyring,
    corrupt: Any,
    owner: int,
    problem: str,
) -> None:
    """A side row deleted, altered or added by Core, or a value changed by Core, fails."""
    with Session(db) as session:
        _notes(session)
        session.commit()
    with db.begin() as conn:
        corrupt(conn)
        held = _side_rows(conn, 2)
    with db.connect() as conn, pytest.raises(AssertionError) as caught:
        assert_indexes_current(conn, Note)
    message = str(caught.value)
    assert re.search(rf"^{re.escape(NOTE_WHERE)} at primary key \({owner},\) .*{problem}", message)
    for secret in ("Lovelace", "lovelace", "prefers", "email", "letters", *held):
        assert secret not in message


def test_index_assertion_catches_side_rows_of_an_owner_deleted_by_core(
    db: Engine, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """Side rows that outlive their owner (SQLite enforces no foreign key) fail; elsewhere
    the foreign key deletes them with it, and the rest pass."""
    with Session(db) as session:
        _notes(session)
        session.commit()
    with db.begin() as conn:
        conn.execute(delete(Note.__table__).where(Note.__table__.c.id == 2))
    with db.connect() as conn:
        if db.dialect.name != "sqlite":
            assert len(NOTES) - 1 == assert_indexes_current(conn, Note)
            return
        with pytest.raises(AssertionError, match=r"side rows of primary key \(2,\), which no"):
            assert_indexes_current(conn, Note)


def test_index_assertion_fails_for_side_rows_under_a_retired_key(db: Engine) -> None:
    """Side rows under a key the keyring no longer holds are not current: lookups miss them."""
    with (
        temporary_keys(
            Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index"),
            purpose="blind-index",
        ),
        Session(db) as session,
    ):
        _notes(session)
        session.commit()
    with (
        temporary_keys(
            Keyring({"b2": generate_key("hmac-sha256")}, purpose="blind-index"),
            purpose="blind-index",
        ),
        db.connect() as conn,
        pytest.raises(AssertionError, match=r"\(1,\) has side rows under an index key"),
    ):
        assert_indexes_current(conn, Note)


@settings(max_examples=200)
@given(data=st.data())
def test_phone_numbers_are_spellings_that_normalize_phone_folds(data: st.DataObject) -> None:
    """Every spelling of a number normalizes to it, and its last four digits are its own."""
    number = data.draw(st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True))
    spelling = data.draw(phone_numbers(number))
    assert number == normalize_phone(spelling)
    assert number[-4:] == last_digits(4)(spelling)


@settings(max_examples=200)
@given(data=st.data())
def test_email_addresses_are_spellings_that_normalize_email_folds(data: st.DataObject) -> None:
    """Two spellings of one address normalize alike and index one domain."""
    first = data.draw(email_addresses())
    canonical = normalize_email(first)
    assert canonical is not None
    second = data.draw(email_addresses(canonical))
    assert canonical == normalize_email(second)
    assert email_domain(first) == email_domain(second) == canonical.rpartition("@")[2]


def test_spelling_strategies_vary_what_the_normalizers_fold() -> None:
    """The strategies reach full-width digits, plus-sign look-alikes, mixed case and unicode."""
    find(phone_numbers(), lambda s: "\uff10" <= s.strip()[-1] <= "\uff19")
    find(phone_numbers(), lambda s: "(" in s and "tel:" in s)
    find(email_addresses(), lambda s: s != s.strip() and any(c.isupper() for c in s))
    find(email_addresses(), lambda s: not s.strip().isascii())


def test_spelling_strategies_refuse_what_they_cannot_spell() -> None:
    """A number that is not E.164 and a text without one @ are refused."""
    with pytest.raises(ValueError, match=r"E\.164"):
        phone_numbers("555 0100")
    with pytest.raises(ValueError, match=r"E\.164"):
        phone_numbers("+1234")
    with pytest.raises(ValueError, match="address"):
        email_addresses("ada.example.com")


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_stored_spelling_is_found_by_any_other(data: st.DataObject) -> None:
    """A row stored under one spelling is found by another, and its indexes are current."""
    index_keys = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    engine = create_engine("sqlite://")
    with (
        temporary_keys(Keyring({"k1": generate_key()})),
        temporary_keys(index_keys, purpose="blind-index"),
    ):
        Base.metadata.create_all(engine)
        number = data.draw(st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True))
        stored = data.draw(phone_numbers(number))
        with Session(engine) as session:
            session.add(
                Member(id=1, consent_sms=True, phone=stored, email=data.draw(email_addresses()))
            )
            session.flush()
            other = data.draw(phone_numbers(number))
            assert 1 == session.scalar(select(func.count()).where(Member.phone == other))
            assert len(MEMBER_INDEXES) == assert_indexes_current(session, Member)
    engine.dispose()


def _folded(normalizer: Any, text: str | None) -> str:
    return (None if text is None else normalizer(text)) or ""


@settings(max_examples=200)
@given(data=st.data(), normalizer=st.sampled_from([casefold, letters_lower]))
def test_contained_terms_are_in_the_value_once_normalized(
    data: st.DataObject, normalizer: Any
) -> None:
    """Each contained term has three characters or more once normalized, all in the value's."""
    value = data.draw(note_texts().filter(lambda v: len(_folded(normalizer, v)) >= 3))
    term = data.draw(contained_terms(value, normalizer=normalizer))
    assert len(_folded(normalizer, term)) >= 3
    assert _folded(normalizer, term) in _folded(normalizer, value)


@settings(max_examples=200)
@given(data=st.data(), normalizer=st.sampled_from([casefold, letters_lower, None]))
def test_search_terms_are_terms_contains_takes(data: st.DataObject, normalizer: Any) -> None:
    """Every search term, of any value, short ones too, has three characters once normalized."""
    term = data.draw(search_terms(data.draw(note_texts()), normalizer=normalizer))
    assert len(_folded(normalizer or (lambda t: t), term)) >= 3


def _repeats_a_trigram(text: str) -> bool:
    trigrams = [text[i : i + 3] for i in range(len(text) - 2)]
    return len(set(trigrams)) < len(trigrams)


def test_note_texts_reach_what_a_substring_index_must_get_right() -> None:
    """Notes reach lengthening case folds, short texts, odd white space and repeated trigrams."""
    quick = settings(max_examples=2000, database=None)
    find(note_texts(), lambda v: "ß" in v and len(v) > 5, settings=quick)
    find(note_texts(), lambda v: "İ" in v, settings=quick)
    find(note_texts(), lambda v: len(v) < 3 and len(_folded(casefold, v)) >= 3, settings=quick)
    find(note_texts(), lambda v: v != "" and _folded(casefold, v) == "", settings=quick)
    find(note_texts(), lambda v: any(c in v for c in "\t\n\u00a0\u3000"), settings=quick)
    find(note_texts(), lambda v: _repeats_a_trigram(_folded(casefold, v)), settings=quick)
    find(note_texts(), lambda v: "%" in v or "_" in v, settings=quick)


def test_search_terms_reach_near_misses_holding_every_trigram() -> None:
    """Some terms are not in the value although the value holds each of their trigrams."""
    value = "one abcx, then bcd"  # holds abc and bcd, not abcd

    def near_miss(term: str) -> bool:
        folded = _folded(casefold, term)
        trigrams = {folded[i : i + 3] for i in range(len(folded) - 2)}
        return folded not in value and all(t in value for t in trigrams)

    quick = settings(max_examples=2000, database=None)
    find(search_terms(value), near_miss, settings=quick)
    find(search_terms(value), lambda t: _folded(casefold, t) in value, settings=quick)
    find(contained_terms(value), lambda t: t != t.lower(), settings=quick)


def test_contained_terms_refuse_a_value_without_a_term() -> None:
    """A value under three characters once normalized contains no term contains() takes."""
    with pytest.raises(ValueError, match="at least 3 characters"):
        contained_terms("a\u200bb")
    with pytest.raises(ValueError, match="at least 3 characters"):
        contained_terms("a-b-", normalizer=letters_lower)

"""encrypted_hybrid: plaintext attributes, blind-index lookups and unique constraints."""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    null,
    select,
    text,
    union,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    aliased,
    defer,
    joinedload,
    load_only,
    mapped_column,
    relationship,
    selectinload,
    subqueryload,
    with_loader_criteria,
)
from sqlalchemy.orm.attributes import flag_modified

import sa_fieldcrypt
from conftest import backend_id, wait_until, waits_for_a_lock
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
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
    Key,
    Keyring,
    Scrypt,
    SubstringIndex,
    UnsupportedComparisonError,
    ValueTypeError,
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
    metrics,
    normalize_email,
    normalize_phone,
    parse_key,
    typed_normalizer,
)
from sa_fieldcrypt.cipher import decrypt, encrypt, inspect_token
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.hybrid import INFO_BLIND_INDEX
from sa_fieldcrypt.testing import assert_indexes_current, note_texts, search_terms
from sa_fieldcrypt.types import COLUMN_INFO_KEY


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "fc_hyb_customers"
    __table_args__ = (UniqueConstraint("station_id", "email_bidx", name="uq_fc_hyb_station_email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    station_id: Mapped[int] = mapped_column(Integer)
    # As sqlacodegen generates it: the attribute holds ciphertext in a plain column.
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )
    # A second email column, to compare index values of equal plaintexts across columns.
    alt_email_encrypted: Mapped[str | None] = mapped_column(Text)
    alt_email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    alt_email = encrypted_hybrid(
        "alt_email_encrypted",
        blind_index=BlindIndex("alt_email_bidx", normalizer=normalize_email),
    )
    # The EncryptedText style: the column attribute already reads plaintext.
    _phone: Mapped[str | None] = mapped_column("phone_encrypted", EncryptedText())
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "_phone", blind_index=BlindIndex("phone_bidx", normalizer=normalize_phone)
    )
    # No blind index at all.
    notes_encrypted: Mapped[str | None] = mapped_column(Text)
    notes = encrypted_hybrid("notes_encrypted")
    prefs_encrypted: Mapped[str | None] = mapped_column(Text)
    prefs = encrypted_hybrid("prefs_encrypted", column_type=EncryptedJSON())


@pytest.fixture
def db(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


def _ids(session: Session, condition: Any) -> list[int]:
    return list(session.scalars(select(Customer.id).where(condition).order_by(Customer.id)))


def _customer(id: int, station_id: int = 1, **values: Any) -> Customer:
    return Customer(id=id, station_id=station_id, **values)


# -- instance level ------------------------------------------------------------------------


def test_constructor_reads_back_plaintext_and_stores_tokens(db: Engine) -> None:
    """Customer(email=..., phone=...) stores tokens and index values, and reads plaintext."""
    with Session(db) as session:
        session.add(_customer(1, email="Ada@Example.com", phone="+1 (555) 010-0000", notes="n"))
        session.commit()
    with Session(db) as session:
        customer = session.get(Customer, 1)
        assert ("Ada@Example.com", "+1 (555) 010-0000", "n") == (
            customer.email,
            customer.phone,
            customer.notes,
        )
    with db.connect() as conn:
        row = conn.execute(text("SELECT * FROM fc_hyb_customers")).mappings().one()
    for column in ("email_encrypted", "phone_encrypted", "notes_encrypted"):
        assert "fc1" == inspect_token(row[column]).kind
    assert "Ada" not in row["email_encrypted"]
    assert row["email_bidx"].startswith("b1:")
    assert row["phone_bidx"].startswith("b1:")


def test_assignment_sets_value_and_index_in_one_update(db: Engine) -> None:
    """Assigning encrypts at once and the flush writes the token and the index in one UPDATE."""
    with Session(db) as session:
        session.add(_customer(1, email="old@example.com"))
        session.commit()
        customer = session.get(Customer, 1)
        old_index = customer.email_bidx
        customer.email = "new@example.com"
        assert "fc1" == inspect_token(customer.email_encrypted or "").kind
        assert old_index != customer.email_bidx
        statements: list[str] = []
        event.listen(db, "before_cursor_execute", lambda *a: statements.append(a[2]))
        session.commit()
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert 1 == len(updates)
    assert "email_encrypted" in updates[0]
    assert "email_bidx" in updates[0]


@pytest.mark.parametrize(
    ("attribute", "value"), [("email", 42), ("phone", 5550100), ("email", b"bytes")]
)
def test_failed_assignment_changes_nothing(db: Engine, attribute: str, value: Any) -> None:
    """A value of the wrong type raises ValueTypeError and leaves value and index as they were."""
    customer = _customer(1, email="ada@example.com", phone="+15550100000")
    before = (customer.email_encrypted, customer.email_bidx, customer._phone, customer.phone_bidx)
    with pytest.raises(ValueTypeError) as info:
        setattr(customer, attribute, value)
    assert str(value) not in str(info.value)
    after = (customer.email_encrypted, customer.email_bidx, customer._phone, customer.phone_bidx)
    assert before == after


def test_none_clears_value_and_index(db: Engine) -> None:
    """Assigning None stores SQL NULL in both the value and its index."""
    with Session(db) as session:
        session.add(_customer(1, email="ada@example.com", phone="+15550100000"))
        session.commit()
        customer = session.get(Customer, 1)
        customer.email = None
        customer.phone = None
        session.commit()
    with db.connect() as conn:
        row = conn.execute(text("SELECT * FROM fc_hyb_customers")).mappings().one()
    assert (None, None, None, None) == (
        row["email_encrypted"],
        row["email_bidx"],
        row["phone_encrypted"],
        row["phone_bidx"],
    )


def test_direct_writes_to_the_source_column_keep_the_index_in_step(db: Engine) -> None:
    """Writing the column attribute itself (plaintext or a copied token) updates the index."""
    with Session(db) as session:
        session.add_all([_customer(1, email="a@example.com"), _customer(2, station_id=2)])
        session.commit()
        first, second = session.get(Customer, 1), session.get(Customer, 2)
        second.email_encrypted = first.email_encrypted  # a token copied between rows
        second._phone = "+44 20 7946 0000"  # the EncryptedText column, not the hybrid
        session.commit()
        assert [1, 2] == _ids(session, Customer.email == "A@example.com")
        assert [2] == _ids(session, Customer.phone == "+442079460000")


def test_reading_a_detached_instance_needs_no_database(db: Engine) -> None:
    """Loaded attributes read plaintext with no SQL (so nothing lazy breaks async sessions)."""
    with Session(db, expire_on_commit=False) as session:
        session.add(_customer(1, email="ada@example.com", phone="+15550100000"))
        session.commit()
        customer = session.get(Customer, 1)
    statements: list[str] = []
    event.listen(db, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert ("ada@example.com", "+15550100000") == (customer.email, customer.phone)
    assert [] == statements


def test_json_column_type_round_trips(db: Engine) -> None:
    """column_type=EncryptedJSON() stores any JSON value in a plain Text column."""
    prefs = {"lang": "en", "sms": [True, None, 2.5]}
    with Session(db) as session:
        session.add(_customer(1, prefs=prefs))
        session.commit()
    with Session(db) as session:
        assert prefs == session.get(Customer, 1).prefs


def test_tampered_token_names_the_column(db: Engine) -> None:
    """A tampered ciphertext raises DecryptionError naming table.column, not the value."""
    with Session(db) as session:
        session.add(_customer(1, email="ada@example.com"))
        session.commit()
    with db.begin() as conn:
        token = conn.execute(text("SELECT email_encrypted FROM fc_hyb_customers")).scalar_one()
        conn.execute(
            text("UPDATE fc_hyb_customers SET email_encrypted = :v"), {"v": token[:-8] + "A" * 8}
        )
    with Session(db) as session, pytest.raises(DecryptionError) as info:
        _ = session.get(Customer, 1).email
    assert "fc_hyb_customers.email_encrypted" in str(info.value)
    assert "ada@" not in str(info.value)


def test_ciphertext_column_records_its_type(keyring: Keyring, index_keyring: Any) -> None:
    """A plain ciphertext column carries info[COLUMN_INFO_KEY]: the type that decrypts it."""
    column_type = Customer.__table__.c.email_encrypted.info[COLUMN_INFO_KEY]
    assert isinstance(column_type, EncryptedText)
    token = _customer(1, email="ada@example.com").email_encrypted
    assert "ada@example.com" == column_type.process_result_value(token, postgresql.dialect())
    assert isinstance(Customer.__table__.c.prefs_encrypted.info[COLUMN_INFO_KEY], EncryptedJSON)
    assert COLUMN_INFO_KEY not in Customer.__table__.c.phone_encrypted.info  # typed column already
    bound = Customer.__table__.c.email_bidx.info[INFO_BLIND_INDEX]
    assert ("email_encrypted", "fc_hyb_customers.email_bidx") == (bound.source_column, bound.name)


# -- queries -------------------------------------------------------------------------------

EMAIL_FORMS = ["ada@example.com", "ADA@EXAMPLE.COM", "  Ada@Example.com\n", "\tada@Example.COM "]
PHONE_FORMS = ["+1 (555) 010-0000", "+15550100000", "+1.555.010.0000", " +1 555 0100000 "]


@pytest.mark.parametrize("stored", [EMAIL_FORMS[0], EMAIL_FORMS[2]])
def test_lookup_by_email_in_any_formatting(db: Engine, stored: str) -> None:
    """A stored email is found by == and in_() in every formatting normalize_email accepts."""
    with Session(db) as session:
        session.add_all([_customer(1, email=stored), _customer(2, email="grace@example.com")])
        session.commit()
        for form in EMAIL_FORMS:
            assert [1] == _ids(session, Customer.email == form)
            assert [1] == _ids(session, form == Customer.email)
            assert [1] == _ids(session, Customer.email.in_([form, "nobody@example.com"]))
        assert [2] == _ids(session, Customer.email != "ADA@example.com")
        assert [2] == _ids(session, Customer.email.not_in(["ada@example.com"]))
        assert [1, 2] == _ids(session, Customer.email.in_(["ada@example.com", "GRACE@example.com"]))


@pytest.mark.parametrize("stored", [PHONE_FORMS[0], PHONE_FORMS[1]])
def test_lookup_by_phone_in_any_formatting(db: Engine, stored: str) -> None:
    """A stored phone number is found in every formatting normalize_phone accepts."""
    with Session(db) as session:
        session.add_all([_customer(1, phone=stored), _customer(2, phone="+442079460000")])
        session.commit()
        for form in PHONE_FORMS:
            assert [1] == _ids(session, Customer.phone == form)
        assert [] == _ids(session, Customer.phone == "5550100000")  # no country code: no match


def test_unique_index_rejects_duplicates_per_station(db: Engine) -> None:
    """(station_id, email_bidx) rejects the same email in one station, in any formatting."""
    with Session(db) as session:
        session.add_all(
            [
                _customer(1, station_id=1, email="ada@example.com"),
                _customer(2, station_id=2, email=" ADA@example.com"),  # another station: fine
                _customer(3, station_id=1),  # no email: NULL index values do not collide
                _customer(4, station_id=1),
            ]
        )
        session.commit()
        session.add(_customer(5, station_id=1, email="Ada@Example.COM\n"))
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        assert [1, 2] == _ids(session, Customer.email == "ada@example.com")


def test_unindexed_values_match_nothing(db: Engine) -> None:
    """A value the normalizer does not index (a blank email) matches no row, as SQL NULL would."""
    with Session(db) as session:
        session.add_all([_customer(1, email="  "), _customer(2, email="ada@example.com")])
        session.commit()
        assert [] == _ids(session, Customer.email == "  ")
        assert [2] == _ids(session, Customer.email != "")
        assert [] == _ids(session, Customer.email.in_([]))
        assert [2] == _ids(session, Customer.email.in_([None, "ada@example.com"]))
        assert [1, 2] == _ids(session, Customer.email.is_not(None))


def test_null_tests_use_the_encrypted_column(db: Engine) -> None:
    """== None, is_(None), is_not(None) and null() test the stored value, indexed or not."""
    with Session(db) as session:
        session.add_all([_customer(1, email="a@example.com", notes="n"), _customer(2)])
        session.commit()
        assert [2] == _ids(session, Customer.email == None)  # noqa: E711
        assert [1] == _ids(session, Customer.email != None)  # noqa: E711
        assert [2] == _ids(session, Customer.notes.is_(None))
        assert [2] == _ids(session, Customer.email.is_(null()))
        assert [1] == _ids(session, Customer.email != null())
        assert [1] == _ids(session, Customer.phone.is_(None) & Customer.notes.is_not(None))


def test_selecting_the_hybrid_returns_plaintext(db: Engine) -> None:
    """select(Customer.email) decrypts in SQLAlchemy's result processing, for both styles."""
    with Session(db) as session:
        session.add(_customer(1, email="ada@example.com", phone="+15550100000"))
        session.commit()
        assert ("ada@example.com", "+15550100000") == tuple(
            session.execute(select(Customer.email, Customer.phone)).one()
        )


BULK_PLAINTEXT_KEYS = pytest.mark.skipif(
    not hasattr(hybrid_property, "bulk_dml"),
    reason="SQLAlchemy 2.0 ignores hybrid keys in ORM bulk INSERT; encrypted_values() covers it",
)


@BULK_PLAINTEXT_KEYS
def test_bulk_insert_with_plaintext_keys(db: Engine) -> None:
    """ORM bulk insert() with the plaintext keys encrypts and indexes the values."""
    with Session(db) as session:
        session.execute(
            insert(Customer),
            [{"id": 1, "station_id": 1, "email": "bulk@example.com", "phone": "+1 555 0100000"}],
        )
        session.commit()
        assert [1] == _ids(session, Customer.email == "BULK@example.com")
        assert [1] == _ids(session, Customer.phone == "+15550100000")
    with db.connect() as conn:
        stored = conn.execute(text("SELECT email_encrypted, phone_encrypted FROM fc_hyb_customers"))
        assert all(inspect_token(v).kind == "fc1" for v in stored.one())


@BULK_PLAINTEXT_KEYS
def test_bulk_update_by_primary_key_with_plaintext_keys(db: Engine) -> None:
    """ORM bulk UPDATE by primary key with the plaintext keys re-encrypts and reindexes."""
    with Session(db) as session:
        session.add(_customer(1, email="old@example.com", phone="+15550100000"))
        session.commit()
        session.execute(update(Customer), [{"id": 1, "email": "new@example.com", "phone": "+1 2"}])
        session.commit()
        assert [1] == _ids(session, Customer.email == "NEW@example.com")
        assert [1] == _ids(session, Customer.phone == "+12")
        assert [] == _ids(session, Customer.email == "old@example.com")
    with db.connect() as conn:
        stored = conn.execute(text("SELECT email_encrypted, phone_encrypted FROM fc_hyb_customers"))
        assert all(inspect_token(v).kind == "fc1" for v in stored.one())


def test_update_statement_keeps_the_index(db: Engine) -> None:
    """ORM update() with the plaintext attribute encrypts the value and rewrites its index."""
    with Session(db) as session:
        session.add(_customer(1, email="old@example.com"))
        session.commit()
        session.execute(
            update(Customer).where(Customer.id == 1).values({Customer.notes: "updated"})
        )
        session.execute(update(Customer).values(email="moved@example.com"))
        session.commit()
        assert [1] == _ids(session, Customer.email == "moved@example.com")
        assert [] == _ids(session, Customer.email == "old@example.com")
        assert "updated" == session.get(Customer, 1).notes
    with db.connect() as conn:
        stored = conn.execute(text("SELECT email_encrypted, notes_encrypted FROM fc_hyb_customers"))
        assert all(inspect_token(v).kind == "fc1" for v in stored.one())


def test_encrypted_values_prepare_bulk_inserts(db: Engine) -> None:
    """encrypted_values() maps plaintext keys to stored attributes, for any bulk insert."""
    rows = [
        encrypted_values(Customer, id=i, station_id=1, email=f"u{i}@example.com", phone=None)
        for i in (1, 2)
    ]
    assert {"id", "station_id", "email_encrypted", "email_bidx", "_phone", "phone_bidx"} == set(
        rows[0]
    )
    with Session(db) as session:
        session.execute(insert(Customer), rows)
        session.commit()
        assert [2] == _ids(session, Customer.email == "U2@example.com")
        assert "u1@example.com" == session.get(Customer, 1).email


def test_lookups_work_through_aliases(db: Engine) -> None:
    """aliased(Customer).email == x compares the alias's own index column."""
    with Session(db) as session:
        session.add_all([_customer(1, email="a@example.com"), _customer(2, email="b@example.com")])
        session.commit()
        other = aliased(Customer)
        pairs = session.execute(
            select(Customer.id, other.id)
            .join(other, other.station_id == Customer.station_id)
            .where(Customer.email == "A@example.com", other.email == "B@example.com")
        ).all()
    assert [(1, 2)] == [tuple(p) for p in pairs]


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.text(min_size=1), data=st.data())
def test_lookup_finds_the_row_for_any_equivalent_text(
    db: Engine, value: str, data: st.DataObject
) -> None:
    """For any text, an equivalent form finds the row, and another column's index never matches."""
    variant = data.draw(
        st.tuples(st.sampled_from(["", " ", "\n"]), st.sampled_from([str.upper, str.lower]))
        .map(lambda p: p[0] + p[1](value) + p[0])
        .filter(lambda v: normalize_email(v) == normalize_email(value))
    )
    with Session(db) as session:
        session.execute(Customer.__table__.delete())
        session.add_all(
            [_customer(1, email=value, alt_email=value), _customer(2, email=value + "x")]
        )
        session.commit()
        indexed = normalize_email(value) is not None
        expected = [1] if indexed else []
        assert expected == _ids(session, Customer.email == variant)
        assert expected == _ids(session, Customer.alt_email == variant)
        stored = session.get(Customer, 1)
        assert (stored.email_bidx is None) == (not indexed)
        if indexed:
            assert stored.email_bidx != stored.alt_email_bidx
            assert [] == _ids(session, Customer.email_bidx == stored.alt_email_bidx)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plus=st.booleans(),
    digits=st.lists(st.text("0123456789", min_size=1, max_size=4), min_size=1, max_size=5),
    separators=st.lists(st.sampled_from(["", " ", "-", ".", "(", ") "]), min_size=5, max_size=5),
)
def test_lookup_finds_any_formatting_of_a_phone_number(
    db: Engine, plus: bool, digits: list[str], separators: list[str]
) -> None:
    """Digits grouped and punctuated in any way find the number stored in compact form."""
    compact = ("+" if plus else "") + "".join(digits)
    formatted = ("+" if plus else "") + "".join(
        group + separators[i] for i, group in enumerate(digits)
    )
    with Session(db) as session:
        session.execute(Customer.__table__.delete())
        session.add(_customer(1, phone=compact))
        session.commit()
        assert [1] == _ids(session, Customer.phone == formatted)


def test_rotating_index_keys_matches_old_and_new_values(db: Engine) -> None:
    """With a new key first, writes use it and lookups still find rows under the old key."""
    old = current_keyring("blind-index")
    with Session(db) as session:
        session.add(_customer(1, email="old@example.com"))
        session.commit()
        sa_fieldcrypt.configure(
            purpose="blind-index",
            keyring=Keyring(
                [Key("b2", generate_key("hmac-sha256"), purpose="blind-index"), *old],
                purpose="blind-index",
            ),
        )
        session.add(_customer(2, email="new@example.com"))
        session.commit()
        assert [1] == _ids(session, Customer.email == "OLD@example.com")
        assert [2] == _ids(session, Customer.email == "NEW@example.com")
        assert [1, 2] == _ids(session, Customer.email.in_(["old@example.com", "new@example.com"]))
        assert "b2" == (session.get(Customer, 2).email_bidx or "").partition(":")[0]


# -- compiled SQL --------------------------------------------------------------------------


def test_equality_compiles_to_the_index_column(keyring: Keyring, index_keyring: Any) -> None:
    """Customer.email == "A@B.com " is email_bidx = <the index of a@b.com>, nothing else."""
    compiled = select(Customer.id).where(Customer.email == "A@B.com ").compile()
    assert "WHERE fc_hyb_customers.email_bidx = :email_bidx_1" == str(compiled).splitlines()[-1]
    expected = _customer(1, email="a@b.com").email_bidx
    assert [expected] == list(compiled.params.values())


def test_two_active_keys_compile_to_in(keyring: Keyring, index_keyring: Keyring) -> None:
    """With two active index keys, == becomes IN over the value's index under each key."""
    sa_fieldcrypt.configure(
        purpose="blind-index",
        keyring=Keyring(
            [Key("b2", generate_key("hmac-sha256"), purpose="blind-index"), *index_keyring],
            purpose="blind-index",
        ),
    )
    compiled = (
        select(Customer.id)
        .where(Customer.email.in_(["a@b.com", "c@d.com"]))
        .compile(dialect=postgresql.dialect(), compile_kwargs={"render_postcompile": True})
    )
    where = str(compiled).splitlines()[-1]
    assert where.startswith("WHERE fc_hyb_customers.email_bidx IN (")
    params = list(compiled.params.values())
    assert 4 == len(params)
    assert ["b2", "b2", "b1", "b1"] == sorted((p.partition(":")[0] for p in params), reverse=True)


def test_null_comparison_compiles_to_is_null_on_the_value() -> None:
    """== None compiles to IS NULL on the encrypted column and needs no key."""
    compiled = str(select(Customer.id).where(Customer.email == None)).splitlines()[-1]  # noqa: E711
    assert "WHERE fc_hyb_customers.email_encrypted IS NULL" == compiled


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Customer.email.like("a%"), "only ==, !=, in_\\(\\) and not_in\\(\\)"),
        (lambda: Customer.email.contains("@"), "no ordering, pattern matching"),
        (lambda: Customer.email < "m", "cannot apply lt"),
        (lambda: Customer.email.desc(), "cannot apply desc_op"),
        (lambda: Customer.phone.between("1", "2"), "phone_bidx"),
        (lambda: Customer.email + "x", "cannot apply add"),
        (lambda: Customer.email == Customer.notes_encrypted, "needs a plaintext Python value"),
        (lambda: Customer.email.in_(select(Customer.email_bidx)), "needs a list"),
        (lambda: Customer.notes.like("x"), "only is_\\(None\\) and is_not\\(None\\) work"),
        (lambda: Customer.email.is_("x@example.com"), "cannot apply is_"),
        (lambda: Customer.phone.is_not("+15550100000"), "cannot apply is_not"),
        (lambda: Customer.notes.is_("x"), "only is_\\(None\\) and is_not\\(None\\) work"),
    ],
)
def test_other_operators_refuse_and_say_why(make: Any, expected: str) -> None:
    """Operators a blind index cannot answer raise UnsupportedComparisonError explaining why."""
    with pytest.raises(UnsupportedComparisonError, match=expected) as info:
        make()
    assert str(info.value).startswith("Customer.")
    assert "x@example.com" not in str(info.value)


@pytest.mark.parametrize(
    "make",
    [lambda: Customer.notes == "x", lambda: Customer.notes.in_(["x"])],
)
def test_comparison_without_index_names_the_missing_index(make: Any) -> None:
    """== or in_() on a hybrid without blind index says which index column to add."""
    with pytest.raises(
        UnsupportedComparisonError, match=r"Customer\.notes has no blind index"
    ) as i:
        make()
    assert "notes_bidx" in str(i.value)


def test_lookup_without_index_key_fails_naming_the_variable(
    keyring: Keyring, no_default_keys: None
) -> None:
    """Building a lookup with no index key configured says which variable to set."""
    with pytest.raises(ConfigurationError, match="FIELDCRYPT_BLIND_INDEX_KEYS"):
        _ = Customer.email == "a@b.com"


# -- declaration errors ----------------------------------------------------------------------


def _declare(**attributes: Any) -> None:
    class Local(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {
        "__tablename__": "things",
        "id": mapped_column(Integer, primary_key=True),
        "__annotations__": {},
        **attributes,
    }
    type("Thing", (Local,), namespace)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"email": encrypted_hybrid("email_encrypted")}, "no mapped column attribute"),
        (
            {
                "email_encrypted": mapped_column(Text),
                "email": encrypted_hybrid("email_encrypted", blind_index="email_bidx"),
            },
            "'email_bidx' \\(the blind-index column\\)",
        ),
        (
            {
                "email_encrypted": mapped_column(Text),
                "email_bidx": mapped_column(String(64)),
                "email": encrypted_hybrid("email_encrypted", blind_index="email_bidx"),
            },
            "at least 97 characters",
        ),
        (
            {
                "_email": mapped_column(EncryptedText()),
                "email": encrypted_hybrid("_email", column_type=EncryptedText()),
            },
            "drop column_type=",
        ),
        (
            {"n": mapped_column(Integer), "number": encrypted_hybrid("n")},
            "must be a string column holding ciphertext",
        ),
        (
            {
                "a": mapped_column(Text),
                "b": mapped_column(Text),
                "bidx": mapped_column(String(BLIND_INDEX_LENGTH)),
                "x": encrypted_hybrid("a", blind_index="bidx"),
                "y": encrypted_hybrid("b", blind_index="bidx"),
            },
            "already the blind index of 'a'",
        ),
    ],
    ids=["no-source", "no-index", "short-index", "double-type", "not-text", "shared-index"],
)
def test_misdeclarations_fail_when_the_class_is_mapped(
    attributes: dict[str, Any], expected: str
) -> None:
    """A hybrid over missing or unsuitable columns fails at class definition, naming them."""
    with pytest.raises(ConfigurationError, match=expected):
        _declare(**attributes)


def test_hybrid_cannot_be_extended_in_place() -> None:
    """.setter() and friends refuse instead of silently dropping the encryption."""
    with pytest.raises(ConfigurationError, match="cannot be extended"):
        Customer.__dict__["email"].setter(lambda self, value: None)


def test_mixin_tables_get_unrelated_index_values(keyring: Keyring, index_keyring: Keyring) -> None:
    """A hybrid declared once on a mixin indexes each table with its own derived key."""

    class Local(DeclarativeBase):
        pass

    class Contact:
        email_encrypted: Mapped[str | None] = mapped_column(Text)
        email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        email = encrypted_hybrid("email_encrypted", blind_index="email_bidx")

    class Lead(Contact, Local):
        __tablename__ = "leads"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Vendor(Contact, Local):
        __tablename__ = "vendors"
        id: Mapped[int] = mapped_column(primary_key=True)

    lead, vendor = Lead(email="a@b.c"), Vendor(email="a@b.c")
    assert ("a@b.c", "a@b.c") == (lead.email, vendor.email)
    assert lead.email_bidx != vendor.email_bidx
    lead_type = Lead.__table__.c.email_encrypted.info[COLUMN_INFO_KEY]
    assert lead_type is not Vendor.__table__.c.email_encrypted.info[COLUMN_INFO_KEY]


def test_per_column_keyring_through_column_type(keyring: Keyring, index_keyring: Keyring) -> None:
    """column_type=EncryptedText(keyring=...) encrypts that column with its own keys."""
    own = Keyring({"own": generate_key()})

    class Local(DeclarativeBase):
        pass

    class Thing(Local):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        secret_encrypted: Mapped[str | None] = mapped_column(Text)
        secret = encrypted_hybrid("secret_encrypted", column_type=EncryptedText(keyring=own))

    thing = Thing(secret="mine")
    assert "own" == inspect_token(thing.secret_encrypted or "").key_id
    assert "mine" == thing.secret


def test_mixin_context_true_binds_each_table_to_its_own_column(
    keyring: Keyring, index_keyring: Keyring
) -> None:
    """column_type=EncryptedText(context=True) on a mixin binds each class to its own column."""

    class Local(DeclarativeBase):
        pass

    class Contact:
        email_encrypted: Mapped[str | None] = mapped_column(Text)
        email = encrypted_hybrid("email_encrypted", column_type=EncryptedText(context=True))

    class Lead(Contact, Local):
        __tablename__ = "bound_leads"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Vendor(Contact, Local):
        __tablename__ = "bound_vendors"
        id: Mapped[int] = mapped_column(primary_key=True)

    lead, vendor = Lead(email="a@b.c"), Vendor(email="a@b.c")
    lead_token, vendor_token = lead.email_encrypted or "", vendor.email_encrypted or ""
    assert b"a@b.c" == decrypt(keyring, lead_token, context="bound_leads.email_encrypted")
    assert b"a@b.c" == decrypt(keyring, vendor_token, context="bound_vendors.email_encrypted")
    vendor.email_encrypted = lead_token
    with pytest.raises(DecryptionError, match=r"bound_vendors\.email_encrypted"):
        vendor.email  # noqa: B018  # the getter decrypts


def _tenant_model(schema: str | None) -> Any:
    """A customers model of its own declarative base, declared in ``schema``."""

    class Local(DeclarativeBase):
        metadata = MetaData(schema=schema)

    class TenantCustomer(Local):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        email_encrypted: Mapped[str | None] = mapped_column(Text)
        email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        email = encrypted_hybrid(
            "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
        )

    return TenantCustomer


def test_the_same_email_in_two_declared_schemas_has_unrelated_index_values(
    keyring: Keyring, index_keyring: Keyring
) -> None:
    """The declared schema is part of the default index name, so tenants' indexes differ."""
    a, b, bare = _tenant_model("tenant_a"), _tenant_model("tenant_b"), _tenant_model(None)
    values = [m(email="ada@example.com").email_bidx for m in (a, b, bare)]
    assert 3 == len(set(values))
    named = BlindIndex(
        "email_bidx", normalizer=normalize_email, name="tenant_a.customers.email_bidx"
    )
    assert named.compute("ada@example.com") == values[0]
    unqualified = BlindIndex("email_bidx", normalizer=normalize_email, name="customers.email_bidx")
    assert unqualified.compute("ada@example.com") == values[2]


def test_contexts_of_a_hybrid_include_the_declared_schema(
    keyring: Keyring, index_keyring: Keyring
) -> None:
    """A token written in one declared schema's table does not decrypt in another's."""
    a, b = _tenant_model("tenant_a"), _tenant_model("tenant_b")
    assert "tenant_a.customers.email_encrypted" == (
        a.__table__.c.email_encrypted.info[COLUMN_INFO_KEY].context
    )
    ada = a(email="ada@example.com")
    token = ada.email_encrypted or ""
    assert b"ada@example.com" == decrypt(
        keyring, token, context="tenant_a.customers.email_encrypted"
    )
    other = b(email="bob@example.com")
    other.email_encrypted, other.email_bidx = token, ada.email_bidx  # a whole value copied
    with pytest.raises(DecryptionError, match=r"tenant_b\.customers\.email_encrypted"):
        other.email  # noqa: B018  # the getter decrypts


def test_a_hybrid_over_a_plain_column_binds_to_it_by_default(
    keyring: Keyring, index_keyring: Keyring
) -> None:
    """The default EncryptedText() of a hybrid binds to its column; context=False opts out."""
    customer = Customer(id=1, station_id=1, email="ada@example.com", alt_email="ada@example.com")
    token = customer.email_encrypted or ""
    assert inspect_token(token).bound
    assert (
        "fc_hyb_customers.email_encrypted"
        == Customer.__table__.c.email_encrypted.info[COLUMN_INFO_KEY].context
    )
    assert b"ada@example.com" == decrypt(keyring, token, context="fc_hyb_customers.email_encrypted")
    customer.email_encrypted = customer.alt_email_encrypted  # copied from the other column
    with pytest.raises(DecryptionError, match=r"fc_hyb_customers\.email_encrypted"):
        customer.email  # noqa: B018  # the getter decrypts

    class Local(DeclarativeBase):
        pass

    class Unbound(Local):
        __tablename__ = "fc_hyb_unbound"
        id: Mapped[int] = mapped_column(primary_key=True)
        email_encrypted: Mapped[str | None] = mapped_column(Text)
        email = encrypted_hybrid("email_encrypted", column_type=EncryptedText(context=False))

    assert not inspect_token(Unbound(email="ada@example.com").email_encrypted or "").bound


LATE_MODELS = """
from sqlalchemy import String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_fieldcrypt import BLIND_INDEX_LENGTH, BlindIndex, encrypted_hybrid


class Base(DeclarativeBase):
    pass


class LateCustomer(Base):
    __tablename__ = "fc_late_customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))


LateCustomer.phone = encrypted_hybrid("phone_encrypted", blind_index=BlindIndex("phone_bidx"))
"""


@pytest.mark.parametrize("spec", ["{module}", "{module}:Base", "{module}:Base.metadata"])
def test_a_hybrid_assigned_after_the_class_body_is_found_by_the_jobs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    """Customer.phone = encrypted_hybrid(...) after the class counts like one in the body."""
    from sa_fieldcrypt.jobs import find_columns, find_indexes

    module = f"fc_late_models_{abs(hash(spec))}"
    (tmp_path / f"{module}.py").write_text(LATE_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = spec.format(module=module)
    if spec.endswith(".metadata"):
        spec = spec.removesuffix("Base.metadata") + "metadata"
        (tmp_path / f"{module}.py").write_text(LATE_MODELS + "\nmetadata = Base.metadata\n")
    assert ["fc_late_customers.phone_encrypted"] == [c.label for c in find_columns(spec)]
    assert ["fc_late_customers.phone_bidx"] == [i.label for i in find_indexes(spec)]


def test_a_hybrid_assigned_after_the_class_body_keeps_its_index_and_names_itself(
    db: Engine,
) -> None:
    """A late hybrid binds when mappers configure: a raw write still updates its index."""

    class LateBase(DeclarativeBase):
        pass

    class Late(LateBase):
        __tablename__ = "fc_hyb_late"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        email_encrypted: Mapped[str | None] = mapped_column(Text)
        email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))

    Late.email = encrypted_hybrid(  # type: ignore[attr-defined]
        "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )
    LateBase.metadata.create_all(db)
    try:
        # A token as the column's own writes bind it (to fc_hyb_late.email_encrypted).
        token = encrypt(
            current_keyring(), b"ada@example.com", context="fc_hyb_late.email_encrypted"
        )
        with Session(db) as session:
            session.add(Late(id=1, email_encrypted=token))  # never touches Late.email
            session.commit()
            found = session.scalars(
                select(Late.id).where(Late.email == "ADA@example.com")  # type: ignore[attr-defined]
            ).all()
            assert [1] == list(found)
        with pytest.raises(UnsupportedComparisonError, match=r"^Late\.email: "):
            _ = Late.email.like("a%")  # type: ignore[attr-defined]
    finally:
        LateBase.metadata.drop_all(db)


def _swap_in(db: Engine, column: str, from_id: int, to_id: int) -> None:
    """As an attacker with write access and no keys: copy one row's ciphertext into another."""
    table = Customer.__table__
    with db.begin() as conn:
        token = conn.execute(select(table.c[column]).where(table.c.id == from_id)).scalar_one()
        conn.execute(update(table).where(table.c.id == to_id).values({column: token}))


@pytest.mark.parametrize(
    ("attribute", "column", "values"),
    [
        ("email", "email_encrypted", ("alice@example.com", "mallory@evil.test")),
        ("phone", "phone_encrypted", ("+15550100001", "+15550100666")),
    ],
)
def test_a_value_swapped_in_from_another_row_is_refused(
    db: Engine, attribute: str, column: str, values: tuple[str, str]
) -> None:
    """A lookup by Alice's value finds her row; its copied-in value then raises, naming both."""
    alice, mallory = values
    with Session(db) as session:
        session.add_all(
            [
                Customer(id=1, station_id=1, **{attribute: alice}),
                Customer(id=2, station_id=1, **{attribute: mallory}),
            ]
        )
        session.commit()
    _swap_in(db, column, from_id=2, to_id=1)
    with Session(db) as session:
        found = session.scalars(select(Customer).where(getattr(Customer, attribute) == alice)).one()
        assert 1 == found.id
        with pytest.raises(DecryptionError) as info:
            getattr(found, attribute)
    message = str(info.value)
    assert f"fc_hyb_customers.{column}" in message
    assert "altered" in message
    assert f"fc_hyb_customers.{attribute}_bidx" in message
    assert mallory not in message
    assert alice not in message


def _count_index_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stored index values checked from now on, one per HMAC (``BlindIndex.matches``)."""
    calls: list[str] = []
    original = BlindIndex.matches

    def counting(self: BlindIndex, value: Any, stored: str) -> bool | None:
        calls.append(stored)
        return original(self, value, stored)

    monkeypatch.setattr(BlindIndex, "matches", counting)
    return calls


def test_the_index_check_costs_one_hmac_per_stored_value(
    db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the attribute again checks nothing again; a changed stored value is checked anew."""
    with Session(db) as session:
        session.add(Customer(id=1, station_id=1, email="ada@example.com"))
        session.commit()
    calls = _count_index_checks(monkeypatch)
    with Session(db) as session:
        customer = session.get(Customer, 1)
        assert ["ada@example.com"] * 3 == [customer.email for _ in range(3)]
        assert 1 == len(calls)
        customer.email = "bo@example.com"  # the setter computed the index: nothing to check
        assert "bo@example.com" == customer.email
        assert 1 == len(calls)


def test_rows_without_an_index_value_or_under_a_retired_index_key_still_read(
    db: Engine, index_keyring: Keyring
) -> None:
    """A NULL index (not backfilled yet) or one under a key no longer held is not checked."""
    with Session(db) as session:
        session.add_all(
            [
                Customer(id=1, station_id=1, email="ada@example.com"),
                Customer(id=2, station_id=1, email="bo@example.com"),
            ]
        )
        session.commit()
    table = Customer.__table__
    with db.begin() as conn:
        conn.execute(update(table).where(table.c.id == 1).values(email_bidx=None))
        conn.execute(update(table).where(table.c.id == 2).values(email_bidx="gone:" + "0" * 64))
    with Session(db) as session:
        assert "ada@example.com" == session.get(Customer, 1).email
        assert "bo@example.com" == session.get(Customer, 2).email


def test_check_index_false_reads_a_swapped_value(db: Engine) -> None:
    """With check_index=False (while a normalizer change awaits reindex) nothing is checked."""

    class Unchecked(DeclarativeBase):
        pass

    class Lax(Unchecked):
        __tablename__ = "fc_hyb_customers"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        email_encrypted: Mapped[str | None] = mapped_column(Text)
        email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        email = encrypted_hybrid(
            "email_encrypted",
            blind_index=BlindIndex("email_bidx", normalizer=normalize_email),
            check_index=False,
        )

    with Session(db) as session:
        session.add_all(
            [
                Customer(id=1, station_id=1, email="alice@example.com"),
                Customer(id=2, station_id=1, email="mallory@evil.test"),
            ]
        )
        session.commit()
    _swap_in(db, "email_encrypted", from_id=2, to_id=1)
    with Session(db) as session:
        assert "mallory@evil.test" == session.get(Lax, 1).email


def test_a_token_written_to_the_source_attribute_reindexes_without_a_check(db: Engine) -> None:
    """customer.email_encrypted = token is a write, not a swap: the flush recomputes the index."""
    with Session(db) as session:
        session.add_all(
            [
                Customer(id=1, station_id=1, email="ada@example.com"),
                Customer(id=2, station_id=2, email="bo@example.com"),
            ]
        )
        session.commit()
        ada, bo = session.get(Customer, 1), session.get(Customer, 2)
        ada.email_encrypted = bo.email_encrypted
        session.commit()
        found = session.scalars(select(Customer.id).where(Customer.email == "bo@example.com"))
        assert [1, 2] == sorted(found)


def test_pickled_objects_carry_no_plaintext_of_a_hybrid(db: Engine) -> None:
    """A pickled ORM object holds the ciphertext only; unpickled, it decrypts again."""
    with Session(db) as session:
        session.add(Customer(id=1, station_id=1, email="secret-ada@example.com"))
        session.commit()
        customer = session.get(Customer, 1)
        assert "secret-ada@example.com" == customer.email  # cached on the instance now
        session.expunge(customer)
    pickled = pickle.dumps(customer)
    assert b"secret-ada" not in pickled
    assert "secret-ada@example.com" == pickle.loads(pickled).email


# -- typed values ----------------------------------------------------------------------------


class TypedBase(DeclarativeBase):
    pass


class Member(TypedBase):
    """Typed values in plain Text columns holding ciphertext, each with a blind index."""

    __tablename__ = "fc_hyb_members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    born_encrypted: Mapped[str | None] = mapped_column(Text)
    born_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    born = encrypted_hybrid(
        "born_encrypted",
        column_type=EncryptedDate(),
        blind_index=BlindIndex("born_bidx", normalizer=typed_normalizer(date)),
    )
    seen_encrypted: Mapped[str | None] = mapped_column(Text)
    seen_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    seen_at = encrypted_hybrid(
        "seen_encrypted",
        column_type=EncryptedDateTime(),
        blind_index=BlindIndex("seen_bidx", normalizer=typed_normalizer(datetime)),
    )
    calls_encrypted: Mapped[str | None] = mapped_column(Text)
    calls_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    calls_at = encrypted_hybrid(
        "calls_encrypted",
        column_type=EncryptedTime(),
        blind_index=BlindIndex("calls_bidx", normalizer=typed_normalizer(time)),
    )
    balance_encrypted: Mapped[str | None] = mapped_column(Text)
    balance_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    balance = encrypted_hybrid(
        "balance_encrypted",
        column_type=EncryptedDecimal(),
        blind_index=BlindIndex("balance_bidx", normalizer=typed_normalizer(Decimal)),
    )
    score_encrypted: Mapped[str | None] = mapped_column(Text)
    score_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    score = encrypted_hybrid(
        "score_encrypted",
        column_type=EncryptedFloat(),
        blind_index=BlindIndex("score_bidx", normalizer=typed_normalizer(float)),
    )
    points_encrypted: Mapped[str | None] = mapped_column(Text)
    points_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    points = encrypted_hybrid(
        "points_encrypted",
        column_type=EncryptedInteger(),
        blind_index=BlindIndex("points_bidx", normalizer=typed_normalizer(int)),
    )
    ref_encrypted: Mapped[str | None] = mapped_column(Text)
    ref_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    ref = encrypted_hybrid(
        "ref_encrypted",
        column_type=EncryptedUUID(),
        blind_index=BlindIndex("ref_bidx", normalizer=typed_normalizer(uuid.UUID)),
    )
    verified_encrypted: Mapped[str | None] = mapped_column(Text)
    verified = encrypted_hybrid("verified_encrypted", column_type=EncryptedBoolean())


PARIS_SUMMER = timezone(timedelta(hours=2))
HUGE = 7**20_000  # 16,902 decimal digits


@pytest.fixture
def typed_db(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    """The members table on each database."""
    TypedBase.metadata.drop_all(engine)
    TypedBase.metadata.create_all(engine)
    yield engine
    TypedBase.metadata.drop_all(engine)


def _member_ids(session: Session, condition: Any) -> list[int]:
    return list(session.scalars(select(Member.id).where(condition).order_by(Member.id)))


def test_typed_hybrids_read_their_values_exactly(typed_db: Engine) -> None:
    """Each hybrid over a ciphertext column reads back its value of its own type."""
    values = {
        "born": date(1815, 12, 10),
        "seen_at": datetime(1843, 7, 1, 12, 30, tzinfo=PARIS_SUMMER),
        "calls_at": time(23, 59, 59, 999999),
        "balance": Decimal("1.00"),
        "score": -0.0,
        "points": HUGE,
        "ref": uuid.UUID("f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
        "verified": False,
    }
    with Session(typed_db) as session:
        session.add(Member(id=1, **values))
        session.commit()
    with Session(typed_db) as session:
        member = session.get(Member, 1)
        read = {name: getattr(member, name) for name in values}
    assert values == read
    assert [type(v) for v in values.values()] == [type(v) for v in read.values()]
    assert ("1.00", "-0.0", PARIS_SUMMER) == (
        str(read["balance"]),
        str(read["score"]),
        read["seen_at"].tzinfo,
    )


def test_a_date_is_found_through_its_blind_index(typed_db: Engine) -> None:
    """Member.born == date(...) and in_() compare the date's index, computed from its ISO form."""
    with Session(typed_db) as session:
        session.add_all(
            [
                Member(id=1, born=date(1815, 12, 10)),
                Member(id=2, born=date(1906, 12, 9)),
                Member(id=3, born=None),
            ]
        )
        session.commit()
        assert [1] == _member_ids(session, Member.born == date(1815, 12, 10))
        assert [1, 2] == _member_ids(
            session, Member.born.in_([date(1815, 12, 10), date(1906, 12, 9)])
        )
        assert [2] == _member_ids(session, Member.born != date(1815, 12, 10))
        assert [3] == _member_ids(session, Member.born.is_(None))
        with pytest.raises(ValueTypeError, match="expects date, got datetime"):
            select(Member).where(Member.born == datetime(1815, 12, 10))


def test_a_time_is_found_through_its_blind_index(typed_db: Engine) -> None:
    """Member.calls_at == time(...) compares the time's index; a datetime is refused there."""
    with Session(typed_db) as session:
        session.add_all([Member(id=1, calls_at=time(9, 30)), Member(id=2, calls_at=time(18))])
        session.commit()
        assert [1] == _member_ids(session, Member.calls_at == time(9, 30))
        assert [1, 2] == _member_ids(session, Member.calls_at.in_([time(9, 30), time(18)]))
        assert [] == _member_ids(session, Member.calls_at == time(9, 30, 0, 1))
        with pytest.raises(ValueTypeError, match="expects time, got datetime"):
            select(Member).where(Member.calls_at == datetime(2024, 7, 1, 9, 30))


def test_typed_lookups_find_the_values_python_calls_equal(typed_db: Engine) -> None:
    """Decimal 1.0 finds 1.00, 0.0 finds -0.0, an instant is found at any offset."""
    moment = datetime(2024, 7, 1, 12, tzinfo=PARIS_SUMMER)
    with Session(typed_db) as session:
        session.add_all(
            [
                Member(id=1, balance=Decimal("1.00"), score=-0.0, seen_at=moment, points=HUGE),
                Member(
                    id=2, balance=Decimal("1.01"), score=5e-324, seen_at=moment.replace(hour=13)
                ),
            ]
        )
        session.commit()
        assert [1] == _member_ids(session, Member.balance == Decimal("1.0"))
        assert [1] == _member_ids(session, Member.balance == Decimal("100E-2"))
        assert [1] == _member_ids(session, Member.score == 0.0)
        assert [2] == _member_ids(session, Member.score == 5e-324)
        assert [1] == _member_ids(session, Member.seen_at == datetime(2024, 7, 1, 10, tzinfo=UTC))
        assert [1] == _member_ids(session, Member.points == HUGE)
        assert [] == _member_ids(session, Member.points == HUGE + 1)
        # What was stored is read back as stored, whatever value found it.
        member = session.get(Member, 1)
        assert ("1.00", PARIS_SUMMER) == (str(member.balance), member.seen_at.tzinfo)


def test_a_nan_is_not_indexed_and_matches_nothing(typed_db: Engine) -> None:
    """A NaN float or Decimal stores a NULL index, so == NaN finds no row, as NaN != NaN."""
    with Session(typed_db) as session:
        session.add(Member(id=1, score=math.nan, balance=Decimal("sNaN")))
        session.commit()
        assert [] == _member_ids(session, Member.score == math.nan)
        assert [] == _member_ids(session, Member.balance == Decimal("NaN"))
        member = session.get(Member, 1)
        assert (None, None) == (member.score_bidx, member.balance_bidx)
        assert math.isnan(member.score)
        assert member.balance.is_snan()


def test_a_typed_value_is_decrypted_once_per_stored_value(typed_db: Engine) -> None:
    """A hybrid keeps a typed value decrypted: reading it again decrypts nothing."""
    with Session(typed_db) as session:
        session.add(
            Member(id=1, born=date(1815, 12, 10), calls_at=time(9, 30), points=42, ref=uuid.uuid4())
        )
        session.commit()
    with Session(typed_db) as session:
        member = session.get(Member, 1)
        before = sum(metrics.snapshot().decrypts.values())
        first = (member.born, member.calls_at, member.points, member.ref)
        after_first = sum(metrics.snapshot().decrypts.values())
        again = [(member.born, member.calls_at, member.points, member.ref) for _ in range(3)]
        assert [first] * 3 == again
        assert (4, after_first) == (after_first - before, sum(metrics.snapshot().decrypts.values()))


def test_a_typed_hybrid_refuses_a_wrong_type_naming_its_column(typed_db: Engine) -> None:
    """Assigning a str to a date hybrid raises ValueTypeError naming the ciphertext column."""
    member = Member(id=1)
    with pytest.raises(ValueTypeError) as info:
        member.born = "1815-12-10"  # type: ignore[assignment]
    assert str(info.value).startswith("fc_hyb_members.born_encrypted: EncryptedDate stores date")
    assert "1815" not in str(info.value)


# -- several indexes, transforms and truncated indexes ---------------------------------------


class SearchBase(DeclarativeBase):
    pass


class Contact(SearchBase):
    """Full-size and 4-bit indexes, of whole values and of parts of them."""

    __tablename__ = "fc_hyb_contacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_last4: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_last4_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "phone_encrypted",
        blind_index=[
            BlindIndex("phone_bidx", normalizer=normalize_phone),
            BlindIndex("phone_last4", normalizer=last_digits(4)),
            BlindIndex("phone_last4_tiny", normalizer=last_digits(4), bits=4),
        ],
    )
    # Only a truncated index of whole values: == itself finds candidates, then filters.
    _email: Mapped[str | None] = mapped_column("email_encrypted", EncryptedText())
    email_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email_host: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email_host_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "_email",
        blind_index=[
            BlindIndex("email_tiny", normalizer=normalize_email, bits=4),
            BlindIndex("email_host", normalizer=email_domain),
            BlindIndex("email_host_tiny", normalizer=email_domain, bits=4),
        ],
    )


DOMAINS = ["example.com", "example.org", "mail.test", "a.example"]
# Few digits, so that random phones share their last four often.
PHONE_SHAPES = r"\+?[01]{0,3}[ -]?[0-9]{0,3}[ -]?[01]{0,5}"


@pytest.fixture
def search_db(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    SearchBase.metadata.drop_all(engine)
    SearchBase.metadata.create_all(engine)
    yield engine
    SearchBase.metadata.drop_all(engine)


def _contacts(count: int) -> dict[int, tuple[str | None, str | None]]:
    """Deterministic data: phones with few distinct endings, emails over a few domains."""
    rows: dict[int, tuple[str | None, str | None]] = {}
    for i in range(count):
        ending = ["0000", "1234", "0100", f"{i % 97:04d}"][i % 4]
        phone = None if i % 11 == 0 else f"+1 (555) {i % 1000:03d}-{ending}"
        email = None if i % 13 == 0 else f"User{i % 40}@{DOMAINS[i % len(DOMAINS)].upper()}"
        rows[i] = (phone, email)
    return rows


def _store(engine: Engine, rows: dict[int, tuple[str | None, str | None]]) -> None:
    with Session(engine) as session:
        session.execute(SearchBase.metadata.tables["fc_hyb_contacts"].delete())
        session.add_all(Contact(id=i, phone=p, email=e) for i, (p, e) in rows.items())
        session.commit()


def _found(session: Session, condition: Any) -> list[int]:
    return sorted(c.id for c in session.scalars(select(Contact).where(condition)))


def _last4(phone: str | None) -> str | None:
    return None if phone is None else last_digits(4)(phone)


def _domain(email: str | None) -> str | None:
    return None if email is None else email_domain(email)


def test_phone_ends_in_0000_finds_exactly_those_rows(search_db: Engine) -> None:
    """Full-size and 4-bit indexes of the last four digits find what a plaintext scan finds."""
    rows = _contacts(300)
    _store(search_db, rows)
    expected = sorted(i for i, (phone, _) in rows.items() if _last4(phone) == "0000")
    with Session(search_db) as session:
        assert expected == _found(session, Contact.phone.index("phone_last4") == "0000")
        assert expected == _found(session, Contact.phone.index("phone_last4_tiny") == "0000")
        # Exact for the database too: a full-size index needs no filtering, columns-only works.
        by_column = session.scalars(
            select(Contact.id).where(Contact.phone.index("phone_last4") == "0000")
        )
        assert expected == sorted(by_column)
        # The 4-bit index really finds candidates that are not matches: with more distinct
        # endings than its 16 values, two endings share a value whatever the key.
        endings = {_last4(p) for p, _ in rows.values()} - {None}
        assert len(endings) > 16
        candidates = matches = 0
        with search_db.connect() as conn:
            for ending in endings:
                tiny = Contact.phone.index("phone_last4_tiny") == ending
                candidates += conn.execute(
                    select(func.count()).select_from(Contact.__table__).where(tiny.clause)
                ).scalar_one()
                matches += sum(1 for p, _ in rows.values() if _last4(p) == ending)
        assert candidates > matches


def test_domain_and_truncated_equality_find_exactly_the_plaintext_rows(search_db: Engine) -> None:
    """email_domain lookups, and == through a 4-bit index, return exactly the matching rows."""
    rows = _contacts(200)
    _store(search_db, rows)
    with Session(search_db) as session:
        for domain in DOMAINS:
            expected = sorted(i for i, (_, e) in rows.items() if _domain(e) == domain)
            term = domain.title()
            assert expected == _found(session, Contact.email.index("email_host") == term)
            assert expected == _found(session, Contact.email.index("email_host_tiny") == term)
        wanted = ["user7@example.org", "USER3@a.example ", "nobody@example.com"]
        normalized = {normalize_email(w) for w in wanted}
        expected = sorted(i for i, (_, e) in rows.items() if e and normalize_email(e) in normalized)
        assert expected
        assert expected == _found(session, Contact.email.in_(wanted))
        one = "user7@example.org"
        first = sorted(i for i, (_, e) in rows.items() if e and normalize_email(e) == one)
        assert first == _found(session, Contact.email == "User7@Example.org")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    phones=st.lists(
        st.one_of(st.none(), st.from_regex(PHONE_SHAPES, fullmatch=True)),
        max_size=40,
    ),
    domains=st.lists(st.sampled_from([*DOMAINS, "EXAMPLE.com.", "x"]), min_size=40, max_size=40),
    data=st.data(),
)
def test_random_data_queries_match_a_plaintext_model(
    search_db: Engine, phones: list[str | None], domains: list[str], data: st.DataObject
) -> None:
    """On random rows, every kind of index lookup returns the rows the plaintext model says."""
    rows = {
        i: (phone, None if domains[i] == "x" else f"u{i % 3}@{domains[i]}")
        for i, phone in enumerate(phones)
    }
    _store(search_db, rows)
    endings = [_last4(p) for p, _ in rows.values() if _last4(p)] + ["0000", "9999"]
    ending = data.draw(st.sampled_from(endings), label="ending")
    domain = data.draw(st.sampled_from(DOMAINS), label="domain")
    with Session(search_db) as session:
        for index in ("phone_last4", "phone_last4_tiny"):
            expected = sorted(i for i, (p, _) in rows.items() if _last4(p) == ending)
            assert expected == _found(session, Contact.phone.index(index) == ending)
            pair = {ending, "1234"}
            expected = sorted(i for i, (p, _) in rows.items() if _last4(p) in pair)
            assert expected == _found(session, Contact.phone.index(index).in_(sorted(pair)))
        for index in ("email_host", "email_host_tiny"):
            expected = sorted(i for i, (_, e) in rows.items() if _domain(e) == domain)
            assert expected == _found(session, Contact.email.index(index) == domain)
        email = f"U1@{domain}"
        expected = sorted(
            i for i, (_, e) in rows.items() if e and normalize_email(e) == normalize_email(email)
        )
        assert expected == _found(session, Contact.email == email)


def test_a_full_size_derived_index_is_exact_for_not_equal(search_db: Engine) -> None:
    """!= and not_in() on a full-size index of part of the value run in SQL, exactly."""
    rows = _contacts(60)
    _store(search_db, rows)
    with Session(search_db) as session:
        expected = sorted(i for i, (p, _) in rows.items() if _last4(p) not in (None, "0000"))
        assert expected == _found(session, Contact.phone.index("phone_last4") != "0000")
        assert expected == _found(session, Contact.phone.index("phone_last4").not_in(["0000"]))


def test_filtering_works_for_aliases_joins_get_and_legacy_queries(search_db: Engine) -> None:
    """Filtering keeps exact matches for aliased and joined entities and Query; get is untouched."""
    rows = _contacts(120)
    _store(search_db, rows)
    expected = sorted(i for i, (p, _) in rows.items() if _last4(p) == "0000")
    with Session(search_db) as session:
        other = aliased(Contact)
        joined = session.execute(
            select(Contact, other)
            .join(other, other.id == Contact.id)
            .where(other.phone.index("phone_last4_tiny") == "0000")
        ).all()
        assert expected == sorted(o.id for _, o in joined)
        assert all(c.id == o.id for c, o in joined)
        legacy = session.query(Contact).filter(Contact.phone.index("phone_last4_tiny") == "0000")
        assert expected == sorted(c.id for c in legacy)
        both = (Contact.phone.index("phone_last4_tiny") == "0000") & (
            Contact.email.index("email_host_tiny") == "example.com"
        )
        assert sorted(
            i for i, (p, e) in rows.items() if _last4(p) == "0000" and _domain(e) == "example.com"
        ) == _found(session, both)
        assert session.get(Contact, expected[0]) is not None


@pytest.mark.parametrize(
    "statement",
    [
        lambda tiny: select(Contact.id).where(tiny),
        lambda tiny: select(func.count()).select_from(Contact).where(tiny),
        lambda tiny: select(Contact).where(tiny | (Contact.id == 1)),
        lambda tiny: select(Contact).where(tiny).limit(5),
        lambda tiny: select(Contact).where(tiny).group_by(Contact.id),
        lambda tiny: union(select(Contact.id).where(tiny), select(Contact.id)),
        lambda tiny: select(Contact).where(Contact.id.in_(select(Contact.id).where(tiny))),
        lambda tiny: update(Contact).where(tiny).values(phone_bidx=None),
        lambda tiny: Contact.__table__.delete().where(tiny),
    ],
    ids=["columns", "count", "or", "limit", "group", "union", "subquery", "update", "delete"],
)
def test_statements_that_cannot_be_filtered_exactly_are_refused(
    search_db: Engine, statement: Any
) -> None:
    """A truncated index's candidates are never returned or changed as if they were matches."""
    _store(search_db, _contacts(20))
    tiny = Contact.phone.index("phone_last4_tiny") == "0000"
    with Session(search_db) as session, pytest.raises(UnsupportedComparisonError):
        session.execute(statement(tiny))


def test_core_statements_with_truncated_conditions_are_refused(search_db: Engine) -> None:
    """Outside a Session nothing filters candidates, so the statement refuses to run."""
    tiny = Contact.phone.index("phone_last4_tiny") == "0000"
    with search_db.connect() as conn, pytest.raises(UnsupportedComparisonError, match="Core"):
        conn.execute(select(Contact.__table__).where(tiny))


def test_negated_truncated_comparisons_refuse_at_once(index_keyring: Keyring) -> None:
    """!=, not_in() and NOT of a truncated index refuse when the statement is built."""
    tiny = Contact.phone.index("phone_last4_tiny")
    with pytest.raises(UnsupportedComparisonError, match="truncated"):
        _ = tiny != "0000"
    with pytest.raises(UnsupportedComparisonError, match="truncated"):
        tiny.not_in(["0000"])
    with pytest.raises(UnsupportedComparisonError, match="truncated"):
        _ = ~(tiny == "0000")
    with pytest.raises(UnsupportedComparisonError, match="truncated"):
        _ = Contact.email != "a@example.com"


def test_index_lookups_by_column_and_their_errors(index_keyring: Keyring) -> None:
    """index() names an index column; an unknown one, None and SQL terms are refused."""
    with pytest.raises(ConfigurationError, match="'phone_last4', 'phone_last4_tiny'"):
        Contact.phone.index("phone_last5")
    with pytest.raises(UnsupportedComparisonError, match="is_"):
        _ = Contact.phone.index("phone_last4") == None  # noqa: E711
    with pytest.raises(UnsupportedComparisonError, match="plaintext Python value"):
        _ = Contact.phone.index("phone_last4") == Contact.phone_bidx
    last4 = Contact.phone.index("phone_last4")
    assert "IndexComparator('fc_hyb_contacts.phone_last4')" == repr(last4)


def test_a_term_that_is_not_indexable_matches_nothing(search_db: Engine) -> None:
    """A term of the wrong shape (five digits for last four) matches no row."""
    _store(search_db, _contacts(20))
    with Session(search_db) as session:
        assert [] == _found(session, Contact.phone.index("phone_last4") == "10000")
        assert [] == _found(session, Contact.phone.index("phone_last4_tiny") == "000")


def test_only_derived_indexes_do_not_answer_equality() -> None:
    """== on an attribute whose indexes are all of parts of it says to use index()."""

    class Only(DeclarativeBase):
        pass

    class Person(Only):
        __tablename__ = "fc_hyb_only_derived"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        phone_encrypted: Mapped[str | None] = mapped_column(Text)
        phone_last4: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        phone = encrypted_hybrid(
            "phone_encrypted", blind_index=BlindIndex("phone_last4", normalizer=last_digits(4))
        )

    with pytest.raises(UnsupportedComparisonError, match=r"phone.index\('phone_last4'\)"):
        _ = Person.phone == "+15550100000"


@pytest.mark.parametrize(
    "table_args",
    [
        (UniqueConstraint("phone_tiny", name="uq_fc_hyb_tiny"),),
        (Index("ix_fc_hyb_tiny", "id", "phone_tiny", unique=True),),
    ],
    ids=["constraint", "index"],
)
def test_a_truncated_index_in_a_unique_constraint_is_refused(table_args: Any) -> None:
    """Binding a truncated index to a column under a unique constraint or index fails clearly."""

    class Unique(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=r"unique constraint or index.*drop bits="):

        class Person(Unique):
            __tablename__ = "fc_hyb_unique_tiny"
            __table_args__ = table_args
            id: Mapped[int] = mapped_column(Integer, primary_key=True)
            phone_encrypted: Mapped[str | None] = mapped_column(Text)
            phone_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
            phone = encrypted_hybrid(
                "phone_encrypted", blind_index=BlindIndex("phone_tiny", bits=16)
            )


def test_two_indexes_in_one_column_are_refused() -> None:
    """Each index of an attribute needs a column of its own."""
    with pytest.raises(ConfigurationError, match="phone_bidx is given twice"):
        encrypted_hybrid("phone_encrypted", blind_index=["phone_bidx", BlindIndex("phone_bidx")])


def test_every_index_is_written_and_checked_on_read(search_db: Engine) -> None:
    """Assignment fills every index column, and each one detects a value copied from a row."""
    with Session(search_db) as session:
        session.add_all(
            [Contact(id=1, phone="+1 555 010 0000"), Contact(id=2, phone="+1 555 010 1234")]
        )
        session.commit()
        first = session.get(Contact, 1)
        assert first is not None
        assert all(
            v is not None for v in (first.phone_bidx, first.phone_last4, first.phone_last4_tiny)
        )
        assert first.phone_last4_tiny.startswith("b1:")
        assert len("b1:") + 1 == len(first.phone_last4_tiny)
    for kept in ("phone_last4", "phone_last4_tiny"):
        others = {"phone_bidx", "phone_last4", "phone_last4_tiny"} - {kept}
        with Session(search_db) as session:
            session.merge(Contact(id=2, phone="+1 555 010 1234"))
            session.commit()
        with search_db.begin() as conn:
            table = Contact.__table__
            token = conn.execute(select(table.c.phone_encrypted).where(table.c.id == 1)).scalar()
            conn.execute(
                update(table)
                .where(table.c.id == 2)
                .values(phone_encrypted=token, **dict.fromkeys(others))
            )
        with Session(search_db) as session:
            second = session.get(Contact, 2)
            assert second is not None
            if kept == "phone_last4_tiny" and second.phone_last4_tiny == first.phone_last4_tiny:
                continue  # one chance in 16 that 4 bits cannot tell the two apart
            with pytest.raises(DecryptionError, match="does not match the row's blind index"):
                _ = second.phone


class Person(SearchBase):
    """Compound indexes: initial and surname (full size); SMS consent and last four (4 bits)."""

    __tablename__ = "fc_hyb_people"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_encrypted: Mapped[str | None] = mapped_column(Text)
    first_name = encrypted_hybrid("first_encrypted")
    _last_name: Mapped[str | None] = mapped_column("last_encrypted", EncryptedText())
    last_name = encrypted_hybrid("_last_name")
    consent_sms: Mapped[bool] = mapped_column(default=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone = encrypted_hybrid("phone_encrypted")
    initial_surname_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    sms_last4_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    initial_surname = compound_index(
        BlindIndex(
            "initial_surname_bidx",
            normalizer=compound(first_name=first_chars(1), last_name=letters_lower),
        )
    )
    sms_last4 = compound_index(
        BlindIndex(
            "sms_last4_bidx", normalizer=compound(consent_sms=None, phone=last_digits(4)), bits=4
        )
    )


SURNAMES = ["Lovelace", "Love-lace", "Hopper", "Turing", "O'Brien"]
FIRST_NAMES = ["Ada", "alan", "Grace", "Grete", "", None]
Folk = tuple[str | None, str | None, bool, str | None]


def _store_people(engine: Engine, rows: dict[int, Folk]) -> None:
    with Session(engine) as session:
        session.execute(SearchBase.metadata.tables["fc_hyb_people"].delete())
        session.add_all(
            Person(id=i, first_name=f, last_name=s, consent_sms=c, phone=p)
            for i, (f, s, c, p) in rows.items()
        )
        session.commit()


def _people(session: Session, condition: Any) -> list[int]:
    return sorted(p.id for p in session.scalars(select(Person).where(condition)))


def _initial_surname(first: str | None, last: str | None) -> tuple[str, str] | None:
    if first is None or last is None:
        return None
    initial, surname = first_chars(1)(first), letters_lower(last)
    return None if initial is None or surname is None else (initial, surname)


#: A person's parts, as the property tests draw them.
FOLK = st.tuples(
    st.sampled_from(FIRST_NAMES),
    st.sampled_from([*SURNAMES, None]),
    st.booleans(),
    st.one_of(st.none(), st.from_regex(PHONE_SHAPES, fullmatch=True)),
)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.lists(
        FOLK,
        max_size=40,
    ),
    data=st.data(),
)
def test_compound_lookups_match_a_plaintext_model(
    search_db: Engine, rows: list[Folk], data: st.DataObject
) -> None:
    """Compound lookups, full-size and 4-bit, return the rows the plaintext model says."""
    people = dict(enumerate(rows))
    _store_people(search_db, people)
    initial = data.draw(st.sampled_from(["a", "G", "z"]), label="initial")
    surname = data.draw(st.sampled_from(SURNAMES), label="surname")
    endings = [_last4(p) for *_, p in people.values() if _last4(p)] + ["0000"]
    ending = data.draw(st.sampled_from(endings), label="ending")
    term = (initial.lower(), letters_lower(surname))
    with Session(search_db) as session:
        expected = sorted(i for i, (f, s, _, _) in people.items() if _initial_surname(f, s) == term)
        assert expected == _people(session, Person.initial_surname == (initial, surname))
        expected = sorted(i for i, (_, _, c, p) in people.items() if c and _last4(p) == ending)
        assert expected == _people(session, Person.sms_last4 == (True, ending))
        pairs = [(True, ending), (False, "0000")]
        expected = sorted(
            i for i, (_, _, c, p) in people.items() if (c, _last4(p)) in pairs and _last4(p)
        )
        assert expected == _people(session, Person.sms_last4.in_(pairs))


def test_a_4_bit_compound_index_finds_candidates_and_returns_matches(search_db: Engine) -> None:
    """Over 300 rows a 4-bit compound index has false positives; results are still exact."""
    people: dict[int, Folk] = {
        i: (FIRST_NAMES[i % 4], SURNAMES[i % 5], i % 3 == 0, f"+1 555 {i:04d} {i % 50:04d}")
        for i in range(300)
    }
    _store_people(search_db, people)
    expected = sorted(i for i, (_, _, c, p) in people.items() if c and _last4(p) == "0007")
    tiny = Person.sms_last4 == (True, "0007")
    with Session(search_db) as session:
        assert expected == _people(session, tiny)
        with search_db.connect() as conn:
            candidates = conn.execute(
                select(func.count()).select_from(Person.__table__).where(tiny.clause)
            ).scalar_one()
        assert candidates > len(expected)
        with pytest.raises(UnsupportedComparisonError):
            session.scalars(select(Person.id).where(tiny)).all()


def test_a_compound_part_left_to_its_column_default_is_indexed(search_db: Engine) -> None:
    """consent_sms defaults to False: a person created without it is found with False."""
    with Session(search_db) as session:
        session.execute(SearchBase.metadata.tables["fc_hyb_people"].delete())
        session.add(Person(id=1, phone="+1 555 010 1234"))
        session.commit()
    with Session(search_db) as session:
        assert [1] == [
            p.id for p in session.scalars(select(Person).where(Person.sms_last4 == (False, "1234")))
        ]
        assert [] == list(session.scalars(select(Person).where(Person.sms_last4 == (True, "1234"))))


def test_a_compound_index_follows_changes_to_any_part(search_db: Engine) -> None:
    """Changing an encrypted or a plain part at flush recomputes the compound index."""
    _store_people(search_db, {1: ("Ada", "Lovelace", False, "+1 555 010 0000")})
    with Session(search_db) as session:
        assert [] == _people(session, Person.sms_last4 == (True, "0000"))
        person = session.get(Person, 1)
        assert person is not None
        person.consent_sms = True
        session.commit()
        assert [1] == _people(session, Person.sms_last4 == (True, "0000"))
        person.phone = "+1 555 010 1234"
        person.last_name = "Hopper"
        session.commit()
        assert [1] == _people(session, Person.sms_last4 == (True, "1234"))
        assert [1] == _people(session, Person.initial_surname == ("A", "hopper"))
        assert [] == _people(session, Person.initial_surname == ("A", "Lovelace"))
        assert person.initial_surname == person.initial_surname_bidx


def test_compound_index_declarations_are_checked() -> None:
    """A compound index needs a compound normalizer, and parts that are model attributes."""
    with pytest.raises(ConfigurationError, match="normalizer is compound"):
        compound_index(BlindIndex("name_bidx", normalizer=letters_lower))

    class Checked(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match="compound part 'nickname'"):

        class Nobody(Checked):
            __tablename__ = "fc_hyb_nobody"
            id: Mapped[int] = mapped_column(Integer, primary_key=True)
            name_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
            name = compound_index(BlindIndex("name_bidx", normalizer=compound(nickname=None)))


def test_hybrids_and_compound_indexes_refuse_classes_that_are_not_mapped() -> None:
    """On a class that is not mapped, either descriptor says it works on mapped classes only."""

    class Plain:
        email = encrypted_hybrid("email_encrypted")
        name = compound_index(BlindIndex("name_bidx", normalizer=compound(email=None)))

    hybrid = r"^Plain\.email: encrypted_hybrid works on mapped classes only$"
    with pytest.raises(ConfigurationError, match=hybrid):
        _ = Plain().email
    with pytest.raises(ConfigurationError, match=hybrid):
        _ = Plain.email == "ada@example.com"
    with pytest.raises(ConfigurationError, match=r"^Plain\.name: compound_index works on mapped"):
        _ = Plain.name == ("ada@example.com",)


def test_an_update_statement_setting_a_compound_part_is_refused(search_db: Engine) -> None:
    """UPDATE ... SET phone cannot recompute the compound index that reads phone: refused."""
    _store_people(search_db, {1: ("Ada", "Lovelace", True, "+1 555 010 0000")})
    refused = pytest.raises(ConfigurationError, match=r"Person\.sms_last4")
    with Session(search_db) as session, refused:
        session.execute(update(Person).where(Person.id == 1).values(phone="+1 555 010 1234"))


@pytest.mark.parametrize(
    "statement",
    [
        lambda: update(Person).where(Person.id == 1).values(consent_sms=False),
        lambda: update(Person).where(Person.id == 1).values({Person.consent_sms: False}),
        lambda: update(Person).ordered_values((Person.consent_sms, False)),
    ],
    ids=["keyword", "attribute", "ordered"],
)
def test_an_update_statement_setting_a_plain_compound_part_is_refused(
    search_db: Engine, statement: Any
) -> None:
    """UPDATE ... SET consent_sms would leave the consent-and-phone index stale: refused."""
    _store_people(search_db, {1: ("Ada", "Lovelace", True, "+1 555 010 0000")})
    with Session(search_db) as session:
        with pytest.raises(ConfigurationError, match=r"compound index Person\.sms_last4"):
            session.execute(statement())
        with pytest.raises(ConfigurationError, match=r"compound index Person\.sms_last4"):
            session.execute(update(Person), [{"id": 1, "consent_sms": False}])
        session.rollback()
        session.execute(update(Person).where(Person.id == 1).values(first_encrypted=None))


def test_a_truncated_condition_keeps_full_hmacs_of_its_terms_not_the_terms(
    index_keyring: Keyring,
) -> None:
    """What filtering needs stays on the statement as full-size HMACs: no plaintext term."""
    tiny = Contact.phone.index("phone_last4_tiny").in_(["0000", "1234"])
    assert 2 == len(tiny.exact.digests)
    assert all(re.fullmatch(r"b1:[0-9a-f]{64}", d) for d in tiny.exact.digests)
    assert {"target", "key_id", "digests"} == set(type(tiny.exact).__dataclass_fields__)


def test_statements_without_truncated_conditions_pass_the_listeners(search_db: Engine) -> None:
    """Once the listeners are installed, Core and ORM statements without a mark run as ever."""
    _store(search_db, _contacts(10))
    _ = Contact.phone.index("phone_last4_tiny") == "0000"  # installs the listeners
    with search_db.connect() as conn:
        assert 10 == conn.execute(select(func.count()).select_from(Contact.__table__)).scalar()
    with Session(search_db) as session:
        assert 10 == session.scalar(select(func.count()).select_from(Contact))
        assert 5 == len(session.scalars(select(Contact).limit(5)).all())


def test_compound_indexes_of_an_aliased_class_compare_the_alias(search_db: Engine) -> None:
    """aliased(Person).sms_last4 compares the alias's column, and filters the alias's rows."""
    _store_people(
        search_db,
        {
            1: ("Ada", "Lovelace", True, "+1 555 010 0000"),
            2: ("Grace", "Hopper", True, "+1 555 010 1234"),
        },
    )
    other = aliased(Person)
    condition = other.sms_last4 == (True, "0000")
    assert "fc_hyb_people_1.sms_last4_bidx" in str(condition.compile())
    with Session(search_db) as session:
        pairs = session.execute(
            select(Person, other).join(other, other.id != Person.id).where(condition)
        ).all()
        assert [(2, 1)] == [(p.id, o.id) for p, o in pairs]


# -- reads check compound indexes ----------------------------------------------------------

ADA: Folk = ("Ada", "Lovelace", True, "+1 555 010 0000")
GRACE: Folk = ("Grace", "Hopper", True, "+1 555 010 1234")


def _copy_stored(engine: Engine, column: str, from_id: int, to_id: int) -> None:
    """As an attacker with write access and no keys: copy one person's stored value to another."""
    table = Person.__table__
    with engine.begin() as conn:
        value = conn.execute(select(table.c[column]).where(table.c.id == from_id)).scalar_one()
        conn.execute(update(table).where(table.c.id == to_id).values({column: value}))


def _parts(person: Person) -> Folk:
    return (person.first_name, person.last_name, person.consent_sms, person.phone)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.lists(
        FOLK,
        max_size=20,
    )
)
def test_rows_written_through_the_orm_read_back_whatever_their_parts(
    search_db: Engine, rows: list[Folk]
) -> None:
    """Every part of every stored row reads back: the compound checks raise no false alarm."""
    people = dict(enumerate(rows))
    _store_people(search_db, people)
    with Session(search_db) as session:
        assert people == {p.id: _parts(p) for p in session.scalars(select(Person))}


def test_a_compound_index_value_swapped_in_from_another_row_is_refused(search_db: Engine) -> None:
    """A lookup by Grace's parts finds Ada's row holding Grace's index; reading a part raises."""
    _store_people(search_db, {1: ADA, 2: GRACE})
    _copy_stored(search_db, "initial_surname_bidx", from_id=2, to_id=1)
    with Session(search_db) as session:
        found = session.scalars(select(Person).where(Person.initial_surname == ("G", "Hopper")))
        assert [1, 2] == sorted(p.id for p in found)
        ada = session.get(Person, 1)
        assert ada is not None
        for attribute in ("first_name", "last_name"):
            with pytest.raises(DecryptionError) as info:
                getattr(ada, attribute)
            message = str(info.value)
            assert "fc_hyb_people.initial_surname_bidx" in message
            assert "do not match its compound index Person.initial_surname" in message
            assert "reindex" in message
            words = set(re.findall(r"\w+", message.lower()))
            assert not {"ada", "lovelace", "grace", "hopper", "0000", "1234"} & words
            assert (ada.first_encrypted or "") not in message
        # The other compound index reading the phone is intact.
        assert "+1 555 010 0000" == ada.phone
        assert GRACE == _parts(session.get(Person, 2))


def test_a_part_without_an_index_of_its_own_swapped_in_is_refused(search_db: Engine) -> None:
    """first_name has no index of its own: Grace's token copied into Ada's row fails a compound."""
    _store_people(search_db, {1: ADA, 2: GRACE})
    _copy_stored(search_db, "first_encrypted", from_id=2, to_id=1)
    with Session(search_db) as session:
        ada = session.get(Person, 1)
        assert ada is not None
        with pytest.raises(DecryptionError, match=r"compound index Person\.initial_surname"):
            _ = ada.first_name


def test_a_truncated_compound_index_is_checked_at_its_size(search_db: Engine) -> None:
    """A 4-bit value copied in from a row of another 4-bit value is refused when phone is read."""
    people: dict[int, Folk] = {
        i: ("Ada", "Lovelace", True, f"+1 555 010 {i:04d}") for i in range(16)
    }
    _store_people(search_db, people)
    table = Person.__table__
    with search_db.connect() as conn:
        stored = dict(conn.execute(select(table.c.id, table.c.sms_last4_bidx)).all())
    # Fifteen rows: that none has another of the sixteen 4-bit values is a chance of 16**-15.
    donor = next(i for i in range(1, 16) if stored[i] != stored[0])
    _copy_stored(search_db, "sms_last4_bidx", from_id=donor, to_id=0)
    with Session(search_db) as session:
        # Ada's row is a candidate of the donor's ending now, and is filtered out by its value.
        found = session.scalars(select(Person).where(Person.sms_last4 == (True, f"{donor:04d}")))
        assert [donor] == [p.id for p in found]
        person = session.get(Person, 0)
        assert person is not None
        with pytest.raises(DecryptionError, match=r"compound index Person\.sms_last4"):
            _ = person.phone
        assert "Ada" == person.first_name  # initial_surname is intact


def test_a_plain_part_changed_outside_the_orm_is_found_stale_and_repaired_by_assigning(
    search_db: Engine,
) -> None:
    """A Core UPDATE of consent_sms leaves sms_last4 stale: reading phone says so until assigned."""
    people: dict[int, Folk] = {
        i: ("Ada", "Lovelace", True, f"+1 555 010 {i:04d}") for i in range(16)
    }
    _store_people(search_db, people)
    table = Person.__table__
    with search_db.begin() as conn:
        conn.execute(update(table).values(consent_sms=False))
    index = table.c.sms_last4_bidx.info[INFO_BLIND_INDEX]
    with Session(search_db) as session:
        # At 4 bits, one row in 16 keeps its index value whatever its consent: not stale.
        stale = [
            i
            for i, (*_, phone) in people.items()
            if index.compute((False, phone)) != session.get(Person, i).sms_last4_bidx
        ]
        person = session.get(Person, stale[0])
        assert person is not None
        with pytest.raises(DecryptionError, match=r"compound index Person\.sms_last4"):
            _ = person.phone
        person.phone = f"+1 555 010 {stale[0]:04d}"
        session.commit()
        assert ("Ada", "Lovelace", False, f"+1 555 010 {stale[0]:04d}") == _parts(person)
        assert [stale[0]] == _people(session, Person.sms_last4 == (False, f"{stale[0]:04d}"))


def test_pending_changes_null_indexes_and_retired_index_keys_are_not_checked(
    search_db: Engine,
) -> None:
    """Unflushed assignments, a NULL index or part, and an index under a key no longer held read."""
    alan: Folk = ("Alan", "Turing", False, None)
    _store_people(search_db, {1: ADA, 2: GRACE, 3: GRACE, 4: alan})
    table = Person.__table__
    with search_db.begin() as conn:
        conn.execute(update(table).where(table.c.id == 2).values(initial_surname_bidx=None))
        retired = "gone:" + "0" * 64
        conn.execute(update(table).where(table.c.id == 3).values(initial_surname_bidx=retired))
    with Session(search_db, autoflush=False) as session:
        assert GRACE == _parts(session.get(Person, 2))
        assert GRACE == _parts(session.get(Person, 3))
        assert alan == _parts(session.get(Person, 4))
        person = session.get(Person, 1)
        assert person is not None
        # The stored indexes are of Ada's parts until the flush recomputes them.
        person.first_name = "Grace"
        person.consent_sms = False
        assert ("Grace", "Lovelace", False, "+1 555 010 0000") == _parts(person)
        session.commit()
        assert ("Grace", "Lovelace", False, "+1 555 010 0000") == _parts(person)
        assert [1] == _people(session, Person.initial_surname == ("G", "Lovelace"))


def test_rows_indexed_under_an_older_active_index_key_are_checked_under_it(
    search_db: Engine, index_keyring: Keyring
) -> None:
    """After a new index key comes first, rows under the old one read, and a swap is still found."""
    _store_people(search_db, {1: ADA, 2: GRACE})
    sa_fieldcrypt.configure(
        purpose="blind-index",
        keyring=Keyring(
            [Key("b2", generate_key("hmac-sha256"), purpose="blind-index"), *index_keyring],
            purpose="blind-index",
        ),
    )
    with Session(search_db) as session:
        ada = session.get(Person, 1)
        assert ada is not None
        assert ADA == _parts(ada)
        assert (ada.initial_surname or "").startswith("b1:")
        session.add(Person(id=3, first_name="Alan", last_name="Turing", phone="+1 555 010 0003"))
        session.commit()
        alan = session.get(Person, 3)
        assert alan is not None
        assert (alan.initial_surname or "").startswith("b2:")
        assert ("Alan", "Turing", False, "+1 555 010 0003") == _parts(alan)
    _copy_stored(search_db, "initial_surname_bidx", from_id=2, to_id=1)
    with Session(search_db) as session:
        ada = session.get(Person, 1)
        assert ada is not None
        with pytest.raises(DecryptionError, match=r"compound index Person\.initial_surname"):
            _ = ada.last_name


def test_the_compound_check_costs_one_hmac_per_stored_state(
    search_db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the parts again checks nothing again; a flushed change is checked anew."""
    _store_people(search_db, {1: ADA})
    calls = _count_index_checks(monkeypatch)
    with Session(search_db) as session:
        person = session.get(Person, 1)
        assert person is not None
        for _ in range(3):
            assert ADA == _parts(person)
        assert 2 == len(calls)  # one per compound index
        person.last_name = "Byron"
        session.commit()
        assert "Byron" == person.last_name
        assert 3 == len(calls)


def test_check_index_false_reads_a_compound_index_swapped_in(search_db: Engine) -> None:
    """With check_index=False (while a normalizer change awaits reindex) nothing is checked."""

    class Unchecked(DeclarativeBase):
        pass

    class LaxPerson(Unchecked):
        __tablename__ = "fc_hyb_people"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        first_encrypted: Mapped[str | None] = mapped_column(Text)
        first_name = encrypted_hybrid("first_encrypted")
        _last_name: Mapped[str | None] = mapped_column("last_encrypted", EncryptedText())
        last_name = encrypted_hybrid("_last_name")
        initial_surname_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        initial_surname = compound_index(
            BlindIndex(
                "initial_surname_bidx",
                normalizer=compound(first_name=first_chars(1), last_name=letters_lower),
            ),
            check_index=False,
        )

    _store_people(search_db, {1: ADA, 2: GRACE})
    _copy_stored(search_db, "initial_surname_bidx", from_id=2, to_id=1)
    with Session(search_db) as session:
        lax = session.get(LaxPerson, 1)
        assert lax is not None
        assert ("Ada", "Lovelace") == (lax.first_name, lax.last_name)


def test_a_part_read_without_its_indexes_loaded_loads_nothing(search_db: Engine) -> None:
    """Columns a query left out (load_only, defer) are not loaded to check an index: that
    would be a query per row, and fails on a detached row or under raiseload."""
    _store_people(search_db, {1: ADA, 2: GRACE})
    # Stale, so that a check that ran would raise.
    _copy_stored(search_db, "initial_surname_bidx", from_id=2, to_id=1)
    with Session(search_db) as session:
        only = load_only(Person.id, Person.first_encrypted, Person._last_name)
        ada = session.scalars(select(Person).where(Person.id == 1).options(only)).one()
        session.expunge(ada)
        assert ("Ada", "Lovelace") == (ada.first_name, ada.last_name)
    with Session(search_db) as session:
        deferred = defer(Person.initial_surname_bidx, raiseload=True)
        ada = session.scalars(select(Person).where(Person.id == 1).options(deferred)).one()
        assert ("Ada", "Lovelace") == (ada.first_name, ada.last_name)
    with Session(search_db) as session:
        ada = session.get(Person, 1)
        assert ada is not None
        with pytest.raises(DecryptionError, match=r"compound index Person\.initial_surname"):
            _ = ada.first_name


def test_a_stale_compound_index_does_not_stop_another_from_being_flushed(
    search_db: Engine,
) -> None:
    """A change to a plain part of one compound index is flushed although another compound
    index sharing a hybrid part is stale; reading that part still reports the stale one."""

    class Sharing(DeclarativeBase):
        pass

    class Member(Sharing):
        __tablename__ = "fc_hyb_people"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        first_encrypted: Mapped[str | None] = mapped_column(Text)
        first_name = encrypted_hybrid("first_encrypted")
        _last_name: Mapped[str | None] = mapped_column("last_encrypted", EncryptedText())
        last_name = encrypted_hybrid("_last_name")
        consent_sms: Mapped[bool] = mapped_column(default=False)
        initial_surname_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        sms_last4_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        initial_surname = compound_index(
            BlindIndex(
                "initial_surname_bidx",
                normalizer=compound(first_name=first_chars(1), last_name=letters_lower),
            )
        )
        texting_name = compound_index(
            BlindIndex("sms_last4_bidx", normalizer=compound(consent_sms=None, first_name=None))
        )

    _store_people(search_db, {1: ADA, 2: GRACE})
    _copy_stored(search_db, "initial_surname_bidx", from_id=2, to_id=1)
    with Session(search_db) as session:
        member = session.get(Member, 1)
        assert member is not None
        member.consent_sms = not member.consent_sms
        session.commit()
        found = select(Member.id).where(Member.texting_name == (member.consent_sms, "Ada"))
        assert [1] == session.scalars(found).all()
        with pytest.raises(DecryptionError, match=r"compound index Member\.initial_surname"):
            _ = member.first_name


def test_a_slow_index_needs_room_for_its_cost_label() -> None:
    """A column that fits a fast index's values is refused for a slow index's longer ones."""

    class SlowBase(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=r"at least 105 characters"):

        class Patient(SlowBase):
            __tablename__ = "fc_hyb_slow_patients"
            id: Mapped[int] = mapped_column(primary_key=True)
            code_encrypted: Mapped[str | None] = mapped_column(Text)
            code_bidx: Mapped[str | None] = mapped_column(String(97))
            code = encrypted_hybrid(
                "code_encrypted",
                blind_index=BlindIndex("code_bidx", slow=Scrypt(n=2**12, r=1, p=1)),
            )


class Account(SearchBase):
    """A 4-bit index only, on both sides of a one-to-many relationship."""

    __tablename__ = "fc_hyb_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "phone_encrypted", blind_index=BlindIndex("phone_tiny", normalizer=normalize_phone, bits=4)
    )
    purchases: Mapped[list[Purchase]] = relationship(
        back_populates="account", order_by="Purchase.id"
    )


class Purchase(SearchBase):
    __tablename__ = "fc_hyb_purchases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    account_id: Mapped[int] = mapped_column(ForeignKey("fc_hyb_accounts.id"))
    code_encrypted: Mapped[str | None] = mapped_column(Text)
    code_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    code = encrypted_hybrid("code_encrypted", blind_index=BlindIndex("code_tiny", bits=4))
    account: Mapped[Account] = relationship(back_populates="purchases")


def _store_accounts(engine: Engine, count: int = 48) -> None:
    """Accounts 0..count-1, each phone distinct; every purchase belongs to account 0."""
    with Session(engine) as session:
        session.add_all(Account(id=i, phone=f"+1555{i:06d}") for i in range(count))
        session.flush()
        session.add_all(Purchase(id=i, account_id=0, code=f"code{i}") for i in range(count))
        session.commit()


_FIRST = "+1555000000"


@pytest.mark.parametrize(
    "statement",
    [
        lambda: (
            select(Account)
            .where(Account.phone == _FIRST)
            .options(joinedload(Account.purchases.and_(Purchase.code == "code5")))
        ),
        lambda: (
            select(Account)
            .where(Account.phone == _FIRST)
            .options(selectinload(Account.purchases.and_(Purchase.code == "code5")))
        ),
        lambda: (
            select(Account)
            .where(Account.phone == _FIRST)
            .options(
                with_loader_criteria(Purchase, Purchase.code == "code5"),
                selectinload(Account.purchases),
            )
        ),
        lambda: (
            select(Account)
            .where(Account.phone == _FIRST)
            .options(with_loader_criteria(Account, Account.phone == "+1555000007"))
        ),
        lambda: (
            select(Account)
            .where(Account.id == 0)
            .options(selectinload(Account.purchases.and_(Purchase.code == "code5")))
        ),
        lambda: select(Account).options(with_loader_criteria(Account, Account.phone == _FIRST)),
        lambda: (
            select(Account).where(Account.phone == _FIRST).options(subqueryload(Account.purchases))
        ),
    ],
    ids=[
        "joined-and",
        "selectin-and",
        "criteria-child",
        "criteria-parent",
        "no-top",
        "only-opt",
        "subquery",
    ],
)
def test_truncated_conditions_in_loader_options_are_refused(
    search_db: Engine, statement: Any
) -> None:
    """A truncated condition a loader option or derived load carries is refused, not trusted."""
    _store_accounts(search_db)
    with Session(search_db) as session:
        with pytest.raises(UnsupportedComparisonError, match="loader option") as raised:
            session.scalars(statement()).unique().all()
        assert "Core" not in str(raised.value)


def test_relationships_load_in_full_beside_a_truncated_condition(search_db: Engine) -> None:
    """Eager and lazy loads of a filtered entity's relationships return every related row."""
    _store_accounts(search_db)
    expected = list(range(48))
    with Session(search_db) as session:
        for option in (selectinload(Account.purchases), joinedload(Account.purchases)):
            found = session.scalars(
                select(Account).where(Account.phone == _FIRST).options(option)
            ).unique()
            assert [(0, expected)] == [(a.id, [p.id for p in a.purchases]) for a in found]
            session.expunge_all()
        lazy = session.scalars(select(Purchase).where(Purchase.code == "code5")).all()
        assert [(5, 0)] == [(p.id, p.account.id) for p in lazy]


def test_a_joined_collection_load_still_requires_unique(search_db: Engine) -> None:
    """Filtering keeps SQLAlchemy's rule that a joined collection load needs .unique()."""
    _store_accounts(search_db)
    statement = (
        select(Account).where(Account.phone == _FIRST).options(joinedload(Account.purchases))
    )
    with Session(search_db) as session, pytest.raises(InvalidRequestError, match="unique"):
        session.scalars(statement).all()


def test_populate_existing_and_for_update_refuse_a_truncated_condition(
    search_db: Engine,
) -> None:
    """Refreshing or locking every candidate would act on rows that are not matches: refused."""
    _store_accounts(search_db)
    condition = Account.phone == _FIRST
    with Session(search_db) as session:
        for statement in (
            select(Account).where(condition).execution_options(populate_existing=True),
            select(Account).where(condition).with_for_update(),
        ):
            with pytest.raises(UnsupportedComparisonError, match="populate_existing"):
                session.scalars(statement).all()
        with pytest.raises(UnsupportedComparisonError, match="populate_existing"):
            session.query(Account).filter(condition).populate_existing().all()


def test_a_reused_condition_in_a_subquery_is_refused(search_db: Engine) -> None:
    """One condition object in the WHERE clause and again in a subquery is not filtered once."""
    _store_accounts(search_db)
    condition = Account.phone == _FIRST
    statement = select(Account).where(
        condition, Account.id.in_(select(Account.id).where(condition))
    )
    with Session(search_db) as session, pytest.raises(UnsupportedComparisonError, match="subquery"):
        session.scalars(statement).all()


def test_an_altered_candidate_fails_only_the_lookups_it_would_match(search_db: Engine) -> None:
    """A row whose token was swapped in is dropped from other lookups, and still fails its read."""
    rows = _contacts(200)
    _store(search_db, rows)
    table = SearchBase.metadata.tables["fc_hyb_contacts"]
    with Session(search_db) as session:
        stored = {c.id: (c.email, c.email_tiny) for c in session.scalars(select(Contact))}
    # Copy row a's token into row b (another domain, so b's full-size domain index disagrees),
    # then look up a third value c sharing b's 4-bit index value.
    a, b, c = next(
        (a, b, c)
        for a, b, c in ((a, b, c) for a in stored for b in stored for c in stored)
        if None not in (stored[a][0], stored[b][0], stored[c][0])
        and _domain(stored[a][0]) != _domain(stored[b][0])
        and len({normalize_email(stored[i][0] or "") for i in (a, b, c)}) == 3
        and stored[c][1] == stored[b][1]
    )
    with search_db.begin() as conn:
        token = conn.scalar(select(table.c.email_encrypted).where(table.c.id == a))
        conn.execute(update(table).where(table.c.id == b).values(email_encrypted=token))
    wanted = normalize_email(stored[c][0] or "")
    expected = sorted(i for i, (_, e) in rows.items() if e and normalize_email(e) == wanted)
    with Session(search_db) as session:
        assert expected == _found(session, Contact.email == stored[c][0])
        altered = session.get(Contact, b)
        assert altered is not None
        with pytest.raises(DecryptionError):
            _ = altered.email


# -- substring indexes -------------------------------------------------------------------------


class MemoBase(DeclarativeBase):
    pass


class Memo(MemoBase):
    """Two substring indexes: one over a ciphertext column, one over an EncryptedText column."""

    __tablename__ = "fc_hyb_memos"
    id: Mapped[int] = mapped_column(primary_key=True)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid(
        "body_encrypted", substring=SubstringIndex("fc_hyb_memo_body_trigrams", bits=8)
    )
    _title: Mapped[str | None] = mapped_column("title", EncryptedText())
    title = encrypted_hybrid(
        "_title",
        substring=SubstringIndex("fc_hyb_memo_title_trigrams", normalizer=letters_lower, bits=4),
    )


BODY_TRIGRAMS = MemoBase.metadata.tables["fc_hyb_memo_body_trigrams"]


@pytest.fixture
def memo_db(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    MemoBase.metadata.drop_all(engine)
    MemoBase.metadata.create_all(engine)
    yield engine
    MemoBase.metadata.drop_all(engine)


@pytest.fixture
def memo_sqlite(
    tmp_path_factory: pytest.TempPathFactory, keyring: Keyring, index_keyring: Keyring
) -> Iterator[Engine]:
    eng = create_engine(f"sqlite:///{tmp_path_factory.mktemp('memos') / 'memos.sqlite3'}")
    MemoBase.metadata.create_all(eng)
    yield eng
    eng.dispose()


def _memos(session: Session, condition: Any) -> list[int]:
    return sorted(m.id for m in session.scalars(select(Memo).where(condition)))


def _store_memos(engine: Engine, rows: dict[int, tuple[str | None, str | None]]) -> None:
    with Session(engine) as session:
        for memo in session.scalars(select(Memo)):
            session.delete(memo)
        session.flush()
        session.add_all(Memo(id=i, body=b, title=t) for i, (b, t) in rows.items())
        session.commit()


def _letters(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalpha())


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(alphabet="abcAB -", max_size=12)),
            st.one_of(st.none(), st.text(alphabet="abAB.'", max_size=8)),
        ),
        max_size=25,
    ),
    term=st.text(alphabet="abcAB -", min_size=3, max_size=5),
    title_term=st.text(alphabet="abAB", min_size=3, max_size=4),
)
def test_contains_matches_a_plaintext_scan(
    memo_sqlite: Engine,
    rows: list[tuple[str | None, str | None]],
    term: str,
    title_term: str,
) -> None:
    """contains() returns exactly the rows whose normalized value holds the normalized term."""
    memos = dict(enumerate(rows, start=1))
    _store_memos(memo_sqlite, memos)
    with Session(memo_sqlite) as session:
        expected = sorted(i for i, (b, _) in memos.items() if b and term.lower() in b.lower())
        assert expected == _memos(session, Memo.body.contains(term))
        wanted = _letters(title_term)
        expected = sorted(i for i, (_, t) in memos.items() if t and wanted in _letters(t))
        assert expected == _memos(session, Memo.title.contains(title_term))


def _holds(normalizer: Any, value: str | None, term: str) -> bool:
    folded = None if value is None else normalizer(value)
    return folded is not None and normalizer(term) in folded


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.lists(
        st.tuples(st.none() | note_texts(), st.none() | note_texts(max_size=3)),
        min_size=1,
        max_size=12,
    ),
    data=st.data(),
)
def test_contains_of_free_text_matches_a_plaintext_scan(
    memo_db: Engine, rows: list[tuple[str | None, str | None]], data: st.DataObject
) -> None:
    """On free text (folds that lengthen, repeated trigrams, odd white space, short texts),
    contains() of terms drawn from a row returns the rows whose normalized text holds them,
    on every database."""
    memos = dict(enumerate(rows, start=1))
    _store_memos(memo_db, memos)
    body = data.draw(st.sampled_from(rows), label="row")[0] or ""
    term = data.draw(search_terms(body), label="term")
    title = data.draw(st.sampled_from(rows), label="title row")[1] or ""
    title_term = data.draw(search_terms(title, normalizer=letters_lower), label="title term")
    with Session(memo_db) as session:
        expected = sorted(i for i, (b, _) in memos.items() if _holds(casefold, b, term))
        assert expected == _memos(session, Memo.body.contains(term))
        expected = sorted(i for i, (_, t) in memos.items() if _holds(letters_lower, t, title_term))
        assert expected == _memos(session, Memo.title.contains(title_term))
        assert 2 * len(rows) == assert_indexes_current(session, Memo)


NOTES = [
    "Met Ada Lovelace at the conference",
    "call grace about the COBOL compiler",
    "Lovelace? No: Love-lace, with a hyphen",
    "ada",
    None,
    "Élodie prefers email; no calls before 10:00",
]


def test_contains_on_a_fixed_dataset(memo_db: Engine) -> None:
    """On every database, contains() finds the rows holding the term, in any case."""
    rows = {i: (note, note) for i, note in enumerate(NOTES * 20, start=1)}
    # Some 300 distinct trigrams: at 4 bits, a candidate for any term (about 1 in 10**7 not).
    letters = "".join(chr(97 + b % 26) for b in hashlib.shake_256(b"memo").digest(300))
    rows[len(rows) + 1] = (None, letters)
    _store_memos(memo_db, rows)
    with Session(memo_db) as session:
        for term in ["lovelace", "LOVE", "ada", "the c", "élodie", "10:00", "zzz", "e-l"]:
            expected = sorted(i for i, (b, _) in rows.items() if b and term.lower() in b.lower())
            assert expected == _memos(session, Memo.body.contains(term)), term
        expected = sorted(i for i, (_, t) in rows.items() if t and "lovelace" in _letters(t))
        assert expected == _memos(session, Memo.title.contains("Love-Lace"))
        both = _memos(session, Memo.body.contains("ada") & Memo.title.contains("lovelace"))
        assert [i for i in rows if i % len(NOTES) == 1 and rows[i][0]] == both
        with memo_db.connect() as conn:
            candidates = conn.execute(
                select(func.count()).where(Memo.title.contains("lovelace").clause)
            ).scalar_one()
        assert candidates > len(expected)  # 4 bits: false positives, filtered out


def test_the_side_table_follows_insert_update_and_delete(memo_db: Engine) -> None:
    """Each flush rewrites a row's trigram values with its value, and deletes them with it."""

    def stored(memo_id: int) -> set[str]:
        with memo_db.connect() as conn:
            found = conn.execute(
                select(BODY_TRIGRAMS.c.trigram).where(BODY_TRIGRAMS.c.owner_id == memo_id)
            )
            return set(found.scalars())

    with Session(memo_db) as session:
        memo = Memo(body="abcdef")  # the database assigns the primary key
        session.add(memo)
        session.commit()
        memo_id = memo.id
        first = stored(memo_id)
        assert 1 <= len(first) <= 4  # four trigrams, 8-bit values may coincide
        assert all(v.startswith("b1:") and len(v) == 5 for v in first)
        assert [memo_id] == _memos(session, Memo.body.contains("BCD"))
        memo.body = "xyz uvw"
        session.commit()
        assert [] == _memos(session, Memo.body.contains("bcd"))
        assert [memo_id] == _memos(session, Memo.body.contains("z u"))
        memo.title = "changed"  # another attribute: the body's values stay
        before = stored(memo_id)
        session.commit()
        assert before == stored(memo_id)
        memo.body = None
        session.commit()
        assert set() == stored(memo_id)
        memo.body = "again"
        session.commit()
        session.delete(memo)
        session.commit()
        assert set() == stored(memo_id)


def test_a_delete_locks_the_owner_before_its_side_rows(memo_db: Engine) -> None:
    """A delete waits for a writer holding the owner row, holding no side row meanwhile.

    A reindex batch locks the owner row (its compare and swap) and then replaces the side
    rows: a delete that took the side rows first would deadlock with it.
    """
    if memo_db.dialect.name == "sqlite":
        pytest.skip("SQLite locks the whole database: one writer at a time")
    _store_memos(memo_db, {1: ("to be deleted", "gone soon"), 2: ("stays", None)})
    memos = Memo.__table__
    with (
        memo_db.connect() as application,
        Session(application) as session,
        memo_db.connect() as batch,
        ThreadPoolExecutor(1) as pool,
    ):
        backend = backend_id(application)
        memo = session.get(Memo, 1)
        assert memo is not None
        session.rollback()  # it holds no lock now
        with batch.begin():
            # As a reindex batch's compare and swap: the owner row is locked until the commit.
            batch.execute(
                update(memos).where(memos.c.id == 1).values(body_encrypted=memos.c.body_encrypted)
            )
            session.delete(memo)
            deleting = pool.submit(session.commit)
            wait_until(lambda: deleting.done() or waits_for_a_lock(memo_db, backend))
            assert not deleting.done()  # it waits for the owner row
            # The batch replaces the side rows: it must not wait for the delete.
            batch.execute(BODY_TRIGRAMS.delete().where(BODY_TRIGRAMS.c.owner_id == 1))
        deleting.result()
    with memo_db.connect() as conn:
        assert [2] == conn.execute(select(memos.c.id)).scalars().all()
        owners = conn.execute(select(BODY_TRIGRAMS.c.owner_id).distinct()).scalars().all()
        assert [2] == owners


def test_a_primary_key_used_again_gets_only_its_own_side_rows(memo_db: Engine) -> None:
    """Side rows an ORM DELETE statement left behind (no foreign key enforced) do not collide."""
    _store_memos(memo_db, {1: ("old words here", None)})
    with Session(memo_db) as session:
        if memo_db.dialect.name == "sqlite":
            session.execute(delete(Memo).where(Memo.id == 1))  # bypasses the mapper's events
        else:
            session.delete(session.get(Memo, 1))
        session.commit()
        session.add(Memo(id=1, body="new text"))
        session.commit()
        assert [1] == _memos(session, Memo.body.contains("new"))
        assert [] == _memos(session, Memo.body.contains("old"))


def test_a_mapper_primary_key_other_than_the_tables_is_not_the_owner(
    keyring: Keyring, index_keyring: Keyring
) -> None:
    """The side rows refer to the table's primary key, whatever the mapper declares as its key."""

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "fc_hyb_mapper_pk_notes"
        __mapper_args__: ClassVar[dict[str, Any]] = {"primary_key": ["num"]}
        id: Mapped[int] = mapped_column(primary_key=True)
        num: Mapped[int] = mapped_column(unique=True)
        text_encrypted: Mapped[str | None] = mapped_column(Text)
        text = encrypted_hybrid(
            "text_encrypted", substring=SubstringIndex("fc_hyb_mapper_pk_trigrams")
        )

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Note(id=1, num=500, text="alpha"), Note(id=2, num=1, text="beta")])
        session.commit()
        side = Base.metadata.tables["fc_hyb_mapper_pk_trigrams"]
        assert {1, 2} == set(session.scalars(select(side.c.owner_id)))
        assert [1] == [n.id for n in session.scalars(select(Note).where(Note.text.contains("alp")))]


def test_a_side_table_name_too_long_for_its_index_is_refused() -> None:
    """PostgreSQL takes identifiers of up to 63 characters: the side table's index is one."""

    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=r"too long: .* use at most 52 characters"):

        class Ticket(Base):
            __tablename__ = "fc_hyb_long_names"
            id: Mapped[int] = mapped_column(primary_key=True)
            text_encrypted: Mapped[str | None] = mapped_column(Text)
            text = encrypted_hybrid("text_encrypted", substring=SubstringIndex("t" * 53))


def test_the_side_table_is_declared_in_the_models_metadata() -> None:
    """The side table: the owner's key as a cascading foreign key, the trigram, an index."""
    table = MemoBase.metadata.tables["fc_hyb_memo_body_trigrams"]
    assert ["owner_id", "trigram"] == [c.name for c in table.primary_key.columns]
    (fk,) = table.foreign_key_constraints
    assert ("CASCADE", "fc_hyb_memos") == (fk.ondelete, fk.referred_table.name)
    assert ["ix_fc_hyb_memo_body_trigrams_trigram"] == [i.name for i in table.indexes]


def test_contains_survives_an_index_key_rotation(memo_db: Engine, index_keyring: Keyring) -> None:
    """Rows written under the old index key are found while both keys are active."""
    _store_memos(memo_db, {1: ("old key row", None)})
    new = parse_key(generate_key("hmac-sha256"), purpose="blind-index", key_id="b2")
    keys = Keyring([new, *index_keyring], purpose="blind-index")
    sa_fieldcrypt.configure(keyring=keys, purpose="blind-index")
    with Session(memo_db) as session:
        session.add(Memo(id=2, body="new key row"))
        session.commit()
        assert [1, 2] == _memos(session, Memo.body.contains("key row"))
        assert [2] == _memos(session, Memo.body.contains("new key"))
    with memo_db.connect() as conn:
        keys = {v.split(":")[0] for v in conn.execute(select(BODY_TRIGRAMS.c.trigram)).scalars()}
    assert {"b1", "b2"} == keys


def test_contains_refuses_what_it_cannot_answer(memo_db: Engine) -> None:
    """Short terms, non-text terms, columns-only selects, counts, OR and ORM UPDATEs refuse."""
    _store_memos(memo_db, {1: ("hello world", "hello")})
    with pytest.raises(UnsupportedComparisonError, match="at least 3 characters"):
        Memo.body.contains("ab")
    with pytest.raises(UnsupportedComparisonError, match="at least 3 characters"):
        Memo.title.contains("a-b")  # two letters once normalized
    with pytest.raises(UnsupportedComparisonError, match="plaintext str"):
        Memo.body.contains(Memo.id)
    with pytest.raises(UnsupportedComparisonError, match="escape"):
        Memo.body.contains("hello", autoescape=True)
    with pytest.raises(UnsupportedComparisonError):
        Memo.body.like("%hello%")
    condition = Memo.body.contains("world")
    with Session(memo_db) as session:
        for statement in (
            select(Memo.id).where(condition),
            select(func.count()).select_from(Memo).where(condition),
            select(Memo).where(condition).limit(1),
            select(Memo).where(condition | (Memo.id == 1)),
        ):
            with pytest.raises(UnsupportedComparisonError):
                session.execute(statement).all()
        with pytest.raises(UnsupportedComparisonError):
            session.execute(update(Memo).where(condition).values(id=5))
        with pytest.raises(ConfigurationError, match="substring index"):
            session.execute(update(Memo).where(Memo.id == 1).values(body="changed"))
        with pytest.raises(ConfigurationError, match="substring index"):
            session.execute(update(Memo).where(Memo.id == 1).values(body_encrypted=None))
        with pytest.raises(ConfigurationError, match="substring index"):
            # ORM bulk UPDATE by primary key sets the hybrid by its own name.
            session.execute(update(Memo), [{"id": 1, "body": "changed"}])
        assert [1] == _memos(session, condition)


def test_flushing_an_object_again_repairs_its_side_rows(memo_db: Engine) -> None:
    """A bulk update leaves the side table stale; flag_modified and a flush rewrite it."""
    _store_memos(memo_db, {1: ("first draft", None)})
    with Session(memo_db) as session:
        stored = encrypted_values(Memo, body="final text")["body_encrypted"]
        session.bulk_update_mappings(Memo, [{"id": 1, "body_encrypted": stored}])  # type: ignore[arg-type]
        session.commit()
        assert [] == _memos(session, Memo.body.contains("final"))  # not in the side table
        assert [] == _memos(session, Memo.body.contains("draft"))  # a candidate, not a match
        memo = session.get(Memo, 1)
        assert memo is not None
        flag_modified(memo, "body_encrypted")
        session.commit()
        assert [1] == _memos(session, Memo.body.contains("final"))


class PairBase(DeclarativeBase):
    pass


class Remark(PairBase):
    """A composite primary key, and the value in an EncryptedText column."""

    __tablename__ = "fc_hyb_remarks"
    station: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    _text: Mapped[str | None] = mapped_column("text", EncryptedText())
    text = encrypted_hybrid("_text", substring=SubstringIndex("fc_hyb_remark_trigrams", bits=8))


def test_a_composite_primary_key_owns_its_side_rows(
    engine: Engine, keyring: Keyring, index_keyring: Keyring
) -> None:
    """Side rows carry every primary-key column; lookups compare them as a tuple."""
    PairBase.metadata.drop_all(engine)
    PairBase.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            session.add_all(
                Remark(station=s, number=n, text=f"station {s} remark {n}")
                for s in (1, 2)
                for n in (1, 2, 3)
            )
            session.commit()
            found = session.scalars(select(Remark).where(Remark.text.contains("station 2")))
            assert [(2, 1), (2, 2), (2, 3)] == sorted((r.station, r.number) for r in found)
            session.delete(session.get(Remark, (2, 2)))
            session.commit()
            found = session.scalars(select(Remark).where(Remark.text.contains("remark 2")))
            assert [(1, 2)] == [(r.station, r.number) for r in found]
    finally:
        PairBase.metadata.drop_all(engine)


def test_a_changed_primary_key_carries_its_side_rows_on_servers(memo_db: Engine) -> None:
    """ON UPDATE CASCADE moves a row's side rows to its new key (SQLite enforces no FK)."""
    if memo_db.dialect.name == "sqlite":
        pytest.skip("SQLite enforces foreign keys only with PRAGMA foreign_keys=ON")
    _store_memos(memo_db, {1: ("moving house", None)})
    with Session(memo_db) as session:
        memo = session.get(Memo, 1)
        assert memo is not None
        memo.id = 9
        session.commit()
        assert [9] == _memos(session, Memo.body.contains("house"))

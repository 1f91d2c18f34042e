"""Encrypted column types, through real databases and through the type's processors."""

from __future__ import annotations

import base64
import math
import pickle
import warnings
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sa_fieldcrypt import (
    ConfigurationError,
    DecryptionError,
    EncryptedBytes,
    EncryptedJSON,
    EncryptedText,
    Keyring,
    PlaintextValueWarning,
    UnknownKeyError,
    UnsupportedComparisonError,
    ValueTypeError,
    configure,
    generate_key,
    metrics,
)
from sa_fieldcrypt.cipher import decrypt, encrypt, inspect_token, set_max_token_size
from sa_fieldcrypt.config import swap_default_keys
from sa_fieldcrypt.jobs.rotation import plaintext_to_token, reencrypt, written_prefix
from sa_fieldcrypt.legacy import BareFernet
from sa_fieldcrypt.testing import (
    assert_encrypted_at_rest,
    bytes_plaintexts,
    json_plaintexts,
    temporary_keys,
    text_plaintexts,
)
from sa_fieldcrypt.types import EncryptedType

DIALECT = sqlite.dialect()


RING = Keyring({"k1": generate_key()})
#: The context of the types these tests use on no table (every column is bound by default).
LOOSE = "fc_type.loose"


def _round_trip(column_type: EncryptedType, value: Any) -> Any:
    stored = column_type.process_bind_param(value, DIALECT)
    return column_type.process_result_value(stored, DIALECT)


@given(text_plaintexts())
def test_text_round_trip_any_string(value: str) -> None:
    """Any str, NUL, astral and lone surrogates included, comes back equal."""
    assert value == _round_trip(EncryptedText(keyring=RING, context=LOOSE), value)


@given(bytes_plaintexts())
def test_bytes_round_trip(value: bytes) -> None:
    """Any bytes come back equal."""
    assert value == _round_trip(EncryptedBytes(keyring=RING, context=LOOSE), value)


@given(json_plaintexts())
def test_json_round_trip(value: Any) -> None:
    """Any JSON value (None aside, which is SQL NULL) comes back equal."""
    assert value == _round_trip(EncryptedJSON(keyring=RING, context=LOOSE), value)


@pytest.mark.parametrize(
    ("column_type", "value", "type_name"),
    [
        (EncryptedText(), 42, "int"),
        (EncryptedText(), b"bytes", "bytes"),
        (EncryptedBytes(), "text", "str"),
        (EncryptedJSON(), {1, 2}, "set"),
        (EncryptedJSON(), math.nan, "float"),
    ],
)
def test_wrong_python_type_is_a_type_error(
    fieldcrypt_keyring: Keyring, column_type: EncryptedType, value: Any, type_name: str
) -> None:
    """A value of the wrong type raises TypeError naming its type, not its content."""
    with pytest.raises(TypeError, match=type_name) as info:
        column_type.process_bind_param(value, DIALECT)
    assert repr(value) not in str(info.value) or type_name == "float"


def test_bytes_accepts_bytes_like() -> None:
    """bytearray and memoryview are stored as bytes."""
    column_type = EncryptedBytes(keyring=RING, context=LOOSE)
    assert b"ab" == _round_trip(column_type, bytearray(b"ab"))
    assert b"cd" == _round_trip(column_type, memoryview(b"cd"))


# -- through real databases ---------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "fc_type_customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    email: Mapped[str | None] = mapped_column(
        "email_encrypted", EncryptedText(legacy=[BareFernet()])
    )
    avatar: Mapped[bytes | None] = mapped_column(EncryptedBytes())
    prefs: Mapped[Any] = mapped_column(EncryptedJSON(), nullable=True)
    name: Mapped[str | None] = mapped_column(String(50))


@pytest.fixture
def db(engine: Engine, fieldcrypt_keyring: Keyring) -> Any:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


SAMPLES = [
    ("ada@example.com", b"\x00\xff", {"lang": "en", "n": [1, 2.5, None, True]}),
    ("", b"", []),
    ("ünïcödé \U0001f600 \x00 nul", b"x" * 70_000, "a JSON string"),
    (None, None, None),
]


def test_orm_round_trip(db: Engine) -> None:
    """Values written through the ORM come back equal; NULL stays NULL; "" round-trips."""
    with Session(db) as session:
        for i, (email, avatar, prefs) in enumerate(SAMPLES):
            session.add(Customer(id=i, email=email, avatar=avatar, prefs=prefs))
        session.commit()
    with Session(db) as session:
        for i, (email, avatar, prefs) in enumerate(SAMPLES):
            row = session.get(Customer, i)
            assert (email, avatar, prefs) == (row.email, row.avatar, row.prefs)


def test_database_holds_tokens_not_plaintext(db: Engine, fieldcrypt_keyring: Keyring) -> None:
    """The column holds a token bound to its name that plain Fernet opens; NULL stays NULL."""
    with Session(db) as session:
        session.add_all([Customer(id=1, email="ada@example.com"), Customer(id=2, email=None)])
        session.commit()
        assert 1 == assert_encrypted_at_rest(session, Customer)
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT id, email_encrypted FROM fc_type_customers ORDER BY id")
        ).all()
    stored = rows[0][1]
    assert "ada@example.com" not in stored
    assert ("k2", True) == (inspect_token(stored).key_id, inspect_token(stored).bound)
    # The derivation docs/token-format.md gives for a bound token under a Fernet key.
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"sa-fieldcrypt/fc1/fernet-context:fc_type_customers.email_encrypted",
    ).derive(base64.urlsafe_b64decode(fieldcrypt_keyring.primary.export()))
    fernet_part = stored.split(":", 3)[3]
    assert b"ada@example.com" == Fernet(base64.urlsafe_b64encode(derived)).decrypt(fernet_part)
    assert rows[1][1] is None


def test_plain_fernet_legacy_values_are_read(db: Engine, fieldcrypt_keyring: Keyring) -> None:
    """Rows written by a hand-rolled encrypt_field() (bare Fernet tokens) load as plaintext
    in a column that declares them (legacy=[BareFernet()])."""
    legacy = Fernet(fieldcrypt_keyring.get("k1").export()).encrypt(b"old@example.com").decode()
    with db.begin() as conn:
        conn.execute(
            text("INSERT INTO fc_type_customers (id, email_encrypted) VALUES (1, :v)"),
            {"v": legacy},
        )
    with Session(db) as session:
        assert "old@example.com" == session.get(Customer, 1).email


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.text(alphabet=st.characters(codec="utf-8")))
def test_database_round_trip_property(db: Engine, value: str) -> None:
    """For any text, a Core insert then select through the database gives it back."""
    table = Customer.__table__
    with db.begin() as conn:
        conn.execute(table.delete())
        conn.execute(insert(table).values(id=1, email_encrypted=value))
    with db.connect() as conn:
        assert value == conn.execute(select(table.c.email_encrypted)).scalar_one()


def test_is_none_works_and_comparisons_refuse(db: Engine) -> None:
    """is_(None) filters in SQL; ==, in_, like and ordering raise our error naming the column."""
    with Session(db) as session:
        session.add_all([Customer(id=1, email="a@b.c"), Customer(id=2, email=None)])
        session.commit()
        assert [2] == session.scalars(select(Customer.id).where(Customer.email.is_(None))).all()
        assert [1] == session.scalars(select(Customer.id).where(Customer.email.is_not(None))).all()
    for make in (
        lambda: Customer.email == "a@b.c",
        lambda: Customer.email != "a@b.c",
        lambda: "a@b.c" == Customer.email,
        lambda: Customer.email.in_(["a@b.c"]),
        lambda: Customer.email.like("a%"),
        lambda: Customer.email < "m",
        lambda: Customer.email.desc(),
        lambda: Customer.prefs == {"a": 1},
    ):
        with pytest.raises(UnsupportedComparisonError, match="blind index") as info:
            make()
        assert "fc_type_customers." in str(info.value)


def test_decryption_failure_names_column_and_key(db: Engine, fieldcrypt_keyring: Keyring) -> None:
    """A tampered value raises DecryptionError naming table.column and key id, not the value."""
    token = encrypt(fieldcrypt_keyring, b"ada@example.com")
    tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    with db.begin() as conn:
        conn.execute(
            text("INSERT INTO fc_type_customers (id, email_encrypted) VALUES (1, :v)"),
            {"v": tampered},
        )
    with Session(db) as session, pytest.raises(DecryptionError) as info:
        session.get(Customer, 1)
    message = str(info.value)
    assert "fc_type_customers.email_encrypted" in message
    assert "'k2'" in message
    assert tampered not in message
    assert "ada@example.com" not in message


def test_unknown_key_names_the_missing_id(db: Engine) -> None:
    """A value under a key the keyring lacks raises UnknownKeyError naming that id."""
    stray = encrypt(Keyring({"retired": generate_key()}), b"x")
    with db.begin() as conn:
        conn.execute(
            text("INSERT INTO fc_type_customers (id, email_encrypted) VALUES (1, :v)"),
            {"v": stray},
        )
    with Session(db) as session, pytest.raises(UnknownKeyError, match="'retired'") as info:
        session.get(Customer, 1)
    assert "fc_type_customers.email_encrypted" in str(info.value)


def test_wrong_type_raises_at_flush(db: Engine) -> None:
    """Assigning an int to an EncryptedText attribute raises TypeError at flush."""
    with Session(db) as session:
        session.add(Customer(id=1, email=12345))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="int") as info:
            session.flush()
    assert "12345" not in str(info.value)
    assert "fc_type_customers.email_encrypted" in str(info.value)


def test_per_column_keyring_overrides_default(engine: Engine, fieldcrypt_keyring: Keyring) -> None:
    """EncryptedText(keyring=...) encrypts with its own keys, not the default."""
    own = Keyring({"own": generate_key()})
    metadata = MetaData()
    table = Table(
        "fc_type_own_keys",
        metadata,
        mapped_column("id", Integer, primary_key=True, autoincrement=False).column,
        mapped_column("secret", EncryptedText(keyring=own)).column,
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(id=1, secret="mine"))
        with engine.connect() as conn:
            raw = conn.execute(text("SELECT secret FROM fc_type_own_keys")).scalar_one()
            assert "own" == inspect_token(raw).key_id
            assert "mine" == conn.execute(select(table.c.secret)).scalar_one()
    finally:
        metadata.drop_all(engine)


def test_models_import_without_keys_and_fail_clearly_at_first_use(
    no_default_keys: None,
) -> None:
    """Mapping needs no keys; the first encryption says which variables to set."""

    class Local(DeclarativeBase):
        pass

    class Thing(Local):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        secret: Mapped[str] = mapped_column(EncryptedText())

    from sqlalchemy.orm import configure_mappers

    configure_mappers()
    with pytest.raises(ConfigurationError, match="FIELDCRYPT_KEYS") as info:
        Thing.__table__.c.secret.type.process_bind_param("x", DIALECT)
    assert "FIELD_ENCRYPTION_KEY" in str(info.value)


def test_types_are_cacheable_and_repr_has_no_secrets() -> None:
    """Types declare cache_ok and their repr shows no key, even with a per-column keyring."""
    secret = generate_key()
    column_type = EncryptedText(keyring=Keyring({"k1": secret}))
    assert column_type.cache_ok is True
    assert secret not in repr(column_type)
    assert column_type._static_cache_key is not None


# -- aes-gcm-siv keys and context binding --------------------------------------------------

AEAD_RING = Keyring({"k3": generate_key(kind="aes-gcm-siv"), "k2": generate_key()})
FERNET_RING = Keyring({"k2": AEAD_RING.get("k2").export()})
RINGS = {"aes-gcm-siv": AEAD_RING, "fernet": FERNET_RING}


class BoundBase(DeclarativeBase):
    pass


class Contact(BoundBase):
    """Two bound columns, one that opted out and a strict one, all with the process keys."""

    __tablename__ = "fc_type_contacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    email: Mapped[str | None] = mapped_column(EncryptedText(context=True, legacy=[BareFernet()]))
    notes: Mapped[str | None] = mapped_column(EncryptedText(context="crm.notes"))
    plain: Mapped[str | None] = mapped_column(EncryptedText(context=False))
    strict: Mapped[str | None] = mapped_column(
        EncryptedText(context="crm.strict", allow_unbound=False)
    )
    lenient: Mapped[str | None] = mapped_column(EncryptedText(allow_unbound=True))


@pytest.fixture(params=["fernet", "aes-gcm-siv"])
def bound_db(request: pytest.FixtureRequest, engine: Engine) -> Any:
    """The contacts table on each database, with the process keys of one kind as primary."""
    previous = swap_default_keys(None)
    configure(keyring=RINGS[request.param])
    BoundBase.metadata.drop_all(engine)
    BoundBase.metadata.create_all(engine)
    yield engine
    BoundBase.metadata.drop_all(engine)
    swap_default_keys(previous)


def _raw(db: Engine, column: str, row_id: int = 1) -> str:
    with db.connect() as conn:
        value: str = conn.execute(
            text(f"SELECT {column} FROM fc_type_contacts WHERE id = :id"),  # noqa: S608 - test's own names
            {"id": row_id},
        ).scalar_one()
    return value


def _store_raw(db: Engine, column: str, value: str, row_id: int = 1) -> None:
    with db.begin() as conn:
        conn.execute(
            text(f"UPDATE fc_type_contacts SET {column} = :v WHERE id = :id"),  # noqa: S608 - test's own names
            {"v": value, "id": row_id},
        )


def test_context_true_takes_the_column_name() -> None:
    """context=True becomes 'table.column' once attached; a schema is part of the name."""
    assert "fc_type_contacts.email" == Contact.__table__.c.email.type.context
    metadata = MetaData(schema="core")
    table = Table("customers", metadata, mapped_column("email", EncryptedText(context=True)).column)
    assert "core.customers.email" == table.c.email.type.context


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.text(alphabet=st.characters(codec="utf-8")))
def test_bound_columns_round_trip_through_the_database(bound_db: Engine, value: str) -> None:
    """Any text written to bound, unbound and strict columns reads back equal, bound or not."""
    table = Contact.__table__
    with bound_db.begin() as conn:
        conn.execute(table.delete())
        conn.execute(
            insert(table).values(id=1, email=value, notes=value, plain=value, strict=value)
        )
    with bound_db.connect() as conn:
        row = conn.execute(select(table)).one()
    assert (value, value, value, value) == (row.email, row.notes, row.plain, row.strict)
    assert inspect_token(_raw(bound_db, "email")).bound
    assert not inspect_token(_raw(bound_db, "plain")).bound


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.text(alphabet=st.characters(codec="utf-8")))
def test_aead_column_round_trips_through_the_database(engine: Engine, value: str) -> None:
    """An EncryptedText with an aes-gcm-siv key gives back any text it stored."""
    metadata = MetaData()
    table = Table(
        "fc_type_aead",
        metadata,
        mapped_column("id", Integer, primary_key=True, autoincrement=False).column,
        mapped_column("secret", EncryptedText(keyring=AEAD_RING)).column,
    )
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(id=1, secret=value))
        with engine.connect() as conn:
            assert value == conn.execute(select(table.c.secret)).scalar_one()
            raw = conn.execute(text("SELECT secret FROM fc_type_aead")).scalar_one()
        assert "k3" == inspect_token(raw).key_id
    finally:
        metadata.drop_all(engine)


def test_token_copied_between_bound_columns_does_not_decrypt(bound_db: Engine) -> None:
    """A bound token copied into another bound column raises DecryptionError naming it."""
    with Session(bound_db) as session:
        session.add(Contact(id=1, email="ada@example.com", notes="likes tea"))
        session.commit()
    _store_raw(bound_db, "notes", _raw(bound_db, "email"))
    with Session(bound_db) as session, pytest.raises(DecryptionError) as info:
        session.get(Contact, 1)
    assert "crm.notes" not in str(info.value)  # a context is not a column name
    assert "fc_type_contacts.notes" in str(info.value)
    assert "ada@example.com" not in str(info.value)


def test_token_copied_into_the_same_context_elsewhere_decrypts(bound_db: Engine) -> None:
    """Binding is per column, not per row: a token moved to another row of it still reads."""
    with Session(bound_db) as session:
        session.add_all([Contact(id=1, email="ada@example.com"), Contact(id=2, email="b@c.d")])
        session.commit()
    _store_raw(bound_db, "email", _raw(bound_db, "email", 1), row_id=2)
    with Session(bound_db) as session:
        assert "ada@example.com" == session.get(Contact, 2).email


def test_bound_column_reads_older_unbound_tokens_and_strict_one_refuses(
    bound_db: Engine,
) -> None:
    """Unbound tokens read in a bound column; a strict column refuses them, naming itself."""
    with Session(bound_db) as session:
        session.add(Contact(id=1, plain="written before binding"))
        session.commit()
    unbound = _raw(bound_db, "plain")
    _store_raw(bound_db, "email", unbound)
    with Session(bound_db) as session:
        assert "written before binding" == session.get(Contact, 1).email
    _store_raw(bound_db, "strict", unbound)
    with Session(bound_db) as session, pytest.raises(DecryptionError) as info:
        session.get(Contact, 1)
    assert "fc_type_contacts.strict" in str(info.value)
    assert "allow_unbound=False" in str(info.value)


def test_columns_are_bound_to_their_declared_name_by_default() -> None:
    """EncryptedText() binds to schema.table.column, the database name of the column."""
    assert "fc_type_customers.email_encrypted" == Customer.__table__.c.email_encrypted.type.context
    metadata = MetaData(schema="core")
    table = Table("customers", metadata, Column("email", EncryptedText()))
    assert "core.customers.email" == table.c.email.type.context
    assert False is EncryptedText(context=False).context


def test_a_default_column_writes_tokens_bound_to_its_name(bound_db: Engine) -> None:
    """A column that says nothing writes bound tokens that only its own name opens."""
    with Session(bound_db) as session:
        session.add(Contact(id=1, lenient="ada@example.com"))
        session.commit()
    stored = _raw(bound_db, "lenient")
    assert inspect_token(stored).bound
    keyring = RINGS["fernet"] if stored.startswith("fc1:k2:") else RINGS["aes-gcm-siv"]
    assert b"ada@example.com" == decrypt(keyring, stored, context="fc_type_contacts.lenient")
    with pytest.raises(DecryptionError):
        decrypt(keyring, stored, context="fc_type_contacts.email")


def test_strict_setting_refuses_planted_unbound_values(
    bound_db: Engine, strict_unbound: None
) -> None:
    """FIELDCRYPT_ALLOW_UNBOUND=false: a planted unbound or legacy token no longer reads."""
    with Session(bound_db) as session:
        session.add(Contact(id=1, email="ada@example.com", plain="mallory@example.com"))
        session.commit()
    with Session(bound_db) as session:
        assert "ada@example.com" == session.get(Contact, 1).email  # bound values read
    unbound = _raw(bound_db, "plain")
    legacy = Fernet(RINGS["fernet"].get("k2").export()).encrypt(b"mallory@example.com").decode()
    for planted in (unbound, legacy):
        _store_raw(bound_db, "email", planted)
        with Session(bound_db) as session, pytest.raises(DecryptionError) as info:
            session.get(Contact, 1)
        assert "fc_type_contacts.email" in str(info.value)
        assert "allow_unbound=False" in str(info.value)  # refused as strict, not as unknown
        assert "mallory" not in str(info.value)


def test_strict_setting_leaves_opted_out_and_lenient_columns_reading(
    bound_db: Engine, strict_unbound: None
) -> None:
    """Strict by setting, context=False and allow_unbound=True columns still read unbound tokens."""
    with Session(bound_db) as session:
        session.add(Contact(id=1, plain="written unbound"))
        session.commit()
    _store_raw(bound_db, "lenient", _raw(bound_db, "plain"))
    with Session(bound_db) as session:
        row = session.get(Contact, 1)
        assert ("written unbound", "written unbound") == (row.plain, row.lenient)
    columns = Contact.__table__.c
    assert (False, True, True) == (
        columns.email.type.allow_unbound,
        columns.plain.type.allow_unbound,
        columns.lenient.type.allow_unbound,
    )


def test_unbound_column_refuses_bound_tokens(bound_db: Engine) -> None:
    """A bound token copied into an unbound column says a context is needed."""
    with Session(bound_db) as session:
        session.add(Contact(id=1, email="ada@example.com"))
        session.commit()
    _store_raw(bound_db, "plain", _raw(bound_db, "email"))
    with Session(bound_db) as session, pytest.raises(DecryptionError, match="bound to a context"):
        session.get(Contact, 1)


def test_rotating_to_an_aead_key_keeps_old_values(engine: Engine) -> None:
    """Values written under a Fernet primary still read after an AEAD key becomes primary."""
    fernet_only = Keyring({"k2": AEAD_RING.get("k2").export()})
    before = EncryptedText(keyring=fernet_only, context=LOOSE).process_bind_param("old", DIALECT)
    after = EncryptedText(keyring=AEAD_RING, context=LOOSE).process_bind_param("new", DIALECT)
    column = EncryptedText(keyring=AEAD_RING, context=LOOSE)
    assert ("k2", "k3") == (inspect_token(before or "").key_id, inspect_token(after or "").key_id)
    assert ("old", "new") == (
        column.process_result_value(before, DIALECT),
        column.process_result_value(after, DIALECT),
    )


def test_copied_columns_take_their_own_context() -> None:
    """A column copied to another table or schema (mixins, to_metadata) binds to its new name."""
    metadata = MetaData()
    table = Table("people", metadata, mapped_column("email", EncryptedText(context=True)).column)
    copied = table.to_metadata(MetaData(), schema="archive")
    assert "people.email" == table.c.email.type.context
    assert "archive.people.email" == copied.c.email.type.context

    class Local(DeclarativeBase):
        pass

    class HasEmail:
        email: Mapped[str] = mapped_column(EncryptedText(context=True))

    class Left(HasEmail, Local):
        __tablename__ = "left_people"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Right(HasEmail, Local):
        __tablename__ = "right_people"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert "left_people.email" == Left.__table__.c.email.type.context
    assert "right_people.email" == Right.__table__.c.email.type.context


def test_one_context_true_instance_cannot_serve_two_columns() -> None:
    """Sharing an EncryptedText(context=True) between columns is a ConfigurationError."""
    shared = EncryptedText(context=True)
    metadata = MetaData()
    Table("t1", metadata, mapped_column("a", shared).column)
    with pytest.raises(ConfigurationError, match=r"t1\.a"):
        Table("t2", metadata, mapped_column("b", shared).column)


def test_unattached_context_true_fails_loudly() -> None:
    """context=True without a table column raises ConfigurationError instead of writing unbound."""
    column_type = EncryptedText(keyring=RING, context=True)
    with pytest.raises(ConfigurationError, match="not attached"):
        column_type.process_bind_param("x", DIALECT)
    with pytest.raises(ConfigurationError, match="not attached"):
        column_type.process_result_value("fc1:k1:AAAA", DIALECT)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"context": ""}, "non-empty"),
        ({"context": 5}, "non-empty"),
        ({"context": "\udc80"}, "UTF-8"),
        ({"context": False, "allow_unbound": False}, "needs a context"),
        ({"context": None}, "False"),
        ({"allow_unbound": "no"}, "True, False or None"),
    ],
)
def test_bad_context_arguments(kwargs: dict[str, Any], expected: str) -> None:
    """Invalid context arguments are refused when the column type is built."""
    with pytest.raises(ConfigurationError, match=expected):
        EncryptedText(**kwargs)


def test_bound_types_have_distinct_cache_keys_and_show_their_context() -> None:
    """Two bound columns never share a statement-cache key; repr shows the type as declared."""
    columns = Contact.__table__.c
    email, notes = columns.email.type, columns.notes.type
    assert email._static_cache_key != notes._static_cache_key
    assert email._static_cache_key != columns.plain.type._static_cache_key
    assert "fc_type_contacts.email" == email.context
    assert "EncryptedText()" == repr(email)
    assert "EncryptedText(context=False)" == repr(columns.plain.type)
    assert "EncryptedText(context='crm.strict', allow_unbound=False)" == repr(columns.strict.type)


# -- plaintext during a migration, and re-encryption --------------------------------------


def test_plaintext_is_refused_by_default() -> None:
    """Without allow_plaintext, a stored value that is not a token raises DecryptionError."""
    with pytest.raises(DecryptionError, match="not an encrypted token"):
        EncryptedText(keyring=RING, context=LOOSE).process_result_value("ada@example.com", DIALECT)


def test_allow_plaintext_reads_loudly(engine: Engine, keyring: Keyring) -> None:
    """allow_plaintext returns plaintext values, warns once per column and counts every read."""
    metadata = MetaData()
    table = Table(
        "fc_type_migrating",
        metadata,
        mapped_column("id", Integer, primary_key=True, autoincrement=False).column,
        mapped_column("email", EncryptedText(allow_plaintext=True)).column,
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(id=1, email="encrypted@example.com"))
            conn.execute(text("INSERT INTO fc_type_migrating VALUES (2, 'plain@example.com')"))
        label = "fc_type_migrating.email"
        before = metrics.snapshot().plaintext_reads.get(label, 0)
        with engine.connect() as conn:
            query = select(table.c.email).order_by(table.c.id)
            if before == 0:
                with pytest.warns(PlaintextValueWarning, match=label):
                    values = conn.execute(query).scalars().all()
            else:
                values = conn.execute(query).scalars().all()
            again = conn.execute(query).scalars().all()
        assert ["encrypted@example.com", "plain@example.com"] == values == again
        assert before + 2 == metrics.snapshot().plaintext_reads[label]
    finally:
        metadata.drop_all(engine)


def test_allow_plaintext_never_returns_ciphertext() -> None:
    """With allow_plaintext, a token that does not decrypt still raises: no ciphertext as data."""
    column_type = EncryptedText(keyring=RING, context=LOOSE, allow_plaintext=True)
    for token in (
        encrypt(Keyring({"other": generate_key()}), b"x"),
        Fernet(generate_key()).encrypt(b"x").decode(),
        encrypt(RING, b"x")[:-4] + "AAAA",
    ):
        with pytest.raises(DecryptionError):
            column_type.process_result_value(token, DIALECT)


@pytest.mark.parametrize(
    "edit",
    [
        str.upper,
        lambda t: "FC1" + t[3:],
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: "\t" + t.swapcase() + " ",
        lambda t: "fc1::" + t.rpartition(":")[2],
        lambda t: t.rpartition(":")[2],  # the bare payload: a Fernet token of no known key
        lambda t: "  " + t.rpartition(":")[2].lower(),
    ],
    ids=[
        "upper",
        "header-case",
        "leading-space",
        "trailing-newline",
        "swapcase",
        "no-id",
        "bare",
        "bare-lower",
    ],
)
def test_allow_plaintext_refuses_values_that_look_like_tokens(edit: Any) -> None:
    """A re-cased, padded or headless token is refused, never returned as plaintext data."""
    column_type = EncryptedText(keyring=RING, context=LOOSE, allow_plaintext=True)
    token = encrypt(Keyring({"k1": generate_key()}), b"x")
    with pytest.raises(DecryptionError) as info:
        column_type.process_result_value(edit(token), DIALECT)
    assert token.rpartition(":")[2][:20] not in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlaintextValueWarning)
        assert "ada@example.com" == column_type.process_result_value("ada@example.com", DIALECT)


def test_size_limit_errors_name_the_column() -> None:
    """Over the size limit, reads and writes fail naming the column and the limit."""
    column = mapped_column("notes", EncryptedText(keyring=RING)).column
    Table("fc_type_sized", MetaData(), column)
    column_type = column.type
    assert isinstance(column_type, EncryptedText)
    token = encrypt(RING, b"n" * 1500)
    set_max_token_size(2048)
    try:
        with pytest.raises(DecryptionError, match=r"fc_type_sized\.notes: .*limit of 2,048"):
            column_type.process_result_value(token, DIALECT)
        with pytest.raises(ValueTypeError, match=r"fc_type_sized\.notes: .*2,048 characters"):
            column_type.process_bind_param("n" * 1500, DIALECT)
    finally:
        set_max_token_size(None)
    assert "n" * 1500 == column_type.process_result_value(token, DIALECT)


def test_allow_plaintext_is_part_of_the_cache_key() -> None:
    """Two types that differ in allow_plaintext do not share compiled statements."""
    assert (
        EncryptedText()._static_cache_key != EncryptedText(allow_plaintext=True)._static_cache_key
    )


OLD_AND_NEW = Keyring({"new": generate_key(), "old": generate_key()})


@given(st.binary())
def test_reencrypt_moves_any_value_to_the_primary_key(data: bytes) -> None:
    """reencrypt() turns an old-key or (declared) legacy token into a primary-key token of the
    same bytes."""
    column_type = EncryptedBytes(keyring=OLD_AND_NEW, context=LOOSE, legacy=[BareFernet()])
    old = OLD_AND_NEW.with_primary("old")
    legacy = Fernet(OLD_AND_NEW.get("old").export()).encrypt(data).decode()
    for token in (encrypt(old, data), legacy):
        moved = reencrypt(column_type, token)
        assert ("new", True) == (inspect_token(moved).key_id, inspect_token(moved).bound)
        assert data == column_type.process_result_value(moved, DIALECT)


@given(st.binary(), st.sampled_from([False, True, 5]), st.sampled_from(["", "c", "p", "cp"]))
def test_token_rewriter_writes_what_reencrypt_writes(
    data: bytes, padding: bool | int, flags: str
) -> None:
    """token_rewriter() turns an old-key token, padded or not, bound or not, into a token with
    the header and content reencrypt() gives it (an unbound padded one goes the long way)."""
    column_type = EncryptedBytes(keyring=OLD_AND_NEW, context=LOOSE, padding=padding)
    old = OLD_AND_NEW.with_primary("old")
    token = encrypt(
        old, data, context=LOOSE if "c" in flags else None, padding=16 if "p" in flags else False
    )
    moved = column_type.token_rewriter()(token)
    assert (flags == "p") == (moved is None)
    if moved is None:
        return
    expected = reencrypt(column_type, token)
    assert expected.rsplit(":", 1)[0] == moved.rsplit(":", 1)[0]
    assert data == column_type.decrypt_token(moved)


def test_token_rewriter_leaves_every_other_value_to_reencrypt() -> None:
    """token_rewriter() answers None for what it does not open; reencrypt() then says why."""
    column_type = EncryptedText(keyring=OLD_AND_NEW, context=LOOSE, allow_unbound=False)
    rewrite = column_type.token_rewriter()
    old = OLD_AND_NEW.with_primary("old")
    good = encrypt(old, b"x", context=LOOSE)
    tampered = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
    others = [
        tampered,
        encrypt(old, b"x"),  # unbound, in a strict column
        encrypt(old, b"x", context="another.column"),
        encrypt(Keyring({"gone": generate_key()}), b"x", context=LOOSE),
        "ada@example.com",
        "fc1:old:c:not-base64",
    ]
    assert rewrite(good) is not None
    for value in others:
        assert rewrite(value) is None
        with pytest.raises(DecryptionError):
            reencrypt(column_type, value)
    row_bound = EncryptedText(keyring=OLD_AND_NEW, context=LOOSE).bound_to_rows()
    assert row_bound.token_rewriter()(good) is None


def test_reencrypt_keeps_json_text_byte_for_byte() -> None:
    """A JSON value is re-encrypted as stored: key order and spacing are not rewritten."""
    stored = b'{"b": 1,  "a": [2, 1]}'
    column_type = EncryptedJSON(keyring=OLD_AND_NEW, context=LOOSE)
    moved = reencrypt(column_type, encrypt(OLD_AND_NEW.with_primary("old"), stored))
    assert stored == column_type.decrypt_token(moved)


def test_reencrypt_refuses_plaintext_and_broken_tokens() -> None:
    """reencrypt() raises DecryptionError for plaintext and for tokens that do not decrypt."""
    column_type = EncryptedText(keyring=OLD_AND_NEW, context=LOOSE, allow_plaintext=True)
    with pytest.raises(DecryptionError, match="not an encrypted token"):
        reencrypt(column_type, "ada@example.com")
    with pytest.raises(UnknownKeyError):
        reencrypt(column_type, encrypt(Keyring({"gone": generate_key()}), b"x"))


@given(
    st.text(alphabet=st.characters(codec="utf-8")).filter(
        lambda v: not v.startswith(("fc1:", "gAAAAA"))
    )
)
def test_plaintext_to_token_round_trips(value: str) -> None:
    """plaintext_to_token() stores a plaintext text value so that the column reads it back."""
    column_type = EncryptedText(keyring=OLD_AND_NEW, context=LOOSE)
    token = plaintext_to_token(column_type, value)
    assert "new" == inspect_token(token).key_id
    assert value == column_type.process_result_value(token, DIALECT)


def test_plaintext_to_token_refuses_tokens_and_invalid_values() -> None:
    """plaintext_to_token() will not encrypt a token twice, nor store non-JSON as JSON."""
    json_type = EncryptedJSON(keyring=OLD_AND_NEW, context=LOOSE)
    with pytest.raises(ValueTypeError, match="already an encrypted token"):
        plaintext_to_token(
            EncryptedText(keyring=OLD_AND_NEW, context=LOOSE), encrypt(OLD_AND_NEW, b"x")
        )
    with pytest.raises(ValueTypeError, match="not valid for EncryptedJSON") as info:
        plaintext_to_token(json_type, "not json: secret")
    assert "secret" not in str(info.value)
    assert {"a": 1} == json_type.process_result_value(
        plaintext_to_token(json_type, '{"a": 1}'), DIALECT
    )


def test_written_prefix_is_the_header_of_new_tokens() -> None:
    """Every token an unbound column writes starts with written_prefix(): the primary's header."""
    column_type = EncryptedText(keyring=OLD_AND_NEW, context=False)
    assert "fc1:new:" == written_prefix(column_type)
    assert column_type.process_bind_param("x", DIALECT).startswith(written_prefix(column_type))


def test_written_prefix_of_a_bound_column_is_the_bound_header() -> None:
    """A bound column's new tokens carry the bound flag, so rotation rewrites unbound ones."""
    column_type = EncryptedText(OLD_AND_NEW, "crm.email")
    assert "fc1:new:c:" == written_prefix(column_type)
    assert column_type.process_bind_param("x", DIALECT).startswith(written_prefix(column_type))
    unbound = EncryptedText(OLD_AND_NEW, context=False).process_bind_param("x", DIALECT)
    moved = reencrypt(column_type, unbound)
    assert moved.startswith("fc1:new:c:")
    assert b"x" == column_type.decrypt_token(moved)


# -- the processors: built once per dialect, reading the state of the column ---------------


def test_processors_built_before_attachment_take_the_context_of_the_column(
    engine: Engine,
) -> None:
    """Processors SQLAlchemy built before context=True was attached bind to the column's name."""
    column_type = EncryptedText(keyring=RING, context=True)
    # The per-dialect copy SQLAlchemy caches, and its processors, made before the column exists.
    early_impl = column_type.dialect_impl(engine.dialect)
    early_bind = early_impl.bind_processor(engine.dialect)
    early_result = early_impl.result_processor(engine.dialect, None)
    with pytest.raises(ConfigurationError, match="not attached"):
        early_bind("x")
    metadata = MetaData()
    table = Table(
        "fc_type_late",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", column_type),
    )
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": 1, "email": "ada@example.com"}])
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT email FROM fc_type_late")).scalar_one()
            loaded = conn.execute(select(table.c.email)).scalar_one()
        assert "ada@example.com" == loaded
        assert b"ada@example.com" == decrypt(RING, stored, context="fc_type_late.email")
        assert b"x" == decrypt(RING, early_bind("x"), context="fc_type_late.email")
        assert "ada@example.com" == early_result(stored)
    finally:
        metadata.drop_all(engine)


def test_processors_built_before_attachment_name_the_column_in_errors() -> None:
    """A processor built before its column existed names the column once it is attached."""
    column_type = EncryptedText(keyring=RING)
    bind = column_type.bind_processor(DIALECT)
    result = column_type.dialect_impl(DIALECT).result_processor(DIALECT, None)
    Table("fc_type_named", MetaData(), Column("email", column_type))
    with pytest.raises(ValueTypeError, match=r"^fc_type_named\.email: "):
        bind(42)
    with pytest.raises(DecryptionError, match=r"fc_type_named\.email"):
        result(encrypt(Keyring({"k1": generate_key()}), b"x"))


def test_one_type_serves_several_dialects() -> None:
    """One column type's processors for SQLite, PostgreSQL and MariaDB read each other's tokens."""
    column_type = EncryptedText(keyring=RING, context="crm.email")
    dialects = [sqlite.dialect(), postgresql.dialect(), mysql.dialect(is_mariadb=True)]
    binds = [column_type.dialect_impl(d).bind_processor(d) for d in dialects]
    results = [column_type.dialect_impl(d).result_processor(d, None) for d in dialects]
    for bind in binds:
        token = bind("ada@example.com")
        assert ["ada@example.com"] * len(results) == [result(token) for result in results]
    assert None is binds[0](None) is results[0](None)


def test_processors_read_the_keys_configure_sets_now() -> None:
    """A processor built once encrypts and decrypts under whatever configure() set last."""
    column_type = EncryptedText(context=LOOSE)
    bind = column_type.bind_processor(DIALECT)
    result = column_type.result_processor(DIALECT, None)
    first, second = Keyring({"first": generate_key()}), Keyring({"second": generate_key()})
    with temporary_keys(first):
        under_first = bind("ada@example.com")
    with temporary_keys(second):
        under_second = bind("ada@example.com")
        assert "ada@example.com" == result(under_second)
        with pytest.raises(UnknownKeyError, match="'first'"):
            result(under_first)
    assert "first" == inspect_token(under_first).key_id
    assert "second" == inspect_token(under_second).key_id


class _GrowingProvider:
    """A key provider whose second load adds a key, counting its loads."""

    def __init__(self) -> None:
        self.old = Keyring({"old": generate_key()})
        self.grown = Keyring([*self.old, *Keyring({"added": generate_key()})])
        self.loads = 0

    def load(self) -> Keyring:
        self.loads += 1
        return self.old if self.loads == 1 else self.grown


def test_result_processor_refreshes_once_for_an_unknown_key_id() -> None:
    """A token under a key the cached keys lack is read after one refresh; a bad id costs one."""
    provider = _GrowingProvider()
    column_type = EncryptedText(keyring=provider, context=LOOSE)
    result = column_type.result_processor(DIALECT, None)
    assert "old" == result(encrypt(provider.old, b"old"))
    assert "added" == result(encrypt(provider.grown.with_primary("added"), b"added"))
    assert 2 == provider.loads
    for _ in range(3):
        with pytest.raises(UnknownKeyError, match="'gone'"):
            result(encrypt(Keyring({"gone": generate_key()}), b"x"))
    # The refresh after the first unknown id was just made: no more until the interval passes.
    assert 2 == provider.loads


def test_attaching_context_true_changes_the_cache_key() -> None:
    """context=True's statement-cache key shows the column name once it is attached."""
    column_type = EncryptedText(keyring=RING, context=True)
    before = column_type._static_cache_key
    assert before == EncryptedText(keyring=RING, context=True)._static_cache_key
    Table("fc_type_keyed", MetaData(), Column("email", column_type))
    assert before != column_type._static_cache_key


def test_metadata_with_encrypted_columns_pickles() -> None:
    """A pickled MetaData's encrypted columns keep their context and still encrypt and decrypt."""
    metadata = MetaData()
    Table("fc_type_pickled", metadata, Column("email", EncryptedText(context=True)))
    with temporary_keys(RING):
        clone = pickle.loads(pickle.dumps(metadata)).tables["fc_type_pickled"].c.email.type
        token = clone.process_bind_param("ada@example.com", DIALECT)
        assert "ada@example.com" == clone.process_result_value(token, DIALECT)
    assert "fc_type_pickled.email" == clone.context
    assert b"ada@example.com" == decrypt(RING, token, context="fc_type_pickled.email")


class _MarkedText(Text):
    """A text type with processors of its own, as some dialects' text types have."""

    cache_ok = True

    def bind_processor(self, dialect: Any) -> Any:
        return lambda value: None if value is None else f"marked:{value}"

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        return lambda value: None if value is None else value.removeprefix("marked:")


class _MarkedEncryptedText(EncryptedText):
    impl = _MarkedText
    cache_ok = True


def test_processors_compose_with_those_of_the_impl_type() -> None:
    """The text type's own processors run on the token: after encryption, before decryption."""
    column_type = _MarkedEncryptedText(keyring=RING, context=LOOSE)
    impl = column_type.dialect_impl(DIALECT)
    stored = impl.bind_processor(DIALECT)("ada@example.com")
    assert stored.startswith("marked:fc1:k1:c:")
    assert "ada@example.com" == impl.result_processor(DIALECT, None)(stored)
    assert None is impl.bind_processor(DIALECT)(None)


@pytest.mark.parametrize("stored", [b"{not json", b"[" * 100_000 + b"]" * 100_000])
def test_json_that_does_not_parse_is_our_decryption_error(stored: bytes) -> None:
    """A decrypted value that is not JSON, or nested past the parser's depth, is DecryptionError."""
    column_type = EncryptedJSON(keyring=RING, context=LOOSE)
    token = column_type.encrypt_bytes(stored)
    with pytest.raises(DecryptionError, match="is not JSON") as info:
        column_type.process_result_value(token, DIALECT)
    assert "[[" not in str(info.value)

"""The helpers users test with: fixtures, at-rest assertions and strategies."""

from __future__ import annotations

import pytest
from hypothesis import given
from sqlalchemy import Engine, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import DecryptionError, EncryptedText, Keyring, encrypted_hybrid, generate_key
from sa_fieldcrypt.cipher import decrypt, encrypt
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.testing import assert_encrypted_at_rest, keyrings, temporary_keys


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

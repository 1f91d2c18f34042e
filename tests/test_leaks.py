"""Nothing logs, raises or prints plaintext or key material.

Representative flows run with SQLAlchemy's echo and every logger at DEBUG; all log records,
exception messages, reprs of keys, keyrings, settings and providers, and command-line output
are collected, then searched for every plaintext sample and every key in every encoding.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from sqlalchemy import Engine, Integer, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import (
    EncryptedBytes,
    EncryptedJSON,
    EncryptedText,
    FieldCryptError,
    Keyring,
    ValueTypeError,
    generate_key,
)
from sa_fieldcrypt.cipher import encrypt
from sa_fieldcrypt.cli import cli
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.providers import EnvKeyProvider, KeyCache, StaticKeyProvider
from sa_fieldcrypt.settings import FieldCryptSettings, load_settings
from sa_fieldcrypt.testing import temporary_keys

PLAINTEXTS = [
    "ada.lovelace@analytical-engine.example",
    "+1 (555) 010-7777",
    "Allergic to penicillin; see file 4471",
]
KEYS = [generate_key(), generate_key()]
RING = Keyring({"k2": KEYS[0], "k1": KEYS[1]})


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "fc_leak_patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    email: Mapped[str | None] = mapped_column(EncryptedText())
    notes: Mapped[Any] = mapped_column(EncryptedJSON(), nullable=True)
    scan: Mapped[bytes | None] = mapped_column(EncryptedBytes())


def _forbidden() -> list[str]:
    """Every spelling of a secret that could end up in text."""
    needles = list(PLAINTEXTS)
    for key in KEYS:
        raw = base64.urlsafe_b64decode(key)
        needles += [key, key.rstrip("="), base64.b64encode(raw).decode(), raw.hex(), repr(raw)]
        needles += [key[:20], raw.hex()[:20]]
    return needles


class Collected:
    """Text seen during the flows."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *items: object) -> None:
        self.texts += [item if isinstance(item, str) else repr(item) for item in items]

    def error(self, exc: BaseException) -> None:
        # What an application shows or logs; chained causes are left for debuggers.
        self.add(str(exc), repr(exc))


@pytest.fixture
def collected(caplog: pytest.LogCaptureFixture) -> Iterator[Collected]:
    found = Collected()
    with caplog.at_level(logging.DEBUG):
        yield found
        found.texts += [record.getMessage() for record in caplog.records]
        found.texts += [caplog.text]


@pytest.fixture
def echo_engine(engine: Engine) -> Iterator[Engine]:
    """The test database's engine, echoing every statement and its parameters."""
    echoing = create_engine(engine.url, echo="debug")
    Base.metadata.drop_all(echoing)
    Base.metadata.create_all(echoing)
    yield echoing
    Base.metadata.drop_all(echoing)
    echoing.dispose()


def _expect_error(found: Collected, action: Any) -> None:
    try:
        action()
    except (FieldCryptError, TypeError, ValidationError) as exc:
        found.error(exc)
    else:
        raise AssertionError("the flow was expected to fail")


def test_database_flows_leak_nothing(echo_engine: Engine, collected: Collected) -> None:
    """Writes, reads, updates and every decryption failure, logged at DEBUG, show no secret."""
    with temporary_keys(RING):
        with Session(echo_engine) as session:
            session.add(Patient(id=1, email=PLAINTEXTS[0], notes={"n": PLAINTEXTS[2]}))
            session.add(Patient(id=2, email=PLAINTEXTS[1], scan=PLAINTEXTS[2].encode()))
            session.commit()
            for patient in session.scalars(select(Patient)):
                collected.add(patient.__dict__.keys())
            session.get(Patient, 1).email = PLAINTEXTS[1]
            session.commit()

        tampered = encrypt(RING, PLAINTEXTS[0].encode())[:-8] + "AAAAAAAA"
        foreign = encrypt(Keyring({"gone": generate_key()}), PLAINTEXTS[1].encode())
        with echo_engine.begin() as conn:
            conn.execute(
                text("INSERT INTO fc_leak_patients (id, email) VALUES (3, :t), (4, :f), (5, :p)"),
                {"t": tampered, "f": foreign, "p": PLAINTEXTS[2]},
            )
        for row_id in (3, 4, 5):
            with Session(echo_engine) as session:
                _expect_error(collected, lambda i=row_id: session.get(Patient, i))  # type: ignore[misc]

        with Session(echo_engine) as session:
            session.add(Patient(id=9, email=12345))  # type: ignore[arg-type]
            _expect_error(collected, session.flush)
            session.rollback()
        _expect_error(collected, lambda: Patient.email == PLAINTEXTS[0])
        _expect_error(collected, lambda: EncryptedJSON().process_bind_param({PLAINTEXTS[0]}, None))

    for text_seen in collected.texts:
        for needle in _forbidden():
            assert needle not in text_seen


def _deeply_nested(depth: int = 100_000) -> list[Any]:
    """A list nested ``depth`` deep: json.dumps raises RecursionError on it."""
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


class _LoudText(str):
    """A str whose encoding fails with a message that quotes it, as custom objects may."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        raise ValueError(f"cannot encode {self}")


def test_failed_conversions_in_a_flush_show_no_row(
    echo_engine: Engine, collected: Collected
) -> None:
    """A value that fails to convert while a flush binds raises ValueTypeError, quoting no row."""
    failing = [
        (Patient(id=2, email=PLAINTEXTS[1], notes=_deeply_nested()), "RecursionError"),
        (Patient(id=2, email=_LoudText(PLAINTEXTS[1]), notes=[PLAINTEXTS[1]]), "ValueError"),
    ]
    with temporary_keys(RING):
        for patient, raised in failing:
            with Session(echo_engine) as session:
                # Both rows bind in one statement: SQLAlchemy's StatementError would quote both.
                session.add(Patient(id=1, email=PLAINTEXTS[0], notes={"n": PLAINTEXTS[2]}))
                session.add(patient)
                with pytest.raises(ValueTypeError) as info:
                    session.flush()
                session.rollback()
            assert f"converting it raised {raised}" in str(info.value)
            assert "fc_leak_patients." in str(info.value)
            collected.error(info.value)
    for text_seen in collected.texts:
        for needle in _forbidden():
            assert needle not in text_seen


def test_a_key_given_as_a_key_id_is_never_shown(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, collected: Collected
) -> None:
    """A key pasted where a key id belongs is refused without being quoted, wherever it is."""
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k2:{KEYS[1]}")
    for pasted in (KEYS[0], f"k1:{KEYS[0]}", KEYS[0][:40]):
        monkeypatch.setenv("FIELDCRYPT_PRIMARY_KEY_ID", pasted)
        _expect_error(collected, lambda: KeyCache(EnvKeyProvider()).get())
        _expect_error(collected, FieldCryptSettings)
        _expect_error(collected, lambda p=pasted: Keyring({"k2": KEYS[1]}, primary=p))  # type: ignore[misc]
        _expect_error(collected, lambda p=pasted: RING.get(p))  # type: ignore[misc]
        _expect_error(collected, lambda p=pasted: Keyring({p: KEYS[1]}))  # type: ignore[misc]
    monkeypatch.delenv("FIELDCRYPT_KEYS")
    monkeypatch.setenv("FIELD_ENCRYPTION_KEY", KEYS[1])
    _expect_error(collected, lambda: KeyCache(EnvKeyProvider()).get())
    monkeypatch.delenv("FIELDCRYPT_PRIMARY_KEY_ID")
    monkeypatch.setenv("FIELDCRYPT_MAX_TOKEN_SIZE", KEYS[0])
    _expect_error(collected, load_settings)
    _expect_error(collected, FieldCryptSettings)
    assert any("FIELDCRYPT_PRIMARY_KEY_ID: <not a key id" in seen for seen in collected.texts)
    for text_seen in collected.texts:
        for needle in _forbidden():
            assert needle not in text_seen


def test_configuration_flows_leak_nothing(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, collected: Collected
) -> None:
    """Malformed settings, failing providers and every repr show no key."""
    bad_values = [
        f"k1:{KEYS[0][:-3]}",
        f"k1:{KEYS[0]},k1:{KEYS[1]}",
        f"k 1:{KEYS[0]}",
        f"{KEYS[0]}",
        f"k1:{KEYS[0]}x",
    ]
    for value in bad_values:
        monkeypatch.setenv("FIELDCRYPT_KEYS", value)
        _expect_error(collected, lambda: KeyCache(EnvKeyProvider()).get())
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k2:{KEYS[0]},k1:{KEYS[1]}")
    monkeypatch.setenv("FIELD_ENCRYPTION_KEY", KEYS[1][:-2])
    _expect_error(collected, lambda: KeyCache(EnvKeyProvider()).get())
    monkeypatch.delenv("FIELD_ENCRYPTION_KEY")

    class LeakyProvider:
        def load(self) -> Keyring:
            raise RuntimeError(f"vault said: {KEYS[0]}")

    _expect_error(collected, lambda: KeyCache(LeakyProvider()).get())

    settings = load_settings()
    provider = EnvKeyProvider(settings)
    collected.add(
        settings,
        str(settings),
        settings.model_dump(),
        provider,
        StaticKeyProvider(RING),
        RING,
        str(RING),
        list(RING),
        RING.primary,
        EncryptedText(keyring=RING),
        KeyCache(StaticKeyProvider(RING)),
    )
    sa_fieldcrypt.configure(keyring=RING)
    collected.add(current_keyring())

    for text_seen in collected.texts:
        for needle in _forbidden():
            assert needle not in text_seen


def test_command_line_errors_leak_nothing(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failing commands print one line that shows no key, whatever the bad input."""
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k1:{KEYS[0][:-3]}")
    runner = CliRunner()
    outputs = []
    for args in (["keys", "list"], ["keygen", "--id", KEYS[0]]):
        result = runner.invoke(cli, args)
        outputs += [result.output, result.stderr]
    for output in outputs:
        for needle in _forbidden():
            assert needle not in output


def test_retire_key_prints_key_ids_never_keys(
    no_default_keys: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """retire-key, as text and as JSON, names key ids and variables and never a key."""
    url = f"sqlite:///{tmp_path / 'retire.sqlite3'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with temporary_keys(RING), Session(engine) as session:
        session.add(Patient(id=1, email=PLAINTEXTS[0]))
        session.commit()
    engine.dispose()
    monkeypatch.setenv("FIELDCRYPT_KEYS", RING.export())
    monkeypatch.setenv("FIELDCRYPT_DATABASE_URL", url)
    target = ["--table", "fc_leak_patients", "--column", "email"]
    outputs = []
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(cli, ["retire-key", "k1", *target, *extra])
        assert 0 == result.exit_code, result.output
        outputs += [result.output, result.stderr]
    assert "remove the entry 'k1' from FIELDCRYPT_KEYS; keep 'k2' (primary)" in outputs[0]
    for output in outputs:
        for needle in _forbidden():
            assert needle not in output


def test_secret_manager_flows_leak_nothing(fake_secret_manager: Any, collected: Collected) -> None:
    """Secret Manager reprs, loads, skipped versions, refresh failures and errors show no key."""
    from sa_fieldcrypt.providers.gcp import GoogleSecretManagerKeyProvider

    secret = fake_secret_manager.create_secret("projects/p/secrets/leaks")
    fake_secret_manager.add_version(secret, KEYS[0].encode())
    fake_secret_manager.add_version(secret, KEYS[1].encode())
    fake_secret_manager.set_alias(secret, "fieldcrypt-primary", 2)
    provider = GoogleSecretManagerKeyProvider(
        secret, client=fake_secret_manager.client(), timeout=2, cache_ttl=60, max_stale=120
    )
    clock = [0.0]
    cache = KeyCache(provider, clock=lambda: clock[0])
    collected.add(provider, cache.get(), list(cache.get()))
    fake_secret_manager.add_version(secret, b"not a key " + KEYS[0].encode())
    collected.add(provider.load(), provider.describe())  # version 3 skipped, and why
    fake_secret_manager.set_alias(secret, "fieldcrypt-primary", 3)
    _expect_error(collected, provider.load)
    fake_secret_manager.set_alias(secret, "fieldcrypt-primary", 2)
    fake_secret_manager.stop()
    collected.add(cache.refresh())
    clock[0] = 120.0
    _expect_error(collected, cache.get)  # stale past max_stale
    for text_seen in collected.texts:
        for needle in _forbidden():
            assert needle not in text_seen

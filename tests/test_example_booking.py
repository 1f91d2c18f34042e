"""The booking example: its models on every database, and the demo that `make demo` runs."""

from __future__ import annotations

import datetime
import importlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateSchema

from sa_fieldcrypt import Keyring

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example's models module, imported the way `python -m booking` finds it."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("booking.models")


@pytest.fixture
def db(
    engine: Engine, models: ModuleType, keyring: Keyring, index_keyring: Keyring
) -> Iterator[Engine]:
    """The example's schema on one database: real schemas on PostgreSQL, translated elsewhere."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for schema in ("identity", "core"):
                conn.execute(CreateSchema(schema, if_not_exists=True))
        bound = engine
    else:
        bound = engine.execution_options(schema_translate_map=models.SQLITE_SCHEMA_MAP)
    models.Base.metadata.drop_all(bound)
    models.Base.metadata.create_all(bound)
    yield bound
    models.Base.metadata.drop_all(bound)


def _station(models: ModuleType, session: Session, code: str) -> Any:
    station = models.Station(**models.station_kwargs(code))
    session.add(station)
    session.flush()
    return station


def _customer(models: ModuleType, station: Any, **values: Any) -> Any:
    values = {"first_name": "Test", "last_name": "Customer", "timezone": "UTC", **values}
    return models.Customer(station_id=station.id, **values)


def test_tables_live_in_their_schemas(db: Engine, models: ModuleType) -> None:
    """PostgreSQL gets core and identity schemas; SQLite and MariaDB one translated namespace."""
    inspector = inspect(db)
    if db.dialect.name == "postgresql":
        assert {"customers", "bookings"} == set(inspector.get_table_names(schema="core"))
        assert {"stations"} == set(inspector.get_table_names(schema="identity"))
    else:
        assert {"customers", "bookings", "stations"} <= set(inspector.get_table_names())
    indexes = {i["name"]: i for i in inspector.get_indexes("customers", schema=_core(db))}
    assert ["station_id", "email_bidx"] == indexes["idx_customer_station_email"]["column_names"]


def test_the_seed_fixture_customer_and_lookups(db: Engine, models: ModuleType) -> None:
    """The seed's Phase 5 fixture works as written, and the customer is found by email or phone."""
    Customer = models.Customer
    with Session(db) as session:
        station = _station(models, session, "TEST001")
        session.add(
            Customer(
                station_id=station.id,
                first_name="Test",
                last_name="Customer",
                email="test@example.com",
                phone="+1234567890",
                consent_sms=True,
                consent_email=True,
                timezone="America/New_York",
                tags=["vip", "returning"],
            )
        )
        session.commit()
        for email in ("test@example.com", " TEST@Example.com "):
            found = session.scalars(select(Customer).where(Customer.email == email)).one()
            assert ("test@example.com", ["vip", "returning"]) == (found.email, found.tags)
        for phone in ("+1 (234) 567-890", "+1234567890"):
            assert 1 == len(
                session.scalars(select(Customer.id).where(Customer.phone == phone)).all()
            )


def test_email_is_unique_per_station(db: Engine, models: ModuleType) -> None:
    """The same email, in any formatting, is rejected in one station and accepted in another."""
    with Session(db) as session:
        north, south = _station(models, session, "NORTH"), _station(models, session, "SOUTH")
        session.add(_customer(models, north, email="ada@example.com"))
        session.add(_customer(models, south, email="ADA@example.com"))
        session.commit()
        session.add(_customer(models, north, email=" Ada@Example.com"))
        with pytest.raises(IntegrityError):
            session.commit()


def _booking(models: ModuleType, customer: Any, **values: Any) -> Any:
    values = {
        "date": datetime.date(2025, 12, 24),
        "slot": "18:00",
        "party_adults": 2,
        "total_due_cents": 10_000,
        "deposit_due_cents": 2_000,
        **values,
    }
    return models.Booking(customer=customer, **values)


@pytest.mark.parametrize(
    "values",
    [
        {"party_adults": 0},
        {"party_kids": -1},
        {"deposit_due_cents": -1},
        {"deposit_due_cents": 20_000, "total_due_cents": 10_000},
    ],
    ids=["no-adults", "negative-kids", "negative-deposit", "deposit-above-total"],
)
def test_booking_check_constraints(db: Engine, models: ModuleType, values: dict[str, Any]) -> None:
    """Each of the four check constraints rejects a booking that breaks it."""
    with Session(db) as session:
        customer = _customer(models, _station(models, session, "S1"), email="a@example.com")
        session.add(_booking(models, customer, **values))
        # PyMySQL reports MariaDB's CHECK violations (error 4025) as OperationalError.
        with pytest.raises((IntegrityError, OperationalError)):
            session.commit()


def test_one_active_booking_per_slot(db: Engine, models: ModuleType) -> None:
    """A slot holds one active booking; a cancelled one does not block rebooking it.

    MariaDB has no partial indexes, so there the example leaves the index out altogether
    rather than enforce a wrong rule (no rebooking of a cancelled slot).
    """
    if db.dialect.name == "mysql":  # MariaDB through PyMySQL reports itself as mysql
        names = {ix["name"] for ix in inspect(db).get_indexes("bookings", schema=_core(db))}
        assert "idx_booking_date_slot_active" not in names
        return
    Status = models.BookingStatus
    with Session(db) as session:
        customer = _customer(models, _station(models, session, "S1"), email="a@example.com")
        session.add(_booking(models, customer, status=Status.CANCELLED))
        session.add(_booking(models, customer, status=Status.CONFIRMED))
        session.commit()
        session.add(_booking(models, customer, status=Status.NEW))
        with pytest.raises(IntegrityError):
            session.commit()


def _run_demo(directory: Path) -> subprocess.CompletedProcess[str]:
    """`python -m booking` in ``directory`` with no key variables set, as `make demo` runs it."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FIELDCRYPT_") and k != "FIELD_ENCRYPTION_KEY"
    }
    environment["PYTHONPATH"] = str(EXAMPLES)
    command = [sys.executable, "-m", "booking", "--db", f"sqlite:///{directory / 'demo.sqlite3'}"]
    result = subprocess.run(
        command, cwd=directory, env=environment, capture_output=True, text=True, timeout=60
    )
    assert 0 == result.returncode, result.stderr
    assert "" == result.stderr
    return result


def test_demo_runs_from_a_clean_directory(tmp_path: Path) -> None:
    """`python -m booking` with no keys set makes throwaway keys and shows every step."""
    output = _run_demo(tmp_path).stdout
    assert "wrote throwaway demo keys into .fieldcrypt-demo.env" in output
    assert "Customer.email == '  ADA@Example.COM '     -> Ada (NORTH)" in output
    assert "again at NORTH -> rejected by the unique index" in output
    assert "again at SOUTH -> accepted" in output
    assert "3. 0 rows left under old keys" in output
    keys_file = tmp_path / ".fieldcrypt-demo.env"
    assert 0o600 == stat.S_IMODE(keys_file.stat().st_mode)
    assert {"FIELDCRYPT_KEYS", "FIELDCRYPT_BLIND_INDEX_KEYS"} == {
        line.partition("=")[0] for line in keys_file.read_text().splitlines()
    }


def test_demo_reuses_its_keys_on_the_next_run(tmp_path: Path) -> None:
    """A second run reads the keys file of the first and leaves it as it was."""
    _run_demo(tmp_path)
    keys_file = tmp_path / ".fieldcrypt-demo.env"
    first_keys = keys_file.read_text()
    second = _run_demo(tmp_path).stdout
    assert first_keys == keys_file.read_text()
    assert "using the throwaway demo keys in .fieldcrypt-demo.env" in second
    assert "wrote throwaway demo keys" not in second


def test_demo_adds_only_the_keys_its_file_lacks(tmp_path: Path) -> None:
    """A keys file with encryption keys only keeps them and gains blind-index keys."""
    _run_demo(tmp_path)
    keys_file = tmp_path / ".fieldcrypt-demo.env"
    encryption_line = keys_file.read_text().splitlines()[0]
    assert encryption_line.startswith("FIELDCRYPT_KEYS=")
    keys_file.write_text(encryption_line + "\n")
    assert "wrote throwaway demo keys" in _run_demo(tmp_path).stdout
    lines = keys_file.read_text().splitlines()
    assert encryption_line == lines[0]
    assert ["FIELDCRYPT_KEYS", "FIELDCRYPT_BLIND_INDEX_KEYS"] == [
        line.partition("=")[0] for line in lines
    ]


def _core(db: Engine) -> str | None:
    return "core" if db.dialect.name == "postgresql" else None

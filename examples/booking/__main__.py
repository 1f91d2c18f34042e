"""Run the booking demo: ``python -m booking [--db URL]`` from the ``examples`` folder.

Writes stations and customers, then prints each customer's stored (encrypted) email next to
the plaintext the model reads back. SQLite by default; ``--db`` takes any SQLAlchemy URL
(PostgreSQL gets real ``core`` and ``identity`` schemas).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateSchema

import sa_fieldcrypt
from booking.models import SQLITE_SCHEMA_MAP, Base, Customer, Station, station_kwargs
from sa_fieldcrypt import Keyring, generate_key

DEMO_KEYS_FILE = Path(".fieldcrypt-demo.env")


def demo_keyring() -> Keyring | None:
    """Throwaway keys for the demo when the environment sets none; None when it does."""
    if os.environ.get("FIELDCRYPT_KEYS") or os.environ.get("FIELD_ENCRYPTION_KEY"):
        return None
    if not DEMO_KEYS_FILE.exists():
        DEMO_KEYS_FILE.write_text(f"FIELDCRYPT_KEYS=demo1:{generate_key()}\n")
        DEMO_KEYS_FILE.chmod(0o600)
        print(f"No keys set: generated throwaway demo keys into {DEMO_KEYS_FILE} (git ignores it).")
    else:
        print(f"No keys set: using the throwaway demo keys in {DEMO_KEYS_FILE}.")
    _, _, value = DEMO_KEYS_FILE.read_text().strip().partition("=")
    return Keyring.parse(value, source=str(DEMO_KEYS_FILE))


def make_engine(url: str) -> Engine:
    """An engine on ``url`` with the schemas the models need."""
    engine = create_engine(url, hide_parameters=True)
    if engine.dialect.name == "sqlite":
        return engine.execution_options(schema_translate_map=SQLITE_SCHEMA_MAP)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for schema in ("identity", "core"):
                conn.execute(CreateSchema(schema, if_not_exists=True))
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite:///booking-demo.sqlite3", help="database URL")
    args = parser.parse_args()

    keyring = demo_keyring()
    if keyring is not None:
        sa_fieldcrypt.configure(keyring=keyring)

    engine = make_engine(args.db)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)

    with Session(engine) as session:
        north = Station(**station_kwargs("NORTH"))
        session.add(north)
        session.add_all(
            [
                Customer(
                    station=north,
                    first_name="Ada",
                    last_name="Lovelace",
                    email="ada@example.com",
                    phone="+1 (555) 010-0000",
                    consent_email=True,
                    timezone="Europe/London",
                ),
                Customer(
                    station=north,
                    first_name="Grace",
                    last_name="Hopper",
                    email="grace@example.com",
                    phone=None,
                    timezone="America/New_York",
                ),
            ]
        )
        session.commit()

    print(f"\nStored in {engine.url.render_as_string(hide_password=True)}:")
    with engine.connect() as conn:
        raw = dict(
            conn.execute(
                text("SELECT first_name, email_encrypted FROM core.customers")
                if engine.dialect.name != "sqlite"
                else text("SELECT first_name, email_encrypted FROM customers")
            ).all()
        )
    with Session(engine) as session:
        for customer in session.scalars(select(Customer).order_by(Customer.first_name)):
            stored = raw[customer.first_name]
            print(f"  {customer.first_name:<6} email={customer.email:<18} stored={stored[:44]}...")
            print(f"  {'':<6} phone={customer.phone!s:<18}")


if __name__ == "__main__":
    main()

"""Run the booking demo: ``python -m booking [--db URL]`` from the ``examples`` folder.

Writes stations and customers, prints what the database stores next to what the model reads,
looks customers up by email and phone in any formatting, shows the unique index on
``(station_id, email_bidx)`` at work, and rotates the blind-index key without downtime.
SQLite by default; ``--db`` takes any SQLAlchemy URL (PostgreSQL gets real ``core`` and
``identity`` schemas).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sqlalchemy import Engine, String, create_engine, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateSchema

import sa_fieldcrypt
from booking.models import SQLITE_SCHEMA_MAP, Base, Customer, Station, station_kwargs
from sa_fieldcrypt import (
    Key,
    Keyring,
    generate_key,
)
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.jobs import find_indexes, reindex, status

DEMO_KEYS_FILE = Path(".fieldcrypt-demo.env")
ENCRYPTION_VARIABLES = ("FIELDCRYPT_KEYS", "FIELD_ENCRYPTION_KEY")
INDEX_VARIABLES = ("FIELDCRYPT_BLIND_INDEX_KEYS", "FIELDCRYPT_BLIND_INDEX_KEY")


def demo_keys() -> None:
    """Use throwaway keys (kept in DEMO_KEYS_FILE) for what the environment does not set."""
    need_keys = not any(os.environ.get(v) for v in ENCRYPTION_VARIABLES)
    need_index_keys = not any(os.environ.get(v) for v in INDEX_VARIABLES)
    if not (need_keys or need_index_keys):
        return
    values: dict[str, str] = {}
    if DEMO_KEYS_FILE.exists():
        for line in DEMO_KEYS_FILE.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep:
                values[name.strip()] = value.strip()
    # Only what the file lacks is generated: keys it holds are reused, so the database of an
    # earlier run still decrypts.
    makers = {
        "FIELDCRYPT_KEYS": lambda: f"demo1:{generate_key()}",
        "FIELDCRYPT_BLIND_INDEX_KEYS": lambda: f"bidx1:{generate_key('hmac-sha256')}",
    }
    missing = {name: make() for name, make in makers.items() if not values.get(name)}
    if missing:
        values.update(missing)
        DEMO_KEYS_FILE.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        DEMO_KEYS_FILE.chmod(0o600)
        print(f"No keys set: wrote throwaway demo keys into {DEMO_KEYS_FILE} (git ignores it).")
    else:
        print(f"No keys set: using the throwaway demo keys in {DEMO_KEYS_FILE}.")
    source = str(DEMO_KEYS_FILE)
    if need_keys:
        sa_fieldcrypt.configure(keyring=Keyring.parse(values["FIELDCRYPT_KEYS"], source=source))
    if need_index_keys:
        sa_fieldcrypt.configure(
            purpose="blind-index",
            keyring=Keyring.parse(
                values["FIELDCRYPT_BLIND_INDEX_KEYS"], source=source, purpose="blind-index"
            ),
        )


def make_engine(url: str) -> Engine:
    """An engine on ``url`` with the schemas the models need."""
    engine = create_engine(url, hide_parameters=True)
    if engine.dialect.name in ("sqlite", "mysql", "mariadb"):
        return engine.execution_options(schema_translate_map=SQLITE_SCHEMA_MAP)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for schema in ("identity", "core"):
                conn.execute(CreateSchema(schema, if_not_exists=True))
    return engine


def find(session: Session, condition: object) -> str:
    """The names of the customers matching ``condition``, for printing."""
    rows = session.execute(
        select(Customer.first_name, Station.code)
        .join(Customer.station)
        .where(condition)
        .order_by(Customer.first_name)
    )
    return ", ".join(f"{name} ({code})" for name, code in rows) or "(nobody)"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", default="sqlite:///booking-demo.sqlite3", help="database URL")
    args = parser.parse_args()

    demo_keys()
    engine = make_engine(args.db)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)

    with Session(engine) as session:
        north = Station(**station_kwargs("NORTH"))
        south = Station(**station_kwargs("SOUTH"))
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
                    email="Grace.Hopper@Example.com",
                    phone=None,
                    timezone="America/New_York",
                ),
                south,
            ]
        )
        session.commit()

    print(f"\nStored in {engine.url.render_as_string(hide_password=True)} (core.customers):")
    # type_coerce to String: read the stored token itself, not its decryption.
    stored_email = type_coerce(Customer.__table__.c.email_encrypted, String())
    with engine.connect() as conn:
        raw = conn.execute(
            select(Customer.first_name, stored_email, Customer.email_bidx).order_by(
                Customer.first_name
            )
        ).all()
    with Session(engine) as session:
        for first_name, stored, index in raw:
            customer = session.scalars(
                select(Customer).where(Customer.first_name == first_name)
            ).one()
            print(f"  {first_name:<6} email={customer.email!r}  phone={customer.phone!r}")
            print(f"  {'':<6} email_encrypted={stored[:40]}...  email_bidx={index[:22]}...")

        print("\nLook customers up by email or phone, in any formatting:")
        for condition, shown in [
            (Customer.email == "  ADA@Example.COM ", "Customer.email == '  ADA@Example.COM '"),
            (Customer.email == "grace.hopper@example.com", "Customer.email == 'grace.hop...'"),
            (Customer.phone == "+15550100000", "Customer.phone == '+15550100000'"),
            (
                Customer.email.in_(["nobody@example.com", "ada@example.com"]),
                "Customer.email.in_([...])",
            ),
        ]:
            print(f"  {shown:<42} -> {find(session, condition)}")
        where = str(select(Customer.id).where(Customer.email == "x").compile(engine))
        print(f"  the SQL compares the blind index: {where.splitlines()[-1].strip()}")

        print("\nOne email per station (unique index on station_id, email_bidx):")
        station_ids = dict(session.execute(select(Station.code, Station.id)).all())
        for code in ("NORTH", "SOUTH"):
            session.add(
                Customer(
                    station_id=station_ids[code],
                    first_name="Ada2",
                    last_name="Again",
                    email=" Ada@Example.com",
                    timezone="UTC",
                )
            )
            try:
                session.commit()
                print(f"  ' Ada@Example.com' again at {code:<5} -> accepted (another station)")
            except IntegrityError:
                session.rollback()
                print(f"  ' Ada@Example.com' again at {code:<5} -> rejected by the unique index")

    rotate_index_key(engine)


def rotate_index_key(engine: Engine) -> None:
    """Rotate the blind-index key while lookups keep working, as docs/blind-indexes.md says."""
    print("\nRotating the blind-index key without downtime:")
    old = current_keyring("blind-index")
    new = Key("bidx2", generate_key("hmac-sha256"), purpose="blind-index")
    sa_fieldcrypt.configure(
        purpose="blind-index", keyring=Keyring([new, *old], purpose="blind-index")
    )
    with Session(engine) as session:
        found = find(session, Customer.email == "ada@example.com")
    print(f"  1. new key first, old keys still match: email lookup finds {found}")
    indexes = find_indexes(Base)
    report = reindex(engine, indexes, batch_size=2)
    print(f"  2. reindex: {report.scanned} rows read, {report.written} rewritten")
    stale = sum(index.stale for index in status(engine, indexes=indexes).indexes)
    sa_fieldcrypt.configure(purpose="blind-index", keyring=Keyring([new], purpose="blind-index"))
    with Session(engine) as session:
        found = find(session, Customer.email == "ada@example.com")
    print(f"  3. {stale} rows left under old keys; old keys retired: lookup finds {found}")


if __name__ == "__main__":
    main()

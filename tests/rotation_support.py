"""Models for tests/test_rotation.py, importable by name (worker processes import them again),
and the child process its SIGKILL test runs: ``python rotation_support.py URL TABLE PAUSE_AT``.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    EncryptedJSON,
    EncryptedText,
    encrypted_hybrid,
    jobs,
    normalize_email,
)
from sa_fieldcrypt.legacy import BareFernet
from sa_fieldcrypt.types import COLUMN_INFO_KEY


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """Encrypted columns declared with the library's types, and an `onupdate` column."""

    __tablename__ = "fc_rot_customers"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str | None] = mapped_column("email_encrypted", EncryptedText())
    prefs: Mapped[Any] = mapped_column(EncryptedJSON(), nullable=True)
    name: Mapped[str | None] = mapped_column(String(50))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, onupdate=datetime.now)


class Booking(Base):
    """Ciphertext in a plain Text column, as sqlacodegen writes it, marked through info."""

    __tablename__ = "fc_rot_bookings"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    phone_encrypted: Mapped[str | None] = mapped_column(
        Text, info={COLUMN_INFO_KEY: EncryptedText()}
    )
    notes: Mapped[str | None] = mapped_column(Text)


class Subscriber(Base):
    """A blind index over a ciphertext column, for reindexing in worker processes and shards."""

    __tablename__ = "fc_rot_subscribers"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )


class Station(Base):
    """Nothing encrypted."""

    __tablename__ = "fc_rot_stations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


audit = Table(
    "fc_rot_audit",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("detail", EncryptedText()),
)


def _legacy_emails(name: str) -> MetaData:
    """A table ``name`` (id, email) whose email holds tokens and bare Fernet tokens, as declared.

    Each in a MetaData of its own, which ``--models rotation_support:NAME`` names alone: the
    module's own models (``--models rotation_support``) do not include them.
    """
    metadata = MetaData()
    schema, _, table = name.rpartition(".")
    Table(
        table,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", EncryptedText(legacy=[BareFernet()])),
        schema=schema or None,
    )
    return metadata


#: test_rotation.py's tables of mixed values, and of legacy tokens.
mixed_emails = _legacy_emails("fc_rot_mixed")
legacy_emails = _legacy_emails("fc_rot_legacy")


class _Announce(jobs.RunListener):
    def batch(self, label: str, rows: int, report: jobs.JobReport) -> None:
        print(f"committed {report.scanned}", flush=True)


def child(url: str, table_name: str, pause_at: int) -> None:
    """Rotate ``table_name``.email in batches of 10; with ``pause_at`` > 0, block between the
    read and the write of that batch until killed."""
    engine = create_engine(url, hide_parameters=True)
    column = jobs.reflect_column(engine, table_name, "email", EncryptedText(legacy=[BareFernet()]))
    seen = 0

    def before_write(conn: Any, keys: list[tuple[Any, ...]]) -> None:
        nonlocal seen
        seen += 1
        if seen == pause_at:
            print("paused", flush=True)
            sys.stdin.readline()

    jobs.rotate(engine, [column], batch_size=10, listener=_Announce(), before_write=before_write)
    print("finished", flush=True)


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))

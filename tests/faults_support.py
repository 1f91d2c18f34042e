"""The model and the child processes of tests/test_faults.py.

``python faults_support.py writer URL SEED`` updates rows through the ORM until its stdin
closes, then prints, as JSON, how many updates it committed and the last version it committed
to each row. ``python faults_support.py rotate URL BATCH_SIZE`` rotates the model's encrypted
column with :func:`sa_fieldcrypt.jobs.rotate`, printing a line after each committed batch.
Both read their keys from ``FIELDCRYPT_KEYS`` and ``FIELD_ENCRYPTION_KEY``, as an application
does.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from typing import Any

from sqlalchemy import Text, create_engine, not_, or_, select, type_coerce
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import EncryptedText, jobs
from sa_fieldcrypt.config import current_keyring
from sa_fieldcrypt.legacy import BareFernet

#: The primary key id the test configures, and the one an application instance that has not
#: yet picked up the new primary key still encrypts with.
PRIMARY_KEY_ID = "k3"
OLD_INSTANCE_KEY_ID = "k2"
#: Share of the writer's updates made by an old instance (values under ``k2``, which the
#: rotation must then move again).
OLD_INSTANCE_SHARE = 0.3
#: Share of the writer's updates aimed at the rows the rotation is about to reach.
FRONTIER_SHARE = 0.5
#: Pause between two updates, so the writer leaves CPU to the rotation on a small machine.
WRITER_PAUSE = 0.004


class Base(DeclarativeBase):
    pass


class Patient(Base):
    """One encrypted column, which still holds bare Fernet tokens from before the library
    (declared), and the version of its value in a plain column."""

    __tablename__ = "fc_fault_patients"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(EncryptedText(legacy=[BareFernet()]))
    version: Mapped[int] = mapped_column(default=0)


def email_of(row_id: int, version: int) -> str:
    """The plaintext a row holds at a version: every version of every row differs."""
    return f"patient{row_id}.v{version}@clinic.example"


def _frontier(session: Session) -> list[int]:
    """The first rows that still hold a token from before the run (under k1, or legacy).

    The rotation walks the table in primary-key order, so these are the rows it is reading
    or about to read; values the writer wrote (under k3 or k2) are left out.
    """
    stored = type_coerce(Patient.email, Text())
    done = or_(stored.like(f"fc1:{PRIMARY_KEY_ID}:%"), stored.like(f"fc1:{OLD_INSTANCE_KEY_ID}:%"))
    stmt = select(Patient.id).where(not_(done)).order_by(Patient.id).limit(20)
    return list(session.scalars(stmt))


def writer(url: str, seed: int) -> None:
    """Update random rows, half of them at the rotation's frontier, until stdin closes."""
    rng = random.Random(seed)  # noqa: S311 - it picks rows, not keys
    engine = create_engine(url, hide_parameters=True)
    current = current_keyring()
    old_instance = current.with_primary(OLD_INSTANCE_KEY_ID)
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    last: dict[int, int] = {}
    writes = 0
    with Session(engine) as session:
        ids = list(session.scalars(select(Patient.id)))
        while not stop.is_set():
            hot = _frontier(session) if rng.random() < FRONTIER_SHARE else []
            row_id = rng.choice(hot or ids)
            old = rng.random() < OLD_INSTANCE_SHARE
            sa_fieldcrypt.configure(keyring=old_instance if old else current)
            patient = session.get(Patient, row_id)
            version = patient.version + 1
            patient.version = version
            patient.email = email_of(row_id, version)
            session.commit()
            last[row_id] = version
            writes += 1
            time.sleep(WRITER_PAUSE)
    engine.dispose()
    print(json.dumps({"writes": writes, "last": last}), flush=True)


class _Announce(jobs.RunListener):
    """Logs as the default listener does, and prints a line per committed batch."""

    def started(self, label: str, total: int) -> None:
        super().started(label, total)
        print(f"started {total}", flush=True)

    def batch(self, label: str, rows: int, report: jobs.JobReport) -> None:
        super().batch(label, rows, report)
        print(f"batch {report.scanned} {report.written} {report.concurrent}", flush=True)


def rotate(url: str, batch_size: int) -> None:
    """Rotate the encrypted columns of this module, logging at DEBUG on stderr."""
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    engine = create_engine(url, hide_parameters=True)
    columns = jobs.find_columns(sys.modules[__name__])
    report = jobs.rotate(engine, columns, batch_size=batch_size, listener=_Announce())
    engine.dispose()
    print(f"finished {report.written} {report.concurrent} {report.failed}", flush=True)


def main(argv: list[str]) -> None:
    """Run the child process ``argv`` names."""
    command, url, number = argv
    commands: dict[str, Any] = {"writer": writer, "rotate": rotate}
    commands[command](url, int(number))


if __name__ == "__main__":
    # Run from the module imported by name, so that its classes are the ones that
    # `fieldcrypt rotate --models faults_support` finds.
    import faults_support

    faults_support.main(sys.argv[1:])

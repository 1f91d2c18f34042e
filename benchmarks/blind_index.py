"""Cost of blind indexes: per value, per assignment, and reindex throughput on SQLite.

Run with ``python benchmarks/blind_index.py`` (``make bench`` runs it too). Figures are medians
of several repetitions in this one run; compare the ratios, not the absolute times.
"""

from __future__ import annotations

import hmac
import platform
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import sqlalchemy
from sqlalchemy import String, Text, create_engine, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    EncryptedText,
    Key,
    Keyring,
    encrypted_hybrid,
    encrypted_values,
    generate_key,
    normalize_email,
)
from sa_fieldcrypt.jobs import find_indexes, reindex

EMAIL = " Ada.Lovelace@Analytical-Engine.example"
REPEATS = 7
NUMBER = 5000
REINDEX_ROWS = 20_000


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )


def per_call_us(func: Callable[[], object]) -> float:
    """Median time of one call, in microseconds."""
    runs = timeit.repeat(func, number=NUMBER, repeat=REPEATS)
    return statistics.median(runs) / NUMBER * 1e6


def main() -> None:
    sa_fieldcrypt.configure(keyring=Keyring({"k1": generate_key()}))
    one = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    two = Keyring(
        [Key("b2", generate_key("hmac-sha256"), purpose="blind-index"), *one], purpose="blind-index"
    )
    sa_fieldcrypt.configure(purpose="blind-index", keyring=one)

    index = BlindIndex("email_bidx", normalizer=normalize_email, keyring=one, name="c.email_bidx")
    index_two = BlindIndex(
        "email_bidx", normalizer=normalize_email, keyring=two, name="c.email_bidx"
    )
    # The documented column-key derivation (docs/blind-indexes.md): HKDF info = prefix + name.
    derived = one.primary.derive(b"sa-fieldcrypt blind index v1\x00c.email_bidx")
    normalized = normalize_email(EMAIL) or ""
    bind = EncryptedText(context="c.email_encrypted").bind_processor(sqlite.dialect())
    if bind is None:
        raise RuntimeError("EncryptedText must have a bind processor")
    customer = Customer(id=1)

    def assign() -> None:
        customer.email = EMAIL

    rows = {
        "raw hmac.digest (normalized value)": per_call_us(
            lambda: hmac.digest(derived, normalized.encode(), "sha256").hex()
        ),
        "BlindIndex.compute, 1 key": per_call_us(lambda: index.compute(EMAIL)),
        "BlindIndex.candidates, 2 keys": per_call_us(lambda: index_two.candidates(EMAIL)),
        "EncryptedText bind (encrypt only)": per_call_us(lambda: bind(EMAIL)),
        "hybrid assignment (encrypt + index)": per_call_us(assign),
        "Customer.email == value (build clause)": per_call_us(lambda: Customer.email == EMAIL),
        "Customer.email_bidx == value (plain column)": per_call_us(
            lambda: Customer.email_bidx == EMAIL
        ),
    }

    print(
        f"sa-fieldcrypt {sa_fieldcrypt.__version__}, SQLAlchemy {sqlalchemy.__version__}, "
        f"Python {platform.python_version()}"
    )
    print(f"median of {REPEATS} x {NUMBER} calls, value of {len(EMAIL)} characters\n")
    for name, us in rows.items():
        print(f"  {name:<42} {us:8.2f} us")
    overhead = rows["BlindIndex.compute, 1 key"] / rows["raw hmac.digest (normalized value)"]
    share = rows["hybrid assignment (encrypt + index)"] / rows["EncryptedText bind (encrypt only)"]
    print("\nratios:")
    print(f"  compute / raw HMAC                       {overhead:5.2f}x")
    clause = (
        rows["Customer.email == value (build clause)"]
        / rows["Customer.email_bidx == value (plain column)"]
    )
    print(f"  hybrid assignment / encryption alone     {share:5.2f}x")
    print(f"  hybrid clause / plain column clause      {clause:5.2f}x")

    with tempfile.TemporaryDirectory() as directory:
        engine = create_engine(f"sqlite:///{Path(directory) / 'bench.sqlite3'}")
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(Customer.__table__),
                [
                    encrypted_values(Customer, id=i, email=f"user{i}@example.com")
                    for i in range(REINDEX_ROWS)
                ],
            )
        sa_fieldcrypt.configure(purpose="blind-index", keyring=two)
        started = time.perf_counter()
        report = reindex(engine, find_indexes(Base), batch_size=1000)
        elapsed = time.perf_counter() - started
        rerun_started = time.perf_counter()
        reindex(engine, find_indexes(Base), batch_size=1000)
        rerun = time.perf_counter() - rerun_started
        engine.dispose()
    print(f"\nreindex on SQLite, {REINDEX_ROWS} rows, batches of 1000 (one run):")
    print(f"  rewrite under a new key   {report.written / elapsed:9.0f} rows/s")
    print(f"  rerun (nothing to write)  {REINDEX_ROWS / rerun:9.0f} rows/s")


if __name__ == "__main__":
    main()

"""Cost of each blind-index kind against a plain indexed column: lookups and inserts.

Run with ``python benchmarks/index_kinds.py`` (``make bench`` runs it too; ``--rows`` for a
smaller table, ``--help`` for the options). On SQLite (a file
database in a temporary directory) and, when it is reachable, on PostgreSQL
(``FIELDCRYPT_BENCH_POSTGRES_URL``, else ``FIELDCRYPT_TEST_POSTGRES_URL``, else the test
default), in tables named ``fc_bench_*`` that it creates and drops.

- Lookups: one table of 100,000 rows, each with a phone number and an email address, with a
  database index on each of: a plain Text column holding the phone number as written, a
  full-size whole-value index (``normalize_phone``), a last-four index (``last_digits(4)``,
  10 rows per value), a domain index (``email_domain``, 1,000 domains: 100 rows per value),
  a compound index (an SMS consent flag with the last four digits; every other row
  consents, and looking up even last fours with consent returns 10 rows), and
  the whole-value index truncated to 16 bits (about 1.5 candidates per value) and to 8 bits
  (about 390), and a substring index of the phone number (``SubstringIndex``, 16 bits: 15
  trigram values per row in its side table), searched with ``contains()`` for the number's
  last six characters, such as ``"1-2345"``, a term of typical length that one row holds
  (some 2,000 side rows hold one of its four trigram values; a term of commoner trigrams,
  such as ``"(555)"``, reads more of them). For each kind: the median time of an ORM
  ``select(Customer).where(...)`` that loads its rows (decrypting both encrypted attributes
  of each, and for the truncated and substring ones decrypting every candidate to drop the
  false positives), in a fresh session, over
  ``LOOKUPS`` different terms, the kinds taking turns term by term so that a change of load
  weighs on all alike; and its ratio to the plain column's lookup, which returns one
  row. A kind that returns more rows pays for decrypting them: the rows column says how many.
- Inserts: for each index kind alone, and for none (the encrypted value only), the time per
  row of adding ``INSERT_ROWS`` objects through the ORM in one flush and committing, median
  of ``INSERT_REPEATS`` runs in a fresh table (the kinds taking turns); and its ratio to no
  index. The plain column's row stores the phone number in plaintext, for scale; the
  substring index's row writes the phone number's trigram values to its side table too.
- The slow index (``Scrypt()``, the defaults): the time of one index value against one
  HMAC, and the insert cost of ``SLOW_INSERT_ROWS`` rows (one scrypt each);
  ``benchmarks/slow_index.py`` measures other parameters. It has no lookup row: filling
  100,000 rows would hash 100,000 times, and its lookup costs a full-size one plus one hash
  per active index key.

Figures are medians of this one run; compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, Index, String, Text, create_engine, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    Keyring,
    Scrypt,
    SubstringIndex,
    compound,
    compound_index,
    email_domain,
    encrypted_hybrid,
    encrypted_values,
    generate_key,
    last_digits,
    normalize_phone,
)
from sa_fieldcrypt.jobs import find_indexes, find_substring_indexes

ROWS = 100_000
LOOKUPS = 41
INSERT_ROWS = 2000
SLOW_INSERT_ROWS = 20
INSERT_REPEATS = 7
DOMAINS = 1000
POSTGRES = (
    "FIELDCRYPT_BENCH_POSTGRES_URL",
    "FIELDCRYPT_TEST_POSTGRES_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
_CHUNK = 5000


def phone(i: int) -> str:
    """Row ``i``'s phone number, as a person writes it: distinct, last four repeating."""
    n = f"{i:07d}"
    return f"+1 (555) {n[:3]}-{n[3:]}"


def email(i: int) -> str:
    """Row ``i``'s email address: at one of ``DOMAINS`` domains."""
    return f"Customer.{i}@Company-{i % DOMAINS}.example"


def domain(i: int) -> str:
    """A term for the domain of row ``i``'s email address, as a person types it."""
    return f"company-{i % DOMAINS}.EXAMPLE"


def consent(i: int) -> bool:
    """Row ``i``'s SMS consent: every other row."""
    return i % 2 == 0


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """The lookup table: every index kind at once, each with a database index."""

    __tablename__ = "fc_bench_index_kinds"
    __table_args__ = tuple(
        Index(f"ix_fc_bench_index_kinds_{name}", name)
        for name in (
            *("plain", "phone_bidx", "phone_last4", "phone_b16", "phone_b8"),
            *("domain_bidx", "sms_last4_bidx"),
        )
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    plain: Mapped[str | None] = mapped_column(Text)
    consent_sms: Mapped[bool] = mapped_column(default=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_last4: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_b16: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_b8: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "phone_encrypted",
        blind_index=[
            BlindIndex("phone_bidx", normalizer=normalize_phone),
            BlindIndex("phone_last4", normalizer=last_digits(4)),
            BlindIndex("phone_b16", normalizer=normalize_phone, bits=16),
            BlindIndex("phone_b8", normalizer=normalize_phone, bits=8),
        ],
        substring=SubstringIndex("fc_bench_index_kinds_trigrams", bits=16),
    )
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    domain_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("domain_bidx", normalizer=email_domain)
    )
    sms_last4_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    sms_last4 = compound_index(
        BlindIndex("sms_last4_bidx", normalizer=compound(consent_sms=None, phone=last_digits(4)))
    )


def last4(i: int) -> str:
    """The last four digits of row ``i``'s phone number."""
    return f"{i % 10_000:04d}"


def lookup_kinds(rows: int) -> list[tuple[str, int, Callable[[int], Any]]]:
    """Each lookup kind on a table of ``rows`` rows: its label, the rows it returns, and the
    condition for row ``i``."""
    return [
        ("plain indexed Text column", 1, lambda i: Customer.plain == phone(i)),
        ("full-size whole value", 1, lambda i: Customer.phone == phone(i)),
        (
            "last four digits",
            rows // 10_000,
            lambda i: Customer.phone.index("phone_last4") == last4(i),
        ),
        (
            "email domain",
            rows // DOMAINS,
            lambda i: Customer.email.index("domain_bidx") == domain(i),
        ),
        (
            "compound (consent, last four)",
            rows // 10_000,
            lambda i: Customer.sms_last4 == (True, last4(2 * i)),
        ),
        ("truncated, 16 bits", 1, lambda i: Customer.phone.index("phone_b16") == phone(i)),
        ("truncated, 8 bits", 1, lambda i: Customer.phone.index("phone_b8") == phone(i)),
        # The last six characters hold the row number's last five digits: one row's own.
        ("substring, 6-character term", 1, lambda i: Customer.phone.contains(phone(i)[-6:])),
    ]


SLOW = "slow (Scrypt() defaults)"
SUBSTRING = "substring (trigram side table)"


def insert_models() -> dict[str, type[Base]]:
    """One small table per insert kind: the encrypted phone (and email) and one index."""
    kinds: dict[str, dict[str, Any]] = {
        "no index (encrypted value only)": {},
        "plain Text column (plaintext)": {"plain": mapped_column(Text, index=True)},
        "full-size whole value": {"index": BlindIndex("bidx", normalizer=normalize_phone)},
        "last four digits": {"index": BlindIndex("bidx", normalizer=last_digits(4))},
        "email domain": {"email_index": BlindIndex("bidx", normalizer=email_domain)},
        "compound (consent, last four)": {
            "compound": BlindIndex(
                "bidx", normalizer=compound(consent_sms=None, phone=last_digits(4))
            )
        },
        "truncated, 16 bits": {"index": BlindIndex("bidx", normalizer=normalize_phone, bits=16)},
        "truncated, 8 bits": {"index": BlindIndex("bidx", normalizer=normalize_phone, bits=8)},
        SLOW: {"index": BlindIndex("bidx", normalizer=normalize_phone, slow=Scrypt())},
        SUBSTRING: {"substring": True},
    }
    models: dict[str, type[Base]] = {}
    for n, (label, spec) in enumerate(kinds.items()):
        attrs: dict[str, Any] = {
            "__tablename__": f"fc_bench_index_insert_{n}",
            "id": mapped_column(sqlalchemy.Integer, primary_key=True, autoincrement=False),
            "consent_sms": mapped_column(sqlalchemy.Boolean, default=False),
            "phone_encrypted": mapped_column(Text),
            "email_encrypted": mapped_column(Text),
        }
        if "plain" in spec:
            attrs["plain"] = spec["plain"]
        else:  # the baseline's column stays NULL: only the index's cost differs
            attrs["bidx"] = mapped_column(String(BLIND_INDEX_LENGTH), index=True)
        substring = (
            SubstringIndex(f"fc_bench_index_insert_{n}_trigrams", bits=16)
            if "substring" in spec
            else None
        )
        attrs["phone"] = encrypted_hybrid(
            "phone_encrypted", blind_index=spec.get("index"), substring=substring
        )
        attrs["email"] = encrypted_hybrid("email_encrypted", blind_index=spec.get("email_index"))
        if "compound" in spec:
            attrs["sms_last4"] = compound_index(spec["compound"])
        models[label] = type(f"Insert{n}", (Base,), attrs)
    if "bidx" in models["no index (encrypted value only)"].__table__.c:
        # The baseline has an unused index column too, so only the index's cost differs.
        pass
    return models


INSERT_MODELS = insert_models()


def tables_of(model: type[Base]) -> list[sqlalchemy.Table]:
    """A model's table and the side tables of its substring indexes, in creation order."""
    own: sqlalchemy.Table = model.__table__  # type: ignore[assignment]
    return [own, *(s.side for s in find_substring_indexes(model))]


def fill(engine: Engine, count: int) -> None:
    """Create the lookup table and insert ``count`` rows, in chunks, through Core.

    Core runs no mapper events, so the substring index's side rows are written here, from
    the index's own trigram values.
    """
    [sms] = [c for c in find_indexes(Customer) if c.compound]
    [trigrams] = find_substring_indexes(Customer)
    [owner] = trigrams.owner
    for table in tables_of(Customer):
        table.create(engine)
    for start in range(0, count, _CHUNK):
        rows = []
        side = []
        for i in range(start, min(start + _CHUNK, count)):
            row = encrypted_values(
                Customer, id=i, plain=phone(i), consent_sms=consent(i), phone=phone(i)
            )
            row.update(encrypted_values(Customer, email=email(i)))
            row["sms_last4_bidx"] = sms.blind_index.compute((consent(i), phone(i)))
            rows.append(row)
            side += [
                {owner.name: i, trigrams.trigram.name: value}
                for value in sorted(trigrams.substring.trigram_values(phone(i)))
            ]
        with engine.begin() as conn:
            conn.execute(insert(Customer), rows)
            conn.execute(insert(trigrams.side), side)


@contextmanager
def no_gc(*, collect: bool = True) -> Iterator[None]:
    """Collect garbage first (unless not ``collect``), then none while timing, as ``timeit``.

    Otherwise a collection that the objects of one lookup made due lands in the next one.
    """
    if collect:
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def lookup_s(engine: Engine, condition: Callable[[int], Any], rows: int, i: int) -> float:
    """Time of one ORM lookup, for row ``i``'s term, that loads its rows, in seconds."""
    with Session(engine) as session:
        stmt = select(Customer).where(condition(i))
        with no_gc(collect=False):
            started = time.perf_counter()
            found = session.scalars(stmt).all()
            elapsed = time.perf_counter() - started
    if len(found) != rows:
        raise RuntimeError(f"expected {rows} rows, got {len(found)}")
    return elapsed


def lookup_ms(engine: Engine, count: int) -> dict[str, tuple[int, float]]:
    """Each kind's rows and median lookup time over ``LOOKUPS`` terms, in milliseconds.

    The kinds take turns, term by term, so that a change of load weighs on all of them, in an
    order shuffled each turn: no kind always follows the one that churns the caches (the
    8-bit index reads 390 rows). Garbage is collected between turns only, since a collection
    before each lookup would leave the processor's caches cold for it.
    """
    kinds = lookup_kinds(count)
    times: dict[str, list[float]] = {label: [] for label, _, _ in kinds}
    chooser = random.Random(7)
    for turn in range(LOOKUPS + 1):
        i = chooser.randrange(count)
        gc.collect()
        for label, rows, condition in chooser.sample(kinds, len(kinds)):
            elapsed = lookup_s(engine, condition, rows, i)
            if turn:  # the first warms the statement cache
                times[label].append(elapsed)
    return {label: (rows, statistics.median(times[label]) * 1000) for label, rows, _ in kinds}


def insert_s(engine: Engine, model: type[Base], count: int) -> float:
    """Time of an ORM insert of ``count`` objects into a fresh table, in seconds."""
    table = model.__table__
    tables = tables_of(model)
    for each in reversed(tables):
        each.drop(engine, checkfirst=True)
    for each in tables:
        each.create(engine)
    with Session(engine) as session:
        objects = []
        for i in range(count):
            obj = model(id=i, consent_sms=consent(i), phone=phone(i), email=email(i))
            if "plain" in table.c:
                obj.plain = phone(i)  # type: ignore[attr-defined]
            objects.append(obj)
        with no_gc():
            started = time.perf_counter()
            session.add_all(objects)
            session.commit()
            elapsed = time.perf_counter() - started
    for each in reversed(tables):
        each.drop(engine)
    return elapsed


def insert_us(engine: Engine) -> dict[str, float]:
    """Each insert kind's median time per row over ``INSERT_REPEATS`` runs, in microseconds.

    The kinds take turns, run by run, as the lookups do.
    """
    counts = {label: SLOW_INSERT_ROWS if label == SLOW else INSERT_ROWS for label in INSERT_MODELS}
    times: dict[str, list[float]] = {label: [] for label in INSERT_MODELS}
    for _ in range(INSERT_REPEATS):
        for label, model in INSERT_MODELS.items():
            times[label].append(insert_s(engine, model, counts[label]) / counts[label])
    return {label: statistics.median(runs) * 1e6 for label, runs in times.items()}


def bench(name: str, engine: Engine, count: int) -> None:
    """Print the lookup and insert tables for one database, on ``count`` rows."""
    # Side tables first: they refer to their owners.
    tables = [t for m in (Customer, *INSERT_MODELS.values()) for t in reversed(tables_of(m))]
    for table in tables:
        table.drop(engine, checkfirst=True)
    try:
        started = time.perf_counter()
        fill(engine, count)
        print(f"\n{name}: {count:,} rows written in {time.perf_counter() - started:.0f} s")
        lookups = lookup_ms(engine, count)
        base = lookups["plain indexed Text column"][1]
        print(f"  lookup (median of {LOOKUPS} terms)    rows       ms   ratio")
        for label, (rows, ms) in lookups.items():
            print(f"  {label:<32} {rows:5d} {ms:8.3f} {ms / base:6.1f}x")
        inserts = insert_us(engine)
        none = inserts["no index (encrypted value only)"]
        print(f"  insert ({INSERT_ROWS} rows, ORM flush)       us/row    ratio")
        for label, us in inserts.items():
            print(f"  {label:<32} {us:10.1f} {us / none:7.2f}x")
    finally:
        for table in tables:
            table.drop(engine, checkfirst=True)
        engine.dispose()


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    """A SQLite file database in a temporary directory."""
    with tempfile.TemporaryDirectory() as directory:
        engine = create_engine(f"sqlite:///{Path(directory) / 'bench.sqlite3'}")
        try:
            yield engine
        finally:
            engine.dispose()


def postgres_engine() -> Engine | None:
    """The PostgreSQL server to benchmark against, or None when it cannot be reached."""
    bench_var, test_var, default = POSTGRES
    url = os.environ.get(bench_var) or os.environ.get(test_var) or default
    engine = create_engine(url, hide_parameters=True)
    try:
        with engine.connect():
            pass
    except (OperationalError, ImportError) as exc:
        print(f"\nPostgreSQL not reachable, skipped ({type(exc).__name__})")
        engine.dispose()
        return None
    return engine


def rows_option(text: str) -> int:
    """``--rows``: a multiple of 10,000 up to ``ROWS``, so that every lookup kind returns
    the rows it says (the last four digits repeat every 10,000 rows; the substring term
    holds five digits of the row number)."""
    count = int(text)
    if not 10_000 <= count <= ROWS or count % 10_000:
        raise argparse.ArgumentTypeError(f"a multiple of 10,000 from 10,000 to {ROWS:,}")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Cost of each blind-index kind against a plain indexed column: lookups "
        "and inserts, on SQLite and PostgreSQL (tables fc_bench_*)."
    )
    parser.add_argument(
        "--rows",
        type=rows_option,
        default=ROWS,
        help=f"rows of the lookup table (default {ROWS:,}; a multiple of 10,000)",
    )
    count = parser.parse_args().rows
    sa_fieldcrypt.configure(keyring=Keyring({"k1": generate_key()}))
    sa_fieldcrypt.configure(
        purpose="blind-index",
        keyring=Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index"),
    )
    print(
        f"sa-fieldcrypt {sa_fieldcrypt.__version__}, SQLAlchemy {sqlalchemy.__version__}, "
        f"Python {platform.python_version()}, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    slow = BlindIndex("bidx", normalizer=normalize_phone, slow=Scrypt(), name="fc_bench.bidx")
    fast = BlindIndex("bidx", normalizer=normalize_phone, name="fc_bench.bidx")
    hash_ms = {
        label: statistics.median(timeit.repeat(lambda i=i: i.compute(phone(1)), number=n, repeat=7))
        / n
        * 1000
        for label, i, n in (("full-size HMAC", fast, 2000), (f"slow, {Scrypt().label}", slow, 3))
    }
    print("one index value (median of 7):")
    for label, ms in hash_ms.items():
        print(f"  {label:<32} {ms:10.3f} ms")
    started = time.perf_counter()
    with sqlite_engine() as engine:
        bench("SQLite (file)", engine, count)
    engine_pg = postgres_engine()
    if engine_pg is not None:
        version = ".".join(map(str, engine_pg.dialect.server_version_info or ()))
        bench(f"PostgreSQL {version}", engine_pg, count)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()

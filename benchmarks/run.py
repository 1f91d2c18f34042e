"""Benchmarks of sa-fieldcrypt against raw ``cryptography`` and sqlalchemy-utils.

Run with ``make bench`` (it installs the ``bench`` extra), or ``python benchmarks/run.py``;
``--help`` lists the options. One run measures everything and prints a table per section, then
the issue's targets with the measured ratio beside each; the same figures go to a JSON file
under ``benchmarks/results/``.

Every ratio is taken inside this one run from paired measurements: the subject and its
baseline are timed back to back, several times, and the median of those ratios is reported, so
a machine that gets busier halfway through does not bend the result. Absolute times (medians
too) are for orientation only.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import cryptography
import sqlalchemy
from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, registry
from sqlalchemy.types import TypeEngine

import sa_fieldcrypt
from sa_fieldcrypt import EncryptedBytes, EncryptedJSON, EncryptedText, Keyring, generate_key

try:
    import sqlalchemy_utils
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import FernetEngine
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("the benchmarks compare with sqlalchemy-utils: pip install -e '.[dev]'")

RESULTS_DIR = Path(__file__).parent / "results"
EMAIL = "ada.lovelace@analytical-engine.example"  # 38 bytes, like a real email address
JSON_VALUE = {"email": EMAIL, "verified": True, "lang": "en"}
KEY_COUNTS = (1, 5, 20)
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

Timer = Callable[[], object]


# -- measuring -------------------------------------------------------------------------------


def paired(baseline: Timer, subject: Timer, *, rounds: int, number: int) -> dict[str, float]:
    """Time ``baseline`` and ``subject`` back to back ``rounds`` times.

    Returns the median per-call time of each, in microseconds, and the median of the
    per-round ratios subject / baseline.
    """
    base_times, subject_times, ratios = [], [], []
    for _ in range(rounds):
        b = timeit.timeit(baseline, number=number) / number
        s = timeit.timeit(subject, number=number) / number
        base_times.append(b)
        subject_times.append(s)
        ratios.append(s / b)
    return {
        "baseline_us": statistics.median(base_times) * 1e6,
        "us": statistics.median(subject_times) * 1e6,
        "ratio": statistics.median(ratios),
    }


class Report:
    """Rows of every section, printed as tables and written as JSON."""

    def __init__(self, args: argparse.Namespace):
        self.started = datetime.now(UTC)
        self.meta: dict[str, Any] = {
            "started": self.started.isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "versions": {
                "sa-fieldcrypt": sa_fieldcrypt.__version__,
                "cryptography": cryptography.__version__,
                "openssl": _openssl_version(),
                "sqlalchemy": sqlalchemy.__version__,
                "sqlalchemy-utils": sqlalchemy_utils.__version__,
                "python": platform.python_version(),
            },
            "machine": {
                "platform": platform.platform(),
                "processor": platform.machine(),
                "cpus": os.cpu_count(),
            },
            "settings": {
                "rounds": args.rounds,
                "number": args.number,
                "rows": args.rows,
                "bulk_repeats": args.bulk_repeats,
            },
        }
        self.sections: dict[str, list[dict[str, Any]]] = {}
        self.notes: list[str] = []
        self.targets: list[dict[str, Any]] = []

    def add(self, section: str, **row: Any) -> dict[str, Any]:
        self.sections.setdefault(section, []).append(row)
        return row

    def target(self, name: str, measured: float, limit: float, *, at_least: bool = False) -> None:
        met = measured >= limit if at_least else measured <= limit
        self.targets.append(
            {
                "target": name,
                "measured": round(measured, 4),
                "limit": f"{'>=' if at_least else '<='} {limit:.2f}",
                "met": met,
            }
        )

    def header(self) -> None:
        versions = ", ".join(f"{k} {v}" for k, v in self.meta["versions"].items())
        machine = self.meta["machine"]
        print(versions)
        print(f"{machine['platform']}, {machine['cpus']} CPUs, started {self.meta['started']}")
        settings = self.meta["settings"]
        print(
            f"per value: median of {settings['rounds']} paired rounds x {settings['number']} "
            f"calls; bulk: median of {settings['bulk_repeats']} runs of {settings['rows']:,} "
            "rows\n"
        )

    def print_section(self, section: str, columns: list[tuple[str, str, str]]) -> None:
        """Print one section as a table; ``columns`` are (title, row key, format)."""
        rows = self.sections.get(section, [])
        cells = [[title for title, _, _ in columns]]
        for row in rows:
            cells.append([_cell(row.get(key), fmt) for _, key, fmt in columns])
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        print(f"== {section}")
        for n, line in enumerate(cells):
            print(
                "  "
                + "  ".join(
                    cell.ljust(w) if i == 0 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(line, widths, strict=True))
                )
            )
            if n == 0:
                print("  " + "  ".join("-" * w for w in widths))
        print(flush=True)

    def finish(self, output: Path | None) -> Path:
        print("== targets (from this run)")
        width = max(len(t["target"]) for t in self.targets)
        for t in self.targets:
            verdict = "met" if t["met"] else "MISSED"
            print(f"  {t['target']:<{width}}  {t['measured']:6.3f}x  ({t['limit']:<7})  {verdict}")
        for note in self.notes:
            print(f"  note: {note}")
        elapsed = (datetime.now(UTC) - self.started).total_seconds()
        self.meta["elapsed_s"] = round(elapsed, 1)
        if output is None:
            stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
            output = RESULTS_DIR / f"bench-{stamp}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "meta": self.meta,
            "sections": self.sections,
            "targets": self.targets,
            "notes": self.notes,
        }
        output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\n{elapsed:.0f} s; results written to {output}")
        return output


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "s":
        return str(value)
    return format(value, fmt)


def _openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


# -- per value -------------------------------------------------------------------------------


def bench_per_value(report: Report, rounds: int, number: int) -> None:
    """Bind and result cost of each type and key kind, vs raw Fernet on the same bytes.

    The aes-gcm-siv rows are also paired with raw ``AESGCMSIV`` (a fresh nonce per value) on
    the same bytes: the floor that key kind can reach.
    """
    dialect = sqlite.dialect()
    fernet_key = generate_key()
    aead_key = generate_key("aes-gcm-siv")
    fernet = Fernet(fernet_key)
    aead = AESGCMSIV(os.urandom(32))
    nonce = os.urandom(12)
    cases: list[tuple[str, Callable[..., Any], Any, bytes]] = [
        ("EncryptedText", EncryptedText, EMAIL, EMAIL.encode()),
        ("EncryptedBytes", EncryptedBytes, EMAIL.encode(), EMAIL.encode()),
        (
            "EncryptedJSON",
            EncryptedJSON,
            JSON_VALUE,
            json.dumps(JSON_VALUE, ensure_ascii=False, separators=(",", ":")).encode(),
        ),
    ]
    section = "per value: bind (encrypt) and result (decrypt), vs raw Fernet on the same bytes"
    for type_name, type_cls, value, data in cases:
        raw_token = fernet.encrypt(data)

        def raw_encrypt(data: bytes = data) -> bytes:
            return fernet.encrypt(data)

        def raw_decrypt(token: bytes = raw_token) -> bytes:
            return fernet.decrypt(token)

        sealed = aead.encrypt(nonce, data, None)

        def raw_aead_encrypt(data: bytes = data) -> bytes:
            return aead.encrypt(os.urandom(12), data, None)

        def raw_aead_decrypt(sealed: bytes = sealed) -> bytes:
            return aead.decrypt(nonce, sealed, None)

        for kind, key in (("fernet", fernet_key), ("aes-gcm-siv", aead_key)):
            for context in ("bench.people.email", False):
                column_type = type_cls(keyring=Keyring({"k1": key}), context=context)
                bind = column_type.bind_processor(dialect)
                result = column_type.result_processor(dialect, None)
                stored = bind(value)
                if value != result(stored):
                    raise RuntimeError(f"{type_name} with a {kind} key does not round-trip")
                # Bound (to a context) is the default; context=False is what binding costs.
                name = f"{type_name}, {kind}" + ("" if context else ", context=False")
                for direction, baseline, aead_baseline, subject in (
                    ("bind", raw_encrypt, raw_aead_encrypt, lambda bind=bind, v=value: bind(v)),
                    (
                        "result",
                        raw_decrypt,
                        raw_aead_decrypt,
                        lambda result=result, s=stored: result(s),
                    ),
                ):
                    m = paired(baseline, subject, rounds=rounds, number=number)
                    if kind == "aes-gcm-siv":
                        m["vs_aead"] = paired(aead_baseline, subject, rounds=rounds, number=number)[
                            "ratio"
                        ]
                    report.add(section, subject=name, direction=direction, **m)

    # The peer: sqlalchemy-utils' Fernet engine, and how much slower it is than ours.
    data = EMAIL.encode()
    raw_token = fernet.encrypt(data)
    peer = StringEncryptedType(String, fernet_key, FernetEngine)
    peer_bind = peer.bind_processor(dialect)
    peer_result = peer.result_processor(dialect, None)
    peer_stored = peer_bind(EMAIL)
    ours = EncryptedText(keyring=Keyring({"k1": fernet_key}), context="bench.people.email")
    our_bind = ours.bind_processor(dialect)
    our_result = ours.result_processor(dialect, None)
    our_stored = our_bind(EMAIL)
    peer_name = "sqlalchemy-utils StringEncryptedType(FernetEngine)"
    for direction, raw, peer_fn, our_fn in (
        ("bind", lambda: fernet.encrypt(data), lambda: peer_bind(EMAIL), lambda: our_bind(EMAIL)),
        (
            "result",
            lambda: fernet.decrypt(raw_token),
            lambda: peer_result(peer_stored),
            lambda: our_result(our_stored),
        ),
    ):
        m = paired(raw, peer_fn, rounds=rounds, number=number)
        vs_ours = paired(our_fn, peer_fn, rounds=rounds, number=number)["ratio"]
        report.add(section, subject=peer_name, direction=direction, vs_ours=vs_ours, **m)

    # The floor an AEAD key type can reach: cryptography's AESGCMSIV with a fresh nonce.
    sealed = aead.encrypt(nonce, data, None)
    m = paired(
        lambda: fernet.encrypt(data),
        lambda: aead.encrypt(os.urandom(12), data, None),
        rounds=rounds,
        number=number,
    )
    report.add(section, subject="raw AESGCMSIV (for reference)", direction="bind", **m)
    m = paired(
        lambda: fernet.decrypt(raw_token),
        lambda: aead.decrypt(nonce, sealed, None),
        rounds=rounds,
        number=number,
    )
    report.add(section, subject="raw AESGCMSIV (for reference)", direction="result", **m)

    report.print_section(
        section,
        [
            ("subject", "subject", "s"),
            ("op", "direction", "s"),
            ("raw Fernet us", "baseline_us", ".2f"),
            ("us", "us", ".2f"),
            ("x raw Fernet", "ratio", ".2f"),
            ("x raw AESGCMSIV", "vs_aead", ".2f"),
            ("x ours", "vs_ours", ".2f"),
        ],
    )
    rows = report.sections[section]

    def ratio(subject: str, direction: str, key: str = "ratio") -> float:
        return next(r[key] for r in rows if r["subject"] == subject and r["direction"] == direction)

    for direction in ("bind", "result"):
        report.target(
            f"Fernet key, EncryptedText {direction} / raw Fernet",
            ratio("EncryptedText, fernet", direction),
            1.10,
        )
        report.target(
            f"Fernet key, EncryptedText(context=False) {direction} / raw Fernet",
            ratio("EncryptedText, fernet, context=False", direction),
            1.10,
        )
        report.target(
            f"sqlalchemy-utils Fernet {direction} / ours (how much faster we are)",
            ratio(peer_name, direction, "vs_ours"),
            1.5,
            at_least=True,
        )
        report.target(
            f"aes-gcm-siv key, EncryptedText {direction} / raw Fernet",
            ratio("EncryptedText, aes-gcm-siv", direction),
            0.5,
        )
        report.target(
            f"aes-gcm-siv key, EncryptedText(context=False) {direction} / raw Fernet",
            ratio("EncryptedText, aes-gcm-siv, context=False", direction),
            0.5,
        )
        report.target(
            f"aes-gcm-siv key, EncryptedText {direction} / raw AESGCMSIV",
            ratio("EncryptedText, aes-gcm-siv", direction, "vs_aead"),
            1.25,
        )
        report.target(
            f"aes-gcm-siv key, EncryptedText(context=False) {direction} / raw AESGCMSIV",
            ratio("EncryptedText, aes-gcm-siv, context=False", direction, "vs_aead"),
            1.25,
        )


# -- typed columns ---------------------------------------------------------------------------


def bench_typed(report: Report, rounds: int, number: int) -> None:
    """Bind and result cost of each typed column, vs EncryptedText on an email (Fernet key).

    Every column is bound to a context, the default; the figures are per value.
    """
    try:
        from sa_fieldcrypt import (
            EncryptedBoolean,
            EncryptedDate,
            EncryptedDateTime,
            EncryptedDecimal,
            EncryptedFloat,
            EncryptedInteger,
            EncryptedTime,
            EncryptedUUID,
        )
    except ImportError:
        report.notes.append("typed columns skipped: this version has none")
        return
    dialect = sqlite.dialect()
    keyring = Keyring({"k1": generate_key()})
    context = "bench.members.value"
    text_type = EncryptedText(keyring=keyring, context=context)
    text_bind = text_type.bind_processor(dialect)
    text_result = text_type.result_processor(dialect, None)
    text_stored = text_bind(EMAIL)
    cases: list[tuple[str, Callable[..., Any], Any]] = [
        ("EncryptedDate", EncryptedDate, date(1815, 12, 10)),
        ("EncryptedDateTime", EncryptedDateTime, datetime(2024, 7, 1, 12, 30, tzinfo=UTC)),
        ("EncryptedTime", EncryptedTime, datetime(2024, 7, 1, 9, 30, 15, 250000).time()),
        ("EncryptedInteger", EncryptedInteger, 2**40 + 12345),
        ("EncryptedFloat", EncryptedFloat, 3.141592653589793),
        ("EncryptedDecimal", EncryptedDecimal, Decimal("1234567.89")),
        ("EncryptedBoolean", EncryptedBoolean, True),
        ("EncryptedUUID", EncryptedUUID, uuid.UUID("f81d4fae-7dec-11d0-a765-00a0c91e6bf6")),
    ]
    section = "typed columns, per value: bind and result, vs EncryptedText (Fernet key, bound)"
    for type_name, type_cls, value in cases:
        column_type = type_cls(keyring=keyring, context=context)
        bind = column_type.bind_processor(dialect)
        result = column_type.result_processor(dialect, None)
        stored = bind(value)
        if value != result(stored):
            raise RuntimeError(f"{type_name} does not round-trip")
        for direction, baseline, subject in (
            ("bind", lambda: text_bind(EMAIL), lambda bind=bind, v=value: bind(v)),
            ("result", lambda: text_result(text_stored), lambda r=result, s=stored: r(s)),
        ):
            m = paired(baseline, subject, rounds=rounds, number=number)
            report.add(section, subject=type_name, direction=direction, **m)
    report.print_section(
        section,
        [
            ("subject", "subject", "s"),
            ("op", "direction", "s"),
            ("EncryptedText us", "baseline_us", ".2f"),
            ("us", "us", ".2f"),
            ("x EncryptedText", "ratio", ".2f"),
        ],
    )


# -- number of keys --------------------------------------------------------------------------


def bench_keys(report: Report, rounds: int, number: int) -> None:
    """Decrypt cost of a token under the oldest key, with 1, 5 and 20 keys in the keyring."""
    dialect = sqlite.dialect()
    section = "decrypt vs number of keys (token under the oldest key), vs 1 key"
    data = EMAIL.encode()
    secrets = [generate_key() for _ in range(max(KEY_COUNTS))]
    # secrets[0] is the oldest key; the newest is primary, as after rotations.
    oldest = Keyring({"k0": secrets[0]})
    context = "bench.people.email"
    our_token = EncryptedText(keyring=oldest, context=context).process_bind_param(EMAIL, dialect)
    raw_token = Fernet(secrets[0]).encrypt(data)

    def ours(count: int) -> Timer:
        ring = Keyring({f"k{i}": secrets[i] for i in reversed(range(count))})
        process = EncryptedText(keyring=ring, context=context).result_processor(dialect, None)
        return lambda: process(our_token)

    def multi(count: int) -> Timer:
        fernets = MultiFernet([Fernet(secrets[i]) for i in reversed(range(count))])
        return lambda: fernets.decrypt(raw_token)

    for name, make in (("EncryptedText", ours), ("MultiFernet", multi)):
        one = make(1)
        for count in KEY_COUNTS:
            m = paired(one, make(count), rounds=rounds, number=number)
            report.add(section, subject=name, keys=count, **m)
    report.print_section(
        section,
        [
            ("subject", "subject", "s"),
            ("keys", "keys", "d"),
            ("1 key us", "baseline_us", ".2f"),
            ("us", "us", ".2f"),
            ("x 1 key", "ratio", ".2f"),
        ],
    )
    rows = report.sections[section]
    twenty = next(r for r in rows if r["subject"] == "EncryptedText" and r["keys"] == 20)
    report.target("Fernet keys, 20 keys / 1 key", twenty["ratio"], 1.10)


# -- bulk insert and load --------------------------------------------------------------------


def _variants(fernet_key: str, aead_key: str) -> dict[str, Callable[[], TypeEngine[Any]]]:
    """Column types to compare: a fresh instance per column (context=True, the default, needs
    its own); context=False shows what binding costs."""
    fernet_ring = Keyring({"k1": fernet_key})
    aead_ring = Keyring({"k1": aead_key})
    return {
        "plain Text": Text,
        "EncryptedText, fernet": lambda: EncryptedText(keyring=fernet_ring),
        "EncryptedText, fernet, context=False": lambda: EncryptedText(
            keyring=fernet_ring, context=False
        ),
        "EncryptedText, aes-gcm-siv": lambda: EncryptedText(keyring=aead_ring),
        "EncryptedText, aes-gcm-siv, context=False": lambda: EncryptedText(
            keyring=aead_ring, context=False
        ),
        "sqlalchemy-utils StringEncryptedType(FernetEngine)": lambda: StringEncryptedType(
            String, fernet_key, FernetEngine
        ),
    }


def bench_bulk(
    report: Report, database: str, engine: Engine, api: str, rows: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Insert then load ``rows`` rows with two encrypted columns, for each column type.

    ``api="orm"`` inserts with an ORM bulk ``session.execute(insert(Model), rows)`` and loads
    entities with ``session.scalars(select(Model)).all()``, as an application does;
    ``api="core"`` uses ``conn.execute(insert(table), rows)`` and ``select(table)`` rows, where
    the database work is smallest and the column type's cost shows most.
    """
    variants = _variants(generate_key(), generate_key("aes-gcm-siv"))
    metadata = MetaData()
    mapper_registry = registry(metadata=metadata)
    tables: dict[str, Table] = {}
    models: dict[str, type] = {}
    for n, (name, make) in enumerate(variants.items()):
        table = Table(
            f"fc_bench_{n}",
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("email", make()),
            Column("phone", make()),
        )
        tables[name] = table
        models[name] = type(f"Row{n}", (), {})
        mapper_registry.map_imperatively(models[name], table)
    data = [
        {"id": i, "email": f"customer{i}@example.com", "phone": f"+44 20 7946 {i % 10000:04d}"}
        for i in range(rows)
    ]
    times: dict[str, dict[str, list[float]]] = {n: {"insert": [], "load": []} for n in tables}
    ratios: dict[str, dict[str, list[float]]] = {n: {"insert": [], "load": []} for n in tables}
    try:
        for _ in range(repeats):
            # Every variant in each repetition, so all of them see the same machine load.
            plain: dict[str, float] = {}
            for name, table in tables.items():
                metadata.drop_all(engine, tables=[table])
                metadata.create_all(engine, tables=[table])
                if api == "orm":
                    inserted, load, last = _orm_round(engine, models[name], data)
                else:
                    inserted, load, last = _core_round(engine, table, data)
                if last != data[-1]["email"]:
                    raise RuntimeError(f"{name} on {database} did not load what it inserted")
                if name == "plain Text":
                    plain = {"insert": inserted, "load": load}
                for phase, seconds in (("insert", inserted), ("load", load)):
                    times[name][phase].append(seconds)
                    ratios[name][phase].append(seconds / plain[phase])
    finally:
        metadata.drop_all(engine)
        mapper_registry.dispose()
    how = "ORM bulk insert, ORM load" if api == "orm" else "Core executemany, Core select"
    section = f"bulk, {database}, {how}: {rows:,} rows, two encrypted columns, vs plain Text"
    summary: dict[str, dict[str, float]] = {}
    for name in tables:
        row = {
            "insert_s": statistics.median(times[name]["insert"]),
            "insert_ratio": statistics.median(ratios[name]["insert"]),
            "load_s": statistics.median(times[name]["load"]),
            "load_ratio": statistics.median(ratios[name]["load"]),
        }
        summary[name] = row
        report.add(section, subject=name, **row)
    report.print_section(
        section,
        [
            ("column type", "subject", "s"),
            ("insert s", "insert_s", ".3f"),
            ("x plain", "insert_ratio", ".2f"),
            ("load s", "load_s", ".3f"),
            ("x plain", "load_ratio", ".2f"),
        ],
    )
    return summary


def _orm_round(engine: Engine, model: type, data: list[dict[str, Any]]) -> tuple[float, float, str]:
    start = time.perf_counter()
    with Session(engine) as session:
        session.execute(insert(model), data)
        session.commit()
    inserted = time.perf_counter() - start
    start = time.perf_counter()
    with Session(engine) as session:
        loaded = session.scalars(select(model).order_by(model.id)).all()  # type: ignore[attr-defined]
    load = time.perf_counter() - start
    return inserted, load, loaded[-1].email


def _core_round(
    engine: Engine, table: Table, data: list[dict[str, Any]]
) -> tuple[float, float, str]:
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(insert(table), data)
    inserted = time.perf_counter() - start
    start = time.perf_counter()
    with engine.connect() as conn:
        loaded = conn.execute(select(table).order_by(table.c.id)).all()
    load = time.perf_counter() - start
    return inserted, load, str(loaded[-1].email)


def bench_sqlite(report: Report, rows: int, repeats: int) -> None:
    """Bulk benchmarks on a SQLite file, with the issue's targets on the ORM figures.

    The targets are set on the ORM figures: that is how the issue's own sqlalchemy-utils
    figures (insert about 9x, load about 4x plain Text) were taken.
    """
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/bench.sqlite3", hide_parameters=True)
        try:
            summary = bench_bulk(report, "SQLite", engine, "orm", rows, repeats)
            bench_bulk(report, "SQLite", engine, "core", rows, repeats)
        finally:
            engine.dispose()
    for kind, insert_limit, load_limit in (("fernet", 5.0, 2.5), ("aes-gcm-siv", 3.0, 1.7)):
        for suffix in ("", ", context=False"):
            row = summary[f"EncryptedText, {kind}{suffix}"]
            label = f"SQLite {rows:,} rows (ORM), {kind} keys{suffix}"
            report.target(f"{label}, insert / plain Text", row["insert_ratio"], insert_limit)
            report.target(f"{label}, load / plain Text", row["load_ratio"], load_limit)


def bench_postgres(report: Report, url: str, rows: int, repeats: int) -> None:
    """Bulk benchmark on PostgreSQL, skipped with a note when the server is unreachable."""
    engine = create_engine(url, connect_args={"connect_timeout": 5}, hide_parameters=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        note = f"PostgreSQL bulk benchmark skipped: {url} unreachable ({type(exc).__name__})"
        report.notes.append(note)
        print(f"== {note}\n")
        engine.dispose()
        return
    try:
        bench_bulk(report, "PostgreSQL", engine, "orm", rows, repeats)
        bench_bulk(report, "PostgreSQL", engine, "core", rows, repeats)
    finally:
        engine.dispose()


# -- blind-index lookup ----------------------------------------------------------------------


def bench_blind_index(report: Report, rows: int, rounds: int) -> None:
    """Find one row by email through a blind index, against a plain indexed email column.

    Each lookup loads the entity, so the encrypted side also decrypts the email it finds.
    """
    try:
        from sa_fieldcrypt import Keyring, generate_key
        from sa_fieldcrypt.blind_index import BLIND_INDEX_LENGTH, BlindIndex, normalize_email
        from sa_fieldcrypt.hybrid import encrypted_hybrid, encrypted_values
    except ImportError:
        note = "blind-index lookup skipped: this version has no sa_fieldcrypt.blind_index"
        report.notes.append(note)
        print(f"== {note}\n")
        return
    metadata = MetaData()
    mapper_registry = registry(metadata=metadata)
    plain = Table(
        "fc_bench_plain_lookup",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", String(255), index=True),
    )
    indexed = Table(
        "fc_bench_bidx_lookup",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email_encrypted", EncryptedText(keyring=Keyring({"k1": generate_key()}))),
        Column("email_bidx", String(BLIND_INDEX_LENGTH), index=True),
    )

    class PlainRow:
        pass

    class IndexedRow:
        email = encrypted_hybrid(
            "email_encrypted",
            blind_index=BlindIndex(
                "email_bidx",
                normalizer=normalize_email,
                keyring=Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index"),
            ),
        )

    mapper_registry.map_imperatively(PlainRow, plain)
    mapper_registry.map_imperatively(IndexedRow, indexed)
    emails = [f"customer{i}@example.com" for i in range(rows)]
    targets = [random.choice(emails) for _ in range(1000)]
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/lookup.sqlite3", hide_parameters=True)
        try:
            metadata.create_all(engine)
            with Session(engine) as session:
                session.execute(
                    insert(PlainRow), [{"id": i, "email": e} for i, e in enumerate(emails)]
                )
                session.execute(
                    insert(IndexedRow),
                    [encrypted_values(IndexedRow, id=i, email=e) for i, e in enumerate(emails)],
                )
                session.commit()
            with Session(engine) as session:
                plain_lookup = _lookup(session, PlainRow, PlainRow.email, targets)  # type: ignore[attr-defined]
                indexed_lookup = _lookup(session, IndexedRow, IndexedRow.email, targets)
                m = paired(plain_lookup, indexed_lookup, rounds=rounds, number=len(targets))
        finally:
            engine.dispose()
            mapper_registry.dispose()
    section = f"lookup by email among {rows:,} rows (SQLite, ORM), vs a plain indexed column"
    report.add(section, subject="blind index (HMAC-SHA256) + decrypt the found row", **m)
    report.print_section(
        section,
        [
            ("subject", "subject", "s"),
            ("plain us", "baseline_us", ".1f"),
            ("us", "us", ".1f"),
            ("x plain", "ratio", ".2f"),
        ],
    )


def bench_hybrid_read(report: Report, rounds: int, number: int) -> None:
    """First read of a hybrid's value on a loaded object: decrypt, with and without swap detection.

    Each call reads a fresh object (what the ORM builds from a row), so every read decrypts;
    the subject also checks the value against the row's blind index (one HMAC).
    """
    from sa_fieldcrypt.blind_index import BLIND_INDEX_LENGTH, BlindIndex, normalize_email
    from sa_fieldcrypt.hybrid import encrypted_hybrid

    if "check_index" not in inspect.signature(encrypted_hybrid).parameters:
        report.notes.append("hybrid read skipped: this version has no swap detection")
        return
    metadata = MetaData()
    mapper_registry = registry(metadata=metadata)
    keys = Keyring({"k1": generate_key()})
    index_keys = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    models = []
    for check in (False, True):
        table = Table(
            f"fc_bench_read_{check}",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("email_encrypted", Text),
            Column("email_bidx", String(BLIND_INDEX_LENGTH)),
        )
        model = type(f"Read{check}", (), {})
        model.email = encrypted_hybrid(  # type: ignore[attr-defined]
            "email_encrypted",
            blind_index=BlindIndex("email_bidx", normalizer=normalize_email, keyring=index_keys),
            column_type=EncryptedText(keyring=keys),
            check_index=check,
        )
        mapper_registry.map_imperatively(model, table)
        models.append(model)

    def reader(model: type) -> Timer:
        # Each table binds its tokens to its own column: a token of one does not open in the other.
        sample = model()
        sample.email = EMAIL
        token, index = sample.email_encrypted, sample.email_bidx

        def read() -> object:
            row = model()
            row.email_encrypted, row.email_bidx = token, index
            return row.email

        return read

    m = paired(reader(models[0]), reader(models[1]), rounds=rounds, number=number)
    mapper_registry.dispose()
    section = "hybrid read of a fresh object: decrypt only vs decrypt + swap detection"
    report.add(section, subject="decrypt + index check (one HMAC-SHA256)", **m)
    report.print_section(
        section,
        [
            ("subject", "subject", "s"),
            ("decrypt us", "baseline_us", ".1f"),
            ("us", "us", ".1f"),
            ("x decrypt", "ratio", ".2f"),
        ],
    )


def bench_row_binding(report: Report, rounds: int, number: int) -> None:
    """A hybrid's write and first read, bound to its column only vs to its row too.

    Each call builds a fresh object, so every write encrypts and every read decrypts. A row
    costs a Fernet key one HKDF derivation per value (nothing is cached per row); an
    aes-gcm-siv key only a longer associated data.
    """
    from sa_fieldcrypt.hybrid import encrypted_hybrid

    if "bind_row" not in inspect.signature(encrypted_hybrid).parameters:
        report.notes.append("row binding skipped: this version has none")
        return
    metadata = MetaData()
    mapper_registry = registry(metadata=metadata)
    section = "hybrid over a ciphertext column: bound to the column vs to the row too"
    for kind in ("fernet", "aes-gcm-siv"):
        keys = Keyring({"k1": generate_key(kind)})  # type: ignore[arg-type]
        models = []
        for rows in (False, True):
            table = Table(
                f"fc_bench_rows_{kind}_{rows}".replace("-", "_"),
                metadata,
                Column("id", Integer, primary_key=True, autoincrement=False),
                Column("email_encrypted", Text),
            )
            model = type(f"Rows{kind}{rows}", (), {})
            model.email = encrypted_hybrid(  # type: ignore[attr-defined]
                "email_encrypted", column_type=EncryptedText(keyring=keys), bind_row=rows
            )
            mapper_registry.map_imperatively(model, table)
            models.append(model)

        def writer(model: type) -> Timer:
            def write() -> object:
                row = model()
                row.id = 42
                row.email = EMAIL
                return row

            return write

        def reader(model: type) -> Timer:
            sample = writer(model)()
            token = sample.email_encrypted

            def read() -> object:
                row = model()
                row.id, row.email_encrypted = 42, token
                return row.email

            return read

        for direction, timer in (("write", writer), ("read", reader)):
            m = paired(timer(models[0]), timer(models[1]), rounds=rounds, number=number)
            report.add(section, subject=f"{kind} key, {direction}", **m)
    mapper_registry.dispose()
    report.print_section(
        section,
        [
            ("subject", "subject", "s"),
            ("column us", "baseline_us", ".1f"),
            ("row us", "us", ".1f"),
            ("x column", "ratio", ".2f"),
        ],
    )


def bench_padding(report: Report, rounds: int, number: int) -> None:
    """What ``padding=`` costs per value: EncryptedText as it is vs padded to 16 and 64 bytes."""
    if "padding" not in inspect.signature(EncryptedText).parameters:
        report.notes.append("padding skipped: this version has none")
        return
    dialect = sqlite.dialect()
    section = "padding: EncryptedText vs EncryptedText(padding=...)"

    def timers(column: EncryptedText) -> tuple[Timer, Timer]:
        bind = column.bind_processor(dialect)
        result = column.result_processor(dialect, None)
        token = column.process_bind_param(EMAIL, dialect)
        return (lambda: bind(EMAIL)), (lambda: result(token))

    for kind in ("fernet", "aes-gcm-siv"):
        keys = Keyring({"k1": generate_key(kind)})  # type: ignore[arg-type]
        plain = timers(EncryptedText(keyring=keys, context="bench.people.email"))
        for padding in (True, 64):
            padded = timers(
                EncryptedText(keyring=keys, context="bench.people.email", padding=padding)
            )
            for i, direction in enumerate(("bind", "result")):
                m = paired(plain[i], padded[i], rounds=rounds, number=number)
                report.add(section, subject=f"{kind} key, padding={padding}, {direction}", **m)
    report.print_section(
        section,
        [
            ("subject", "subject", "s"),
            ("unpadded us", "baseline_us", ".1f"),
            ("us", "us", ".1f"),
            ("x unpadded", "ratio", ".2f"),
        ],
    )


def _lookup(session: Session, model: type, attribute: Any, targets: list[str]) -> Timer:
    """A timer that finds the next target's row on each call (the targets cycle)."""
    query = select(model)
    cycle = itertools.cycle(targets)

    def find() -> object:
        email = next(cycle)
        row = session.scalars(query.where(attribute == email)).one()
        session.expunge(row)  # so the next lookup of the same row loads it again
        if row.email != email:  # type: ignore[attr-defined]
            raise RuntimeError("the lookup found the wrong row")
        return row

    return find


# -- import ----------------------------------------------------------------------------------

_IMPORT_PROBE = """
import sys, time
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
unwanted = sorted(
    m for m in sys.modules if m.split(".")[0] in ("click", "google")
)
print(elapsed, ",".join(unwanted))
"""


def _import_once(module: str) -> tuple[float, str]:
    # A fresh interpreter each time: what an application pays at start-up.
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(" ", 1)
    return float(out[0]), out[1].strip()


def bench_import(report: Report, repeats: int) -> None:
    """Time ``import sa_fieldcrypt`` against ``import sqlalchemy``, its heaviest dependency."""
    section = "import time (fresh interpreter), vs import sqlalchemy"
    ours, floor, ratios = [], [], []
    unwanted = ""
    for _ in range(repeats):
        base, _ = _import_once("sqlalchemy")
        seconds, unwanted = _import_once("sa_fieldcrypt")
        ours.append(seconds)
        floor.append(base)
        ratios.append(seconds / base)
    report.add(
        section,
        subject="import sa_fieldcrypt",
        baseline_ms=statistics.median(floor) * 1e3,
        ms=statistics.median(ours) * 1e3,
        ratio=statistics.median(ratios),
        click_or_google_imported=unwanted or "none",
    )
    report.print_section(
        section,
        [
            ("subject", "subject", "s"),
            ("sqlalchemy ms", "baseline_ms", ".1f"),
            ("ms", "ms", ".1f"),
            ("x sqlalchemy", "ratio", ".2f"),
            ("click / google.* imported", "click_or_google_imported", "s"),
        ],
    )
    if unwanted:
        report.notes.append(f"import sa_fieldcrypt imported {unwanted}")


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the bulk runs")
    parser.add_argument("--bulk-repeats", type=int, default=3, help="bulk runs per column type")
    parser.add_argument("--rounds", type=int, default=9, help="paired rounds per value figure")
    parser.add_argument("--number", type=int, default=3000, help="calls per round")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "FIELDCRYPT_BENCH_POSTGRES_URL",
            os.environ.get("FIELDCRYPT_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        ),
        help="PostgreSQL for the bulk run (default: $FIELDCRYPT_BENCH_POSTGRES_URL, else "
        "$FIELDCRYPT_TEST_POSTGRES_URL, else the local test database)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL run")
    parser.add_argument(
        "--quick", action="store_true", help="a fast smoke run: few rows and rounds"
    )
    parser.add_argument("--output", type=Path, help="JSON file (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.bulk_repeats, args.rounds, args.number = 2000, 1, 3, 300
    return args


@contextmanager
def _quiet_warnings() -> Iterator[None]:
    # sqlalchemy-utils may warn about SQLAlchemy versions it predates; the figures matter here.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> None:
    """Run every benchmark once and report."""
    args = parse_args(argv)
    report = Report(args)
    report.header()
    with _quiet_warnings():
        bench_per_value(report, args.rounds, args.number)
        bench_typed(report, args.rounds, args.number)
        bench_keys(report, args.rounds, args.number)
        bench_sqlite(report, args.rows, args.bulk_repeats)
        if args.no_postgres:
            report.notes.append("PostgreSQL bulk benchmark skipped: --no-postgres")
        else:
            bench_postgres(report, args.postgres_url, args.rows, args.bulk_repeats)
        bench_blind_index(report, args.rows, args.rounds)
        bench_hybrid_read(report, args.rounds, args.number)
        bench_row_binding(report, args.rounds, args.number)
        bench_padding(report, args.rounds, args.number)
        bench_import(report, max(args.rounds, 5))
    report.finish(args.output)


if __name__ == "__main__":
    main()

"""Key rotation of a large table on PostgreSQL and MariaDB: rows/s, peak RSS, ratio to crypto.

Run with ``make bench-rotation`` (100,000 and 1,000,000 rows, 1 and 2 workers, on each
database), or ``python benchmarks/rotation.py --databases mariadb --rows 100000 --workers 1``.
It needs the servers: ``FIELDCRYPT_BENCH_POSTGRES_URL`` (else ``FIELDCRYPT_TEST_POSTGRES_URL``,
else the test default) and ``FIELDCRYPT_BENCH_MARIADB_URL`` (else
``FIELDCRYPT_TEST_MARIADB_URL``, else the test default). The benchmark owns the tables
``fc_bench_rotation*`` there, and runs alone on a server: a second run started while one is
under way stops at once, saying so.

Then reindexes a PostgreSQL table of ``--reindex-rows`` rows (1,000,000 by default) under a new
blind-index key with 1 and with 2 workers: the speedup shows whether the worker processes pay.

``--profile DIR`` runs each rotation under cProfile and writes its statistics to
``DIR/rotate-<database>-<rows>-<workers>.prof`` (with one worker: the walk's thread and the
writer thread, each in a file of its own; read them with ``python -m pstats``). With one
worker and 50,000 rows or more, the decrypting and encrypting happen in the transform process,
which the profile does not cover: what it shows is the reading and writing around it.
``--in-process`` transforms in the worker's own process instead, to compare the two.

Last, the write ceiling: ``--capacity-rows`` rows (300,000 by default) rewritten by the same
job engine with a transform that costs nothing, with each ``--workers`` count, on each
database: what the reads, the compare-and-set writes and the database's own work allow, which
every shard of a rotation shares.

Each rotation runs in a fresh process, so its peak RSS is its own. The crypto-bound rate is
measured in the same run: raw ``cryptography`` Fernet, one decrypt under the old key plus one
encrypt under the new key per value, on one core. Figures come from one run on whatever
machine runs it; compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import cryptography
import sqlalchemy
from cryptography.fernet import Fernet
from sqlalchemy import Engine, MetaData, Table, create_engine, inspect, text
from sqlalchemy.orm import Session

import sa_fieldcrypt
from sa_fieldcrypt import Keyring, generate_key, jobs

TABLE = "fc_bench_rotation"
#: Each database: the variable naming its server, the test suite's, and the test default.
SERVERS = {
    "postgresql": (
        "FIELDCRYPT_BENCH_POSTGRES_URL",
        "FIELDCRYPT_TEST_POSTGRES_URL",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    ),
    "mariadb": (
        "FIELDCRYPT_BENCH_MARIADB_URL",
        "FIELDCRYPT_TEST_MARIADB_URL",
        "mysql+pymysql://root@127.0.0.1:3306/test",
    ),
}
# Emails of realistic length (30-45 bytes), all distinct.
EMAIL = "customer.{:07d}@bookings.example.com"
# Rows per INSERT where there is no COPY.
_INSERT_CHUNK = 5000


def server_url(database: str) -> str:
    """The URL of the ``database`` server to benchmark against."""
    bench, test, default = SERVERS[database]
    return os.environ.get(bench, os.environ.get(test, default))


def is_mysql(engine: Engine) -> bool:
    """Whether ``engine`` is a MariaDB (or MySQL) server."""
    return engine.dialect.name in ("mysql", "mariadb")


@contextmanager
def sole_run(database: str, url: str) -> Iterator[None]:
    """Hold the benchmark's lock on the ``database`` server: two runs at once would rewrite
    each other's tables (one crashes on a half-rotated table, the other reports it
    incomplete), and each would time the other's load."""
    engine = create_engine(url, hide_parameters=True)
    with engine.connect() as conn:
        if is_mysql(engine):
            taken = conn.execute(text("SELECT GET_LOCK(:name, 0)"), {"name": TABLE}).scalar()
        else:
            taken = conn.execute(
                text("SELECT pg_try_advisory_lock(hashtext(:name))"), {"name": TABLE}
            ).scalar()
        conn.commit()
        if not taken:
            sys.exit(
                f"another run of this benchmark is using the {TABLE}* tables on {database}; "
                "wait for it to end, then run again"
            )
        # Session locks: they end with this connection, so a killed run leaves none behind.
        yield
    engine.dispose()


def make_source(engine: Engine, rows: int, old: Keyring) -> str:
    """Create ``fc_bench_rotation_src_<rows>`` with distinct tokens under the old key, once."""
    source = f"{TABLE}_src_{rows}"
    if inspect(engine).has_table(source):
        return source
    print(f"  writing {rows:,} tokens into {source} (once) ...", flush=True)
    fernet = old.primary
    prefix = fernet.token_prefix

    def token(i: int) -> str:
        return f"{prefix}{fernet.encrypt(EMAIL.format(i).encode())}"

    with engine.begin() as conn:
        if is_mysql(engine):
            conn.execute(text(f"CREATE TABLE {source} (id bigint, email longtext)"))
            insert = text(f"INSERT INTO {source} (id, email) VALUES (:id, :email)")
            for low in range(1, rows + 1, _INSERT_CHUNK):
                high = min(low + _INSERT_CHUNK, rows + 1)
                conn.execute(insert, [{"id": i, "email": token(i)} for i in range(low, high)])
            return source
        conn.execute(text(f"CREATE TABLE {source} (id bigint, email text)"))
        raw = conn.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(f"COPY {source} (id, email) FROM STDIN") as copy:
            buffer = io.StringIO()
            for i in range(1, rows + 1):
                buffer.write(f"{i}\t{token(i)}\n")
                if i % 50_000 == 0:
                    copy.write(buffer.getvalue())
                    buffer = io.StringIO()
            copy.write(buffer.getvalue())
    return source


def fresh_table(engine: Engine, source: str) -> None:
    """Recreate the table the rotation works on, as a copy of ``source``."""
    if is_mysql(engine):
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
            # The key first: InnoDB stores rows in primary-key order, so adding it later
            # would copy the table again.
            conn.execute(text(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, email longtext)"))
            conn.execute(text(f"INSERT INTO {TABLE} (id, email) SELECT id, email FROM {source}"))
            conn.execute(text(f"ANALYZE TABLE {TABLE}"))
        return
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        conn.execute(text(f"CREATE TABLE {TABLE} AS SELECT * FROM {source}"))
        conn.execute(text(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {TABLE}"))
        conn.execute(text("CHECKPOINT"))


def crypto_rate(engine: Engine, old_key: str, new_key: str, processes: int) -> float:
    """Values per second ``processes`` processes together decrypt (old key) and encrypt (new
    key) with raw Fernet: the crypto-bound rate, on this machine, now."""
    with engine.connect() as conn:
        tokens = conn.execute(text(f"SELECT email FROM {TABLE} ORDER BY id LIMIT 20000")).scalars()
        bare = [t.split(":", 2)[2].encode() for t in tokens]
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        rates = pool.map(_crypto_rate, [(old_key, new_key, bare)] * processes)
        return sum(rates)


def _crypto_rate(job: tuple[str, str, list[bytes]]) -> float:
    old_key, new_key, bare = job
    old, new = Fernet(old_key), Fernet(new_key)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for token in bare:
            new.encrypt(old.decrypt(token))
        runs.append(time.perf_counter() - start)
    return len(bare) / statistics.median(runs)


def measured_child(
    mode: str, url: str, workers: int, batch_size: int, env: dict[str, str], *options: str
) -> dict[str, Any]:
    """Run this script as the child ``mode`` (``--child``, ``--child-reindex``, ...) in a
    fresh process, so its peak RSS is its own; return what it printed last, as JSON."""
    args = [sys.executable, __file__, mode, "--url", url, "--workers", str(workers)]
    args += ["--batch-size", str(batch_size), *options]
    out = subprocess.run(
        args, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_child(
    url: str,
    workers: int,
    batch_size: int,
    keys: str,
    profile: str | None = None,
    in_process: bool = False,
) -> dict[str, Any]:
    """Rotate the table in a fresh process; return its timing and peak RSS."""
    options = ["--in-process"] if in_process else []
    if profile is not None:
        options += ["--profile", profile]
    env = {"FIELDCRYPT_KEYS": keys}
    return measured_child("--child", url, workers, batch_size, env, *options)


@contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """Profile this thread, and each thread it starts, into ``path`` (``-<n>`` per thread)."""
    if path is None:
        yield
        return
    threads: list[cProfile.Profile] = []

    def start_in_thread(*_: Any) -> None:
        # The first event of a new thread: from here on it has a profiler of its own.
        profiler = cProfile.Profile()
        threads.append(profiler)
        profiler.enable()

    main = cProfile.Profile()
    threading.setprofile(start_in_thread)
    main.enable()
    try:
        yield
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        main.dump_stats(f"{path}.prof")
        for n, profiler in enumerate(threads, 1):
            profiler.dump_stats(f"{path}-thread{n}.prof")


def child(
    url: str, worker_count: int, batch_size: int, profile: str | None, in_process: bool
) -> None:
    """The measured process: rotate, then print seconds and peak RSS as JSON."""
    engine = create_engine(url, hide_parameters=True)
    column = jobs.reflect_column(engine, TABLE, "email")
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with profiled(profile):
        report = jobs.rotate(
            engine,
            [column],
            batch_size=batch_size,
            workers=worker_count,
            transform_process=False if in_process else None,
        )
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not report.ok:
        raise SystemExit(f"rotation reported failures: {report}")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "written": report.written,
                "rss_mb": own.ru_maxrss / 1024,
                "worker_rss_mb": workers.ru_maxrss / 1024,
                # The rotating processes only, not the database server's share.
                "cpu_seconds": own.ru_utime
                + own.ru_stime
                - before.ru_utime
                - before.ru_stime
                + workers.ru_utime
                + workers.ru_stime,
            }
        )
    )


def run_reindex_child(url: str, workers: int, batch_size: int, env: dict[str, str]) -> float:
    """Reindex the table in a fresh process; return its seconds."""
    return float(measured_child("--child-reindex", url, workers, batch_size, env)["seconds"])


def reindex_child(url: str, worker_count: int, batch_size: int) -> None:
    """The measured process: reindex every row under the writing index key; print seconds."""
    import reindex_models

    engine = create_engine(url, hide_parameters=True)
    indexes = jobs.find_indexes(reindex_models)
    start = time.perf_counter()
    report = jobs.reindex(engine, indexes, batch_size=batch_size, workers=worker_count)
    seconds = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"reindex reported failures: {report.to_dict()['total']}")
    print(json.dumps({"seconds": seconds, "written": report.written}))


def bench_reindex(url: str, engine: Engine, rows: int, batch_size: int, keys: str) -> None:
    """Reindex ``rows`` rows under a new index key with 1 and then 2 workers."""
    source = f"{TABLE}_src_{rows}"
    fresh_table(engine, source)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {TABLE} ADD COLUMN email_bidx varchar(97)"))
    index_keys = [f"b{i}:{generate_key('hmac-sha256')}" for i in range(3)]
    env = {"FIELDCRYPT_KEYS": keys, "FIELDCRYPT_BLIND_INDEX_KEYS": index_keys[0]}
    run_reindex_child(url, 2, batch_size, env)  # every row indexed under b0 first
    print(f"\nreindex of {rows:,} rows under a new index key (every row rewritten):")
    rates = {}
    for workers, writing in ((1, 1), (2, 2)):
        env["FIELDCRYPT_BLIND_INDEX_KEYS"] = f"{index_keys[writing]},{index_keys[writing - 1]}"
        seconds = run_reindex_child(url, workers, batch_size, env)
        rates[workers] = rows / seconds
        print(f"  {workers} worker(s): {seconds:7.1f} s, {rates[workers]:9,.0f} rows/s", flush=True)
    print(f"  speedup with 2 workers: {rates[2] / rates[1]:4.2f}x")


# Words for the notes: each note is about 120 characters, about 100 distinct trigrams.
WORDS = [
    "guest",
    "arrived",
    "early",
    "asked",
    "quiet",
    "room",
    "allergic",
    "peanuts",
    "prefers",
    "window",
    "seat",
    "late",
    "checkout",
    "invoice",
    "company",
    "address",
    "parking",
    "spot",
    "wheelchair",
    "access",
    "birthday",
    "surprise",
    "vegetarian",
    "breakfast",
    "airport",
    "shuttle",
    "flight",
    "delayed",
    "luggage",
    "stored",
    "extra",
    "towels",
]


def note_of(i: int) -> str:
    """A note of realistic length, different for every row."""
    words = [WORDS[(i * 7 + k * 13 + (i >> k)) % len(WORDS)] for k in range(16)]
    return f"{' '.join(words)} #{i}"


def substring_child(url: str, batch_size: int) -> None:
    """The measured process: reindex the notes' side rows; print seconds and peak RSS."""
    import reindex_models

    engine = create_engine(url, hide_parameters=True)
    targets = jobs.find_substring_indexes(reindex_models)
    start = time.perf_counter()
    report = jobs.reindex(engine, targets, batch_size=batch_size)
    seconds = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"reindex reported failures: {report.to_dict()['total']}")
    own = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps({"seconds": seconds, "written": report.written, "rss_mb": own.ru_maxrss / 1024})
    )


def bench_substring_reindex(
    database: str, url: str, rows: int, batch_sizes: list[int], keys: str
) -> None:
    """Fill a notes table of ``rows`` owners through the ORM, then reindex its side rows
    under a new index key with each batch size: owners and side rows per second."""
    import reindex_models

    engine = create_engine(url, hide_parameters=True)
    note = reindex_models.BenchNote
    tables = [reindex_models.Base.metadata.tables[n] for n in (note.__tablename__,)]
    side = jobs.find_substring_indexes(reindex_models)[0].side
    index_keys = [f"s{i}:{generate_key('hmac-sha256')}" for i in range(len(batch_sizes) + 1)]
    # A run stopped before its end left them.
    reindex_models.Base.metadata.drop_all(engine, tables=[*tables, side])
    reindex_models.Base.metadata.create_all(engine, tables=[*tables, side])
    sa_fieldcrypt.configure(
        keyring=Keyring.parse(index_keys[0], purpose="blind-index"), purpose="blind-index"
    )
    print(f"\n{database}: writing {rows:,} notes through the ORM ...", flush=True)
    with Session(engine) as session:
        for low in range(1, rows + 1, 2000):
            session.add_all(
                note(id=i, notes=note_of(i)) for i in range(low, min(low + 2000, rows + 1))
            )
            session.commit()
    sa_fieldcrypt.configure(purpose="blind-index")
    with engine.connect() as conn:
        side_rows = conn.execute(text(f"SELECT count(*) FROM {side.name}")).scalar_one()
    print(
        f"substring reindex of {rows:,} notes, {side_rows:,} side rows, under a new index key "
        "(every owner's side rows rewritten):"
    )
    for writing, batch_size in enumerate(batch_sizes, start=1):
        env = {
            "FIELDCRYPT_KEYS": keys,
            "FIELDCRYPT_BLIND_INDEX_KEYS": f"{index_keys[writing]},{index_keys[writing - 1]}",
        }
        measured = measured_child("--child-substring", url, 1, batch_size, env)
        if measured["written"] != rows:
            raise SystemExit(f"substring reindex wrote {measured['written']} of {rows} owners")
        seconds = measured["seconds"]
        print(
            f"  batch size {batch_size:>5}: {seconds:7.1f} s, {rows / seconds:8,.0f} owners/s, "
            f"{side_rows / seconds:9,.0f} side rows/s, peak RSS {measured['rss_mb']:4.0f} MB",
            flush=True,
        )
    reindex_models.Base.metadata.drop_all(engine, tables=[*tables, side])


def check_done(engine: Engine, rows: int) -> None:
    """Every row is under the new primary key."""
    column = jobs.reflect_column(engine, TABLE, "email")
    found = jobs.status(engine, [column]).columns[0]
    if found.by_key.get(found.primary) != rows or found.pending:
        raise SystemExit(f"rotation incomplete: {found}")


def bench_rotation(
    database: str, url: str, args: argparse.Namespace, old_key: str, new_key: str
) -> list[tuple[int, int, float, float, float, float]]:
    """Rotate each row count with each worker count on one database; print each run."""
    engine = create_engine(url, hide_parameters=True)
    old = Keyring({"old": old_key})
    keys = f"new:{new_key},old:{old_key}"
    worker_counts = [int(w) for w in args.workers.split(",")]
    results = []
    print(f"\n{database} ({engine.dialect.driver}):", flush=True)
    for rows in [int(r) for r in args.rows.split(",")]:
        source = make_source(engine, rows, old)
        for workers in worker_counts:
            fresh_table(engine, source)
            crypto = crypto_rate(engine, old_key, new_key, workers)
            single = crypto if workers == 1 else crypto_rate(engine, old_key, new_key, 1)
            profile = None
            if args.profile:
                os.makedirs(args.profile, exist_ok=True)
                profile = os.path.join(args.profile, f"rotate-{database}-{rows}-{workers}")
            measured = run_child(url, workers, args.batch_size, keys, profile, args.in_process)
            check_done(engine, rows)
            rate = rows / measured["seconds"]
            peak = max(measured["rss_mb"], measured["worker_rss_mb"])
            # Crypto's share of the CPU the rotation used: 1.00 would be crypto alone.
            cpu_share = (1 / single) / (measured["cpu_seconds"] / rows)
            results.append((rows, workers, measured["seconds"], rate, crypto, peak))
            print(
                f"  {rows:>9,} rows, {workers} worker(s): {measured['seconds']:7.1f} s, "
                f"{rate:9,.0f} rows/s, crypto-bound {crypto:9,.0f}/s, "
                f"ratio {rate / crypto:5.2f}, crypto share of CPU {cpu_share:4.2f}, "
                f"peak RSS {peak:5.0f} MB",
                flush=True,
            )
    engine.dispose()
    return results


def _swap_job(engine: Engine) -> jobs.BatchJob:
    """A job that rewrites every value of the table with no crypto: each text reversed."""
    table = Table(TABLE, MetaData(), autoload_with=engine)

    def transform(key: tuple[Any, ...], values: tuple[Any, ...]) -> tuple[Any, ...]:
        return (values[0][::-1],)

    return jobs.BatchJob(
        f"{TABLE}.email", table, (table.c.email,), (table.c.email,), transform, resume_key="swap"
    )


def bench_write_capacity(
    database: str, url: str, rows: int, workers: list[int], batch_size: int, old: Keyring
) -> None:
    """Rows/s the engine and the database sustain with no crypto: the ceiling shards share.

    The same job engine (keyset pages, one compare-and-set UPDATE per batch) rewrites every
    value with a transform that costs next to nothing, so what is measured is reading,
    writing and the database's own work (its WAL or binlog included).
    """
    engine = create_engine(url, hide_parameters=True)
    source = make_source(engine, rows, old)
    for count in workers:
        fresh_table(engine, source)
        start = time.perf_counter()
        # No transform process: this script's own factory is of its main module, and what is
        # measured is the engine without the crypto anyway.
        report = jobs.run_job(
            engine, _swap_job, workers=count, batch_size=batch_size, transform_process=False
        )
        seconds = time.perf_counter() - start
        if report.written != rows:
            raise SystemExit(f"{database}: rewrote {report.written:,} of {rows:,} rows")
        print(
            f"  {database}: {rows:,} rows rewritten without crypto by {count} worker(s): "
            f"{seconds:6.1f} s, {rows / seconds:9,.0f} rows/s",
            flush=True,
        )
    engine.dispose()


def summarize(database: str, results: list[tuple[int, int, float, float, float, float]]) -> None:
    """Print a database's ratios, speedups and linearity."""
    print(f"\n{database} summary (crypto-bound rate: raw Fernet, as many processes as workers):")
    by = {(r, w): (s, rate, crypto) for r, w, s, rate, crypto, _ in results}
    for rows, workers, _, rate, crypto, peak in results:
        line = f"  {rows:>9,} rows x{workers}: {rate / crypto:5.2f} of the crypto-bound rate"
        if workers > 1 and (rows, 1) in by:
            line += (
                f", speedup {rate / by[rows, 1][1]:4.2f}x over 1 worker "
                f"(pure crypto: {crypto / by[rows, 1][2]:4.2f}x)"
            )
        line += f", peak RSS {peak:.0f} MB"
        print(line)
    sizes = sorted({r for r, *_ in results})
    for workers in sorted({w for _, w, *_ in results}):
        if len(sizes) >= 2 and all((s, workers) in by for s in sizes[:2]):
            small, large = sizes[0], sizes[-1]
            per_row = (by[large, workers][0] / large) / (by[small, workers][0] / small)
            print(
                f"  time per row, {large:,} vs {small:,} rows, {workers} worker(s): "
                f"{per_row:4.2f}x (1.00 = linear)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--databases", default="postgresql,mariadb", help="of: " + ", ".join(SERVERS)
    )
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--reindex-rows",
        type=int,
        default=1_000_000,
        help="rows to reindex on PostgreSQL (0: no reindex)",
    )
    parser.add_argument("--profile", metavar="DIR", help="write each rotation's profile here")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="transform in the worker's own process (no transform process), to compare",
    )
    parser.add_argument(
        "--capacity-rows",
        type=int,
        default=300_000,
        help="rows to rewrite without crypto, to measure the write ceiling (0: none)",
    )
    parser.add_argument(
        "--substring-rows",
        type=int,
        default=20_000,
        help="notes whose substring index to reindex, on each database (0: none)",
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)  # a child's server
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-reindex", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-substring", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    if args.child:
        child(args.url, worker_counts[0], args.batch_size, args.profile, args.in_process)
        return
    if args.child_reindex:
        reindex_child(args.url, worker_counts[0], args.batch_size)
        return
    if args.child_substring:
        substring_child(args.url, args.batch_size)
        return
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = set(databases) - set(SERVERS)
    if unknown:
        parser.error(f"unknown databases: {', '.join(sorted(unknown))}")

    with ExitStack() as stack:
        for database in databases:
            stack.enter_context(sole_run(database, server_url(database)))
        run(args, databases, worker_counts)


def run(args: argparse.Namespace, databases: list[str], worker_counts: list[int]) -> None:
    """Every measurement ``args`` asks for, on ``databases``."""
    # Fixed keys: the source tables are reused between runs of the benchmark.
    old_key = "wPA1iwhKLxcSoQOnOkL9vLK9Ttq1Ki3lTqFj2zS0Qnc="
    new_key = generate_key()
    old = Keyring({"old": old_key})
    keys = f"new:{new_key},old:{old_key}"
    sa_fieldcrypt.configure(keyring=Keyring.parse(keys))
    print(
        f"sa-fieldcrypt {sa_fieldcrypt.__version__}, cryptography {cryptography.__version__}, "
        f"SQLAlchemy {sqlalchemy.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"batch size {args.batch_size}"
    )
    results = {d: bench_rotation(d, server_url(d), args, old_key, new_key) for d in databases}
    for database, found in results.items():
        summarize(database, found)
    if args.capacity_rows:
        print("\nwrite ceiling (the job engine with a transform that costs nothing):")
        for database in databases:
            bench_write_capacity(
                database,
                server_url(database),
                args.capacity_rows,
                worker_counts,
                args.batch_size,
                old,
            )
    if args.reindex_rows and "postgresql" in databases:
        url = server_url("postgresql")
        engine = create_engine(url, hide_parameters=True)
        make_source(engine, args.reindex_rows, old)
        bench_reindex(url, engine, args.reindex_rows, args.batch_size, keys)
    if args.substring_rows:
        batch_sizes = sorted({args.batch_size, max(1, args.batch_size // 10)}, reverse=True)
        for database in databases:
            bench_substring_reindex(
                database, server_url(database), args.substring_rows, batch_sizes, keys
            )


if __name__ == "__main__":
    main()

"""Shards across machines: N `fieldcrypt rotate` processes at once, as a scheduler starts them.

The shard processes are real child processes of the console command, started together, half
as the pods of a Kubernetes Indexed Job start them (``--shards N``, the index in
``JOB_COMPLETION_INDEX``) and half as processes on N hosts (``--shard I/N``), with the database
URL and keys in their environment as deployed. Meanwhile a thread standing in for the
application inserts rows and updates rows through the ORM. Each of its updates locks the row
first and notes whether the value it replaces was still under the old key, so the test knows
exactly which rows the shards had to rotate: each shard's report must count exactly the
rows of its own shard that were left to it, and together they must cover the table. Then
every row must read back with the last value written to it, every value must be under the
new key, a shard run again (a pod replaced under the same index) must find nothing and change
no stored byte, and one ``fieldcrypt status`` over the whole table must say that the old key
is no longer needed.

On SQLite, which has no ``SELECT ... FOR UPDATE``, the application's transactions begin with
``BEGIN IMMEDIATE`` instead: the write lock taken before the read makes the read and the
update one step, as the row lock does on the servers.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import Engine, column, create_engine, event, select, table
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import ConfigurationError, EncryptedText, Keyring, generate_key, jobs
from sa_fieldcrypt.cipher import inspect_token
from sa_fieldcrypt.cli import cli
from sa_fieldcrypt.testing import temporary_keys

SHARDS = 4
SEEDED = 1200
BATCH_SIZE = 20
#: Rows the application inserts during the run start here, after the seeded ones.
FIRST_NEW_ID = 1_000_000
#: Writes the application makes before the shards start, so some rows under the old key are
#: overwritten before any shard reaches them.
HEAD_START = 20
SEED = 1717
#: Shares of the application's writes that insert a row, and that update one of the rows the
#: shards are about to reach; the others update any row.
INSERT_SHARE = 0.3
FRONTIER_SHARE = 0.35
#: Seconds between two writes of the application, which leave the CPU to the shards on a
#: small machine.
WRITER_PAUSE = 0.002
#: Bounds on waits for a child process, so that a hung run fails instead of hanging.
TIMEOUT = 120.0
TABLE = "fc_shard_accounts"
LABEL = f"{TABLE}.email"
TARGET = ["--table", TABLE, "--column", "email"]
#: How every shard is started, but for the option that chooses its shard.
ROTATE = ["rotate", *TARGET, "--batch-size", str(BATCH_SIZE), "--json"]
# The stored text, without the decrypting column type.
RAW = table(TABLE, column("id"), column("email"))
ROOT = Path(__file__).resolve().parents[1]


class Base(DeclarativeBase):
    pass


class Account(Base):
    """The application's model; ``--table`` reflects the same column, bound to the same name."""

    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(EncryptedText())


def email_of(row_id: int, version: int) -> str:
    """The plaintext a row holds at a version: every version of every row differs."""
    return f"account{row_id}.v{version}@shards.example"


@pytest.fixture
def accounts(engine: Engine) -> Iterator[tuple[Engine, Keyring]]:
    """The accounts table, seeded under the old key k1; then k2 primary, k1 decrypt-only."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    old = generate_key()
    with temporary_keys(Keyring({"k1": old})), Session(engine) as session:
        session.add_all(Account(id=i, email=email_of(i, 0)) for i in range(SEEDED))
        session.commit()
    ring = Keyring({"k2": generate_key(), "k1": old})
    with temporary_keys(ring):
        yield engine, ring
    Base.metadata.drop_all(engine)


class Application(threading.Thread):
    """Inserts and updates accounts through the ORM, one row per transaction, until stopped.

    Args:
        engine: the database; on SQLite an engine of its own is made, whose transactions
            take the write lock first.

    Attributes:
        values: the last value it committed to each row it wrote.
        overwritten: seeded rows whose value was still under k1 when it updated them.
        writes: transactions committed.
        error: what stopped it, if anything did.
    """

    def __init__(self, engine: Engine):
        super().__init__(name="application", daemon=True)
        self.shared = engine
        self.engine = _serialized(engine)
        self.rng = random.Random(SEED)  # noqa: S311 - it picks rows, not keys
        self.values: dict[int, str] = {}
        self.overwritten: set[int] = set()
        self.writes = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.progress = threading.Condition()
        self._inserted: list[int] = []
        self._versions: dict[int, int] = {}

    def run(self) -> None:
        """Write until stopped, or until a write fails."""
        try:
            while not self.stopping.is_set():
                self._write()
                with self.progress:
                    self.writes += 1
                    self.progress.notify_all()
                self.stopping.wait(WRITER_PAUSE)
        except BaseException as exc:  # handed to the test, which raises it
            self.error = exc
            with self.progress:
                self.progress.notify_all()
        finally:
            if self.engine is not self.shared:
                self.engine.dispose()

    def _write(self) -> None:
        roll = self.rng.random()
        if roll < INSERT_SHARE:
            row_id = FIRST_NEW_ID + len(self._inserted)
            value = email_of(row_id, 0)
            with Session(self.engine) as session, session.begin():
                session.add(Account(id=row_id, email=value))
            self._inserted.append(row_id)
            self.values[row_id] = value
            return
        frontier = self._frontier() if roll < INSERT_SHARE + FRONTIER_SHARE else []
        row_id = self.rng.choice(frontier or [*range(SEEDED), *self._inserted])
        version = self._versions.get(row_id, 0) + 1
        value = email_of(row_id, version)
        with Session(self.engine) as session, session.begin():
            # Locked before it is read: no shard can rotate it between the read and the write.
            locked = select(RAW.c.email).where(RAW.c.id == row_id).with_for_update()
            under_old_key = inspect_token(session.scalars(locked).one()).key_id == "k1"
            account = session.get(Account, row_id)
            assert account is not None
            account.email = value
        self._versions[row_id] = version
        self.values[row_id] = value
        if under_old_key:
            self.overwritten.add(row_id)

    def _frontier(self) -> list[int]:
        """The first rows still under k1: every shard walks up from the lowest keys, so these
        are the rows the shards are reading or about to read."""
        old = select(RAW.c.id).where(RAW.c.email.like("fc1:k1:%")).order_by(RAW.c.id).limit(20)
        with self.shared.connect() as conn:
            return list(conn.execute(old).scalars())

    def wait_for(self, writes: int) -> None:
        """Wait until it has committed ``writes`` transactions in all."""
        with self.progress:
            done = self.progress.wait_for(
                lambda: self.writes >= writes or self.error is not None, timeout=TIMEOUT
            )
        self.check()
        assert done, f"the application made {self.writes} writes in {TIMEOUT:g} s"

    def finish(self) -> None:
        """Stop, and raise what stopped it if a write failed."""
        self.stopping.set()
        self.join(timeout=TIMEOUT)
        assert not self.is_alive(), f"the application did not stop in {TIMEOUT:g} s"
        self.check()

    def check(self) -> None:
        """Raise the error that stopped it, if one did."""
        if self.error is not None:
            raise AssertionError("the application's write failed") from self.error


def _serialized(engine: Engine) -> Engine:
    """``engine``, or on SQLite an engine whose transactions begin with the write lock."""
    if engine.dialect.name != "sqlite":
        return engine
    # Waits for the lock as long as the test waits for a shard, however busy the machine.
    serial = create_engine(engine.url, connect_args={"timeout": TIMEOUT})

    @event.listens_for(serial, "connect")
    def _no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(serial, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return serial


class Scheduler:
    """Starts ``fieldcrypt`` processes with the deployment's environment: database, keys.

    Args:
        engine: the database, passed as ``FIELDCRYPT_DATABASE_URL``.
        ring: the keys, passed as ``FIELDCRYPT_KEYS``.
    """

    def __init__(self, engine: Engine, ring: Keyring):
        library = str(Path(sa_fieldcrypt.__file__).parents[1])
        self.env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("FIELDCRYPT_")
            and name not in ("FIELD_ENCRYPTION_KEY", jobs.SHARD_INDEX_VARIABLE)
        }
        self.env |= {
            "FIELDCRYPT_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "FIELDCRYPT_KEYS": ring.export(),
            "PYTHONPATH": os.pathsep.join(filter(None, [library, os.environ.get("PYTHONPATH")])),
        }

    def start(self, *args: str, index: int | None = None) -> subprocess.Popen[str]:
        """Start ``fieldcrypt ARGS``; with ``index``, as the pod of that Indexed Job index."""
        env = dict(self.env)
        if index is not None:
            env[jobs.SHARD_INDEX_VARIABLE] = str(index)
        return subprocess.Popen(
            [sys.executable, "-m", "sa_fieldcrypt.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def shards(self) -> list[subprocess.Popen[str]]:
        """Start every shard of ``rotate`` at once: odd ones as pods, even ones as hosts.

        The hosts transform in a process of their own (on a database server), as a shard of
        a large table does by default.
        """
        started = []
        for shard in range(1, SHARDS + 1):
            if shard % 2:
                pod = self.start(*ROTATE, "--shards", str(SHARDS), index=shard - 1)
                started.append(pod)
            else:
                host = self.start(*ROTATE, "--shard", f"{shard}/{SHARDS}", "--transform-process")
                started.append(host)
        return started


def _report(process: subprocess.Popen[str], shard: int) -> dict[str, Any]:
    """Wait for a ``--json`` run of ``shard``; its one job's report, once it succeeded."""
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"still running after {TIMEOUT:g} s:\n{out}{err}") from None
    assert 0 == process.returncode, out + err
    run = json.loads(out)
    assert (True, f"{shard}/{SHARDS}") == (run["ok"], run["shard"]), out
    (job,) = run["jobs"]
    assert LABEL == job["job"]
    return dict(job)


def _stored(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(RAW.c.id, RAW.c.email)).all())


def test_shards_rotate_every_row_once_beside_a_live_writer(
    accounts: tuple[Engine, Keyring],
) -> None:
    """Four shard processes at once, half as Indexed Job pods, while the application writes:
    each rotates exactly the rows of its shard left to it, no update is lost, every value
    ends under the new key, a rerun changes no byte, and status says k1 is no longer needed."""
    engine, ring = accounts
    scheduler = Scheduler(engine, ring)
    application = Application(engine)
    application.start()
    try:
        application.wait_for(HEAD_START)
        started = application.writes
        reports = [_report(p, shard) for shard, p in enumerate(scheduler.shards(), start=1)]
        during = application.writes - started
    finally:
        application.finish()

    left = [
        {i for i in range(SEEDED) if i % SHARDS == shard} - application.overwritten
        for shard in range(SHARDS)
    ]
    assert [len(rows) for rows in left] == [r["written"] for r in reports]
    assert SEEDED - len(application.overwritten) == sum(r["written"] for r in reports)
    # A row read under k1 was either rotated or changed by the application before the write.
    assert [r["written"] + r["concurrent"] for r in reports] == [r["scanned"] for r in reports]
    assert [0] * SHARDS == [r["failed"] for r in reports]
    assert during > 0, "the application wrote nothing while the shards ran"

    expected = {i: email_of(i, 0) for i in range(SEEDED)} | application.values
    with Session(engine) as session:
        assert expected == dict(session.execute(select(Account.id, Account.email)).all())
    stored = _stored(engine)
    kinds = Counter((inspect_token(v).key_id, inspect_token(v).bound) for v in stored.values())
    assert {("k2", True): len(expected)} == kinds

    # A pod that fails is replaced by one with the same index: it finds nothing left to do.
    replaced = _report(scheduler.start(*ROTATE, "--shards", str(SHARDS), index=2), 3)
    assert (0, 0) == (replaced["scanned"], replaced["written"])
    assert stored == _stored(engine)

    # One status over the whole table, once every shard is done: k1 is no longer needed.
    url = engine.url.render_as_string(hide_password=False)
    status = CliRunner().invoke(cli, ["status", "--db", url, *TARGET, "--json"])
    assert 0 == status.exit_code, status.output
    found = json.loads(status.stdout)
    assert ({"k2": len(expected)}, 0) == (
        found["columns"][0]["by_key"],
        found["columns"][0]["pending"],
    )
    assert {"k2": True, "k1": False} == {k["key_id"]: k["needed"] for k in found["keys"]}
    print(
        f"\n{engine.dialect.name}: {SEEDED} rows in {SHARDS} shards, written "
        f"{[r['written'] for r in reports]}, changed concurrently "
        f"{[r['concurrent'] for r in reports]}; the application wrote {application.writes} "
        f"times ({during} while the shards ran), {len(application.overwritten)} rows under k1"
    )


# -- the shard from the environment -----------------------------------------------------------


def test_each_job_completion_index_names_its_own_shard() -> None:
    """Index K (from 0) is shard K+1 of N: the indexes 0..N-1 name every shard once."""
    named = [
        jobs.shard_from_env(SHARDS, {jobs.SHARD_INDEX_VARIABLE: str(k)}) for k in range(SHARDS)
    ]
    assert [(i, SHARDS) for i in range(1, SHARDS + 1)] == named
    assert (1, 1) == jobs.shard_from_env(1, {jobs.SHARD_INDEX_VARIABLE: "0"})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "JOB_COMPLETION_INDEX is not set: a shard of 4 needs an index from 0 to 3"),
        ("4", "JOB_COMPLETION_INDEX is 4: a shard of 4 needs an index from 0 to 3; the Job's"),
        ("-1", "JOB_COMPLETION_INDEX is '-1': a shard of 4 needs an index from 0 to 3"),
        ("one", "JOB_COMPLETION_INDEX is 'one': a shard of 4 needs an index from 0 to 3"),
    ],
)
def test_a_missing_or_wrong_index_is_a_clear_error(value: str | None, message: str) -> None:
    """An index that is not set, not a number or not below N names the variable and range."""
    environ = {} if value is None else {jobs.SHARD_INDEX_VARIABLE: value}
    with pytest.raises(ConfigurationError) as raised:
        jobs.shard_from_env(SHARDS, environ)
    assert str(raised.value).startswith(message)


def test_cli_shards_refuses_a_missing_index_before_it_connects(no_default_keys: None) -> None:
    """--shards without JOB_COMPLETION_INDEX is a one-line error (exit 1); beside --shard, a
    usage error (exit 2)."""
    args = ["rotate", "--db", "sqlite://", *TARGET, "--shards", str(SHARDS)]
    missing = CliRunner().invoke(cli, args, env={jobs.SHARD_INDEX_VARIABLE: None})
    assert 1 == missing.exit_code
    assert missing.stderr.startswith("Error: JOB_COMPLETION_INDEX is not set: ")
    assert 1 == len(missing.stderr.splitlines())
    out_of_range = CliRunner().invoke(cli, args, env={jobs.SHARD_INDEX_VARIABLE: "4"})
    assert (1, "Error: JOB_COMPLETION_INDEX is 4: ") == (
        out_of_range.exit_code,
        out_of_range.stderr[:34],
    )
    both = CliRunner().invoke(cli, [*args, "--shard", "1/4"], env={jobs.SHARD_INDEX_VARIABLE: "0"})
    assert 2 == both.exit_code
    assert "--shard and --shards both choose the shard; give one" in both.stderr


def test_the_documented_indexed_job_runs_one_pod_per_shard() -> None:
    """The runbook's Job manifest is an Indexed Job whose completions equal its --shards."""
    text = (ROOT / "docs" / "rotation.md").read_text()
    (manifest,) = [
        yaml.safe_load(block.split("```", 1)[0])
        for block in text.split("```yaml\n")[1:]
        if "kind: Job" in block
    ]
    spec = manifest["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    args = [*container.get("command", []), *container.get("args", [])]
    shards = int(args[args.index("--shards") + 1])
    assert ("Indexed", shards) == (spec["completionMode"], spec["completions"])
    assert "rotate" in args
    assert "Never" == spec["template"]["spec"]["restartPolicy"]

"""Faults during key rotation on PostgreSQL: SIGKILL at random points, dropped connections.

Rotation runs in child processes, through its public entry points only: the ``fieldcrypt
rotate`` command (with and without ``--workers``) and :func:`sa_fieldcrypt.jobs.rotate`
(``faults_support.py rotate``). Meanwhile another child process, standing in for the
application, keeps updating rows through the ORM (``faults_support.py writer``), half of them
where the rotation is about to write, and records a version per row in a plain column written
in the same transaction as the value.

After every kill, every row must decrypt to the value of the version it records: an update
the rotation overwrote with a re-encrypted older value would show up as a mismatch. At the end
the writer's own record of its last commits must match, and one more run must leave every
value under the primary key.

A dropped connection is staged exactly: a row lock held by the test stops a batch's UPDATE
half-way through the batch, and ``pg_terminate_backend`` ends that connection, found in
``pg_stat_activity`` by the ``application_name`` the run's URL sets.

The kill points come from a seeded random generator: the seed is printed with every figure, and
``FIELDCRYPT_FAULT_SEED`` replays a run (``FIELDCRYPT_FAULT_KILLS`` changes the number of kill
points: 20 under CI, 5 otherwise).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import (
    Engine,
    Text,
    cast,
    column,
    create_engine,
    func,
    insert,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy import type_coerce as coerce
from sqlalchemy.orm import Session

import faults_support
from conftest import CONNECT_ARGS, IN_CI, server_url
from faults_support import PRIMARY_KEY_ID, Patient, email_of
from sa_fieldcrypt import Keyring, generate_key
from sa_fieldcrypt.cipher import encrypt, inspect_token
from sa_fieldcrypt.providers.env import keyring_from_settings
from sa_fieldcrypt.settings import FieldCryptSettings
from sa_fieldcrypt.testing import temporary_keys

SEED = int(os.environ.get("FIELDCRYPT_FAULT_SEED", "20811"))
KILL_POINTS = int(os.environ.get("FIELDCRYPT_FAULT_KILLS", "20" if IN_CI else "5"))
ROWS = 4000
#: Rows added, under old keys, when fewer than RESTOCK_BELOW rows are left to rotate, so that
#: every kill point finds a run with work to do however fast the machine is.
RESTOCK = 1000
RESTOCK_BELOW = 800
BATCH_SIZE = 10
#: The ways a rotation is started, in turn; worker processes take the longest to start, so
#: they get a fifth of the kill points. A `rotate()` child is killed after 0 to API_BATCHES
#: committed batches and up to API_DELAY s more (mid-batch); a `fieldcrypt` one up to
#: CLI_DELAY s after it starts to rotate (with workers: after a worker first writes).
ENTRY_POINTS = ("rotate()", "fieldcrypt", "rotate()", "fieldcrypt", "fieldcrypt --workers 2")
API_BATCHES = 20
API_DELAY = 0.004
CLI_DELAY = 0.08
#: Bounds on waits for a child process, so that a hung run fails instead of hanging.
TIMEOUT = 60.0
APPLICATION_NAME = "fc-rotate-test"
SUPPORT = Path(faults_support.__file__)
TABLE = Patient.__tablename__
LABEL = f"{TABLE}.email"
# The raw stored text, without the decrypting column type.
RAW = table(TABLE, column("id"), column("email"), column("version"))


@dataclass
class Keys:
    """The keys of the test: k3 primary, k2 and k1 decrypt-only, and the legacy key."""

    ring: Keyring
    legacy: str

    def secrets(self) -> list[str]:
        """Every spelling of every key that could end up in text."""
        needles = []
        for key in [*(k.export() for k in self.ring), self.legacy]:
            raw = base64.urlsafe_b64decode(key)
            needles += [key, key.rstrip("="), key[:20], base64.b64encode(raw).decode()[:20]]
            needles += [raw.hex()[:20], repr(raw)[:20]]
        return needles


@pytest.fixture
def keys() -> Iterator[Keys]:
    """The test's keys, installed in-process as the env provider builds them from settings."""
    ring = Keyring({"k3": generate_key(), "k2": generate_key(), "k1": generate_key()})
    legacy = generate_key()
    settings = FieldCryptSettings(keys=ring.export(), FIELD_ENCRYPTION_KEY=legacy)  # type: ignore[call-arg]
    with temporary_keys(keyring_from_settings(settings)):
        yield Keys(ring, legacy)


@pytest.fixture
def postgresql() -> Iterator[Engine]:
    """An engine on PostgreSQL with an empty patients table."""
    engine = create_engine(server_url("postgresql"), connect_args=CONNECT_ARGS)
    faults_support.Base.metadata.drop_all(engine)
    faults_support.Base.metadata.create_all(engine)
    yield engine
    faults_support.Base.metadata.drop_all(engine)
    engine.dispose()


def _add_rows(engine: Engine, keys: Keys, start: int, count: int) -> None:
    """Rows at version 0: a tenth under k3 as the column writes them (bound to its name), the
    rest written before it was bound: under k1, k2 or legacy bare Fernet."""
    legacy = Fernet(keys.legacy)
    rows = []
    for row_id in range(start, start + count):
        plaintext = email_of(row_id, 0).encode()
        kind = row_id % 10
        if kind == 0:
            token = encrypt(keys.ring.with_primary("k3"), plaintext, context=f"{TABLE}.email")
        elif kind < 4:
            token = encrypt(keys.ring.with_primary("k1"), plaintext)
        elif kind < 6:
            token = encrypt(keys.ring.with_primary("k2"), plaintext)
        else:
            token = legacy.encrypt(plaintext).decode()
        rows.append({"id": row_id, "email": token, "version": 0})
    with engine.begin() as conn:
        conn.execute(insert(RAW), rows)


@dataclass
class Rows:
    """What the table holds, every value decrypted and checked against its version."""

    versions: dict[int, int]
    pending: int  # values rotation still rewrites: not under the primary key, or unbound
    # The first row still under k1 or a legacy token, which the writer never writes: how far
    # the rotation has got.
    cursor: int | None


def _check_rows(engine: Engine) -> Rows:
    """Read every row in one statement (one snapshot); each value must be its version's."""
    stored = coerce(Patient.email, Text()).label("stored")
    stmt = select(Patient.id, Patient.version, Patient.email, stored)
    with Session(engine) as session:
        found = session.execute(stmt.order_by(Patient.id)).all()
    wrong = [row_id for row_id, version, email, _ in found if email != email_of(row_id, version)]
    assert [] == wrong, "rows whose value is not the one of their version (a lost update)"
    pending = 0
    cursor = None
    for row_id, _, _, stored in found:
        info = inspect_token(stored)
        if info.kind == "legacy" or info.key_id != PRIMARY_KEY_ID or not info.bound:
            pending += 1
        if cursor is None and (info.kind == "legacy" or info.key_id == "k1"):
            cursor = row_id
    return Rows({row_id: version for row_id, version, _, _ in found}, pending, cursor)


class Child:
    """A child process whose output lines are collected as they come.

    Args:
        args: the command.
        env: its environment.
        stdin: ``subprocess.PIPE`` to write to it, else it reads nothing.
    """

    def __init__(self, args: list[str], env: dict[str, str], stdin: int = subprocess.DEVNULL):
        self.process = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=SUPPORT.parent,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._open = 2
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self.stdout)),
            threading.Thread(target=self._drain, args=(self.process.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, wanted: Callable[[str], bool], count: int = 1) -> bool:
        """Wait for ``count`` lines that satisfy ``wanted``; False if the process ends first."""
        deadline = time.monotonic() + TIMEOUT
        while count > 0:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"no expected line in {TIMEOUT:g} s:\n{self.output}") from None
            if line is None:
                self._open -= 1
                if self._open == 0:
                    return False
            elif wanted(line):
                count -= 1
        return True

    def kill(self) -> bool:
        """SIGKILL the process; True if the signal ended it (it had not finished already)."""
        self.process.send_signal(signal.SIGKILL)
        return -signal.SIGKILL == self.finish()

    def stop(self) -> None:
        """Kill the process if it still runs, and close its pipes."""
        self.process.kill()
        self.finish()

    def finish(self) -> int:
        """Wait for the process to end and its output to be read; return its exit status."""
        try:
            code = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running after {TIMEOUT:g} s:\n{self.output}") from None
        finally:
            for reader in self._readers:
                reader.join(timeout=TIMEOUT)
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
        return code

    @property
    def output(self) -> str:
        """Everything it wrote, stdout then stderr."""
        return "".join(self.stdout) + "".join(self.stderr)


class Children:
    """Starts the test's child processes, with its keys in their environment, as deployed.

    Args:
        keys: the keys, passed as ``FIELDCRYPT_KEYS`` and ``FIELD_ENCRYPTION_KEY``.
    """

    def __init__(self, keys: Keys):
        self.env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("FIELDCRYPT_") and name != "FIELD_ENCRYPTION_KEY"
        }
        self.env |= {"FIELDCRYPT_KEYS": keys.ring.export(), "FIELD_ENCRYPTION_KEY": keys.legacy}
        self.started: list[Child] = []

    def fieldcrypt(self, *args: str) -> Child:
        """Run the ``fieldcrypt`` console script of this environment."""
        script = Path(sys.executable).with_name("fieldcrypt")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "sa_fieldcrypt.cli"]
        return self._start([*command, *args], subprocess.DEVNULL)

    def support(self, *args: str, stdin: int = subprocess.DEVNULL) -> Child:
        """Run ``faults_support.py`` (the writer, or a rotation through the Python API)."""
        return self._start([sys.executable, str(SUPPORT), *args], stdin)

    def _start(self, args: list[str], stdin: int) -> Child:
        child = Child(args, self.env, stdin)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        """Kill whatever still runs (a test that failed half-way)."""
        for child in self.started:
            child.stop()


@pytest.fixture
def children(keys: Keys) -> Iterator[Children]:
    """Starts child processes; none outlives the test."""
    started = Children(keys)
    yield started
    started.stop_all()


def _url(engine: Engine, application_name: str | None = None) -> str:
    url = engine.url
    if application_name is not None:
        url = url.update_query_dict({"application_name": application_name})
    return url.render_as_string(hide_password=False)


def _assert_nothing_leaked(output: str, keys: Keys) -> None:
    """No plaintext sample, no ciphertext, no key, no traceback in a child's output."""
    assert "clinic.example" not in output
    assert "gAAAAA" not in output  # how every Fernet token, bare or behind fc1:<id>:, starts
    assert [] == [needle for needle in keys.secrets() if needle in output]
    assert "Traceback" not in output


def _rerun_converges(engine: Engine, keys: Keys, children: Children) -> Rows:
    """Run `fieldcrypt rotate` to the end; then `fieldcrypt status` shows every value under
    the primary key, and every row still holds the value of its version."""
    target = ["--db", _url(engine), "--models", "faults_support"]
    rerun = children.fieldcrypt("rotate", *target)
    assert 0 == rerun.finish(), rerun.output
    _assert_nothing_leaked(rerun.output, keys)
    assert f"{LABEL}: scanned" in rerun.output
    shown = children.fieldcrypt("status", *target, "--json")
    assert 0 == shown.finish(), shown.output
    status = json.loads("".join(shown.stdout))["columns"][0]
    rows = _check_rows(engine)
    assert {PRIMARY_KEY_ID: len(rows.versions)} == status["by_key"]
    assert (0, 0, 0, 0) == tuple(status[k] for k in ("legacy", "plaintext", "malformed", "pending"))
    assert (0, None) == (rows.pending, rows.cursor)
    return rows


# -- SIGKILL at random points ----------------------------------------------------------------


@dataclass
class KillPoint:
    """One rotation run, where it was to be killed, and what the table held before and after."""

    number: int
    entry: str
    batches: int | None
    delay: float
    killed: bool
    pending: tuple[int, int]
    cursor: tuple[int | None, int | None]
    concurrent: int

    def __str__(self) -> str:
        where = f"{self.batches} batches + " if self.batches is not None else ""
        fate = "killed" if self.killed else "finished first"
        changed = f", rows changed under it: {self.concurrent}" if self.entry == "rotate()" else ""
        return (
            f"{self.number:>3} {self.entry:<22} at {where}{self.delay * 1000:.1f} ms: {fate}; "
            f"rows to rotate {self.pending[0]} -> {self.pending[1]}, "
            f"first untouched row {self.cursor[0]} -> {self.cursor[1]}{changed}"
        )


def _backends(engine: Engine) -> list[str]:
    """The last statement of each connection the rotation under test has open."""
    with engine.connect() as conn:
        return list(conn.execute(_RUN_BACKENDS, {"name": APPLICATION_NAME}).scalars())


_RUN_BACKENDS = text(
    "SELECT query FROM pg_stat_activity WHERE application_name = :name "
    "AND datname = current_database()"
)


def _poll(done: Callable[[], bool], failure: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, failure
        time.sleep(0.005)


def _kill_one(
    engine: Engine, keys: Keys, children: Children, rng: random.Random, number: int, before: Rows
) -> tuple[KillPoint, Rows]:
    """Start a rotation, SIGKILL it at the next random point, and check every row.

    The entry points take turns (:data:`ENTRY_POINTS`): :func:`jobs.rotate`, killed after
    a random number of committed batches and a random fraction of a batch's time; `fieldcrypt
    rotate`, killed a random time after it starts; `fieldcrypt rotate --workers 2`, killed a
    random time after a worker first writes, which leaves the workers orphaned.
    """
    url = _url(engine, APPLICATION_NAME)
    args = ["rotate", "--db", url, "--models", "faults_support", "--batch-size", str(BATCH_SIZE)]
    batches: int | None = None
    entry = ENTRY_POINTS[(number - 1) % len(ENTRY_POINTS)]
    if entry == "rotate()":
        batches, delay = rng.randint(0, API_BATCHES), rng.uniform(0, API_DELAY)
        child = children.support("rotate", url, str(BATCH_SIZE))
        running = child.wait_for(lambda line: line.startswith("started")) and child.wait_for(
            lambda line: line.startswith("batch"), batches
        )
    elif entry == "fieldcrypt":
        delay = rng.uniform(0, CLI_DELAY)
        child = children.fieldcrypt(*args)
        running = child.wait_for(lambda line: "rows to visit" in line)
    else:
        delay = rng.uniform(0, CLI_DELAY)
        child = children.fieldcrypt(*args, "--workers", "2")

        def writing() -> bool:
            queries = _backends(engine)
            return child.process.poll() is not None or any(
                q.lstrip().upper().startswith("UPDATE") for q in queries
            )

        _poll(writing, f"no worker wrote within {TIMEOUT:g} s")
        running = child.process.poll() is None
    if running:
        time.sleep(delay)
    killed = child.kill()
    if not killed:
        assert 0 == child.process.returncode, child.output
    # Orphaned workers stop at their next batch; a killed process's connections close.
    _poll(lambda: not _backends(engine), "connections of the killed run outlived it")
    _assert_nothing_leaked(child.output, keys)
    after = _check_rows(engine)
    counts = [line.split() for line in child.stdout if line.startswith("batch")]
    point = KillPoint(
        number,
        entry,
        batches,
        delay,
        killed,
        (before.pending, after.pending),
        (before.cursor, after.cursor),
        int(counts[-1][3]) if counts else 0,
    )
    return point, after


def test_sigkill_at_random_points_loses_no_update(
    postgresql: Engine, keys: Keys, children: Children
) -> None:
    """Rotations killed with SIGKILL at random points while the application updates rows
    leave every row decryptable with its latest value, and a rerun converges."""
    engine = postgresql
    started = time.monotonic()
    print(f"\nfault seed {SEED} (FIELDCRYPT_FAULT_SEED replays it), {KILL_POINTS} kill points")
    _add_rows(engine, keys, 0, ROWS)
    rows = ROWS
    rng = random.Random(SEED)  # noqa: S311 - it picks kill points, not keys
    writer = children.support("writer", _url(engine), str(SEED), stdin=subprocess.PIPE)
    points: list[KillPoint] = []
    try:
        state = _check_rows(engine)
        while sum(p.killed for p in points) < KILL_POINTS and len(points) < 3 * KILL_POINTS:
            if state.pending < RESTOCK_BELOW:
                _add_rows(engine, keys, rows, RESTOCK)
                rows += RESTOCK
                state = _check_rows(engine)
            point, state = _kill_one(engine, keys, children, rng, len(points) + 1, state)
            print(point)
            points.append(point)
            assert writer.process.poll() is None, f"the writer stopped:\n{writer.output}"
    finally:
        assert writer.process.stdin is not None
        writer.process.stdin.close()
        written = writer.finish()
    assert 0 == written, writer.output
    record = json.loads(writer.stdout[-1])
    kills = sum(p.killed for p in points)
    assert KILL_POINTS == kills, f"seed {SEED}: only {kills} runs were killed before finishing"

    final = _rerun_converges(engine, keys, children)
    last = {int(row_id): version for row_id, version in record["last"].items()}
    assert rows == len(final.versions)
    assert last == {row_id: v for row_id, v in final.versions.items() if row_id in last}
    assert not any(v for row_id, v in final.versions.items() if row_id not in last)
    print(
        f"fault seed {SEED}: {kills} kill points, {kills} kills survived, {rows} rows, "
        f"{record['writes']} updates by the writer to {len(last)} rows "
        f"({sum(p.concurrent for p in points)} seen changing under the rotate() runs), "
        f"{time.monotonic() - started:.1f} s"
    )


# -- connection dropped mid-batch ------------------------------------------------------------


@dataclass
class Dropped:
    """A rotation whose connection was terminated while it wrote a batch."""

    child: Child
    before: dict[int, str]  # every stored value before the run
    locked: int  # the row whose lock held the batch in flight
    written: list[int]  # rows the batch had written when its connection was terminated
    waited: str  # what its statement waited for, and its transaction id, for a failure


def _drop_connection_mid_batch(
    engine: Engine, children: Children, locked: int, *options: str
) -> Dropped:
    """Run `fieldcrypt rotate`; terminate its connection while it waits for ``locked``'s lock.

    The batch that holds ``locked`` waits for the row lock taken here, with the rows before it
    already updated in its transaction: a batch in flight, held still until its connection
    is terminated with ``pg_terminate_backend``, found by its ``application_name``.
    """
    with engine.connect() as conn:
        before = dict(conn.execute(select(RAW.c.id, RAW.c.email)).all())
    url = _url(engine, APPLICATION_NAME)
    # Blocked by the locker, not by anyone else: a statement can also wait a moment for a
    # lock on the whole table (autovacuum truncating it), before it has written any row.
    waiting = text(
        "SELECT pid, query, backend_xid::text, wait_event FROM pg_stat_activity "
        "WHERE application_name = :name AND datname = current_database() "
        "AND :locker = ANY(pg_blocking_pids(pid))"
    )
    # Rows a transaction has updated, and not yet committed, carry its id as xmax.
    xmax = cast(literal_column("xmax"), Text())
    with engine.connect() as locker, engine.connect() as admin:
        # pg_stat_activity is read once per transaction: poll outside of one.
        admin = admin.execution_options(isolation_level="AUTOCOMMIT")
        locker.execute(select(RAW.c.id).where(RAW.c.id == locked).with_for_update())
        locker_pid = locker.execute(select(func.pg_backend_pid())).scalar_one()
        child = children.fieldcrypt(
            "rotate",
            "--db",
            url,
            "--models",
            "faults_support",
            *options,
            "--batch-size",
            str(BATCH_SIZE),
        )
        deadline = time.monotonic() + TIMEOUT
        while not (
            found := admin.execute(waiting, {"name": APPLICATION_NAME, "locker": locker_pid}).all()
        ):
            assert child.process.poll() is None, child.output
            assert time.monotonic() < deadline, "the rotation never reached the locked row"
            time.sleep(0.02)
        ((pid, query, xid, event),) = found
        assert query.lstrip().upper().startswith("UPDATE")
        updated = select(RAW.c.id).where(xmax == xid).order_by(RAW.c.id)
        written = list(admin.execute(updated).scalars())
        assert admin.execute(select(func.pg_terminate_backend(pid))).scalar_one()
        locker.rollback()
    return Dropped(child, before, locked, written, f"{event} in transaction {xid}")


def _assert_reported(dropped: Dropped, keys: Keys) -> None:
    """The run failed with one clean line that says what happened and what to do."""
    child = dropped.child
    assert 1 == child.finish(), child.output
    assert [] == child.stdout
    error = child.stderr[-1]
    assert error.startswith(f"Error: {LABEL}: database error ("), child.output
    # The driver says so in one of two ways, depending on when it notices.
    dropped_connection = ("terminating connection", "server closed the connection")
    assert any(reason in error for reason in dropped_connection), error
    assert "rerun to resume" in error
    _assert_nothing_leaked(child.output, keys)


def test_connection_dropped_mid_batch_rolls_back_and_is_reported(
    postgresql: Engine, keys: Keys, children: Children
) -> None:
    """A rotation whose connection is terminated while it writes a batch leaves that batch
    unwritten, exits non-zero with a one-line error, and a rerun converges."""
    engine = postgresql
    _add_rows(engine, keys, 0, 1000)
    pending = [i for i in range(1000) if i % 10]  # a tenth starts under k3
    batches = [pending[i : i + BATCH_SIZE] for i in range(0, len(pending), BATCH_SIZE)]
    in_flight = batches[len(batches) // 2]
    dropped = _drop_connection_mid_batch(engine, children, in_flight[BATCH_SIZE // 2])
    _assert_reported(dropped, keys)

    rows = _check_rows(engine)
    with engine.connect() as conn:
        after = dict(conn.execute(select(RAW.c.id, RAW.c.email)).all())
    rotated = {i for i in pending if inspect_token(after[i]).key_id == PRIMARY_KEY_ID}
    assert {i: dropped.before[i] for i in in_flight} == {i: after[i] for i in in_flight}
    half_done = [b for b in batches if rotated & set(b) and not set(b) <= rotated]
    assert [] == half_done
    assert len(pending) - len(rotated) == rows.pending
    # The batch had begun: rows of it were written, uncommitted, when it was stopped.
    assert [] != dropped.written, dropped.waited
    assert set(dropped.written) < set(in_flight)
    print(
        f"\nconnection dropped with {len(dropped.written)} rows of a batch written: "
        f"{len(rotated)} of {len(pending)} rows rotated before it"
    )
    _rerun_converges(engine, keys, children)


def test_worker_connection_dropped_mid_batch_stops_the_run(
    postgresql: Engine, keys: Keys, children: Children
) -> None:
    """With worker processes, a worker whose connection is terminated mid-batch leaves its
    batch unwritten, the run stops with a one-line error, and a rerun converges."""
    engine = postgresql
    _add_rows(engine, keys, 0, 1000)
    dropped = _drop_connection_mid_batch(engine, children, 755, "--workers", "2")
    _assert_reported(dropped, keys)

    _check_rows(engine)
    with engine.connect() as conn:
        after = dict(conn.execute(select(RAW.c.id, RAW.c.email)).all())
    held = [*dropped.written, dropped.locked]
    assert {i: dropped.before[i] for i in held} == {i: after[i] for i in held}
    # The batch had begun: rows of it were written, uncommitted, when it was stopped (if none
    # were, its rows before the locked one were committed one by one, or it had not begun).
    assert [] != dropped.written, dropped.waited
    _rerun_converges(engine, keys, children)

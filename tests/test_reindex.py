"""Reindexing: blind-index columns recomputed in resumable, compare-and-swap batches."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import string
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import (
    Engine,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import rotation_support
import sa_fieldcrypt
from conftest import wait_until
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    ConfigurationError,
    DecryptionError,
    EncryptedText,
    Key,
    Keyring,
    RotationError,
    Scrypt,
    SubstringIndex,
    compound,
    compound_index,
    encrypted_hybrid,
    generate_key,
    last_digits,
    normalize_email,
    normalize_phone,
)
from sa_fieldcrypt.cipher import encrypt
from sa_fieldcrypt.cli import cli
from sa_fieldcrypt.jobs import (
    JobReport,
    ResumeState,
    RunListener,
    Throttle,
    env_key_changes,
    find_columns,
    find_indexes,
    find_substring_indexes,
    reindex,
    retire_keys,
    status,
    verify,
)
from sa_fieldcrypt.jobs.reindex import substring_job
from sa_fieldcrypt.jobs.targets import SubstringColumn, jobs_per_target
from sa_fieldcrypt.testing import assert_indexes_current


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "fc_rx_customers"
    __table_args__ = (UniqueConstraint("station_id", "email_bidx", name="uq_fc_rx_email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    station_id: Mapped[int] = mapped_column(Integer, default=1)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )
    _phone: Mapped[str | None] = mapped_column("phone_encrypted", EncryptedText())
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "_phone", blind_index=BlindIndex("phone_bidx", normalizer=normalize_phone)
    )


class Member(Base):
    """Composite primary key with a UUID part, to page through keyset tuples."""

    __tablename__ = "fc_rx_members"

    tenant: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid("email_encrypted", blind_index="email_bidx")


class Interrupted(Exception):
    """Stands for the process being stopped between two batches."""


class Batches(RunListener):
    """Records each committed batch as (rows, last key); can stop the run after some."""

    def __init__(self, stop_after: int = 0, check: Any = None):
        self.seen: list[tuple[int, tuple[Any, ...] | None]] = []
        self.stop_after = stop_after
        self.check = check

    def batch(self, label: str, rows: int, report: JobReport) -> None:
        self.seen.append((rows, report.last_key))
        if self.check is not None:
            self.check(report)
        if len(self.seen) == self.stop_after:
            raise Interrupted


def _index_status(engine: Engine, model: Any = Customer) -> list[Any]:
    return status(engine, indexes=find_indexes(model)).indexes


@pytest.fixture
def db(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)


def _rotate(old: Keyring) -> Keyring:
    """Install a new writing key in front of ``old`` and return the new keyring."""
    keys = Keyring(
        [Key("b2", generate_key("hmac-sha256"), purpose="blind-index"), *old], purpose="blind-index"
    )
    sa_fieldcrypt.configure(purpose="blind-index", keyring=keys)
    return keys


def _retire(keys: Keyring) -> None:
    sa_fieldcrypt.configure(
        purpose="blind-index", keyring=Keyring([keys.primary], purpose="blind-index")
    )


def _add_customers(engine: Engine, count: int, start: int = 1) -> None:
    with Session(engine) as session:
        session.add_all(
            Customer(id=i, email=f"user{i}@example.com", phone=f"+1 555 010 {i:04d}")
            for i in range(start, start + count)
        )
        session.commit()


def _key_ids(engine: Engine, column: str) -> list[str | None]:
    with engine.connect() as conn:
        table = Customer.__table__
        values = conn.execute(select(table.c[column]).order_by(table.c.id))
        return [None if v is None else v.partition(":")[0] for v in values.scalars()]


def _found(engine: Engine, count: int) -> int:
    with Session(engine) as session:
        return sum(
            len(
                session.scalars(
                    select(Customer.id).where(Customer.email == f"USER{i}@example.com")
                ).all()
            )
            for i in range(1, count + 1)
        )


def test_rotation_moves_every_row_to_the_new_key(db: Engine, index_keyring: Keyring) -> None:
    """After reindex under a new key, the old key can retire and every lookup still finds it."""
    _add_customers(db, 7)
    keys = _rotate(index_keyring)
    report = reindex(db, find_indexes(Base), batch_size=3)
    assert (7, 7, 0) == (report.scanned, report.written, report.concurrent)
    assert ["b2"] * 7 == _key_ids(db, "email_bidx")
    assert ["b2"] * 7 == _key_ids(db, "phone_bidx")
    assert [0, 0] == [s.stale for s in _index_status(db)]
    _retire(keys)
    assert 7 == _found(db, 7)
    with Session(db) as session:
        assert [3] == session.scalars(
            select(Customer.id).where(Customer.phone == "+15550100003")
        ).all()


def test_rerun_rewrites_nothing(db: Engine, index_keyring: Keyring) -> None:
    """A second run finds every index right and writes no row (reruns are always safe)."""
    _add_customers(db, 4)
    _rotate(index_keyring)
    reindex(db, find_indexes(Base))
    statements: list[str] = []
    event.listen(db, "before_cursor_execute", lambda *a: statements.append(a[2]))
    report = reindex(db, find_indexes(Base))
    assert (4, 0) == (report.scanned, report.written)
    assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE")]


def test_batches_commit_one_by_one_in_key_order(db: Engine, index_keyring: Keyring) -> None:
    """Each batch reports after committing; batches follow the primary key without overlap."""
    _add_customers(db, 10)
    _rotate(index_keyring)

    def committed(report: JobReport) -> None:
        # Committed already: a separate connection sees the batch's rows under the new key.
        assert report.last_key is not None
        upto = report.last_key[0]
        assert ["b2"] * upto == _key_ids(db, "email_bidx")[:upto]

    batches = Batches(check=committed)
    reindex(db, find_indexes(Customer), batch_size=4, listener=batches)
    assert [(4, (4,)), (4, (8,)), (2, (10,))] == batches.seen


def _stopped_after_two_batches(db: Engine, index_keyring: Keyring, tmp_path: Path) -> Path:
    """Nine customers under a rotated index key, and a reindex of 3-row batches stopped after
    two of them; its state file."""
    state = tmp_path / "reindex.json"
    _add_customers(db, 9)
    _rotate(index_keyring)
    with pytest.raises(Interrupted):
        reindex(
            db,
            find_indexes(Customer),
            batch_size=3,
            state=ResumeState(state),
            listener=Batches(stop_after=2),
        )
    return state


def test_interrupted_run_resumes_from_its_state_file(
    db: Engine, index_keyring: Keyring, tmp_path: Path
) -> None:
    """A run stopped after two batches resumes after the last committed row with the same state."""
    state = _stopped_after_two_batches(db, index_keyring, tmp_path)
    assert ["b2"] * 6 + ["b1"] * 3 == _key_ids(db, "email_bidx")
    report = reindex(db, find_indexes(Customer), batch_size=3, state=ResumeState(state))
    assert (True, 3) == (report.jobs[0].resumed, report.scanned)
    assert ["b2"] * 9 == _key_ids(db, "email_bidx")
    assert not state.exists()  # the run is over: the next one starts afresh


def test_state_of_a_run_under_another_normalizer_is_ignored(
    db: Engine, index_keyring: Keyring, tmp_path: Path
) -> None:
    """A state file of a run whose index had another normalizer (or size) is not resumed:
    the rows it passed hold values the new one does not compute."""
    state = _stopped_after_two_batches(db, index_keyring, tmp_path)
    targets = find_indexes(Customer)
    changed = []
    for target in targets:
        index = copy.copy(target.blind_index)
        index.normalizer = lambda value: None if value is None else value.strip()
        changed.append(dataclasses.replace(target, blind_index=index, source=None))
    report = reindex(db, changed, batch_size=3, state=ResumeState(state))
    assert (False, 9) == (report.jobs[0].resumed, report.scanned)


def test_state_of_another_rotation_is_ignored(
    db: Engine, index_keyring: Keyring, tmp_path: Path
) -> None:
    """A state file written for an earlier writing key does not skip rows of a new rotation."""
    state = tmp_path / "reindex.json"
    _add_customers(db, 3)
    keys = _rotate(index_keyring)
    reindex(db, find_indexes(Base), state=ResumeState(state))
    sa_fieldcrypt.configure(
        purpose="blind-index",
        keyring=Keyring(
            [Key("b3", generate_key("hmac-sha256"), purpose="blind-index"), *keys],
            purpose="blind-index",
        ),
    )
    report = reindex(db, find_indexes(Base), state=ResumeState(state))
    assert (3, 3) == (report.scanned, report.written)
    assert ["b3"] * 3 == _key_ids(db, "email_bidx")


def test_composite_uuid_keys_page_and_resume(
    db: Engine, index_keyring: Keyring, tmp_path: Path
) -> None:
    """Composite primary keys with UUIDs page correctly and survive the state file."""
    with Session(db) as session:
        session.add_all(
            Member(tenant=t, id=uuid.uuid4(), email=f"m{t}{i}@example.com")
            for t in (1, 2)
            for i in range(4)
        )
        session.commit()
    keys = _rotate(index_keyring)
    state = tmp_path / "reindex.json"
    with pytest.raises(Interrupted):
        reindex(
            db,
            find_indexes(Member),
            batch_size=3,
            state=ResumeState(state),
            listener=Batches(stop_after=2),
        )
    (saved,) = json.loads(state.read_text())["jobs"].values()
    assert isinstance(uuid.UUID(saved[0]["after"][1]["uuid"]), uuid.UUID)
    report = reindex(db, find_indexes(Member), batch_size=3, state=ResumeState(state))
    assert 2 == report.scanned
    _retire(keys)
    with Session(db) as session:
        matches = session.scalars(
            select(Member.tenant).where(Member.email.in_(["m13@example.com", "m20@example.com"]))
        )
        assert [1, 2] == sorted(matches)


def test_concurrent_change_is_not_overwritten(db: Engine, index_keyring: Keyring) -> None:
    """A row the application rewrites between read and write keeps the application's value."""
    _add_customers(db, 3)
    _rotate(index_keyring)
    done = False

    def app_writes_meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal done
        if done or not statement.lstrip().upper().startswith("UPDATE"):
            return
        done = True
        with Session(db) as session:  # another connection: the live application
            session.get(Customer, 1).email = "changed@example.com"
            session.commit()

    event.listen(db, "before_cursor_execute", app_writes_meanwhile)
    report = reindex(db, find_indexes(Customer))
    event.remove(db, "before_cursor_execute", app_writes_meanwhile)
    assert (3, 2, 1) == (report.scanned, report.written, report.concurrent)
    with Session(db) as session:
        assert "changed@example.com" == session.get(Customer, 1).email
        assert [1] == session.scalars(
            select(Customer.id).where(Customer.email == "CHANGED@example.com")
        ).all()


def test_drivers_without_batch_row_counts_write_row_by_row(
    db: Engine, index_keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where executemany row counts are unreliable, rows are written one by one, same result."""
    monkeypatch.setattr(db.dialect, "supports_sane_multi_rowcount", False)
    _add_customers(db, 5)
    keys = _rotate(index_keyring)
    report = reindex(db, find_indexes(Customer), batch_size=2)
    assert (5, 5, 0) == (report.scanned, report.written, report.concurrent)
    _retire(keys)
    assert 5 == _found(db, 5)


def test_rows_written_without_the_hybrid_get_indexed(db: Engine, keyring: Keyring) -> None:
    """Rows inserted with ciphertext but no index (raw SQL, an old app) are indexed by reindex."""
    with db.begin() as conn:
        conn.execute(
            insert(Customer.__table__),
            [{"id": 1, "station_id": 1, "email_encrypted": encrypt(keyring, b"Raw@Example.com")}],
        )
    assert 1 == _index_status(db)[0].no_index
    report = reindex(db, find_indexes(Base))
    assert 1 == report.written
    with Session(db) as session:
        assert [1] == session.scalars(
            select(Customer.id).where(Customer.email == "raw@example.com")
        ).all()


def test_undecryptable_row_is_reported_and_the_run_goes_on(
    db: Engine, index_keyring: Keyring
) -> None:
    """A value that does not decrypt is a failure naming its row; every other row is reindexed."""
    _add_customers(db, 6)
    with db.begin() as conn:
        token = conn.execute(
            text("SELECT email_encrypted FROM fc_rx_customers WHERE id = 5")
        ).scalar_one()
        conn.execute(
            update(Customer.__table__)
            .where(Customer.__table__.c.id == 5)
            .values(email_encrypted=token[:-6] + "AAAAAA")
        )
    _rotate(index_keyring)
    report = reindex(db, find_indexes(Customer), batch_size=3)
    (failure,) = report.jobs[0].failures
    assert (1, (("id", 5),)) == (report.failed, failure.primary_key)
    assert "does not decrypt" in failure.reason
    assert "user5" not in str(failure)
    assert token[-20:] not in str(failure)
    assert ["b2"] * 4 + ["b1"] + ["b2"] == _key_ids(db, "email_bidx")


def test_fail_fast_stops_at_the_undecryptable_row(db: Engine, index_keyring: Keyring) -> None:
    """With fail_fast the run stops at the failing row; the rows before it stay reindexed."""
    _add_customers(db, 6)
    with db.begin() as conn:
        conn.execute(
            update(Customer.__table__)
            .where(Customer.__table__.c.id == 2)
            .values(email_encrypted="fc1:k1:garbage")
        )
    _rotate(index_keyring)
    report = reindex(db, find_indexes(Customer), batch_size=3, fail_fast=True)
    assert (1, False) == (report.failed, report.ok)
    assert ["b2", "b1", "b1", "b1", "b1", "b1"] == _key_ids(db, "email_bidx")


def test_duplicate_written_during_rotation_is_reported_with_both_rows(
    db: Engine, index_keyring: Keyring
) -> None:
    """A duplicate written under the new key while both were active fails naming both rows."""
    with Session(db) as session:
        session.add(Customer(id=1, station_id=7, email="twin@example.com"))
        session.commit()
        _rotate(index_keyring)
        # The unique index compares index values, so while two keys write or linger it
        # cannot see that these are the same email: this is the rotation window.
        session.add(Customer(id=2, station_id=7, email="TWIN@example.com"))
        session.commit()
    report = reindex(db, find_indexes(Customer))
    (failure,) = report.jobs[0].failures
    assert ((("id", 1),), ((("id", 2),),)) == (failure.primary_key, failure.collides_with)
    assert failure.reason.startswith("the same normalized value as row id=2 (its new email_bidx")
    assert "under index key 'b1' and the other row's under 'b2'" in failure.reason
    assert "no index value" not in failure.reason
    assert "twin" not in str(failure).lower()
    assert ["b1", "b2"] == _key_ids(db, "email_bidx")


def test_status_counts_rows_per_key(db: Engine, index_keyring: Keyring) -> None:
    """The status counts index rows per active key, under retired keys, and without index."""
    _add_customers(db, 2)
    keys = _rotate(index_keyring)
    _add_customers(db, 1, start=3)
    with Session(db) as session:
        session.add(Customer(id=4, email="  "))  # not indexed: blank
        session.commit()
    (email, _phone) = _index_status(db)
    assert ("fc_rx_customers.email_bidx", {"b2": 1, "b1": 2}, 0, 1, 2) == (
        email.column,
        email.by_key,
        email.other_keys,
        email.no_index,
        email.stale,
    )
    _retire(keys)
    (email, _phone) = _index_status(db)
    assert ({"b2": 1}, 2, 2) == (email.by_key, email.other_keys, email.stale)


def test_missing_indexes_are_told_from_values_not_indexed(
    db: Engine, index_keyring: Keyring, keyring: Keyring
) -> None:
    """count_missing decrypts unindexed rows: a blank email is not indexed, a raw row is missing."""
    with Session(db) as session:
        session.add(Customer(id=1, email="  "))
        session.commit()
    with db.begin() as conn:
        conn.execute(
            insert(Customer.__table__),
            [{"id": 2, "station_id": 1, "email_encrypted": encrypt(keyring, b"raw@example.com")}],
        )
    report = status(db, indexes=find_indexes(Customer), count_missing=True)
    email = report.indexes[0]
    assert (2, 1, False) == (email.no_index, email.missing, email.done)
    reindex(db, find_indexes(Customer))
    email = status(db, indexes=find_indexes(Customer), count_missing=True).indexes[0]
    assert (1, 0, True) == (email.no_index, email.missing, email.done)


def test_finds_index_columns_of_both_model_styles() -> None:
    """Both the Text-with-hybrid and the EncryptedText style are found, with their decryptors."""
    found = {c.label: (c.values[0].name, type(c.codecs[0]).__name__) for c in find_indexes(Base)}
    assert {
        "fc_rx_customers.email_bidx": ("email_encrypted", "EncryptedText"),
        "fc_rx_customers.phone_bidx": ("phone_encrypted", "EncryptedText"),
        "fc_rx_members.email_bidx": ("email_encrypted", "EncryptedText"),
    } == found


def test_bad_batch_size_is_a_configuration_error(db: Engine) -> None:
    """A batch size below one is refused before any work."""
    with pytest.raises(ConfigurationError, match="batch_size"):
        reindex(db, find_indexes(Base), batch_size=0)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_models_by_attribute_or_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """module:Base, a bare module and a model class name the same models' columns."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    by_attribute = [c.label for c in find_indexes("booking.models:Base")]
    by_module = [c.label for c in find_indexes("booking.models")]
    assert by_attribute == by_module
    assert "core.customers.email_bidx" in by_module
    by_model = {c.table.fullname for c in find_columns("booking.models:Customer")}
    assert {"core.customers"} == by_model


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("booking.models:Nope", "has no attribute 'Nope'"),
        ("booking.models:SQLITE_SCHEMA_MAP", "is not models"),
        ("json", "'json' defines no blind index"),
        ("no_such_module_here", "cannot import the models module"),
    ],
)
def test_model_spec_errors(monkeypatch: pytest.MonkeyPatch, spec: str, expected: str) -> None:
    """A missing module, attribute or blind index is a ConfigurationError saying which."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    with pytest.raises(ConfigurationError, match=expected):
        find_indexes(spec)


def test_status_counts_key_ids_with_like_wildcards_apart(db: Engine, keyring: Keyring) -> None:
    """Index key ids 'b_1' and 'bx1' are counted apart: '_' is not a wildcard there."""
    keys = {
        kid: Key(kid, generate_key("hmac-sha256"), purpose="blind-index") for kid in ("b_1", "bx1")
    }
    for position, kid in enumerate(("bx1", "b_1")):
        sa_fieldcrypt.configure(
            purpose="blind-index", keyring=Keyring([keys[kid]], purpose="blind-index")
        )
        _add_customers(db, 1, start=position + 1)
    sa_fieldcrypt.configure(
        purpose="blind-index", keyring=Keyring(list(keys.values()), purpose="blind-index")
    )
    (email, _phone) = _index_status(db)
    assert ({"b_1": 1, "bx1": 1}, 0, 1) == (email.by_key, email.other_keys, email.stale)


# -- workers and shards -----------------------------------------------------------------------


@pytest.fixture
def subscribers(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    """120 subscribers indexed under b1, then b2 made the writing index key."""
    metadata = rotation_support.Base.metadata
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            rotation_support.Subscriber(id=i, email=f"s{i}@example.com") for i in range(120)
        )
        session.commit()
    _rotate(index_keyring)
    yield engine
    metadata.drop_all(engine)


def _subscriber_keys(engine: Engine) -> set[str]:
    table = rotation_support.Subscriber.__table__
    with engine.connect() as conn:
        return {v.partition(":")[0] for v in conn.execute(select(table.c.email_bidx)).scalars()}


def test_workers_reindex_disjoint_ranges(subscribers: Engine) -> None:
    """Two worker processes reindex the table between them, every row exactly once."""
    indexes = find_indexes("rotation_support:Subscriber")
    report = reindex(subscribers, indexes, workers=2, batch_size=25)
    assert (120, 120, 0) == (report.scanned, report.written, report.failed)
    assert {"b2"} == _subscriber_keys(subscribers)


def test_shards_reindex_the_table_once_between_them(subscribers: Engine) -> None:
    """Shards 1/3, 2/3 and 3/3, run apart, together write every row exactly once."""
    indexes = find_indexes("rotation_support:Subscriber")
    written = [reindex(subscribers, indexes, shard=(i, 3)).written for i in (1, 2, 3)]
    assert (120, 3) == (sum(written), len([w for w in written if w]))
    assert {"b2"} == _subscriber_keys(subscribers)


def test_a_dry_run_reindex_writes_nothing(subscribers: Engine) -> None:
    """A dry run counts the rows it would rewrite and leaves every index as it was."""
    report = reindex(subscribers, find_indexes("rotation_support:Subscriber"), dry_run=True)
    assert (120, True) == (report.written, report.jobs[0].dry_run)
    assert {"b1"} == _subscriber_keys(subscribers)


def test_retire_keys_of_the_blind_index_purpose(
    db: Engine, index_keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blind-index key retires once no index value is under it, checked against the indexes."""
    _add_customers(db, 3)
    keys = _rotate(index_keyring)
    indexes = find_indexes(Customer)
    with pytest.raises(
        RotationError, match=r"key 'b1' is still used by fc_rx_customers.email_bidx"
    ):
        retire_keys(db, [], ["b1"], indexes=indexes)
    reindex(db, indexes)
    assert ("b2",) == retire_keys(db, [], ["b1"], indexes=indexes).ids
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_KEYS", keys.export())
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k1:{generate_key()}")
    change = env_key_changes(["b1"], purpose="blind-index")
    assert ("FIELDCRYPT_BLIND_INDEX_KEYS", ("b1",), ("b2",)) == (
        change.variable,
        change.remove,
        change.keep,
    )


def test_retire_keys_refuses_ids_of_both_purposes(db: Engine, index_keyring: Keyring) -> None:
    """One command retires the keys of one purpose: an encryption and an index id are refused."""
    with pytest.raises(ConfigurationError, match="both encryption and blind-index keys"):
        retire_keys(db, [], ["k1", "b1"], indexes=find_indexes(Customer))


def test_retiring_an_index_key_needs_the_index_columns(db: Engine, index_keyring: Keyring) -> None:
    """Without blind-index columns to check, retiring an index key is refused, not waved through."""
    _add_customers(db, 2)
    _rotate(index_keyring)
    with pytest.raises(ConfigurationError, match="no blind-index column was checked"):
        retire_keys(db, [], ["b1"])


def test_a_collision_found_later_in_the_batch_leaves_the_rest_of_the_batch_written(
    db: Engine, index_keyring: Keyring
) -> None:
    """The colliding row is not written; the rows before and after it in its batch are."""
    with Session(db) as session:
        session.add(Customer(id=1, station_id=7, email="first@example.com"))
        session.add(Customer(id=2, station_id=7, email="twin@example.com"))
        session.add(Customer(id=4, station_id=7, email="last@example.com"))
        session.commit()
        _rotate(index_keyring)
        session.add(Customer(id=3, station_id=7, email="TWIN@example.com"))
        session.commit()
    report = reindex(db, find_indexes(Customer))
    assert (4, 2, 1) == (report.scanned, report.written, report.failed)
    assert ["b2", "b1", "b2", "b2"] == _key_ids(db, "email_bidx")


# -- duplicates in legacy data ----------------------------------------------------------------

#: Legacy rows of station 7 (and one of station 9): ids 3 and 14 hold one email, 6, 11 and 12
#: another, 20 the first again at another station, where the unique index does not compare it.
_LEGACY_EMAILS = {
    3: "dup-a@example.com",
    14: "DUP-A@example.com",
    6: "dup-b@example.com",
    11: " Dup-B@example.com",
    12: "dup-b@EXAMPLE.com",
    20: "dup-a@example.com",
}


def _add_legacy_customers(engine: Engine, keyring: Keyring) -> None:
    """20 rows with ciphertext and no index value, as data from before the index was added."""
    rows = [
        {
            "id": i,
            "station_id": 9 if i == 20 else 7,
            "email_encrypted": encrypt(
                keyring, _LEGACY_EMAILS.get(i, f"user{i}@example.com").encode()
            ),
        }
        for i in range(1, 21)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Customer.__table__), rows)


def test_every_duplicate_is_reported_in_one_run_and_the_other_rows_indexed(
    db: Engine, keyring: Keyring
) -> None:
    """Two duplicate groups, across batches and within one, fail by key; the rest is indexed."""
    _add_legacy_customers(db, keyring)
    report = reindex(db, find_indexes(Customer), batch_size=4)
    assert (20, 17, 3, False) == (report.scanned, report.written, report.failed, report.ok)
    collisions = {f.key: f.collides_with for f in report.jobs[0].failures}
    assert {
        (11,): ((("id", 6),),),
        (12,): ((("id", 6),),),
        (14,): ((("id", 3),),),
    } == collisions
    indexed = [i for i, key_id in enumerate(_key_ids(db, "email_bidx"), start=1) if key_id]
    assert [i for i in range(1, 21) if i not in (11, 12, 14)] == indexed
    for failure in report.jobs[0].failures:
        assert "the same normalized value as row id=" in failure.reason
        assert "this row had no index value" in failure.reason
        assert "while both keys were active" not in failure.reason
        assert "dup-" not in str(failure).lower()
    failures = report.to_dict()["jobs"][0]["failures"]
    by_row = {f["primary_key"]["id"]: f["collides_with"] for f in failures}
    assert {11: [{"id": 6}], 12: [{"id": 6}], 14: [{"id": 3}]} == by_row


def test_a_rerun_reports_the_same_duplicates_and_writes_nothing_else(
    db: Engine, keyring: Keyring
) -> None:
    """Until the rows are merged each run names the same rows; once merged, the run is clean."""
    _add_legacy_customers(db, keyring)
    reindex(db, find_indexes(Customer), batch_size=4)
    again = reindex(db, find_indexes(Customer), batch_size=4)
    assert (0, 3) == (again.written, again.failed)
    assert [(11,), (12,), (14,)] == [f.key for f in again.jobs[0].failures]
    with db.begin() as conn:
        table = Customer.__table__
        conn.execute(table.delete().where(table.c.id.in_([11, 12, 14])))
    assert reindex(db, find_indexes(Customer), batch_size=4).ok


def test_a_normalizer_change_that_makes_two_rows_equal_is_named(
    db: Engine, index_keyring: Keyring
) -> None:
    """A row whose index under the writing key is stale and now collides names that cause."""
    with Session(db) as session:
        session.add(Customer(id=1, station_id=7, email="same@example.com"))
        session.add(Customer(id=2, station_id=7, email="other@example.com"))
        session.commit()
    # Row 2's value changed without its index, as if an older normalizer had indexed it.
    table = Customer.__table__
    with db.begin() as conn:
        stored = conn.execute(select(table.c.email_encrypted).where(table.c.id == 1)).scalar_one()
        conn.execute(update(table).where(table.c.id == 2).values(email_encrypted=stored))
    report = reindex(db, find_indexes(Customer))
    (failure,) = report.jobs[0].failures
    assert ((2,), ((("id", 1),),)) == (failure.key, failure.collides_with)
    assert "normalized differently" in failure.reason


def test_fail_fast_stops_after_the_batch_of_the_first_collision(
    db: Engine, keyring: Keyring
) -> None:
    """With fail_fast the run stops after the batch where a row collided; later rows wait."""
    _add_legacy_customers(db, keyring)
    report = reindex(db, find_indexes(Customer), batch_size=4, fail_fast=True)
    assert (2, False) == (report.failed, report.ok)
    assert [(11,), (12,)] == [f.key for f in report.jobs[0].failures]
    indexed = [i for i, key_id in enumerate(_key_ids(db, "email_bidx"), start=1) if key_id]
    assert [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] == indexed


def test_workers_report_every_collision_between_them(db: Engine, keyring: Keyring) -> None:
    """Two worker processes report each duplicate once, whichever of a group they write first."""
    _add_legacy_customers(db, keyring)
    report = reindex(db, find_indexes("test_reindex:Customer"), batch_size=4, workers=2)
    assert (17, 3) == (report.written, report.failed)
    groups = [{3, 14}, {6, 11, 12}]
    for failure in report.jobs[0].failures:
        (holder,) = failure.collides_with
        group = next(g for g in groups if failure.key[0] in g)
        assert holder[0][1] in group - {failure.key[0]}
    assert [1, 2] == sorted(len(g & {f.key[0] for f in report.jobs[0].failures}) for g in groups)


def test_cli_reindex_lists_every_collision_and_exits_1(db: Engine, keyring: Keyring) -> None:
    """fieldcrypt reindex lists each colliding row by primary key, writes the others, exits 1."""
    _add_legacy_customers(db, keyring)
    url = db.url.render_as_string(hide_password=False)
    args = ["reindex", "--db", url, "--models", "test_reindex:Customer", "--batch-size", "4"]
    result = CliRunner().invoke(cli, args)
    assert 1 == result.exit_code, result.output
    summary, *listed = result.stdout.splitlines()
    assert summary.endswith(
        "fc_rx_customers.(email_bidx, phone_bidx): scanned 20, reindexed 17, "
        "changed concurrently 0, failed 3"
    )
    start = "  failed id={}: the same normalized value as row id={} (its new email_bidx collides"
    expected = [start.format(11, 6), start.format(12, 6), start.format(14, 3)]
    assert 3 == len(listed)
    assert all(line.startswith(e) for e, line in zip(expected, listed, strict=True)), listed
    assert result.stderr.endswith(
        "Error: 3 rows could not be handled (listed above by primary key); the other rows "
        "were. 3 rows hold the same normalized value as another row under a unique "
        "constraint: merge or change those rows, then run the command again\n"
    )
    assert "dup-" not in result.output.lower()
    assert 17 == sum(1 for key_id in _key_ids(db, "email_bidx") if key_id)
    as_json = CliRunner().invoke(cli, [*args, "--json"])
    assert 1 == as_json.exit_code
    data = json.loads(as_json.stdout)
    assert (0, 3) == (data["total"]["written"], data["total"]["failed"])
    assert [[{"id": 6}], [{"id": 6}], [{"id": 3}]] == [
        f["collides_with"] for f in data["jobs"][0]["failures"]
    ]


def test_cli_names_a_composite_uuid_key_as_people_read_it(db: Engine, keyring: Keyring) -> None:
    """A failed row of a (tenant, UUID) key prints as tenant=1, id=<digits>, and 1 row."""
    uid = uuid.UUID("01b4c3d2-0000-4000-8000-00000000abcd")
    with db.begin() as conn:
        conn.execute(
            insert(Member.__table__),
            [{"tenant": 1, "id": uid, "email_encrypted": "fc1:k1:not-a-token"}],
        )
    url = db.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(cli, ["reindex", "--db", url, "--models", "test_reindex:Member"])
    assert 1 == result.exit_code
    assert f"  failed tenant=1, id={uid}: key id 'k1'" in result.stdout
    assert f"FAILED fc_rx_members.email_bidx at primary key (tenant=1, id={uid})" in result.stderr
    assert "fc_rx_members.email_bidx: 1 row to visit" in result.stderr
    assert "Error: 1 row could not be handled" in result.stderr
    assert "UUID(" not in result.output


@pytest.mark.parametrize("workers", [1, 2])
def test_verify_with_indexes_names_rows_whose_value_was_swapped_in(
    db: Engine, workers: int
) -> None:
    """A value copied from another row decrypts, but verify fails it against the row's index."""
    if workers == 2 and db.dialect.name == "sqlite":
        pytest.skip("worker processes need a server database")
    with Session(db) as session:
        session.add_all(
            [
                Customer(id=1, email="alice@example.com", phone="+15550100001"),
                Customer(id=2, station_id=2, email="mallory@evil.test", phone="+15550100666"),
                Customer(id=3, email="carol@example.com", phone=None),
            ]
        )
        session.commit()
    table = Customer.__table__
    with db.begin() as conn:
        token = conn.execute(select(table.c.email_encrypted).where(table.c.id == 2)).scalar_one()
        conn.execute(update(table).where(table.c.id == 1).values(email_encrypted=token))
    report = verify(
        db,
        find_columns("test_reindex:Customer"),
        indexes=find_indexes("test_reindex:Customer"),
        workers=workers,
    )
    assert not report.ok
    failed = [(f.column, f.key) for job in report.jobs for f in job.failures]
    assert [("fc_rx_customers.email_bidx", (1,))] == failed
    reason = next(f.reason for job in report.jobs for f in job.failures)
    assert "copied in from another row" in reason
    assert "mallory" not in reason


class SearchBase(DeclarativeBase):
    pass


class Caller(SearchBase):
    """One attribute, three indexes: whole values, last four digits, and those in 8 bits."""

    __tablename__ = "fc_rx_callers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_last4: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_last4_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "phone_encrypted",
        blind_index=[
            BlindIndex("phone_bidx", normalizer=normalize_phone),
            BlindIndex("phone_last4", normalizer=last_digits(4)),
            BlindIndex("phone_last4_tiny", normalizer=last_digits(4), bits=8),
        ],
    )


def test_reindex_fills_every_index_of_an_attribute(
    engine: Engine, keyring: Keyring, index_keyring: Keyring
) -> None:
    """Rows written without indexes get all three index columns, which lookups then use."""
    SearchBase.metadata.drop_all(engine)
    SearchBase.metadata.create_all(engine)
    try:
        phones = {i: f"+1 555 010 {['0000', '1234'][i % 2]}" for i in range(1, 7)}
        with engine.begin() as conn:
            conn.execute(
                insert(Caller.__table__),
                [
                    {"id": i, "phone_encrypted": encrypt(keyring, p.encode())}
                    for i, p in phones.items()
                ],
            )
        indexes = find_indexes(Caller)
        labels = ["fc_rx_callers.phone_bidx", "fc_rx_callers.phone_last4"]
        assert [*labels, "fc_rx_callers.phone_last4_tiny"] == [c.label for c in indexes]
        assert [6, 6, 6] == [s.no_index for s in status(engine, indexes=indexes).indexes]
        report = reindex(engine, indexes)
        assert (6, 6) == (report.scanned, report.written)
        after = status(engine, indexes=indexes).indexes
        assert [(0, {"b1": 6})] * 3 == [(s.no_index, s.by_key) for s in after]
        with Session(engine) as session:
            for index in ("phone_last4", "phone_last4_tiny"):
                found = session.scalars(select(Caller).where(Caller.phone.index(index) == "0000"))
                assert [2, 4, 6] == sorted(c.id for c in found)
    finally:
        SearchBase.metadata.drop_all(engine)


class Texter(SearchBase):
    """A compound index over an encrypted hybrid and a plain column, in 8 bits."""

    __tablename__ = "fc_rx_members_compound"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    consent_sms: Mapped[bool] = mapped_column(default=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone = encrypted_hybrid("phone_encrypted")
    sms_last4_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    sms_last4 = compound_index(
        BlindIndex(
            "sms_last4_bidx", normalizer=compound(consent_sms=None, phone=last_digits(4)), bits=8
        )
    )


def test_reindex_fills_and_checks_compound_indexes(
    engine: Engine, keyring: Keyring, index_keyring: Keyring
) -> None:
    """A compound index is found, counted, filled from its parts and checked like any other."""
    SearchBase.metadata.drop_all(engine)
    SearchBase.metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(Texter.__table__),
                [
                    {
                        "id": i,
                        "consent_sms": i % 2 == 0,
                        "phone_encrypted": encrypt(keyring, f"+1 555 010 {i:04d}".encode()),
                    }
                    for i in range(1, 7)
                ],
            )
        (index,) = find_indexes(Texter)
        assert ("fc_rx_members_compound.sms_last4_bidx", ["consent_sms", "phone_encrypted"]) == (
            index.label,
            [v.name for v in index.values],
        )
        assert 6 == status(engine, indexes=[index]).indexes[0].no_index
        assert 6 == reindex(engine, [index]).written
        assert 0 == status(engine, indexes=[index]).indexes[0].no_index
        assert 0 == reindex(engine, [index]).written
        assert 0 == verify(engine, [], indexes=[index]).failed
        with Session(engine) as session:
            found = session.scalars(select(Texter).where(Texter.sms_last4 == (True, "0004")))
            assert [4] == [m.id for m in found]
    finally:
        SearchBase.metadata.drop_all(engine)


# -- slow indexes ----------------------------------------------------------------------------
#
# One table, declared twice: before and after its cost parameters change. Small parameters
# keep the tests fast; the construction is the same at any cost.

BEFORE = Scrypt(n=2**12, r=1, p=1)
AFTER = Scrypt(n=2**12, r=2, p=1)


class SlowBase(DeclarativeBase):
    pass


class ChangedBase(DeclarativeBase):
    pass


def _slow_patient(base: type[DeclarativeBase], cost: Scrypt, name: str) -> Any:
    """The patients table with a full-size and a truncated slow index, and a compound one."""

    class Patient(base):  # type: ignore[valid-type, misc]
        __tablename__ = "fc_rx_patients"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        ward: Mapped[str] = mapped_column(String(8))
        code_encrypted: Mapped[str | None] = mapped_column(Text)
        code_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        code_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        code = encrypted_hybrid(
            "code_encrypted",
            blind_index=[
                BlindIndex("code_bidx", slow=cost),
                BlindIndex("code_tiny", slow=cost, bits=8),
            ],
        )
        ward_code_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
        ward_code = compound_index(
            BlindIndex("ward_code_bidx", normalizer=compound(ward=None, code=None), slow=cost)
        )

    Patient.__name__ = Patient.__qualname__ = name
    return Patient


SlowPatient = _slow_patient(SlowBase, BEFORE, "SlowPatient")
ChangedPatient = _slow_patient(ChangedBase, AFTER, "ChangedPatient")
CODES = {1: "0042", 2: "0042", 3: "1234", 4: "9999"}


@pytest.fixture
def slow_db(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    SlowBase.metadata.drop_all(engine)
    SlowBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(SlowPatient(id=i, ward="a", code=c) for i, c in CODES.items())
        session.commit()
    yield engine
    SlowBase.metadata.drop_all(engine)


def _slow_ids(engine: Engine, model: Any, code: str) -> list[list[int]]:
    """The rows each index of ``model`` finds for ``code``: full size, truncated, compound."""
    with Session(engine) as session:
        conditions = [
            model.code == code,
            model.code.index("code_tiny") == code,
            model.ward_code == ("a", code),
        ]
        return [sorted(p.id for p in session.scalars(select(model).where(c))) for c in conditions]


def test_slow_indexes_find_exactly_their_rows(slow_db: Engine) -> None:
    """Full-size, truncated and compound slow indexes each find the rows of the term."""
    assert [[1, 2]] * 3 == _slow_ids(slow_db, SlowPatient, "0042")
    assert [[4]] * 3 == _slow_ids(slow_db, SlowPatient, "9999")
    assert [[]] * 3 == _slow_ids(slow_db, SlowPatient, "0000")
    with slow_db.connect() as conn:
        stored = conn.execute(select(SlowPatient.__table__.c.code_bidx)).scalars().all()
    assert all(v.startswith("b1$s12.1.1:") for v in stored)


def test_changed_cost_parameters_are_stale_until_reindexed(slow_db: Engine) -> None:
    """After a parameter change, status counts every row stale and reindex rewrites them all."""
    before = status(slow_db, indexes=find_indexes(ChangedPatient)).indexes
    assert [({"b1": 0}, {"b1": 4}, 4)] * 3 == [(i.by_key, i.other_cost, i.stale) for i in before]
    report = status(slow_db, indexes=find_indexes(ChangedPatient))
    assert not report.reindexed
    assert any("other cost parameters" in p for p in report.problems())
    assert "writing index key id 'b1', cost parameters s12.2.1)" in report.describe()
    assert "other cost parameters" in report.describe()
    assert [[]] * 3 == _slow_ids(slow_db, ChangedPatient, "0042")  # lookups miss them

    assert 4 == reindex(slow_db, find_indexes(ChangedPatient)).written
    after = status(slow_db, indexes=find_indexes(ChangedPatient)).indexes
    assert [({"b1": 4}, {}, 0)] * 3 == [(i.by_key, i.other_cost, i.stale) for i in after]
    assert [[1, 2]] * 3 == _slow_ids(slow_db, ChangedPatient, "0042")
    assert 0 == reindex(slow_db, find_indexes(ChangedPatient)).written
    # Seen from the old parameters, the rows are now the stale ones.
    assert 4 == status(slow_db, indexes=find_indexes(SlowPatient)).indexes[0].stale


def test_slow_index_key_rotation_finds_rows_under_both_keys(
    slow_db: Engine, index_keyring: Keyring
) -> None:
    """Under a new writing key, old rows are found and counted stale; retiring waits for reindex."""
    keys = _rotate(index_keyring)
    with Session(slow_db) as session:
        session.add(SlowPatient(id=5, ward="a", code="0042"))
        session.commit()
    assert [[1, 2, 5]] * 3 == _slow_ids(slow_db, SlowPatient, "0042")
    counted = status(slow_db, indexes=find_indexes(SlowPatient)).indexes
    assert [({"b2": 1, "b1": 4}, 4)] * 3 == [(i.by_key, i.stale) for i in counted]
    with pytest.raises(RotationError, match="'b1' is still used"):
        retire_keys(slow_db, [], ["b1"], indexes=find_indexes(SlowPatient))
    assert 4 == reindex(slow_db, find_indexes(SlowPatient)).written
    _retire(keys)
    assert [[1, 2, 5]] * 3 == _slow_ids(slow_db, SlowPatient, "0042")
    assert 0 == status(slow_db, indexes=find_indexes(SlowPatient)).indexes[0].stale


def test_retiring_a_key_counts_its_rows_of_other_cost_parameters(
    slow_db: Engine, index_keyring: Keyring
) -> None:
    """Rows under an old key with old parameters still need that key: retire-key refuses."""
    _rotate(index_keyring)
    with pytest.raises(RotationError, match="'b1' is still used"):
        retire_keys(slow_db, [], ["b1"], indexes=find_indexes(ChangedPatient))


def test_a_value_swapped_into_a_slow_indexed_row_is_refused(slow_db: Engine) -> None:
    """check_index works on slow indexes: a copied-in value does not match the row's index."""
    table = SlowPatient.__table__
    with slow_db.begin() as conn:
        token = conn.execute(select(table.c.code_encrypted).where(table.c.id == 4)).scalar_one()
        conn.execute(update(table).where(table.c.id == 1).values(code_encrypted=token))
    with Session(slow_db) as session:
        found = session.scalars(select(SlowPatient).where(SlowPatient.code == "0042")).all()
        assert [1, 2] == sorted(p.id for p in found)
        with pytest.raises(DecryptionError, match="altered"):
            session.get(SlowPatient, 1).code  # noqa: B018 -- the read is the test
    assert 1 == verify(slow_db, [], indexes=find_indexes(SlowPatient)[:1]).failed


def test_cli_reindex_check_exits_1_while_rows_have_other_cost_parameters(
    slow_db: Engine,
) -> None:
    """`reindex --check` fails on rows of old parameters; `reindex` rewrites; --check passes."""
    url = slow_db.url.render_as_string(hide_password=False)
    arguments = ["reindex", "--db", url, "--models", "test_reindex:ChangedPatient"]
    before = CliRunner().invoke(cli, [*arguments, "--check", "--json"])
    assert 1 == before.exit_code, before.output
    counts = json.loads(before.output)["indexes"]
    assert [4, 4, 4] == [c["stale"] for c in counts]
    assert 0 == CliRunner().invoke(cli, arguments).exit_code
    assert 0 == CliRunner().invoke(cli, [*arguments, "--check"]).exit_code


# -- substring indexes -------------------------------------------------------------------------


class NoteBase(DeclarativeBase):
    pass


class Note(NoteBase):
    """A substring index over a ciphertext column, with its side table of trigram values."""

    __tablename__ = "fc_rx_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid("body_encrypted", substring=SubstringIndex("fc_rx_note_trigrams"))


class Memo(NoteBase):
    """A substring index whose owner has a composite primary key."""

    __tablename__ = "fc_rx_memos"
    tenant: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    _text: Mapped[str | None] = mapped_column("text", EncryptedText())
    text = encrypted_hybrid("_text", substring=SubstringIndex("fc_rx_memo_trigrams", bits=8))


class Voucher(NoteBase):
    """A substring index whose owner's primary key is text."""

    __tablename__ = "fc_rx_vouchers"
    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    _terms: Mapped[str | None] = mapped_column("terms", EncryptedText())
    terms = encrypted_hybrid("_terms", substring=SubstringIndex("fc_rx_voucher_trigrams"))


NOTE_TRIGRAMS = NoteBase.metadata.tables["fc_rx_note_trigrams"]
NOTE_BODIES = {1: "Ada Lovelace", 2: "Grace Hopper", 3: "Alan Turing", 4: "ab"}


@pytest.fixture
def notes(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    NoteBase.metadata.drop_all(engine)
    NoteBase.metadata.create_all(engine)
    yield engine
    NoteBase.metadata.drop_all(engine)


def _core_notes(engine: Engine, keyring: Keyring) -> None:
    """Notes written by Core, as a migration would: their side table is empty."""
    with engine.begin() as conn:
        conn.execute(
            insert(Note.__table__),
            [
                {"id": i, "body_encrypted": encrypt(keyring, b.encode())}
                for i, b in NOTE_BODIES.items()
            ],
        )


def _containing(engine: Engine, term: str) -> list[int]:
    with Session(engine) as session:
        return sorted(n.id for n in session.scalars(select(Note).where(Note.body.contains(term))))


def _side_rows_of(engine: Engine, owner: int) -> set[str]:
    with engine.connect() as conn:
        stmt = select(NOTE_TRIGRAMS.c.trigram).where(NOTE_TRIGRAMS.c.owner_id == owner)
        return set(conn.execute(stmt).scalars())


def _side_key_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        values = conn.execute(select(NOTE_TRIGRAMS.c.trigram)).scalars()
        return {v.partition(":")[0] for v in values}


def test_substring_reindex_fills_side_rows_of_core_rows(notes: Engine, keyring: Keyring) -> None:
    """Rows written by Core are found by contains() only after reindex, which writes each once."""
    _core_notes(notes, keyring)
    assert [] == _containing(notes, "lovel")
    report = reindex(notes, find_substring_indexes(Note))
    assert (4, 3, 1) == (report.scanned, report.written, report.unchanged)
    assert [1] == _containing(notes, "LOVEL")
    assert [1, 2] == _containing(notes, "ace")
    statements: list[str] = []
    event.listen(notes, "before_cursor_execute", lambda *a: statements.append(a[2]))
    again = reindex(notes, find_substring_indexes(Note))
    assert (4, 0, 4) == (again.scanned, again.written, again.unchanged)
    written = ("UPDATE", "DELETE", "INSERT")
    assert not [s for s in statements if s.lstrip().upper().startswith(written)]


def test_substring_reindex_writes_side_rows_of_owners_keyed_by_text(notes: Engine) -> None:
    """Owners whose primary key is text get exactly their values' side rows, found again."""
    terms = {"SPRING-24": "ten percent off spa treatments", "A&B 'x'": "free late checkout"}
    with notes.begin() as conn:
        conn.execute(
            insert(Voucher.__table__),
            [{"code": c, "terms": t} for c, t in terms.items()],
        )
    report = reindex(notes, find_substring_indexes(Voucher))
    assert (2, 2) == (report.scanned, report.written)
    with Session(notes) as session:
        assert 2 == assert_indexes_current(session, Voucher)
        found = session.scalars(select(Voucher).where(Voucher.terms.contains("late check")))
        assert ["A&B 'x'"] == [v.code for v in found]


def test_a_substring_reindex_batch_longer_than_a_statement_may_be_is_written(
    notes: Engine, keyring: Keyring
) -> None:
    """A batch of long texts whose side rows, as one JSON document, would be longer than the
    server's max_allowed_packet is written whole, in several statements."""
    if notes.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("only MySQL/MariaDB limit a statement's length (max_allowed_packet)")
    with notes.connect() as conn:
        packet = int(conn.execute(text("SELECT @@max_allowed_packet")).scalar_one())
    if packet > 16 * 2**20:
        pytest.skip(f"the server takes statements of {packet:,} bytes: too many side rows")
    # About 3,500 side rows per owner, some 20 characters each as JSON: past the packet.
    owners = 5 * packet // (4 * 3500 * 20)
    rng = random.Random(18)  # noqa: S311 - it makes texts, not keys
    bodies = {i: "".join(rng.choices(string.ascii_lowercase, k=4000)) for i in range(1, owners + 1)}
    with notes.begin() as conn:
        conn.execute(
            insert(Note.__table__),
            [{"id": i, "body_encrypted": encrypt(keyring, b.encode())} for i, b in bodies.items()],
        )
    report = reindex(notes, find_substring_indexes(Note), batch_size=1000)
    assert (owners, 0) == (report.written, report.failed)
    with notes.connect() as conn:
        indexed = select(func.count(NOTE_TRIGRAMS.c.owner_id.distinct()))
        assert owners == conn.execute(indexed).scalar_one()
    term = bodies[7][700:720]
    assert [i for i, b in bodies.items() if term in b] == _containing(notes, term)


def test_substring_reindex_replaces_stale_side_rows(notes: Engine, keyring: Keyring) -> None:
    """A value changed by Core keeps its old side rows until reindex replaces them."""
    with Session(notes) as session:
        session.add_all(Note(id=i, body=b) for i, b in NOTE_BODIES.items())
        session.commit()
    with notes.begin() as conn:
        conn.execute(
            update(Note.__table__)
            .where(Note.__table__.c.id == 2)
            .values(body_encrypted=encrypt(keyring, b"Barbara Liskov"))
        )
    assert [] == _containing(notes, "liskov")
    report = reindex(notes, find_substring_indexes(Note))
    assert (4, 1) == (report.scanned, report.written)
    assert [2] == _containing(notes, "liskov")
    with notes.connect() as conn:
        owners = conn.execute(select(NOTE_TRIGRAMS.c.owner_id).distinct()).scalars().all()
    assert [1, 2, 3] == sorted(owners)


def test_substring_reindex_on_an_autocommit_engine_writes_a_row_and_its_side_rows_at_once(
    notes: Engine, keyring: Keyring
) -> None:
    """An AUTOCOMMIT engine too: a batch whose side INSERT fails leaves the old side rows."""
    with Session(notes) as session:
        session.add_all(Note(id=i, body=b) for i, b in NOTE_BODIES.items())
        session.commit()
    with notes.begin() as conn:
        conn.execute(
            update(Note.__table__)
            .where(Note.__table__.c.id == 2)
            .values(body_encrypted=encrypt(keyring, b"Barbara Liskov"))
        )
    autocommit = notes.execution_options(isolation_level="AUTOCOMMIT")
    before = _side_rows_of(notes, 2)
    assert before

    def fail_side_inserts(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("INSERT INTO FC_RX_NOTE_TRIGRAMS"):
            raise RuntimeError("the run is killed here")

    event.listen(notes, "before_cursor_execute", fail_side_inserts)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            reindex(autocommit, find_substring_indexes(Note))
    finally:
        event.remove(notes, "before_cursor_execute", fail_side_inserts)
    # Its old side rows stay: they were not deleted in a commit of their own.
    assert before == _side_rows_of(notes, 2)
    assert [] == _containing(notes, "liskov")
    reindex(notes, find_substring_indexes(Note))
    assert [2] == _containing(notes, "liskov")


def test_substring_reindex_leaves_a_row_the_application_changed(
    notes: Engine, keyring: Keyring
) -> None:
    """A row rewritten by the application between read and write keeps the application's rows."""
    if notes.dialect.name == "sqlite":
        pytest.skip("SQLite allows one writer: the application cannot write during a batch")
    _core_notes(notes, keyring)

    def application_writes(conn: Any, keys: list[tuple[Any, ...]]) -> None:
        with Session(notes) as session:
            note = session.get(Note, 1)
            assert note is not None
            note.body = "Katherine Johnson"
            session.commit()

    report = reindex(notes, find_substring_indexes(Note), before_write=application_writes)
    assert (2, 1) == (report.written, report.concurrent)
    assert [1] == _containing(notes, "katherine")
    assert [] == _containing(notes, "lovelace")
    assert [2] == _containing(notes, "hopper")


def test_substring_status_counts_owners_per_key(notes: Engine, keyring: Keyring) -> None:
    """Status counts owners under the writing key, under older keys, and without side rows."""
    _core_notes(notes, keyring)
    (found,) = status(notes, indexes=find_substring_indexes(Note)).substrings
    assert (0, 0, 4, None) == (found.current, found.older, found.no_side_rows, found.stale)
    (checked,) = status(notes, indexes=find_substring_indexes(Note), count_missing=True).substrings
    assert (3, False) == (checked.stale, checked.done)
    reindex(notes, find_substring_indexes(Note))
    report = status(notes, indexes=find_substring_indexes(Note), count_missing=True)
    (done,) = report.substrings
    assert (3, 0, 1, 0, True) == (
        done.current,
        done.older,
        done.no_side_rows,
        done.stale,
        done.done,
    )
    assert report.reindexed
    assert "fc_rx_note_trigrams  (substring index; writing index key id 'b1')" in report.describe()


def test_substring_status_counts_orphan_side_rows_apart(notes: Engine) -> None:
    """Side rows of a NULL value or of a deleted row are orphans, not owners under a key."""
    with Session(notes) as session:
        session.add_all(Note(id=i, body=b) for i, b in NOTE_BODIES.items())
        session.commit()
    with notes.begin() as conn:
        table = Note.__table__
        conn.execute(update(table).where(table.c.id == 1).values(body_encrypted=None))
        if notes.dialect.name == "sqlite":  # which enforces no foreign key unless asked to
            conn.execute(table.delete().where(table.c.id == 2))
    deleted = 1 if notes.dialect.name == "sqlite" else 0
    report = status(notes, indexes=find_substring_indexes(Note))
    (found,) = report.substrings
    assert (2 - deleted, {"b1": 2 - deleted}, 1 + deleted) == (
        found.current,
        found.by_key,
        found.orphans,
    )
    assert not found.done
    (line,) = [line for line in report.describe().splitlines() if "orphans" in line]
    assert ["orphans", str(1 + deleted)] == line.split()[:2]
    assert line.endswith("reindex deletes these")
    reindex(notes, find_substring_indexes(Note))  # those of the NULL value, then the deleted row's
    (after,) = status(notes, indexes=find_substring_indexes(Note)).substrings
    assert (2 - deleted, 0, True) == (after.current, after.orphans, after.done)


def _behind_the_foreign_key(engine: Engine, statement: Any) -> None:
    """Run ``statement`` as a database that does not enforce the side table's foreign key."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        elif engine.dialect.name != "sqlite":  # SQLite enforces no foreign key unless asked to
            conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
        try:
            conn.execute(statement)
            conn.commit()
        finally:
            if engine.dialect.name not in ("postgresql", "sqlite"):
                conn.exec_driver_sql("SET SESSION foreign_key_checks = 1")


def _delete_behind_the_foreign_key(engine: Engine, ids: list[int]) -> None:
    """Delete notes, leaving their side rows behind."""
    notes = Note.__table__
    _behind_the_foreign_key(engine, notes.delete().where(notes.c.id.in_(ids)))
    assert all(_side_rows_of(engine, i) for i in ids)


def _side_row_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(NOTE_TRIGRAMS)).scalar_one())


def _orm_notes(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(Note(id=i, body=b) for i, b in NOTE_BODIES.items())
        session.commit()


def test_reindex_deletes_the_side_rows_of_deleted_owners(notes: Engine) -> None:
    """A dry run counts the side rows of deleted rows; reindex deletes them, and only them."""
    _orm_notes(notes)
    _delete_behind_the_foreign_key(notes, [1, 3])
    left = len(_side_rows_of(notes, 1)) + len(_side_rows_of(notes, 3))
    kept = _side_rows_of(notes, 2)
    (before,) = status(notes, indexes=find_substring_indexes(Note)).substrings
    assert (2, False) == (before.orphans, before.done)
    total = _side_row_count(notes)
    dry = reindex(notes, find_substring_indexes(Note), dry_run=True)
    assert (left, 0) == (dry.orphans, dry.written)
    assert left == dry.to_dict()["total"]["orphans"]
    assert total == _side_row_count(notes)  # nothing deleted
    report = reindex(notes, find_substring_indexes(Note), batch_size=1)
    assert (2, 0, left) == (report.scanned, report.written, report.jobs[0].orphans)
    assert (set(), set(), kept) == (
        _side_rows_of(notes, 1),
        _side_rows_of(notes, 3),
        _side_rows_of(notes, 2),
    )
    assert [2] == _containing(notes, "hopper")
    again = reindex(notes, find_substring_indexes(Note))
    assert (0, 0) == (again.orphans, again.written)
    found = status(notes, indexes=find_substring_indexes(Note))
    (after,) = found.substrings
    assert (0, True, True) == (after.orphans, after.done, found.reindexed)


def test_a_shard_or_a_stopped_reindex_leaves_the_side_rows_of_deleted_owners(
    notes: Engine,
) -> None:
    """Only a whole run, not a shard nor one stopped early, deletes the side rows of gone rows."""
    _orm_notes(notes)
    _delete_behind_the_foreign_key(notes, [1])
    left = len(_side_rows_of(notes, 1))
    sharded = reindex(notes, find_substring_indexes(Note), shard=(1, 1))
    assert (3, 0) == (sharded.scanned, sharded.orphans)
    assert left == len(_side_rows_of(notes, 1))
    notes_table = Note.__table__
    with notes.begin() as conn:
        conn.execute(
            update(notes_table).where(notes_table.c.id == 2).values(body_encrypted="fc1:k1:garbage")
        )
    stopped = reindex(notes, find_substring_indexes(Note), fail_fast=True)
    assert (1, False, 0) == (stopped.failed, stopped.ok, stopped.orphans)
    assert left == len(_side_rows_of(notes, 1))
    # A run that visited every owner deletes them, though one owner failed.
    whole = reindex(notes, find_substring_indexes(Note))
    assert (1, True, left) == (whole.failed, whole.jobs[0].completed, whole.orphans)
    assert set() == _side_rows_of(notes, 1)


def _text_apart_from(engine: Engine, owner: int) -> str:
    """A note text none of whose trigram values ``owner``'s side rows hold.

    The new row's side rows must not collide with the old ones under the side table's
    primary key, which a truncated trigram value of another text may.
    """
    (target,) = find_substring_indexes(Note)
    held = _side_rows_of(engine, owner)
    for candidate in ("Barbara Liskov", "Katherine Johnson", "Edsger Dijkstra"):
        if not target.substring.trigram_values(candidate) & held:
            return candidate
    raise AssertionError("every candidate text shares a trigram value with the old rows")


def _first_sweep_page(statement: str) -> bool:
    return statement.lstrip().upper().startswith("SELECT DISTINCT") and (
        "fc_rx_note_trigrams" in statement
    )


def test_reindex_keeps_the_side_rows_of_an_owner_inserted_during_its_sweep(
    notes: Engine,
) -> None:
    """A row inserted, with its side rows, after the sweep found its key gone keeps them."""
    if notes.dialect.name == "sqlite":
        pytest.skip("SQLite allows one writer: the application cannot write during a batch")
    _orm_notes(notes)
    _delete_behind_the_foreign_key(notes, [2])
    new = _text_apart_from(notes, 2)
    inserted: list[str] = []

    def application_inserts(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if inserted or not _first_sweep_page(statement):
            return
        inserted.append(statement)
        with Session(notes) as session:  # the key the sweep just found gone, used again
            session.add(Note(id=2, body=new))
            session.commit()

    event.listen(notes, "after_cursor_execute", application_inserts)
    try:
        report = reindex(notes, find_substring_indexes(Note))
    finally:
        event.remove(notes, "after_cursor_execute", application_inserts)
    assert (1, 0) == (len(inserted), report.orphans)
    (target,) = find_substring_indexes(Note)
    assert target.substring.trigram_values(new) <= _side_rows_of(notes, 2)
    assert [2] == _containing(notes, new.split()[1])


def _a_session_waits_for_a_lock(engine: Engine) -> bool:
    """Whether a session of this test's database waits for a row lock now."""
    if engine.dialect.name == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    else:
        query = (
            "SELECT count(*) FROM information_schema.innodb_trx t "
            "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
            "WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"
        )
    with engine.connect() as conn:
        return bool(conn.execute(text(query)).scalar())


def test_reindex_keeps_the_side_rows_of_an_owner_being_inserted(notes: Engine) -> None:
    """Side rows an uncommitted transaction inserts with their owner survive the sweep.

    The key was gone when the sweep read it; the application inserts the row and its side
    rows in one transaction, which commits only while (or after) the sweep deletes.
    """
    if notes.dialect.name == "sqlite":
        pytest.skip("SQLite allows one writer: the application cannot write during a batch")
    _orm_notes(notes)
    _delete_behind_the_foreign_key(notes, [2])
    old = _side_rows_of(notes, 2)
    new = _text_apart_from(notes, 2)
    flushed = threading.Event()
    with Session(notes) as application, ThreadPoolExecutor(1) as pool:

        def application_inserts(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if flushed.is_set() or not _first_sweep_page(statement):
                return
            application.add(Note(id=2, body=new))
            application.flush()  # the row and its side rows, not committed
            flushed.set()

        event.listen(notes, "after_cursor_execute", application_inserts)
        try:
            sweeping = pool.submit(reindex, notes, find_substring_indexes(Note))
            wait_until(lambda: sweeping.done() or flushed.is_set())
            # MariaDB's sweep waits for the row's lock; PostgreSQL's does not see the rows.
            wait_until(lambda: sweeping.done() or _a_session_waits_for_a_lock(notes))
            application.commit()
            report = sweeping.result()
        finally:
            event.remove(notes, "after_cursor_execute", application_inserts)
    (target,) = find_substring_indexes(Note)
    wanted = target.substring.trigram_values(new)
    if notes.dialect.name == "postgresql":
        # Its snapshot saw the old rows, which were no one's, and not the new ones.
        assert (len(old), wanted) == (report.orphans, _side_rows_of(notes, 2))
    else:
        # Its locking read of the owner waited for the insert, then found the row there.
        assert (0, old | wanted) == (report.orphans, _side_rows_of(notes, 2))
    assert [2] == _containing(notes, new.split()[1])


def test_substring_rotation_rewrites_side_rows_under_the_new_key(
    notes: Engine, index_keyring: Keyring
) -> None:
    """Under a new index key lookups find old side rows; reindex moves them; the old key retires."""
    with Session(notes) as session:
        session.add_all(Note(id=i, body=b) for i, b in NOTE_BODIES.items())
        session.commit()
    keys = _rotate(index_keyring)
    assert [1] == _containing(notes, "lovelace")
    (before,) = status(notes, indexes=find_substring_indexes(Note)).substrings
    assert (0, 3, {"b2": 0, "b1": 3}) == (before.current, before.older, before.by_key)
    with pytest.raises(RotationError, match="fc_rx_note_trigrams"):
        retire_keys(notes, (), ["b1"], indexes=find_substring_indexes(Note))
    report = reindex(notes, find_substring_indexes(Note), batch_size=2)
    assert (4, 3) == (report.scanned, report.written)
    assert {"b2"} == _side_key_ids(notes)
    retire_keys(notes, (), ["b1"], indexes=find_substring_indexes(Note))
    _retire(keys)
    with notes.begin() as conn:  # a side row under the retired key, as a restored backup has
        conn.execute(insert(NOTE_TRIGRAMS), [{"owner_id": 4, "trigram": "b1:00ff"}])
    report_after = status(notes, indexes=find_substring_indexes(Note))
    assert (1, False) == (report_after.substrings[0].retired, report_after.ready)
    assert "fc_rx_note_trigrams: 1 owner with side rows under index keys" in str(report_after)
    assert [1] == _containing(notes, "lovelace")
    assert [3] == _containing(notes, "turing")


def test_substring_reindex_does_not_resume_a_run_under_other_bits(
    notes: Engine, keyring: Keyring, tmp_path: Path
) -> None:
    """A state file of a run under other bits= is not resumed: every owner is visited again."""
    state = tmp_path / "reindex.json"
    _core_notes(notes, keyring)
    with pytest.raises(Interrupted):
        reindex(
            notes,
            find_substring_indexes(Note),
            batch_size=2,
            state=ResumeState(state),
            listener=Batches(stop_after=1),
        )
    (target,) = find_substring_indexes(Note)
    coarser = copy.copy(target.substring)
    coarser.bits = 8
    report = reindex(
        notes,
        [dataclasses.replace(target, substring=coarser, source=None)],
        batch_size=2,
        state=ResumeState(state),
    )
    assert (False, 4, 3) == (report.jobs[0].resumed, report.scanned, report.written)
    assert {2} == {len(v.partition(":")[2]) for v in _side_rows_of(notes, 1)}  # 8 bits


class CountingThrottle(Throttle):
    """A throttle whose rate never holds a batch back; records every charge."""

    def __init__(self) -> None:
        super().__init__(max_rate=1e9)
        self.charged: list[int] = []

    def charge(self, rows: int) -> None:
        self.charged.append(rows)
        super().charge(rows)


def test_substring_reindex_charges_the_throttle_for_side_rows_too(
    notes: Engine, keyring: Keyring
) -> None:
    """A throttle's rate counts the side rows a substring reindex writes, not only owners."""
    _core_notes(notes, keyring)
    throttle = CountingThrottle()
    report = reindex(notes, find_substring_indexes(Note), batch_size=2, throttle=throttle)
    with notes.connect() as conn:
        side_rows = conn.execute(select(func.count()).select_from(NOTE_TRIGRAMS)).scalar_one()
    assert (3, 29) == (report.written, side_rows)  # 10 + 10 + 9 trigrams
    assert report.written + side_rows == sum(throttle.charged)


def test_the_side_rows_of_deleted_owners_are_charged_to_the_throttle(notes: Engine) -> None:
    """A throttle's rate counts the side rows a reindex deletes for owners that are gone."""
    _orm_notes(notes)
    _delete_behind_the_foreign_key(notes, [1, 3])
    left = len(_side_rows_of(notes, 1)) + len(_side_rows_of(notes, 3))
    throttle = CountingThrottle()
    report = reindex(notes, find_substring_indexes(Note), batch_size=1, throttle=throttle)
    assert (0, left, left) == (report.written, report.orphans, sum(throttle.charged))


def test_substring_reindex_computes_each_owners_trigram_values_once(
    notes: Engine, keyring: Keyring
) -> None:
    """The side rows written are those the comparison computed: one decryption per owner."""
    _core_notes(notes, keyring)
    (target,) = find_substring_indexes(Note)
    counting = copy.copy(target.substring)
    calls: list[int] = []

    def trigram_values(value: Any) -> set[str]:
        calls.append(1)
        return target.substring.trigram_values(value)

    counting.trigram_values = trigram_values  # type: ignore[method-assign]
    report = reindex(notes, [dataclasses.replace(target, substring=counting, source=None)])
    assert (4, 3) == (report.scanned, report.written)
    assert 4 == len(calls)
    assert [1] == _containing(notes, "lovelace")


def test_substring_counts_are_worded_as_owners_with_side_rows(
    notes: Engine, index_keyring: Keyring
) -> None:
    """Retire-key and status name owners with side rows, never "owner's side rowss"."""
    with Session(notes) as session:
        session.add_all(Note(id=i, body=b) for i, b in NOTE_BODIES.items())
        session.commit()
    _rotate(index_keyring)
    with pytest.raises(RotationError) as refused:
        retire_keys(notes, (), ["b1"], indexes=find_substring_indexes(Note))
    assert "fc_rx_note_trigrams (3 owners with side rows)" in str(refused.value)
    described = status(notes, indexes=find_substring_indexes(Note)).describe()
    assert "reindex: the side rows of 3 owners to rewrite (`fieldcrypt reindex`)" in described


def test_substring_verify_finds_a_tampered_side_row(notes: Engine, index_keyring: Keyring) -> None:
    """Verify names the owner whose side rows were altered, and passes the others."""
    with Session(notes) as session:
        session.add_all(Note(id=i, body=b) for i, b in NOTE_BODIES.items())
        session.commit()
    assert verify(notes, [], indexes=find_substring_indexes(Note)).ok
    with notes.begin() as conn:
        one = conn.execute(
            select(NOTE_TRIGRAMS.c.trigram).where(NOTE_TRIGRAMS.c.owner_id == 1).limit(1)
        ).scalar_one()
        taken = set(
            conn.execute(
                select(NOTE_TRIGRAMS.c.trigram).where(NOTE_TRIGRAMS.c.owner_id == 3)
            ).scalars()
        )
        if one not in taken:
            conn.execute(insert(NOTE_TRIGRAMS), [{"owner_id": 3, "trigram": one}])
        else:
            conn.execute(
                NOTE_TRIGRAMS.delete().where(
                    NOTE_TRIGRAMS.c.owner_id == 3, NOTE_TRIGRAMS.c.trigram == one
                )
            )
    report = verify(notes, [], indexes=find_substring_indexes(Note))
    (job,) = report.jobs
    assert [(3,)] == [f.key for f in job.failures]
    assert "does not match its side rows in fc_rx_note_trigrams" in job.failures[0].reason


def test_substring_verify_reads_a_row_and_its_side_rows_in_one_snapshot(notes: Engine) -> None:
    """A value changed by the application between the two reads of a page is no failure.

    The engine reads under READ COMMITTED here, where each statement sees what is committed
    when it starts: the page's rows would be older than their side rows.
    """
    if notes.dialect.name == "sqlite":
        pytest.skip("SQLite allows one writer: the application cannot write during a read")
    with Session(notes) as session:
        session.add_all(Note(id=i, body=b) for i, b in NOTE_BODIES.items())
        session.commit()
    written: list[str] = []

    def application_writes(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        page = "FROM fc_rx_notes" in statement and "ORDER BY" in statement
        if written or not page:
            return
        written.append(statement)
        with Session(notes) as session:  # after the page, before its side rows are read
            note = session.get(Note, 1)
            assert note is not None
            note.body = "Katherine Johnson"
            session.commit()

    event.listen(notes, "after_cursor_execute", application_writes)
    try:
        report = verify(
            notes.execution_options(isolation_level="READ COMMITTED"),
            [],
            indexes=find_substring_indexes(Note),
        )
    finally:
        event.remove(notes, "after_cursor_execute", application_writes)
    assert 1 == len(written)
    assert [] == [f.key for f in report.jobs[0].failures]
    assert verify(notes, [], indexes=find_substring_indexes(Note)).ok  # the new value's rows


def test_cli_substring_reindex_check_exits_1_until_side_rows_are_current(
    notes: Engine, keyring: Keyring
) -> None:
    """fieldcrypt reindex --check exits 1 while side rows are stale, 0 after a reindex."""
    _core_notes(notes, keyring)
    url = notes.url.render_as_string(hide_password=False)
    args = ["reindex", "--db", url, "--models", "test_reindex:Note"]
    before = CliRunner().invoke(cli, [*args, "--check", "--json"])
    assert 1 == before.exit_code, before.output
    assert [3] == [s["stale"] for s in json.loads(before.stdout)["substrings"]]
    assert [] == _containing(notes, "lovelace")
    run = CliRunner().invoke(cli, args)
    assert 0 == run.exit_code, run.output
    assert "fc_rx_note_trigrams: scanned 4, reindexed 3" in run.stdout
    after = CliRunner().invoke(cli, [*args, "--check"])
    assert 0 == after.exit_code, after.output
    assert "stale or missing" in after.stdout
    verified = CliRunner().invoke(cli, ["verify", "--db", url, "--models", "test_reindex:Note"])
    assert 0 == verified.exit_code, verified.output
    shown = CliRunner().invoke(cli, ["status", "--db", url, "--models", "test_reindex:Note"])
    assert 0 == shown.exit_code, shown.output
    assert "fc_rx_note_trigrams  (substring index; writing index key id 'b1')" in shown.stdout
    assert "reindex: every index value is under the writing key" in shown.stdout


def test_cli_reindex_check_exits_1_while_side_rows_of_deleted_rows_remain(notes: Engine) -> None:
    """--check and --dry-run count the side rows of deleted rows; reindex deletes them."""
    _orm_notes(notes)
    _delete_behind_the_foreign_key(notes, [1])
    left = len(_side_rows_of(notes, 1))
    url = notes.url.render_as_string(hide_password=False)
    args = ["reindex", "--db", url, "--models", "test_reindex:Note"]
    checked = CliRunner().invoke(cli, [*args, "--check", "--json"])
    assert 1 == checked.exit_code, checked.output
    (found,) = json.loads(checked.stdout)["substrings"]
    assert (1, 0, False) == (found["orphans"], found["stale"], found["done"])
    dry = CliRunner().invoke(cli, [*args, "--dry-run", "--json"])
    assert 0 == dry.exit_code, dry.output
    shown = json.loads(dry.stdout)
    assert (left, left) == (shown["jobs"][0]["orphans"], shown["total"]["orphans"])
    dry_text = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert f"orphan side rows to delete {left}" in dry_text.stdout
    assert left == len(_side_rows_of(notes, 1))
    told = CliRunner().invoke(cli, [*args, "--check"])
    assert 1 == told.exit_code, told.output
    assert "reindex deletes these" in told.stdout
    assert "reindex: the orphan side rows of 1 primary key to delete" in told.stdout
    run = CliRunner().invoke(cli, args)
    assert 0 == run.exit_code, run.output
    assert "fc_rx_note_trigrams: scanned 3, reindexed 0, up to date 3, " in run.stdout
    assert f"orphan side rows deleted {left}" in run.stdout
    assert set() == _side_rows_of(notes, 1)
    after = CliRunner().invoke(cli, [*args, "--check"])
    assert 0 == after.exit_code, after.output
    assert "reindex: every index value is under the writing key" in after.stdout


def test_substring_reindex_in_worker_processes(notes: Engine, keyring: Keyring) -> None:
    """Worker processes find the substring index again by name and split the owners."""
    if notes.dialect.name == "sqlite":
        pytest.skip("worker processes need a server database")
    with notes.begin() as conn:
        conn.execute(
            insert(Note.__table__),
            [
                {"id": i, "body_encrypted": encrypt(keyring, f"note {i:03d}".encode())}
                for i in range(40)
            ],
        )
    report = reindex(notes, find_substring_indexes("test_reindex:Note"), workers=2, batch_size=7)
    assert (40, 40) == (report.scanned, report.written)
    assert [17] == _containing(notes, "e 017")
    again = reindex(notes, find_substring_indexes("test_reindex:Note"), transform_process=True)
    assert (40, 0) == (again.scanned, again.written)


def test_a_job_finds_its_substring_index_again_not_a_column_of_the_same_label(
    index_keyring: Keyring,
) -> None:
    """A side table core.x and a column x of a table core share a label; kinds tell them apart."""
    (target,) = find_substring_indexes("twins_support:AuditBase")
    assert [target.label] == [c.label for c in find_columns("twins_support:Audit")]
    found: list[Any] = []
    (job,) = jobs_per_target(create_engine("sqlite://"), [target], _found_again(found), 1)
    job(create_engine("sqlite://"))
    assert [SubstringColumn] == [type(t) for t in found]
    assert target.side is found[0].side


def test_a_label_of_two_databases_models_is_refused_not_shadowed(index_keyring: Keyring) -> None:
    """Two MetaData with one side table name: the job says so instead of taking the first."""
    main, archived = [
        t for t in find_substring_indexes("twins_support") if t.label == "fc_twin_note_trigrams"
    ]
    assert main.side is not archived.side
    (job,) = jobs_per_target(create_engine("sqlite://"), [archived], _found_again([]), 1)
    with pytest.raises(ConfigurationError, match="2 targets named fc_twin_note_trigrams"):
        job(create_engine("sqlite://"))


def _found_again(found: list[Any]) -> Any:
    def build(engine: Engine, target: Any) -> Any:
        found.append(target)
        return substring_job(engine, target)

    return build


def test_substring_reindex_composite_owner_keys(notes: Engine) -> None:
    """Owners with a composite key get their own side rows, paged and compared by tuple."""
    with Session(notes) as session:
        session.add_all(Memo(tenant=t, id=i, text=f"memo {t}-{i}") for t in (1, 2) for i in (1, 2))
        session.commit()
    memo = Memo.__table__
    with notes.begin() as conn:
        conn.execute(
            update(memo)
            .where(memo.c.tenant == 2, memo.c.id == 1)
            .values(text="rewritten by Core")  # the column type encrypts it
        )
    report = reindex(notes, find_substring_indexes(Memo), batch_size=3)
    assert (4, 1) == (report.scanned, report.written)
    with Session(notes) as session:
        hits = session.scalars(select(Memo).where(Memo.text.contains("by core")))
        assert [(2, 1)] == [(m.tenant, m.id) for m in hits]
        assert [] == session.scalars(select(Memo).where(Memo.text.contains("2-1"))).all()


def test_reindex_deletes_the_side_rows_of_deleted_owners_of_composite_keys(notes: Engine) -> None:
    """Owners of a composite key that are gone lose their side rows, paged by tuple; no others."""
    with Session(notes) as session:
        session.add_all(Memo(tenant=t, id=i, text=f"memo {t}-{i}") for t in (1, 2) for i in (1, 2))
        session.commit()
    memo = Memo.__table__
    side = NoteBase.metadata.tables["fc_rx_memo_trigrams"]

    def owners() -> list[tuple[int, int]]:
        with notes.connect() as conn:
            rows = conn.execute(select(side.c.owner_tenant, side.c.owner_id).distinct()).all()
        return sorted((t, i) for t, i in rows)

    gone = or_(and_(memo.c.tenant == 1, memo.c.id == 2), and_(memo.c.tenant == 2, memo.c.id == 1))
    theirs = or_(
        and_(side.c.owner_tenant == 1, side.c.owner_id == 2),
        and_(side.c.owner_tenant == 2, side.c.owner_id == 1),
    )
    with notes.connect() as conn:
        left = conn.execute(select(func.count()).select_from(side).where(theirs)).scalar_one()
    _behind_the_foreign_key(notes, memo.delete().where(gone))
    assert [(1, 1), (1, 2), (2, 1), (2, 2)] == owners()
    report = reindex(notes, find_substring_indexes(Memo), batch_size=1)
    assert (2, 0, left) == (report.scanned, report.written, report.orphans)
    assert [(1, 1), (2, 2)] == owners()
    assert 0 == reindex(notes, find_substring_indexes(Memo)).orphans

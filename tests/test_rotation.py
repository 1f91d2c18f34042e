"""The rotation engine and its commands: status, rotate, verify, plaintext migration, retire."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    create_engine,
    insert,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy import types as sa_types
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import rotation_support
import sa_fieldcrypt
from conftest import CONNECT_ARGS, server_url
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    ConfigurationError,
    DecryptionError,
    EncryptedText,
    Keyring,
    RotationError,
    ValueTypeError,
    encrypted_hybrid,
    generate_key,
    jobs,
    normalize_email,
)
from sa_fieldcrypt.cipher import encrypt, inspect_token
from sa_fieldcrypt.cli import _Progress, cli
from sa_fieldcrypt.config import current_keyring, swap_default_keys
from sa_fieldcrypt.jobs.rotation import plaintext_to_token
from sa_fieldcrypt.legacy import BareFernet
from sa_fieldcrypt.settings import FieldCryptSettings

TABLE = "fc_rot_mixed"


@pytest.fixture(params=["postgresql", "mariadb"])
def server_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine on each database server (for what SQLite does not have)."""
    engine = create_engine(server_url(request.param), connect_args=CONNECT_ARGS)
    yield engine
    engine.dispose()


@pytest.fixture
def mariadb_engine() -> Iterator[Engine]:
    """An engine on MariaDB."""
    engine = create_engine(server_url("mariadb"), connect_args=CONNECT_ARGS)
    yield engine
    engine.dispose()


@pytest.fixture
def postgresql_engine() -> Iterator[Engine]:
    """An engine on PostgreSQL."""
    engine = create_engine(server_url("postgresql"), connect_args=CONNECT_ARGS)
    yield engine
    engine.dispose()


@pytest.fixture
def ring() -> Iterator[Keyring]:
    """k3 primary, k2 and k1 decrypt-only, installed as the process default keys."""
    keyring = Keyring({"k3": generate_key(), "k2": generate_key(), "k1": generate_key()})
    previous = swap_default_keys(None)
    sa_fieldcrypt.configure(keyring=keyring)
    yield keyring
    swap_default_keys(previous)


def _under(keyring: Keyring, key_id: str, plaintext: str, context: str | None = None) -> str:
    return encrypt(keyring.with_primary(key_id), plaintext.encode(), context=context)


def _legacy(keyring: Keyring, key_id: str, plaintext: str) -> str:
    return Fernet(keyring.get(key_id).export()).encrypt(plaintext.encode()).decode()


def _make_table(engine: Engine, name: str = TABLE, *columns: Column[Any]) -> Table:
    metadata = MetaData()
    table = Table(
        name,
        metadata,
        *(columns or (Column("id", Integer, primary_key=True, autoincrement=False),)),
        Column("email", Text),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    return table


def _mixed_rows(
    keyring: Keyring, count: int = 64, context: str = f"{TABLE}.email"
) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """Rows as the column writes them now (k3, bound to ``context``), unbound ones under k2
    and k1 (written before binding), legacy tokens of two keys, plaintext, "" and NULL."""
    rows, expected = [], {}
    for i in range(count):
        plaintext = f"user{i}@example.com ü"
        kind = i % 8
        stored: str | None
        if kind == 0:
            stored = _under(keyring, "k3", plaintext, context)
        elif kind == 1:
            stored = _under(keyring, "k2", plaintext)
        elif kind == 2:
            stored = _under(keyring, "k1", plaintext)
        elif kind == 3:
            stored = _legacy(keyring, "k1", plaintext)
        elif kind == 4:
            stored = _legacy(keyring, "k2", plaintext)
        elif kind == 5:
            stored = plaintext
        elif kind == 6:
            stored, plaintext = "", ""
        else:
            stored = plaintext = None  # type: ignore[assignment]
        rows.append({"id": i, "email": stored})
        expected[i] = plaintext
    return rows, expected


@pytest.fixture
def mixed(engine: Engine, ring: Keyring) -> Iterator[tuple[Engine, Table, dict[int, Any]]]:
    """A table with every kind of stored value, and the plaintext each row should read as."""
    table = _make_table(engine)
    rows, expected = _mixed_rows(ring)
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    yield engine, table, expected
    table.metadata.drop_all(engine)


def _stored(engine: Engine, table: Table) -> dict[Any, Any]:
    with engine.connect() as conn:
        return {row[0]: row[-1] for row in conn.execute(select(table).order_by(*table.primary_key))}


def _reader(table: Table, column: str = "email") -> EncryptedText:
    """A type that reads the values of ``table.column`` as the column does, bound or not, and
    bare Fernet tokens, which the column declares."""
    return EncryptedText(context=f"{table.fullname}.{column}", legacy=[BareFernet()])


def _decrypted(engine: Engine, table: Table, column: str = "email") -> dict[Any, Any]:
    reader = _reader(table, column)
    return {
        key: None if value is None else reader.decrypt_token(value).decode()
        for key, value in _stored(engine, table).items()
    }


def _column(engine: Engine, name: str = TABLE) -> jobs.EncryptedColumn:
    """``name``.email as its models declare it: tokens, and bare Fernet tokens written earlier.

    A codec of its own, so one process only; ``jobs.reflect_column(engine, name, "email")``
    is the column that declares no legacy format, which worker processes reflect again.
    """
    return jobs.reflect_column(engine, name, "email", EncryptedText(legacy=[BareFernet()]))


# -- status -------------------------------------------------------------------------------


def test_status_counts_every_kind_of_value(mixed: tuple[Engine, Table, dict[int, Any]]) -> None:
    """status counts rows per key id, legacy, plaintext ("" included) and NULL, in SQL."""
    engine, _, _ = mixed
    found = jobs.status(engine, [_column(engine)]).columns[0]
    assert {"k3": 8, "k2": 8, "k1": 8} == found.by_key
    assert (16, 16, 8, 0) == (found.legacy, found.plaintext, found.null, found.malformed)
    assert 64 == found.total
    assert 32 == found.pending


def test_status_says_which_keys_are_still_needed(
    mixed: tuple[Engine, Table, dict[int, Any]],
) -> None:
    """A key with rows, or possibly behind legacy tokens, is needed; the primary always is."""
    engine, _, _ = mixed
    report = jobs.status(engine, [_column(engine)])
    assert {"k3": True, "k2": True, "k1": True} == {k.key_id: k.needed for k in report.key_usage()}
    jobs.rotate(engine, [_column(engine)])
    keys = {k.key_id: k for k in jobs.status(engine, [_column(engine)]).key_usage()}
    assert (True, False, False) == (keys["k3"].needed, keys["k2"].needed, keys["k1"].needed)
    assert "retire-key k2" in jobs.status(engine, [_column(engine)]).describe()


def test_status_names_key_ids_missing_from_the_keyring(engine: Engine, ring: Keyring) -> None:
    """Rows under a key the keyring lacks are counted under that id, flagged undecryptable."""
    table = _make_table(engine)
    stray = Keyring({"gone": generate_key()})
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "email": encrypt(stray, b"x")}])
    report = jobs.status(engine, [_column(engine)])
    assert {"gone": 1} == report.columns[0].unknown_keys
    gone = next(k for k in report.key_usage() if k.key_id == "gone")
    assert (False, True) == (gone.in_keyring, gone.needed)
    assert "NOT IN THE KEYRING" in report.describe()


_header = st.sampled_from(
    [
        "fc1:",
        "FC1:",
        "gAAAAA",
        "gaaaaa",
        "fc1::",
        "fc1:k3:",
        "fc1:k3:c:",
        "fc1:k3:r:",
        " fc1:k3:",
        "",
    ]
)
_key_ish = st.text(alphabet="k3_-:Ké%", max_size=40)
_stored_values = st.one_of(
    st.none(),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    st.builds(lambda h, k, t: h + k + t, _header, _key_ish, st.sampled_from(["", ":x", "x"])),
    # Bare Fernet tokens, whole or with a character more: only their text is classified.
    st.builds(
        lambda data, more: Fernet(Fernet.generate_key()).encrypt(data).decode() + more,
        st.binary(max_size=40),
        st.sampled_from(["", "A", " "]),
    ),
)


@pytest.mark.parametrize("declared", [False, True], ids=["undeclared", "bare-fernet"])
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(_stored_values, max_size=12))
def test_status_in_sql_matches_reading_every_value(
    engine: Engine, ring: Keyring, declared: bool, values: list[str | None]
) -> None:
    """For any stored values, the SQL GROUP BY classifies exactly as Python does, whether the
    column declares bare Fernet tokens or not."""
    table = _make_table(engine, "fc_rot_status_property")
    try:
        if values:
            with engine.begin() as conn:
                conn.execute(insert(table), [{"id": i, "email": v} for i, v in enumerate(values)])
        name = "fc_rot_status_property"
        column = _column(engine, name) if declared else jobs.reflect_column(engine, name, "email")
        in_sql = jobs.status(engine, [column], in_sql=True).to_dict()
        by_reading = jobs.status(engine, [column], in_sql=False).to_dict()
        assert by_reading == in_sql
    finally:
        table.metadata.drop_all(engine)


# -- legacy tokens: no key named, found by trial ------------------------------------------


@pytest.fixture
def legacy(engine: Engine) -> Iterator[tuple[Engine, Keyring]]:
    """2 tokens under 'cur' and 41 bare legacy tokens: 37 of 'cur', 3 of 'old', 1 of no key.

    'new' is primary; 'spare' is a Fernet key that opens none of them, 'siv' an AEAD key,
    which cannot open a bare Fernet token at all.
    """
    keyring = Keyring(
        {
            "new": generate_key(),
            "cur": generate_key(),
            "old": generate_key(),
            "spare": generate_key(),
            "siv": generate_key("aes-gcm-siv"),
        }
    )
    previous = swap_default_keys(None)
    sa_fieldcrypt.configure(keyring=keyring)
    gone = Keyring({"gone": generate_key()})
    rows = [{"id": i, "email": _under(keyring, "cur", f"u{i}")} for i in (1, 2)]
    rows += [{"id": i, "email": _legacy(keyring, "cur", f"u{i}")} for i in range(3, 40)]
    rows += [{"id": i, "email": _legacy(keyring, "old", f"u{i}")} for i in range(40, 43)]
    rows.append({"id": 43, "email": _legacy(gone, "gone", "u43")})
    table = _make_table(engine, "fc_rot_legacy")
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    yield engine, keyring
    table.metadata.drop_all(engine)
    swap_default_keys(previous)


def test_status_charges_legacy_tokens_to_no_key(legacy: tuple[Engine, Keyring]) -> None:
    """Legacy tokens count as key unknown: every Fernet key of the keyring may be needed."""
    engine, _ = legacy
    report = jobs.status(engine, [_column(engine, "fc_rot_legacy")])
    (column,) = report.columns
    assert ({"cur": 2}, 41) == (column.by_key, column.legacy)
    assert ("new", "cur", "old", "spare") == column.legacy_candidates
    assert (None, None) == (column.legacy_by_key, column.legacy_unopened)
    keys = {k.key_id: k for k in report.key_usage()}
    assert {"new": 41, "cur": 41, "old": 41, "spare": 41, "siv": 0} == {
        key_id: k.legacy_possible for key_id, k in keys.items()
    }
    assert {"new": True, "cur": True, "old": True, "spare": True, "siv": False} == {
        key_id: k.needed for key_id, k in keys.items()
    }
    text = report.describe()
    assert (
        f"  {'legacy':<28} {41:>12}  fernet: they name no key: rotate moves these; "
        "--resolve-legacy tries the keys\n"
    ) in text
    assert (
        "  cur                          decrypt-only; still needed by 2 rows, and maybe by 41 "
        "legacy tokens (key unknown): run rotate\n"
    ) in text
    assert (
        "  old                          decrypt-only; maybe needed by 41 legacy tokens (key "
        "unknown): run rotate, or status --resolve-legacy to find out\n"
    ) in text
    assert (
        "  siv                          decrypt-only; no longer needed: retire-key siv removes"
        in text
    )


def test_status_resolve_legacy_counts_the_key_that_opens_each(
    legacy: tuple[Engine, Keyring],
) -> None:
    """With resolve_legacy each legacy token is tried: counts per opening key, and unopened."""
    engine, _ = legacy
    report = jobs.status(engine, [_column(engine, "fc_rot_legacy")], resolve_legacy=True)
    (column,) = report.columns
    assert ({"cur": 37, "old": 3}, 1, 41) == (
        column.legacy_by_key,
        column.legacy_unopened,
        column.legacy,
    )
    keys = {k.key_id: k for k in report.key_usage()}
    assert {"new": 0, "cur": 37, "old": 3, "spare": 0, "siv": 0} == {
        key_id: k.legacy_rows for key_id, k in keys.items()
    }
    assert (False, True, True) == (keys["spare"].needed, keys["old"].needed, keys["cur"].needed)
    assert [
        "fc_rot_legacy.email: 1 legacy token that no key of the keyring opens: add the key "
        "back (`fieldcrypt verify` names them)"
    ] == report.problems()
    text = report.describe()
    assert (
        f"  {'legacy':<28} {41:>12}  fernet: rotate moves these\n"
        "    opened by cur                        37\n"
        "    opened by old                         3\n"
        "    opened by no key                      1  these cannot be decrypted\n"
    ) in text
    assert "still needed by 2 rows and 37 legacy tokens: run rotate" in text
    assert "  old                          decrypt-only; still needed by 3 legacy tokens" in text
    spare = "decrypt-only; no longer needed: retire-key spare --resolve-legacy removes it"
    assert f"  spare                        {spare}\n" in text
    data = report.to_dict()
    assert ({"cur": 37, "old": 3}, 1) == (
        data["columns"][0]["legacy_by_key"],
        data["columns"][0]["legacy_unopened"],
    )


def test_status_of_a_column_without_legacy_tokens_resolves_to_none(
    engine: Engine, ring: Keyring
) -> None:
    """resolve_legacy on a column with no legacy token reads nothing and counts zeros."""
    table = _make_table(engine, "fc_rot_no_legacy")
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "email": _under(ring, "k2", "x")}])
    report = jobs.status(engine, [_column(engine, "fc_rot_no_legacy")], resolve_legacy=True)
    assert ({}, 0) == (report.columns[0].legacy_by_key, report.columns[0].legacy_unopened)
    assert "ready: every value is readable" in report.describe()
    table.metadata.drop_all(engine)


def test_retire_keys_with_resolve_legacy_refuses_only_keys_that_open_one(
    legacy: tuple[Engine, Keyring],
) -> None:
    """A key that opens no legacy token retires once they are tried; one that opens some not."""
    engine, _ = legacy
    columns = [_column(engine, "fc_rot_legacy")]
    with pytest.raises(RotationError, match="legacy tokens, which do not say which key"):
        jobs.retire_keys(engine, columns, ["spare"])
    assert "siv" not in jobs.retire_keys(engine, columns, ["siv"])  # AEAD: opens no legacy token
    assert "spare" not in jobs.retire_keys(engine, columns, ["spare"], resolve_legacy=True)
    with pytest.raises(
        RotationError, match=r"key 'old' is still used by fc_rot_legacy.email \(3 legacy tokens\)"
    ):
        jobs.retire_keys(engine, columns, ["old"], resolve_legacy=True)


# -- rotate -------------------------------------------------------------------------------


def test_rotate_converges_to_the_primary_key(
    mixed: tuple[Engine, Table, dict[int, Any]],
) -> None:
    """Old keys and legacy tokens move to k3; plaintext follows with --encrypt-plaintext."""
    engine, table, expected = mixed
    before = _stored(engine, table)
    report = jobs.rotate(engine, [_column(engine)], batch_size=7)
    assert (32, 16, 0, True) == (report.written, report.skipped, report.failed, report.ok)
    after = _stored(engine, table)
    assert all(after[i] == before[i] for i in before if i % 8 == 0), "primary rows untouched"
    found = jobs.status(engine, [_column(engine)]).columns[0]
    assert ({"k3": 40}, 16, 0) == (found.by_key, found.plaintext, found.pending)

    report = jobs.rotate(engine, [_column(engine)], batch_size=7, encrypt_plaintext=True)
    assert 16 == report.written
    found = jobs.status(engine, [_column(engine)]).columns[0]
    assert ({"k3": 56}, 8, 0) == (found.by_key, found.null, found.plaintext)
    assert expected == _decrypted(engine, table)


def test_a_batch_longer_than_a_statement_may_be_is_rotated(
    mariadb_engine: Engine, ring: Keyring
) -> None:
    """A batch whose old and new tokens, as one JSON document, would be longer than the
    server's max_allowed_packet is rotated whole, in several statements."""
    engine = mariadb_engine
    with engine.connect() as conn:
        packet = int(conn.execute(text("SELECT @@max_allowed_packet")).scalar_one())
    if packet > 16 * 2**20:
        pytest.skip(f"the server takes statements of {packet:,} bytes: too many rows")
    table = _make_table(engine)
    # Each row carries its old and its new token, each about 4/3 of its value: past the packet.
    size = 20_000
    rows = 5 * packet // (4 * 2 * size)
    values = {i: f"{i:05d}" + "x" * size for i in range(rows)}
    with engine.begin() as conn:
        conn.execute(
            table.insert(), [{"id": i, "email": _under(ring, "k1", v)} for i, v in values.items()]
        )
    report = jobs.rotate(engine, [_column(engine)], batch_size=1000)
    assert (rows, 0) == (report.written, report.failed)
    found = jobs.status(engine, [_column(engine)]).columns[0]
    assert ({"k3": rows}, 0) == (found.by_key, found.pending)
    assert values == _decrypted(engine, table)


def test_rerun_skips_finished_rows_in_sql(mixed: tuple[Engine, Table, dict[int, Any]]) -> None:
    """Rows under the primary key are not even read: a broken one is not reported by rotate."""
    engine, table, _ = mixed
    jobs.rotate(engine, [_column(engine)], encrypt_plaintext=True)
    with engine.begin() as conn:
        token = conn.execute(select(table.c.email).where(table.c.id == 0)).scalar_one()
        conn.execute(update(table).where(table.c.id == 0).values(email=token[:-8] + "AAAAAAAA"))
    again = jobs.rotate(engine, [_column(engine)], encrypt_plaintext=True)
    assert (0, 0) == (again.scanned, again.failed)
    assert 1 == jobs.verify(engine, [_column(engine)]).failed


def test_dry_run_counts_and_writes_nothing(mixed: tuple[Engine, Table, dict[int, Any]]) -> None:
    """--dry-run decrypts and re-encrypts, reports what would change, and changes nothing."""
    engine, table, _ = mixed
    before = _stored(engine, table)
    report = jobs.rotate(engine, [_column(engine)], dry_run=True, encrypt_plaintext=True)
    assert (48, 48, True) == (report.scanned, report.written, report.jobs[0].dry_run)
    assert before == _stored(engine, table)


def test_key_ids_with_like_wildcards_and_case(engine: Engine) -> None:
    """With primary 'k_1', values under 'kx1' and 'K_1' are not mistaken for it."""
    keyring = Keyring({"k_1": generate_key(), "kx1": generate_key(), "K_1": generate_key()})
    previous = swap_default_keys(None)
    sa_fieldcrypt.configure(keyring=keyring)
    try:
        table = _make_table(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(table),
                [
                    {"id": i, "email": _under(keyring, k, "x", f"{TABLE}.email")}
                    for i, k in enumerate(keyring.ids)
                ],
            )
        found = jobs.status(engine, [_column(engine)]).columns[0]
        assert {"k_1": 1, "kx1": 1, "K_1": 1} == found.by_key
        assert 2 == jobs.rotate(engine, [_column(engine)]).written
        assert {"k_1": 3} == jobs.status(engine, [_column(engine)]).columns[0].by_key
    finally:
        swap_default_keys(previous)
        table.metadata.drop_all(engine)


@pytest.mark.parametrize("key", ["integer", "string", "uuid", "composite"])
def test_primary_keys_of_any_sortable_type(engine: Engine, ring: Keyring, key: str) -> None:
    """Keyset paging works on integer, string, UUID and composite primary keys."""
    columns: list[Column[Any]]
    if key == "integer":
        columns = [Column("id", Integer, primary_key=True, autoincrement=False)]
        keys: list[dict[str, Any]] = [{"id": i} for i in range(23)]
    elif key == "string":
        columns = [Column("id", String(20), primary_key=True)]
        keys = [{"id": f"Key-{i:02d}_{'x' * (i % 3)}"} for i in range(23)]
    elif key == "uuid":
        columns = [Column("id", Uuid, primary_key=True)]
        keys = [{"id": uuid.uuid4()} for _ in range(23)]
    else:
        columns = [
            Column("tenant", String(10), primary_key=True),
            Column("id", Integer, primary_key=True, autoincrement=False),
        ]
        keys = [{"tenant": f"t{i % 3}", "id": i // 3} for i in range(23)]
    table = _make_table(engine, "fc_rot_keys", *columns)
    try:
        rows = [{**k, "email": _under(ring, "k1", f"v{n}")} for n, k in enumerate(keys)]
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
        report = jobs.rotate(engine, [_column(engine, "fc_rot_keys")], batch_size=4)
        assert (23, 23, 0) == (report.scanned, report.written, report.concurrent)
        found = jobs.status(engine, [_column(engine, "fc_rot_keys")]).columns[0]
        assert {"k3": 23} == found.by_key
    finally:
        table.metadata.drop_all(engine)


def test_rotation_does_not_fire_onupdate(engine: Engine, ring: Keyring) -> None:
    """A model's `onupdate` column keeps its value: rotation writes with a bare Core UPDATE."""
    rotation_support.Base.metadata.drop_all(engine)
    rotation_support.Base.metadata.create_all(engine)
    try:
        customers = rotation_support.Customer.__table__
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO fc_rot_customers (id, email_encrypted, updated_at) "
                    "VALUES (1, :token, NULL)"
                ),
                {"token": _under(ring, "k1", "ada@example.com")},
            )
        columns = [c for c in jobs.find_columns("rotation_support") if c.table is customers]
        assert 1 == jobs.rotate(engine, columns).written
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT email_encrypted, updated_at FROM fc_rot_customers")
            ).one()
        assert "k3" == inspect_token(row[0]).key_id
        assert row[1] is None
    finally:
        rotation_support.Base.metadata.drop_all(engine)


def test_mysql_on_update_timestamp_is_kept(mariadb_engine: Engine, ring: Keyring) -> None:
    """MySQL/MariaDB's ON UPDATE CURRENT_TIMESTAMP column is not bumped by jobs."""
    engine = mariadb_engine
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS fc_rot_stamped"))
        conn.execute(
            text(
                "CREATE TABLE fc_rot_stamped (id INT PRIMARY KEY, email LONGTEXT, "
                "changed TIMESTAMP NOT NULL DEFAULT '2001-02-03 04:05:06' "
                "ON UPDATE CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text("INSERT INTO fc_rot_stamped (id, email) VALUES (1, :t)"),
            {"t": _under(ring, "k1", "x")},
        )
    try:
        assert 1 == jobs.rotate(engine, [_column(engine, "fc_rot_stamped")]).written
        with engine.connect() as conn:
            changed = conn.execute(text("SELECT changed FROM fc_rot_stamped")).scalar_one()
        assert "2001-02-03 04:05:06" == str(changed)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE fc_rot_stamped"))


def test_concurrent_writes_are_not_lost(
    mixed: tuple[Engine, Table, dict[int, Any]], ring: Keyring
) -> None:
    """Rows changed between read and write keep the new value; stale-key ones get rotated."""
    engine, table, expected = mixed
    changes = {
        1: _under(ring, "k1", "changed by an old app instance"),
        2: _under(ring, "k3", "changed by the app"),
        3: None,
    }

    def meanwhile(conn: Any, keys: list[tuple[Any, ...]]) -> None:
        if (1,) not in keys:
            return
        statements = [
            update(table).where(table.c.id == i).values(email=v) for i, v in changes.items()
        ]
        if engine.dialect.name == "sqlite":
            # One writer at a time: the same connection stands in for the application.
            for statement in statements:
                conn.execute(statement)
            return
        with engine.connect() as other:
            for statement in statements:
                other.execute(statement)
            other.commit()

    report = jobs.rotate(
        engine, [_column(engine)], before_write=meanwhile, batch_size=100, encrypt_plaintext=True
    )
    assert 3 == report.concurrent
    decrypted = _decrypted(engine, table)
    assert "changed by an old app instance" == decrypted[1]
    assert "changed by the app" == decrypted[2]
    assert decrypted[3] is None
    assert {i: v for i, v in expected.items() if i > 3} == {
        i: v for i, v in decrypted.items() if i > 3
    }
    assert 0 == jobs.status(engine, [_column(engine)]).columns[0].pending


def test_undecryptable_values_are_reported_by_key_not_content(
    engine: Engine, ring: Keyring
) -> None:
    """Each bad value is named by column and primary key; the others are rotated."""
    table = _make_table(engine)
    good = _under(ring, "k1", "fine")
    token = _under(ring, "k2", "secret-plaintext")
    bad = {
        2: token[:-8] + ("AAAAAAAA" if not token.endswith("AAAAAAAA") else "BBBBBBBB"),
        4: encrypt(Keyring({"gone": generate_key()}), b"secret-plaintext"),
        6: "fc1:" + "k" * 40 + ":gAAAAAxyz",
        8: Fernet(generate_key()).encrypt(b"secret-plaintext").decode(),
    }
    rows = [{"id": i, "email": bad.get(i, good)} for i in range(10)]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    report = jobs.rotate(engine, [_column(engine)], batch_size=3)
    assert (4, 6, False) == (report.failed, report.written, report.ok)
    failures = report.jobs[0].failures
    assert [(("id", i),) for i in sorted(bad)] == [f.primary_key for f in failures]
    for failure in failures:
        message = str(failure)
        assert message.startswith(f"{TABLE}.email at primary key (id=")
        assert "secret-plaintext" not in message
        assert all(value[6:30] not in message for value in bad.values())
    assert "'gone'" in str(failures[1])


def test_fail_fast_stops_at_the_first_failure(engine: Engine, ring: Keyring) -> None:
    """--fail-fast stops at the first bad value: later rows are not touched."""
    table = _make_table(engine)
    rows = [{"id": i, "email": _under(ring, "k1", "x")} for i in range(10)]
    rows[4]["email"] = encrypt(Keyring({"gone": generate_key()}), b"x")
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    report = jobs.rotate(engine, [_column(engine)], fail_fast=True)
    assert (1, 4, False) == (report.failed, report.written, report.ok)
    found = jobs.status(engine, [_column(engine)]).columns[0]
    assert {"k3": 4, "gone": 1, "k1": 5} == found.by_key


def test_values_too_long_for_the_column_fail_cleanly(engine: Engine, ring: Keyring) -> None:
    """Encrypting plaintext into a VARCHAR too short for a token fails that row, writes nothing."""
    metadata = MetaData()
    table = Table(
        "fc_rot_short",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", String(40)),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": 1, "email": "ada@example.com"}])
        column = jobs.reflect_column(engine, "fc_rot_short", "email")
        report = jobs.rotate(engine, [column], encrypt_plaintext=True)
        assert 1 == report.failed
        assert "does not fit the column's length 40" in report.jobs[0].failures[0].reason
        assert {1: "ada@example.com"} == _stored(engine, table)
    finally:
        metadata.drop_all(engine)


def test_verify_decrypts_everything_and_changes_nothing(
    mixed: tuple[Engine, Table, dict[int, Any]],
) -> None:
    """verify reports plaintext and broken values, and writes nothing."""
    engine, table, _ = mixed
    before = _stored(engine, table)
    report = jobs.verify(engine, [_column(engine)])
    assert (56, 40, 16) == (report.scanned, report.jobs[0].unchanged, report.failed)
    assert before == _stored(engine, table)


def test_verify_allows_plaintext_where_the_column_does(engine: Engine, ring: Keyring) -> None:
    """With allow_plaintext, verify counts plaintext values as skipped, not failed."""
    table = _make_table(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "email": "plain"}, {"id": 2, "email": "x"}])
    column = jobs.reflect_column(engine, TABLE, "email", EncryptedText(allow_plaintext=True))
    report = jobs.verify(engine, [column])
    assert (0, 2) == (report.failed, report.skipped)


def test_token_like_values_fail_and_are_never_encrypted_as_plaintext(
    engine: Engine, ring: Keyring
) -> None:
    """rotate --encrypt-plaintext fails a value that looks like a token but does not decrypt."""
    table = _make_table(engine)
    token = _under(ring, "k1", "secret-plaintext")
    edited = {1: "FC1:" + token[4:], 2: f" {token}", 3: "fc1:", 4: "gAAAAAnot-a-token"}
    with engine.begin() as conn:
        rows = [{"id": i, "email": v} for i, v in edited.items()]
        conn.execute(insert(table), [*rows, {"id": 5, "email": "plain"}])
    report = jobs.rotate(engine, [_column(engine)], encrypt_plaintext=True)
    assert (4, 1) == (report.failed, report.written)
    assert [(("id", i),) for i in edited] == [f.primary_key for f in report.jobs[0].failures]
    stored = _stored(engine, table)
    assert edited == {i: stored[i] for i in edited}
    assert "secret-plaintext" not in " ".join(str(f) for f in report.jobs[0].failures)
    with pytest.raises(ValueTypeError, match="already an encrypted token, or looks like one"):
        plaintext_to_token(_column(engine).codec, edited[1])


def test_verify_with_allow_plaintext_fails_token_like_values(engine: Engine, ring: Keyring) -> None:
    """Under allow_plaintext, verify skips plaintext but fails a value that looks like a token."""
    table = _make_table(engine)
    token = _under(ring, "k1", "x", context=f"{TABLE}.email")
    with engine.begin() as conn:
        conn.execute(
            insert(table), [{"id": 1, "email": "plain"}, {"id": 2, "email": "FC1:" + token[4:]}]
        )
    column = jobs.reflect_column(engine, TABLE, "email", EncryptedText(allow_plaintext=True))
    report = jobs.verify(engine, [column])
    assert (1, 1) == (report.failed, report.skipped)


# -- resume from a state file ------------------------------------------------------------


class _StopAfter(jobs.RunListener):
    """Stops the run after ``count`` committed batches, as a kill between batches would."""

    def __init__(self, count: int):
        self.count = count

    def batch(self, label: str, rows: int, report: jobs.JobReport) -> None:
        self.count -= 1
        if self.count == 0:
            raise KeyboardInterrupt


def test_rotate_resumes_from_its_state_file(
    mixed: tuple[Engine, Table, dict[int, Any]], tmp_path: Path
) -> None:
    """A rotation stopped after two batches resumes after its last committed row."""
    engine, _, _ = mixed
    state = tmp_path / "rotate.json"
    with pytest.raises(KeyboardInterrupt):
        jobs.rotate(
            engine,
            [_column(engine)],
            batch_size=5,
            state=jobs.ResumeState(state),
            listener=_StopAfter(2),
        )
    pending = jobs.status(engine, [_column(engine)]).columns[0].pending
    report = jobs.rotate(engine, [_column(engine)], batch_size=5, state=jobs.ResumeState(state))
    assert (True, True) == (report.jobs[0].resumed, report.ok)
    # Only rows after the last committed batch are read: none of the first ten rows.
    assert report.scanned <= pending + report.skipped
    assert 0 == jobs.status(engine, [_column(engine)]).columns[0].pending


def test_verify_resumes_from_its_state_file(
    mixed: tuple[Engine, Table, dict[int, Any]], tmp_path: Path
) -> None:
    """A read-only job resumes too: the second run reads only the rows the first did not; once
    it finishes, the file is gone and the next run reads everything again."""
    engine, _, _ = mixed
    state = tmp_path / "verify.json"
    codec = EncryptedText(allow_plaintext=True, legacy=[BareFernet()])
    column = jobs.reflect_column(engine, TABLE, "email", codec)
    with pytest.raises(KeyboardInterrupt):
        jobs.verify(
            engine, [column], batch_size=10, state=jobs.ResumeState(state), listener=_StopAfter(3)
        )
    report = jobs.verify(engine, [column], batch_size=10, state=jobs.ResumeState(state))
    found = jobs.status(engine, [column]).columns[0]
    values = found.total - found.null
    assert (True, values - 30) == (report.jobs[0].resumed, report.scanned)
    assert not state.exists()
    again = jobs.verify(engine, [column], state=jobs.ResumeState(state))
    assert (False, values) == (again.jobs[0].resumed, again.scanned)


def test_a_saved_position_never_passes_a_failed_row(
    mixed: tuple[Engine, Table, dict[int, Any]], tmp_path: Path
) -> None:
    """A row that failed is read again by a rerun with the same state file, and fails again
    until it is fixed: the file never marks it done."""
    engine, table, _ = mixed
    stray = encrypt(Keyring({"gone": generate_key()}), b"x")
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1000, "email": stray}])
    state = tmp_path / "rotate.json"
    first = jobs.rotate(engine, [_column(engine)], batch_size=5, state=jobs.ResumeState(state))
    again = jobs.rotate(engine, [_column(engine)], batch_size=5, state=jobs.ResumeState(state))
    assert (1, 1) == (first.failed, again.failed)
    assert state.exists()  # the run is not over while a row fails
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM fc_rot_mixed WHERE id = 1000"))
    done = jobs.rotate(engine, [_column(engine)], state=jobs.ResumeState(state))
    assert (0, True, False) == (done.failed, done.ok, state.exists())


def test_a_state_file_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A state file whose directory does not exist is refused before any work."""
    with pytest.raises(ConfigurationError, match="does not exist; create it"):
        jobs.ResumeState(tmp_path / "nope" / "state.json")


def test_a_dry_run_never_makes_a_real_run_skip_rows(
    mixed: tuple[Engine, Table, dict[int, Any]], tmp_path: Path
) -> None:
    """A dry run's saved position is its own: a real run with the same file starts over."""
    engine, _, _ = mixed
    state = jobs.ResumeState(tmp_path / "rotate.json")
    dry = jobs.rotate(engine, [_column(engine)], dry_run=True, state=state)
    real = jobs.rotate(engine, [_column(engine)], state=state)
    assert (dry.written, False) == (real.written, real.jobs[0].resumed)


class _StopInParent(jobs.RunListener):
    """Stops a run with workers from the parent after its first committed batch."""

    def __init__(self, path: Path):
        self.path = path
        self.saved: list[Any] = []

    def batch(self, label: str, rows: int, report: jobs.JobReport) -> None:
        (self.saved,) = json.loads(self.path.read_text())["jobs"].values()
        raise KeyboardInterrupt


def test_workers_save_and_resume_their_ranges(
    engine: Engine, ring: Keyring, tmp_path: Path
) -> None:
    """With workers, each range's progress is saved; a stopped run resumes every range."""
    rotation_support.Base.metadata.drop_all(engine)
    rotation_support.Base.metadata.create_all(engine)
    try:
        bookings = rotation_support.Booking.__table__
        rows = [{"id": i, "phone_encrypted": _under(ring, "k1", f"+1 555 {i}")} for i in range(90)]
        with engine.begin() as conn:
            conn.execute(insert(bookings), rows)
        columns = [c for c in jobs.find_columns("rotation_support") if c.table is bookings]
        path = tmp_path / "rotate.json"
        stop = _StopInParent(path)
        with pytest.raises(KeyboardInterrupt):
            jobs.rotate(
                engine,
                columns,
                workers=2,
                batch_size=10,
                state=jobs.ResumeState(path),
                listener=stop,
            )
        assert 2 == len(stop.saved)  # one entry per worker's range
        again = jobs.rotate(engine, columns, workers=2, batch_size=10, state=jobs.ResumeState(path))
        assert (True, True, False) == (again.jobs[0].resumed, again.ok, path.exists())
        assert {"k3": 90} == jobs.status(engine, columns).columns[0].by_key
    finally:
        rotation_support.Base.metadata.drop_all(engine)


def test_a_state_file_refuses_keys_it_cannot_hold(tmp_path: Path, ring: Keyring) -> None:
    """A primary key of another type than int, str or UUID is refused before any write."""
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    metadata = MetaData()
    table = Table(
        "fc_rot_dated",
        metadata,
        Column("day", sa_types.Date, primary_key=True),
        Column("email", EncryptedText()),
    )
    metadata.create_all(engine)
    with pytest.raises(ConfigurationError, match="day is date; run without --state"):
        jobs.rotate(
            engine, [jobs.EncryptedColumn.of(table.c.email)], state=jobs.ResumeState(tmp_path / "s")
        )
    engine.dispose()


def test_an_unreadable_state_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a state file of this version says to delete it."""
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "tables": {}}')
    with pytest.raises(ConfigurationError, match="delete it to start over"):
        jobs.ResumeState(path)


# -- workers, shards, kills ---------------------------------------------------------------


def test_workers_split_the_table_without_overlap(engine: Engine, ring: Keyring) -> None:
    """Two worker processes rotate disjoint key ranges: every row written exactly once."""
    rotation_support.Base.metadata.drop_all(engine)
    rotation_support.Base.metadata.create_all(engine)
    try:
        bookings = rotation_support.Booking.__table__
        rows = [{"id": i, "phone_encrypted": _under(ring, "k1", f"+1 555 {i}")} for i in range(300)]
        with engine.begin() as conn:
            conn.execute(insert(bookings), rows)
        columns = [c for c in jobs.find_columns("rotation_support") if c.table is bookings]
        report = jobs.rotate(engine, columns, workers=2, batch_size=20)
        assert (300, 300, 0) == (report.scanned, report.written, report.concurrent)
        assert {"k3": 300} == jobs.status(engine, columns).columns[0].by_key
    finally:
        rotation_support.Base.metadata.drop_all(engine)


def test_a_transform_process_rotates_under_this_process_keys(
    server_engine: Engine, ring: Keyring
) -> None:
    """The keys configured here reach the transform process; a value it cannot open is a
    failure of the run, and a rerun writes nothing."""
    engine = server_engine
    rotation_support.Base.metadata.drop_all(engine)
    rotation_support.Base.metadata.create_all(engine)
    try:
        bookings = rotation_support.Booking.__table__
        rows = [
            {"id": i, "phone_encrypted": _under(ring, ("k1", "k2", "k3")[i % 3], f"+1 555 {i}")}
            for i in range(90)
        ]
        rows[40]["phone_encrypted"] = _under(Keyring({"k1": generate_key()}), "k1", "lost")
        with engine.begin() as conn:
            conn.execute(insert(bookings), rows)
        columns = [c for c in jobs.find_columns("rotation_support") if c.table is bookings]
        report = jobs.rotate(engine, columns, batch_size=8, transform_process=True)
        # The k3 tokens too: written before the column was bound, they are bound now.
        assert (90, 89, 1) == (report.scanned, report.written, report.failed)
        assert [(40,)] == [f.key for f in report.jobs[0].failures]
        assert {"k3": 89, "k1": 1} == jobs.status(engine, columns).columns[0].by_key
        with engine.connect() as conn:
            phones = dict(conn.execute(select(bookings.c.id, bookings.c.phone_encrypted)).all())
        reader = columns[0].codec
        assert all(
            reader.decrypt_token(phones[i]).decode() == f"+1 555 {i}" for i in range(90) if i != 40
        )
        again = jobs.rotate(engine, columns, batch_size=8, transform_process=True)
        assert (1, 0, 1) == (again.scanned, again.written, again.failed)
    finally:
        rotation_support.Base.metadata.drop_all(engine)


def _check_shards(engine: Engine, ring: Keyring, id_column: Column[Any], ids: list[Any]) -> None:
    table = _make_table(engine, "fc_rot_shards", id_column)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": i, "email": _under(ring, "k1", "x")} for i in ids])
        column = _column(engine, "fc_rot_shards")
        written = [jobs.rotate(engine, [column], shard=(i, 3)).written for i in (1, 2, 3)]
        assert len(ids) == sum(written)
        assert all(0 < n < len(ids) for n in written)
        assert {"k3": len(ids)} == jobs.status(engine, [column]).columns[0].by_key
    finally:
        table.metadata.drop_all(engine)


def test_shards_of_integer_keys_cover_the_table_once(engine: Engine, ring: Keyring) -> None:
    """Shards 1/3, 2/3 and 3/3 of an integer key, run one after another, each take a part
    and together cover every row."""
    column = Column("id", Integer, primary_key=True, autoincrement=False)
    _check_shards(engine, ring, column, list(range(-5, 55)))


def test_shards_of_text_keys_cover_the_table_once(server_engine: Engine, ring: Keyring) -> None:
    """On PostgreSQL and MariaDB, text keys are sharded by a hash computed in SQL."""
    column = Column("id", String(20), primary_key=True)
    _check_shards(server_engine, ring, column, [f"customer-{i}" for i in range(60)])


def test_sqlite_shards_need_an_integer_key(tmp_path: Path, ring: Keyring) -> None:
    """On SQLite, which has no hash function, --shard on a text key is refused clearly."""
    engine = create_engine(f"sqlite:///{tmp_path / 's.sqlite3'}")
    _make_table(engine, TABLE, Column("id", String(20), primary_key=True))
    with pytest.raises(ConfigurationError, match="integer primary key"):
        jobs.rotate(engine, [_column(engine)], shard=(1, 2))


def _child(engine: Engine, pause_at: int) -> subprocess.Popen[str]:
    keys = os.environ | {"FIELDCRYPT_KEYS": current_keyring().export()}
    url = engine.url.render_as_string(hide_password=False)
    script = Path(rotation_support.__file__)
    return subprocess.Popen(
        [sys.executable, str(script), url, TABLE, str(pause_at)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=keys,
    )


def test_sigkill_mid_run_then_rerun_converges(
    mixed: tuple[Engine, Table, dict[int, Any]],
) -> None:
    """Killed with SIGKILL (paused mid-batch, then at a random point), no row is damaged and a
    rerun finishes the job."""
    engine, table, expected = mixed
    with _child(engine, pause_at=3) as paused:
        assert paused.stdout is not None
        lines = [paused.stdout.readline().strip() for _ in range(3)]
        assert ["committed 10", "committed 20", "paused"] == lines
        paused.send_signal(signal.SIGKILL)
    candidates = [i for i in sorted(expected) if i % 8 not in (0, 7)]  # not primary, not NULL
    rotated = [i for i in candidates[:20] if i % 8 not in (5, 6)]  # 2 batches, not plaintext
    found = jobs.status(engine, [_column(engine)]).columns[0]
    assert 8 + len(rotated) == found.by_key["k3"]
    stored = _stored(engine, table)
    tokens = {
        i for i, v in stored.items() if v is not None and inspect_token(v).kind != "plaintext"
    }
    reader = _reader(table)
    assert {i: expected[i] for i in tokens} == {
        i: reader.decrypt_token(stored[i]).decode() for i in tokens
    }

    with _child(engine, pause_at=0) as running:
        assert running.stdout is not None
        running.stdout.readline()
        running.send_signal(signal.SIGKILL)

    jobs.rotate(engine, [_column(engine)], encrypt_plaintext=True)
    assert expected == _decrypted(engine, table)
    assert 0 == jobs.status(engine, [_column(engine)]).columns[0].pending


# -- binding: unbound values in bound columns ---------------------------------------------

BOUND = f"{TABLE}.email"


@pytest.fixture
def unbound(engine: Engine, ring: Keyring) -> Iterator[tuple[Engine, Table]]:
    """A table as an earlier version left it, now read bound: rows 1-4 unbound (under the
    primary k3 and the old k2), rows 5-6 legacy, rows 7-8 bound as the column writes, 9 NULL."""
    table = _make_table(engine)
    rows = [
        {"id": 1, "email": _under(ring, "k3", "u1")},
        {"id": 2, "email": _under(ring, "k3", "u2")},
        {"id": 3, "email": _under(ring, "k2", "u3")},
        {"id": 4, "email": _under(ring, "k2", "u4")},
        {"id": 5, "email": _legacy(ring, "k1", "u5")},
        {"id": 6, "email": _legacy(ring, "k3", "u6")},
        {"id": 7, "email": _under(ring, "k3", "u7", BOUND)},
        {"id": 8, "email": _under(ring, "k2", "u8", BOUND)},
        {"id": 9, "email": None},
    ]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    yield engine, table
    table.metadata.drop_all(engine)


EXPECTED = {**{i: f"u{i}" for i in range(1, 9)}, 9: None}


def test_status_counts_unbound_values_of_a_bound_column(unbound: tuple[Engine, Table]) -> None:
    """status counts unbound tokens per column, in SQL and by reading; rotation needs them."""
    engine, _ = unbound
    for in_sql in (True, False):
        report = jobs.status(engine, [_column(engine)], in_sql=in_sql)
        (found,) = report.columns
        assert (BOUND, False) == (found.context, found.strict)
        assert ({"k3": 3, "k2": 3}, {"k3": 2, "k2": 2}, 4) == (
            found.by_key,
            found.unbound_by_key,
            found.unbound,
        )
        assert 2 + 3 + 2 == found.pending  # unbound under k3, all of k2, legacy
        assert (True, False, 6) == (report.ready, report.bound, report.to_bind)
        data = report.to_dict()
        assert (4, 7, False) == (
            data["columns"][0]["unbound"],
            data["columns"][0]["pending"],
            data["bound"],
        )
    text = report.describe()
    assert (
        f"  {'unbound, of the keys above':<28} {4:>12}  "
        "not bound to the column: rotate binds these\n"
    ) in text
    assert "bind: 6 values not bound to their column yet" in text


def test_rotate_binds_unbound_and_legacy_values(unbound: tuple[Engine, Table]) -> None:
    """A plain rotate rewrites unbound and legacy tokens bound to the column; values stay."""
    engine, table = unbound
    report = jobs.rotate(engine, [_column(engine)], batch_size=3)
    assert (7, 0, True) == (report.written, report.failed, report.ok)
    stored = _stored(engine, table)
    assert all(inspect_token(v).bound for v in stored.values() if v is not None)
    assert EXPECTED == _decrypted(engine, table)
    report_after = jobs.status(engine, [_column(engine)])
    (found,) = report_after.columns
    assert ({"k3": 8}, 0, 0, True) == (
        found.by_key,
        found.unbound,
        found.pending,
        report_after.bound,
    )
    assert "unbound" not in report_after.describe()
    assert 0 == jobs.rotate(engine, [_column(engine)]).scanned


def _strict_column(engine: Engine, how: str) -> jobs.EncryptedColumn:
    """The column made strict by its own allow_unbound=False, or by the process setting."""
    if how == "column":
        codec = EncryptedText(allow_unbound=False, legacy=[BareFernet()])
        return jobs.reflect_column(engine, TABLE, "email", codec)
    sa_fieldcrypt.config.set_unbound_allowed(False)
    return _column(engine)


@pytest.fixture(params=["column", "setting"])
def strictly(request: pytest.FixtureRequest) -> Iterator[str]:
    """How a column is made strict: allow_unbound=False, or FIELDCRYPT_ALLOW_UNBOUND=false."""
    yield request.param
    sa_fieldcrypt.config.set_unbound_allowed(None)


def test_rotate_under_the_strict_switch_never_binds_unbound_values(
    unbound: tuple[Engine, Table], strictly: str
) -> None:
    """Strict: every unbound or legacy value is a failure of rotate, left as it is; bound
    values under old keys still rotate."""
    engine, table = unbound
    before = _stored(engine, table)
    column = _strict_column(engine, strictly)
    report = jobs.rotate(engine, [column])
    assert (1, 6, False) == (report.written, report.failed, report.ok)
    failures = report.jobs[0].failures
    assert [(("id", i),) for i in range(1, 7)] == [f.primary_key for f in failures]
    for failure in failures:
        assert "not bound to the column's context" in failure.reason
        assert "rotation does not bind it" in failure.reason
        assert "u" + str(failure.primary_key[0][1]) not in str(failure).split(": ", 1)[1]
    after = _stored(engine, table)
    assert {i: before[i] for i in range(1, 7)} == {i: after[i] for i in range(1, 7)}
    assert inspect_token(after[8]).bound
    assert ("k3", b"u8") == (inspect_token(after[8]).key_id, _reader(table).decrypt_token(after[8]))


def test_status_and_verify_under_the_strict_switch_name_the_refused_values(
    unbound: tuple[Engine, Table], strictly: str
) -> None:
    """Strict: status is not ready while a column holds values it refuses; verify names them."""
    engine, _ = unbound
    column = _strict_column(engine, strictly)
    report = jobs.status(engine, [column])
    (found,) = report.columns
    assert (True, 6, False, 0) == (found.strict, found.refused, report.ready, report.to_bind)
    text = report.describe()
    assert "refused: the column is strict, and rotate does not bind these" in text
    assert f"  {'legacy':<28} {2:>12}  fernet: refused, as the column is strict\n" in text
    assert f"{BOUND}: 6 values not bound to the column (unbound or legacy tokens)" in text
    checked = jobs.verify(engine, [column])
    assert [(("id", i),) for i in range(1, 7)] == [f.primary_key for f in checked.jobs[0].failures]


def test_a_planted_unbound_token_is_refused_under_the_strict_switch(
    engine: Engine, ring: Keyring, strictly: str
) -> None:
    """Once bound and strict, a token copied in from an unbound column reads nowhere: not
    through the column, not through rotate (which would launder it into a bound one)."""
    table = _make_table(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "email": _under(ring, "k3", "mine", BOUND)}])
    assert 0 == jobs.rotate(engine, [_column(engine)]).scanned
    planted = _under(ring, "k3", "planted")  # as another, unbound column holds it
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 2, "email": planted}])
    column = _strict_column(engine, strictly)
    with engine.connect() as conn, pytest.raises(sa_fieldcrypt.DecryptionError):
        conn.execute(select(_read_through(column)).where(column.table.c.id == 2)).scalar_one()
    report = jobs.rotate(engine, [column])
    assert (0, 1) == (report.written, report.failed)
    assert planted == _stored(engine, table)[2]
    table.metadata.drop_all(engine)


def _read_through(target: jobs.EncryptedColumn) -> Any:
    """The target's column, read through its codec as the models read it."""
    return type_coerce(target.column, target.codec)


def test_workers_follow_the_strict_setting_of_their_parent(
    postgresql_engine: Engine, ring: Keyring, strict_unbound: None
) -> None:
    """Worker processes decide as the process that started them: strict, they bind nothing."""
    engine = postgresql_engine
    table = _make_table(engine, "fc_rot_strict_workers")
    rows = [{"id": i, "email": _under(ring, "k2", "x")} for i in range(20)]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    try:
        column = jobs.reflect_column(engine, "fc_rot_strict_workers", "email")
        report = jobs.rotate(engine, [column], workers=2, batch_size=5)
        assert (0, 20) == (report.written, report.failed)
    finally:
        table.metadata.drop_all(engine)


def test_rotate_of_an_opted_out_column_keeps_its_tokens_unbound(
    engine: Engine, ring: Keyring
) -> None:
    """context=False: rotation moves old keys to the primary, unbound; status flags bound ones."""
    table = _make_table(engine)
    rows = [
        {"id": 1, "email": _under(ring, "k3", "a")},
        {"id": 2, "email": _under(ring, "k2", "b")},
        {"id": 3, "email": _under(ring, "k3", "c", BOUND)},
    ]
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    column = jobs.reflect_column(engine, TABLE, "email", EncryptedText(context=False))
    report = jobs.status(engine, [column])
    (found,) = report.columns
    assert (None, 0, 1, 1) == (found.context, found.unbound, found.bound_elsewhere, found.pending)
    assert not report.ready
    assert "which this column (context=False) cannot read" in report.describe()
    assert (1, 0) == (
        jobs.rotate(engine, [column]).written,
        jobs.status(engine, [column]).columns[0].pending,
    )
    stored = _stored(engine, table)
    assert (False, False, True) == tuple(inspect_token(stored[i]).bound for i in (1, 2, 3))
    assert "fc1:k3:" == stored[2][:7]
    table.metadata.drop_all(engine)


def test_workers_refuse_a_reflected_column_with_a_codec_of_its_own(
    unbound: tuple[Engine, Table],
) -> None:
    """A strict codec given to reflect_column cannot be lost in worker processes: they refuse."""
    engine, table = unbound
    before = _stored(engine, table)
    column = jobs.reflect_column(engine, TABLE, "email", EncryptedText(allow_unbound=False))
    with pytest.raises(ConfigurationError, match="use workers=1"):
        jobs.rotate(engine, [column], workers=2)
    assert before == _stored(engine, table)


def test_reflect_column_binds_to_the_name_as_given() -> None:
    """reflect_column's codec is bound to [schema.]table.column as named, as the models are."""
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE fc_rot_named (id INTEGER PRIMARY KEY, email TEXT)"))
    target = jobs.reflect_column(engine, "fc_rot_named", "email")
    assert ("fc_rot_named.email", "fc_rot_named.email") == (target.codec.context, target.label)
    own = jobs.reflect_column(engine, "fc_rot_named", "email", EncryptedText(context="crm.email"))
    assert "crm.email" == own.codec.context
    engine.dispose()


def test_a_hand_built_target_binds_to_its_column() -> None:
    """EncryptedColumn(column, EncryptedText()) binds to the column's name, as a model would."""
    table = Table(
        "fc_rot_by_hand", MetaData(), Column("id", Integer, primary_key=True), Column("email", Text)
    )
    target = jobs.EncryptedColumn(table.c.email, EncryptedText())
    assert "fc_rot_by_hand.email" == target.codec.context


# -- discovery ------------------------------------------------------------------------------


def test_find_columns_finds_typed_and_marked_columns() -> None:
    """Typed columns, info-marked Text columns and module-level tables are found; others not."""
    found = [c.label for c in jobs.find_columns("rotation_support")]
    assert [
        "fc_rot_audit.detail",
        "fc_rot_bookings.phone_encrypted",
        "fc_rot_customers.email_encrypted",
        "fc_rot_customers.prefs",
        "fc_rot_subscribers.email_encrypted",
    ] == found


def test_find_columns_errors_are_clear() -> None:
    """A missing module, or one without encrypted columns, is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="cannot import the models module"):
        jobs.find_columns("no_such_models_module")
    with pytest.raises(ConfigurationError, match="defines no encrypted column"):
        jobs.find_columns("json")


def test_reflect_column_errors_are_clear(engine: Engine, ring: Keyring) -> None:
    """A missing table or column, or a table without primary key, is reported by name."""
    with pytest.raises(ConfigurationError, match="does not exist"):
        jobs.reflect_column(engine, "fc_rot_nowhere", "email")
    metadata = MetaData()
    Table("fc_rot_nopk", metadata, Column("email", Text))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with pytest.raises(ConfigurationError, match="no column 'nope'"):
            jobs.reflect_column(engine, "fc_rot_nopk", "nope")
        with pytest.raises(RotationError, match="has no primary key"):
            jobs.rotate(engine, [jobs.reflect_column(engine, "fc_rot_nopk", "email")])
    finally:
        metadata.drop_all(engine)


def test_parse_shard() -> None:
    """I/N parses with I counted from 1; anything else is a ConfigurationError."""
    assert (2, 4) == jobs.parse_shard("2/4")
    for bad in ("0/4", "5/4", "1", "a/b", "1/0"):
        with pytest.raises(ConfigurationError):
            jobs.parse_shard(bad)


# -- retiring keys ---------------------------------------------------------------------------


def test_retire_key_refuses_while_rows_need_it(
    mixed: tuple[Engine, Table, dict[int, Any]], ring: Keyring
) -> None:
    """retire_key refuses while rows use the key or legacy tokens remain, then allows it."""
    engine, _, _ = mixed
    columns = [_column(engine)]
    with pytest.raises(RotationError, match=r"key 'k2' is still used by fc_rot_mixed.email \(8"):
        jobs.retire_keys(engine, columns, ["k2"])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM fc_rot_mixed WHERE email LIKE 'fc1:k2:%'"))
    with pytest.raises(RotationError, match="legacy tokens"):
        jobs.retire_keys(engine, columns, ["k2"])
    jobs.rotate(engine, columns)
    assert ("k3", "k1") == jobs.retire_keys(engine, columns, ["k2"]).ids
    with pytest.raises(ConfigurationError, match="primary key"):
        jobs.retire_keys(engine, columns, ["k3"])


def test_env_key_changes_respects_the_legacy_variable() -> None:
    """The change lists FIELDCRYPT_KEYS entries by id; retiring 'legacy' unsets its variable."""
    k2, k1, old = generate_key(), generate_key(), generate_key()
    settings = FieldCryptSettings(keys=f"k2:{k2},k1:{k1}", FIELD_ENCRYPTION_KEY=old)  # type: ignore[call-arg]
    change = jobs.env_key_changes(["k1"], settings)
    assert jobs.KeySettingsChange("FIELDCRYPT_KEYS", ("k1",), ("k2",), "k2") == change
    assert ["remove the entry 'k1' from FIELDCRYPT_KEYS; keep 'k2' (primary)"] == change.steps()
    legacy = jobs.env_key_changes(["legacy"], settings)
    assert ((), ("k2", "k1"), ("FIELD_ENCRYPTION_KEY",)) == (
        legacy.remove,
        legacy.keep,
        legacy.unset,
    )
    assert [
        "FIELDCRYPT_KEYS stays as it is",
        "unset FIELD_ENCRYPTION_KEY: the key it holds is retired",
    ] == legacy.steps()
    assert all(k not in repr(legacy.to_dict()) for k in (k2, k1, old))


def test_env_key_changes_keep_the_primary_that_the_setting_names() -> None:
    """With FIELDCRYPT_PRIMARY_KEY_ID naming a later entry, the entries kept keep their order."""
    k1, k2, k3 = generate_key(), generate_key(), generate_key()
    settings = FieldCryptSettings(keys=f"k1:{k1},k2:{k2},k3:{k3}", primary_key_id="k3")
    change = jobs.env_key_changes(["k1"], settings)
    assert (("k1",), ("k2", "k3"), "k3") == (change.remove, change.keep, change.primary)
    assert "keep 'k2', 'k3' (primary)" in change.steps()[0]
    with pytest.raises(ConfigurationError, match="'k3' is the primary key"):
        jobs.env_key_changes(["k3"], settings)


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def sqlite_env(
    tmp_path: Path, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Engine, Table, Keyring]]:
    """A SQLite database with the mixed table, named by FIELDCRYPT_DATABASE_URL and keys set."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    engine = create_engine(url)
    table = _make_table(engine)
    rows, _ = _mixed_rows(ring, 16)
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    monkeypatch.setenv("FIELDCRYPT_DATABASE_URL", url)
    monkeypatch.setenv("FIELDCRYPT_KEYS", ring.export())
    monkeypatch.delenv("FIELD_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("FIELDCRYPT_PRIMARY_KEY_ID", raising=False)
    swap_default_keys(None)  # the commands read the keys from the settings
    yield engine, table, ring
    engine.dispose()


TARGET = ["--table", TABLE, "--column", "email"]
#: The mixed table as its models declare it: its email column reads bare Fernet tokens too.
MODELS = ["--models", "rotation_support:mixed_emails"]


def test_cli_status_prints_counts_and_json(sqlite_env: tuple[Engine, Table, Keyring]) -> None:
    """status prints per-key and unbound counts; --json prints the same as data."""
    result = CliRunner().invoke(cli, ["status", *MODELS])
    assert 0 == result.exit_code, result.output
    assert "fc_rot_mixed.email  (16 rows; primary key id 'k3')" in result.output
    assert f"  {'unbound, of the keys above':<28} {4:>12}  not bound" in result.output
    data = json.loads(CliRunner().invoke(cli, ["status", *MODELS, "--json"]).output)
    assert {"k3": 2, "k2": 2, "k1": 2} == data["columns"][0]["by_key"]
    assert (4, {"k2": 2, "k1": 2}, False) == (
        data["columns"][0]["unbound"],
        data["columns"][0]["unbound_by_key"],
        data["bound"],
    )


def test_cli_rotate_then_verify(sqlite_env: tuple[Engine, Table, Keyring]) -> None:
    """rotate prints progress on stderr and a summary on stdout; verify then passes."""
    result = CliRunner().invoke(
        cli, ["rotate", *MODELS, "--encrypt-plaintext", "--batch-size", "3"]
    )
    assert 0 == result.exit_code, result.output
    assert "rows to visit" in result.stderr
    assert "fc_rot_mixed.email: scanned 12, rotated 12, changed concurrently 0, failed 0\n" == (
        result.stdout
    )
    result = CliRunner().invoke(cli, ["verify", *MODELS])
    assert (0, "fc_rot_mixed.email: scanned 14, ok 14, failed 0\n") == (
        result.exit_code,
        result.stdout,
    )


def test_cli_failures_exit_non_zero(sqlite_env: tuple[Engine, Table, Keyring]) -> None:
    """An undecryptable value is listed by primary key on stderr and the exit status is 1."""
    engine, table, _ = sqlite_env
    stray = encrypt(Keyring({"gone": generate_key()}), b"secret-plaintext")
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 99, "email": stray}])
    result = CliRunner().invoke(cli, ["rotate", *MODELS])
    assert 1 == result.exit_code
    assert "FAILED fc_rot_mixed.email at primary key (id=99): key id 'gone'" in result.stderr
    assert "Error: 1 row could not be handled" in result.stderr
    assert "fix those rows" in result.stderr
    assert "  failed id=99: key id 'gone'" in result.stdout
    assert stray[8:40] not in result.output
    assert "secret-plaintext" not in result.output
    dry = CliRunner().invoke(cli, ["rotate", *MODELS, "--dry-run", "--fail-fast"])
    assert 1 == dry.exit_code
    assert "(stopped at the first failure)" in dry.stdout


def test_cli_status_of_a_table_names_bare_fernet_tokens_it_does_not_declare(
    sqlite_env: tuple[Engine, Table, Keyring],
) -> None:
    """--table reads tokens only: status counts bare Fernet tokens as undeclared, not ready."""
    result = CliRunner().invoke(cli, ["status", *TARGET])
    assert 1 == result.exit_code, result.output
    assert f"  {'bare Fernet, undeclared':<28} {4:>12}  the column declares no legacy format\n" in (
        result.stdout
    )
    assert (
        "fc_rot_mixed.email: 4 bare Fernet tokens, which the column does not declare, so it "
        "cannot read them: declare legacy=[BareFernet()] on the column (sa_fieldcrypt.legacy)"
    ) in result.stdout
    data = json.loads(CliRunner().invoke(cli, ["status", *TARGET, "--json"]).stdout)
    assert (4, 0) == (data["columns"][0]["undeclared"], data["columns"][0]["legacy"])
    declared = json.loads(CliRunner().invoke(cli, ["status", *MODELS, "--json"]).stdout)
    assert (0, {"fernet": 4}) == (
        declared["columns"][0]["undeclared"],
        declared["columns"][0]["legacy_by_format"],
    )


def test_cli_models_and_workers(
    postgresql_engine: Engine, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--models finds the columns; --workers 2 rotates them; --db names the database."""
    engine = postgresql_engine
    rotation_support.Base.metadata.drop_all(engine)
    rotation_support.Base.metadata.create_all(engine)
    monkeypatch.setenv("FIELDCRYPT_KEYS", ring.export())
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO fc_rot_audit (id, detail) VALUES (:id, :token)"),
                [{"id": i, "token": _under(ring, "k2", "d")} for i in range(40)],
            )
        url = engine.url.render_as_string(hide_password=False)
        args = ["rotate", "--db", url, "--models", "rotation_support", "--workers", "2"]
        result = CliRunner().invoke(cli, args)
        assert 0 == result.exit_code, result.output
        assert "fc_rot_audit.detail: scanned 40, rotated 40" in result.stdout
        assert "total: scanned 40, rotated 40" in result.stdout
    finally:
        rotation_support.Base.metadata.drop_all(engine)


def test_cli_retire_key_prints_ids_and_what_to_do_never_a_key(
    sqlite_env: tuple[Engine, Table, Keyring],
) -> None:
    """retire-key refuses while used; once free, it names the entries to remove and keep."""
    _, _, ring = sqlite_env
    refused = CliRunner().invoke(cli, ["retire-key", "k1", *TARGET])
    assert 1 == refused.exit_code
    assert "still used" in refused.stderr
    assert "" == refused.stdout
    CliRunner().invoke(cli, ["rotate", *MODELS])  # its bare tokens too, as declared
    result = CliRunner().invoke(cli, ["retire-key", "k1", *TARGET])
    assert 0 == result.exit_code, result.output
    assert (
        "No value of fc_rot_mixed.email uses key 'k1'. Everywhere the application runs:\n"
        "  remove the entry 'k1' from FIELDCRYPT_KEYS; keep 'k3' (primary), 'k2'\n"
    ) == result.stdout
    for key in ring:
        assert key.export()[:20] not in result.output


def test_cli_retire_key_takes_several_ids(sqlite_env: tuple[Engine, Table, Keyring]) -> None:
    """retire-key k1 k2 checks both and names both entries; --json lists ids, never a key."""
    refused = CliRunner().invoke(cli, ["retire-key", "k1", "k2", *TARGET])
    assert 1 == refused.exit_code
    assert "key 'k1' is still used" in refused.stderr
    assert "key 'k2' is still used" in refused.stderr
    CliRunner().invoke(cli, ["rotate", *MODELS])  # its bare tokens too, as declared
    result = CliRunner().invoke(cli, ["retire-key", "k1", "k2", *TARGET])
    assert 0 == result.exit_code, result.output
    assert "  remove the entries 'k1', 'k2' from FIELDCRYPT_KEYS; keep 'k3' (primary)\n" in (
        result.stdout
    )
    printed = CliRunner().invoke(cli, ["retire-key", "k1", "k2", "--json", *TARGET]).stdout
    report = json.loads(printed)
    assert (["k1", "k2"], "encryption", "env", ["k3"]) == (
        report["retired"],
        report["purpose"],
        report["provider"],
        report["remaining"],
    )
    assert {
        "variable": "FIELDCRYPT_KEYS",
        "remove": ["k1", "k2"],
        "keep": ["k3"],
        "primary": "k3",
        "unset": [],
        "steps": ["remove the entries 'k1', 'k2' from FIELDCRYPT_KEYS; keep 'k3' (primary)"],
    } == report["change"]
    assert "value" not in report
    assert all(key.export()[:20] not in printed for key in sqlite_env[2])
    assert 2 == CliRunner().invoke(cli, ["retire-key", *TARGET]).exit_code  # no id: usage


@pytest.mark.usefixtures("sqlite_env")
def test_cli_bad_paths_and_urls_are_one_line_errors(tmp_path: Path) -> None:
    """A state file in a missing directory and a URL with a bad port are one-line errors."""
    state = CliRunner().invoke(cli, ["verify", *TARGET, "--state", str(tmp_path / "no" / "s")])
    assert (1, True) == (state.exit_code, state.stderr.startswith("Error: the directory"))
    url = "postgresql+psycopg://u:s3cretpw@127.0.0.1:notaport/x"
    bad = CliRunner().invoke(cli, ["status", "--db", url, "--table", TABLE, "--column", "email"])
    assert 1 == bad.exit_code
    assert bad.stderr.startswith("Error: the database URL")
    assert "s3cretpw" not in bad.output


def test_cli_database_url_password_is_never_printed(
    ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing FIELDCRYPT_DATABASE_URL is reported without its password."""
    monkeypatch.setenv("FIELDCRYPT_DATABASE_URL", "postgresql+psycopg://u:s3cretpw@127.0.0.1:1/x")
    result = CliRunner().invoke(cli, ["status", *TARGET])
    assert 1 == result.exit_code
    assert result.stderr.startswith("Error: database error")
    assert "s3cretpw" not in result.output
    assert "s3cretpw" not in repr(FieldCryptSettings())


def test_cli_usage_errors(no_default_keys: None) -> None:
    """Missing database, half a target or a bad shard are usage errors: exit status 2."""
    result = CliRunner().invoke(cli, ["status", *TARGET])
    assert 2 == result.exit_code
    assert "pass --db URL or set FIELDCRYPT_DATABASE_URL" in result.stderr
    assert 2 == CliRunner().invoke(cli, ["status", "--table", TABLE]).exit_code
    assert 2 == CliRunner().invoke(cli, ["status", "--db", "sqlite://"]).exit_code
    bad_shard = CliRunner().invoke(cli, ["rotate", "--db", "sqlite://", *TARGET, "--shard", "3/2"])
    assert 2 == bad_shard.exit_code


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    """On a terminal the progress is a bar; otherwise it is plain lines."""
    report = jobs.JobReport("t.email", scanned=50, written=50)
    terminal = _Terminal()
    bar = _Progress(terminal)
    bar.started("t.email", 100)
    bar.batch("t.email", 50, report)
    bar.finished(report)
    assert "t.email  [##################------------------]  50/100" in terminal.getvalue()
    plain = io.StringIO()
    lines = _Progress(plain)
    lines.started("t.email", 100)
    lines.batch("t.email", 50, report)
    lines.finished(report)
    assert plain.getvalue().startswith("t.email: 100 rows to visit\nt.email: 50/100 rows scanned")


def test_the_progress_line_shows_rate_eta_and_time_throttled() -> None:
    """A plain progress line says rows per second, the time left and the time throttled."""
    report = jobs.JobReport(
        "t.email", scanned=500, written=400, elapsed=10, throttled_seconds=5, paused_seconds=3
    )
    plain = io.StringIO()
    lines = _Progress(plain, interval=0)
    lines.started("t.email", 2000)
    lines.paused("t.email", "replica lag 9.0 s is over 5 s")
    lines.resumed("t.email", 3)
    lines.batch("t.email", 500, report)
    assert [
        "t.email: 2,000 rows to visit",
        "t.email: paused: replica lag 9.0 s is over 5 s",
        "t.email: resumed after 3.0 s paused",
        "t.email: 500/2,000 rows scanned, 400 written, 0 failed, 50 rows/s, ETA 30.0 s, "
        "throttled 5.0 s (paused 3.0 s)",
    ] == plain.getvalue().splitlines()


def test_cli_table_in_a_schema(
    postgresql_engine: Engine, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--table SCHEMA.TABLE reflects and rotates a table outside the default schema."""
    engine = postgresql_engine
    monkeypatch.setenv("FIELDCRYPT_KEYS", ring.export())
    monkeypatch.setenv("FIELDCRYPT_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS fc_rot_core CASCADE"))
        conn.execute(text("CREATE SCHEMA fc_rot_core"))
        conn.execute(text("CREATE TABLE fc_rot_core.customers (id int PRIMARY KEY, email text)"))
        conn.execute(
            text("INSERT INTO fc_rot_core.customers VALUES (1, :a), (2, :b)"),
            {"a": _under(ring, "k1", "a"), "b": _under(ring, "k2", "b")},
        )
    try:
        target = ["--table", "fc_rot_core.customers", "--column", "email"]
        result = CliRunner().invoke(cli, ["rotate", *target])
        assert 0 == result.exit_code, result.output
        assert "fc_rot_core.customers.email: scanned 2, rotated 2" in result.stdout
        status = json.loads(CliRunner().invoke(cli, ["status", *target, "--json"]).stdout)
        assert {"k3": 2} == status["columns"][0]["by_key"]
        assert ("fc_rot_core.customers.email", 0) == tuple(
            status["columns"][0][k] for k in ("context", "unbound")
        )
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA fc_rot_core CASCADE"))


def test_cli_status_counts_legacy_as_key_unknown_until_resolved(
    legacy: tuple[Engine, Keyring],
) -> None:
    """status names no key for legacy tokens; --resolve-legacy counts per key, also in --json."""
    engine, _ = legacy
    url = engine.url.render_as_string(hide_password=False)
    target = ["--db", url, "--models", "rotation_support:legacy_emails"]
    plain = CliRunner().invoke(cli, ["status", *target])
    assert 0 == plain.exit_code, plain.output
    assert f"  {'legacy':<28} {41:>12}  fernet: they name no key: rotate moves these;" in (
        plain.stdout
    )
    assert (
        "ready: every value names a key of its keyring, but for 41 legacy tokens, which name "
        "none (--resolve-legacy tries them)\n"
    ) in plain.stdout
    resolved = CliRunner().invoke(cli, ["status", "--resolve-legacy", *target])
    assert 1 == resolved.exit_code  # one legacy token opens with no key of the keyring
    assert "    opened by cur                        37\n" in resolved.stdout
    assert "  old                          decrypt-only; still needed by 3 legacy tokens" in (
        resolved.stdout
    )
    data = json.loads(
        CliRunner().invoke(cli, ["status", "--resolve-legacy", "--json", *target]).stdout
    )
    assert ({"cur": 37, "old": 3}, 1) == (
        data["columns"][0]["legacy_by_key"],
        data["columns"][0]["legacy_unopened"],
    )
    assert {"new": 0, "cur": 37, "old": 3, "spare": 0, "siv": 0} == {
        k["key_id"]: k["legacy_rows"] for k in data["keys"]
    }


def test_cli_retire_key_resolve_legacy(
    legacy: tuple[Engine, Keyring], monkeypatch: pytest.MonkeyPatch
) -> None:
    """retire-key --resolve-legacy retires a key no legacy token needs, and refuses one they do."""
    engine, keyring = legacy
    monkeypatch.setenv("FIELDCRYPT_KEYS", keyring.export())
    url = engine.url.render_as_string(hide_password=False)
    target = ["--db", url, "--models", "rotation_support:legacy_emails"]
    refused = CliRunner().invoke(cli, ["retire-key", "spare", *target])
    assert (1, "") == (refused.exit_code, refused.stdout)
    assert "--resolve-legacy" in refused.stderr
    retired = CliRunner().invoke(cli, ["retire-key", "spare", "--resolve-legacy", *target])
    assert 0 == retired.exit_code, retired.output
    assert (
        "No value of fc_rot_legacy.email uses key 'spare'. Everywhere the application runs:\n"
        "  remove the entry 'spare' from FIELDCRYPT_KEYS; keep 'new' (primary), 'cur', 'old', "
        "'siv'\n"
    ) == retired.stdout
    old = CliRunner().invoke(cli, ["retire-key", "old", "--resolve-legacy", *target])
    assert 1 == old.exit_code
    assert "key 'old' is still used by fc_rot_legacy.email (3 legacy tokens)" in old.stderr


def test_failures_name_uuid_and_composite_keys_as_people_read_them(
    engine: Engine, ring: Keyring
) -> None:
    """A failed row of a (tenant, UUID) key is named tenant=3, id=<digits>, in text and JSON."""
    uid = uuid.UUID("01b4c3d2-0000-4000-8000-00000000abcd")
    table = _make_table(
        engine,
        "fc_rot_composite",
        Column("tenant", Integer, primary_key=True, autoincrement=False),
        Column("id", Uuid, primary_key=True),
    )
    stray = encrypt(Keyring({"gone": generate_key()}), b"x")
    with engine.begin() as conn:
        conn.execute(insert(table), [{"tenant": 3, "id": uid, "email": stray}])
    report = jobs.rotate(engine, [jobs.EncryptedColumn(table.c.email, EncryptedText())])
    (failure,) = report.jobs[0].failures
    assert str(failure).startswith(
        f"fc_rot_composite.email at primary key (tenant=3, id={uid}): key id 'gone'"
    )
    assert {"tenant": 3, "id": str(uid)} == report.to_dict()["jobs"][0]["failures"][0][
        "primary_key"
    ]
    assert (
        "(1 row; primary key id 'k3')"
        in jobs.status(engine, [_column(engine, "fc_rot_composite")]).describe()
    )
    table.metadata.drop_all(engine)


# -- row-bound columns ------------------------------------------------------------------------


class _RowBase(DeclarativeBase):
    pass


class _RowBound(_RowBase):
    """A column whose values are bound to their rows, with a blind index."""

    __tablename__ = "fc_rot_rows"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted",
        blind_index=BlindIndex("email_bidx", normalizer=normalize_email),
        column_type=EncryptedText(legacy=[BareFernet()]),
        bind_row=True,
    )


_ROWS_CONTEXT = "fc_rot_rows.email_encrypted"


@pytest.fixture
def row_bound(
    engine: Engine, ring: Keyring, fieldcrypt_blind_index_keyring: Keyring
) -> Iterator[Engine]:
    """fc_rot_rows holding what a column holds before row binding: column-bound tokens under
    two keys, unbound and legacy tokens, and NULL; every index value missing."""
    _RowBase.metadata.drop_all(engine)
    _RowBase.metadata.create_all(engine)
    stored: list[str | None] = []
    for i in range(40):
        plaintext = f"user{i}@example.com"
        stored.append(
            [
                _under(ring, "k3", plaintext, _ROWS_CONTEXT),
                _under(ring, "k2", plaintext, _ROWS_CONTEXT),
                _under(ring, "k1", plaintext),
                _legacy(ring, "k1", plaintext),
                None,
            ][i % 5]
        )
    with engine.begin() as conn:
        conn.execute(
            insert(_RowBound.__table__),
            [{"id": i, "email_encrypted": v} for i, v in enumerate(stored)],
        )
    yield engine
    _RowBase.metadata.drop_all(engine)


def _read_all(engine: Engine) -> dict[int, str | None]:
    with Session(engine) as session:
        return {c.id: c.email for c in session.scalars(select(_RowBound))}


def test_rotate_binds_every_value_to_its_row(row_bound: Engine) -> None:
    """status counts values not bound to their rows; one rotate binds them all, unchanged."""
    columns = jobs.find_columns(_RowBound)
    before = jobs.status(row_bound, columns).columns[0]
    assert (True, 24, 8) == (before.row_bound, before.unbound, before.legacy)
    expected = _read_all(row_bound)  # every kind still reads
    assert 32 == sum(v is not None for v in expected.values())

    report = jobs.rotate(row_bound, columns)
    assert (32, 0) == (report.written, report.failed)
    after = jobs.status(row_bound, columns).columns[0]
    assert ({"k3": 32}, 0, 0, 0) == (after.by_key, after.unbound, after.legacy, after.pending)
    with row_bound.connect() as conn:
        tokens = conn.execute(select(_RowBound.__table__.c.email_encrypted)).scalars().all()
    assert {"r"} == {inspect_token(t).flag for t in tokens if t is not None}
    assert expected == _read_all(row_bound)
    assert 0 == jobs.rotate(row_bound, columns).written  # nothing selected the second time


def test_verify_and_reindex_read_each_value_with_its_row(row_bound: Engine) -> None:
    """After binding, reindex fills every index and verify finds a value copied between rows."""
    columns, indexes = jobs.find_columns(_RowBound), jobs.find_indexes(_RowBound)
    jobs.rotate(row_bound, columns)
    assert (32, 0) == (jobs.reindex(row_bound, indexes).written, 0)
    assert jobs.verify(row_bound, columns, indexes=indexes).ok
    table = _RowBound.__table__
    with row_bound.begin() as conn:
        token, index = conn.execute(
            select(table.c.email_encrypted, table.c.email_bidx).where(table.c.id == 1)
        ).one()
        conn.execute(
            update(table).where(table.c.id == 2).values(email_encrypted=token, email_bidx=index)
        )
    report = jobs.verify(row_bound, columns, indexes=indexes)
    assert [(("id", 2),)] == [f.primary_key for f in report.total().failures]
    with Session(row_bound) as session, pytest.raises(DecryptionError):
        _ = session.get(_RowBound, 2).email  # type: ignore[union-attr]


def test_strict_rotation_refuses_values_bound_to_the_column_only(
    row_bound: Engine, strict_unbound: None
) -> None:
    """A strict row-bound column does not bind column-bound, unbound or legacy values."""
    columns = jobs.find_columns(_RowBound)
    report = jobs.rotate(row_bound, columns)
    assert (0, 32) == (report.written, report.failed)  # the k3 column-bound rows too
    assert all("not bound to its row" in f.reason for f in report.total().failures)
    assert all("not bound" in f.reason for f in report.total().failures)
    assert 32 == jobs.status(row_bound, columns).columns[0].refused


def test_status_in_sql_finds_fernet_shaped_values_of_any_time(
    engine: Engine, ring: Keyring
) -> None:
    """A Fernet-shaped value not starting gAAAAA (a time past 2106), bare or behind a space,
    is malformed for status in SQL too, as for reading (bare, it is a legacy value of a column
    declaring BareFernet); long plaintext with a g is plaintext."""
    table = _make_table(engine)
    late = Fernet(Fernet.generate_key())._encrypt_from_parts(b"x", 2**40, bytes(16)).decode()
    values = [late, f" {late}", "g" * 120, "FC1:k1:c:abc", "just text"]
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": i, "email": v} for i, v in enumerate(values)])
    column = jobs.reflect_column(engine, TABLE, "email")  # declares no legacy format
    in_sql = jobs.status(engine, [column], in_sql=True).columns[0]
    by_reading = jobs.status(engine, [column], in_sql=False).columns[0]
    assert (3, 2) == (in_sql.malformed, in_sql.plaintext)
    assert in_sql.to_dict() == by_reading.to_dict()
    declared = _column(engine)
    in_sql = jobs.status(engine, [declared], in_sql=True).columns[0]
    by_reading = jobs.status(engine, [declared], in_sql=False).columns[0]
    assert ({"fernet": 1}, 2, 2) == (in_sql.legacy_by_format, in_sql.malformed, in_sql.plaintext)
    assert in_sql.to_dict() == by_reading.to_dict()


def test_status_works_under_a_nondeterministic_collation(
    postgresql_engine: Engine, ring: Keyring
) -> None:
    """A PostgreSQL column under a case-insensitive ICU collation, where LIKE is refused."""
    engine = postgresql_engine
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE COLLATION IF NOT EXISTS fc_ci "
                "(provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
            )
        )
    table = _make_table(engine, TABLE, Column("id", Integer, primary_key=True))
    try:
        with engine.begin() as conn:
            conn.execute(text(f'ALTER TABLE {TABLE} ALTER COLUMN email TYPE text COLLATE "fc_ci"'))
            token = _under(ring, "k3", "ada@example.com", f"{TABLE}.email")
            conn.execute(insert(table), [{"id": 1, "email": token}, {"id": 2, "email": "plain"}])
        found = jobs.status(engine, [_column(engine)]).columns[0]
        assert ({"k3": 1}, 1) == (found.by_key, found.plaintext)
    finally:
        table.metadata.drop_all(engine)


def test_status_counts_token_like_values_as_malformed_as_reading_does(
    engine: Engine, ring: Keyring
) -> None:
    """A token behind a space or re-cased is malformed for status, and rotate fails it."""
    table = _make_table(engine)
    token = _under(ring, "k3", "ada@example.com", f"{TABLE}.email")
    values = [f" {token}", token.upper(), "see FC1: later", "a gaaaaa-ish note"]
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": i, "email": v} for i, v in enumerate(values)])
    column = _column(engine)
    found = jobs.status(engine, [column]).columns[0]
    assert (2, 2) == (found.malformed, found.plaintext)
    report = jobs.rotate(engine, [column], encrypt_plaintext=True)
    assert (2, 2) == (report.written, report.failed)
    assert {(("id", 0),), (("id", 1),)} == {f.primary_key for f in report.total().failures}


def test_undeclared_bare_tokens_keep_their_key_from_being_retired(
    engine: Engine, ring: Keyring
) -> None:
    """Bare tokens a column does not declare yet still need the key that will read them."""
    table = _make_table(engine, "fc_rot_undeclared")
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": 1, "email": _legacy(ring, "k1", "a@example.com")}])
        undeclared = jobs.reflect_column(engine, "fc_rot_undeclared", "email")
        report = jobs.status(engine, [undeclared])
        assert (1, 0) == (report.columns[0].undeclared, report.columns[0].legacy)
        assert not report.ready
        with pytest.raises(RotationError, match="legacy tokens, which do not say which key"):
            jobs.retire_keys(engine, [undeclared], ["k1"])
        # Tried, the key that opens it is found, so only that key stays.
        assert ["k3", "k1"] == list(
            jobs.retire_keys(engine, [undeclared], ["k2"], resolve_legacy=True).ids
        )
        with pytest.raises(RotationError, match="'k1' is still used"):
            jobs.retire_keys(engine, [undeclared], ["k1"], resolve_legacy=True)
    finally:
        table.metadata.drop_all(engine)


def test_resolve_legacy_tries_bare_tokens_of_any_time(engine: Engine, ring: Keyring) -> None:
    """A bare token from after 2106 (not starting gAAAAA) is tried and charged to its key."""
    table = _make_table(engine, "fc_rot_late")
    late = Fernet(ring.get("k1").export())._encrypt_from_parts(b"late", 2**32 + 5, bytes(16))
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": 1, "email": late.decode()}])
        codec = EncryptedText(legacy=[BareFernet()])
        column = jobs.reflect_column(engine, "fc_rot_late", "email", codec)
        found = jobs.status(engine, [column], resolve_legacy=True).columns[0]
        assert ({"k1": 1}, 0) == (found.legacy_by_key, found.legacy_unopened)
        with pytest.raises(RotationError, match="'k1' is still used"):
            jobs.retire_keys(engine, [column], ["k1"], resolve_legacy=True)
    finally:
        table.metadata.drop_all(engine)

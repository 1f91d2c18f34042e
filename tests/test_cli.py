"""The fieldcrypt command line."""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sa_fieldcrypt
from sa_fieldcrypt import (
    ConfigurationError,
    EncryptedText,
    Keyring,
    __version__,
    generate_key,
    parse_key,
)
from sa_fieldcrypt.cipher import encrypt
from sa_fieldcrypt.cli import cli
from sa_fieldcrypt.index_planner import plan_index_sizes
from sa_fieldcrypt.testing import temporary_keys


def test_keygen_prints_a_key() -> None:
    """keygen prints one Fernet key."""
    result = CliRunner().invoke(cli, ["keygen"])
    assert 0 == result.exit_code
    Keyring({"k": result.output.strip()})


def test_keygen_with_id_prints_a_settings_entry() -> None:
    """keygen --id prints an entry that FIELDCRYPT_KEYS accepts."""
    result = CliRunner().invoke(cli, ["keygen", "--id", "k3"])
    assert 0 == result.exit_code
    assert "k3" == Keyring.parse(result.output.strip()).primary.id


def test_keygen_rejects_bad_ids() -> None:
    """An invalid key id is a usage error."""
    result = CliRunner().invoke(cli, ["keygen", "--id", "bad id"])
    assert 2 == result.exit_code


def test_version() -> None:
    """--version prints the package version."""
    result = CliRunner().invoke(cli, ["--version"])
    assert __version__ in result.output


def test_python_dash_m_runs_the_command_line() -> None:
    """`python -m sa_fieldcrypt.cli` runs the commands, as the `fieldcrypt` script does."""
    result = subprocess.run(
        [sys.executable, "-m", "sa_fieldcrypt.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (0, f"fieldcrypt, version {__version__}\n", "") == (
        result.returncode,
        result.stdout,
        result.stderr,
    )


class _BarBase(DeclarativeBase):
    pass


class _BarPerson(_BarBase):
    __tablename__ = "people"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(EncryptedText())


def test_the_progress_bar_shows_the_rate_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal, rotate's bar shows its position, ETA and the rows per second."""
    import os
    import pty

    old, new = generate_key(), generate_key()
    url = f"sqlite:///{tmp_path / 'bar.db'}"
    engine = create_engine(url)
    _BarBase.metadata.create_all(engine)
    with temporary_keys(Keyring({"k1": old})), Session(engine) as session:
        session.add_all(_BarPerson(id=n, email=f"p{n}@x.example") for n in range(60))
        session.commit()
    engine.dispose()
    leader, follower = pty.openpty()
    env = dict(os.environ, FIELDCRYPT_KEYS=f"k2:{new},k1:{old}", COLUMNS="200")
    with open(os.devnull, "w") as quiet:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sa_fieldcrypt.cli",
                "rotate",
                "--db",
                url,
                "--table",
                "people",
                "--column",
                "email",
                "--batch-size",
                "5",
                "--max-rate",
                "100",
            ],
            stdout=quiet,
            stderr=follower,
            env=env,
        )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert 0 == child.wait(timeout=60)
    text = shown.decode("utf-8", "replace")
    assert "people.email" in text
    assert re.search(r"\d+/60", text)
    assert re.search(r"[\d,]+ rows/s, throttled \d", text), text


@cli.command("raise-config-error", hidden=True)
def _raise() -> None:
    raise ConfigurationError("FIELDCRYPT_KEYS is empty")


def test_library_errors_are_one_clean_line() -> None:
    """A library error prints 'Error: ...' on stderr, exit status 1, no traceback."""
    result = CliRunner().invoke(cli, ["raise-config-error"])
    assert 1 == result.exit_code
    assert "Error: FIELDCRYPT_KEYS is empty\n" == result.stderr
    assert "Traceback" not in result.output


def test_debug_shows_the_exception() -> None:
    """--debug lets the exception through, for a traceback."""
    result = CliRunner().invoke(cli, ["--debug", "raise-config-error"])
    assert isinstance(result.exception, ConfigurationError)
    with pytest.raises(ConfigurationError):
        raise result.exception


# -- keys in Google Cloud Secret Manager ---------------------------------------------------

GCP_SECRET = "projects/test/secrets/fieldcrypt-keys"


@pytest.fixture
def gcp(request: pytest.FixtureRequest, no_default_keys: None) -> dict[str, Any]:
    """The command line's context object, with a client connected to a fake Secret Manager."""
    pytest.importorskip("sa_fieldcrypt.testing.secret_manager", reason="needs the gcp extra")
    fake = request.getfixturevalue("fake_secret_manager")
    fake.create_secret(GCP_SECRET)
    return {"fake": fake, "gcp_client": fake.client()}


def _keys(gcp: dict[str, Any], *args: str) -> Result:
    return CliRunner().invoke(cli, ["keys", *args, "--secret", GCP_SECRET], obj=gcp)


def test_keys_add_then_promote(gcp: dict[str, Any]) -> None:
    """keys add adds a decrypt-only version; keys promote --force makes it encrypt."""
    first = _keys(gcp, "add")
    assert 0 == first.exit_code, first.output
    assert "Added version 1 (key id v1), the secret's first key: it encrypts.\n" == first.output
    second = _keys(gcp, "add")
    assert 0 == second.exit_code, second.output
    assert "It is not primary: it does not encrypt until it is promoted." in second.output
    assert "fieldcrypt keys promote 2" in second.output
    assert {"fieldcrypt-primary": 1} == gcp["fake"].aliases(GCP_SECRET)
    promoted = _keys(gcp, "promote", "--force")
    assert 0 == promoted.exit_code, promoted.output
    assert promoted.output.startswith("Version 2 (key id v2) now encrypts")
    assert {"fieldcrypt-primary": 2} == gcp["fake"].aliases(GCP_SECRET)


def test_keys_promote_waits_for_the_cache_ttl(
    gcp: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --force, a version younger than FIELDCRYPT_GCP_CACHE_TTL is refused cleanly."""
    monkeypatch.setenv("FIELDCRYPT_GCP_CACHE_TTL", "120")
    _keys(gcp, "add")
    _keys(gcp, "add")
    result = _keys(gcp, "promote", "2")
    assert 1 == result.exit_code
    assert result.stderr.startswith("Error: version 2 was added ")
    assert "FIELDCRYPT_GCP_CACHE_TTL is 120 s" in result.stderr
    assert 1 == result.stderr.count("\n")
    assert {"fieldcrypt-primary": 1} == gcp["fake"].aliases(GCP_SECRET)


def test_keys_list(gcp: dict[str, Any]) -> None:
    """keys list shows each version's key id and state, and marks the one that encrypts."""
    _keys(gcp, "add")
    _keys(gcp, "add")
    gcp["fake"].set_state(GCP_SECRET, 2, "DISABLED")
    result = _keys(gcp, "list")
    assert 0 == result.exit_code, result.output
    lines = result.output.splitlines()
    assert ["VERSION", "KEY", "ID", "STATE", "CREATED", "ENCRYPTS"] == lines[0].split()
    assert ["2", "v2", "DISABLED"] == lines[1].split()[:3]
    assert ["1", "v1", "ENABLED"] == lines[2].split()[:3]
    assert lines[2].endswith("yes (alias fieldcrypt-primary)")


def test_keys_list_shows_skipped_versions_by_number(gcp: dict[str, Any]) -> None:
    """keys list names each version instances skip and why, never quoting its payload."""
    _keys(gcp, "add")
    _keys(gcp, "add")
    gcp["fake"].add_version(GCP_SECRET, b"password=hunter2hunter2")
    result = _keys(gcp, "list")
    assert 0 == result.exit_code, result.output
    lines = result.output.splitlines()
    assert ["3", "v3", "ENABLED"] == lines[1].split()[:3]
    assert lines[1].endswith("no: skipped, see below")
    assert lines[3].endswith("yes (alias fieldcrypt-primary)")
    assert lines[4].startswith("Version 3 is skipped: its payload is not a usable key (key 'v3'")
    assert "hunter2" not in result.output + result.stderr


def test_keys_list_fails_when_instances_cannot_load(gcp: dict[str, Any]) -> None:
    """keys list of a secret with no primary prints the versions, then the load's error, exit 1."""
    gcp["fake"].add_version(GCP_SECRET, generate_key().encode())
    gcp["fake"].add_version(GCP_SECRET, generate_key().encode())
    result = _keys(gcp, "list")
    assert 1 == result.exit_code
    assert 3 == len(result.stdout.splitlines())
    assert "yes" not in result.stdout
    assert result.stderr.startswith(
        f"Error: instances cannot load these keys: Secret Manager secret {GCP_SECRET!r} has 2 "
        "enabled versions and no version alias 'fieldcrypt-primary'"
    )
    assert "`fieldcrypt keys promote VERSION`" in result.stderr


def test_keys_list_without_permission_to_read_versions(gcp: dict[str, Any]) -> None:
    """keys list by a caller who may not read versions lists them and says they were not checked."""
    grpc = pytest.importorskip("grpc", reason="needs the gcp extra")
    _keys(gcp, "add")
    gcp["fake"].fail_next("AccessSecretVersion", grpc.StatusCode.PERMISSION_DENIED)
    result = _keys(gcp, "list")
    assert 0 == result.exit_code, result.output
    assert "The payloads were not checked: reading them needs secretmanager.versions.access" in (
        result.output
    )


def test_keys_add_refuses_a_secret_without_primary(gcp: dict[str, Any]) -> None:
    """keys add on a secret with two versions and no alias adds nothing and says to promote."""
    gcp["fake"].add_version(GCP_SECRET, generate_key().encode())
    gcp["fake"].add_version(GCP_SECRET, generate_key().encode())
    result = _keys(gcp, "add")
    assert 1 == result.exit_code
    assert "no version alias 'fieldcrypt-primary'" in result.stderr
    assert "`fieldcrypt keys promote VERSION`; then add the key. No key was added" in result.stderr
    assert 0 == gcp["fake"].call_count("AddSecretVersion")


def test_keys_secret_comes_from_settings(
    gcp: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --secret, FIELDCRYPT_GCP_SECRET names the secret; with neither, an error says so."""
    missing = CliRunner().invoke(cli, ["keys", "add"], obj=gcp)
    assert 1 == missing.exit_code
    assert "set FIELDCRYPT_GCP_SECRET" in missing.stderr
    monkeypatch.setenv("FIELDCRYPT_GCP_SECRET", GCP_SECRET)
    result = CliRunner().invoke(cli, ["keys", "add"], obj=gcp)
    assert 0 == result.exit_code, result.output
    assert 1 == gcp["fake"].call_count("AddSecretVersion")


def test_keys_without_the_gcp_extra_say_how_to_install_it(
    gcp: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the Google packages, keys commands print the install command, no traceback."""
    monkeypatch.delitem(sys.modules, "sa_fieldcrypt.providers.gcp", raising=False)
    monkeypatch.setitem(sys.modules, "google_crc32c", None)
    result = _keys(gcp, "list")
    assert 1 == result.exit_code
    assert "pip install 'sa-fieldcrypt[gcp]'" in result.stderr
    assert "Traceback" not in result.output


def test_keys_blame_the_secret_option_not_the_setting(gcp: dict[str, Any]) -> None:
    """A malformed --secret is reported as such, not as a bad FIELDCRYPT_GCP_SECRET."""
    result = CliRunner().invoke(cli, ["keys", "list", "--secret", "fieldcrypt-keys"], obj=gcp)
    assert 1 == result.exit_code
    assert result.stderr.startswith("Error: secret: 'fieldcrypt-keys' is not a secret name")
    assert "FIELDCRYPT_GCP_SECRET" not in result.stderr


# -- reindex -----------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SQLITE_SCHEMAS = ["--schema-translate", "core=", "--schema-translate", "identity="]


@pytest.fixture
def booking_db(no_default_keys: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A SQLite file holding two example customers indexed under key b1; keys from the env."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(EXAMPLES)  # as `fieldcrypt reindex booking.models:Base` is run there
    models = importlib.import_module("booking.models")
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k1:{generate_key()}")
    old_index_key = f"b1:{generate_key('hmac-sha256')}"
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_KEYS", old_index_key)
    url = f"sqlite:///{tmp_path / 'booking.sqlite3'}"
    engine = create_engine(url).execution_options(schema_translate_map=models.SQLITE_SCHEMA_MAP)
    models.Base.metadata.create_all(engine)
    with Session(engine) as session:
        station = models.Station(**models.station_kwargs("NORTH"))
        session.add_all(
            models.Customer(
                station=station, email=email, first_name="A", last_name="B", timezone="UTC"
            )
            for email in ("ada@example.com", "grace@example.com")
        )
        session.commit()
    engine.dispose()
    # The operator adds a new writing index key in front of the old one.
    monkeypatch.setenv(
        "FIELDCRYPT_BLIND_INDEX_KEYS", f"b2:{generate_key('hmac-sha256')},{old_index_key}"
    )
    sa_fieldcrypt.configure(
        purpose="blind-index"
    )  # forget the loaded keys: read the variables again
    return url


def test_rotate_models_with_schemas_on_sqlite(
    booking_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--schema-translate lets status and rotate work on schema-qualified models on SQLite."""
    old = os.environ["FIELDCRYPT_KEYS"]
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"k2:{generate_key()},{old}")
    sa_fieldcrypt.configure()  # read the variables again
    target = ["--models", "booking.models", "--db", booking_db]
    target += ["--schema-translate", "core=", "--schema-translate", "identity="]
    rotated = CliRunner().invoke(cli, ["rotate", *target])
    assert 0 == rotated.exit_code, rotated.output
    assert "total: scanned 2, rotated 2, changed concurrently 0, failed 0" in rotated.stdout
    status = CliRunner().invoke(cli, ["status", "--json", *target])
    assert 0 == status.exit_code, status.output
    by_key = {c["column"]: c["by_key"] for c in json.loads(status.stdout)["columns"]}
    assert {"k2": 2} == by_key["core.customers.email_encrypted"]


REINDEX = ["reindex", "--models", "booking.models:Base"]


def test_reindex_check_then_run_then_check(booking_db: str, tmp_path: Path) -> None:
    """--check exits 1 while rows are under an old key; reindex moves them; --check then passes."""
    arguments = [*REINDEX, "--db", booking_db, *SQLITE_SCHEMAS]
    before = CliRunner().invoke(cli, [*arguments, "--check"])
    assert 1 == before.exit_code, before.output
    assert re.search(r"^  key b1 +2  matching: reindex moves these$", before.stdout, re.M)
    state = tmp_path / "state.json"
    run = CliRunner().invoke(cli, [*arguments, "--batch-size", "1", "--state", str(state)])
    assert 0 == run.exit_code, run.output
    assert (
        "core.customers.(email_bidx, phone_bidx): scanned 2, reindexed 2, changed concurrently 0, "
        "failed 0\n"
    ) in run.stdout
    after = CliRunner().invoke(cli, [*arguments, "--check", "--json"])
    assert 0 == after.exit_code, after.output
    indexes = {i["column"]: i for i in json.loads(after.stdout)["indexes"]}
    email = indexes["core.customers.email_bidx"]
    assert ({"b2": 2, "b1": 0}, 0, True) == (email["by_key"], email["missing"], email["done"])


def test_reindex_check_fails_while_an_index_is_missing(booking_db: str) -> None:
    """A row whose index was never written fails --check, though no index key is stale."""
    arguments = [*REINDEX, "--db", booking_db, *SQLITE_SCHEMAS]
    assert 0 == CliRunner().invoke(cli, arguments).exit_code
    engine = create_engine(booking_db)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE customers SET email_bidx = NULL WHERE first_name = :n"), {"n": "A"}
        )
    engine.dispose()
    check = CliRunner().invoke(cli, [*arguments, "--check", "--json"])
    assert 1 == check.exit_code, check.output
    indexes = {i["column"]: i for i in json.loads(check.stdout)["indexes"]}
    email = indexes["core.customers.email_bidx"]
    assert (0, 2, 2, False) == (email["stale"], email["no_index"], email["missing"], email["done"])


def test_reindex_takes_the_run_options(booking_db: str) -> None:
    """A dry run writes nothing; --json reports the run; --table is refused (no normalizers)."""
    arguments = [*REINDEX, "--db", booking_db, *SQLITE_SCHEMAS]
    dry = CliRunner().invoke(cli, [*arguments, "--dry-run", "--json"])
    assert 0 == dry.exit_code, dry.output
    assert (2, True) == (json.loads(dry.stdout)["total"]["written"], json.loads(dry.stdout)["ok"])
    assert 1 == CliRunner().invoke(cli, [*arguments, "--check"]).exit_code  # still under b1
    table = CliRunner().invoke(
        cli, ["reindex", "--db", booking_db, "--table", "customers", "--column", "email_bidx"]
    )
    assert 2 == table.exit_code
    assert "reindex needs --models" in table.stderr


def test_status_exits_1_while_a_value_names_a_missing_key(booking_db: str) -> None:
    """status gates a deploy: exit 1 and ready=false while a value's key is not in the keyring."""
    target = ["--models", "booking.models", "--db", booking_db, *SQLITE_SCHEMAS]
    ready = CliRunner().invoke(cli, ["status", *target])
    assert 0 == ready.exit_code, ready.output
    assert "ready: every value is readable" in ready.stdout
    stray = encrypt(Keyring({"k9": generate_key()}), b"x")
    engine = create_engine(booking_db)
    with engine.begin() as conn:
        conn.execute(text("UPDATE customers SET email_encrypted = :t"), {"t": stray})
    engine.dispose()
    result = CliRunner().invoke(cli, ["status", "--json", *target])
    assert 1 == result.exit_code
    report = json.loads(result.stdout)
    assert False is report["ready"]
    assert "which the keyring lacks" in report["problems"][0]


def test_reindex_reports_missing_models_cleanly(booking_db: str) -> None:
    """An unimportable models module is one error line and exit status 1."""
    result = CliRunner().invoke(cli, [*REINDEX[:2], "no_such_models", "--db", booking_db])
    assert 1 == result.exit_code
    assert result.stderr.startswith("Error: cannot import the models module 'no_such_models'")


def test_reindex_rejects_a_malformed_schema_translation() -> None:
    """--schema-translate needs SCHEMA=NEW; anything else is a usage error."""
    result = CliRunner().invoke(cli, [*REINDEX, "--db", "sqlite://", "--schema-translate", "core"])
    assert 2 == result.exit_code


@pytest.mark.parametrize("kind", ["fernet", "aes-gcm-siv"])
def test_keygen_kind_prints_an_entry_of_that_kind(kind: str) -> None:
    """keygen --kind K --id k3 prints an entry that parses as a key of kind K."""
    result = CliRunner().invoke(cli, ["keygen", "--kind", kind, "--id", "k3"])
    assert 0 == result.exit_code
    key = Keyring.parse(result.output.strip()).get("k3")
    assert kind == key.kind
    assert b"x" == key.decrypt(key.encrypt(b"x"))


def test_keygen_aead_key_alone_carries_its_kind() -> None:
    """keygen --kind aes-gcm-siv without --id prints 'aes-gcm-siv:<key>', usable as key text."""
    result = CliRunner().invoke(cli, ["keygen", "--kind", "aes-gcm-siv"])
    assert 0 == result.exit_code
    assert result.output.startswith("aes-gcm-siv:")
    assert "aes-gcm-siv" == Keyring({"k": result.output.strip()}).primary.kind


def test_keygen_rejects_unknown_kinds() -> None:
    """An unknown --kind is a usage error."""
    result = CliRunner().invoke(cli, ["keygen", "--kind", "des"])
    assert 2 == result.exit_code


def test_keygen_hmac_sha256_prints_a_blind_index_key() -> None:
    """keygen --kind hmac-sha256 --id b1 prints an entry for FIELDCRYPT_BLIND_INDEX_KEYS."""
    result = CliRunner().invoke(cli, ["keygen", "--kind", "hmac-sha256", "--id", "b1"])
    assert 0 == result.exit_code
    key = Keyring.parse(result.output.strip(), purpose="blind-index").get("b1")
    assert ("hmac-sha256", "blind-index") == (key.kind, key.purpose)


def test_keygen_help_names_the_blind_index_kind() -> None:
    """keygen --help says that hmac-sha256 is a blind-index key."""
    result = CliRunner().invoke(cli, ["keygen", "--help"])
    assert "hmac-sha256 (a blind-index key)" in " ".join(result.output.split())


def test_keys_add_kind(gcp: dict[str, Any]) -> None:
    """keys add --kind aes-gcm-siv stores a new aes-gcm-siv key."""
    result = _keys(gcp, "add", "--kind", "aes-gcm-siv")
    assert 0 == result.exit_code, result.output
    assert gcp["fake"].payload(GCP_SECRET, 1).startswith(b"aes-gcm-siv:")


def test_keys_purpose_blind_index_reads_its_own_secret(
    gcp: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--purpose blind-index manages FIELDCRYPT_BLIND_INDEX_GCP_SECRET with hmac-sha256 keys."""
    index_secret = "projects/test/secrets/cli-index-keys"
    gcp["fake"].create_secret(index_secret)
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_GCP_SECRET", index_secret)
    runner = CliRunner()
    first = runner.invoke(cli, ["keys", "add", "--purpose", "blind-index"], obj=gcp)
    assert 0 == first.exit_code, first.output
    assert "it computes new index values." in first.output
    second = runner.invoke(cli, ["keys", "add", "--purpose", "blind-index"], obj=gcp)
    assert "fieldcrypt keys promote 2 --purpose blind-index" in second.output
    listed = runner.invoke(cli, ["keys", "list", "--purpose", "blind-index"], obj=gcp)
    assert "WRITES" in listed.output
    payload = gcp["fake"].payload(index_secret, 1) or b""
    assert "hmac-sha256" == parse_key(payload, purpose="blind-index", key_id="v1").kind
    assert {} == gcp["fake"].aliases(GCP_SECRET)  # the encryption secret is untouched


def test_keys_add_refuses_a_kind_of_another_purpose(gcp: dict[str, Any]) -> None:
    """keys add --kind hmac-sha256 on an encryption secret is one clean error, nothing added."""
    result = _keys(gcp, "add", "--kind", "hmac-sha256")
    assert 1 == result.exit_code
    assert "holds keys of kind fernet or aes-gcm-siv" in result.stderr
    assert 0 == gcp["fake"].call_count("AddSecretVersion")


# -- keys wrapped by Cloud KMS ----------------------------------------------------------------

KEK = "projects/test/locations/global/keyRings/app/cryptoKeys/fieldcrypt"


@pytest.fixture
def wrapping(gcp: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """The context object with a fake Secret Manager and a fake Cloud KMS holding KEK."""
    kms_fake = request.getfixturevalue("fake_kms")
    kms_fake.create_key(KEK)
    return {**gcp, "kms": kms_fake, "kms_client": kms_fake.client()}


def _unwrapper(wrapping: dict[str, Any]) -> Any:
    from sa_fieldcrypt.providers.kms import KmsKeyWrapper

    return KmsKeyWrapper(client=wrapping["kms"].client())


def test_keygen_wrap_prints_only_the_wrapped_entry(wrapping: dict[str, Any]) -> None:
    """keygen --wrap prints one 'id:wrapped:...' entry that unwraps to a key of that kind."""
    args = ["keygen", "--id", "k3", "--kind", "aes-gcm-siv", "--wrap", KEK]
    result = CliRunner().invoke(cli, args, obj=wrapping)
    assert 0 == result.exit_code, result.output
    entry = result.output.strip()
    assert entry.startswith(f"k3:wrapped:aes-gcm-siv:{KEK}:")
    key = parse_key(entry, unwrap=_unwrapper(wrapping))
    assert ("k3", "aes-gcm-siv") == (key.id, key.kind)
    assert key.export().split(":")[-1] not in result.output


def test_keygen_wrap_needs_an_id(wrapping: dict[str, Any]) -> None:
    """keygen --wrap without --id is a usage error: the id is bound into the wrapping."""
    result = CliRunner().invoke(cli, ["keygen", "--wrap", KEK], obj=wrapping)
    assert 2 == result.exit_code
    assert "--wrap needs --id" in result.output


def test_keys_add_wrap_then_rewrap(wrapping: dict[str, Any]) -> None:
    """keys add --wrap stores a wrapped version; after a KMS rotation keys rewrap moves it."""
    added = _keys(wrapping, "add", "--wrap", KEK)
    assert 0 == added.exit_code, added.output
    assert "Added version 1 (key id v1)" in added.output
    assert (wrapping["fake"].payload(GCP_SECRET, 1) or b"").startswith(b"v1:wrapped:fernet:")
    wrapping["kms"].rotate(KEK)
    moved = _keys(wrapping, "rewrap")
    assert 0 == moved.exit_code, moved.output
    assert (
        "Key v1: moved from version 1 (now disabled) to version 2, wrapped under the KMS key's "
        "primary version.\n" == moved.output
    )
    again = _keys(wrapping, "rewrap")
    assert "Already under the primary version, left as they are: v1.\n" == again.output
    listed = _keys(wrapping, "list")
    assert re.search(r"^2 +v1 +ENABLED .*yes \(alias fieldcrypt-primary\)$", listed.output, re.M)
    assert f"Wrapped by Cloud KMS key {KEK}: version 2.\n" in listed.output


def test_keys_rewrap_from_env_prints_the_new_value(
    wrapping: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """keys rewrap --from-env prints FIELDCRYPT_KEYS re-wrapped, and a summary on stderr."""
    entries = [
        CliRunner().invoke(cli, ["keygen", "--id", key_id, "--wrap", KEK], obj=wrapping)
        for key_id in ("k2", "k1")
    ]
    monkeypatch.setenv("FIELDCRYPT_KEYS", ",".join(e.output.strip() for e in entries))
    wrapping["kms"].rotate(KEK)
    result = CliRunner().invoke(cli, ["keys", "rewrap", "--from-env"], obj=wrapping)
    assert 0 == result.exit_code, result.output
    value, summary = result.stdout.strip(), result.stderr
    assert [2, 2] == [
        wrapping["kms"].version_of(base64.urlsafe_b64decode(entry.rsplit(":", 1)[1]))
        for entry in value.split(",")
    ]
    assert "re-wrapped k2, k1." in summary


def test_keys_rewrap_from_env_never_prints_a_plaintext_key(
    wrapping: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With keys in plaintext among them, the new value is not printed, unless --wrap wraps them."""
    entry = CliRunner().invoke(cli, ["keygen", "--id", "k2", "--wrap", KEK], obj=wrapping)
    secret = generate_key()
    monkeypatch.setenv("FIELDCRYPT_KEYS", f"{entry.output.strip()},k1:{secret}")
    refused = CliRunner().invoke(cli, ["keys", "rewrap", "--from-env"], obj=wrapping)
    assert 1 == refused.exit_code
    assert "holds keys in plaintext (k1)" in refused.output
    assert secret not in refused.output
    wrapped = CliRunner().invoke(cli, ["keys", "rewrap", "--from-env", "--wrap", KEK], obj=wrapping)
    assert 0 == wrapped.exit_code, wrapped.output
    assert secret not in wrapped.output
    assert 2 == wrapped.stdout.count(":wrapped:")


def test_keys_rewrap_from_env_rewraps_the_single_blind_index_key(
    wrapping: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIELDCRYPT_BLIND_INDEX_KEY is re-wrapped too, and printed as that setting holds it."""
    args = ["keygen", "--id", "b0", "--kind", "hmac-sha256", "--wrap", KEK]
    entry = CliRunner().invoke(cli, args, obj=wrapping).output.strip()
    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_KEY", entry.removeprefix("b0:"))
    wrapping["kms"].rotate(KEK)
    rewrap = ["keys", "rewrap", "--from-env", "--purpose", "blind-index"]
    result = CliRunner().invoke(cli, rewrap, obj=wrapping)
    assert 0 == result.exit_code, result.output
    value = result.stdout.strip()
    assert value.startswith(f"wrapped:hmac-sha256:{KEK}:")
    assert 2 == wrapping["kms"].version_of(base64.urlsafe_b64decode(value.rsplit(":", 1)[1]))
    assert "FIELDCRYPT_BLIND_INDEX_KEY: re-wrapped b0." in result.stderr
    old = parse_key(entry, purpose="blind-index", unwrap=_unwrapper(wrapping))
    new = parse_key(value, purpose="blind-index", key_id="b0", unwrap=_unwrapper(wrapping))
    assert new.shares_secret_with(old)

    monkeypatch.setenv("FIELDCRYPT_BLIND_INDEX_KEYS", entry)
    both = CliRunner().invoke(cli, rewrap, obj=wrapping)
    assert 1 == both.exit_code
    assert "both FIELDCRYPT_BLIND_INDEX_KEYS and FIELDCRYPT_BLIND_INDEX_KEY are set" in both.output


def test_keys_list_without_the_decrypter_role(wrapping: dict[str, Any]) -> None:
    """An operator who may not unwrap sees the wrapped versions' ids, not skips, exit 0."""
    import grpc

    for _ in range(2):
        assert 0 == _keys(wrapping, "add", "--wrap", KEK).exit_code
    assert 0 == _keys(wrapping, "promote", "2", "--force").exit_code
    wrapping["kms"].fail_next("Decrypt", grpc.StatusCode.PERMISSION_DENIED, times=2)
    listed = _keys(wrapping, "list")
    assert 0 == listed.exit_code, listed.output
    assert re.search(r"^2 +v2 +ENABLED .*yes \(alias fieldcrypt-primary\)$", listed.output, re.M)
    assert re.search(r"^1 +v1 +ENABLED +\S+$", listed.output, re.M)
    assert f"Wrapped by Cloud KMS key {KEK}: version 2, 1.\n" in listed.output
    assert "skipped" not in listed.output
    for number in (2, 1):
        assert (
            f"Version {number} is not checked: its wrapped key was not unwrapped, so whether "
            f"it opens is not checked: that needs roles/cloudkms.cryptoKeyDecrypter on {KEK}"
        ) in listed.output
    # A wrapped key that does not open for another reason is still reported as skipped.
    wrapping["kms"].set_state(KEK, 1, "DISABLED")
    disabled = _keys(wrapping, "list")
    assert 1 == disabled.exit_code
    assert "Version 1 is skipped: its wrapped key does not unwrap" in disabled.output
    assert "is DISABLED" in disabled.output


def test_a_kms_refusal_prints_one_clean_line(wrapping: dict[str, Any]) -> None:
    """A KMS failure is one 'Error:' line naming the role, exit status 1."""
    import grpc

    wrapping["kms"].fail_next("Encrypt", grpc.StatusCode.PERMISSION_DENIED)
    result = CliRunner().invoke(cli, ["keygen", "--id", "k1", "--wrap", KEK], obj=wrapping)
    assert 1 == result.exit_code
    assert result.output.startswith("Error: key 'k1': Cloud KMS key")
    assert "roles/cloudkms.cryptoKeyEncrypter" in result.output


PLAN = ["plan-indexes", "--rows", "1000000"]


def test_plan_indexes_prints_a_table_and_the_columns_coincidence() -> None:
    """plan-indexes prints each index's bits, range and lookup cost, then the combined count."""
    result = CliRunner().invoke(cli, [*PLAN, "--index", "email=900000"])
    assert 0 == result.exit_code, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "INDEX",
        "DISTINCT",
        "BITS",
        "RANGE",
        "ROWS/VALUE",
        "CANDIDATES",
        "FALSE",
        "POS.",
    ]
    assert ["email", "900,000", "16", "12-16", "15.3", "16.4", "15.3"] == lines[1].split()
    assert (
        "1,000,000 rows: each combination of index values is shared by about 15.3 rows "
        "(at least 2 wanted)."
    ) == lines[2]
    assert 3 == len(lines)


def test_plan_indexes_says_which_lookups_exceed_the_false_positive_bound() -> None:
    """Two indexes share the column's bits; lookups over the bound are named, with the budget."""
    result = CliRunner().invoke(
        cli, [*PLAN, "--index", "email=1,000,000", "--index", "phone_last4=10000"]
    )
    assert 0 == result.exit_code, result.output
    assert re.search(r"^phone_last4 +10,000 +8 +8-8 ", result.stdout, re.M)
    assert (
        "Lookups through email, phone_last4 decrypt more than 1,000 non-matching rows: "
        "1,000,000 rows keep 18.9 bits secret across the column's indexes"
    ) in result.stdout


def test_plan_indexes_names_no_negative_budget_for_a_table_too_small() -> None:
    """A --min-coincidence above the row count is explained, not shown as negative bits."""
    result = CliRunner().invoke(
        cli,
        ["plan-indexes", "--rows", "1000", "--index", "email=900", "--min-coincidence", "1e300"],
    )
    assert 1 == result.exit_code, result.output
    assert "bits secret" not in result.stdout
    assert "a table of 1,000 rows cannot give each combination the 1e+300 rows wanted" in (
        result.stdout
    )


def test_plan_indexes_json_is_the_plan() -> None:
    """--json prints plan_index_sizes' result as JSON, options passed through."""
    result = CliRunner().invoke(
        cli,
        [*PLAN, "--index", "email=900000", "--min-coincidence", "64", "--json"],
    )
    assert 0 == result.exit_code, result.output
    data = json.loads(result.stdout)
    expected = plan_index_sizes(1_000_000, {"email": 900_000}, min_coincidence=64)
    assert expected.to_dict() == data
    assert 12 == data["indexes"][0]["bits"]


def test_plan_indexes_exits_1_when_the_table_is_too_small() -> None:
    """A table too small for its indexes prints the plan, then one error line, exit status 1."""
    result = CliRunner().invoke(cli, ["plan-indexes", "--rows", "30", "--index", "code=30"])
    assert 1 == result.exit_code
    assert result.stdout.startswith("INDEX")
    assert result.stderr.startswith("Error: 30 rows are too few for these indexes")
    assert "index fewer distinct values or fewer indexes\n" in result.stderr


def test_plan_indexes_reports_invalid_counts_cleanly() -> None:
    """More distinct values than rows is a library error: one line naming the index."""
    result = CliRunner().invoke(cli, ["plan-indexes", "--rows", "10", "--index", "email=11"])
    assert 1 == result.exit_code
    assert result.stderr.startswith("Error: index 'email' cannot have more distinct values")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--index", "email"], "is not NAME=DISTINCT"),
        (["--index", "=5"], "is not NAME=DISTINCT"),
        (["--index", "email=many"], "DISTINCT is a whole number"),
        (["--index", "email=5", "--index", "email=6"], "index 'email' is given twice"),
        ([], "Missing option '--index'"),
    ],
)
def test_plan_indexes_rejects_malformed_indexes(arguments: list[str], message: str) -> None:
    """A malformed or repeated --index is a usage error, exit status 2."""
    result = CliRunner().invoke(cli, [*PLAN, *arguments])
    assert 2 == result.exit_code
    assert message in result.output

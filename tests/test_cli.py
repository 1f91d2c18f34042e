"""The fieldcrypt command line."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import sa_fieldcrypt
from sa_fieldcrypt import (
    ConfigurationError,
    Keyring,
    __version__,
    generate_blind_index_key,
    generate_key,
)
from sa_fieldcrypt.cli import cli


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
    old_index_key = f"b1:{generate_blind_index_key()}"
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
        "FIELDCRYPT_BLIND_INDEX_KEYS", f"b2:{generate_blind_index_key()},{old_index_key}"
    )
    sa_fieldcrypt.configure_blind_index()  # forget the loaded keys: read the variables again
    return url


def test_reindex_check_then_run_then_check(booking_db: str, tmp_path: Path) -> None:
    """--check exits 1 while rows are under an old key; reindex moves them; --check then passes."""
    arguments = ["reindex", "booking.models:Base", "--db", booking_db, *SQLITE_SCHEMAS]
    before = CliRunner().invoke(cli, [*arguments, "--check"])
    assert 1 == before.exit_code, before.output
    assert "core.customers.email_bidx: b2=0 b1=2 retired-keys=0 no-index=0 stale=2" in before.stdout
    state = tmp_path / "state.json"
    run = CliRunner().invoke(cli, [*arguments, "--batch-size", "1", "--state", str(state)])
    assert 0 == run.exit_code, run.output
    assert "reindexed 2 column(s): 2 rows read, 2 rewritten, 0 changed meanwhile" in run.stdout
    assert 2 == run.stderr.count("core.customers: 1 rows read, 1 rewritten")
    after = CliRunner().invoke(cli, [*arguments, "--check"])
    assert 0 == after.exit_code, after.output
    assert "core.customers.email_bidx: b2=2 b1=0 retired-keys=0 no-index=0 stale=0" in after.stdout


def test_reindex_reports_missing_models_cleanly(booking_db: str) -> None:
    """An unimportable models module is one error line and exit status 1."""
    result = CliRunner().invoke(cli, ["reindex", "no_such_models", "--db", booking_db])
    assert 1 == result.exit_code
    assert result.stderr.startswith("Error: cannot import models module 'no_such_models'")


def test_reindex_rejects_a_malformed_schema_translation() -> None:
    """--schema-translate needs SCHEMA=NEW; anything else is a usage error."""
    result = CliRunner().invoke(
        cli, ["reindex", "m:Base", "--db", "sqlite://", "--schema-translate", "core"]
    )
    assert 2 == result.exit_code

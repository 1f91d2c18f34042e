"""The fieldcrypt command line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sa_fieldcrypt import ConfigurationError, Keyring, __version__
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

"""The ``fieldcrypt`` command line: argument parsing only, over the library's functions.

Errors of the library print as one line on stderr with exit status 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from sa_fieldcrypt._version import __version__
from sa_fieldcrypt.errors import FieldCryptError
from sa_fieldcrypt.keys import KEY_ID_PATTERN, KEY_KINDS, KeyKind, generate_key

__all__ = ["cli", "main"]


class _Group(click.Group):
    """A group that turns library errors into a clean message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FieldCryptError as exc:
            if ctx.meta.get("fieldcrypt.debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="fieldcrypt")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Manage sa-fieldcrypt keys and encrypted data."""
    ctx.meta["fieldcrypt.debug"] = debug


def _key_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not KEY_ID_PATTERN.match(value):
        raise click.BadParameter("1 to 32 characters from A-Z, a-z, 0-9, '_' and '-'")
    return value


@cli.command()
@click.option(
    "--id", "key_id", callback=_key_id, help="Print an 'ID:key' entry for FIELDCRYPT_KEYS."
)
@click.option(
    "--kind",
    type=click.Choice(KEY_KINDS),
    default="fernet",
    show_default=True,
    help="fernet, or aes-gcm-siv (faster, printed as 'aes-gcm-siv:<key>').",
)
def keygen(key_id: str | None, kind: KeyKind) -> None:
    """Print a new random key."""
    key = generate_key(kind)
    click.echo(f"{key_id}:{key}" if key_id else key)


def main(argv: list[str] | None = None) -> None:
    """Run the command line (the ``fieldcrypt`` entry point)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fieldcrypt")

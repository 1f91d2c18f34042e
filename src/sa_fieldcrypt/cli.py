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


@cli.group()
def keys() -> None:
    """Manage the keys held in a Google Cloud Secret Manager secret (the gcp extra).

    Each enabled version of the secret is a key. Rotate in two phases: `keys add`, wait until
    every instance has refreshed (FIELDCRYPT_GCP_CACHE_TTL), then `keys promote`.
    """


_secret_option = click.option(
    "--secret",
    metavar="projects/P/secrets/S",
    help="The secret; by default FIELDCRYPT_GCP_SECRET.",
)


def _gcp_provider(ctx: click.Context, secret: str | None) -> Any:
    # Imported here: `fieldcrypt keygen` must work without the optional Google packages.
    try:
        from sa_fieldcrypt.providers.gcp import GoogleSecretManagerKeyProvider
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc

    # Programs that embed the command line may pass obj={"gcp_client": client}.
    client = ctx.obj.get("gcp_client") if isinstance(ctx.obj, dict) else None
    return GoogleSecretManagerKeyProvider.from_settings(secret=secret, client=client)


@keys.command("list")
@_secret_option
@click.pass_context
def keys_list(ctx: click.Context, secret: str | None) -> None:
    """Show the secret's versions, their state, and which one encrypts."""
    provider = _gcp_provider(ctx, secret)
    click.echo(f"{'VERSION':<9}{'KEY ID':<9}{'STATE':<11}{'CREATED':<27}ENCRYPTS")
    for version in provider.versions():
        created = version.created.isoformat(timespec="seconds") if version.created else "-"
        mark = f"yes (alias {provider.primary_alias})" if version.primary else ""
        click.echo(
            f"{version.number:<9}{version.key_id:<9}{version.state:<11}{created:<27}{mark}".rstrip()
        )


@keys.command("add")
@_secret_option
@click.pass_context
def keys_add(ctx: click.Context, secret: str | None) -> None:
    """Add a new random key as a new version; it decrypts at once but does not encrypt yet."""
    provider = _gcp_provider(ctx, secret)
    added = provider.add_key()
    if added.primary:
        click.echo(
            f"Added version {added.number} (key id {added.key_id}), the secret's first key: "
            "it encrypts."
        )
        return
    ttl = provider.cache_ttl
    click.echo(
        f"Added version {added.number} (key id {added.key_id}). Every instance can decrypt with "
        f"it after its next refresh (within {ttl:g} s); then make it encrypt with:\n"
        f"  fieldcrypt keys promote {added.number}"
    )


@keys.command("promote")
@click.argument("version", type=click.IntRange(min=1), required=False)
@_secret_option
@click.option(
    "--force",
    is_flag=True,
    help="Promote even if instances may not have refreshed since the version was added.",
)
@click.pass_context
def keys_promote(ctx: click.Context, version: int | None, secret: str | None, force: bool) -> None:
    """Make VERSION (by default the newest enabled one) the key that encrypts."""
    provider = _gcp_provider(ctx, secret)
    min_age = 0.0 if force or provider.cache_ttl is None else provider.cache_ttl
    promoted = provider.promote(version, min_age=min_age)
    click.echo(
        f"Version {promoted.number} (key id {promoted.key_id}) now encrypts, on each instance "
        "from its next refresh. Values under older keys stay readable while their versions "
        "stay enabled."
    )


def _schema_map(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str | None, str | None]:
    mapping: dict[str | None, str | None] = {}
    for item in value:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise click.BadParameter(f"{item!r} is not SCHEMA=NEW (NEW may be empty)")
        mapping[old] = new or None
    return mapping


@cli.command("reindex")
@click.argument("models")
@click.option(
    "--db", "url", envvar="FIELDCRYPT_DATABASE_URL", required=True, help="SQLAlchemy URL."
)
@click.option("--table", "tables", multiple=True, help="Only this table; repeatable.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--state",
    type=click.Path(dir_okay=False),
    help="Progress file: a run stopped for any reason resumes from it.",
)
@click.option(
    "--schema-translate",
    "schema_map",
    multiple=True,
    metavar="SCHEMA=NEW",
    callback=_schema_map,
    help="Map a model schema to another (empty: none, as on SQLite); repeatable.",
)
@click.option("--check", is_flag=True, help="Only count rows per index key; exit 1 if stale.")
def reindex_command(
    models: str,
    url: str,
    tables: tuple[str, ...],
    batch_size: int,
    state: str | None,
    schema_map: dict[str | None, str | None],
    check: bool,
) -> None:
    """Recompute blind indexes of MODELS (module:Base) under the newest index key."""
    from sqlalchemy import create_engine

    from sa_fieldcrypt.reindex import BatchReport, blind_index_status, load_metadata, reindex

    metadata = load_metadata(models)
    target = [table for m in metadata for table in m.sorted_tables]
    engine = create_engine(url, hide_parameters=True)
    if schema_map:
        engine = engine.execution_options(schema_translate_map=schema_map)
    try:
        if not check:

            def progress(batch: BatchReport) -> None:
                click.echo(
                    f"{batch.table}: {batch.scanned} rows read, {batch.updated} rewritten, "
                    f"{batch.skipped} changed meanwhile (up to {batch.last_key})",
                    err=True,
                )

            report = reindex(
                engine,
                target,
                tables=tables or None,
                batch_size=batch_size,
                state=state,
                on_batch=progress,
            )
            click.echo(
                f"reindexed {len(report.columns)} column(s): {report.scanned} rows read, "
                f"{report.updated} rewritten, {report.skipped} changed meanwhile"
            )
        statuses = blind_index_status(engine, target, tables=tables or None)
    finally:
        engine.dispose()
    for status in statuses:
        keys = " ".join(f"{kid}={count}" for kid, count in status.by_key.items())
        click.echo(
            f"{status.label}: {keys} retired-keys={status.other_keys} "
            f"no-index={status.no_index} stale={status.stale}"
        )
    if check and any(status.stale for status in statuses):
        raise click.exceptions.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Run the command line (the ``fieldcrypt`` entry point)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fieldcrypt")

"""The ``fieldcrypt`` command line: argument parsing only, over the library's functions.

Errors of the library print as one line on stderr with exit status 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import click
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from sa_fieldcrypt import rotation
from sa_fieldcrypt._version import __version__
from sa_fieldcrypt.batch import _driver_message
from sa_fieldcrypt.errors import ConfigurationError, FieldCryptError, RotationError
from sa_fieldcrypt.keys import KEY_ID_PATTERN, KEY_KINDS, PURPOSES, KeyKind, Purpose, generate_key
from sa_fieldcrypt.settings import load_settings

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


_KIND_HELP = (
    "fernet (an encryption key), aes-gcm-siv (a faster encryption key, printed as "
    "'aes-gcm-siv:<key>') or hmac-sha256 (a blind-index key)."
)


@cli.command()
@click.option(
    "--id",
    "key_id",
    callback=_key_id,
    help="Print an 'ID:key' entry for FIELDCRYPT_KEYS (or FIELDCRYPT_BLIND_INDEX_KEYS).",
)
@click.option(
    "--kind", type=click.Choice(KEY_KINDS), default="fernet", show_default=True, help=_KIND_HELP
)
def keygen(key_id: str | None, kind: KeyKind) -> None:
    """Print a new random key."""
    key = generate_key(kind)
    click.echo(f"{key_id}:{key}" if key_id else key)


@cli.group()
def keys() -> None:
    """Manage the keys held in a Google Cloud Secret Manager secret (the gcp extra).

    Each enabled version of the secret is a key. Rotate in two phases: `keys add`, wait until
    every instance has refreshed (FIELDCRYPT_GCP_CACHE_TTL), then `keys promote`. Blind-index
    keys live in a secret of their own: pass --purpose blind-index.
    """


_secret_option = click.option(
    "--secret",
    metavar="projects/P/secrets/S",
    help="The secret; by default FIELDCRYPT_GCP_SECRET, or with --purpose blind-index "
    "FIELDCRYPT_BLIND_INDEX_GCP_SECRET.",
)
_purpose_option = click.option(
    "--purpose",
    type=click.Choice(PURPOSES),
    default="encryption",
    show_default=True,
    help="Whether the secret holds encryption keys or blind-index keys.",
)


def _secret_options(func: Callable[..., None]) -> Callable[..., None]:
    """--secret and --purpose, as every `keys` command takes them."""
    return _secret_option(_purpose_option(func))


def _gcp_provider(ctx: click.Context, secret: str | None, purpose: Purpose) -> Any:
    # Imported here: `fieldcrypt keygen` must work without the optional Google packages.
    try:
        from sa_fieldcrypt.providers.gcp import GoogleSecretManagerKeyProvider
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc

    # Programs that embed the command line may pass obj={"gcp_client": client}.
    client = ctx.obj.get("gcp_client") if isinstance(ctx.obj, dict) else None
    return GoogleSecretManagerKeyProvider.from_settings(
        secret=secret, client=client, purpose=purpose
    )


def _writes(purpose: Purpose) -> str:
    return "encrypts" if purpose == "encryption" else "computes new index values"


@keys.command("list")
@_secret_options
@click.pass_context
def keys_list(ctx: click.Context, secret: str | None, purpose: Purpose) -> None:
    """Show the secret's versions, their state, and which one writes (encrypts)."""
    provider = _gcp_provider(ctx, secret, purpose)
    header = "ENCRYPTS" if purpose == "encryption" else "WRITES"
    click.echo(f"{'VERSION':<9}{'KEY ID':<9}{'STATE':<11}{'CREATED':<27}{header}")
    for version in provider.versions():
        created = version.created.isoformat(timespec="seconds") if version.created else "-"
        mark = f"yes (alias {provider.primary_alias})" if version.primary else ""
        click.echo(
            f"{version.number:<9}{version.key_id:<9}{version.state:<11}{created:<27}{mark}".rstrip()
        )


@keys.command("add")
@_secret_options
@click.option(
    "--kind",
    type=click.Choice(KEY_KINDS),
    help="The new key's kind; by default fernet, or hmac-sha256 with --purpose blind-index. "
    + _KIND_HELP,
)
@click.pass_context
def keys_add(
    ctx: click.Context, secret: str | None, purpose: Purpose, kind: KeyKind | None
) -> None:
    """Add a new random key as a new version; it is read at once but does not write yet."""
    provider = _gcp_provider(ctx, secret, purpose)
    added = provider.add_key(kind=kind)
    if added.primary:
        click.echo(
            f"Added version {added.number} (key id {added.key_id}), the secret's first key: "
            f"it {_writes(purpose)}."
        )
        return
    ttl = provider.cache_ttl
    reads = "decrypt with" if purpose == "encryption" else "find values under"
    flag = "" if purpose == "encryption" else f" --purpose {purpose}"
    click.echo(
        f"Added version {added.number} (key id {added.key_id}). Every instance can {reads} "
        f"it after its next refresh (within {ttl:g} s); then make it write with:\n"
        f"  fieldcrypt keys promote {added.number}{flag}"
    )


@keys.command("promote")
@click.argument("version", type=click.IntRange(min=1), required=False)
@_secret_options
@click.option(
    "--force",
    is_flag=True,
    help="Promote even if instances may not have refreshed since the version was added.",
)
@click.pass_context
def keys_promote(
    ctx: click.Context, version: int | None, secret: str | None, purpose: Purpose, force: bool
) -> None:
    """Make VERSION (by default the newest enabled one) the key that writes (encrypts)."""
    provider = _gcp_provider(ctx, secret, purpose)
    min_age = 0.0 if force or provider.cache_ttl is None else provider.cache_ttl
    promoted = provider.promote(version, min_age=min_age)
    after = (
        "Values under older keys stay readable while their versions stay enabled."
        if purpose == "encryption"
        else "Index values under older keys are still found while their versions stay "
        "enabled; `fieldcrypt reindex` moves them to this key."
    )
    click.echo(
        f"Version {promoted.number} (key id {promoted.key_id}) now {_writes(purpose)}, on each "
        f"instance from its next refresh. {after}"
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


# -- shared by the data commands: reindex, status, rotate, verify, retire-key -----------

_F = TypeVar("_F", bound=Callable[..., Any])

_db_option = click.option(
    "--db",
    "db_url",
    metavar="URL",
    help="SQLAlchemy database URL. [default: FIELDCRYPT_DATABASE_URL]",
)


_schema_translate_option = click.option(
    "--schema-translate",
    "schema_map",
    multiple=True,
    metavar="SCHEMA=NEW",
    callback=_schema_map,
    help="Map a model schema to another (empty: none, as on SQLite); repeatable.",
)


def _options(*options: Callable[[_F], _F]) -> Callable[[_F], _F]:
    """One decorator for several click options, listed in --help in the order given."""

    def decorate(func: _F) -> _F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


@contextlib.contextmanager
def _database_errors() -> Iterator[None]:
    """Turn SQLAlchemy and driver errors into one clean line."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise RotationError(f"database error ({_driver_message(exc)})") from exc


@contextlib.contextmanager
def _engine(
    db_url: str | None, schema_map: dict[str | None, str | None] | None = None
) -> Iterator[Engine]:
    """The engine of --db (or FIELDCRYPT_DATABASE_URL), disposed of afterwards.

    Database errors inside the block print as one clean line.
    """
    if db_url is None:
        secret = load_settings().database_url
        if secret is None:
            raise ConfigurationError(
                "no database given: pass --db URL or set FIELDCRYPT_DATABASE_URL"
            )
        db_url = secret.get_secret_value()
    try:
        engine = create_engine(db_url, hide_parameters=True)
    except ArgumentError:
        raise ConfigurationError(
            "the database URL (--db or FIELDCRYPT_DATABASE_URL) is not a SQLAlchemy URL"
        ) from None
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the database driver module {exc.name!r} is not installed"
        ) from None
    if schema_map:
        engine = engine.execution_options(schema_translate_map=schema_map)
    try:
        with _database_errors():
            yield engine
    finally:
        engine.dispose()


def _importable_cwd() -> None:
    # As `python -m` does: models of the project in the current directory import.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


@cli.command("reindex")
@click.argument("models")
@_db_option
@click.option("--table", "tables", multiple=True, help="Only this table; repeatable.")
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows per batch and per transaction.",
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False),
    help="Progress file: a run stopped for any reason resumes from it.",
)
@_schema_translate_option
@click.option("--check", is_flag=True, help="Only count rows per index key; exit 1 if stale.")
def reindex_command(
    models: str,
    db_url: str | None,
    tables: tuple[str, ...],
    batch_size: int,
    state: str | None,
    schema_map: dict[str | None, str | None],
    check: bool,
) -> None:
    """Recompute blind indexes of MODELS (module:Base) under the newest index key."""
    from sa_fieldcrypt.reindex import BatchReport, blind_index_status, load_metadata, reindex

    _importable_cwd()
    metadata = load_metadata(models)
    target = [table for m in metadata for table in m.sorted_tables]
    with _engine(db_url, schema_map) as engine:
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
    for status in statuses:
        keys = " ".join(f"{kid}={count}" for kid, count in status.by_key.items())
        click.echo(
            f"{status.label}: {keys} retired-keys={status.other_keys} "
            f"no-index={status.no_index} stale={status.stale}"
        )
    if check and any(status.stale for status in statuses):
        raise click.exceptions.Exit(1)


# -- status, rotate, verify, retire-key -----------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """The database and columns that --db, --models, --table and --column name."""

    db_url: str | None
    models: tuple[str, ...]
    table_name: str | None
    column_names: tuple[str, ...]
    schema_map: dict[str | None, str | None]

    @contextlib.contextmanager
    def open(self) -> Iterator[tuple[Engine, list[rotation.EncryptedColumn]]]:
        """The engine and columns; the engine is disposed of afterwards."""
        if bool(self.models) == bool(self.table_name):
            raise click.UsageError("give either --models MODULE or --table TABLE --column COL")
        if self.table_name and not self.column_names:
            raise click.UsageError("--table needs --column COL")
        if self.column_names and not self.table_name:
            raise click.UsageError("--column goes with --table")
        with _engine(self.db_url, self.schema_map) as engine:
            if self.models:
                _importable_cwd()
                found = rotation.find_columns(*self.models)
            else:
                table_name = self.table_name or ""
                found = [rotation.reflect_column(engine, table_name, c) for c in self.column_names]
            yield engine, found


def _data_options(func: Callable[..., None]) -> Callable[..., None]:
    """Add --db, --models, --table, --column and --schema-translate, as one ``target``."""

    @functools.wraps(func)
    def command(
        *,
        db_url: str | None,
        models: tuple[str, ...],
        table_name: str | None,
        column_names: tuple[str, ...],
        schema_map: dict[str | None, str | None],
        **rest: Any,
    ) -> None:
        func(target=_Target(db_url, models, table_name, column_names, schema_map), **rest)

    return _options(
        _db_option,
        click.option(
            "--models",
            multiple=True,
            metavar="MODULE",
            help="Importable module whose mapped classes' encrypted columns to use (repeatable).",
        ),
        click.option(
            "--table",
            "table_name",
            metavar="[SCHEMA.]TABLE",
            help="Table to reflect instead of models; needs --column.",
        ),
        click.option(
            "--column",
            "column_names",
            multiple=True,
            metavar="COL",
            help="Column of --table that holds tokens (repeatable).",
        ),
        _schema_translate_option,
    )(command)


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return rotation.parse_shard(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


def _run_options(batch_help: str, shard_help: str) -> Callable[[_F], _F]:
    """--batch-size, --fail-fast, --workers and --shard, as rotate and verify take them."""
    return _options(
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            help=batch_help,
        ),
        click.option("--fail-fast", is_flag=True, help="Stop at the first value that fails."),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Processes, each over its own range of primary keys.",
        ),
        click.option("--shard", metavar="I/N", callback=_shard, help=shard_help),
    )


class _Progress(rotation.RunListener):
    """Progress on stderr: a bar on a terminal, plain lines otherwise.

    Args:
        stream: where to write; stderr by default.
        interval: least seconds between two plain progress lines.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0):
        self.stream: TextIO = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.bar: Any = None
        self.total = 0
        self.last_line = float("-inf")

    def started(self, label: str, total: int) -> None:
        self.total = total
        if self.tty:
            self.bar = click.progressbar(length=total, label=label, file=self.stream, show_pos=True)
            self.bar.render_progress()
        else:
            self._line(f"{label}: {total:,} rows to visit")

    def batch(self, label: str, rows: int, report: rotation.JobReport) -> None:
        if self.bar is not None:
            self.bar.update(rows)
        elif time.monotonic() - self.last_line >= self.interval:
            self._progress_line(report)

    def failure(self, failure: rotation.Failure) -> None:
        self._line(("\n" if self.bar is not None else "") + f"FAILED {failure}")

    def finished(self, report: rotation.JobReport) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None
        else:
            self._progress_line(report)

    def _progress_line(self, report: rotation.JobReport) -> None:
        self._line(
            f"{report.label}: {report.scanned:,}/{self.total:,} rows scanned, "
            f"{report.written:,} written, {report.failed:,} failed"
        )

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        click.echo(text, file=self.stream)


def _summary(report: rotation.JobReport, action: str) -> str:
    parts = [f"scanned {report.scanned:,}"]
    if action == "rotate":
        parts.append(f"{'would rotate' if report.dry_run else 'rotated'} {report.written:,}")
        if report.skipped:
            parts.append(f"skipped {report.skipped:,} plaintext (--encrypt-plaintext)")
        parts.append(f"changed concurrently {report.concurrent:,}")
    else:
        parts.append(f"ok {report.unchanged:,}")
        if report.skipped:
            parts.append(f"plaintext {report.skipped:,} (allow_plaintext)")
    parts.append(f"failed {report.failed:,}")
    stopped = "" if report.completed else " (stopped at the first failure)"
    return ", ".join(parts) + stopped


def _finish(run: rotation.RunReport, action: str) -> None:
    for report in run.columns:
        click.echo(f"{report.label}: {_summary(report, action)}")
    if len(run.columns) > 1:
        total = rotation.JobReport("total", dry_run=run.columns[0].dry_run)
        for report in run.columns:
            total.add(report)
        click.echo(f"total: {_summary(total, action)}")
    if run.failed:
        raise RotationError(
            f"{run.failed:,} values could not be decrypted (listed above by column and "
            "primary key); the other values were handled. Restore the missing keys or fix "
            "those rows, then run the command again"
        )


@cli.command()
@_data_options
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def status(target: _Target, as_json: bool) -> None:
    """Count values per key id, legacy tokens, plaintext and NULL.

    Counts each column's stored values by their header (nothing is decrypted) and says, per
    key id, whether any value still needs it.
    """
    with target.open() as (engine, columns):
        report = rotation.status(engine, columns)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.describe())


@cli.command()
@_data_options
@_run_options(
    batch_help="Rows per batch and per transaction.",
    shard_help="Rotate only shard I of N (from 1), so N machines split the tables.",
)
@click.option("--dry-run", is_flag=True, help="Decrypt and re-encrypt, but write nothing.")
@click.option("--encrypt-plaintext", is_flag=True, help="Also encrypt values stored as plaintext.")
def rotate(target: _Target, dry_run: bool, encrypt_plaintext: bool, **run: Any) -> None:
    """Re-encrypt values under the primary key.

    Every value that is not under the primary key (older key ids, legacy bare Fernet tokens,
    and with --encrypt-plaintext plaintext) is encrypted with the primary key. Safe while
    the application runs (a row changed meanwhile is not overwritten) and safe to stop at
    any moment: run it again and it carries on where it was.
    """
    with target.open() as (engine, columns):
        report = rotation.rotate(
            engine,
            columns,
            dry_run=dry_run,
            encrypt_plaintext=encrypt_plaintext,
            listener=_Progress(),
            **run,
        )
    _finish(report, "rotate")


@cli.command()
@_data_options
@_run_options(batch_help="Rows per batch.", shard_help="Verify only shard I of N (from 1).")
def verify(target: _Target, **run: Any) -> None:
    """Decrypt every value, report failures; change nothing."""
    with target.open() as (engine, columns):
        report = rotation.verify(engine, columns, listener=_Progress(), **run)
    _finish(report, "verify")


@cli.command("retire-key")
@click.argument("key_id", callback=_key_id)
@_data_options
def retire_key(key_id: str, target: _Target) -> None:
    """Remove a key that no value needs any more.

    Checks that no value of the given columns is under KEY_ID, and refuses while any is (or
    while legacy tokens remain). With keys from the environment, prints the new
    FIELDCRYPT_KEYS value on stdout, and nothing else there:
    `export FIELDCRYPT_KEYS="$(fieldcrypt retire-key k1 --models app.models)"`.
    """
    with target.open() as (engine, columns):
        rotation.retire_key(engine, columns, key_id)
        checked = ", ".join(c.label for c in columns)
    settings = load_settings()
    if settings.provider != "env":
        click.echo(
            f"No value of {checked} uses key {key_id!r}: remove it from the keys that "
            f"provider {settings.provider!r} serves.",
            err=True,
        )
        return
    value, notes = rotation.env_keys_without(key_id, settings)
    click.echo(
        f"No value of {checked} uses key {key_id!r}. Set FIELDCRYPT_KEYS to the value printed "
        "on stdout, everywhere the application runs.",
        err=True,
    )
    for note in notes:
        click.echo(f"  {note}", err=True)
    click.echo(value)


def main(argv: list[str] | None = None) -> None:
    """Run the command line (the ``fieldcrypt`` entry point)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fieldcrypt")


if __name__ == "__main__":
    # `python -m sa_fieldcrypt.cli`, where the console script is not on PATH.
    main()

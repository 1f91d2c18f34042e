"""The ``fieldcrypt`` command line: argument parsing and presentation over the library.

Every data command is a thin wrapper over a function of :mod:`sa_fieldcrypt.jobs`. Exit
status: 0 ready or done; 1 failed or not ready (errors of the library print as one line on
stderr; ``--debug`` shows the traceback instead); 2 a usage error.
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

from sa_fieldcrypt._version import __version__
from sa_fieldcrypt.errors import ConfigurationError, FieldCryptError, RotationError
from sa_fieldcrypt.index_planner import DEFAULT_MIN_COINCIDENCE, IndexPlan, plan_index_sizes
from sa_fieldcrypt.jobs.engine import (
    DEFAULT_BATCH_SIZE,
    SHARD_INDEX_VARIABLE,
    parse_shard,
    shard_from_env,
)
from sa_fieldcrypt.jobs.reindex import reindex
from sa_fieldcrypt.jobs.report import (
    Failure,
    JobReport,
    RunListener,
    RunReport,
    plural,
    word_for,
)
from sa_fieldcrypt.jobs.rotation import rotate as rotate_columns
from sa_fieldcrypt.jobs.rotation import verify as verify_columns
from sa_fieldcrypt.jobs.sql import driver_message
from sa_fieldcrypt.jobs.state import ResumeState
from sa_fieldcrypt.jobs.status import StatusReport, env_key_changes, retire_keys
from sa_fieldcrypt.jobs.status import status as status_of
from sa_fieldcrypt.jobs.targets import (
    EncryptedColumn,
    IndexedColumn,
    SubstringColumn,
    find_columns,
    find_indexes,
    find_substring_indexes,
    reflect_column,
)
from sa_fieldcrypt.jobs.throttle import Throttle, replica_lag
from sa_fieldcrypt.keys import (
    KEY_ID_PATTERN,
    KEY_KINDS,
    PURPOSES,
    KeyKind,
    Purpose,
    generate_key,
    parse_key,
    purpose_of,
)
from sa_fieldcrypt.providers.env import BLIND_INDEX_KEY_ID, LEGACY_KEY_ID, keys_setting
from sa_fieldcrypt.settings import load_settings

__all__ = ["cli", "main"]

_F = TypeVar("_F", bound=Callable[..., Any])


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


def _key_ids(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for key_id in value:
        _key_id(ctx, param, key_id)
    return value


def _wrap_option(help_text: str) -> Callable[[_F], _F]:
    return click.option(
        "--wrap", metavar="projects/P/locations/L/keyRings/R/cryptoKeys/K", help=help_text
    )


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
@_wrap_option(
    "Print the new key only wrapped by this Cloud KMS key, as the entry "
    "'ID:wrapped:KIND:KMS_KEY:CIPHERTEXT' (needs --id, which the wrapping binds; the gcp "
    "extra). The key itself is never printed."
)
@click.pass_context
def keygen(ctx: click.Context, key_id: str | None, kind: KeyKind, wrap: str | None) -> None:
    """Print a new random key."""
    key = generate_key(kind)
    if wrap is None:
        click.echo(f"{key_id}:{key}" if key_id else key)
        return
    if key_id is None:
        raise click.UsageError(
            "--wrap needs --id: the key id is bound into the wrapping, so it is chosen now"
        )
    parsed = parse_key(key, purpose=purpose_of(kind), key_id=key_id)
    click.echo(_kms_wrapper(ctx).wrap(parsed, wrap).entry)


@cli.group()
def keys() -> None:
    """Manage the keys held in a Google Cloud Secret Manager secret (the gcp extra).

    Each enabled version of the secret is a key. Rotate in two phases: `keys add`, wait until
    every instance has refreshed (FIELDCRYPT_GCP_CACHE_TTL), then `keys promote`. Blind-index
    keys live in a secret of their own: pass --purpose blind-index. Keys wrapped by Cloud KMS
    (`keys add --wrap`) are re-wrapped after a KMS key rotation with `keys rewrap`, which also
    re-wraps FIELDCRYPT_KEYS (--from-env).
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

    # Programs that embed the command line may pass obj={"gcp_client": ..., "kms_client": ...}.
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    return GoogleSecretManagerKeyProvider.from_settings(
        secret=secret,
        client=obj.get("gcp_client"),
        purpose=purpose,
        kms_client=obj.get("kms_client"),
    )


def _kms_wrapper(ctx: click.Context) -> Any:
    # Imported here: `fieldcrypt keygen` without --wrap must work without the Google packages.
    try:
        from sa_fieldcrypt.providers.kms import KmsKeyWrapper
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc

    # Programs that embed the command line may pass obj={"kms_client": client}.
    client = ctx.obj.get("kms_client") if isinstance(ctx.obj, dict) else None
    return KmsKeyWrapper.from_settings(client=client)


def _writes(purpose: Purpose) -> str:
    return "encrypts" if purpose == "encryption" else "computes new index values"


@keys.command("list")
@_secret_options
@click.pass_context
def keys_list(ctx: click.Context, secret: str | None, purpose: Purpose) -> None:
    """Show the secret's versions, their state, which one writes (encrypts), which are skipped.

    Exits 1 when instances cannot load keys from the secret as it is.
    """
    provider = _gcp_provider(ctx, secret, purpose)
    described = provider.describe()
    header = "ENCRYPTS" if purpose == "encryption" else "WRITES"
    click.echo(f"{'VERSION':<9}{'KEY ID':<9}{'STATE':<11}{'CREATED':<27}{header}")
    for version in described.versions:
        created = version.created.isoformat(timespec="seconds") if version.created else "-"
        mark = ""
        if version.primary:
            alias = provider.primary_alias
            named = described.alias == version.number
            mark = f"yes (alias {alias})" if named else "yes (the only enabled version)"
        elif version.skipped:
            mark = "no: skipped, see below"
        click.echo(
            f"{version.number:<9}{version.key_id:<9}{version.state:<11}{created:<27}{mark}".rstrip()
        )
    wrapped: dict[str, list[str]] = {}
    for version in described.versions:
        if version.wrapped_by:
            wrapped.setdefault(version.wrapped_by, []).append(str(version.number))
    for kms_key, numbers in wrapped.items():
        click.echo(f"Wrapped by Cloud KMS key {kms_key}: version {', '.join(numbers)}.")
    for version in described.versions:
        if version.skipped:
            click.echo(f"Version {version.number} is skipped: {version.skipped}")
    if not described.checked:
        click.echo(
            "The payloads were not checked: reading them needs secretmanager.versions.access "
            "(roles/secretmanager.secretAccessor), as the application has."
        )
    for number, reason in described.unchecked.items():
        click.echo(f"Version {number} is not checked: {reason}.")
    if described.problem:
        click.echo(f"Error: instances cannot load these keys: {described.problem}", err=True)
        ctx.exit(1)


@keys.command("add")
@_secret_options
@click.option(
    "--kind",
    type=click.Choice(KEY_KINDS),
    help="The new key's kind; by default fernet, or hmac-sha256 with --purpose blind-index. "
    + _KIND_HELP,
)
@_wrap_option(
    "Store the key wrapped by this Cloud KMS key instead of in plaintext: whoever reads the "
    "secret then also needs roles/cloudkms.cryptoKeyDecrypter on it to use the key."
)
@click.pass_context
def keys_add(
    ctx: click.Context,
    secret: str | None,
    purpose: Purpose,
    kind: KeyKind | None,
    wrap: str | None,
) -> None:
    """Add a new random key as a new version; it is read at once but does not write yet."""
    provider = _gcp_provider(ctx, secret, purpose)
    added = provider.add_key(kind=kind, wrap=wrap)
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
        f"Added version {added.number} (key id {added.key_id}). It is not primary: it does not "
        f"{'encrypt' if purpose == 'encryption' else 'write'} until it is promoted. Every "
        f"instance can {reads} it after its next refresh (within {ttl:g} s); then make it "
        f"write with:\n  fieldcrypt keys promote {added.number}{flag}"
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


@keys.command("rewrap")
@_secret_options
@click.option(
    "--from-env",
    is_flag=True,
    help="Re-wrap the entries of FIELDCRYPT_KEYS (FIELDCRYPT_BLIND_INDEX_KEYS with --purpose "
    "blind-index) instead, and print the new value; refused while a key there is held in "
    "plaintext (which the value would print), unless --wrap wraps it too.",
)
@_wrap_option(
    "Also wrap the keys held in plaintext, under this Cloud KMS key: how a plaintext keyring "
    "becomes a wrapped one, with the same key ids."
)
@click.pass_context
def keys_rewrap(
    ctx: click.Context, secret: str | None, purpose: Purpose, from_env: bool, wrap: str | None
) -> None:
    """Re-wrap every wrapped key under its Cloud KMS key's current primary version.

    For after the KMS key rotates. Key ids and keys stay the same, so no stored value is
    touched: in Secret Manager each key moves to a new version that carries its key id, the
    alias follows the primary's, and the old versions are disabled. Run it again safely.
    """
    if from_env:
        if secret is not None:
            raise click.UsageError("--from-env and --secret name different places; give one")
        _rewrap_env(ctx, purpose, wrap)
        return
    provider = _gcp_provider(ctx, secret, purpose)
    done = provider.rewrap(wrap=wrap)
    for moved in done.moved:
        click.echo(
            f"Key {moved.key_id}: moved from version {moved.old} (now disabled) to version "
            f"{moved.new}, wrapped under the KMS key's primary version."
        )
    if done.unchanged:
        ids = ", ".join(done.unchanged)
        click.echo(f"Already under the primary version, left as they are: {ids}.")
    for number, reason in done.skipped.items():
        click.echo(f"Version {number} could not be read, and was left as it is: {reason}")
    if not done.moved and not done.unchanged:
        click.echo("No wrapped key in the secret: nothing to re-wrap.")
    if any(moved.plaintext for moved in done.moved):
        click.echo(
            "Disabled versions keep their payloads: once every instance has refreshed, destroy "
            "the versions that held keys in plaintext (gcloud secrets versions destroy)."
        )


def _rewrap_env(ctx: click.Context, purpose: Purpose, wrap: str | None) -> None:
    try:
        from sa_fieldcrypt.providers.kms import rewrap_keyring
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = load_settings()
    setting, value = keys_setting(settings, purpose)
    if value is None:
        alone = ""
        if purpose == "encryption" and settings.legacy_key is not None:
            alone = (
                " (FIELD_ENCRYPTION_KEY cannot hold a wrapped key: to wrap it, move it into "
                f"FIELDCRYPT_KEYS as '{LEGACY_KEY_ID}:<key>', unset it, and run this with --wrap)"
            )
        raise ConfigurationError(f"{setting} is not set: there is nothing to re-wrap{alone}")
    # The single blind-index key is read as the entry it stands for, and printed back
    # without its fixed id, as the setting holds it.
    entry_id = f"{BLIND_INDEX_KEY_ID}:" if setting == "FIELDCRYPT_BLIND_INDEX_KEY" else ""
    done = rewrap_keyring(
        value,
        _kms_wrapper(ctx),
        purpose=purpose,
        source=setting,
        wrap=wrap,
    )
    if done.plain:
        # The new value holds every entry: printed, it would put these keys in a log.
        raise click.ClickException(
            f"{setting} holds keys in plaintext ({', '.join(done.plain)}), which the new value "
            "would print; wrap them too (--wrap KMS_KEY), or re-wrap where no key is plaintext"
        )
    click.echo(done.text.removeprefix(entry_id))
    summary = f"{setting}: re-wrapped {', '.join(done.rewrapped) or 'none'}"
    if done.unchanged:
        summary += f"; already under the primary version: {', '.join(done.unchanged)}"
    click.echo(
        f"{summary}. Put the value above in {setting} everywhere the application runs.", err=True
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


# -- the data commands: status, rotate, verify, reindex, retire-key ---------------------------
#
# One vocabulary: every data command takes the same target options, every job command the
# same run options, every report prints as text or --json, and the exit status gates a
# deploy: 0 ready or done, 1 failed or not ready, 2 a usage error.


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
        raise RotationError(f"database error ({driver_message(exc)})") from exc


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
            raise click.UsageError(
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
    except ValueError:
        # The message may quote the URL, password included.
        raise ConfigurationError(
            "the database URL (--db or FIELDCRYPT_DATABASE_URL) is malformed (a port that is "
            "not a number?)"
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


@dataclass(frozen=True)
class _Target:
    """The database and columns that --db, --models, --table and --column name."""

    db_url: str | None
    models: tuple[str, ...]
    table_name: str | None
    column_names: tuple[str, ...]
    schema_map: dict[str | None, str | None]

    def check(self) -> None:
        """Refuse a target that names nothing, or two things."""
        if bool(self.models) == bool(self.table_name):
            raise click.UsageError("give either --models MODULE or --table TABLE --column COL")
        if self.table_name and not self.column_names:
            raise click.UsageError("--table needs --column COL")
        if self.column_names and not self.table_name:
            raise click.UsageError("--column goes with --table")

    @contextlib.contextmanager
    def open(
        self, *, indexes: bool = False, columns: bool = True
    ) -> Iterator[tuple[Engine, list[EncryptedColumn], list[IndexedColumn | SubstringColumn]]]:
        """The engine, the encrypted columns and (from models) the blind and substring indexes."""
        self.check()
        if indexes and not columns and self.table_name:
            raise click.UsageError(
                "reindex needs --models: a blind index's normalizer and name are defined in "
                "the models, not in the database"
            )
        with _engine(self.db_url, self.schema_map) as engine:
            found: list[EncryptedColumn] = []
            indexed: list[IndexedColumn | SubstringColumn] = []
            if self.models:
                _importable_cwd()
                if columns:
                    found = find_columns(*self.models)
                if indexes:
                    substrings = find_substring_indexes(*self.models)
                    required = not columns and not substrings
                    indexed = [*find_indexes(*self.models, required=required), *substrings]
            else:
                table_name = self.table_name or ""
                found = [reflect_column(engine, table_name, c) for c in self.column_names]
            yield engine, found, indexed


def _target_options(func: Callable[..., None]) -> Callable[..., None]:
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
        click.option(
            "--db",
            "db_url",
            metavar="URL",
            help="SQLAlchemy database URL. [default: FIELDCRYPT_DATABASE_URL]",
        ),
        click.option(
            "--models",
            multiple=True,
            metavar="MODULE[:NAME]",
            help="Models to use: a module (its mapped classes and tables), or module:Base, "
            "module:metadata or module:Model; repeatable.",
        ),
        click.option(
            "--table",
            "table_name",
            metavar="[SCHEMA.]TABLE",
            help="Table to reflect instead of models; needs --column. Values are bound to "
            "[SCHEMA.]TABLE.COL as named here: name the table as the models declare it.",
        ),
        click.option(
            "--column",
            "column_names",
            multiple=True,
            metavar="COL",
            help="Column of --table that holds tokens (repeatable).",
        ),
        click.option(
            "--schema-translate",
            "schema_map",
            multiple=True,
            metavar="SCHEMA=NEW",
            callback=_schema_map,
            help="Map a model schema to another (empty: none, as on SQLite); repeatable.",
        ),
    )(command)


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_shard(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


_json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")


def _run_options(func: Callable[..., None]) -> Callable[..., None]:
    """The options every job command takes, passed on as ``run``."""

    @functools.wraps(func)
    def command(
        *,
        batch_size: int,
        fail_fast: bool,
        workers: int,
        transform_process: bool | None,
        shard: tuple[int, int] | None,
        shards: int | None,
        dry_run: bool,
        state: str | None,
        max_rate: float | None,
        max_replica_lag: float | None,
        replicas: tuple[str, ...],
        pause_file: str | None,
        **rest: Any,
    ) -> None:
        if replicas and max_replica_lag is None:
            raise click.UsageError("--replica needs --max-replica-lag")
        if shards is not None:
            if shard is not None:
                raise click.UsageError("--shard and --shards both choose the shard; give one")
            shard = shard_from_env(shards)
        throttle = None
        if max_rate is not None or max_replica_lag is not None or pause_file is not None:
            throttle = Throttle(
                max_rate=max_rate,
                max_replica_lag=max_replica_lag,
                replicas=[replica_lag(url) for url in replicas],
                pause_file=pause_file,
            )
        run = {
            "batch_size": batch_size,
            "fail_fast": fail_fast,
            "workers": workers,
            "transform_process": transform_process,
            "shard": shard,
            "dry_run": dry_run,
            "state": None if state is None else ResumeState(state),
            "throttle": throttle,
        }
        try:
            func(run=run, **rest)
        finally:
            if throttle is not None:
                throttle.close()

    return _options(
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=DEFAULT_BATCH_SIZE,
            show_default=True,
            help="Rows per batch and per transaction.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Processes, each over its own range of primary keys.",
        ),
        click.option(
            "--transform-process/--no-transform-process",
            default=None,
            help="With one worker on a database server, rotate and reindex transform in a "
            "process of their own while this one reads and writes (default: from 50,000 rows "
            "to visit, where it can be used; with the flag, a run where it cannot be used "
            "fails).",
        ),
        click.option(
            "--shard",
            metavar="I/N",
            callback=_shard,
            help="Only shard I of N (from 1), so N machines split the tables.",
        ),
        click.option(
            "--shards",
            metavar="N",
            type=click.IntRange(min=1),
            help=f"Only one shard of N, the one ${SHARD_INDEX_VARIABLE} names (from 0, as "
            "in each pod of a Kubernetes Indexed Job): index K is --shard K+1/N.",
        ),
        click.option("--dry-run", is_flag=True, help="Do all the work but write nothing."),
        click.option(
            "--state",
            type=click.Path(dir_okay=False),
            help="Progress file: a run stopped for any reason resumes from it.",
        ),
        click.option("--fail-fast", is_flag=True, help="Stop at the first row that fails."),
        click.option(
            "--max-rate",
            metavar="ROWS_PER_S",
            type=click.FloatRange(min=0, min_open=True),
            help="Write at most this many rows per second (read, for verify), split evenly "
            "among the workers.",
        ),
        click.option(
            "--max-replica-lag",
            metavar="SECONDS",
            type=click.FloatRange(min=0),
            help="Pause while a replica lags more than this (or its lag is unknown); "
            "watches --replica, or else a PostgreSQL primary's pg_stat_replication.",
        ),
        click.option(
            "--replica",
            "replicas",
            metavar="URL",
            multiple=True,
            help="A replica whose lag --max-replica-lag watches (repeatable).",
        ),
        click.option(
            "--pause-file",
            type=click.Path(dir_okay=False),
            help="Pause while this file exists; remove it to resume.",
        ),
        _json_option,
    )(command)


class _Progress(RunListener):
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
            # The bar shows position and ETA itself; the rate and the time held back follow.
            self.bar = click.progressbar(
                length=total,
                label=label,
                file=self.stream,
                show_pos=True,
                item_show_func=self._pace,
            )
            self.bar.render_progress()
        else:
            self._line(f"{label}: {plural(total, 'row')} to visit")

    def batch(self, label: str, rows: int, report: JobReport) -> None:
        if self.bar is not None:
            self.bar.update(rows, report)
        elif time.monotonic() - self.last_line >= self.interval:
            self._progress_line(report)

    def failure(self, failure: Failure) -> None:
        self._line(("\n" if self.bar is not None else "") + f"FAILED {failure}")

    def paused(self, label: str, reason: str) -> None:
        self._line(("\n" if self.bar is not None else "") + f"{label}: paused: {reason}")

    def resumed(self, label: str, seconds: float) -> None:
        self._line(f"{label}: resumed after {_duration(seconds)} paused")

    def finished(self, report: JobReport) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None
        else:
            self._progress_line(report)

    @staticmethod
    def _pace(report: JobReport | None) -> str | None:
        """What the bar shows after its ETA: the rate, and the time a throttle held it."""
        if report is None or report.elapsed <= 0:
            return None
        return ", ".join([f"{report.rate:,.0f} rows/s", *_held(report)])

    def _progress_line(self, report: JobReport) -> None:
        parts = [
            f"{report.label}: {report.scanned:,}/{plural(self.total, 'row')} scanned",
            f"{report.written:,} written",
            f"{report.failed:,} failed",
        ]
        if report.elapsed > 0:
            parts.append(f"{report.rate:,.0f} rows/s")
            left = self.total - report.scanned
            if left > 0 and report.rate > 0:
                parts.append(f"ETA {_duration(left / report.rate)}")
        parts.extend(_held(report))
        self._line(", ".join(parts))

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        click.echo(text, file=self.stream)


def _held(report: JobReport) -> list[str]:
    """How long a throttle held the job back, and how much of it was paused."""
    if report.throttled_seconds < 0.05:
        return []
    held = f"throttled {_duration(report.throttled_seconds)}"
    if report.paused_seconds >= 0.05:
        held += f" (paused {_duration(report.paused_seconds)})"
    return [held]


def _duration(seconds: float) -> str:
    """Seconds as people read them: ``4.2 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


#: How each job command names its counters: (written, unchanged, skipped).
_WORDS = {
    "rotate": ("rotated", "unchanged", "skipped plaintext (--encrypt-plaintext)"),
    "verify": ("", "ok", "not checked (plaintext under allow_plaintext, or no value to check)"),
    "reindex": ("reindexed", "up to date", "skipped"),
}


def _summary(report: JobReport, action: str) -> str:
    written, unchanged, skipped = _WORDS[action]
    parts = [f"scanned {report.scanned:,}"]
    if written:
        parts.append(f"{'would be ' if report.dry_run else ''}{written} {report.written:,}")
    if report.unchanged or action == "verify":
        parts.append(f"{unchanged} {report.unchanged:,}")
    if report.skipped:
        parts.append(f"{skipped} {report.skipped:,}")
    if written:
        parts.append(f"changed concurrently {report.concurrent:,}")
    if report.orphans:
        deleted = "to delete" if report.dry_run else "deleted"
        parts.append(f"orphan side rows {deleted} {report.orphans:,}")
    parts.append(f"failed {report.failed:,}")
    notes = " (resumed from the state file)" if report.resumed else ""
    notes += "" if report.completed else " (stopped at the first failure)"
    return ", ".join(parts) + notes


def _failure_lines(report: JobReport) -> list[str]:
    """The failures a report kept, one line each by primary key, and how many it did not."""
    lines = [f"  failed {failure.key_text}: {failure.reason}" for failure in report.failures]
    left = report.failed - len(report.failures)
    if left > 0:
        lines.append(f"  and {plural(left, 'more row')} (each one was printed on stderr)")
    return lines


def _finish(
    run: RunReport, action: str, as_json: bool, shard: tuple[int, int] | None = None
) -> None:
    """Print a job command's report; exit 1 unless every row was handled.

    The JSON names the run's shard (``"2/4"``, or null), so the reports of N shards' logs
    can be told apart and added up.
    """
    if as_json:
        data = {"shard": None if shard is None else f"{shard[0]}/{shard[1]}", **run.to_dict()}
        click.echo(json.dumps(data, indent=2))
    else:
        for report in run.jobs:
            click.echo(f"{report.label}: {_summary(report, action)}")
            for line in _failure_lines(report):
                click.echo(line)
        if len(run.jobs) > 1:
            click.echo(f"total: {_summary(run.total(), action)}")
    if run.failed:
        kept = [f for report in run.jobs for f in report.failures]
        collided = sum(1 for f in kept if f.collides_with)
        fixes = []
        if collided:
            fixes.append(
                f"{plural(collided, 'row')} {word_for(collided, 'holds', 'hold')} the same "
                "normalized value as another row under a unique constraint: merge or change "
                "those rows"
            )
        if collided < len(kept) or not kept:
            others = "the other rows" if collided else "those rows"
            fixes.append(f"restore the missing keys or fix {others}")
        advice = "; ".join(fixes)
        raise RotationError(
            f"{plural(run.failed, 'row')} could not be handled (listed above by primary key); "
            f"the other rows were. {advice[:1].upper()}{advice[1:]}, then run the command again"
        )
    if not run.ok:
        raise RotationError("the run stopped before every row was visited; run it again")


def _gate(report: StatusReport, as_json: bool, ready: bool) -> None:
    """Print a status report; exit 1 unless ``ready``."""
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.describe())
    if not ready:
        raise click.exceptions.Exit(1)


_resolve_legacy_option = click.option(
    "--resolve-legacy",
    is_flag=True,
    help="Try the keys on every legacy token (bare Fernet tokens name no key) and count which "
    "key opens how many; this decrypts them.",
)


@cli.command()
@_target_options
@_resolve_legacy_option
@_json_option
def status(target: _Target, resolve_legacy: bool, as_json: bool) -> None:
    """Count values per key id, unbound and legacy values, plaintext, NULL; exit 1 unless ready.

    Counts each column's stored values by their header, and each blind-index column's values
    by index key (nothing is decrypted), and says, per key id, whether any value still needs
    it. A legacy token names no key, so any key of its column may be needed by it, until
    --resolve-legacy tries them. Values of a bound column that are not bound to it yet are
    counted as unbound: rotate binds them, whatever they are, so check them first. Not ready
    (exit 1): a value names a key id the keyring lacks, has a malformed header, no key opens a
    legacy token (as --resolve-legacy finds), a strict column holds unbound values, a
    context=False column holds bound ones, or an index value is under an index key that is no
    longer active.
    """
    with target.open(indexes=True) as (engine, columns, indexes):
        report = status_of(engine, columns, indexes, resolve_legacy=resolve_legacy)
    _gate(report, as_json, report.ready)


@cli.command()
@_target_options
@_run_options
@click.option("--encrypt-plaintext", is_flag=True, help="Also encrypt values stored as plaintext.")
def rotate(target: _Target, run: dict[str, Any], as_json: bool, encrypt_plaintext: bool) -> None:
    """Re-encrypt values under the primary key, bound to their column.

    Every value that is not under the primary key (older key ids, legacy bare Fernet tokens,
    and with --encrypt-plaintext plaintext), and in a bound column every unbound value, is
    encrypted with the primary key, bound to the column. In a strict column
    (allow_unbound=False, FIELDCRYPT_ALLOW_UNBOUND=false) an unbound value is a failure and
    is left as it is: rotation never binds a value the column refuses. Safe while the
    application runs (a row changed meanwhile is not overwritten) and safe to stop at any
    moment: run it again and it carries on where it was.
    """
    with target.open() as (engine, columns, _):
        report = rotate_columns(
            engine, columns, encrypt_plaintext=encrypt_plaintext, listener=_Progress(), **run
        )
    _finish(report, "rotate", as_json, run["shard"])


@cli.command()
@_target_options
@_run_options
def verify(target: _Target, run: dict[str, Any], as_json: bool) -> None:
    """Decrypt every value, report failures; change nothing.

    With --models, each row's blind indexes are checked against its decrypted values too: a
    value copied in from another row fails there; and so are its substring-index side rows.
    """
    with target.open(indexes=True) as (engine, columns, indexes):
        report = verify_columns(engine, columns, indexes=indexes, listener=_Progress(), **run)
    _finish(report, "verify", as_json, run["shard"])


@cli.command("reindex")
@_target_options
@_run_options
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; exit 1 while any row lacks its index or is not under the writing key, "
    "or side rows of deleted rows remain.",
)
def reindex_command(target: _Target, run: dict[str, Any], as_json: bool, check: bool) -> None:
    """Recompute blind indexes and substring-index side rows under the writing index key.

    Once a substring index's owners have all been visited, the side rows of owner rows that
    are gone (deleted where foreign keys are not enforced) are deleted; a --shard leaves
    them to a run without one, and --dry-run counts them. With --check, nothing is written:
    each index column is counted by index key, the rows with a value but no index value are
    decrypted to tell the values the normalizer does not index from missing indexes, every
    owner of a substring index is decrypted to find stale or missing side rows, side rows
    whose owner is gone are counted, and the command exits 1 until every row is indexed
    under the writing key and no such side rows remain.
    """
    with target.open(indexes=True, columns=False) as (engine, _, indexes):
        if not check:
            report = reindex(engine, indexes, listener=_Progress(), **run)
            if report.failed or not report.ok or as_json:
                _finish(report, "reindex", as_json, run["shard"])
                return
            for job in report.jobs:
                click.echo(f"{job.label}: {_summary(job, 'reindex')}")
        found = status_of(engine, (), indexes, count_missing=check)
    if check:
        _gate(found, as_json, found.reindexed)
    else:
        click.echo(found.describe())


@cli.command("retire-key")
@click.argument("key_ids", metavar="KEY_ID...", nargs=-1, required=True, callback=_key_ids)
@_target_options
@click.option(
    "--purpose",
    type=click.Choice(PURPOSES),
    help="Whose keys they are; by default that of the keyring holding them.",
)
@_resolve_legacy_option
@_json_option
def retire_key(
    key_ids: tuple[str, ...],
    target: _Target,
    purpose: Purpose | None,
    resolve_legacy: bool,
    as_json: bool,
) -> None:
    """Check that no stored value needs the keys, and say how to remove them.

    The keys are encryption keys (checked against every encrypted column) or blind-index keys
    (checked against every blind-index column of --models), one purpose per command. Refuses
    while any value is under a KEY_ID (or, for encryption keys, while legacy tokens remain;
    with --resolve-legacy, while a KEY_ID opens one).
    With keys from the environment, says which entries to remove from which variable and
    which stay, by key id: it never prints a key, so its output is safe in any log.
    """
    with target.open(indexes=True) as (engine, columns, indexes):
        remaining = retire_keys(
            engine,
            columns,
            key_ids,
            indexes=indexes,
            purpose=purpose,
            resolve_legacy=resolve_legacy,
        )
        checked = [c.label for c in (indexes if remaining.purpose == "blind-index" else columns)]
    settings = load_settings()
    provider = (
        settings.blind_index_provider if remaining.purpose == "blind-index" else settings.provider
    )
    change = None
    if provider == "env":
        change = env_key_changes(key_ids, settings, purpose=remaining.purpose)
        steps = change.steps()
    else:
        them = word_for(len(key_ids), "it", "them")
        steps = [f"remove {them} from the keys that provider {provider!r} serves"]
    if as_json:
        report: dict[str, Any] = {
            "retired": list(key_ids),
            "purpose": remaining.purpose,
            "checked": checked,
            "provider": provider,
            "remaining": list(remaining.ids),
            "change": None if change is None else change.to_dict(),
            "steps": steps,
        }
        click.echo(json.dumps(report, indent=2))
        return
    ids = f"{word_for(len(key_ids), 'key')} {', '.join(repr(k) for k in key_ids)}"
    click.echo(f"No value of {', '.join(checked)} uses {ids}. Everywhere the application runs:")
    for step in steps:
        click.echo(f"  {step}")


def _index_counts(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in value:
        name, equals, count = entry.partition("=")
        name = name.strip()
        if not equals or not name:
            raise click.BadParameter(f"{entry!r} is not NAME=DISTINCT, for example email=90000")
        if name in counts:
            raise click.BadParameter(f"index {name!r} is given twice")
        try:
            counts[name] = int(count.replace(",", ""))
        except ValueError:
            raise click.BadParameter(
                f"{entry!r}: DISTINCT is a whole number of distinct values"
            ) from None
    return counts


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _describe_plan(plan: IndexPlan) -> list[str]:
    """The plan as a table, then the column's coincidence count and what falls outside."""
    width = max(len("INDEX"), *(len(index.name) for index in plan))
    header = f"{'INDEX':<{width}}  {'DISTINCT':>11}  BITS  RANGE    {'ROWS/VALUE':>11}  "
    lines = [f"{header}{'CANDIDATES':>11}  {'FALSE POS.':>11}"]
    for index in plan:
        sizes = f"{index.min_bits}-{index.max_bits}"
        lines.append(
            f"{index.name:<{width}}  {index.distinct:>11,}  {index.bits:>4}  {sizes:<7}  "
            f"{_figure(index.coincidence):>11}  {_figure(index.candidates):>11}  "
            f"{_figure(index.false_positives):>11}"
        )
    lines.append(
        f"{plan.rows:,} rows: each combination of index values is shared by about "
        f"{_figure(plan.coincidence)} rows (at least {plan.min_coincidence:g} wanted)."
    )
    unbounded = [index.name for index in plan if not index.bounded]
    if unbounded:
        # The budget is log2(rows / min_coincidence): negative when fewer rows than wanted
        # per combination are in the table, which no size (nor fewer indexes) can mend.
        why = (
            f"{plan.rows:,} rows keep {plan.budget:.1f} bits secret across the column's "
            "indexes, and fewer indexes would leave each more of them."
            if plan.budget > 0
            else f"a table of {plan.rows:,} rows cannot give each combination the "
            f"{plan.min_coincidence:g} rows wanted, at any size."
        )
        lines.append(
            f"Lookups through {', '.join(unbounded)} decrypt more than "
            f"{_figure(plan.max_false_positives)} non-matching rows: {why}"
        )
    return lines


@cli.command("plan-indexes")
@click.option(
    "--rows", type=int, required=True, metavar="N", help="The number of rows the table holds now."
)
@click.option(
    "--index",
    "counts",
    metavar="NAME=DISTINCT",
    multiple=True,
    required=True,
    callback=_index_counts,
    help="An index of the column and its number of distinct normalized values (repeatable).",
)
@click.option(
    "--min-coincidence",
    type=float,
    default=DEFAULT_MIN_COINCIDENCE,
    show_default=True,
    help="The fewest rows that should share each combination of the column's index values.",
)
@click.option(
    "--max-false-positives",
    type=float,
    help="The most non-matching rows a lookup should decrypt; by default sqrt(rows).",
)
@_json_option
def plan_indexes(
    rows: int,
    counts: dict[str, int],
    min_coincidence: float,
    max_false_positives: float | None,
    as_json: bool,
) -> None:
    """Recommend output sizes in bits for the truncated blind indexes of one column.

    Every combination of the column's index values stays shared by at least
    --min-coincidence rows (CipherSweet's rule), and the bits that allows go where lookups
    decrypt the most non-matching rows. RANGE is the sizes an index may take, the others as
    recommended: fewer bits leak less and decrypt more. Exits 1 when the table is too small
    for its indexes even at the fewest bits.
    """
    plan = plan_index_sizes(
        rows, counts, min_coincidence=min_coincidence, max_false_positives=max_false_positives
    )
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
    else:
        for line in _describe_plan(plan):
            click.echo(line)
    if not plan.meets_coincidence:
        raise ConfigurationError(
            f"{rows:,} rows are too few for these indexes: even at the fewest bits each "
            f"combination of index values is shared by about {_figure(plan.coincidence)} rows, "
            f"under {plan.min_coincidence:g}; index fewer distinct values or fewer indexes"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the command line (the ``fieldcrypt`` entry point)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fieldcrypt")


if __name__ == "__main__":
    # `python -m sa_fieldcrypt.cli`, where the console script is not on PATH.
    main()

"""Counters of what decryption meets in live traffic, and of how fresh the keys are.

Before retiring a key, an operator wants two answers: does any row still need it
(``fieldcrypt status`` counts the database), and is live traffic still reading values under
it (these counters). They are process-wide and only ever grow, like Prometheus counters:

    from sa_fieldcrypt import metrics

    before = metrics.snapshot()
    ...                                   # serve traffic
    after = metrics.snapshot()
    after.decrypts.get("k1", 0) - before.decrypts.get("k1", 0)   # reads under k1 meanwhile

Beside them, the key caches report how old their keys are (a gauge, by key source), how
often loading keys failed, and which Secret Manager versions were skipped because they could
not be read as a key. :func:`prometheus_text` renders it all in the Prometheus text format.
Everything here is key ids, key sources, version names and numbers: nothing is secret.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "FieldCryptMetrics",
    "count_key_load_failure",
    "count_skipped_version",
    "prometheus_text",
    "snapshot",
    "watch_key_cache",
]

# itertools.count advances atomically in C: an exact counter for ~10 ns, where a lock would
# cost ~15x that on every decryption. Its value is read back from its repr, "count(N)".

_lock = threading.Lock()
_decrypts: dict[str, itertools.count[int]] = {}
_unknown: dict[str, itertools.count[int]] = {}
_legacy: dict[str, itertools.count[int]] = {}
_failures = itertools.count()
_plaintext: dict[str, itertools.count[int]] = {}
_load_failures: dict[str, itertools.count[int]] = {}
_skipped: dict[str, itertools.count[int]] = {}
# Key source -> the age readers of the caches that serve it; weak, so a cache that is no
# longer used is not kept alive by its gauge.
_ages: dict[str, list[weakref.WeakMethod[Callable[[], float | None]]]] = {}
#: Distinct unknown key ids tracked one by one; more (tokens can be forged with any id)
#: are counted together under ``OTHER``, so the table cannot grow without end.
MAX_UNKNOWN_IDS = 100
OTHER = "(other)"


@dataclass(frozen=True)
class FieldCryptMetrics:
    """A snapshot of the counters.

    Attributes:
        decrypts: values decrypted, by key id (legacy tokens count under the key that
            opened them).
        legacy_reads: values read in a legacy format a column declares
            (:mod:`sa_fieldcrypt.legacy`), by the format's name (``fernet``,
            ``sqlalchemy-utils:AesEngine:pkcs5``...).
        plaintext_reads: values read as plaintext by columns with ``allow_plaintext``, by
            ``schema.table.column``.
        unknown_key_ids: tokens naming a key id the keyring did not hold, by that id.
        failures: values that failed to decrypt, for any reason (unknown ids included).
        key_cache_age: seconds since a refreshing key cache last loaded its keys
            successfully, by key source (a Secret Manager secret's name, else the provider's
            class name); the oldest when several caches read one source. A cache that has
            never loaded is absent.
        key_load_failures: loads of a key provider that failed (the first load, a refresh,
            or one refused because the keys were older than ``max_stale``), by key source.
        skipped_versions: Secret Manager versions left out of a load because they could not
            be read as a key (a malformed payload, a checksum mismatch, a key of another
            purpose), by version name ``projects/P/secrets/S/versions/N``; once per load.
    """

    decrypts: dict[str, int] = field(default_factory=dict)
    legacy_reads: dict[str, int] = field(default_factory=dict)
    plaintext_reads: dict[str, int] = field(default_factory=dict)
    unknown_key_ids: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    key_cache_age: dict[str, float] = field(default_factory=dict)
    key_load_failures: dict[str, int] = field(default_factory=dict)
    skipped_versions: dict[str, int] = field(default_factory=dict)


def snapshot() -> FieldCryptMetrics:
    """Return the current value of every counter."""
    with _lock:
        decrypts = dict(_decrypts)
        unknown = dict(_unknown)
        plaintext = dict(_plaintext)
        legacy = dict(_legacy)
        load_failures = dict(_load_failures)
        skipped = dict(_skipped)
    return FieldCryptMetrics(
        decrypts={kid: _value(c) for kid, c in decrypts.items()},
        legacy_reads={name: _value(c) for name, c in legacy.items()},
        plaintext_reads={label: _value(c) for label, c in plaintext.items()},
        unknown_key_ids={kid: _value(c) for kid, c in unknown.items()},
        failures=_value(_failures),
        key_cache_age=_cache_ages(),
        key_load_failures={source: _value(c) for source, c in load_failures.items()},
        skipped_versions={name: _value(c) for name, c in skipped.items()},
    )


def prometheus_text(prefix: str = "sa_fieldcrypt") -> str:
    """Render the counters in the Prometheus text exposition format."""
    now = snapshot()
    lines: list[str] = []

    def family(
        name: str, help_text: str, samples: list[tuple[str, float]], kind: str = "counter"
    ) -> None:
        lines.append(f"# HELP {prefix}_{name} {help_text}")
        lines.append(f"# TYPE {prefix}_{name} {kind}")
        lines.extend(f"{prefix}_{name}{labels} {value}" for labels, value in samples)

    family(
        "decrypts_total",
        "Values decrypted, by key id.",
        [(f'{{key_id="{kid}"}}', n) for kid, n in sorted(now.decrypts.items())],
    )
    family(
        "legacy_reads_total",
        "Values read in a declared legacy format, by format.",
        [(f'{{format="{_label(n)}"}}', c) for n, c in sorted(now.legacy_reads.items())],
    )
    family(
        "plaintext_reads_total",
        "Plaintext values read during a migration, by column.",
        [(f'{{column="{col}"}}', n) for col, n in sorted(now.plaintext_reads.items())],
    )
    family(
        "unknown_key_ids_total",
        "Tokens naming a key id not in the keyring, by id.",
        [(f'{{key_id="{kid}"}}', n) for kid, n in sorted(now.unknown_key_ids.items())],
    )
    family("decryption_failures_total", "Values that failed to decrypt.", [("", now.failures)])
    family(
        "key_cache_age_seconds",
        "Seconds since the keys of a source were last loaded successfully.",
        [(f'{{source="{_label(src)}"}}', age) for src, age in sorted(now.key_cache_age.items())],
        kind="gauge",
    )
    family(
        "key_load_failures_total",
        "Failed loads of a key provider, by key source.",
        [(f'{{source="{_label(s)}"}}', n) for s, n in sorted(now.key_load_failures.items())],
    )
    family(
        "skipped_versions_total",
        "Secret Manager versions left out of a load, by version name.",
        [(f'{{version="{_label(v)}"}}', n) for v, n in sorted(now.skipped_versions.items())],
    )
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    # The exposition format's escapes for a label value.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(counter: itertools.count[int]) -> int:
    return int(repr(counter)[6:-1])


def key_counter(key_id: str) -> itertools.count[int]:
    """The decrypt counter of ``key_id``, shared by every key object with that id."""
    counter = _decrypts.get(key_id)
    if counter is None:
        with _lock:
            counter = _decrypts.setdefault(key_id, itertools.count())
    return counter


def count_legacy_read(legacy_format: str) -> None:
    """Count one value read in the legacy format named ``legacy_format``."""
    counter = _legacy.get(legacy_format)
    if counter is None:
        with _lock:
            counter = _legacy.setdefault(legacy_format, itertools.count())
    next(counter)


def count_plaintext_read(column: str) -> bool:
    """Count one value read as plaintext by ``column``; True for the column's first one."""
    counter = _plaintext.get(column)
    first = counter is None
    if counter is None:
        with _lock:
            first = column not in _plaintext
            counter = _plaintext.setdefault(column, itertools.count())
    next(counter)
    return first


def count_failure(key_id: str | None, unknown: bool) -> None:
    """Count one failed decryption; ``unknown`` when its key id was not in the keyring."""
    next(_failures)
    if not unknown or key_id is None:
        return
    counter = _unknown.get(key_id)
    if counter is None:
        with _lock:
            if key_id not in _unknown and len(_unknown) >= MAX_UNKNOWN_IDS:
                key_id = OTHER
            counter = _unknown.setdefault(key_id, itertools.count())
    next(counter)


def count_key_load_failure(source: str) -> None:
    """Count one failed load of the keys of ``source``."""
    _counter(_load_failures, source)


def count_skipped_version(version: str) -> None:
    """Count one Secret Manager version (by its full name) left out of a load."""
    _counter(_skipped, version)


def watch_key_cache(source: str, age: Callable[[], float | None]) -> None:
    """Report ``age()`` (a bound method; None before the first load) as the age of ``source``.

    The method is held weakly: once its object is gone, its gauge is too.
    """
    reader = weakref.WeakMethod(age)
    with _lock:
        alive = [known for known in _ages.get(source, []) if known() is not None]
        _ages[source] = [*alive, reader]


def _cache_ages() -> dict[str, float]:
    with _lock:
        for source in list(_ages):
            _ages[source] = [reader for reader in _ages[source] if reader() is not None]
            if not _ages[source]:
                del _ages[source]
        readers = {source: list(found) for source, found in _ages.items()}
    ages: dict[str, float] = {}
    for source, found in readers.items():
        values = [age for age in (_read_age(reader) for reader in found) if age is not None]
        if values:
            ages[source] = max(values)
    return ages


def _read_age(reader: weakref.WeakMethod[Callable[[], float | None]]) -> float | None:
    method = reader()
    return None if method is None else method()


def _counter(table: dict[str, itertools.count[int]], name: str) -> None:
    counter = table.get(name)
    if counter is None:
        with _lock:
            counter = table.setdefault(name, itertools.count())
    next(counter)

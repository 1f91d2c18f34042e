"""What a data job reports: failures, per-job counts, a run's totals, and progress listeners.

Every job (rotation, verification, reindexing, user jobs on :func:`~sa_fieldcrypt.jobs.run_job`)
speaks this one vocabulary. A row is *scanned* when read; then it is *written* (in a dry run:
would be), *unchanged* (it needed nothing), *skipped* (left alone on purpose, such as
plaintext without ``encrypt_plaintext``) or *failed* (it could not be handled: named by
primary key, never by content). *concurrent* counts writes refused because the application
changed the row between read and write; such a row is read again and counted anew (unless
the job leaves changed rows to the application, as reindexing does). *orphans* counts rows of
another table deleted once the walk is over because the row they belong to is gone (a
substring index's side rows of deleted owners; in a dry run: that would be).

Messages and reports name rows and counts one way, through :func:`format_key` (``id=7``,
``tenant=3, id=01b4...``: values as a person reads them) and :func:`plural` (``1 row``,
``2,000 rows``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "COUNTS",
    "MAX_KEPT_FAILURES",
    "Failure",
    "JobReport",
    "PrimaryKey",
    "QuietListener",
    "RunListener",
    "RunReport",
    "format_key",
    "plural",
    "word_for",
]

logger = logging.getLogger("sa_fieldcrypt.jobs")

#: Failures kept in a :class:`JobReport`; every one is still passed to the listener.
MAX_KEPT_FAILURES: Final = 100
#: The counters of a :class:`JobReport`, in the order reports show them.
COUNTS: Final = (
    "scanned",
    "written",
    "unchanged",
    "skipped",
    "concurrent",
    "failed",
    "orphans",
)

#: A row's primary key as ``((column name, value), ...)``, in the key's column order.
PrimaryKey = tuple[tuple[str, Any], ...]


def format_key(primary_key: Iterable[tuple[str, Any]]) -> str:
    """A primary key as people read it: ``id=7``, or ``tenant=3, id=01b4...`` for a composite.

    Every message and report names a row this way: values print as text (a UUID as its
    hyphenated digits, a string without quotes), never as Python ``repr``.
    """
    return ", ".join(f"{name}={_text(value)}" for name, value in primary_key)


def word_for(count: int, singular: str, many: str | None = None) -> str:
    """``singular`` when ``count`` is 1, else its plural (``many``, or ``singular + "s"``)."""
    if count == 1:
        return singular
    return many if many is not None else singular + "s"


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``count`` with thousands separators and the noun that agrees: ``1 row``, ``2,000 rows``."""
    return f"{count:,} {word_for(count, singular, many)}"


@dataclass(frozen=True)
class Failure:
    """A row that could not be handled: named by its job and primary key, never by content.

    Attributes:
        column: the job's label.
        primary_key: the row's primary key.
        reason: why, in words; never the row's content.
        collides_with: for a row whose new value a unique constraint refused, the primary
            keys of the rows that already hold that value.
    """

    column: str
    primary_key: PrimaryKey
    reason: str
    collides_with: tuple[PrimaryKey, ...] = ()

    @property
    def key_text(self) -> str:
        """The primary key as :func:`format_key` writes it."""
        return format_key(self.primary_key)

    @property
    def key(self) -> tuple[Any, ...]:
        """The primary key's values alone, in the key's column order."""
        return tuple(value for _, value in self.primary_key)

    def __str__(self) -> str:
        return f"{self.column} at primary key ({self.key_text}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """The failure as plain data, for JSON."""
        return {
            "job": self.column,
            "primary_key": _plain_key(self.primary_key),
            "reason": self.reason,
            "collides_with": [_plain_key(key) for key in self.collides_with],
        }


@dataclass
class JobReport:
    """Counts for one job: one column (rotate, verify) or one table's indexes (reindex).

    Attributes:
        label: the job's label (``schema.table.column``).
        scanned: rows read.
        written: rows written (in a dry run: rows that would be).
        unchanged: rows that needed no change (a verified value, for ``verify``).
        skipped: rows left alone on purpose (plaintext, unless encrypting plaintext).
        concurrent: writes refused because someone else changed the row after it was read.
        failed: rows that could not be handled; the first few are in ``failures``.
        orphans: side rows deleted after the walk because their owner row is gone (a
            substring index's; in a dry run: that would be). Only a run that visited every
            owner and is not a shard deletes them.
        dry_run: nothing was written.
        completed: False when the job stopped early (``fail_fast``, or a stop request).
        last_key: the primary key of the last row of the last committed batch (one process).
        resumed: the job resumed from a saved state instead of starting over.
        elapsed: seconds the job has run.
        throttled_seconds: seconds of ``elapsed`` a throttle held the job back (paused, or
            slowed to its row rate); with workers, the longest any worker was held back.
        paused_seconds: of ``throttled_seconds``, the seconds paused (the pause file,
            replica lag); the rest is the row rate's. With workers, the longest any paused.
    """

    label: str
    scanned: int = 0
    written: int = 0
    unchanged: int = 0
    skipped: int = 0
    concurrent: int = 0
    failed: int = 0
    orphans: int = 0
    failures: list[Failure] = field(default_factory=list)
    dry_run: bool = False
    completed: bool = True
    last_key: tuple[Any, ...] | None = None
    resumed: bool = False
    elapsed: float = 0.0
    throttled_seconds: float = 0.0
    paused_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Rows scanned per second of ``elapsed`` (0 before any time has passed)."""
        return self.scanned / self.elapsed if self.elapsed > 0 else 0.0

    def add(self, other: JobReport) -> None:
        """Add another report's counts (of another worker, shard or job) to this one."""
        self.count({name: getattr(other, name) for name in COUNTS})
        self.failures.extend(other.failures[: MAX_KEPT_FAILURES - len(self.failures)])
        self.completed = self.completed and other.completed
        # The jobs of a run go one after the other, so their times add up.
        self.elapsed += other.elapsed
        self.throttled_seconds += other.throttled_seconds
        self.paused_seconds += other.paused_seconds

    def count(self, counts: dict[str, int]) -> None:
        """Add ``counts`` (counter name to rows) to this report's counters."""
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)

    def keep(self, failure: Failure) -> None:
        """Keep ``failure`` among the first :data:`MAX_KEPT_FAILURES` (it is counted apart)."""
        if len(self.failures) < MAX_KEPT_FAILURES:
            self.failures.append(failure)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data, for JSON."""
        return {
            "job": self.label,
            **{name: getattr(self, name) for name in COUNTS},
            "dry_run": self.dry_run,
            "completed": self.completed,
            "resumed": self.resumed,
            "elapsed_seconds": round(self.elapsed, 3),
            "throttled_seconds": round(self.throttled_seconds, 3),
            "paused_seconds": round(self.paused_seconds, 3),
            "rows_per_second": round(self.rate, 1),
            "failures": [f.to_dict() for f in self.failures],
        }


@dataclass
class RunReport:
    """The reports of every job of a run, and their totals."""

    jobs: list[JobReport] = field(default_factory=list)

    def total(self) -> JobReport:
        """One report that adds up every job's counts."""
        total = JobReport("total", dry_run=any(r.dry_run for r in self.jobs))
        for report in self.jobs:
            total.add(report)
        return total

    @property
    def scanned(self) -> int:
        """Rows read, all jobs."""
        return sum(r.scanned for r in self.jobs)

    @property
    def written(self) -> int:
        """Rows written (or, in a dry run, that would be), all jobs."""
        return sum(r.written for r in self.jobs)

    @property
    def unchanged(self) -> int:
        """Rows that needed no change, all jobs."""
        return sum(r.unchanged for r in self.jobs)

    @property
    def skipped(self) -> int:
        """Rows left alone on purpose, all jobs."""
        return sum(r.skipped for r in self.jobs)

    @property
    def concurrent(self) -> int:
        """Writes refused because the row changed meanwhile, all jobs."""
        return sum(r.concurrent for r in self.jobs)

    @property
    def failed(self) -> int:
        """Rows that could not be handled, all jobs."""
        return sum(r.failed for r in self.jobs)

    @property
    def orphans(self) -> int:
        """Side rows of owners that are gone, deleted (in a dry run: that would be), all jobs."""
        return sum(r.orphans for r in self.jobs)

    @property
    def ok(self) -> bool:
        """True when every row was handled and no job stopped early."""
        return self.failed == 0 and all(r.completed for r in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data, for JSON: every job, the totals and ``ok``."""
        total = self.total().to_dict()
        del total["failures"], total["job"], total["resumed"]
        return {"ok": self.ok, "jobs": [r.to_dict() for r in self.jobs], "total": total}


class RunListener:
    """Receives a run's progress; subclass and override what you need.

    The default implementation logs to the ``sa_fieldcrypt.jobs`` logger. Every method is
    called in the process that started the run, also when worker processes do the work.
    """

    def started(self, label: str, total: int) -> None:
        """A job begins; ``total`` rows match its filter now."""
        logger.info("%s: %s to visit", label, plural(total, "row"))

    def batch(self, label: str, rows: int, report: JobReport) -> None:
        """A batch of ``rows`` rows was committed; ``report`` holds the job's counts so far."""
        logger.debug("%s: scanned %d, written %d", label, report.scanned, report.written)

    def failure(self, failure: Failure) -> None:
        """A row could not be handled."""
        logger.warning("%s", failure)

    def paused(self, label: str, reason: str) -> None:
        """A throttle paused the job for ``reason`` (with workers: the first to pause)."""
        logger.warning("%s: paused: %s", label, reason)

    def resumed(self, label: str, seconds: float) -> None:
        """The job goes on after a pause of ``seconds`` (with workers: the last to resume)."""
        logger.info("%s: resumed after %.1f s paused", label, seconds)

    def finished(self, report: JobReport) -> None:
        """A job ended."""
        logger.info(
            "%s: scanned %d, written %d, failed %d",
            report.label,
            report.scanned,
            report.written,
            report.failed,
        )


class QuietListener(RunListener):
    """A listener that says nothing: for reads that are not a run to report (a status)."""

    def started(self, label: str, total: int) -> None:
        """Say nothing."""

    def batch(self, label: str, rows: int, report: JobReport) -> None:
        """Say nothing."""

    def failure(self, failure: Failure) -> None:
        """Say nothing."""

    def paused(self, label: str, reason: str) -> None:
        """Say nothing."""

    def resumed(self, label: str, seconds: float) -> None:
        """Say nothing."""

    def finished(self, report: JobReport) -> None:
        """Say nothing."""


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else _text(value)


def _plain_key(primary_key: PrimaryKey) -> dict[str, Any]:
    return {name: _plain(value) for name, value in primary_key}


def _text(value: Any) -> str:
    # str() of a UUID is its hyphenated digits; bytes (a binary key) read best as hex.
    return value.hex() if isinstance(value, bytes) else str(value)

"""The data jobs: one engine, and rotation, verification, status and reindexing on it.

Every job walks a table in primary-key batches, writes with compare-and-swap, runs in worker
processes or shards, resumes from a state file and reports in one vocabulary; the
``fieldcrypt`` data commands are thin wrappers over these functions.

- :mod:`~sa_fieldcrypt.jobs.engine`: :class:`BatchJob` and :func:`run_job`, for jobs of your own.
- :mod:`~sa_fieldcrypt.jobs.targets`: which columns a job runs over (:func:`find_columns`,
  :func:`find_indexes`, :func:`find_substring_indexes`, :func:`reflect_column`).
- :mod:`~sa_fieldcrypt.jobs.rotation`: :func:`rotate` and :func:`verify`.
- :mod:`~sa_fieldcrypt.jobs.reindex`: :func:`reindex`.
- :mod:`~sa_fieldcrypt.jobs.status`: :func:`status`, :func:`retire_keys` and
  :func:`env_key_changes`.
- :mod:`~sa_fieldcrypt.jobs.throttle`: :class:`Throttle` (a row rate, replica lag, a pause
  file) and the lag sources :func:`replica_lag` and :func:`primary_lag`.
- :mod:`~sa_fieldcrypt.jobs.report`, :mod:`~sa_fieldcrypt.jobs.state`,
  :mod:`~sa_fieldcrypt.jobs.sql`: reports and listeners, resume state, per-database SQL.

Typical usage::

    from sa_fieldcrypt import jobs

    columns = jobs.find_columns("app.models")
    report = jobs.rotate(engine, columns, workers=2, state="rotate-state.json")
    assert report.ok and jobs.status(engine, columns).ready
"""

from sa_fieldcrypt.jobs.engine import (
    DEFAULT_BATCH_SIZE,
    SHARD_INDEX_VARIABLE,
    SKIP,
    BatchJob,
    parse_shard,
    run_job,
    run_jobs,
    shard_from_env,
)
from sa_fieldcrypt.jobs.reindex import reindex
from sa_fieldcrypt.jobs.report import Failure, JobReport, RunListener, RunReport
from sa_fieldcrypt.jobs.rotation import rotate, verify
from sa_fieldcrypt.jobs.state import ResumeState
from sa_fieldcrypt.jobs.status import (
    KeySettingsChange,
    StatusReport,
    env_key_changes,
    retire_keys,
    status,
)
from sa_fieldcrypt.jobs.targets import (
    EncryptedColumn,
    IndexedColumn,
    SubstringColumn,
    find_columns,
    find_indexes,
    find_substring_indexes,
    reflect_column,
)
from sa_fieldcrypt.jobs.throttle import LagSource, Throttle, primary_lag, replica_lag

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "SHARD_INDEX_VARIABLE",
    "SKIP",
    "BatchJob",
    "EncryptedColumn",
    "Failure",
    "IndexedColumn",
    "JobReport",
    "KeySettingsChange",
    "LagSource",
    "ResumeState",
    "RunListener",
    "RunReport",
    "StatusReport",
    "SubstringColumn",
    "Throttle",
    "env_key_changes",
    "find_columns",
    "find_indexes",
    "find_substring_indexes",
    "parse_shard",
    "primary_lag",
    "reflect_column",
    "reindex",
    "replica_lag",
    "retire_keys",
    "rotate",
    "run_job",
    "run_jobs",
    "shard_from_env",
    "status",
    "verify",
]

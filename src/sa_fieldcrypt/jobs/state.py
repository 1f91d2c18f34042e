"""Resume state: where each job of a run got to, saved after every committed batch.

Give a run ``state="rotate-state.json"`` (the commands' ``--state FILE``) and a run that was
stopped, killed or failed resumes from the last committed batch of each job instead of reading
its table again. The file names each job by what must not have changed for its saved position
to hold (the job's label, the key that writes, the shard); another key or another shard starts
that job over. Primary keys of integers, strings and UUIDs can be saved.

The file is replaced atomically (write, fsync, rename), so a kill at any moment leaves either
the previous state or the new one, never a torn file. Only the process that started the run
writes it; worker processes report their progress to it. A saved position never passes a row
that was not handled (it failed, or kept changing): a rerun reads that row again. Once a run
finishes with every row handled, the commands remove the file, so the next run starts afresh.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Column

from sa_fieldcrypt.errors import ConfigurationError, RotationError

__all__ = ["KeyRange", "ResumeState", "check_resumable"]

_VERSION: Final = 2
_RESUMABLE_TYPES: Final = (int, str, uuid.UUID)

Key = tuple[Any, ...]


@dataclass
class KeyRange:
    """A range of primary keys, ``low < key <= high`` (None: unbounded), and its progress.

    Attributes:
        low: the range's lower bound, exclusive.
        high: the range's upper bound, inclusive.
        after: the last committed key within the range; work resumes after it.
        done: every row of the range was visited.
    """

    low: Key | None = None
    high: Key | None = None
    after: Key | None = None
    done: bool = False

    @property
    def start(self) -> Key | None:
        """Where the next batch starts (exclusive)."""
        return self.after if self.after is not None else self.low


def check_resumable(label: str, pk: Sequence[Column[Any]]) -> None:
    """Refuse, before anything is written, a primary key the state file cannot hold.

    Raises:
        ConfigurationError: a part of the key is not an integer, string or UUID.
    """
    for col in pk:
        try:
            python_type = col.type.python_type
        except NotImplementedError:
            python_type = object
        if not issubclass(python_type, _RESUMABLE_TYPES) or issubclass(python_type, bool):
            raise ConfigurationError(
                f"{label}: a state file holds integer, string and UUID primary keys, and "
                f"{col.name} is {python_type.__name__}; run without --state (a rerun still "
                "skips what is done)"
            )


class ResumeState:
    """The progress of every job of a run, kept in a JSON file.

    Args:
        path: the file; read if it exists, written after every committed batch.

    Raises:
        ConfigurationError: the file exists but is not a state file of this version, cannot
            be read, or its directory does not exist.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._jobs: dict[str, list[KeyRange]] = {}
        if not self.path.parent.is_dir():
            raise ConfigurationError(
                f"the directory of state file {self.path} does not exist; create it, or name "
                "a file in an existing directory"
            )
        if not self.path.exists():
            return
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise ConfigurationError(
                f"state file {self.path} cannot be read ({type(exc).__name__}); check its "
                "permissions"
            ) from None
        try:
            data = json.loads(text)
            if data.get("version") != _VERSION:
                raise ValueError("version")
            for name, ranges in data["jobs"].items():
                self._jobs[name] = [
                    KeyRange(_decode(r["low"]), _decode(r["high"]), _decode(r["after"]), r["done"])
                    for r in ranges
                ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"state file {self.path} is not a state file of this version "
                f"({type(exc).__name__}); delete it to start over"
            ) from None

    def ranges(self, job: str) -> list[KeyRange] | None:
        """The saved ranges of ``job``, or None when it has not started."""
        return self._jobs.get(job)

    def begin(self, job: str, ranges: list[KeyRange]) -> None:
        """Record that ``job`` starts over these ranges."""
        self._jobs[job] = ranges
        self.save()

    def advance(self, job: str, index: int, after: Key | None, *, done: bool = False) -> None:
        """Record that range ``index`` of ``job`` is committed up to ``after`` (or done)."""
        saved = self._jobs[job][index]
        if after is not None:
            saved.after = after
        saved.done = saved.done or done
        self.save()

    def clear(self) -> None:
        """Forget every job and remove the file: the next run starts afresh."""
        self._jobs = {}
        self.path.unlink(missing_ok=True)

    def save(self) -> None:
        """Write the file atomically.

        Raises:
            RotationError: the file cannot be written; batches committed so far stay.
        """
        try:
            self._write()
        except OSError as exc:
            raise RotationError(
                f"state file {self.path} cannot be written ({type(exc).__name__}); batches "
                "committed so far are kept: free the disk or fix the permissions and run again"
            ) from None

    def _write(self) -> None:
        payload = json.dumps(
            {
                "version": _VERSION,
                "jobs": {
                    name: [
                        {
                            "low": _encode(r.low),
                            "high": _encode(r.high),
                            "after": _encode(r.after),
                            "done": r.done,
                        }
                        for r in ranges
                    ]
                    for name, ranges in self._jobs.items()
                },
            },
            indent=1,
        )
        # Write-then-rename: a kill mid-write leaves the previous state, never a torn file.
        with tempfile.NamedTemporaryFile(
            "w", dir=self.path.parent, prefix=f".{self.path.name}.", delete=False
        ) as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, self.path)

    def __repr__(self) -> str:
        return f"ResumeState({str(self.path)!r}, jobs={len(self._jobs)})"


def _encode(key: Key | None) -> Any:
    if key is None:
        return None
    return [{"uuid": str(v)} if isinstance(v, uuid.UUID) else v for v in key]


def _decode(value: Any) -> Key | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise TypeError("key")
    return tuple(uuid.UUID(v["uuid"]) if isinstance(v, dict) else v for v in value)

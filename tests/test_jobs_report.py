"""Reports: one way to name a row's primary key, and counts with nouns that agree."""

from __future__ import annotations

import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from sa_fieldcrypt.jobs import Failure, JobReport, RunReport
from sa_fieldcrypt.jobs.report import format_key, plural, word_for

UID = uuid.UUID("01b4c3d2-0000-4000-8000-00000000abcd")


def test_a_uuid_key_reads_as_its_digits() -> None:
    """A UUID primary key prints as its hyphenated digits, never as UUID('...')."""
    assert f"id={UID}" == format_key([("id", UID)])


def test_a_composite_key_reads_as_name_value_pairs() -> None:
    """A composite primary key prints every part as name=value, in the key's order."""
    assert f"tenant=3, id={UID}" == format_key([("tenant", 3), ("id", UID)])
    assert "code=ab c, n=-1" == format_key([("code", "ab c"), ("n", -1)])


def test_a_failure_names_its_row_with_format_key_in_text_and_json() -> None:
    """A failure's text and JSON carry the key as people and programs read it."""
    failure = Failure("core.t.email", (("tenant", 3), ("id", UID)), "key id 'gone': missing")
    assert f"core.t.email at primary key (tenant=3, id={UID}): key id 'gone': missing" == str(
        failure
    )
    report = JobReport("core.t.email", failed=1, failures=[failure])
    data = json.loads(json.dumps(report.to_dict()))
    assert [{"tenant": 3, "id": str(UID)}] == [f["primary_key"] for f in data["failures"]]
    assert [[]] == [f["collides_with"] for f in data["failures"]]


def test_plural_agrees_with_the_count() -> None:
    """1 takes the singular, every other count the plural, with thousands separators."""
    assert ["0 rows", "1 row", "2 rows", "19,999 rows"] == [
        plural(n, "row") for n in (0, 1, 2, 19_999)
    ]
    assert ("1 index value", "2 index values") == (
        plural(1, "index value"),
        plural(2, "index value"),
    )
    assert ("key", "keys", "batches") == (
        word_for(1, "key"),
        word_for(2, "key"),
        word_for(3, "batch", "batches"),
    )


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_plural_is_the_count_and_one_noun(count: int) -> None:
    """For any count the text is the count, a space, and the noun; singular only for 1."""
    number, noun = plural(count, "row").split(" ")
    assert (count, "row" if count == 1 else "rows") == (int(number.replace(",", "")), noun)


def test_a_report_carries_its_times_and_rate() -> None:
    """to_dict gives elapsed and throttled seconds and rows scanned per second; totals add."""
    report = JobReport("t.email", scanned=300, elapsed=2.0, throttled_seconds=0.5)
    assert (150.0, 2.0, 0.5) == tuple(
        report.to_dict()[k] for k in ("rows_per_second", "elapsed_seconds", "throttled_seconds")
    )
    run = RunReport([report, JobReport("t.phone", scanned=100, elapsed=2.0)])
    assert (4.0, 0.5, 100.0) == tuple(
        run.to_dict()["total"][k]
        for k in ("elapsed_seconds", "throttled_seconds", "rows_per_second")
    )


def test_orphans_are_counted_per_job_totalled_and_in_json() -> None:
    """Side rows deleted because their owner is gone are a count of each job and of the run."""
    run = RunReport([JobReport("t_trigrams", orphans=3), JobReport("u_trigrams", orphans=2)])
    data = json.loads(json.dumps(run.to_dict()))
    assert (5, 5, [3, 2]) == (
        run.orphans,
        data["total"]["orphans"],
        [job["orphans"] for job in data["jobs"]],
    )

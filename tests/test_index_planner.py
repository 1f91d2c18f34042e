"""Sizing truncated blind indexes: plan_index_sizes and CipherSweet's coincidence rule."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sa_fieldcrypt.blind_index import BITS_STEP, FULL_BITS, MIN_BITS
from sa_fieldcrypt.errors import ConfigurationError
from sa_fieldcrypt.index_planner import IndexPlan, plan_index_sizes


def _effective(plan: IndexPlan, bits: dict[str, int] | None = None) -> float:
    """The bits the plan's indexes separate together, with ``bits`` overriding its sizes."""
    sizes = {index.name: index.bits for index in plan} | (bits or {})
    return sum(min(sizes[index.name], math.log2(index.distinct)) for index in plan)


def _coincidence(plan: IndexPlan, bits: dict[str, int] | None = None) -> float:
    return plan.rows / 2 ** _effective(plan, bits)


def test_one_index_takes_the_most_bits_that_keep_two_rows_per_value() -> None:
    """A million rows of nearly unique emails keep 16 bits: 20 would leave about one row each."""
    plan = plan_index_sizes(1_000_000, {"email": 900_000})
    email = plan["email"]
    assert (16, 12, 16) == (email.bits, email.min_bits, email.max_bits)
    assert 1_000_000 / 2**16 == pytest.approx(plan.coincidence)
    assert plan.coincidence == pytest.approx(email.coincidence)
    assert plan.meets_coincidence
    assert 1_000_000 / 900_000 < 2  # at 20 bits every email has its own index value


def test_one_unique_index_keeps_the_most_bits_on_the_step_grid() -> None:
    """The plan keeps the largest multiple of the step at which R / 2 ** bits is at least 2."""
    for rows in (100, 5_000, 65_536, 1_000_000, 10**9):
        bits = plan_index_sizes(rows, {"email": rows})["email"].bits
        assert rows / 2**bits >= 2
        assert bits == MIN_BITS or rows / 2 ** (bits + BITS_STEP) < 2
        assert 0 == bits % BITS_STEP


def test_an_index_needs_no_more_bits_than_its_distinct_values_take() -> None:
    """Ten thousand distinct values stop at 16 bits (log2 10,000 is 13.3), however many rows."""
    plan = plan_index_sizes(10**9, {"last4": 10_000})
    assert 16 == plan["last4"].bits == plan["last4"].max_bits
    assert 10**9 / 10_000 == pytest.approx(plan["last4"].coincidence)


def test_the_indexes_of_a_column_share_one_budget_of_bits() -> None:
    """Two indexes on a column keep the combined count at two: each gets fewer bits than alone."""
    alone = plan_index_sizes(1_000_000, {"email": 1_000_000})
    both = plan_index_sizes(1_000_000, {"email": 1_000_000, "last4": 10_000})
    assert (8, 8) == (both["email"].bits, both["last4"].bits)
    assert both["email"].bits < alone["email"].bits
    assert both.coincidence >= 2
    assert _effective(both) <= both.budget
    assert math.log2(1_000_000 / 2) == pytest.approx(both.budget)


def test_the_bits_go_where_lookups_decrypt_the_most_false_positives() -> None:
    """The index whose lookups return more non-matching rows gets the contested step."""
    plan = plan_index_sizes(2**20, {"wide": 2**20, "narrow": 2**6})
    # narrow stops at 8 bits (log2 64 = 6); the rest of the budget of 19 bits goes to wide.
    assert (8, 12) == (plan["narrow"].bits, plan["wide"].bits)
    assert plan["wide"].false_positives == pytest.approx((2**20 - 1) / 2**12)


def test_a_table_too_small_for_its_indexes_does_not_meet_the_rule() -> None:
    """Thirty rows with a unique value each are under two rows per value even at 4 bits."""
    plan = plan_index_sizes(30, {"code": 30})
    assert not plan.meets_coincidence
    assert (MIN_BITS, MIN_BITS, MIN_BITS) == (
        plan["code"].bits,
        plan["code"].min_bits,
        plan["code"].max_bits,
    )
    assert 30 / 16 == pytest.approx(plan.coincidence)


def test_a_higher_minimum_coincidence_leaves_fewer_bits() -> None:
    """Asking for 64 rows per combination instead of 2 takes 5 bits from the budget."""
    default = plan_index_sizes(1_000_000, {"email": 1_000_000})
    private = plan_index_sizes(1_000_000, {"email": 1_000_000}, min_coincidence=64)
    assert (16, 12) == (default["email"].bits, private["email"].bits)
    assert private.coincidence >= 64


def test_the_false_positive_bound_sets_the_smallest_size() -> None:
    """min_bits is the fewest bits whose expected false positives are within the bound."""
    default = plan_index_sizes(1_000_000, {"email": 1_000_000})
    loose = plan_index_sizes(1_000_000, {"email": 1_000_000}, max_false_positives=100_000)
    assert (12, 4) == (default["email"].min_bits, loose["email"].min_bits)
    assert 1_000.0 == default.max_false_positives
    assert default["email"].bounded


def test_false_positives_and_candidates_follow_their_formulas() -> None:
    """Candidates are rows / distinct matches plus (rows - rows / distinct) / 2 ** bits others."""
    plan = plan_index_sizes(1_000_000, {"email": 1_000_000, "last4": 10_000})
    last4 = plan["last4"]
    assert (1_000_000 - 100) / 2**8 == pytest.approx(last4.false_positives)
    assert 100 + last4.false_positives == pytest.approx(last4.candidates)
    assert not last4.bounded  # over sqrt(1,000,000) = 1,000


def test_a_sequence_names_the_indexes_by_position() -> None:
    """Counts passed as a sequence plan indexes named 'index 1', 'index 2', in that order."""
    plan = plan_index_sizes(1_000_000, [1_000_000, 10_000])
    assert ["index 1", "index 2"] == [index.name for index in plan]


def test_an_unknown_index_name_is_a_key_error() -> None:
    """plan[name] raises KeyError for an index the plan does not have."""
    with pytest.raises(KeyError, match="phone"):
        plan_index_sizes(100, {"email": 100})["phone"]


def test_the_plan_serializes_to_json() -> None:
    """to_dict is JSON-ready and holds every index's size and the combined count."""
    plan = plan_index_sizes(1_000_000, {"email": 900_000})
    data = json.loads(json.dumps(plan.to_dict()))
    assert 1_000_000 == data["rows"]
    assert data["meets_coincidence"] is True
    assert plan.coincidence == data["coincidence"]
    assert {"name": "email", "distinct": 900_000, "bits": 16} == {
        key: data["indexes"][0][key] for key in ("name", "distinct", "bits")
    }


@pytest.mark.parametrize(
    ("rows", "distinct", "options", "message"),
    [
        (0, {"email": 1}, {}, "rows must be a positive integer"),
        (True, {"email": 1}, {}, "rows must be a positive integer"),
        (10.0, {"email": 1}, {}, "rows must be a positive integer"),
        ("10", {"email": 1}, {}, "rows must be a positive integer"),
        (10, {}, {}, "at least one index"),
        (10, [], {}, "at least one index"),
        (10, "email", {}, "map each index name"),
        (10, 5, {}, "map each index name"),
        (10, {"email": 0}, {}, "distinct values of index 'email' must be a positive integer"),
        (10, {"email": 2.5}, {}, "must be a positive integer"),
        (10, {"email": 11}, {}, "more distinct values \\(11\\) than the table has rows \\(10\\)"),
        (10, {"": 5}, {}, "non-empty strings"),
        (10, {1: 5}, {}, "non-empty strings"),
        (10, {"email": 5}, {"min_coincidence": 0.5}, "min_coincidence must be a finite"),
        (10, {"email": 5}, {"min_coincidence": math.inf}, "min_coincidence must be a finite"),
        (10, {"email": 5}, {"max_false_positives": math.nan}, "max_false_positives must"),
        (10, {"email": 5}, {"max_false_positives": 0}, "max_false_positives must"),
    ],
)
def test_invalid_arguments_say_what_to_pass(
    rows: Any, distinct: Any, options: dict[str, Any], message: str
) -> None:
    """Each malformed argument raises ConfigurationError naming the argument and what it takes."""
    with pytest.raises(ConfigurationError, match=message):
        plan_index_sizes(rows, distinct, **options)


def _ciphersweet_range(rows: int, existing: list[tuple[int, float]], k: float) -> tuple[int, int]:
    """CipherSweet's FieldIndexPlanner::recommend(), in Python: the (min, max) bits of a new
    index of ``k`` bits of distinct values, beside ``existing`` (bits, distinct bits) pairs."""

    def count(indexes: list[tuple[int, float]]) -> float:
        return max(1, rows) / 2 ** sum(min(bits, distinct) for bits, distinct in indexes)

    boundary = max(2, count([*existing, (257, k)]))
    low = high = None
    for bits in range(256, 0, -1):
        coincidence = count([*existing, (bits, k)])
        if high is None and coincidence > boundary:
            high = bits + 1
        if 2 <= coincidence <= math.sqrt(rows):
            low = bits
    assert high is not None  # the plans below never reach CipherSweet's fallback
    return min(low or 1, high), high


@pytest.mark.parametrize(
    ("rows", "distinct"),
    [
        (1_000, [1_000]),
        (65_536, [65_536]),
        (1_000_000, [900_000]),
        (1_000_000, [1_000_000, 10_000]),
        (10**9, [10**9, 50_000, 10_000]),
        (10**7, [300, 9 * 10**6]),
    ],
)
def test_with_a_step_of_one_bit_the_range_is_ciphersweets(rows: int, distinct: list[int]) -> None:
    """With 1-bit steps, each index's range is CipherSweet's beside the others as planned.

    CipherSweet's most bits are the first to bring the count to 2 or below, where the plan keeps
    it at 2 or above: one bit less unless the count is exactly 2. Its fewest bits bound the
    combined count by sqrt(R), the plan each lookup's false positives: the same for one index,
    and never fewer bits beside others, whose values a one-index lookup does not narrow by."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sa_fieldcrypt.index_planner.MIN_BITS", 1)
        patch.setattr("sa_fieldcrypt.index_planner.BITS_STEP", 1)
        plan = plan_index_sizes(rows, distinct)
    assert plan.meets_coincidence
    for index in plan:
        others = [(o.bits, math.log2(o.distinct)) for o in plan if o is not index]
        low, high = _ciphersweet_range(rows, others, math.log2(index.distinct))
        at_high = _coincidence(plan, {index.name: high})
        assert high - (at_high < 2) == index.max_bits == index.bits
        if not others:
            assert low == index.min_bits
        assert low <= index.min_bits


@st.composite
def _columns(draw: st.DrawFn) -> tuple[int, dict[str, int]]:
    rows = draw(st.integers(min_value=1, max_value=10**12))
    counts = draw(st.lists(st.integers(min_value=1, max_value=rows), min_size=1, max_size=4))
    return rows, {f"i{number}": count for number, count in enumerate(counts)}


@given(_columns())
def test_sizes_are_on_the_grid_and_within_their_range(column: tuple[int, dict[str, int]]) -> None:
    """Every size is a multiple of the step between MIN_BITS and FULL_BITS, inside its range."""
    for index in plan_index_sizes(*column):
        assert MIN_BITS <= index.min_bits <= index.bits <= index.max_bits <= FULL_BITS
        assert 0 == index.bits % BITS_STEP == index.min_bits % BITS_STEP


@given(_columns())
def test_the_plan_keeps_the_coincidence_rule_whenever_it_can(
    column: tuple[int, dict[str, int]],
) -> None:
    """The combined count is at least the minimum, or every index is already at MIN_BITS."""
    plan = plan_index_sizes(*column)
    assert _coincidence(plan) == pytest.approx(plan.coincidence)
    if not plan.meets_coincidence:
        assert {MIN_BITS} == {index.bits for index in plan}
    else:
        assert plan.coincidence >= 2 * (1 - 1e-9)


@given(_columns())
def test_no_index_could_take_another_step(column: tuple[int, dict[str, int]]) -> None:
    """Each index is at its cap, or one more step would break the rule: no bits are wasted."""
    plan = plan_index_sizes(*column)
    if not plan.meets_coincidence:
        return
    for index in plan:
        capped = index.bits >= math.log2(index.distinct) or index.bits == FULL_BITS
        grown = _coincidence(plan, {index.name: index.bits + BITS_STEP})
        assert capped or grown < 2


@given(
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=1, max_value=10**12),
)
def test_more_rows_never_mean_fewer_bits(first: int, second: int, distinct: int) -> None:
    """For one index, a larger table never gets a smaller recommendation."""
    small, large = sorted((first, second))
    distinct = min(distinct, small)
    assert (
        plan_index_sizes(small, {"i": distinct})["i"].bits
        <= plan_index_sizes(large, {"i": distinct})["i"].bits
    )

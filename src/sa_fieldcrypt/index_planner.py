"""Sizing truncated blind indexes: how many bits each index of a column should keep.

A truncated index keeps only the first bits of each index value, so different values share
index values on purpose: a lookup returns candidate rows, and the hybrid decrypts them and
keeps the exact matches. Fewer bits leak less (each index value stands for more rows) and cost
more (more false positives to decrypt and discard); more bits the reverse.

Typical usage::

    from sa_fieldcrypt.index_planner import plan_index_sizes

    plan = plan_index_sizes(1_000_000, {"email": 900_000, "phone_last4": 10_000})
    plan["email"].bits        # the recommended size of the email index, in bits
    plan.coincidence          # rows expected to share each combination of index values

The rule is CipherSweet's (its ``FieldIndexPlanner``). With ``R`` rows and, for each index
``i`` of the column, ``L_i`` output bits over ``D_i`` distinct values, an index separates at
most ``min(L_i, log2 D_i)`` bits of information, so every combination of index values of the
column is shared by about ``R / 2 ** sum(min(L_i, log2 D_i))`` rows, the *coincidence count*.
An attacker who reads the table sees all of a row's index values at once, so it is this
combined count, not one index's, that must stay at or above two (``min_coincidence``): then
no row is singled out by its index values. Bits beyond ``log2 D_i`` would not change the count,
so an index never needs more than that (rounded up to :data:`BITS_STEP`).

The plan sizes every index it is given, so its guarantee holds only for a column with no
full-size index: one beside the planned ones separates its own ``log2 D_i`` bits, and over
near-unique values (a full-size index of whole phone numbers) it groups the rows by value
whatever sizes the others take.

The lower end of an index's range bounds the work: a lookup through index ``i`` decrypts the
``R / D_i`` rows that match plus about ``(R - R / D_i) / 2 ** L_i`` false positives, rows whose
other value has the same truncated index value. CipherSweet bounds its count by the square
root of ``R``; here the bound (``max_false_positives``, by default ``sqrt(R)``) applies to each
index's false positives, because a lookup here goes through one index.

Sizes run from ``MIN_BITS`` to ``FULL_BITS`` in steps of ``BITS_STEP`` (all three of
:mod:`sa_fieldcrypt.blind_index`): index values are stored as hex digits of four bits each, so
a size is a whole number of digits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sa_fieldcrypt.blind_index import BITS_STEP, FULL_BITS, MIN_BITS
from sa_fieldcrypt.errors import ConfigurationError

__all__ = [
    "DEFAULT_MIN_COINCIDENCE",
    "IndexPlan",
    "IndexSize",
    "plan_index_sizes",
]

#: The coincidence count CipherSweet keeps every column at or above.
DEFAULT_MIN_COINCIDENCE = 2.0

# Room for rounding in 2 ** log2(n): a plan exactly at the minimum meets it.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class IndexSize:
    """The recommended size of one index of a column, and what that size costs and leaks.

    Attributes:
        name: the index, as it was passed.
        distinct: the expected number of distinct (normalized) values it indexes.
        bits: the recommended output size in bits.
        min_bits: the fewest bits that keep its false positives per lookup within the bound,
            with the other indexes at their recommended sizes (never above ``max_bits``).
        max_bits: the most bits that keep the column's coincidence count at or above the
            minimum, with the other indexes at their recommended sizes.
        coincidence: rows expected to share each value of this index alone,
            ``rows / 2 ** min(bits, log2(distinct))``.
        candidates: rows a lookup through this index is expected to return and decrypt:
            the rows that match plus ``false_positives``.
        false_positives: rows a lookup is expected to return whose value does not match,
            ``(rows - rows / distinct) / 2 ** bits``; the hybrid decrypts and drops them.
        bounded: whether ``false_positives`` is within the plan's ``max_false_positives``.
    """

    name: str
    distinct: int
    bits: int
    min_bits: int
    max_bits: int
    coincidence: float
    candidates: float
    false_positives: float
    bounded: bool

    def to_dict(self) -> dict[str, Any]:
        """The size as JSON-ready data."""
        return {
            "name": self.name,
            "distinct": self.distinct,
            "bits": self.bits,
            "min_bits": self.min_bits,
            "max_bits": self.max_bits,
            "coincidence": self.coincidence,
            "candidates": self.candidates,
            "false_positives": self.false_positives,
            "bounded": self.bounded,
        }


@dataclass(frozen=True)
class IndexPlan:
    """Recommended sizes for every index of one column, and the column's coincidence count.

    Attributes:
        rows: the expected number of rows.
        min_coincidence: the coincidence count the plan keeps the column at or above.
        max_false_positives: the bound on each lookup's expected false positives.
        indexes: one :class:`IndexSize` per index, in the order they were passed.
        coincidence: rows expected to share each combination of the column's index values,
            ``rows / 2 ** sum(min(bits, log2(distinct)))`` over its indexes.
    """

    rows: int
    min_coincidence: float
    max_false_positives: float
    indexes: tuple[IndexSize, ...]
    coincidence: float

    @property
    def budget(self) -> float:
        """The bits the column's indexes may separate together, ``log2(rows / min_coincidence)``.

        Each index spends ``min(bits, log2(distinct))`` of it; what an attacker who reads the
        table sees is the sum over the column's indexes, not any one of them.
        """
        return math.log2(self.rows / self.min_coincidence)

    @property
    def meets_coincidence(self) -> bool:
        """Whether every combination of index values is shared by ``min_coincidence`` rows.

        False only when the table is too small for its indexes even at :data:`MIN_BITS`
        each: then index fewer distinct values, or fewer of them.
        """
        return self.coincidence >= self.min_coincidence * (1 - _TOLERANCE)

    def __getitem__(self, name: str) -> IndexSize:
        """The size planned for the index ``name``."""
        for index in self.indexes:
            if index.name == name:
                return index
        raise KeyError(name)

    def __iter__(self) -> Iterator[IndexSize]:
        """The indexes' sizes, in the order they were passed."""
        return iter(self.indexes)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return {
            "rows": self.rows,
            "min_coincidence": self.min_coincidence,
            "max_false_positives": self.max_false_positives,
            "coincidence": self.coincidence,
            "meets_coincidence": self.meets_coincidence,
            "budget": self.budget,
            "indexes": [index.to_dict() for index in self.indexes],
        }


def plan_index_sizes(
    rows: int,
    distinct: Mapping[str, int] | Sequence[int],
    *,
    min_coincidence: float = DEFAULT_MIN_COINCIDENCE,
    max_false_positives: float | None = None,
) -> IndexPlan:
    """Recommend an output size in bits for each index of one encrypted column.

    Each index starts at :data:`MIN_BITS`; then, one :data:`BITS_STEP` at a time, the index
    whose lookups return the most false positives grows, as long as the column's coincidence
    count stays at or above ``min_coincidence`` and the index is below ``log2`` of its
    distinct values (rounded up to the step). So the recommendation spends the column's
    budget of bits where it saves the most decryptions; any size from an index's ``min_bits``
    up to its recommendation is as safe, and fewer bits leak less.

    Args:
        rows: the number of rows the table holds. Pass its size now, not a future one: as
            it grows, each index value is shared by more rows, so the rule keeps holding
            while lookups decrypt more false positives; plan again then.
        distinct: each index's expected number of distinct normalized values, by index
            name, or as a sequence (named ``index 1``, ``index 2``, ...).
        min_coincidence: the fewest rows that should share each combination of the
            column's index values; CipherSweet's 2 by default. Raise it to leak less.
        max_false_positives: the most non-matching rows a lookup should decrypt, by default
            the square root of ``rows``. Sizes below ``min_bits`` exceed it.

    Returns:
        The plan: one :class:`IndexSize` per index and the column's coincidence count.

    Raises:
        ConfigurationError: ``rows`` or a count of distinct values is not a positive
            integer, a count exceeds ``rows``, no index is given, or a bound is not a finite
            number of at least 1.
    """
    _check_count("rows", rows)
    counts = _distinct_counts(distinct, rows)
    _check_bound("min_coincidence", min_coincidence)
    if max_false_positives is None:
        max_false_positives = math.sqrt(rows)
    _check_bound("max_false_positives", max_false_positives)

    names = list(counts)
    caps = {name: _grid_ceil(math.log2(counts[name])) for name in names}
    bits = dict.fromkeys(names, MIN_BITS)

    def fits(trial: Mapping[str, int]) -> bool:
        return _coincidence(rows, counts, trial) >= min_coincidence * (1 - _TOLERANCE)

    growing = [name for name in names if bits[name] < caps[name]]
    while growing:
        # The index whose lookups decrypt the most non-matching rows gains the next step (a
        # tie goes to the index passed first). The others only grow, so an index whose step
        # does not fit now never will.
        name = max(growing, key=lambda n: _false_positives(rows, counts[n], bits[n]))
        trial = {**bits, name: bits[name] + BITS_STEP}
        if fits(trial):
            bits = trial
            if bits[name] >= caps[name]:
                growing.remove(name)
        else:
            growing.remove(name)

    sizes = []
    for name in names:
        largest = _largest_fitting(name, bits, caps[name], fits)
        smallest = _fewest_bounded(rows, counts[name], max_false_positives, largest)
        false_positives = _false_positives(rows, counts[name], bits[name])
        sizes.append(
            IndexSize(
                name=name,
                distinct=counts[name],
                bits=bits[name],
                min_bits=smallest,
                max_bits=largest,
                coincidence=_coincidence(rows, {name: counts[name]}, {name: bits[name]}),
                candidates=rows / counts[name] + false_positives,
                false_positives=false_positives,
                bounded=false_positives <= max_false_positives,
            )
        )
    return IndexPlan(
        rows=rows,
        min_coincidence=float(min_coincidence),
        max_false_positives=float(max_false_positives),
        indexes=tuple(sizes),
        coincidence=_coincidence(rows, counts, bits),
    )


def _grid_ceil(bits: float) -> int:
    """The smallest allowed size of at least ``bits``."""
    steps = math.ceil(bits / BITS_STEP - _TOLERANCE)
    return min(FULL_BITS, max(MIN_BITS, steps * BITS_STEP))


def _coincidence(rows: int, counts: Mapping[str, int], bits: Mapping[str, int]) -> float:
    """CipherSweet's coincidence count: rows per combination of the indexes' values."""
    exponent = sum(min(float(bits[name]), math.log2(counts[name])) for name in bits)
    return rows / 2.0**exponent


def _false_positives(rows: int, distinct: int, bits: int) -> float:
    """Rows of other values expected to share a looked-up value's truncated index value."""
    return (rows - rows / distinct) / 2.0**bits


def _largest_fitting(
    name: str, bits: Mapping[str, int], cap: int, fits: Callable[[Mapping[str, int]], bool]
) -> int:
    """The most bits ``name`` may have, the others as planned, within ``cap``."""
    largest = MIN_BITS
    for size in range(MIN_BITS, cap + 1, BITS_STEP):
        if fits({**bits, name: size}):
            largest = size
    return largest


def _fewest_bounded(rows: int, distinct: int, bound: float, largest: int) -> int:
    """The fewest bits whose false positives are within ``bound``, at most ``largest``."""
    for size in range(MIN_BITS, largest + 1, BITS_STEP):
        if _false_positives(rows, distinct, size) <= bound:
            return size
    return largest


def _check_count(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive integer, got {value!r}")


def _check_bound(what: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 1
    ):
        raise ConfigurationError(f"{what} must be a finite number of at least 1, got {value!r}")


def _distinct_counts(distinct: Mapping[str, int] | Sequence[int], rows: int) -> dict[str, int]:
    """The distinct counts by index name, checked."""
    if isinstance(distinct, Mapping):
        counts = dict(distinct)
    elif isinstance(distinct, Sequence) and not isinstance(distinct, str | bytes):
        counts = {f"index {number}": count for number, count in enumerate(distinct, start=1)}
    else:
        raise ConfigurationError(
            "distinct must map each index name to its expected number of distinct values, "
            f"for example {{'email': 90000}}; got {type(distinct).__name__}"
        )
    if not counts:
        raise ConfigurationError(
            "pass the expected number of distinct values of at least one index"
        )
    for name, count in counts.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"index names must be non-empty strings, got {name!r}")
        _check_count(f"the distinct values of index {name!r}", count)
        if count > rows:
            raise ConfigurationError(
                f"index {name!r} cannot have more distinct values ({count}) than the table has "
                f"rows ({rows}): pass the rows the table is expected to hold"
            )
    return counts

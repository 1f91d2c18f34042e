"""Exact filtering of the candidates that truncated and substring indexes find.

A truncated blind index (``bits=``) or a substring index finds candidate rows: every match,
and some rows that merely share an index value with the term. Its condition is wrapped in
:class:`Candidates`, which compiles to the condition itself and counts itself on the compiled
statement. The first one built installs two listeners (:func:`install_filtering`):

- ``do_orm_execute`` on :class:`~sqlalchemy.orm.Session` finds the marks in an ORM select's
  WHERE clause, runs it, and keeps the rows whose decrypted value hashes (at full size) as a
  term does, or contains the term;
- ``before_cursor_execute`` on :class:`~sqlalchemy.engine.Engine` lets a compiled statement
  with marks run only when it is the very statement the ORM hook filtered and its SQL holds
  no marks besides the ones the hook checked: a mark anywhere else (a loader option, a
  subquery, a relationship load that inherited the parent's options, a Core statement) is
  refused, since candidates must never pass for matches.

Both return at once for statements without a mark.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, Result, Select, event, false
from sqlalchemy import types as sqltypes
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql import ClauseElement, operators, visitors
from sqlalchemy.sql.elements import BooleanClauseList, ColumnElement, Grouping
from sqlalchemy.sql.operators import OperatorType
from sqlalchemy.sql.visitors import InternalTraversal

from sa_fieldcrypt.blind_index import BlindIndex, SubstringIndex
from sa_fieldcrypt.errors import UnsupportedComparisonError

__all__ = [
    "Candidates",
    "ContainsMatch",
    "IndexTarget",
    "index_condition",
    "install_filtering",
    "operator_name",
]


@dataclass(frozen=True, slots=True)
class IndexTarget:
    """One blind index as a query sees it: its column on an entity, and what it indexes."""

    entity: Any  # the mapped class or aliased class compared
    owner: str  # "Customer.phone", for messages
    column: str  # attribute of the index column
    label: str  # "core.customers.phone_last4", for messages
    blind_index: BlindIndex  # bound: named, its source column set
    # A loaded instance's value that the index is of; True: check the row's stored indexes.
    read: Callable[[Any, bool], Any]


def index_condition(
    target: IndexTarget, op: OperatorType, other: Any, *, term: bool
) -> ColumnElement[bool]:
    """Return the SQL condition of ``<index> <op> other``: exact at full size, else candidates.

    ``op`` is ``==``, ``!=``, ``in_()`` or ``not_in()``; ``other`` a plaintext value (or a
    list of them), read as a query term of what the index holds when ``term``, else as a
    whole value. A truncated index's condition is a :class:`Candidates`, which the ORM
    filters to the exact matches.

    Raises:
        UnsupportedComparisonError: ``other`` is an SQL expression, not a list for
            ``in_()``, or ``!=`` and ``not_in()`` on a truncated index.
    """
    blind_index = target.blind_index
    normalize = blind_index.normalize_term if term else blind_index.normalize
    if op in (operators.eq, operators.ne):
        _require_value(target.owner, op, other)
        items = [other]
    else:
        if not _is_collection(other):
            raise UnsupportedComparisonError(
                f"{target.owner}: {operator_name(op)} needs a list of plaintext values; a "
                "blind index cannot be computed inside SQL (subqueries, bound parameters)"
            )
        items = []
        for item in other:
            if item is None:
                continue  # as in SQL, NULL in an IN list matches nothing
            _require_value(target.owner, op, item)
            items.append(item)
    negated = op in (operators.ne, operators.not_in_op)
    if negated and blind_index.truncated:
        raise UnsupportedComparisonError(
            f"{target.label}: {operator_name(op)} cannot run on a truncated blind index "
            f"({blind_index.bits} bits): rows that only share its index value with the term "
            "would be left out. Select the candidates of == and leave out the matches in "
            "Python, or use a full-size index"
        )
    data = [d for d in map(normalize, items) if d is not None]
    values = tuple(dict.fromkeys(h for d in data for h in blind_index.hashes(d)))
    index = getattr(target.entity, target.column)
    if not values:
        # Not indexed (e.g. an empty email): it matches no row, like SQL NULL.
        return cast("ColumnElement[bool]", index.is_not(None) if negated else false())
    if len(values) == 1:
        condition = index != values[0] if negated else index == values[0]
    else:
        condition = index.not_in(values) if negated else index.in_(values)
    if not blind_index.truncated:
        return cast("ColumnElement[bool]", condition)
    primary = blind_index.active_keyring().primary.id
    digests = tuple(dict.fromkeys(blind_index.digest(d, primary) for d in data))
    install_filtering()
    return Candidates(condition, _ExactMatch(target, primary, digests))


def _require_value(owner: str, op: OperatorType, value: Any) -> None:
    parts = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, ClauseElement) or hasattr(v, "__clause_element__") for v in parts):
        raise UnsupportedComparisonError(
            f"{owner}: {operator_name(op)} needs a plaintext Python value; a "
            "blind index cannot be computed from an SQL expression or another column"
        )


#: Execution option the ORM hook sets on the statement it filters: a _Filtered.
_FILTERED = "sa_fieldcrypt_filtered"
# Attribute of a compiled statement: how many truncated-index conditions its SQL holds.
_MARKED = "_sa_fieldcrypt_candidates"


@dataclass(frozen=True, eq=False, slots=True)
class _Filtered:
    """What the ORM hook filters: one statement, and the marks it checks in its WHERE clause."""

    statement: Any
    marks: int


@dataclass(frozen=True, eq=False, slots=True)
class _ExactMatch:
    """How to tell a candidate row from a match: the terms' full-size index values."""

    target: IndexTarget
    key_id: str  # the index key the digests are under
    digests: tuple[str, ...]  # full HMACs of the terms: no plaintext is kept

    @property
    def entity(self) -> Any:
        """The mapped class or aliased class whose objects are filtered."""
        return self.target.entity

    @property
    def label(self) -> str:
        """The index, for messages."""
        return self.target.label

    def keeps(self, instance: Any) -> bool:
        """Whether the loaded ``instance`` matches one of the terms (constant-time compares).

        The match is decided on the decrypted value before the row's stored indexes are
        checked against it, so a stale or altered row among the candidates raises
        :class:`~sa_fieldcrypt.DecryptionError` only when it would be returned.
        """
        if instance is None:
            return False
        blind_index = self.target.blind_index
        data = blind_index.normalize(self.target.read(instance, False))
        if data is None:
            return False
        digest = blind_index.digest(data, self.key_id).encode("ascii")
        found = False
        for term in self.digests:
            found |= hmac.compare_digest(digest, term.encode("ascii"))
        if found:
            self.target.read(instance, True)  # the read-time index check, for a match
        return found


@dataclass(frozen=True, eq=False, slots=True)
class ContainsMatch:
    """How to tell a substring index's candidate from a match: the term's full HMAC."""

    entity: Any
    label: str
    read: Callable[[Any, bool], Any]
    index: SubstringIndex
    key_id: str
    digest: bytes  # full HMAC of the normalized term: no plaintext is kept
    length: int  # of the normalized term, in characters

    def keeps(self, instance: Any) -> bool:
        """Whether the loaded ``instance``'s normalized value contains the normalized term."""
        if instance is None:
            return False
        text = self.index.normalize(self.read(instance, False))
        if text is None or not self.index.contains(text, self.length, self.digest, self.key_id):
            return False
        self.read(instance, True)  # the read-time index check, for a match
        return True


class Candidates(ColumnElement[bool]):
    """A truncated or substring index's condition: true for every match, and for some other rows."""

    __visit_name__ = "sa_fieldcrypt_candidates"
    inherit_cache = False  # the cache key is the condition's: see _cache_key_traversal
    # Lists, as SQLAlchemy declares them; never mutated.
    _traverse_internals = [("clause", InternalTraversal.dp_clauseelement)]  # noqa: RUF012
    # The terms (in ``exact``) are not part of the SQL, only of its filtering.
    _cache_key_traversal = [("clause", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, clause: ColumnElement[bool], exact: _ExactMatch | ContainsMatch):
        self.clause = clause
        self.exact = exact
        self.type = sqltypes.Boolean()

    @property
    def _from_objects(self) -> list[Any]:
        return self.clause._from_objects

    def self_group(self, against: OperatorType | None = None) -> ColumnElement[Any]:
        # A condition already (not a boolean value to compare with true), as its clause is.
        if against in (None, operators.and_, operators.or_, operators._asbool):
            return self
        return Grouping(self)

    def _negate(self) -> ColumnElement[Any]:
        raise UnsupportedComparisonError(
            f"{self.exact.label}: NOT of a truncated or substring index's condition "
            "cannot be filtered exactly (rows that only share its index value would be left "
            "out)"
        )


@compiles(Candidates)
def _compile_candidates(element: Candidates, compiler: Any, **kw: Any) -> str:
    setattr(compiler, _MARKED, getattr(compiler, _MARKED, 0) + 1)
    return cast("str", compiler.process(element.clause, **kw))


def install_filtering() -> None:
    """Listen, once per process, to every Session's ORM executions and every Engine's cursor.

    Installed when the first truncated index's condition is built; both listeners return at
    once for statements without one.
    """
    if not event.contains(Session, "do_orm_execute", _filter_candidates):
        event.listen(Session, "do_orm_execute", _filter_candidates)
    if not event.contains(Engine, "before_cursor_execute", _refuse_unfiltered):
        event.listen(Engine, "before_cursor_execute", _refuse_unfiltered)


def _refuse_unfiltered(
    conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool
) -> None:
    compiled = getattr(context, "compiled", None)
    marks = getattr(compiled, _MARKED, 0)
    if not marks:
        return
    filtered = context.execution_options.get(_FILTERED)
    if (
        isinstance(filtered, _Filtered)
        and filtered.statement is context.invoked_statement
        and filtered.marks == marks
    ):
        return
    if isinstance(filtered, _Filtered):
        # An ORM statement: the mark is in a loader option, or in a load the ORM derived.
        raise UnsupportedComparisonError(
            "this statement compares a truncated or substring index, whose matches are only "
            "candidates, in SQL the Session does not filter: a loader option "
            "(joinedload/selectinload(... .and_(...)), with_loader_criteria()) or a load "
            "derived from the statement (subqueryload, a relationship or deferred column "
            "load). Filter only in the WHERE clause of select(<mapped class>), and load "
            "related objects without truncated conditions (select them and filter in Python)"
        )
    raise UnsupportedComparisonError(
        "this statement compares a truncated or substring index, whose matches are only "
        "candidates, and it runs outside a Session (Core), where nothing filters them; "
        "run select(<mapped class>).where(...) through a Session instead"
    )


def _conjuncts(clause: Any) -> Iterator[Any]:
    """The terms ANDed together at the top of a WHERE clause."""
    if clause is None:
        return
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        for inner in clause.clauses:
            yield from _conjuncts(inner)
    else:
        yield clause


def _is_loader_load(state: ORMExecuteState) -> bool:
    """Whether the ORM runs this statement to load columns or a relationship of objects."""
    try:
        return state.is_column_load or state.is_relationship_load
    except AttributeError:
        # Early SQLAlchemy 2.0 releases raise this for a statement that is no ORM select (a UNION):
        # not a load of the ORM's.
        return False


def _filter_candidates(state: ORMExecuteState) -> Result[Any] | None:
    """Run an ORM statement holding truncated-index conditions; keep only the exact matches."""
    statement = state.statement
    marks = [e for e in visitors.iterate(cast(Any, statement)) if isinstance(e, Candidates)]
    if not marks or _is_loader_load(state):
        # Nothing filtered here; a mark elsewhere (in a loader option, or in a load the ORM
        # derived) is refused by the cursor hook, which this tells the statement is ORM's.
        state.update_execution_options(**{_FILTERED: _Filtered(statement, 0)})
        return None
    label = marks[0].exact.label
    if not state.is_select:
        raise UnsupportedComparisonError(
            f"{label}: a truncated or substring index finds candidates, which only a SELECT of "
            "entities can filter; an UPDATE or DELETE would change rows that merely share "
            "its index value. Select the objects, then change or delete them"
        )
    if not isinstance(statement, Select):
        raise UnsupportedComparisonError(
            f"{label}: a truncated or substring index's candidates can be filtered in a plain "
            "select() of entities, not in a UNION or other compound select"
        )
    top = [c for c in _conjuncts(statement.whereclause) if isinstance(c, Candidates)]
    # Compared as lists: one condition object used twice (also in a subquery) counts twice.
    if len(marks) != len(top) or {id(m) for m in marks} != {id(c) for c in top}:
        raise UnsupportedComparisonError(
            f"{label}: a truncated or substring index's condition can be filtered exactly only as "
            "a term ANDed into the WHERE clause of the statement itself, not under OR or "
            "NOT, in a join condition, HAVING or a subquery"
        )
    if any(
        getattr(statement, part, None) is not None
        for part in ("_limit_clause", "_offset_clause", "_fetch_clause")
    ) or bool(statement._group_by_clauses):
        raise UnsupportedComparisonError(
            f"{label}: LIMIT, OFFSET and GROUP BY would count or group the candidates of a "
            "truncated or substring index, not its matches; drop them and slice or group the "
            "results in Python"
        )
    positions = []
    described = statement.column_descriptions
    for candidates in top:
        entity = candidates.exact.entity
        found = [i for i, d in enumerate(described) if d.get("expr") is entity]
        if not found:
            raise UnsupportedComparisonError(
                f"{label}: a truncated or substring index finds candidates, which are filtered by "
                f"decrypting the {getattr(entity, '__name__', 'entity')} objects selected; "
                "this statement selects columns only (or counts), so its rows could not be "
                "checked. Select the entity: select(<mapped class>).where(...)"
            )
        positions.append((found[0], candidates.exact))
    populate = state.execution_options.get("populate_existing")
    if populate or state.load_options._populate_existing or statement._for_update_arg is not None:
        raise UnsupportedComparisonError(
            f"{label}: populate_existing and with_for_update() would act on every candidate of "
            "a truncated or substring index (overwriting unsaved changes of objects it does not "
            "return, locking rows that merely share its index value); select the objects "
            "first, then refresh or lock the matches by primary key"
        )
    filtered = _Filtered(statement, len(top))
    result = state.invoke_statement(execution_options={_FILTERED: filtered})
    # A joined eager load of a collection makes a result require unique(); a result rebuilt
    # from rows loses that guard, so it is carried over (SQLAlchemy keeps it there).
    unique = getattr(result, "_unique_filter_state", None)
    frozen = result.freeze()
    rows = [row for row in frozen().all() if all(match.keeps(row[i]) for i, match in positions)]
    kept = frozen.with_new_rows(rows)()
    if unique is not None:
        kept._unique_filter_state = unique
    return kept


def operator_name(op: OperatorType) -> str:
    """Return how messages name a comparison operator: ``==``, ``in_()``, or its name."""
    return {
        operators.eq: "==",
        operators.ne: "!=",
        operators.in_op: "in_()",
        operators.not_in_op: "not_in()",
    }.get(op, getattr(op, "__name__", str(op)))


def _is_collection(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset))

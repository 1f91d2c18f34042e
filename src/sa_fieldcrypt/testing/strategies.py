"""Hypothesis strategies of plaintexts and keyrings, for property tests of encrypted models.

Typical usage::

    from hypothesis import given
    from sa_fieldcrypt.testing import text_plaintexts

    @given(text_plaintexts())
    def test_round_trip(session, value):
        ...

``hypothesis`` is imported only when a strategy is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sa_fieldcrypt.keys import PURPOSE_KINDS, KeyKind, Keyring, Purpose, generate_key

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["bytes_plaintexts", "json_plaintexts", "keyrings", "text_plaintexts"]


def text_plaintexts() -> SearchStrategy[str]:
    """Any Python string: all of Unicode, NUL, astral characters and lone surrogates."""
    from hypothesis import strategies as st

    return st.text(alphabet=st.characters(codec=None))


def bytes_plaintexts() -> SearchStrategy[bytes]:
    """Any bytes, empty included."""
    from hypothesis import strategies as st

    return st.binary()


def json_plaintexts() -> SearchStrategy[Any]:
    """Any JSON value that round-trips exactly (finite floats, str keys); never None."""
    from hypothesis import strategies as st

    scalars = (
        st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text_plaintexts()
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(text_plaintexts(), children, max_size=5)
        ),
        max_leaves=20,
    )


def keyrings(
    *,
    max_keys: int = 4,
    kinds: Iterable[KeyKind] | None = None,
    purpose: Purpose = "encryption",
) -> SearchStrategy[Keyring]:
    """Keyrings of ``purpose`` with 1 to ``max_keys`` fresh keys, any of them primary.

    Args:
        max_keys: the most keys a keyring holds.
        kinds: the kinds to draw keys from; by default every kind of ``purpose``.
        purpose: ``"encryption"`` or ``"blind-index"``.
    """
    from hypothesis import strategies as st

    ids = st.lists(
        st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
        min_size=1,
        max_size=max_keys,
        # A blind-index keyring refuses ids that differ only in case.
        unique_by=str.lower,
    )
    kind = st.sampled_from(tuple(PURPOSE_KINDS[purpose] if kinds is None else kinds))

    @st.composite
    def build(draw: st.DrawFn) -> Keyring:
        key_ids = draw(ids)
        primary = draw(st.sampled_from(key_ids))
        return Keyring(
            {kid: generate_key(draw(kind)) for kid in key_ids}, primary=primary, purpose=purpose
        )

    return build()

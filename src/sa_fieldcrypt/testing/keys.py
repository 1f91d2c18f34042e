"""Process default keys for the length of a test, then the previous ones again.

Typical usage::

    from sa_fieldcrypt import Keyring, generate_key
    from sa_fieldcrypt.testing import temporary_keys

    with temporary_keys(Keyring({"k1": generate_key()})):
        ...   # columns without keys of their own use k1 here
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sa_fieldcrypt.config import as_key_cache, swap_default_keys
from sa_fieldcrypt.keys import Keyring, Purpose, generate_key
from sa_fieldcrypt.providers.base import KeyProvider

__all__ = ["fresh_blind_index_keyring", "fresh_keyring", "temporary_keys"]


@contextmanager
def temporary_keys(
    source: Keyring | KeyProvider, *, purpose: Purpose = "encryption"
) -> Iterator[None]:
    """Make ``source`` the process default keys of ``purpose`` inside the block, then restore.

    Raises:
        ConfigurationError: ``source`` is a keyring of another purpose.
    """
    previous = swap_default_keys(as_key_cache(source, purpose=purpose), purpose=purpose)
    try:
        yield
    finally:
        swap_default_keys(previous, purpose=purpose)


def fresh_keyring() -> Keyring:
    """A new two-key keyring: ``k2`` primary, ``k1`` decrypt-only (what the fixture installs)."""
    return Keyring({"k2": generate_key(), "k1": generate_key()})


def fresh_blind_index_keyring() -> Keyring:
    """A new one-key blind-index keyring, ``b1`` (what the fixture installs)."""
    return Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")

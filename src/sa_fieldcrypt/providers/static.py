"""A provider that always returns the keyring it was given."""

from __future__ import annotations

from sa_fieldcrypt.keys import Keyring

__all__ = ["StaticKeyProvider"]


class StaticKeyProvider:
    """Serve a fixed :class:`~sa_fieldcrypt.Keyring`, for tests and hand-built setups.

    Args:
        keyring: the keyring to serve.
    """

    cache_ttl: float | None = None

    def __init__(self, keyring: Keyring):
        self.keyring = keyring

    def load(self) -> Keyring:
        """Return the keyring given at construction."""
        return self.keyring

    def __repr__(self) -> str:
        return f"StaticKeyProvider({self.keyring!r})"

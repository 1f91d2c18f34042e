"""The key-provider protocol, and the cache every provider is read through.

A provider is anything with a ``load() -> Keyring`` method; it serves keys of one purpose
(encryption keys, or blind-index keys), and the same backends serve both. The library never
calls ``load()`` per value: it reads providers through a :class:`KeyCache`, which loads once,
reloads after the provider's ``cache_ttl`` (seconds; optional attribute, None means never),
and reloads early, at most once per ``min_refresh_interval``, when a token names a key id it
does not hold, so a key added elsewhere is picked up without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from sa_fieldcrypt.errors import ConfigurationError, FieldCryptError, KeyProviderError
from sa_fieldcrypt.keys import PURPOSES, Keyring, Purpose

__all__ = ["KeyCache", "KeyProvider"]

logger = logging.getLogger("sa_fieldcrypt")


@runtime_checkable
class KeyProvider(Protocol):
    """Something that can load the current keyring (of encryption or blind-index keys).

    Providers may also define ``cache_ttl: float | None``: how long a loaded keyring stays
    fresh. Without it, a keyring is loaded once and refreshed only on an unknown key id.
    """

    def load(self) -> Keyring:
        """Load and return the current keyring; may block (network, files)."""
        ...


class KeyCache:
    """Serve a provider's keyring from memory, refreshing it as configured.

    Thread-safe: one thread loads while the others keep serving the previous keyring (or
    wait, on the very first load).

    Args:
        provider: where keys come from.
        purpose: what the keys are for; a loaded keyring of another purpose is refused.
        min_refresh_interval: the least time, in seconds, between two refreshes triggered by
            unknown key ids, and the wait before retrying a failed refresh, so neither a
            stream of bad tokens nor an outage can hammer the provider.
        clock: a monotonic clock in seconds; tests inject their own.

    Raises:
        ConfigurationError: ``purpose`` is not one of :data:`~sa_fieldcrypt.keys.PURPOSES`.
    """

    def __init__(
        self,
        provider: KeyProvider,
        *,
        purpose: Purpose = "encryption",
        min_refresh_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if purpose not in PURPOSES:
            raise ConfigurationError(f"KeyCache: purpose must be one of {', '.join(PURPOSES)}")
        self.provider = provider
        self.purpose: Purpose = purpose
        self._label = "key provider" if purpose == "encryption" else f"{purpose} key provider"
        ttl = getattr(provider, "cache_ttl", None)
        self._ttl: float | None = None if ttl is None else float(ttl)
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._keyring: Keyring | None = None
        self._fresh_until = float("-inf")
        self._last_miss_refresh = float("-inf")

    def get(self) -> Keyring:
        """Return the cached keyring, loading or refreshing it when due."""
        keyring = self._keyring
        if keyring is not None and (self._ttl is None or self._clock() < self._fresh_until):
            return keyring
        return self._reload(force=False)

    def refresh(self) -> Keyring:
        """Load the keyring now, whatever its age."""
        return self._reload(force=True)

    def refresh_for_key(self, key_id: str) -> Keyring | None:
        """Refresh because a token named ``key_id``; return the new keyring if it has it.

        Returns None, without calling the provider, when the last such refresh was less than
        ``min_refresh_interval`` ago.
        """
        with self._lock:
            now = self._clock()
            if now - self._last_miss_refresh < self._min_refresh_interval:
                keyring = self._keyring
                return keyring if keyring is not None and key_id in keyring else None
            self._last_miss_refresh = now
        keyring = self._reload(force=True)
        return keyring if key_id in keyring else None

    def _reload(self, *, force: bool) -> Keyring:
        with self._lock:
            stale = self._keyring
            if (
                not force
                and stale is not None
                and (self._ttl is None or self._clock() < self._fresh_until)
            ):
                return stale  # another thread refreshed while this one waited
            try:
                keyring = self._load()
            except FieldCryptError as exc:
                if stale is None:
                    raise
                # Serving the previous keys keeps the application up through a provider
                # outage; the next attempt waits a full interval so the outage is not hammered.
                logger.warning(
                    "sa_fieldcrypt: %s %s failed to refresh (%s); "
                    "still serving the previously loaded keys",
                    self._label,
                    type(self.provider).__name__,
                    exc,
                )
                self._fresh_until = self._clock() + (self._ttl or self._min_refresh_interval)
                return stale
            self._keyring = keyring
            if self._ttl is not None:
                self._fresh_until = self._clock() + self._ttl
            return keyring

    def _load(self) -> Keyring:
        name = type(self.provider).__name__
        try:
            loaded = self.provider.load()
        except FieldCryptError:
            raise
        except Exception as exc:
            # The foreign message may quote what the provider read; only its type is shown
            # here, the full exception stays chained for a debugger.
            raise KeyProviderError(
                f"{self._label} {name} failed to load keys "
                f"({type(exc).__name__}); see the chained exception for details"
            ) from exc
        if not isinstance(loaded, Keyring):
            raise KeyProviderError(
                f"{self._label} {name}.load() returned {type(loaded).__name__}, not a Keyring"
            )
        if loaded.purpose != self.purpose:
            raise KeyProviderError(
                f"{self._label} {name}.load() returned a keyring of {loaded.purpose} keys, "
                f"where {self.purpose} keys are needed; serve a Keyring(..., "
                f"purpose={self.purpose!r}) from it, or configure it for purpose "
                f"{loaded.purpose!r}"
            )
        return loaded

    def __repr__(self) -> str:
        return f"KeyCache({self.provider!r}, purpose={self.purpose!r})"

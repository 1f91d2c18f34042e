"""The key-provider protocol, and the cache every provider is read through.

A provider is anything with a ``load() -> Keyring`` method. The library never calls ``load()``
per value: it reads providers through a :class:`KeyCache`, which loads once, reloads after the
provider's ``cache_ttl`` (seconds; optional attribute, None means never), and reloads early,
at most once per ``min_refresh_interval``, when a token names a key id it does not hold, so a
key added elsewhere is picked up without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from sa_fieldcrypt.errors import FieldCryptError, KeyProviderError
from sa_fieldcrypt.keys import Keyring

__all__ = ["KeyCache", "KeyProvider"]

logger = logging.getLogger("sa_fieldcrypt")

#: What a cache serves: a Keyring, or the blind-index keyring.
K = TypeVar("K")


@runtime_checkable
class KeyProvider(Protocol):
    """Something that can load the current keyring.

    Providers may also define ``cache_ttl: float | None``: how long a loaded keyring stays
    fresh. Without it, a keyring is loaded once and refreshed only on an unknown key id.
    """

    def load(self) -> Keyring:
        """Load and return the current keyring; may block (network, files)."""
        ...


class KeyCache(Generic[K]):
    """Serve a provider's keyring from memory, refreshing it as configured.

    Thread-safe: one thread loads while the others keep serving the previous keyring (or
    wait, on the very first load).

    Args:
        provider: where keys come from.
        min_refresh_interval: the least time, in seconds, between two refreshes triggered by
            unknown key ids, and the wait before retrying a failed refresh, so neither a
            stream of bad tokens nor an outage can hammer the provider.
        clock: a monotonic clock in seconds; tests inject their own.
        kind: the type ``load()`` must return (the blind-index keys use their own).
        label: what the provider is called in messages.
    """

    def __init__(
        self,
        provider: Any,
        *,
        min_refresh_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        kind: type[K] = Keyring,  # type: ignore[assignment]
        label: str = "key provider",
    ):
        self.provider = provider
        self._kind = kind
        self._label = label
        ttl = getattr(provider, "cache_ttl", None)
        self._ttl: float | None = None if ttl is None else float(ttl)
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._keyring: K | None = None
        self._fresh_until = float("-inf")
        self._last_miss_refresh = float("-inf")

    def get(self) -> K:
        """Return the cached keyring, loading or refreshing it when due."""
        keyring = self._keyring
        if keyring is not None and (self._ttl is None or self._clock() < self._fresh_until):
            return keyring
        return self._reload(force=False)

    def refresh(self) -> K:
        """Load the keyring now, whatever its age."""
        return self._reload(force=True)

    def refresh_for_key(self, key_id: str) -> K | None:
        """Refresh because a token named ``key_id``; return the new keyring if it has it.

        Returns None, without calling the provider, when the last such refresh was less than
        ``min_refresh_interval`` ago.
        """
        with self._lock:
            now = self._clock()
            if now - self._last_miss_refresh < self._min_refresh_interval:
                keyring = self._keyring
                return keyring if keyring is not None and key_id in keyring else None  # type: ignore[operator]
            self._last_miss_refresh = now
        keyring = self._reload(force=True)
        return keyring if key_id in keyring else None  # type: ignore[operator]

    def _reload(self, *, force: bool) -> K:
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

    def _load(self) -> K:
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
        if not isinstance(loaded, self._kind):
            raise KeyProviderError(
                f"{self._label} {name}.load() returned {type(loaded).__name__}, "
                f"not a {self._kind.__name__}"
            )
        return loaded

"""The key-provider protocol, and the cache every provider is read through.

A provider is anything with a ``load() -> Keyring`` method; it serves keys of one purpose
(encryption keys, or blind-index keys), and the same backends serve both. The library never
calls ``load()`` per value: it reads providers through a :class:`KeyCache`, which loads once,
reloads after the provider's ``cache_ttl`` (seconds; optional attribute, None means never),
and reloads early, at most once per ``min_refresh_interval``, when a token names a key id it
does not hold, so a key added elsewhere is picked up without a restart.

A cache that refreshes fails safe. When a refresh fails it keeps serving the keys it holds,
but only until they are ``max_stale`` seconds old (the provider's optional attribute,
:data:`DEFAULT_MAX_STALE` when absent, None for no bound, only if asked for): past that it
raises :class:`~sa_fieldcrypt.errors.KeyProviderError` instead, until a load succeeds again,
so a key disabled at the source stops working within ``max_stale`` even through an outage.

Caches are also where the two purposes' keys meet: a cache refuses to serve a keyring holding
a secret that a cache of the other purpose serves (an encryption key reused as a blind-index
key, or the reverse), whichever provider either came from. The check runs once per load,
against the keys the other caches hold at that moment, so a process that only encrypts never
needs index keys.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from sa_fieldcrypt import metrics
from sa_fieldcrypt.errors import ConfigurationError, FieldCryptError, KeyProviderError
from sa_fieldcrypt.keys import PURPOSES, Key, Keyring, Purpose

__all__ = ["DEFAULT_MAX_STALE", "KeyCache", "KeyProvider", "check_max_stale"]

#: How old (seconds since the last successful load) keys may grow while refreshes fail,
#: for a provider that does not set ``max_stale``: a day.
DEFAULT_MAX_STALE = 24 * 3600.0

logger = logging.getLogger("sa_fieldcrypt")

# Every cache alive, and the lock under which each checks and installs what it loaded: two
# caches loading at once cannot both miss the secret they share.
_serving_lock = threading.Lock()
_caches: weakref.WeakSet[KeyCache] = weakref.WeakSet()


@runtime_checkable
class KeyProvider(Protocol):
    """Something that can load the current keyring (of encryption or blind-index keys).

    Providers may also define ``cache_ttl: float | None``: how long a loaded keyring stays
    fresh. Without it, a keyring is loaded once and refreshed only on an unknown key id.
    With it, ``max_stale: float | None`` bounds how old keys may grow while refreshes fail
    (:data:`DEFAULT_MAX_STALE` when absent), and ``max_stale_setting: str`` names the
    setting it comes from in messages (``"FIELDCRYPT_GCP_MAX_STALE"``). ``source: str``
    names where the keys come from, without secrets, in messages and
    :mod:`~sa_fieldcrypt.metrics` (by default the class name).
    """

    def load(self) -> Keyring:
        """Load and return the current keyring; may block (network, files)."""
        ...


def check_max_stale(
    max_stale: object,
    cache_ttl: float | None,
    *,
    stale_name: str = "max_stale",
    ttl_name: str = "cache_ttl",
) -> float | None:
    """Return ``max_stale`` as seconds (or None), refusing a bound the cache could not keep.

    Args:
        max_stale: seconds, or None for no bound.
        cache_ttl: the refresh interval it bounds; None when the keys are loaded once.
        stale_name: how messages name ``max_stale`` (a parameter, a setting).
        ttl_name: how messages name ``cache_ttl``.

    Raises:
        ConfigurationError: ``max_stale`` is not a positive number of seconds, or is shorter
            than ``cache_ttl`` (the keys would go stale before they are due for a refresh).
    """
    if max_stale is None:
        return None
    if isinstance(max_stale, bool) or not isinstance(max_stale, int | float):
        raise ConfigurationError(
            f"{stale_name} must be a number of seconds, or None for no bound, "
            f"not {type(max_stale).__name__}"
        )
    if not max_stale > 0:
        raise ConfigurationError(f"{stale_name} must be > 0 seconds, or None for no bound")
    if cache_ttl is not None and max_stale < cache_ttl:
        raise ConfigurationError(
            f"{stale_name} ({max_stale:g} s) is shorter than {ttl_name} ({cache_ttl:g} s), so "
            f"keys would go stale before their first refresh; make it at least {ttl_name} "
            f"(by default it is {DEFAULT_MAX_STALE:g} s, a day)"
        )
    return float(max_stale)


class KeyCache:
    """Serve a provider's keyring from memory, refreshing it as configured, failing safe.

    Thread-safe: one thread loads while the others keep serving the previous keyring (or
    wait, on the very first load).

    A failed refresh keeps the previous keyring in service (logged, and counted in
    :mod:`~sa_fieldcrypt.metrics` as a key load failure) until the keys are ``max_stale``
    seconds old, counted from the last *successful* load. From then on the cache raises
    :class:`~sa_fieldcrypt.errors.KeyProviderError` and forgets the old keys; it tries the
    provider again at most once per ``min_refresh_interval``, and serves the keys of the
    first load that succeeds.

    Args:
        provider: where keys come from; its ``cache_ttl``, ``max_stale`` and ``source``
            attributes, when it has them, set the refresh interval, the staleness bound and
            the name in messages and metrics.
        purpose: what the keys are for; a loaded keyring of another purpose is refused.
        min_refresh_interval: the least time, in seconds, between two refreshes triggered by
            unknown key ids, and the wait before retrying a failed refresh once the keys are
            stale, so neither a stream of bad tokens nor an outage can hammer the provider.
        clock: a monotonic clock in seconds; tests inject their own.

    Attributes:
        source: where the keys come from, as messages and metrics name it.
        max_stale: the staleness bound in seconds; None for no bound. It applies to a
            provider with a ``cache_ttl`` only: one without is loaded once, never stale.

    Raises:
        ConfigurationError: ``purpose`` is not one of :data:`~sa_fieldcrypt.keys.PURPOSES`,
            or the provider's ``max_stale`` is not a bound the cache can keep
            (see :func:`check_max_stale`).
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
        name = type(provider).__name__
        source = getattr(provider, "source", None)
        self.source: str = source if isinstance(source, str) and source else name
        self._label = "key provider" if purpose == "encryption" else f"{purpose} key provider"
        # How messages name the provider: its label, class and, when it says, its source.
        self._who = f"{self._label} {name}" + (f" ({self.source})" if self.source != name else "")
        ttl = getattr(provider, "cache_ttl", None)
        self._ttl: float | None = None if ttl is None else float(ttl)
        default = DEFAULT_MAX_STALE if self._ttl is None else max(DEFAULT_MAX_STALE, self._ttl)
        setting = getattr(provider, "max_stale_setting", None)
        self.max_stale: float | None = check_max_stale(
            getattr(provider, "max_stale", default),
            self._ttl,
            stale_name=setting if isinstance(setting, str) else f"{name}.max_stale",
            ttl_name=f"{name}.cache_ttl",
        )
        # How messages give the bound: its value, and the setting to change it with.
        self._bound = "" if self.max_stale is None else f"{self.max_stale:g} s"
        if isinstance(setting, str) and self._bound:
            self._bound += f", {setting}"
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._keyring: Keyring | None = None
        self._loaded_at: float | None = None  # clock time of the last successful load
        self._fresh_until = float("-inf")
        self._retry_at = float("-inf")  # once stale: no attempt before this
        self._last_miss_refresh = float("-inf")
        self._last_failure = ""
        if self._ttl is not None:
            metrics.watch_key_cache(self.source, self.age)
        with _serving_lock:
            _caches.add(self)

    def get(self) -> Keyring:
        """Return the cached keyring, loading or refreshing it when due.

        Raises:
            KeyProviderError: the first load failed, or the keys are older than
                ``max_stale`` and refreshing them failed.
        """
        keyring = self._keyring
        if keyring is not None and (self._ttl is None or self._clock() < self._fresh_until):
            return keyring
        return self._reload(force=False)

    def refresh(self) -> Keyring:
        """Load the keyring now, whatever its age (a failure is handled as in :meth:`get`)."""
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

    def age(self) -> float | None:
        """Seconds since the keys were last loaded successfully; None before the first load."""
        loaded_at = self._loaded_at
        return None if loaded_at is None else self._clock() - loaded_at

    def _reload(self, *, force: bool) -> Keyring:
        with self._lock:
            held = self._keyring
            if (
                not force
                and held is not None
                and (self._ttl is None or self._clock() < self._fresh_until)
            ):
                return held  # another thread refreshed while this one waited
            if not force and held is None and self._clock() < self._retry_at:
                # Stale, and the last attempt was moments ago: refuse without calling again.
                raise self._stale_error()
            try:
                keyring = self._load()
                with _serving_lock:
                    self._refuse_shared_secrets(keyring)
                    self._keyring = keyring
            except FieldCryptError as exc:
                metrics.count_key_load_failure(self.source)
                if self._loaded_at is None:
                    raise
                return self._after_failed_refresh(held, exc)
            self._loaded_at = now = self._clock()
            self._retry_at = float("-inf")
            if self._ttl is not None:
                self._fresh_until = now + self._ttl
            return keyring

    def _after_failed_refresh(self, held: Keyring | None, exc: FieldCryptError) -> Keyring:
        """Serve ``held`` while it is younger than max_stale; past that, raise."""
        now = self._clock()
        self._last_failure = str(exc)
        deadline = self._stale_deadline()
        if held is None or now >= deadline:
            # Old keys may include one revoked at the source since: stop serving them.
            self._keyring = None
            self._retry_at = now + self._min_refresh_interval
            raise self._stale_error() from exc
        # Serving the previous keys keeps the application up through a short outage; the
        # next attempt waits a full interval, so the outage is not hammered, but never past
        # the moment the keys go stale.
        self._fresh_until = min(now + (self._ttl or self._min_refresh_interval), deadline)
        left = (
            "with no limit (max_stale=None)"
            if math.isinf(deadline)
            else f"for at most {deadline - now:.0f} s more (max_stale {self._bound})"
        )
        logger.warning(
            "sa_fieldcrypt: %s failed to refresh (%s); still serving the previously loaded "
            "keys, loaded %.0f s ago, %s",
            self._who,
            exc,
            now - (self._loaded_at or now),
            left,
        )
        return held

    def _stale_deadline(self) -> float:
        if self._ttl is None or self.max_stale is None or self._loaded_at is None:
            return math.inf
        return self._loaded_at + self.max_stale

    def _stale_error(self) -> KeyProviderError:
        age = self.age() or 0.0
        return KeyProviderError(
            f"{self._who}: the keys were last loaded {age:.0f} s ago, longer than max_stale "
            f"({self._bound}) allows, and refreshing them failed, so they are no longer "
            f"served; fix what the last failure names, and the next load that succeeds serves "
            f"keys again (last failure: {self._last_failure})"
        )

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

    def _refuse_shared_secrets(self, keyring: Keyring) -> None:
        """Raise if a key of ``keyring`` holds a secret a cache of another purpose serves."""
        # Whoever holds an index key (a reporting job, a search service) must not be able to
        # decrypt; an encryption key reused as an index key would hand that over.
        for other in list(_caches):
            held = other._keyring
            if other.purpose == self.purpose or held is None:
                continue
            for key in keyring:
                theirs = next((k for k in held if key.shares_secret_with(k)), None)
                if theirs is not None:
                    raise _shared_secret_error((key, self.source), (theirs, other.source))

    def __repr__(self) -> str:
        return f"KeyCache({self.provider!r}, purpose={self.purpose!r})"


def _shared_secret_error(*found: tuple[Key, str]) -> ConfigurationError:
    """The refusal of one secret under both purposes; ``found``: each key and its source."""
    (index, index_source), (encryption, encryption_source) = sorted(
        found, key=lambda pair: pair[0].purpose != "blind-index"
    )
    return ConfigurationError(
        f"blind-index key {index.id!r} (from {index_source}) holds the same secret as "
        f"encryption key {encryption.id!r} (from {encryption_source}); whoever holds the index "
        "key could decrypt with it: generate a separate key with `fieldcrypt keygen --kind "
        f"hmac-sha256`, serve it in place of {index.id!r}, then run `fieldcrypt reindex`"
    )

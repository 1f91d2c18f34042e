"""The provider cache: TTL refresh, refresh on unknown key ids, and outages."""

from __future__ import annotations

import logging

import pytest

from sa_fieldcrypt import ConfigurationError, KeyProviderError, Keyring, generate_key
from sa_fieldcrypt.providers import KeyCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedProvider:
    """Returns the keyrings it is given, in turn; raises when the next item is an exception."""

    def __init__(self, *results: Keyring | Exception, cache_ttl: float | None = None) -> None:
        self.results = list(results)
        self.cache_ttl = cache_ttl
        self.loads = 0

    def load(self) -> Keyring:
        self.loads += 1
        result = self.results[0] if len(self.results) == 1 else self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def _ring(*ids: str) -> Keyring:
    return Keyring({kid: generate_key() for kid in ids})


def test_loads_once_without_ttl() -> None:
    """A provider without cache_ttl is loaded once, however often keys are read."""
    provider = ScriptedProvider(_ring("k1"))
    cache = KeyCache(provider)
    for _ in range(5):
        cache.get()
    assert 1 == provider.loads


def test_ttl_expiry_reloads() -> None:
    """After cache_ttl seconds the next read loads the provider's new keyring."""
    clock = FakeClock()
    provider = ScriptedProvider(_ring("k1"), _ring("k2", "k1"), cache_ttl=300)
    cache = KeyCache(provider, clock=clock)
    assert "k1" == cache.get().primary.id
    clock.now += 299
    assert "k1" == cache.get().primary.id
    clock.now += 2
    assert "k2" == cache.get().primary.id


def test_unknown_key_refresh_is_rate_limited() -> None:
    """A token under a new key id triggers one refresh; a burst of misses does not hammer."""
    clock = FakeClock()
    provider = ScriptedProvider(_ring("k1"), _ring("k2", "k1"))
    cache = KeyCache(provider, clock=clock, min_refresh_interval=5)
    cache.get()
    refreshed = cache.refresh_for_key("k2")
    assert refreshed is not None
    assert "k2" in refreshed
    assert 2 == provider.loads
    for _ in range(10):
        assert cache.refresh_for_key("k9") is None
    assert 2 == provider.loads
    clock.now += 6
    assert cache.refresh_for_key("k9") is None
    assert 3 == provider.loads


def test_outage_after_first_load_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    """When a refresh fails, the previous keys keep serving and a warning is logged."""
    clock = FakeClock()
    provider = ScriptedProvider(_ring("k1"), ConnectionError("down"), cache_ttl=10)
    cache = KeyCache(provider, clock=clock)
    first = cache.get()
    clock.now += 11
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        assert first is cache.get()
    assert "still serving" in caplog.text


def test_outage_at_first_load_is_a_provider_error() -> None:
    """A provider failing before any keys were loaded raises KeyProviderError."""
    cache = KeyCache(ScriptedProvider(ConnectionError("no route to host")))
    with pytest.raises(KeyProviderError, match="ScriptedProvider failed to load keys"):
        cache.get()


def test_provider_returning_garbage() -> None:
    """A provider whose load() returns something else than a Keyring is reported."""
    cache = KeyCache(ScriptedProvider("not a keyring"))  # type: ignore[arg-type]
    with pytest.raises(KeyProviderError, match="not a Keyring"):
        cache.get()


def test_provider_error_text_is_not_repeated() -> None:
    """A provider's own exception text (which may quote what it read) stays out of our message."""
    secret = generate_key()
    cache = KeyCache(ScriptedProvider(ValueError(f"cannot parse {secret}")))
    with pytest.raises(KeyProviderError) as info:
        cache.get()
    message = str(info.value)
    assert secret not in message
    assert "\n" not in message
    assert "ValueError" in message


def test_a_keyring_of_another_purpose_is_refused() -> None:
    """A blind-index cache refuses encryption keys (and back), saying what to serve instead."""
    cache = KeyCache(ScriptedProvider(_ring("k1")), purpose="blind-index")
    with pytest.raises(KeyProviderError, match="blind-index key provider ScriptedProvider") as info:
        cache.get()
    assert "purpose='blind-index'" in str(info.value)
    index_ring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    with pytest.raises(KeyProviderError, match="keyring of blind-index keys, where encryption"):
        KeyCache(ScriptedProvider(index_ring)).get()


def test_unknown_purposes_are_refused() -> None:
    """A purpose other than encryption or blind-index is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="encryption, blind-index"):
        KeyCache(ScriptedProvider(_ring("k1")), purpose="signing")  # type: ignore[arg-type]

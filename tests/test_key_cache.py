"""The provider cache: TTL refresh, refresh on unknown key ids, outages and staleness."""

from __future__ import annotations

import gc
import logging

import pytest

from sa_fieldcrypt import ConfigurationError, KeyProviderError, Keyring, generate_key, metrics
from sa_fieldcrypt.providers import KeyCache
from sa_fieldcrypt.providers.base import DEFAULT_MAX_STALE


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


# -- bounded staleness ---------------------------------------------------------------------


class StaleProvider(ScriptedProvider):
    """A scripted provider that says how stale its keys may grow, and where they come from."""

    def __init__(
        self,
        *results: Keyring | Exception,
        cache_ttl: float | None,
        max_stale: float | None,
        source: str = "scripted-keys",
    ) -> None:
        super().__init__(*results, cache_ttl=cache_ttl)
        self.max_stale = max_stale
        self.source = source


def _failures() -> int:
    return metrics.snapshot().key_load_failures.get("scripted-keys", 0)


def test_failed_refreshes_serve_until_max_stale_then_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Old keys serve through failed refreshes until max_stale after the last good load."""
    clock = FakeClock()
    provider = StaleProvider(_ring("k1"), OSError("down"), cache_ttl=10, max_stale=100)
    cache = KeyCache(provider, clock=clock)
    first = cache.get()
    before = _failures()
    for step in (11, 22, 33, 99):
        clock.now = 1000 + step
        with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
            assert first is cache.get()
    assert 4 == _failures() - before
    assert "for at most 1 s more (max_stale 100 s)" in caplog.text
    clock.now = 1100
    with pytest.raises(KeyProviderError, match="loaded 100 s ago, longer than max_stale"):
        cache.get()
    assert 5 == _failures() - before


def test_the_next_refresh_is_never_scheduled_past_max_stale() -> None:
    """A failed refresh waits a TTL before the next, but never beyond the staleness bound."""
    clock = FakeClock()
    provider = StaleProvider(_ring("k1"), OSError("down"), cache_ttl=60, max_stale=90)
    cache = KeyCache(provider, clock=clock)
    cache.get()
    clock.now += 61
    cache.get()
    clock.now += 29  # 90 s after the last good load, 29 s after the failed refresh
    with pytest.raises(KeyProviderError, match="longer than max_stale"):
        cache.get()
    assert 3 == provider.loads


def test_stale_keys_are_not_retried_more_than_once_per_interval() -> None:
    """Once stale, a burst of reads makes one provider call per min_refresh_interval."""
    clock = FakeClock()
    provider = StaleProvider(_ring("k1"), OSError("down"), cache_ttl=10, max_stale=10)
    cache = KeyCache(provider, clock=clock, min_refresh_interval=5)
    cache.get()
    clock.now += 10
    for _ in range(20):
        with pytest.raises(KeyProviderError, match="no longer served"):
            cache.get()
    assert 2 == provider.loads
    clock.now += 5
    with pytest.raises(KeyProviderError, match=r"last failure: key provider .*\(OSError\)"):
        cache.get()
    assert 3 == provider.loads


def test_a_load_after_staleness_serves_again() -> None:
    """The first successful load after the keys went stale serves its keys, age zero."""
    clock = FakeClock()
    provider = StaleProvider(
        _ring("k1"),
        OSError("down"),
        _ring("k2", "k1"),
        cache_ttl=10,
        max_stale=10,
        source="scripted-recovery",
    )
    cache = KeyCache(provider, clock=clock)
    cache.get()
    clock.now += 10
    with pytest.raises(KeyProviderError):
        cache.get()
    clock.now += 5
    assert ("k2", 0.0) == (cache.get().primary.id, cache.age())
    assert 0.0 == metrics.snapshot().key_cache_age["scripted-recovery"]


def test_an_explicit_refresh_of_stale_keys_raises_too() -> None:
    """refresh() or an unknown key id's refresh of stale keys raises, not hands out old keys."""
    clock = FakeClock()
    provider = StaleProvider(_ring("k1"), OSError("down"), cache_ttl=10, max_stale=20)
    cache = KeyCache(provider, clock=clock)
    first = cache.get()
    assert first is cache.refresh()
    clock.now += 20
    with pytest.raises(KeyProviderError, match="no longer served"):
        cache.refresh()
    clock.now += 5
    with pytest.raises(KeyProviderError, match="no longer served"):
        cache.refresh_for_key("k9")


def test_max_stale_none_serves_for_ever() -> None:
    """max_stale=None, set on the provider, keeps serving the last keys however long."""
    clock = FakeClock()
    provider = StaleProvider(_ring("k1"), OSError("down"), cache_ttl=10, max_stale=None)
    cache = KeyCache(provider, clock=clock)
    first = cache.get()
    clock.now += 720 * 3600
    assert first is cache.get()


def test_providers_without_max_stale_go_stale_after_a_day() -> None:
    """A provider with a TTL but no max_stale is bounded by DEFAULT_MAX_STALE, one day."""
    clock = FakeClock()
    provider = ScriptedProvider(_ring("k1"), OSError("down"), cache_ttl=300)
    cache = KeyCache(provider, clock=clock)
    first = cache.get()
    assert 86400 == DEFAULT_MAX_STALE == cache.max_stale
    clock.now += 86399
    assert first is cache.get()
    clock.now += 1
    with pytest.raises(KeyProviderError, match="max_stale"):
        cache.get()


def test_keys_loaded_once_never_go_stale() -> None:
    """Without a TTL the keys are loaded once: no staleness bound applies to them."""
    clock = FakeClock()
    provider = ScriptedProvider(_ring("k1"), OSError("down"))
    cache = KeyCache(provider, clock=clock)
    first = cache.get()
    clock.now += 720 * 3600
    assert cache.refresh_for_key("k2") is None
    assert first is cache.get()


@pytest.mark.parametrize(
    ("max_stale", "expected"),
    [
        (5, r"StaleProvider.max_stale \(5 s\) is shorter than StaleProvider.cache_ttl \(10 s\)"),
        (0, "StaleProvider.max_stale must be > 0 seconds, or None for no bound"),
        ("1d", "StaleProvider.max_stale must be a number of seconds, or None for no bound"),
    ],
)
def test_an_unkeepable_max_stale_is_refused(max_stale: object, expected: str) -> None:
    """A max_stale below the TTL, not positive, or not a number is a ConfigurationError."""
    provider = StaleProvider(_ring("k1"), cache_ttl=10, max_stale=max_stale)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=expected):
        KeyCache(provider)


def test_cache_age_is_a_metric_until_the_cache_is_gone() -> None:
    """key_cache_age reports seconds since the last good load, and forgets a dropped cache."""
    clock = FakeClock()
    provider = StaleProvider(_ring("k1"), cache_ttl=10, max_stale=100, source="scripted-age")
    cache = KeyCache(provider, clock=clock)
    assert "scripted-age" not in metrics.snapshot().key_cache_age  # not loaded yet
    cache.get()
    clock.now += 7
    assert 7 == metrics.snapshot().key_cache_age["scripted-age"]
    del cache
    gc.collect()
    assert "scripted-age" not in metrics.snapshot().key_cache_age


# -- one secret, two purposes ------------------------------------------------------------


def _shared_rings() -> tuple[Keyring, Keyring]:
    secret = generate_key()
    return Keyring({"k1": secret}), Keyring({"b1": secret}, purpose="blind-index")


@pytest.mark.parametrize("index_first", [False, True], ids=["keys-first", "index-first"])
def test_a_secret_serving_both_purposes_is_refused_by_the_second_load(index_first: bool) -> None:
    """Whichever cache loads second refuses a secret the other purpose's cache serves."""
    encryption, index = _shared_rings()
    keys = KeyCache(ScriptedProvider(encryption))
    index_keys = KeyCache(ScriptedProvider(index), purpose="blind-index")
    first, second = (index_keys, keys) if index_first else (keys, index_keys)
    first.get()
    with pytest.raises(ConfigurationError) as info:
        second.get()
    assert str(info.value) == (
        "blind-index key 'b1' (from ScriptedProvider) holds the same secret as encryption key "
        "'k1' (from ScriptedProvider); whoever holds the index key could decrypt with it: "
        "generate a separate key with `fieldcrypt keygen --kind hmac-sha256`, serve it in "
        "place of 'b1', then run `fieldcrypt reindex`"
    )
    assert encryption.primary.export() not in str(info.value)


def test_encryption_keys_load_without_any_index_keys() -> None:
    """A cache of encryption keys loads with no blind-index keys anywhere."""
    assert ("k1",) == KeyCache(ScriptedProvider(_ring("k1"))).get().ids


def test_a_refresh_that_brings_a_shared_secret_keeps_the_previous_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refresh that would serve a secret of the other purpose fails safe, like an outage."""
    clock = FakeClock()
    encryption, index = _shared_rings()
    own = Keyring({"b0": generate_key("hmac-sha256")}, purpose="blind-index")
    keys = KeyCache(ScriptedProvider(encryption))
    keys.get()
    index_keys = KeyCache(
        ScriptedProvider(own, Keyring([*index, *own], purpose="blind-index"), cache_ttl=60),
        purpose="blind-index",
        clock=clock,
    )
    assert ("b0",) == index_keys.get().ids
    clock.now += 61
    with caplog.at_level(logging.WARNING, logger="sa_fieldcrypt"):
        assert ("b0",) == index_keys.get().ids
    assert "holds the same secret as encryption key 'k1'" in caplog.text


def test_a_cache_that_is_gone_refuses_nothing() -> None:
    """Only the keys of caches still alive are compared."""
    encryption, index = _shared_rings()
    KeyCache(ScriptedProvider(encryption)).get()
    gc.collect()
    assert ("b1",) == KeyCache(ScriptedProvider(index), purpose="blind-index").get().ids

"""Live-traffic counters: decrypts per key id, legacy reads, unknown ids, failures."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet

from sa_fieldcrypt import DecryptionError, EncryptedText, Keyring, generate_key, metrics
from sa_fieldcrypt.cipher import decrypt, encrypt
from sa_fieldcrypt.legacy import BareFernet

# Key ids unique to this module, so counts from other tests do not mix in.
OLD, NEW = "metrics-old", "metrics-new"


def _ring() -> Keyring:
    return Keyring({NEW: generate_key("aes-gcm-siv"), OLD: generate_key()})


def _delta(before: dict[str, int], after: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def test_decrypts_are_counted_per_key_id() -> None:
    """Each successful decryption counts once under the id of the key that opened it."""
    ring = _ring()
    old_token = encrypt(ring.with_primary(OLD), b"x")
    new_token = encrypt(ring, b"y", context="t.c")
    before = metrics.snapshot()
    for _ in range(3):
        decrypt(ring, old_token)
    decrypt(ring, new_token, context="t.c")
    after = metrics.snapshot()
    assert 3 == _delta(before.decrypts, after.decrypts, OLD)
    assert 1 == _delta(before.decrypts, after.decrypts, NEW)
    assert before.failures == after.failures


def test_counts_survive_a_keyring_reload() -> None:
    """A reloaded keyring (new Key objects, same ids) keeps counting on the same counters."""
    secret = generate_key()
    token = encrypt(Keyring({OLD: secret}), b"x")
    before = metrics.snapshot()
    decrypt(Keyring({OLD: secret}), token)
    decrypt(Keyring({OLD: secret}), token)
    assert 2 == _delta(before.decrypts, metrics.snapshot().decrypts, OLD)


def test_legacy_reads_are_counted() -> None:
    """A bare Fernet token a column declares counts as a legacy read of the format "fernet"
    and as a decrypt under its key; the exposition text has a sample per format."""
    secret = generate_key()
    ring = Keyring({NEW: generate_key(), OLD: secret})
    column = EncryptedText(keyring=ring, context=False, legacy=[BareFernet()])
    before = metrics.snapshot()
    column.decrypt_token(Fernet(secret).encrypt(b"x").decode())
    after = metrics.snapshot()
    assert 1 == _delta(before.legacy_reads, after.legacy_reads, "fernet")
    assert 1 == _delta(before.decrypts, after.decrypts, OLD)
    text = metrics.prometheus_text()
    assert "# TYPE sa_fieldcrypt_legacy_reads_total counter" in text
    assert re.search(r'^sa_fieldcrypt_legacy_reads_total{format="fernet"} [1-9]\d*$', text, re.M)


def test_unknown_ids_and_failures_are_counted() -> None:
    """Unknown key ids are counted by id; every failed decryption counts as a failure."""
    ring = _ring()
    stray = encrypt(Keyring({"metrics-gone": generate_key()}), b"x")
    before = metrics.snapshot()
    for value in (stray, stray, "not a token"):
        with pytest.raises(DecryptionError):
            decrypt(ring, value)
    after = metrics.snapshot()
    assert 2 == _delta(before.unknown_key_ids, after.unknown_key_ids, "metrics-gone")
    assert 3 == after.failures - before.failures


def test_unknown_ids_are_bounded() -> None:
    """Forged tokens with ever new key ids cannot grow the table past its bound."""
    ring = _ring()
    for i in range(metrics.MAX_UNKNOWN_IDS + 20):
        with pytest.raises(DecryptionError):
            decrypt(ring, f"fc1:forged-{i}:gAAAAA")
    assert metrics.MAX_UNKNOWN_IDS + 1 >= len(metrics.snapshot().unknown_key_ids)
    assert metrics.OTHER in metrics.snapshot().unknown_key_ids


def test_counting_is_exact_across_threads() -> None:
    """Counts from many threads add up exactly."""
    ring = Keyring({"metrics-threads": generate_key("aes-gcm-siv")})
    token = encrypt(ring, b"x")
    before = metrics.snapshot()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: [decrypt(ring, token) for _ in range(500)], range(8)))
    assert 4000 == _delta(before.decrypts, metrics.snapshot().decrypts, "metrics-threads")


def test_prometheus_text() -> None:
    """The exposition text has a HELP and TYPE line per family and one sample per key id."""
    ring = _ring()
    decrypt(ring, encrypt(ring, b"x"))
    text = metrics.prometheus_text()
    assert "# TYPE sa_fieldcrypt_decrypts_total counter" in text
    assert re.search(rf'^sa_fieldcrypt_decrypts_total{{key_id="{NEW}"}} [1-9]\d*$', text, re.M)
    assert re.search(r"^sa_fieldcrypt_decryption_failures_total \d+$", text, re.M)
    assert text.endswith("\n")


def test_key_source_metrics_in_the_snapshot_and_the_exposition_text() -> None:
    """Load failures and skipped versions count by source and version; cache age is a gauge."""
    before = metrics.snapshot()
    metrics.count_key_load_failure("metrics-source")
    metrics.count_skipped_version("projects/p/secrets/metrics/versions/3")
    metrics.count_skipped_version("projects/p/secrets/metrics/versions/3")

    class Aged:
        def age(self) -> float | None:
            return 12.5

    aged = Aged()
    metrics.watch_key_cache('metrics "quoted" source', aged.age)
    after = metrics.snapshot()
    assert 1 == _delta(before.key_load_failures, after.key_load_failures, "metrics-source")
    version = "projects/p/secrets/metrics/versions/3"
    assert 2 == _delta(before.skipped_versions, after.skipped_versions, version)
    assert 12.5 == after.key_cache_age['metrics "quoted" source']
    text = metrics.prometheus_text()
    assert "# TYPE sa_fieldcrypt_key_cache_age_seconds gauge" in text
    assert 'sa_fieldcrypt_key_cache_age_seconds{source="metrics \\"quoted\\" source"} 12.5' in text
    assert re.search(
        r'^sa_fieldcrypt_key_load_failures_total{source="metrics-source"} [1-9]', text, re.M
    )
    assert re.search(
        rf'^sa_fieldcrypt_skipped_versions_total{{version="{version}"}} [2-9]', text, re.M
    )

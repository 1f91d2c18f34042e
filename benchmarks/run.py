"""Per-value cost of the encrypted types, as ratios to raw ``cryptography`` Fernet.

Run with ``make bench``. Every figure is a median of several repetitions taken in this one
run, so ratios stay meaningful on a noisy machine; absolute times are for orientation only.
"""

from __future__ import annotations

import platform
import statistics
import timeit
from collections.abc import Callable

import cryptography
import sqlalchemy
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy.dialects import sqlite

import sa_fieldcrypt
from sa_fieldcrypt import EncryptedText, Keyring, generate_key

EMAIL = "ada.lovelace@analytical-engine.example"  # about 30-40 bytes, like a real email
REPEATS = 7
NUMBER = 5000


def per_call_us(func: Callable[[], object]) -> float:
    """Median time of one call, in microseconds."""
    runs = timeit.repeat(func, number=NUMBER, repeat=REPEATS)
    return statistics.median(runs) / NUMBER * 1e6


def main() -> None:
    dialect = sqlite.dialect()
    key = generate_key()
    fernet = Fernet(key)
    plaintext = EMAIL.encode()
    raw_token = fernet.encrypt(plaintext)

    one = Keyring({"k0": key})
    column = EncryptedText(keyring=one)
    old_keys = [generate_key() for _ in range(19)]
    twenty = Keyring({"k0": key, **{f"old{i}": k for i, k in enumerate(old_keys)}})
    # The processors SQLAlchemy itself calls for each value.
    bind = column.bind_processor(dialect)
    result = column.result_processor(dialect, None)
    result20 = EncryptedText(keyring=twenty).result_processor(dialect, None)
    if bind is None or result is None or result20 is None:
        raise RuntimeError("EncryptedText must have bind and result processors")
    stored = bind(EMAIL)
    multi = MultiFernet([Fernet(k) for k in old_keys[::-1]] + [fernet])

    rows = {
        "raw Fernet.encrypt": per_call_us(lambda: fernet.encrypt(plaintext)),
        "EncryptedText bind": per_call_us(lambda: bind(EMAIL)),
        "raw Fernet.decrypt": per_call_us(lambda: fernet.decrypt(raw_token)),
        "EncryptedText result, 1 key": per_call_us(lambda: result(stored)),
        "EncryptedText result, 20 keys": per_call_us(lambda: result20(stored)),
        "MultiFernet.decrypt, 20 keys (oldest)": per_call_us(lambda: multi.decrypt(raw_token)),
    }

    print(
        f"sa-fieldcrypt {sa_fieldcrypt.__version__}, cryptography {cryptography.__version__}, "
        f"SQLAlchemy {sqlalchemy.__version__}, Python {platform.python_version()}"
    )
    print(f"median of {REPEATS} x {NUMBER} calls, value of {len(plaintext)} bytes\n")
    for name, us in rows.items():
        print(f"  {name:<40} {us:8.2f} us")
    enc = rows["EncryptedText bind"] / rows["raw Fernet.encrypt"]
    dec = rows["EncryptedText result, 1 key"] / rows["raw Fernet.decrypt"]
    keys = rows["EncryptedText result, 20 keys"] / rows["EncryptedText result, 1 key"]
    multi_ratio = rows["MultiFernet.decrypt, 20 keys (oldest)"] / rows["raw Fernet.decrypt"]
    print("\nratios (target):")
    print(f"  bind / raw encrypt            {enc:5.2f}x  (<= 1.10)")
    print(f"  result / raw decrypt          {dec:5.2f}x  (<= 1.10)")
    print(f"  20 keys / 1 key               {keys:5.2f}x  (<= 1.10)")
    print(f"  MultiFernet 20 keys / 1 key   {multi_ratio:5.2f}x  (for comparison)")


if __name__ == "__main__":
    main()

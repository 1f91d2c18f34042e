"""Cost of a slow blind index: one scrypt per value, against the one HMAC of a fast index.

Run with ``python benchmarks/slow_index.py`` (``make bench`` runs it too). Figures are medians
of several repetitions in this one run; compare the ratios, not the absolute times. One
hash is what each insert, each lookup term (per active index key) and each checked read of
a slow index pays, in every process, and what whoever holds the key pays per guessed value.
"""

from __future__ import annotations

import hmac
import platform
import statistics
import timeit
from collections.abc import Callable
from datetime import date

import sa_fieldcrypt
from sa_fieldcrypt import BlindIndex, Keyring, Scrypt, generate_key, typed_normalizer

REPEATS = 7
HMAC_NUMBER = 20_000
SLOW_NUMBER = 5
VALUE = b"1815-12-10"  # a date of birth, as typed_normalizer(date) indexes it
# The defaults first, then cheaper and dearer settings.
PARAMETERS = [Scrypt(), Scrypt(n=2**12, r=8), Scrypt(n=2**15, r=8), Scrypt(n=2**16, r=8)]


def per_call_ms(func: Callable[[], object], number: int) -> float:
    """Median time of one call, in milliseconds."""
    runs = timeit.repeat(func, number=number, repeat=REPEATS)
    return statistics.median(runs) / number * 1e3


def main() -> None:
    ring = Keyring({"b1": generate_key("hmac-sha256")}, purpose="blind-index")
    key = ring.primary.derive(b"sa-fieldcrypt blind index v1\x00c.birth_date_bidx")
    fast = BlindIndex(
        "birth_date_bidx", normalizer=typed_normalizer(date), keyring=ring, name="c.birth_date_bidx"
    )
    slow = BlindIndex(
        "birth_date_bidx",
        normalizer=typed_normalizer(date),
        keyring=ring,
        name="c.birth_date_bidx",
        slow=Scrypt(),
    )
    birth = date(1815, 12, 10)
    hmac_ms = per_call_ms(lambda: hmac.digest(key, VALUE, "sha256"), HMAC_NUMBER)
    rows = {
        "hmac.digest (a fast index's hash)": hmac_ms,
        "BlindIndex.compute, fast": per_call_ms(lambda: fast.compute(birth), HMAC_NUMBER),
        "BlindIndex.compute, slow=Scrypt()": per_call_ms(lambda: slow.compute(birth), SLOW_NUMBER),
    }
    for cost in PARAMETERS:
        rows[f"{cost!r} ({cost.memory / 2**20:.0f} MiB)"] = per_call_ms(
            lambda cost=cost: cost.hash(key, VALUE), SLOW_NUMBER
        )

    print(f"sa-fieldcrypt {sa_fieldcrypt.__version__}, Python {platform.python_version()}")
    print(f"median of {REPEATS} repetitions, one hash of a {len(VALUE)}-byte value\n")
    for name, ms in rows.items():
        print(f"  {name:<46} {ms:10.4f} ms")
    default = rows[f"{Scrypt()!r} ({Scrypt().memory / 2**20:.0f} MiB)"]
    print("\nratios:")
    print(f"  Scrypt() / HMAC                              {default / hmac_ms:10,.0f}x")
    print(f"  guesses per second and core, Scrypt()        {1e3 / default:10,.1f}")
    print(f"  guesses per second and core, HMAC            {1e3 / hmac_ms:10,.0f}")
    days = 365 * 120
    print(f"  every date of 120 years ({days:,}), Scrypt()   {days * default / 1e3 / 60:7.1f} min")


if __name__ == "__main__":
    main()

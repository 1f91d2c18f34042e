"""The kit for testing code that uses sa-fieldcrypt: fixtures, assertions, strategies, fakes.

- Fixtures (:mod:`~sa_fieldcrypt.testing.plugin`, loaded by pytest in every project that
  installs sa-fieldcrypt, at no cost until used): ``fieldcrypt_keyring``,
  ``fieldcrypt_blind_index_keyring``, ``fake_secret_manager``, ``fake_kms``.
- :func:`temporary_keys` (:mod:`~sa_fieldcrypt.testing.keys`): default keys for a block.
- :func:`assert_encrypted_at_rest`, :func:`assert_indexes_current`
  (:mod:`~sa_fieldcrypt.testing.assertions`).
- Hypothesis strategies (:mod:`~sa_fieldcrypt.testing.strategies`): :func:`text_plaintexts`,
  :func:`bytes_plaintexts`, :func:`json_plaintexts`, the typed columns' values
  (:func:`date_plaintexts`, :func:`datetime_plaintexts`, :func:`time_plaintexts`,
  :func:`integer_plaintexts`, :func:`float_plaintexts`, :func:`decimal_plaintexts`,
  :func:`boolean_plaintexts`, :func:`uuid_plaintexts`), :func:`keyrings`, and spellings
  that the built-in normalizers and transforms fold (:func:`phone_numbers`,
  :func:`email_addresses`); free text for substring indexes and search terms drawn from it
  (:func:`note_texts`, :func:`contained_terms`, :func:`search_terms`).
- :class:`FakeSecretManager` (:mod:`~sa_fieldcrypt.testing.secret_manager`, the ``gcp`` extra):
  Google Cloud Secret Manager in process, over real gRPC.
- :class:`FakeKms` (:mod:`~sa_fieldcrypt.testing.kms`, the ``gcp`` extra): Google Cloud KMS in
  process, over real gRPC.

Typical usage::

    from sa_fieldcrypt.testing import assert_encrypted_at_rest

    def test_signup(fieldcrypt_keyring, session):
        session.add(Customer(email="ada@example.com"))
        session.flush()
        assert_encrypted_at_rest(session, Customer)

Names load on first use, so importing this package (as the plugin does) costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sa_fieldcrypt.exports import lazy_exports

if TYPE_CHECKING:
    from sa_fieldcrypt.testing.assertions import assert_encrypted_at_rest, assert_indexes_current
    from sa_fieldcrypt.testing.keys import temporary_keys
    from sa_fieldcrypt.testing.kms import FakeKms
    from sa_fieldcrypt.testing.secret_manager import FakeSecretManager
    from sa_fieldcrypt.testing.strategies import (
        boolean_plaintexts,
        bytes_plaintexts,
        contained_terms,
        date_plaintexts,
        datetime_plaintexts,
        decimal_plaintexts,
        email_addresses,
        float_plaintexts,
        integer_plaintexts,
        json_plaintexts,
        keyrings,
        note_texts,
        phone_numbers,
        search_terms,
        text_plaintexts,
        time_plaintexts,
        uuid_plaintexts,
    )

__all__ = [
    "FakeKms",
    "FakeSecretManager",
    "assert_encrypted_at_rest",
    "assert_indexes_current",
    "boolean_plaintexts",
    "bytes_plaintexts",
    "contained_terms",
    "date_plaintexts",
    "datetime_plaintexts",
    "decimal_plaintexts",
    "email_addresses",
    "float_plaintexts",
    "integer_plaintexts",
    "json_plaintexts",
    "keyrings",
    "note_texts",
    "phone_numbers",
    "search_terms",
    "temporary_keys",
    "text_plaintexts",
    "time_plaintexts",
    "uuid_plaintexts",
]

_HOMES = {
    "FakeKms": "sa_fieldcrypt.testing.kms",
    "FakeSecretManager": "sa_fieldcrypt.testing.secret_manager",
    "assert_encrypted_at_rest": "sa_fieldcrypt.testing.assertions",
    "assert_indexes_current": "sa_fieldcrypt.testing.assertions",
    "boolean_plaintexts": "sa_fieldcrypt.testing.strategies",
    "bytes_plaintexts": "sa_fieldcrypt.testing.strategies",
    "contained_terms": "sa_fieldcrypt.testing.strategies",
    "date_plaintexts": "sa_fieldcrypt.testing.strategies",
    "datetime_plaintexts": "sa_fieldcrypt.testing.strategies",
    "decimal_plaintexts": "sa_fieldcrypt.testing.strategies",
    "email_addresses": "sa_fieldcrypt.testing.strategies",
    "float_plaintexts": "sa_fieldcrypt.testing.strategies",
    "integer_plaintexts": "sa_fieldcrypt.testing.strategies",
    "json_plaintexts": "sa_fieldcrypt.testing.strategies",
    "keyrings": "sa_fieldcrypt.testing.strategies",
    "note_texts": "sa_fieldcrypt.testing.strategies",
    "phone_numbers": "sa_fieldcrypt.testing.strategies",
    "search_terms": "sa_fieldcrypt.testing.strategies",
    "temporary_keys": "sa_fieldcrypt.testing.keys",
    "text_plaintexts": "sa_fieldcrypt.testing.strategies",
    "time_plaintexts": "sa_fieldcrypt.testing.strategies",
    "uuid_plaintexts": "sa_fieldcrypt.testing.strategies",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

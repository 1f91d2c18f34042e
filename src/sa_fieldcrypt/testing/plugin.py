"""The pytest plugin: sa-fieldcrypt's fixtures, in every test suite of a project that installs it.

pytest loads this module in every run of such a project, whether its tests use the fixtures or
not, so it imports nothing but pytest until a fixture is requested: a project that never uses
them pays nothing for it.

- ``fieldcrypt_keyring``: fresh default encryption keys (``k2`` primary, ``k1``) for the test.
- ``fieldcrypt_blind_index_keyring``: fresh default blind-index keys (``b1``) for the test.
- ``fake_secret_manager``: an in-process Google Cloud Secret Manager
  (:class:`~sa_fieldcrypt.testing.secret_manager.FakeSecretManager`; the ``gcp`` extra).
- ``fake_kms``: an in-process Google Cloud KMS (:class:`~sa_fieldcrypt.testing.kms.FakeKms`;
  the ``gcp`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sa_fieldcrypt.keys import Keyring
    from sa_fieldcrypt.testing.kms import FakeKms
    from sa_fieldcrypt.testing.secret_manager import FakeSecretManager

__all__ = [
    "fake_kms",
    "fake_secret_manager",
    "fieldcrypt_blind_index_keyring",
    "fieldcrypt_keyring",
]


@pytest.fixture
def fieldcrypt_keyring() -> Iterator[Keyring]:
    """A fresh two-key keyring (``k2`` primary, ``k1`` decrypt-only) as the default keys."""
    from sa_fieldcrypt.testing.keys import fresh_keyring, temporary_keys

    keyring = fresh_keyring()
    with temporary_keys(keyring):
        yield keyring


@pytest.fixture
def fieldcrypt_blind_index_keyring() -> Iterator[Keyring]:
    """A fresh one-key blind-index keyring (``b1``) as the default blind-index keys."""
    from sa_fieldcrypt.testing.keys import fresh_blind_index_keyring, temporary_keys

    keyring = fresh_blind_index_keyring()
    with temporary_keys(keyring, purpose="blind-index"):
        yield keyring


@pytest.fixture
def fake_secret_manager() -> Iterator[FakeSecretManager]:
    """A fake Google Cloud Secret Manager on a local port, for this test only (the gcp extra).

    Raises:
        ImportError: the gcp extra is not installed; the message says how to install it.
    """
    from sa_fieldcrypt.testing.secret_manager import FakeSecretManager

    with FakeSecretManager() as fake:
        yield fake


@pytest.fixture
def fake_kms() -> Iterator[FakeKms]:
    """A fake Google Cloud KMS on a local port, for this test only (the gcp extra).

    Raises:
        ImportError: the gcp extra is not installed; the message says how to install it.
    """
    from sa_fieldcrypt.testing.kms import FakeKms

    with FakeKms() as fake:
        yield fake

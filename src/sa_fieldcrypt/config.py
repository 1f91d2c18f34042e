"""The process-wide default keys: :func:`configure` sets them, columns read them.

Nothing is loaded at import time, so models import and mappers configure without keys. The
first encryption or decryption that needs the default loads it: from what :func:`configure`
set, or else from the ``FIELDCRYPT_*`` settings.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sa_fieldcrypt.errors import ConfigurationError
from sa_fieldcrypt.keys import Keyring
from sa_fieldcrypt.providers.base import KeyCache, KeyProvider
from sa_fieldcrypt.providers.env import EnvKeyProvider
from sa_fieldcrypt.providers.static import StaticKeyProvider

if TYPE_CHECKING:
    # Imported when keys are first loaded: pydantic is a tenth of a second of start-up.
    from sa_fieldcrypt.settings import FieldCryptSettings

__all__ = ["configure", "current_keyring", "default_key_cache", "provider_from_settings"]

_lock = threading.Lock()
_default: KeyCache[Keyring] | None = None


def configure(*, keyring: Keyring | None = None, provider: KeyProvider | None = None) -> None:
    """Set the keys every encrypted column uses unless it names its own.

    Give exactly one of ``keyring`` (fixed keys) or ``provider`` (loaded, cached and
    refreshed). ``configure()`` with neither forgets the configuration, so the next use reads
    the ``FIELDCRYPT_*`` settings again.
    """
    global _default
    if keyring is not None and provider is not None:
        raise ConfigurationError("configure() takes keyring= or provider=, not both")
    _default = None if keyring is None and provider is None else as_key_cache(keyring or provider)


def as_key_cache(source: Keyring | KeyProvider | None) -> KeyCache[Keyring]:
    """Wrap a keyring or provider in the cache columns read from."""
    if isinstance(source, Keyring):
        return KeyCache(StaticKeyProvider(source))
    if source is not None and callable(getattr(source, "load", None)):
        return KeyCache(source)
    raise ConfigurationError(
        f"expected a Keyring or a key provider (an object with load()), got {type(source).__name__}"
    )


def default_key_cache() -> KeyCache[Keyring]:
    """Return the process default, creating it from settings on first use."""
    global _default
    cache = _default
    if cache is not None:
        return cache
    from sa_fieldcrypt.settings import load_settings

    with _lock:
        if _default is None:
            _default = KeyCache(provider_from_settings(load_settings()))
        return _default


def current_keyring() -> Keyring:
    """Return the process default keyring, loading it if needed."""
    return default_key_cache().get()


def provider_from_settings(settings: FieldCryptSettings) -> KeyProvider:
    """Return the provider that ``FIELDCRYPT_PROVIDER`` selects."""
    if settings.provider == "env":
        return EnvKeyProvider(settings)
    if settings.provider == "gcp":
        # Imported here: the module needs the optional Google packages.
        from sa_fieldcrypt.providers.gcp import GoogleSecretManagerKeyProvider

        return GoogleSecretManagerKeyProvider.from_settings(settings)
    raise ConfigurationError(f"FIELDCRYPT_PROVIDER {settings.provider!r} is not supported")


def _swap(cache: KeyCache[Keyring] | None) -> KeyCache[Keyring] | None:
    """Install ``cache`` as the default and return the previous one (for test fixtures)."""
    global _default
    previous, _default = _default, cache
    return previous

"""The process-wide default keys, one per purpose: :func:`configure` sets them, columns read them.

Encrypted columns read the default keys of purpose ``"encryption"``; blind indexes those of
purpose ``"blind-index"``. Nothing is loaded at import time, so models import and mappers
configure without keys. The first use that needs a default loads it: from what
:func:`configure` set, or else from the ``FIELDCRYPT_*`` settings.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sa_fieldcrypt.errors import ConfigurationError
from sa_fieldcrypt.keys import PURPOSES, Keyring, Purpose
from sa_fieldcrypt.providers.base import KeyCache, KeyProvider
from sa_fieldcrypt.providers.env import EnvKeyProvider
from sa_fieldcrypt.providers.static import StaticKeyProvider

if TYPE_CHECKING:
    # Imported when keys are first loaded: pydantic is a tenth of a second of start-up.
    from sa_fieldcrypt.settings import FieldCryptSettings

__all__ = [
    "as_key_cache",
    "configure",
    "current_keyring",
    "default_key_cache",
    "provider_from_settings",
    "set_unbound_allowed",
    "swap_default_keys",
    "unbound_allowed",
]

_lock = threading.Lock()
# Purpose -> the default cache; a purpose absent here is loaded from settings on first use.
_defaults: dict[str, KeyCache] = {}
# Whether bound columns read unbound tokens unless they say; None: not read from settings yet.
_unbound_allowed: bool | None = None


def _check_purpose(purpose: object, where: str) -> None:
    if purpose not in PURPOSES:
        raise ConfigurationError(f"{where}: purpose must be one of {', '.join(PURPOSES)}")


def configure(
    *,
    keyring: Keyring | None = None,
    provider: KeyProvider | None = None,
    purpose: Purpose = "encryption",
) -> None:
    """Set the process default keys of ``purpose``.

    Every encrypted column (for ``"encryption"``) or blind index (for ``"blind-index"``) uses
    them unless it names its own. Give exactly one of ``keyring`` (fixed keys) or ``provider``
    (loaded, cached and refreshed). With neither, the configuration of ``purpose`` is
    forgotten, so the next use reads the ``FIELDCRYPT_*`` settings again.

    Raises:
        ConfigurationError: both are given, or ``keyring`` holds keys of another purpose.
    """
    _check_purpose(purpose, "configure()")
    if keyring is not None and provider is not None:
        raise ConfigurationError("configure() takes keyring= or provider=, not both")
    source = keyring if keyring is not None else provider
    swap_default_keys(
        None if source is None else as_key_cache(source, purpose=purpose), purpose=purpose
    )


def as_key_cache(
    source: Keyring | KeyProvider | None, *, purpose: Purpose = "encryption"
) -> KeyCache:
    """Wrap a keyring or provider of ``purpose`` in the cache columns and indexes read from.

    Raises:
        ConfigurationError: ``source`` is neither, or a keyring of another purpose.
    """
    if isinstance(source, Keyring):
        if source.purpose != purpose:
            raise ConfigurationError(
                f"expected a keyring of {purpose} keys, got one of {source.purpose} keys; build "
                f"it with Keyring(..., purpose={purpose!r})"
            )
        return KeyCache(StaticKeyProvider(source), purpose=purpose)
    if source is not None and callable(getattr(source, "load", None)):
        return KeyCache(source, purpose=purpose)
    raise ConfigurationError(
        f"expected a Keyring or a key provider (an object with load()), got {type(source).__name__}"
    )


def default_key_cache(purpose: Purpose = "encryption") -> KeyCache:
    """Return the process default cache of ``purpose``, creating it from settings on first use."""
    cache = _defaults.get(purpose)
    if cache is not None:
        return cache
    _check_purpose(purpose, "default_key_cache()")
    from sa_fieldcrypt.settings import load_settings

    with _lock:
        cache = _defaults.get(purpose)
        if cache is None:
            provider = provider_from_settings(load_settings(), purpose=purpose)
            cache = _defaults[purpose] = KeyCache(provider, purpose=purpose)
        return cache


def current_keyring(purpose: Purpose = "encryption") -> Keyring:
    """Return the process default keyring of ``purpose``, loading it if needed."""
    return default_key_cache(purpose).get()


def provider_from_settings(
    settings: FieldCryptSettings, *, purpose: Purpose = "encryption"
) -> KeyProvider:
    """Return the provider that the settings select for ``purpose``.

    ``FIELDCRYPT_PROVIDER`` selects the encryption keys' provider and
    ``FIELDCRYPT_BLIND_INDEX_PROVIDER`` the blind-index keys' one.
    """
    _check_purpose(purpose, "provider_from_settings()")
    name = settings.provider if purpose == "encryption" else settings.blind_index_provider
    if name == "env":
        return EnvKeyProvider(settings, purpose=purpose)
    if name == "gcp":
        # Imported here: the module needs the optional Google packages.
        from sa_fieldcrypt.providers.gcp import GoogleSecretManagerKeyProvider

        return GoogleSecretManagerKeyProvider.from_settings(settings, purpose=purpose)
    setting = (
        "FIELDCRYPT_PROVIDER" if purpose == "encryption" else "FIELDCRYPT_BLIND_INDEX_PROVIDER"
    )
    raise ConfigurationError(f"{setting} {name!r} is not supported")


def swap_default_keys(
    cache: KeyCache | None, *, purpose: Purpose = "encryption"
) -> KeyCache | None:
    """Install ``cache`` as the default of ``purpose`` and return the one it replaces.

    The seam for test kits (:func:`sa_fieldcrypt.testing.temporary_keys`): put the returned
    cache back afterwards. None forgets the default, so the next use reads the settings.

    Raises:
        ConfigurationError: ``cache`` serves another purpose.
    """
    _check_purpose(purpose, "swap_default_keys()")
    if cache is not None and cache.purpose != purpose:
        raise ConfigurationError(
            f"swap_default_keys(): the cache serves {cache.purpose} keys, not {purpose} keys"
        )
    with _lock:
        previous = _defaults.pop(purpose, None)
        if cache is not None:
            _defaults[purpose] = cache
    return previous


def unbound_allowed() -> bool:
    """Whether a bound column that does not say (``allow_unbound=None``) reads unbound tokens.

    ``FIELDCRYPT_ALLOW_UNBOUND`` (true unless set), read once, or what
    :func:`set_unbound_allowed` set. Unbound tokens are those written before a column was
    bound (and bare legacy tokens); once ``fieldcrypt rotate`` has bound every value, false
    refuses such tokens copied in from anywhere.
    """
    global _unbound_allowed
    allowed = _unbound_allowed
    if allowed is None:
        from sa_fieldcrypt.settings import load_settings

        allowed = _unbound_allowed = load_settings().allow_unbound
    return allowed


def set_unbound_allowed(allowed: bool | None) -> None:
    """Set the process-wide default of :func:`unbound_allowed`; None: read the settings again."""
    global _unbound_allowed
    _unbound_allowed = allowed

"""Key providers: where keyrings come from.

Each backend lives in its own module. The Google Cloud one (``providers.gcp``) needs the
``gcp`` extra and is imported only when asked for.
"""

from sa_fieldcrypt.providers.base import KeyCache, KeyProvider
from sa_fieldcrypt.providers.env import EnvKeyProvider
from sa_fieldcrypt.providers.static import StaticKeyProvider

__all__ = ["EnvKeyProvider", "KeyCache", "KeyProvider", "StaticKeyProvider"]

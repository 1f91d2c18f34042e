"""Lazy exports: a package's names, each imported from its module on first use (PEP 562).

The top-level package and :mod:`sa_fieldcrypt.testing` use it, so that importing either (as
every pytest run of a project that installs the library imports the plugin's package) costs
nothing until a name is used.

Typical usage, in a package's ``__init__.py``::

    __getattr__, __dir__ = lazy_exports(__name__, {"EncryptedText": "sa_fieldcrypt.types"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` that import each name of ``homes`` when used.

    Args:
        package: the package's ``__name__``.
        homes: each exported name, and the module it is imported from.
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        # Found once: the next access is a plain attribute of the package.
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__

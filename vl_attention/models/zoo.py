"""Import every module of :mod:`vl_attention.models` so each ``@register`` decorator runs.

A new backbone or head module only has to live in this package to become
selectable by name from a preset. The package is found from this file's folder,
so this module never imports the package back (no import cycle).
"""

import importlib
from pathlib import Path
import pkgutil

_PACKAGE = __name__.rsplit('.', 1)[0]
_PACKAGE_DIR = str(Path(__file__).resolve().parent)

# Modules that register nothing and would import themselves back.
_NOT_COMPONENTS = {'descriptor', 'zoo'}


def component_module_names() -> list[str]:
    """Full names of the component modules of the package, sorted."""
    names = (module.name for module in pkgutil.iter_modules([_PACKAGE_DIR]))
    return sorted(f'{_PACKAGE}.{name}' for name in names if name not in _NOT_COMPONENTS)


def import_components() -> None:
    """Import each component module of the package once (idempotent)."""
    for name in component_module_names():
        importlib.import_module(name)

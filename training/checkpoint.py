"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model, loss, optimiser, schedule and gradient-scaler
states, the step, the validation history, and every random-number state of
every process (torch, numpy, Python, CUDA, the batch sampler's and the
mining's generators) plus each process's hard-negative cache. Resuming from it
replays the remaining steps bit for bit on the same hardware and process
count.

Checkpoints are read with ``torch.load(weights_only=True)``, which builds only
tensors and plain containers, so code written into a checkpoint never runs. The
numpy parts of the state (numpy's random state, the negative cache) are stored
as tagged tensors of the same dtype and turned back into arrays on load.
"""

from pathlib import Path
import pickle
import random
import re
from typing import Any, Dict, Mapping, Union

import numpy as np
import torch

from vl_attention.errors import one_line, VLAttentionError
from vl_attention.io import atomic_path

# 2: numpy arrays stored as tagged tensors, read with weights_only=True
CHECKPOINT_VERSION = 2
_NUMPY_ARRAY = '__numpy_ndarray__'
_NUMPY_SCALAR = '__numpy_scalar__'


class CheckpointError(VLAttentionError, ValueError):
    """A checkpoint cannot be resumed from: unreadable, or of another checkpoint version."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs more than tensors and containers to load; nothing in it ran."""


def rng_state(generators: Mapping[str, torch.Generator]) -> Dict[str, Any]:
    """Random states of this process: the global ones and the named ``torch.Generator``s."""
    state: Dict[str, Any] = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(),
                             'python': random.getstate(),
                             'generators': {name: g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any],
                      generators: Mapping[str, torch.Generator]) -> None:
    """Restore :func:`rng_state` (the named generators in place)."""
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    for name, generator in generators.items():
        generator.set_state(state['generators'][name])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_checkpoint(path: Union[str, Path], payload: Dict[str, Any]) -> None:
    """Write ``payload`` (a dict) to ``path`` atomically: a kill never leaves half a file."""
    with atomic_path(path) as temporary:
        torch.save(dict(to_weights_only(payload), version=CHECKPOINT_VERSION), temporary)


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; no code in the file runs."""
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f'{path} asks to run {_refused_global(error)} on load, which a version '
            f'{CHECKPOINT_VERSION} checkpoint never does; refused without running it. Resume '
            'only from run folders you wrote (older checkpoints: with the release that wrote '
            'them), or start a fresh run without --resume') from None
    except (RuntimeError, EOFError) as error:   # torch's errors for a damaged or foreign file
        raise CheckpointError(f'{path} is not a readable checkpoint ({one_line(error)}); resume '
                              'from another run folder or start a fresh run without '
                              '--resume') from error
    if not isinstance(payload, dict) or payload.get('version') != CHECKPOINT_VERSION:
        version = payload.get('version') if isinstance(payload, dict) else None
        raise CheckpointError(f'{path} is a version {version} checkpoint; this code '
                              f'reads version {CHECKPOINT_VERSION}: resume with the release '
                              'that wrote it')
    return from_weights_only(payload)


def _refused_global(error: BaseException) -> str:
    """Name the global that torch's weights-only unpickler refused, or say what it refused."""
    found = re.search(r'GLOBAL ([\w.]+)', str(error))
    return found.group(1) if found else 'objects other than tensors and containers'


def to_weights_only(value: Any) -> Any:
    """``value`` with every numpy array and scalar replaced by a tagged tensor (recursive)."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError('a checkpoint cannot hold numpy object arrays')
        return {_NUMPY_ARRAY: torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, np.generic):
        return {_NUMPY_SCALAR: torch.from_numpy(np.array(value))}
    if isinstance(value, dict):
        return {key: to_weights_only(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_weights_only(item) for item in value)
    return value


def from_weights_only(value: Any) -> Any:
    """Invert :func:`to_weights_only`: tagged tensors become numpy arrays and scalars again."""
    if isinstance(value, dict):
        if set(value) == {_NUMPY_ARRAY}:
            return value[_NUMPY_ARRAY].numpy()
        if set(value) == {_NUMPY_SCALAR}:
            return value[_NUMPY_SCALAR].numpy()[()]
        return {key: from_weights_only(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_weights_only(item) for item in value)
    return value

"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model, loss, optimiser, schedule and gradient-scaler
states, the step, the validation history, and every random-number state of
every process (torch, numpy, Python, CUDA, the batch sampler's and the
mining's generators) plus each process's hard-negative cache. Resuming from it
replays the remaining steps bit for bit on the same hardware and process
count. Checkpoints are pickles written by this code: load only your own.
"""

import random

import numpy as np
import torch

from vl_attention.io import atomic_path

CHECKPOINT_VERSION = 1


def rng_state(generators):
    """Random states of this process: the global ones and the named ``torch.Generator``s."""
    state = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(),
             'python': random.getstate(),
             'generators': {name: g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state, generators):
    """Restore :func:`rng_state` (the named generators in place)."""
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    for name, generator in generators.items():
        generator.set_state(state['generators'][name])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_checkpoint(path, payload):
    """Write ``payload`` (a dict) to ``path`` atomically: a kill never leaves half a file."""
    with atomic_path(path) as temporary:
        torch.save(dict(payload, version=CHECKPOINT_VERSION), temporary)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint` (trusted: it is a pickle)."""
    payload = torch.load(path, map_location='cpu', weights_only=False)
    if payload.get('version') != CHECKPOINT_VERSION:
        raise ValueError(f'{path} is a version {payload.get("version")} checkpoint; this code '
                         f'reads version {CHECKPOINT_VERSION}: resume with the release that '
                         'wrote it')
    return payload

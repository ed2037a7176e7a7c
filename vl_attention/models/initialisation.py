"""Reproducible initialisation of the parameters that no weights file gives.

A preset with random parts (a ``weights: none`` trunk, an untrained head, a
random frozen segmentation network) must give the same model, hence the same
model-card fingerprint, in every process: a map built with it has to load
again later. :func:`seeded_initialisation` builds under a seed derived from the
preset (:func:`preset_seed`), on a forked CPU generator, so the caller's global
RNG is left as it was. :func:`untrained_modules` names the parts that stay
random, for the warning a map builder shows.
"""

import contextlib
import hashlib
import json
import logging

import torch

from vl_attention.config import to_dict

LOG = logging.getLogger(__name__)

# Fields of a preset that decide its parameters' shapes and values. The input size, the
# freezing, PCA-whitening (fitted later) and a checkpoint (loaded over the result) do not.
_SEED_FIELDS = ('name', 'backbone', 'taps', 'backbone_options', 'aggregator',
                'aggregator_options')
_OPTIONS_OUTSIDE_SEED = ('freeze',)


def preset_seed(config):
    """Stable 63-bit seed of a :class:`~vl_attention.models.descriptor.ModelConfig`.

    A SHA-256 of the preset's identity (name, components, taps and options but
    ``freeze``), so the same preset seeds the same initial weights on every
    machine and in every process; Python's ``hash`` is salted per process.
    """
    values = to_dict(config)
    identity = {key: values[key] for key in _SEED_FIELDS}
    identity['backbone_options'] = {key: value for key, value in
                                    identity['backbone_options'].items()
                                    if key not in _OPTIONS_OUTSIDE_SEED}
    text = json.dumps(identity, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'big') >> 1


@contextlib.contextmanager
def seeded_initialisation(seed):
    """Run the block with the CPU RNG seeded by ``seed``; restore the global RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


def untrained_modules(model, *, backbone_weights, checkpoint=''):
    """Names of the model's parts whose parameters come from no weights file.

    ``backbone`` when the trunk has ``weights: none``; each head submodule (and
    head parameter that is not a scalar setting such as GeM's ``p``) unless the
    head lists it in ``pretrained_modules()``. Nothing when a checkpoint of the
    whole model is loaded.
    """
    if checkpoint:
        return ()
    names = ['backbone'] if str(backbone_weights) == 'none' else []
    head = model.aggregator
    pretrained = set(head.pretrained_modules()) if hasattr(head, 'pretrained_modules') else set()
    for name, child in head.named_children():
        if name not in pretrained and any(True for _ in child.parameters()):
            names.append(f'aggregator.{name}')
    names.extend(f'aggregator.{name}' for name, parameter in head.named_parameters(recurse=False)
                 if parameter.numel() > 1)
    return tuple(names)


def warn_untrained(preset_name, modules, seed):
    """Log a warning naming the parts of a model that are randomly initialised."""
    if not modules:
        return
    LOG.warning('model %r: randomly initialised, untrained part(s) %s (seeded from the preset, '
                'seed %d, so the fingerprint is reproducible): train them or load a checkpoint',
                preset_name, ', '.join(modules), seed)

"""Dataset adapters behind one interface (:class:`.base.PlaceDataset`).

Importing this package imports every module in it, so an adapter registers
itself in :data:`.base.DATASETS` by being here; the ``vpr_layout`` folders of
``evaluate-vpr`` (:mod:`vl_attention.evaluation.vpr_dataset`) register too. Nothing
here imports torch, so ``evaluate-vpr --dataset KIND ROOT`` reads these layouts
without it.
"""

import importlib
import pkgutil

import vl_attention.evaluation.vpr_dataset  # noqa: F401  (registers the vpr_layout kind)
from vl_attention.training.sources.base import (
    concatenate, DatasetLayoutError, DATASETS, load_dataset, make_dataset, PlaceDataset,
    shift_apart)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{_module.name}')

__all__ = ['concatenate', 'DatasetLayoutError', 'DATASETS', 'load_dataset', 'make_dataset',
           'PlaceDataset', 'shift_apart']

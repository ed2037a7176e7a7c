"""One interface for every training / validation dataset: posed, labelled images.

The dataset description itself, :class:`~vl_attention.evaluation.place_dataset.PlaceDataset`,
its registry :data:`DATASETS` and the helpers that build and join datasets live in the
torch-free :mod:`vl_attention.evaluation.place_dataset`, so that ``evaluate-vpr`` reads every
layout training reads (and training reads the ``vpr_layout`` folders of ``evaluate-vpr``);
they are re-exported here. This module adds what only the adapters need.

Layouts are adapters registered in :data:`DATASETS`; ``load_dataset(kind, root,
**options)`` builds one and names unknown kinds and options.
"""

from pathlib import Path

from vl_attention.evaluation.place_dataset import (
    AREA_SPACING_M, concatenate, DatasetError, DATASETS, make_dataset, PlaceDataset, ROLES,
    shift_apart, SPLITS)

__all__ = ['AREA_SPACING_M', 'concatenate', 'DatasetLayoutError', 'DATASETS', 'load_dataset',
           'make_dataset', 'PlaceDataset', 'require_path', 'ROLES', 'shift_apart', 'SPLITS']


class DatasetLayoutError(DatasetError):
    """A dataset folder does not follow its layout; the message names what is missing."""


def require_path(path: str | Path, what: str) -> Path:
    """Return ``Path(path)`` if it exists, else raise DatasetLayoutError naming ``what``."""
    path = Path(path)
    if not path.exists():
        raise DatasetLayoutError(f'{path} is missing: {what}')
    return path


def load_dataset(kind: str, root: str | Path, **options: object) -> PlaceDataset:
    """Build the dataset of layout ``kind`` at ``root`` (see :data:`DATASETS`).

    Adapters register themselves when :mod:`vl_attention.training.sources` is
    imported, which importing this function from there does.
    """
    dataset: PlaceDataset = DATASETS.create(kind, root=root, **options)
    return dataset

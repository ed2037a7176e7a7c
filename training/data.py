"""The training and validation data of a recipe, ready for the loop."""

from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.engine.preprocess import Preprocessing
from vl_attention.evaluation.place_dataset import PlaceDataset
from vl_attention.training.augment import copy_seeds
from vl_attention.training.config import DatasetSpec, TrainConfig
from vl_attention.training.sampling import (BatchBuilder, GroundTruth, ImageRows,
                                            PlaceBatchSampler)
from vl_attention.training.sources import concatenate, load_dataset, shift_apart
from vl_attention.training.validation import retrieval_set

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """Training rows with their sampler, and the held-out retrieval set (or None)."""

    dataset: object          # PlaceDataset of the training rows
    ground_truth: object
    sampler: object
    images: object           # ImageRows
    builder: object          # BatchBuilder
    held_out: object         # RetrievalSet or None
    description: dict


def _load(spec: DatasetSpec) -> PlaceDataset:
    return load_dataset(spec.kind, root=str(Path(spec.root).expanduser()), **spec.options)


def _training_rows(dataset: PlaceDataset, spec: DatasetSpec) -> PlaceDataset:
    train = dataset.select(split='train')
    if spec.train_conditions:
        train = train.subset(np.isin(train.conditions, spec.train_conditions))
    if not len(train):
        raise ConfigError(f'{dataset.name} has no training images (split train'
                          + (f', conditions {list(spec.train_conditions)}'
                             if spec.train_conditions else '')
                          + f'); it has {dataset.describe()["splits"]}')
    return train


def _held_out_rows(cfg: TrainConfig, dataset: PlaceDataset) -> Optional[PlaceDataset]:
    if cfg.validation.kind:
        return _load(cfg.validation)
    for split in ('val', 'test'):
        rows = dataset.select(split=split)
        if len(rows):
            return rows
    return None


def load_training_data(cfg: TrainConfig, preprocessing: Preprocessing) -> TrainingData:
    """Load the recipe's dataset(s) and build sampler, images and the held-out set."""
    dataset = _load(cfg.dataset)
    train = _training_rows(dataset, cfg.dataset)
    if cfg.extra_datasets:
        train = concatenate(shift_apart(
            [train] + [_training_rows(_load(spec), spec) for spec in cfg.extra_datasets]))
    copies = cfg.augmentation.copies
    if copies:  # image i becomes rows i * (copies + 1) .. i * (copies + 1) + copies
        train = train.subset(np.repeat(np.arange(len(train)), copies + 1))
    ground_truth = GroundTruth(train, cfg.sampling)
    in_memory = train.pixels is not None
    images = ImageRows(train, preprocessing, preload=in_memory,
                       augmentation=cfg.augmentation,
                       augment_seeds=copy_seeds(len(train) // (copies + 1), copies, cfg.seed))
    held_out_rows = _held_out_rows(cfg, dataset)
    held_out = None
    if held_out_rows is not None:
        held_out = retrieval_set(held_out_rows, preprocessing, preload=in_memory,
                                 positive_distance_m=cfg.sampling.positive_distance_m)
    if held_out is None:
        LOGGER.warning('no validation set (database and query rows of a val/test split or '
                       'validation:); the last weights are kept instead of the best')
    return TrainingData(dataset=train, ground_truth=ground_truth,
                        sampler=PlaceBatchSampler(ground_truth, cfg.sampling), images=images,
                        builder=BatchBuilder(train, ground_truth, images), held_out=held_out,
                        description={'training': train.describe(),
                                     'validation': held_out_rows.describe()
                                     if held_out_rows is not None else None})

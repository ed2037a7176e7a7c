"""Ground truth, batch sampling and cached hard-negative mining on any PlaceDataset.

Ground truth comes from positions when every image has one: a *positive* pair
lies within ``positive_distance_m``, a *negative* pair beyond
``negative_distance_m`` (pairs in between are neither, as in the NetVLAD
protocol). Frame-aligned datasets without positions (Nordland, GardensPoint)
use place labels instead: the same label is a positive, labels at least
``negative_place_gap`` apart a negative.

A batch is ``places_per_batch`` random anchors that are negatives of each other,
each with ``views_per_place - 1`` random positives, so every anchor has a
positive and the other places provide negatives for in-batch (batch-hard)
mining. Partial hard-negative mining
(Arandjelovic et al., NetVLAD, CVPR 2016) adds, per anchor, the negatives
whose descriptors lie closest to the anchor's among a cache of training
descriptors re-embedded every ``refresh_every_steps`` steps.
"""

from dataclasses import dataclass
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np
import numpy.typing as npt
import torch

from vl_attention.engine.preprocess import Preprocessing, preprocess_frames
from vl_attention.evaluation.metrics import positives, within_radius_mask
from vl_attention.evaluation.place_dataset import PlaceDataset
from vl_attention.training.augment import augment, AugmentationConfig
from vl_attention.training.config import SamplingConfig
from vl_attention.training.datasets import poses_wxyz
from vl_attention.training.sources.base import DatasetLayoutError


@dataclass(frozen=True)
class Batch:
    """One training batch: images and their ground truth, as tensors."""

    indices: torch.Tensor       # (B,) rows of the training images
    images: torch.Tensor        # (B, 3, H, W) normalised
    positions_m: torch.Tensor   # (B, 3) relative to the set's origin_m
    poses: torch.Tensor         # (B, 7) position + unit quaternion (w, x, y, z), w >= 0
    positive_mask: torch.Tensor  # (B, B) bool: rows showing the same place (never itself)
    negative_mask: torch.Tensor  # (B, B) bool: rows surely showing another place


class GroundTruth:
    """Which rows of a dataset show the same place, and which surely another one."""

    def __init__(self, dataset: PlaceDataset, sampling: SamplingConfig) -> None:
        self.sampling = sampling
        if dataset.has_positions:
            self.kind, self.positions_m = 'positions', dataset.positions_m
        elif len(dataset) and (dataset.place_ids >= 0).all():
            self.kind, self.place_ids = 'place_ids', dataset.place_ids
        else:
            raise DatasetLayoutError(
                f'{dataset.name}: training needs a position or a place label for every image; '
                'this dataset has neither for some rows (use an adapter that provides them)')
        self.size = len(dataset)

    def pair_masks(self, rows_a: npt.ArrayLike, rows_b: npt.ArrayLike) -> Tuple[
            npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Boolean ``(len(a), len(b))`` positive / negative masks (never a row with itself)."""
        rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
        if self.kind == 'positions':
            xy_a, xy_b = self.positions_m[rows_a, :2], self.positions_m[rows_b, :2]
            positive = within_radius_mask(xy_a, xy_b, self.sampling.positive_distance_m)
            negative = ~within_radius_mask(xy_a, xy_b, self.sampling.negative_distance_m)
        else:
            gap = np.abs(self.place_ids[rows_a, None] - self.place_ids[None, rows_b])
            positive, negative = gap == 0, gap >= self.sampling.negative_place_gap
        return positive & (rows_a[:, None] != rows_b[None, :]), negative

    def positive_lists(self) -> List[npt.NDArray[np.int64]]:
        """For every row, the other rows that show the same place."""
        if self.kind == 'positions':
            xy_m = self.positions_m[:, :2]
            neighbours: Sequence[npt.ArrayLike] = positives(
                xy_m, xy_m, self.sampling.positive_distance_m)
        else:
            groups: Dict[Any, List[int]] = {}
            for row, place in enumerate(self.place_ids):
                groups.setdefault(place, []).append(row)
            neighbours = [groups[place] for place in self.place_ids]
        return [np.setdiff1d(np.asarray(rows, np.int64), [row])
                for row, rows in enumerate(neighbours)]


class ImageRows:
    """Normalised image tensors of a dataset's rows, in memory or read per batch.

    With ``augmentation`` (an AugmentationConfig) and ``augment_seeds`` (one
    per row, 0 = the image as recorded), rows are photometrically augmented
    copies (:mod:`.augment`).
    """

    def __init__(self, dataset: PlaceDataset, preprocessing: Preprocessing, *, preload: bool,
                 augmentation: Optional[AugmentationConfig] = None,
                 augment_seeds: Optional[npt.NDArray[np.int64]] = None) -> None:
        self.dataset, self.preprocessing = dataset, preprocessing
        self.augmentation, self.augment_seeds = augmentation, augment_seeds
        self.preloaded = self._read(np.arange(len(dataset))) if preload else None

    def _frame(self, row: Union[int, np.integer[Any]]) -> npt.NDArray[np.uint8]:
        image = self.dataset.load_image(int(row))
        if self.augment_seeds is not None and self.augment_seeds[row]:
            image = augment(image, self.augmentation, int(self.augment_seeds[row]))
        return image

    def _read(self, rows: Iterable[Union[int, np.integer[Any]]]) -> torch.Tensor:
        frames = [self._frame(row) for row in rows]
        return torch.from_numpy(preprocess_frames(frames, self.preprocessing))

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.dataset)

    def __getitem__(self, rows: Union[slice, npt.ArrayLike]) -> torch.Tensor:
        """Return ``(B, 3, H, W)`` tensors of the given rows (an index array or a slice)."""
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        rows = rows.reshape(-1)
        return self.preloaded[rows] if self.preloaded is not None else self._read(rows)

    def chunks(self, rows: np.ndarray,
               batch_size: int = 32) -> Iterator[Tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(rows, tensors)`` in chunks of ``batch_size``."""
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            yield chunk, self[chunk]


class PlaceBatchSampler:
    """Anchors with random positives (see the module docstring), seeded by a generator."""

    def __init__(self, ground_truth: GroundTruth, sampling: SamplingConfig) -> None:
        self.ground_truth, self.sampling = ground_truth, sampling
        self.positives = ground_truth.positive_lists()
        self.anchors = np.flatnonzero([len(rows) > 0 for rows in self.positives])
        if len(self.anchors) < sampling.places_per_batch:
            raise DatasetLayoutError(
                f'only {len(self.anchors)} training images have another view of their place '
                f'(within {sampling.positive_distance_m} m or the same place label); a batch '
                f'needs {sampling.places_per_batch}: record the route more than once or raise '
                'positive_distance_m')

    def sample(self, generator: torch.Generator) -> npt.NDArray[np.int64]:
        """Row indices of one batch: each anchor followed by its positives.

        Anchors are drawn in random order, skipping any that is not a negative
        of the anchors already chosen, so the batch shows distinct places.
        """
        order = self.anchors[torch.randperm(len(self.anchors), generator=generator).numpy()]
        anchors: List[np.intp] = []
        for candidate in order:
            _, negative = self.ground_truth.pair_masks([candidate], anchors or [candidate])
            if not anchors or negative.all():
                anchors.append(candidate)
            if len(anchors) == self.sampling.places_per_batch:
                break
        rows: List[np.integer[Any]] = []
        for anchor in anchors:
            candidates = self.positives[anchor]
            draw = torch.randint(len(candidates), (self.sampling.views_per_place - 1,),
                                 generator=generator).numpy()
            rows.extend([anchor, *candidates[draw]])
        return np.asarray(rows, np.int64)


class HardNegativeCache:
    """Descriptors of a random subset of training rows, for partial hard-negative mining."""

    def __init__(self, ground_truth: GroundTruth, sampling: SamplingConfig) -> None:
        self.ground_truth, self.sampling = ground_truth, sampling
        self.rows = np.zeros(0, np.int64)
        self.descriptors = np.zeros((0, 0), np.float32)

    def due(self, step: int) -> bool:
        """Whether the cache must be (re-)embedded before ``step``."""
        return not len(self.rows) or step % self.sampling.refresh_every_steps == 0

    def refresh(self, embed: Callable[[npt.NDArray[np.int64]], np.ndarray],
                generator: torch.Generator) -> None:
        """Re-embed a fresh random subset with ``embed(rows) -> (n, D) array``."""
        order = torch.randperm(self.ground_truth.size, generator=generator).numpy()
        self.rows = np.sort(order[:self.sampling.negative_cache_size])
        self.descriptors = embed(self.rows)

    def hardest_negatives(self, anchor_rows: npt.ArrayLike,
                          anchor_descriptors: np.ndarray) -> npt.NDArray[np.int64]:
        """Per anchor, the cached negatives closest to it in descriptor space (unique rows)."""
        _, negative = self.ground_truth.pair_masks(anchor_rows, self.rows)
        similarity = np.where(negative, anchor_descriptors @ self.descriptors.T, -np.inf)
        count = min(self.sampling.hard_negatives_per_place, len(self.rows))
        best = np.argsort(-similarity, axis=1, kind='stable')[:, :count]
        chosen = [self.rows[column] for row, columns in enumerate(best) for column in columns
                  if np.isfinite(similarity[row, column])]
        return np.unique(np.asarray(chosen, np.int64))

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Cache contents, for exact resumption."""
        return {'rows': self.rows.copy(), 'descriptors': self.descriptors.copy()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`."""
        self.rows, self.descriptors = state['rows'], state['descriptors']


class BatchBuilder:
    """Rows -> :class:`Batch` with ground-truth masks."""

    def __init__(self, dataset: PlaceDataset, ground_truth: GroundTruth,
                 images: ImageRows) -> None:
        self.ground_truth, self.images = ground_truth, images
        positions = np.nan_to_num(dataset.positions_m)
        self.origin_m = positions.mean(axis=0) if len(positions) else np.zeros(3)
        relative_m = positions - self.origin_m
        quaternions = np.where(np.isfinite(dataset.quaternions_xyzw), dataset.quaternions_xyzw,
                               [0.0, 0.0, 0.0, 1.0])
        self.positions_m = torch.from_numpy(relative_m.astype(np.float32))
        self.poses = torch.from_numpy(poses_wxyz(relative_m, quaternions))

    def __call__(self, rows: npt.ArrayLike) -> Batch:
        """Return the Batch of ``rows``."""
        positive, negative = self.ground_truth.pair_masks(rows, rows)
        indices = torch.from_numpy(np.asarray(rows, np.int64))
        return Batch(indices=indices, images=self.images[rows],
                     positions_m=self.positions_m[indices], poses=self.poses[indices],
                     positive_mask=torch.from_numpy(positive),
                     negative_mask=torch.from_numpy(negative))

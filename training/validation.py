"""Validation during training: Recall@N and PR-AUC of held-out queries, via the evaluation code.

A held-out set is a dataset's ``database`` rows and its ``query`` rows. Query
positives are those ``evaluate-vpr`` uses
(:func:`vl_attention.evaluation.place_dataset.query_positives`): the dataset's own
per-query lists (revisited Oxford / Paris, ``vpr_layout`` folders), else the database
images within ``positive_distance_m`` (positions), else those with the same place label.
Retrieval is an exact FAISS inner-product search
(:func:`vl_attention.evaluation.evaluate_vpr.retrieve`) scored by
:func:`vl_attention.evaluation.metrics.retrieval_metrics`, overall and per
query condition (e.g. night, fog). :func:`predict` gives the descriptors and
poses of any image tensor (e.g. to score a trained pose model on held-out views).
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import torch

from vl_attention.engine.preprocess import Preprocessing
from vl_attention.evaluation.evaluate_vpr import retrieve
from vl_attention.evaluation.metrics import retrieval_metrics
from vl_attention.evaluation.place_dataset import PlaceDataset, query_positives
from vl_attention.models.descriptor import DescriptorModel
from vl_attention.models.modes import evaluating
from vl_attention.training.sampling import ImageRows

Device = Union[str, torch.device]


@dataclass(frozen=True)
class RetrievalSet:
    """Database and query images of a held-out set, and each query's positives."""

    name: str
    database: ImageRows
    queries: ImageRows
    positives: tuple            # per query: database indices
    query_conditions: np.ndarray


def retrieval_set(dataset: PlaceDataset, preprocessing: Preprocessing, *,
                  positive_distance_m: float, preload: bool,
                  name: str = 'validation') -> Optional[RetrievalSet]:
    """Return the :class:`RetrievalSet` of a dataset's database and query rows (or None)."""
    database_rows = np.flatnonzero(dataset.roles == 'database')
    query_rows = np.flatnonzero(dataset.roles == 'query')
    if not len(database_rows) or not len(query_rows):
        return None
    positives = query_positives(dataset, database_rows, query_rows, positive_distance_m)
    return RetrievalSet(
        name=name, positives=positives, query_conditions=dataset.conditions[query_rows],
        database=ImageRows(dataset.subset(database_rows), preprocessing, preload=preload),
        queries=ImageRows(dataset.subset(query_rows), preprocessing, preload=preload))


@torch.no_grad()
def embed_rows(model: DescriptorModel, images: ImageRows, *, device: Device,
               rows: Optional[npt.ArrayLike] = None, batch_size: int = 32) -> np.ndarray:
    """Descriptors ``(N, D)`` float32 of an :class:`ImageRows` (all or ``rows``), in eval mode."""
    indices = np.arange(len(images)) if rows is None else np.asarray(rows)
    with evaluating(model):
        chunks = [model.outputs(tensors.to(device)).descriptor.float().cpu()
                  for _, tensors in images.chunks(indices, batch_size)]
    return torch.cat(chunks).numpy().astype(np.float32)


@torch.no_grad()
def predict(model: DescriptorModel, images: torch.Tensor, *,
            batch_size: int = 32) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Return descriptors and poses (or None) of all images as arrays, in eval mode.

    ``images`` is an ``(N, 3, H, W)`` tensor normalised for the model; poses are
    ``(N, 7)`` position (relative to a pose head's ``pose_origin_m``) + ``(w, x, y, z)``.
    """
    with evaluating(model):
        outputs = [model.outputs(images[start:start + batch_size])
                   for start in range(0, len(images), batch_size)]
    descriptors = torch.cat([output.descriptor for output in outputs]).numpy()
    poses = [output.pose for output in outputs if output.pose is not None]
    return descriptors, torch.cat(poses).numpy() if poses else None


def evaluate_retrieval(model: DescriptorModel, held_out: RetrievalSet, *,
                       n_values: Sequence[int], device: Device) -> Dict[str, Any]:
    """Recall@N and PR-AUC overall and per query condition; JSON-ready."""
    database = embed_rows(model, held_out.database, device=device)
    queries = embed_rows(model, held_out.queries, device=device)
    k = min(max(max(n_values), 2), len(database))
    similarities, indices, _ = retrieve(database, queries, k)
    result, _ = retrieval_metrics(similarities, indices, held_out.positives, n_values)
    result['by_condition'] = {}
    for condition in np.unique(held_out.query_conditions):
        rows = np.flatnonzero(held_out.query_conditions == condition)
        scores, _ = retrieval_metrics(similarities[rows], indices[rows],
                                      [held_out.positives[row] for row in rows], n_values)
        result['by_condition'][str(condition) or 'unlabelled'] = scores
    result['queries'] = len(queries)
    return result

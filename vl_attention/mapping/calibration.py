"""Similarity calibration fitted on the map itself (at ``build-map`` time, stored in the manifest).

The place filter turns a retrieved place's cosine similarity into a
likelihood ratio ``exp((s - s_floor) / T)``. ``T`` must match how much
similarities vary among *wrong* places of this map with this model: each
sampled map image is searched against the map, every result farther than
``exclusion_m`` from it is an impostor, and the spread (standard deviation)
of the impostors' top similarities is the temperature's unit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vl_attention.mapping.index import MapIndex


@dataclass(frozen=True)
class SimilarityCalibration:
    """What the manifest stores under ``calibration``."""

    impostor_similarity_mean: float
    impostor_similarity_std: float
    samples: int
    exclusion_m: float
    top_k: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)


def calibrate_similarities(index: MapIndex, descriptors: np.ndarray,
                           positions_enu_m: np.ndarray, *,
                           exclusion_m: float = 25.0, top_k: int = 20,
                           max_samples: int = 2000) -> SimilarityCalibration:
    """Impostor similarity statistics of a map (``index`` is its :class:`MapIndex`)."""
    count = len(descriptors)
    sample = np.unique(np.linspace(0, count - 1, min(count, max_samples)).astype(np.int64))
    k = min(count, top_k + 64)
    similarities, indices = index.search(np.asarray(descriptors[sample], np.float32), k)
    impostors = []
    for row, place in enumerate(sample):
        found = indices[row] >= 0
        far = np.linalg.norm(positions_enu_m[indices[row][found]] - positions_enu_m[place],
                             axis=1) > exclusion_m
        impostors.append(similarities[row][found][far][:top_k])
    values = np.concatenate(impostors) if impostors else np.zeros(0)
    if len(values) < 2:
        # a map too small to have impostors: a neutral unit spread
        return SimilarityCalibration(0.0, 0.1, 0, float(exclusion_m), int(top_k))
    return SimilarityCalibration(float(values.mean()), float(max(values.std(), 1e-3)),
                                 len(sample), float(exclusion_m), int(top_k))

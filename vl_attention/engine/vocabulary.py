"""Vocabulary adaptation: a NetVLAD head's centroids fitted on the images of one map.

A preset with ``vocabulary: map`` ships no centroids. ``build-map`` (and
``evaluate-vpr``, on the database) samples the trunk's local features evenly
over the map's images, runs k-means (FAISS) on them and exports the fitted
model into the map, whose card then says ``vocabulary: fitted``; the node runs
that export, so the runtime needs no torch. This is the vocabulary adaptation of
Arandjelović & Zisserman, "All about VLAD" (CVPR 2013): centroids from the
target domain's own images, without labels or training.

Torch is imported only when a vocabulary is fitted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import json
import logging
from pathlib import Path
from typing import (Any, Callable, cast, Iterable, Iterator, Optional, Protocol, Sequence,
                    TYPE_CHECKING, TypeVar)

import numpy as np

from vl_attention.config import ConfigError, from_dict
from vl_attention.engine.embedder import create_embedder, default_cache_dir, Embedder
from vl_attention.engine.model_card import needs_map_vocabulary  # noqa: F401  (re-exported)
from vl_attention.io import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from vl_attention.models.descriptor import DescriptorModel

LOG = logging.getLogger(__name__)
T = TypeVar('T')


class VocabularyHead(Protocol):
    """A NetVLAD-type head (:class:`~vl_attention.models.netvlad.NetVLAD`, CRN)."""

    clusters: int
    centroids: Any   # torch.Tensor (K, C)

    def set_centroids(self, centroids: np.ndarray) -> Any:
        """Set the ``(K, C)`` centroids and the soft assignment they imply."""

    def initialise_centroids(self, features: np.ndarray, *, iterations: int,
                             seed: int) -> np.ndarray:
        """Fit the centroids by k-means on local features ``(N, C)``."""


@dataclass(frozen=True)
class VocabularyConfig:
    """How a map's vocabulary is fitted: images sampled, local features k-means sees."""

    images: int = 500          # map images, evenly spaced over the map
    features: int = 60_000     # local features sampled evenly over those images
    iterations: int = 25       # k-means iterations
    seed: int = 0              # positions sampled and k-means start

    def __post_init__(self) -> None:
        if self.images < 1 or self.features < 1 or self.iterations < 1:
            raise ConfigError('the vocabulary fit needs images, features and iterations >= 1')


def evenly_spaced(count: int, wanted: int) -> np.ndarray:
    """Return up to ``wanted`` distinct indices spread evenly over ``range(count)``."""
    if count <= wanted:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(int))


def fitted_on_images(embedder: Embedder, items: Sequence[T], load: Callable[[T], np.ndarray], *,
                     cfg: VocabularyConfig = VocabularyConfig()) -> Embedder:
    """Return ``embedder`` fitted on an even spread of ``items`` (read by ``load``) if it needs it.

    A model without ``vocabulary: map`` is returned as it is.
    """
    if not needs_map_vocabulary(embedder.card):
        return embedder
    chosen = evenly_spaced(len(items), cfg.images)
    return fit_map_vocabulary(embedder, (load(items[i]) for i in chosen), len(chosen),
                              cfg=cfg)[0]


def fit_map_vocabulary(embedder: Embedder, images: Iterable[np.ndarray], image_count: int, *,
                       cfg: VocabularyConfig = VocabularyConfig(),
                       centroids_file: Optional[Path] = None) -> tuple[Embedder, dict[str, Any]]:
    """Fit the centroids of ``embedder``'s head on ``images``; return the fitted embedder.

    ``images`` are uint8 RGB frames of the map (``image_count`` of them, already
    chosen, e.g. with :func:`evenly_spaced`). ``centroids_file`` keeps the fit
    (``.npy``): when it exists, its centroids are used and ``images`` is not
    read, so a resumed map build gets the same model. Returns the new embedder
    (same backend settings, the fitted model exported for the map to carry)
    and a record of the fit for the map's manifest.
    """
    from vl_attention.engine.export import cached_export, rebuild_model
    from vl_attention.models import ModelConfig
    model = rebuild_model(embedder.card)
    head = cast(VocabularyHead, model.aggregator)
    record_file = centroids_file.with_suffix('.json') if centroids_file is not None else None
    if centroids_file is not None and centroids_file.is_file():
        head.set_centroids(np.load(centroids_file))
        kept = json.loads(record_file.read_text()) if record_file and record_file.is_file() \
            else {}
        fit = kept | {'resumed': True}
    else:
        fit = _fit(model, images, image_count, cfg)
        if centroids_file is not None and record_file is not None:
            with atomic_path(centroids_file) as temporary, open(temporary, 'wb') as stream:
                np.save(stream, head.centroids.detach().cpu().numpy())
            atomic_write_text(record_file, json.dumps(fit))
    model.untrained_modules = ()
    model_config = replace(from_dict(ModelConfig, embedder.card.model_config, where='model card'),
                           vocabulary='fitted')
    fitted = create_embedder(embedder.config, model=model, model_config=model_config)
    if fitted.export_dir is None:   # the torch backend: still export, the map carries it
        cache_dir = Path(embedder.config.cache_dir) if embedder.config.cache_dir \
            else default_cache_dir()
        fitted.export_dir = cached_export(model, fitted.card, cache_dir)
    LOG.info('vocabulary of %s fitted on the map: fingerprint %s', fitted.card.model_name,
             fitted.fingerprint)
    return fitted, {'clusters': int(head.clusters), 'fingerprint': fitted.fingerprint, **fit}


def _fit(model: DescriptorModel, images: Iterable[np.ndarray], image_count: int,
         cfg: VocabularyConfig) -> dict[str, Any]:
    from vl_attention.models.netvlad import sample_local_features
    per_image = -(-cfg.features // max(image_count, 1))
    local = sample_local_features(model, _batches(model, images), per_image=per_image,
                                  max_features=cfg.features, seed=cfg.seed)
    head = cast(VocabularyHead, model.aggregator)
    head.initialise_centroids(local, iterations=cfg.iterations, seed=cfg.seed)
    LOG.info('fitted %d centroids on %d local features of %d map images', head.clusters,
             len(local), image_count)
    return {'images': int(image_count), 'features': int(len(local)),
            'iterations': cfg.iterations, 'seed': cfg.seed}


def _batches(model: DescriptorModel, images: Iterable[np.ndarray],
             batch_size: int = 16) -> Iterator[Any]:
    """Yield the images as preprocessed ``(B, 3, H, W)`` tensors."""
    import torch

    from vl_attention.engine.preprocess import preprocess_frames
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            yield torch.from_numpy(preprocess_frames(batch, model.preprocessing))
            batch = []
    if batch:
        yield torch.from_numpy(preprocess_frames(batch, model.preprocessing))

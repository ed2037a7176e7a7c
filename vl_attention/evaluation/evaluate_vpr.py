"""``evaluate-vpr``: Recall@N, ratio-test PR curve and latency on a place-recognition dataset.

``main(cfg, dataset, out_dir) -> Path`` writes ``metrics.json``, ``report.md`` and
PNG plots into ``out_dir``; with several models, one sub-directory each and a table.
``dataset`` is a ``vpr_layout`` folder (:mod:`.vpr_dataset`) or any
:class:`~vl_attention.evaluation.place_dataset.PlaceDataset`, e.g. one of
``vl_attention.training.sources.load_dataset(kind, root)`` (``--dataset KIND ROOT``):
its ``database`` and ``query`` rows of one split are scored
(:func:`~.vpr_dataset.retrieval_view`).

The PR curve's confidence is the node's (:func:`~vl_attention.localization.localizer.
ratio_test_confidence`, over the node's ``candidates`` best matches), so the PR-AUC
here is the PR-AUC of the node's ``confidence``:

* datasets with positions (``database.csv``): the runner-up is the best candidate
  farther than ``ratio_test_exclusion_m`` from the best match, as on the robot;
* index-only datasets (``--sequential K``, ``ground_truth.npy``, place labels): the database
  index stands in for the position, so the exclusion counts frames
  (``ratio_test_exclusion_frames``; default ``K`` for sequential sets, where
  frames within K of the best show its place, and 0, the plain ratio test, otherwise).

``filter``: the queries are one route-ordered sequence; the node's place filter
runs over them too (:mod:`.sequence`), giving filtered Recall@1, the share of
frames it gives a fix (tracking) and the precision of those fixes.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path
import time
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from tqdm import tqdm

from vl_attention.config import ConfigError
from vl_attention.engine.embedder import create_embedder, Embedder, EmbedderConfig
from vl_attention.engine.vocabulary import fitted_on_images, VocabularyConfig
from vl_attention.evaluation import metrics
from vl_attention.evaluation.place_dataset import PlaceDataset
from vl_attention.evaluation.report import write_vpr_report
from vl_attention.evaluation.sequence import filter_sequence
from vl_attention.evaluation.vpr_dataset import load_vpr_layout, retrieval_view, VPRDataset
from vl_attention.localization import LocalizerConfig
from vl_attention.mapping.index import MapIndex
from vl_attention.mapping.sources import read_rgb

NODE_DEFAULTS = LocalizerConfig()


@dataclass(frozen=True)
class VPREvalConfig:
    """What to evaluate and how."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    models: Tuple[str, ...] = ()                 # several presets: one run each, one table
    positive_distance_m: float = 25.0
    sequential: Optional[int] = None
    n_values: Tuple[int, ...] = metrics.DEFAULT_N_VALUES
    examples: int = 5
    ratio_test_candidates: int = NODE_DEFAULTS.candidates
    ratio_test_exclusion_m: float = NODE_DEFAULTS.ratio_test_exclusion_m
    # index-only datasets; None: sequential K or 0
    ratio_test_exclusion_frames: Optional[int] = None
    progress: bool = True                      # tqdm bars on a terminal (never in logs)
    filter: bool = False                       # queries in route order: run the place filter
    split: Optional[str] = None                # rows scored; None: test, else val, else train
    # models with ``vocabulary: map`` fit it on the database images
    vocabulary: VocabularyConfig = field(default_factory=VocabularyConfig)

    def __post_init__(self) -> None:
        if self.ratio_test_candidates < 2:
            raise ConfigError(f'ratio_test_candidates={self.ratio_test_candidates} must be >= 2 '
                              '(the ratio test needs a runner-up)')
        if self.ratio_test_exclusion_m < 0 or (self.ratio_test_exclusion_frames or 0) < 0:
            raise ConfigError('ratio_test_exclusion_m and ratio_test_exclusion_frames must be '
                              '>= 0')
        if not 0 <= self.positive_distance_m < float('inf') or (self.sequential or 0) < 0:
            raise ConfigError(f'positive_distance_m={self.positive_distance_m} must be a finite '
                              f'distance >= 0 and sequential={self.sequential} >= 0')


def embed_images(embedder: Embedder, paths: Sequence[Path], *, progress: bool = False,
                 desc: str = 'embedding') -> Tuple[np.ndarray, float]:
    """Descriptors of image files and the embedding time per image (ms).

    With ``progress`` a tqdm bar counts the images read; it stays off when
    stderr is not a terminal (logs and CI stay clean).
    """
    started = time.perf_counter()
    with progress_bar(paths, progress=progress, desc=desc) as bar:
        descriptors = embedder.embed_batches(read_rgb(path) for path in bar)
    return descriptors, (time.perf_counter() - started) * 1e3 / max(len(paths), 1)


def progress_bar(items: Iterable[Any], *, progress: bool, desc: str) -> Any:
    """Return a tqdm bar over ``items`` on stderr; off without ``progress`` or off a TTY."""
    return tqdm(items, desc=desc, unit='img', disable=None if progress else True)


def retrieve(database: np.ndarray, queries: np.ndarray,
             k: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """Exact top-k search; return similarities, indices and the per-query search time (ms)."""
    index = MapIndex.create('flat_ip', database.shape[1])
    index.add(database)
    started = time.perf_counter()
    similarities, indices = index.search(queries, k)
    return similarities, indices, (time.perf_counter() - started) * 1e3 / max(len(queries), 1)


def ratio_test_exclusion(cfg: VPREvalConfig, dataset: VPRDataset) -> Tuple[float, str]:
    """``(exclusion, unit)`` of the runner-up: metres with positions, else frames."""
    if dataset.database_xy_m is not None:
        return cfg.ratio_test_exclusion_m, 'm'
    if cfg.ratio_test_exclusion_frames is not None:
        return cfg.ratio_test_exclusion_frames, 'frames'
    return (cfg.sequential or 0), 'frames'


def node_confidences(cfg: VPREvalConfig, dataset: VPRDataset, similarities: np.ndarray,
                     indices: np.ndarray) -> np.ndarray:
    """Per-query confidence exactly as the node's Localizer computes it (module docstring)."""
    exclusion, _ = ratio_test_exclusion(cfg, dataset)
    top = slice(None, cfg.ratio_test_candidates)
    return metrics.ratio_test_scores(similarities[:, top], indices[:, top],
                                     dataset.database_xy_m, exclusion)


def evaluate_model(cfg: VPREvalConfig, dataset: VPRDataset,
                   embedder: Embedder) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """All metrics of one model on one dataset, plus what the report needs to plot."""
    name = embedder.card.model_name
    # a vocabulary: map model fits on the database, the map it searches
    embedder = fitted_on_images(embedder, dataset.database_images, read_rgb, cfg=cfg.vocabulary)
    database, database_ms = embed_images(embedder, dataset.database_images,
                                         progress=cfg.progress, desc=f'{name} database')
    queries, query_ms = embed_images(embedder, dataset.query_images,
                                     progress=cfg.progress, desc=f'{name} queries')
    k = min(max(max(cfg.n_values), cfg.ratio_test_candidates), len(database))
    similarities, indices, search_ms = retrieve(database, queries, k)
    confidences = node_confidences(cfg, dataset, similarities, indices)
    scores, curve = metrics.retrieval_metrics(similarities, indices, dataset.positives,
                                              cfg.n_values, scores=confidences)
    exclusion, unit = ratio_test_exclusion(cfg, dataset)
    result = {
        'model': name, 'fingerprint': embedder.fingerprint,
        'backend': embedder.backend_name, 'descriptor_dim': embedder.descriptor_dim,
        **scores,
        'confidence': (f'node ratio test over the top {min(cfg.ratio_test_candidates, k)}, '
                       f'runner-up > {exclusion:g} {unit} from the best'),
        'embed_ms_per_image': (database_ms + query_ms) / 2, 'search_ms_per_query': search_ms,
    }
    if cfg.filter:
        result['sequence'] = filter_sequence(database, queries, dataset.positives,
                                             database_xy_m=dataset.database_xy_m)['all']
    return result, dict(curve, indices=indices)


def load_evaluation_set(cfg: VPREvalConfig, dataset: PlaceDataset | str | Path) -> VPRDataset:
    """Return the :class:`VPRDataset` scored: a ``vpr_layout`` folder or a PlaceDataset's split."""
    if not isinstance(dataset, PlaceDataset):
        dataset = load_vpr_layout(root=dataset, sequential=cfg.sequential)
    elif cfg.sequential is not None and dataset.frame.get('sequential') != cfg.sequential:
        raise ConfigError(f'sequential={cfg.sequential} is ground truth of vpr_layout folders; '
                          f'{dataset.name} was not loaded with it')
    return retrieval_view(dataset, positive_distance_m=cfg.positive_distance_m,
                          split=cfg.split)


def main(cfg: VPREvalConfig, dataset: PlaceDataset | str | Path, out_dir: str | Path) -> Path:
    """Evaluate every configured model on the dataset; write the report; return ``out_dir``."""
    scored = load_evaluation_set(cfg, dataset)
    models = cfg.models or (cfg.embedder.model,)
    runs = []
    for model in models:
        embedder = create_embedder(replace(cfg.embedder, model=model))
        runs.append(evaluate_model(cfg, scored, embedder))
    return write_vpr_report(out_dir, scored, runs, examples=cfg.examples)

"""``evaluate-vpr``: Recall@N, ratio-test PR curve and latency on a place-recognition dataset.

``main(cfg, dataset_dir, out_dir) -> Path`` writes ``metrics.json``, ``report.md`` and
PNG plots into ``out_dir``; with several models, one sub-directory each and a table.

The PR curve's confidence is the node's (:func:`~vl_attention.localization.localizer.
ratio_test_confidence`, over the node's ``candidates`` best matches), so the PR-AUC
here is the PR-AUC of the node's ``confidence``:

* datasets with positions (``database.csv``): the runner-up is the best candidate
  farther than ``ratio_test_exclusion_m`` from the best match, as on the robot;
* index-only datasets (``--sequential K``, ``ground_truth.npy``): the database
  index stands in for the position, so the exclusion counts frames
  (``ratio_test_exclusion_frames``; default ``K`` for sequential sets, where
  frames within K of the best show its place, and 0, the plain ratio test, otherwise).

``filter``: the queries are one route-ordered sequence; the node's place filter
runs over them too (:mod:`.sequence`), giving filtered Recall@1, the share of
frames it gives a fix (tracking) and the precision of those fixes.
"""

from dataclasses import dataclass, field, replace
import time

from tqdm import tqdm

from vl_attention.config import ConfigError
from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.evaluation import metrics
from vl_attention.evaluation.report import write_vpr_report
from vl_attention.evaluation.sequence import filter_sequence
from vl_attention.evaluation.vpr_dataset import load_vpr_dataset
from vl_attention.localization import LocalizerConfig
from vl_attention.mapping.index import MapIndex
from vl_attention.mapping.sources import read_rgb

NODE_DEFAULTS = LocalizerConfig()


@dataclass(frozen=True)
class VPREvalConfig:
    """What to evaluate and how."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    models: tuple = ()                 # several presets: one run each, one table
    positive_distance_m: float = 25.0
    sequential: int = None
    n_values: tuple = metrics.DEFAULT_N_VALUES
    examples: int = 5
    ratio_test_candidates: int = NODE_DEFAULTS.candidates
    ratio_test_exclusion_m: float = NODE_DEFAULTS.ratio_test_exclusion_m
    ratio_test_exclusion_frames: int = None    # index-only datasets; None: sequential K or 0
    progress: bool = True                      # tqdm bars on a terminal (never in logs)
    filter: bool = False                       # queries in route order: run the place filter

    def __post_init__(self):
        if self.ratio_test_candidates < 2:
            raise ConfigError(f'ratio_test_candidates={self.ratio_test_candidates} must be >= 2 '
                              '(the ratio test needs a runner-up)')
        if self.ratio_test_exclusion_m < 0 or (self.ratio_test_exclusion_frames or 0) < 0:
            raise ConfigError('ratio_test_exclusion_m and ratio_test_exclusion_frames must be '
                              '>= 0')
        if not 0 <= self.positive_distance_m < float('inf') or (self.sequential or 0) < 0:
            raise ConfigError(f'positive_distance_m={self.positive_distance_m} must be a finite '
                              f'distance >= 0 and sequential={self.sequential} >= 0')


def embed_images(embedder, paths, *, progress=False, desc='embedding'):
    """Descriptors of image files and the embedding time per image (ms).

    With ``progress`` a tqdm bar counts the images read; it stays off when
    stderr is not a terminal (logs and CI stay clean).
    """
    started = time.perf_counter()
    with progress_bar(paths, progress=progress, desc=desc) as bar:
        descriptors = embedder.embed_batches(read_rgb(path) for path in bar)
    return descriptors, (time.perf_counter() - started) * 1e3 / max(len(paths), 1)


def progress_bar(items, *, progress, desc):
    """Return a tqdm bar over ``items`` on stderr; off without ``progress`` or off a TTY."""
    return tqdm(items, desc=desc, unit='img', disable=None if progress else True)


def retrieve(database, queries, k):
    """Exact top-k search; return similarities, indices and the per-query search time (ms)."""
    index = MapIndex.create('flat_ip', database.shape[1])
    index.add(database)
    started = time.perf_counter()
    similarities, indices = index.search(queries, k)
    return similarities, indices, (time.perf_counter() - started) * 1e3 / max(len(queries), 1)


def ratio_test_exclusion(cfg, dataset):
    """``(exclusion, unit)`` of the runner-up: metres with positions, else frames."""
    if dataset.database_xy_m is not None:
        return cfg.ratio_test_exclusion_m, 'm'
    if cfg.ratio_test_exclusion_frames is not None:
        return cfg.ratio_test_exclusion_frames, 'frames'
    return (cfg.sequential or 0), 'frames'


def node_confidences(cfg, dataset, similarities, indices):
    """Per-query confidence exactly as the node's Localizer computes it (module docstring)."""
    exclusion, _ = ratio_test_exclusion(cfg, dataset)
    top = slice(None, cfg.ratio_test_candidates)
    return metrics.ratio_test_scores(similarities[:, top], indices[:, top],
                                     dataset.database_xy_m, exclusion)


def evaluate_model(cfg, dataset, embedder):
    """All metrics of one model on one dataset, plus what the report needs to plot."""
    name = embedder.card.model_name
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


def main(cfg, dataset_dir, out_dir):
    """Evaluate every configured model on the dataset; write the report; return ``out_dir``."""
    dataset = load_vpr_dataset(dataset_dir, positive_distance_m=cfg.positive_distance_m,
                               sequential=cfg.sequential)
    models = cfg.models or (cfg.embedder.model,)
    runs = []
    for model in models:
        embedder = create_embedder(replace(cfg.embedder, model=model))
        runs.append(evaluate_model(cfg, dataset, embedder))
    return write_vpr_report(out_dir, dataset, runs, examples=cfg.examples)

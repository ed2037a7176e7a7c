"""``evaluate-vpr``: Recall@N, ratio-test PR curve and latency on a place-recognition dataset.

``main(cfg, dataset_dir, out_dir) -> Path`` writes ``metrics.json``, ``report.md`` and
PNG plots into ``out_dir``; with several models, one sub-directory each and a table.
"""

from dataclasses import dataclass, field, replace
import time

from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.evaluation import metrics
from vl_attention.evaluation.report import write_vpr_report
from vl_attention.evaluation.vpr_dataset import load_vpr_dataset
from vl_attention.mapping.sources import read_rgb
from vl_attention.mapping.index import MapIndex


@dataclass(frozen=True)
class VPREvalConfig:
    """What to evaluate and how."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    models: tuple = ()                 # several presets: one run each, one table
    positive_distance_m: float = 25.0
    sequential: int = None
    n_values: tuple = metrics.DEFAULT_N_VALUES
    examples: int = 5


def embed_images(embedder, paths):
    """Descriptors of image files and the embedding time per image (ms)."""
    started = time.perf_counter()
    descriptors = embedder.embed_batches(read_rgb(path) for path in paths)
    return descriptors, (time.perf_counter() - started) * 1e3 / max(len(paths), 1)


def retrieve(database, queries, k):
    """Exact top-k search; return similarities, indices and the per-query search time (ms)."""
    index = MapIndex.create('flat_ip', database.shape[1])
    index.add(database)
    started = time.perf_counter()
    similarities, indices = index.search(queries, k)
    return similarities, indices, (time.perf_counter() - started) * 1e3 / max(len(queries), 1)


def evaluate_model(cfg, dataset, embedder):
    """All metrics of one model on one dataset, plus what the report needs to plot."""
    database, database_ms = embed_images(embedder, dataset.database_images)
    queries, query_ms = embed_images(embedder, dataset.query_images)
    k = min(max(max(cfg.n_values), 2), len(database))
    similarities, indices, search_ms = retrieve(database, queries, k)
    scores, curve = metrics.retrieval_metrics(similarities, indices, dataset.positives,
                                              cfg.n_values)
    result = {
        'model': embedder.card.model_name, 'fingerprint': embedder.fingerprint,
        'backend': embedder.backend_name, 'descriptor_dim': embedder.descriptor_dim,
        **scores,
        'embed_ms_per_image': (database_ms + query_ms) / 2, 'search_ms_per_query': search_ms,
    }
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

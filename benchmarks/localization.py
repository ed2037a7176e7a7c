"""Single-frame vs filtered vs refined localization: real sequences and the synthetic town.

Sections (all on 2 CPU cores, not a timed test):

* ``nordland``: ../shared/data/nordland_dev_64x32, summer map, winter queries in route
  order, no odometry (bounded-speed model). Descriptors: SeqSLAM's patch-normalised
  64x32 thumbnail, the default model and ``--sequence-models`` (default: the trained
  ``effnet_lite0_netvlad_vpr``, whose head was trained on places 0-899, so only its
  900-1199 rows are held out). The filter's settings were chosen on places 0-899 and on
  a synthetic validation town (another town seed and route, not the one below);
  900-1199 is held out. Positives: +-1 place.
* ``corridor``: ../shared/data/corridor, the same way (positives from its ground truth).
* ``synthetic``: the ``benchmark`` preset's town, a day map and night / fog / dusk / rain
  queries at 10 Hz, run through ``Localizer.localize`` (the node's code) with the filter
  and PnP refinement, plus a kidnap (the query jumps 400 m along the route).
* ``scale``: the filter's cost per frame on a 1M-place map.
* ``latency``: ``Localizer.localize`` per 480x640 frame, refinement on and off.

``python -m benchmarks.localization`` prints the tables and writes
benchmarks/results/localization.json. ``--model PRESET`` runs every section with another
model (its own map under ``--work-dir``), e.g. the trained ``effnet_lite0_netvlad_vpr`` with
``--out benchmarks/results/localization_netvlad_vpr.json``.
"""

# first, before numpy loads: the node's BLAS thread default (see vl_attention/__init__.py)
import vl_attention  # noqa: F401,I100

import argparse
from dataclasses import replace
import json
import logging
from pathlib import Path
import platform
import time

import cv2
import numpy as np

from vl_attention.engine.vocabulary import fitted_on_images
from vl_attention.evaluation.consistency import consistency_summary
from vl_attention.evaluation.sequence import filter_sequence
from vl_attention.evaluation.vpr_dataset import load_vpr_dataset
from vl_attention.io import write_report_sections
from vl_attention.localization.place_filter import Motion, PlaceFilter, PlaceFilterConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
CANDIDATES = 20   # retrieved per frame (as the node's ``candidates``)
# heads trained on places 0-899 (the default's adapter is the trained head's)
NORDLAND_TRAINED_MODELS = ('effnet_lite0_netvlad_vpr', 'effnet_lite0_netvlad_vpr_map')
# the other likelihoods at the scales chosen for them on Nordland places 0-899
OTHER_LIKELIHOODS = {'map_calibrated': 0.35, 'query_normalised': 2.0}
LOG = logging.getLogger('localization_benchmark')


def patch_normalised(images, patch=8):
    """Return SeqSLAM's descriptor: 64x32 grey, each 8x8 patch to zero mean and unit variance."""
    thumbs = np.stack([cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (64, 32),
                                  interpolation=cv2.INTER_AREA) for image in images])
    thumbs = thumbs.astype(np.float32)
    for y in range(0, 32, patch):
        for x in range(0, 64, patch):
            block = thumbs[:, y:y + patch, x:x + patch]
            thumbs[:, y:y + patch, x:x + patch] = (block - block.mean((1, 2), keepdims=True)) \
                / (block.std((1, 2), keepdims=True) + 1e-6)
    vectors = thumbs.reshape(len(images), -1)
    vectors -= vectors.mean(axis=1, keepdims=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def read_rgb(path):
    """Read an image file as RGB."""
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def real_sequence(name, splits, embedders, temperature_scale):
    """Rows for one real sequence: SAD and each model's descriptors, through the filter."""
    root = SHARED / name
    if not root.is_dir():
        return {'skipped': f'{root} is missing'}
    dataset = load_vpr_dataset(root)
    database = [read_rgb(p) for p in dataset.database_images]
    queries = [read_rgb(p) for p in dataset.query_images]
    splits = splits or {'all': (0, len(queries))}
    result = {}
    descriptors = {'patch_normalised_sad': (patch_normalised(database),
                                            patch_normalised(queries))}
    for embedder in embedders:
        embedder = fitted_on_images(embedder, database, lambda image: image)
        descriptors[embedder.card.model_name] = (embedder.embed_batches(database),
                                                 embedder.embed_batches(queries))
    for descriptor, (db, q) in descriptors.items():
        result[descriptor] = filter_sequence(
            db, q, dataset.positives, splits=splits,
            filter_config=PlaceFilterConfig(temperature_scale=temperature_scale))
        for likelihood, scale in OTHER_LIKELIHOODS.items():
            result[f'{descriptor} ({likelihood})'] = filter_sequence(
                db, q, dataset.positives, splits=splits,
                filter_config=PlaceFilterConfig(temperature_scale=scale, likelihood=likelihood))
    return result


def map_embedder(map_dir, embedder):
    """Return the embedder of the model a map carries (e.g. fitted on it), else ``embedder``."""
    from vl_attention.engine.embedder import create_embedder
    from vl_attention.mapping.map_format import carried_model_config
    config = carried_model_config(embedder.config, map_dir)
    return embedder if config == embedder.config else create_embedder(config)


def synthetic_world(work_dir, frames):
    """Render the benchmark preset's town: a day map and four query conditions."""
    from vl_attention.data.synthetic import generate
    from vl_attention.data.synthetic.presets import _drive, get_preset, TraversalSpec
    world = Path(work_dir) / f'world_{frames}'
    if (world / 'world.json').is_file():
        return world
    drive = dict(route_seed=3, frames=frames, heading_deg=4.0, pitch_deg=1.5)
    traversals = (
        TraversalSpec('map_day', 'day', _drive(route_seed=3, frames=frames)),
        TraversalSpec('query_night', 'night', _drive(offset_m=1.2, seed=1, start_m=0.5,
                                                     **drive), occluder_density=0.2),
        TraversalSpec('query_fog', 'fog', _drive(offset_m=1.6, seed=2, start_m=0.25,
                                                 **drive), occluder_density=0.5),
        TraversalSpec('query_dusk', 'dusk', _drive(offset_m=1.0, seed=1, start_m=0.5,
                                                   **drive), occluder_density=0.4),
        TraversalSpec('query_rain', 'rain', _drive(offset_m=1.4, seed=3, start_m=0.3,
                                                   **drive), occluder_density=0.3))
    generate(replace(get_preset('benchmark'), traversals=traversals), world, progress=False)
    return world


def read_traversal(folder, origin):
    """Image paths, stamps and poses of a synthetic traversal, in ENU at the map's ``origin``."""
    from vl_attention.geo import geodetic_to_enu
    from vl_attention.mapping import read_poses_csv
    columns = read_poses_csv(folder / 'poses.csv')
    positions = geodetic_to_enu(np.asarray(columns['latitude_deg']),
                                np.asarray(columns['longitude_deg']),
                                np.asarray(columns['altitude_m']), origin).reshape(-1, 3)
    orientations = np.stack([columns[k] for k in ('qx', 'qy', 'qz', 'qw')], axis=1)
    return ([folder / 'images' / name for name in columns['image']],
            np.asarray(columns['stamp_ns']) * 1e-9, positions, orientations)


def run_traversal(localizer, paths, stamps_s, order):
    """Localize frames ``order`` of a traversal in sequence; results per frame."""
    localizer.reset()
    results = []
    for step, frame in enumerate(order):
        # a kidnapped robot's clock runs on: stamps stay 0.1 s apart
        stamp = stamps_s[order[0]] + 0.1 * step
        results.append(localizer.localize(read_rgb(paths[frame]), stamp_s=stamp))
    return results


def mode_rows(results, positions, orientations, order):
    """Errors, fix rate, consistency of single-frame, filtered and final (refined) output."""
    from vl_attention.geo import rotation_angle_deg
    truth = positions[order]
    modes = {
        'single_frame': [r.single_frame for r in results],
        'filtered': [r.filtered for r in results],
        'refined': [r if r.pose_source == 'pnp' else None for r in results],
        'output': results}
    rows = {}
    for mode, items in modes.items():
        fixes = [(k, r) for k, r in enumerate(items) if r is not None and r.ok]
        errors = np.array([np.linalg.norm(r.position_enu_m[:2] - truth[k][:2])
                           for k, r in fixes]) if fixes else np.zeros(0)
        row = {'fixes': len(fixes), 'frames': len(items),
               'median_error_m': float(np.median(errors)) if len(errors) else None,
               'within_5m_of_fixes': float(np.mean(errors < 5.0)) if len(errors) else None,
               'within_5m_of_frames': float(np.sum(errors < 5.0) / len(items))}
        if mode in ('refined', 'output') and fixes:
            angles = [rotation_angle_deg(r.orientation_xyzw, orientations[order[k]])
                      for k, r in fixes]
            row['median_rotation_error_deg'] = float(np.median(angles))
        row['consistency'] = consistency_summary(
            [(r.position_enu_m - truth[k])[:2] for k, r in fixes],
            [r.position_covariance_m2[:2, :2] for k, r in fixes])
        rows[mode] = row
    return rows


def convergence_frames(results, truth, start=0):
    """Frames from ``start`` until the output stays within 5 m for 10 frames."""
    good = [r.ok and np.linalg.norm(r.position_enu_m[:2] - t[:2]) < 5.0
            for r, t in zip(results, truth)]
    for k in range(start, len(good) - 9):
        if all(good[k:k + 10]):
            return k - start
    return None


def synthetic(args, embedder):
    """Synthetic town rows: every query condition, plus a kidnap on night."""
    from vl_attention.engine.embedder import EmbedderConfig
    from vl_attention.localization import Localizer, TrackingConfig
    from vl_attention.mapping import load_map
    from vl_attention.mapping.builder import build_map_from_folder
    world = synthetic_world(args.work_dir, args.frames)
    default_model = embedder.card.model_name == EmbedderConfig().model
    map_dir = Path(args.work_dir) / (f'map_{args.frames}' if default_model
                                     else f'map_{args.frames}_{embedder.card.model_name}')
    if not (map_dir / 'manifest.json').is_file():
        build_map_from_folder(world / 'map_day' / 'images', world / 'map_day' / 'poses.csv',
                              map_dir, embedder=embedder)
    embedder = map_embedder(map_dir, embedder)
    map_ = load_map(map_dir, expected_fingerprint=embedder.fingerprint)
    localizer = Localizer(map_, embedder=embedder, tracking=TrackingConfig())
    rows = {'map': map_.manifest.local_features | {'images': map_.manifest.count}}
    origin = map_.manifest.geodetic_origin
    for name in ('query_night', 'query_fog', 'query_dusk', 'query_rain'):
        paths, stamps, positions, orientations = read_traversal(world / name, origin)
        order = list(range(len(paths)))
        started = time.perf_counter()
        results = run_traversal(localizer, paths, stamps, order)
        row = mode_rows(results, positions, orientations, order)
        row['frames_to_convergence'] = convergence_frames(results, positions[order])
        row['refinement_rate'] = float(np.mean([r.pose_source == 'pnp' for r in results]))
        row['seconds'] = time.perf_counter() - started
        rows[name] = row
        LOG.info('%s: %s', name, json.dumps(row))
    rows['kidnap'] = kidnap(localizer, world, origin)
    return rows


def kidnap(localizer, world, origin, jump=400):
    """Night queries 0-199, then from 200 + ``jump`` on: frames until tracking again."""
    paths, stamps, positions, orientations = read_traversal(world / 'query_night', origin)
    if len(paths) < 200 + jump + 50:
        return {'skipped': f'needs {200 + jump + 50} frames'}
    order = list(range(200)) + list(range(200 + jump, len(paths)))
    results = run_traversal(localizer, paths, stamps, order)
    truth = positions[order]
    return {'jump_m': float(np.linalg.norm(positions[200 + jump] - positions[199])),
            'frames_to_convergence_at_start': convergence_frames(results, truth),
            'frames_to_recover_after_kidnap': convergence_frames(results, truth, start=200),
            'wrong_fixes_after_kidnap_before_recovery': _wrong_fixes(results, truth, 200)}


def _wrong_fixes(results, truth, start):
    recovered = convergence_frames(results, truth, start) or len(results) - start
    return int(sum(r.ok and np.linalg.norm(r.position_enu_m[:2] - t[:2]) > 5.0
                   for r, t in zip(results[start:start + recovered],
                                   truth[start:start + recovered])))


def filter_scale(work_dir, places=1_000_000, frames=50):
    """Per-frame cost of the place filter on a 1M-place map (1 m spacing on a grid route)."""
    rng = np.random.default_rng(0)
    side = int(np.sqrt(places))
    positions = np.stack(np.meshgrid(np.arange(side, dtype=float), np.arange(side) * 20.0),
                         axis=-1).reshape(-1, 2)
    positions = np.column_stack([positions, np.zeros(len(positions))])
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    descriptors = np.lib.format.open_memmap(Path(work_dir) / 'scale_descriptors.npy', 'w+',
                                            np.float32, (len(positions), 256))
    for start in range(0, len(positions), 100_000):   # random unit rows, 1 GB on disk
        rows = rng.standard_normal((min(100_000, len(positions) - start), 256), np.float32)
        descriptors[start:start + len(rows)] = rows / np.linalg.norm(rows, axis=1,
                                                                     keepdims=True)
    started = time.perf_counter()
    place_filter = PlaceFilter(positions, np.zeros(len(positions)), temperature=0.05,
                               descriptors=descriptors)
    build_s = time.perf_counter() - started
    times = []
    for frame in range(frames):
        truth = 5000 + frame * 10
        candidates = np.concatenate([[truth], rng.integers(0, len(positions), CANDIDATES - 1)])
        scores = np.concatenate([[0.8], rng.uniform(0.4, 0.7, CANDIDATES - 1)])
        started = time.perf_counter()
        estimate = place_filter.step(candidates, scores, Motion(dt_s=1.0),
                                     query=descriptors[truth])
        times.append((time.perf_counter() - started) * 1e3)
    return {'places': len(positions), 'kd_tree_build_s': build_s,
            'step_ms_p50': float(np.median(times)), 'step_ms_max': float(np.max(times)),
            'hypotheses_at_end': estimate.hypotheses}


def latency(args, embedder):
    """In-process ``Localizer.localize`` on 480x640 frames, refinement on and off."""
    from vl_attention.geometry.pnp import PnPConfig
    from vl_attention.localization import Localizer, TrackingConfig
    from vl_attention.localization.refinement import RefinementConfig
    from vl_attention.mapping import load_map
    map_dir = Path(args.work_dir) / f'map_{args.frames}'
    embedder = map_embedder(map_dir, embedder)
    map_ = load_map(map_dir, expected_fingerprint=embedder.fingerprint)
    world = synthetic_world(args.work_dir, args.frames)
    paths, stamps, _, _ = read_traversal(world / 'query_rain', map_.manifest.geodetic_origin)
    frames = [cv2.resize(read_rgb(p), (640, 480), interpolation=cv2.INTER_LINEAR)
              for p in paths[:60]]
    epnp = RefinementConfig(pnp=PnPConfig(ransac='epnp'))
    rows = {}
    for name, tracking in (('filter_and_refinement', TrackingConfig()),
                           ('filter_and_refinement_epnp', TrackingConfig(refinement=epnp)),
                           ('filter_only', TrackingConfig(refine=False)),
                           ('single_frame', None)):
        localizer = Localizer(map_, embedder=embedder, tracking=tracking)
        times, results = [], []
        for k, frame in enumerate(frames):
            started = time.perf_counter()
            results.append(localizer.localize(frame, stamp_s=stamps[k]))
            times.append((time.perf_counter() - started) * 1e3)
        rows[name] = {'p50_ms': float(np.median(times[5:])),
                      'p95_ms': float(np.percentile(times[5:], 95)),
                      'refine_p50_ms': float(np.median([r.refine_ms for r in results[5:]])),
                      'pnp_rate': float(np.mean([r.pose_source == 'pnp' for r in results]))}
    return rows


def print_tables(result):
    """Human-readable summary."""
    for name in ('nordland', 'corridor'):
        for descriptor, splits in result.get(name, {}).items():
            if not isinstance(splits, dict):
                continue
            for split, row in splits.items():
                print(f'{name:9s} {descriptor:38s} {split:20s} single R@1 '
                      f'{row["single_frame_recall_at_1"]:.3f}  filtered R@1 '
                      f'{row["filtered_recall_at_1"]:.3f}  fixes '
                      f'{row["tracking_fraction"]:.3f} precision '
                      f'{_fmt(row["fix_precision"])}  ({row["queries"]} queries)')
    for name, row in result.get('synthetic', {}).items():
        if not name.startswith('query_'):
            continue
        for mode in ('single_frame', 'filtered', 'refined', 'output'):
            m = row[mode]
            consistency = m.get('consistency', {})
            print(f'{name:12s} {mode:12s} fixes {m["fixes"]:4d}/{m["frames"]:4d}  median '
                  f'{_fmt(m["median_error_m"])} m  within 5 m {_fmt(m["within_5m_of_fixes"])}'
                  f'  rot {_fmt(m.get("median_rotation_error_deg"))} deg  95% ellipse '
                  f'{_fmt(consistency.get("inside_95_ellipse"))}  NEES '
                  f'{_fmt(consistency.get("mean_nees_2d"))}')
    print(json.dumps({k: result[k] for k in ('scale', 'latency') if k in result}, indent=1))
    if 'kidnap' in result.get('synthetic', {}):
        print('kidnap', json.dumps(result['synthetic']['kidnap']))


def _fmt(value):
    return '   -  ' if value is None or (isinstance(value, float) and np.isnan(value)) \
        else f'{value:6.3f}'


def main(argv=None):
    """Run the chosen sections and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sections', default='nordland,corridor,synthetic,scale,latency')
    parser.add_argument('--model', default='',
                        help='the model of every section (default: the package default)')
    parser.add_argument('--sequence-models', default='effnet_lite0_netvlad_vpr',
                        help='comma-separated presets run besides the default model in the '
                        'nordland and corridor sections')
    parser.add_argument('--frames', type=int, default=1000, help='frames per synthetic traversal')
    parser.add_argument('--temperature-scale', type=float,
                        default=PlaceFilterConfig.temperature_scale)
    parser.add_argument('--work-dir', type=Path, default=ROOT / '.cache' / 'bench_localization')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' /
                        'localization.json')
    parser.add_argument('--merge', action='store_true',
                        help='keep the sections of an existing --out that this run skips')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    from vl_attention.engine.embedder import create_embedder, EmbedderConfig
    embedder = create_embedder(EmbedderConfig(model=args.model or EmbedderConfig().model,
                                              backend='onnxruntime', threads=2))
    sections = args.sections.split(',')
    sequence_embedders = [embedder] + [
        create_embedder(EmbedderConfig(model=model, backend='onnxruntime', threads=2))
        for model in args.sequence_models.split(',') if model and model != args.model] \
        if {'nordland', 'corridor'} & set(sections) else []
    result = {'cpu': platform.processor() or platform.machine(), 'model': embedder.card.model_name,
              'fingerprint': embedder.fingerprint, 'candidates': CANDIDATES,
              'temperature_scale': args.temperature_scale}
    if 'nordland' in sections:
        result['nordland'] = real_sequence(
            'nordland_dev_64x32', {'tune_0_899': (0, 900), 'validation_900_1199': (900, 1200),
                                   'all_0_1199': (0, 1200)}, sequence_embedders,
            args.temperature_scale)
        # models whose shipped head learned from these places (its model card's data)
        result['nordland']['trained_on_places_0_899'] = [
            e.card.model_name for e in sequence_embedders
            if e.card.model_name in NORDLAND_TRAINED_MODELS]
    if 'corridor' in sections:
        result['corridor'] = real_sequence('corridor', None, sequence_embedders,
                                           args.temperature_scale)
    if 'synthetic' in sections:
        result['synthetic'] = synthetic(args, embedder)
    if 'scale' in sections:
        result['scale'] = filter_scale(args.work_dir)
    if 'latency' in sections:
        result['latency'] = latency(args, embedder)
    result = write_report_sections(args.out, result, sections, merge=args.merge)
    print_tables(result)
    return result


if __name__ == '__main__':
    main()

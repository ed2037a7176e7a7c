"""Pose regression of the joint spatial and layer attention head against retrieval baselines.

Usage: ``python -m benchmarks.pose_regression [--steps N] [--threads 2] [--device cpu]``
(``--steps 5`` is a quick run).

The pose_attention head (LSTM, 4 steps, Kendall's learnable-weight pose
loss) trains briefly on each scene's training images with
:func:`~vl_attention.training.loop.fit` (the training loop of ``vl-attention
train``, one tiny recipe per scene), on the offline ImageNet EfficientNet-Lite0
trunk (frozen, features cached) at the multi-level taps stride8 / stride16 /
stage5 (GoogLeNet / ResNet ImageNet weights are not available offline). The
run's ONNX export (outputs descriptors, position_m, orientation_xyzw) is run
through ``Embedder.embed_with_pose`` on ONNX Runtime, the path the localizer
uses. Two scenes:

* ``7scenes_stairs_sample``: the 12-frame 7-Scenes stairs sample in
  ``../shared/data``, written as the ``seven_scenes`` dataset layout (PNG
  frames); TrainSplit (seq-02, seq-03: 6 frames) trains, TestSplit (seq-01,
  seq-04: 6 frames) tests. A format fixture more than a benchmark: 6 training
  images and heavily recompressed JPEGs. A batch is both sequences, 3 views
  each (positives within 0.5 m).
* ``synthetic``: 30 places 4 m apart along the synthetic town's route, driven
  4 times by day with lateral / along-track / heading jitter; drives 0-2
  train (the ``synthetic`` dataset with 3 drives: the same renders), drive 3
  tests (the protocol of ``test_training``). A batch is 8 places, 2 views each.

Baselines: the mean training pose (position mean, chordal quaternion mean),
and the pose of the nearest training image by descriptor (the project's
default retrieval model, ImageNet EfficientNet-Lite0 GeM, untrained on the
scene). Errors are medians over the test images: position (m) and rotation
(deg).

Through the node's code: a map of the training images built with the pose
model itself, and :class:`~vl_attention.localization.Localizer` with
``pose_source='regression'`` and ``'retrieval'`` (single frames, no filter:
the test images are too few for one), scored with the fixes it gives and the
share of errors inside its 95% covariance ellipse (x-y of the scene frame).
Prints a table and writes ``benchmarks/results/pose_regression.json``.
"""

import argparse
from dataclasses import fields, replace
import json
from pathlib import Path
import re
import tempfile
import time

import cv2
import numpy as np
import torch

from benchmarks.embed_latency import hardware
from vl_attention.config import from_dict
from vl_attention.engine.availability import probe_availability
from vl_attention.engine.backends import create_backend
from vl_attention.engine.embedder import Embedder
from vl_attention.engine.export import ONNX_FILE, read_export
from vl_attention.engine.preprocess import preprocess_frames
from vl_attention.evaluation.consistency import consistency_summary
from vl_attention.evaluation.metrics import pose_errors
from vl_attention.geo import enu_to_geodetic, GeodeticOrigin
from vl_attention.io import atomic_write_text, json_safe
from vl_attention.localization import Localizer, LocalizerConfig, TrackingConfig
from vl_attention.mapping import Map, MapIndex, MapManifest
from vl_attention.mapping.records import records_from_columns
from vl_attention.models import build_model, load_model_config
from vl_attention.training.config import TrainConfig
from vl_attention.training.datasets import (load_place_views, PlaceSetConfig, PlaceViews,
                                            split_by_pass)
from vl_attention.training.loop import fit
from vl_attention.training.sources.posed import body_quaternions_from_optical
from vl_attention.training.validation import predict

ROOT = Path(__file__).resolve().parents[1]
SEVEN_SCENES = ROOT.parent / 'shared' / 'data' / '7scenes_stairs_sample'
RESULT = ROOT / 'benchmarks' / 'results' / 'pose_regression.json'
HEIGHT, WIDTH = 120, 160
TAPS = ('stride8', 'stride16', 'stage5')
SYNTHETIC = PlaceSetConfig(num_places=30, place_spacing_m=4.0, conditions=('day',),
                           passes_per_condition=4, lateral_jitter_m=1.2, along_jitter_m=1.5,
                           held_out_places=0, width=WIDTH, height=HEIGHT)
SEVEN_SCENES_SPLITS = ('TrainSplit.txt', 'TestSplit.txt')
SEQUENCE_LINE = re.compile(r'sequence(\d+)')
# drives 0-2 of SYNTHETIC: the same renders (each drive draws its jitter in turn); the town is
# PlaceSetConfig's default
SYNTHETIC_TRAINING = dict({f.name: getattr(SYNTHETIC, f.name) for f in fields(SYNTHETIC)
                           if f.name != 'town'}, conditions=list(SYNTHETIC.conditions),
                          passes_per_condition=3)


# --- data ------------------------------------------------------------------------------------

def split_folders(root, split_file):
    """Sequence folders ``root/seq-0N`` that a 7-Scenes split file lists (``sequenceN`` lines)."""
    numbers = [int(SEQUENCE_LINE.fullmatch(line).group(1))
               for line in (Path(root) / split_file).read_text().split()]
    return [Path(root) / f'seq-{number:02d}' for number in numbers]


def frames(folder):
    """``(pose file, colour image)`` of each frame of a 7-Scenes sequence folder, in order."""
    folder = Path(folder)
    for pose_path in sorted(folder.glob('frame-*.pose.txt')):
        stem = pose_path.name[:-len('.pose.txt')]
        yield pose_path, next(p for p in (folder / f'{stem}.color.png',
                                          folder / f'{stem}.color.jpg') if p.is_file())


def read_frame(path, size):
    """Return a colour image as BGR, resized to ``size`` (width, height) by area averaging."""
    return cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), size,
                      interpolation=cv2.INTER_AREA)


def read_seven_scenes_split(root, split_file, size=(WIDTH, HEIGHT)):
    """Frames of one split of a 7-Scenes scene folder as :class:`PlaceViews` (one place each).

    Layout: ``root/<split_file>`` lists ``sequenceN`` lines; ``root/seq-0N/``
    holds ``frame-XXXXXX.color.{png,jpg}`` and ``frame-XXXXXX.pose.txt`` (4x4
    camera-to-world, metres). Orientations are the camera body frame
    (x forward, y left, z up) in the scene frame, as in the package.
    """
    images, matrices, sequences = [], [], []
    for folder in split_folders(root, split_file):
        for pose_path, colour in frames(folder):
            images.append(cv2.cvtColor(read_frame(colour, size), cv2.COLOR_BGR2RGB))
            matrices.append(np.loadtxt(pose_path).reshape(4, 4))
            sequences.append(folder.name)
    matrices = np.asarray(matrices)
    count = len(images)
    return PlaceViews(images=np.stack(images), positions_m=matrices[:, :3, 3],
                      quaternions_xyzw=body_quaternions_from_optical(matrices[:, :3, :3]),
                      place_ids=np.arange(count), pass_ids=np.zeros(count, np.int64),
                      conditions=np.asarray(sequences))


def write_seven_scenes_layout(root, out, size=(WIDTH, HEIGHT)):
    """Write the sample as the ``seven_scenes`` adapter's layout: ``out/stairs``, PNG frames.

    The frames are resized as :func:`read_seven_scenes_split` resizes them, so
    training reads the pixels the evaluation does; returns ``out``.
    """
    root, scene = Path(root), Path(out) / 'stairs'
    for split_file in SEVEN_SCENES_SPLITS:
        scene.mkdir(parents=True, exist_ok=True)
        (scene / split_file).write_text((root / split_file).read_text())
        for folder in split_folders(root, split_file):
            (scene / folder.name).mkdir(exist_ok=True)
            for pose_path, colour in frames(folder):
                cv2.imwrite(str(scene / folder.name / colour.name.replace('.jpg', '.png')),
                            read_frame(colour, size))
                (scene / folder.name / pose_path.name).write_text(pose_path.read_text())
    return Path(out)


def scenes(cache_dir):
    """``{name: (train views, test views, note, training dataset spec, sampling)}``.

    The dataset spec and sampling go into the scene's recipe; the views are
    what the baselines and the evaluation read.
    """
    stairs = tuple(read_seven_scenes_split(SEVEN_SCENES, name) for name in SEVEN_SCENES_SPLITS)
    stairs_root = write_seven_scenes_layout(SEVEN_SCENES, Path(cache_dir) / '7scenes')
    synthetic = split_by_pass(load_place_views(SYNTHETIC, cache_dir), held_out_passes=[3])
    return {
        '7scenes_stairs_sample': stairs + (
            'TrainSplit seq-02,03 / TestSplit seq-01,04',
            {'kind': 'seven_scenes', 'root': str(stairs_root), 'options': {'scenes': ['stairs']}},
            {'positive_distance_m': 0.5, 'negative_distance_m': 0.5, 'places_per_batch': 2,
             'views_per_place': 3}),
        'synthetic': synthetic + (
            '30 places x 4 day drives; drives 0-2 train, 3 tests',
            {'kind': 'synthetic', 'root': str(cache_dir), 'options': SYNTHETIC_TRAINING},
            {'positive_distance_m': 4.0, 'negative_distance_m': 4.0, 'places_per_batch': 8,
             'views_per_place': 2})}


# --- models ----------------------------------------------------------------------------------

def pose_recipe(dataset, sampling, *, steps, lr, device, seed=0):
    """Recipe: pose_attention (ResNet-18 preset's head) on the frozen ImageNet EfficientNet-Lite0.

    One epoch of ``steps`` Adam steps at ``lr`` with the pose loss, exported at the end.
    """
    return from_dict(TrainConfig, {
        'name': 'pose_attention_effnet', 'model': 'pose_attention_resnet18',
        'model_overrides': {'backbone': 'efficientnet_lite0', 'taps': list(TAPS),
                            'input_height': HEIGHT, 'input_width': WIDTH,
                            'backbone_options': {'weights': 'imagenet',
                                                 'truncate_after': TAPS[-1], 'freeze': True}},
        'dataset': dataset, 'loss': {'name': 'pose'}, 'sampling': sampling,
        'optimizer': {'name': 'adam', 'lr': lr}, 'epochs': 1, 'steps_per_epoch': steps,
        'checkpoint_every_steps': steps, 'log_every_steps': max(steps // 10, 1),
        'device': device, 'seed': seed, 'export': True})


def retrieval_model():
    """Build the retrieval baseline (ImageNet EfficientNet-Lite0 GeM) at our size."""
    return build_model(replace(load_model_config('effnet_lite0_gem'), input_height=HEIGHT,
                               input_width=WIDTH))


def exported_embedder(export_dir):
    """Run a run's ONNX export (pose origin in its card) on ONNX Runtime as the localizer would."""
    card = read_export(export_dir)
    backend = create_backend('onnxruntime-cpu', model=None,
                             onnx_path=Path(export_dir) / ONNX_FILE)
    return Embedder(backend, card)


def scene_map(embedder, views, origin=GeodeticOrigin(0.0, 0.0, 0.0)):
    """Map of the training views, embedded by the pose model, positions in the scene frame."""
    latitude, longitude, altitude = enu_to_geodetic(views.positions_m, origin)
    records = records_from_columns([f'{i}.png' for i in range(len(views))],
                                   np.arange(len(views)), latitude, longitude, altitude,
                                   views.quaternions_xyzw, origin)
    descriptors = embedder.embed_batches(list(views.images))
    index = MapIndex.create('flat_ip', descriptors.shape[1])
    index.add(descriptors)
    return Map(MapManifest(model_name=embedder.card.model_name,
                           model_fingerprint=embedder.fingerprint, count=len(views),
                           descriptor_dim=descriptors.shape[1], geodetic_origin=origin),
               index, records)


def through_localizer(embedder, train_views, test_views):
    """``Localizer.localize`` per test image for each pose source: errors of its fixes."""
    map_ = scene_map(embedder, train_views)
    config = LocalizerConfig(top_k=1, candidates=min(5, len(train_views)))
    rows = {}
    for pose_source in ('regression', 'retrieval'):
        localizer = Localizer(map_, embedder=embedder, config=config,
                              tracking=TrackingConfig(use_filter=False, refine=False,
                                                      pose_source=pose_source))
        results = [localizer.localize(image) for image in test_views.images]
        fixed = np.array([result.ok for result in results])
        position = np.array([result.position_enu_m for result in results])
        orientation = np.array([result.orientation_xyzw for result in results])
        position_errors, rotation_errors = pose_errors(
            position, test_views.positions_m, orientation, test_views.quaternions_xyzw)
        covariances = np.array([result.position_covariance_m2[:2, :2] for result in results])
        errors_xy = position[:, :2] - test_views.positions_m[:, :2]
        rows[pose_source] = {
            'fixes': int(fixed.sum()), 'frames': len(results),
            'position_median_m': float(np.median(position_errors[fixed])) if fixed.any()
            else None,
            'rotation_median_deg': float(np.median(rotation_errors[fixed])) if fixed.any()
            else None,
            'consistency': consistency_summary(errors_xy[fixed], covariances[fixed])}
    return rows


# --- baselines -------------------------------------------------------------------------------

def mean_quaternion(quaternions_xyzw):
    """Chordal L2 mean rotation: the principal eigenvector of ``sum q q^T`` (sign-free)."""
    quaternions = np.asarray(quaternions_xyzw, np.float64)
    _, vectors = np.linalg.eigh(quaternions.T @ quaternions)
    mean = vectors[:, -1]
    return mean if mean[3] >= 0 else -mean


def nearest_pose(train_descriptors, test_descriptors, train_views):
    """Pose of each test image's nearest training image by inner product."""
    nearest = np.argmax(test_descriptors @ train_descriptors.T, axis=1)
    return train_views.positions_m[nearest], train_views.quaternions_xyzw[nearest]


def medians(position_m, orientation_xyzw, true_views):
    """Median position (m) and rotation (deg) errors against the views' true poses."""
    position_errors, rotation_errors = pose_errors(position_m, true_views.positions_m,
                                                   orientation_xyzw, true_views.quaternions_xyzw)
    return {'position_median_m': float(np.median(position_errors)),
            'rotation_median_deg': float(np.median(rotation_errors))}


def evaluate_scene(name, scene, *, steps, lr, device, retrieval, work_dir):
    """Train the scene's recipe with fit; every method's median errors on the scene."""
    train_views, test_views, note, dataset, sampling = scene
    run_dir = Path(work_dir) / name
    summary = fit(pose_recipe(dataset, sampling, steps=steps, lr=lr, device=device), run_dir)
    embedder = exported_embedder(run_dir / 'export')
    _, position_m, orientation_xyzw = embedder.embed_with_pose(list(test_views.images))
    started = time.perf_counter()
    embedder.embed_with_pose(list(test_views.images[:1]))
    latency_ms = (time.perf_counter() - started) * 1e3
    count = len(test_views)
    mean_position = np.repeat(train_views.positions_m.mean(axis=0)[None], count, axis=0)
    mean_rotation = np.repeat(mean_quaternion(train_views.quaternions_xyzw)[None], count, axis=0)
    descriptors = [predict(retrieval, torch.from_numpy(
        preprocess_frames(list(views.images), retrieval.preprocessing)))[0]
        for views in (train_views, test_views)]
    methods = {
        'regression (pose_attention, ONNX Runtime)': medians(position_m, orientation_xyzw,
                                                             test_views),
        'nearest training image (effnet_lite0_gem)': medians(
            *nearest_pose(*descriptors, train_views), test_views),
        'mean training pose': medians(mean_position, mean_rotation, test_views),
    }
    spread_m = float(np.median(np.linalg.norm(
        test_views.positions_m - test_views.positions_m.mean(axis=0), axis=1)))
    return {'scene': name, 'split': note, 'train_images': len(train_views),
            'test_images': count, 'test_position_spread_median_m': spread_m,
            'sampling': sampling, 'train_steps': summary['steps'],
            'train_seconds': summary['train_seconds'],
            'pose_loss_first_10': summary['loss_first_10'],
            'pose_loss_last_10': summary['loss_last_10'],
            'regression_latency_ms_batch1': latency_ms,
            'card_outputs': list(embedder.card.outputs), 'card_pose_frame':
            embedder.card.pose_frame, 'methods': methods,
            'localizer': through_localizer(embedder, train_views, test_views)}


# --- report ----------------------------------------------------------------------------------

def print_table(results):
    """One row per scene and method."""
    print(f'{"scene":<24} {"method":<44} {"position m":>11} {"rotation deg":>13}')
    for result in results:
        for method, errors in result['methods'].items():
            print(f'{result["scene"]:<24} {method:<44} {errors["position_median_m"]:>11.3f} '
                  f'{errors["rotation_median_deg"]:>13.2f}')
        print(f'{"":<24} ({result["train_images"]} train / {result["test_images"]} test images, '
              f'{result["train_steps"]} steps in {result["train_seconds"]:.0f} s, pose loss '
              f'{result["pose_loss_first_10"]:.2f} -> {result["pose_loss_last_10"]:.2f})')
        for source, row in result['localizer'].items():
            print(f'{"":<24} Localizer pose_source={source:<11} fixes {row["fixes"]}/'
                  f'{row["frames"]}, {_fmt(row["position_median_m"])} m, '
                  f'{_fmt(row["rotation_median_deg"])} deg, '
                  f'{_fmt(row["consistency"]["inside_95_ellipse"])} in the 95% ellipse')


def _fmt(value):
    return 'n/a' if value is None else f'{value:.3f}'


def main(argv=None):
    """Train, export, evaluate both scenes; print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=300, help='head training steps per scene')
    parser.add_argument('--lr', type=float, default=1e-3, help='Adam learning rate')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--device', choices=('cpu', 'cuda', 'auto'), default='cpu',
                        help='where the head trains (the evaluation runs on ONNX Runtime CPU)')
    parser.add_argument('--out', default=str(RESULT))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    retrieval = retrieval_model()
    results = []
    with tempfile.TemporaryDirectory() as work_dir:
        for name, scene in scenes(Path(work_dir) / 'views').items():
            results.append(evaluate_scene(name, scene, steps=args.steps, lr=args.lr,
                                          device=args.device, retrieval=retrieval,
                                          work_dir=work_dir))
    print_table(results)
    report = {'command': 'python -m benchmarks.pose_regression --steps '
                         f'{args.steps} --lr {args.lr} --threads {args.threads} '
                         f'--device {args.device}',
              'input_size': [HEIGHT, WIDTH], 'trunk': 'efficientnet_lite0 imagenet, frozen',
              'taps': list(TAPS), 'total_seconds': time.perf_counter() - started,
              'hardware': hardware(probe_availability(), args.threads), 'scenes': results}
    atomic_write_text(Path(args.out), json.dumps(json_safe(report), indent=2))
    print(f'wrote {args.out} ({report["total_seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

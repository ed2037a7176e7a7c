"""evaluate-vpr end to end: dataset layouts, ground-truth sources, the written report."""

import fcntl
import io
import json
import os
from pathlib import Path
import pty
import shutil
import struct
import sys
import termios

import numpy as np
import pytest

from conftest import BASELINE_MODEL

from vl_attention.cli import main as cli_main
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.evaluation.evaluate_vpr import (main as evaluate_vpr, node_confidences,
                                                  progress_bar, retrieve, VPREvalConfig)
from vl_attention.evaluation.vpr_dataset import DatasetError, load_vpr_dataset, VPRDataset
from vl_attention.geo import GeodeticOrigin, quaternion_from_yaw_pitch_roll
from vl_attention.localization import Localizer, LocalizerConfig
from vl_attention.mapping import Map, MapIndex, MapManifest, read_poses_csv
from vl_attention.model_outputs import DEFAULT_MODEL
from vl_attention.mapping.records import records_from_columns

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


def _write_positions(path, columns, images):
    lines = ['name,x_m,y_m']
    for name, x, y in zip(images, columns['x_m'], columns['y_m']):
        lines.append(f'{name},{x},{y}')
    path.write_text('\n'.join(lines) + '\n')


@pytest.fixture(scope='module')
def synthetic_vpr(tiny_world, tmp_path_factory):
    """Lay out the tiny world as a VPR dataset: day database, night queries, metric CSVs."""
    root = tmp_path_factory.mktemp('vpr') / 'tiny_day_night'
    for folder, traversal in (('database', 'map_day'), ('queries', 'query_night')):
        shutil.copytree(tiny_world / traversal / 'images', root / folder)
        columns = read_poses_csv(tiny_world / traversal / 'poses.csv')
        columns |= _enu_columns(tiny_world / traversal / 'poses.csv')
        _write_positions(root / f'{folder}.csv', columns, columns['image'])
    return root


def _enu_columns(path):
    import csv
    with open(path, newline='') as handle:
        rows = list(csv.DictReader(handle))
    return {'x_m': [float(r['x_m']) for r in rows], 'y_m': [float(r['y_m']) for r in rows]}


def test_ground_truth_sources(synthetic_vpr, tmp_path):
    by_distance = load_vpr_dataset(synthetic_vpr, positive_distance_m=10.0)
    assert by_distance.ground_truth == 'positions, positives within 10 m'
    distances = np.linalg.norm(by_distance.query_xy_m[:, None] - by_distance.database_xy_m[None],
                               axis=2)
    for query, positives in enumerate(by_distance.positives):
        np.testing.assert_array_equal(positives, np.flatnonzero(distances[query] <= 10.0))
    sequential = load_vpr_dataset(synthetic_vpr, sequential=2)
    np.testing.assert_array_equal(sequential.positives[0], [0, 1, 2])
    np.testing.assert_array_equal(sequential.positives[5], [3, 4, 5, 6, 7])
    with pytest.raises(DatasetError, match='database/ and queries/'):
        load_vpr_dataset(tmp_path)


def test_report_is_complete_and_consistent(synthetic_vpr, export_cache, tmp_path):
    cfg = VPREvalConfig(embedder=EmbedderConfig(model=BASELINE_MODEL, backend='onnxruntime',
                                                cache_dir=str(export_cache)),
                        positive_distance_m=25.0)
    out = evaluate_vpr(cfg, synthetic_vpr, tmp_path / 'report')
    for name in ('metrics.json', 'report.md', 'pr_curve.png', 'recall_at_n.png',
                 'examples.png'):
        assert (out / name).stat().st_size > 0, name
    document = json.loads((out / 'metrics.json').read_text())
    run = document['runs'][0]
    recalls = [run['recall_at_n'][n] for n in ('1', '5', '10', '20')]
    assert recalls == sorted(recalls) and 0.0 <= recalls[0] <= 1.0
    assert 0.0 <= run['pr_auc'] <= 1.0
    assert run['recall_at_100_precision'] <= recalls[0] + 1e-9
    assert document['dataset']['query_images'] == 24 and document['software']['torch']
    assert run['fingerprint'] in (out / 'metrics.json').read_text()
    assert run['confidence'] == 'node ratio test over the top 20, runner-up > 25 m from the best'
    assert '| effnet_lite0_gem | 1280 |' in (out / 'report.md').read_text()


@pytest.mark.skipif(not (SHARED_DATA / 'corridor').is_dir(),
                    reason='shared/data/corridor is not beside the repository')
def test_corridor_real_dataset_far_above_chance(export_cache, tmp_path, capsys):
    code = cli_main(['evaluate-vpr', '--dataset', str(SHARED_DATA / 'corridor'), '--filter',
                     '--out', str(tmp_path / 'corridor'), '--cache-dir', str(export_cache)])
    assert code == 0
    run = json.loads((tmp_path / 'corridor' / 'metrics.json').read_text())['runs'][0]
    # 111 places, positives +-2 frames: chance Recall@1 is about 5/111
    assert run['recall_at_n']['1'] > 0.5
    out = capsys.readouterr().out
    assert '# Place recognition on `corridor`' in out
    # the queries walk the corridor in order: the place filter over them beats single frames
    sequence = run['sequence']
    assert sequence['single_frame_recall_at_1'] == pytest.approx(run['recall_at_n']['1'])
    assert sequence['filtered_recall_at_1'] > sequence['single_frame_recall_at_1'] + 0.05
    assert sequence['fix_precision'] >= 0.9 and sequence['tracking_fraction'] > 0.5
    assert f'| {DEFAULT_MODEL} | ' in out and 'fix precision' in out


def test_cli_reports_bad_dataset_in_one_line(tmp_path, capsys):
    assert cli_main(['evaluate-vpr', '--dataset', str(tmp_path), '--out',
                     str(tmp_path / 'out'), '--no-progress']) == 1
    assert 'error:' in capsys.readouterr().err


ORIGIN = GeodeticOrigin(47.0, 8.0, 400.0)
METRE_DEG = 1.0 / 111_195.0


def _unit(vectors):
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _map(descriptors, east_m, north_m):
    count = len(descriptors)
    records = records_from_columns(
        [f'{i}.png' for i in range(count)], np.arange(count),
        ORIGIN.latitude_deg + np.asarray(north_m) * METRE_DEG,
        ORIGIN.longitude_deg + np.asarray(east_m) * METRE_DEG / np.cos(np.radians(47.0)),
        np.full(count, ORIGIN.altitude_m), quaternion_from_yaw_pitch_roll(np.zeros(count)),
        ORIGIN)
    index = MapIndex.create('flat_ip', descriptors.shape[1])
    index.add(descriptors)
    manifest = MapManifest(model_name='hand', model_fingerprint='hand', count=count,
                           descriptor_dim=descriptors.shape[1], geodetic_origin=ORIGIN)
    return Map(manifest, index, records)


def _route_descriptors(rng, places, views):
    """Return views of places along a street: near-duplicates nearby, look-alikes far apart."""
    codes = _unit(rng.normal(size=(places, 32)))
    codes[places // 2:] = _unit(codes[:places - places // 2] + 0.6 * codes[places // 2:])
    database = _unit(np.repeat(codes, views, axis=0)
                     + 0.25 * rng.normal(size=(places * views, 32)))
    queries = _unit(codes[rng.integers(places, size=40)] + 0.35 * rng.normal(size=(40, 32)))
    return database, queries


def _dataset(database_xy_m=None):
    return VPRDataset(Path('.'), (), (), (), 'hand', database_xy_m, None)


def test_confidence_is_the_localizers_on_the_same_descriptors():
    rng = np.random.default_rng(3)
    database, queries = _route_descriptors(rng, places=30, views=3)
    east_m = np.repeat(np.arange(30) * 8.0, 3) + rng.uniform(-2, 2, size=90)
    north_m = rng.uniform(-3, 3, size=90)
    localizer = Localizer(_map(database, east_m, north_m))
    expected = [localizer.estimate(query).confidence for query in queries]
    cfg = VPREvalConfig()
    similarities, indices, _ = retrieve(database, queries, 20)
    xy_m = localizer.map.records.position_enu_m[:, :2]
    confidences = node_confidences(cfg, _dataset(xy_m), similarities, indices)
    np.testing.assert_allclose(confidences, expected, rtol=0, atol=1e-6)
    # the spatial exclusion matters here: the plain ratio test gives other numbers
    plain = node_confidences(cfg, _dataset(), similarities, indices)
    assert np.abs(plain - confidences).max() > 0.05
    assert len(np.unique(np.round(confidences, 4))) > 20      # not a constant


def test_index_only_confidence_is_the_localizers_with_frames_as_metres():
    rng = np.random.default_rng(4)
    database, queries = _route_descriptors(rng, places=25, views=2)
    frames = np.arange(len(database), dtype=np.float64)        # 1 m per frame in the map
    localizer = Localizer(_map(database, np.zeros(len(frames)), frames),
                          config=LocalizerConfig(ratio_test_exclusion_m=2.5))
    expected = [localizer.estimate(query).confidence for query in queries]
    similarities, indices, _ = retrieve(database, queries, 20)
    sequential = VPREvalConfig(sequential=2)                   # default exclusion: K frames
    np.testing.assert_allclose(node_confidences(sequential, _dataset(), similarities, indices),
                               expected, rtol=0, atol=1e-6)
    explicit = VPREvalConfig(ratio_test_exclusion_frames=2)
    np.testing.assert_allclose(node_confidences(explicit, _dataset(), similarities, indices),
                               expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='ratio_test_candidates=1 must be >= 2'):
        VPREvalConfig(ratio_test_candidates=1)


def _bar_output(stream, progress):
    with progress_bar(range(3), progress=progress, desc='database') as bar:
        assert list(bar) == [0, 1, 2]
    stream.flush()


def _read_all(fd):
    chunks = []
    while True:
        try:
            chunks.append(os.read(fd, 4096))
        except BlockingIOError:
            return b''.join(chunks).decode()


def test_progress_bars_show_on_a_terminal_only(monkeypatch):
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    # a fresh pty is 0 columns wide, and tqdm draws nothing into 0 columns
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
    terminal = os.fdopen(follower, 'w')
    monkeypatch.setattr(sys, 'stderr', terminal)
    _bar_output(terminal, progress=True)
    shown = _read_all(leader)
    assert 'database' in shown and '3/3' in shown, shown
    _bar_output(terminal, progress=False)                      # --no-progress
    assert _read_all(leader) == ''
    terminal.close()
    os.close(leader)
    log = io.StringIO()                                        # not a TTY: no bar
    monkeypatch.setattr(sys, 'stderr', log)
    _bar_output(log, progress=True)
    assert log.getvalue() == ''

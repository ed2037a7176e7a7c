"""evaluate-vpr end to end: dataset layouts, ground-truth sources, the written report."""

import json
from pathlib import Path
import shutil

import numpy as np
import pytest

from vl_attention.cli import main as cli_main
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.evaluation.evaluate_vpr import main as evaluate_vpr, VPREvalConfig
from vl_attention.evaluation.vpr_dataset import DatasetError, load_vpr_dataset
from vl_attention.mapping import read_poses_csv

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
    cfg = VPREvalConfig(embedder=EmbedderConfig(backend='onnxruntime',
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
    assert '| effnet_lite0_gem | 1280 |' in (out / 'report.md').read_text()


@pytest.mark.skipif(not (SHARED_DATA / 'corridor').is_dir(),
                    reason='shared/data/corridor is not beside the repository')
def test_corridor_real_dataset_far_above_chance(export_cache, tmp_path, capsys):
    code = cli_main(['evaluate-vpr', '--dataset', str(SHARED_DATA / 'corridor'),
                     '--out', str(tmp_path / 'corridor'), '--cache-dir', str(export_cache)])
    assert code == 0
    run = json.loads((tmp_path / 'corridor' / 'metrics.json').read_text())['runs'][0]
    # 111 places, positives +-2 frames: chance Recall@1 is about 5/111
    assert run['recall_at_n']['1'] > 0.5
    assert '# Place recognition on `corridor`' in capsys.readouterr().out


def test_cli_reports_bad_dataset_in_one_line(tmp_path, capsys):
    assert cli_main(['evaluate-vpr', '--dataset', str(tmp_path), '--out',
                     str(tmp_path / 'out')]) == 2
    assert 'error:' in capsys.readouterr().err

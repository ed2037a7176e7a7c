"""``evaluate-vpr --dataset KIND ROOT``: one dataset registry for training and evaluation.

Fixtures are real files in each layout, written into ``tmp_path``: a ``vpr_layout``
folder (database/, queries/, ground_truth.npy or CSV positions) and a NetVLAD
Pittsburgh tree (``datasets/pitts30k_*.mat`` written with scipy.io.savemat).
"""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from vl_attention.cli import main as cli_main
from vl_attention.evaluation.evaluate_vpr import load_evaluation_set, VPREvalConfig
from vl_attention.evaluation.place_dataset import DatasetError, PlaceDataset
from vl_attention.evaluation.vpr_dataset import load_vpr_dataset, retrieval_view
from vl_attention.training.sources import DATASETS, load_dataset


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.fixture
def layout(tmp_path):
    """Write a vpr_layout folder: 6 database and 4 query images and ground_truth.npy."""
    root = tmp_path / 'street'
    for k in range(6):
        _image(root / 'database' / f'{k:02d}.png', k)
    for k in range(4):
        _image(root / 'queries' / f'q{k:02d}.jpg', 100 + k)
    np.save(root / 'ground_truth.npy', np.array([[0, 1], [1, 2], [2, 4], [3, 5]]))
    return root


def _write_positions(root):
    (root / 'database.csv').write_text('name,x_m,y_m\n' + ''.join(
        f'{k:02d}.png,{10.0 * k},0\n' for k in range(6)))
    (root / 'queries.csv').write_text('name,x_m,y_m\n' + ''.join(
        f'q{k:02d}.jpg,{10.0 * k + 3},1\n' for k in range(4)))


def _cell(names):
    array = np.empty((len(names), 1), dtype=object)
    for index, name in enumerate(names):
        array[index, 0] = name
    return array


def _write_pittsburgh(root):
    """Write NetVLAD's pitts30k_{val,test}.mat, 3 database images and 2 queries per split."""
    for index, split in enumerate(('val', 'test')):
        database = [f'00{index}/00{index}{k:03d}_pitch1_yaw1.jpg' for k in range(3)]
        queries = [f'00{index}/00{index}{k:03d}_pitch1_yaw1.jpg' for k in range(2)]
        for k, name in enumerate(database):
            _image(root / name, 10 * index + k)
        for k, name in enumerate(queries):
            _image(root / 'queries_real' / name, 50 + 10 * index + k)
        east = 584000.0 + 1000 * index
        utm_database = np.array([[east + 40 * k, 4477000.0] for k in range(3)])
        utm_queries = np.array([[east + 40 * k + 5, 4477000.0] for k in range(2)])
        struct = {'whichSet': split, 'dbImageFns': _cell(database), 'utmDb': utm_database.T,
                  'qImageFns': _cell(queries), 'utmQ': utm_queries.T,
                  'numImages': 3.0, 'numQueries': 2.0, 'posDistThr': 25.0,
                  'posDistSqThr': 625.0, 'nonTrivPosDistSqThr': 100.0}
        (root / 'datasets').mkdir(parents=True, exist_ok=True)
        savemat(str(root / 'datasets' / f'pitts30k_{split}.mat'), {'dbStruct': struct})
    return root


def test_vpr_layout_is_a_registered_kind_that_training_reads(layout):
    assert 'vpr_layout' in DATASETS.names()
    dataset = load_dataset('vpr_layout', root=layout)
    assert isinstance(dataset, PlaceDataset) and len(dataset) == 10
    assert list(dataset.roles) == ['database'] * 6 + ['query'] * 4
    assert set(dataset.splits) == {'test'}
    view = retrieval_view(dataset)
    old = load_vpr_dataset(layout)
    assert view.database_images == old.database_images == tuple(
        sorted((layout / 'database').iterdir()))
    assert view.query_images == old.query_images and view.root == old.root == layout
    assert [p.tolist() for p in view.positives] == [[1], [2], [4], [5]]
    assert view.ground_truth == 'ground_truth.npy' and view.database_xy_m is None


def test_training_validation_and_evaluate_vpr_share_the_positives(layout):
    from vl_attention.engine.preprocess import Preprocessing
    from vl_attention.training.validation import retrieval_set
    _write_positions(layout)
    dataset = load_dataset('vpr_layout', root=layout)
    assert dataset.has_positions
    preprocessing = Preprocessing(input_height=32, input_width=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    held_out = retrieval_set(dataset, preprocessing, positive_distance_m=5.0, preload=False)
    view = load_vpr_dataset(layout, positive_distance_m=5.0)
    assert view.ground_truth == 'positions, positives within 5 m'
    assert [p.tolist() for p in held_out.positives] == [p.tolist() for p in view.positives] \
        == [[0], [1], [2], [3]]
    np.testing.assert_allclose(view.query_xy_m, [[3, 1], [13, 1], [23, 1], [33, 1]])


def test_pittsburgh_is_read_by_evaluate_vpr(tmp_path):
    root = _write_pittsburgh(tmp_path / 'pitts')
    dataset = load_dataset('pittsburgh', root=root, splits=('val', 'test'))
    cfg = VPREvalConfig(positive_distance_m=25.0)
    view = load_evaluation_set(cfg, dataset)      # default split: test
    assert len(view.database_images) == 3 and len(view.query_images) == 2
    assert all('queries_real' in str(path) for path in view.query_images)
    assert all(path.is_file() for path in view.database_images + view.query_images)
    assert [p.tolist() for p in view.positives] == [[0], [1]]
    assert view.database_xy_m[0, 0] == pytest.approx(585000.0)
    val = load_evaluation_set(VPREvalConfig(split='val'), dataset)
    assert val.database_xy_m[0, 0] == pytest.approx(584000.0)
    with pytest.raises(DatasetError, match='split'):
        retrieval_view(dataset.select(split='val'), split='test')


def test_sequential_belongs_to_the_vpr_layout(layout, tmp_path):
    cfg = VPREvalConfig(sequential=1)
    view = load_evaluation_set(cfg, layout)
    assert [p.tolist() for p in view.positives] == [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    again = load_evaluation_set(cfg, load_dataset('vpr_layout', root=layout, sequential=1))
    assert [p.tolist() for p in again.positives] == [p.tolist() for p in view.positives]
    assert again.ground_truth == view.ground_truth == 'sequential +-1 frames'
    with pytest.raises(DatasetError, match='sequential'):
        load_dataset('vpr_layout', root=layout, sequential=-1)
    pitts = load_dataset('pittsburgh', root=_write_pittsburgh(tmp_path / 'p'), splits=('test',))
    with pytest.raises(ValueError, match='sequential'):
        load_evaluation_set(cfg, pitts)


def test_in_memory_images_are_refused_clearly(layout):
    dataset = load_dataset('vpr_layout', root=layout)
    in_memory = PlaceDataset(**{**{name: getattr(dataset, name) for name in (
        'name', 'root', 'image_paths', 'positions_m', 'quaternions_xyzw', 'place_ids',
        'conditions', 'sequences', 'splits', 'roles', 'positives', 'ignored')},
        'pixels': np.zeros((len(dataset), 4, 4, 3), np.uint8)})
    with pytest.raises(DatasetError, match='held in memory'):
        retrieval_view(in_memory)


@pytest.mark.parametrize('arguments, message', [
    (['no_such_kind', '{root}'], "unknown dataset layout 'no_such_kind'; known"),
    (['pittsburgh', '{root}/missing'], 'missing does not exist'),
    (['{root}/missing'], 'missing does not exist'),
    (['a', 'b', 'c'], 'takes ROOT or KIND ROOT'),
    (['pittsburgh', '{root}', '--sequential', '2'], '--sequential K is ground truth'),
    (['vpr_layout', '{root}', '--dataset-option', 'colour'], 'must be KEY=VALUE'),
    (['vpr_layout', '{root}', '--dataset-option', 'colour=red'],
     "does not take option(s) ['colour']"),
])
def test_bad_dataset_arguments_print_one_line_and_exit_1(tmp_path, capsys, arguments, message):
    argv = ['evaluate-vpr', '--dataset'] + [a.format(root=tmp_path) for a in arguments]
    if '--sequential' in argv or '--dataset-option' in argv:
        at = argv.index('--sequential' if '--sequential' in argv else '--dataset-option')
        argv = argv[:at] + ['--out', str(tmp_path / 'out')] + argv[at:]
    else:
        argv += ['--out', str(tmp_path / 'out')]
    assert cli_main(argv + ['--no-progress']) == 1
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and error.startswith('vl-attention evaluate-vpr: error: ')
    assert message in error, error


def test_loading_every_kind_for_evaluate_vpr_imports_no_torch():
    code = ('import sys\n'
            'import vl_attention.training.sources, vl_attention.evaluation.evaluate_vpr\n'
            'print(sorted(name for name in ("torch", "timm") if name in sys.modules))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_cli_kind_root_form_matches_the_one_argument_form(layout, export_cache, tmp_path):
    common = ['--no-progress', '--backend', 'onnxruntime', '--cache-dir', str(export_cache)]
    assert cli_main(['evaluate-vpr', '--dataset', str(layout), '--out', str(tmp_path / 'one')]
                    + common) == 0
    assert cli_main(['evaluate-vpr', '--dataset', 'vpr_layout', str(layout),
                     '--out', str(tmp_path / 'two')] + common) == 0
    one, two = (json.loads((tmp_path / name / 'metrics.json').read_text())
                for name in ('one', 'two'))
    assert one['dataset'] == two['dataset']
    assert one['dataset']['ground_truth'] == 'ground_truth.npy'
    assert one['runs'][0]['recall_at_n'] == two['runs'][0]['recall_at_n']


def test_cli_evaluates_a_pittsburgh_tree(tmp_path, export_cache, capsys):
    root = _write_pittsburgh(tmp_path / 'pitts')
    code = cli_main(['evaluate-vpr', '--dataset', 'pittsburgh', str(root),
                     '--dataset-option', 'splits=[val, test]', '--split', 'val',
                     '--out', str(tmp_path / 'report'), '--no-progress',
                     '--backend', 'onnxruntime', '--cache-dir', str(export_cache)])
    assert code == 0
    document = json.loads((tmp_path / 'report' / 'metrics.json').read_text())
    assert document['dataset']['database_images'] == 3
    assert document['dataset']['query_images'] == 2
    assert document['dataset']['ground_truth'] == 'positions, positives within 25 m'
    assert document['runs'][0]['confidence'].endswith('runner-up > 25 m from the best')
    assert '# Place recognition on `pitts`' in capsys.readouterr().out

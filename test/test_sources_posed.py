"""Adapters of posed public sets (RobotCar, 7-Scenes, Cambridge) and revisited Oxford/Paris.

Each test writes a tiny fixture in the dataset's exact on-disk layout.
"""

import json
import os
import pickle

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vl_attention.training.sources import DatasetLayoutError, load_dataset

# Optical axes (x right, y down, z forward) of a camera whose body frame is the world frame.
OPTICAL_LOOKING_ALONG_X = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
YAW_90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
IDENTITY_XYZW = [0.0, 0.0, 0.0, 1.0]
YAW_90_XYZW = [0.0, 0.0, 2 ** -0.5, 2 ** -0.5]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep the default frame cache (revisited query crops) out of the home folder."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    return tmp_path / 'xdg' / 'vl_attention' / 'frames'


def write_image(path, index, *, grey=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.broadcast_to(np.array([30 * index + 10, 200 - 20 * index, 90], np.uint8),
                          (24, 32, 3))
    image = rgb[..., 0].copy() if grey else cv2.cvtColor(np.ascontiguousarray(rgb),
                                                         cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), image)
    return rgb


# --- Oxford RobotCar -----------------------------------------------------------------------

A, B = '2014-12-09-13-21-02', '2014-12-16-18-44-24'
T0_US = 1418132416000000
INS_HEADER = ('timestamp,ins_status,latitude,longitude,altitude,northing,easting,down,utm_zone,'
              'velocity_north,velocity_east,velocity_down,roll,pitch,yaw')


def write_ins(path, *, yaw, pitch=0.0, roll=0.0, samples=11):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [INS_HEADER] + [
        f'{T0_US + k * 20000},INS_SOLUTION_GOOD,51.76,-1.26,110.0,{5735000.0 + 0.1 * k},'
        f'{620000.0 + 0.2 * k},{-60.0 + 0.01 * k},30U,0.0,10.0,0.0,{roll},{pitch},{yaw}'
        for k in range(samples)]
    path.write_text('\n'.join(lines) + '\n')


@pytest.fixture
def robotcar(tmp_path):
    write_ins(tmp_path / A / 'gps' / 'ins.csv', yaw=np.pi / 2, pitch=0.1, roll=0.05)
    write_ins(tmp_path / B / 'gps' / 'ins.csv', yaw=0.3)
    centre_a, centre_b = tmp_path / A / 'stereo' / 'centre', tmp_path / B / 'stereo' / 'centre'
    colours = {'a0': write_image(centre_a / f'{T0_US + 10000}.png', 0),
               'a1': write_image(centre_a / f'{T0_US + 150000}.png', 1),
               'b0': write_image(centre_b / f'{T0_US + 100000}.jpg', 2)}
    write_image(centre_a / f'{T0_US + 500000}.png', 3)      # after the INS track: skipped
    (tmp_path / 'not-a-traversal').mkdir()
    return tmp_path, colours


def test_oxford_robotcar_interpolates_ins_at_image_stamps(robotcar):
    root, colours = robotcar
    data = load_dataset('oxford_robotcar', root=root, conditions={B: 'night'})
    assert len(data) == 3 and data.has_poses
    assert list(data.sequences) == [A, A, B] and list(data.conditions) == ['', '', 'night']
    assert data.frame == {'kind': 'utm', 'zone': '30U', 'axes': 'easting, northing, up'}
    np.testing.assert_allclose(data.positions_m, [[620000.1, 5735000.05, 59.995],
                                                  [620001.5, 5735000.75, 59.925],
                                                  [620001.0, 5735000.5, 59.95]], atol=1e-6)
    # NED yaw east / pitch up 0.1 / right wing down 0.05 -> ENU yaw 0, FLU pitch -0.1, roll 0.05.
    expected_a = Rotation.from_euler('ZYX', [0.0, -0.1, 0.05]).as_quat()
    expected_b = Rotation.from_euler('ZYX', [np.pi / 2 - 0.3, 0.0, 0.0]).as_quat()
    np.testing.assert_allclose(data.quaternions_xyzw, [expected_a, expected_a, expected_b],
                               atol=1e-9)
    np.testing.assert_array_equal(data.load_image(1), colours['a1'])
    assert np.abs(data.load_image(2).astype(int) - colours['b0']).max() <= 2   # JPEG


def test_oxford_robotcar_options_and_errors(robotcar):
    root, _ = robotcar
    only_a = load_dataset('oxford_robotcar', root=root, traversals=[A], every_nth=2,
                          split='test')
    assert len(only_a) == 1 and set(only_a.splits) == {'test'}
    with pytest.raises(ValueError, match=r"conditions names traversal\(s\) \['2015"):
        load_dataset('oxford_robotcar', root=root, conditions={'2015-01-01-00-00-00': 'snow'})
    os.remove(root / B / 'gps' / 'ins.csv')
    with pytest.raises(DatasetLayoutError, match=rf'{B}/gps/ins\.csv is missing: the INS'):
        load_dataset('oxford_robotcar', root=root)


def test_oxford_robotcar_refuses_bayer_mosaics(tmp_path):
    write_ins(tmp_path / A / 'gps' / 'ins.csv', yaw=0.0)
    write_image(tmp_path / A / 'stereo' / 'centre' / f'{T0_US}.png', 0, grey=True)
    with pytest.raises(DatasetLayoutError, match=r'one channel: a raw Bayer.*RobotCar SDK'):
        load_dataset('oxford_robotcar', root=tmp_path)


# --- 7-Scenes ------------------------------------------------------------------------------


def write_seven_scenes_frame(folder, index, rotation, translation):
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, translation
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / f'frame-{index:06d}.pose.txt', pose)
    return write_image(folder / f'frame-{index:06d}.color.png', index)


@pytest.fixture
def seven_scenes(tmp_path):
    chess = tmp_path / 'chess'
    colours = [write_seven_scenes_frame(chess / 'seq-01', 0, OPTICAL_LOOKING_ALONG_X, [1, 2, 3]),
               write_seven_scenes_frame(chess / 'seq-01', 1, YAW_90 @ OPTICAL_LOOKING_ALONG_X,
                                        [1.5, 2, 3]),
               write_seven_scenes_frame(chess / 'seq-02', 0, OPTICAL_LOOKING_ALONG_X, [0, 0, 0])]
    (chess / 'TrainSplit.txt').write_text('sequence1\n')
    (chess / 'TestSplit.txt').write_text('sequence2\n')
    write_seven_scenes_frame(tmp_path / 'fire' / 'seq-03', 0, OPTICAL_LOOKING_ALONG_X, [0, 0, 0])
    (tmp_path / 'fire' / 'TrainSplit.txt').write_text('sequence3\n')
    (tmp_path / 'fire' / 'TestSplit.txt').write_text('')
    return tmp_path, colours


def test_seven_scenes_poses_splits_and_scene_offsets(seven_scenes):
    root, colours = seven_scenes
    data = load_dataset('seven_scenes', root=root)
    assert list(data.sequences) == ['chess/seq-01', 'chess/seq-01', 'chess/seq-02',
                                    'fire/seq-03']
    assert list(data.splits) == ['train', 'train', 'test', 'train']
    assert list(data.roles) == ['database', 'database', 'query', 'database']
    np.testing.assert_allclose(data.positions_m, [[1, 2, 3], [1.5, 2, 3], [0, 0, 0],
                                                  [1000, 0, 0]])
    np.testing.assert_allclose(data.quaternions_xyzw,
                               [IDENTITY_XYZW, YAW_90_XYZW, IDENTITY_XYZW, IDENTITY_XYZW],
                               atol=1e-12)
    assert data.frame['scene_offsets_m'] == {'chess': [0.0, 0.0, 0.0], 'fire': [1000.0, 0, 0]}
    np.testing.assert_array_equal(data.load_image(1), colours[1])
    assert len(load_dataset('seven_scenes', root=root, scenes=['fire'])) == 1


def test_seven_scenes_errors(seven_scenes):
    root, _ = seven_scenes
    os.remove(root / 'chess' / 'seq-01' / 'frame-000001.pose.txt')
    with pytest.raises(DatasetLayoutError,
                       match=r'frame-000001\.pose\.txt is missing: the 4x4 camera-to-world'):
        load_dataset('seven_scenes', root=root)
    (root / 'fire' / 'TrainSplit.txt').write_text('sequence3\nseq 4\n')
    with pytest.raises(DatasetLayoutError, match=r"TrainSplit\.txt:2: 'seq 4' is not"):
        load_dataset('seven_scenes', root=root, scenes=['fire'])
    with pytest.raises(DatasetLayoutError, match=r'has no <scene>/TrainSplit\.txt'):
        load_dataset('seven_scenes', root=root / 'chess')


# --- Cambridge Landmarks -------------------------------------------------------------------


def cambridge_line(image, position, camera_to_world_optical):
    # The list holds the world-to-camera rotation as (w, x, y, z) (VisualSFM's NVM convention).
    x, y, z, w = Rotation.from_matrix(camera_to_world_optical.T).as_quat()
    return f'{image} {" ".join(str(v) for v in position)} {w} {x} {y} {z}'


def write_cambridge_list(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n'
                    + '\n'.join(lines) + '\n')


@pytest.fixture
def cambridge(tmp_path):
    shop = tmp_path / 'ShopFacade'
    colours = [write_image(shop / 'seq1' / 'frame00001.png', 0),
               write_image(shop / 'seq1' / 'frame00002.png', 1),
               write_image(shop / 'seq3' / 'frame00001.png', 2),
               write_image(tmp_path / 'KingsCollege' / 'seq2' / 'frame00007.png', 3)]
    write_cambridge_list(shop / 'dataset_train.txt', [
        cambridge_line('seq1/frame00001.png', [1, 2, 3], OPTICAL_LOOKING_ALONG_X),
        cambridge_line('seq1/frame00002.png', [-4, 5, 0.5], YAW_90 @ OPTICAL_LOOKING_ALONG_X)])
    write_cambridge_list(shop / 'dataset_test.txt', [
        cambridge_line('seq3/frame00001.png', [7, 8, 9], OPTICAL_LOOKING_ALONG_X)])
    write_cambridge_list(tmp_path / 'KingsCollege' / 'dataset_train.txt', [
        cambridge_line('seq2/frame00007.png', [10, 0, 0], OPTICAL_LOOKING_ALONG_X)])
    write_cambridge_list(tmp_path / 'KingsCollege' / 'dataset_test.txt', [])
    return tmp_path, colours


def test_cambridge_poses_splits_and_scene_offsets(cambridge):
    root, colours = cambridge
    data = load_dataset('cambridge', root=root)
    assert list(data.sequences) == ['KingsCollege/seq2', 'ShopFacade/seq1', 'ShopFacade/seq1',
                                    'ShopFacade/seq3']
    assert list(data.splits) == ['train', 'train', 'train', 'test']
    assert list(data.roles) == ['database', 'database', 'database', 'query']
    np.testing.assert_allclose(data.positions_m, [[10, 0, 0], [1001, 2, 3], [996, 5, 0.5],
                                                  [1007, 8, 9]])
    np.testing.assert_allclose(data.quaternions_xyzw, [IDENTITY_XYZW, IDENTITY_XYZW,
                                                       YAW_90_XYZW, IDENTITY_XYZW], atol=1e-12)
    np.testing.assert_array_equal(data.load_image(2), colours[1])
    np.testing.assert_array_equal(data.load_image(0), colours[3])


def test_cambridge_errors_name_the_line(cambridge):
    root, _ = cambridge
    shop = root / 'ShopFacade'
    write_cambridge_list(shop / 'dataset_test.txt', ['seq3/frame00001.png 1 2 3 1 0 0'])
    with pytest.raises(DatasetLayoutError, match=r'dataset_test\.txt:4: .* is not "seqX'):
        load_dataset('cambridge', root=root, scenes=['ShopFacade'])
    write_cambridge_list(shop / 'dataset_test.txt', [
        cambridge_line('seq3/frame00001.png', [7, 8, 9], OPTICAL_LOOKING_ALONG_X),
        cambridge_line('seq9/frame00001.png', [7, 8, 9], OPTICAL_LOOKING_ALONG_X)])
    with pytest.raises(DatasetLayoutError, match=r'dataset_test\.txt:5: image .*seq9'):
        load_dataset('cambridge', root=root)
    os.remove(root / 'KingsCollege' / 'dataset_test.txt')
    with pytest.raises(DatasetLayoutError, match=r'dataset_test\.txt is missing'):
        load_dataset('cambridge', root=root)


# --- revisited Oxford / Paris --------------------------------------------------------------

DATABASE = ['all_souls_000001', 'all_souls_000002', 'ashmolean_000003', 'balliol_000004',
            'bodleian_000005']
QUERIES = ['all_souls_000013', 'ashmolean_000007']
GROUND_TRUTH = {'imlist': DATABASE, 'qimlist': QUERIES, 'gnd': [
    {'easy': np.array([0]), 'hard': np.array([1]), 'junk': np.array([4]),
     'bbx': [1.2, 2.0, 29.6, 20.4]},
    {'easy': np.array([2, 3]), 'hard': np.array([], np.int64), 'junk': np.array([], np.int64),
     'bbx': [0.0, 0.0, 10.0, 10.0]}]}


def revisited_root(root, name, protocol=pickle.DEFAULT_PROTOCOL):
    for index, image in enumerate(QUERIES + DATABASE):
        write_image(root / 'jpg' / f'{image}.jpg', index)
    with open(root / f'gnd_{name}.pkl', 'wb') as handle:
        pickle.dump(GROUND_TRUTH, handle, protocol=protocol)
    return root


def as_lists(arrays):
    return [array.tolist() for array in arrays]


@pytest.mark.parametrize('name', ['roxford5k', 'rparis6k'])
def test_revisited_refuses_pickle_without_opt_in(tmp_path, name):
    root = revisited_root(tmp_path, name)
    with pytest.raises(ValueError, match=rf'gnd_{name}\.pkl is a Python pickle.*'
                                         'allow_pickle=True'):
        load_dataset(name, root=root)


@pytest.mark.parametrize('name, pickle_protocol', [('roxford5k', 2), ('rparis6k', 5)])
def test_revisited_rows_and_protocols(tmp_path, name, pickle_protocol, private_cache):
    root = revisited_root(tmp_path, name, pickle_protocol)
    data = load_dataset(name, root=root, allow_pickle=True)
    assert list(data.roles) == ['query'] * 2 + ['database'] * 5 and set(data.splits) == {'test'}
    assert data.image_paths[0].startswith(str(private_cache / f'{name}-queries-'))
    assert data.image_paths[0].endswith(f'/{QUERIES[0]}.png')
    assert data.image_paths[2].endswith(f'jpg/{DATABASE[0]}.jpg')
    assert not np.isfinite(data.positions_m).any() and data.describe()['ground_truth'] == \
        'positives'
    # Database image i is row 2 + i.
    assert as_lists(data.positives) == [[2, 3], [4, 5]] + [[]] * 5
    assert as_lists(data.ignored) == [[6], []] + [[]] * 5
    easy = load_dataset(name, root=root, allow_pickle=True, protocol='easy')
    assert as_lists(easy.positives[:2]) == [[2], [4, 5]]
    assert as_lists(easy.ignored[:2]) == [[3, 6], []]
    hard = load_dataset(name, root=root, allow_pickle=True, protocol='hard')
    assert as_lists(hard.positives[:2]) == [[3], []]
    assert as_lists(hard.ignored[:2]) == [[2, 6], [4, 5]]
    assert np.abs(data.load_image(1).astype(int) - [40, 180, 90]).max() <= 2   # JPEG
    assert data.load_image(0).shape == (18, 29, 3)       # rows 2..19, columns 1..29 (rounded)
    assert np.abs(data.load_image(0).astype(int) - [10, 200, 90]).max() <= 2
    uncropped = load_dataset(name, root=root, allow_pickle=True, crop_queries=False)
    assert uncropped.image_paths[0].endswith(f'jpg/{QUERIES[0]}.jpg')
    assert uncropped.load_image(0).shape == (24, 32, 3)
    queries = data.select(role='query')
    assert as_lists(queries.positives) == [[], []]        # database rows left the subset


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_revisited_pickle_with_code_is_refused_even_with_opt_in(tmp_path):
    root = revisited_root(tmp_path, 'roxford5k')
    marker = tmp_path / 'payload_ran'
    with open(root / 'gnd_roxford5k.pkl', 'wb') as handle:
        pickle.dump({**GROUND_TRUTH, 'extra': _Payload(str(marker))}, handle)
    with pytest.raises(ValueError, match=r'refers to (posix|os|nt)\.mkdir.*refusing'):
        load_dataset('roxford5k', root=root, allow_pickle=True)
    assert not marker.exists()


def test_revisited_json_copy_needs_no_opt_in_and_errors(tmp_path):
    root = revisited_root(tmp_path, 'rparis6k')
    os.remove(root / 'gnd_rparis6k.pkl')
    as_json = {**GROUND_TRUTH, 'gnd': [{key: np.asarray(value).tolist() for key, value in
                                        entry.items()} for entry in GROUND_TRUTH['gnd']]}
    (root / 'gnd_rparis6k.json').write_text(json.dumps(as_json))
    data = load_dataset('rparis6k', root=root)
    assert as_lists(data.positives[:2]) == [[2, 3], [4, 5]]
    with pytest.raises(ValueError, match=r"protocol='medium_hard'; known protocols"):
        load_dataset('rparis6k', root=root, protocol='medium_hard')
    os.remove(root / 'jpg' / f'{DATABASE[3]}.jpg')
    with pytest.raises(DatasetLayoutError, match=rf'1 listed image.*{DATABASE[3]}\.jpg'):
        load_dataset('rparis6k', root=root)
    with pytest.raises(DatasetLayoutError, match=r'gnd_roxford5k\.pkl is missing'):
        load_dataset('roxford5k', root=root)

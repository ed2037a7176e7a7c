"""Damaged maps are refused with one line naming the file, the first bad row and the fix."""

import io
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

import faiss
import numpy as np
import pytest

from vl_attention import cli
from vl_attention.io import atomic_directory, remove_stale_staging
from vl_attention.geometry.camera_model import CameraModel
from vl_attention.mapping.local_feature_map import LocalFeatureMap
from vl_attention.mapping.map_format import (_file_checksums, load_map, MANIFEST_FILE,
                                             MapFormatError)
from vl_attention.mapping.validation import validate_descriptors, validate_local_features


def rechecksum(map_dir):
    """Recompute the manifest's size and checksums, as an attacker or a bad tool would."""
    manifest_path = Path(map_dir) / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest['files'] = {name: _file_checksums(Path(map_dir) / name)
                         for name in manifest['files']}
    manifest_path.write_text(json.dumps(manifest, indent=2))


def copy_map(tiny_map, tmp_path):
    damaged = tmp_path / 'damaged'
    shutil.copytree(tiny_map, damaged)
    return damaged


def rewrite_records(map_dir, **changes):
    with np.load(map_dir / 'records.npz') as stored:
        arrays = {name: stored[name] for name in stored.files}
    for name, change in changes.items():
        arrays[name] = change(arrays[name].copy())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (map_dir / 'records.npz').write_bytes(buffer.getvalue())
    rechecksum(map_dir)


def rewrite_npy(map_dir, name, change):
    array = np.load(map_dir / name).copy()
    np.save(map_dir / name, change(array), allow_pickle=False)
    rechecksum(map_dir)


def set_row(row, column, value):
    """Change that sets ``array[row]`` (``column`` None) or ``array[row, column]``."""
    def change(array):
        array[row if column is None else (row, column)] = value
        return array
    return change


def refusal(map_dir, verify='full'):
    with pytest.raises(MapFormatError) as caught:
        load_map(map_dir, verify=verify)
    message = str(caught.value)
    assert '\n' not in message and message.endswith('rebuild the map')
    return message


def test_intact_map_passes_every_check(tiny_map):
    loaded = load_map(tiny_map, verify='full')
    assert len(loaded.records) == 24 and loaded.local_features is not None


def test_nan_position_names_file_and_row(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    rewrite_records(damaged, position_enu_m=set_row(3, 1, np.nan))
    message = refusal(damaged, verify='auto')
    assert f'{damaged}/records.npz: position_enu_m row 3 is not finite' in message


def test_nan_latitude_is_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    rewrite_records(damaged, latitude_deg=set_row(0, None, np.inf))
    assert 'latitude_deg row 0 is not finite' in refusal(damaged)


def test_zero_quaternion_is_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    rewrite_records(damaged, orientation_xyzw=set_row(5, None, 0.0))
    message = refusal(damaged)
    assert 'records.npz: orientation_xyzw row 5 has norm outside 1 +- 0.001' in message


def test_n_by_2_positions_are_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    rewrite_records(damaged, position_enu_m=lambda array: array[:, :2])
    assert 'position_enu_m has shape (24, 2), expected (24, 3)' in refusal(damaged)


def test_missing_records_column_is_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    with np.load(damaged / 'records.npz') as stored:
        arrays = {name: stored[name] for name in stored.files if name != 'stamp_ns'}
    np.savez(damaged / 'records.npz', **arrays)
    rechecksum(damaged)
    assert 'records.npz is unreadable' in refusal(damaged)


def test_nan_descriptor_is_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    rewrite_npy(damaged, 'descriptors.npy', set_row(7, 0, np.nan))
    assert 'descriptors.npy: descriptor row 7 is not finite' in refusal(damaged, verify='auto')


def test_non_unit_descriptor_is_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    rewrite_npy(damaged, 'descriptors.npy', lambda array: np.concatenate(
        [array[:4], array[4:5] * 1.01, array[5:]]))
    assert 'descriptors.npy: descriptor row 4 has norm outside 1 +- 0.001 (1.01' in \
        refusal(damaged)


def test_index_vectors_that_differ_from_the_descriptors_are_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    index = faiss.read_index(str(damaged / 'index.faiss'))
    vectors = index.reconstruct_n(0, index.ntotal)
    vectors[9] = -vectors[9]   # still unit norm, but every search ranks it differently
    rebuilt = faiss.IndexFlatIP(index.d)
    rebuilt.add(vectors)
    faiss.write_index(rebuilt, str(damaged / 'index.faiss'))
    rechecksum(damaged)
    assert 'index.faiss: vector row 9 differs from descriptors.npy' in refusal(damaged)


def test_index_of_another_metric_is_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    index = faiss.read_index(str(damaged / 'index.faiss'))
    l2 = faiss.IndexFlatL2(index.d)
    l2.add(index.reconstruct_n(0, index.ntotal))
    faiss.write_index(l2, str(damaged / 'index.faiss'))
    rechecksum(damaged)
    assert 'index.faiss: uses FAISS metric 1' in refusal(damaged)


def test_truncated_records_with_matching_checksums_is_one_line(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    data = (damaged / 'records.npz').read_bytes()
    (damaged / 'records.npz').write_bytes(data[:len(data) // 2])
    rechecksum(damaged)
    assert 'records.npz' in refusal(damaged)


def test_bit_flip_in_records_with_matching_checksums_is_one_line(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    data = bytearray((damaged / 'records.npz').read_bytes())
    data[len(data) // 3] ^= 0x10   # inside a column's data: the zip CRC catches it
    (damaged / 'records.npz').write_bytes(bytes(data))
    rechecksum(damaged)
    message = refusal(damaged)
    assert f'{damaged}/records.npz is damaged and unreadable (BadZipFile: Bad CRC-32' in message


def test_partly_finite_map_point_is_refused(tiny_map, tmp_path):
    damaged = copy_map(tiny_map, tmp_path)
    points = np.load(damaged / 'features' / 'points.npy')
    row = int(np.flatnonzero(np.isfinite(points[:, 0]))[0])
    rewrite_npy(damaged, 'features/points.npy', set_row(row, 2, np.nan))
    message = refusal(damaged)
    assert f'features/points.npy: point row {row} is partly finite' in message


def test_map_info_verify_prints_one_line_and_exits_1(tiny_map, tmp_path, capsys):
    damaged = copy_map(tiny_map, tmp_path)
    rewrite_records(damaged, orientation_xyzw=set_row(0, None, 0.0))
    assert cli.main(['map', 'info', str(damaged), '--verify']) == 1
    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err.count('\n') == 1
    assert captured.err.startswith('vl-attention map info: ') and 'orientation_xyzw row 0' in \
        captured.err
    assert cli.main(['map', 'info', str(tiny_map), '--verify']) == 0
    assert json.loads(capsys.readouterr().out)['statistics']['count'] == 24


def test_unknown_verify_mode_stays_a_programming_error(tiny_map):
    with pytest.raises(ValueError, match='unknown verify mode'):
        load_map(tiny_map, verify='sometimes')


def test_descriptor_sample_always_covers_first_and_last_rows():
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(50_000, 8)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    validate_descriptors(descriptors, Path('d.npy'), sample=100)
    for row in (0, 63, 49_936, 49_999):
        bad = descriptors.copy()
        bad[row] *= 2.0
        with pytest.raises(MapFormatError, match=f'd.npy: descriptor row {row} has norm'):
            validate_descriptors(bad, Path('d.npy'), sample=100)
    bad = descriptors.copy()
    bad[20_000:30_000] = np.nan   # 20 % of the rows: a 100-row sample cannot miss them all
    with pytest.raises(MapFormatError, match='descriptor row 2[0-9]{4} is not finite'):
        validate_descriptors(bad, Path('d.npy'), sample=100)
    bad = descriptors.copy()
    bad[25_000, 3] = np.nan
    with pytest.raises(MapFormatError, match='descriptor row 25000 is not finite'):
        validate_descriptors(bad, Path('d.npy'), sample=None)   # full: every row


def _feature_table(offsets, keypoints, points):
    rows = len(keypoints)
    return LocalFeatureMap('orb', np.asarray(offsets, np.int64),
                           np.asarray(keypoints, np.float32),
                           np.zeros((rows, 32), np.uint8), np.asarray(points, np.float32),
                           CameraModel(640, 480, 500.0, 500.0, 320.0, 240.0))


def test_local_feature_table_checks():
    keypoints = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    points = [[0.0, 1.0, 2.0], [np.nan] * 3, [1.0, 1.0, 1.0]]
    validate_local_features(_feature_table([0, 2, 3], keypoints, points), Path('m'), count=2)
    with pytest.raises(MapFormatError, match='offsets.npy: offset row 1 is smaller'):
        validate_local_features(_feature_table([0, 3, 2, 3], keypoints, points), Path('m'))
    with pytest.raises(MapFormatError, match='offsets.npy: covers 2 images, the manifest 3'):
        validate_local_features(_feature_table([0, 2, 3], keypoints, points), Path('m'),
                                count=3)
    with pytest.raises(MapFormatError, match='runs from 0 to 2, expected 0 to 3'):
        validate_local_features(_feature_table([0, 1, 2], keypoints, points), Path('m'))
    with pytest.raises(MapFormatError, match='keypoints.npy: keypoint row 2 is not finite'):
        validate_local_features(_feature_table([0, 2, 3], keypoints[:2] + [[np.inf, 0.0]],
                                               points), Path('m'))
    with pytest.raises(MapFormatError, match='points.npy: point row 0 is partly finite'):
        validate_local_features(_feature_table([0, 2, 3], keypoints,
                                               [[0.0, np.nan, 2.0]] + points[1:]), Path('m'))


def _dead_pid():
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def test_stale_staging_of_a_crashed_save_is_removed_at_the_next_save(tiny_map, tmp_path):
    parent = tmp_path / 'maps'
    parent.mkdir()
    target = parent / 'town'
    hour_ago = time.time() - 3600
    stale = [parent / '.town.k3j_x9q2.staging',                    # an older version's name
             parent / f'.town.{_dead_pid()}-ab12cd34.staging']     # its writer is gone
    kept = [parent / f'.town.{os.getppid()}-ab12cd34.staging',     # a live writer's
            parent / '.town.x.y.staging',                          # not a staging name
            parent / '.town.v2.k3j_x9q2.staging',                  # the map 'town.v2's
            parent / '.other.k3j_x9q2.staging',                    # another map's
            parent / '.town.old-123']                              # not a staging directory
    for folder in stale + kept:
        folder.mkdir()
        (folder / 'descriptors.npy').write_bytes(b'x' * 100)
        os.utime(folder, (hour_ago, hour_ago))
    fresh = parent / '.town.zzzzzzzz.staging'   # made after this process started: maybe live
    fresh.mkdir()
    with atomic_directory(target) as staging:
        shutil.copytree(tiny_map, staging, dirs_exist_ok=True)
    assert load_map(target).manifest.count == 24
    assert not any(folder.exists() for folder in stale)
    assert all(folder.exists() for folder in kept + [fresh])
    assert remove_stale_staging(target) == []

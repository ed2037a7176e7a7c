"""Map directory: build from folder + CSV, load, fingerprint check, corruption, atomic save."""

import json

import numpy as np
import pytest

from vl_attention.geo import GeodeticOrigin
from vl_attention.io import atomic_directory
from vl_attention.mapping import (load_map, MapFormatError, MapIndex, MapManifest,
                                  PosesFileError, read_poses_csv, save_map)
from vl_attention.mapping.builder import build_map_from_folder, ImageReadError
from vl_attention.mapping.records import records_from_columns


def test_map_holds_every_image_with_its_pose(photo_map, photo_folder, embedder):
    loaded = load_map(photo_map, expected_fingerprint=embedder.fingerprint)
    columns = read_poses_csv(photo_folder / 'poses.csv')
    manifest = loaded.manifest
    assert manifest.count == len(columns['image']) == len(loaded.index) == len(loaded.records)
    assert manifest.descriptor_dim == 1280 and manifest.metric == 'inner_product'
    assert manifest.geodetic_origin.latitude_deg == pytest.approx(columns['latitude_deg'][0])
    assert list(loaded.records.image_id) == columns['image']
    # 100 m apart along a meridian, starting at the origin
    north_m = loaded.records.position_enu_m[:, 1]
    np.testing.assert_allclose(np.diff(north_m), 100.0, atol=0.01)
    assert abs(loaded.records.position_enu_m[0]).max() < 1e-6


def test_map_made_with_another_model_is_refused_naming_both(photo_map, embedder):
    with pytest.raises(MapFormatError) as error:
        load_map(photo_map, expected_fingerprint='0123456789abcdef')
    assert embedder.fingerprint in str(error.value) and '0123456789abcdef' in str(error.value)


def test_corrupted_and_truncated_files_are_detected(photo_map, tmp_path):
    import shutil
    damaged = tmp_path / 'damaged'
    shutil.copytree(photo_map, damaged)
    index_file = damaged / 'index.faiss'
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(MapFormatError, match='index.faiss is truncated or corrupt'):
        load_map(damaged)
    index_file.write_bytes(bytes(data[:100]))
    with pytest.raises(MapFormatError, match='truncated or corrupt'):
        load_map(damaged)
    shutil.copy(photo_map / 'index.faiss', index_file)
    (damaged / 'records.npz').unlink()
    with pytest.raises(MapFormatError, match='records.npz is missing'):
        load_map(damaged)


def test_unknown_format_version_and_non_map_dirs(photo_map, tmp_path):
    import shutil
    newer = tmp_path / 'newer'
    shutil.copytree(photo_map, newer)
    manifest = json.loads((newer / 'manifest.json').read_text())
    for version in (1, 99):
        manifest['format_version'] = version
        (newer / 'manifest.json').write_text(json.dumps(manifest))
        with pytest.raises(MapFormatError,
                           match=f'format version {version}.*reads versions \\(2, 3\\)'):
            load_map(newer)
    with pytest.raises(MapFormatError, match='not a map'):
        load_map(tmp_path / 'nothing_here')


def _tiny_map_parts(count, dim=4):
    origin = GeodeticOrigin(10.0, 20.0, 0.0)
    records = records_from_columns([f'{i}.png' for i in range(count)], np.arange(count),
                                   np.full(count, 10.0), np.full(count, 20.0), np.zeros(count),
                                   np.tile([0.0, 0.0, 0.0, 1.0], (count, 1)), origin)
    index = MapIndex.create('flat_ip', dim)
    index.add(np.eye(dim, dtype=np.float32)[np.arange(count) % dim])
    manifest = MapManifest(model_name='m', model_fingerprint='f', descriptor_dim=dim,
                           count=count, geodetic_origin=origin)
    return manifest, index, records


def test_failed_save_keeps_the_previous_map(tmp_path):
    target = tmp_path / 'map'
    save_map(target, *_tiny_map_parts(3))
    with pytest.raises(RuntimeError, match='crash'):
        with atomic_directory(target) as staging:
            (staging / 'manifest.json').write_text('{half')
            raise RuntimeError('simulated crash while writing')
    assert load_map(target).manifest.count == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['map']   # no staging left behind
    save_map(target, *_tiny_map_parts(4))
    assert load_map(target).manifest.count == 4


def test_save_refuses_inconsistent_parts(tmp_path):
    manifest, index, records = _tiny_map_parts(3)
    index.add(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match='disagree'):
        save_map(tmp_path / 'bad', manifest, index, records)


def test_poses_csv_errors_name_file_line_and_fix(tmp_path):
    missing = tmp_path / 'missing_columns.csv'
    missing.write_text('image,stamp_ns,latitude_deg\na.png,1,10\n')
    with pytest.raises(PosesFileError, match=r"missing column\(s\) \['longitude_deg'"):
        read_poses_csv(missing)
    bad_number = tmp_path / 'bad_number.csv'
    bad_number.write_text('image,stamp_ns,latitude_deg,longitude_deg,altitude_m,qx,qy,qz,qw\n'
                          'a.png,1,10,20,0,0,0,0,1\nb.png,2,north,20,0,0,0,0,1\n')
    with pytest.raises(PosesFileError, match='bad_number.csv:3'):
        read_poses_csv(bad_number)
    with pytest.raises(PosesFileError, match='does not exist'):
        read_poses_csv(tmp_path / 'nope.csv')


def test_unreadable_image_is_named(photo_folder, embedder, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    (images / 'broken.png').write_bytes(b'not a png')
    poses = tmp_path / 'poses.csv'
    poses.write_text('image,stamp_ns,latitude_deg,longitude_deg,altitude_m,qx,qy,qz,qw\n'
                     'broken.png,1,10,20,0,0,0,0,1\n')
    with pytest.raises(ImageReadError, match='broken.png'):
        build_map_from_folder(images, poses, tmp_path / 'map', embedder=embedder)
    assert not (tmp_path / 'map').exists()

"""Index types, search parameters, re-ranking, storage, resume, subsampling, association."""

import json
import shutil

import numpy as np
import pytest

from vl_attention.geo import GeodeticOrigin, quaternion_from_yaw_pitch_roll
from vl_attention.mapping import load_map, MapFormatError, MapIndex, MapManifest, save_map
from vl_attention.data.association import Associator, AssociationError, sorted_track
from vl_attention.mapping.builder import (add_to_map, build_map, FolderSource, MapBuildConfig)
from vl_attention.mapping.checkpoints import partial_dir, ResumeError
from vl_attention.mapping.errors import MapBuildError
from vl_attention.mapping.index import choose_index_type, INDEX_TYPES, IndexParams
from vl_attention.mapping.records import read_poses, read_poses_csv, records_from_columns
from vl_attention.mapping.subsampling import keyframe_mask, KeyframeConfig


def unit(points):
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def traversals(count, dim=32, streets=40, seed=0):
    """Descriptors like a drive: streets are random walks, frames along them are similar."""
    rng = np.random.default_rng(seed)
    starts = np.repeat(rng.standard_normal((streets, dim)), count // streets, axis=0)
    steps = 0.25 * rng.standard_normal((count, dim)).reshape(streets, -1, dim)
    return unit(starts + np.cumsum(steps, axis=1).reshape(count, dim))


@pytest.fixture(scope='module')
def database():
    return traversals(4000)


@pytest.fixture(scope='module')
def queries(database):
    rng = np.random.default_rng(1)
    picked = database[rng.choice(len(database), 200, replace=False)]
    return unit(picked + 0.02 * rng.standard_normal(picked.shape))


def recall_at_1(index, queries, exact_top1):
    return float(np.mean(index.search(queries, 1)[1][:, 0] == exact_top1))


def test_registry_and_auto_choice():
    assert INDEX_TYPES.names() == ['flat_ip', 'hnsw', 'ivf_pq']
    assert choose_index_type(1000, 256) == 'flat_ip'
    assert choose_index_type(500_000, 256) == 'hnsw'
    assert choose_index_type(10_000_000, 256) == 'ivf_pq'
    with pytest.raises(ValueError, match="unknown index type 'annoy'.*flat_ip"):
        MapIndex.create('annoy', 8)
    assert MapIndex.create('auto', 8, count=10).index_type == 'flat_ip'


@pytest.mark.parametrize('index_type,params,min_recall', [
    ('hnsw', IndexParams(ef_search=128), 0.95),
    ('ivf_pq', IndexParams(nlist=32, pq_bytes=8, nprobe=8, rerank_k=50), 0.97)])
def test_approximate_indices_agree_with_exact(database, queries, index_type, params,
                                              min_recall):
    exact = MapIndex.build(database, 'flat_ip')
    exact_similarities, exact_top = exact.search(queries, 10)
    index = MapIndex.build(database, index_type, params=params)
    assert index.index_type == index_type and len(index) == len(database)
    assert recall_at_1(index, queries, exact_top[:, 0]) >= min_recall
    similarities, top = index.search(queries, 10)
    assert top.shape == (len(queries), 10) and np.all(np.diff(similarities, axis=1) <= 1e-6)
    hits = top[:, 0] == exact_top[:, 0]
    np.testing.assert_allclose(similarities[hits, 0], exact_similarities[hits, 0], atol=1e-5)


def test_rerank_and_search_params_change_recall(database, queries):
    exact_top = MapIndex.build(database, 'flat_ip').search(queries, 1)[1][:, 0]
    index = MapIndex.build(database, 'ivf_pq',
                           params=IndexParams(nlist=64, pq_bytes=4, nprobe=1, rerank_k=0))
    low = recall_at_1(index, queries, exact_top)
    index.with_search_params(nprobe=16, rerank_k=100)
    assert index.faiss_index.nprobe == 16
    assert recall_at_1(index, queries, exact_top) >= max(low, 0.97)
    hnsw = MapIndex.build(database, 'hnsw', params=IndexParams(ef_search=16))
    assert hnsw.with_search_params(ef_search=128).faiss_index.hnsw.efSearch == 128


def test_ivf_pq_needs_enough_training_data():
    with pytest.raises(ValueError, match='needs at least 64 descriptors.*flat_ip'):
        MapIndex.build(traversals(40), 'ivf_pq', params=IndexParams(nlist=64, pq_bytes=8))
    with pytest.raises(ValueError, match='pq_bytes'):
        MapIndex.create('ivf_pq', 30, params=IndexParams(pq_bytes=4))


def _map_parts(descriptors, index_type='flat_ip', params=IndexParams()):
    count = len(descriptors)
    origin = GeodeticOrigin(10.0, 20.0, 0.0)
    records = records_from_columns([f'{i}.png' for i in range(count)], np.arange(count),
                                   10.0 + np.arange(count) * 1e-5, np.full(count, 20.0),
                                   np.zeros(count), np.tile([0.0, 0.0, 0.0, 1.0], (count, 1)),
                                   origin)
    index = MapIndex.build(descriptors, index_type, params=params)
    manifest = MapManifest(model_name='m', model_fingerprint='f',
                           descriptor_dim=descriptors.shape[1], count=count,
                           geodetic_origin=origin)
    return manifest, index, records


@pytest.mark.parametrize('index_type', ['flat_ip', 'hnsw', 'ivf_pq'])
def test_every_index_type_round_trips_memory_mapped(tmp_path, database, queries, index_type):
    params = IndexParams(nlist=32, pq_bytes=8, nprobe=8, rerank_k=40)
    parts = _map_parts(database, index_type, params)
    save_map(tmp_path / 'map', *parts)
    manifest = json.loads((tmp_path / 'map' / 'manifest.json').read_text())
    assert manifest['format_version'] == 3 and manifest['index_type'] == index_type
    assert manifest['index_params']['nprobe'] == 8
    assert 'pickle' not in (tmp_path / 'map' / 'descriptors.npy').read_bytes()[:128].decode(
        'latin-1')
    for mmap in (False, True):
        loaded = load_map(tmp_path / 'map', mmap=mmap, search_params={'nprobe': 16})
        assert isinstance(loaded.index.descriptors, np.memmap)
        assert loaded.index.params.nprobe == 16 and loaded.index.index_type == index_type
        np.testing.assert_array_equal(loaded.index.search(queries, 5)[1],
                                      parts[1].with_search_params(nprobe=16).search(queries,
                                                                                    5)[1])
        if mmap:
            with pytest.raises(ValueError, match='mmap=False'):
                loaded.index.add(queries[:1])


def test_corrupted_or_truncated_index_is_detected_in_every_mode(tmp_path, database):
    save_map(tmp_path / 'map', *_map_parts(database[:500]))
    index_file = tmp_path / 'map' / 'index.faiss'
    good = index_file.read_bytes()
    flipped = bytearray(good)
    flipped[-10] ^= 0xFF
    index_file.write_bytes(bytes(flipped))
    for verify in ('auto', 'full'):
        with pytest.raises(MapFormatError, match='index.faiss is truncated or corrupt.*sha'):
            load_map(tmp_path / 'map', verify=verify)
    index_file.write_bytes(good[:-100])
    for verify in ('auto', 'full', 'size'):
        with pytest.raises(MapFormatError, match='truncated or corrupt.*bytes, manifest says'):
            load_map(tmp_path / 'map', verify=verify)
    index_file.write_bytes(good)
    (tmp_path / 'map' / 'descriptors.npy').write_bytes(b'\x93NUMPY' + b'\0' * 10)
    with pytest.raises(MapFormatError, match='descriptors.npy is truncated or corrupt'):
        load_map(tmp_path / 'map')


def test_large_files_hash_only_their_edges_unless_full(tmp_path, database, monkeypatch):
    from vl_attention.mapping import map_format
    monkeypatch.setattr(map_format, 'FULL_HASH_MAX_BYTES', 1000)
    monkeypatch.setattr(map_format, 'EDGE_BYTES', 1000)
    save_map(tmp_path / 'map', *_map_parts(database))
    path = tmp_path / 'map' / 'descriptors.npy'
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01      # in the middle: only the full hash sees it
    path.write_bytes(bytes(data))
    load_map(tmp_path / 'map')
    with pytest.raises(MapFormatError, match='sha256 differs'):
        load_map(tmp_path / 'map', verify='full')
    data[-1] ^= 0x01                  # at the end: the edge hash sees it
    path.write_bytes(bytes(data))
    with pytest.raises(MapFormatError, match='first/last MiB'):
        load_map(tmp_path / 'map')


def test_association_interpolates_exactly_and_counts_skips():
    stamps_ns = np.array([10, 20, 30, 60, 70]) * 100_000_000   # 1 s, 2 s, 3 s, 6 s, 7 s
    positions = np.column_stack([stamps_ns / 1e9 * 10.0, np.zeros(5), np.ones(5)])
    yaws = np.radians([0.0, 10.0, 20.0, 50.0, 60.0])
    track = sorted_track(stamps_ns[::-1], positions[::-1],
                         quaternion_from_yaw_pitch_roll(yaws)[::-1])
    associate = Associator(track, max_gap_s=1.5)
    exact = associate(2_000_000_000)
    assert exact.ok and np.array_equal(exact.values, [20.0, 0.0, 1.0])
    middle = associate(2_500_000_000)
    np.testing.assert_allclose(middle.values, [25.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(middle.orientation_xyzw,
                               quaternion_from_yaw_pitch_roll(np.radians(15.0)), atol=1e-12)
    assert associate(999_999_999).reason == 'before_first_position'
    assert associate(7_000_000_001).reason == 'after_last_position'
    assert associate(4_000_000_000).reason == 'gap_too_long'
    assert associate(6_000_000_000).ok                     # exact sample inside a long gap
    with pytest.raises(AssociationError, match='no samples'):
        sorted_track([], np.zeros((0, 3)))


def test_keyframes_every_distance_or_angle():
    positions = np.column_stack([np.arange(0.0, 10.0, 0.5), np.zeros(20), np.zeros(20)])
    still = np.tile([0.0, 0.0, 0.0, 1.0], (20, 1))
    mask = keyframe_mask(positions, still, KeyframeConfig(keyframe_distance_m=2.0))
    assert np.flatnonzero(mask).tolist() == [0, 4, 8, 12, 16]
    turning = quaternion_from_yaw_pitch_roll(np.radians(np.arange(20) * 4.0))
    mask = keyframe_mask(np.zeros((20, 3)), turning, KeyframeConfig(keyframe_angle_deg=10.0))
    assert np.flatnonzero(mask).tolist() == [0, 3, 6, 9, 12, 15, 18]
    assert keyframe_mask(positions, still, KeyframeConfig()).all()


def test_poses_json_matches_csv(tiny_world, tmp_path):
    poses = read_poses_csv(tiny_world / 'map_day' / 'poses.csv')
    rows = [{name: poses[name][i] for name in poses} for i in range(len(poses['image']))]
    (tmp_path / 'poses.json').write_text(json.dumps({'poses': rows}))
    assert read_poses(tmp_path / 'poses.json') == poses


class Interrupted(Exception):
    pass


class InterruptingSource(FolderSource):
    def __init__(self, *args, fail_after, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_after = fail_after

    def frames(self):
        for count, frame in enumerate(super().frames()):
            if count == self.fail_after:
                raise Interrupted('power cut')
            yield frame


def test_interrupted_build_resumes_to_the_same_map(tiny_world, tiny_map, embedder, tmp_path):
    folder = tiny_world / 'map_day'
    cfg = MapBuildConfig(checkpoint_frames=8)
    out = tmp_path / 'map'
    with pytest.raises(Interrupted):
        build_map(InterruptingSource(folder / 'images', folder / 'poses.csv', fail_after=13),
                  out, embedder=embedder, cfg=cfg)
    assert not out.exists() and len(list(partial_dir(out).glob('batch_*.npz'))) == 1
    loaded_frames = []
    source = FolderSource(folder / 'images', folder / 'poses.csv')
    original_frames = source.frames
    source.frames = lambda: (loaded_frames.append(f.image_id) or f for f in original_frames())
    build_map(source, out, embedder=embedder, cfg=cfg)
    assert not partial_dir(out).exists()
    resumed, reference = load_map(out), load_map(tiny_map)
    np.testing.assert_array_equal(resumed.index.descriptors, reference.index.descriptors)
    for name in ('image_id', 'stamp_ns', 'position_enu_m', 'orientation_xyzw'):
        np.testing.assert_array_equal(getattr(resumed.records, name),
                                      getattr(reference.records, name))


def test_partial_build_of_other_inputs_is_refused(tiny_world, embedder, tmp_path):
    folder = tiny_world / 'map_day'
    out = tmp_path / 'map'
    with pytest.raises(Interrupted):
        build_map(InterruptingSource(folder / 'images', folder / 'poses.csv', fail_after=9),
                  out, embedder=embedder, cfg=MapBuildConfig(checkpoint_frames=8))
    other = FolderSource(tiny_world / 'query_night' / 'images',
                         tiny_world / 'query_night' / 'poses.csv')
    with pytest.raises(ResumeError, match='--restart'):
        build_map(other, out, embedder=embedder, cfg=MapBuildConfig(checkpoint_frames=8))
    build_map(other, out, embedder=embedder,
              cfg=MapBuildConfig(checkpoint_frames=8, restart=True))
    assert load_map(out).manifest.count == 24


def test_subsampled_build_then_incremental_add(tiny_world, tiny_map, embedder, tmp_path):
    folder = tiny_world / 'map_day'
    cfg = MapBuildConfig(keyframes=KeyframeConfig(keyframe_distance_m=5.0))
    out = build_map(FolderSource(folder / 'images', folder / 'poses.csv'), tmp_path / 'map',
                    embedder=embedder, cfg=cfg)
    thin, full = load_map(out), load_map(tiny_map)
    expected = keyframe_mask(full.records.position_enu_m, full.records.orientation_xyzw,
                             cfg.keyframes)
    assert 6 <= thin.manifest.count == expected.sum() < 24   # frames 2 m apart
    np.testing.assert_array_equal(thin.index.descriptors, full.index.descriptors[expected])
    assert thin.manifest.build['frames']['skipped_not_keyframe'] == 24 - expected.sum()
    kept = int(expected.sum())
    night = tiny_world / 'query_night'
    assert thin.manifest.build['poses_frame'] == 'camera'
    with pytest.raises(MapBuildError, match=r'holds camera poses and these are base poses'):
        add_to_map(out, FolderSource(night / 'images', night / 'poses.csv'), embedder=embedder,
                   cfg=MapBuildConfig(poses_frame='base'))
    assert load_map(out).manifest.count == kept
    add_to_map(out, FolderSource(night / 'images', night / 'poses.csv'), embedder=embedder)
    grown = load_map(out, expected_fingerprint=embedder.fingerprint)
    assert grown.manifest.count == len(grown.index) == kept + 24
    assert len(grown.manifest.build['additions']) == 1
    assert grown.manifest.geodetic_origin == thin.manifest.geodetic_origin
    _, top = grown.index.search(grown.index.descriptors[kept:], 1)
    assert np.array_equal(top[:, 0], np.arange(kept, kept + 24))
    shutil.rmtree(out)

"""Maps of format 3 end to end: calibration, local features, the model they carry, the pipeline."""

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vl_attention.localization import Localizer, TrackingConfig
from vl_attention.mapping import load_map, map_model_dir, MapFormatError, read_poses_csv


def _frames(world, traversal):
    columns = read_poses_csv(world / traversal / 'poses.csv')
    for index, name in enumerate(columns['image']):
        image = cv2.imread(str(world / traversal / 'images' / name))
        yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB), columns['stamp_ns'][index] * 1e-9, index


def test_tiny_map_holds_calibration_features_and_its_model(tiny_map):
    map_ = load_map(tiny_map, verify='full')
    manifest = map_.manifest
    assert manifest.format_version == 3
    assert manifest.calibration['impostor_similarity_std'] > 0
    assert manifest.local_features['kind'] == 'sift_clahe'   # MapBuildConfig's default
    assert manifest.local_features['points'] > 100
    assert map_.local_features is not None and len(map_.local_features) == manifest.count
    assert map_model_dir(tiny_map) is not None
    assert {'model/model.onnx', 'features/points.npy', 'camera.json'} <= set(manifest.files)


def test_from_map_needs_only_the_map_and_imports_no_torch(tiny_map, tiny_world):
    image = tiny_world / 'map_day' / 'images' / '000006.png'
    script = (
        'import json, sys, cv2\n'
        'from vl_attention.localization import Localizer\n'
        f'localizer = Localizer.from_map({str(tiny_map)!r}, backend="onnxruntime")\n'
        f'frame = cv2.cvtColor(cv2.imread({str(image)!r}), cv2.COLOR_BGR2RGB)\n'
        'result = localizer.localize(frame, stamp_s=1.0)\n'
        'print(json.dumps({"torch": "torch" in sys.modules, "source": result.pose_source,'
        ' "state": result.filter_state, "inliers": result.inliers,'
        ' "refinement": result.refinement}))\n')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report['torch'] is False
    assert report['state'] in ('initialising', 'tracking')
    # a map frame seen again: PnP against its own triangulated points succeeds
    assert report['source'] == 'pnp' and report['inliers'] >= 12, report


def test_pipeline_tracks_and_refines_the_map_route(tiny_map, tiny_world, embedder):
    map_ = load_map(tiny_map)
    localizer = Localizer(map_, embedder=embedder, tracking=TrackingConfig())
    truth = map_.records.position_enu_m     # the map's own frames, at the map's origin
    results = [localizer.localize(frame, stamp_s=stamp)
               for frame, stamp, _ in _frames(tiny_world, 'map_day')]
    states = [r.filter_state for r in results]
    assert states[0] == 'initialising' and states[-1] == 'tracking'
    refined = [(r, truth[k]) for k, r in enumerate(results) if r.pose_source == 'pnp']
    assert len(refined) >= len(results) // 2
    errors = [np.linalg.norm(r.position_enu_m - t) for r, t in refined]
    assert np.median(errors) < 0.25
    for r, _ in refined:
        assert r.ok and np.all(np.linalg.eigvalsh(r.pose_covariance()) > 0)
        assert r.single_frame is not None and r.filtered is not None
    localizer.reset()
    assert localizer.localize(next(_frames(tiny_world, 'map_day'))[0]).filter_state == \
        'initialising'


def test_a_map_without_local_features_localizes_with_a_rebuild_note(tiny_map, tmp_path, embedder):
    old = tmp_path / 'old_map'
    shutil.copytree(tiny_map, old)
    manifest = json.loads((old / 'manifest.json').read_text())
    manifest['local_features'] = {}
    manifest['calibration'] = {}
    (old / 'manifest.json').write_text(json.dumps(manifest))
    localizer = Localizer(load_map(old), embedder=embedder, tracking=TrackingConfig())
    assert localizer.refiner is None and 'rebuild it with --local-features' in \
        localizer.refinement_note
    result = localizer.localize(np.zeros((120, 160, 3), np.uint8), stamp_s=0.0)
    assert 'rebuild' in result.refinement and result.pose_source != 'pnp'


def test_damaged_feature_files_are_refused(tiny_map, tmp_path):
    broken = tmp_path / 'broken'
    shutil.copytree(tiny_map, broken)
    points = broken / 'features' / 'points.npy'
    points.write_bytes(points.read_bytes()[:-64])
    with pytest.raises(MapFormatError, match='points.npy is truncated or corrupt'):
        load_map(broken)


def test_a_textureless_frame_gets_a_clear_refinement_reason(tiny_map, embedder):
    localizer = Localizer(load_map(tiny_map), embedder=embedder, tracking=TrackingConfig())
    result = localizer.localize(np.full((120, 160, 3), 90, np.uint8), stamp_s=0.0)
    assert result.pose_source != 'pnp'
    assert 'local features in the frame' in result.refinement


@pytest.mark.parametrize('verification_frames', [4, 0])
def test_a_filter_fix_needs_a_recent_pnp_verification(tiny_map, tiny_world, embedder,
                                                      verification_frames):
    # the blurred frames below carry almost no evidence (log Bayes factors ~0.2): the frame
    # evidence gate, tested on its own below, is off here
    tracking = TrackingConfig(verification_frames=verification_frames,
                              min_frame_evidence=float('-inf'))
    localizer = Localizer(load_map(tiny_map), embedder=embedder, tracking=tracking)
    frames = list(_frames(tiny_world, 'map_day'))
    for frame, stamp, _ in frames:
        result = localizer.localize(frame, stamp_s=stamp)
    assert result.ok and result.pose_source == 'pnp'
    # the route again, blurred: retrieval and the filter still place it, PnP cannot
    blurred = [localizer.localize(cv2.GaussianBlur(frame, (0, 0), 4), stamp_s=stamp + 10.0)
               for frame, stamp, _ in frames[:8]]
    assert all(r.pose_source == 'filter' and r.filter_state == 'tracking' for r in blurred)
    if verification_frames:
        assert [r.ok for r in blurred] == [True] * 3 + [False] * 5
        assert 'PnP verified no place near its estimate in the last 4 frames' in \
            blurred[-1].reason
    else:
        assert all(r.ok for r in blurred)


def test_refinement_stops_at_the_first_pose_with_accept_inliers(tiny_map, tiny_world):
    from vl_attention.localization.refinement import RefinementConfig, Refiner
    map_ = load_map(tiny_map)
    frame = next(f for f, _, k in _frames(tiny_world, 'map_day') if k == 4)
    poses = {accept: Refiner(map_.local_features, RefinementConfig(accept_inliers=accept))
             .refine(frame, [5, 4]) for accept in (0, 12)}
    assert poses[0].ok and poses[12].ok, (poses[0].reason, poses[12].reason)
    # trying both, the frame's own map image has the most inliers; stopping at the first
    # pose with enough of them keeps the neighbour, itself a good pose
    assert poses[0].place_index == 4 and poses[12].place_index == 5
    assert poses[0].inliers > poses[12].inliers >= 12
    for pose in poses.values():
        assert np.linalg.norm(pose.position_enu_m - map_.records.position_enu_m[4]) < 0.5


@pytest.mark.parametrize('budget_ms, budgeted, tried', [(1e-3, True, 1), (0.0, True, 3),
                                                        (1e-3, False, 3)])
def test_refinement_tries_no_further_candidate_once_its_time_budget_is_spent(
        tiny_map, tiny_world, budget_ms, budgeted, tried):
    from vl_attention.localization.refinement import RefinementConfig, Refiner
    map_ = load_map(tiny_map)
    frame = next(f for f, _, k in _frames(tiny_world, 'map_day') if k == 4)
    refiner = Refiner(map_.local_features, RefinementConfig(time_budget_ms=budget_ms))
    # places 20 and 18 lie 28-32 m down the road: PnP fails there; the frame's own place last
    pose = refiner.refine(frame, [20, 18, 4], budgeted=budgeted)
    assert pose.candidates_tried == tried
    if tried == 1:   # the extraction alone outlasts a microsecond: only the first is tried
        assert not pose.ok
        assert pose.reason.startswith('PnP failed for every candidate tried (place 20: ')
        assert pose.reason.endswith('; time_budget_ms 0.001 spent after 1 of 3 candidates)')
    else:            # no limit, or the caller waives it: every candidate, the right pose
        assert pose.ok and pose.place_index == 4, pose.reason


def test_the_localizer_spends_the_time_budget_only_while_its_filter_tracks(tiny_map,
                                                                           tiny_world, embedder):
    from vl_attention.localization.refinement import RefinementConfig
    tracking = TrackingConfig(refinement=RefinementConfig(time_budget_ms=1e-3))
    localizer = Localizer(load_map(tiny_map), embedder=embedder, tracking=tracking)
    frames = list(_frames(tiny_world, 'map_day'))
    blurred = cv2.GaussianBlur(frames[12][0], (0, 0), 4)   # PnP fails on it everywhere
    first = localizer.localize(blurred, stamp_s=0.0)
    assert first.filter_state == 'initialising'
    assert first.refinement.count('place ') == 3 and 'time_budget_ms' not in first.refinement
    localizer.reset()
    for frame, stamp, _ in frames[:12]:
        localizer.localize(frame, stamp_s=stamp)
    tracked = localizer.localize(blurred, stamp_s=frames[12][1])
    assert tracked.filter_state == 'tracking'
    assert tracked.refinement.count('place ') == 1
    assert tracked.refinement.endswith('time_budget_ms 0.001 spent after 1 of 3 candidates)')


def test_a_jump_of_the_filter_voids_the_verification_of_the_track_it_left(tiny_map, tiny_world,
                                                                          embedder):
    map_ = load_map(tiny_map)
    # the blurred frames at B contradict track A: the frame evidence gate is off here
    localizer = Localizer(map_, embedder=embedder,
                          tracking=TrackingConfig(min_frame_evidence=float('-inf')))
    frames = [frame for frame, _, _ in _frames(tiny_world, 'map_day')]
    truth = map_.records.position_enu_m
    stamps = iter(np.arange(40) * 0.2)   # the world's 5 Hz; a kidnapped robot's clock runs on
    for k in range(12, 24):              # track A: the road's far half, verified by PnP
        result = localizer.localize(frames[k], stamp_s=next(stamps))
    assert result.ok and result.pose_source == 'pnp'

    def blurred_at(k):   # retrieval sure of place k (its own map descriptor), PnP blind
        return localizer.track(np.asarray(map_.index.descriptors[k]), stamp_s=next(stamps),
                               frame=cv2.GaussianBlur(frames[k], (0, 0), 4))

    # kidnapped to B, the road's start (>= 32 m from A): the filter jumps there within frames
    at_b = [(k, blurred_at(k)) for k in range(8)]
    jumped = [r for k, r in at_b if r.filter_state == 'tracking'
              and np.linalg.norm(r.filtered.position_enu_m[:2] - truth[k][:2]) < 5.0]
    assert len(jumped) >= 2, [(r.filter_state, r.place_index) for _, r in at_b]
    for result in jumped:   # A's verification is no licence for B: no fix, and why
        assert result.pose_source == 'filter' and not result.ok
        assert result.reason.startswith('filter tracking, but PnP verification void: its '
                                        'estimate jumped ')
        assert 'no fix until PnP verifies the new place' in result.reason
    verified = localizer.localize(frames[8], stamp_s=next(stamps))
    assert verified.ok and verified.pose_source == 'pnp'
    after = blurred_at(9)   # B verified: the filter's estimate is a fix again
    assert after.ok and after.pose_source == 'filter', after.reason


@pytest.mark.parametrize('min_frame_evidence', [float('-inf'), 0.2])
def test_a_pnp_pose_off_the_track_voids_its_verification_until_the_filter_reaches_it(
        tiny_map, tiny_world, embedder, min_frame_evidence):
    map_ = load_map(tiny_map)
    localizer = Localizer(map_, embedder=embedder,
                          tracking=TrackingConfig(min_frame_evidence=min_frame_evidence))
    frames = [frame for frame, _, _ in _frames(tiny_world, 'map_day')]
    truth = map_.records.position_enu_m
    stamps = iter(np.arange(40) * 0.2)
    for k in range(12, 24):              # track A, verified by PnP
        result = localizer.localize(frames[k], stamp_s=next(stamps))
    assert result.ok and result.pose_source == 'pnp'
    # kidnapped to B (>= 32 m from A): PnP places the first frame there while the filter is
    # still on A
    first = localizer.localize(frames[2], stamp_s=next(stamps))
    assert first.filter_state == 'tracking'
    assert np.linalg.norm(first.filtered.position_enu_m[:2] - truth[2][:2]) > 15.0
    if min_frame_evidence == float('-inf'):   # the filter claims A: neither is published
        assert not first.ok and first.pose_source == 'filter'
        assert first.refinement.startswith('PnP pose ') and 'until they agree' in \
            first.refinement
        assert 'PnP placed a frame ' in first.reason and 'verification void' in first.reason
    else:   # the frame contradicts the filter (the gate): PnP's pose of B is the fix
        assert first.ok and first.pose_source == 'pnp', first.reason
        assert np.linalg.norm(first.position_enu_m[:2] - truth[2][:2]) < 1.0
    # then PnP is blind; once the filter reaches B, the remembered PnP pose verifies it
    after = [localizer.track(np.asarray(map_.index.descriptors[k]), stamp_s=next(stamps),
                             frame=cv2.GaussianBlur(frames[k], (0, 0), 4)) for k in (3, 4, 5)]
    assert all(r.pose_source == 'filter' for r in after)
    at_b = [r for k, r in zip((3, 4, 5), after)
            if np.linalg.norm(r.filtered.position_enu_m[:2] - truth[k][:2]) < 5.0]
    assert at_b and at_b[-1].ok, [(r.ok, r.reason) for r in after]
    wrong = [r for k, r in zip((3, 4, 5), after)
             if r.ok and np.linalg.norm(r.position_enu_m[:2] - truth[k][:2]) > 5.0]
    assert not wrong, [r.reason for r in wrong]


def test_the_refined_covariance_grows_as_the_inliers_get_few(tiny_map, tiny_world):
    from vl_attention.config import ConfigError
    from vl_attention.geometry.pnp import solve_pnp
    from vl_attention.geometry.local_features import match_features, to_gray
    from vl_attention.localization.refinement import RefinementConfig, Refiner
    map_ = load_map(tiny_map)
    refiner = Refiner(map_.local_features, RefinementConfig(covariance_scale=2.0,
                                                            covariance_inliers=30.0))
    assert refiner.variance_factor(30) == pytest.approx(4.0)    # 2 x (1 + 30 / 30)
    assert refiner.variance_factor(10) == pytest.approx(8.0)    # 2 x (1 + 30 / 10)
    frame = next(f for f, _, k in _frames(tiny_world, 'map_day') if k == 4)
    pose = refiner.refine(frame, [4])
    assert pose.ok, pose.reason
    query = refiner.extractor(to_gray(frame))   # the map's own resolution: no resize
    descriptors, points = map_.local_features.image_points(4)
    matches = match_features(query.descriptors, descriptors, norm=refiner.extractor.norm,
                             ratio_test=refiner.config.ratio_test)
    first_order = solve_pnp(points[matches[:, 1]], query.keypoints_px[matches[:, 0]],
                            map_.local_features.camera, refiner.config.pnp)
    assert first_order.inliers == pose.inliers
    np.testing.assert_allclose(pose.covariance,
                               first_order.covariance * 2.0 * (1 + 30.0 / pose.inliers),
                               rtol=1e-6)
    with pytest.raises(ConfigError, match='covariance_inliers'):
        RefinementConfig(covariance_inliers=-1.0)


@pytest.mark.parametrize('min_frame_evidence', [0.2, float('-inf')])
def test_a_frame_that_contradicts_the_filter_withholds_its_estimate(tiny_map, tiny_world,
                                                                    embedder, min_frame_evidence):
    map_ = load_map(tiny_map)
    localizer = Localizer(map_, embedder=embedder,
                          tracking=TrackingConfig(min_frame_evidence=min_frame_evidence))
    frames = [frame for frame, _, _ in _frames(tiny_world, 'map_day')]
    truth = map_.records.position_enu_m
    for k in range(12, 24):              # track A, verified by PnP
        result = localizer.localize(frames[k], stamp_s=0.2 * k)
    assert result.ok and result.pose_source == 'pnp'
    # kidnapped 0.2 s later to place 2 (>= 40 m back): retrieval is sure of it, PnP blind
    kidnapped = localizer.track(np.asarray(map_.index.descriptors[2]), stamp_s=0.2 * 24,
                                frame=cv2.GaussianBlur(frames[2], (0, 0), 4))
    assert kidnapped.filtered.filter_state == 'tracking'
    # the filter still follows A (the gate does not change the filter, only what is published)
    assert np.linalg.norm(kidnapped.filtered.position_enu_m[:2] - truth[2][:2]) > 15.0
    if min_frame_evidence > 0:   # the frame is less likely under the belief than uniform
        assert not kidnapped.ok
        assert kidnapped.reason.startswith('filter tracking, but this frame contradicts its '
                                           'estimate (log Bayes factor -'), kidnapped.reason
    else:                        # without the gate that old track is published, far off
        assert kidnapped.ok and kidnapped.pose_source == 'filter'

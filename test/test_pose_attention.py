"""Joint spatial + layer attention RNN head (Joseph et al., BMVC 2019) and Kendall's pose loss."""

import dataclasses
import io
import json
import math

import numpy as np
import onnxruntime
import pytest
import torch
from scipy.spatial.transform import Rotation
import torch.nn.functional as F

from vl_attention.config import ConfigError
from vl_attention.engine.backends import create_backend
from vl_attention.engine.card_builder import make_model_card
from vl_attention.engine.embedder import Embedder
from vl_attention.engine.export import CARD_FILE, export_onnx, ONNX_FILE, read_export
from vl_attention.engine.model_card import ModelCard
from vl_attention.geo import enu_to_geodetic, GeodeticOrigin
from vl_attention.localization import Localizer, LocalizerConfig, TrackingConfig
from vl_attention.mapping import Map, MapIndex, MapManifest
from vl_attention.mapping.records import records_from_columns
from vl_attention.models import AGGREGATORS, build_model, load_model_config
from vl_attention.models.pose_attention import adaptive_average_pool, pose_errors_from_poses, \
    pose_loss_terms, pose_origin_m, PoseAttention, PoseLoss, PoseOutputs, set_pose_origin

CHANNELS = {'shallow': 16, 'middle': 24, 'deep': 32}
# strides 8/16/32 of a 96x128 image, and of an odd size (ceil-mode pooling)
GRIDS = {'even': [(12, 16), (6, 8), (3, 4)], 'odd': [(13, 17), (7, 9), (4, 5)]}


def _head(**options):
    torch.manual_seed(0)
    options = {'width': 32, 'hidden_size': 32, 'attention_dim': 16, **options}
    return AGGREGATORS.create('pose_attention', in_channels=dict(CHANNELS), **options)


def _features(batch=2, grids='even', seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {tap: torch.randn(batch, channels, *size, generator=generator)
            for (tap, channels), size in zip(CHANNELS.items(), GRIDS[grids])}


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
@pytest.mark.parametrize('steps', [1, 3])
def test_attention_weights_are_distributions_per_step(cell, steps):
    output = _head(cell=cell, steps=steps)(_features(grids='odd'))
    layer_weights, spatial = output.attention['layer_weights'], output.attention['spatial']
    assert layer_weights.shape == (2, steps, len(CHANNELS))
    assert spatial.shape == (2, steps, 4, 5)     # the coarsest layer's grid
    assert output.extras['contexts'].shape == (2, steps, 32)
    assert float(layer_weights.detach().min()) >= 0
    assert float(layer_weights.detach().max()) <= 1
    assert float(spatial.detach().min()) >= 0
    torch.testing.assert_close(layer_weights.sum(-1), torch.ones(2, steps))
    torch.testing.assert_close(spatial.sum((-2, -1)), torch.ones(2, steps))


def test_recurrence_moves_the_attention_between_steps():
    attention = _head(steps=3)(_features()).attention
    assert not torch.allclose(attention['layer_weights'][:, 0], attention['layer_weights'][:, 1])
    assert not torch.allclose(attention['spatial'][:, 0], attention['spatial'][:, 1])


def test_uniform_scores_give_the_mean_feature_as_context():
    head = _head(steps=2)
    with torch.no_grad():
        head.layer_attention.score.weight.zero_()
        head.spatial_attention.score.weight.zero_()
    features = _features()
    output = head(features)
    torch.testing.assert_close(output.attention['layer_weights'],
                               torch.full((2, 2, 3), 1 / 3))
    torch.testing.assert_close(output.attention['spatial'], torch.full((2, 2, 3, 4), 1 / 12))
    # with uniform weights: context = mean over layers and positions of the projected maps
    projected = [projection(features[tap]).mean((-2, -1))
                 for tap, projection in zip(head.taps, head.projections)]
    expected = torch.stack(projected).mean(0)
    torch.testing.assert_close(output.extras['contexts'][:, 0], expected)
    torch.testing.assert_close(output.extras['contexts'][:, 1], expected)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_pose_descriptor_and_logits(cell):
    head = _head(cell=cell, n_classes=5, descriptor_dim=48)
    with torch.no_grad():     # make the raw quaternions have w < 0 so the sign fix must act
        head.orientation.bias.copy_(torch.tensor([-1.0, 0.3, -0.2, 0.1]))
        raw_w = head.orientation(torch.zeros(1, head.orientation.in_features))[0, 0]
    assert raw_w < 0
    output = head(_features(batch=3))
    quaternion = output.pose[:, 3:]
    assert output.pose.shape == (3, 7)
    torch.testing.assert_close(quaternion.norm(dim=-1), torch.ones(3))
    assert bool((quaternion[:, 0] >= 0).all())
    torch.testing.assert_close(output.descriptor.norm(dim=-1), torch.ones(3))
    assert output.descriptor.shape == (3, 48)
    assert output.logits.shape == (3, 5)
    assert _head()(_features()).logits is None


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_gradients_reach_every_parameter(cell):
    head = _head(cell=cell, n_classes=4)
    output = head(_features())
    loss = (output.descriptor[:, 0].sum() + output.pose.square().sum()
            + output.logits.square().sum())
    loss.backward()
    attention = [name for name, _ in head.named_parameters() if 'attention' in name]
    assert {name.split('.')[0] for name in attention} == {'layer_attention',
                                                          'spatial_attention'}
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, name


def test_pooling_matches_adaptive_avg_pool():
    features = torch.randn(2, 5, 13, 17)
    for height, width in [(4, 5), (7, 9), (13, 17), (1, 1)]:
        torch.testing.assert_close(adaptive_average_pool(features, height, width),
                                   F.adaptive_avg_pool2d(features, (height, width)))


def test_bad_options_and_inputs_are_explained():
    with pytest.raises(ValueError, match=r"cell must be one of \['gru', 'lstm'\]"):
        _head(cell='rnn')
    with pytest.raises(ValueError, match='steps >= 1'):
        _head(steps=0)
    with pytest.raises(ValueError, match='multi-level head'):
        PoseAttention(in_channels=256)
    features = _features()
    del features['middle']
    with pytest.raises(ValueError, match=r"missing \['middle'\]"):
        _head()(features)


def _poses(positions, quaternions_wxyz):
    return torch.cat([torch.tensor(positions), torch.tensor(quaternions_wxyz)], dim=-1)


def test_pose_loss_hand_computed():
    target = _poses([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], [[0.6, 0.8, 0.0, 0.0]] * 2)
    # unnormalised predicted quaternions; the second is the first's negative
    predicted = _poses([[1.5, 1.0, 3.0], [0.0, 0.0, 0.0]],
                       [[3.0, 0.0, 4.0, 0.0], [-3.0, 0.0, -4.0, 0.0]])
    loss = PoseLoss(beta_init=(0.5, -1.0))(predicted, target)
    # L_x = mean(0.5 + 1 + 0, 1 + 2 + 3) = 3.75; q_hat / |q_hat| = +-(0.6, 0, 0.8, 0) and
    # min(|q - q_hat|_1, |q + q_hat|_1) = |(0, 0.8, -0.8, 0)|_1 = 1.6 for both
    expected = 3.75 * math.exp(-0.5) + 0.5 + 1.6 * math.exp(1.0) - 1.0
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_pose_loss_ignores_quaternion_sign():
    generator = torch.Generator().manual_seed(3)
    predicted = torch.randn(6, 7, generator=generator)
    target = torch.cat([torch.randn(6, 3, generator=generator),
                        F.normalize(torch.randn(6, 4, generator=generator), dim=-1)], dim=-1)
    flipped = target.clone()
    flipped[:, 3:] *= -1
    loss = PoseLoss()
    torch.testing.assert_close(loss(predicted, target), loss(predicted, flipped))
    assert float(pose_loss_terms(predicted, target)[1]) > 0


def test_pose_loss_weights_learn_the_log_of_each_error():
    loss = PoseLoss()
    assert (float(loss.s_x), float(loss.s_q)) == (0.0, -3.0)
    predicted = _poses([[2.0, 0.0, 0.0]], [[0.0, 1.0, 0.0, 0.0]])
    target = _poses([[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]])
    loss(predicted, target).backward()
    assert float(loss.s_x.grad) != 0 and float(loss.s_q.grad) != 0
    # dL/ds = 1 - L_term exp(-s) vanishes at s = log(L_term) (Kendall et al. 2017)
    optimiser = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(1000):
        optimiser.zero_grad()
        loss(predicted, target).backward()
        optimiser.step()
    position_l1, rotation_l1 = pose_loss_terms(predicted, target)
    assert float(loss.s_x) == pytest.approx(math.log(float(position_l1)), abs=0.02)
    assert float(loss.s_q) == pytest.approx(math.log(float(rotation_l1)), abs=0.02)
    fixed = PoseLoss(learn_weights=False)
    assert not any(parameter.requires_grad for parameter in fixed.parameters())
    with pytest.raises(ValueError, match='B, 7'):
        loss(predicted[:, :6], target[:, :6])


def test_head_fits_a_small_pose_set():
    generator = torch.Generator().manual_seed(5)
    features = _features(batch=12, seed=7)
    quaternions = F.normalize(torch.randn(12, 4, generator=generator), dim=-1)
    targets = torch.cat([4 * torch.randn(12, 3, generator=generator),
                         torch.where(quaternions[:, :1] < 0, -quaternions, quaternions)], -1)
    head, loss = _head(), PoseLoss()
    optimiser = torch.optim.Adam(list(head.parameters()) + list(loss.parameters()), lr=1e-2)
    with torch.no_grad():
        before = pose_loss_terms(head(features).pose, targets)
        position_before, rotation_before = pose_errors_from_poses(head(features).pose, targets)
    for _ in range(60):
        optimiser.zero_grad()
        loss(head(features).pose, targets).backward()
        optimiser.step()
    with torch.no_grad():
        after = pose_loss_terms(head(features).pose, targets)
        position_after, rotation_after = pose_errors_from_poses(head(features).pose, targets)
    # measured over seeds 5-7: L1 terms fall 9x / 35x, median errors 6.4 m -> 0.5 m, 107 -> 3 deg
    assert float(after[0]) < 0.25 * float(before[0])
    assert float(after[1]) < 0.25 * float(before[1])
    assert np.median(position_after) < 0.25 * np.median(position_before)
    assert np.median(rotation_after) < 0.25 * np.median(rotation_before)


def test_pose_errors_in_metres_and_degrees():
    half = math.sqrt(0.5)
    predicted = _poses([[3.0, 4.0, 0.0]], [[half, 0.0, 0.0, half]])    # 90 deg about z
    true = _poses([[0.0, 0.0, 0.0]], [[half, half, 0.0, 0.0]])         # 90 deg about x
    position_m, rotation_deg = pose_errors_from_poses(predicted, true)
    assert position_m[0] == pytest.approx(5.0)
    assert rotation_deg[0] == pytest.approx(120.0)


def _onnx_outputs(module, inputs, names):
    buffer = io.BytesIO()
    input_names = [f'input{index}' for index in range(len(inputs))]
    torch.onnx.export(module, tuple(inputs), buffer, dynamo=False, opset_version=17,
                      input_names=input_names, output_names=names)
    session = onnxruntime.InferenceSession(buffer.getvalue(),
                                           providers=['CPUExecutionProvider'])
    return session.run(None, {name: x.numpy() for name, x in zip(input_names, inputs)})


class _PoseExport(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, shallow, middle, deep):
        output = self.head({'shallow': shallow, 'middle': middle, 'deep': deep})
        return (output.descriptor, output.pose, output.attention['layer_weights'],
                output.attention['spatial'])


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_head_onnx_parity_with_pose_and_attention(cell):
    wrapper = _PoseExport(_head(cell=cell, steps=3)).eval()
    inputs = list(_features(grids='odd').values())
    names = ['descriptors', 'pose', 'layer_weights', 'spatial']
    with torch.no_grad():
        expected = wrapper(*inputs)
    for name, reference, result in zip(names, expected, _onnx_outputs(wrapper, inputs, names)):
        assert np.abs(reference.numpy() - result).max() < 1e-4, name


def _preset_model(name, height=96, width=128):
    config = load_model_config(name)
    torch.manual_seed(0)
    return build_model(dataclasses.replace(config, input_height=height, input_width=width))


@pytest.mark.parametrize('name', ['pose_attention_resnet18', 'pose_attention_googlenet'])
def test_presets_build_and_regress_poses(name):
    model = _preset_model(name)
    with torch.no_grad():
        output = model.outputs(torch.randn(2, 3, 96, 128))
    assert output.descriptor.shape == (2, 256)
    assert output.pose.shape == (2, 7)
    assert output.attention['layer_weights'].shape == (2, 4, 3)
    assert output.attention['spatial'].shape == (2, 4, 3, 4)


def test_preset_descriptor_onnx_parity():
    model = _preset_model('pose_attention_resnet18', 100, 130).eval()
    images = torch.randn(1, 3, 100, 130)
    with torch.no_grad():
        expected = model(images)
    (descriptors,) = _onnx_outputs(model, [images], ['descriptors'])
    assert descriptors.shape == (1, 256)
    assert np.abs(expected.numpy() - descriptors).max() < 1e-4


# ---- the pose as an exported output -----------------------------------------------------------

ORIGIN_M = (100.0, -50.0, 7.0)


def _pose_model_with_known_pose():
    """Build a 96x128 ResNet-18 pose preset whose head outputs one hand-set pose.

    The position layer outputs its bias (1, 2, 3); the orientation layer its
    bias (w, x, y, z) = (-1, 2, 0, 2), i.e. (-1, 2, 0, 2) / 3, flipped to w >= 0.
    """
    model = _preset_model('pose_attention_resnet18').eval()
    head = model.aggregator
    with torch.no_grad():
        head.position.weight.zero_()
        head.position.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
        head.orientation.weight.zero_()
        head.orientation.bias.copy_(torch.tensor([-1.0, 2.0, 0.0, 2.0]))
    return set_pose_origin(model, ORIGIN_M)


EXPECTED_XYZW = np.array([-2.0, 0.0, -2.0, 1.0]) / 3.0


@pytest.fixture(scope='module')
def pose_export(tmp_path_factory):
    model = _pose_model_with_known_pose()
    config = dataclasses.replace(load_model_config('pose_attention_resnet18'),
                                 input_height=96, input_width=128)
    card = make_model_card(config, model)
    out = export_onnx(model, card, tmp_path_factory.mktemp('pose_export'))
    return model, out


def test_pose_outputs_are_the_head_pose_reordered_to_xyzw():
    model = _pose_model_with_known_pose()
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        descriptors, position_m, orientation_xyzw = PoseOutputs(model)(images)
        output = model.outputs(images)
    torch.testing.assert_close(descriptors, output.descriptor)
    np.testing.assert_allclose(position_m.numpy(), [[1.0, 2.0, 3.0]] * 2, atol=1e-6)
    np.testing.assert_allclose(orientation_xyzw.numpy(), [EXPECTED_XYZW] * 2, atol=1e-6)
    np.testing.assert_array_equal(pose_origin_m(model), ORIGIN_M)


def test_export_has_pose_outputs_matching_torch_and_a_card_entry(pose_export):
    model, export_dir = pose_export
    card = read_export(export_dir)
    assert card.outputs == ('descriptors', 'position_m', 'orientation_xyzw') and card.has_pose
    assert card.pose_origin_m == ORIGIN_M
    assert 'map frame of the training data' in card.pose_frame
    session = onnxruntime.InferenceSession(str(export_dir / ONNX_FILE),
                                           providers=['CPUExecutionProvider'])
    assert [output.name for output in session.get_outputs()] == list(card.outputs)
    # the descriptors depend on the image; the hand-set pose does not (next test: one that does)
    images = torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = [array.numpy() for array in PoseOutputs(model)(images)]
    results = session.run(None, {'images': images.numpy()})
    for name, reference, result in zip(card.outputs, expected, results):
        assert result.shape == reference.shape, name
        assert np.abs(reference - result).max() < 1e-4, name
    np.testing.assert_allclose(results[2], [EXPECTED_XYZW] * 3, atol=1e-5)


def test_trained_like_pose_head_parity_on_every_cpu_backend(tmp_path):
    # a head with non-zero weights: the pose depends on the image, on both backends alike
    model = set_pose_origin(_preset_model('pose_attention_resnet18'), ORIGIN_M).eval()
    config = dataclasses.replace(load_model_config('pose_attention_resnet18'),
                                 input_height=96, input_width=128)
    card = make_model_card(config, model)
    export_onnx(model, card, tmp_path)
    batch = torch.randn(4, 3, 96, 128, generator=torch.Generator().manual_seed(9)).numpy()
    ort = create_backend('onnxruntime-cpu', model=model, onnx_path=tmp_path / ONNX_FILE)
    eager = create_backend('torch-cpu', model=model, onnx_path=None)
    ort_outputs, torch_outputs = ort.run_outputs(batch), eager.run_outputs(batch)
    assert list(ort_outputs) == list(torch_outputs) == list(card.outputs)
    for name in card.outputs:
        assert np.abs(ort_outputs[name] - torch_outputs[name]).max() < 1e-4, name
    assert np.ptp(torch_outputs['position_m'], axis=0).max() > 1e-4   # image-dependent
    quaternions = torch_outputs['orientation_xyzw']
    np.testing.assert_allclose(np.linalg.norm(quaternions, axis=1), 1.0, atol=1e-5)
    assert (quaternions[:, 3] >= 0).all()
    np.testing.assert_array_equal(ort.run(batch), ort_outputs['descriptors'])


def test_embed_with_pose_returns_the_map_frame_pose(pose_export):
    model, export_dir = pose_export
    card = read_export(export_dir)
    frames = [np.full((120, 160, 3), value, np.uint8) for value in (30, 200)]
    for backend in (create_backend('onnxruntime-cpu', model=None,
                                   onnx_path=export_dir / ONNX_FILE),
                    create_backend('torch-cpu', model=model, onnx_path=None)):
        embedder = Embedder(backend, card)
        descriptors, position_m, orientation_xyzw = embedder.embed_with_pose(frames)
        # hand-computed: head bias (1, 2, 3) + origin (100, -50, 7)
        np.testing.assert_allclose(position_m, [[101.0, -48.0, 10.0]] * 2, atol=1e-5)
        np.testing.assert_allclose(orientation_xyzw, [EXPECTED_XYZW] * 2, atol=1e-5)
        np.testing.assert_allclose(descriptors, embedder.embed(frames), atol=1e-5)
        assert descriptors.dtype == np.float32 and position_m.dtype == np.float64
        empty = embedder.embed_with_pose([])
        assert [array.shape for array in empty] == [(0, 256), (0, 3), (0, 4)]


def test_models_without_a_pose_head_say_so(tmp_path):
    config = dataclasses.replace(load_model_config('resnet18_gem'), input_height=64,
                                 input_width=64)
    model = build_model(config)
    card = make_model_card(config, model)
    assert card.outputs == ('descriptors',) and not card.has_pose and card.pose_frame == ''
    export_onnx(model, card, tmp_path)
    backend = create_backend('onnxruntime-cpu', model=None, onnx_path=tmp_path / ONNX_FILE)
    batch = np.zeros((1, 3, 64, 64), np.float32)
    assert list(backend.run_outputs(batch)) == ['descriptors']
    embedder = Embedder(backend, read_export(tmp_path))
    with pytest.raises(ConfigError, match='model resnet18_gem has no pose output; pose_source '
                                          'regression needs a pose_attention preset'):
        embedder.embed_with_pose([np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match='has no pose_attention head'):
        set_pose_origin(model, ORIGIN_M)


def test_cards_and_weights_from_before_the_pose_outputs_still_load(pose_export):
    _, export_dir = pose_export
    values = json.loads((export_dir / CARD_FILE).read_text())
    for key in ('outputs', 'pose_frame', 'pose_origin_m'):
        del values[key]
    old = ModelCard.from_json(json.dumps(values))
    assert old.outputs == ('descriptors',) and not old.has_pose and old.pose_origin_m == ()
    model = _preset_model('pose_attention_resnet18')
    state = {key: value for key, value in set_pose_origin(model, ORIGIN_M).state_dict().items()
             if not key.endswith('pose_origin_m')}
    model.load_state_dict(state)     # strict: the missing origin defaults to zero
    np.testing.assert_array_equal(pose_origin_m(model), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match='3 finite metres'):
        set_pose_origin(model, [1.0, float('nan'), 0.0])


def _map_of(embedder, frames, positions_enu_m):
    """Build a map of ``frames`` at ENU positions (camera facing north) with ``embedder``."""
    origin = GeodeticOrigin(47.0, 8.0, 400.0)
    positions = np.asarray(positions_enu_m, np.float64)
    latitude, longitude, altitude = enu_to_geodetic(positions, origin)
    records = records_from_columns([f'{i}.png' for i in range(len(frames))],
                                   np.arange(len(frames)), latitude, longitude, altitude,
                                   np.tile([0.0, 0.0, 0.0, 1.0], (len(frames), 1)), origin)
    descriptors = embedder.embed(frames)
    index = MapIndex.create('flat_ip', descriptors.shape[1])
    index.add(descriptors)
    manifest = MapManifest(model_name=embedder.card.model_name,
                           model_fingerprint=embedder.fingerprint, count=len(frames),
                           descriptor_dim=descriptors.shape[1], geodetic_origin=origin)
    return Map(manifest, index, records)


def _noise_frames(count, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(count)]


def test_localizer_publishes_the_regressed_pose_gated_by_retrieval(pose_export):
    _, export_dir = pose_export
    embedder = Embedder(create_backend('onnxruntime-cpu', model=None,
                                       onnx_path=export_dir / ONNX_FILE), read_export(export_dir))
    frames = _noise_frames(3)
    # the head regresses (101, -48, 10) for every image (hand-set, see pose_export)
    map_ = _map_of(embedder, frames, [[100.0, -48.0, 10.0], [0.0, 0.0, 0.0], [400.0, 300.0, 0.0]])
    config = LocalizerConfig(top_k=1, candidates=3, min_confidence=0.0)
    tracking = TrackingConfig(use_filter=False, refine=False, pose_source='regression')
    localizer = Localizer(map_, embedder=embedder, config=config, tracking=tracking)
    near = localizer.localize(frames[0])
    retrieval = Localizer(map_, embedder=embedder, config=config).localize(frames[0])
    assert retrieval.pose_source == 'retrieval' and retrieval.place_index == -1
    np.testing.assert_allclose(retrieval.position_enu_m, [100.0, -48.0, 10.0], atol=1e-6)
    assert near.ok and near.pose_source == 'regression'
    np.testing.assert_allclose(near.position_enu_m, [101.0, -48.0, 10.0], atol=1e-5)
    np.testing.assert_allclose(near.orientation_xyzw, EXPECTED_XYZW, atol=1e-5)
    # covariance: the retrieval estimate's plus the outer product of the 1 m east offset
    expected = retrieval.position_covariance_m2 + np.diag([1.0, 0.0, 0.0])
    np.testing.assert_allclose(near.position_covariance_m2, expected, atol=1e-4)
    rotation = Rotation.from_quat(EXPECTED_XYZW).as_rotvec()
    np.testing.assert_allclose(near.orientation_covariance_rad2,
                               retrieval.orientation_covariance_rad2
                               + np.outer(rotation, rotation), atol=1e-4)
    assert near.single_frame is not None and near.single_frame.pose_source == 'retrieval'
    np.testing.assert_allclose(near.latitude_deg, 47.0 - 48.0 / 111_195.0, atol=1e-6)
    far = localizer.localize(frames[1])      # retrieval says (0, 0, 0): |(101, -48, 10)| = 112.3 m
    assert not far.ok and far.pose_source == 'regression'
    assert 'regressed pose 112.3 m from the retrieval estimate' in far.reason
    assert 'max_regression_offset_m 25' in far.reason


def test_regression_pose_source_needs_a_pose_head(tmp_path):
    config = dataclasses.replace(load_model_config('resnet18_gem'), input_height=64,
                                 input_width=64)
    model = build_model(config)
    export_onnx(model, make_model_card(config, model), tmp_path)
    embedder = Embedder(create_backend('onnxruntime-cpu', model=None,
                                       onnx_path=tmp_path / ONNX_FILE), read_export(tmp_path))
    map_ = _map_of(embedder, _noise_frames(2), [[0.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    with pytest.raises(ConfigError, match='pose_source regression needs a model with a pose '
                                          'head; resnet18_gem has none'):
        Localizer(map_, embedder=embedder,
                  tracking=TrackingConfig(use_filter=False, refine=False,
                                          pose_source='regression'))
    with pytest.raises(ConfigError, match="pose_source 'pose' is not one of"):
        TrackingConfig(pose_source='pose')

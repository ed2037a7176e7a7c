"""Hierarchical attention fusion (Yan et al., ICASSP 2021): levels, detector and HAFLoss."""

import csv
import dataclasses
import io

import cv2
import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from vl_attention.models import build_model, load_model_config, ModelOutput
from vl_attention.models.haf import HAFLoss, HierarchicalAttentionFusion, LEVELS, \
    weighted_local_distance
from vl_attention.training.loop import initialise_head
from vl_attention.training.sampling import ImageRows
from vl_attention.training.sources import load_dataset

CHANNELS = {'conv3': 8, 'conv4': 12, 'conv5': 16}
SIZES = {'conv3': (16, 20), 'conv4': (8, 10), 'conv5': (4, 5)}


def head(**options):
    torch.manual_seed(0)
    return HierarchicalAttentionFusion(in_channels=CHANNELS, local_dim=6, attention_hidden=4,
                                       **options)


def level_features(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {tap: torch.randn(batch, CHANNELS[tap], *SIZES[tap], generator=generator)
            for tap in CHANNELS}


def test_three_levels_are_in_attention_and_extras():
    with torch.no_grad():
        output = head().eval()(level_features())
    assert set(output.attention) == {f'{kind}_{tap}' for tap in CHANNELS
                                     for kind in ('spatial', 'detection')}
    for tap, level in zip(CHANNELS, LEVELS):
        assert output.attention[f'spatial_{tap}'].shape == (2, *SIZES[tap])
        local = output.extras[f'local_descriptors_{level}']
        assert local.shape == (2, 6, *SIZES[tap])
        torch.testing.assert_close(local.norm(dim=1), torch.ones(2, *SIZES[tap]))
    assert output.descriptor.shape == (2, 3 * 6)
    torch.testing.assert_close(output.descriptor.norm(dim=-1), torch.ones(2))


def test_detection_scores_are_the_normalised_channel_sum():
    model = head().eval()
    features = level_features()
    with torch.no_grad():
        output = model(features)
        for tap, level_head in zip(CHANNELS, model.levels):
            detection = output.attention[f'detection_{tap}']
            torch.testing.assert_close(detection.sum(dim=(-2, -1)), torch.ones(2))
            assert detection.min() >= 0
            channel_sum = F.relu(level_head.projection(features[tap])).sum(dim=1)
            expected = channel_sum / channel_sum.sum(dim=(-2, -1), keepdim=True)
            torch.testing.assert_close(detection, expected, atol=1e-6, rtol=1e-4)
            spatial = output.attention[f'spatial_{tap}']
            assert spatial.min() > 0
            torch.testing.assert_close(spatial.sum(dim=(-2, -1)), torch.ones(2))


def test_descriptor_is_the_weighted_concatenation_of_level_descriptors():
    model = head().eval()
    with torch.no_grad():
        model.level_weights.copy_(torch.tensor([-2.0, 0.0, 3.0]))
        output = model(level_features())
    weights = F.softplus(torch.tensor([-2.0, 0.0, 3.0]))
    parts = [weight * output.extras[f'global_{level}'] for weight, level in zip(weights, LEVELS)]
    torch.testing.assert_close(output.descriptor, F.normalize(torch.cat(parts, dim=-1), dim=-1))


def test_weighted_distance_matches_hand_computation_on_2x2_map():
    local_x = torch.zeros(1, 2, 2, 2)
    local_y = torch.zeros(1, 2, 2, 2)
    local_y[0, 0] = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    local_y[0, 1, 1, 1] = 3.0                    # per-cell distances [[1, 2], [0, 3]]
    detection_x = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    detection_y = torch.tensor([[[0.4, 0.3], [0.2, 0.1]]])
    # weights [[.04, .06], [.06, .04]] (sum .2): (.04 * 1 + .06 * 2 + .06 * 0 + .04 * 3) / .2
    distance = weighted_local_distance(local_x, detection_x, local_y, detection_y)
    torch.testing.assert_close(distance, torch.tensor([1.4]))
    with pytest.raises(ValueError, match='same shape'):
        weighted_local_distance(local_x, detection_x, local_y[..., :1], detection_y[..., :1])


def one_cell_output(points):
    """Haf-like output whose level descriptors are single cells at the given 2-D points."""
    extras = {}
    for level, level_points in zip(LEVELS, points):
        extras[f'local_descriptors_{level}'] = torch.tensor(level_points)[:, :, None, None]
        extras[f'detection_{level}'] = torch.ones(len(level_points), 1, 1)
    return ModelOutput(descriptor=torch.zeros(len(points[0]), 2), extras=extras)


@pytest.mark.parametrize('weights', [{}, {'w_low': 0.2, 'w_mid': 0.0, 'w_high': 1.5}])
def test_haf_loss_combines_hand_set_level_losses_as_configured(weights):
    anchor = one_cell_output([[[0.0, 0.0], [0.0, 0.0]]] * 3)
    # distances (positive, negative) per level and image; loss = max(0, 0.5 + dp - dn)
    positive = one_cell_output([[[0.4, 0.0], [0.1, 0.0]], [[0.1, 0.0], [0.0, 0.0]],
                                [[0.0, 0.0], [0.2, 0.0]]])
    negative = one_cell_output([[[0.0, 0.2], [0.0, 0.6]], [[0.0, 0.3], [0.0, 0.9]],
                                [[0.0, 1.0], [0.0, 0.5]]])
    expected = {'low': (0.7 + 0.0) / 2, 'mid': (0.3 + 0.0) / 2, 'high': (0.0 + 0.2) / 2}
    loss = HAFLoss(margin=0.5, **weights)
    total, losses = loss(anchor, positive, negative)
    for level in LEVELS:
        torch.testing.assert_close(losses[level], torch.tensor(expected[level]))
    configured = dict({'w_low': 0.1, 'w_mid': 0.4, 'w_high': 0.5}, **weights)
    hand_total = sum(configured[f'w_{level}'] * expected[level] for level in LEVELS)
    torch.testing.assert_close(total, torch.tensor(hand_total))


def test_haf_loss_trains_the_head_and_names_bad_input():
    model = head().train()
    triplet = [model(level_features(seed=seed)) for seed in (0, 1, 2)]
    total, losses = HAFLoss()(*triplet)
    assert set(losses) == set(LEVELS)
    total.backward(retain_graph=True)
    # the level losses train the coupled descriptor/detector, not the attention
    assert all(level.projection.weight.grad.abs().sum() > 0 for level in model.levels)
    assert all(level.spatial_attention[0].weight.grad is None for level in model.levels)
    total, losses = HAFLoss(w_global=1.0)(*triplet)
    assert losses['global'] > 0
    total.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    with pytest.raises(ValueError, match='local_descriptors'):
        HAFLoss()(ModelOutput(descriptor=torch.zeros(1, 2)), *triplet[1:])
    with pytest.raises(ValueError, match='level weights'):
        HAFLoss(w_low=-0.1)
    with pytest.raises(ValueError, match='exactly three levels'):
        HierarchicalAttentionFusion(in_channels={'a': 4, 'b': 8})


def test_presets_use_the_papers_levels():
    assert load_model_config('haf_vgg16').taps == ('conv3_2', 'conv4_3', 'conv5_3')
    assert load_model_config('haf_resnet18').taps == ('layer2', 'layer3', 'layer4')


def test_netvlad_level_pooling_weights_each_soft_assignment_by_the_spatial_attention():
    model = head(level_pooling='netvlad', clusters=3).eval()
    features = level_features()
    with torch.no_grad():
        output = model(features)
    assert output.descriptor.shape == (2, 3 * 3 * 6)
    torch.testing.assert_close(output.descriptor.norm(dim=-1), torch.ones(2))
    for tap, level, level_head in zip(CHANNELS, LEVELS, model.levels):
        local = output.extras[f'local_descriptors_{level}'].flatten(2)          # (B, D, N)
        attention = output.attention[f'spatial_{tap}'].flatten(1)               # (B, N)
        vlad = level_head.vlad
        logits = torch.einsum('kd,bdn->bkn', vlad.assignment.weight[:, :, 0, 0], local)
        assignment = (logits + vlad.assignment.bias[None, :, None]).softmax(dim=1)
        weights = assignment * attention[:, None]                               # (B, K, N)
        residuals = torch.stack([
            torch.einsum('bn,bdn->bd', weights[:, k], local - vlad.centroids[k][None, :, None])
            for k in range(3)], dim=1)                                          # (B, K, D)
        expected = F.normalize(F.normalize(residuals, dim=-1).flatten(1), dim=-1)
        torch.testing.assert_close(output.extras[f'global_{level}'], expected,
                                   atol=1e-5, rtol=1e-4)


def test_netvlad_levels_start_from_kmeans_of_their_projected_local_descriptors():
    model = head(level_pooling='netvlad', clusters=3)
    generator = torch.Generator().manual_seed(1)
    # per tap: 3 tight groups of raw features; projected and normalised they stay 3 groups
    means = {tap: 3.0 * torch.randn(3, channels, generator=generator)
             for tap, channels in CHANNELS.items()}
    samples = {tap: (means[tap].repeat(40, 1)
                     + 0.01 * torch.randn(120, CHANNELS[tap], generator=generator)).numpy()
               for tap in CHANNELS}
    centroids = model.initialise_centroids(samples)
    for tap, level_head in zip(CHANNELS, model.levels):
        with torch.no_grad():
            group_means = F.normalize(level_head.projection(means[tap][:, :, None, None])
                                      [:, :, 0, 0], dim=-1)
        distances = torch.cdist(torch.as_tensor(centroids[tap]), group_means)
        assert sorted(distances.argmin(dim=1).tolist()) == [0, 1, 2]
        assert distances.min(dim=1).values.max() < 0.05
        torch.testing.assert_close(level_head.vlad.centroids, torch.as_tensor(centroids[tap]))


def test_netvlad_level_pooling_names_bad_options_and_missing_taps():
    with pytest.raises(ValueError, match='level_pooling must be one of'):
        head(level_pooling='max')
    with pytest.raises(ValueError, match='clusters must be >= 1'):
        head(level_pooling='netvlad', clusters=0)
    with pytest.raises(ValueError, match='only level_pooling: netvlad has centroids'):
        head().initialise_centroids({})
    with pytest.raises(ValueError, match=r"missing \['conv5'\]"):
        head(level_pooling='netvlad').initialise_centroids(
            {tap: np.zeros((8, CHANNELS[tap]), np.float32) for tap in ('conv3', 'conv4')})


def _noise_images(root, count=24, height=64, width=80):
    """Write a folder + CSV dataset of random images 5 m apart; return it loaded."""
    (root / 'images').mkdir()
    generator = np.random.default_rng(0)
    with (root / 'poses.csv').open('w', newline='') as stream:
        writer = csv.writer(stream)
        writer.writerow(['image', 'stamp_ns', 'x_m', 'y_m', 'z_m'])
        for index in range(count):
            name = f'{index:03d}.png'
            cv2.imwrite(str(root / 'images' / name),
                        generator.integers(0, 256, (height, width, 3), dtype=np.uint8))
            writer.writerow([name, index, 5.0 * index, 0.0, 0.0])
    return load_dataset('folder_csv', root=root)


def _small_haf(level_pooling='netvlad', height=64, width=80):
    """haf_resnet18, small, random weights; NetVLAD levels have K = 4."""
    config = dataclasses.replace(
        load_model_config('haf_resnet18'), input_height=height, input_width=width,
        aggregator_options={'local_dim': 8, 'attention_hidden': 4,
                            'level_pooling': level_pooling, 'clusters': 4})
    torch.manual_seed(0)
    return build_model(config)


def test_netvlad_level_pooling_trains_the_attention_and_exports_to_onnx():
    model = _small_haf()
    assert model.descriptor_dim() == 3 * 4 * 8
    images = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    model.outputs(images).descriptor[:, :5].sum().backward()
    for name, parameter in model.aggregator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        expected = model(images).numpy()
    buffer = io.BytesIO()
    torch.onnx.export(model, (images[:1],), buffer, dynamo=False, opset_version=17,
                      input_names=['images'], output_names=['descriptors'],
                      dynamic_axes={'images': {0: 'batch'}, 'descriptors': {0: 'batch'}})
    session = onnxruntime.InferenceSession(buffer.getvalue(),
                                           providers=['CPUExecutionProvider'])
    actual = session.run(None, {'images': images.numpy()})[0]
    assert actual.shape == expected.shape == (2, 96)
    assert np.abs(actual - expected).max() < 1e-4


@pytest.mark.parametrize('level_pooling', ['attention', 'netvlad'])
def test_a_run_starts_netvlad_levels_from_kmeans_and_leaves_the_mean_form_alone(
        tmp_path, level_pooling):
    model = _small_haf(level_pooling)
    images = ImageRows(_noise_images(tmp_path), model.preprocessing, preload=True)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    initialise_head(model, images, device=torch.device('cpu'))
    changed = {name for name, value in model.state_dict().items()
               if not torch.equal(value, before[name])}
    if level_pooling == 'attention':
        assert changed == set()
        return
    levels = model.aggregator.levels
    assert changed == {f'aggregator.levels.{index}.vlad.{name}' for index in range(3)
                       for name in ('centroids', 'assignment.weight', 'assignment.bias')}
    for level in levels:
        # k-means centroids are means of unit local descriptors (the random start is not)
        assert level.vlad.centroids.norm(dim=1).max() <= 1.0 + 1e-5
        torch.testing.assert_close(level.vlad.assignment.weight[:, :, 0, 0],
                                   2.0 * level.vlad.alpha * level.vlad.centroids)

"""Hierarchical attention fusion (Yan et al., ICASSP 2021): levels, detector and HAFLoss."""

import pytest
import torch
import torch.nn.functional as F

from vl_attention.models import load_model_config, ModelOutput
from vl_attention.models.haf import HAFLoss, HierarchicalAttentionFusion, LEVELS, \
    weighted_local_distance

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

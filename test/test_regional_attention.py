"""Context-aware regional attention over R-MAC regions (issue 4, item 2)."""

from dataclasses import replace

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from vl_attention.config import frozen_mapping
from vl_attention.models import build_model, load_model_config
from vl_attention.models.regional_attention import RegionalAttention, rmac_regions
from vl_attention.models.weights import WeightsError
from vl_attention.training.config import LossSpec
from vl_attention.training.losses import LOSSES, make_loss


def _softplus(values):
    return np.log1p(np.exp(values))


def test_rmac_grid_counts_for_known_sizes():
    # square maps: l x l regions per scale; 4:3 maps (e.g. conv5 of a 768x1024 image,
    # 24x32) get one more along the long side: 2 + 6 + 12 = 20 (Tolias et al.)
    for height, width, counts in [(16, 16, (1, 4, 9)), (24, 32, (2, 6, 12)),
                                  (32, 24, (2, 6, 12)), (3, 4, (2, 6, 12))]:
        regions = rmac_regions(height, width, scales=3)
        sizes = [size for _, _, size in regions]
        short = min(height, width)
        expected_sizes = [2 * short // (level + 1) for level in (1, 2, 3)]
        assert sizes == [s for s, n in zip(expected_sizes, counts) for _ in range(n)]
        assert all(0 <= top and top + size <= height and 0 <= left and left + size <= width
                   for top, left, size in regions)
    assert len(rmac_regions(16, 16, scales=1)) == 1


def test_rmac_grid_positions_for_a_hand_derived_map():
    # 8x10: one extra column; side 8 at l=1, 5 at l=2 (2x3), 4 at l=3 (3x4)
    expected = [(0, 0, 8), (0, 2, 8)]
    expected += [(top, left, 5) for top in (0, 3) for left in (0, 2, 5)]
    expected += [(top, left, 4) for top in (0, 2, 4) for left in (0, 2, 4, 6)]
    assert rmac_regions(8, 10, scales=3) == expected
    boxes = RegionalAttention(in_channels=4).region_boxes(8, 10)
    np.testing.assert_array_equal(boxes[1], (0, 2, 8, 10))


def test_attention_weights_are_positive_with_one_per_region():
    torch.manual_seed(0)
    head = RegionalAttention(in_channels=16)
    output = head(torch.randn(2, 16, 6, 8))
    weights = output.attention['region_weights']
    assert weights.shape == (2, len(head.region_boxes(6, 8)))
    assert bool((weights > 0).all())
    with torch.no_grad():
        head.region_attention[2].bias.fill_(-30.0)         # softplus stays above zero
    assert bool((head(torch.randn(2, 16, 6, 8)).attention['region_weights'] > 0).all())
    assert RegionalAttention.fixed_input_size is True


def test_phi_matches_hand_computation():
    head = RegionalAttention(in_channels=2, hidden_dim=2)
    hidden_weight = np.array([[0.5, -1.0, 0.25, 2.0], [1.5, 0.0, -0.5, 1.0]])
    hidden_bias, output_weight, output_bias = np.array([0.1, -0.2]), np.array([[2.0, -1.0]]), 0.3
    with torch.no_grad():
        head.region_attention[0].weight.copy_(torch.tensor(hidden_weight))
        head.region_attention[0].bias.copy_(torch.tensor(hidden_bias))
        head.region_attention[2].weight.copy_(torch.tensor(output_weight))
        head.region_attention[2].bias.fill_(output_bias)
    region, global_feature = np.array([0.6, 0.8]), np.array([1.0, 0.0])
    context = np.concatenate([region, global_feature])
    expected = _softplus(output_weight @ np.tanh(hidden_weight @ context + hidden_bias)
                         + output_bias)
    phi = head.region_weights(torch.tensor(region[None, None], dtype=torch.float32),
                              torch.tensor(global_feature[None], dtype=torch.float32))
    np.testing.assert_allclose(phi.detach().numpy().ravel(), expected, rtol=1e-6)


def test_uniform_weights_give_sum_pooled_rmac():
    torch.manual_seed(1)
    head = RegionalAttention(in_channels=5)
    with torch.no_grad():
        head.region_attention[2].weight.zero_()
        head.region_attention[2].bias.fill_(0.7)
    features = torch.rand(2, 5, 7, 9)
    descriptor = head(features).descriptor.detach().numpy()
    array = features.numpy()
    for image in range(2):
        regional = [array[image, :, top:bottom, left:right].max(axis=(1, 2))
                    for top, left, bottom, right in head.region_boxes(7, 9)]
        total = sum(vector / np.linalg.norm(vector) for vector in regional)
        np.testing.assert_allclose(descriptor[image], total / np.linalg.norm(total), atol=1e-6)


def test_attention_parameters_get_gradients():
    torch.manual_seed(0)
    head = RegionalAttention(in_channels=8)
    (head(torch.rand(2, 8, 6, 8)).descriptor * torch.randn(2, 8)).sum().backward()
    for name, parameter in head.region_attention.named_parameters():
        assert float(parameter.grad.abs().sum()) > 0, name


@pytest.mark.parametrize('preset', [
    'effnet_lite0_regional_attention',
    pytest.param('resnet101_regional_attention', marks=pytest.mark.slow)])
def test_regional_preset_exports_at_a_fixed_size(preset, tmp_path):
    model = build_model(load_model_config(preset))
    images = torch.randn(1, 3, 96, 128)
    path = tmp_path / 'model.onnx'
    torch.onnx.export(model, (images,), str(path), dynamo=False, opset_version=17,
                      input_names=['images'], output_names=['descriptors'])
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    exported = session.run(None, {'images': images.numpy()})[0]
    with torch.no_grad():
        expected = model(images).numpy()
    assert expected.shape == (1, model.backbone.out_channels[model.taps[0]])
    assert float(np.abs(exported - expected).max()) < 1e-4


def test_global_feature_is_the_context():
    # the same region feature in two images with different global MACs gets different weights
    torch.manual_seed(2)
    head = RegionalAttention(in_channels=4, hidden_dim=8)
    region = F.normalize(torch.rand(1, 1, 4), dim=-1).expand(2, 1, 4)
    contexts = F.normalize(torch.rand(2, 4), dim=-1)
    weights = head.region_weights(region, contexts).detach()
    assert float((weights[0] - weights[1]).abs()) > 1e-4


def test_mean_context_feeds_average_pools_and_extras_carry_the_classifier_input():
    # the authors' code: Phi sees the raw average-pooled region and map; the weighted regions
    # stay max-pooled; extras = the weighted mean of raw region MACs and the map's average
    torch.manual_seed(4)
    head = RegionalAttention(in_channels=3, hidden_dim=5, context_pooling='mean')
    features = torch.rand(2, 3, 4, 6)
    output = head(features)
    boxes = head.region_boxes(4, 6).tolist()
    means = torch.stack([features[:, :, t:b, l:r].mean(dim=(-2, -1)) for t, l, b, r in boxes], 1)
    macs = torch.stack([features[:, :, t:b, l:r].amax(dim=(-2, -1)) for t, l, b, r in boxes], 1)
    expected_weights = head.region_weights(means, features.mean(dim=(-2, -1)))
    weights = output.attention['region_weights']
    torch.testing.assert_close(weights, expected_weights)
    max_weights = head.region_weights(F.normalize(macs, dim=-1),
                                      F.normalize(features.amax(dim=(-2, -1)), dim=-1))
    assert float((weights - max_weights).detach().abs().max()) > 1e-4
    regions = F.normalize(macs, dim=-1)
    descriptor = F.normalize((weights[..., None] * regions).sum(1), dim=-1)
    torch.testing.assert_close(output.descriptor, descriptor)
    torch.testing.assert_close(output.extras['weighted_region_mac'],
                               (weights[..., None] * macs).mean(dim=1))
    torch.testing.assert_close(output.extras['global_average'], features.mean(dim=(-2, -1)))
    with pytest.raises(ValueError, match='context_pooling must be one of'):
        RegionalAttention(in_channels=3, context_pooling='sum')


def _effnet_model(**options):
    # on the frozen trunk, as the regional-attention recipe trains it
    config = load_model_config('effnet_lite0_regional_attention')
    trunk = frozen_mapping({**config.backbone_options, 'freeze': True})
    return build_model(replace(config, input_height=96, input_width=128, backbone_options=trunk,
                               aggregator_options=frozen_mapping(options)))


def _with_extras(output, **extras):
    return replace(output, extras={**output.extras, **extras})


def test_imagenet_distillation_is_the_cross_entropy_against_the_trunks_own_prediction():
    torch.manual_seed(5)
    model = _effnet_model(scales=5, context_pooling='mean').eval()
    loss = make_loss(LossSpec(name='imagenet_distillation'), model)
    assert not loss.state_dict() and not list(loss.parameters())
    images = torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    output = model.outputs(images)
    total, parts = loss(output, None)
    classifier = model.backbone.imagenet_classifier()
    with torch.no_grad():
        target = F.softmax(classifier(output.extras['global_average']), -1)
        predicted = F.log_softmax(classifier(output.extras['weighted_region_mac']), -1)
    torch.testing.assert_close(total.detach(), -(target * predicted).sum(-1).mean())
    assert 0.0 <= float(parts['top1_agreement']) <= 1.0
    # predicting the target exactly costs its entropy, the least a cross-entropy can be
    exact = _with_extras(output, weighted_region_mac=output.extras['global_average'])
    entropy = -(target * target.log()).sum(-1).mean()
    torch.testing.assert_close(loss(exact, None)[0].detach(), entropy)
    assert float(total.detach()) > float(entropy)
    # the gradient reaches the attention network and nothing else (the trunk is frozen)
    model.zero_grad()
    total.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in model.aggregator.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())


def test_imagenet_distillation_bad_inputs_are_clear_errors():
    model = _effnet_model()
    loss = LOSSES.create('imagenet_distillation', model=model)
    output = model.outputs(torch.zeros(1, 3, 96, 128))
    with pytest.raises(ValueError, match=r'extras .*regional_attention.*missing'):
        loss(replace(output, extras={}), None)
    with pytest.raises(ValueError, match='classifier takes 1280 channels but the head pools 8'):
        loss(_with_extras(output, weighted_region_mac=torch.zeros(1, 8)), None)
    with pytest.raises(ValueError, match='temperature must be > 0'):
        LOSSES.create('imagenet_distillation', model=model, temperature=0)
    random_trunk = build_model(load_model_config('resnet101_regional_attention'))
    with pytest.raises(WeightsError, match='no ImageNet classifier'):
        LOSSES.create('imagenet_distillation', model=random_trunk)

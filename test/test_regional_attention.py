"""Context-aware regional attention over R-MAC regions and query expansion (issue 4, item 2)."""

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from vl_attention.mapping.index import MapIndex
from vl_attention.mapping.query_expansion import expand_queries, QueryExpansion, \
    search_expanded
from vl_attention.models import build_model, load_model_config
from vl_attention.models.regional_attention import RegionalAttention, rmac_regions


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


def _unit(*rows):
    rows = np.array(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# The query's true match (row 1) sits in a tight group of views (rows 1-3) but a
# distractor (row 0) is slightly closer to the query itself.
QUERY = _unit([1.0, 0.0, 0.0])
DATABASE = _unit([0.9, -0.436, 0.0], [0.85, 0.527, 0.0], [0.82, 0.57, 0.05], [0.8, 0.6, 0.0],
                 [0.0, 0.0, 1.0])
TRUE_MATCH = 1


def test_query_expansion_promotes_the_true_match():
    _, before = MapIndex.build(DATABASE, 'flat_ip').search(QUERY, 2)
    assert list(before[0]) == [0, TRUE_MATCH]
    for expansion in (QueryExpansion(top_n=3), QueryExpansion(top_n=3, alpha=3.0)):
        _, after = search_expanded(QUERY, DATABASE, 1, expansion)
        assert int(after[0, 0]) == TRUE_MATCH


def test_average_qe_is_mean_of_query_and_neighbours():
    expanded = expand_queries(QUERY, DATABASE, QueryExpansion(top_n=3))
    by_hand = QUERY[0] + DATABASE[[0, 1, 2]].sum(axis=0)
    np.testing.assert_allclose(expanded[0], by_hand / np.linalg.norm(by_hand), atol=1e-6)
    alpha_zero = expand_queries(QUERY, DATABASE, QueryExpansion(top_n=3, alpha=0.0))
    np.testing.assert_array_equal(alpha_zero, expanded)


def test_alpha_qe_weights_neighbours_by_similarity_power():
    expanded = expand_queries(QUERY, DATABASE, QueryExpansion(top_n=3, alpha=3.0))
    neighbours = DATABASE[[0, 1, 2]]
    by_hand = QUERY[0] + ((neighbours @ QUERY[0]) ** 3) @ neighbours
    np.testing.assert_allclose(expanded[0], by_hand / np.linalg.norm(by_hand), atol=1e-6)
    average = expand_queries(QUERY, DATABASE, QueryExpansion(top_n=3))
    assert float(np.abs(expanded - average).max()) > 1e-3


def test_query_expansion_on_a_map_index_and_bad_inputs():
    index = MapIndex.build(DATABASE, 'flat_ip')
    np.testing.assert_array_equal(search_expanded(QUERY, index, 3)[1],
                                  search_expanded(QUERY, DATABASE, 3)[1])
    index.descriptors = None
    with pytest.raises(ValueError, match='float descriptors'):
        expand_queries(QUERY, index)
    with pytest.raises(ValueError, match='do not fit 3-D'):
        expand_queries(np.ones((1, 4)), DATABASE)
    with pytest.raises(ValueError, match='top_n >= 1'):
        QueryExpansion(top_n=0)


def test_global_feature_is_the_context():
    # the same region feature in two images with different global MACs gets different weights
    torch.manual_seed(2)
    head = RegionalAttention(in_channels=4, hidden_dim=8)
    region = F.normalize(torch.rand(1, 1, 4), dim=-1).expand(2, 1, 4)
    contexts = F.normalize(torch.rand(2, 4), dim=-1)
    weights = head.region_weights(region, contexts).detach()
    assert float((weights[0] - weights[1]).abs()) > 1e-4

"""VPR heads on a truncated ResNet-18: GAP, GeM, NetVLAD, CRN (issue 4, item 1)."""

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from vl_attention.engine.preprocess import Normalization, Preprocessing
from vl_attention.models import build_model, load_model_config
from vl_attention.models.aggregators import GAP, GeM
from vl_attention.models.descriptor import DescriptorModel
from vl_attention.models.netvlad import CRN, NetVLAD, sample_local_features
from vl_attention.models.registry import BACKBONES

VPR_PRESETS = {'resnet18_gap': 256, 'resnet18_gem': 256, 'resnet18_netvlad': 64 * 256,
               'resnet18_crn': 64 * 256}


def _require_backbone(name):
    if name not in BACKBONES.names():
        pytest.skip(f'backbone {name!r} is not registered yet')


def _onnx_max_difference(model, images, path):
    torch.onnx.export(model.eval(), (images,), str(path), dynamo=False, opset_version=17,
                      input_names=['images'], output_names=['descriptors'])
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    exported = session.run(None, {'images': images.numpy()})[0]
    with torch.no_grad():
        expected = model(images).numpy()
    assert exported.shape == expected.shape
    return float(np.abs(exported - expected).max())


def test_gap_is_mean_of_unit_local_features():
    # positions (3, 4) and (0, 2) -> (0.6, 0.8) and (0, 1) -> mean (0.3, 0.9) -> / sqrt(0.9)
    features = torch.tensor([[[[3.0, 0.0]], [[4.0, 2.0]]]])
    descriptor = GAP(in_channels=2)(features)
    expected = torch.tensor([[0.3, 0.9]]) / np.sqrt(0.9)
    torch.testing.assert_close(descriptor, expected)
    plain_average = F.normalize(features.mean(dim=(-2, -1)), dim=-1)
    assert not torch.allclose(descriptor, plain_average, atol=1e-2)


def test_gem_with_p_one_is_average_pooling():
    features = torch.rand(2, 6, 5, 7) + 0.1
    pooled = GeM(in_channels=6, p=1.0)(features)
    torch.testing.assert_close(pooled, F.normalize(features.mean(dim=(-2, -1)), dim=-1))
    assert not GeM(in_channels=6).p.requires_grad


def test_learnable_gem_p_and_whitening_get_gradients():
    torch.manual_seed(0)
    head = GeM(in_channels=6, learn_p=True, whiten=True, out_dim=4)
    descriptor = head(torch.rand(3, 6, 5, 7) + 0.1)
    assert descriptor.shape == (3, 4)
    (descriptor * torch.randn(3, 4)).sum().backward()
    assert head.p.grad is not None and float(head.p.grad.abs()) > 0
    assert float(head.whitening.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match='whiten=True'):
        GeM(in_channels=6, out_dim=4)


def test_netvlad_descriptor_is_k_times_c_and_intra_normalised():
    torch.manual_seed(0)
    head = NetVLAD(in_channels=8, clusters=4)
    output = head(torch.randn(2, 8, 5, 6))
    assert output.descriptor.shape == (2, 4 * 8)
    assert output.attention['assignment'].shape == (2, 4, 5, 6)
    torch.testing.assert_close(output.attention['assignment'].sum(dim=1), torch.ones(2, 5, 6))
    # every cluster block had unit norm before the final L2 -> each is 1 / sqrt(K) after it
    block_norms = output.descriptor.view(2, 4, 8).norm(dim=-1)
    torch.testing.assert_close(block_norms, torch.full((2, 4), 0.5))


def _clustered_features(centroids, labels, noise, seed):
    generator = np.random.default_rng(seed)
    return centroids[labels] + noise * generator.standard_normal((len(labels),
                                                                  centroids.shape[1]))


def test_netvlad_with_large_alpha_is_hard_vlad():
    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((3, 5))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    labels = rng.integers(0, 3, size=4 * 6)
    features = _clustered_features(centroids, labels, 0.05, seed=2)         # (N, C)
    head = NetVLAD(in_channels=5, clusters=3, alpha=1000.0).set_centroids(centroids)
    feature_map = torch.tensor(features.T.reshape(1, 5, 4, 6), dtype=torch.float32)
    with torch.no_grad():
        output = head(feature_map)
    assignment = output.attention['assignment'][0].flatten(1)              # (K, N)
    np.testing.assert_array_equal(assignment.argmax(dim=0).numpy(), labels)
    assert float(assignment.max(dim=0).values.min()) > 0.999
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    residual_sums = np.stack([(unit[labels == k] - centroids[k]).sum(axis=0)
                              for k in range(3)])
    blocks = residual_sums / np.linalg.norm(residual_sums, axis=1, keepdims=True)
    expected = blocks.ravel() / np.linalg.norm(blocks)
    np.testing.assert_allclose(output.descriptor[0].detach().numpy(), expected, atol=1e-4)


def test_kmeans_initialisation_sets_paper_weights():
    rng = np.random.default_rng(3)
    true_centres = 4.0 * np.eye(4, 8)
    features = _clustered_features(true_centres, rng.integers(0, 4, size=400), 0.3, seed=4)
    head = NetVLAD(in_channels=8, clusters=4, alpha=10.0, normalize_input=False)
    centroids = head.initialise_centroids(features)
    distances = np.linalg.norm(true_centres[:, None] - centroids[None], axis=-1)
    assert distances.min(axis=1).max() < 0.2       # every true cluster centre was found
    torch.testing.assert_close(head.centroids.data, torch.from_numpy(centroids))
    torch.testing.assert_close(head.assignment.weight[:, :, 0, 0],
                               torch.from_numpy(2 * 10.0 * centroids))
    torch.testing.assert_close(head.assignment.bias,
                               torch.from_numpy(-10.0 * (centroids ** 2).sum(axis=1)))
    with pytest.raises(ValueError, match='at least 4 local features'):
        head.initialise_centroids(features[:3])


class _TinyBackbone(nn.Module):
    normalization = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                  interpolation='bilinear')
    default_tap = 'layer3'

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, kernel_size=4, stride=4)
        self.out_channels = {'layer3': 6}

    def forward(self, images):
        return {'layer3': self.conv(images)}


def test_sampled_local_features_come_from_the_head_tap():
    torch.manual_seed(0)
    head = NetVLAD(in_channels=6, clusters=4)
    preprocessing = Preprocessing.for_backbone(_TinyBackbone.normalization, input_height=32,
                                               input_width=32)
    model = DescriptorModel(_TinyBackbone(), head, taps=('layer3',), preprocessing=preprocessing)
    batches = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    samples = sample_local_features(model, batches, per_image=10, max_features=45)
    assert samples.shape == (45, 6)
    with torch.no_grad():
        all_local = torch.cat([model.backbone(images)['layer3'].flatten(2).transpose(1, 2)
                               .reshape(-1, 6) for images in batches]).numpy()
    nearest = np.abs(samples[:, None] - all_local[None]).max(axis=-1).min(axis=1)
    assert nearest.max() < 1e-6
    assert head.initialise_centroids(samples).shape == (4, 6)


def test_crn_mask_reweights_netvlad_aggregation():
    torch.manual_seed(0)
    crn = CRN(in_channels=8, clusters=4)
    features = torch.randn(2, 8, 7, 9)
    output = crn(features)
    assert output.attention['context'].shape == (2, 7, 9)
    plain = NetVLAD(in_channels=8, clusters=4)
    plain.load_state_dict({name: value for name, value in crn.state_dict().items()
                           if not name.startswith('context_attention')})
    plain_output = plain(features)
    torch.testing.assert_close(output.attention['assignment'],
                               plain_output.attention['assignment'])
    assert float((output.descriptor - plain_output.descriptor).abs().max()) > 1e-3
    with torch.no_grad():                        # mask forced to 1: CRN is the same NetVLAD
        crn.context_attention.accumulation.weight.zero_()
        crn.context_attention.accumulation.bias.fill_(1.0)
    forced = crn(features)
    torch.testing.assert_close(forced.attention['context'], torch.ones(2, 7, 9))
    torch.testing.assert_close(forced.descriptor, plain_output.descriptor)


def test_crn_context_attention_is_trained():
    torch.manual_seed(0)
    crn = CRN(in_channels=8, clusters=4)
    (crn(torch.randn(2, 8, 6, 8)).descriptor * torch.randn(2, 32)).sum().backward()
    for name, parameter in crn.context_attention.named_parameters():
        assert float(parameter.grad.abs().sum()) > 0, name


@pytest.mark.parametrize('preset', sorted(VPR_PRESETS))
def test_vpr_preset_builds_and_exports(preset, tmp_path):
    _require_backbone('resnet18')
    torch.manual_seed(0)
    model = build_model(load_model_config(preset))
    images = torch.randn(1, 3, 96, 128)
    output = model.outputs(images)
    assert output.descriptor.shape == (1, VPR_PRESETS[preset])
    torch.testing.assert_close(output.descriptor.norm(dim=-1), torch.ones(1))
    assert _onnx_max_difference(model, images, tmp_path / 'model.onnx') < 1e-4


def test_gem_preset_learns_p_and_whitens():
    _require_backbone('resnet18')
    head = build_model(load_model_config('resnet18_gem')).aggregator
    assert head.p.requires_grad and head.whitening is not None

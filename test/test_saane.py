"""SAANE (Seymour et al., BMVC 2019): shared channel attention, per-modality spatial attention."""

import pytest
import torch
import torch.nn.functional as F

from vl_attention.models.attention_blocks import ChannelAttention, SpatialAttention
from vl_attention.models.saane import IMAGENET_MEAN, IMAGENET_STD, SAANE, spatial_pyramid_pool
from vl_attention.models.weights import WeightsError

N_CLASSES = 5


def class_map_head(**options):
    torch.manual_seed(0)
    options = dict(dict(in_channels=16, channels=8, reduction=4, n_classes=N_CLASSES,
                        semantic_network='class_map'), **options)
    return SAANE(**options).eval()


def inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, 16, 6, 8, generator=generator)
    images = torch.randn(batch, 3, 96, 128, generator=generator)
    labels = torch.randint(0, N_CLASSES, (batch, 96, 128), generator=generator)
    return features, images, labels


def test_one_shared_channel_attention_and_two_different_spatial_maps():
    head = class_map_head()
    modules = list(head.modules())
    assert sum(isinstance(module, ChannelAttention) for module in modules) == 1
    spatial = [module for module in modules if isinstance(module, SpatialAttention)]
    assert len(spatial) == 2 and spatial[0] is not spatial[1]
    calls = []
    head.channel_attention.register_forward_hook(lambda module, args, out: calls.append(out))
    features, images, labels = inputs()
    with torch.no_grad():
        output = head(features, images=images, class_map=labels)
    assert len(calls) == 1
    torch.testing.assert_close(output.attention['channel'], calls[0])
    maps = output.attention
    assert maps['spatial_appearance'].shape == maps['spatial_semantic'].shape == (2, 6, 8)
    assert (maps['spatial_appearance'] - maps['spatial_semantic']).abs().max() > 1e-3


def test_descriptor_follows_the_fusion_equations():
    head = class_map_head(spp_levels=(1, 2))
    features, images, labels = inputs()
    with torch.no_grad():
        output = head(features, images=images, class_map=labels)
        appearance = head.appearance_projection(features)
        semantic = head.semantic_projection(output.extras['semantic_scores'])
        channel = output.attention['channel'][:, :, None, None]
        torch.testing.assert_close(channel[:, :, 0, 0],
                                   head.channel_attention(appearance + semantic))
        attended = (appearance * channel * output.attention['spatial_appearance'][:, None]
                    + semantic * channel * output.attention['spatial_semantic'][:, None])
    pooled = torch.cat([F.adaptive_max_pool2d(attended, level).flatten(1) for level in (1, 2)],
                       dim=1)
    torch.testing.assert_close(output.descriptor, F.normalize(pooled, dim=-1))
    torch.testing.assert_close(output.extras['scaled_descriptor'], 10.0 * output.descriptor)
    torch.testing.assert_close(output.descriptor.norm(dim=-1), torch.ones(2))


def test_class_map_labels_and_scores_agree_and_missing_map_is_named():
    head = class_map_head()
    features, images, labels = inputs()
    scores = F.one_hot(labels, N_CLASSES).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        from_labels = head(features, images=images, class_map=labels).descriptor
        from_scores = head(features, images=images, class_map=scores).descriptor
    torch.testing.assert_close(from_labels, from_scores)
    with pytest.raises(ValueError, match=r'class_map=labels_or_scores'):
        head(features, images=images)
    with pytest.raises(ValueError, match=r'\[0, 5\)'):
        head(features, images=images, class_map=labels + N_CLASSES)
    with pytest.raises(ValueError, match='n_classes=5'):
        head(features, images=images, class_map=scores[:, :3])
    with pytest.raises(ValueError, match='integer'):
        head(features, images=images, class_map=labels.float())


def test_semantic_stream_changes_the_descriptor():
    head = class_map_head()
    features, images, labels = inputs()
    with torch.no_grad():
        first = head(features, images=images, class_map=labels).descriptor
        again = head(features, images=images, class_map=labels).descriptor
        swapped = head(features, images=images, class_map=labels.flip(0)).descriptor
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert (first - swapped).abs().max(dim=-1).values.min() > 1e-4


@pytest.mark.parametrize('levels', [(1, 2, 4), (1, 3)])
@pytest.mark.parametrize('pooling', ['max', 'avg'])
def test_spatial_pyramid_pooling_size_and_cells(levels, pooling):
    head = class_map_head(spp_levels=levels, spp_pooling=pooling)
    features, images, labels = inputs()
    with torch.no_grad():
        descriptor = head(features, images=images, class_map=labels).descriptor
    assert descriptor.shape == (2, 8 * sum(level * level for level in levels))
    # 6 x 8 maps are not divisible by 4 or 3: the slices must match adaptive pooling's cells
    adaptive = F.adaptive_max_pool2d if pooling == 'max' else F.adaptive_avg_pool2d
    expected = torch.cat([adaptive(features, level).flatten(1) for level in levels], dim=1)
    torch.testing.assert_close(spatial_pyramid_pool(features, levels=levels, pooling=pooling),
                               expected)


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown semantic_network 'segformer'.*lraspp"):
        SAANE(in_channels=8, semantic_network='segformer')
    with pytest.raises(WeightsError, match="neither 'none' nor an existing file"):
        SAANE(in_channels=8, semantic_weights='coco')
    with pytest.raises(ValueError, match='spp_pooling'):
        SAANE(in_channels=8, semantic_network='class_map', spp_pooling='median')
    wrong = tmp_path / 'deeplab.pth'
    torch.save(SAANE(in_channels=8, n_classes=3).semantic_stream.network.state_dict(), wrong)
    with pytest.raises(WeightsError, match='n_classes'):
        SAANE(in_channels=8, semantic_weights=str(wrong))


def test_network_stream_weights_normalisation_and_freezing(tmp_path):
    torch.manual_seed(0)
    trained = SAANE(in_channels=8, n_classes=4).semantic_stream.network
    path = tmp_path / 'lraspp.pth'
    torch.save(trained.state_dict(), path)
    head = SAANE(in_channels=8, n_classes=4, semantic_weights=str(path),
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)).train()
    network = head.semantic_stream.network
    torch.testing.assert_close(network.state_dict(), trained.state_dict())
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    seen = []
    network.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    rgb = torch.rand(1, 3, 96, 128)
    head(torch.randn(1, 8, 6, 8), images=(rgb - 0.5) / 0.5)
    imagenet = (rgb - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(
        IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(seen[0], imagenet)
    with pytest.raises(ValueError, match='semantic_network: class_map'):
        head(torch.randn(1, 8, 6, 8), images=rgb, class_map=torch.zeros(1, 96, 128).long())
    trainable = SAANE(in_channels=8, n_classes=4, freeze_semantic=False).train()
    assert trainable.semantic_stream.network.training

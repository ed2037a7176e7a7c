"""Published VPR checkpoints (CosPlace, EigenPlaces, NetVLAD Pitts30k, MixVPR) load and match.

Each test writes a state dict in the upstream key layout (names and shapes)
with seeded random values, loads it through the shipped preset, and compares
the model's descriptors with an independent functional forward written here
from the raw tensors.
"""

import argparse
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from vl_attention.engine.card_builder import make_model_card
from vl_attention.models import build_model, load_model_config
from vl_attention.models.external import read_model_checkpoint, resolve_checkpoint_file, \
    to_package_layout
from vl_attention.models.weights import WeightsError

HUB_NAMES = {'cosplace_resnet50': 'ResNet50_2048_cosplace.pth',
             'eigenplaces_resnet50': 'ResNet50_2048_eigenplaces.pth',
             'netvlad_vgg16_pitts30k': 'vgg16_netvlad.pth.tar',
             'mixvpr_resnet50': 'resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt'}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Return the checkpoints folder of an empty torch hub cache under TORCH_HOME."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    folder = tmp_path / 'torch' / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    return folder


def perturbed(module, seed):
    """Give every BatchNorm tensor and bias seeded non-default values (weights keep their init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith('running_var'):
                tensor.copy_(1.0 + 0.2 * noise.abs())
            elif name.endswith(('bias', 'running_mean')) or tensor.dim() == 1:
                tensor.copy_((1.0 if 'bn' in name and name.endswith('weight') else 0.0)
                             + 0.1 * noise)
    return module.eval()


def images(size, batch=2, seed=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def preset_at(name, size, **aggregator_options):
    config = load_model_config(name)
    options = dict(config.aggregator_options, **aggregator_options)
    return dataclasses.replace(config, input_height=size[0], input_width=size[1],
                               aggregator_options=options)


def assert_unit_norm_and_deterministic(model, batch):
    with torch.no_grad():
        first, second = model(batch), model(batch)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(len(batch)), atol=1e-5, rtol=0)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    return first


# --- CosPlace / EigenPlaces ------------------------------------------------------------------

def cosplace_upstream(out_dim=2048, seed=0):
    """(trunk, state dict) in the gmberton/cosplace torch.hub layout."""
    torch.manual_seed(seed)
    trunk = perturbed(torch.nn.Sequential(*list(torchvision.models.resnet50().children())[:-2]),
                      seed)
    state = {f'backbone.{key}': value for key, value in trunk.state_dict().items()}
    generator = torch.Generator().manual_seed(seed + 1)
    state['aggregation.1.p'] = torch.tensor([2.7])
    state['aggregation.3.weight'] = torch.randn(out_dim, 2048, generator=generator) * 0.02
    state['aggregation.3.bias'] = torch.randn(out_dim, generator=generator) * 0.01
    return trunk, state


def cosplace_reference(trunk, state, batch):
    with torch.no_grad():
        local = F.normalize(trunk(batch), p=2, dim=1)
        p = state['aggregation.1.p']
        gem = F.avg_pool2d(local.clamp(min=1e-6).pow(p), local.shape[-2:]).pow(1.0 / p).flatten(1)
        return F.normalize(F.linear(gem, state['aggregation.3.weight'],
                                    state['aggregation.3.bias']), p=2, dim=-1)


def test_cosplace_layout_has_the_published_keys_and_shapes():
    _, state = cosplace_upstream()
    assert state['backbone.0.weight'].shape == (64, 3, 7, 7)               # conv1
    assert state['backbone.7.2.conv3.weight'].shape == (2048, 512, 1, 1)   # layer4's last block
    assert state['aggregation.1.p'].shape == (1,)
    assert state['aggregation.3.weight'].shape == (2048, 2048)
    model = build_model(dataclasses.replace(preset_at('cosplace_resnet50', (64, 64)),
                                            checkpoint=''))
    renamed, ours = to_package_layout(state), model.state_dict()
    assert set(renamed) == set(ours)
    assert all(renamed[key].shape == ours[key].shape for key in ours)
    assert renamed['aggregator.p'] is state['aggregation.1.p']


@pytest.mark.parametrize('preset', ['cosplace_resnet50', 'eigenplaces_resnet50'])
def test_cosplace_and_eigenplaces_checkpoints_load_from_the_hub_cache_and_match(preset, hub):
    trunk, state = cosplace_upstream(seed=3)
    torch.save(state, hub / HUB_NAMES[preset])
    model = build_model(preset_at(preset, (96, 64)))
    assert model.untrained_modules == ()
    batch = images((96, 64))
    descriptor = assert_unit_norm_and_deterministic(model, batch)
    assert descriptor.shape == (2, 2048)
    torch.testing.assert_close(descriptor, cosplace_reference(trunk, state, batch), atol=2e-5,
                               rtol=1e-4)
    torch.testing.assert_close(model.aggregator.fc.weight, state['aggregation.3.weight'])
    torch.testing.assert_close(model.backbone.layer3[5].bn2.running_var,
                               state['backbone.6.5.bn2.running_var'])


def test_cosplace_head_ignores_the_feature_scale():
    model = build_model(dataclasses.replace(preset_at('cosplace_resnet50', (64, 64)),
                                            checkpoint=''))
    features = torch.rand(2, 2048, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.aggregator(features), model.aggregator(0.1 * features),
                                   atol=1e-5, rtol=1e-4)


# --- NetVLAD (pytorch-NetVlad) ---------------------------------------------------------------

def netvlad_upstream(clusters=64, wpca_dim=0, seed=0):
    """(trunk, state dict) in the Nanne/pytorch-NetVlad layout (+ Patch-NetVLAD WPCA)."""
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(*list(torchvision.models.vgg16().features.children())[:-2]).eval()
    state = {f'encoder.{key}': value for key, value in trunk.state_dict().items()}
    generator = torch.Generator().manual_seed(seed + 1)
    state['pool.conv.weight'] = torch.randn(clusters, 512, 1, 1, generator=generator) * 5
    state['pool.centroids'] = torch.rand(clusters, 512, generator=generator)
    if wpca_dim:
        state['WPCA.0.weight'] = torch.randn(wpca_dim, clusters * 512, 1, 1,
                                             generator=generator) * 0.01
        state['WPCA.0.bias'] = torch.randn(wpca_dim, generator=generator) * 0.01
    return trunk, state


def netvlad_reference(trunk, state, batch):
    """Compute NetVLAD by its definition: a per-cluster loop over weighted residuals."""
    with torch.no_grad():
        local = F.normalize(trunk(batch), p=2, dim=1).flatten(2)          # (B, C, N)
        assignment = torch.einsum('kc,bcn->bkn', state['pool.conv.weight'][:, :, 0, 0],
                                  local).softmax(dim=1)
        blocks = []
        for k, centroid in enumerate(state['pool.centroids']):
            residual = local - centroid[None, :, None]
            blocks.append(F.normalize((residual * assignment[:, k:k + 1]).sum(-1), dim=-1))
        vlad = F.normalize(torch.cat(blocks, dim=1), p=2, dim=-1)
        if 'WPCA.0.weight' in state:
            vlad = F.normalize(F.linear(vlad, state['WPCA.0.weight'][:, :, 0, 0],
                                        state['WPCA.0.bias']), p=2, dim=-1)
        return vlad


def test_netvlad_pitts30k_training_checkpoint_loads_and_matches(hub):
    trunk, state = netvlad_upstream(seed=5)
    assert state['encoder.28.weight'].shape == (512, 512, 3, 3)       # conv5_3, no ReLU after
    assert 'encoder.29.weight' not in state and state['pool.conv.weight'].shape == (64, 512, 1, 1)
    # as main.py saves it: the state dict beside epoch, numpy recalls and optimizer state
    torch.save({'epoch': 7, 'best_score': np.float64(0.85), 'recalls': {1: np.float64(0.85)},
                'state_dict': {f'module.{k}': v for k, v in state.items()}},
               hub / HUB_NAMES['netvlad_vgg16_pitts30k'])
    model = build_model(preset_at('netvlad_vgg16_pitts30k', (64, 80)))
    batch = images((64, 80))
    descriptor = assert_unit_norm_and_deterministic(model, batch)
    assert descriptor.shape == (2, 64 * 512)
    torch.testing.assert_close(descriptor, netvlad_reference(trunk, state, batch), atol=1e-5,
                               rtol=1e-4)
    assert model.aggregator.assignment.bias is None


def test_netvlad_with_patch_netvlad_wpca_loads_and_matches(tmp_path):
    trunk, state = netvlad_upstream(clusters=8, wpca_dim=16, seed=6)
    path = tmp_path / 'pitts_WPCA16.pth.tar'
    torch.save({'state_dict': state}, path)
    config = dataclasses.replace(preset_at('netvlad_vgg16_pitts30k', (64, 64), clusters=8,
                                           wpca_dim=16), checkpoint=str(path))
    model = build_model(config)
    batch = images((64, 64), seed=2)
    descriptor = assert_unit_norm_and_deterministic(model, batch)
    assert descriptor.shape == (2, 16) and model.descriptor_dim() == 16
    torch.testing.assert_close(descriptor, netvlad_reference(trunk, state, batch), atol=1e-5,
                               rtol=1e-4)


# --- MixVPR ------------------------------------------------------------------------------------

MIXVPR_SMALL = {'in_h': 4, 'in_w': 5, 'out_channels': 32, 'mix_depth': 2, 'out_rows': 3}


def mixvpr_upstream(in_h, in_w, out_channels, mix_depth, out_rows, seed=0):
    """(torchvision resnet50, state dict) in the amaralibey/MixVPR layout (layer4 cropped)."""
    torch.manual_seed(seed)
    net = perturbed(torchvision.models.resnet50(), seed)
    state = {f'backbone.model.{key}': value for key, value in net.state_dict().items()
             if not key.startswith(('fc.', 'layer4.'))}
    generator = torch.Generator().manual_seed(seed + 1)
    positions = in_h * in_w
    for index in range(mix_depth):
        prefix = f'aggregator.mix.{index}.mix'
        state[f'{prefix}.0.weight'] = 1 + 0.1 * torch.randn(positions, generator=generator)
        state[f'{prefix}.0.bias'] = 0.1 * torch.randn(positions, generator=generator)
        for layer in (1, 3):
            state[f'{prefix}.{layer}.weight'] = 0.1 * torch.randn(positions, positions,
                                                                  generator=generator)
            state[f'{prefix}.{layer}.bias'] = 0.1 * torch.randn(positions, generator=generator)
    state['aggregator.channel_proj.weight'] = 0.03 * torch.randn(out_channels, 1024,
                                                                 generator=generator)
    state['aggregator.channel_proj.bias'] = 0.1 * torch.randn(out_channels, generator=generator)
    state['aggregator.row_proj.weight'] = 0.1 * torch.randn(out_rows, positions,
                                                            generator=generator)
    state['aggregator.row_proj.bias'] = 0.1 * torch.randn(out_rows, generator=generator)
    return net, state


def mixvpr_reference(net, state, batch, mix_depth):
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(batch))))
        x = net.layer3(net.layer2(net.layer1(x))).flatten(2)              # (B, C, HW)
        for index in range(mix_depth):
            prefix = f'aggregator.mix.{index}.mix'
            y = F.layer_norm(x, x.shape[-1:], state[f'{prefix}.0.weight'],
                             state[f'{prefix}.0.bias'])
            y = F.relu(F.linear(y, state[f'{prefix}.1.weight'], state[f'{prefix}.1.bias']))
            x = x + F.linear(y, state[f'{prefix}.3.weight'], state[f'{prefix}.3.bias'])
        x = F.linear(x.transpose(1, 2), state['aggregator.channel_proj.weight'],
                     state['aggregator.channel_proj.bias'])            # (B, HW, C')
        x = F.linear(x.transpose(1, 2), state['aggregator.row_proj.weight'],
                     state['aggregator.row_proj.bias'])                # (B, C', R)
        return F.normalize(x.flatten(1), p=2, dim=-1)


def test_mixvpr_published_shapes_at_320x320():
    config = load_model_config('mixvpr_resnet50')
    model = build_model(dataclasses.replace(config, checkpoint=''))
    _, state = mixvpr_upstream(in_h=20, in_w=20, out_channels=1024, mix_depth=4, out_rows=4)
    renamed, ours = to_package_layout(state), model.state_dict()
    assert set(renamed) == set(ours)
    assert all(renamed[key].shape == ours[key].shape for key in ours)
    assert state['aggregator.mix.3.mix.1.weight'].shape == (400, 400)
    assert model.descriptor_dim() == 4096


def test_mixvpr_checkpoint_loads_and_matches(tmp_path):
    net, state = mixvpr_upstream(**MIXVPR_SMALL, seed=8)
    path = tmp_path / 'mixvpr_small.ckpt'
    torch.save(state, path)
    size = (16 * MIXVPR_SMALL['in_h'], 16 * MIXVPR_SMALL['in_w'])      # layer3 is at stride 16
    config = dataclasses.replace(preset_at('mixvpr_resnet50', size, **MIXVPR_SMALL),
                                 checkpoint=str(path))
    model = build_model(config)
    batch = images(size, seed=4)
    descriptor = assert_unit_norm_and_deterministic(model, batch)
    assert descriptor.shape == (2, 32 * 3)
    torch.testing.assert_close(descriptor, mixvpr_reference(net, state, batch, 2), atol=2e-5,
                               rtol=1e-4)


# --- missing and foreign files -----------------------------------------------------------------

@pytest.mark.parametrize('preset, url_part', [
    ('cosplace_resnet50', 'gmberton/CosPlace/releases/download/v1.0/ResNet50_2048_cosplace.pth'),
    ('eigenplaces_resnet50', 'gmberton/EigenPlaces/releases/download/v1.0/'),
    ('netvlad_vgg16_pitts30k', 'pytorch-NetVlad/releases/download/v1.0/vgg16_netvlad.pth.tar'),
    ('mixvpr_resnet50', 'github.com/amaralibey/MixVPR')])
def test_a_missing_checkpoint_names_the_expected_path_and_how_to_get_it(preset, url_part, hub):
    with pytest.raises(WeightsError) as error:
        resolve_checkpoint_file(load_model_config(preset).checkpoint)
    message = str(error.value)
    assert '\n' not in message
    assert str(hub / HUB_NAMES[preset]) in message and url_part in message
    assert 'never downloaded' in message


def test_an_explicit_missing_path_is_named(tmp_path):
    with pytest.raises(WeightsError, match='nowhere/ResNet50_512_cosplace.pth.*CosPlace'):
        resolve_checkpoint_file(str(tmp_path / 'nowhere' / 'ResNet50_512_cosplace.pth'))


def test_a_checkpoint_with_pickled_objects_is_refused_with_the_fix(tmp_path):
    path = tmp_path / 'lightning.ckpt'
    torch.save({'state_dict': {}, 'hyper_parameters': argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(WeightsError, match='weights_only=False.*state_dict'):
        read_model_checkpoint(path)


def test_a_foreign_key_in_a_known_layout_is_named(tmp_path):
    _, state = cosplace_upstream()
    state['aggregation.9.weight'] = torch.zeros(1)
    path = tmp_path / 'odd_cosplace.pth'
    torch.save(state, path)
    with pytest.raises(WeightsError, match='aggregation.9.weight'):
        read_model_checkpoint(path)


def test_external_presets_record_their_resize_policy_in_the_card():
    config = dataclasses.replace(preset_at('mixvpr_resnet50', (64, 80), **MIXVPR_SMALL),
                                 checkpoint='')
    assert make_model_card(config, build_model(config)).preprocessing.resize == 'stretch'
    config = dataclasses.replace(preset_at('netvlad_vgg16_pitts30k', (64, 64), clusters=4),
                                 checkpoint='')
    card = make_model_card(config, build_model(config))
    assert card.preprocessing.resize == 'center_crop'
    assert card.model_config['resize'] == 'center_crop'

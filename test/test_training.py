"""Training harness: mining, losses, and short runs of ``fit`` (the one training loop) per family.

Each family test runs :func:`~vl_attention.training.loop.fit` with a tiny recipe built here on
places of the synthetic town seen under four conditions (day, dusk, night, fog) and judges on
held-out places, the ``synthetic`` source's test split that fit validates on: day images are
the database, the other conditions the queries. Backbones are frozen and only the heads train
(features cached once). The ResNet-18 presets have no offline ImageNet weights: a random
ResNet-18 trunk gives chance-level cross-condition Recall@1 and a head trained on it does not
improve, and training the trunk from scratch costs ~1.6 s a step here, so those heads train on
the offline ImageNet EfficientNet-Lite0 trunk at the equivalent taps (stride 16 for the
layer3-truncated pooling heads; strides 8/16/32 for the multi-level heads), keeping the
preset's head and options. What a run did is read from what fit writes: ``summary.json``
(validation Recall@N of the start and of each epoch), ``losses.json`` (every step's loss and
its parts) and ``model.pt`` / ``model.yaml`` (the kept weights).
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from vl_attention.config import ConfigError, from_dict
from vl_attention.engine.preprocess import preprocess_frames
from vl_attention.models import build_model, load_model_config, ModelOutput
from vl_attention.models.pose_attention import pose_origin_m
from vl_attention.training.config import OptimizerConfig, TrainConfig
from vl_attention.training.data import load_training_data
from vl_attention.training.datasets import (load_place_views, place_recognition_splits,
                                            PlaceSetConfig, split_by_pass)
from vl_attention.training.loop import fit, initial_model
from vl_attention.training.losses import LOSSES, select_outputs
from vl_attention.training.mining import ground_truth_masks, mine_triplets
from vl_attention.training.sources import load_dataset
from vl_attention.training.trainable import make_optimizer
from vl_attention.training.validation import predict

HEIGHT, WIDTH = 96, 128
PLACES = PlaceSetConfig()
POSES = PlaceSetConfig(num_places=30, place_spacing_m=4.0, conditions=('day',),
                       passes_per_condition=4, lateral_jitter_m=1.2, along_jitter_m=1.5,
                       held_out_places=0)
# drives 0-2 of POSES (the same renders: each drive draws its jitter in turn), the training rows
POSE_TRAINING = {'num_places': 30, 'place_spacing_m': 4.0, 'conditions': ['day'],
                 'passes_per_condition': 3, 'lateral_jitter_m': 1.2, 'along_jitter_m': 1.5,
                 'held_out_places': 0}
# a few places by day and night, no held-out places: no validation, model.pt = the last weights
TINY = {'num_places': 12, 'held_out_places': 0, 'conditions': ['day', 'night'],
        'width': WIDTH, 'height': HEIGHT}
EFFNET = 'efficientnet_lite0'


@pytest.fixture(scope='session')
def training_cache(tmp_path_factory):
    return tmp_path_factory.mktemp('training_cache')


@pytest.fixture(scope='session')
def place_splits(training_cache):
    return place_recognition_splits(load_place_views(PLACES, training_cache), PLACES)


def _recipe(cache, places=None, **changes):
    """Build a tiny recipe: one epoch on the synthetic places (default: PLACES), CPU, no export."""
    steps = changes.pop('steps', 5)
    recipe = {
        'name': 'test', 'model': 'resnet18_gem',
        'dataset': {'kind': 'synthetic', 'root': str(cache), 'options': places or {}},
        'sampling': {'positive_distance_m': PLACES.positive_distance_m,
                     'negative_distance_m': PLACES.negative_distance_m,
                     'places_per_batch': 4, 'views_per_place': 2},
        'optimizer': {'name': 'adam', 'lr': 1e-3}, 'epochs': 1, 'steps_per_epoch': steps,
        'checkpoint_every_steps': steps, 'log_every_steps': steps, 'device': 'cpu',
        'export': False}
    recipe.update(changes)
    return from_dict(TrainConfig, recipe)


def _overrides(*, effnet_taps=None, aggregator_options=None, freeze=True):
    """Model overrides: the test size, a frozen trunk (optionally ImageNet EfficientNet)."""
    overrides = {'input_height': HEIGHT, 'input_width': WIDTH,
                 'backbone_options': {'freeze': freeze}}
    if effnet_taps:
        overrides.update(backbone=EFFNET, taps=list(effnet_taps), backbone_options={
            'weights': 'imagenet', 'truncate_after': effnet_taps[-1], 'freeze': freeze})
    if aggregator_options:
        overrides['aggregator_options'] = aggregator_options
    return overrides


def _losses(out):
    """Return fit's per-step loss record ``{'total': [...], 'parts': {name: [...]}}``."""
    return json.loads((out / 'losses.json').read_text())


def _weights(out):
    return torch.load(out / 'model.pt', weights_only=True)


def _window_means(values, n=20):
    return float(np.mean(values[:n])), float(np.mean(values[-n:]))


@dataclasses.dataclass(frozen=True)
class Family:
    """How one model family is trained, and what its short run must show.

    The thresholds sit below the values measured with recipe seeds 0, 1, 2 (see each family).
    NetVLAD-type heads start from k-means centroids (fit's ``fit_netvlad_centroids``).
    """

    preset: str
    effnet_taps: tuple = None  # replace a random ResNet-18 trunk by ImageNet EfficientNet-Lite0
    loss: str = 'triplet'
    loss_options: dict = None
    aggregator_options: dict = None
    steps: int = 200
    lr: float = 1e-4
    places_per_batch: int = 8   # of 4 views each
    loss_ratio: float = 0.7    # last-20-step mean loss < loss_ratio x first-20-step mean
    recall_gain: float = 0.05  # held-out Recall@1 of the last weights >= the start's + gain


FAMILIES = {
    # GeM is L2-normalised before its whitening (cirtorch's order), which shrinks the
    # whitening's gradients, hence lr 3e-4: measured loss ratio 0.69-0.70, gain 0.06-0.08
    'pooling_gem': Family('resnet18_gem', effnet_taps=('stride16',), lr=3e-4, loss_ratio=0.75,
                          recall_gain=0.03),
    # measured 0.67-0.73, gain 0.08-0.11 (over the k-means-initialised head)
    'pooling_netvlad': Family('resnet18_netvlad', effnet_taps=('stride16',), steps=120,
                              lr=1e-3, loss_ratio=0.8),
    # the attention only re-weights the 1280-D R-MAC regions of a frozen trunk, so it has
    # little to learn: measured 0.76-0.77, gain 0.06-0.07
    'regional_attention': Family('effnet_lite0_regional_attention', lr=1e-3, loss_ratio=0.8,
                                 recall_gain=0.03),
    # measured 0.06-0.07, gain 0.06-0.14
    'saane': Family('saane_effnet', lr=1e-3, places_per_batch=4, recall_gain=0.04),
    # measured 0.64-0.66, gain 0.10-0.14
    'haf': Family('haf_resnet18', effnet_taps=('stride8', 'stride16', 'stage5'), loss='haf'),
    # the haf recipe's form: NetVLAD levels (k-means start, Recall@1 0.74-0.78 before any
    # step) and the global triplet term: measured 0.72-0.73, gain 0.01-0.04 (seed 2: one query
    # of 72; CPU kernels are not bitwise reproducible across process states either), so the
    # bar is one query
    'haf_netvlad_levels': Family(
        'haf_resnet18', effnet_taps=('stride8', 'stride16', 'stage5'), loss='haf',
        loss_options={'haf_options': {'w_global': 1.0}},
        aggregator_options={'level_pooling': 'netvlad', 'clusters': 16}, loss_ratio=0.75,
        recall_gain=0.01),
}


def _family_recipe(family, cache, seed=0):
    return _recipe(
        cache, model=family.preset, seed=seed, steps=family.steps,
        model_overrides=_overrides(effnet_taps=family.effnet_taps,
                                   aggregator_options=family.aggregator_options),
        loss={'name': family.loss, 'options': family.loss_options or {}},
        sampling={'positive_distance_m': PLACES.positive_distance_m,
                  'negative_distance_m': PLACES.negative_distance_m,
                  'places_per_batch': family.places_per_batch, 'views_per_place': 4},
        optimizer={'name': 'adam', 'lr': family.lr})


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_short_training_lowers_loss_and_raises_recall(name, training_cache, tmp_path):
    family = FAMILIES[name]
    summary = fit(_family_recipe(family, training_cache), tmp_path / 'run')
    # validated: the start (after any k-means initialisation) and the end of the one epoch
    start, end = summary['validation']
    assert (start['step'], end['step']) == (0, family.steps)
    before, after = start['recall_at_n']['1'], end['recall_at_n']['1']
    first, last = _window_means(_losses(tmp_path / 'run')['total'])
    print(f'{name}: loss {first:.4f} -> {last:.4f}, Recall@1 {before:.3f} -> {after:.3f}')
    assert last < family.loss_ratio * first
    assert after >= before + family.recall_gain


@pytest.fixture(scope='session')
def pose_views(training_cache):
    return split_by_pass(load_place_views(POSES, training_cache), held_out_passes=[3])


def _median_position_error_m(model, views, origin_m):
    """Median position error (m) of a pose model on views, its positions + ``origin_m``."""
    images = torch.from_numpy(preprocess_frames(list(views.images), model.preprocessing))
    _, poses = predict(model, images)
    return float(np.median(np.linalg.norm(poses[:, :3] + origin_m - views.positions_m, axis=1)))


@pytest.mark.slow
def test_pose_attention_training_lowers_pose_loss_and_position_error(pose_views,
                                                                     training_cache, tmp_path):
    # the preset as it is: pose regression in one scene learns on the frozen random trunk;
    # drives 0-2 train, drive 3 is held out. Measured (recipe seeds 0-2): loss 31 -> 5.5-7.9,
    # position L1 x 0.28-0.36, held-out median position error 30.0 -> 6.4-7.9 m
    cfg = _recipe(training_cache, POSE_TRAINING, model='pose_attention_resnet18', steps=200,
                  model_overrides=_overrides(), loss={'name': 'pose'},
                  sampling={'positive_distance_m': POSES.positive_distance_m,
                            'negative_distance_m': POSES.positive_distance_m,
                            'places_per_batch': 8, 'views_per_place': 2})
    training_rows = load_dataset('synthetic', root=str(training_cache), **POSE_TRAINING)
    np.testing.assert_array_equal(training_rows.positions_m, pose_views[0].positions_m)
    summary = fit(cfg, tmp_path / 'run')
    assert summary['validation'] == [] and summary['steps'] == 200
    trained = build_model(load_model_config(str(tmp_path / 'run' / 'model.yaml')))
    origin_m = pose_origin_m(trained)     # fit's training mean, the head's regression zero
    np.testing.assert_allclose(origin_m, pose_views[0].positions_m.mean(axis=0), atol=1e-6)
    before_m = _median_position_error_m(initial_model(cfg, 'cpu'), pose_views[1], origin_m)
    after_m = _median_position_error_m(trained, pose_views[1], origin_m)
    losses = _losses(tmp_path / 'run')
    (first, last), position = _window_means(losses['total']), losses['parts']['position_l1']
    print(f'pose: loss {first:.3f} -> {last:.3f}, position L1 {np.mean(position[:20]):.2f} -> '
          f'{np.mean(position[-20:]):.2f}, median error {before_m:.2f} -> {after_m:.2f} m')
    assert last < first - 1.0
    assert np.mean(position[-20:]) < 0.7 * np.mean(position[:20])
    assert after_m < 0.7 * before_m


def _line_positions(*xs_m):
    return torch.tensor([[x, 0.0, 0.0] for x in xs_m])


def _masks(positions, positive_distance_m, negative_distance_m):
    return ground_truth_masks(positions, positive_distance_m=positive_distance_m,
                              negative_distance_m=negative_distance_m)


def test_batch_hard_mining_takes_farthest_positive_and_closest_negative():
    # images 0, 1, 2 show one place (<= 1 m apart); 3 and 4 are 50 m away
    positions = _line_positions(0.0, 0.5, 1.0, 50.0, 50.5)
    descriptors = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    triplets = mine_triplets(descriptors, *_masks(positions, 2.0, 10.0))
    assert triplets.anchor.tolist() == [0, 1, 2, 3, 4]
    assert triplets.positive[0] == 2 and triplets.negative[0] == 3
    assert triplets.positive[3] == 4 and triplets.negative[4] == 2


def test_random_mining_draws_only_valid_pairs_and_follows_its_seed():
    positions = _line_positions(0.0, 0.5, 1.0, 5.0, 50.0, 50.5, 100.0)
    descriptors = torch.randn(7, 4)
    draws = [mine_triplets(descriptors, *_masks(positions, 2.0, 10.0), strategy='random',
                           generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draws[0].negative, draws[1].negative)
    gap_m = (positions[:, None, 0] - positions[None, :, 0]).abs()
    triplets = draws[0]
    assert 6 not in triplets.anchor.tolist() and 3 not in triplets.anchor.tolist()
    assert (gap_m[triplets.anchor, triplets.positive] <= 2.0).all()
    assert (gap_m[triplets.anchor, triplets.negative] > 10.0).all()
    assert (triplets.anchor != triplets.positive).all()


def test_mining_without_any_positive_says_how_to_sample():
    with pytest.raises(ValueError, match='several views of each place'):
        mine_triplets(torch.eye(3), *_masks(_line_positions(0.0, 30.0, 60.0), 2.0, 10.0))


def test_triplet_loss_is_the_mean_hinge_of_mined_triplets():
    positions = _line_positions(0.0, 1.0, 50.0, 51.0)
    descriptors = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    batch = SimpleBatch(*_masks(positions, 2.0, 10.0))
    total, parts = LOSSES.create('triplet', margin=0.5)(ModelOutput(descriptors), batch)
    # per anchor: d(a, p) - d(a, hardest n) + 0.5, hinged
    d = torch.cdist(descriptors, descriptors)
    expected = torch.stack([d[0, 1] - d[0, 2], d[1, 0] - d[1, 2], d[2, 3] - d[2, 1],
                            d[3, 2] - d[3, 1]]) + 0.5
    assert torch.isclose(total, expected.clamp(min=0).mean(), atol=1e-5)
    assert parts['triplet'] == total.detach()


@dataclasses.dataclass
class SimpleBatch:
    positive_mask: torch.Tensor
    negative_mask: torch.Tensor


def test_unknown_loss_and_mining_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known loss functions: .*'triplet'"):
        LOSSES.create('contrastive')
    with pytest.raises(ValueError, match="known: \\['hard', 'random'\\]"):
        LOSSES.create('triplet', mining='semi')


def test_select_outputs_indexes_every_batch_tensor():
    output = ModelOutput(torch.arange(6.0).reshape(3, 2), attention={'map': torch.arange(3.0)},
                         pose=torch.arange(21.0).reshape(3, 7),
                         extras={'levels': {'low': torch.arange(3)}})
    picked = select_outputs(output, torch.tensor([2, 0]))
    assert picked.descriptor.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    assert picked.attention['map'].tolist() == [2.0, 0.0]
    assert picked.pose[:, 0].tolist() == [14.0, 0.0]
    assert picked.extras['levels']['low'].tolist() == [2, 0]
    assert picked.logits is None


def test_place_splits_hold_out_distant_places_with_exact_ground_truth(place_splits):
    train, database, queries = place_splits.train, place_splits.database, place_splits.queries
    assert set(database.conditions) == {'day'}
    assert set(queries.conditions) == {'dusk', 'night', 'fog'}
    assert len(database) == PLACES.held_out_places == len(queries) // 3
    gap_m = np.linalg.norm(train.positions_m[:, None, :2] - database.positions_m[None, :, :2],
                           axis=-1)
    assert gap_m.min() >= PLACES.negative_distance_m
    # every query's own place in the day pass lies within the positive distance
    for place, position in zip(queries.place_ids, queries.positions_m):
        same = database.positions_m[database.place_ids == place]
        assert np.linalg.norm(same[0] - position) <= PLACES.positive_distance_m
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (120, 160, 3)


def test_place_splits_without_held_out_places_train_on_every_view(training_cache):
    config = PlaceSetConfig(num_places=6, held_out_places=0, conditions=('day',),
                            width=WIDTH, height=HEIGHT)
    splits = place_recognition_splits(load_place_views(config, training_cache), config)
    assert len(splits.train) == 6 * config.passes_per_condition
    assert len(splits.database) == len(splits.queries) == 0


def test_fit_batches_views_of_distinct_places_with_exact_poses(training_cache):
    cfg = _recipe(training_cache, model_overrides=_overrides(effnet_taps=('stride16',)),
                  sampling={'positive_distance_m': PLACES.positive_distance_m,
                            'negative_distance_m': PLACES.negative_distance_m,
                            'places_per_batch': 8, 'views_per_place': 4})
    data = load_training_data(cfg, initial_model(cfg, 'cpu').preprocessing)
    assert data.images[:2].shape[1:] == (3, HEIGHT, WIDTH)
    groups = data.sampler.sample(torch.Generator().manual_seed(0)).reshape(8, 4)
    anchors = groups[:, 0]
    positive, negative = data.ground_truth.pair_masks(anchors, anchors)
    assert not positive.any() and negative[~np.eye(8, dtype=bool)].all()  # 8 distinct places
    for anchor, views in zip(anchors, groups[:, 1:]):   # each with views of its place
        assert data.ground_truth.pair_masks([anchor], views)[0].all()
    poses = data.builder.poses
    assert torch.allclose(poses[:, 3:].norm(dim=1), torch.ones(len(poses)))
    assert (poses[:, 3] >= 0).all()


def _start(cfg):
    return {key: value.clone() for key, value in initial_model(cfg, 'cpu').state_dict().items()}


def test_fit_is_repeatable_and_leaves_a_frozen_trunk_untouched(training_cache, tmp_path):
    cfg = _recipe(training_cache, TINY, seed=4,
                  model_overrides=_overrides(effnet_taps=('stride16',)))
    start = _start(cfg)
    for run in ('a', 'b'):
        fit(cfg, tmp_path / run)
    (a, b), (weights_a, weights_b) = ([_losses(tmp_path / run) for run in 'ab'],
                                      [_weights(tmp_path / run) for run in 'ab'])
    assert a == b and len(a['total']) == 5 and len(a['parts']['triplet']) == 5
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in start)
    trunk = [key for key in start if key.startswith('backbone.')]
    assert trunk and all(torch.equal(weights_a[key], start[key]) for key in trunk)
    assert not torch.equal(weights_a['aggregator.whitening.weight'],
                           start['aggregator.whitening.weight'])


def test_a_partly_frozen_trunk_trains_the_same_on_cached_features(training_cache, tmp_path):
    # freeze: stride16 -> fit caches the stride-16 features and runs stage5 each step
    runs = []
    for cache_features in (True, False):
        cfg = _recipe(training_cache, TINY, seed=4, steps=4,
                      cache_backbone_features=cache_features,
                      model_overrides=_overrides(effnet_taps=('stage5',), freeze='stride16'))
        out = tmp_path / str(cache_features)
        fit(cfg, out)
        runs.append((_losses(out)['total'], _weights(out)))
    assert initial_model(cfg, 'cpu').backbone.frozen_tap == 'stride16'
    start = _start(cfg)
    (cached_losses, cached), (losses, weights) = runs
    np.testing.assert_allclose(cached_losses, losses, rtol=1e-4)
    for key, value in weights.items():
        torch.testing.assert_close(cached[key], value, rtol=1e-4, atol=1e-5)
    stage5 = [key for key in weights if key.startswith('backbone.net.blocks.6')]
    stride16 = [key for key in weights if key.startswith('backbone.net.blocks.4')]
    assert stage5 and stride16
    assert any(not torch.equal(weights[key], start[key]) for key in stage5)  # trained
    assert all(torch.equal(weights[key], start[key]) for key in stride16)  # frozen


def _partly_frozen_effnet(weights='imagenet'):
    """EfficientNet-Lite0 GeM at stage5 with the stages up to stride16 frozen."""
    return build_model(dataclasses.replace(
        load_model_config('resnet18_gem'), input_height=HEIGHT, input_width=WIDTH,
        backbone=EFFNET, taps=('stage5',), backbone_options={
            'weights': weights, 'truncate_after': 'stage5', 'freeze': 'stride16'}))


def test_evaluation_passes_give_every_module_its_own_mode_back():
    # model.train(was_training) after an evaluation pass would put a trunk frozen from outside
    # (requires_grad_(False)) back into training mode: its BatchNorm would normalise with batch
    # statistics and update its running ones
    from vl_attention.models.modes import evaluating
    from vl_attention.models.netvlad import sample_local_features
    from vl_attention.training.trainable import cache_backbone_features, set_training_mode
    model = build_model(dataclasses.replace(
        load_model_config('resnet18_gem'), input_height=HEIGHT, input_width=WIDTH,
        backbone=EFFNET, taps=('stride16',),
        backbone_options={'weights': 'imagenet', 'truncate_after': 'stride16'}))
    model.backbone.requires_grad_(False)
    set_training_mode(model)
    modes = {name: module.training for name, module in model.named_modules()}
    assert not modes['backbone'] and modes['aggregator']
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    with evaluating(model):
        assert not any(module.training for module in model.modules())
    predict(model, images)
    cache_backbone_features(model, images)
    sample_local_features(model, [images])
    model.head_descriptor_dim()
    assert {name: module.training for name, module in model.named_modules()} == modes


def test_trainable_trunk_stages_learn_at_the_scaled_rate():
    model = _partly_frozen_effnet(weights='none')
    loss = LOSSES.create('triplet')
    optimizer = make_optimizer(OptimizerConfig(lr=1e-3, backbone_lr_scale=0.1), model, loss)
    head, trunk = optimizer.param_groups
    assert (head['lr'], trunk['lr']) == (1e-3, pytest.approx(1e-4))
    assert {id(p) for p in trunk['params']} == {
        id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in head['params']} == {id(p) for p in model.aggregator.parameters()}
    frozen = build_model(dataclasses.replace(load_model_config('resnet18_gem'),
                                             backbone_options={'weights': 'none',
                                                               'freeze': True}))
    assert len(make_optimizer(OptimizerConfig(), frozen, loss).param_groups) == 1
    with pytest.raises(ValueError, match='backbone_lr_scale > 0'):
        OptimizerConfig(backbone_lr_scale=0)


def test_fit_refuses_a_recipe_with_nothing_to_train(training_cache, tmp_path):
    # fixed-p GeM (no parameters) on a frozen trunk, triplet loss (none either)
    cfg = _recipe(training_cache, TINY, model='effnet_lite0_gem', model_overrides=_overrides())
    with pytest.raises(ConfigError, match='nothing to train'):
        fit(cfg, tmp_path / 'run')

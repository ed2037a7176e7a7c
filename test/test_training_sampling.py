"""Recipes, ground truth (positions or place labels), batch sampling, hard negatives, schedules."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from vl_attention.config import ConfigError
from vl_attention.training.config import load_recipe, model_config, SamplingConfig, \
    ScheduleConfig
from vl_attention.training.loop import lr_factor, selection_key
from vl_attention.training.sampling import GroundTruth, HardNegativeCache, PlaceBatchSampler
from vl_attention.training.sources import DatasetLayoutError, make_dataset
from vl_attention.training.sources.base import AREA_SPACING_M

RECIPES = ('crn', 'gem', 'haf', 'netvlad', 'pose_attention', 'regional_attention', 'saane')


@pytest.mark.parametrize('name', RECIPES)
def test_every_recipe_loads_with_a_model_its_registry_knows(name):
    cfg = load_recipe(name)
    config = model_config(cfg)
    assert cfg.name == name and config.backbone_options['freeze'] is True
    assert {1, 5} <= set(cfg.recall_n)


def test_best_weights_rank_by_recall_at_5_then_recall_at_1_then_pr_auc():
    def scores(r5, r1, pr_auc):
        return {'recall_at_5': r5, 'recall_at_1': r1, 'pr_auc': pr_auc}
    assert selection_key(scores(0.9, 0.1, 0.1)) > selection_key(scores(0.8, 0.9, 0.9))
    assert selection_key(scores(0.9, 0.6, 0.1)) > selection_key(scores(0.9, 0.5, 0.9))
    assert selection_key(scores(0.9, 0.6, 0.5)) > selection_key(scores(0.9, 0.6, 0.4))
    # equal scores are not better: the earlier weights stay
    assert not selection_key(scores(0.9, 0.6, 0.5)) > selection_key(scores(0.9, 0.6, 0.5))
    with pytest.raises(ValueError, match='must include 1 and 5'):
        replace(load_recipe('gem'), recall_n=(5, 10))


def test_recipe_values_from_the_papers():
    haf = load_recipe('haf')
    assert (haf.optimizer.name, haf.optimizer.lr, haf.optimizer.momentum,
            haf.optimizer.weight_decay) == ('sgd', 1e-4, 0.9, 1e-3)
    assert (haf.schedule.name, haf.schedule.step_epochs, haf.schedule.gamma) == ('step', 5, 0.5)
    assert haf.sampling.places_per_batch == 4  # 4 triplets per batch
    assert dict(haf.loss.options['haf_options'])['w_high'] == 0.5
    netvlad = load_recipe('netvlad')
    assert (netvlad.sampling.positive_distance_m, netvlad.sampling.negative_distance_m) == (
        10.0, 25.0)


def test_unknown_recipe_keys_and_model_fields_are_named(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('name: bad\nepoch: 3\n')
    with pytest.raises(ConfigError, match="unknown setting.*'epoch'.*'epochs'"):
        load_recipe(str(path))
    path.write_text('name: bad\nmodel_overrides: {input_size: 3}\n')
    with pytest.raises(ConfigError, match='input_size'):
        model_config(load_recipe(str(path)))


def _line_dataset(xs_m=None, place_ids=None):
    count = len(xs_m if xs_m is not None else place_ids)
    columns = {}
    if xs_m is not None:
        columns['positions_m'] = np.stack([xs_m, np.zeros(count), np.zeros(count)], axis=1)
    if place_ids is not None:
        columns['place_ids'] = np.asarray(place_ids)
    return make_dataset('line', '/nowhere', [f'{i}.png' for i in range(count)], **columns)


def test_ground_truth_from_positions_and_from_place_labels():
    sampling = SamplingConfig(positive_distance_m=2.0, negative_distance_m=10.0,
                              negative_place_gap=2)
    by_position = GroundTruth(_line_dataset(xs_m=np.array([0.0, 1.0, 5.0, 20.0])), sampling)
    positive, negative = by_position.pair_masks([0, 1, 2, 3], [0, 1, 2, 3])
    assert positive[0].tolist() == [False, True, False, False]
    assert negative[0].tolist() == [False, False, False, True]  # 5 m: neither
    by_label = GroundTruth(_line_dataset(place_ids=[0, 0, 1, 3]), sampling)
    positive, negative = by_label.pair_masks([0, 1, 2, 3], [0, 1, 2, 3])
    assert positive[0].tolist() == [False, True, False, False]
    assert negative[0].tolist() == [False, False, False, True]  # gap 1 < 2: neither
    assert [rows.tolist() for rows in by_label.positive_lists()] == [[1], [0], [], []]
    with pytest.raises(DatasetLayoutError, match='position or a place label'):
        GroundTruth(_line_dataset(place_ids=[0, -1]), sampling)


def test_sampler_puts_each_anchor_with_a_positive_and_follows_its_seed():
    xs_m = np.repeat(np.arange(10) * 50.0, 3) + np.tile([0.0, 0.5, 1.0], 10)
    sampling = SamplingConfig(positive_distance_m=2.0, negative_distance_m=10.0,
                              places_per_batch=4, views_per_place=3)
    ground_truth = GroundTruth(_line_dataset(xs_m=xs_m), sampling)
    sampler = PlaceBatchSampler(ground_truth, sampling)
    rows = sampler.sample(torch.Generator().manual_seed(1))
    again = sampler.sample(torch.Generator().manual_seed(1))
    assert np.array_equal(rows, again) and len(rows) == 12
    groups = xs_m[rows].reshape(4, 3) // 50
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == 4
    with pytest.raises(DatasetLayoutError, match='another view of their place'):
        narrow = replace(sampling, positive_distance_m=0.1)
        PlaceBatchSampler(GroundTruth(_line_dataset(xs_m=xs_m), narrow), narrow)


def test_hard_negatives_are_the_closest_descriptors_that_are_true_negatives():
    xs_m = np.array([0.0, 1.0, 100.0, 200.0, 300.0])
    sampling = SamplingConfig(positive_distance_m=2.0, negative_distance_m=10.0,
                              hard_negatives_per_place=1, negative_cache_size=5)
    cache = HardNegativeCache(GroundTruth(_line_dataset(xs_m=xs_m), sampling), sampling)
    descriptors = np.array([[1, 0], [1, 0], [0, 1], [0.9, 0.1], [-1, 0]], np.float32)
    assert cache.due(0)
    cache.refresh(lambda rows: descriptors[rows], torch.Generator().manual_seed(0))
    # row 1 is most similar to anchor 0 but a positive; row 3 is the hardest negative
    assert cache.hardest_negatives(np.array([0]), descriptors[[0]]).tolist() == [3]
    assert not cache.due(1) and cache.due(sampling.refresh_every_steps)


def test_step_and_cosine_schedules():
    step = lr_factor(ScheduleConfig(name='step', step_epochs=5, gamma=0.5), steps_per_epoch=10,
                     total_steps=200)
    assert [step(s) for s in (0, 49, 50, 100)] == [1.0, 1.0, 0.5, 0.25]
    cosine = lr_factor(ScheduleConfig(name='cosine', min_lr_ratio=0.1, warmup_steps=4),
                       steps_per_epoch=10, total_steps=101)
    assert cosine(0) == pytest.approx(0.25) and cosine(50) == pytest.approx(0.55)
    assert cosine(100) == pytest.approx(0.1)


def test_command_line_replaces_recipe_dataset_options_and_lengths():
    import argparse
    from vl_attention.training.train import add_arguments, recipe_from_args
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(['--config', 'netvlad', '--dataset', 'rosbag2', '/bags/run1',
                              '--dataset-option', 'image_topic=/cam/image',
                              '--dataset-option', 'origin=[47.3, 8.5, 400]',
                              '--epochs', '2', '--model', 'resnet18_crn'])
    cfg = recipe_from_args(args)
    assert (cfg.dataset.kind, cfg.dataset.root) == ('rosbag2', '/bags/run1')
    assert dict(cfg.dataset.options) == {'image_topic': '/cam/image', 'origin': [47.3, 8.5, 400]}
    assert (cfg.epochs, cfg.model, cfg.optimizer.name) == (2, 'resnet18_crn', 'sgd')
    with pytest.raises(ConfigError, match='KEY=VALUE'):
        recipe_from_args(parser.parse_args(['--config', 'gem', '--dataset-option', 'x']))


def test_extra_datasets_train_as_separate_areas(tmp_path):
    from vl_attention.config import to_dict
    from vl_attention.models import build_model
    from vl_attention.training.data import load_training_data
    town = {'num_places': 6, 'held_out_places': 0, 'conditions': ['day'],
            'passes_per_condition': 2, 'width': 64, 'height': 48}
    cfg = load_recipe(str(_write(tmp_path / 'towns.yaml', {
        'dataset': {'kind': 'synthetic', 'root': str(tmp_path), 'options': town},
        'extra_datasets': [{'kind': 'synthetic', 'root': str(tmp_path),
                            'options': {**town, 'world_seed': 13}}]})))
    assert to_dict(cfg)['extra_datasets'] == [{'kind': 'synthetic', 'root': str(tmp_path),
                                               'options': {**town, 'world_seed': 13},
                                               'train_conditions': []}]
    data = load_training_data(cfg, build_model(model_config(cfg)).preprocessing)
    xs_m = data.dataset.positions_m[:, 0]
    second_area = xs_m > AREA_SPACING_M / 2
    first, second = np.flatnonzero(~second_area), np.flatnonzero(second_area)
    assert len(first) == len(second) == 12          # 6 places x 2 day drives per town
    # the same place of both drives pairs within a town, never across towns
    positive, negative = data.ground_truth.pair_masks(first, second)
    assert not positive.any() and negative.all()
    assert data.ground_truth.pair_masks(first, first)[0].any()
    with pytest.raises(ValueError, match='one coordinate frame'):
        replace(load_recipe('pose_attention'), extra_datasets=cfg.extra_datasets)
    with pytest.raises(ConfigError, match=r'extra_datasets\[0\].*unknown setting'):
        load_recipe(str(_write(tmp_path / 'bad.yaml', {'extra_datasets': [{'knd': 'x'}]})))


def _write(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_augmented_copies_are_repeatable_photometric_changes_of_their_image():
    from vl_attention.training.augment import augment, AugmentationConfig, copy_seeds
    seeds = copy_seeds(3, 2, seed=0).reshape(3, 3)  # per image: original, then its copies
    assert seeds[:, 0].tolist() == [0, 0, 0] and (seeds[:, 1:] > 0).all()
    image = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 1, 3))
    config = AugmentationConfig(copies=2)
    first, again = augment(image, config, 7), augment(image, config, 7)
    assert np.array_equal(first, again) and first.shape == image.shape
    assert first.dtype == np.uint8 and np.abs(first.astype(int) - image).mean() > 2
    assert not np.array_equal(first, augment(image, config, 8))
    with pytest.raises(ValueError, match='gamma'):
        AugmentationConfig(gamma=(2.0, 1.0))

"""The seed summary of the training benchmark: merging files, spread, refusals."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'train_synthetic_seeds.py'
SETUP = {'places': {'num_places': 72}, 'validation': {'world_seed': 11}, 'test_towns': [7, 23],
         'test_queries_per_condition': {'fog': 474, 'night': 474}, 'steps': 600, 'epochs': 6,
         'lr': 1e-3, 'augment_copies': 4, 'training_towns': [7, 13]}


@pytest.fixture(scope='module')
def seeds_module():
    spec = importlib.util.spec_from_file_location('train_synthetic_seeds', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scores(night, fog):
    return {'night': {'recall_at_1': night, 'pr_auc': 0.0},
            'fog': {'recall_at_1': fog, 'pr_auc': 0.0}}


def _row(family, trained, augmented, baseline=(0.1, 0.5)):
    return {'family': family, 'baseline': _scores(*baseline),
            'trained': {'test': _scores(*trained)}, 'augmented': {'test': _scores(*augmented)}}


def _write(path, rows, **fields):
    path.write_text(json.dumps({**SETUP, **fields, 'rows': rows}))
    return path


def test_seed_spread_merges_files_of_one_seed_and_keeps_families_every_seed_has(
        tmp_path, seeds_module):
    files = [
        _write(tmp_path / 'seed0.json', [_row('netvlad', (0.5, 0.9), (0.4, 0.8)),
                                         _row('haf', (0.2, 0.3), (0.1, 0.6))]),  # no 'seed': 0
        _write(tmp_path / 'seed1.json', [_row('netvlad', (0.3, 1.0), (0.6, 0.7))], seed=1),
        _write(tmp_path / 'seed1_haf.json', [_row('haf', (0.1, 0.4), (0.2, 0.5))], seed=1),
        _write(tmp_path / 'seed2.json', [_row('netvlad', (0.4, 0.8), (0.5, 0.9))], seed=2),
    ]
    by_seed = seeds_module.rows_by_seed(files)
    assert list(by_seed) == [0, 1, 2] and sorted(by_seed[1]) == ['haf', 'netvlad']
    summary = seeds_module.seed_spread(by_seed)
    assert list(summary) == ['netvlad']  # haf lacks seed 2
    night = summary['netvlad']['night']
    assert night['baseline'] == 0.1
    assert night['trained']['values'] == [0.5, 0.3, 0.4]
    assert night['trained']['mean'] == pytest.approx(0.4)
    assert (night['trained']['min'], night['trained']['max']) == (0.3, 0.5)
    assert night['trained']['lowest_margin'] == pytest.approx(0.2)
    assert summary['netvlad']['fog']['augmented']['lowest_margin'] == pytest.approx(0.2)
    assert set(seeds_module.seed_spread(seeds_module.rows_by_seed(files[:3]))) == {
        'netvlad', 'haf'}


def test_seed_spread_refuses_another_setup_and_a_family_measured_twice(tmp_path, seeds_module):
    first = _write(tmp_path / 'a.json', [_row('crn', (0.5, 0.9), (0.4, 0.8))])
    other_steps = _write(tmp_path / 'b.json', [_row('crn', (0.5, 0.9), (0.4, 0.8))], seed=1,
                         steps=300)
    with pytest.raises(ValueError, match=r"another setup .*\['steps'\]"):
        seeds_module.rows_by_seed([first, other_steps])
    again = _write(tmp_path / 'c.json', [_row('crn', (0.5, 0.9), (0.4, 0.8))], seed=0)
    with pytest.raises(ValueError, match='crn seed 0 is in two files'):
        seeds_module.rows_by_seed([first, again])
    with pytest.raises(ValueError, match='no result files'):
        seeds_module.rows_by_seed([])
    (tmp_path / 'broken.json').write_text('{"rows": [')
    with pytest.raises(ValueError, match='cannot read benchmark result .*broken.json'):
        seeds_module.rows_by_seed([first, tmp_path / 'broken.json'])
    (tmp_path / 'other.json').write_text('{"seed": 3}')
    with pytest.raises(ValueError, match='not a result of benchmarks/train_synthetic.py'):
        seeds_module.rows_by_seed([tmp_path / 'other.json'])


def test_seed_spread_refuses_seeds_whose_untrained_baseline_differs(tmp_path, seeds_module):
    files = [_write(tmp_path / 'a.json', [_row('crn', (0.5, 0.9), (0.4, 0.8))]),
             _write(tmp_path / 'b.json', [_row('crn', (0.5, 0.9), (0.4, 0.8), (0.2, 0.5))],
                    seed=1)]
    with pytest.raises(ValueError, match='crn: the untrained baseline differs'):
        seeds_module.seed_spread(seeds_module.rows_by_seed(files))


def test_update_replaces_the_remeasured_families_and_refuses_another_setup(seeds_module):
    previous = {**SETUP, 'seed': 1, 'rows': [_row('netvlad', (0.5, 0.9), (0.4, 0.8)),
                                             _row('haf', (0.1, 0.3), (0.1, 0.4))]}
    report = {**SETUP, 'seed': 1, 'rows': [_row('haf', (0.3, 0.9), (0.2, 0.8)),
                                           _row('crn', (0.4, 0.9), (0.4, 0.9))]}
    merged = seeds_module.replace_rows(previous, report)
    assert [row['family'] for row in merged['rows']] == ['netvlad', 'haf', 'crn']
    assert merged['rows'][0] == previous['rows'][0]
    assert merged['rows'][1] == report['rows'][0]
    assert merged['updated'] == [['crn', 'haf']]
    assert seeds_module.replace_rows(merged, report)['updated'] == [['crn', 'haf']] * 2
    with pytest.raises(ValueError, match=r"differs in \['seed'\].*new --out"):
        seeds_module.replace_rows(previous, {**report, 'seed': 2})
    with pytest.raises(ValueError, match=r"differs in \['steps'\]"):
        seeds_module.replace_rows(previous, {**report, 'steps': 300})
    # a result without 'seed' is seed 0
    assert seeds_module.replace_rows({**previous, 'seed': 0}, {
        key: value for key, value in report.items() if key != 'seed'})['rows'][1] == \
        report['rows'][0]

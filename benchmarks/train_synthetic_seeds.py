"""Mean and spread over seeds of ``benchmarks/train_synthetic.py`` results.

Usage: ``python -m benchmarks.train_synthetic_seeds [RESULT.json ...]``
(default: ``train_synthetic.json`` and every ``train_synthetic_seed*.json`` in
``benchmarks/results``).

For each family measured for every seed, and each test condition (night, fog),
prints the untrained baseline's Recall@1 and, for the trained and the
trained-with-augmentation weights, the mean, lowest and highest Recall@1 over
the seeds, and the lowest margin over the baseline. Files must come from the
same benchmark setup (places, validation, test towns, steps, learning rate):
only the seed may differ. One seed may come in several files (families run
separately). Prints a table and writes JSON.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from vl_attention.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / 'results'
CONDITIONS = ('night', 'fog')
KINDS = ('trained', 'augmented')
# what must match across the files for their seeds to be comparable
SETUP_KEYS = ('places', 'validation', 'test_towns', 'test_queries_per_condition', 'steps',
              'epochs', 'lr', 'augment_copies', 'training_towns')


def rows_by_seed(paths):
    """``{seed: {family: row}}`` of benchmark results measured with one setup.

    Several files may hold one seed (e.g. families run separately); a family
    measured twice for a seed, or a file measured with another setup, is refused.
    """
    if not paths:
        raise ValueError('no result files given')
    runs = [read_result(path) for path in paths]
    by_seed = {}
    for path, run in zip(paths, runs):
        changed = setup_differences(run, runs[0])
        if changed:
            raise ValueError(f'{path} was measured with another setup than {paths[0]} '
                             f'(differs in {changed}); rerun it with the same options')
        rows = by_seed.setdefault(result_seed(run), {})
        for row in run['rows']:
            if row['family'] in rows:
                raise ValueError(f'{path}: {row["family"]} seed {result_seed(run)} is in '
                                 f'two files; give each family and seed once')
            rows[row['family']] = row
    return dict(sorted(by_seed.items()))


def setup_differences(run, other):
    """Return the :data:`SETUP_KEYS` whose values differ between two results."""
    return [key for key in SETUP_KEYS if run.get(key) != other.get(key)]


def result_seed(run):
    """Return the recipe seed of a result (results older than ``--seed`` are seed 0)."""
    return run.get('seed', 0)


def check_replaceable(previous, report):
    """Refuse to put ``report``'s rows into ``previous`` unless setup and seed are the same."""
    changed = setup_differences(previous, report)
    if result_seed(previous) != result_seed(report):
        changed.append('seed')
    if changed:
        raise ValueError(f'the existing result was measured with another setup or seed '
                         f'(differs in {changed}); write to a new --out instead of --update')


def replace_rows(previous, report):
    """``previous`` result with ``report``'s family rows in place of its own (others kept).

    Both must come from one setup and seed (:func:`check_replaceable`):
    ``train_synthetic.py --update`` re-measures some families (e.g. after a
    change to their head) into an existing result file. The families
    re-measured are appended to ``updated``.
    """
    check_replaceable(previous, report)
    new_rows = {row['family']: row for row in report['rows']}
    rows = [new_rows.pop(row['family'], row) for row in previous['rows']]
    return {**previous, 'rows': rows + list(new_rows.values()),
            'updated': [*previous.get('updated', []), sorted(row['family']
                                                             for row in report['rows'])]}


def read_result(path):
    """One result file of ``benchmarks/train_synthetic.py``; a clear error if it is not one."""
    try:
        run = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f'cannot read benchmark result {path}: {error}') from None
    if not isinstance(run, dict) or not isinstance(run.get('rows'), list):
        raise ValueError(f'{path} is not a result of benchmarks/train_synthetic.py (no rows)')
    return run


def seed_spread(by_seed):
    """Per family of every seed: baseline, and per kind mean / min / max Recall@1."""
    seeds = list(by_seed.values())
    families = [family for family in seeds[0] if all(family in rows for rows in seeds)]
    summary = {}
    for family in families:
        rows = [rows[family] for rows in seeds]
        if any(row['baseline'] != rows[0]['baseline'] for row in rows):
            raise ValueError(f'{family}: the untrained baseline differs between seeds, so the '
                             f'runs measured different code or data; rerun them together')
        summary[family] = {}
        for condition in CONDITIONS:
            baseline = rows[0]['baseline'][condition]['recall_at_1']
            entry = {'baseline': baseline}
            for kind in KINDS:
                values = np.array([row[kind]['test'][condition]['recall_at_1'] for row in rows])
                entry[kind] = {'mean': float(values.mean()), 'min': float(values.min()),
                               'max': float(values.max()),
                               'lowest_margin': float(values.min() - baseline),
                               'values': values.tolist()}
            summary[family][condition] = entry
    return summary


def print_table(summary, seeds):
    """Print the Markdown table of the README."""
    print(f'Recall@1 over seeds {seeds}: mean (lowest-highest); margin = lowest minus baseline')
    print('| family | queries | untrained baseline | trained | margin | trained + augmentation '
          '| margin |')
    print('|---|---|---|---|---|---|---|')
    for family, conditions in summary.items():
        for condition, entry in conditions.items():
            cells = [f'{entry[kind]["mean"]:.3f} ({entry[kind]["min"]:.3f}-'
                     f'{entry[kind]["max"]:.3f}) | {entry[kind]["lowest_margin"]:+.3f}'
                     for kind in KINDS]
            print(f'| {family} | {condition} | {entry["baseline"]:.3f} | {cells[0]} | '
                  f'{cells[1]} |')


def main():
    """Summarise the seeds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('results', nargs='*', type=Path, default=[
        RESULTS / 'train_synthetic.json',
        *sorted(RESULTS.glob('train_synthetic_seed[0-9]*.json'))])
    parser.add_argument('--out', type=Path, default=RESULTS / 'train_synthetic_seeds.json')
    args = parser.parse_args()
    try:
        by_seed = rows_by_seed(args.results)
        summary = seed_spread(by_seed)
    except ValueError as error:
        parser.error(str(error))
    seeds = list(by_seed)
    print_table(summary, seeds)
    atomic_write_text(args.out, json.dumps(
        {'seeds': seeds, 'files': [path.name for path in args.results], 'families': summary},
        indent=2))


if __name__ == '__main__':
    main()

"""``vl-attention train`` and ``python -m vl_attention.training.train``: train a recipe.

Examples::

    vl-attention train --config config/training/netvlad.yaml --out runs/netvlad
    vl-attention train --config netvlad --out runs/netvlad --resume     # after a kill
    torchrun --nproc_per_node 4 -m vl_attention.training.train --config haf --out runs/haf
"""

import argparse
from dataclasses import replace
import json
import logging
from pathlib import Path
import sys
from typing import Any, Dict, List, Optional, Sequence

import yaml

from vl_attention.config import ConfigError, frozen_mapping
from vl_attention.errors import one_line, VLAttentionError
from vl_attention.training.config import load_recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the train options to an argparse parser."""
    parser.add_argument('--config', required=True,
                        help='recipe name (config/training/<name>.yaml) or YAML path')
    parser.add_argument('--out', type=Path, default=None,
                        help='run directory (default: runs/<recipe name>)')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --out from its last checkpoint')
    parser.add_argument('--model', default='', help='replace the recipe model (preset or YAML)')
    parser.add_argument('--dataset', nargs=2, metavar=('KIND', 'ROOT'),
                        help='replace the recipe dataset: a layout (README, "Training '
                             'datasets") and its root folder; the recipe\'s dataset options '
                             'are dropped')
    parser.add_argument('--dataset-option', action='append', default=[], metavar='KEY=VALUE',
                        help='a dataset adapter option (YAML value, e.g. image_topic=/cam or '
                             'origin=[47.3,8.5,400]); repeatable')
    parser.add_argument('--epochs', type=int, default=0, help='replace the recipe epochs')
    parser.add_argument('--steps-per-epoch', type=int, default=0)
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='')


def recipe_from_args(args: argparse.Namespace) -> Any:
    """Load the recipe and apply the command-line replacements."""
    cfg = load_recipe(args.config)
    changes: Dict[str, Any] = {}
    if args.model:
        changes['model'] = args.model
    if args.dataset:
        changes['dataset'] = replace(cfg.dataset, kind=args.dataset[0], root=args.dataset[1],
                                     options=frozen_mapping())
    if args.dataset_option:
        dataset = changes.get('dataset', cfg.dataset)
        changes['dataset'] = replace(dataset, options=frozen_mapping(
            {**dataset.options, **dataset_options(args.dataset_option)}))
    for name in ('epochs', 'steps_per_epoch', 'device'):
        if getattr(args, name):
            changes[name] = getattr(args, name)
    try:
        return replace(cfg, **changes)
    except ValueError as error:
        raise ConfigError(f'{args.config}: {error}') from error


def dataset_options(pairs: Sequence[str]) -> Dict[str, Any]:
    """Return ``--dataset-option KEY=VALUE`` pairs as a dict of YAML-parsed values."""
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition('=')
        if not separator or not key:
            raise ConfigError(f'--dataset-option {pair!r} must be KEY=VALUE')
        options[key] = yaml.safe_load(value)
    return options


def run(args: argparse.Namespace) -> int:
    """Train as the arguments say; print the summary's headline numbers."""
    from vl_attention.training.loop import fit
    cfg = recipe_from_args(args)
    out = args.out or Path('runs') / cfg.name
    summary = fit(cfg, out, resume=args.resume)
    if summary is not None:
        headline = {key: summary[key] for key in ('name', 'steps', 'images_per_second', 'best')}
        print(json.dumps(headline, indent=2))
        print(f'outputs in {Path(out).resolve()} (summary.json, model.yaml, export/)')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m vl_attention.training.train``."""
    parser = argparse.ArgumentParser(prog='python -m vl_attention.training.train',
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        return run(args)
    except VLAttentionError as error:   # bad recipe, data or run folder; anything else is a bug
        print(f'train: error: {one_line(error)}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())

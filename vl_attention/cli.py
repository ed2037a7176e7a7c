"""``vl-attention <subcommand>``: the offline tools and the demo.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args)``;
``_run_*`` turns arguments into frozen configs and calls library functions,
so no argparse Namespace reaches the library.
"""

import argparse
from dataclasses import fields, replace
import logging
from pathlib import Path
import sys

from vl_attention.engine.availability import BACKEND_NAMES
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.errors import one_line, VLAttentionError


def _add_embedder_arguments(parser):
    parser.add_argument('--model', default=EmbedderConfig.model,
                        help='model preset name or YAML path (default: %(default)s)')
    parser.add_argument('--backend', default='auto', choices=BACKEND_NAMES,
                        help='inference backend (default: %(default)s)')
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    parser.add_argument('--precision', default='fp32', choices=['fp32', 'fp16', 'int8'],
                        help='GPU backends only (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0 = default)')
    parser.add_argument('--cache-dir', default='', help='exported-model cache directory')


def _embedder_config(args):
    return EmbedderConfig(model=args.model, backend=args.backend, threads=args.threads,
                          cache_dir=args.cache_dir, device=args.device,
                          precision=args.precision)


def _add_build_map(subparsers):
    from vl_attention.mapping import commands
    parser = subparsers.add_parser('build-map', epilog=commands.EPILOG,
                                   help='build a map from images + poses or from rosbag2 files')
    parser.add_argument('--out', required=True, type=Path, help='map directory to write')
    commands.add_source_arguments(parser)
    commands.add_index_arguments(parser)
    _add_embedder_arguments(parser)


def _run_build_map(args):
    from vl_attention.mapping import commands
    from vl_attention.mapping.builder import main
    cfg = commands.build_config(args, _embedder_config(args))
    path = main(cfg, commands.source_inputs(args), args.out)
    print(f'map written to {path}')


def _add_map(subparsers):
    from vl_attention.mapping import commands
    parser = subparsers.add_parser('map', help='inspect or grow a map: map info | map add')
    actions = parser.add_subparsers(dest='map_action', required=True)
    info = actions.add_parser('info', help='print a map manifest and statistics')
    info.add_argument('map_dir', type=Path)
    info.add_argument('--verify', action='store_const', const='full', default='auto',
                      help='hash every file completely (slow for large maps)')
    add = actions.add_parser('add', epilog=commands.EPILOG,
                             help='append new places to a map (same model)')
    add.add_argument('map_dir', type=Path)
    commands.add_source_arguments(add)
    _add_embedder_arguments(add)


def _add_map_info_alias(subparsers):
    legacy = subparsers.add_parser('map-info', help='same as `map info`')
    legacy.add_argument('map_dir', type=Path)
    legacy.set_defaults(map_action='info', verify='auto')


def _run_map(args):
    from vl_attention.mapping import commands
    if args.map_action == 'info':
        from vl_attention.mapping.map_format import MapFormatError
        try:
            info = commands.map_info(args.map_dir, verify=args.verify)
        except MapFormatError as error:  # a damaged map: one line, exit 1
            print(f'vl-attention map info: {one_line(error)}', file=sys.stderr)
            return 1
        print(commands.format_map_info(info))
        return 0
    from vl_attention.engine.embedder import create_embedder
    from vl_attention.mapping.builder import add_to_map, make_source
    from vl_attention.mapping.map_format import carried_model_config
    # the map's own model (e.g. its fitted vocabulary), else the --model preset
    cfg = commands.build_config(args, carried_model_config(_embedder_config(args), args.map_dir),
                                with_index=False)
    path = add_to_map(args.map_dir, make_source(commands.source_inputs(args), cfg.origin),
                      embedder=create_embedder(cfg.embedder), cfg=cfg)
    print(f'map {path} updated')
    return 0


def _add_synth(subparsers):
    from vl_attention.data.synthetic import PRESETS
    parser = subparsers.add_parser('synth', help='render a synthetic town with exact poses')
    parser.add_argument('--preset', default='demo', choices=sorted(PRESETS))
    parser.add_argument('--out', required=True, type=Path)
    parser.add_argument('--seed', type=int, default=None, help='override the preset seed')
    parser.add_argument('--storage', choices=['mcap', 'sqlite3'], default=None,
                        help='also write rosbag2 files in this storage format')


def _run_synth(args):
    from vl_attention.data.synthetic import generate
    path = generate(args.preset, args.out, seed=args.seed, storage=args.storage, progress=True)
    print(f'synthetic world written to {path}')


def _add_demo(subparsers):
    parser = subparsers.add_parser('demo', help='map a synthetic town, localize another '
                                   'traversal through localize_node over ROS 2')
    parser.add_argument('--work-dir', type=Path, default=Path('demo_output'))
    parser.add_argument('--preset', default='demo')
    parser.add_argument('--frames', type=int, default=0, help='query frames (0 = all)')
    parser.add_argument('--rate-hz', type=float, default=10.0, help='publishing rate (Hz)')
    parser.add_argument('--dds-profile', default='', help="'' | fastdds | a Fast DDS XML path "
                        'for the node and the publisher (docs/transport.md)')


def _run_demo(args):
    from vl_attention.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig(work_dir=str(args.work_dir), preset=args.preset,
                                  frames=args.frames, rate_hz=args.rate_hz,
                                  dds_profile=args.dds_profile))
    return 0 if summary['fixes_received'] > 0 else 1


def _add_export(subparsers):
    parser = subparsers.add_parser('export', help='export a model to ONNX + model_card.json')
    parser.add_argument('--model', default=EmbedderConfig.model,
                        help='model preset name or YAML path (default: %(default)s)')
    parser.add_argument('--weights', default='',
                        help='checkpoint of the whole descriptor model (default: the weights '
                             'the preset names)')
    parser.add_argument('--out', required=True, type=Path, help='export directory to write')
    parser.add_argument('--height', type=int, default=0, help='input height (0 = preset)')
    parser.add_argument('--width', type=int, default=0, help='input width (0 = preset)')
    parser.add_argument('--dynamic-size', action='store_true',
                        help='dynamic H x W in the graph (batch is always dynamic)')


def _run_export(args):
    from vl_attention.engine.export import ExportConfig, main, read_export
    cfg = ExportConfig(model=args.model, weights=args.weights, input_height=args.height,
                       input_width=args.width, dynamic_size=args.dynamic_size)
    card = read_export(main(cfg, args.out))
    prep = card.preprocessing
    print(f'exported {card.model_name} to {args.out}: {prep.input_width}x{prep.input_height} '
          f'{prep.colour_order}, {card.descriptor_dim}-D, fingerprint {card.fingerprint}, '
          f'opset {card.onnx_opset}')


def _add_evaluate_vpr(subparsers):
    parser = subparsers.add_parser('evaluate-vpr', help='Recall@N, PR curve and latency on a '
                                   'place-recognition dataset folder')
    parser.add_argument('--dataset', required=True, nargs='+', metavar=('[KIND]', 'ROOT'),
                        help='a dataset: ROOT, a folder with database/, queries/ and ground '
                        'truth (kind vpr_layout), or KIND ROOT, any layout training reads '
                        '(docs/datasets.md), e.g. pittsburgh ROOT')
    parser.add_argument('--dataset-option', action='append', default=[], metavar='KEY=VALUE',
                        help='a dataset adapter option (YAML value, e.g. variant=250k); '
                        'repeatable')
    parser.add_argument('--split', default=None, choices=('train', 'val', 'test'),
                        help='the split whose database and query images are scored '
                        '(default: test, else val, else train)')
    parser.add_argument('--out', required=True, type=Path, help='report directory')
    parser.add_argument('--positive-distance-m', type=float, default=25.0,
                        help='positive radius for database.csv/queries.csv ground truth')
    parser.add_argument('--sequential', type=int, default=None, metavar='K',
                        help='ground truth: query i matches database i-K..i+K')
    parser.add_argument('--models', default='',
                        help='comma-separated model presets compared in one table')
    parser.add_argument('--ratio-test-exclusion-m', type=float, default=25.0,
                        help='confidence as the node: runner-up farther than this from the best '
                        '(datasets with positions; the node parameter ratio_test_exclusion_m)')
    parser.add_argument('--ratio-test-exclusion-frames', type=int, default=None,
                        help='the same for index-only datasets, in frames (default: '
                        '--sequential K, else 0 = plain ratio test)')
    parser.add_argument('--filter', action='store_true',
                        help='the queries are one route-ordered sequence: also run the '
                        "node's place filter over them (filtered Recall@1, fixes, precision)")
    parser.add_argument('--no-progress', action='store_true',
                        help='no progress bars (they are also off when stderr is not a TTY)')
    _add_embedder_arguments(parser)


def _evaluation_dataset(args):
    """Return the PlaceDataset of ``--dataset [KIND] ROOT`` and ``--dataset-option``."""
    from vl_attention.config import ConfigError
    from vl_attention.evaluation.place_dataset import DatasetError
    from vl_attention.training.sources import DATASETS, load_dataset
    from vl_attention.training.train import dataset_options
    if len(args.dataset) > 2:
        raise ConfigError(f'--dataset takes ROOT or KIND ROOT, got {len(args.dataset)} values: '
                          f'{args.dataset}')
    kind, root = args.dataset if len(args.dataset) == 2 else ('vpr_layout', args.dataset[0])
    DATASETS.get(kind)   # an unknown kind fails first, listing the known ones
    options = dataset_options(args.dataset_option)
    if args.sequential is not None:
        if kind != 'vpr_layout':
            raise ConfigError(f'--sequential K is ground truth of vpr_layout folders; {kind} '
                              'brings its own')
        options['sequential'] = args.sequential
    if not Path(root).expanduser().exists():
        raise DatasetError(f'--dataset {kind} {root}: {root} does not exist')
    return load_dataset(kind, root=Path(root).expanduser(), **options)


def _run_evaluate_vpr(args):
    from vl_attention.evaluation.evaluate_vpr import main, VPREvalConfig
    models = tuple(name for name in args.models.split(',') if name)
    cfg = VPREvalConfig(embedder=_embedder_config(args), models=models,
                        positive_distance_m=args.positive_distance_m,
                        progress=not args.no_progress,
                        ratio_test_exclusion_m=args.ratio_test_exclusion_m,
                        ratio_test_exclusion_frames=args.ratio_test_exclusion_frames,
                        filter=args.filter, split=args.split,
                        sequential=args.sequential)
    out = main(cfg, _evaluation_dataset(args), args.out)
    print((out / 'report.md').read_text())


def _add_evaluate_bag(subparsers):
    from vl_attention.localization import LocalizerConfig
    parser = subparsers.add_parser('evaluate-bag', help='localize every frame of query rosbags '
                                   'against a map and score it against ground truth')
    parser.add_argument('--map', required=True, type=Path,
                        help='map directory; with --models, a directory of maps named by preset')
    parser.add_argument('--bag', required=True, type=Path, action='append',
                        help='query rosbag2 directory (mcap or sqlite3); repeat for several')
    parser.add_argument('--out', type=Path, default=Path('evaluation'),
                        help='report directory (default: %(default)s)')
    parser.add_argument('--image-topic', default='/camera/image_raw')
    parser.add_argument('--gt-topic', default='/ground_truth/pose',
                        help='NavSatFix, PoseStamped, PoseWithCovarianceStamped or Odometry')
    parser.add_argument('--gt-origin', nargs=3, type=float, metavar=('LAT', 'LON', 'ALT'),
                        help='geodetic origin of a pose ground-truth frame (default: the map '
                             'origin)')
    parser.add_argument('--max-gap-s', type=float, default=1.0,
                        help='longest ground-truth gap to interpolate over (default: '
                             '%(default)s)')
    parser.add_argument('--max-frames', type=int, default=0, help='image messages (0 = all)')
    parser.add_argument('--realtime', action='store_true',
                        help='replay into a live localize_node over ROS 2 instead')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='realtime replay speed x recorded (default: %(default)s)')
    parser.add_argument('--models', default='',
                        help='comma-separated model presets compared in one table')
    parser.add_argument('--export-dir', default='', help='a `vl-attention export` directory')
    parser.add_argument('--tracking', choices=('full', 'filter', 'off'), default='full',
                        help='offline pipeline: place filter + PnP (the node default), the '
                             'filter only, or single frames (default: %(default)s)')
    parser.add_argument('--pose-source', choices=('pnp', 'retrieval', 'regression'),
                        default='pnp', help='the published pose, as the node parameter '
                        'pose_source: PnP where verified, the filter or single-frame '
                        'estimate, or the regressed pose of a pose_attention model (default: '
                        '%(default)s)')
    localizer = parser.add_argument_group('localizer (as the node parameters)')
    for item in fields(LocalizerConfig):
        localizer.add_argument('--' + item.name.replace('_', '-'), type=type(item.default),
                               default=item.default, help='(default: %(default)s)')
    _add_embedder_arguments(parser)


def _run_evaluate_bag(args):
    from vl_attention.evaluation.evaluate_bag import BagEvalConfig, main
    from vl_attention.geo import GeodeticOrigin
    from vl_attention.localization import LocalizerConfig
    localizer = LocalizerConfig(**{item.name: getattr(args, item.name)
                                   for item in fields(LocalizerConfig)})
    cfg = BagEvalConfig(
        embedder=replace(_embedder_config(args), export_dir=args.export_dir),
        localizer=localizer, models=tuple(name for name in args.models.split(',') if name),
        image_topic=args.image_topic, gt_topic=args.gt_topic,
        gt_origin=GeodeticOrigin(*args.gt_origin) if args.gt_origin else None,
        max_gap_s=args.max_gap_s, max_frames=args.max_frames, realtime=args.realtime,
        rate=args.rate, tracking=args.tracking, pose_source=args.pose_source)
    out = main(cfg, args.bag, args.map, args.out)
    print((out / 'report.md').read_text())


def _add_train(subparsers):
    from vl_attention.training.train import add_arguments
    add_arguments(subparsers.add_parser(
        'train', help='train a model recipe (config/training/) with checkpoints, resume, '
        'validation and ONNX export; torchrun for several processes'))


def _run_train(args):
    from vl_attention.training.train import run
    return run(args)


COMMANDS = {
    'export': (_add_export, _run_export),
    'build-map': (_add_build_map, _run_build_map),
    'map': (_add_map, _run_map),
    'map-info': (_add_map_info_alias, _run_map),
    'synth': (_add_synth, _run_synth),
    'demo': (_add_demo, _run_demo),
    'evaluate-vpr': (_add_evaluate_vpr, _run_evaluate_vpr),
    'evaluate-bag': (_add_evaluate_bag, _run_evaluate_bag),
    'train': (_add_train, _run_train),
}


def build_parser():
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog='vl-attention', description=__doc__.splitlines()[0])
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for add, _ in COMMANDS.values():
        add(subparsers)
    return parser


def main(argv=None):
    """Entry point of ``vl-attention``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        return COMMANDS[args.command][1](args) or 0
    except VLAttentionError as error:   # bad input, files or backends; anything else is a bug
        print(f'vl-attention {args.command}: error: {one_line(error)}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())

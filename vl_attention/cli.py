"""``vl-attention <subcommand>``: the offline tools and the demo.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args)``;
``_run_*`` turns arguments into frozen configs and calls library functions,
so no argparse Namespace reaches the library.
"""

import argparse
import json
import logging
from pathlib import Path
import sys

from vl_attention.config import ConfigError
from vl_attention.engine.embedder import EmbedderConfig
from vl_attention.geo import GeodeticOrigin

LOG = logging.getLogger('vl_attention')


def _add_embedder_arguments(parser):
    parser.add_argument('--model', default=EmbedderConfig.model,
                        help='model preset name or YAML path (default: %(default)s)')
    parser.add_argument('--backend', default='auto', choices=['auto', 'onnxruntime', 'torch'],
                        help='inference backend (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0 = default)')
    parser.add_argument('--cache-dir', default='', help='exported-model cache directory')


def _embedder_config(args):
    return EmbedderConfig(model=args.model, backend=args.backend, threads=args.threads,
                          cache_dir=args.cache_dir)


def _add_build_map(subparsers):
    parser = subparsers.add_parser('build-map', help='build a map from images + poses.csv')
    parser.add_argument('--images', required=True, type=Path, help='folder of database images')
    parser.add_argument('--poses', required=True, type=Path,
                        help='poses.csv: image,stamp_ns,latitude_deg,longitude_deg,'
                             'altitude_m,qx,qy,qz,qw')
    parser.add_argument('--out', required=True, type=Path, help='map directory to write')
    parser.add_argument('--origin', nargs=3, type=float, metavar=('LAT', 'LON', 'ALT'),
                        help='geodetic origin of the local ENU frame (default: first pose)')
    _add_embedder_arguments(parser)


def _run_build_map(args):
    from vl_attention.mapping.builder import main, MapBuildConfig
    origin = GeodeticOrigin(*args.origin) if args.origin else None
    cfg = MapBuildConfig(embedder=_embedder_config(args), origin=origin)
    path = main(cfg, (args.images, args.poses), args.out)
    print(f'map written to {path}')


def _add_map_info(subparsers):
    parser = subparsers.add_parser('map-info', help='print a map manifest and statistics')
    parser.add_argument('map_dir', type=Path)


def _run_map_info(args):
    from dataclasses import asdict

    import numpy as np

    from vl_attention.mapping import load_map
    loaded = load_map(args.map_dir)
    positions = loaded.records.position_enu_m
    info = asdict(loaded.manifest) | {'statistics': {
        'extent_east_m': float(np.ptp(positions[:, 0])) if len(positions) else 0.0,
        'extent_north_m': float(np.ptp(positions[:, 1])) if len(positions) else 0.0,
        'first_stamp_ns': int(loaded.records.stamp_ns.min()),
        'last_stamp_ns': int(loaded.records.stamp_ns.max())}}
    print(json.dumps(info, indent=2))


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


def _run_demo(args):
    from vl_attention.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig(work_dir=str(args.work_dir), preset=args.preset,
                                  frames=args.frames, rate_hz=args.rate_hz))
    return 0 if summary['fixes_received'] > 0 else 1


def _add_export(subparsers):
    parser = subparsers.add_parser('export', help='export a model to ONNX + model_card.json')
    parser.add_argument('--model', default=EmbedderConfig.model,
                        help='model preset name or YAML path (default: %(default)s)')
    parser.add_argument('--weights', default='',
                        help='checkpoint of the whole descriptor model (default: the preset\'s '
                             'own weights)')
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


COMMANDS = {
    'export': (_add_export, _run_export),
    'build-map': (_add_build_map, _run_build_map),
    'map-info': (_add_map_info, _run_map_info),
    'synth': (_add_synth, _run_synth),
    'demo': (_add_demo, _run_demo),
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
    except (ConfigError, ValueError, RuntimeError, OSError) as error:
        print(f'vl-attention {args.command}: error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())

"""Named world presets and the ``generate`` entry point (hloc style ``main(cfg, out_dir)``).

Output layout::

    <out>/world.json                      seed, preset, GeodeticOrigin, camera, traversals
    <out>/<traversal>/images/000000.png   RGB frames
    <out>/<traversal>/poses.csv           exact ground truth per frame
    <out>/<traversal>/camera_info.yaml
    <out>/bags/<traversal>/               rosbag2 (mcap or sqlite3), only with ``storage``
"""

import argparse
from dataclasses import asdict, dataclass, field, replace
import logging
from pathlib import Path
import shutil

import numpy as np
from tqdm import tqdm

from vl_attention.config import ConfigError
from vl_attention.data.synthetic.camera import PinholeCamera
from vl_attention.data.synthetic.conditions import get_condition
from vl_attention.data.synthetic.occluders import place_occluders
from vl_attention.data.synthetic.render import render
from vl_attention.data.synthetic.town import generate_town, TownConfig
from vl_attention.data.synthetic.traversal import plan_traversal, TraversalConfig
from vl_attention.data.synthetic.writers import ImageFolderWriter, write_world_json
from vl_attention.io import json_safe, make_directory

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraversalSpec:
    """One traversal of a preset: its name, condition preset and driving parameters."""

    name: str
    condition: str = 'day'
    traversal: TraversalConfig = field(default_factory=TraversalConfig)
    occluder_density: float = 0.0


@dataclass(frozen=True)
class WorldPreset:
    """A town, a camera and the traversals to render."""

    name: str
    seed: int
    town: TownConfig
    width: int
    height: int
    hfov_deg: float
    traversals: tuple
    bag_compressed: bool = False

    def camera(self):
        """Return the PinholeCamera of the preset."""
        return PinholeCamera.from_fov(self.width, self.height, self.hfov_deg)


def _drive(route_seed=0, offset_m=2.0, frames=100, heading_deg=0.0, pitch_deg=0.0, seed=0,
           start_m=0.0, speed_mps=10.0, rate_hz=10.0):
    return TraversalConfig(route_seed=route_seed, lateral_offset_m=offset_m, num_frames=frames,
                           heading_jitter_deg=heading_deg, pitch_jitter_deg=pitch_deg,
                           jitter_seed=seed, start_offset_m=start_m, speed_mps=speed_mps,
                           frame_rate_hz=rate_hz)


PRESETS = {
    'tiny': WorldPreset(
        name='tiny', seed=7, width=160, height=120, hfov_deg=80.0,
        town=TownConfig(blocks_x=2, blocks_y=2, block_min_m=35.0, block_max_m=45.0,
                        max_floors=4, facade_styles=5),
        traversals=(
            TraversalSpec('map_day', 'day', _drive(frames=24, speed_mps=10.0, rate_hz=5.0)),
            TraversalSpec('query_night', 'night',
                          _drive(offset_m=1.5, frames=24, heading_deg=3.0, seed=1, start_m=1.0,
                                 speed_mps=10.0, rate_hz=5.0), occluder_density=0.3))),
    'demo': WorldPreset(
        name='demo', seed=42, width=320, height=240, hfov_deg=80.0,
        town=TownConfig(blocks_x=3, blocks_y=3),
        traversals=(
            TraversalSpec('map_day', 'day', _drive(frames=300)),
            TraversalSpec('query_dusk', 'dusk',
                          _drive(offset_m=1.0, frames=300, heading_deg=4.0, pitch_deg=1.5,
                                 seed=1, start_m=0.5), occluder_density=0.4))),
    'benchmark': WorldPreset(
        name='benchmark', seed=2024, width=320, height=240, hfov_deg=80.0,
        town=TownConfig(blocks_x=5, blocks_y=5),
        traversals=(
            TraversalSpec('map_day', 'day', _drive(route_seed=3, frames=5000)),
            TraversalSpec('query_night', 'night',
                          _drive(route_seed=3, offset_m=1.2, frames=5000, heading_deg=4.0,
                                 pitch_deg=1.5, seed=1, start_m=0.5), occluder_density=0.2),
            TraversalSpec('query_fog', 'fog',
                          _drive(route_seed=3, offset_m=1.6, frames=5000, heading_deg=5.0,
                                 pitch_deg=2.0, seed=2, start_m=0.25), occluder_density=0.5))),
}


def get_preset(name):
    """Look up a WorldPreset by name."""
    if name not in PRESETS:
        raise ConfigError(f'unknown synthetic world preset {name!r}; known: '
                          f'{", ".join(sorted(PRESETS))}')
    return PRESETS[name]


def frame_seed(world_seed, traversal_index, frame_index):
    """Seed of one frame's sensor noise and rain."""
    return int(np.random.SeedSequence([world_seed, traversal_index, frame_index])
               .generate_state(1)[0])


def render_traversal(town, camera, traversal, condition, *, occluders=None, seed=0):
    """Yield ``(index, image_rgb)`` for every frame of a planned traversal."""
    for k in range(len(traversal)):
        yield k, render(town, camera, traversal.positions_enu_m[k],
                        traversal.quaternions_xyzw[k], condition,
                        frame_seed(seed, 0, k), occluders=occluders)


def _write_traversal(town, camera, preset, index, spec, out_dir, storage, progress, seed):
    """Render one traversal into its folder (and bag); return its world.json entry."""
    from vl_attention.data.synthetic.bags import RosbagWriter

    condition = get_condition(spec.condition, occluder_density=spec.occluder_density)
    traversal = plan_traversal(town, spec.traversal)
    occluders = place_occluders(town, spec.occluder_density, seed * 1000 + index)
    folder = out_dir / spec.name
    bag_path = out_dir / 'bags' / spec.name if storage else None
    for path in (folder, bag_path):
        if path is not None and path.exists():
            shutil.rmtree(path)
    writers = [ImageFolderWriter(folder, camera, town.origin)]
    if bag_path is not None:
        bag_path.parent.mkdir(parents=True, exist_ok=True)
        writers.append(RosbagWriter(bag_path, camera, town.origin, storage=storage,
                                    compressed=preset.bag_compressed))
    frames = tqdm(range(len(traversal)), desc=spec.name, disable=not progress, unit='frame')
    for k in frames:
        image = render(town, camera, traversal.positions_enu_m[k],
                       traversal.quaternions_xyzw[k], condition, frame_seed(seed, index, k),
                       occluders=occluders)
        for writer in writers:
            writer.write(image, traversal.stamps_ns[k], traversal.positions_enu_m[k],
                         traversal.quaternions_xyzw[k])
    for writer in writers:
        writer.close()
    return {'name': spec.name, 'path': spec.name, 'condition': asdict(condition),
            'traversal': asdict(spec.traversal), 'num_frames': len(traversal),
            'loop_length_m': traversal.loop_length_m, 'occluders': len(occluders),
            'bag': str(bag_path.relative_to(out_dir)) if bag_path else None,
            'bag_storage': storage}


def generate(preset, out_dir, *, seed=None, storage=None, progress=True):
    """Generate a synthetic world preset into ``out_dir``; return ``out_dir``.

    ``storage`` ('mcap' or 'sqlite3') also writes every traversal as a rosbag2.
    """
    config = get_preset(preset) if isinstance(preset, str) else preset
    if seed is not None:
        config = replace(config, seed=int(seed))
    if storage not in (None, 'mcap', 'sqlite3'):
        raise ConfigError(f'unknown bag storage {storage!r}; known: mcap, sqlite3')
    out_dir = make_directory(out_dir, 'synthetic world directory')
    camera = config.camera()
    town = generate_town(config.seed, config.town)
    entries = [_write_traversal(town, camera, config, i, spec, out_dir, storage, progress,
                                config.seed) for i, spec in enumerate(config.traversals)]
    world = {'generator': 'vl_attention.data.synthetic', 'preset': config.name,
             'seed': config.seed, 'origin': asdict(town.origin), 'camera': camera.to_dict(),
             'frames': {'pose_frame': 'ENU at origin; camera body x forward, y left, z up',
                        'image_frame_id': camera.frame_id},
             'town': asdict(config.town), 'traversals': entries}
    write_world_json(out_dir / 'world.json', json_safe(world))
    LOGGER.info('wrote synthetic world %r to %s', config.name, out_dir)
    return out_dir


def main(argv=None):
    """Command line: ``python -m vl_attention.data.synthetic.presets demo out/``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('preset', choices=sorted(PRESETS))
    parser.add_argument('out_dir', type=Path)
    parser.add_argument('--seed', type=int, default=None)
    parser.add_argument('--storage', choices=['mcap', 'sqlite3'], default=None)
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    generate(args.preset, args.out_dir, seed=args.seed, storage=args.storage,
             progress=not args.no_progress)


if __name__ == '__main__':
    main()

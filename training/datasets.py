"""Small generated place-recognition and pose-regression sets from the synthetic world.

A route through the procedural town is sampled at ``num_places`` places,
``place_spacing_m`` apart. The route is driven once per *pass*; each pass has
an appearance condition (day, dusk, night, fog, ...) and its own small pose
jitter (lateral offset, start offset along the route, smooth heading jitter),
so frame ``k`` of every pass shows place ``k`` from a slightly different pose.
Ground truth is exact: positions in metres (ENU at the world's origin) and the
camera orientation.

Two images show the *same place* when their positions lie within
``positive_distance_m``; they are *negatives* of each other beyond
``negative_distance_m`` (in between: neither, as in the NetVLAD protocol).
Place-recognition splits keep the held-out places away from the training
places by at least ``negative_distance_m``; the database is the held-out places
under the first condition, the queries are the same places under the others.
"""

from dataclasses import asdict, dataclass, field, fields
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.data.synthetic.camera import PinholeCamera
from vl_attention.data.synthetic.conditions import get_condition
from vl_attention.data.synthetic.presets import frame_seed
from vl_attention.data.synthetic.render import render
from vl_attention.data.synthetic.town import generate_town, TownConfig
from vl_attention.data.synthetic.traversal import plan_traversal, TraversalConfig
from vl_attention.io import atomic_path

LOGGER = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass(frozen=True)
class PlaceSetConfig:
    """Which places of which town are rendered, how often, and under which conditions."""

    world_seed: int = 7
    town: TownConfig = field(default_factory=lambda: TownConfig(blocks_x=3, blocks_y=3))
    route_seed: int = 0
    width: int = 160
    height: int = 120
    hfov_deg: float = 80.0
    num_places: int = 72
    place_spacing_m: float = 6.0
    conditions: Tuple[str, ...] = ('day', 'dusk', 'night', 'fog')
    passes_per_condition: int = 1
    lateral_offset_m: float = 2.0
    lateral_jitter_m: float = 0.8
    along_jitter_m: float = 1.0
    heading_jitter_deg: float = 4.0
    jitter_seed: int = 0
    positive_distance_m: float = 4.0
    negative_distance_m: float = 15.0
    held_out_places: int = 24

    def __post_init__(self) -> None:
        if self.num_places < 2 or self.passes_per_condition < 1 or not self.conditions:
            raise ConfigError('need num_places >= 2, passes_per_condition >= 1 and a condition')
        if not 0 < self.positive_distance_m <= self.negative_distance_m:
            raise ConfigError(f'need 0 < positive_distance_m ({self.positive_distance_m}) <= '
                              f'negative_distance_m ({self.negative_distance_m})')
        if not 0 <= self.held_out_places < self.num_places:
            raise ConfigError(f'held_out_places={self.held_out_places} must lie in '
                              f'[0, num_places={self.num_places})')
        for name in self.conditions:
            get_condition(name)  # unknown names fail here, listing the known ones

    @property
    def num_passes(self) -> int:
        """Number of drives along the route (conditions x passes per condition)."""
        return len(self.conditions) * self.passes_per_condition

    def cache_key(self) -> str:
        """Short digest of every setting (the cache file name derives from it)."""
        text = json.dumps([CACHE_VERSION, asdict(self)], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PlaceViews:
    """Rendered views with ground truth; every array has one row per image."""

    images: np.ndarray          # (N, H, W, 3) uint8 RGB
    positions_m: np.ndarray     # (N, 3) ENU metres
    quaternions_xyzw: np.ndarray  # (N, 4) camera body orientation in ENU
    place_ids: np.ndarray       # (N,) index of the place along the route
    pass_ids: np.ndarray        # (N,) index of the drive
    conditions: np.ndarray      # (N,) condition name of the drive

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.images)

    def subset(self, mask: Any) -> 'PlaceViews':
        """Select views by a boolean mask or an index array."""
        return PlaceViews(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})


@dataclass(frozen=True)
class PlaceRecognitionSplits:
    """Training views, and held-out database (first condition) / query (other) views."""

    train: PlaceViews
    database: PlaceViews
    queries: PlaceViews


def _pass_traversal(config: PlaceSetConfig, town: Any, pass_index: int,
                    rng: np.random.Generator) -> Any:
    """Traversal of one drive: the route with this drive's offsets and heading jitter."""
    lateral_m = config.lateral_offset_m + rng.uniform(-1, 1) * config.lateral_jitter_m
    traversal = plan_traversal(town, TraversalConfig(
        route_seed=config.route_seed, lateral_offset_m=lateral_m,
        heading_jitter_deg=config.heading_jitter_deg,
        jitter_seed=config.jitter_seed * 1000 + pass_index, speed_mps=config.place_spacing_m,
        frame_rate_hz=1.0, num_frames=config.num_places,
        start_offset_m=rng.uniform(-1, 1) * config.along_jitter_m))
    if config.num_places * config.place_spacing_m + config.negative_distance_m \
            > traversal.loop_length_m:
        raise ConfigError(f'{config.num_places} places x {config.place_spacing_m} m do not fit '
                          f'on the {traversal.loop_length_m:.0f} m route; use fewer places, a '
                          'smaller spacing or a larger town')
    return traversal


def render_place_views(config: PlaceSetConfig) -> PlaceViews:
    """Render every pass of a :class:`PlaceSetConfig` (about 15 ms per 160x120 frame)."""
    town = generate_town(config.world_seed, config.town)
    camera = PinholeCamera.from_fov(config.width, config.height, config.hfov_deg)
    rng = np.random.default_rng([config.world_seed, config.jitter_seed, 0x9ace])
    columns: Dict[str, List[Any]] = {f.name: [] for f in fields(PlaceViews)}
    for pass_index in range(config.num_passes):
        name = config.conditions[pass_index // config.passes_per_condition]
        condition = get_condition(name)
        traversal = _pass_traversal(config, town, pass_index, rng)
        for k in range(config.num_places):
            columns['images'].append(render(
                town, camera, traversal.positions_enu_m[k], traversal.quaternions_xyzw[k],
                condition, frame_seed(config.world_seed, pass_index, k)))
        columns['positions_m'].append(traversal.positions_enu_m)
        columns['quaternions_xyzw'].append(traversal.quaternions_xyzw)
        columns['place_ids'].append(np.arange(config.num_places))
        columns['pass_ids'].append(np.full(config.num_places, pass_index))
        columns['conditions'].append(np.full(config.num_places, name))
    stack = {'images': np.stack}
    return PlaceViews(**{key: stack.get(key, np.concatenate)(value)
                         for key, value in columns.items()})


def load_place_views(config: PlaceSetConfig, cache_dir: str | Path) -> PlaceViews:
    """Load the views of ``config`` from ``cache_dir``; render and cache them on first use."""
    path = Path(cache_dir) / f'places_{config.cache_key()}.npz'
    if path.is_file():
        with np.load(path) as arrays:
            return PlaceViews(**{f.name: arrays[f.name] for f in fields(PlaceViews)})
    views = render_place_views(config)
    with atomic_path(path) as temporary, open(temporary, 'wb') as stream:
        np.savez(stream, **{f.name: getattr(views, f.name) for f in fields(PlaceViews)})
    LOGGER.info('rendered %d views into %s', len(views), path)
    return views


def place_recognition_splits(views: PlaceViews,
                             config: PlaceSetConfig) -> PlaceRecognitionSplits:
    """Split views by place: held-out places are the last ``held_out_places`` on the route.

    Training places closer than ``negative_distance_m`` to a held-out place are
    dropped, so no training image shows a held-out place.
    """
    held_out = views.place_ids >= config.num_places - config.held_out_places
    held_out_xy = views.positions_m[held_out, :2]
    gap_m = np.linalg.norm(views.positions_m[:, None, :2] - held_out_xy[None], axis=-1)
    train = ~held_out
    if held_out.any():           # held_out_places = 0: every place trains
        train &= gap_m.min(axis=1) >= config.negative_distance_m
    first = views.conditions == config.conditions[0]
    return PlaceRecognitionSplits(train=views.subset(train),
                                  database=views.subset(held_out & first),
                                  queries=views.subset(held_out & ~first))


def split_by_pass(views: PlaceViews,
                  held_out_passes: Sequence[int]) -> Tuple[PlaceViews, PlaceViews]:
    """Split views into (training, held-out) by the drives they come from (pose regression)."""
    held_out = np.isin(views.pass_ids, np.asarray(held_out_passes))
    if held_out.all() or not held_out.any():
        raise ConfigError(f'held_out_passes={list(held_out_passes)} must name some but not all '
                          f'of the passes {sorted(set(views.pass_ids.tolist()))}')
    return views.subset(~held_out), views.subset(held_out)


def poses_wxyz(positions_m: np.ndarray, quaternions_xyzw: np.ndarray) -> np.ndarray:
    """``(N, 7)`` float32 poses: position and unit quaternion ``(w, x, y, z)`` with w >= 0."""
    quaternions = np.asarray(quaternions_xyzw, np.float64)
    quaternions = quaternions / np.linalg.norm(quaternions, axis=1, keepdims=True)
    quaternions = np.where(quaternions[:, 3:] < 0, -quaternions, quaternions)
    return np.concatenate([positions_m, quaternions[:, [3, 0, 1, 2]]], axis=1).astype(np.float32)

"""Procedural town: a grid of irregular blocks with streets, buildings, trees and lights.

Everything is drawn from ``numpy.random.default_rng(seed)`` objects, so a seed and a
:class:`TownConfig` fix the world exactly.  Facades are picked from a small pool
of styles and sizes, and whole block sides of identical row houses and chain
stores occur, so the town shows the perceptual aliasing of real streets.
"""

from dataclasses import dataclass, field, replace
import logging

import cv2
import numpy as np

from vl_attention.config import ConfigError
from vl_attention.data.synthetic import textures
from vl_attention.data.synthetic.geometry import QuadBuilder, QuadSet
from vl_attention.data.synthetic.ground import ground_texture
from vl_attention.data.synthetic.textures import AtlasBuilder, Material
from vl_attention.geo import GeodeticOrigin

LOGGER = logging.getLogger(__name__)
UP = np.array([0.0, 0.0, 1.0])
CORNER_RESERVE_M = 14.0
LIGHT_MAP_TEXEL_M = 0.5
LIGHT_POOL_SIGMA_M = 3.9


@dataclass(frozen=True)
class TownConfig:
    """Size and look of a procedural town."""

    blocks_x: int = 4
    blocks_y: int = 4
    block_min_m: float = 45.0
    block_max_m: float = 75.0
    road_width_m: float = 9.0
    sidewalk_width_m: float = 3.0
    max_floors: int = 6
    facade_styles: int = 10
    chain_stores: int = 3
    park_probability: float = 0.1
    row_house_probability: float = 0.25
    tree_spacing_m: float = 16.0
    light_spacing_m: float = 28.0
    ground_texel_m: float = 0.2
    origin: GeodeticOrigin = field(
        default_factory=lambda: GeodeticOrigin(47.3769, 8.5417, 408.0))

    def __post_init__(self):
        if self.blocks_x < 1 or self.blocks_y < 1:
            raise ConfigError(f'a town needs at least 1x1 blocks, got '
                              f'{self.blocks_x}x{self.blocks_y}')
        if not 20.0 <= self.block_min_m <= self.block_max_m:
            raise ConfigError('need 20 <= block_min_m <= block_max_m')


@dataclass(frozen=True)
class Town:
    """Generated world: geometry, texture atlas and the street network."""

    seed: int
    config: TownConfig
    quads: QuadSet
    atlas: textures.Atlas
    street_x_m: np.ndarray
    street_y_m: np.ndarray
    lights_enu_m: np.ndarray
    facade_quad_ids: np.ndarray
    quad_material_hint: np.ndarray
    vehicle_textures: tuple
    pedestrian_textures: tuple
    light_map: np.ndarray
    light_map_corner_m: tuple

    @property
    def origin(self):
        """Return the GeodeticOrigin of the town's ENU frame."""
        return self.config.origin

    @property
    def street_half_width_m(self):
        """Distance from a street centre line to the building line."""
        return self.config.road_width_m / 2 + self.config.sidewalk_width_m


def _street_lines(n_blocks, config, rng):
    """Centre-line coordinates of the n_blocks + 1 parallel streets, centred on 0."""
    street_m = config.road_width_m + 2 * config.sidewalk_width_m
    blocks = rng.uniform(config.block_min_m, config.block_max_m, n_blocks)
    lines = np.concatenate([[0.0], np.cumsum(blocks + street_m)])
    return lines - lines.mean()


class _TownBuilder:
    """Carries the RNG, atlas and quad list while a town is assembled."""

    def __init__(self, seed, config):
        self.seed = seed
        self.street_half_width_m = config.road_width_m / 2 + config.sidewalk_width_m
        self.rng = np.random.default_rng(seed)
        self.config = config
        self.atlas = AtlasBuilder()
        self.quads = QuadBuilder()
        self.hints = []
        self.facades = []
        self.lights = []
        self.styles = [textures.random_facade_style(self.rng)
                       for _ in range(config.facade_styles)]
        self.chains = [(textures.random_shop_name(self.rng),
                        textures.SIGN_COLOURS[self.rng.integers(len(textures.SIGN_COLOURS))])
                       for _ in range(config.chain_stores)]
        self.side_walls = [self.atlas.add(textures.wall_pattern(s, 16, 16, self.rng),
                                          Material.WALL, wrap=True) for s in self.styles]
        self._shared_textures()

    def _shared_textures(self):
        rng = self.rng
        self.trunk = self.atlas.add(textures.noise_tile((90, 65, 45), 8, 0.15, rng),
                                    Material.TRUNK, wrap=True)
        self.foliage = self.atlas.add(textures.foliage_tile(rng), Material.FOLIAGE, wrap=True)
        self.pole = self.atlas.add(textures.noise_tile((110, 112, 115), 4, 0.05, rng),
                                   Material.POLE, wrap=True)
        self.lamp = self.atlas.add(np.full((2, 2, 3), 230.0), Material.LAMP, wrap=True)
        body_colours = [(200, 30, 30), (30, 60, 160), (230, 230, 230), (20, 20, 25),
                        (150, 150, 155), (40, 110, 60), (230, 190, 40), (120, 70, 40)]
        self.vehicles = tuple(self.atlas.add(*textures.vehicle_texture(c, rng))
                              for c in body_colours)
        self.pedestrians = tuple(self.atlas.add(*textures.pedestrian_texture(rng))
                                 for _ in range(8))

    def add_quad(self, corner, edge_u, edge_v, texture, hint):
        self.quads.add(tuple(corner), tuple(edge_u), tuple(edge_v), texture)
        self.hints.append(hint)

    def add_box(self, min_xyz, max_xyz, texture, hint, tile_m=1.0, bottom=False):
        size = np.subtract(max_xyz, min_xyz)
        start = len(self.quads)
        sides = [replace(texture, repeat_u=max(1.0, w / tile_m),
                         repeat_v=max(1.0, size[2] / tile_m), wrap=True)
                 for w in (size[1], size[0], size[1], size[0])]
        self.quads.add_box(min_xyz, max_xyz, sides, bottom_texture=sides[0] if bottom else None)
        self.hints.extend([hint] * (len(self.quads) - start))


def _facade_texture(town, style_index, n_bays, n_floors, shop):
    """Return the texture of a facade; identical (style, size, shop) share one."""
    name, sign_rgb = shop if shop else ('', (0, 0, 0))
    key = ('facade', style_index, n_bays, n_floors, name, tuple(sign_rgb))
    if town.atlas.has(key):
        return town.atlas.add(None, None, key=key)
    tex_rng = np.random.default_rng([town.seed, style_index, n_bays, n_floors])
    rgb, material, window = textures.facade_texture(
        town.styles[style_index], n_bays, n_floors, name, sign_rgb, tex_rng)
    return town.atlas.add(rgb, material, window, key=key)


def _pick_shop(town):
    """Shop sign for a ground floor: none, a unique name, or a repeated chain store."""
    draw = town.rng.random()
    if draw < 0.35:
        return None
    if draw < 0.55 and town.chains:
        return town.chains[town.rng.integers(len(town.chains))]
    colour = textures.SIGN_COLOURS[town.rng.integers(len(textures.SIGN_COLOURS))]
    return textures.random_shop_name(town.rng), colour


def _add_building(town, origin, along, inward, start_m, lot):
    """One building: street facade plus the two side walls."""
    style_index, n_bays, n_floors, shop, depth_m, setback_m = lot
    width_m, height_m = textures.facade_size_m(town.styles[style_index], n_bays, n_floors)
    base = origin + along * start_m + inward * setback_m
    up = UP * height_m
    town.facades.append(len(town.quads))
    town.add_quad(base, along * width_m, up,
                  _facade_texture(town, style_index, n_bays, n_floors, shop), 'facade')
    wall = town.side_walls[style_index]
    wall = replace(wall, repeat_u=depth_m / 2, repeat_v=height_m / 2, wrap=True)
    town.add_quad(base + inward * depth_m, -inward * depth_m, up, wall, 'wall')
    town.add_quad(base + along * width_m, inward * depth_m, up, wall, 'wall')
    return width_m


def _draw_lot(town, row_lot):
    """Style, bays, floors, shop, depth and setback of the next building on a block side."""
    if row_lot is not None:
        return row_lot
    rng, config = town.rng, town.config
    return (int(rng.integers(len(town.styles))), int(rng.integers(2, 6)),
            int(rng.integers(1, config.max_floors + 1)), _pick_shop(town),
            float(rng.uniform(9.0, CORNER_RESERVE_M)), float(rng.choice([0.0, 0.0, 0.5, 1.0])))


def _block_side(town, origin, along, inward, length_m):
    """Fill one side of a block with buildings, leaving occasional alleys."""
    rng = town.rng
    row_lot = None
    if rng.random() < town.config.row_house_probability:
        row_lot = _draw_lot(town, None)[:3] + (None, 12.0, 0.0)
    position_m = 0.0
    while position_m < length_m - 5.0:
        lot = _draw_lot(town, row_lot)
        width_m, _ = textures.facade_size_m(town.styles[lot[0]], lot[1], lot[2])
        if position_m + width_m > length_m:
            lot = (lot[0], 1) + lot[2:]
            width_m, _ = textures.facade_size_m(town.styles[lot[0]], 1, lot[2])
            if position_m + width_m > length_m:
                break
        position_m += _add_building(town, origin, along, inward, position_m, lot)
        if row_lot is None and rng.random() < 0.12:
            position_m += float(rng.uniform(2.0, 6.0))


def _block_buildings(town, x0, y0, x1, y1):
    """Put buildings on the four sides of the block rectangle (building lines)."""
    x, y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    r = CORNER_RESERVE_M
    _block_side(town, np.array([x0, y0, 0.0]), x, y, x1 - x0)
    _block_side(town, np.array([x1, y1, 0.0]), -x, -y, x1 - x0)
    _block_side(town, np.array([x0, y1 - r, 0.0]), -y, x, y1 - y0 - 2 * r)
    _block_side(town, np.array([x1, y0 + r, 0.0]), y, -x, y1 - y0 - 2 * r)


def _outskirts(town, xs, ys):
    """Line the outer side of the boundary streets with buildings too."""
    half = town.street_half_width_m
    x_lo, x_hi, y_lo, y_hi = xs[0] - half, xs[-1] + half, ys[0] - half, ys[-1] + half
    x, y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    _block_side(town, np.array([x_hi, y_lo, 0.0]), -x, -y, x_hi - x_lo)
    _block_side(town, np.array([x_lo, y_hi, 0.0]), x, y, x_hi - x_lo)
    _block_side(town, np.array([x_lo, y_lo, 0.0]), y, -x, y_hi - y_lo)
    _block_side(town, np.array([x_hi, y_hi, 0.0]), -y, x, y_hi - y_lo)


def _add_tree(town, x_m, y_m):
    rng = town.rng
    trunk_m = float(rng.uniform(2.2, 3.2))
    crown_m = float(rng.uniform(2.5, 4.0))
    town.add_box((x_m - 0.15, y_m - 0.15, 0.0), (x_m + 0.15, y_m + 0.15, trunk_m),
                 town.trunk, 'trunk')
    half = crown_m / 2
    town.add_box((x_m - half, y_m - half, trunk_m - 0.3),
                 (x_m + half, y_m + half, trunk_m - 0.3 + crown_m * 0.9),
                 town.foliage, 'foliage', tile_m=1.2, bottom=True)


def _add_light(town, x_m, y_m):
    town.add_box((x_m - 0.08, y_m - 0.08, 0.0), (x_m + 0.08, y_m + 0.08, 6.0), town.pole, 'pole')
    town.add_box((x_m - 0.35, y_m - 0.35, 6.0), (x_m + 0.35, y_m + 0.35, 6.25),
                 town.lamp, 'lamp', bottom=True)
    town.lights.append((x_m, y_m, 6.0))


def _street_furniture(town, lines_along, lines_across, vertical):
    """Trees and street lights along every street segment, on alternating sides."""
    config, rng = town.config, town.rng
    half = town.street_half_width_m
    for centre in lines_across:
        for start, end in zip(lines_along[:-1], lines_along[1:]):
            for side in (-1.0, 1.0):
                lateral = centre + side * (config.road_width_m / 2 + config.sidewalk_width_m * 0.6)
                curb = centre + side * (config.road_width_m / 2 + 0.4)
                for along in np.arange(start + half + 4.0, end - half - 2.0,
                                       config.tree_spacing_m):
                    if rng.random() < 0.7:
                        along_m = along + rng.uniform(-2.0, 2.0)
                        _add_tree(town, *((lateral, along_m) if vertical else (along_m, lateral)))
                offset = 0.0 if side > 0 else config.light_spacing_m / 2
                for along in np.arange(start + half + 2.0 + offset, end - half - 1.0,
                                       config.light_spacing_m):
                    _add_light(town, *((curb, along) if vertical else (along, curb)))


def _add_ground(town, xs, ys):
    """Textured ground over the town plus plain grass quads out to the horizon."""
    config = town.config
    margin_m = 20.0
    x0, y0, x1, y1 = xs[0] - margin_m, ys[0] - margin_m, xs[-1] + margin_m, ys[-1] + margin_m
    rgb, material = ground_texture(xs, ys, (x0, y0, x1, y1), config.ground_texel_m,
                                   config.road_width_m / 2, config.sidewalk_width_m,
                                   town.parks, town.rng)
    town.add_quad((x0, y0, 0.0), (x1 - x0, 0.0, 0.0), (0.0, y1 - y0, 0.0),
                  town.atlas.add(rgb, material), 'ground')
    far_m = 400.0
    grass = town.atlas.add(textures.noise_tile((70, 110, 50), 16, 0.1, town.rng, smooth=True),
                           Material.GRASS)
    for corner, size in (((x0 - far_m, y0 - far_m), (x1 - x0 + 2 * far_m, far_m)),
                         ((x0 - far_m, y1), (x1 - x0 + 2 * far_m, far_m)),
                         ((x0 - far_m, y0), (far_m, y1 - y0)),
                         ((x1, y0), (far_m, y1 - y0))):
        texture = replace(grass, repeat_u=size[0] / 3.0, repeat_v=size[1] / 3.0, wrap=True)
        town.add_quad((corner[0], corner[1], 0.0), (size[0], 0.0, 0.0), (0.0, size[1], 0.0),
                      texture, 'ground')


def _light_map(lights, xs, ys):
    """Ground irradiance of all street lamps (peak 1 under a lamp); row 0 is the north edge."""
    margin_m = 30.0
    x0, y1 = xs[0] - margin_m, ys[-1] + margin_m
    shape = (int((ys[-1] - ys[0] + 2 * margin_m) / LIGHT_MAP_TEXEL_M),
             int((xs[-1] - xs[0] + 2 * margin_m) / LIGHT_MAP_TEXEL_M))
    impulses = np.zeros(shape, np.float32)
    for x_m, y_m, _ in lights:
        impulses[int((y1 - y_m) / LIGHT_MAP_TEXEL_M), int((x_m - x0) / LIGHT_MAP_TEXEL_M)] += 1.0
    sigma_px = LIGHT_POOL_SIGMA_M / LIGHT_MAP_TEXEL_M
    pools = cv2.GaussianBlur(impulses, (0, 0), sigma_px) * np.float32(2 * np.pi * sigma_px ** 2)
    return pools, (x0, y1)


def generate_town(seed, config=None):
    """Generate the town for an integer seed (deterministic)."""
    config = config or TownConfig()
    town = _TownBuilder(int(seed), config)
    xs = _street_lines(config.blocks_x, config, town.rng)
    ys = _street_lines(config.blocks_y, config, town.rng)
    half = config.road_width_m / 2 + config.sidewalk_width_m
    town.parks = []
    for i in range(config.blocks_x):
        for j in range(config.blocks_y):
            rect = (xs[i] + half, ys[j] + half, xs[i + 1] - half, ys[j + 1] - half)
            if town.rng.random() < config.park_probability:
                town.parks.append(rect)
                for _ in range(int(town.rng.integers(4, 12))):
                    _add_tree(town, town.rng.uniform(rect[0] + 3, rect[2] - 3),
                              town.rng.uniform(rect[1] + 3, rect[3] - 3))
            else:
                _block_buildings(town, *rect)
    _outskirts(town, xs, ys)
    _street_furniture(town, ys, xs, vertical=True)
    _street_furniture(town, xs, ys, vertical=False)
    _add_ground(town, xs, ys)
    light_map, light_map_corner = _light_map(town.lights, xs, ys)
    LOGGER.info('town seed %d: %d quads, %d facades', seed, len(town.quads), len(town.facades))
    return Town(seed=int(seed), config=config, quads=town.quads.build(),
                atlas=town.atlas.build(), street_x_m=xs, street_y_m=ys,
                lights_enu_m=np.array(town.lights, dtype=np.float64).reshape(-1, 3),
                facade_quad_ids=np.array(town.facades, dtype=np.int64),
                quad_material_hint=np.array(town.hints),
                vehicle_textures=town.vehicles, pedestrian_textures=town.pedestrians,
                light_map=light_map, light_map_corner_m=light_map_corner)

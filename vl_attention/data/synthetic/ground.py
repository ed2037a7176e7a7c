"""Ground texture: roads with markings, sidewalks, crossings, paving and park grass."""

import cv2
import numpy as np

from vl_attention.data.synthetic.textures import Material


def _distance_to_lines(coords_m, lines_m):
    """Distance (m) from each coordinate to the nearest street centre line."""
    return np.min(np.abs(coords_m[:, None] - np.asarray(lines_m)[None, :]), axis=1)


def _stains(shape, rng, cells=24):
    """Low-frequency multiplicative dirt so that no two stretches of road look alike."""
    small = rng.normal(1.0, 0.1, (cells, cells)).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _markings(x_m, y_m, dx_m, dy_m, road_half_m, street_half_m):
    """Boolean (H, W) mask of white paint: dashed centre lines, edge lines, zebra crossings."""
    dx, dy = dx_m[None, :], dy_m[:, None]
    near_junction_x = dy < street_half_m + 0.5
    near_junction_y = dx < street_half_m + 0.5
    dash_y = (y_m[:, None] % 6.0) < 3.0
    dash_x = (x_m[None, :] % 6.0) < 3.0
    centre = ((dx < 0.12) & dash_y & ~near_junction_x) | ((dy < 0.12) & dash_x & ~near_junction_y)
    edge_x = (np.abs(dx - (road_half_m - 0.35)) < 0.1) & ~near_junction_x
    edge_y = (np.abs(dy - (road_half_m - 0.35)) < 0.1) & ~near_junction_y
    zebra_band_x = (dy > street_half_m + 0.5) & (dy < street_half_m + 3.5)
    zebra_band_y = (dx > street_half_m + 0.5) & (dx < street_half_m + 3.5)
    zebra = ((zebra_band_x & (dx < road_half_m) & ((x_m[None, :] % 1.0) < 0.5))
             | (zebra_band_y & (dy < road_half_m) & ((y_m[:, None] % 1.0) < 0.5)))
    return centre | edge_x | edge_y | zebra


def ground_texture(street_x_m, street_y_m, extent_m, texel_m, road_half_m, sidewalk_m,
                   park_rects, rng):
    """RGB (H, W, 3) and material (H, W) of the ground; row 0 is the north edge.

    ``extent_m`` is ``(x_min, y_min, x_max, y_max)``; ``park_rects`` lists block
    rectangles that are lawns instead of paved building lots.
    """
    x_min, y_min, x_max, y_max = extent_m
    x_m = x_min + (np.arange(int(round((x_max - x_min) / texel_m))) + 0.5) * texel_m
    y_m = y_max - (np.arange(int(round((y_max - y_min) / texel_m))) + 0.5) * texel_m
    dx_m = _distance_to_lines(x_m, street_x_m)
    dy_m = _distance_to_lines(y_m, street_y_m)
    street_half_m = road_half_m + sidewalk_m
    inside = ((x_m[None, :] > min(street_x_m) - street_half_m)
              & (x_m[None, :] < max(street_x_m) + street_half_m)
              & (y_m[:, None] > min(street_y_m) - street_half_m)
              & (y_m[:, None] < max(street_y_m) + street_half_m))
    road = inside & ((dx_m[None, :] < road_half_m) | (dy_m[:, None] < road_half_m))
    sidewalk = inside & ~road & ((dx_m[None, :] < street_half_m) | (dy_m[:, None] < street_half_m))
    material = np.full(road.shape, Material.SIDEWALK, dtype=np.uint8)
    material[~inside] = Material.GRASS
    for rx0, ry0, rx1, ry1 in park_rects:
        cols = (x_m > rx0) & (x_m < rx1)
        rows = (y_m > ry0) & (y_m < ry1)
        material[np.ix_(rows, cols)] = Material.GRASS
    material[sidewalk] = Material.SIDEWALK
    material[road] = Material.ROAD
    paint = road & _markings(x_m, y_m, dx_m, dy_m, road_half_m, street_half_m)
    material[paint] = Material.MARKING
    return _colour_ground(material, x_m, y_m, rng), material


def _colour_ground(material, x_m, y_m, rng):
    """Albedo for each ground material, with texel noise, paving joints and stains."""
    colours = np.zeros((len(Material), 3), np.float32)
    colours[Material.ROAD] = (72, 72, 76)
    colours[Material.MARKING] = (225, 225, 215)
    colours[Material.SIDEWALK] = (155, 150, 140)
    colours[Material.GRASS] = (70, 110, 50)
    rgb = colours[material]
    noise = rng.normal(1.0, 0.07, material.shape).astype(np.float32)
    joints = ((x_m[None, :] % 1.2) < 0.2) | ((y_m[:, None] % 1.2) < 0.2)
    paving = (material == Material.SIDEWALK) & joints
    noise[paving] *= 0.8
    rgb *= (noise * _stains(material.shape, rng))[..., None]
    return rgb

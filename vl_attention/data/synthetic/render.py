"""Render RGB frames of a town for a camera pose under an appearance condition."""

import numpy as np

from vl_attention.data.synthetic import shading
from vl_attention.data.synthetic.geometry import QuadSet
from vl_attention.data.synthetic.raster import rasterize

_SCENE_CACHE = {}


def scene_quads(town, occluders=None):
    """Town quads followed by the occluder quads (ids of town quads are unchanged)."""
    if occluders is None or len(occluders) == 0:
        return town.quads
    key = (id(town), id(occluders))
    cached = _SCENE_CACHE.get(key)
    if cached is None or cached[0] is not town or cached[1] is not occluders:
        _SCENE_CACHE.clear()
        cached = (town, occluders, QuadSet.concat([town.quads, occluders.quads]))
        _SCENE_CACHE[key] = cached
    return cached[2]


def render_geometry(town, camera, position_enu_m, quaternion_xyzw, *, occluders=None):
    """Depth and quad-id buffers of a frame (condition independent)."""
    return rasterize(scene_quads(town, occluders), camera, position_enu_m, quaternion_xyzw)


def shade(town, buffers, condition, rng_seed, *, occluders=None):
    """Turn geometry buffers into a uint8 RGB image under a condition."""
    scene = scene_quads(town, occluders)
    height, width = buffers.depth_m.shape
    colour = np.empty((height, width, 3), np.float32)
    hit = buffers.quad_id >= 0
    colour[~hit] = shading.sky(buffers.rays_enu, ~hit, condition)
    points, quad, u, v = shading.surface_points(scene, buffers, hit)
    index = shading.texel_indices(scene, quad, u, v)
    albedo = town.atlas.rgb[index].astype(np.float32) * np.float32(1.0 / 255.0)
    material = town.atlas.material[index]
    albedo = shading.apply_season_and_weather(albedo, material, condition)
    tint = np.array(condition.light_tint_rgb, np.float32) / 255.0
    light = shading.irradiance(scene, quad, condition)[:, None] * tint
    if condition.street_light_intensity > 0:
        pools = shading.street_light_pools(
            points, town, buffers.position_enu_m, condition.street_light_intensity)
        light = light + pools[:, None] * shading.WARM_LIGHT
    surface = albedo * light
    surface += shading.emission(index, town.atlas, material, quad, condition, town.seed)
    colour[hit] = surface
    colour = shading.fog(colour, buffers.depth_m, condition)
    return shading.sensor(colour, condition, np.random.default_rng(rng_seed))


def render(town, camera, position_enu_m, quaternion_xyzw, condition, rng_seed=0, *,
           occluders=None):
    """Render an (H, W, 3) uint8 RGB image of the town seen from a camera pose.

    ``rng_seed`` drives the per-frame randomness (sensor noise, rain streaks);
    ``occluders`` (from :func:`place_occluders`) adds vehicles and pedestrians.
    """
    buffers = render_geometry(town, camera, position_enu_m, quaternion_xyzw,
                              occluders=occluders)
    return shade(town, buffers, condition, rng_seed, occluders=occluders)

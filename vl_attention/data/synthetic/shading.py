"""Deferred shading: texture lookup, lighting, weather and sensor effects per pixel."""

import cv2
import numpy as np

from vl_attention.data.synthetic.textures import Material
from vl_attention.data.synthetic.town import LIGHT_MAP_TEXEL_M

WARM_LIGHT = np.array([1.0, 0.82, 0.55], np.float32)
SNOWY = np.array([Material.SIDEWALK, Material.GRASS, Material.ROOF_EDGE, Material.TRIM,
                  Material.ROAD, Material.MARKING])
GROUND = np.array([Material.ROAD, Material.MARKING, Material.SIDEWALK, Material.GRASS])


def hash_unit(*keys):
    """Deterministic per-element hash of integer arrays to floats in [0, 1)."""
    h = np.uint64(0x9E3779B97F4A7C15)
    for key in keys:
        h = h ^ (np.asarray(key).astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9))
        h = (h ^ (h >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
    h = h ^ (h >> np.uint64(29))
    return (h >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def surface_points(scene, buffers, hit):
    """Camera-relative points (N, 3) float32, quad ids and quad (u, v) of the hit pixels."""
    quad = buffers.quad_id[hit]
    relative = buffers.rays_enu[:, hit] * buffers.depth_m[hit]
    coords = []
    for edge in (scene.edge_u, scene.edge_v):
        scaled = edge / np.einsum('ij,ij->i', edge, edge)[:, None]
        offset = np.einsum('ij,ij->i', scaled, scene.corner - buffers.position_enu_m)
        scaled = scaled.astype(np.float32)[quad]
        coords.append(np.einsum('ij,ji->i', scaled, relative) - offset[quad].astype(np.float32))
    return relative.T, quad, coords[0], coords[1]


def texel_indices(scene, quad, u, v):
    """Flat atlas indices for quad coordinates, tiling or clamping per quad."""
    s = u * scene.repeat_u[quad]
    t = v * scene.repeat_v[quad]
    wrap = scene.wrap[quad]
    s = np.where(wrap, s - np.floor(s), np.clip(s, 0.0, 1.0))
    t = np.where(wrap, t - np.floor(t), np.clip(t, 0.0, 1.0))
    width, height = scene.tex_width[quad], scene.tex_height[quad]
    col = np.minimum((s * width).astype(np.int64), width - 1)
    row = np.minimum(((1.0 - t) * height).astype(np.int64), height - 1)
    return scene.tex_offset[quad] + row * width + col


def apply_season_and_weather(albedo, material, condition):
    """Recolour foliage by season, cover the ground with snow, darken wet ground."""
    foliage = material == Material.FOLIAGE
    if foliage.any():
        leaf = albedo[foliage, 1:2] / (120.0 / 255.0)
        albedo[foliage] = leaf * (np.array(condition.foliage_rgb, np.float32) / 255.0)
    if condition.snow_cover > 0:
        snowy = np.isin(material, SNOWY)
        cover = np.where(np.isin(material[snowy], [Material.ROAD, Material.MARKING]),
                         0.6, 1.0) * condition.snow_cover
        albedo[snowy] += (0.9 - albedo[snowy]) * cover[:, None].astype(np.float32)
    if condition.rain_intensity > 0:
        wet = np.isin(material, GROUND)
        albedo[wet] *= np.float32(1.0 - 0.4 * condition.rain_intensity)
    return albedo


def irradiance(scene, quad, condition):
    """Ambient plus Lambertian sunlight per pixel (shadows are not modelled)."""
    cosine = np.clip(scene.normal @ condition.sun_direction_enu, 0.0, None)
    per_quad = condition.ambient_intensity + condition.sun_intensity * cosine
    return per_quad[quad].astype(np.float32)


def street_light_pools(relative_points, town, camera_position, strength):
    """Warm light pools under the street lamps, read from the town's light map.

    ``relative_points`` are surface points minus the camera position (float32);
    light fades with height above the ground so facades catch only the lower glow.
    """
    x0, y1 = town.light_map_corner_m
    texel_m = LIGHT_MAP_TEXEL_M
    height, width = town.light_map.shape
    cols = ((relative_points[:, 0] + np.float32(camera_position[0] - x0)) / texel_m)
    rows = ((np.float32(y1 - camera_position[1]) - relative_points[:, 1]) / texel_m)
    cols = np.clip(cols.astype(np.int64), 0, width - 1)
    rows = np.clip(rows.astype(np.int64), 0, height - 1)
    z_m = relative_points[:, 2] + np.float32(camera_position[2])
    fade = np.exp(-np.maximum(z_m, 0.0) / np.float32(4.0))
    return np.float32(strength * 1.4) * town.light_map[rows, cols] * fade


def emission(atlas_index, atlas, material, quad, condition, town_seed):
    """Self-lit colour: windows switched on at random per window, lamps and shop signs."""
    glow = np.zeros((len(material), 3), np.float32)
    if condition.lit_window_fraction > 0:
        window = atlas.window[atlas_index]
        is_window = window >= 0
        draw = hash_unit(quad[is_window], window[is_window], condition.light_seed, town_seed)
        lit = draw < condition.lit_window_fraction
        level = (0.55 + 0.45 * hash_unit(quad[is_window], window[is_window], 7))[lit]
        rows = np.flatnonzero(is_window)[lit]
        glow[rows] = WARM_LIGHT * level[:, None].astype(np.float32)
    if condition.street_light_intensity > 0:
        lamps = material == Material.LAMP
        glow[lamps] = np.float32(1.2 * condition.street_light_intensity)
        signs = material == Material.SIGN
        glow[signs] = (atlas.rgb[atlas_index[signs]] / 255.0 * 0.8
                       * condition.street_light_intensity)
    return glow


def sky(rays_enu, sky_pixels, condition):
    """Vertical gradient from horizon to zenith colour for pixels that hit nothing."""
    rays = rays_enu[:, sky_pixels]
    elevation = rays[2] / np.linalg.norm(rays, axis=0)
    mix = np.clip(elevation * 2.5, 0.0, 1.0)[:, None]
    horizon = np.array(condition.sky_horizon_rgb, np.float32) / 255.0
    zenith = np.array(condition.sky_zenith_rgb, np.float32) / 255.0
    return horizon * (1.0 - mix) + zenith * mix


def fog(colour, depth_m, condition):
    """Koschmieder fog: transmittance exp(-3.912 d / visibility) toward the fog colour."""
    if not np.isfinite(condition.fog_visibility_m):
        return colour
    transmittance = np.exp(-3.912 * np.minimum(depth_m, 1e4) / condition.fog_visibility_m)
    fog_rgb = np.array(condition.fog_rgb, np.float32) / 255.0
    transmittance = transmittance.astype(np.float32)[..., None]
    return colour * transmittance + fog_rgb * (1.0 - transmittance)


def sensor(image, condition, rng):
    """Exposure gain, rain streaks and Gaussian read noise; returns uint8 RGB."""
    image = image * np.float32(condition.exposure_gain * 255.0)
    if condition.rain_intensity > 0:
        streaks = np.zeros(image.shape[:2], np.float32)
        height, width = streaks.shape
        count = int(condition.rain_intensity * width * height / 400)
        starts = rng.uniform((0, 0), (width, height), (count, 2)).astype(np.int32)
        lengths = rng.uniform(0.03, 0.08, count) * height
        for (x, y), length in zip(starts, lengths):
            cv2.line(streaks, (int(x), int(y)), (int(x + 0.25 * length), int(y + length)),
                     1.0, 1)
        image = image * (1.0 - 0.3 * streaks[..., None]) + 200.0 * 0.3 * streaks[..., None]
    if condition.noise_std > 0:
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(
            condition.noise_std)
    return np.clip(image, 0, 255).astype(np.uint8)

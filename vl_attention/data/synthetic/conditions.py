"""Appearance conditions: time of day, weather, season, exposure and sensor noise.

A :class:`Condition` changes how the world looks, never where anything is:
the geometry buffer of a frame is the same under every condition.  Named
presets live in :data:`CONDITIONS`; names join with ``+`` (``'night+rain'``),
later names overriding the fields that earlier ones set.
"""

from dataclasses import dataclass, fields, replace
import math

import numpy as np

from vl_attention.config import ConfigError


@dataclass(frozen=True)
class Condition:
    """Lighting, weather, season and sensor settings of one traversal.

    ``sun_azimuth_deg`` is a compass bearing (0 north, 90 east).  Colours are RGB
    in 0..255.  ``occluder_density`` is vehicles per 10 m of street side (the
    pedestrians scale with it); their placement comes from the traversal's seed.
    """

    name: str = 'day'
    sun_elevation_deg: float = 40.0
    sun_azimuth_deg: float = 150.0
    sun_intensity: float = 0.55
    ambient_intensity: float = 0.55
    light_tint_rgb: tuple = (255, 250, 240)
    sky_zenith_rgb: tuple = (70, 120, 200)
    sky_horizon_rgb: tuple = (180, 205, 230)
    lit_window_fraction: float = 0.0
    street_light_intensity: float = 0.0
    light_seed: int = 0
    fog_visibility_m: float = math.inf
    fog_rgb: tuple = (200, 200, 205)
    rain_intensity: float = 0.0
    snow_cover: float = 0.0
    foliage_rgb: tuple = (60, 120, 45)
    exposure_gain: float = 1.0
    noise_std: float = 2.0
    occluder_density: float = 0.0

    def __post_init__(self):
        for name in ('rain_intensity', 'snow_cover', 'lit_window_fraction'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f'{name}={getattr(self, name)} must lie in [0, 1]')
        if self.fog_visibility_m <= 0 or self.exposure_gain <= 0 or self.noise_std < 0:
            raise ConfigError('fog_visibility_m and exposure_gain must be > 0, noise_std >= 0')

    @property
    def sun_direction_enu(self):
        """Unit vector towards the sun in ENU."""
        elevation = math.radians(self.sun_elevation_deg)
        azimuth = math.radians(self.sun_azimuth_deg)
        return np.array([math.cos(elevation) * math.sin(azimuth),
                         math.cos(elevation) * math.cos(azimuth), math.sin(elevation)])


CONDITIONS = {
    'day': Condition(),
    'dusk': Condition(
        name='dusk', sun_elevation_deg=4.0, sun_azimuth_deg=260.0, sun_intensity=0.45,
        ambient_intensity=0.28, light_tint_rgb=(255, 180, 120), sky_zenith_rgb=(40, 50, 110),
        sky_horizon_rgb=(240, 150, 90), lit_window_fraction=0.25, street_light_intensity=0.5,
        noise_std=3.0),
    'night': Condition(
        name='night', sun_elevation_deg=-20.0, sun_intensity=0.0, ambient_intensity=0.05,
        light_tint_rgb=(150, 170, 255), sky_zenith_rgb=(4, 6, 16), sky_horizon_rgb=(20, 22, 35),
        lit_window_fraction=0.35, street_light_intensity=1.0, fog_rgb=(30, 30, 35),
        noise_std=5.0),
    'overcast': Condition(
        name='overcast', sun_intensity=0.05, ambient_intensity=0.8,
        sky_zenith_rgb=(175, 178, 185), sky_horizon_rgb=(205, 207, 210)),
    'fog': Condition(
        name='fog', sun_intensity=0.05, ambient_intensity=0.8, sky_zenith_rgb=(200, 200, 205),
        sky_horizon_rgb=(205, 205, 210), fog_visibility_m=60.0),
    'rain': Condition(
        name='rain', sun_intensity=0.0, ambient_intensity=0.55, sky_zenith_rgb=(110, 112, 120),
        sky_horizon_rgb=(150, 152, 158), rain_intensity=0.7, fog_visibility_m=250.0,
        fog_rgb=(140, 142, 148), noise_std=3.0),
    'snow': Condition(
        name='snow', sun_elevation_deg=20.0, sun_intensity=0.25, ambient_intensity=0.75,
        sky_zenith_rgb=(190, 195, 210), sky_horizon_rgb=(215, 218, 225), snow_cover=0.85,
        foliage_rgb=(105, 90, 75)),
    'autumn': Condition(
        name='autumn', sun_elevation_deg=25.0, light_tint_rgb=(255, 235, 205),
        foliage_rgb=(200, 105, 35)),
}
CONDITIONS['winter'] = replace(CONDITIONS['snow'], name='winter')


def get_condition(name, **overrides):
    """Look up a preset (``'night'``, or combined as ``'night+rain'``) and apply overrides."""
    default = Condition()
    condition = default
    for part in name.split('+'):
        if part not in CONDITIONS:
            raise ConfigError(f'unknown condition {part!r}; known: '
                              f'{", ".join(sorted(CONDITIONS))}')
        preset = CONDITIONS[part]
        changed = {f.name: getattr(preset, f.name) for f in fields(Condition)
                   if getattr(preset, f.name) != getattr(default, f.name)}
        condition = replace(condition, **changed)
    return replace(condition, name=name, **overrides)

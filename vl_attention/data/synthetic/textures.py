"""Procedural textures and the flat texture atlas the renderer samples from.

Every texel carries an RGB albedo, a :class:`Material` id (which the lighting
conditions act on: snow on sidewalks, lit windows at night, foliage colour by
season) and a window id (-1 for no window) so that night lighting can switch
individual windows on and off.
"""

from dataclasses import dataclass
import enum

import cv2
import numpy as np

from vl_attention.data.synthetic.geometry import TextureRef

TEXEL_M = 0.125
GROUND_FLOOR_M = 4.0
CORNICE_M = 0.5


class Material(enum.IntEnum):
    """Surface classes that appearance conditions treat differently."""

    WALL = 0
    WINDOW = 1
    TRIM = 2
    DOOR = 3
    SIGN = 4
    ROAD = 5
    MARKING = 6
    SIDEWALK = 7
    GRASS = 8
    FOLIAGE = 9
    TRUNK = 10
    POLE = 11
    LAMP = 12
    ROOF_EDGE = 13
    VEHICLE = 14
    VEHICLE_GLASS = 15
    PEDESTRIAN = 16


@dataclass(frozen=True)
class Atlas:
    """Frozen texel arrays: rgb (N, 3) uint8, material (N,) uint8, window (N,) int16."""

    rgb: np.ndarray
    material: np.ndarray
    window: np.ndarray


class AtlasBuilder:
    """Appends textures to one flat texel array; identical keys share storage."""

    def __init__(self):
        """Start empty."""
        self._chunks = []
        self._size = 0
        self._cache = {}

    def add(self, rgb, material, window=None, *, key=None, repeat_u=1.0, repeat_v=1.0,
            wrap=False):
        """Add an (H, W, 3) texture (or reuse the one stored under ``key``)."""
        if key is not None and key in self._cache:
            offset, width, height = self._cache[key]
        else:
            height, width = rgb.shape[:2]
            material = np.broadcast_to(np.asarray(material, dtype=np.uint8), (height, width))
            if window is None:
                window = np.full((height, width), -1, dtype=np.int16)
            rgb = np.clip(rgb, 0, 255).astype(np.uint8)
            self._chunks.append((rgb.reshape(-1, 3), material.reshape(-1),
                                 window.astype(np.int16).reshape(-1)))
            offset = self._size
            self._size += height * width
            if key is not None:
                self._cache[key] = (offset, width, height)
        return TextureRef(offset, width, height, repeat_u, repeat_v, wrap)

    def has(self, key):
        """Whether a texture is stored under ``key``."""
        return key in self._cache

    def build(self):
        """Freeze into an Atlas."""
        return Atlas(rgb=np.concatenate([c[0] for c in self._chunks]),
                     material=np.concatenate([c[1] for c in self._chunks]),
                     window=np.concatenate([c[2] for c in self._chunks]))


@dataclass(frozen=True)
class FacadeStyle:
    """Parameters of one facade look; facades sharing a style and size look identical."""

    pattern: str
    wall_rgb: tuple
    trim_rgb: tuple
    glass_rgb: tuple
    bay_px: int
    floor_px: int
    window_w_frac: float
    window_h_frac: float
    mullion: bool


WALL_PALETTES = {
    'brick': [(150, 70, 50), (120, 55, 45), (170, 100, 70), (100, 45, 40)],
    'concrete': [(170, 168, 160), (140, 140, 135), (190, 185, 170), (120, 118, 112)],
    'glass': [(60, 80, 95), (40, 60, 70), (75, 95, 100)],
    'plaster': [(220, 200, 150), (200, 170, 140), (180, 200, 190), (230, 225, 210),
                (190, 150, 150)],
}
TRIM_COLOURS = [(235, 235, 230), (60, 60, 60), (140, 110, 80), (40, 60, 90), (180, 180, 170)]
SIGN_COLOURS = [(200, 30, 30), (30, 90, 180), (240, 200, 30), (30, 140, 60), (20, 20, 20),
                (230, 120, 20), (150, 40, 150), (245, 245, 245)]
SYLLABLES = ['KA', 'LO', 'MI', 'BRO', 'ZE', 'TA', 'NU', 'RI', 'PE', 'SO', 'VAN', 'DEL', 'MAR']


def random_facade_style(rng):
    """Draw a FacadeStyle."""
    pattern = str(rng.choice(list(WALL_PALETTES)))
    palette = WALL_PALETTES[pattern]
    glass = pattern == 'glass'
    return FacadeStyle(
        pattern=pattern,
        wall_rgb=palette[rng.integers(len(palette))],
        trim_rgb=TRIM_COLOURS[rng.integers(len(TRIM_COLOURS))],
        glass_rgb=tuple(int(c) for c in rng.integers(30, 90, 3)),
        bay_px=int(rng.integers(20, 33)),
        floor_px=int(rng.integers(24, 29)),
        window_w_frac=float(rng.uniform(0.75, 0.9) if glass else rng.uniform(0.35, 0.6)),
        window_h_frac=float(rng.uniform(0.7, 0.85) if glass else rng.uniform(0.4, 0.6)),
        mullion=bool(rng.random() < 0.5))


def random_shop_name(rng):
    """Short made-up shop name."""
    return ''.join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4))))


def wall_pattern(style, height_px, width_px, rng):
    """Float RGB wall texture with the style's surface pattern."""
    base = np.array(style.wall_rgb, dtype=np.float32)
    noise = rng.normal(0.0, 6.0, (height_px, width_px, 1)).astype(np.float32)
    rgb = np.broadcast_to(base, (height_px, width_px, 3)) + noise
    rows = np.arange(height_px)[:, None]
    cols = np.arange(width_px)[None, :]
    if style.pattern == 'brick':
        brick_id = (rows // 2) * 1000 + (cols + 2 * (rows // 2 % 2)) // 4
        tint = rng.normal(1.0, 0.08, int(brick_id.max()) + 1).astype(np.float32)
        rgb = rgb * tint[brick_id][..., None]
        mortar = (rows % 2 == 0)[..., None]
        rgb = np.where(mortar, rgb * 0.6 + 70.0, rgb)
    elif style.pattern == 'concrete':
        seam = ((rows % style.floor_px == 0) | (cols % (2 * style.bay_px) == 0))[..., None]
        rgb = np.where(seam, rgb * 0.75, rgb)
    elif style.pattern == 'plaster':
        blotch = cv2.resize(rng.normal(1.0, 0.06, (4, 4)).astype(np.float32),
                            (width_px, height_px), interpolation=cv2.INTER_CUBIC)
        rgb = rgb * blotch[..., None]
    return rgb


def _window_tile(style):
    """Masks (floor_px, bay_px) for glass and frame of one window bay."""
    fh, bw = style.floor_px, style.bay_px
    ww = max(3, int(round(bw * style.window_w_frac)))
    wh = max(3, int(round(fh * style.window_h_frac)))
    x0, y0 = (bw - ww) // 2, (fh - wh) // 2
    frame = np.zeros((fh, bw), dtype=bool)
    frame[y0:y0 + wh, x0:x0 + ww] = True
    glass = np.zeros_like(frame)
    glass[y0 + 1:y0 + wh - 1, x0 + 1:x0 + ww - 1] = True
    if style.mullion:
        glass[:, x0 + ww // 2] = False
    return glass, frame & ~glass


def facade_size_m(style, n_bays, n_floors):
    """Width and height (m) of a facade with ``n_bays`` bays and ``n_floors`` upper floors."""
    height_px = int(GROUND_FLOOR_M / TEXEL_M) + n_floors * style.floor_px + int(
        CORNICE_M / TEXEL_M)
    return n_bays * style.bay_px * TEXEL_M, height_px * TEXEL_M


def _upper_floors(style, n_bays, n_floors, rng):
    """RGB, material and window ids for the repeated upper floors."""
    glass, frame = _window_tile(style)
    glass = np.tile(glass, (n_floors, n_bays))
    frame = np.tile(frame, (n_floors, n_bays))
    h, w = glass.shape
    rgb = wall_pattern(style, h, w, rng)
    rows, cols = np.mgrid[0:h, 0:w]
    window_id = ((n_floors - 1 - rows // style.floor_px) * n_bays + cols // style.bay_px)
    # Curtains and reflections make each window slightly different in daylight.
    window_tint = rng.uniform(0.6, 1.4, n_floors * n_bays).astype(np.float32)
    sky_gradient = 1.0 + 0.5 * (1.0 - (rows % style.floor_px) / style.floor_px)
    glass_rgb = (np.array(style.glass_rgb, np.float32)
                 * (window_tint[window_id] * sky_gradient)[..., None])
    rgb = np.where(glass[..., None], glass_rgb, rgb)
    rgb = np.where(frame[..., None], np.array(style.trim_rgb, np.float32), rgb)
    material = np.where(glass, Material.WINDOW, np.where(frame, Material.TRIM, Material.WALL))
    window = np.where(glass, window_id, -1)
    return rgb, material, window


def _ground_floor(style, width_px, shop_name, sign_rgb, rng):
    """RGB, material and window ids for the 4 m ground floor (shop or entrance)."""
    h = int(GROUND_FLOOR_M / TEXEL_M)
    rgb = wall_pattern(style, h, width_px, rng)
    material = np.full((h, width_px), Material.WALL, dtype=np.uint8)
    window = np.full((h, width_px), -1, dtype=np.int32)
    door_w = 10
    door_x = int(rng.integers(2, max(3, width_px - door_w - 2)))
    if shop_name:
        rgb[2:8] = np.array(sign_rgb, np.float32)
        material[2:8] = Material.SIGN
        text_rgb = (255, 255, 255) if sum(sign_rgb) < 400 else (20, 20, 20)
        sign = np.ascontiguousarray(np.clip(rgb[1:9], 0, 255).astype(np.uint8))
        cv2.putText(sign, shop_name, (3, 7), cv2.FONT_HERSHEY_PLAIN, 0.55, text_rgb, 1,
                    cv2.LINE_8)
        rgb[1:9] = sign.astype(np.float32)
        shop = np.zeros((h, width_px), dtype=bool)
        shop[10:h - 3, 2:width_px - 2] = True
        rgb[shop] = np.array(style.glass_rgb, np.float32) * 1.3 + 20.0
        material[shop] = Material.WINDOW
        window[shop] = 1000 + np.arange(width_px)[None, :].repeat(h, 0)[shop] // 24
    rgb[h - 19:h, door_x:door_x + door_w] = np.array(style.trim_rgb, np.float32) * 0.5
    material[h - 19:h, door_x:door_x + door_w] = Material.DOOR
    window[h - 19:h, door_x:door_x + door_w] = -1
    return rgb, material, window


def facade_texture(style, n_bays, n_floors, shop_name, sign_rgb, rng):
    """Full facade texture (rows top to bottom): cornice, upper floors, ground floor."""
    width_px = n_bays * style.bay_px
    upper = _upper_floors(style, n_bays, n_floors, rng)
    ground = _ground_floor(style, width_px, shop_name, sign_rgb, rng)
    cornice_px = int(CORNICE_M / TEXEL_M)
    cornice_rgb = np.broadcast_to(np.array(style.trim_rgb, np.float32),
                                  (cornice_px, width_px, 3))
    cornice = (cornice_rgb, np.full((cornice_px, width_px), Material.ROOF_EDGE),
               np.full((cornice_px, width_px), -1))
    parts = [cornice, upper, ground]
    return tuple(np.concatenate([p[i] for p in parts], axis=0) for i in range(3))


def noise_tile(rgb, size_px, spread, rng, smooth=False):
    """Square float tile of a colour with per-texel (or blotchy) brightness noise."""
    noise = rng.normal(1.0, spread, (size_px, size_px)).astype(np.float32)
    if smooth:
        noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
    return np.array(rgb, np.float32) * noise[..., None]


def foliage_tile(rng, size_px=24):
    """Leafy canopy tile: clumps of light and dark leaves."""
    clumps = cv2.GaussianBlur(rng.normal(1.0, 0.5, (size_px, size_px)).astype(np.float32),
                              (0, 0), 1.0)
    leaves = np.clip(clumps, 0.3, 1.6) * rng.uniform(0.8, 1.2, (size_px, size_px))
    return np.array((60, 120, 45), np.float32) * leaves[..., None]


def vehicle_texture(body_rgb, rng):
    """Side texture of a car: body colour with a glass band and dark wheels."""
    h, w = 12, 36
    rgb = np.broadcast_to(np.array(body_rgb, np.float32), (h, w, 3)).copy()
    rgb *= rng.uniform(0.95, 1.05, (h, w, 1))
    material = np.full((h, w), Material.VEHICLE, dtype=np.uint8)
    rgb[1:5, 4:w - 4] = (40, 50, 60)
    material[1:5, 4:w - 4] = Material.VEHICLE_GLASS
    for x in (5, w - 11):
        rgb[9:12, x:x + 6] = (20, 20, 20)
    return rgb, material


def pedestrian_texture(rng):
    """Front texture of a pedestrian: head, shirt and trousers."""
    h, w = 14, 4
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:2] = rng.choice([(230, 190, 160), (160, 110, 80), (90, 60, 40)])
    rgb[2:7] = rng.integers(20, 240, 3)
    rgb[7:] = rng.integers(10, 120, 3)
    return rgb, Material.PEDESTRIAN

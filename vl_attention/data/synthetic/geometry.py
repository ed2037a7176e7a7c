"""Textured quads, the only primitive of the synthetic world.

A quad is the parallelogram ``corner + a * edge_u + b * edge_v`` for ``a, b`` in
``[0, 1]``; ``edge_u`` runs left to right and ``edge_v`` bottom to top as seen
from the front, so ``cross(edge_u, edge_v)`` is the outward normal.  Quads are
one-sided: the renderer culls them when seen from behind.
"""

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class TextureRef:
    """Where a texture lives in the atlas, and how it maps onto a quad."""

    offset: int
    width: int
    height: int
    repeat_u: float = 1.0
    repeat_v: float = 1.0
    wrap: bool = False


@dataclass(frozen=True)
class QuadSet:
    """Structure-of-arrays for Q quads (all arrays have leading dimension Q)."""

    corner: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    tex_offset: np.ndarray
    tex_width: np.ndarray
    tex_height: np.ndarray
    repeat_u: np.ndarray
    repeat_v: np.ndarray
    wrap: np.ndarray

    def __len__(self):
        """Return the number of quads."""
        return int(self.corner.shape[0])

    @property
    def normal(self):
        """Unit outward normals (Q, 3)."""
        normal = np.cross(self.edge_u, self.edge_v)
        return normal / np.linalg.norm(normal, axis=1, keepdims=True)

    def corners(self):
        """Corner points (Q, 4, 3) in the order bottom-left, bottom-right, top-right, top-left."""
        c, u, v = self.corner, self.edge_u, self.edge_v
        return np.stack([c, c + u, c + u + v, c + v], axis=1)

    @staticmethod
    def empty():
        """Return a QuadSet with no quads."""
        return QuadBuilder().build()

    @staticmethod
    def concat(sets):
        """Concatenate several QuadSets (order kept, so ids are offsets into the result)."""
        sets = [s for s in sets if len(s)]
        if not sets:
            return QuadSet.empty()
        return QuadSet(**{f.name: np.concatenate([getattr(s, f.name) for s in sets])
                          for f in fields(QuadSet)})


class QuadBuilder:
    """Accumulates quads and boxes, then freezes them into a QuadSet."""

    def __init__(self):
        """Start with no quads."""
        self._rows = []

    def __len__(self):
        """Return the number of quads added so far."""
        return len(self._rows)

    def add(self, corner, edge_u, edge_v, texture):
        """Add one quad with a TextureRef."""
        self._rows.append((corner, edge_u, edge_v, texture))

    def add_box(self, min_xyz, max_xyz, side_textures, top_texture=None, bottom_texture=None):
        """Add the outward faces of an axis-aligned box; ``side_textures`` is E, N, W, S."""
        x0, y0, z0 = min_xyz
        x1, y1, z1 = max_xyz
        sx, sy, sz = x1 - x0, y1 - y0, z1 - z0
        up = (0.0, 0.0, sz)
        east, north, west, south = side_textures
        self.add((x1, y0, z0), (0.0, sy, 0.0), up, east)
        self.add((x1, y1, z0), (-sx, 0.0, 0.0), up, north)
        self.add((x0, y1, z0), (0.0, -sy, 0.0), up, west)
        self.add((x0, y0, z0), (sx, 0.0, 0.0), up, south)
        if top_texture is not None:
            self.add((x0, y0, z1), (sx, 0.0, 0.0), (0.0, sy, 0.0), top_texture)
        if bottom_texture is not None:
            self.add((x0, y1, z0), (sx, 0.0, 0.0), (0.0, -sy, 0.0), bottom_texture)

    def build(self):
        """Freeze into a QuadSet."""
        def vec(i):
            return np.array([r[i] for r in self._rows], dtype=np.float64).reshape(-1, 3)

        textures = [r[3] for r in self._rows]
        return QuadSet(
            corner=vec(0), edge_u=vec(1), edge_v=vec(2),
            tex_offset=np.array([t.offset for t in textures], dtype=np.int64),
            tex_width=np.array([t.width for t in textures], dtype=np.int64),
            tex_height=np.array([t.height for t in textures], dtype=np.int64),
            repeat_u=np.array([t.repeat_u for t in textures], dtype=np.float32),
            repeat_v=np.array([t.repeat_v for t in textures], dtype=np.float32),
            wrap=np.array([t.wrap for t in textures], dtype=bool))

"""Z-buffered rasteriser of textured quads, written as vectorised numpy.

For every quad that survives back-face, distance and frustum culling, the
pixel rays inside its screen bounding box are intersected with its plane;
hits inside the parallelogram and nearer than the depth buffer win.  Quads
are drawn front to back, so a quad whose box is already covered by nearer
surfaces is skipped after one ``max`` over the depth buffer.
"""

from dataclasses import dataclass

import numpy as np

NEAR_M = 0.05


@dataclass(frozen=True)
class GeometryBuffers:
    """Per-pixel geometry of a frame, independent of appearance conditions.

    ``depth_m`` is the distance along the optical axis (inf for sky),
    ``quad_id`` the index of the visible quad in the scene (-1 for sky) and
    ``rays_enu`` the ``(3, H, W)`` ray directions with unit forward component.
    """

    depth_m: np.ndarray
    quad_id: np.ndarray
    rays_enu: np.ndarray
    position_enu_m: np.ndarray


def _cull(quads, camera, position, rotation, translation, max_distance_m):
    """Return indices of quads facing the camera, within range and touching the frustum."""
    to_camera = position - quads.corner
    facing = np.einsum('ij,ij->i', quads.normal, to_camera) > 1e-6
    centre = quads.corner + 0.5 * (quads.edge_u + quads.edge_v)
    radius = 0.5 * np.linalg.norm(quads.edge_u + quads.edge_v, axis=1)
    radius = np.maximum(radius, 0.5 * np.linalg.norm(quads.edge_u - quads.edge_v, axis=1))
    near = np.linalg.norm(centre - position, axis=1) - radius < max_distance_m
    candidates = np.flatnonzero(facing & near)
    optical = quads.corners()[candidates] @ rotation.T + translation
    x, y, z = optical[..., 0], optical[..., 1], optical[..., 2]
    outside = ((z < NEAR_M).all(1)
               | (camera.fx * x + (camera.cx + 1.0) * z < 0).all(1)
               | (camera.fx * x - (camera.width - camera.cx) * z > 0).all(1)
               | (camera.fy * y + (camera.cy + 1.0) * z < 0).all(1)
               | (camera.fy * y - (camera.height - camera.cy) * z > 0).all(1))
    return candidates[~outside], optical[~outside]


def _clip_near(polygon):
    """Clip a (4, 3) optical-frame polygon against the near plane; return the kept points."""
    kept = []
    for i in range(len(polygon)):
        p, q = polygon[i], polygon[(i + 1) % len(polygon)]
        if p[2] >= NEAR_M:
            kept.append(p)
        if (p[2] >= NEAR_M) != (q[2] >= NEAR_M):
            s = (NEAR_M - p[2]) / (q[2] - p[2])
            kept.append(p + s * (q - p))
    return np.array(kept)


def _screen_boxes(camera, optical):
    """Integer pixel boxes (x0, y0, x1, y1), exclusive ends, and nearest depths per quad."""
    z = np.maximum(optical[..., 2], NEAR_M)
    u = camera.fx * optical[..., 0] / z + camera.cx
    v = camera.fy * optical[..., 1] / z + camera.cy
    bounds = np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], axis=1)
    min_depth = optical[..., 2].min(1)
    for i in np.flatnonzero(min_depth < NEAR_M):
        polygon = _clip_near(optical[i])
        pu = camera.fx * polygon[:, 0] / polygon[:, 2] + camera.cx
        pv = camera.fy * polygon[:, 1] / polygon[:, 2] + camera.cy
        bounds[i] = (pu.min(), pv.min(), pu.max(), pv.max())
    bounds = np.clip(bounds, -1e6, 1e6)
    boxes = np.empty((len(optical), 4), dtype=np.int64)
    boxes[:, :2] = np.floor(bounds[:, :2])
    boxes[:, 2:] = np.ceil(bounds[:, 2:]) + 1
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, camera.width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, camera.height)
    return boxes, np.maximum(min_depth, NEAR_M)


def _dot(channels, vector):
    """Dot product of (3, h, w) ray channels with a 3-vector, skipping zero components."""
    result = None
    for channel, component in zip(channels, vector):
        if component != 0.0:
            term = channel * component
            result = term if result is None else result + term
    return result if result is not None else np.zeros(channels[0].shape, np.float32)


def plane_parameters(quads, indices, position):
    """Per-quad plane and edge coefficients relative to the camera, as float32.

    Returns normals (K, 3), ``n . (corner - camera)`` (K,), edges scaled by
    their squared length (K, 2, 3) and ``scaled_edge . (corner - camera)`` (K, 2).
    """
    offset = quads.corner[indices] - position
    normal = np.cross(quads.edge_u[indices], quads.edge_v[indices])
    scaled = np.stack([quads.edge_u[indices], quads.edge_v[indices]], axis=1)
    scaled /= np.einsum('kij,kij->ki', scaled, scaled)[..., None]
    return (normal.astype(np.float32), np.einsum('ij,ij->i', normal, offset).astype(np.float32),
            scaled.astype(np.float32), np.einsum('kij,kj->ki', scaled, offset).astype(np.float32))


def _draw_quad(buffers, rays, params, k, index, box, min_depth):
    """Depth-test one quad inside its screen box."""
    x0, y0, x1, y1 = box
    depth = buffers[0][y0:y1, x0:x1]
    if min_depth > depth.max():
        return
    normal, normal_offset, scaled, scaled_offset = params
    channels = rays[:, y0:y1, x0:x1]
    with np.errstate(divide='ignore', invalid='ignore'):
        t = normal_offset[k] / _dot(channels, normal[k])
    mask = (t > NEAR_M) & (t < depth)
    for edge in range(2):
        coordinate = t * _dot(channels, scaled[k, edge]) - scaled_offset[k, edge]
        mask &= np.abs(coordinate - 0.5) <= 0.5
    depth[mask] = t[mask]
    buffers[1][y0:y1, x0:x1][mask] = index


def rasterize(quads, camera, position_enu_m, quaternion_xyzw, max_distance_m=180.0):
    """Depth and quad-id buffers for a camera pose; see :class:`GeometryBuffers`."""
    position = np.asarray(position_enu_m, dtype=np.float64)
    rotation, translation = camera.world_to_optical(position, quaternion_xyzw)
    rays = camera.ray_directions_enu(quaternion_xyzw)
    depth = np.full((camera.height, camera.width), np.inf, dtype=np.float32)
    quad_id = np.full((camera.height, camera.width), -1, dtype=np.int32)
    indices, optical = _cull(quads, camera, position, rotation, translation, max_distance_m)
    boxes, min_depth = _screen_boxes(camera, optical)
    params = plane_parameters(quads, indices, position)
    visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order = np.flatnonzero(visible)
    for k in order[np.argsort(min_depth[order], kind='stable')]:
        _draw_quad((depth, quad_id), rays, params, k, indices[k], boxes[k], min_depth[k])
    return GeometryBuffers(depth_m=depth, quad_id=quad_id, rays_enu=rays,
                           position_enu_m=position)

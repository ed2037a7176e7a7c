"""Dynamic occluders: parked and stopped vehicles and pedestrians, drawn per traversal.

Their placement depends on a per-traversal seed, so two traversals of the same
route see different cars and people in front of the same facades.
"""

from dataclasses import dataclass, replace

import numpy as np

from vl_attention.data.synthetic.geometry import QuadBuilder, QuadSet

VEHICLE_SIZE_M = (4.4, 1.8, 1.5)
PEDESTRIAN_SIZE_M = (0.5, 0.35, 1.75)


@dataclass(frozen=True)
class Occluders:
    """Occluder quads (textured from the town atlas) and their box footprints."""

    quads: QuadSet
    boxes_enu_m: np.ndarray

    def __len__(self):
        """Return the number of occluder boxes."""
        return len(self.boxes_enu_m)


def _segments(town):
    """Street segments between junctions: (fixed coordinate, start, end, vertical)."""
    half = town.street_half_width_m + 3.0
    result = []
    for vertical, across, along in ((True, town.street_x_m, town.street_y_m),
                                    (False, town.street_y_m, town.street_x_m)):
        for centre in across:
            for start, end in zip(along[:-1], along[1:]):
                result.append((centre, start + half, end - half, vertical))
    return result


def _box(centre_lateral, along_m, half_lateral, half_along, height_m, vertical):
    """Axis-aligned box (min, max) for an object at a lateral/along street position."""
    if vertical:
        return ((centre_lateral - half_lateral, along_m - half_along, 0.0),
                (centre_lateral + half_lateral, along_m + half_along, height_m))
    return ((along_m - half_along, centre_lateral - half_lateral, 0.0),
            (along_m + half_along, centre_lateral + half_lateral, height_m))


def _add(builder, boxes, box, texture):
    sides = [replace(texture, wrap=False)] * 4
    builder.add_box(box[0], box[1], sides, top_texture=sides[0])
    boxes.append(np.concatenate(box))


def place_occluders(town, density, seed):
    """Vehicles at the curbs and pedestrians on the sidewalks; ``density`` per 10 m."""
    rng = np.random.default_rng([int(seed), 0x0cc1])
    builder, boxes = QuadBuilder(), []
    if density <= 0:
        return Occluders(builder.build(), np.zeros((0, 6)))
    config = town.config
    length, width, height = VEHICLE_SIZE_M
    for centre, start, end, vertical in _segments(town):
        for side in (-1.0, 1.0):
            n_cars = rng.poisson(density * max(end - start, 0.0) / 10.0)
            lateral = centre + side * (config.road_width_m / 2 - 1.1)
            for along in np.sort(rng.uniform(start, end, n_cars)):
                box = _box(lateral, along, width / 2, length / 2,
                           height * rng.uniform(0.9, 1.2), vertical)
                texture = town.vehicle_textures[rng.integers(len(town.vehicle_textures))]
                _add(builder, boxes, box, texture)
            n_people = rng.poisson(0.7 * density * max(end - start, 0.0) / 10.0)
            for along in rng.uniform(start, end, n_people):
                lateral_m = centre + side * (config.road_width_m / 2
                                             + rng.uniform(0.5, config.sidewalk_width_m - 0.4))
                box = _box(lateral_m, along, PEDESTRIAN_SIZE_M[1] / 2, PEDESTRIAN_SIZE_M[0] / 2,
                           PEDESTRIAN_SIZE_M[2] * rng.uniform(0.85, 1.1), vertical)
                texture = town.pedestrian_textures[rng.integers(len(town.pedestrian_textures))]
                _add(builder, boxes, box, texture)
    return Occluders(builder.build(), np.array(boxes).reshape(-1, 6))

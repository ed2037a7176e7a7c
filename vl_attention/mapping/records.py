"""Per-image records of a map: ids, stamps, WGS84 and ENU positions, orientations.

Input format for map building (``poses.csv``)::

    image,stamp_ns,latitude_deg,longitude_deg,altitude_m,qx,qy,qz,qw

or ``poses.json``: a list of objects with the same keys (or ``{"poses": [...]}``).

``image`` is a file name relative to the images folder; the quaternion is the
camera's orientation in the local ENU frame (see :mod:`vl_attention.geo`).
Extra columns (e.g. ``x_m,y_m,z_m``) are allowed and ignored: ENU positions
are always recomputed from WGS84 at the map's origin.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import numpy.typing as npt

from vl_attention.errors import VLAttentionError
from vl_attention.geo import geodetic_to_enu, GeodeticOrigin, normalize_quaternion
from vl_attention.io import StrPath

POSES_COLUMNS = ('image', 'stamp_ns', 'latitude_deg', 'longitude_deg', 'altitude_m',
                 'qx', 'qy', 'qz', 'qw')


class PosesFileError(VLAttentionError, ValueError):
    """A poses CSV is malformed; the message names the file, line and fix."""


@dataclass(frozen=True)
class PlaceRecords:
    """Column arrays describing N database images, index-aligned with the FAISS index."""

    image_id: np.ndarray
    stamp_ns: np.ndarray
    latitude_deg: np.ndarray
    longitude_deg: np.ndarray
    altitude_m: np.ndarray
    position_enu_m: np.ndarray
    orientation_xyzw: np.ndarray

    def __len__(self) -> int:
        """Return the number of records."""
        return len(self.image_id)

    def arrays(self) -> dict[str, np.ndarray]:
        """Name -> array, for storage."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def records_from_columns(image_id: npt.ArrayLike, stamp_ns: npt.ArrayLike,
                         latitude_deg: npt.ArrayLike, longitude_deg: npt.ArrayLike,
                         altitude_m: npt.ArrayLike, orientation_xyzw: npt.ArrayLike,
                         origin: GeodeticOrigin) -> PlaceRecords:
    """Build typed records with ENU positions computed at ``origin``."""
    latitude_deg = np.asarray(latitude_deg, dtype=np.float64)
    longitude_deg = np.asarray(longitude_deg, dtype=np.float64)
    altitude_m = np.asarray(altitude_m, dtype=np.float64)
    return PlaceRecords(
        image_id=np.asarray(image_id, dtype=np.str_),
        stamp_ns=np.asarray(stamp_ns, dtype=np.int64),
        latitude_deg=latitude_deg, longitude_deg=longitude_deg, altitude_m=altitude_m,
        position_enu_m=geodetic_to_enu(latitude_deg, longitude_deg, altitude_m,
                                       origin).reshape(-1, 3),
        orientation_xyzw=normalize_quaternion(
            np.asarray(orientation_xyzw, dtype=np.float64).reshape(-1, 4)))


def concatenate_records(parts: Iterable[PlaceRecords]) -> PlaceRecords:
    """Join record sets in order."""
    parts = list(parts)
    return PlaceRecords(**{name: np.concatenate([getattr(part, name) for part in parts])
                           for name in PlaceRecords.__dataclass_fields__})


def read_poses(path: StrPath) -> dict[str, list[Any]]:
    """Columns of a poses file, CSV or JSON by suffix."""
    if Path(path).suffix.lower() == '.json':
        return read_poses_json(path)
    return read_poses_csv(path)


def read_poses_json(path: StrPath) -> dict[str, list[Any]]:
    """Columns of a poses JSON file (a list of objects with the CSV's keys)."""
    path = Path(path)
    if not path.is_file():
        raise PosesFileError(f'poses file {path} does not exist')
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PosesFileError(f'{path} is not valid JSON ({error})') from error
    rows = rows.get('poses') if isinstance(rows, dict) else rows
    if not isinstance(rows, list) or not rows:
        raise PosesFileError(f'{path} must hold a non-empty list of poses (or {{"poses": [...]}})')
    columns: dict[str, list[Any]] = {name: [] for name in POSES_COLUMNS}
    for number, row in enumerate(rows):
        missing = [name for name in POSES_COLUMNS if not isinstance(row, dict) or name not in row]
        if missing:
            raise PosesFileError(f'{path}: pose #{number} lacks key(s) {missing}; each pose '
                                 f'needs {",".join(POSES_COLUMNS)}')
        _append_row(columns, row, f'{path}: pose #{number}')
    return columns


def read_poses_csv(path: StrPath) -> dict[str, list[Any]]:
    """Rows of a poses CSV as a dict of columns (strings for ``image``, numbers otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise PosesFileError(f'poses file {path} does not exist')
    with path.open(newline='') as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in POSES_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise PosesFileError(f'{path}: missing column(s) {missing}; the header must include '
                                 f'{",".join(POSES_COLUMNS)}')
        columns: dict[str, list[Any]] = {name: [] for name in POSES_COLUMNS}
        for line_number, row in enumerate(reader, start=2):
            _append_row(columns, row, f'{path}:{line_number}')
    if not columns['image']:
        raise PosesFileError(f'{path} has a header but no poses')
    return columns


def _append_row(columns: dict[str, list[Any]], row: Mapping[str, Any], where: str) -> None:
    columns['image'].append(str(row['image']))
    try:
        columns['stamp_ns'].append(int(row['stamp_ns']))
        for name in POSES_COLUMNS[2:]:
            columns[name].append(float(row[name]))
    except (TypeError, ValueError) as error:
        raise PosesFileError(f'{where}: {error}; every column after image must be a number') \
            from error
    quaternion = [columns[name][-1] for name in ('qx', 'qy', 'qz', 'qw')]
    if float(np.linalg.norm(quaternion)) < 1e-12:   # NaN (orientation unknown) passes
        raise PosesFileError(f'{where}: the orientation qx,qy,qz,qw is all zero; give a unit '
                             'quaternion (0,0,0,1 for no rotation)')

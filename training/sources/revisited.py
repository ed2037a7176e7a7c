"""Revisited Oxford 5k and Paris 6k (Radenovic et al., "Revisiting Oxford and Paris", CVPR 2018).

Landmark retrieval benchmarks with per-query ground truth lists instead of
positions. Each query has ``easy``, ``hard`` and ``junk`` database images; the
three protocols of the paper define which count as positives and which are
ignored (neither positive nor negative) when ranking:

* ``easy``: positives = easy; ignored = junk + hard;
* ``medium``: positives = easy + hard; ignored = junk;
* ``hard``: positives = hard; ignored = junk + easy.

The ground truth ships as a Python pickle (``gnd_<name>.pkl``). Unpickling can
run code embedded in the file, so it is read only with ``allow_pickle=True``,
and then through an unpickler that accepts nothing but plain containers and
numpy arrays. A JSON copy with the same keys (``gnd_<name>.json``) is read
without the flag.
"""

import hashlib
import json
from pathlib import Path
import pickle
from typing import Any, BinaryIO, cast, Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np
import numpy.typing as npt

from vl_attention.config import ConfigError
from vl_attention.errors import VLAttentionError
from vl_attention.evaluation.place_dataset import PlaceDataset
from vl_attention.io import atomic_write_bytes
# vl_attention.training.* is Any to mypy (setup.cfg): cast() states what its calls return
from vl_attention.training.sources.base import (DatasetLayoutError, DATASETS, make_dataset,
                                                require_path)
from vl_attention.training.sources.robot import default_frames_cache

PROTOCOLS = {'easy': (('easy',), ('junk', 'hard')),
             'medium': (('easy', 'hard'), ('junk',)),
             'hard': (('hard',), ('junk', 'easy'))}
# numpy's array / scalar reconstruction (its module moved in numpy 2), and the bytes
# helpers of protocol-2 pickles; nothing that can reach the file system or run commands.
_NUMPY_GLOBALS = (('multiarray', '_reconstruct'), ('multiarray', 'scalar'),
                  ('numeric', '_frombuffer'))
_ALLOWED_GLOBALS = frozenset(
    [(f'numpy.{core}.{module}', name) for core in ('core', '_core')
     for module, name in _NUMPY_GLOBALS]
    + [('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'), ('builtins', 'bytes'),
       ('__builtin__', 'bytes')])


class UnsafePickleError(VLAttentionError, ValueError):
    """A ground-truth pickle was not opted into, or holds more than plain data."""


@DATASETS.register('roxford5k')
def load_roxford5k(*, root: str | Path, allow_pickle: bool = False, protocol: str = 'medium',
                   crop_queries: bool = True,
                   cache_dir: Optional[str | Path] = None) -> PlaceDataset:
    """Load revisited Oxford 5k: ``root/jpg/*.jpg`` and ``root/gnd_roxford5k.pkl``.

    See :func:`load_revisited` for the rows, the ground truth and the options.
    """
    return load_revisited('roxford5k', root, allow_pickle=allow_pickle, protocol=protocol,
                          crop_queries=crop_queries, cache_dir=cache_dir)


@DATASETS.register('rparis6k')
def load_rparis6k(*, root: str | Path, allow_pickle: bool = False, protocol: str = 'medium',
                  crop_queries: bool = True,
                  cache_dir: Optional[str | Path] = None) -> PlaceDataset:
    """Load revisited Paris 6k: ``root/jpg/*.jpg`` and ``root/gnd_rparis6k.pkl``.

    See :func:`load_revisited` for the rows, the ground truth and the options.
    """
    return load_revisited('rparis6k', root, allow_pickle=allow_pickle, protocol=protocol,
                          crop_queries=crop_queries, cache_dir=cache_dir)


def load_revisited(name: str, root: str | Path, *, allow_pickle: bool, protocol: str,
                   crop_queries: bool, cache_dir: Optional[str | Path]) -> PlaceDataset:
    """Build a revisited benchmark ``name`` from its folder.

    Layout::

        root/jpg/all_souls_000013.jpg ...    (queries and database images)
        root/gnd_<name>.pkl                  dict: imlist, qimlist, gnd

    ``gnd[q]`` holds ``easy``, ``hard``, ``junk`` (indices into ``imlist``) and
    ``bbx``, the query's box ``(x1, y1, x2, y2)`` in pixels. As in the paper's
    protocol, queries are cropped to their box (``crop_queries``): the crops
    are written once as PNG under ``<cache_dir>/<name>-queries-<digest>/``
    (default cache: ``$XDG_CACHE_HOME/vl_attention/frames``) and the query
    rows point at them. Rows: the ``len(qimlist)`` queries first (role
    ``query``), then the database images in ``imlist`` order (role
    ``database``), all split ``test``, so database image ``i`` is row
    ``len(qimlist) + i``. Query rows carry ``positives`` / ``ignored`` of
    ``protocol`` as rows; database rows have empty lists. No positions.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f'protocol={protocol!r}; known protocols: {sorted(PROTOCOLS)}')
    root = cast(Path, require_path(root, f'the {name} folder holding jpg/ and gnd_{name}.pkl'))
    ground_truth = _read_ground_truth(root, name, allow_pickle)
    images, queries = list(ground_truth['imlist']), list(ground_truth['qimlist'])
    folder = require_path(root / 'jpg', 'the folder of <image name>.jpg files')
    paths = [folder / f'{image}.jpg' for image in queries + images]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise DatasetLayoutError(f'{len(missing)} listed image(s) are missing, e.g. {missing[0]}')
    if crop_queries:
        paths[:len(queries)] = _cropped_queries(name, paths[:len(queries)],
                                                [entry.get('bbx') for entry in
                                                 ground_truth['gnd']], cache_dir)
    positive_keys, ignored_keys = PROTOCOLS[protocol]
    offset, empty = len(queries), np.zeros(0, np.int64)
    positives = [_rows(entry, positive_keys, offset, len(images)) for entry in
                 ground_truth['gnd']] + [empty] * len(images)
    ignored = [_rows(entry, ignored_keys, offset, len(images)) for entry in
               ground_truth['gnd']] + [empty] * len(images)
    return make_dataset(name, root, paths, splits='test',
                        roles=['query'] * len(queries) + ['database'] * len(images),
                        positives=tuple(positives), ignored=tuple(ignored),
                        frame={'kind': 'none'})


def _cropped_queries(name: str, paths: Sequence[Path], boxes: Sequence[Any],
                     cache_dir: Optional[str | Path]) -> List[Path]:
    boxes = [None if box is None else [float(v) for v in np.asarray(box).reshape(-1)]
             for box in boxes]
    key = json.dumps([[str(path.resolve()) for path in paths], boxes])
    folder = Path(cache_dir or default_frames_cache()) / \
        f'{name}-queries-{hashlib.sha1(key.encode()).hexdigest()[:16]}'
    crops = []
    for path, box in zip(paths, boxes):
        crop = folder / f'{path.stem}.png'
        if box is not None and not crop.is_file():
            _write_crop(path, box, crop)
        crops.append(path if box is None else crop)
    return crops


def _write_crop(path: Path, box: Sequence[float], crop_path: Path) -> None:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetLayoutError(f'cannot read query image {path}')
    # PIL's Image.crop (used by the authors' code) rounds the box to whole pixels.
    x1, y1, x2, y2 = (int(round(value)) for value in box)
    crop = image[max(y1, 0):y2, max(x1, 0):x2]
    if crop.size == 0:
        raise DatasetLayoutError(f'query box {box} lies outside {path} '
                                 f'({image.shape[1]}x{image.shape[0]} pixels)')
    atomic_write_bytes(crop_path, cv2.imencode('.png', crop)[1].tobytes())


def _read_ground_truth(root: Path, name: str, allow_pickle: bool) -> Dict[str, Any]:
    json_path = root / f'gnd_{name}.json'
    if json_path.is_file():
        ground_truth = json.loads(json_path.read_text())
        where = json_path
    else:
        where = require_path(root / f'gnd_{name}.pkl', 'the ground truth of the benchmark '
                             f'(or a JSON copy gnd_{name}.json with the same keys)')
        if not allow_pickle:
            raise UnsafePickleError(
                f'{where} is a Python pickle, and unpickling a file can execute code written '
                'into it. Pass allow_pickle=True if you trust it (downloaded from the '
                "authors' site, http://cmp.felk.cvut.cz/revisitop/); it is then read with an "
                'unpickler that accepts only containers and numpy arrays. Or convert it once '
                f'to gnd_{name}.json (imlist, qimlist, gnd with easy/hard/junk/bbx as lists)')
        with where.open('rb') as handle:
            ground_truth = _PlainDataUnpickler(handle, where).load()
    _check_ground_truth(ground_truth, where)
    return ground_truth


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global but numpy's array reconstruction."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return numpy's array constructors; refuse every other global."""
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f'{self.path} refers to {module}.{name}, which a plain '
                                    'ground-truth file never does; refusing to load it')
        return super().find_class(module, name)


def _check_ground_truth(ground_truth: object, where: Path) -> None:
    if not isinstance(ground_truth, dict) or not {'imlist', 'qimlist', 'gnd'} <= set(
            ground_truth):
        raise DatasetLayoutError(f'{where} must hold a dict with imlist, qimlist and gnd')
    if len(ground_truth['gnd']) != len(ground_truth['qimlist']):
        raise DatasetLayoutError(f'{where}: gnd has {len(ground_truth["gnd"])} entries for '
                                 f'{len(ground_truth["qimlist"])} queries')
    for number, entry in enumerate(ground_truth['gnd']):
        missing = [key for key in ('easy', 'hard', 'junk') if key not in entry]
        if missing:
            raise DatasetLayoutError(f'{where}: gnd[{number}] lacks {missing}')


def _rows(entry: Mapping[str, Any], keys: Sequence[str], offset: int,
          count: int) -> npt.NDArray[np.int64]:
    indices = np.concatenate([np.asarray(entry[key], np.int64).reshape(-1) for key in keys])
    if len(indices) and (indices.min() < 0 or indices.max() >= count):
        raise DatasetLayoutError(f'ground truth index out of range [0, {count}) in {keys}')
    return np.unique(indices) + offset

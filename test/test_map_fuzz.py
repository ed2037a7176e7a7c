"""Random damage to every map file: a clean MapFormatError or an identical map, never a traceback.

Each case hard-links a copy of one small real map (so the original is never
written), damages one file (flipped bits, random bytes, a zeroed run, a
truncation) and, in most cases, recomputes the manifest's sizes and checksums
to match, so that the content checks behind the checksums are reached.
"""

import json
import os
from pathlib import Path
import shutil

import numpy as np
import pytest

from vl_attention.mapping.map_format import (_file_checksums, load_map, MANIFEST_FILE,
                                             MapFormatError)

CASES = int(os.environ.get('VL_MAP_FUZZ_CASES', '240'))   # more for a long hunt
MUTATIONS = ('flip_bits', 'random_bytes', 'zero_run', 'truncate')
TOP_K = 5


def _search(loaded, queries):
    return loaded.index.search(queries, TOP_K)


@pytest.fixture(scope='module')
def reference(tiny_map):
    """Return the intact map's files, search results on fixed queries and records."""
    loaded = load_map(tiny_map, verify='full')
    rng = np.random.default_rng(7)
    extra = rng.normal(size=(8, loaded.index.dim)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    queries = np.concatenate([np.asarray(loaded.index.descriptors, np.float32), extra])
    files = sorted(json.loads((tiny_map / MANIFEST_FILE).read_text())['files']) + \
        [MANIFEST_FILE]
    return {'queries': queries, 'search': _search(loaded, queries),
            'records': loaded.records.arrays(), 'files': files}


def _replace(path, data):
    path.unlink()   # the copy is hard-linked to the original: never write through it
    path.write_bytes(data)


def _damage(data, rng):
    data = bytearray(data)
    mutation = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    if mutation == 'truncate' or not data:
        return bytes(data[:int(rng.integers(len(data)))] if data else data), mutation
    if mutation == 'flip_bits':
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    elif mutation == 'random_bytes':
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
    else:
        start = int(rng.integers(len(data)))
        data[start:start + int(rng.integers(1, 65))] = bytes(min(64, len(data) - start))
    return bytes(data), mutation


def _rechecksum(map_dir):
    manifest_path = map_dir / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        return
    manifest['files'] = {name: _file_checksums(map_dir / name) for name in manifest['files']}
    _replace(manifest_path, json.dumps(manifest, indent=2).encode())


def _same_map(loaded, reference):
    similarities, indices = _search(loaded, reference['queries'])
    expected_similarities, expected_indices = reference['search']
    records = loaded.records.arrays()
    return (np.array_equal(indices, expected_indices)
            and np.allclose(similarities, expected_similarities, rtol=0.0, atol=1e-5)
            and all(np.array_equal(records[name], value)
                    for name, value in reference['records'].items()))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')   # numpy on a damaged dtype
def test_damaged_map_files_are_refused_or_harmless(tiny_map, reference, tmp_path):
    outcomes, failures = {'refused': 0, 'identical': 0}, []
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        name = reference['files'][seed % len(reference['files'])]
        case = tmp_path / f'case{seed}'
        shutil.copytree(tiny_map, case, copy_function=os.link)
        damaged, mutation = _damage((case / name).read_bytes(), rng)
        _replace(case / name, damaged)
        rechecksum = name != MANIFEST_FILE and rng.random() < 0.75
        if rechecksum:
            _rechecksum(case)
        where = f'seed {seed}: {mutation} {name} (checksums recomputed: {rechecksum})'
        try:
            loaded = load_map(case, verify='full')
        except MapFormatError as error:
            message = str(error)
            if '\n' in message or 'rebuild the map' not in message:
                failures.append(f'{where}: unclear message {message!r}')
            outcomes['refused'] += 1
        except Exception as error:  # noqa: B902 - anything else is the bug this test hunts
            failures.append(f'{where}: {type(error).__name__}: {error}')
        else:
            if _same_map(loaded, reference):
                outcomes['identical'] += 1
            else:
                failures.append(f'{where}: loaded a map that searches differently')
        shutil.rmtree(case)
    assert not failures, '\n'.join(failures)
    assert outcomes['refused'] > CASES // 2   # most damage is caught, not ignored
    assert sum(outcomes.values()) == CASES


def test_map_files_cover_every_part(reference):
    names = set(reference['files'])
    assert {'index.faiss', 'descriptors.npy', 'records.npz', 'camera.json',
            'features/points.npy', MANIFEST_FILE} <= names
    assert Path('features/offsets.npy').as_posix() in names

"""Code written into data files never runs: ground-truth ``.npy`` pickles and checkpoints.

Each test builds a real malicious file whose unpickling would create a marker
file, shows that the unsafe loader really would run it, and then checks that
the project's loader refuses it with one line and that the marker never appears.
"""

import os
from pathlib import Path
import random
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from vl_attention.cli import main as cli_main
from vl_attention.evaluation.vpr_dataset import (DatasetError, load_vpr_dataset,
                                                 read_ground_truth_npy, UnsafeGroundTruthError)
from vl_attention.training.checkpoint import (CHECKPOINT_VERSION, load_checkpoint,
                                              restore_rng_state, rng_state, save_checkpoint,
                                              UnsafeCheckpointError)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _dataset(root, ground_truth):
    """Write a 3-query, 4-image dataset folder with ``ground_truth`` as ground_truth.npy."""
    image = np.full((8, 8, 3), 128, np.uint8)
    for folder, count in (('database', 4), ('queries', 3)):
        (root / folder).mkdir(parents=True)
        for index in range(count):
            cv2.imwrite(str(root / folder / f'{index:03d}.png'), image)
    np.save(root / 'ground_truth.npy', ground_truth, allow_pickle=True)
    return root


def _object_rows(*rows):
    array = np.empty((len(rows), 2), dtype=object)
    for number, (query, indices) in enumerate(rows):
        array[number, 0], array[number, 1] = query, indices
    return array


def test_a_ground_truth_payload_does_not_run(tmp_path):
    marker = tmp_path / 'ran'
    root = _dataset(tmp_path / 'evil', _object_rows((0, np.array([0, 1])),
                                                    (1, _Payload(marker))))
    # the file is really malicious: numpy's own pickle path runs it
    np.load(root / 'ground_truth.npy', allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeGroundTruthError, match=r'asks to run posix\.system.*refused'):
        load_vpr_dataset(root)
    assert not marker.exists()


def test_evaluate_vpr_refuses_the_payload_in_one_line(tmp_path, capsys):
    marker = tmp_path / 'ran'
    root = _dataset(tmp_path / 'evil', _object_rows((0, _Payload(marker))))
    assert cli_main(['evaluate-vpr', '--dataset', str(root), '--out', str(tmp_path / 'out')]) == 1
    error = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert len(error.splitlines()) == 1 and 'posix.system' in error and 'np.save' in error
    assert not (tmp_path / 'out').exists()


def test_object_arrays_of_integer_arrays_still_load(tmp_path):
    root = _dataset(tmp_path / 'good', _object_rows((0, np.array([0, 1])), (2, [3]),
                                                    (1, np.zeros(0, np.int64))))
    positives = load_vpr_dataset(root).positives
    assert [p.tolist() for p in positives] == [[0, 1], [], [3]]
    assert all(p.dtype == np.int64 for p in positives)


def test_plain_integer_rows_load_without_pickle_and_repeated_queries_add_up(tmp_path):
    # one positive per row; query 0 appears twice
    root = _dataset(tmp_path / 'plain', np.array([[0, 2], [2, 1], [0, 3]], dtype=np.int64))
    positives = load_vpr_dataset(root).positives
    assert [p.tolist() for p in positives] == [[2, 3], [], [1]]


@pytest.mark.parametrize('rows, message', [
    (_object_rows((0, np.array([0.5]))), 'of integers'),
    (_object_rows((0, np.array([9]))), 'out of range'),
    (np.array(['a', 'b']), 'rows must be'),
])
def test_wrong_ground_truth_rows_are_refused_in_one_line(tmp_path, rows, message):
    with pytest.raises(DatasetError, match=message):
        load_vpr_dataset(_dataset(tmp_path / 'bad', rows))


def test_a_truncated_object_array_is_a_clear_error(tmp_path):
    root = _dataset(tmp_path / 'cut', _object_rows((0, np.array([0, 1])), (1, np.array([2]))))
    data = (root / 'ground_truth.npy').read_bytes()
    (root / 'ground_truth.npy').write_bytes(data[:-20])
    with pytest.raises(DatasetError, match='does not unpickle.*np.save'):
        load_vpr_dataset(root)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason='shared/data is not beside the repository')
@pytest.mark.parametrize('name', ['corridor', 'gardenspoint_day_night_sample',
                                  'nordland_dev_64x32'])
def test_the_shared_object_array_datasets_read_the_same_as_numpy(name):
    path = SHARED_DATA / name / 'ground_truth.npy'
    if not path.is_file():
        pytest.skip(f'{path} is missing')
    ours, numpys = read_ground_truth_npy(path), np.load(path, allow_pickle=True)
    assert ours.shape == numpys.shape
    for mine, theirs in zip(ours, numpys):
        assert int(mine[0]) == int(theirs[0])
        np.testing.assert_array_equal(mine[1], theirs[1])


def test_a_checkpoint_payload_does_not_run(tmp_path):
    marker, path = tmp_path / 'ran', tmp_path / 'last.pt'
    torch.save({'version': CHECKPOINT_VERSION, 'model': {}, 'hook': _Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the unsafe loader really runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert 'posix.system' in message and 'refused without running it' in message
    assert 'add_safe_globals' not in message  # no advice to switch the protection off


def test_train_resume_refuses_a_checkpoint_payload(tmp_path):
    marker = tmp_path / 'ran'
    out = tmp_path / 'run'
    (out / 'checkpoints').mkdir(parents=True)
    torch.save({'version': CHECKPOINT_VERSION, 'hook': _Payload(marker)},
               out / 'checkpoints' / 'last.pt')
    recipe = tmp_path / 'tiny.yaml'
    recipe.write_text(_TINY_RECIPE.format(root=tmp_path / 'places'))
    result = subprocess.run(
        [sys.executable, '-m', 'vl_attention.training.train', '--config', str(recipe),
         '--out', str(out), '--resume', '--device', 'cpu'],
        env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=300)
    assert not marker.exists()
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith('train: error:')]
    assert len(errors) == 1 and 'refused without running it' in errors[0], result.stderr[-2000:]
    assert 'Traceback' not in result.stderr


_TINY_RECIPE = """
name: tiny
model: effnet_lite0_gem
model_overrides:
  input_height: 32
  input_width: 32
  backbone_options: {{freeze: true}}
  aggregator_options: {{out_dim: 16, whiten: true}}
dataset:
  kind: synthetic
  root: {root}
  options: {{num_places: 8, held_out_places: 0, width: 32, height: 32, conditions: [day]}}
sampling: {{places_per_batch: 2, views_per_place: 2}}
epochs: 1
steps_per_epoch: 2
export: false
"""


def test_checkpoint_round_trip_restores_every_random_state_exactly(tmp_path):
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    negatives = {'rows': np.arange(5, dtype=np.int64),
                 'descriptors': np.random.rand(5, 4).astype(np.float32)}
    state = rng_state({'sampler': generator})
    save_checkpoint(tmp_path / 'last.pt', {'ranks': [{'rng': state, 'negatives': negatives}],
                                           'score': np.float32(0.25), 'step': 4})
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3,
                generator=generator))
    loaded = load_checkpoint(tmp_path / 'last.pt')
    mine = loaded['ranks'][0]
    restore_rng_state(mine['rng'], {'sampler': generator})
    actual = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3,
              generator=generator))
    assert torch.equal(expected[0], actual[0]) and torch.equal(expected[3], actual[3])
    assert np.array_equal(expected[1], actual[1]) and expected[2] == actual[2]
    for key, array in negatives.items():
        assert mine['negatives'][key].dtype == array.dtype
        np.testing.assert_array_equal(mine['negatives'][key], array)
    assert type(loaded['score']) is np.float32 and loaded['score'] == np.float32(0.25)
    assert loaded['step'] == 4 and loaded['version'] == CHECKPOINT_VERSION
    # the file itself is weights-only: plain torch.load reads it with no allow-list
    torch.load(tmp_path / 'last.pt', weights_only=True)


def test_a_checkpoint_from_before_weights_only_is_refused_with_the_reason(tmp_path):
    path = tmp_path / 'last.pt'
    torch.save({'version': 1, 'rng': np.random.get_state()}, path)  # what version 1 wrote
    with pytest.raises(UnsafeCheckpointError, match='_reconstruct.*release that wrote them'):
        load_checkpoint(path)

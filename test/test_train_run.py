"""``vl-attention train`` end to end: outputs, exact kill-and-resume, 2-process DDP (gloo).

Runs are real subprocesses on the synthetic world with a small recipe: the
ImageNet EfficientNet-Lite0 trunk with a trainable whitened GeM head.
"""

from dataclasses import replace
import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from vl_attention.engine.preprocess import preprocess_frames
from vl_attention.models import build_model, load_model_config
from vl_attention.training.sources import load_dataset

PLACES = {'num_places': 40, 'held_out_places': 12, 'width': 128, 'height': 96,
          'conditions': ['day', 'night', 'fog'], 'positive_distance_m': 4.0,
          'negative_distance_m': 15.0}


def _recipe(cache_dir, **changes):
    recipe = {
        'name': 'tiny', 'model': 'effnet_lite0_gem',
        'model_overrides': {'input_height': 96, 'input_width': 128,
                            'backbone_options': {'freeze': True},
                            'aggregator_options': {'learn_p': True, 'whiten': True,
                                                   'out_dim': 64}},
        'dataset': {'kind': 'synthetic', 'root': str(cache_dir), 'options': PLACES},
        'sampling': {'positive_distance_m': 4.0, 'negative_distance_m': 15.0,
                     'places_per_batch': 6, 'views_per_place': 2,
                     'hard_negatives_per_place': 1, 'negative_cache_size': 40,
                     'refresh_every_steps': 5},
        'optimizer': {'name': 'adam', 'lr': 1e-3}, 'schedule': {'name': 'cosine'},
        'epochs': 2, 'steps_per_epoch': 6, 'checkpoint_every_steps': 4, 'log_every_steps': 2,
        'export': False}
    recipe.update(changes)
    return recipe


@pytest.fixture(scope='module')
def place_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp('places')
    load_dataset('synthetic', root=str(cache), **PLACES)  # render once for every run
    return cache


def _write_recipe(path, recipe):
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train_command(recipe_path, out, *extra):
    return [sys.executable, '-m', 'vl_attention.training.train', '--config', str(recipe_path),
            '--out', str(out), *extra]


def _environment():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')


def _train(recipe_path, out, *extra):
    result = subprocess.run(_train_command(recipe_path, out, *extra), env=_environment(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((Path(out) / 'summary.json').read_text())


def _weights(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_train_writes_a_model_that_build_map_and_the_node_can_load(tmp_path, place_cache):
    recipe = _write_recipe(tmp_path / 'tiny.yaml', _recipe(place_cache, export=True))
    summary = _train(recipe, tmp_path / 'run')
    run = tmp_path / 'run'
    assert summary['steps'] == 12 and summary['world_size'] == 1
    # the starting weights are validated too, so a run that never improves keeps them
    assert [entry['epoch'] for entry in summary['validation']] == [0, 1, 2]
    assert set(summary['validation'][0]['by_condition']) == {'night', 'fog'}
    ranked = max(summary['validation'], key=lambda entry: (
        entry['recall_at_n']['5'], entry['recall_at_n']['1'], entry['pr_auc'], -entry['step']))
    assert (summary['best']['step'], summary['best']['recall_at_5']) == (
        ranked['step'], ranked['recall_at_n']['5'])
    assert summary['images_per_second'] > 0
    assert list((run / 'tensorboard').glob('events.out.tfevents.*'))
    # the written preset rebuilds the trained model; the ONNX export computes the same
    config = load_model_config(str(run / 'model.yaml'))
    model, untrained = build_model(config), build_model(replace(config, checkpoint=''))
    frames = [load_dataset('synthetic', root=str(place_cache), **PLACES).load_image(i)
              for i in (0, 50)]
    images = preprocess_frames(frames, model.preprocessing)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
        before = untrained(torch.from_numpy(images)).numpy()
    session = onnxruntime.InferenceSession(str(run / 'export' / 'model.onnx'))
    exported = session.run(None, {'images': images})[0]
    assert np.abs(exported - expected).max() < 1e-4
    assert np.abs(expected - before).max() > 1e-3  # training changed the head


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_weights(tmp_path, place_cache):
    # the trunk runs every step (no feature cache), so the run lasts long enough to kill
    recipe = _write_recipe(tmp_path / 'tiny.yaml', _recipe(
        place_cache, cache_backbone_features=False, epochs=3, checkpoint_every_steps=3))
    reference = _train(recipe, tmp_path / 'uninterrupted')
    killed = tmp_path / 'killed'
    process = subprocess.Popen(_train_command(recipe, killed), env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / 'checkpoints' / 'last.pt'
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / 'summary.json').exists(), 'the run finished before it was killed'
    resumed = _train(recipe, killed, '--resume')
    assert 0 < resumed['resumed_from_step'] < resumed['steps'] == reference['steps']
    assert resumed['loss_last_10'] == reference['loss_last_10']
    expected, actual = _weights(tmp_path / 'uninterrupted' / 'model.pt'), _weights(
        killed / 'model.pt')
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert [v['recall_at_n'] for v in resumed['validation']] == [
        v['recall_at_n'] for v in reference['validation']]


def test_resume_refuses_a_changed_recipe_and_a_fresh_run_refuses_an_existing_one(
        tmp_path, place_cache):
    recipe = _write_recipe(tmp_path / 'tiny.yaml', _recipe(place_cache, epochs=1))
    _train(recipe, tmp_path / 'run')
    again = subprocess.run(_train_command(recipe, tmp_path / 'run'), env=_environment(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and '--resume' in again.stderr
    changed = _write_recipe(tmp_path / 'changed.yaml', _recipe(
        place_cache, epochs=1, optimizer={'name': 'sgd', 'lr': 0.01}))
    refused = subprocess.run(_train_command(changed, tmp_path / 'run', '--resume'),
                             env=_environment(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "['optimizer']" in refused.stderr


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _torchrun_command(launch, port, recipe, out, *options):
    # torchrun with the ``launch`` options, meeting at a static rendezvous on this host
    return [sys.executable, '-m', 'torch.distributed.run', *launch, '--master_addr', '127.0.0.1',
            '--master_port', str(port), '-m', 'vl_attention.training.train',
            '--config', str(recipe), '--out', str(out), '--device', 'cpu', *options]


@pytest.mark.slow
def test_two_process_gloo_ddp_trains_identical_replicas(tmp_path, place_cache):
    recipe = _write_recipe(tmp_path / 'tiny.yaml', _recipe(place_cache))
    command = _torchrun_command(['--nproc_per_node', '2'], _free_port(), recipe, tmp_path / 'ddp')
    result = subprocess.run(command, env=_environment(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / 'ddp' / 'summary.json').read_text())
    hashes = summary['replica_weights_sha256']
    assert summary['world_size'] == 2 and len(hashes) == 2 and hashes[0] == hashes[1]
    # both processes' batches count, and the head moved away from its initialisation
    assert summary['steps'] == 12
    # (the last weights: model.pt holds the best validated ones, which may be the start)
    last = torch.load(tmp_path / 'ddp' / 'checkpoints' / 'last.pt', weights_only=False)
    assert summary['loss_last_10'] < summary['loss_first_10']
    assert abs(float(last['model']['aggregator.p']) - 3.0) > 1e-4


def _node_command(recipe, out, port, node_rank, *options):
    # one single-process node of two
    launch = ['--nnodes', '2', '--node_rank', str(node_rank), '--nproc_per_node', '1']
    return _torchrun_command(launch, port, recipe, out, *options)


def _run_together(commands, timeout=600):
    processes = [subprocess.Popen(command, env=_environment(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [(process.returncode, stderr) for process, (_, stderr) in zip(processes, outputs)]


@pytest.mark.slow
def test_two_nodes_train_identical_replicas_and_refuse_a_resume_one_node_cannot_see(
        tmp_path, place_cache):
    # each node has its own --out, as machines without a shared filesystem would
    recipe = _write_recipe(tmp_path / 'tiny.yaml', _recipe(place_cache))
    outs = [tmp_path / 'node0', tmp_path / 'node1']
    port = _free_port()
    results = _run_together([_node_command(recipe, out, port, rank)
                             for rank, out in enumerate(outs)])
    assert all(code == 0 for code, _ in results), [stderr[-3000:] for _, stderr in results]
    summary = json.loads((outs[0] / 'summary.json').read_text())
    hashes = summary['replica_weights_sha256']
    assert summary['world_size'] == 2 and summary['steps'] == 12 and hashes[0] == hashes[1]
    assert not outs[1].exists()  # the main process (global rank 0) alone writes
    # a resume needs the checkpoint on every node: node 1 has none, so both stop with the same
    # message (before, node 0 died in a collective with gloo's "Connection closed by peer")
    port = _free_port()
    results = _run_together([_node_command(recipe, out, port, rank, '--resume', '--epochs', '3')
                             for rank, out in enumerate(outs)], timeout=300)
    for code, stderr in results:
        assert code != 0 and 'process 1 of 2: nothing to resume' in stderr, stderr[-3000:]
        assert 'a filesystem they all share' in stderr

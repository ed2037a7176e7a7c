"""A NetVLAD vocabulary fitted on each map (``vocabulary: map``): build, resume, add, evaluate."""

import shutil

import numpy as np
import pytest

from conftest import SHARED_DATA
from vl_attention.cli import main as cli_main
from vl_attention.config import ConfigError
from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.engine.export_format import read_export
from vl_attention.engine.vocabulary import evenly_spaced, needs_map_vocabulary, VocabularyConfig
from vl_attention.evaluation.evaluate_vpr import evaluate_model, VPREvalConfig
from vl_attention.evaluation.vpr_dataset import load_vpr_dataset
from vl_attention.localization import Localizer, TrackingConfig
from vl_attention.mapping.builder import add_to_map, build_map, MapBuildConfig
from vl_attention.mapping.checkpoints import partial_dir
from vl_attention.mapping.errors import MapBuildError
from vl_attention.mapping.map_format import load_map, map_model_dir
from vl_attention.mapping.sources import FolderSource, read_rgb
from vl_attention.models import build_model, ModelConfig

PRESET = 'effnet_lite0_netvlad_map'
# 8 of the tiny world's 24 map images; each gives its 15 x 20 stride16 positions (300 < 500)
FIT = VocabularyConfig(images=8, features=4000)


class Interrupted(Exception):
    """A power cut during the embedding pass."""


class CutDuringEmbedding(FolderSource):
    """A folder source that fails at frame 13 of its third pass (count, fit, embed)."""

    passes = 0

    def frames(self):
        """Yield the frames; raise in the embedding pass."""
        type(self).passes += 1
        for count, frame in enumerate(super().frames()):
            if type(self).passes == 3 and count == 13:
                raise Interrupted('power cut')
            yield frame


@pytest.fixture(scope='module')
def unfitted(export_cache):
    """Return the preset's embedder before any map fitted its vocabulary."""
    return create_embedder(EmbedderConfig(model=PRESET, backend='onnxruntime',
                                          cache_dir=str(export_cache)))


@pytest.fixture(scope='module')
def fitted_map(tiny_world, unfitted, tmp_path_factory):
    """Build the tiny world's day map with the preset (its vocabulary fitted on it)."""
    folder = tiny_world / 'map_day'
    out = tmp_path_factory.mktemp('vocabulary') / 'map'
    return build_map(FolderSource(folder / 'images', folder / 'poses.csv'), out,
                     embedder=unfitted, cfg=MapBuildConfig(local_features='none', vocabulary=FIT))


def test_evenly_spaced_indices_cover_the_map():
    np.testing.assert_array_equal(evenly_spaced(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(evenly_spaced(3, 5), [0, 1, 2])
    np.testing.assert_array_equal(evenly_spaced(24, 8), [0, 3, 7, 10, 13, 16, 20, 23])


def test_vocabulary_needs_a_netvlad_head_and_a_known_source():
    with pytest.raises(ConfigError, match="vocabulary 'learned' is not one of"):
        ModelConfig(name='x', backbone='resnet18', aggregator='gem', vocabulary='learned')
    with pytest.raises(ConfigError, match='NetVLAD-type head'):
        build_model(ModelConfig(name='x', backbone='resnet18', aggregator='gem',
                                backbone_options={'weights': 'none'}, vocabulary='map'))


def test_the_map_carries_the_model_fitted_on_it(fitted_map, unfitted, tiny_world,
                                                export_cache):
    assert needs_map_vocabulary(unfitted.card)
    loaded = load_map(fitted_map)
    fit = loaded.manifest.build['vocabulary']
    assert fit == {'clusters': 64, 'fingerprint': loaded.manifest.model_fingerprint,
                   'images': 8, 'features': 8 * 300, 'iterations': 25, 'seed': 0}
    assert loaded.manifest.model_fingerprint != unfitted.fingerprint
    card = read_export(map_model_dir(fitted_map))
    assert card.fingerprint == loaded.manifest.model_fingerprint
    assert card.model_config['vocabulary'] == 'fitted' and not needs_map_vocabulary(card)
    # the carried ONNX model gives the map's own descriptors; the unfitted one does not
    carried = create_embedder(EmbedderConfig(export_dir=str(map_model_dir(fitted_map)),
                                             backend='onnxruntime', cache_dir=str(export_cache)))
    images = [read_rgb(tiny_world / 'map_day' / 'images' / name)
              for name in loaded.records.image_id[:3].tolist()]
    descriptors = carried.embed(images)
    np.testing.assert_allclose(descriptors, loaded.index.descriptors[:3], atol=1e-5)
    assert np.max(np.abs(unfitted.embed(images) - descriptors)) > 0.05
    assert not partial_dir(fitted_map).exists()   # the kept centroids went with the build


def test_resumed_build_embeds_with_the_same_fitted_model(fitted_map, tiny_world, unfitted,
                                                         tmp_path):
    folder = tiny_world / 'map_day'
    out = tmp_path / 'map'
    cfg = MapBuildConfig(local_features='none', vocabulary=FIT, checkpoint_frames=8)
    with pytest.raises(Interrupted):
        build_map(CutDuringEmbedding(folder / 'images', folder / 'poses.csv'), out,
                  embedder=unfitted, cfg=cfg)
    assert (partial_dir(out) / 'vocabulary.npy').is_file()
    resumed = load_map(build_map(FolderSource(folder / 'images', folder / 'poses.csv'), out,
                                 embedder=unfitted, cfg=cfg))
    fresh = load_map(fitted_map)
    assert resumed.manifest.build['vocabulary'] == fresh.manifest.build['vocabulary'] | {
        'resumed': True}
    # the same fit in a second build of the same images: the same model and descriptors
    assert resumed.manifest.model_fingerprint == fresh.manifest.model_fingerprint
    np.testing.assert_allclose(resumed.index.descriptors, fresh.index.descriptors, atol=1e-6)
    assert resumed.manifest.build['frames'] == fresh.manifest.build['frames']


def test_adding_to_a_fitted_map_uses_the_model_it_carries(fitted_map, tiny_world, unfitted,
                                                          tmp_path, export_cache):
    night = tiny_world / 'query_night'
    with pytest.raises(MapBuildError, match='model the map carries'):
        add_to_map(fitted_map, FolderSource(night / 'images', night / 'poses.csv'),
                   embedder=unfitted)
    copy = tmp_path / 'map'
    shutil.copytree(fitted_map, copy)
    assert cli_main(['map', 'add', str(copy), '--images', str(night / 'images'),
                     '--poses', str(night / 'poses.csv'), '--no-progress',
                     '--cache-dir', str(export_cache)]) == 0
    grown = load_map(copy, expected_fingerprint=load_map(fitted_map).manifest.model_fingerprint)
    assert grown.manifest.count == 48


@pytest.mark.skipif(not (SHARED_DATA / 'corridor').is_dir(), reason='../shared/data/corridor '
                    'is absent')
def test_evaluate_vpr_fits_the_vocabulary_on_the_database(unfitted):
    dataset = load_vpr_dataset(SHARED_DATA / 'corridor')
    result, _ = evaluate_model(VPREvalConfig(progress=False), dataset, unfitted)
    assert result['fingerprint'] != unfitted.fingerprint
    # measured 0.928 (ImageNet GeM on the same trunk: 0.694): the fitted vocabulary is used
    assert result['recall_at_n']['1'] >= 0.85


def test_the_localizer_runs_the_model_a_fitted_map_carries(fitted_map, tiny_world):
    localizer = Localizer.from_map(fitted_map, backend='onnxruntime',
                                   tracking=TrackingConfig(use_filter=False, refine=False))
    assert localizer.embedder.fingerprint == load_map(fitted_map).manifest.model_fingerprint
    names = localizer.map.records.image_id.tolist()
    for place in (2, 17):
        result = localizer.localize(read_rgb(tiny_world / 'map_day' / 'images' / names[place]))
        best = result.neighbours[0]
        assert (best.record_index, best.image_id) == (place, names[place])
        assert best.similarity > 0.999   # the map's own descriptor of that image

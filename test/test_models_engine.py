"""Default descriptor: offline ImageNet weights, GeM, ONNX export, backends and their parity."""

import cv2
import numpy as np
import pytest

from conftest import BASELINE_MODEL
import torch

from vl_attention.config import ConfigError
from vl_attention.engine.backends import BackendUnavailable, create_backend
from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.engine.export import CARD_FILE, ONNX_FILE, read_export
from vl_attention.engine.model_card import ModelCard
from vl_attention.engine.preprocess import FrameError, preprocess_frames
from vl_attention.models import build_model, load_model_config
from vl_attention.models.aggregators import GeM
from vl_attention.models.backbones import efficientnet_lite0_classifier
from vl_attention.models.registry import BACKBONES
from vl_attention.models.weights import WeightsError

# ImageNet-1k class indices
CAT_CLASSES = range(281, 286)     # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _imagenet_input(rgb):
    x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    return torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]


def test_offline_weights_are_imagenet(photos):
    net = efficientnet_lite0_classifier()
    with torch.no_grad():
        cat = net(_imagenet_input(photos['chelsea'])).softmax(-1)[0]
        coffee = net(_imagenet_input(photos['coffee'])).softmax(-1)[0]
    assert int(cat.argmax()) in CAT_CLASSES
    assert float(cat[list(CAT_CLASSES)].sum()) > 0.5
    assert int(coffee.argmax()) == ESPRESSO


def test_random_weights_do_not_classify(photos):
    torch.manual_seed(0)
    net = efficientnet_lite0_classifier(weights='none')
    with torch.no_grad():
        probabilities = net(_imagenet_input(photos['coffee'])).softmax(-1)[0]
    assert float(probabilities[ESPRESSO]) < 0.05


def test_bad_weight_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match='does not exist'):
        BACKBONES.create('efficientnet_lite0', weights=str(tmp_path / 'missing.pth'))
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(WeightsError, match='junk.pth'):
        BACKBONES.create('efficientnet_lite0', weights=str(junk))


def test_registry_errors_list_known_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*efficientnet_lite0"):
        BACKBONES.create('resnet9000')
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['depth'\]"):
        BACKBONES.create('efficientnet_lite0', depth=3)


def test_gem_is_between_mean_and_max_and_unit_norm():
    features = torch.rand(2, 8, 5, 7)
    pooled = GeM(in_channels=8, p=3.0)(features)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2), atol=1e-6)
    raw = features.pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    assert torch.all(raw >= features.mean(dim=(-2, -1)) - 1e-6)
    assert torch.all(raw <= features.amax(dim=(-2, -1)) + 1e-6)
    with pytest.raises(ValueError, match='p >= 1'):
        GeM(in_channels=8, p=0.5)


def test_descriptors_unit_norm_and_distinctive(embedder, photos):
    descriptors = embedder.embed(list(photos.values()))
    assert descriptors.shape == (len(photos), 1280) and descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    similarity = descriptors @ descriptors.T
    # every photo is its own nearest neighbour, well above the others
    assert np.all(similarity.argmax(axis=1) == np.arange(len(photos)))
    off_diagonal = similarity[~np.eye(len(photos), dtype=bool)]
    assert off_diagonal.max() < 0.95


def test_onnxruntime_matches_torch_on_real_photos(embedder, photos, export_cache):
    torch_embedder = create_embedder(EmbedderConfig(model=BASELINE_MODEL, backend='torch',
                                                    cache_dir=str(export_cache)))
    frames = list(photos.values())
    ort, eager = embedder.embed(frames), torch_embedder.embed(frames)
    assert embedder.backend_name == 'onnxruntime' and torch_embedder.backend_name == 'torch'
    assert embedder.fingerprint == torch_embedder.fingerprint
    assert np.min(np.sum(ort * eager, axis=1)) > 0.999
    assert np.abs(ort - eager).max() < 1e-4


def test_export_is_cached_and_verified(embedder, export_cache):
    export_dir = export_cache / embedder.fingerprint
    onnx_mtime = (export_dir / ONNX_FILE).stat().st_mtime_ns
    again = create_embedder(EmbedderConfig(model=BASELINE_MODEL, backend='auto',
                                           cache_dir=str(export_cache)))
    assert again.backend_name == 'onnxruntime'
    assert (export_dir / ONNX_FILE).stat().st_mtime_ns == onnx_mtime  # reused, not rebuilt
    card = read_export(export_dir)
    assert card.fingerprint == embedder.fingerprint and card.onnx_opset == 17
    assert card.preprocessing.mean == (0.5, 0.5, 0.5)
    assert ModelCard.from_json(card.to_json()) == card


def test_damaged_export_is_detected_and_rebuilt(embedder, tmp_path):
    config = EmbedderConfig(model=BASELINE_MODEL, backend='onnxruntime', cache_dir=str(tmp_path))
    first = create_embedder(config)
    onnx_path = tmp_path / first.fingerprint / ONNX_FILE
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    with pytest.raises(ValueError, match='does not match its model card'):
        read_export(onnx_path.parent)
    rebuilt = create_embedder(config)   # a damaged cache is re-exported, not used
    assert read_export(onnx_path.parent).fingerprint == rebuilt.fingerprint
    (onnx_path.parent / CARD_FILE).write_text('{"format_version": 99}')
    with pytest.raises(ConfigError, match='format version 99'):
        read_export(onnx_path.parent)


def test_fingerprint_changes_with_weights_and_size(export_cache):
    config = load_model_config(BASELINE_MODEL)
    base = create_embedder(EmbedderConfig(model=BASELINE_MODEL, backend='torch',
                                          cache_dir=str(export_cache)))
    from dataclasses import replace

    from vl_attention.engine.card_builder import make_model_card
    smaller = replace(config, input_height=120, input_width=160)
    assert make_model_card(smaller, build_model(smaller)).fingerprint != base.fingerprint
    torch.manual_seed(1)
    random = replace(config, backbone_options={'weights': 'none'})
    assert make_model_card(random, build_model(random)).fingerprint != base.fingerprint


def test_preprocessing_rejects_bad_frames(embedder):
    prep = embedder.card.preprocessing
    with pytest.raises(FrameError, match='uint8'):
        preprocess_frames([np.zeros((10, 10, 3), np.float32)], prep)
    with pytest.raises(FrameError, match='empty'):
        preprocess_frames([np.zeros((0, 10, 3), np.uint8)], prep)
    with pytest.raises(FrameError, match='RGB'):
        preprocess_frames([np.zeros((10, 10, 4), np.uint8)], prep)   # RGBA; mono is fine
    batch = preprocess_frames([np.full((60, 80, 3), 255, np.uint8)], prep)
    assert batch.shape == (1, 3, 240, 320)
    np.testing.assert_allclose(batch, 1.0, atol=1e-6)   # (1 - 0.5) / 0.5


def test_backend_errors_are_clear(tmp_path):
    model = build_model(load_model_config(BASELINE_MODEL))
    with pytest.raises(BackendUnavailable, match='no ONNX file'):
        create_backend('onnxruntime', model=model, onnx_path=tmp_path / 'none.onnx')
    with pytest.raises(ValueError, match='unknown backend'):
        create_backend('tensorrt-typo', model=model, onnx_path=None)
    assert create_backend('auto', model=model, onnx_path=None).name == 'torch'

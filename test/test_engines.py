"""Inference engines: auto choice, backend options, export CLI, TensorRT cache logic, parity."""

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import BASELINE_MODEL
import torch

from vl_attention import cli
from vl_attention.config import ConfigError
from vl_attention.engine import tensorrt_backend as trt_backend
from vl_attention.engine.availability import (Availability, parse_backend_name, plan_auto,
                                              probe_availability, resolve_device)
from vl_attention.engine.backend_base import descriptor_output_name, named_outputs
from vl_attention.engine.backends import BackendUnavailable, create_backend
from vl_attention.engine.embedder import create_embedder, EmbedderConfig
from vl_attention.engine.export import CARD_FILE, ONNX_FILE, read_export
from vl_attention.engine.preprocess import preprocess_frames
from vl_attention.models import build_model, load_model_config
from vl_attention.models.registry import BACKBONES
from vl_attention.models.weights import WeightsError

ROOT = Path(__file__).resolve().parents[1]
GARDENS = ROOT.parent / 'shared' / 'data' / 'gardenspoint_day_night_sample'
AVAILABLE = probe_availability()
NO_TENSORRT = f'tensorrt does not import here: {AVAILABLE.tensorrt_reason}'
PRESETS = sorted(path.stem for path in (ROOT / 'config' / 'models').glob('*.yaml'))

CPU_ONLY = Availability(cuda_reason='no driver', onnxruntime_version='1.20',
                        onnxruntime_providers=('CPUExecutionProvider',),
                        onnxruntime_reason='', tensorrt_reason='tensorrt is not installed')
EVERYTHING = Availability(cuda_device='NVIDIA Orin', cuda_reason='', onnxruntime_version='1.20',
                          onnxruntime_providers=('CUDAExecutionProvider',
                                                 'CPUExecutionProvider'),
                          onnxruntime_reason='', tensorrt_version='10.3.0', tensorrt_reason='')


# ---- auto decision logic (pure, fake availability) -------------------------------------------

def test_auto_prefers_tensorrt_when_everything_is_there():
    plan = plan_auto(EVERYTHING)
    assert plan.candidates == ('tensorrt', 'onnxruntime-cuda', 'torch-cuda', 'onnxruntime-cpu',
                               'torch-cpu')
    assert plan.skipped == ()


def test_auto_on_cpu_only_machine_gives_reasons():
    plan = plan_auto(CPU_ONLY)
    assert plan.candidates == ('onnxruntime-cpu', 'torch-cpu')
    reasons = dict(plan.skipped)
    assert set(reasons) == {'tensorrt', 'onnxruntime-cuda', 'torch-cuda'}
    assert all('no CUDA GPU (no driver)' in reason for reason in reasons.values())
    assert 'onnxruntime-cpu' in plan.describe() and 'no driver' in plan.describe()


def test_auto_with_gpu_but_no_tensorrt_nor_ort_gpu_picks_torch_cuda():
    gpu = dataclasses.replace(CPU_ONLY, cuda_device='RTX 4090', cuda_reason='')
    plan = plan_auto(gpu)
    assert plan.candidates[0] == 'torch-cuda'
    reasons = dict(plan.skipped)
    assert reasons['tensorrt'] == 'tensorrt is not installed'
    assert 'onnxruntime-gpu' in reasons['onnxruntime-cuda']


def test_auto_without_onnxruntime_falls_back_to_torch():
    bare = dataclasses.replace(CPU_ONLY, onnxruntime_version='',
                               onnxruntime_reason='onnxruntime is not installed')
    plan = plan_auto(bare)
    assert plan.candidates == ('torch-cpu',)
    assert dict(plan.skipped)['onnxruntime-cpu'] == 'onnxruntime is not installed'


def test_backend_names_and_devices():
    assert parse_backend_name('torch') == ('torch', 'auto')
    assert parse_backend_name('onnxruntime-cuda') == ('onnxruntime', 'cuda')
    assert parse_backend_name('tensorrt') == ('tensorrt', 'cuda')
    with pytest.raises(ValueError, match='unknown backend.*torch-cpu'):
        parse_backend_name('openvino')
    assert resolve_device('torch', 'auto', EVERYTHING) == 'cuda'
    assert resolve_device('onnxruntime', 'auto', CPU_ONLY) == 'cpu'
    assert resolve_device('torch', 'cpu', EVERYTHING) == 'cpu'


def test_this_machine_is_probed_honestly():
    if not AVAILABLE.tensorrt_version:
        assert AVAILABLE.tensorrt_reason
    if not AVAILABLE.cuda_device:
        assert 'NVIDIA driver' in AVAILABLE.cuda_reason
    assert AVAILABLE.onnxruntime_version and 'CPUExecutionProvider' in \
        AVAILABLE.onnxruntime_providers


@pytest.mark.skipif(bool(AVAILABLE.cuda_device), reason='needs a machine without a GPU')
@pytest.mark.filterwarnings('ignore:Specified provider')
def test_auto_falls_through_failing_gpu_candidates(embedder, export_cache):
    # Claim a GPU, TensorRT and ORT-CUDA that do not exist: each start fails and auto moves on.
    model = build_model(load_model_config(BASELINE_MODEL))
    onnx_path = export_cache / embedder.fingerprint / ONNX_FILE
    backend = create_backend('auto', model=model, onnx_path=onnx_path, availability=EVERYTHING)
    assert backend.name == 'onnxruntime' and backend.device == 'cpu'
    failed = [reason.split(':')[0] for reason in backend.auto_reasons]
    assert failed == ['tensorrt', 'onnxruntime-cuda', 'torch-cuda']
    with pytest.raises(BackendUnavailable, match='no CUDA GPU'):
        create_backend('torch-cuda', model=model, onnx_path=None, availability=CPU_ONLY)


# ---- export CLI and embedders from an export directory ---------------------------------------

@pytest.fixture(scope='module')
def cli_export(tmp_path_factory):
    """Export a seeded random-weight checkpoint through the CLI at 160x120 with dynamic H x W."""
    root = tmp_path_factory.mktemp('cli_export')
    torch.manual_seed(3)
    random_model = build_model(dataclasses.replace(load_model_config(BASELINE_MODEL),
                                                   backbone_options={'weights': 'none'}))
    torch.save(random_model.state_dict(), root / 'trained.pth')
    code = cli.main(['export', '--model', BASELINE_MODEL, '--weights', str(root / 'trained.pth'),
                     '--out', str(root / 'export'), '--height', '120', '--width', '160',
                     '--dynamic-size'])
    assert code == 0
    return root


def test_export_cli_writes_onnx_and_card(cli_export):
    card = read_export(cli_export / 'export')
    prep = card.preprocessing
    assert (prep.input_height, prep.input_width, prep.colour_order) == (120, 160, 'RGB')
    assert card.dynamic_size and card.onnx_opset == 17 and card.descriptor_dim == 1280
    assert card.weights_file == str(cli_export / 'trained.pth')
    assert len(card.weights_sha256) == 64 and len(card.onnx_sha256) == 64
    import onnxruntime
    session = onnxruntime.InferenceSession(str(cli_export / 'export' / ONNX_FILE))
    for shape in ((1, 3, 120, 160), (3, 3, 96, 200)):   # dynamic batch and size
        output = session.run(None, {'images': np.zeros(shape, np.float32)})[0]
        assert output.shape == (shape[0], 1280)


def test_embedders_from_export_dir_agree(cli_export, photos):
    config = EmbedderConfig(export_dir=str(cli_export / 'export'), backend='onnxruntime')
    ort = create_embedder(config)
    eager = create_embedder(dataclasses.replace(config, backend='torch'))
    card = read_export(cli_export / 'export')
    assert ort.fingerprint == eager.fingerprint == card.fingerprint
    frames = list(photos.values())[:4]
    assert np.min(np.sum(ort.embed(frames) * eager.embed(frames), axis=1)) > 0.999
    with pytest.raises(ConfigError, match='holds model'):
        create_embedder(dataclasses.replace(config, model='resnet50_gem'))


def test_export_rejects_a_checkpoint_of_another_model(tmp_path):
    torch.save({'fc.weight': torch.zeros(2, 2)}, tmp_path / 'other.pth')
    code = cli.main(['export', '--weights', str(tmp_path / 'other.pth'),
                     '--out', str(tmp_path / 'out')])
    assert code == 1 and not (tmp_path / 'out' / CARD_FILE).exists()


def test_torch_is_rebuilt_from_an_export_of_seeded_random_weights_but_not_changed_ones(
        tmp_path):
    # random parts are seeded from the preset (issue 23): the same weights in every process
    code = cli.main(['export', '--model', 'resnet50_gem', '--out', str(tmp_path / 'r50'),
                     '--height', '64', '--width', '64'])
    assert code == 0
    config = EmbedderConfig(export_dir=str(tmp_path / 'r50'), backend='torch')
    assert create_embedder(config).fingerprint == read_export(tmp_path / 'r50').fingerprint
    card = read_export(tmp_path / 'r50')
    dataclasses.replace(card, weights_sha256='0' * 64).save(tmp_path / 'r50' / CARD_FILE)
    with pytest.raises(BackendUnavailable, match='cannot be rebuilt'):
        create_embedder(config)


def test_resnet50_weights_are_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    expected = tmp_path / 'checkpoints' / 'resnet50-0676ba61.pth'
    with pytest.raises(WeightsError, match=f'{expected}.*internet once'):
        BACKBONES.create('resnet50', weights='imagenet')
    channels = BACKBONES.create('resnet50', weights='none').out_channels
    assert channels == {'layer1': 256, 'layer2': 512, 'layer3': 1024, 'layer4': 2048}


# ---- TensorRT: the parts that need no GPU ----------------------------------------------------

def test_engine_cache_key_covers_graph_library_gpu_and_settings(tmp_path):
    profile = trt_backend.EngineProfile(240, 320, max_batch=8)
    base = dict(onnx_sha256='a' * 64, tensorrt_version='10.3.0', gpu_name='Orin',
                precision='fp16', profile=profile)
    key = trt_backend.engine_cache_key(**base)
    assert key == trt_backend.engine_cache_key(**base) and len(key) == 24
    changes = [{'onnx_sha256': 'b' * 64}, {'tensorrt_version': '10.4.0'}, {'gpu_name': 'A100'},
               {'precision': 'fp32'}, {'profile': dataclasses.replace(profile, max_batch=16)},
               {'calibration': 'abc'}]
    assert len({trt_backend.engine_cache_key(**(base | change)) for change in changes}) == 6
    assert key not in {trt_backend.engine_cache_key(**(base | change)) for change in changes}
    path = trt_backend.engine_cache_path(tmp_path, 'effnet_lite0_gem', 'fp16', key)
    assert path == tmp_path / f'effnet_lite0_gem-fp16-{key}.engine'


def test_engine_profile_shapes():
    fixed = trt_backend.EngineProfile(240, 320, max_batch=8).shapes()
    assert fixed == ((1, 3, 240, 320), (1, 3, 240, 320), (8, 3, 240, 320))
    low, opt, high = trt_backend.EngineProfile(240, 320, 4, dynamic_size=True).shapes()
    assert low == (1, 3, 120, 160) and opt == (1, 3, 240, 320) and high == (4, 3, 480, 640)


def test_engine_is_built_once_cached_atomically_and_rebuilt_when_unreadable(tmp_path):
    builds = []

    def build():
        builds.append(1)
        return b'ENGINE' + bytes(len(builds))

    def deserialize(data):
        return ('engine', data) if data.startswith(b'ENGINE') else None

    path = tmp_path / 'cache' / 'model-fp16-key.engine'
    engine, built = trt_backend.load_or_build_engine(path, build=build, deserialize=deserialize)
    assert built and engine[1] == path.read_bytes() and len(builds) == 1
    engine, built = trt_backend.load_or_build_engine(path, build=build, deserialize=deserialize)
    assert not built and len(builds) == 1                      # reused on the next start
    path.write_bytes(b'truncated')                             # e.g. from another TensorRT
    engine, built = trt_backend.load_or_build_engine(path, build=build, deserialize=deserialize)
    assert built and len(builds) == 2 and path.read_bytes().startswith(b'ENGINE')
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]   # no temporaries left
    with pytest.raises(BackendUnavailable, match='could not deserialize'):
        trt_backend.load_or_build_engine(tmp_path / 'x.engine', build=lambda: b'bad',
                                         deserialize=deserialize)


def test_probe_agreement_check():
    probe = trt_backend.probe_batch(48, 64)
    assert probe.shape == (4, 3, 48, 64) and probe.dtype == np.float32
    np.testing.assert_array_equal(probe, trt_backend.probe_batch(48, 64))
    reference = np.random.default_rng(0).normal(size=(4, 256))
    assert trt_backend.probe_agreement(reference, 2 * reference) == pytest.approx(1.0)
    noisy = reference + np.random.default_rng(1).normal(scale=0.1, size=reference.shape)
    cosine = trt_backend.probe_agreement(reference, noisy)
    assert 0.99 < cosine < 0.999
    assert trt_backend.check_agreement(cosine, 'fp16') == cosine
    with pytest.raises(trt_backend.EngineDisagrees, match='fp32 engine agrees.*needs > 0.999'):
        trt_backend.check_agreement(cosine, 'fp32')
    with pytest.raises(trt_backend.EngineDisagrees, match='shape'):
        trt_backend.probe_agreement(reference, reference[:2])


def test_int8_calibration_batches_from_map_images(photo_folder, embedder, tmp_path):
    frames = trt_backend.calibration_frames(photo_folder / 'images', limit=10)
    assert len(frames) == 10 and frames[0].dtype == np.uint8 and frames[0].shape[2] == 3
    batches = trt_backend.calibration_batches(frames, embedder.card.preprocessing, 4)
    assert [b.shape for b in batches] == [(4, 3, 240, 320)] * 2   # short tail dropped
    assert trt_backend.fingerprint_batches(batches) != trt_backend.fingerprint_batches(batches[:1])
    with pytest.raises(BackendUnavailable, match='calibration_dir'):
        trt_backend.calibration_frames(tmp_path)


@pytest.mark.skipif(not AVAILABLE.tensorrt_version, reason=NO_TENSORRT)
def test_tensorrt_engine_is_cached_and_reused(export_cache, photos):
    config = EmbedderConfig(model=BASELINE_MODEL, backend='tensorrt', precision='fp16',
                            cache_dir=str(export_cache))
    first = create_embedder(config)
    engines = sorted((export_cache / 'tensorrt').glob('*.engine'))
    assert first.backend.agreement > 0.99 and len(engines) == 1
    mtime = engines[0].stat().st_mtime_ns
    second = create_embedder(config)
    assert engines[0].stat().st_mtime_ns == mtime
    frames = list(photos.values())
    assert np.min(np.sum(first.embed(frames) * second.embed(frames), axis=1)) > 0.9999


# ---- parity: every registered model x every available backend vs torch FP32 ------------------

def _variants():
    variants = [('onnxruntime-cpu', {}, 0.999), ('torch-cpu', {'channels_last': True}, 0.999)]
    if AVAILABLE.cuda_device:
        variants += [('torch-cuda', {}, 0.999), ('torch-cuda', {'precision': 'fp16'}, 0.99)]
    if 'CUDAExecutionProvider' in AVAILABLE.onnxruntime_providers and AVAILABLE.cuda_device:
        variants += [('onnxruntime-cuda', {}, 0.999)]
    if AVAILABLE.tensorrt_version and AVAILABLE.cuda_device:
        variants += [('tensorrt', {}, 0.999), ('tensorrt', {'precision': 'fp16'}, 0.99)]
    return variants


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope='module')
def gardens():
    """Night database and day queries of the Gardens Point sample (same index = same place)."""
    if not GARDENS.is_dir():
        pytest.skip(f'{GARDENS} is absent')
    return ([_read_rgb(p) for p in sorted((GARDENS / 'database').glob('*.jpg'))],
            [_read_rgb(p) for p in sorted((GARDENS / 'queries').glob('*.jpg'))])


def _similarities(embedder, gardens):
    database, queries = (embedder.embed_batches(images) for images in gardens)
    return queries @ database.T


def _decided_queries(similarities, margin=1e-3):
    """Mark the queries whose best match leads the runner-up by more than ``margin``.

    Random-weight presets embed all images almost alike; their near-ties may
    flip on float rounding, which says nothing about a backend.
    """
    top2 = np.sort(similarities, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > margin


@pytest.mark.parametrize('preset', [
    pytest.param(name, marks=() if name == BASELINE_MODEL else pytest.mark.slow)
    for name in PRESETS])
def test_every_backend_matches_torch_fp32(preset, photos, gardens, export_cache):
    torch.manual_seed(0)   # presets with random weights: one model shared by every backend
    try:
        model = build_model(load_model_config(preset))
    except WeightsError as error:
        pytest.skip(f'{preset}: {error}')
    base = EmbedderConfig(model=preset, backend='torch-cpu', cache_dir=str(export_cache))
    reference = create_embedder(base, model=model)
    frames = list(photos.values())
    expected = reference.embed(frames)
    reference_similarities = _similarities(reference, gardens)
    decided = _decided_queries(reference_similarities)
    expected_top1 = np.argmax(reference_similarities, axis=1)[decided]
    for name, options, threshold in _variants():
        embedder = create_embedder(dataclasses.replace(base, backend=name, **options),
                                   model=model)
        label = f'{preset} on {embedder.backend_description}'
        cosine = np.sum(embedder.embed(frames) * expected, axis=1)
        assert cosine.min() > threshold, label
        assert embedder.fingerprint == reference.fingerprint, label
        top1 = np.argmax(_similarities(embedder, gardens), axis=1)[decided]
        np.testing.assert_array_equal(top1, expected_top1, err_msg=label)
    if preset == BASELINE_MODEL:
        assert decided.all()   # pretrained: every top-1 decision is clear and must agree


def test_embedder_reports_backend_and_batches(embedder, photos):
    assert embedder.backend_description.startswith('onnxruntime-cpu fp32')
    frames = list(photos.values())
    batched = embedder.embed_batches(iter(frames), batch_size=5)
    np.testing.assert_allclose(batched, embedder.embed(frames), atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.descriptor_dim)


@pytest.mark.slow
def test_torch_compile_matches_eager(photos, export_cache):
    config = EmbedderConfig(model=BASELINE_MODEL, backend='torch-cpu', compile=True,
                            cache_dir=str(export_cache))
    compiled, eager = create_embedder(config), create_embedder(
        dataclasses.replace(config, compile=False))
    frames = list(photos.values())[:2]
    assert 'compiled' in compiled.backend_description
    assert np.min(np.sum(compiled.embed(frames) * eager.embed(frames), axis=1)) > 0.999


# ---- named outputs (descriptors, and the pose of pose_attention models) ----------------------

def test_descriptor_output_is_found_by_name_or_as_the_only_output():
    assert descriptor_output_name(['position_m', 'descriptors', 'orientation_xyzw']) \
        == 'descriptors'
    assert descriptor_output_name(['embedding']) == 'embedding'   # exports of other tools
    with pytest.raises(BackendUnavailable, match="none is named 'descriptors'; export it again"):
        descriptor_output_name(['a', 'b'])
    outputs = named_outputs(['descriptors', 'position_m'],
                            [np.ones((2, 4), np.float64), np.zeros((2, 3), np.float16)])
    assert list(outputs) == ['descriptors', 'position_m']
    assert all(array.dtype == np.float32 for array in outputs.values())
    with pytest.raises(ValueError, match='1 output arrays for the 2 names'):
        named_outputs(['descriptors', 'position_m'], [np.ones((2, 4))])


def test_tensorrt_io_names_keep_every_output_in_engine_order():
    names = ['images', 'descriptors', 'position_m', 'orientation_xyzw']
    image, outputs = trt_backend.split_io_names(names, lambda name: name == 'images')
    assert image == 'images' and outputs == ('descriptors', 'position_m', 'orientation_xyzw')
    with pytest.raises(BackendUnavailable, match='expected one image input'):
        trt_backend.split_io_names(['images'], lambda name: True)


def test_descriptor_only_models_run_outputs_is_the_descriptors(embedder, photos):
    assert embedder.card.outputs == ('descriptors',) and not embedder.card.has_pose
    batch = preprocess_frames(list(photos.values())[:2], embedder.card.preprocessing)
    outputs = embedder.backend.run_outputs(batch)
    assert list(outputs) == ['descriptors']
    np.testing.assert_array_equal(outputs['descriptors'], embedder.backend.run(batch))
    with pytest.raises(ConfigError, match=f'model {BASELINE_MODEL} has no pose output'):
        embedder.embed_with_pose(list(photos.values())[:1])

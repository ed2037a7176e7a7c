"""Every model preset in config/models/, checked the same way (timm's registry-wide tests).

Presets are built with ``weights: none`` where they name ImageNet weights, so
the checks are about the architecture, not the pretrained values, and they
run offline at small input sizes.
"""

import dataclasses
import io

import numpy as np
import onnxruntime
import pytest
import torch

from vl_attention.models import build_model, load_model_config, model_preset_names, ModelOutput

PRESETS = model_preset_names()
INPUT_SIZES = ((96, 128), (128, 160))  # two (H, W) sizes, both small enough for CI on 2 cores


def small_model(name, size):
    """Build preset ``name`` at input ``size`` with random backbone weights."""
    config = load_model_config(name)
    options = dict(config.backbone_options)
    if 'weights' in options:
        options['weights'] = 'none'
    config = dataclasses.replace(config, input_height=size[0], input_width=size[1],
                                 backbone_options=options, checkpoint='')
    torch.manual_seed(0)
    return build_model(config)


def images(size, batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=generator)


def attention_parameters(model):
    return {name: parameter for name, parameter in model.named_parameters()
            if 'attention' in name and parameter.requires_grad}


def test_the_zoo_holds_every_paper_family():
    heads = {load_model_config(name).aggregator for name in PRESETS}
    assert {'gem'} <= heads
    assert len(PRESETS) >= 2


@pytest.mark.parametrize('name', PRESETS)
@pytest.mark.parametrize('size', INPUT_SIZES, ids=lambda size: f'{size[0]}x{size[1]}')
def test_outputs_are_unit_norm_finite_and_deterministic(name, size):
    model = small_model(name, size).eval()
    batch = images(size)
    with torch.no_grad():
        first = model.outputs(batch)
        second = model.outputs(batch)
    assert isinstance(first, ModelOutput)
    descriptor = first.descriptor
    assert descriptor.shape == (2, model.descriptor_dim())
    assert torch.isfinite(descriptor).all()
    torch.testing.assert_close(descriptor.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(descriptor, second.descriptor, atol=0, rtol=0)
    for key, tensor in first.attention.items():
        assert tensor.shape[0] == 2 and torch.isfinite(tensor).all(), key
    if first.pose is not None:
        assert first.pose.shape == (2, 7)
        torch.testing.assert_close(first.pose[:, 3:].norm(dim=-1), torch.ones(2), atol=1e-5,
                                   rtol=0)


@pytest.mark.parametrize('name', PRESETS)
def test_gradients_reach_every_attention_parameter(name):
    model = small_model(name, INPUT_SIZES[0]).train()
    output = model.outputs(images(INPUT_SIZES[0], batch=3))
    loss = output.descriptor[:, :7].square().sum() + output.descriptor.sum()
    if output.pose is not None:
        loss = loss + output.pose.square().sum()
    loss.backward()
    attention = attention_parameters(model)
    missing = sorted(name for name, parameter in attention.items()
                     if parameter.grad is None or not torch.any(parameter.grad != 0))
    assert not missing, f'no gradient reaches {missing}'
    head_parameters = [p for p in model.aggregator.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in head_parameters)


def export_to_onnx(model, example):
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17,
                      input_names=['images'], output_names=['descriptors'],
                      dynamic_axes={'images': {0: 'batch'}, 'descriptors': {0: 'batch'}})
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize('name', PRESETS)
@pytest.mark.parametrize('size', INPUT_SIZES, ids=lambda size: f'{size[0]}x{size[1]}')
def test_onnx_export_matches_torch(name, size):
    model = small_model(name, size).eval()
    batch = images(size, batch=2, seed=3)
    with torch.no_grad():
        expected = model(batch).numpy()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(export_to_onnx(model, batch[:1]), options,
                                           providers=['CPUExecutionProvider'])
    actual = session.run(None, {'images': batch.numpy()})[0]
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('name', PRESETS)
def test_dynamic_size_export_is_right_or_refused(name):
    """A dynamic-size export must match torch at another size, or the head must refuse it."""
    model = small_model(name, INPUT_SIZES[0]).eval()
    if getattr(model.aggregator, 'fixed_input_size', False):
        pytest.skip(f'{name} declares fixed_input_size: the exporter refuses dynamic_size')
    other = images(INPUT_SIZES[1], batch=1, seed=4)
    with torch.no_grad():
        expected = model(other).numpy()
    buffer = io.BytesIO()
    torch.onnx.export(model, (images(INPUT_SIZES[0], batch=1),), buffer, dynamo=False,
                      opset_version=17, input_names=['images'], output_names=['descriptors'],
                      dynamic_axes={'images': {0: 'batch', 2: 'height', 3: 'width'},
                                    'descriptors': {0: 'batch'}})
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=['CPUExecutionProvider'])
    actual = session.run(None, {'images': other.numpy()})[0]
    assert np.abs(actual - expected).max() < 1e-4


def test_exporter_refuses_dynamic_size_for_fixed_layout_heads(tmp_path):
    from vl_attention.config import ConfigError
    from vl_attention.engine.export import export_onnx
    from vl_attention.engine.card_builder import make_model_card
    config = load_model_config('effnet_lite0_regional_attention')
    model = small_model('effnet_lite0_regional_attention', INPUT_SIZES[0])
    assert model.aggregator.fixed_input_size
    card = make_model_card(config, model)
    with pytest.raises(ConfigError, match='cannot be exported with a dynamic size'):
        export_onnx(model, card, tmp_path, dynamic_size=True)
    assert not (tmp_path / 'model.onnx').exists()

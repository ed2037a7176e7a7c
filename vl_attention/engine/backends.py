"""Inference backends: normalised ``float32 (B, 3, H, W)`` in, ``float32 (B, D)`` out.

Each backend is registered by name. ``auto`` picks the first available of
:data:`AUTO_ORDER` and logs why the others were passed over.
"""

import logging
import os

import numpy as np
import torch

from vl_attention.models.registry import Registry

LOG = logging.getLogger(__name__)

BACKENDS = Registry('backend')
AUTO_ORDER = ('onnxruntime', 'torch')


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine; the message says why."""


@BACKENDS.register('torch')
class TorchBackend:
    """Eager PyTorch on the CPU."""

    name = 'torch'

    def __init__(self, *, model, onnx_path=None, threads=0):
        self.model = model.eval()
        if threads:
            torch.set_num_threads(int(threads))
        self.device = 'cpu'

    def run(self, batch):
        """Embed a preprocessed batch."""
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy().astype(np.float32, copy=False)


@BACKENDS.register('onnxruntime')
class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU execution provider."""

    name = 'onnxruntime'

    def __init__(self, *, model=None, onnx_path, threads=0):
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendUnavailable(f'onnxruntime is not installed ({error})') from error
        if onnx_path is None or not os.path.isfile(onnx_path):
            raise BackendUnavailable(f'no ONNX file at {onnx_path}')
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=options, providers=['CPUExecutionProvider'])
        self.input_name = self.session.get_inputs()[0].name
        self.device = 'cpu'

    def run(self, batch):
        """Embed a preprocessed batch."""
        return self.session.run(None, {self.input_name: batch})[0]


def create_backend(name, *, model, onnx_path, threads=0):
    """Instantiate backend ``name``; ``auto`` tries :data:`AUTO_ORDER` in turn."""
    if name != 'auto':
        return BACKENDS.create(name, model=model, onnx_path=onnx_path, threads=threads)
    reasons = []
    for candidate in AUTO_ORDER:
        try:
            backend = BACKENDS.create(candidate, model=model, onnx_path=onnx_path,
                                      threads=threads)
        except BackendUnavailable as error:
            reasons.append(f'{candidate}: {error}')
            continue
        LOG.info('backend auto -> %s%s', candidate,
                 f' (passed over: {"; ".join(reasons)})' if reasons else '')
        return backend
    raise BackendUnavailable('no backend could start: ' + '; '.join(reasons))

"""The PyTorch backend (eager, channels-last, ``torch.compile``; FP16 on CUDA).

Kept apart from :mod:`.backends` so that the ONNX Runtime and TensorRT paths
never import torch: :mod:`.backends` registers ``torch`` with a factory that
imports this module only when the torch backend is asked for.
"""

from __future__ import annotations

import copy
import logging
from typing import Optional

import numpy as np
import torch
from torch import nn

from vl_attention.engine.availability import (Availability, CUDA, probe_availability,
                                              resolve_device, unavailable_reason)
from vl_attention.engine.backend_base import (BackendOptions, BackendUnavailable, named_outputs,
                                              TorchModelSource)
from vl_attention.io import StrPath
from vl_attention.model_outputs import DESCRIPTOR_OUTPUT, POSE_OUTPUTS
from vl_attention.models.pose_attention import pose_head, PoseOutputs

LOG = logging.getLogger(__name__)


def _concrete_model(model: Optional[TorchModelSource]) -> nn.Module:
    """Return the module itself, or call a lazy factory (export directories rebuild on demand)."""
    if model is None:
        raise BackendUnavailable('the torch backend needs the torch model, and none was given')
    if isinstance(model, nn.Module):
        return model
    return model()


class TorchBackend:
    """PyTorch eager (optionally ``torch.compile``), FP16 + channels-last on CUDA."""

    name = 'torch'

    def __init__(self, *, model: Optional[TorchModelSource], onnx_path: Optional[StrPath] = None,
                 options: BackendOptions = BackendOptions(),
                 availability: Optional[Availability] = None) -> None:
        model = _concrete_model(model).eval()
        availability = availability or probe_availability()
        self.device = resolve_device('torch', options.device, availability)
        if self.device == CUDA and unavailable_reason('torch-cuda', availability):
            raise BackendUnavailable(unavailable_reason('torch-cuda', availability))
        if self.device == CUDA and not torch.cuda.is_available():
            raise BackendUnavailable(f'torch.cuda.is_available() is False (torch built for CUDA '
                                     f'{torch.version.cuda or "none"}) although a GPU is there')
        self.precision = 'fp16' if self.device == CUDA and options.precision != 'fp32' else 'fp32'
        if self.precision != options.precision:
            LOG.info('torch-%s runs %s (asked for %s)', self.device, self.precision,
                     options.precision)
        if options.threads and self.device != CUDA:
            torch.set_num_threads(int(options.threads))  # process-wide, like torch itself
        self.dtype = torch.float16 if self.precision == 'fp16' else torch.float32
        self.memory_format = torch.channels_last if options.channels_last else None
        if self.device == CUDA or options.channels_last:
            model = copy.deepcopy(model)  # never move or re-layout the caller's module
            model = model.to(device=self.device, dtype=self.dtype)
            if self.memory_format is not None:
                model = model.to(memory_format=self.memory_format)
        self.model = torch.compile(model) if options.compile else model
        # The pose view runs eagerly (uncompiled): it shares the weights of ``model``.
        self.pose_model = PoseOutputs(model) if pose_head(model) is not None else None
        self.output_names = POSE_OUTPUTS if self.pose_model is not None else (DESCRIPTOR_OUTPUT,)
        self.description = (f'torch-{self.device} {self.precision}'
                            f'{" channels-last" if options.channels_last else ""}'
                            f'{" compiled" if options.compile else ""}'
                            f' ({torch.get_num_threads()} threads)')

    def _images(self, batch: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(batch)
        if self.device == CUDA:
            images = images.pin_memory().to(CUDA, non_blocking=True)
        images = images.to(self.dtype)
        if self.memory_format is not None:
            images = images.contiguous(memory_format=self.memory_format)
        return images

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed batch."""
        with torch.inference_mode():
            descriptors = self.model(self._images(batch))
        return descriptors.float().cpu().numpy()

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of a preprocessed batch by name (see :mod:`.backend_base`)."""
        if self.pose_model is None:
            return {DESCRIPTOR_OUTPUT: self.run(batch)}
        with torch.inference_mode():
            arrays = self.pose_model(self._images(batch))
        return named_outputs(self.output_names, [array.float().cpu().numpy() for array in arrays])

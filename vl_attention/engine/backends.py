"""Inference backends: normalised ``float32 (B, 3, H, W)`` in, ``float32 (B, D)`` out.

Each backend is registered by name (``torch``, ``onnxruntime``,
``tensorrt``) and runs on a device; ``<backend>-<device>`` names pin the
device. ``auto`` tries :data:`~vl_attention.engine.availability.AUTO_ORDER`
(tensorrt -> onnxruntime-cuda -> torch-cuda -> onnxruntime-cpu -> torch-cpu)
and logs what it picked and why the others were not.

Verified on CPU only: ``torch-cpu`` (eager, channels-last, torch.compile) and
``onnxruntime-cpu``. The CUDA paths (torch-cuda FP16, onnxruntime-cuda) are
written against the documented APIs but were not run here (no GPU).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from types import ModuleType
from typing import Any, Optional, Protocol

import numpy as np
import numpy.typing as npt

from vl_attention.engine import tensorrt_backend as _tensorrt  # noqa: F401  (registers it)
from vl_attention.engine.availability import (Availability, CUDA, ORT_CUDA_PROVIDER,
                                              parse_backend_name, plan_auto, probe_availability,
                                              resolve_device, unavailable_reason)
from vl_attention.engine.backend_base import (BackendOptions, BACKENDS, BackendUnavailable,
                                              descriptor_output_name, EmbeddingBackend,
                                              named_outputs, TorchModelSource)
from vl_attention.io import StrPath

LOG = logging.getLogger(__name__)

__all__ = ['BACKENDS', 'BackendOptions', 'BackendUnavailable', 'create_backend',
           'EmbeddingBackend', 'StartedBackend']


class StartedBackend(EmbeddingBackend, Protocol):
    """An :class:`EmbeddingBackend` as :func:`create_backend` returns it."""

    auto_reasons: tuple[str, ...]   # 'variant: why' of each variant ``auto`` passed over


@BACKENDS.register('torch')
def _torch_backend(*, model: Optional[TorchModelSource], onnx_path: Optional[StrPath] = None,
                   options: BackendOptions = BackendOptions(),
                   availability: Optional[Availability] = None) -> EmbeddingBackend:
    """Create the torch backend, importing torch only now."""
    from vl_attention.engine.torch_backend import TorchBackend
    return TorchBackend(model=model, onnx_path=onnx_path, options=options,
                        availability=availability)


def ort_providers(device: str, availability: Availability) -> list[str]:
    """ONNX Runtime execution providers for ``device`` (CUDA keeps CPU as the fallback)."""
    if device == CUDA:
        reason = unavailable_reason('onnxruntime-cuda', availability)
        if reason:
            raise BackendUnavailable(reason)
        return [ORT_CUDA_PROVIDER, 'CPUExecutionProvider']
    return ['CPUExecutionProvider']


def ort_session_options(onnxruntime: ModuleType, threads: int) -> Any:
    """Session options: full graph optimisation, ``threads`` intra-op threads (0 = library)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


@BACKENDS.register('onnxruntime')
class OnnxRuntimeBackend:
    """ONNX Runtime on the CUDA execution provider when present, else the CPU one."""

    name = 'onnxruntime'

    def __init__(self, *, model: Optional[TorchModelSource] = None,
                 onnx_path: Optional[StrPath], options: BackendOptions = BackendOptions(),
                 availability: Optional[Availability] = None) -> None:
        availability = availability or probe_availability()
        if not availability.onnxruntime_version:
            raise BackendUnavailable(availability.onnxruntime_reason)
        if onnx_path is None or not os.path.isfile(onnx_path):
            raise BackendUnavailable(f'no ONNX file at {onnx_path}')
        import onnxruntime
        self.device = resolve_device('onnxruntime', options.device, availability)
        providers = ort_providers(self.device, availability)
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=ort_session_options(onnxruntime, options.threads),
            providers=providers)
        if self.device == CUDA and ORT_CUDA_PROVIDER not in self.session.get_providers():
            raise BackendUnavailable(f'{ORT_CUDA_PROVIDER} did not load (CUDA/cuDNN libraries '
                                     'missing or mismatched); see the onnxruntime-gpu docs')
        self.precision = 'fp32'
        if options.precision != 'fp32':
            LOG.info('onnxruntime runs the FP32 graph (asked for %s)', options.precision)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(output.name for output in self.session.get_outputs())
        self.descriptor_name = descriptor_output_name(self.output_names)
        threads = options.threads or 'default'
        self.description = f'onnxruntime-{self.device} fp32 ({threads} threads)'

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed batch."""
        return self.session.run([self.descriptor_name], {self.input_name: batch})[0]

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of a preprocessed batch by name (see :mod:`.backend_base`)."""
        return named_outputs(self.output_names,
                             self.session.run(list(self.output_names), {self.input_name: batch}))


def _create_one(variant_or_name: str, *, model: Optional[TorchModelSource],
                onnx_path: Optional[StrPath], options: BackendOptions,
                availability: Availability) -> StartedBackend:
    backend, device = parse_backend_name(variant_or_name)
    if device != 'auto':
        options = dataclasses.replace(options, device=device)
    return BACKENDS.create(backend, model=model, onnx_path=onnx_path, options=options,
                           availability=availability)


def create_auto(*, model: Optional[TorchModelSource], onnx_path: Optional[StrPath],
                options: BackendOptions, availability: Availability) -> StartedBackend:
    """Try the ``auto`` order; log the pick and why earlier candidates were not used."""
    plan = plan_auto(availability)
    reasons = [f'{name}: {reason}' for name, reason in plan.skipped]
    for variant in plan.candidates:
        try:
            backend = _create_one(variant, model=model, onnx_path=onnx_path, options=options,
                                  availability=availability)
        except (BackendUnavailable, RuntimeError, OSError, ImportError) as error:
            # GPU stacks fail in many ways (driver, OOM, engine build); fall through to the next
            reasons.append(f'{variant}: {error}')
            LOG.warning('backend auto: %s failed: %s', variant, error)
            continue
        backend.auto_reasons = tuple(reasons)
        LOG.info('backend auto -> %s%s', backend.description,
                 f' (passed over: {"; ".join(reasons)})' if reasons else '')
        return backend
    raise BackendUnavailable('no backend could start: ' + '; '.join(reasons))


def create_backend(name: str, *, model: Optional[TorchModelSource],
                   onnx_path: Optional[StrPath], threads: Optional[int] = None,
                   options: Optional[BackendOptions] = None,
                   availability: Optional[Availability] = None) -> StartedBackend:
    """Instantiate backend ``name`` (``auto``, a backend or a ``<backend>-<device>`` variant).

    ``model`` is a torch module or a zero-argument factory returning one;
    ``threads`` overrides ``options.threads`` when given.
    """
    options = options or BackendOptions()
    if threads is not None:
        options = dataclasses.replace(options, threads=int(threads))
    availability = availability or probe_availability()
    if name == 'auto':
        return create_auto(model=model, onnx_path=onnx_path, options=options,
                           availability=availability)
    backend = _create_one(name, model=model, onnx_path=onnx_path, options=options,
                          availability=availability)
    backend.auto_reasons = ()
    return backend


def as_float32(descriptors: npt.ArrayLike) -> np.ndarray:
    """Float32, C-contiguous descriptors re-normalised to unit length (FP16/INT8 drift)."""
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    norms = np.linalg.norm(descriptors, axis=1, keepdims=True)
    return descriptors / np.maximum(norms, np.float32(1e-12))

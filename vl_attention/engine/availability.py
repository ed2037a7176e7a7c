"""Which inference paths can run here, and the ``auto`` choice among them.

Detection (:func:`probe_availability`) touches the installed libraries and
the GPU; the decision (:func:`plan_auto`) is a pure function of the
resulting :class:`Availability`, so it is tested with fake availability.

A *variant* is ``<backend>-<device>`` (``onnxruntime-cuda``, ``torch-cpu``);
``tensorrt`` always runs on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib
import importlib.util
import logging
from typing import Sequence

from vl_attention.config import ConfigError

LOG = logging.getLogger(__name__)

CPU, CUDA = 'cpu', 'cuda'
DEVICES = ('auto', CPU, CUDA)
PRECISIONS = ('fp32', 'fp16', 'int8')
AUTO_ORDER = ('tensorrt', 'onnxruntime-cuda', 'torch-cuda', 'onnxruntime-cpu', 'torch-cpu')
VARIANTS = {'tensorrt': ('tensorrt', CUDA), 'tensorrt-cuda': ('tensorrt', CUDA),
            'onnxruntime-cuda': ('onnxruntime', CUDA), 'onnxruntime-cpu': ('onnxruntime', CPU),
            'torch-cuda': ('torch', CUDA), 'torch-cpu': ('torch', CPU)}
BACKEND_NAMES = ('auto', 'tensorrt', 'onnxruntime', 'torch') + tuple(
    name for name in VARIANTS if name not in ('tensorrt', 'tensorrt-cuda'))
ORT_CUDA_PROVIDER = 'CUDAExecutionProvider'


@dataclass(frozen=True)
class Availability:
    """What this machine offers; an empty name/version comes with a reason."""

    cuda_device: str = ''
    cuda_reason: str = 'not probed'
    onnxruntime_version: str = ''
    onnxruntime_providers: tuple = ()
    onnxruntime_reason: str = 'not probed'
    tensorrt_version: str = ''
    tensorrt_reason: str = 'not probed'


@dataclass(frozen=True)
class AutoPlan:
    """Variants to try in order, and why the others were passed over."""

    candidates: tuple
    skipped: tuple  # ((variant, reason), ...)

    def describe(self) -> str:
        """One line: the order to try and the reasons for skipping."""
        skipped = '; '.join(f'{name}: {reason}' for name, reason in self.skipped)
        return f'try {list(self.candidates)}' + (f' (not available: {skipped})' if skipped else '')


def parse_backend_name(name: str) -> tuple[str, str]:
    """Split a backend name into ``(backend, device)``; plain names get device ``'auto'``."""
    if name in VARIANTS:
        return VARIANTS[name]
    if name in ('tensorrt', 'onnxruntime', 'torch'):
        return name, 'auto'
    raise ConfigError(f'unknown backend {name!r}; known backends: {list(BACKEND_NAMES)}')


def unavailable_reason(variant: str, availability: Availability) -> str:
    """Why ``variant`` cannot run given ``availability``; ``''`` when it can."""
    backend, device = VARIANTS[variant]
    if device == CUDA and not availability.cuda_device:
        return f'no CUDA GPU ({availability.cuda_reason})'
    if backend == 'tensorrt' and not availability.tensorrt_version:
        return availability.tensorrt_reason
    if backend == 'onnxruntime':
        if not availability.onnxruntime_version:
            return availability.onnxruntime_reason
        if device == CUDA and ORT_CUDA_PROVIDER not in availability.onnxruntime_providers:
            return (f'onnxruntime {availability.onnxruntime_version} has no '
                    f'{ORT_CUDA_PROVIDER} (providers {list(availability.onnxruntime_providers)})'
                    '; install onnxruntime-gpu for it')
    return ''


def plan_auto(availability: Availability, order: Sequence[str] = AUTO_ORDER) -> AutoPlan:
    """Order in which ``auto`` tries the variants, skipping those that cannot run."""
    candidates, skipped = [], []
    for variant in order:
        reason = unavailable_reason(variant, availability)
        if reason:
            skipped.append((variant, reason))
        else:
            candidates.append(variant)
    return AutoPlan(candidates=tuple(candidates), skipped=tuple(skipped))


def resolve_device(backend: str, device: str, availability: Availability) -> str:
    """Concrete device for ``backend`` when ``device`` is ``'auto'``: CUDA if it can run there."""
    if device != 'auto':
        return device
    if backend == 'tensorrt':
        return CUDA
    return CUDA if not unavailable_reason(f'{backend}-cuda', availability) else CPU


def _probe_cuda() -> tuple[str, str]:
    """First CUDA device's name through the driver API (libcuda), so probing imports no torch."""
    import ctypes
    try:
        driver = ctypes.CDLL('libcuda.so.1')
    except OSError as error:
        return '', f'no NVIDIA driver (libcuda.so.1 not loadable: {error})'
    count, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return '', 'the NVIDIA driver is loaded but cuInit/cuDeviceGetCount failed'
    if count.value < 1:
        return '', 'the NVIDIA driver sees no GPU'
    device = ctypes.c_int(0)
    if driver.cuDeviceGet(ctypes.byref(device), 0) != 0 or \
            driver.cuDeviceGetName(name, len(name), device) != 0:
        return 'CUDA device 0', ''
    return name.value.decode(errors='replace'), ''


def _probe_onnxruntime() -> tuple[str, tuple[str, ...], str]:
    try:
        onnxruntime = importlib.import_module('onnxruntime')
    except ImportError as error:
        return '', (), f'onnxruntime is not installed ({error}); pip install onnxruntime'
    return onnxruntime.__version__, tuple(onnxruntime.get_available_providers()), ''


def _probe_tensorrt() -> tuple[str, str]:
    if importlib.util.find_spec('tensorrt') is None:
        return '', ('tensorrt is not installed (pip install tensorrt, or use the JetPack '
                    'python3-libnvinfer package)')
    try:
        tensorrt = importlib.import_module('tensorrt')
    except Exception as error:  # a broken TensorRT install raises assorted errors
        return '', f'tensorrt is installed but does not import ({error})'
    version = getattr(tensorrt, '__version__', '')
    if not version.split('.')[0].isdigit() or int(version.split('.')[0]) < 10:
        return '', f'tensorrt {version} is too old; this backend needs TensorRT 10 or newer'
    return version, ''


def probe_availability() -> Availability:
    """Detect CUDA (the driver API), ONNX Runtime's providers and TensorRT."""
    cuda_device, cuda_reason = _probe_cuda()
    ort_version, ort_providers, ort_reason = _probe_onnxruntime()
    trt_version, trt_reason = _probe_tensorrt()
    availability = Availability(cuda_device=cuda_device, cuda_reason=cuda_reason,
                                onnxruntime_version=ort_version,
                                onnxruntime_providers=ort_providers,
                                onnxruntime_reason=ort_reason, tensorrt_version=trt_version,
                                tensorrt_reason=trt_reason)
    LOG.debug('availability: %s', availability)
    return availability

"""What every backend shares: the registry, the options and the 'unavailable' error.

A backend takes ``float32 (B, 3, H, W)`` normalised input (the output of
:func:`~vl_attention.engine.preprocess.preprocess_frames`) and returns
``float32 (B, D)`` descriptors. It exposes ``name`` (its registry name),
``device`` (``'cpu'`` or ``'cuda'``), ``precision`` (what it really runs) and
``description`` (one line for logs and diagnostics).
"""

from dataclasses import dataclass

from vl_attention.engine.availability import DEVICES, PRECISIONS
from vl_attention.models.registry import Registry

BACKENDS = Registry('backend')


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class BackendOptions:
    """Settings a backend may honour; those that do not apply are ignored and logged.

    ``precision`` applies on CUDA only (CPU paths always run FP32);
    ``int8`` is TensorRT only. ``max_batch`` bounds TensorRT's optimisation
    profile. ``engine_dir`` is where TensorRT engines are cached and
    ``calibration_dir`` a folder of map images for INT8 calibration.
    """

    device: str = 'auto'
    threads: int = 0
    precision: str = 'fp32'
    compile: bool = False
    channels_last: bool = False
    max_batch: int = 8
    engine_dir: str = ''
    calibration_dir: str = ''

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f'device {self.device!r} is not one of {list(DEVICES)}')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision {self.precision!r} is not one of {list(PRECISIONS)}')
        if self.threads < 0 or self.max_batch < 1:
            raise ValueError('threads must be >= 0 and max_batch >= 1')

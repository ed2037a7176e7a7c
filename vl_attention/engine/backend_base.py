"""What every backend shares: the registry, the options and the 'unavailable' error.

A backend takes ``float32 (B, 3, H, W)`` normalised input (the output of
:func:`~vl_attention.engine.preprocess.preprocess_frames`) and returns
``float32 (B, D)`` descriptors. It exposes ``name`` (its registry name),
``device`` (``'cpu'`` or ``'cuda'``), ``precision`` (what it really runs) and
``description`` (one line for logs and diagnostics).

``run(batch)`` returns the descriptors; ``run_outputs(batch)`` returns every
output of the model by its ONNX name (:data:`DESCRIPTOR_OUTPUT` always, and
for pose models ``position_m`` ``(B, 3)`` relative to the card's
``pose_origin_m`` and ``orientation_xyzw`` ``(B, 4)``), each ``float32``.
"""

from dataclasses import dataclass

import numpy as np

from vl_attention.engine.availability import DEVICES, PRECISIONS
from vl_attention.model_outputs import DESCRIPTOR_OUTPUT
from vl_attention.registry import Registry

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


def descriptor_output_name(names):
    """Pick the descriptor output of a graph: ``descriptors``, else its only output."""
    names = list(names)
    if DESCRIPTOR_OUTPUT in names:
        return DESCRIPTOR_OUTPUT
    if len(names) == 1:
        return names[0]
    raise BackendUnavailable(f'the model has outputs {names} and none is named '
                             f'{DESCRIPTOR_OUTPUT!r}; export it again with this package')


def named_outputs(names, arrays):
    """``{name: float32 array}`` of a graph's outputs, in graph order."""
    names, arrays = list(names), list(arrays)
    if len(names) != len(arrays):
        raise ValueError(f'{len(arrays)} output arrays for the {len(names)} names {names}')
    return {name: np.asarray(array, dtype=np.float32) for name, array in zip(names, arrays)}

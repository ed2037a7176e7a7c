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
:class:`EmbeddingBackend` is that interface as a :class:`typing.Protocol`:
backends need not inherit from anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, TYPE_CHECKING, Union

import numpy as np

from vl_attention.config import ConfigError
from vl_attention.engine.availability import DEVICES, PRECISIONS
from vl_attention.errors import VLAttentionError
from vl_attention.model_outputs import DESCRIPTOR_OUTPUT
from vl_attention.registry import Registry

if TYPE_CHECKING:
    from torch import nn

BACKENDS = Registry('backend')
# what the torch backend runs: a module, or a zero-argument factory building one on demand
TorchModelSource = Union['nn.Module', Callable[[], 'nn.Module']]


class BackendUnavailable(VLAttentionError, RuntimeError):
    """The backend cannot run on this machine; the message says why."""


class EmbeddingBackend(Protocol):
    """What :class:`~vl_attention.engine.embedder.Embedder` needs of a backend."""

    name: str          # its registry name
    device: str        # 'cpu' or 'cuda'
    precision: str     # what it really runs: fp32, fp16 or int8
    description: str   # one line for logs and diagnostics

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Return the ``float32 (B, D)`` descriptors of a preprocessed batch."""
        ...

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Return every output of a preprocessed batch by its ONNX name."""
        ...


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

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f'device {self.device!r} is not one of {list(DEVICES)}')
        if self.precision not in PRECISIONS:
            raise ConfigError(f'precision {self.precision!r} is not one of {list(PRECISIONS)}')
        if self.threads < 0 or self.max_batch < 1:
            raise ConfigError('threads must be >= 0 and max_batch >= 1')


def descriptor_output_name(names: Iterable[str]) -> str:
    """Pick the descriptor output of a graph: ``descriptors``, else its only output."""
    names = list(names)
    if DESCRIPTOR_OUTPUT in names:
        return DESCRIPTOR_OUTPUT
    if len(names) == 1:
        return names[0]
    raise BackendUnavailable(f'the model has outputs {names} and none is named '
                             f'{DESCRIPTOR_OUTPUT!r}; export it again with this package')


def named_outputs(names: Iterable[str],
                  arrays: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """``{name: float32 array}`` of a graph's outputs, in graph order."""
    names, arrays = list(names), list(arrays)
    if len(names) != len(arrays):
        raise ValueError(f'{len(arrays)} output arrays for the {len(names)} names {names}')
    return {name: np.asarray(array, dtype=np.float32) for name, array in zip(names, arrays)}

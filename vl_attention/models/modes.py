"""Train / eval modes that come back exactly as they were.

``module.train(was_training)`` after an evaluation pass sets *every*
submodule to that mode: it would put a frozen trunk's BatchNorm, deliberately
left in eval mode while the head trains, back into training mode, where it
normalises with batch statistics and updates its running ones.
:func:`evaluating` restores each submodule's own mode instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from torch import nn

_Module = TypeVar('_Module', bound='nn.Module')


@contextmanager
def evaluating(module: _Module) -> Iterator[_Module]:
    """Run the block with ``module`` in eval mode; then give each submodule its mode back."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training

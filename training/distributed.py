"""Process-group setup for ``torchrun`` (DistributedDataParallel), and the single-process case.

``torchrun --nproc_per_node N`` (or ``--nnodes``/``--rdzv-*`` for several
machines) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them training
runs as one process. CUDA ranks use NCCL and one GPU each (``LOCAL_RANK``);
CPU ranks use gloo.
"""

from dataclasses import dataclass
import datetime
import os
from typing import Any, List, TypeVar

import torch
import torch.distributed as dist

from vl_attention.engine.backend_base import BackendUnavailable

_T = TypeVar('_T')


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and reports."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.enabled:
            dist.barrier()

    def gather(self, value: _T) -> List[_T]:
        """Return every process's ``value`` as a list indexed by rank (``[value]`` alone)."""
        if not self.enabled:
            return [value]
        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == 'cuda' or (choice == 'auto' and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise BackendUnavailable('device cuda asked for, but torch sees no CUDA device; use '
                                     'device: cpu or auto')
        torch.cuda.set_device(local_rank)
        return torch.device('cuda', local_rank)
    return torch.device('cpu')


def setup(device_choice: str = 'auto', *, timeout_s: float = 600) -> DistributedContext:
    """Join the torchrun process group if there is one; return this process's context."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = _device(device_choice, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank,
                              device=device)


def teardown(context: DistributedContext) -> None:
    """Leave the process group."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()

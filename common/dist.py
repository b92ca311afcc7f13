"""Distributed set-up from torchrun environment variables, returned as a value (nothing global).

``torchrun --nproc_per_node N script.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the
run is a single process. CUDA uses NCCL, CPU uses gloo (so 2-process tests run on CPU).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process runs and its place in the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` over ranks (identity in a single process)."""
        if not self.distributed:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` (batch-first, sizes may differ per rank) from all ranks, rank order."""
        if not self.distributed:
            return tensor
        local = tensor.contiguous()
        size = torch.tensor([local.shape[0]], device=local.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        max_size = int(max(s.item() for s in sizes))
        padded = local.new_zeros((max_size, *local.shape[1:]))
        padded[: local.shape[0]] = local
        chunks = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(chunks, padded)
        return torch.cat([c[: int(s.item())] for c, s in zip(chunks, sizes)], dim=0)


def resolve_device(requested: str, *, flag: str = "--device") -> torch.device:
    """Map a device setting to a device; "cuda" without a GPU falls back to CPU with a warning.

    ``flag`` names the setting in messages (a config key for config-driven scripts).
    """
    if requested.startswith("cuda") and not torch.cuda.is_available():
        _logger.warning("%s %s requested but no CUDA device is available; running on CPU", flag, requested)
        return torch.device("cpu")
    try:
        return torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"{flag}: invalid device '{requested}' ({exc})") from None


def init_distributed(device: str = "cuda", *, flag: str = "--device") -> DistContext:
    """Initialise the process group when launched by torchrun and return this process's context.

    Args:
        device: the ``--device`` value ("cuda", "cuda:1", "cpu").
        flag: how the user sets the device, quoted in the fallback warning and in errors.

    Returns:
        DistContext with rank, world size, local rank and the torch device to use.
    """
    dev = resolve_device(device, flag=flag)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext(device=dev)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""Where and how the model runs: device choice, mixed precision, memory layout and the distributed context."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

AMP_MODES = ("auto", "bf16", "fp16", "none")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None) picks the CUDA device of this process when there is one, else the CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        return torch.device("cpu")
    return torch.device(device)


def resolve_amp(amp: str, device: torch.device) -> str:
    """`auto` is bf16 on GPUs that support it, fp16 on older GPUs, and full precision on the CPU.

    `fp16` (the official recipe: fp16 autocast with a grad scaler) is a GPU setting; on the CPU it runs in fp32.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        return "none"
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "none"


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast context for a resolved amp mode ('none' gives a no-op context)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a `torchrun` job (world size 1 for a plain run)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device | None = "auto") -> tuple[DistributedContext, torch.device]:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPUs) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext(), resolve_device(device)
    context = DistributedContext(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return context, resolved

"""Device policy: which device a run uses and how the process is set up for it, and how much memory
one batch of work may take there."""

from __future__ import annotations

import torch

from boundary_cli.errors import BoundaryError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; explicit names are checked."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BoundaryError(f"unknown device={name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BoundaryError(f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BoundaryError(f"device={name} but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise BoundaryError(f"unsupported device={name!r}; valid: auto, cpu, cuda, cuda:N")
    return device


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc only): no mmap for big blocks, no trimming.

    By default glibc hands every large block back to the OS when it is freed, so each DeepFool
    iteration re-touched hundreds of MB of fresh pages (~70k page faults per iteration for LeNet at
    500 rows, a third of its time). Returns whether the allocator was tuned.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False


def shard_device(name: str, shard_index: int, shard_count: int) -> str:
    """``device=auto`` for one of several shards on a machine with several GPUs: ``cuda:<index % GPUs>``,
    so the local launcher's jobs each take their own GPU. Any other case: ``name`` unchanged."""
    if str(name) != "auto" or shard_count < 2 or not torch.cuda.is_available():
        return str(name)
    n_gpus = torch.cuda.device_count()
    return f"cuda:{shard_index % n_gpus}" if n_gpus > 1 else str(name)


def prepare_device(name: str, *, tune_allocator: bool = True) -> torch.device:
    """Resolve ``name`` and set the process up for it: the current CUDA device, the allocator on CPU.

    No precision flag is touched (torch's defaults stay): TF32 is scoped where it is asked for, see
    :mod:`boundary_cli.geometry.precision` and ``experiment.deepfool.tf32``."""
    device = resolve_device(name)
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
    elif tune_allocator:
        tune_cpu_allocator()
    return device


def memory_budget(device: torch.device) -> int:
    """Bytes one batch of work may use: half the free GPU memory, or a quarter of the available RAM
    (at most 4 GiB: on CPU larger batches buy no speed)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    available = 8 * 2**30
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(min(4 * 2**30, 0.25 * available))

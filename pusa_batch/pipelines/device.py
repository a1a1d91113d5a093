"""Where and in which precision a pipeline runs (`device` and `dtype` options resolved), and how
much memory that device offers a worker (`device_memory`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from pusa_batch.errors import PipelineError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str | torch.device | None) -> torch.device:
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 on the CPU (CPU bf16 matmuls are slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


@dataclass(frozen=True)
class DeviceMemory:
    """What one worker may plan for: `capacity` bytes, `in_use` of them already taken when it
    was measured (after the pipeline loaded); `where` names what was measured."""

    capacity: int
    in_use: int
    where: str


def device_memory(device: torch.device, *, cap: int | None, resident: int) -> DeviceMemory | None:
    """The memory a worker on `device` may plan for; None when it cannot be known.

    With a cap (`[device] memory_gib`): the cap, with this worker's resident weights (`resident`
    bytes; on CUDA at least what torch has allocated) in use. Else on CUDA the device's total
    memory, with everything taken on it now in use (this process and any other); on the CPU the
    host RAM available now (this process's weights are already out of it).
    """
    if cap is not None:
        if device.type == "cuda":
            resident = max(resident, torch.cuda.memory_allocated(device))
        return DeviceMemory(cap, resident, f"the [device] memory_gib cap ({format_bytes(cap)})")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        name = torch.cuda.get_device_name(device)
        return DeviceMemory(total, total - free, f"{name} ({format_bytes(total)})")
    available = host_ram_available()
    if available is None:
        return None
    return DeviceMemory(available, 0, f"the host RAM available ({format_bytes(available)})")


def host_ram_available() -> int | None:
    """MemAvailable, from psutil when installed, else /proc/meminfo; None when neither says."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def format_bytes(n: int) -> str:
    """3 significant digits in the largest unit that fits: 1.5 GiB, 812 MiB."""
    units = ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))
    scale, unit = next(((s, u) for s, u in units if n >= s), (1, "B"))
    return f"{n / scale:.3g} {unit}"

"""Where a run computes: the one place that picks the device, decides on bf16, names the device and reads its memory.

Training, sampling, the bench, the doctor, the CLI and the window's status bar all ask here, so that
"auto" means the same everywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import torch

from ddpm_studio.core.errors import SettingError, check_choice

T = TypeVar("T")

PRECISIONS = ("auto", "fp32", "bf16")
# Caps the memory a run may count on, for example "8G" on a shared machine (and a small one in tests).
MEMORY_LIMIT_VARIABLE = "DDPM_STUDIO_MEMORY_LIMIT"


def choose_device(requested: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """The device a run uses: the requested one, or a CUDA GPU when there is one, else the CPU.

    Under torchrun, a bare "cuda" (and "auto") means this process's own GPU, the one of ``local_rank``.
    """
    if requested is not None and str(requested) != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def process_group_backend(device: torch.device) -> str:
    """The torch.distributed backend for a run on ``device``: NCCL for GPUs, gloo for the CPU.

    Chosen by the run's device, not by whether CUDA exists: ``--device cpu`` on a GPU machine
    needs gloo, since NCCL cannot reduce CPU tensors.
    """
    return "nccl" if device.type == "cuda" else "gloo"


# --- bf16 --------------------------------------------------------------------------------------


def cpu_capabilities() -> Mapping:
    """The instruction sets torch detects on this CPU (name -> bool)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:  # torch >= 2.10
        return get_capabilities()
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    return {name: bool(getattr(torch.cpu, probe, lambda: False)()) for name, probe in probes.items()}


def cpu_has_native_bf16(capabilities: Mapping | None = None) -> bool:
    """Whether this x86 CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX).

    Elsewhere oneDNN emulates bf16 in fp32 registers, which is slower than fp32 itself.
    """
    capabilities = cpu_capabilities() if capabilities is None else capabilities
    amx_bf16 = capabilities.get("amx_bf16", capabilities.get("amx_tile"))  # older torch reports only the tiles
    return bool(capabilities.get("avx512_bf16") or amx_bf16)


def cpu_vendor() -> str:
    """The CPU's vendor as Linux names it ("GenuineIntel", "AuthenticAMD"), or "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_prefers_bf16(capabilities: Mapping | None = None, vendor: str | None = None) -> bool:
    """Whether "auto" computes in bf16 on this CPU: only where bf16 was measured faster than fp32.

    AMX multiplies bf16 tiles in hardware. AVX512-BF16 alone helps on AMD's Zen 4 (a ddpm-cifar10
    training step at batch 8: 0.93 s in fp32, 0.61 s in bf16), but on an Intel Xeon with AVX512-BF16
    and no AMX, the project's CI machine, bf16 was 0.71x the speed of fp32 (``ddpm-studio bench
    --bf16-vs-fp32``), so there "auto" stays fp32.
    """
    capabilities = cpu_capabilities() if capabilities is None else capabilities
    if capabilities.get("amx_bf16", capabilities.get("amx_tile")):
        return True
    vendor = cpu_vendor() if vendor is None else vendor
    return bool(capabilities.get("avx512_bf16")) and vendor == "AuthenticAMD"


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` (not the current one) has bf16 tensor cores (compute capability 8.0+).

    ``torch.cuda.is_bf16_supported()`` by default also counts emulation, which T4s and V100s
    offer at a fraction of fp32's speed.
    """
    if torch.version.hip:
        return True
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation and counts no emulation
            return torch.cuda.is_bf16_supported()


def has_native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run at ``precision`` ("auto", "fp32", "bf16") computes in bf16 autocast on ``device``.

    "auto" picks bf16 where the device has it natively and it pays: GPUs from Ampere on, and
    CPUs where ``cpu_prefers_bf16`` says so.
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "bf16":
        return True
    if precision != "auto":
        return False
    return cpu_prefers_bf16() if device.type == "cpu" else has_native_bf16(device)


def use_channels_last(device: torch.device) -> bool:
    """Whether the model and its inputs use the channels_last layout: on GPUs, where cuDNN's
    tensor-core convolutions want it."""
    return device.type == "cuda"


# --- describing and measuring ------------------------------------------------------------------


def describe_device(device: torch.device) -> str:
    """A short name for a status line: "NVIDIA H100 (cuda:0)", or "CPU"."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    if device.type == "cpu":
        return "CPU"
    return str(device)


def device_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Total memory of a CUDA device, or the system's RAM for the CPU; None where it cannot be read."""
    device = choose_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on every platform (Windows)
        return None


def memory_limit_bytes() -> int | None:
    """The cap set in DDPM_STUDIO_MEMORY_LIMIT ("512M", "8G", or bytes); None when unset."""
    text = os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text, flags=re.IGNORECASE)
    if not match:
        raise SettingError(f"{MEMORY_LIMIT_VARIABLE}={text} is not a size; write it like 512M or 8G.")
    unit = match.group(2).upper()
    scale = 1024 ** ("KMGT".find(unit) + 1) if unit else 1
    return int(float(match.group(1)) * scale)


def _cgroup_room() -> int | None:
    """What this process's cgroup (a container's limit) still lets it use, if it sets a limit (cgroup v2)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Memory a new run can still use on ``device``: free GPU memory, or the RAM the system has available.

    On the CPU this is Linux's MemAvailable (what can be allocated without swapping), lowered by a
    container's own limit; elsewhere the total RAM. DDPM_STUDIO_MEMORY_LIMIT caps it. None where
    nothing can be read.
    """
    device = choose_device(device)
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = None
        try:
            with open("/proc/meminfo") as stream:
                for line in stream:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            pass
        if available is None:
            available = device_memory_bytes(device)
        room = _cgroup_room()
        if room is not None and available is not None:
            available = min(available, room)
    limit = memory_limit_bytes()
    if limit is not None:
        available = limit if available is None else min(available, limit)
    return available


def memory_in_use_bytes(device: torch.device) -> int | None:
    """Memory in use: on a GPU by every process on it, on the CPU by this process (None where unknown)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total - free
    try:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # Linux only
        return None


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a tensor to ``device``; from the CPU to a GPU without making the host wait for the GPU.

    The copy goes through pinned memory (torch's caching host allocator, which keeps the buffer
    until the copy is done), so ``non_blocking`` is really asynchronous.
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# torch's intra-op threads in this process before any job changed its own (one per core by default).
DEFAULT_THREADS = torch.get_num_threads()


def threads_beside_a_window() -> int:
    """Intra-op threads for a job in the window's process: one core fewer than torch would use, left to the window.

    Measured by ``benchmarks/thread_policy.py`` on 2 cores (README, "Beside other work"): with every core's thread
    in use, one busy process beside the job slowed a DDIM step from 56 to 139 ms and two from 56 to 2,564 ms
    (threads waiting at each operation for a core that another process holds); one core fewer gave 76, 76 and
    137 ms. OMP_WAIT_POLICY=passive avoided the collapse too but cost twice the time on a quiet machine.
    """
    return max(1, DEFAULT_THREADS - 1)


def beside_a_window(events: Iterator[T]) -> Iterator[T]:
    """Drive ``events`` (a job's iterator) in the calling thread with ``threads_beside_a_window`` threads: the
    window's worker threads run sampling, evaluation and the likelihood this way (training takes the same count
    through its options). Only the calling thread's count changes; the CLI keeps torch's own."""
    torch.set_num_threads(threads_beside_a_window())
    yield from events

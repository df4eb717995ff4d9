"""The one place that decides where and how a run computes: device, process-group backend, bf16."""

import threading
from pathlib import Path

import pytest
import torch

from ddpm_studio.core.system import devices
from ddpm_studio.core.system.devices import (
    DEFAULT_THREADS,
    beside_a_window,
    choose_device,
    cpu_has_native_bf16,
    describe_device,
    device_memory_bytes,
    host_to_device,
    process_group_backend,
    threads_beside_a_window,
    use_bf16,
)


@pytest.fixture
def cuda_machine(monkeypatch):
    """Pretend a CUDA GPU is there: the decisions must not depend on one being usable."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_means_this_process_gpu_where_there_is_one(cuda_machine):
    assert choose_device("auto", local_rank=2) == torch.device("cuda", 2)
    assert choose_device(None) == torch.device("cuda", 0)
    assert choose_device("cuda", local_rank=1) == torch.device("cuda", 1)


def test_device_cpu_on_a_gpu_machine_joins_the_process_group_with_gloo(cuda_machine):
    # NCCL cannot reduce CPU tensors: --device cpu under torchrun would crash at the first collective.
    assert process_group_backend(choose_device("cpu")) == "gloo"
    assert process_group_backend(choose_device("auto", local_rank=1)) == "nccl"
    assert process_group_backend(choose_device("cuda:1")) == "nccl"


@pytest.mark.parametrize("capabilities, native", [
    ({"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, False),
    ({"avx512_f": True, "avx512_bf16": True, "amx_bf16": False}, True),  # Zen 4, Cooper Lake
    ({"avx512_bf16": False, "amx_bf16": True, "amx_tile": True}, True),  # Sapphire Rapids and later
    ({"architecture": "aarch64", "neon": True}, False),
    ({"amx_tile": True}, True),  # older torch reports only the AMX tiles
])
def test_native_bf16_on_the_cpu_means_avx512_bf16_or_amx(capabilities, native):
    assert cpu_has_native_bf16(capabilities) is native


@pytest.mark.parametrize("capabilities, vendor, chosen", [
    ({"avx512_bf16": False, "amx_bf16": False}, "AuthenticAMD", False),  # no bf16 hardware: emulated, slow
    ({"avx512_bf16": True, "amx_bf16": False}, "AuthenticAMD", True),  # Zen 4: measured faster
    ({"avx512_bf16": True, "amx_bf16": False}, "GenuineIntel", False),  # Xeon without AMX: measured 0.71x
    ({"avx512_bf16": True, "amx_bf16": True}, "GenuineIntel", True),  # Sapphire Rapids and later
])
def test_auto_precision_picks_bf16_on_the_cpu_only_where_it_is_native_and_faster(monkeypatch, capabilities, vendor,
                                                                                  chosen):
    monkeypatch.setattr(devices, "cpu_capabilities", lambda: capabilities)
    monkeypatch.setattr(devices, "cpu_vendor", lambda: vendor)
    cpu = torch.device("cpu")
    assert use_bf16("auto", cpu) is chosen
    assert use_bf16("bf16", cpu) is True and use_bf16("fp32", cpu) is False
    with pytest.raises(ValueError, match="precision"):
        use_bf16("fp16", cpu)


def test_the_cpu_vendor_is_read_from_the_machine():
    vendor = devices.cpu_vendor()
    assert isinstance(vendor, str)
    if Path("/proc/cpuinfo").is_file() and "vendor_id" in Path("/proc/cpuinfo").read_text(errors="replace"):
        assert vendor in Path("/proc/cpuinfo").read_text(errors="replace")
        assert vendor


def test_auto_precision_asks_the_run_device_for_native_bf16_without_emulation(monkeypatch, cuda_machine):
    """A T4 (compute 7.5) emulates bf16: "auto" must not pick it. The question goes to the run's
    GPU (made current for it), not to whichever GPU is current."""
    asked = []

    class FakeDeviceContext:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            asked.append(self.device)

        def __exit__(self, *exc):
            return False

    def is_bf16_supported(including_emulation=True):
        assert including_emulation is False
        return asked[-1] == torch.device("cuda", 1)  # GPU 1 is an A100, GPU 0 a T4

    monkeypatch.setattr(torch.cuda, "device", FakeDeviceContext)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.version, "hip", None)
    assert use_bf16("auto", torch.device("cuda", 1)) is True
    assert use_bf16("auto", torch.device("cuda", 0)) is False


def test_the_cpu_is_described_and_measured():
    assert describe_device(torch.device("cpu")) == "CPU"
    total = device_memory_bytes("cpu")
    assert total is None or total > 2**28
    tensor = torch.arange(5)
    assert torch.equal(host_to_device(tensor, torch.device("cpu")), tensor)


def test_a_job_beside_the_window_takes_one_core_fewer_in_its_own_thread_only():
    """The window's sampling, evaluation and likelihood jobs (benchmarks/thread_policy.py chose the count)."""
    seen = []

    def job():
        seen.append(torch.get_num_threads())
        yield "step"

    before = torch.get_num_threads()
    worker = threading.Thread(target=lambda: seen.append(list(beside_a_window(job()))))
    worker.start()
    worker.join()
    assert seen == [threads_beside_a_window(), ["step"]]
    assert threads_beside_a_window() == max(1, DEFAULT_THREADS - 1)
    assert torch.get_num_threads() == before  # the thread that started it keeps its own

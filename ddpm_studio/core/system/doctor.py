"""``ddpm-studio doctor``: a self-check of a machine. What it has, whether the GPU paths compute what
the CPU's do, and how fast training and sampling run, in a few minutes, as lines and as JSON.

Every check compares the same seeds and weights two ways and states its tolerance. A check that
cannot run here (a CUDA path on a CPU-only machine, NCCL with fewer than two GPUs) is reported as
"skipped" with the reason, never as passed.
"""

from __future__ import annotations

import copy
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.samplers import sample_progressive
from ddpm_studio.core.diffusion.schedule import NoiseSchedule, ScheduleConfig
from ddpm_studio.core.model.unet import UNet, UNetConfig, preset_config
from ddpm_studio.core.system.devices import (
    choose_device,
    cpu_capabilities,
    cpu_has_native_bf16,
    cuda_has_native_bf16,
    describe_device,
    device_memory_bytes,
    use_channels_last,
)
from ddpm_studio.core.training.memory import estimate_training_memory, measure_training_peak
from ddpm_studio.core.training.plain_step import plain_training_step

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class DoctorSettings:
    device: str = "auto"
    quick: bool = False  # tiny sizes, for tests and a first look: seconds instead of minutes


@dataclass
class Check:
    """One correctness check: two ways of computing the same thing, and how far apart they may be."""

    name: str
    status: str  # passed, failed or skipped
    detail: str
    difference: float | None = None
    tolerance: float | None = None


@dataclass
class Measurement:
    name: str
    value: float | None
    unit: str
    detail: str = ""


@dataclass
class DoctorReport:
    environment: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"environment": self.environment, "checks": [asdict(c) for c in self.checks],
                "measurements": [asdict(m) for m in self.measurements], "seconds": round(self.seconds, 1)}


@dataclass(frozen=True)
class Sizes:
    """What the doctor runs: the check model, the throughput presets and how long each is timed."""

    check_preset: str
    check_size: int
    presets: tuple[str, ...]
    image_size: int | None
    batch_size: int
    warmup: int
    repeats: int
    sample_steps: int


def sizes_for(settings: DoctorSettings, device: torch.device) -> Sizes:
    if settings.quick:
        return Sizes("tiny", 16, ("tiny",), 16, 4, 1, 1, 2)
    if device.type == "cuda":
        return Sizes("small", 32, ("small", "ddpm-cifar10"), None, 128, 3, 10, 20)
    return Sizes("small", 32, ("small", "ddpm-cifar10"), None, 8, 1, 3, 5)


# --- what the machine has ------------------------------------------------------------------------


def environment() -> dict:
    capabilities = cpu_capabilities()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": None,
        "nccl_available": bool(dist.is_available() and dist.is_nccl_available()),
        "gloo_available": bool(dist.is_available() and dist.is_gloo_available()),
        "cpu": {
            "name": capabilities.get("cpu_name") or platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": bool(capabilities.get("avx512_bf16")),
            "amx_bf16": bool(capabilities.get("amx_bf16")),
            "native_bf16": cpu_has_native_bf16(capabilities),
            "memory_bytes": device_memory_bytes("cpu"),
        },
        "gpus": [],
    }
    if torch.cuda.is_available():
        try:
            version = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception:  # noqa: BLE001 (a build without NCCL)
            pass
        for index in range(torch.cuda.device_count()):
            device = torch.device("cuda", index)
            properties = torch.cuda.get_device_properties(device)
            info["gpus"].append({"index": index, "name": properties.name, "memory_bytes": properties.total_memory,
                                 "compute_capability": f"{properties.major}.{properties.minor}",
                                 "native_bf16": cuda_has_native_bf16(device)})
    return info


def describe_environment(info: dict) -> Iterator[str]:
    cpu = info["cpu"]
    yield f"Python {info['python']}, torch {info['torch']}, CUDA {info['cuda'] or '-'}, cuDNN {info['cudnn'] or '-'}"
    yield (f"CPU    {cpu['name']}, {cpu['threads']} threads, {cpu['capability']}, "
           f"{(cpu['memory_bytes'] or 0) / 2**30:.1f} GiB; bf16 {'native' if cpu['native_bf16'] else 'emulated'}")
    for gpu in info["gpus"]:
        yield (f"GPU {gpu['index']}  {gpu['name']}, {gpu['memory_bytes'] / 2**30:.1f} GiB, "
               f"compute {gpu['compute_capability']}, "
               f"bf16 {'native' if gpu['native_bf16'] else 'emulated'}")
    if not info["gpus"]:
        yield "GPU    none found by PyTorch"
    yield f"NCCL   {info['nccl'] or ('available' if info['nccl_available'] else 'not available')}"


# --- helpers ---------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(function: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest absolute difference, relative to the reference's root mean square."""
    value, reference = value.float(), reference.float()
    scale = reference.pow(2).mean().sqrt().clamp_min(1e-12)
    return float((value - reference).abs().max() / scale)


def check_from(name: str, difference: float, tolerance: float, what: str) -> Check:
    status = PASSED if difference <= tolerance else FAILED
    return Check(name, status, f"{what}: {difference:.2e} (tolerance {tolerance:.0e})", difference, tolerance)


def diffusion_on(device: torch.device, steps: int = 1000) -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.from_config(ScheduleConfig("linear", steps)).to(device))


def batch_on(config: UNetConfig, batch_size: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, config.image_channels, config.image_size, config.image_size)
    x = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    t = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)
    noise = torch.randn(shape, generator=generator).to(device)
    return x, t, noise


# --- correctness checks --------------------------------------------------------------------------


def untrained_model(config: UNetConfig, device: torch.device) -> UNet:
    """A U-Net with random weights everywhere, in eval mode (no dropout: both passes of a check see
    the same network). The paper zero-initialises each block's last layer, which would make any
    comparison of outputs trivially exact."""
    torch.manual_seed(0)
    model = UNet(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1 and not parameter.any():
                parameter.normal_(0.0, 0.05)
    return model.to(device).eval()


def check_bf16_loss(config: UNetConfig, device: torch.device, batch_size: int) -> Check:
    """The training loss under bf16 autocast against float32, same weights, batch, t and eps."""
    model = untrained_model(config, device)
    diffusion = diffusion_on(device)
    x0, t, noise = batch_on(config, batch_size, device)
    x_t = diffusion.q_sample(x0, t, noise)
    with torch.no_grad():
        reference = torch.nn.functional.mse_loss(model(x_t, t).float(), noise)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = torch.nn.functional.mse_loss(model(x_t, t).float(), noise)
    difference = abs(float(bf16) - float(reference)) / float(reference)
    return check_from("bf16 loss vs fp32", difference, 2e-2, "relative loss difference")


def check_channels_last(config: UNetConfig, device: torch.device, batch_size: int) -> Check:
    """The model's output in the channels_last layout against the default, float32."""
    model = untrained_model(config, device)
    other = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x0, t, _ = batch_on(config, batch_size, device)
    with torch.no_grad():
        reference = model(x0, t)
        value = other(x0.contiguous(memory_format=torch.channels_last), t)
    # cuDNN computes float32 convolutions in TF32 by default, with another algorithm per layout.
    tolerance = 2e-2 if device.type == "cuda" else 1e-4
    return check_from("channels_last vs default", relative_difference(value, reference), tolerance,
                      "largest difference / RMS")


def check_compiled(config: UNetConfig, device: torch.device, batch_size: int) -> Check:
    if device.type != "cuda":
        return Check("compiled vs eager", SKIPPED, "torch.compile is used on CUDA only (train --compile); no GPU here")
    model = untrained_model(config, device)
    compiled = torch.compile(model)
    x0, t, _ = batch_on(config, batch_size, device)
    with torch.no_grad():
        reference = model(x0, t)
        value = compiled(x0, t)
    return check_from("compiled vs eager", relative_difference(value, reference), 2e-2, "largest difference / RMS")


def check_two_processes(backend: str, quick: bool) -> Check:
    name = f"2-process {backend.upper()} DDP"
    if backend == "nccl":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count < 2:
            return Check(name, SKIPPED, f"needs 2 or more GPUs; PyTorch finds {count}")
    if quick:
        return Check(name, SKIPPED, "not run with --quick")
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_ddp_worker, args=(rank, 2, port, backend, results)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
        if process.is_alive():
            process.kill()
    outcomes = {}
    while not results.empty():
        rank, value = results.get()
        outcomes[rank] = value
    if set(outcomes) != {0, 1} or any(isinstance(v, str) for v in outcomes.values()):
        errors = "; ".join(v for v in outcomes.values() if isinstance(v, str)) or "a process did not finish"
        return Check(name, FAILED, errors[:300])
    difference = abs(outcomes[0] - outcomes[1])
    return check_from(name, difference, 0.0, "difference of the ranks' weight checksums after 3 steps")


def _ddp_worker(rank: int, world_size: int, port: int, backend: str, results) -> None:
    """One rank of a 3-step DDP run on different data per rank: the weights must end identical."""
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        config = preset_config("tiny", 16)
        torch.manual_seed(0)
        model = UNet(config).to(device)
        if use_channels_last(device):
            model = model.to(memory_format=torch.channels_last)
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
        diffusion = diffusion_on(device, 50)
        generator = torch.Generator(device=device).manual_seed(100 + rank)
        for step in range(3):
            x0, _, _ = batch_on(config, 4, device, seed=10 * step + rank)
            loss = diffusion.training_loss(network, x0, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        dist.destroy_process_group()
        results.put((rank, checksum))
    except Exception as error:  # noqa: BLE001 (reported as the check's failure)
        results.put((rank, f"rank {rank}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"))


# --- throughput ------------------------------------------------------------------------------------


def training_images_per_second(config: UNetConfig, device: torch.device, batch_size: int, bf16: bool,
                               sizes: Sizes, channels_last: bool | None = None, fused: bool | None = None) -> float:
    channels_last = use_channels_last(device) if channels_last is None else channels_last
    fused = device.type == "cuda" if fused is None else fused
    torch.manual_seed(0)
    model = UNet(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused)
    diffusion = diffusion_on(device)
    x0, _, _ = batch_on(config, batch_size, device)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        plain_training_step(model, optimizer, diffusion, x0, bf16, clip=model.parameters())

    return batch_size / seconds_per_call(step, device, sizes.warmup, sizes.repeats)


def sampling_image_steps_per_second(config: UNetConfig, device: torch.device, batch_size: int, sampler: str,
                                    sizes: Sizes, mode: str = "autocast", bf16: bool = False) -> float:
    """Image-steps per second of a sampler's first steps. ``mode``: "autocast" (bf16 autocast when
    ``bf16``), "cast" (the model cast to bf16 once) or "graphs" (compiled with CUDA graphs)."""
    torch.manual_seed(0)
    model = UNet(config).to(device).eval()
    if use_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    network: Callable = model
    if mode == "cast":
        model = model.to(torch.bfloat16)
        network = lambda x, t: model(x.to(torch.bfloat16), t)  # noqa: E731
    elif mode == "graphs":
        network = torch.compile(model, mode="reduce-overhead")
    diffusion = diffusion_on(device)
    shape = (batch_size, config.image_channels, config.image_size, config.image_size)
    steps = sizes.sample_steps
    options = {"num_steps": 50} if sampler == "ddim" else {}

    def run() -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and mode == "autocast"):
            for index, _step in enumerate(sample_progressive(diffusion, network, shape, sampler, generator=generator,
                                                                       device=device, **options)):
                if index + 1 >= steps:
                    break

    return batch_size * steps / seconds_per_call(run, device, 1, max(1, sizes.repeats // 3))


# --- the run -------------------------------------------------------------------------------------


def run_doctor(settings: DoctorSettings, report: DoctorReport) -> Iterator[str]:
    """Fill ``report`` and yield lines as the results come in."""
    started = time.monotonic()
    device = choose_device(settings.device)
    sizes = sizes_for(settings, device)
    report.environment = environment()
    report.environment.update(run_device=str(device), device_name=describe_device(device), quick=settings.quick)
    yield from describe_environment(report.environment)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training does
    native_bf16 = cpu_has_native_bf16() if device.type == "cpu" else cuda_has_native_bf16(device)

    yield from run_checks(settings, report, device, sizes)
    precisions = [False, True] if native_bf16 and not settings.quick else [False]
    yield from measure_throughput(report, device, sizes, precisions)
    yield from measure_gpu_options(report, device, sizes, native_bf16)
    yield from measure_memory(settings, report, device, sizes, precisions)
    report.seconds = time.monotonic() - started
    failed = [check.name for check in report.checks if check.status == FAILED]
    yield ""
    yield (f"Done in {report.seconds:.0f} s: {sum(c.status == PASSED for c in report.checks)} checks passed, "
           f"{len(failed)} failed{' (' + ', '.join(failed) + ')' if failed else ''}, "
           f"{sum(c.status == SKIPPED for c in report.checks)} skipped.")


def run_checks(settings: DoctorSettings, report: DoctorReport, device: torch.device, sizes: Sizes) -> Iterator[str]:
    """The correctness checks, each added to ``report`` and yielded as a line."""
    yield ""
    yield f"Checks on {describe_device(device)}"
    check_config = preset_config(sizes.check_preset, sizes.check_size)
    check_batch = min(sizes.batch_size, 8)
    for make in (lambda: check_bf16_loss(check_config, device, check_batch),
                 lambda: check_channels_last(check_config, device, check_batch),
                 lambda: check_compiled(check_config, device, check_batch),
                 lambda: check_two_processes("nccl", settings.quick),
                 lambda: check_two_processes("gloo", settings.quick or device.type == "cuda")):
        check = make()
        if check.name.endswith("GLOO DDP") and device.type == "cuda":
            check.detail = "the CPU's path; on a GPU machine the NCCL check stands for it"
        report.checks.append(check)
        yield f"  {check.status:8s} {check.name}: {check.detail}"


def measure(report: DoctorReport, name: str, unit: str, function: Callable[[], float | None],
            detail: str = "") -> Iterator[str]:
    """Run one measurement, add it to ``report`` and yield its line; a failure is a result, not the end of the run."""
    try:
        value = function()
    except Exception as error:  # noqa: BLE001 (a failed option is a result, not the end of the run)
        first_line = str(error).splitlines()[0][:200] if str(error) else ""
        value, detail = None, f"failed: {type(error).__name__}: {first_line}"
    report.measurements.append(Measurement(name, value, unit, detail))
    shown = f"{value:,.1f} {unit}" if value is not None else "-"
    yield f"  {name:48s} {shown}{'  ' + detail if detail else ''}"


def measure_throughput(report: DoctorReport, device: torch.device, sizes: Sizes,
                       precisions: list[bool]) -> Iterator[str]:
    """Training and sampling speed of the presets, in each precision."""
    yield ""
    yield f"Throughput on {describe_device(device)}"
    for preset in sizes.presets:
        config = preset_config(preset, sizes.image_size)
        for bf16 in precisions:
            label = f"train {preset} batch {sizes.batch_size} {'bf16' if bf16 else 'fp32'}"
            yield from measure(report, label, "images/s", lambda config=config, bf16=bf16: training_images_per_second(
                config, device, sizes.batch_size, bf16, sizes))
    sample_config = preset_config(sizes.presets[-1], sizes.image_size)
    sample_batch = min(sizes.batch_size, 16)
    for sampler in ("ddpm", "ddim"):
        for bf16 in precisions:
            label = f"sample {sampler.upper()} {sizes.presets[-1]} batch {sample_batch} {'bf16' if bf16 else 'fp32'}"
            yield from measure(report, label, "image-steps/s",
                               lambda sampler=sampler, bf16=bf16: sampling_image_steps_per_second(
                                   sample_config, device, sample_batch, sampler, sizes, bf16=bf16))


def measure_gpu_options(report: DoctorReport, device: torch.device, sizes: Sizes, native_bf16: bool) -> Iterator[str]:
    """What each GPU speed option gains, by training or sampling without it (skipped without a GPU)."""
    yield ""
    yield "GPU speed options"
    if device.type != "cuda":
        report.measurements.append(Measurement("GPU speed options", None, "", "skipped: no GPU"))
        yield "  skipped: no GPU (fused Adam, cudnn.benchmark, channels_last, bf16 cast, CUDA graphs)"
        return
    config = preset_config(sizes.presets[0], sizes.image_size)
    sample_config = preset_config(sizes.presets[-1], sizes.image_size)
    sample_batch = min(sizes.batch_size, 16)
    bf16 = native_bf16
    yield from measure(report, "train, Adam foreach (not fused)", "images/s", lambda: training_images_per_second(
        config, device, sizes.batch_size, bf16, sizes, fused=False))
    yield from measure(report, "train, NCHW (not channels_last)", "images/s", lambda: training_images_per_second(
        config, device, sizes.batch_size, bf16, sizes, channels_last=False))
    torch.backends.cudnn.benchmark = False
    yield from measure(report, "train, cudnn.benchmark off", "images/s", lambda: training_images_per_second(
        config, device, sizes.batch_size, bf16, sizes))
    torch.backends.cudnn.benchmark = True
    if native_bf16:
        yield from measure(report, f"sample DDIM {sizes.presets[-1]}, model cast to bf16", "image-steps/s",
                           lambda: sampling_image_steps_per_second(sample_config, device, sample_batch, "ddim",
                                                                   sizes, mode="cast"))
    yield from measure(report, f"sample DDIM {sizes.presets[-1]}, CUDA graphs (compile)", "image-steps/s",
                       lambda: sampling_image_steps_per_second(sample_config, device, sample_batch, "ddim",
                                                               sizes, mode="graphs"))


def measure_memory(settings: DoctorSettings, report: DoctorReport, device: torch.device, sizes: Sizes,
                   precisions: list[bool]) -> Iterator[str]:
    """The measured peak of training memory against the estimate, in each precision (skipped with --quick)."""
    yield ""
    yield "Memory"
    memory_config = preset_config(sizes.presets[0], sizes.image_size)
    for bf16 in precisions:
        estimate = estimate_training_memory(memory_config, sizes.batch_size, bf16).total_bytes
        if settings.quick:
            report.measurements.append(Measurement("peak training", None, "MiB", "skipped: not measured with --quick"))
            yield f"  peak training: skipped with --quick (estimate {estimate / 2**20:,.0f} MiB)"
            continue
        measured = measure_training_peak(memory_config, sizes.batch_size, bf16, device)
        ratio = f"estimate {estimate / 2**20:,.0f} MiB, {estimate / measured:.2f} x the peak" if measured else ""
        yield from measure(report, f"peak training {sizes.presets[0]} batch {sizes.batch_size} "
                                   f"{'bf16' if bf16 else 'fp32'}",
                           "MiB", lambda measured=measured: measured / 2**20 if measured else None, ratio)

"""Generating images from a saved model as an iterator of events, with the trajectory kept for the timeline.

``run_sampling(request)`` yields the sampler's ``SampleStep`` per reverse step and ends with a
``SamplingResult``: the final images, and the trajectory frames (x_t and x0_hat as uint8 on
the CPU) that fit a memory budget. The last ``DETAIL_STEPS`` steps, where the image forms,
are always kept; earlier ones are kept at a stride when the budget requires it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_studio.core.data.folders import from_model_range
from ddpm_studio.core.diffusion.dpm_solver import DEFAULT_SPACING, SPACINGS
from ddpm_studio.core.diffusion.process import SAMPLERS, VARIANCES, SampleStep
from ddpm_studio.core.diffusion.samplers import sample_progressive
from ddpm_studio.core.errors import SettingError, check_choice
from ddpm_studio.core.model.store import LoadedModel, load_model
from ddpm_studio.core.sampling.guidance import check_guidance, class_names, guided_eps_model
from ddpm_studio.core.sampling.imaging import make_grid, make_strip, save_animation, save_png, to_hwc, to_uint8
from ddpm_studio.core.system.devices import PRECISIONS, choose_device, use_bf16

DETAIL_STEPS = 50
TRAJECTORY_KINDS = ("gif", "webp", "strip")  # how ``export_trajectory`` can save a trajectory
DEFAULT_TRAJECTORY_BUDGET = 512 * 2**20


@dataclass
class SamplingRequest:
    """What to generate. ``x_start``/``start_t`` turn it into "denoise from t" of given images."""

    model_path: Path | None = None
    num_images: int = 16
    seed: int = 0
    sampler: str = "ddpm"
    steps: int = 50  # DDIM and DPM-Solver++ (model calls)
    eta: float = 0.0  # DDIM only
    spacing: str = DEFAULT_SPACING  # DPM-Solver++ only: "logsnr" (uniform in log-SNR) or diffusers' "linspace"
    variance: str = "fixed_large"  # DDPM only; "learned" for a model that learned it
    ddpm_steps: int | None = None  # DDPM only: None, every step; K, the process respaced to K steps
    clip: bool = True
    device: str = "auto"
    precision: str = "auto"  # "auto": bf16 autocast where the device has it natively
    keep_trajectory_of: list[int] | None = None  # image indices to record; None: all
    trajectory_budget_bytes: int = DEFAULT_TRAJECTORY_BUDGET
    x_start: torch.Tensor | None = None  # model range, (N, C, H, W)
    start_t: int | None = None  # array index of x_start's timestep
    classes: list[int] | None = None  # class-conditional models: one label per image (or one for all); None: null
    guidance: float = 0.0  # classifier-free guidance weight w; 0: plain conditional sampling

    def validate(self) -> None:
        if self.num_images < 1 or self.num_images > 4096:
            raise SettingError(f"The number of images must be between 1 and 4096, not {self.num_images}.")
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("variance", self.variance, VARIANCES)
        if self.sampler == "ddim" and self.steps < 1:
            raise SettingError(f"DDIM needs at least 1 step, not {self.steps}.")
        if self.sampler == "dpm-solver++" and self.steps < 1:
            raise SettingError(f"DPM-Solver++ needs at least 1 step, not {self.steps}.")
        check_choice("DPM-Solver++ spacing", self.spacing, SPACINGS)
        if self.sampler == "ddpm" and self.ddpm_steps is not None and self.ddpm_steps < 1:
            raise SettingError(f"DDPM needs at least 1 step, not {self.ddpm_steps}.")
        if not 0.0 <= self.eta <= 1.0:
            raise SettingError(f"DDIM's eta must lie in [0, 1], not {self.eta}.")
        check_choice("precision", self.precision, PRECISIONS)
        check_guidance(self.guidance)
        if self.classes is not None and len(self.classes) not in (1, self.num_images):
            raise SettingError(f"Give one class for all images or one per image, not {len(self.classes)}.")

    def describe(self) -> str:
        if self.sampler == "ddim":
            return f"DDIM {self.steps} steps, eta {self.eta:g}"
        if self.sampler == "dpm-solver++":
            return f"DPM-Solver++ {self.steps} steps" + (", linspace spacing" if self.spacing == "linspace" else "")
        steps = "every step" if self.ddpm_steps is None else f"{self.ddpm_steps} respaced steps"
        return f"DDPM {steps}, {self.variance.replace('_', ' ')} variance"


@dataclass
class Trajectory:
    """Recorded frames. ``timesteps[k]`` is the paper's t of frame k (T..1, then 0 for the final image)."""

    timesteps: list[int]
    image_indices: list[int]
    x_t: list[torch.Tensor] = field(default_factory=list)  # each uint8 (len(image_indices), C, H, W)
    x0_hat: list[torch.Tensor] = field(default_factory=list)

    def frame(self, frame_index: int, image: int) -> tuple[np.ndarray, np.ndarray]:
        """x_t and x0_hat of ``image`` (an index into the batch) at frame ``frame_index``, as (H, W[, C]) uint8."""
        slot = self.image_indices.index(image)
        return to_hwc(self.x_t[frame_index][slot]), to_hwc(self.x0_hat[frame_index][slot])

    def __len__(self) -> int:
        return len(self.timesteps)


@dataclass
class SamplingResult:
    images: torch.Tensor  # uint8 (N, C, H, W)
    trajectory: Trajectory
    metadata: dict[str, str]
    request: SamplingRequest


def frames_to_keep(
    num_steps: int, bytes_per_frame: int, budget_bytes: int, detail_steps: int = DETAIL_STEPS
) -> set[int]:
    """Which step numbers (0..num_steps-1) to record: the last ``detail_steps`` always, the rest at a stride."""
    affordable = max(budget_bytes // max(bytes_per_frame, 1), detail_steps + 2)
    if num_steps <= affordable:
        return set(range(num_steps))
    detail_start = max(num_steps - detail_steps, 0)
    early_budget = affordable - (num_steps - detail_start)
    stride = max(1, -(-detail_start // max(early_budget, 1)))
    return set(range(0, detail_start, stride)) | set(range(detail_start, num_steps))


class FrameCopier:
    """Records trajectory frames as uint8, kept on the device and copied to the CPU in chunks.

    A copy to the CPU makes the host wait for the GPU; one per chunk of frames, instead of two per
    step, keeps the GPU queue full while sampling.
    """

    CHUNK_BYTES = 64 * 2**20

    def __init__(self, trajectory: Trajectory, recorded: list[int], device: torch.device, bytes_per_frame: int):
        self.trajectory = trajectory
        self.index = torch.tensor(recorded, dtype=torch.long, device=device)  # copied to the device once
        self.frames_per_chunk = 1 if device.type == "cpu" else max(1, self.CHUNK_BYTES // max(bytes_per_frame, 1))
        self.pending: list[torch.Tensor] = []

    def add(self, x_t: torch.Tensor, x0_hat: torch.Tensor) -> None:
        pair = torch.stack([x_t.index_select(0, self.index), x0_hat.index_select(0, self.index)])
        self.pending.append(from_model_range(pair))
        if len(self.pending) >= self.frames_per_chunk:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        chunk = torch.stack(self.pending).cpu()  # (frames, 2, recorded, C, H, W)
        self.pending = []
        for x_t, x0_hat in chunk:
            self.trajectory.x_t.append(x_t)
            self.trajectory.x0_hat.append(x0_hat)


def sampling_metadata(model: LoadedModel, request: SamplingRequest) -> dict[str, str]:
    metadata = {
        "Software": "DDPM Studio",
        "model": model.info.name,
        "model_step": str(model.info.step),
        "seed": str(request.seed),
        "sampler": request.sampler,
        "clip": str(request.clip),
    }
    if request.sampler == "ddim":
        metadata.update(steps=str(request.steps), eta=f"{request.eta:g}")
    elif request.sampler == "dpm-solver++":
        metadata.update(steps=str(request.steps), spacing=request.spacing)
    else:
        metadata.update(steps=str(min(request.ddpm_steps or math.inf, model.diffusion.num_timesteps)),
                        variance=request.variance)
    if request.classes is not None:
        names = class_names(model.info)
        labels = sorted(set(request.classes))
        metadata["class"] = ",".join(names[c] if c < len(names) else "null" for c in labels)
        metadata["class_index"] = ",".join(str(c) for c in labels)
        metadata["guidance"] = f"{request.guidance:g}"
    if request.start_t is not None:
        metadata["start_t"] = str(request.start_t + 1)
    return metadata


def run_sampling(request: SamplingRequest, model: LoadedModel | None = None):
    """Yield the sampler's ``SampleStep`` for each reverse step (tensors on the device, model range: convert
    only what is shown), then one ``SamplingResult``."""
    request.validate()
    device = choose_device(request.device)
    model = model or load_model(request.model_path, device)
    if request.sampler == "ddpm" and request.variance == "learned" and not model.info.unet.learned_variance:
        raise SettingError(f"{model.info.name} did not learn its variance; sample it with fixed_large or fixed_small.")
    if next(model.unet.parameters()).device != device:
        model.unet.to(device)
        model.diffusion.schedule.to(device)
    diffusion = model.diffusion
    shape = (request.num_images, *model.image_shape)
    generator = torch.Generator(device=device).manual_seed(request.seed)
    options = dict(generator=generator, clip=request.clip, device=device, x_start=request.x_start,
                   start_t=request.start_t)
    if request.sampler == "ddim":
        first_t = diffusion.num_timesteps - 1 if request.start_t is None else request.start_t
        options.update(num_steps=min(request.steps, first_t + 1), eta=request.eta)
    elif request.sampler == "dpm-solver++":
        first_t = diffusion.num_timesteps - 1 if request.start_t is None else request.start_t
        options.update(num_steps=min(request.steps, first_t + 1), spacing=request.spacing)
    else:
        options.update(variance=request.variance)
        if request.ddpm_steps is not None:
            first_t = diffusion.num_timesteps - 1 if request.start_t is None else request.start_t
            options.update(num_steps=min(request.ddpm_steps, first_t + 1))
    if request.classes is not None and not model.info.unet.num_classes:
        raise SettingError(f"{model.info.name} is not class-conditional; sample it without a class.")
    classes = None if request.classes is None else torch.tensor(request.classes, dtype=torch.long, device=device)
    eps_model = guided_eps_model(model.unet, classes, request.guidance)
    steps = sample_progressive(diffusion, eps_model, shape, request.sampler, **options)

    recorded = (list(range(request.num_images)) if request.keep_trajectory_of is None
                else list(request.keep_trajectory_of))
    bytes_per_frame = 2 * len(recorded) * int(np.prod(model.image_shape))
    trajectory = Trajectory([], recorded)
    frames = FrameCopier(trajectory, recorded, device, bytes_per_frame)
    keep: set[int] | None = None
    bf16 = use_bf16(request.precision, device)
    final: SampleStep | None = None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for sample_step in steps:
            if keep is None:
                keep = frames_to_keep(sample_step.num_steps, bytes_per_frame, request.trajectory_budget_bytes)
            if recorded and sample_step.step in keep:
                trajectory.timesteps.append(sample_step.t + 1)
                frames.add(sample_step.x_t, sample_step.x0_hat)
            final = sample_step
            yield sample_step
    frames.flush()
    images = to_uint8(final.x_prev)
    if recorded:
        trajectory.timesteps.append(0)
        trajectory.x_t.append(images[recorded])
        trajectory.x0_hat.append(images[recorded])
    yield SamplingResult(images, trajectory, sampling_metadata(model, request), request)


def sample_images(request: SamplingRequest, model: LoadedModel | None = None) -> SamplingResult:
    """Run ``run_sampling`` to the end."""
    request.keep_trajectory_of = request.keep_trajectory_of if request.keep_trajectory_of is not None else []
    result = None
    for event in run_sampling(request, model):
        result = event
    return result


def image_class_metadata(result: SamplingResult, index: int) -> dict[str, str]:
    """The class of image ``index`` alone (the run's metadata lists every class of the batch)."""
    classes = result.request.classes
    if classes is None or len(classes) == 1:
        return {}
    names = result.metadata["class"].split(",")
    indices = result.metadata["class_index"].split(",")
    label = str(classes[index])
    return {"class": names[indices.index(label)], "class_index": label}


def sample_file_stem(result: SamplingResult) -> str:
    meta = result.metadata
    return f"{meta['model']}_{meta['sampler']}{meta['steps']}_seed{meta['seed']}"


def save_samples(result: SamplingResult, out_dir: Path | str, indices: list[int] | None = None,
                 columns: int | None = None) -> list[Path]:
    """One PNG per image (text chunks: model, seed, sampler, steps...) and a grid; returns the paths, grid last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = list(range(len(result.images))) if indices is None else indices
    stem = sample_file_stem(result)
    paths = []
    for index in indices:
        metadata = {**result.metadata, "index": str(index), **image_class_metadata(result, index)}
        paths.append(save_png(out_dir / f"{stem}_{index:03d}.png", result.images[index], metadata))
    grid = make_grid(result.images[indices], columns)
    grid_metadata = {**result.metadata, "images": str(len(indices))}
    if columns and len(result.request.classes or []) > 1:  # one row a class: name them, top to bottom
        firsts = indices[::columns]
        grid_metadata["rows"] = ",".join(image_class_metadata(result, index)["class"] for index in firsts)
    paths.append(save_png(out_dir / f"{stem}_grid.png", grid, grid_metadata))
    return paths


def trajectory_frames(result: SamplingResult, image: int, max_frames: int | None = None) -> list[np.ndarray]:
    """x_t and x0_hat of one image side by side, frame by frame (optionally thinned, last frame kept)."""
    trajectory = result.trajectory
    chosen = list(range(len(trajectory)))
    if max_frames and len(chosen) > max_frames:
        chosen = sorted(set(np.linspace(0, len(chosen) - 1, max_frames).round().astype(int).tolist()))
    frames = []
    for frame_index in chosen:
        x_t, x0_hat = trajectory.frame(frame_index, image)
        frames.append(make_strip([x_t, x0_hat], padding=1))
    return frames


def export_trajectory(result: SamplingResult, image: int, path: Path | str, kind: str = "gif", scale: int = 4) -> Path:
    """Save one image's trajectory as an animation ("gif", "webp") or a strip of x_t frames ("strip")."""
    path = Path(path)
    if image not in result.trajectory.image_indices:
        raise SettingError(f"The trajectory of image {image} was not recorded.")
    if kind == "strip":
        trajectory = result.trajectory
        picks = sorted(set(np.linspace(0, len(trajectory) - 1, 10).round().astype(int).tolist()))
        top = [trajectory.frame(k, image)[0] for k in picks]
        bottom = [trajectory.frame(k, image)[1] for k in picks]
        strip = np.concatenate([make_strip(top), make_strip(bottom)], axis=0)
        timesteps = ",".join(str(trajectory.timesteps[k]) for k in picks)
        image_out = Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST)
        return save_png(path.with_suffix(".png"), image_out, {**result.metadata, "timesteps": timesteps,
                                                             "rows": "x_t, x0_hat"})
    if kind not in TRAJECTORY_KINDS:
        raise SettingError(f"Export the trajectory as gif, webp or strip, not '{kind}'.")
    frames = trajectory_frames(result, image, max_frames=200)
    return save_animation(path.with_suffix(f".{kind}"), frames, duration_ms=40, scale=scale, metadata=result.metadata)

"""Interpolating two pictures in x_t with the noise fixed (the paper's Figs. 8 and 9).

Both pictures are encoded with one noise draw, x_t = q(x_0, t) and x_t' = q(x_0', t); each mix
(1 - lambda) x_t + lambda x_t' runs the reverse process from t with one reverse-noise stream shared by every lambda,
so the strip changes only because lambda does. At t = 0 the strip is the pixel blend; at t = T, a novel sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_studio.core.data.folders import SkipImage, _decode, to_model_range
from ddpm_studio.core.diffusion.dpm_solver import DEFAULT_STEPS as SOLVER_STEPS
from ddpm_studio.core.diffusion.process import SAMPLERS, VARIANCES, SampleStep
from ddpm_studio.core.errors import SettingError, check_choice
from ddpm_studio.core.model.store import LoadedModel, load_model
from ddpm_studio.core.sampling.imaging import make_strip, save_animation, save_png, to_hwc, to_pil, upscale_nearest
from ddpm_studio.core.sampling.job import SamplingRequest, SamplingResult, Trajectory, run_sampling
from ddpm_studio.core.system.devices import PRECISIONS, choose_device

DEFAULT_DDIM_STEPS = 50


@dataclass
class InterpolationRequest:
    model_path: Path
    a: np.ndarray  # uint8 HWC (or HW), any size; resized, centre-cropped and converted as training does
    b: np.ndarray
    t: int = 500  # paper t in 0..T
    steps: int = 9  # lambda values, evenly from 0 to 1 inclusive
    seed: int = 0  # one draw for q(x_t | x_0) shared by a and b, one reverse-noise stream shared by every lambda
    sampler: str = "ddpm"
    sampler_steps: int | None = None
    eta: float = 0.0
    variance: str | None = None
    clip: bool = True
    device: str = "auto"
    precision: str = "auto"
    keep_trajectories: bool = True  # each frame's trajectory (uint8), so that a frame opens on the timeline

    def validate(self, num_timesteps: int) -> None:
        if not 0 <= self.t <= num_timesteps:
            raise SettingError(f"The interpolation step t must lie in 0..{num_timesteps} (the model's T), "
                               f"not {self.t}.")
        if self.steps < 2:
            raise SettingError(f"An interpolation needs at least 2 values of lambda, not {self.steps}.")
        check_choice("sampler", self.sampler, SAMPLERS)
        if self.variance is not None:
            check_choice("variance", self.variance, VARIANCES)
        if self.sampler_steps is not None and self.sampler_steps < 1:
            raise SettingError(f"The sampler needs at least 1 step, not {self.sampler_steps}.")
        if not 0.0 <= self.eta <= 1.0:
            raise SettingError(f"DDIM's eta must lie in [0, 1], not {self.eta}.")
        check_choice("precision", self.precision, PRECISIONS)


@dataclass
class InterpolationProgress:
    done: int
    total: int


@dataclass
class InterpolationResult:
    lambdas: list[float]
    frames: list[np.ndarray]  # uint8 HWC; frames[0] and frames[-1] are the reconstructions of a and b
    sources: tuple[np.ndarray, np.ndarray]  # a and b as the model sees them (uint8 HWC)
    t: int
    metadata: dict[str, str]
    sampling: SamplingResult | None  # one image per lambda, with trajectories; None at t = 0 (no model call)


def as_model_sees_it(picture: np.ndarray, image_size: int, channels: int, name: str = "The image") -> np.ndarray:
    """A uint8 picture (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) as training sees a file: transparency over white,
    grey to RGB (or RGB to grey) as the model needs, centre square, resized; uint8 (C, S, S)."""
    array = np.asarray(picture)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise SettingError(f"{name} must be a grey, RGB or RGBA picture of 8-bit pixels, not an array of shape "
                           f"{array.shape} ({array.dtype}).")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    try:
        decoded, _ = _decode(buffer.getvalue(), image_size, channels)  # exactly the training's decoding
    except SkipImage as error:
        raise SettingError(f"{name} cannot be used with this {image_size} px model: {error.reason}.") from None
    decoded = np.asarray(decoded, dtype=np.uint8)
    return np.ascontiguousarray(decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1))


def lambdas_for(steps: int) -> list[float]:
    return [float(value) for value in np.linspace(0.0, 1.0, steps)]


def pixel_blend(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """(1 - lambda) a + lambda b of two uint8 pictures, rounded: the interpolation at t = 0."""
    return np.round((1.0 - lam) * a.astype(np.float64) + lam * b.astype(np.float64)).astype(np.uint8)


def reverse_seed(seed: int) -> int:
    """The reverse-noise stream's seed: not ``seed`` itself, whose first draw is the encoding noise."""
    digest = hashlib.sha256(f"ddpm-studio interpolation reverse {seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def encode_pair(model: LoadedModel, a: np.ndarray, b: np.ndarray, t: int, seed: int) -> tuple[torch.Tensor, ...]:
    """x_t = q(a, t) and x_t' = q(b, t) (paper t >= 1) with one noise draw from ``seed``; (1, C, H, W) each."""
    device = next(model.unet.parameters()).device
    noise = torch.randn((1, *model.image_shape), generator=torch.Generator().manual_seed(seed)).to(device)
    index = torch.full((1,), t - 1, dtype=torch.long, device=device)
    encoded = []
    for picture in (a, b):
        x0 = to_model_range(torch.from_numpy(np.ascontiguousarray(picture))[None]).to(device)  # the usual layout
        encoded.append(model.diffusion.q_sample(x0, index, noise))
    return tuple(encoded)


def frame_request(request: InterpolationRequest, model: LoadedModel, x_start: torch.Tensor) -> SamplingRequest:
    """One lambda's "denoise from t": the same reverse seed for every lambda, hence the same reverse noise."""
    default_steps = SOLVER_STEPS if request.sampler == "dpm-solver++" else DEFAULT_DDIM_STEPS
    return SamplingRequest(
        model_path=request.model_path, num_images=1, seed=reverse_seed(request.seed), sampler=request.sampler,
        steps=request.sampler_steps or default_steps, eta=request.eta,
        variance=request.variance or model.info.sampling_defaults["variance"],
        ddpm_steps=request.sampler_steps if request.sampler == "ddpm" else None, clip=request.clip,
        device=request.device, precision=request.precision, keep_trajectory_of=[0] if request.keep_trajectories else [],
        x_start=x_start, start_t=request.t - 1)


def merged(results: list[SamplingResult], starts: list[torch.Tensor]) -> SamplingResult:
    """The runs of one image each as one batch, image i for lambda i, so that the timeline opens any frame."""
    first = results[0]
    kept = bool(first.trajectory.image_indices)
    trajectory = Trajectory(list(first.trajectory.timesteps) if kept else [], list(range(len(results))) if kept else [])
    if kept:
        for frame in range(len(first.trajectory)):
            trajectory.x_t.append(torch.cat([result.trajectory.x_t[frame] for result in results]))
            trajectory.x0_hat.append(torch.cat([result.trajectory.x0_hat[frame] for result in results]))
    request = dataclasses.replace(first.request, num_images=len(results), x_start=torch.cat(starts).cpu(),
                                  keep_trajectory_of=trajectory.image_indices)
    return SamplingResult(torch.cat([result.images for result in results]), trajectory, first.metadata, request)


def run_interpolation(request: InterpolationRequest,
                      model: LoadedModel | None = None) -> Iterator[InterpolationProgress | InterpolationResult]:
    """Yield ``InterpolationProgress`` per model call, then one ``InterpolationResult``."""
    device = choose_device(request.device)
    model = model or load_model(request.model_path, device)
    if next(model.unet.parameters()).device != device:
        model.unet.to(device)
        model.diffusion.schedule.to(device)
    request.validate(model.diffusion.num_timesteps)
    channels, size, _ = model.image_shape
    a = as_model_sees_it(request.a, size, channels, "Image A")
    b = as_model_sees_it(request.b, size, channels, "Image B")
    lambdas = lambdas_for(request.steps)
    sources = (to_hwc(a), to_hwc(b))
    metadata = {"Software": "DDPM Studio", "model": model.info.name, "model_step": str(model.info.step),
                "seed": str(request.seed), "sampler": request.sampler, "experiment": "interpolation",
                "t": str(request.t)}
    if request.t == 0:
        frames = [to_hwc(pixel_blend(a, b, lam)) for lam in lambdas]
        yield InterpolationResult(lambdas, frames, sources, 0, metadata, None)
        return
    x_a, x_b = encode_pair(model, a, b, request.t, request.seed)
    starts = [(1.0 - lam) * x_a + lam * x_b for lam in lambdas]
    results, done, total = [], 0, None
    for x_start in starts:
        for event in run_sampling(frame_request(request, model, x_start), model):
            if isinstance(event, SampleStep):
                total = total or event.num_steps * len(starts)
                done += 1
                yield InterpolationProgress(done, total)
            else:
                results.append(event)
    sampling = merged(results, starts)
    metadata = {**sampling.metadata, **metadata, "reverse_seed": str(reverse_seed(request.seed))}
    frames = [to_hwc(image) for image in sampling.images]
    yield InterpolationResult(lambdas, frames, sources, request.t, metadata, sampling)


def export_interpolation(result: InterpolationResult, path: Path | str, kind: str = "strip", scale: int = 1,
                         frame_ms: int = 200) -> Path:
    """Save ``result``'s frames as one strip PNG ("strip") or as a GIF over lambda, from A to B and back ("gif"),
    enlarged ``scale`` times, with the run's settings and the lambda values in the metadata; returns the file."""
    metadata = {**result.metadata, "lambdas": ",".join(f"{lam:g}" for lam in result.lambdas)}
    if kind == "strip":
        strip = upscale_nearest(to_pil(make_strip(result.frames)), scale)
        return save_png(Path(path).with_suffix(".png"), strip, metadata)
    check_choice("interpolation export", kind, ("strip", "gif"))
    there_and_back = [*result.frames, *result.frames[-2:0:-1]]
    return save_animation(Path(path).with_suffix(".gif"), there_and_back, duration_ms=frame_ms, scale=scale,
                          final_hold_ms=frame_ms, metadata=metadata)

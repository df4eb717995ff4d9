"""Branching from a shared x_t (the paper's Fig. 7): how much of the final image is already decided at step t.

One reverse chain runs from x_T (exactly the chain of image ``image`` of a Generate batch). At each branch step t it
is split into N continuations to x_0, each with reverse noise of its own, drawn from ``seed_for(seed, t, k)``. The
spread of the N finals against that of unrelated samples says how much is decided at t.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddpm_studio.core.diffusion.process import SAMPLERS, VARIANCES, EpsModel, GaussianDiffusion, SampleStep
from ddpm_studio.core.diffusion.samplers import sample_progressive
from ddpm_studio.core.errors import SettingError, check_choice
from ddpm_studio.core.model.store import LoadedModel, load_model
from ddpm_studio.core.sampling.guidance import guided_eps_model
from ddpm_studio.core.sampling.imaging import to_hwc, to_uint8
from ddpm_studio.core.sampling.job import SamplingRequest, run_sampling, sampling_metadata
from ddpm_studio.core.system.devices import PRECISIONS, choose_device, use_bf16

DEFAULT_DDIM_STEPS = 50
REFERENCE_CALLS = 20  # DPM-Solver++ model calls per reference sample
DETERMINISTIC = "every continuation would be the same image; choose DDPM or DDIM with eta > 0"


@dataclass
class BranchRequest:
    model_path: Path
    at: list[int]  # branch steps, paper t, strictly decreasing, each in 1..T
    num: int = 8  # continuations per step
    seed: int = 0  # the shared chain's seed (its x_T and its reverse noise)
    sampler: str = "ddpm"  # "ddpm" or "ddim" (eta > 0); "dpm-solver++" is refused (deterministic)
    steps: int | None = None  # DDPM: None = every timestep, else respaced; DDIM: number of steps (default 50)
    eta: float = 1.0  # DDIM only; 0 is refused
    variance: str | None = None  # DDPM: None = the model's default
    clip: bool = True
    device: str = "auto"
    precision: str = "auto"
    image: int = 0  # which image of a Generate batch of ``batch_size`` images from ``seed`` the shared chain is
    batch_size: int = 1
    classes: list[int] | None = None  # class-conditional: one label for all, or one per image of the batch
    guidance: float = 0.0  # classifier-free guidance weight w

    def image_class(self) -> list[int] | None:
        """The shared chain's label, which its continuations and the unrelated reference samples keep."""
        if self.classes is None:
            return None
        return [self.classes[self.image]] if len(self.classes) > 1 else list(self.classes)

    def validate(self, num_timesteps: int) -> None:
        check_choice("sampler", self.sampler, SAMPLERS)
        if self.sampler == "dpm-solver++":
            raise SettingError(f"DPM-Solver++ is deterministic: {DETERMINISTIC}.")
        if self.sampler == "ddim" and self.eta == 0:
            raise SettingError(f"DDIM with eta 0 is deterministic: {DETERMINISTIC}.")
        if not 0.0 <= self.eta <= 1.0:
            raise SettingError(f"DDIM's eta must lie in [0, 1], not {self.eta}.")
        if self.variance is not None:
            check_choice("variance", self.variance, VARIANCES)
        check_choice("precision", self.precision, PRECISIONS)
        if not self.at:
            raise SettingError("Give at least one step t to branch at.")
        outside = [t for t in self.at if not 1 <= t <= num_timesteps]
        if outside:
            raise SettingError(f"Branch steps must lie in 1..{num_timesteps} (the model's T), not {outside[0]}.")
        if any(later >= earlier for earlier, later in zip(self.at, self.at[1:])):
            raise SettingError(f"Branch steps must be strictly decreasing, like 1000,750,500,250; not {self.at}.")
        if self.num < 1:
            raise SettingError(f"The number of continuations must be at least 1, not {self.num}.")
        if self.steps is not None and self.steps < 1:
            raise SettingError(f"The sampler needs at least 1 step, not {self.steps}.")
        if self.batch_size < 1 or not 0 <= self.image < self.batch_size:
            raise SettingError(f"Image {self.image} is not in a batch of {self.batch_size}.")


@dataclass
class BranchProgress:
    done: int  # model calls done
    total: int
    what: str  # e.g. "chain to t = 750" or "t = 750: continuation 3 of 8"


@dataclass
class BranchRow:
    t: int  # paper t
    x_t: np.ndarray  # the shared x_t, uint8 HWC
    x0_hat: np.ndarray  # the model's x0_hat at that x_t, uint8 HWC
    finals: list[np.ndarray]  # the N finals, uint8 HWC; continuation k's noise comes from seed_for(seed, t, k)
    spread: float  # mean over pixels of the per-pixel std across the finals (0-255 units)
    decided: float  # 1 - spread / reference_spread, clipped to [0, 1]


@dataclass
class BranchResult:
    rows: list[BranchRow]
    reference_spread: float
    metadata: dict[str, str] = field(default_factory=dict)


def seed_for(seed: int, t: int, k: int) -> int:
    """The seed of continuation ``k`` branched at paper step ``t`` of the chain of ``seed``: a hash, so that no two
    (seed, t, k) share a noise stream by accident (seed + t + k would)."""
    digest = hashlib.sha256(f"ddpm-studio branch {seed} {t} {k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def fig7_steps(num_timesteps: int) -> list[int]:
    """The paper's 1000, 750, 500, 250, scaled to the model's T: T, 3T/4, T/2, T/4 (distinct, at least 1)."""
    steps = [max(1, round(num_timesteps * fraction)) for fraction in (1.0, 0.75, 0.5, 0.25)]
    return list(dict.fromkeys(steps))


def spread_of(finals: torch.Tensor) -> float:
    """Mean over pixels of the per-pixel standard deviation across images (N, C, H, W) uint8, in 0-255 units."""
    if finals.shape[0] < 2:
        return 0.0
    return float(finals.double().std(dim=0).mean())


def visited_timesteps(diffusion: GaussianDiffusion, sampler: str, steps: int | None) -> list[int]:
    """The array indices the shared chain visits, from T-1 down, for these sampler settings (as Generate runs)."""
    last = diffusion.num_timesteps - 1
    if sampler == "ddpm" and steps is None:
        return list(range(last, -1, -1))
    count = min(steps or DEFAULT_DDIM_STEPS, diffusion.num_timesteps)
    return diffusion.ddim_timesteps(count, last)


def branch_indices(request: BranchRequest, diffusion: GaussianDiffusion) -> list[int]:
    """Each requested paper t as the nearest array index the chain visits (t itself when every step is visited)."""
    visited = visited_timesteps(diffusion, request.sampler, request.steps)
    chosen = [min(visited, key=lambda index: (abs(index - (t - 1)), -index)) for t in request.at]
    return list(dict.fromkeys(chosen))


def continuation_options(request: BranchRequest, diffusion: GaussianDiffusion, index: int, variance: str) -> dict:
    """The sampler's options for a continuation from array index ``index``: as many steps as the chain has left."""
    remaining = sum(1 for visited in visited_timesteps(diffusion, request.sampler, request.steps) if visited <= index)
    if request.sampler == "ddim":
        return {"num_steps": remaining, "eta": request.eta, "clip": request.clip}
    options = {"variance": variance, "clip": request.clip}
    if request.steps is not None:
        options["num_steps"] = remaining
    return options


def continue_from(diffusion: GaussianDiffusion, eps_model: EpsModel, x_t: torch.Tensor, index: int, seed: int,
                  sampler: str, **options) -> Iterator[SampleStep]:
    """The reverse process from ``x_t`` (model range, (1, C, H, W)) at array index ``index`` to x_0, with reverse
    noise from ``seed`` alone: one continuation."""
    generator = torch.Generator(device=x_t.device).manual_seed(seed)
    return sample_progressive(diffusion, eps_model, tuple(x_t.shape), sampler, generator=generator, x_start=x_t,
                              start_t=index, device=x_t.device, **options)


def chain_request(request: BranchRequest, variance: str) -> SamplingRequest:
    """The Generate run whose image ``request.image`` is the shared chain (the same seed, batch and sampler)."""
    return SamplingRequest(
        model_path=request.model_path, num_images=request.batch_size, seed=request.seed, sampler=request.sampler,
        steps=request.steps or DEFAULT_DDIM_STEPS, eta=request.eta, variance=variance,
        ddpm_steps=request.steps if request.sampler == "ddpm" else None, clip=request.clip, device=request.device,
        precision=request.precision, keep_trajectory_of=[], classes=request.classes, guidance=request.guidance)


def reference_request(request: BranchRequest, num_timesteps: int) -> SamplingRequest:
    """N unrelated samples: fresh x_T each, DPM-Solver++ in 20 calls (a normalizer needs the spread of the model's
    distribution, not one chain's exact images; 20 calls of N images cost less than one row)."""
    return SamplingRequest(
        model_path=request.model_path, num_images=request.num, seed=seed_for(request.seed, 0, 0),
        sampler="dpm-solver++", steps=min(REFERENCE_CALLS, num_timesteps), clip=request.clip, device=request.device,
        precision=request.precision, keep_trajectory_of=[], classes=request.image_class(), guidance=request.guidance)


def prepared_model(request: BranchRequest, model: LoadedModel | None) -> LoadedModel:
    device = choose_device(request.device)
    model = model or load_model(request.model_path, device)
    if next(model.unet.parameters()).device != device:
        model.unet.to(device)
        model.diffusion.schedule.to(device)
    return model


def run_branching(request: BranchRequest,
                  model: LoadedModel | None = None) -> Iterator[BranchProgress | BranchRow | BranchResult]:
    """Yield ``BranchProgress`` per model call, a ``BranchRow`` as each branch step's continuations finish, then
    one ``BranchResult``. Stopping (closing the iterator) keeps the rows already yielded."""
    model = prepared_model(request, model)
    diffusion = model.diffusion
    request.validate(diffusion.num_timesteps)
    variance = request.variance or model.info.sampling_defaults["variance"]
    indices = branch_indices(request, diffusion)
    visited = visited_timesteps(diffusion, request.sampler, request.steps)
    remaining = {index: sum(1 for v in visited if v <= index) for index in indices}
    reference = reference_request(request, diffusion.num_timesteps) if request.num > 1 else None
    total = (sum(1 for v in visited if v >= indices[-1]) + request.num * sum(remaining.values())
             + (reference.steps if reference else 0))
    done = 0
    reference_spread = 0.0
    if reference is not None:
        for event in run_sampling(reference, model):
            if isinstance(event, SampleStep):
                done += 1
                yield BranchProgress(done, total, "unrelated samples, for reference")
            else:
                reference_spread = spread_of(event.images)
    chain = chain_request(request, variance)
    rows: list[BranchRow] = []
    for step in run_sampling(chain, model):
        done += 1
        yield BranchProgress(done, total, f"chain to t = {indices[-1] + 1}")
        if step.t not in remaining:
            continue
        options = continuation_options(request, diffusion, step.t, variance)
        for event in branch_row(request, model, step, reference_spread, options):
            if isinstance(event, BranchRow):
                rows.append(event)
            else:
                done += 1
                event = BranchProgress(done, total, event)
            yield event
        if step.t == indices[-1]:
            break
    yield BranchResult(rows, reference_spread, branching_metadata(model, request, chain, rows))


def branch_row(request: BranchRequest, model: LoadedModel, step: SampleStep, reference_spread: float,
               options: dict) -> Iterator[str | BranchRow]:
    """The N continuations from the chain's ``step``: a line of progress per model call, then the row."""
    x_t = step.x_t[request.image : request.image + 1].clone()
    t = step.t + 1
    bf16 = use_bf16(request.precision, x_t.device)
    finals = []
    label = request.image_class()
    eps_model = guided_eps_model(model.unet, None if label is None else torch.tensor(label, device=x_t.device),
                                 request.guidance)
    for k in range(request.num):
        final = None
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=bf16):
            for continuation in continue_from(model.diffusion, eps_model, x_t, step.t, seed_for(request.seed, t, k),
                                              request.sampler, **options):
                final = continuation.x_prev
                yield f"t = {t}: continuation {k + 1} of {request.num}"
        finals.append(to_uint8(final)[0])
    spread = spread_of(torch.stack(finals))
    decided = float(np.clip(1.0 - spread / reference_spread, 0.0, 1.0)) if reference_spread > 0 else 0.0
    yield BranchRow(t, to_hwc(to_uint8(x_t)[0]), to_hwc(to_uint8(step.x0_hat)[request.image]),
                    [to_hwc(final) for final in finals], spread, decided)


def branching_metadata(model: LoadedModel, request: BranchRequest, chain: SamplingRequest,
                       rows: list[BranchRow]) -> dict[str, str]:
    metadata = sampling_metadata(model, chain)
    metadata.update(experiment="branching", at=",".join(str(row.t) for row in rows), num=str(request.num),
                    image=str(request.image), batch_size=str(request.batch_size))
    return metadata

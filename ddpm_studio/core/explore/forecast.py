"""What a branching or interpolation run will cost, before it starts: its model calls times the time of one call
(the forecast Generate uses), in one sentence that says why a 256 px run on a CPU takes minutes."""

from __future__ import annotations

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.explore.branching import (
    REFERENCE_CALLS,
    BranchRequest,
    branch_indices,
    fig7_steps,
    visited_timesteps,
)
from ddpm_studio.core.explore.interpolation import DEFAULT_DDIM_STEPS, InterpolationRequest
from ddpm_studio.core.model.store import ModelInfo
from ddpm_studio.core.sampling.cost import ExperimentCost, cpu_experiment_cost
from ddpm_studio.core.sampling.guidance import model_passes

SOLVER_STEPS = 20  # DPM-Solver++'s default model calls, as Generate uses


def branching_calls(request: BranchRequest, diffusion: GaussianDiffusion) -> tuple[int, list[int]]:
    """One-image model calls of a branching run (the reference, the shared chain, the continuations), and the
    calls of one continuation per branch step."""
    indices = branch_indices(request, diffusion)
    visited = visited_timesteps(diffusion, request.sampler, request.steps)
    per_row = [sum(1 for index in visited if index <= branch) for branch in indices]
    reference = request.num * min(REFERENCE_CALLS, diffusion.num_timesteps) if request.num > 1 else 0
    chain = request.batch_size * sum(1 for index in visited if index >= indices[-1])
    return reference + chain + request.num * sum(per_row), per_row


def branching_cost(request: BranchRequest, info: ModelInfo) -> ExperimentCost:
    diffusion = GaussianDiffusion(NoiseSchedule.from_config(info.schedule))
    request.validate(diffusion.num_timesteps)
    calls, per_row = branching_calls(request, diffusion)
    passes = model_passes(request.classes, request.guidance, info.unet.num_classes)  # guided: the doubled batch
    what = "Fig. 7" if request.at == fig7_steps(diffusion.num_timesteps) else "Branching"
    rows = f"{len(per_row)} row{'s' if len(per_row) > 1 else ''}"
    detail = f"{rows} x {request.num} continuations x ~{round(sum(per_row) / len(per_row))} model calls"
    if passes > 1:
        detail += f", x {passes} for guidance"
    return cpu_experiment_cost(info.unet, what, calls * passes, detail)


def interpolation_calls(request: InterpolationRequest) -> int:
    """Model calls of one frame: the reverse process from t, with as many steps as the sampler takes from there."""
    if request.t == 0:
        return 0
    if request.sampler == "ddpm":
        return request.t if request.sampler_steps is None else min(request.sampler_steps, request.t)
    default = SOLVER_STEPS if request.sampler == "dpm-solver++" else DEFAULT_DDIM_STEPS
    return min(request.sampler_steps or default, request.t)


def interpolation_cost(request: InterpolationRequest, info: ModelInfo) -> ExperimentCost:
    request.validate(info.schedule.num_timesteps)
    per_frame = interpolation_calls(request)
    detail = f"{request.steps} frames x {per_frame} model calls"
    return cpu_experiment_cost(info.unet, "Interpolation", request.steps * per_frame, detail)

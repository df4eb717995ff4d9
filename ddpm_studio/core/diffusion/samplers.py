"""The samplers by name: DDPM (ancestral, Algorithm 2), DDIM and DPM-Solver++, run on a ``GaussianDiffusion``.

Each yields ``SampleStep`` events (t, x_t, x0_hat) from x_T, or from a given x_t at ``start_t``, down to x_0. The
DDPM and DDIM samplers are methods of the process; DPM-Solver++ lives in ``dpm_solver.py``, which builds on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ddpm_studio.core.diffusion.dpm_solver import dpm_solver_sample_progressive
from ddpm_studio.core.diffusion.process import SAMPLERS, EpsModel, GaussianDiffusion, SampleStep
from ddpm_studio.core.errors import check_choice


def sample_progressive(diffusion: GaussianDiffusion, model: EpsModel, shape: tuple[int, ...], sampler: str = "ddpm",
                       **options) -> Iterator[SampleStep]:
    """Run the sampler named ``sampler``; options that another sampler takes (eta, variance, spacing) are ignored."""
    check_choice("sampler", sampler, SAMPLERS)
    if sampler == "ddpm":
        options.pop("eta", None)
        options.pop("spacing", None)
        return diffusion.ddpm_sample_progressive(model, shape, **options)
    if sampler == "ddim":
        options.pop("variance", None)
        options.pop("spacing", None)
        return diffusion.ddim_sample_progressive(model, shape, **options)
    options.pop("variance", None)
    options.pop("eta", None)
    return dpm_solver_sample_progressive(diffusion, model, shape, **options)


def sample(diffusion: GaussianDiffusion, model: EpsModel, shape: tuple[int, ...], sampler: str = "ddpm",
           **options) -> torch.Tensor:
    """Run a sampler to the end and return only the final images x_0, in [-1, 1]."""
    final = None
    for step in sample_progressive(diffusion, model, shape, sampler, **options):
        final = step.x_prev
    return final.clamp(-1.0, 1.0)

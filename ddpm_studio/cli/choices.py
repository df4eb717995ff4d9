"""The engine's names and defaults that the command line offers and shows, written here without importing the
engine, so that parsing the command line and ``--help`` need no torch.

Each value is a copy: ``tests/test_cli_arguments.py`` holds every one of them equal to the engine's own, so a
change in the engine that is not made here fails the tests instead of reaching users.
"""

from __future__ import annotations

PRESETS = ("tiny", "small", "medium", "ddpm-cifar10", "ddpm-256")  # core.model.unet.PRESETS, in order
PRECISIONS = ("auto", "fp32", "bf16")  # core.system.devices.PRECISIONS
SAMPLERS = ("ddpm", "ddim", "dpm-solver++")  # core.diffusion.process.SAMPLERS
SOLVER_SPACINGS = ("logsnr", "linspace")  # core.diffusion.dpm_solver: DEFAULT_SPACING first, then the others
SAMPLING_VARIANCES = ("fixed_large", "fixed_small", "learned")  # core.diffusion.process.VARIANCES
TRAINING_VARIANCES = ("fixed", "learned")  # core.training TRAINING_VARIANCES
SCHEDULE_KINDS = ("linear", "cosine")  # core.diffusion.schedule.SCHEDULE_KINDS
IMAGE_CHANNELS = (1, 3)  # core.data.folders.SUPPORTED_CHANNELS
TRAJECTORY_KINDS = ("gif", "webp", "strip")  # core.sampling.job.TRAJECTORY_KINDS
INCEPTION = "inception-v3-compat"  # core.evaluation.metrics.INCEPTION
LIBRARY_REFERENCES = ("cifar10-train",)  # core.evaluation.quality.LIBRARY_REFERENCES
QUALITY_SAMPLES = 10_000  # core.evaluation.quality.EvaluationRequest().num_samples: FID, KID and IS
MEMORIZATION_SAMPLES = 1_000  # core.evaluation.memorization.DEFAULT_SAMPLES

# TrainingConfig()'s values of the settings whose default the help names.
TRAINING_DEFAULTS = {
    "preset": "small", "image_channels": 3, "steps": 10_000, "ema_decay": 0.9999, "schedule": "linear",
    "num_timesteps": 1000, "checkpoint_every": 1000, "preview_every": 500, "preview_count": 16, "seed": 0,
    "precision": "auto",
}
# SamplingRequest()'s values that sample and evaluate start from.
SAMPLING_DEFAULTS = {"num_images": 16, "seed": 0, "steps": 50, "eta": 0.0}
SOLVER_STEPS = 20  # core.diffusion.dpm_solver.DEFAULT_STEPS
# BenchSettings()'s values.
BENCH_DEFAULTS = {"preset": "small", "batch_size": 16, "train_steps": 10, "sample_steps": 10, "precision": "auto",
                  "eval_num": 1000}
DEMO_COUNT = 2000  # core.data.demo.DEFAULT_DEMO_COUNT
DEMO_SIZE = 32  # core.data.demo.DEFAULT_DEMO_SIZE
# BranchRequest()'s and InterpolationRequest()'s values (core.explore) that explore branch and interpolate start from.
BRANCH_DEFAULTS = {"num": 8, "seed": 0, "sampler": "ddpm", "eta": 1.0, "image": 0, "batch_size": 1}
INTERPOLATION_DEFAULTS = {"steps": 9, "seed": 0, "sampler": "ddpm", "eta": 0.0}

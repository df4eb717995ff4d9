"""KID during training: the feature extractor and the dataset's reference features, and one measurement."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm_studio.core.diffusion.dpm_solver import DEFAULT_STEPS
from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.evaluation.metrics import INCEPTION, create_feature_extractor
from ddpm_studio.core.evaluation.quality import ReferenceFeatures, dataset_reference, kid_of_network
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.timestamps import now_iso
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import EvaluationEvent
from ddpm_studio.core.training.state import ModelFolderWriter, TrainingState

# KID during training samples with DPM-Solver++ in 20 calls: 2.5 times cheaper than DDIM 50 (issue 20).
KID_SAMPLER = "dpm-solver++"
KID_SOLVER_STEPS = DEFAULT_STEPS


@dataclass
class TrainingEvaluator:
    """What KID during training needs: the feature extractor and the dataset's (cached) reference features."""

    extractor: torch.nn.Module
    reference: ReferenceFeatures
    device: torch.device
    feature_extractor: str
    batch_size: int = 100

    def measure(self, state: TrainingState, diffusion: GaussianDiffusion, bf16: bool,
                writer: ModelFolderWriter | None) -> EvaluationEvent:
        """KID of ``eval_num`` samples of the EMA weights, drawn by DPM-Solver++ in 20 calls (a fixed seed, so runs
        compare); recorded in model.json."""
        config = state.config
        unet_config = state.ema.config
        shape = (unet_config.image_channels, unet_config.image_size, unet_config.image_size)
        self.extractor.to(state.device)
        mean, std = kid_of_network(state.ema, diffusion, shape, self.reference, self.extractor, state.device,
                                   config.eval_num, self.batch_size, KID_SOLVER_STEPS, config.preview_seed, bf16,
                                   sampler=KID_SAMPLER)
        if writer is not None:
            record = {
                "metric": "kid", "value": mean, "std": std, "n": config.eval_num, "sampler": KID_SAMPLER,
                "steps": min(KID_SOLVER_STEPS, config.num_timesteps), "data": self.reference.description,
                "date": now_iso(), "model_step": state.step, "feature_extractor": self.feature_extractor,
                "during_training": True,
            }
            if (writer.path / model_store.CONFIG_FILE).is_file():
                model_store.append_evaluation(writer.path, record)
            else:  # before the first checkpoint: written with it
                writer.info.extra.setdefault(model_store.EVALUATIONS_KEY, []).append(record)
        return EvaluationEvent(state.step, "kid", mean, std, config.eval_num)


def prepare_evaluator(config: TrainingConfig, paths: list[Path], images: torch.Tensor, device: torch.device,
                      inception_weights: Path | None = None, feature_extractor: str | None = None):
    """Load the feature extractor and the dataset's reference features (from the cache of ``paths``, else from
    ``images``, decoded as training decodes them); yields progress events and returns a ``TrainingEvaluator``."""
    name = feature_extractor or INCEPTION
    extractor = create_feature_extractor(name, device, inception_weights)
    reference = None
    for event in dataset_reference(paths, config.image_size, config.image_channels, name, extractor, device,
                                   images=images):
        if isinstance(event, ReferenceFeatures):
            reference = event
        else:
            yield event
    return TrainingEvaluator(extractor, reference, device, name)

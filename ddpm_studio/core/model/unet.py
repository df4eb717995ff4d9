"""The U-Net of Ho et al. (2020) that predicts eps from (x_t, t), and its presets.

It follows the official TensorFlow model: residual blocks with the time embedding
added after the first convolution, GroupNorm and Swish, single-head self-attention
at chosen resolutions and in the middle, strided-conv downsampling padded like
TensorFlow's 'SAME' (right and bottom only), nearest + conv upsampling, and
zero-initialised final convolutions in every residual path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddpm_studio.core.errors import SettingError

# How the stride-2 downsampling convolution pads. "same" is the official code's TensorFlow 'SAME':
# on even sizes 0 before and 1 after, so right and bottom only; the released weights need it.
# "symmetric" pads 1 on every side: what DDPM Studio built before it knew better, kept so that
# model folders saved then (whose model.json lacks the field) compute exactly what they did.
DOWNSAMPLE_PADDINGS = ("same", "symmetric")
LEGACY_DOWNSAMPLE_PADDING = "symmetric"


@dataclass(frozen=True)
class UNetConfig:
    """The architecture of the eps-model. ``norm_groups`` is 32 in the paper."""

    image_size: int = 32
    image_channels: int = 3
    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    norm_groups: int = 32
    learned_variance: bool = False  # also output v, the learned range of sigma_t^2 (2C output channels)
    downsample_padding: str = "same"
    # Class-conditional when > 0: an embedding of num_classes + 1 rows (the last is the null label,
    # "no class", that classifier-free guidance needs) added to the time embedding. diffusers'
    # UNet2DModel calls the row count num_class_embeds.
    num_classes: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channel_multipliers", tuple(int(m) for m in self.channel_multipliers))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))

    def validate(self) -> None:
        """Raise ValueError, in one sentence, for settings the network cannot be built with."""
        if self.image_channels not in (1, 3):
            raise SettingError(f"Images must have 1 or 3 channels, not {self.image_channels}.")
        if self.base_channels < 1 or not self.channel_multipliers or self.num_res_blocks < 1:
            raise SettingError("The U-Net needs base channels, at least one level and one residual block per level.")
        halvings = len(self.channel_multipliers) - 1
        if self.image_size < 1 or self.image_size % (2**halvings) != 0:
            raise SettingError(
                f"Image size {self.image_size} cannot be halved cleanly {halvings} times "
                f"for {len(self.channel_multipliers)} levels; use a multiple of {2**halvings}."
            )
        for channels in {self.base_channels * m for m in self.channel_multipliers}:
            if channels % min(self.norm_groups, channels) != 0:
                raise SettingError(f"{channels} channels cannot be split into {self.norm_groups} normalisation groups.")
        if not 0.0 <= self.dropout < 1.0:
            raise SettingError(f"Dropout must lie in [0, 1), not {self.dropout}.")
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise SettingError(f"Downsample padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, "
                               f"not '{self.downsample_padding}'.")
        if self.num_classes < 0 or self.num_classes == 1:
            raise SettingError(f"A class-conditional model needs at least 2 classes, not {self.num_classes}.")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise SettingError(f"Unknown U-Net settings: {', '.join(sorted(unknown))}.")
        # A description written before the padding became a setting means the padding of then.
        return cls(**{"downsample_padding": LEGACY_DOWNSAMPLE_PADDING, **data})


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: UNetConfig
    defaults: dict = field(default_factory=dict)  # training settings that suit this preset


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        Preset(
            "tiny",
            "About 45 thousand parameters, for tests and smoke runs (16x16).",
            UNetConfig(16, 3, 8, (1, 2), 1, (8,), 0.0, 4),
            {"batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 10},
        ),
        Preset(
            "small",
            "About 0.7 M parameters; learns simple images in under an hour on a laptop CPU (32x32).",
            UNetConfig(32, 3, 16, (1, 2, 4), 1, (8,), 0.0, 8),
            {"batch_size": 32, "learning_rate": 1e-3, "warmup_steps": 200},
        ),
        Preset(
            "medium",
            "About 9 M parameters, for a single GPU at 32-64 px.",
            UNetConfig(32, 3, 64, (1, 2, 2, 2), 2, (16,), 0.1, 32),
            {"batch_size": 64, "learning_rate": 2e-4, "warmup_steps": 1000},
        ),
        Preset(
            "ddpm-cifar10",
            "The paper's CIFAR-10 model: 35,746,307 parameters at 32x32x3.",
            UNetConfig(32, 3, 128, (1, 2, 2, 2), 2, (16,), 0.1, 32),
            {"batch_size": 128, "learning_rate": 2e-4, "warmup_steps": 5000},
        ),
        Preset(
            "ddpm-256",
            "The paper's 256x256 model (LSUN, CelebA-HQ): 113,673,219 parameters.",
            UNetConfig(256, 3, 128, (1, 1, 2, 2, 4, 4), 2, (16,), 0.0, 32),
            {"batch_size": 64, "learning_rate": 2e-5, "warmup_steps": 5000},
        ),
    ]
}


def preset_config(name: str, image_size: int | None = None, image_channels: int | None = None) -> UNetConfig:
    """The U-Net config of a preset, optionally at another resolution or channel count."""
    if name not in PRESETS:
        raise SettingError(f"Unknown preset '{name}'; choose one of {', '.join(PRESETS)}.")
    config = PRESETS[name].config
    changes = {}
    if image_size is not None:
        changes["image_size"] = image_size
    if image_channels is not None:
        changes["image_channels"] = image_channels
    if changes:
        config = UNetConfig(**{**asdict(config), **changes})
    config.validate()
    return config


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The sinusoidal embedding of the official code: sin in the first half, cos in the second."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    angles = t.float()[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, time_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_projection = nn.Linear(time_channels, out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.checkpoint_activations = False

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_activations and torch.is_grad_enabled():
            # Keep only the block's inputs; recompute the rest in the backward pass (dropout
            # draws the same mask again: checkpoint restores the RNG state).
            return checkpoint(self._forward, x, time_embedding, use_reentrant=False)
        return self._forward(x, time_embedding)

    def _forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_projection(F.silu(time_embedding))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.projection = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # one head
        h = h.transpose(-1, -2).reshape(batch, channels, height, width)
        return x + self.projection(h)


class Downsample(nn.Module):
    """A stride-2 3x3 convolution; ``padding`` is one of DOWNSAMPLE_PADDINGS."""

    def __init__(self, channels: int, padding: str = "same"):
        super().__init__()
        self.same = padding == "same"
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.same else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = F.pad(x, (0, 1, 0, 1))  # 'SAME' on even sizes: nothing before, one row/column after
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x_t, t): maps noisy images and timestep indices to predicted noise (and v, if learned)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        ch, groups, dropout = config.base_channels, config.norm_groups, config.dropout
        time_channels = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, time_channels), nn.SiLU(), nn.Linear(time_channels, time_channels))
        # Zero rows: a conditional model starts as the unconditional one, and a fine-tune that adds
        # classes to an unconditional model starts from what that model computed.
        self.class_embedding = (zero_init(nn.Embedding(config.num_classes + 1, time_channels))
                                if config.num_classes else None)
        self.input_conv = nn.Conv2d(config.image_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [ch]
        channels, resolution = ch, config.image_size
        for level, multiplier in enumerate(config.channel_multipliers):
            for _ in range(config.num_res_blocks):
                block = nn.ModuleList([ResidualBlock(channels, ch * multiplier, time_channels, dropout, groups)])
                channels = ch * multiplier
                if resolution in config.attention_resolutions:
                    block.append(SelfAttention(channels, groups))
                self.down.append(block)
                skip_channels.append(channels)
            if level != len(config.channel_multipliers) - 1:
                self.down.append(nn.ModuleList([Downsample(channels, config.downsample_padding)]))
                skip_channels.append(channels)
                resolution //= 2

        self.middle = nn.ModuleList(
            [
                ResidualBlock(channels, channels, time_channels, dropout, groups),
                SelfAttention(channels, groups),
                ResidualBlock(channels, channels, time_channels, dropout, groups),
            ]
        )

        self.up = nn.ModuleList()
        for level, multiplier in reversed(list(enumerate(config.channel_multipliers))):
            for _ in range(config.num_res_blocks + 1):
                in_channels = channels + skip_channels.pop()
                block = nn.ModuleList([ResidualBlock(in_channels, ch * multiplier, time_channels, dropout, groups)])
                channels = ch * multiplier
                if resolution in config.attention_resolutions:
                    block.append(SelfAttention(channels, groups))
                self.up.append(block)
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(channels)]))
                resolution *= 2

        self.output_norm = group_norm(channels, groups)
        output_channels = config.image_channels * (2 if config.learned_variance else 1)
        self.output_conv = zero_init(nn.Conv2d(channels, output_channels, 3, padding=1))

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Trade compute for memory in training: residual blocks recompute their activations in the backward pass."""
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                module.checkpoint_activations = enabled

    def _run(self, block: nn.ModuleList, h: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, time_embedding) if isinstance(layer, ResidualBlock) else layer(h)
        return h

    @property
    def null_class(self) -> int:
        """The label index that means "no class" (the embedding's last row); 0 rows for an unconditional model."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """``classes``: one label index per image, ``null_class`` for none; None means none for all."""
        time_embedding = self.time_mlp(timestep_embedding(t, self.config.base_channels).to(x.dtype))
        if self.class_embedding is not None:
            if classes is None:
                classes = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
            time_embedding = time_embedding + self.class_embedding(classes.to(x.device)).to(time_embedding.dtype)
        elif classes is not None:
            raise ValueError("This model has no classes; it cannot be given class labels.")
        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, time_embedding)
            skips.append(h)
        h = self._run(self.middle, h, time_embedding)
        for block in self.up:
            if isinstance(block[0], ResidualBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(block, h, time_embedding)
        return self.output_conv(F.silu(self.output_norm(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""The paper's U-Net against diffusers' UNet2DModel, and importing diffusers-format folders.

The reference folders are written by diffusers' own ``save_pretrained`` from seeded random models with
every parameter perturbed; an import must compute what diffusers computes (relative difference <= 1e-5),
and anything it cannot represent, or any damaged or foreign file, is refused in one sentence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm_studio.core.model import importer
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.importer import import_folder, scheduler_from_diffusers, unet_config_from_diffusers
from ddpm_studio.core.model.store import ModelError, load_model
from ddpm_studio.core.model.unet import UNet, UNetConfig, preset_config
from tests.helpers.diffusers_folders import (
    diffusers_unet_config,
    edit_json,
    reference_unet,
    relative_difference,
    write_diffusers_folder,
)

TOLERANCE = 1e-5
# Small networks with the block structure of the paper's 32 px and 256 px models.
SMALL_32 = UNetConfig(32, 3, 16, (1, 2, 2, 2), 1, (16,), 0.0, 8)
NARROW_256 = UNetConfig(256, 3, 16, (1, 1, 2, 2, 4, 4), 1, (16,), 0.0, 8)
TIMESTEPS = torch.tensor([0, 250, 999])


def eps_of(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x, t)
    return out.sample if hasattr(out, "sample") else out


def assert_same_function(ours, reference, size: int, channels: int = 3, t: torch.Tensor = TIMESTEPS) -> None:
    x = torch.randn(len(t), channels, size, size, generator=torch.Generator().manual_seed(5))
    expected = eps_of(reference, x, t)
    assert expected.abs().max() > 0.1  # a real output, not a zero layer's
    assert relative_difference(eps_of(ours, x, t), expected) <= TOLERANCE


def built_with(config: UNetConfig, weights: dict[str, torch.Tensor]) -> UNet:
    """A U-Net holding ``weights``, built without initialising 35 M parameters first."""
    with torch.device("meta"):
        model = UNet(config)
    model.load_state_dict(weights, assign=True)
    return model.eval()


def google_config(image_size: int) -> dict:
    """The UNet config.json of google/ddpm-cifar10-32 (32) or google/ddpm-{church,bedroom,cat,celebahq}-256 (256)."""
    down = ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"] if image_size == 32 else \
        ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"]
    up = ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"] if image_size == 32 else \
        ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
        "block_out_channels": [128, 256, 256, 256] if image_size == 32 else [128, 128, 256, 256, 512, 512],
        "center_input_sample": False, "down_block_types": down, "downsample_padding": 0, "flip_sin_to_cos": False,
        "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06,
        "norm_num_groups": 32, "out_channels": 3, "sample_size": image_size, "time_embedding_type": "positional",
        "up_block_types": up,
    }


def write_folder(
    tmp_path: Path, config: UNetConfig = SMALL_32, seed: int = 0, scheduler: dict | None = None, **options
):
    model = reference_unet(config, seed)
    folder = write_diffusers_folder(tmp_path / "ddpm-source", model, scheduler, **options)
    return folder, model


# --- the exact network -------------------------------------------------------------------------------


def test_google_configs_are_the_paper_presets():
    cifar = unet_config_from_diffusers(google_config(32))
    assert cifar == UNetConfig(**{**preset_config("ddpm-cifar10").__dict__, "dropout": 0.0})
    assert unet_config_from_diffusers(google_config(256)) == preset_config("ddpm-256")
    assert preset_config("ddpm-cifar10").downsample_padding == "same"


def test_cifar10_preset_computes_the_diffusers_function():
    """The full 35.7 M-parameter preset, once, at batch 1: the same weights give the same eps."""
    config = preset_config("ddpm-cifar10")
    reference = reference_unet(config)
    weights = importer.convert_state_dict(reference.state_dict(), config)
    ours = built_with(config, weights)
    assert_same_function(ours, reference, 32, t=torch.tensor([421]))
    # The padding is what makes it the paper's network: padding every side gives another function.
    legacy = built_with(UNetConfig(**{**config.__dict__, "downsample_padding": "symmetric"}), weights)
    x = torch.randn(1, 3, 32, 32)
    assert relative_difference(eps_of(legacy, x, torch.tensor([421])), eps_of(reference, x, torch.tensor([421]))) > 0.05


def test_import_of_a_32px_folder_samples_what_diffusers_computes(tmp_path):
    folder, reference = write_folder(tmp_path, scheduler={"variance_type": "fixed_large", "clip_sample": True})
    result = import_folder(folder, tmp_path / "imported")
    model = load_model(result.path)
    assert model.info.unet == SMALL_32
    assert_same_function(model.unet, reference, 32)
    assert model.info.extra["sampling"] == {"variance": "fixed_large", "clip": True}
    assert model.info.schedule == model_store.ScheduleConfig()  # the paper's linear schedule


def test_import_of_the_256px_layout(tmp_path):
    folder, reference = write_folder(tmp_path, NARROW_256, scheduler={"variance_type": "fixed_small"})
    model = load_model(import_folder(folder, tmp_path / "imported").path)
    assert model.info.unet.attention_resolutions == (16,) and model.info.unet.downsample_padding == "same"
    assert_same_function(model.unet, reference, 256, t=torch.tensor([10, 900]))
    assert model.info.extra["sampling"]["variance"] == "fixed_small"


@pytest.mark.parametrize("layout", ["legacy attention names", ".bin", "config under unet/", "no scheduler file"])
def test_import_layouts(tmp_path, layout):
    options = {"legacy attention names": {"legacy_names": True}, ".bin": {"bin_file": True},
               "config under unet/": {"under_unet": True}, "no scheduler file": {}}[layout]
    scheduler = None if layout == "no scheduler file" else {"variance_type": "fixed_small", "clip_sample": False}
    folder, reference = write_folder(tmp_path, scheduler=scheduler, **options)
    model = load_model(import_folder(folder, tmp_path / "imported").path)
    assert_same_function(model.unet, reference, 32)
    expected = ({"variance": "fixed_large", "clip": True} if scheduler is None
                else {"variance": "fixed_small", "clip": False})
    assert model.info.extra["sampling"] == expected
    assert model.info.extra["source"]["weights"].endswith(".bin" if layout == ".bin" else ".safetensors")


def test_import_records_where_it_came_from(tmp_path):
    folder, _ = write_folder(tmp_path, scheduler={})
    result = import_folder(folder, name="church")
    assert result.path == model_store.default_user_models_dir() / "church"
    source = model_store.read_model_info(result.path).extra["source"]
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert source["format"] == "diffusers" and Path(source["path"]) == folder.resolve()
    assert source["bytes"] == weights.stat().st_size
    import hashlib

    assert source["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert source["config"]["_class_name"] == "UNet2DModel"


def test_a_linear_schedule_at_another_T_keeps_diffusers_betas():
    settings = scheduler_from_diffusers({"_class_name": "DDPMScheduler", "num_train_timesteps": 500,
                                         "beta_start": 0.0002, "beta_end": 0.03, "variance_type": "fixed_large"})
    from ddpm_studio.core.diffusion.schedule import NoiseSchedule

    betas = NoiseSchedule.from_config(settings.schedule).float64["betas"]
    assert betas[0] == pytest.approx(0.0002, rel=1e-12) and betas[-1] == pytest.approx(0.03, rel=1e-12)
    assert len(betas) == 500


def test_a_learned_range_model_imports_and_takes_the_steps_diffusers_takes(tmp_path):
    """Improved DDPM's learned range (out_channels 6, variance_type learned_range) becomes a learned variance:
    the same 6-channel function, and one reverse step of DDPMScheduler, noise included, at several t."""
    from ddpm_studio.core.diffusion.process import GaussianDiffusion
    from ddpm_studio.core.diffusion.schedule import NoiseSchedule
    from tests.helpers.diffusers_folders import diffusers_classes

    config = UNetConfig(**{**SMALL_32.__dict__, "learned_variance": True})
    reference = reference_unet(config, seed=3, out_channels=6)
    scheduler_settings = {"variance_type": "learned_range", "clip_sample": True}
    folder = write_diffusers_folder(tmp_path / "ddpm-source", reference, scheduler_settings)
    model = load_model(import_folder(folder, tmp_path / "imported").path)
    assert model.info.unet == config and model.info.extra["sampling"]["variance"] == "learned"
    assert_same_function(model.unet, reference, 32)  # eps and v, all six channels

    _, DDPMScheduler = diffusers_classes()
    scheduler = DDPMScheduler(**scheduler_settings)
    schedule = NoiseSchedule.from_config(model.info.schedule)
    diffusion = GaussianDiffusion(schedule)
    # diffusers' step is taken in float64 (its float32 forms 1 - alpha_bar_1 and beta_1 by cancellation, 3e-4
    # and 5e-4 off; this project's coefficients come from float64 and are rounded once), so that the
    # reference is the exact arithmetic of its formula.
    scheduler.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert torch.allclose(scheduler.alphas_cumprod.float(), schedule.alphas_cumprod, rtol=1e-6)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for t in (999, 500, 20, 1):
        steps = torch.full((2,), t)
        output = eps_of(model.unet, x, steps)
        expected = scheduler.step(eps_of(reference, x, steps).double(), t, x.double(),
                                  generator=torch.Generator().manual_seed(t))
        mean, log_variance, _ = diffusion.p_mean_log_variance(output, x, steps, variance="learned", clip=True)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        ours = mean + (0.5 * log_variance).exp() * noise
        assert relative_difference(ours, expected.prev_sample) <= TOLERANCE, t


def test_a_variance_output_and_its_scheduler_must_agree(tmp_path):
    learned = reference_unet(UNetConfig(**{**SMALL_32.__dict__, "learned_variance": True}), out_channels=6)
    folder = write_diffusers_folder(tmp_path / "one", learned, {"variance_type": "fixed_large"})
    assert_refused(folder, tmp_path, "also outputs a variance", "learned_range")
    folder = write_diffusers_folder(tmp_path / "two", reference_unet(SMALL_32), {"variance_type": "learned_range"})
    assert_refused(folder, tmp_path, "learned_range", "outputs no variance")
    # Without a scheduler file, a network with a variance output samples with it.
    folder = write_diffusers_folder(tmp_path / "three", learned)
    assert load_model(import_folder(folder, tmp_path / "imported").path).info.extra["sampling"]["variance"] == "learned"


# --- refusals ------------------------------------------------------------------------------------------------


UNSUPPORTED_UNET = [
    ("_class_name", "UNet2DConditionModel"), ("center_input_sample", True), ("time_embedding_type", "fourier"),
    ("flip_sin_to_cos", True), ("freq_shift", 0), ("mid_block_type", None), ("mid_block_scale_factor", 2),
    ("downsample_type", "resnet"), ("upsample_type", "resnet"), ("resnet_time_scale_shift", "scale_shift"),
    ("add_attention", False), ("class_embed_type", "timestep"), ("num_class_embeds", 2), ("act_fn", "gelu"),
    ("norm_eps", 1e-5), ("downsample_padding", 2), ("attention_head_dim", 8), ("attn_norm_num_groups", 16),
    ("time_embedding_dim", 100), ("out_channels", 9), ("in_channels", 4), ("norm_num_groups", 12),
    ("block_out_channels", [16, 24, 32, 32]), ("down_block_types", ["DownBlock2D", "CrossAttnDownBlock2D",
                                                                   "DownBlock2D", "DownBlock2D"]),
    ("up_block_types", ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]), ("sample_size", [32, 64]),
    ("layers_per_block", 0), ("a_future_setting", 1),
]


@pytest.mark.parametrize("field,value", UNSUPPORTED_UNET, ids=[f for f, _ in UNSUPPORTED_UNET])
def test_unsupported_unet_settings_are_refused_by_name(field, value):
    config = {"_class_name": "UNet2DModel", **diffusers_unet_config(SMALL_32), field: value}
    with pytest.raises(ModelError) as error:
        unet_config_from_diffusers(config, "unet/config.json")
    message = str(error.value)
    assert field in message and repr(value) in message and "\n" not in message, message


def test_a_missing_field_means_diffusers_default():
    config = {"_class_name": "UNet2DModel", **diffusers_unet_config(SMALL_32)}
    del config["flip_sin_to_cos"]  # diffusers' default is True, which this U-Net cannot compute
    with pytest.raises(ModelError, match="flip_sin_to_cos = True"):
        unet_config_from_diffusers(config)
    padding = {"_class_name": "UNet2DModel", **diffusers_unet_config(SMALL_32)}
    del padding["downsample_padding"]  # diffusers' default 1 pads every side: DDPM Studio's legacy padding
    assert unet_config_from_diffusers(padding).downsample_padding == "symmetric"


UNSUPPORTED_SCHEDULER = [
    ("_class_name", "EulerDiscreteScheduler"), ("prediction_type", "v_prediction"),
    ("variance_type", "learned"), ("beta_schedule", "scaled_linear"), ("trained_betas", [0.1, 0.2]),
    ("thresholding", True), ("rescale_betas_zero_snr", True), ("clip_sample_range", 2.0),
    ("num_train_timesteps", 0), ("beta_start", 0.5), ("a_future_setting", "x"),
]


@pytest.mark.parametrize("field,value", UNSUPPORTED_SCHEDULER, ids=[f for f, _ in UNSUPPORTED_SCHEDULER])
def test_unsupported_scheduler_settings_are_refused_by_name(field, value):
    with pytest.raises(ModelError) as error:
        scheduler_from_diffusers({"_class_name": "DDPMScheduler", field: value}, "scheduler_config.json")
    message = str(error.value)
    assert field in message and repr(value) in message and "\n" not in message, message


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory) -> Path:
    """A 32 px diffusers folder, shared read-only; tests copy it before damaging it."""
    folder, _ = write_folder(tmp_path_factory.mktemp("diffusers"), scheduler={"variance_type": "fixed_large"})
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy"))


def assert_refused(folder: Path, tmp_path: Path, *words: str) -> str:
    out = tmp_path / "imported"
    with pytest.raises(ModelError) as error:
        import_folder(folder, out)
    message = str(error.value)
    assert all(word in message for word in words), message
    assert "\n" not in message and len(message) < 400, message
    assert not out.exists() and not list(tmp_path.glob(".imported.*"))  # nothing half-written
    return message


@pytest.mark.parametrize("change", ["missing", "extra", "shape", "integer"])
def test_wrong_tensors_are_refused(source_folder, tmp_path, change):
    folder = copy_of(source_folder, tmp_path)
    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    name = "down_blocks.1.attentions.0.to_k.weight"
    if change == "missing":
        del tensors[name]
    elif change == "extra":
        tensors["down_blocks.9.resnets.0.conv1.weight"] = torch.zeros(1)
    elif change == "shape":
        tensors[name] = torch.zeros(3, 3)
    else:
        tensors[name] = tensors[name].to(torch.int32)
    save_file(tensors, path)
    assert_refused(folder, tmp_path, "diffusion_pytorch_model.safetensors",
                   "down_blocks.9" if change == "extra" else name)


def test_a_damaged_safetensors_file_is_refused(source_folder, tmp_path):
    folder = copy_of(source_folder, tmp_path)
    path = folder / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_refused(folder, tmp_path, "diffusion_pytorch_model.safetensors", "damaged")


def test_a_non_finite_weight_is_refused(source_folder, tmp_path):
    folder = copy_of(source_folder, tmp_path)
    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["conv_out.bias"][0] = float("nan")
    save_file(tensors, path)
    assert_refused(folder, tmp_path, "non-finite", "conv_out.bias")


class RunsCode:
    """Unpickling this creates ``marker``: the proof that loading a file ran code from it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_a_pickle_payload_runs_nothing_and_is_refused(source_folder, tmp_path):
    folder = copy_of(source_folder, tmp_path)
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    marker = tmp_path / "marker"
    torch.save({**state, "payload": RunsCode(marker)}, folder / "diffusion_pytorch_model.bin")
    # With both present, the safetensors file is the one read: the pickle is never opened.
    import_folder(folder, tmp_path / "from-safetensors")
    assert not marker.exists()
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    message = assert_refused(folder, tmp_path, "diffusion_pytorch_model.bin", "refuses")
    assert not marker.exists(), "loading the .bin ran code from it"
    assert "could run code" in message
    # The file is a real attack: an unrestricted unpickler runs it.
    torch.load(folder / "diffusion_pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_a_damaged_bin_and_foreign_folders_are_refused(source_folder, tmp_path):
    folder = copy_of(source_folder, tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    assert_refused(folder, tmp_path, "diffusion_pytorch_model.bin", "damaged")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(empty, tmp_path, "config.json")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert_refused(no_weights, tmp_path, "holds no weights")


def test_an_unsupported_setting_in_the_folder_is_refused_before_reading(source_folder, tmp_path):
    folder = copy_of(source_folder, tmp_path)
    edit_json(folder / "scheduler_config.json", variance_type="learned_range")
    assert_refused(folder, tmp_path, "variance_type", "learned_range")


def test_an_existing_model_is_never_overwritten(source_folder, tmp_path):
    out = import_folder(source_folder, tmp_path / "imported").path
    before = (out / model_store.EMA_FILE).read_bytes()
    with pytest.raises(ModelError, match="already holds a model"):
        import_folder(source_folder, out)
    assert (out / model_store.EMA_FILE).read_bytes() == before

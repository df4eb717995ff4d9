"""The paper's U-Net: sizes, shapes, gradients, validation and mixed precision."""

import pytest
import torch

from ddpm_studio.core.diffusion.samplers import sample
from ddpm_studio.core.model.unet import PRESETS, UNet, UNetConfig, count_parameters, preset_config, timestep_embedding


def perturb_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised weights (final convs, norm biases) small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if (p == 0).all():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


# --- sizes ------------------------------------------------------------------------------------


def test_cifar10_preset_has_the_papers_parameter_count():
    assert count_parameters(UNet(preset_config("ddpm-cifar10"))) == 35_746_307


def test_256_preset_has_the_papers_parameter_count():
    # Built only, never run: a forward pass at 256x256 is far too slow for a CPU test.
    assert count_parameters(UNet(preset_config("ddpm-256"))) == 113_673_219


def test_paper_presets_follow_the_paper():
    config = PRESETS["ddpm-cifar10"].config
    assert (config.base_channels, config.channel_multipliers, config.num_res_blocks) == (128, (1, 2, 2, 2), 2)
    assert (config.attention_resolutions, config.dropout, config.norm_groups) == ((16,), 0.1, 32)
    assert PRESETS["ddpm-256"].config.channel_multipliers == (1, 1, 2, 2, 4, 4)
    model = UNet(config)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 and m.eps == 1e-6 for m in norms)
    # time MLP: Linear(ch, 4ch), Swish, Linear(4ch, 4ch)
    linears = [m for m in model.time_mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 512), (512, 512)]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_validates(name):
    config = preset_config(name)
    config.validate()
    assert UNetConfig.from_dict(config.to_dict()) == config


def test_preset_config_overrides_and_unknown_preset():
    config = preset_config("tiny", image_size=32, image_channels=1)
    assert (config.image_size, config.image_channels) == (32, 1)
    with pytest.raises(ValueError, match="preset"):
        preset_config("enormous")
    with pytest.raises(ValueError, match="Unknown U-Net settings"):
        UNetConfig.from_dict({"image_size": 16, "colour": True})


# --- shapes and gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_equals_input_shape(channels):
    torch.manual_seed(0)
    model = perturb_zero_init(UNet(preset_config("tiny", image_channels=channels))).eval()
    x = torch.randn(3, channels, 16, 16)
    t = torch.tensor([0, 500, 999])
    out = model(x, t)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # the output depends on t
    assert not torch.allclose(model(x, torch.tensor([1, 1, 1])), model(x, torch.tensor([900, 900, 900])))


def test_fresh_model_outputs_zero():
    # The official initialisation: the final convolution is zero, so eps_hat starts at 0.
    model = UNet(preset_config("tiny"))
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([3, 7]))
    assert torch.equal(out, torch.zeros_like(out))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet(preset_config("tiny"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 3, 16, 16)
    target = torch.randn(4, 3, 16, 16)
    t = torch.tensor([0, 10, 100, 999])
    # Zero-initialised output convolutions block the gradient to everything before them at first;
    # two optimizer steps move them away from zero.
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x, t), target)
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x, t), target).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    zero = [name for name, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert not zero, zero
    assert len(list(model.parameters())) > 50


def test_time_embedding():
    e = timestep_embedding(torch.tensor([0, 1, 999]), 8)
    assert e.shape == (3, 8)
    # sin in the first half, cos in the second; at t = 0 that is (0, ..., 0, 1, ..., 1)
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(e[1, 0], torch.sin(torch.tensor(1.0)))
    torch.testing.assert_close(e[1, 3], torch.sin(torch.tensor(1e-4)))  # lowest frequency 1/10000
    assert timestep_embedding(torch.tensor([5]), 7).shape == (1, 7)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("size,multipliers", [(18, (1, 2, 2)), (15, (1, 2)), (20, (1, 2, 2, 2))])
def test_image_size_that_cannot_be_halved_raises_value_error(size, multipliers):
    config = UNetConfig(size, 3, 8, multipliers, 1, (), 0.0, 4)
    with pytest.raises(ValueError, match=rf"Image size {size} cannot be halved cleanly"):
        config.validate()
    with pytest.raises(ValueError, match="multiple of"):
        UNet(config)


def test_image_size_override_is_validated():
    with pytest.raises(ValueError, match="cannot be halved"):
        preset_config("ddpm-cifar10", image_size=36)  # 4 levels need a multiple of 8
    assert preset_config("ddpm-cifar10", image_size=64).image_size == 64


@pytest.mark.parametrize(
    "changes",
    [
        {"image_channels": 2},
        {"base_channels": 0},
        {"channel_multipliers": ()},
        {"num_res_blocks": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"base_channels": 12, "norm_groups": 8},
        {"image_size": 0},
        {"num_classes": 1},
        {"num_classes": -2},
    ],
)
def test_invalid_configs_raise_value_error(changes):
    config = UNetConfig(**{**preset_config("tiny").__dict__, **changes})
    with pytest.raises(ValueError):
        config.validate()
    with pytest.raises(ValueError):
        UNet(config)


# --- classes ---------------------------------------------------------------------------------


def conditional_tiny(num_classes: int = 3) -> UNet:
    config = UNetConfig(**{**preset_config("tiny").__dict__, "num_classes": num_classes})
    return perturb_zero_init(UNet(config).eval())


def test_class_embedding_has_a_null_row_and_starts_at_zero():
    model = UNet(UNetConfig(**{**preset_config("tiny").__dict__, "num_classes": 4}))
    assert model.null_class == 4
    assert model.class_embedding.weight.shape == (5, 4 * model.config.base_channels)
    assert torch.equal(model.class_embedding.weight, torch.zeros_like(model.class_embedding.weight))
    assert UNet(preset_config("tiny")).class_embedding is None


def test_labels_change_the_output_and_none_means_the_null_label():
    torch.manual_seed(0)
    model = conditional_tiny(3)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([5, 50, 500])
    with torch.no_grad():
        by_class = [model(x, t, torch.full((3,), c)) for c in range(4)]
        default = model(x, t)
    assert torch.equal(default, by_class[model.null_class])
    for a in range(4):
        for b in range(a + 1, 4):
            assert (by_class[a] - by_class[b]).abs().max() > 1e-4
    # Each image's label acts on that image alone.
    with torch.no_grad():
        mixed = model(x, t, torch.tensor([0, 2, 3]))
    for i, c in enumerate([0, 2, 3]):
        torch.testing.assert_close(mixed[i], by_class[c][i], rtol=1e-5, atol=1e-5)


def test_zero_class_rows_compute_the_unconditional_model():
    # A fine-tune that adds classes starts from the model it adds them to: zero rows change nothing.
    torch.manual_seed(1)
    plain = perturb_zero_init(UNet(preset_config("tiny")).eval())
    conditional = UNet(UNetConfig(**{**preset_config("tiny").__dict__, "num_classes": 2})).eval()
    missing, unexpected = conditional.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["class_embedding.weight"] and not unexpected
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 900])
    with torch.no_grad():
        assert torch.equal(conditional(x, t, torch.tensor([0, 1])), plain(x, t))


def test_an_unconditional_model_refuses_labels():
    model = UNet(preset_config("tiny"))
    with pytest.raises(ValueError, match="no classes"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([3]), torch.tensor([0]))


# --- precision and memory format --------------------------------------------------------------


def test_bf16_autocast_and_channels_last_match_float32():
    torch.manual_seed(0)
    model = perturb_zero_init(UNet(preset_config("tiny"))).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([5, 700])
    with torch.no_grad():
        reference = model(x, t)
        assert reference.abs().mean() > 0.05  # a non-trivial output

        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x, t)
        assert bf16.shape == x.shape and torch.isfinite(bf16).all()
        # bf16 has an 8-bit mantissa: expect ~1% relative error
        error = (bf16.float() - reference).abs().mean() / reference.abs().mean()
        assert error < 0.05, error

        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last), t)
        torch.testing.assert_close(out_cl.contiguous(), reference, rtol=1e-4, atol=1e-5)

        with torch.autocast("cpu", dtype=torch.bfloat16):
            both = model_cl(x.contiguous(memory_format=torch.channels_last), t)
        error = (both.float() - reference).abs().mean() / reference.abs().mean()
        assert error < 0.05, error


def test_bf16_autocast_backward():
    torch.manual_seed(0)
    model = perturb_zero_init(UNet(preset_config("tiny")))
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, torch.tensor([1, 2])).float().pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    config = UNetConfig(16, 3, 8, (1, 2), 1, (8,), 0.5, 4)
    model = perturb_zero_init(UNet(config))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([3])
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))


# --- the downsampling padding ----------------------------------------------------------------------


def test_folders_saved_without_the_padding_setting_keep_the_old_padding():
    legacy = {k: v for k, v in preset_config("small").to_dict().items() if k != "downsample_padding"}
    assert UNetConfig.from_dict(legacy).downsample_padding == "symmetric"
    assert preset_config("small").downsample_padding == "same"  # new models get the paper's
    with pytest.raises(ValueError, match="Downsample padding"):
        UNetConfig(downsample_padding="reflect").validate()


def test_same_padding_pads_right_and_bottom_only():
    from ddpm_studio.core.model.unet import Downsample

    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    same, symmetric = Downsample(4, "same"), Downsample(4, "symmetric")
    symmetric.load_state_dict(same.state_dict())
    weight, bias = same.conv.weight, same.conv.bias
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))
    assert torch.equal(same(x), torch.nn.functional.conv2d(padded, weight, bias, stride=2))
    assert torch.equal(symmetric(x), torch.nn.functional.conv2d(x, weight, bias, stride=2, padding=1))
    assert same(x).shape == symmetric(x).shape == (1, 4, 4, 4)


def test_the_demo_model_samples_bit_for_bit_as_before():
    """models/demo was saved before the padding became a setting: it must compute exactly what it did,
    which is the network with every Downsample a plain Conv2d(3, stride 2, padding 1)."""
    from ddpm_studio.core.model.store import load_model
    from ddpm_studio.paths import BUNDLED_MODELS_DIR

    model = load_model(BUNDLED_MODELS_DIR / "demo")
    assert model.info.unet.downsample_padding == "symmetric"
    import copy

    before = copy.deepcopy(model.unet)
    for block in before.down:
        if type(block[0]).__name__ == "Downsample":
            conv = block[0].conv
            plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=2, padding=1)
            plain.load_state_dict(conv.state_dict())
            block[0] = plain  # the Downsample of before: its conv, nothing else
    shape = (2, *model.image_shape)
    now = sample(model.diffusion, model.unet, shape, "ddim", num_steps=5, generator=torch.Generator().manual_seed(3))
    then = sample(model.diffusion, before, shape, "ddim", num_steps=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(now, then)

"""The README's diffusers snippet that samples one class of an exported model with classifier-free guidance runs,
and its guided step is the studio's: eps~ = (1 + w) eps(x, c) - w eps(x, null), the null label the last row.

``SNIPPET`` is the README's code, word for word (the README section was written from this string)."""

from __future__ import annotations

import torch

from ddpm_studio.core.model.exporter import export_diffusers
from ddpm_studio.core.model.store import load_model
from ddpm_studio.core.sampling.guidance import guided_eps_model
from tests.helpers.class_models import write_class_model
from tests.helpers.diffusers_folders import diffusers_classes

SNIPPET = '''\
import torch
from diffusers import DDPMPipeline

pipeline = DDPMPipeline.from_pretrained("exported")
unet, scheduler = pipeline.unet, pipeline.scheduler
label, w = 0, 3.0                              # a class (studio.json lists their names), the guidance weight
null = unet.config.num_class_embeds - 1        # the null label: the last row
scheduler.set_timesteps(50)
size = unet.config.sample_size
x = torch.randn(1, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    for t in scheduler.timesteps:
        both = unet(torch.cat([x, x]), t, class_labels=torch.tensor([label, null])).sample
        conditional, unconditional = both.chunk(2)
        eps = (1 + w) * conditional - w * unconditional
        x = scheduler.step(eps, t, x).prev_sample
image = (x.clamp(-1, 1) + 1) / 2               # (1, C, H, W) in [0, 1]
'''


def test_the_readme_snippet_takes_the_studios_guided_step(tmp_path):
    diffusers_classes()  # diffusers without a torchvision built for another torch
    model = write_class_model(tmp_path / "model")
    export_diffusers(model, tmp_path / "exported")
    # One step, so that its result can be recomputed from the studio's own guided epsilon.
    code = SNIPPET.replace('"exported"', repr(str(tmp_path / "exported"))).replace("set_timesteps(50)",
                                                                                  "set_timesteps(1)")
    assert code != SNIPPET
    scope: dict = {}
    exec(compile(code, "README snippet", "exec"), scope)
    assert scope["image"].shape == (1, 3, 16, 16)

    studio = load_model(model)
    start = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = scope["scheduler"].timesteps[0]
    with torch.no_grad():
        eps = guided_eps_model(studio.unet, torch.tensor([0]), 3.0)(start, t.reshape(1))
        unguided = studio.unet(start, t.reshape(1), torch.tensor([0]))
    assert (eps - unguided).abs().max() > 1e-3  # the guidance changes the step, so the comparison means something
    expected = scope["scheduler"].step(eps, t, start).prev_sample
    assert torch.allclose(scope["x"], expected, rtol=1e-5, atol=1e-5)


def test_for_a_learned_variance_the_readme_note_guides_the_first_half_and_keeps_the_second(tmp_path):
    """The README's note below the snippet, done as it says: the guided steps equal the studio's, whose v comes
    from the conditional pass (core/sampling/guidance.py). Two steps, so that the first (t > 0) adds noise of the
    learned variance: the scheduler draws it from torch's global generator, seeded the same for both."""
    diffusers_classes()
    model = write_class_model(tmp_path / "model", learned_variance=True)
    export_diffusers(model, tmp_path / "exported")
    guided_line = "        eps = (1 + w) * conditional - w * unconditional\n"
    assert guided_line in SNIPPET
    code = (SNIPPET.replace('"exported"', repr(str(tmp_path / "exported"))).replace("set_timesteps(50)",
                                                                                    "set_timesteps(2)")
            .replace(guided_line, "        channels = x.shape[1]  # the first half: epsilon; the second: v\n"
                                  "        eps = torch.cat([(1 + w) * conditional[:, :channels] - w * "
                                  "unconditional[:, :channels], conditional[:, channels:]], 1)\n"))
    scope: dict = {}
    torch.manual_seed(1)
    exec(compile(code, "README snippet, learned variance", "exec"), scope)
    scheduler = scope["scheduler"]
    assert scheduler.config.variance_type == "learned_range" and scope["image"].shape == (1, 3, 16, 16)
    assert scheduler.timesteps[0] > 0

    studio = load_model(model)

    def studio_steps(v_from_null: bool) -> torch.Tensor:
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(1)
        with torch.no_grad():
            for t in scheduler.timesteps:
                output = guided_eps_model(studio.unet, torch.tensor([0]), 3.0)(x, t.reshape(1))
                assert output.shape == (1, 6, 16, 16)
                if v_from_null:
                    output[:, 3:] = studio.unet(x, t.reshape(1), torch.tensor([studio.unet.null_class]))[:, 3:]
                x = scheduler.step(output, t, x).prev_sample
        return x

    assert torch.allclose(scope["x"], studio_steps(v_from_null=False), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scope["x"], studio_steps(v_from_null=True), rtol=1e-5, atol=1e-5)  # v matters here

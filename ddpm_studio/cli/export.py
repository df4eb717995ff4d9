"""``ddpm-studio export``: write a model folder in diffusers' format, for ``DDPMPipeline.from_pretrained``."""

from __future__ import annotations

from ddpm_studio.cli.common import resolve_model_path
from ddpm_studio.core.model.exporter import export_diffusers


def run(args) -> int:
    result = export_diffusers(resolve_model_path(args.model), args.out, overwrite=args.overwrite)
    print(f"Exported {args.model} to {result.path} ({result.weights_bytes / 2**20:,.1f} MiB of weights):")
    for path in result.files:
        print(f"  {path.relative_to(result.path)}")
    print(f"Load it with: diffusers.DDPMPipeline.from_pretrained({str(result.path)!r})")
    return 0

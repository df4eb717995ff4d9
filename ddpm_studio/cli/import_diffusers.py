"""``ddpm-studio import``: turn a local diffusers-format DDPM folder (e.g. google/ddpm-*) into a model folder,
with the tensors renamed and checked. Nothing is downloaded."""

from __future__ import annotations

from tqdm import tqdm

from ddpm_studio.cli.common import command_line
from ddpm_studio.core.model.importer import ImportFinished, import_diffusers


def run(args) -> int:
    bar = None
    result = None
    for event in import_diffusers(args.source, args.out, args.name, command_line()):
        if isinstance(event, ImportFinished):
            result = event
        elif event.stage == "reading":
            if bar is None:
                bar = tqdm(total=event.total, desc="Reading", unit="tensor", dynamic_ncols=True)
            bar.update(event.done - bar.n)
    if bar is not None:
        bar.close()
    unet = result.info.unet
    print(f"Imported {args.source} ({result.weights_bytes / 2**20:,.0f} MiB in {result.seconds:.1f} s) as "
          f"{result.path}: "
          f"{unet.image_size}x{unet.image_size}x{unet.image_channels}, sampling variance "
          f"{result.info.sampling_defaults['variance'].replace('_', ' ')}.")
    return 0

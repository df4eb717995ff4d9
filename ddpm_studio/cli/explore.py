"""``ddpm-studio explore``: the paper's experiments headless. ``branch`` (Fig. 7) writes each continuation, a grid
per step, the figure and the numbers; ``interpolate`` (Figs. 8 and 9) writes each frame, the strip (one row per t)
and an animation over lambda. Every PNG carries the model, seed, sampler, t and lambda or branch index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ddpm_studio.cli.common import check_device, resolve_model_path
from ddpm_studio.cli.reporting import fail
from ddpm_studio.core.atomic import write_bytes_atomic
from ddpm_studio.core.data.folders import SkipImage, load_image
from ddpm_studio.core.explore.branching import (
    BranchProgress,
    BranchRequest,
    BranchRow,
    branching_metadata,
    chain_request,
    fig7_steps,
    prepared_model,
    run_branching,
    seed_for,
)
from ddpm_studio.core.explore.forecast import branching_cost, interpolation_cost
from ddpm_studio.core.explore.interpolation import (
    InterpolationProgress,
    InterpolationRequest,
    export_interpolation,
    run_interpolation,
)
from ddpm_studio.core.model.store import load_model, read_model_info
from ddpm_studio.core.sampling.guidance import check_guidance, parse_class
from ddpm_studio.core.sampling.imaging import make_grid, make_strip, save_png, to_pil, upscale_nearest
from ddpm_studio.core.system.devices import choose_device

FIGURE_SIDE = 64  # small images are enlarged (nearest neighbour) in the figures to at least this many pixels


def run(args) -> int:
    return branch(args) if args.experiment == "branch" else interpolate(args)


def output_folder(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder for the images.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def show_cost(cost, device: str) -> None:
    if choose_device(device).type == "cpu":
        print(cost.describe())


def figure(rows: list[list[np.ndarray]], side: int) -> np.ndarray:
    """Rows of equal length, one strip each, stacked; enlarged so that each image is at least ``FIGURE_SIDE``."""
    stacked = np.concatenate([make_strip(row) for row in rows], axis=0)
    return np.asarray(upscale_nearest(to_pil(stacked), max(1, FIGURE_SIDE // side)))


def as_chw(image: np.ndarray) -> np.ndarray:
    return (image[:, :, None] if image.ndim == 2 else image).transpose(2, 0, 1)


def branch(args) -> int:
    model_path = resolve_model_path(args.model)
    info = read_model_info(model_path)
    defaults = info.sampling_defaults
    request = BranchRequest(
        model_path=model_path, at=args.at or fig7_steps(info.schedule.num_timesteps), num=args.num, seed=args.seed,
        sampler=args.sampler, steps=args.sampler_steps, eta=args.eta, variance=args.variance or defaults["variance"],
        clip=defaults["clip"] and not args.no_clip, device=args.device, precision=args.precision, image=args.image,
        batch_size=args.batch_size, guidance=args.guidance)
    check_guidance(args.guidance)
    if (args.class_choice is not None or args.guidance != 0) and not info.unet.num_classes:
        fail(f"{info.name} is not class-conditional, so it takes no --class or --guidance.")
    if args.guidance != 0 and args.class_choice is None:
        fail("Guidance needs a class: give --class NAME.")
    if args.class_choice is not None:
        request.classes = [parse_class(info, args.class_choice)]
    request.validate(info.schedule.num_timesteps)
    check_device(args.device)
    out = output_folder(args.out)
    show_cost(branching_cost(request, info), args.device)
    model = prepared_model(request, None)
    rows: list[BranchRow] = []
    result = None
    try:
        with tqdm(desc="Branching", unit="call") as bar:
            for event in run_branching(request, model):
                if isinstance(event, BranchProgress):
                    bar.total = event.total
                    bar.update(event.done - bar.n)
                elif isinstance(event, BranchRow):
                    rows.append(event)
                else:
                    result = event
    finally:  # Ctrl-C keeps the rows already finished
        if rows:
            reference = result.reference_spread if result else None
            save_branching(out, request, branching_metadata(model, request, chain_request(request, request.variance),
                                                            rows), rows, reference)
    print(f"Saved {len(rows)} rows of {request.num} continuations, branching.png and branching.json in {out}")
    return 0


def save_branching(out: Path, request: BranchRequest, metadata: dict[str, str], rows: list[BranchRow],
                   reference_spread: float | None) -> None:
    for row in rows:
        row_metadata = {**metadata, "t": str(row.t)}
        for k, final in enumerate(row.finals):
            save_png(out / f"t{row.t:04d}_k{k}.png", final,
                     {**row_metadata, "branch": str(k), "branch_seed": str(seed_for(request.seed, row.t, k))})
        save_png(out / f"t{row.t:04d}_grid.png", make_grid(np.stack([as_chw(final) for final in row.finals])),
                 row_metadata)
    side = rows[0].x_t.shape[0]
    save_png(out / "branching.png", figure([[row.x_t, row.x0_hat, *row.finals] for row in rows], side),
             {**metadata, "rows": "one per t: x_t, x0_hat, then the continuations"})
    numbers = {
        "model": metadata["model"], "seed": request.seed, "num": request.num, "reference_spread": reference_spread,
        "finished": reference_spread is not None, "metadata": metadata,
        "rows": [{"t": row.t, "spread": row.spread, "decided": row.decided,
                  "seeds": [seed_for(request.seed, row.t, k) for k in range(len(row.finals))]} for row in rows],
    }
    write_bytes_atomic(out / "branching.json", (json.dumps(numbers, indent=2) + "\n").encode())


def read_picture(path: Path, image_size: int, channels: int) -> np.ndarray:
    """A picture file decoded as training decodes it, (H, W, C) uint8; an unusable file is one sentence."""
    try:
        array, _ = load_image(path, image_size, channels)
    except SkipImage as error:
        fail(f"{path} cannot be used: {error.reason}.")
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def interpolate(args) -> int:
    model_path = resolve_model_path(args.model)
    info = read_model_info(model_path)
    num_timesteps = info.schedule.num_timesteps
    a = read_picture(args.a, info.unet.image_size, info.unet.image_channels)
    b = read_picture(args.b, info.unet.image_size, info.unet.image_channels)
    requests = [InterpolationRequest(
        model_path=model_path, a=a, b=b, t=t, steps=args.steps, seed=args.seed, sampler=args.sampler,
        sampler_steps=args.sampler_steps, eta=args.eta, variance=args.variance,
        clip=info.sampling_defaults["clip"] and not args.no_clip, device=args.device, precision=args.precision,
        keep_trajectories=False) for t in (args.t or [num_timesteps // 2])]
    for request in requests:
        request.validate(num_timesteps)
    check_device(args.device)
    out = output_folder(args.out)
    for request in requests:
        show_cost(interpolation_cost(request, info), args.device)
    model = None
    results = []
    for request in requests:
        model = model or load_model(model_path, choose_device(args.device))
        with tqdm(desc=f"Interpolating at t = {request.t}", unit="call") as bar:
            for event in run_interpolation(request, model):
                if isinstance(event, InterpolationProgress):
                    bar.total = event.total
                    bar.update(event.done - bar.n)
                else:
                    results.append(event)
    save_interpolation(out, results)
    print(f"Saved {len(results) * args.steps} frames, interpolation.png and the animation in {out}")
    return 0


def save_interpolation(out: Path, results: list) -> None:
    several = len(results) > 1
    for result in results:
        prefix = f"t{result.t:04d}_" if several else ""
        for lam, frame in zip(result.lambdas, result.frames):
            save_png(out / f"{prefix}lambda_{lam:.2f}.png", frame, {**result.metadata, "lambda": f"{lam:g}"})
        export_interpolation(result, out / f"{prefix}interpolation.gif", "gif",
                             scale=max(1, FIGURE_SIDE // result.frames[0].shape[0]), frame_ms=150)
    side = results[0].frames[0].shape[0]
    rows = [[result.sources[0], *result.frames, result.sources[1]] for result in results]
    metadata = {**results[-1].metadata, "t": ",".join(str(result.t) for result in results),
                "lambdas": ",".join(f"{lam:g}" for lam in results[0].lambdas),
                "rows": "one per t: A, the frames for each lambda, B"}
    save_png(out / "interpolation.png", figure(rows, side), metadata)

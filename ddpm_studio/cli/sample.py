"""``ddpm-studio sample``: generate images from a model with a progress bar, save them (PNG, with their
settings in the metadata) and a grid, and, if asked, the trajectory of the first image."""

from __future__ import annotations

from tqdm import tqdm

from ddpm_studio.cli.common import check_device, resolve_model_path
from ddpm_studio.cli.reporting import fail
from ddpm_studio.core.diffusion.dpm_solver import DEFAULT_STEPS as SOLVER_STEPS
from ddpm_studio.core.model.store import load_model, read_model_info
from ddpm_studio.core.sampling.guidance import check_guidance, class_names, parse_class
from ddpm_studio.core.sampling.job import SamplingRequest, export_trajectory, run_sampling, save_samples
from ddpm_studio.core.system.devices import choose_device

GUIDANCE_NEEDS_A_CLASS = "Guidance needs a class: give --class NAME or --all-classes."


def default_steps(sampler: str) -> int:
    """The steps of a sampler when --steps is not given: 20 model calls for DPM-Solver++, 50 for DDIM."""
    return SOLVER_STEPS if sampler == "dpm-solver++" else SamplingRequest.steps


def chosen_classes(args, info) -> tuple[list[int] | None, int]:
    """The per-image labels and the batch size for --class / --all-classes (one row of --num a class)."""
    check_guidance(args.guidance)
    if args.class_choice is not None and args.all_classes:
        fail("Give --class or --all-classes, not both.")
    asked = args.class_choice is not None or args.all_classes or args.guidance != 0
    if asked and not info.unet.num_classes:
        fail(f"{info.name} is not class-conditional, so it takes no --class, --all-classes or --guidance.")
    if args.guidance != 0 and args.class_choice is None and not args.all_classes:
        fail(GUIDANCE_NEEDS_A_CLASS)
    if args.all_classes:
        count = len(class_names(info))
        return [label for label in range(count) for _ in range(args.num)], args.num * count
    if args.class_choice is not None:
        return [parse_class(info, args.class_choice)], args.num
    return None, args.num


def run(args) -> int:
    model_path = resolve_model_path(args.model)
    info = read_model_info(model_path)
    defaults = info.sampling_defaults  # an imported model brings its scheduler's
    classes, num_images = chosen_classes(args, info)
    request = SamplingRequest(
        model_path=model_path, num_images=num_images, classes=classes, guidance=args.guidance, seed=args.seed,
        sampler=args.sampler,
        steps=default_steps(args.sampler) if args.steps is None else args.steps, spacing=args.spacing, eta=args.eta,
        variance=args.variance or defaults["variance"], ddpm_steps=args.steps if args.sampler == "ddpm" else None,
        clip=defaults["clip"] and not args.no_clip, device=args.device, precision=args.precision,
        keep_trajectory_of=[0] if args.trajectory else [],
    )
    request.validate()
    check_device(args.device)
    if args.out.exists() and not args.out.is_dir():
        fail(f"--out {args.out} is a file; give a folder for the images.")
    model = load_model(request.model_path, choose_device(request.device))  # a bad model fails before any progress bar
    result = None
    with tqdm(desc=f"Sampling ({request.sampler})", unit="step") as bar:
        for event in run_sampling(request, model):
            if hasattr(event, "num_steps"):
                bar.total = event.num_steps
                bar.update(event.step + 1 - bar.n)
            else:
                result = event
    paths = save_samples(result, args.out, columns=args.num if args.all_classes else None)
    print(f"Saved {len(paths) - 1} images and a grid in {args.out}")
    if args.all_classes:
        names = class_names(info)
        print(f"The grid {paths[-1].name} has one row a class, top to bottom: "
              + ", ".join(f"{row + 1} {name}" for row, name in enumerate(names)) + ".")
    for kind in args.trajectory or []:
        path = export_trajectory(result, 0, args.out / f"trajectory_0.{'png' if kind == 'strip' else kind}", kind)
        print(f"Saved the trajectory of image 0 to {path}")
    return 0

"""The ``ddpm-studio`` command: no subcommand opens the studio window; train, sample, evaluate, info, bench,
demo-data and import run the same engine headless.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ddpm_studio.core.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str) -> None:
    """Stop with one line for the user and exit status 2."""
    raise UserError(message)


def check_device(name: str) -> str:
    """Check a --device value, so that an unknown or absent device is one line, not a traceback."""
    if name == "auto":
        return name
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"Unknown device '{name}'; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            fail(f"--device {name} needs a CUDA GPU, and PyTorch finds none here; use --device cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            fail(f"--device {name}: there is no such GPU; PyTorch finds {torch.cuda.device_count()}.")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            fail(f"--device {name} needs Apple's Metal (MPS), and PyTorch finds none here; use --device cpu or auto.")
    elif device.type != "cpu":
        fail(f"Device '{name}' is not supported; use auto, cpu, cuda or cuda:N.")
    return name


# --- train ----------------------------------------------------------------------------------------


def add_train_parser(subparsers) -> None:
    from ddpm_studio.core.data.folders import SUPPORTED_CHANNELS
    from ddpm_studio.core.diffusion.schedule import SCHEDULE_KINDS
    from ddpm_studio.core.model.unet import PRESETS
    from ddpm_studio.core.system.devices import PRECISIONS
    from ddpm_studio.core.training.loop import TRAINING_VARIANCES, TrainingConfig

    default = TrainingConfig()

    parser = subparsers.add_parser("train", help="train a model on a folder of images",
                                   description="Train a DDPM on a folder of images. Under torchrun it uses every process.")
    parser.add_argument("data", nargs="?", type=Path, help="folder of images (optional with --resume: the model's own)")
    parser.add_argument("--out", type=Path, help="model folder to write (default: the user models folder / NAME)")
    parser.add_argument("--name", help="model name when --out is not given (default: the data folder's name)")
    parser.add_argument("--resume", action="store_true", help="continue the model in --out where it stopped")
    parser.add_argument("--init-from", type=Path, metavar="MODEL",
                        help="start a new run from this model's EMA weights (a fine-tune: its architecture and "
                             "schedule, a new optimizer, a folder of its own)")
    parser.add_argument("--preset", choices=list(PRESETS), help=f"architecture preset (default: {default.preset})")
    parser.add_argument("--image-size", type=int, help="training resolution (default: the preset's)")
    parser.add_argument("--channels", type=int, choices=SUPPORTED_CHANNELS,
                        help=f"3 for colour, 1 for grayscale (default {default.image_channels})")
    parser.add_argument("--batch-size", type=int, help="global batch size (default: the preset's)")
    parser.add_argument("--lr", type=float, dest="learning_rate", help="Adam learning rate (default: the preset's)")
    parser.add_argument("--steps", type=int, help=f"total training steps (default {default.steps})")
    parser.add_argument("--warmup", type=int, dest="warmup_steps", help="learning-rate warm-up steps")
    parser.add_argument("--ema", type=float, dest="ema_decay", help=f"EMA decay (default {default.ema_decay}, with warm-up)")
    parser.add_argument("--dropout", type=float, help="dropout (default: the preset's)")
    parser.add_argument("--variance", choices=TRAINING_VARIANCES,
                        help="fixed: L_simple (default); learned: also learn sigma_t^2 with L_hybrid (Nichol & Dhariwal)")
    parser.add_argument("--schedule", choices=SCHEDULE_KINDS, help=f"noise schedule (default {default.schedule})")
    parser.add_argument("--timesteps", type=int, dest="num_timesteps",
                        help=f"diffusion steps T (default {default.num_timesteps})")
    parser.add_argument("--checkpoint-every", type=int,
                        help=f"steps between checkpoints (default {default.checkpoint_every})")
    parser.add_argument("--preview-every", type=int, help=f"steps between preview grids (default {default.preview_every})")
    parser.add_argument("--preview-count", type=int,
                        help=f"images in a preview grid (default {default.preview_count}; 0 for none)")
    parser.add_argument("--log-every", type=int, help="steps between loss read-backs (default: 1 on CPU, 20 on GPU)")
    parser.add_argument("--seed", type=int, help=f"random seed (default {default.seed})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"default {default.precision}: bf16 where the GPU or CPU has it natively, else fp32")
    parser.add_argument("--no-flip", action="store_true", help="turn off random horizontal flips")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--accumulate", type=int, metavar="N",
                        help="reach the batch in N micro-batches per step (gradient accumulation; default 1)")
    parser.add_argument("--micro-batch", type=micro_batch_value, metavar="M|auto",
                        help="largest micro-batch in images per process; auto: the largest the memory estimate fits on the device")
    parser.add_argument("--checkpoint-activations", action="store_true",
                        help="recompute the residual blocks' activations in the backward pass: less memory, more compute")
    parser.add_argument("--tensorboard", type=Path, metavar="DIR",
                        help="also log loss, learning rate, images/s and previews to TensorBoard in DIR "
                             "(needs the 'tensorboard' extra)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode the images into memory instead of the dataset cache (see 'ddpm-studio cache')")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--force", action="store_true",
                        help="start even when the memory estimate exceeds what the device has available")
    parser.add_argument("--eval-every", type=int, help="steps between KID measurements of the EMA weights (default 0: none)")
    parser.add_argument("--eval-num", type=int, help="EMA samples (DDIM 50) per KID measurement (default 1000)")
    parser.add_argument("--inception-weights", type=Path, help="the FID Inception weights file (default: torch's cache)")
    parser.add_argument("--feature-extractor", help=argparse.SUPPRESS)  # the tests' stand-in
    parser.set_defaults(handler=run_train)


def micro_batch_value(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or auto, not '{text}'") from None


def training_overrides(args) -> dict:
    names = ("image_size", "batch_size", "learning_rate", "steps", "warmup_steps", "ema_decay", "dropout", "variance", "schedule",
             "num_timesteps", "checkpoint_every", "preview_every", "preview_count", "log_every", "seed", "precision",
             "eval_every", "eval_num", "accumulate", "micro_batch")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.no_flip:
        overrides["random_flip"] = False
    if args.compile:
        overrides["compile"] = True
    if args.checkpoint_activations:
        overrides["checkpoint_activations"] = True
    return overrides


def run_train(args) -> int:
    from tqdm import tqdm

    from ddpm_studio.core.data.cache import CacheMessage
    from ddpm_studio.core.data.folders import ScanProgress, ScanResult
    from ddpm_studio.core.evaluation.quality import EvaluationProgress
    from ddpm_studio.core.model import store as model_store
    from ddpm_studio.core.training.loop import (
        CheckpointEvent,
        EvaluationEvent,
        FailedEvent,
        FinishedEvent,
        PreviewEvent,
        StartedEvent,
        StepEvent,
        TrainingConfig,
        check_memory,
        distributed_context,
    )
    from ddpm_studio.core.training.plan import model_name_for, plan_new_run, plan_resume

    check_device(args.device)
    context = distributed_context(args.device)
    overrides = training_overrides(args)
    data = [args.data] if args.data else []
    if args.resume and args.init_from:
        fail("--init-from starts a new run; it cannot be combined with --resume.")
    if args.resume:
        if args.out is None:
            fail("--resume needs --out, the model folder to continue.")
        plan = plan_resume(args.out, overrides, data)
    else:
        if args.data is None:
            fail("Give the folder of images to train on.")
        if args.init_from:
            config = fine_tune_config(args, overrides)
        else:
            default = TrainingConfig()
            config = TrainingConfig.for_preset(args.preset or default.preset,
                                               image_channels=args.channels or default.image_channels, **overrides)
        out_dir = args.out or model_store.default_user_models_dir() / (args.name or model_name_for([args.data]))
        plan = plan_new_run(config, out_dir, data)
    config, out_dir, data_paths = plan.config, plan.out_dir, plan.data_paths
    memory = check_memory(config, args.device, context)
    if not memory.fits:
        if not args.force:
            ways = ("Split the batch (--micro-batch auto, or --accumulate N: a resumed run keeps its batch size)"
                    if args.resume else "Lower --batch-size, split it (--accumulate N, --micro-batch auto)")
            fail(f"{memory.explain()} {ways}, or add --force to try anyway.")
        if context.is_main:
            print(f"ddpm-studio: warning: {memory.explain()} Going on (--force).", file=sys.stderr)

    main_process = context.is_main
    tensorboard = None
    if args.tensorboard and main_process:
        from ddpm_studio.core.training.tensorboard_log import TensorBoardLog

        tensorboard = TensorBoardLog(args.tensorboard)  # a missing package is reported before any work starts
    command = shlex.join(["ddpm-studio", *sys.argv[1:]])
    # Under torchrun a Ctrl-C reaches every process twice (the terminal's, then torchrun's own):
    # the trainer stops all ranks together, so a repeat must not interrupt one of them alone.
    stop = StopRequest(interrupt_on_repeat=not context.enabled)
    plan.use_cache = not args.no_cache
    events = plan.events(command=command, device=args.device, stop_requested=lambda: stop.requested,
                         inception_weights=args.inception_weights, feature_extractor=args.feature_extractor)
    bar = None
    recent_loss = None
    try:
        for event in events:
            if tensorboard is not None:
                tensorboard.record(event)
            if isinstance(event, CacheMessage):
                if main_process:
                    print(event.text, flush=True)
            elif isinstance(event, ScanProgress):
                if main_process and event.done == event.total:
                    print(f"Read {event.total} files.", flush=True)
            elif isinstance(event, ScanResult):
                if main_process:
                    print(f"{len(event.images)} images at {config.image_size}x{config.image_size} from "
                          f"{', '.join(map(str, data_paths))}; {len(event.skipped)} skipped"
                          + (f"; {len(event.ignored)} other file{'s' if len(event.ignored) != 1 else ''} ignored "
                             "(not images)." if event.ignored else "."))
                    for skipped in event.skipped[:10]:
                        print(f"  skipped {skipped.path}: {skipped.reason}")
                    if len(event.skipped) > 10:
                        print(f"  ... and {len(event.skipped) - 10} more")
            elif isinstance(event, StartedEvent):
                if main_process:
                    print(f"Training {out_dir} on {event.device} ({event.dtype}), {event.parameters:,} parameters, "
                          f"from step {event.step} to {event.total_steps}.")
                bar = tqdm(total=event.total_steps, initial=event.step, unit="step", disable=not main_process,
                           dynamic_ncols=True)
                stop.install()  # from here on, Ctrl-C stops between two steps, never inside one
            elif isinstance(event, StepEvent):
                bar.update(event.step - bar.n)
                if event.losses:
                    recent_loss = event.loss
                    postfix = {"loss": f"{event.loss:.4f}", "lr": f"{event.learning_rate:.2e}"}
                    if event.images_per_second:
                        postfix["img/s"] = f"{event.images_per_second:.1f}"
                    bar.set_postfix(postfix, refresh=False)
            elif isinstance(event, PreviewEvent) and event.path:
                bar.write(f"step {event.step}: preview saved to {event.path}")
            elif isinstance(event, EvaluationProgress):
                if main_process and event.done == event.total:
                    print(f"Dataset features for KID: {event.total} images.", flush=True)
            elif isinstance(event, EvaluationEvent):
                loss_text = f"loss {recent_loss:.4f}, " if recent_loss is not None else ""
                bar.write(f"step {event.step}: {loss_text}KID {event.value:.4g} ± {event.std:.2g} "
                          f"({event.n} EMA samples, DDIM)")
            elif isinstance(event, CheckpointEvent):
                pass
            elif isinstance(event, FinishedEvent):
                bar.close()
                if event.stopped:
                    if main_process:
                        print(f"Stopped after step {event.step}; the model in {out_dir} is saved and can be resumed "
                              "with --resume.", file=sys.stderr)
                    return EXIT_INTERRUPTED
                if main_process:
                    print(f"Finished {event.step} steps. Model saved in {event.path}")
            elif isinstance(event, FailedEvent):
                if bar:
                    bar.close()
                fail(event.reason)
    except KeyboardInterrupt:
        events.close()  # the trainer saves a checkpoint as it stops
        if bar:
            bar.close()
        if main_process:
            print(f"Stopped; the model in {out_dir} is saved and can be resumed with --resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop.uninstall()
        events.close()
        if tensorboard is not None:
            tensorboard.close()
    return 0


def fine_tune_config(args, overrides: dict):
    """The config of a run that starts from --init-from's weights; options that would change its network are refused."""
    from dataclasses import replace

    from ddpm_studio.core.model import store as model_store
    from ddpm_studio.core.model.unet import preset_config
    from ddpm_studio.core.training.loop import TrainingConfig, describe_architecture, same_architecture

    source = model_store.read_model_info(resolve_model_path(str(args.init_from)))
    unet = source.unet
    if args.preset:
        wanted = preset_config(args.preset, overrides.get("image_size", unet.image_size), args.channels or unet.image_channels)
        if not same_architecture(replace(wanted, downsample_padding=unet.downsample_padding,
                                         learned_variance=unet.learned_variance), unet):
            fail(f"--init-from {args.init_from} has another architecture than preset {args.preset} "
                 f"({describe_architecture(unet)}); leave out --preset to keep the model's.")
    for option, value, own in (("--image-size", overrides.get("image_size"), unet.image_size),
                               ("--channels", args.channels, unet.image_channels)):
        if value is not None and value != own:
            fail(f"{option} {value} differs from the {own} of --init-from {args.init_from}; a fine-tune keeps the "
                 f"model's architecture.")
    for option in ("schedule", "num_timesteps", "variance"):
        if option in overrides and overrides[option] != getattr(TrainingConfig.for_fine_tune(source), option):
            what = "variance" if option == "variance" else "schedule"
            fail(f"--{option.replace('num_', '').replace('_', '-')} differs from the {what} of --init-from "
                 f"{args.init_from}; a fine-tune keeps the model's {what}.")
    return TrainingConfig.for_fine_tune(source, **overrides)


class StopRequest:
    """Turns the first Ctrl-C (or SIGTERM) into a flag the trainer checks between steps; a second one
    interrupts, unless ``interrupt_on_repeat`` is off."""

    def __init__(self, interrupt_on_repeat: bool = True):
        self.requested = False
        self.interrupt_on_repeat = interrupt_on_repeat
        self.previous: dict = {}

    def install(self) -> None:
        import signal

        def handler(signum, frame):
            if self.requested and self.interrupt_on_repeat:
                raise KeyboardInterrupt
            self.requested = True

        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, handler)

    def uninstall(self) -> None:
        import signal

        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous.clear()


# --- sample ---------------------------------------------------------------------------------------


def add_sample_parser(subparsers) -> None:
    from ddpm_studio.core.sampling.job import TRAJECTORY_KINDS, SamplingRequest

    default = SamplingRequest()
    parser = subparsers.add_parser("sample", help="generate images from a trained model")
    parser.add_argument("model", help="model folder, or the name of a model in the library")
    parser.add_argument("--num", type=int, default=default.num_images, help=f"number of images (default {default.num_images})")
    add_sampler_options(parser)
    parser.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default ./samples)")
    parser.add_argument("--trajectory", choices=TRAJECTORY_KINDS, action="append",
                        help="also save the trajectory of the first image (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.set_defaults(handler=run_sample)


def add_sampler_options(parser) -> None:
    """The sampler options shared by sample and evaluate."""
    from ddpm_studio.core.diffusion.process import SAMPLERS, VARIANCES
    from ddpm_studio.core.sampling.job import SamplingRequest

    default = SamplingRequest()
    parser.add_argument("--seed", type=int, default=default.seed, help=f"random seed (default {default.seed})")
    # The command line defaults to the fast sampler; the window starts from the paper's.
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                        help="ddpm: ancestral (every step, or --steps respaced); ddim (default): --steps")
    parser.add_argument("--steps", type=int,
                        help=f"reverse steps (default: {default.steps} for DDIM; every timestep for DDPM, fewer respaces "
                             "the process)")
    parser.add_argument("--eta", type=float, default=default.eta, help=f"DDIM eta in [0, 1] (default {default.eta:g})")
    parser.add_argument("--variance", choices=VARIANCES,
                        help="DDPM variance: beta_t (large), beta~_t (small) or the model's learned one "
                             "(default: learned if the model learned it, else fixed_large)")
    parser.add_argument("--no-clip", action="store_true", help="don't clip x0_hat to [-1, 1]")


def resolve_model_path(name: str) -> Path:
    from ddpm_studio.core.model import store as model_store

    path = Path(name)
    if path.exists():
        return path
    for entry in model_store.list_models():
        if entry.path.name == name:
            return entry.path
    fail(f"No model folder at '{name}', and no model of that name in {', '.join(map(str, model_store.model_search_dirs()))}.")


def run_sample(args) -> int:
    from tqdm import tqdm

    from ddpm_studio.core.model.store import load_model, read_model_info
    from ddpm_studio.core.sampling.job import SamplingRequest, export_trajectory, run_sampling, save_samples
    from ddpm_studio.core.system.devices import choose_device

    model_path = resolve_model_path(args.model)
    defaults = read_model_info(model_path).sampling_defaults  # an imported model brings its scheduler's
    request = SamplingRequest(
        model_path=model_path, num_images=args.num, seed=args.seed, sampler=args.sampler,
        steps=50 if args.steps is None else args.steps, eta=args.eta, variance=args.variance or defaults["variance"],
        ddpm_steps=args.steps if args.sampler == "ddpm" else None,
        clip=defaults["clip"] and not args.no_clip, device=args.device,
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
    paths = save_samples(result, args.out)
    print(f"Saved {len(paths) - 1} images and a grid in {args.out}")
    for kind in args.trajectory or []:
        path = export_trajectory(result, 0, args.out / f"trajectory_0.{ 'png' if kind == 'strip' else kind}", kind)
        print(f"Saved the trajectory of image 0 to {path}")
    return 0


# --- evaluate -------------------------------------------------------------------------------------


def add_evaluate_parser(subparsers) -> None:
    from ddpm_studio.core.evaluation.metrics import INCEPTION

    parser = subparsers.add_parser(
        "evaluate", help="measure a model: the likelihood bound (--nll) and sample quality (--fid --kid --is)",
        description="Measure a model and record the results in its model.json. --nll: the variational bound in "
                    "bits/dim on held-out images in DATA. --fid, --kid, --is: the model's samples against DATA (default: "
                    "the model's own dataset) through torch-fidelity's FID Inception (pip install -e \".[eval]\").")
    parser.add_argument("model", help="model folder, or the name of a model in the library")
    parser.add_argument("data", nargs="?", type=Path,
                        help="folder of images: held-out images for --nll; the reference for FID and KID "
                             "(default: the model's own dataset)")
    parser.add_argument("--nll", action="store_true",
                        help="negative log-likelihood bound L_0 + sum L_t-1 + L_T in bits/dim, with its standard error")
    parser.add_argument("--fid", action="store_true", help="Fréchet Inception Distance of samples (lower is better)")
    parser.add_argument("--kid", action="store_true", help="Kernel Inception Distance, mean ± std over subsets")
    parser.add_argument("--is", action="store_true", dest="inception_score", help="Inception Score (higher is better)")
    parser.add_argument("--num", type=int, default=10_000,
                        help="FID/KID/IS: samples to draw (default 10000; FID wants 2048 or more)")
    parser.add_argument("--num-images", type=int, default=64, help="NLL: images to evaluate, picked with --seed (default 64)")
    parser.add_argument("--timesteps", default="all",
                        help="NLL: 'all' T terms per image, or K for an unbiased estimate from K random t (default all)")
    add_sampler_options(parser)  # --variance and --no-clip serve the NLL's reverse process too
    parser.add_argument("--batch-size", type=int, help="images per model call (default: 32 for NLL, 100 for samples)")
    parser.add_argument("--no-record", action="store_true", help="don't append the results to model.json")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--inception-weights", type=Path, help="the FID Inception weights file (default: torch's cache)")
    parser.add_argument("--against", choices=("cifar10-train",), help="compare with torch-fidelity's cached CIFAR-10 "
                        "training set instead of a folder")
    parser.add_argument("--feature-extractor", default=INCEPTION, help=argparse.SUPPRESS)  # the tests' stand-in
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args) -> int:
    from ddpm_studio.core.evaluation.quality import EvaluationRequest
    from ddpm_studio.core.model import store as model_store
    from ddpm_studio.core.system.devices import choose_device

    metrics = [name for name, on in (("nll", args.nll), ("fid", args.fid), ("kid", args.kid),
                                     ("is", args.inception_score)) if on]
    if not metrics:
        fail("Choose what to measure: --nll, --fid, --kid or --is.")
    check_device(args.device)
    model_path = resolve_model_path(args.model)
    quality = tuple(name for name in metrics if name != "nll")
    request = None
    if quality:
        request = EvaluationRequest(
            model_path=model_path, data_paths=[args.data] if args.data else [], against=args.against, metrics=quality,
            num_samples=args.num, sampler=args.sampler, steps=args.steps, eta=args.eta, variance=args.variance,
            clip=not args.no_clip, seed=args.seed, batch_size=args.batch_size or 100, device=args.device,
            feature_extractor=args.feature_extractor, inception_weights=args.inception_weights, record=not args.no_record,
        )
        request.validate()
    if "nll" in metrics and args.data is None:
        fail("--nll needs a folder of held-out images as DATA.")
    if "nll" in metrics and not args.data.is_dir():
        fail(f"No folder of images at {args.data}.")
    if request:
        for note in request.warnings():
            print(f"ddpm-studio: warning: {note}", file=sys.stderr)
    model = model_store.load_model(model_path, choose_device(args.device))
    if "nll" in metrics:
        run_nll(args, model_path, model)
    if request:
        return run_sample_quality(request, model)
    return 0


def run_nll(args, model_path: Path, model) -> None:
    from tqdm import tqdm

    from ddpm_studio.core.data.folders import ScanProgress, ScanResult
    from ddpm_studio.core.evaluation.likelihood import (
        LikelihoodProgress,
        LikelihoodRequest,
        evaluate_likelihood_of_folder,
    )
    from ddpm_studio.core.model import store as model_store

    if args.timesteps == "all":
        timesteps = None
    elif args.timesteps.isdigit():
        timesteps = int(args.timesteps)
    else:
        fail(f"--timesteps takes 'all' or a number of timesteps per image, not '{args.timesteps}'.")
    request = LikelihoodRequest(args.num_images, timesteps, args.batch_size or 32, args.variance, not args.no_clip,
                                args.seed, args.device)
    bar = None
    try:
        for event in evaluate_likelihood_of_folder(model_path, [args.data], request, model):
            if isinstance(event, ScanProgress):
                continue
            if isinstance(event, ScanResult):
                count = len(event.images) if args.num_images is None else min(args.num_images, len(event.images))
                print(f"Evaluating the bound of {model.info.name} on {count} of {len(event.images)} images in "
                      f"{args.data} ({'all' if timesteps is None else timesteps} timesteps per image).")
            elif isinstance(event, LikelihoodProgress):
                if bar is None:
                    bar = tqdm(total=event.total, unit="term", desc="NLL", dynamic_ncols=True)
                bar.update(event.done - bar.n)
            else:
                result = event
    finally:
        if bar is not None:
            bar.close()
    error = f" ± {result.standard_error:.4f}" if result.standard_error == result.standard_error else ""
    print(f"NLL bound     {result.bits_per_dim:.4f}{error} bits/dim (standard error of the mean over "
          f"{result.num_images} images)")
    print(f"  L_0         {result.decoder_bpd:.4f} bits/dim (decoder)")
    print(f"  sum L_t-1   {result.kl_bpd:.4f} bits/dim")
    print(f"  L_T         {result.prior_bpd:.6f} bits/dim (prior)")
    print(f"  variance    {result.variance}, clip {'on' if result.clip else 'off'}")
    if not args.no_record:
        model_store.append_evaluation(model.info.path, result.record(str(args.data.resolve())))
        print(f"Recorded in {model.info.path / model_store.CONFIG_FILE}")


def run_sample_quality(request, model) -> int:
    """FID, KID and IS with progress bars; Ctrl-C stops between two sampling steps and records nothing."""
    from tqdm import tqdm

    from ddpm_studio.core.evaluation.quality import EvaluationProgress, EvaluationResult, run_evaluation
    from ddpm_studio.core.model import store as model_store

    events = run_evaluation(request, model)
    bar = None
    stop = StopRequest()
    stop.install()
    try:
        for event in events:
            if stop.requested:
                raise KeyboardInterrupt
            if isinstance(event, EvaluationProgress):
                if bar is None or bar.desc != event.phase.capitalize():
                    if bar is not None:
                        bar.close()
                    unit = "file" if event.phase == "reading dataset" else "img"
                    bar = tqdm(total=event.total, desc=event.phase.capitalize(), unit=unit, dynamic_ncols=True)
                bar.update(event.done - bar.n)
                if event.detail:
                    bar.set_postfix_str(event.detail, refresh=False)
            elif isinstance(event, EvaluationResult):
                if bar is not None:
                    bar.close()
                if event.reference_from_cache:
                    print(f"Dataset features from the cache: {event.reference}")
                for record in event.records:
                    print(model_store.describe_evaluation(record))
                if request.record:
                    print(f"Recorded in {event.model_path / model_store.CONFIG_FILE}")
    except KeyboardInterrupt:
        events.close()
        if bar is not None:
            bar.close()
        print("Stopped; nothing was recorded.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop.uninstall()
        events.close()
    return 0


# --- info -----------------------------------------------------------------------------------------


def add_info_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="describe a trained model")
    parser.add_argument("model", help="model folder, or the name of a model in the library")
    parser.set_defaults(handler=run_info)


def run_info(args) -> int:
    from ddpm_studio.core.model import store as model_store

    # model.json and the weights file's header only: no network is built and no tensor is read.
    info = model_store.read_model_info(resolve_model_path(args.model))
    history = model_store.load_loss_history(info.path)
    unet = info.unet
    print(f"Model        {info.path}")
    print(f"Architecture U-Net, {info.weights.parameter_count:,} parameters: "
          f"{unet.image_size}x{unet.image_size}x{unet.image_channels}, "
          f"base {unet.base_channels}, multipliers {list(unet.channel_multipliers)}, {unet.num_res_blocks} blocks/level, "
          f"attention at {list(unet.attention_resolutions)}, dropout {unet.dropout}, "
          f"downsampling padded {'like TensorFlow (the paper)' if unet.downsample_padding == 'same' else 'on every side'}")
    print(f"Weights      {model_store.EMA_FILE}, {', '.join(info.weights.dtypes)}")
    print(f"Schedule     {info.schedule.kind}, T = {info.schedule.num_timesteps}")
    source = info.extra.get("source")
    if source:
        print(f"Imported     from the {source.get('format')} folder {source.get('path')} on {source.get('imported')}")
        print(f"             {source.get('weights')}, {source.get('bytes', 0):,} bytes, sha256 {source.get('sha256')}")
    if info.step or not source:
        print(f"Trained      {info.step:,} steps" + (f" (preset {info.training.get('preset')})" if info.training else ""))
    if info.training.get("init_from"):
        print(f"Fine-tuned   from {info.training['init_from']}")
    defaults = info.sampling_defaults
    print(f"Sampling     {defaults['variance'].replace('_', ' ')} variance by default, "
          f"x0_hat {'clipped to [-1, 1]' if defaults['clip'] else 'not clipped'}")
    if info.last_loss is not None:
        print(f"Last loss    {info.last_loss:.5f}" + (f" (mean of last 100: {history[-100:].mean():.5f})" if len(history) else ""))
    if info.dataset:
        paths = ", ".join(info.dataset.get("paths", [])) or "unknown"
        print(f"Dataset      {info.dataset.get('count', '?')} images from {paths}")
    print(f"Variance     {'learned (L_hybrid)' if unet.learned_variance else 'fixed (L_simple)'}")
    print(f"Resumable    {'yes' if info.can_resume else 'no (sampling weights only)'}")
    if info.command:
        print(f"Made by      {info.command}")
    for index, record in enumerate(model_store.evaluations(info)):
        print(f"{'Evaluations' if index == 0 else '':<12} {model_store.describe_evaluation(record)}")
    return 0


# --- import ---------------------------------------------------------------------------------------


def add_import_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "import", help="import a diffusers-format DDPM (e.g. the google/ddpm-* folders) as a model folder",
        description="Import a diffusers-format DDPM from a local folder (config.json at the top or under unet/, "
                    "diffusion_pytorch_model.safetensors or .bin, an optional scheduler_config.json). "
                    "Nothing is downloaded.")
    parser.add_argument("source", type=Path, help="the diffusers folder")
    parser.add_argument("--name", help="model name (default: the source folder's name)")
    parser.add_argument("--out", type=Path, help="model folder to write (default: the user models folder / NAME)")
    parser.set_defaults(handler=run_import)


def run_import(args) -> int:
    from tqdm import tqdm

    from ddpm_studio.core.model.importer import ImportFinished, import_diffusers

    command = shlex.join(["ddpm-studio", *sys.argv[1:]])
    bar = None
    result = None
    for event in import_diffusers(args.source, args.out, args.name, command):
        if isinstance(event, ImportFinished):
            result = event
        elif event.stage == "reading":
            if bar is None:
                bar = tqdm(total=event.total, desc="Reading", unit="tensor", dynamic_ncols=True)
            bar.update(event.done - bar.n)
    if bar is not None:
        bar.close()
    unet = result.info.unet
    print(f"Imported {args.source} ({result.weights_bytes / 2**20:,.0f} MiB in {result.seconds:.1f} s) as {result.path}: "
          f"{unet.image_size}x{unet.image_size}x{unet.image_channels}, sampling variance "
          f"{result.info.sampling_defaults['variance'].replace('_', ' ')}.")
    return 0


# --- bench ----------------------------------------------------------------------------------------


def add_bench_parser(subparsers) -> None:
    from ddpm_studio.core.model.unet import PRESETS
    from ddpm_studio.core.system.bench import BenchSettings
    from ddpm_studio.core.system.devices import PRECISIONS

    default = BenchSettings()

    parser = subparsers.add_parser("bench", help="measure training and sampling speed on this device")
    parser.add_argument("--preset", default=default.preset, choices=list(PRESETS))
    parser.add_argument("--image-size", type=int, help="resolution (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--train-steps", type=int, default=default.train_steps, help="timed training steps (after 3 warm-up)")
    parser.add_argument("--sample-steps", type=int, default=default.sample_steps,
                        help="timed sampling model calls (after 2 warm-up)")
    parser.add_argument("--precision", choices=PRECISIONS, default=default.precision)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-num", type=int, default=1000, help="also cost one train --eval-num N KID measurement "
                        "(default 1000; 0: skip)")
    parser.add_argument("--inception-weights", type=Path, help="the FID Inception weights file (default: torch's cache)")
    parser.add_argument("--bf16-vs-fp32", action="store_true",
                        help="instead: bf16 autocast against float32 (speed-up, loss curves, samples of --model)")
    parser.add_argument("--model", help="with --bf16-vs-fp32: the trained model to sample (default: the demo model)")
    parser.set_defaults(handler=run_bench)


def run_bench(args) -> int:
    from ddpm_studio.core.system.bench import BenchSettings, run_benchmark

    check_device(args.device)
    settings = BenchSettings(args.preset, args.image_size, args.batch_size, args.train_steps, args.sample_steps,
                             args.precision, args.compile, args.device, args.eval_num, args.inception_weights)
    if args.bf16_vs_fp32:
        from ddpm_studio.core.system.bench import compare_bf16

        lines = compare_bf16(settings, resolve_model_path(args.model) if args.model else None)
    else:
        lines = run_benchmark(settings)
    for line in lines:
        print(line, flush=True)
    return 0


# --- doctor ---------------------------------------------------------------------------------------


def add_doctor_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check this machine: versions, devices, bf16, NCCL, the GPU paths' correctness, speed",
        description="Check this machine in a few minutes: what it has, whether bf16, channels_last, torch.compile "
                    "and NCCL compute what they should (same seeds, stated tolerances), and how fast training and "
                    "sampling run. Checks that cannot run here are reported as skipped.")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a first look in seconds")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args) -> int:
    import json

    from ddpm_studio.core.atomic import write_bytes_atomic
    from ddpm_studio.core.system.doctor import FAILED, DoctorReport, DoctorSettings
    from ddpm_studio.core.system.doctor import run_doctor as doctor

    check_device(args.device)
    if args.json_path is not None and args.json_path.is_dir():
        fail(f"--json {args.json_path} is a folder; give a file name.")
    report = DoctorReport()
    for line in doctor(DoctorSettings(device=args.device, quick=args.quick), report):
        print(line, flush=True)
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.json_path, (json.dumps(report.to_json(), indent=2) + "\n").encode())
        print(f"Wrote {args.json_path}")
    return 1 if any(check.status == FAILED for check in report.checks) else 0


# --- cache ------------------------------------------------------------------------------------------


def add_cache_parser(subparsers) -> None:
    parser = subparsers.add_parser("cache", help="list or clear the decoded-dataset cache",
                                   description="Training decodes an image folder once into the cache; later runs map it. "
                                               "Set DDPM_STUDIO_CACHE to move the cache folder.")
    parser.add_argument("action", choices=("list", "clear"), help="list: show the entries; clear: remove them all")
    parser.set_defaults(handler=run_cache)


def run_cache(args) -> int:
    from ddpm_studio.core.data.cache import cache_dir, clear_cache, list_cache_entries
    from ddpm_studio.core.training.memory import format_bytes

    if args.action == "clear":
        count, size = clear_cache()
        print(f"Removed {count} cached dataset{'s' if count != 1 else ''} ({format_bytes(size)}) from {cache_dir()}.")
        return 0
    entries = list_cache_entries()
    print(f"Dataset cache: {cache_dir()}")
    for entry in entries:
        print(f"  {entry.path.name}  {format_bytes(entry.size_bytes):>9}  {entry.description}")
    if not entries:
        print("  (empty)")
    else:
        print(f"{len(entries)} entr{'ies' if len(entries) != 1 else 'y'}, {format_bytes(sum(e.size_bytes for e in entries))}.")
    return 0



# --- demo-data -------------------------------------------------------------------------------------


def add_demo_parser(subparsers) -> None:
    from ddpm_studio.core.data.demo import DEFAULT_DEMO_COUNT, DEFAULT_DEMO_SIZE

    parser = subparsers.add_parser("demo-data", help="write the procedural demo dataset of coloured shapes")
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--count", type=int, default=DEFAULT_DEMO_COUNT, help=f"number of images (default {DEFAULT_DEMO_COUNT})")
    parser.add_argument("--size", type=int, default=DEFAULT_DEMO_SIZE, help=f"image size (default {DEFAULT_DEMO_SIZE})")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_demo_data)


def run_demo_data(args) -> int:
    from tqdm import tqdm

    from ddpm_studio.core.data.demo import DemoDataset, write_demo_dataset

    count = args.count
    if count < 1 or args.size < 8:
        fail("The demo dataset needs at least 1 image of at least 8 pixels.")
    bar = None
    paths: list[Path] = []
    try:
        for event in write_demo_dataset(args.out, count, args.size, args.seed):
            if isinstance(event, DemoDataset):
                paths = event.paths
                continue
            if bar is None:  # opened at the first image, so that a refused folder prints only its error
                bar = tqdm(total=event.total, unit="img", desc="Drawing shapes")
            bar.update(event.done - bar.n)
    finally:
        if bar is not None:
            bar.close()
    print(f"Wrote {len(paths)} images to {args.out}")
    return 0


# --- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-studio",
        description="DDPM Studio: train Denoising Diffusion Probabilistic Models on your images and watch them work. "
                    "With no command it opens the studio window.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_parser(subparsers)
    add_sample_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_info_parser(subparsers)
    add_bench_parser(subparsers)
    add_doctor_parser(subparsers)
    add_demo_parser(subparsers)
    add_import_parser(subparsers)
    add_cache_parser(subparsers)
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        from ddpm_studio.gui.app import run_app

        return run_app()
    try:
        return args.handler(args)
    except (UserError, OSError) as error:  # a programming error is not caught: its traceback is the report
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, OSError) and error.filename:
            message = f"{error.strerror or message}: {error.filename}"
        print(f"ddpm-studio: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ddpm-studio: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

"""What each command accepts: the argparse definitions of every command, which import nothing of the engine, so
that ``--help``, ``--version`` and ``COMMAND --help`` answer at once. A bad command line is one line, too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ddpm_studio import __version__
from ddpm_studio.cli import choices
from ddpm_studio.cli.reporting import ERROR_PREFIX, EXIT_USER_ERROR
from ddpm_studio.core.training.setting import micro_batch_value  # torch-free, like this module

MODEL_HELP = "model folder, or the name of a model in the library"
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
INCEPTION_WEIGHTS_HELP = "the FID Inception weights file (default: torch's cache)"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose every complaint is one line that names the option, then points to ``--help``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # the top-level parser's, by command name

    def error(self, message: str):
        message = " ".join(message.split())
        self.exit(EXIT_USER_ERROR, f"{ERROR_PREFIX}{message}; see '{self.prog} --help'.\n")


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not '{text}'") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not '{text}'") from None


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


# --- train ----------------------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    default = choices.TRAINING_DEFAULTS
    parser.add_argument("data", nargs="?", type=Path, help="folder of images (optional with --resume: the model's own)")
    parser.add_argument("--out", type=Path, help="model folder to write (default: the user models folder / NAME)")
    parser.add_argument("--name", help="model name when --out is not given (default: the data folder's name)")
    parser.add_argument("--resume", action="store_true", help="continue the model in --out where it stopped")
    parser.add_argument("--init-from", type=Path, metavar="MODEL",
                        help="start a new run from this model's EMA weights (a fine-tune: its architecture and "
                             "schedule, a new optimizer, a folder of its own)")
    parser.add_argument("--preset", choices=choices.PRESETS, help=f"architecture preset (default: {default['preset']})")
    parser.add_argument("--image-size", type=whole_number, help="training resolution (default: the preset's)")
    parser.add_argument("--channels", type=whole_number, choices=choices.IMAGE_CHANNELS, dest="image_channels",
                        help=f"3 for colour, 1 for grayscale (default {default['image_channels']})")
    parser.add_argument("--batch-size", type=whole_number, help="global batch size (default: the preset's)")
    parser.add_argument("--lr", type=number, dest="learning_rate", help="Adam learning rate (default: the preset's)")
    parser.add_argument("--steps", type=whole_number, help=f"total training steps (default {default['steps']})")
    parser.add_argument("--warmup", type=whole_number, dest="warmup_steps", help="learning-rate warm-up steps")
    parser.add_argument("--ema", type=number, dest="ema_decay",
                        help=f"EMA decay (default {default['ema_decay']}, with warm-up)")
    parser.add_argument("--dropout", type=number, help="dropout (default: the preset's)")
    parser.add_argument("--variance", choices=choices.TRAINING_VARIANCES,
                        help="fixed: L_simple (default); learned: also learn sigma_t^2 with L_hybrid "
                             "(Nichol & Dhariwal)")
    parser.add_argument("--schedule", choices=choices.SCHEDULE_KINDS,
                        help=f"noise schedule (default {default['schedule']})")
    parser.add_argument("--timesteps", type=whole_number, dest="num_timesteps",
                        help=f"diffusion steps T (default {default['num_timesteps']})")
    parser.add_argument("--checkpoint-every", type=whole_number,
                        help=f"steps between checkpoints (default {default['checkpoint_every']})")
    parser.add_argument("--preview-every", type=whole_number,
                        help=f"steps between preview grids (default {default['preview_every']})")
    parser.add_argument("--preview-count", type=whole_number,
                        help=f"images in a preview grid (default {default['preview_count']}; 0 for none)")
    parser.add_argument("--log-every", type=whole_number,
                        help="steps between loss read-backs (default: 1 on CPU, 20 on GPU)")
    parser.add_argument("--seed", type=whole_number, help=f"random seed (default {default['seed']})")
    parser.add_argument("--precision", choices=choices.PRECISIONS,
                        help=f"default {default['precision']}: bf16 where the GPU or CPU has it natively, else fp32")
    parser.add_argument("--no-flip", action="store_const", const=False, dest="random_flip",
                        help="turn off random horizontal flips")
    parser.add_argument("--compile", action="store_const", const=True, help="torch.compile the model (CUDA)")
    parser.add_argument("--accumulate", type=whole_number, metavar="N",
                        help="reach the batch in N micro-batches per step (gradient accumulation; default 1)")
    parser.add_argument("--micro-batch", type=micro_batch_value, metavar="M|auto",
                        help="largest micro-batch in images per process; auto: the largest the memory estimate fits "
                             "on the device")
    parser.add_argument("--checkpoint-activations", action="store_const", const=True,
                        help="recompute the residual blocks' activations in the backward pass: less memory, "
                             "more compute")
    parser.add_argument("--classes", action="store_const", const=True,
                        help="condition on the dataset's class subfolders (a class-conditional model that is also "
                             "unconditional, for guided sampling)")
    parser.add_argument("--label-dropout", type=number, metavar="P",
                        help="with --classes: the share of labels dropped to the null label (default 0.1)")
    parser.add_argument("--tensorboard", type=Path, metavar="DIR",
                        help="also log loss, learning rate, images/s and previews to TensorBoard in DIR "
                             "(needs the 'tensorboard' extra)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode the images into memory instead of the dataset cache (see 'ddpm-studio cache')")
    add_device_option(parser)
    parser.add_argument("--force", action="store_true",
                        help="start even when the memory estimate exceeds what the device has available")
    parser.add_argument("--eval-every", type=whole_number,
                        help="steps between KID measurements of the EMA weights (default 0: none)")
    parser.add_argument("--eval-num", type=whole_number,
                        help="EMA samples (DDIM 50) per KID measurement (default 1000)")
    parser.add_argument("--inception-weights", type=Path, help=INCEPTION_WEIGHTS_HELP)
    parser.add_argument("--feature-extractor", help=argparse.SUPPRESS)  # the tests' stand-in


# --- sample and evaluate --------------------------------------------------------------------------


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """The sampler options shared by sample and evaluate."""
    default = choices.SAMPLING_DEFAULTS
    parser.add_argument("--seed", type=whole_number, default=default["seed"],
                        help=f"random seed (default {default['seed']})")
    # The command line defaults to the fast sampler; the window starts from the paper's.
    parser.add_argument("--sampler", choices=choices.SAMPLERS, default="ddim",
                        help="ddpm: ancestral (every step, or --steps respaced); ddim (default): --steps; "
                             "dpm-solver++: --steps model calls (10 to 25)")
    parser.add_argument("--steps", type=whole_number,
                        help=f"reverse steps (default: {default['steps']} for DDIM, {choices.SOLVER_STEPS} for "
                             "DPM-Solver++; every timestep for DDPM, fewer respaces the process)")
    parser.add_argument("--spacing", choices=choices.SOLVER_SPACINGS, default=choices.SOLVER_SPACINGS[0],
                        help="DPM-Solver++'s timesteps: logsnr (default, uniform in log-SNR) or linspace (diffusers')")
    parser.add_argument("--eta", type=number, default=default["eta"],
                        help=f"DDIM eta in [0, 1] (default {default['eta']:g})")
    parser.add_argument("--variance", choices=choices.SAMPLING_VARIANCES,
                        help="DDPM variance: beta_t (large), beta~_t (small) or the model's learned one "
                             "(default: learned if the model learned it, else fixed_large)")
    parser.add_argument("--no-clip", action="store_true", help="don't clip x0_hat to [-1, 1]")


def add_class_options(parser: argparse.ArgumentParser, all_classes: bool = True) -> None:
    """A class-conditional model's class and classifier-free guidance weight."""
    parser.add_argument("--class", dest="class_choice", metavar="NAME|INDEX",
                        help="class-conditional models: generate this class")
    if all_classes:
        parser.add_argument("--all-classes", action="store_true",
                            help="class-conditional models: a grid with one row of --num images per class")
    parser.add_argument("--guidance", type=number, default=0.0, metavar="W",
                        help="guidance weight w in [0, 10]: (1 + w) eps(x_t, c) - w eps(x_t, null) (default 0)")


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    default = choices.SAMPLING_DEFAULTS
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--num", type=whole_number, default=default["num_images"],
                        help=f"number of images (default {default['num_images']})")
    add_sampler_options(parser)
    parser.add_argument("--precision", choices=choices.PRECISIONS, default="auto",
                        help="auto (default): bf16 autocast where the GPU or CPU has it natively, else fp32")
    parser.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default ./samples)")
    add_class_options(parser)
    parser.add_argument("--trajectory", choices=choices.TRAJECTORY_KINDS, action="append",
                        help="also save the trajectory of the first image (repeatable)")
    add_device_option(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("data", nargs="?", type=Path,
                        help="folder of images: held-out images for --nll; the reference for FID and KID "
                             "(default: the model's own dataset)")
    parser.add_argument("--nll", action="store_true",
                        help="negative log-likelihood bound L_0 + sum L_t-1 + L_T in bits/dim, with its standard error")
    parser.add_argument("--rate-distortion", action="store_true",
                        help="rate (bits/dim) and distortion (RMSE of x0_hat) along the reverse chain, as the "
                             "paper's Table 4, with three PNG plots; shares one pass with --nll")
    parser.add_argument("--figures", type=Path,
                        help="--rate-distortion: folder for the PNG plots (default: the model folder)")
    parser.add_argument("--fid", action="store_true", help="Fréchet Inception Distance of samples (lower is better)")
    parser.add_argument("--kid", action="store_true", help="Kernel Inception Distance, mean ± std over subsets")
    parser.add_argument("--is", action="store_true", dest="inception_score", help="Inception Score (higher is better)")
    parser.add_argument("--guidance", type=number, default=0.0, metavar="W",
                        help="class-conditional models: guidance weight of the samples, which follow the dataset's "
                             "class mix (default 0)")
    parser.add_argument("--memorization", action="store_true",
                        help="does it copy its training images? nearest-training-image distances of --num "
                             "samples against those of the held-out images DATA, a copies count, the closest pairs")
    parser.add_argument("--training-images", type=Path, action="append", metavar="FOLDER",
                        help="--memorization: the training images, where model.json records no folder (the "
                             "procedural demo data) or the folder has moved; may be repeated")
    parser.add_argument("--num", type=whole_number,
                        help=f"samples to draw: FID/KID/IS (default {choices.QUALITY_SAMPLES}; FID wants 2048 or "
                             f"more), --memorization (default {choices.MEMORIZATION_SAMPLES})")
    parser.add_argument("--num-images", type=whole_number, default=64,
                        help="NLL: images to evaluate, picked with --seed (default 64)")
    parser.add_argument("--timesteps", default="all",
                        help="NLL: 'all' T terms per image, or K for an unbiased estimate from K random t "
                             "(default all)")
    add_sampler_options(parser)  # --variance and --no-clip serve the NLL's reverse process too
    parser.add_argument("--batch-size", type=whole_number,
                        help="images per model call (default: 32 for NLL, 100 for samples)")
    parser.add_argument("--no-record", action="store_true", help="don't append the results to model.json")
    add_device_option(parser)
    parser.add_argument("--inception-weights", type=Path, help=INCEPTION_WEIGHTS_HELP)
    parser.add_argument("--against", choices=choices.LIBRARY_REFERENCES,
                        help="compare with torch-fidelity's cached CIFAR-10 training set instead of a folder")
    parser.add_argument("--feature-extractor", default=choices.INCEPTION, help=argparse.SUPPRESS)  # the tests' stand-in


# --- explore: the paper's experiments --------------------------------------------------------------


def step_list(text: str) -> list[int]:
    """A comma-separated list of whole numbers, like 1000,750,500,250."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, not '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one whole number, not '{text}'")
    return values


def add_explore_sampler_options(parser: argparse.ArgumentParser, steps_option: str, default: dict) -> None:
    """``sample``'s sampler options, with the paper's DDPM as the default sampler."""
    eta = default["eta"]
    parser.add_argument("--seed", type=whole_number, default=default["seed"],
                        help=f"random seed (default {default['seed']})")
    parser.add_argument("--sampler", choices=choices.SAMPLERS, default=default["sampler"],
                        help="ddpm (default): ancestral, every step or respaced; ddim: with eta")
    parser.add_argument(steps_option, type=whole_number, dest="sampler_steps",
                        help="reverse steps: DDPM respaced to this many (default: every timestep); "
                             f"DDIM (default {choices.SAMPLING_DEFAULTS['steps']}); DPM-Solver++ model calls")
    parser.add_argument("--eta", type=number, default=eta, help=f"DDIM eta in [0, 1] (default {eta:g})")
    parser.add_argument("--variance", choices=choices.SAMPLING_VARIANCES,
                        help="DDPM variance (default: learned if the model learned it, else fixed_large)")
    parser.add_argument("--no-clip", action="store_true", help="don't clip x0_hat to [-1, 1]")
    parser.add_argument("--precision", choices=choices.PRECISIONS, default="auto",
                        help="auto (default): bf16 autocast where the GPU or CPU has it natively, else fp32")
    add_device_option(parser)


def add_branch_arguments(parser: argparse.ArgumentParser) -> None:
    default = choices.BRANCH_DEFAULTS
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--at", type=step_list, metavar="T1,T2,...",
                        help="branch steps t, decreasing, in 1..T (default: the paper's 1000,750,500,250 scaled "
                             "to the model's T)")
    parser.add_argument("--num", type=whole_number, default=default["num"],
                        help=f"continuations per step (default {default['num']})")
    parser.add_argument("--image", type=whole_number, default=default["image"],
                        help="the shared chain is image I of a sample batch of --batch-size from --seed "
                             f"(default {default['image']})")
    parser.add_argument("--batch-size", type=whole_number, default=default["batch_size"],
                        help=f"the size of that batch, as 'sample --num' made it (default {default['batch_size']})")
    add_explore_sampler_options(parser, "--steps", default)
    parser.add_argument("--out", type=Path, default=Path("branching"), help="output folder (default ./branching)")
    add_class_options(parser, all_classes=False)


def add_interpolate_arguments(parser: argparse.ArgumentParser) -> None:
    default = choices.INTERPOLATION_DEFAULTS
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("a", type=Path, help="the first picture")
    parser.add_argument("b", type=Path, help="the second picture")
    parser.add_argument("--t", type=step_list, metavar="T[,T...]",
                        help="the step t in 0..T to mix at (default T/2, the paper's 500 of 1000); several, like "
                             "0,250,500,750,1000, give the paper's Fig. 9")
    parser.add_argument("--steps", type=whole_number, default=default["steps"],
                        help=f"values of lambda, evenly from 0 to 1 (default {default['steps']})")
    add_explore_sampler_options(parser, "--sampler-steps", default)
    parser.add_argument("--out", type=Path, default=Path("interpolation"),
                        help="output folder (default ./interpolation)")


def add_explore_arguments(parser: argparse.ArgumentParser) -> None:
    experiments = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    branch = experiments.add_parser(
        "branch", help="branch N continuations from a shared x_t at several steps (the paper's Fig. 7)",
        description="Run one reverse chain and, at each step t of --at, branch it into --num continuations to x_0, "
                    "each with its own noise. Writes each continuation, a grid per step, branching.png (one row per "
                    "step: x_t, x0_hat, the continuations) and branching.json (the spread and how much is decided).")
    add_branch_arguments(branch)
    interpolate = experiments.add_parser(
        "interpolate", help="interpolate two pictures in x_t with the noise fixed (the paper's Figs. 8 and 9)",
        description="Encode A and B with one noise draw at step t, mix them for each lambda and run the reverse "
                    "process from t with one noise stream for every lambda. Writes each frame, the strip "
                    "interpolation.png (one row per t) and an animation over lambda.")
    add_interpolate_arguments(interpolate)


# --- the other commands ---------------------------------------------------------------------------


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="the diffusers folder")
    parser.add_argument("--name", help="model name (default: the source folder's name)")
    parser.add_argument("--out", type=Path, help="model folder to write (default: the user models folder / NAME)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("out", type=Path, help="folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace what OUT holds")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    default = choices.BENCH_DEFAULTS
    parser.add_argument("--preset", default=default["preset"], choices=choices.PRESETS)
    parser.add_argument("--image-size", type=whole_number, help="resolution (default: the preset's)")
    parser.add_argument("--batch-size", type=whole_number, default=default["batch_size"])
    parser.add_argument("--train-steps", type=whole_number, default=default["train_steps"],
                        help="timed training steps (after 3 warm-up)")
    parser.add_argument("--sample-steps", type=whole_number, default=default["sample_steps"],
                        help="timed sampling model calls (after 2 warm-up)")
    parser.add_argument("--precision", choices=choices.PRECISIONS, default=default["precision"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-num", type=whole_number, default=default["eval_num"],
                        help=f"also cost one train --eval-num N KID measurement (default {default['eval_num']}; "
                             "0: skip)")
    parser.add_argument("--inception-weights", type=Path, help=INCEPTION_WEIGHTS_HELP)
    parser.add_argument("--bf16-vs-fp32", action="store_true",
                        help="instead: bf16 autocast against float32 (speed-up, loss curves, samples of --model)")
    parser.add_argument("--model", help="with --bf16-vs-fp32: the trained model to sample (default: the demo model)")


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the results as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a first look in seconds")
    add_device_option(parser)


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "clear"), help="list: show the entries; clear: remove them all")


def add_demo_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--count", type=whole_number, default=choices.DEMO_COUNT,
                        help=f"number of images (default {choices.DEMO_COUNT})")
    parser.add_argument("--size", type=whole_number, default=choices.DEMO_SIZE,
                        help=f"image size (default {choices.DEMO_SIZE})")
    parser.add_argument("--seed", type=whole_number, default=0)
    parser.add_argument("--classes", action="store_true",
                        help="one subfolder per shape (circle, square, triangle): a labelled dataset for "
                             "train --classes")


# --- the command line -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, its help, its arguments, and the module under ``ddpm_studio.cli`` whose
    ``run(args)`` carries it out."""

    name: str
    module: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    description: str | None = None


COMMANDS = (
    Command("train", "train", "train a model on a folder of images", add_train_arguments,
            "Train a DDPM on a folder of images. Under torchrun it uses every process."),
    Command("sample", "sample", "generate images from a trained model", add_sample_arguments),
    Command("evaluate", "evaluate",
            "measure a model: the likelihood bound (--nll) and sample quality (--fid --kid --is)",
            add_evaluate_arguments,
            "Measure a model and record the results in its model.json. --nll: the variational bound in bits/dim on "
            "held-out images in DATA. --fid, --kid, --is: the model's samples against DATA (default: the model's own "
            "dataset) through torch-fidelity's FID Inception (pip install -e \".[eval]\")."),
    Command("info", "info", "describe a trained model", add_info_arguments),
    Command("bench", "bench", "measure training and sampling speed on this device", add_bench_arguments),
    Command("doctor", "doctor", "check this machine: versions, devices, bf16, NCCL, the GPU paths' correctness, speed",
            add_doctor_arguments,
            "Check this machine in a few minutes: what it has, whether bf16, channels_last, torch.compile and NCCL "
            "compute what they should (same seeds, stated tolerances), and how fast training and sampling run. "
            "Checks that cannot run here are reported as skipped."),
    Command("demo-data", "demo_data", "write the procedural demo dataset of coloured shapes", add_demo_data_arguments),
    Command("import", "import_diffusers",
            "import a diffusers-format DDPM (e.g. the google/ddpm-* folders) as a model folder", add_import_arguments,
            "Import a diffusers-format DDPM from a local folder (config.json at the top or under unet/, "
            "diffusion_pytorch_model.safetensors or .bin, an optional scheduler_config.json). Nothing is downloaded."),
    Command("export", "export", "export a model in diffusers' format (DDPMPipeline.from_pretrained loads it)",
            add_export_arguments,
            "Write a model's EMA weights and schedule as a diffusers DDPMPipeline folder (model_index.json, unet/, "
            "scheduler/), written whole or not at all."),
    Command("explore", "explore", "the paper's experiments: branch (Fig. 7) and interpolate (Figs. 8 and 9)",
            add_explore_arguments,
            "The paper's experiments on any model: 'explore branch' shows how much of a sample is decided at step t, "
            "'explore interpolate' mixes two pictures in x_t."),
    Command("cache", "cache", "list or clear the decoded-dataset cache", add_cache_arguments,
            "Training decodes an image folder once into the cache; later runs map it. Set DDPM_STUDIO_CACHE to move "
            "the cache folder."),
)
COMMANDS_BY_NAME = {command.name: command for command in COMMANDS}


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="ddpm-studio",
        description="DDPM Studio: train Denoising Diffusion Probabilistic Models on your images and watch them work. "
                    "With no command it opens the studio window.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command_parser = subparsers.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(command_parser)
        parser.commands[command.name] = command_parser
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed arguments; a bad command line exits with one line about the command it concerns."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        concerned = parser.commands.get(args.command, parser)
        concerned.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args

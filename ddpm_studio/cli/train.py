"""``ddpm-studio train``: plan the run (new, resumed or a fine-tune), check that it fits in memory, then follow
its events with a progress bar. Ctrl-C stops between two steps; the trainer saves a checkpoint as it stops."""

from __future__ import annotations

import sys

from tqdm import tqdm

from ddpm_studio.cli.common import StopRequest, check_device, command_line, resolve_model_path
from ddpm_studio.cli.reporting import EXIT_INTERRUPTED, fail, warn
from ddpm_studio.core.data.cache import CacheMessage
from ddpm_studio.core.data.folders import ScanProgress, ScanResult
from ddpm_studio.core.evaluation.quality import EvaluationProgress
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.training import events as training
from ddpm_studio.core.training.config import (
    TRAINING_SETTINGS,
    TrainingConfig,
    chosen_settings,
    overrides_from_arguments,
)
from ddpm_studio.core.training.distributed import distributed_context
from ddpm_studio.core.training.fine_tune import check_fine_tune_request
from ddpm_studio.core.training.plan import model_name_for, plan_new_run, plan_resume
from ddpm_studio.core.training.run_memory import check_memory
from ddpm_studio.core.training.tensorboard_log import TensorBoardLog


def run(args) -> int:
    check_device(args.device)
    context = distributed_context(args.device)
    overrides = overrides_from_arguments(args)
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
        config = fine_tune_config(args, overrides) if args.init_from else new_run_config(args, overrides)
        out_dir = args.out or model_store.default_user_models_dir() / (args.name or model_name_for([args.data]))
        plan = plan_new_run(config, out_dir, data)
    memory = check_memory(plan.config, args.device, context)
    if not memory.fits:
        if not args.force:
            ways = ("Split the batch (--micro-batch auto, or --accumulate N: a resumed run keeps its batch size)"
                    if args.resume else "Lower --batch-size, split it (--accumulate N, --micro-batch auto)")
            fail(f"{memory.explain()} {ways}, or add --force to try anyway.")
        if context.is_main:
            warn(f"{memory.explain()} Going on (--force).")
    return follow(plan, args, context)


def new_run_config(args, overrides: dict) -> TrainingConfig:
    default = TrainingConfig()
    return TrainingConfig.for_preset(args.preset or default.preset,
                                     image_channels=args.image_channels or default.image_channels, **overrides)


def fine_tune_config(args, overrides: dict) -> TrainingConfig:
    """The config of a run that starts from --init-from's weights; options that would change its network are refused."""
    source = model_store.read_model_info(resolve_model_path(str(args.init_from)))
    check_fine_tune_request(TRAINING_SETTINGS, source, chosen_settings(args), f"--init-from {args.init_from}")
    return TrainingConfig.for_fine_tune(source, **overrides)


def follow(plan, args, context) -> int:
    """Run the plan's events to the end, printing what the user should see (on the main process only)."""
    main_process = context.is_main
    config, out_dir = plan.config, plan.out_dir
    tensorboard = None
    if args.tensorboard and main_process:
        tensorboard = TensorBoardLog(args.tensorboard)  # a missing package is reported before any work starts
    # Under torchrun a Ctrl-C reaches every process twice (the terminal's, then torchrun's own):
    # the trainer stops all ranks together, so a repeat must not interrupt one of them alone.
    stop = StopRequest(interrupt_on_repeat=not context.enabled)
    plan.use_cache = not args.no_cache
    events = plan.events(command=command_line(), device=args.device, stop_requested=lambda: stop.requested,
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
                    print_scan(event, config.image_size, plan.data_paths, config.classes)
            elif isinstance(event, training.StartedEvent):
                if main_process:
                    print(f"Training {out_dir} on {event.device} ({event.dtype}), {event.parameters:,} parameters, "
                          f"from step {event.step} to {event.total_steps}.")
                bar = tqdm(total=event.total_steps, initial=event.step, unit="step", disable=not main_process,
                           dynamic_ncols=True)
                stop.install()  # from here on, Ctrl-C stops between two steps, never inside one
            elif isinstance(event, training.StepEvent):
                bar.update(event.step - bar.n)
                if event.losses:
                    recent_loss = event.loss
                    postfix = {"loss": f"{event.loss:.4f}", "lr": f"{event.learning_rate:.2e}"}
                    if event.images_per_second:
                        postfix["img/s"] = f"{event.images_per_second:.1f}"
                    bar.set_postfix(postfix, refresh=False)
            elif isinstance(event, training.PreviewEvent) and event.path:
                bar.write(f"step {event.step}: preview saved to {event.path}")
            elif isinstance(event, EvaluationProgress):
                if main_process and event.done == event.total:
                    print(f"Dataset features for KID: {event.total} images.", flush=True)
            elif isinstance(event, training.EvaluationEvent):
                loss_text = f"loss {recent_loss:.4f}, " if recent_loss is not None else ""
                bar.write(f"step {event.step}: {loss_text}KID {event.value:.4g} ± {event.std:.2g} "
                          f"({event.n} EMA samples, DDIM)")
            elif isinstance(event, training.FinishedEvent):
                bar.close()
                if event.stopped:
                    if main_process:
                        print(f"Stopped after step {event.step}; the model in {out_dir} is saved and can be resumed "
                              "with --resume.", file=sys.stderr)
                    return EXIT_INTERRUPTED
                if main_process:
                    print(f"Finished {event.step} steps. Model saved in {event.path}")
            elif isinstance(event, training.FailedEvent):
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


def print_scan(result: ScanResult, image_size: int, data_paths, classes: bool = False) -> None:
    ignored = len(result.ignored)
    print(f"{len(result.images)} images at {image_size}x{image_size} from {', '.join(map(str, data_paths))}; "
          f"{len(result.skipped)} skipped"
          + (f"; {ignored} other file{'s' if ignored != 1 else ''} ignored (not images)." if ignored else "."))
    for skipped in result.skipped[:10]:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    if len(result.skipped) > 10:
        print(f"  ... and {len(result.skipped) - 10} more")
    if result.labels is not None:
        print(result.describe_classes() + ("" if classes else " Add --classes to condition on them."))

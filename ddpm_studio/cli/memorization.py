"""``ddpm-studio evaluate --memorization``: does the model copy its training images? Nearest-training-image
distances of N samples against those of held-out images, by pixels and (where the FID Inception weights are) by
its pool features, a copies count, a grid of the closest pairs; the result is recorded in model.json."""

from __future__ import annotations

import sys
from pathlib import Path

from ddpm_studio.cli.common import PhaseBars, StopRequest
from ddpm_studio.cli.reporting import EXIT_INTERRUPTED, fail
from ddpm_studio.core.data.cache import CachedScanResult
from ddpm_studio.core.evaluation.memorization import (
    DEFAULT_SAMPLES,
    FeatureSpace,
    MemorizationProgress,
    MemorizationResult,
    feature_extractor_if_there,
    feature_space_name,
    memorization_of_model,
    pixels_only_note,
    save_closest_pairs,
)
from ddpm_studio.core.evaluation.metrics import INCEPTION
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.sampling.job import SamplingRequest
from ddpm_studio.core.system.devices import choose_device
from ddpm_studio.core.timestamps import now_iso

GRID_FILE = "memorization.png"
MAX_SAMPLES = 100_000


def sampling_template(args, model) -> SamplingRequest:
    """The sampler of ``evaluate``'s options, as FID's samples are drawn."""
    variance = args.variance or ("learned" if model.info.unet.learned_variance else "fixed_large")
    steps = args.steps
    if steps is None and args.sampler != "ddpm":
        steps = 20 if args.sampler == "dpm-solver++" else 50
    return SamplingRequest(num_images=1, seed=args.seed, sampler=args.sampler, steps=steps or 50, eta=args.eta,
                           spacing=args.spacing, variance=variance,
                           ddpm_steps=args.steps if args.sampler == "ddpm" else None, clip=not args.no_clip,
                           device=args.device, keep_trajectory_of=[])


def report_memorization(args, model_path: Path, model) -> int:
    if args.data is None:
        fail("--memorization needs a folder of held-out images as DATA (images the model was not trained on).")
    num = args.num or DEFAULT_SAMPLES
    if not 1 <= num <= MAX_SAMPLES:
        fail(f"--num must be between 1 and {MAX_SAMPLES:,} for --memorization, not {num}.")
    template = sampling_template(args, model)
    template.validate()
    device = choose_device(args.device)
    batch_size = args.batch_size or 100
    extractor_name = args.feature_extractor or INCEPTION
    extractor, why = feature_extractor_if_there(extractor_name, device, args.inception_weights)
    features = None
    if extractor is None:
        print(pixels_only_note(why))
    else:
        features = FeatureSpace(extractor, feature_space_name(extractor_name), batch_size=batch_size, device=device)
        print(f"Nearest neighbours by pixels and by {features.name}.")
    events = memorization_of_model(model, [args.data], template, num, batch_size, device, features=features,
                                   training_folders=args.training_images)
    bars = PhaseBars(quiet_reading=True)
    training = None
    result = None
    stop = StopRequest()
    stop.install()
    try:
        for event in events:
            if stop.requested:
                raise KeyboardInterrupt
            if isinstance(event, MemorizationProgress):
                bars.show(event.phase, event.done, event.total)
                result = event.partial or result
            elif isinstance(event, CachedScanResult):
                training = event
            elif isinstance(event, MemorizationResult):
                result = event
    except KeyboardInterrupt:
        events.close()
        bars.close()
        if result is None:
            print("Stopped; nothing was recorded.", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"Stopped after {len(result.pixels.sample_distances)} of {num} samples; the report covers those.",
              file=sys.stderr)
    finally:
        stop.uninstall()
        events.close()
        bars.close()
    for line in result.report_lines():
        print(line)
    folder = args.figures if getattr(args, "figures", None) else model_path
    folder.mkdir(parents=True, exist_ok=True)
    grid = save_closest_pairs(result, training.mapping, folder / GRID_FILE)
    print(f"Closest pairs by pixels (sample | nearest training image): {grid}")
    if not args.no_record:
        record = {**result.record(), "n": len(result.pixels.sample_distances), "sampler": template.describe(),
                  "data": str(args.data),
                  **({"training_images": [str(p) for p in args.training_images]} if args.training_images else {}),
                  "date": now_iso(), "model_step": model.info.step, "grid": str(grid)}
        model_store.append_evaluation(model_path, record)
        print(f"Recorded in {model_path / model_store.CONFIG_FILE}")
    return 0 if result.complete else EXIT_INTERRUPTED

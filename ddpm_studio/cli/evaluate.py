"""``ddpm-studio evaluate``: the likelihood bound (--nll, likelihood.py) and sample quality (--fid, --kid, --is)
of a model, with progress bars; the results are recorded in its model.json unless --no-record."""

from __future__ import annotations

import sys

from ddpm_studio.cli import likelihood, memorization
from ddpm_studio.cli.choices import QUALITY_SAMPLES
from ddpm_studio.cli.common import PhaseBars, StopRequest, check_device, resolve_model_path
from ddpm_studio.cli.reporting import EXIT_INTERRUPTED, fail, warn
from ddpm_studio.core.evaluation.quality import EvaluationProgress, EvaluationRequest, EvaluationResult, run_evaluation
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.sampling.guidance import check_guidance, describe_class_mix
from ddpm_studio.core.system.devices import choose_device


def run(args) -> int:
    metrics = [name for name, on in (("nll", args.nll), ("rd", args.rate_distortion), ("fid", args.fid),
                                     ("kid", args.kid),
                                     ("is", args.inception_score),
                                     ("memorization", args.memorization)) if on]
    if not metrics:
        fail("Choose what to measure: --nll, --rate-distortion, --fid, --kid, --is or --memorization.")
    check_device(args.device)
    model_path = resolve_model_path(args.model)
    quality = tuple(name for name in metrics if name not in ("nll", "rd", "memorization"))
    request = None
    if quality:
        request = EvaluationRequest(
            model_path=model_path, data_paths=[args.data] if args.data else [], against=args.against, metrics=quality,
            num_samples=args.num or QUALITY_SAMPLES, sampler=args.sampler, steps=args.steps, spacing=args.spacing,
            eta=args.eta,
            variance=args.variance,
            clip=not args.no_clip, seed=args.seed, batch_size=args.batch_size or 100, device=args.device,
            feature_extractor=args.feature_extractor, inception_weights=args.inception_weights,
            record=not args.no_record, guidance=args.guidance,
        )
        request.validate()
        check_guidance(args.guidance)
    bound = [name for name in ("nll", "rd") if name in metrics]
    if bound and args.data is None:
        fail(f"--{'nll' if 'nll' in bound else 'rate-distortion'} needs a folder of held-out images as DATA.")
    if bound and not args.data.is_dir():
        fail(f"No folder of images at {args.data}.")
    if request:
        for note in request.warnings():
            warn(note)
    model = model_store.load_model(model_path, choose_device(args.device))
    if bound:
        likelihood.report_bound(args, model_path, model, nll="nll" in bound, rate_distortion="rd" in bound)
    if "memorization" in metrics:
        status = memorization.report_memorization(args, model_path, model)
        if status or not request:
            return status
    if request:
        return report_sample_quality(request, model)
    return 0


def report_sample_quality(request: EvaluationRequest, model) -> int:
    """FID, KID and IS with progress bars; Ctrl-C stops between two sampling steps and records nothing."""
    if request.guidance and not model.info.unet.num_classes:
        fail(f"{model.info.name} is not class-conditional, so it takes no --guidance.")
    mix = describe_class_mix(model.info, request.num_samples, request.guidance)
    if mix:
        print(mix)
    events = run_evaluation(request, model)
    bars = PhaseBars()
    stop = StopRequest()
    stop.install()
    try:
        for event in events:
            if stop.requested:
                raise KeyboardInterrupt
            if isinstance(event, EvaluationProgress):
                bars.show(event.phase, event.done, event.total, event.detail)
            elif isinstance(event, EvaluationResult):
                bars.close()
                if event.reference_from_cache:
                    print(f"Dataset features from the cache: {event.reference}")
                for record in event.records:
                    print(model_store.describe_evaluation(record))
                if request.record:
                    print(f"Recorded in {event.model_path / model_store.CONFIG_FILE}")
    except KeyboardInterrupt:
        events.close()
        bars.close()
        print("Stopped; nothing was recorded.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop.uninstall()
        events.close()
    return 0

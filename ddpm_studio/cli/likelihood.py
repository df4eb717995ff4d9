"""``ddpm-studio evaluate --nll``: the variational bound L_0 + sum L_t-1 + L_T of held-out images in bits/dim,
its terms and its standard error, printed and recorded in the model's model.json."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ddpm_studio.cli.reporting import fail
from ddpm_studio.core.data.folders import ScanProgress, ScanResult
from ddpm_studio.core.evaluation import rate_distortion as rd
from ddpm_studio.core.evaluation.figures import line_plot
from ddpm_studio.core.evaluation.likelihood import LikelihoodProgress, LikelihoodRequest, evaluate_likelihood_of_folder
from ddpm_studio.core.model import store as model_store


def timesteps_per_image(text: str) -> int | None:
    """--timesteps: None for 'all' the T terms, else the number of random t per image."""
    if text == "all":
        return None
    if text.isdigit():
        return int(text)
    fail(f"--timesteps takes 'all' or a number of timesteps per image, not '{text}'.")


def report_bound(args, model_path: Path, model, nll: bool = True, rate_distortion: bool = False) -> None:
    """One likelihood pass; it prints and records the bound (``nll``) and/or the rate-distortion curve."""
    timesteps = timesteps_per_image(args.timesteps)
    request = LikelihoodRequest(args.num_images, timesteps, args.batch_size or 32, args.variance, not args.no_clip,
                                args.seed, args.device)
    bar = None
    result = None
    try:
        for event in evaluate_likelihood_of_folder(model_path, [args.data], request, model):
            if isinstance(event, ScanProgress):
                continue
            if isinstance(event, ScanResult):
                if rate_distortion:
                    rd.check_held_out_images(event, model.image_shape)
                count = len(event.images) if args.num_images is None else min(args.num_images, len(event.images))
                print(f"Evaluating the bound of {model.info.name} on {count} of {len(event.images)} images in "
                      f"{args.data} ({'all' if timesteps is None else timesteps} timesteps per image).")
                if model.info.unet.num_classes:
                    print(f"Note: {rd.NULL_LABEL_NOTE}.")
            elif isinstance(event, LikelihoodProgress):
                if bar is None:
                    bar = tqdm(total=event.total, unit="term", desc="NLL", dynamic_ncols=True)
                bar.update(event.done - bar.n)
            else:
                result = event
    finally:
        if bar is not None:
            bar.close()
    if rate_distortion:
        report_rate_distortion(args, model, result, timesteps)
    if not nll:
        return
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


def report_rate_distortion(args, model, result, timesteps: int | None) -> None:
    """Table 4's line, the three plots as PNGs and the record in model.json."""
    curve = rd.rate_distortion_of(result)
    T = curve.num_timesteps
    print(f"Rate-distortion along the reverse chain (expected rate of the progressive code; T = {T}"
          + ("" if timesteps is None else f"; {timesteps} random t per image, the others interpolated in t") + "):")
    for line in rd.format_table(curve):
        print("  " + line)
    folder = args.figures or model.info.path
    folder.mkdir(parents=True, exist_ok=True)
    steps = curve.reverse_steps
    plots = [
        ("rate_distortion_distortion.png", steps, curve.distortion_rmse, "Distortion along the reverse chain",
         "reverse steps (T - t + 1)", "RMSE of x0_hat [0, 255]"),
        ("rate_distortion_rate.png", steps, curve.rate_bpd, "Expected rate along the reverse chain",
         "reverse steps (T - t + 1)", "rate (bits/dim)"),
        ("rate_distortion_curve.png", curve.rate_bpd, curve.distortion_rmse, "Distortion against rate",
         "rate (bits/dim)", "RMSE of x0_hat [0, 255]"),
    ]
    for name, x, y, title, x_label, y_label in plots:
        line_plot(x, y, title, x_label, y_label, folder / name)
        print(f"Wrote {folder / name}")
    if not args.no_record:
        record = curve.record(str(args.data.resolve()), timesteps, model.info.step, bool(model.info.unet.num_classes))
        model_store.append_evaluation(model.info.path, record)
        print(f"Recorded in {model.info.path / model_store.CONFIG_FILE}")

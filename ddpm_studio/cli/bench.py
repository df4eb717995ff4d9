"""``ddpm-studio bench``: training and sampling speed on this device, or, with --bf16-vs-fp32, what bf16
autocast gains and changes against float32."""

from __future__ import annotations

from ddpm_studio.cli.common import check_device, resolve_model_path
from ddpm_studio.core.system.bench import BenchSettings, compare_bf16, run_benchmark


def run(args) -> int:
    check_device(args.device)
    settings = BenchSettings(args.preset, args.image_size, args.batch_size, args.train_steps, args.sample_steps,
                             args.precision, args.compile, args.device, args.eval_num, args.inception_weights)
    if args.bf16_vs_fp32:
        lines = compare_bf16(settings, resolve_model_path(args.model) if args.model else None)
    else:
        lines = run_benchmark(settings)
    for line in lines:
        print(line, flush=True)
    return 0

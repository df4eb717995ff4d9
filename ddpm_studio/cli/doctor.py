"""``ddpm-studio doctor``: what this machine has, whether its fast paths compute what they should, and how fast
it trains and samples; optionally written as JSON. Exit status 1 when a check failed."""

from __future__ import annotations

import json

from ddpm_studio.cli.common import check_device
from ddpm_studio.cli.reporting import fail
from ddpm_studio.core.atomic import write_bytes_atomic
from ddpm_studio.core.system.doctor import FAILED, DoctorReport, DoctorSettings, run_doctor


def run(args) -> int:
    check_device(args.device)
    if args.json_path is not None and args.json_path.is_dir():
        fail(f"--json {args.json_path} is a folder; give a file name.")
    report = DoctorReport()
    for line in run_doctor(DoctorSettings(device=args.device, quick=args.quick), report):
        print(line, flush=True)
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.json_path, (json.dumps(report.to_json(), indent=2) + "\n").encode())
        print(f"Wrote {args.json_path}")
    return 1 if any(check.status == FAILED for check in report.checks) else 0

"""The command line before any engine runs: ``--help`` and ``--version`` load no torch, numpy or Qt; a bad
option is one line that names it, its allowed values and the command's ``--help``; and the names and defaults
the parser writes down without the engine are the engine's own."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_studio import cli
from ddpm_studio.cli import arguments, choices
from ddpm_studio.cli.reporting import ERROR_PREFIX, error_line
from ddpm_studio.core.data.demo import DEFAULT_DEMO_COUNT, DEFAULT_DEMO_SIZE
from ddpm_studio.core.data.folders import SUPPORTED_CHANNELS
from ddpm_studio.core.diffusion.dpm_solver import DEFAULT_SPACING, DEFAULT_STEPS, SPACINGS
from ddpm_studio.core.diffusion.process import SAMPLERS, VARIANCES
from ddpm_studio.core.diffusion.schedule import SCHEDULE_KINDS
from ddpm_studio.core.errors import UserError, describe_os_error
from ddpm_studio.core.evaluation.memorization import DEFAULT_SAMPLES as MEMORIZATION_SAMPLES
from ddpm_studio.core.evaluation.metrics import INCEPTION
from ddpm_studio.core.evaluation.quality import LIBRARY_REFERENCES, EvaluationRequest
from ddpm_studio.core.explore.branching import BranchRequest
from ddpm_studio.core.explore.interpolation import InterpolationRequest
from ddpm_studio.core.model.unet import PRESETS
from ddpm_studio.core.sampling.job import TRAJECTORY_KINDS, SamplingRequest
from ddpm_studio.core.system.bench import BenchSettings
from ddpm_studio.core.system.devices import PRECISIONS
from ddpm_studio.core.training import config
from ddpm_studio.core.training.config import TRAINING_VARIANCES, TrainingConfig
from tests.helpers.cli_commands import TIMEOUT, assert_one_error_line, command

HEAVY = ("torch", "numpy", "PySide6", "PIL", "pyqtgraph")

# Runs main() on each command line and reports, after each, the heavy modules loaded so far.
LOADED_AFTER = """
import json, sys
from ddpm_studio.cli import main
report = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exit:
        status = exit.code
    loaded = sorted({name.split('.')[0] for name in sys.modules} & set(json.loads(sys.argv[2])))
    report.append([argv, status, loaded])
print(json.dumps(report))
"""


def test_help_and_version_load_no_torch_numpy_or_qt():
    lines = [["--version"], ["--help"], *([name, "--help"] for name in arguments.COMMANDS_BY_NAME)]
    result = subprocess.run([sys.executable, "-c", LOADED_AFTER, json.dumps(lines), json.dumps(HEAVY)],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert len(report) == len(lines)
    for argv, status, loaded in report:
        assert status == 0, argv
        assert loaded == [], f"{argv} loaded {loaded}"


BAD_OPTIONS = {
    "a preset that does not exist": (["train", "data", "--preset", "huge"],
                                     ["argument --preset", "'huge'", "'tiny'", "'ddpm-256'",
                                      "'ddpm-studio train --help'"]),
    "a learning rate that is no number": (["train", "data", "--lr", "abc"],
                                          ["argument --lr", "a number", "'abc'", "'ddpm-studio train --help'"]),
    "steps that are no whole number": (["train", "data", "--steps", "1e3"],
                                       ["argument --steps", "a whole number", "'1e3'"]),
    "a sampler that does not exist": (["sample", "model", "--sampler", "foo"],
                                      ["argument --sampler", "'foo'", "'ddpm'", "'ddim'",
                                       "'ddpm-studio sample --help'"]),
    "an option sample does not have": (["sample", "model", "--bogus"],
                                       ["unrecognized arguments: --bogus", "'ddpm-studio sample --help'"]),
    "a missing model": (["sample"], ["required: model", "'ddpm-studio sample --help'"]),
    "a command that does not exist": (["frobnicate"], ["'frobnicate'", "'train'", "'ddpm-studio --help'"]),
    "an option of no command": (["--bogus"], ["unrecognized arguments: --bogus", "'ddpm-studio --help'"]),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_a_bad_option_is_one_line_naming_it_and_status_2(case, capsys):
    argv, fragments = BAD_OPTIONS[case]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    line = assert_one_error_line(captured.err, fragments[0])
    for fragment in fragments[1:]:
        assert fragment in line, line
    assert "usage:" not in captured.err and captured.out == ""


def test_a_bad_option_in_a_real_process_is_one_line():
    result = subprocess.run(command("train", "data", "--preset", "huge"), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "argument --preset: invalid choice: 'huge'")


def test_sample_takes_the_precisions_train_takes():
    parser = arguments.build_parser()
    for precision in choices.PRECISIONS:
        assert parser.parse_args(["sample", "model", "--precision", precision]).precision == precision
        assert parser.parse_args(["train", "data", "--precision", precision]).precision == precision
    assert parser.parse_args(["sample", "model"]).precision == "auto"


def test_the_oserror_sentence_is_the_one_core_writes():
    missing = FileNotFoundError(2, "No such file or directory", "/no/such/model.json")
    assert describe_os_error(missing) == "No such file or directory: /no/such/model.json"
    assert error_line(missing) == ERROR_PREFIX + describe_os_error(missing)
    assert error_line(PermissionError("no access")) == ERROR_PREFIX + "no access"
    assert error_line(UserError("First line.\nA second line")) == ERROR_PREFIX + "First line."


# --- the parser's copies of the engine's names and defaults -----------------------------------------


def test_the_choices_the_parser_offers_are_the_engines():
    assert choices.PRESETS == tuple(PRESETS)
    assert choices.PRECISIONS == tuple(PRECISIONS)
    assert choices.SAMPLERS == tuple(SAMPLERS)
    assert choices.SOLVER_SPACINGS[0] == DEFAULT_SPACING and set(choices.SOLVER_SPACINGS) == set(SPACINGS)
    assert choices.SOLVER_STEPS == DEFAULT_STEPS
    assert choices.SAMPLING_VARIANCES == tuple(VARIANCES)
    assert choices.TRAINING_VARIANCES == tuple(TRAINING_VARIANCES)
    assert choices.SCHEDULE_KINDS == tuple(SCHEDULE_KINDS)
    assert choices.IMAGE_CHANNELS == tuple(SUPPORTED_CHANNELS)
    assert choices.TRAJECTORY_KINDS == tuple(TRAJECTORY_KINDS)
    assert choices.INCEPTION == INCEPTION
    assert choices.LIBRARY_REFERENCES == tuple(LIBRARY_REFERENCES)
    assert choices.QUALITY_SAMPLES == EvaluationRequest(Path()).num_samples
    assert choices.MEMORIZATION_SAMPLES == MEMORIZATION_SAMPLES
    assert (choices.DEMO_COUNT, choices.DEMO_SIZE) == (DEFAULT_DEMO_COUNT, DEFAULT_DEMO_SIZE)
    training, sampling, bench = TrainingConfig(), SamplingRequest(), BenchSettings()
    assert choices.TRAINING_DEFAULTS == {name: getattr(training, name) for name in choices.TRAINING_DEFAULTS}
    assert choices.SAMPLING_DEFAULTS == {name: getattr(sampling, name) for name in choices.SAMPLING_DEFAULTS}
    assert choices.BENCH_DEFAULTS == {name: getattr(bench, name) for name in choices.BENCH_DEFAULTS}


def test_explore_starts_from_the_engines_requests():
    branch = BranchRequest(Path("model"), at=[1])
    interpolation = InterpolationRequest(Path("model"), None, None)
    assert choices.BRANCH_DEFAULTS == {name: getattr(branch, name) for name in choices.BRANCH_DEFAULTS}
    assert choices.INTERPOLATION_DEFAULTS == {
        name: getattr(interpolation, name) for name in choices.INTERPOLATION_DEFAULTS}
    parser = arguments.build_parser()
    parsed = parser.parse_args(["explore", "branch", "model"])
    assert (parsed.num, parsed.seed, parsed.sampler, parsed.eta, parsed.image, parsed.batch_size) == tuple(
        choices.BRANCH_DEFAULTS.values())
    parsed = parser.parse_args(["explore", "interpolate", "model", "a.png", "b.png", "--t", "0,250,500"])
    assert parsed.t == [0, 250, 500] and parsed.steps == interpolation.steps and parsed.eta == interpolation.eta


def test_train_has_exactly_the_declared_settings_options():
    """Every option that TrainingConfig's declaration gives ``train`` (config.training_arguments) is the parser's,
    with the same field, help, choices, constant and reading of its value; and no other option sets a setting."""
    train = arguments.build_parser().commands["train"]
    actions = {action.option_strings[0]: action for action in train._actions if action.option_strings}
    declared = config.training_arguments()
    same_reading = {int: arguments.whole_number, float: arguments.number,
                    config.micro_batch_value: arguments.micro_batch_value}
    for flag, options in declared:
        action = actions[flag]
        assert action.dest == options["dest"], flag
        assert action.help == options["help"], flag
        assert action.metavar == options.get("metavar"), flag
        if "const" in options:
            assert isinstance(action, argparse._StoreConstAction) and action.const == options["const"], flag
        else:
            assert action.type is same_reading[options.get("type", str)] if "type" in options else action.type is None
            assert list(action.choices or []) == list(options.get("choices") or []), flag
    settings = set(config.TRAINING_SETTINGS) - {"init_from"}  # --init-from names a model, which the command reads
    undeclared = {flag for flag, action in actions.items() if action.dest in settings} - {flag for flag, _ in declared}
    assert not undeclared
    for text in ("12", "auto"):
        assert arguments.micro_batch_value(text) == config.micro_batch_value(text)

"""Model folders crafted to make the loader allocate: ``sample`` and ``info`` refuse each in one sentence.

Every command runs in a subprocess under an address-space limit (``RLIMIT_AS``) a little above what the
process already uses, so that an attempted allocation fails the test, not the machine. An intact model
samples under the same limit, which shows the limit leaves room for real work.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_studio.core.model import store as model_store
from tests.helpers.cli_commands import ERROR_PREFIX, TIMEOUT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced on Linux")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "models" / "demo"
HEADROOM = 512 * 2**20  # bytes of address space beyond what the process holds once torch is imported

# Imports everything the commands need, caps the address space, then runs commands given as JSON:
# one command exits with its status; several print each one's status and output as JSON.
LIMITED = f"""
import contextlib, io, json, resource, sys
import torch, tqdm
from ddpm_studio import cli
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.sampling import job as sampling
torch.set_num_threads(1)
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + {HEADROOM}, size + {HEADROOM}))
commands = json.loads(sys.argv[1])
if isinstance(commands, list):
    sys.exit(cli.main(commands))
results = {{}}
for name, argv in commands.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except BaseException as error:  # what a user would see as a traceback; printing one may need memory
            status = "raised"
            print("Traceback:", type(error).__name__, file=sys.stderr)
    results[name] = {{"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}}
print(json.dumps(results))
"""


def limited(commands) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", LIMITED, json.dumps(commands)], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout, stderr


# --- the crafted folders ---------------------------------------------------------------------------------------


def edit_json(folder: Path, edit) -> None:
    path = folder / model_store.CONFIG_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def unet(**changes):
    return lambda folder: edit_json(folder, lambda data: data["unet"].update(changes))


def schedule(**changes):
    return lambda folder: edit_json(folder, lambda data: data["schedule"].update(changes))


def edit_header(folder: Path, edit, header_size: int | None = None) -> None:
    path = folder / model_store.EMA_FILE
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    edit(header)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", header_size or len(text)) + text + raw[8 + size:])


def lie_about_shapes(header: dict) -> None:
    """Every tensor claims to be 16384 times larger, its data offsets scaled to match: 10 GB the file lacks."""
    for name, entry in header.items():
        if name != "__metadata__":
            entry["shape"] = [16384, *entry["shape"]]
            entry["data_offsets"] = [16384 * offset for offset in entry["data_offsets"]]


def a_lying_loss_history(folder: Path) -> None:
    path = folder / model_store.LOSS_FILE
    raw = path.read_bytes()
    end = raw.index(b"\n") + 1
    path.write_bytes(raw[:end].replace(b"(12,)", b"(1000000000000,)") + raw[end:])


# name: (the model it edits, the edit, what the sentence says, the file it names, what info does)
CRAFTED = {
    # the three cases of the issue, on copies of the demo model
    "base channels 16384": ("demo", unet(base_channels=16384), "unet.base_channels is 16,384", "model.json", 2),
    "multipliers [1, 2, 400]": ("demo", unet(channel_multipliers=[1, 2, 400]), "makes 6,400 channels",
                                "model.json", 2),
    "T = 10^9": ("demo", schedule(num_timesteps=10**9), "num_timesteps (T) is 1,000,000,000", "model.json", 2),
    # and more, on copies of the tiny model
    "image size 0": ("tiny", unet(image_size=0), "unet.image_size must be at least 1", "model.json", 2),
    "image size -16": ("tiny", unet(image_size=-16), "unet.image_size must be at least 1", "model.json", 2),
    "image size 2^20": ("tiny", unet(image_size=2**20), "unet.image_size is 1,048,576 px", "model.json", 2),
    "base channels -8": ("tiny", unet(base_channels=-8), "unet.base_channels must be at least 1", "model.json", 2),
    "no residual blocks": ("tiny", unet(num_res_blocks=0), "unet.num_res_blocks must be at least 1", "model.json", 2),
    "a million residual blocks": ("tiny", unet(num_res_blocks=10**6), "unet.num_res_blocks is 1,000,000",
                                  "model.json", 2),
    "no levels": ("tiny", unet(channel_multipliers=[]), "must be at least 1", "model.json", 2),
    "a multiplier of 0": ("tiny", unet(channel_multipliers=[1, 0]), "channel_multipliers[1] must be at least 1",
                          "model.json", 2),
    "a hundred levels": ("tiny", unet(channel_multipliers=[1] * 100), "is 100, above the limit of 12",
                         "model.json", 2),
    "zero norm groups": ("tiny", unet(norm_groups=0), "unet.norm_groups must be at least 1", "model.json", 2),
    "100000 attention resolutions": ("tiny", unet(attention_resolutions=list(range(1, 100_001))),
                                     "lists 100000 resolutions", "model.json", 2),
    "a string for the image size": ("tiny", unet(image_size="16"), "must be a whole number", "model.json", 2),
    "unet set to null": ("tiny", lambda f: edit_json(f, lambda d: d.update(unet=None)), "cannot build",
                         "model.json", 2),
    "T = 0": ("tiny", schedule(num_timesteps=0), "num_timesteps (T) must be at least 1", "model.json", 2),
    "T = -50": ("tiny", schedule(num_timesteps=-50), "must be at least 1", "model.json", 2),
    "T as a string": ("tiny", schedule(num_timesteps="50"), "must be a whole number", "model.json", 2),
    "NaN betas": ("tiny", schedule(beta_start=float("nan")), "beta_start must be a finite number", "model.json", 2),
    "a header larger than the file": ("tiny", lambda f: edit_header(f, lambda h: None, 10**12),
                                      "its header claims 1,000,000,000,000 bytes", "ema.safetensors", 2),
    "a header that lies about shapes": ("tiny", lambda f: edit_header(f, lie_about_shapes),
                                        "but the file holds", "ema.safetensors", 2),
    "another model's weights": ("tiny", lambda f: shutil.copy(DEMO / model_store.EMA_FILE, f / model_store.EMA_FILE),
                                "time_mlp.0.weight has shape (64, 16), the network needs (32, 8)", "ema.safetensors",
                                0),  # info reads no network, so it shows the file's numbers
}


@pytest.fixture(scope="module")
def crafted(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crafted")
    folders = {}
    for index, (name, (base, edit, *_)) in enumerate({**CRAFTED, "intact demo": ("demo", lambda f: None),
                                                      "intact tiny": ("tiny", lambda f: None),
                                                      "a lying loss history": ("tiny", a_lying_loss_history)}.items()):
        folder = Path(shutil.copytree(DEMO if base == "demo" else tiny_model, root / f"model-{index}"))
        edit(folder)
        folders[name] = folder
    return folders


def sample_command(folder: Path) -> list[str]:
    return ["sample", str(folder), "--num", "1", "--sampler", "ddim", "--steps", "2", "--device", "cpu",
            "--out", str(folder.parent / f"samples-of-{folder.name}")]


@pytest.fixture(scope="module")
def results(crafted) -> dict:
    """Every command in one limited process, and the issue's first `sample` in a process of its own."""
    commands = {}
    for name, folder in crafted.items():
        commands[f"info {name}"] = ["info", str(folder)]
        if name != "a lying loss history":  # sampling does not read the loss history
            commands[f"sample {name}"] = sample_command(folder)
    own = {name: limited(sample_command(crafted[name])) for name in list(CRAFTED)[:1]}
    status, stdout, stderr = finish(limited(commands))
    assert status == 0, stderr[-3000:]
    outcome = json.loads(stdout)
    for name, process in own.items():
        status, stdout, stderr = finish(process)
        outcome[f"own process: sample {name}"] = {"status": status, "stdout": stdout, "stderr": stderr}
    return outcome


def assert_one_error_line(result: dict, *fragments: str) -> None:
    assert result["status"] == 2, result
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result["stderr"]
    assert lines[0].endswith("."), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_an_intact_model_samples_and_is_described_under_the_same_limit(results):
    for name in ("intact demo", "intact tiny"):
        for command in ("info", "sample"):
            result = results[f"{command} {name}"]
            assert result["status"] == 0 and "Traceback" not in result["stderr"], result
    assert "687,347 parameters" in results["info intact demo"]["stdout"]


@pytest.mark.parametrize("name", CRAFTED)
def test_sample_refuses_a_crafted_folder_in_one_sentence(results, name):
    _, _, fragment, file_name, _ = CRAFTED[name]
    assert_one_error_line(results[f"sample {name}"], fragment, file_name)


@pytest.mark.parametrize("name", list(CRAFTED)[:1])
def test_sample_exits_2_in_its_own_process(results, name):
    _, _, fragment, file_name, _ = CRAFTED[name]
    assert_one_error_line(results[f"own process: sample {name}"], fragment, file_name)


@pytest.mark.parametrize("name", CRAFTED)
def test_info_says_why_without_a_traceback(results, name):
    _, _, fragment, file_name, info_status = CRAFTED[name]
    result = results[f"info {name}"]
    assert "Traceback" not in result["stderr"]
    if info_status == 2:
        assert_one_error_line(result, fragment, file_name)
    else:
        assert result["status"] == 0 and "687,347 parameters" in result["stdout"], result


def test_info_refuses_a_loss_history_that_claims_more_than_its_file(results):
    assert_one_error_line(results["info a lying loss history"], "loss.npy is damaged", "1000000000000")

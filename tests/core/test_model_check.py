"""The checks a model folder passes before anything is allocated from it: bounds that admit every real model,
a safetensors header read and checked against its file, the network on the meta device against the header,
and preview images opened with a pixel limit."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ddpm_studio.core.diffusion.schedule import NoiseSchedule, ScheduleConfig
from ddpm_studio.core.model import check as model_check
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.check import ModelError
from ddpm_studio.core.model.unet import PRESETS, UNet, UNetConfig, count_parameters
from tests.helpers.images import tiny_images


def demo_images() -> torch.Tensor:
    return tiny_images(8)


DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


@pytest.fixture
def model(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def assert_one_sentence(error: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(error.value)
    assert "\n" not in message and message.endswith("."), message
    assert len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- bounds ------------------------------------------------------------------------------------------------


REAL_MODELS = {
    "the paper's CIFAR-10 model": PRESETS["ddpm-cifar10"].config,
    "the paper's 256 px model": PRESETS["ddpm-256"].config,
    "a 1024 px model": UNetConfig(1024, 3, 128, (1, 1, 2, 2, 4, 4, 4, 4), 2, (16,), 0.0, 32),
    "a wide 512 px model": UNetConfig(512, 3, 256, (1, 1, 2, 2, 4, 4), 3, (32, 16, 8), 0.0, 32),
}


@pytest.mark.parametrize("name", REAL_MODELS)
def test_the_bounds_admit_every_real_model(name):
    config = REAL_MODELS[name]
    model_check.check_unet_config(config)
    network = model_check.build_on_meta(config)
    assert all(parameter.is_meta for parameter in network.parameters())  # shapes only, no memory


def test_the_network_on_meta_has_the_papers_parameter_count():
    assert count_parameters(model_check.build_on_meta(PRESETS["ddpm-256"].config)) == 113_673_219
    assert count_parameters(model_check.build_on_meta(PRESETS["ddpm-cifar10"].config)) == 35_746_307


@pytest.mark.parametrize("schedule", [ScheduleConfig("linear", 1000), ScheduleConfig("cosine", 4000),
                                      ScheduleConfig("linear", 1)])
def test_the_bounds_admit_real_schedules(schedule):
    model_check.check_schedule_config(schedule)  # raises for a schedule it refuses
    betas = NoiseSchedule.from_config(schedule).betas  # and what it admits can be built
    assert len(betas) == schedule.num_timesteps and bool(((betas > 0) & (betas < 1)).all())


def test_the_schedule_bounds_lie_at_their_limits():
    model_check.check_schedule_config(ScheduleConfig("cosine", model_check.MAX_TIMESTEPS))
    with pytest.raises(model_check.SettingError) as error:
        model_check.check_schedule_config(ScheduleConfig("cosine", model_check.MAX_TIMESTEPS + 1))
    assert_one_sentence(error, "schedule.num_timesteps (T) is 100,001 steps, above the limit of 100,000 steps")
    with pytest.raises(model_check.SettingError) as error:
        model_check.check_schedule_config(ScheduleConfig("linear", 0))
    assert_one_sentence(error, "schedule.num_timesteps (T) must be at least 1, not 0")
    with pytest.raises(model_check.SettingError) as error:  # rescaled by 1000 / T, the first beta is 2
        model_check.check_schedule_config(ScheduleConfig("linear", 1, beta_start=0.002, beta_end=0.003))
    assert_one_sentence(error, "betas do not all lie in (0, 1) at T = 1")


def test_a_setting_added_later_is_bounded_by_its_kind():
    """A U-Net setting added later with no bound of its own still is, by its default's kind."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class LaterConfig(UNetConfig):
        later_width: int = 1
        scale_shift_norm: bool = False

    limit = model_check.MAX_OTHER_SETTING
    model_check.check_unet_config(LaterConfig(16, 3, 8, (1, 2), 1, (8,), 0.0, 4, later_width=limit))  # admitted
    for changes, fragment in [({"later_width": limit + 1}, f"unet.later_width is {limit + 1}, above the limit"),
                              ({"later_width": 10**6}, "unet.later_width is 1,000,000"),
                              ({"later_width": -1}, "unet.later_width must be at least 0"),
                              ({"scale_shift_norm": "no"}, "unet.scale_shift_norm must be true or false")]:
        with pytest.raises(model_check.SettingError) as error:
            model_check.check_unet_config(LaterConfig(16, 3, 8, (1, 2), 1, (8,), 0.0, 4, **changes))
        assert_one_sentence(error, fragment)


# --- the safetensors header ----------------------------------------------------------------------------------


def write_safetensors(path: Path, header: dict, data: bytes, header_size: int | None = None) -> None:
    """A safetensors file written byte by byte, so that its header can say anything."""
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if header_size is None else header_size) + raw + data)


def header_and_data(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def test_the_header_lists_what_the_file_holds(model):
    path = model / model_store.EMA_FILE
    header = model_check.read_safetensors_header(path)
    tensors = load_file(str(path))
    assert header.shapes() == {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    assert header.dtypes == ["F32"]
    assert header.parameter_count == sum(tensor.numel() for tensor in tensors.values())
    assert header.metadata == {"step": "12"}


def lie_about_a_shape(header: dict) -> None:
    name = next(n for n in header if n != "__metadata__" and len(header[n]["shape"]) == 4)
    header[name]["shape"] = [16384, 16384, 3, 3]  # its offsets still cover the real bytes


def claim_more_data(header: dict) -> None:
    name = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][1])
    begin = header[name]["data_offsets"][0]
    header[name]["shape"] = [16384, 16384, 3, 3]  # and offsets to match: 9.7 GB the file does not have
    itemsize = model_check.SAFETENSORS_DTYPES[header[name]["dtype"]]
    header[name]["data_offsets"] = [begin, begin + itemsize * 16384 * 16384 * 9]


def leave_a_gap(header: dict) -> None:
    for name, entry in header.items():
        if name != "__metadata__":
            entry["data_offsets"] = [entry["data_offsets"][0] + 4, entry["data_offsets"][1] + 4]


HEADER_DAMAGE = {
    "a header larger than the file": (lambda h: None, {"header_size": 10**12}, "more than the file's"),
    "a header that lies about a shape": (lie_about_a_shape, {}, "but gives it"),
    "a header that claims data the file lacks": (claim_more_data, {}, "but the file holds"),
    "tensors that leave a gap": (leave_a_gap, {}, "overlap another tensor's or leave a gap"),
    "an unknown dtype": (lambda h: h["input_conv.weight"].update(dtype="F128"), {}, "unknown dtype"),
    "a negative dimension": (lambda h: h["input_conv.weight"].update(shape=[-8, 3, 3, 3]), {}, "impossible shape"),
    "offsets backwards": (lambda h: h["input_conv.weight"].update(data_offsets=[9, 0]), {}, "impossible data offsets"),
    "metadata that is not text": (lambda h: h.update(__metadata__={"step": 12}), {}, "metadata"),
    "a list for a header": (lambda h: None, {"replace": [1, 2, 3]}, "not a table of tensors"),
}


@pytest.mark.parametrize("damage", HEADER_DAMAGE)
def test_a_damaged_header_is_refused_in_one_sentence_naming_the_file(model, damage):
    edit, options, fragment = HEADER_DAMAGE[damage]
    path = model / model_store.EMA_FILE
    header, data = header_and_data(path)
    edit(header)
    write_safetensors(path, options.get("replace", header), data, options.get("header_size"))
    with pytest.raises(ModelError) as error:
        model_check.read_safetensors_header(path)
    assert_one_sentence(error, str(path), fragment)
    with pytest.raises(ModelError) as error:  # and the folder with it
        model_store.read_model_info(model)
    assert_one_sentence(error, str(path), fragment)


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00", b"\x02" + b"\x00" * 7 + b"{]",
                                     b"\x04" + b"\x00" * 7 + b"\xff\xfe\x00\x00"])
def test_a_file_too_short_or_without_json_is_refused(tmp_path, content):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError) as error:
        model_check.read_safetensors_header(path)
    assert_one_sentence(error, str(path))


def test_a_header_beyond_the_reading_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(model_check, "MAX_HEADER_BYTES", 64)
    path = tmp_path / "w.safetensors"
    save_file({f"tensor_{i}": torch.zeros(1) for i in range(10)}, str(path))
    with pytest.raises(ModelError) as error:
        model_check.read_safetensors_header(path)
    assert_one_sentence(error, "more than the 64")


def test_integer_weights_are_refused(model):
    path = model / model_store.EMA_FILE
    tensors = load_file(str(path))
    tensors["input_conv.weight"] = tensors["input_conv.weight"].to(torch.int32)
    save_file(tensors, str(path))
    with pytest.raises(ModelError) as error:
        model_store.read_model_info(model)
    assert_one_sentence(error, "input_conv.weight as I32")


# --- the network against the weights -------------------------------------------------------------------------


def test_another_models_weights_are_refused_naming_the_first_differing_tensor(model):
    shutil.copy(DEMO / model_store.EMA_FILE, model / model_store.EMA_FILE)  # base 16, not 8
    model_store.read_model_info(model)  # the header is whole; only the network tells
    with pytest.raises(ModelError) as error:
        model_store.load_model(model)
    assert_one_sentence(error, str(model / model_store.EMA_FILE), "time_mlp.0.weight has shape (64, 16), the network "
                        "needs (32, 8)", "the network has 45,259 parameters, the file 687,347")


def test_the_comparison_names_the_first_difference_in_the_networks_order():
    expected = {"a": (2, 3), "b": (4,), "c": (5,)}
    model_check.check_tensors_match(expected, {"c": (5,), "a": (2, 3), "b": (4,)}, Path("w"), "model.json")
    cases = {
        "a has shape (3, 2), the network needs (2, 3)).": {"a": (3, 2), "b": (4,), "c": (5,)},
        "b is missing; the network has 15 parameters, the file 11).": {"a": (2, 3), "c": (5,)},
        "it holds d, which the network has no place for; the network has 15 parameters, the file 16).":
            {**expected, "d": (1,)},
    }
    for ending, found in cases.items():
        with pytest.raises(ModelError) as error:
            model_check.check_tensors_match(expected, found, Path("w"), "model.json")
        assert str(error.value) == f"w does not match the network model.json describes ({ending}", str(error.value)


def test_a_loaded_model_holds_exactly_the_files_weights_and_nothing_on_meta(model):
    loaded = model_store.load_model(model)
    tensors = load_file(str(model / model_store.EMA_FILE))
    state = loaded.unet.state_dict()
    assert set(state) == set(tensors)
    for name, tensor in tensors.items():
        assert state[name].dtype == torch.float32 and not state[name].is_meta
        assert torch.equal(state[name], tensor), name
    assert not any(p.requires_grad for p in loaded.unet.parameters()) and not loaded.unet.training
    # and it computes what a network built the ordinary way computes
    reference = UNet(loaded.info.unet).eval()
    reference.load_state_dict(tensors)
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 49])
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(x, t), reference(x, t), rtol=0, atol=0)


def test_half_precision_weights_load_as_float32(model):
    path = model / model_store.EMA_FILE
    tensors = load_file(str(path))
    save_file({name: tensor.half() for name, tensor in tensors.items()}, str(path))
    loaded = model_store.load_model(model)
    weight = loaded.unet.state_dict()["input_conv.weight"]
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, tensors["input_conv.weight"].half().float(), rtol=0, atol=0)


# --- model.json and loss.npy ---------------------------------------------------------------------------------


def edit_model_json(folder: Path, edit) -> None:
    path = folder / model_store.CONFIG_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_model_json_too_large_to_be_a_description_is_refused(model):
    edit_model_json(model, lambda data: data.update(padding="x" * (model_check.MAX_DESCRIPTION_BYTES + 1)))
    with pytest.raises(ModelError) as error:
        model_store.read_model_info(model)
    assert_one_sentence(error, model_store.CONFIG_FILE, "too large")


def test_a_number_of_five_thousand_digits_is_refused(model):
    text = (model / model_store.CONFIG_FILE).read_text(encoding="utf-8")
    (model / model_store.CONFIG_FILE).write_text(text.replace('"step": 12', '"step": ' + "9" * 5000), encoding="utf-8")
    with pytest.raises(ModelError) as error:
        model_store.read_model_info(model)
    assert_one_sentence(error, model_store.CONFIG_FILE)


def test_a_loss_history_whose_header_claims_more_than_the_file_is_refused_before_reading(model):
    path = model / model_store.LOSS_FILE
    raw = path.read_bytes()
    header_end = raw.index(b"\n") + 1
    header = raw[:header_end].decode("latin1").replace("(12,)", f"({10**12},)")
    path.write_bytes(header.encode("latin1") + raw[header_end:])
    with pytest.raises(ModelError) as error:
        model_store.load_loss_history(model)
    assert_one_sentence(error, str(path), "1000000000000")


# --- preview images ------------------------------------------------------------------------------------------


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height but whose data is a few bytes: a decompression bomb's front."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [6000, 12_000, 100_000])  # under, between and over Pillow's own limits
def test_a_preview_with_more_pixels_than_any_preview_is_refused_before_decoding(tmp_path, side):
    path = png_claiming(tmp_path / model_store.PREVIEW_FILE, side, side)
    with pytest.raises(ModelError) as error:
        model_check.read_preview(path)
    message = assert_one_sentence(error, str(path), "is refused", f"{model_check.MAX_PREVIEW_PIXELS:,}")
    assert model_check.preview_problem(path) == message


def test_a_real_preview_is_read(tiny_model):
    path = tiny_model / model_store.PREVIEW_FILE
    assert model_check.preview_problem(path) is None
    with Image.open(path) as image:
        np.testing.assert_array_equal(model_check.read_preview(path), np.asarray(image.convert("RGB")))


def test_a_preview_that_is_not_a_png_is_refused(tmp_path):
    path = tmp_path / model_store.PREVIEW_FILE
    Image.new("RGB", (8, 8)).save(path, format="GIF")
    assert "not a PNG image" in model_check.preview_problem(path)


# --- resuming ------------------------------------------------------------------------------------------------


def test_resuming_refuses_training_settings_that_describe_another_network(model):
    from ddpm_studio.core.training.config import TrainingConfig
    from ddpm_studio.core.training.loop import train

    edit_model_json(model, lambda data: data["training"].update(image_size=2**20))
    config = TrainingConfig.from_dict({**model_store.read_model_info(model).training, "steps": 20})
    with pytest.raises(ModelError) as error:
        list(train(config, demo_images(), model, resume=True))
    assert_one_sentence(error, model_store.CONFIG_FILE, "training settings describe another network")


def test_resuming_checks_the_training_states_header_before_building(model):
    from ddpm_studio.core.training.config import TrainingConfig
    from ddpm_studio.core.training.loop import train

    path = model / model_store.STATE_FILE
    header, data = header_and_data(path)
    claim_more_data(header)
    write_safetensors(path, header, data)
    config = TrainingConfig.from_dict({**model_store.read_model_info(model).training, "steps": 20})
    with pytest.raises(ModelError) as error:
        list(train(config, demo_images(), model, resume=True))
    assert_one_sentence(error, str(path), "but the file holds")


# --- any value in any field ----------------------------------------------------------------------------------


ODD_VALUES = [None, "x", -1, 10**30, float("nan"), [1, "a"]]


def test_any_json_value_in_any_field_gives_a_description_or_one_sentence(tmp_path):
    """Every field of the demo's model.json, in turn, set to values of the wrong kind or size: `info` describes
    the model or refuses it in one sentence, and never fails otherwise."""
    import contextlib
    import io

    from ddpm_studio import cli

    folder = Path(shutil.copytree(DEMO, tmp_path / "model"))
    original = json.loads((DEMO / model_store.CONFIG_FILE).read_text(encoding="utf-8"))
    places = [(key,) for key in original] + [(section, key) for section in ("unet", "schedule", "training", "dataset")
                                             for key in original[section]]
    refused = 0
    for place in places:
        for value in ODD_VALUES:
            data = json.loads(json.dumps(original))
            *parents, key = place
            target = data
            for parent in parents:
                target = target[parent]
            target[key] = value
            (folder / model_store.CONFIG_FILE).write_text(json.dumps(data), encoding="utf-8")
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                status = cli.main(["info", str(folder)])
            assert status in (0, 2), (place, value)
            if status == 2:
                refused += 1
                [line] = stderr.getvalue().splitlines()
                assert line.startswith("ddpm-studio: error: ") and model_store.CONFIG_FILE in line, (place, value, line)
    assert refused > len(places) * 2  # most odd values are refused, not silently taken

"""Model folders on disk: loading never runs code from a file, and a damaged or foreign file gets a
one-sentence ModelError that names it."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import FinishedEvent, StepEvent
from ddpm_studio.core.training.loop import train


@pytest.fixture
def model(tiny_model, tmp_path) -> Path:
    """A private copy of the shared tiny model (16x16, T = 50, 12 steps), free to damage."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def images_uint8() -> torch.Tensor:
    return torch.from_numpy(make_demo_images(32, size=16, seed=0)).permute(0, 3, 1, 2).contiguous()


def resume(folder: Path, steps: int = 14):
    """Resume the model for a couple of steps (the trainer reads everything it needs first)."""
    info = model_store.read_model_info(folder)
    config = TrainingConfig.from_dict({**info.training, "steps": steps, "preview_count": 0})
    return list(train(config, images_uint8(), folder, resume=True))


def assert_one_sentence_naming(error: pytest.ExceptionInfo, file_name: str) -> None:
    message = str(error.value)
    assert file_name in message, message
    assert "\n" not in message and message.endswith("."), message
    assert len(message) < 400, message


# --- loading never runs code --------------------------------------------------------------------------


class RunsCode:
    """Unpickling this creates ``marker``: the proof that loading a file ran code from it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"weights": RunsCode(marker)})


def torch_save_payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model.conv_in.weight": torch.zeros(1), "evil": RunsCode(marker)}, buffer)
    return buffer.getvalue()


def numpy_payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


PAYLOADS = {"pickle": pickle_payload, "torch.save": torch_save_payload, "numpy object array": numpy_payload}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payloads_really_run_code_when_unpickled(tmp_path, payload):
    """The check that the attack below is live: an unsafe loader does create the marker."""
    marker = tmp_path / "ran"
    data = PAYLOADS[payload](marker)
    if payload == "torch.save":
        torch.load(io.BytesIO(data), weights_only=False)
    elif payload == "numpy object array":
        np.load(io.BytesIO(data), allow_pickle=True)
    else:
        pickle.loads(data)
    assert marker.exists()


LOADERS = {
    model_store.EMA_FILE: lambda folder: model_store.load_model(folder),
    model_store.STATE_FILE: resume,
    model_store.CONFIG_FILE: lambda folder: model_store.load_model(folder),
    model_store.LOSS_FILE: lambda folder: model_store.load_loss_history(folder),
}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("file_name", LOADERS)
def test_a_file_that_would_run_code_on_unpickling_is_refused(model, tmp_path, file_name, payload):
    marker = tmp_path / "code-ran"
    (model / file_name).write_bytes(PAYLOADS[payload](marker))
    with pytest.raises(ModelError) as error:
        LOADERS[file_name](model)
    assert_one_sentence_naming(error, file_name)
    assert not marker.exists()


def test_the_model_library_lists_a_booby_trapped_model_as_broken_without_running_it(model, tmp_path):
    marker = tmp_path / "code-ran"
    (model / model_store.CONFIG_FILE).write_bytes(pickle_payload(marker))
    [entry] = model_store.list_models([model.parent])
    assert entry.info is None and model_store.CONFIG_FILE in entry.error
    assert not marker.exists()


# --- damaged and foreign files ---------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def edit_model_json(folder: Path, **changes) -> None:
    data = json.loads((folder / model_store.CONFIG_FILE).read_text(encoding="utf-8"))
    data.update(changes)
    write_json(folder / model_store.CONFIG_FILE, data)


def edit_ema(folder: Path, edit) -> None:
    tensors = load_file(str(folder / model_store.EMA_FILE))
    edit(tensors)
    save_file(tensors, str(folder / model_store.EMA_FILE))


def first_weight(tensors: dict) -> str:
    return next(name for name in sorted(tensors) if name.endswith("weight") and tensors[name].ndim == 4)


DAMAGE = {
    "truncated ema": (model_store.EMA_FILE, lambda m: truncate(m / model_store.EMA_FILE)),
    "empty ema": (model_store.EMA_FILE, lambda m: (m / model_store.EMA_FILE).write_bytes(b"")),
    "missing ema": (model_store.EMA_FILE, lambda m: (m / model_store.EMA_FILE).unlink()),
    "text as ema": (model_store.EMA_FILE, lambda m: (m / model_store.EMA_FILE).write_text("hello " * 100)),
    "ema of wrong shape": (model_store.EMA_FILE, lambda m: edit_ema(
        m, lambda t: t.__setitem__(first_weight(t), torch.zeros(3, 3, 3, 3)))),
    "ema lacking a tensor": (model_store.EMA_FILE, lambda m: edit_ema(m, lambda t: t.pop(first_weight(t)))),
    "ema with a foreign tensor": (model_store.EMA_FILE, lambda m: edit_ema(
        m, lambda t: t.__setitem__("text_encoder.weight", torch.zeros(2)))),
    "ema with NaN": (model_store.EMA_FILE, lambda m: edit_ema(
        m, lambda t: t[first_weight(t)].view(-1).__setitem__(0, float("nan")))),
    "ema of another architecture": (model_store.EMA_FILE, lambda m: edit_model_json(
        m, unet={**json.loads((m / model_store.CONFIG_FILE).read_text())["unet"], "base_channels": 16})),
    "missing model.json": (model_store.CONFIG_FILE, lambda m: (m / model_store.CONFIG_FILE).unlink()),
    "truncated model.json": (model_store.CONFIG_FILE, lambda m: truncate(m / model_store.CONFIG_FILE)),
    "binary model.json": (model_store.CONFIG_FILE, lambda m: (m / model_store.CONFIG_FILE).write_bytes(
        b"\xff\xfe\x00\x81" * 50)),
    "foreign json": (model_store.CONFIG_FILE, lambda m: write_json(
        m / model_store.CONFIG_FILE, {"_name_or_path": "bert-base-uncased", "hidden_size": 768})),
    "json list": (model_store.CONFIG_FILE, lambda m: write_json(m / model_store.CONFIG_FILE, [1, 2, 3])),
    "deeply nested json": (model_store.CONFIG_FILE, lambda m: (m / model_store.CONFIG_FILE).write_text(
        "[" * 100_000 + "]" * 100_000)),
    "newer format": (model_store.CONFIG_FILE, lambda m: edit_model_json(
        m, format_version=model_store.FORMAT_VERSION + 1)),
    "unknown unet setting": (model_store.CONFIG_FILE, lambda m: edit_model_json(
        m, unet={**json.loads((m / model_store.CONFIG_FILE).read_text())["unet"], "flash": True})),
    "unet not a dict": (model_store.CONFIG_FILE, lambda m: edit_model_json(m, unet=[1, 2])),
    "impossible unet": (model_store.CONFIG_FILE, lambda m: edit_model_json(
        m, unet={**json.loads((m / model_store.CONFIG_FILE).read_text())["unet"], "image_size": 15})),
    "bad schedule": (model_store.CONFIG_FILE, lambda m: edit_model_json(m, schedule={"kind": "quadratic"})),
    "step not a number": (model_store.CONFIG_FILE, lambda m: edit_model_json(m, step="many")),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_foreign_file_gives_one_sentence_naming_it(model, damage):
    file_name, apply = DAMAGE[damage]
    apply(model)
    with pytest.raises(ModelError) as error:
        model_store.load_model(model)
    assert_one_sentence_naming(error, file_name)


@pytest.mark.parametrize("damage", ["truncated", "2-d", "text"])
def test_a_damaged_loss_history_gives_one_sentence_naming_it(model, damage):
    path = model / model_store.LOSS_FILE
    if damage == "truncated":
        truncate(path)
    elif damage == "2-d":
        np.save(path, np.zeros((3, 4), dtype=np.float32))
    else:
        path.write_text("0.1, 0.2, 0.3")
    with pytest.raises(ModelError) as error:
        model_store.load_loss_history(model)
    assert_one_sentence_naming(error, model_store.LOSS_FILE)


def test_a_model_without_a_loss_history_has_an_empty_one(model):
    (model / model_store.LOSS_FILE).unlink()
    history = model_store.load_loss_history(model)
    assert history.shape == (0,) and history.dtype == np.float32


def test_no_folder_and_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelError) as error:
        model_store.read_model_info(tmp_path / "nowhere")
    assert "nowhere" in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"not really")
    with pytest.raises(ModelError) as error:
        model_store.load_model(tmp_path / "photos")
    assert_one_sentence_naming(error, model_store.CONFIG_FILE)


def test_model_json_itself_can_be_given(model):
    info = model_store.read_model_info(model / model_store.CONFIG_FILE)
    assert info.path == model and info.step == 12 and info.unet.image_size == 16


# --- the training state that resuming reads ------------------------------------------------------------


def edit_state(folder: Path, edit, metadata_edit=None) -> None:
    path = folder / model_store.STATE_FILE
    tensors = load_file(str(path))
    metadata = model_store.read_safetensors_metadata(path)
    edit(tensors)
    if metadata_edit:
        metadata_edit(metadata)
    save_file(tensors, str(path), metadata=metadata)


def moment_name(tensors: dict) -> str:
    return next(name for name in sorted(tensors) if name.startswith("optimizer.") and name.endswith(".exp_avg")
                and tensors[name].ndim == 4)


STATE_DAMAGE = {
    "truncated": lambda m: truncate(m / model_store.STATE_FILE),
    "pickle-free junk": lambda m: (m / model_store.STATE_FILE).write_bytes(b"\x00" * 1000),
    "no training metadata": lambda m: shutil.copy(m / model_store.EMA_FILE, m / model_store.STATE_FILE),
    "raw weights of wrong shape": lambda m: edit_state(
        m, lambda t: t.__setitem__("model." + first_weight({k[6:]: v for k, v in t.items() if k.startswith("model.")}),
                                   torch.zeros(2, 2, 2, 2))),
    "optimizer moment of wrong shape": lambda m: edit_state(
        m, lambda t: t.__setitem__(moment_name(t), torch.zeros(2, 2, 2, 2))),
    "optimizer moment missing": lambda m: edit_state(m, lambda t: t.pop(moment_name(t))),
    "optimizer state of another parameter count": lambda m: edit_state(
        m, lambda t: t.__setitem__("optimizer.9999.exp_avg", torch.zeros(1))),
    "no rng state": lambda m: edit_state(m, lambda t: t.pop("rng.torch")),
    "no loss history": lambda m: edit_state(m, lambda t: t.pop("loss")),
    "step not a number": lambda m: edit_state(m, lambda t: None, lambda meta: meta.__setitem__("step", "x")),
    "param groups not json": lambda m: edit_state(
        m, lambda t: None, lambda meta: meta.__setitem__("param_groups", "{")),
}


@pytest.mark.parametrize("damage", STATE_DAMAGE)
def test_a_damaged_training_state_refuses_to_resume_in_one_sentence(model, damage):
    STATE_DAMAGE[damage](model)
    assert model_store.load_model(model)  # sampling does not need the training state
    with pytest.raises(ModelError) as error:
        resume(model)
    assert_one_sentence_naming(error, model_store.STATE_FILE)


def test_an_intact_copy_resumes(model):
    events = resume(model)
    assert isinstance(events[-1], FinishedEvent) and events[-1].step == 14
    assert [e.step for e in events if isinstance(e, StepEvent)] == [13, 14]


# --- the library and atomic writes --------------------------------------------------------------------------


def test_the_library_lists_good_and_broken_models_and_ignores_other_folders(model, tmp_path):
    library = model.parent
    broken = Path(shutil.copytree(model, library / "broken"))
    write_json(broken / model_store.CONFIG_FILE, {"hello": "world"})
    (library / "holiday-photos").mkdir()
    entries = {entry.path.name: entry for entry in model_store.list_models([library, tmp_path / "missing"])}
    assert set(entries) == {"model", "broken"}
    assert entries["model"].info.step == 12 and entries["model"].error is None
    assert entries["broken"].info is None
    assert model_store.CONFIG_FILE in entries["broken"].error and "\n" not in entries["broken"].error


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    model_store.save_safetensors_atomic(path, {"a": torch.ones(3)})
    before = path.read_bytes()

    def fail_halfway(temporary: Path) -> None:
        temporary.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError):
        model_store.atomic_write(path, fail_halfway)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]
    assert torch.equal(load_file(str(path))["a"], torch.ones(3))


def test_saved_files_round_trip(tmp_path):
    model_store.save_numpy_atomic(tmp_path / model_store.LOSS_FILE, np.array([0.5, 0.25], dtype=np.float32))
    np.testing.assert_array_equal(model_store.load_loss_history(tmp_path), [0.5, 0.25])
    model_store.write_json_atomic(tmp_path / "x.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2]}
    model_store.save_safetensors_atomic(tmp_path / "w.safetensors", {"w": torch.arange(4.0)}, {"step": "3"})
    assert model_store.read_safetensors_metadata(tmp_path / "w.safetensors") == {"step": "3"}

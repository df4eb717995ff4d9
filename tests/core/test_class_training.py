"""Training with classes: label dropout drawn by (seed, step, rank), exact resume of a class-conditional run,
class embeddings that learn, fine-tunes that add classes, and the refusals.

Real PNG class subfolders in tmp_path, the tiny U-Net at 16x16, T = 50, a few steps on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ddpm_studio.core.data.batches import BatchSource, draw_label_drops, draw_step
from ddpm_studio.core.data.folders import UNLABELLED
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.unet import UNet
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.distributed import DistributedContext
from ddpm_studio.core.training.events import FinishedEvent, StepEvent
from ddpm_studio.core.training.loop import train_from_folder
from ddpm_studio.core.training.memory import estimate_training_memory
from ddpm_studio.core.training.state import TrainingState

CLASS_NAMES = ("cat", "dog", "owl")


def write_class_folders(root, per_class: int = 4, loose: int = 0, names=CLASS_NAMES):
    """``root/<class>/*.png`` (each class its own colour, with noise), and ``loose`` PNGs at the top level."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for number in range(per_class):
            base = np.full((16, 16, 3), 60 * index + 40, dtype=np.int16)
            pixels = np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{number}.png")
    for number in range(loose):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"loose{number}.png")
    return root


def tiny_config(**overrides) -> TrainingConfig:
    values = dict(steps=6, num_timesteps=50, preview_count=0, checkpoint_every=1000, warmup_steps=2, seed=5,
                  batch_size=4, image_size=16, classes=True, learning_rate=1e-3)
    values.update(overrides)
    return TrainingConfig.for_preset("tiny", **values)


def every_label(source: BatchSource, steps: int) -> np.ndarray:
    try:
        return np.stack([source.next().labels.numpy() for _ in range(steps)])
    finally:
        source.close()


def a_source(labels, *, seed=7, batch_size=64, rank=0, world_size=1, first_step=1, last_step=400, dropout=0.1,
             count=None):
    count = len(labels) if count is None else count
    images = torch.zeros((count, 1, 2, 2), dtype=torch.uint8)
    return BatchSource(images, seed=seed, batch_size=batch_size, rank=rank, world_size=world_size,
                       device=torch.device("cpu"), first_step=first_step, last_step=last_step,
                       labels=torch.as_tensor(labels), label_dropout=dropout, null_label=3)


# --- the label draws --------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout", [0.1, 0.3])
def test_the_share_of_null_labels_is_the_dropout_and_reproducible(dropout):
    labels = np.arange(50) % 3  # every image has a class: a null label can only come from dropout
    drawn = every_label(a_source(labels, dropout=dropout), 400)
    nulls = int((drawn == 3).sum())
    draws = drawn.size
    bound = 5 * math.sqrt(draws * dropout * (1 - dropout))  # five binomial standard deviations
    assert abs(nulls - draws * dropout) < bound, (nulls, draws)
    # The rest are the drawn images' own classes, gathered with the images' indices.
    for step in (1, 200, 400):
        indices, _ = draw_step(7, step, 50, 64)
        kept = drawn[step - 1] != 3
        np.testing.assert_array_equal(drawn[step - 1][kept], labels[indices][kept])
        np.testing.assert_array_equal(drawn[step - 1] == 3, draw_label_drops(7, step, 64, dropout))
    # From the recorded seed, the same labels again; another seed, other drops.
    np.testing.assert_array_equal(every_label(a_source(labels, dropout=dropout), 400), drawn)
    assert not np.array_equal(every_label(a_source(labels, dropout=dropout, seed=8), 400) == 3, drawn == 3)


def test_no_dropout_keeps_every_label_and_unlabelled_images_are_always_null():
    labels = np.array([0, 1, 2, UNLABELLED] * 10)
    drawn = every_label(a_source(labels, dropout=0.0), 100)
    indices = np.stack([draw_step(7, step, 40, 64)[0] for step in range(1, 101)])
    expected = np.where(labels[indices] == UNLABELLED, 3, labels[indices])
    np.testing.assert_array_equal(drawn, expected)
    assert drawn.dtype == np.int64
    # Whatever the dropout, an unlabelled image is never given a class.
    drawn = every_label(a_source(labels, dropout=0.5), 100)
    assert (drawn[labels[indices] == UNLABELLED] == 3).all()


def test_each_rank_draws_its_own_slice_of_the_global_label_draw():
    labels = np.arange(30) % 3
    ranks = [every_label(a_source(labels, rank=rank, world_size=2, last_step=50, dropout=0.4), 50)
             for rank in (0, 1)]
    single = every_label(a_source(labels, last_step=50, dropout=0.4), 50)
    np.testing.assert_array_equal(np.concatenate(ranks, axis=1), single)
    assert not np.array_equal(ranks[0] == 3, ranks[1] == 3)
    np.testing.assert_array_equal(every_label(a_source(labels, rank=1, world_size=2, last_step=50, dropout=0.4),
                                              50), ranks[1])


def test_a_resumed_source_draws_the_labels_of_a_source_that_never_stopped():
    labels = np.arange(20) % 3
    straight = every_label(a_source(labels, last_step=30), 30)
    later = every_label(a_source(labels, first_step=11, last_step=30), 20)
    np.testing.assert_array_equal(later, straight[10:])


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_a_dropout_outside_zero_to_one_is_refused_in_a_sentence(dropout):
    with pytest.raises(SettingError, match=r"label dropout must lie in \[0, 1\)"):
        tiny_config(label_dropout=dropout).validate()


# --- training ---------------------------------------------------------------------------------------


def run(paths, config, out_dir, **options):
    return [event for event in train_from_folder(paths, config, out_dir, use_cache=False, **options)
            if isinstance(event, (StepEvent, FinishedEvent))]


def test_a_class_conditional_run_records_its_classes_and_its_embedding_learns(tmp_path):
    data = write_class_folders(tmp_path / "data", loose=2)
    events = run([data], tiny_config(), tmp_path / "m")
    assert isinstance(events[-1], FinishedEvent) and events[-1].step == 6
    info = model_store.read_model_info(tmp_path / "m")
    assert info.unet.num_classes == 3
    assert info.extra["classes"] == {"names": list(CLASS_NAMES), "counts": [4, 4, 4]}
    assert info.training["classes"] is True and info.training["label_dropout"] == pytest.approx(0.1)
    ema = load_file(str(tmp_path / "m" / model_store.EMA_FILE))
    embedding = ema["class_embedding.weight"]
    assert embedding.shape[0] == 4  # three classes and the null label
    assert embedding[:3].abs().sum(dim=1).min() > 0  # every class's row has left zero
    loaded = model_store.load_model(tmp_path / "m")
    assert loaded.unet.null_class == 3


def test_stop_and_resume_of_a_class_conditional_run_is_exact(tmp_path):
    data = write_class_folders(tmp_path / "data", loose=1)
    config = tiny_config(steps=8, dropout=0.1, label_dropout=0.4)
    straight = run([data], config, tmp_path / "straight")
    straight_losses = [loss for event in straight if isinstance(event, StepEvent) for loss in event.losses]
    events = train_from_folder([data], config, tmp_path / "split", use_cache=False)
    for event in events:
        if isinstance(event, StepEvent) and event.step == 4:
            break
    events.close()
    assert model_store.read_model_info(tmp_path / "split").step == 4
    second = run([data], config, tmp_path / "split", resume=True)
    assert [event.step for event in second if isinstance(event, StepEvent)] == [5, 6, 7, 8]
    np.testing.assert_array_equal(model_store.load_loss_history(tmp_path / "split"),
                                  np.asarray(straight_losses, dtype=np.float32))
    a = load_file(str(tmp_path / "straight" / model_store.STATE_FILE))
    b = load_file(str(tmp_path / "split" / model_store.STATE_FILE))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert torch.equal(a["model.class_embedding.weight"], b["model.class_embedding.weight"])


def test_with_label_dropout_the_null_row_learns_too(tmp_path):
    """The labels reach the network: with no dropout and no unlabelled images the null row is never used, and its
    gradient is zero, so it stays at zero; with dropout it moves."""
    data = write_class_folders(tmp_path / "data")
    run([data], tiny_config(label_dropout=0.0), tmp_path / "never")
    run([data], tiny_config(label_dropout=0.5), tmp_path / "often")
    never = load_file(str(tmp_path / "never" / model_store.EMA_FILE))["class_embedding.weight"]
    often = load_file(str(tmp_path / "often" / model_store.EMA_FILE))["class_embedding.weight"]
    assert torch.count_nonzero(never[3]) == 0 and torch.count_nonzero(never[:3]) > 0
    assert torch.count_nonzero(often[3]) > 0


def test_classes_on_a_folder_without_class_subfolders_are_refused(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for number in range(4):
        Image.fromarray(np.full((16, 16, 3), 20 * number, dtype=np.uint8)).save(flat / f"{number}.png")
    with pytest.raises(SettingError, match="two or more class subfolders"):
        run([flat], tiny_config(), tmp_path / "m")


def test_resuming_with_other_class_names_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data")
    run([data], tiny_config(steps=2), tmp_path / "m")
    other = write_class_folders(tmp_path / "other", names=("ant", "bee", "cow"))
    with pytest.raises(SettingError, match="trained on the classes cat, dog, owl, not ant, bee, cow"):
        run([other], tiny_config(steps=4), tmp_path / "m", resume=True)


def test_a_fine_tune_adds_classes_to_an_unconditional_model_from_its_very_function(tmp_path):
    data = write_class_folders(tmp_path / "data")
    run([data], tiny_config(steps=2, classes=False), tmp_path / "plain")
    source = model_store.read_model_info(tmp_path / "plain")
    assert source.unet.num_classes == 0 and "classes" not in source.extra
    # Loaded into the fine-tune's network: the new embedding is still zero (a strict=False load leaves it as UNet
    # initialised it), so before its first step the network computes exactly what the source did, for any label.
    state = TrainingState(TrainingConfig.for_fine_tune(source, steps=2, classes=True, num_classes=3,
                                                       preview_count=0), torch.device("cpu"), DistributedContext())
    state.initialise_from(tmp_path / "plain")
    assert state.model.class_embedding.weight.shape[0] == 4
    assert torch.count_nonzero(state.model.class_embedding.weight) == 0
    assert torch.count_nonzero(state.ema.class_embedding.weight) == 0
    plain = model_store.load_model(tmp_path / "plain").unet.eval()
    state.model.eval()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 20, 49])
    with torch.no_grad():
        for labels in (torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3])):
            torch.testing.assert_close(state.model(x, t, labels), plain(x, t), rtol=0, atol=0)
    # Trained: a class-conditional model with the dataset's classes.
    config = TrainingConfig.for_fine_tune(source, steps=4, classes=True, preview_count=0)
    assert isinstance(run([data], config, tmp_path / "tuned")[-1], FinishedEvent)
    tuned = model_store.read_model_info(tmp_path / "tuned")
    assert tuned.unet.num_classes == 3 and tuned.extra["classes"]["names"] == list(CLASS_NAMES)
    embedding = load_file(str(tmp_path / "tuned" / model_store.EMA_FILE))["class_embedding.weight"]
    assert embedding[:3].abs().sum(dim=1).min() > 0


def test_a_fine_tune_of_a_conditional_model_onto_other_classes_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data")
    run([data], tiny_config(steps=2), tmp_path / "cond")
    other = write_class_folders(tmp_path / "other", names=("ant", "bee"))
    config = TrainingConfig.for_fine_tune(model_store.read_model_info(tmp_path / "cond"), steps=2, classes=True,
                                          preview_count=0)
    with pytest.raises(SettingError, match="trained on the classes cat, dog, owl, not ant, bee"):
        run([other], config, tmp_path / "tuned")


def test_a_fine_tune_of_a_conditional_model_stays_conditional_without_being_told(tmp_path):
    data = write_class_folders(tmp_path / "data")
    run([data], tiny_config(steps=2), tmp_path / "cond")
    source = model_store.read_model_info(tmp_path / "cond")
    for asked in (None, False):  # the CLI leaves it out; the window's unticked box says False
        config = TrainingConfig.for_fine_tune(source, steps=2, classes=asked, preview_count=0)
        assert config.classes and config.num_classes == 3
    assert isinstance(run([data], config, tmp_path / "tuned")[-1], FinishedEvent)
    tuned = model_store.read_model_info(tmp_path / "tuned")
    assert tuned.unet.num_classes == 3 and tuned.extra["classes"]["names"] == list(CLASS_NAMES)


def test_the_memory_estimate_counts_the_class_embedding_and_the_labels():
    plain = tiny_config(classes=False).unet_config()
    conditional = replace(plain, num_classes=10)
    unconditional_estimate = estimate_training_memory(plain, 4, dataset_images=100)
    estimate = estimate_training_memory(conditional, 4, dataset_images=100)
    embedding = 11 * UNet(conditional).class_embedding.embedding_dim
    assert estimate.parameters - unconditional_estimate.parameters == embedding
    assert estimate.dataset_bytes - unconditional_estimate.dataset_bytes == 100 * 8  # int64 labels
    assert estimate.activation_bytes >= unconditional_estimate.activation_bytes

"""The evaluation pipeline end to end with the stand-in feature extractor (registered and called exactly as
the Inception network is): identical sets give FID 0, noise a large one; samples are measured as their
saved PNGs; records land in model.json; the dataset cache is reused, and invalidated when a file changes.
The real Inception path runs when its weights are on this machine."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm_studio.core.data.demo import write_demo_dataset
from ddpm_studio.core.data.folders import load_dataset, load_image
from ddpm_studio.core.evaluation import quality as evaluation
from ddpm_studio.core.evaluation.metrics import STANDIN, create_feature_extractor
from ddpm_studio.core.evaluation.quality import (
    EvaluationProgress,
    EvaluationRequest,
    EvaluationResult,
    ReferenceFeatures,
    compute_records,
    dataset_reference,
    features_of_images,
    run_evaluation,
    sample_features,
)
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.sampling.job import sample_images, save_samples

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval") / "shapes"
    list(write_demo_dataset(folder, count=48, size=16, seed=3))
    return folder


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def model(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def reference_of(dataset: Path, cache_dir: Path) -> tuple[ReferenceFeatures, list]:
    extractor = create_feature_extractor(STANDIN, CPU)
    events = list(dataset_reference([dataset], 16, 3, STANDIN, extractor, CPU, batch_size=20, cache_dir=cache_dir))
    assert isinstance(events[-1], ReferenceFeatures)
    return events[-1], events[:-1]


def features(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    *progress, (pool, logits) = features_of_images(create_feature_extractor(STANDIN, CPU), images, 16, CPU, "samples")
    assert progress[-1].done == len(images)
    return pool, logits


def test_identical_images_give_zero_and_noise_a_large_distance(dataset, cache_dir):
    reference, _ = reference_of(dataset, cache_dir)
    real = load_dataset(dataset, 16, 3).images  # decoded as training decodes them
    common = {"n": len(real), "sampler": "ddim", "steps": 50, "data": reference.description, "date": "now"}
    same = {r["metric"]: r for r in compute_records(("fid", "kid", "is"), *features(real), reference, common)}
    assert same["fid"]["value"] == pytest.approx(0.0, abs=1e-6)
    noise = torch.randint(0, 256, real.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    far = {r["metric"]: r for r in compute_records(("fid", "kid"), *features(noise), reference, common)}
    assert far["fid"]["value"] > 1.0, far["fid"]["value"]
    # KID of a set against itself is not exactly 0 (the cross term pairs each image with itself), but small.
    assert far["kid"]["value"] > 4 * abs(same["kid"]["value"])


def test_samples_are_measured_exactly_as_their_saved_pngs(model, tmp_path):
    request = EvaluationRequest(model, metrics=("is",), num_samples=6, batch_size=6, steps=4, seed=5,
                                feature_extractor=STANDIN)
    loaded = model_store.load_model(model)
    *_, (pool, _) = sample_features(request, loaded, create_feature_extractor(STANDIN, CPU), CPU)
    saved = save_samples(sample_images(request.sampling_request(6, 0), loaded), tmp_path / "pngs")[:-1]  # no grid
    reloaded = torch.stack([torch.from_numpy(load_image(path, 16, 3)[0]) for path in saved])
    assert torch.equal(pool, features(reloaded)[0])


def test_evaluation_records_results_in_model_json_and_reuses_the_dataset_cache(model, dataset, cache_dir):
    request = EvaluationRequest(model, [dataset], num_samples=24, batch_size=12, steps=3,
                                feature_extractor=STANDIN, cache_dir=cache_dir)
    events = list(run_evaluation(request))
    result = events[-1]
    assert isinstance(result, EvaluationResult) and not result.reference_from_cache
    phases = {event.phase for event in events if isinstance(event, EvaluationProgress)}
    assert phases == {"reading dataset", "dataset features", "sampling"}
    records = model_store.evaluations(model_store.read_model_info(model))
    assert [r["metric"] for r in records] == ["fid", "kid", "is"]
    for record in records:
        assert {"metric", "value", "n", "sampler", "steps", "data", "date"} <= set(record)
        assert record["n"] == 24 and record["sampler"] == "ddim" and record["steps"] == 3
    assert records[0]["value"] > 0 and "shapes" in records[0]["data"] and "48 images" in records[0]["data"]
    assert records[1]["std"] > 0 and records[1]["subset_size"] == 24

    again = list(run_evaluation(request))
    assert again[-1].reference_from_cache
    assert {e.phase for e in again if isinstance(e, EvaluationProgress)} == {"sampling"}  # no real-image pass
    assert again[-1].records[0]["value"] == pytest.approx(records[0]["value"], rel=1e-9)  # same seed, same numbers
    assert len(model_store.evaluations(model_store.read_model_info(model))) == 6


def test_the_cache_is_invalidated_when_a_file_changes(dataset, cache_dir, tmp_path):
    folder = Path(shutil.copytree(dataset, tmp_path / "data"))
    first, first_events = reference_of(folder, cache_dir)
    assert not first.from_cache and first_events
    second, second_events = reference_of(folder, cache_dir)
    assert second.from_cache and not second_events
    assert torch.equal(second.kid_features, first.kid_features)

    changed = sorted(folder.glob("*.png"))[0]
    stat = changed.stat()
    with Image.open(changed) as image:
        image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    third, third_events = reference_of(folder, cache_dir)
    assert not third.from_cache and third_events
    assert not torch.equal(third.kid_features, first.kid_features)
    assert len(list(cache_dir.glob("*.npz"))) == 1  # the stale entry is gone

    (folder / "extra.png").write_bytes(changed.read_bytes())  # a new file changes the key too
    assert not reference_of(folder, cache_dir)[0].from_cache


def test_a_damaged_cache_file_is_computed_again(dataset, cache_dir):
    reference_of(dataset, cache_dir)
    (cache_file,) = cache_dir.glob("*.npz")
    cache_file.write_bytes(b"not an npz archive")
    reference, events = reference_of(dataset, cache_dir)
    assert not reference.from_cache and events


def test_fid_below_2048_samples_warns_and_bad_requests_say_why(model):
    assert "2048" in EvaluationRequest(model, num_samples=1000).warnings()[0]
    assert EvaluationRequest(model, metrics=("kid",), num_samples=1000).warnings() == []
    for bad in (dict(metrics=("fid", "lpips")), dict(num_samples=1), dict(batch_size=0), dict(against="imagenet"),
                dict(steps=0)):
        with pytest.raises(ValueError):
            EvaluationRequest(model, **bad).validate()


def test_a_model_without_recorded_dataset_asks_for_one(model):
    data = json.loads((model / "model.json").read_text())
    assert data["dataset"].get("paths") == []
    with pytest.raises(ValueError, match="give the image folder"):
        list(run_evaluation(EvaluationRequest(model, num_samples=4, feature_extractor=STANDIN)))


def test_real_inception_path_when_its_weights_are_here():
    from ddpm_studio.core.evaluation.inception import MetricsUnavailable, find_weights

    try:
        weights = find_weights(download=False)
    except MetricsUnavailable as error:
        pytest.skip(f"FID Inception weights absent: {error}")
    extractor = create_feature_extractor(evaluation.INCEPTION, CPU, weights)
    images = torch.from_numpy(load_dataset(Path(__file__).parents[2] / "resources", 32, 3).images.numpy())
    pool, logits = next(iter(evaluation.extract_features(extractor, [images.repeat(3, 1, 1, 1)], CPU)))
    assert pool.shape == (3 * len(images), 2048) and logits.shape == (3 * len(images), 1008)
    assert torch.isfinite(pool).all() and (pool >= 0).all()  # after a ReLU and average pooling


def test_kid_during_training_is_logged_and_recorded_beside_other_evaluations(dataset, tmp_path, monkeypatch):
    from ddpm_studio.core.training.config import TrainingConfig
    from ddpm_studio.core.training.events import CheckpointEvent, EvaluationEvent
    from ddpm_studio.core.training.loop import train_from_folder

    monkeypatch.setenv("DDPM_STUDIO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "run"
    config = TrainingConfig.for_preset("tiny", image_size=16, steps=4, num_timesteps=20, batch_size=4, preview_count=0,
                                       preview_steps=3, checkpoint_every=2, eval_every=2, eval_num=6)
    evaluations = []
    for event in train_from_folder([dataset], config, folder, feature_extractor=STANDIN):
        if isinstance(event, EvaluationEvent):
            evaluations.append(event)
        elif isinstance(event, CheckpointEvent):  # another process records an evaluation meanwhile
            model_store.append_evaluation(folder, {"metric": "fid", "value": 1.0, "n": 10, "sampler": "ddim",
                                                   "steps": 50, "data": "elsewhere", "date": "now"})
    assert [(e.step, e.metric, e.n) for e in evaluations] == [(2, "kid", 6), (4, "kid", 6)]
    assert all(e.value > 0 and e.std >= 0 for e in evaluations)
    records = model_store.evaluations(model_store.read_model_info(folder))
    assert [(r["metric"], r.get("model_step")) for r in records] == [("kid", 2), ("fid", None), ("kid", 4)]
    assert records[0]["during_training"] and records[2]["value"] == pytest.approx(evaluations[1].value)
    # KID during training samples with DPM-Solver++ in 20 calls (at most T), not DDIM 50.
    assert (records[0]["sampler"], records[0]["steps"]) == ("dpm-solver++", 20)
    assert list((tmp_path / "cache").rglob("*.npz"))  # the dataset features are cached for the next run


def test_the_library_inception_runs_through_the_adapter_with_stand_in_weights(tmp_path, monkeypatch):
    """torch-fidelity's own network and TF1-compatible resize, imported beside this torch (the torchvision
    placeholders included) and loaded from a file by path, as with the real weights; random weights stand in
    for those, which this machine may lack. The numbers mean nothing; the shapes and the path are checked."""
    from ddpm_studio.core.evaluation.inception import InceptionFeatures, MetricsUnavailable, import_torch_fidelity

    try:
        import_torch_fidelity()
    except MetricsUnavailable as error:
        pytest.skip(str(error))
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as patch:  # build the bare network once, to write a weights file of its shape
        patch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        bare = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "random-inception.pth"
    torch.save(bare.state_dict(), weights)
    extractor = InceptionFeatures(weights).eval()
    assert torch.equal(extractor.network.fc.weight, bare.fc.weight)  # loaded from the file
    images = load_dataset(Path(__file__).parents[2] / "resources", 24, 1).images  # grey, 24 px: both adapted
    (pool, logits), = evaluation.extract_features(extractor, [images.repeat(2, 1, 1, 1)], CPU)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pool).all() and torch.equal(pool[0], pool[1])

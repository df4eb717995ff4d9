"""Tests for scanning image folders: awkward modes decode right, damaged files are reported, scans stop cleanly."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_studio.core.data.folders import (
    IMAGE_EXTENSIONS,
    DatasetError,
    ScanProgress,
    ScanResult,
    SkipImage,
    find_image_files,
    from_model_range,
    load_dataset,
    load_image,
    random_horizontal_flip,
    reason_kind,
    scan_images,
    to_model_range,
)
from tests.helpers.image_corpus import (
    BLUE,
    GREEN,
    MAGENTA,
    RED,
    WHITE,
    YELLOW,
    ImageCorpus,
    build_corpus,
    write_bad_files,
)

SIZE = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> ImageCorpus:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def colour_result(corpus: ImageCorpus) -> ScanResult:
    return load_dataset(corpus.root, SIZE, channels=3)


@pytest.fixture(scope="module")
def grey_result(corpus: ImageCorpus) -> ScanResult:
    return load_dataset(corpus.root, SIZE, channels=1)


def image_of(result: ScanResult, path: Path) -> np.ndarray:
    """The decoded image of one file, as an int array (H, W, C) for easy comparisons."""
    return result.images[result.files.index(path)].permute(1, 2, 0).numpy().astype(int)


def assert_close(pixels: np.ndarray, colour: tuple[int, ...], tolerance: int) -> None:
    difference = np.abs(pixels - np.array(colour)).max()
    assert difference <= tolerance, (
        f"pixels {pixels.reshape(-1, pixels.shape[-1])[0]} differ from {colour} by {difference}")


# --- what is found, loaded and skipped ------------------------------------------------------


def test_every_good_image_is_loaded_as_one_uint8_tensor(corpus: ImageCorpus, colour_result: ScanResult) -> None:
    assert set(colour_result.files) == set(corpus.good.values())
    count = len(corpus.good)
    assert colour_result.images.shape == (count, 3, SIZE, SIZE)
    assert colour_result.images.dtype == torch.uint8
    assert colour_result.images.is_contiguous()
    assert len(colour_result.source_sizes) == count
    assert (colour_result.image_size, colour_result.channels) == (SIZE, 3)


def test_every_bad_file_is_reported_with_the_right_kind_of_reason(
    corpus: ImageCorpus, colour_result: ScanResult
) -> None:
    reported = {skipped.path: reason_kind(skipped.reason) for skipped in colour_result.skipped}
    assert reported == corpus.bad


def test_too_small_reason_names_the_minimum(colour_result: ScanResult) -> None:
    (reason,) = [skipped.reason for skipped in colour_result.skipped if skipped.path.name == "tiny.png"]
    assert reason == "too small: 4x4, the shorter side must be at least 8 px for 16 px training"


def test_hidden_and_non_image_files_are_passed_over_silently(corpus: ImageCorpus, colour_result: ScanResult) -> None:
    looked_at = set(colour_result.files) | {skipped.path for skipped in colour_result.skipped}
    assert looked_at.isdisjoint(corpus.ignored)


def test_each_bad_file_raises_skip_image_from_load_image(corpus: ImageCorpus) -> None:
    for path, kind in corpus.bad.items():
        with pytest.raises(SkipImage) as caught:
            load_image(path, SIZE, 3)
        assert reason_kind(caught.value.reason) == kind


def test_files_are_found_in_sorted_order_and_rows_match_their_files(corpus: ImageCorpus) -> None:
    files, _ = find_image_files(corpus.root)
    relative = [path.relative_to(corpus.root) for path in files]
    top_level = [path for path in relative if len(path.parts) == 1]
    assert top_level == sorted(top_level)
    assert files == find_image_files(str(corpus.root))[0]

    result = load_dataset(corpus.root, SIZE)
    assert result.files == [path for path in files if path in result.files]
    for row, path in enumerate(result.files):
        expected, source_size = load_image(path, SIZE, 3)
        assert np.array_equal(result.images[row].numpy(), expected), path.name
        assert result.source_sizes[row] == source_size


def test_explicit_files_are_taken_as_given_and_non_images_reported(corpus: ImageCorpus) -> None:
    red, readme = corpus.good["red"], corpus.root / "readme.txt"
    files, skipped = find_image_files([red, str(readme), red])
    assert files == [red]
    assert [(item.path, reason_kind(item.reason)) for item in skipped] == [(readme, "not an image")]


def test_a_dangling_link_is_unreadable_and_a_huge_image_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    Image.new("RGB", (100, 100), RED).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100x100 is then over the 2x bomb limit
    result = list(scan_images(tmp_path, SIZE))[-1]
    assert isinstance(result, ScanResult)
    reasons = {skipped.path.name: reason_kind(skipped.reason) for skipped in result.skipped}
    assert reasons == {"gone.png": "unreadable", "huge.png": "too large"}


def test_a_missing_path_raises_dataset_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DatasetError, match="No such file or folder"):
        find_image_files(missing)
    with pytest.raises(DatasetError, match="No such file or folder"):
        load_dataset([tmp_path, missing], SIZE)


# --- orientation and colours -------------------------------------------------------------------


def test_exif_rotation_is_applied(corpus: ImageCorpus, colour_result: ScanResult) -> None:
    path = corpus.good["exif_rotated"]
    image = image_of(colour_result, path)
    # Stored wide with red on the left; turned a quarter clockwise, red is on top.
    assert_close(image[0], RED, tolerance=40)
    assert_close(image[-1], BLUE, tolerance=40)
    assert colour_result.source_sizes[colour_result.files.index(path)] == (32, 64)


@pytest.mark.parametrize(
    ("role", "colour", "tolerance"),
    [
        ("red", RED, 0),
        ("grey16", (128, 128, 128), 1),
        ("tiff16", (64, 64, 64), 1),
        ("grey", (200, 200, 200), 0),
        ("cmyk", (0, 255, 255), 12),
        ("animated", RED, 0),
        ("large_jpeg", MAGENTA, 12),
        ("minimum", YELLOW, 0),
        ("non_ascii", GREEN, 0),
        ("nested", YELLOW, 0),
    ],
)
def test_solid_images_keep_their_colour(
    corpus: ImageCorpus, colour_result: ScanResult, role: str, colour: tuple[int, int, int], tolerance: int
) -> None:
    assert_close(image_of(colour_result, corpus.good[role]), colour, tolerance)


@pytest.mark.parametrize(
    ("role", "left", "right"),
    [
        ("rgba", RED, WHITE),
        ("palette", WHITE, BLUE),
        ("la", (100, 100, 100), WHITE),
        ("bilevel", WHITE, (0, 0, 0)),
    ],
)
def test_transparency_goes_white_and_two_tone_images_keep_their_halves(
    corpus: ImageCorpus, colour_result: ScanResult, role: str, left: tuple[int, int, int], right: tuple[int, int, int]
) -> None:
    image = image_of(colour_result, corpus.good[role])
    assert_close(image[:, :4], left, tolerance=2)
    assert_close(image[:, -4:], right, tolerance=2)


def test_source_sizes_are_the_original_sizes(corpus: ImageCorpus, colour_result: ScanResult) -> None:
    sizes = dict(zip(colour_result.files, colour_result.source_sizes))
    assert sizes[corpus.good["large_jpeg"]] == (200, 120)
    assert sizes[corpus.good["minimum"]] == (8, 12)
    assert sizes[corpus.good["nested"]] == (30, 20)


def test_grey_mode_uses_luminance(corpus: ImageCorpus, grey_result: ScanResult) -> None:
    assert grey_result.images.shape == (len(corpus.good), 1, SIZE, SIZE)
    # ITU-R 601 luma of pure red: 0.299 * 255.
    assert_close(image_of(grey_result, corpus.good["red"]), (76,), tolerance=1)
    assert_close(image_of(grey_result, corpus.good["grey16"]), (128,), tolerance=1)
    assert_close(image_of(grey_result, corpus.good["grey"]), (200,), tolerance=0)
    assert_close(image_of(grey_result, corpus.good["rgba"])[:, -4:], (255,), tolerance=2)


# --- events and messages --------------------------------------------------------------------------


def test_progress_counts_up_to_total_then_one_result(corpus: ImageCorpus) -> None:
    events = list(scan_images(corpus.root, SIZE, workers=3))
    progress, last = events[:-1], events[-1]
    assert all(isinstance(event, ScanProgress) for event in progress)
    assert isinstance(last, ScanResult)
    total = len(corpus.good) + len(corpus.bad)
    assert [event.done for event in progress] == list(range(1, total + 1))
    assert {event.total for event in progress} == {total}
    assert {event.path for event in progress} == set(corpus.good.values()) | set(corpus.bad)


def test_summary_is_json_and_counts_what_was_found(corpus: ImageCorpus, colour_result: ScanResult) -> None:
    summary = json.loads(json.dumps(colour_result.summary()))
    assert summary["count"] == len(corpus.good)
    assert summary["skipped"] == len(corpus.bad)
    assert summary["skipped_by_reason"]["damaged or truncated"] == 2
    assert summary["source"] == str(corpus.root)
    assert (summary["image_size"], summary["channels"]) == (SIZE, 3)
    assert summary["source_size_min"] == [8, 12]
    assert summary["source_size_max"] == [200, 120]


def test_an_empty_folder_gives_an_empty_result_and_a_readable_error(tmp_path: Path) -> None:
    events = list(scan_images(tmp_path, SIZE))
    assert len(events) == 1 and isinstance(events[0], ScanResult)
    assert events[0].images.shape == (0, 3, SIZE, SIZE)
    with pytest.raises(DatasetError, match=r"No usable images in .*: the folder is empty\.$"):
        load_dataset(tmp_path, SIZE)


def test_a_folder_without_image_names_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DatasetError, match="no file has an image extension"):
        load_dataset(tmp_path, SIZE)


def test_a_folder_of_only_bad_files_says_what_was_found(tmp_path: Path) -> None:
    write_bad_files(tmp_path, ImageCorpus(tmp_path))
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path, SIZE)
    message = str(caught.value)
    assert message == (
        f"No usable images in {tmp_path}: 5 files looked at, 2 damaged, 1 empty, 1 not an image, 1 too small."
    )


def test_impossible_settings_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channel"):
        next(scan_images(tmp_path, SIZE, channels=2))
    with pytest.raises(ValueError, match="image size"):
        next(scan_images(tmp_path, 0))


def test_extensions_are_lower_case_with_a_dot() -> None:
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# --- stopping ---------------------------------------------------------------------------------------


def scan_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("ddpm-scan")]


def test_closing_a_scan_early_leaves_no_threads(tmp_path: Path) -> None:
    """How soon the close returns is measured by ``benchmarks/scan_close.py``, not asserted here."""
    first = tmp_path / "image_000.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(first)
    for index in range(1, 200):
        shutil.copyfile(first, tmp_path / f"image_{index:03d}.png")

    scan = scan_images(tmp_path, SIZE, workers=2)
    event = next(scan)
    assert isinstance(event, ScanProgress) and event.total == 200
    scan.close()
    assert scan_threads() == []


# --- tensors for the model --------------------------------------------------------------------------


def test_model_range_round_trips_every_value() -> None:
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    model_range = to_model_range(values)
    assert model_range.dtype == torch.float32
    assert model_range.min().item() == -1.0 and model_range.max().item() == 1.0
    assert torch.equal(from_model_range(model_range), values)


def test_from_model_range_clamps_and_rounds() -> None:
    images = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0, float("nan")])
    assert from_model_range(images).tolist() == [0, 0, 128, 255, 255, 255, 128]
    with pytest.raises(TypeError):
        to_model_range(torch.zeros(1, 3, 4, 4))


def test_random_flip_flips_some_images_and_is_deterministic_for_a_seed() -> None:
    batch = torch.arange(32 * 3 * 4 * 4, dtype=torch.float32).reshape(32, 3, 4, 4)
    flipped = random_horizontal_flip(batch, torch.Generator().manual_seed(1))
    was_flipped = [bool(torch.equal(flipped[i], batch[i].flip(-1))) for i in range(32)]
    was_kept = [bool(torch.equal(flipped[i], batch[i])) for i in range(32)]
    assert all(flip != keep for flip, keep in zip(was_flipped, was_kept))
    assert 0 < sum(was_flipped) < 32
    assert torch.equal(flipped, random_horizontal_flip(batch, torch.Generator().manual_seed(1)))
    assert not torch.equal(flipped, random_horizontal_flip(batch, torch.Generator().manual_seed(2)))


def test_files_that_are_not_images_are_counted_as_ignored_not_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    write_png(folder / "a.png")
    write_png(folder / "trip" / "b.png", seed=1)
    (folder / "notes.txt").write_text("where and when", encoding="utf-8")
    (folder / "trip" / "route.gpx").write_text("<gpx/>", encoding="utf-8")
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden files are neither read nor reported
    result = list(scan_images(folder, SIZE))[-1]
    assert [path.name for path in result.files] == ["a.png", "b.png"]
    assert result.skipped == []
    assert sorted(path.name for path in result.ignored) == ["notes.txt", "route.gpx"]
    assert result.summary()["ignored"] == 2

    only_notes = tmp_path / "notes"
    only_notes.mkdir()
    (only_notes / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DatasetError, match=r": 1 file found, but no file has an image extension"):
        load_dataset(only_notes, SIZE)
    (only_notes / "broken.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DatasetError, match=r"1 file looked at, 1 [a-z ]+; 1 other file ignored, not images\.$"):
        load_dataset(only_notes, SIZE)


def write_png(path: Path, size: int = 24, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path

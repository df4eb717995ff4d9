"""The decoded-dataset cache: hits open without decoding, changed inputs miss, a killed writer or a
damaged entry is never used, and processes that may not build wait for the one that does."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_studio.core.data import cache as dataset_cache
from ddpm_studio.core.data.cache import (
    CachedScanResult,
    CacheMessage,
    clear_cache,
    dataset_key,
    list_cache_entries,
    open_cached_dataset,
)
from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.data.folders import ScanProgress, explain_no_usable_images, load_dataset

SIZE = 16


def write_folder(folder: Path, count: int = 12, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(make_demo_images(count, size=24, seed=seed)):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    (folder / "notes.png").write_text("not a picture")  # one skipped file, for the stored report
    return folder


def open_all(folder: Path, size: int = SIZE, **options) -> tuple[CachedScanResult, list]:
    events = list(open_cached_dataset([folder], size, 3, **options))
    assert isinstance(events[-1], CachedScanResult)
    return events[-1], events[:-1]


def entry_folders(cache: Path) -> list[Path]:
    return sorted(path for path in (cache / "datasets").iterdir())


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "images")


def test_the_second_open_maps_the_entry_without_decoding(folder, cache_folder):
    first, first_events = open_all(folder)
    assert first.decoded and any(isinstance(event, ScanProgress) for event in first_events)
    second, second_events = open_all(folder)
    assert not second.decoded
    assert not any(isinstance(event, ScanProgress) for event in second_events)
    assert any(isinstance(event, CacheMessage) and "nothing to decode" in event.text for event in second_events)
    assert second.entry == first.entry and len(entry_folders(cache_folder)) == 1

    # The same images, files, sizes and skipped-files report as decoding into memory.
    direct = load_dataset([folder], SIZE, 3)
    assert torch.equal(second.images, direct.images)
    assert [p.resolve() for p in second.files] == [p.resolve() for p in direct.files]
    assert second.source_sizes == direct.source_sizes
    assert [(s.path.name, s.reason) for s in second.skipped] == [(s.path.name, s.reason) for s in direct.skipped]
    assert len(second.skipped) == 1 and second.summary()["count"] == 12
    # The images are mapped from the entry's file, not copied into memory.
    assert second.mapping is not None and second.mapping.path == second.entry / dataset_cache.DATA_FILE


def change_one_file(folder: Path) -> None:
    path = folder / "003.png"
    Image.fromarray(make_demo_images(1, size=24, seed=99)[0]).save(path)
    stamp = path.stat().st_mtime_ns + 5_000_000_000  # a clearly later time, whatever the clock's resolution
    os.utime(path, ns=(stamp, stamp))


def add_one_file(folder: Path) -> None:
    Image.fromarray(make_demo_images(1, size=24, seed=98)[0]).save(folder / "100.png")


@pytest.mark.parametrize("change", ["changed file", "added file", "other resolution"])
def test_a_changed_input_misses_and_is_decoded_again(folder, cache_folder, change):
    first, _ = open_all(folder)
    before = first.images.clone()
    size = SIZE
    if change == "changed file":
        change_one_file(folder)
    elif change == "added file":
        add_one_file(folder)
    else:
        size = 8
    second, events = open_all(folder, size)
    assert second.decoded and any(isinstance(event, ScanProgress) for event in events)
    assert second.entry != first.entry
    direct = load_dataset([folder], size, 3)
    assert torch.equal(second.images, direct.images)  # the new contents, never the stale entry
    if change == "other resolution":
        assert len(entry_folders(cache_folder)) == 2  # both resolutions stay usable
    else:
        assert entry_folders(cache_folder) == [second.entry]  # the stale entry is gone
        assert second.images.shape != before.shape or not torch.equal(second.images, before)


def test_the_key_covers_paths_sizes_times_resolution_channels_and_decoding_rules(folder, monkeypatch):
    files = sorted(folder.glob("*.png"))
    key = dataset_key([folder], files, SIZE, 3)
    assert dataset_key([folder], files, SIZE, 3) == key
    assert dataset_key([folder.parent], files, SIZE, 3) != key
    assert dataset_key([folder], files[:-1], SIZE, 3) != key
    assert dataset_key([folder], files, SIZE, 1) != key and dataset_key([folder], files, 32, 3) != key
    change_one_file(folder)
    assert dataset_key([folder], files, SIZE, 3) != key
    changed = dataset_key([folder], files, SIZE, 3)
    monkeypatch.setattr(dataset_cache, "DECODING_RULES_VERSION", dataset_cache.DECODING_RULES_VERSION + 1)
    assert dataset_key([folder], files, SIZE, 3) != changed


def build_and_hang(folder: str, ready) -> None:
    """In a forked child: start building the entry, report after the first decoded file, then hang until killed."""
    torch.set_num_threads(1)
    for event in open_cached_dataset([Path(folder)], SIZE, 3, workers=1):
        if isinstance(event, ScanProgress):
            ready.set()
            threading.Event().wait()


def test_a_killed_writer_leaves_nothing_that_looks_valid(folder, cache_folder):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=build_and_hang, args=(str(folder), ready))
    child.start()
    try:
        assert ready.wait(120), "the child never started decoding"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(60)
    key = dataset_key([folder], sorted(str(path) for path in folder.glob("*.png")), SIZE, 3)
    left = entry_folders(cache_folder)
    assert left and all(dataset_cache.PARTIAL_MARK in path.name for path in left)  # only the unfinished build
    assert not (cache_folder / "datasets" / key).exists()
    assert [entry.usable for entry in list_cache_entries()] == [False]

    result, _ = open_all(folder)  # decodes again, and clears the dead writer's leftovers
    assert result.decoded and entry_folders(cache_folder) == [result.entry]
    assert torch.equal(result.images, load_dataset([folder], SIZE, 3).images)


def damage_data(entry: Path) -> None:
    data = entry / dataset_cache.DATA_FILE
    data.write_bytes(data.read_bytes()[:1000])


def damage_index(entry: Path) -> None:
    (entry / dataset_cache.INDEX_FILE).write_text('{"format": 1, "count": ')


def forge_index(entry: Path) -> None:
    """An index that parses but claims more images than the file holds."""
    index = json.loads((entry / dataset_cache.INDEX_FILE).read_text())
    index["count"] += 5
    index["files"] += ["x"] * 5
    index["source_sizes"] += [[1, 1]] * 5
    (entry / dataset_cache.INDEX_FILE).write_text(json.dumps(index))


@pytest.mark.parametrize("damage", [damage_data, damage_index, forge_index])
def test_a_damaged_entry_is_rebuilt_with_a_sentence(folder, cache_folder, damage):
    first, _ = open_all(folder)
    expected = first.images.clone()
    first.mapping = first.images = None
    damage(entry_folders(cache_folder)[0])
    assert [entry.usable for entry in list_cache_entries()] == [False]
    second, events = open_all(folder)
    sentences = [event.text for event in events if isinstance(event, CacheMessage)]
    assert any("damaged" in text and "decoding the images again" in text for text in sentences), sentences
    assert second.decoded and torch.equal(second.images, expected)
    assert [entry.usable for entry in list_cache_entries()] == [True]


def test_a_process_that_may_not_build_waits_for_the_one_that_does(folder, cache_folder):
    waited: dict = {}

    def wait_for_entry():
        waited["result"], waited["events"] = open_all(folder, builder=False)

    waiter = threading.Thread(target=wait_for_entry)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not (cache_folder / "datasets").exists()  # it decodes nothing itself
    built, _ = open_all(folder)
    waiter.join(60)
    assert not waiter.is_alive()
    assert not waited["result"].decoded and waited["result"].entry == built.entry
    assert any("Waiting for local rank 0" in e.text for e in waited["events"] if isinstance(e, CacheMessage))
    assert torch.equal(waited["result"].images, built.images)


def test_list_and_clear(folder, cache_folder):
    assert list_cache_entries() == [] and clear_cache() == (0, 0)
    open_all(folder)
    open_all(folder, 8)
    entries = list_cache_entries()
    assert len(entries) == 2 and all(entry.usable for entry in entries)
    assert all(str(folder) in entry.description and "1 skipped" in entry.description for entry in entries)
    size = sum(entry.size_bytes for entry in entries)
    assert size >= 12 * 3 * (SIZE * SIZE + 8 * 8)
    assert clear_cache() == (2, size)
    assert list_cache_entries() == []
    result, _ = open_all(folder)
    assert result.decoded


def test_a_folder_without_usable_images_is_cached_as_empty(tmp_path, cache_folder):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("no")
    result, _ = open_all(tmp_path / "junk")
    assert len(result.images) == 0 and len(result.skipped) == 1
    again, _ = open_all(tmp_path / "junk")
    assert not again.decoded and again.skipped[0].reason == result.skipped[0].reason
    assert isinstance(again.images, torch.Tensor) and again.images.shape == (0, 3, SIZE, SIZE)
    np.testing.assert_array_equal(again.images.numpy(), result.images.numpy())


def test_folders_without_an_image_file_have_entries_of_their_own(tmp_path, cache_folder):
    empty, text_only = tmp_path / "e", tmp_path / "t"
    empty.mkdir()
    text_only.mkdir()
    (text_only / "a.txt").write_text("hi")
    first, _ = open_all(empty)
    second, _ = open_all(text_only)
    assert second.decoded and second.entry != first.entry  # not the empty folder's entry
    assert second.sources == [text_only] and [path.name for path in second.ignored] == ["a.txt"]
    sentence = explain_no_usable_images(second)
    assert str(text_only) in sentence and "1 file found" in sentence and str(empty) not in sentence
    again, _ = open_all(empty)  # each folder keeps its own entry, and its own sentence
    assert not again.decoded and again.entry == first.entry
    assert explain_no_usable_images(again) == f"No usable images in {empty}: the folder is empty."

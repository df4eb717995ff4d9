"""Classes from labelled folders: first-level subfolders name the classes, top-level images stay
unlabelled, skipped files do not shift labels, and the dataset cache keeps the labels it can trust."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_studio.core.data.cache import CachedScanResult, open_cached_dataset
from ddpm_studio.core.data.folders import CLASSES_NAMED, UNLABELLED, ScanResult, scan_images

SIZE = 16


def write_png(path: Path, value: int) -> Path:
    """A flat 24x24 picture whose grey level names it, so that a label can be checked against its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), value, dtype=np.uint8)).save(path)
    return path


def write_classes(root: Path, counts: dict[str, int], top_level: int = 0) -> Path:
    for class_position, (name, count) in enumerate(counts.items()):
        for index in range(count):
            write_png(root / name / f"{index:03d}.png", 10 * class_position + index)
    for index in range(top_level):
        write_png(root / f"top{index}.png", 200 + index)
    return root


def scan(paths, size: int = SIZE) -> ScanResult:
    events = list(scan_images(paths, size, 3, workers=2))
    assert isinstance(events[-1], ScanResult)
    return events[-1]


def open_cached(paths) -> CachedScanResult:
    events = list(open_cached_dataset(paths, SIZE, 3))
    assert isinstance(events[-1], CachedScanResult)
    return events[-1]


def labels_by_file(result: ScanResult) -> dict[str, str | None]:
    """Each file's class name as the result gives it (None: unlabelled)."""
    return {Path(path).as_posix(): (None if label == UNLABELLED else result.class_names[label])
            for path, label in zip(result.files, result.labels.tolist())}


def test_first_level_subfolders_label_their_images_in_sorted_order(tmp_path):
    root = write_classes(tmp_path / "pets", {"zebra": 2, "cat": 3, "dog": 1})
    result = scan([root])
    assert result.labelled
    assert result.class_names == ["cat", "dog", "zebra"]
    assert result.class_counts() == [3, 1, 2]
    assert result.unlabelled_count() == 0
    assert result.labels.dtype == torch.long and len(result.labels) == len(result.files) == 6
    for path, name in labels_by_file(result).items():
        assert Path(path).parent.name == name
    assert result.summary()["classes"] == {"names": ["cat", "dog", "zebra"], "counts": [3, 1, 2], "unlabelled": 0}
    assert result.describe_classes() == "3 classes from the subfolders: cat 3, dog 1, zebra 2."


def test_deeper_folders_take_their_first_level_folders_class(tmp_path):
    root = tmp_path / "animals"
    write_png(root / "bird" / "a.png", 1)
    write_png(root / "bird" / "small" / "wren" / "b.png", 2)
    write_png(root / "fish" / "deep" / "c.png", 3)
    result = scan([root])
    assert result.class_names == ["bird", "fish"]  # "small", "wren" and "deep" are not classes
    names = {Path(path).name: name for path, name in labels_by_file(result).items()}
    assert names == {"a.png": "bird", "b.png": "bird", "c.png": "fish"}
    assert result.class_counts() == [2, 1]


def test_a_single_subfolder_is_not_a_labelled_dataset(tmp_path):
    root = write_classes(tmp_path / "one", {"only": 3}, top_level=2)
    result = scan([root])
    assert not result.labelled and result.labels is None and result.class_names == []
    assert result.class_counts() == [] and result.unlabelled_count() == 0
    assert "classes" not in result.summary()
    assert len(result.files) == 5
    assert result.describe_classes().startswith("No classes")


def test_top_level_images_beside_class_folders_are_kept_unlabelled_and_said_so(tmp_path):
    root = write_classes(tmp_path / "mixed", {"a": 2, "b": 2}, top_level=3)
    result = scan([root])
    assert len(result.files) == 7
    names = labels_by_file(result)
    assert [name for path, name in names.items() if Path(path).parent == root] == [None, None, None]
    assert result.unlabelled_count() == 3 and result.class_counts() == [2, 2]
    assert result.summary()["classes"]["unlabelled"] == 3
    line = result.describe_classes()
    assert "\n" not in line
    assert line == ("2 classes from the subfolders: a 2, b 2. 3 images outside the class folders "
                    "are kept without a class: they train the null label only.")
    one = scan([write_classes(tmp_path / "single", {"a": 1, "b": 1}, top_level=1)])
    assert "1 image outside the class folders is kept without a class: it trains" in one.describe_classes()


def test_several_sources_share_one_set_of_class_names(tmp_path):
    first = write_classes(tmp_path / "first", {"cat": 2, "dog": 1})
    second = write_classes(tmp_path / "second", {"dog": 2, "owl": 1})
    loose = write_png(tmp_path / "loose.png", 99)
    result = scan([first, second, loose])
    assert result.class_names == ["cat", "dog", "owl"]
    assert result.class_counts() == [2, 3, 1]
    assert result.unlabelled_count() == 1  # a file given by itself belongs to no class folder
    for path, name in labels_by_file(result).items():
        assert name == (None if Path(path).name == "loose.png" else Path(path).parent.name)


def test_two_sources_with_one_subfolder_each_are_labelled_by_both(tmp_path):
    cats = write_classes(tmp_path / "a", {"cat": 2})
    dogs = write_classes(tmp_path / "b", {"dog": 1})
    result = scan([cats, dogs])
    assert result.class_names == ["cat", "dog"] and result.class_counts() == [2, 1]


def test_damaged_images_do_not_shift_the_labels_of_the_others(tmp_path):
    root = write_classes(tmp_path / "pets", {"cat": 3, "dog": 3, "owl": 2})
    (root / "cat" / "001.png").write_bytes(b"not a picture")
    (root / "dog" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = scan([root])
    assert {Path(item.path).name for item in result.skipped} >= {"001.png", "000.png"}
    assert len(result.files) == 6 == len(result.labels)
    assert result.class_counts() == [2, 2, 2]
    for row, (path, name) in enumerate(labels_by_file(result).items()):
        assert Path(path).parent.name == name
        # Each kept row's pixels are its own file's, so images and labels still line up after the gaps close.
        expected = np.asarray(Image.open(path).convert("RGB"))[0, 0, 0]
        assert int(result.images[row, 0, 0, 0]) == int(expected)


def test_a_cache_miss_then_a_hit_give_the_same_labels(tmp_path, cache_folder):
    root = write_classes(tmp_path / "pets", {"dog": 2, "cat": 3}, top_level=1)
    (root / "cat" / "bad.png").write_text("not a picture")
    built = open_cached([root])
    hit = open_cached([root])
    assert built.decoded and not hit.decoded
    assert hit.class_names == built.class_names == ["cat", "dog"]
    assert torch.equal(hit.labels, built.labels) and hit.labels.dtype == torch.long
    assert hit.class_counts() == [3, 2] and hit.unlabelled_count() == 1
    assert hit.describe_classes() == scan([root]).describe_classes()
    assert hit.summary()["classes"] == built.summary()["classes"]
    for path, name in labels_by_file(hit).items():
        assert name == (None if Path(path).parent == root else Path(path).parent.name)


def test_an_unlabelled_dataset_stays_unlabelled_through_the_cache(tmp_path, cache_folder):
    root = write_classes(tmp_path / "plain", {"only": 2}, top_level=2)
    open_cached([root])
    hit = open_cached([root])
    assert not hit.decoded and hit.labels is None and hit.class_names == []


def only_index(cache_folder: Path) -> Path:
    [index] = sorted((cache_folder / "datasets").glob("*/index.json"))
    return index


def edit_index(cache_folder: Path, change) -> None:
    index_file = only_index(cache_folder)
    index = json.loads(index_file.read_text(encoding="utf-8"))
    change(index)
    index_file.write_text(json.dumps(index), encoding="utf-8")


def test_a_format_1_entry_is_rebuilt_rather_than_trusted(tmp_path, cache_folder):
    root = write_classes(tmp_path / "pets", {"cat": 2, "dog": 2})
    open_cached([root])

    def as_format_1(index: dict) -> None:  # what a cache written before labels holds
        index["format"] = 1
        del index["labels"], index["class_names"]

    edit_index(cache_folder, as_format_1)
    rebuilt = open_cached([root])
    assert rebuilt.decoded
    assert rebuilt.class_names == ["cat", "dog"] and rebuilt.labels.tolist() == [0, 0, 1, 1]
    assert json.loads(only_index(cache_folder).read_text(encoding="utf-8"))["format"] == 2
    assert not open_cached([root]).decoded


def test_an_index_with_labels_of_the_wrong_length_is_treated_as_damaged(tmp_path, cache_folder):
    root = write_classes(tmp_path / "pets", {"cat": 2, "dog": 2})
    open_cached([root])
    edit_index(cache_folder, lambda index: index["labels"].pop())
    rebuilt = open_cached([root])
    assert rebuilt.decoded and rebuilt.labels.tolist() == [0, 0, 1, 1]


def test_an_index_with_labels_outside_its_classes_is_treated_as_damaged(tmp_path, cache_folder):
    root = write_classes(tmp_path / "pets", {"cat": 2, "dog": 2})
    open_cached([root])
    for damage in (lambda index: index["labels"].__setitem__(0, 2),  # past the last class
                   lambda index: index["labels"].__setitem__(0, -2),
                   lambda index: index["class_names"].reverse(),  # not in sorted order
                   lambda index: index.__setitem__("class_names", ["cat"])):
        edit_index(cache_folder, damage)
        rebuilt = open_cached([root])
        assert rebuilt.decoded and rebuilt.class_names == ["cat", "dog"] and rebuilt.labels.tolist() == [0, 0, 1, 1]


def test_the_description_of_many_classes_names_a_few_and_counts_the_rest(tmp_path):
    root = tmp_path / "many"
    for index in range(CLASSES_NAMED + 3):
        write_png(root / f"c{index:02d}" / "a.png", index)
    line = scan([root]).describe_classes()
    assert line.startswith(f"{CLASSES_NAMED + 3} classes from the subfolders: c00 1, c01 1,")
    assert line.endswith(f"c{CLASSES_NAMED - 1:02d} 1 and 3 more.")
    assert f"c{CLASSES_NAMED:02d}" not in line

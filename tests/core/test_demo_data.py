"""Tests of the procedural demo dataset, the sample picture and the image statistics that tell them from noise."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_studio.core.data.demo import (
    DEFAULT_DEMO_COUNT,
    SHAPE_COLOURS,
    SHAPES,
    DemoDataset,
    create_demo_dataset,
    make_demo_image,
    make_demo_images,
    write_demo_dataset,
)
from ddpm_studio.core.data.sample_picture import make_sample_picture
from tests.helpers.image_stats import (
    colour_histogram,
    flat_fraction,
    histogram_distance,
    to_channels_last,
    total_variation,
)

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def _specs(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [make_demo_image(rng)[1] for _ in range(count)]


# --- demo images ---------------------------------------------------------------------


def test_same_seed_gives_identical_images_and_another_seed_different_ones():
    first = make_demo_images(20, seed=7)
    again = make_demo_images(20, seed=7)
    other = make_demo_images(20, seed=8)
    assert first.dtype == np.uint8 and first.shape == (20, 32, 32, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # A shorter run is a prefix of a longer one, so a count never changes earlier images.
    assert np.array_equal(make_demo_images(5, seed=7), first[:5])


def test_size_is_honoured():
    images = make_demo_images(3, size=48, seed=0)
    assert images.shape == (3, 48, 48, 3)


def test_variety_of_shapes_colours_backgrounds_and_sizes():
    specs = _specs(300)
    # Measured for seed 0: 98 circles, 105 squares, 97 triangles; all 8 colours (26..53 each);
    # 141 plain and 159 gradient backgrounds; sizes 9.6..22.4 px of 32.
    shape_counts = Counter(spec.shape for spec in specs)
    assert set(shape_counts) == set(SHAPES)
    assert min(shape_counts.values()) >= 60
    assert set(spec.colour_name for spec in specs) == set(SHAPE_COLOURS)
    background_counts = Counter(spec.background.kind for spec in specs)
    assert min(background_counts["plain"], background_counts["gradient"]) >= 100
    sizes = [spec.size for spec in specs]
    assert 0.3 * 32 <= min(sizes) < 0.4 * 32 and 0.6 * 32 < max(sizes) <= 0.7 * 32
    for spec in specs:
        assert len(spec.background.colours) == (1 if spec.background.kind == "plain" else 2)


def test_images_show_what_their_specs_say():
    rng = np.random.default_rng(3)
    for _ in range(60):
        image, spec = make_demo_image(rng)
        pixels = np.asarray(image).astype(np.int16)
        centre_x, centre_y = spec.centre
        # The centre of the bounding box lies inside every shape, and the shape is solid.
        assert np.abs(pixels[int(centre_y), int(centre_x)] - spec.colour).max() <= 2
        half_width = spec.size / 2
        expected_area = {
            "circle": math.pi * half_width**2,
            "square": spec.size**2,
            "triangle": spec.size * spec.size * math.sqrt(3) / 4,
        }[spec.shape]
        # Pixels within 40 levels of the shape colour: the interior plus part of the edge.
        # Measured over 300 images: 0.76..1.07 of the drawn area (small triangles lowest).
        near_colour = (np.abs(pixels - spec.colour).max(axis=-1) <= 40).sum()
        assert near_colour == pytest.approx(expected_area, rel=0.3)
        if spec.background.kind == "plain":
            # Shapes keep a margin from the border, so a corner far from the shape shows the background.
            corners = [(0, 0), (0, 31), (31, 0), (31, 31)]
            farthest = max(corners, key=lambda corner: (corner[0] - centre_y) ** 2 + (corner[1] - centre_x) ** 2)
            assert np.array_equal(pixels[farthest], spec.background.colours[0])


# --- writing a demo folder -----------------------------------------------------------


def test_write_demo_dataset_writes_the_images_and_a_readme(tmp_path):
    out_dir = tmp_path / "demo" / "shapes"
    events = list(write_demo_dataset(out_dir, count=12, size=32, seed=5))
    reports = [(event.done, event.total) for event in events[:-1]]
    assert isinstance(events[-1], DemoDataset) and events[-1].folder == out_dir
    paths = events[-1].paths
    assert [path.name for path in paths] == [f"shape_{index:05d}.png" for index in range(12)]
    assert sorted(path.name for path in out_dir.glob("*.png")) == [path.name for path in paths]
    expected = make_demo_images(12, size=32, seed=5)
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
            assert np.array_equal(np.asarray(image), expected[index])
    assert reports == [(done, 12) for done in range(1, 13)]
    readme = (out_dir / "README.txt").read_text(encoding="utf-8")
    assert "seed 5" in readme and "12 images" in readme
    assert not list(out_dir.glob(".*"))  # no temporary files left behind
    assert DEFAULT_DEMO_COUNT == 2000


def test_write_demo_dataset_replaces_its_own_earlier_dataset(tmp_path):
    create_demo_dataset(tmp_path, count=8, seed=1)
    paths = create_demo_dataset(tmp_path, count=5, seed=2)
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [path.name for path in paths]
    with Image.open(paths[0]) as image:
        assert np.array_equal(np.asarray(image), make_demo_images(1, seed=2)[0])


@pytest.mark.parametrize(
    "foreign_name, foreign_bytes",
    [("holiday.jpg", b"not really a jpeg"), ("README.txt", b"My own notes.\n"), ("shape_1.png", b"a user's file")],
)
def test_write_demo_dataset_refuses_a_folder_with_other_files_and_leaves_it_alone(
    tmp_path, foreign_name, foreign_bytes
):
    (tmp_path / foreign_name).write_bytes(foreign_bytes)
    with pytest.raises(ValueError, match="already holds other files"):
        create_demo_dataset(tmp_path, count=4)
    assert [entry.name for entry in tmp_path.iterdir()] == [foreign_name]
    assert (tmp_path / foreign_name).read_bytes() == foreign_bytes


def test_write_demo_dataset_refuses_a_folder_holding_a_subfolder(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="already holds other files"):
        create_demo_dataset(tmp_path, count=2)
    assert [entry.name for entry in tmp_path.iterdir()] == ["cats"]


def test_demo_data_by_shape_is_the_same_images_labelled_by_their_shape(tmp_path, capsys):
    from ddpm_studio import cli
    from ddpm_studio.core.data.demo import iter_demo_images
    from ddpm_studio.core.data.folders import scan_images

    out_dir = tmp_path / "shapes"
    assert cli.main(["demo-data", str(out_dir), "--count", "30", "--size", "16", "--seed", "4", "--classes"]) == 0
    assert "one subfolder per shape" in capsys.readouterr().out
    specs = [spec for _image, spec in iter_demo_images(30, 16, 4)]
    flat = make_demo_images(30, size=16, seed=4)
    for index, spec in enumerate(specs):
        with Image.open(out_dir / spec.shape / f"shape_{index:05d}.png") as image:
            assert np.array_equal(np.asarray(image), flat[index])
    assert "--classes" in (out_dir / "README.txt").read_text(encoding="utf-8")
    result = [event for event in scan_images([out_dir], 16)][-1]
    assert result.class_names == sorted(set(spec.shape for spec in specs))
    counts = Counter(spec.shape for spec in specs)
    assert result.class_counts() == [counts[name] for name in result.class_names]


def test_a_flat_demo_dataset_replaces_a_labelled_one_and_back(tmp_path):
    create_demo_dataset(tmp_path, count=9, size=16, seed=1, by_shape=True)
    assert {entry.name for entry in tmp_path.iterdir() if entry.is_dir()} == set(SHAPES)
    paths = create_demo_dataset(tmp_path, count=4, size=16, seed=2)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted([p.name for p in paths] + ["README.txt"])
    paths = create_demo_dataset(tmp_path, count=6, size=16, seed=3, by_shape=True)
    assert sorted(tmp_path.rglob("*.png")) == sorted(paths) and not list(tmp_path.glob("*.png"))


def test_a_shape_named_subfolder_with_a_users_file_is_refused_and_left_alone(tmp_path):
    (tmp_path / "circle").mkdir()
    (tmp_path / "circle" / "my_circle.png").write_bytes(b"a user's file")
    with pytest.raises(ValueError, match="already holds other files"):
        create_demo_dataset(tmp_path, count=3, size=16, by_shape=True)
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["circle", "circle/my_circle.png"]


# --- image statistics ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_and_noise():
    demo = make_demo_images(300, seed=1)
    demo_other_seed = make_demo_images(300, seed=2)
    noise = np.random.default_rng(3).integers(0, 256, size=demo.shape, dtype=np.uint8)
    return demo, demo_other_seed, noise


def test_flat_fraction_tells_demo_images_from_noise(demo_and_noise):
    demo, _, noise = demo_and_noise
    # Measured: demo (seed 1) 0.891, uniform noise 0.000.
    assert flat_fraction(demo) > 0.75
    assert flat_fraction(noise) < 0.02


def test_total_variation_of_noise_far_exceeds_the_demo(demo_and_noise):
    demo, _, noise = demo_and_noise
    # Measured: demo 3.28, uniform noise 85.4 (the expected |U1 - U2| of uniform 0..255 is 85.3).
    assert total_variation(demo) < 6.0
    assert 80.0 < total_variation(noise) < 90.0
    assert total_variation(np.full((2, 8, 8, 3), 77, dtype=np.uint8)) == 0.0


def test_histogram_distance_is_small_between_demo_seeds_and_large_to_noise(demo_and_noise):
    demo, demo_other_seed, noise = demo_and_noise
    demo_histogram = colour_histogram(demo)
    assert demo_histogram.shape == (8, 8, 8) and demo_histogram.sum() == pytest.approx(1.0)
    # Measured: demo seed 1 vs seed 2: 0.079; demo vs uniform noise: 0.926.
    assert histogram_distance(demo_histogram, colour_histogram(demo_other_seed)) < 0.2
    assert histogram_distance(demo_histogram, colour_histogram(noise)) > 0.8
    assert histogram_distance(demo_histogram, demo_histogram) == 0.0


def test_histogram_distance_is_one_for_disjoint_colours():
    black = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    white = np.full((1, 4, 4, 3), 255, dtype=np.uint8)
    assert histogram_distance(colour_histogram(black), colour_histogram(white)) == pytest.approx(1.0)


def test_to_channels_last_converts_the_torch_layout(demo_and_noise):
    demo = demo_and_noise[0][:4]
    channels_first = torch.from_numpy(demo).permute(0, 3, 1, 2)
    assert np.array_equal(to_channels_last(channels_first), demo)
    assert np.array_equal(to_channels_last(channels_first.numpy()), demo)
    with pytest.raises(ValueError):
        to_channels_last(channels_first.float())
    with pytest.raises(ValueError):
        flat_fraction(channels_first.numpy())


# --- the sample picture --------------------------------------------------------------


def test_sample_picture_is_deterministic_and_matches_the_shipped_file():
    picture = make_sample_picture(256)
    assert picture.size == (256, 256) and picture.mode == "RGB"
    assert np.array_equal(np.asarray(picture), np.asarray(make_sample_picture(256)))
    with Image.open(REPOSITORY_ROOT / "resources" / "sample.png") as shipped:
        assert shipped.size == (256, 256) and shipped.mode == "RGB"
        assert np.array_equal(np.asarray(shipped), np.asarray(picture))
    assert make_sample_picture(32).size == (32, 32)

"""Tests for jaxmicro.io: reading and validating microstructure files, atomic writing, output folders."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from jaxmicro.errors import InputError
from jaxmicro.io import (
    MAX_PHASES,
    Microstructure,
    atomic_write,
    atomic_write_path,
    check_min_size,
    multi_otsu_thresholds,
    parse_shape,
    prepare_output_dir,
    read_microstructure,
    save_figure,
    write_json,
    write_labels_tiff,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _labels(shape, n_phases, seed=0):
    return np.random.default_rng(seed).integers(0, n_phases, size=shape)


def _assert_message(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value).lower()
    for word in words:
        assert word.lower() in message, f"{word!r} not in {message!r}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(20, 24), (5, 20, 24)])
def test_tiff_round_trip_labels(tmp_path, dtype, shape):
    values = np.array([3, 7, 200], dtype=dtype)
    phases = _labels(shape, 3)
    tifffile.imwrite(tmp_path / "a.tif", values[phases])
    micro = read_microstructure(tmp_path / "a.tif")
    assert micro.kind == "labels" and micro.n_phases == 3 and micro.gray is None
    assert micro.labels.dtype == np.int32 and micro.shape == shape
    np.testing.assert_array_equal(micro.labels, phases)
    assert micro.mapping["values"] == [3, 7, 200] and micro.mapping["phases"] == [0, 1, 2]
    assert micro.mapping["axes"] == ("YX" if len(shape) == 2 else "ZYX")
    json.dumps(micro.mapping)


def test_multipage_tiff_written_page_by_page_keeps_z_y_x(tmp_path):
    volume = _labels((4, 16, 18), 2).astype(np.uint8) * 255
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for page in volume:
            tif.write(page, compression="zlib", metadata=None)
    micro = read_microstructure(tmp_path / "pages.tif")
    assert micro.shape == (4, 16, 18)
    np.testing.assert_array_equal(micro.labels, volume // 255)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip(tmp_path, dtype):
    phases = _labels((20, 22), 2)
    Image.fromarray((phases * np.iinfo(dtype).max).astype(dtype)).save(tmp_path / "a.png")
    micro = read_microstructure(tmp_path / "a.png")
    assert micro.n_phases == 2 and micro.mapping["values"] == [0, int(np.iinfo(dtype).max)]
    np.testing.assert_array_equal(micro.labels, phases)


def test_png_gray_16_bit_scaled_by_65535(tmp_path):
    gray = np.arange(30 * 30, dtype=np.uint16).reshape(30, 30) * 70
    Image.fromarray(gray).save(tmp_path / "g.png")
    micro = read_microstructure(tmp_path / "g.png", mode="grayscale")
    np.testing.assert_allclose(micro.gray, gray / 65535, atol=1e-6)
    assert micro.mapping["divisor"] == 65535


def test_binary_and_palette_png(tmp_path):
    phases = _labels((16, 16), 2).astype(bool)
    Image.fromarray(phases).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_microstructure(tmp_path / "b.png").labels, phases)
    palette = Image.fromarray(_labels((16, 16), 3).astype(np.uint8) * 2, mode="L").convert("P")
    palette.save(tmp_path / "p.png")
    assert read_microstructure(tmp_path / "p.png").n_phases == 3


@pytest.mark.parametrize("shape", [(12, 13), (3, 12, 13)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float64, np.bool_])
def test_npy_round_trip(tmp_path, shape, dtype):
    phases = _labels(shape, 2)
    np.save(tmp_path / "a.npy", phases.astype(dtype))
    micro = read_microstructure(tmp_path / "a.npy")
    np.testing.assert_array_equal(micro.labels, phases)
    assert micro.mapping["values"] == [0, 1] and all(isinstance(v, int) for v in micro.mapping["values"])


def test_label_mapping_sorts_values_including_negative(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[-5, 10, 10], [3, -5, 3], [10, 3, 3]], dtype=np.int16))
    micro = read_microstructure(tmp_path / "a.npy")
    assert micro.mapping["values"] == [-5, 3, 10]
    np.testing.assert_array_equal(micro.labels, [[0, 2, 2], [1, 0, 1], [2, 1, 1]])


def test_exactly_max_phases_is_a_label_image(tmp_path):
    np.save(tmp_path / "a.npy", (np.arange(32 * 32) % MAX_PHASES).reshape(32, 32).astype(np.uint8) * 3)
    assert read_microstructure(tmp_path / "a.npy").n_phases == MAX_PHASES


def test_microstructure_is_read_only_and_has_exactly_one_array(tmp_path):
    np.save(tmp_path / "a.npy", _labels((8, 8), 2).astype(np.uint8))
    micro = read_microstructure(tmp_path / "a.npy")
    with pytest.raises(ValueError):
        micro.labels[0, 0] = 1
    with pytest.raises(ValueError):
        Microstructure(None, None, None, "labels", "x", {})
    assert "file values [0, 1] -> phases [0, 1]" in micro.describe()


def test_extension_is_not_trusted(tmp_path):
    np.save(tmp_path / "a.npy", _labels((8, 8), 2).astype(np.uint8))
    (tmp_path / "a.npy").rename(tmp_path / "a.tif")
    micro = read_microstructure(tmp_path / "a.tif")
    assert micro.mapping["format"] == "NPY" and "extension" in micro.mapping["notes"][0]


def test_singleton_axes_are_dropped(tmp_path):
    np.save(tmp_path / "a.npy", _labels((1, 9, 10), 2)[..., None].astype(np.uint8))
    assert read_microstructure(tmp_path / "a.npy").shape == (9, 10)


# ------------------------------------------------------------------------------------------------ grayscale


def test_grayscale_scaling_by_dtype(tmp_path):
    ramp = np.linspace(0, 1, 20 * 20).reshape(20, 20)
    np.save(tmp_path / "u8.npy", (ramp * 200).astype(np.uint8))
    np.save(tmp_path / "f.npy", ramp * 5 - 2)
    u8 = read_microstructure(tmp_path / "u8.npy", mode="grayscale")
    assert u8.kind == "grayscale" and u8.n_phases is None and u8.labels is None and u8.gray.dtype == np.float32
    np.testing.assert_allclose(u8.gray.max(), 200 / 255, rtol=1e-6)
    floats = read_microstructure(tmp_path / "f.npy", mode="grayscale")
    np.testing.assert_allclose(floats.gray, ramp, atol=1e-6)
    assert floats.mapping["min"] == -2 and floats.mapping["max"] == 3


def test_float_tiff_grayscale(tmp_path):
    gray = np.random.default_rng(1).random((3, 10, 11)).astype(np.float32)
    tifffile.imwrite(tmp_path / "g.tif", gray, photometric="minisblack")
    micro = read_microstructure(tmp_path / "g.tif", mode="grayscale")
    assert micro.shape == (3, 10, 11)
    np.testing.assert_allclose(micro.gray, (gray - gray.min()) / (gray.max() - gray.min()), atol=1e-6)


# ------------------------------------------------------------------------------------------------ segmentation


@pytest.mark.parametrize("levels", [(40, 180), (30, 120, 220)])
def test_segmentation_recovers_noisy_levels(tmp_path, levels):
    rng = np.random.default_rng(2)
    truth = rng.integers(0, len(levels), size=(64, 64))
    image = np.clip(np.asarray(levels)[truth] + rng.normal(0, 8, truth.shape), 0, 255).astype(np.uint8)
    np.save(tmp_path / "g.npy", image)
    micro = read_microstructure(tmp_path / "g.npy", phases=len(levels))
    assert micro.kind == "labels" and micro.n_phases == len(levels) and micro.mapping["kind"] == "segmented"
    assert (micro.labels == truth).mean() > 0.99
    for threshold, low, high in zip(micro.mapping["thresholds"], levels, levels[1:]):
        assert low < threshold < high
    json.dumps(micro.mapping)


def test_segmentation_of_float_image_dark_to_bright(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, size=(2, 32, 32))
    image = np.where(truth == 1, -0.5, 2.0) + rng.normal(0, 0.05, truth.shape)  # phase 1 is dark
    np.save(tmp_path / "g.npy", image)
    micro = read_microstructure(tmp_path / "g.npy", phases=2)
    np.testing.assert_array_equal(micro.labels, 1 - truth)
    assert -0.5 < micro.mapping["thresholds"][0] < 2.0


def test_multi_otsu_matches_exhaustive_search():
    histogram = np.random.default_rng(4).integers(0, 50, size=24).astype(float)

    def between(bounds):
        edges = [0, *bounds, len(histogram)]
        total = 0.0
        for a, b in zip(edges, edges[1:]):
            w = histogram[a:b].sum()
            total += (histogram[a:b] * np.arange(a, b)).sum() ** 2 / w if w else -np.inf
        return total

    best = max(itertools.combinations(range(1, len(histogram)), 2), key=between)
    assert between(tuple(multi_otsu_thresholds(histogram, 3))) == pytest.approx(between(best))


def test_segmentation_errors(tmp_path):
    np.save(tmp_path / "two.npy", _labels((16, 16), 2).astype(np.uint8))
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "two.npy", phases=3)
    _assert_message(error, "only 2 distinct", "3 phases")
    for bad in (1, 0, MAX_PHASES + 1, 2.5, True):
        with pytest.raises(InputError) as error:
            read_microstructure(tmp_path / "two.npy", phases=bad)
        _assert_message(error, "--phases")
    with pytest.raises(InputError):
        read_microstructure(tmp_path / "two.npy", phases=2, mode="labels")
    with pytest.raises(InputError):
        read_microstructure(tmp_path / "two.npy", mode="colour")


# ------------------------------------------------------------------------------------------------ colour


def test_rgb_refused_unless_gray_from_rgb(tmp_path):
    phases = _labels((16, 16), 3)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    Image.fromarray(colours[phases]).save(tmp_path / "c.png")
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "c.png")
    _assert_message(error, "colour", "rgb", "--gray-from-rgb")
    micro = read_microstructure(tmp_path / "c.png", gray_from_rgb=True)
    # luminance: blue 29.07 < red 76.2 < green 149.7
    np.testing.assert_array_equal(micro.labels, np.array([1, 2, 0])[phases])
    assert "601" in micro.mapping["color"]["conversion"]
    json.dumps(micro.mapping)


def test_gray_saved_as_rgba_is_exact(tmp_path):
    gray = np.random.default_rng(5).integers(0, 256, size=(12, 12), dtype=np.uint8)
    rgba = np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=-1)
    tifffile.imwrite(tmp_path / "c.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "c.tif", mode="grayscale")
    _assert_message(error, "nothing is lost")
    micro = read_microstructure(tmp_path / "c.tif", mode="grayscale", gray_from_rgb=True)
    np.testing.assert_allclose(micro.gray, gray / 255, atol=1e-7)
    assert micro.mapping["color"]["alpha"] == "ignored"


def test_three_slice_stack_stored_as_planar_rgb_gets_a_hint(tmp_path):
    # what tifffile 2026 writes by default for (3, y, x) data, with a DeprecationWarning
    volume = _labels((3, 16, 16), 2).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", volume, photometric="rgb", planarconfig="separate")
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "a.tif")
    _assert_message(error, "stack of 3 slices", "photometric='minisblack'")


def test_colours_of_equal_luminance_refused(tmp_path):
    image = np.zeros((8, 8, 3))
    image[4:, :4] = (0.114, 0.0, 0.0)  # luminance 0.299 * 0.114
    image[4:, 4:] = (0.0, 0.0, 0.299)  # luminance 0.114 * 0.299: the same, a different colour
    np.save(tmp_path / "c.npy", image)
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "c.npy", gray_from_rgb=True)
    _assert_message(error, "3 distinct colours", "same brightness")


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    (tmp_path / "Sample.tif").write_bytes(b"x")
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "sample.TIF")
    _assert_message(error, "no such file", "did you mean sample.tif")


def test_folder_and_empty_file(tmp_path):
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path)
    _assert_message(error, "is a folder")
    (tmp_path / "empty.tif").touch()
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "empty.tif")
    _assert_message(error, "empty (0 bytes)")


@pytest.mark.parametrize(
    ("content", "name", "words"),
    [
        (b"phase fractions: 0.3 0.7\n", "notes.tif", ("not a tiff, png or npy", "text file")),
        (b"\x00\x01\x02\x03\xfe\xff", "data.xyz", ("not a tiff, png or npy",)),
        (b"\xff\xd8\xff\xe0JFIF", "photo.jpg", ("jpeg", "lossy")),
        (b"PK\x03\x04rest", "arrays.npz", ("npz", "np.save")),
    ],
)
def test_not_an_image(tmp_path, content, name, words):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / name)
    _assert_message(error, *words)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.97])
def test_truncated_tiff(tmp_path, compression, keep):
    tifffile.imwrite(tmp_path / "full.tif", _labels((6, 32, 32), 3).astype(np.uint8), compression=compression)
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "cut.tif")
    _assert_message(error, "truncated", "again")


def test_truncated_png_and_npy(tmp_path):
    Image.fromarray(_labels((64, 64), 200).astype(np.uint8)).save(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", _labels((64, 64), 2).astype(np.uint8))
    for name in ("a.png", "a.npy"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) - 50])
        with pytest.raises(InputError) as error:
            read_microstructure(tmp_path / name)
        _assert_message(error, "truncated")


def test_nan_and_inf(tmp_path):
    image = np.zeros((8, 8))
    image[0, 0], image[1, 1], image[2, 2] = np.nan, np.inf, 1
    np.save(tmp_path / "a.npy", image)
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "a.npy", mode="grayscale")
    _assert_message(error, "1 nan", "1 infinite", "nan_to_num")


def test_single_phase(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.full((4, 8, 8), 7, dtype=np.uint8), photometric="minisblack")
    for kwargs in ({}, {"mode": "grayscale"}, {"phases": 2}):
        with pytest.raises(InputError) as error:
            read_microstructure(tmp_path / "a.tif", **kwargs)
        _assert_message(error, "single value (7)", "nothing to reconstruct")


def test_too_many_values_suggests_grayscale_or_segmentation(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(100, dtype=np.uint8).reshape(10, 10))
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "a.npy")
    _assert_message(error, "100 distinct values", "--grayscale", "--phases n")
    with pytest.raises(InputError):
        read_microstructure(tmp_path / "a.npy", mode="labels")


def test_fractional_floats_are_not_labels(tmp_path):
    np.save(tmp_path / "a.npy", np.tile([0.0, 0.5, 1.0], (6, 2)))
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "a.npy")
    _assert_message(error, "fractional", "--grayscale", "--phases")


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((50,), ("1-dimensional", "reshape")),
        ((), ("0-dimensional",)),
        ((2, 3, 10, 10), ("4 axes",)),
        ((10, 10, 2), ("2 channels", "neither")),
    ],
)
def test_wrong_dimensionality(tmp_path, shape, words):
    np.save(tmp_path / "a.npy", _labels(shape, 2).astype(np.uint8) if shape else np.uint8(1))
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "a.npy")
    _assert_message(error, *words)


def test_too_small(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[0, 1, 0, 1]], dtype=np.uint8))
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "a.npy")
    _assert_message(error, "1x4", "at least 2")
    check_min_size((64, 64), 64, "the exemplar")
    with pytest.raises(InputError) as error:
        check_min_size((64, 40, 64), 48, "the exemplar a.tif", reason="VGG19 needs it")
    _assert_message(error, "the exemplar a.tif is 64x40x64", "at least 48", "vgg19 needs it")


def test_object_array(tmp_path):
    np.save(tmp_path / "a.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as error:
        read_microstructure(tmp_path / "a.npy")
    _assert_message(error, "python objects")


# ------------------------------------------------------------------------------------------------ parse_shape


def test_parse_shape():
    assert parse_shape("128x128") == (128, 128)
    assert parse_shape("64x64x64") == (64, 64, 64)
    assert parse_shape(" 32 X 48 ") == (32, 48)
    assert parse_shape((16, 16)) == (16, 16)
    for bad in ("128", "0x128", "-4x8", "12.5x8", "axb", "", "1x2x3x4", "128x", (4, 4.0)):
        with pytest.raises(InputError) as error:
            parse_shape(bad)
        _assert_message(error, "128x128", "64x64x64")


# ------------------------------------------------------------------------------------------------ writing


def test_write_labels_tiff_round_trip(tmp_path):
    for shape in ((10, 12), (3, 10, 12)):
        labels = _labels(shape, 3)
        write_labels_tiff(tmp_path / "out.tif", labels, metadata={"seed": np.int64(4)})
        with tifffile.TiffFile(tmp_path / "out.tif") as tif:
            assert len(tif.pages) == (shape[0] if len(shape) == 3 else 1)
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            meta = tif.shaped_metadata[0]
            assert meta["n_phases"] == 3 and meta["phases"] == [0, 1, 2] and meta["seed"] == 4
            assert tif.series[0].dtype == np.uint8
        micro = read_microstructure(tmp_path / "out.tif")
        np.testing.assert_array_equal(micro.labels, labels)
    assert _leftovers(tmp_path) == []


def test_write_labels_tiff_rejects_bad_labels(tmp_path):
    for bad in (np.full((4, 4), 300), np.full((4, 4), -1), np.zeros(5, dtype=int), np.full((4, 4), 0.5)):
        with pytest.raises(InputError):
            write_labels_tiff(tmp_path / "bad.tif", bad)
    assert list(tmp_path.iterdir()) == []


def test_write_json_converts_numpy(tmp_path):
    write_json(
        tmp_path / "m.json",
        {"a": np.float32(0.5), "b": np.arange(3), "c": (1, np.int8(2)), "d": float("nan"), "p": tmp_path, 3: True},
    )
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "a": 0.5, "b": [0, 1, 2], "c": [1, 2], "d": None, "p": str(tmp_path), "3": True
    }
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as file:
        file.write(b"new")
        assert target.read_bytes() == b"old"  # nothing visible until the block ends
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0o600 of a bare temporary file

    with pytest.raises(RuntimeError):
        with atomic_write(target) as file:
            file.write(b"partial")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "fresh.bin") as file:
            file.write(b"partial")
            raise RuntimeError("writer died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_atomic_write_path_with_library_writers(tmp_path):
    with atomic_write_path(tmp_path / "a.npy") as temp:
        assert temp.name.endswith(".npy")
        np.save(temp, np.arange(4))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(4))
    with pytest.raises(ValueError):
        with atomic_write_path(tmp_path / "b.tif") as temp:
            tifffile.imwrite(temp, np.zeros((4, 4), np.uint8))
            raise ValueError("failed after writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_atomic_write_into_missing_folder(tmp_path):
    with pytest.raises(InputError) as error:
        write_json(tmp_path / "missing" / "m.json", {})
    _assert_message(error, "cannot write")


def test_save_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "f.png", dpi=50)
    save_figure(fig, tmp_path / "f.pdf")
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(InputError):
        save_figure(fig, tmp_path / "noextension")
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "f.notaformat")
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]


# ------------------------------------------------------------------------------------------------ output folder


def test_prepare_output_dir_creates_and_refuses_overwrite(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b", expected=("metrics.json", "labels.tif"))
    assert out.is_dir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(InputError) as error:
        prepare_output_dir(out, expected=("metrics.json", "labels.tif"))
    _assert_message(error, "metrics.json", "--force", "--out")
    assert prepare_output_dir(out, force=True, expected=("metrics.json",)) == out
    assert prepare_output_dir(out, expected=("other.json",)) == out
    assert _leftovers(out) == []


def test_prepare_output_dir_with_a_file_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError) as error:
        prepare_output_dir(tmp_path / "file")
    _assert_message(error, "is an existing file", "--out")
    with pytest.raises(InputError) as error:
        prepare_output_dir(tmp_path / "file" / "sub")
    _assert_message(error, "is a file, not a folder", "--out")


def test_prepare_output_dir_unwritable_reports_the_reason(tmp_path, monkeypatch):
    # runs as root too, where chmod does not stop writes: make the write probe fail as it would for a user
    import jaxmicro.io

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(jaxmicro.io.tempfile, "mkstemp", refuse)
    with pytest.raises(InputError) as error:
        prepare_output_dir(tmp_path)
    _assert_message(error, "cannot write into the output folder", "permission denied", "--out")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write into read-only folders")
def test_prepare_output_dir_read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError) as error:
            prepare_output_dir(folder)
        _assert_message(error, "cannot write", "permission")
        with pytest.raises(InputError):
            prepare_output_dir(folder / "sub")
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------------------------ shared data

_SHARED_EXPECTED = {
    "li2018_alloy_2d_256.npy": ((256, 256), 2),
    "li2018_copolymer_2d_256.npy": ((256, 256), 2),
    "li2018_ceramics_2d_256.npy": ((256, 256), 2),
    "li2018_sandstone_2d_256.npy": ((256, 256), 2),
    "li2018_carbonate_2d_256.npy": ((256, 256), 2),
    "li2018_pmma_2d_256.npy": ((256, 256), 2),
    "li2018_composite_3phase_2d_256.npy": ((256, 256), 3),
    "nmc_cathode_3phase_2d_253.npy": ((253, 253), 3),
    "nmc_cathode_3phase_3d_256.tif": ((256, 256, 256), 3),
}


@pytest.mark.parametrize("name", sorted(_SHARED_EXPECTED))
def test_shared_label_images(name):
    if not (SHARED_DATA / name).exists():
        pytest.skip(f"shared reference images not found at {SHARED_DATA} (../shared/data next to the checkout)")
    shape, n_phases = _SHARED_EXPECTED[name]
    micro = read_microstructure(SHARED_DATA / name)
    assert micro.kind == "labels" and micro.shape == shape and micro.n_phases == n_phases
    assert micro.mapping["values"] == list(range(n_phases))


def test_shared_grayscale_micrograph():
    path = SHARED_DATA / "aluminum_micrograph_gray_2d_150.npy"
    if not path.exists():
        pytest.skip(f"shared reference images not found at {SHARED_DATA} (../shared/data next to the checkout)")
    with pytest.raises(InputError) as error:
        read_microstructure(path)
    _assert_message(error, "--grayscale")
    gray = read_microstructure(path, mode="grayscale")
    assert gray.shape == (150, 150) and 0 <= gray.gray.min() < gray.gray.max() <= 1
    segmented = read_microstructure(path, phases=2)
    assert segmented.n_phases == 2 and set(np.unique(segmented.labels)) == {0, 1}

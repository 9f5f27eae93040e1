"""Tomography inputs: HDF5 datasets, raw binary, crop, downsample, voxel sizes in TIFFs (jaxmicro.io)."""

import numpy as np
import pytest
import tifffile

from jaxmicro import io, units
from jaxmicro.errors import InputError


def _volume(seed=0, shape=(6, 8, 10), phases=3):
    return np.random.default_rng(seed).integers(0, phases, shape).astype(np.uint8)


# --- HDF5 ------------------------------------------------------------------------------------------------------


def test_hdf5_dataset_round_trip(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is not installed: pip install 'jaxmicro[hdf5]'")
    volume = _volume()
    with h5py.File(tmp_path / "scan.h5", "w") as file:
        file["scans/segmented"] = volume * 100  # values 0, 100, 200 -> phases 0, 1, 2
        file["scans/segmented"].attrs["element_size_um"] = [2.0, 0.5, 0.5]
        file["raw"] = np.zeros((4, 4), np.float32)
    image = io.read_microstructure(f"{tmp_path / 'scan.h5'}:/scans/segmented")
    np.testing.assert_array_equal(image.labels, volume)
    assert image.mapping["format"] == "HDF5" and image.mapping["dataset"] == "/scans/segmented"
    assert image.mapping["values"] == [0, 100, 200]
    assert image.voxel_size == units.VoxelSize((2.0, 0.5, 0.5), "um")
    # a file with a single dataset needs no name
    with h5py.File(tmp_path / "one.h5", "w") as file:
        file["v"] = volume
    np.testing.assert_array_equal(io.read_microstructure(tmp_path / "one.h5").labels, volume)


def test_hdf5_bad_inputs_name_the_datasets(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is not installed: pip install 'jaxmicro[hdf5]'")
    with h5py.File(tmp_path / "two.h5", "w") as file:
        file["a"] = _volume()
        file["group/b"] = _volume(1)
    with pytest.raises(InputError, match=r"holds 2 datasets \(/a, /group/b\); name the one"):
        io.read_microstructure(tmp_path / "two.h5")
    with pytest.raises(InputError, match=r"/nope does not exist; the file holds the datasets /a, /group/b"):
        io.read_microstructure(f"{tmp_path / 'two.h5'}:/nope")
    with pytest.raises(InputError, match="is a group, not a dataset"):
        io.read_microstructure(f"{tmp_path / 'two.h5'}:/group")
    np.save(tmp_path / "a.npy", _volume())
    with pytest.raises(InputError, match="only HDF5 files hold named datasets"):
        io.read_microstructure(f"{tmp_path / 'a.npy'}:/a")


def test_hdf5_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(InputError, match=r"pip install 'jaxmicro\[hdf5\]'"):
        io.read_microstructure(tmp_path / "x.h5")


# --- raw binary ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["uint8", "<u2", ">u2", "float32", ">f4"])
def test_raw_round_trip(tmp_path, order, dtype):
    scale = 50 if dtype == "uint8" else 1000  # values whose bytes differ when swapped
    volume = (_volume(shape=(5, 6, 7)).astype(np.int64) * scale).astype(dtype)
    volume.tofile(tmp_path / "v.raw") if order == "C" else volume.T.copy().tofile(tmp_path / "v.raw")
    image = io.read_microstructure(tmp_path / "v.raw", raw_shape="5x6x7", raw_dtype=dtype, raw_order=order)
    np.testing.assert_array_equal(image.labels, volume.astype(np.int64) // scale)
    assert image.mapping["values"] == [0, scale, 2 * scale]
    assert image.mapping["format"] == "raw" and image.mapping["dtype"] == str(np.dtype(dtype).newbyteorder("="))


def test_raw_grayscale_big_endian(tmp_path):
    values = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 1000).astype(">u2")
    values.tofile(tmp_path / "g.raw")
    image = io.read_microstructure(tmp_path / "g.raw", raw_shape=(2, 3, 4), raw_dtype=">u2", mode="grayscale")
    np.testing.assert_array_equal(image.gray, (values.astype(np.float64) / 65535).astype(np.float32))


@pytest.mark.parametrize("options, message", [
    (dict(raw_shape="5x6x8"), r"has 210 bytes but --raw-shape 5x6x8 of uint8 \(1 byte\(s\) each\) needs 240"),
    (dict(raw_shape="5x6x7", raw_dtype="uint16"), "needs 420"),
    (dict(raw_shape="5x6"), "7 times as many bytes"),
    (dict(raw_shape="5xx7"), "cannot read the shape"),
    (dict(raw_shape="5x6x7", raw_dtype="complex64"), "not an integer or real number type"),
    (dict(raw_shape="5x6x7", raw_dtype="nonsense"), "cannot read the raw type"),
    (dict(raw_dtype="uint8"), "--raw-dtype needs --raw-shape"),
    (dict(raw_shape="5x6x7", raw_order="K"), "must be C .* or F"),
])
def test_raw_bad_inputs(tmp_path, options, message):
    _volume(shape=(5, 6, 7)).tofile(tmp_path / "v.raw")
    with pytest.raises(InputError, match=message):
        io.read_microstructure(tmp_path / "v.raw", **options)


# --- crop and downsample ---------------------------------------------------------------------------------------


def test_crop_is_exact(tmp_path):
    volume = _volume(shape=(6, 8, 10))
    np.save(tmp_path / "v.npy", volume)
    image = io.read_microstructure(tmp_path / "v.npy", crop="1:5,:6,2:")
    expected = volume[1:5, :6, 2:]
    _, expected_labels = np.unique(expected, return_inverse=True)
    np.testing.assert_array_equal(image.labels, expected_labels.reshape(expected.shape))
    assert image.mapping["crop"] == [[1, 5], [0, 6], [2, 10]] and image.mapping["file_shape"] == [6, 8, 10]
    same = io.read_microstructure(tmp_path / "v.npy", crop=[(1, 5), slice(None, 6), (2, None)])
    np.testing.assert_array_equal(same.labels, image.labels)


@pytest.mark.parametrize("crop, message", [
    ("0:7,:,:", r"crop 0:7 of axis 0 lies outside .* side is 6"),
    ("3:3,:,:", "0 <= start < stop"),
    (":,:", "gives 2 axes but .* has 3"),
    ("1:2:3,:,:", "expected start:stop"),
    ("a:b,:,:", "expected start:stop"),
    ("0:1,:,:", "is 1x8x10 pixels"),
    ([(0, 2, 3)], "one \\(start, stop\\) pair per axis"),
])
def test_crop_bad_inputs(tmp_path, crop, message):
    np.save(tmp_path / "v.npy", _volume(shape=(6, 8, 10)))
    with pytest.raises(InputError, match=message):
        io.read_microstructure(tmp_path / "v.npy", crop=crop)


def test_downsample_majority_and_mean():
    labels = np.array([[0, 0, 1, 1, 2],
                       [0, 1, 1, 2, 2],
                       [2, 2, 0, 1, 0],
                       [2, 1, 1, 0, 0]])
    # blocks: [0 0 0 1] -> 0; [1 1 1 2] -> 1; [2 2 2 1] -> 2; [0 1 1 0] -> tie 0/1 -> the lower, 0; last column dropped
    np.testing.assert_array_equal(io.downsample(labels, 2, labels=True), [[0, 1], [2, 0]])
    gray = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(io.downsample(gray, 2, labels=False), [[2.5, 4.5], [10.5, 12.5]])
    volume = np.zeros((4, 4, 4), int)
    volume[:2, :2, :2] = 1
    np.testing.assert_array_equal(io.downsample(volume, 2, labels=True), [[[1, 0], [0, 0]], [[0, 0], [0, 0]]])


def test_downsample_on_reading(tmp_path):
    labels = np.kron(np.array([[0, 1], [1, 2]], np.uint8), np.ones((3, 3), np.uint8))  # 6x6, blocks of 3
    tifffile.imwrite(tmp_path / "b.tif", labels * 50)
    image = io.read_microstructure(tmp_path / "b.tif", downsample=3, voxel_size="0.2um")
    np.testing.assert_array_equal(image.labels, [[0, 1], [1, 2]])
    assert image.voxel_size == units.VoxelSize((pytest.approx(0.6), pytest.approx(0.6)), "um")
    assert image.mapping["downsample"] == 3 and image.mapping["shape"] == [2, 2]
    gray = io.read_microstructure(tmp_path / "b.tif", mode="grayscale", downsample=3)
    np.testing.assert_allclose(gray.gray, np.array([[0, 50], [50, 100]]) / 255, rtol=1e-6)


@pytest.mark.parametrize("factor, message", [
    (0, "positive whole number"), (2.5, "positive whole number"), (True, "positive whole number"),
    (4, "fewer than 2 pixels"),
])
def test_downsample_bad_inputs(tmp_path, factor, message):
    np.save(tmp_path / "v.npy", _volume(shape=(6, 8, 10), phases=2))
    with pytest.raises(InputError, match=message):
        io.read_microstructure(tmp_path / "v.npy", downsample=factor)


def test_downsample_that_removes_a_phase_is_refused(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[4:, :] = 1
    labels[0, 0] = 2  # a one-pixel phase vanishes in a 2x2 majority
    np.save(tmp_path / "d.npy", labels)
    with pytest.raises(InputError, match=r"removes phase\(s\) \[2\] entirely"):
        io.read_microstructure(tmp_path / "d.npy", downsample=2)


# --- voxel sizes -----------------------------------------------------------------------------------------------


def test_tiff_resolution_read_write_read(tmp_path):
    volume = _volume(phases=2)
    io.write_labels_tiff(tmp_path / "a.tif", volume, voxel_size="2x0.5x0.25um")
    first = io.read_microstructure(tmp_path / "a.tif")
    assert first.voxel_size == units.VoxelSize((2.0, 0.5, 0.25), "um")
    assert first.mapping["voxel_size"] == [2.0, 0.5, 0.25] and first.mapping["unit"] == "um"
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:  # other programs see it in the resolution tags
        tags = tif.pages[0].tags
        x, y = (tags[n].value[0] / tags[n].value[1] for n in ("XResolution", "YResolution"))
        assert (x, y) == (pytest.approx(1e4 / 0.25), pytest.approx(1e4 / 0.5))
        assert tags["ResolutionUnit"].value == 3  # centimetre
    io.write_labels_tiff(tmp_path / "b.tif", first.labels, voxel_size=first.voxel_size)
    assert io.read_microstructure(tmp_path / "b.tif").voxel_size == first.voxel_size


def test_tiff_resolution_from_other_programs(tmp_path):
    image = _volume(phases=2)[0]
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(1e4 / 0.8, 1e4 / 0.8), resolutionunit="CENTIMETER")
    assert io.read_microstructure(tmp_path / "cm.tif").voxel_size.sides == (pytest.approx(0.8), pytest.approx(0.8))
    tifffile.imwrite(tmp_path / "ij.tif", _volume(phases=2), imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 1.5, "unit": "micron"})
    ij = io.read_microstructure(tmp_path / "ij.tif")
    assert ij.voxel_size == units.VoxelSize((1.5, 0.25, 0.25), "um")
    assert ij.mapping["voxel_size_source"] == "ImageJ metadata"
    tifffile.imwrite(tmp_path / "screen.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert io.read_microstructure(tmp_path / "screen.tif").voxel_size is None  # a screen default, not a size
    tifffile.imwrite(tmp_path / "plain.tif", image)
    assert io.read_microstructure(tmp_path / "plain.tif").voxel_size is None
    given = io.read_microstructure(tmp_path / "cm.tif", voxel_size="3nm")
    assert given.voxel_size == units.VoxelSize((3.0, 3.0), "nm") and given.mapping["voxel_size_source"] == "given"


@pytest.mark.parametrize("text, expected", [
    ("0.5um", ((0.5,), "um")), ("0.5 µm", ((0.5,), "um")), ("2x0.5x0.5 micron", ((2.0, 0.5, 0.5), "um")),
    ("1e-3mm", ((1e-3,), "mm")), ("3", ((3.0,), "")), (0.25, ((0.25,), "")), ((1, 2), ((1.0, 2.0), "")),
])
def test_parse_voxel_size(text, expected):
    assert units.parse_voxel_size(text) == units.VoxelSize(*expected)


@pytest.mark.parametrize("value, message", [
    ("abc", "cannot read the voxel size"), ("-1um", "positive finite"), ("0um", "positive finite"),
    ("1x2x3x4um", "1 to 3"), ("inf um", "cannot read|positive finite"), (True, "give a number"),
])
def test_parse_voxel_size_bad(value, message):
    with pytest.raises(InputError, match=message):
        units.parse_voxel_size(value)


def test_voxel_size_axes_must_match(tmp_path):
    np.save(tmp_path / "v.npy", _volume(phases=2))
    with pytest.raises(InputError, match="2 sides but the image has 3 axes"):
        io.read_microstructure(tmp_path / "v.npy", voxel_size="1x2um")

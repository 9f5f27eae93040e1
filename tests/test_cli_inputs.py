"""The command line's input options: raw, HDF5, crop, downsample, voxel size, sections per direction, stored
targets; each bad input gives one message and exit code 2, no traceback, and writes nothing."""

import json

import jax
import numpy as np
import pytest
import tifffile

from jaxmicro import io, reconstruction as R, targets as T, vgg
from jaxmicro.examples import default_exemplar

from conftest import TINY_WIDTHS, run_in_process


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_params):
    folder = tmp_path_factory.mktemp("inputs")
    volume = np.random.default_rng(0).integers(0, 2, (6, 8, 10)).astype(np.uint8)
    volume.tofile(folder / "v.raw")
    np.save(folder / "v.npy", volume)
    exemplar = default_exemplar()[:24, :24].astype(np.uint8)
    io.write_labels_tiff(folder / "ex.tif", exemplar, voxel_size="0.5um")
    tifffile.imwrite(folder / "three.tif", np.kron(np.array([[0, 1], [2, 1]], np.uint8), np.ones((12, 12), np.uint8)))
    stored = R.characterise(exemplar.astype(np.int32), levels=1, params=tiny_params, layers="shallow",
                            widths=TINY_WIDTHS)
    T.save_targets(folder / "tiny.npz", stored)
    np.savez(folder / "plain.npz", a=np.zeros(3))
    try:
        import h5py
    except ImportError:
        pass
    else:
        with h5py.File(folder / "two.h5", "w") as file:
            file["a"] = volume
            file["b/c"] = volume
    (folder / "existing.npz").write_bytes(b"keep me")
    return folder


def _refused(capsys, files, tmp_path, *argv, message, written="out"):
    code, out, err = run_in_process(capsys, *[str(a).format(d=files, t=tmp_path) for a in argv])
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and message in err, err
    assert err.count("error:") == 1, err
    assert not (tmp_path / written).exists()
    return err


DESCRIBE_BAD = [
    (["--raw-shape", "6x8x11"], "needs 528"),
    (["--raw-shape", "6x8"], "cannot read|needs"),
    (["--raw-shape", "6x8x10", "--raw-dtype", "complex64"], "not an integer or real number type"),
    (["--raw-shape", "6x8x10", "--raw-dtype", "banana"], "cannot read the raw type"),
    (["--raw-shape", "6x8x10", "--raw-order", "K"], "invalid choice: 'K'"),
    (["--raw-shape", "6x8x10", "--crop", "0:99,:,:"], "lies outside"),
    (["--raw-shape", "6x8x10", "--crop", "zero:one"], "cannot read the crop"),
    (["--raw-shape", "6x8x10", "--crop", "0:2,:"], "gives 2 axes but"),
    (["--raw-shape", "6x8x10", "--downsample", "0"], "expected a positive integer"),
    (["--raw-shape", "6x8x10", "--downsample", "4"], "fewer than 2 pixels"),
    (["--raw-shape", "6x8x10", "--voxel-size", "abc"], "cannot read the voxel size"),
    (["--raw-shape", "6x8x10", "--voxel-size=-1um"], "positive finite"),
    (["--raw-shape", "6x8x10", "--voxel-size", "1x2um"], "2 sides but the image has 3 axes"),
]


@pytest.mark.parametrize("options, message", DESCRIBE_BAD)
def test_describe_bad_input_options(capsys, files, tmp_path, options, message):
    code, out, err = run_in_process(capsys, "describe", files / "v.raw", *options, "--json", tmp_path / "out")
    assert code == 2 and "Traceback" not in err and any(m in err for m in message.split("|")), err
    assert not (tmp_path / "out").exists()


def test_raw_dtype_without_shape(capsys, files, tmp_path):
    _refused(capsys, files, tmp_path, "describe", "{d}/v.npy", "--raw-dtype", "uint8", "--json", "{t}/out",
             message="--raw-dtype needs --raw-shape")


def test_hdf5_bad_inputs(capsys, files, tmp_path):
    pytest.importorskip("h5py", reason="h5py is not installed: pip install 'jaxmicro[hdf5]'")
    _refused(capsys, files, tmp_path, "describe", "{d}/two.h5", "--json", "{t}/out",
             message="holds 2 datasets (/a, /b/c); name the one to read")
    _refused(capsys, files, tmp_path, "describe", "{d}/two.h5:/nope", "--json", "{t}/out",
             message="does not exist; the file holds the datasets /a, /b/c")


def test_describe_hdf5_raw_crop_downsample_voxel(capsys, files, tmp_path):
    code, _, err = run_in_process(capsys, "describe", files / "v.raw", "--raw-shape", "6x8x10", "--crop", "0:4,:,:",
                                  "--downsample", "2", "--voxel-size", "0.5um", "--json", tmp_path / "d.json")
    assert code == 0, err
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["shape"] == [2, 4, 5] and d["voxel_size"] == [1.0, 1.0, 1.0] and d["unit"] == "um"
    assert d["mapping"]["crop"] == [[0, 4], [0, 8], [0, 10]] and d["mapping"]["downsample"] == 2
    pytest.importorskip("h5py", reason="h5py is not installed: pip install 'jaxmicro[hdf5]'")
    code, _, err = run_in_process(capsys, "describe", f"{files / 'two.h5'}:/b/c", "--json", tmp_path / "h.json")
    assert code == 0, err
    assert json.loads((tmp_path / "h.json").read_text())["shape"] == [6, 8, 10]


def test_describe_reads_the_tiff_voxel_size(capsys, files, tmp_path):
    code, out, err = run_in_process(capsys, "describe", files / "ex.tif", "--json", tmp_path / "d.json")
    assert code == 0, err
    d = json.loads((tmp_path / "d.json").read_text())
    pixels = io.read_microstructure(files / "ex.tif", voxel_size=None)
    from jaxmicro import report

    plain = report.describe(pixels.labels)
    assert d["unit"] == "um" and d["voxel_size"] == [0.5, 0.5]
    np.testing.assert_allclose(d["specific_surface"], np.asarray(plain["specific_surface"]) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(d["chord_length_mean"], np.asarray(plain["chord_length_mean"]) * 0.5)
    assert "per um" in out


def test_sections_per_direction_bad_inputs(capsys, files, tmp_path):
    _refused(capsys, files, tmp_path, "reconstruct", "--exemplar-z", "{d}/ex.tif", "--shape", "24x24x24", "--out",
             "{t}/out", message="add --exemplar-y, --exemplar-x")
    _refused(capsys, files, tmp_path, "reconstruct", "--exemplar-z", "{d}/ex.tif", "--exemplar-y", "{d}/ex.tif",
             "--exemplar-x", "{d}/ex.tif", "--shape", "24x24", "--out", "{t}/out", message="needs a 3D --shape")
    _refused(capsys, files, tmp_path, "reconstruct", "--exemplar-z", "{d}/ex.tif", "--exemplar-y", "{d}/three.tif",
             "--exemplar-x", "{d}/ex.tif", "--shape", "24x24x24", "--out", "{t}/out",
             message="the sections do not agree on the phases: --exemplar-z has 2 phases")
    _refused(capsys, files, tmp_path, "reconstruct", "{d}/ex.tif", "--exemplar-z", "{d}/ex.tif", "--exemplar-y",
             "{d}/ex.tif", "--exemplar-x", "{d}/ex.tif", "--shape", "24x24x24", "--out", "{t}/out",
             message="not both")


def test_targets_bad_inputs(capsys, files, tmp_path):
    _refused(capsys, files, tmp_path, "reconstruct", "--targets", "{t}/missing.npz", "--out", "{t}/out",
             message="no such targets file")
    _refused(capsys, files, tmp_path, "reconstruct", "--targets", "{d}/plain.npz", "--out", "{t}/out",
             message="holds no jaxmicro header")
    _refused(capsys, files, tmp_path, "reconstruct", "--targets", "{d}/ex.tif", "--out", "{t}/out",
             message="not an .npz archive")
    err = _refused(capsys, files, tmp_path, "reconstruct", "--targets", "{d}/tiny.npz", "--out", "{t}/out",
                   "--shape", "16x16", message="made for another reconstruction")
    assert "shape (24, 24) (stored) vs (16, 16)" in err and "widths" in err
    _refused(capsys, files, tmp_path, "reconstruct", "{d}/ex.tif", "--targets", "{d}/tiny.npz", "--out", "{t}/out",
             message="not both")
    _refused(capsys, files, tmp_path, "reconstruct", "--targets", "{d}/tiny.npz", "--grayscale", "--out", "{t}/out",
             message="leave out --grayscale")
    newer = tmp_path / "newer.npz"
    with np.load(files / "tiny.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays["header.json"].tobytes())
    header["version"] = T.FORMAT_VERSION + 1
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(newer, **arrays)
    _refused(capsys, files, tmp_path, "reconstruct", "--targets", newer, "--out", "{t}/out",
             message="written by a newer jaxmicro")


def test_characterise_bad_inputs(capsys, files, tmp_path):
    code, _, err = run_in_process(capsys, "characterise", files / "ex.tif", "--out", files / "existing.npz")
    assert code == 2 and "already exists; pass --force" in err
    assert (files / "existing.npz").read_bytes() == b"keep me"
    (tmp_path / "folder").mkdir()
    code, _, err = run_in_process(capsys, "characterize", files / "ex.tif", "--out", tmp_path / "folder", "--force")
    assert code == 2 and "is a folder" in err
    _refused(capsys, files, tmp_path, "characterise", "{d}/ex.tif", "--crop", "0:99,:", "--out", "{t}/out",
             message="lies outside")


def test_targets_made_with_other_weights(capsys, files, tmp_path):
    from jaxmicro.weights import weights_file

    if not weights_file().is_file():
        pytest.skip(f"the VGG19 weights are not in {weights_file().parent}; run: jaxmicro weights fetch")
    exemplar = io.read_microstructure(files / "ex.tif").labels
    other = vgg.random_params(jax.random.PRNGKey(5), ("relu1_1",))  # the real widths, other values
    T.save_targets(tmp_path / "other.npz", R.characterise(exemplar, levels=1, params=other, layers="relu1_1"))
    _refused(capsys, files, tmp_path, "reconstruct", "--targets", "{t}/other.npz", "--out", "{t}/out",
             message="computed with other network weights")


@pytest.mark.slow
def test_cli_characterise_then_reconstruct_is_bitwise_the_run_from_the_image(capsys, files, tmp_path):
    common = ["--count", "1", "--steps", "3", "--levels", "1", "--seed", "4", "--layers", "relu1_2", "--quiet"]
    code, _, err = run_in_process(capsys, "reconstruct", files / "ex.tif", *common, "--products", "float32", "--out",
                                  tmp_path / "a")
    assert code == 0, err
    code, _, err = run_in_process(capsys, "characterize", files / "ex.tif", "--levels", "1", "--layers", "relu1_2",
                                  "--products", "float32", "--out", tmp_path / "t.npz", "--quiet")
    assert code == 0, err
    assert T.read_header(tmp_path / "t.npz")["network"]["products"] == "float32"
    code, _, err = run_in_process(capsys, "reconstruct", "--targets", tmp_path / "t.npz", *common, "--out",
                                  tmp_path / "b")  # --products from the file
    assert code == 0, err
    a = io.read_microstructure(tmp_path / "a" / "reconstruction_000.tif")
    b = io.read_microstructure(tmp_path / "b" / "reconstruction_000.tif")
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.voxel_size == b.voxel_size == io.read_microstructure(files / "ex.tif").voxel_size
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["run"]["exemplar"]["targets"].endswith("t.npz")


@pytest.mark.slow
def test_cli_volume_from_three_sections(capsys, files, tmp_path):
    code, _, err = run_in_process(capsys, "reconstruct", "--exemplar-z", files / "ex.tif", "--exemplar-y",
                                  files / "ex.tif", "--exemplar-x", files / "ex.tif", "--shape", "16x16x16",
                                  "--count", "1", "--steps", "2", "--levels", "1", "--layers", "relu1_2",
                                  "--slices-per-step", "1", "--quiet", "--out", tmp_path / "v")
    assert code == 0, err
    volume = io.read_microstructure(tmp_path / "v" / "reconstruction_000.tif")
    assert volume.shape == (16, 16, 16) and volume.voxel_size.sides == (0.5, 0.5, 0.5)
    metrics = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert set(metrics["directions"]) == {"z", "y", "x"}

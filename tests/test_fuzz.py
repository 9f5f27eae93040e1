"""Hostile input: every malformed file is a clear input error that names it, every bad option a one-line message.

Seeded mutations (bit flips, truncation, inserted and zeroed bytes, header edits) of valid images, weights and
checkpoints, and random option values, from the generator in benchmarks/fuzz_inputs.py (which runs 10,000 cases);
then the cases that once failed, kept as explicit regressions.
"""

import importlib.util
import json
import shutil
import struct
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

import jaxmicro.reconstruction as R
from jaxmicro import vgg, weights
from jaxmicro.checkpoint import Checkpointer
from jaxmicro.errors import InputError, WeightsError
from jaxmicro.io import read_microstructure

from conftest import run_in_process

_spec = importlib.util.spec_from_file_location(
    "fuzz_inputs", Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_inputs.py"
)
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

CASES = {"tiff-2d": 50, "tiff-3d": 50, "png": 60, "npy": 80, "weights-npz": 40, "weights-json": 40,
         "checkpoint": 40, "cli-values": 80}


@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """The fuzz generator points the weights cache and registry at its own folder; undo that afterwards."""
    monkeypatch.setenv("JAXMICRO_CACHE_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(weights, "REGISTRY_PATH", weights.REGISTRY_PATH)


@pytest.mark.parametrize("fmt", list(CASES))
def test_mutations_are_read_or_refused_with_a_message_that_names_the_file(fmt, tmp_path, isolated_weights):
    result = fuzz.run(CASES[fmt], 0, (fmt,), tmp_path)
    assert result["failures"] == []
    counts = result["counts"][fmt]
    assert sum(counts.values()) == CASES[fmt]
    assert counts["refused"] >= CASES[fmt] // 4, counts  # the mutations do reach the checks


def _one_clear_line(err: str, *words) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for word in words:
        assert str(word) in errors[0], (word, err)


def test_refused_images_exit_2_from_the_command_line_and_write_nothing(tmp_path, capsys):
    import random

    seeds = fuzz.make_image_seeds(tmp_path / "seeds")
    refused = 0
    for index in range(200):
        rng = random.Random(f"cli-{index}")
        fmt = fuzz.IMAGE_FORMATS[index % 4]
        source = rng.choice(seeds[fmt])
        _, data = fuzz.mutate(source.read_bytes(), rng, "tiff" if fmt.startswith("tiff") else fmt)
        path = tmp_path / f"case_{index}{source.suffix}"
        path.write_bytes(data)
        if fuzz.read_image_case(path) != "refused":
            continue
        refused += 1
        code, _, err = run_in_process(capsys, "describe", path, "--json", tmp_path / "d.json",
                                      "--figure", tmp_path / "d.png")
        assert code == 2, (path, err)
        _one_clear_line(err, path)
        assert not (tmp_path / "d.json").exists() and not (tmp_path / "d.png").exists()
        if refused == 30:
            break
    assert refused == 30


# ------------------------------------------------------------------------------------ regressions: NPY headers


def _npy_with_header(path: Path, header: str, data: bytes = b"\0" * 480, version: int = 1) -> Path:
    text = header.encode("latin1")
    length = struct.pack("<H" if version == 1 else "<I", len(text))
    path.write_bytes(b"\x93NUMPY" + bytes([version, 0]) + length + text + data)
    return path


@pytest.mark.parametrize("header", [
    "{'descr': '|u1', 'fortran_order': False, 'shape': (20, 24, }\n",  # TokenError: EOF in multi-line statement
    "{'descr': '|u1', 'fortran_order': False, 'shape': (20, 24), \n",
    "{'descr': '|u1, 'fortran_order': False, 'shape': (20, 24), }\n",  # unterminated string
    "{'descr': '|u1', 'fortran_order': False, 'shape': (20, 24), }\\\n",
    "{[]: 1}\n",  # TypeError: unhashable
    "(" * 300 + "\n",  # too deeply nested
    "{'descr': 42, 'fortran_order': False, 'shape': (20, 24), }\n",
    "{'descr': '|u1', 'fortran_order': False, 'shape': ('a', 24), }\n",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 24), }\n",
    "\x00\xff{'descr'\n",
])
def test_damaged_npy_header_is_an_input_error_naming_the_file(tmp_path, header):
    path = _npy_with_header(tmp_path / "damaged.npy", header)
    with pytest.raises(InputError, match="damaged") as error:
        read_microstructure(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("header, version", [
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 1000000000000), }\n", 1),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999, 2), }\n", 1),
    ("{'descr': '<U99999999', 'fortran_order': False, 'shape': (1,), }\n", 1),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (4000000000,), }\n", 2),
])
def test_absurd_declared_npy_size_is_refused_before_allocating(tmp_path, header, version, monkeypatch):
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("the data was read"))
    path = _npy_with_header(tmp_path / "huge.npy", header, version=version)
    with pytest.raises(InputError, match="declares") as error:
        read_microstructure(path)
    assert str(path) in str(error.value)


def test_npy_header_length_fields_beyond_the_file_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((20, 24), np.uint8))
    data = bytearray((tmp_path / "a.npy").read_bytes())
    data[8:10] = struct.pack("<H", 0xFFFF)
    (tmp_path / "a.npy").write_bytes(bytes(data))
    with pytest.raises(InputError, match="declares a length of 65,535 bytes"):
        read_microstructure(tmp_path / "a.npy")
    version2 = bytes(data[:6]) + b"\x02\x00" + struct.pack("<I", 0xFFFFFFFF) + bytes(data[10:])
    (tmp_path / "b.npy").write_bytes(version2)
    with pytest.raises(InputError, match="declares a length"):
        read_microstructure(tmp_path / "b.npy")


def test_bytes_inserted_into_npy_data_are_refused(tmp_path):
    labels = (np.arange(20 * 24).reshape(20, 24) % 3).astype(np.uint8)
    np.save(tmp_path / "a.npy", labels)
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:200] + b"\x07\x07\x07" + data[200:])
    with pytest.raises(InputError, match=r"480 bytes\) but 483 bytes of data follow"):
        read_microstructure(tmp_path / "a.npy")
    (tmp_path / "b.npy").write_bytes(data)  # the intact file still reads
    np.testing.assert_array_equal(read_microstructure(tmp_path / "b.npy").labels, labels)


# ------------------------------------------------------------------------ regressions: PNG and TIFF sizes


def test_png_declaring_more_pixels_than_the_file_can_hold_is_refused(tmp_path):
    Image.fromarray((np.arange(400).reshape(20, 20) % 2 * 255).astype(np.uint8)).save(tmp_path / "a.png")
    data = bytearray((tmp_path / "a.png").read_bytes())
    data[16:24] = struct.pack(">II", 40000, 2000)  # 80 million pixels, under Pillow's decompression-bomb limit
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (tmp_path / "a.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match="more than a file of") as error:
        read_microstructure(tmp_path / "a.png")
    assert str(tmp_path / "a.png") in str(error.value)


def test_tiff_declaring_more_pixels_than_the_file_can_hold_is_refused(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, (np.arange(400).reshape(20, 20) % 2).astype(np.uint8), compression="zlib")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for name, value in (("ImageWidth", 200000), ("ImageLength", 300000)):
            tag = tags[name]
            fmt = "<I" if tag.dtype == 4 else "<H"
            value = min(value, 65535) if fmt == "<H" else value
            data[tag.valueoffset : tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="more than a file of") as error:
        read_microstructure(path)
    assert str(path) in str(error.value)


# ------------------------------------------------------------------------------- regressions: weights cache


def test_weights_member_declaring_an_absurd_size_is_refused(tmp_path, isolated_weights):
    _, npz, _ = fuzz.make_weights_seed(tmp_path / "weights")
    data = bytearray(npz.read_bytes())
    start = data.index(b"\x93NUMPY")
    length = struct.unpack("<H", data[start + 8 : start + 10])[0]
    header = data[start + 10 : start + 10 + length].decode("latin1")
    edited = header[: header.index("'shape':")] + "'shape': (10**12, 10**12), }"
    data[start + 10 : start + 10 + length] = edited.encode("latin1").ljust(length)[:length]
    npz.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="jaxmicro weights fetch --force|convert_torchvision") as error:
        weights.load_vgg19_params(npz, name="tiny_user")
    assert str(npz) in str(error.value)


# ------------------------------------------------------------------------------------ regressions: checkpoints


@pytest.fixture
def saved_run(tmp_path):
    """A folder with checkpoints at steps 5 and 10 of a small batched state."""
    return fuzz.make_checkpoint_seed(tmp_path / "run")


def _restore(folder, template=None):
    template = template if template is not None else fuzz._checkpoint_values(10)[0]
    return Checkpointer(folder, 5, "fingerprint", resume=True).restore(template)


def _meta(folder, step=10):
    return folder / "checkpoints" / str(step) / "meta" / "metadata"


@pytest.mark.parametrize("damage", [
    "meta is a list", "absurd history rows", "negative history rows", "meta deleted", "state metadata deleted",
    "state metadata emptied", "state item deleted", "manifest bit flip", "step renamed", "another batch size",
])
def test_damaged_checkpoint_is_refused_naming_the_folder(saved_run, damage):
    latest = saved_run / "checkpoints" / "10"
    template = None
    if damage == "meta is a list":
        _meta(saved_run).write_text("[1, 2]")  # once an AttributeError
    elif damage in ("absurd history rows", "negative history rows"):  # once a MemoryError / ValueError
        meta = json.loads(_meta(saved_run).read_text())
        meta["history_rows"] = 10**11 if damage.startswith("absurd") else -1
        _meta(saved_run).write_text(json.dumps(meta))
    elif damage == "meta deleted":
        _meta(saved_run).unlink()  # once a FileNotFoundError
    elif damage == "state metadata deleted":
        (latest / "state" / "_METADATA").unlink()
    elif damage == "state metadata emptied":
        (latest / "state" / "_METADATA").write_text("{}")  # once a KeyError
    elif damage == "state item deleted":
        shutil.rmtree(latest / "state")
    elif damage == "manifest bit flip":
        manifest = latest / "state" / "manifest.ocdbt"
        data = bytearray(manifest.read_bytes())
        data[len(data) // 2] ^= 0x10
        manifest.write_bytes(bytes(data))
    elif damage == "step renamed":  # once resumed at step 15 from the state after step 10
        latest.rename(latest.with_name("15"))
    else:  # once restored silently with the checkpoint's batch of 2 into a run of 3
        state, _ = fuzz._checkpoint_values(10)
        template = fuzz._State(np.concatenate([state.logits, state.logits[:1]]), np.full(3, 10, np.int32))
    with pytest.raises(InputError, match="is damaged") as error:
        _restore(saved_run, template)
    assert str(saved_run) in str(error.value)


def test_damaged_checkpoint_message_names_the_earlier_one(saved_run):
    _meta(saved_run).write_text("{")
    with pytest.raises(InputError, match=r"checkpoints/10 to resume from the checkpoint at step 5"):
        _restore(saved_run)
    shutil.rmtree(saved_run / "checkpoints" / "10")  # what the message says to do
    states, _ = _restore(saved_run, fuzz._checkpoint_values(5)[0])
    np.testing.assert_array_equal(np.asarray(states.logits), fuzz._checkpoint_values(5)[0].logits)


def test_intact_checkpoint_restores_exactly(saved_run):
    states, history = _restore(saved_run)
    expected, expected_history = fuzz._checkpoint_values(10)
    np.testing.assert_array_equal(np.asarray(states.logits), expected.logits)
    np.testing.assert_array_equal(np.concatenate([h["loss"] for h in history]), expected_history)


# --------------------------------------------------------------------- regressions: command line and --resume


@pytest.mark.parametrize("option, value, words", [
    ("--seed", str(2**63), ["--seed", "64 bits"]),  # once an OverflowError inside jax.random
    ("--learning-rate", "nan", ["--learning-rate", "positive finite"]),
    ("--learning-rate", "-1", ["--learning-rate", "positive finite"]),
    ("--learning-rate", "inf", ["--learning-rate", "positive finite"]),
    ("--count", str(10**12), ["--count", "up to 2147483647"]),  # once ran out of memory building output names
    ("--count", "2147483647", ["GiB", "--count"]),
    ("--steps", "1" + "0" * 400, ["--steps", "up to"]),
])
def test_out_of_range_option_values_are_one_clear_line(tmp_path, capsys, option, value, words):
    exemplar = tmp_path / "exemplar.npy"
    np.save(exemplar, fuzz._labels((16, 16)))
    code, _, err = run_in_process(capsys, "reconstruct", exemplar, f"{option}={value}", "--out", tmp_path / "out",
                                  "--quiet")
    assert code == 2
    _one_clear_line(err, *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, words", [
    ("{", ["is damaged", "JSONDecodeError"]),
    (b"\xff\xfe{}", ["is damaged"]),
    ("[1, 2]", ["JSON list"]),
    ('{"count": 2, "colour_map": "viridis"}', ["does not know (colour_map)", "another version"]),
    ('{"count": -3}', ["count = -3", "positive integer"]),
    ('{"count": 2.5}', ["count = 2.5", "whole number"]),
    ('{"count": null}', ["count = null", "must be set"]),
    ('{"optimizer": "sgd"}', ["optimizer", "adam, lbfgs"]),
    ('{"seed": 1e30}', ["seed", "whole number"]),
    ('{"grayscale": "yes"}', ["grayscale", "true or false"]),
    ('{"shape": [32, 32]}', ["shape", "not a value of this option"]),
    ('{"learning_rate": "nan"}', ["learning_rate", "positive finite"]),
])
def test_damaged_or_foreign_run_json_is_one_clear_line(tmp_path, capsys, content, words):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    before = sorted(folder.rglob("*"))
    code, _, err = run_in_process(capsys, "reconstruct", "--resume", folder)
    assert code == 2
    _one_clear_line(err, folder / "run.json", *words)
    assert sorted(folder.rglob("*")) == before


def test_resume_without_checkpoints_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(R, "load_network_params", _random_network)
    exemplar = tmp_path / "exemplar.npy"
    np.save(exemplar, fuzz._labels((16, 16)))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"exemplar": str(exemplar), "layers": "relu1_1", "count": 1}))
    code, _, err = run_in_process(capsys, "reconstruct", "--resume", folder)
    assert code == 2
    _one_clear_line(err, "nothing to resume", folder)
    assert [p.name for p in folder.iterdir()] == ["run.json"]


def _random_network(config, progress=True):
    return vgg.random_params(jax.random.PRNGKey(0), config.taps)


@pytest.mark.slow
def test_command_line_never_resumes_from_a_damaged_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(R, "load_network_params", _random_network)
    exemplar = tmp_path / "exemplar.npy"
    np.save(exemplar, (np.indices((24, 24)).sum(0) // 4 % 2).astype(np.uint8))
    out = tmp_path / "run"
    code, _, err = run_in_process(capsys, "reconstruct", exemplar, "--shape", "16x16", "--count", "1", "--steps", "10",
                        "--layers", "relu1_1", "--levels", "1", "--checkpoint-every", "5", "--out", out, "--quiet")
    assert code == 0, err
    for name in ("reconstruction_000.tif", "metrics.json", "comparison.png"):  # as if killed after step 5
        (out / name).unlink()
    manifest = out / "checkpoints" / "5" / "state" / "manifest.ocdbt"
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0x01
    manifest.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run_in_process(capsys, "reconstruct", "--resume", out, "--quiet")
    assert code == 2
    _one_clear_line(err, "is damaged", out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    # (an intact checkpoint resumes to the uninterrupted result: tests/test_cli.py, with the real network)

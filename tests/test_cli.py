"""The command line, end to end: real weights, small images, shallow layers; bad input never gives a traceback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from jaxmicro.examples import level_cut_microstructure

from conftest import run_in_process

pytestmark = pytest.mark.real_weights
SMALL = ["--shape", "32x32", "--count", "2", "--steps", "12", "--layers", "relu1_2,relu2_1", "--quiet"]


@pytest.fixture(scope="module")
def exemplar(tmp_path_factory, real_params):
    path = tmp_path_factory.mktemp("exemplar") / "two_phase.npy"
    np.save(path, level_cut_microstructure((48, 48), (0.6, 0.4), 3.0, seed=1))
    return path


def run_cli(*argv, cwd=None, env=None):
    """The installed command in a fresh process: (exit code, stdout, stderr)."""
    process = subprocess.run([sys.executable, "-m", "jaxmicro", *map(str, argv)], capture_output=True, text=True,
                             cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)
    return process.returncode, process.stdout, process.stderr


def test_help_of_every_command_has_examples():
    for command in ["reconstruct", "describe", "compare", "property", "weights"]:
        code, out, err = run_cli(command, "--help")
        assert code == 0 and "example" in out and "Traceback" not in err


def test_reconstruct_writes_tiffs_metrics_and_figure(exemplar, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_in_process(capsys, "reconstruct", exemplar, *SMALL, "--seed", "7", "--out", out)
    assert code == 0, stderr
    labels = tifffile.imread(out / "reconstruction_000.tif")
    assert labels.shape == (32, 32) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["seed"] == 7 and metrics["run"]["exemplar"]["mapping"]["kind"] == "labels"
    entry = metrics["reconstructions"][0]
    for key in ["file", "volume_fraction_error", "s2_max_abs_error", "lineal_path_max_abs_error",
                "copy_agreement", "copy_baseline", "status", "undecided_fraction"]:
        assert key in entry
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp*"))
    # existing outputs are not overwritten without --force
    code, _, stderr = run_in_process(capsys, "reconstruct", exemplar, *SMALL, "--out", out)
    assert code == 2 and "--force" in stderr
    # same seed, same result
    code, _, _ = run_in_process(capsys, "reconstruct", exemplar, *SMALL, "--seed", "7", "--out", tmp_path / "again")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again" / "reconstruction_001.tif"),
                                  tifffile.imread(out / "reconstruction_001.tif"))
    # the polish: none unless given, kept in run.json for --resume
    assert json.loads((out / "run.json").read_text())["polish_steps"] == 0
    code, _, stderr = run_in_process(capsys, "reconstruct", exemplar, *SMALL, "--polish-steps", "6", "--out",
                                     tmp_path / "polished")
    assert code == 0, stderr
    assert json.loads((tmp_path / "polished" / "run.json").read_text())["polish_steps"] == 6


def test_reconstruct_a_volume_from_a_2d_exemplar_with_the_volume_schedule(exemplar, tmp_path, capsys):
    out = tmp_path / "volume"
    code, _, stderr = run_in_process(capsys, "reconstruct", exemplar, "--shape", "16x16x16", "--count", "1",
                                     "--layers", "relu1_2", "--quiet", "--out", out)
    assert code == 0, stderr
    volume = tifffile.imread(out / "reconstruction_000.tif")  # multi-page: one page per slice
    assert volume.shape == (16, 16, 16) and set(np.unique(volume)) <= {0, 1}
    saved = json.loads((out / "run.json").read_text())  # the volume defaults, resolved and kept for --resume
    assert (saved["steps"], saved["levels"], saved["coarse_steps"], saved["slices_per_step"],
            saved["polish_steps"]) == (100, 3, 200, 1, 0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["correlation_weight"] == 100.0
    entry = metrics["reconstructions"][0]
    assert len(entry["s2_max_abs_error_per_axis"]) == 3 and entry["volume_fraction_error"] < 0.1
    assert np.asarray(entry["largest_cluster_fraction_slices"]).shape == (3, 2)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _bad_inputs(tmp: Path, exemplar: Path):
    """(case, argv, words the message must contain)."""
    noisy = np.random.default_rng(0).integers(0, 255, (40, 40)).astype(np.uint8)
    nan = np.zeros((40, 40))
    nan[3, 3] = np.nan
    good_tiff = tmp / "good.tif"
    tifffile.imwrite(good_tiff, (np.arange(64 * 64).reshape(64, 64) % 2).astype(np.uint8), compression="zlib")
    truncated = _write(tmp / "truncated.tif", good_tiff.read_bytes()[: good_tiff.stat().st_size // 2])
    np.save(tmp / "many.npy", noisy)
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "single.npy", np.ones((40, 40), np.uint8))
    np.save(tmp / "tiny.npy", np.eye(6, dtype=np.uint8))
    np.save(tmp / "volume.npy", np.random.default_rng(1).integers(0, 2, (40, 40, 40)).astype(np.uint8))
    blocker = _write(tmp / "a_file", b"x")
    return [
        ("missing file", [tmp / "nope.tif"], ["no such file"]),
        ("empty file", [_write(tmp / "empty.tif", b"")], ["empty"]),
        ("not an image", [_write(tmp / "notes.tif", b"these are my notes, not an image\n")], ["not"]),
        ("truncated tiff", [truncated], ["truncated"]),
        ("nan values", [tmp / "nan.npy"], ["nan"]),
        ("single phase", [tmp / "single.npy"], ["single", "phase"]),
        ("too many values", [tmp / "many.npy"], ["--grayscale", "--phases"]),
        ("exemplar too small", [tmp / "tiny.npy", "--layers", "relu3_1"], ["at least"]),
        ("3d exemplar, 2d output", [tmp / "volume.npy", "--shape", "32x32"], ["3d"]),
        ("zero count", [exemplar, "--count", "0"], ["positive integer"]),
        ("negative steps", [exemplar, "--steps", "-5"], ["positive integer"]),
        ("zero size", [exemplar, "--shape", "0x32"], ["shape"]),
        ("unknown layer", [exemplar, "--layers", "relu9_9"], ["unknown layer"]),
        ("unwritable output", [exemplar, "--out", blocker / "sub"], ["a_file"]),
    ]


def test_every_bad_input_gives_one_clear_message_and_writes_nothing(exemplar, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, exemplar)
    for case, argv, words in cases:
        out = tmp_path / f"out_{case.replace(' ', '_')}"
        extra = [] if "--out" in map(str, argv) else ["--out", out]
        code, stdout, stderr = run_in_process(capsys, "reconstruct", *argv, *extra, "--quiet")
        assert code != 0, case
        assert "Traceback" not in stderr and stderr.count("error") >= 1, (case, stderr)
        for word in words:
            assert word.lower() in stderr.lower(), (case, word, stderr)
        assert not out.exists(), f"{case}: wrote {out}"


def test_bad_input_through_the_installed_command_exits_nonzero_without_traceback(tmp_path):
    code, stdout, stderr = run_cli("reconstruct", tmp_path / "missing.png", "--out", tmp_path / "o")
    assert code == 2 and "no such file" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli("reconstruct", "--count", "zero")
    assert code == 2 and "positive integer" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("damage", ["missing", "truncated", "tampered"])
def test_bad_weights_are_refused_with_the_fixing_command(exemplar, tmp_path, damage):
    from jaxmicro.weights import weights_file

    cache = tmp_path / "cache"
    cache.mkdir()
    real = weights_file()
    target = cache / real.name
    if damage != "missing":
        data = bytearray(real.read_bytes())
        if damage == "truncated":
            data = data[: len(data) // 3]
        else:
            data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        sidecar = real.with_name(real.name + ".json")
        if sidecar.exists():
            (cache / sidecar.name).write_bytes(sidecar.read_bytes())
    out = tmp_path / "out"
    code, _, stderr = run_cli("reconstruct", exemplar, *SMALL, "--out", out,
                              env={"JAXMICRO_CACHE_DIR": str(cache), "JAXMICRO_OFFLINE": "1"})
    assert code == 2 and "jaxmicro weights fetch" in stderr and "Traceback" not in stderr, stderr
    assert not out.exists()


def test_property_and_compare_and_describe(exemplar, tmp_path, capsys):
    laminate = np.zeros((32, 32), np.uint8)
    laminate[:, 16:] = 1
    np.save(tmp_path / "laminate.npy", laminate)
    code, out, err = run_in_process(capsys, "property", tmp_path / "laminate.npy", "--conductivity", "1,3",
                                    "--json", tmp_path / "k.json")
    assert code == 0, err
    k = np.array(json.loads((tmp_path / "k.json").read_text())["conductivity"])
    np.testing.assert_allclose(np.diag(k), [2.0, 1.5], rtol=1e-4)  # along the layers: mean; across: harmonic
    code, _, err = run_in_process(capsys, "property", tmp_path / "laminate.npy", "--conductivity", "1")
    assert code == 2 and "one per phase" in err
    code, out, err = run_in_process(capsys, "compare", exemplar, exemplar, "--json", tmp_path / "c.json",
                                    "--figure", tmp_path / "c.png")
    assert code == 0, err
    comparison = json.loads((tmp_path / "c.json").read_text())
    assert comparison["reconstructions"][0]["s2_max_abs_error"] == 0
    assert comparison["reconstructions"][0]["copy_agreement"] == pytest.approx(1.0)
    code, out, err = run_in_process(capsys, "describe", exemplar, "--json", tmp_path / "d.json")
    assert code == 0 and "2 phases" in out and "fraction" in out
    assert json.loads((tmp_path / "d.json").read_text())["n_phases"] == 2


def _latest_checkpoint(folder: Path) -> int:
    steps = [int(p.name) for p in (folder / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=-1)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(exemplar, tmp_path):
    args = ["--shape", "32x32", "--count", "2", "--steps", "60", "--layers", "relu1_2,relu2_1", "--seed", "3",
            "--quiet"]
    # the three processes share a compilation cache, as a user's runs do: the resumed run compiles nothing
    cache = {"JAXMICRO_COMPILATION_CACHE": str(tmp_path / "xla")}
    code, _, err = run_cli("reconstruct", exemplar, *args, "--out", tmp_path / "whole", env=cache)
    assert code == 0, err

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "jaxmicro", "reconstruct", str(exemplar), *args,
                                "--checkpoint-every", "5", "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **cache})
    deadline = time.time() + 300
    while _latest_checkpoint(killed) < 10 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = _latest_checkpoint(killed)
    assert 10 <= saved < 60, "the run should have been killed between checkpoints"
    assert not (killed / "metrics.json").exists()

    code, _, err = run_cli("reconstruct", "--resume", killed, env=cache)
    assert code == 0, err
    for i in range(2):
        np.testing.assert_array_equal(tifffile.imread(killed / f"reconstruction_{i:03d}.tif"),
                                      tifffile.imread(tmp_path / "whole" / f"reconstruction_{i:03d}.tif"))
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["run"]["final_loss"]
    assert json.loads((killed / "metrics.json").read_text())["run"]["final_loss"] == whole


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(exemplar, tmp_path):
    out = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "jaxmicro", "reconstruct", str(exemplar), "--shape", "32x32",
                                "--count", "1", "--steps", "400", "--layers", "relu1_2", "--checkpoint-every", "5",
                                "--quiet", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while _latest_checkpoint(out) < 5 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "--resume" in stderr and "Traceback" not in stderr
    assert _latest_checkpoint(out) >= 5


def test_resume_of_a_different_run_is_refused(exemplar, tmp_path, capsys):
    out = tmp_path / "a"
    code, _, err = run_in_process(capsys, "reconstruct", exemplar, *SMALL, "--checkpoint-every", "5", "--out", out)
    assert code == 0, err
    code, _, err = run_in_process(capsys, "reconstruct", "--resume", out, "--seed", "99")
    assert code == 2 and "different run" in err
    code, _, err = run_in_process(capsys, "reconstruct", "--resume", tmp_path / "not_a_run")
    assert code == 2 and "not a jaxmicro run folder" in err


def test_a_request_that_cannot_fit_is_refused_before_anything_is_written(exemplar, tmp_path, capsys):
    out = tmp_path / "huge"
    code, _, err = run_in_process(capsys, "reconstruct", exemplar, "--shape", "512x512x512", "--count", "64",
                                  "--layers", "mcrpy", "--out", out)
    assert code == 2 and "GiB" in err and "--count" in err and "Traceback" not in err
    assert not out.exists()


def test_estimate_grows_with_the_request():
    from jaxmicro import estimate, vgg

    small = estimate.estimate((64, 64), 1, 100, vgg.TAP_SETS["mcrpy"])
    assert small.flops_per_step == pytest.approx(3 * vgg.flops_per_image((64, 64), vgg.TAP_SETS["mcrpy"]))
    big = estimate.estimate((64, 64, 64), 4, 100, vgg.TAP_SETS["mcrpy"])
    assert big.images_per_step == 4 * 3 * 64 and big.memory_bytes > 50 * small.memory_bytes
    sampled = estimate.estimate((64, 64, 64), 4, 100, vgg.TAP_SETS["mcrpy"], slices_per_step=2)
    assert sampled.images_per_step == 4 * 3 * 2 and sampled.seconds == pytest.approx(big.seconds * 2 / 64)
    coarse = estimate.estimate((32, 32, 32), 4, 50, vgg.TAP_SETS["mcrpy"], slices_per_step=2)
    two_levels = estimate.estimate((64, 64, 64), 4, 100, vgg.TAP_SETS["mcrpy"], slices_per_step=2, levels=2,
                                   coarse_steps=50)
    assert two_levels.seconds == pytest.approx(sampled.seconds + coarse.seconds)
    assert two_levels.memory_bytes == sampled.memory_bytes


@pytest.fixture(scope="module")
def micrograph(tmp_path_factory):
    """A 48x48 uint8 grayscale micrograph: dark blobs on a bright matrix, with noise."""
    labels = level_cut_microstructure((48, 48), (0.6, 0.4), 3.0, seed=2)
    noise = np.random.default_rng(2).normal(0, 12, labels.shape)
    path = tmp_path_factory.mktemp("micrograph") / "gray.npy"
    np.save(path, np.clip(200 - 130 * labels + noise, 0, 255).astype(np.uint8))
    return path


def test_grayscale_reconstruct_describe_and_compare(micrograph, tmp_path, capsys):
    out = tmp_path / "gray"
    code, stdout, stderr = run_in_process(capsys, "reconstruct", micrograph, "--grayscale", *SMALL, "--out", out)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "grayscale" and metrics["run"]["exemplar"]["mapping"]["kind"] == "grayscale"
    assert metrics["run"]["learning_rate"] == 0.1  # the grayscale step size, resolved and recorded
    entry = metrics["reconstructions"][0]
    for key in ["intensity_histogram_distance", "autocovariance_max_abs_error", "copy_correlation", "copy_baseline",
                "likely_copy", "exemplar_crops", "status"]:
        assert key in entry, key
    assert {"s2_max_abs_error", "lineal_path_max_abs_error", "specific_surface", "largest_cluster_fraction"} <= set(
        entry["phases"])
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the written uint8 reconstruction compares as intensities again, with 3 phases for the judge
    code, stdout, stderr = run_in_process(capsys, "compare", micrograph, out / "reconstruction_000.tif",
                                          "--grayscale", "--phases", "3", "--json", tmp_path / "c.json",
                                          "--figure", tmp_path / "c.png")
    assert code == 0, stderr
    comparison = json.loads((tmp_path / "c.json").read_text())
    assert comparison["segmentation"]["n_phases"] == 3 and "|dHist|" in stdout
    assert comparison["reconstructions"][0]["intensity_histogram_distance"] == pytest.approx(
        entry["intensity_histogram_distance"], abs=1e-7)  # the same up to float rounding
    code, stdout, stderr = run_in_process(capsys, "compare", micrograph, micrograph, "--grayscale")
    assert code == 0 and "LIKELY A COPY" in stdout
    code, stdout, stderr = run_in_process(capsys, "describe", micrograph, "--grayscale", "--json", tmp_path / "d.json",
                                          "--figure", tmp_path / "d.png")
    assert code == 0 and "grayscale image 48 x 48" in stdout
    assert json.loads((tmp_path / "d.json").read_text())["kind"] == "grayscale"
    assert (tmp_path / "d.png").exists()


def test_bad_grayscale_options_give_one_clear_message(micrograph, tmp_path, capsys):
    """(command, arguments, words the message must contain); nothing is written."""
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8))
    np.save(tmp_path / "flat.npy", np.full((32, 32), 128, np.uint8))
    np.save(tmp_path / "two_levels.npy", np.where(np.eye(32, dtype=bool), 40, 200).astype(np.uint8))
    np.save(tmp_path / "volume.npy", np.random.default_rng(1).integers(0, 255, (24, 24, 24)).astype(np.uint8))
    out = tmp_path / "never"
    cases = [
        ("describe", [micrograph, "--grayscale", "--phases", "1"], ["--phases 1", "from 2 to 16"]),
        ("describe", [micrograph, "--grayscale", "--phases", "17"], ["from 2 to 16"]),
        ("describe", [micrograph, "--grayscale", "--phases", "x"], ["positive integer"]),
        ("describe", [micrograph], ["--grayscale"]),
        ("describe", [tmp_path / "flat.npy", "--grayscale"], ["single"]),
        ("describe", [rgb, "--grayscale"], ["--gray-from-rgb"]),
        ("compare", [micrograph, micrograph, "--grayscale", "--max-distance", "30"], ["max_distance", "24"]),
        ("compare", [tmp_path / "two_levels.npy", micrograph, "--grayscale", "--phases", "3"], ["2 distinct", "3"]),
        ("compare", [tmp_path / "volume.npy", micrograph, "--grayscale"], ["3d"]),
        ("compare", [micrograph, tmp_path / "missing.tif", "--grayscale"], ["no such file"]),
        ("property", [micrograph, "--grayscale", "--conductivity", "1,2"], ["--phases"]),
        ("reconstruct", [micrograph, "--grayscale", "--phases", "20", "--out", out], ["from 2 to 16"]),
        ("reconstruct", [rgb, "--grayscale", "--out", out], ["--gray-from-rgb"]),
    ]
    for command, argv, words in cases:
        code, stdout, stderr = run_in_process(capsys, command, *argv)
        assert code == 2, (command, argv, stderr)
        assert "Traceback" not in stderr and "error" in stderr, (command, argv, stderr)
        for word in words:
            assert word.lower() in stderr.lower(), (command, argv, word, stderr)
        assert not out.exists()
    code, stdout, stderr = run_in_process(capsys, "describe", rgb, "--grayscale", "--gray-from-rgb")
    assert code == 0 and "grayscale image 32 x 32" in stdout

"""Tests of jaxmicro.report: describe/compare keys and numbers, errors, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmicro import report
from jaxmicro.errors import InputError


def blobs(shape, seed, fraction=0.4):
    """A smooth random two-phase structure (thresholded periodic low-pass noise)."""
    rng = np.random.default_rng(seed)
    noise = np.fft.rfftn(rng.normal(size=shape))
    k = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(s) ** 2 for s in shape[:-1]], np.fft.rfftfreq(shape[-1]) ** 2, indexing="ij")))
    field = np.fft.irfftn(noise * np.exp(-((k / 0.08) ** 2)), s=shape, axes=range(len(shape)))
    return (field > np.quantile(field, 1 - fraction)).astype(np.uint8)


def test_describe_keys_and_json():
    labels = blobs((48, 40), 0)
    d = report.describe(labels)
    json.dumps(d)
    assert d["shape"] == [48, 40] and d["n_phases"] == 2 and d["max_distance"] == 20
    assert np.asarray(d["s2_per_axis"]).shape == (2, 21, 2)
    assert np.asarray(d["lineal_path_per_axis"]).shape == (2, 21, 2)
    assert d["volume_fractions"][1] == pytest.approx(labels.mean(), abs=1e-6)
    assert d["s2_per_axis"][0][0] == pytest.approx(d["volume_fractions"], abs=1e-6)
    text = report.format_description(d)
    assert "phase" in text and "48 x 40" in text


def test_identical_and_shifted_copies():
    ex = blobs((64, 64), 1)
    shifted = np.roll(np.flip(ex, 0), (7, 30), (0, 1))
    other = blobs((64, 64), 2)
    d = report.compare(ex, [ex, shifted, other], names=["same.npy", "moved.npy", "other.npy"])
    json.dumps(d)
    assert set(d) >= {"exemplar", "max_distance", "baseline", "reconstructions"} and d["max_distance"] == 32
    same, moved, indep = d["reconstructions"]
    assert same["file"] == "same.npy"
    for key in ["volume_fraction_error", "s2_max_abs_error", "lineal_path_max_abs_error"]:
        assert same[key] == pytest.approx(0.0, abs=1e-6)
    assert same["copy_agreement"] == pytest.approx(1.0, abs=1e-5) and same["likely_copy"]
    assert moved["copy_agreement"] == pytest.approx(1.0, abs=1e-5) and moved["likely_copy"]
    assert moved["volume_fraction_error"] == pytest.approx(0.0, abs=1e-6)
    assert not indep["likely_copy"] and indep["copy_agreement"] < 0.9
    assert indep["copy_baseline"] == pytest.approx(np.sum(np.multiply(d["exemplar"]["volume_fractions"], indep["volume_fractions"])))
    assert "LIKELY A COPY" in report.format_comparison(d)


def test_different_sizes_and_3d_reconstruction_of_2d_exemplar():
    ex = blobs((64, 48), 3)
    d = report.compare(ex, [blobs((40, 40), 4), blobs((24, 24, 24), 5)])
    assert d["max_distance"] == 12  # half the smallest side (24)
    small, volume = d["reconstructions"]
    assert len(small["s2_max_abs_error_per_axis"]) == 2
    assert len(volume["s2_max_abs_error_per_axis"]) == 3
    assert 0 < volume["copy_agreement"] < 1
    assert report.compare(ex, ex[:40, :30], max_distance=5)["reconstructions"][0]["copy_agreement"] == pytest.approx(1.0, abs=1e-5)


def test_errors():
    ex = blobs((32, 32), 6)
    with pytest.raises(InputError, match="phases"):
        report.compare(ex, [ex + (ex == 1)])  # 3 phases against 2
    with pytest.raises(InputError, match="3D"):
        report.compare(blobs((16, 16, 16), 7), [ex])
    with pytest.raises(InputError, match="empty"):
        report.compare(ex, [np.zeros_like(ex)])
    with pytest.raises(InputError, match="empty"):
        report.compare(np.where(ex == 1, 2, 0), [ex])
    with pytest.raises(InputError, match="max_distance"):
        report.compare(ex, [ex], max_distance=40)


def test_figures_are_png(tmp_path):
    ex = blobs((48, 48), 8)
    recs = [blobs((48, 48), 9), blobs((16, 20, 24), 10)]
    path = report.comparison_figure(ex, recs, tmp_path / "out" / "compare.png", names=["a", "b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = report.describe_figure(blobs((12, 14, 16), 11), tmp_path / "describe.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["compare.png", "describe.png", "out"]  # no temporaries

"""Tests of jaxmicro.report: describe/compare keys and numbers, errors, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmicro import report, statistics as st
from jaxmicro.errors import InputError


def blobs(shape, seed, fraction=0.4):
    """A smooth random two-phase structure (thresholded periodic low-pass noise)."""
    rng = np.random.default_rng(seed)
    noise = np.fft.rfftn(rng.normal(size=shape))
    frequencies = [np.fft.fftfreq(s) ** 2 for s in shape[:-1]] + [np.fft.rfftfreq(shape[-1]) ** 2]
    k = np.sqrt(sum(np.meshgrid(*frequencies, indexing="ij")))
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
    baseline = np.sum(np.multiply(d["exemplar"]["volume_fractions"], indep["volume_fractions"]))
    assert indep["copy_baseline"] == pytest.approx(baseline)
    text = report.format_comparison(d).splitlines()
    assert "LIKELY A COPY" in text[3] and "|dS|/S" in text[2] and "|d1px|" in text[2]
    surface, one_pixel = (float(v) for v in text[3].split()[5:7])  # same.npy: the exemplar's own values
    assert surface == 0.0 and one_pixel == 0.0
    row = text[5].split()  # other.npy
    assert float(row[5]) == pytest.approx(np.max(np.abs(indep["specific_surface_relative_error"])), abs=1e-4)


def test_different_sizes_and_3d_reconstruction_of_2d_exemplar():
    ex = blobs((64, 48), 3)
    d = report.compare(ex, [blobs((40, 40), 4), blobs((24, 24, 24), 5)])
    assert d["max_distance"] == 12  # half the smallest side (24)
    small, volume = d["reconstructions"]
    assert len(small["s2_max_abs_error_per_axis"]) == 2
    assert len(volume["s2_max_abs_error_per_axis"]) == 3
    assert 0 < volume["copy_agreement"] < 1
    window = report.compare(ex, ex[:40, :30], max_distance=5)["reconstructions"][0]
    assert window["copy_agreement"] == pytest.approx(1.0, abs=1e-5)


def test_surface_of_a_volume_against_its_own_plane_sections():
    """An isotropic volume judged against one of its slices: the specific surface agrees once the volume's three
    axes of faces are set against 3/2 of the slice's two (without that rule the error would read about +0.5)."""
    volume = blobs((64, 64, 64), 6, fraction=0.5)
    for k in (10, 32, 50):
        error = report.compare(volume[k], [volume])["reconstructions"][0]["specific_surface_relative_error"]
        assert np.max(np.abs(error)) < 0.1


def test_largest_cluster_fraction_in_describe_and_compare():
    stripes = (np.arange(16) % 8 < 4).astype(np.int32)  # 2 stripes of each phase, 4 pixels wide
    ex = np.broadcast_to(stripes[:, None], (16, 16))
    volume = np.broadcast_to(stripes[:, None, None], (16, 16, 16))  # the same stripes as slabs
    d = report.compare(ex, [ex, volume], names=["same", "volume"])
    json.dumps(d)
    assert d["exemplar"]["largest_cluster_fraction"] == [0.5, 0.5]
    same, vol = d["reconstructions"]
    assert same["largest_cluster_fraction"] == [0.5, 0.5] and "largest_cluster_fraction_slices" not in same
    assert vol["largest_cluster_fraction"] == [0.5, 0.5]  # 3D: two slabs of each phase
    # slices normal to axis 0 are uniform; across the slabs they show the exemplar's two stripes
    assert vol["largest_cluster_fraction_slices"] == [[1.0, 1.0], [0.5, 0.5], [0.5, 0.5]]
    text = report.format_comparison(d)
    assert "largest-cluster fraction" in text and "ax1 0.500/0.500" in text
    # the like-for-like exemplar value: tiles of the reconstruction's (slice) size
    assert same["exemplar_largest_cluster_fraction_same_size"] == [0.5, 0.5]
    half = report.compare(ex, [ex[:8]])["reconstructions"][0]  # 8x16 tiles: one stripe of each phase each
    assert half["exemplar_largest_cluster_fraction_same_size"] == [1.0, 1.0]
    assert half["exemplar_largest_cluster_fraction_same_size_range"] == [[1.0, 1.0], [1.0, 1.0]]
    assert "(its pieces 0.50-0.50/0.50-0.50)" in text

    ex = blobs((16, 16), 12)  # the shapes above: nothing new to compile
    recs = [blobs((16, 16, 16), 13), blobs((16, 16), 14)]
    d = report.compare(ex, recs)
    assert d["exemplar"]["largest_cluster_fraction"] == st.largest_cluster_fraction(ex, 2).tolist()
    vol, flat = d["reconstructions"]
    assert np.asarray(vol["largest_cluster_fraction"]).shape == (2,)
    assert np.asarray(vol["largest_cluster_fraction_slices"]).shape == (3, 2)
    expected = st.largest_cluster_fraction_slices(recs[0], 2)
    np.testing.assert_array_equal(vol["largest_cluster_fraction_slices"], expected)
    assert np.asarray(flat["largest_cluster_fraction"]).shape == (2,) and "largest_cluster_fraction_slices" not in flat
    assert "cluster" in report.format_description(report.describe(recs[0]))


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


def test_comparison_figure_panels(tmp_path, monkeypatch):
    saved = []
    save = report._save_atomically
    monkeypatch.setattr(report, "_save_atomically", lambda figure, path: saved.append(figure) or save(figure, path))
    ex = blobs((48, 48), 15)
    path = report.comparison_figure(ex, [blobs((16, 20, 24), 16), blobs((16, 20, 24), 17)], tmp_path / "3d.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # exemplar + 3 orthogonal slices, S2 along each of the 3 axes, lineal path and chords
    axes = saved[-1].axes
    assert len(axes) == 9
    assert [ax.get_title() for ax in axes[4:7]] == [f"S2 along axis {a} (3D reconstructions)" for a in range(3)]
    assert [im.get_array().shape for ax in axes[1:4] for im in ax.get_images()] == [(20, 24), (16, 24), (16, 20)]
    # the exemplar's in-plane mean S2 is the reference curve of every axis; the volume's own axis is the mean curve
    in_plane = np.mean(st.two_point_profiles(ex, max_distance=8).per_axis, 0)
    volumes_s2 = [st.two_point_profiles(blobs((16, 20, 24), seed), max_distance=8).per_axis for seed in (16, 17)]
    for a, ax in enumerate(axes[4:7]):
        exemplar_line, mean_line = ax.get_lines()[:2]
        np.testing.assert_allclose(exemplar_line.get_ydata(), in_plane[:, 0], atol=1e-6)
        np.testing.assert_allclose(mean_line.get_ydata(), np.mean([v[a, :, 0] for v in volumes_s2], 0), atol=1e-6)
    # a 3D exemplar: each panel's reference is the exemplar's own axis
    ex3 = blobs((12, 14, 16), 18)
    report.comparison_figure(ex3, [blobs((16, 20, 24), 16)], tmp_path / "3d3d.png")
    assert len(saved[-1].axes) == 9
    own = st.two_point_profiles(ex3, max_distance=6).per_axis
    for a, ax in enumerate(saved[-1].axes[4:7]):
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), own[a, :, 0], atol=1e-6)
    report.comparison_figure(ex, [blobs((48, 48), 19), blobs((48, 48), 20)], tmp_path / "2d.png")
    assert len(saved[-1].axes) == 6  # 2D unchanged: exemplar + 2 reconstructions, 3 profile panels


# ------------------------------------------------------------------ grayscale


def gray_blobs(shape, seed):
    """A two-level micrograph-like intensity image: dark blobs on a bright matrix, with noise (0..1)."""
    rng = np.random.default_rng(seed)
    return np.clip(0.8 - 0.5 * blobs(shape, seed) + 0.05 * rng.normal(size=shape), 0, 1)


def test_describe_grayscale_keys_and_json():
    gray = gray_blobs((32, 40), 0)
    d = report.describe(gray, grayscale=True)
    json.dumps(d)
    assert d["kind"] == "grayscale" and d["shape"] == [32, 40] and d["max_distance"] == 16
    assert d["intensity_mean"] == pytest.approx(gray.mean()) and d["intensity_std"] == pytest.approx(gray.std())
    assert len(d["intensity_histogram"]) == d["histogram_bins"] == 256 and sum(d["intensity_histogram"]) == \
        pytest.approx(1.0)
    assert np.asarray(d["autocovariance_per_axis"]).shape == (2, 17) and d["autocovariance_radial"][0] == \
        pytest.approx(1.0)
    assert 0 < d["correlation_length"] < 16
    assert d["segmentation"]["n_phases"] == 2 and 0.3 < d["segmentation"]["thresholds"][0] < 0.8
    assert d["phases"]["n_phases"] == 2  # describe() of the segmented image
    assert d["phases"]["volume_fractions"][0] == pytest.approx(blobs((32, 40), 0).mean(), abs=0.01)
    text = report.format_description(d)
    assert "grayscale image 32 x 40" in text and "correlation length" in text and "phase" in text
    assert report.describe(gray, 3, grayscale=True)["phases"]["n_phases"] == 3


def test_compare_grayscale_copies_and_independent_images():
    ex = gray_blobs((32, 32), 1)
    moved = np.roll(np.flip(ex, 0), (7, 30), (0, 1))
    other = gray_blobs((32, 32), 2)
    crop = gray_blobs((24, 20), 3)
    d = report.compare(ex, [moved, other, (crop * 255).round().astype(np.uint8)], grayscale=True,
                       names=["moved", "other", "crop"])
    json.dumps(d)
    assert d["kind"] == "grayscale" and d["max_distance"] == 10 and d["segmentation"]["n_phases"] == 2
    copy, indep, small = d["reconstructions"]
    assert copy["intensity_histogram_distance"] == 0.0  # a moved copy: the same histogram
    assert copy["autocovariance_max_abs_error"] == pytest.approx(0.0, abs=1e-5)
    assert copy["copy_correlation"] == pytest.approx(1.0, abs=1e-5) and copy["likely_copy"]
    assert copy["phases"]["s2_max_abs_error"] == pytest.approx(0.0, abs=1e-6)
    assert copy["phases"]["copy_agreement"] == pytest.approx(1.0, abs=1e-5)
    assert not indep["likely_copy"] and indep["copy_correlation"] < 0.8 and 0 < indep["copy_baseline"] < 0.8
    assert 0 < indep["intensity_histogram_distance"] < 0.05 and indep["autocovariance_max_abs_error"] > 0
    assert copy["exemplar_crops"] is None  # same size: no smaller window to compare with
    crops = small["exemplar_crops"]
    assert crops["shape"] == [24, 20] and len(crops["corners"]) == 4
    assert len(crops["intensity_histogram_distance"]) == len(crops["autocovariance_max_abs_error"]) == 4
    text = report.format_comparison(d)
    assert "LIKELY A COPY" in text and "exemplar corner windows" in text and "|dHist|" in text
    # the exemplar's thresholds cut every image, and a phase may come out empty
    bright = report.compare(ex, [np.full((32, 32), 0.99) - 0.01 * (np.arange(32) % 2)], grayscale=True)
    assert bright["reconstructions"][0]["phases"]["volume_fractions"][0] == 0.0


def test_compare_grayscale_volume_of_a_2d_exemplar():
    ex = gray_blobs((32, 32), 4)
    volume = np.clip(0.8 - 0.5 * blobs((12, 12, 12), 5), 0, 1)
    entry = report.compare(ex, volume, grayscale=True, n_phases=2)["reconstructions"][0]
    assert len(entry["autocovariance_max_abs_error_per_axis"]) == 3 and entry["exemplar_crops"] is None
    assert -1 <= entry["copy_correlation"] <= 1 and np.asarray(entry["phases"]["largest_cluster_fraction_slices"]) \
        .shape == (3, 2)


def test_grayscale_errors():
    ex = gray_blobs((32, 32), 6)
    cases = [
        (dict(exemplar=ex + 1, reconstructions=[ex]), "outside 0..1"),
        (dict(exemplar=np.full((32, 32), 0.5), reconstructions=[ex]), "single intensity"),
        (dict(exemplar=ex, reconstructions=[np.full((32, 32), 0.5)]), "single intensity"),
        (dict(exemplar=np.stack([ex] * 4), reconstructions=[ex]), "3D"),
        (dict(exemplar=ex, reconstructions=[ex], max_distance=40), "max_distance"),
        (dict(exemplar=ex, reconstructions=[ex], n_phases=1), "from 2 to 16"),
        (dict(exemplar=(ex > 0.5) * 0.5 + 0.2, reconstructions=[ex], n_phases=3), "too few"),
        (dict(exemplar=ex, reconstructions=[ex], names=["a", "b"]), "names"),
        (dict(exemplar=ex.astype(np.int64), reconstructions=[ex]), "intensities"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            report.compare(grayscale=True, **kwargs)
    with pytest.raises(InputError, match="NaN"):
        report.describe(np.where(ex > 0.5, np.nan, ex), grayscale=True)


def test_grayscale_figures(tmp_path, monkeypatch):
    saved = []
    save = report._save_atomically
    monkeypatch.setattr(report, "_save_atomically", lambda figure, path: saved.append(figure) or save(figure, path))
    ex = gray_blobs((32, 32), 7)
    path = report.comparison_figure(ex, [gray_blobs((32, 32), 8), gray_blobs((24, 20), 9)], tmp_path / "g.png",
                                    grayscale=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = saved[-1].axes  # the phase layout: exemplar + 2 reconstructions, then 3 panels
    assert len(axes) == 6 and [ax.get_title().split(" (")[0] for ax in axes[3:]] == [
        "intensity histogram", "intensity autocovariance", "S2 of segmented phases"]
    assert axes[0].get_images()[0].get_cmap().name == "gray"
    report.comparison_figure(ex, [np.clip(0.8 - 0.5 * blobs((12, 12, 12), 10), 0, 1)], tmp_path / "v.png",
                             grayscale=True, n_phases=3)
    assert len(saved[-1].axes) == 9  # exemplar + 3 slices, autocovariance per axis, histogram and S2
    report.describe_figure(ex, tmp_path / "d.png", grayscale=True)
    assert len(saved[-1].axes) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "g.png", "v.png"]

"""Statistics in physical units: distances times the voxel size, surfaces divided by it; pixels unchanged."""

import numpy as np
import pytest

from jaxmicro import report, statistics as st, units
from jaxmicro.errors import InputError


@pytest.fixture(scope="module")
def labels():
    return np.random.default_rng(3).integers(0, 3, (24, 20)).astype(np.int32)


def test_pixel_results_unchanged_without_voxel_size(labels):
    np.testing.assert_array_equal(st.specific_surface(labels), st.specific_surface(labels, voxel_size=None))
    np.testing.assert_array_equal(st.two_point_profiles(labels).distance, np.arange(11))
    assert report.describe(labels) == report.describe(labels, voxel_size=None)


def test_cubic_voxels_scale_distances_and_surfaces(labels):
    side = 0.5
    pixel = report.describe(labels)
    physical = report.describe(labels, voxel_size=f"{side}um")
    np.testing.assert_allclose(physical["specific_surface"], np.asarray(pixel["specific_surface"]) / side, rtol=1e-6)
    np.testing.assert_allclose(physical["specific_surface_pairs"], np.asarray(pixel["specific_surface_pairs"]) / side,
                               rtol=1e-6)
    np.testing.assert_allclose(physical["specific_surface_total"], pixel["specific_surface_total"] / side, rtol=1e-6)
    np.testing.assert_allclose(physical["distance"], np.asarray(pixel["distance"]) * side)
    np.testing.assert_allclose(physical["chord_length_mean"], np.asarray(pixel["chord_length_mean"]) * side)
    for a in range(2):
        np.testing.assert_allclose(physical["chord_length"][a]["mean"], np.asarray(pixel["chord_length"][a]["mean"])
                                   * side)
        np.testing.assert_allclose(physical["chord_length"][a]["std"], np.asarray(pixel["chord_length"][a]["std"])
                                   * side)
    assert physical["voxel_size"] == [side, side] and physical["unit"] == "um"
    # what does not carry a length stays as it is
    for key in ("volume_fractions", "s2_per_axis", "lineal_path_per_axis", "largest_cluster_fraction"):
        assert physical[key] == pixel[key]
    profiles = st.two_point_profiles(labels, voxel_size=side)
    np.testing.assert_allclose(profiles.distance, np.arange(11) * side)
    np.testing.assert_array_equal(profiles.radial, st.two_point_profiles(labels).radial)
    counts = st.chord_length_distribution(labels)
    np.testing.assert_allclose(st.mean_chord_length(counts[0], voxel_size=side), st.mean_chord_length(counts[0]) * side)


def test_unequal_voxel_sides_exact_laminate():
    # layers normal to axis 0 with period 4 (2 + 2 rows): 2 faces per 4 rows along axis 0, none along axis 1
    laminate = np.repeat(np.array([0, 0, 1, 1] * 4)[:, None], 12, axis=1)
    pixel = np.asarray(st.specific_surface(laminate))
    np.testing.assert_allclose(pixel, [0.5, 0.5])  # 2 faces per 4 pixels, each phase
    physical = np.asarray(st.specific_surface(laminate, voxel_size=(2.0, 0.1)))
    np.testing.assert_allclose(physical, [0.25, 0.25])  # interface length per area: 1 per 2 units of height
    d = report.describe(laminate, voxel_size="2x0.1um")
    np.testing.assert_allclose(d["chord_length"][0]["mean"], [4.0, 4.0])  # 2 rows of 2 um
    np.testing.assert_allclose(d["distance_per_axis"][1][:3], [0.0, 0.1, 0.2])
    assert "distance" in d and d["distance"][:3] == [0, 1, 2]  # the radial distance stays in pixels
    with pytest.raises(InputError, match="radial S2 needs equal voxel sides"):
        st.two_point_profiles(laminate, voxel_size=(2.0, 0.1))


def test_volume_surface_per_axis():
    volume = np.zeros((8, 6, 4), np.int32)
    volume[:, :3] = 1  # interfaces normal to axis 1 only: 2 per 6 voxels along y
    np.testing.assert_allclose(st.specific_surface(volume), [2 / 6] * 2, rtol=1e-6)  # faces per voxel
    np.testing.assert_allclose(st.specific_surface(volume, voxel_size=(5.0, 0.5, 7.0)), [2 / 6 / 0.5] * 2, rtol=1e-6)


def test_compare_and_figures_in_physical_units(labels, tmp_path, monkeypatch):
    pixel = report.compare(labels, [labels[::-1]])
    physical = report.compare(labels, [labels[::-1]], voxel_size="0.25mm")
    ours, theirs = physical["reconstructions"][0], pixel["reconstructions"][0]
    np.testing.assert_allclose(ours["specific_surface"], np.asarray(theirs["specific_surface"]) / 0.25, rtol=1e-6)
    np.testing.assert_allclose(ours["chord_length_mean"], np.asarray(theirs["chord_length_mean"]) * 0.25)
    np.testing.assert_allclose(ours["specific_surface_relative_error"], theirs["specific_surface_relative_error"],
                               rtol=1e-5, atol=1e-7)
    assert physical["unit"] == "mm" and physical["exemplar"]["unit"] == "mm"
    labels_seen = []

    def record(figure, path):
        labels_seen.append([ax.get_xlabel() for ax in figure.axes if ax.get_xlabel()])
        return path

    monkeypatch.setattr(report, "_save_atomically", record)
    report.describe_figure(labels, tmp_path / "d.png", voxel_size="0.25mm")
    report.comparison_figure(labels, [labels], tmp_path / "c.png", voxel_size="0.25mm")
    report.describe_figure(labels, tmp_path / "p.png")
    assert labels_seen[0] == ["distance (mm)"] * 3 and labels_seen[1] == ["distance (mm)"] * 3
    assert labels_seen[2] == ["distance (pixels)"] * 3


def test_unit_names():
    assert units.normalise_unit("µm") == units.normalise_unit("micron") == "um"
    assert units.unit_label(None) == "pixels" and units.unit_label(units.VoxelSize((1.0,), "")) == "length units"
    assert units.per_axis("0.5um", 3) == units.VoxelSize((0.5, 0.5, 0.5), "um")

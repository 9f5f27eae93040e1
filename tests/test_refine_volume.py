"""Voxel swaps of a volume toward an exemplar's two-point profiles along each axis."""

import numpy as np
import pytest
from scipy import ndimage

from jaxmicro import reconstruction as R, report, statistics as st
from jaxmicro.cleanup import isolated
from jaxmicro.errors import InputError
from jaxmicro.refine import Refinement, nearest_counts
from jaxmicro.refine_volume import (
    CHORD_BAND,
    CHORD_TOLERANCE,
    LINEAL_PATH_SLACK,
    LINEAL_PATH_TOLERANCE,
    _fraction_trial,
    _gains,
    _Moves,
    _state,
    _undo_isolating,
    refine_volume,
    volume_targets,
)

from conftest import TINY_WIDTHS


def _phases(sigma, shape, seed, quantiles=(0.5, 0.8)):
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma, mode="wrap")
    return np.digitize(field, np.quantile(field, quantiles)).astype(np.uint8)


def test_targets_are_the_reports():
    """A 2D exemplar's in-plane mean on every axis, a volume's own profiles along each axis: the report's targets."""
    image, volume = _phases(2.0, (48, 40), 0), _phases(2.0, (16, 20, 24), 1)
    flat, own = volume_targets(image, 3, 8), volume_targets(volume, 3, 8)
    per_axis = np.asarray(st.two_point_profiles(image, max_distance=8, n_phases=3).per_axis)
    np.testing.assert_allclose(flat.correlation, np.repeat(per_axis.mean(0, keepdims=True), 3, axis=0), atol=1e-6)
    path = st.lineal_path(image, 3, max_distance=8)
    np.testing.assert_allclose(flat.lineal_path, np.repeat(path.mean(0, keepdims=True), 3, axis=0))
    np.testing.assert_allclose(own.correlation, st.two_point_profiles(volume, max_distance=8, n_phases=3).per_axis,
                               atol=1e-6)
    np.testing.assert_allclose(own.lineal_path, st.lineal_path(volume, 3, max_distance=8))
    np.testing.assert_allclose(own.one_voxel_share,
                               report.one_pixel_chord_fraction(st.chord_length_distribution(volume, 3)))
    state = _state(volume, own, 100.0)
    assert state.energy < 1e-10 and state.lineal_path_error < 1e-12  # a volume matches its own statistics
    np.testing.assert_allclose(state.one_voxel, own.one_voxel_share)


@pytest.mark.parametrize("chord_weight", [0.0, 100.0])
def test_gains_predict_single_flips(chord_weight):
    """The two-point gains are the exact first-order change of the energy: a single flip's exact change differs
    from the prediction only by the second-order term (at most 2 phases x 3 axes x (1 + 4R) / N^2). The chord
    term is first order in a share of a few hundred chords that moves by a few: the predictions rank the flips
    (correlation > 0.999) within a few per cent."""
    volume, radius = _phases(1.5, (16, 16, 16), 2), 8
    exemplar = _phases(1.0, (64, 64), 3, quantiles=(0.3, 0.7))
    targets = volume_targets(exemplar, 3, radius)
    state = _state(volume, targets, chord_weight)
    if chord_weight:  # the chord term is on for every phase
        assert np.all(np.abs(state.one_voxel - targets.one_voxel_share) > CHORD_BAND)
    gain = _gains(volume, state, targets, chord_weight)
    rng = np.random.default_rng(4)
    exact, predicted = [], []
    for _ in range(20):
        voxel = tuple(rng.integers(0, 16, 3))
        a = volume[voxel]
        b = (a + 1 + rng.integers(0, 2)) % 3
        trial = volume.copy()
        trial[voxel] = b
        exact.append(_state(trial, targets, chord_weight).energy - state.energy)
        predicted.append(2 / volume.size * (gain[b][voxel] - gain[a][voxel]))
    exact, predicted = np.array(exact), np.array(predicted)
    bound = 2 * 3 * (1 + 4 * radius) / volume.size**2
    if chord_weight:
        assert np.corrcoef(exact, predicted)[0, 1] > 0.999
        assert np.median(np.abs(exact - predicted) / np.abs(exact)) < 0.03
    else:
        assert np.all(np.abs(exact - predicted) <= bound)
        assert np.median(np.abs(exact)) > 20 * bound  # the first-order part is what moves


def test_swaps_lower_the_s2_error_and_hold_the_rest():
    exemplar = _phases(2.0, (96, 96), 5)
    volume = _phases(1.6, (24, 24, 24), 6)
    targets = volume_targets(exemplar, 3, 12)
    result = refine_volume(volume, targets)
    assert result.kept_rounds > 0 and result.energy_after < result.energy_before
    np.testing.assert_allclose(np.bincount(result.labels.ravel(), minlength=3),  # the exemplar's fractions already
                               np.bincount(volume.ravel(), minlength=3), atol=1)
    assert isolated(result.labels).sum() <= isolated(volume).sum()
    before, after = report.compare(exemplar, [volume, result.labels])["reconstructions"]
    assert after["s2_max_abs_error"] < before["s2_max_abs_error"]
    target_share = np.asarray(targets.one_voxel_share)
    start = np.abs(np.asarray(before["one_pixel_chord_fraction"]) - target_share)
    assert np.all(np.abs(np.asarray(after["one_pixel_chord_fraction"]) - target_share)
                  <= np.maximum(start, CHORD_TOLERANCE) + 1e-12)
    assert after["lineal_path_max_abs_error"] <= max(before["lineal_path_max_abs_error"] + LINEAL_PATH_SLACK,
                                                     LINEAL_PATH_TOLERANCE) + 1e-12
    np.testing.assert_allclose(st.largest_cluster_fraction(result.labels, 3),
                               st.largest_cluster_fraction(volume, 3), atol=0.02)
    again = refine_volume(volume, targets)
    np.testing.assert_array_equal(again.labels, result.labels)  # deterministic


def test_the_phase_counts_move_to_the_exemplars_fractions_first():
    exemplar = _phases(2.0, (96, 96), 5)
    volume = _phases(2.0, (20, 20, 20), 6, quantiles=(0.506, 0.8))  # fractions 0.506 / 0.294 / 0.2: 48 voxels off
    targets = volume_targets(exemplar, 3, 10)
    result = refine_volume(volume, targets, rounds=0)  # the fraction flips alone
    wanted = np.bincount(exemplar.ravel(), minlength=3) / exemplar.size * volume.size
    assert np.abs(np.bincount(volume.ravel(), minlength=3) - wanted).max() > 40
    np.testing.assert_allclose(np.bincount(result.labels.ravel(), minlength=3), wanted, atol=1)
    assert result.energy_after < result.energy_before and isolated(result.labels).sum() <= isolated(volume).sum()
    np.testing.assert_array_equal(refine_volume(volume, targets, rounds=0, match_fractions=False).labels, volume)


def test_every_phase_with_too_many_voxels_gives_its_share():
    exemplar = _phases(2.0, (96, 96), 5)
    volume = _phases(2.0, (20, 20, 20), 6, quantiles=(0.504, 0.81))  # 32 and 49 voxels too many, 81 too few
    targets = volume_targets(exemplar, 3, 10)
    wanted = nearest_counts(targets.correlation[0, 0], volume.size)
    gain = _gains(volume, _state(volume, targets, 100.0), targets, 100.0)
    trial = _fraction_trial(_Moves.of(volume, 3, np.ones(volume.shape, bool)), gain, wanted, 40)
    change = np.bincount(trial.ravel(), minlength=3) - np.bincount(volume.ravel(), minlength=3)
    assert change[0] < 0 and change[1] < 0 and -change[0] < -change[1] and 0 < change[2] <= 41


def test_flips_that_together_isolate_a_voxel_are_undone():
    """Two flips next to a voxel, each harmless alone, together surround it with one phase: both are undone,
    a flip elsewhere stays."""
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[4, 4, 4] = 1
    for offset in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)):
        labels[4 + offset[0], 4 + offset[1], 4 + offset[2]] = 2
    labels[1, 1, 2] = 2  # and an isolated voxel that a flip joins
    trial = labels.copy()
    trial[4, 4, 3] = trial[4, 4, 5] = trial[1, 1, 1] = 2
    assert not isolated(labels)[4, 4, 4] and isolated(trial)[4, 4, 4]
    kept = _undo_isolating(trial, labels)
    expected = labels.copy()
    expected[1, 1, 1] = 2
    np.testing.assert_array_equal(kept, expected)


def test_rejects_images_and_foreign_phases():
    targets = volume_targets(_phases(2.0, (32, 32), 0), 3, 4)
    with pytest.raises(InputError, match="3D volume"):
        refine_volume(_phases(2.0, (16, 16), 1), targets)
    with pytest.raises(InputError, match="0..2"):
        refine_volume(np.full((8, 8, 8), 3, np.uint8), targets)


def test_a_volume_reconstruction_ends_with_the_swaps(tiny_params, monkeypatch):
    exemplar = _phases(2.0, (64, 64), 8)
    run = dict(shape=(16, 16, 16), count=2, steps=6, levels=1, seed=0, layers="relu1_2", widths=TINY_WIDTHS,
               params=tiny_params)
    swapped = R.reconstruct(exemplar, **run)
    monkeypatch.setattr(R, "refine_volume", lambda labels, targets: Refinement(labels, 0.0, 0.0, 0, 0, 0.0))
    unswapped = R.reconstruct(exemplar, **run)
    errors = report.compare(exemplar, [*unswapped.labels, *swapped.labels])["reconstructions"]
    for before, after, b, a in zip(errors[:2], errors[2:], unswapped.labels, swapped.labels):
        assert np.any(b != a) and after["s2_max_abs_error"] < before["s2_max_abs_error"]
        assert after["volume_fraction_error"] <= max(before["volume_fraction_error"], 1 / a.size)

"""The label swaps that end a 2D reconstruction (jaxmicro.refine): targets against the statistics module, each
predicted flip gain against the energy recomputed from scratch, and what a refinement keeps."""

import numpy as np
import pytest
from scipy import ndimage

from jaxmicro import reconstruction as R, refine, report, statistics as st
from jaxmicro.cleanup import isolated
from jaxmicro.descriptors import correlation_window
from jaxmicro.errors import InputError
from jaxmicro.report import one_pixel_chord_fraction

from conftest import TINY_WIDTHS


def blobs(size, n, seed=0, smooth=2.0):
    """A smooth random n-phase structure: periodically smoothed noise cut at n - 1 quantiles."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)
    kernel = np.exp(-0.5 * (2 * np.pi * smooth) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * kernel).real
    return np.digitize(field, np.quantile(field, np.arange(1, n) / n)).astype(np.uint8)


def test_label_targets_are_the_statistics_of_the_exemplar():
    image = blobs(32, 3, seed=1)
    targets = refine.label_targets(image, 3, 8)
    indicators = np.stack([(image == k) for k in range(3)], axis=-1).astype(np.float32)
    np.testing.assert_allclose(targets.correlation, correlation_window(st.two_point_correlation(indicators), 8),
                               atol=1e-6)
    np.testing.assert_allclose(targets.faces, st.specific_surface(image, 3), rtol=1e-6)
    np.testing.assert_allclose(targets.one_pixel_share,
                               one_pixel_chord_fraction(st.chord_length_distribution(image, 3)))
    np.testing.assert_allclose(targets.lineal_path, st.lineal_path(image, 3, max_distance=8))
    assert np.all(np.isnan(targets.largest_cluster))  # no sample size: no cluster target
    np.testing.assert_allclose(refine.label_targets(image, 3, 8, (16, 16)).largest_cluster,
                               st.largest_cluster_fraction_tiles(image, (16, 16), 3))
    assert np.all(np.isnan(refine.label_targets(image, 3, 8, (64, 16)).largest_cluster))  # no piece that large
    diagonal = np.zeros(3)  # pixels of the phase whose diagonal neighbour lies in another, counted by hand
    for dy, dx in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        other = np.roll(image, (dy, dx), (0, 1)) != image
        diagonal += np.bincount(image[other], minlength=3)
    np.testing.assert_allclose(targets.diagonal_faces, diagonal / image.size)


def test_run_lengths_against_walking_the_periodic_lines():
    rng = np.random.default_rng(4)
    labels = (rng.random((9, 7)) < 0.4).astype(np.uint8)
    labels[3] = 1  # a line without a change along axis 1
    for axis in (0, 1):
        back, ahead = refine._run_lengths(labels, axis)
        lines = np.moveaxis(labels, axis, -1)
        for index in np.ndindex(lines.shape):
            *line, position = index
            row, size = lines[tuple(line)], lines.shape[-1]
            steps_back = next((s for s in range(1, size + 1) if row[(position - s) % size] != row[position]), size + 1)
            steps_ahead = next((s for s in range(1, size + 1) if row[(position + s) % size] != row[position]), size + 1)
            expected = (min(steps_back, size), min(steps_ahead, size))
            got = (np.moveaxis(back, axis, -1)[index], np.moveaxis(ahead, axis, -1)[index])
            assert got == expected, (axis, index)


@pytest.mark.parametrize("n, axis_weight", [(2, 0.0), (3, 0.0), (2, 5.0), (3, 5.0)])
def test_every_predicted_flip_gain_is_the_exact_change_of_the_energy(n, axis_weight):
    labels = blobs(16, n, seed=2, smooth=1.0)
    labels[5] = labels[5, 0]  # a line all in one phase (its own case for chords and the lineal path)
    labels[9, :] = 1 - (labels[9] > 0) if n == 2 else labels[9]
    targets = refine.label_targets(blobs(32, n, seed=3, smooth=1.5), n, 8)  # the full window of a 16x16 sample
    problem = refine._problem(targets, labels.shape, (100.0, 300.0, 30.0, 1.0), refine.CLUSTER_BAND, axis_weight)
    energy = refine._energy(labels, problem)
    pixels, gains = refine._flip_gains(labels, energy, problem, np.ones(labels.shape, bool))
    checked = 0
    for (a, b), gain in gains.items():
        for pixel, predicted in zip(pixels, gain):
            if not np.isfinite(predicted):
                continue
            flipped = labels.copy()
            flipped.flat[pixel] = b
            np.testing.assert_allclose(predicted, refine._energy(flipped, problem).total - energy.total,
                                       rtol=1e-7, atol=1e-10, err_msg=f"{a}->{b} at {divmod(pixel, 16)}")
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("n", [2, 3])
def test_the_cluster_term_foresees_exactly_the_flips_that_join_clusters(n):
    labels = blobs(16, n, seed=4, smooth=0.7)
    far = np.where(np.arange(n) % 2 == 0, 1.0, 0.0)  # every change of a largest cluster counts
    targets = refine.label_targets(blobs(48, n, seed=5, smooth=1.5), n, 8)._replace(largest_cluster=far)
    problem = refine._problem(targets, labels.shape, (30.0, 100.0, 10.0, 10.0), 0.01, 0.0)
    energy = refine._energy(labels, problem)
    pixels = np.flatnonzero(np.ones(labels.size, bool))
    predicted = refine._cluster_gains(labels, energy, problem, pixels)
    largest = lambda image, k: np.bincount(ndimage.label(image == k)[0].ravel())[1:].max()  # noqa: E731
    joins = 0
    for b in range(n):
        now = refine._cluster_term(energy.clusters[b], problem, b)
        clusters = ndimage.label(labels == b)[0]
        for pixel in pixels:
            if labels.flat[pixel] == b:
                continue
            row, col = divmod(int(pixel), 16)
            touching = {clusters[r, c] for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1))
                        if 0 <= r < 16 and 0 <= c < 16 and labels[r, c] == b}
            flipped = labels.copy()
            flipped.flat[pixel] = b
            expected = 0.0
            if len(touching) >= 2:  # a join: the new largest cluster, at the phase's pixel count as it was
                expected = refine._cluster_term(largest(flipped, b) / np.sum(labels == b), problem, b) - now
                joins += largest(flipped, b) > largest(labels, b) + 1
            np.testing.assert_allclose(predicted[b, pixel], expected, rtol=1e-12, atol=1e-15)
    assert joins > 0


def test_the_cluster_term_joins_a_phase_that_is_too_broken_up():
    exemplar = blobs(64, 2, seed=9, smooth=2.0)
    start = blobs(32, 2, seed=15, smooth=0.8)
    targets = refine.label_targets(exemplar, 2, 8)._replace(largest_cluster=np.array([0.95, np.nan]))
    before = st.largest_cluster_fraction(start, 2)[0]
    result = refine.refine(start, targets, rounds=60)
    after = st.largest_cluster_fraction(result.labels, 2)[0]
    assert before < 0.5 and after > 0.95 - 0.1
    alone = refine.refine(start, targets._replace(largest_cluster=np.full(2, np.nan)), rounds=60)
    assert abs(st.largest_cluster_fraction(alone.labels, 2)[0] - before) <= refine.CLUSTER_TOLERANCE


def test_a_vertex_cut_is_the_fewest_pixels_that_separate_the_two_ends():
    nx = pytest.importorskip("networkx")
    for seed in range(4):
        phase = blobs(32, 2, seed=20 + seed, smooth=1.5) == 1
        ids = ndimage.label(phase)[0]
        cluster = [tuple(p) for p in np.argwhere(ids == np.argmax(np.bincount(ids.ravel())[1:]) + 1)]
        index = {p: i for i, p in enumerate(cluster)}
        pairs = np.array([(index[p], index[q]) for p in cluster for q in
                          ((p[0] + 1, p[1]), (p[0], p[1] + 1), (p[0] + 1, p[1] + 1), (p[0] + 1, p[1] - 1))
                          if q in index])  # pixels touching at a face or a corner
        source, sink = np.zeros(len(cluster), bool), np.zeros(len(cluster), bool)
        source[: len(cluster) // 10], sink[-len(cluster) // 10:] = True, True  # the top rows, the bottom rows
        cut = refine._vertex_cut(pairs, source, sink, most=len(cluster))
        graph = nx.Graph()
        ends = np.where(source, -1, np.where(sink, -2, np.arange(len(cluster))))  # each end as one node
        graph.add_edges_from((ends[a], ends[b]) for a, b in pairs if ends[a] != ends[b])
        assert len(cut) == len(nx.minimum_node_cut(graph, -1, -2))
        graph.remove_nodes_from(cut.tolist())
        assert not nx.has_path(graph, -1, -2) and not (source | sink)[cut].any()
        if len(cut) > 1:
            assert refine._vertex_cut(pairs, source, sink, most=len(cut) - 1) is None


def test_a_cut_splits_a_phase_that_is_too_connected():
    start = np.zeros((32, 32), np.uint8)
    start[6:16, 2:12] = start[6:16, 18:28] = start[10:12, 12:18] = 1  # two squares joined by a neck 2 pixels wide
    start[22:28, 6:24] = 1
    targets = refine.label_targets(start, 2, 8)._replace(largest_cluster=np.array([np.nan, 0.33]))
    result = refine.refine(start, targets)
    assert st.largest_cluster_fraction(result.labels, 2)[1] <= 0.33 + refine.CLUSTER_BAND
    np.testing.assert_array_equal(np.bincount(result.labels.ravel()), np.bincount(start.ravel()))
    assert isolated(result.labels).sum() == 0
    uncut = refine.refine(start, targets, cuts=False)
    assert st.largest_cluster_fraction(uncut.labels, 2)[1] > 0.6  # the swaps alone never cut


def test_refinement_lowers_the_energy_and_keeps_fractions_isolated_pixels_and_clusters():
    exemplar = blobs(64, 3, seed=5, smooth=2.0)
    start = blobs(32, 3, seed=6, smooth=1.2)  # finer than the exemplar: too much boundary
    targets = refine.label_targets(exemplar, 3, 16)
    result = refine.refine(start, targets, rounds=60)
    assert result.energy_after < 0.5 * result.energy_before and result.kept_rounds > 10
    np.testing.assert_array_equal(np.bincount(result.labels.ravel(), minlength=3),
                                  np.bincount(start.ravel(), minlength=3))
    assert isolated(result.labels).sum() <= isolated(start).sum()
    np.testing.assert_allclose(st.largest_cluster_fraction(result.labels, 3), st.largest_cluster_fraction(start, 3),
                               atol=refine.CLUSTER_TOLERANCE)
    problem = refine._problem(targets, start.shape, (refine.SURFACE_WEIGHT, refine.CHORD_WEIGHT,
                                                     refine.LINEAL_PATH_WEIGHT, refine.CLUSTER_WEIGHT),
                              refine.CLUSTER_BAND, refine.AXIS_WEIGHT)
    assert refine._energy(result.labels, problem).total == pytest.approx(result.energy_after)
    surface = lambda labels: np.abs(st.specific_surface(labels, 3) / targets.faces - 1).max()  # noqa: E731
    assert surface(result.labels) < 0.8 * surface(start)
    np.testing.assert_array_equal(refine.refine(start, targets, rounds=60).labels, result.labels)  # deterministic
    held = refine.refine(start, targets, rounds=60, accept=lambda labels: np.sum(labels[:8] != start[:8]) == 0)
    assert np.array_equal(held.labels[:8], start[:8]) and held.kept_rounds > 0  # a further condition on every round
    assert result.changed_fraction == pytest.approx(np.mean(result.labels != start))


def test_the_phase_counts_move_to_the_exemplars_fractions_first():
    exemplar = blobs(64, 3, seed=5, smooth=2.0)
    start = blobs(32, 3, seed=6, smooth=2.0)
    start[(start == 2) & (np.roll(start, 1, axis=0) == 1)] = 1  # phase 2 thinned: the fractions are off
    targets = refine.label_targets(exemplar, 3, 16, start.shape)
    wanted = np.bincount(exemplar.ravel(), minlength=3) / exemplar.size * start.size
    assert np.abs(np.bincount(start.ravel(), minlength=3) - wanted).max() > 20
    result = refine.refine(start, targets, rounds=0)  # the fraction flips alone
    np.testing.assert_allclose(np.bincount(result.labels.ravel(), minlength=3), wanted, atol=1)
    assert result.energy_after < result.energy_before
    assert isolated(result.labels).sum() <= isolated(start).sum()
    np.testing.assert_array_equal(refine.refine(start, targets, rounds=0, match_fractions=False).labels, start)


def test_the_axis_error_is_the_reports_s2_error():
    exemplar, sample = blobs(64, 3, seed=5), blobs(32, 3, seed=6)
    for radius in (8, 16):
        reported = report.compare(exemplar, [sample], max_distance=radius)["reconstructions"][0]["s2_max_abs_error"]
        assert refine.axis_error(sample, refine.label_targets(exemplar, 3, radius)) == pytest.approx(reported, abs=1e-7)


def test_an_exemplar_is_left_as_it_is():
    exemplar = blobs(32, 2, seed=7)
    result = refine.refine(exemplar, refine.label_targets(exemplar, 2, 16))
    assert result.energy_before == pytest.approx(0.0, abs=1e-20)
    np.testing.assert_array_equal(result.labels, exemplar)


def test_labels_that_do_not_fit_the_targets_are_refused():
    targets = refine.label_targets(blobs(32, 2), 2, 8)
    for bad in (np.zeros((4, 4, 4), np.uint8), np.full((16, 16), 2, np.uint8), np.zeros((16, 16), np.float32)):
        with pytest.raises(InputError, match="integer phase labels 0..1"):
            refine.refine(bad, targets)


def test_a_reconstruction_ends_with_the_swaps(tiny_params, monkeypatch):
    exemplar = blobs(64, 2, seed=8, smooth=2.0)
    run = dict(shape=(32, 32), count=2, steps=8, levels=1, seed=0, layers="relu1_2", widths=TINY_WIDTHS,
               params=tiny_params)
    swapped = R.reconstruct(exemplar, **run)
    monkeypatch.setattr(refine, "refine", lambda labels, targets: refine.Refinement(labels, 0.0, 0.0, 0, 0, 0.0))
    unswapped = R.reconstruct(exemplar, **run)
    problem = refine._problem(refine.label_targets(exemplar, 2, 16, (32, 32)), (32, 32),
                              (refine.SURFACE_WEIGHT, refine.CHORD_WEIGHT, refine.LINEAL_PATH_WEIGHT,
                               refine.CLUSTER_WEIGHT), refine.CLUSTER_BAND, refine.AXIS_WEIGHT)
    wanted = np.mean(exemplar == 1) * 32 * 32
    for before, after in zip(unswapped.labels, swapped.labels):
        assert np.any(before != after) and abs(np.sum(after == 1) - wanted) <= max(abs(np.sum(before == 1) - wanted), 1)
        assert refine._energy(after, problem).total < refine._energy(before, problem).total

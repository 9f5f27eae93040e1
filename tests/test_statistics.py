"""Tests of jaxmicro.statistics: exact cases, porespy cross-checks, gradients, jit/vmap."""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxmicro import statistics as st
from jaxmicro.errors import InputError

DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()
NO_PORESPY = ("porespy is not installed: the porespy cross-checks need the crosscheck extra "
              "(pip install -e '.[test,crosscheck]', as CI does)")


def load_shared(name: str) -> np.ndarray:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"shared reference image {path} is absent (the CI clone has ../shared beside the repo)")
    return np.load(path)


def laminate(shape, period, fraction_pixels, axis=0):
    """Layers normal to ``axis``: phase 1 on the first ``fraction_pixels`` of every ``period``."""
    index = np.arange(shape[axis]) % period < fraction_pixels
    shape_b = [1] * len(shape)
    shape_b[axis] = shape[axis]
    return np.broadcast_to(index.reshape(shape_b), shape).astype(np.int32)


# ------------------------------------------------------------------ exact cases


def test_laminate_profiles_exact():
    labels = laminate((32, 24), period=8, fraction_pixels=3, axis=0)
    profiles = st.two_point_profiles(labels, max_distance=12)
    # across the layers (axis 0): S2_1(r) = overlap of a 3-wide stripe with itself shifted by r, period 8
    expected = np.array([max(3 - min(r % 8, 8 - r % 8), 0) / 8 for r in range(13)])
    np.testing.assert_allclose(profiles.per_axis[0, :, 1], expected, atol=1e-6)
    # along the layers (axis 1): constant volume fraction
    np.testing.assert_allclose(profiles.per_axis[1, :, 1], 3 / 8, atol=1e-6)
    np.testing.assert_allclose(profiles.per_axis[1, :, 0], 5 / 8, atol=1e-6)
    # lineal path: along the layers whole lines -> L = f; across, a 3-wide stripe holds 3 - r segments
    path = st.lineal_path(labels, 2, max_distance=12)
    np.testing.assert_allclose(path[1, :, 1], 3 / 8)
    np.testing.assert_allclose(path[0, :, 1], [max(3 - r, 0) / 8 for r in range(13)])
    np.testing.assert_allclose(path[0, :, 0], [max(5 - r, 0) / 8 for r in range(13)])
    chords = st.chord_length_distribution(labels, 2)
    assert chords[0, 1, 3] == 24 * 4 and chords[0, 0, 5] == 24 * 4 and chords[0].sum() == 24 * 8
    # along the layers every line is one whole-line chord of length 24
    assert chords[1, 1, 24] == 12 and chords[1, 0, 24] == 20 and chords[1].sum() == 32
    # faces: 2 interfaces per period, 24 faces each, per 32*24 pixels
    np.testing.assert_allclose(st.specific_surface(labels), [8 * 24 / (32 * 24)] * 2)


def test_checkerboard_exact():
    labels = (np.indices((8, 10)).sum(0) % 2).astype(np.int32)
    s2 = st.two_point_correlation(st.phase_indicators(labels, 2))
    for r0 in range(8):
        for r1 in range(10):
            np.testing.assert_allclose(s2[r0, r1, 0], 0.5 if (r0 + r1) % 2 == 0 else 0.0, atol=1e-6)
    np.testing.assert_allclose(st.lineal_path(labels, 2)[:, :, 0], [[0.5, 0, 0, 0, 0]] * 2)
    np.testing.assert_allclose(st.specific_surface(labels), [2.0, 2.0])  # every face is a boundary
    assert st.chord_length_distribution(labels, 2, normalize=True)[:, :, 1].min() == 1.0


def test_single_disk_fraction_and_perimeter():
    radius = 20
    y, x = np.indices((128, 128)) - 64
    labels = (x**2 + y**2 <= radius**2).astype(np.int32)
    fractions = st.volume_fractions(st.phase_indicators(labels, 2))
    np.testing.assert_allclose(fractions[1], labels.sum() / labels.size, rtol=1e-6)
    surface = np.asarray(st.specific_surface(labels)) * labels.size
    # a digitised disk is convex along rows and columns: 2 faces per row and per column it spans
    assert surface[0] == surface[1] == 4 * (2 * radius + 1)
    # Cauchy-Crofton: pi/4 of the grid faces approximates the Euclidean perimeter
    np.testing.assert_allclose(surface[1] * np.pi / 4, 2 * np.pi * radius, rtol=0.05)


@pytest.mark.parametrize("shape,n", [((12, 15), 2), ((12, 15), 3), ((6, 8, 7), 2), ((6, 8, 7), 3)])
def test_identities(shape, n):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, n, shape)
    indicators = st.phase_indicators(labels, n)
    fractions = st.volume_fractions(indicators)
    cross = st.two_point_correlation(indicators, cross=True)
    auto = st.two_point_correlation(indicators)
    origin = (0,) * len(shape)
    np.testing.assert_allclose(auto[origin], fractions, atol=1e-6)  # S2(0) = f
    np.testing.assert_allclose(cross.sum(-1), np.broadcast_to(fractions, auto.shape), atol=1e-6)
    np.testing.assert_allclose(np.einsum("...ii->...i", cross), auto, atol=1e-6)
    # S2_ij(r) = S2_ji(-r)
    mirrored = np.roll(np.flip(np.asarray(cross), axis=tuple(range(len(shape)))), 1, axis=tuple(range(len(shape))))
    np.testing.assert_allclose(np.swapaxes(mirrored, -1, -2), cross, atol=1e-6)
    # brute force at one shift
    shift = (2, 3, 1)[: len(shape)]
    brute = np.mean(np.roll(labels == 1, [-s for s in shift], tuple(range(len(shape)))) & (labels == 0))
    np.testing.assert_allclose(cross[shift][1, 0], brute, atol=1e-6)
    # lineal path at 0 and 1 matches f and S2 along each axis; faces match S2 at unit shifts
    path = st.lineal_path(labels, n)
    faces = np.asarray(st.specific_surface(labels, n, pairwise=True))
    expected_faces = np.zeros((n, n))
    for axis in range(len(shape)):
        unit = [0] * len(shape)
        unit[axis] = 1
        np.testing.assert_allclose(path[axis, 0], fractions, atol=1e-6)
        np.testing.assert_allclose(path[axis, 1], auto[tuple(unit)], atol=1e-6)
        expected_faces += np.asarray(cross[tuple(unit)]) + np.asarray(cross[tuple(unit)]).T
    np.testing.assert_allclose(faces, expected_faces * (1 - np.eye(n)), atol=1e-6)
    # chord lengths cover every pixel once per axis
    chords = st.chord_length_distribution(labels, n)
    lengths = np.arange(chords.shape[-1])
    pixels_per_phase = np.bincount(labels.ravel(), minlength=n)
    np.testing.assert_array_equal((chords * lengths).sum(-1), pixels_per_phase[None].repeat(len(shape), 0))


def test_periodic_wraparound_chord():
    line = np.array([[1, 1, 0, 0, 0, 1, 1, 1]])
    chords = st.chord_length_distribution(line, 2)
    assert chords[1, 1, 5] == 1 and chords[1, 1].sum() == 1  # 3 + 2 joined across the edge
    assert chords[1, 0, 3] == 1
    np.testing.assert_allclose(st.lineal_path(line, 2, max_distance=0)[1, 0], [3 / 8, 5 / 8])
    path = st.lineal_path(np.tile(line, (8, 1)), 2, max_distance=4)
    np.testing.assert_allclose(path[1, :, 1], [5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


def test_bad_inputs():
    with pytest.raises(InputError):
        st.two_point_profiles(np.zeros((8, 8), np.int32), max_distance=5)
    with pytest.raises(InputError):
        st.lineal_path(np.full((4, 4), 0.5))
    with pytest.raises(InputError):
        st.lineal_path(np.array([[0, 3]]), 2)
    with pytest.raises(InputError):
        st.copy_agreement(np.zeros((4, 4), int), np.zeros((4, 4, 4), int))


# ------------------------------------------------------------------ largest-cluster fraction


def test_largest_cluster_fraction_tiles_exact():
    labels = np.zeros((8, 12), np.int32)
    labels[:, 2] = 1  # a line in the left tile only
    labels[1, 7] = labels[3, 7] = 1  # two separate pixels in the middle tile
    # 8x4 tiles: phase 1 holds 1 cluster (left), 2 pieces (middle), nothing (right); the line cuts phase 0
    # of the left tile into 16 + 8 pixels
    np.testing.assert_allclose(st.largest_cluster_fraction_tiles(labels, (8, 4), 2),
                               [(16 / 24 + 1.0 + 1.0) / 3, (1.0 + 0.5) / 2])
    np.testing.assert_allclose(st.largest_cluster_fraction_tiles(labels, (8, 4), 2, spread=True)[1:],
                               [[16 / 24, 0.5], [1.0, 1.0]])  # smallest and largest over the tiles
    np.testing.assert_array_equal(st.largest_cluster_fraction_tiles(labels, (99, 99), 2),
                                  st.largest_cluster_fraction(labels, 2))  # clipped: the whole image
    assert np.isnan(st.largest_cluster_fraction_tiles(np.zeros((4, 4), np.int32), (2, 2), 2)[1])
    with pytest.raises(InputError, match="tile shape"):
        st.largest_cluster_fraction_tiles(labels, (4,), 2)


def test_largest_cluster_fraction_exact_2d():
    labels = np.zeros((10, 12), np.int32)
    labels[1:4, 1:4] = 1  # 9 pixels
    labels[6:8, 7:9] = 1  # 4 pixels, separate
    np.testing.assert_array_equal(st.largest_cluster_fraction(labels), [1.0, 9 / 13])
    labels[4, 4] = 1  # touches the 3x3 blob only at a corner: still separate (face connectivity)
    np.testing.assert_array_equal(st.largest_cluster_fraction(labels), [1.0, 9 / 14])
    labels[3, 4] = 1  # a face neighbour joins it: 11 of 15
    np.testing.assert_array_equal(st.largest_cluster_fraction(labels), [1.0, 11 / 15])
    checkerboard = (np.indices((8, 10)).sum(0) % 2).astype(np.int32)  # every square isolated: 40 per phase
    np.testing.assert_array_equal(st.largest_cluster_fraction(checkerboard, 2), [1 / 40, 1 / 40])
    # not periodic: runs of 2 and 3 at the two ends of a line are not joined across the edge
    np.testing.assert_array_equal(st.largest_cluster_fraction(np.array([[1, 1, 0, 0, 0, 1, 1, 1]])), [1.0, 3 / 5])
    # an absent phase gives NaN, and the result is float64
    out = st.largest_cluster_fraction(np.zeros((4, 4), np.int32), 3)
    assert out.dtype == np.float64 and out[0] == 1.0 and np.isnan(out[1:]).all()
    with pytest.raises(InputError):
        st.largest_cluster_fraction(labels, 1)


def test_largest_cluster_fraction_exact_3d():
    slab = laminate((6, 8, 10), period=6, fraction_pixels=2, axis=0)  # phase 1 on planes 0-1, phase 0 on 2-5
    np.testing.assert_array_equal(st.largest_cluster_fraction(slab), [1.0, 1.0])  # two percolating slabs
    layers = laminate((12, 5, 7), period=4, fraction_pixels=1, axis=2)  # along axis 2: 1 0 0 0 1 0 0
    np.testing.assert_array_equal(st.largest_cluster_fraction(layers), [3 / 5, 1 / 2])
    volume = np.zeros((4, 4, 4), np.int32)
    volume[0, 0, 0] = volume[1, 1, 0] = volume[2, 2, 1] = 1  # edge, then corner contact only: 3 clusters
    np.testing.assert_array_equal(st.largest_cluster_fraction(volume), [1.0, 1 / 3])
    volume[1, 0, 0] = 1  # face-joins the first two
    np.testing.assert_array_equal(st.largest_cluster_fraction(volume), [1.0, 3 / 4])


def test_largest_cluster_fraction_slices_exact():
    volume = np.zeros((6, 8, 10), np.int32)
    volume[1:3] = 1  # one slab of phase 1; phase 0 in a 1-plane and a 3-plane slab
    np.testing.assert_array_equal(st.largest_cluster_fraction(volume), [3 / 4, 1.0])
    slices = st.largest_cluster_fraction_slices(volume)
    assert slices.shape == (3, 2) and slices.dtype == np.float64
    # normal to axis 0 every slice is one phase (the mean is over the slices holding it); across, stripes
    np.testing.assert_array_equal(slices, [[1.0, 1.0], [3 / 4, 1.0], [3 / 4, 1.0]])
    rng = np.random.default_rng(7)
    volume = rng.choice(3, size=(7, 9, 11), p=[0.6, 0.3, 0.1])
    slices = st.largest_cluster_fraction_slices(volume, 3)
    for axis in range(3):
        per_slice = [st.largest_cluster_fraction(np.take(volume, k, axis), 3) for k in range(volume.shape[axis])]
        np.testing.assert_allclose(slices[axis], np.nanmean(per_slice, axis=0), rtol=1e-12)
    with pytest.raises(InputError):
        st.largest_cluster_fraction_slices(np.zeros((8, 8), np.int32))


def _flood_fill_largest_fraction(labels: np.ndarray, n_phases: int) -> list[float]:
    """Reference: breadth-first flood fill over face neighbours in pure Python (no scipy, no porespy)."""
    seen = np.zeros(labels.shape, bool)
    largest, total = [0] * n_phases, [0] * n_phases
    steps = [tuple(int(a == b) * s for b in range(labels.ndim)) for a in range(labels.ndim) for s in (1, -1)]
    for start in np.ndindex(labels.shape):
        if seen[start]:
            continue
        phase, size, queue = labels[start], 0, [start]
        seen[start] = True
        while queue:
            point = queue.pop()
            size += 1
            for step in steps:
                q = tuple(p + d for p, d in zip(point, step))
                if all(0 <= c < n for c, n in zip(q, labels.shape)) and not seen[q] and labels[q] == phase:
                    seen[q] = True
                    queue.append(q)
        largest[phase] = max(largest[phase], size)
        total[phase] += size
    return [biggest / whole for biggest, whole in zip(largest, total)]


@pytest.mark.parametrize("shape,p", [((40, 36), [0.55, 0.3, 0.15]), ((12, 10, 14), [0.35, 0.4, 0.25])])
def test_largest_cluster_fraction_against_flood_fill_and_porespy(shape, p):
    rng = np.random.default_rng(8)
    labels = rng.choice(3, size=shape, p=p)  # near the percolation threshold: many clusters of many sizes
    ours = st.largest_cluster_fraction(labels, 3)
    assert (ours < 1.0).all()  # every phase in several clusters
    np.testing.assert_allclose(ours, _flood_fill_largest_fraction(labels, 3), rtol=1e-12)
    porespy = pytest.importorskip("porespy", reason=NO_PORESPY)
    for phase in range(3):
        mask = labels == phase
        sizes = porespy.filters.region_size(mask, conn="min")  # connected-components-3d, face connectivity
        assert ours[phase] == pytest.approx(sizes[mask].max() / mask.sum(), rel=1e-12)


# ------------------------------------------------------------------ porespy cross-checks


def _porespy_bins(s2_map, bins):
    """porespy's radial binning ([b_i, b_i+1) on the distance to the zero lag), applied to our periodic map."""
    centred = np.fft.fftshift(s2_map)
    centre = np.array(centred.shape) // 2
    distance = np.sqrt(sum((np.indices(centred.shape)[a] - centre[a]) ** 2 for a in range(centred.ndim)))
    return np.array([centred[(distance >= lo) & (distance < hi)].mean() for lo, hi in zip(bins[:-1], bins[1:])])


@pytest.mark.parametrize("name", ["li2018_ceramics_2d_256.npy", "nmc_cathode_3phase_2d_253.npy"])
def test_against_porespy(name):
    porespy = pytest.importorskip("porespy", reason=NO_PORESPY)
    labels = load_shared(name)
    n = int(labels.max()) + 1
    phase = 1
    mask = labels == phase
    # S2: porespy uses the non-periodic, overlap-normalised estimator binned radially. On a 3x3 periodic
    # tiling of the image its estimate approaches the periodic S2 of one tile (to the partial-period bias).
    tiled = np.tile(mask, (3, 3))
    bins = np.arange(0, 41, 2)
    reference = porespy.metrics.two_point_correlation(tiled, bins=bins).probability_scaled
    ours = _porespy_bins(np.asarray(st.two_point_correlation(st.phase_indicators(labels, n)))[..., phase], bins)
    np.testing.assert_allclose(ours, reference, atol=4e-3)

    for axis in (0, 1):
        # lineal path: porespy's lineal_path_distribution histograms a linear distance transform. The
        # 'forward' transform on the second copy of a 2-tile along the axis is the periodic run length up to
        # each pixel, so its complementary cdf at r + 1 times f is our L(r), exactly.
        reps = [1, 1]
        reps[axis] = 2
        distance = porespy.filters.distance_transform_lin(np.tile(mask, reps), axis=axis, mode="forward")
        distance = np.take(distance, np.arange(labels.shape[axis], 2 * labels.shape[axis]), axis=axis)
        top = int(distance.max()) + 1
        result = porespy.metrics.lineal_path_distribution(distance, bins=np.arange(1, top + 1))
        fraction = mask.mean()
        ours_path = st.lineal_path(labels, n)[axis, :, phase]
        cdf = np.pad(result.cdf, (0, max(0, len(ours_path) - len(result.cdf))))[: len(ours_path)]
        np.testing.assert_allclose(ours_path, fraction * cdf, atol=1e-12)

        # chords: rotate every line to start at a phase change (so the periodic chords are plain runs), put
        # an empty line between grid lines so porespy's connected components are the runs, then count.
        lines = np.moveaxis(labels, axis, -1)
        rotated = np.stack([np.roll(line, -int(np.argmax(line != np.roll(line, 1)))) for line in lines])
        spaced = np.zeros((2 * rotated.shape[0], rotated.shape[1]), bool)
        spaced[::2] = rotated == phase
        length = labels.shape[axis]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts = porespy.metrics.chord_counts(spaced)
            cld = porespy.metrics.chord_length_distribution(spaced, bins=np.arange(0.5, length + 1.5))
        ours_counts = st.chord_length_distribution(labels, n)[axis, phase, 1 : length + 1]
        np.testing.assert_array_equal(ours_counts, np.bincount(counts, minlength=length + 1)[1:])
        np.testing.assert_allclose(ours_counts / ours_counts.sum(), cld.pdf, atol=1e-12)


# ------------------------------------------------------------------ JAX transformations


def test_gradients_on_probabilities():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        for shape in [(5, 4, 3), (3, 4, 3, 2)]:
            probabilities = jax.nn.softmax(jnp.asarray(rng.normal(size=shape)), axis=-1)
            check_grads(jax.jit(st.volume_fractions), (probabilities,), order=1, modes=("rev",), eps=1e-4)
            check_grads(jax.jit(lambda p: st.two_point_correlation(p) ** 2), (probabilities,), order=1,
                        modes=("fwd", "rev"), eps=1e-4)
            check_grads(jax.jit(lambda p: st.two_point_correlation(p, cross=True)), (probabilities,), order=1,
                        modes=("rev",), eps=1e-4)
            assert st.two_point_correlation(probabilities).dtype == jnp.float64


@pytest.mark.parametrize("shape,n", [((16, 12), 2), ((8, 6, 10), 3)])
def test_jit_and_vmap_agree(shape, n):
    rng = np.random.default_rng(3)
    batch = rng.integers(0, n, (3, *shape))
    probs = st.phase_indicators(batch, n)
    for function in [
        st.volume_fractions,
        st.two_point_correlation,
        lambda p: st.two_point_correlation(p, cross=True),
        lambda p: st.two_point_profiles(p, max_distance=3),
    ]:
        eager = [function(p) for p in probs]
        jitted = jax.jit(function)(probs[0])
        vmapped = jax.vmap(function)(probs)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *eager)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), jitted, eager[0])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), vmapped, stacked)
    surface = jax.vmap(lambda x: st.specific_surface(x, n))(batch)
    np.testing.assert_allclose(surface, np.stack([st.specific_surface(x) for x in batch]), atol=1e-6)
    if len(shape) == 2:  # the 3D copy check (48 symmetries) is exercised in test_copy_agreement_detects_moved_copies
        copies = jax.jit(jax.vmap(lambda b: st.copy_agreement(batch[0], b, n)))(batch)
        np.testing.assert_allclose(copies, [st.copy_agreement(batch[0], b) for b in batch], atol=1e-6)
        assert copies[0] == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ copy check


def test_copy_agreement_detects_moved_copies():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 3, (64, 48))
    moved = np.flip(np.roll(a, (5, 17), (0, 1)), 1).T  # shifted, mirrored, transposed
    assert float(st.copy_agreement(a, moved)) == pytest.approx(1.0, abs=1e-5)
    window = np.roll(a, (9, 4), (0, 1))[:20, :30]  # a crop of a shifted copy
    assert float(st.copy_agreement(a, window)) == pytest.approx(1.0, abs=1e-5)
    assert float(st.copy_agreement(window, a)) == pytest.approx(1.0, abs=1e-5)
    volume = rng.integers(0, 2, (10, 12, 14))
    moved_volume = np.flip(np.transpose(np.roll(volume, 3, 1), (2, 0, 1)), (0, 2))
    assert float(st.copy_agreement(volume, moved_volume)) == pytest.approx(1.0, abs=1e-5)


def test_copy_agreement_independent_structures_near_baseline():
    rng = np.random.default_rng(5)
    a = (rng.random((128, 128)) < 0.3).astype(np.int32)
    b = (rng.random((128, 128)) < 0.3).astype(np.int32)
    fa = st.volume_fractions(st.phase_indicators(a, 2))
    fb = st.volume_fractions(st.phase_indicators(b, 2))
    baseline = float(st.copy_baseline(fa, fb))
    assert baseline == pytest.approx(0.3 * 0.3 + 0.7 * 0.7, abs=0.01)
    assert float(st.copy_baseline(fa)) == pytest.approx(float(jnp.sum(fa**2)))
    agreement = float(st.copy_agreement(a, b))
    # the maximum over 8 * 128^2 placements of noise sits a few standard deviations above the baseline
    assert baseline < agreement < baseline + 0.03


# ------------------------------------------------------------------ grayscale


def smooth_gray(shape, seed, width=0.1):
    """A smooth random intensity field in 0..1 (periodic low-pass noise, min-max scaled)."""
    rng = np.random.default_rng(seed)
    frequencies = np.meshgrid(*[np.fft.fftfreq(s) for s in shape], indexing="ij")
    k = np.sqrt(sum(f**2 for f in frequencies))
    field = np.fft.ifftn(np.fft.fftn(rng.normal(size=shape)) * np.exp(-((k / width) ** 2))).real
    return (field - field.min()) / (field.max() - field.min())


def test_autocovariance_of_constant_plus_sinusoid_is_exact():
    # g = c + A sin(2 pi k x / W) along axis 1: C(r) = cos(2 pi k r / W) along it, 1 along axis 0
    height, width, k = 24, 40, 3
    x = np.arange(width)
    gray = np.broadcast_to(0.5 + 0.2 * np.sin(2 * np.pi * k * x / width), (height, width))
    profiles = st.autocovariance_profiles(gray, max_distance=12)
    np.testing.assert_allclose(profiles.per_axis[1], np.cos(2 * np.pi * k * np.arange(13) / width), atol=1e-6)
    np.testing.assert_allclose(profiles.per_axis[0], 1.0, atol=1e-6)
    # radial: the mean of cos(2 pi k dx / W) over the shell round(|(dy, dx)|) = r of shortest periodic shifts
    dy, dx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    dy, dx = np.minimum(dy, height - dy), np.minimum(dx, width - dx)
    shell = np.round(np.hypot(dy, dx)).astype(int)
    cosine = np.cos(2 * np.pi * k * dx / width)
    expected = [cosine[shell == r].mean() for r in range(13)]
    np.testing.assert_allclose(profiles.radial, expected, atol=1e-6)
    # 3D, the wave along axis 0; scale and offset do not matter
    volume = np.broadcast_to((2.0 + np.cos(2 * np.pi * np.arange(8) / 8))[:, None, None], (8, 6, 10)) / 3
    covariance = st.intensity_autocovariance(volume)
    np.testing.assert_allclose(covariance[:, 0, 0], np.cos(2 * np.pi * np.arange(8) / 8), atol=1e-6)
    np.testing.assert_allclose(covariance[0], 1.0, atol=1e-6)


def test_autocovariance_of_a_label_image_is_normalised_s2():
    labels = (smooth_gray((32, 32), 0) > 0.5).astype(np.int32)
    f = labels.mean()
    s2 = st.two_point_profiles(labels, n_phases=2).per_axis[..., 1]
    covariance = st.autocovariance_profiles(labels.astype(np.float32)).per_axis
    np.testing.assert_allclose(covariance, (s2 - f**2) / (f - f**2), atol=1e-5)


def test_intensity_histogram_and_wasserstein_distance():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(st.intensity_histogram(levels), np.full(256, 1 / 256))  # one bin per 8-bit level
    gray = smooth_gray((32, 24), 1)
    assert st.intensity_histogram(gray).sum() == pytest.approx(1.0)
    # a moved, mirrored copy has the same histogram: distance exactly 0
    moved = np.flip(np.roll(gray, (5, 11), (0, 1)), 1).T
    assert st.intensity_wasserstein_distance(gray, moved) == 0.0
    # a uniform offset moves every pixel by d
    assert st.intensity_wasserstein_distance(0.8 * gray, 0.8 * gray + 0.1) == pytest.approx(0.1, abs=1e-12)
    other = np.random.default_rng(2).random((10, 7))
    from scipy.stats import wasserstein_distance

    assert st.intensity_wasserstein_distance(gray, other) == pytest.approx(
        wasserstein_distance(gray.ravel(), other.ravel()), abs=1e-12)
    with pytest.raises(InputError, match="outside 0..1"):
        st.intensity_wasserstein_distance(gray, gray + 1)
    with pytest.raises(InputError, match="intensities"):
        st.intensity_histogram(np.ones((4, 4), np.int32))


def test_otsu_thresholds_and_segmentation():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, (32, 32))
    gray = np.clip(np.array([0.15, 0.5, 0.85])[truth] + 0.03 * rng.normal(size=truth.shape), 0, 1)
    thresholds = st.otsu_thresholds(gray, 3)
    assert thresholds.shape == (2,) and 0.25 < thresholds[0] < 0.4 and 0.6 < thresholds[1] < 0.75
    np.testing.assert_array_equal(st.segment_intensities(gray, thresholds), truth)
    # the cut is exact on the bins: a value at a threshold belongs to the brighter phase
    np.testing.assert_array_equal(st.segment_intensities(np.array([thresholds[0] - 1e-9, thresholds[0]]),
                                                         thresholds), [0, 1])
    for bad, message in [(1, "from 2 to 16"), (17, "from 2 to 16"), (True, "from 2 to 16")]:
        with pytest.raises(InputError, match=message):
            st.otsu_thresholds(gray, bad)
    with pytest.raises(InputError, match="only 2 distinct intensity levels"):
        st.otsu_thresholds(np.array([[0.1, 0.9], [0.9, 0.1]]), 3)


def test_copy_correlation_detects_moved_copies_and_not_independent_fields():
    a = smooth_gray((48, 40), 4)
    moved = 0.5 * np.flip(np.roll(a, (5, 17), (0, 1)), 1).T + 0.2  # shifted, mirrored, transposed, contrast
    assert float(st.copy_correlation(a, moved)) == pytest.approx(1.0, abs=1e-5)
    window = np.roll(a, (9, 4), (0, 1))[:20, :30]  # a crop: each window is standardised on its own
    assert float(st.copy_correlation(a, window)) == pytest.approx(1.0, abs=1e-5)
    assert float(st.copy_correlation(window, a)) == pytest.approx(1.0, abs=1e-5)
    volume = smooth_gray((8, 8, 8), 5, width=0.3)  # a cube: one compiled shape for all 48 symmetries
    assert float(st.copy_correlation(volume, np.flip(np.transpose(volume, (2, 0, 1)), 0))) == pytest.approx(
        1.0, abs=1e-5)
    other = smooth_gray((48, 40), 6)
    baseline = st.copy_correlation_baseline(a, other)
    assert baseline == st.copy_correlation_baseline(a, other)  # deterministic
    correlation = float(st.copy_correlation(a, other))
    assert 0.1 < baseline < 0.8 and correlation < 0.8 and abs(correlation - baseline) < 0.25
    surrogate = st.phase_randomised_surrogate(other, jax.random.PRNGKey(0))  # same autocovariance
    np.testing.assert_allclose(st.intensity_autocovariance(surrogate), st.intensity_autocovariance(other),
                               atol=0.02)


def test_autocovariance_jit_vmap_and_gradient():
    batch = np.stack([smooth_gray((12, 10), seed) for seed in range(3)]).astype(np.float32)
    vmapped = jax.vmap(st.intensity_autocovariance)(batch)
    np.testing.assert_allclose(vmapped, np.stack([st.intensity_autocovariance(g) for g in batch]), atol=1e-6)
    with jax.enable_x64(True):
        check_grads(lambda g: st.intensity_autocovariance(g)[:3, :3], (jnp.asarray(batch[0], jnp.float64),),
                    order=1, modes=("rev",), eps=1e-5)

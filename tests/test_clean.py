"""Clean reconstructions: the lineal-path and short-chord terms, the Gaussian start and the isolated-pixel cleanup,
against the report's independent numpy statistics, exact cases and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxmicro.reconstruction as R
from jaxmicro import statistics as st, terms as T
from jaxmicro.cleanup import isolated, isolated_fraction, match_histogram, remove_isolated
from jaxmicro.descriptors import lineal_path, volume_lineal_path
from jaxmicro.initial import (
    autocovariance,
    field_correlation,
    gaussian_intensity_logits,
    gaussian_labels,
    intensity_field_correlation,
    level_cut_correlation,
    transformed_correlation,
)
from jaxmicro.report import one_pixel_chord_fraction

from conftest import TINY_WIDTHS


def blobs(size, n, seed=0):
    """A smooth random n-phase structure: periodically smoothed noise cut at n - 1 quantiles."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    field = np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * np.exp(-k * 200)).real
    return np.searchsorted(np.quantile(field, np.linspace(0, 1, n + 1)[1:-1]), field).astype(np.int32)


@pytest.mark.parametrize("shape,n", [((24, 20), 2), ((12, 10, 8), 3)])
def test_lineal_path_descriptor_equals_the_chord_count_statistic(shape, n):
    labels = np.random.default_rng(1).integers(0, n, shape)
    labels[2:6] = 0  # long chords too
    radius = min(shape) // 2
    expected = st.lineal_path(labels, n, max_distance=radius)  # from chord counts, numpy
    got = lineal_path(jax.nn.one_hot(labels, n), radius)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_chord_distribution_from_the_lineal_path_counts_the_chords():
    labels = blobs(32, 2, seed=3)
    path = lineal_path(jax.nn.one_hot(labels, 2), 10)
    shares = T.chord_distribution(path, 4)  # (axes, 4, n)
    counts = st.chord_length_distribution(labels, 2)  # (axes, n, L + 1)
    # chords that are whole periodic lines have no end: the lineal path cannot count them
    expected = counts[:, :, 1:5] / counts[:, :, :32].sum(-1, keepdims=True)
    np.testing.assert_allclose(np.moveaxis(shares, 1, 2), expected, atol=1e-5)


def test_one_pixel_chord_fraction_of_a_laminate_and_of_speckle():
    laminate = np.tile((np.arange(16) % 4 < 2).astype(int), (16, 1))  # chords of 2 across, whole lines along
    np.testing.assert_allclose(one_pixel_chord_fraction(st.chord_length_distribution(laminate, 2)), [0, 0])
    speckle = np.zeros((16, 16), int)
    speckle[::4, ::4] = 1  # isolated pixels: every chord of phase 1 has length 1
    assert one_pixel_chord_fraction(st.chord_length_distribution(speckle, 2))[1] == 1.0


def test_volume_lineal_path_from_sections():
    a, b, c = (jnp.full((2, 4, 1), v) + jnp.array([0.0, 1.0])[:, None, None] for v in (0.0, 10.0, 20.0))
    isotropic = volume_lineal_path([a])
    np.testing.assert_allclose(isotropic, jnp.broadcast_to(a.mean(0), (3, 4, 1)))
    # the section normal to d holds the volume axes other than d, in order: axis 0 is in sections 1 and 2
    per_direction = volume_lineal_path([a, b, c])
    np.testing.assert_allclose(per_direction[0], (b[0] + c[0]) / 2)
    np.testing.assert_allclose(per_direction[1], (a[0] + c[1]) / 2)
    np.testing.assert_allclose(per_direction[2], (a[1] + b[1]) / 2)


def product_lineal_path(fields, radius):
    """The plain definition: prod_{k=0..r} I(x + k e_a), averaged over pixels, per axis."""
    out = []
    for axis in range(fields.ndim - 1):
        run, means = fields, [fields.mean(tuple(range(fields.ndim - 1)))]
        for r in range(1, radius + 1):
            run = run * jnp.roll(fields, -r, axis=axis)
            means.append(run.mean(tuple(range(fields.ndim - 1))))
        out.append(jnp.stack(means))
    return jnp.stack(out)


@pytest.mark.parametrize("shape", [(9, 7, 2), (5, 6, 4, 3)])
def test_lineal_path_gradient_equals_autodiff_of_the_products(shape):
    """The written-out gradient against JAX's derivative of the plain definition, float64, 2D and 3D."""
    radius = 4
    with jax.enable_x64(True):
        fields = jax.random.uniform(jax.random.PRNGKey(1), shape, jnp.float64)
        weights = jax.random.normal(jax.random.PRNGKey(2), (len(shape) - 1, radius + 1, shape[-1]), jnp.float64)
        np.testing.assert_allclose(lineal_path(fields, radius), product_lineal_path(fields, radius), rtol=1e-13)
        got = jax.grad(lambda f: jnp.sum(weights * lineal_path(f, radius)))(fields)
        expected = jax.grad(lambda f: jnp.sum(weights * product_lineal_path(f, radius)))(fields)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
        batched = jax.vmap(jax.grad(lambda f: jnp.sum(weights * lineal_path(f, radius))))(jnp.stack([fields] * 2))
        np.testing.assert_allclose(batched[1], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape,n,radius", [((9, 7), 2, 6), ((5, 6, 4), 3, 3)])
def test_decided_lineal_path_equals_the_products_on_labels(shape, n, radius):
    """The run-length form on decided phases: the products' value and gradient (float64), with a whole periodic
    line of one phase, a pixel alone in its line, radii up to the side less one, jit and vmap."""
    labels = np.random.default_rng(2).integers(0, n, shape)
    labels[1] = 0  # whole lines along the other axes
    labels[3] = 1
    labels[3, 2] = 0  # alone in its line
    with jax.enable_x64(True):
        fields = jax.nn.one_hot(labels, n, dtype=jnp.float64)
        weights = jax.random.normal(jax.random.PRNGKey(3), (len(shape), radius + 1, n), jnp.float64)

        def loss(path):
            return lambda f: jnp.sum(weights * path(f))

        fast = jax.jit(lambda f: lineal_path(f, radius, decided=True))
        products = jax.jit(lambda f: product_lineal_path(f, radius))
        np.testing.assert_allclose(fast(fields), products(fields), rtol=1e-14)
        expected = jax.jit(jax.grad(loss(products)))(fields)
        np.testing.assert_allclose(jax.grad(loss(fast))(fields), expected, rtol=1e-12, atol=1e-15)
        batched = jax.vmap(jax.grad(loss(fast)))(jnp.stack([fields, fields]))
        np.testing.assert_allclose(batched[1], expected, rtol=1e-12, atol=1e-15)
        # phases decoded straight-through (values 1 - ulp): the same value and gradient as the labels
        probabilities = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(4), (*shape, n), jnp.float64) + 5 * fields)
        decoded = probabilities + jax.lax.stop_gradient(fields - probabilities)
        np.testing.assert_allclose(fast(decoded), products(fields), rtol=1e-14)
        np.testing.assert_allclose(jax.grad(loss(fast))(decoded), expected, rtol=1e-12, atol=1e-15)
        full = lineal_path(fields, shape[0], decided=True)  # the radius reaches the side: the products serve
        np.testing.assert_allclose(full, jax.jit(product_lineal_path, static_argnums=1)(fields, shape[0]),
                                   rtol=1e-14)


@pytest.mark.parametrize("name", ["lineal_path", "short_chords"])
def test_morphology_terms_match_finite_differences(name):
    labels = blobs(16, 2, seed=5)
    target = lineal_path(jax.nn.one_hot(labels, 2), 6)
    term = {"lineal_path": T.lineal_path(), "short_chords": T.short_chords(3)}[name]

    def loss(fields):
        from jaxmicro.descriptors import Descriptors
        d = Descriptors((), (), fields.mean((0, 1)), jnp.zeros(2), lineal_path=lineal_path(fields, 6))
        return term(d, fields, target)

    fields = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(2), (16, 16, 2)), axis=-1)
    check_grads(loss, (fields,), order=1, modes=["rev"], atol=5e-3, rtol=5e-3, eps=1e-3)
    assert float(loss(jax.nn.one_hot(labels, 2))) == 0.0  # the exemplar itself matches exactly


def test_gaussian_start_has_the_fractions_and_the_feature_size():
    three = blobs(64, 3, seed=7)
    fractions = np.bincount(three.ravel(), minlength=3) / three.size
    covariance = autocovariance([three], 3, (48, 48))
    np.testing.assert_allclose(covariance[:, 0, 0], fractions * (1 - fractions), rtol=1e-5)  # C(0) = f(1 - f)
    labels = np.asarray(gaussian_labels(jax.random.PRNGKey(0), jnp.asarray(field_correlation([three], 3, (48, 48))),
                                        jnp.asarray(fractions)))
    np.testing.assert_allclose(np.bincount(labels.ravel(), minlength=3) / labels.size, fractions, atol=0.02)
    # a level cut of a Gaussian field (what blobs are) comes back with its feature size, not white noise (~1 px)
    two = blobs(64, 2, seed=7)
    sizes = []
    for seed in range(4):
        labels = gaussian_labels(jax.random.PRNGKey(seed), jnp.asarray(field_correlation([two], 2, (48, 48))),
                                 jnp.asarray([0.5, 0.5]))
        sizes.append(st.mean_chord_length(st.chord_length_distribution(np.asarray(labels), 2).sum(0)))
    real = st.mean_chord_length(st.chord_length_distribution(two, 2).sum(0))
    np.testing.assert_allclose(np.mean(sizes, axis=0), real, rtol=0.35)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_intensity_start_of_a_two_valued_histogram_is_the_level_cut(fraction):
    quantiles = np.where(np.linspace(0, 1, 256) < 1 - fraction, 0.0, 1.0)  # a binary image's intensities
    covariance = np.linspace(-0.05 * fraction, fraction * (1 - fraction), 50)
    exact = level_cut_correlation(np.stack([covariance] * 2), np.array([fraction] * 2))[1]
    np.testing.assert_allclose(transformed_correlation(covariance, quantiles), exact, atol=0.005)


def test_intensity_start_of_a_gaussian_histogram_keeps_the_correlation():
    from scipy.special import ndtri

    quantiles = 0.5 + 0.1 * ndtri(np.clip(np.linspace(0, 1, 256), 1e-4, 1 - 1e-4))  # g(x) = 0.5 + 0.1 x
    covariance = np.linspace(-0.002, 0.01, 40)
    np.testing.assert_allclose(transformed_correlation(covariance, quantiles), covariance / 0.01, atol=1e-3)


def test_grayscale_gaussian_start_has_the_histogram_and_the_autocovariance():
    rng = np.random.default_rng(3)
    gray = np.clip(0.2 + 0.6 * blobs(96, 2, seed=4) + 0.05 * rng.normal(size=(96, 96)), 0, 1).astype(np.float32)
    quantiles = np.quantile(gray, np.linspace(0, 1, 256)).astype(np.float32)
    correlation = intensity_field_correlation([gray], quantiles, (64, 64))
    starts = [np.asarray(jax.nn.sigmoid(gaussian_intensity_logits(jax.random.PRNGKey(seed), jnp.asarray(correlation),
                                                                jnp.asarray(quantiles))))[..., 0]
              for seed in range(4)]
    for start in starts:  # the exemplar's histogram, rank by rank (up to the floor that keeps a sigmoid finite)
        np.testing.assert_allclose(np.quantile(start, np.linspace(0, 1, 256)), quantiles, atol=0.01)
    target = st.autocovariance_profiles(gray, max_distance=8).per_axis
    made = np.mean([st.autocovariance_profiles(s, max_distance=8).per_axis for s in starts], axis=0)
    np.testing.assert_allclose(made, target, atol=0.08)  # a level cut's feature size, not white noise's
    assert np.all(np.asarray(made)[:, 2] > 0.5)


def test_gaussian_start_of_a_volume_from_a_2d_image_is_isotropic():
    covariance = autocovariance([blobs(32, 2, seed=1)], 2, (16, 16, 16))
    np.testing.assert_allclose(covariance[:, 3, 0, 0], covariance[:, 0, 0, 3], rtol=1e-6)
    np.testing.assert_allclose(covariance[:, 0, 3, 0], covariance[:, 0, 0, 3], rtol=1e-6)


def test_cleanup_removes_an_isolated_pixel_without_moving_the_fractions():
    labels = np.zeros((12, 12), np.uint8)
    labels[2:7, 2:7] = 1
    labels[9, 9] = 1  # isolated
    logits = np.zeros((12, 12, 2), np.float32)
    logits[..., 1] = np.where(labels == 1, 1.0, -1.0)
    logits[7, 4, 1] = 0.5  # the least sure solid pixel at the square's border: it becomes phase 1
    cleaned = remove_isolated(labels, logits)
    assert cleaned[9, 9] == 0 and cleaned[7, 4] == 1
    assert (cleaned != labels).sum() == 2 and cleaned.sum() == labels.sum()
    assert not isolated(cleaned).any()


def test_cleanup_in_3d_and_with_three_phases_keeps_every_count():
    labels = np.random.default_rng(0).integers(0, 3, (10, 10, 10)).astype(np.uint8)
    logits = np.random.default_rng(1).normal(size=(10, 10, 10, 3)).astype(np.float32)
    cleaned = remove_isolated(labels, logits)
    np.testing.assert_array_equal(np.bincount(cleaned.ravel(), minlength=3), np.bincount(labels.ravel(), minlength=3))
    assert isolated(cleaned).sum() < isolated(labels).sum()


def test_reconstruction_starts_from_the_gaussian_field_and_returns_clean_labels(tiny_params):
    exemplar = blobs(32, 2, seed=2)
    common = dict(shape=(24, 24), count=2, steps=4, layers=("relu1_1",), widths=TINY_WIDTHS, levels=1,
                  params={"conv1_1": tiny_params["conv1_1"]}, seed=3, polish_steps=0)
    noise = R.reconstruct(exemplar, initial="noise", cleanup=False, **common)
    gaussian = R.reconstruct(exemplar, **common)
    assert isolated(gaussian.labels[0]).sum() == 0
    # after 4 small steps each start is still visible: white noise has far shorter chords than the field
    mean = [st.mean_chord_length(st.chord_length_distribution(r.labels[0], 2).sum(0)).min()
            for r in (noise, gaussian)]
    assert mean[1] > 2 * mean[0]
    with pytest.raises(Exception, match="initial field"):
        R.reconstruct(exemplar, initial="sky", **common)


def test_a_volume_starts_from_the_gaussian_field_too(tiny_params):
    exemplar = blobs(32, 2, seed=2)
    common = dict(shape=(12, 12, 12), count=1, steps=2, layers=("relu1_1",), widths=TINY_WIDTHS, levels=1,
                  params={"conv1_1": tiny_params["conv1_1"]}, seed=3, learning_rate=1e-9)
    noise, gaussian = R.reconstruct(exemplar, initial="noise", **common), R.reconstruct(exemplar, **common)
    mean = [st.mean_chord_length(st.chord_length_distribution(r.labels[0], 2).sum(0)).min() for r in (noise, gaussian)]
    assert mean[1] > 2 * mean[0]  # the field's features, not white noise's single voxels
    assert abs(np.mean(gaussian.labels[0]) - np.mean(exemplar)) < 0.02  # cut to the exemplar's fractions


def test_a_grayscale_volume_starts_from_the_exemplars_histogram(tiny_params):
    gray = np.clip(0.5 + 0.3 * np.sin(np.arange(32) / 3.0)[:, None] * np.cos(np.arange(32) / 4.0), 0, 1)
    common = dict(shape=(8, 8, 8), count=1, steps=2, layers=("relu1_1",), widths=TINY_WIDTHS, levels=1,
                  params={"conv1_1": tiny_params["conv1_1"]}, learning_rate=1e-9, grayscale=True)
    levels = [0.1, 0.5, 0.9]
    start = R.reconstruct(gray.astype(np.float32), cleanup=False, **common).labels[0] / 255.0
    np.testing.assert_allclose(np.quantile(start, levels), np.quantile(gray, levels), atol=0.03)
    noise = R.reconstruct(gray.astype(np.float32), initial="noise", cleanup=False, **common).labels[0] / 255.0
    assert np.ptp(np.quantile(noise, levels)) < 0.5 * np.ptp(np.quantile(gray, levels))
    matched = R.reconstruct(gray.astype(np.float32), initial="noise", **common).labels[0] / 255.0  # the cleanup
    np.testing.assert_allclose(np.quantile(matched, levels), np.quantile(gray, levels), atol=0.03)


def test_histogram_match_keeps_the_pixel_order_and_takes_the_exemplars_intensities():
    rng = np.random.default_rng(4)
    exemplar = np.concatenate([rng.normal(0.2, 0.03, 600), rng.normal(0.8, 0.05, 424)]).clip(0, 1).reshape(32, 32)
    quantiles = np.quantile(exemplar, np.linspace(0, 1, 256))
    intensity = rng.normal(0.5, 0.1, (16, 16))  # one broad mode: the wrong histogram
    matched = match_histogram(intensity, quantiles)
    assert matched.shape == intensity.shape
    np.testing.assert_array_equal(np.argsort(matched, axis=None), np.argsort(intensity, axis=None))
    expected = np.interp((np.arange(256) + 0.5) / 256, np.linspace(0, 1, 256), quantiles)
    np.testing.assert_allclose(np.sort(matched, axis=None), expected)
    assert st.intensity_wasserstein_distance(matched, exemplar) < 0.1 * st.intensity_wasserstein_distance(
        intensity.clip(0, 1), exemplar)
    tied = match_histogram(np.zeros((2, 3)), quantiles)  # ties go by position: still every quantile once
    np.testing.assert_allclose(tied.ravel(), np.interp((np.arange(6) + 0.5) / 6, np.linspace(0, 1, 256), quantiles))


def test_cleanup_keeps_the_exemplars_share_of_isolated_pixels_the_surest_first():
    labels = np.zeros((12, 12), np.uint8)
    labels[2:7, 2:7] = 1
    labels[9, 9] = labels[9, 2] = 1  # two isolated pixels of phase 1
    logits = np.zeros((12, 12, 2), np.float32)
    logits[..., 1] = np.where(labels == 1, 1.0, -1.0)
    logits[9, 2, 1] = 3.0  # the surer one
    cleaned = remove_isolated(labels, logits, keep=np.array([0, 1]))
    assert cleaned[9, 2] == 1 and cleaned[9, 9] == 0 and cleaned.sum() == labels.sum()
    assert isolated_fraction(cleaned, 2)[1] == 1 / 144
    np.testing.assert_array_equal(remove_isolated(labels, logits, keep=np.array([0, 5])), labels)  # within share

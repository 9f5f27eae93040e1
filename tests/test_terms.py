"""The descriptor node and the loss terms: against independent formulas, exact cases and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxmicro.reconstruction as R
from jaxmicro import terms as T, vgg
from jaxmicro.descriptors import Descriptors, correlation_window, interface_measure, make_network
from jaxmicro.physics import HomogenisationResult
from jaxmicro.statistics import two_point_correlation

from conftest import TINY_WIDTHS
from test_reconstruct import TAPS, blobs, setup


@pytest.fixture
def params(tiny_params):
    return {k: tiny_params[k] for k in vgg.convs_needed(TAPS)}


def test_reconstruction_loss_as_terms_equals_the_three_term_formula(params):
    """sum_tap ||G - T||^2/||T||^2 + w_c ||S2 - S2*||^2/||S2*||^2 + w_f ||f - f*||^2/||f*||^2, computed here
    from the network, the FFT correlation and the fractions directly."""
    config, exemplar = setup(n_phases=3, correlation_weight=7.0, volume_fraction_weight=3.0)
    fields = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(4), (16, 16, 3)), axis=-1)
    ex_fields = jax.nn.one_hot(exemplar, 3)
    features = make_network(config)

    def grams(f):
        return {tap: vgg.gram_matrix(x[0]) for tap, x in features(params, vgg_rgb(f)).items()}

    def vgg_rgb(f):
        from jaxmicro import encoding
        return encoding.encode(f)[None]

    def window(f):
        return correlation_window(two_point_correlation(f), config.correlation_radius)

    def rel(a, b):
        return float(jnp.sum((a - b) ** 2) / jnp.sum(b**2))

    expected_gram = sum(rel(grams(fields)[t], grams(ex_fields)[t]) for t in TAPS)
    expected_corr = rel(window(fields), window(ex_fields))
    expected_frac = rel(fields.mean((0, 1)), ex_fields.mean((0, 1)))
    objective = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    total, values = R.make_field_loss(config)(params, fields, objective)
    np.testing.assert_allclose(values["gram"], expected_gram, rtol=2e-4)
    np.testing.assert_allclose(values["correlation"], expected_corr, rtol=2e-4)
    np.testing.assert_allclose(values["volume_fraction"], expected_frac, rtol=2e-4)
    np.testing.assert_allclose(total, expected_gram + 7.0 * expected_corr + 3.0 * expected_frac, rtol=2e-4)
    assert float(objective.weights["interface"]) == 0.0  # off by default: the loss above has no fourth term


@pytest.mark.parametrize("period", [2, 4, 6])
def test_interface_measure_of_a_laminate_is_one_over_its_period(period):
    row = (np.arange(24) % period < period // 2).astype(int)
    laminate = np.tile(row, (24, 1))  # stripes across axis 1, uniform along axis 0
    measure = interface_measure(jax.nn.one_hot(laminate, 2))
    np.testing.assert_allclose(measure, [1.0 / period] * 2, rtol=1e-6)
    volume = np.broadcast_to(laminate, (8, 24, 24))  # the same laminate in 3D: one axis in three crosses it
    np.testing.assert_allclose(interface_measure(jax.nn.one_hot(volume, 2)), [2.0 / (3 * period)] * 2, rtol=1e-6)


def test_interface_measure_counts_an_isolated_pixel_by_its_four_edges():
    image = np.zeros((10, 10), int)
    image[4, 6] = 1
    np.testing.assert_allclose(interface_measure(jax.nn.one_hot(image, 2)), [4 / 200] * 2, rtol=1e-6)


def test_interface_term_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        fields = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 2), jnp.float64)
        target = jnp.asarray([0.2, 0.3], jnp.float64)
        term = T.interface()
        loss = lambda f: term(Descriptors((), (), f.mean((0, 1)), interface_measure(f)), f, target)  # noqa: E731
        check_grads(loss, (fields,), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-5)


def test_grayscale_two_point_descriptor_is_the_autocovariance():
    """c + A sin(2 pi x / 8) on 32x32: the window holds (A^2 / 2) cos(2 pi dx / 8) whatever the constant c, the
    mean being the quantiles' part of the objective, not the two-point term's."""
    from jaxmicro.descriptors import make_describe

    config = R.ReconstructionConfig(shape=(32, 32), n_phases=None, taps=(), correlation_radius=4)
    describe = make_describe(config, with_lineal_path=False)
    wave = 0.2 * np.sin(2 * np.pi * np.arange(32) / 8)
    dx = np.arange(-4, 5)
    expected = np.broadcast_to(0.2**2 / 2 * np.cos(2 * np.pi * dx / 8), (9, 9))  # rows: dy; the wave runs along x
    for constant in (0.3, 0.7):
        fields = jnp.asarray(np.broadcast_to(constant + wave, (32, 32))[..., None], jnp.float32)
        window = describe(None, fields, network=False).correlation[0][..., 0]
        np.testing.assert_allclose(window, expected, atol=1e-6)


def _with_window(window):
    return Descriptors((), (window,), jnp.zeros(2), jnp.zeros(2))


def test_two_point_norm_weighs_a_concentrated_error_more_and_an_even_one_the_same():
    """Target 0.5 everywhere on a 9x9x2 window (N = 162 values): an error d at every value gives d^2 / 0.25 with
    every norm; an error d at one value gives d^2 / (0.25 N) with the squared error and d^2 / (0.25 N^(2/p))
    with the p-norm."""
    target = jnp.full((9, 9, 2), 0.5, jnp.float32)
    even = target + 0.01 * jnp.where(jnp.arange(162).reshape(9, 9, 2) % 2 == 0, 1.0, -1.0)
    peak = target.at[4, 6, 1].add(0.01)
    for power in (2.0, 8.0, 16.0):
        term = T.two_point(power)
        np.testing.assert_allclose(term(_with_window(even), None, (target,)), 0.01**2 / 0.25, rtol=1e-4)
        np.testing.assert_allclose(term(_with_window(peak), None, (target,)), 0.01**2 / (0.25 * 162 ** (2 / power)),
                                   rtol=1e-4)


def test_two_point_norm_keeps_small_errors_and_their_gradient_in_float32():
    """0.001**16 = 1e-48 lies below float32's range: without the scaling the value and gradient would be 0."""
    target = jnp.full((9, 9, 2), 0.5, jnp.float32)
    peak = target.at[4, 6, 1].add(0.001)
    term = lambda w: T.two_point(16.0)(_with_window(w), None, (target,))  # noqa: E731
    np.testing.assert_allclose(term(peak), 0.001**2 / (0.25 * 162**0.125), rtol=1e-4)
    gradient = jax.grad(term)(peak)
    assert gradient[4, 6, 1] > 0 and np.count_nonzero(gradient) == 1
    assert float(term(target)) == 0.0 and np.all(np.isfinite(jax.grad(term)(target)))


@pytest.mark.parametrize("power", [8.0, 16.0])
def test_two_point_norm_gradient_matches_finite_differences(power):
    with jax.enable_x64(True):
        window = jax.random.uniform(jax.random.PRNGKey(1), (5, 5, 2), jnp.float64)
        target = (jax.random.uniform(jax.random.PRNGKey(2), (5, 5, 2), jnp.float64),)
        term = T.two_point(power)
        check_grads(lambda w: term(_with_window(w), None, target), (window,), order=1, modes=["rev"], eps=1e-6,
                    atol=1e-7, rtol=1e-5)


def _with_property(value, status=0):
    result = HomogenisationResult(jnp.asarray([[value, 0.0], [0.0, 1.0]]), 5, 1e-6, jnp.asarray(status))
    return Descriptors((), (), jnp.zeros(2), jnp.zeros(2), {"conductivity": result})


@pytest.mark.parametrize("relation, value, target, expected", [
    ("=", 4.4, 4.0, 0.01),            # ((4.4 - 4) / 4)^2
    ("=", 3.6, 4.0, 0.01),
    (">=", 4.4, 4.0, 0.0),            # the bound holds
    (">=", 3.6, 4.0, 0.01),
    ("<=", 4.4, 4.0, 0.01),
    ("<=", 3.6, 4.0, 0.0),
    ("max", 5.0, None, -0.5),         # -value / scale with scale 10
    ("min", 5.0, None, 0.5),
])
def test_property_term_relations(relation, value, target, expected):
    term = T.property_term("conductivity", lambda r: r.tensor[0, 0], relation, scale=10.0)
    np.testing.assert_allclose(term(_with_property(value), None, target), expected, rtol=1e-6, atol=1e-12)


def test_property_term_is_nan_when_the_solver_failed():
    term = T.property_term("conductivity", lambda r: r.tensor[0, 0], "=")
    assert np.isnan(term(_with_property(4.0, status=1), None, 4.0))


def test_reconstruction_records_every_term_per_step(params):
    exemplar = blobs((32, 32), fraction=0.3)
    result = R.reconstruct(exemplar, shape=(16, 16), count=2, steps=15, seed=0, layers=TAPS, params=params,
                           widths=TINY_WIDTHS, correlation_radius=4, levels=1, interface_weight=2.0, polish_steps=30,
                           weights={"correlation": np.array([1.0, 5.0])})  # per-sample weights
    assert set(result.term_history) == set(R.TERM_NAMES)
    weights = {"gram": 1.0, "correlation": np.array([[1.0], [5.0]]), "volume_fraction": 10.0, "interface": 2.0,
               "lineal_path": 10.0, "short_chords": 10.0}  # the image schedule's
    total = sum(weights[n] * result.term_history[n] for n in R.TERM_NAMES)
    np.testing.assert_allclose(result.loss_history, total, rtol=1e-5)
    assert all(v.shape == (2, 15 + 30) for v in result.term_history.values())  # and the polish's 30 steps
    assert np.all(result.term_history["gram"][:, 15:] == 0)  # the polish runs without the network


def test_a_custom_term_plugs_into_the_loop_as_documented(params):
    """The research API of docs/reconstruction.md: a user's term next to the reconstruction terms."""
    from jaxmicro import optimise
    from jaxmicro.descriptors import make_describe

    def edge_term(descriptors, fields, target):  # fraction of phase 1 on the first row
        return (fields[0, :, 1].mean() - target) ** 2

    config, exemplar = setup()
    objective = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    objective = objective._replace(targets={**objective.targets, "edge": jnp.float32(1.0)},
                                   weights={**objective.weights, "edge": jnp.float32(10.0)})
    loss = T.make_loss(make_describe(config), {**R.make_terms(config), "edge": edge_term},
                       lambda z: R.fields_from_logits(config, z))
    tx = optimise.make_optimizer("adam", 0.05, 60)
    run_chunk = optimise.make_run_chunk(optimise.make_step(loss, tx, 60), 60, 20)
    states = jax.vmap(lambda k: R.init_state(config, tx, k))(jax.random.split(jax.random.PRNGKey(0), 2))
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (2, *jnp.shape(x))), objective)
    states, history = optimise.run(run_chunk, params, states, batched, 60)
    assert history["edge"].shape == (2, 60) and np.all(history["edge"][:, -1] < 0.1 * history["edge"][:, 0])
    assert np.all(np.asarray(optimise.decoded_phases(states.logits))[:, 0] == 1)  # the first row became phase 1


def test_the_batch_runs_the_same_vmapped_in_groups_or_one_sample_at_a_time(params):
    """``samples_at_once``: the whole batch as one group, groups of 2 (and a remainder of 1), or one sample after
    the other (the CPU default) give the same states and history up to float rounding."""
    from jaxmicro import optimise

    config, exemplar = setup()
    objective = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (3, *jnp.shape(x))), objective)
    tx = optimise.make_optimizer("adam", 0.05, 12)
    step = R.make_step(config, tx, 12)
    results = []
    for samples_at_once in (3, 2, 1, None):
        states = jax.vmap(lambda k: R.init_state(config, tx, k))(jax.random.split(jax.random.PRNGKey(0), 3))
        run_chunk = optimise.make_run_chunk(step, 12, 6, samples_at_once=samples_at_once)
        results.append(optimise.run(run_chunk, params, states, batched, 12))
    for states, history in results[1:]:
        np.testing.assert_allclose(states.logits, results[0][0].logits, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(history["loss"], results[0][1]["loss"], rtol=1e-4)
    assert not np.allclose(results[0][1]["loss"][0], results[0][1]["loss"][1])  # the samples differ

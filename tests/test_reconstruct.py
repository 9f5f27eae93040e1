import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxmicro.reconstruct as R
from jaxmicro import vgg
from jaxmicro.errors import InputError
from conftest import TINY_WIDTHS

TAPS = ("relu1_2", "relu2_1")


def blobs(shape=(32, 32), seed=0, fraction=0.4):
    """A smooth random two-phase structure (thresholded, periodically smoothed noise)."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(shape[0])[:, None] ** 2 + np.fft.fftfreq(shape[1])[None, :] ** 2
    field = np.fft.ifft2(np.fft.fft2(rng.normal(size=shape)) * np.exp(-k * 200)).real
    return (field > np.quantile(field, 1 - fraction)).astype(np.int32)


def setup(n_phases=2, shape=(16, 16), **options):
    config = R.ReconstructionConfig(shape=shape, n_phases=n_phases, taps=TAPS, widths=TINY_WIDTHS,
                                    correlation_radius=4, **options)
    exemplar = blobs() if n_phases == 2 else np.random.default_rng(1).integers(0, n_phases, (32, 32))
    return config, exemplar


@pytest.fixture
def params(tiny_params):
    return {k: tiny_params[k] for k in vgg.convs_needed(TAPS)}


def test_targets_of_exemplar_give_zero_statistics_loss(params):
    config, exemplar = setup(shape=(32, 32))
    targets = R.make_targets(config, params, [exemplar])
    logits = 30.0 * (2.0 * jax.nn.one_hot(exemplar, 2) - 1.0)  # the exemplar itself, fully decided
    total, terms = R.make_loss(config)(params, logits, targets, 1.0)
    np.testing.assert_allclose(terms.gram, 0.0, atol=1e-6)
    np.testing.assert_allclose(terms.correlation, 0.0, atol=1e-6)
    np.testing.assert_allclose(terms.volume_fraction, 0.0, atol=1e-7)
    np.testing.assert_allclose(total, 0.0, atol=1e-5)


def test_loss_jit_matches_eager_and_gradient_matches_finite_differences(params):
    config, exemplar = setup(n_phases=3)
    targets = R.make_targets(config, params, [exemplar])
    loss = R.make_loss(config)
    logits = jax.random.normal(jax.random.PRNGKey(0), (16, 16, 3))
    eager = loss(params, logits, targets, 0.5)[0]
    np.testing.assert_allclose(jax.jit(loss)(params, logits, targets, 0.5)[0], eager, rtol=1e-5)
    check_grads(lambda z: loss(params, z, targets, 0.5)[0], (logits,), order=1, modes=["rev"],
                eps=1e-2, atol=2e-2, rtol=2e-2)


def test_vmapped_step_equals_loop_of_single_steps(params):
    config, exemplar = setup()
    targets = R.make_targets(config, params, [exemplar])
    tx = R.make_optimizer("adam")
    step = R.make_step(config, tx, total_steps=10)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    states = jax.vmap(lambda k: R.init_state(config, tx, k))(keys)
    batched_targets = jax.tree.map(lambda x: jnp.stack([x] * 3), targets)
    batched, losses = jax.vmap(step, in_axes=(None, 0, 0))(params, states, batched_targets)
    for i in range(3):
        single, loss = step(params, jax.tree.map(lambda x: x[i], states), targets)
        np.testing.assert_allclose(batched.logits[i], single.logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(losses[i], loss, rtol=1e-5)


def test_run_compiles_once_and_chunking_does_not_change_the_result(params):
    config, exemplar = setup()
    kwargs = dict(shape=(16, 16), count=2, steps=12, seed=3, layers=TAPS, params=params, widths=TINY_WIDTHS,
                  correlation_radius=4)
    calls = []
    whole = R.reconstruct(exemplar, chunk=12, **kwargs)
    chunked = R.reconstruct(exemplar, chunk=5, callback=lambda done, *_: calls.append(done), **kwargs)
    assert calls == [5, 10, 12]
    np.testing.assert_array_equal(whole.labels, chunked.labels)
    np.testing.assert_array_equal(whole.loss_history, chunked.loss_history)
    assert whole.loss_history.shape == (2, 12) and np.all(np.isfinite(whole.loss_history))


def test_second_chunk_does_not_recompile(params):
    config, exemplar = setup()
    tx = R.make_optimizer("adam")
    targets = jax.tree.map(lambda x: x[None], R.make_targets(config, params, [exemplar]))
    states = jax.vmap(lambda k: R.init_state(config, tx, k))(jax.random.split(jax.random.PRNGKey(0), 1))
    run_chunk = R.make_run_chunk(config, tx, total_steps=9, chunk=3)
    states, _ = run_chunk(params, states, targets)
    size = run_chunk._cache_size()
    for _ in range(2):
        states, _ = run_chunk(params, states, targets)
    assert run_chunk._cache_size() == size == 1
    assert int(states.step[0]) == 9


def test_reconstruction_moves_towards_the_exemplar_statistics(params):
    exemplar = blobs((32, 32), fraction=0.3)
    result = R.reconstruct(exemplar, shape=(32, 32), count=2, steps=150, seed=0, layers=TAPS, params=params,
                           widths=TINY_WIDTHS, correlation_radius=8)
    assert result.labels.shape == (2, 32, 32) and result.labels.dtype == np.uint8
    assert np.all(result.loss_history[:, -1] < 0.2 * result.loss_history[:, 0])
    np.testing.assert_allclose(result.labels.mean(axis=(1, 2)), exemplar.mean(), atol=0.03)
    assert np.all(result.undecided_fraction < 0.05)
    assert not np.array_equal(result.labels[0], result.labels[1])  # different seeds, different structures


def test_several_exemplars_in_one_batch(params):
    a, b = blobs(seed=0, fraction=0.2), blobs(seed=1, fraction=0.6)
    result = R.reconstruct([a, b], shape=(16, 16), count=2, steps=60, layers=TAPS, params=params,
                           widths=TINY_WIDTHS, correlation_radius=4)
    np.testing.assert_array_equal(result.exemplar_index, [0, 0, 1, 1])
    fractions = result.labels.mean(axis=(1, 2))
    assert fractions[:2].max() < fractions[2:].min()


def test_lbfgs_runs_through_the_same_interface(params):
    exemplar = blobs()
    result = R.reconstruct(exemplar, shape=(16, 16), count=2, steps=10, optimizer="lbfgs", layers=TAPS,
                           params=params, widths=TINY_WIDTHS, correlation_radius=4)
    assert np.all(np.isfinite(result.loss_history))
    assert np.all(result.loss_history[:, -1] < result.loss_history[:, 0])


def test_non_finite_sample_is_reported_not_raised(params):
    """A sample whose step goes non-finite keeps its last finite iterate; the others carry on."""
    config, exemplar = setup()
    poison = optax.GradientTransformation(
        lambda p: optax.EmptyState(),
        lambda u, s, p=None: (jax.tree.map(lambda g: jnp.where(jnp.max(p) > 0.35, jnp.nan, -0.1 * g), u), s),
    )
    result = R.reconstruct(exemplar, shape=(16, 16), count=4, steps=8, seed=0, optimizer=poison, layers=TAPS,
                           params=params, widths=TINY_WIDTHS, correlation_radius=4)
    bad = result.status == R.NON_FINITE
    assert bad.any() and not bad.all()
    assert np.all(np.isnan(result.loss_history[bad, -1]))
    assert np.all(np.isfinite(result.loss_history[~bad]))


def test_grayscale_reconstruction_matches_the_intensity_histogram(params):
    rng = np.random.default_rng(0)
    gray = np.clip(0.3 + 0.4 * blobs() + 0.05 * rng.normal(size=(32, 32)), 0, 1).astype(np.float32)
    result = R.reconstruct(gray, grayscale=True, shape=(16, 16), count=1, steps=100, layers=TAPS,
                           params=params, widths=TINY_WIDTHS, correlation_radius=4)
    assert result.config.n_phases is None and result.labels.dtype == np.uint8
    assert abs(result.labels.mean() / 255 - gray.mean()) < 0.05


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=0), "count must be a positive integer"),
    (dict(steps=-3), "steps must be a positive integer"),
    (dict(shape=(4, 4)), "needs sides of at least"),
    (dict(layers="relu7_1"), "unknown layer"),
    (dict(shape=(0, 16)), "positive"),
])
def test_bad_requests_raise_clear_input_errors(params, kwargs, message):
    kwargs = {"shape": (16, 16), "layers": TAPS, "params": params, "widths": TINY_WIDTHS, **kwargs}
    with pytest.raises(InputError, match=message):
        R.reconstruct(blobs(), **kwargs)


@pytest.mark.parametrize("exemplar, message", [
    (np.zeros((16, 16), int), "single phase"),
    (np.full((16, 16), np.nan), "NaN"),
    (np.array([[0, 5], [5, 0]] * 8).reshape(16, 2).repeat(8, 1), "0..n-1"),
    (np.full((16, 16), 0.5), "fractional"),
])
def test_bad_exemplars_raise_clear_input_errors(params, exemplar, message):
    with pytest.raises(InputError, match=message):
        R.reconstruct(exemplar, shape=(16, 16), layers=TAPS, params=params, widths=TINY_WIDTHS)

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxmicro.reconstruction as R
from jaxmicro import statistics as st, vgg
from jaxmicro.descriptors import correlation_window
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


def test_targets_of_exemplar_give_zero_loss(params):
    config, exemplar = setup(shape=(32, 32), lineal_path_weight=1.0)  # every term
    objective = R.make_objective(config, R.make_targets(config, params, [exemplar]), {"interface": 1.0})
    logits = jax.nn.one_hot(exemplar, 2)  # decodes to the exemplar itself
    total, terms = R.make_loss(config)(params, logits, objective)
    assert set(terms) == set(R.TERM_NAMES)
    np.testing.assert_allclose(terms["gram"], 0.0, atol=1e-6)
    np.testing.assert_allclose(terms["correlation"], 0.0, atol=1e-6)
    np.testing.assert_allclose(terms["volume_fraction"], 0.0, atol=1e-7)
    np.testing.assert_allclose(terms["interface"], 0.0, atol=1e-7)
    np.testing.assert_allclose(total, 0.0, atol=1e-5)


def test_field_loss_jit_matches_eager_and_gradient_matches_finite_differences(params):
    config, exemplar = setup(n_phases=3)
    targets = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    loss = R.make_field_loss(config)
    fields = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (16, 16, 3)), axis=-1)
    eager = loss(params, fields, targets)[0]
    np.testing.assert_allclose(jax.jit(loss)(params, fields, targets)[0], eager, rtol=1e-5)
    with jax.enable_x64(True):  # float64 so that finite differences are exact enough
        config64 = config._replace(dtype=jnp.float64)

        def to64(tree):
            return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)

        params64 = to64(params)
        targets64 = R.make_objective(config64, R.make_targets(config64, params64, [exemplar]))
        loss64 = R.make_field_loss(config64)
        check_grads(lambda f: loss64(params64, f, targets64)[0], (to64(fields),), order=1, modes=["rev"],
                    eps=1e-4, atol=1e-5, rtol=1e-4)


def test_logit_gradient_is_the_straight_through_estimate(params):
    """Forward on the decoded phases; backward through the softmax Jacobian at the current probabilities."""
    config, exemplar = setup(n_phases=3)
    targets = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    logits = jax.random.normal(jax.random.PRNGKey(1), (16, 16, 3))
    decoded = jax.nn.one_hot(jnp.argmax(logits, -1), 3)

    def field_loss(f):
        return R.make_field_loss(config)(params, f, targets)[0]

    np.testing.assert_allclose(R.make_loss(config)(params, logits, targets)[0], field_loss(decoded), rtol=1e-6)
    _, softmax_vjp = jax.vjp(lambda z: jax.nn.softmax(z, -1), logits)
    expected = softmax_vjp(jax.grad(field_loss)(decoded))[0]
    actual = jax.grad(lambda z: R.make_loss(config)(params, z, targets)[0])(logits)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-7)


def test_vmapped_step_equals_loop_of_single_steps(params):
    config, exemplar = setup(short_chords_weight=1.0)
    targets = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    tx = R.make_optimizer("adam")
    step = jax.jit(R.make_step(config, tx, total_steps=10))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    states = jax.vmap(lambda k: R.init_state(config, tx, k))(keys)
    batched_targets = jax.tree.map(lambda x: jnp.stack([x] * 3), targets)
    batched, (losses, terms) = jax.vmap(step, in_axes=(None, 0, 0))(params, states, batched_targets)
    for i in range(3):
        single, (loss, single_terms) = step(params, jax.tree.map(lambda x: x[i], states), targets)
        np.testing.assert_allclose(batched.logits[i], single.logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(losses[i], loss, rtol=1e-5)
        for name in R.TERM_NAMES:
            np.testing.assert_allclose(terms[name][i], single_terms[name], rtol=1e-5, atol=1e-7)


def test_terms_without_weight_are_left_out_and_a_given_weight_brings_them_back(params):
    config, exemplar = setup()  # no lineal-path weights: neither those terms nor the lineal path are computed
    assert set(R.make_terms(config)) == set(R.TERM_NAMES) - {"lineal_path", "short_chords"}
    targets = R.make_targets(config, params, [exemplar])
    with pytest.raises(InputError, match="lineal_path weights need a configuration that holds those terms"):
        R.make_objective(config, targets, {"lineal_path": 2.0})
    result = R.reconstruct(exemplar, shape=(16, 16), count=1, steps=3, layers=TAPS, params=params, levels=1,
                           widths=TINY_WIDTHS, correlation_radius=4, polish_steps=0, lineal_path_weight=0.0,
                           short_chords_weight=0.0, weights={"short_chords": 2.0})
    assert {"lineal_path", "short_chords"} <= set(result.term_history)
    assert np.all(result.term_history["short_chords"] > 0)


def test_run_compiles_once_and_chunking_does_not_change_the_result(params):
    config, exemplar = setup()
    kwargs = dict(shape=(16, 16), count=2, steps=12, seed=3, layers=TAPS, params=params, widths=TINY_WIDTHS,
                  correlation_radius=4, polish_steps=24)
    calls = []
    whole = R.reconstruct(exemplar, chunk=12, **kwargs)
    chunked = R.reconstruct(exemplar, chunk=5, callback=lambda done, *_: calls.append(done), **kwargs)
    assert calls == [5, 10, 12]
    np.testing.assert_array_equal(whole.labels, chunked.labels)
    np.testing.assert_array_equal(whole.loss_history, chunked.loss_history)
    # 12 steps, then 24 of the network-free polish
    assert whole.loss_history.shape == (2, 12 + 24) and np.all(np.isfinite(whole.loss_history))


def test_a_second_run_with_the_same_settings_reuses_the_compiled_programs(params):
    exemplar = blobs((32, 32))
    kwargs = dict(shape=(16, 16), steps=6, seed=2, layers=TAPS, params=params, widths=TINY_WIDTHS,
                  correlation_radius=4)
    first = R.reconstruct(exemplar, **kwargs)
    kept = R._kept_run_chunk.cache_info()
    again = R.reconstruct(exemplar, **kwargs)
    # both levels found their program: nothing traced again, the same result
    assert R._kept_run_chunk.cache_info().hits == kept.hits + 2
    assert R._kept_run_chunk.cache_info().misses == kept.misses
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.loss_history, again.loss_history)
    other = R.reconstruct(exemplar, **{**kwargs, "learning_rate": 0.02})  # another step size: another program
    assert R._kept_run_chunk.cache_info().misses > kept.misses and other.labels.shape == first.labels.shape


def test_second_chunk_does_not_recompile(params):
    config, exemplar = setup(lineal_path_weight=1.0)
    tx = R.make_optimizer("adam")
    objective = jax.tree.map(lambda x: x[None], R.make_objective(config, R.make_targets(config, params, [exemplar])))
    states = jax.vmap(lambda k: R.init_state(config, tx, k))(jax.random.split(jax.random.PRNGKey(0), 1))
    run_chunk = R.make_run_chunk(config, tx, total_steps=9, chunk=3)
    states, _ = run_chunk(params, states, objective)
    size = run_chunk._cache_size()
    # new weights and targets are data: the same compiled chunk runs them
    reweighted = objective._replace(weights={**objective.weights, "correlation": jnp.array([3.0]),
                                             "interface": jnp.array([0.5])})
    retargeted = reweighted._replace(targets={**objective.targets,
                                              "volume_fraction": objective.targets["volume_fraction"][:, ::-1]})
    for changed in (reweighted, retargeted):
        states, (losses, terms) = run_chunk(params, states, changed)
    assert run_chunk._cache_size() == size == 1
    assert int(states.step[0]) == 9
    np.testing.assert_allclose(  # the total is the weighted sum of the recorded terms
        losses, sum(retargeted.weights[n] * terms[n] for n in R.TERM_NAMES), rtol=1e-5)


def test_reconstruction_moves_towards_the_exemplar_statistics(params):
    exemplar = blobs((32, 32), fraction=0.3)
    # one level from white noise: the whole way from a start without the exemplar's statistics
    result = R.reconstruct(exemplar, shape=(32, 32), count=2, steps=150, seed=0, layers=TAPS, params=params,
                           widths=TINY_WIDTHS, correlation_radius=8, levels=1, initial="noise")
    assert result.labels.shape == (2, 32, 32) and result.labels.dtype == np.uint8
    assert np.all(result.loss_history[:, -1] < 0.01 * result.loss_history[:, 0])
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
                           params=params, widths=TINY_WIDTHS, correlation_radius=4, polish_steps=0,
                           interface_weight=0.0, lineal_path_weight=0.0, short_chords_weight=0.0)
    assert np.all(np.isfinite(result.loss_history))
    assert np.all(result.loss_history[:, -1] < result.loss_history[:, 0])


def test_non_finite_sample_is_reported_not_raised(params):
    """A sample whose step goes non-finite keeps its last finite iterate; the others carry on (the poison hits
    the samples whose first logit starts positive)."""
    config, exemplar = setup()
    poison = optax.GradientTransformation(
        lambda p: optax.EmptyState(),
        lambda u, s, p=None: (jax.tree.map(lambda g: jnp.where(p[0, 0, 0] > 0, jnp.nan, -0.1 * g), u), s),
    )
    result = R.reconstruct(exemplar, shape=(16, 16), count=4, steps=8, seed=0, optimizer=poison, layers=TAPS,
                           params=params, widths=TINY_WIDTHS, correlation_radius=4, initial="noise", levels=1)
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


def test_grayscale_starts_from_the_histogram_with_its_own_step_size(params):
    gray = (0.2 + 0.6 * blobs() + 0.02 * np.random.default_rng(1).normal(size=(32, 32))).astype(np.float32)
    run = dict(grayscale=True, shape=(16, 16), steps=4, levels=1, layers=TAPS, params=params, widths=TINY_WIDTHS,
               correlation_radius=4)
    default = R.reconstruct(gray, **run)
    np.testing.assert_array_equal(default.logits, R.reconstruct(gray, learning_rate=R.GRAYSCALE_LEARNING_RATE,
                                                                **run).logits)
    start = R.reconstruct(gray, **{**run, "steps": 1}, learning_rate=1e-9).labels[0] / 255  # the Gaussian start
    levels = (np.arange(start.size) + 0.5) / start.size
    assert np.mean(np.abs(np.sort(start.ravel()) - np.quantile(gray, levels))) < 0.005  # Wasserstein-1


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=0), "count must be a positive integer"),
    (dict(steps=-3), "steps must be a positive integer"),
    (dict(shape=(3, 3)), "needs sides of at least"),
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


def test_volume_from_a_2d_exemplar_matches_it_in_every_direction(params):
    exemplar = blobs((32, 32), fraction=0.35)
    result = R.reconstruct(exemplar, shape=(16, 16, 16), count=1, steps=80, layers=TAPS, params=params,
                           widths=TINY_WIDTHS, correlation_radius=6, levels=1, slices_per_step=16,
                           correlation_weight=10.0, initial="noise",  # one level, every slice, from noise
                           lineal_path_weight=0.0, short_chords_weight=0.0)  # (80 steps: too few for those terms)
    volume = result.labels[0]
    assert volume.shape == (16, 16, 16) and result.loss_history[0, -1] < 0.3 * result.loss_history[0, 0]
    np.testing.assert_allclose(volume.mean(), exemplar.mean(), atol=0.03)
    config = result.config
    targets = R.make_targets(config, params, [exemplar])
    assert len(targets.grams) == 3 and len(targets.correlation) == 3  # one per slicing direction


def test_volume_from_a_3d_exemplar_uses_each_direction_of_the_tomogram(params):
    layered = np.zeros((16, 16, 16), np.int32)
    layered[:, :, ::4] = 1  # planes normal to the last axis: slices normal to axis 0 and 1 see stripes
    config, images = R.make_config(layered, shape=(16, 16, 16), layers=TAPS, widths=TINY_WIDTHS,
                                   correlation_radius=4)
    targets = R.make_targets(config, params, images)
    # slices normal to axis 2 are uniform (all one phase), the two others are striped: different statistics
    assert not np.allclose(targets.correlation[2], targets.correlation[0])
    np.testing.assert_allclose(targets.correlation[0], targets.correlation[1], atol=1e-6)


def _make_gram_gradient_support(config, params, targets, fields):
    """A function of the key: which planes normal to each axis get a Gram gradient (correlation and fraction terms
    switched off), compiled once for every key."""
    loss = R.make_field_loss(config)
    gram_only = targets._replace(weights={name: float(name == "gram") for name in targets.weights})
    gradient = jax.jit(lambda key: jax.grad(lambda f: loss(params, f, gram_only, key)[0])(fields))

    def support(key):
        touched = np.asarray(jnp.abs(gradient(key)).sum(-1) > 0)
        return [np.flatnonzero(np.all(np.moveaxis(touched, d, 0), axis=(1, 2))) for d in range(3)], touched
    return support


def test_slice_sampling_sends_evenly_spaced_slices_through_the_network(params):
    config, exemplar = setup(shape=(12, 16, 16), slices_per_step=4)
    targets = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    fields = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (12, 16, 16, 2)), -1)
    full = R.make_field_loss(config)(params, fields, targets)[0]
    every_slice = R.make_field_loss(config._replace(slices_per_step=None))(params, fields, targets)[0]
    np.testing.assert_allclose(full, every_slice, rtol=1e-6)  # no key: every slice counts
    visited = [set(), set(), set()]
    gram_gradient_support = _make_gram_gradient_support(config, params, targets, fields)
    for step in range(6):
        planes, touched = gram_gradient_support(jax.random.PRNGKey(step))
        for d, size in enumerate(config.shape):
            assert len(planes[d]) == 4 and np.all(np.diff(np.sort(planes[d])) >= size // 4 - 1)
            visited[d].update(planes[d].tolist())
        # a voxel outside every sampled plane gets no Gram gradient
        hit = np.zeros(config.shape, bool)
        hit[planes[0]] = True
        hit[:, planes[1]] = True
        hit[:, :, planes[2]] = True
        np.testing.assert_array_equal(touched, hit)
    assert all(len(v) >= 8 for v in visited), visited  # the offset moves from step to step
    sampled = R.make_field_loss(config)(params, fields, targets, jax.random.PRNGKey(0))[0]
    assert np.isfinite(sampled) and abs(float(sampled) - float(full)) < 0.5 * float(full)


def test_volume_with_slice_sampling_converges_and_resumes_identically(params):
    exemplar = blobs((32, 32), fraction=0.35)
    options = dict(shape=(16, 16, 16), count=1, steps=60, layers=TAPS, params=params, widths=TINY_WIDTHS,
                   correlation_radius=6, slices_per_step=3, levels=1, correlation_weight=10.0, initial="noise",
                   lineal_path_weight=0.0, short_chords_weight=0.0)  # (60 steps: too few for those terms)
    whole = R.reconstruct(exemplar, chunk=60, **options)
    chunked = R.reconstruct(exemplar, chunk=20, **options)
    np.testing.assert_array_equal(whole.labels, chunked.labels)  # the sampled slices depend on the step only
    assert whole.loss_history[0, -1] < 0.3 * whole.loss_history[0, 0]
    np.testing.assert_allclose(whole.labels[0].mean(), exemplar.mean(), atol=0.03)


def test_schedule_defaults_by_dimension_and_size():
    image = blobs((64, 64))
    assert R.resolve_schedule(image, shape=(64, 64)) == R.IMAGE_SCHEDULE
    assert R.resolve_schedule(image, shape=(64, 64, 64)) == R.VOLUME_SCHEDULE
    # given values win; coarse steps keep the schedule's proportion to the given steps
    assert R.resolve_schedule(image, steps=300)["coarse_steps"] == 600
    assert "polish_steps" not in R.resolve_schedule(image, steps=300)  # the label swaps replaced it
    assert R.resolve_schedule(image, polish_steps=50)["polish_steps"] == 50
    assert "polish_steps" not in R.resolve_schedule(image, grayscale=True, steps=300)
    for shape in ((64, 64), (32, 32, 32)):  # grayscale: autocovariances, their own two-point weight
        assert R.resolve_schedule(image, shape=shape, grayscale=True)["correlation_weight"] == \
            R.GRAYSCALE_CORRELATION_WEIGHT
    assert R.resolve_schedule(image, shape=(32, 32, 32), steps=50)["coarse_steps"] == 100
    assert R.resolve_schedule(image, levels=1, correlation_weight=3.0) == {
        **R.IMAGE_SCHEDULE, "levels": 1, "correlation_weight": 3.0}
    # default levels shrink to what the network can see (relu3_1 needs 8 pixels); given ones that cannot raise
    assert R.resolve_schedule(image, shape=(16, 16, 16))["levels"] == 2
    assert R.resolve_schedule(image, shape=(8, 8))["levels"] == 1
    with pytest.raises(InputError, match="levels=3 is too many"):
        R.resolve_schedule(image, shape=(16, 16), levels=3)


def test_default_two_point_window_reaches_every_distance_the_report_judges():
    config, _ = R.make_config(blobs((32, 32)), shape=(16, 16), layers=TAPS)
    assert config.correlation_radius == st.default_max_distance((16, 16)) == 8  # report.compare's 0..8
    displacement_map = jnp.arange(16 * 16).reshape(16, 16, 1)  # entry = the flat index of its displacement
    window = correlation_window(displacement_map, config.correlation_radius)
    centre = config.correlation_radius
    for dy, dx in [(0, 8), (8, 0), (8, 8), (-3, 5)]:  # half-side ones (the old radius, 7, missed them), one inside
        assert window[centre + dy, centre + dx, 0] == displacement_map[dy % 16, dx % 16, 0]


def stripes(widths, size=12):
    """Vertical stripes of phases 0, 1, ... with the given widths, repeated across ``size`` columns."""
    row = np.concatenate([np.full(w, phase) for phase, w in enumerate(widths)])
    return np.tile(np.resize(row, size), (size, 1))


def test_finest_feature_is_the_smallest_mean_chord_length():
    # 12x12, stripes 2 and 4 wide: across, 24 chords of 2 (phase 0) and 24 of 4; along, 4 and 8 whole columns
    # of 12. Phase 0: (24*2 + 4*12) / 28; phase 1: (24*4 + 8*12) / 32 = 6.
    assert R.finest_feature(stripes((2, 4))) == pytest.approx((24 * 2 + 4 * 12) / 28)


def test_default_levels_do_not_subsample_below_the_finest_feature():
    fine, coarse = stripes((2, 4), 48), stripes((12, 12), 48)  # finest features 3.4 and 12 pixels
    assert R.resolve_schedule(coarse, shape=(32, 32, 32))["levels"] == 3  # subsampled by 4 at the coarsest
    assert R.resolve_schedule(fine, shape=(32, 32, 32))["levels"] == 2  # by 4 would lose the 2-pixel stripes
    assert R.resolve_schedule(fine, shape=(32, 32, 32), levels=3)["levels"] == 3  # a given number stands


def test_2d_output_from_a_3d_exemplar_is_refused(params):
    with pytest.raises(InputError, match="3D output"):
        R.make_config(np.random.default_rng(0).integers(0, 2, (16, 16, 16)), shape=(16, 16), layers=TAPS,
                      widths=TINY_WIDTHS)


@pytest.mark.real_weights
@pytest.mark.slow
def test_real_network_reconstructs_a_shared_microstructure(real_params):
    """End to end with the real normalised VGG19 on a real image: statistics match, and it is not a copy."""
    from jaxmicro import report

    from conftest import shared_image

    exemplar = shared_image("li2018_ceramics_2d_256.npy").astype(np.int32)
    taps = vgg.resolve_taps("shallow")
    params = jax.tree.map(jnp.asarray, {k: real_params[k] for k in vgg.convs_needed(taps)})
    result = R.reconstruct(exemplar, shape=(64, 64), count=2, steps=150, seed=0, layers=taps, params=params)
    comparison = report.compare(exemplar, list(result.labels))
    for entry in comparison["reconstructions"]:
        assert entry["volume_fraction_error"] < 0.02
        assert entry["s2_max_abs_error"] < 0.06
        assert entry["copy_agreement"] < comparison["reconstructions"][0]["copy_baseline"] + 0.2
    assert np.all(result.undecided_fraction < 0.1)


def test_coarse_to_fine_interpolates_the_logits_of_images_and_volumes(params):
    # a step size of 1e-9 leaves every level at its start: the full size starts from the coarse result, upsampled
    kwargs = dict(count=1, seed=0, layers=TAPS, params=params, widths=TINY_WIDTHS, initial="noise",
                  learning_rate=1e-9, polish_steps=0, cleanup=False)
    for exemplar, shape in ((blobs((32, 32), fraction=0.3), (16, 16)), (blobs((16, 16, 16), fraction=0.3), (8, 8, 8))):
        half = tuple(s // 2 for s in shape)
        coarse = R.reconstruct([R.subsample(exemplar)], shape=half, levels=1, steps=3, **kwargs)
        fine = R.reconstruct(exemplar, shape=shape, levels=2, coarse_steps=3, steps=1, **kwargs)
        expected = jax.image.resize(coarse.logits, (1, *shape, 2), "linear")
        np.testing.assert_allclose(fine.logits, expected, atol=1e-5)
        blocks = np.asarray(fine.labels[0]).reshape(*[n for s in half for n in (s, 2)])
        first = blocks[(slice(None), slice(0, 1)) * len(shape)]
        assert not np.all(blocks == first, axis=tuple(range(1, 2 * len(shape), 2))).all()  # no 2^d blocks


def test_coarse_to_fine_starts_the_full_size_from_the_coarse_result(params):
    exemplar = blobs((32, 32), fraction=0.3)
    kwargs = dict(shape=(16, 16), count=2, steps=20, seed=0, layers=TAPS, params=params, widths=TINY_WIDTHS,
                  initial="noise", interface_weight=0.0, lineal_path_weight=0.0, short_chords_weight=0.0)
    # both from noise, with the terms that read the network and the correlations: the coarse level is what differs
    cold = R.reconstruct(exemplar, levels=1, **kwargs)
    warm = R.reconstruct(exemplar, levels=2, coarse_steps=60, **kwargs)
    assert warm.labels.shape == (2, 16, 16) and warm.logits.shape == (2, 16, 16, 2)
    assert np.all(warm.loss_history[:, 0] < cold.loss_history[:, 0])
    with pytest.raises(InputError, match="needs sides of at least"):
        R.reconstruct(exemplar, levels=4, **kwargs)

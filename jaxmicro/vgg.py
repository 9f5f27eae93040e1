"""The VGG19 convolution stack in Flax (NHWC), with named taps and pruning to the deepest tap.

Taps are the names of the original network: ``conv1_1`` ... ``conv5_4``, their ReLUs ``relu1_1`` ...
``relu5_4`` and ``pool1`` ... ``pool5``. The stack stops after the deepest requested tap: the layers below it are
never built, so a pruned network (Li et al. 2018) spends no compute and needs no weights for them.
"""

from __future__ import annotations

import functools
from typing import Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.errors import InputError
from jaxmicro.weights import MEAN_BGR

BLOCK_DEPTHS = (2, 2, 4, 4, 4)
VGG19_WIDTHS = (64, 128, 256, 512, 512)


def _layer_sequence() -> tuple[tuple[str, str], ...]:
    layers = []
    for block, depth in enumerate(BLOCK_DEPTHS, start=1):
        for index in range(1, depth + 1):
            layers += [(f"conv{block}_{index}", "conv"), (f"relu{block}_{index}", "relu")]
        layers.append((f"pool{block}", "pool"))
    return tuple(layers)


LAYER_SEQUENCE = _layer_sequence()
TAP_NAMES = tuple(name for name, _ in LAYER_SEQUENCE)
CONV_NAMES = tuple(name for name, kind in LAYER_SEQUENCE if kind == "conv")

# Named tap sets. Weights are per tap; the loss divides each Gram difference by the exemplar's Gram norm, so equal
# weights mean equal relative importance.
TAP_SETS = {
    # MCRpy 0.2.0's GramMatrices descriptor.
    "mcrpy": ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4"),
    # Gatys et al. 2015 texture synthesis.
    "gatys": ("conv1_1", "pool1", "pool2", "pool3", "pool4"),
    # jaxmicro's default: the network pruned after conv3_1. Li et al. 2018 report that shallow layers carry the
    # short-range features; the two-point-correlation term of the loss carries the long-range ones. About 29 %
    # of the FLOPs of MCRpy's set (REFERENCE.md section 4: 3.7 of 12.7 GFLOP at 128x128).
    "default": ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1"),
    # Cheapest useful set, for quick looks and tests.
    "shallow": ("relu1_2", "relu2_2"),
}


def resolve_taps(taps: str | Sequence[str]) -> tuple[str, ...]:
    """A named tap set or a sequence of tap names -> tap names in network order, validated."""
    if isinstance(taps, str):
        if taps in TAP_SETS:
            taps = TAP_SETS[taps]
        else:
            taps = tuple(t.strip() for t in taps.split(",") if t.strip())
    taps = tuple(taps)
    unknown = [t for t in taps if t not in TAP_NAMES]
    if unknown or not taps:
        raise InputError(
            f"unknown layer name(s) {unknown or taps!r}. Use a set name ({', '.join(TAP_SETS)}) or names from "
            f"conv1_1..conv5_4, relu1_1..relu5_4, pool1..pool5, e.g. 'relu1_2,relu2_2,relu3_4'."
        )
    return tuple(sorted(set(taps), key=TAP_NAMES.index))


def layers_needed(taps: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The prefix of the layer sequence that ends at the deepest tap."""
    deepest = max(TAP_NAMES.index(t) for t in taps)
    return LAYER_SEQUENCE[: deepest + 1]


def convs_needed(taps: Sequence[str]) -> tuple[str, ...]:
    """Names of the convolutions whose weights the pruned network needs."""
    return tuple(name for name, kind in layers_needed(taps) if kind == "conv")


def pooling_count(taps: Sequence[str]) -> int:
    """How many 2x2 poolings lie before the deepest tap (the image must survive them)."""
    return sum(kind == "pool" for _, kind in layers_needed(taps))


def minimum_side(taps: Sequence[str]) -> int:
    """Smallest image side that leaves at least a 2x2 feature map at the deepest tap."""
    return 2 ** (pooling_count(taps) + 1)


def widths_by_conv(widths: Sequence[int]) -> dict[str, int]:
    return {f"conv{b}_{i}": widths[b - 1] for b, d in enumerate(BLOCK_DEPTHS, 1) for i in range(1, d + 1)}


MATMUL_MIN_CHANNELS = 16


PRODUCTS = ("auto", "float32", "bfloat16")


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether the CPU reports AMX bfloat16 tiles (Linux), where XLA's bfloat16 matrix products run several times
    faster than float32 ones (docs/results.md)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in cpuinfo)
    except OSError:
        return False


def _resolve_products(products: str, as_matmul: bool) -> str:
    """``"auto"``: bfloat16 products for a convolution computed as a matrix product on a CPU with AMX, float32
    elsewhere."""
    if products not in PRODUCTS:
        raise InputError(f"products={products!r} is not one of {', '.join(map(repr, PRODUCTS))}.")
    if products == "bfloat16" and not as_matmul:
        raise InputError("products='bfloat16' needs the matrix-product convolutions (convolution='matmul', or "
                         "'auto' on a CPU); for bfloat16 with XLA's convolution (a GPU) use dtype='bfloat16'.")
    if products == "auto":
        return "bfloat16" if as_matmul and cpu_has_amx() else "float32"
    return products


def _einsum_bfloat16(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)


@jax.custom_vjp
def _bfloat16_product(patches: jax.Array, kernel: jax.Array) -> jax.Array:
    """float32 ``patches @ kernel`` from bfloat16 inputs, both ways: the input gradient is the same kind of product
    (JAX's own transpose would be a float32 product)."""
    return _einsum_bfloat16("...k,ko->...o", patches, kernel)


def _bfloat16_product_forward(patches, kernel):
    return _bfloat16_product(patches, kernel), (patches.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))


def _bfloat16_product_backward(residuals, cotangent):
    patches, kernel = residuals  # unused results (the kernel's gradient in a reconstruction) are compiled away
    return _einsum_bfloat16("...o,ko->...k", cotangent, kernel), _einsum_bfloat16("...k,...o->ko", patches, cotangent)


_bfloat16_product.defvjp(_bfloat16_product_forward, _bfloat16_product_backward)


def _convolution_as_matmul(convolution: str, out_channels: int) -> bool:
    """``"auto"``: a matrix product on CPU for layers of at least ``MATMUL_MIN_CHANNELS`` output channels (all of
    VGG19's); on narrower ones (small test networks) it saves nothing and doubles the compilation time."""
    if convolution not in ("auto", "direct", "matmul"):
        raise InputError(f"convolution={convolution!r} is not one of 'auto', 'direct', 'matmul'.")
    return convolution == "matmul" or (convolution == "auto" and jax.default_backend() == "cpu"
                                       and out_channels >= MATMUL_MIN_CHANNELS)


class Conv3x3(nn.Module):
    """3x3 convolution, stride 1, output the size of the input; parameters ``kernel`` (3, 3, Cin, Cout), ``bias``.

    ``as_matmul`` computes it as one matrix product of the nine shifted copies of the input with the kernel
    (im2col): on CPU, XLA runs that product and its input gradient about twice as fast as its convolution
    (docs/results.md), for 9x the memory of the input. Otherwise it is XLA's convolution (cuDNN on GPU).
    ``products="bfloat16"`` (matrix products, float32 ``dtype``) rounds the product's inputs to bfloat16 and keeps a
    float32 result and float32 activations, both ways: on a CPU with AMX a whole step runs about a sixth faster.
    """

    features: int
    periodic: bool
    as_matmul: bool
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    precision: jax.lax.Precision | None
    products: str = "float32"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features),
                            self.param_dtype).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        height, width = x.shape[-3:-1]
        padded = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)],
                         mode="wrap" if self.periodic else "constant")
        if self.as_matmul:
            shifted = jnp.concatenate(
                [padded[..., i:i + height, j:j + width, :] for i in range(3) for j in range(3)], axis=-1)
            if self.products == "bfloat16" and jnp.dtype(self.dtype) == jnp.float32:
                out = _bfloat16_product(shifted, kernel.reshape(-1, self.features))
            else:
                out = jnp.einsum("...k,ko->...o", shifted, kernel.reshape(-1, self.features),
                                 precision=self.precision)
        else:
            out = jax.lax.conv_general_dilated(padded, kernel, (1, 1), "VALID", precision=self.precision,
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + bias


class VGG19Features(nn.Module):
    """VGG19 feature extractor: preprocessed BGR image ``(B, H, W, 3)`` -> ``{tap: (B, H', W', C)}``.

    ``param_dtype`` is the storage dtype (float32); ``dtype`` the compute dtype (float32 or bfloat16);
    ``precision`` the matmul/conv precision. ``convolution``: ``"direct"`` (XLA's convolution), ``"matmul"``
    (one matrix product per layer, see ``Conv3x3``) or ``"auto"`` (matmul on CPU for layers of 16 or more output
    channels, direct elsewhere); the results agree to rounding. ``products``: ``"float32"``, ``"bfloat16"`` (the
    convolutions' inputs rounded to bfloat16, float32 results, see ``Conv3x3``) or ``"auto"`` (bfloat16 for the
    matrix-product convolutions on a CPU with AMX, float32 elsewhere). ``widths`` other than VGG19's give a small
    random-weight network of the same shape of computation, for tests.
    """

    taps: tuple[str, ...]
    pooling: Literal["average", "max"] = "average"
    padding: Literal["periodic", "zero"] = "periodic"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision | None = None
    widths: tuple[int, ...] = VGG19_WIDTHS
    convolution: Literal["auto", "direct", "matmul"] = "auto"
    products: Literal["auto", "float32", "bfloat16"] = "float32"

    @nn.compact
    def __call__(self, x):
        widths = widths_by_conv(self.widths)
        outputs = {}
        x = x.astype(self.dtype)
        for name, kind in layers_needed(self.taps):
            if kind == "conv":
                as_matmul = _convolution_as_matmul(self.convolution, widths[name])
                x = Conv3x3(widths[name], self.padding == "periodic", as_matmul, self.dtype, self.param_dtype,
                            self.precision, _resolve_products(self.products, as_matmul), name=name)(x)
            elif kind == "relu":
                x = nn.relu(x)
            elif self.pooling == "average":
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            if name in self.taps:
                outputs[name] = x
        return outputs


def preprocess(rgb: jax.Array) -> jax.Array:
    """RGB in 0..255 ``(..., 3)`` -> the input convention of the normalised VGG19: BGR minus the ImageNet mean."""
    return rgb[..., ::-1] - jnp.asarray(MEAN_BGR)


def random_params(key: jax.Array, taps: Sequence[str], widths: Sequence[int] = VGG19_WIDTHS) -> dict:
    """He-initialised weights for the convolutions the taps need (for tests and speed runs, not for quality)."""
    conv_widths = widths_by_conv(widths)
    params, channels = {}, 3
    for name in convs_needed(taps):
        key, subkey = jax.random.split(key)
        out = conv_widths[name]
        scale = np.sqrt(2.0 / (9 * channels)) / (255.0 if channels == 3 else 1.0)
        params[name] = {
            "kernel": jax.random.normal(subkey, (3, 3, channels, out), jnp.float32) * scale,
            "bias": jnp.full((out,), 0.1, jnp.float32),
        }
        channels = out
    return params


def gram_matrix(features: jax.Array) -> jax.Array:
    """Gram matrix of one feature map ``(H, W, C)`` -> ``(C, C)`` = F^T F / (H W), accumulated in at least float32."""
    flat = features.reshape(-1, features.shape[-1])
    gram = jnp.einsum("pc,pd->cd", flat, flat, preferred_element_type=jnp.promote_types(flat.dtype, jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
    return gram / flat.shape[0]


def flops_per_image(shape: Sequence[int], taps: Sequence[str], widths: Sequence[int] = VGG19_WIDTHS) -> float:
    """Forward convolution FLOPs (2 H W Cin Cout 9 per layer) of one ``(H, W)`` image up to the deepest tap."""
    conv_widths = widths_by_conv(widths)
    h, w = shape
    channels, total = 3, 0.0
    for name, kind in layers_needed(taps):
        if kind == "conv":
            total += 2.0 * h * w * channels * conv_widths[name] * 9
            channels = conv_widths[name]
        elif kind == "pool":
            h, w = h // 2, w // 2
    return total

"""Learned property heads: small Flax MLPs on fixed features whose output is a symmetric positive-definite
conductivity tensor or stiffness inside the Voigt/Reuss bounds of the sample's phase fractions by construction.

The head predicts, in units of the sample's bounds (``U``, see ``jaxmicro.surrogate.properties``), eigenvalues
``s_i = sigmoid(z_i)`` in (0, 1) and their principal directions (conductivity in 2D: a unit vector
``(cos 2a, sin 2a)``; in 3D: a rotation from two vectors by Gram-Schmidt; stiffness: the orthogonal factor of
identity plus a skew matrix), so every prediction lies strictly between the Reuss and Voigt tensors, for any
parameters and any input.
An ensemble of ``members`` heads is one pytree with a leading member axis, trained and applied with ``jax.vmap``;
its spread is the uncertainty, and its mean stays inside the bounds (the set is convex).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.surrogate.properties import PropertySpec, symmetric_unit, tensor_size

HEADS = ("gram", "twopoint", "cnn")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Architecture of a head: hidden widths, ensemble size, dimension, feature reduction (PCA components)."""

    head: str = "gram"
    hidden: tuple[int, ...] = (256, 256)
    members: int = 4
    dim: int = 2
    components: int = 0  # PCA components of the features (0: none)
    shape: tuple[int, ...] = ()  # image shape, for the end-to-end CNN
    channels: tuple[int, ...] = (16, 32, 32)  # CNN widths (one 3x3 convolution and a 2x2 pooling each)
    property: str = "conductivity"  # or "stiffness" (jaxmicro.surrogate.properties)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {k: list(getattr(self, k)) for k in ("hidden", "shape", "channels")}

    @classmethod
    def from_json(cls, data: dict) -> "HeadConfig":
        return cls(**{k: tuple(v) if k in ("hidden", "shape", "channels") else v for k, v in data.items()})


def output_size(config: HeadConfig) -> int:
    if config.property == "conductivity":
        return config.dim + (2 if config.dim == 2 else 6)
    m = tensor_size(config.property, config.dim)
    return m * (m + 1) // 2


class MLP(nn.Module):
    hidden: tuple[int, ...]
    outputs: int

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.gelu(nn.Dense(width)(x))
        return nn.Dense(self.outputs, kernel_init=nn.initializers.variance_scaling(0.1, "fan_in", "normal"))(x)


class CNN(nn.Module):
    """The end-to-end baseline: phase-1 indicator (flattened, fraction appended) -> periodic 3x3 convolutions
    with 2x2 average pooling -> global mean -> MLP."""

    shape: tuple[int, ...]
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    outputs: int

    @nn.compact
    def __call__(self, x):
        image, fraction = x[..., :-1].reshape(x.shape[:-1] + tuple(self.shape) + (1,)), x[..., -1:]
        for width in self.channels:
            image = jnp.pad(image, [(0, 0)] * (image.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="wrap")
            image = nn.gelu(nn.Conv(width, (3, 3), padding="VALID")(image))
            image = nn.avg_pool(image, (2, 2), strides=(2, 2))
        return MLP(self.hidden, self.outputs)(jnp.concatenate([image.mean(axis=(-3, -2)), fraction], -1))


def unit_tensor(raw: jax.Array, dim: int) -> jax.Array:
    """Raw head outputs ``(..., output_size)`` -> symmetric ``(..., d, d)`` with eigenvalues in (0, 1)."""
    s = jax.nn.sigmoid(raw[..., :dim])
    if dim == 2:
        c, n = raw[..., 2], raw[..., 3]
        norm = jnp.sqrt(c**2 + n**2 + 1e-6)
        c, n = c / norm, n / norm  # (cos 2a, sin 2a)
        mean, half = (s[..., 0] + s[..., 1]) / 2, (s[..., 0] - s[..., 1]) / 2
        return jnp.stack([jnp.stack([mean + half * c, half * n], -1), jnp.stack([half * n, mean - half * c], -1)],
                         -2)
    a, b = raw[..., 3:6] + jnp.array([1.0, 0, 0]), raw[..., 6:9] + jnp.array([0, 1.0, 0])
    e1 = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = b - jnp.sum(e1 * b, -1, keepdims=True) * e1
    e2 = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-9)
    e3 = jnp.cross(e1, e2)
    rotation = jnp.stack([e1, e2, e3], -1)
    return jnp.einsum("...ik,...k,...jk->...ij", rotation, s, rotation)


def make_head(config: HeadConfig):
    """``(init, apply)``: ``init(key, n_inputs) -> params`` (leading member axis);
    ``apply(params, inputs (B, F)) -> unit tensors (members, B, m, m)``."""
    module = (CNN(tuple(config.shape), tuple(config.channels), tuple(config.hidden), output_size(config))
              if config.head == "cnn" else MLP(tuple(config.hidden), output_size(config)))

    def init(key, n_inputs):
        keys = jax.random.split(key, config.members)
        return jax.vmap(lambda k: module.init(k, jnp.zeros((1, n_inputs), jnp.float32))["params"])(keys)

    def apply(params, inputs):
        if config.head == "cnn":  # XLA's CPU convolution with a member axis of weights was 2.6x slower than this
            raw = jnp.stack([module.apply({"params": jax.tree.map(lambda a: a[m], params)}, inputs)
                             for m in range(config.members)])
        else:
            raw = jax.vmap(lambda p: module.apply({"params": p}, inputs))(params)
        if config.property == "conductivity":
            return unit_tensor(raw, config.dim)
        return symmetric_unit(raw, tensor_size(config.property, config.dim))

    return init, apply


def reduce_features(features: jax.Array, normaliser: dict) -> jax.Array:
    """Standardised (and PCA-reduced) features."""
    x = (features - normaliser["mean"]) / normaliser["scale"]
    return x @ normaliser["projection"] if "projection" in normaliser else x


def with_fraction(reduced: jax.Array, fractions: jax.Array) -> jax.Array:
    """The head's input: reduced features with the phase-1 fraction appended (it sets the bounds)."""
    return jnp.concatenate([reduced, 2.0 * fractions[..., 1:] - 1.0], axis=-1)


def head_inputs(features: jax.Array, fractions: jax.Array, normaliser: dict) -> jax.Array:
    return with_fraction(reduce_features(features, normaliser), fractions)


def fit_normaliser(features: np.ndarray, components: int = 0) -> dict[str, np.ndarray]:
    """Feature means and scales (and the top ``components`` principal directions) of the training features."""
    mean = features.mean(0)
    scale = features.std(0) + 1e-6 * (np.abs(features).mean() + 1e-12)
    normaliser = {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}
    if components:
        centred = (features - mean) / scale
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        k = min(components, vt.shape[0])
        normaliser["projection"] = (vt[:k].T / (singular[:k] / np.sqrt(len(features)) + 1e-6)).astype(np.float32)
    return normaliser


def predict_tensors(apply, params, inputs, fractions, prop: PropertySpec, dim: int):
    """Members' tensors ``(members, B, m, m)`` in the property's units, from the head's ``inputs``
    (``head_inputs``)."""
    return prop.to_tensor(apply(params, inputs), *prop.bounds(fractions, dim), dim)

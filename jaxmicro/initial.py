"""Starting fields of a reconstruction: white noise, or a Gaussian random field with the exemplar's two-point
statistics, thresholded to its phase fractions.

The Gaussian start costs a few FFTs and already has the exemplar's fractions and (to the accuracy of a level cut)
its correlation lengths, so the optimiser's steps go into the higher-order structure instead of first growing
features out of noise.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.statistics import phase_indicators, two_point_correlation

INITIAL_FIELDS = ("gaussian", "noise")
LOGIT_MARGIN = 1.0  # logits of the chosen phase above the others at the start: a few dozen Adam steps to flip


def _signed(size: int) -> np.ndarray:
    """Displacements of a periodic axis in FFT order: 0, 1, .., -2, -1."""
    index = np.arange(size)
    return np.where(index <= size // 2, index, index - size)


def _along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A 1D array shaped to broadcast along ``axis`` of an ``ndim``-dimensional grid."""
    return vector.reshape([-1 if a == axis else 1 for a in range(ndim)])


def autocovariance(exemplars: Sequence[np.ndarray], n_phases: int, shape: Sequence[int]) -> np.ndarray:
    """``(n, *shape)`` autocovariance ``S2_i(r) - f_i^2`` of each phase indicator on the periodic output grid.

    An exemplar of the output's dimension gives it displacement by displacement (zero beyond half its side); 2D
    exemplars of a volume give it through their radial profile, ``C(|r|)`` (isotropic).
    """
    maps = []
    for labels in exemplars:
        indicators = phase_indicators(np.asarray(labels), n_phases)
        fractions = np.asarray(jnp.mean(indicators.reshape(-1, n_phases), axis=0))
        s2 = np.asarray(two_point_correlation(indicators)) - fractions**2  # (*exemplar shape, n)
        if labels.ndim == len(shape):
            picked = s2[np.ix_(*[_signed(size) % side for size, side in zip(shape, labels.shape)])]
            inside = np.ones(tuple(shape), bool)  # displacements the exemplar holds; beyond them no correlation
            for axis, (size, side) in enumerate(zip(shape, labels.shape)):
                inside &= _along(np.abs(_signed(size)) <= side // 2, axis, len(shape))
            maps.append(picked * inside[..., None])
        else:
            radius = min(labels.shape) // 2
            profile = np.mean([np.take(np.take(s2, 0, axis=1 - a), np.arange(radius + 1), axis=0)
                               for a in range(2)], axis=0)  # (radius + 1, n) along both axes
            distance = np.sqrt(sum(_along(np.square(_signed(s)), k, len(shape)) for k, s in enumerate(shape)))
            maps.append(np.stack([np.interp(distance, np.arange(radius + 1), profile[:, i], right=0.0)
                                  for i in range(n_phases)], axis=-1))
    return np.moveaxis(np.mean(maps, axis=0), -1, 0).astype(np.float32)


def level_cut_correlation(covariance: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """The correlation ``rho(r)`` of a unit Gaussian field whose level cut at ``Phi^-1(1 - f)`` has the indicator
    autocovariance ``covariance`` ``(n, *shape)``, phase by phase.

    A level cut of a Gaussian field with correlation ``rho`` has the autocovariance
    ``C(rho) = (1 / 2 pi) int_0^asin(rho) exp(-t^2 / (1 + sin a)) da``; this inverts it by table. Filtering
    noise with the indicator's own covariance would give a rough field and a speckled cut (that covariance has a
    cusp at 0); the inverted one gives smooth interfaces with the exemplar's feature size.
    """
    from statistics import NormalDist

    angle = np.linspace(-np.pi / 2, np.pi / 2, 4001)
    out = np.empty_like(covariance, dtype=np.float64)
    for phase, fraction in enumerate(np.clip(fractions, 1e-6, 1 - 1e-6)):
        level = NormalDist().inv_cdf(1.0 - float(fraction))
        density = np.exp(-level**2 / np.maximum(1.0 + np.sin(angle), 1e-12)) / (2 * np.pi)
        table = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(angle))])
        table -= np.interp(0.0, angle, table)  # C(rho = 0) = 0
        out[phase] = np.interp(covariance[phase], table, np.sin(angle))
    return out.astype(np.float32)


def gaussian_labels(key: jax.Array, correlation: jax.Array, fractions: jax.Array, iterations: int = 100) -> jax.Array:
    """Phase labels ``(*shape)`` of one sample from ``(n, *shape)`` field correlations (``level_cut_correlation``)
    and ``(n,)`` fractions.

    One Gaussian field per phase with that correlation (white noise filtered by the square root of its power
    spectrum); each pixel takes the phase of the largest field plus a per-phase offset, and the
    offsets are adjusted until the phase fractions match.
    """
    n = correlation.shape[0]
    spatial = tuple(range(1, correlation.ndim))
    spectrum = jnp.sqrt(jnp.maximum(jnp.fft.fftn(correlation, axes=spatial).real, 0.0))
    noise = jax.random.normal(key, correlation.shape, jnp.float32)
    fields = jnp.fft.ifftn(spectrum * jnp.fft.fftn(noise, axes=spatial), axes=spatial).real
    fields = (fields - fields.mean(spatial, keepdims=True)) / (fields.std(spatial, keepdims=True) + 1e-12)
    expand = (slice(None),) + (None,) * len(spatial)

    def adjust(offsets, _):
        labels = jnp.argmax(fields + offsets[expand], axis=0)
        share = jnp.mean(jax.nn.one_hot(labels, n, axis=0), axis=spatial)
        return offsets + (fractions - share) / jnp.sqrt(fractions * (1 - fractions) + 1e-3), None

    offsets, _ = jax.lax.scan(adjust, jnp.zeros(n, jnp.float32), None, length=iterations)
    return jnp.argmax(fields + offsets[expand], axis=0)


def gaussian_logits(key: jax.Array, correlation: jax.Array, fractions: jax.Array,
                    margin: float = LOGIT_MARGIN) -> jax.Array:
    """Logits ``(*shape, n)`` of one sample that decode to ``gaussian_labels``: ``margin`` on the chosen phase."""
    labels = gaussian_labels(key, correlation, fractions)
    return margin * jax.nn.one_hot(labels, correlation.shape[0], dtype=jnp.float32)


def field_correlation(exemplars: Sequence[np.ndarray], n_phases: int, shape: Sequence[int]) -> np.ndarray:
    """``(n, *shape)`` correlations of the Gaussian fields whose level cuts start a reconstruction."""
    fractions = np.mean([np.bincount(np.asarray(e).ravel(), minlength=n_phases) / np.size(e) for e in exemplars], 0)
    correlation = level_cut_correlation(autocovariance(exemplars, n_phases, shape), fractions)
    # The inversion amplifies the exemplar's sampling noise at long range; a cos^2 taper to zero at half the
    # side keeps the power spectrum from filling with high frequencies (chords would come out too short).
    distance = np.sqrt(sum(_along(np.square(_signed(s)), k, len(shape)) for k, s in enumerate(shape)))
    reach = min(shape) / 2
    return correlation * np.where(distance < reach, np.cos(np.pi * distance / (2 * reach)) ** 2, 0.0)

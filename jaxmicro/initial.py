"""Starting fields of a reconstruction: white noise, or a Gaussian random field with the exemplar's two-point
statistics, thresholded to its phase fractions (grayscale: mapped onto its intensity histogram).

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


def _covariance_on_grid(fields: Sequence[np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """``(c, *shape)`` autocovariance of each channel of ``(*exemplar shape, c)`` fields on the periodic output
    grid, averaged over the exemplars.

    An exemplar of the output's dimension gives it displacement by displacement (zero beyond half its side); 2D
    exemplars of a volume give it through their radial profile, ``C(|r|)`` (isotropic).
    """
    maps = []
    for field in fields:
        field = np.asarray(field, np.float32)
        channels = field.shape[-1]
        mean = np.asarray(jnp.mean(field.reshape(-1, channels), axis=0))
        covariance = np.asarray(two_point_correlation(field)) - mean**2  # (*exemplar shape, c)
        if field.ndim - 1 == len(shape):
            picked = covariance[np.ix_(*[_signed(size) % side for size, side in zip(shape, field.shape)])]
            inside = np.ones(tuple(shape), bool)  # displacements the exemplar holds; beyond them no correlation
            for axis, (size, side) in enumerate(zip(shape, field.shape)):
                inside &= _along(np.abs(_signed(size)) <= side // 2, axis, len(shape))
            maps.append(picked * inside[..., None])
        else:
            radius = min(field.shape[:-1]) // 2
            profile = np.mean([np.take(np.take(covariance, 0, axis=1 - a), np.arange(radius + 1), axis=0)
                               for a in range(2)], axis=0)  # (radius + 1, c) along both axes
            distance = np.sqrt(sum(_along(np.square(_signed(s)), k, len(shape)) for k, s in enumerate(shape)))
            maps.append(np.stack([np.interp(distance, np.arange(radius + 1), profile[:, i], right=0.0)
                                  for i in range(channels)], axis=-1))
    return np.moveaxis(np.mean(maps, axis=0), -1, 0).astype(np.float32)


def autocovariance(exemplars: Sequence[np.ndarray], n_phases: int, shape: Sequence[int]) -> np.ndarray:
    """``(n, *shape)`` autocovariance ``S2_i(r) - f_i^2`` of each phase indicator on the periodic output grid
    (``_covariance_on_grid``)."""
    return _covariance_on_grid([phase_indicators(np.asarray(e), n_phases) for e in exemplars], shape)


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


def gaussian_fields(key: jax.Array, correlation: jax.Array) -> jax.Array:
    """``(c, *shape)`` unit Gaussian fields with the ``(c, *shape)`` correlations: white noise filtered by the
    square root of the power spectrum, standardised."""
    spatial = tuple(range(1, correlation.ndim))
    spectrum = jnp.sqrt(jnp.maximum(jnp.fft.fftn(correlation, axes=spatial).real, 0.0))
    noise = jax.random.normal(key, correlation.shape, jnp.float32)
    fields = jnp.fft.ifftn(spectrum * jnp.fft.fftn(noise, axes=spatial), axes=spatial).real
    return (fields - fields.mean(spatial, keepdims=True)) / (fields.std(spatial, keepdims=True) + 1e-12)


def gaussian_labels(key: jax.Array, correlation: jax.Array, fractions: jax.Array, iterations: int = 100) -> jax.Array:
    """Phase labels ``(*shape)`` of one sample from ``(n, *shape)`` field correlations (``level_cut_correlation``)
    and ``(n,)`` fractions.

    One Gaussian field per phase with that correlation (white noise filtered by the square root of its power
    spectrum); each pixel takes the phase of the largest field plus a per-phase offset, and the
    offsets are adjusted until the phase fractions match.
    """
    n = correlation.shape[0]
    spatial = tuple(range(1, correlation.ndim))
    fields = gaussian_fields(key, correlation)
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


def _tapered(correlation: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The inversion amplifies the exemplar's sampling noise at long range; a cos^2 taper to zero at half the
    side keeps the power spectrum from filling with high frequencies (chords would come out too short)."""
    distance = np.sqrt(sum(_along(np.square(_signed(s)), k, len(shape)) for k, s in enumerate(shape)))
    reach = min(shape) / 2
    return correlation * np.where(distance < reach, np.cos(np.pi * distance / (2 * reach)) ** 2, 0.0)


def field_correlation(exemplars: Sequence[np.ndarray], n_phases: int, shape: Sequence[int]) -> np.ndarray:
    """``(n, *shape)`` correlations of the Gaussian fields whose level cuts start a reconstruction."""
    fractions = np.mean([np.bincount(np.asarray(e).ravel(), minlength=n_phases) / np.size(e) for e in exemplars], 0)
    return _tapered(level_cut_correlation(autocovariance(exemplars, n_phases, shape), fractions), shape)


def _quantile_map(quantiles: np.ndarray):
    """``g(x) = Q(Phi(x))``: a standard normal value -> the intensity at the same quantile (piecewise linear in
    the ``quantiles``, sorted intensities at equally spaced levels 0..1)."""
    from scipy.special import ndtr

    levels = np.linspace(0.0, 1.0, len(quantiles))
    return lambda x: np.interp(ndtr(x), levels, quantiles)


def transformed_correlation(covariance: np.ndarray, quantiles: np.ndarray, order: int = 300) -> np.ndarray:
    """The correlation ``rho(r)`` of a unit Gaussian field ``X`` whose image ``g(X) = Q(Phi(X))`` through the
    intensity quantiles has the autocovariance ``covariance(r)`` (the grayscale counterpart of
    ``level_cut_correlation``, which it reproduces for a two-valued histogram).

    Mehler's formula: ``Cov(g(X), g(Y)) = sum_k b_k^2 rho^k`` for a standard bivariate normal pair with
    correlation ``rho``, ``b_k = E[g(Z) h_k(Z)]`` with the normalised Hermite polynomials ``h_k`` (a fine 1D
    quadrature, exact enough for a histogram with steps); the variance the first ``order`` terms miss is added
    to the last. The table is inverted by interpolation (it rises with ``rho`` for ``rho >= 0``; made monotone
    below, where quadrature error is not).
    """
    g = _quantile_map(np.asarray(quantiles, np.float64))
    x = np.linspace(-9.0, 9.0, 36001)
    weight = np.exp(-0.5 * x * x)
    weight /= weight.sum()
    gx = g(x)
    mean = np.sum(weight * gx)
    variance = np.sum(weight * (gx - mean) ** 2)
    previous, current, coefficients = np.ones_like(x), x, [0.0]
    for k in range(1, order + 1):  # h_1 .. h_order by the three-term recurrence
        coefficients.append(np.sum(weight * gx * current))
        previous, current = current, (x * current - np.sqrt(k) * previous) / np.sqrt(k + 1)
    powers = np.square(coefficients)
    powers[-1] += max(variance - powers.sum(), 0.0)
    rho = np.linspace(-1.0, 1.0, 2001)
    table = np.maximum.accumulate(np.polynomial.polynomial.polyval(rho, powers))
    scaled = covariance * table[-1] / max(float(np.max(covariance)), 1e-12)  # C(0) = Var(g) on the table's scale
    return np.interp(scaled, table, rho).astype(np.float32)


def intensity_field_correlation(exemplars: Sequence[np.ndarray], quantiles: np.ndarray,
                                shape: Sequence[int]) -> np.ndarray:
    """``(1, *shape)`` correlation of the Gaussian field whose image through the exemplars' intensity
    ``quantiles`` starts a grayscale reconstruction."""
    covariance = _covariance_on_grid([np.asarray(e, np.float32)[..., None] for e in exemplars], shape)
    return _tapered(transformed_correlation(covariance, np.asarray(quantiles)), shape)


def gaussian_intensity_logits(key: jax.Array, correlation: jax.Array, quantiles: jax.Array,
                              floor: float = 0.5 / 255) -> jax.Array:
    """Logits ``(*shape, 1)`` of one grayscale sample: a Gaussian field with ``(1, *shape)`` ``correlation``
    whose values are replaced, rank by rank, by the exemplar's intensity ``quantiles``, so that its histogram is
    the exemplar's; intensities are kept ``floor`` inside 0..1 (a sigmoid reaches neither end)."""
    field = gaussian_fields(key, correlation)[0].reshape(-1)
    ranks = jnp.argsort(jnp.argsort(field))
    levels = jnp.linspace(0.0, 1.0, quantiles.shape[0])
    intensity = jnp.interp((ranks + 0.5) / field.size, levels, quantiles)
    intensity = jnp.clip(intensity, floor, 1.0 - floor).reshape(correlation.shape[1:])
    return jax.scipy.special.logit(intensity)[..., None]

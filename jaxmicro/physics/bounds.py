"""Closed-form bounds on the effective conductivity of isotropic mixtures (checks for the FFT solver)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.errors import InputError
from jaxmicro.physics.solver import concrete_or_none


class Bounds(NamedTuple):
    lower: jax.Array
    upper: jax.Array


def _fractions_and_values(fractions, values, name):
    fractions = jnp.asarray(fractions)
    values = jnp.asarray(values)
    if fractions.ndim != 1 or values.ndim != 1 or fractions.shape != values.shape:
        raise InputError(
            f"fractions and {name} must be flat lists of equal length (one per phase), got shapes "
            f"{fractions.shape} and {values.shape}"
        )
    dtype = jnp.result_type(fractions.dtype, values.dtype, jnp.float32)
    known_f, known_v = concrete_or_none(fractions), concrete_or_none(values)
    if known_f is not None and (np.any(known_f < 0) or abs(known_f.sum() - 1) > 1e-6):
        raise InputError(f"volume fractions must be non-negative and sum to 1, got {known_f.tolist()}")
    if known_v is not None and (np.any(~(known_v >= 0)) or not np.any(known_v > 0)):
        raise InputError(f"{name} must be zero or positive, one at least positive, got {known_v.tolist()}")
    return fractions.astype(dtype), values.astype(dtype)


def _harmonic_mean(fractions, values):
    """``1 / sum_i f_i / k_i``: 0 when a phase present has ``k_i = 0``; an absent one (``f_i = 0``) counts not."""
    safe = jnp.where(values > 0, values, 1)
    terms = jnp.where(values > 0, fractions / safe, jnp.where(fractions > 0, jnp.inf, 0))
    return 1.0 / jnp.sum(terms)


def voigt_reuss_bounds(fractions, values) -> Bounds:
    """Wiener (Voigt/Reuss) bounds of any property of a mixture: harmonic and arithmetic means.

    ``lower = 1 / sum_i f_i / k_i`` (layers across the field), ``upper = sum_i f_i k_i`` (layers along it). They
    hold for any microstructure, isotropic or not, and are exact for laminates. A phase of zero conductivity
    present makes the lower bound 0.
    """
    fractions, values = _fractions_and_values(fractions, values, "values")
    return Bounds(_harmonic_mean(fractions, values), jnp.sum(fractions * values))


def hashin_shtrikman_bounds(fractions, conductivities, dim: int) -> Bounds:
    """Hashin-Shtrikman bounds on the conductivity of an isotropic mixture of ``n`` isotropic phases in ``dim`` D.

    ``k_HS(k*) = 1 / (sum_i f_i / (k_i + (d-1) k*)) - (d-1) k*``; the lower bound takes ``k* = min k_i``, the upper
    ``k* = max k_i``. For two phases this is ``k1 + f2 / (1/(k2-k1) + f1/(d k1))`` and the same with 1 and 2
    swapped.
    """
    if dim not in (2, 3):
        raise InputError(f"dim must be 2 or 3, got {dim!r}")
    fractions, values = _fractions_and_values(fractions, conductivities, "conductivities")

    def bound(reference):
        shift = (dim - 1) * reference
        return _harmonic_mean(fractions, values + shift) - shift

    return Bounds(bound(jnp.min(values)), bound(jnp.max(values)))

"""Effective conductivity (thermal, electrical, diffusive) of a periodic voxel image of isotropic phases."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from jaxmicro.errors import InputError
from jaxmicro.physics.green import project_gradient
from jaxmicro.physics.solver import (
    HomogenisationResult,
    check_options,
    concrete_or_none,
    default_tol,
    finish,
    homogenise,
    phase_fields,
    property_values,
)


def _conduct(conductivity, gradient):
    """Fourier's law per voxel: flux = k(x) * gradient; gradient ``(d, *spatial)``, conductivity ``(*spatial)``."""
    return conductivity[None] * gradient


def effective_conductivity(
    microstructure,
    conductivities,
    *,
    scheme: str = "rotated",
    tol: float | None = None,
    max_iterations: int = 1000,
    throw: bool = True,
) -> HomogenisationResult:
    """Effective conductivity tensor ``(d, d)`` of a periodic 2D or 3D image of isotropic phases.

    Args:
        microstructure: phase labels ``(*spatial)`` (integer dtype, values ``0..n-1``), or phase probabilities
            ``(*spatial, n)`` (float dtype), whose per-voxel conductivity is ``sum_i p_i k_i``; gradients flow to
            the probabilities (and to ``conductivities``) by implicit differentiation of the linear solve.
        conductivities: ``n`` phase conductivities ``k_i``, zero or positive (one at least positive). A zero phase
            (pores of a porous medium, an insulator) carries no flux; the conducting phases must then percolate
            for a non-zero result, and dead ends one voxel wide carry no flux either. Needs ``scheme="rotated"``.
        scheme: ``"rotated"`` (Willot discrete Green operator, default) or ``"fourier"`` (Moulinec-Suquet).
        tol: relative residual at which conjugate gradients stop; default 1e-4 in float32 (the tensor is then
            accurate to float32 rounding, being second order in the residual) and 1e-8 in float64.
        max_iterations: iteration cap per unit load case.
        throw: raise ``HomogenisationError`` when an eager call does not converge; under jit/vmap/grad the
            outcome is only reported in ``status``.

    Returns:
        ``HomogenisationResult(tensor, iterations, residual, status)``; ``tensor[i, j]`` is the mean flux along
        ``i`` for a unit mean gradient along ``j`` (axes in array order). The dtype follows the probabilities
        (float32 or float64), or the conductivities for labels. One sample: batch with ``jax.vmap``.
    """
    check_options(tol, max_iterations, scheme)
    values = property_values(conductivities, "conductivities", allow_zero=True)
    known = concrete_or_none(values)
    if scheme == "fourier" and known is not None and np.any(known == 0):
        raise InputError("a phase of zero conductivity needs scheme='rotated': the Fourier (Moulinec-Suquet) "
                         "scheme does not converge at infinite contrast")
    (conductivity,), shape, dtype = phase_fields(microstructure, [values], ["conductivities"])
    tol = default_tol(tol, dtype)
    return finish(
        _effective_conductivity(conductivity, shape=shape, scheme=scheme, tol=tol, max_iterations=max_iterations),
        throw,
        "effective_conductivity",
    )


@partial(jax.jit, static_argnames=("shape", "scheme", "tol", "max_iterations"))
def _effective_conductivity(conductivity, *, shape, scheme, tol, max_iterations):
    return homogenise(
        _conduct,
        partial(project_gradient, scheme=scheme),
        conductivity,
        shape,
        len(shape),
        tol=tol,
        max_iterations=max_iterations,
    )

"""Effective linear elastic stiffness of a periodic voxel image of isotropic phases (2D plane strain, 3D).

Conventions:
- Mandel notation for strains, stresses and the stiffness: 2D components ``(11, 22, 12)``, 3D
  ``(11, 22, 33, 23, 13, 12)``, off-diagonal tensor components multiplied by ``sqrt(2)``, so that the stiffness
  is a symmetric matrix whose products and norms are those of the 4th-order tensor. ``mandel_to_voigt`` converts
  a stiffness to Voigt notation (engineering shear strains, no factors on stresses).
- 2D is plane strain: in-plane strains, ``eps_33 = 0``. The 2D bulk modulus is the plane-strain (area) bulk
  modulus ``K = lambda + mu`` (mean in-plane stress = K * trace of the in-plane strain), with ``lambda`` and ``mu``
  the 3D Lame constants; from Young's modulus and Poisson's ratio ``K = E / (2 (1 + nu) (1 - 2 nu))``.
- 3D bulk modulus ``K = lambda + 2 mu / 3 = E / (3 (1 - 2 nu))``; shear modulus ``mu = E / (2 (1 + nu))``.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.errors import InputError
from jaxmicro.physics.green import project_symmetric_gradient
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


def _check_dim(dim):
    if dim not in (2, 3):
        raise InputError(f"dim must be 2 (plane strain) or 3, got {dim!r}")


def young_poisson_to_bulk_shear(young, poisson, dim: int):
    """Bulk and shear moduli ``(K, mu)`` from Young's modulus and Poisson's ratio.

    ``dim=3``: ``K = E / (3 (1 - 2 nu))``. ``dim=2`` (plane strain): ``K = lambda + mu = E / (2 (1 + nu)(1 - 2 nu))``,
    the in-plane bulk modulus used throughout this module. Both: ``mu = E / (2 (1 + nu))``. Needs ``E > 0`` and
    ``-1 < nu < 1/2`` (checked when the values are concrete).
    """
    _check_dim(dim)
    young = jnp.asarray(young)
    poisson = jnp.asarray(poisson)
    known_e, known_nu = concrete_or_none(young), concrete_or_none(poisson)
    if known_e is not None and np.any(~(known_e > 0)):
        raise InputError(f"Young's modulus must be positive, got {known_e.tolist()}")
    if known_nu is not None and np.any(~((known_nu > -1) & (known_nu < 0.5))):
        raise InputError(f"Poisson's ratio must lie strictly between -1 and 0.5, got {known_nu.tolist()}")
    shear = young / (2 * (1 + poisson))
    if dim == 3:
        bulk = young / (3 * (1 - 2 * poisson))
    else:
        bulk = young / (2 * (1 + poisson) * (1 - 2 * poisson))
    return bulk, shear


def isotropic_stiffness(bulk, shear, dim: int):
    """Mandel stiffness matrix ``(m, m)`` of an isotropic material: ``C = d K J + 2 mu (I - J)``, ``J = 1 1^T / d``."""
    _check_dim(dim)
    m = 3 if dim == 2 else 6
    identity = jnp.eye(m)
    ones = jnp.zeros(m).at[:dim].set(1.0)
    spherical = jnp.outer(ones, ones) / dim
    return dim * bulk * spherical + 2 * shear * (identity - spherical)


def mandel_to_voigt(stiffness):
    """Convert a stiffness ``(..., m, m)`` from Mandel to Voigt notation (same component order).

    ``C_voigt[i, j] = C_mandel[i, j] / (w_i w_j)`` with ``w = 1`` for normal and ``sqrt(2)`` for shear components.
    """
    stiffness = jnp.asarray(stiffness)
    m = stiffness.shape[-1]
    if m not in (3, 6) or stiffness.shape[-2] != m:
        raise InputError(f"a Mandel stiffness is (3, 3) in 2D or (6, 6) in 3D, got shape {stiffness.shape}")
    dim = 2 if m == 3 else 3
    weights = jnp.asarray([1.0] * dim + [math.sqrt(2.0)] * (m - dim), stiffness.dtype)
    return stiffness / (weights[:, None] * weights[None, :])


def voigt_to_mandel(stiffness):
    """Inverse of ``mandel_to_voigt``."""
    stiffness = jnp.asarray(stiffness)
    m = stiffness.shape[-1]
    if m not in (3, 6) or stiffness.shape[-2] != m:
        raise InputError(f"a Voigt stiffness is (3, 3) in 2D or (6, 6) in 3D, got shape {stiffness.shape}")
    dim = 2 if m == 3 else 3
    weights = jnp.asarray([1.0] * dim + [math.sqrt(2.0)] * (m - dim), stiffness.dtype)
    return stiffness * (weights[:, None] * weights[None, :])


def _hooke(moduli, strain):
    """Isotropic Hooke's law per voxel in Mandel form: ``sigma = 2 mu eps + (K - 2 mu / d) tr(eps) 1``."""
    bulk, shear = moduli
    dim = bulk.ndim
    trace = jnp.sum(strain[:dim], axis=0)
    stress = 2 * shear[None] * strain
    return stress.at[:dim].add(((bulk - 2 * shear / dim) * trace)[None])


def effective_stiffness(
    microstructure,
    *,
    young=None,
    poisson=None,
    bulk=None,
    shear=None,
    scheme: str = "rotated",
    tol: float | None = None,
    max_iterations: int = 1000,
    throw: bool = True,
) -> HomogenisationResult:
    """Effective stiffness (Mandel, ``(3, 3)`` plane strain in 2D, ``(6, 6)`` in 3D) of isotropic phases.

    Give the phase moduli either as ``young`` and ``poisson`` or as ``bulk`` and ``shear`` (one value per phase;
    in 2D ``bulk`` is the plane-strain bulk modulus ``lambda + mu``, see the module docstring).

    Args:
        microstructure: phase labels ``(*spatial)`` (integer dtype), or phase probabilities ``(*spatial, n)``
            (float dtype); with probabilities the bulk and shear moduli (equivalently the stiffness tensors) are
            mixed linearly per voxel, and gradients flow to the probabilities and the moduli.
        scheme: as in ``effective_conductivity``.
        tol: as in ``effective_conductivity``.
        max_iterations: as in ``effective_conductivity``.
        throw: as in ``effective_conductivity``.

    Returns:
        ``HomogenisationResult(tensor, iterations, residual, status)`` with the Mandel stiffness in ``tensor``;
        ``mandel_to_voigt(result.tensor)`` gives Voigt notation.
    """
    check_options(tol, max_iterations, scheme)
    by_young = young is not None or poisson is not None
    by_bulk = bulk is not None or shear is not None
    if by_young == by_bulk or (by_young and (young is None or poisson is None)) or (
        by_bulk and (bulk is None or shear is None)
    ):
        raise InputError("give the phase moduli as young= and poisson=, or as bulk= and shear=, not a mix")
    micro = jnp.asarray(microstructure)
    labelled = jnp.issubdtype(micro.dtype, jnp.integer) or micro.dtype == jnp.bool_
    dim = micro.ndim if labelled else micro.ndim - 1
    if by_young:
        young = property_values(young, "young")
        poisson = jnp.asarray(poisson)
        if poisson.ndim != 1 or poisson.shape[0] != young.shape[0]:
            raise InputError(
                f"poisson has shape {poisson.shape} but young has {young.shape[0]} values: give one per phase"
            )
        if dim not in (2, 3):
            raise InputError(f"a 2D or 3D image is needed, got {dim} spatial dimensions from shape {micro.shape}")
        bulk, shear = young_poisson_to_bulk_shear(young, poisson, dim)
    else:
        bulk = property_values(bulk, "bulk")
        shear = property_values(shear, "shear")
    (bulk_field, shear_field), shape, dtype = phase_fields(micro, [bulk, shear], ["bulk", "shear"])
    result = _effective_stiffness(
        (bulk_field, shear_field), shape=shape, scheme=scheme, tol=default_tol(tol, dtype),
        max_iterations=max_iterations
    )
    return finish(result, throw, "effective_stiffness")


@partial(jax.jit, static_argnames=("shape", "scheme", "tol", "max_iterations"))
def _effective_stiffness(moduli, *, shape, scheme, tol, max_iterations):
    dim = len(shape)
    return homogenise(
        _hooke,
        partial(project_symmetric_gradient, scheme=scheme),
        moduli,
        shape,
        3 if dim == 2 else 6,
        tol=tol,
        max_iterations=max_iterations,
    )

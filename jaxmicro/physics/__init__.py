"""Differentiable FFT homogenisation: effective conductivity and stiffness of periodic voxel microstructures.

Public API: ``effective_conductivity``, ``effective_stiffness`` (one sample; batch with ``jax.vmap``), their
``HomogenisationResult`` and ``SolverStatus``, the bounds ``hashin_shtrikman_bounds`` and ``voigt_reuss_bounds``,
and the elastic conventions ``young_poisson_to_bulk_shear``, ``isotropic_stiffness``, ``mandel_to_voigt``,
``voigt_to_mandel``; for porous media ``tortuosity`` (with its ``Tortuosity`` record) and ``percolates``.
See docs/physics.md.
"""

from jaxmicro.physics.bounds import Bounds, hashin_shtrikman_bounds, voigt_reuss_bounds
from jaxmicro.physics.conductivity import effective_conductivity
from jaxmicro.physics.elasticity import (
    effective_stiffness,
    isotropic_stiffness,
    mandel_to_voigt,
    voigt_to_mandel,
    young_poisson_to_bulk_shear,
)
from jaxmicro.physics.green import project_gradient, project_symmetric_gradient
from jaxmicro.physics.solver import HomogenisationError, HomogenisationResult, SolverStatus, conjugate_gradient
from jaxmicro.physics.tortuosity import Tortuosity, percolates, tortuosity

__all__ = [
    "Bounds",
    "HomogenisationError",
    "HomogenisationResult",
    "SolverStatus",
    "Tortuosity",
    "conjugate_gradient",
    "effective_conductivity",
    "effective_stiffness",
    "hashin_shtrikman_bounds",
    "isotropic_stiffness",
    "mandel_to_voigt",
    "percolates",
    "project_gradient",
    "project_symmetric_gradient",
    "tortuosity",
    "voigt_reuss_bounds",
    "voigt_to_mandel",
    "young_poisson_to_bulk_shear",
]

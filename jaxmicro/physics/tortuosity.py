"""Tortuosity factor of a conducting phase, with a periodic percolation check.

The tortuosity factor along axis ``i`` is ``tau_i = f k_phase / k_eff,ii`` (``f`` the phase's volume fraction):
the effective conductivity is computed with conductivity 1 in the phase and 0 in every other phase, so
``tau_i = f / k_eff,ii``. Straight channels along ``i`` give ``tau_i = 1``; winding paths and constrictions give
more. Whether the phase percolates along an axis is decided from its connected components (face neighbours, with
the periodic boundaries of the solver), not from a small ``k_eff``: a phase that does not percolate along ``i``
gets ``tau_i = inf`` and ``percolates[i] = False``.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from jaxmicro.errors import InputError
from jaxmicro.physics.conductivity import effective_conductivity


class Tortuosity(NamedTuple):
    """Tortuosity factors of one phase and what they were computed from.

    factor: ``(d,)`` tortuosity factor per axis (array order), ``inf`` where the phase does not percolate.
    percolates: ``(d,)`` bool, whether a face-connected cluster of the phase wraps around the periodic cell along
        each axis.
    volume_fraction: the phase's volume fraction ``f``.
    conductivity: ``(d, d)`` effective conductivity with 1 in the phase and 0 elsewhere.
    iterations, residual, status: the solver's diagnostics (``HomogenisationResult``).
    """

    factor: np.ndarray
    percolates: np.ndarray
    volume_fraction: float
    conductivity: np.ndarray
    iterations: int
    residual: float
    status: int


def percolates(mask) -> np.ndarray:
    """Per axis, whether the ``True`` voxels of a periodic 2D/3D ``mask`` hold a cluster that wraps around it.

    Clusters are face-connected (4 neighbours in 2D, 6 in 3D) through the periodic boundaries. A cluster wraps
    along axis ``i`` when it contains a closed path whose displacement along ``i`` is a non-zero number of cell
    lengths (a cluster that touches both faces without joining itself across them does not). Found by labelling
    the cell without its periodic links (``scipy.ndimage.label``) and then following the links across the faces,
    keeping the cell offset of every label reached.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    dim = mask.ndim
    labels, _ = ndimage.label(mask)
    links: dict[int, list[tuple[int, np.ndarray]]] = {}
    for axis in range(dim):
        step = np.zeros(dim, np.int64)
        step[axis] = 1
        last, first = np.take(labels, -1, axis=axis).ravel(), np.take(labels, 0, axis=axis).ravel()
        both = (last > 0) & (first > 0)
        for a, b in np.unique(np.stack([last[both], first[both]], axis=1), axis=0):
            links.setdefault(int(a), []).append((int(b), step))  # from a, across the face, to b in the next cell
            links.setdefault(int(b), []).append((int(a), -step))
    wraps = np.zeros(dim, bool)
    offset: dict[int, np.ndarray] = {}
    for start in links:
        if start in offset:
            continue
        offset[start] = np.zeros(dim, np.int64)
        queue = deque([start])
        while queue:
            a = queue.popleft()
            for b, step in links[a]:
                reached = offset[a] + step
                if b not in offset:
                    offset[b] = reached
                    queue.append(b)
                else:
                    wraps |= reached != offset[b]  # a closed path with this displacement in cell lengths
    return wraps


def tortuosity(
    labels,
    phase: int = 0,
    *,
    scheme: str = "rotated",
    tol: float | None = None,
    max_iterations: int = 1000,
    throw: bool = True,
    dtype=np.float32,
) -> Tortuosity:
    """Tortuosity factor ``tau_i = f / k_eff,ii`` of ``phase`` along each axis of a periodic 2D/3D label image.

    Args:
        labels: integer phase labels ``(*spatial)``.
        phase: the conducting phase (conductivity 1); every other phase has conductivity 0.
        scheme: as for ``effective_conductivity``.
        tol: as for ``effective_conductivity``.
        max_iterations: as for ``effective_conductivity``.
        throw: as for ``effective_conductivity``.
        dtype: float dtype of the solve (float32, or float64 with ``jax_enable_x64``).

    Returns:
        ``Tortuosity``; ``factor[i]`` is ``inf`` where ``percolates[i]`` is false. Eager only (the percolation
        check runs in NumPy/SciPy on concrete labels).
    """
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as error:
        raise InputError(f"labels must be an array of phase labels: {error}") from None
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise InputError(f"labels must hold integer phase labels, got {labels.dtype}")
    if labels.ndim not in (2, 3):
        raise InputError(f"a 2D or 3D label image is needed, got shape {labels.shape}")
    if isinstance(phase, bool) or not isinstance(phase, (int, np.integer)) or phase < 0:
        raise InputError(f"phase must be a phase label (0, 1, ...), got {phase!r}")
    inside = labels == phase
    fraction = float(inside.mean())
    if fraction == 0:
        found = ", ".join(map(str, np.unique(labels)[:10]))
        raise InputError(f"phase {phase} does not occur in the image (its labels: {found})")
    result = effective_conductivity(inside.astype(np.int32), np.asarray([0.0, 1.0], dtype), scheme=scheme, tol=tol,
                                    max_iterations=max_iterations, throw=throw)
    tensor = np.asarray(result.tensor, np.float64)
    wraps = percolates(inside)
    diagonal = np.diagonal(tensor)
    with np.errstate(divide="ignore"):
        factor = np.where(wraps & (diagonal > 0), fraction / np.where(diagonal > 0, diagonal, 1.0), np.inf)
    return Tortuosity(factor, wraps, fraction, tensor, int(np.asarray(result.iterations)),
                      float(np.asarray(result.residual)), int(np.asarray(result.status)))

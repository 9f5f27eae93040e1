"""Discrete Fourier operators of FFT homogenisation on a periodic voxel grid.

Fields are real arrays shaped ``(components, *spatial)``; their spectra are taken with ``rfftn`` over the spatial
axes. A discretisation is a real "wave vector" ``s(xi)`` per frequency (the discrete gradient is ``i s``):

- ``"rotated"`` (Willot 2015): ``s_j = 2 sin(xi_j/2) prod_{l != j} cos(xi_l/2)``, the finite-difference gradient
  of nodal values averaged over a voxel. It converges well at sharp corners and has no Gibbs ringing. Its Nyquist
  modes are consistent for real fields as they are (``s`` is odd in ``xi`` and at ``xi_j = pi`` the other
  components vanish), so nothing needs dropping.
- ``"fourier"`` (Moulinec-Suquet 1998): ``s_j = xi_j``. With an even grid the Nyquist frequency is its own
  negative, so ``xi_j xi_l`` terms there break the symmetry between ``xi`` and ``-xi``: the projection would not
  be Hermitian for real fields and conjugate gradients stall. Every mode with a Nyquist index is dropped (s = 0).

Both projections below are real symmetric per frequency and even in ``xi``, hence orthogonal projections of real
fields (self-adjoint in the plain L2 inner product), which is what conjugate gradients needs.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

SCHEMES = ("rotated", "fourier")

# Mandel order of the components of a symmetric tensor; off-diagonal components carry a factor sqrt(2).
MANDEL_PAIRS = {
    2: ((0, 0), (1, 1), (0, 1)),
    3: ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)),
}


def spectral_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the ``rfftn`` half spectrum of a field with spatial ``shape``."""
    return (*shape[:-1], shape[-1] // 2 + 1)


def wave_vectors(shape: tuple[int, ...], scheme: str, dtype) -> list:
    """The ``d`` components of the real wave vector ``s`` on the half spectrum, each broadcastable to it.

    Built from 1D factors so that XLA fuses the products into the operators instead of storing ``d`` full arrays.
    """
    dim = len(shape)
    angles = []  # per axis, the 1D angular frequencies xi in (-pi, pi], as numpy float64
    for axis, n in enumerate(shape):
        freq = np.fft.rfftfreq(n) if axis == dim - 1 else np.fft.fftfreq(n)
        angles.append(2.0 * np.pi * freq)

    def along(axis: int, values: np.ndarray):
        shaped = [1] * dim
        shaped[axis] = values.size
        return jnp.asarray(values.reshape(shaped), dtype=dtype)

    if scheme == "rotated":
        sines = [along(a, 2.0 * np.sin(xi / 2.0)) for a, xi in enumerate(angles)]
        # cos(pi/2) must be exactly 0: otherwise the hourglass mode xi = (pi, pi, ...) gets a round-off wave
        # vector of norm ~1e-16 and a spurious non-zero projection instead of being dropped.
        nyquist = [np.abs(np.abs(xi) - np.pi) < 1e-9 for xi in angles]
        cosines = [along(a, np.where(nyquist[a], 0.0, np.cos(xi / 2.0))) for a, xi in enumerate(angles)]
        vectors = []
        for j in range(dim):
            component = sines[j]
            for axis in range(dim):
                if axis != j:
                    component = component * cosines[axis]
            vectors.append(component)
        return vectors
    if scheme == "fourier":
        # Drop every mode with a Nyquist index on any axis (even sizes only): s = 0 there.
        keep = [along(a, (np.abs(np.abs(xi) - np.pi) >= 1e-9).astype(np.float64)) for a, xi in enumerate(angles)]
        mask = math.prod(keep[1:], start=keep[0])
        return [along(a, xi) * mask for a, xi in enumerate(angles)]
    raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")


def _inverse_norm2(vectors):
    """``1 / |s|^2`` with 0 where ``s = 0`` (mean mode, dropped modes), safe for differentiation."""
    norm2 = sum(s * s for s in vectors)
    positive = norm2 > 0
    return jnp.where(positive, 1.0 / jnp.where(positive, norm2, 1.0), 0.0)


def _rfft(field):
    return jnp.fft.rfftn(field, axes=tuple(range(1, field.ndim)))


def _irfft(spectrum, shape):
    return jnp.fft.irfftn(spectrum, s=shape, axes=tuple(range(1, spectrum.ndim)))


def project_gradient(field, scheme: str = "rotated"):
    """L2-orthogonal projection of a vector field ``(d, *spatial)`` onto zero-mean discrete gradient fields.

    In Fourier space ``P(xi) = s s^T / |s|^2``: the Green operator of conductivity for a unit reference medium.
    """
    shape = field.shape[1:]
    spectrum = _rfft(field)
    vectors = wave_vectors(shape, scheme, field.dtype)
    divergence = sum(s * spectrum[j] for j, s in enumerate(vectors)) * _inverse_norm2(vectors)
    projected = jnp.stack([s * divergence for s in vectors])
    return _irfft(projected, shape).astype(field.dtype)


def project_symmetric_gradient(field, scheme: str = "rotated"):
    """L2-orthogonal projection of a symmetric tensor field (Mandel, ``(m, *spatial)``) onto compatible strains.

    Compatible strains are zero-mean symmetrised discrete gradients ``sym(s (x) u)`` of periodic displacements.
    Per frequency ``P = B (B^T B)^-1 B^T`` with ``B u = sym(s (x) u)``; ``(B^T B)^-1`` is written in closed form
    (Sherman-Morrison): ``u = (2/|s|^2) (v - s (s.v) / (2|s|^2))`` with ``v = tau s``. This is the Green operator
    of an isotropic reference medium with Lame constants ``lambda0 = 0``, ``mu0 = 1/2`` (identity in Mandel form).
    """
    shape = field.shape[1:]
    dim = len(shape)
    pairs = MANDEL_PAIRS[dim]
    spectrum = _rfft(field)
    vectors = wave_vectors(shape, scheme, field.dtype)
    inv_norm2 = _inverse_norm2(vectors)
    root2 = math.sqrt(2.0)
    tensor = [[None] * dim for _ in range(dim)]
    for c, (i, j) in enumerate(pairs):
        value = spectrum[c] if i == j else spectrum[c] / root2
        tensor[i][j] = value
        tensor[j][i] = value
    v = [sum(vectors[i] * tensor[i][j] for i in range(dim)) for j in range(dim)]
    s_dot_v = sum(vectors[j] * v[j] for j in range(dim))
    u = [2.0 * inv_norm2 * (v[j] - 0.5 * vectors[j] * s_dot_v * inv_norm2) for j in range(dim)]
    projected = []
    for i, j in pairs:
        if i == j:
            projected.append(vectors[i] * u[i])
        else:
            projected.append((vectors[i] * u[j] + vectors[j] * u[i]) / root2)
    return _irfft(jnp.stack(projected), shape).astype(field.dtype)

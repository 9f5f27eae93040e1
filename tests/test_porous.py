"""Porous media: zero-conductivity phases, the periodic percolation check and the tortuosity factor.

Exact cases: straight channels (tau = 1 along, not percolating across), dead ends one voxel wide (no flux: k_eff
unchanged), isolated inclusions (not percolating), laminates with an insulating phase (Voigt along, 0 across).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmicro.errors import InputError
from jaxmicro.physics import SolverStatus, effective_conductivity, percolates, tortuosity

x64 = jax.enable_x64


def channel(n=32, rows=slice(10, 14)):
    labels = np.zeros((n, n), np.int32)
    labels[rows, :] = 1  # a straight channel of phase 1 along axis 1
    return labels


def porous_image(shape=(48, 48), fraction=0.35, seed=0):
    """Phase 0 a percolating solid, phase 1 pores (a thresholded smooth periodic random field)."""
    from scipy import ndimage

    field = ndimage.uniform_filter(np.random.default_rng(seed).random(shape), 5, mode="wrap")
    return (field > np.quantile(field, 1 - fraction)).astype(np.int32)


def test_straight_channels_have_tortuosity_one():
    result = tortuosity(channel(), phase=1)
    assert result.percolates.tolist() == [False, True]
    assert result.factor[0] == np.inf
    np.testing.assert_allclose(result.factor[1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(result.volume_fraction, 4 / 32)
    assert result.status == SolverStatus.CONVERGED
    # 3D: a square rod along axis 0, and the complement (percolating along every axis) as the other phase
    rod = np.zeros((12, 12, 12), np.int32)
    rod[:, 3:7, 5:8] = 1
    result = tortuosity(rod, phase=1)
    assert result.percolates.tolist() == [True, False, False]
    np.testing.assert_allclose(result.factor, [1.0, np.inf, np.inf], rtol=1e-6)
    assert tortuosity(rod, phase=0).percolates.tolist() == [True, True, True]


def test_dead_end_pore_carries_no_flux_and_does_not_lower_tortuosity():
    alone = channel()
    branched = alone.copy()
    branched[14:24, 5] = 1  # dead ends one voxel wide, on both sides of the channel
    branched[3:10, 20] = 1
    branched[3, 20:26] = 1  # with a bend
    k_alone = tortuosity(alone, phase=1)
    k_branched = tortuosity(branched, phase=1)
    np.testing.assert_allclose(k_branched.conductivity[1, 1], k_alone.conductivity[1, 1], rtol=1e-6)
    assert k_branched.factor[1] > k_alone.factor[1]  # more pore volume, the same flux
    np.testing.assert_allclose(k_branched.factor[1], k_branched.volume_fraction / (4 / 32), rtol=1e-6)
    # a wide pocket widens the channel where it joins (a little flux turns in it): tau still rises
    pocket = alone.copy()
    pocket[14:24, 5:9] = 1
    wide = tortuosity(pocket, phase=1)
    assert k_alone.conductivity[1, 1] < wide.conductivity[1, 1] < 1.05 * k_alone.conductivity[1, 1]
    assert wide.factor[1] > k_alone.factor[1]


def test_non_percolating_phase_is_reported():
    labels = np.zeros((24, 24), np.int32)
    labels[3:8, 3:8] = 1
    labels[12:20, 10:23] = 1
    result = tortuosity(labels, phase=1)
    assert result.percolates.tolist() == [False, False]
    assert np.all(result.factor == np.inf)
    assert np.abs(result.conductivity).max() < 1e-6  # isolated conductors in an insulator: no flux
    assert result.status == SolverStatus.CONVERGED
    assert tortuosity(labels, phase=0).percolates.tolist() == [True, True]


def test_percolation_follows_periodic_winding():
    staircase = np.zeros((8, 8), bool)  # wraps diagonally: carries flux along both axes
    for i in range(8):
        staircase[i, i] = staircase[i, (i + 1) % 8] = True
    assert percolates(staircase).tolist() == [True, True]
    crooked = np.zeros((10, 10), bool)  # touches both faces of axis 0 at columns that do not meet
    crooked[0:5, 2] = crooked[4, 2:8] = crooked[4:10, 7] = True
    assert percolates(crooked).tolist() == [False, False]
    across = crooked.copy()
    across[4:10, 2] = True  # now joined to itself across the boundary
    assert percolates(across).tolist() == [True, False]
    diagonal_only = np.eye(6, dtype=bool)  # corner contacts are not faces
    assert percolates(diagonal_only).tolist() == [False, False]
    assert percolates(np.ones((3, 4, 5), bool)).tolist() == [True] * 3
    assert percolates(np.zeros((3, 4), bool)).tolist() == [False, False]
    # against tiling: a cluster of a tiled cell that wraps must wrap in the cell, and tiling keeps the answer
    pores = porous_image((24, 24), 0.45, seed=3).astype(bool)
    assert percolates(np.tile(pores, (2, 3))).tolist() == percolates(pores).tolist()


@pytest.mark.parametrize("conducting", [0, 1])
def test_insulating_laminate_matches_voigt_and_reuss(conducting):
    labels = np.zeros((16, 24), np.int32)
    labels[:, 5:14] = 1  # layers normal to axis 1
    fraction = 9 / 24 if conducting == 1 else 15 / 24
    k = np.zeros(2, np.float32)
    k[conducting] = 2.5
    result = effective_conductivity(labels, k)
    np.testing.assert_allclose(result.tensor[0, 0], fraction * 2.5, rtol=1e-6)  # Voigt along the layers
    assert abs(float(result.tensor[1, 1])) < 1e-6 and abs(float(result.tensor[0, 1])) < 1e-6  # Reuss: 0 across
    assert int(result.status) == SolverStatus.CONVERGED


def test_random_porous_medium_converges():
    """CG on the Galerkin form converges with insulating pores (iterations like a moderate contrast)."""
    pores = porous_image()
    zero = effective_conductivity(pores, [1.0, 0.0])
    assert int(zero.status) == SolverStatus.CONVERGED and int(zero.iterations) < 200
    nearly = effective_conductivity(pores, [1.0, 1e-6])
    np.testing.assert_allclose(zero.tensor, nearly.tensor, atol=1e-4)
    assert np.all(np.linalg.eigvalsh(np.asarray(zero.tensor)) > 0)
    # jit and vmap over a batch with an insulating phase: the same tensors, a status per sample
    batch = jax.nn.one_hot(np.stack([pores, porous_image(seed=5)]), 2, dtype=jnp.float32)
    batched = jax.jit(jax.vmap(lambda p: effective_conductivity(p, [1.0, 0.0], throw=False)))(batch)
    np.testing.assert_allclose(batched.tensor[0], zero.tensor, rtol=1e-5, atol=1e-7)
    assert batched.status.tolist() == [SolverStatus.CONVERGED] * 2


def test_gradients_finite_with_an_insulating_phase():
    with x64(True):
        pores = porous_image((16, 16), 0.3, seed=1)
        probabilities = jax.nn.one_hot(pores, 2, dtype=jnp.float64)  # exactly zero conductivity in the pores
        k = jnp.array([1.0, 0.0])

        def objective(p, k=k):
            return effective_conductivity(p, k, tol=1e-12).tensor[0, 0]

        gradient = jax.grad(objective)(probabilities)
        assert bool(jnp.all(jnp.isfinite(gradient)))
        # inside the solid: central differences. Into the pores (conductivity rising from 0) the derivative is
        # one-sided, and that of a uniform small conductivity in them: the limit field in a pore depends on how
        # its conductivity vanishes, so only the uniform direction has the gradient's value.
        rng = np.random.default_rng(0)
        solid = jnp.asarray(rng.normal(size=pores.shape) * (pores == 0))
        direction = jnp.stack([solid, jnp.zeros_like(solid)], -1)
        step = 1e-5
        central = (objective(probabilities + step * direction) - objective(probabilities - step * direction)) / (
            2 * step)
        np.testing.assert_allclose(jnp.vdot(gradient, direction), central, rtol=1e-6)
        into_pores = jnp.stack([jnp.asarray(pores == 1, jnp.float64), jnp.zeros_like(solid)], -1)
        at = [objective(probabilities + h * into_pores) for h in (0.0, step, 2 * step)]
        one_sided = (4 * at[1] - at[2] - 3 * at[0]) / (2 * step)  # second-order one-sided difference
        np.testing.assert_allclose(jnp.vdot(gradient, into_pores), one_sided, rtol=1e-4)
        dk = jax.grad(lambda k: objective(probabilities, k))(k)
        assert bool(jnp.all(jnp.isfinite(dk))) and float(dk[1]) > 0  # a conducting pore phase would help


@pytest.mark.parametrize("call, message", [
    (lambda: effective_conductivity(np.zeros((8, 8), np.int32), [0.0, 0.0]), "one at least positive"),
    (lambda: effective_conductivity(np.zeros((8, 8), np.int32), [1.0, -0.5]), "zero or positive"),
    (lambda: effective_conductivity(np.zeros((8, 8), np.int32), [1.0, 0.0], scheme="fourier"), "rotated"),
    (lambda: tortuosity(np.zeros((8, 8), np.int32), phase=2), "does not occur"),
    (lambda: tortuosity(np.zeros((8, 8), np.int32), phase=-1), "phase label"),
    (lambda: tortuosity(np.zeros((8, 8)), phase=0), "integer"),
    (lambda: tortuosity(np.zeros(8, np.int32), phase=0), "2D or 3D"),
])
def test_bad_input(call, message):
    with pytest.raises(InputError, match=message):
        call()


@pytest.mark.slow
def test_design_accepts_an_insulating_phase():
    """Inverse design with a zero-conductivity phase: the bounds are Reuss 0 .. Voigt, and k_xx=min is judged
    against the range (its bound is 0)."""
    from jaxmicro import inverse_design as D
    from jaxmicro.physics import hashin_shtrikman_bounds, voigt_reuss_bounds

    np.testing.assert_allclose(voigt_reuss_bounds([0.6, 0.4], [0.0, 2.0]), [0.0, 0.8])
    np.testing.assert_allclose(voigt_reuss_bounds([1.0, 0.0], [3.0, 0.0]), [3.0, 3.0])  # an absent zero phase
    lower, upper = hashin_shtrikman_bounds([0.6, 0.4], [0.0, 1.0], 2)
    np.testing.assert_allclose([lower, upper], [0.0, 0.4 / (1 + 0.6)], rtol=1e-6)  # k1 f1 / (1 + f0) in 2D
    exemplar = porous_image((32, 32), 0.4, seed=2)
    request = dict(shape=(8, 8), conductivity=[0.0, 1.0], statistics_weight=0.0, hold_fraction=True)
    with pytest.raises(InputError, match=r"0 \.\. 0\.4"):
        D.prepare(exemplar, targets=["k_xx=0.5"], **request)
    result = D.design(exemplar, targets={"k_xx": "min"}, count=1, steps=5, filter_radius=1.0, **request)
    record = D.design_records(result, exemplar)["designs"][0]
    assert np.isfinite(record["relative_error"]["k_xx"]) and record["achieved"]["k_xx"] >= 0

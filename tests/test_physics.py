"""Tests of jaxmicro.physics: exact cases, bounds, gradients, batching and input checks.

float64 runs inside the scoped ``jax.enable_x64(True)`` context (``jax.experimental.enable_x64`` is gone from this
JAX); x64 is never switched on globally.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmicro.errors import InputError
from jaxmicro.physics import (
    HomogenisationError,
    SolverStatus,
    effective_conductivity,
    effective_stiffness,
    hashin_shtrikman_bounds,
    isotropic_stiffness,
    mandel_to_voigt,
    project_gradient,
    project_symmetric_gradient,
    voigt_reuss_bounds,
    voigt_to_mandel,
    young_poisson_to_bulk_shear,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
x64 = jax.enable_x64


def checkerboard(n, dim=2):
    index = np.indices((n,) * dim)
    return (np.sum(index < n // 2, axis=0) % 2).astype(np.int32)


def random_two_phase(n, seed=0, fraction=0.4, smoothing=3.0):
    """Statistically isotropic two-phase structure: a thresholded Gaussian-filtered white noise."""
    rng = np.random.default_rng(seed)
    noise = np.fft.fft2(rng.normal(size=(n, n)))
    frequency = np.fft.fftfreq(n)
    f2 = frequency[:, None] ** 2 + frequency[None, :] ** 2
    field = np.real(np.fft.ifft2(noise * np.exp(-2 * (np.pi * smoothing) ** 2 * f2)))
    return (field > np.quantile(field, 1 - fraction)).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------------
# Discrete operators


@pytest.mark.parametrize("scheme", ["rotated", "fourier"])
@pytest.mark.parametrize("shape", [(8, 8), (7, 6), (6, 4, 5)])
def test_projections_are_orthogonal_and_reflection_equivariant(scheme, shape):
    dim = len(shape)
    rng = np.random.default_rng(0)
    with x64(True):
        for operator, m in ((project_gradient, dim), (project_symmetric_gradient, 3 if dim == 2 else 6)):
            project = jax.jit(lambda field: operator(field, scheme))
            a, b = rng.normal(size=(2, m, *shape))
            pa, pb = np.asarray(project(a)), np.asarray(project(b))
            assert abs(np.vdot(pa, b) - np.vdot(a, pb)) < 1e-12  # self-adjoint for real fields
            np.testing.assert_allclose(project(pa), pa, atol=1e-12)  # idempotent
            np.testing.assert_allclose(pa.mean(axis=tuple(range(1, dim + 1))), 0, atol=1e-12)
            if operator is project_gradient:
                # reflecting x -> -x flips the x component; the hourglass mode must be dropped exactly for this
                def flip(field):
                    field = field[:, ::-1].copy()
                    field[0] *= -1
                    return field

                np.testing.assert_allclose(project(flip(a)), flip(pa), atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Exact cases


@pytest.mark.parametrize("shape", [(16, 12), (8, 6, 4)])
def test_laminates_give_series_and_parallel_values(shape):
    conductivities = np.array([1.0, 7.0, 0.3])
    thickness = [7, 5, 4] if shape[0] == 16 else [4, 2, 2]  # layers stacked along axis 0
    labels_1d = np.repeat(np.arange(3), thickness)
    labels = np.broadcast_to(labels_1d.reshape((-1,) + (1,) * (len(shape) - 1)), shape).astype(np.int32)
    fractions = np.bincount(labels_1d, minlength=3) / shape[0]
    series = 1.0 / np.sum(fractions / conductivities)
    parallel = np.sum(fractions * conductivities)
    with x64(True):
        result = effective_conductivity(labels, conductivities, tol=1e-12)
    expected = np.diag([series] + [parallel] * (len(shape) - 1))
    np.testing.assert_allclose(result.tensor, expected, rtol=0, atol=1e-10)
    assert result.tensor.dtype == jnp.float64 and result.status == SolverStatus.CONVERGED
    bounds = voigt_reuss_bounds(fractions, conductivities)
    np.testing.assert_allclose([bounds.lower, bounds.upper], [series, parallel], rtol=1e-6)


def test_checkerboard_matches_keller_dykhne():
    """sqrt(k1 k2) at contrast 10 on 256x256, default float32 and tolerance."""
    result = effective_conductivity(checkerboard(256), [1.0, 10.0])
    error = np.abs(np.asarray(result.tensor) - np.sqrt(10.0) * np.eye(2)).max()
    print(f"checkerboard 256^2 contrast 10: error {error:.2e}, {int(result.iterations)} iterations")
    assert error < 1e-3
    assert result.status == SolverStatus.CONVERGED and result.tensor.dtype == jnp.float32


def test_rotated_scheme_beats_fourier_scheme_at_corners():
    with x64(True):
        labels = checkerboard(64)
        rotated = float(effective_conductivity(labels, [1.0, 10.0], tol=1e-10).tensor[0, 0])
        fourier = float(effective_conductivity(labels, [1.0, 10.0], scheme="fourier", tol=1e-10).tensor[0, 0])
    assert abs(rotated - np.sqrt(10)) < 0.5 * abs(fourier - np.sqrt(10))


def test_dilute_disk_first_order():
    n, radius, k1, k2 = 128, 14, 1.0, 10.0
    y, x = np.indices((n, n)) + 0.5 - n / 2
    labels = ((x**2 + y**2) < radius**2).astype(np.int32)
    fraction = labels.mean()
    b = (k2 - k1) / (k2 + k1)
    expected = k1 * (1 + 2 * fraction * b / (1 - fraction * b))
    result = effective_conductivity(labels, [k1, k2])
    np.testing.assert_allclose(np.diag(result.tensor), expected, rtol=2e-3)


def _assert_inside(value, bounds, what):
    assert bounds.lower - 1e-6 <= value <= bounds.upper + 1e-6, f"{what}: {value} outside {bounds}"


def test_random_structure_inside_hashin_shtrikman():
    labels = random_two_phase(96)
    conductivities = [1.0, 20.0]
    result = effective_conductivity(labels, conductivities)
    fractions = np.bincount(labels.ravel(), minlength=2) / labels.size
    bounds = hashin_shtrikman_bounds(fractions, conductivities, 2)
    for eigenvalue in np.linalg.eigvalsh(np.asarray(result.tensor, np.float64)):
        _assert_inside(eigenvalue, bounds, "random structure")


@pytest.mark.parametrize("name", ["li2018_ceramics_2d_256.npy", "li2018_sandstone_2d_256.npy"])
def test_shared_images_inside_bounds(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"shared image {path} absent (the repository does not ship ../shared/data)")
    labels = np.load(path).astype(np.int32)
    conductivities = [1.0, 10.0]
    result = effective_conductivity(labels, conductivities)
    fractions = np.bincount(labels.ravel(), minlength=2) / labels.size
    hs = hashin_shtrikman_bounds(fractions, conductivities, 2)
    vr = voigt_reuss_bounds(fractions, conductivities)
    eigenvalues = np.linalg.eigvalsh(np.asarray(result.tensor, np.float64))
    print(f"{name}: eigenvalues {eigenvalues}, HS {float(hs.lower):.4f}..{float(hs.upper):.4f}, "
          f"{int(result.iterations)} iterations")
    for eigenvalue in eigenvalues:
        _assert_inside(eigenvalue, vr, name)
    _assert_inside(eigenvalues.mean(), hs, name)  # both are near-isotropic sections


def test_hill_equal_shear_2d():
    """Checkerboard, mu = 2, K = 1 and 10: exactly 2.8; plus a random structure against the 2D Hill formula."""
    bulk_values, shear = np.array([1.0, 10.0]), 2.0
    for name, labels in (("checkerboard", checkerboard(32)), ("random", random_two_phase(32, seed=2))):
        fractions = np.bincount(labels.ravel(), minlength=2) / labels.size
        exact = 1 / np.sum(fractions / (bulk_values + shear)) - shear
        result = effective_stiffness(labels, bulk=bulk_values, shear=[shear, shear])
        tensor = np.asarray(result.tensor, np.float64)
        bulk = (tensor[0, 0] + tensor[0, 1]) / 2  # plane strain: C11 = K + mu, C12 = K - mu
        error = abs(bulk / exact - 1)
        print(f"Hill 2D {name}: K = {bulk:.6f} (exact {exact:.6f}), relative error {error:.1e}, "
              f"{int(result.iterations)} iterations")
        assert error < 5e-3
    np.testing.assert_allclose(effective_stiffness(checkerboard(32), bulk=bulk_values, shear=[2.0, 2.0]).tensor[0, 0]
                               - 2.0, 2.8, rtol=5e-3)


def random_two_phase_3d(n, seed=0, fraction=0.5, smoothing=1.5):
    rng = np.random.default_rng(seed)
    noise = np.fft.fftn(rng.normal(size=(n, n, n)))
    frequency = np.fft.fftfreq(n)
    f2 = frequency[:, None, None] ** 2 + frequency[None, :, None] ** 2 + frequency[None, None, :] ** 2
    field = np.real(np.fft.ifftn(noise * np.exp(-2 * (np.pi * smoothing) ** 2 * f2)))
    return (field > np.quantile(field, 1 - fraction)).astype(np.int32)


def test_hill_equal_shear_3d_random():
    labels = random_two_phase_3d(16, seed=3)
    bulk_values, shear = np.array([2.0, 15.0]), 3.0
    fractions = np.bincount(labels.ravel(), minlength=2) / labels.size
    exact = 1 / np.sum(fractions / (bulk_values + 4 * shear / 3)) - 4 * shear / 3
    result = effective_stiffness(labels, bulk=bulk_values, shear=[shear, shear])
    tensor = np.asarray(result.tensor, np.float64)
    bulk = tensor[:3, :3].sum() / 9  # mean stress under a unit hydrostatic strain, / 3
    error = abs(bulk / exact - 1)
    print(f"Hill 3D: K = {bulk:.6f} (exact {exact:.6f}), relative error {error:.1e}, "
          f"{int(result.iterations)} iterations")
    assert error < 5e-3


@pytest.mark.parametrize("dim", [2, 3])
def test_homogeneous_material_returns_its_stiffness(dim):
    labels = np.zeros((32, 32) if dim == 2 else (16, 16, 16), np.int32)  # shapes of the Hill tests: no new compile
    result = effective_stiffness(labels, young=[210.0], poisson=[0.3])
    bulk, shear = young_poisson_to_bulk_shear(210.0, 0.3, dim)
    np.testing.assert_allclose(result.tensor, isotropic_stiffness(bulk, shear, dim), rtol=1e-5)
    voigt = mandel_to_voigt(result.tensor)
    lame = 210.0 * 0.3 / (1.3 * 0.4)
    np.testing.assert_allclose(voigt[0, 1], lame, rtol=1e-5)  # plane strain keeps the 3D lambda
    np.testing.assert_allclose(voigt[-1, -1], 210.0 / 2.6, rtol=1e-5)  # Voigt shear entry is mu
    np.testing.assert_allclose(voigt_to_mandel(voigt), result.tensor, rtol=1e-6)


def test_bounds_helpers():
    f, k = np.array([0.3, 0.7]), np.array([1.0, 4.0])
    hs = hashin_shtrikman_bounds(f, k, 3)
    np.testing.assert_allclose(hs.lower, 1 + 0.7 / (1 / 3 + 0.3 / 3), rtol=1e-6)
    np.testing.assert_allclose(hs.upper, 4 + 0.3 / (1 / -3 + 0.7 / 12), rtol=1e-6)
    vr = voigt_reuss_bounds(f, k)
    assert vr.lower < hs.lower < hs.upper < vr.upper


# ---------------------------------------------------------------------------------------------------------------
# Differentiation, compilation, batching


def _logits(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _directional_check(function, argument, seed):
    """Directional derivative of the implicit gradient against a central difference (float64)."""
    argument = jnp.asarray(argument, jnp.float64)
    direction = jnp.asarray(np.random.default_rng(seed).normal(size=argument.shape))
    gradient = jax.jit(jax.grad(function))(argument)
    function = jax.jit(function)
    step = 1e-5
    finite_difference = (function(argument + step * direction) - function(argument - step * direction)) / (2 * step)
    np.testing.assert_allclose(jnp.vdot(gradient, direction), finite_difference, rtol=1e-6, atol=1e-9)


def test_conductivity_gradients_match_finite_differences():
    with x64(True):
        logits = _logits((10, 8, 3))
        conductivities = jnp.array([1.0, 5.0, 0.5])

        def objective(lg, k=conductivities):
            tensor = effective_conductivity(jax.nn.softmax(lg, -1), k, tol=1e-12).tensor
            return tensor[0, 0] + 0.3 * tensor[0, 1]

        _directional_check(objective, logits, 1)
        _directional_check(lambda k: objective(logits, k), conductivities, 2)


def test_stiffness_gradients_match_finite_differences():
    with x64(True):
        logits = _logits((8, 6, 2))
        young = jnp.array([1.0, 6.0])

        def objective(lg, e=young):
            tensor = effective_stiffness(jax.nn.softmax(lg, -1), young=e, poisson=[0.3, 0.2], tol=1e-12).tensor
            return tensor[0, 0] + tensor[2, 2] + 0.5 * tensor[0, 2]

        _directional_check(objective, logits, 3)
        _directional_check(lambda e: objective(logits, e), young, 4)


def _primitive_names(jaxpr):
    names = []
    for equation in jaxpr.eqns:
        names.append(equation.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(equation.params):
            names.extend(_primitive_names(sub))
    return names


def test_gradient_is_implicit_not_unrolled():
    """The gradient graph holds the forward while loop only: no loop or solve in the backward pass."""
    probabilities = jax.nn.softmax(_logits((16, 16, 2), dtype=np.float32), -1)

    def objective(p, max_iterations):
        return jnp.trace(effective_conductivity(p, [1.0, 50.0], max_iterations=max_iterations, throw=False).tensor)

    forward = _primitive_names(jax.make_jaxpr(lambda p: objective(p, 50))(probabilities).jaxpr)
    assert forward.count("while") == 1
    sizes = []
    for max_iterations in (5, 500):
        names = _primitive_names(jax.make_jaxpr(jax.grad(lambda p: objective(p, max_iterations)))(probabilities).jaxpr)
        assert names.count("while") == 1 and "scan" not in names
        sizes.append(len(names))
    assert sizes[0] == sizes[1]  # the graph does not grow with the iteration budget
    # forward mode agrees with reverse mode
    direction = jnp.asarray(_logits((16, 16, 2), seed=7, dtype=np.float32))
    reverse = jnp.vdot(jax.grad(lambda p: objective(p, 500))(probabilities), direction)
    forward_mode = jax.jvp(lambda p: objective(p, 500), (probabilities,), (direction,))[1]
    np.testing.assert_allclose(forward_mode, reverse, rtol=1e-4)


def test_jit_matches_eager_and_does_not_recompile():
    probabilities = jax.nn.softmax(_logits((12, 12, 2), dtype=np.float32), -1)
    eager = effective_conductivity(probabilities, [1.0, 10.0])
    compiled = jax.jit(lambda p: effective_conductivity(p, [1.0, 10.0]))
    first = compiled(probabilities)
    second = compiled(probabilities * 1.0)
    np.testing.assert_allclose(first.tensor, eager.tensor, rtol=1e-5)
    np.testing.assert_array_equal(first.tensor, second.tensor)
    assert int(first.iterations) == int(eager.iterations)
    assert compiled._cache_size() == 1


def test_vmap_matches_loop_and_reports_status_per_sample():
    batch = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(5), (3, 12, 10, 2)), -1)
    batch = batch.at[2, 0, 0, 0].set(jnp.nan)  # one broken sample must not spoil the others
    solve = lambda p: effective_stiffness(p, bulk=[1.0, 8.0], shear=[0.5, 3.0], throw=False)  # noqa: E731
    batched = jax.vmap(solve)(batch)
    assert batched.tensor.shape == (3, 3, 3) and batched.status.shape == (3,)
    np.testing.assert_array_equal(
        batched.status, [SolverStatus.CONVERGED, SolverStatus.CONVERGED, SolverStatus.NON_FINITE]
    )
    for index in range(2):
        single = solve(batch[index])
        np.testing.assert_allclose(batched.tensor[index], single.tensor, rtol=1e-5, atol=1e-6)


def test_float32_and_float64_agree():
    labels = random_two_phase(32, seed=1)
    single = effective_conductivity(labels, [1.0, 10.0])
    with x64(True):
        double = effective_conductivity(labels, [1.0, 10.0], tol=1e-10)
        assert double.tensor.dtype == jnp.float64
    assert single.tensor.dtype == jnp.float32
    np.testing.assert_allclose(single.tensor, double.tensor, rtol=1e-5, atol=1e-6)


def test_non_convergence_is_reported_or_raised():
    labels = checkerboard(32)
    quiet = effective_conductivity(labels, [1.0, 1000.0], max_iterations=2, throw=False)
    assert quiet.status == SolverStatus.NOT_CONVERGED and int(quiet.iterations) == 2 and quiet.residual > 1e-6
    with pytest.raises(HomogenisationError, match="did not reach the tolerance"):
        effective_conductivity(labels, [1.0, 1000.0], max_iterations=2)


# ---------------------------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: effective_conductivity(np.zeros((8, 8), np.int32), [1.0, 2.0, -1.0]), "positive"),
        (lambda: effective_conductivity(np.full((8, 8), 2, np.int32), [1.0, 2.0]), "labels must lie"),
        (lambda: effective_conductivity(np.ones((8, 8, 3)) / 3, [1.0, 2.0]), "phases"),
        (lambda: effective_conductivity(np.zeros(8, np.int32), [1.0]), "2D or 3D"),
        (lambda: effective_conductivity(np.zeros((4, 4, 4, 4), np.int32), [1.0]), "2D or 3D"),
        (lambda: effective_conductivity(np.zeros((8, 8), np.int32), [[1.0, 2.0]]), "one value per phase"),
        (lambda: effective_conductivity(np.zeros((8, 8), np.int32), [1.0], tol=2.0), "tol"),
        (lambda: effective_conductivity(np.zeros((8, 8), np.int32), [1.0], scheme="x"), "scheme"),
        (lambda: effective_stiffness(np.zeros((8, 8), np.int32), young=[1.0], poisson=[0.5]), "Poisson"),
        (lambda: effective_stiffness(np.zeros((8, 8), np.int32), young=[1.0, 2.0], poisson=[0.2]), "one per"),
        (lambda: effective_stiffness(np.zeros((8, 8), np.int32), bulk=[1.0], shear=[1.0, 2.0]), "one value per"),
        (lambda: effective_stiffness(np.zeros((8, 8), np.int32), young=[1.0], shear=[1.0]), "not a mix"),
        (lambda: effective_stiffness(np.zeros((8, 8), np.int32), bulk=[1.0], shear=[0.0]), "positive"),
        (lambda: young_poisson_to_bulk_shear(1.0, 0.3, 4), "dim"),
        (lambda: hashin_shtrikman_bounds([0.5, 0.6], [1.0, 2.0], 2), "sum to 1"),
    ],
)
def test_bad_inputs_raise_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()

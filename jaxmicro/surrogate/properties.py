"""The property a head learns: phase values, the Voigt/Reuss bounds at a sample's fractions, tensors in units of
those bounds, how a tensor turns with the image, and the FFT solver that labels it.

``conductivity``: the ``(d, d)`` tensor. ``stiffness``: the Mandel matrix ``(m, m)`` (``m = 3``, plane strain, in
2D; 6 in 3D; see ``jaxmicro.physics.elasticity``). For either, the effective tensor ``T`` of any microstructure
lies between the Reuss and Voigt tensors of its phase fractions in the Loewner order, ``T_R <= T <= T_V``; both
are isotropic, with the harmonic and the arithmetic means of the phase conductivities, or of the phase bulk and
shear moduli. A head predicts ``U = D^(-1/2) (T - T_R) D^(-1/2)`` with ``D = T_V - T_R``, a symmetric matrix with
eigenvalues in (0, 1), so every prediction lies inside the bounds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.errors import InputError

PROPERTIES = ("conductivity", "stiffness")


def mandel_pairs(dim: int) -> list[tuple[int, int]]:
    """Tensor index pairs of the Mandel rows: 2D ``(11, 22, 12)``, 3D ``(11, 22, 33, 23, 13, 12)`` (0-based)."""
    return [(0, 0), (1, 1), (0, 1)] if dim == 2 else [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


def mandel_rotation(rotation: np.ndarray) -> np.ndarray:
    """The ``(m, m)`` matrix ``Q`` that turns a Mandel stiffness with the image, ``C' = Q C Q^T``, for the
    orthogonal ``(d, d)`` matrix ``R`` that turns vectors: ``Q_ab = <E_a, R E_b R^T>`` over the orthonormal
    Mandel basis ``E``."""
    rotation = np.asarray(rotation, np.float64)
    dim = rotation.shape[0]
    basis = []
    for i, j in mandel_pairs(dim):
        e = np.zeros((dim, dim))
        e[i, j] = e[j, i] = 1.0 if i == j else 1.0 / math.sqrt(2.0)
        basis.append(e)
    return np.asarray([[np.sum(a * (rotation @ b @ rotation.T)) for b in basis] for a in basis])


def tensor_size(name: str, dim: int) -> int:
    """Rows of a property's tensor: ``d`` for conductivity, 3 (2D) or 6 (3D) for the Mandel stiffness."""
    return dim if name == "conductivity" else (3 if dim == 2 else 6)


def _positive_pair(values, name: str, low: float = 0.0, high: float = math.inf) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != 2 or not all(low < v < high for v in values):
        kind = f"values between {low:g} and {high:g}" if high < math.inf else "positive values"
        raise InputError(f"{name} takes two {kind}, one per phase (phase 0, phase 1), got {list(values)}")
    return values


@dataclasses.dataclass(frozen=True)
class PropertySpec:
    """What a head predicts: ``name`` and the phase values (``conductivities``, or ``young`` and ``poisson``)."""

    name: str = "conductivity"
    conductivities: tuple[float, ...] = ()
    young: tuple[float, ...] = ()
    poisson: tuple[float, ...] = ()

    def __post_init__(self):
        if self.name not in PROPERTIES:
            raise InputError(f"unknown property {self.name!r}; choose from {', '.join(PROPERTIES)}")
        if self.name == "conductivity":
            object.__setattr__(self, "conductivities", _positive_pair(self.conductivities, "--conductivity"))
        else:
            object.__setattr__(self, "young", _positive_pair(self.young, "--young"))
            object.__setattr__(self, "poisson", _positive_pair(self.poisson, "--poisson", -1.0, 0.5))

    def to_json(self) -> dict:
        """``{"property": name, ...phase values}`` (the keys of ``model.json`` and of the data options)."""
        if self.name == "conductivity":
            return {"property": self.name, "conductivities": list(self.conductivities)}
        return {"property": self.name, "young": list(self.young), "poisson": list(self.poisson)}

    @classmethod
    def from_json(cls, record: dict) -> "PropertySpec":
        name = record.get("property", "conductivity")
        if name == "conductivity":
            return cls(name, conductivities=tuple(record["conductivities"]))
        return cls(name, young=tuple(record["young"]), poisson=tuple(record["poisson"]))

    def describe(self) -> str:
        if self.name == "conductivity":
            return f"conductivities {list(self.conductivities)}"
        return f"Young's moduli {list(self.young)}, Poisson's ratios {list(self.poisson)}"

    def size(self, dim: int) -> int:
        return tensor_size(self.name, dim)

    def moduli(self, dim: int) -> np.ndarray:
        """Per phase ``(n, r)``: the conductivity (``r = 1``), or the bulk and shear moduli (``r = 2``)."""
        if self.name == "conductivity":
            return np.asarray(self.conductivities, np.float64)[:, None]
        from jaxmicro.physics import young_poisson_to_bulk_shear

        with jax.ensure_compile_time_eval():  # constants, also when called inside a traced function
            bulk, shear = young_poisson_to_bulk_shear(np.asarray(self.young), np.asarray(self.poisson), dim)
        return np.stack([np.asarray(bulk, np.float64), np.asarray(shear, np.float64)], axis=1)

    def bounds(self, fractions, dim: int) -> tuple[jax.Array, jax.Array]:
        """Reuss and Voigt moduli ``(B, r)`` of ``(B, n)`` fractions: harmonic and arithmetic means per modulus."""
        fractions = jnp.asarray(fractions)
        moduli = jnp.asarray(self.moduli(dim), fractions.dtype)
        return 1.0 / (fractions @ (1.0 / moduli)), fractions @ moduli

    def isotropic(self, moduli, dim: int) -> jax.Array:
        """``(..., r)`` moduli -> the isotropic tensor ``(..., m, m)``."""
        if self.name == "conductivity":
            return moduli[..., :1, None] * jnp.eye(dim)
        from jaxmicro.physics import isotropic_stiffness

        return isotropic_stiffness(moduli[..., 0, None, None], moduli[..., 1, None, None], dim)

    def _isotropic_function(self, moduli, function: Callable, dim: int) -> jax.Array:
        """``f`` of the isotropic tensor of ``moduli``, through its eigenvalues (``k``; or ``d K`` on the
        spherical and ``2 mu`` on the deviatoric part)."""
        if self.name == "conductivity":
            return self.isotropic(function(moduli), dim)
        mapped = jnp.stack([function(dim * moduli[..., 0]) / dim, function(2 * moduli[..., 1]) / 2], -1)
        return self.isotropic(mapped, dim)

    def to_unit(self, tensor, lower, upper, dim: int) -> jax.Array:
        """``U = D^(-1/2) (T - T_R) D^(-1/2)``; eigenvalues in [0, 1] for every tensor inside the bounds."""
        root = self._isotropic_function(upper - lower, lambda x: 1.0 / jnp.sqrt(x), dim)
        return root @ (tensor - self.isotropic(lower, dim)) @ root

    def to_tensor(self, unit, lower, upper, dim: int) -> jax.Array:
        """Inverse of ``to_unit``: ``T = T_R + D^(1/2) U D^(1/2)``."""
        root = self._isotropic_function(upper - lower, jnp.sqrt, dim)
        return self.isotropic(lower, dim) + root @ unit @ root

    def inside(self, tensor, fractions, dim: int, slack: float) -> np.ndarray:
        """Per sample: ``(1 - slack) T_R <= T <= (1 + slack) T_V`` in the Loewner order (numpy, float64)."""
        tensor = np.asarray(tensor, np.float64)
        lower, upper = (np.asarray(self.isotropic(jnp.asarray(b), dim), np.float64)
                        for b in self.bounds(np.asarray(fractions, np.float64), dim))
        symmetric = 0.5 * (tensor + np.swapaxes(tensor, -1, -2))
        above = np.linalg.eigvalsh(symmetric - (1 - slack) * lower).min(-1) >= 0
        below = np.linalg.eigvalsh((1 + slack) * upper - symmetric).min(-1) >= 0
        return above & below

    def rotation(self, matrix: np.ndarray) -> np.ndarray:
        """How the tensor turns when the image turns by the orthogonal ``matrix``: ``T' = Q T Q^T``."""
        return np.asarray(matrix, np.float64) if self.name == "conductivity" else mandel_rotation(matrix)

    def component_names(self, dim: int) -> list[tuple[str, int, int]]:
        """``(name, row, column)`` of the upper triangle: ``k_xx, k_xy, ...``, or the stiffness's tensor
        components ``C_1111, C_1122, C_1112, ...`` of its Mandel rows."""
        if self.name == "conductivity":
            axes = "xyz"[:dim]
            return [(f"k_{axes[i]}{axes[j]}", i, j) for i in range(dim) for j in range(i, dim)]
        pairs = [f"{i + 1}{j + 1}" for i, j in mandel_pairs(dim)]
        m = len(pairs)
        return [(f"C_{pairs[a]}{pairs[b]}", a, b) for a in range(m) for b in range(a, m)]

    def tensor_components(self, tensor) -> np.ndarray:
        """The tensor's components as ``component_names`` name them: conductivity as is, a Mandel stiffness in
        Voigt form (``C_ijkl`` without the sqrt 2 factors)."""
        if self.name == "conductivity":
            return np.asarray(tensor)
        from jaxmicro.physics import mandel_to_voigt

        return np.asarray(mandel_to_voigt(jnp.asarray(tensor)))

    def labeller(self, tol: float, max_iterations: int = 2000) -> Callable:
        """``labels (B, *shape) int -> (tensor (B, m, m), status (B,), iterations (B,))``: the FFT solver,
        vmapped and compiled once per property and options."""
        return _labeller(self, float(tol), int(max_iterations))


@functools.lru_cache(maxsize=8)
def _labeller(spec: PropertySpec, tol: float, max_iterations: int) -> Callable:
    from jaxmicro.physics import effective_conductivity, effective_stiffness

    if spec.name == "conductivity":
        values = jnp.asarray(spec.conductivities, jnp.float32)

        def solve(one):
            return effective_conductivity(one, values, tol=tol, max_iterations=max_iterations, throw=False)
    else:
        young, poisson = jnp.asarray(spec.young, jnp.float32), jnp.asarray(spec.poisson, jnp.float32)

        def solve(one):
            return effective_stiffness(one, young=young, poisson=poisson, tol=tol, max_iterations=max_iterations,
                                       throw=False)

    @jax.jit
    def label(batch):
        result = jax.vmap(solve)(batch)
        return result.tensor, result.status, result.iterations

    return label


def specs_of(options: dict) -> dict[str, PropertySpec]:
    """The properties a data set is labelled with, from its options (conductivity always; stiffness when the
    elastic moduli are given)."""
    specs = {"conductivity": PropertySpec("conductivity", conductivities=tuple(options["conductivities"]))}
    if options.get("young"):
        specs["stiffness"] = PropertySpec("stiffness", young=tuple(options["young"]),
                                          poisson=tuple(options["poisson"]))
    return specs


def symmetric_unit(raw: jax.Array, m: int) -> jax.Array:
    """Raw outputs ``(..., m (m + 1) / 2)`` -> symmetric ``(..., m, m)`` with eigenvalues in (0, 1):
    ``Q diag(sigmoid(z)) Q^T`` with ``Q`` the orthogonal factor of ``I + A`` for a skew matrix ``A`` (never
    singular; Householder QR keeps ``Q`` orthogonal to rounding however large ``A`` is)."""
    s = jax.nn.sigmoid(raw[..., :m])
    rows, cols = np.triu_indices(m, 1)
    skew = jnp.zeros(raw.shape[:-1] + (m, m), raw.dtype).at[..., rows, cols].set(raw[..., m:])
    q, _ = jnp.linalg.qr(jnp.eye(m, dtype=raw.dtype) + skew - jnp.swapaxes(skew, -1, -2))
    return jnp.einsum("...ik,...k,...jk->...ij", q, s, q)


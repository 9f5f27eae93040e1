"""A trained head on disk: ``model.json`` (head architecture, feature spec, VGG weights' digest, the property and
its phase values, data split, training record) and ``params/``, an orbax checkpoint of the ensemble parameters and
the feature normaliser. ``model.json`` is written last, so a folder without it holds no finished model.

Loading checks the spec and the digest against the network it will run with and refuses another one with a
message that says what differs. Models saved by earlier versions (``params.npz``) still load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxmicro.checkpoint import quiet_closed_event_loop
from jaxmicro.errors import InputError
from jaxmicro.io import write_json
from jaxmicro.surrogate import heads
from jaxmicro.surrogate.features import (
    FeatureSpec,
    check_size,
    chunk_size,
    folded_two_point,
    make_describer,
    run_in_chunks,
    weights_digest,
)
from jaxmicro.surrogate.properties import PropertySpec

FORMAT = "jaxmicro-surrogate-model/2"
FORMATS = (FORMAT, "jaxmicro-surrogate-model/1")  # /1: parameters in params.npz


@dataclasses.dataclass
class Model:
    config: heads.HeadConfig
    spec: FeatureSpec
    digest: str | None
    property_spec: PropertySpec
    params: Any
    normaliser: dict[str, np.ndarray]
    record: dict = dataclasses.field(default_factory=dict)


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def unflatten(template, arrays: dict[str, np.ndarray], prefix: str):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        key = prefix + jax.tree_util.keystr(path)
        if key not in arrays or arrays[key].shape != np.shape(leaf):
            raise InputError(f"the saved parameters do not fit the recorded architecture (at {key})")
        out.append(jnp.asarray(arrays[key]))
    return jax.tree_util.tree_unflatten(treedef, out)


def n_inputs(config: heads.HeadConfig, normaliser: dict) -> int:
    width = normaliser["projection"].shape[1] if "projection" in normaliser else normaliser["mean"].shape[0]
    return int(width) + 1


def save_tree(path: Path, tree) -> None:
    """Write a pytree of arrays as an orbax checkpoint at ``path`` (into a temporary folder, renamed when
    complete; an existing one is replaced)."""
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    checkpointer.save(Path(path).resolve(), args=ocp.args.StandardSave(tree), force=True)


def restore_tree(path: Path):
    """Read the orbax checkpoint at ``path`` as a pytree of numpy arrays."""
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    return checkpointer.restore(Path(path).resolve(), args=ocp.args.StandardRestore())


def save_model(folder: str | Path, model: Model) -> None:
    folder = Path(folder)
    (folder / "model.json").unlink(missing_ok=True)  # until the new parameters are complete
    save_tree(folder / "params", {"params": jax.tree.map(np.asarray, model.params),
                                  "normaliser": dict(model.normaliser)})
    write_json(folder / "model.json", {
        "format": FORMAT, "head": model.config.to_json(), "features": model.spec.to_json(),
        "vgg_weights_digest": model.digest, **model.property_spec.to_json(), **model.record})


def _stored_arrays(folder: Path, form: str) -> dict[str, np.ndarray]:
    """The saved parameters and normaliser as ``{"params[...]": array, "normaliser/<name>": array}``."""
    if form == "jaxmicro-surrogate-model/1":
        with np.load(folder / "params.npz", allow_pickle=False) as stored:
            return dict(stored)
    stored = restore_tree(folder / "params")
    return flatten(stored["params"], "params") | {f"normaliser/{k}": np.asarray(v)
                                                  for k, v in stored["normaliser"].items()}


def load_model(folder: str | Path) -> Model:
    """Read a model folder (no check against a network yet: see ``check_network``)."""
    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.exists():
        raise InputError(f"{folder} is not a trained surrogate (no model.json); train one with "
                         "`jaxmicro surrogate train DATA --out MODEL`")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") not in FORMATS:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        config = heads.HeadConfig.from_json(meta["head"])
        spec = FeatureSpec.from_json(meta["features"])
        property_spec = PropertySpec.from_json(meta)
        arrays = _stored_arrays(folder, meta["format"])
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        quiet_closed_event_loop()
        raise InputError(f"the model in {folder} is damaged or from another version ({str(error)[:200]}); train "
                         "it again") from error
    normaliser = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("normaliser/")}
    init, _ = heads.make_head(config)
    template = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), n_inputs(config, normaliser)))
    params = unflatten(template, arrays, "params")
    record = {k: v for k, v in meta.items() if k not in ("format", "head", "features", "vgg_weights_digest",
                                                          "property", "conductivities", "young", "poisson")}
    return Model(config, spec, meta["vgg_weights_digest"], property_spec, params, normaliser, record)


def check_network(model: Model, spec: FeatureSpec | None, vgg_params: dict | None) -> None:
    """Refuse to run ``model`` with another feature spec or other VGG weights than it was trained with."""
    if spec is not None and spec != model.spec:
        raise InputError(f"the model was trained on features {model.spec.to_json()}, not {spec.to_json()}; use "
                         "the model's own feature spec or train a head for this one")
    if model.spec.kind == "vgg":
        digest = weights_digest(vgg_params, model.spec)
        if digest != model.digest:
            raise InputError(f"the model was trained on VGG weights with digest {str(model.digest)[:16]}..., but "
                             f"these weights have digest {digest[:16]}...; a head is only valid on the network it "
                             "was trained on: load those weights or train a head for these")


def make_predictor(model: Model, vgg_params: dict | None = None) -> Callable:
    """``labels (B, *shape) -> (mean (B, m, m), std (B, m, m), members (M, B, m, m))`` numpy, after checking
    the network; ``std`` is the members' spread times the model's calibrated ``uncertainty_scale``;
    the phases must be those the model was trained on."""
    check_network(model, None, vgg_params)
    describe = make_describer(model.spec, vgg_params)
    _, apply = heads.make_head(model.config)
    n_phases, dim = model.spec.n_phases, model.config.dim

    folded = model.spec.kind == "twopoint" and dim == 2 and "projection" in model.normaliser

    def members_of(labels):  # (B, *shape) int32 -> (B, M, m, m): features, fractions and head in one program
        axes = tuple(range(1, labels.ndim))
        fractions = jnp.stack([jnp.mean(labels == i, axis=axes) for i in range(n_phases)], 1).astype(jnp.float32)
        reduced = (folded_two_point(model.spec, model.normaliser, labels.shape[1:])(labels) if folded
                   else heads.reduce_features(jax.vmap(describe)(labels), model.normaliser))
        members = heads.predict_tensors(apply, model.params, heads.with_fraction(reduced, fractions), fractions,
                                        model.property_spec, dim)
        return jnp.swapaxes(members, 0, 1)

    run = run_in_chunks(members_of, n_phases, functools.partial(chunk_size, model.spec))

    def predict(labels):
        labels = np.asarray(labels)
        if labels.ndim - 1 != dim:
            raise InputError(f"the model predicts {dim}D tensors; these images are "
                             f"{labels.ndim - 1}D (shape {labels.shape[1:]})")
        check_size(model.spec, labels.shape[1:])
        members = np.swapaxes(run(labels), 0, 1)
        return members.mean(0), model.record.get("uncertainty_scale", 1.0) * members.std(0), members

    return predict


def uncertainty_scale(members: np.ndarray, truth: np.ndarray, coverage: float = 0.954) -> float:
    """The factor on the members' spread that puts ``coverage`` of the labels within 2 sigma, over all tensor
    components (fitted on the validation split: an ensemble of a few members is overconfident)."""
    dim = truth.shape[-1]
    upper = np.triu_indices(dim)
    error = np.abs(members.mean(0) - truth)[:, upper[0], upper[1]]
    spread = members.std(0)[:, upper[0], upper[1]]
    ratio = error / np.maximum(spread, 1e-12 * (np.abs(truth).max() + 1e-30))
    return float(max(np.quantile(ratio, coverage) / 2.0, 1e-6))

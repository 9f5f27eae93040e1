"""Training a head: split by sample, features of augmented copies computed once, AdamW with warmup and cosine
decay, early stopping on the validation split, resumable training state.

The frozen network's features are computed once per sample and symmetry and cached beside the data
(``DATA/features/``), so training itself is a cheap ensemble MLP. Members see the same batches with bootstrap
weights (Poisson(1) per sample and member), the classical way to make an ensemble's spread an error estimate.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxmicro.checkpoint import quiet_closed_event_loop
from jaxmicro.errors import InputError
from jaxmicro.io import atomic_write_path
from jaxmicro.surrogate import data as data_module, heads
from jaxmicro.surrogate.features import FeatureSpec, check_size, make_featurizer, weights_digest
from jaxmicro.surrogate.model import Model, n_inputs, save_model, uncertainty_scale

STATE = "training_state"  # orbax checkpoints of the training, removed when it ends


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    epochs: int = 400
    batch: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 60
    augment: int = 8  # all symmetries of the square (the first 4 hold no axis swap: k_xx and k_yy never trade)
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    exclude: tuple[str, ...] = ()  # generator families left out of training (out-of-distribution tests)
    save_every: int = 20


def split(data, options: TrainOptions) -> dict[str, np.ndarray]:
    """Sample indices of the train, validation and test splits (by sample, before augmentation)."""
    n = len(data["labels"])
    order = np.random.default_rng(options.seed).permutation(n)
    n_test = int(round(options.test_fraction * n))
    n_val = max(1, int(round(options.validation_fraction * n)))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    if options.exclude:
        kept = ~np.isin(data["family"], list(options.exclude))
        train, val = train[kept[train]], val[kept[val]]
    if len(train) < 2 or len(val) < 1:
        raise InputError(f"too few samples to train ({len(train)} for training, {len(val)} for validation); make "
                         "more data with --count")
    return {"train": np.sort(train), "validation": np.sort(val), "test": np.sort(test)}


def _fingerprint(*parts) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_features(cache: Path | None, data, spec, vgg_params, augment: int, seed: int,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Features ``(augment, N, F)`` of every sample under the first ``augment`` square symmetries (copy 0: the
    image itself; copies 1..: transformed and periodically shifted), cached in ``cache`` by the images' content,
    the spec, the weights' digest, ``augment`` and ``seed``; so heads for other labels of the same images (another
    contrast) or other splits reuse them."""
    import hashlib

    labels = np.ascontiguousarray(data["labels"])
    key = _fingerprint(hashlib.sha256(labels.tobytes()).hexdigest(), labels.shape, spec.to_json(),
                       weights_digest(vgg_params, spec), augment, seed)
    path = None if cache is None else Path(cache) / f"features-{key}.npz"
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as cached:
            return cached["features"]
    rng = np.random.default_rng(seed + 1)
    group = data_module.symmetries(labels.ndim - 1)
    featurize = make_featurizer(spec, vgg_params)
    copies = []
    for k in range(augment):
        images, _ = data_module.apply_symmetry(labels, np.zeros((len(labels),) + (labels.ndim - 1,) * 2), *group[k])
        copies.append(featurize(images if k == 0 else data_module.periodic_shift(images, rng), progress))
    features = np.stack(copies)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(path) as temp:
            np.savez(temp, features=features)
    return features


def _training_arrays(data, features, splits, augment, prop):
    """Training rows (every copy of every training sample, its tensor rotated) and validation rows (copy 0)."""
    group = data_module.symmetries(data["labels"].ndim - 1)
    train, val = splits["train"], splits["validation"]
    truth = data[prop.name]
    rotations = [prop.rotation(data_module.symmetry_matrix(*group[k])) for k in range(augment)]
    tensors = [np.einsum("ij,njk,lk->nil", q, truth[train], q) for q in rotations]
    return {
        "train_features": features[:augment, train].reshape(-1, features.shape[-1]),
        "train_tensor": np.concatenate(tensors).astype(np.float32),
        "train_fractions": np.tile(data["fractions"][train], (augment, 1)),
        "train_sample": np.tile(np.arange(len(train)), augment),
        "validation_features": features[0, val],
        "validation_tensor": truth[val],
        "validation_fractions": data["fractions"][val],
    }


def train(data_folder: str | Path, out: str | Path, *, config: heads.HeadConfig, spec: FeatureSpec,
          vgg_params: dict | None, options: TrainOptions = TrainOptions(),
          feature_progress: Callable[[int], None] | None = None,
          epoch_progress: Callable[[int, float], None] | None = None,
          feature_cache: str | Path | None = "data") -> Model:
    """Train an ensemble head on a data folder and save it to ``out`` (resuming a killed run there).

    ``feature_cache``: where the frozen features are cached (``"data"``: a ``features`` folder in the data
    folder, shared by every head trained on those images; None: not cached)."""
    data = data_module.load_data(data_folder)
    shape = data["labels"].shape[1:]
    if len(shape) != config.dim:
        raise InputError(f"the data are {len(shape)}D but the head was asked for {config.dim}D tensors")
    prop = property_of(data, config.property)
    check_size(spec, shape)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = split(data, options)
    digest = weights_digest(vgg_params, spec)
    data_digest = data["manifest"]["options_digest"]
    features = image_features(Path(data_folder) / "features" if feature_cache == "data" else feature_cache, data,
                              spec, vgg_params, options.augment, options.seed, feature_progress)
    cached = _training_arrays(data, features, splits, options.augment, prop)
    normaliser = fit_normaliser_for(config, cached["train_features"])
    init, apply = heads.make_head(config)
    n_train = len(cached["train_features"])
    batch = min(options.batch, n_train)
    steps_per_epoch = max(1, n_train // batch)
    total = steps_per_epoch * options.epochs
    warmup = max(1, min(200, total // 10))
    schedule = optax.warmup_cosine_decay_schedule(0.0, options.learning_rate, warmup, max(total, warmup + 1),
                                                  options.learning_rate * 1e-2)
    tx = optax.adamw(schedule, weight_decay=options.weight_decay)
    key = jax.random.PRNGKey(options.seed)
    params = init(key, n_inputs(config, normaliser))
    opt_state = tx.init(params)
    weights = np.random.default_rng(options.seed + 2).poisson(1.0, (config.members, len(splits["train"])))
    sample_weights = jnp.asarray(weights[:, cached["train_sample"]], jnp.float32)  # (M, n_train)

    def prepared(prefix):
        fractions = jnp.asarray(cached[f"{prefix}_fractions"])
        bounds = prop.bounds(fractions, config.dim)
        return (heads.head_inputs(jnp.asarray(cached[f"{prefix}_features"]), fractions, normaliser),
                prop.to_unit(jnp.asarray(cached[f"{prefix}_tensor"]), *bounds, config.dim))

    train_x, train_y = prepared("train")
    val_x, val_y = prepared("validation")

    def member_losses(p, x, y, w):  # (M,)
        error = jnp.sum((apply(p, x) - y[None]) ** 2, axis=(-1, -2))  # (M, B)
        return jnp.sum(w * error, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)

    @jax.jit
    def step(p, state, index):
        loss, grads = jax.value_and_grad(lambda q: jnp.sum(member_losses(
            q, train_x[index], train_y[index], sample_weights[:, index])))(p)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss / config.members

    def epoch(p, state, rng):
        # steps dispatched from Python: inside a compiled loop XLA's CPU convolutions (the cnn head) ran 10x slower
        order = jax.random.permutation(rng, n_train)[: steps_per_epoch * batch].reshape(steps_per_epoch, batch)
        losses = []
        for index in order:
            p, state, loss = step(p, state, index)
            losses.append(loss)
        return p, state, jnp.mean(jnp.stack(losses))

    @jax.jit
    def validation_loss(p):
        return jnp.mean(jnp.sum((apply(p, val_x).mean(0) - val_y) ** 2, axis=(-1, -2)))

    fingerprint = _fingerprint(data_digest, digest, spec.to_json(), config.to_json(), dataclasses.asdict(options))
    start, best, best_epoch, best_params, history = 0, np.inf, -1, params, []
    manager, saved = training_state(out, fingerprint, {"params": params, "best": params, "optimiser": opt_state})
    if saved is not None:
        start, restored = saved
        params, best_params, opt_state = (jax.tree.map(jnp.asarray, restored["arrays"][k])
                                          for k in ("params", "best", "optimiser"))
        best, best_epoch, history = (restored["meta"][k] for k in ("best", "best_epoch", "history"))

    def save_state(epoch_done):
        meta = {"fingerprint": fingerprint, "best": best, "best_epoch": best_epoch, "history": history}
        arrays = {"params": params, "best": best_params, "optimiser": opt_state}
        manager.save(epoch_done, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                          meta=ocp.args.JsonSave(meta)), force=True)

    for index in range(start, options.epochs):
        params, opt_state, train_loss = epoch(params, opt_state, jax.random.fold_in(key, index))
        val = float(validation_loss(params))
        history.append({"epoch": index + 1, "train_loss": float(train_loss), "validation_loss": val})
        if val < best:
            best, best_epoch, best_params = val, index + 1, params
        if epoch_progress:
            epoch_progress(index + 1, val)
        if index + 1 - best_epoch >= options.patience:
            break
        if (index + 1) % options.save_every == 0:
            save_state(index + 1)
    record = {"data": {"folder": str(Path(data_folder).resolve()), "options_digest": data_digest,
                       "samples": int(len(data["labels"]))},
              "split": {name: indices.tolist() for name, indices in splits.items()},
              "training": dataclasses.asdict(options) | {"best_epoch": best_epoch, "best_validation_loss": best,
                                                         "epochs_run": len(history)},
              "history": history}
    fractions = jnp.asarray(cached["validation_fractions"])
    val_members = np.asarray(prop.to_tensor(apply(best_params, val_x), *prop.bounds(fractions, config.dim),
                                            config.dim))
    record["uncertainty_scale"] = uncertainty_scale(val_members, cached["validation_tensor"])
    model = Model(config, spec, digest, prop, best_params, normaliser, record)
    save_model(out, model)
    manager.close()
    shutil.rmtree(out / STATE, ignore_errors=True)
    return model


def training_state(out: Path, fingerprint: str, template) -> tuple[ocp.CheckpointManager, tuple | None]:
    """The orbax checkpoints of a training in ``out`` and its latest state, ``(epoch, {"arrays": ..., "meta":
    ...})``, or None; the state of another run (other data, head, features or options) or a damaged one is
    removed, so training starts afresh."""
    folder = (out / STATE).resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True)
    manager = ocp.CheckpointManager(folder, options=options)
    epoch = manager.latest_step()
    if epoch is None:
        return manager, None
    try:
        restored = manager.restore(epoch, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(template),
                                                                  meta=ocp.args.JsonRestore()))
        if restored["meta"].get("fingerprint") == fingerprint:
            return manager, (epoch, restored)
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        quiet_closed_event_loop()
    manager.close()
    shutil.rmtree(folder)
    return ocp.CheckpointManager(folder, options=options), None


def property_of(data, name: str):
    """The ``PropertySpec`` of ``name`` in a loaded data set, or a clear error when it holds no such labels."""
    if name not in data["properties"]:
        raise InputError(f"the data hold no {name} labels (only {', '.join(data['properties'])}); make data with "
                         "--young E0,E1 --poisson NU0,NU1 for stiffness labels")
    return data["properties"][name]


def fit_normaliser_for(config: heads.HeadConfig, features: np.ndarray) -> dict:
    if config.head == "cnn":  # the image itself: no standardisation per pixel
        return {"mean": np.zeros(features.shape[1], np.float32), "scale": np.ones(features.shape[1], np.float32)}
    return heads.fit_normaliser(features, config.components)


def default_components(head: str) -> int:
    return 32 if head == "twopoint" else 0


def default_hidden(head: str) -> tuple[int, ...]:
    """Hidden widths: 128,128 for the two-point head (as accurate as 256,256 on its 32 components, and the
    ensemble is most of its prediction time), else 256,256."""
    return (128, 128) if head == "twopoint" else (256, 256)


def spec_for(head: str, taps: Sequence[str] | str | None = None, n_phases: int = 2,
             shape: Sequence[int] = (64, 64)) -> FeatureSpec:
    """The feature spec of a head: VGG taps for ``gram``; for ``twopoint`` a window of radius up to 16 pixels
    that fits the images."""
    if head not in heads.HEADS:
        raise InputError(f"unknown head {head!r}; choose from {', '.join(heads.HEADS)}")
    if head == "twopoint":
        return FeatureSpec(kind="twopoint", n_phases=n_phases, radius=max(1, min(16, (min(shape) - 1) // 2)))
    if head == "cnn":
        if len(shape) != 2:
            raise InputError(f"the cnn head reads 2D images only, the data are {len(shape)}D")
        return FeatureSpec(kind="pixels", n_phases=n_phases)
    return FeatureSpec(kind="vgg", n_phases=n_phases, **({"taps": taps} if taps else {}))

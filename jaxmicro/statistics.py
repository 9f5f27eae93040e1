"""Microstructure statistics on periodic grids: volume fractions, two-point correlations, lineal path,
chord lengths, specific surface and the copy check; and the (non-periodic) largest-cluster fraction. For
grayscale images: the intensity histogram and its Wasserstein-1 distance, the normalised intensity
autocovariance, multi-Otsu segmentation and the copy check on intensities.

Conventions (see docs/statistics.md):

- A label image is an integer array ``(*spatial)`` holding phase indices ``0..n-1`` (2D ``(H, W)`` or 3D
  ``(D, H, W)``). Per-phase indicators or probabilities are ``(*spatial, n)``, channel last, as on the
  network side.
- Every image is treated as one period of an infinite periodic structure: shifts wrap around. The exception
  is connectivity (``largest_cluster_fraction``): clusters do not join across the image edges.
- Distances are in pixels (voxels) along the grid axes; ``r = 0`` is the origin. Functions that report a
  distance or a surface per volume take ``voxel_size=`` (a number, one per axis in array order, or a text
  such as ``"0.5um"``, see ``jaxmicro.units``) and then report physical units: distances ``r * voxel_size``,
  surfaces per unit length (area per volume). ``voxel_size=None`` (the default) keeps pixels.
- The default cut-off of every profile is half the smallest side, ``min(spatial) // 2``: beyond it the
  periodic S2 repeats itself mirrored and carries no new information.

The FFT-based functions (``phase_indicators``, ``volume_fractions``, ``two_point_correlation``,
``two_point_profiles``, ``specific_surface`` with ``n_phases`` given, ``copy_agreement`` with ``n_phases``
given, ``copy_baseline``) are pure JAX: they accept numpy or JAX arrays and work under ``jax.jit`` and
``jax.vmap``; the first three are differentiable with respect to soft probabilities. The run-length
statistics (``lineal_path``, ``chord_length_distribution``) and the cluster statistics
(``largest_cluster_fraction`` and its ``_tiles`` and ``_slices`` means, by ``scipy.ndimage.label``) are exact
integer counts done in numpy.
"""

from __future__ import annotations

import itertools
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxmicro.errors import InputError

__all__ = [
    "TwoPointProfiles",
    "phase_indicators",
    "volume_fractions",
    "two_point_correlation",
    "two_point_profiles",
    "default_max_distance",
    "axis_distances",
    "lineal_path",
    "chord_length_distribution",
    "mean_chord_length",
    "specific_surface",
    "largest_cluster_fraction",
    "largest_cluster_fraction_slices",
    "largest_cluster_fraction_tiles",
    "copy_agreement",
    "copy_baseline",
    "HISTOGRAM_BINS",
    "AutocovarianceProfiles",
    "intensity_histogram",
    "intensity_wasserstein_distance",
    "intensity_autocovariance",
    "autocovariance_profiles",
    "correlation_length",
    "otsu_thresholds",
    "segment_intensities",
    "copy_correlation",
    "copy_correlation_baseline",
    "phase_randomised_surrogate",
]


# ----------------------------------------------------------------------------------------------------------
# helpers


def _float_dtype(x) -> jnp.dtype:
    """float64 if the input is float64 (and x64 is on), otherwise float32."""
    dtype = jnp.asarray(x).dtype
    if dtype == jnp.float64:
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def _concrete_n_phases(labels) -> int:
    """Number of phases inferred from a concrete label image: ``max + 1``."""
    try:
        return int(np.asarray(labels).max()) + 1
    except jax.errors.ConcretizationTypeError as error:  # pragma: no cover - message only
        raise InputError("pass n_phases explicitly when calling this function under jax.jit or jax.vmap") from error


def default_max_distance(shape) -> int:
    """Default cut-off of the profiles: half the smallest side, ``min(shape) // 2`` (pixels)."""
    return int(min(shape)) // 2


def _check_max_distance(max_distance, spatial_shape) -> int:
    limit = default_max_distance(spatial_shape)
    if max_distance is None:
        return limit
    max_distance = int(max_distance)
    if not 0 <= max_distance <= limit:
        raise InputError(
            f"max_distance={max_distance} must lie between 0 and half the smallest side ({limit} pixels for an "
            f"image of shape {tuple(spatial_shape)}); beyond it a periodic profile repeats itself"
        )
    return max_distance


def _labels_array(labels, name: str = "labels") -> np.ndarray:
    """A concrete numpy integer label image, checked."""
    array = np.asarray(labels)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise InputError(f"{name} must be an integer label image (phase indices 0..n-1), got dtype {array.dtype}")
    if array.ndim < 1:
        raise InputError(f"{name} must have at least one spatial axis, got a scalar")
    if array.size and array.min() < 0:
        raise InputError(f"{name} holds negative labels; phase indices must be 0..n-1")
    return array


# ----------------------------------------------------------------------------------------------------------
# indicators and volume fractions


@partial(jax.jit, static_argnames=("n_phases",))
def _one_hot(labels, n_phases: int):
    return jax.nn.one_hot(labels, n_phases, dtype=jnp.float32)


def phase_indicators(labels, n_phases: int):
    """One-hot phase indicators of a label image.

    Args:
        labels: ``(*spatial)`` integer phase indices ``0..n_phases-1``.
        n_phases: number of phases ``n`` (a Python int; static under ``jit``).

    Returns:
        ``(*spatial, n)`` float32, 1 where the pixel belongs to the phase, else 0.
    """
    return _one_hot(jnp.asarray(labels), int(n_phases))


def volume_fractions(probabilities):
    """Volume fraction of each phase: the mean of its indicator (or probability) over the image.

    Args:
        probabilities: ``(*spatial, n)`` indicators or soft probabilities.

    Returns:
        ``(n,)`` in float32 (float64 for float64 input). Differentiable.
    """
    x = jnp.asarray(probabilities)
    x = x.astype(_float_dtype(x))
    return jnp.mean(x, axis=tuple(range(x.ndim - 1)))


# ----------------------------------------------------------------------------------------------------------
# two-point correlations


def two_point_correlation(probabilities, *, cross: bool = False):
    """Periodic two-point correlation maps, by FFT.

    ``S2[r, i] = (1/N) sum_x I_i(x) I_i(x + r)``: the probability that two points a vector ``r`` apart both
    lie in phase ``i``. With ``cross=True``, ``S2[r, i, j] = (1/N) sum_x I_i(x + r) I_j(x)``
    (``ifft(fft(I_i) * conj(fft(I_j))) / N``), so ``S2[r, i, j] = S2[-r, j, i]`` and, for probabilities that
    sum to 1 over phases, ``sum_j S2[r, i, j] = f_i``. ``S2[0, i(, i)] = f_i``.

    Args:
        probabilities: ``(*spatial, n)`` indicators or soft probabilities (2D or 3D, any sizes).
        cross: also return the cross-correlations between phases.

    Returns:
        ``(*spatial, n)`` (or ``(*spatial, n, n)`` with ``cross=True``), origin at index 0 (not centred;
        ``jnp.fft.fftshift`` centres it), negative shifts at the end of each axis. float32 (float64 for
        float64 input). Differentiable, ``jit``/``vmap``-able.
    """
    x = jnp.asarray(probabilities)
    x = x.astype(_float_dtype(x))
    if x.ndim < 2:
        raise InputError(f"probabilities must be (*spatial, n_phases), got shape {x.shape}")
    spatial = x.shape[:-1]
    axes = tuple(range(len(spatial)))
    n_pixels = int(np.prod(spatial))
    spectrum = jnp.fft.rfftn(x, axes=axes)
    if cross:
        product = spectrum[..., :, None] * jnp.conj(spectrum[..., None, :])
    else:
        product = spectrum.real**2 + spectrum.imag**2
    correlation = jnp.fft.irfftn(product, s=spatial, axes=axes) / n_pixels
    return correlation.astype(x.dtype)


class TwoPointProfiles(NamedTuple):
    """S2 profiles up to a cut-off ``R`` (a pytree).

    Attributes:
        distance: ``(R + 1,)`` distances 0..R in pixels.
        per_axis: ``(ndim, R + 1, n)``: ``per_axis[a, r, i] = S2_i`` at a shift of ``r`` pixels along axis ``a``.
        radial: ``(R + 1, n)``: S2 averaged over all shifts whose length rounds to ``r`` (shortest periodic
            shift vector), i.e. over the pixels of a circular (spherical) shell.
    """

    distance: jax.Array
    per_axis: jax.Array
    radial: jax.Array


def _radial_average(correlation, max_distance: int):
    """Average ``(*spatial, n)`` over shells ``round(|r|) = 0..max_distance`` of the shortest periodic shift."""
    spatial = correlation.shape[:-1]
    radius_squared = jnp.zeros(spatial, jnp.float32)
    for axis, size in enumerate(spatial):
        index = jnp.arange(size)
        offset = jnp.minimum(index, size - index).astype(jnp.float32)
        shape = [1] * len(spatial)
        shape[axis] = size
        radius_squared = radius_squared + offset.reshape(shape) ** 2
    shell = jnp.round(jnp.sqrt(radius_squared)).astype(jnp.int32).reshape(-1)
    shell = jnp.minimum(shell, max_distance + 1)
    flat = correlation.reshape(-1, correlation.shape[-1])
    sums = jax.ops.segment_sum(flat, shell, num_segments=max_distance + 2)
    counts = jax.ops.segment_sum(jnp.ones_like(shell, dtype=flat.dtype), shell, num_segments=max_distance + 2)
    return (sums / counts[:, None])[: max_distance + 1]


def _along_axes(correlation_map, ndim: int, max_distance: int):
    """``(ndim, R + 1, ...)``: a periodic correlation map at displacements ``0..R`` along each spatial axis."""
    per_axis = []
    for axis in range(ndim):
        index = [0] * ndim
        index[axis] = slice(0, max_distance + 1)
        per_axis.append(correlation_map[tuple(index)])
    return jnp.stack(per_axis)


def two_point_profiles(labels_or_probabilities, *, max_distance: int | None = None, n_phases: int | None = None,
                       voxel_size=None):
    """S2 along each axis and radially averaged, up to a cut-off.

    Args:
        labels_or_probabilities: an integer label image ``(*spatial)`` or float probabilities ``(*spatial, n)``.
        max_distance: cut-off ``R`` in pixels; default (and maximum) half the smallest side,
            ``min(spatial) // 2``, beyond which the periodic S2 repeats itself mirrored.
        n_phases: number of phases for a label image (default ``labels.max() + 1``; required under ``jit``).
        voxel_size: cubic voxel side (a number or text such as ``"0.5um"``): ``distance`` becomes ``r * side``.
            The radial average needs equal sides; with unequal ones use ``axis_distances`` for ``per_axis``.

    Returns:
        ``TwoPointProfiles(distance (R+1,), per_axis (ndim, R+1, n), radial (R+1, n))``.
    """
    x = jnp.asarray(labels_or_probabilities)
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        n = int(n_phases) if n_phases is not None else _concrete_n_phases(x)
        x = phase_indicators(x, n)
    spatial = x.shape[:-1]
    max_distance = _check_max_distance(max_distance, spatial)
    correlation = two_point_correlation(x)
    distance = jnp.arange(max_distance + 1, dtype=correlation.dtype)
    voxel = _voxel(voxel_size, len(spatial))
    if voxel is not None:
        if not voxel.isotropic:
            raise InputError(f"the radial S2 needs equal voxel sides, not {voxel.sides}; use "
                             "jaxmicro.statistics.axis_distances for the distances of the per-axis profiles")
        distance = distance * jnp.asarray(voxel.sides[0], correlation.dtype)
    return TwoPointProfiles(
        distance=distance,
        per_axis=_along_axes(correlation, len(spatial), max_distance),
        radial=_radial_average(correlation, max_distance),
    )


# ----------------------------------------------------------------------------------------------------------
# run-length statistics (numpy, exact)


def _chord_counts_along(labels: np.ndarray, axis: int, n_phases: int) -> np.ndarray:
    """``(n, L + 1)`` number of periodic chords of each length ``0..L`` along one axis (``L`` its size).

    Each grid line is rotated to start at a phase change, so the plain runs of the rotated line are the
    periodic chords (a chord crossing the image edge is joined into one). A line with no phase change
    gives one chord of length ``L``.
    """
    length = labels.shape[axis]
    lines = np.moveaxis(labels, axis, -1).reshape(-1, length)
    change = lines != np.roll(lines, 1, axis=1)
    first_change = np.argmax(change, axis=1).astype(np.intp)
    index = np.arange(length, dtype=np.intp)[None, :] + first_change[:, None]
    index[index >= length] -= length
    rotated = np.take_along_axis(lines, index, axis=1)
    starts = np.empty(rotated.shape, dtype=bool)
    starts[:, 0] = True
    np.not_equal(rotated[:, 1:], rotated[:, :-1], out=starts[:, 1:])
    start_positions = np.flatnonzero(starts)
    chord_lengths = np.diff(np.append(start_positions, rotated.size))
    chord_phases = rotated.reshape(-1)[start_positions].astype(np.int64)
    counts = np.bincount(chord_phases * (length + 1) + chord_lengths, minlength=n_phases * (length + 1))
    return counts[: n_phases * (length + 1)].reshape(n_phases, length + 1)


def _chord_counts(labels: np.ndarray, n_phases: int) -> list[np.ndarray]:
    return [_chord_counts_along(labels, axis, n_phases) for axis in range(labels.ndim)]


def _lineal_path_from_counts(counts: list[np.ndarray], n_pixels: int, max_distance: int) -> np.ndarray:
    """``(ndim, R + 1, n)`` lineal path from per-axis chord counts ``(n, L + 1)``."""
    out = []
    r = np.arange(max_distance + 1)[:, None]
    for axis_counts in counts:
        length = axis_counts.shape[1] - 1
        chord = np.arange(length + 1)[None, :]
        # a chord of length l < L holds (l - r) segments of r + 1 pixels; a whole line holds L of them
        positions = np.where(chord < length, np.maximum(chord - r, 0), length)  # (R + 1, L + 1)
        out.append(positions @ axis_counts.T.astype(np.float64) / n_pixels)
    return np.stack(out)


def lineal_path(labels, n_phases: int | None = None, *, max_distance: int | None = None) -> np.ndarray:
    """Lineal path function along each axis, on the periodic grid.

    ``L[a, r, i]`` is the probability that a segment of ``r + 1`` consecutive pixels along axis ``a``
    (a segment of length ``r``) lies wholly in phase ``i``. ``L[a, 0, i] = f_i`` and
    ``L[a, 1, i] = S2_i`` at one pixel along ``a``. Segments wrap around the image edge.

    Args:
        labels: ``(*spatial)`` integer phase indices.
        n_phases: number of phases (default ``labels.max() + 1``).
        max_distance: cut-off ``R`` (default half the smallest side).

    Returns:
        ``(ndim, R + 1, n)`` float64 numpy array. Exact; numpy, not ``jit``-able.
    """
    array = _labels_array(labels)
    n = int(n_phases) if n_phases is not None else _concrete_n_phases(array)
    _check_n_phases(array, n)
    max_distance = _check_max_distance(max_distance, array.shape)
    return _lineal_path_from_counts(_chord_counts(array, n), array.size, max_distance)


def _check_n_phases(array: np.ndarray, n_phases: int) -> None:
    if array.size and array.max() >= n_phases:
        raise InputError(f"labels hold phase {int(array.max())} but n_phases={n_phases}")


def chord_length_distribution(labels, n_phases: int | None = None, *, normalize: bool = False) -> np.ndarray:
    """Chord-length distribution along each axis: the lengths of the runs of each phase along grid lines.

    Periodic: a run that crosses the image edge is one chord (its two pieces are joined). A grid line
    lying wholly in one phase has no end on the periodic grid; it counts as one chord of the line's length
    ``L`` (a lower bound of the true chord).

    Args:
        labels: ``(*spatial)`` integer phase indices.
        n_phases: number of phases (default ``labels.max() + 1``).
        normalize: if True, return the number-weighted probability of each length per axis and phase
            (each ``[a, i, :]`` sums to 1, or is all 0 when the phase has no chord along ``a``).

    Returns:
        ``(ndim, n, max(spatial) + 1)``: ``[a, i, l]`` = number (or probability) of chords of phase ``i``
        along axis ``a`` with length ``l`` pixels; index ``l = 0`` is always 0 and lengths beyond an axis'
        size are 0. int64 counts (float64 probabilities). numpy, not ``jit``-able.
    """
    array = _labels_array(labels)
    n = int(n_phases) if n_phases is not None else _concrete_n_phases(array)
    _check_n_phases(array, n)
    counts = _chord_counts(array, n)
    out = np.zeros((array.ndim, n, max(array.shape) + 1), dtype=np.int64)
    for axis, axis_counts in enumerate(counts):
        out[axis, :, : axis_counts.shape[1]] = axis_counts
    if normalize:
        total = out.sum(axis=-1, keepdims=True)
        return np.where(total > 0, out / np.maximum(total, 1), 0.0)
    return out


def mean_chord_length(counts: np.ndarray, voxel_size: float | None = None) -> np.ndarray:
    """Number-weighted mean chord length (pixels) from chord counts ``(..., L + 1)`` indexed by length, as
    ``chord_length_distribution`` gives them; 0 where there is no chord. ``voxel_size``: the side of a
    pixel along the chords' axis (a number), giving the length in that unit."""
    counts = np.asarray(counts, np.float64)
    mean = (counts * np.arange(counts.shape[-1])).sum(-1) / np.maximum(counts.sum(-1), 1)
    if voxel_size is None:
        return mean
    side = _voxel(voxel_size, 1)
    return mean * side.sides[0]


def axis_distances(max_distance: int, ndim: int, voxel_size=None) -> np.ndarray:
    """``(ndim, R + 1)`` distances of the per-axis profiles (S2, lineal path): ``r * voxel_size[a]``, or ``r``
    (pixels) without a voxel size."""
    r = np.arange(int(max_distance) + 1, dtype=np.float64)
    voxel = _voxel(voxel_size, ndim)
    sides = np.ones(ndim) if voxel is None else np.asarray(voxel.sides)
    return sides[:, None] * r[None, :]


def _voxel(voxel_size, ndim: int):
    from jaxmicro.units import per_axis

    return per_axis(voxel_size, ndim)


# ----------------------------------------------------------------------------------------------------------
# specific surface


@partial(jax.jit, static_argnames=("n_phases",))
def _interface_density(labels, n_phases: int, axis_weights=None):
    """``(n, n)`` boundary faces between phases i != j per pixel (symmetric, zero diagonal); faces normal to
    axis ``a`` weighted by ``axis_weights[a]`` when given."""
    indicators = jax.nn.one_hot(labels, n_phases, dtype=jnp.float32)
    ordered = jnp.zeros((n_phases, n_phases), jnp.float32)
    for axis in range(labels.ndim):
        neighbour = jnp.roll(indicators, -1, axis=axis)
        faces = jnp.einsum("...i,...j->ij", indicators, neighbour)
        ordered = ordered + (faces if axis_weights is None else faces * axis_weights[axis])
    faces = (ordered + ordered.T) * (1.0 - jnp.eye(n_phases, dtype=jnp.float32))
    return faces / labels.size


def specific_surface(labels, n_phases: int | None = None, *, pairwise: bool = False, voxel_size=None):
    """Specific surface: phase-boundary faces per unit area (2D) or volume (3D), on the periodic grid.

    Counts the pixel faces (edges in 2D, faces in 3D) between neighbouring pixels of different phases, per
    pixel of the image (unit: 1/pixel). In 2D it is the perimeter per area measured along the grid (a
    digitised disk of radius R has about 8R faces); for an isotropic structure the true (Euclidean) value
    is about ``pi/4`` of it in 2D and ``2/3`` of it in 3D (Cauchy-Crofton). Along one axis the face
    density between i and j equals ``S2_ij(e) + S2_ji(e)`` at a unit shift ``e``.

    Args:
        labels: ``(*spatial)`` integer phase indices.
        n_phases: number of phases (default ``labels.max() + 1``; required under ``jit``).
        pairwise: return the ``(n, n)`` matrix of faces between phase pairs instead.
        voxel_size: side of a pixel (a number, one per axis, or text such as ``"0.5um"``): the result becomes
            face area per volume (2D: boundary length per area) in 1/unit. A face normal to axis ``a`` has the
            area ``prod(sides) / sides[a]``, so each counts ``1 / sides[a]``; cubic voxels divide by the side.

    Returns:
        ``(n,)`` surface of each phase (faces between it and any other phase), or with ``pairwise=True``
        the symmetric ``(n, n)`` matrix with zero diagonal. The total interface density is
        ``specific_surface(...).sum() / 2``. float32.
    """
    labels = jnp.asarray(labels)
    n = int(n_phases) if n_phases is not None else _concrete_n_phases(labels)
    voxel = _voxel(voxel_size, labels.ndim)
    weights = None if voxel is None else jnp.asarray([1.0 / s for s in voxel.sides], jnp.float32)
    faces = _interface_density(labels, n, weights)
    return faces if pairwise else faces.sum(axis=1)


# ----------------------------------------------------------------------------------------------------------
# connectivity (numpy + scipy, non-periodic)


def _largest_cluster_fraction(array: np.ndarray, n_phases: int) -> np.ndarray:
    """``(n,)`` largest face-connected cluster / pixels of each phase; NaN for an absent phase. Unchecked."""
    structure = ndimage.generate_binary_structure(array.ndim, 1)  # face neighbours only
    out = np.full(n_phases, np.nan, dtype=np.float64)
    for phase in range(n_phases):
        clusters, count = ndimage.label(array == phase, structure)
        if count:
            sizes = np.bincount(clusters.reshape(-1))
            out[phase] = sizes[1:].max() / sizes[1:].sum()
    return out


def largest_cluster_fraction(labels, n_phases: int | None = None) -> np.ndarray:
    """Fraction of each phase's pixels (voxels) that lie in its largest connected cluster.

    Clusters are face-connected (4 neighbours in 2D, 6 in 3D; pixels touching only at a corner or edge are
    separate) and **not periodic**: a cluster does not join across the image edges, since exemplars are cut
    from larger samples. 1 means the phase is one connected cluster; ``1 / k`` that it is ``k`` equal pieces.

    Args:
        labels: ``(*spatial)`` integer phase indices (2D or 3D).
        n_phases: number of phases (default ``labels.max() + 1``).

    Returns:
        ``(n,)`` float64 in ``(0, 1]``; NaN for a phase absent from the image. numpy, not ``jit``-able.
    """
    array = _labels_array(labels)
    n = int(n_phases) if n_phases is not None else _concrete_n_phases(array)
    _check_n_phases(array, n)
    return _largest_cluster_fraction(array, n)


def largest_cluster_fraction_tiles(labels, tile_shape, n_phases: int | None = None,
                                   spread: bool = False) -> np.ndarray:
    """``largest_cluster_fraction`` averaged over the non-overlapping tiles of ``tile_shape`` cut from ``labels``.

    The fraction depends on the window (a larger window holds more clusters besides the largest), so an exemplar
    is judged at a reconstruction's size this way. Tile sides larger than the image are clipped to it.

    Returns:
        ``(n,)`` float64, the mean over the tiles that hold each phase (NaN where none does); with ``spread``,
        ``(3, n)``: that mean, and the smallest and largest value over those tiles (how much a piece of the
        exemplar of that size varies). numpy.
    """
    array = _labels_array(labels)
    n = int(n_phases) if n_phases is not None else _concrete_n_phases(array)
    _check_n_phases(array, n)
    if len(tile_shape) != array.ndim:
        raise InputError(f"tile shape {tuple(tile_shape)} must have {array.ndim} sides for an image of shape "
                         f"{array.shape}")
    tile = [min(int(t), s) for t, s in zip(tile_shape, array.shape)]
    corners = np.stack(np.meshgrid(*[np.arange(0, s - t + 1, t) for s, t in zip(array.shape, tile)],
                                   indexing="ij"), -1).reshape(-1, array.ndim)
    values = np.stack([_largest_cluster_fraction(array[tuple(slice(c, c + t) for c, t in zip(corner, tile))], n)
                       for corner in corners])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a phase in no tile: NaN, as documented
        mean = np.nanmean(values, axis=0)
        return np.stack([mean, np.nanmin(values, axis=0), np.nanmax(values, axis=0)]) if spread else mean


def largest_cluster_fraction_slices(volume, n_phases: int | None = None) -> np.ndarray:
    """``largest_cluster_fraction`` of the 2D slices of a volume, averaged over the slices normal to each axis.

    The 2D statistic to set beside a 2D exemplar's when judging a 3D reconstruction of it. Each slice is
    labelled on its own (face-connected, non-periodic); the mean for a phase is over the slices that hold it.

    Args:
        volume: ``(D, H, W)`` integer phase indices.
        n_phases: number of phases (default ``volume.max() + 1``).

    Returns:
        ``(3, n)`` float64: ``[a, i]`` = mean over the slices normal to axis ``a`` of phase ``i``'s largest-cluster
        fraction; NaN if no slice holds the phase. numpy.
    """
    array = _labels_array(volume, "volume")
    if array.ndim != 3:
        raise InputError(f"volume must be 3D, got shape {array.shape}")
    # a one-voxel-thick tile is a slice: face connectivity across its thickness joins nothing
    return np.stack([largest_cluster_fraction_tiles(array, [1 if d == axis else s for d, s in enumerate(array.shape)],
                                                    n_phases) for axis in range(3)])


# ----------------------------------------------------------------------------------------------------------
# copy check


def _symmetries(ndim: int):
    """The ``2^d d!`` axis permutations and flips of a ``d``-dimensional grid (8 in 2D, 48 in 3D)."""
    for permutation in itertools.permutations(range(ndim)):
        for flips in itertools.product((False, True), repeat=ndim):
            yield permutation, tuple(axis for axis, flip in enumerate(flips) if flip)


@jax.jit
def _best_overlap(big, small):
    """Highest ``sum_i sum_x small_i(x) big_i(x + s)`` over periodic shifts ``s`` of ``big`` (``small``, zero
    padded, fits inside ``big`` along every axis)."""
    spatial = big.shape[:-1]
    axes = tuple(range(len(spatial)))
    padding = [(0, b - s) for b, s in zip(spatial, small.shape[:-1])] + [(0, 0)]
    small = jnp.pad(small, padding)
    spectrum = (jnp.fft.rfftn(big, axes=axes) * jnp.conj(jnp.fft.rfftn(small, axes=axes))).sum(axis=-1)
    return jnp.max(jnp.fft.irfftn(spectrum, s=spatial, axes=axes))


def _copy_agreement(a, b, n_phases: int):
    # one compiled overlap per symmetry, not one program for all: a 256^3 volume would otherwise hold the FFTs of
    # all 48 symmetries at once (12 GB)
    indicators_a = jax.nn.one_hot(a, n_phases, dtype=jnp.float32)
    indicators_b = jax.nn.one_hot(b, n_phases, dtype=jnp.float32)
    best = []
    for permutation, flips in _symmetries(a.ndim):
        moved = jnp.transpose(indicators_b, permutation + (a.ndim,))
        if flips:
            moved = jnp.flip(moved, axis=flips)
        shape_a, shape_b = a.shape, moved.shape[:-1]
        if all(sb <= sa for sa, sb in zip(shape_a, shape_b)):
            big, small = indicators_a, moved
        elif all(sa <= sb for sa, sb in zip(shape_a, shape_b)):
            big, small = moved, indicators_a
        else:  # neither fits inside the other: crop b to the common size (its first corner)
            common = tuple(min(sa, sb) for sa, sb in zip(shape_a, shape_b))
            big, small = indicators_a, moved[tuple(slice(0, c) for c in common)]
        n_small = int(np.prod(small.shape[:-1]))
        best.append(_best_overlap(big, small) / n_small)
    return jnp.clip(jnp.max(jnp.stack(best)), 0.0, 1.0)


def copy_agreement(a, b, n_phases: int | None = None):
    """Copy check: the highest fraction of equal pixels between two label images over all periodic shifts
    and all flips and transposes (the 8 symmetries of the square in 2D, the 48 of the cube in 3D).

    ``agreement(s) = sum_i xcorr(I_i^a, I_i^b)(s) / N``, computed by FFT. Near 1 means ``b`` is ``a`` moved
    (or mirrored); two independent structures agree on about ``copy_baseline(f_a, f_b)``.

    Different sizes: for each symmetry, the image that fits inside the other along every axis is compared
    against every same-size periodic window of the larger one, and the fraction is taken over the smaller
    image's pixels. If neither fits (e.g. 100x300 against 300x100 untransposed), ``b`` is cropped to the
    common size (its first corner) and compared against the windows of ``a``.

    Args:
        a: ``(*spatial)`` integer label image (2D or 3D).
        b: another, with the same number of axes.
        n_phases: number of phases (default ``max(a.max(), b.max()) + 1``; required under ``jit``).

    Returns:
        0-d float32 array in ``[0, 1]``.
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.ndim != b.ndim:
        raise InputError(f"copy_agreement needs images with the same number of axes, got {a.ndim}D and {b.ndim}D")
    if n_phases is None:
        n_phases = max(_concrete_n_phases(a), _concrete_n_phases(b))
    return _copy_agreement(a, b, int(n_phases))


def copy_baseline(fractions_a, fractions_b=None):
    """Expected agreement of two independent structures: ``sum_i f_i g_i`` (``sum_i f_i^2`` if one is given).

    Args:
        fractions_a: ``(n,)`` volume fractions of the first structure.
        fractions_b: ``(n,)`` volume fractions of the second (default: the first).

    Returns:
        0-d array.
    """
    fa = jnp.asarray(fractions_a)
    fb = fa if fractions_b is None else jnp.asarray(fractions_b)
    return jnp.sum(fa * fb)


# ----------------------------------------------------------------------------------------------------------
# grayscale: intensity distribution, autocovariance, multi-Otsu segmentation, intensity copy check

HISTOGRAM_BINS = 256
"""Equal bins on ``[0, 1]`` of the intensity histogram and of the multi-Otsu segmentation (one per 8-bit level)."""


def _intensity_array(gray, name: str = "gray") -> np.ndarray:
    """A concrete float64 numpy intensity image in ``0..1``, checked."""
    array = np.asarray(gray)
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        return array.astype(np.float64) / np.iinfo(array.dtype).max
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{name} must hold intensities (floats in 0..1, or uint8 / uint16), got dtype {array.dtype}")
    if array.ndim < 1 or array.size == 0:
        raise InputError(f"{name} must be an image, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} holds NaN or infinite intensities")
    if array.min() < 0 or array.max() > 1:
        raise InputError(f"{name} holds intensities outside 0..1 ({array.min():g}..{array.max():g}); "
                         "scale them first (jaxmicro.io.read_microstructure(..., mode='grayscale') does)")
    return array.astype(np.float64)


def _intensity_bins(gray: np.ndarray, bins: int) -> np.ndarray:
    """Bin index ``floor(g * bins)`` (the top edge 1.0 in the last bin) of every pixel; float64 arithmetic."""
    return np.clip(np.floor(gray * bins), 0, bins - 1).astype(np.intp)


def intensity_histogram(gray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Intensity histogram: the fraction of pixels in each of ``bins`` equal bins on ``[0, 1]``.

    Bin ``k`` holds ``k / bins <= g < (k + 1) / bins`` (1.0 in the last bin); with the default 256 bins every
    8-bit level ``v / 255`` has a bin of its own. ``gray``: intensities in ``0..1`` (or uint8 / uint16, scaled
    by their full range). Returns ``(bins,)`` float64 summing to 1. numpy.
    """
    array = _intensity_array(gray)
    return np.bincount(_intensity_bins(array, int(bins)).ravel(), minlength=int(bins)) / array.size


def intensity_wasserstein_distance(a, b) -> float:
    """Wasserstein-1 (earth mover's) distance between the intensity distributions of two images.

    ``W1 = integral |F_a(g) - F_b(g)| dg`` over the empirical cumulative distributions of the pixel values, in
    intensity units (0..1): the mean distance each pixel's intensity must move to turn one histogram into the
    other (a uniform offset ``d`` gives ``d``). Exact on the values (for 8-bit images the same as between their
    256-level histograms); images of any sizes and dimensions; 0 for any rearrangement of the same pixels.
    """
    values_a = np.sort(_intensity_array(a, "a").ravel())
    values_b = np.sort(_intensity_array(b, "b").ravel())
    grid = np.concatenate([values_a, values_b])
    grid.sort(kind="mergesort")
    cdf_a = np.searchsorted(values_a, grid[:-1], side="right") / values_a.size
    cdf_b = np.searchsorted(values_b, grid[:-1], side="right") / values_b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def intensity_autocovariance(gray):
    """Normalised periodic autocovariance of the intensity, by FFT.

    ``C(r) = mean_x (g(x) - m)(g(x + r) - m) / var``, with the image's mean ``m`` and variance ``var``, so
    ``C(0) = 1`` and ``C -> 0`` beyond the correlation length (the grayscale counterpart of the normalised S2,
    ``(S2 - f^2) / (f - f^2)``). A constant image has no variance: NaN.

    Args:
        gray: ``(*spatial)`` intensities (2D or 3D).

    Returns:
        ``(*spatial)``, origin at index 0 as for ``two_point_correlation``. float32 (float64 for float64 input).
        Differentiable, ``jit``/``vmap``-able.
    """
    x = jnp.asarray(gray)
    return _autocovariance(x.astype(_float_dtype(x)))


@jax.jit
def _autocovariance(x):
    centred = x - jnp.mean(x)
    spectrum = jnp.fft.rfftn(centred)
    covariance = jnp.fft.irfftn(spectrum.real**2 + spectrum.imag**2, s=x.shape) / x.size
    return (covariance / covariance.reshape(-1)[0]).astype(x.dtype)


class AutocovarianceProfiles(NamedTuple):
    """Normalised intensity autocovariance profiles up to a cut-off ``R`` (a pytree).

    Attributes:
        distance: ``(R + 1,)`` distances 0..R in pixels.
        per_axis: ``(ndim, R + 1)``: ``C`` at a shift of ``r`` pixels along axis ``a``.
        radial: ``(R + 1,)``: ``C`` averaged over the shell ``round(|r|) = r`` of the shortest periodic shift.
    """

    distance: jax.Array
    per_axis: jax.Array
    radial: jax.Array


def autocovariance_profiles(gray, *, max_distance: int | None = None) -> AutocovarianceProfiles:
    """``intensity_autocovariance`` along each axis and radially averaged, up to a cut-off (default and largest:
    half the smallest side), as ``two_point_profiles`` does for S2."""
    x = jnp.asarray(gray)
    return _autocovariance_profiles(x.astype(_float_dtype(x)), _check_max_distance(max_distance, x.shape))


@partial(jax.jit, static_argnames=("max_distance",))
def _autocovariance_profiles(x, max_distance: int) -> AutocovarianceProfiles:
    covariance = _autocovariance(x)
    return AutocovarianceProfiles(
        distance=jnp.arange(max_distance + 1, dtype=covariance.dtype),
        per_axis=_along_axes(covariance, covariance.ndim, max_distance),
        radial=_radial_average(covariance[..., None], max_distance)[:, 0],
    )


def correlation_length(profile, distance=None) -> float:
    """The distance (pixels) at which a normalised autocovariance profile first falls to ``1/e``, linearly
    interpolated between samples; NaN when it stays above ``1/e`` up to the cut-off."""
    profile = np.asarray(profile, np.float64)
    distance = np.arange(profile.size, dtype=np.float64) if distance is None else np.asarray(distance, np.float64)
    below = np.flatnonzero(profile <= np.exp(-1.0))
    if below.size == 0:
        return float("nan")
    k = int(below[0])
    if k == 0:
        return 0.0
    y0, y1 = profile[k - 1], profile[k]
    return float(distance[k - 1] + (y0 - np.exp(-1.0)) / (y0 - y1) * (distance[k] - distance[k - 1]))


def otsu_thresholds(gray, n_phases: int, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Multi-level Otsu thresholds of an intensity image: the ``n_phases - 1`` cuts of its ``bins``-bin histogram
    on ``[0, 1]`` that maximise the between-class variance (exact dynamic programme,
    ``jaxmicro.io.multi_otsu_thresholds``).

    Returns ``(n_phases - 1,)`` increasing float64 thresholds, each a bin edge ``b / bins``: ``segment_intensities``
    puts a pixel whose bin starts at or above threshold ``k`` in phase ``k + 1`` or brighter. Any edge in the empty
    bins between two classes splits the image alike; the one halfway across them is taken, so that images cut at
    another image's thresholds are split in the middle of its gaps. Raises InputError for fewer than 2 phases or
    fewer occupied bins than phases.
    """
    from jaxmicro.io import MAX_PHASES, multi_otsu_thresholds

    array = _intensity_array(gray)
    if isinstance(n_phases, bool) or not isinstance(n_phases, (int, np.integer)) or not 2 <= n_phases <= MAX_PHASES:
        raise InputError(f"the number of phases to segment into must be a whole number from 2 to {MAX_PHASES}, "
                         f"not {n_phases!r}; e.g. --phases 3")
    histogram = np.bincount(_intensity_bins(array, int(bins)).ravel(), minlength=int(bins))
    occupied = np.count_nonzero(histogram)
    if occupied < n_phases:
        raise InputError(f"the image has only {occupied} distinct intensity levels (in {bins} bins), too few to "
                         f"segment into {n_phases} phases; ask for at most {occupied}")
    occupied = np.flatnonzero(histogram)
    edges = [(occupied[occupied < b].max() + 1 + occupied[occupied >= b].min()) // 2
             for b in multi_otsu_thresholds(histogram, int(n_phases))]
    return np.asarray(edges, np.float64) / bins


def segment_intensities(gray, thresholds, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Phase labels ``0..len(thresholds)`` (dark to bright) of an intensity image cut at ``otsu_thresholds``
    (of this image or of another, e.g. an exemplar's applied to its reconstructions). Compared on the same
    ``bins`` as the thresholds, so the cut is exact. Returns int32 labels; a phase may be empty. numpy."""
    array = _intensity_array(gray)
    boundaries = np.round(np.asarray(thresholds, np.float64) * bins).astype(np.intp)
    return np.searchsorted(boundaries, _intensity_bins(array, int(bins)), side="right").astype(np.int32)


@jax.jit
def _best_correlation(big, small):
    """Highest normalised cross-correlation of ``small`` with every same-size periodic window of ``big``, each
    standardised by its own mean and variance."""
    small = small - jnp.mean(small)
    small = small / jnp.maximum(jnp.sqrt(jnp.mean(small**2)), jnp.finfo(small.dtype).tiny)
    spatial = big.shape
    padding = [(0, b - s) for b, s in zip(spatial, small.shape)]
    n = small.size
    big = big - jnp.mean(big)
    window = jnp.fft.rfftn(jnp.pad(jnp.ones_like(small), padding))

    def correlate(x, kernel):  # sum_y kernel(y) x(y + s) for every periodic shift s
        return jnp.fft.irfftn(jnp.fft.rfftn(x) * jnp.conj(kernel), s=spatial)

    product = correlate(big, jnp.fft.rfftn(jnp.pad(small, padding)))
    mean = correlate(big, window) / n
    variance = correlate(big**2, window) / n - mean**2
    floor = 1e-6 * jnp.mean(big**2)  # a flat window correlates with nothing
    correlation = jnp.where(variance > floor, product / (n * jnp.sqrt(jnp.maximum(variance, floor))), 0.0)
    return jnp.max(correlation)


def copy_correlation(a, b):
    """Copy check on intensities: the highest normalised cross-correlation (Pearson's r of the overlapping
    pixels) between two intensity images over all periodic shifts, flips and transposes (8 symmetries in 2D,
    48 in 3D).

    1 means ``b`` is ``a`` moved or mirrored (also with its contrast or brightness changed); two independent
    structures score about ``copy_correlation_baseline``. Different sizes as for ``copy_agreement``: the image
    that fits inside the other is compared with every same-size periodic window of the larger one (each window
    standardised on its own); if neither fits, ``b`` is cropped to the common size (its first corner).

    Args:
        a: ``(*spatial)`` intensity image (2D or 3D).
        b: another, with the same number of axes.

    Returns:
        0-d float32 array in ``[-1, 1]``. The symmetries are taken in numpy (one compiled program per shape), so
        the images must be concrete, not traced.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.ndim != b.ndim:
        raise InputError(f"copy_correlation needs images with the same number of axes, got {a.ndim}D and {b.ndim}D")
    best = []
    for permutation, flips in _symmetries(a.ndim):
        moved = np.transpose(b, permutation)
        if flips:
            moved = np.flip(moved, axis=flips)
        if all(sb <= sa for sa, sb in zip(a.shape, moved.shape)):
            big, small = a, moved
        elif all(sa <= sb for sa, sb in zip(a.shape, moved.shape)):
            big, small = moved, a
        else:  # neither fits inside the other: crop b to the common size (its first corner)
            big, small = a, moved[tuple(slice(0, min(sa, sb)) for sa, sb in zip(a.shape, moved.shape))]
        best.append(_best_correlation(big, small))
    return jnp.clip(jnp.max(jnp.stack(best)), -1.0, 1.0)


def phase_randomised_surrogate(gray, key):
    """An independent image with the same power spectrum, hence the same autocovariance, mean and variance, as
    ``gray``: its Fourier amplitudes with the phases of white noise (a Gaussian random field; the histogram is not
    kept). ``key``: a ``jax.random`` key. Returns ``(*spatial)`` float32."""
    return _surrogate(jnp.asarray(gray, jnp.float32), key)


@jax.jit
def _surrogate(x, key):
    amplitude = jnp.abs(jnp.fft.rfftn(x - jnp.mean(x)))
    noise = jnp.fft.rfftn(jax.random.normal(key, x.shape, jnp.float32))
    phases = noise / jnp.maximum(jnp.abs(noise), jnp.finfo(jnp.float32).tiny)
    return jnp.mean(x) + jnp.fft.irfftn(amplitude * phases, s=x.shape)


def copy_correlation_baseline(a, b, *, draws: int = 4, seed: int = 0) -> float:
    """What ``copy_correlation(a, b)`` gives when ``b`` is independent of ``a``: its mean over ``draws``
    phase-randomised surrogates of ``b`` (``phase_randomised_surrogate``: the same size and autocovariance as
    ``b``, independent of ``a``). The maximum over every placement of two independent fields is well above 0
    and grows with the correlation length, so this, not 0, is the reference. Deterministic for a ``seed``."""
    keys = jax.random.split(jax.random.PRNGKey(seed), draws)
    return float(np.mean([float(copy_correlation(a, phase_randomised_surrogate(b, key))) for key in keys]))

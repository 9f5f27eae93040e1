"""The last step of a 2D reconstruction: pixel swaps that bring the decoded labels closer to the exemplar.

Gradient steps on relaxed phases stall a little short of the exemplar's statistics once the phases are decoded:
they move probabilities, and the labels follow only where a probability crosses over. ``refine`` moves the
labels themselves. It lowers

    E = sum_i sum_r w(r) (S2_i(r) - S2*_i(r))^2                  two-point map, every displacement of the window
      + surface_weight * sum_i ((F_i - F*_i) / F*_i)^2            boundary faces along the axes, and across diagonals
      + chord_weight * sum_i (o_i - o*_i)^2                       share of one-pixel chords
      + lineal_path_weight * sum_{a,r,i} (L_ai(r) - L*_ai(r))^2   lineal path along each axis
      + cluster_weight * sum_i max(|C_i - C*_i| - band, 0)^2        share of each phase in its largest cluster

over the phases ``i``; ``w`` is 1, and ``1 + axis_weight`` along the axes (the profiles a report judges); ``C*``
is the exemplar's largest-cluster share at the sample's size. Each round it computes, for every pixel on a phase
boundary and each neighbouring phase, the change of ``E`` that flipping that pixel alone would make (exact, from
FFTs for the two-point part and run lengths for the chords and the lineal path; for the cluster term only flips
that join clusters count), flips the best ``m`` pairs (one pixel each way between two phases, so the
fractions stay) among pixels that are not neighbours, and keeps the round only if ``E`` fell, no new isolated
pixel appeared and no phase's largest cluster moved away from its target (by more than ``cluster_tolerance``).
``m`` doubles after a kept round and halves after a dropped one; a pair dropped at ``m = 1`` is not proposed
again.

Single flips cannot split a cluster that is too well connected: no one pixel of a neck two pixels wide is
foreseen to help. So at the start, and whenever the swaps stall, a phase whose largest cluster lies more than the
band above its target is cut: the fewest pixels (at most ``CUT_PIXELS``) that separate one end of the cluster from
the other (a maximum flow through its pixels) go to the phase around them, as many pixels of that phase go the
other way where they are predicted to help most, and the trial is kept under the same rules as a round.

Before the swaps, the phase counts are brought to the exemplar's fractions (to the nearest pixel) by single flips
from a phase with too many pixels to a neighbouring one with too few, best predicted first, kept under the same
rules (half as many flips after a trial that was not kept). numpy, one sample at a time.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import breadth_first_order, maximum_flow, shortest_path

from jaxmicro import statistics as st
from jaxmicro.cleanup import isolated
from jaxmicro.errors import InputError
from jaxmicro.report import one_pixel_chord_fraction

SURFACE_WEIGHT = 30.0
AXIS_WEIGHT = 10.0  # extra weight of the two-point map's displacements along the axes
CHORD_WEIGHT = 100.0
LINEAL_PATH_WEIGHT = 10.0
ROUNDS = 300  # at most, and one per 16 pixels; a round takes 3-15 ms for a 128x128 image on a 2-core CPU
FAILED_PAIRS = 60  # stop after this many pairs were dropped at m = 1
CLUSTER_WEIGHT = 1.0
CLUSTER_BAND = 0.05  # the cluster term is zero while each phase's largest cluster lies this close to its target
CLUSTER_TOLERANCE = 0.02
CUT_PIXELS = 6  # the largest vertex cut tried through an over-connected phase
CUT_SPLITS = ((0.1, 0.9), (0.2, 0.8), (0.3, 0.7), (0.4, 0.6), (0.1, 0.5), (0.5, 0.9), (0.2, 0.5), (0.5, 0.8))

_FACES = ((1, 0), (-1, 0), (1, 1), (-1, 1))  # (shift, axis) of the four face neighbours
_DIAGONALS = ((1, 1), (1, -1), (-1, 1), (-1, -1))  # shifts of the four diagonal neighbours
_DIAGONAL_SHIFTS = tuple((shift, (0, 1)) for shift in _DIAGONALS)  # as (shift, axes) for np.roll


class LabelTargets(NamedTuple):
    """The exemplar's statistics that ``refine`` matches (numpy; phases last, displacements centred).

    correlation: ``(2R+1, 2R+1, n)`` two-point map S2 at displacements ``-R..R``;
    faces: ``(n,)`` boundary faces of each phase per pixel along the axes; diagonal_faces: the same across the
    diagonals (pixels meeting at a corner: they tell a smooth boundary from a staircase);
    one_pixel_share: ``(n,)`` one-pixel chords among all chords of each phase (both axes);
    lineal_path: ``(2, R+1, n)`` along each axis (``jaxmicro.statistics.lineal_path``);
    largest_cluster: ``(n,)`` the share of each phase in its largest cluster, averaged over the exemplar's tiles of
    the sample's size (``jaxmicro.statistics.largest_cluster_fraction_tiles``); NaN where unknown.
    """

    correlation: np.ndarray
    faces: np.ndarray
    diagonal_faces: np.ndarray
    one_pixel_share: np.ndarray
    lineal_path: np.ndarray
    largest_cluster: np.ndarray


def _neighbour_counts(labels: np.ndarray, n: int, shifts) -> np.ndarray:
    """``(n, H, W)``: how many of each pixel's neighbours (at ``shifts``) lie in each phase."""
    neighbours = [np.roll(labels, shift, axis) for shift, axis in shifts]
    return np.stack([sum((q == k) for q in neighbours).astype(np.int32) for k in range(n)])


def _boundary_faces(labels: np.ndarray, n: int, shifts) -> np.ndarray:
    """``(n,)`` pixel pairs (at ``shifts``, each pair once per member) where phase ``i`` meets another phase."""
    same = _neighbour_counts(labels, n, shifts)
    return np.array([np.sum((labels == k) * (len(shifts) - same[k])) for k in range(n)], np.float64)


def _two_point_map(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The periodic S2 map ``(n, H, W)`` of each phase and the phase indicators' Fourier transform."""
    spectrum = np.fft.rfft2(np.stack([(labels == k).astype(np.float64) for k in range(n)]))
    return np.fft.irfft2(spectrum * np.conj(spectrum), s=labels.shape) / labels.size, spectrum


def label_targets(exemplar: np.ndarray, n_phases: int, radius: int, shape=None) -> LabelTargets:
    """``LabelTargets`` of a 2D label image, up to displacements of ``radius`` pixels (periodic), for samples of
    ``shape`` (the largest clusters: NaN without a shape, or for samples larger than the exemplar, which holds no
    piece of their size)."""
    labels = np.asarray(exemplar)
    s2, _ = _two_point_map(labels, n_phases)
    rows = np.arange(-radius, radius + 1) % labels.shape[0]
    cols = np.arange(-radius, radius + 1) % labels.shape[1]
    correlation = np.moveaxis(s2[:, rows][:, :, cols], 0, -1)
    return LabelTargets(
        correlation=correlation,
        faces=_boundary_faces(labels, n_phases, _FACES) / labels.size,
        diagonal_faces=_boundary_faces(labels, n_phases, _DIAGONAL_SHIFTS) / labels.size,
        one_pixel_share=one_pixel_chord_fraction(np.stack(st._chord_counts(labels, n_phases))),
        lineal_path=st.lineal_path(labels, n_phases, max_distance=radius),
        largest_cluster=(np.full(n_phases, np.nan) if shape is None or np.any(np.greater(shape, labels.shape))
                         else st.largest_cluster_fraction_tiles(labels, shape, n_phases)),
    )


def axis_error(labels: np.ndarray, targets: LabelTargets) -> float:
    """The largest two-point error of a 2D sample along the axes, over phases and distances up to the targets'
    radius and half the sample's side (periodic; ``s2_max_abs_error`` of ``jaxmicro.report.compare``)."""
    n, radius = targets.correlation.shape[-1], (targets.correlation.shape[0] - 1) // 2
    s2, _ = _two_point_map(np.asarray(labels), n)
    r = min(radius, min(labels.shape) // 2)
    along = np.abs(s2[:, : r + 1, 0] - np.moveaxis(targets.correlation[radius : radius + r + 1, radius], -1, 0))
    across = np.abs(s2[:, 0, : r + 1] - np.moveaxis(targets.correlation[radius, radius : radius + r + 1], -1, 0))
    return float(max(along.max(), across.max()))


def _run_lengths(labels: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the length of its periodic run along ``axis`` up to and including it (``back``) and from it on
    (``ahead``); a line without a phase change is one run of the line's length."""
    moved = np.moveaxis(labels, axis, -1)
    size = moved.shape[-1]
    lines = moved.reshape(-1, size)
    change = lines != np.roll(lines, 1, axis=1)
    order = (np.arange(size)[None, :] + np.argmax(change, axis=1)[:, None]) % size  # each line from a run start
    rotated = np.take_along_axis(lines, order, axis=1)
    starts = rotated != np.roll(rotated, 1, axis=1)
    starts[:, 0] = True
    ends = np.roll(starts, -1, axis=1)
    ends[:, -1] = True
    position = np.broadcast_to(np.arange(size), rotated.shape)
    start = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    end = np.minimum.accumulate(np.where(ends, position, size - 1)[:, ::-1], axis=1)[:, ::-1]
    back, ahead = position - start + 1, end - position + 1
    uniform = ~change.any(axis=1)
    back[uniform] = size
    ahead[uniform] = size
    out = []
    for rotated_values in (back, ahead):
        values = np.empty_like(rotated_values)
        np.put_along_axis(values, order, rotated_values, axis=1)
        out.append(np.moveaxis(values.reshape(moved.shape), -1, axis))
    return out[0], out[1]


def _squares(k):
    """``1^2 + ... + k^2`` (0 for ``k <= 0``)."""
    k = np.maximum(k, 0)
    return k * (k + 1) * (2 * k + 1) / 6


def _trapezoid_squares(x, y, radius: int):
    """``sum_{r=0..R} h(r)^2`` for the change of a chord count's lineal path when runs of ``x`` and ``y`` pixels
    join through one more (or one run splits into them): ``h(r) = max(x + y + 1 - r, 0) - max(x - r, 0) -
    max(y - r, 0)``, which is ``r + 1`` up to ``min(x, y)``, then ``min(x, y) + 1`` up to ``max(x, y)``, then
    falls by one a step to 0."""
    low, high, total = np.minimum(x, y), np.maximum(x, y), x + y + 1
    rising = _squares(np.minimum(radius + 1, low + 1))
    flat = np.maximum(0, np.minimum(radius, high) - low) * (low + 1.0) ** 2
    end = np.minimum(radius, total - 1)
    falling = np.where(end > high, _squares(low) - _squares(total - end - 1), 0.0)
    return rising + flat + falling


class _Energy(NamedTuple):
    total: float
    correlation: np.ndarray  # (n, H, W) the sample's S2 map
    spectrum: np.ndarray  # (n, H, W // 2 + 1) the phase indicators' Fourier transform
    faces: np.ndarray  # (2, n) along the axes, across the diagonals
    one_pixel: np.ndarray  # (n,) one-pixel chords
    chords: np.ndarray  # (n,) all chords
    lineal_path: np.ndarray  # (2, R+1, n)
    clusters: np.ndarray  # (n,) each phase's share in its largest cluster


class _Problem(NamedTuple):
    target_map: np.ndarray  # (n, H, W) on the sample's periodic grid
    window: np.ndarray  # (H, W) weight of each displacement: 0 outside the radius, 1 + axis_weight on the axes
    axis_weight: float
    faces: np.ndarray  # (2, n) faces on the sample's grid
    one_pixel_share: np.ndarray
    lineal_path: np.ndarray
    largest_cluster: np.ndarray  # (n,) NaN where unknown
    fractions: np.ndarray  # (n,) the exemplar's phase fractions
    weights: tuple[float, float, float, float]  # surface, chords, lineal path, clusters
    cluster_band: float
    face_neighbours: np.ndarray  # (4, N) flat index of each pixel's neighbour up, down, left, right
    face_inside: np.ndarray  # (4, N) bool: that neighbour does not lie across the image's edge
    diagonal_neighbours: np.ndarray  # (4, N)
    trapezoid_squares: np.ndarray  # (L + 1, L + 1) _trapezoid_squares of two run lengths up to the longest side


def _problem(targets: LabelTargets, shape, weights, cluster_band: float, axis_weight: float) -> _Problem:
    radius = (targets.correlation.shape[0] - 1) // 2
    n = targets.correlation.shape[-1]
    offsets = np.arange(-radius, radius + 1)
    rows, cols = np.broadcast_arrays((offsets % shape[0])[:, None], (offsets % shape[1])[None, :])
    total, times = np.zeros((n, *shape)), np.zeros(shape)
    np.add.at(total, (slice(None), rows, cols), np.moveaxis(targets.correlation, -1, 0))
    np.add.at(times, (rows, cols), 1.0)
    # displacements +-R along an axis of side 2R are one on the sample: their mean (keeps the map symmetric)
    window = (times > 0).astype(np.float64)
    window[0] *= 1 + axis_weight  # the displacements along the axes: the profiles a report judges
    window[:, 0] *= 1 + axis_weight
    window[0, 0] = (1 + 2 * axis_weight) * (times[0, 0] > 0)
    target_map = total / np.maximum(times, 1.0)
    faces = np.stack([targets.faces, targets.diagonal_faces]) * np.prod(shape)
    rows, cols = np.indices(shape).reshape(2, -1)

    def index(dy, dx):
        return ((rows + dy) % shape[0]) * shape[1] + (cols + dx) % shape[1]

    return _Problem(target_map, window, axis_weight, faces, np.asarray(targets.one_pixel_share),
                    np.asarray(targets.lineal_path), np.asarray(targets.largest_cluster, np.float64),
                    targets.correlation[radius, radius].astype(np.float64), weights,
                    cluster_band, np.stack([index(-1, 0), index(1, 0), index(0, -1), index(0, 1)]),
                    np.stack([rows > 0, rows < shape[0] - 1, cols > 0, cols < shape[1] - 1]),
                    np.stack([index(dy, dx) for dy, dx in _DIAGONALS]),
                    _trapezoid_squares(*np.indices((max(shape) + 1,) * 2), radius))


def _cluster_term(clusters: np.ndarray, problem: _Problem, phases=slice(None)) -> np.ndarray:
    """Each phase's (or ``phases``') part of the cluster term: its largest cluster's distance from the target
    beyond the band, squared (0 where the target is unknown)."""
    excess = np.abs(clusters - problem.largest_cluster[phases]) - problem.cluster_band
    return problem.weights[3] * np.nan_to_num(np.maximum(excess, 0.0)) ** 2


def _energy(labels: np.ndarray, problem: _Problem) -> _Energy:
    n = problem.target_map.shape[0]
    correlation, spectrum = _two_point_map(labels, n)
    faces = np.stack([_boundary_faces(labels, n, _FACES), _boundary_faces(labels, n, _DIAGONAL_SHIFTS)])
    counts = st._chord_counts(labels, n)  # per axis (n, L + 1)
    pooled = np.sum(counts, axis=0)
    one_pixel, chords = pooled[:, 1].astype(np.float64), pooled.sum(axis=1).astype(np.float64)
    path = st._lineal_path_from_counts(counts, labels.size, problem.lineal_path.shape[1] - 1)
    surface_weight, chord_weight, path_weight, _ = problem.weights
    clusters = st.largest_cluster_fraction(labels, n)
    total = (np.sum(problem.window * (correlation - problem.target_map) ** 2)
             + surface_weight * np.sum(((faces - problem.faces) / problem.faces) ** 2)
             + chord_weight * np.sum((one_pixel / np.maximum(chords, 1) - problem.one_pixel_share) ** 2)
             + path_weight * np.sum((path - problem.lineal_path) ** 2)
             + np.sum(_cluster_term(clusters, problem)))
    return _Energy(float(total), correlation, spectrum, faces, one_pixel, chords, path, clusters)


def _cluster_gains(labels: np.ndarray, energy: _Energy, problem: _Problem, pixels: np.ndarray) -> np.ndarray:
    """``(n, K)``: the change of the cluster term from each of ``pixels`` joining each phase, counting joins only:
    where the pixel touches two or more clusters of that phase they become one (exact, with the phases' pixel
    counts as they are: a pair of flips keeps them). A flip that merely grows or shrinks a cluster by one pixel
    counts 0, so moving pixels from small clusters onto the largest (which raises its share without joining
    anything) does not drive the swaps; a flip that cuts a cluster is not foreseen. The round's energy, computed
    afresh, has the whole term."""
    n = problem.target_map.shape[0]
    join = np.zeros((n, len(pixels)))
    around, inside = problem.face_neighbours[:, pixels], problem.face_inside[:, pixels]
    now = _cluster_term(energy.clusters, problem)
    for k in np.flatnonzero(np.isfinite(problem.largest_cluster) & (problem.weights[3] > 0)):
        ids = ndimage.label(labels == k)[0].ravel()  # face-connected, not periodic, as in the statistics
        sizes = np.bincount(ids, minlength=1)
        sizes[0] = 0
        up, down, left, right = np.where(inside, ids[around], 0)  # the clusters of k each pixel touches
        new = [down * (down != up), left * (left != up) * (left != down),
               right * (right != up) * (right != down) * (right != left)]
        joins = ((up > 0).astype(int) + sum((c > 0).astype(int) for c in new)) >= 2
        merged = 1 + sizes[up] + sum(sizes[c] for c in new)
        largest = np.where(joins, np.maximum(sizes.max(), merged), sizes.max())
        join[k] = _cluster_term(largest / sizes.sum(), problem, k) - now[k]
    return join


def _vertex_cut(pairs: np.ndarray, source: np.ndarray, sink: np.ndarray, most: int) -> np.ndarray | None:
    """The fewest pixels (indices into a cluster's ``K`` pixels, joined by ``pairs``) whose removal separates the
    pixels in ``source`` from those in ``sink`` (bool ``(K,)``); None where that takes more than ``most``.
    A maximum flow through the pixels, each split into an entry and an exit joined by one unit of capacity."""
    count = len(source)
    big = np.int32(1 << 20)
    entries, exits, start, end = np.arange(count), count + np.arange(count), 2 * count, 2 * count + 1
    rows = np.concatenate([entries, exits[pairs[:, 0]], exits[pairs[:, 1]], np.full(source.sum(), start),
                           exits[sink]])
    cols = np.concatenate([exits, entries[pairs[:, 1]], entries[pairs[:, 0]], entries[source],
                           np.full(sink.sum(), end)])
    capacity = np.full(len(rows), big)
    capacity[:count] = np.where(source | sink, big, 1)
    graph = sparse.csr_matrix((capacity, (rows, cols)), shape=(end + 1, end + 1))
    flow = maximum_flow(graph, start, end)
    if flow.flow_value > most:
        return None
    residual = (graph - flow.flow).tocsr()
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    reached = np.zeros(end + 1, bool)
    reached[breadth_first_order(residual, start, return_predecessors=False)] = True
    return np.flatnonzero(reached[entries] & ~reached[exits])


def _cuts(labels: np.ndarray, phase: int, most: int) -> list[np.ndarray]:
    """Small vertex cuts (flat pixel indices, at most ``most`` each) through ``phase``'s largest cluster
    (face-connected, not periodic), each separating the pixels nearest one end of the cluster from those nearest
    the other end (``CUT_SPLITS``: shares of the cluster's pixels ranked by their distance, within the cluster,
    from a pixel farthest from another). The cut separates pixels that touch at a corner too, so it is a wall
    joined through faces, never a diagonal of pixels that would each be left isolated."""
    ids = ndimage.label(labels == phase)[0]
    sizes = np.bincount(ids.ravel())
    sizes[0] = 0
    index = -np.ones(labels.shape, np.int64)
    pixels = np.flatnonzero(ids.ravel() == np.argmax(sizes))
    index.flat[pixels] = np.arange(len(pixels))
    pairs = np.concatenate([np.stack([a[(a >= 0) & (b >= 0)], b[(a >= 0) & (b >= 0)]], 1)
                            for a, b in ((index[:-1], index[1:]), (index[:, :-1], index[:, 1:]),
                                         (index[:-1, :-1], index[1:, 1:]), (index[:-1, 1:], index[1:, :-1]))])
    links = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pixels),) * 2)
    links = links.tocsr() + links.T.tocsr()
    end = np.argmax(shortest_path(links, unweighted=True, indices=0))
    rank = np.empty(len(pixels))
    rank[np.argsort(shortest_path(links, unweighted=True, indices=end), kind="stable")] = np.arange(len(pixels))
    rank /= len(pixels)
    found = {}
    for near, far in CUT_SPLITS:
        cut = _vertex_cut(pairs, rank <= near, rank >= far, most)
        if cut is not None and len(cut):
            found.setdefault(tuple(pixels[cut]), pixels[cut])
    return list(found.values())


def _flip_gains(labels: np.ndarray, energy: _Energy, problem: _Problem,
                allowed: np.ndarray) -> tuple[np.ndarray, dict]:
    """The pixels on a phase boundary (flat indices ``(K,)``, where ``allowed``) and ``{(a, b): (K,)}``: the
    exact change of ``E`` from flipping each alone from phase ``a`` to ``b`` (inf where it is not in ``a``, has no
    face neighbour in ``b``, or would leave a neighbour isolated)."""
    n = problem.target_map.shape[0]
    shape = labels.shape
    size = labels.size
    surface_weight, chord_weight, path_weight, _ = problem.weights
    flat = labels.ravel()
    face_labels = flat[problem.face_neighbours]
    pixels = np.flatnonzero((face_labels != flat).any(axis=0) & allowed.ravel())
    here = flat[pixels]
    around = problem.face_neighbours[:, pixels]  # up, down, left, right
    face_same = np.stack([(face_labels == k).sum(axis=0) for k in range(n)])  # (n, N)
    diagonal = flat[problem.diagonal_neighbours[:, pixels]]
    same = [face_same[:, pixels], np.stack([(diagonal == k).sum(axis=0) for k in range(n)])]

    # two-point part, per phase and sign d of the change, with weights w(r) and G = w (S2 - S2*):
    # (2/N)(2 d H + G(0)) + (P + w(0) (4 d I + 1)) / N^2, H(p) = sum_r G(r) I(p + r) and
    # P(p) = sum_r w(r) (I(p + r) + I(p - r))^2 = 2 n_i + 2 Q + axis_weight * (the same along p's row and column),
    # Q(p) = sum_r I(p + r) I(p - r) (a convolution read at 2p); exact where the window holds every displacement
    spectrum = energy.spectrum
    error = (energy.correlation - problem.target_map) * problem.window
    spread = np.fft.irfft2(np.fft.rfft2(error) * spectrum, s=shape).reshape(n, -1)[:, pixels]
    pr, pc = np.divmod(pixels, shape[1])
    count = spectrum[:, 0, 0].real  # pixels of each phase
    second = 2 * count[:, None] + 2 * np.fft.irfft2(spectrum * spectrum, s=shape)[:, (2 * pr) % shape[0],
                                                                                 (2 * pc) % shape[1]]
    if problem.axis_weight:
        indicators = np.stack([(labels == k) for k in range(n)]).astype(np.float64)
        lines = [np.fft.irfft(np.fft.rfft(indicators, axis=1 + axis) ** 2, n=shape[axis], axis=1 + axis)
                 for axis in (0, 1)]  # each column's and row's convolution with itself
        second += 2 * problem.axis_weight * (indicators.sum(axis=1)[:, pc] + lines[0][:, (2 * pr) % shape[0], pc]
                                             + indicators.sum(axis=2)[:, pr] + lines[1][:, pr, (2 * pc) % shape[1]])
    middle = problem.window[0, 0]

    # runs through each boundary pixel and its neighbours along each axis (up/down, then left/right)
    runs = []
    for axis in (0, 1):
        back, ahead = (r.ravel() for r in _run_lengths(labels, axis))
        before, after = around[2 * axis], around[2 * axis + 1]
        runs.append((back[pixels], ahead[pixels], flat[before], back[before], flat[after], ahead[after]))
    # lineal-path tables: table[a, l, i] = sum_r g(r) max(l - r, 0), g the gradient of the term in L_ai(r)
    radius = problem.lineal_path.shape[1] - 1
    slope = 2 * path_weight * (energy.lineal_path - problem.lineal_path) / size
    lengths = np.arange(max(shape) + 1)
    upto = np.minimum(lengths, radius + 1)
    zero = np.zeros((2, 1, n))
    sums = np.concatenate([zero, np.cumsum(slope, axis=1)], axis=1)
    moments = np.concatenate([zero, np.cumsum(np.arange(radius + 1)[None, :, None] * slope, axis=1)], axis=1)
    table = lengths[None, :, None] * sums[:, upto] - moments[:, upto]
    top = len(lengths) - 1

    def relative(kind, k, change):  # change of the surface term; k one phase or one per pixel
        target, now = problem.faces[kind][k], energy.faces[kind][k]
        return ((now + change - target) / target) ** 2 - ((now - target) / target) ** 2

    def share(k, d_one, d_all):  # change of the one-pixel-chord term
        target, one, chords = problem.one_pixel_share[k], energy.one_pixel[k], energy.chords[k]
        new, old = (one + d_one) / np.maximum(chords + d_all, 1), one / np.maximum(chords, 1)
        return (new - target) ** 2 - (old - target) ** 2

    at = np.arange(len(pixels))
    join = _cluster_gains(labels, energy, problem, pixels)
    gain_out = ((2.0 / size) * (-2 * spread[here, at] + error[here, 0, 0])
                + (second[here, at] - 3 * middle) / size**2)  # the pixel leaves its phase a
    gain_out += surface_weight * sum(relative(kind, here, 2 * counts[here, at] - 4) for kind, counts in enumerate(same))
    whole = _squares(radius + 1)  # a whole line's lineal path changes by r + 1 at every r
    trapezoid = problem.trapezoid_squares
    one_out = all_out = 0
    for axis, (back, ahead, *_) in enumerate(runs):
        line = shape[axis]
        before, after = back - 1, ahead - 1  # the a-run through the pixel, less the pixel
        whole_a = back == line  # a line all in a keeps one a-chord, line - 1 long (joined across the edge)
        all_out = all_out + np.where(whole_a, 0, (before > 0).astype(np.int64) + (after > 0) - 1)
        one_out = one_out + np.where(whole_a, int(line == 2),
                                     (before == 1).astype(np.int64) + (after == 1) - (before + after == 0))
        path = table[axis]
        every = line * sums[axis, radius + 1, here]  # a whole line holds `line` segments of every length
        gain_out += np.where(whole_a, path[line - 1, here] - every,
                             path[np.minimum(before, top), here] + path[np.minimum(after, top), here]
                             - path[np.minimum(before + after + 1, top), here])
        gain_out += path_weight * np.where(whole_a, whole, trapezoid[np.minimum(before, top),
                                                                     np.minimum(after, top)]) / size**2
    gain_out += chord_weight * share(here, one_out, all_out)

    gains = {}
    for b in range(n):  # the pixel joins phase b
        gain_in = (join[b] + (2.0 / size) * (2 * spread[b] + error[b, 0, 0])
                   + (second[b] + middle) / size**2)
        gain_in += surface_weight * sum(relative(kind, b, 4 - 2 * counts[b]) for kind, counts in enumerate(same))
        one_in = all_in = 0
        for axis, (back, ahead, prev_phase, prev_back, next_phase, next_ahead) in enumerate(runs):
            line = shape[axis]
            left = np.where(prev_phase == b, prev_back, 0)
            right = np.where(next_phase == b, next_ahead, 0)
            merged = left + right + 1
            whole_b = (back == 1) & (ahead == 1) & (left == line - 1)  # the rest of the line is in b: then all of it
            all_in = all_in + np.where(whole_b, 0, 1 - (left > 0).astype(np.int64) - (right > 0))
            one_in = one_in + np.where(whole_b, -int(line == 2),
                                       (merged == 1).astype(np.int64) - (left == 1) - (right == 1))
            path = table[axis, :, b]
            gain_in += np.where(whole_b, line * sums[axis, radius + 1, b] - path[line - 1],
                                path[np.minimum(merged, top)] - path[np.minimum(left, top)]
                                - path[np.minimum(right, top)])
            gain_in += path_weight * np.where(whole_b, whole, trapezoid[np.minimum(left, top),
                                                                        np.minimum(right, top)]) / size**2
        gain_in += chord_weight * share(b, one_in, all_in)
        for a in range(n):
            if a == b:
                continue
            strands = np.zeros(len(pixels), bool)  # a face neighbour in a whose other neighbours are all b
            for q in around:
                strands |= (flat[q] == a) & (face_same[b][q] == 3)
            ok = (here == a) & (same[0][b] >= 1) & ~strands
            gains[(a, b)] = np.where(ok, gain_out + gain_in, np.inf)
    return pixels, gains


def _around(row: int, col: int, shape) -> tuple[np.ndarray, np.ndarray]:
    """The index of a pixel's 3x3 neighbourhood (periodic)."""
    return np.ix_(np.arange(row - 1, row + 2) % shape[0], np.arange(col - 1, col + 2) % shape[1])


def _pick(pixels: np.ndarray, gains: dict, n: int, shape, m: int) -> list[tuple[int, int, int]]:
    """Up to ``m`` pairs per two phases (a pixel each way, best predicted first, while a pair's sum is negative),
    no two pixels neighbours (so each gain stays what it was predicted). Returns ``(row, col, new phase)``."""
    taken = np.zeros(shape, bool)
    flips = []
    for a in range(n):
        for b in range(a + 1, n):
            sides = []
            for source, target in ((a, b), (b, a)):
                gain = gains[(source, target)]
                best = np.argpartition(gain, min(30 * m, gain.size - 1))[: 30 * m]
                chosen = []
                for index in best[np.argsort(gain[best], kind="stable")]:
                    if not np.isfinite(gain[index]) or len(chosen) >= m:
                        break
                    row, col = divmod(int(pixels[index]), shape[1])
                    near = taken[_around(row, col, shape)]
                    if near.any():
                        continue
                    taken[row, col] = True
                    chosen.append((row, col, target, gain[index]))
                sides.append(chosen)
            k = 0
            while k < min(len(sides[0]), len(sides[1])) and sides[0][k][3] + sides[1][k][3] < 0:
                k += 1
            for chosen in sides:
                flips.extend((row, col, target) for row, col, target, _ in chosen[:k])
                for row, col, _, _ in chosen[k:]:
                    taken[row, col] = False
    return flips


def nearest_counts(fractions: np.ndarray, size: int) -> np.ndarray:
    """``(n,)`` pixel (voxel) counts of a sample of ``size`` nearest to the phase ``fractions``, summing to
    ``size`` (the largest remainders round up)."""
    share = np.asarray(fractions, np.float64) * size
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share)[: size - counts.sum()]] += 1
    return counts


def _fraction_trial(labels: np.ndarray, energy: _Energy, problem: _Problem, allowed: np.ndarray, most: int):
    """Labels nearer the exemplar's phase fractions (counted to the nearest pixel): up to ``most`` pixels of a phase
    with too many go to a neighbouring phase with too few, best predicted first, no two neighbours; None where the
    counts already match or no such pixel is found."""
    n = problem.target_map.shape[0]
    surplus = np.bincount(labels.ravel(), minlength=n) - nearest_counts(problem.fractions, labels.size)
    if not surplus.any():
        return None
    pixels, gains = _flip_gains(labels, energy, problem, allowed)
    options = sorted((gain[i], int(pixels[i]), b) for (a, b), gain in gains.items() if surplus[a] > 0 > surplus[b]
                     for i in np.flatnonzero(np.isfinite(gain)))
    trial, taken = labels.copy(), np.zeros(labels.shape, bool)
    for _, index, b in options:
        if most == 0:
            break
        row, col = divmod(index, labels.shape[1])
        a = trial[row, col]
        if surplus[a] <= 0 or surplus[b] >= 0 or taken[row, col]:
            continue
        trial[row, col] = b
        surplus[a], surplus[b], most = surplus[a] - 1, surplus[b] + 1, most - 1
        taken[_around(row, col, labels.shape)] = True
    return None if np.array_equal(trial, labels) else trial


def _cut_trials(labels: np.ndarray, energy: _Energy, problem: _Problem, allowed: np.ndarray):
    """Labels that cut an over-connected phase's largest cluster (more than the band above its target): the
    pixels of a small vertex cut go to the phase most of their face neighbours hold, and as many pixels of that
    phase, on its boundary with the cut phase and not near the cut, go to the cut phase, best predicted first, so
    the fractions stay. Yields each trial's labels."""
    n = problem.target_map.shape[0]
    over = np.nan_to_num(energy.clusters - problem.largest_cluster, nan=-1.0) > problem.cluster_band
    for phase in np.flatnonzero(over):
        for cut in _cuts(labels, phase, CUT_PIXELS):
            rest = labels == phase
            rest.flat[cut] = False
            share = np.bincount(ndimage.label(rest)[0].ravel())[1:].max() / (rest.sum() + len(cut))
            if _cluster_term(share, problem, phase) >= _cluster_term(energy.clusters, problem)[phase]:
                continue  # the cut does not bring the cluster closer to its target
            trial = labels.copy().ravel()
            around = trial[problem.face_neighbours[:, cut]]
            votes = np.stack([(around == k).sum(axis=0) for k in range(n)])
            votes[phase] = -1
            trial[cut] = np.argmax(votes, axis=0)
            trial = trial.reshape(labels.shape)
            taken = np.zeros(labels.shape, bool)
            taken.flat[cut] = True
            taken = ndimage.binary_dilation(taken, np.ones((5, 5), bool)) | ~allowed  # not near the cut
            pixels, gains = _flip_gains(trial, _energy(trial, problem), problem, ~taken)
            for other in np.unique(trial.flat[cut]):
                gain = gains[(other, phase)]
                needed = np.sum(trial.flat[cut] == other)
                for index in np.argsort(gain, kind="stable"):
                    if needed == 0 or not np.isfinite(gain[index]):
                        break
                    row, col = divmod(int(pixels[index]), labels.shape[1])
                    if taken[row, col]:
                        continue
                    trial[row, col] = phase
                    taken[_around(row, col, labels.shape)] = True
                    needed -= 1
                if needed:
                    break
            else:
                yield trial


class Refinement(NamedTuple):
    """What ``refine`` (or ``jaxmicro.refine_volume.refine_volume``) did to one sample."""

    labels: np.ndarray
    energy_before: float
    energy_after: float
    rounds: int
    kept_rounds: int
    changed_fraction: float


def refine(labels: np.ndarray, targets: LabelTargets, *, rounds: int | None = None,
           surface_weight: float = SURFACE_WEIGHT, chord_weight: float = CHORD_WEIGHT,
           lineal_path_weight: float = LINEAL_PATH_WEIGHT, axis_weight: float = AXIS_WEIGHT,
           cluster_weight: float = CLUSTER_WEIGHT, cluster_band: float = CLUSTER_BAND,
           cluster_tolerance: float = CLUSTER_TOLERANCE, batch: int = 32, cuts: bool = True,
           match_fractions: bool = True, accept: Callable[[np.ndarray], bool] | None = None) -> Refinement:
    """One 2D sample's labels swapped toward ``targets`` (see the module docstring); with ``match_fractions`` the
    phase counts first move to the exemplar's fractions (to the nearest pixel), then they hold, and so does the
    number of isolated pixels (it never grows). Each phase's largest cluster never lies more than
    ``cluster_tolerance`` farther from its target than the closest it came (or than ``cluster_band``); without a
    target, it stays within ``cluster_tolerance`` of where it started.
    ``rounds``: at most that many (default ``ROUNDS``, and one per 16 pixels on small images).
    ``axis_weight``: the extra weight of the two-point map along the axes.
    ``cuts``: also try small vertex cuts through a phase whose largest cluster lies more than ``cluster_band`` above
    its target (at the start, after a kept cut, and when the swaps stall), keeping one only where the rules above
    hold.
    ``accept(labels)``: a further condition every kept round must meet (a property held in a band, say).
    Deterministic."""
    labels = np.asarray(labels)
    n = targets.correlation.shape[-1]
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n:
        raise InputError(f"refine needs a 2D image of integer phase labels 0..{n - 1} (the targets' phases), "
                         f"not {labels.dtype} of shape {labels.shape}")
    problem = _problem(targets, labels.shape, (surface_weight, chord_weight, lineal_path_weight, cluster_weight),
                       cluster_band, axis_weight)
    energy = start = _energy(labels, problem)
    isolated_count = isolated(labels).sum()
    known = np.isfinite(problem.largest_cluster)
    closest = np.abs(start.clusters - problem.largest_cluster)

    def clusters_hold(clusters):
        distance = np.abs(clusters - problem.largest_cluster)
        return np.all(np.isnan(clusters) | np.where(known, distance <= np.maximum(closest + cluster_tolerance,
                                                                                  cluster_band),
                                                    np.abs(clusters - start.clusters) <= cluster_tolerance))

    def better(trial):  # the trial's energy where it may be kept, else None
        trial_energy = _energy(trial, problem)
        if (trial_energy.total < energy.total and isolated(trial).sum() <= isolated_count
                and clusters_hold(trial_energy.clusters) and (accept is None or accept(trial))):
            return trial_energy
        return None

    allowed = np.ones(labels.shape, bool)
    rounds = min(ROUNDS, labels.size // 16) if rounds is None else rounds
    m, kept, failed, done = batch, 0, 0, 0
    cut_due, cut_tried = cuts, -1  # a cut is tried at the start, after a kept cut and when the swaps stall
    current = labels
    most = labels.size if match_fractions else 0  # the exemplar's fractions first, by at most `most` flips a trial
    while most >= 1 and (trial := _fraction_trial(current, energy, problem, allowed, most)) is not None:
        trial_energy = better(trial)
        if trial_energy is None:
            most //= 2
        else:
            current, energy = trial, trial_energy
    for done in range(1, rounds + 1):
        if cut_due:
            cut_due = False
            trials = [(t, e) for t in _cut_trials(current, energy, problem, allowed) if (e := better(t)) is not None]
            if trials:
                current, energy = min(trials, key=lambda trial: trial[1].total)
                closest = np.fmin(closest, np.abs(energy.clusters - problem.largest_cluster))
                kept, m, failed, cut_due = kept + 1, batch, 0, True
                continue
            cut_tried = kept
        pixels, gains = _flip_gains(current, energy, problem, allowed)
        improved = False
        while m >= 1:
            flips = _pick(pixels, gains, n, labels.shape, m)
            if not flips:  # no pair is predicted to help
                m = 0
                break
            trial = current.copy()
            for row, col, target in flips:
                trial[row, col] = target
            trial_energy = better(trial)
            if trial_energy is not None:
                current, energy, improved = trial, trial_energy, True
                closest = np.fmin(closest, np.abs(energy.clusters - problem.largest_cluster))
                kept += 1
                m = min(2 * m, batch)
                break
            if m == 1:  # this pair is not proposed again
                for row, col, _ in flips:
                    allowed[row, col] = False
                failed += 1
                break
            m //= 2
        if not improved:
            if m == 0 or failed > FAILED_PAIRS:
                if cuts and cut_tried != kept:
                    cut_due = True
                    continue
                break
            m = 1
    return Refinement(current.astype(labels.dtype), start.total, energy.total, done, kept,
                      float(np.mean(current != labels)))

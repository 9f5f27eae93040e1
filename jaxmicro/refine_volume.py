"""The last step of a 3D reconstruction: voxel swaps that bring the decoded labels' two-point profiles along each
axis and their share of one-voxel chords closer to the exemplar's, as a report judges them.

It lowers

    E = sum_a sum_i [(R + 1) (S2_ai(0) - S2*_ai(0))^2 + sum_{r=1..R} (S2_ai(r) - S2*_ai(r))^2]
      + chord_weight * sum_i max(|o_i - o*_i| - band, 0)^2

over the axes ``a`` and phases ``i``, where ``S2_ai(r)`` is the share of voxel pairs ``r`` apart along axis ``a``
that both lie in phase ``i`` (periodic, as ``jaxmicro.report.compare`` computes it), ``S2*`` the exemplar's profile
along that axis (a 2D exemplar: its in-plane mean, on every axis), and ``o_i`` the share of one-voxel chords among
phase ``i``'s chords. The fractions (``S2_i(0)``) weigh as much as all other distances together: swaps keep them, so
this weight acts on the single flips that bring them to the exemplar's (below). Flipping one voxel ``x`` from phase
``a`` to ``b`` changes ``S2_a(r)`` by ``-(I_a(x + r) + I_a(x - r)) / N`` and ``S2_b(r)`` by
``+(I_b(x + r) + I_b(x - r)) / N``, so the first-order change of ``E`` for every voxel at once is a 1D convolution
along each axis (FFTs), plus the local change of the one-voxel chords. Each round swaps the best ``m`` pairs (a
voxel each way between two phases, so the fractions stay) among voxels on a boundary with the phase they go to that
leave no neighbour isolated, and keeps the round only if ``E`` fell, no isolated voxel appeared, each phase's
one-voxel-chord share stayed within ``chord_tolerance`` of the exemplar's (or no farther from it than at the start),
the lineal path along the axes stayed within ``lineal_path_tolerance`` of the exemplar's (or within
``LINEAL_PATH_SLACK`` of the closest it came), and no phase's largest cluster moved more than ``cluster_tolerance``
from where it started (the tomogram's thin third phase stays connected). ``m`` doubles after a kept round and halves
after a dropped one; voxels dropped at ``m = 1`` are not proposed again. Before the swaps, single flips from a phase
with too many voxels to a neighbouring one with too few (each phase in surplus giving its share) bring the phase
counts to the exemplar's fractions (to the nearest voxel) where at most ``FRACTION_TRIALS`` trials get there, kept
under the same rules (twice as many flips after a kept trial, half as many after a dropped one; flips that together
would isolate a voxel are undone). numpy, one volume at a time.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import fft

from jaxmicro import statistics as st
from jaxmicro.cleanup import isolated
from jaxmicro.errors import InputError
from jaxmicro.refine import Refinement, nearest_counts
from jaxmicro.report import one_pixel_chord_fraction

ROUNDS = 30  # at most; a round takes 0.1-0.15 s for a 64^3 volume of 3 phases on a 2-core CPU
BATCH = 4096  # the most pairs swapped in one round
FAILED_PAIRS = 20  # stop after this many pairs were dropped at m = 1
FRACTION_TRIALS = 12  # at most, kept or not, before the swaps
CLUSTER_TOLERANCE = 0.02
CHORD_WEIGHT = 100.0
CHORD_BAND = 0.005  # the chord term is zero while each phase's share lies this close to the exemplar's
CHORD_TOLERANCE = 0.01
LINEAL_PATH_TOLERANCE = 0.02
LINEAL_PATH_SLACK = 0.005
GOAL = 0.002  # stop once the largest two-point error along the axes is this small (and the chord term is 0)


class VolumeTargets(NamedTuple):
    """What the voxel swaps match: ``correlation`` ``(3, R + 1, n)``, S2 along each axis at distances ``0..R``;
    ``one_voxel_share`` ``(n,)``, the share of one-pixel (voxel) chords among each phase's chords;
    ``lineal_path`` ``(3, R + 1, n)`` along each axis."""

    correlation: np.ndarray
    one_voxel_share: np.ndarray
    lineal_path: np.ndarray


def volume_targets(exemplar: np.ndarray, n_phases: int, radius: int) -> VolumeTargets:
    """The profiles of a 2D or 3D label image up to ``radius`` (periodic): a 2D image's in-plane mean on every
    axis, a volume's own along each axis."""
    labels = np.asarray(exemplar)
    radius = min(int(radius), min(labels.shape) // 2)
    profiles = np.moveaxis(_profiles(labels, n_phases, radius, keep_spectra=False)[0], 1, 2)
    path = st.lineal_path(labels, n_phases, max_distance=radius)
    if labels.ndim == 2:
        profiles, path = (np.repeat(p.mean(0, keepdims=True), 3, axis=0) for p in (profiles, path))
    return VolumeTargets(profiles, one_pixel_chord_fraction(st.chord_length_distribution(labels, n_phases)), path)


class _State(NamedTuple):
    energy: float
    residual: np.ndarray  # (3, n, R + 1) S2 minus its target along each axis
    spectra: list  # per axis, the phase indicators' rFFT along it, (n, ...)
    chords: np.ndarray  # (n,) chords of each phase, the three axes together
    one_voxel: np.ndarray  # (n,) the share of one-voxel chords among them
    lineal_path_error: float  # the largest over axes, distances and phases


def _profiles(labels: np.ndarray, n: int, radius: int, keep_spectra: bool = True) -> tuple[np.ndarray, list]:
    """``(ndim, n, R + 1)`` S2 along each axis (periodic) and, with ``keep_spectra``, per axis the phase
    indicators' rFFT along it ``(n, ...)``. One phase at a time (a 256^3 exemplar takes 0.3 GB a phase). The
    mean over lines of their autocorrelations is the inverse FFT of their mean power spectrum: one short 1D
    transform per axis instead of one of the whole volume."""
    profiles, spectra = np.zeros((labels.ndim, n, radius + 1)), [None] * labels.ndim
    for phase in range(n):
        indicator = (labels == phase).astype(np.float32)
        for axis, side in enumerate(labels.shape):
            spectrum = fft.rfft(indicator, axis=axis, workers=-1)
            lines = tuple(a for a in range(labels.ndim) if a != axis)
            power = np.mean(spectrum.real**2 + spectrum.imag**2, axis=lines, dtype=np.float64)
            profiles[axis, phase] = fft.irfft(power, n=side)[: radius + 1] / side
            if keep_spectra:
                if spectra[axis] is None:
                    spectra[axis] = np.empty((n, *spectrum.shape), spectrum.dtype)
                spectra[axis][phase] = spectrum
    return profiles, spectra if keep_spectra else []


def _state(labels: np.ndarray, targets: VolumeTargets, chord_weight: float) -> _State:
    n, radius = targets.correlation.shape[-1], targets.correlation.shape[1] - 1
    profiles, spectra = _profiles(labels, n, radius)
    residual = profiles - np.moveaxis(targets.correlation, 1, 2)
    counts = st._chord_counts(labels, n)  # per axis (n, L + 1)
    chords = np.sum([c.sum(1) for c in counts], axis=0)
    share = np.sum([c[:, 1] for c in counts], axis=0) / np.maximum(chords, 1)
    path = st._lineal_path_from_counts(counts, labels.size, radius)
    excess = np.maximum(np.abs(share - targets.one_voxel_share) - CHORD_BAND, 0.0)
    energy = _two_point_energy(residual) + chord_weight * np.sum(excess**2)
    return _State(float(energy), residual, spectra, chords, share, float(np.max(np.abs(path - targets.lineal_path))))


def _two_point_energy(residual: np.ndarray) -> float:
    """The two-point part of ``E`` from the residual ``(3, n, R + 1)``: distance 0 (the fractions) weighs ``R + 1``."""
    return float(np.sum(residual**2) + (residual.shape[2] - 1) * np.sum(residual[:, :, 0] ** 2))


def _gains(labels: np.ndarray, state: _State, targets: VolumeTargets, chord_weight: float) -> np.ndarray:
    """``(n, *shape)``: ``N / 2`` times the first-order change of ``E`` from giving each voxel phase ``b``, less
    the part that depends on its own phase (``gain[b] - gain[a]`` is the flip ``a -> b``). The one-voxel chords
    of phase ``b`` change by one for the voxel itself where neither neighbour along an axis holds ``b``, and by
    minus one for each neighbour of phase ``b`` that was alone; its chords by one more where neither neighbour
    holds ``b``, one less where both do; leaving phase ``a`` is the same with the signs turned."""
    n, radius = state.residual.shape[1], state.residual.shape[2] - 1
    gain = np.zeros((n, *labels.shape), np.float32)
    error = state.one_voxel - targets.one_voxel_share
    excess = np.sign(error) * np.maximum(np.abs(error) - CHORD_BAND, 0.0)
    chord_gain = labels.size * chord_weight * excess / np.maximum(state.chords, 1)
    for axis in range(3):
        side = labels.shape[axis]
        kernel = np.zeros((n, side))
        for r in range(1, radius + 1):  # at r = side / 2 both neighbours are one voxel, counted twice
            kernel[:, r] += state.residual[axis, :, r]
            kernel[:, -r] += state.residual[axis, :, r]
        shape = [n, 1, 1, 1]
        shape[axis + 1] = side // 2 + 1
        kernel_spectrum = fft.rfft(kernel.astype(np.float32), axis=1).real.reshape(shape)  # an even kernel: real
        gain += fft.irfft(state.spectra[axis] * kernel_spectrum, n=side, axis=axis + 1, workers=-1)
        gain += (radius + 1) * state.residual[axis, :, 0].reshape(n, 1, 1, 1)
        if not chord_gain.any():  # every phase's one-voxel chords inside the band: no chord part
            continue
        before, after = np.roll(labels, 1, axis), np.roll(labels, -1, axis)
        farther = (np.roll(labels, 2, axis), np.roll(labels, -2, axis))
        for b in np.flatnonzero(chord_gain):
            near = (before == b, after == b)
            alone = ~(near[0] | near[1])
            # the voxel's own chord, less each neighbour's lone chord it joins; and the chords: one more where
            # neither neighbour holds b, one less where both do
            ones = (1.0 - state.one_voxel[b]) * alone + state.one_voxel[b] * (near[0] & near[1])
            ones -= (near[0] & (farther[0] != b)).astype(np.float32) + (near[1] & (farther[1] != b))
            gain[b] += chord_gain[b] * ones
    return gain


def _isolates_a_neighbour(labels: np.ndarray, neighbours: list, b: int) -> np.ndarray:
    """Per voxel, whether giving it phase ``b`` would leave a face neighbour isolated: one not of phase ``b``
    whose five other neighbours are."""
    lonely = (labels != b) & (sum((q == b).astype(np.int8) for q in neighbours) == 5)
    return _beside(lonely)


def _beside(mask: np.ndarray) -> np.ndarray:
    """The voxels with a face neighbour in ``mask`` (periodic)."""
    return np.logical_or.reduce([np.roll(mask, shift, axis) for axis in range(3) for shift in (1, -1)])


class _Moves(NamedTuple):
    """Where each flip may go: per target phase, the voxels on a boundary with it that would leave no neighbour
    isolated."""

    labels: np.ndarray
    open_to: list  # (n,) boolean masks

    @classmethod
    def of(cls, labels: np.ndarray, n: int, allowed: np.ndarray) -> _Moves:
        neighbours = [np.roll(labels, shift, axis) for axis in range(3) for shift in (1, -1)]
        return cls(labels, [allowed & ~_isolates_a_neighbour(labels, neighbours, b)
                            & np.logical_or.reduce([q == b for q in neighbours]) for b in range(n)])

    def best(self, trial: np.ndarray, gain: np.ndarray, source: int, target: int, k: int):
        """Up to ``k`` voxels of ``source`` not yet changed in ``trial``, best predicted first for the flip to
        ``target``: their flat index and predicted change."""
        index = np.flatnonzero((self.labels == source) & (trial == source) & self.open_to[target])
        change = (gain[target] - gain[source]).ravel()[index]
        best = np.argpartition(change, k)[:k] if change.size > k else np.arange(change.size)
        best = best[np.argsort(change[best], kind="stable")]
        return index[best], change[best]


def _pick(moves: _Moves, gain: np.ndarray, m: int) -> np.ndarray | None:
    """Labels with up to ``m`` pairs swapped per two phases (a voxel each way, best predicted first, while a
    pair's sum is negative); None where no pair is predicted to help."""
    n = gain.shape[0]
    trial = moves.labels.copy()
    for a in range(n):
        for b in range(a + 1, n):
            (there, forth), (back, fro) = moves.best(trial, gain, a, b, m), moves.best(trial, gain, b, a, m)
            k = min(len(there), len(back))
            k = int(np.sum(forth[:k] + fro[:k] < 0))  # the paired sums rise with k
            trial.ravel()[there[:k]] = b
            trial.ravel()[back[:k]] = a
    return None if np.array_equal(trial, moves.labels) else trial


def _fraction_trial(moves: _Moves, gain: np.ndarray, wanted: np.ndarray, most: int) -> np.ndarray | None:
    """Labels nearer the exemplar's phase counts ``wanted``: about ``most`` voxels (each phase with too many giving
    the same share of its surplus) go to a neighbouring phase with too few, best predicted first, less any flips
    that together isolate a voxel; None where the counts match or no voxel can go."""
    n = gain.shape[0]
    surplus = np.bincount(moves.labels.ravel(), minlength=n) - wanted
    trial = moves.labels.copy()
    share = min(1.0, most / max(surplus[surplus > 0].sum(), 1))  # of each surplus, so every phase gives some
    for a in np.flatnonzero(surplus > 0):
        for b in np.flatnonzero(surplus < 0):
            k = int(np.ceil(min(surplus[a], -surplus[b]) * share))
            chosen = moves.best(trial, gain, a, b, k)[0] if k > 0 else []
            trial.ravel()[chosen] = b
            surplus[a], surplus[b] = surplus[a] - len(chosen), surplus[b] + len(chosen)
    trial = _undo_isolating(trial, moves.labels)
    return None if np.array_equal(trial, moves.labels) else trial


def _undo_isolating(trial: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``trial`` with its changes undone at and next to each voxel that it isolates (flips chosen one by one may
    together surround a voxel that none of them isolates alone)."""
    trial, before = trial.copy(), isolated(labels)
    for _ in range(3):
        new = isolated(trial) & ~before
        if not new.any():
            break
        near = new | _beside(new)
        trial[near] = labels[near]
    return trial


def refine_volume(labels: np.ndarray, targets: VolumeTargets, *, rounds: int = ROUNDS, batch: int = BATCH,
                  chord_weight: float = CHORD_WEIGHT, chord_tolerance: float = CHORD_TOLERANCE,
                  lineal_path_tolerance: float = LINEAL_PATH_TOLERANCE,
                  cluster_tolerance: float = CLUSTER_TOLERANCE, goal: float = GOAL,
                  match_fractions: bool = True) -> Refinement:
    """One volume's labels swapped toward ``targets`` (see the module docstring); with ``match_fractions`` the
    phase counts first move toward the exemplar's fractions (to the nearest voxel where the rules let them), then
    they hold; the isolated
    voxels never grow, each phase's one-voxel-chord share stays within ``chord_tolerance`` of its target
    or no farther than it started, the largest lineal-path error within ``lineal_path_tolerance`` or
    ``LINEAL_PATH_SLACK`` above the smallest it reached, and each phase's largest-cluster share within
    ``cluster_tolerance`` of where it started. ``chord_weight``: the weight of the one-voxel chords in ``E``.
    ``rounds``: at most that many, fewer once the largest two-point error is below ``goal`` and every phase's
    one-voxel share within ``CHORD_BAND`` of its target. Deterministic."""
    labels = np.asarray(labels)
    n = np.shape(targets.correlation)[-1]
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n:
        raise InputError(f"refine_volume needs a 3D volume of integer phase labels 0..{n - 1} (the targets' "
                         f"phases), not {labels.dtype} of shape {labels.shape}")
    radius = min(np.shape(targets.correlation)[1] - 1, min(labels.shape) // 2)
    targets = VolumeTargets(*(np.asarray(field, np.float64)[:, : radius + 1] if field.ndim == 3 else
                              np.asarray(field, np.float64) for field in map(np.asarray, targets)))
    state = start = _state(labels, targets, chord_weight)
    chord_allowed = np.maximum(np.abs(start.one_voxel - targets.one_voxel_share), chord_tolerance)
    closest_path = start.lineal_path_error

    isolated_count, clusters = isolated(labels).sum(), st._largest_cluster_fraction(labels, n)

    def better(trial):  # the trial's state where it may be kept, else None (the costlier checks last)
        trial_state = _state(trial, targets, chord_weight)
        if (trial_state.energy < state.energy
                and np.all(np.abs(trial_state.one_voxel - targets.one_voxel_share) <= chord_allowed)
                and trial_state.lineal_path_error <= max(closest_path + LINEAL_PATH_SLACK, lineal_path_tolerance)
                and isolated(trial).sum() <= isolated_count
                and np.all(np.isnan(clusters) | (np.abs(st._largest_cluster_fraction(trial, n) - clusters)
                                                 <= cluster_tolerance))):
            return trial_state
        return None

    allowed = np.ones(labels.shape, bool)
    current, m, kept, failed, done = labels, batch // 8, 0, 0, 0
    wanted = nearest_counts(targets.correlation[0, 0], labels.size)  # S2 at distance 0: the fractions
    # the exemplar's fractions first, by at most `most` flips a trial
    most = int(np.maximum(np.bincount(labels.ravel(), minlength=n) - wanted, 0).sum()) if match_fractions else 0
    moves, gain = _Moves.of(current, n, allowed), _gains(current, state, targets, chord_weight)
    for _ in range(FRACTION_TRIALS if most else 0):
        if most < 1 or (trial := _fraction_trial(moves, gain, wanted, most)) is None:
            break
        trial_state = better(trial)
        if trial_state is None:
            most //= 2
        else:
            current, state, most = trial, trial_state, 2 * most
            moves, gain = _Moves.of(current, n, allowed), _gains(current, state, targets, chord_weight)
    # until the two-point error is below the goal and the chord term is 0
    while done < rounds and not (np.abs(state.residual).max() <= goal
                                 and state.energy <= _two_point_energy(state.residual)):
        done += 1
        gain = _gains(current, state, targets, chord_weight)
        moves = _Moves.of(current, n, allowed)
        while m >= 1:
            trial = _pick(moves, gain, m)
            if trial is None:
                m = 0
                break
            trial_state = better(trial)
            if trial_state is not None:
                current, state, kept, m = trial, trial_state, kept + 1, min(2 * m, batch)
                closest_path = min(closest_path, state.lineal_path_error)
                break
            if m == 1:  # these voxels are not proposed again
                allowed &= trial == current
                failed += 1
                break
            m //= 2
        if m == 0 or failed > FAILED_PAIRS:
            break
        m = max(m, 1)
    return Refinement(current.astype(labels.dtype), start.energy, state.energy, done, kept,
                            float(np.mean(current != labels)))

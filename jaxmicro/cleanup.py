"""The last step of a reconstruction: isolated pixels out of decoded phase labels, down to the exemplar's own
share, with the phase fractions kept; for grayscale, the exemplar's histogram on the same pixel order.

A straight-through decode leaves single pixels (voxels) whose face neighbours all belong to one other phase:
salt-and-pepper beyond what the exemplar has (a noisy segmentation has some of its own, and a reconstruction
should keep as many). ``remove_isolated`` gives the excess its neighbours' phase, the least sure first (smallest
logit margin), then gives every phase that lost pixels as many back at its own boundary, where the optimiser was
least sure, so the fractions do not move.
"""

from __future__ import annotations

import numpy as np


def _face_neighbours(labels: np.ndarray) -> list[np.ndarray]:
    return [np.roll(labels, shift, axis) for axis in range(labels.ndim) for shift in (1, -1)]


def isolated(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels whose face neighbours (periodic) all hold one phase other than theirs."""
    neighbours = _face_neighbours(labels)
    same = np.logical_and.reduce([n == neighbours[0] for n in neighbours[1:]])
    return same & (neighbours[0] != labels)


def isolated_fraction(labels: np.ndarray, n_phases: int) -> np.ndarray:
    """``(n,)`` isolated pixels of each phase per pixel of the image."""
    return np.bincount(np.asarray(labels)[isolated(labels)], minlength=n_phases)[:n_phases] / np.size(labels)


def remove_isolated(labels: np.ndarray, logits: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """One sample's labels ``(*shape)`` with at most ``keep[i]`` isolated pixels of phase ``i`` (default none),
    every phase keeping its pixel count.

    ``logits``: ``(*shape, n)`` scores of the phases (the final iterate). They rank the isolated pixels (the
    surest keep their phase) and the pixels given back: a phase that lost ``k`` isolated pixels takes the ``k``
    pixels of its boundary (a face neighbour in the phase, itself in a phase that gained) with the highest
    ``logit(phase) - logit(own phase)``.
    """
    labels = np.asarray(labels)
    n_phases = logits.shape[-1]
    before = np.bincount(labels.ravel(), minlength=n_phases)
    mask = isolated(labels)
    neighbour = _face_neighbours(labels)[0]
    if keep is not None:
        flat_logits = logits.reshape(-1, n_phases)
        sure = (np.take_along_axis(flat_logits, labels.reshape(-1, 1), 1)
                - np.take_along_axis(flat_logits, neighbour.reshape(-1, 1), 1))[:, 0]
        for phase in range(n_phases):
            pixels = np.flatnonzero(mask.ravel() & (labels.ravel() == phase))
            kept = pixels[np.argsort(-sure[pixels], kind="stable")][: int(keep[phase])]
            mask.flat[kept] = False
    cleaned = np.where(mask, neighbour, labels)
    change = np.bincount(cleaned.ravel(), minlength=n_phases) - before
    for phase in np.flatnonzero(change < 0):
        neighbours = _face_neighbours(cleaned)
        border = np.logical_or.reduce([n == phase for n in neighbours]) & (change[cleaned] > 0) & ~mask
        candidates = np.flatnonzero(border)
        if candidates.size == 0:
            continue
        own = np.take_along_axis(logits.reshape(-1, n_phases), cleaned.reshape(-1, 1), axis=1)[:, 0]
        margin = logits.reshape(-1, n_phases)[:, phase] - own
        take = candidates[np.argsort(-margin[candidates], kind="stable")][: -change[phase]]
        for pixel in take:  # one at a time: a phase stops giving pixels once it is back to its count
            donor = cleaned.flat[pixel]
            if change[donor] > 0:
                cleaned.flat[pixel] = phase
                change[donor] -= 1
                change[phase] += 1
    return cleaned.astype(labels.dtype)


def match_histogram(intensity: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """One grayscale sample ``(*shape)`` with the exemplar's histogram: the pixel of rank ``k`` of ``N`` gets the
    exemplar's intensity at level ``(k + 0.5) / N`` of its ``quantiles`` (sorted intensities at equally spaced
    levels 0..1; ties by position). The order of the pixels, and with it the texture, stays; what the
    optimised intensities still owe the histogram goes. The Gaussian start is made the same way
    (``jaxmicro.initial.gaussian_intensity_logits``)."""
    flat = np.asarray(intensity).reshape(-1)
    ranks = np.empty(flat.size, np.int64)
    ranks[np.argsort(flat, kind="stable")] = np.arange(flat.size)
    levels = np.linspace(0.0, 1.0, len(quantiles))
    return np.interp((ranks + 0.5) / flat.size, levels, np.asarray(quantiles, np.float64)).reshape(np.shape(intensity))

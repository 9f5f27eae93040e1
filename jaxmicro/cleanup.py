"""Isolated pixels out of decoded phase labels, with the phase fractions kept.

A straight-through decode leaves a few single pixels (voxels) whose face neighbours all belong to one other
phase: salt-and-pepper that no segmented micrograph has. ``remove_isolated`` gives each of them its neighbours'
phase, then gives every phase that lost pixels as many back at its own boundary, where the optimiser was least
sure (the smallest logit margin), so the fractions do not move.
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


def remove_isolated(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """One sample's labels ``(*shape)`` without isolated pixels, every phase keeping its pixel count.

    ``logits``: ``(*shape, n)`` scores of the phases (the final iterate), which rank the pixels given back: a
    phase that lost ``k`` isolated pixels takes the ``k`` pixels of its boundary (a face neighbour in the phase,
    itself in a phase that gained) with the highest ``logit(phase) - logit(own phase)``.
    """
    labels = np.asarray(labels)
    n_phases = logits.shape[-1]
    before = np.bincount(labels.ravel(), minlength=n_phases)
    mask = isolated(labels)
    cleaned = np.where(mask, _face_neighbours(labels)[0], labels)
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

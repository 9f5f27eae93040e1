"""One per-sample outcome type for every batched computation: reconstruction, design and the physics solvers.

Under ``jax.vmap`` one exception would end the whole batch, so each sample carries a status code (int32) as
data instead, and the caller decides what to raise.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Per-sample outcome: compare ``result.status == Status.CONVERGED``; ``Status(code).label`` names it."""

    CONVERGED = 0
    NOT_CONVERGED = 1  # the step or iteration budget ran out before the convergence test passed
    NON_FINITE = 2  # a NaN or infinity appeared; the sample holds its last finite iterate
    MAX_STEPS = 1  # alias of NOT_CONVERGED, in the optimiser's words

    @property
    def label(self) -> str:
        return self.name.lower()


def status_labels(codes) -> list[str]:
    """Names (``'converged'``, ``'not_converged'``, ``'non_finite'``) of a sequence of status codes."""
    return [Status(int(code)).label for code in codes]

"""Checkpoint and resume long reconstructions with orbax-checkpoint.

A checkpoint holds the batched ``OptimisationState`` (logits and optimiser state), the history so far (the total
loss and every named term per step) and
a fingerprint of the run (exemplar, configuration, seed, optimiser). orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed at any moment leaves the previous checkpoint
intact; resuming replays nothing and, on the same device, ends bitwise where an uninterrupted run ends.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxmicro.errors import InputError


def run_fingerprint(**identity: Any) -> str:
    """sha256 of everything that determines a run's trajectory (arrays hashed by content)."""
    digest = hashlib.sha256()
    for key in sorted(identity):
        value = identity[key]
        digest.update(key.encode())
        if isinstance(value, np.ndarray):
            digest.update(f"{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


class Checkpointer:
    """Saves every ``every`` steps into ``directory`` and restores the latest checkpoint of the same run."""

    def __init__(self, directory: str | Path, every: int | None, fingerprint: str, *, resume: bool = False):
        self.directory = Path(directory).resolve()
        self.every = every
        self.fingerprint = fingerprint
        self.resume = resume
        self.last_saved = -1
        self._manager = ocp.CheckpointManager(
            self.directory / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, template_states) -> tuple[Any, list[dict[str, np.ndarray]]] | None:
        """The latest checkpoint of this run as ``(states, [history])``, or None when starting fresh.

        Raises InputError when the folder holds a checkpoint of a different run.
        """
        step = self._manager.latest_step()
        if not self.resume or step is None:
            if self.resume:
                raise InputError(f"nothing to resume in {self.directory}: it holds no checkpoint")
            return None
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("fingerprint") != self.fingerprint:
            raise InputError(
                f"{self.directory} holds a checkpoint of a different run (other exemplar, options or seed); "
                "resume with exactly the options of the original run, or start a new run in another --out folder"
            )
        template = {
            "states": jax.tree.map(np.asarray, template_states),
            "history": {name: np.zeros((meta["history_rows"], meta["batch"]), np.float32)
                        for name in meta["history_names"]},
        }
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))
        state = restored["state"]
        states = jax.tree.map(jax.numpy.asarray, state["states"])
        self.last_saved = step
        return states, [{name: np.asarray(rows) for name, rows in state["history"].items()}]

    def save(self, step: int, states, history: list[dict[str, np.ndarray]]) -> None:
        """Save ``states`` and the history chunks (``{name: (rows, B)}`` each) as the checkpoint of ``step``."""
        if step == self.last_saved:
            return
        batch = int(states.step.shape[0])
        names = list(history[0]) if history else ["loss"]
        rows = {name: np.concatenate([h[name] for h in history], axis=0) if history
                else np.zeros((0, batch), np.float32) for name in names}
        meta = {"fingerprint": self.fingerprint, "step": step, "history_rows": int(rows[names[0]].shape[0]),
                "batch": batch, "history_names": names}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"states": jax.tree.map(np.asarray, states), "history": rows}),
            meta=ocp.args.JsonSave(meta),
        ), force=True)
        self._manager.wait_until_finished()
        self.last_saved = step

    def maybe_save(self, step: int, total_steps: int, states, history: list[dict[str, np.ndarray]]) -> None:
        """Save when ``every`` steps have passed since the last checkpoint (not at the very end)."""
        if self.every and step < total_steps and step - max(self.last_saved, 0) >= self.every:
            self.save(step, states, history)

    def describe(self) -> str:
        return json.dumps({"directory": str(self.directory), "every": self.every, "latest": self.latest_step()})

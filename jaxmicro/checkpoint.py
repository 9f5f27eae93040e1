"""Checkpoint and resume long reconstructions with orbax-checkpoint.

A checkpoint holds the batched ``OptimisationState`` (logits and optimiser state), the history so far (the total
loss and every named term per step) and
a fingerprint of the run (exemplar, configuration, seed, optimiser). orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed at any moment leaves the previous checkpoint
intact; resuming replays nothing and, on the same device, ends bitwise where an uninterrupted run ends.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
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


# What orbax, tensorstore and json raise on a damaged checkpoint: ValueError (failed checksums, DATA_LOSS, bad JSON,
# UnicodeDecodeError, shapes that do not fit), KeyError (a missing item or metadata key), TypeError (a metadata
# value of the wrong type), OSError (a missing file), MemoryError (an absurd size in the metadata).
_DAMAGE = (ValueError, KeyError, TypeError, OSError, MemoryError)
_JSON_TYPES = (list, str, int, float, bool, type(None))


def _quiet_closed_event_loop() -> None:
    """After a failed restore, tensorstore may still call back into orbax's event loop, already closed, and Python
    prints that RuntimeError as a traceback on stderr, even after the command has reported the damage: drop it."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_event_loop", False):
        return

    def hook(unraisable):
        if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_event_loop = True
    sys.unraisablehook = hook


def _refuse_damaged(restore):
    """Wrap ``Checkpointer.restore``: a damaged checkpoint, or one whose arrays do not fit this run's (other
    shapes, dtypes or step), raises an InputError naming it instead of being resumed from."""

    @functools.wraps(restore)
    def checked(self: Checkpointer, template_states):
        step = self._manager.latest_step() if self.resume else None
        try:
            restored = restore(self, template_states)
        except InputError:
            raise
        except (*_DAMAGE, AttributeError) as error:
            # AttributeError only from a metadata file that holds another JSON value than an object
            if isinstance(error, AttributeError) and not isinstance(getattr(error, "obj", None), _JSON_TYPES):
                raise
            _quiet_closed_event_loop()
            raise self._damaged(step, f"{type(error).__name__}: {str(error)[:200]}") from error
        if restored is not None:
            expected, found = ([f"{'x'.join(map(str, np.shape(a))) or 'scalar'} {np.dtype(a.dtype)}"
                                for a in jax.tree.leaves(tree)] for tree in (template_states, restored[0]))
            if jax.tree.structure(template_states) != jax.tree.structure(restored[0]) or found != expected:
                pairs = [(f, e) for f, e in zip(found, expected) if f != e] or [
                    (f"{len(found)} arrays", f"{len(expected)}")]
                raise self._damaged(step, f"it holds arrays that do not fit this run: {pairs[0][0]} where the run "
                                          f"has {pairs[0][1]}")
            steps = np.unique(np.asarray(getattr(restored[0], "step", step)))
            if steps.tolist() != [step]:
                raise self._damaged(step, f"it holds the state after step {steps.tolist()}, not after step {step}")
        return restored

    return checked


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

    @_refuse_damaged
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

    def _damaged(self, step: int | None, detail: str) -> InputError:
        folder = self.directory / "checkpoints" / str(step)
        earlier = [s for s in self._manager.all_steps() if step is not None and s < step]
        fix = (f"delete {folder} to resume from the checkpoint at step {max(earlier)}, or start the run again"
               if earlier else "start the run again")
        return InputError(
            f"the checkpoint at step {step} in {self.directory} is damaged ({detail}); {fix} with --force "
            "instead of --resume"
        )

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

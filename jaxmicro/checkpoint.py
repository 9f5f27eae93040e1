"""Checkpoint and resume long reconstructions with orbax-checkpoint.

A checkpoint holds the batched ``OptimisationState`` (logits and optimiser state), the history so far (the total
loss and every named term per step) and
a fingerprint of the run (exemplar, configuration, seed, optimiser). orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed at any moment leaves the previous checkpoint
intact; resuming replays nothing and, on the same device, ends bitwise where an uninterrupted run ends.

Sharded states (``jaxmicro.sharding``) are written shard by shard, each process its own, and never gathered to
one host. A checkpoint records the real number of samples (``batch``) beside the padded one, so it resumes on
another number of devices (another padding): the arrays are read straight into the new layout (a shorter or
longer batch axis, padding rows filled again with copies of sample 0) and the real samples go on exactly where
they stopped.
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

from jaxmicro import sharding
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


def quiet_closed_event_loop() -> None:
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
    def checked(self: Checkpointer, template_states, batch: int | None = None):
        step = self._manager.latest_step() if self.resume else None
        try:
            restored = restore(self, template_states, batch)
        except InputError:
            raise
        except (*_DAMAGE, AttributeError) as error:
            # AttributeError only from a metadata file that holds another JSON value than an object
            if isinstance(error, AttributeError) and not isinstance(getattr(error, "obj", None), _JSON_TYPES):
                raise
            quiet_closed_event_loop()
            raise self._damaged(step, f"{type(error).__name__}: {str(error)[:200]}") from error
        if restored is not None:
            expected, found = ([f"{'x'.join(map(str, np.shape(a))) or 'scalar'} {np.dtype(a.dtype)}"
                                for a in jax.tree.leaves(tree)] for tree in (template_states, restored[0]))
            if jax.tree.structure(template_states) != jax.tree.structure(restored[0]) or found != expected:
                pairs = [(f, e) for f, e in zip(found, expected) if f != e] or [
                    (f"{len(found)} arrays", f"{len(expected)}")]
                raise self._damaged(step, f"it holds arrays that do not fit this run: {pairs[0][0]} where the run "
                                          f"has {pairs[0][1]}")
            steps = np.unique(sharding.local_rows(getattr(restored[0], "step", np.asarray([step])), batch))
            if steps.tolist() != [step]:
                raise self._damaged(step, f"it holds the state after step {steps.tolist()}, not after step {step}")
        return restored

    return checked


def _shapes_by_path(tree, rows: int | None = None) -> dict[tuple[str, ...], tuple]:
    """``{path: (shape, dtype)}`` of a tree's arrays, paths as orbax stores them (named tuples become dicts);
    ``rows`` replaces the leading axis."""
    def name(key):
        return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))

    return {tuple(map(name, path)): ((*(() if rows is None else (rows,)), *tuple(a.shape)[rows is not None:]),
                                     str(np.dtype(a.dtype)))
            for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
    def restore(self, template_states, batch: int | None = None) -> tuple[Any, list[dict[str, np.ndarray]]] | None:
        """The latest checkpoint of this run as ``(states, [history])``, or None when starting fresh.

        ``template_states``: arrays of the shapes, dtypes and (for jax arrays) shardings to restore into, batch
        first; ``batch``: the real samples among its rows (default: all), the rest padding. A checkpoint written
        with another padding (another device count) is read into this one.

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
        rows = int(template_states.step.shape[0])
        batch = rows if batch is None else batch
        if meta["batch"] != batch:
            raise self._damaged(step, f"it holds {meta['batch']} samples where the run has {batch}")
        saved_rows = int(meta.get("rows", meta["batch"]))
        if saved_rows != rows:  # another padding: only the batch axis may differ
            saved = ocp.StandardCheckpointHandler().metadata(self.directory / "checkpoints" / str(step) / "state")
            found = _shapes_by_path(saved.tree["states"])
            expected = _shapes_by_path(template_states, rows=saved_rows)
            if found != expected:
                difference = sorted(set(found.items()) ^ set(expected.items()))[0][0]
                raise self._damaged(step, f"its arrays do not fit this run (at {'/'.join(difference)})")

        def target(a):
            if isinstance(a, jax.Array):
                return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
            return np.asarray(a)

        template = {
            "states": jax.tree.map(target, template_states),
            "history": {name: np.zeros((meta["history_rows"], meta["batch"]), np.float32)
                        for name in meta["history_names"]},
        }
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template, strict=saved_rows == rows)))
        state = restored["state"]
        states = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else jax.numpy.asarray(a), state["states"])
        if saved_rows != rows and isinstance(template_states.step, jax.Array) \
                and isinstance(template_states.step.sharding, jax.sharding.NamedSharding):
            mesh = template_states.step.sharding.mesh
            states = sharding.refill_padding(states, sharding.BatchLayout(mesh, batch, rows))
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

    def save(self, step: int, states, history: list[dict[str, np.ndarray]], batch: int | None = None) -> None:
        """Save ``states`` and the history chunks (``{name: (rows, B)}`` each) as the checkpoint of ``step``.

        ``batch``: the real samples among the states' rows (default: the history's columns, else every row);
        sharded states are written by every process, each its own shards."""
        if step == self.last_saved:
            return
        rows_saved = int(states.step.shape[0])
        batch = batch if batch is not None else history[0]["loss"].shape[1] if history else rows_saved
        names = list(history[0]) if history else ["loss"]
        rows = {name: np.concatenate([h[name] for h in history], axis=0) if history
                else np.zeros((0, batch), np.float32) for name in names}
        meta = {"fingerprint": self.fingerprint, "step": step, "history_rows": int(rows[names[0]].shape[0]),
                "batch": batch, "rows": rows_saved, "history_names": names}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({
                "states": jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a), states),
                "history": rows}),
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

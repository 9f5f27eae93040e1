"""The optimisation loop for any loss: state, one step, compiled chunks of steps, and the batched run.

``loss_fn(params, logits, objective, key) -> (total, {name: value})`` is any loss of one sample (see
``jaxmicro.terms.make_loss``). ``make_step`` applies an optax optimiser to it; ``make_run_chunk`` lifts the
step over samples and scans ``chunk`` steps inside one ``jax.jit``; ``run`` calls chunks until the budget is spent,
records the total and every named term per step, and checkpoints between chunks. Failure is data: a sample whose
loss or gradient stops being finite keeps its last finite iterate and is marked, never the batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmicro.errors import InputError


class OptimisationState(NamedTuple):
    """Optimisation state of one sample."""

    logits: jax.Array  # (*shape, channels): the optimised variable
    optimizer_state: Any
    step: jax.Array  # int32, steps taken
    finite: jax.Array  # bool, False once a step produced a non-finite loss or gradient
    reference: jax.Array  # int8 decoded phases at 90 % of the run, to count the pixels still changing after it
    key: jax.Array  # PRNG key of this sample (slice sampling); folded with the step, never advanced


def decoded_phases(logits: jax.Array) -> jax.Array:
    """Phase labels (int8) of the current iterate; grayscale intensities have a single channel and give zeros."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int8)


def make_optimizer(name: str | optax.GradientTransformation = "adam", learning_rate: float | None = None,
                   steps: int | None = None):
    """An optax optimiser by name ('adam', 'lbfgs') or as given; wrapped to accept the L-BFGS extra arguments.

    Adam's step size decays along a cosine from ``learning_rate`` (default 0.05) to zero over ``steps``, so
    that the decoded phases settle (pixels flip less and less).
    """
    if isinstance(name, optax.GradientTransformation):
        optimizer = name
    elif name == "adam":
        rate = 0.05 if learning_rate is None else learning_rate
        optimizer = optax.adam(optax.cosine_decay_schedule(rate, steps) if steps else rate)
    elif name == "lbfgs":
        optimizer = optax.lbfgs(learning_rate)
    else:
        raise InputError(f"unknown optimizer {name!r}; use 'adam' or 'lbfgs' (or pass an optax transformation)")
    return optax.with_extra_args_support(optimizer)


def init_state(optimizer, key: jax.Array, logits: jax.Array) -> OptimisationState:
    """A fresh state of one sample at ``logits``."""
    return OptimisationState(
        logits=logits,
        optimizer_state=optimizer.init(logits),
        step=jnp.zeros((), jnp.int32),
        finite=jnp.ones((), bool),
        reference=jnp.zeros(logits.shape[:-1], jnp.int8),
        key=key,
    )


def make_step(loss_fn: Callable, optimizer, total_steps: int, labels: Callable = decoded_phases) -> Callable:
    """``step(params, state, objective) -> (state, (loss, {name: value}))`` for one sample.

    ``labels(logits)``: the phases the iterate decodes to, recorded at 90 % of the run (``reference``).

    A step whose loss or gradient is not finite is not applied; the sample keeps its last finite iterate and
    every later step leaves it alone (status non-finite), so one bad sample never spoils the batch.
    """
    reference_step = (9 * total_steps) // 10

    def step(params, state: OptimisationState, objective):
        reference = jnp.where(state.step == reference_step, labels(state.logits), state.reference)
        state = state._replace(reference=reference)
        key = jax.random.fold_in(state.key, state.step)

        def value(logits):
            return loss_fn(params, logits, objective, key)[0]

        (loss, values), grads = jax.value_and_grad(lambda z: loss_fn(params, z, objective, key), has_aux=True)(
            state.logits)
        updates, optimizer_state = optimizer.update(
            grads, state.optimizer_state, state.logits, value=loss, grad=grads, value_fn=value
        )
        logits = optax.apply_updates(state.logits, updates)
        ok = state.finite & jnp.isfinite(loss) & jnp.all(jnp.isfinite(grads)) & jnp.all(jnp.isfinite(logits))
        new = OptimisationState(logits, optimizer_state, state.step + 1, ok, reference, state.key)
        kept = state._replace(step=state.step + 1, finite=ok)
        state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, kept)
        recorded = jax.tree.map(lambda v: jnp.where(ok, v, jnp.nan).astype(jnp.float32), (loss, values))
        return state, recorded

    return step


def make_run_chunk(step: Callable, total_steps: int, chunk: int, samples_at_once: int | None = None) -> Callable:
    """``run_chunk(params, states, objective, start=None) -> (states, (losses (chunk, B), {name: (chunk, B)}))``:
    one jit of ``chunk`` steps over the batch (``params`` shared; ``states`` and ``objective`` per sample).

    ``samples_at_once``: the step is vmapped over groups of this many samples, the groups run one after the
    other (``jax.lax.map``); the default is the whole batch at once (one vmap), but one sample at a time on a
    CPU, where a vmapped batch is no faster per sample and an iterative solver in the loss (a vmapped
    ``while_loop``) runs every sample until the slowest one has converged. The results are the same either way
    up to float rounding.

    The chunk length never changes, so a run compiles once, and the objective is an argument, so new targets or
    weights do not recompile; steps past ``total_steps`` leave a sample untouched (NaN in the history, dropped).
    ``start``: the steps every sample has taken before the chunk (an int32 scalar, the same on every device, so
    that deciding whether a step still runs reads no sample's state across devices); without it, sample 0's.
    Splitting a run into chunks, or stopping and resuming between them, gives bitwise the same result on the
    same device.
    """
    # jitted so that tracing it for the output shapes of a skipped step and for the step itself is done once
    if samples_at_once is None and jax.default_backend() == "cpu":
        samples_at_once = 1
    if samples_at_once is None:
        batched_step = jax.jit(jax.vmap(step, in_axes=(None, 0, 0)))
    else:
        batched_step = jax.jit(lambda params, states, objective: jax.lax.map(
            lambda sample: step(params, *sample), (states, objective), batch_size=samples_at_once))

    @functools.partial(jax.jit, donate_argnums=1)
    def run_chunk(params, states, objective, start=None):
        def skipped(carry):
            _, shapes = jax.eval_shape(batched_step, params, carry, objective)
            return carry, jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

        def body(carry, index):
            active = (carry.step[0] if start is None else start + index) < total_steps
            return jax.lax.cond(active, lambda c: batched_step(params, c, objective), skipped, carry)

        return jax.lax.scan(body, states, jnp.arange(chunk, dtype=jnp.int32))

    return run_chunk


def run(run_chunk: Callable, params, states, objective, total_steps: int, *, checkpoint=None,
        callback: Callable | None = None, progress: Callable | None = None,
        mesh=None) -> tuple[Any, dict[str, np.ndarray]]:
    """Call ``run_chunk`` until ``total_steps``: ``(states, history)`` with ``history[name]`` of shape
    ``(B, steps)`` for ``'loss'`` (the total) and every term.

    ``checkpoint`` (a ``jaxmicro.checkpoint.Checkpointer``) restores a previous run first and saves between
    chunks; ``progress(steps_done, total_steps)``, then ``callback(steps_done, states, history_chunks)``, run
    after each chunk (a progress bar; checkpoints on interruption).

    ``mesh`` (default: that of ``jaxmicro.sharding.use_devices``, if any) spreads the batch over its devices:
    ``states`` and ``objective`` (batch first, whole on every process) are padded to a multiple of the device
    count and split along the batch, ``params`` replicated; ``callback`` and checkpoints see the padded, sharded
    states (checkpoints are written shard by shard, by every process); the returned states are the ``B`` real
    samples, gathered once at the end, and the history holds only them.
    """
    from jaxmicro import sharding

    mesh = mesh if mesh is not None else sharding.current_mesh()
    batch = int(states.step.shape[0])
    done = int(np.asarray(states.step)[0])  # the states come whole, on every process
    if mesh is not None:
        layout = sharding.batch_layout(mesh, batch)
        states = sharding.place(sharding.pad(states, layout.padded), layout.rows)
        objective = sharding.place(sharding.pad(objective, layout.padded), layout.rows)
        params = sharding.replicate(params, layout)
        run_chunk = sharding.shard_run_chunk(run_chunk, layout)
        start = lambda steps: sharding.place(np.int32(steps), layout.replicated)  # noqa: E731
    else:
        start = np.int32
    history: list[dict[str, np.ndarray]] = []
    if checkpoint is not None:
        restored = checkpoint.restore(states, batch=batch)
        if restored is not None:
            (states, history), done = restored, checkpoint.last_saved
    while done < total_steps:
        states, (losses, values) = run_chunk(params, states, objective, start(done))
        previous, done = done, min(done + losses.shape[0], total_steps)
        rows = sharding.to_host({"loss": losses, **values})
        history.append({name: v[: done - previous, :batch] for name, v in rows.items()})
        if checkpoint is not None:
            checkpoint.maybe_save(done, total_steps, states, history)
        if progress is not None:
            progress(done, total_steps)
        if callback is not None:
            callback(done, states, history)
    if mesh is not None:
        states = jax.tree.map(lambda x: jnp.asarray(x[:batch]), sharding.to_host(states))
    return states, stack_history(history, batch, total_steps)


def stack_history(chunks: list[dict[str, np.ndarray]], batch: int, steps: int) -> dict[str, np.ndarray]:
    """Chunks of ``{name: (rows, B)}`` -> ``{name: (B, steps)}`` float32."""
    if not chunks:
        return {"loss": np.zeros((batch, 0), np.float32)}
    return {name: np.concatenate([c[name] for c in chunks], axis=0).T[:, :steps].astype(np.float32)
            for name in chunks[0]}

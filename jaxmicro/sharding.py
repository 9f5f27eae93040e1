"""Spread a batch of samples over devices and hosts: a one-axis device mesh, ``'batch'``.

Samples are independent, so the batch axis is the only one split: the optimisation states, the objective's
targets and weights are sharded along it (``NamedSharding(mesh, P('batch'))``), the network and head parameters
are replicated on every device, and the spatial axes of a sample stay on one device. The batch is padded to a
multiple of the device count with copies of sample 0 (they cost a device's share of work and are dropped from every
result); nothing crosses devices during the steps.

The loop (``jaxmicro.optimise.run``) uses the mesh of ``use_devices``, so one ``with`` covers every level of a
coarse-to-fine reconstruction and the coarse start of a design::

    with jaxmicro.use_devices(4):          # or a list of devices, or a Mesh
        result = jaxmicro.reconstruct(labels, shape=(128, 128), count=16)

Several processes (hosts, or several GPUs with one process each): call ``initialize`` first (under SLURM
it needs no arguments); then ``use_devices(None)`` spans every device of every process, ``use_devices(n)`` the
first ``n`` local devices of each. Every process runs the same program on the same inputs; each holds its own
block of samples (``owned_samples``) and the whole result is gathered once at the end of a level.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmicro.errors import InputError

BATCH_AXIS = "batch"
_mesh: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("jaxmicro_mesh", default=None)


# --- processes ----------------------------------------------------------------------------------------------


def slurm_tasks() -> int:
    """The number of tasks of the SLURM job step (``srun``) this process belongs to; 1 outside one. A batch
    script's own process is one process whatever ``--ntasks`` says, so only a step's count is read."""
    count = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    return int(count) if count.isdigit() and "SLURM_PROCID" in os.environ else 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join the other processes of a multi-process run (``jax.distributed.initialize``) before any JAX work.

    With ``coordinator`` (``host:port`` of process 0), ``num_processes`` and ``process_id`` as given; without
    them, in a SLURM step (``srun``) of more than one task, from SLURM's environment. Returns whether it joined
    (False for a single process, or when already joined)."""
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise InputError("a multi-process run needs all of --coordinator HOST:PORT, --num-processes N and "
                         "--process-id I (or none of them under SLURM, which sets them)")
    if not any(given) and slurm_tasks() <= 1:
        return False
    if jax.distributed.is_initialized():
        return False
    if all(given):
        if not 0 <= process_id < num_processes:
            raise InputError(f"--process-id must lie in 0..{num_processes - 1}, got {process_id}")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return True


# --- the mesh ----------------------------------------------------------------------------------------------


def mesh_devices(devices: int | Sequence | None = None) -> list:
    """The devices of a batch mesh: every device of every process (None), the first ``devices`` local devices of
    each process (an int), or the given devices; in process order, so each process holds one block of samples."""
    if devices is None or isinstance(devices, (int, np.integer)):
        local = jax.local_devices()
        count = len(local) if devices is None else int(devices)
        if not 1 <= count <= len(local):
            raise InputError(f"--devices {count}: this process has {len(local)} {local[0].platform.upper()} "
                             f"device(s); use 1..{len(local)} (more CPU devices for tests: "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=N)")
        by_process: dict[int, list] = {}
        for device in jax.devices():
            by_process.setdefault(device.process_index, []).append(device)
        return [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:count]]
    chosen = list(devices)
    if not chosen:
        raise InputError("a mesh needs at least one device")
    return sorted(chosen, key=lambda d: (d.process_index, d.id))


def make_mesh(devices: int | Sequence | Mesh | None = None) -> Mesh:
    """A one-axis mesh (``'batch'``) over ``devices`` (see ``mesh_devices``), or ``devices`` if it is one."""
    if isinstance(devices, Mesh):
        if devices.axis_names != (BATCH_AXIS,):
            raise InputError(f"the mesh must have the single axis {BATCH_AXIS!r}, not {devices.axis_names}")
        return devices
    return Mesh(np.asarray(mesh_devices(devices)), (BATCH_AXIS,))


@contextlib.contextmanager
def use_devices(devices: int | Sequence | Mesh | None = None):
    """Run every optimisation inside the ``with`` on a batch mesh over ``devices`` (see ``make_mesh``)."""
    token = _mesh.set(make_mesh(devices))
    try:
        yield _mesh.get()
    finally:
        _mesh.reset(token)


def current_mesh() -> Mesh | None:
    """The mesh of the innermost ``use_devices``, or None (one device, nothing sharded)."""
    return _mesh.get()


def describe(mesh: Mesh | None = None) -> dict:
    """What runs a batch, for run.json and metrics.json: platform, device kind, devices and processes."""
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    processes = sorted({d.process_index for d in devices})
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind, "devices": len(devices),
            "processes": len(processes), "devices_per_process": len(devices) // len(processes),
            "process_index": jax.process_index(), "names": [str(d) for d in devices]}


# --- a batch on the mesh -------------------------------------------------------------------------------------


class BatchLayout(NamedTuple):
    """How a batch of ``batch`` samples lies on ``mesh``: ``padded`` rows, a multiple of the device count."""

    mesh: Mesh
    batch: int
    padded: int

    @property
    def rows(self) -> NamedSharding:
        """Sharding of arrays with the batch first: split along it."""
        return NamedSharding(self.mesh, P(BATCH_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def columns(self) -> NamedSharding:
        """Sharding of per-step histories ``(steps, batch)``."""
        return NamedSharding(self.mesh, P(None, BATCH_AXIS))


def batch_layout(mesh: Mesh, batch: int) -> BatchLayout:
    devices = mesh.devices.size
    return BatchLayout(mesh, int(batch), -(-int(batch) // devices) * devices)


def pad(tree, padded: int):
    """Rows ``batch..padded`` of every leaf (batch first) are copies of row 0 (on the host's default device)."""
    def one(x):
        x = jnp.asarray(x)
        extra = padded - x.shape[0]
        return x if extra == 0 else jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)])

    return jax.tree.map(one, tree)


def place(tree, sharding: NamedSharding):
    """Every leaf onto ``sharding``. Each process passes the whole value (the same on every process) and keeps
    only the parts that lie on its own devices."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def to_host(tree):
    """Every leaf as one numpy array on every process (gathered across processes where needed)."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def local_rows(x, batch: int | None = None) -> np.ndarray:
    """The rows (batch first) of ``x`` held by this process, below ``batch``: without gathering anything."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)[:batch]
    parts, seen = [], set()
    for shard in x.addressable_shards:
        start = (shard.index[0].start or 0) if shard.index else 0
        if start in seen:
            continue
        seen.add(start)
        data = np.asarray(shard.data)
        keep = data.shape[0] if batch is None else max(0, min(data.shape[0], batch - start))
        parts.append(data[:keep])
    return np.concatenate(parts) if parts else np.zeros((0, *x.shape[1:]), x.dtype)


def owned_samples(batch: int, mesh: Mesh | None = None) -> np.ndarray:
    """The samples (indices below ``batch``) whose rows lie on this process's devices: the ones it writes."""
    mesh = mesh if mesh is not None else current_mesh()
    if mesh is None or jax.process_count() == 1:
        return np.arange(batch)
    layout = batch_layout(mesh, batch)
    owned = set()
    for device, index in layout.rows.addressable_devices_indices_map((layout.padded,)).items():
        owned.update(range(*index[0].indices(layout.padded)))
    return np.asarray(sorted(i for i in owned if i < batch), int)


def refill_padding(tree, layout: BatchLayout):
    """Rows from ``layout.batch`` on become copies of row 0 again (after a restore from another device count,
    whose padding differed); one compiled program, the rows stay where they are."""
    if layout.padded == layout.batch:
        return tree

    def one(x):
        keep = (jnp.arange(x.shape[0]) < layout.batch).reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(keep, x, x[:1])

    return jax.jit(lambda t: jax.tree.map(one, t), out_shardings=layout.rows, donate_argnums=0)(tree)


def per_device(fn, layout: BatchLayout, in_specs, out_specs):
    """``fn`` run by every device on its own block of the batch (``shard_map``): what it computes never leaves
    the device, whatever XLA's partitioner would do with its operations (it gathers the batch around FFTs)."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=layout.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # jax < 0.7

    return shard_map(fn, mesh=layout.mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def shard_run_chunk(run_chunk, layout: BatchLayout):
    """``run_chunk(params, states, objective, start)`` compiled for ``layout``: each device runs the chunk on its
    own samples (parameters and ``start`` replicated, states, objective and the histories ``(chunk, padded)``
    split along the batch) and nothing crosses devices; the states' buffers are donated (updated in place)."""
    rows = P(BATCH_AXIS)
    local = per_device(lambda params, states, objective, start: run_chunk(params, states, objective, start),
                       layout, in_specs=(P(), rows, rows, P()), out_specs=(rows, P(None, BATCH_AXIS)))
    return jax.jit(local, in_shardings=(layout.replicated, layout.rows, layout.rows, layout.replicated),
                   out_shardings=(layout.rows, layout.columns), donate_argnums=1)


def replicate(tree, layout: BatchLayout) -> Any:
    """Every leaf whole on every device of the mesh (network and head parameters)."""
    return place(jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree), layout.replicated)

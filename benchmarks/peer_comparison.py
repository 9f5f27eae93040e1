"""jaxmicro beside MCRpy on the same images, in one run, judged by the same statistics; with time-to-quality.

    python benchmarks/peer_comparison.py --out peer-run                                  # held-out images, jaxmicro
    python benchmarks/peer_comparison.py --mcrpy ~/mcrpy-env/bin/python --out peer-run   # and MCRpy beside it
    python benchmarks/peer_comparison.py --images tuning --seeds 0 --out tuning-run

MCRpy 0.2.0 runs in its own environment (``python3.11 -m venv mcrpy-env && mcrpy-env/bin/pip install
"mcrpy==0.2.0" "tensorflow-cpu==2.15.1" "numpy<2"``): ``--mcrpy`` names its Python. For each image and seed it
runs ``mcrpy.characterize`` once per descriptor set and ``mcrpy.reconstruct --use_multigrid_reconstruction
--max_iter 500`` with its FFT two-point descriptor, alone and with its Variation term at weight 100; the wall
time is that of the reconstruct process. jaxmicro runs ``jaxmicro.reconstruct`` with its defaults, one sample per
seed, after one warm-up run with the same options and another seed (its programs compiled, as in everyday use
with the compilation cache; the warm-up's wall is reported too).

Every output, both tools', is judged by ``jaxmicro.report.compare`` against the whole exemplar: volume-fraction, S2
and lineal-path errors, specific-surface relative error per phase, one-pixel-chord fraction against the exemplar's,
largest-cluster fraction against the exemplar's at the same size (and how far outside the range of its tiles of
that size), and the copy check. The statistics are also taken along the way (every chunk of jaxmicro's full-size
level, every 50 MCRpy iterations of its finest level, timed by the file's write time; each curve ends with the output
itself at its wall) for time-to-quality curves.
Writes ``peer.json``, one figure of the outputs per image and ``time_to_quality.png`` into ``--out``. Needs
../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import jaxmicro
from jaxmicro import report
from jaxmicro.compilation import enable_compilation_cache

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUNING = ["li2018_alloy_2d_256", "li2018_copolymer_2d_256", "li2018_ceramics_2d_256",
          "li2018_composite_3phase_2d_256", "nmc_cathode_3phase_2d_253"]
HELD_OUT = ["li2018_sandstone_2d_256", "li2018_carbonate_2d_256", "li2018_pmma_2d_256", "nmc_tomogram_slice"]
MCRPY_RUNS = {"mcrpy_fft": ["FFTCorrelations"], "mcrpy_fft_variation": ["FFTCorrelations", "Variation"]}
TARGETS = {"volume_fraction": 0.01, "s2": 0.01, "lineal_path": 0.03, "surface": 0.05, "one_pixel_chords": 0.02,
           "cluster": 0.1}


def load(name: str, data: Path) -> np.ndarray:
    """A shared image's labels; ``nmc_tomogram_slice`` is the middle slice of the 3D NMC tomogram."""
    if name == "nmc_tomogram_slice":
        volume = jaxmicro.read_microstructure(data / "nmc_cathode_3phase_3d_256.tif").labels
        return np.asarray(volume[volume.shape[0] // 2]).astype(np.uint8)
    return np.load(data / f"{name}.npy").astype(np.uint8)


def judge(exemplar: np.ndarray, labels: np.ndarray) -> dict:
    """The statistics of one output against its exemplar (largest absolute error over phases); all NaN for an
    output that lost a phase (a collapsed run: no statistic is defined, and NaN marks it failed in the medians)."""
    if set(np.unique(exemplar)) - set(np.unique(labels)):
        return dict.fromkeys([*TARGETS, "cluster_outside_tiles", "copy_excess"], float("nan"))
    r = report.compare(exemplar, [labels])
    ex, rec = r["exemplar"], r["reconstructions"][0]
    cluster = np.asarray(rec["largest_cluster_fraction"])
    same_size = np.asarray(rec["exemplar_largest_cluster_fraction_same_size"])
    low, high = np.asarray(rec["exemplar_largest_cluster_fraction_same_size_range"])
    return {
        "volume_fraction": rec["volume_fraction_error"],
        "s2": rec["s2_max_abs_error"],
        "lineal_path": rec["lineal_path_max_abs_error"],
        "surface": float(np.max(np.abs(rec["specific_surface_relative_error"]))),
        "one_pixel_chords": float(np.max(np.abs(np.subtract(rec["one_pixel_chord_fraction"],
                                                            ex["one_pixel_chord_fraction"])))),
        "cluster": float(np.max(np.abs(cluster - same_size))),
        # how far the cluster fraction lies outside the range of the exemplar's own tiles of this size (0: inside)
        "cluster_outside_tiles": float(np.max(np.maximum(0.0, np.maximum(low - cluster, cluster - high)))),
        "copy_excess": rec["copy_excess"],
    }


def run_jaxmicro(exemplar, size, seed, options):
    """One jaxmicro sample: labels, wall time, and (seconds, labels) snapshots along the full-size level."""
    snapshots, paused = [], [0.0]
    start = time.perf_counter()

    def callback(steps_done, states, history):
        mark = time.perf_counter()
        labels = np.asarray(jax.numpy.argmax(states.logits[0], axis=-1)).astype(np.uint8)
        snapshots.append((mark - start - paused[0], labels))
        paused[0] += time.perf_counter() - mark

    result = jaxmicro.reconstruct(exemplar, shape=(size, size), count=1, seed=seed, callback=callback,
                                  chunk=options.pop("chunk", 25), **options)
    wall = time.perf_counter() - start - paused[0]
    return result.labels[0], wall, snapshots


def run_mcrpy(python, exemplar, size, descriptors, folder: Path):
    """One MCRpy sample (characterise, then reconstruct with multigrid and L-BFGS-B): labels, the reconstruct
    wall time, and snapshots of its finest level every 50 iterations (timed by their files' write times)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_phases = int(exemplar.max()) + 1
    np.save(folder / "ex.npy", exemplar)
    multiphase = ["--use_multiphase"] if n_phases > 2 else []
    weights = ["--descriptor_weights", "1", "100"] if len(descriptors) > 1 else []
    subprocess.run([python, "-m", "mcrpy.characterize", "--microstructure_filenames", str(folder / "ex.npy"),
                    "--descriptor_types", *descriptors, "--limit_to", "16", "--data_folder", str(folder / "char")],
                   check=True, capture_output=True)
    start = time.time()
    subprocess.run([python, "-m", "mcrpy.reconstruct", "--descriptor_filename",
                    str(folder / "char" / "ex_characterization.pickle"), "--descriptor_types", *descriptors, *weights,
                    "--limit_to", "16", "--extent_x", str(size), "--extent_y", str(size),
                    "--use_multigrid_reconstruction", "--max_iter", "500", "--outfile_data_steps", "50",
                    "--data_folder", str(folder / "rec"), *multiphase], check=True, capture_output=True)
    wall = time.time() - start
    finest = sorted((folder / "rec").glob("ms_level_0_iteration_*.npy"))
    snapshots = [(p.stat().st_mtime - start, mcrpy_labels(np.load(p), n_phases)) for p in finest]
    return mcrpy_labels(np.load(folder / "rec" / "last_frame.npy"), n_phases), wall, snapshots


def mcrpy_labels(frame: np.ndarray, n_phases: int) -> np.ndarray:
    """MCRpy's float frame -> labels: argmax over a phase axis, or rounding of a single indicator."""
    frame = np.squeeze(frame)
    if frame.ndim == 3:
        if frame.shape[-1] == n_phases - 1:  # MCRpy keeps n - 1 indicators; phase 0 is the rest
            frame = np.concatenate([1.0 - frame.sum(-1, keepdims=True), frame], axis=-1)
        return np.argmax(frame, axis=-1).astype(np.uint8)
    return np.clip(np.round(frame), 0, n_phases - 1).astype(np.uint8)


def figure(name, exemplar, outputs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(outputs) + 1, figsize=(2.6 * (len(outputs) + 1), 2.9))
    size = outputs[0][1].shape[0]
    axes[0].imshow(exemplar[:size, :size], interpolation="nearest", cmap="viridis")
    axes[0].set_title(f"{name}\n(corner at output size)", fontsize=8)
    for ax, (label, labels, stats) in zip(axes[1:], outputs):
        ax.imshow(labels, interpolation="nearest", cmap="viridis", vmin=0, vmax=exemplar.max())
        ax.set_title(f"{label}\nS2 {stats['s2']:.3f} 1px {stats['one_pixel_chords']:.3f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_figure(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(TARGETS)
    fig, axes = plt.subplots(1, len(names), figsize=(3.1 * len(names), 3.0))
    colours = {}
    for (image, method, seed), points in curves.items():
        colour = colours.setdefault(method, f"C{len(colours)}")
        for ax, stat in zip(axes, names):
            ax.plot([p[0] for p in points], [p[1][stat] for p in points], color=colour, alpha=0.6, lw=1,
                    label=method if (image, seed) == next(iter(curves))[::2] else None)
    for ax, stat in zip(axes, names):
        ax.axhline(TARGETS[stat], color="k", ls=":", lw=1)
        ax.set_xlabel("wall time (s)")
        ax.set_title(stat, fontsize=9)
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="held-out", help="'held-out', 'tuning', or comma-separated names")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--mcrpy", default=None, help="the Python of an environment with mcrpy==0.2.0")
    parser.add_argument("--options", default="{}", help="JSON of extra jaxmicro.reconstruct options")
    parser.add_argument("--out", default="peer-run")
    args = parser.parse_args()
    names = {"held-out": HELD_OUT, "tuning": TUNING}.get(args.images) or args.images.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    enable_compilation_cache()
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, float32, {os.cpu_count()} CPUs")
    rows, curves = [], {}
    for name in names:
        exemplar = load(name, Path(args.data))
        warmup = run_jaxmicro(exemplar, args.size, 99, json.loads(args.options))[1]  # the same programs, compiled
        outputs = []
        for seed in seeds:
            labels, wall, snapshots = run_jaxmicro(exemplar, args.size, seed, json.loads(args.options))
            runs = [("jaxmicro", labels, wall, snapshots)]
            if args.mcrpy:
                for method, descriptors in MCRPY_RUNS.items():
                    with tempfile.TemporaryDirectory() as folder:
                        try:
                            runs.append((method, *run_mcrpy(args.mcrpy, exemplar, args.size, descriptors,
                                                            Path(folder))))
                        except subprocess.CalledProcessError as error:  # record it, go on with the others
                            print(f"{name} {method} s{seed} failed: {error.stderr.decode()[-500:]}", flush=True)
                            rows.append({"image": name, "method": method, "seed": seed, "failed": True})
            for method, labels, wall, snapshots in runs:
                stats = judge(exemplar, labels)
                rows.append({"image": name, "method": method, "seed": seed, "wall_s": wall, **stats})
                # the snapshots along the way, then the output itself at its wall (jaxmicro: after the label swaps)
                curves[(name, method, seed)] = [(t, judge(exemplar, s)) for t, s in snapshots] + [(wall, stats)]
                outputs.append((f"{method} s{seed}", labels, stats))
                np.save(out / f"{name}_{method}_s{seed}.npy", labels)
                print(f"{name:28s} {method:20s} s{seed} wall {wall:6.1f} s  " +
                      " ".join(f"{k} {v:.3f}" for k, v in stats.items()), flush=True)
        rows.append({"image": name, "method": "jaxmicro_warmup", "wall_s": warmup})
        figure(name, exemplar, outputs, out / f"{name}.png")
    curves_figure(curves, out / "time_to_quality.png")
    summary = {"device": str(jax.devices()[0]), "jax": jax.__version__, "jaxmicro": jaxmicro.__version__,
               "size": args.size, "seeds": seeds, "targets": TARGETS, "rows": rows,
               "curves": {"|".join(map(str, k)): v for k, v in curves.items()}, "command": sys.argv}
    (out / "peer.json").write_text(json.dumps(summary, indent=1))
    methods = sorted({r["method"] for r in rows if "s2" in r})
    for name in names:
        print(f"\n{name}: median over seeds")
        for method in methods:
            mine = [r for r in rows if r["method"] == method and r["image"] == name]
            print(f"  {method:20s} " + " ".join(f"{k} {np.median([r[k] for r in mine]):.3f}"
                                                for k in ["wall_s", *TARGETS]))
    print("\nmedian over images and seeds (max in brackets)")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        values = {k: [r[k] for r in mine] for k in ["wall_s", *TARGETS]}
        print(f"{method:20s} " + " ".join(f"{k} {np.median(v):.3f} ({np.max(v):.3f})" for k, v in values.items()))


if __name__ == "__main__":
    main()

"""Grayscale reconstructions judged as a microscopist would: histogram, autocovariance, segmented phases, grid
patterns and the copy check, each beside what the exemplar's own windows of the output's size give.

    python benchmarks/grayscale_quality.py --out gray-run                       # held-out images
    python benchmarks/grayscale_quality.py --images tuning --out gray-tuning    # the images the defaults were chosen on
    python benchmarks/grayscale_quality.py --options '{"initial": "noise"}' --out gray-noise

Images (all grayscale, 0..1): tuning ``gravel`` (scikit-image's CC0 gravel texture, 2x2-averaged to 256x256) and
``ceramics_rendered`` (the Li et al. 2018 ceramics labels from ../shared/data rendered as a micrograph: Gaussian
blur of 1 pixel, phases at 0.15 and 0.85, noise of standard deviation 0.05) and ``grains_rendered`` (a synthetic
polycrystal: dark grain boundaries on bright grains, ``rendered_grains``); held out ``aluminium`` (the shared
aluminium micrograph, MicroStructPy, MIT) and ``brick`` (scikit-image's CC0 brick wall, 2x2-averaged). Needs
scikit-image (``pip install -e '.[crosscheck]'``) and, for the shared images, ../shared/data; a missing image is
skipped with a message.

Each seed runs ``jaxmicro.reconstruct(grayscale=True)`` with its defaults at ``--size``, after one warm-up run
of the same shapes (the compiled programs warm, as on the command line's second run). ``jaxmicro.report.
compare_grayscale`` judges it against the whole exemplar; ``grid`` is the largest ratio of the spectrum's power at
the network's pooling frequencies (1/2, 1/4, 1/8, 1/16 cycles per pixel, per axis) to that of the neighbouring
frequencies: about 1 without a grid pattern, well above 1 with one. The exemplar's corner windows of the output's
size give every measure's scale. Writes ``grayscale.json``, the reconstructions (``NAME_seedS.npy``, uint8) and
``grayscale.png`` (the exemplars and their reconstructions) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import jaxmicro
from jaxmicro import report
from jaxmicro.compilation import enable_compilation_cache

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUNING = ["gravel", "ceramics_rendered", "grains_rendered"]
HELD_OUT = ["aluminium", "brick"]
POOLING_PERIODS = (2, 4, 8, 16)


def _averaged(image: np.ndarray) -> np.ndarray:
    """2x2 means: a 512x512 texture at 256x256, so that its grains span a few dozen pixels."""
    h, w = (s // 2 * 2 for s in image.shape)
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def load(name: str, data: Path) -> np.ndarray:
    """One benchmark image, float32 intensities in 0..1 (FileNotFoundError / ImportError when unavailable)."""
    if name in ("gravel", "brick"):
        import skimage.data

        return (_averaged(getattr(skimage.data, name)().astype(np.float64)) / 255.0).astype(np.float32)
    if name == "aluminium":
        return (np.load(data / "aluminum_micrograph_gray_2d_150.npy").astype(np.float64) / 255.0).astype(np.float32)
    if name == "ceramics_rendered":
        from scipy.ndimage import gaussian_filter

        labels = np.load(data / "li2018_ceramics_2d_256.npy").astype(np.float64)
        image = 0.15 + 0.7 * gaussian_filter(labels, 1.0, mode="wrap")
        image += np.random.default_rng(0).normal(0.0, 0.05, labels.shape)
        return np.clip(image, 0.0, 1.0).astype(np.float32)
    if name == "grains_rendered":
        return rendered_grains()
    raise ValueError(f"unknown image {name!r}; use {', '.join(TUNING + HELD_OUT)}")


def rendered_grains(size: int = 256, grains: int = 70, seed: int = 5) -> np.ndarray:
    """A synthetic polycrystal micrograph: a periodic Voronoi tessellation whose boundaries (where the nearest and
    the second-nearest seed are within 2.2 pixels of each other's distance) are dark (0.1) on bright grains
    (0.85), noise of standard deviation 0.04, a Gaussian blur of 0.7 pixels."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    seeds = rng.random((grains, 2)) * size
    y, x = np.mgrid[0:size, 0:size]
    distances = []
    for sy, sx in seeds:
        dy, dx = np.abs(y - sy), np.abs(x - sx)
        distances.append(np.hypot(np.minimum(dy, size - dy), np.minimum(dx, size - dx)))
    nearest = np.sort(np.stack(distances), axis=0)
    image = np.where(nearest[1] - nearest[0] < 2.2, 0.1, 0.85) + rng.normal(0.0, 0.04, (size, size))
    return np.clip(gaussian_filter(image, 0.7, mode="wrap"), 0.0, 1.0).astype(np.float32)


def grid_ratio(image: np.ndarray) -> float:
    """The largest ratio, over both axes and the pooling periods, of the power at ``1 / period`` cycles per pixel
    to the mean power of the two neighbouring frequencies (one neighbour at Nyquist)."""
    ratios = []
    centred = image - image.mean()
    for axis in (0, 1):
        power = np.mean(np.abs(np.fft.rfft(centred, axis=axis)) ** 2, axis=1 - axis)
        n = image.shape[axis]
        for period in POOLING_PERIODS:
            k = n // period
            neighbours = [power[j] for j in (k - 1, k + 1) if 0 < j < power.size]
            ratios.append(float(power[k] / max(np.mean(neighbours), 1e-20)))
    return max(ratios)


def judge(exemplar: np.ndarray, gray: np.ndarray) -> dict:
    """Every measure of one reconstruction (intensities 0..1) against its exemplar."""
    c = report.compare_grayscale(exemplar, [gray])
    r, phases = c["reconstructions"][0], c["reconstructions"][0]["phases"]
    ex_phases = c["exemplar"]["phases"]
    return {
        "histogram_distance": r["intensity_histogram_distance"],
        "autocovariance_error": r["autocovariance_max_abs_error"],
        "volume_fraction_error": phases["volume_fraction_error"],
        "s2_error": phases["s2_max_abs_error"],
        "lineal_path_error": phases["lineal_path_max_abs_error"],
        "surface_relative_error": max(abs(v) for v in phases["specific_surface_relative_error"]),
        "one_pixel_chords": phases["one_pixel_chord_fraction"],
        "one_pixel_chords_exemplar": ex_phases["one_pixel_chord_fraction"],
        "cluster": phases["largest_cluster_fraction"],
        "cluster_exemplar_same_size": phases["exemplar_largest_cluster_fraction_same_size"],
        "grid": grid_ratio(gray),
        "copy_correlation": r["copy_correlation"], "copy_baseline": r["copy_baseline"],
        "likely_copy": r["likely_copy"],
        "windows": {"histogram_distance": r["exemplar_crops"]["intensity_histogram_distance"],
                    "autocovariance_error": r["exemplar_crops"]["autocovariance_max_abs_error"]},
    }


def window_grids(exemplar: np.ndarray, size: int) -> list[float]:
    """``grid_ratio`` of the exemplar's four corner windows of the output's size."""
    h, w = exemplar.shape
    return [grid_ratio(exemplar[y:y + size, x:x + size]) for y in (0, h - size) for x in (0, w - size)]


def figure(rows: list[tuple[str, np.ndarray, list[np.ndarray]]], path: Path) -> None:
    """Per image: the exemplar's top-left window of the outputs' size (the same scale), then the outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + max(len(outputs) for _, _, outputs in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(3.2 * columns, 3.3 * len(rows)), squeeze=False)
    for row, (name, exemplar, outputs) in zip(axes, rows):
        window = exemplar[:outputs[0].shape[0], :outputs[0].shape[1]]
        for ax, image, title in zip(row, [window, *outputs],
                                    [f"{name} (exemplar window)"] + [f"seed {i}" for i in range(len(outputs))]):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="held-out", help="'held-out', 'tuning', 'all' or comma-separated names")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--options", default="{}", help="JSON of extra jaxmicro.reconstruct options")
    parser.add_argument("--compilation-cache", default=None)
    parser.add_argument("--out", default="gray-run")
    args = parser.parse_args()
    if args.compilation_cache:
        enable_compilation_cache(args.compilation_cache)
    names = {"held-out": HELD_OUT, "tuning": TUNING, "all": TUNING + HELD_OUT}.get(args.images,
                                                                                  args.images.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    options = json.loads(args.options)
    shape = (args.size, args.size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, rows, warm = {}, [], False
    print(f"device {jax.devices()[0]}, jax {jax.__version__}, jaxmicro {jaxmicro.__version__}")
    for name in names:
        try:
            exemplar = load(name, Path(args.data))
        except (FileNotFoundError, ImportError) as error:
            print(f"skipping {name}: {error}")
            continue
        if not warm:  # compile the programs of these shapes once
            jaxmicro.reconstruct(exemplar, grayscale=True, shape=shape, seed=99, **options)
            warm = True
        runs, outputs = [], []
        for seed in seeds:
            start = time.perf_counter()
            result = jaxmicro.reconstruct(exemplar, grayscale=True, shape=shape, seed=seed, **options)
            wall = time.perf_counter() - start
            gray = np.asarray(result.labels[0], np.float32) / 255.0
            runs.append({"seed": seed, "wall_seconds": wall, "status": result.status_names[0],
                         **judge(exemplar, gray)})
            outputs.append(gray)
            np.save(out / f"{name}_seed{seed}.npy", result.labels[0])
            r, windows = runs[-1], runs[-1]["windows"]
            print(f"{name:18s} seed {seed}  {wall:6.1f} s  histogram {r['histogram_distance']:.4f} (windows "
                  f"{min(windows['histogram_distance']):.4f}-{max(windows['histogram_distance']):.4f})"
                  f"  autocovariance {r['autocovariance_error']:.3f} (windows "
                  f"{min(windows['autocovariance_error']):.3f}-{max(windows['autocovariance_error']):.3f})"
                  f"  S2 {r['s2_error']:.3f}  surface {r['surface_relative_error']:.3f}  grid {r['grid']:.2f}"
                  f"  cluster {r['cluster']} vs {r['cluster_exemplar_same_size']}  copy {r['likely_copy']}",
                  flush=True)
        results[name] = {"shape": list(exemplar.shape), "tuning": name in TUNING, "runs": runs,
                         "window_grid": window_grids(exemplar, args.size)}
        rows.append((name, exemplar, outputs))
    record = {"size": args.size, "seeds": seeds, "options": options, "images": results, "device": str(jax.devices()[0]),
              "jax_version": jax.__version__, "jaxmicro_version": jaxmicro.__version__}
    (out / "grayscale.json").write_text(json.dumps(record, indent=1, default=float))
    if rows:
        figure(rows, out / "grayscale.png")
    print(f"wrote {out / 'grayscale.json'}")


if __name__ == "__main__":
    main()

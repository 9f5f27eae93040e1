"""Describe a microstructure and compare reconstructions against their exemplar: JSON-ready dicts, text tables
and figures (matplotlib, Agg, written atomically).

Comparison rules (see docs/statistics.md):

- Profiles (S2, lineal path) are compared up to a common cut-off ``max_distance``, by default half the
  smallest side of the smallest image; errors are the largest absolute difference over phases, axes and
  distances ``0..max_distance``.
- Same dimension: axis ``a`` of a reconstruction is compared with axis ``a`` of the exemplar.
  A 3D reconstruction of a 2D exemplar: each of its 3 axes is compared with the exemplar's profile averaged
  over its 2 axes (the in-plane isotropic assumption of 2D-to-3D reconstruction); errors are reported per axis.
- Copy check: ``statistics.copy_agreement`` over shifts, flips and transposes; for a 3D reconstruction of a 2D
  exemplar, the highest agreement of the exemplar with the middle slice normal to each axis.
- Connectivity: ``statistics.largest_cluster_fraction`` (face-connected, non-periodic) of each image in its own
  dimension; for a 3D reconstruction of a 2D exemplar also its slices' 2D value per axis, the like-for-like one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxmicro import statistics as st
from jaxmicro.errors import InputError

__all__ = ["describe", "format_description", "compare", "format_comparison", "comparison_figure", "describe_figure"]

LIKELY_COPY_EXCESS = 0.9
"""``likely_copy`` is set when (agreement - baseline) / (1 - baseline) reaches this (a heuristic)."""


# ----------------------------------------------------------------------------------------------------------
# validation


def _labels(image, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise InputError(f"{name}: a label image must be 2D or 3D, got shape {array.shape}")
    if min(array.shape) < 2:
        raise InputError(f"{name}: every side must be at least 2 pixels, got shape {array.shape}")
    try:
        return st._labels_array(array, name)
    except InputError as error:
        raise InputError(f"{name}: {error}") from None


def _check_phases(labels: np.ndarray, n_phases: int, name: str) -> None:
    present = np.bincount(labels.ravel(), minlength=n_phases)
    if len(present) > n_phases:
        raise InputError(
            f"{name} has {len(present)} phases (labels 0..{len(present) - 1}) but the exemplar has {n_phases}; "
            "images with different numbers of phases cannot be compared"
        )
    empty = [int(i) for i in np.flatnonzero(present == 0)]
    if empty:
        raise InputError(
            f"{name}: phase {', '.join(map(str, empty))} is empty (labels must use every phase 0..{n_phases - 1}); "
            "relabel the image or compare images with the same phases"
        )


def _chord_summary(counts: np.ndarray) -> dict:
    """Mean, standard deviation and number of chords per phase for one axis' ``(n, L + 1)`` counts."""
    lengths = np.arange(counts.shape[-1])
    number = counts.sum(-1)
    mean = st.mean_chord_length(counts)
    std = np.sqrt(np.maximum((counts * lengths**2).sum(-1) / np.maximum(number, 1) - mean**2, 0.0))
    return {"count": number.tolist(), "mean": mean.tolist(), "std": std.tolist()}


def one_pixel_chord_fraction(counts: np.ndarray) -> np.ndarray:
    """``(n,)`` share of one-pixel chords among all chords of each phase, all axes together, from
    ``(ndim, n, L + 1)`` chord counts: isolated pixels, one-pixel necks and rough interfaces raise it."""
    pooled = counts.sum(axis=0)
    return pooled[:, 1] / np.maximum(pooled.sum(axis=1), 1)


def _statistics(labels: np.ndarray, n_phases: int, max_distance: int) -> dict:
    """numpy arrays of every statistic of one label image."""
    profiles = st.two_point_profiles(labels, max_distance=max_distance, n_phases=n_phases)
    counts = st.chord_length_distribution(labels, n_phases)
    return {
        "fractions": np.asarray(st.volume_fractions(st.phase_indicators(labels, n_phases)), np.float64),
        "s2": np.asarray(profiles.per_axis, np.float64),
        "s2_radial": np.asarray(profiles.radial, np.float64),
        "lineal_path": st.lineal_path(labels, n_phases, max_distance=max_distance),
        "chords": counts,
        "surface": np.asarray(st.specific_surface(labels, n_phases), np.float64),
        "surface_pairs": np.asarray(st.specific_surface(labels, n_phases, pairwise=True), np.float64),
    }


# ----------------------------------------------------------------------------------------------------------
# describe


def describe(labels, n_phases: int | None = None, *, max_distance: int | None = None) -> dict:
    """Statistics of one label image as a JSON-ready dict.

    Keys: ``shape``, ``ndim``, ``n_phases``, ``volume_fractions`` (n), ``max_distance`` (cut-off, default half
    the smallest side), ``distance`` (0..R), ``s2_per_axis`` (ndim x (R+1) x n), ``s2_radial`` ((R+1) x n),
    ``lineal_path_per_axis`` (ndim x (R+1) x n), ``chord_length`` (per axis: ``count``, ``mean``, ``std`` per
    phase, in pixels; periodic chords, see ``statistics.chord_length_distribution``), ``chord_length_mean``
    (n, mean over axes), ``specific_surface`` (n, boundary faces per pixel), ``specific_surface_pairs``
    (n x n), ``specific_surface_total`` (all interfaces, faces per pixel), ``largest_cluster_fraction`` (n, the
    fraction of each phase in its largest face-connected cluster, non-periodic).
    """
    array = _labels(labels, "image")
    n = int(n_phases) if n_phases is not None else int(array.max()) + 1
    _check_phases(array, n, "image")
    max_distance = st._check_max_distance(max_distance, array.shape)
    s = _statistics(array, n, max_distance)
    chords = [_chord_summary(s["chords"][a]) for a in range(array.ndim)]
    return {
        "shape": list(array.shape),
        "ndim": array.ndim,
        "n_phases": n,
        "volume_fractions": s["fractions"].tolist(),
        "max_distance": max_distance,
        "distance": list(range(max_distance + 1)),
        "s2_per_axis": s["s2"].tolist(),
        "s2_radial": s["s2_radial"].tolist(),
        "lineal_path_per_axis": s["lineal_path"].tolist(),
        "chord_length": chords,
        "chord_length_mean": np.mean([c["mean"] for c in chords], axis=0).tolist(),
        "one_pixel_chord_fraction": one_pixel_chord_fraction(s["chords"]).tolist(),
        "specific_surface": s["surface"].tolist(),
        "specific_surface_pairs": s["surface_pairs"].tolist(),
        "specific_surface_total": float(s["surface"].sum() / 2),
        "largest_cluster_fraction": st.largest_cluster_fraction(array, n).tolist(),
    }


def format_description(d: dict) -> str:
    """A readable text table of ``describe``'s dict."""
    shape = " x ".join(map(str, d["shape"]))
    lines = [
        f"image {shape} ({d['ndim']}D), {d['n_phases']} phases, profiles up to {d['max_distance']} px, "
        f"interface density {d['specific_surface_total']:.4f} faces/px",
        "",
    ]
    axes = range(d["ndim"])
    header = f"{'phase':>5}  {'fraction':>8}  {'surface':>8}  {'cluster':>8}  "
    header += "  ".join(f"{'chord ax' + str(a):>9}" for a in axes)
    header += "  " + "  ".join(f"{'S2(R/4) ax' + str(a):>11}" for a in axes)
    lines.append(header)
    quarter = d["max_distance"] // 4
    for i in range(d["n_phases"]):
        row = f"{i:>5}  {d['volume_fractions'][i]:>8.4f}  {d['specific_surface'][i]:>8.4f}  "
        row += f"{d['largest_cluster_fraction'][i]:>8.4f}  "
        row += "  ".join(f"{d['chord_length'][a]['mean'][i]:>9.2f}" for a in axes)
        row += "  " + "  ".join(f"{d['s2_per_axis'][a][quarter][i]:>11.4f}" for a in axes)
        lines.append(row)
    lines.append("")
    lines.append("surface: boundary faces per pixel; cluster: fraction of the phase in its largest face-connected "
                 "cluster (non-periodic); chord: mean periodic chord length (px) along each axis; "
                 f"S2 at r = {quarter} px")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# compare


def _as_list(reconstructions) -> list:
    """A list or tuple of images as given; anything else is one image."""
    if isinstance(reconstructions, (list, tuple)):
        return list(reconstructions)
    return [reconstructions]


def _middle_slices(volume: np.ndarray) -> list[np.ndarray]:
    return [np.take(volume, volume.shape[a] // 2, axis=a) for a in range(3)]


def compare(exemplar, reconstructions, *, names: Sequence[str] | None = None, max_distance: int | None = None) -> dict:
    """Compare reconstructions with their exemplar.

    Args:
        exemplar: ``(*spatial)`` label image, 2D or 3D.
        reconstructions: a label image or a sequence of them; 2D or 3D (3D allowed for a 2D exemplar), any sizes.
        names: one name per reconstruction (default ``reconstruction_0``, ...), reported as ``file``.
        max_distance: cut-off of the profiles; default half the smallest side of the smallest image.

    Returns:
        JSON-ready dict with ``exemplar`` (``describe`` of the exemplar up to the cut-off), ``max_distance``,
        ``baseline`` (``sum_i f_i^2`` of the exemplar) and ``reconstructions``: one dict each with ``file``,
        ``shape``, ``volume_fractions``, ``volume_fraction_error`` (largest absolute error over phases),
        ``s2_max_abs_error`` and ``lineal_path_max_abs_error`` (over phases, axes, distances 0..R) with their
        ``..._per_axis`` lists, ``specific_surface`` (n), ``specific_surface_relative_error`` (n),
        ``chord_length_mean`` (n), ``copy_agreement``, ``copy_baseline`` (``sum_i f_i g_i``), ``copy_excess``
        (``(agreement - baseline) / (1 - baseline)``: 0 independent, 1 a moved copy), ``likely_copy`` and
        ``largest_cluster_fraction`` (n, in the reconstruction's own dimension: 3D for a volume); for a 3D
        reconstruction of a 2D exemplar also ``largest_cluster_fraction_slices`` (3 x n: the 2D value of its
        slices normal to each axis, averaged). ``exemplar_largest_cluster_fraction_same_size`` (n): the
        exemplar's value averaged over tiles of the reconstruction's size (of its slices for a volume from a 2D
        exemplar), the like-for-like reference, since the fraction falls as the window grows.

    Raises:
        InputError: a 3D exemplar with a 2D reconstruction, a different number of phases, an empty phase,
            a bad cut-off, or names that do not match the reconstructions.
    """
    ex = _labels(exemplar, "exemplar")
    recs = _as_list(reconstructions)
    if not recs:
        raise InputError("no reconstructions to compare")
    names = [f"reconstruction_{k}" for k in range(len(recs))] if names is None else [str(n) for n in names]
    if len(names) != len(recs):
        raise InputError(f"{len(names)} names for {len(recs)} reconstructions")
    n = int(ex.max()) + 1
    _check_phases(ex, n, "exemplar")
    arrays = []
    for name, rec in zip(names, recs):
        array = _labels(rec, name)
        if array.ndim < ex.ndim:
            raise InputError(f"{name} is 2D but the exemplar is 3D; a 2D image cannot be compared with a 3D exemplar")
        _check_phases(array, n, name)
        arrays.append(array)
    limit = min(min(a.shape) for a in [ex, *arrays]) // 2
    if max_distance is None:
        max_distance = limit
    elif not 0 <= int(max_distance) <= limit:
        raise InputError(f"max_distance={max_distance} must lie between 0 and {limit} "
                         "(half the smallest side of the smallest image)")
    max_distance = int(max_distance)

    summary = describe(ex, n, max_distance=max_distance)
    ex_fractions = np.asarray(summary["volume_fractions"])
    ex_s2 = np.asarray(summary["s2_per_axis"])
    ex_path = np.asarray(summary["lineal_path_per_axis"])
    ex_surface = np.asarray(summary["specific_surface"])
    baseline = float(np.sum(ex_fractions**2))
    results = []
    for name, array in zip(names, arrays):
        s = _statistics(array, n, max_distance)
        if array.ndim == ex.ndim:
            target_s2, target_path = ex_s2, ex_path
            copy = float(st.copy_agreement(ex, array, n))
        else:  # 3D reconstruction of a 2D exemplar: every axis against the exemplar's in-plane mean
            target_s2 = np.repeat(ex_s2.mean(0, keepdims=True), 3, axis=0)
            target_path = np.repeat(ex_path.mean(0, keepdims=True), 3, axis=0)
            copy = max(float(st.copy_agreement(ex, piece, n)) for piece in _middle_slices(array))
        s2_error = np.abs(s["s2"] - target_s2).max(axis=(1, 2))
        path_error = np.abs(s["lineal_path"] - target_path).max(axis=(1, 2))
        rec_baseline = float(np.sum(ex_fractions * s["fractions"]))
        excess = (copy - rec_baseline) / max(1.0 - rec_baseline, 1e-12)
        chords = [_chord_summary(s["chords"][a])["mean"] for a in range(array.ndim)]
        result = {
            "file": name,
            "shape": list(array.shape),
            "volume_fractions": s["fractions"].tolist(),
            "volume_fraction_error": float(np.abs(s["fractions"] - ex_fractions).max()),
            "s2_max_abs_error": float(s2_error.max()),
            "s2_max_abs_error_per_axis": s2_error.tolist(),
            "lineal_path_max_abs_error": float(path_error.max()),
            "lineal_path_max_abs_error_per_axis": path_error.tolist(),
            "specific_surface": s["surface"].tolist(),
            "specific_surface_relative_error": ((s["surface"] - ex_surface) / ex_surface).tolist(),
            "chord_length_mean": np.mean(chords, axis=0).tolist(),
            "one_pixel_chord_fraction": one_pixel_chord_fraction(s["chords"]).tolist(),
            "copy_agreement": copy,
            "copy_baseline": rec_baseline,
            "copy_excess": float(excess),
            "likely_copy": bool(excess >= LIKELY_COPY_EXCESS),
            "largest_cluster_fraction": st.largest_cluster_fraction(array, n).tolist(),
            "exemplar_largest_cluster_fraction_same_size": st.largest_cluster_fraction_tiles(
                ex, array.shape if array.ndim == ex.ndim else array.shape[1:], n).tolist(),
        }
        if array.ndim > ex.ndim:
            result["largest_cluster_fraction_slices"] = st.largest_cluster_fraction_slices(array, n).tolist()
        results.append(result)
    return {"exemplar": summary, "max_distance": max_distance, "baseline": baseline, "reconstructions": results}


def _per_phase(values) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def format_comparison(d: dict) -> str:
    """A text table of ``compare``'s dict: one row per reconstruction, then the largest-cluster fractions."""
    ex = d["exemplar"]
    fractions = " / ".join(f"{f:.3f}" for f in ex["volume_fractions"])
    lines = [
        f"exemplar {' x '.join(map(str, ex['shape']))}, {ex['n_phases']} phases, fractions {fractions}; "
        f"profiles compared up to {d['max_distance']} px; independent-structure agreement {d['baseline']:.3f}",
        "",
        f"{'file':<24} {'shape':>13} {'|dVf|':>7} {'|dS2|':>7} {'|dL|':>7} {'copy':>6} {'base':>6}  note",
    ]
    for r in d["reconstructions"]:
        shape = "x".join(map(str, r["shape"]))
        note = "LIKELY A COPY of the exemplar" if r["likely_copy"] else ""
        lines.append(
            f"{r['file'][:24]:<24} {shape:>13} {r['volume_fraction_error']:>7.4f} {r['s2_max_abs_error']:>7.4f} "
            f"{r['lineal_path_max_abs_error']:>7.4f} {r['copy_agreement']:>6.3f} {r['copy_baseline']:>6.3f}  {note}"
        )
    lines.append("")
    lines.append("largest-cluster fraction of each phase (phases separated by /; face-connected, non-periodic):")
    lines.append(f"  {'exemplar':<24} {ex['ndim']}D {_per_phase(ex['largest_cluster_fraction'])}")
    for r in d["reconstructions"]:
        row = f"  {r['file'][:24]:<24} {len(r['shape'])}D {_per_phase(r['largest_cluster_fraction'])}"
        if "largest_cluster_fraction_slices" in r:
            row += "   2D slices, mean per axis: " + "  ".join(
                f"ax{a} {_per_phase(v)}" for a, v in enumerate(r["largest_cluster_fraction_slices"]))
        row += f"   exemplar at this size: {_per_phase(r['exemplar_largest_cluster_fraction_same_size'])}"
        lines.append(row)
    lines.append("")
    lines.append("|dVf|, |dS2|, |dL|: largest absolute error of volume fraction, S2 and lineal path over phases, axes "
                 "and distances; copy: best pixel agreement over shifts/flips/transposes; "
                 "base: that of independent structures")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# figures


def _save_atomically(figure, path) -> Path:
    from jaxmicro.io import save_figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, path, dpi=110)
    return path


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _show_image(ax, labels: np.ndarray, n_phases: int, title: str) -> None:
    image = labels if labels.ndim == 2 else labels[labels.shape[0] // 2]
    ax.imshow(image, cmap="viridis", vmin=0, vmax=max(n_phases - 1, 1), interpolation="nearest")
    ax.set_title(title + (" (middle slice)" if labels.ndim == 3 else ""), fontsize=9)
    ax.set_axis_off()


def _chord_probability(counts: np.ndarray, max_distance: int) -> np.ndarray:
    """``(n, R + 1)`` number-weighted chord-length probability, summed over axes, lengths up to R (longer clipped)."""
    total = counts.sum(0)  # (n, L + 1)
    clipped = total[:, : max_distance + 1].astype(np.float64).copy()
    clipped[:, -1] += total[:, max_distance + 1 :].sum(-1)
    return clipped / np.maximum(clipped.sum(-1, keepdims=True), 1)


def _band_panel(ax, title: str, reference: np.ndarray, values: list[np.ndarray], label: str = "exemplar") -> None:
    """The exemplar's ``(n, R + 1)`` profile of each phase against the reconstructions' (mean, min-max band)."""
    distance = np.arange(reference.shape[-1])
    for i in range(reference.shape[0]):
        ax.plot(distance, reference[i], color=f"C{i}", lw=2, label=f"{label} phase {i}")
        if values:
            stacked = np.stack([v[i] for v in values])
            ax.plot(distance, stacked.mean(0), color=f"C{i}", ls="--", lw=1.2,
                    label=f"reconstructions phase {i} (mean, min-max)")
            ax.fill_between(distance, stacked.min(0), stacked.max(0), color=f"C{i}", alpha=0.2, lw=0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("distance (pixels)")


_PROFILES = {
    "s2": ("two-point correlation S2 (mean over axes)", lambda s, r: s["s2"].mean(0).T),
    "lineal_path": ("lineal path L (mean over axes)", lambda s, r: s["lineal_path"].mean(0).T),
    "chords": ("chord-length probability", lambda s, r: _chord_probability(s["chords"], r)),
}


def _profile_panels(axes, ex_stats: dict, rec_stats: list[dict], max_distance: int,
                    kinds: Sequence[str] = ("s2", "lineal_path", "chords")) -> None:
    for ax, kind in zip(axes, kinds):
        title, get = _PROFILES[kind]
        _band_panel(ax, title, get(ex_stats, max_distance), [get(s, max_distance) for s in rec_stats])
    axes[0].legend(fontsize=7)


def comparison_figure(exemplar, reconstructions, path, *, names: Sequence[str] | None = None,
                      max_distance: int | None = None) -> Path:
    """Write a PNG comparing reconstructions with their exemplar. Written atomically; returns the path.

    2D reconstructions: the exemplar (middle slice for 3D) and up to 4 reconstructions, then S2, lineal path and
    chord-length distributions of the exemplar against the reconstructions (mean and min-max band over all).
    With 3D reconstructions: the exemplar and the three orthogonal middle slices of the first volume; S2 along
    each axis of the volumes against the exemplar's (its in-plane mean for a 2D exemplar, the same axis for a
    3D one); then lineal path and chord-length distributions as for 2D. Same validation and cut-off as ``compare``.
    """
    ex = _labels(exemplar, "exemplar")
    recs = [_labels(r, f"reconstruction {k}") for k, r in enumerate(_as_list(reconstructions))]
    names = [f"reconstruction_{k}" for k in range(len(recs))] if names is None else list(names)
    n = int(ex.max()) + 1
    _check_phases(ex, n, "exemplar")
    for name, r in zip(names, recs):
        if r.ndim < ex.ndim:
            raise InputError(f"{name} is 2D but the exemplar is 3D")
        _check_phases(r, n, name)
    limit = min(min(a.shape) for a in [ex, *recs]) // 2
    max_distance = limit if max_distance is None else int(max_distance)
    ex_stats = _statistics(ex, n, max_distance)
    rec_stats = [_statistics(r, n, max_distance) for r in recs]
    volumes = [k for k, r in enumerate(recs) if r.ndim == 3]
    if not volumes:
        shown = recs[:4]
        columns = max(1 + len(shown), 3)
        figure = _new_figure(3.2 * columns, 6.4)
        grid = figure.add_gridspec(2, columns)
        _show_image(figure.add_subplot(grid[0, 0]), ex, n, "exemplar")
        for k, r in enumerate(shown):
            _show_image(figure.add_subplot(grid[0, k + 1]), r, n, str(names[k]))
        edges = np.linspace(0, columns, 4).round().astype(int)
        axes = [figure.add_subplot(grid[1, edges[k] : edges[k + 1]]) for k in range(3)]
        _profile_panels(axes, ex_stats, rec_stats, max_distance)
        return _save_atomically(figure, path)

    figure = _new_figure(12.8, 9.6)
    grid = figure.add_gridspec(3, 12)  # 12 columns: 4 images, 3 per-axis panels, 2 profile panels
    _show_image(figure.add_subplot(grid[0, 0:3]), ex, n, "exemplar")
    first = recs[volumes[0]]
    for a in range(3):
        piece = np.take(first, first.shape[a] // 2, axis=a)
        _show_image(figure.add_subplot(grid[0, 3 * a + 3 : 3 * a + 6]), piece, n,
                    f"{names[volumes[0]]}\nmiddle slice normal to axis {a}")
    for a in range(3):
        reference = ex_stats["s2"].mean(0).T if ex.ndim == 2 else ex_stats["s2"][a].T
        ax = figure.add_subplot(grid[1, 4 * a : 4 * a + 4])
        _band_panel(ax, f"S2 along axis {a} (3D reconstructions)", reference,
                    [rec_stats[k]["s2"][a].T for k in volumes],
                    "exemplar (in-plane mean)" if ex.ndim == 2 else "exemplar")
        if a == 0:
            ax.legend(fontsize=7)
    axes = [figure.add_subplot(grid[2, 0:6]), figure.add_subplot(grid[2, 6:12])]
    _profile_panels(axes, ex_stats, rec_stats, max_distance, ("lineal_path", "chords"))
    return _save_atomically(figure, path)


def describe_figure(labels, path, *, max_distance: int | None = None) -> Path:
    """Write a PNG of one label image (middle slice for 3D) with its S2 and lineal path per axis and its
    chord-length probability. Written atomically; returns the path."""
    array = _labels(labels, "image")
    n = int(array.max()) + 1
    _check_phases(array, n, "image")
    max_distance = st._check_max_distance(max_distance, array.shape)
    s = _statistics(array, n, max_distance)
    figure = _new_figure(14, 3.4)
    axes = figure.subplots(1, 4)
    _show_image(axes[0], array, n, "image")
    distance = np.arange(max_distance + 1)
    styles = ["-", "--", ":"]
    for i in range(n):
        for a in range(array.ndim):
            axes[1].plot(distance, s["s2"][a, :, i], color=f"C{i}", ls=styles[a], label=f"phase {i}, axis {a}")
            axes[2].plot(distance, s["lineal_path"][a, :, i], color=f"C{i}", ls=styles[a])
        axes[3].plot(distance, _chord_probability(s["chords"], max_distance)[i], color=f"C{i}", label=f"phase {i}")
    for ax, title in zip(axes[1:], ["two-point correlation S2", "lineal path L", "chord-length probability"]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("distance (pixels)")
    axes[1].legend(fontsize=7)
    return _save_atomically(figure, path)


def design_figure(exemplar, designs, checked: dict, path) -> Path:
    """Write a PNG of a design run: a corner of the exemplar at the designs' size (the same scale) and up to 5
    designs (the first of each target, 2D or middle slices), the achieved value of the first property against
    its target, and the trade-off between property error and S2 error (the non-dominated front joined).
    ``designs``: the labels of every design, in the order of ``checked["designs"]``
    (``jaxmicro.inverse_design.design_records``). Written atomically."""
    ex = _labels(exemplar, "exemplar")
    n = int(ex.max()) + 1
    records = checked["designs"]
    firsts = {json.dumps(r["target"], sort_keys=True): k for k, r in reversed(list(enumerate(records)))}
    shown = sorted(firsts.values())[:5]
    columns = max(len(shown) + 1, 4)
    figure = _new_figure(2.6 * columns, 5.6)
    grid = figure.add_gridspec(2, columns)
    window = tuple(slice(0, min(e, d)) for e, d in zip(ex.shape, np.shape(designs[0])))
    _show_image(figure.add_subplot(grid[0, 0]), ex[window], n,
                "exemplar" + (" (a corner at the designs' size)" if ex[window].shape != ex.shape else ""))
    for column, k in enumerate(shown, 1):
        name = next(iter(records[k]["achieved"]))
        _show_image(figure.add_subplot(grid[0, column]), np.asarray(designs[k]), n,
                    f"{records[k]['file']}\n{name} = {records[k]['achieved'][name]:.4g}")
    half = columns // 2
    ax = figure.add_subplot(grid[1, :half])
    name = next(iter(records[0]["achieved"]))
    achieved = np.array([r["achieved"][name] for r in records])
    asked = [r["target"][name] for r in records]
    numeric = [isinstance(a, (int, float)) for a in asked]
    if all(numeric):
        goal = np.asarray(asked, float)
        ax.plot([goal.min(), goal.max()], [goal.min(), goal.max()], color="0.6", lw=1, label="achieved = target")
        ax.scatter(goal, achieved, s=14, c=["C0" if r["reached"] else "C3" for r in records])
        ax.set_xlabel(f"target {name}")
    else:
        ax.scatter(np.arange(len(records)), achieved, s=14, c=["C0" if r["reached"] else "C3" for r in records])
        ax.set_xlabel(f"design (target {asked[0]})")
    bounds = checked.get("bounds", {}).get("conductivity")
    if bounds and name.startswith("k_") and name[2] == name[3]:
        for key, style in (("reuss", ":"), ("voigt", "--")):
            ax.axhline(bounds[key], color="0.3", ls=style, lw=1, label=f"{key} bound")
    ax.set_ylabel(f"achieved {name} (solver on the labels)")
    ax.set_title("blue: reached; red: not reached", fontsize=9)
    ax.legend(fontsize=7)
    ax = figure.add_subplot(grid[1, half:])
    errors = np.array([max(r["relative_error"].values()) for r in records])
    s2 = np.array([np.nan if r["s2_max_abs_error"] is None else r["s2_max_abs_error"] for r in records])
    weights = np.array([r["statistics_weight"] for r in records])
    points = ax.scatter(errors, s2, c=weights, s=14, cmap="viridis")
    front = checked.get("pareto", [])
    if front:
        ax.plot([p["property_error"] for p in front], [p["s2_max_abs_error"] for p in front], color="C3", lw=1,
                label="non-dominated")
        ax.legend(fontsize=7)
    figure.colorbar(points, ax=ax, label="statistics weight")
    ax.set_xlabel("largest relative property error")
    ax.set_ylabel("S2 max abs error")
    ax.set_title("trade-off", fontsize=9)
    return _save_atomically(figure, path)

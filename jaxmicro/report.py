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

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxmicro import statistics as st, units
from jaxmicro.errors import InputError

__all__ = ["describe", "format_description", "compare", "format_comparison", "comparison_figure", "describe_figure",
           "describe_grayscale", "compare_grayscale", "format_grayscale_description", "format_grayscale_comparison"]

LIKELY_COPY_EXCESS = 0.9
"""``likely_copy`` is set when (agreement - baseline) / (1 - baseline) reaches this (a heuristic)."""


# ----------------------------------------------------------------------------------------------------------
# validation


def _checked(image, name: str, kind: str, convert) -> np.ndarray:
    """A 2D or 3D image with sides of at least 2 pixels, converted by ``convert(array, name)``; errors name it."""
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise InputError(f"{name}: a {kind} image must be 2D or 3D, got shape {array.shape}")
    if min(array.shape) < 2:
        raise InputError(f"{name}: every side must be at least 2 pixels, got shape {array.shape}")
    try:
        return convert(array, name)
    except InputError as error:
        raise InputError(f"{name}: {error}") from None


def _labels(image, name: str) -> np.ndarray:
    return _checked(image, name, "label", st._labels_array)


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


def _chord_summary(counts: np.ndarray, side: float | None = None) -> dict:
    """Mean, standard deviation and number of chords per phase for one axis' ``(n, L + 1)`` counts; lengths in
    pixels, or times ``side`` (the voxel side along that axis)."""
    lengths = np.arange(counts.shape[-1])
    number = counts.sum(-1)
    mean = st.mean_chord_length(counts)
    std = np.sqrt(np.maximum((counts * lengths**2).sum(-1) / np.maximum(number, 1) - mean**2, 0.0))
    scale = 1.0 if side is None else side
    return {"count": number.tolist(), "mean": (mean * scale).tolist(), "std": (std * scale).tolist()}


def one_pixel_chord_fraction(counts: np.ndarray) -> np.ndarray:
    """``(n,)`` share of one-pixel chords among all chords of each phase, all axes together, from
    ``(ndim, n, L + 1)`` chord counts: isolated pixels, one-pixel necks and rough interfaces raise it."""
    pooled = counts.sum(axis=0)
    return pooled[:, 1] / np.maximum(pooled.sum(axis=1), 1)


def _statistics(labels: np.ndarray, n_phases: int, max_distance: int, voxel=None) -> dict:
    """numpy arrays of every statistic of one label image (surfaces per unit length with a ``voxel`` size)."""
    profiles = st.two_point_profiles(labels, max_distance=max_distance, n_phases=n_phases)
    counts = st.chord_length_distribution(labels, n_phases)
    return {
        "fractions": np.asarray(st.volume_fractions(st.phase_indicators(labels, n_phases)), np.float64),
        "s2": np.asarray(profiles.per_axis, np.float64),
        "s2_radial": np.asarray(profiles.radial, np.float64),
        "lineal_path": st.lineal_path(labels, n_phases, max_distance=max_distance),
        "chords": counts,
        "surface": np.asarray(st.specific_surface(labels, n_phases, voxel_size=voxel), np.float64),
        "surface_pairs": np.asarray(st.specific_surface(labels, n_phases, pairwise=True, voxel_size=voxel),
                                    np.float64),
    }


# ----------------------------------------------------------------------------------------------------------
# describe


def describe(labels, n_phases: int | None = None, *, max_distance: int | None = None, grayscale: bool = False,
             voxel_size=None) -> dict:
    """Statistics of one label image (or, with ``grayscale=True``, intensity image: see ``describe_grayscale``)
    as a JSON-ready dict.

    Keys: ``shape``, ``ndim``, ``n_phases``, ``volume_fractions`` (n), ``max_distance`` (cut-off, default half
    the smallest side), ``distance`` (0..R), ``s2_per_axis`` (ndim x (R+1) x n), ``s2_radial`` ((R+1) x n),
    ``lineal_path_per_axis`` (ndim x (R+1) x n), ``chord_length`` (per axis: ``count``, ``mean``, ``std`` per
    phase, in pixels; periodic chords, see ``statistics.chord_length_distribution``), ``chord_length_mean``
    (n, mean over axes), ``specific_surface`` (n, boundary faces per pixel), ``specific_surface_pairs``
    (n x n), ``specific_surface_total`` (all interfaces, faces per pixel), ``largest_cluster_fraction`` (n, the
    fraction of each phase in its largest face-connected cluster, non-periodic).

    ``voxel_size`` (``"0.5um"``, a number or one per axis, see ``jaxmicro.units``): chord lengths and, with
    cubic voxels, ``distance`` in that unit, ``specific_surface*`` in 1/unit (area per volume), plus
    ``voxel_size`` (per axis), ``unit`` and ``distance_per_axis`` (ndim x (R+1), the per-axis profiles'
    distances). ``max_distance`` stays in pixels (the cut-off of the profiles).
    """
    if grayscale:
        return describe_grayscale(labels, 2 if n_phases is None else n_phases, max_distance=max_distance)
    array = _labels(labels, "image")
    n = int(n_phases) if n_phases is not None else int(array.max()) + 1
    _check_phases(array, n, "image")
    max_distance = st._check_max_distance(max_distance, array.shape)
    voxel = units.per_axis(voxel_size, array.ndim)
    s = _statistics(array, n, max_distance, voxel)
    chords = [_chord_summary(s["chords"][a], voxel.sides[a] if voxel else None) for a in range(array.ndim)]
    physical = {}
    if voxel is not None:
        per_axis = st.axis_distances(max_distance, array.ndim, voxel)
        physical = {**voxel.to_json(), "distance_per_axis": per_axis.tolist()}
        if voxel.isotropic:
            physical["distance"] = per_axis[0].tolist()
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
        **physical,
    }


def _length_unit(d: dict) -> str:
    return (d.get("unit") or "length units") if d.get("voxel_size") else "px"


def format_description(d: dict) -> str:
    """A readable text table of ``describe``'s dict (of either kind)."""
    if d.get("kind") == "grayscale":
        return format_grayscale_description(d)
    shape = " x ".join(map(str, d["shape"]))
    lines = [
        f"image {shape} ({d['ndim']}D), {d['n_phases']} phases, profiles up to {d['max_distance']} px, "
        f"interface density {d['specific_surface_total']:.4f} "
        + ("faces/px" if not d.get("voxel_size") else f"per {_length_unit(d)} (area per volume)")
        + (f", voxel size {'x'.join(f'{v:g}' for v in d['voxel_size'])} {_length_unit(d)}"
           if d.get("voxel_size") else ""),
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
    surface = "boundary faces per pixel" if not d.get("voxel_size") else f"interface per volume (1/{_length_unit(d)})"
    lines.append(f"surface: {surface}; cluster: fraction of the phase in its largest face-connected "
                 f"cluster (non-periodic); chord: mean periodic chord length ({_length_unit(d)}) along each axis; "
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


def compare(exemplar, reconstructions, *, names: Sequence[str] | None = None, max_distance: int | None = None,
            grayscale: bool = False, n_phases: int | None = None, voxel_size=None) -> dict:
    """Compare reconstructions with their exemplar (label images; with ``grayscale=True`` intensity images, see
    ``compare_grayscale``, ``n_phases`` the phases of its segmentation).

    Args:
        exemplar: ``(*spatial)`` label image, 2D or 3D.
        reconstructions: a label image or a sequence of them; 2D or 3D (3D allowed for a 2D exemplar), any sizes.
        names: one name per reconstruction (default ``reconstruction_0``, ...), reported as ``file``.
        max_distance: cut-off of the profiles; default half the smallest side of the smallest image.
        voxel_size: the voxel size of all the images (see ``describe``): surfaces and chord lengths in that unit.

    Returns:
        JSON-ready dict with ``exemplar`` (``describe`` of the exemplar up to the cut-off), ``max_distance``,
        ``baseline`` (``sum_i f_i^2`` of the exemplar) and ``reconstructions``: one dict each with ``file``,
        ``shape``, ``volume_fractions``, ``volume_fraction_error`` (largest absolute error over phases),
        ``s2_max_abs_error`` and ``lineal_path_max_abs_error`` (over phases, axes, distances 0..R) with their
        ``..._per_axis`` lists, ``specific_surface`` (n), ``specific_surface_relative_error`` (n; a volume from
        a 2D exemplar against 3/2 of the exemplar's: an isotropic structure has as many faces along each of the
        three axes as along each of the two in a plane section),
        ``chord_length_mean`` (n), ``copy_agreement``, ``copy_baseline`` (``sum_i f_i g_i``), ``copy_excess``
        (``(agreement - baseline) / (1 - baseline)``: 0 independent, 1 a moved copy), ``likely_copy`` and
        ``largest_cluster_fraction`` (n, in the reconstruction's own dimension: 3D for a volume); for a 3D
        reconstruction of a 2D exemplar also ``largest_cluster_fraction_slices`` (3 x n: the 2D value of its
        slices normal to each axis, averaged). ``exemplar_largest_cluster_fraction_same_size`` (n): the
        exemplar's value averaged over tiles of the reconstruction's size (of its slices for a volume from a 2D
        exemplar), the like-for-like reference, since the fraction falls as the window grows; ``..._range``
        (2 x n): its smallest and largest value over those tiles, how much a piece of the exemplar varies.

    Raises:
        InputError: a 3D exemplar with a 2D reconstruction, a different number of phases (also than
            ``n_phases``, when given), an empty phase, a bad cut-off, or names that do not match the reconstructions.
    """
    if grayscale:
        return compare_grayscale(exemplar, reconstructions, names=names, max_distance=max_distance,
                                 n_phases=2 if n_phases is None else n_phases)
    ex = _labels(exemplar, "exemplar")
    recs, names = _named(reconstructions, names)
    n = int(ex.max()) + 1
    if n_phases is not None and int(n_phases) != n:
        raise InputError(f"the exemplar has {n} phases, not n_phases={n_phases}")
    _check_phases(ex, n, "exemplar")
    arrays = []
    for name, rec in zip(names, recs):
        array = _labels(rec, name)
        if array.ndim < ex.ndim:
            raise InputError(f"{name} is 2D but the exemplar is 3D; a 2D image cannot be compared with a 3D exemplar")
        _check_phases(array, n, name)
        arrays.append(array)
    return _compare_labels(ex, arrays, names, n, _cut_off(max_distance, [ex, *arrays]), voxel_size)


def _named(reconstructions, names) -> tuple[list, list[str]]:
    recs = _as_list(reconstructions)
    if not recs:
        raise InputError("no reconstructions to compare")
    names = [f"reconstruction_{k}" for k in range(len(recs))] if names is None else [str(n) for n in names]
    if len(names) != len(recs):
        raise InputError(f"{len(names)} names for {len(recs)} reconstructions")
    return recs, names


def _cut_off(max_distance, arrays) -> int:
    """The profiles' cut-off: ``max_distance`` checked, by default half the smallest side of the smallest image."""
    limit = min(min(a.shape) for a in arrays) // 2
    if max_distance is None:
        return limit
    if not 0 <= int(max_distance) <= limit:
        raise InputError(f"max_distance={max_distance} must lie between 0 and {limit} "
                         "(half the smallest side of the smallest image)")
    return int(max_distance)


def _compare_labels(ex: np.ndarray, arrays: list[np.ndarray], names: list[str], n: int, max_distance: int,
                    voxel_size=None) -> dict:
    """``compare``'s dict for checked label images (a reconstruction's phase may be empty)."""
    summary = describe(ex, n, max_distance=max_distance, voxel_size=voxel_size)
    ex_fractions = np.asarray(summary["volume_fractions"])
    ex_s2 = np.asarray(summary["s2_per_axis"])
    ex_path = np.asarray(summary["lineal_path_per_axis"])
    ex_surface = np.asarray(summary["specific_surface"])
    baseline = float(np.sum(ex_fractions**2))
    results = []
    for name, array in zip(names, arrays):
        voxel = units.per_axis(voxel_size, array.ndim)
        s = _statistics(array, n, max_distance, voxel)
        if array.ndim == ex.ndim:
            target_s2, target_path, target_surface = ex_s2, ex_path, ex_surface
            copy = float(st.copy_agreement(ex, array, n))
        else:  # 3D reconstruction of a 2D exemplar: every axis against the exemplar's in-plane mean
            target_s2 = np.repeat(ex_s2.mean(0, keepdims=True), 3, axis=0)
            target_path = np.repeat(ex_path.mean(0, keepdims=True), 3, axis=0)
            target_surface = ex_surface * 3 / 2  # faces along three axes, each as many as along one in the plane
            copy = max(float(st.copy_agreement(ex, piece, n)) for piece in _middle_slices(array))
        s2_error = np.abs(s["s2"] - target_s2).max(axis=(1, 2))
        path_error = np.abs(s["lineal_path"] - target_path).max(axis=(1, 2))
        rec_baseline = float(np.sum(ex_fractions * s["fractions"]))
        excess = (copy - rec_baseline) / max(1.0 - rec_baseline, 1e-12)
        chords = [_chord_summary(s["chords"][a], voxel.sides[a] if voxel else None)["mean"]
                  for a in range(array.ndim)]
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
            "specific_surface_relative_error": ((s["surface"] - target_surface) / target_surface).tolist(),
            "chord_length_mean": np.mean(chords, axis=0).tolist(),
            "one_pixel_chord_fraction": one_pixel_chord_fraction(s["chords"]).tolist(),
            "copy_agreement": copy,
            "copy_baseline": rec_baseline,
            "copy_excess": float(excess),
            "likely_copy": bool(excess >= LIKELY_COPY_EXCESS),
            "largest_cluster_fraction": st.largest_cluster_fraction(array, n).tolist(),
        }
        tiles = st.largest_cluster_fraction_tiles(ex, array.shape if array.ndim == ex.ndim else array.shape[1:], n,
                                                  spread=True)
        result["exemplar_largest_cluster_fraction_same_size"] = tiles[0].tolist()
        result["exemplar_largest_cluster_fraction_same_size_range"] = tiles[1:].tolist()
        if array.ndim > ex.ndim:
            result["largest_cluster_fraction_slices"] = st.largest_cluster_fraction_slices(array, n).tolist()
        results.append(result)
    output = {"exemplar": summary, "max_distance": max_distance, "baseline": baseline, "reconstructions": results}
    if voxel_size is not None:
        output.update(units.parse_voxel_size(voxel_size).to_json())
    return output


def _per_phase(values) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def format_comparison(d: dict) -> str:
    """A text table of ``compare``'s dict (of either kind): one row per reconstruction, then the largest-cluster
    fractions."""
    if d.get("kind") == "grayscale":
        return format_grayscale_comparison(d)
    ex = d["exemplar"]
    fractions = " / ".join(f"{f:.3f}" for f in ex["volume_fractions"])
    lines = [
        f"exemplar {' x '.join(map(str, ex['shape']))}, {ex['n_phases']} phases, fractions {fractions}; "
        f"profiles compared up to {d['max_distance']} px; independent-structure agreement {d['baseline']:.3f}",
        "",
        f"{'file':<24} {'shape':>13} {'|dVf|':>7} {'|dS2|':>7} {'|dL|':>7} {'|dS|/S':>7} {'|d1px|':>7} {'copy':>6} "
        f"{'base':>6}  note",
    ]
    for r in d["reconstructions"]:
        shape = "x".join(map(str, r["shape"]))
        note = "LIKELY A COPY of the exemplar" if r["likely_copy"] else ""
        surface = np.max(np.abs(r["specific_surface_relative_error"]))
        one_pixel = np.max(np.abs(np.subtract(r["one_pixel_chord_fraction"], ex["one_pixel_chord_fraction"])))
        lines.append(
            f"{r['file'][:24]:<24} {shape:>13} {r['volume_fraction_error']:>7.4f} {r['s2_max_abs_error']:>7.4f} "
            f"{r['lineal_path_max_abs_error']:>7.4f} {surface:>7.4f} {one_pixel:>7.4f} {r['copy_agreement']:>6.3f} "
            f"{r['copy_baseline']:>6.3f}  {note}"
        )
    lines += _cluster_lines(ex, d["reconstructions"])
    lines.append("")
    lines.append("|dVf|, |dS2|, |dL|: largest absolute error of volume fraction, S2 and lineal path over phases, axes "
                 "and distances; |dS|/S: largest relative error of a phase's specific surface; |d1px|: largest "
                 "difference of a phase's share of one-pixel chords; copy: best pixel agreement over "
                 "shifts/flips/transposes; base: that of independent structures")
    return "\n".join(lines)


def _cluster_lines(ex: dict, reconstructions: list[dict]) -> list[str]:
    lines = ["", "largest-cluster fraction of each phase (phases separated by /; face-connected, non-periodic):",
             f"  {'exemplar':<24} {ex['ndim']}D {_per_phase(ex['largest_cluster_fraction'])}"]
    for r in reconstructions:
        row = f"  {r['file'][:24]:<24} {len(r['shape'])}D {_per_phase(r['largest_cluster_fraction'])}"
        if "largest_cluster_fraction_slices" in r:
            row += "   2D slices, mean per axis: " + "  ".join(
                f"ax{a} {_per_phase(v)}" for a, v in enumerate(r["largest_cluster_fraction_slices"]))
        low, high = r["exemplar_largest_cluster_fraction_same_size_range"]
        row += (f"   exemplar at this size: {_per_phase(r['exemplar_largest_cluster_fraction_same_size'])} (its pieces "
                + "/".join(f"{a:.2f}-{b:.2f}" for a, b in zip(low, high)) + ")")
        lines.append(row)
    return lines


# ----------------------------------------------------------------------------------------------------------
# grayscale


def _gray(image, name: str) -> np.ndarray:
    """A checked float64 intensity image in 0..1 (uint8 / uint16 scaled by their full range)."""
    array = _checked(image, name, "grayscale", st._intensity_array)
    if array.min() == array.max():
        raise InputError(f"{name} holds a single intensity ({array.flat[0]:g}): it has no texture to describe")
    return array


def _segmentation(thresholds: np.ndarray) -> dict:
    return {"method": f"multi-level Otsu on a {st.HISTOGRAM_BINS}-bin histogram of the exemplar's intensities "
                      "(0..1), the same thresholds applied to every image",
            "n_phases": len(thresholds) + 1, "order": "dark to bright", "thresholds": thresholds.tolist()}


def _intensity_summary(gray: np.ndarray, max_distance: int) -> dict:
    profiles = st.autocovariance_profiles(gray, max_distance=max_distance)
    per_axis = np.asarray(profiles.per_axis, np.float64)
    radial = np.asarray(profiles.radial, np.float64)
    return {
        "intensity_mean": float(gray.mean()),
        "intensity_std": float(gray.std()),
        "intensity_range": [float(gray.min()), float(gray.max())],
        "autocovariance_per_axis": per_axis.tolist(),
        "autocovariance_radial": radial.tolist(),
        "correlation_length_per_axis": [st.correlation_length(p) for p in per_axis],
        "correlation_length": st.correlation_length(radial),
    }


def _describe_intensities(gray: np.ndarray, thresholds: np.ndarray, max_distance: int, phases: dict) -> dict:
    histogram = st.intensity_histogram(gray)
    return {
        "kind": "grayscale",
        "shape": list(gray.shape),
        "ndim": gray.ndim,
        **_intensity_summary(gray, max_distance),
        "histogram_bins": st.HISTOGRAM_BINS,
        "intensity_bin_centres": ((np.arange(histogram.size) + 0.5) / histogram.size).tolist(),
        "intensity_histogram": histogram.tolist(),
        "max_distance": max_distance,
        "distance": list(range(max_distance + 1)),
        "segmentation": _segmentation(thresholds),
        "phases": phases,
    }


def describe_grayscale(gray, n_phases: int = 2, *, max_distance: int | None = None) -> dict:
    """Statistics of one intensity image as a JSON-ready dict.

    ``gray``: intensities in 0..1 (uint8 / uint16 are divided by 255 / 65535), 2D or 3D. Keys: ``kind``
    (``"grayscale"``), ``shape``, ``ndim``, ``intensity_mean``, ``intensity_std``, ``intensity_range``,
    ``autocovariance_per_axis`` (ndim x (R+1), normalised: 1 at r = 0), ``autocovariance_radial`` (R+1),
    ``correlation_length_per_axis`` / ``correlation_length`` (px where it falls to 1/e; null if it does not),
    ``histogram_bins``, ``intensity_bin_centres`` and ``intensity_histogram`` (fractions of pixels),
    ``max_distance``, ``distance``, ``segmentation`` (``method``, ``n_phases``, ``order``, ``thresholds``: the
    multi-Otsu cuts in 0..1) and ``phases``: ``describe`` of the segmented labels.
    """
    array = _gray(gray, "image")
    max_distance = st._check_max_distance(max_distance, array.shape)
    thresholds = st.otsu_thresholds(array, n_phases)
    labels = st.segment_intensities(array, thresholds)
    return _describe_intensities(array, thresholds, max_distance, describe(labels, len(thresholds) + 1,
                                                                           max_distance=max_distance))


def _crop_corners(shape, crop) -> list[tuple[int, ...]]:
    """The distinct corners of the windows of ``crop`` shape at the corners of an image of ``shape``."""
    return sorted(set(itertools.product(*[(0, s - c) for s, c in zip(shape, crop)])))


def _crop_reference(ex: np.ndarray, crop: tuple[int, ...], ex_covariance: np.ndarray, max_distance: int) -> dict:
    """The intensity measures of the exemplar's corner windows of a reconstruction's size against the whole
    exemplar: what an honest sample of the same size scores."""
    corners = _crop_corners(ex.shape, crop)
    distances, errors = [], []
    for corner in corners:
        window = ex[tuple(slice(c, c + s) for c, s in zip(corner, crop))]
        distances.append(st.intensity_wasserstein_distance(window, ex))
        covariance = np.asarray(st.autocovariance_profiles(window, max_distance=max_distance).per_axis)
        errors.append(float(np.abs(covariance - ex_covariance).max()))
    return {"shape": list(crop), "corners": [list(c) for c in corners],
            "intensity_histogram_distance": distances, "autocovariance_max_abs_error": errors}


def compare_grayscale(exemplar, reconstructions, *, names: Sequence[str] | None = None,
                      max_distance: int | None = None, n_phases: int = 2) -> dict:
    """Compare intensity reconstructions with their intensity exemplar.

    The exemplar is segmented into ``n_phases`` phases by multi-level Otsu thresholds and the same thresholds cut
    every reconstruction, so the phase statistics compare like with like (a reconstruction's phase may come out
    empty). Rules as for ``compare`` (cut-off, axes, 3D reconstructions of a 2D exemplar, middle slices for the
    copy check).

    Args:
        exemplar: ``(*spatial)`` intensities in 0..1 (uint8 / uint16 scaled), 2D or 3D.
        reconstructions: an intensity image or a sequence of them (e.g. ``ReconstructionResult.labels``, uint8).
        names: as for ``compare``.
        max_distance: as for ``compare``.
        n_phases: phases of the segmentation (2..16).

    Returns:
        JSON-ready dict: ``kind`` (``"grayscale"``), ``exemplar`` (``describe_grayscale``), ``max_distance``,
        ``segmentation``, ``baseline`` (``sum_i f_i^2`` of the segmented exemplar) and ``reconstructions``, one
        dict each: ``file``, ``shape``, ``intensity_mean``, ``intensity_std``, ``intensity_range``,
        ``intensity_mean_error``, ``intensity_std_error`` (signed), ``intensity_histogram_distance`` (Wasserstein-1
        to the exemplar's intensities, in 0..1 units), ``autocovariance_per_axis`` / ``_radial``,
        ``correlation_length``, ``autocovariance_max_abs_error`` (over axes and distances 0..R; the counterpart
        of the S2 error) with ``..._per_axis``, ``copy_correlation`` (best normalised correlation over shifts
        and symmetries), ``copy_baseline`` (``copy_correlation_baseline``), ``copy_excess``, ``likely_copy``,
        ``exemplar_crops`` (for a smaller image of the exemplar's dimension: the histogram distance and
        autocovariance error of the exemplar's corner windows of this size against the whole exemplar; else
        null), and ``phases``: ``compare``'s entry for the segmented images.

    Raises:
        InputError: values outside 0..1, a constant image, a 3D exemplar with a 2D reconstruction, a bad
            cut-off, names that do not match, or an exemplar with fewer intensity levels than ``n_phases``.
    """
    ex = _gray(exemplar, "exemplar")
    recs, names = _named(reconstructions, names)
    arrays = []
    for name, rec in zip(names, recs):
        array = _gray(rec, name)
        if array.ndim < ex.ndim:
            raise InputError(f"{name} is 2D but the exemplar is 3D; a 2D image cannot be compared with a 3D exemplar")
        arrays.append(array)
    max_distance = _cut_off(max_distance, [ex, *arrays])
    thresholds = st.otsu_thresholds(ex, n_phases)
    n = len(thresholds) + 1
    phases = _compare_labels(st.segment_intensities(ex, thresholds),
                             [st.segment_intensities(a, thresholds) for a in arrays], names, n, max_distance)
    summary = _describe_intensities(ex, thresholds, max_distance, phases["exemplar"])
    ex_covariance = np.asarray(summary["autocovariance_per_axis"])
    crops: dict[tuple[int, ...], dict] = {}
    results = []
    for name, array, phase_entry in zip(names, arrays, phases["reconstructions"]):
        own = _intensity_summary(array, max_distance)
        if array.ndim == ex.ndim:
            target = ex_covariance
            copy = float(st.copy_correlation(ex, array))
            baseline = st.copy_correlation_baseline(ex, array)
        else:  # 3D reconstruction of a 2D exemplar: every axis against the exemplar's in-plane mean
            target = np.repeat(ex_covariance.mean(0, keepdims=True), 3, axis=0)
            pieces = _middle_slices(array)
            copy = max(float(st.copy_correlation(ex, piece)) for piece in pieces)
            baseline = max(st.copy_correlation_baseline(ex, piece) for piece in pieces)
        error = np.abs(np.asarray(own["autocovariance_per_axis"]) - target).max(axis=1)
        excess = (copy - baseline) / max(1.0 - baseline, 1e-12)
        fits = array.ndim == ex.ndim and array.shape != ex.shape and all(
            r <= e for r, e in zip(array.shape, ex.shape))
        if fits and array.shape not in crops:
            crops[array.shape] = _crop_reference(ex, array.shape, ex_covariance, max_distance)
        results.append({
            "file": name,
            "shape": list(array.shape),
            **own,
            "intensity_mean_error": own["intensity_mean"] - summary["intensity_mean"],
            "intensity_std_error": own["intensity_std"] - summary["intensity_std"],
            "intensity_histogram_distance": st.intensity_wasserstein_distance(array, ex),
            "autocovariance_max_abs_error": float(error.max()),
            "autocovariance_max_abs_error_per_axis": error.tolist(),
            "copy_correlation": copy,
            "copy_baseline": baseline,
            "copy_excess": float(excess),
            "likely_copy": bool(excess >= LIKELY_COPY_EXCESS),
            "exemplar_crops": crops.get(array.shape) if fits else None,
            "phases": {k: v for k, v in phase_entry.items() if k not in ("file", "shape")},
        })
    return {"kind": "grayscale", "exemplar": summary, "max_distance": max_distance,
            "segmentation": summary["segmentation"], "baseline": phases["baseline"], "reconstructions": results}


def _number(value, spec: str) -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def format_grayscale_description(d: dict) -> str:
    """A readable text table of ``describe_grayscale``'s dict."""
    shape = " x ".join(map(str, d["shape"]))
    thresholds = ", ".join(f"{t:.3f}" for t in d["segmentation"]["thresholds"])
    lengths = "  ".join(f"ax{a} {_number(v, '.2f')}" for a, v in enumerate(d["correlation_length_per_axis"]))
    quarter = d["max_distance"] // 4
    lines = [
        f"grayscale image {shape} ({d['ndim']}D): intensity mean {d['intensity_mean']:.4f}, std "
        f"{d['intensity_std']:.4f}, range {d['intensity_range'][0]:.3f}..{d['intensity_range'][1]:.3f}",
        f"normalised autocovariance: correlation length (1/e) {_number(d['correlation_length'], '.2f')} px radial, "
        f"{lengths}; at r = {quarter} px: "
        + "  ".join(f"ax{a} {p[quarter]:.4f}" for a, p in enumerate(d["autocovariance_per_axis"])),
        f"segmented into {d['segmentation']['n_phases']} phases (multi-Otsu, dark to bright) at {thresholds}:",
        "",
        format_description(d["phases"]),
    ]
    return "\n".join(lines)


def format_grayscale_comparison(d: dict) -> str:
    """A text table of ``compare_grayscale``'s dict: intensity measures, the segmented phases' measures, the
    exemplar's own corner windows for scale, then the largest-cluster fractions."""
    ex = d["exemplar"]
    phases = ex["phases"]
    thresholds = ", ".join(f"{t:.3f}" for t in d["segmentation"]["thresholds"])
    lines = [
        f"grayscale exemplar {' x '.join(map(str, ex['shape']))}: intensity mean {ex['intensity_mean']:.4f}, std "
        f"{ex['intensity_std']:.4f}, correlation length {_number(ex['correlation_length'], '.2f')} px; "
        f"profiles compared up to {d['max_distance']} px",
        f"segmented at {thresholds} (multi-Otsu of the exemplar) into {phases['n_phases']} phases, fractions "
        + " / ".join(f"{f:.3f}" for f in phases["volume_fractions"]),
        "",
        f"{'file':<24} {'shape':>11} {'|dHist|':>8} {'|dC|':>7} {'copy r':>7} {'base':>6}  "
        f"{'|dVf|':>7} {'|dS2|':>7} {'|dL|':>7}  note",
    ]
    for r in d["reconstructions"]:
        p = r["phases"]
        note = "LIKELY A COPY of the exemplar" if r["likely_copy"] else ""
        lines.append(
            f"{r['file'][:24]:<24} {'x'.join(map(str, r['shape'])):>11} {r['intensity_histogram_distance']:>8.4f} "
            f"{r['autocovariance_max_abs_error']:>7.4f} {r['copy_correlation']:>7.3f} {r['copy_baseline']:>6.3f}  "
            f"{p['volume_fraction_error']:>7.4f} {p['s2_max_abs_error']:>7.4f} {p['lineal_path_max_abs_error']:>7.4f}"
            f"  {note}")
    seen = set()
    for r in d["reconstructions"]:
        crops = r["exemplar_crops"]
        if crops and tuple(crops["shape"]) not in seen:
            seen.add(tuple(crops["shape"]))
            lines.append(
                f"{'exemplar corner windows':<24} {'x'.join(map(str, crops['shape'])):>11} "
                f"{min(crops['intensity_histogram_distance']):.4f}-{max(crops['intensity_histogram_distance']):.4f}"
                f" {min(crops['autocovariance_max_abs_error']):.4f}-{max(crops['autocovariance_max_abs_error']):.4f}"
                f"   ({len(crops['corners'])} windows against the whole exemplar, for scale)")
    lines += _cluster_lines(phases, [{"file": r["file"], "shape": r["shape"], **r["phases"]}
                                     for r in d["reconstructions"]])
    lines.append("")
    lines.append("|dHist|: Wasserstein-1 distance of the intensity distributions (0..1 units); |dC|: largest absolute "
                 "error of the normalised intensity autocovariance over axes and distances; copy r: best normalised "
                 "correlation over shifts/flips/transposes; base: that of an independent field with the same "
                 "autocovariance; |dVf|, |dS2|, |dL|: the segmented phases' volume fraction, S2 and lineal path errors")
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


def _show_image(ax, labels: np.ndarray, n_phases: int | None, title: str) -> None:
    """A label image (viridis, one colour per phase) or, with ``n_phases=None``, intensities (gray, 0..1)."""
    image = labels if labels.ndim == 2 else labels[labels.shape[0] // 2]
    if n_phases is None:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, cmap="viridis", vmin=0, vmax=max(n_phases - 1, 1), interpolation="nearest")
    ax.set_title(title + (" (middle slice)" if labels.ndim == 3 else ""), fontsize=9)
    ax.set_axis_off()


def _chord_probability(counts: np.ndarray, max_distance: int) -> np.ndarray:
    """``(n, R + 1)`` number-weighted chord-length probability, summed over axes, lengths up to R (longer clipped)."""
    total = counts.sum(0)  # (n, L + 1)
    clipped = total[:, : max_distance + 1].astype(np.float64).copy()
    clipped[:, -1] += total[:, max_distance + 1 :].sum(-1)
    return clipped / np.maximum(clipped.sum(-1, keepdims=True), 1)


def _band_panel(ax, title: str, reference: np.ndarray, values: list[np.ndarray], label: str = "exemplar", *,
                x: np.ndarray | None = None, xlabel: str = "distance (pixels)", series: str = "phase {i}") -> None:
    """The exemplar's ``(n, R + 1)`` profile of each phase (``series``) against the reconstructions' (mean,
    min-max band)."""
    distance = np.arange(reference.shape[-1]) if x is None else x
    for i in range(reference.shape[0]):
        name = series.format(i=i)
        ax.plot(distance, reference[i], color=f"C{i}", lw=2, label=f"{label} {name}".strip())
        if values:
            stacked = np.stack([v[i] for v in values])
            ax.plot(distance, stacked.mean(0), color=f"C{i}", ls="--", lw=1.2,
                    label=f"reconstructions {name} (mean, min-max)".replace("  ", " "))
            ax.fill_between(distance, stacked.min(0), stacked.max(0), color=f"C{i}", alpha=0.2, lw=0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)


_PROFILES = {
    "s2": ("two-point correlation S2 (mean over axes)", lambda s, r: s["s2"].mean(0).T),
    "lineal_path": ("lineal path L (mean over axes)", lambda s, r: s["lineal_path"].mean(0).T),
    "chords": ("chord-length probability", lambda s, r: _chord_probability(s["chords"], r)),
}


def _profile_panels(axes, ex_stats: dict, rec_stats: list[dict], max_distance: int,
                    kinds: Sequence[str] = ("s2", "lineal_path", "chords"), voxel=None) -> None:
    x, xlabel = _distance_axis(max_distance, voxel)
    for ax, kind in zip(axes, kinds):
        title, get = _PROFILES[kind]
        _band_panel(ax, title, get(ex_stats, max_distance), [get(s, max_distance) for s in rec_stats], x=x,
                    xlabel=xlabel)
    axes[0].legend(fontsize=7)


def _distance_axis(max_distance: int, voxel) -> tuple[np.ndarray, str]:
    """The distances ``0..R`` of profiles averaged over axes and their label: physical with cubic voxels."""
    voxel = units.parse_voxel_size(voxel)
    r = np.arange(max_distance + 1)
    if voxel is None or not voxel.isotropic:
        return r, "distance (pixels)"
    return r * voxel.sides[0], f"distance ({units.unit_label(voxel)})"


def comparison_figure(exemplar, reconstructions, path, *, names: Sequence[str] | None = None,
                      max_distance: int | None = None, grayscale: bool = False, n_phases: int | None = None,
                      voxel_size=None) -> Path:
    """Write a PNG comparing reconstructions with their exemplar. Written atomically; returns the path.

    2D reconstructions: the exemplar (middle slice for 3D) and up to 4 reconstructions, then S2, lineal path and
    chord-length distributions of the exemplar against the reconstructions (mean and min-max band over all).
    With 3D reconstructions: the exemplar and the three orthogonal middle slices of the first volume; S2 along
    each axis of the volumes against the exemplar's (its in-plane mean for a 2D exemplar, the same axis for a
    3D one); then lineal path and chord-length distributions as for 2D. Same validation and cut-off as ``compare``.

    ``grayscale=True``: intensity images in the same layout, the panels being the intensity histogram (with the
    exemplar's multi-Otsu thresholds into ``n_phases``, default 2), the normalised autocovariance (per axis for
    volumes) and S2 of the segmented phases.

    ``voxel_size`` (cubic voxels): distances on the axes in its unit (unequal sides keep pixels).
    """
    if grayscale:
        return _grayscale_comparison_figure(exemplar, reconstructions, path, names, max_distance,
                                            2 if n_phases is None else n_phases)
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

    def band(ax, a, volumes):
        reference = ex_stats["s2"].mean(0).T if ex.ndim == 2 else ex_stats["s2"][a].T
        x, xlabel = _distance_axis(max_distance, voxel_size)
        _band_panel(ax, f"S2 along axis {a} (3D reconstructions)", reference,
                    [rec_stats[k]["s2"][a].T for k in volumes],
                    "exemplar (in-plane mean)" if ex.ndim == 2 else "exemplar", x=x, xlabel=xlabel)

    return _comparison_layout(
        ex, recs, names, n, path, band,
        lambda axes: _profile_panels(axes, ex_stats, rec_stats, max_distance, voxel=voxel_size),
        lambda axes: _profile_panels(axes, ex_stats, rec_stats, max_distance, ("lineal_path", "chords"),
                                     voxel=voxel_size))


def _comparison_layout(ex, recs, names, n, path, band: Callable, panels_2d: Callable, panels_3d: Callable) -> Path:
    """The comparison figure's layout, for phase and intensity images alike (``n`` None: intensities).

    2D: the exemplar and up to 4 reconstructions over ``panels_2d(3 axes)``. With volumes: the exemplar and the
    first volume's three middle slices, ``band(ax, axis, volume indices)`` for each axis, then ``panels_3d(2 axes)``.
    """
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
        panels_2d([figure.add_subplot(grid[1, edges[k] : edges[k + 1]]) for k in range(3)])
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
        ax = figure.add_subplot(grid[1, 4 * a : 4 * a + 4])
        band(ax, a, volumes)
        if a == 0:
            ax.legend(fontsize=7)
    panels_3d([figure.add_subplot(grid[2, 0:6]), figure.add_subplot(grid[2, 6:12])])
    return _save_atomically(figure, path)


def describe_figure(labels, path, *, max_distance: int | None = None, grayscale: bool = False,
                    n_phases: int | None = None, voxel_size=None) -> Path:
    """Write a PNG of one label image (middle slice for 3D) with its S2 and lineal path per axis and its
    chord-length probability; with ``grayscale=True`` of one intensity image with its histogram (and multi-Otsu
    thresholds into ``n_phases``, default 2), normalised autocovariance per axis and radial, and the S2 of the
    segmented phases. Written atomically; returns the path. ``voxel_size``: distances along each axis in its
    unit (S2 and lineal path per axis; the chord panel with cubic voxels only)."""
    if grayscale:
        return _grayscale_describe_figure(labels, path, max_distance, 2 if n_phases is None else n_phases)
    array = _labels(labels, "image")
    n = int(array.max()) + 1
    _check_phases(array, n, "image")
    max_distance = st._check_max_distance(max_distance, array.shape)
    s = _statistics(array, n, max_distance)
    figure = _new_figure(14, 3.4)
    axes = figure.subplots(1, 4)
    _show_image(axes[0], array, n, "image")
    voxel = units.per_axis(voxel_size, array.ndim)
    per_axis = st.axis_distances(max_distance, array.ndim, voxel)
    distance, chord_label = _distance_axis(max_distance, voxel)
    styles = ["-", "--", ":"]
    for i in range(n):
        for a in range(array.ndim):
            axes[1].plot(per_axis[a], s["s2"][a, :, i], color=f"C{i}", ls=styles[a], label=f"phase {i}, axis {a}")
            axes[2].plot(per_axis[a], s["lineal_path"][a, :, i], color=f"C{i}", ls=styles[a])
        axes[3].plot(distance, _chord_probability(s["chords"], max_distance)[i], color=f"C{i}", label=f"phase {i}")
    labels = [f"distance ({units.unit_label(voxel)})"] * 2 + [chord_label]
    for ax, title, xlabel in zip(axes[1:], ["two-point correlation S2", "lineal path L", "chord-length probability"],
                                 labels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
    axes[1].legend(fontsize=7)
    return _save_atomically(figure, path)


FIGURE_BINS = 64
"""Intensity bins of the histogram panels (coarser than the 256 of the statistics, so that 128x128 images are
not drawn as noise)."""


def _gray_figure_statistics(gray: np.ndarray, thresholds: np.ndarray, max_distance: int) -> dict:
    labels = st.segment_intensities(gray, thresholds)
    profiles = st.two_point_profiles(labels, max_distance=max_distance, n_phases=len(thresholds) + 1)
    histogram = np.bincount(st._intensity_bins(gray, FIGURE_BINS).ravel(), minlength=FIGURE_BINS) / gray.size
    return {"histogram": histogram[None] * FIGURE_BINS,  # a probability density on 0..1
            "autocovariance": np.asarray(st.autocovariance_profiles(gray, max_distance=max_distance).per_axis),
            "s2": np.asarray(profiles.per_axis, np.float64)}


def _gray_panels(axes, ex_stats: dict, rec_stats: list[dict], thresholds: np.ndarray, kinds: Sequence[str]) -> None:
    """The bottom panels of a grayscale figure: intensity histogram, autocovariance (mean over axes), S2 of the
    segmented phases (mean over axes)."""
    for ax, kind in zip(axes, kinds):
        if kind == "histogram":
            centres = (np.arange(FIGURE_BINS) + 0.5) / FIGURE_BINS
            _band_panel(ax, "intensity histogram (dotted: thresholds)", ex_stats["histogram"],
                        [s["histogram"] for s in rec_stats], x=centres, xlabel="intensity", series="")
            for threshold in thresholds:
                ax.axvline(threshold, color="0.4", ls=":", lw=1)
            ax.set_yscale("log", nonpositive="mask")  # micrographs: peaks orders of magnitude above the tails
            ax.set_ylabel("probability density (log)")
        elif kind == "autocovariance":
            _band_panel(ax, "intensity autocovariance (mean over axes)",
                        ex_stats["autocovariance"].mean(0)[None],
                        [s["autocovariance"].mean(0)[None] for s in rec_stats], series="")
            ax.axhline(0, color="0.6", lw=0.8)
        else:
            _band_panel(ax, "S2 of segmented phases (mean over axes)", ex_stats["s2"].mean(0).T,
                        [s["s2"].mean(0).T for s in rec_stats])
        ax.legend(fontsize=7)


def _grayscale_comparison_figure(exemplar, reconstructions, path, names, max_distance, n_phases: int) -> Path:
    ex = _gray(exemplar, "exemplar")
    recs, names = _named(reconstructions, names)
    recs = [_gray(r, name) for r, name in zip(recs, names)]
    for name, r in zip(names, recs):
        if r.ndim < ex.ndim:
            raise InputError(f"{name} is 2D but the exemplar is 3D")
    max_distance = _cut_off(max_distance, [ex, *recs])
    thresholds = st.otsu_thresholds(ex, n_phases)
    ex_stats = _gray_figure_statistics(ex, thresholds, max_distance)
    rec_stats = [_gray_figure_statistics(r, thresholds, max_distance) for r in recs]

    def band(ax, a, volumes):
        own = ex_stats["autocovariance"]
        reference = own.mean(0) if ex.ndim == 2 else own[a]
        _band_panel(ax, f"intensity autocovariance along axis {a} (3D reconstructions)", reference[None],
                    [rec_stats[k]["autocovariance"][a][None] for k in volumes],
                    "exemplar (in-plane mean)" if ex.ndim == 2 else "exemplar", series="")

    return _comparison_layout(
        ex, recs, names, None, path, band,
        lambda axes: _gray_panels(axes, ex_stats, rec_stats, thresholds, ("histogram", "autocovariance", "s2")),
        lambda axes: _gray_panels(axes, ex_stats, rec_stats, thresholds, ("histogram", "s2")))


def _grayscale_describe_figure(gray, path, max_distance, n_phases: int) -> Path:
    array = _gray(gray, "image")
    max_distance = st._check_max_distance(max_distance, array.shape)
    thresholds = st.otsu_thresholds(array, n_phases)
    s = _gray_figure_statistics(array, thresholds, max_distance)
    radial = np.asarray(st.autocovariance_profiles(array, max_distance=max_distance).radial)
    figure = _new_figure(14, 3.4)
    axes = figure.subplots(1, 4)
    _show_image(axes[0], array, None, "image")
    _gray_panels(axes[1:2], s, [], thresholds, ("histogram",))
    distance = np.arange(max_distance + 1)
    styles = ["-", "--", ":"]
    for a in range(array.ndim):
        axes[2].plot(distance, s["autocovariance"][a], color="C0", ls=styles[a], label=f"axis {a}")
        for i in range(len(thresholds) + 1):
            axes[3].plot(distance, s["s2"][a, :, i], color=f"C{i}", ls=styles[a], label=f"phase {i}, axis {a}")
    axes[2].plot(distance, radial, color="C1", lw=1.5, label="radial")
    axes[2].axhline(0, color="0.6", lw=0.8)
    for ax, title in zip(axes[2:], ["normalised intensity autocovariance", "S2 of the segmented phases"]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("distance (pixels)")
        ax.legend(fontsize=7)
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
    name = next(iter(records[0]["achieved"]))
    tensor = isinstance(records[0]["achieved"][name], list)  # a whole-tensor target
    for column, k in enumerate(shown, 1):
        value = records[k]["achieved"][name]
        _show_image(figure.add_subplot(grid[0, column]), np.asarray(designs[k]), n, f"{records[k]['file']}\n"
                    + (f"{name} error {records[k]['relative_error'][name]:.2%}" if tensor else f"{name} = {value:.4g}"))
    half = columns // 2
    ax = figure.add_subplot(grid[1, :half])
    achieved = np.array([r["achieved"][name] for r in records])
    asked = [r["target"][name] for r in records]
    colours = ["C0" if r["reached"] else "C3" for r in records]
    if tensor:  # every component of every design against its target
        goal = np.asarray(asked, float)
        ax.plot([goal.min(), goal.max()], [goal.min(), goal.max()], color="0.6", lw=1, label="achieved = target")
        ax.scatter(goal.reshape(len(records), -1), achieved.reshape(len(records), -1), s=14,
                   c=np.repeat(colours, goal[0].size))
        ax.set_xlabel(f"target {name} components")
    elif all(isinstance(a, (int, float)) for a in asked):
        goal = np.asarray(asked, float)
        ax.plot([goal.min(), goal.max()], [goal.min(), goal.max()], color="0.6", lw=1, label="achieved = target")
        ax.scatter(goal, achieved, s=14, c=colours)
        ax.set_xlabel(f"target {name}")
    else:
        ax.scatter(np.arange(len(records)), achieved, s=14, c=colours)
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

"""Reading microstructure images (TIFF, PNG, NPY), validating them, and writing results atomically.

Reading turns a file into a `Microstructure`: either phase labels (int32, phases ``0..n-1``) or a grayscale
image (float32 in ``0..1``), together with a JSON-ready ``mapping`` that records how the values in the file
became phases or intensities. Every problem with an input file raises `jaxmicro.errors.InputError` with a
message that says what is wrong and how to fix it.

Writing (`atomic_write`, `atomic_write_path`, `write_labels_tiff`, `write_json`, `save_figure`) goes through a
temporary file in the destination folder that is flushed, ``fsync``-ed and then renamed over the destination
with `os.replace`, so a reader never sees a half-written file and a failure leaves nothing behind.

See docs/files.md for the user-facing description of all rules and messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import struct
import tempfile
import tokenize
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from jaxmicro.errors import InputError

__all__ = [
    "MAX_PHASES",
    "MIN_SIDE",
    "Microstructure",
    "atomic_write",
    "atomic_write_path",
    "check_min_size",
    "describe_mapping",
    "downsample",
    "parse_crop",
    "multi_otsu_thresholds",
    "parse_shape",
    "prepare_output_dir",
    "read_microstructure",
    "save_figure",
    "to_jsonable",
    "write_json",
    "write_labels_tiff",
]

MAX_PHASES = 16
"""Most distinct values an image may hold and still be read as a label image (one value per phase)."""

MIN_SIDE = 2
"""Smallest side `read_microstructure` itself accepts; callers check their own need with `check_min_size`."""

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights for R, G, B, used when ``gray_from_rgb=True``."""

_MODES = ("auto", "labels", "grayscale")
_OTSU_BINS = 256

_MAGIC = (
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\x93NUMPY", "npy"),
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
)
_KNOWN_OTHER_MAGIC = (
    (b"PK\x03\x04", "a ZIP archive (an .npz file?); save a single array with np.save(path, array) instead"),
    (b"\xff\xd8\xff", "a JPEG image; JPEG compression is lossy and blurs phase boundaries, save it as PNG or TIFF"),
    (b"GIF8", "a GIF image; convert it to PNG or TIFF"),
    (b"BM", "a BMP image; convert it to PNG or TIFF"),
)
_EXTENSIONS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".npy": "npy"}
_EXTENSIONS.update({".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"})
_FORMAT_NAMES = {"tiff": "TIFF", "png": "PNG", "npy": "NPY", "hdf5": "HDF5", "raw": "raw"}
_GRAYSCALE_HINT = (
    "If it is a grayscale micrograph, pass --grayscale (mode='grayscale') to use the intensities as they are, "
    "or --phases N (phases=N) to segment it into N phases by multi-level Otsu thresholding"
)
_RGB_HINT = "pass --gray-from-rgb (gray_from_rgb=True) to convert it to gray with the ITU-R BT.601 luminance"


# --------------------------------------------------------------------------------------------------------------
# The result of reading
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Microstructure:
    """A microstructure read from a file: phase labels or a grayscale image, and how it was obtained.

    Exactly one of ``labels`` (int32, values ``0..n_phases-1``) and ``gray`` (float32 in ``0..1``) is set.
    Arrays are 2D ``(rows, cols)`` or 3D ``(z, y, x)`` as stored in the file, and read-only.

    ``mapping`` is a JSON-ready dict saying how file values became phases or intensities, e.g.
    ``{"kind": "labels", "values": [0, 255], "phases": [0, 1], ...}``.
    """

    labels: np.ndarray | None
    gray: np.ndarray | None
    n_phases: int | None
    kind: str  # "labels" | "grayscale"
    source: str
    mapping: dict[str, Any]
    voxel_size: Any = None  # jaxmicro.units.VoxelSize (one side per axis) or None: pixels

    def __post_init__(self) -> None:
        if (self.labels is None) == (self.gray is None):
            raise ValueError("Microstructure needs exactly one of labels and gray")
        if self.kind == "labels":
            if self.labels is None or self.n_phases is None:
                raise ValueError("a 'labels' Microstructure needs labels and n_phases")
        elif self.kind == "grayscale":
            if self.gray is None or self.n_phases is not None:
                raise ValueError("a 'grayscale' Microstructure needs gray and n_phases=None")
        else:
            raise ValueError(f"kind must be 'labels' or 'grayscale', not {self.kind!r}")
        for array in (self.labels, self.gray):
            if array is not None:
                array.setflags(write=False)

    @property
    def array(self) -> np.ndarray:
        """Whichever of ``labels`` and ``gray`` is set."""
        return self.labels if self.labels is not None else self.gray  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def describe(self) -> str:
        """One line for the terminal: what was read and how values became phases."""
        text = f"{self.source}: {_format_shape(self.shape)} {describe_mapping(self.mapping)}"
        if self.voxel_size is not None:
            sides = "x".join(f"{s:g}" for s in self.voxel_size.sides)
            text += f"; voxel size {sides} {self.voxel_size.unit or '(no unit)'}"
        return text


def describe_mapping(mapping: dict[str, Any]) -> str:
    """A short human-readable sentence for a ``Microstructure.mapping``."""
    kind = mapping.get("kind")
    if kind == "labels":
        text = f"label image, file values {mapping['values']} -> phases {mapping['phases']}"
    elif kind == "segmented":
        thresholds = ", ".join(f"{t:g}" for t in mapping["thresholds"])
        text = (
            f"segmented into {len(mapping['phases'])} phases (dark to bright) at thresholds [{thresholds}] "
            f"({mapping['method']})"
        )
    elif kind == "grayscale":
        text = f"grayscale, {mapping['scaling']}"
    else:
        text = str(mapping)
    if "color" in mapping:
        text += "; colour converted to gray by luminance"
    return text


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def read_microstructure(
    path: str | os.PathLike[str],
    *,
    mode: str = "auto",
    phases: int | None = None,
    gray_from_rgb: bool = False,
    raw_shape: str | Sequence[int] | None = None,
    raw_dtype: str | None = None,
    raw_order: str = "C",
    crop: str | Sequence | None = None,
    downsample: int | None = None,
    voxel_size: Any = None,
) -> Microstructure:
    """Read a 2D or 3D microstructure image (TIFF, multi-page TIFF, PNG, NPY, HDF5 or raw binary).

    Args:
      path: the file. The format is recognised from its first bytes, not its extension. An HDF5 dataset is
        ``"file.h5:/group/dataset"`` (a file holding a single dataset needs no name).
      mode: ``"auto"`` (integer images with at most `MAX_PHASES` distinct values are label images; other
        images are refused with a hint), ``"labels"`` (insist on a label image) or ``"grayscale"``
        (intensities scaled to ``0..1``: uint8 / 255, uint16 / 65535, anything else min-max).
      phases: segment the intensities into this many phases (2..MAX_PHASES) by multi-level Otsu thresholding;
        phases are numbered dark to bright. Cannot be combined with ``mode="labels"``.
      gray_from_rgb: accept RGB(A) images and convert them to gray with the ITU-R BT.601 luminance
        ``0.299 R + 0.587 G + 0.114 B`` (alpha ignored). Without it, colour images are refused.
      raw_shape: read the file as headerless raw binary of this shape (``"DxHxW"`` or ``"HxW"``, array order);
        the file size must equal the shape times the item size.
      raw_dtype: the raw values' type, a numpy name with optional byte order (``uint8``, ``uint16``, ``>u2``,
        ``<f4``, ``float32``; default ``uint8``).
      raw_order: ``"C"`` (the last axis varies fastest, default) or ``"F"`` (the first axis varies fastest).
      crop: keep ``"z0:z1,y0:y1,x0:x1"`` (one ``start:stop`` per axis, either end may be empty), or a sequence
        of ``(start, stop)`` pairs / slices; applied right after reading, before values become phases.
      downsample: merge ``K x K (x K)`` blocks into one pixel after reading: the most frequent phase of the
        block (ties: the lowest phase) for phase labels, the mean for grayscale. Sides that are not a multiple
        of ``K`` lose their last ``side % K`` pixels. The voxel size grows by ``K``.
      voxel_size: side length of a pixel or voxel with its unit (``"0.5um"``, ``"2x0.5x0.5um"``, a number or
        one per axis; see `jaxmicro.units`). Default: the file's own (TIFF resolution tags, ImageJ spacing,
        jaxmicro's TIFF metadata, an HDF5 ``element_size_um`` attribute), else none (pixels).

    Returns:
      A `Microstructure` with ``labels`` (kind ``"labels"``, also after segmentation) or ``gray``.

    Raises:
      InputError: the file is missing, empty, not an image, truncated, has NaN/inf values, a single value,
        too many distinct values for a label image, the wrong number of axes, or is smaller than 2 pixels;
        a raw file whose size does not match the shape; a missing HDF5 dataset; a crop outside the image.
    """
    from jaxmicro import units

    if mode not in _MODES:
        raise InputError(f"mode must be one of {', '.join(map(repr, _MODES))}, not {mode!r}")
    if phases is not None:
        if isinstance(phases, bool) or not isinstance(phases, (int, np.integer)) or not 2 <= phases <= MAX_PHASES:
            raise InputError(
                f"the number of phases to segment into must be a whole number from 2 to {MAX_PHASES}, "
                f"not {phases!r}; e.g. --phases 3"
            )
        phases = int(phases)
        if mode == "labels":
            raise InputError(
                "mode='labels' reads the file's values as phases, and phases=N segments intensities into N "
                "phases: give one or the other (e.g. --phases 3 without --labels)"
            )
    factor = _check_downsample(downsample)
    crop_bounds = parse_crop(crop) if crop is not None else None
    given_voxel = units.parse_voxel_size(voxel_size)
    raw = raw_shape is not None or raw_dtype is not None
    if raw and raw_shape is None:
        raise InputError("--raw-dtype needs --raw-shape: give the shape of the raw volume, e.g. --raw-shape 64x64x64")

    path, dataset = _split_dataset(path)
    name = str(path) if dataset is None else f"{path}:{dataset}"
    _check_file(path)
    notes: list[str] = []
    file_voxel = None
    if raw:
        file_format = "raw"
        array, channel_axis = _read_raw(path, raw_shape, raw_dtype, raw_order), None
    else:
        file_format = _sniff_format(path)
        expected = _EXTENSIONS.get(path.suffix.lower())
        if expected is not None and expected != file_format:
            notes.append(
                f"the extension says {_FORMAT_NAMES[expected]} but the content is {_FORMAT_NAMES[file_format]}; "
                f"read as {_FORMAT_NAMES[file_format]}"
            )
        if dataset is not None and file_format != "hdf5":
            raise InputError(f"{name}: only HDF5 files hold named datasets, but {path} is a "
                             f"{_FORMAT_NAMES[file_format]} file; give the path without ':{dataset}'")
        if file_format == "tiff":
            array, channel_axis = _read_tiff(path, notes)
            file_voxel = _tiff_voxel_size(path)
        elif file_format == "png":
            array, channel_axis = _read_png(path, notes)
        elif file_format == "hdf5":
            array, file_voxel = _read_hdf5(path, dataset, notes)
            channel_axis = None
        else:
            array, channel_axis = _read_npy(path, notes)

    file_dtype = str(array.dtype)
    array = _check_values_finite(array, name)
    array, is_color = _arrange_axes(array, channel_axis, name, notes)
    color_info: dict[str, Any] | None = None
    rgb: np.ndarray | None = None
    if is_color:
        hint = ""
        if file_format == "tiff" and channel_axis == 0 and array.ndim == 3:
            hint = (
                f"; if it is really a stack of {array.shape[-1]} slices, tifffile stored it as planar RGB: "
                "write it again with tifffile.imwrite(path, volume, photometric='minisblack')"
            )
        array, color_info, rgb = _color_to_gray(array, name, gray_from_rgb, hint)

    _check_dimensionality(array, name)
    check_min_size(array.shape, MIN_SIDE, f"the image {name}")
    file_shape = array.shape
    if crop_bounds is not None:
        region = _crop_region(crop_bounds, array.shape, name)
        array = array[region]
        rgb = rgb[region] if rgb is not None else None
        check_min_size(array.shape, MIN_SIDE, f"the crop {_format_crop(region)} of {name}")

    voxel = None
    voxel_source = None
    if given_voxel is not None:
        voxel, voxel_source = units.per_axis(given_voxel, array.ndim), "given"
    elif file_voxel is not None:
        try:
            voxel, voxel_source = units.per_axis(file_voxel[0], array.ndim), file_voxel[1]
        except InputError:
            notes.append(f"ignored the file's voxel size {file_voxel[0]} ({file_voxel[1]}): it does not match "
                         f"the image's {array.ndim} axes")

    mapping: dict[str, Any] = {
        "shape": list(array.shape),
        "axes": "YX" if array.ndim == 2 else "ZYX",
        "format": _FORMAT_NAMES[file_format],
        "dtype": file_dtype,
    }
    if dataset is not None:
        mapping["dataset"] = dataset
    if crop_bounds is not None:
        mapping["file_shape"] = list(file_shape)
        mapping["crop"] = [[s.start, s.stop] for s in _crop_region(crop_bounds, file_shape, name)]
    if color_info is not None:
        mapping["color"] = color_info
    if notes:
        mapping["notes"] = notes

    scale_dtype = np.dtype(color_info["channel_dtype"]) if color_info is not None else array.dtype

    if phases is not None:
        labels, segment_mapping = _segment(array, phases, name, scale_dtype)
        result = Microstructure(labels, None, phases, "labels", name, {**segment_mapping, **mapping})
    elif mode == "grayscale":
        gray, gray_mapping = _to_gray(array, name, scale_dtype)
        result = Microstructure(None, gray, None, "grayscale", name, {**gray_mapping, **mapping})
    else:
        labels, values = _to_labels(array, name, rgb)
        label_mapping: dict[str, Any] = {"kind": "labels", "values": values, "phases": list(range(len(values)))}
        result = Microstructure(labels, None, len(values), "labels", name, {**label_mapping, **mapping})
    if factor > 1:
        result = _downsampled(result, factor)
        voxel = voxel.scaled([factor] * result.ndim) if voxel is not None else None
    if voxel is not None:
        result.mapping.update(voxel.to_json(), voxel_size_source=voxel_source)
        result = dataclasses.replace(result, voxel_size=voxel)
    return result


# --------------------------------------------------------------------------------------------------------------
# HDF5, raw binary, crop, downsample, voxel sizes in files
# --------------------------------------------------------------------------------------------------------------


def _split_dataset(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``"a.h5:/group/data"`` -> ``(Path("a.h5"), "/group/data")``; a path that exists as given has no dataset."""
    text = os.fspath(path)
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    for index in [i for i, c in enumerate(text) if c == ":"][::-1]:
        if index > 0 and Path(text[:index]).is_file():
            return Path(text[:index]), text[index + 1:] or None
    return Path(text), None


def _hdf5_datasets(h5file) -> list[str]:
    import h5py

    found: list[str] = []
    h5file.visititems(lambda key, item: found.append("/" + key) if isinstance(item, h5py.Dataset) else None)
    return found


def _read_hdf5(path: Path, dataset: str | None, notes: list[str]) -> tuple[np.ndarray, tuple | None]:
    try:
        import h5py
    except ImportError:
        raise InputError(f"{path} is an HDF5 file; reading HDF5 needs h5py: pip install 'jaxmicro[hdf5]'") from None
    try:
        with h5py.File(path, "r") as h5file:
            present = _hdf5_datasets(h5file)
            shown = ", ".join(present[:20]) + (f" and {len(present) - 20} more" if len(present) > 20 else "")
            if dataset is None:
                if len(present) != 1:
                    raise InputError(
                        f"{path} holds {len(present)} datasets ({shown or 'none'}); name the one to read, e.g. "
                        f"{path}:{present[0] if present else '/volume'}"
                    )
                dataset = present[0]
                notes.append(f"read the file's only dataset {dataset}")
            item = h5file.get(dataset)
            if not isinstance(item, h5py.Dataset):
                what = "is a group, not a dataset" if item is not None else "does not exist"
                raise InputError(f"{path}:{dataset} {what}; the file holds the datasets {shown or '(none)'}")
            if item.dtype.names is not None or item.dtype.kind not in "biuf":
                raise InputError(f"{path}:{dataset} holds values of type {item.dtype}, not integers or real numbers")
            _check_declared_size(path, item.shape, 8 * item.dtype.itemsize, 1, False)
            array = np.asarray(item[()])
            voxel = None
            if "element_size_um" in item.attrs:
                sides = np.atleast_1d(np.asarray(item.attrs["element_size_um"], np.float64))
                voxel = ("x".join(repr(float(v)) for v in sides) + "um", "HDF5 attribute element_size_um")
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise _truncated(path, f"{type(error).__name__}: {error}") from error
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return array, voxel


_RAW_EXAMPLE = "e.g. --raw-dtype uint8, uint16, '>u2' (big-endian 16 bit), float32"


def _read_raw(path: Path, shape, dtype, order: str) -> np.ndarray:
    shape = parse_shape(shape)
    try:
        dtype = np.dtype("uint8" if dtype is None else dtype)
    except TypeError:
        raise InputError(f"cannot read the raw type {dtype!r}: {_RAW_EXAMPLE}") from None
    if dtype.kind not in "biuf" or dtype.names is not None or dtype.itemsize > 8:
        raise InputError(f"the raw type {dtype} is not an integer or real number type: {_RAW_EXAMPLE}")
    if order not in ("C", "F"):
        raise InputError(f"the raw order must be C (last axis fastest) or F (first axis fastest), not {order!r}")
    size = path.stat().st_size
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        hint = ""
        if size % expected == 0 and size // expected > 1:
            hint = f"; it holds {size // expected} times as many bytes (another shape or a wider type?)"
        elif size > expected:
            hint = f"; {size - expected:,} bytes more (a header? crop it off, or check the shape)"
        raise InputError(
            f"{path} has {size:,} bytes but --raw-shape {_format_shape(shape)} of {dtype} ({dtype.itemsize} "
            f"byte(s) each) needs {expected:,}{hint}"
        )
    array = np.fromfile(path, dtype=dtype).reshape(shape, order=order)
    return np.ascontiguousarray(array.astype(dtype.newbyteorder("="), copy=False))


def parse_crop(crop: str | Sequence) -> tuple[tuple[int | None, int | None], ...]:
    """``"10:74,0:64,:"`` -> ``((10, 74), (0, 64), (None, None))``: one ``start:stop`` per axis in array order.

    Also accepts a sequence of ``(start, stop)`` pairs or slices (step 1). Checked against the image by
    `read_microstructure`: ``0 <= start < stop <= side``.
    """
    example = "e.g. --crop 0:64,0:128,0:128 (z, y, x) or --crop 10:200,:"
    if isinstance(crop, str):
        parts = [p.strip() for p in crop.split(",")]
        bounds = []
        for part in parts:
            match = re.fullmatch(r"(\d*)\s*:\s*(\d*)", part)
            if not match:
                raise InputError(f"cannot read the crop {crop!r}: expected start:stop for each axis, {example}")
            bounds.append(tuple(int(v) if v else None for v in match.groups()))
    else:
        try:
            items = list(crop)
        except TypeError:
            raise InputError(f"cannot read the crop {crop!r}: {example}") from None
        bounds = []
        for item in items:
            if isinstance(item, slice):
                if item.step not in (None, 1):
                    raise InputError(f"the crop {crop!r} has a step; use downsample for coarser sampling")
                item = (item.start, item.stop)
            try:
                start, stop = item
            except (TypeError, ValueError):
                raise InputError(f"cannot read the crop {crop!r}: one (start, stop) pair per axis, {example}") from None
            for value in (start, stop):
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                    raise InputError(f"the crop {crop!r} needs whole numbers, {example}")
            bounds.append((None if start is None else int(start), None if stop is None else int(stop)))
    if not 2 <= len(bounds) <= 3:
        raise InputError(f"the crop {crop!r} has {len(bounds)} part(s); give one start:stop per axis, {example}")
    return tuple(bounds)


def _crop_region(bounds, shape: Sequence[int], name: str) -> tuple[slice, ...]:
    if len(bounds) != len(shape):
        raise InputError(f"the crop gives {len(bounds)} axes but {name} has {len(shape)} ({_format_shape(shape)}); "
                         "give one start:stop per axis")
    region = []
    for axis, ((start, stop), side) in enumerate(zip(bounds, shape)):
        start = 0 if start is None else start
        stop = side if stop is None else stop
        if not 0 <= start < stop <= side:
            raise InputError(f"the crop {start}:{stop} of axis {axis} lies outside {name}, whose side is {side} "
                             f"(shape {_format_shape(shape)}); it needs 0 <= start < stop <= {side}")
        region.append(slice(start, stop))
    return tuple(region)


def _format_crop(region: Sequence[slice]) -> str:
    return ",".join(f"{s.start}:{s.stop}" for s in region)


def _check_downsample(factor) -> int:
    if factor is None:
        return 1
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise InputError(f"the downsampling factor must be a positive whole number such as 2, not {factor!r}")
    return int(factor)


def downsample(array: np.ndarray, factor: int, *, labels: bool, n_phases: int | None = None) -> np.ndarray:
    """Merge ``factor``-sided blocks: the most frequent phase (ties: the lowest) of label images, the mean of
    grayscale ones (float32). Sides lose their last ``side % factor`` pixels."""
    array = np.asarray(array)
    factor = _check_downsample(factor)
    kept = tuple(s // factor for s in array.shape)
    trimmed = array[tuple(slice(0, k * factor) for k in kept)]
    blocks = trimmed.reshape([v for k in kept for v in (k, factor)])
    block_axes = tuple(range(1, blocks.ndim, 2))
    if not labels:
        return blocks.mean(axis=block_axes, dtype=np.float64).astype(np.float32)
    n = int(array.max()) + 1 if n_phases is None else int(n_phases)
    counts = np.stack([(blocks == phase).sum(axis=block_axes) for phase in range(n)])
    return np.argmax(counts, axis=0).astype(np.int32)  # argmax: the first (lowest) phase among ties


def _downsampled(image: Microstructure, factor: int) -> Microstructure:
    name = image.source
    if any(s // factor < MIN_SIDE for s in image.shape):
        raise InputError(f"downsampling {name} ({_format_shape(image.shape)}) by {factor} leaves fewer than "
                         f"{MIN_SIDE} pixels along a side; use a smaller factor")
    mapping = {**image.mapping, "downsample": factor}
    if image.kind == "grayscale":
        gray = downsample(image.gray, factor, labels=False)
        mapping["shape"] = list(gray.shape)
        return dataclasses.replace(image, gray=gray, mapping=mapping)
    labels = downsample(image.labels, factor, labels=True, n_phases=image.n_phases)
    present = np.bincount(labels.ravel(), minlength=image.n_phases)
    lost = [int(p) for p in np.flatnonzero(present == 0)]
    if lost:
        raise InputError(f"downsampling {name} by {factor} removes phase(s) {lost} entirely (their features are "
                         f"smaller than {factor} pixels); use a smaller factor")
    mapping["shape"] = list(labels.shape)
    if "volume_fractions" in mapping:
        mapping["volume_fractions"] = [round(float(f), 6) for f in present / labels.size]
    return dataclasses.replace(image, labels=labels, mapping=mapping)


_SCREEN_DPI = (72.0, 96.0)
"""Resolutions that image programs write by default (dots per inch of a screen), not a voxel size."""


def _tiff_voxel_size(path: Path) -> tuple[str, str] | None:
    """The voxel size a TIFF records, as a text for `jaxmicro.units.parse_voxel_size`, and where it came from:
    jaxmicro's own metadata, else the X/YResolution tags with ResolutionUnit (ImageJ's 'unit' and 'spacing' for
    the unit and z). Screen defaults (72 or 96 dots per inch) and 1 pixel per unit without a unit are ignored."""
    import tifffile

    from jaxmicro import units

    try:
        with tifffile.TiffFile(path) as tif:
            shaped = tif.shaped_metadata
            if shaped and shaped[0].get("voxel_size"):
                sides = shaped[0]["voxel_size"]
                return "x".join(repr(float(s)) for s in sides) + (shaped[0].get("unit") or ""), "jaxmicro TIFF metadata"
            page = tif.pages[0]
            tags = page.tags
            if "XResolution" not in tags or "YResolution" not in tags:
                return None
            x_res, y_res = (tags[n].value for n in ("XResolution", "YResolution"))
            x_res, y_res = (v[0] / v[1] if isinstance(v, tuple) and v[1] else float(v) for v in (x_res, y_res))
            unit_code = int(getattr(tags.get("ResolutionUnit"), "value", 1) or 1)
            imagej = tif.imagej_metadata or {}
    except Exception:  # noqa: BLE001 - the image was read already; a broken tag only loses the voxel size
        return None
    if not (x_res > 0 and y_res > 0):
        return None
    unit = {2: "inch", 3: "cm"}.get(unit_code, "")
    if imagej.get("unit"):
        unit = units.normalise_unit(str(imagej["unit"]).replace("\\u00B5", "µ"))
        if unit in ("pixel", "pixels"):
            return None
    if unit == "inch" and x_res in _SCREEN_DPI and y_res in _SCREEN_DPI:
        return None
    if not unit and x_res == 1 and y_res == 1 and not imagej.get("spacing"):
        return None
    sides = [1.0 / y_res, 1.0 / x_res]
    if imagej.get("spacing"):
        sides.insert(0, float(imagej["spacing"]))
    elif len(page.shape) >= 2 and len(tif.pages) > 1:
        sides.insert(0, 1.0 / x_res)  # a stack without a z spacing: cubic voxels
    if unit in ("inch", "cm"):  # TIFF's own units; say it in micrometres
        sides, unit = [s * units.LENGTH_UNITS[unit] for s in sides], "um"
    source = "ImageJ metadata" if imagej.get("unit") or imagej.get("spacing") else "TIFF resolution tags"
    return "x".join(repr(float(s)) for s in sides) + unit, source


def _check_file(path: Path) -> None:
    if not path.exists():
        hint = ""
        parent = path.parent if str(path.parent) else Path(".")
        if parent.is_dir():
            similar = sorted(p.name for p in parent.iterdir() if p.stem.lower() == path.stem.lower())[:3]
            if similar:
                hint = f" (did you mean {', '.join(similar)}?)"
        raise InputError(f"{path}: no such file{hint}; check the path and the current folder ({Path.cwd()})")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file; give the path of a .tif, .png or .npy file")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror})") from error
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes); it was probably not written completely, save it again")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: no permission to read it; check the file's permissions")


def _sniff_format(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror})") from error
    for magic, file_format in _MAGIC:
        if head.startswith(magic):
            return file_format
    for magic, what in _KNOWN_OTHER_MAGIC:
        if head.startswith(magic):
            raise InputError(f"{path} is not a TIFF, PNG or NPY image: it looks like {what}")
    looks_like = ""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        looks_like = f" (it starts like a text file: {text.splitlines()[0][:16]!r})"
    raise InputError(
        f"{path} is not a TIFF, PNG or NPY image{looks_like}; jaxmicro reads .tif/.tiff (2D or multi-page 3D), "
        ".png and .npy files. Convert it to one of these"
    )


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_TRUNCATION_WORDS = ("offset", "truncat", "reshape", "corrupt", "incomplete", "failed")


def _truncated(path: Path, detail: str) -> InputError:
    return InputError(
        f"{path} is truncated or damaged ({detail}); the file was probably cut short while being written or "
        "copied. Copy or export it again"
    )


_MAX_EXPANSION = 4096
"""Most bytes of pixels one byte of a file can decode to with the codecs of PNG and of common TIFFs (deflate at
most 1032, LZW under 4096, PackBits 64): a header that declares more pixels than that is damaged."""


def _check_declared_size(path: Path, shape: Sequence[int], bits: int, file_size: int, bounded: bool) -> None:
    """Refuse a header that declares more pixels than the file can hold (``bounded``: its codec has a maximum
    expansion) or than this machine's memory, before anything is allocated for them."""
    declared = math.prod(int(s) for s in shape) * bits // 8
    if bounded and declared > _MAX_EXPANSION * file_size + 2**16:
        raise _truncated(
            path, f"its header declares {_format_shape(shape)} pixels ({declared:,} bytes), more than a file of "
            f"{file_size:,} bytes can hold"
        )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if declared > memory:
        raise InputError(
            f"{path} declares an image of {_format_shape(shape)} pixels ({declared / 2**30:,.1f} GiB), more than "
            f"this machine's memory ({memory / 2**30:.0f} GiB); if the file is not damaged, crop it or split the "
            "volume into smaller stacks"
        )


def _read_tiff(path: Path, notes: list[str]) -> tuple[np.ndarray, int | None]:
    import tifffile

    file_size = path.stat().st_size
    collector = _LogCollector()
    logger = logging.getLogger("tifffile")
    saved = logger.level, logger.propagate
    logger.addHandler(collector)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # its messages are turned into our error or into mapping notes
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if not pages or not tif.series:
                raise _truncated(path, "no image pages found")
            for page in pages:
                offsets = getattr(page, "dataoffsets", ()) or ()
                counts = getattr(page, "databytecounts", ()) or ()
                for offset, count in zip(offsets, counts):
                    if offset + count > file_size:
                        raise _truncated(
                            path, f"image data runs to byte {offset + count} but the file has {file_size} bytes"
                        )
            series = tif.series[0]
            bounded = {"NONE", "ADOBE_DEFLATE", "DEFLATE", "LZW", "PACKBITS"}
            _check_declared_size(path, series.shape, 8 * np.dtype(series.dtype).itemsize, file_size,
                                 all(getattr(page.compression, "name", None) in bounded for page in pages))
            if len(tif.series) > 1:
                notes.append(f"the TIFF holds {len(tif.series)} image series; read the first, shape {series.shape}")
            array = series.asarray()
            axes = series.axes
            shaped = tif.shaped_metadata
            if shaped and len(tif.series) == 1:
                stored_shape = shaped[0].get("shape")
                if stored_shape is not None and math.prod(stored_shape) != array.size:
                    raise _truncated(path, f"expected shape {tuple(stored_shape)}, found {array.shape}")
    except InputError:
        raise
    except (tifffile.TiffFileError, zlib.error, ValueError, OSError, EOFError, IndexError, KeyError) as error:
        raise _truncated(path, f"{type(error).__name__}: {error}") from error
    except Exception as error:  # noqa: BLE001 - any decoder failure is a damaged file for the user
        raise InputError(
            f"{path} could not be read as a TIFF ({type(error).__name__}: {error}); it may be damaged or use a "
            "TIFF feature tifffile cannot decode. Export it again as an uncompressed or zlib-compressed TIFF"
        ) from error
    finally:
        logger.removeHandler(collector)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    problems = [m for m in collector.messages if any(word in m.lower() for word in _TRUNCATION_WORDS)]
    if problems:
        raise _truncated(path, problems[0].strip()[:200])
    notes.extend(f"tifffile: {m.strip()[:200]}" for m in collector.messages)
    if array.size == 0:
        raise _truncated(path, "no pixel data")
    channel_axis = None
    if "S" in axes and array.ndim == len(axes):
        channel_axis = axes.index("S")
    return array, channel_axis


def _read_png(path: Path, notes: list[str]) -> tuple[np.ndarray, int | None]:
    from PIL import Image, ImageFile

    if getattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False):
        notes.append("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: a truncated PNG could go unnoticed")
    try:
        with Image.open(path) as image:
            _check_declared_size(path, image.size[::-1], 1, path.stat().st_size, True)  # PNG: deflate
            image.load()
            image_mode = image.mode
            if image_mode == "P":
                notes.append("palette PNG: the palette indices are used as the pixel values")
            array = np.array(image)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, MemoryError) as error:
        raise _truncated(path, f"{type(error).__name__}: {error}") from error
    except Image.DecompressionBombError as error:
        raise InputError(f"{path} is too large to read safely ({error})") from error
    if image_mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)  # a 16-bit PNG that Pillow opened as 32-bit
    if image_mode in ("LA", "PA", "La"):
        array = np.asarray(array)
        channel_axis: int | None = array.ndim - 1
    elif array.ndim == 3:
        channel_axis = 2
    else:
        channel_axis = None
    return array, channel_axis


_NPY_HEADER_LIMIT = 10_000
"""Longest NPY header numpy itself reads without ``allow_pickle`` (``numpy.lib.format``'s safety limit)."""

# What numpy's NPY header parser raises on a damaged header: ast.literal_eval gives SyntaxError, ValueError,
# TypeError ({[]: 1}), MemoryError or RecursionError (deep nesting); its fallback for Python 2 headers runs the
# tokenizer, which gives tokenize.TokenError (unterminated brackets or strings).
_NPY_HEADER_ERRORS = (ValueError, SyntaxError, TypeError, tokenize.TokenError, MemoryError, RecursionError)


def _npy_header(stream: IO[bytes], available: int) -> tuple[np.dtype, tuple[int, ...], bool]:
    """Read and check the header of an NPY file or zip member (``available`` bytes from its start).

    Returns ``(dtype, shape, fortran_order)`` and leaves ``stream`` at the start of the data. Raises ValueError
    saying what is wrong when the header is damaged or declares other data than the bytes that follow it, so
    that no absurd declared size is ever allocated.
    """
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(
            f"NPY format version {version[0]}.{version[1]}; jaxmicro reads versions 1.0 and 2.0, which np.save "
            "writes for every numeric array"
        )
    length_format = "<H" if version == (1, 0) else "<I"
    length_field = stream.read(struct.calcsize(length_format))
    if len(length_field) < struct.calcsize(length_format):
        raise ValueError("the file ends inside the header")
    (header_length,) = struct.unpack(length_format, length_field)
    if header_length > min(_NPY_HEADER_LIMIT, available):
        raise ValueError(f"the header declares a length of {header_length:,} bytes")
    stream.seek(stream.tell() - len(length_field))
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = reader(stream)
    except _NPY_HEADER_ERRORS as error:
        raise ValueError(f"cannot parse the header ({type(error).__name__}: {str(error)[:120]})") from error
    if any(side < 0 for side in shape):
        raise ValueError(f"the header declares a negative shape {shape}")
    declared = math.prod(shape) * dtype.itemsize
    present = available - stream.tell()
    if declared != present and not dtype.hasobject:
        raise ValueError(
            f"the header declares {_format_shape(shape) if shape else 'a scalar'} values of type {dtype} "
            f"({declared:,} bytes) but {present:,} bytes of data follow it"
        )
    return dtype, tuple(shape), fortran_order


def _read_npy(path: Path, notes: list[str]) -> tuple[np.ndarray, int | None]:
    try:
        with open(path, "rb") as file:
            dtype, _, _ = _npy_header(file, path.stat().st_size)
            if dtype.hasobject:
                raise InputError(
                    f"{path} holds Python objects, not numbers; save a numeric array with np.save(path, array)"
                )
            file.seek(0)
            array = np.lib.format.read_array(file, allow_pickle=False)
    except InputError:
        raise
    except ValueError as error:
        raise _truncated(path, str(error)) from error
    except (OSError, EOFError) as error:
        raise _truncated(path, f"{type(error).__name__}: {error}") from error
    if not isinstance(array, np.ndarray):  # pragma: no cover - np.load of .npy always gives an array
        raise InputError(f"{path} does not hold a single array")
    if array.dtype.names is not None or array.dtype.kind not in "biuf":
        raise InputError(
            f"{path} holds values of type {array.dtype}, not integers or real numbers; save a numeric array "
            "(integer labels or real intensities)"
        )
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    channel_axis = None
    if array.ndim == 3 and array.shape[2] in (2, 3, 4) and array.shape[2] < min(array.shape[:2]):
        channel_axis = 2
    elif array.ndim == 4 and array.shape[3] in (3, 4) and array.shape[3] < min(array.shape[:3]):
        channel_axis = 3
    return array, channel_axis


def _check_values_finite(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            n_inf = int(array.size - finite.sum()) - n_nan
            raise InputError(
                f"{name} contains {n_nan} NaN and {n_inf} infinite values; jaxmicro needs finite values "
                "everywhere. Replace them (e.g. np.nan_to_num, or fill the masked region) and save again"
            )
    return array


def _arrange_axes(
    array: np.ndarray, channel_axis: int | None, name: str, notes: list[str]
) -> tuple[np.ndarray, bool]:
    """Move a channel axis last, drop opaque alpha / single channels, squeeze leading length-1 axes."""
    if channel_axis is not None:
        array = np.moveaxis(array, channel_axis, -1)
        n_channels = array.shape[-1]
        if n_channels == 1:
            array = array[..., 0]
            notes.append("dropped a single-channel axis")
        elif n_channels == 2:  # gray + alpha
            if _alpha_is_opaque(array[..., 1]):
                array = array[..., 0]
                notes.append("dropped a fully opaque alpha channel")
            else:
                raise InputError(
                    f"{name} has a trailing axis of 2 channels (shape {array.shape}: gray plus transparency?), "
                    "which is neither a single-channel image nor RGB(A); save only the gray channel"
                )
        elif n_channels in (3, 4):
            return array, True
        else:
            raise InputError(
                f"{name} has {n_channels} channels per pixel (shape {array.shape}); jaxmicro reads single-channel "
                "label or grayscale images (or RGB/RGBA with --gray-from-rgb); save one channel"
            )
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
        notes.append("dropped a leading axis of length 1")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
        notes.append("dropped a trailing axis of length 1")
    return array, False


def _alpha_is_opaque(alpha: np.ndarray) -> bool:
    if alpha.dtype.kind == "f":
        return bool(np.all(alpha == 1.0))
    if alpha.dtype == np.bool_:
        return bool(alpha.all())
    return bool(np.all(alpha == np.iinfo(alpha.dtype).max))


def _color_to_gray(
    array: np.ndarray, name: str, gray_from_rgb: bool, hint: str = ""
) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None]:
    """Luminance of an RGB(A) image; also returns the RGB values when they differ (for the label colour check)."""
    kind = "RGBA" if array.shape[-1] == 4 else "RGB"
    rgb = array[..., :3]
    channels_equal = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
    if not gray_from_rgb:
        lossless = " (all three colour channels are equal here, so nothing is lost)" if channels_equal else ""
        raise InputError(
            f"{name} is a colour ({kind}) image of shape {array.shape}; jaxmicro reads label or grayscale images. "
            f"To use it, {_RGB_HINT}{lossless}, or save a single-channel image{hint}"
        )
    info: dict[str, Any] = {
        "from": kind,
        "conversion": "luminance, ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B",
        "channel_dtype": str(array.dtype),
    }
    if kind == "RGBA":
        opaque = _alpha_is_opaque(array[..., 3])
        info["alpha"] = "ignored" + ("" if opaque else " (not fully opaque)")
    info["channels_equal"] = channels_equal
    if channels_equal:
        return rgb[..., 0], info, None  # exact: the luminance of equal channels is the channel value
    weights = np.asarray(LUMINANCE_WEIGHTS, dtype=np.float64)
    return rgb.astype(np.float64) @ weights, info, rgb


def _check_dimensionality(array: np.ndarray, name: str) -> None:
    if array.ndim in (2, 3):
        return
    if array.ndim < 2:
        raise InputError(
            f"{name} is {array.ndim}-dimensional (shape {array.shape}); jaxmicro needs a 2D image (rows, cols) or "
            "a 3D volume (z, y, x). If it is a flattened image, reshape it before saving, e.g. "
            "np.save(path, values.reshape(rows, cols))"
        )
    raise InputError(
        f"{name} has {array.ndim} axes (shape {array.shape}); jaxmicro needs a 2D image (rows, cols) or a 3D "
        "volume (z, y, x). A 4D array is often a time series or a stack of channels: save one volume"
    )


def check_min_size(shape: Sequence[int], min_side: int, what: str, *, reason: str | None = None) -> None:
    """Raise InputError if any side of ``shape`` is below ``min_side`` pixels.

    ``what`` names the thing in the message (e.g. ``"the exemplar data/a.tif"``); ``reason`` may say why the
    minimum exists (e.g. ``"the VGG19 taps up to block 4 need it"``).
    """
    shape = tuple(int(s) for s in shape)
    small = [s for s in shape if s < min_side]
    if small:
        why = f" ({reason})" if reason else ""
        raise InputError(
            f"{what} is {_format_shape(shape)} pixels, but every side must be at least {min_side}{why}; "
            "use a larger image"
        )


# --------------------------------------------------------------------------------------------------------------
# Values -> labels / gray
# --------------------------------------------------------------------------------------------------------------


def _distinct_values(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    if array.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(array.ravel(), minlength=1)).astype(array.dtype)
    return np.unique(array)


def _python_number(value: Any) -> int | float:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _single_value_error(name: str, value: Any) -> InputError:
    return InputError(
        f"{name} holds a single value ({_python_number(value)}) everywhere: one phase, nothing to reconstruct. "
        "Check that the right file was given and that its segmentation did not fail"
    )


def _to_labels(array: np.ndarray, name: str, rgb: np.ndarray | None) -> tuple[np.ndarray, list]:
    if array.dtype.kind == "f" and rgb is None:
        if not np.all(np.equal(np.floor(array), array)):
            raise InputError(
                f"{name} holds fractional values (type {array.dtype}), so it is not a label image. "
                f"{_GRAYSCALE_HINT}"
            )
    values = _distinct_values(array)
    if values.size == 1:
        raise _single_value_error(name, values[0])
    if values.size > MAX_PHASES:
        raise InputError(
            f"{name} has {values.size} distinct values, more than the {MAX_PHASES} phases a label image may have, "
            f"so it does not look like a label image. {_GRAYSCALE_HINT}"
        )
    if rgb is not None:
        n_colors = len(np.unique(rgb.reshape(-1, 3), axis=0))
        if n_colors != values.size:
            raise InputError(
                f"{name} has {n_colors} distinct colours but only {values.size} distinct luminances: some colours "
                "have the same brightness and would merge into one phase. Recolour the phases with distinct "
                "gray levels, or save the labels as a single-channel image"
            )
    if array.dtype in (np.bool_, np.uint8, np.uint16):
        lookup = np.zeros(int(values.max()) + 1, dtype=np.int32)
        lookup[values] = np.arange(values.size, dtype=np.int32)
        labels = lookup[array.view(np.uint8) if array.dtype == np.bool_ else array]
    else:
        labels = np.searchsorted(values, array).astype(np.int32)
    return labels, [_python_number(v) for v in values]


def _integer_range(dtype: np.dtype) -> float | None:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return None


def _to_gray(array: np.ndarray, name: str, scale_dtype: np.dtype) -> tuple[np.ndarray, dict[str, Any]]:
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise _single_value_error(name, array.flat[0])
    full_scale = _integer_range(scale_dtype)
    if full_scale is not None:
        gray = np.clip(array.astype(np.float32) / np.float32(full_scale), 0.0, 1.0)
        scaling = f"{scale_dtype} values divided by {int(full_scale)}"
        mapping = {"kind": "grayscale", "scaling": scaling, "divisor": int(full_scale)}
    else:
        gray = ((array.astype(np.float64) - low) / (high - low)).astype(np.float32)
        scaling = f"min-max: ({low:g} .. {high:g}) -> (0 .. 1)"
        mapping = {"kind": "grayscale", "scaling": scaling, "min": _python_number(low), "max": _python_number(high)}
    mapping["value_range"] = [_python_number(low), _python_number(high)]
    return gray, mapping


def multi_otsu_thresholds(histogram: np.ndarray, n_classes: int) -> np.ndarray:
    """Class boundaries that maximise the between-class variance of a histogram (multi-level Otsu).

    Exact dynamic programme over the bins (O(n_classes * bins^2)), with bin ``i`` standing for intensity ``i``.
    Returns ``n_classes - 1`` increasing bin indices ``b``: class ``k`` holds bins ``b[k-1] <= i < b[k]``.
    Every class holds at least one non-empty bin. Raises ValueError if fewer than ``n_classes`` bins are occupied.
    """
    histogram = np.asarray(histogram, dtype=np.float64)
    n_bins = histogram.size
    if np.count_nonzero(histogram) < n_classes:
        raise ValueError(f"only {np.count_nonzero(histogram)} occupied bins for {n_classes} classes")
    weight = np.concatenate([[0.0], np.cumsum(histogram)])
    moment = np.concatenate([[0.0], np.cumsum(histogram * np.arange(n_bins))])
    # cost[i, j]: w * mu^2 of a class made of bins i..j-1 (the between-class variance up to constants).
    dw = weight[None, :] - weight[:, None]
    dm = moment[None, :] - moment[:, None]
    upper = np.triu(np.ones((n_bins + 1, n_bins + 1), dtype=bool), k=1)
    valid = upper & (dw > 0)
    cost = np.full(dw.shape, -np.inf)
    cost[valid] = dm[valid] ** 2 / dw[valid]
    best = cost[0].copy()  # best[j]: one class covering bins 0..j-1
    choices = []
    for _ in range(n_classes - 1):
        total = best[:, None] + cost  # previous classes end at i, the next covers i..j-1
        choice = np.argmax(total, axis=0)
        best = total[choice, np.arange(n_bins + 1)]
        choices.append(choice)
    boundaries = []
    end = n_bins
    for choice in reversed(choices):
        end = int(choice[end])
        boundaries.append(end)
    return np.asarray(boundaries[::-1], dtype=np.int64)


def _segment(array: np.ndarray, n_phases: int, name: str, scale_dtype: np.dtype) -> tuple[np.ndarray, dict]:
    low, high = array.min(), array.max()
    if low == high:
        raise _single_value_error(name, low)
    exact = array.dtype.kind in "biu" and int(high) - int(low) < _OTSU_BINS
    if exact:
        bins = (array.astype(np.int64) - int(low)).astype(np.intp)
        n_bins = int(high) - int(low) + 1
        width = 1.0
        method = (
            "multi-level Otsu on the histogram of the exact integer values "
            f"{_python_number(low)}..{_python_number(high)}"
        )
    else:
        n_bins = _OTSU_BINS
        width = (float(high) - float(low)) / n_bins
        scaled = (array.astype(np.float64) - float(low)) / width
        bins = np.clip(np.floor(scaled), 0, n_bins - 1).astype(np.intp)
        method = f"multi-level Otsu on a {n_bins}-bin histogram spanning {float(low):g}..{float(high):g}"
    histogram = np.bincount(bins.ravel(), minlength=n_bins)
    occupied = np.flatnonzero(histogram)
    if occupied.size < n_phases:
        raise InputError(
            f"{name} has only {occupied.size} distinct intensity levels, too few to segment into {n_phases} phases; "
            f"ask for at most {occupied.size} phases"
        )
    boundaries = multi_otsu_thresholds(histogram, n_phases)
    labels = np.searchsorted(boundaries, bins, side="right").astype(np.int32)
    # Report each threshold halfway between the last occupied bin below it and the first at or above it, in the
    # file's intensity units: values >= threshold belong to the brighter phase.
    thresholds = []
    for boundary in boundaries:
        below = occupied[occupied < boundary].max()
        above = occupied[occupied >= boundary].min()
        centre_below = float(low) + (below + (0.0 if exact else 0.5)) * width
        centre_above = float(low) + (above + (0.0 if exact else 0.5)) * width
        thresholds.append(_python_number(float(f"{(centre_below + centre_above) / 2:.7g}")))
    fractions = np.bincount(labels.ravel(), minlength=n_phases) / labels.size
    mapping = {
        "kind": "segmented",
        "method": method,
        "thresholds": thresholds,
        "phases": list(range(n_phases)),
        "order": "dark to bright",
        "volume_fractions": [round(float(f), 6) for f in fractions],
    }
    return labels, mapping


# --------------------------------------------------------------------------------------------------------------
# Command-line parsing helpers
# --------------------------------------------------------------------------------------------------------------

_SHAPE_EXAMPLE = "e.g. 128x128 for a 2D image or 64x64x64 for a 3D volume"


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """Parse ``"128x128"`` -> ``(128, 128)`` or ``"64x64x64"`` -> ``(64, 64, 64)``; sides must be positive.

    Also accepts ``X`` or ``×`` as the separator, spaces around it, or an already split sequence of integers.
    """
    if isinstance(text, str):
        parts = [p.strip() for p in re.split(r"[xX×]", text.strip())]
        if len(parts) not in (2, 3) or any(not re.fullmatch(r"[+-]?\d+", p) for p in parts):
            raise InputError(
                f"cannot read the shape {text!r}: expected 2 or 3 whole numbers joined by 'x', {_SHAPE_EXAMPLE}"
            )
        sides = [int(p) for p in parts]
    else:
        try:
            items = list(text)
        except TypeError as error:
            raise InputError(f"cannot read the shape {text!r}: {_SHAPE_EXAMPLE}") from error
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in items) or len(items) not in (2, 3):
            raise InputError(f"cannot read the shape {text!r}: expected 2 or 3 whole numbers, {_SHAPE_EXAMPLE}")
        sides = [int(s) for s in items]
    if any(s <= 0 for s in sides):
        raise InputError(
            f"the shape {text!r} has a side that is zero or negative; every side must be positive, {_SHAPE_EXAMPLE}"
        )
    return tuple(sides)


def _format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


# --------------------------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------------------------


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_temp(path: Path, suffix: str) -> tuple[int, Path]:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=suffix)
    except OSError as error:
        raise InputError(
            f"cannot write {path}: {error.strerror or error}; check that the folder {directory} exists and is "
            "writable, or choose another --out"
        ) from error
    return fd, Path(temp)


def _finish(temp: Path, path: Path) -> None:
    os.chmod(temp, _new_file_mode())
    os.replace(temp, path)
    _fsync_directory(path.parent if str(path.parent) else Path("."))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, text: bool = False, encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path`` atomically.

    Yields a binary file object (text with ``text=True``). The data is flushed and ``fsync``-ed before
    `os.replace`; if the body raises, the temporary file is removed, ``path`` is left as it was, and the
    exception propagates.
    """
    path = Path(path)
    fd, temp = _make_temp(path, ".tmp")
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": encoding, "newline": ""} if text else {})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        _finish(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Like `atomic_write`, but yields the temporary file's path, for libraries that write to a path.

    The temporary name keeps the destination's extension (``.<name>.<random>.tmp<ext>``), so libraries that pick
    the format from it (matplotlib, ``np.save``) do the right thing.
    """
    path = Path(path)
    fd, temp = _make_temp(path, ".tmp" + path.suffix)
    os.close(fd)
    try:
        yield temp
        if not temp.exists():
            raise FileNotFoundError(f"the writer did not create {temp}")
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        _finish(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("jaxmicro")
    except Exception:  # noqa: BLE001
        return "unknown"


def write_labels_tiff(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    *,
    n_phases: int | None = None,
    metadata: dict[str, Any] | None = None,
    voxel_size: Any = None,
) -> None:
    """Write phase labels as a zlib-compressed uint8 TIFF (3D ``(z, y, x)`` as a multi-page stack), atomically.

    The ImageDescription holds JSON (tifffile's shaped metadata): the shape, ``"kind": "labels"``,
    ``n_phases``, ``phases`` and ``axes``, plus ``metadata`` if given (converted with `to_jsonable`).
    ``n_phases`` defaults to ``labels.max() + 1``. ``voxel_size`` (``"0.5um"``, a `jaxmicro.units.VoxelSize`,
    ...) goes into the description (``voxel_size`` per axis, ``unit``) and into the XResolution / YResolution
    tags (pixels per centimetre for a length unit, else without a unit), so that other programs see it too.
    """
    import tifffile

    from jaxmicro import units

    array = np.asarray(labels)
    if array.ndim not in (2, 3):
        raise InputError(f"labels to write to {path} must be 2D or 3D, not shape {array.shape}")
    if array.dtype.kind not in "biu" and not (array.dtype.kind == "f" and np.all(np.floor(array) == array)):
        raise InputError(f"labels to write to {path} must be whole numbers, not {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(
            f"labels to write to {path} must lie in 0..255 for a uint8 TIFF, found {array.min()}..{array.max()}"
        )
    top = int(array.max()) + 1 if array.size else 0
    n_phases = top if n_phases is None else int(n_phases)
    if n_phases < top:
        raise InputError(f"labels to write to {path} go up to {top - 1} but n_phases is {n_phases}")
    description = {
        "kind": "labels",
        "n_phases": n_phases,
        "phases": list(range(n_phases)),
        "axes": "YX" if array.ndim == 2 else "ZYX",
        "software": f"jaxmicro {_package_version()}",
    }
    resolution: dict[str, Any] = {}
    voxel = units.per_axis(voxel_size, array.ndim)
    if voxel is not None:
        description.update(voxel.to_json())
        y_side, x_side = voxel.sides[-2:]
        if voxel.unit in units.LENGTH_UNITS:  # TIFF knows centimetres: pixels per cm
            per_cm = units.LENGTH_UNITS["cm"] / units.LENGTH_UNITS[voxel.unit]
            resolution = {"resolution": (per_cm / x_side, per_cm / y_side), "resolutionunit": "CENTIMETER"}
        else:
            resolution = {"resolution": (1.0 / x_side, 1.0 / y_side), "resolutionunit": "NONE"}
    if metadata:
        description.update(to_jsonable(metadata))
    with atomic_write_path(path) as temp:
        tifffile.imwrite(
            temp,
            array.astype(np.uint8),
            compression="zlib",
            photometric="minisblack",
            metadata=description,
            software="jaxmicro",
            **resolution,
        )


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/JAX arrays and scalars, paths, tuples, sets and dataclasses to plain JSON types.

    Non-finite floats (NaN, ±inf) become ``None`` (JSON ``null``), since JSON has no NaN.
    """
    if isinstance(obj, dict):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if hasattr(obj, "_asdict"):  # NamedTuple
        return to_jsonable(obj._asdict())
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return to_jsonable(np.asarray(obj).tolist())
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON: {obj!r}")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically (converted with `to_jsonable` first)."""
    text = json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic_write(path) as file:
        file.write(text.encode("utf-8"))


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 150, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure atomically; the format comes from the extension (``.png``, ``.pdf``, ``.svg``)."""
    path = Path(path)
    file_format = path.suffix.lstrip(".").lower()
    if not file_format:
        raise InputError(f"cannot tell the figure format of {path}: give it an extension such as .png or .pdf")
    with atomic_write_path(path) as temp:
        fig.savefig(temp, format=file_format, dpi=dpi, **savefig_kwargs)


# --------------------------------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------------------------------


def prepare_output_dir(path: str | os.PathLike[str], *, force: bool = False, expected: Iterable[str] = ()) -> Path:
    """Create the output folder if needed and check that it can be written without clobbering results.

    Raises InputError if a file is in the way, the folder cannot be created or written (with the reason), or
    any of the ``expected`` output names already exists there and ``force`` is false.
    Returns the folder as a `Path`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"the output folder {path} is an existing file, not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        where = f": {blocker} is a file, not a folder" if blocker is not None else f" ({error.strerror})"
        raise InputError(f"cannot create the output folder {path}{where}; choose another --out") from error
    except OSError as error:
        raise InputError(
            f"cannot create the output folder {path}: {error.strerror or error}; choose another --out"
        ) from error
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".jaxmicro-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise InputError(
            f"cannot write into the output folder {path}: {error.strerror or error}; fix its permissions or "
            "choose another --out"
        ) from error
    existing = [name for name in expected if (path / name).exists()]
    if existing and not force:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise InputError(
            f"the output folder {path} already holds {shown}; pass --force to overwrite, or choose another --out"
        )
    return path

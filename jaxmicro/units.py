"""Physical voxel sizes: parsing ``0.5um`` or ``1x0.5x0.5 um``, one side per axis, and the unit names.

A voxel size is a `VoxelSize`: one side length per image axis (``(z, y, x)`` order, as the arrays) and a unit
string. Statistics take ``voxel_size=`` as a number (cubic voxels, no unit), a sequence of per-axis numbers, a
text such as ``"0.5um"``, or a `VoxelSize`; ``None`` keeps everything in pixels.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Sequence

from jaxmicro.errors import InputError

__all__ = ["LENGTH_UNITS", "VoxelSize", "parse_voxel_size", "per_axis", "unit_label"]

LENGTH_UNITS = {"nm": 1e-3, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6, "inch": 25400.0}
"""Micrometres per unit of the length units jaxmicro converts between (TIFF resolution tags, ImageJ)."""
_ALIASES = {"µm": "um", "μm": "um", "micron": "um", "microns": "um", "micrometer": "um", "micrometre": "um",
            "nanometer": "nm", "nanometre": "nm", "millimeter": "mm", "millimetre": "mm", "centimeter": "cm",
            "centimetre": "cm", "meter": "m", "metre": "m", "in": "inch", "inches": "inch"}
_EXAMPLE = "e.g. --voxel-size 0.5um (cubic voxels) or --voxel-size 2x0.5x0.5um (z, y, x)"


class VoxelSize(NamedTuple):
    """Side lengths of a pixel or voxel along each axis (array order) and their unit (``""``: none given)."""

    sides: tuple[float, ...]
    unit: str = ""

    @property
    def isotropic(self) -> bool:
        return all(s == self.sides[0] for s in self.sides)

    def to_json(self) -> dict:
        return {"voxel_size": list(self.sides), "unit": self.unit or None}

    def scaled(self, factors: Sequence[int]) -> VoxelSize:
        """The voxel size after merging ``factors[a]`` voxels along each axis (downsampling)."""
        return VoxelSize(tuple(s * f for s, f in zip(self.sides, factors)), self.unit)


def normalise_unit(unit: str) -> str:
    """``"µm"``, ``"micron"`` -> ``"um"``; known units in their short form, other texts as given."""
    text = unit.strip()
    return _ALIASES.get(text.lower(), text.lower() if text.lower() in LENGTH_UNITS else text)


def parse_voxel_size(value) -> VoxelSize | None:
    """``"0.5um"``, ``"0.5 µm"``, ``"2x0.5x0.5um"``, ``0.5``, ``(2, 0.5, 0.5)`` or a `VoxelSize` -> `VoxelSize`
    (``None`` stays ``None``). Every side must be a positive finite number."""
    if value is None or isinstance(value, VoxelSize):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9eE.+\-]+(?:\s*[xX×]\s*[0-9eE.+\-]+)*)\s*([^\d\s].*?)?\s*", value)
        if not match:
            raise InputError(f"cannot read the voxel size {value!r}: {_EXAMPLE}")
        try:
            sides = tuple(float(p) for p in re.split(r"\s*[xX×]\s*", match.group(1).strip()))
        except ValueError:
            raise InputError(f"cannot read the voxel size {value!r}: {_EXAMPLE}") from None
        unit = normalise_unit(match.group(2) or "")
    else:
        items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        try:
            items = list(items)
        except TypeError:
            raise InputError(f"cannot read the voxel size {value!r}: give a number or one per axis") from None
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) and not hasattr(s, "__float__")
               for s in items):
            raise InputError(f"cannot read the voxel size {value!r}: give a number or one per axis")
        sides, unit = tuple(float(s) for s in items), ""
    if not 1 <= len(sides) <= 3 or not all(math.isfinite(s) and s > 0 for s in sides):
        raise InputError(f"the voxel size {value!r} needs 1 to 3 positive finite sides: {_EXAMPLE}")
    return VoxelSize(sides, unit)


def per_axis(voxel_size, ndim: int) -> VoxelSize | None:
    """The voxel size with one side per axis of an ``ndim``-dimensional image: one side (or equal ones: a 2D
    exemplar of a volume) is used for every axis; otherwise there must be ``ndim`` of them."""
    voxel = parse_voxel_size(voxel_size)
    if voxel is None:
        return None
    if len(voxel.sides) == 1 or (voxel.isotropic and len(voxel.sides) != ndim):
        return VoxelSize(voxel.sides * ndim, voxel.unit)
    if len(voxel.sides) != ndim:
        raise InputError(f"the voxel size has {len(voxel.sides)} sides but the image has {ndim} axes; give one side "
                         f"(cubic voxels) or {ndim} in array order ({'z, ' if ndim == 3 else ''}y, x)")
    return voxel


def unit_label(voxel: VoxelSize | None) -> str:
    """The unit of a distance for labels and tables: ``"pixels"`` without a voxel size."""
    if voxel is None:
        return "pixels"
    return voxel.unit or "length units"

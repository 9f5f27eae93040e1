"""Stored reconstruction targets: an exemplar's statistics in one file, to reconstruct without the image.

``save_targets(path, characterisation)`` writes a ``jaxmicro.reconstruction.Characterisation`` (made by
``characterise``: the Gram matrices per tap and direction, two-point correlation windows, phase fractions,
interface measures and lineal paths of every coarse-to-fine level, the Gaussian start's correlations and the
exemplar's share of isolated pixels) as one ``.npz`` file with a JSON header: the format version, the network
spec (taps, widths, dtype, padding, pooling, convolution, products) and the content digest of the weights the Gram
matrices were computed with. ``load_targets(path)`` reads it back, refusing a file of a newer format version
or one that is damaged; ``reconstruct(targets=...)`` refuses one made for another network, weights, shape or
correlation radius, each with the reason.
"""

from __future__ import annotations

import io as _io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from jaxmicro import vgg
from jaxmicro.descriptors import Descriptors
from jaxmicro.errors import InputError
from jaxmicro.reconstruction import Characterisation, LevelTargets, ReconstructionConfig
from jaxmicro.refine import LabelTargets
from jaxmicro.refine_volume import VolumeTargets

__all__ = ["FORMAT", "FORMAT_VERSION", "describe_targets", "file_digest", "load_targets", "params_digest",
           "read_header", "save_targets"]

FORMAT = "jaxmicro-targets"
FORMAT_VERSION = 2
"""Version of the targets file layout; a file of a higher version is refused (made by a newer jaxmicro). Version 2:
a grayscale exemplar's two-point targets are of its intensity minus the mean (version 1 grayscale files are
refused; phase-image files of version 1 read as before)."""
_HEADER = "header.json"


def params_digest(params, taps: Sequence[str]) -> str:
    """Content digest (``jaxmicro.weights.content_digest``: names, dtypes, shapes and bytes) of the weights of
    the convolutions ``taps`` need: two sets of weights give the same Gram matrices only if this agrees."""
    from jaxmicro.weights import content_digest

    arrays = {}
    for conv in vgg.convs_needed(taps):
        if conv not in params:
            raise InputError(f"the network weights have no {conv}, which the taps {', '.join(taps)} need")
        for name, value in params[conv].items():
            arrays[f"{conv}/{name}"] = np.asarray(value)
    return content_digest(arrays)


def _config_json(config: ReconstructionConfig) -> dict:
    out = {}
    for name, value in config._asdict().items():
        if name == "dtype":
            value = str(jnp.dtype(value))
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def _config_from_json(data: dict) -> ReconstructionConfig:
    values = {}
    for name in ReconstructionConfig._fields:
        if name not in data:
            continue
        value = data[name]
        if name == "dtype":
            value = jnp.dtype(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return ReconstructionConfig(**values)


def _level_arrays(prefix: str, level: LevelTargets) -> dict[str, np.ndarray]:
    targets = level.targets
    arrays = {}
    for d, grams in enumerate(targets.grams):
        for tap, gram in grams.items():
            arrays[f"{prefix}grams/{d}/{tap}"] = np.asarray(gram)
    for d, window in enumerate(targets.correlation):
        arrays[f"{prefix}correlation/{d}"] = np.asarray(window)
    arrays[f"{prefix}fractions"] = np.asarray(targets.fractions)
    arrays[f"{prefix}interface"] = np.asarray(targets.interface)
    arrays[f"{prefix}lineal_path"] = np.asarray(targets.lineal_path)
    if level.correlations is not None:
        arrays[f"{prefix}gaussian_start_correlations"] = np.asarray(level.correlations)
    if level.isolated_share is not None:
        arrays[f"{prefix}isolated_share"] = np.asarray(level.isolated_share)
    if level.label_targets is not None:
        for name, value in level.label_targets._asdict().items():
            arrays[f"{prefix}label_targets/{name}"] = np.asarray(value)
    return arrays


def save_targets(path: str | os.PathLike[str], characterisation: Characterisation, *,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``characterisation`` to ``path`` (one ``.npz``, atomically) with its JSON header; ``extra``: more
    JSON-ready facts for the header (the exemplar file, its mapping and voxel size, ...). Returns the path."""
    from jaxmicro.io import _package_version, atomic_write, to_jsonable

    if not isinstance(characterisation, Characterisation):
        raise InputError(f"save_targets needs a Characterisation (jaxmicro.reconstruction.characterise), "
                         f"not {type(characterisation).__name__}")
    first = characterisation.levels[0].config
    arrays: dict[str, np.ndarray] = {}
    levels = []
    for k, level in enumerate(characterisation.levels):
        arrays.update(_level_arrays(f"level{k}/", level))
        levels.append({"exemplar_shapes": [list(s) for s in level.exemplar_shapes],
                       "config": _config_json(level.config), "directions": len(level.targets.correlation),
                       "gram_directions": len(level.targets.grams)})
    header = {
        "format": FORMAT, "version": FORMAT_VERSION, "jaxmicro_version": _package_version(),
        "network": {"taps": list(first.taps), "widths": list(first.widths), "dtype": str(jnp.dtype(first.dtype)),
                    "padding": first.padding, "pooling": first.pooling, "convolution": first.convolution,
                    "products": first.products,
                    "weights_digest": characterisation.weights_digest},
        "shape": list(first.shape), "n_phases": characterisation.n_phases, "grayscale": characterisation.grayscale,
        "per_direction": characterisation.per_direction, "finest_feature": characterisation.finest,
        "levels": levels, **to_jsonable(extra or {}),
    }
    path = Path(path)
    buffer = _io.BytesIO()
    np.savez(buffer, **arrays, **{_HEADER: np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)})
    with atomic_write(path) as file:
        file.write(buffer.getvalue())
    return path


def _open(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: no such targets file; make one with: jaxmicro characterise EXEMPLAR --out {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a jaxmicro targets file (not an .npz archive); make one with "
                         "jaxmicro characterise")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"{path} is damaged ({type(error).__name__}: {error}); characterise the exemplar again") \
            from error


def read_header(path: str | os.PathLike[str]) -> dict:
    """The JSON header of a targets file, checked for the format and its version."""
    path = Path(path)
    with _open(path) as archive:
        return _header(path, archive)


def _header(path: Path, archive) -> dict:
    again = "characterise the exemplar again"
    if _HEADER not in archive.files:
        raise InputError(f"{path} holds no jaxmicro header: it is an .npz file but not a targets file; {again}")
    try:
        header = json.loads(archive[_HEADER].tobytes().decode("utf-8"))
    except (ValueError, zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{path}: its header is damaged ({error}); {again}") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InputError(f"{path} is not a jaxmicro targets file (format {header.get('format')!r}); {again}"
                         if isinstance(header, dict) else f"{path}: its header is damaged; {again}")
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise InputError(f"{path}: its header gives no valid format version ({version!r}); {again}")
    if version > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer jaxmicro ({header.get('jaxmicro_version')}, targets "
                         f"format {version}); this one reads format {FORMAT_VERSION}. Upgrade jaxmicro, or {again}")
    if version < 2 and header.get("grayscale"):
        raise InputError(f"{path} holds grayscale targets of an earlier jaxmicro (targets format {version}), whose "
                         f"two-point statistics were not of the centred intensity as now; {again}")
    return header


def _label_targets(archive, prefix: str) -> LabelTargets | VolumeTargets | None:
    """A level's ``LabelTargets`` (images) or ``VolumeTargets`` (volumes), each field ``(B, ...)``, or None where
    the file has none; files written before the largest-cluster targets get NaN there (no cluster term)."""
    volume = {field: prefix + "label_targets/" + field for field in VolumeTargets._fields}
    if all(name in archive.files for name in volume.values()):
        return VolumeTargets(**{field: archive[name] for field, name in volume.items()})
    names = {field: prefix + "label_targets/" + field for field in LabelTargets._fields}
    if not all(name in archive.files for field, name in names.items() if field != "largest_cluster"):
        return None
    arrays = {field: archive[name] for field, name in names.items() if name in archive.files}
    arrays.setdefault("largest_cluster", np.full(arrays["faces"].shape, np.nan))
    return LabelTargets(**arrays)


def load_targets(path: str | os.PathLike[str]) -> Characterisation:
    """Read a targets file written by `save_targets` (or ``jaxmicro characterise``)."""
    path = Path(path)
    with _open(path) as archive:
        header = _header(path, archive)
        try:
            levels = []
            for k, info in enumerate(header["levels"]):
                prefix = f"level{k}/"
                config = _config_from_json(info["config"])

                def get(name, prefix=prefix):
                    return jnp.asarray(archive[prefix + name])

                grams = tuple({tap: get(f"grams/{d}/{tap}") for tap in config.taps}
                              for d in range(info["gram_directions"]))
                correlation = tuple(get(f"correlation/{d}") for d in range(info["directions"]))
                targets = Descriptors(grams, correlation, get("fractions"), get("interface"),
                                      lineal_path=get("lineal_path"))
                optional = {name: np.asarray(archive[prefix + name]) if prefix + name in archive.files else None
                            for name in ("gaussian_start_correlations", "isolated_share")}
                levels.append(LevelTargets(tuple(tuple(s) for s in info["exemplar_shapes"]), config, targets,
                                           None if optional["gaussian_start_correlations"] is None else
                                           jnp.asarray(optional["gaussian_start_correlations"]),
                                           optional["isolated_share"],
                                           _label_targets(archive, prefix)))
        except (KeyError, TypeError, ValueError, zipfile.BadZipFile, OSError) as error:
            raise InputError(f"{path} is damaged or incomplete ({type(error).__name__}: {error}); characterise "
                             "the exemplar again") from error
    if not levels:
        raise InputError(f"{path} holds no levels; characterise the exemplar again")
    network = header.get("network", {})
    return Characterisation(header.get("n_phases"), bool(header.get("per_direction")), header.get("finest_feature"),
                            tuple(levels), network.get("weights_digest"))


def describe_targets(header: dict) -> str:
    """One line for the terminal about a targets file's header."""
    shape = "x".join(map(str, header["shape"]))
    kind = "grayscale" if header.get("grayscale") else f"{header['n_phases']} phases"
    network = header["network"]
    return (f"targets for {shape} ({kind}), {len(header['levels'])} level(s), taps {','.join(network['taps'])}, "
            f"{network['dtype']}")


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a targets file's bytes (what a run folder's fingerprint records for --resume)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

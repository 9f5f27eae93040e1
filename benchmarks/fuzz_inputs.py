"""Seeded mutation fuzzing of every file jaxmicro reads, and of the command line's values.

Each case takes a valid file (2D/3D TIFF, PNG, NPY; the weights cache: its .npz and the sidecar .json; a
checkpoint folder), applies one seeded mutation (bit flips, truncation, inserted bytes, zeroed bytes, a header
edit, a structural edit) and reads the result the way jaxmicro does. A command-line case gives random strings as
option values (``--shape``, ranges, phase lists) to ``jaxmicro.cli.main``.

Outcomes: ``read`` (the mutation left a valid file, e.g. a changed pixel value; a checkpoint must then restore
exactly what was saved), ``refused`` (InputError / WeightsError whose message names the file; exit code 2 on the
command line) and failures: ``unnamed`` (refused without naming the file), ``crash <Type>`` (any other
exception), ``silently different`` (a checkpoint restored with other values), ``cli <problem>``.
Prints counts per outcome per format and exits 1 if any case failed.

Run: ``python benchmarks/fuzz_inputs.py [--cases 10000] [--seed 0] [--formats npy,png,...]``.
tests/test_fuzz.py runs a few hundred cases of the same generator.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io as _io
import json
import logging
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxmicro import io as jio, weights as jweights
from jaxmicro.errors import InputError, WeightsError

IMAGE_FORMATS = ("tiff-2d", "tiff-3d", "png", "npy")
FILE_FORMATS = (*IMAGE_FORMATS, "weights-npz", "weights-json", "checkpoint")
FORMATS = (*FILE_FORMATS, "cli-values")
FAILURE_PREFIXES = ("unnamed", "crash", "silently", "cli ")


# --------------------------------------------------------------------------------------------- valid files


def _labels(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) < 0.4).astype(np.uint8) + (rng.random(shape) < 0.2).astype(np.uint8)


def make_image_seeds(folder: Path) -> dict[str, list[Path]]:
    """Small valid images of every kind the reader accepts, grouped by format."""
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, list[Path]] = {f: [] for f in IMAGE_FORMATS}

    def add(fmt, name, write):
        path = folder / name
        write(path)
        seeds[fmt].append(path)

    labels2, labels3 = _labels((20, 24)), _labels((4, 12, 10), 1)
    add("tiff-2d", "labels_zlib.tif", lambda p: jio.write_labels_tiff(p, labels2))
    add("tiff-2d", "gray_u16.tif", lambda p: tifffile.imwrite(p, labels2.astype(np.uint16) * 20000))
    add("tiff-2d", "float.tif", lambda p: tifffile.imwrite(p, labels2.astype(np.float32) / 2))
    add("tiff-3d", "volume_zlib.tif", lambda p: jio.write_labels_tiff(p, labels3))
    add("tiff-3d", "volume_pages.tif", lambda p: tifffile.imwrite(p, labels3, photometric="minisblack"))
    add("png", "labels.png", lambda p: Image.fromarray(labels2 * 100).save(p))
    add("png", "gray16.png", lambda p: Image.fromarray(labels2.astype(np.uint16) * 20000).save(p))
    add("png", "rgb.png", lambda p: Image.fromarray(np.stack([labels2 * 100] * 3, -1)).save(p))
    add("npy", "labels.npy", lambda p: np.save(p, labels2))
    add("npy", "volume.npy", lambda p: np.save(p, labels3.astype(np.int32)))
    add("npy", "gray.npy", lambda p: np.save(p, labels2.astype(np.float64) / 3))
    return seeds


# ---------------------------------------------------------------------------------------------- mutations

_INTERESTING_INTS = (0, 1, 2, 3, 7, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)
_HEADER_TEXT = "(){}[]'\":, 0123456789-+.eEjLxX<>|=\\\n\t\x00ufibc?OUSV" + "descrfortanshape"


def _bit_flips(data: bytearray, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return "bit flips"


def _truncate(data: bytearray, rng: random.Random) -> str:
    del data[rng.randrange(len(data)) :]
    return "truncation"


def _insert(data: bytearray, rng: random.Random) -> str:
    i = rng.randrange(len(data) + 1)
    data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return "inserted bytes"


def _zero(data: bytearray, rng: random.Random) -> str:
    i = rng.randrange(len(data))
    n = rng.choice((1, 2, 4, 8, 64, 1024))
    data[i : i + n] = bytes(len(data[i : i + n]))
    return "zeroed bytes"


def _npy_header_edit(data: bytearray, rng: random.Random, start: int = 0, keep_length: bool = False) -> str:
    """Edit the text of an NPY header (at ``start``): a character, the shape, the dtype or the length field.

    ``keep_length``: pad or cut the edited text to the original length (inside a zip, whose directory records
    where each member starts).
    """
    major = data[start + 6] if len(data) > start + 6 else 1
    length_size = 2 if major == 1 else 4
    body = start + 8 + length_size
    (length,) = struct.unpack("<H" if length_size == 2 else "<I", bytes(data[start + 8 : body]))
    header = bytes(data[body : body + length]).decode("latin1")
    choice = rng.randrange(6)
    if choice == 0:  # one character of the dict
        i = rng.randrange(len(header))
        header = header[:i] + rng.choice(_HEADER_TEXT) + header[i + 1 :]
    elif choice == 1:  # an absurd, negative or malformed shape
        shape = rng.choice(["(10**12, 10**12)", "(99999999999999, 2)", "(-1, 4)", "(2**62, 2**62, 4)", "()",
                            "(3,", "(1e3, 4)", "('a', 2)", "(" + "9" * rng.randint(5, 400) + ",)", "(0, 20)",
                            f"({rng.randint(0, 10**rng.randint(1, 20))}, {rng.randint(0, 99)})"])
        header = header[: header.find("'shape':")] + f"'shape': {shape}, }}" if "'shape':" in header else header
    elif choice == 2:  # another dtype
        descr = rng.choice(["'<f8'", "'|O'", "'<U999999999'", "'>i8'", "'|V16'", "[('a', '<i4')]", "'<c16'",
                            "'|b1'", "'<M8[s]'", "'zz'", "42", "'<f2'", "'<i4'", "\"'\"", "'S0'"])
        start_descr = header.find("'descr':")
        end_descr = header.find(", 'fortran_order'")
        if start_descr >= 0 and end_descr > start_descr:
            header = header[:start_descr] + f"'descr': {descr}" + header[end_descr:]
    elif choice == 3:  # the header length field
        value = rng.choice((0, 1, 9, len(header) - 1, len(header) + 1, 0xFFFF, rng.randrange(0x10000)))
        data[start + 8 : start + 10] = struct.pack("<H", value)
        return "header edit (length field)"
    elif choice == 4:  # the version bytes
        data[start + 6 : start + 8] = bytes([rng.choice((0, 1, 2, 3, 255)), rng.choice((0, 1, 255))])
        return "header edit (version)"
    else:  # cut the header text short or pad it with something else
        header = header[: rng.randrange(len(header))] + rng.choice(["", "\n", "}", "'", "(", "\\", "\x00" * 4])
    encoded = header.encode("latin1")
    if keep_length:
        encoded = encoded[:length].ljust(length, b" ")
    data[body : body + length] = encoded
    data[start + 8 : body] = struct.pack("<H" if length_size == 2 else "<I", len(encoded))
    return "header edit"


def _png_header_edit(data: bytearray, rng: random.Random) -> str:
    """Change an IHDR field (size, bit depth, colour type, ...) or a chunk length, and fix the IHDR CRC."""
    if rng.random() < 0.25:  # the length field of a random chunk
        position, lengths = 8, []
        while position + 8 <= len(data):
            lengths.append(position)
            (length,) = struct.unpack(">I", bytes(data[position : position + 4]))
            position += 12 + length
        where = rng.choice(lengths)
        data[where : where + 4] = struct.pack(">I", rng.choice(_INTERESTING_INTS))
        return "header edit (chunk length)"
    ihdr = bytearray(data[16:29])
    field = rng.randrange(7)
    if field < 2:
        ihdr[4 * field : 4 * field + 4] = struct.pack(">I", rng.choice(_INTERESTING_INTS + (100000, 1 << 20)))
    else:
        ihdr[6 + field] = rng.choice((0, 1, 2, 3, 4, 5, 6, 8, 16, 32, 255))
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return "header edit"


def _tiff_header_edit(data: bytearray, rng: random.Random) -> str:
    """Overwrite the count or value of a random tag of the first IFD (or the IFD offset) with an extreme."""
    little = data[:2] == b"II"
    order = "<" if little else ">"
    (ifd,) = struct.unpack(order + "I", bytes(data[4:8]))
    if rng.random() < 0.1 or ifd + 2 > len(data):
        data[4:8] = struct.pack(order + "I", rng.choice(_INTERESTING_INTS + (len(data), len(data) - 2)))
        return "header edit (IFD offset)"
    (n_tags,) = struct.unpack(order + "H", bytes(data[ifd : ifd + 2]))
    if n_tags == 0 or ifd + 2 + 12 * n_tags > len(data):
        return _bit_flips(data, rng)
    entry = ifd + 2 + 12 * rng.randrange(n_tags)
    part = rng.randrange(4)
    if part == 0:  # tag type
        data[entry + 2 : entry + 4] = struct.pack(order + "H", rng.choice((0, 1, 2, 3, 4, 5, 11, 12, 16, 99)))
    elif part == 1:  # count
        data[entry + 4 : entry + 8] = struct.pack(order + "I", rng.choice(_INTERESTING_INTS))
    else:  # value or offset
        data[entry + 8 : entry + 12] = struct.pack(order + "I", rng.choice(_INTERESTING_INTS))
    return "header edit"


def _json_edit(data: bytearray, rng: random.Random) -> str:
    """A structural edit of a JSON document: a value of another type, a missing key, not an object."""
    try:
        document = json.loads(bytes(data))
    except ValueError:
        return _bit_flips(data, rng)
    if isinstance(document, dict) and document and rng.random() < 0.8:
        key = rng.choice(sorted(document))
        if rng.random() < 0.3:
            del document[key]
        else:
            document[key] = rng.choice([None, -1, 0, 10**30, 1.5, "", "x" * 64, [], {}, [1, 2], True, "nan"])
    else:
        document = rng.choice([[], [1, 2], "text", 3, None, {"unexpected": 1}])
    data[:] = json.dumps(document).encode()
    return "header edit (JSON)"


def mutate(data: bytes, rng: random.Random, kind: str) -> tuple[str, bytes]:
    """One seeded mutation of ``data``; header edits understand the format ``kind`` (npy, png, tiff, npz, json)."""
    mutable = bytearray(data)
    generic = (_bit_flips, _truncate, _insert, _zero)
    if rng.random() < 0.8 or kind not in ("npy", "png", "tiff", "npz", "json"):
        return rng.choice(generic)(mutable, rng), bytes(mutable)
    if kind == "npy":
        name = _npy_header_edit(mutable, rng)
    elif kind == "npz":  # np.savez stores its members uncompressed: edit one member's NPY header in place
        starts = [i for i in range(len(data)) if data.startswith(b"\x93NUMPY", i)]
        name = _npy_header_edit(mutable, rng, rng.choice(starts), keep_length=True) + " in a member"
    elif kind == "png":
        name = _png_header_edit(mutable, rng)
    elif kind == "tiff":
        name = _tiff_header_edit(mutable, rng)
    else:
        name = _json_edit(mutable, rng)
    return name, bytes(mutable)


# ------------------------------------------------------------------------------------------------- outcomes


def _refusal(error: Exception, *names: str | Path) -> str:
    message = str(error)
    if not any(str(name) in message for name in names):
        return f"unnamed {type(error).__name__}"
    return "refused"


def read_image_case(path: Path) -> str:
    """The outcome of reading one (mutated) image with `jaxmicro.io.read_microstructure`."""
    try:
        jio.read_microstructure(path)
        return "read"
    except InputError as error:
        return _refusal(error, path)
    except Exception as error:  # noqa: BLE001 - counted as a failure
        return f"crash {type(error).__name__}"


# weights: a registry of two tiny stand-ins for VGG19, one checked against the registry's digest, one against
# the digest in its sidecar json (user-converted weights)
_TINY_WIDTHS = (2, 2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4)


def make_weights_seed(folder: Path) -> tuple[Path, Path, Path]:
    """Tiny converted weights with a sidecar in ``folder``: (registry, npz, sidecar). Sets the cache dir."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["JAXMICRO_CACHE_DIR"] = str(folder)
    rng = np.random.default_rng(0)
    state, previous = {}, 3
    for width, index in zip(_TINY_WIDTHS, jweights._TORCHVISION_FEATURE_INDICES):
        state[f"features.{index}.weight"] = rng.standard_normal((width, previous, 3, 3)).astype(np.float32)
        state[f"features.{index}.bias"] = rng.standard_normal(width).astype(np.float32)
        previous = width
    registry = folder / "registry.json"
    registry.write_text(json.dumps({"format": 1, "weights": {"tiny_user": {"file": "tiny_user.npz"}}}))
    jweights.REGISTRY_PATH = registry
    npz = jweights.convert_torchvision_state_dict(state, name="tiny_user")
    return registry, npz, jweights._sidecar(npz)


def load_weights_case(npz: Path, sidecar: Path) -> str:
    try:
        jweights.load_vgg19_params(npz, name="tiny_user")
        return "read"
    except WeightsError as error:
        return _refusal(error, npz, sidecar)
    except Exception as error:  # noqa: BLE001
        return f"crash {type(error).__name__}"


# checkpoints: a folder with two checkpoints of a small batched state, as Checkpointer writes them


class _State(NamedTuple):
    logits: np.ndarray
    step: np.ndarray


def _checkpoint_values(step: int) -> tuple[_State, np.ndarray]:
    rng = np.random.default_rng(step)
    state = _State(rng.standard_normal((2, 6, 6, 3)).astype(np.float32), np.full(2, step, np.int32))
    return state, rng.standard_normal((step, 2)).astype(np.float32)


def make_checkpoint_seed(folder: Path) -> Path:
    from jaxmicro.checkpoint import Checkpointer

    checkpointer = Checkpointer(folder, 5, "fingerprint")
    for step in (5, 10):
        state, history = _checkpoint_values(step)
        checkpointer.save(step, state, [{"loss": history}])
    return folder


def mutate_checkpoint(folder: Path, rng: random.Random) -> str:
    """Damage the latest checkpoint in ``folder``: one file mutated or deleted, a step renamed or emptied."""
    latest = folder / "checkpoints" / "10"
    files = sorted(p for p in latest.rglob("*") if p.is_file())
    choice = rng.random()
    if choice < 0.05:
        shutil.rmtree(latest / rng.choice(["state", "meta"]))
        return "structure (item folder deleted)"
    if choice < 0.1:
        latest.rename(latest.with_name(str(rng.choice([7, 15, 100]))))
        return "structure (step renamed)"
    path = rng.choice(files)
    if choice < 0.2:
        path.unlink()
        return "structure (file deleted)"
    kind = "json" if path.parent.name == "meta" and path.name == "metadata" else "checkpoint"
    name, data = mutate(path.read_bytes(), rng, kind)
    path.write_bytes(data)
    return name


def restore_checkpoint_case(folder: Path) -> str:
    from jaxmicro.checkpoint import Checkpointer

    template, _ = _checkpoint_values(10)
    try:
        restored = Checkpointer(folder, 5, "fingerprint", resume=True).restore(template)
    except InputError as error:
        return _refusal(error, folder)
    except Exception as error:  # noqa: BLE001
        return f"crash {type(error).__name__}"
    if restored is None:
        return "crash nothing restored"
    states, history = restored
    step = int(np.asarray(states.step)[0])
    expected_state, expected_history = _checkpoint_values(step) if step in (5, 10) else (None, None)
    same = expected_state is not None and all(
        np.array_equal(np.asarray(a), b) for a, b in zip(states, expected_state)
    ) and np.array_equal(np.concatenate([h["loss"] for h in history]), expected_history)
    return "read" if same else "silently different"


# the command line: random option values


_VALUE_TOKENS = ("0", "1", "2", "3", "16", "17", "-1", "-0", "+4", "007", "1e3", "1e999", "-1e999", "nan", "inf",
                 "-inf", "0.5", ".5", "1.", "x", "X", "×", ",", ",,", " ", "", "\t", "99999999999999999999",
                 "2**8",
                 "٣", "①", "0x10", "1_000", "true", "None", "[1]", "-", "--", "e", "\x00", "\u200b", "é", "%s", "{}")
_NUMBERS = ("1", "2", "2", "3", "3", "4", "8", "16", "0.3", "10", "0", "32", "64", "-1", "-2", "0.5", "1e-300",
            "5e-324", "1e999", "nan", "inf", "-inf", "1e9", "99999999999999999999", "9223372036854775808", "2.5", "٣",
            " 2 ", "+8")
_SEPARATORS = ("x", "X", "×", ",", " x ", ", ", ",,", "x,", ";")


def random_value(rng: random.Random) -> str:
    """Random text, or a random list of numbers joined by a separator (so that some values are valid)."""
    if rng.random() < 0.4:
        return "".join(rng.choice(_VALUE_TOKENS) for _ in range(rng.randint(1, 5)))
    separator = rng.choice(_SEPARATORS)
    return separator.join(rng.choice(_NUMBERS) for _ in range(rng.choice((1, 2, 2, 3, 4))))


def cli_value_case(rng: random.Random, exemplar: Path, out: Path) -> tuple[list[str], str]:
    """A random command line with one to three random values; returns (argv, outcome)."""
    command = rng.choice(["reconstruct", "reconstruct", "property", "describe", "compare"])
    options = {
        "reconstruct": ["--shape", "--count", "--steps", "--seed", "--learning-rate", "--layers", "--levels",
                        "--coarse-steps", "--slices-per-step", "--checkpoint-every", "--phases"],
        "property": ["--conductivity", "--young", "--poisson", "--bulk", "--shear", "--tol", "--max-iterations",
                     "--phases"],
        "describe": ["--phases"],
        "compare": ["--max-distance", "--phases"],
    }[command]
    argv = [command, str(exemplar)] + ([str(exemplar)] if command == "compare" else [])
    for option in rng.sample(options, min(len(options), rng.randint(1, 3))):
        argv += [f"{option}={random_value(rng)}"]
    if command == "reconstruct":
        argv += ["--out", str(out), "--quiet"]
    else:
        out.mkdir()
        argv += ["--json", str(out / "result.json")]
    return argv, run_cli(argv, out)


class ReachedTheNetwork(BaseException):
    """Raised instead of loading the network: the command line accepted every value (not an Exception, so that
    the command's own error handling lets it through)."""


def run_cli(argv: list[str], out: Path) -> str:
    """Run ``jaxmicro.cli.main(argv)``; the outcome is 'accepted', 'refused' or 'cli <problem>'."""
    from jaxmicro import cli

    stderr = _io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(_io.StringIO()):
            code = cli.main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    except ReachedTheNetwork:
        return "accepted"
    text = stderr.getvalue()
    if code == 0:
        return "accepted"
    if code != 2:
        return f"cli exit {code}: {text.strip()[-300:]}"
    if "Traceback" in text or "internal error" in text:
        return f"cli traceback: {text.strip()[-300:]}"
    errors = [line for line in text.splitlines() if "error:" in line]
    if len(errors) != 1:
        return f"cli message not one line: {text.strip()[-300:]}"
    if command_wrote_files(out):
        return "cli wrote files"
    return "refused"


def command_wrote_files(out: Path) -> bool:
    return out.exists() and any(out.iterdir())


@contextlib.contextmanager
def cli_without_network():
    """Run the command line up to the point where it would load the network, and no further."""
    from jaxmicro import reconstruction

    def refuse(*args, **kwargs):
        raise ReachedTheNetwork

    saved = reconstruction.load_network_params
    reconstruction.load_network_params = refuse
    try:
        yield
    finally:
        reconstruction.load_network_params = saved


# --------------------------------------------------------------------------------------------------- driver


def run(cases: int, seed: int, formats: tuple[str, ...], workdir: Path, *, log=None) -> dict:
    """``cases`` cases spread evenly over ``formats``; returns {format: Counter(outcome)} and examples."""
    counts: dict[str, collections.Counter] = {f: collections.Counter() for f in formats}
    failures: list[tuple[str, int, str, str]] = []
    seeds = make_image_seeds(workdir / "seeds")
    npz = sidecar = checkpoint_seed = exemplar = None
    if {"weights-npz", "weights-json"} & set(formats):
        _, npz, sidecar = make_weights_seed(workdir / "weights")
    if "checkpoint" in formats:
        checkpoint_seed = make_checkpoint_seed(workdir / "checkpoint")
    if "cli-values" in formats:
        exemplar = workdir / "exemplar.npy"
        np.save(exemplar, _labels((16, 16)))
    case_dir = workdir / "case"
    for index in range(cases):
        fmt = formats[index % len(formats)]
        rng = random.Random(f"{seed}-{index}")
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir()
        if fmt in IMAGE_FORMATS:
            source = rng.choice(seeds[fmt])
            kind = {"tiff-2d": "tiff", "tiff-3d": "tiff"}.get(fmt, fmt)
            mutation, data = mutate(source.read_bytes(), rng, kind)
            path = case_dir / source.name
            path.write_bytes(data)
            outcome = read_image_case(path)
            detail = f"{source.name}: {mutation}"
        elif fmt in ("weights-npz", "weights-json"):
            target = npz if fmt == "weights-npz" else sidecar
            original = target.read_bytes()
            mutation, data = mutate(original, rng, "npz" if fmt == "weights-npz" else "json")
            target.write_bytes(data)
            try:
                outcome = load_weights_case(npz, sidecar)
            finally:
                target.write_bytes(original)
            detail = f"{target.name}: {mutation}"
        elif fmt == "checkpoint":
            folder = case_dir / "run"
            shutil.copytree(checkpoint_seed, folder)
            mutation = mutate_checkpoint(folder, rng)
            outcome = restore_checkpoint_case(folder)
            detail = mutation
        else:
            with cli_without_network():
                argv, outcome = cli_value_case(rng, exemplar, case_dir / "out")
            detail = " ".join(argv[:1] + argv[2:])
        if outcome.startswith(FAILURE_PREFIXES):
            failures.append((fmt, index, detail, outcome))
            if log:
                log(f"FAIL {fmt} case {index} ({detail}): {outcome}")
        counts[fmt][outcome.split(":")[0] if outcome.startswith("cli") else outcome] += 1
    return {"counts": counts, "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {', '.join(FORMATS)}")
    args = parser.parse_args()
    formats = tuple(args.formats.split(","))
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}")
    logging.disable(logging.ERROR)  # orbax and tifffile log what the outcome already says
    import jax
    import PIL
    import tifffile

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores; "
          f"numpy {np.__version__}, tifffile {tifffile.__version__}, Pillow {PIL.__version__}, jax {jax.__version__}")
    print(f"cases {args.cases}, seed {args.seed}, formats {', '.join(formats)}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxmicro-fuzz-") as folder:
        result = run(args.cases, args.seed, formats, Path(folder), log=lambda line: print(line, flush=True))
    elapsed = time.perf_counter() - started
    outcomes = sorted({o for c in result["counts"].values() for o in c}, key=lambda o: (o.startswith(
        FAILURE_PREFIXES), o))
    print(f"\n{'format':<14} {'cases':>6}  " + "  ".join(f"{o:>{max(len(o), 5)}}" for o in outcomes))
    for fmt, counter in result["counts"].items():
        print(f"{fmt:<14} {sum(counter.values()):>6}  "
              + "  ".join(f"{counter.get(o, 0):>{max(len(o), 5)}}" for o in outcomes))
    print(f"\n{len(result['failures'])} failures in {args.cases} cases, {elapsed:.0f} s "
          f"({1000 * elapsed / max(args.cases, 1):.1f} ms per case)")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

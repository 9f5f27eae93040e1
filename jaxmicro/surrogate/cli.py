"""``jaxmicro surrogate make-data | train | predict | evaluate``: the command line of the learned heads.

``register(subparsers)`` adds the ``surrogate`` command to the main parser; each handler checks everything it
can before it writes anything and raises ``InputError`` (one message, exit code 2) for bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxmicro import cli as shared  # the options and output helpers of every command
from jaxmicro.errors import InputError


def _numbers(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas such as 1,10, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def _widths(text: str) -> list[int]:
    """Layer widths such as 256,256: positive whole numbers."""
    return [_whole(t.strip()) for t in text.split(",") if t.strip()]


def _bar(total: int, unit: str, quiet: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=quiet, dynamic_ncols=True, desc=description)


def _vgg_params(spec):
    if spec.kind != "vgg":
        return None
    from jaxmicro import vgg
    from jaxmicro.weights import load_vgg19_params

    return load_vgg19_params(fetch=True, layers=vgg.convs_needed(spec.taps))


# --- make-data ------------------------------------------------------------------------------------------------


def _make_data(args) -> int:
    import numpy as np

    from jaxmicro.io import parse_shape, prepare_output_dir, read_microstructure
    from jaxmicro.surrogate import data

    options = data.data_options(count=args.count, shape=parse_shape(args.shape), conductivities=args.conductivity,
                                young=args.young or (), poisson=args.poisson or (), generators=args.generators,
                                seed=args.seed, tol=args.tol,
                                shard_size=args.shard_size, reconstruction_steps=args.reconstruction_steps,
                                exemplars=args.exemplars or ())
    exemplars = []
    for path in args.exemplars or ():
        image = read_microstructure(path)
        if image.n_phases != 2 or image.ndim != 2:
            raise InputError(f"{path}: exemplars must be two-phase 2D label images (found {image.n_phases} "
                             f"phases, {image.ndim}D)")
        exemplars.append(np.asarray(image.labels))
    if Path(args.out).exists() and not (Path(args.out) / data.MANIFEST).exists() and any(Path(args.out).iterdir()):
        raise InputError(f"{args.out} exists and is not a surrogate data folder; choose another --out")
    prepare_output_dir(args.out)
    params = None
    if "reconstruction" in options["generators"]:
        from jaxmicro.weights import load_vgg19_params

        params = load_vgg19_params(fetch=True)
    with _bar(options["count"], "sample", args.quiet, "make-data") as bar:
        manifest = data.make_data(args.out, options, exemplars=exemplars, params=params, progress=bar.update)
    kept = sum(s["kept"] for s in manifest["shards"].values())
    shared.say(args, f"{kept} labelled samples in {args.out} ({options['count'] - kept} dropped: not converged or "
                     "outside the bounds; see manifest.json)")
    return 0


# --- train ----------------------------------------------------------------------------------------------------


def _train(args) -> int:
    from jaxmicro.surrogate import data, heads, train

    if args.head not in heads.HEADS:
        raise InputError(f"unknown head {args.head!r}; choose from {', '.join(heads.HEADS)}")
    options = train.TrainOptions(epochs=args.epochs, batch=args.batch, learning_rate=args.learning_rate,
                                 patience=args.patience, augment=args.augment, seed=args.seed,
                                 exclude=tuple(args.exclude or ()), test_fraction=args.test_fraction)
    loaded = data.load_data(args.data)  # checks the folder before anything is written
    spec = train.spec_for(args.head, args.taps, shape=loaded["labels"].shape[1:])
    if not 1 <= args.augment <= len(data.symmetries(loaded["labels"].ndim - 1)):
        raise InputError(f"--augment must lie in 1..{len(data.symmetries(loaded['labels'].ndim - 1))}")
    unknown = [f for f in options.exclude if f not in data.GENERATORS]
    if unknown:
        raise InputError(f"--exclude: unknown generator family {unknown}; choose from {', '.join(data.GENERATORS)}")
    train.property_of(loaded, args.property)
    config = heads.HeadConfig(head=args.head, members=args.members,
                              hidden=tuple(args.hidden) if args.hidden else train.default_hidden(args.head),
                              dim=loaded["labels"].ndim - 1, components=train.default_components(args.head),
                              shape=tuple(loaded["labels"].shape[1:]) if args.head == "cnn" else (),
                              property=args.property)
    out = Path(args.out)
    if (out / "model.json").exists() and not args.force:
        raise InputError(f"{out} already holds a trained model; pass --force to train it again, or choose another "
                         "--out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder; choose another --out")
    params = _vgg_params(spec)
    with _bar(len(loaded["labels"]) * options.augment, "image", args.quiet, "features") as bar:
        stage = []

        def epoch_progress(epoch, validation):
            if not stage:
                stage.append("train")
                bar.unit = "epoch"  # before the reset, which redraws the bar
                bar.set_description("train", refresh=False)
                bar.reset(total=options.epochs)
            bar.update(1)
            bar.set_postfix(validation=f"{validation:.2e}")

        model = train.train(args.data, out, config=config, spec=spec, vgg_params=params, options=options,
                            feature_progress=bar.update, epoch_progress=epoch_progress)
    record = model.record["training"]
    shared.say(args, f"trained {args.head} head for {args.property} ({config.members} members) in {out}: best "
                     "validation loss "
                     f"{record['best_validation_loss']:.3e} at epoch {record['best_epoch']} of {record['epochs_run']}")
    return 0


# --- predict --------------------------------------------------------------------------------------------------


def _predict(args) -> int:
    import numpy as np

    from jaxmicro.io import read_microstructure
    from jaxmicro.surrogate import model as model_module

    shared.check_outputs(args, "json")
    model = model_module.load_model(args.model)
    images = []
    for path in args.files:
        image = read_microstructure(path, phases=args.phases)
        if image.n_phases != model.spec.n_phases:
            raise InputError(f"{path} has {image.n_phases} phases but the model was trained on "
                             f"{model.spec.n_phases}-phase images ({model.property_spec.describe()})")
        if image.ndim != model.config.dim:
            raise InputError(f"{path} is {image.ndim}D but the model predicts {model.config.dim}D tensors")
        images.append(np.asarray(image.labels))
    predict = model_module.make_predictor(model, _vgg_params(model.spec))
    name = model.property_spec.name
    symbol = "k" if name == "conductivity" else "C (Mandel)"
    results = {}
    for path, image in zip(args.files, images):
        mean, std, _ = predict(image[None])
        results[str(path)] = {name: mean[0].tolist(), "uncertainty": std[0].tolist()}
        shared.say(args, f"{path}: {symbol} = {np.array2string(mean[0], precision=4)} +- "
                         f"{np.array2string(std[0], precision=4)}")
    notation = {} if name == "conductivity" else {"stiffness_notation": "Mandel (shear components scaled by sqrt 2)"}
    shared.write_json_output(args, {"model": str(args.model), **model.property_spec.to_json(), **notation,
                                    "predictions": results})
    return 0


# --- evaluate -------------------------------------------------------------------------------------------------


def _evaluate(args) -> int:
    from jaxmicro.surrogate import evaluate, model as model_module

    shared.check_outputs(args, "json", "figure")
    model = model_module.load_model(args.model)
    report = evaluate.evaluate(model, args.data, _vgg_params(model.spec), split=args.split, figure=args.figure)
    shared.say(args, evaluate.format_report(report))
    shared.write_json_output(args, report)
    return 0


def register(subparsers) -> None:
    """Add ``surrogate`` with its four actions to the main parser's subparsers."""
    formatter = argparse.RawDescriptionHelpFormatter
    parent = subparsers.add_parser(
        "surrogate", formatter_class=formatter, help="learned property heads: data, training, prediction",
        epilog="examples:\n  jaxmicro surrogate make-data --out data --count 1024 --conductivity 1,10\n"
               "  jaxmicro surrogate train data --head gram --out model\n"
               "  jaxmicro surrogate make-data --out elastic --young 10,100 --poisson 0.3,0.25\n"
               "  jaxmicro surrogate train elastic --property stiffness --out stiff-model\n"
               "  jaxmicro surrogate predict model sample.tif --json k.json\n"
               "  jaxmicro surrogate evaluate model data --figure parity.png")
    sub = parent.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("make-data", help="generate structures and label them with the FFT solver",
                       formatter_class=formatter,
                       epilog="examples:\n  jaxmicro surrogate make-data --out data --count 1024 --conductivity 1,10\n"
                              "  jaxmicro surrogate make-data --out data100 --conductivity 1,100 --shape 32x32x32\n"
                              "  jaxmicro surrogate make-data --out elastic --young 10,100 --poisson 0.3,0.25")
    p.add_argument("--out", required=True, help="data folder (resumes there after an interruption)")
    p.add_argument("--count", type=_whole, default=1024, help="number of structures (default 1024)")
    p.add_argument("--shape", default="64x64", help="image shape, e.g. 64x64 or 32x32x32 (default 64x64)")
    p.add_argument("--conductivity", type=_numbers, default=[1.0, 10.0], metavar="K0,K1",
                   help="conductivity of phases 0 and 1 (default 1,10)")
    p.add_argument("--young", type=_numbers, metavar="E0,E1",
                   help="Young's moduli of phases 0 and 1: label the stiffness too (with --poisson)")
    p.add_argument("--poisson", type=_numbers, metavar="NU0,NU1", help="Poisson's ratios of phases 0 and 1")
    p.add_argument("--generators", type=_names, default=["gaussian", "disks"], metavar="NAMES",
                   help="structure families: gaussian, disks, reconstruction (default gaussian,disks)")
    p.add_argument("--exemplars", nargs="+", metavar="IMG", help="two-phase images for the reconstruction family")
    p.add_argument("--reconstruction-steps", type=_whole, default=30, help="steps per reconstruction (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-5, help="solver tolerance (default 1e-5)")
    p.add_argument("--shard-size", type=_whole, default=64, help="samples per shard file (default 64)")
    shared.add_verbosity_options(p)
    p.set_defaults(handler=_make_data)

    p = sub.add_parser("train", help="train a head on a data folder", formatter_class=formatter,
                       epilog="examples:\n  jaxmicro surrogate train data --out model\n"
                              "  jaxmicro surrogate train data --head twopoint --out baseline\n"
                              "  jaxmicro surrogate train data --exclude disks --out without-disks")
    p.add_argument("data", help="data folder from make-data")
    p.add_argument("--out", required=True, help="model folder (a killed training resumes there)")
    p.add_argument("--head", default="gram", help="gram (pruned-VGG statistics), twopoint (two-point "
                                                  "correlation + PCA baseline) or cnn (small CNN trained end to "
                                                  "end, 2D); default gram")
    p.add_argument("--taps", help="VGG taps of the gram head (default relu1_2,relu2_2,relu3_1)")
    p.add_argument("--property", default="conductivity", choices=["conductivity", "stiffness"],
                   help="what the head predicts (stiffness needs data made with --young and --poisson)")
    p.add_argument("--members", type=_whole, default=4, help="ensemble members (default 4)")
    p.add_argument("--hidden", type=_widths, metavar="W1,W2",
                   help="hidden widths (default 256,256; twopoint 128,128)")
    p.add_argument("--epochs", type=_whole, default=300)
    p.add_argument("--batch", type=_whole, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--patience", type=_whole, default=60, help="early stopping patience in epochs")
    p.add_argument("--augment", type=_whole, default=8,
                   help="symmetries per training sample (1-8 of the square, 1-48 of the cube; default 8)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of samples held out for evaluate")
    p.add_argument("--exclude", type=_names, metavar="FAMILIES", help="leave generator families out of training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite a trained model in --out")
    shared.add_verbosity_options(p)
    p.set_defaults(handler=_train)

    p = sub.add_parser("predict", help="conductivity tensors or stiffnesses of images, with the ensemble's "
                                       "uncertainty",
                       formatter_class=formatter,
                       epilog="examples:\n  jaxmicro surrogate predict model sample.tif --json k.json")
    p.add_argument("model")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--phases", type=_whole, help="segment grayscale images into N phases first")
    p.add_argument("--json", metavar="PATH", help="write {file: {conductivity or stiffness, uncertainty}} here (- "
                                                  "for standard output)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    shared.add_verbosity_options(p)
    p.set_defaults(handler=_predict)

    p = sub.add_parser("evaluate", help="accuracy of a model on a data folder (R^2, errors, parity figure)",
                       formatter_class=formatter,
                       epilog="examples:\n  jaxmicro surrogate evaluate model data --figure parity.png\n"
                              "  jaxmicro surrogate evaluate model other-data --json metrics.json")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--split", default="auto", choices=["auto", "test", "all"],
                   help="auto: the model's held-out test split when DATA is its training data, else all samples")
    p.add_argument("--figure", help="parity figure (png, pdf, svg)")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON (- for standard output)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json or --figure file")
    shared.add_verbosity_options(p)
    p.set_defaults(handler=_evaluate)

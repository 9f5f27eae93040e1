"""Learned property heads against the FFT solver: conductivity accuracy at contrast 10 and 100, out of distribution
(a generator family left out; 64x64 crops of the shared two-phase images), the two-point + PCA and end-to-end CNN
baselines, stiffness heads (Young's moduli 10 and 100), the pruning study (taps against accuracy and time per
prediction), and batched prediction speed against the solvers at 64x64 and 64^3.

Every stage caches its result in --out (data, features, models, JSON), so a killed run continues where it
stopped. Prints the device and versions; writes results.json and the figures.

    python benchmarks/surrogate.py --out /tmp/surrogate-bench --figures docs/figures
    python benchmarks/surrogate.py --count 256 --augment 2 --skip-pruning     # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.io import write_json
from jaxmicro.surrogate import data, evaluate, heads, model, train
from jaxmicro.surrogate.features import make_featurizer
from jaxmicro.surrogate.properties import PropertySpec

C10 = PropertySpec("conductivity", conductivities=(1.0, 10.0))
ELASTIC = {"young": (10.0, 100.0), "poisson": (0.3, 0.25)}
STIFFNESS = PropertySpec("stiffness", **ELASTIC)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TWO_PHASE = ("li2018_alloy_2d_256.npy", "li2018_carbonate_2d_256.npy", "li2018_ceramics_2d_256.npy",
             "li2018_copolymer_2d_256.npy", "li2018_pmma_2d_256.npy", "li2018_sandstone_2d_256.npy")
PRUNING = (("relu1_1",), ("relu1_2",), ("relu1_2", "relu2_1"), ("relu1_2", "relu2_2"),
           ("relu1_2", "relu2_2", "relu3_1"), ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2"))


def timed(function, *args, repeats=5):
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def cached(path: Path, compute):
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    write_json(path, result)
    return json.loads(path.read_text())


def vgg_params():
    from jaxmicro.weights import load_vgg19_params

    return load_vgg19_params(fetch=True, layers=["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2"])


def trained_model(folder: Path, fit, data_folder, params):
    """A model trained before (calibrated now if it was trained without an uncertainty scale), or ``fit()``."""
    if not (folder / "model.json").exists():
        return fit()
    trained = model.load_model(folder)
    if "uncertainty_scale" not in trained.record:
        loaded = data.load_data(data_folder)
        index = np.asarray(trained.record["split"]["validation"])
        _, _, members = model.make_predictor(trained, params)(loaded["labels"][index])
        trained.record["uncertainty_scale"] = model.uncertainty_scale(
            members, loaded[trained.property_spec.name][index])
        model.save_model(folder, trained)
    return trained


def train_and_evaluate(out, folder, name, params, args, head="gram", taps=None, exclude=(), prop="conductivity"):
    spec = train.spec_for(head, taps)
    config = heads.HeadConfig(head=head, members=args.members, components=train.default_components(head),
                              hidden=train.default_hidden(head), property=prop)
    options = train.TrainOptions(epochs=args.epochs, augment=args.augment, exclude=tuple(exclude))
    start = time.perf_counter()
    trained = trained_model(out / name, lambda: train.train(
        folder, out / name, config=config, spec=spec, vgg_params=params if head == "gram" else None,
        options=options, feature_cache=out / "features"), folder, params)
    seconds = time.perf_counter() - start
    report = evaluate.evaluate(trained, folder, params, split="test")
    report["train_seconds_with_features_cached_or_not"] = seconds
    report["history_epochs"] = len(trained.record["history"])
    return report


def cnn_baseline(out, folder, args, epochs=60):
    """The small CNN trained end to end on the images (2 members, 2 symmetries, ``epochs`` epochs: the CPU budget
    of this benchmark)."""
    config = heads.HeadConfig(head="cnn", hidden=(64,), members=2, shape=(64, 64))
    start = time.perf_counter()
    trained = trained_model(out / "cnn", lambda: train.train(
        folder, out / "cnn", config=config, spec=train.spec_for("cnn"), vgg_params=None,
        feature_cache=out / "features", options=train.TrainOptions(epochs=epochs, augment=2, patience=15)),
        folder, None)
    report = evaluate.evaluate(trained, folder, None, split="test")
    report["train_seconds"] = time.perf_counter() - start
    report["epochs_run"] = len(trained.record["history"])
    return report


def left_out(out, folder, params, args, family):
    """Train without ``family``; metrics on every sample of that family (none of them seen in training)."""
    name = f"c10_without_{family}"
    spec = train.spec_for("gram")
    trained = trained_model(out / name, lambda: train.train(
        folder, out / name, config=heads.HeadConfig(members=args.members), spec=spec, vgg_params=params,
        feature_cache=out / "features",
        options=train.TrainOptions(epochs=args.epochs, augment=args.augment, exclude=(family,))), folder, params)
    loaded = data.load_data(folder)
    pick = loaded["family"] == family
    mean, std, _ = model.make_predictor(trained, params)(loaded["labels"][pick])
    return {"family": family, "samples": int(pick.sum()),
            "components": evaluate.metrics(mean, std, loaded["conductivity"][pick], C10, 2),
            "inside_bounds": evaluate.inside_bounds(mean, loaded["fractions"][pick], C10, 2)}


def shared_crops(out, params, figure, prop=C10):
    """64x64 crops (16 per image) of the shared two-phase images, labelled by the solver, predicted by the c10
    head or the stiffness head (never trained on them)."""
    crops, names = [], []
    for name in TWO_PHASE:
        path = SHARED / name
        if not path.exists():
            continue
        image = np.load(path)
        for i in range(4):
            for j in range(4):
                crops.append(image[64 * i:64 * (i + 1), 64 * j:64 * (j + 1)])
                names.append(name.split("_")[1])
    if not crops:
        return {"skipped": f"no shared images at {SHARED}"}
    crops = np.stack(crops).astype(np.uint8)
    tensor, status, _ = (np.asarray(a) for a in prop.labeller(1e-5)(jnp.asarray(crops, jnp.int32)))
    conductivity = prop.name == "conductivity"
    trained = trained_model(out / ("c10" if conductivity else "stiffness_gram"), None,
                            out / ("data_c10" if conductivity else "data_elastic"), params)
    mean, std, _ = model.make_predictor(trained, params)(crops)
    fractions = data.phase_fractions(crops, 2)
    if figure:
        evaluate.parity_figure(mean, tensor, np.asarray(names), figure, prop, 2,
                               title=f"gram head ({prop.describe()}) on 64x64 crops of the shared images")
    first = prop.component_names(2)[0][0]
    per_image = {}
    for material in sorted(set(names)):
        pick = np.asarray(names) == material
        per_image[material] = evaluate.metrics(mean[pick], std[pick], tensor[pick], prop, 2)[first]
    return {"crops": len(crops), "converged": int((status == 0).sum()),
            "components": evaluate.metrics(mean, std, tensor, prop, 2), f"{first}_per_material": per_image,
            "inside_bounds": evaluate.inside_bounds(mean, fractions, prop, 2)}


def gaussian_images(shape, batch):
    rng = np.random.default_rng(0)
    return np.stack([data.gaussian_sample(rng, shape)[0] for _ in range(batch)]).astype(np.int32)


def speed(out, params, shape, batch, head="gram", prop=C10):
    """Median seconds per sample: the solver (``prop``, tol 1e-5) and the head (features + MLP), batched."""
    images = gaussian_images(shape, batch)
    label = prop.labeller(1e-5)
    solve = timed(lambda x: label(x)[0], jnp.asarray(images), repeats=3)
    config = heads.HeadConfig(head=head, members=4, dim=len(shape), components=train.default_components(head),
                              hidden=train.default_hidden(head), property=prop.name)
    spec = train.spec_for(head)
    features = make_featurizer(spec, params)(images)
    init, apply = heads.make_head(config)
    normaliser = heads.fit_normaliser(features, config.components)  # as many PCA components as a trained head
    trained = model.Model(config, spec, model.weights_digest(params, spec), prop,
                          init(jax.random.PRNGKey(0), model.n_inputs(config, normaliser)), normaliser)
    predict = model.make_predictor(trained, params)
    start = time.perf_counter()
    predict(images)  # compile
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(3 if spec.kind == "vgg" else 11):  # milliseconds without the network: more calls, one median
        start = time.perf_counter()
        predict(images)
        times.append(time.perf_counter() - start)
    head = (statistics.median(times), min(times), max(times))
    return {"property": prop.name, "shape": list(shape), "batch": batch, "solver_seconds_per_sample": solve[0] / batch,
            "solver_spread": [solve[1] / batch, solve[2] / batch], "head_seconds_per_sample": head[0] / batch,
            "head_spread": [head[1] / batch, head[2] / batch], "head_compile_seconds": compile_seconds,
            "speedup": solve[0] / head[0]}


def solver_speed(prop, shape, batch):
    """Median seconds per sample of the solver alone (``prop``, tol 1e-5), batched."""
    images = gaussian_images(shape, batch)
    label = prop.labeller(1e-5)
    seconds = timed(lambda x: label(x)[0], jnp.asarray(images), repeats=3)
    return {"property": prop.name, "shape": list(shape), "batch": batch,
            "solver_seconds_per_sample": seconds[0] / batch}


def design_comparison(out, params, prop=C10, steps=100):
    """One design (k_xx = 4 at contrast 10, or C_1111 = 40 for the stiffness; 64x64, no statistics terms, 4
    seeds) with the solver and with the gram head in the loop: wall time and the solver's check of the final
    designs."""
    from jaxmicro.inverse_design import design
    from jaxmicro.surrogate.design import design_predictors, head_vs_solver

    conductivity = prop.name == "conductivity"
    folder = out / ("data_c10" if conductivity else "data_elastic")
    trained = trained_model(out / ("c10" if conductivity else "stiffness_gram"), None, folder, params)
    exemplar = data.load_data(folder)["labels"][0]
    component, target = ("k_xx", 4.0) if conductivity else ("C_1111", 40.0)
    phases = {"conductivity": list(prop.conductivities)} if conductivity else {"young": list(prop.young),
                                                                                  "poisson": list(prop.poisson)}
    rows = {}
    for name, predictors in (("solver", None), ("head", design_predictors(trained, params))):
        start = time.perf_counter()
        result = design(exemplar, targets={component: target}, **phases, steps=steps, count=4,
                        statistics_weight=0, predictors=predictors)
        seconds = time.perf_counter() - start
        check = head_vs_solver(trained, params, result.labels)
        rows[name] = {"seconds_with_compilation": seconds, "steps": steps, "designs": 4,
                      f"solver_{component}": check["solver"][:, 0, 0].tolist(),
                      f"head_{component}": check["head"][:, 0, 0].tolist(),
                      "head_vs_solver_disagreement": check["disagreement"].tolist()}
    rows["head_over_solver_time"] = rows["head"]["seconds_with_compilation"] / rows["solver"][
        "seconds_with_compilation"]
    return rows


def pruning(out, folder, params, args):
    rows = []
    for taps in PRUNING:
        name = "taps_" + "-".join(taps)
        report = cached(out / f"{name}.json", lambda: train_and_evaluate(out, folder, name, params, args,
                                                                         taps=taps))
        spec = train.spec_for("gram", taps)
        images = data.load_data(folder)["labels"][:64]
        featurize = make_featurizer(spec, params)
        featurize(images)
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            featurize(images)
            seconds.append((time.perf_counter() - start) / len(images))
        seconds = statistics.median(seconds)
        from jaxmicro import vgg

        rows.append({"taps": list(taps), "features": 2 * sum(
            vgg.widths_by_conv(vgg.VGG19_WIDTHS)[f"conv{t[4]}_{t[6]}"] for t in taps),
            "gflop_per_image": vgg.flops_per_image((64, 64), taps) / 1e9, "seconds_per_image": seconds,
            "k_xx": report["components"]["k_xx"], "k_yy": report["components"]["k_yy"]})
    return rows


def pruning_figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxmicro.io import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for row in rows:
        error = 100 * (row["k_xx"]["median_relative_error"] + row["k_yy"]["median_relative_error"]) / 2
        ax.scatter(row["gflop_per_image"], error)
        ax.annotate(",".join(t.replace("relu", "") for t in row["taps"]), (row["gflop_per_image"], error),
                    fontsize=7)
    ax.set_xlabel("network GFLOP per 64x64 image (time per image: docs/surrogate.md)")
    ax.set_ylabel("median relative error of k_xx, k_yy (%)")
    ax.set_title("taps of the pruned VGG19 against accuracy (contrast 10)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def report_pruning(rows, figures):
    for row in rows:
        print(f"{','.join(row['taps']):45s} {1000 * row['seconds_per_image']:7.2f} ms  k_xx median "
              f"{100 * row['k_xx']['median_relative_error']:.2f} %  R2 {row['k_xx']['r2']:.4f}", flush=True)
    if figures:
        pruning_figure(rows, figures / "surrogate_pruning.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/surrogate-bench")
    parser.add_argument("--figures", help="folder for the figures (e.g. docs/figures)")
    parser.add_argument("--count", type=int, default=2048)
    parser.add_argument("--augment", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--skip-pruning", action="store_true")
    parser.add_argument("--skip-3d", action="store_true")
    parser.add_argument("--only-pruning", action="store_true", help="contrast-10 data and the pruning study only")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = Path(args.figures) if args.figures else None
    if figures:
        figures.mkdir(parents=True, exist_ok=True)
    print(f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.processor() or 'cpu'}, "
          f"jax {jax.__version__}, float32; other jobs shared the CPU: times are under load", flush=True)
    params = vgg_params()
    results = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})", "jax": jax.__version__,
               "count": args.count, "augment": args.augment, "members": args.members}
    if args.only_pruning:
        folder = out / "data_c10"
        data.make_data(folder, data.data_options(count=args.count, shape=(64, 64), conductivities=(1, 10)))
        results["pruning"] = pruning(out, folder, params, args)
        report_pruning(results["pruning"], figures)
        write_json(out / "results.json", results)
        return
    for contrast in (10, 100):
        folder = out / f"data_c{contrast}"
        options = data.data_options(count=args.count, shape=(64, 64), conductivities=(1, contrast))
        start = time.perf_counter()
        manifest = data.make_data(folder, options)
        results[f"data_c{contrast}"] = {"seconds": time.perf_counter() - start,
                                        "kept": sum(s["kept"] for s in manifest["shards"].values())}
        report = cached(out / f"c{contrast}.json", lambda: train_and_evaluate(out, folder, f"c{contrast}", params,
                                                                              args))
        results[f"contrast_{contrast}"] = report
        print(f"contrast {contrast}:\n" + evaluate.format_report(report), flush=True)
        if figures and contrast == 10:
            evaluate.evaluate(trained_model(out / "c10", None, folder, params), folder, params, split="test",
                              figure=figures / "surrogate_parity_c10.png")
    folder = out / "data_c10"
    results["twopoint_baseline"] = cached(out / "twopoint.json", lambda: train_and_evaluate(
        out, folder, "twopoint", params, args, head="twopoint"))
    print("two-point + PCA baseline:\n" + evaluate.format_report(results["twopoint_baseline"]), flush=True)
    elastic_folder = out / "data_elastic"  # the contrast-10 images (same seeds), labelled with stiffness too
    start = time.perf_counter()
    manifest = data.make_data(elastic_folder, data.data_options(count=args.count, shape=(64, 64),
                                                                conductivities=(1, 10), **ELASTIC))
    results["data_elastic"] = {"seconds": time.perf_counter() - start,
                               "kept": sum(s["kept"] for s in manifest["shards"].values())}
    for head in ("gram", "twopoint"):
        results[f"stiffness_{head}"] = cached(out / f"stiffness_{head}.json", lambda: train_and_evaluate(
            out, elastic_folder, f"stiffness_{head}", params, args, head=head, prop="stiffness"))
        print(f"stiffness, {head} head:\n" + evaluate.format_report(results[f"stiffness_{head}"]), flush=True)
        results[f"speed_stiffness_{head}_64x64"] = cached(out / f"speed_stiffness_{head}_64.json", lambda: speed(
            out, params, (64, 64), 256, head=head, prop=STIFFNESS))
        print(f"speed 64x64, stiffness, {head} head: {json.dumps(results[f'speed_stiffness_{head}_64x64'])}",
              flush=True)
    if figures:
        evaluate.evaluate(trained_model(out / "stiffness_gram", None, elastic_folder, params), elastic_folder,
                          params, split="test", figure=figures / "surrogate_parity_stiffness.png")
    if not args.skip_3d:
        results["solver_stiffness_64x64x64"] = cached(out / "solver_stiffness_64_3.json",
                                                      lambda: solver_speed(STIFFNESS, (64, 64, 64), 4))
        print(f"stiffness solver at 64^3: {json.dumps(results['solver_stiffness_64x64x64'])}", flush=True)
    results["cnn_baseline"] = cached(out / "cnn.json", lambda: cnn_baseline(out, folder, args))
    print("small CNN trained end to end:\n" + evaluate.format_report(results["cnn_baseline"]), flush=True)
    for family in ("disks", "gaussian"):
        results[f"without_{family}"] = cached(out / f"without_{family}.json",
                                              lambda: left_out(out, folder, params, args, family))
        print(f"left out {family}: {json.dumps(results[f'without_{family}']['components']['k_xx'])}", flush=True)
    results["shared_crops"] = cached(out / "shared_crops.json", lambda: shared_crops(
        out, params, figures / "surrogate_parity_shared.png" if figures else None))
    print(f"shared crops: {json.dumps(results['shared_crops'].get('components', {}).get('k_xx'))}", flush=True)
    results["shared_crops_stiffness"] = cached(out / "shared_crops_stiffness.json", lambda: shared_crops(
        out, params, figures / "surrogate_parity_shared_stiffness.png" if figures else None, STIFFNESS))
    print(f"shared crops, stiffness: {json.dumps(results['shared_crops_stiffness'].get('components', {}))}",
          flush=True)
    results["speed_64x64"] = cached(out / "speed_64.json", lambda: speed(out, params, (64, 64), 256))
    print(f"speed 64x64: {json.dumps(results['speed_64x64'])}", flush=True)
    results["speed_twopoint_64x64"] = cached(out / "speed_twopoint_64.json",
                                             lambda: speed(out, params, (64, 64), 256, head="twopoint"))
    print(f"speed 64x64, two-point head: {json.dumps(results['speed_twopoint_64x64'])}", flush=True)
    if not args.skip_3d:
        results["speed_64x64x64"] = cached(out / "speed_64_3.json", lambda: speed(out, params, (64, 64, 64), 4))
        print(f"speed 64^3: {json.dumps(results['speed_64x64x64'])}", flush=True)
        results["speed_twopoint_64x64x64"] = cached(out / "speed_twopoint_64_3.json", lambda: speed(
            out, params, (64, 64, 64), 4, head="twopoint"))
        print(f"speed 64^3, two-point head: {json.dumps(results['speed_twopoint_64x64x64'])}", flush=True)
    results["design"] = cached(out / "design.json", lambda: design_comparison(out, params))
    print(f"design: {json.dumps(results['design'])}", flush=True)
    results["design_stiffness"] = cached(out / "design_stiffness.json", lambda: design_comparison(
        out, params, STIFFNESS))
    print(f"design, stiffness: {json.dumps(results['design_stiffness'])}", flush=True)
    if not args.skip_pruning:
        results["pruning"] = pruning(out, folder, params, args)
        report_pruning(results["pruning"], figures)
    write_json(out / "results.json", results)


if __name__ == "__main__":
    main()

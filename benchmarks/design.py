"""Inverse design: exact bounds, targets with an exemplar's statistics, and speed.

    python benchmarks/design.py bounds                      # maximise / minimise k_xx at a held fraction
    python benchmarks/design.py statistics --out design-run # +-10, +-20 % of each exemplar's own k_xx, 4 seeds
    python benchmarks/design.py statistics --images li2018_ceramics_2d_256.npy --options '{"interface_weight": 10}'
    python benchmarks/design.py speed                       # one design, a 16-target sweep, the step split

bounds: the built-in exemplar (fractions 0.6 / 0.4), 64x64, conductivities 1 and 10, no statistics terms,
fractions held; the achieved k_xx (the FFT solver on the decoded labels) against the Wiener bounds at each
design's own fractions (arithmetic for max: laminates along x; harmonic for min: across).
statistics: the shared ceramics, alloy and NMC (2D) images, 64x64 designs, conductivities 1, 10 (NMC: pore 1,
particles 10, carbon-binder 3.16), targets at -20, -10, +10, +20 % of the exemplar's own k_xx (the whole image),
each target a batch of 4 seeds, all 16 designs of an image in one batch, then the label swaps that end a design
(``inverse_design.swap_labels``), both judged. Needs ../shared/data.
speed: wall time of one 64x64 design (default schedule) with the statistics and the solver in the loop; one
design against a 16-target sweep as one batch (--sweep-steps design steps each, started from noise); the time of
one loss-and-gradient evaluation split into network (Gram), two-point and solver terms.
Every run prints the device, versions and the command's settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxmicro.reconstruction as R
from jaxmicro import inverse_design as D, physics, terms as T
from jaxmicro.descriptors import make_describe
from jaxmicro.examples import default_exemplar

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGES = {"li2018_ceramics_2d_256.npy": [1.0, 10.0], "li2018_alloy_2d_256.npy": [1.0, 10.0],
          "nmc_cathode_3phase_2d_253.npy": [1.0, 10.0, 3.16]}


def header(args):
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}; host "
          f"{platform.processor() or platform.machine()}; jax {jax.__version__}; float32")
    print(f"settings: {vars(args)}", flush=True)


def bounds(args):
    exemplar = default_exemplar()
    rows = []
    for relation in ("max", "min"):
        start = time.perf_counter()
        result = D.design(exemplar, targets={"k_xx": relation}, shape=(args.size,) * 2, conductivity=[1.0, 10.0],
                          count=args.count, steps=args.steps, seed=args.seed, hold_fraction=True,
                          statistics_weight=0.0)
        wall = time.perf_counter() - start
        checked = D.design_records(result, exemplar)
        for record in checked["designs"]:
            f = np.asarray(record["volume_fractions"])
            bound = f @ [1.0, 10.0] if relation == "max" else 1.0 / (f @ [1.0, 0.1])
            rows.append({"relation": relation, "k_xx": record["achieved"]["k_xx"], "bound": float(bound),
                         "gap": record["relative_error"]["k_xx"], "fraction_error": record["volume_fraction_error"],
                         "wall_s": wall, "status": record["status"]})
            print(f"{relation}: k_xx {record['achieved']['k_xx']:.4f}, bound at own fractions {bound:.4f}, gap "
                  f"{record['relative_error']['k_xx']:.2%}, fraction error {record['volume_fraction_error']:.4f}, "
                  f"{record['status']}; batch of {args.count} in {wall:.1f} s", flush=True)
    return rows


def statistics(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, conductivity in IMAGES.items():
        if args.images and name not in args.images.split(","):
            continue
        exemplar = np.load(SHARED / name).astype(np.int32)
        own = float(physics.effective_conductivity(exemplar, conductivity).tensor[0, 0])
        targets = [own * (1 + float(p)) for p in args.offsets.split(",")]
        start = time.perf_counter()
        unswapped = D.design(exemplar, targets={"k_xx": targets}, shape=(args.size,) * 2, conductivity=conductivity,
                             count=args.count, steps=args.steps, seed=args.seed, hold_fraction=args.hold_fraction,
                             statistics_weight=args.statistics_weight, layers=args.layers, start=args.start,
                             swaps=False, **json.loads(args.options))
        wall = time.perf_counter() - start
        result = D.swap_labels(unswapped, exemplar) if args.swaps else unswapped
        swap_wall = time.perf_counter() - start - wall
        before = D.design_records(unswapped, exemplar)["designs"]
        checked = D.design_records(result, exemplar)
        records = checked["designs"]
        np.save(out / f"{Path(name).stem}_designs.npy", result.labels)
        np.save(out / f"{Path(name).stem}_unswapped.npy", unswapped.labels)
        from jaxmicro import report
        report.design_figure(exemplar, result.labels, checked, out / f"{Path(name).stem}.png")
        print(f"\n{name}: own k_xx {own:.4f}; {len(records)} designs in {wall:.1f} s (one batch), then label swaps "
              f"{swap_wall:.1f} s")
        print("target    achieved  error    vf err   S2 err (before swaps)  copy / base    status")
        for r, b in zip(records, before):
            print(f"{r['target']['k_xx']:<9.4f} {r['achieved']['k_xx']:<9.4f} {r['relative_error']['k_xx']:<8.2%} "
                  f"{r['volume_fraction_error']:<8.4f} {r['s2_max_abs_error']:.4f} ({b['s2_max_abs_error']:.4f})"
                  f"        {r['copy_agreement']:.3f} / {r['copy_baseline']:.3f}  {r['status']}")
        for label, rows in (("after swaps", records), ("before swaps", before)):
            print(f"{label}: within 1 %: {sum(r['reached'] for r in rows)} of {len(rows)}; fraction error <= 0.02: "
                  f"{sum(r['volume_fraction_error'] <= 0.02 for r in rows)}; S2 <= 0.03: "
                  f"{sum(r['s2_max_abs_error'] <= 0.03 for r in rows)}")
        print(f"max agreement between designs of a target: "
              f"{max(d['max_agreement_between_designs'] for d in checked['diversity']):.3f}", flush=True)
        summary[name] = {"own_k_xx": own, "wall_s": wall, "swap_wall_s": swap_wall, "records": records,
                         "records_before_swaps": before, "diversity": checked["diversity"]}
    (out / "design_statistics.json").write_text(json.dumps(summary, indent=1))


def speed(args):
    exemplar = np.load(SHARED / "li2018_ceramics_2d_256.npy").astype(np.int32) if SHARED.exists() \
        else default_exemplar()
    own = float(physics.effective_conductivity(exemplar, [1.0, 10.0]).tensor[0, 0])
    common = dict(shape=(args.size,) * 2, conductivity=[1.0, 10.0], steps=args.steps, layers=args.layers,
                  hold_fraction=True)
    params = R.load_network_params(R.make_config(exemplar, shape=(args.size,) * 2, layers=args.layers)[0],
                                   progress=False)
    start = time.perf_counter()
    D.design(exemplar, targets={"k_xx": 1.1 * own}, count=1, params=params, **common)
    print(f"one design, default schedule ({D.COARSE_STEPS} statistics steps at half size, {args.steps} design "
          f"steps): {time.perf_counter() - start:.1f} s, compilation included", flush=True)
    walls = {}
    for label, targets in (("one design", {"k_xx": 1.1 * own}),
                           ("16-target sweep", {"k_xx": list(np.linspace(0.8, 1.2, 16) * own)})):
        start = time.perf_counter()
        result = D.design(exemplar, targets=targets, count=1, params=params, **{**common, "steps": args.sweep_steps},
                          start="noise")
        walls[label] = time.perf_counter() - start
        print(f"{label}: {walls[label]:.1f} s for {len(result.labels)} design(s) x {args.sweep_steps} design steps "
              f"(from noise; compilation included)", flush=True)
    print(f"sweep / one design: {walls['16-target sweep'] / walls['one design']:.2f}x")

    # one loss-and-gradient evaluation, each term alone (jit, steady state, median of 20)
    config, images = R.make_config(exemplar, shape=(args.size,) * 2, layers=args.layers,
                                   correlation_weight=D.CORRELATION_WEIGHT)
    objective = R.make_objective(config, R.make_targets(config, params, images))
    objective = objective._replace(targets={**objective.targets, "k_xx": jnp.float32(own)})
    phases = D.phase_properties(2, 2, conductivity=[1.0, 10.0])
    predictors = D.make_predictors(phases, {"conductivity"})
    logits = 0.1 * jax.random.normal(jax.random.PRNGKey(0), (*config.shape, 2))
    decode = lambda z: R.fields_from_logits(config, z)  # noqa: E731
    terms = {**R.make_terms(config), **D.make_property_terms([D.parse_target(f"k_xx={own}")], phases, 2)}
    pieces = {"network (gram)": (["gram"], True, {}), "two-point": (["correlation"], False, {}),
              "solver (k_xx)": (["k_xx"], False, predictors),
              "everything": (list(terms), True, predictors)}
    for label, (names, network, props) in pieces.items():
        loss = T.make_loss(make_describe(config, props), {n: terms[n] for n in names}, decode, network=network)
        weights = {n: jnp.float32(1.0) for n in names}
        step = jax.jit(jax.value_and_grad(lambda z: loss(params, z, objective._replace(weights=weights))[0]))
        jax.block_until_ready(step(logits))
        times = []
        for _ in range(20):
            start = time.perf_counter()
            jax.block_until_ready(step(logits))
            times.append(time.perf_counter() - start)
        print(f"{label:<16} {1e3 * np.median(times):7.1f} ms per loss and gradient "
              f"(spread {1e3 * min(times):.1f}-{1e3 * max(times):.1f})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["bounds", "statistics", "speed"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=4, help="seeds per target")
    parser.add_argument("--steps", type=int, default=D.DESIGN_STEPS)
    parser.add_argument("--start", choices=D.STARTS, default="coarse", help="statistics: where the designs start")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-steps", type=int, default=200, help="speed: design steps of the sweep comparison")
    parser.add_argument("--layers", default="default")
    parser.add_argument("--statistics-weight", type=float, default=1.0)
    parser.add_argument("--no-hold-fraction", dest="hold_fraction", action="store_false")
    parser.add_argument("--no-swaps", dest="swaps", action="store_false",
                        help="statistics: leave out the label swaps that end a design (design(..., swaps=False))")
    parser.add_argument("--images", help="comma-separated subset of the statistics images")
    parser.add_argument("--offsets", default="-0.2,-0.1,0.1,0.2",
                        help="statistics: targets as relative offsets from each exemplar's own k_xx")
    parser.add_argument("--options", default="{}",
                        help='statistics: further jaxmicro.design keywords as JSON, e.g. \'{"interface_weight": 10}\'')
    parser.add_argument("--out", default="design-benchmark")
    args = parser.parse_args()
    header(args)
    {"bounds": bounds, "statistics": statistics, "speed": speed}[args.case](args)


if __name__ == "__main__":
    main()

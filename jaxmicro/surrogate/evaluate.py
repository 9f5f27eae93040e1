"""Accuracy of a trained head on labelled data: R^2, median and 95th-percentile relative error per tensor
component, the ensemble's calibration, the share of predictions inside the bounds, and a parity figure.

Relative errors of diagonal components are ``|k_pred - k| / k``; off-diagonal components (often near zero) are
measured against the sample's mean diagonal value ``tr(K) / d``, so the numbers stay meaningful. A stiffness is
judged by its tensor components (``C_1111, C_1122, C_1212, ...``: the Voigt matrix, without Mandel's factors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmicro.surrogate import data as data_module
from jaxmicro.surrogate.model import Model, make_predictor
from jaxmicro.surrogate.properties import PropertySpec


def metrics(predicted: np.ndarray, uncertainty: np.ndarray, truth: np.ndarray, prop: PropertySpec,
            dim: int) -> dict:
    """Per component of ``prop``'s tensors ``(B, m, m)``: ``r2``, ``median_relative_error``,
    ``p95_relative_error``, ``within_2_sigma``."""
    predicted, uncertainty, truth = (prop.tensor_components(a) for a in (predicted, uncertainty, truth))
    scale = np.trace(truth, axis1=-2, axis2=-1) / truth.shape[-1]
    out = {}
    for name, i, j in prop.component_names(dim):
        y, p, s = truth[:, i, j].astype(np.float64), predicted[:, i, j].astype(np.float64), uncertainty[:, i, j]
        residual = np.sum((p - y) ** 2)
        spread = np.sum((y - y.mean()) ** 2)
        relative = np.abs(p - y) / (np.abs(y) if i == j else scale)
        out[name] = {"r2": float(1 - residual / spread) if spread > 0 else None,
                     "median_relative_error": float(np.median(relative)),
                     "p95_relative_error": float(np.percentile(relative, 95)),
                     "within_2_sigma": float(np.mean(np.abs(p - y) <= 2 * s))}
    return out


def inside_bounds(predicted: np.ndarray, fractions: np.ndarray, prop: PropertySpec, dim: int) -> float:
    """Share of predicted tensors within the Reuss..Voigt tensors (Loewner order, float32 rounding allowed)."""
    return float(np.mean(prop.inside(predicted, fractions, dim, slack=1e-5)))


def parity_figure(predicted, truth, families, path, prop: PropertySpec, dim: int, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxmicro.io import save_figure

    names = prop.component_names(dim)
    predicted, truth = prop.tensor_components(predicted), prop.tensor_components(truth)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, (name, i, j) in zip(axes.flat, names):
        for family in sorted(set(families)):
            pick = families == family
            ax.scatter(truth[pick, i, j], predicted[pick, i, j], s=6, alpha=0.6, label=family)
        low, high = float(truth[:, i, j].min()), float(truth[:, i, j].max())
        ax.plot([low, high], [low, high], "k-", lw=0.8)
        ax.set_xlabel(f"{name} (FFT solver)")
        ax.set_ylabel(f"{name} (head)")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def evaluate(model: Model, folder: str | Path, vgg_params: dict | None, *, split: str = "auto",
             figure: str | Path | None = None) -> dict:
    """Metrics of ``model`` on a data folder; ``split``: ``test`` (the model's held-out samples, DATA must be
    its training data), ``all``, or ``auto`` (test when DATA is the training data, else all)."""
    from jaxmicro.errors import InputError
    from jaxmicro.surrogate.train import property_of

    data = data_module.load_data(folder)
    prop, dim = model.property_spec, model.config.dim
    if property_of(data, prop.name) != prop:
        raise InputError(f"the data were labelled with {data['properties'][prop.name].describe()}, the model was "
                         f"trained on {prop.describe()}")
    same = data["manifest"]["options_digest"] == model.record.get("data", {}).get("options_digest")
    if split == "test" and not same:
        raise InputError(f"{folder} is not the data the model was trained on; use --split all")
    use_test = split == "test" or (split == "auto" and same)
    index = np.asarray(model.record["split"]["test"], int) if use_test else np.arange(len(data["labels"]))
    if len(index) == 0:
        raise InputError("the model held out no test samples (trained with --test-fraction 0); use --split all")
    predict = make_predictor(model, vgg_params)
    mean, std, _ = predict(data["labels"][index])
    truth = data[prop.name][index]
    report = {"model_head": model.config.head, "data": str(folder), "split": "test" if use_test else "all",
              "samples": int(len(index)), **prop.to_json(),
              "components": metrics(mean, std, truth, prop, dim),
              "inside_bounds": inside_bounds(mean, data["fractions"][index], prop, dim),
              "families": {}}
    for family in sorted(set(data["family"][index].tolist())):
        pick = data["family"][index] == family
        report["families"][family] = {"samples": int(pick.sum()),
                                      "components": metrics(mean[pick], std[pick], truth[pick], prop, dim)}
    if figure:
        parity_figure(mean, truth, data["family"][index], figure, prop, dim,
                      title=f"{model.config.head} head, {report['split']} split of {Path(folder).name}")
        report["figure"] = str(figure)
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['samples']} samples ({report['split']} split), predictions inside the bounds: "
             f"{100 * report['inside_bounds']:.1f} %",
             f"{'component':10s} {'R^2':>8s} {'median':>8s} {'p95':>8s} {'in 2 sigma':>10s}"]
    for name, m in report["components"].items():
        r2 = "n/a" if m["r2"] is None else f"{m['r2']:.4f}"
        lines.append(f"{name:10s} {r2:>8s} {100 * m['median_relative_error']:7.2f}% "
                     f"{100 * m['p95_relative_error']:7.2f}% {100 * m['within_2_sigma']:9.1f}%")
    return "\n".join(lines)

"""The batch split over devices and processes (jaxmicro.sharding), on CPU devices forced in a child process.

The parent test process has already started JAX with one CPU device, so the checks run in a child started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (this file, run as a script), which prints its findings as
JSON; the tests judge them. Forced CPU devices share the machine's cores: these tests check correctness, not speed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TAPS = ("relu1_2", "relu2_1")


def _environment(devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JAXMICRO_COMPILATION_CACHE": "off"}
    env.pop("SLURM_STEP_NUM_TASKS", None)  # the processes join by the flags alone
    return env


@pytest.fixture(scope="module")
def forced(tmp_path_factory):
    """The child's findings on 4 forced CPU devices."""
    folder = tmp_path_factory.mktemp("sharding")
    process = subprocess.run([sys.executable, __file__, str(folder)], env=_environment(4), capture_output=True,
                             text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_sharded_step_gives_the_single_device_loss_and_gradients(forced):
    found = forced["step"]
    assert found["devices"] == 4 and found["padded"] == 4  # a batch of 3 padded to 4
    assert found["loss"] <= 1e-6 and found["terms"] <= 1e-6  # relative, float32 rounding
    assert found["gradient"] <= 1e-5
    assert found["collectives"] == [], "a step should exchange nothing between devices"


def test_four_devices_give_the_results_of_one(forced):
    found = forced["run"]
    assert found["loss"] <= 1e-5  # relative difference of every recorded total, float32 rounding
    assert found["labels_differ"] <= 0.01
    np.testing.assert_allclose(found["final_four"], found["final_one"], rtol=1e-4)
    assert found["status_four"] == found["status_one"]


def test_checkpoint_written_shard_by_shard_resumes_on_another_device_count(forced):
    found = forced["checkpoint"]
    assert found["saved_sharding"] == 4  # the arrays were written from 4 shards, not gathered first
    for case in ("4->4", "4->1", "1->4"):
        assert found[case]["loss"] <= 1e-5, case
        assert found[case]["labels_differ"] <= 0.01, case
    assert found["4->4"]["loss"] == 0.0 and found["4->4"]["labels_differ"] == 0.0  # same devices: bitwise


def _dot_precisions(jaxpr) -> list:
    """The precision of every matrix product in a jaxpr, its sub-programs (jit, scan, cond, custom rules) too."""
    found = []
    for equation in jaxpr.eqns:
        if equation.primitive.name == "dot_general":
            found.append(equation.params["precision"])
        for value in equation.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _dot_precisions(inner)
    return found


def test_gram_matrices_and_correlations_use_full_float32_products(tiny_params):
    """No silent TF32 on GPUs: the loss's matrix products (the Gram matrices; the correlations are FFTs, no
    products) ask for full float32 precision. The tiny network's convolutions run as XLA convolutions, so every
    product in this loss is a Gram matrix."""
    import jax

    import jaxmicro.reconstruction as R
    from jaxmicro import vgg

    from conftest import TINY_WIDTHS
    from test_reconstruct import blobs

    config = R.ReconstructionConfig(shape=(16, 16), n_phases=2, taps=TAPS, widths=TINY_WIDTHS, correlation_radius=4)
    params = {k: tiny_params[k] for k in vgg.convs_needed(TAPS)}
    objective = R.make_objective(config, R.make_targets(config, params, [blobs()]))
    loss = jax.grad(lambda z: R.make_loss(config)(params, z, objective, jax.random.PRNGKey(0))[0])
    precisions = _dot_precisions(jax.make_jaxpr(loss)(jax.numpy.zeros((16, 16, 2))).jaxpr)
    highest = jax.lax.Precision.HIGHEST
    assert precisions and all(p in (highest, (highest, highest)) for p in precisions), precisions
    correlation = jax.make_jaxpr(R.statistics.two_point_correlation)(jax.numpy.zeros((16, 16, 2))).jaxpr
    assert _dot_precisions(correlation) == [] and "fft" in str(correlation)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.real_weights
def test_two_processes_with_two_devices_each_write_their_own_samples(real_params, tmp_path):
    out = tmp_path / "run"
    port = _free_port()
    command = [sys.executable, "-m", "jaxmicro", "reconstruct", "--shape", "16x16", "--count", "3", "--steps", "10",
               "--levels", "1", "--layers", "relu1_1", "--checkpoint-every", "5", "--out", str(out),
               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    processes = [subprocess.Popen(command + ["--process-id", str(i)], env=_environment(2), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    used = metrics["run"]["devices_used"]
    assert (used["devices"], used["processes"], used["devices_per_process"]) == (4, 2, 2)
    assert sorted(p.name for p in out.glob("reconstruction_*.tif")) == [f"reconstruction_00{i}.tif" for i in range(3)]
    assert all(np.isfinite(metrics["run"]["final_loss"]))
    assert json.loads((out / "run.json").read_text())["devices_used"]["devices"] == 4
    # each process wrote its own shards of the checkpoint at step 5
    assert {p.name for p in (out / "checkpoints" / "5" / "state").glob("ocdbt.process_*")} == \
        {"ocdbt.process_0", "ocdbt.process_1"}
    assert "done in" in outputs[0][0] and "done in" not in outputs[1][0]  # one report, from process 0


# --- the child: runs on 4 forced CPU devices -----------------------------------------------------------------


def _child(folder: Path) -> dict:
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    import jaxmicro.reconstruction as R
    from jaxmicro import enable_compilation_cache, sharding, vgg
    from jaxmicro.checkpoint import Checkpointer

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import TINY_WIDTHS
    from test_reconstruct import blobs

    assert jax.device_count() == 4
    enable_compilation_cache(folder / "xla")  # a resume runs the programs of the run it continues
    params = vgg.random_params(jax.random.PRNGKey(0), vgg.convs_needed(TAPS), widths=TINY_WIDTHS)
    exemplar = blobs()
    findings = {}

    # 1. one step's loss, terms and gradients of a batch of 3: on one device, and split over 4 (padded to 4)
    config = R.ReconstructionConfig(shape=(16, 16), n_phases=2, taps=TAPS, widths=TINY_WIDTHS, correlation_radius=4)
    objective = R.make_objective(config, R.make_targets(config, params, [exemplar]))
    objective = jax.tree.map(lambda x: jnp.broadcast_to(x, (3, *jnp.shape(x))), objective)
    logits = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 2))
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    loss = R.make_loss(config)
    value_and_grad = jax.vmap(jax.value_and_grad(loss, argnums=1, has_aux=True), in_axes=(None, 0, 0, 0))
    single = jax.jit(value_and_grad)(params, logits, objective, keys)
    layout = sharding.batch_layout(sharding.make_mesh(4), 3)
    split = [sharding.place(sharding.pad(x, layout.padded), layout.rows) for x in (logits, objective, keys)]
    rows = jax.sharding.PartitionSpec("batch")
    step = jax.jit(sharding.per_device(value_and_grad, layout, (jax.sharding.PartitionSpec(), rows, rows, rows), rows))
    inputs = (sharding.replicate(params, layout), *split)
    compiled = step.lower(*inputs).compile()
    sharded = compiled(*inputs)
    ((total, terms), grads), ((total4, terms4), grads4) = single, jax.tree.map(lambda x: np.asarray(x)[:3], sharded)

    def relative(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))

    program = compiled.as_text()
    findings["step"] = {
        "devices": layout.mesh.devices.size, "padded": layout.padded, "loss": relative(total4, total),
        "terms": max(relative(terms4[n], terms[n]) for n in terms), "gradient": relative(grads4, grads),
        "sharding": str(sharded[1].sharding),
        "collectives": sorted({op for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute",
                                             "reduce-scatter") if op + "(" in program or op + "-start" in program}),
    }

    # 2. the same run on 1 and on 4 devices, each checkpointed at step 10 of 20
    options = dict(shape=(16, 16), count=3, steps=20, seed=3, layers=TAPS, params=params, widths=TINY_WIDTHS,
                   correlation_radius=4, levels=1, chunk=5)
    results, timings = {}, {}
    for devices in (1, 4):
        started = time.perf_counter()
        with sharding.use_devices(devices):
            results[devices] = R.reconstruct(exemplar, checkpoint=Checkpointer(folder / str(devices), 10, "run"),
                                             **options)
        timings[devices] = time.perf_counter() - started

    def compare(a, b):
        return {"loss": relative(a.loss_history, b.loss_history),
                "labels_differ": float(np.mean(a.labels != b.labels))}

    findings["run"] = {**compare(results[4], results[1]), "final_one": results[1].loss_history[:, -1].tolist(),
                       "final_four": results[4].loss_history[:, -1].tolist(),
                       "status_one": results[1].status_names, "status_four": results[4].status_names,
                       "seconds": timings}

    # 3. resume those checkpoints on 4 and on 1 devices
    metadata = ocp.StandardCheckpointHandler().metadata(folder / "4" / "checkpoints" / "10" / "state")
    findings["checkpoint"] = {"saved_sharding": len(metadata.tree["states"]["logits"].sharding.device_mesh.mesh)}
    for saved, resumed in ((4, 4), (4, 1), (1, 4)):
        with sharding.use_devices(resumed):
            result = R.reconstruct(exemplar, checkpoint=Checkpointer(folder / str(saved), 10, "run", resume=True),
                                   **options)
        findings["checkpoint"][f"{saved}->{resumed}"] = compare(result, results[saved])
    return findings


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as scratch:
        print(json.dumps(_child(Path(scratch))))

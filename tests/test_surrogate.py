"""Learned property heads: bounds by construction, augmentation, data resume, save/restore, refusal of another
network, a tiny training run, and the command line's messages for bad input."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmicro.errors import InputError
from jaxmicro.physics import (
    effective_conductivity,
    effective_stiffness,
    isotropic_stiffness,
    young_poisson_to_bulk_shear,
)
from jaxmicro.surrogate import data, heads, model, train
from jaxmicro.surrogate.features import FeatureSpec, weights_digest
from jaxmicro.surrogate.properties import PropertySpec, mandel_rotation
from tests.conftest import run_in_process

TAPS = ("relu1_2", "relu2_2")
CONDUCTIVITIES = [1.0, 10.0]
YOUNG, POISSON = [10.0, 100.0], [0.3, 0.2]
CONDUCTIVITY = PropertySpec("conductivity", conductivities=tuple(CONDUCTIVITIES))
STIFFNESS = PropertySpec("stiffness", young=tuple(YOUNG), poisson=tuple(POISSON))


@pytest.mark.parametrize("prop, dim", [(CONDUCTIVITY, 2), (CONDUCTIVITY, 3), (STIFFNESS, 2), (STIFFNESS, 3)])
def test_bounds_hold_by_construction(prop, dim):
    config = heads.HeadConfig(hidden=(16,), members=3, dim=dim, property=prop.name)
    m = prop.size(dim)
    init, apply = heads.make_head(config)
    key_params, key_x, key_f = jax.random.split(jax.random.PRNGKey(dim), 3)
    params = jax.tree.map(lambda p: p * 30.0, init(key_params, 5))  # large weights: saturated outputs too
    x = 10.0 * jax.random.normal(key_x, (64, 5))
    unit = np.asarray(apply(params, x), np.float64)
    assert unit.shape == (3, 64, m, m)
    np.testing.assert_allclose(unit, np.swapaxes(unit, -1, -2), atol=1e-5)
    eig = np.linalg.eigvalsh(unit)
    assert eig.min() >= -1e-5 and eig.max() <= 1 + 1e-5
    fraction = jax.random.uniform(key_f, (64,))
    fractions = jnp.stack([1 - fraction, fraction], -1)
    lower, upper = prop.bounds(fractions, dim)
    tensors = np.asarray(prop.to_tensor(jnp.asarray(unit, jnp.float32), lower, upper, dim), np.float64)
    assert prop.inside(tensors, fractions, dim, slack=1e-5).all()
    assert np.linalg.eigvalsh(tensors).min() > 0
    np.testing.assert_allclose(prop.to_unit(jnp.asarray(tensors, jnp.float32), lower, upper, dim), unit,
                               atol=2e-4)


@pytest.mark.parametrize("dim", [2, 3])
def test_stiffness_bounds_are_the_means_of_the_phase_stiffnesses_and_their_inverses(dim):
    """Voigt: the mean stiffness; Reuss: the inverse of the mean compliance (computed here from the phases'
    Mandel matrices, independently of the moduli averages the heads use)."""
    phases = [np.asarray(isotropic_stiffness(*young_poisson_to_bulk_shear(e, nu, dim), dim), np.float64)
              for e, nu in zip(YOUNG, POISSON)]
    fractions = np.array([[0.3, 0.7], [0.9, 0.1]])
    lower, upper = (np.asarray(STIFFNESS.isotropic(b, dim), np.float64) for b in STIFFNESS.bounds(fractions, dim))
    for row, f in enumerate(fractions):
        np.testing.assert_allclose(upper[row], f[0] * phases[0] + f[1] * phases[1], rtol=1e-5)
        reuss = np.linalg.inv(f[0] * np.linalg.inv(phases[0]) + f[1] * np.linalg.inv(phases[1]))
        np.testing.assert_allclose(lower[row], reuss, rtol=1e-5, atol=1e-6 * np.abs(reuss).max())


@pytest.mark.parametrize("dim", [2, 3])
def test_elastic_hashin_shtrikman_bounds_are_the_two_phase_formulas(dim):
    """Walpole's form against Hashin and Shtrikman's two-phase formulas (3D; 2D: Hashin 1965, plane-strain bulk
    modulus), for well-ordered phases (phase 1 stiffer in bulk and shear)."""
    k, mu = (np.asarray(a, np.float64) for a in young_poisson_to_bulk_shear(np.asarray(YOUNG), np.asarray(POISSON),
                                                                              dim))
    f = np.array([[0.3, 0.7], [0.8, 0.2]])
    (k_lower, k_upper), (mu_lower, mu_upper) = data.hashin_shtrikman_elastic(f, k, mu, dim)

    def bulk_bound(a, b, fa, fb):  # phase a as the reference
        return k[a] + fb / (1 / (k[b] - k[a]) + (3 * fa / (3 * k[a] + 4 * mu[a]) if dim == 3 else fa / (k[a] + mu[a])))

    def shear_bound(a, b, fa, fb):
        coupling = (6 * fa * (k[a] + 2 * mu[a]) / (5 * mu[a] * (3 * k[a] + 4 * mu[a])) if dim == 3
                    else fa * (k[a] + 2 * mu[a]) / (2 * mu[a] * (k[a] + mu[a])))
        return mu[a] + fb / (1 / (mu[b] - mu[a]) + coupling)

    np.testing.assert_allclose(k_lower, bulk_bound(0, 1, f[:, 0], f[:, 1]), rtol=1e-12)
    np.testing.assert_allclose(k_upper, bulk_bound(1, 0, f[:, 1], f[:, 0]), rtol=1e-12)
    np.testing.assert_allclose(mu_lower, shear_bound(0, 1, f[:, 0], f[:, 1]), rtol=1e-12)
    np.testing.assert_allclose(mu_upper, shear_bound(1, 0, f[:, 1], f[:, 0]), rtol=1e-12)
    for lower, upper, values in ((k_lower, k_upper, k), (mu_lower, mu_upper, mu)):
        assert np.all(1 / (f @ (1 / values)) < lower) and np.all(lower < upper) and np.all(upper < f @ values)
    isotropic = np.asarray(isotropic_stiffness(k[1], mu[1], dim), np.float64)[None]
    np.testing.assert_allclose(data.isotropic_part(isotropic, STIFFNESS, dim), [[k[1]], [mu[1]]], rtol=1e-6)


def test_mandel_rotation_turns_a_stiffness_like_the_fourth_order_tensor():
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(3, 3))
    mandel = matrix @ matrix.T  # any symmetric 2D Mandel stiffness
    rotation = np.array([[0.6, -0.8], [0.8, 0.6]])
    turned = mandel_rotation(rotation) @ mandel @ mandel_rotation(rotation).T
    pairs, factor = [(0, 0), (1, 1), (0, 1)], [1, 1, np.sqrt(2)]

    def tensor(c):  # Mandel (3, 3) -> C_ijkl
        out = np.zeros((2, 2, 2, 2))
        for a, (i, j) in enumerate(pairs):
            for b, (k, l_) in enumerate(pairs):
                value = c[a, b] / (factor[a] * factor[b])
                for p, q in {(i, j), (j, i)}:
                    for r, t in {(k, l_), (l_, k)}:
                        out[p, q, r, t] = value
        return out

    expected = np.einsum("ip,jq,kr,ls,pqrs->ijkl", rotation, rotation, rotation, rotation, tensor(mandel))
    np.testing.assert_allclose(tensor(turned), expected, atol=1e-12)
    assert np.allclose(mandel_rotation(rotation) @ mandel_rotation(rotation).T, np.eye(3))


def test_augmentation_rotates_tensors_like_the_solver():
    rng = np.random.default_rng(0)
    image, _ = data.gaussian_sample(rng, (16, 16))
    solve = jax.jit(jax.vmap(lambda x: effective_conductivity(x, jnp.asarray(CONDUCTIVITIES), tol=1e-6,
                                                              throw=False).tensor))
    tensor = np.asarray(solve(jnp.asarray(image[None], jnp.int32)))
    assert abs(tensor[0, 0, 1]) > 1e-3  # an anisotropic, tilted sample: the check is not trivial
    images, tensors, index = data.augment(image[None], tensor, 8, rng)
    assert sorted(index.tolist()) == list(range(8))
    solved = np.asarray(solve(jnp.asarray(images, jnp.int32)))
    np.testing.assert_allclose(tensors, solved, rtol=1e-4, atol=1e-4)
    # transposition swaps k_xx and k_yy; a flip changes the sign of k_xy
    matrix = data.symmetry_matrix((1, 0), ())
    np.testing.assert_allclose((matrix @ tensor[0] @ matrix.T)[0, 0], tensor[0, 1, 1])
    assert np.allclose(data.symmetry_matrix((0, 1), (0,)) @ tensor[0] @ data.symmetry_matrix((0, 1), (0,)).T,
                       tensor[0] * np.array([[1, -1], [-1, 1]]))


def test_augmentation_rotates_stiffnesses_like_the_solver():
    rng = np.random.default_rng(1)
    image, _ = data.gaussian_sample(rng, (16, 16))
    solve = jax.jit(jax.vmap(lambda x: effective_stiffness(x, young=jnp.asarray(YOUNG), poisson=jnp.asarray(POISSON),
                                                           tol=1e-6, throw=False).tensor))
    tensor = np.asarray(solve(jnp.asarray(image[None], jnp.int32)))
    assert abs(tensor[0, 0, 2]) > 20 * 1e-4 * tensor.max()  # shear-normal coupling well above the tolerance
    images, tensors, _ = data.augment(image[None], tensor, 8, rng, prop=STIFFNESS)
    solved = np.asarray(solve(jnp.asarray(images, jnp.int32)))
    np.testing.assert_allclose(tensors, solved, rtol=1e-4, atol=1e-4 * tensor.max())


def _options(count=32, **extra):
    return data.data_options(count=count, shape=(16, 16), conductivities=CONDUCTIVITIES, shard_size=16, **extra)


def test_labels_are_inside_the_bounds_and_recorded(tmp_path):
    manifest = data.make_data(tmp_path / "d", _options())
    loaded = data.load_data(tmp_path / "d")
    assert len(loaded["labels"]) == sum(s["kept"] for s in manifest["shards"].values()) == 32
    checks = data.check_labels(loaded["conductivity"], loaded["fractions"], CONDUCTIVITY, 2)
    assert checks["inside_wiener"].all() and checks["symmetric"].all()
    assert "stiffness" not in loaded and set(loaded["properties"]) == {"conductivity"}
    saved = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert saved["options"]["tol"] == 1e-5 and "jax" in saved["versions"]
    assert set(loaded["family"]) == {"gaussian", "disks"}
    fractions = data.phase_fractions(loaded["labels"], 2)
    assert fractions[:, 1].min() > 0.05 and fractions[:, 1].max() < 0.95


def test_make_data_resumes_without_redoing_finished_shards(tmp_path, monkeypatch):
    reference = data.make_data(tmp_path / "whole", _options(48))
    calls = []
    original = data._generate_shard

    def counting(options, index, *args):
        calls.append(index)
        if index == 1 and len(calls) == 2:
            raise KeyboardInterrupt  # killed while making the second shard
        return original(options, index, *args)

    monkeypatch.setattr(data, "_generate_shard", counting)
    with pytest.raises(KeyboardInterrupt):
        data.make_data(tmp_path / "cut", _options(48))
    assert sorted(p.name for p in (tmp_path / "cut").glob("*.npz")) == ["shard_00000.npz"]
    calls.clear()
    resumed = data.make_data(tmp_path / "cut", _options(48))
    assert calls == [1, 2]  # shard 0 was not redone
    assert resumed["shards"] == reference["shards"]
    a, b = data.load_data(tmp_path / "whole"), data.load_data(tmp_path / "cut")
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_allclose(a["conductivity"], b["conductivity"])
    with pytest.raises(InputError, match="other options"):
        data.make_data(tmp_path / "cut", _options(48, seed=1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_params):
    folder = tmp_path_factory.mktemp("surrogate")
    data.make_data(folder / "data", _options(64, young=YOUNG, poisson=POISSON))
    spec = FeatureSpec(taps=TAPS)
    result = train.train(folder / "data", folder / "model", config=heads.HeadConfig(hidden=(32,), members=3),
                         spec=spec, vgg_params=tiny_params,
                         options=train.TrainOptions(epochs=60, batch=32, augment=2, patience=60, save_every=10))
    return folder, result


def test_tiny_training_lowers_the_loss(trained):
    _, result = trained
    history = result.record["history"]
    assert len(history) == 60
    assert result.record["training"]["best_validation_loss"] < 0.5 * history[0]["validation_loss"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert not (trained[0] / "model" / train.STATE).exists()
    assert len(list((trained[0] / "data" / "features").glob("features-*.npz"))) == 1
    assert result.record["uncertainty_scale"] > 0


def test_stiffness_head_trains_inside_the_bounds_and_is_judged_by_tensor_components(tmp_path, trained,
                                                                                   tiny_params):
    from jaxmicro.surrogate.evaluate import evaluate

    folder, _ = trained
    loaded = data.load_data(folder / "data")
    assert loaded["stiffness"].shape == (len(loaded["labels"]), 3, 3)
    shards = json.loads((folder / "data" / "manifest.json").read_text())["shards"].values()
    assert all("mean_outside_hashin_shtrikman_stiffness" in shard for shard in shards)
    assert data.check_labels(loaded["stiffness"], loaded["fractions"], STIFFNESS, 2)["inside_wiener"].all()
    config = heads.HeadConfig(hidden=(32,), members=2, property="stiffness")
    result = train.train(folder / "data", tmp_path / "stiff", config=config, spec=FeatureSpec(taps=TAPS),
                         vgg_params=tiny_params, options=train.TrainOptions(epochs=40, batch=32, augment=2))
    history = result.record["history"]
    assert result.record["training"]["best_validation_loss"] < 0.5 * history[0]["validation_loss"]
    restored = model.load_model(tmp_path / "stiff")
    assert restored.property_spec == STIFFNESS and restored.config.property == "stiffness"
    report = evaluate(restored, folder / "data", tiny_params, split="all")
    assert set(report["components"]) == {"C_1111", "C_1122", "C_1112", "C_2222", "C_2212", "C_1212"}
    assert report["inside_bounds"] == 1.0 and report["young"] == YOUNG
    assert report["components"]["C_1111"]["r2"] > 0.5


def test_cli_trains_and_predicts_a_stiffness_head(tmp_path, capsys, trained):
    folder, _ = trained
    code, _, err = run_in_process(capsys, "surrogate", "train", folder / "data", "--head", "twopoint", "--property",
                                  "stiffness", "--members", "2", "--epochs", "3", "--augment", "2", "-q",
                                  "--out", tmp_path / "m")
    assert code == 0, err
    image = tmp_path / "image.npy"
    np.save(image, data.load_data(folder / "data")["labels"][0])
    code, _, err = run_in_process(capsys, "surrogate", "predict", tmp_path / "m", image, "--json",
                                  tmp_path / "p.json", "-q")
    assert code == 0, err
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["property"] == "stiffness" and written["poisson"] == POISSON
    assert "Mandel" in written["stiffness_notation"]
    assert np.asarray(written["predictions"][str(image)]["stiffness"]).shape == (3, 3)
    data.make_data(tmp_path / "conductivity-only", _options(16))
    code, _, err = run_in_process(capsys, "surrogate", "train", tmp_path / "conductivity-only", "--property",
                                  "stiffness", "--out", tmp_path / "n")
    _no_traceback(code, err, "no stiffness labels")
    assert not (tmp_path / "n").exists()
    code, _, err = run_in_process(capsys, "surrogate", "make-data", "--out", tmp_path / "e", "--young", "1,10")
    _no_traceback(code, err, "--poisson")
    code, _, err = run_in_process(capsys, "surrogate", "make-data", "--out", tmp_path / "e", "--young", "1,10",
                                  "--poisson", "0.3,0.6")
    _no_traceback(code, err, "between -1 and 0.5")
    assert not (tmp_path / "e").exists()


def test_uncertainty_scale_calibrates_the_spread():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(2000, 2, 2))
    members = truth + rng.normal(size=(5, 2000, 2, 2)) * 0.1 + 0.3 * rng.normal(size=(1, 2000, 2, 2))
    scale = model.uncertainty_scale(members, truth)
    error, spread = np.abs(members.mean(0) - truth), scale * members.std(0)
    assert scale > 1.5 and abs(np.mean(error <= 2 * spread) - 0.954) < 0.02


def test_save_restore_gives_identical_predictions(trained, tiny_params):
    folder, result = trained
    images = data.load_data(folder / "data")["labels"][:8]
    before = model.make_predictor(result, tiny_params)(images)
    restored = model.load_model(folder / "model")
    after = model.make_predictor(restored, tiny_params)(images)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert restored.spec == result.spec and restored.config == result.config
    mean, std, members = after
    assert members.shape == (3, 8, 2, 2) and np.all(std >= 0)


def test_a_model_saved_by_the_earlier_npz_format_loads_the_same(trained, tmp_path, tiny_params):
    folder, result = trained
    assert (folder / "model" / "params").is_dir() and not (folder / "model" / "params.npz").exists()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    meta = json.loads((folder / "model" / "model.json").read_text()) | {"format": "jaxmicro-surrogate-model/1"}
    (legacy / "model.json").write_text(json.dumps(meta))
    np.savez(legacy / "params.npz", **model.flatten(result.params, "params"),
             **{f"normaliser/{k}": v for k, v in result.normaliser.items()})
    images = data.load_data(folder / "data")["labels"][:4]
    for a, b in zip(model.make_predictor(result, tiny_params)(images),
                    model.make_predictor(model.load_model(legacy), tiny_params)(images)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["data", "metadata", "missing"])
def test_a_damaged_model_is_refused_with_one_clear_message(trained, tmp_path, damage):
    import shutil

    folder, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(folder / "model", copy)
    if damage == "missing":
        shutil.rmtree(copy / "params")
    for path in (copy / "params").rglob("*"):
        is_data = path.parent.name == "d"
        if path.is_file() and path.name != "commit_success.txt" and is_data == (damage == "data"):
            path.write_bytes(b"\x00junk")
    with pytest.raises(InputError, match="damaged or from another version") as error:
        model.load_model(copy)
    assert len(str(error.value)) < 400


def test_another_network_or_spec_is_refused(trained, tiny_params):
    folder, _ = trained
    restored = model.load_model(folder / "model")
    other = jax.tree.map(lambda p: p * 1.01, tiny_params)
    assert weights_digest(other, restored.spec) != restored.digest
    with pytest.raises(InputError, match="digest"):
        model.make_predictor(restored, other)
    with pytest.raises(InputError, match="trained on features"):
        model.check_network(restored, FeatureSpec(taps=("relu1_1",)), tiny_params)
    with pytest.raises(InputError, match="trained on features"):
        model.check_network(restored, FeatureSpec(taps=TAPS, padding="zero"), tiny_params)


@pytest.mark.slow
def test_training_resumes_from_its_saved_state(tmp_path, trained, tiny_params):
    folder, _ = trained
    options = train.TrainOptions(epochs=20, batch=32, augment=2, patience=60, save_every=10)
    config, spec = heads.HeadConfig(hidden=(32,), members=3), FeatureSpec(taps=TAPS)
    whole = train.train(folder / "data", tmp_path / "whole", config=config, spec=spec, vgg_params=tiny_params,
                        options=options)

    def stop(epoch, _):
        if epoch == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(folder / "data", tmp_path / "cut", config=config, spec=spec, vgg_params=tiny_params,
                    options=options, epoch_progress=stop)
    assert (tmp_path / "cut" / train.STATE).exists()
    seen = []
    resumed = train.train(folder / "data", tmp_path / "cut", config=config, spec=spec, vgg_params=tiny_params,
                          options=options, epoch_progress=lambda e, v: seen.append(e))
    assert seen == list(range(11, 21))
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "cut" / train.STATE).exists()

    with pytest.raises(KeyboardInterrupt):  # a state left by a run with other options is not resumed
        train.train(folder / "data", tmp_path / "other", config=config, spec=spec, vgg_params=tiny_params,
                    options=options, epoch_progress=stop)
    seen.clear()
    train.train(folder / "data", tmp_path / "other", config=config, spec=spec, vgg_params=tiny_params,
                options=dataclasses.replace(options, epochs=12), epoch_progress=lambda e, v: seen.append(e))
    assert seen == list(range(1, 13))

    with pytest.raises(KeyboardInterrupt):  # a damaged state is not resumed either
        train.train(folder / "data", tmp_path / "damaged", config=config, spec=spec, vgg_params=tiny_params,
                    options=options, epoch_progress=stop)
    for path in (tmp_path / "damaged" / train.STATE).rglob("*"):
        if path.is_file() and path.name != "commit_success.txt":
            path.write_bytes(b"\x00garbage")
    seen.clear()
    train.train(folder / "data", tmp_path / "damaged", config=config, spec=spec, vgg_params=tiny_params,
                options=options, epoch_progress=lambda e, v: seen.append(e))
    assert seen == list(range(1, 21))


def test_two_point_features_of_a_volume_are_its_slices_averaged_per_axis():
    from jaxmicro.surrogate.features import make_featurizer

    spec = FeatureSpec(kind="twopoint", radius=3)
    volume = (np.random.default_rng(1).random((1, 10, 12, 14)) < 0.4).astype(np.uint8)
    featurize = make_featurizer(spec)
    expected = np.concatenate([featurize(np.moveaxis(volume[0], axis, 0)).mean(0) for axis in range(3)])
    np.testing.assert_allclose(featurize(volume)[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (15, 13)])
def test_folded_two_point_features_equal_the_window_then_the_projection(shape):
    from jaxmicro.surrogate.features import folded_two_point, make_featurizer

    rng = np.random.default_rng(0)
    spec = FeatureSpec(kind="twopoint", radius=4)
    labels = (rng.random((6, *shape)) < rng.uniform(0.2, 0.8, (6, 1, 1))).astype(np.uint8)
    windows = make_featurizer(spec)(labels)
    normaliser = heads.fit_normaliser(windows + rng.normal(0, 0.01, windows.shape).astype(np.float32), 5)
    expected = heads.reduce_features(windows, normaliser)
    folded = folded_two_point(spec, normaliser, shape)(jnp.asarray(labels, jnp.int32))
    np.testing.assert_allclose(folded, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


@pytest.mark.slow
def test_twopoint_baseline_trains_inside_bounds(trained):
    folder, _ = trained
    result = train.train(folder / "data", folder / "twopoint",
                         config=heads.HeadConfig(head="twopoint", hidden=(32,), members=2, components=8),
                         spec=train.spec_for("twopoint", shape=(16, 16)), vgg_params=None,
                         options=train.TrainOptions(epochs=20, batch=32, augment=2))
    images = data.load_data(folder / "data")
    mean, _, _ = model.make_predictor(result)(images["labels"][:16])
    from jaxmicro.surrogate.evaluate import inside_bounds

    assert inside_bounds(mean, images["fractions"][:16], CONDUCTIVITY, 2) == 1.0


def test_cli_trains_a_head_of_the_given_widths(tmp_path, capsys, trained):
    folder, _ = trained
    code, _, err = run_in_process(capsys, "surrogate", "train", folder / "data", "--head", "twopoint", "--hidden",
                                  "16,8", "--members", "2", "--epochs", "3", "--augment", "2", "-q",
                                  "--out", tmp_path / "m")
    assert code == 0, err
    assert model.load_model(tmp_path / "m").config.hidden == (16, 8)
    code, _, err = run_in_process(capsys, "surrogate", "train", folder / "data", "--hidden", "16.5",
                                  "--out", tmp_path / "n")
    _no_traceback(code, err, "whole number")


def _no_traceback(code, err, match):
    assert code == 2, err
    assert "Traceback" not in err and err.count("error:") == 1 and match in err, err


def test_cli_bad_inputs_give_one_message_and_write_nothing(tmp_path, capsys, trained):
    folder, _ = trained
    out = tmp_path / "out"
    code, _, err = run_in_process(capsys, "surrogate", "train", tmp_path / "missing", "--out", out)
    _no_traceback(code, err, "does not exist")
    code, _, err = run_in_process(capsys, "surrogate", "train", folder / "data", "--head", "resnet", "--out", out)
    _no_traceback(code, err, "unknown head")
    code, _, err = run_in_process(capsys, "surrogate", "make-data", "--out", out, "--shape", "4x4")
    _no_traceback(code, err, "at least 8 pixels")
    code, _, err = run_in_process(capsys, "surrogate", "make-data", "--out", out, "--conductivity", "1,2,3")
    _no_traceback(code, err, "two positive")
    code, _, err = run_in_process(capsys, "surrogate", "make-data", "--out", out, "--generators", "voronoi")
    _no_traceback(code, err, "unknown generator")
    three = tmp_path / "three.npy"
    np.save(three, np.random.default_rng(0).integers(0, 3, (16, 16)).astype(np.uint8))
    code, _, err = run_in_process(capsys, "surrogate", "predict", folder / "model", three, "--json", out / "p.json")
    _no_traceback(code, err, "does not exist")  # the output's folder is checked first
    code, _, err = run_in_process(capsys, "surrogate", "predict", folder / "model", three, "--json",
                                  tmp_path / "p.json")
    _no_traceback(code, err, "3 phases")
    volume = tmp_path / "volume.npy"
    np.save(volume, np.random.default_rng(0).integers(0, 2, (16, 16, 16)).astype(np.uint8))
    code, _, err = run_in_process(capsys, "surrogate", "predict", folder / "model", volume, "--json",
                                  tmp_path / "p.json")
    _no_traceback(code, err, "3D")
    (tmp_path / "p.json").write_text("{}")
    code, _, err = run_in_process(capsys, "surrogate", "predict", folder / "model", volume, "--json",
                                  tmp_path / "p.json")
    _no_traceback(code, err, "--force")
    code, _, err = run_in_process(capsys, "surrogate", "evaluate", tmp_path / "nomodel", folder / "data")
    _no_traceback(code, err, "no model.json")
    assert not out.exists() and (tmp_path / "p.json").read_text() == "{}"


@pytest.mark.slow
def test_head_drives_a_design_and_is_checked_by_the_solver(trained, tiny_params):
    from jaxmicro.inverse_design import design
    from jaxmicro.surrogate.design import design_predictors, head_vs_solver

    folder, _ = trained
    restored = model.load_model(folder / "model")
    predictors = design_predictors(restored, tiny_params)
    images = data.load_data(folder / "data")["labels"][:2]
    fields = jax.nn.one_hot(images[0], 2)
    soft = predictors["conductivity"](fields).tensor
    hard, _, _ = model.make_predictor(restored, tiny_params)(images[:1])
    np.testing.assert_allclose(soft, hard[0], rtol=1e-4)  # one-hot fields give the label path's prediction
    gradient = jax.grad(lambda f: predictors["conductivity"](f).tensor[0, 0])(fields)
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0
    result = design(images[0], targets={"k_xx": 4.0}, conductivity=CONDUCTIVITIES, steps=5, statistics_weight=0,
                    predictors=predictors)
    check = head_vs_solver(restored, tiny_params, result.labels)
    assert check["solver"].shape == (1, 2, 2) and np.isfinite(check["disagreement"]).all()


def test_help_of_every_surrogate_action_has_examples(capsys):
    for action in ["make-data", "train", "predict", "evaluate"]:
        code, out, err = run_in_process(capsys, "surrogate", action, "--help")
        assert code == 0 and "example" in out and "Traceback" not in err


@pytest.mark.slow
def test_cnn_baseline_trains_end_to_end_inside_bounds(trained):
    folder, _ = trained
    config = heads.HeadConfig(head="cnn", hidden=(16,), members=2, shape=(16, 16), channels=(4, 8))
    result = train.train(folder / "data", folder / "cnn", config=config, spec=train.spec_for("cnn", shape=(16, 16)),
                         vgg_params=None, options=train.TrainOptions(epochs=15, batch=32, augment=2))
    history = result.record["history"]
    assert result.record["training"]["best_validation_loss"] < history[0]["validation_loss"]
    images = data.load_data(folder / "data")
    restored = model.load_model(folder / "cnn")
    mean, _, _ = model.make_predictor(restored)(images["labels"][:16])
    from jaxmicro.surrogate.evaluate import inside_bounds

    assert inside_bounds(mean, images["fractions"][:16], CONDUCTIVITY, 2) == 1.0

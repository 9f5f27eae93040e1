"""A persistent cache of compiled XLA programs: a second run of the same shapes starts without compiling.

Compiling the network's step takes 5-10 s on a 2-core CPU, as long as 100 steps of a 64x64 reconstruction. The
command line turns the cache on; library code calls ``enable_compilation_cache`` once, before its first
reconstruction (it sets JAX's global configuration). ``$JAXMICRO_COMPILATION_CACHE`` names another folder, or
``off`` to compile every time. The folder is not bounded in size (bounding it, with JAX's file-locked
eviction, made 150 small compilations take 25 s instead of 15 s); delete it at any time.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax

from jaxmicro.weights import cache_dir


def default_cache_path() -> Path | None:
    """``$JAXMICRO_COMPILATION_CACHE`` if set (None for ``off``/``0``), else ``cache_dir() / "xla"``."""
    override = os.environ.get("JAXMICRO_COMPILATION_CACHE")
    if override is not None and override.strip().lower() in ("off", "0", "no", "false", ""):
        return None
    return Path(override).expanduser() if override else cache_dir() / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Keep every compiled program in ``path`` (default ``default_cache_path``); return the folder, or None
    when the cache is off or the folder cannot be created (a warning says why; nothing else changes)."""
    path = Path(path) if path is not None else default_cache_path()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(f"compilation cache off: cannot create {path} ({error})", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the many small programs add up too
    return path

"""JAX's persistent compilation cache for the command line and the LiteLLM plugin.

A jitted function compiles once per input shape in each process: `uniroute add-model` compiles
about 25 kernels (seconds on a CPU), the MiniLM embedder one forward pass per prompt-length
bucket. With the cache on, each compiled executable is also written to a folder, and the next
process (another command, a restarted proxy) loads it instead of compiling again.

The folder is `$UNIROUTE_COMPILATION_CACHE` when that is set (`0` or an empty value turns the
cache off), else `jax_cache` in uniroute's cache folder (`$UNIROUTE_CACHE_DIR`, else
`$XDG_CACHE_HOME/uniroute_jax`, else `~/.cache/uniroute_jax`). A cache set up through JAX itself
(`JAX_COMPILATION_CACHE_DIR` or `jax.config`) is left as it is. Only its owner should be able to
write to the folder: JAX runs what it finds there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

ENV = "UNIROUTE_COMPILATION_CACHE"
MAX_BYTES = 1 << 30  # least recently used entries go beyond this


def cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder the cache uses under `environ` (default `os.environ`); None when it is off."""
    env = os.environ if environ is None else environ
    if ENV in env:
        value = env[ENV].strip()
        return None if value in ("", "0") else Path(value).expanduser()
    if env.get("UNIROUTE_CACHE_DIR"):
        return Path(env["UNIROUTE_CACHE_DIR"]).expanduser() / "jax_cache"
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "uniroute_jax" / "jax_cache"


def enable(environ: Mapping[str, str] | None = None) -> Path | None:
    """Turns the cache on for this process; returns its folder (None when off or not writable).

    Every compiled executable is kept, however quick its compile (JAX's default keeps only those
    over a second; `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` still overrides that). Compiles
    before this call are not written; later ones are.
    """
    import jax  # noqa: PLC0415 (the command line parses its arguments without JAX)

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    path = cache_dir(environ)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # an unwritable home must not stop a command: it only compiles again
        sys.stderr.write(f"warning: compilation cache off, cannot create {path}: {err.strerror}\n")
        return None
    env = os.environ if environ is None else environ
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in env:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in env:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if importlib.util.find_spec("filelock") is not None and "JAX_COMPILATION_CACHE_MAX_SIZE" not in env:
        # A size bound makes JAX take a file lock around each read and write, so processes sharing
        # the folder (proxy workers, parallel commands) never read an entry another is writing.
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path

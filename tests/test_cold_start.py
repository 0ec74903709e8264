"""Cold start: `--help` without JAX, every length bucket compiled at start, compiled kernels kept on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from uniroute_jax._src import compile_cache
from uniroute_jax._src import embedding as emb

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=600)


# ------------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("argv", [["--help"], ["route", "--help"], ["add-model", "--help"]])
def test_help_and_the_package_import_load_no_jax(argv):
    code = textwrap.dedent(f"""
        import sys
        import uniroute_jax
        assert "jax" not in sys.modules, "import uniroute_jax loaded JAX"
        from uniroute_jax._src.cli import main
        try:
            main({argv!r})
        except SystemExit as e:
            assert e.code == 0, e.code
        print("jax loaded:", "jax" in sys.modules)
    """)
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: uniroute" in proc.stdout and "jax loaded: False" in proc.stdout


def test_public_names_still_resolve():
    code = textwrap.dedent("""
        import uniroute_jax as ur
        missing = [n for n in ur.__all__ if getattr(ur, n, None) is None]
        assert not missing, missing
        assert set(ur.__all__) <= set(dir(ur))
        from uniroute_jax import UniRouter, Pool  # the `from` form goes through the same lookup
        assert UniRouter is ur.UniRouter and Pool is ur.Pool
        try:
            ur.NoSuchName
        except AttributeError as err:
            assert "NoSuchName" in str(err)
        else:
            raise AssertionError("an unknown name resolved")
        print("ok")
    """)
    proc = _python(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------------- the cache's folder


def test_cache_folder_follows_the_environment():
    home = Path.home()
    assert compile_cache.cache_dir({}) == home / ".cache" / "uniroute_jax" / "jax_cache"
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/uniroute_jax/jax_cache")
    assert compile_cache.cache_dir({"UNIROUTE_CACHE_DIR": "/u", "XDG_CACHE_HOME": "/x"}) == Path("/u/jax_cache")
    assert compile_cache.cache_dir({"UNIROUTE_COMPILATION_CACHE": "/c", "UNIROUTE_CACHE_DIR": "/u"}) == Path("/c")
    assert compile_cache.cache_dir({"UNIROUTE_COMPILATION_CACHE": "~/c"}) == home / "c"
    for off in ("0", "", " "):
        assert compile_cache.cache_dir({"UNIROUTE_COMPILATION_CACHE": off, "UNIROUTE_CACHE_DIR": "/u"}) is None


def _cache_files(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*-cache")} if folder.is_dir() else set()


def _cache_log(stderr: str) -> tuple[int, int]:
    """(misses, hits) of JAX's persistent cache in a process run with JAX_LOG_COMPILES and JAX_EXPLAIN_CACHE_MISSES."""
    return stderr.count("PERSISTENT COMPILATION CACHE MISS"), stderr.count("Persistent compilation cache hit")


LOGGED = {"JAX_LOG_COMPILES": "1", "JAX_EXPLAIN_CACHE_MISSES": "1"}


@pytest.mark.slow
def test_a_second_command_compiles_nothing(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(60, 6)).astype(np.float32))
    cache = tmp_path / "jax_cache"
    env = {**LOGGED, "UNIROUTE_COMPILATION_CACHE": str(cache)}
    fit = "import sys; from uniroute_jax._src.cli import main; sys.exit(main(sys.argv[1:]))"
    runs = []
    for i in range(2):
        proc = subprocess.run([sys.executable, "-c", fit, "fit", "x.npy", "-k", "3", "--n-init", "1", "-o", f"r{i}.npz"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=600,
                              env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append((_cache_log(proc.stderr), _cache_files(cache)))
    (miss1, hit1), files1 = runs[0]
    (miss2, hit2), files2 = runs[1]
    assert miss1 > 0 and len(files1) == miss1  # every compile of the first run was written
    assert miss2 == 0 and hit2 == miss1  # the second compiled nothing: each kernel came from the folder
    assert files2 == files1


# ------------------------------------------------------------------------------ warming up


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    from test_embedding import _write_tiny_model

    return _write_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


def _texts_of_every_length(n_max: int) -> list[str]:
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a"]
    return [" ".join(words[j % len(words)] for j in range(n)) for n in range(1, n_max + 1)]


def test_warm_up_compiles_every_length_bucket(tiny_dir):
    e = emb.TextEmbedder(tiny_dir, max_length=14, cache=False, progress=False)
    assert e.length_buckets == (8, 10, 12, 14)  # LENGTH_BUCKETS up to max_length
    assert emb.TextEmbedder(tiny_dir, max_length=13, cache=False).length_buckets == (8, 10, 12, 13)
    assert e.warm_up() == 4
    compiled = e._forward._cache_size()
    texts = _texts_of_every_length(12)  # 1 to 12 words: 3 to 14 tokens with CLS and SEP
    assert sorted({len(ids) for ids in e.tokenize(texts)}) == list(range(3, 15))
    for t in texts:  # one request at a time, as served
        e([t])
    assert e._forward._cache_size() == compiled  # no request compiled a shape
    assert e.warm_up(stop=lambda: True) == 0


def test_calls_go_before_the_warm_up_and_a_shape_compiles_once(tiny_dir):
    """A call holds the warm-up back, and a second call of a shape being compiled waits for it.

    Each check gives the wrong behaviour a window of WINDOW seconds to show; the right one never
    depends on it (it would only make the test slower).
    """
    window = 2.0
    e = emb.TextEmbedder(tiny_dir, max_length=12, cache=False, progress=False)
    real, gate, entered = e._forward, threading.Event(), threading.Event()
    log = []  # (who, shape, gate open) per forward call

    def forward(params, ids, mask):
        log.append((threading.current_thread().name, ids.shape, gate.is_set()))
        if threading.current_thread().name == "first":
            entered.set()
            gate.wait(60)
        return real(params, ids, mask)

    e._forward = forward
    first = threading.Thread(target=e, args=(["the cat sat on a mat dog ran"],), name="first")  # 10 tokens
    first.start()
    assert entered.wait(60)
    second = threading.Thread(target=e, args=(["a dog ran on the mat the cat"],), name="second")  # the same shape
    warm = threading.Thread(target=e.warm_up, name="warm")
    second.start()
    warm.start()
    second.join(window)
    gate.set()
    for t in (first, second, warm):
        t.join(60)
        assert not t.is_alive()
    assert all(opened for who, _, opened in log if who != "first")  # nobody ran while "first" was in its call
    assert [shape for who, shape, _ in log if who == "warm"] == [(1, 8), (1, 10), (1, 12)]


SERVE = textwrap.dedent("""
    import json, sys
    import jax
    from uniroute_jax._src.embedding import TextEmbedder
    from uniroute_jax.integrations.litellm import UniRoutePlugin

    embedder = TextEmbedder(sys.argv[1], max_length=14, cache=False, progress=False)
    plugin = UniRoutePlugin(sys.argv[2], sys.argv[3], lam=0.0, embedder=embedder, warm_up=True)
    plugin._warm_thread.join()
    warmed = embedder._forward._cache_size()
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a"]
    for n in range(1, 13):
        embedder([" ".join(words[j % 8] for j in range(n))])
    print(json.dumps({"warmed": warmed, "after_requests": embedder._forward._cache_size(),
                      "cache_dir": jax.config.jax_compilation_cache_dir}))
""")


@pytest.mark.slow
def test_plugin_warms_every_bucket_and_a_restart_loads_them(tiny_dir, tmp_path):
    import uniroute_jax as ur

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    router = ur.UniRouter.fit(x, 3, seed=0, n_init=1)
    pool = router.represent(x, (rng.random((40, 2)) < 0.6).astype(np.float32), ["a", "b"], [0.1, 1.0])
    router.save(tmp_path / "router.npz")
    pool.save(tmp_path / "pool.npz")
    cache = tmp_path / "jax_cache"
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", SERVE, str(tiny_dir), str(tmp_path / "router.npz"),
                               str(tmp_path / "pool.npz")], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "JAX_PLATFORMS": "cpu", **LOGGED,
                                   "UNIROUTE_COMPILATION_CACHE": str(cache)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append((out, _cache_log(proc.stderr), _cache_files(cache)))
    for out, _, _ in runs:
        assert out["cache_dir"] == str(cache)
        assert out["warmed"] == 4 and out["after_requests"] == 4  # 4 buckets at batch 1; requests compile none
    (_, (miss1, _), files1), (_, (miss2, hit2), files2) = runs
    forward = [f for f in files1 if "bert_embed" in f]
    assert len(forward) == 4 and miss1 >= 4  # the four compiled forward passes were written
    assert miss2 == 0 and hit2 == miss1 and files2 == files1  # the restart loaded them all
